"""Training-step time of each balancing method relative to plain joint training.

Every method runs on the same model, data, batch size and seed as ``joint``, side by side in one
process, interleaved epoch by epoch (joint, m1, m2, joint, m1, m2, …) so drift hits all alike; the
first ``--warmup`` epochs are discarded. The time measured is the training part of an epoch (all its
steps plus the method's per-epoch hooks), as ``Trial.step`` reports it through ``samples_per_s``;
evaluation is identical for every method and left out.

The ratio reported is *paired*: each round's method epoch over the joint epoch of the same round,
then the median over rounds, with the rounds' interquartile range beside it. On a shared machine,
whose speed drifts by tens of percent over minutes, pairing cancels the drift that a ratio of
medians keeps; the ratio of medians is shown too.

Beside it, the *hook share*: the wall time spent inside the method's own hooks (``begin_epoch``,
``before_forward``, ``extra_loss``, ``modulate_gradients``, ``end_epoch``; the device drained before
and after each on CUDA) over the joint epoch of the same round, median over rounds. Where a
method's whole work is in its hooks (OGM, OPM, AMSS: scores, masks, gradient scaling), 1 + hook
share is its overhead measured without the noise of the shared forward/backward, which a 1–3%
effect drowns in on a busy machine. It misses work a hook sets up for the loop to do: the backward
of an ``extra_loss`` (AIM's auxiliary blocks) and OPM's feature masking inside the forward.

Method entries: a registered name or composition (``ogm``, ``opm+ogm``), optionally with
hyperparameters after colons (``ogm:ge=true:alpha=0.5``), or an alias: ``ogm-ge`` (ogm ge=true),
``amss+`` (amss plus=true).

    python bench/method_overhead.py --methods ogm,ogm-ge,opm
    python bench/method_overhead.py --methods ogm,opm --backbone resnet18 --json   # last line {method: ratio}
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import add_device_arg, console, device_label, emit_json, median, parse_entry, pick_device, quartiles, sync  # noqa: E402

HOOKS = ("begin_epoch", "before_forward", "extra_loss", "modulate_gradients", "end_epoch")


def time_hooks(method: Any, device: Any) -> list[float]:
    """Wrap the method's hooks (instance attributes shadow the class's) to add their wall time to the
    returned one-element accumulator; on CUDA the device is drained before and after each call."""
    total = [0.0]

    def wrap(fn):
        def timed_hook(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(device)
            total[0] += time.perf_counter() - start
            return out
        return timed_hook

    for name in HOOKS:
        setattr(method, name, wrap(getattr(method, name)))
    return total


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

    entries = ["joint", *(e.strip() for e in re.split(r",(?![^\[]*\])", args.methods) if e.strip())]  # umt:teacher_epochs=[1,1]
    trials = {}
    try:
        for entry in entries:
            name, params = parse_entry(entry)
            trials[entry] = Trial(parse_trial_config(trial_config(name, params, args, device.type)))
    except ConfigError as err:
        print(f"error: invalid method entry\n{err}", file=sys.stderr)
        return 2

    hook_s = {e: time_hooks(trial.method, device) for e, trial in trials.items() if e != "joint"}
    seconds: dict[str, list[float]] = {e: [] for e in entries}
    in_hooks: dict[str, list[float]] = {e: [] for e in hook_s}
    for epoch in range(args.warmup + args.epochs):
        for entry, trial in trials.items():
            if entry in hook_s:
                hook_s[entry][0] = 0.0
            metrics = trial.step()
            if epoch >= args.warmup:
                seconds[entry].append(args.n_train / metrics["samples_per_s"])
                if entry in hook_s:
                    in_hooks[entry].append(hook_s[entry][0])

    base = median(seconds["joint"])
    paired = {e: [t / j for t, j in zip(seconds[e], seconds["joint"], strict=True)] for e in entries if e != "joint"}
    ratios = {e: median(r) for e, r in paired.items()}
    out = console(args.json)
    size = f" · {args.image_size}×{args.image_size}" if args.backbone in ("cnn", "resnet18") else ""
    table = Table(title=f"training-epoch time vs joint · {args.backbone}{size} · batch {args.batch_size} · "
                        f"{device_label(device)}")
    shares = {e: median([h / j for h, j in zip(in_hooks[e], seconds["joint"], strict=True)]) for e in in_hooks}
    for col in ("method", "median epoch (s)", "min (s)", "ratio vs joint (paired)", "IQR over rounds", "ratio of medians",
                "hook share"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for entry in entries:
        if entry == "joint":
            table.add_row(entry, f"{base:.4f}", f"{min(seconds[entry]):.4f}", "1.000", "", "1.000", "")
            continue
        q1, _, q3 = quartiles(paired[entry])
        table.add_row(entry, f"{median(seconds[entry]):.4f}", f"{min(seconds[entry]):.4f}", f"{ratios[entry]:.3f}",
                      f"{q1:.3f}–{q3:.3f}", f"{median(seconds[entry]) / base:.3f}", f"{shares[entry]:.4f}")
    out.print(table)
    out.print(f"{args.epochs} measured rounds after {args.warmup} warm-up, interleaved; paired ratio = median over "
              "rounds of (method epoch / joint epoch of the same round); hook share = time inside the method's "
              "hooks / joint epoch of the same round (median).")
    if args.json:
        emit_json(ratios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
