"""AMSS / AMSS+: Eq. 2–4 by hand (K = 2, 3), mask units, Fisher importance, sampling statistics,
exact gradient masking and scopes, AMSS+ multipliers, trial runs and checkpoint continuation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import restore_into, tiny_config
from torch import nn

import mmtune.trainables.amss as amss_module
from mmtune.engine.method import StepContext
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.trainables.amss import (
    code_label_entropy,
    code_update_ratio,
    expected_log_likelihood,
    feature_entropy,
    fisher_importance,
    label_entropy,
    mask_layers,
    modal_significance,
    momentum_update,
    per_sample_fisher,
    sample_count,
    sample_mask,
    unbiased_mask,
    unit_fisher,
    update_ratio,
)

SHAPED = {"shape": "shaped", "image_size": 16, "n_train": 64, "n_val": 32, "n_test": 32}


# ----------------------------------------------------------------------------- Eq. 2–4 by hand


def test_label_entropy_from_batch_frequencies():
    # p(y) = (1/2, 1/4, 1/4, 0): H = 1/2 ln 2 + 2 · 1/4 ln 4 = 1.5 ln 2 (class 3 absent: 0 log 0 = 0).
    assert label_entropy(torch.tensor([0, 0, 1, 2]), 4).item() == pytest.approx(1.5 * math.log(2))


def test_code_label_entropy_is_the_cross_entropy_quirk():
    # The code: CrossEntropyLoss(p, p) with p = bincount / B over classes 0..max label = (.5, .25, .25).
    freq = [0.5, 0.25, 0.25]
    log_norm = math.log(sum(math.exp(f) for f in freq))
    expected = -sum(f * (f - log_norm) for f in freq)
    assert code_label_entropy(torch.tensor([0, 0, 1, 2]), 6).item() == pytest.approx(expected)


def test_expected_log_likelihood_by_hand():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [3.0, 0.0]]])  # (K=2, B=2, C=2)
    labels = torch.tensor([0, 1])

    def log_softmax(row, c):
        return row[c] - math.log(sum(math.exp(v) for v in row))

    expected = [
        (log_softmax([2.0, 0.0], 0) + log_softmax([0.0, 1.0], 1)) / 2,
        (log_softmax([0.0, 0.0], 0) + log_softmax([3.0, 0.0], 1)) / 2,
    ]
    assert expected_log_likelihood(logits, labels).tolist() == pytest.approx(expected)


def test_feature_entropy_is_the_softmax_entropy_over_feature_dimensions():
    flat = torch.zeros(3, 4)  # uniform softmax: ln 4
    skewed = torch.tensor([[math.log(3.0), 0.0]])  # softmax (3/4, 1/4)
    h_skewed = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert feature_entropy([flat, flat]).tolist() == pytest.approx([math.log(4)] * 2)
    assert feature_entropy([flat, skewed]).tolist() == pytest.approx([math.log(4), h_skewed])  # mixed dims


def test_modal_significance_three_modalities():
    xi = modal_significance(torch.tensor(1.5), torch.tensor([-0.5, -1.0, -1.4]), torch.tensor([2.0, 4.0, 1.0]))
    assert xi.tolist() == pytest.approx([1.0 / 2.0, 0.5 / 4.0, 0.1 / 1.0])
    assert modal_significance(torch.tensor(1.0), torch.tensor([-0.7]), torch.tensor([2.0]), offset=0.5).item() == pytest.approx(0.4)


def test_momentum_update():
    xi1, xi2 = torch.tensor([0.3, 0.1]), torch.tensor([0.5, -0.1])
    u = momentum_update(None, xi1, 0.9)
    assert torch.equal(u, xi1)  # u starts at the first ξ
    u = momentum_update(u, xi2, 0.9)
    assert u.tolist() == pytest.approx([0.9 * 0.3 + 0.1 * 0.5, 0.9 * 0.1 + 0.1 * -0.1])


@pytest.mark.parametrize("u", [[0.3, 0.1], [0.2, 0.05, -0.1]])
def test_update_ratio_by_hand(u):
    tau = 0.25
    exps = [math.exp(v / tau) for v in u]
    expected = [1 - e / sum(exps) for e in exps]
    p = update_ratio(torch.tensor(u), tau)
    assert p.tolist() == pytest.approx(expected)
    assert (1 - p).sum().item() == pytest.approx(1.0)  # Σ_k (1 − p^(k)) = 1 without clamping
    assert p.argmax().item() == len(u) - 1  # the least significant (weakest) modality updates most


def test_smaller_tau_widens_the_gap():
    u = torch.tensor([0.3, 0.1])
    gaps = [(lambda p: (p[1] - p[0]).item())(update_ratio(u, tau)) for tau in (0.1, 0.25, 1.0, 4.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] > 0  # Table VIII's trend


def test_code_update_ratio_two_modalities_and_fallbacks():
    xi = torch.tensor([0.4, 0.1])
    t_a, t_v = 0.4 / 0.2, 0.1 / 0.2
    p = code_update_ratio(xi, torch.tensor([1.0, 1.0]), 0.2)
    # the code: coeff_a = exp(t_v) / (exp(t_v) + exp(t_a)), coeff_v = exp(t_a) / (…)
    assert p.tolist() == pytest.approx([math.exp(t_v) / (math.exp(t_v) + math.exp(t_a)),
                                        math.exp(t_a) / (math.exp(t_v) + math.exp(t_a))])
    assert code_update_ratio(xi, torch.tensor([1.0, 0.0]), 0.2).tolist() == [0.5, 0.5]  # a numerator <= 0
    assert code_update_ratio(torch.tensor([math.nan, 0.1]), torch.tensor([1.0, 1.0]), 0.2).tolist() == [0.5, 0.5]


# ----------------------------------------------------------------------------- helpers


def build(params=None, **sections) -> Trial:
    return Trial(parse_trial_config(tiny_config("amss", params=params or {}, **sections)))


def forward_backward(trial: Trial, batch_size: int = 64):
    batch = next(trial.data.train.batches(batch_size, generator=torch.Generator().manual_seed(0)))
    trial.model.train()
    trial.model.zero_grad(set_to_none=True)
    out = trial.model(batch.inputs)
    F.cross_entropy(out.logits, batch.labels).backward()
    ctx = StepContext(epoch=1, step=0, global_step=0, modulating=True, generator=trial.method_generator, device=trial.device)
    return out, batch, ctx


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


class Spy:
    """Records the outputs of a trainables.amss function while calling the real one."""

    def __init__(self, monkeypatch, name: str):
        self.real = getattr(amss_module, name)
        self.calls: list[tuple[tuple, torch.Tensor]] = []
        monkeypatch.setattr(amss_module, name, self)

    def __call__(self, *args, **kwargs):
        out = self.real(*args, **kwargs)
        self.calls.append((args, out))
        return out


def masked_names(trial: Trial) -> dict[str, int]:
    """Parameter name → modality index, for every parameter the method masks."""
    names = {id(p): n for n, p in trial.model.named_parameters()}
    return {names[id(piece.param)]: layer.modality for g in trial.method.groups for layer in g.layers for piece in layer.pieces}


# ----------------------------------------------------------------------------- mask units (App. C.2)


def test_mlp_units_are_output_rows_of_block_weights():
    trial = build()
    layers = mask_layers(trial.model, trial.modalities, scope="backbone", unit="auto")
    assert [(layer.modality, layer.kind, layer.units) for layer in layers] == [(0, "rows", 128)] * 2 + [(1, "rows", 128)] * 2
    for m, k in (("audio", 0), ("video", 1)):
        weights = [b[0].weight for b in trial.model.depth_blocks(m)]
        assert [layer.pieces[0].param for layer in layers if layer.modality == k] == weights  # no biases
    element = mask_layers(trial.model, trial.modalities, scope="backbone", unit="element")
    assert [layer.units for layer in element] == [64 * 128, 128 * 128] * 2


def test_cnn_units_are_output_channels_summed_over_kernel():
    trial = build(dataset=SHAPED, model={"backbone": "cnn"})
    layers = mask_layers(trial.model, trial.modalities, scope="backbone", unit="auto")
    assert [(layer.kind, layer.units) for layer in layers] == [("channels", 32), ("channels", 64)] * 2
    w = layers[1].pieces[0].param
    g = torch.randn(w.shape)
    assert torch.allclose(unit_fisher(layers[1], [g * g]), (g * g).sum((1, 2, 3)))


@pytest.mark.parametrize("unit", ["auto", "element"])
def test_channels_last_convolutions_are_masked_where_their_importance_was_measured(monkeypatch, unit):
    # channels_last (the CUDA default for conv backbones) gives conv weights and their gradients a layout
    # that no view flattens to (C_out, rest); masking must still hit the channels / elements it sampled.
    trial = build({"mask_unit": unit}, dataset=SHAPED, model={"backbone": "cnn"}, train={"channels_last": True})
    out, batch, ctx = forward_backward(trial)
    before = grads(trial.model)
    convs = {n for n, g in before.items() if g.dim() == 4 and not g.is_contiguous()}  # (with 1 input channel
    assert len(convs) >= 2  # channels_last is also contiguous; the others are the case under test)
    masks, importances = Spy(monkeypatch, "sample_mask"), Spy(monkeypatch, "fisher_importance")
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    after = grads(trial.model)
    rows = {}
    for group, (_, mask), (_, weights) in zip(trial.method.groups, masks.calls, importances.calls, strict=True):
        for layer, row, w in zip(group.layers, mask, weights, strict=True):
            rows[id(layer.pieces[0].param)] = (row, w)
    names = {id(p): n for n, p in trial.model.named_parameters()}
    checked = 0
    for pid, (row, w) in rows.items():
        name = names[pid]
        if name not in convs:
            continue
        g = before[name]
        if unit == "auto":  # one unit per output channel, Fisher summed over its kernel
            assert torch.allclose(w, (g * g).sum((1, 2, 3)) / (g * g).sum(), rtol=1e-5)
            expected = g * row.view(-1, 1, 1, 1)
        else:  # one unit per element, in the weight's logical order
            assert torch.allclose(w, (g * g).reshape(-1) / (g * g).sum(), rtol=1e-5)
            expected = g * row.view(g.shape)
        assert torch.equal(after[name], expected), name
        assert 0 < int(row.sum()) < row.numel()  # some kept, some dropped: the check has teeth
        checked += 1
    assert checked == len(convs)


def test_transformer_units_are_heads_and_rows():
    trial = build(model={"backbone": "transformer", "num_layers": 1, "hidden_dim": 16})
    layers = [layer for layer in mask_layers(trial.model, trial.modalities, scope="backbone", unit="auto") if layer.modality == 0]
    assert [(layer.kind, layer.units) for layer in layers] == [("rows", 16), ("heads", 4), ("rows", 32), ("rows", 16)]
    mha = trial.model.encoders["audio"].blocks[0][1].self_attn
    heads = layers[1]
    assert [piece.param for piece in heads.pieces] == [mha.in_proj_weight, mha.out_proj.weight]
    g_in, g_out = torch.randn(48, 16), torch.randn(16, 16)
    got = unit_fisher(heads, [g_in**2, g_out**2])
    for h in range(4):  # head h: rows h*4:(h+1)*4 of each of Q, K, V, and those columns of the output projection
        rows = torch.cat([g_in[q * 16 + h * 4: q * 16 + (h + 1) * 4] for q in range(3)])
        assert got[h].item() == pytest.approx((rows**2).sum().item() + (g_out[:, h * 4:(h + 1) * 4] ** 2).sum().item(), rel=1e-5)
    masked = {id(piece.param) for layer in layers for piece in layer.pieces}
    norms = [p for mod in trial.model.encoders["audio"].modules() if isinstance(mod, nn.LayerNorm) for p in mod.parameters()]
    assert not masked & {id(p) for p in norms}
    assert id(trial.model.encoders["audio"].blocks[0][0].pos) not in masked


def test_bert_attention_units_are_heads():
    """App. C.2 for the Hugging Face BERT encoder: Q, K, V rows and output-projection columns grouped by head."""
    import mmtune.models.text  # noqa: F401  registers "bert"
    from mmtune.models.encoders import build_encoder
    from mmtune.models.fusions import build_fusion
    from mmtune.models.multimodal import MultimodalModel

    encoders = {"text": build_encoder("bert", input_shape=(12,), hidden_dim=16, num_layers=2),
                "image": build_encoder("mlp", input_shape=(8,), hidden_dim=16, num_layers=2)}
    model = MultimodalModel(encoders, build_fusion("concat", feature_dims={m: e.out_dim for m, e in encoders.items()},
                                                   num_classes=3), 3)
    layers = [layer for layer in mask_layers(model, ["text", "image"], scope="backbone", unit="auto") if layer.modality == 0]
    kinds = [(layer.kind, layer.units) for layer in layers]
    assert kinds.count(("heads", 4)) == 2  # one per BERT layer (16 / 4 heads)
    attention = encoders["text"].blocks[0].layer.attention
    heads = next(layer for layer in layers if layer.kind == "heads")
    assert [piece.param for piece in heads.pieces] == [attention.self.query.weight, attention.self.key.weight,
                                                       attention.self.value.weight, attention.output.dense.weight]
    squared = [torch.randn(p.param.shape) ** 2 for p in heads.pieces]
    got = unit_fisher(heads, squared)
    for h in range(4):
        rows = sum(sq[h * 4:(h + 1) * 4].sum() for sq in squared[:3])
        assert got[h].item() == pytest.approx((rows + squared[3][:, h * 4:(h + 1) * 4].sum()).item(), rel=1e-5)
    # Those projections are masked as heads only, never again as rows; embeddings and norms never.
    ids = [id(piece.param) for layer in layers for piece in layer.pieces]
    assert len(ids) == len(set(ids))
    assert id(encoders["text"].blocks[0].embeddings.word_embeddings.weight) not in ids
    assert ("element" not in {layer.kind for layer in layers})


def test_resnet_masks_block_convolutions_only():
    trial = build(dataset=SHAPED, model={"backbone": "resnet18"})
    encoder = trial.model.encoders["audio"]
    layers = [layer for layer in mask_layers(trial.model, trial.modalities, scope="backbone", unit="auto") if layer.modality == 0]
    assert len(layers) == 16 and all(layer.kind == "channels" for layer in layers)  # 4 stages × 2 blocks × 2 convs
    masked = {id(layer.pieces[0].param) for layer in layers}
    assert id(encoder.conv1.weight) not in masked  # stem
    downsample = [m.weight for m in encoder.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(downsample) == 3 and not masked & {id(w) for w in downsample}
    assert all(layer.pieces[0].param.shape[-2:] == (3, 3) for layer in layers)
    # One step: only those convolutions' gradients change; stem, downsample and BatchNorm stay bit-identical.
    out, batch, ctx = forward_backward(trial, batch_size=4)
    before = grads(trial.model)
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    after = grads(trial.model)
    names = masked_names(trial)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= set(names) and len(changed) >= len(names) // 2 and len(names) == 32


# ----------------------------------------------------------------------------- importance and sampling


def test_fisher_importance_normalises_within_each_layer():
    f = torch.tensor([[1.0, 3.0, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    w = fisher_importance(f)
    assert w[0].tolist() == pytest.approx([0.125, 0.375, 0.0, 0.5])
    assert w[1].tolist() == pytest.approx([0.25] * 4)  # no gradient at all: uniform


def test_per_sample_fisher_is_the_mean_squared_per_sample_gradient():
    trial = build()
    batch = next(trial.data.train.batches(6, generator=torch.Generator().manual_seed(0)))
    params = [trial.method.groups[0].layers[0].pieces[0].param, trial.method.groups[0].layers[3].pieces[0].param]
    got = per_sample_fisher(trial.model, params, batch)
    expected = [torch.zeros_like(p) for p in params]
    for i in range(len(batch)):
        out = trial.model({m: x[i:i + 1] for m, x in batch.inputs.items()})
        g = torch.autograd.grad(F.cross_entropy(out.logits, batch.labels[i:i + 1]), params)
        for e, gi in zip(expected, g, strict=True):
            e += gi**2 / len(batch)
    for a, b in zip(got, expected, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-10)


def test_sample_keeps_exactly_ceil_p_c_units_per_row():
    gen = torch.Generator().manual_seed(0)
    weights = fisher_importance(torch.rand(5, 37, generator=gen) ** 3)
    p = torch.tensor([0.05, 0.3, 0.5, 0.71, 1.0])
    counts = sample_count(p, 37)
    assert counts.tolist() == [math.ceil(v * 37) for v in (0.05, 0.3, 0.5, 0.71, 1.0)]
    for _ in range(5):
        mask = sample_mask(weights, counts, gen)
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
        assert mask.sum(1).tolist() == counts.tolist()


def test_single_draw_frequencies_equal_the_importance():
    w = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03])
    draws = 40_000
    mask = sample_mask(w.expand(draws, -1).contiguous(), torch.ones(draws), torch.Generator().manual_seed(1))
    assert (mask.mean(0) - w).abs().max().item() < 0.01  # 4σ ≈ 0.01


def test_sampling_without_replacement_prefers_important_units():
    gen = torch.Generator().manual_seed(2)
    w = fisher_importance(torch.rand(1, 40, generator=gen) ** 4)
    draws, n = 20_000, torch.tensor([12.0])
    freq = sample_mask(w.expand(draws, -1).contiguous(), n.expand(draws), gen).mean(0)
    assert freq.sum().item() == pytest.approx(12.0)
    order = w[0].argsort()
    assert torch.corrcoef(torch.stack([freq[order], torch.arange(40.0)]))[0, 1] > 0.9  # more important, more often


def test_uniform_sampling_is_uniform():
    draws, c, n = 20_000, 20, 7
    w = torch.full((draws, c), 1.0 / c)
    freq = sample_mask(w, torch.full((draws,), float(n)), torch.Generator().manual_seed(3)).mean(0)
    assert (freq - n / c).abs().max().item() < 0.015


@pytest.mark.parametrize("p,units,expected", [(0.15, 100, 15), (0.3, 100, 30), (0.2, 5, 1), (0.7, 10, 7),
                                              (1.0, 128, 128), (0.0, 64, 0), (0.151, 100, 16), (0.01, 3, 1)])
def test_sample_count_is_exact_for_decimal_ratios(p, units, expected):
    # Before: ceil in float32 drew 16 of 100 units for p = 0.15 and 31 for p = 0.3.
    assert sample_count(p, units).item() == expected
    assert sample_count(torch.tensor(p), units).item() == expected
    assert sample_count(torch.tensor([p], dtype=torch.float32), units).tolist() == [expected]


def test_unbiased_mask_multipliers():
    mask = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    pi = torch.tensor([[0.9, 0.2, 0.5, 0.4]])
    a = 1 / 4
    m = unbiased_mask(mask, pi)
    assert m[0].tolist() == pytest.approx([1 / (0.9 + a), 0.0, 1 / (0.5 + a), 1 / (0.4 + a)])


# ----------------------------------------------------------------------------- masking a real step


def test_amss_masks_exactly_the_sampled_units(monkeypatch):
    trial = build()
    out, batch, ctx = forward_backward(trial)
    before = grads(trial.model)
    masks = Spy(monkeypatch, "sample_mask")
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    p = torch.tensor([trial.method.traces.compute()[f"p/{m}"] for m in trial.modalities])
    (weights_counts, mask), = [(c[0], c[1]) for c in masks.calls]
    group = trial.method.groups[0]
    assert mask.sum(1).tolist() == [math.ceil(p[layer.modality].item() * 128) for layer in group.layers]
    after = grads(trial.model)
    layer_of = {id(layer.pieces[0].param): r for r, layer in enumerate(group.layers)}
    for name, param in trial.model.named_parameters():
        if id(param) in layer_of:
            row = mask[layer_of[id(param)]]
            assert torch.equal(after[name], before[name] * row.unsqueeze(1)), name
            assert (after[name][row == 0] == 0).all()
        else:
            assert torch.equal(after[name], before[name]), name  # biases, fusion: bit-identical


def test_plus_multipliers_are_one_over_importance_plus_a(monkeypatch):
    trial = build({"plus": True})
    out, batch, ctx = forward_backward(trial)
    before = grads(trial.model)
    masks = Spy(monkeypatch, "sample_mask")
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    ((weights, _, _), mask), = masks.calls
    expected_factor = torch.where(mask > 0, 1.0 / (weights + 1 / 128), torch.zeros_like(weights))
    layer = trial.method.groups[0].layers[0]
    name = next(n for n, p in trial.model.named_parameters() if p is layer.pieces[0].param)
    assert torch.allclose(trial.model.get_parameter(name).grad, before[name] * expected_factor[0].unsqueeze(1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scope", ["backbone", "classifier", "both"])
def test_scopes_touch_exactly_their_parameters(scope):
    trial = build({"mask_scope": scope}, model={"fusion": "late"})
    out, batch, ctx = forward_backward(trial)
    before = grads(trial.model)
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    after = grads(trial.model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    heads = {f"fusion.heads.{m}.weight" for m in trial.modalities}
    blocks = {f"encoders.{m}.blocks.{d}.0.weight" for m in trial.modalities for d in range(2)}
    expected = {"backbone": blocks, "classifier": heads, "both": blocks | heads}[scope]
    assert changed == expected
    assert set(masked_names(trial)) == expected


@pytest.mark.parametrize("scope", ["classifier", "both"])
def test_concat_classifier_scope_masks_each_modalitys_column_block_by_class_rows(monkeypatch, scope):
    trial = build({"mask_scope": scope})  # the default fusion: concat, one head shared by all
    out, batch, ctx = forward_backward(trial)
    before = grads(trial.model)
    masks = Spy(monkeypatch, "sample_mask")
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    after = grads(trial.model)
    fusion = trial.model.fusion
    head_layers = [(g_i, r, layer) for g_i, g in enumerate(trial.method.groups) for r, layer in enumerate(g.layers)
                   if layer.pieces[0].param is fusion.fc.weight]
    assert sorted(layer.modality for _, _, layer in head_layers) == list(range(len(trial.modalities)))
    expected = before["fusion.fc.weight"].clone()
    for g_i, r, layer in head_layers:
        (start, stop), row = layer.pieces[0].columns, masks.calls[g_i][1][r]
        m = trial.modalities[layer.modality]
        assert (start, stop) == fusion.owned_columns(m)[0][1:]
        assert layer.units == trial.data.num_classes and row.sum() == math.ceil(
            trial.method.traces.compute()[f"p/{m}"] * layer.units - 1e-6)
        expected[:, start:stop] *= row.unsqueeze(1)
    assert torch.equal(after["fusion.fc.weight"], expected)
    assert torch.equal(after["fusion.fc.bias"], before["fusion.fc.bias"])  # shared: nobody's subnetwork
    encoders_changed = any(not torch.equal(before[n], after[n]) for n in before if n.startswith("encoders."))
    assert encoders_changed == (scope == "both")


def test_classifier_scope_needs_a_classifier_part_per_modality():
    with pytest.raises(ConfigError, match="mask_scope"):
        build({"mask_scope": "classifier"}, model={"fusion": "sum"})  # shared per-modality sums: no owned part


def test_config_rejects_inverted_clamp_range():
    with pytest.raises(ConfigError, match="p_min"):
        build({"p_min": 0.8, "p_max": 0.2})


def test_fixed_p_is_table_one_ms_with_the_given_ratios(monkeypatch):
    trial = build({"fixed_p": {"audio": 0.25, "video": 1.0}, "sampling": "uniform"})
    out, batch, ctx = forward_backward(trial)
    before = grads(trial.model)
    masks = Spy(monkeypatch, "sample_mask")
    trial.method.modulate_gradients(trial.model, out, batch, ctx)
    traces = trial.method.traces.compute()
    assert (traces["p/audio"], traces["p/video"]) == (0.25, 1.0) and traces["xi/audio"] != 0  # ξ still traced
    (_, mask), = [(c[0], c[1]) for c in masks.calls]
    group = trial.method.groups[0]
    assert mask.sum(1).tolist() == [32 if layer.modality == 0 else 128 for layer in group.layers]  # ⌈0.25·128⌉
    after = grads(trial.model)
    video = [n for n, m in masked_names(trial).items() if m == 1]
    assert video and all(torch.equal(after[n], before[n]) for n in video)  # p = 1: every unit updated


def test_fixed_p_must_name_every_modality_with_a_ratio_in_0_1():
    with pytest.raises(ConfigError, match="fixed_p.*dataset's are"):
        build({"fixed_p": {"audio": 0.2}})
    with pytest.raises(ConfigError, match=r"fixed_p.video.*\[0, 1\]"):
        build({"fixed_p": {"audio": 0.2, "video": 1.5}})


# ----------------------------------------------------------------------------- trials


@pytest.mark.parametrize("params,sections", [
    ({}, {}),
    ({"plus": True}, {}),
    ({"sampling": "uniform", "plus": True}, {}),
    ({"fisher": "per_sample"}, {}),
    ({"mask_unit": "element"}, {}),
    ({"formula": "code"}, {}),
    ({"plus": True}, {"dataset": SHAPED, "model": {"backbone": "cnn"}}),
    ({"fisher": "per_sample", "plus": True}, {"model": {"backbone": "transformer", "hidden_dim": 16, "num_layers": 1},
                                              "dataset": {"n_train": 64, "n_val": 32, "n_test": 32}}),
], ids=["amss", "plus", "uniform", "per_sample", "element", "code", "cnn", "transformer"])
def test_short_trial_runs_and_traces(params, sections):
    trial = build(params, **sections)
    metrics = [trial.step() for _ in range(2)][-1]
    assert all(math.isfinite(v) for v in metrics.values())
    for q in ("xi", "u", "p"):
        assert {f"trace/{q}/audio", f"trace/{q}/video"} <= set(metrics)
    p = [metrics["trace/p/audio"], metrics["trace/p/video"]]
    if params.get("formula") == "code":
        assert all(0.1 <= v <= 0.9 for v in p)  # the code's clamp
    else:
        assert sum(1 - v for v in p) == pytest.approx(1.0, abs=1e-5)


def without_timing(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


@pytest.mark.parametrize("params", [{"plus": True}, {"formula": "code", "fisher": "per_sample"}], ids=["plus", "code"])
def test_save_restore_continue_equals_uninterrupted(params):
    def make() -> Trial:
        return Trial(parse_trial_config(tiny_config("amss", params=params, dataset={"n_train": 128})))

    uninterrupted = make()
    expected = [without_timing(uninterrupted.step()) for _ in range(3)][1:]
    trial = make()
    trial.step()
    assert trial.method.state_dict()["u"].shape == (2,)
    restored = restore_into(trial, make())
    assert torch.equal(restored.method.u, trial.method.u)
    assert [without_timing(restored.step()) for _ in range(2)] == expected


def test_window_is_respected():
    trial = build({"start_epoch": 2, "end_epoch": 2})
    traced = ["trace/p/audio" in trial.step() for _ in range(3)]
    assert traced == [False, True, False]
    assert trial.method.u is not None


def test_default_set_updates_the_weak_modality_more():
    trial = Trial(parse_trial_config({"method": "amss", "train": {"epochs": 2}}))
    metrics = [trial.step() for _ in range(2)][-1]  # audio (dominant) already more significant after 2 epochs
    assert metrics["trace/xi/audio"] > metrics["trace/xi/video"]
    assert metrics["trace/p/video"] > metrics["trace/p/audio"]


def test_late_fusion_scores_each_modality_by_its_own_head():
    """§III-B: q(y | x^k) is modality k's own classifier; under late fusion that is head_k(φ^k), not
    head_k(φ^k)/M (the fused logits' component). The issue's repro, values by the paper's definition."""
    from mmtune.config import from_dict
    from mmtune.models import ModelConfig, build_model
    from mmtune.trainables.amss import AMSS, AMSSConfig

    torch.manual_seed(0)
    cfg = from_dict(ModelConfig, {"backbone": "mlp", "fusion": "late", "hidden_dim": 4, "num_layers": 1})
    model = build_model(cfg, input_shapes={"audio": (3,), "video": (3,)}, num_classes=3)
    xa, xv = torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    method = AMSS(AMSSConfig(), modalities=["audio", "video"], num_classes=3, device=torch.device("cpu"))
    method.bind(model)
    out = model({"audio": xa, "video": xv})
    xi, p = method.update_ratios(model, out, y)
    assert xi.tolist() == pytest.approx([-0.1532, 0.0942], abs=1e-4)  # was [-0.0883, 0.0661] with head/M
    assert p.tolist() == pytest.approx([0.729, 0.271], abs=1e-3)  # was [0.650, 0.350]
    # The same by hand: each head's own log-likelihood.
    own = [model.fusion.heads[m](out.features[m]) for m in ("audio", "video")]
    by_hand = modal_significance(label_entropy(y, 3), expected_log_likelihood(torch.stack(own), y),
                                 feature_entropy([out.features["audio"], out.features["video"]]))
    assert torch.allclose(xi, by_hand)
