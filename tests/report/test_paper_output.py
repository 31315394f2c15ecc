"""Paper-ready output: LaTeX tables (structure, short headers, display names, unique-best bold, n in the
caption, escapes), figure formats, trace legends and titles, per-modality curves with uni-modal
references, and plots that stay readable with many variants."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from test_report import _epoch_rows, _trial_row, _write_store, make_golden

from mmtune.errors import ConfigError
from mmtune.report import plots, write_report
from mmtune.report.data import Variant
from mmtune.report.render import render_latex_table
from mmtune.report.stats import summarize
from mmtune.report.tables import DISPLAY_NAMES, Cell, Table, display_name


# -- a LaTeX structure check (no TeX engine here: pdflatex is not installed) -----------------------
def check_latex(tex: str) -> list[dict]:
    """Assert what pdflatex would choke on; return each tabular's spec and rows (cells per row)."""
    body = "\n".join(line for line in tex.splitlines() if not line.lstrip().startswith("%"))
    unescaped = re.sub(r"\\[{}%&#_$]", "", body)
    depth = 0
    for ch in unescaped:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0, "a } closes nothing"
    assert depth == 0, "unbalanced braces"
    stack = []
    for kind, env in re.findall(r"\\(begin|end)\{(\w+)\}", body):
        if kind == "begin":
            stack.append(env)
        else:
            assert stack and stack.pop() == env, f"\\end{{{env}}} closes nothing"
    assert not stack, f"unclosed environments {stack}"
    for line in unescaped.splitlines():
        assert line.count("$") % 2 == 0, f"unbalanced math in {line!r}"
        text = re.sub(r"\$[^$]*\$", "", line)  # outside math: no raw _ ^ # %
        assert not re.search(r"[_^#%]", text), f"unescaped special character in {line!r}"
        assert "±" not in line and "ρ" not in line and "—" not in line, f"raw Unicode in {line!r}"
    tables = []
    for spec, inner in re.findall(r"\\begin\{tabular\}\{([lcr]+)\}\n(.*?)\n\\end\{tabular\}", body, re.S):
        lines = inner.splitlines()
        assert lines[0] == r"\toprule" and lines[-1] == r"\bottomrule" and lines.count(r"\midrule") == 1
        rows = []
        for line in lines:
            if not line.endswith(r"\\"):
                assert line.startswith((r"\toprule", r"\midrule", r"\bottomrule", r"\cmidrule")), line
                continue
            cells = re.split(r"(?<!\\)&", line[:-2])
            spans = [re.match(r"\s*\\multicolumn\{(\d+)\}", c) for c in cells]
            width = sum(int(m.group(1)) if m else 1 for m in spans)
            assert width == len(spec), f"{width} cells for {len(spec)} columns: {line!r}"
            rows.append([c.strip() for c in cells])
        tables.append({"spec": spec, "rows": rows})
    assert tables, "no tabular"
    return tables


@pytest.fixture(scope="module")
def golden_tex(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    md = write_report(str(make_golden(root / "runs")), out=str(root / "out" / "golden.md"), latex=True,
                      paper_protocol=True, figures="png,pdf,svg")
    return {"md": md, "text": md.read_text(), "tex": md.with_suffix(".tex").read_text()}


def test_latex_every_table_compiles_structurally(golden_tex):
    tex = golden_tex["tex"]
    tables = check_latex(tex)
    labels = re.findall(r"\\label\{([^}]+)\}", tex)
    assert labels == ["tab:golden-ablation", "tab:golden-significance", "tab:golden-modalities"]  # no ume: no headroom
    assert len(tables) == 3 and tex.count(r"\begin{table}") == 3
    assert "```latex\n" + tex.rstrip() in golden_tex["text"]


def test_latex_ablation_is_compact(golden_tex):
    tex = golden_tex["tex"]
    ablation = check_latex(tex.split(r"\end{table}")[0] + r"\end{table}")[0]
    header = ablation["rows"][0]
    assert header == ["Method", r"$\alpha$", "Val", "Test", "F1", "mAP", "Test (max)"]
    assert len(ablation["spec"]) <= 7  # fits a page
    for forbidden in ("seeds finished", "not in mean", "(3)", "optimism"):
        assert forbidden not in tex.split(r"\label{tab:golden-significance}")[0].split(r"\begin{tabular}")[1]
    caption = re.search(r"\\caption\{(.*)\}", tex).group(1)
    assert "n = 3 seeds" in caption and "Not in the means" in caption
    assert "Joint: 1 stopped early (ASHA)" in caption and r"OGM, alpha=0.5: 1 failed" in caption
    names = [r[0] for r in ablation["rows"][1:]]
    assert names == ["Joint", "OGM", "OGM"]


def test_latex_significance_and_modality_headers(golden_tex):
    tables = check_latex(golden_tex["tex"])
    sig, mods = tables[1], tables[2]
    assert sig["rows"][0] == ["Method", r"$\alpha$", r"$\Delta$ Test", r"95\% CI", "$p_t$", r"$p_{\mathrm{Holm}}$",
                              r"$p_{\mathrm{W}}$", r"$\Delta$ Test (max)"]
    assert "Baseline: Joint; n = 3 seeds paired per row" in golden_tex["tex"]
    assert mods["rows"][0][2:] == [r"\multicolumn{5}{c}{Audio}", r"\multicolumn{5}{c}{Video}"]
    assert mods["rows"][1][2:] == ["Val", "Test", "Probe val", "Probe test", r"$\rho^m$"] * 2


def _summary_table(columns: list[list[float]], *, axis_texts: list[str], axes: list[str]) -> Table:
    rows = []
    for i, text in enumerate(axis_texts):
        rows.append([Cell(text), *(Cell(summary=summarize(col[i])) for col in columns)])
    table = Table(header=["x", *(f"c{j}" for j in range(len(columns)))], rows=rows, n_axes=1, axes=axes)
    for j in range(len(columns)):  # as _bold_best does: every tie bold
        means = [round(r[1 + j].summary.mean, 3) for r in rows]
        for r, m in zip(rows, means, strict=True):
            r[1 + j].bold = m == max(means)
    return table


def test_latex_bold_only_a_unique_best_and_n_where_it_differs():
    tied = [[0.8, 0.9], [0.85, 0.85], [0.5, 0.6]]  # means 0.85, 0.85, 0.55: a tie at the top
    unique = [[0.8, 0.9], [0.7, 0.8], [0.5, 0.6, 0.7]]
    table = _summary_table([tied, unique], axis_texts=["amss+", "opm+ogm", "gblending"], axes=["label"])
    tex = render_latex_table(table, caption="t", label="tab:t")
    check_latex(tex)
    assert tex.count(r"\mathbf") == 1 and r"$\mathbf{0.850 \pm 0.071}$" in tex  # the unique best of column 2
    assert r"\textsuperscript{$n=3$}" in tex and "n = 2 seeds (superscript: n where it differs)" in tex
    assert "AMSS+ &" in tex and "OPM+OGM &" in tex and "G-Blending &" in tex


def test_latex_escapes_text():
    table = _summary_table([[[0.5, 0.6]]], axis_texts=["a_b 50% R&D #1 ~x^2"], axes=["params.x"])
    table.latex_notes = ["costs $5 & 10% of {it}"]
    tex = render_latex_table(table, caption="sweep my_sweep", label="tab:x")
    check_latex(tex)
    assert r"a\_b 50\% R\&D \#1 \textasciitilde{}x\textasciicircum{}2" in tex
    assert r"sweep my\_sweep" in tex and r"costs \$5 \& 10\% of \{it\}" in tex


def test_display_names_cover_every_registered_method():
    from mmtune.trainables import COMPOSITIONS, list_methods

    missing = [m for m in list_methods() if m not in DISPLAY_NAMES]
    assert not missing, f"add a display name (mmtune/report/tables.py DISPLAY_NAMES) for {missing}"
    assert display_name("amss+") == "AMSS+" and display_name("ogm-ge") == "OGM-GE"
    assert display_name("opm+ogm") == "OPM+OGM" and display_name("gblending") == "G-Blending"
    assert display_name("mmcosine") == "MMCosine" and display_name("unimodal-audio") == "Uni-modal (audio)"
    assert display_name("newmethod") == "NEWMETHOD" and display_name("all trials") == "all trials"
    assert all("+" in display_name(c) for c in COMPOSITIONS)


# -- figures ---------------------------------------------------------------------------------------
def test_figures_in_every_format_asked(golden_tex):
    files = golden_tex["md"].parent / "golden_files"
    stems = {p.stem for p in files.iterdir()}
    for stem in stems:
        assert (files / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (files / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert b"<svg" in (files / f"{stem}.svg").read_bytes()[:2000]
    text = golden_tex["text"]
    assert "![OGM-GE coefficient k^m](golden_files/trace_k.png)" in text
    assert "Also as [PDF](golden_files/trace_k.pdf), [SVG](golden_files/trace_k.svg).*" in text
    for link in re.findall(r"\]\(([^)]+)\)", text):  # every link, image or not, resolves from the markdown
        assert (golden_tex["md"].parent / link).is_file(), link


def test_figures_flag_is_validated(tmp_path):
    sweep = make_golden(tmp_path / "runs")
    with pytest.raises(ConfigError) as err:
        write_report(str(sweep), out=str(tmp_path / "r.md"), figures="png,jpg")
    assert "--figures" in str(err.value) and "'jpg'" in str(err.value) and "png, pdf, svg" in str(err.value)
    md = write_report(str(sweep), out=str(tmp_path / "v.md"), figures="svg")
    assert "![val acc over epochs](v_files/curve_val_acc.svg)" in md.read_text()
    assert not list((tmp_path / "v_files").glob("*.png"))

    from mmtune.cli import build_parser

    assert build_parser().parse_args(["report", "x", "--figures", "pdf,svg"]).figures == "pdf,svg"
    assert build_parser().parse_args(["report", "x"]).figures == "png"


def _variant(label: str, ids: list[str], **values) -> Variant:
    trials = pd.DataFrame({"trial_id": ids, "status": ["TERMINATED"] * len(ids), "seed": list(range(len(ids))),
                           "val_acc": [0.5 + 0.01 * i for i in range(len(ids))]})
    return Variant(values={"label": label, **values}, trials=trials, config_keys=[label])


def _epochs(columns: dict[str, float], ids: list[str], n: int = 4) -> pd.DataFrame:
    return pd.DataFrame([{"trial_id": t, "epoch": e, **{c: v * e for c, v in columns.items()}}
                         for t in ids for e in range(1, n + 1)])


def _svg_text(path: Path) -> str:
    return html.unescape(path.read_text())


def test_trace_legend_names_modality_and_depth(tmp_path):
    ids = ["a0", "a1"]
    epochs = _epochs({"trace/s/audio/d1": 0.1, "trace/s/audio/d2": 0.2, "trace/s/video/d1": 0.05,
                      "trace/s/video/d2": 0.07, "trace/alpha/d1": 0.3, "trace/alpha/d2": 0.4}, ids)
    epochs = pd.concat([epochs, _epochs({"trace/s/audio/d1": 0.11, "trace/s/audio/d2": 0.2, "trace/s/video/d1": 0.05,
                                         "trace/s/video/d2": 0.07}, ["b0"])])
    variants = [_variant("aim", ids), _variant("aim-label", ["b0"])]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        out = plots.trace_plots(tmp_path, variants, epochs, methods={"aim": "aim", "aim-label": "aim"},
                                formats=("svg",))
    by_name = {p.path.name: p for p in out}
    svg = _svg_text(tmp_path / "trace_s.svg")
    for label in ("aim · audio · d1", "aim · audio · d2", "aim · video · d1", "aim-label · video · d2"):
        assert label in svg, label
    assert by_name["trace_s.svg"].title == "AIM depth score s_d^m"
    assert "aim · d1" in _svg_text(tmp_path / "trace_alpha.svg")  # a depth-only key: the depth


def test_trace_titles_merges_and_panels(tmp_path):
    assert plots.trace_title("ogm", "k") == r"OGM-GE coefficient $k^m$"
    assert plots.trace_title("opm+ogm", "q") == r"OPM drop probability $q^m$"
    assert plots.trace_title("amss", "p").startswith("AMSS update ratio")
    assert plots.trace_title("mbsd", "brand_new") == "MBSD brand new"  # readable fallback
    assert plots.trace_title("ogm", "rho") == plots.trace_title("opm", "rho") != plots.trace_title("pmr", "rho")
    ids = ["o0", "o1"]
    epochs = _epochs({"trace/q/audio": 0.1, "trace/kept/audio": 0.2, "trace/dap/cls": 1.0, "trace/dap/r": 0.01,
                      "trace/rho/audio": 1.0}, ids)
    epochs = pd.concat([epochs, _epochs({"trace/rho/audio": 3.0}, ["p0"])])
    variants = [_variant("opm", ids), _variant("pmr", ["p0"])]
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        out = plots.trace_plots(tmp_path, variants, epochs, methods={"opm": "opm", "pmr": "pmr"}, formats=("svg",))
    names = {p.path.name for p in out}
    assert "trace_kept.svg" not in names  # 1 − q: not drawn beside q
    assert {"trace_q.svg", "trace_dap.svg", "trace_rho.svg", "trace_rho_pmr.svg"} <= names  # OPM's ρ ≠ PMR's ρ
    q = next(p for p in out if p.path.name == "trace_q.svg")
    assert "trace/kept/<m>" in q.caption
    dap = next(p for p in out if p.path.name == "trace_dap.svg")
    assert "one panel per series" in dap.caption  # L_cls ≈ 1, L_r ≈ 0.01: separate axes
    svg = _svg_text(tmp_path / "trace_dap.svg")
    assert ">cls<" in svg and ">r<" in svg


def test_many_variants_are_selected_or_faceted(tmp_path):
    labels = ["joint", *(f"m{i}" for i in range(7))]
    variants = [_variant(lab, [f"{lab}-{s}" for s in range(2)]) for lab in labels]
    for i, v in enumerate(variants):
        v.trials["val_acc"] = 0.5 + 0.01 * i  # m6 best, then m5, ...
    ids = [t for v in variants for t in v.trials["trial_id"]]
    epochs = _epochs({"val_acc": 0.1}, ids)
    plot = plots.curve_plot(tmp_path / "c.png", variants, epochs, "val_acc", axes=["label"], rank="val_acc",
                            baselines=["joint"])
    assert "Showing joint (baseline) and the 5 of the other 7 variants with the highest mean val acc" in plot.caption
    # two axes, 2 × 4 configurations: one panel per value of the axis that splits them into ≤ 6 lines
    grid = [_variant("amss", [f"g{p}{t}"], **{"params.plus": p, "params.tau": t})
            for p in (False, True) for t in (0.1, 0.5, 1.0, 2.0)]
    epochs = _epochs({"val_acc": 0.1, "trace/p/audio": 0.1, "trace/p/video": 0.2},
                     [t for v in grid for t in v.trials["trial_id"]])
    plot = plots.curve_plot(tmp_path / "g.png", grid, epochs, "val_acc", axes=["params.plus", "params.tau"])
    assert "One panel per value of plus (8 variants)." in plot.caption
    traces = plots.trace_plots(tmp_path, grid, epochs, methods={v.name: "amss" for v in grid},
                               axes=["params.plus", "params.tau"])
    assert "One panel per value of plus" in traces[0].caption


def test_per_modality_curves_with_unimodal_reference_lines(tmp_path):
    """A sweep with joint and the two uni-modal baselines: val_acc/<m> of joint per modality panel, the
    uni-modal runs' val acc as dashed references in their own modality's panel."""
    trials, epochs = [], []
    for i, (label, method, modality) in enumerate([("joint", "joint", None), ("joint", "joint", None),
                                                   ("unimodal-audio", "unimodal", "audio"),
                                                   ("unimodal-audio", "unimodal", "audio"),
                                                   ("unimodal-video", "unimodal", "video")]):
        tid = f"u{i}"
        row = _trial_row("uni", tid, "joint", None, i % 2, "TERMINATED", 3)
        config = {"method": method, "label": label, "params": {"modality": modality} if modality else {}}
        row.update(method=method, label=label, config_json=json.dumps(config), config_key=label)
        trials.append(row)
        rows = _epoch_rows("uni", tid, "joint", None, i % 2)
        if modality:  # one modality's model: no other modality's accuracy
            other = "video" if modality == "audio" else "audio"
            rows = [{**r, f"val_acc/{other}": None, f"test_acc/{other}": None} for r in rows]
        epochs += rows
    meta = {"name": "uni", "axes": ["label"], "metric": "val_acc", "mode": "max", "algorithm": "grid",
            "spec": {"name": "uni", "method": ["joint", "unimodal-audio", "unimodal-video"]}}
    _write_store(tmp_path / "runs" / "uni", trials, epochs, meta)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        md = write_report(str(tmp_path / "runs" / "uni"), out=str(tmp_path / "uni.md"), figures="png,svg")
    text = md.read_text()
    assert "![per-modality val accuracy over epochs](uni_files/curve_val_acc_per_modality.png)" in text
    assert "Black dashed: the uni-modal baselines" in text
    svg = _svg_text(tmp_path / "uni_files" / "curve_val_acc_per_modality.svg")
    assert "unimodal-audio: audio alone (n=2)" in svg and "unimodal-video: video alone (n=1)" in svg
    assert "joint (n=2)" in svg
