"""G-Blending: OGR and the weights of Proposition 1 by hand (2 and 3 modalities), the held-out split
apart from the trained samples and from val/test, the estimate, the super-epoch schedule, the
blended loss, a short trial, save → restore → continue, bad params."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import restore_into, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.gblending import (
    blend_weights,
    blended_loss,
    estimate_epoch,
    holdout_size,
    lookahead_epochs,
    ogr,
    ogr_deltas,
    overfitting,
    split_indices,
)

THREE = {"modalities": ["audio", "video", "text"]}
FAST = {"super_epoch": 1}  # one copy epoch per estimate keeps the trials quick
SMALL = {"n_train": 96, "n_val": 32, "n_test": 32}  # 3 steps an epoch


def build(params=None, dataset=None, **sections):
    return Trial(parse_trial_config(tiny_config("gblending", params={**FAST, **(params or {})},
                                                dataset={**SMALL, **(dataset or {})}, **sections)))


def context(trial, epoch=1):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=True, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.train_split,
                       holdout=trial.holdout_split, batch_size=trial.spec.train.batch_size,
                       stage=trial.stages[0], stage_epoch=epoch)


def strip(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# ----------------------------------------------------------------------------- pure functions

def test_holdout_size_and_split():
    assert [holdout_size(2000, f) for f in (0.01, 0.08, 0.1, 0.5)] == [20, 160, 200, 1000]
    assert holdout_size(10, 0.001) == 1 and holdout_size(10, 0.999) == 9  # at least one on each side
    kept, held = split_indices(50, 0.2, torch.Generator().manual_seed(3))
    assert len(held) == 10 and len(kept) == 40
    assert sorted(kept.tolist() + held.tolist()) == list(range(50))
    again = split_indices(50, 0.2, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], kept) and torch.equal(again[1], held)


def test_ogr_and_weights_by_hand_two_modalities():
    # heads: audio, video, fusion; losses at N (before) and N + n (after)
    train_before, val_before = torch.tensor([1.5, 1.7, 1.4]), torch.tensor([1.6, 1.75, 1.5])
    train_after, val_after = torch.tensor([0.5, 1.2, 0.3]), torch.tensor([1.0, 1.55, 1.1])
    assert overfitting(val_before, train_before).tolist() == pytest.approx([0.1, 0.05, 0.1])
    dg, do = ogr_deltas(train_before, val_before, train_after, val_after)
    assert dg.tolist() == pytest.approx([0.6, 0.2, 0.4])  # ΔG = L^V_N − L^V_{N+n}
    assert do.tolist() == pytest.approx([0.5 - 0.1, 0.35 - 0.05, 0.8 - 0.1])  # ΔO = O_{N+n} − O_N
    assert ogr(dg, do).tolist() == pytest.approx([0.4 / 0.6, 0.3 / 0.2, 0.7 / 0.4])
    raw = [0.6 / 0.4 ** 2, 0.2 / 0.3 ** 2, 0.4 / 0.7 ** 2]  # ΔG/ΔO²
    assert blend_weights(dg, do).tolist() == pytest.approx([r / sum(raw) for r in raw])
    assert blend_weights(dg, do).sum().item() == pytest.approx(1.0)


def test_weights_three_modalities_with_a_head_that_did_not_generalise():
    dg = torch.tensor([0.3, -0.1, 0.2, 0.5])  # audio, video, text, fusion; video's held-out loss rose
    do = torch.tensor([0.2, 0.1, 0.4, 0.5])
    raw = [0.3 / 0.04, 0.0, 0.2 / 0.16, 0.5 / 0.25]
    assert blend_weights(dg, do, "zero").tolist() == pytest.approx([r / sum(raw) for r in raw])
    absolute = [0.3 / 0.04, 0.1 / 0.01, 0.2 / 0.16, 0.5 / 0.25]  # the re-implementations' |ΔG/ΔO²|
    assert blend_weights(dg, do, "abs").tolist() == pytest.approx([r / sum(absolute) for r in absolute])
    assert blend_weights(torch.tensor([-0.1, 0.0, -0.2]), torch.ones(3)) is None  # nothing generalised
    tiny = blend_weights(torch.tensor([0.1, 0.1]), torch.tensor([0.0, 0.1]))  # ΔO = 0: floored, takes it all
    assert tiny[0].item() == pytest.approx(1.0) and torch.isfinite(tiny).all()
    assert math.isfinite(ogr(torch.tensor([0.0]), torch.tensor([0.3])).item())


def test_blended_loss_by_hand():
    assert blended_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([0.5, 0.25, 0.25])).item() == pytest.approx(2.0)


def test_super_epoch_schedule():
    online = [e for e in range(1, 12) if estimate_epoch(e, 2, "online", 3)]
    assert online == [2, 5, 8, 11]  # super-epochs count from start_epoch
    assert [e for e in range(1, 12) if estimate_epoch(e, 2, "offline", 3)] == [2]
    cfg = parse_trial_config(tiny_config("gblending", params={"schedule": "offline", "start_epoch": 3})).params
    assert lookahead_epochs(cfg, 3, 20) == 18  # the rest of the window
    cfg = parse_trial_config(tiny_config("gblending", params={"schedule": "offline", "end_epoch": 10})).params
    assert lookahead_epochs(cfg, 1, 20) == 10
    cfg = parse_trial_config(tiny_config("gblending", params={"schedule": "offline", "offline_epochs": 4})).params
    assert lookahead_epochs(cfg, 1, 20) == 4
    cfg = parse_trial_config(tiny_config("gblending", params={"super_epoch": 5})).params
    assert lookahead_epochs(cfg, 6, 20) == 5


def test_estimates_happen_at_the_start_of_each_super_epoch():
    for params, expected in (({"super_epoch": 2}, [1, 3, 5]), ({"super_epoch": 2, "start_epoch": 2}, [2, 4]),
                             ({"schedule": "offline", "offline_epochs": 1}, [1])):
        trial = build(params, train={"epochs": 5})
        calls = []
        estimate = trial.method._estimate
        trial.method._estimate = lambda ctx, n, estimate=estimate: (calls.append((ctx.epoch, n)), estimate(ctx, n))
        history = [trial.step() for _ in range(5)]
        assert [e for e, _ in calls] == expected
        assert {n for _, n in calls} == {params.get("offline_epochs", params.get("super_epoch"))}
        first = params.get("start_epoch", 1)
        assert ["trace/w/fusion" in m for m in history] == [e >= first for e in range(1, 6)]


# ----------------------------------------------------------------------------- the held-out split

def test_holdout_is_apart_from_the_trained_samples_and_from_val_and_test():
    trial = build({"holdout_fraction": 0.25})
    full, n = trial.data.train, len(trial.data.train)
    held = torch.ones(n, dtype=torch.bool)
    held[trial.train_index] = False
    assert held.sum().item() == holdout_size(n, 0.25) == len(trial.holdout_split)
    assert torch.equal(trial.holdout_split.inputs["video"], full.inputs["video"][held])
    for split in (trial.data.val, trial.data.test):  # a split of the training data, not of val/test
        assert not (trial.holdout_split.inputs["audio"].unsqueeze(1) == split.inputs["audio"].unsqueeze(0)).all(-1).any()
    seen = []
    loss = trial.method.loss
    trial.method.loss = lambda out, batch, ctx: (seen.append(batch.inputs["audio"]), loss(out, batch, ctx))[1]
    trial.step()
    seen = torch.cat(seen)
    assert len(seen) == n - held.sum().item()
    assert not (seen.unsqueeze(1) == trial.holdout_split.inputs["audio"].unsqueeze(0)).all(-1).any()


def test_the_estimate_reads_train_and_holdout_only_and_leaves_the_model_alone():
    trial = build()
    for split in (trial.data.val, trial.data.test):  # anything read from val/test would poison the weights
        for x in split.inputs.values():
            x.fill_(float("nan"))
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    trial.method.begin_epoch(context(trial))
    w = trial.method.weights
    assert torch.isfinite(w).all() and w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
    assert all(torch.equal(before[k], v) for k, v in trial.model.state_dict().items())  # copies trained, not the model
    assert not trial.optimizer.state  # nor its optimizer
    assert trial.model.training


def test_reference_losses_are_eval_mode_losses_of_every_head():
    trial = build({"super_epoch": 1})
    model, method = trial.model, trial.method
    got = method._losses(model, None, trial.holdout_split, 32)
    model.eval()
    with torch.no_grad():
        out = model(trial.holdout_split.inputs)
        uni = model.modality_logits(out.features)
        y = trial.holdout_split.labels
        expected = [F.cross_entropy(uni[m], y) for m in trial.modalities] + [F.cross_entropy(out.logits, y)]
    model.train()
    assert got.tolist() == pytest.approx([e.item() for e in expected], rel=1e-5)
    # a uni-modal head alone (its encoder only, zeros for the others) gives the same loss
    assert method._losses(model, None, trial.holdout_split, 7, k=1).item() == pytest.approx(expected[1].item(), rel=1e-5)


# ----------------------------------------------------------------------------- the blended loss

@pytest.mark.parametrize("heads", ["model", "own"])
def test_loss_is_the_weighted_sum_of_head_losses(heads):
    trial = build({"heads": heads})
    method = trial.method
    method.begin_epoch(context(trial))
    batch = next(trial.train_split.batches(32, generator=torch.Generator().manual_seed(0)))
    out = trial.model(batch.inputs)
    if heads == "own":
        uni = [method._heads[m](out.features[m]) for m in trial.modalities]
        optimised = {id(p) for p in trial.optimizer.param_groups[0]["params"]}
        assert len(method.extra_parameters()) == 4 and {id(p) for p in method.extra_parameters()} <= optimised
    else:
        uni = [trial.model.modality_logits(out.features)[m] for m in trial.modalities]
    losses = [F.cross_entropy(z, batch.labels) for z in [*uni, out.logits]]
    expected = sum(w * l for w, l in zip(method.weights.tolist(), losses, strict=True))
    assert method.loss(out, batch, context(trial)).item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------- in a trial

def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for dataset, modalities in (({}, ["audio", "video"]), (THREE, THREE["modalities"])):
        metrics = build({"heads": "own"} if dataset else {}, dataset=dataset, train={"epochs": 2}).step()
        for quantity in ("w", "ogr", "delta_g", "delta_o"):
            for head in [*modalities, "fusion"]:
                assert math.isfinite(metrics[f"trace/{quantity}/{head}"]), (quantity, head)
        assert sum(metrics[f"trace/w/{h}"] for h in [*modalities, "fusion"]) == pytest.approx(1.0, abs=1e-6)
        assert math.isfinite(metrics["train_loss"])


def test_bb_variant_runs():
    metrics = build({"reference": "first_epoch", "train_loss": "running", "negative": "abs", "super_epoch": 2},
                    train={"epochs": 1}).step()
    assert math.isfinite(metrics["trace/w/fusion"])


def test_save_restore_continue_equals_uninterrupted():
    params = {"super_epoch": 2, "heads": "own"}  # the epoch-3 estimate runs after the restore
    config = tiny_config("gblending", params=params, dataset=SMALL)
    uninterrupted = Trial(parse_trial_config(config))
    expected = [uninterrupted.step() for _ in range(3)]
    trial = Trial(parse_trial_config(config))
    trial.step()
    restored = restore_into(trial, Trial(parse_trial_config(config)))
    assert torch.equal(restored.method.weights, trial.method.weights)
    continued = [restored.step(), restored.step()]
    assert [strip(m) for m in continued] == [strip(m) for m in expected[1:]]
    assert torch.equal(restored.method.weights, uninterrupted.method.weights)


@pytest.mark.parametrize(("key", "value"), [
    ("schedule", "both"), ("super_epoch", 0), ("offline_epochs", 0), ("holdout_fraction", 0.0),
    ("holdout_fraction", 1.0), ("heads", "separate"), ("negative", "clip"), ("reference", "end"),
    ("train_loss", "sum"),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("gblending", params={key: value}))


def test_first_epoch_reference_needs_two_epochs():
    with pytest.raises(ConfigError, match="params.super_epoch.*at least 2"):
        parse_trial_config(tiny_config("gblending", params={"reference": "first_epoch", "super_epoch": 1}))
    with pytest.raises(ConfigError, match="params.offline_epochs"):
        parse_trial_config(tiny_config("gblending", params={"reference": "first_epoch", "schedule": "offline",
                                                            "offline_epochs": 1}))
