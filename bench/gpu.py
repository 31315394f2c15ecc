"""GPU measurements of issue 24 in one command: step time, AMP, memory, packing and the AMSS grid's cost.

Every part trains real :class:`mmtune.engine.trial.Trial` objects (built with ``parse_trial_config``, as
``bench/method_overhead.py`` does) on data that lives on the device, and times ``Trial.step``'s training
part (``samples_per_s``; evaluation is excluded unless said otherwise). Parts (``--parts``, all by default):

* **steps**: training-epoch time of joint and of each method (``--methods``; default ogm, ogm-ge, opm,
  amss, amss+ and aim with ``start_epoch=1`` so that every measured epoch is in AIM's modulation phase)
  at the papers' scale: two ResNet18 encoders, 224×224 synthetic inputs (``shape: shaped``), batch 32.
  Trials run interleaved epoch by epoch after ``--warmup`` discarded epochs; the ratio to joint is
  *paired* (each round's method epoch over the joint epoch of the same round, median and IQR over
  rounds), which cancels the machine's drift (method_overhead.py's docstring says why).
* **amp**: the joint step (plus ``--amp-method`` if given) at ``train.precision`` fp32 / bf16 / fp16 ×
  ``train.channels_last`` false / true, interleaved and paired like *steps*: speedup = fp32-contiguous
  epoch / variant epoch. A precision this device cannot autocast is reported as skipped with the
  reason ``resolve_device`` gives. When ``TrainConfig`` has a ``compile`` field, fp32 with
  ``train.compile: true`` is timed too (after ``--compile-warmup`` extra epochs that absorb the
  compilation); otherwise the row says it is not available in this mmtune.
* **memory**: peak CUDA memory of one trial (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved``,
  reset before the trial is built, read after ``--memory-epochs`` training epochs), for joint and each
  method at the *steps* scale; the packing factor that would fit (device memory / peak reserved). On a
  CPU the numbers are null with the reason (torch keeps no peak statistics for CPU tensors).
* **packing**: k = 1, 2, 4, 8 joint trials at once on one device, each in its own process (this script
  with a hidden ``--worker`` flag). Every worker builds its trial and trains ``--warmup`` epochs, then
  all start together (a go line on stdin) and train ``--packing-epochs`` epochs of ``--packing-steps``
  steps. Reported: each trial's samples/s, the total over all trials (all samples / the span from the
  first start to the last end), and the speedup over running the k trials one after another (= total /
  the throughput of one alone). k stops growing when a worker runs out of memory ("does not fit").
* **grid**: the cost of AMSS's Table VIII grid (13 τ × 5 seeds × 100 epochs; AMSS, TPAMI 2025,
  arXiv:2404.08347) on CREMA-D: two ResNet18 encoders on CREMA-D-shaped tensors, audio 1×257×188 (the
  ``spectrogram: code`` shape of :mod:`mmtune.data.cremad`) and visual 1×3×224×224 (one sampled frame
  of the stored (K, 3, 224, 224) stack, as the loader gives the model), batch 64 (BalanceBenchmark's
  ``eff_batch_size: 64`` and OGM-GE's CREMA-D code; the AMSS paper's batch is not restated here).
  ``--grid-batches`` training batches of random tensors are timed for joint and amss, then
  *extrapolated*: epoch = ⌈6698 / 64⌉ batches × the median batch time + 744 test clips × the measured
  evaluation time per sample; grid = 13 × 5 × 100 epochs, in GPU-hours, and that divided by the best
  packing speedup of part *packing*. The output says it is an extrapolation and from how many batches.

Precision, channels_last and compile: steps, memory, packing and grid run with mmtune's train defaults
(chosen by device: ``auto``), or what ``--train key=value`` sets for every trial; each part records what
its trials ran with (``runs_with``). The amp part sets those three keys itself.

On a CPU every part still runs (slowly at these sizes) and the device label says "cpu". ``--smoke``
runs all parts on the CPU at tiny sizes (mlp encoders; ResNet18 at 32×32 / 32×24 for the grid; a few
samples; k ∈ {1, 2}) in seconds: CI's check that the script works (``tests/test_bench_gpu.py``), not a performance figure.

    python bench/gpu.py                                   # everything, on CUDA when visible
    python bench/gpu.py --parts steps,memory --methods ogm,amss --train precision=fp32
    python bench/gpu.py --json --out bench/gpu.json       # table on stderr, JSON last on stdout and in the file
    python bench/gpu.py --smoke --json                    # CPU smoke run (CI)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import (  # noqa: E402
    add_device_arg, console, device_label, emit_json, env_info, median, parse_entry, pick_device, quartiles,
)

PARTS = ("steps", "amp", "memory", "packing", "grid")
DEFAULT_METHODS = "ogm,ogm-ge,opm,amss,amss+,aim:start_epoch=1"
# AMSS Table VIII (arXiv:2404.08347): τ values × seeds × epochs; CREMA-D as OGM-GE's split uses it.
GRID_TAUS, GRID_SEEDS, GRID_EPOCHS = 13, 5, 100
CREMAD_TRAIN_CLIPS, CREMAD_TEST_CLIPS = 6698, 744
BENCH_DATASET = "bench-shaped"


@dataclass(frozen=True)
class Scale:
    """Sizes of one run: the papers' scale by default, tiny under ``--smoke``."""

    backbone: str = "resnet18"
    image_size: int = 224
    batch_size: int = 32
    n_train: int = 320
    n_eval: int = 16
    epochs: int = 5
    warmup: int = 2
    amp_backbone: str = "resnet18"
    memory_epochs: int = 2
    packing_ks: tuple[int, ...] = (1, 2, 4, 8)
    packing_steps: int = 10
    packing_epochs: int = 2
    packing_threads: int = 0  # 0: the machine's cores / k per worker
    grid_shapes: tuple[tuple[str, tuple[int, ...]], ...] = (("audio", (1, 257, 188)), ("visual", (1, 3, 224, 224)))
    grid_batch_size: int = 64
    grid_batches: int = 5
    grid_epochs: int = 3
    compile_warmup: int = 2


SMOKE = Scale(backbone="mlp", image_size=32, batch_size=16, n_train=32, n_eval=16, epochs=2, warmup=1,
              amp_backbone="mlp", memory_epochs=1, packing_ks=(1, 2), packing_steps=2, packing_epochs=1,
              packing_threads=1, grid_shapes=(("audio", (1, 32, 24)), ("visual", (1, 3, 32, 32))), grid_batch_size=8,
              grid_batches=2, grid_epochs=1, compile_warmup=0)


# ----------------------------------------------------------------------------- the CREMA-D-shaped dataset
def register_shaped_dataset() -> None:
    """Register ``bench-shaped`` (this process only): random tensors of given per-modality shapes, made on
    the device, so that a Trial sees CREMA-D's input shapes (the synthetic set makes square inputs only)."""
    from mmtune.config import Record, hp
    from mmtune.data import DATASETS
    from mmtune.data.base import MultimodalData, TensorSplit

    if BENCH_DATASET in DATASETS:
        return

    @dataclass(frozen=True)
    class ShapedConfig(Record):
        name: str = hp(BENCH_DATASET, doc="dataset name")
        shapes: dict[str, tuple[int, ...]] = hp(default_factory=dict, doc="modality -> per-sample input shape")
        num_classes: int = hp(6, low=2, doc="classes (CREMA-D: 6)")
        n_train: int = hp(64, low=1, doc="training samples")
        n_val: int = hp(16, low=1, doc="validation samples")
        n_test: int = hp(16, low=1, doc="test samples")
        seed: int = hp(0, low=0, doc="data seed")

    def build(cfg: ShapedConfig, device: torch.device) -> MultimodalData:
        generator = torch.Generator(device).manual_seed(cfg.seed)

        def split(n: int) -> TensorSplit:
            inputs = {m: torch.randn((n, *shape), generator=generator, device=device) for m, shape in cfg.shapes.items()}
            labels = torch.randint(cfg.num_classes, (n,), generator=generator, device=device)
            return TensorSplit(inputs, labels)

        return MultimodalData(split(cfg.n_train), split(cfg.n_val), split(cfg.n_test), list(cfg.shapes), cfg.num_classes,
                              {m: tuple(s) for m, s in cfg.shapes.items()})

    DATASETS[BENCH_DATASET] = (ShapedConfig, build)


# ----------------------------------------------------------------------------- trial configs and timing
# ``--train key=value`` overrides, applied to every trial (the amp part's own keys win there).
TRAIN_OVERRIDES: dict[str, Any] = {}


def trial_config(entry: str, *, backbone: str, image_size: int, batch_size: int, n_train: int, n_eval: int, epochs: int,
                 device: str, train: dict[str, Any] | None = None, shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """A trial config as ``parse_trial_config`` reads it; ``shapes`` switches to the ``bench-shaped`` dataset."""
    name, params = parse_entry(entry)
    if shapes is not None:
        dataset: dict[str, Any] = {"name": BENCH_DATASET, "shapes": {m: list(s) for m, s in shapes.items()},
                                   "n_train": n_train, "n_val": n_eval, "n_test": n_eval}
    else:
        dataset = {"n_train": n_train, "n_val": n_eval, "n_test": n_eval}
        if backbone in ("cnn", "resnet18"):
            dataset.update(shape="shaped", image_size=image_size)
    return {"method": name, "seed": 0, "params": params, "dataset": dataset, "model": {"backbone": backbone},
            "train": {"batch_size": batch_size, "epochs": epochs, "device": device, **TRAIN_OVERRIDES, **(train or {})}}


def build_trial(config: dict) -> Any:
    from mmtune.engine.trial import Trial, parse_trial_config

    return Trial(parse_trial_config(config))


def runs_with(trial: Any) -> dict[str, Any]:
    """The precision / channels_last / compile a trial runs with once every ``auto`` is resolved."""
    resolved = getattr(trial, "resolved", None)
    if isinstance(resolved, dict):
        return {k: resolved.get(k) for k in ("precision", "channels_last", "compile")}
    t = trial.spec.train
    return {"precision": t.precision, "channels_last": t.channels_last, "compile": getattr(t, "compile", None)}


def train_seconds(trial: Any) -> float:
    """One epoch of ``trial``; the seconds of its training part (all steps and the method's epoch hooks)."""
    metrics = trial.step()
    return len(trial.train_split) / metrics["samples_per_s"]


def interleaved(trials: dict[str, Any], *, warmup: int, epochs: int) -> dict[str, list[float]]:
    """Training seconds per measured round, epoch by epoch in turn over ``trials`` (drift hits all alike)."""
    seconds: dict[str, list[float]] = {key: [] for key in trials}
    for epoch in range(warmup + epochs):
        for key, trial in trials.items():
            took = train_seconds(trial)
            if epoch >= warmup:
                seconds[key].append(took)
    return seconds


def paired(seconds: dict[str, list[float]], base: str, *, inverse: bool = False) -> dict[str, dict[str, float]]:
    """Median and IQR over rounds of each key's epoch / the base's epoch of the same round (base / key with
    ``inverse``: a speedup), beside the median epoch and the ratio of medians."""
    out = {}
    for key, values in seconds.items():
        ratios = [(b / v if inverse else v / b) for v, b in zip(values, seconds[base], strict=True)]
        q1, mid, q3 = quartiles(ratios)
        of_medians = median(seconds[base]) / median(values) if inverse else median(values) / median(seconds[base])
        out[key] = {"median_epoch_s": median(values), "ratio": mid, "q1": q1, "q3": q3, "ratio_of_medians": of_medians}
    return out


def split_entries(text: str) -> list[str]:
    return [e.strip() for e in re.split(r",(?![^\[]*\])", text) if e.strip()]  # umt:teacher_epochs=[1,1]


def free_device(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- the parts
def part_steps(args: argparse.Namespace, scale: Scale, device: torch.device) -> dict[str, Any]:
    entries = ["joint", *args.method_entries]
    config = {"backbone": scale.backbone, "image_size": scale.image_size, "batch_size": scale.batch_size,
              "n_train": scale.n_train, "n_eval": scale.n_eval, "epochs": scale.warmup + scale.epochs}
    trials = {e: build_trial(trial_config(e, device=device.type, **config)) for e in entries}
    resolved = runs_with(trials["joint"])
    seconds = interleaved(trials, warmup=scale.warmup, epochs=scale.epochs)
    del trials
    free_device(device)
    stats = paired(seconds, "joint")
    rows = [{"method": e, **stats[e]} for e in entries]
    return {"config": {**config, "warmup": scale.warmup, "measured_epochs": scale.epochs, "runs_with": resolved},
            "rows": rows}


def compile_available() -> bool:
    from mmtune.engine.trial import TrainConfig

    return "compile" in TrainConfig.__dataclass_fields__


def part_amp(args: argparse.Namespace, scale: Scale, device: torch.device) -> dict[str, Any]:
    from mmtune.engine.trial import resolve_device
    from mmtune.errors import ConfigError

    entries = ["joint", *([args.amp_method] if args.amp_method else [])]
    config = {"backbone": scale.amp_backbone, "image_size": scale.image_size, "batch_size": scale.batch_size,
              "n_train": scale.n_train, "n_eval": scale.n_eval}
    has_compile = compile_available()
    off = {"compile": False} if has_compile else {}
    variants: list[tuple[str, dict[str, Any]]] = [
        (f"{precision}{' channels_last' if cl else ''}", {"precision": precision, "channels_last": cl, **off})
        for precision in ("fp32", "bf16", "fp16") for cl in (False, True)]
    if has_compile and not args.smoke:
        variants.append(("fp32 compile", {"precision": "fp32", "channels_last": False, "compile": True}))
    skipped: dict[str, str] = {}
    for name, train in variants:
        try:
            resolve_device(device.type, train["precision"])
        except ConfigError as err:
            skipped[name] = str(err.problems[0]) if err.problems else str(err)
    extra = scale.compile_warmup
    rows = []
    for entry in entries:
        trials = {}
        for name, train in variants:
            if name in skipped:
                continue
            trials[name] = build_trial(trial_config(entry, device=device.type, train=train,
                                                    epochs=scale.warmup + scale.epochs + extra, **config))
            if train.get("compile"):
                for _ in range(extra):  # the first epochs compile: not part of the comparison
                    trials[name].step()
        seconds = interleaved(trials, warmup=scale.warmup, epochs=scale.epochs)
        del trials
        free_device(device)
        stats = paired(seconds, "fp32", inverse=True)
        for name, train in variants:
            row = {"method": entry, "variant": name, "precision": train["precision"],
                   "channels_last": train.get("channels_last", False), "compile": train.get("compile", False)}
            if name in skipped:
                rows.append({**row, "skipped": skipped[name]})
            else:
                rows.append({**row, "skipped": None, **stats[name]})
    if has_compile:
        compile_note = ("train.compile timed (fp32, after the warm-up epochs that compile)" if not args.smoke
                        else "train.compile not timed under --smoke (compiling takes minutes on a CPU)")
    else:
        compile_note = "train.compile: not available in this mmtune (TrainConfig has no compile field)"
    return {"config": {**config, "warmup": scale.warmup, "measured_epochs": scale.epochs}, "rows": rows,
            "compile": {"available": has_compile, "note": compile_note}}


def part_memory(args: argparse.Namespace, scale: Scale, device: torch.device) -> dict[str, Any]:
    entries = ["joint", *args.method_entries]
    config = {"backbone": scale.backbone, "image_size": scale.image_size, "batch_size": scale.batch_size,
              "n_train": scale.n_train, "n_eval": scale.n_eval, "epochs": scale.memory_epochs}
    if device.type != "cuda":
        reason = "no CUDA device: torch keeps no peak-memory statistics for CPU tensors, so nothing is measured"
        rows = [{"method": e, "max_allocated_bytes": None, "max_reserved_bytes": None, "fits_per_device": None,
                 "reason": reason} for e in entries]
        return {"config": config, "rows": rows, "device_total_bytes": None}
    total = torch.cuda.get_device_properties(device).total_memory
    rows, resolved = [], None
    for entry in entries:
        free_device(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            trial = build_trial(trial_config(entry, device=device.type, **config))
            resolved = runs_with(trial)  # (not into config: config is passed to the next entry's trial_config)
            for _ in range(scale.memory_epochs):
                trial.step()
            torch.cuda.synchronize(device)
            allocated, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
            rows.append({"method": entry, "max_allocated_bytes": allocated, "max_reserved_bytes": reserved,
                         "fits_per_device": total // max(reserved, 1), "reason": None})
            del trial
        except torch.cuda.OutOfMemoryError:
            rows.append({"method": entry, "max_allocated_bytes": None, "max_reserved_bytes": None, "fits_per_device": 0,
                         "reason": "out of memory: one trial does not fit"})
    free_device(device)
    return {"config": {**config, "runs_with": resolved}, "rows": rows, "device_total_bytes": total}


def part_packing(args: argparse.Namespace, scale: Scale, device: torch.device) -> dict[str, Any]:
    config = trial_config("joint", device=device.type, backbone=scale.backbone, image_size=scale.image_size,
                          batch_size=scale.batch_size, n_train=scale.packing_steps * scale.batch_size, n_eval=scale.n_eval,
                          epochs=scale.warmup + scale.packing_epochs)
    rows: list[dict[str, Any]] = []
    alone = None
    for k in scale.packing_ks:
        threads = scale.packing_threads or max(1, (os.cpu_count() or 1) // k)
        job = {"config": config, "warmup": scale.warmup, "epochs": scale.packing_epochs, "threads": threads}
        results = run_workers(k, job)
        failed = [r for r in results if r.get("error")]
        if failed:
            oom = any(r.get("oom") for r in failed)
            rows.append({"k": k, "fits": False, "reason": "does not fit: out of memory" if oom else failed[0]["error"],
                         "per_trial_samples_per_s": None, "total_samples_per_s": None, "speedup": None})
            break
        span = max(r["end"] for r in results) - min(r["start"] for r in results)
        total = sum(r["samples"] for r in results) / span
        per_trial = [r["samples"] / (r["end"] - r["start"]) for r in results]
        alone = total if k == 1 else alone
        rows.append({"k": k, "fits": True, "reason": None, "threads_per_worker": threads,
                     "per_trial_samples_per_s": per_trial, "total_samples_per_s": total,
                     "speedup": total / alone if alone else None,
                     "peak_reserved_bytes": [r["peak_reserved_bytes"] for r in results],
                     "runs_with": results[0]["runs_with"]})
    speedups = [r["speedup"] for r in rows if r.get("speedup")]
    best = max(speedups) if speedups else None
    best_k = next((r["k"] for r in rows if r.get("speedup") == best), None)
    return {"config": {"backbone": scale.backbone, "image_size": scale.image_size, "batch_size": scale.batch_size,
                       "steps_per_epoch": scale.packing_steps, "measured_epochs": scale.packing_epochs,
                       "warmup": scale.warmup},
            "rows": rows, "best_speedup": best, "best_k": best_k}


def run_workers(k: int, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Start ``k`` worker processes, wait until all have warmed up, start them together, collect results."""
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "MMTUNE_THREADS": str(job["threads"])}
    # stderr to files, not pipes: a worker's warnings (or compile logs) could fill a pipe no one reads until the end
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(k)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
             for log in logs]
    ready = [p.stdout.readline().strip() for p in procs]
    for p, line in zip(procs, ready, strict=True):
        if line == "ready":
            p.stdin.write("go\n")
            p.stdin.flush()
    results = []
    for p, line, log in zip(procs, ready, logs, strict=True):
        out, _ = p.communicate()
        log.seek(0)
        err = log.read()
        log.close()
        text = out.strip().splitlines()[-1] if out.strip() else (line if line != "ready" else "")
        try:
            results.append(json.loads(text))
        except json.JSONDecodeError:
            last = err.strip().splitlines()[-1] if err.strip() else "no output"
            results.append({"error": f"worker exited {p.returncode}: {last}"})
    return results


def worker(job_text: str) -> int:
    """Hidden ``--worker``: one packed trial. Prints ``ready`` after warm-up, waits for ``go``, trains, prints JSON."""
    job = json.loads(job_text)
    torch.set_num_threads(job["threads"])
    device = torch.device(job["config"]["train"]["device"])
    try:
        trial = build_trial(job["config"])
        for _ in range(job["warmup"]):
            trial.step()
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 1
        samples = 0
        start = time.time()
        for _ in range(job["epochs"]):
            samples += len(trial.train_split)
            trial.step()  # includes the (small) evaluation: a packed trial evaluates too
        end = time.time()
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not isinstance(err, torch.cuda.OutOfMemoryError) and "ALLOC_FAILED" not in first and "out of memory" not in first:
            raise  # a real error, not a full card (cuBLAS/cuDNN report theirs as RuntimeError ..._ALLOC_FAILED)
        print(json.dumps({"error": f"out of memory: {first}", "oom": True}), flush=True)
        return 0
    peak = torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None
    print(json.dumps({"samples": samples, "start": start, "end": end, "peak_reserved_bytes": peak,
                      "runs_with": runs_with(trial)}), flush=True)
    return 0


def part_grid(args: argparse.Namespace, scale: Scale, device: torch.device, packing: dict[str, Any] | None) -> dict[str, Any]:
    register_shaped_dataset()
    shapes = dict(scale.grid_shapes)
    batch = scale.grid_batch_size
    n_train = scale.grid_batches * batch
    n_eval = batch
    common = {"backbone": "resnet18", "image_size": 0, "batch_size": batch, "n_train": n_train, "n_eval": n_eval,
              "epochs": 1 + scale.grid_epochs, "device": device.type, "shapes": shapes, "train": {"eval_batch_size": batch}}
    batches_per_epoch = math.ceil(CREMAD_TRAIN_CLIPS / batch)
    runs = GRID_TAUS * GRID_SEEDS
    rows = []
    for entry in ("joint", "amss"):
        trial = build_trial(trial_config(entry, **common))
        resolved = runs_with(trial)
        trial.step()  # warm-up
        per_batch, eval_per_sample = [], []
        for _ in range(scale.grid_epochs):
            metrics = trial.step()
            train_s = n_train / metrics["samples_per_s"]
            per_batch.append(train_s / scale.grid_batches)
            eval_per_sample.append(max(metrics["epoch_s"] - train_s, 0.0) / (2 * n_eval))
        del trial
        free_device(device)
        batch_s, eval_s = median(per_batch), median(eval_per_sample)
        epoch_s = batches_per_epoch * batch_s + CREMAD_TEST_CLIPS * eval_s
        hours = runs * GRID_EPOCHS * epoch_s / 3600
        best = packing.get("best_speedup") if packing else None
        rows.append({"method": entry, "batch_s": batch_s, "eval_per_sample_s": eval_s, "epoch_s": epoch_s,
                     "trial_hours": GRID_EPOCHS * epoch_s / 3600, "grid_gpu_hours": hours,
                     "grid_gpu_hours_packed": hours / best if best else None})
    best = packing.get("best_speedup") if packing else None
    packed_note = (f"packed: divided by the best packing speedup measured ({best:.3f}, k = {packing['best_k']})"
                   if best else "packed: not computed (run the packing part too)")
    return {
        "extrapolation": True,
        "note": (f"extrapolated from {scale.grid_batches} timed training batches × {scale.grid_epochs} epochs "
                 f"(median) after one warm-up epoch, random tensors; epoch = {batches_per_epoch} batches × batch time "
                 f"+ {CREMAD_TEST_CLIPS} test clips × evaluation time per sample; grid = {GRID_TAUS} τ × {GRID_SEEDS} "
                 f"seeds × {GRID_EPOCHS} epochs; {packed_note}"),
        "shapes": {m: list(s) for m, s in shapes.items()}, "batch_size": batch, "timed_batches": scale.grid_batches,
        "timed_epochs": scale.grid_epochs, "train_clips": CREMAD_TRAIN_CLIPS, "test_clips": CREMAD_TEST_CLIPS,
        "batches_per_epoch": batches_per_epoch, "taus": GRID_TAUS, "seeds": GRID_SEEDS, "epochs": GRID_EPOCHS,
        "best_packing_speedup": best, "runs_with": resolved, "hours_unit": "GPU" if device.type == "cuda" else "CPU",
        "rows": rows,
    }


# ----------------------------------------------------------------------------- report
def _f(value: Any, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


def _mib(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**20:,.0f}"


def _runs(resolved: dict[str, Any] | None) -> str:
    if not resolved:
        return "—"
    return ", ".join(f"{k} {v}" for k, v in resolved.items())


def _table(title: str, columns: tuple[str, ...], *, left: tuple[str, ...]) -> Any:
    """A rich table with these columns, right-aligned except the ``left`` ones."""
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in left else "right")
    return table


def render(result: dict[str, Any], out: Any) -> None:
    label, parts = result["device_label"], result["parts"]
    smoke = " · SMOKE (tiny sizes, not a performance figure)" if result["smoke"] else ""
    if "steps" in parts:
        c = parts["steps"]["config"]
        table = _table(f"steps: training-epoch time vs joint · {c['backbone']} {c['image_size']}² · batch "
                       f"{c['batch_size']} · {c['n_train']} samples · {label}{smoke}",
                       ("method", "median epoch (s)", "ratio vs joint (paired)", "IQR", "ratio of medians"), left=("method",))
        for r in parts["steps"]["rows"]:
            table.add_row(r["method"], _f(r["median_epoch_s"]), _f(r["ratio"], ".3f"), f"{r['q1']:.3f}–{r['q3']:.3f}",
                          _f(r["ratio_of_medians"], ".3f"))
        out.print(table)
        out.print(f"trials ran with {_runs(c['runs_with'])}")
    if "amp" in parts:
        c = parts["amp"]["config"]
        table = _table(f"amp: speedup over fp32 contiguous · {c['backbone']} {c['image_size']}² · batch "
                       f"{c['batch_size']} · {label}{smoke}",
                       ("method", "variant", "median epoch (s)", "speedup (paired)", "IQR", "skipped"),
                       left=("method", "variant", "skipped"))
        for r in parts["amp"]["rows"]:
            if r["skipped"]:
                table.add_row(r["method"], r["variant"], "—", "—", "", r["skipped"])
            else:
                table.add_row(r["method"], r["variant"], _f(r["median_epoch_s"]), _f(r["ratio"], ".3f"),
                              f"{r['q1']:.3f}–{r['q3']:.3f}", "")
        out.print(table)
        out.print(parts["amp"]["compile"]["note"])
    if "memory" in parts:
        table = _table(f"memory: peak CUDA memory of one trial · {label}{smoke}",
                       ("method", "max allocated (MiB)", "max reserved (MiB)", "trials that fit", "reason"),
                       left=("method", "reason"))
        for r in parts["memory"]["rows"]:
            table.add_row(r["method"], _mib(r["max_allocated_bytes"]), _mib(r["max_reserved_bytes"]),
                          _f(r["fits_per_device"], "d"), r["reason"] or "")
        out.print(table)
        if parts["memory"]["device_total_bytes"]:
            out.print("trials that fit = card memory // peak reserved, an upper bound: each trial's process also holds a "
                      "CUDA context (~0.5 GB, not in torch's statistics); `mmtune sweep --plan` counts it. Trials ran "
                      f"with {_runs(parts['memory']['config']['runs_with'])}")
    if "packing" in parts:
        c = parts["packing"]["config"]
        table = _table(f"packing: k joint trials at once, one process each · {c['backbone']} {c['image_size']}² · "
                       f"batch {c['batch_size']} · {label}{smoke}",
                       ("k", "per-trial samples/s", "total samples/s", "speedup vs k sequential", "note"), left=("note",))
        for r in parts["packing"]["rows"]:
            if not r["fits"]:
                table.add_row(str(r["k"]), "—", "—", "—", r["reason"])
                continue
            per = ", ".join(f"{v:.1f}" for v in r["per_trial_samples_per_s"])
            table.add_row(str(r["k"]), per, f"{r['total_samples_per_s']:.1f}", _f(r["speedup"], ".3f"), "")
        out.print(table)
    if "grid" in parts:
        g = parts["grid"]
        shapes = ", ".join(f"{m} {'×'.join(map(str, s))}" for m, s in g["shapes"].items())
        unit = g["hours_unit"]
        table = _table(f"grid: AMSS Table VIII ({g['taus']} τ × {g['seeds']} seeds × {g['epochs']} epochs) · "
                       f"ResNet18 ×2 · {shapes} · batch {g['batch_size']} · EXTRAPOLATED · {label}{smoke}",
                       ("method", "batch (s)", "epoch (s)", "one trial (h)", f"grid ({unit}-h)", f"grid packed ({unit}-h)"),
                       left=("method",))
        for r in g["rows"]:
            table.add_row(r["method"], _f(r["batch_s"]), _f(r["epoch_s"], ".2f"), _f(r["trial_hours"], ".3f"),
                          _f(r["grid_gpu_hours"], ".2f"), _f(r["grid_gpu_hours_packed"], ".2f"))
        out.print(table)
        out.print(f"{g['note']}; trials ran with {_runs(g['runs_with'])}")


# ----------------------------------------------------------------------------- main
def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise SystemExit(f"error: --parts: unknown part(s) {bad or [text]}; valid parts: {', '.join(PARTS)} "
                         "(comma-separated, e.g. --parts steps,amp)")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="method entries for steps and memory "
                                                                   f"(default: {DEFAULT_METHODS})")
    parser.add_argument("--amp-method", default="", help="one method entry timed in the amp part beside joint")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, all parts in seconds (CI)")
    parser.add_argument("--json", action="store_true", help="report on stderr; last stdout line: one JSON object")
    parser.add_argument("--out", default="", help="also write the JSON object to this file")
    parser.add_argument("--epochs", type=int, help="measured epochs of steps and amp (default 5; smoke 2)")
    parser.add_argument("--warmup", type=int, help="discarded epochs (default 2; smoke 1)")
    parser.add_argument("--n-train", type=int, help="training samples of steps/amp/memory (default 320; smoke 32)")
    parser.add_argument("--grid-batches", type=int, help="timed batches per grid epoch (default 5; smoke 2)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="a train key for every trial, e.g. --train precision=fp32 (repeatable; default: mmtune's "
                             "train defaults, chosen by device); the amp part sets precision/channels_last/compile itself")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    add_device_arg(parser)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    parts = parse_parts(args.parts)
    scale = SMOKE if args.smoke else Scale()
    for flag, field in (("epochs", "epochs"), ("warmup", "warmup"), ("n_train", "n_train"), ("grid_batches", "grid_batches")):
        value = getattr(args, flag)
        if value is not None:
            if value < (0 if flag == "warmup" else 1):
                raise SystemExit(f"error: --{flag.replace('_', '-')} must be >= {0 if flag == 'warmup' else 1}, got {value}")
            scale = replace(scale, **{field: value})
    if args.smoke and args.device == "cuda":
        raise SystemExit("error: --smoke runs on the CPU; drop --device cuda")
    device = torch.device("cpu") if args.smoke else pick_device(args.device)
    if args.smoke:
        torch.set_num_threads(1)
    args.method_entries = split_entries(args.methods)
    from mmtune.cli import parse_value

    for item in args.train:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --train {item!r}: expected KEY=VALUE, e.g. --train precision=fp32")
        TRAIN_OVERRIDES[key] = parse_value(value)

    from mmtune.errors import ConfigError

    out = console(args.json)
    result: dict[str, Any] = {"env": env_info(device), "device_label": device_label(device), "smoke": args.smoke,
                              "parts": {}}
    try:
        for part in PARTS:  # a fixed order: grid uses packing's best speedup
            if part not in parts:
                continue
            started = time.perf_counter()
            if part == "grid":
                result["parts"][part] = part_grid(args, scale, device, result["parts"].get("packing"))
            else:
                result["parts"][part] = globals()[f"part_{part}"](args, scale, device)
            result["parts"][part]["seconds"] = time.perf_counter() - started
    except ConfigError as err:
        print(f"error: invalid trial config\n{err}", file=sys.stderr)
        return 2
    render(result, out)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if args.json:
        emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
