"""The loop's hook order and window, model selection on validation, divergence, config errors."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from mmtune.engine.method import BalancingMethod, MethodConfig
from mmtune.engine.trial import TIMING_KEYS, Trial, TrainConfig, parse_trial_config
from mmtune.errors import ConfigError


class Recorder(BalancingMethod):
    """A method that records which hooks the loop calls, in order."""

    name = "recorder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, int]] = []

    def begin_epoch(self, ctx):
        super().begin_epoch(ctx)
        self.calls.append(("begin_epoch", ctx.epoch))

    def before_forward(self, batch, ctx):
        self.calls.append(("before_forward", ctx.epoch))
        return batch

    def extra_loss(self, out, batch, ctx):
        self.calls.append(("extra_loss", ctx.epoch))
        return out.logits.sum() * 0.0

    def modulate_gradients(self, model, out, batch, ctx):
        # Gradients exist here: after backward, before the optimizer step.
        assert all(p.grad is not None for p in model.encoders.parameters())
        self.calls.append(("modulate_gradients", ctx.epoch))

    def end_epoch(self, ctx):
        self.calls.append(("end_epoch", ctx.epoch))
        return super().end_epoch(ctx)


def trial_with_recorder(start_epoch=1, end_epoch=None, epochs=3):
    trial = Trial(parse_trial_config(tiny_config("joint", train={"epochs": epochs, "batch_size": 128})))
    trial.method = Recorder(
        MethodConfig(start_epoch=start_epoch, end_epoch=end_epoch),
        modalities=trial.modalities, num_classes=trial.data.num_classes, device=trial.device,
    )
    return trial


def test_hooks_are_called_by_name_in_order():
    trial = trial_with_recorder()
    trial.step()
    names = [name for name, _ in trial.method.calls]
    batches = 2  # 256 samples / 128
    assert names == ["begin_epoch"] + ["before_forward", "extra_loss", "modulate_gradients"] * batches + ["end_epoch"]


def test_per_batch_hooks_run_only_inside_the_window():
    trial = trial_with_recorder(start_epoch=2, end_epoch=2)
    for _ in range(3):
        trial.step()
    per_batch = {epoch for name, epoch in trial.method.calls if name == "before_forward"}
    assert per_batch == {2}
    assert {epoch for name, epoch in trial.method.calls if name == "end_epoch"} == {1, 2, 3}


def test_best_epoch_follows_validation_never_test():
    trial = Trial(parse_trial_config(tiny_config("joint")))
    base = {"val_macro_f1": 0.0, "val_map": 0.0, "test_macro_f1": 0.0, "test_map": 0.0}
    trial._track_best({**base, "epoch": 1, "val_acc": 0.5, "test_acc": 0.9})
    trial._track_best({**base, "epoch": 2, "val_acc": 0.6, "test_acc": 0.1})
    trial._track_best({**base, "epoch": 3, "val_acc": 0.6, "test_acc": 0.95})  # a tie keeps the first
    assert trial.best["best_epoch"] == 2
    assert trial.best["test_acc_at_best_val"] == pytest.approx(0.1)


def test_divergence_raises_a_clear_error():
    trial = Trial(parse_trial_config(tiny_config("joint", train={"lr": 1e12, "momentum": 0.0})))
    with pytest.raises(FloatingPointError, match="diverged"):
        for _ in range(3):
            trial.step()


def test_config_problems_are_reported_all_at_once():
    with pytest.raises(ConfigError) as err:
        parse_trial_config({
            "method": "joint", "seed": -1, "bogus": 1,
            "train": {"lr": -1.0, "optimizer": "sgdd"},
            "model": {"fusion": "concatt"},
            "dataset": {"dominance": "high"},
            "params": {"alpha": 0.8},
        })
    paths = sorted(p.path for p in err.value.problems)
    assert paths == ["bogus", "dataset.dominance", "model.fusion", "params.alpha", "seed", "train.lr", "train.optimizer"]
    assert "Did you mean 'sgd'" in str(err.value)


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match="Did you mean 'joint'.*Known methods: .*joint"):
        parse_trial_config({"method": "jiont"})


def test_window_end_before_start_is_rejected():
    with pytest.raises(ConfigError, match="end_epoch"):
        MethodConfig(start_epoch=5, end_epoch=2)


def test_unimodal_trains_exactly_one_modality():
    trial = Trial(parse_trial_config(tiny_config("unimodal", params={"modality": "audio"})))
    assert trial.modalities == ["audio"] and list(trial.model.encoders) == ["audio"]
    metrics = trial.step()
    assert "val_acc/audio" in metrics and "val_acc/video" not in metrics
    with pytest.raises(ConfigError, match="not a modality"):
        Trial(parse_trial_config(tiny_config("unimodal", params={"modality": "text"})))


def test_train_config_validation():
    with pytest.raises(ConfigError, match="momentum"):
        TrainConfig(momentum=1.0)
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw", "adagrad"])
def test_every_optimizer_trains(optimizer):
    trial = Trial(parse_trial_config(tiny_config("joint", train={"optimizer": optimizer, "lr": 1e-3, "lr_step": 1})))
    first = trial.step()
    second = trial.step()
    assert second["train_loss"] < first["train_loss"] * 1.5
    assert trial.optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.01)  # stepped twice by 0.1


@pytest.mark.parametrize("backbone,shape", [("cnn", "shaped"), ("resnet18", "shaped"), ("transformer", "flat")])
def test_other_backbones_run_on_the_synthetic_set(backbone, shape):
    dataset = {"shape": shape, "image_size": 16, "n_train": 64, "n_val": 32, "n_test": 32}
    trial = Trial(parse_trial_config(tiny_config("joint", dataset=dataset, model={"backbone": backbone}, train={"batch_size": 32})))
    metrics = trial.step()
    assert 0.0 <= metrics["val_acc/audio"] <= 1.0 and 0.0 <= metrics["val_acc/video"] <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trial_runs_on_cuda():
    trial = Trial(parse_trial_config(tiny_config("joint", train={"device": "cuda"})))
    metrics = trial.step()
    assert trial.device.type == "cuda" and next(trial.model.parameters()).is_cuda
    assert 0.0 <= metrics["val_acc"] <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_checkpoint_read_onto_the_gpu_resumes_like_an_uninterrupted_run(tmp_path):
    # torch.load(map_location=cuda), as the Ray trainable restores, puts the RNG states on the GPU too.
    from mmtune.sweep.trainable import load_trial_state

    config = tiny_config("ogm", train={"device": "cuda", "epochs": 2})
    straight = Trial(parse_trial_config(config))
    first = straight.step()
    torch.save(straight.state_dict(), tmp_path / "trial.pt")
    expected = straight.step()
    resumed = Trial(parse_trial_config(config))
    resumed.load_state_dict(load_trial_state(str(tmp_path / "trial.pt"), resumed.device))
    got = resumed.step()
    keys = [k for k in expected if k not in TIMING_KEYS]
    assert first["epoch"] == 1 and {k: got[k] for k in keys} == pytest.approx({k: expected[k] for k in keys}, rel=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error shown without CUDA")
def test_asking_for_cuda_without_one_is_a_config_error():
    with pytest.raises(ConfigError, match="no CUDA device"):
        Trial(parse_trial_config(tiny_config("joint", train={"device": "cuda"})))


def test_a_checkpoint_from_before_a_key_existed_loads_and_another_config_is_refused():
    config = tiny_config("ogm", train={"epochs": 2})
    trial = Trial(parse_trial_config(config))
    trial.step()
    state = trial.state_dict()
    old = {**state, "config": {**state["config"], "train": dict(state["config"]["train"])}}
    del old["config"]["train"]["precision"], old["config"]["train"]["channels_last"]  # keys a newer mmtune added
    fresh = Trial(parse_trial_config(config))
    fresh.load_state_dict(old)
    assert fresh.epoch == 1
    other = {**state, "config": {**state["config"], "seed": 1}}
    with pytest.raises(ValueError, match="different config"):
        Trial(parse_trial_config(config)).load_state_dict(other)
    changed = {**state, "config": {**state["config"], "train": {**state["config"]["train"], "precision": "bf16"}}}
    with pytest.raises(ValueError, match="different config"):
        Trial(parse_trial_config(config)).load_state_dict(changed)
