"""``write_report``: a sweep's stored tables → ``reports/<name>.md`` (+ figures in PNG and, on request,
PDF/SVG; + optional LaTeX).

Layout of the markdown, top to bottom: header (sweep, description, dates, command, search, trials by
status, compute time, versions, hardware, the spec in a collapsed block), ablation table, paired
significance against the baseline, headroom, per-modality table, curves (overall and per modality),
method traces, sensitivity plots, Optuna importances (Optuna sweeps), and every table again as
paper-style LaTeX (``latex=True``: booktabs, short headers, display names, n in the caption, bold only
for a unique best). Each table is followed by the line that says where its numbers come from.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import yaml

from mmtune import __version__
from mmtune.errors import ConfigError, Problem, did_you_mean
from mmtune.report import plots
from mmtune.report.data import (
    SweepData,
    Variant,
    check_metric,
    group_variants,
    load_sweep,
    modalities,
    spec_domains,
    status_counts,
    trial_outcomes,
)
from mmtune.report.importance import optuna_importances
from mmtune.report.tables import (
    Cell,
    Table,
    ablation_table,
    display_name,
    headroom_table,
    find_baselines,
    format_summary,
    metric_name,
    modality_table,
    significance_table,
    tex_escape,
)

__all__ = ["write_report", "render_markdown_table", "render_latex_table", "check_figures", "DEFAULT_BASELINE"]

DEFAULT_BASELINE = "joint"
TEST_COLUMNS = ("test_acc", "test_macro_f1", "test_map")
_VERSIONED = ("mmtune", "torch", "ray", "optuna", "pyarrow", "pandas", "matplotlib")


# ----------------------------------------------------------------------------------------- render
def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _md_cell(cell: Cell) -> str:
    text = format_summary(cell.summary, digits=cell.digits) if cell.summary is not None else cell.text
    text = _md_escape(text)
    if cell.bold and text not in ("", "—"):
        # bold the numbers, keep "(n)" plain: **0.700 ± 0.100** (3)
        head, sep, tail = text.rpartition(" (")
        return f"**{head}**{sep}{tail}" if sep and cell.summary is not None else f"**{text}**"
    return text


def render_markdown_table(table: Table) -> str:
    """Pipe table; number columns right-aligned, the variant's columns and text left."""
    align = ["---:" if i >= table.n_axes and any(r[i].summary is not None for r in table.rows) else "---"
             for i in range(len(table.header))]
    lines = ["| " + " | ".join(_md_escape(h) for h in table.header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines)


_NUMERIC_TEXT = re.compile(r"^[\s0-9.,+\-−±\[\]<]+$")


def _tex_text(text: str, *, bold: bool = False) -> str:
    """A text cell: numbers (``+0.050 ± 0.020``, ``[-0.01, +0.09]``, ``< 0.001``) as math, the rest escaped."""
    if text in ("", "—"):
        return "--" if text else ""
    if _NUMERIC_TEXT.match(text) and any(ch.isdigit() for ch in text):
        body = text.replace("−", "-").replace("±", r"\pm").strip()
        return rf"$\mathbf{{{body}}}$" if bold else f"${body}$"
    return rf"\textbf{{{tex_escape(text)}}}" if bold else tex_escape(text)


def _tex_summary(cell: Cell, *, bold: bool, n_common: int | None) -> str:
    r"""``$0.700 \pm 0.100$``: n goes to the caption; a cell whose n differs from it says so in a superscript."""
    s, d = cell.summary, cell.digits
    if s is None or s.n == 0:
        return "--"
    body = f"{s.mean:.{d}f}" if s.n == 1 else rf"{s.mean:.{d}f} \pm {s.std:.{d}f}"
    body = rf"\mathbf{{{body}}}" if bold else body
    return f"${body}$" + ("" if s.n == n_common else rf"\textsuperscript{{$n={s.n}$}}")


def _common_n(table: Table, columns: Sequence[int]) -> int | None:
    ns = [r[i].summary.n for r in table.rows for i in columns if r[i].summary is not None and r[i].summary.n > 0]
    return max(set(ns), key=lambda n: (ns.count(n), n)) if ns else None


def render_latex_table(table: Table, *, caption: str, label: str, provenance: str | None = None) -> str:
    r"""The table in paper style: booktabs rules (``\usepackage{booktabs}``), short headers, display names,
    ``mean $\pm$ std`` cells with n in the caption, bold only for a unique best, and footnote-like caption
    sentences (unfinished trials, protocol). ``caption`` is plain text (escaped here)."""
    columns = table.latex or [(i, tex_escape(h)) for i, h in enumerate(table.header)]
    n_axes = sum(1 for i, _ in columns if i < table.n_axes)
    indices = [i for i, _ in columns]
    n_common = _common_n(table, indices)
    unique_best = {i for i in indices
                   if sum(1 for r in table.rows if r[i].bold and r[i].summary is not None) == 1}

    def cell(row: list[Cell], i: int) -> str:
        c = row[i]
        if c.summary is not None:
            return _tex_summary(c, bold=c.bold and i in unique_best, n_common=n_common)
        if i < table.n_axes and (not table.axes or table.axes[i] in ("label", "method")):
            return tex_escape(display_name(c.text))
        return _tex_text(c.text, bold=c.bold)

    sentences = [caption.rstrip()]
    if n_common is not None:
        varies = any(r[i].summary is not None and 0 < r[i].summary.n != n_common for r in table.rows for i in indices)
        sentences.append(f"Mean ± sample std over n = {n_common} seeds"
                         + (" (superscript: n where it differs)." if varies else "."))
    sentences += table.latex_notes
    lines = [f"% {provenance}"] if provenance else []
    lines += [r"\begin{table}[t]", r"\centering", r"\small",
              rf"\caption{{{tex_escape(' '.join(sentences))}}}", rf"\label{{{label}}}",
              rf"\begin{{tabular}}{{{'l' * n_axes + 'c' * (len(columns) - n_axes)}}}", r"\toprule"]
    if table.latex_groups:
        spans, rules, at = ["" for _ in range(n_axes)], [], n_axes + 1
        for name, width in table.latex_groups:
            spans.append(rf"\multicolumn{{{width}}}{{c}}{{{name}}}")
            rules.append(rf"\cmidrule(lr){{{at}-{at + width - 1}}}")
            at += width
        lines += [" & ".join(spans) + r" \\", "".join(rules)]
    lines += [" & ".join(h for _, h in columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(row, i) for i in indices) + r" \\" for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- header
def _version(package: str) -> str:
    if package == "mmtune":
        return __version__
    try:
        return metadata.version(package)  # never imported: reports do not load torch or Ray
    except metadata.PackageNotFoundError:
        return "not installed"


def _duration(seconds: float) -> str:
    if not seconds == seconds:  # NaN
        return "unknown"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.2f} h"


def _code(text: str) -> str:
    text = str(text)
    return f"``{text}``" if "`" in text else f"`{text}`"


def _header(data: SweepData, *, column: str, now: dt.datetime) -> list[str]:
    meta, spec, trials, epochs = data.meta, data.spec, data.trials, data.epochs
    lines = [f"# Ablation report: {data.name}", ""]
    if spec.get("description"):
        lines += [f"> {spec['description']}", ""]
    if meta.get("smoke_test"):
        lines += ["> **Smoke test** (`--smoke-test`: ≤ 2 epochs, a small synthetic set, one seed): the numbers below "
                  "check the pipeline, not the methods.", ""]
    counts = status_counts(trials)
    seeds = sorted({int(s) for s in trials["seed"].dropna()})
    algorithm = data.algorithm
    search = algorithm if meta else "unknown (no spec.json)"
    if algorithm == "optuna":
        search += f" ({spec.get('search', {}).get('num_samples', '?')} configurations sampled)"
    scheduler = spec.get("scheduler") if isinstance(spec.get("scheduler"), dict) else {}
    if "asha" in scheduler:  # `asha:` with no value is ASHA with its defaults
        asha = scheduler["asha"] if isinstance(scheduler["asha"], dict) else {}
        search += f", ASHA ({', '.join(f'{k} {v}' for k, v in asha.items()) or 'defaults'})"
    search += f"; search metric {_code(meta.get('metric', '?'))} ({meta.get('mode', '?')})" if meta else ""
    epoch_s = float(epochs["epoch_s"].sum()) if "epoch_s" in epochs.columns else float("nan")
    wall_s = float(trials["wall_s"].sum()) if "wall_s" in trials.columns else float("nan")
    devices = sorted({str(d) for d in trials["train.device"].dropna()}) if "train.device" in trials.columns else []
    resources = spec.get("resources") if isinstance(spec.get("resources"), dict) else {}
    recorded = meta.get("hardware")  # recorded by the tuner (absent in hand-made or older stores)
    hardware = f"sweep: {json.dumps(recorded) if isinstance(recorded, (dict, list)) else recorded}; " if recorded else ""
    hardware += f"report machine: {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    if not recorded:
        hardware += ". The sweep's own hardware is not recorded in the store (GPU: unknown)"
    if devices:
        hardware += f"; trials asked for device {', '.join(devices)}"
    if resources:
        hardware += f"; resources per trial: {', '.join(f'{k} {v}' for k, v in resources.items())}"
    rows = [
        ("sweep", f"{_code(data.name)} at {_code(data.path)}"),
        ("created", str(meta.get("created", "unknown (no spec.json)"))),
        ("report generated", now.strftime("%Y-%m-%dT%H:%M:%S%z")),
        ("command", _code(meta["command"]) if meta.get("command") else "unknown (no spec.json)"),
        ("search", search),
        ("varies", ", ".join(_code(a) for a in data.axes) or "nothing (one configuration)"),
        ("seeds", ", ".join(map(str, seeds)) or "none recorded"),
        ("selection", f"best epoch per trial = first epoch with the highest {_code(column)} (validation); "
                      "test metrics are read at that epoch, never used to select"),
        ("trials by status", " · ".join(f"{s} {n}" for s, n in counts.items()) + f" (total {len(trials)})"),
        ("compute", f"Σ epoch time {_duration(epoch_s)} over {len(epochs)} epochs; Σ trial wall time {_duration(wall_s)}"),
        ("versions", f"sweep ran with mmtune {meta.get('mmtune_version', 'unknown')}; report built with "
                     + ", ".join(f"{p} {_version(p)}" for p in _VERSIONED)),
        ("hardware", hardware),
    ]
    lines += ["| | |", "|---|---|", *(f"| {k} | {_md_escape(v)} |" for k, v in rows), ""]
    for note in data.notes:
        lines += [f"> Note: {note}", ""]
    if spec:
        text = yaml.safe_dump(spec, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100)
        lines += ["<details><summary>sweep spec (as read, from spec.json)</summary>", "", "```yaml", text.rstrip(), "```",
                  "", "</details>", ""]
    return lines


def _provenance(data: SweepData, column: str) -> str:
    meta = data.meta
    parts = [f"sweep {_code(data.name)}"]
    if meta.get("created"):
        parts.append(f"created {meta['created']}")
    parts.append(f"mmtune {meta.get('mmtune_version', __version__)}")
    if meta.get("command"):
        parts.append(f"command {_code(meta['command'])}")
    return ("*Source: " + ", ".join(parts) + f". Cells: mean ± sample std (ddof = 1) over seeds, (n) = seeds that "
            f"finished all epochs (TERMINATED); best epoch selected on {_code(column)} (validation).*")


# ----------------------------------------------------------------------------------------- report
def _default_out(name: str) -> Path:
    # The name comes from the sweep's spec.json, which may come from anyone: it names a file in
    # reports/, never a path (no separators, no "..", not absolute).
    if not name or name in (".", "..") or Path(name).name != name or "/" in name or "\\" in name or "\0" in name:
        raise ConfigError(Problem("name", (
            f"the sweep's name {name[:80]!r} (from its spec.json) is not a plain file name, so the report will not "
            "derive a path from it. Pass --out FILE.md.")))
    return Path("reports") / f"{name}.md"


MARKER = "<!-- mmtune report of sweep {name!r} created {created!s} -->"


def _marker(data: SweepData) -> str:
    return MARKER.format(name=data.name, created=data.meta.get("created", "unknown"))


def _check_overwrite(out_path: Path, data: SweepData, force: bool) -> None:
    """Refuse to replace a file that is not this sweep's own report (it may be committed, or another's)."""
    if force or not out_path.exists():
        return
    first = out_path.read_text(errors="replace").split("\n", 1)[0]
    if first == _marker(data):
        return
    whose = (f"the report of another sweep ({first.removeprefix('<!-- mmtune report of ').removesuffix(' -->')})"
             if first.startswith("<!-- mmtune report of ") else "not a report mmtune wrote for this sweep")
    raise ConfigError(Problem("--out", (
        f"{out_path} exists and is {whose}; replacing it would also delete the plots in "
        f"{out_path.parent / (out_path.stem + '_files')}/. Write elsewhere with --out FILE.md, or pass --force to replace it.")))


def _baseline_section(variants: Sequence[Variant], axes: Sequence[str], baseline: str | None, explicit: bool,
                      paper_protocol: bool, data: SweepData, column: str) -> tuple[list[str], Table | None]:
    base, matches = find_baselines(variants, axes, baseline or DEFAULT_BASELINE)
    name = baseline or DEFAULT_BASELINE
    lines = [f"## Significance against the baseline ({name})", ""]
    if not base:
        labels = list(dict.fromkeys([*(v.label for v in variants if v.label), *(v.name for v in variants)]))
        if explicit:
            raise ConfigError(Problem("--baseline", f"no variant labelled '{name}' in sweep {data.path}.{did_you_mean(name, labels)} "
                                      f"Pass a variant label or name: {', '.join(labels)}."))
        shown = ", ".join(_code(x) for x in labels[:12]) + (f" … ({len(labels) - 12} more)" if len(labels) > 12 else "")
        return lines + [f"No variant labelled `{name}` in this sweep, so nothing is compared; pass `--baseline LABEL` "
                        f"to compare against one of: {shown}.", ""], None
    if not matches:
        return lines + ["Every variant of this sweep is the baseline: nothing to compare.", ""], None
    table, _ = significance_table(matches, axes, column="test_acc", paper_protocol=paper_protocol)
    lines += [
        f"Difference in test accuracy at the best-validation epoch, variant − `{name}`, **paired by seed** (only seeds "
        "where both trials finished). Interval: the paired t interval, mean(d) ± t₀.₉₇₅(n−1) · sd(d)/√n (not adjusted "
        "for multiplicity). p: the two-sided paired t test, then Holm's step-down adjustment across this table's "
        "comparisons (family-wise error 0.05; **bold**: adjusted p < 0.05), and the two-sided Wilcoxon signed-rank "
        "test (no normality assumed; with n pairs its smallest p is 2/2ⁿ, so it cannot reach 0.05 below 6 seeds). "
        "With one pair there is no interval or test.",
        "",
        render_markdown_table(table),
        "",
        _provenance(data, column),
        "",
    ]
    return lines, table


def _optuna_figures(data: SweepData, importances: Mapping[str, float], files: Path, out_path: Path,
                    formats: Sequence[str]) -> list[str]:
    """Optuna's own history, slice and contour plots of the study :func:`mmtune.study` rebuilds."""
    from mmtune.api import study as rebuild

    try:
        figures = plots.optuna_plots(files, rebuild(data.path), importances, formats=formats)
    except (ConfigError, ValueError, ImportError) as err:
        return [f"Optuna's plots not drawn: {err}", ""]
    if not figures:
        return []
    return ["### Optuna's plots", "", "Drawn by `optuna.visualization.matplotlib` on `mmtune.study(<sweep>)` (one "
            "trial per configuration, valued at its seed mean; the same study a notebook gets).", "",
            *_plot_lines(figures, out_path.parent)]


def _plot_lines(figures: Sequence[plots.Plot], out_dir: Path) -> list[str]:
    """Each figure by its path relative to the markdown file, with its caption."""
    lines = []
    for p in figures:
        rel = os.path.relpath(p.path, out_dir).replace(os.sep, "/")
        others = [os.path.relpath(f, out_dir).replace(os.sep, "/") for f in p.files if f != p.path]
        links = ", ".join(f"[{Path(o).suffix[1:].upper()}]({o})" for o in others)
        also = f" Also as {links}." if others else ""
        lines += [f"![{p.title}]({rel})", "", f"*{p.caption}{also}*", ""]
    return lines


def write_report(sweep: str, *, out: str | None = None, metric: str = "val_acc", latex: bool = False,
                 paper_protocol: bool = False, baseline: str | None = None, storage: str = "runs",
                 force: bool = False, figures: Sequence[str] = ("png",)) -> Path:
    """Write the markdown report of a sweep (and its figures, and ``<name>.tex`` with ``latex``).

    ``figures``: the formats each figure is written in (``png``, ``pdf``, ``svg``); the markdown shows
    the PNG (else the SVG) and links the others. ``latex``: every table in paper style (booktabs).

    ``sweep`` is a sweep folder (path or URI) or a sweep name under ``storage``. Default output:
    ``reports/<name>.md`` with plots in ``reports/<name>_files/``. Returns the markdown path.
    Raises :class:`~mmtune.errors.ConfigError` for a missing or empty sweep, an unknown or test
    ``metric``, an unknown ``baseline``, and an existing file that is not this sweep's own report
    (its first line names the sweep and its creation time) unless ``force``.
    """
    formats = check_figures(figures)
    data = load_sweep(sweep, storage=storage)
    column = check_metric(data, metric)
    now = dt.datetime.now().astimezone()
    out_path = Path(out) if out else _default_out(data.name)
    if out_path.is_dir() or str(out).endswith(("/", os.sep)):
        out_path = out_path / f"{data.name}.md"  # --out reports/ : the default file name in that folder
    elif not out_path.suffix:
        out_path = out_path.with_suffix(".md")
    files = out_path.parent / f"{out_path.stem}_files"
    _check_overwrite(out_path, data, force)
    outcomes = trial_outcomes(data, column)
    variants = group_variants(data, outcomes)
    axes = data.axes
    mods = modalities(data.epochs)
    test_columns = [c for c in TEST_COLUMNS if c in outcomes.columns]
    provenance = _provenance(data, column)

    lines = [_marker(data), *_header(data, column=column, now=now)]

    # -- ablation table
    ablation = ablation_table(variants, axes, selection=column, test_columns=test_columns, paper_protocol=paper_protocol)
    lines += ["## Ablation table", "",
              f"One row per variant ({', '.join(_code(a) for a in axes) or 'a single configuration'}); "
              f"{metric_name(column)} at each trial's best epoch and the test metrics **at that same epoch**. "
              "Bold: best of its column. Trials that did not finish are counted in *not in mean* and listed below; "
              "trials stopped early by ASHA are not averaged with finished ones.", ""]
    if paper_protocol:
        lines += ["> **Paper protocol** (`--paper-protocol`): the official implementations of these methods pick their "
                  "best epoch on the *test* set, so published numbers are the maximum over epochs of test accuracy. "
                  "The column *test acc, max over epochs (optimistic, test-selected)* shows that number for the same "
                  "trials, and *optimism* its gain over the honest column, so you can see how much of a published gap is "
                  "protocol. It is never bold and never used to select anything.", ""]
    lines += [render_markdown_table(ablation), "", provenance, ""]
    name = data.name
    latex_tables: list[tuple[Table | None, str, str]] = [
        (ablation, f"Ablation on sweep {name}: {metric_name(column)} at each trial's best epoch and the test metrics "
                   "at that epoch; bold: the unique best of its column.", "ablation")]
    if ablation.notes:
        lines += ["Not in the means:", "", *(f"- {n}" for n in ablation.notes), ""]

    # -- significance
    section, significance = _baseline_section(variants, axes, baseline, baseline is not None, paper_protocol, data,
                                              column)
    lines += section

    # -- headroom (synthetic data: the Bayes limit; joint and ume: the gap balancing can recover)
    limits = {c: float(data.epochs[c].dropna().iloc[0]) for c in data.epochs.columns
              if c.startswith("bayes_acc") and not data.epochs[c].dropna().empty}
    if limits:
        per_mod = ", ".join(f"{k.split('/')[1]} alone {v:.3f}" for k, v in limits.items() if "/" in k)
        lines += [f"**Bayes limit** of the generative model (its exact posterior, Monte Carlo over 10⁵ draws): "
                  f"joint {limits.get('bayes_acc', float('nan')):.3f}" + (f"; {per_mod}" if per_mod else "") + ".", ""]
    latex_tables.append((significance, f"Test accuracy against the baseline on sweep {name}.", "significance"))
    headroom = headroom_table(variants, axes, limits)
    latex_tables.append((headroom, f"Headroom on sweep {name}: the joint → uni-modal ensemble gap each variant "
                                   "recovers.", "headroom"))
    if headroom is not None:
        lines += ["## Headroom", "",
                  "The uni-modal ensemble (`ume`: each modality trained alone, logits summed) is what training the "
                  "modalities apart gets; its gain over `joint` is the accuracy a balancing method can plausibly "
                  "recover, the Bayes limit the ceiling. Test accuracy at the best-validation epoch, mean over "
                  "finished seeds.", "", render_markdown_table(headroom), "", provenance, ""]

    # -- per modality
    available = [c for c in outcomes.columns if "/" in c]
    if mods:
        table = modality_table(variants, axes, mods, available)
        latex_tables.append((table, f"Per-modality accuracy on sweep {name}.", "modalities"))
        lines += ["## Per-modality", "",
                  "Accuracy of each modality's own prediction inside the joint model (`val_acc/<m>`, `test_acc/<m>`) at "
                  "the best-validation epoch, and the discrepancy ratio ρ^m (`imbalance/<m>`, on validation) at the "
                  "last epoch.", "", render_markdown_table(table), "", provenance, ""]

    # -- plots
    for stale in [f for fmt in plots.FORMATS for f in files.glob(f"*.{fmt}")] if files.is_dir() else []:
        stale.unlink()  # the folder is the report's own: no plot from an earlier run lingers
    base_labels = [baseline or DEFAULT_BASELINE]
    look = {"axes": axes, "rank": column, "baselines": base_labels, "formats": formats}
    curves = []
    for c in ["val_acc"] + ([column] if column != "val_acc" else []):
        curve = plots.curve_plot(files / f"curve_{plots.safe_name(c)}.png", variants, data.epochs, c, **look)
        curves += [curve] if curve else []
    per_modality = plots.modality_curve_plot(files / "curve_val_acc_per_modality.png", variants, data.epochs, mods,
                                             unimodal=_unimodal_variants(data, variants, mods), **look)
    curves += [per_modality] if per_modality else []
    if curves:
        lines += ["## Curves", "", *_plot_lines(curves, out_path.parent)]
    traces = plots.trace_plots(files, variants, data.epochs, methods=_variant_methods(data, variants), **look)
    if traces:
        lines += ["## Method traces", "", *_plot_lines(traces, out_path.parent)]
    base_variants = [v for v in variants if v.label == (baseline or DEFAULT_BASELINE)]
    sensitivity = plots.sensitivity_plots(files, variants, axes, column="test_acc", algorithm=data.algorithm,
                                          domains=spec_domains(data.spec), baselines=base_variants, formats=formats)
    if sensitivity:
        lines += ["## Sensitivity", "", *_plot_lines(sensitivity, out_path.parent)]

    # -- Optuna importances
    if data.algorithm == "optuna":
        lines += ["## Parameter importances (Optuna)", ""]
        imp = optuna_importances(data, outcomes)
        how = (f"A study rebuilt from the tables: one trial per configuration (`config_key`), valued at the mean of "
               f"`{imp.objective}` at the last epoch over its seeds that ran all epochs (TERMINATED); seeds stopped "
               f"early by ASHA, failed or unfinished give no value. {imp.n_configs} configurations used "
               f"({imp.n_partial} of them on only some seeds), {imp.n_left_out} left out (no seed finished). "
               f"Distributions from the spec's domains. Evaluator: {imp.evaluator} (the default of "
               "`optuna.importance.get_param_importances`).")
        lines += [how, ""]
        if imp.values:
            plot = plots.importance_plot(files / "optuna_importances.png", imp.values, evaluator=imp.evaluator,
                                         n_configs=imp.n_configs, formats=formats)
            lines += ["| parameter | importance |", "|---|---:|",
                      *(f"| `{k}` | {v:.3f} |" for k, v in imp.values.items()), ""]
            lines += _plot_lines([plot], out_path.parent)
            if imp.n_configs < 10:
                lines += [f"> With {imp.n_configs} configurations these importances are a rough indication only.", ""]
        else:
            lines += [f"Importances not computed: {imp.reason}", ""]
        for w in imp.warnings:
            lines += [f"> optuna: {w}", ""]
        lines += _optuna_figures(data, imp.values, files, out_path, formats)

    # -- LaTeX
    if latex:
        tex = _latex_document(data, column, [(t, c, k) for t, c, k in latex_tables if t is not None])
        tex_path = out_path.with_suffix(".tex")
        tex_path.parent.mkdir(parents=True, exist_ok=True)
        tex_path.write_text(tex)
        lines += ["## LaTeX", "", f"Every table above in paper style (booktabs; also in `{tex_path.name}`, which needs "
                  "`\\usepackage{booktabs}`):", "", "```latex", tex.rstrip(), "```", ""]

    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(lines).rstrip() + "\n")
    return out_path


def _latex_document(data: SweepData, column: str, tables: Sequence[tuple[Table, str, str]]) -> str:
    """Every table of the report as a booktabs ``table`` environment, one after the other."""
    stem = re.sub(r"[^A-Za-z0-9:_-]+", "-", data.name)
    parts = [f"% {_plain_provenance(data)}", "% needs \\usepackage{booktabs}", ""]
    for table, caption, key in tables:
        parts.append(render_latex_table(table, caption=caption, label=f"tab:{stem}-{key}"))
    return "\n".join(parts)


def check_figures(figures: Sequence[str] | str) -> list[str]:
    """``png,pdf`` or ``["png", "pdf"]`` → the formats, validated (ConfigError naming the known ones)."""
    items = figures.split(",") if isinstance(figures, str) else list(figures)
    formats = list(dict.fromkeys(f.strip().lower().lstrip(".") for f in items if f.strip()))
    unknown = [f for f in formats if f not in plots.FORMATS]
    if unknown or not formats:
        raise ConfigError(Problem("--figures", f"unknown figure format(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                                  f"give a comma-separated list of {', '.join(plots.FORMATS)} (e.g. png,pdf)."))
    return formats


def _variant_methods(data: SweepData, variants: Sequence[Variant]) -> dict[str, str]:
    """Variant name → the method its trials ran (``ogm`` for the label ``ogm-ge``), for the trace titles."""
    if "method" not in data.trials.columns:
        return {}
    method_of = dict(zip(data.trials["trial_id"], data.trials["method"].astype(object), strict=True))
    found = {}
    for v in variants:
        ran = {str(method_of.get(t)) for t in v.trials["trial_id"] if method_of.get(t) is not None}
        if len(ran) == 1:
            found[v.name] = ran.pop()
    return found


def _unimodal_variants(data: SweepData, variants: Sequence[Variant], mods: Sequence[str]) -> list[tuple[Variant, str]]:
    """The uni-modal baselines (method ``unimodal``: one modality trained alone) and their modality, from
    the trial's ``params.modality`` (config) or else the one ``val_acc/<m>`` column its epochs fill."""
    methods = _variant_methods(data, variants)
    configs = dict(zip(data.trials["trial_id"], data.trials["config_json"], strict=True)) \
        if "config_json" in data.trials.columns else {}
    found = []
    for v in variants:
        if methods.get(v.name) != "unimodal":
            continue
        modality = None
        for tid in v.trials["trial_id"]:
            try:
                modality = (json.loads(configs.get(tid) or "{}").get("params") or {}).get("modality")
            except (ValueError, AttributeError):
                modality = None
            if modality:
                break
        if not modality:
            rows = data.epochs[data.epochs["trial_id"].isin(v.trials["trial_id"])]
            filled = [m for m in mods if f"val_acc/{m}" in rows.columns and rows[f"val_acc/{m}"].notna().any()]
            modality = filled[0] if len(filled) == 1 else None
        if modality in mods:
            found.append((v, str(modality)))
    return found


def _plain_provenance(data: SweepData) -> str:
    meta = data.meta
    return (f"mmtune report: sweep {data.name}, created {meta.get('created', 'unknown')}, mmtune "
            f"{meta.get('mmtune_version', __version__)}; command: {meta.get('command', 'unknown')}").replace("\n", " ")
