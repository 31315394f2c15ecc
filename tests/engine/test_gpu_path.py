"""The GPU path's switches, on the CPU where it can run them: ``auto`` precision and channels_last (resolved
by device), ``train.compile`` (torch.compile of each encoder), and a checkpoint's portability across
them. The prepared cache held on the device (``dataset.resident``) is tested with the toy real dataset
in tests/data/test_real.py. CUDA-only checks skip cleanly without a CUDA device.
"""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
import torch
from conftest import restore_into, tiny_config

import mmtune.engine.trial as trial_module
from mmtune.engine.trial import TIMING_KEYS, Trial, parse_trial_config, resolve_channels_last, resolve_precision
from mmtune.errors import ConfigError

CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it without a GPU
# Compiled vs eager on the CPU: inductor fuses and reorders float operations, so the two differ by
# rounding only (measured ≤ 2e-7 on train_loss over 2 epochs of the tiny OGM trial); a wrong graph, a
# lost hook or a stale weight moves the metrics by orders of magnitude more.
COMPILE_TOLERANCE = 1e-4
HAS_COMPILER = any(shutil.which(c) for c in ("g++", "c++", "clang++"))  # inductor's CPU code generation
SHAPED = {"shape": "shaped", "image_size": 16, "n_train": 64, "n_val": 32, "n_test": 32}  # frames and spectrograms


def cnn_trial(**train) -> Trial:
    return Trial(parse_trial_config(tiny_config("joint", dataset=SHAPED, model={"backbone": "cnn"},
                                                train={"device": "cpu", "epochs": 1, "batch_size": 32, **train})))


def metrics_of(trial: Trial, epochs: int) -> list[dict[str, float]]:
    return [{k: v for k, v in trial.step().items() if k not in TIMING_KEYS} for _ in range(epochs)]


def test_auto_is_the_default_and_resolves_to_fp32_and_off_on_the_cpu():
    trial = cnn_trial()
    train = trial.spec.train
    assert (train.precision, train.channels_last, train.compile) == ("auto", "auto", False)
    assert trial.resolved == {"device": "cpu", "precision": "fp32", "channels_last": False, "compile": None,
                              "resident": None}
    assert not trial.scaler.is_enabled()
    convs = [m.weight for m in trial.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous() for w in convs)  # the plain (NCHW) layout the golden runs use
    assert cnn_trial(channels_last=True).resolved["channels_last"] is True


def test_auto_on_cuda_is_bf16_where_supported_else_fp16_else_fp32(monkeypatch):
    supported: set[torch.dtype] = {torch.bfloat16, torch.float16}
    monkeypatch.setattr(trial_module, "_autocast_supports", lambda device, dtype: dtype in supported)
    assert resolve_precision("auto", CUDA) == "bf16"
    supported.discard(torch.bfloat16)
    assert resolve_precision("auto", CUDA) == "fp16"
    supported.clear()
    assert resolve_precision("auto", CUDA) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", CUDA) == "bf16"  # an explicit value is kept (resolve_device checks it)


def test_auto_channels_last_is_on_for_convolving_encoders_on_cuda_only():
    cnn = cnn_trial().model
    mlp = Trial(parse_trial_config(tiny_config("joint", train={"device": "cpu"}))).model
    assert resolve_channels_last("auto", CUDA, cnn) is True
    assert resolve_channels_last("auto", CUDA, mlp) is False
    assert resolve_channels_last("auto", torch.device("cpu"), cnn) is False
    assert resolve_channels_last(True, torch.device("cpu"), mlp) is True


def test_bad_values_of_the_new_keys_are_config_errors_naming_them():
    with pytest.raises(ConfigError) as err:
        parse_trial_config(tiny_config("joint", train={"compile": "fast", "channels_last": "yes", "precision": "bf17"}))
    text = str(err.value)
    assert "train.compile" in text and "'max-autotune'" in text
    assert "train.channels_last" in text and "train.precision" in text


def test_an_old_explicit_fp32_checkpoint_restores_into_an_auto_trial_and_back():
    explicit = tiny_config("ogm", train={"epochs": 2, "device": "cpu", "precision": "fp32", "channels_last": False})
    auto = tiny_config("ogm", train={"epochs": 2, "device": "cpu"})
    for written, read in ((explicit, auto), (auto, explicit)):
        trial = Trial(parse_trial_config(written))
        trial.step()
        fresh = restore_into(trial, Trial(parse_trial_config(read)))
        assert fresh.epoch == 1
        assert metrics_of(fresh, 1) == metrics_of(trial, 1)  # the same fp32 run continues bit-exactly
    bf16 = Trial(parse_trial_config(tiny_config("ogm", train={"epochs": 2, "device": "cpu", "precision": "bf16"})))
    with pytest.raises(ValueError, match="different config"):  # auto is fp32 here: a bf16 checkpoint is another run
        restore_into(bf16, Trial(parse_trial_config(auto)))


# -- train.compile ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_and_eager() -> tuple[Trial, Trial, list[dict[str, float]], list[dict[str, float]]]:
    """A 2-epoch OGM trial (gradient modulation on each encoder's parameters, scored from the features)
    compiled and eager, on the CPU. Built once: compiling is most of this file's time."""
    if not HAS_COMPILER:
        pytest.skip("torch.compile's CPU backend (inductor) needs a C++ compiler; none is installed")

    def trial(compile_: bool | str) -> Trial:
        return Trial(parse_trial_config(tiny_config("ogm", train={"epochs": 3, "device": "cpu", "compile": compile_})))

    compiled, eager = trial(True), trial(False)
    return compiled, eager, metrics_of(compiled, 2), metrics_of(eager, 2)


def test_a_compiled_trial_matches_the_eager_one_within_tolerance(compiled_and_eager):
    compiled, eager, got, want = compiled_and_eager
    assert compiled.resolved["compile"] == "default" and eager.resolved["compile"] is None
    assert all(e._compiled_call_impl is not None for e in compiled.model.encoders.values())
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0, "compile: true ran nothing through torch.compile"
    for a, b in zip(got, want, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert math.isfinite(a[key]) and a[key] == pytest.approx(b[key], abs=COMPILE_TOLERANCE), key


def test_a_compiled_trials_checkpoint_loads_in_an_eager_one_and_back(compiled_and_eager):
    compiled, eager, _, _ = compiled_and_eager
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())  # no _orig_mod. prefix
    assert not any("_orig_mod" in key for key in compiled.state_dict()["model"])
    spec = compiled.spec
    as_eager = restore_into(compiled, Trial(dataclasses.replace(spec, train=spec.train.replace(compile=False))))
    as_compiled = restore_into(eager, Trial(dataclasses.replace(spec, train=spec.train.replace(compile=True))))
    for fresh, source in ((as_eager, compiled), (as_compiled, eager)):
        assert fresh.epoch == 2
        for (name, p), q in zip(fresh.model.state_dict().items(), source.model.state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    # The restored eager trial continues the compiled run (up to compile's rounding).
    (a,), (b,) = metrics_of(as_eager, 1), metrics_of(compiled, 1)
    assert a["train_loss"] == pytest.approx(b["train_loss"], abs=COMPILE_TOLERANCE)
    assert a["val_acc"] == pytest.approx(b["val_acc"], abs=COMPILE_TOLERANCE)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_and_compile_run_on_cuda():
    config = tiny_config("ogm", model={"backbone": "cnn"}, dataset=SHAPED,
                         train={"epochs": 1, "batch_size": 32, "device": "cuda", "compile": True})
    trial = Trial(parse_trial_config(config))
    expected = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    assert trial.resolved["precision"] == expected and trial.resolved["channels_last"] is True
    assert trial.resolved["compile"] == "default"
    metrics = trial.step()
    assert math.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_acc"] <= 1.0
