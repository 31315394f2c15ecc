"""The train_indices hook: a method reserves part of the training split; the loop never trains on it,
the hooks see it as ctx.holdout, the same seed reserves the same samples (so a checkpoint restores
it), a composite intersects, and a method that reserves nothing trains on the whole split as before."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import restore_into, tiny_config

import mmtune.trainables  # noqa: F401  registers the built-in methods
from mmtune.config import hp
from mmtune.engine.compose import compose
from mmtune.engine.method import HOOKS, BalancingMethod, MethodConfig
from mmtune.engine.registry import METHODS, register
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config, reserve_holdout


@dataclass(frozen=True)
class ReserveConfig(MethodConfig):
    every: int = hp(4, low=2, doc="reserve one sample in `every`, at random")


class Reserve(BalancingMethod):
    """Reserves a random quarter of the split and records what the loop and the hooks see."""

    name, Config = "holdout-probe", ReserveConfig
    state = ("seen_batches",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen_batches = torch.zeros(())
        self.rows: list[torch.Tensor] = []
        self.contexts: list[tuple[int, int]] = []

    def train_indices(self, n, generator):
        order = torch.randperm(n, generator=generator)
        return order[n // self.config.every:]

    def begin_epoch(self, ctx):
        super().begin_epoch(ctx)
        self.contexts.append((len(ctx.train), len(ctx.holdout) if ctx.holdout is not None else 0))

    def before_forward(self, batch, ctx):
        self.rows.append(batch.inputs["audio"].detach().clone())
        self.seen_batches += 1
        return batch


@pytest.fixture
def probe():
    register(Reserve)
    yield
    METHODS.pop("holdout-probe", None)


def build(method="holdout-probe", seed=0, **sections):
    return Trial(parse_trial_config(tiny_config(method, seed=seed, **sections)))


def rows_in(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """For each row of ``rows``, whether it equals a row of ``table`` (inputs are continuous: rows are unique)."""
    return (rows.unsqueeze(1) == table.unsqueeze(0)).all(-1).any(1)


def test_hook_is_declared_and_its_near_misses_are_refused():
    assert "train_indices" in HOOKS
    assert BalancingMethod.train_indices(None, 10, torch.Generator()) is None  # the default: train on everything

    class Typo(BalancingMethod):
        name = "holdout-typo"

        def train_indice(self, n, generator):
            return None

    with pytest.raises(TypeError, match="Did you mean 'train_indices'"):
        register(Typo)


def test_a_method_that_reserves_nothing_trains_on_the_whole_split():
    trial = build("joint")
    assert trial.train_split is trial.data.train and trial.holdout_split is None and trial.train_index is None


def test_the_loop_never_trains_on_the_reserved_samples(probe):
    trial = build()
    full = trial.data.train
    n, held = len(full), len(full) // 4
    assert len(trial.train_split) == n - held and len(trial.holdout_split) == held
    kept = trial.train_index
    reserved = torch.ones(n, dtype=torch.bool)
    reserved[kept] = False
    assert torch.equal(trial.train_split.inputs["audio"], full.inputs["audio"][kept])
    assert torch.equal(trial.holdout_split.labels, full.labels[reserved])
    for _ in range(2):
        trial.step()
    seen = torch.cat(trial.method.rows)
    assert len(seen) == 2 * (n - held)  # every trained sample once per epoch …
    assert not rows_in(seen, full.inputs["audio"][reserved]).any()  # … and no reserved one, ever
    assert rows_in(seen, full.inputs["audio"][kept]).all()
    assert trial.method.contexts == [(n - held, held)] * 2  # ctx.train and ctx.holdout


def test_the_same_seed_reserves_the_same_samples_and_a_checkpoint_restores_them(probe):
    a, b, c = build(), build(), build(seed=1)
    assert torch.equal(a.train_index, b.train_index) and not torch.equal(a.train_index, c.train_index)
    uninterrupted = build()
    expected = [uninterrupted.step() for _ in range(3)]
    trial = build()
    trial.step()
    restored = restore_into(trial, build())
    assert torch.equal(restored.train_index, trial.train_index)
    continued = [restored.step(), restored.step()]

    def strip(m):
        return {k: v for k, v in m.items() if k not in TIMING_KEYS}
    assert [strip(m) for m in continued] == [strip(m) for m in expected[1:]]


def test_the_draw_does_not_touch_the_other_generators(probe):
    # The reserve draws from a generator of its own: batch order and method RNG start where joint's do.
    trial, joint = build(), build("joint")
    assert torch.equal(trial.data_generator.get_state(), joint.data_generator.get_state())
    assert torch.equal(trial.method_generator.get_state(), joint.method_generator.get_state())


@pytest.mark.parametrize(("returned", "match"), [
    (torch.tensor([0, 0, 1]), "distinct"),
    (torch.tensor([0, 300]), "distinct indices in \\[0, 256\\)"),
    (torch.tensor([-1, 2]), "distinct"),
    (torch.tensor([], dtype=torch.long), "at least one"),
    (torch.tensor([0.0, 1.0]), "integer"),
    (torch.tensor([[0, 1]]), "1-D"),
])
def test_bad_indices_are_refused_naming_the_method(returned, match):
    class Bad(BalancingMethod):
        name = "holdout-bad"

        def train_indices(self, n, generator):
            return returned

    trial = build("joint")
    with pytest.raises(ValueError, match=f"holdout-bad.*{match}"):
        reserve_holdout(trial.data.train, Bad(MethodConfig(), modalities=["audio", "video"], num_classes=6,
                                              device=torch.device("cpu")), 0)


def test_a_composite_holds_out_what_any_part_reserves():
    class Evens(BalancingMethod):
        name = "holdout-evens"

        def train_indices(self, n, generator):
            return torch.arange(0, n, 2)

    class Low(BalancingMethod):
        name = "holdout-low"

        def train_indices(self, n, generator):
            return torch.arange(n // 2)

    kwargs = {"modalities": ["audio", "video"], "num_classes": 6, "device": torch.device("cpu")}
    both = compose("holdout-evens+holdout-low", [Evens, Low])
    method = both(both.Config(), **kwargs)
    assert method.train_indices(10, torch.Generator()).tolist() == [0, 2, 4]
    one = compose("holdout-evens+ogm", [Evens, METHODS["ogm"]])
    assert one(one.Config(), **kwargs).train_indices(10, torch.Generator()).tolist() == [0, 2, 4, 6, 8]
    none = compose("ogm+opm", [METHODS["ogm"], METHODS["opm"]])
    assert none(none.Config(), **kwargs).train_indices(10, torch.Generator()) is None
