"""The multimodal model contract balancing methods rely on, checked for every registered fusion."""

from __future__ import annotations

import pytest
import torch

from mmtune.errors import ConfigError
from mmtune.models import ModelConfig, build_model, list_fusions

SHAPES2 = {"audio": (8,), "video": (6,)}
SHAPES3 = {"audio": (8,), "video": (6,), "text": (4,)}
NUM_CLASSES = 5
HIDDEN = 16
B = 4
ADDITIVE = {"concat", "sum", "late"}
CASES = [(f, s) for f in list_fusions() for s in ("2mod", "3mod")]


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    return SHAPES2 if name == "2mod" else SHAPES3


def make(fusion: str, input_shapes=SHAPES2, seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="mlp", fusion=fusion, hidden_dim=HIDDEN, **kw)
    return build_model(cfg, input_shapes=input_shapes, num_classes=NUM_CLASSES).eval()


def inputs(input_shapes, n: int = B, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn((n, *s), generator=g) for m, s in input_shapes.items()}


def randomize_biases(model) -> None:
    # Make biases clearly non-zero so bias bookkeeping errors cannot hide.
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g))


def test_every_fusion_is_covered() -> None:
    assert set(list_fusions()) == ADDITIVE | {"film", "gated"}, "classify a new fusion as additive or not here"


@pytest.mark.parametrize(("fusion", "mods"), CASES)
def test_forward_shapes(fusion: str, mods: str) -> None:
    s = shapes(mods)
    model = make(fusion, s)
    out = model(inputs(s))
    assert out.logits.shape == (B, NUM_CLASSES)
    assert list(out.features) == list(s)
    for m in s:
        assert out.features[m].shape == (B, HIDDEN)
    assert torch.isfinite(out.logits).all()
    assert model.fusion.additive == (fusion in ADDITIVE)


@pytest.mark.parametrize(("fusion", "mods"), [c for c in CASES if c[0] in ADDITIVE])
def test_additive_components_sum_to_logits(fusion: str, mods: str) -> None:
    s = shapes(mods)
    model = make(fusion, s)
    randomize_biases(model)
    with torch.no_grad():
        out = model(inputs(s))
        uni = model.unimodal_logits(out.features)
    assert list(uni) == list(s)
    for m in s:
        assert uni[m].shape == (B, NUM_CLASSES)
    torch.testing.assert_close(sum(uni.values()), out.logits, atol=1e-6, rtol=0)
    # components are genuinely per-modality (not e.g. logits / M each)
    assert not torch.allclose(uni[list(s)[0]], uni[list(s)[1]])


@pytest.mark.parametrize("mods", ["2mod", "3mod"])
def test_concat_components_by_hand(mods: str) -> None:
    s = shapes(mods)
    model = make("concat", s)
    randomize_biases(model)
    M = len(s)
    with torch.no_grad():
        feats = model(inputs(s)).features
        uni = model.unimodal_logits(feats)
        W, b = model.fusion.fc.weight, model.fusion.fc.bias
        assert W.shape == (NUM_CLASSES, HIDDEN * M)
        for i, m in enumerate(s):
            block = W[:, i * HIDDEN : (i + 1) * HIDDEN]
            torch.testing.assert_close(uni[m], feats[m] @ block.T + b / M, atol=1e-6, rtol=0)


def test_concat_custom_bias_split() -> None:
    model = make("concat")
    randomize_biases(model)
    with torch.no_grad():
        feats = model(inputs(SHAPES2)).features
        uni = model.unimodal_logits(feats, bias_split=[0.2, 0.8])
        W, b = model.fusion.fc.weight, model.fusion.fc.bias
        torch.testing.assert_close(uni["audio"], feats["audio"] @ W[:, :HIDDEN].T + b * 0.2, atol=1e-6, rtol=0)
        torch.testing.assert_close(uni["video"], feats["video"] @ W[:, HIDDEN:].T + b * 0.8, atol=1e-6, rtol=0)
        torch.testing.assert_close(uni["audio"] + uni["video"], model.fusion(feats), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("fusion", "mods"), [c for c in CASES if c[0] not in ADDITIVE])
def test_non_additive_uses_zero_out_rule(fusion: str, mods: str) -> None:
    s = shapes(mods)
    model = make(fusion, s)
    randomize_biases(model)
    with pytest.raises(TypeError):
        model.fusion.components({m: torch.zeros(B, HIDDEN) for m in s})
    with torch.no_grad():
        feats = model(inputs(s)).features
        uni = model.unimodal_logits(feats)
        assert list(uni) == list(s)
        for m in s:
            only_m = {j: (f if j == m else torch.zeros_like(f)) for j, f in feats.items()}
            torch.testing.assert_close(uni[m], model.fusion(only_m), atol=1e-6, rtol=0)
            # and it depends only on modality m's feature
            perturbed = {j: (f if j == m else f + 1.0) for j, f in feats.items()}
            torch.testing.assert_close(model.unimodal_logits(perturbed)[m], uni[m], atol=1e-6, rtol=0)


@pytest.mark.parametrize(("fusion", "mods"), CASES)
def test_drop_masks(fusion: str, mods: str) -> None:
    s = shapes(mods)
    model = make(fusion, s)
    randomize_biases(model)
    x = inputs(s)
    keep = torch.tensor([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        full = model(x)
        dropped = model(x, drop={"audio": keep})
        zeroed = model.fusion({m: (torch.zeros_like(f) if m == "audio" else f) for m, f in full.features.items()})
        # features are returned before the drop mask
        for m in s:
            torch.testing.assert_close(dropped.features[m], full.features[m], atol=0, rtol=0)
        kept, gone = keep.bool(), ~keep.bool()
        torch.testing.assert_close(dropped.logits[gone], zeroed[gone], atol=1e-6, rtol=0)
        torch.testing.assert_close(dropped.logits[kept], full.logits[kept], atol=1e-6, rtol=0)
        assert not torch.allclose(dropped.logits[gone], full.logits[gone])  # dropping did something
        ones = model(x, drop={"audio": torch.ones(B)})
        torch.testing.assert_close(ones.logits, full.logits, atol=1e-6, rtol=0)
        # a keep weight other than 0/1 rescales the kept feature (OPM's rescaled drop)
        scaled = model(x, drop={"audio": torch.full((B,), 2.0)})
        doubled = model.fusion({m: (2.0 * f if m == "audio" else f) for m, f in full.features.items()})
        torch.testing.assert_close(scaled.logits, doubled, atol=1e-5, rtol=0)
        # a bool / long mask works as well as a float one
        as_bool = model(x, drop={"audio": keep.bool()})
        torch.testing.assert_close(as_bool.logits, dropped.logits, atol=1e-6, rtol=0)


def _ids(params) -> set[int]:
    return {id(p) for p in params}


@pytest.mark.parametrize(("fusion", "mods"), CASES)
def test_parameter_partition(fusion: str, mods: str) -> None:
    s = shapes(mods)
    model = make(fusion, s)
    per_mod = model.modality_parameters()
    assert list(per_mod) == list(s)
    for m in s:
        enc = _ids(model.encoders[m].parameters())
        assert enc and enc <= _ids(per_mod[m])
        assert len(_ids(per_mod[m])) == len(per_mod[m])  # no duplicates within a modality
    mods_list = list(s)
    for i, a in enumerate(mods_list):
        for b in mods_list[i + 1 :]:
            assert not (_ids(per_mod[a]) & _ids(per_mod[b])), f"{a} and {b} share parameters"
    shared = model.shared_parameters()
    all_listed = [id(p) for p in shared] + [id(p) for m in s for p in per_mod[m]]
    assert len(all_listed) == len(set(all_listed)), "a parameter is listed twice"
    assert set(all_listed) == _ids(model.parameters()), "some parameter belongs to no group"


@pytest.mark.parametrize("mods", ["2mod", "3mod"])
def test_late_fusion_heads_belong_to_their_modality(mods: str) -> None:
    s = shapes(mods)
    model = make("late", s)
    with_heads = model.modality_parameters()
    without = model.modality_parameters(heads=False)
    for m in s:
        head = _ids(model.fusion.heads[m].parameters())
        enc = _ids(model.encoders[m].parameters())
        assert head and head <= _ids(with_heads[m])
        assert _ids(with_heads[m]) == enc | head
        assert _ids(without[m]) == enc
        assert not head & _ids(model.shared_parameters())
    assert model.shared_parameters() == []


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_non_late_fusion_params_are_shared(fusion: str) -> None:
    model = make(fusion)
    per_mod = model.modality_parameters()
    for m in SHAPES2:
        assert _ids(per_mod[m]) == _ids(model.encoders[m].parameters())
        assert _ids(model.modality_parameters(heads=False)[m]) == _ids(per_mod[m])
    assert _ids(model.shared_parameters()) == _ids(model.fusion.parameters())


@pytest.mark.parametrize("num_layers", [1, 3])
def test_depth_blocks(num_layers: int) -> None:
    model = make("concat", SHAPES3, num_layers=num_layers)
    for m in SHAPES3:
        blocks = model.depth_blocks(m)
        assert isinstance(blocks, list)
        assert len(blocks) == num_layers
        assert all(a is b for a, b in zip(blocks, model.encoders[m].blocks, strict=True))
        # running the blocks in order reproduces the encoder feature
        x = inputs(SHAPES3)[m]
        h = x
        for blk in blocks:
            h = blk(h)
        torch.testing.assert_close(h, model.encoders[m](x), atol=0, rtol=0)


def test_unknown_modality_in_backbones_raises() -> None:
    cfg = ModelConfig(backbone="mlp", backbones={"vidoe": "cnn"}, hidden_dim=HIDDEN)
    with pytest.raises(ConfigError) as err:
        build_model(cfg, input_shapes=SHAPES2, num_classes=NUM_CLASSES)
    assert "vidoe" in str(err.value)


def test_unknown_fusion_suggests_concat() -> None:
    with pytest.raises(ConfigError) as err:
        ModelConfig(fusion="concatt")
    assert "concat" in str(err.value).replace("concatt", "")
    assert "fusion" in str(err.value)


@pytest.mark.parametrize(("fusion", "mods"), CASES)
@pytest.mark.parametrize("bias_split", [None, "uneven"])
def test_stacked_unimodal_logits_equal_the_per_modality_ones(fusion: str, mods: str, bias_split) -> None:
    s = shapes(mods)
    model = make(fusion, s)
    randomize_biases(model)
    split = None if bias_split is None else [0.7] + [0.3 / (len(s) - 1)] * (len(s) - 1)
    feats = model(inputs(s)).features
    expected = torch.stack(list(model.unimodal_logits(feats, bias_split=split).values()))
    got = model.stacked_unimodal_logits(feats, bias_split=split)
    assert got.shape == (len(s), B, NUM_CLASSES)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_stacked_concat_with_unequal_feature_widths_falls_back_exactly() -> None:
    torch.manual_seed(0)
    from mmtune.models.fusions import build_fusion

    fusion = build_fusion("concat", feature_dims={"audio": 3, "video": 5}, num_classes=NUM_CLASSES)
    feats = {"audio": torch.randn(B, 3), "video": torch.randn(B, 5)}
    expected = torch.stack(list(fusion.components(feats).values()))
    torch.testing.assert_close(fusion.stacked_components(feats), expected)
    torch.testing.assert_close(fusion.stacked_components(feats).sum(0), fusion(feats), atol=1e-6, rtol=1e-5)
