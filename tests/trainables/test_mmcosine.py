"""MMCosine: cosine logits by hand (2 and 3 modalities), the model's logits are cosine in training and
evaluation for concat/sum/late, film/gated refused, the window, eval_logits=linear, save → restore → continue."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import check_restore_continues, tiny_config

from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.models.fusions import ConcatFusion, LateFusion, SumFusion, build_fusion
from mmtune.trainables.mmcosine import (
    CosineConcatFusion,
    angle_degrees,
    cosine_logits,
    mmcosine_logits,
    modality_weights,
    row_norms,
    true_class_cosine,
)

THREE = {"modalities": ["audio", "video", "text"]}

# Hand example: C = 2 classes. audio φ = (3, 4) (norm 5), video φ = (0, 3, 4), text φ = (−2).
FEATURES = {"audio": torch.tensor([[3.0, 4.0]]), "video": torch.tensor([[0.0, 3.0, 4.0]]), "text": torch.tensor([[-2.0]])}
WEIGHTS = {
    "audio": torch.tensor([[1.0, 0.0], [0.0, 2.0]]),  # rows → (1, 0), (0, 1): cos = 0.6, 0.8
    "video": torch.tensor([[0.0, 0.0, 5.0], [2.0, 0.0, 0.0]]),  # rows → e3, e1: cos = 0.8, 0
    "text": torch.tensor([[3.0], [-1.0]]),  # rows → 1, −1: cos = −1, 1
}


# ----------------------------------------------------------------------------- pure functions

def test_cosine_logits_one_modality_by_hand():
    assert cosine_logits(FEATURES["audio"], WEIGHTS["audio"], 10.0)[0].tolist() == pytest.approx([6.0, 8.0])
    assert cosine_logits(FEATURES["text"], WEIGHTS["text"], 1.0)[0].tolist() == pytest.approx([-1.0, 1.0])


def test_mmcosine_logits_two_modalities_by_hand():
    two = {m: WEIGHTS[m] for m in ("audio", "video")}
    # s·(cos^a + cos^v) = 10·((0.6, 0.8) + (0.8, 0)) = (14, 8); no bias.
    assert mmcosine_logits(FEATURES, two, 10.0)[0].tolist() == pytest.approx([14.0, 8.0])


def test_mmcosine_logits_three_modalities_by_hand():
    # 2·((0.6, 0.8) + (0.8, 0) + (−1, 1)) = (0.8, 3.6)
    assert mmcosine_logits(FEATURES, WEIGHTS, 2.0)[0].tolist() == pytest.approx([0.8, 3.6])


def test_norms_do_not_matter_and_a_zero_feature_contributes_nothing():
    scaled_w = {"audio": WEIGHTS["audio"] * torch.tensor([[7.0], [0.1]]), "video": WEIGHTS["video"] * 3}
    scaled_f = {"audio": FEATURES["audio"] * 40, "video": FEATURES["video"] * 0.01}
    assert mmcosine_logits(scaled_f, scaled_w, 10.0)[0].tolist() == pytest.approx([14.0, 8.0], rel=1e-5)
    absent = {"audio": torch.zeros(1, 2), "video": FEATURES["video"]}
    assert mmcosine_logits(absent, {m: WEIGHTS[m] for m in ("audio", "video")}, 10.0)[0].tolist() == pytest.approx([8.0, 0.0])


def test_trace_helpers_by_hand():
    cos = true_class_cosine(torch.cat([FEATURES["audio"], FEATURES["audio"]]), WEIGHTS["audio"], torch.tensor([0, 1]))
    assert cos.tolist() == pytest.approx([0.6, 0.8])
    assert angle_degrees(torch.tensor([1.0, 0.0, -1.0, 1.0 + 1e-7])).tolist() == pytest.approx([0.0, 90.0, 180.0, 0.0], abs=1e-3)
    assert row_norms(WEIGHTS["video"]).tolist() == pytest.approx([5.0, 2.0])


@pytest.mark.parametrize("cls", [ConcatFusion, SumFusion, LateFusion])
def test_modality_weights_are_the_per_modality_heads(cls):
    dims = {"audio": 2, "video": 3, "text": 1}
    fusion = cls(dims, 4)
    weights = modality_weights(fusion)
    assert [tuple(w.shape) for w in weights.values()] == [(4, 2), (4, 3), (4, 1)]
    if cls is ConcatFusion:  # the column blocks of the shared head, as unimodal_logits splits it
        assert torch.equal(torch.cat(list(weights.values()), dim=1), fusion.fc.weight)
        features = {m: torch.randn(5, d) for m, d in dims.items()}
        parts = fusion.components(features, bias_split=[0.0, 0.0, 0.0])
        for m in dims:
            assert torch.allclose(parts[m], features[m] @ weights[m].T, atol=1e-6)


# ----------------------------------------------------------------------------- the method in a trial

def build(params=None, **sections):
    return Trial(parse_trial_config(tiny_config("mmcosine", params=params or {}, **sections)))


@pytest.mark.parametrize("fusion", ["concat", "sum", "late"])
def test_model_logits_are_cosine_in_training_and_evaluation(fusion):
    trial = build({"scale": 7.0}, model={"fusion": fusion}, dataset=THREE)
    model = trial.model
    plain = build_fusion(fusion, feature_dims=model.fusion.feature_dims, num_classes=model.num_classes)
    assert model.fusion.name == fusion and isinstance(model.fusion, type(plain))
    assert list(model.fusion.state_dict()) == list(plain.state_dict())  # same parameters, same checkpoint keys
    batch = next(trial.data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    weights = modality_weights(model.fusion)
    for train_mode in (True, False):
        model.train(train_mode)
        out = model(batch.inputs)
        expected = mmcosine_logits(out.features, weights, 7.0)
        assert torch.allclose(out.logits, expected, atol=1e-5)
        parts = model.unimodal_logits(out.features)  # what val_acc/<m> scores
        for m in trial.modalities:
            assert torch.allclose(parts[m], cosine_logits(out.features[m], weights[m], 7.0), atol=1e-5)
        assert torch.allclose(sum(parts.values()), out.logits, atol=1e-5)
        assert torch.allclose(model.stacked_unimodal_logits(out.features).sum(0), out.logits, atol=1e-5)
        own = model.modality_logits(out.features)
        assert all(torch.allclose(own[m], parts[m], atol=1e-6) for m in trial.modalities)
        assert out.logits.abs().max() <= 7.0 * len(trial.modalities) + 1e-4  # |s·Σ cos| ≤ s·M


def test_training_step_leaves_the_bias_without_gradient():
    trial = build()
    before = trial.model.fusion.fc.bias.detach().clone()
    trial.step()
    assert torch.equal(trial.model.fusion.fc.bias, before)  # unused by the cosine logits, never decayed either


def test_eval_logits_linear_is_the_plain_head_for_the_fused_prediction_only():
    trial = build({"eval_logits": "linear"})
    model = trial.model
    batch = next(trial.data.val.batches(32))
    model.eval()
    out = model(batch.inputs)
    fc = model.fusion.fc
    linear = torch.cat([out.features[m] for m in trial.modalities], dim=1) @ fc.weight.T + fc.bias
    assert torch.allclose(out.logits, linear, atol=1e-5)
    weights = modality_weights(model.fusion)
    parts = model.unimodal_logits(out.features)  # the per-modality accuracies stay cosine (main_CD.py)
    assert torch.allclose(parts["audio"], cosine_logits(out.features["audio"], weights["audio"], 10.0), atol=1e-5)
    model.train()
    assert torch.allclose(model(batch.inputs).logits, mmcosine_logits(out.features, weights, 10.0), atol=1e-5)


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_mixing_fusions_are_refused_with_the_fix(fusion):
    with pytest.raises(ConfigError, match=rf"model.fusion: is '{fusion}'.*Use model.fusion=concat"):
        build(model={"fusion": fusion})


def test_short_trial_reports_finite_traces_two_and_three_modalities():
    for dataset, modalities in (({}, ["audio", "video"]), (THREE, THREE["modalities"])):
        trial = build(dataset=dataset)
        assert isinstance(trial.model.fusion, CosineConcatFusion)
        metrics = trial.step()
        for m in modalities:
            assert abs(metrics[f"trace/logit/{m}"]) <= 10.0
            assert 0.0 <= metrics[f"trace/angle/{m}"] <= 180.0
            assert metrics[f"trace/weight_norm/{m}"] > 0.0
        assert all(math.isfinite(v) for v in metrics.values())


def test_window_trains_the_linear_head_outside_and_evaluates_cosine():
    trial = build({"start_epoch": 2})
    model = trial.model
    batch = next(trial.data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    first = trial.step()
    assert "trace/logit/audio" not in first and not model.fusion.mmcosine_train
    model.train()  # the evaluation left it in eval mode
    out = model(batch.inputs)  # train mode, outside the window: the linear head with its bias
    assert torch.allclose(out.logits, model.fusion.fc(torch.cat([out.features[m] for m in trial.modalities], 1)), atol=1e-5)
    model.eval()
    assert torch.allclose(model(batch.inputs).logits, mmcosine_logits(out.features, modality_weights(model.fusion), 10.0), atol=1e-5)
    model.train()
    assert "trace/logit/audio" in trial.step() and model.fusion.mmcosine_train


def test_composes_with_a_subset_method_and_absent_modalities_contribute_nothing():
    trial = Trial(parse_trial_config(tiny_config("mmcosine+cml", train={"epochs": 1})))
    assert all(math.isfinite(v) for v in trial.step().values())
    model = trial.model
    feats = {m: torch.randn(4, model.fusion.feature_dims[m], device=trial.device) for m in trial.modalities}
    only_video = model.subset_logits(feats, [("video",)])[0]
    weights = modality_weights(model.fusion)
    assert torch.allclose(only_video, cosine_logits(feats["video"], weights["video"], 10.0), atol=1e-5)


def test_save_restore_continue_equals_uninterrupted():
    config = tiny_config("mmcosine", params={"scale": 15.0, "start_epoch": 2}, dataset={"n_train": 128})
    check_restore_continues(config)


@pytest.mark.parametrize(("key", "value"), [("scale", 0.0), ("scale", -1.0), ("eval_logits", "softmax"), ("end_epoch", 0)])
def test_bad_params_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"params.{key}"):
        parse_trial_config(tiny_config("mmcosine", params={key: value}))


def test_gradients_reach_every_encoder_through_the_normalised_features():
    trial = build()
    batch = next(trial.data.train.batches(16, generator=torch.Generator().manual_seed(0)))
    out = trial.model(batch.inputs)
    F.cross_entropy(out.logits, batch.labels).backward()
    for m in trial.modalities:
        grads = [p.grad for p in trial.model.encoders[m].parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
