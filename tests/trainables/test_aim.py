"""AIM: Eq. 3–15 by hand (M = 2, 3), Eq. 13's gradient path, DAP with the framework frozen, the
phase switch at E, each ablation switch, every encoder, frame stacks, save → restore → continue."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import restore_into, tiny_config
from torch import nn

import mmtune.trainables.aim as aim  # registers 'aim' (trainables/__init__ does not import it yet)
from mmtune.data.base import TensorSplit
from mmtune.engine.loop import train_epoch
from mmtune.engine.method import StepContext
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.models import ModelConfig, build_model
from mmtune.trainables.aim import (
    AIM,
    AIMConfig,
    DecouplingMaps,
    coefficient_of_variation,
    complementary_parameters,
    dap_classification_loss,
    dap_reconstruction_loss,
    decoupled_parameters,
    depth_loss,
    latent_and_mask,
    modulation_loss,
    participation_weights,
    prototype_logits,
    reconstruction_loss,
    score_and_loss,
)

SHAPED = {"shape": "shaped", "image_size": 16, "n_train": 64, "n_val": 32, "n_test": 32}


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: intra-op threads only add OpenMP spin-waits, which on a shared 2-core
    machine made this file 8× slower (160 s vs 20 s). Scoped to this file's tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def aim_trial(params: dict | None = None, **sections) -> Trial:
    return Trial(parse_trial_config(tiny_config("aim", params=params or {}, **sections)))


def without_timing(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# ----------------------------------------------------------------------------------- equations


def test_prototype_logits_are_negative_euclidean_distances():
    features = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    prototypes = torch.tensor([[0.0, 0.0], [0.0, 4.0], [3.0, 0.0]])
    assert torch.allclose(prototype_logits(features, prototypes), torch.tensor([[0.0, -4, -3], [-5, -3, -4]]))


def test_score_and_loss_by_hand():
    # Sample 1: softmax([0, ln 2, 0]) = [1/4, 1/2, 1/4], label 1; sample 2: uniform, label 2.
    logits = torch.tensor([[[0.0, math.log(2.0), 0.0], [0.0, 0.0, 0.0]]])
    s, loss = score_and_loss(torch.cat([logits, logits.flip(1)]), torch.tensor([1, 2]))
    assert s[0].item() == pytest.approx((1 / 2 + 1 / 3) / 2)  # Eq. 9
    assert loss[0].item() == pytest.approx((math.log(2) + math.log(3)) / 2)  # Eq. 10
    # Second block (rows swapped): sample 1 uniform with label 1, sample 2 gets 1/4 for label 2.
    assert s[1].item() == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert loss[1].item() == pytest.approx((math.log(3) + math.log(4)) / 2)


def test_participation_weights_two_modalities_by_hand():
    s, s_aux = torch.tensor([[0.8, 0.2]]), torch.tensor([[0.1, 0.3]])
    rho, rho_aux = participation_weights(s, s_aux)
    z = sum(math.exp(-v) for v in (0.8, 0.2, 0.1, 0.3))
    assert rho.tolist()[0] == pytest.approx([math.exp(-0.8) / z, math.exp(-0.2) / z])  # Eq. 12
    assert rho_aux.tolist()[0] == pytest.approx([math.exp(-0.1) / z, math.exp(-0.3) / z])
    assert (rho.sum() + rho_aux.sum()).item() == pytest.approx(1.0)
    assert rho[0, 1] > rho[0, 0]  # the weaker original block takes part more
    plain, none = participation_weights(s)  # w/o PAM: over the originals only
    assert none is None
    assert plain.tolist()[0] == pytest.approx([math.exp(-0.8) / (math.exp(-0.8) + math.exp(-0.2)),
                                                math.exp(-0.2) / (math.exp(-0.8) + math.exp(-0.2))])


def test_participation_weights_three_modalities_sum_to_one_per_depth():
    g = torch.Generator().manual_seed(0)
    s, s_aux = torch.rand(4, 3, generator=g), torch.rand(4, 3, generator=g)
    rho, rho_aux = participation_weights(s, s_aux)
    assert torch.allclose(rho.sum(-1) + rho_aux.sum(-1), torch.ones(4))
    equal, equal_aux = participation_weights(torch.full((1, 3), 0.4), torch.full((1, 3), 0.4))
    assert equal.tolist()[0] == pytest.approx([1 / 6] * 3) and equal_aux.tolist()[0] == pytest.approx([1 / 6] * 3)


def test_coefficient_of_variation_by_hand():
    assert coefficient_of_variation(torch.tensor([[0.3, 0.3], [0.5, 0.5]])).tolist() == [0.0, 0.0]
    assert coefficient_of_variation(torch.tensor([0.2, 0.6])).item() == pytest.approx(0.2 / 0.4)  # M = 2
    std = math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 3)  # 1/M, Eq. 14
    assert coefficient_of_variation(torch.tensor([0.1, 0.2, 0.6])).item() == pytest.approx(std / 0.3)


def test_depth_loss_and_modulation_loss_by_hand():
    losses = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # (D, M)
    aux = torch.tensor([[5.0, 6.0], [7.0, 8.0]])
    rho = torch.tensor([[0.1, 0.2], [0.3, 0.1]])
    rho_aux = torch.tensor([[0.3, 0.4], [0.2, 0.4]])
    l_d = depth_loss(losses, rho, aux, rho_aux)  # Eq. 11
    assert l_d.tolist() == pytest.approx([0.1 + 0.4 + 1.5 + 2.4, 0.9 + 0.4 + 1.4 + 3.2])
    assert depth_loss(losses, rho).tolist() == pytest.approx([0.5, 1.3])
    alpha = torch.tensor([0.5, 2.0])
    assert modulation_loss(alpha, l_d).item() == pytest.approx(0.5 * 4.4 + 2.0 * 5.9)  # Eq. 15
    three = torch.tensor([[1.0, 2.0, 3.0]])
    assert depth_loss(three, torch.full((1, 3), 1 / 3)).item() == pytest.approx(2.0)  # M = 3


def tiny_maps() -> DecouplingMaps:
    """chunk 2 → latent 1: θ_lat = θ1 + θ2, w = σ(ln 3) = 3/4, Ψ(z) = (z, 2z)."""
    return DecouplingMaps(torch.tensor([[1.0, 1.0]]), torch.zeros(1), torch.zeros(1, 1), torch.tensor([math.log(3.0)]),
                          torch.tensor([[1.0], [2.0]]), torch.zeros(2))


def test_decoupling_by_hand():
    theta = torch.tensor([[1.0, 2.0]])
    lat, w = latent_and_mask(theta, tiny_maps())
    assert lat.item() == 3.0 and w.item() == pytest.approx(0.75)
    assert decoupled_parameters(theta, tiny_maps()).tolist()[0] == pytest.approx([2.25, 4.5])  # Eq. 7
    theta_g, rec = complementary_parameters(theta, tiny_maps())
    assert theta_g.tolist()[0] == pytest.approx([0.75, 1.5]) and rec.tolist()[0] == pytest.approx([3.0, 6.0])
    assert reconstruction_loss(theta, rec, numel=2).item() == pytest.approx((1 - 3) ** 2 + (2 - 6) ** 2)  # Eq. 8
    # Padding (the tail of the last chunk) never counts, and L_re is a mean over chunks.
    two = torch.tensor([[1.0, 2.0], [1.0, 0.0]])
    _, rec2 = complementary_parameters(two, tiny_maps())
    assert reconstruction_loss(two, rec2, numel=3).item() == pytest.approx((20 + (1 - 1) ** 2) / 2)


def test_decoupled_branches_add_up_to_the_reconstruction():
    g = torch.Generator().manual_seed(0)
    maps = DecouplingMaps(*(torch.randn(s, generator=g) for s in [(4, 8), (4,), (4, 4), (4,), (8, 4), (8,)]))
    theta = torch.randn(5, 8, generator=g)
    theta_g, rec = complementary_parameters(theta, maps)
    # Ψ is affine: Ψ(θ_lat ⊙ w) + Ψ(θ_lat ⊙ (1 − w)) = Ψ(θ_lat) + b_Ψ.
    assert torch.allclose(decoupled_parameters(theta, maps) + theta_g, rec + maps.dec_bias, atol=1e-5)


def test_decoupler_chunks_round_trip_and_starts_as_a_projection():
    torch.manual_seed(0)
    block = nn.Linear(5, 3)  # 18 parameters → 5 chunks of 4, the last padded by 2
    dec = aim._Decoupler(block, chunk=4, latent=2, where="test")
    params = list(block.parameters())
    chunks = dec.chunks(params)
    assert chunks.shape == (5, 4) and chunks.reshape(-1)[18:].tolist() == [0.0, 0.0]
    back = dec.unchunk(chunks)
    assert torch.equal(back["weight"], block.weight) and torch.equal(back["bias"], block.bias)
    with torch.no_grad():
        _, rec = complementary_parameters(chunks, dec.maps())
        _, rec2 = complementary_parameters(rec, dec.maps())
        assert torch.allclose(rec2, rec, atol=1e-6)  # Ψ∘Φ_lat = QQᵀ at init
        assert torch.allclose(decoupled_parameters(chunks, dec.maps()), 0.5 * rec, atol=1e-6)  # w = 1/2
    whole = aim._Decoupler(block, chunk=0, latent=512, where="test")  # the literal map: one chunk
    assert whole.num_chunks == 1 and whole.chunk == 18 and whole.encode.out_features == 18


def test_literal_map_that_does_not_fit_is_a_config_error():
    with pytest.raises(ConfigError, match="pdm_chunk"):
        aim_trial({"pdm_chunk": 0}, model={"hidden_dim": 2048})


def test_dap_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(math.e / (1 + math.e))) / 2
    assert dap_classification_loss(logits).item() == pytest.approx(expected)  # Eq. 3
    # Per modality (reading 12): (M, K, K) logits give the mean of each modality's Eq. 3.
    other = torch.tensor([[0.0, 3.0], [0.0, 0.0]])
    other_loss = (-math.log(1 / (1 + math.exp(3))) + math.log(2)) / 2
    assert dap_classification_loss(torch.stack([logits, other])).item() == pytest.approx((expected + other_loss) / 2)
    decoded = [torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[0.0], [2.0]])]
    means = [torch.tensor([[0.0, 1.0], [5.0, 5.0]]), torch.tensor([[1.0], [0.0]])]
    present = [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0])]  # class 1 of modality 0 not seen yet
    assert dap_reconstruction_loss(decoded, means, present).item() == pytest.approx((1 + 1 + 4) / (2 * 2))  # Eq. 4


def test_config_validation():
    with pytest.raises(ConfigError, match="prototypes"):
        AIMConfig(prototypes="labels")
    with pytest.raises(ConfigError, match="pdm_latent"):
        AIMConfig(pdm_latent=0)
    assert AIMConfig().start_epoch == 3 and AIM.always_active


# ----------------------------------------------------------------------------------- on a model


def first_batch(trial: Trial, size: int = 64):
    return next(trial.data.train.batches(size, generator=torch.Generator().manual_seed(0)))


def forward(trial: Trial, epoch: int):
    """The loop's first half for one batch: before_forward, forward, extra_loss."""
    method, model = trial.method, trial.model
    ctx = StepContext(epoch=epoch, step=0, global_step=0, modulating=method.in_window(epoch),
                      generator=trial.method_generator, device=trial.device)
    model.train()
    batch = method.before_forward(first_batch(trial), ctx)
    out = model(batch.inputs)
    return out, batch, ctx, method.extra_loss(out, batch, ctx)


def test_auxiliary_gradient_reaches_the_block_through_the_decoupling_map(monkeypatch):
    """Eq. 13: with the original blocks' weights set to 0, θ of the last block gets exactly J_pdm^T g_θb."""
    trial = aim_trial({"start_epoch": 1})
    method = trial.method
    seen: list[torch.Tensor] = []

    def keep(theta, maps):
        out = decoupled_parameters(theta, maps)
        out.retain_grad()
        seen.append(out)
        return out

    def aux_only(s, s_aux=None):
        rho, rho_aux = participation_weights(s, s_aux)
        return torch.zeros_like(rho), rho_aux

    monkeypatch.setattr(aim, "decoupled_parameters", keep)
    monkeypatch.setattr(aim, "participation_weights", aux_only)
    _, _, _, loss = forward(trial, 1)
    loss.backward()
    m, d = len(method.modalities) - 1, method.depth - 1  # last block of the last modality
    theta_b = seen[d * len(method.modalities) + m]
    dec = method._decouplers[m][d]
    params = method._params[m][d]
    _, expected = torch.func.vjp(lambda t: decoupled_parameters(t, dec.maps().detach()), dec.chunks(params).detach())
    (expected,) = expected(theta_b.grad)
    got = torch.cat([p.grad.reshape(-1) for p in params])
    assert got.abs().sum() > 0
    assert torch.allclose(got, expected.reshape(-1)[: dec.numel], atol=1e-7, rtol=1e-5)
    # The maps are constants in L_mod: they are trained by Eq. 8 in the warm-up only.
    assert all(p.grad is None for p in method.extra_parameters())


def test_dap_update_leaves_the_framework_untouched():
    trial = aim_trial({"start_epoch": 1}, dataset=SHAPED, model={"backbone": "cnn"}, train={"batch_size": 32})
    method, model = trial.method, trial.model
    out, batch, ctx, loss = forward(trial, 1)
    after_forward = {k: v.clone() for k, v in model.state_dict().items()}  # BN stats moved by the forward only
    (F.cross_entropy(out.logits, batch.labels) + loss).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    prototypes = [dap.prototypes.detach().clone() for dap in method._dap]
    method.modulate_gradients(model, out, batch, ctx)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in after_forward.items())  # parameters and BN buffers
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters())
    assert all(not torch.equal(dap.prototypes, p0) for dap, p0 in zip(method._dap, prototypes, strict=True))
    assert all(p.grad is None for p in method._dap_params)


@pytest.mark.parametrize("dap_cls", ["modality", "joint"])
def test_dap_cls_classifies_the_prototypes_per_modality_or_fused(monkeypatch, dap_cls):
    trial = aim_trial({"start_epoch": 1, "dap_cls": dap_cls})
    seen = []
    real = aim.dap_classification_loss
    monkeypatch.setattr(aim, "dap_classification_loss", lambda logits: seen.append(logits.detach()) or real(logits))
    forward(trial, 1)
    method, model = trial.method, trial.model
    with torch.no_grad():
        model.eval()
        out = model({m: dap.prototypes for m, dap in zip(method.modalities, method._dap, strict=True)})
        expected = out.logits if dap_cls == "joint" else model.stacked_unimodal_logits(out.features)
    (logits,) = seen
    k = trial.data.num_classes
    assert logits.shape == ((k, k) if dap_cls == "joint" else (len(method.modalities), k, k))
    torch.testing.assert_close(logits, expected)


def test_warmup_keeps_the_framework_on_the_joint_trajectory():
    """Before E only Eq. 2 trains the framework: bit-identical to joint training; Eq. 8 trains the maps."""
    trial, joint = aim_trial({"start_epoch": 3}), Trial(parse_trial_config(tiny_config("joint")))
    maps_before = [p.detach().clone() for p in trial.method.extra_parameters()]
    for _ in range(2):
        metrics, joint_metrics = trial.step(), joint.step()
        assert metrics["val_acc"] == joint_metrics["val_acc"]
    for (k, a), b in zip(trial.model.state_dict().items(), joint.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert any(not torch.equal(p, q) for p, q in zip(trial.method.extra_parameters(), maps_before, strict=True))
    assert "trace/alpha/d1" in metrics and "trace/s_aux/audio/d1" not in metrics


def test_phase_switches_exactly_at_E(monkeypatch):
    calls: list[tuple[str, int]] = []
    trial = aim_trial({"start_epoch": 3}, train={"epochs": 4, "batch_size": 128})
    spy_mod, spy_pdm = aim.modulation_loss, aim.complementary_parameters
    monkeypatch.setattr(aim, "modulation_loss", lambda *a: calls.append(("L_mod", trial.epoch)) or spy_mod(*a))
    monkeypatch.setattr(aim, "complementary_parameters", lambda *a: calls.append(("L_pdm", trial.epoch)) or spy_pdm(*a))
    history = [trial.step() for _ in range(4)]
    phases = {epoch: {name for name, e in calls if e == epoch} for epoch in range(1, 5)}
    assert phases == {1: {"L_pdm"}, 2: {"L_pdm"}, 3: {"L_mod"}, 4: {"L_mod"}}
    assert ["trace/s_aux/video/d2" in m for m in history] == [False, False, True, True]
    assert all("trace/alpha/d2" in m and "trace/dap/cls" in m for m in history)


def test_after_end_epoch_nothing_is_added():
    trial = aim_trial({"start_epoch": 2, "end_epoch": 2})
    traced = ["trace/alpha/d1" in trial.step() for _ in range(3)]
    assert traced == [True, True, False]


def spy_on(monkeypatch, name: str) -> list[tuple]:
    seen: list[tuple] = []
    real = getattr(aim, name)
    monkeypatch.setattr(aim, name, lambda *a: seen.append(a) or real(*a))
    return seen


def test_pam_switch_removes_only_the_auxiliary_blocks(monkeypatch):
    seen = spy_on(monkeypatch, "depth_loss")
    full, ablated = aim_trial({"start_epoch": 1}), aim_trial({"start_epoch": 1, "pam": False})
    forward(full, 1)
    forward(ablated, 1)
    (losses, rho, aux_losses, aux_rho), (losses_ab, rho_ab, *rest) = seen
    assert aux_losses is not None and rest == [None, None]
    assert torch.equal(losses, losses_ab)  # the original blocks are scored identically
    assert torch.allclose(rho_ab.sum(-1), torch.ones(full.method.depth))  # ρ over the M originals only
    assert torch.allclose(rho.sum(-1) + aux_rho.sum(-1), torch.ones(full.method.depth))
    assert ablated.method.extra_parameters() == [] and full.method.extra_parameters()


def test_dam_switch_sets_only_alpha_to_one(monkeypatch):
    seen = spy_on(monkeypatch, "modulation_loss")
    full, ablated = aim_trial({"start_epoch": 1}), aim_trial({"start_epoch": 1, "dam": False})
    forward(full, 1)
    forward(ablated, 1)
    (alpha, l_d), (ones, l_d_ab) = seen
    assert torch.equal(l_d, l_d_ab) and torch.equal(ones, torch.ones_like(alpha))
    traced = full.method.traces.compute()
    assert alpha.tolist() == pytest.approx([traced["alpha/d1"], traced["alpha/d2"]])
    assert ablated.method.traces.compute()["alpha/d1"] == traced["alpha/d1"]  # α_d still measured and traced


def test_sample_rows_keeps_every_frame_of_the_chosen_samples():
    x = torch.arange(4 * 3).view(4 * 3, 1)  # 4 samples × 3 frames folded sample-major
    assert aim._sample_rows(x, torch.tensor([2, 0]), 4).view(-1).tolist() == [6, 7, 8, 0, 1, 2]
    assert aim._sample_rows(torch.arange(4), torch.tensor([3, 1]), 4).tolist() == [3, 1]


@pytest.mark.parametrize("epoch", [1, 2])  # start_epoch 2: epoch 1 is the warm-up (θ_g blocks), 2 modulates
def test_aux_fraction_runs_auxiliary_blocks_on_a_shared_subset(monkeypatch, epoch):
    """aux_fraction=0.25: Ẽ (or θ_g) blocks see ⌈B/4⌉ samples, the same ones at every block and
    modality; the original blocks are still scored on the whole batch."""
    sizes: dict[str, list[int]] = {"part": [], "all": []}
    for key, fraction in (("part", 0.25), ("all", 1.0)):
        trial = aim_trial({"start_epoch": 2, "aux_fraction": fraction})
        real = trial.method._run_block
        monkeypatch.setattr(trial.method, "_run_block", lambda i, d, p, x, real=real, key=key: sizes[key].append(len(x)) or real(i, d, p, x))
        scored = spy_on(monkeypatch, "score_and_loss")
        draws = []
        subset = trial.method._subset
        monkeypatch.setattr(trial.method, "_subset", lambda n, ctx, subset=subset: draws.append(r := subset(n, ctx)) or r)
        out, batch, ctx, loss = forward(trial, epoch)
        assert len(draws) == 1  # one draw shared by every block and modality
        assert (draws[0][0] is None) == (key == "all")
        n = len(batch)
        assert loss is not None and torch.isfinite(loss)
    blocks = len(trial.method._order)
    assert sizes == {"part": [math.ceil(n / 4)] * blocks, "all": [n] * blocks}
    assert [logits.shape[1] for logits, _ in scored][:1] == [n]  # originals: whole batch


def test_label_switch_scores_blocks_with_the_classifier():
    trial = aim_trial({"start_epoch": 1, "prototypes": "label"})
    out, batch, _, loss = forward(trial, 1)
    method = trial.method
    assert method._dap is None and torch.isfinite(loss)
    traced = method.traces.compute()
    assert not any(k.startswith("dap/") for k in traced)
    # Original blocks: the rest of the pass is the model's own, so every depth gets the uni-modal score.
    with torch.no_grad():
        for m, logits in trial.model.unimodal_logits(out.features).items():
            s = torch.softmax(logits, 1).gather(1, batch.labels[:, None]).mean().item()
            for d in method.depth_names:
                assert traced[f"s/{m}/{d}"] == pytest.approx(s, abs=1e-6)


# ----------------------------------------------------------------------------------- encoders, checkpoints


@pytest.mark.parametrize(
    ("backbone", "dataset", "params"),
    [
        ("mlp", {}, {}),
        ("transformer", {}, {"depth_features": "flat"}),
        ("cnn", SHAPED, {}),
        pytest.param("resnet18", SHAPED, {}, marks=pytest.mark.slow),
    ],
)
def test_every_encoder_trains_through_both_phases(backbone, dataset, params):
    trial = aim_trial({"start_epoch": 2, **params}, dataset=dataset, model={"backbone": backbone}, train={"batch_size": 32})
    depth = trial.method.depth
    assert depth == (4 if backbone == "resnet18" else 2)
    for epoch in (1, 2):
        metrics = trial.step()
        assert all(math.isfinite(v) for v in metrics.values())
        for d in range(1, depth + 1):
            assert f"trace/alpha/d{d}" in metrics and f"trace/s/video/d{d}" in metrics
        assert ("trace/s_aux/audio/d1" in metrics) == (epoch == 2)


@pytest.mark.parametrize("depth_features", ["pooled", "flat"])
def test_frame_stacks(depth_features):
    """(T, C, H, W) inputs: prototypes are frame stacks, frames are folded into the batch by the encoder."""
    torch.manual_seed(0)
    shapes = {"audio": (1, 16, 16), "video": (2, 3, 16, 16)}
    model = build_model(ModelConfig(backbone="cnn"), input_shapes=shapes, num_classes=3)
    method = AIM(AIMConfig(start_epoch=1, depth_features=depth_features), modalities=list(shapes), num_classes=3,
                 device=torch.device("cpu"))
    method.bind(model)
    g = torch.Generator().manual_seed(0)
    split = TensorSplit({m: torch.randn((24, *s), generator=g) for m, s in shapes.items()}, torch.arange(24) % 3)
    optimizer = torch.optim.SGD(list(model.parameters()) + method.extra_parameters(), lr=0.01)
    ctx = StepContext(epoch=1, step=0, global_step=0, modulating=True, generator=torch.Generator().manual_seed(1),
                      device=torch.device("cpu"))
    method.begin_epoch(ctx)
    stats = train_epoch(model, split, method, optimizer, ctx, batch_size=12, data_generator=torch.Generator().manual_seed(2))
    assert math.isfinite(stats.loss_sum.item()) and stats.steps == 2
    assert method._dap[1].prototypes.shape == (3, 2, 3, 16, 16)
    traces = method.end_epoch(ctx)
    assert {"trace/alpha/d1", "trace/alpha/d2", "trace/s_aux/video/d2"} <= set(traces)


@pytest.mark.parametrize("params", [{"start_epoch": 2}, {"start_epoch": 2, "prototypes": "label", "pam": False}])
def test_save_restore_continue_equals_uninterrupted(params):
    def fresh() -> Trial:
        return aim_trial(params)

    uninterrupted = fresh()
    expected = [without_timing(uninterrupted.step()) for _ in range(3)]
    for stop in (0, 1):  # before the first step (no DAP yet) and inside the warm-up
        trial = fresh()
        for _ in range(stop):
            trial.step()
        restored = restore_into(trial, fresh())
        assert [without_timing(restored.step()) for _ in range(3 - stop)] == expected[stop:]
        final = restored.method.state_dict()
        reference = uninterrupted.method.state_dict()
        for key in ("decouplers", "dap"):
            if reference[key] is not None:
                assert all(torch.equal(final[key][k], v) for k, v in reference[key].items())


def test_unequal_depths_are_a_config_error():
    with pytest.raises(ConfigError, match="same number of depth blocks"):
        aim_trial({}, dataset=SHAPED, model={"backbone": "cnn", "backbones": {"video": "resnet18"}})


def test_divergence_names_the_methods_own_learning_rate():
    trial = aim_trial({"start_epoch": 1, "dap_lr": 1.0e6})
    with pytest.raises(FloatingPointError, match=r"Lower train.lr .*params.dap_lr \(1000000.0\)"):
        for _ in range(3):
            trial.step()
