"""Headroom of the synthetic presets: how much a balancing method could win over joint training.

For each preset (``dataset.preset``) and trial seed 0..S-1 this trains, in-process (the same
``Trial`` path as ``bench/imbalance.py``, whose helpers it reuses):

* ``joint`` — its test accuracy and each modality's accuracy inside it (its own logit component),
  all at the best-validation epoch;
* ``unimodal`` for every modality m — the same encoder trained on m alone for train.epochs;
* ``ume`` — the uni-modal ensemble at joint's compute: each member trained alone for
  train.epochs / M epochs, logits summed (**the headline**: the same epoch budget as joint);
* ``ume`` with train.epochs = M·E — every member trained the full E epochs (M× joint's compute).

and reports the ensemble − joint difference paired by seed with a 95% paired-t interval, next to the
Bayes-optimal accuracy of the preset's generative model (``bayes_accuracy``: per modality and joint).
A preset has headroom for balancing when the ensemble — which never trains the modalities together —
beats joint training: what joint training loses to the imbalance is at least that much.

Cost of the quickstart on the preset: ``joint s/epoch`` is the fastest epoch of short joint runs of
every preset (and v1), interleaved round by round so that a shared machine's load hits them alike
(``--threads``, 1 by default like a quickstart trial, which asks for one CPU). ``quickstart s`` scales
v1's quickstart sweep time (``--quickstart-ref``, README: 22 s on 2 cores) by the preset's joint epoch
time over v1's. ``--quickstart`` also runs the real sweep on every preset
(``search_spaces/quickstart.yaml`` with its dataset node replaced by ``{name: synthetic, preset: P}``,
storage in a temporary folder) and reports its wall time, Ray start included.

    python bench/headroom.py                                   # every preset, 5 seeds
    python bench/headroom.py --presets v1,antipodal --seeds 3  # a subset
    python bench/headroom.py --presets v1 dataset.n_train=500  # overrides apply on top of each preset
    python bench/headroom.py --json --quickstart               # last stdout line: one JSON object
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_device_arg, device_label, emit_json, env_info, mean_std, pick_device
from imbalance import build_config, run_joint, run_unimodal, spec_for

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def paired_interval(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided ``level`` Student-t interval (NaN below n = 2)."""
    from scipy import stats

    mean, std = mean_std(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * std / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def with_preset(base: dict[str, Any], preset: str) -> dict[str, Any]:
    config = copy.deepcopy(base)
    config.setdefault("dataset", {})["preset"] = preset
    return config


def time_presets(base: dict[str, Any], presets: list[str], rounds: int, epochs: int = 4) -> dict[str, float]:
    """Joint epoch time of each preset: the fastest epoch of ``rounds`` short runs (seed 0, the first epoch
    of each dropped as warm-up), presets interleaved round by round. On a shared machine other jobs only
    ever add time, so the minimum is the least load-dependent estimate of the epoch's own cost."""
    from mmtune.engine.trial import Trial

    times: dict[str, list[float]] = {p: [] for p in presets}
    for _ in range(rounds):
        for preset in presets:
            config = with_preset(base, preset)
            config["train"]["epochs"] = epochs
            trial = Trial(spec_for(config, "joint", 0))
            times[preset] += [trial.step()["epoch_s"] for _ in range(epochs)][1:]
    return {p: min(v) for p, v in times.items()}


def measure_preset(base: dict[str, Any], preset: str, seeds: int, log: Any) -> dict[str, Any]:
    from mmtune.data.synthetic import bayes_accuracy

    config = with_preset(base, preset)
    probe = spec_for(config, "joint", 0)  # validates the preset with the overrides, before training
    mods = list(probe.dataset.modalities)
    epochs = probe.train.epochs
    long = copy.deepcopy(config)
    long["train"]["epochs"] = len(mods) * epochs
    t0 = time.perf_counter()
    bayes = bayes_accuracy(probe.dataset)
    per_seed = []
    for seed in range(seeds):
        t1 = time.perf_counter()
        from mmtune.engine.trial import Trial

        trial = Trial(spec_for(config, "joint", seed))
        joint, best_val = {}, -1.0
        for _ in range(epochs):  # run_joint's selection, plus the epoch times
            metrics = trial.step()
            if metrics["val_acc"] > best_val:
                best_val = metrics["val_acc"]
                joint = {"test_acc": metrics["test_acc"], **{m: metrics[f"test_acc/{m}"] for m in mods}}
        assert joint["test_acc"] == metrics["test_acc_at_best_val"]  # the Trial's own selection agrees
        row = {
            "seed": seed,
            "joint": joint["test_acc"],
            "joint_final_train_loss": metrics["train_loss"],  # near 0: the training set is fitted
            "inside_joint": {m: joint[m] for m in mods},
            "alone": {m: run_unimodal(config, seed, m)["test_acc_at_best_val"] for m in mods},
            "ume": run_joint(config, seed, "ume")["test_acc_at_best_val"],
            "ume_full": run_joint(long, seed, "ume")["test_acc_at_best_val"],
        }
        per_seed.append(row)
        print(f"  {preset} seed {seed}: joint {row['joint']:.3f}, ume {row['ume']:.3f}, ume×{len(mods)} "
              f"{row['ume_full']:.3f}; alone " + ", ".join(f"{m} {row['alone'][m]:.3f}" for m in mods)
              + "; inside joint " + ", ".join(f"{m} {row['inside_joint'][m]:.3f}" for m in mods)
              + f"; joint train loss {row['joint_final_train_loss']:.3f} [{time.perf_counter() - t1:.1f} s]", file=log, flush=True)
    dataset = probe.to_config()["dataset"]
    return {"preset": preset, "modalities": mods, "dataset": dataset, "epochs": epochs, "bayes": bayes,
            "per_seed": per_seed,
            "wall_s": time.perf_counter() - t0}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    rows, mods = result["per_seed"], result["modalities"]

    def stat(values: list[float]) -> dict[str, float]:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "n": len(values)}

    out = {"joint": stat([r["joint"] for r in rows]), "ume": stat([r["ume"] for r in rows]),
           "ume_full": stat([r["ume_full"] for r in rows])}
    for m in mods:
        out[f"alone/{m}"] = stat([r["alone"][m] for r in rows])
        out[f"inside_joint/{m}"] = stat([r["inside_joint"][m] for r in rows])
    for key in ("ume", "ume_full"):
        mean, low, high = paired_interval([r[key] - r["joint"] for r in rows])
        out[f"{key}-joint"] = {"mean": mean, "ci95": [low, high], "n": len(rows)}
    return out


def run_quickstart(preset: str, overrides: list[str], log: Any) -> float:
    """Wall time of the real quickstart sweep on ``preset`` (Ray start and teardown included)."""
    import yaml

    spec = yaml.safe_load(QUICKSTART.read_text())
    spec["dataset"] = {"name": "synthetic", "preset": preset}
    with tempfile.TemporaryDirectory(prefix="headroom-") as tmp:
        path = Path(tmp) / "quickstart.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        dataset_overrides = [o for o in overrides if o.startswith("dataset.")]
        cmd = [sys.executable, "-m", "mmtune.cli", "sweep", str(path), *dataset_overrides,
               "--storage", str(Path(tmp) / "runs"), "--name", f"quickstart-{preset}"]
        start = time.perf_counter()
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], file=log)
        raise SystemExit(f"error: the quickstart sweep on {preset} failed (exit {done.returncode})")
    print(f"  {preset}: quickstart sweep {wall:.1f} s", file=log, flush=True)
    return wall


def markdown(results: list[dict[str, Any]], quickstart_ref: float, v1_epoch_s: float) -> str:
    def cell(s: dict[str, float]) -> str:
        return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] >= 2 else f"{s['mean']:.3f}"

    def diff(s: dict[str, Any]) -> str:
        low, high = s["ci95"]
        if not math.isfinite(low):
            return f"{s['mean']:+.3f}"
        mark = "**" if low > 0 else ""
        return f"{mark}{s['mean']:+.3f} [{low:+.3f}, {high:+.3f}]{mark}"

    head = ["preset", "Bayes joint · per modality", "joint", "alone (per modality)", "inside joint (per modality)",
            "ume (E/M each)", "ume (E each)", "**ume − joint** [95% CI]", "ume(E each) − joint [95% CI]",
            "joint s/epoch", "quickstart s", "n"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        s, mods = r["summary"], r["modalities"]
        bayes = f"{r['bayes']['joint']:.3f} · " + " / ".join(f"{r['bayes'][m]:.3f}" for m in mods)
        quick = f"≈ {quickstart_ref * r['joint_epoch_s'] / v1_epoch_s:.0f}"
        if "quickstart_s" in r:
            quick += f" · run {r['quickstart_s']:.0f}"
        lines.append("| " + " | ".join([
            f"`{r['preset']}`", bayes, cell(s["joint"]),
            " / ".join(cell(s[f"alone/{m}"]) for m in mods),
            " / ".join(cell(s[f"inside_joint/{m}"]) for m in mods),
            cell(s["ume"]), cell(s["ume_full"]), diff(s["ume-joint"]), diff(s["ume_full-joint"]),
            f"{r['joint_epoch_s'] * 1000:.0f} ms", quick, str(s["joint"]["n"]),
        ]) + " |")
    mods_note = "; ".join(f"`{r['preset']}`: {' / '.join(r['modalities'])}" for r in results
                          if r["modalities"] != results[0]["modalities"])
    lines += ["", (
        "Test accuracy at each run's best-validation epoch; mean ± sample std over trial seeds. Per-modality "
        f"columns in the order {' / '.join(results[0]['modalities'])} (dominant first)"
        + (f" ({mods_note})" if mods_note else "") + ". ume (E/M each): the uni-modal ensemble at joint's "
        "compute, the headline; ume (E each): every member trained the full E epochs. Differences paired by "
        "seed with a 95% Student-t interval (bold: excludes 0). Bayes: exact posterior of the generative model, "
        "Monte Carlo over 200 000 draws. joint s/epoch: fastest epoch of interleaved timing runs (seed 0). quickstart s: "
        f"≈ {quickstart_ref:.0f} s (v1's quickstart sweep, README) × the preset's joint s/epoch ÷ v1's; run: the "
        "real sweep's wall time here (--quickstart), Ray start included.")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mmtune.data.synthetic import PRESETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    p.add_argument("--presets", default=",".join(PRESETS), help=f"comma-separated presets (default: all: {','.join(PRESETS)})")
    p.add_argument("--seeds", type=int, default=5, help="trial seeds 0..S-1 (default 5)")
    p.add_argument("--epochs", type=int, default=20, help="epochs E of joint and unimodal runs (default 20)")
    p.add_argument("--backbone", default="mlp", help="encoder for every modality (default mlp)")
    p.add_argument("--fusion", default="concat", help="fusion (default concat)")
    p.add_argument("--quickstart", action="store_true", help="also run the real quickstart sweep on every preset")
    p.add_argument("--timing-rounds", type=int, default=5, help="interleaved timing rounds (default 5)")
    p.add_argument("--quickstart-ref", type=float, default=22.0,
                   help="v1's quickstart sweep time in seconds that the estimate scales (default 22, README)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: what a quickstart trial gets, resources cpu 1; more threads "
                        "on a shared 2-core machine oversubscribe it and slow every run many times over)")
    add_device_arg(p)
    p.add_argument("overrides", nargs="*", metavar="dataset.key=value",
                   help="overrides on top of every preset, e.g. dataset.n_train=500 (model./train. keys too)")
    args = p.parse_args(argv)
    presets = [name.strip() for name in args.presets.split(",") if name.strip()]
    unknown = [name for name in presets if name not in PRESETS]
    if unknown:
        p.error(f"unknown presets {unknown}; known: {', '.join(PRESETS)}")
    if args.seeds < 1 or args.epochs < 1:
        p.error("--seeds and --epochs must be >= 1")
    device = pick_device(args.device)
    import torch

    torch.set_num_threads(args.threads)
    base = build_config(args, device)
    log = sys.stderr
    print(f"headroom bench: {len(presets)} presets × {args.seeds} seeds × (joint + unimodal per modality + ume + "
          f"ume×M) · {args.epochs} epochs · {args.backbone}/{args.fusion} · {device_label(device)}", file=log, flush=True)
    for preset in presets:  # every preset valid with the overrides before anything trains
        spec_for(with_preset(base, preset), "joint", 0)

    start = time.perf_counter()
    results = [measure_preset(base, preset, args.seeds, log) for preset in presets]
    timed = time_presets(base, list(dict.fromkeys(["v1", *presets])), args.timing_rounds)
    v1_epoch_s = timed["v1"]
    for r in results:
        r["summary"] = summarise(r)
        r["joint_epoch_s"] = timed[r["preset"]]
        if args.quickstart:
            r["quickstart_s"] = run_quickstart(r["preset"], args.overrides, log)
    wall = time.perf_counter() - start

    out = log if args.json else sys.stdout
    header = (f"### Headroom · synthetic presets · {args.backbone}/{args.fusion} · {args.epochs} epochs · "
              f"{args.seeds} seeds" + (f" · overrides {' '.join(args.overrides)}" if args.overrides else ""))
    print(header + "\n\n" + markdown(results, args.quickstart_ref, v1_epoch_s), file=out, flush=True)
    print(f"\nRan on {device_label(device)}; {wall:.0f} s.", file=out, flush=True)
    if args.json:
        emit_json({"presets": results, "epochs": args.epochs, "seeds": args.seeds, "overrides": list(args.overrides),
                   "model": {"backbone": args.backbone, "fusion": args.fusion}, "v1_joint_epoch_s": v1_epoch_s,
                   "quickstart_ref_s": args.quickstart_ref, "wall_s": wall, **env_info(device)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
