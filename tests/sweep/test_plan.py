"""``mmtune sweep SPEC --plan``: the packing arithmetic (hand values), the one-batch probe on the CPU
(no Ray), the CLI's JSON (nothing written), and the CUDA memory path where a GPU exists."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from mmtune.cli import main
from mmtune.errors import ConfigError
from mmtune.sweep.plan import (MAX_PER_GPU, compare_gpu_share, gpu_share, plan, probe_trial, render, suggest_packing,
                               trial_configs, trials_per_share)
from mmtune.sweep.spec import parse_spec

GIB = 1024**3
TINY = {"n_train": 192, "n_val": 64, "n_test": 64}  # the synthetic set, small


def _tiny_spec(**extra):
    return parse_spec({"name": "tiny", "method": ["joint", "aim"], "dataset": dict(TINY), "model": {"backbone": "mlp"},
                       "train": {"epochs": 3, "batch_size": 32, "eval_batch_size": 64, "device": "cpu"},
                       "seeds": [0, 1], **extra})


# ------------------------------------------------------------------------------------------ packing
def test_suggest_packing_hand_values():
    packing = suggest_packing(10 * GIB, 78 * GIB, margin=0.9)
    assert packing.usable_bytes == int(78 * GIB * 0.9) and packing.memory_fit == 7  # 70.2 GiB // 10 GiB
    assert packing.trials_per_gpu == 7 and packing.gpu_fraction == 0.14 and packing.limited_by == "memory"
    assert packing.spec_line == "gpu: 0.14" and "7 trial(s) per GPU" in packing.message
    assert trials_per_share(0.14) == 7  # Ray puts exactly 7 such trials on one GPU


def test_a_trial_larger_than_the_gpu_fits_zero_times_with_the_fix():
    packing = suggest_packing(80 * GIB, 78 * GIB, margin=0.9)
    assert packing.trials_per_gpu == 0 and packing.gpu_fraction is None and packing.limited_by == "too large"
    assert "does not fit" in packing.message and "train.batch_size" in packing.message
    verdict, message = compare_gpu_share(1.0, packing)
    assert verdict == "too tight" and "out-of-memory" in message


def test_the_cpu_cap_binds_before_memory():
    packing = suggest_packing(1 * GIB, 78 * GIB, margin=0.9, cpus_per_gpu=8, trial_cpu=2)
    assert packing.memory_fit == 70 and packing.cpu_cap == 4
    assert packing.trials_per_gpu == 4 and packing.gpu_fraction == 0.25 and packing.limited_by == "cpu"
    starved = suggest_packing(1 * GIB, 78 * GIB, cpus_per_gpu=1, trial_cpu=2)
    assert starved.trials_per_gpu == 0 and "lower resources.cpu" in starved.message
    tiny = suggest_packing(100 * 1024**2, 78 * GIB)
    assert tiny.trials_per_gpu == MAX_PER_GPU and tiny.gpu_fraction == 0.01 and tiny.limited_by == "max"


def test_the_gpu_share_puts_exactly_k_trials_on_a_gpu():
    for k in range(1, MAX_PER_GPU + 1):
        assert trials_per_share(gpu_share(k)) == k, k
    assert gpu_share(1) == 1.0 and gpu_share(4) == 0.25 and gpu_share(7) == 0.14
    assert gpu_share(13) == 0.076  # 0.07 (2 decimals) would let Ray start 14; 0.076 starts 13


@pytest.mark.parametrize("margin", [0, -0.5, 1.5, True, "0.9"])
def test_a_margin_outside_0_1_is_a_config_error(margin):
    with pytest.raises(ConfigError, match=r"--plan-margin: must be a number in \(0, 1\]"):
        suggest_packing(GIB, 10 * GIB, margin=margin)


def test_the_specs_own_gpu_share_is_compared():
    packing = suggest_packing(10 * GIB, 78 * GIB, margin=0.9)  # 7 fit
    assert compare_gpu_share(0.14, packing)[0] == "fits"
    verdict, message = compare_gpu_share(0.1, packing)  # 10 per GPU
    assert verdict == "too tight" and "10 trials" in message and "resources.gpu: 0.14" in message
    verdict, message = compare_gpu_share(0.5, packing)  # 2 per GPU
    assert verdict == "wastes" and "7 would fit" in message
    assert compare_gpu_share(0, packing)[0] == "unset"
    assert compare_gpu_share(2, packing)[0] == "wastes"  # two whole GPUs for one trial


# ------------------------------------------------------------------------------------------ configurations
def test_configurations_ignore_seeds_and_optuna_probes_memory_candidates():
    ogm = {"name": "ogm", "method": "ogm", "params": {"alpha": {"grid": [0.1, 0.5]}}}
    grid = parse_spec({"name": "g", "method": ["joint", ogm], "seeds": 3})
    configs = trial_configs(grid)
    assert grid.num_trials() == 9 and len(configs) == 3 and {c["seed"] for c in configs} == {0}  # 1 + 2 alphas
    optuna = parse_spec({"name": "o", "method": "ogm", "model": {"hidden_dim": {"choice": [32, 64]}},
                         "params": {"alpha": {"loguniform": [0.05, 2.0]}},
                         "search": {"algorithm": "optuna", "num_samples": 5}, "seeds": 2})
    configs = trial_configs(optuna)
    assert sorted(c["model"]["hidden_dim"] for c in configs) == [32, 64]
    assert all(c["params"]["alpha"] == 0.05 for c in configs)  # a non-memory leaf: its low bound


# ------------------------------------------------------------------------------------------ the probe (CPU)
def test_the_cpu_probe_measures_memory_and_time_without_ray(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # any `import ray` now fails
    spec = _tiny_spec()
    result = plan(spec, margin=0.5)
    assert result.trials == 4 and result.configurations == 2 and result.device == "cpu"
    assert [p.label for p in result.probes] == ["joint", "aim"]  # aim: extra parameters (its DAP heads)
    for probe in result.probes:
        assert probe.per_trial_bytes > 0 and probe.parts["process_base"] > 0 and probe.data_bytes > 0
        assert probe.step_s > 0 and probe.eval_batch_s > 0 and probe.epoch_s > 0
        assert probe.steps_per_epoch == 6 and probe.eval_batches == 2  # 192 / 32; 64 / 64 twice
    assert result.packing is None and result.verdict is None and 1 <= result.concurrent <= result.cpus
    assert result.sweep_s > 0
    text = render(result)
    assert "CPU concurrency" in text and "joint (joint), batch 32" in text
    assert torch.cuda.is_available() or "run `mmtune sweep SPEC --plan` on the GPU machine" in text


def test_probe_trial_runs_a_gradient_method_and_restores_the_thread_pool():
    config = {"method": "mmpareto", "dataset": dict(TINY), "train": {"device": "cpu", "batch_size": 16}}
    threads = torch.get_num_threads()
    probe = probe_trial(config, threads=1)
    assert torch.get_num_threads() == threads  # the probe sized the pool like a trial, then put it back
    assert probe.method == "mmpareto" and probe.per_trial_bytes > 0 and probe.step_s > 0
    assert probe.steps_per_epoch == 12 and probe.epoch_s >= 12 * probe.step_s  # 192 / 16
    assert probe.resolved.get("device", "cpu") == "cpu"


# ------------------------------------------------------------------------------------------ the CLI
def test_sweep_plan_json_through_the_cli_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: plan-me
        method: [joint]
        dataset: {n_train: 128, n_val: 64, n_test: 64}
        train: {epochs: 2, batch_size: 32, device: cpu}
        seeds: [0, 1, 2]
        resources: {cpu: 1, gpu: 0.5}
        """))
    assert main(["sweep", str(spec), "--plan", "--json", "--storage", str(tmp_path / "runs")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"trials", "configurations", "probes", "per_trial_bytes", "devices", "packing", "concurrent", "verdict",
            "sweep_s", "notes", "margin"} <= set(out)
    assert out["trials"] == 3 and out["configurations"] == 1 and out["per_trial_bytes"] > 0 and out["margin"] == 0.9
    assert out["gpu"] == 0.5 and out["probes"][0]["step_s"] > 0
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    assert main(["sweep", str(spec), "--plan", "--plan-margin", "1.5"]) == 2
    assert "--plan-margin: must be a number in (0, 1]" in capsys.readouterr().err
    assert main(["sweep", str(spec), "--json"]) == 2
    assert "--json: only goes with --plan" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_probe_measures_allocator_and_context_and_packs():
    config = {"method": "aim", "dataset": dict(TINY),
              "train": {"device": "cuda", "batch_size": 32}}
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    probe = probe_trial(config)
    assert probe.device.startswith("cuda") and probe.parts["peak_allocated"] > 0 and probe.parts["cuda_context"] > 0
    assert probe.per_trial_bytes == sum(probe.parts.values()) and probe.step_s > 0
    assert torch.cuda.memory_allocated() == before  # nothing of the trial is left on the GPU
    spec = parse_spec({"name": "g", "method": ["joint"], "dataset": dict(TINY),
                       "train": {"device": "cuda", "epochs": 2}, "resources": {"cpu": 1, "gpu": 0.5}})
    result = plan(spec)
    assert result.device == "cuda" and result.packing is not None and result.devices[0].kind == "cuda"
    assert result.packing.trials_per_gpu >= 1 and result.verdict in {"fits", "wastes", "too tight"}
    assert "paste into the spec" in render(result)
