"""Shared helpers of the bench scripts: device choice, timing, statistics and output.

Every script follows the CLI's convention: a human-readable ``rich`` report by default; with
``--json`` that report goes to stderr and the LAST stdout line is one JSON object.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = [
    "add_device_arg",
    "console",
    "device_label",
    "emit_json",
    "env_info",
    "mean_std",
    "median",
    "parse_entry",
    "pick_device",
    "quartiles",
    "sync",
    "timed",
]


def add_device_arg(parser: Any) -> None:
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="auto = cuda when available, else cpu (default: auto)",
    )


def pick_device(name: str) -> torch.device:
    """``auto`` → cuda when visible, else cpu; ``cuda`` without a GPU exits 2 with a message."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible; use --device auto or cpu.", file=sys.stderr)
        raise SystemExit(2)
    return torch.device(name)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads; no GPU used)"


def env_info(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of ``fn()`` with the device drained before and after (CUDA is asynchronous)."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median and third quartile (inclusive method; a single value is all three)."""
    values = sorted(float(v) for v in values)
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for fewer than two values)."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values) if values else math.nan
    std = statistics.stdev(values) if len(values) >= 2 else math.nan
    return mean, std


def console(json_mode: bool):
    """The report console: stdout normally, stderr under ``--json`` (stdout then ends with the JSON).

    Piped or redirected (how benchmark output reaches a log or BENCHMARKS.md) rich would assume 80
    columns and squeeze wide tables into "…"; there the console is 200 columns wide instead.
    """
    from rich.console import Console

    out = Console(stderr=json_mode, highlight=False)
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = 200
    return out


def _clean(value: Any) -> Any:
    """NaN/inf → None so the line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(_clean(obj), allow_nan=False), flush=True)


ALIASES = {"ogm-ge": "ogm:ge=true", "amss+": "amss:plus=true"}


def parse_entry(entry: str) -> tuple[str, dict[str, Any]]:
    """``ogm:ge=true:alpha=0.5`` → ("ogm", {"ge": True, "alpha": 0.5}); aliases ogm-ge, amss+."""
    from mmtune.cli import parse_value

    name, *pairs = ALIASES.get(entry, entry).split(":")
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: method entry '{entry}': parameters are key=value after ':'")
        params[key] = parse_value(value)
    return name, params
