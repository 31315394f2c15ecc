"""Report figures: curves over epochs (overall and per modality), method traces, sensitivity, Optuna
importances; PNG by default, and PDF/SVG (vector, for papers) on request.

Drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, no global
backend switch, no display needed. Lines are the mean over the seeds that finished (TERMINATED);
bands are ± one sample std where there are ≥ 2 of them. A plot never carries more than
:data:`MAX_LINES` variants: more are split into panels by one swept axis, or the baseline and the
best by validation are shown (the caption says which).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mmtune.report.data import Variant, axis_label, format_value, modalities
from mmtune.report.stats import summarize
from mmtune.report.tables import display_name, metric_name

__all__ = ["Plot", "FORMATS", "MAX_LINES", "curve_plot", "modality_curve_plot", "trace_plots", "trace_title",
           "sensitivity_plots", "importance_plot", "trace_quantities", "safe_name"]

_LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3)))
_DPI = 160  # PNG resolution (was 120); PDF and SVG are vector
FORMATS = ("png", "pdf", "svg")
MAX_LINES = 6  # variants per panel before a plot is faceted or a selection is shown


@dataclass(frozen=True)
class Plot:
    path: Path  # the file the markdown shows (PNG, else SVG, else PDF)
    title: str
    caption: str
    files: tuple[Path, ...] = field(default=())  # every format written


def _grid(n: int, *, width: float = 7.0, height: float = 4.2, sharey: bool = True) -> tuple[Figure, list[Any]]:
    """A figure with ``n`` panels (up to 3 a row); one panel keeps the single-plot size."""
    ncols = 1 if n == 1 else min(n, 3)
    nrows = math.ceil(n / ncols)
    size = (width, height) if n == 1 else (4.2 * ncols, 3.4 * nrows)
    fig = Figure(figsize=size, dpi=_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[:n]:
        ax.grid(True, alpha=0.3)
    return fig, axes[:n]


def _figure(width: float = 7.0, height: float = 4.2) -> tuple[Figure, Any]:
    fig, axes = _grid(1, width=width, height=height)
    return fig, axes[0]


def _epoch_axis(ax: Any) -> None:
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(ax: Any, *, small: bool = False) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if not handles:
        return
    if len(handles) > 8:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="x-small", frameon=False)
    else:
        ax.legend(fontsize="x-small" if small else "small")


def _write(fig: Figure, path: Path, formats: Sequence[str]) -> tuple[Path, tuple[Path, ...]]:
    """Save ``fig`` as ``path``'s stem in each format; return the file the markdown shows and all of them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt in formats:
        target = path.parent / f"{path.stem}.{fmt}"
        # no timestamps or versions in the files: a re-rendered report changes only where its figures do
        metadata = {"Software": None} if fmt == "png" else {"Creator": None, "CreationDate": None} if fmt == "pdf" \
            else {"Creator": None, "Date": None}
        fig.savefig(target, bbox_inches="tight", metadata=metadata)
        files.append(target)
    shown = next((f for fmt in ("png", "svg", "pdf") for f in files if f.suffix == f".{fmt}"), files[0])
    return shown, tuple(files)


def _save(fig: Figure, ax: Any, path: Path, formats: Sequence[str] = ("png",), *,
          legend: bool = True) -> tuple[Path, tuple[Path, ...]]:
    if legend:
        _legend(ax)
    return _write(fig, path, formats)


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


def _band(ax: Any, stats: pd.DataFrame, color: Any, label: str, linestyle: Any = "-", *, band: bool = True) -> None:
    x = stats.index.to_numpy(dtype=float)
    mean = stats["mean"].to_numpy(dtype=float)
    std = stats["std"].to_numpy(dtype=float)
    ax.plot(x, mean, color=color, linestyle=linestyle, marker="o" if len(x) <= 3 else None, markersize=3, label=label)
    ok = np.isfinite(std)
    if band and ok.any():
        ax.fill_between(x[ok], (mean - std)[ok], (mean + std)[ok], color=color, alpha=0.15, linewidth=0)


def _finished_ids(variant: Variant) -> list[str]:
    return variant.finished()["trial_id"].tolist()


# ------------------------------------------------------------------------------- too many variants
@dataclass
class _Panel:
    title: str
    variants: list[Variant]


def _panels(variants: Sequence[Variant], *, axes: Sequence[str], rank: str, baselines: Sequence[str],
            what: str = "variants") -> tuple[list[_Panel], str]:
    """At most :data:`MAX_LINES` variants per panel: all in one; else one panel per value of the swept
    axis that splits them into ≤ 4 panels of ≤ MAX_LINES; else the baseline(s) and the best by ``rank``
    (mean over finished seeds at the best epoch). Returns the panels and the caption's sentence."""
    variants = list(variants)
    if len(variants) <= MAX_LINES:
        return [_Panel("", variants)], ""
    best: tuple[int, str, dict[str, list[Variant]]] | None = None
    for axis in axes:
        groups: dict[str, list[Variant]] = {}
        for v in variants:
            groups.setdefault(format_value(v.values.get(axis)), []).append(v)
        if 2 <= len(groups) <= 4 and all(len(g) <= MAX_LINES for g in groups.values()) \
                and (best is None or len(groups) < best[0]):
            best = (len(groups), axis, groups)
    if best is not None:
        _, axis, groups = best
        name = axis_label(axis)
        return ([_Panel(f"{name} = {value}", members) for value, members in groups.items()],
                f"One panel per value of {name} ({len(variants)} {what}).")
    base = [v for v in variants if v.label in baselines][: MAX_LINES - 1]
    others = [v for v in variants if all(v is not b for b in base)]

    def score(v: Variant) -> float:
        s = summarize(v.finished()[rank].tolist()) if rank in v.trials.columns else None
        return s.mean if s is not None and s.n else -math.inf

    top = sorted(others, key=score, reverse=True)[: MAX_LINES - len(base)]
    shown = [v for v in variants if any(v is x for x in (*base, *top))]  # keep the table's order
    baseline = f"{', '.join(v.name for v in base)} (baseline) and " if base else ""
    return ([_Panel("", shown)],
            f"Showing {baseline}the {len(top)} of the other {len(others)} {what} with the highest mean "
            f"{metric_name(rank)} at the best epoch; every variant is in the tables.")


# ----------------------------------------------------------------------------------------- curves
def curve_plot(path: Path, variants: Sequence[Variant], epochs: pd.DataFrame, column: str, *,
               axes: Sequence[str] = (), rank: str = "val_acc", baselines: Sequence[str] = (),
               formats: Sequence[str] = ("png",)) -> Plot | None:
    """``column`` over epochs: one line per variant (mean over finished seeds, band ± std)."""
    if column not in epochs.columns:
        return None
    present = [v for v in variants if not _per_epoch(epochs, _finished_ids(v), column).empty]
    if not present:
        return None
    panels, note = _panels(present, axes=axes, rank=rank, baselines=baselines)
    fig, axs = _grid(len(panels))
    for panel, ax in zip(panels, axs, strict=True):
        for variant, color in zip(panel.variants, _colors(len(panel.variants)), strict=True):
            stats = _per_epoch(epochs, _finished_ids(variant), column)
            _band(ax, stats, color, f"{variant.name} (n={int(stats['n'].max())})")
        _epoch_axis(ax)
        ax.set_title(panel.title or f"{metric_name(column)} over epochs", fontsize="medium" if panel.title else None)
        _legend(ax, small=len(panels) > 1)
    axs[0].set_ylabel(metric_name(column))
    if len(panels) > 1:
        fig.suptitle(f"{metric_name(column)} over epochs")
    shown, files = _write(fig, path, formats)
    caption = (f"{metric_name(column)} per epoch: mean over the seeds that finished (n in the legend), band ± 1 "
               f"sample std. {note}").rstrip()
    return Plot(shown, f"{metric_name(column)} over epochs", caption, files)


def modality_curve_plot(path: Path, variants: Sequence[Variant], epochs: pd.DataFrame, mods: Sequence[str], *,
                        unimodal: Sequence[tuple[Variant, str]] = (), axes: Sequence[str] = (),
                        rank: str = "val_acc", baselines: Sequence[str] = (),
                        formats: Sequence[str] = ("png",)) -> Plot | None:
    """Each modality's own validation accuracy inside the joint model over epochs (``val_acc/<m>``), a
    panel per modality, a line per variant (OGM-GE Fig. 1); the uni-modal baselines (a variant trained on
    that modality alone) as black dashed reference curves in their modality's panel."""
    columns = [f"val_acc/{m}" for m in mods if f"val_acc/{m}" in epochs.columns]
    if not columns:
        return None
    alone = {id(v) for v, _ in unimodal}
    joint = [v for v in variants if id(v) not in alone
             and any(not _per_epoch(epochs, _finished_ids(v), c).empty for c in columns)]
    if not joint:
        return None
    groups, note = _panels(joint, axes=axes, rank=rank, baselines=baselines)
    ncols = len(columns)
    fig = Figure(figsize=(4.4 * ncols + (1.6 if len(joint) > 3 else 0), 3.6 * len(groups)), dpi=_DPI)
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(groups), ncols, squeeze=False, sharey=True)
    colors = {}
    for group in groups:  # the same colour for a variant in every panel of its row
        colors |= dict(zip(map(id, group.variants), _colors(len(group.variants)), strict=True))
    for r, group in enumerate(groups):
        for c, (m, column) in enumerate(zip(mods, columns, strict=False)):
            ax = grid[r][c]
            ax.grid(True, alpha=0.3)
            for variant in group.variants:
                stats = _per_epoch(epochs, _finished_ids(variant), column)
                if not stats.empty:
                    _band(ax, stats, colors[id(variant)], f"{variant.name} (n={int(stats['n'].max())})")
            for variant, modality in unimodal:
                stats = _per_epoch(epochs, _finished_ids(variant), "val_acc") if modality == m else pd.DataFrame()
                if not stats.empty:
                    _band(ax, stats, "black", f"{variant.name}: {m} alone (n={int(stats['n'].max())})", "--",
                          band=False)
            _epoch_axis(ax)
            ax.set_title(f"{m}" + (f" · {group.title}" if group.title else ""), fontsize="medium")
            if c == 0:
                ax.set_ylabel("val acc of the modality's own prediction")
        found: dict[str, Any] = {}
        for ax in grid[r]:  # one legend per row, with every panel's entries (the references are per modality)
            for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
                found.setdefault(label, handle)
        grid[r][-1].legend(list(found.values()), list(found), loc="upper left", bbox_to_anchor=(1.01, 1.0),
                           fontsize="x-small", frameon=False)
    fig.suptitle("Per-modality validation accuracy over epochs")
    shown, files = _write(fig, path, formats)
    refs = (" Black dashed: the uni-modal baselines (one modality trained alone), their val acc." if unimodal
            else "")
    caption = (f"`val_acc/<m>`: accuracy of each modality's own prediction inside the multimodal model, on "
               f"validation (test curves are left out: nothing is read off test per epoch), mean over finished "
               f"seeds, band ± 1 sample std.{refs} {note}").rstrip()
    return Plot(shown, "per-modality val accuracy over epochs", caption, files)


# ----------------------------------------------------------------------------------------- traces
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


_RHO = r"Discrepancy ratio $\rho^m$ (training batches)"
# (method, quantity) → title in the paper's words and symbols (from each trainables/*.py "Traces" section);
# method None: any method.
TRACE_TITLES: dict[tuple[str | None, str], str] = {
    (None, "imbalance"): r"Discrepancy ratio $\rho^m$ (validation)",
    ("ogm", "k"): r"OGM-GE coefficient $k^m$", ("ogm", "rho"): _RHO,
    ("opm", "q"): r"OPM drop probability $q^m$", ("opm", "rho"): _RHO,
    ("opm", "kept"): r"OPM realised keep rate",
    ("amss", "p"): r"AMSS update ratio $p^{(k)}$", ("amss", "xi"): r"AMSS modal significance $\xi^{(k)}$",
    ("amss", "u"): r"AMSS smoothed significance $u^{(k)}$",
    ("aim", "alpha"): r"AIM depth weight $\alpha_d$", ("aim", "s"): r"AIM depth score $s_d^m$",
    ("aim", "s_aux"): r"AIM depth score $\tilde{s}_d^m$ (auxiliary blocks)",
    ("aim", "dap"): r"AIM DAP losses ($L_{cls}$, Eq. 3; $L_r$, Eq. 4)",
    ("pmr", "beta"): r"PMR PCE coefficient $\beta^m$", ("pmr", "rho"): r"PMR prototype score ratio $\rho^m$",
    ("pmr", "pce"): r"PMR prototypical CE $L^m_{PCE}$", ("pmr", "entropy_weight"): r"PMR PER coefficient $\gamma^m$",
    ("agm", "kappa"): r"AGM modulation coefficient $\kappa_m$", ("agm", "ratio"): r"AGM response ratio $r_m$",
    ("agm", "score"): r"AGM Shapley response $s_m$",
    ("ume", "stage"): "UME stage (1: modality trained this epoch)",
    ("umt", "stage"): "UMT stage (1: teacher trained this epoch)", ("umt", "distill"): r"UMT distillation $d(\phi^m, \bar\phi^m)$",
    ("amco", "dependence"): r"AMCo modal dependence $d_m$", ("amco", "dependent"): "AMCo share of steps masked",
    ("amco", "mask_ratio"): "AMCo share of classes masked",
    ("cml", "violation"): "CML ranking violations (share)", ("cml", "increment"): "CML confidence increment",
    ("cml", "penalty"): r"CML ranking penalty $\sum L^{(T,S)}$", ("cml", "vrr"): "CML violation ratio (VRR)",
    ("gblending", "w"): r"G-Blending weights $w$", ("gblending", "ogr"): r"G-Blending OGR $|\Delta O / \Delta G|$",
    ("gblending", "delta_g"): r"G-Blending generalisation change $\Delta G$",
    ("gblending", "delta_o"): r"G-Blending overfitting change $\Delta O$",
    ("greedy", "learning_speed"): r"Greedy conditional learning speed $s_m$",
    ("greedy", "effective_lr"): r"Greedy effective learning rate $\mu(\theta_m; t)$",
    ("greedy", "rebalance"): "Greedy re-balancing steps (share)",
    ("greedy", "utilization"): r"Greedy conditional utilisation $u(m | \mathrm{rest})$",
    ("greedy", "d_util"): r"Greedy utilisation gap $d_{util}$",
    ("lfm", "align"): "LFM alignment divergence", ("lfm", "unimodal_ce"): "LFM uni-modal CE",
    ("lfm", "alpha"): r"LFM integration weight $\alpha_1$",
    ("mbsd", "confidence"): r"MBSD true-class confidence $p^m_y$", ("mbsd", "strong"): "MBSD strong-side share",
    ("mbsd", "unimodal_ce"): "MBSD uni-modal CE", ("mbsd", "weight"): r"MBSD distillation weight $w$",
    ("mbsd", "rs"): "MBSD RS term", ("mbsd", "kl"): "MBSD KL term", ("mbsd", "sd_loss"): r"MBSD $L_{SD}$",
    ("mla", "loss"): r"MLA uni-modal loss $L_m$", ("mla", "entropy"): "MLA prediction entropy",
    ("mla", "proj"): "MLA gradient norm removed (share)",
    ("mmcosine", "logit"): r"MMCosine true-class logit $s\cos\theta^m_y$",
    ("mmcosine", "angle"): r"MMCosine angle $\theta^m$ (degrees)", ("mmcosine", "weight_norm"): r"MMCosine row norm $\|W^m_k\|$",
    ("mmpareto", "cos"): r"MMPareto $\cos(g_{mm}, g_u)$", ("mmpareto", "conflict"): "MMPareto conflicting steps (share)",
    ("mmpareto", "pareto_weight"): r"MMPareto weight $\alpha_1$", ("mmpareto", "pareto_norm"): r"MMPareto $\|h\| / \|g_1 + g_2\|$",
    ("mmpareto", "magnitude_ratio"): "MMPareto magnitude ratio", ("mmpareto", "norm_mm"): r"MMPareto $\|g_{mm}\|$",
    ("mmpareto", "norm_uni"): r"MMPareto $\|g_u\|$", ("mmpareto", "uni_loss"): r"MMPareto $L_u^m$",
    ("reconboost", "round"): "ReconBoost modality boosted", ("reconboost", "rectify"): "ReconBoost rectification epoch",
    ("reconboost", "boost_loss"): r"ReconBoost boosting loss $\ell_{boost}$",
    ("reconboost", "recon"): "ReconBoost reconcilement term", ("reconboost", "ensemble_conf"): "ReconBoost ensemble confidence",
    ("reconboost", "consolidation"): "ReconBoost consolidation (MSE)", ("reconboost", "boost_rate"): r"ReconBoost rate $\beta$",
    ("relearn", "reinit"): r"Re-learning re-initialisation $\alpha^m$", ("relearn", "purity"): r"Re-learning purity $P_D$",
    ("relearn", "purity_holdout"): r"Re-learning purity $P_V$", ("relearn", "purity_gap"): r"Re-learning purity gap $g^m$",
    ("valuation", "contribution"): r"Valuation contribution $\phi_m$",
    ("valuation", "resampled"): "Valuation re-sampled share", ("valuation", "copies"): "Valuation copies per sample",
}


def trace_title(method: str | None, quantity: str) -> str:
    """The title of a trace quantity for a method (a composition ``opm+ogm`` asks each part); unknown:
    the method's display name and the quantity's words (``MBSD sd loss``)."""
    parts = [p for p in (method or "").split("+") if p]
    for part in parts:
        if (part, quantity) in TRACE_TITLES:
            return TRACE_TITLES[(part, quantity)]
    if (None, quantity) in TRACE_TITLES:
        return TRACE_TITLES[(None, quantity)]
    who = "+".join(display_name(p) for p in parts)
    return f"{who} {quantity.replace('_', ' ')}".strip()


def _plain(title: str) -> str:
    """Alt text without mathtext: ``$k^m$`` → ``k^m``."""
    return re.sub(r"\\(mathrm|tilde|bar)\b|[$\\{}]", "", title).replace("  ", " ")


def _series_label(column: str, quantity: str) -> str:
    """``trace/s/audio/d1`` → ``audio · d1``; ``imbalance/audio`` → ``audio``; ``trace/alpha`` → ``""``."""
    rest = column.removeprefix("trace/").removeprefix(quantity).removeprefix("/") if column.startswith("trace/") \
        else column.split("/", 1)[1]
    return " · ".join(p for p in rest.split("/") if p)


def _has_data(epochs: pd.DataFrame, variant: Variant, columns: Sequence[str]) -> bool:
    rows = epochs[epochs["trial_id"].isin(_finished_ids(variant))]
    return any(c in rows.columns and rows[c].notna().any() for c in columns)


def _scale_groups(epochs: pd.DataFrame, columns: Sequence[str], quantity: str,
                  mods: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """One panel for the quantity's series, or one per series (not per modality) when their typical
    magnitudes (median |value|) differ more than tenfold (AIM's DAP losses: L_cls ≈ 0.6, L_r ≈ 0.03)."""
    by_series: dict[str, list[str]] = {}
    for c in columns:
        label = _series_label(c, quantity)
        by_series.setdefault(label.split(" · ")[0] if label else "", []).append(c)
    peak = {k: float(np.nanmedian(np.abs(epochs[cs].to_numpy(dtype=float)))) for k, cs in by_series.items()
            if epochs[cs].notna().any().any()}
    positive = [v for v in peak.values() if v > 0]
    if any(k in mods for k in by_series):
        return [("", list(columns))]  # modalities share an axis: comparing them is the point
    if len(positive) >= 2 and max(positive) / min(positive) > 10.0 and len(by_series) <= 4:
        return list(by_series.items())
    return [("", list(columns))]


def trace_plots(directory: Path, variants: Sequence[Variant], epochs: pd.DataFrame, *,
                methods: Mapping[str, str] | None = None, axes: Sequence[str] = (), rank: str = "val_acc",
                baselines: Sequence[str] = (), formats: Sequence[str] = ("png",)) -> list[Plot]:
    """One figure per trace quantity and meaning (``trace/<q>/<modality>[/<depth>]``, ``imbalance/<m>``):
    variants whose methods mean different things by ``q`` (OGM's ρ^m vs PMR's score ratio) get one
    figure each. Colour = variant, line style = modality / depth (one variant: colour = modality,
    line style = depth). ``trace/kept`` (≈ 1 − q) is not drawn when ``trace/q`` is."""
    methods = methods or {}
    quantities = trace_quantities(epochs)
    kept_dropped = "q" in quantities and quantities.pop("kept", None) is not None
    plots = []
    for quantity, columns in quantities.items():
        by_title: dict[str, list[Variant]] = {}
        for v in variants:
            if _has_data(epochs, v, columns):
                by_title.setdefault(trace_title(methods.get(v.name, v.label), quantity), []).append(v)
        for n_title, (title, members) in enumerate(by_title.items()):
            cols = [c for c in columns if any(_has_data(epochs, v, [c]) for v in members)]
            owner = methods.get(members[0].name, members[0].label)
            stem = safe_name(quantity if n_title == 0 else f"{quantity}_{owner}")
            plot = _trace_figure(directory / f"trace_{stem}.png", members, epochs, quantity, cols, title,
                                 axes=axes, rank=rank, baselines=baselines, formats=formats,
                                 dropped=kept_dropped and quantity == "q")
            order = min(i for i, v in enumerate(variants) if any(v is m for m in members))
            plots.append(((quantity == "imbalance", order), plot))
    # the methods' traces in the table's order of their variants, the validation ρ^m of every variant last
    return [plot for _, plot in sorted(plots, key=lambda item: item[0])]


def _trace_figure(path: Path, variants: Sequence[Variant], epochs: pd.DataFrame, quantity: str, columns: list[str],
                  title: str, *, axes: Sequence[str], rank: str, baselines: Sequence[str], formats: Sequence[str],
                  dropped: bool) -> Plot:
    groups, note = _panels(variants, axes=axes, rank=rank, baselines=baselines)
    scales = _scale_groups(epochs, columns, quantity, modalities(epochs))
    panels = [(g, s) for g in groups for s in scales]
    fig, axs = _grid(len(panels), sharey=len(scales) == 1)
    variant_colors = {}
    for group in groups:
        variant_colors |= dict(zip(map(id, group.variants), _colors(len(group.variants)), strict=True))
    for (group, (series_name, cols)), ax in zip(panels, axs, strict=True):
        labels = [_series_label(c, quantity) for c in cols]
        firsts = list(dict.fromkeys(lab.split(" · ")[0] for lab in labels))
        rests = list(dict.fromkeys(" · ".join(lab.split(" · ")[1:]) for lab in labels))
        for variant in group.variants:
            ids = _finished_ids(variant)
            for i, (column, label) in enumerate(zip(cols, labels, strict=True)):
                stats = _per_epoch(epochs, ids, column)
                if stats.empty:
                    continue
                if len(group.variants) == 1:  # colour = modality, style = depth
                    head, rest = label.split(" · ")[0], " · ".join(label.split(" · ")[1:])
                    color = _colors(len(firsts))[firsts.index(head)]
                    style = _LINESTYLES[rests.index(rest) % len(_LINESTYLES)]
                else:
                    color, style = variant_colors[id(variant)], _LINESTYLES[i % len(_LINESTYLES)]
                _band(ax, stats, color, " · ".join(p for p in (variant.name, label) if p), style)
        _epoch_axis(ax)
        if quantity in ("imbalance", "rho"):
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        sub = " · ".join(p for p in (group.title, series_name) if p)
        ax.set_title(sub if len(panels) > 1 else title, fontsize="medium" if len(panels) > 1 else None)
        _legend(ax, small=len(panels) > 1)
    axs[0].set_ylabel(r"$\rho^m$" if quantity == "imbalance" else quantity.replace("_", " "))
    if len(panels) > 1:
        fig.suptitle(title)
    shown, files = _write(fig, path, formats)
    listed = ", ".join(f"`{c}`" for c in columns)
    caption = (f"{listed}: mean over finished seeds per epoch (band ± 1 std); legend: variant · modality · depth"
               + ("; one panel per series, their scales differ more than tenfold" if len(scales) > 1 else "")
               + "." + (" `trace/kept/<m>` (the realised keep rate, ≈ 1 − q) is not drawn." if dropped else "")
               + (f" {note}" if note else ""))
    return Plot(shown, _plain(title), caption, files)


def _numeric(values: Sequence[Any]) -> bool:
    present = [v for v in values if v is not None]
    return bool(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present)


def sensitivity_plots(directory: Path, variants: Sequence[Variant], axes: Sequence[str], *, column: str,
                      algorithm: str, domains: Mapping[str, tuple[str, list[Any]]],
                      baselines: Sequence[Variant] = (), formats: Sequence[str] = ("png",)) -> list[Plot]:
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
        shown, files = _save(fig, ax, path, formats)
        how = ("one point per sampled configuration" if algorithm == "optuna"
               else "one line per value of the other axes")
        caption = (f"{metric_name(column)} at the best-validation epoch against `{param}`: mean ± 1 sample std "
                   f"over the seeds that finished, {how}; dashed: the baseline.")
        plots.append(Plot(shown, f"sensitivity to {name}", caption, files))
    return plots


def importance_plot(path: Path, importances: Mapping[str, float], *, evaluator: str, n_configs: int,
                    formats: Sequence[str] = ("png",)) -> Plot:
    """Horizontal bars of Optuna parameter importances (most important on top)."""
    names = list(importances)[::-1]
    fig, ax = _figure(6.0, max(2.0, 0.5 * len(names) + 1.2))
    ax.barh([axis_label(n) for n in names], [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (normalised)")
    ax.set_title(f"parameter importances ({evaluator}, {n_configs} configurations)")
    ax.set_xlim(0, max(1.0, max(importances.values(), default=1.0) * 1.05) if importances else 1.0)
    shown, files = _save(fig, ax, path, formats, legend=False)
    caption = f"{evaluator} importances from a study rebuilt from the tables ({n_configs} configurations)."
    return Plot(shown, "Optuna parameter importances", caption, files)


def optuna_plots(directory: Path, study: Any, importances: Mapping[str, float], *,
                 formats: Sequence[str] = ("png",)) -> list[Plot]:
    """Optuna's own figures of a study rebuilt from the tables (:func:`mmtune.study`): the optimization
    history, a slice plot of every parameter, and the contour of the two most important parameters."""
    import warnings

    import optuna
    from optuna.visualization import matplotlib as ov

    names = list(importances) or sorted({k for t in study.trials for k in t.params})
    out: list[Plot] = []
    specs = [("optuna_history", "Optuna optimization history",
              "Each sampled configuration's objective (the seed mean), in the order the searcher sampled them.",
              lambda: ov.plot_optimization_history(study))]
    if names:
        specs.append(("optuna_slice", "Optuna slice plot",
                      "The objective against each sampled parameter, one point per configuration (colour: its order).",
                      lambda: ov.plot_slice(study, params=names)))
    if len(names) >= 2:
        pair = names[:2]
        specs.append(("optuna_contour", "Optuna contour plot",
                      f"The objective over the two most important parameters, {axis_label(pair[0])} and "
                      f"{axis_label(pair[1])}, interpolated between the sampled configurations.",
                      lambda: ov.plot_contour(study, params=pair)))
    for stem, title, caption, draw in specs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", UserWarning)
            axes = draw()
        first = np.ravel(np.asarray(axes, dtype=object))[0] if isinstance(axes, np.ndarray) else axes
        fig = first.figure
        shown, files = _write(fig, directory / f"{stem}.png", formats)
        plt_close(fig)
        out.append(Plot(shown, title, caption, files))
    return out


def plt_close(fig: Figure) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
