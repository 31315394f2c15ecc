"""The method contract v2: registry and layering, hook-name checks, declared state, the context a
hook sees, after_step, stages, the model interfaces, and composition (namespaced parameters,
per-part windows, every pair of registered methods)."""

from __future__ import annotations

import ast
import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import restore_into, tiny_config
from torch import Tensor

import mmtune.trainables  # noqa: F401  registers the built-in methods
from mmtune.cli import main
from mmtune.config import from_dict, hp
from mmtune.engine.method import BalancingMethod, MethodConfig, Stage
from mmtune.engine.registry import METHODS, get_method, list_methods, register
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config
from mmtune.errors import ConfigError
from mmtune.models import ModelConfig, build_model

ROOT = Path(__file__).resolve().parents[2]


def fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


# ----------------------------------------------------------------------------- layering


def test_importing_the_methods_does_not_import_ray():
    fresh("import mmtune.trainables, sys; assert 'ray' not in sys.modules, 'ray imported'")


def test_mmtune_run_does_not_import_ray():
    fresh("import sys; from mmtune.cli import main; "
          "rc = main(['run', 'ogm', 'train.epochs=1', 'dataset.n_train=64', 'dataset.n_val=32', 'dataset.n_test=32']); "
          "assert rc == 0 and 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))[:5]")


def test_the_engine_finds_the_methods_through_entry_points_without_importing_them():
    # A notebook that imports only the engine still finds 'ogm' (the mmtune.methods entry point).
    out = fresh("import sys; from mmtune.engine.trial import Trial, parse_trial_config; "
                "assert 'mmtune.trainables' not in sys.modules; "
                "spec = parse_trial_config({'method': 'ogm'}); print(spec.method, 'mmtune.trainables' in sys.modules)")
    assert out.split() == ["ogm", "True"]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", ["engine", "models", "data"])
def test_imports_run_one_way_methods_to_engine_to_models_and_data(package):
    """Nothing below the methods imports them (or Ray); models and data never import the engine."""
    for path in sorted((ROOT / "mmtune" / package).glob("*.py")):
        imported = _imports(path)
        assert not {n for n in imported if n.startswith(("mmtune.trainables", "trainables", "ray"))}, path
        if package != "engine":
            assert not {n for n in imported if n.startswith(("mmtune.engine", "mmtune.sweep"))}, path


def test_methods_import_only_downwards():
    for path in sorted((ROOT / "trainables").glob("*.py")):
        imported = _imports(path)
        assert not {n for n in imported if n.startswith(("mmtune.sweep", "mmtune.cli", "ray", "trainables"))}, path


def test_the_wheel_has_no_top_level_trainables_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"mmtune.trainables" = "trainables"' in text
    import mmtune.trainables as t

    assert Path(t.__file__).resolve().parent == ROOT / "trainables"


# ----------------------------------------------------------------------------- registration


def test_a_hook_typo_is_refused_with_a_did_you_mean():
    class Typo(BalancingMethod):
        name = "typo-method"

        def modulate_gradient(self, model, out, batch, ctx):  # missing 's': would train as joint
            pass

    with pytest.raises(TypeError, match="Did you mean 'modulate_gradients'"):
        register(Typo)
    assert "typo-method" not in METHODS


def test_helpers_with_unrelated_names_are_fine_and_duplicates_are_refused():
    class Fine(BalancingMethod):
        name = "fine-method"

        def shapley_responses(self):
            return None

    try:
        register(Fine)
        assert get_method("fine-method") is Fine
        class Other(BalancingMethod):
            name = "fine-method"

        with pytest.raises(ValueError, match="already registered"):
            register(Other)
    finally:
        METHODS.pop("fine-method", None)


def test_an_unknown_method_names_the_known_ones():
    with pytest.raises(ConfigError, match="Did you mean 'ogm'"):
        get_method("ogmm")


# ----------------------------------------------------------------------------- context, state, stages


@dataclass(frozen=True)
class ProbeConfig(MethodConfig):
    split: int = hp(2, low=1, doc="epochs of the first stage")


class Probe(BalancingMethod):
    """A test method that uses every v2 capability: two stages, declared state, ctx.train, after_step."""

    name = "contract-probe"
    Config = ProbeConfig
    state = ("count", "means")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.count = torch.zeros((), device=self.device)
        self.means: Tensor | None = None
        self.seen: list[tuple] = []

    def stages(self, epochs: int) -> tuple[Stage, ...]:
        return (Stage("first", self.config.split), Stage("second", epochs - self.config.split, fresh_optimizer=True))

    def begin_epoch(self, ctx):
        super().begin_epoch(ctx)
        assert ctx.model is not None and ctx.optimizer is not None and ctx.batch_size == 32
        # An epoch-level pass over the training split (a class-mean, as PMR's prototypes).
        feats = [ctx.model.encode(b.inputs)["audio"].mean(0) for b in ctx.train.batches(128)]
        self.means = torch.stack(feats).mean(0).detach()
        self.seen.append((ctx.epoch, ctx.stage.name, ctx.stage_epoch, len(ctx.train), id(ctx.optimizer)))

    def after_step(self, out, batch, ctx):
        self.count += 1
        # after optimizer.step() and zero_grad: the gradients are gone
        assert all(p.grad is None for p in ctx.model.parameters())


def _probe_trial(epochs: int = 4) -> Trial:
    register(Probe)
    return Trial(parse_trial_config(tiny_config("contract-probe", train={"epochs": epochs})))


@pytest.fixture
def probe():
    yield
    METHODS.pop("contract-probe", None)


def test_the_context_the_stages_and_after_step(probe):
    trial = _probe_trial()
    for _ in range(4):
        trial.step()
    seen = trial.method.seen
    assert [(e, s, k) for e, s, k, _, _ in seen] == [(1, "first", 1), (2, "first", 2), (3, "second", 1), (4, "second", 2)]
    assert all(n == 256 for _, _, _, n, _ in seen)  # the training split, never val/test
    optimizers = [o for *_, o in seen]
    assert optimizers[0] == optimizers[1] != optimizers[2] == optimizers[3]  # a fresh optimizer at stage 2
    assert trial.method.count.item() == 4 * 8  # after_step once per step (256 / 32)


def test_declared_state_is_checkpointed_and_restored_mid_stage(probe):
    uninterrupted = _probe_trial()
    expected = [uninterrupted.step() for _ in range(4)]
    trial = _probe_trial()
    for _ in range(3):  # into the second stage: its fresh optimizer is in the checkpoint
        trial.step()
    restored = restore_into(trial, _probe_trial())
    assert restored.method.count.item() == 24 and torch.equal(restored.method.means, trial.method.means)
    last = restored.step()
    assert {k: v for k, v in last.items() if k not in TIMING_KEYS} == {k: v for k, v in expected[-1].items() if k not in TIMING_KEYS}


def test_stages_that_do_not_add_up_are_refused(probe):
    register(Probe)
    with pytest.raises(ConfigError, match="schedules first 5 \\+ second -1"):
        Trial(parse_trial_config(tiny_config("contract-probe", train={"epochs": 4}, params={"split": 5})))


# ----------------------------------------------------------------------------- training schemes (v3)


class Scheme(BalancingMethod):
    """A test method that uses every v3 hook: two substeps per batch (the second skipped on odd
    steps), an epoch of re-sampled copies (the first 10 samples twice more) and its own inference rule."""

    name = "contract-scheme"
    state = ("steps",)
    replaces_loss = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = torch.zeros((), device=self.device)
        self.positions: list[Tensor] = []
        self.substep_names: list[str | None] = []

    def epoch_indices(self, ctx):
        n = len(ctx.train)
        return torch.cat([torch.arange(n), torch.arange(10), torch.arange(10)])

    def substeps(self, batch, ctx):
        return ("audio", "video")

    def before_forward(self, batch, ctx):
        if ctx.substep == "video" and ctx.step % 2:
            return None
        self.positions.append(batch.index.cpu())
        self.substep_names.append(ctx.substep)
        return batch

    def loss(self, out, batch, ctx):
        return torch.nn.functional.cross_entropy(ctx.model.modality_logits(out.features)[ctx.substep], batch.labels)

    def after_step(self, out, batch, ctx):
        self.steps += 1

    def predict(self, model, out):
        own = model.modality_logits(out.features)
        return own["video"], {m: own["video"] for m in model.modalities}


@pytest.fixture
def scheme():
    register(Scheme)
    yield
    METHODS.pop("contract-scheme", None)


def test_substeps_epoch_indices_and_batch_index(scheme):
    trial = Trial(parse_trial_config(tiny_config("contract-scheme", train={"epochs": 2})))
    trial.step()
    method = trial.method
    batches = (256 + 20 + 31) // 32  # 276 samples in batches of 32
    assert batches == 9
    # two substeps per batch, the second skipped on odd steps: 9 + 5 optimizer steps
    assert method.steps.item() == 9 + 5
    assert method.substep_names.count("audio") == 9 and method.substep_names.count("video") == 5
    # every position of the epoch's 276 samples is seen once by the first substep: copies included
    audio = torch.cat([p for p, s in zip(method.positions, method.substep_names) if s == "audio"])
    assert sorted(audio.tolist()) == list(range(276))


def test_predict_is_the_reported_inference_rule(scheme):
    trial = Trial(parse_trial_config(tiny_config("contract-scheme", train={"epochs": 1})))
    metrics = trial.step()
    assert metrics["val_acc"] == metrics["val_acc/video"] == metrics["val_acc/audio"]
    with torch.no_grad():
        trial.model.eval()
        split = trial.data.val
        correct = sum((trial.model.modality_logits(trial.model(b.inputs).features)["video"].argmax(1) == b.labels).sum().item()
                      for b in split.batches(1024))
    assert metrics["val_acc"] == pytest.approx(correct / len(split))


def test_v3_schemes_are_checkpointed_and_restored(scheme):
    from conftest import check_restore_continues

    restored, _ = check_restore_continues(tiny_config("contract-scheme"))
    assert restored.method.steps.item() == 3 * 14


def test_bad_epoch_indices_name_the_method_and_the_fix(scheme):
    class Bad(Scheme):
        name = "contract-bad-indices"

        def epoch_indices(self, ctx):
            return torch.tensor([0, len(ctx.train)])

    register(Bad)
    try:
        trial = Trial(parse_trial_config(tiny_config("contract-bad-indices")))
        with pytest.raises(ValueError, match="contract-bad-indices.*epoch_indices.*\\[0, 256\\)"):
            trial.step()
    finally:
        METHODS.pop("contract-bad-indices", None)


def test_two_parts_that_override_the_same_v3_hook_do_not_compose(scheme):
    from mmtune.engine.compose import composition_problem

    class Other(BalancingMethod):
        name = "contract-other"

        def predict(self, model, out):
            return None

    assert "both have an inference rule of their own (predict)" in composition_problem([Scheme, Other])
    assert composition_problem([Scheme, get_method("ogm")]) is None


def test_a_composite_hands_v3_hooks_to_the_part_that_has_them(scheme):
    trial = Trial(parse_trial_config(tiny_config("contract-scheme+ogm", train={"epochs": 1})))
    metrics = trial.step()
    scheme_part = trial.method.children[0]
    assert scheme_part.steps.item() == 14
    assert metrics["val_acc"] == metrics["val_acc/audio"]  # the part's inference rule


# ----------------------------------------------------------------------------- model interfaces


@pytest.mark.parametrize("fusion", ["concat", "sum", "late", "film", "gated"])
def test_subset_logits_zero_the_absent_modalities_for_every_fusion(fusion):
    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, {"fusion": fusion, "hidden_dim": 8}),
                        input_shapes={"a": (5,), "b": (5,), "c": (5,)}, num_classes=3)
    x = {m: torch.randn(4, 5) for m in ("a", "b", "c")}
    out = model(x)
    subsets = model.all_subsets()
    assert len(subsets) == 8 and subsets[0] == () and subsets[-1] == ("a", "b", "c")
    got = model.subset_logits(out.features, subsets)
    assert got.shape == (8, 4, 3)
    assert torch.allclose(got[-1], out.logits, atol=1e-6)
    for i, subset in enumerate(subsets):
        zeroed = {m: f if m in subset else torch.zeros_like(f) for m, f in out.features.items()}
        assert torch.allclose(got[i], model.fusion(zeroed), atol=1e-6)


def test_modality_logits_are_each_modalitys_own_classifier():
    torch.manual_seed(0)
    late = build_model(from_dict(ModelConfig, {"fusion": "late"}), input_shapes={"a": (5,), "b": (5,)}, num_classes=3)
    feats = late(x := {m: torch.randn(4, 5) for m in ("a", "b")}).features
    own = late.modality_logits(feats)
    assert torch.allclose(own["a"], late.fusion.heads["a"](feats["a"]))
    assert torch.allclose(own["a"], 2 * late.unimodal_logits(feats)["a"])  # late: the fused component is head/M
    concat = build_model(from_dict(ModelConfig, {"fusion": "concat"}), input_shapes={"a": (5,), "b": (5,)}, num_classes=3)
    feats = concat(x).features
    assert all(torch.equal(concat.modality_logits(feats)[m], concat.unimodal_logits(feats)[m]) for m in ("a", "b"))


def test_an_encoder_declares_its_own_mask_units():
    torch.manual_seed(0)
    model = build_model(from_dict(ModelConfig, {"backbone": "mlp", "hidden_dim": 8, "num_layers": 2}),
                        input_shapes={"a": (5,), "b": (5,)}, num_classes=3)
    units = model.mask_units("a")
    assert [(u.kind, u.units) for u in units] == [("rows", 8), ("rows", 8)]
    assert model.encoders["a"].mask_units("element")[0].units == 8 * 5
    both = model.mask_units("a", scope="both")
    assert [(u.kind, u.units) for u in both][-1] == ("rows", 3)  # its column block of the concat head


# ----------------------------------------------------------------------------- composition


def test_namespaced_parameters_of_a_composition():
    cls = get_method("opm+amss")
    names = cls.hyperparameters()
    assert {"opm.lam", "amss.lam", "q_base", "tau", "start_epoch"} <= set(names) and "lam" not in names
    with pytest.raises(ConfigError, match="ambiguous in 'opm\\+amss'.*opm.lam and amss.lam"):
        parse_trial_config(tiny_config("opm+amss", params={"lam": 0.3}))
    spec = parse_trial_config(tiny_config("opm+amss", params={"opm.lam": 0.3, "amss": {"lam": 0.5}, "tau": 0.1}))
    opm, amss = Trial(spec).method.children
    assert (opm.config.lam, amss.config.lam, amss.config.tau) == (0.3, 0.5, 0.1)
    assert spec.to_config()["params"]["opm.lam"] == 0.3  # stored as written
    with pytest.raises(ConfigError, match="opm.lam"):
        parse_trial_config(tiny_config("opm+amss", params={"opm.lam": -1.0}))


def test_shared_declarations_stay_one_parameter():
    names = get_method("opm+ogm").hyperparameters()
    assert {"gamma", "discrepancy", "z", "start_epoch", "end_epoch", "alpha", "q_base", "lam"} <= set(names)


def test_each_part_keeps_its_own_window():
    # AIM is always active (its warm-up phase); OGM must not modulate before its own start epoch.
    config = tiny_config("aim+ogm", params={"ogm.start_epoch": 3, "aim.start_epoch": 2})
    trial = Trial(parse_trial_config(config))
    history = [trial.step() for _ in range(3)]
    assert "trace/k/audio" not in history[0] and "trace/k/audio" not in history[1]
    assert "trace/k/audio" in history[2]


def test_cli_overrides_reach_namespaced_parameters(capsys):
    rc = main(["run", "opm+amss", "opm.lam=0.3", "params.amss.tau=0.1", "train.epochs=1",
               "dataset.n_train=64", "dataset.n_val=32", "dataset.n_test=32", "--json"])
    assert rc == 0
    assert math.isfinite(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["val_acc"])


HOOK_BASED = [m for m in list_methods() if get_method(m).composable is True]
REFUSED = {(a, b) for a, b in itertools.combinations(list_methods(), 2)
           if get_method(a).composable is not True or get_method(b).composable is not True}


@pytest.mark.parametrize("pair", [f"{a}+{b}" for a, b in itertools.combinations(HOOK_BASED, 2)])
def test_every_pair_of_hook_based_methods_composes(pair):
    trial = Trial(parse_trial_config(tiny_config(pair, train={"epochs": 1}, dataset={"n_train": 128})))
    metrics = trial.step()
    assert all(math.isfinite(v) for v in metrics.values()), pair


@pytest.mark.parametrize("pair", sorted(f"{a}+{b}" for a, b in REFUSED) or ["none"])
def test_pairs_that_cannot_compose_are_refused_with_the_reason(pair):
    if pair == "none":
        pytest.skip("every registered method composes")
    with pytest.raises(ConfigError, match="does not compose"):
        get_method(pair)


def test_a_method_with_itself_is_refused():
    with pytest.raises(ConfigError, match="with itself"):
        get_method("ogm+ogm")


# ----------------------------------------------------------------------------- threads


def test_thread_pools_are_sized_to_the_trials_share_and_the_machine(monkeypatch):
    from mmtune.engine import threads
    from mmtune.sweep.trainable import BalancedTrainable

    monkeypatch.delenv("MMTUNE_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.trial_threads(1) == 1 and threads.trial_threads(2.5) == 2 and threads.trial_threads(0.25) == 1
    assert threads.auto_threads() == threads.available_cpus()
    monkeypatch.setenv("MMTUNE_THREADS", "3")
    assert threads.auto_threads() == 3 and threads.trial_threads(1) == 3  # an explicit setting wins
    monkeypatch.delenv("MMTUNE_THREADS")
    before = torch.get_num_threads()
    try:
        trainable = BalancedTrainable(config=tiny_config("joint"))
        trainable.setup(tiny_config("joint"), cpus=1)  # what the sweep passes a 1-CPU trial (tune.with_parameters)
        assert torch.get_num_threads() == 1
        trainable.stop()
    finally:
        torch.set_num_threads(before)


def test_mmtune_run_reports_its_thread_count():
    out = subprocess.run([str(Path(sys.executable).with_name("mmtune")), "run", "joint", "train.epochs=1",
                          "dataset.n_train=64", "dataset.n_val=32", "dataset.n_test=32", "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300, env={**__import__("os").environ, "MMTUNE_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["threads"] == 1
