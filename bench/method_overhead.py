"""Training-step time of each balancing method relative to plain joint training.

Every method runs on the same model, data, batch size and seed as ``joint``, side by side in one
process, interleaved epoch by epoch (joint, m1, m2, joint, m1, m2, …) so drift hits all alike; the
first ``--warmup`` epochs are discarded. The time measured is the training part of an epoch (all its
steps plus the method's per-epoch hooks), as ``Trial.step`` reports it through ``samples_per_s``;
evaluation is identical for every method and left out.

Method entries: a registered name or composition (``ogm``, ``opm+ogm``), optionally with
hyperparameters after colons (``ogm:ge=true:alpha=0.5``), or an alias: ``ogm-ge`` (ogm ge=true),
``amss+`` (amss plus=true).

    python bench/method_overhead.py --methods ogm,ogm-ge,opm
    python bench/method_overhead.py --methods ogm,opm --backbone resnet18 --json   # last line {method: ratio}
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_device_arg, console, device_label, emit_json, median, parse_entry, pick_device  # noqa: E402

def trial_config(name: str, params: dict[str, Any], args: argparse.Namespace, device: str) -> dict[str, Any]:
    # Evaluation is not timed; a small validation/test split keeps big-input runs short.
    dataset: dict[str, Any] = {"n_train": args.n_train, "n_val": args.n_eval, "n_test": args.n_eval}
    if args.backbone in ("cnn", "resnet18"):
        dataset.update(shape="shaped", image_size=args.image_size)
    return {
        "method": name,
        "seed": 0,
        "params": params,
        "dataset": dataset,
        "model": {"backbone": args.backbone},
        "train": {"batch_size": args.batch_size, "epochs": args.warmup + args.epochs, "device": device},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="ogm,ogm-ge,opm", help="comma-separated method entries")
    parser.add_argument("--backbone", default="mlp", choices=("mlp", "cnn", "resnet18", "transformer"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=32, help="F = T = H = W of shaped inputs (cnn, resnet18)")
    parser.add_argument("--n-eval", type=int, default=500, help="validation and test samples (evaluation is not timed)")
    parser.add_argument("--epochs", type=int, default=8, help="measured epochs per method")
    parser.add_argument("--warmup", type=int, default=2, help="discarded epochs per method")
    parser.add_argument("--json", action="store_true", help="last stdout line: {method: ratio}")
    add_device_arg(parser)
    args = parser.parse_args(argv)
    device = pick_device(args.device)

    from rich.table import Table

    from mmtune.engine.trial import Trial, parse_trial_config
    from mmtune.errors import ConfigError

    entries = ["joint", *(e.strip() for e in args.methods.split(",") if e.strip())]
    trials = {}
    try:
        for entry in entries:
            name, params = parse_entry(entry)
            trials[entry] = Trial(parse_trial_config(trial_config(name, params, args, device.type)))
    except ConfigError as err:
        print(f"error: invalid method entry\n{err}", file=sys.stderr)
        return 2

    seconds: dict[str, list[float]] = {e: [] for e in entries}
    for epoch in range(args.warmup + args.epochs):
        for entry, trial in trials.items():
            metrics = trial.step()
            if epoch >= args.warmup:
                seconds[entry].append(args.n_train / metrics["samples_per_s"])

    base = median(seconds["joint"])
    ratios = {e: median(seconds[e]) / base for e in entries if e != "joint"}
    out = console(args.json)
    table = Table(title=f"training-epoch time vs joint · {args.backbone} · batch {args.batch_size} · {device_label(device)}")
    for col in ("method", "median epoch (s)", "min (s)", "ratio vs joint"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for entry in entries:
        ratio = "1.000" if entry == "joint" else f"{ratios[entry]:.3f}"
        table.add_row(entry, f"{median(seconds[entry]):.4f}", f"{min(seconds[entry]):.4f}", ratio)
    out.print(table)
    out.print(f"{args.epochs} measured epochs per method after {args.warmup} warm-up, interleaved; median ratio.")
    if args.json:
        emit_json(ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
