"""The modality-imbalance phenomenon of the synthetic dataset, measured.

For each trial seed 0..S-1 this trains, in-process through ``Trial`` / ``parse_trial_config``:

* ``joint`` on all modalities, and
* ``unimodal`` with ``params.modality = m`` for every modality m (the same encoder trained alone).

Model selection follows the package: the best-validation epoch (first on ties). For ``joint`` the
script tracks, per epoch, the per-modality accuracy inside the joint model (``val_acc/<m>``,
``test_acc/<m>``: the modality's own logit component, OPM/OGM Eq. 2) and the discrepancy ratio
``imbalance/<m>``, and keeps the values AT the best-validation epoch. The gap of a modality is
``unimodal(m) test acc − joint's test_acc/<m>`` (both at their best-validation epoch, same seed):
positive means the modality is learnt worse inside the joint model than alone — the imbalance.

    python bench/imbalance.py                               # markdown tables
    python bench/imbalance.py --json                        # last stdout line: one JSON object
    python bench/imbalance.py --seeds 3 dataset.dominance=3 # dataset (model., train.) overrides
    python bench/imbalance.py --methods aim train.probe=true # + each encoder's linear-probe accuracy
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch

from _common import add_device_arg, device_label, emit_json, env_info, mean_std, parse_entry, pick_device

OVERRIDE_SECTIONS = ("dataset", "model", "train")


def build_config(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The shared trial config (method, seed and params are set per run); exits 2 on bad overrides."""
    from mmtune.cli import apply_overrides

    base: dict[str, Any] = {
        "model": {"backbone": args.backbone, "fusion": args.fusion},
        "train": {"epochs": args.epochs, "device": device.type},
    }
    problems = []
    for item in args.overrides:
        section = item.partition("=")[0].strip().partition(".")[0]
        if section not in OVERRIDE_SECTIONS or "." not in item.partition("=")[0]:
            problems.append(f"{item}: overrides are dataset.key=value (or model./train.); "
                            "method, seed and params are set by this script.")
    config, syntax = apply_overrides(base, args.overrides) if not problems else (base, [])
    problems += [f"{p.path}: {p.message}" for p in syntax]
    if args.backbone in ("cnn", "resnet18"):  # conv encoders need the image-like synthetic inputs
        config.setdefault("dataset", {}).setdefault("shape", "shaped")
    if problems:
        print("error:\n  " + "\n  ".join(problems), file=sys.stderr)
        raise SystemExit(2)
    return config


def spec_for(config: dict[str, Any], method: str, seed: int, params: dict[str, Any] | None = None):
    from mmtune.engine.trial import parse_trial_config
    from mmtune.errors import ConfigError

    cfg = {**config, "method": method, "seed": seed, "params": dict(params or {})}
    try:
        return parse_trial_config(cfg)
    except ConfigError as err:
        print(f"error: invalid config for {method}:\n{err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_joint(config: dict[str, Any], seed: int, method: str = "joint", params: dict[str, Any] | None = None) -> dict[str, float]:
    """A multimodal method's metrics at its best-validation epoch (per-modality accuracy inside it too)."""
    from mmtune.engine.trial import Trial

    trial = Trial(spec_for(config, method, seed, params))
    mods = trial.modalities
    best: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for _ in range(trial.spec.train.epochs):
        metrics = trial.step()
        if not best or metrics["val_acc"] > best["best_val_acc"]:  # first epoch on ties
            best = {"best_val_acc": metrics["val_acc"], "test_acc_at_best_val": metrics["test_acc"],
                    "best_epoch": int(metrics["epoch"])}
            for m in mods:
                best[f"val_acc/{m}"] = metrics[f"val_acc/{m}"]
                best[f"test_acc/{m}"] = metrics[f"test_acc/{m}"]
                best[f"imbalance/{m}"] = metrics[f"imbalance/{m}"]
                for key in (f"val_probe/{m}", f"test_probe/{m}"):  # with train.probe=true
                    if key in metrics:
                        best[key] = metrics[key]
    # Our tracking and the Trial's own model selection must agree.
    assert best["best_epoch"] == int(metrics["best_epoch"]), (best, metrics["best_epoch"])
    assert best["test_acc_at_best_val"] == metrics["test_acc_at_best_val"]
    return best


def run_unimodal(config: dict[str, Any], seed: int, modality: str) -> dict[str, float]:
    from mmtune.engine.trial import Trial

    trial = Trial(spec_for(config, "unimodal", seed, {"modality": modality}))
    metrics: dict[str, float] = {}
    for _ in range(trial.spec.train.epochs):
        metrics = trial.step()
    return {"best_val_acc": metrics["best_val_acc"], "test_acc_at_best_val": metrics["test_acc_at_best_val"],
            "best_epoch": int(metrics["best_epoch"])}


def summarise(per_seed: list[dict[str, Any]], mods: list[str]) -> dict[str, dict[str, float]]:
    series: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        series.setdefault(key, []).append(float(value))

    for row in per_seed:
        j = row["joint"]
        add("joint/best_val_acc", j["best_val_acc"])
        add("joint/test_acc_at_best_val", j["test_acc_at_best_val"])
        for m in mods:
            u = row["unimodal"][m]
            for k in (f"val_acc/{m}", f"test_acc/{m}", f"imbalance/{m}"):
                add(f"joint/{k}", j[k])
            add(f"unimodal/{m}/best_val_acc", u["best_val_acc"])
            add(f"unimodal/{m}/test_acc_at_best_val", u["test_acc_at_best_val"])
            add(f"gap/{m}", row["gap"][m])
            add(f"gap_val/{m}", row["gap_val"][m])
    out = {}
    for key, values in series.items():
        mean, std = mean_std(values)
        out[key] = {"mean": mean, "std": std, "n": len(values)}
    return out


def markdown(summary: dict[str, dict[str, float]], mods: list[str], header: str) -> str:
    def cell(key: str) -> str:
        s = summary[key]
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] >= 2 else f"{s['mean']:.3f}"

    n = summary["joint/test_acc_at_best_val"]["n"]
    lines = [
        header,
        "",
        "| joint model | mean ± std | n |",
        "|---|---|---|",
        f"| test acc (at best val) | {cell('joint/test_acc_at_best_val')} | {n} |",
        f"| best val acc | {cell('joint/best_val_acc')} | {n} |",
        "",
        "| modality | test acc inside joint | test acc trained alone | gap (alone − joint) "
        "| val acc inside joint | val acc alone | imbalance ρ (val) | n |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in mods:
        lines.append(
            f"| {m} | {cell(f'joint/test_acc/{m}')} | {cell(f'unimodal/{m}/test_acc_at_best_val')} "
            f"| {cell(f'gap/{m}')} | {cell(f'joint/val_acc/{m}')} | {cell(f'unimodal/{m}/best_val_acc')} "
            f"| {cell(f'joint/imbalance/{m}')} | {n} |"
        )
    lines += [
        "",
        "All values at each run's best-validation epoch (first on ties); mean ± sample std (ddof=1) over "
        "trial seeds. \"Inside joint\" = the modality's own logit component of the jointly trained model; "
        "gap = alone − inside joint, paired by seed (> 0: the modality is under-learnt under joint training).",
    ]
    return "\n".join(lines)


def methods_markdown(per_seed: list[dict[str, Any]], methods: list[str], mods: list[str]) -> str:
    """Each method vs joint: test acc and each modality's test acc inside the model (and its linear
    probe's with train.probe=true), at best val; Δ = method − joint paired by seed (mean ± std, n)."""
    def cell(values: list[float]) -> str:
        mean, std = mean_std(values)
        return f"{mean:.3f} ± {std:.3f}" if std == std else f"{mean:.3f}"

    keys = [f"test_acc/{m}" for m in mods]
    names = [f"{m} acc in model" for m in mods]
    if f"test_probe/{mods[0]}" in per_seed[0]["joint"]:  # train.probe=true: the linear probes too
        keys += [f"test_probe/{m}" for m in mods]
        names += [f"{m} probe" for m in mods]
    head = ["method", "test acc", *names, *(f"Δ {n.replace(' acc in model', '')} vs joint" for n in names), "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in ["joint", *methods]:
        runs = [row["joint"] if entry == "joint" else row["methods"][entry] for row in per_seed]
        cells = [entry, cell([r["test_acc_at_best_val"] for r in runs])]
        cells += [cell([r[k] for r in runs]) for k in keys]
        cells += ["—" if entry == "joint" else cell([r[k] - row["joint"][k] for r, row in zip(runs, per_seed, strict=True)])
                  for k in keys]
        lines.append("| " + " | ".join(cells + [str(len(runs))]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.add_argument("--seeds", type=int, default=5, help="trial seeds 0..S-1 (default 5)")
    p.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    p.add_argument("--backbone", default="mlp", help="encoder for every modality (default mlp)")
    p.add_argument("--fusion", default="concat", help="fusion (default concat)")
    add_device_arg(p)
    p.add_argument("--methods", default="", help="balancing methods to compare with joint, e.g. ogm-ge,opm (see bench/method_overhead.py for the entry syntax)")
    p.add_argument("overrides", nargs="*", metavar="dataset.key=value",
                   help="dataset overrides, e.g. dataset.dominance=3 (model./train. keys are accepted too)")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    device = pick_device(args.device)
    config = build_config(args, device)
    probe = spec_for(config, "joint", 0)  # validates everything once, before any training
    mods = list(probe.dataset.modalities)
    dataset = {k: v for k, v in probe.to_config()["dataset"].items()}
    log = sys.stderr
    print(f"imbalance bench: {args.seeds} seeds × (joint + {len(mods)} unimodal) × {probe.train.epochs} epochs · "
          f"{probe.model.backbone}/{probe.model.fusion} · {device_label(device)}", file=log, flush=True)

    methods = [e.strip() for e in args.methods.split(",") if e.strip()]
    for entry in methods:
        spec_for(config, *parse_entry(entry)[:1], 0, parse_entry(entry)[1])  # validate before training
    start = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        joint = run_joint(config, seed)
        uni = {m: run_unimodal(config, seed, m) for m in mods}
        row = {
            "seed": seed,
            "joint": joint,
            "unimodal": uni,
            "gap": {m: uni[m]["test_acc_at_best_val"] - joint[f"test_acc/{m}"] for m in mods},
            "gap_val": {m: uni[m]["best_val_acc"] - joint[f"val_acc/{m}"] for m in mods},
        }
        row["methods"] = {e: run_joint(config, seed, *parse_entry(e)) for e in methods}
        per_seed.append(row)
        parts = ", ".join(f"{m} {joint[f'test_acc/{m}']:.3f} in joint / {uni[m]['test_acc_at_best_val']:.3f} alone"
                          for m in mods)
        print(f"  seed {seed}: joint test {joint['test_acc_at_best_val']:.3f} (epoch {joint['best_epoch']}); {parts} "
              f"[{time.perf_counter() - t0:.1f} s]", file=log, flush=True)
    wall = time.perf_counter() - start

    summary = summarise(per_seed, mods)
    header = (f"### Modality imbalance · synthetic (dominant: {dataset.get('dominant')}, dominance "
              f"{dataset.get('dominance')}) · {probe.model.backbone}/{probe.model.fusion} · {probe.train.epochs} "
              f"epochs · {args.seeds} seeds")
    table = markdown(summary, mods, header)
    if methods:
        table += "\n\n" + methods_markdown(per_seed, methods, mods)
    print(table, file=log if args.json else sys.stdout, flush=True)
    if device.type == "cpu":
        print(f"Ran on CPU (no CUDA device used); {wall:.1f} s.", file=log if args.json else sys.stdout, flush=True)
    if args.json:
        env = env_info(device)
        emit_json({
            "modalities": mods,
            "dataset": dataset,
            "model": {"backbone": probe.model.backbone, "fusion": probe.model.fusion},
            "epochs": probe.train.epochs,
            "seeds": args.seeds,
            "overrides": list(args.overrides),
            "per_seed": per_seed,
            "summary": summary,
            "wall_s": wall,
            **env,
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
