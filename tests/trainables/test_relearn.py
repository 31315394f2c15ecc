"""Diagnosing & Re-learning: the scaling, purity, gap, strength, update and schedule by hand (2 and 3
modalities); k-means deterministic and as good as scikit-learn's; one re-initialisation is exactly
θ ← (1 − α)θ + α θ_init with α from the diagnosis; traces, window, limit, fresh init, the held-out set;
save → restore → continue; relearn+ogm; a real-dataset cache with ResNet-18; bad params."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import check_restore_continues, tiny_config

from mmtune.engine.method import StepContext
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.relearn import (
    kmeans,
    minmax_scale,
    purity,
    purity_gap,
    reinit_due,
    reinit_strength,
    sample_indices,
    soft_reinit_,
)

AV = ["audio", "video"]
AVT = ["audio", "video", "text"]


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- pure functions

def test_minmax_scale_by_hand():
    x = torch.tensor([[0.0, 5.0, 2.0], [2.0, 5.0, 4.0], [1.0, 5.0, 3.0]])
    # columns: [0, 2] → [−1, 1]; constant → −1 (scikit-learn's zero range); [2, 4] → [−1, 1]
    assert minmax_scale(x).tolist() == [[-1.0, -1.0, -1.0], [1.0, -1.0, 1.0], [0.0, -1.0, 0.0]]


def test_purity_by_hand():
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    # cluster 0 = {0, 0, 1}: majority 0 (2); cluster 1 = {1, 1, 2}: majority 1 (2) → P = 4/6
    assert purity(labels, torch.tensor([0, 0, 0, 1, 1, 1]), 3).item() == pytest.approx(4 / 6)
    assert purity(labels, torch.tensor([2, 2, 0, 0, 0, 1]), 3).item() == 1.0  # cluster ids are arbitrary
    assert purity(torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 0, 0]), 2).item() == 0.5  # one cluster: the prior


def test_gap_and_strength_two_and_three_modalities():
    gap = purity_gap(t(0.9, 0.6), t(0.7, 0.55))
    assert gap.tolist() == pytest.approx([0.2, 0.05])
    assert reinit_strength(gap, 3.0).tolist() == pytest.approx([math.tanh(0.6), math.tanh(0.15)])
    gap3 = purity_gap(t(0.5, 0.8, 0.4), t(0.6, 0.8, 0.1))
    assert gap3.tolist() == pytest.approx([0.1, 0.0, 0.3])  # |P_D − P_V|: a held-out purity above is a gap too
    assert reinit_strength(gap3, 2.0).tolist() == pytest.approx([math.tanh(0.2), 0.0, math.tanh(0.6)])
    assert reinit_strength(gap3, 0.0).tolist() == [0.0, 0.0, 0.0]


def test_soft_reinit_by_hand():
    p = torch.nn.Parameter(torch.tensor([1.0, 3.0]))
    soft_reinit_([p], [torch.tensor([-1.0, 1.0])], torch.tensor(0.25))
    assert p.tolist() == pytest.approx([0.5, 2.5])  # 0.75·θ + 0.25·θ_init


def test_schedule_code_and_multiple():
    code = [e for e in range(1, 70) if reinit_due(e, 20, "code")]
    assert code == [22, 42, 62]  # after 0-based epochs 20, 40, 60 (1-based 21, 41, 61), as the official loop
    assert [e for e in range(1, 70) if reinit_due(e, 20, "multiple")] == [21, 41, 61]
    assert [e for e in range(1, 6) if reinit_due(e, 1, "code")] == [3, 4, 5]
    assert [e for e in range(1, 6) if reinit_due(e, 1, "multiple")] == [2, 3, 4, 5]


def test_sample_indices_cap():
    g = torch.Generator().manual_seed(0)
    assert sample_indices(10, None, g) is None and sample_indices(10, 10, g) is None
    index = sample_indices(10, 4, g)
    assert len(index) == 4 and len(set(index.tolist())) == 4 and index.tolist() == sorted(index.tolist())


def blobs(n_per=40, classes=3, dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    centres = 20.0 * torch.eye(classes, dim)
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), dim, generator=gen), y


def test_kmeans_separates_blobs_deterministically():
    x, y = blobs()
    first = kmeans(x, 3, torch.Generator().manual_seed(1))
    assert purity(y, first, 3).item() == 1.0
    assert torch.equal(first, kmeans(x, 3, torch.Generator().manual_seed(1)))
    assert kmeans(x[:2], 3, torch.Generator().manual_seed(0)).max() <= 1  # k capped at N


def test_kmeans_inertia_matches_scikit_learn():
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    gen = torch.Generator().manual_seed(3)
    y = torch.randint(0, 6, (400,), generator=gen)
    x = minmax_scale(torch.randn(6, 16, generator=gen)[y] + torch.randn(400, 16, generator=gen))
    ours = kmeans(x, 6, torch.Generator().manual_seed(0), n_init=10)
    centres = torch.stack([x[ours == k].mean(0) for k in range(6)])
    inertia = torch.cdist(x, centres).square().min(1).values.sum().item()
    reference = sklearn_cluster.KMeans(n_clusters=6, random_state=0, n_init=10).fit(x.numpy()).inertia_
    assert inertia <= reference * 1.01


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("relearn", params=params or {}, **sections)))


def context(trial, epoch, modulating=True):
    return StepContext(epoch=epoch, step=0, global_step=0, modulating=modulating, generator=trial.method_generator,
                       device=trial.device, model=trial.model, optimizer=trial.optimizer, train=trial.train_split,
                       holdout=trial.holdout_split, batch_size=trial.spec.train.batch_size)


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for modalities, cap in ((AV, None), (AVT, 100)):  # 100 < the 228 trained samples: a capped draw
        trial = build({"interval": 1, "timing": "multiple", "max_samples": cap}, dataset={"modalities": modalities})
        first, second = trial.step(), trial.step()
        assert all(first[f"trace/reinit/{m}"] == 0.0 for m in modalities) and "trace/purity/audio" not in first
        for quantity in ("reinit", "purity", "purity_holdout", "purity_gap"):
            for m in modalities:
                assert math.isfinite(second[f"trace/{quantity}/{m}"]), (quantity, m)
        for m in modalities:
            gap = abs(second[f"trace/purity/{m}"] - second[f"trace/purity_holdout/{m}"])
            assert second[f"trace/purity_gap/{m}"] == pytest.approx(gap, abs=1e-6)
            assert second[f"trace/reinit/{m}"] == pytest.approx(math.tanh(3.0 * gap), abs=1e-6)
        assert math.isfinite(second["train_loss"]) and trial.method.reinits == 1


def test_the_held_out_set_is_part_of_the_training_split_and_never_trained_on():
    trial = build()
    n = len(trial.data.train)
    assert len(trial.holdout_split) == round(0.111 * n) and len(trial.train_split) + len(trial.holdout_split) == n


@pytest.mark.parametrize("init", ["stored", "fresh"])
def test_one_reinit_is_the_convex_update_towards_the_initial_weights(init):
    trial = build({"interval": 1, "timing": "multiple", "init": init, "lam": 5.0})
    initial = {m: [p.detach().clone() for p in trial.model.encoders[m].parameters()] for m in AV}
    trial.step()
    before = {m: [p.detach().clone() for p in trial.model.encoders[m].parameters()] for m in AV}
    head = [p.detach().clone() for p in trial.model.fusion.parameters()]
    ctx = context(trial, epoch=2)
    if init == "fresh":  # the draw the method will make, from a copy of its generator
        replay = torch.Generator(trial.device).set_state(trial.method_generator.get_state())
    trial.method.begin_epoch(ctx)
    alpha = trial.method.alpha
    assert alpha is not None and bool((alpha > 0).all()) and bool((alpha < 1).all())
    for i, m in enumerate(AV):
        after = list(trial.model.encoders[m].parameters())
        if init == "stored":
            for p, p0, p1 in zip(after, before[m], initial[m], strict=True):
                torch.testing.assert_close(p.detach(), (1 - alpha[i]) * p0 + alpha[i] * p1)
        else:
            assert any(not torch.allclose(p.detach(), (1 - alpha[i]) * p0 + alpha[i] * p1)
                       for p, p0, p1 in zip(after, before[m], initial[m], strict=True))
    assert all(torch.equal(p, q) for p, q in zip(trial.model.fusion.parameters(), head, strict=True))  # head untouched
    if init == "fresh":  # deterministic given the generator: a second model replays the same re-init
        other = build({"interval": 1, "timing": "multiple", "init": init, "lam": 5.0})
        other.step()
        other.method.begin_epoch(StepContext(**{**vars(context(other, 2)), "generator": replay}))
        for m in AV:
            for p, q in zip(other.model.encoders[m].parameters(), trial.model.encoders[m].parameters(), strict=True):
                torch.testing.assert_close(p, q)


def test_window_and_limit_are_respected():
    trial = build({"interval": 1, "timing": "multiple", "start_epoch": 3, "max_reinits": 1}, train={"epochs": 5})
    history = [trial.step() for _ in range(5)]
    assert not any(k.startswith("trace/") for k in history[0]) and not any(k.startswith("trace/") for k in history[1])
    assert "trace/purity/audio" in history[2] and trial.method.reinits == 1
    assert history[3]["trace/reinit/audio"] == history[4]["trace/reinit/video"] == 0.0
    assert "trace/purity/audio" not in history[3]


def test_lambda_zero_leaves_the_encoders_as_they_are():
    trial = build({"interval": 1, "timing": "multiple", "lam": 0.0})
    trial.step()
    before = [p.detach().clone() for p in trial.model.parameters()]
    trial.method.begin_epoch(context(trial, epoch=2))
    assert all(torch.equal(p, q) for p, q in zip(trial.model.parameters(), before, strict=True))
    assert trial.method.alpha.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("params", [{"interval": 1}, {"interval": 1, "timing": "multiple", "init": "fresh"}])
def test_save_restore_continue_equals_uninterrupted(params):
    restored, uninterrupted = check_restore_continues(tiny_config("relearn", params=params))
    assert restored.method.reinits == uninterrupted.method.reinits >= 1
    assert torch.equal(restored.method.alpha, uninterrupted.method.alpha)


def test_composes_with_ogm():
    trial = Trial(parse_trial_config(tiny_config("relearn+ogm", params={"interval": 1, "timing": "multiple"})))
    assert len(trial.holdout_split) > 0
    first, second = trial.step(), trial.step()
    assert math.isfinite(second["trace/reinit/audio"]) and math.isfinite(second["trace/purity_gap/video"])
    assert any(k.startswith("trace/") and "reinit" not in k and "purity" not in k for k in second)  # OGM's traces


def test_one_modality_is_refused():
    with pytest.raises(ConfigError, match="dataset.modalities"):
        build(dataset={"modalities": ["audio"]})


@pytest.mark.parametrize(("key", "value"), [
    ("lam", -1.0), ("interval", 0), ("max_reinits", 0), ("timing", "paper"), ("holdout_fraction", 0.0),
    ("holdout_fraction", 1.0), ("init", "zeros"), ("max_samples", 1), ("n_init", 0), ("max_iter", 0), ("scaler", "std"),
])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("relearn", params={key: value}))


@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory):
    from tests.data.test_cremad import write_cremad

    return write_cremad(tmp_path_factory.mktemp("cremad") / "cremad", csv="ogm")


@pytest.mark.slow
def test_runs_on_a_real_dataset_cache_with_resnet18(cremad_root):
    config = {"method": "relearn", "seed": 0, "params": {"interval": 1, "timing": "multiple"},
              "train": {"epochs": 2, "batch_size": 12},
              "dataset": {"name": "cremad", "root": str(cremad_root), "workers": 0, "image_size": 32},
              "model": {"backbone": "resnet18"}}
    trial = Trial(parse_trial_config(config))
    trial.step()
    metrics = trial.step()
    assert trial.method.reinits == 1
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(f"trace/purity_gap/{m}" in metrics for m in trial.modalities)
