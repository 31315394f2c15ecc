"""Report figures (PNG): curves over epochs, method traces, sensitivity, Optuna importances.

Drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, no global
backend switch, no display needed. Lines are the mean over the seeds that finished (TERMINATED);
bands are ± one sample std where there are ≥ 2 of them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmtune.report.data import Variant, axis_label, format_value
from mmtune.report.stats import summarize
from mmtune.report.tables import metric_name

__all__ = ["Plot", "curve_plot", "trace_plots", "sensitivity_plots", "importance_plot", "trace_quantities", "safe_name"]

_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
_DPI = 120


@dataclass(frozen=True)
class Plot:
    path: Path
    title: str
    caption: str


def _figure(width: float = 7.0, height: float = 4.2) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _epoch_axis(ax: Any) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig: Figure, ax: Any, path: Path, *, legend: bool = True) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if legend and handles:
        if len(handles) > 8:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", frameon=False)
        else:
            ax.legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata={"Software": None})


def _colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.95, n)]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _per_epoch(epochs: pd.DataFrame, trial_ids: Sequence[str], column: str) -> pd.DataFrame:
    """``epoch -> mean, std, n`` of ``column`` over the given trials (std NaN where n < 2)."""
    rows = epochs[epochs["trial_id"].isin(list(trial_ids))][["epoch", column]].dropna()
    if rows.empty:
        return pd.DataFrame(columns=["mean", "std", "n"])
    grouped = rows.groupby("epoch")[column]
    return pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=1), "n": grouped.count()})


def _band(ax: Any, stats: pd.DataFrame, color: Any, label: str, linestyle: Any = "-") -> None:
    x = stats.index.to_numpy(dtype=float)
    mean = stats["mean"].to_numpy(dtype=float)
    std = stats["std"].to_numpy(dtype=float)
    ax.plot(x, mean, color=color, linestyle=linestyle, marker="o" if len(x) <= 3 else None, markersize=3, label=label)
    ok = np.isfinite(std)
    if ok.any():
        ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=color, alpha=0.15, linewidth=0)


def _finished_ids(variant: Variant) -> list[str]:
    return variant.finished()["trial_id"].tolist()


def curve_plot(path: Path, variants: Sequence[Variant], epochs: pd.DataFrame, column: str) -> Plot | None:
    """``column`` over epochs: one line per variant (mean over finished seeds, band ± std)."""
    if column not in epochs.columns:
        return None
    fig, ax = _figure()
    drawn = 0
    for variant, color in zip(variants, _colors(len(variants)), strict=True):
        stats = _per_epoch(epochs, _finished_ids(variant), column)
        if stats.empty:
            continue
        n = int(stats["n"].max())
        _band(ax, stats, color, f"{variant.name} (n={n})")
        drawn += 1
    if not drawn:
        return None
    _epoch_axis(ax)
    ax.set_ylabel(metric_name(column))
    ax.set_title(f"{metric_name(column)} over epochs")
    _save(fig, ax, path)
    return Plot(path, f"{metric_name(column)} over epochs",
                f"{metric_name(column)} per epoch: mean over the seeds that finished (n in the legend), band ± 1 sample std.")


def trace_quantities(epochs: pd.DataFrame) -> dict[str, list[str]]:
    """``{"k": ["trace/k/audio", "trace/k/video"], ..., "imbalance": ["imbalance/audio", ...]}``."""
    found: dict[str, list[str]] = {}
    for c in epochs.columns:
        if c.startswith("trace/") and c.count("/") >= 2:
            found.setdefault(c.split("/")[1], []).append(c)
        elif c.startswith("trace/"):
            found.setdefault(c.split("/", 1)[1], []).append(c)
    imbalance = [c for c in epochs.columns if c.startswith("imbalance/")]
    if imbalance:
        found["imbalance"] = imbalance
    return found


_TRACE_TITLES = {
    "imbalance": r"discrepancy ratio $\rho^m$ (validation)",
    "k": r"OGM coefficient $k^m$", "q": r"OPM drop probability $q^m$", "p": r"AMSS update ratio $p^{(k)}$",
    "alpha": r"AIM depth weight $\alpha_d$", "rho": r"discrepancy ratio $\rho^m$ (training batches)",
}


def trace_plots(directory: Path, variants: Sequence[Variant], epochs: pd.DataFrame) -> list[Plot]:
    """One figure per trace quantity (``trace/<q>/*`` and ``imbalance/*``): a line per variant and modality/depth."""
    plots = []
    colors = _colors(len(variants))
    for quantity, columns in trace_quantities(epochs).items():
        fig, ax = _figure()
        drawn = 0
        for variant, color in zip(variants, colors, strict=True):
            ids = _finished_ids(variant)
            for column, style in zip(columns, _LINESTYLES * (len(columns) // len(_LINESTYLES) + 1), strict=False):
                stats = _per_epoch(epochs, ids, column)
                if stats.empty:
                    continue
                sub = column.rsplit("/", 1)[1] if column.count("/") >= 1 else column
                _band(ax, stats, color, f"{variant.name} · {sub}", style)
                drawn += 1
        if not drawn:
            continue
        title = _TRACE_TITLES.get(quantity, f"trace {quantity}")
        _epoch_axis(ax)
        ax.set_ylabel(quantity if quantity != "imbalance" else r"$\rho^m$")
        ax.set_title(title)
        if quantity in ("imbalance", "rho"):
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        path = directory / f"trace_{safe_name(quantity)}.png"
        _save(fig, ax, path)
        cols = ", ".join(f"`{c}`" for c in columns)
        plain = re.sub(r"[$\\{}]", "", title)  # alt text: no mathtext
        plots.append(Plot(path, plain, f"{cols}: mean over finished seeds per epoch (band ± 1 std); colour = variant, "
                                       "line style = modality / depth."))
    return plots


def _numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def sensitivity_plots(directory: Path, variants: Sequence[Variant], axes: Sequence[str], *, column: str,
                      algorithm: str, domains: Mapping[str, tuple[str, list[Any]]],
                      baselines: Sequence[Variant] = ()) -> list[Plot]:
    """For each swept numeric parameter: x = its value, y = ``column`` mean ± std over finished seeds.

    Grid sweeps: one line per group of the other axes' values (AMSS Table VIII / AIM Fig. 7 style).
    Optuna sweeps: one point per sampled configuration (grouped by the non-numeric axes only).
    Baseline variants without the parameter are drawn as horizontal reference lines.
    """
    plots = []
    for param in axes:
        values = [v.values.get(param) for v in variants]
        if not _numeric(values) or len({v for v in values if v is not None}) < 2:
            continue
        numeric_axes = {a for a in axes if _numeric([v.values.get(a) for v in variants])}
        others = [a for a in axes if a != param and (algorithm != "optuna" or a not in numeric_axes)]
        groups: dict[tuple, list[Variant]] = {}
        for v in variants:
            if v.values.get(param) is None:
                continue
            groups.setdefault(tuple(v.values.get(a) for a in others), []).append(v)
        fig, ax = _figure()
        colors = _colors(max(len(groups), 1))
        drawn = 0
        for (key, members), color in zip(groups.items(), colors, strict=False):
            pts = []
            for v in members:
                s = summarize(v.finished()[column].tolist())
                if s.n:
                    pts.append((float(v.values[param]), s.mean, s.std if s.n > 1 else 0.0, s.n))
            if not pts:
                continue
            pts.sort()
            x, y, e, n = (np.array(t, dtype=float) for t in zip(*pts, strict=True))
            label = ", ".join(f"{axis_label(a)}={format_value(k)}" if a not in ("label", "method") else format_value(k)
                              for a, k in zip(others, key, strict=True) if k is not None) \
                or ("sampled configurations" if algorithm == "optuna" else "all")
            label += f" (n={int(n.min())}…{int(n.max())})" if n.min() != n.max() else f" (n={int(n.min())})"
            ax.errorbar(x, y, yerr=e, color=color, marker="o", markersize=4, capsize=3,
                        linestyle="none" if algorithm == "optuna" else "-", label=label)
            drawn += 1
        if not drawn:
            continue
        for b in baselines:
            if b.values.get(param) is None:
                s = summarize(b.finished()[column].tolist())
                if s.n:
                    ax.axhline(s.mean, color="black", linestyle="--", linewidth=1,
                               label=f"{b.name} (baseline, n={s.n})")
        kind = domains.get(param, ("", []))[0]
        xs = [float(v) for v in values if v is not None]
        if kind == "loguniform" or (min(xs) > 0 and max(xs) / min(xs) >= 20):
            ax.set_xscale("log")
        name = axis_label(param)
        ax.set_xlabel(f"{name} ({param})")
        ax.set_ylabel(f"{metric_name(column)} @ best val")
        ax.set_title(f"sensitivity to {name}")
        path = directory / f"sensitivity_{safe_name(param)}.png"
        _save(fig, ax, path)
        how = ("one point per sampled configuration" if algorithm == "optuna"
               else "one line per value of the other axes")
        plots.append(Plot(path, f"sensitivity to {name}",
                          f"{metric_name(column)} at the best-validation epoch against `{param}`: mean ± 1 sample std "
                          f"over the seeds that finished, {how}; dashed: the baseline."))
    return plots


def importance_plot(path: Path, importances: Mapping[str, float], *, evaluator: str, n_configs: int) -> Plot:
    """Horizontal bars of Optuna parameter importances (most important on top)."""
    names = list(importances)[::-1]
    fig, ax = _figure(6.0, max(2.0, 0.5 * len(names) + 1.2))
    ax.barh([axis_label(n) for n in names], [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (normalised)")
    ax.set_title(f"parameter importances ({evaluator}, {n_configs} configurations)")
    ax.set_xlim(0, max(1.0, max(importances.values(), default=1.0) * 1.05) if importances else 1.0)
    _save(fig, ax, path, legend=False)
    return Plot(path, "Optuna parameter importances",
                f"{evaluator} importances from a study rebuilt from the tables ({n_configs} configurations).")
