"""The report's tables as data (cells of ``mean ± std (n)``), rendered to markdown or LaTeX by
:mod:`mmtune.report.render`.

* **Ablation table** (the papers' format): one row per variant; the validation metric at its best
  epoch and the test accuracy / macro-F1 / mAP *at that epoch*, over the seeds that finished
  (``TERMINATED``); the best cell of each column bold. Trials that did not finish are counted in
  their row and listed under the table, never averaged in and never dropped.
* **Significance**: each variant minus the baseline, paired by seed: 95% paired t interval, paired t
  p-value with Holm's adjustment across the table's comparisons, Wilcoxon signed-rank p-value.
* **Per-modality**: unimodal accuracy inside the joint model and the final discrepancy ratio ρ^m.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmtune.report.data import (
    NOT_IN_MEAN,
    Variant,
    axis_label,
    format_value,
    higher_is_better,
)
from mmtune.report.stats import PairedDifference, Summary, holm, paired_t_interval, summarize
from mmtune.store.schema import STOPPED_EARLY, TERMINATED

__all__ = ["headroom_table", 
    "Cell", "Table", "DIGITS", "METRIC_NAMES", "metric_name", "ablation_table", "significance_table",
    "modality_table", "format_summary", "find_baselines", "BaselineMatch",
]

DIGITS = 3
METRIC_NAMES = {"acc": "acc", "macro_f1": "macro-F1", "map": "mAP"}


def metric_name(column: str) -> str:
    """``val_acc`` → ``val acc``, ``test_macro_f1`` → ``test macro-F1``, ``val_acc/audio`` → ``val acc (audio)``."""
    base, _, modality = column.partition("/")
    split, _, what = base.partition("_")
    text = f"{split} {METRIC_NAMES.get(what, what.replace('_', ' '))}".strip()
    return f"{text} ({modality})" if modality else text


@dataclass
class Cell:
    """Text, or a summary printed as ``mean ± std (n)``; ``bold`` marks the best of its column."""

    text: str = ""
    summary: Summary | None = None
    bold: bool = False
    digits: int = DIGITS


@dataclass
class Table:
    header: list[str]
    rows: list[list[Cell]]
    n_axes: int  # the first columns name the variant (left-aligned)
    notes: list[str] = field(default_factory=list)  # footnotes, rendered under the table


def format_summary(s: Summary, *, digits: int = DIGITS) -> str:
    """``0.700 ± 0.100 (3)``; one seed: ``0.700 (n=1)``; none: ``—``."""
    if s.n == 0:
        return "—"
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return f"{s.mean:.{digits}f} ± {s.std:.{digits}f} ({s.n})"


def _axis_cells(variant: Variant, axes: Sequence[str]) -> list[Cell]:
    return [Cell(format_value(variant.values.get(a))) for a in axes] if axes else [Cell(variant.name)]


def _axis_header(axes: Sequence[str]) -> list[str]:
    return [axis_label(a) for a in axes] if axes else ["variant"]


def _bold_best(rows: list[list[Cell]], col: int, higher: bool) -> None:
    """Bold the best mean of column ``col`` (ties at the printed precision all bold); needs ≥ 2 rows with values."""
    filled = [r[col] for r in rows if r[col].summary is not None and r[col].summary.n > 0]
    if len(filled) < 2:
        return
    shown = [round(c.summary.mean, c.digits) for c in filled]
    best = max(shown) if higher else min(shown)
    for cell, value in zip(filled, shown, strict=True):
        cell.bold = value == best


def _not_in_mean(variant: Variant) -> str:
    counts = variant.counts()
    parts = [f"{n} {NOT_IN_MEAN.get(s, s.lower())}" for s, n in counts.items() if s != TERMINATED]
    return ", ".join(parts) or "—"


def ablation_table(variants: Sequence[Variant], axes: Sequence[str], *, selection: str,
                   test_columns: Sequence[str], paper_protocol: bool = False) -> Table:
    """Rows = variants; columns = the selection metric at its best epoch, then each test metric at that epoch."""
    columns: list[tuple[str, str, bool]] = [(selection, f"{metric_name(selection)} (best)", True)]
    columns += [(c, f"{metric_name(c)} @ best val", True) for c in test_columns]
    if paper_protocol:
        columns.append(("max_test_acc", "test acc, max over epochs (optimistic, test-selected)", False))
        columns.append(("protocol_gap", "optimism: test-selected − honest", False))
    header = [*_axis_header(axes), *(h for _, h, _ in columns), "seeds finished", "not in mean"]
    rows: list[list[Cell]] = []
    notes: list[str] = []
    for variant in variants:
        done = variant.finished()
        cells = _axis_cells(variant, axes)
        for key, _, _ in columns:
            if key == "protocol_gap":
                values = (done["max_test_acc"] - done["test_acc"]).tolist()
            else:
                values = done[key].tolist() if key in done.columns else []
            cells.append(Cell(summary=summarize(values)))
        cells.append(Cell(f"{len(done)} of {len(variant.trials)}"))
        cells.append(Cell(_not_in_mean(variant)))
        rows.append(cells)
        notes += _unfinished_notes(variant)
    n_axes = len(_axis_header(axes))
    for i, (key, _, bold) in enumerate(columns):
        if bold:
            _bold_best(rows, n_axes + i, higher_is_better(key))
    return Table(header=header, rows=rows, n_axes=n_axes, notes=notes)


def _unfinished_notes(variant: Variant) -> list[str]:
    """One line per trial left out of the means: which seed, what happened, how far it got."""
    lines = []
    rest = variant.trials[variant.trials["status"] != TERMINATED]
    for row in rest.itertuples(index=False):
        status = str(row.status)
        got = f"{_int(row.epochs_run)}/{_int(row.max_epochs)} epochs"
        what = {STOPPED_EARLY: f"stopped early by the scheduler (ASHA) after {got}"}.get(status, f"{status} after {got}")
        error = str(row.error).strip() if isinstance(row.error, str) and row.error.strip() else ""
        if error:
            first = error.splitlines()[-1] if len(error.splitlines()) > 1 else error
            what += f" — {first[:160]}{'…' if len(first) > 160 else ''}"
        lines.append(f"`{variant.name}` seed {_int(row.seed)} (trial {row.trial_id}): {what}")
    return lines


def _int(value) -> str:
    try:
        return str(int(value))
    except (TypeError, ValueError):
        return "?"


# ----------------------------------------------------------------------------------- significance
@dataclass
class BaselineMatch:
    variant: Variant
    baseline: Variant | None  # None: no baseline variant with matching other axes


def find_baselines(variants: Sequence[Variant], axes: Sequence[str], baseline: str) -> tuple[list[Variant], list[BaselineMatch]]:
    """The baseline variants (label == ``baseline``, or display name == ``baseline``) and, for every
    other variant, the baseline it is compared with: the one agreeing on every other axis it has."""
    base = [v for v in variants if v.label == baseline] or [v for v in variants if v.name == baseline]
    if not base:
        return [], []
    matches = []
    others = [a for a in axes if a not in ("label", "method")]
    for v in variants:
        if any(v is b for b in base):
            continue
        found = None
        for b in base:
            if all(b.values.get(a) is None or b.values.get(a) == v.values.get(a) for a in others):
                found = b
                break
        matches.append(BaselineMatch(v, found if len(base) > 1 else base[0]))
    return base, matches


def significance_table(matches: Sequence[BaselineMatch], axes: Sequence[str], *, column: str = "test_acc",
                       paper_protocol: bool = False, confidence: float = 0.95) -> tuple[Table, list[PairedDifference]]:
    """Variant − baseline of ``column`` per seed: the paired t interval, the paired t test's p with
    Holm's adjustment across the table's comparisons, and the Wilcoxon signed-rank p. Bold: the
    Holm-adjusted p below 1 − ``confidence``."""
    alpha = 1.0 - confidence
    pct = f"{confidence:.0%}"
    compared = [m for m in matches if m.baseline is not None]
    diffs = [paired_t_interval(m.variant.seed_values(column), m.baseline.seed_values(column), confidence=confidence)
             for m in compared]
    adjusted = dict(zip(map(id, compared), holm([d.p_t for d in diffs]), strict=True))
    family = sum(1 for d in diffs if _finite(d.p_t))
    header = [*_axis_header(axes), "baseline", "seeds paired", f"Δ {metric_name(column)} (mean ± sd)", f"{pct} CI",
              "p (paired t)", f"p, Holm ({family} comparison{'s' if family != 1 else ''})", "p (Wilcoxon)"]
    if paper_protocol:
        header += ["Δ test acc, test-selected (optimistic)", f"{pct} CI (optimistic)"]
    rows = []
    by_match = dict(zip(map(id, compared), diffs, strict=True))
    for m in matches:
        cells = _axis_cells(m.variant, axes)
        if m.baseline is None:
            cells += [Cell("no matching baseline"), Cell("0"), *(Cell("—") for _ in range(5))]
            if paper_protocol:
                cells += [Cell("—"), Cell("—")]
            rows.append(cells)
            continue
        d, p_holm = by_match[id(m)], adjusted[id(m)]
        cells += [Cell(m.baseline.name), Cell(str(d.n)), Cell(_diff_text(d)), Cell(_interval_text(d)),
                  Cell(_p_text(d.p_t)), Cell(_p_text(p_holm), bold=_finite(p_holm) and p_holm < alpha),
                  Cell(_p_text(d.p_wilcoxon))]
        if paper_protocol:
            o = paired_t_interval(m.variant.seed_values("max_test_acc"), m.baseline.seed_values("max_test_acc"),
                                  confidence=confidence)
            cells += [Cell(_diff_text(o)), Cell(_interval_text(o))]
        rows.append(cells)
    return Table(header=header, rows=rows, n_axes=len(_axis_header(axes))), diffs


def _p_text(p: float) -> str:
    if not _finite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _diff_text(d: PairedDifference) -> str:
    if d.n == 0:
        return "—"
    if d.n == 1:
        return f"{d.mean:+.{DIGITS}f} (n=1)"
    return f"{d.mean:+.{DIGITS}f} ± {d.std:.{DIGITS}f}"


def _interval_text(d: PairedDifference) -> str:
    if not d.has_interval:
        return "— (needs ≥ 2 paired seeds)" if d.n == 1 else "—"
    return f"[{d.low:+.{DIGITS}f}, {d.high:+.{DIGITS}f}]"


# -------------------------------------------------------------------------------------- modalities
def modality_table(variants: Sequence[Variant], axes: Sequence[str], mods: Sequence[str],
                   available: Sequence[str]) -> Table:
    """Per modality: val/test accuracy of its own prediction (and of its linear probe, with
    train.probe=true) at the best-validation epoch, and ρ^m at the last epoch."""
    keys: list[tuple[str, str]] = []
    for m in mods:
        for key, head in ((f"val_acc/{m}", f"val acc {m}"), (f"test_acc/{m}", f"test acc {m}"),
                          (f"val_probe/{m}", f"val probe {m}"), (f"test_probe/{m}", f"test probe {m}"),
                          (f"imbalance/{m}", f"ρ {m} (final)")):
            if key in available:
                keys.append((key, head))
    header = [*_axis_header(axes), *(h for _, h in keys)]
    rows = []
    for v in variants:
        done = v.finished()
        rows.append(_axis_cells(v, axes) + [Cell(summary=summarize(done[k].tolist())) for k, _ in keys])
    return Table(header=header, rows=rows, n_axes=len(_axis_header(axes)))


def headroom_table(variants: Sequence[Variant], axes: Sequence[str], limits: dict[str, float], *,
                   joint: str = "joint", ensemble: str = "ume") -> Table | None:
    """How much of the accuracy that balancing can plausibly win each variant wins (issue 20).

    The uni-modal ensemble (``ume``) is what independent training of each modality gets with no
    joint training at all; ``joint − ensemble`` is the gap a balancing method can plausibly recover,
    the generative model's Bayes limit the ceiling no method passes. Per variant: its test accuracy
    at the best-validation epoch (finished seeds), and the fraction of the joint → ensemble gap it
    recovers, (acc − joint) / (ensemble − joint) on the means. None without both a ``joint`` and a
    ``ume`` variant.
    """
    def mean(variant: Variant) -> float | None:
        values = variant.finished()["test_acc"].dropna().tolist() if "test_acc" in variant.trials.columns else []
        return sum(values) / len(values) if values else None

    by_label = {v.label: v for v in variants}
    if joint not in by_label or ensemble not in by_label:
        return None
    base, top = mean(by_label[joint]), mean(by_label[ensemble])
    if base is None or top is None:
        return None
    gap = top - base
    header = [*_axis_header(axes), "test acc @ best val", "Δ vs joint", "fraction of the joint → ensemble gap recovered"]
    rows = []
    if "bayes_acc" in limits:
        rows.append([*(Cell("Bayes limit" if i == 0 else "") for i in range(len(_axis_header(axes)))),
                     Cell(f"{limits['bayes_acc']:.3f}"), Cell(f"{limits['bayes_acc'] - base:+.3f}"), Cell("(the ceiling)")])
    for variant in variants:
        acc = mean(variant)
        if acc is None:
            continue
        recovered = "—" if variant.label == joint else ("gap ≤ 0" if gap <= 0 else f"{(acc - base) / gap:.2f}")
        rows.append([*_axis_cells(variant, axes), Cell(f"{acc:.3f}"), Cell(f"{acc - base:+.3f}"), Cell(recovered)])
    return Table(header=header, rows=rows, n_axes=len(_axis_header(axes)), notes=[])
