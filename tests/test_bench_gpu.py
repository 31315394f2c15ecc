"""``bench/gpu.py --smoke``: every part runs on the CPU and reports numbers that hang together (issue 24).

The smoke run is CI's check that the GPU measurement script works; its figures are tiny-size CPU timings
and are checked only for shape and consistency (finite, positive, the grid's arithmetic), never values.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.py"
PARTS = ("steps", "amp", "memory", "packing", "grid")


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1", "MMTUNE_THREADS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    proc = run_script("--smoke", "--json", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), json.loads(out.read_text())


@pytest.mark.slow
def test_smoke_reports_every_part_consistently(smoke: tuple[dict, dict]) -> None:
    result, written = smoke
    assert written == result  # --out writes the same object as the last stdout line
    assert result["smoke"] is True and "cpu" in result["device_label"]
    assert set(result["parts"]) == set(PARTS)
    parts = result["parts"]

    steps = {r["method"]: r for r in parts["steps"]["rows"]}
    assert {"joint", "ogm", "ogm-ge", "opm", "amss", "amss+"} <= set(steps) and any(m.startswith("aim") for m in steps)
    assert steps["joint"]["ratio"] == 1.0
    for row in steps.values():
        assert all(positive(row[k]) for k in ("median_epoch_s", "ratio", "q1", "q3", "ratio_of_medians")), row
        assert row["q1"] <= row["ratio"] <= row["q3"]

    amp = parts["amp"]
    assert {(r["precision"], r["channels_last"]) for r in amp["rows"]} >= {
        (p, cl) for p in ("fp32", "bf16", "fp16") for cl in (False, True)}
    timed = [r for r in amp["rows"] if not r["skipped"]]
    assert any(r["variant"] == "fp32" and r["ratio"] == 1.0 for r in timed)
    assert all(positive(r["ratio"]) and positive(r["median_epoch_s"]) for r in timed)
    assert all(isinstance(r["skipped"], str) and r["skipped"] for r in amp["rows"] if r not in timed)
    assert amp["compile"]["note"]

    for row in parts["memory"]["rows"]:  # a CPU keeps no peak statistics: null, with the reason
        assert row["max_allocated_bytes"] is None and row["max_reserved_bytes"] is None
        assert "no CUDA device" in row["reason"]

    packing = {r["k"]: r for r in parts["packing"]["rows"]}
    assert set(packing) == {1, 2}
    for k, row in packing.items():
        assert row["fits"] and len(row["per_trial_samples_per_s"]) == k
        assert all(positive(v) for v in row["per_trial_samples_per_s"]) and positive(row["total_samples_per_s"])
        assert positive(row["speedup"])
    assert packing[1]["speedup"] == 1.0
    best = parts["packing"]["best_speedup"]
    assert best == max(r["speedup"] for r in packing.values())

    grid = parts["grid"]
    assert grid["extrapolation"] is True and "extrapolated from" in grid["note"]
    assert (grid["taus"], grid["seeds"], grid["epochs"], grid["train_clips"]) == (13, 5, 100, 6698)
    assert grid["batches_per_epoch"] == math.ceil(6698 / grid["batch_size"])
    assert {r["method"] for r in grid["rows"]} == {"joint", "amss"}
    for row in grid["rows"]:
        assert positive(row["batch_s"]) and row["eval_per_sample_s"] >= 0
        epoch = grid["batches_per_epoch"] * row["batch_s"] + grid["test_clips"] * row["eval_per_sample_s"]
        assert row["epoch_s"] == pytest.approx(epoch, rel=1e-9)
        hours = 13 * 5 * 100 * row["epoch_s"] / 3600
        assert positive(row["grid_gpu_hours"]) and row["grid_gpu_hours"] == pytest.approx(hours, rel=1e-9)
        assert row["trial_hours"] == pytest.approx(100 * row["epoch_s"] / 3600, rel=1e-9)
        assert row["grid_gpu_hours_packed"] == pytest.approx(hours / best, rel=1e-9)


def test_bad_parts_exit_nonzero_naming_the_valid_parts() -> None:
    proc = run_script("--smoke", "--parts", "steps,warp", timeout=120)
    assert proc.returncode != 0
    assert "warp" in proc.stderr
    assert all(part in proc.stderr for part in PARTS)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_memory_is_measured_on_cuda() -> None:
    proc = run_script("--parts", "memory", "--methods", "ogm", "--n-train", "64", "--json", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["parts"]["memory"]["rows"]
    assert [r["method"] for r in rows] == ["joint", "ogm"]
    for row in rows:
        assert row["reason"] is None and 0 < row["max_allocated_bytes"] <= row["max_reserved_bytes"]
        assert row["fits_per_device"] >= 1


def test_the_memory_parts_cuda_branch_measures_every_method(monkeypatch) -> None:
    # The CUDA branch, run on the CPU with torch.cuda's memory calls stood in: it once passed its
    # first trial's settings on to the next method's config and failed there (a TypeError on a GPU).
    import importlib.util
    from types import SimpleNamespace

    import torch

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    gpu = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_bench", gpu)  # its dataclasses look their module up there
    spec.loader.exec_module(gpu)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=80 << 30))
    for name in ("reset_peak_memory_stats", "synchronize", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, **kwargs: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 1 << 29)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: 1 << 30)
    real_build = gpu.build_trial

    def on_cpu(config):
        config["train"]["device"] = "cpu"
        return real_build(config)

    monkeypatch.setattr(gpu, "build_trial", on_cpu)
    result = gpu.part_memory(SimpleNamespace(method_entries=["ogm", "amss"]), gpu.SMOKE, torch.device("cuda"))
    assert [r["method"] for r in result["rows"]] == ["joint", "ogm", "amss"]
    assert all(r["reason"] is None and r["fits_per_device"] == 80 for r in result["rows"])
    assert result["config"]["runs_with"]["precision"] == "fp32" and "runs_with" in result["config"]
