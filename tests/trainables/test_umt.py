"""UMT: the equations against hand-computed values (2 and 3 modalities), the stage schedule (default
split, explicit budgets, bad budgets), a teacher stage trains only its encoder and head, the teachers
are the encoders at the end of their stages and the student restarts from the initial weights, the
distillation term and window, the evaluation rule, checkpoints mid-teacher-stage, at the boundaries and
mid-student-stage, composition refused."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, restore_into, tiny_config

import mmtune.trainables  # noqa: F401  the other methods (composition test)
import mmtune.trainables.umt  # noqa: F401  registers umt
from mmtune.data.base import Batch
from mmtune.engine.method import StepContext
from mmtune.engine.registry import get_method
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.umt import distills, feature_distance, stage_budgets, student_objective

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]


def umt_trial(epochs: int, *, modalities=AV, fusion="concat", train=None, **params) -> Trial:
    return Trial(parse_trial_config(umt_config(epochs, modalities=modalities, fusion=fusion, train=train, **params)))


def umt_config(epochs: int, *, modalities=AV, fusion="concat", train=None, **params) -> dict:
    return tiny_config("umt", params=params, model={"fusion": fusion}, dataset={"modalities": list(modalities)},
                       train={"epochs": epochs, **(train or {})})


def without_timing(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# -- the equations ---------------------------------------------------------------------------------
def test_feature_distance_by_hand():
    phi = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    bar = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    # (φ − φ̄)² = [[1, 4], [4, 9]]: mean over B·D = 18/4; per-sample sums 5, 13 → mean 9.
    assert feature_distance(phi, bar, "mean").item() == pytest.approx(4.5)
    assert feature_distance(phi, bar, "sum").item() == pytest.approx(9.0)
    assert feature_distance(phi, bar).item() == pytest.approx(F.mse_loss(phi, bar).item())  # the code's nn.MSELoss
    # The teacher is a constant: no gradient reaches it.
    student, teacher = phi.clone().requires_grad_(), bar.clone().requires_grad_()
    feature_distance(student, teacher).backward()
    assert teacher.grad is None and torch.allclose(student.grad, 2 * (phi - bar) / 4)


def test_student_objective_two_and_three_modalities_by_hand():
    ce = torch.tensor(0.5)
    assert student_objective(ce, torch.tensor([4.5, 1.0]), 10.0).item() == pytest.approx(0.5 + 10 * 5.5)
    assert student_objective(ce, torch.tensor([1.0, 2.0, 3.0]), 0.5).item() == pytest.approx(0.5 + 0.5 * 6)
    assert student_objective(ce, torch.tensor([1.0, 2.0, 3.0]), 0.0).item() == pytest.approx(0.5)


def test_distillation_window():
    assert distills(1) and distills(30)
    assert not distills(1, 2) and distills(2, 2, 3) and distills(3, 2, 3) and not distills(4, 2, 3)


# -- the schedule ----------------------------------------------------------------------------------
def test_stage_budgets_equal_split_leftover_to_the_student_first():
    assert stage_budgets(20, AV) == ([7, 6], 7)
    assert stage_budgets(3, AV) == ([1, 1], 1)
    assert stage_budgets(5, AV) == ([2, 1], 2)
    assert stage_budgets(6, AV) == ([2, 2], 2)
    assert stage_budgets(7, AVT) == ([2, 2, 1], 2)
    assert stage_budgets(4, AVT) == ([1, 1, 1], 1)
    assert stage_budgets(10, AVT, (1, 2, 3)) == ([1, 2, 3], 4)


def test_bad_budgets_and_params_name_the_key():
    with pytest.raises(ConfigError, match=r"train.epochs: is 2, but UMT trains a teacher for each of the 2 modalities.*>= 3"):
        stage_budgets(2, AV)
    with pytest.raises(ConfigError, match=r"params.teacher_epochs: needs one entry per modality \['audio', 'video'\]"):
        stage_budgets(6, AV, (2, 1, 1))
    with pytest.raises(ConfigError, match=r"params.teacher_epochs: schedules teachers audio 2 \+ video 2 = 4 epochs, "
                                          r"leaving 0 .*Set train.epochs >= 5"):
        stage_budgets(4, AV, (2, 2))
    with pytest.raises(ConfigError, match=r"params.teacher_epochs: needs one entry per modality \['audio', 'video', 'text'\]"):
        umt_trial(5, modalities=AVT, teacher_epochs=[2, 1])
    with pytest.raises(ConfigError, match=r"train.epochs: is 3, but UMT trains a teacher for each of the 3 modalities"):
        umt_trial(3, modalities=AVT)
    for params, key in [({"teacher_epochs": [2, 0]}, "params.teacher_epochs: every teacher stage needs >= 1 epoch"),
                        ({"start_epoch": 2}, "params.start_epoch: UMT has no modulation window"),
                        ({"distill_start": 3, "distill_end": 2}, "params.distill_end: must be >= distill_start"),
                        ({"reduction": "l1"}, "params.reduction"), ({"teacher_mode": "frozen"}, "params.teacher_mode"),
                        ({"lam": -1.0}, "params.lam")]:
        with pytest.raises(ConfigError, match=key):
            parse_trial_config(tiny_config("umt", params=params))


@pytest.mark.parametrize(("modalities", "epochs", "params", "teachers", "student"), [
    (AV, 5, {}, [2, 1], 2),
    (AV, 6, {"teacher_epochs": [1, 3]}, [1, 3], 2),
    (AVT, 7, {}, [2, 2, 1], 2),
])
def test_trial_stages_teachers_in_model_order_then_the_student(modalities, epochs, params, teachers, student):
    trial = umt_trial(epochs, modalities=modalities, **params)
    assert [(s.name, s.epochs, s.fresh_optimizer) for s in trial.stages] == [
        *((f"teacher_{m}", e, True) for m, e in zip(modalities, teachers, strict=True)), ("student", student, True)]


def test_traces_three_modalities():
    trial = umt_trial(5, modalities=AVT, teacher_epochs=[1, 1, 1])
    for m in AVT:
        metrics = trial.step()
        assert {k: metrics[f"trace/stage/{k}"] for k in AVT} == {k: float(k == m) for k in AVT}
        assert not any(k.startswith("trace/distill/") for k in metrics)
    for _ in range(2):
        metrics = trial.step()
        assert {k: metrics[f"trace/stage/{k}"] for k in AVT} == dict.fromkeys(AVT, 0.0)
        assert all(math.isfinite(metrics[f"trace/distill/{k}"]) and metrics[f"trace/distill/{k}"] > 0 for k in AVT)
        assert all(math.isfinite(metrics[k]) for k in ("train_loss", "val_acc", *(f"val_acc/{k}" for k in AVT)))


# -- the teachers ------------------------------------------------------------------------------------
def test_a_teacher_stage_trains_only_its_encoder_and_head():
    trial = umt_trial(3)
    for m in AV:
        before = {k: v.clone() for k, v in trial.model.state_dict().items()}
        heads = {k: v.clone() for k, v in trial.method._heads.state_dict().items()}
        trial.step()
        for k, v in trial.model.state_dict().items():
            assert torch.equal(v, before[k]) != k.startswith(f"encoders.{m}."), k  # the fusion stays as built
        for k, v in trial.method._heads.state_dict().items():
            assert torch.equal(v, heads[k]) != k.startswith(f"{m}."), k


def test_teachers_are_the_encoders_at_the_end_of_their_stages_and_the_student_restarts_from_init():
    trial = umt_trial(5, teacher_epochs=[2, 1])
    initial = {k: v.clone() for k, v in trial.model.state_dict().items()}
    ends = {}
    for m, epochs in zip(AV, (2, 1), strict=True):
        for _ in range(epochs):
            trial.step()
        ends[m] = {k: v.clone() for k, v in trial.model.encoders[m].state_dict().items()}
    assert trial.method.teachers is None
    seen = {}
    begin = trial.method.begin_epoch

    def spy(ctx):
        begin(ctx)
        seen.update({k: v.clone() for k, v in ctx.model.state_dict().items()})

    trial.method.begin_epoch = spy
    trial.step()  # the student's first epoch
    assert seen.keys() == initial.keys() and all(torch.equal(seen[k], initial[k]) for k in initial)
    for m in AV:
        teacher = trial.method.teachers[m]
        assert teacher.keys() == ends[m].keys() and all(torch.equal(teacher[k], ends[m][k]) for k in teacher)
        assert not all(torch.equal(teacher[k], initial[f"encoders.{m}.{k}"]) for k in teacher)  # it trained


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_distillation_term_is_lambda_times_the_summed_feature_distances(reduction):
    trial = umt_trial(3, lam=2.5, reduction=reduction)
    for _ in range(3):
        trial.step()
    model, method, val = trial.model, trial.method, trial.data.val
    reference = {}
    for m in AV:
        net = copy.deepcopy(model.encoders[m])
        net.load_state_dict(method.teachers[m])
        reference[m] = net.eval()
    batch = Batch(inputs=val.inputs, labels=val.labels)
    ctx = StepContext(epoch=3, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                      device=trial.device, model=model, stage=trial.stages[-1], stage_epoch=1)
    model.train()
    out = model(batch.inputs)
    method.traces.reset()
    term = method.extra_loss(out, batch, ctx)
    with torch.no_grad():
        d = [feature_distance(out.features[m], reference[m](val.inputs[m]), reduction) for m in AV]
    assert term.item() == pytest.approx(2.5 * sum(x.item() for x in d), rel=1e-6)
    assert method.traces.compute() == pytest.approx({f"distill/{m}": x.item() for m, x in zip(AV, d, strict=True)})
    term.backward()
    assert all(p.grad is None for p in method._teacher("audio").parameters())  # frozen
    assert model.encoders["audio"].blocks[0][0].weight.grad is not None


def test_the_distillation_window():
    trial = umt_trial(5, teacher_epochs=[1, 1], distill_start=2)
    metrics = [trial.step() for _ in range(5)]
    assert not any(k.startswith("trace/distill/") for m in metrics[:3] for k in m)  # student epoch 1: no term
    assert all(f"trace/distill/{m}" in metrics[k] for m in AV for k in (3, 4))


@pytest.mark.parametrize(("params", "training"), [({}, False), ({"teacher_mode": "train"}, True)])
def test_teacher_mode(params, training):
    trial = umt_trial(3, **params)
    for _ in range(3):
        trial.step()
    assert all(trial.method._teacher(m).training is training for m in AV)


# -- evaluation -------------------------------------------------------------------------------------
def test_teacher_epochs_report_a_constant_fused_prediction_and_each_teacher():
    trial = umt_trial(3)
    metrics = trial.step()
    val = trial.data.val
    assert metrics["val_acc"] == pytest.approx((val.labels == 0).float().mean().item())  # argmax of zeros: class 0
    with torch.no_grad():
        trial.model.eval()
        phi = trial.model.encode(val.inputs)
        for m in AV:
            acc = (trial.method._heads[m](phi[m]).argmax(1) == val.labels).float().mean().item()
            assert metrics[f"val_acc/{m}"] == pytest.approx(acc)
    trial.step()
    student = trial.step()
    with torch.no_grad():
        assert student["val_acc"] == pytest.approx(
            (trial.model(val.inputs).logits.argmax(1) == val.labels).float().mean().item())


@pytest.mark.parametrize("fusion", ["film", "gated", "sum", "late"])
def test_every_fusion_runs(fusion):
    trial = umt_trial(3, fusion=fusion)
    for _ in range(3):
        assert all(math.isfinite(v) for v in trial.step().values())


# -- optimizer and checkpoints ----------------------------------------------------------------------
def test_each_stage_starts_a_fresh_optimizer():
    trial = umt_trial(4, teacher_epochs=[2, 1], train={"lr_step": 1, "lr_gamma": 0.5})
    trial.step()
    first = trial.optimizer
    trial.step()
    assert trial.optimizer is first and first.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)
    trial.step()
    second = trial.optimizer
    assert second is not first and second.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)
    trial.step()
    assert trial.optimizer is not second and trial.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5)
    heads = {id(p) for p in trial.method._heads.parameters()}
    assert heads and not {id(p) for p in trial.optimizer.state} & heads  # no head moves in the student stage


def test_check_restore_continues_across_the_teacher_boundary():
    check_restore_continues(umt_config(3))


# mid-teacher-stage, teacher→teacher, teacher→student boundary, mid-student-stage
@pytest.mark.parametrize("save_after", [1, 2, 4, 5])
def test_save_restore_continue_equals_uninterrupted(save_after):
    config = umt_config(7, teacher_epochs=[2, 2], train={"lr_step": 2, "lr_gamma": 0.5})
    reference = Trial(parse_trial_config(config))
    uninterrupted = [without_timing(reference.step()) for _ in range(7)]
    trial = Trial(parse_trial_config(config))
    for _ in range(save_after):
        trial.step()
    restored = restore_into(trial, Trial(parse_trial_config(config)))
    continued = [without_timing(restored.step()) for _ in range(7 - save_after)]
    assert continued == uninterrupted[save_after:]


# -- refusals ------------------------------------------------------------------------------------------
def test_umt_does_not_compose():
    with pytest.raises(ConfigError, match="'umt' does not compose with other methods: UMT is a multi-stage scheme"):
        get_method("umt+ogm")
