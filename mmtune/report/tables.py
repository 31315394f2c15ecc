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

__all__ = [
    "Cell", "Table", "DIGITS", "METRIC_NAMES", "metric_name", "ablation_table", "significance_table",
    "modality_table", "headroom_table", "format_summary", "find_baselines", "BaselineMatch", "DISPLAY_NAMES",
    "display_name", "variant_display", "tex_escape",
]

DIGITS = 3
METRIC_NAMES = {"acc": "acc", "macro_f1": "macro-F1", "map": "mAP"}

# How papers write each registered method (``mmtune methods``) and the labels the shipped specs use.
DISPLAY_NAMES = {
    "joint": "Joint", "unimodal": "Uni-modal", "ume": "UME", "umt": "UMT",
    "ogm": "OGM", "ogm-ge": "OGM-GE", "ogm_ge": "OGM-GE", "ogm*": "OGM*", "opm": "OPM",
    "opm+ogm": "OPM+OGM", "opm_ogm": "OPM+OGM", "opm+amss": "OPM+AMSS", "aim+ogm": "AIM+OGM",
    "amss": "AMSS", "amss+": "AMSS+", "aim": "AIM", "pmr": "PMR", "agm": "AGM", "mbsd": "MBSD", "lfm": "LFM",
    "reconboost": "ReconBoost", "valuation": "Valuation", "relearn": "Re-learning", "mla": "MLA", "amco": "AMCo",
    "greedy": "Greedy", "cml": "CML", "gblending": "G-Blending", "mmcosine": "MMCosine", "mmpareto": "MMPareto",
}


def display_name(label: str) -> str:
    """``amss+`` → ``AMSS+``, ``opm+ogm`` → ``OPM+OGM``, ``unimodal-audio`` → ``Uni-modal (audio)``; unknown
    identifiers upper-case, anything else (``all trials``) unchanged."""
    key = label.strip()
    if key.lower() in DISPLAY_NAMES:
        return DISPLAY_NAMES[key.lower()]
    if "+" in key.strip("+"):
        return "+".join(display_name(part) for part in key.split("+"))
    head, sep, tail = key.partition("-")
    if sep and head.lower() in DISPLAY_NAMES and tail:
        return f"{DISPLAY_NAMES[head.lower()]} ({tail})"
    return key.upper() if key and all(ch.isalnum() or ch in "-_+*" for ch in key) else key


def variant_display(variant: Variant) -> str:
    """A variant for a caption: ``OGM-GE, alpha=0.5`` (display name of its label, then the other axes)."""
    parts = []
    for axis, value in variant.values.items():
        if value is None:
            continue
        parts.append(display_name(format_value(value)) if axis in ("label", "method")
                     else f"{axis_label(axis)}={format_value(value)}")
    return ", ".join(parts) or display_name(variant.name)


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"$<$", ">": r"$>$"}
_TEX_UNICODE = {"—": "--", "−": "$-$", "±": r"$\pm$", "Δ": r"$\Delta$", "…": r"\dots{}", "≥": r"$\geq$",
                "≤": r"$\leq$", "·": r"$\cdot$", "→": r"$\to$", "×": r"$\times$", "α": r"$\alpha$",
                "β": r"$\beta$", "γ": r"$\gamma$", "κ": r"$\kappa$", "λ": r"$\lambda$", "μ": r"$\mu$",
                "ρ": r"$\rho$", "σ": r"$\sigma$", "τ": r"$\tau$", "ξ": r"$\xi$"}


def tex_escape(text: str) -> str:
    """Plain text → LaTeX text mode: ``_ % & # $ { } ~ ^ \\ < >`` escaped, the report's Unicode symbols as math."""
    out = "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)
    for k, v in _TEX_UNICODE.items():
        out = out.replace(k, v)
    return out


_GREEK = ("alpha", "beta", "gamma", "delta", "epsilon", "kappa", "lambda", "mu", "rho", "sigma", "tau", "xi", "eta")
_TEX_PARAM = {"lam": r"$\lambda$", **{g: f"${chr(92)}{g}$" for g in _GREEK}}


def _tex_axis_header(axes: Sequence[str]) -> list[str]:
    """``label`` → Method, ``params.tau`` → the Greek letter in math, ``params.q_base`` → escaped ``q_base``."""
    if not axes:
        return ["Method"]
    return ["Method" if a in ("label", "method") else _TEX_PARAM.get(axis_label(a), tex_escape(axis_label(a)))
            for a in axes]


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
    # The paper-style LaTeX rendering: which columns it keeps, with their short LaTeX headers (the axis
    # columns first), header groups spanning the kept value columns, and plain-text caption sentences.
    latex: list[tuple[int, str]] = field(default_factory=list)
    latex_groups: list[tuple[str, int]] = field(default_factory=list)
    latex_notes: list[str] = field(default_factory=list)
    axes: list[str] = field(default_factory=list)  # the variant-naming columns' keys (label/method get display names)


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
    unfinished = [f"{variant_display(v)}: {_not_in_mean(v)}" for v in variants if _not_in_mean(v) != "—"]
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
    latex = [*enumerate(_tex_axis_header(axes)),
             *((n_axes + i, _SHORT.get(key, tex_escape(metric_name(key)))) for i, (key, _, _) in enumerate(columns)
               if key != "protocol_gap")]
    latex_notes = []
    if paper_protocol:
        latex_notes.append("Test (max): the maximum over epochs of test accuracy, the official implementations' "
                           "protocol (selected on test, optimistic; never bold).")
    if unfinished:
        latex_notes.append("Not in the means (did not finish): " + "; ".join(unfinished) + ".")
    return Table(header=header, rows=rows, n_axes=n_axes, notes=notes, latex=latex, latex_notes=latex_notes,
                 axes=list(axes))


# Short LaTeX headers of the ablation table's columns.
_SHORT = {"val_acc": "Val", "val_macro_f1": "Val F1", "val_map": "Val mAP", "val_loss": "Val loss",
          "test_acc": "Test", "test_macro_f1": "F1", "test_map": "mAP", "max_test_acc": "Test (max)"}


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
    n_axes = len(_axis_header(axes))
    latex = list(enumerate(_tex_axis_header(axes)))
    if len({m.baseline.name for m in compared}) > 1 or len(compared) < len(matches):
        latex.append((n_axes, "Baseline"))
    latex += [(n_axes + 2, rf"$\Delta$ {_SHORT.get(column, tex_escape(metric_name(column)))}"),
              (n_axes + 3, f"{pct} CI".replace("%", r"\%")), (n_axes + 4, "$p_t$"),
              (n_axes + 5, r"$p_{\mathrm{Holm}}$"), (n_axes + 6, r"$p_{\mathrm{W}}$")]
    if paper_protocol:
        latex.append((n_axes + 7, r"$\Delta$ Test (max)"))
    pairs = sorted({d.n for d in diffs})
    bases = sorted({variant_display(m.baseline) for m in compared})
    notes = [f"Baseline: {', '.join(bases) or 'none'}; "
             + (f"n = {pairs[0]} seeds paired per row" if len(pairs) == 1 else
                f"{pairs[0]} to {pairs[-1]} seeds paired per row") + "."] if compared else []
    notes.append(f"Paired by seed: mean ± sd of the difference, its {pct} paired t interval; p: paired t test "
                 f"(p_t), Holm-adjusted across the {family} comparisons (bold below {alpha:.2f}), Wilcoxon "
                 "signed-rank (p_W).")
    if paper_protocol:
        notes.append("Test (max): the same difference of the maximum over epochs of test accuracy (optimistic).")
    return Table(header=header, rows=rows, n_axes=n_axes, latex=latex, latex_notes=notes, axes=list(axes)), diffs


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
    keys: list[tuple[str, str, str]] = []
    groups: list[tuple[str, int]] = []
    for m in mods:
        before = len(keys)
        for key, head, short in ((f"val_acc/{m}", f"val acc {m}", "Val"), (f"test_acc/{m}", f"test acc {m}", "Test"),
                                 (f"val_probe/{m}", f"val probe {m}", "Probe val"),
                                 (f"test_probe/{m}", f"test probe {m}", "Probe test"),
                                 (f"imbalance/{m}", f"ρ {m} (final)", r"$\rho^m$")):
            if key in available:
                keys.append((key, head, short))
        if len(keys) > before:
            groups.append((tex_escape(m.capitalize()), len(keys) - before))
    header = [*_axis_header(axes), *(h for _, h, _ in keys)]
    rows = []
    for v in variants:
        done = v.finished()
        rows.append(_axis_cells(v, axes) + [Cell(summary=summarize(done[k].tolist())) for k, _, _ in keys])
    n_axes = len(_axis_header(axes))
    latex = [*enumerate(_tex_axis_header(axes)), *((n_axes + i, short) for i, (_, _, short) in enumerate(keys))]
    notes = ["Accuracy of each modality's own prediction inside the joint model at the best-validation epoch"
             + ("; ρ: the discrepancy ratio on validation at the last epoch." if any(k.startswith("imbalance/")
                                                                                      for k, _, _ in keys) else ".")]
    return Table(header=header, rows=rows, n_axes=n_axes, latex=latex, latex_groups=groups, latex_notes=notes,
                 axes=list(axes))


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
    n_axes = len(_axis_header(axes))
    latex = [*enumerate(_tex_axis_header(axes)), (n_axes, "Test"), (n_axes + 1, rf"$\Delta$ vs {display_name(joint)}"),
             (n_axes + 2, "Gap recovered")]
    notes = [f"Test accuracy at the best-validation epoch (mean over finished seeds); gap recovered: "
             f"(acc − {display_name(joint)}) / ({display_name(ensemble)} − {display_name(joint)})."]
    return Table(header=header, rows=rows, n_axes=n_axes, notes=[], latex=latex, latex_notes=notes, axes=list(axes))
