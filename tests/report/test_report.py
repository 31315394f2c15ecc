"""Reports from hand-made results stores: exact cells, selection at the best-validation epoch,
paired t intervals, unfinished trials shown, plots, LaTeX, Optuna importances, errors — and that
building a report never imports torch, Ray or a trainable."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmtune.errors import ConfigError
from mmtune.report import write_report
from mmtune.report.data import load_sweep, trial_outcomes
from mmtune.report.importance import optuna_importances
from mmtune.report.stats import paired_t_interval, student_t_cdf, summarize, t_quantile
from scipy import stats as scipy_stats
from mmtune.store.schema import config_key, epochs_table, trials_table

REPO = Path(__file__).resolve().parents[2]
CREATED = "2026-01-02T03:04:05+0000"
COMMAND = "mmtune sweep golden.yaml --storage runs"

# -- the golden grid sweep -------------------------------------------------------------------------
# 3 variants (joint, ogm α=0.5, ogm α=1.0) × seeds 0–2 finished, 3 epochs each, plus one seed 3 per
# variant that did not finish: joint STOPPED_EARLY (ASHA), ogm α=0.5 ERROR (no epoch), ogm α=1.0 RUNNING.
# Per finished trial: val_acc peaks at epoch 2, so the honest test acc is test[1]; the maximum of
# test acc is at epoch 1 and the last epoch's is lower still, so the three protocols differ.
TEST_AT_BEST = {  # test_acc at the best-validation epoch (epoch 2), per seed 0, 1, 2
    ("joint", None): [0.60, 0.70, 0.80],
    ("ogm", 0.5): [0.65, 0.78, 0.83],
    ("ogm", 1.0): [0.70, 0.81, 0.89],
}
BEST_VAL = {("joint", None): [0.62, 0.66, 0.70], ("ogm", 0.5): [0.64, 0.70, 0.73], ("ogm", 1.0): [0.61, 0.65, 0.72]}
FINAL_RHO_AUDIO = {("joint", None): [1.2, 1.4, 1.6], ("ogm", 0.5): [1.1, 1.2, 1.3], ("ogm", 1.0): [1.0, 1.1, 1.2]}


def _epoch_rows(sweep, trial_id, label, alpha, seed_index):
    t = TEST_AT_BEST[(label, alpha)][seed_index]
    v = BEST_VAL[(label, alpha)][seed_index]
    rho = FINAL_RHO_AUDIO[(label, alpha)][seed_index]
    rows = []
    for epoch, (dv, dt, df1) in enumerate([(-0.10, +0.05, 0.0), (0.0, 0.0, 0.01), (-0.02, -0.02, 0.05)], start=1):
        row = {
            "sweep": sweep, "trial_id": trial_id, "epoch": epoch,
            "val_acc": v + dv, "val_macro_f1": v - 0.1 + df1, "val_map": v + 0.05,
            "test_acc": t + dt, "test_macro_f1": t - 0.05 + dt, "test_map": t + 0.02 + dt,
            "val_acc/audio": 0.5 + 0.01 * epoch, "val_acc/video": 0.3, "test_acc/audio": 0.45, "test_acc/video": 0.25,
            "val_probe/audio": 0.6 + 0.01 * epoch, "val_probe/video": 0.4, "test_probe/audio": 0.55, "test_probe/video": 0.35,
            "imbalance/audio": rho if epoch == 3 else 1.0, "imbalance/video": 1.0 / rho if epoch == 3 else 1.0,
            "epoch_s": 0.5, "samples_per_s": 1000.0, "train_loss": 1.0 / epoch,
        }
        if label == "ogm":
            row["trace/k/audio"] = 1.0 - 0.1 * epoch * alpha
            row["trace/k/video"] = 1.0
        rows.append(row)
    return rows


def _trial_row(sweep, trial_id, label, alpha, seed, status, epochs_run, *, error=None, max_epochs=3):
    config = {"method": label, "label": label, "dataset": {"name": "synthetic"}, "model": {"fusion": "concat"},
              "train": {"epochs": max_epochs}, "params": {} if alpha is None else {"alpha": alpha}}
    return {
        "sweep": sweep, "trial_id": trial_id, "config_key": config_key(config), "method": label, "label": label,
        "dataset": "synthetic", "fusion": "concat", "backbone": "mlp", "seed": seed, "status": status,
        "epochs_run": epochs_run, "max_epochs": max_epochs, "error": error, "wall_s": 1.5 * epochs_run,
        "config_json": json.dumps({**config, "seed": seed}, sort_keys=True), "params.alpha": alpha,
        "train.epochs": max_epochs, "model.fusion": "concat", "train.device": "cpu",
    }


def _write_store(folder: Path, trials, epochs, meta):
    folder.mkdir(parents=True)
    pq.write_table(trials_table(trials), folder / "trials.parquet")
    if epochs is not None:
        pq.write_table(epochs_table(epochs), folder / "epochs.parquet")
    if meta is not None:
        (folder / "spec.json").write_text(json.dumps(meta))


def make_golden(storage: Path, name: str = "golden") -> Path:
    trials, epochs = [], []
    n = 0
    for label, alpha in TEST_AT_BEST:
        for i in range(3):
            tid = f"t{n:02d}"
            n += 1
            trials.append(_trial_row(name, tid, label, alpha, i, "TERMINATED", 3))
            epochs += _epoch_rows(name, tid, label, alpha, i)
    # seed 3: never in a mean, each for its own reason; their numbers would win every column if averaged in
    unfinished = {("joint", None): ("STOPPED_EARLY", 1, None), ("ogm", 0.5): ("ERROR", 0, "FloatingPointError: loss is nan"),
                  ("ogm", 1.0): ("RUNNING", 1, None)}
    for (label, alpha), (status, ran, error) in unfinished.items():
        tid = f"t{n:02d}"
        n += 1
        trials.append(_trial_row(name, tid, label, alpha, 3, status, ran, error=error))
        for row in _epoch_rows(name, tid, label, alpha, 0)[:ran]:
            epochs.append({**row, "val_acc": 0.99, "test_acc": 0.99, "val_acc/audio": 0.99})
    spec = {"name": name, "description": "hand-made golden store",
            "method": ["joint", {"name": "ogm", "method": "ogm", "params": {"alpha": {"grid": [0.5, 1.0]}}}],
            "dataset": {"name": "synthetic"}, "train": {"epochs": 3}, "seeds": [0, 1, 2, 3],
            "scheduler": {"asha": {"grace_period": 1}}}
    meta = {"spec": spec, "name": name, "smoke_test": False, "mmtune_version": "0.1.0", "created": CREATED,
            "command": COMMAND, "num_trials": 12, "axes": ["label", "params.alpha"], "metric": "val_acc", "mode": "max",
            "algorithm": "grid"}
    _write_store(storage / name, trials, epochs, meta)
    return storage / name


def make_optuna(storage: Path, name: str = "opt") -> Path:
    """4 sampled configurations × 2 seeds; the last configuration's seed 1 was stopped early by ASHA."""
    configs = [(0.1, 1), (0.4, 2), (1.2, 3), (0.07, 2)]
    trials, epochs = [], []
    n = 0
    for c, (alpha, start) in enumerate(configs):
        for seed in (0, 1):
            stopped = c == 3 and seed == 1
            tid = f"o{n:02d}"
            n += 1
            config = {"method": "ogm", "label": "ogm-ge", "params": {"alpha": alpha, "start_epoch": start, "ge": True}}
            ran = 1 if stopped else 3
            trials.append({
                "sweep": name, "trial_id": tid, "config_key": config_key(config), "method": "ogm", "label": "ogm-ge",
                "seed": seed, "status": "STOPPED_EARLY" if stopped else "TERMINATED", "epochs_run": ran,
                "max_epochs": 3, "config_json": json.dumps({**config, "seed": seed}), "params.alpha": alpha,
                "params.start_epoch": start, "params.ge": True,
            })
            for epoch in range(1, ran + 1):
                acc = 0.4 + 0.1 * c + 0.02 * epoch + 0.01 * seed
                epochs.append({"sweep": name, "trial_id": tid, "epoch": epoch, "val_acc": acc, "best_val_acc": acc,
                               "test_acc": acc - 0.01, "val_acc/audio": 0.5, "imbalance/audio": 1.1,
                               "imbalance/video": 0.9, "epoch_s": 0.1})
    spec = {"name": name, "method": {"name": "ogm-ge", "method": "ogm", "params": {"ge": True}},
            "params": {"alpha": {"loguniform": [0.05, 2.0]}, "start_epoch": {"int": [1, 3]}}, "seeds": [0, 1],
            "search": {"algorithm": "optuna", "num_samples": 4, "metric": "best_val_acc", "mode": "max"}}
    meta = {"spec": spec, "name": name, "smoke_test": False, "mmtune_version": "0.1.0", "created": CREATED,
            "command": "mmtune sweep opt.yaml", "num_trials": 8, "axes": ["params.alpha", "params.start_epoch"],
            "metric": "best_val_acc", "mode": "max", "algorithm": "optuna"}
    _write_store(storage / name, trials, epochs, meta)
    return storage / name


# -- the reports, built once in a fresh interpreter (which also proves what they import) -----------
_BUILD = """
import json, sys
from mmtune.report import write_report
golden = write_report(sys.argv[1], out=sys.argv[2], latex=True, paper_protocol=True)
optuna = write_report(sys.argv[3], out=sys.argv[4])
bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'trainables'))
print(json.dumps({"golden": str(golden), "optuna": str(optuna), "forbidden": bad}))
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    golden, opt = make_golden(root / "runs"), make_optuna(root / "runs")
    args = [str(golden), str(root / "out" / "golden.md"), str(opt), str(root / "out" / "opt.md")]
    proc = subprocess.run([sys.executable, "-c", _BUILD, *args], capture_output=True, text=True, cwd=REPO, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def golden(built):
    md = Path(built["golden"])
    return {"md": md, "text": md.read_text()}


def _table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the first pipe table after ``heading``."""
    section = text.split(heading, 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    block = []
    for ln in section.splitlines()[section.splitlines().index(lines[0]):]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip().strip("|").split(" | ")])
    return block[0], block[2:]


def _row(rows, *key):
    found = [r for r in rows if tuple(r[: len(key)]) == key]
    assert len(found) == 1, (key, rows)
    return found[0]


def _cell(mean, std, n):
    return f"{mean:.3f} ± {std:.3f} ({n})"


def test_report_never_imports_torch_ray_or_trainables(built):
    assert built["forbidden"] == []


def test_ablation_cells_mean_std_n_and_selection_at_best_val_epoch(golden):
    header, rows = _table(golden["text"], "## Ablation table")
    assert header[:2] == ["variant", "alpha"]
    col = header.index("test acc @ best val")
    joint = _row(rows, "joint", "—")
    # seeds 0–2 only: the stopped-early seed's 0.99 is not averaged in
    assert joint[col] == "0.700 ± 0.100 (3)"
    # epoch 2's test acc, not the max over epochs (0.750) nor the last epoch's (0.680)
    for v in (0.5, 1.0):
        x = np.array(TEST_AT_BEST[("ogm", v)])
        cell = _row(rows, "ogm", str(v))[col].replace("**", "")
        assert cell == _cell(x.mean(), x.std(ddof=1), 3)
    val = np.array(BEST_VAL[("ogm", 0.5)])
    assert _row(rows, "ogm", "0.5")[header.index("val acc (best)")].replace("**", "") == _cell(val.mean(), val.std(ddof=1), 3)
    f1 = np.array(TEST_AT_BEST[("joint", None)]) - 0.05
    assert joint[header.index("test macro-F1 @ best val")].replace("**", "") == _cell(f1.mean(), f1.std(ddof=1), 3)


def test_best_cell_bold_per_column(golden):
    header, rows = _table(golden["text"], "## Ablation table")
    test = header.index("test acc @ best val")
    val = header.index("val acc (best)")
    assert _row(rows, "ogm", "1.0")[test].startswith("**0.800 ± 0.095**")  # highest test acc at best val
    assert not _row(rows, "joint", "—")[test].startswith("**")
    assert _row(rows, "ogm", "0.5")[val].startswith("**")  # highest best val acc (0.690)
    assert not _row(rows, "ogm", "1.0")[val].startswith("**")


def test_unfinished_trials_counted_and_listed_never_averaged(golden):
    header, rows = _table(golden["text"], "## Ablation table")
    done, missing = header.index("seeds finished"), header.index("not in mean")
    assert _row(rows, "joint", "—")[done] == "3 of 4"
    assert _row(rows, "joint", "—")[missing] == "1 stopped early (ASHA)"
    assert _row(rows, "ogm", "0.5")[missing] == "1 failed"
    assert _row(rows, "ogm", "1.0")[missing] == "1 running"
    notes = golden["text"].split("Not in the means:", 1)[1].split("##", 1)[0]
    assert "`joint` seed 3" in notes and "stopped early by the scheduler (ASHA) after 1/3 epochs" in notes
    assert "`ogm, alpha=0.5` seed 3" in notes and "ERROR after 0/3 epochs — FloatingPointError: loss is nan" in notes
    assert "`ogm, alpha=1.0` seed 3" in notes and "RUNNING" in notes
    assert "RUNNING 1 · TERMINATED 9 · STOPPED_EARLY 1 · ERROR 1 (total 12)" in golden["text"]


def test_paper_protocol_column_is_max_over_epochs_of_test_acc(golden):
    header, rows = _table(golden["text"], "## Ablation table")
    col = header.index("test acc, max over epochs (optimistic, test-selected)")
    gap = header.index("optimism: test-selected − honest")
    assert _row(rows, "joint", "—")[col] == "0.750 ± 0.100 (3)"  # epoch 1: test + 0.05
    assert _row(rows, "joint", "—")[gap] == "0.050 ± 0.000 (3)"
    assert not any(r[col].startswith("**") for r in rows)  # the optimistic number is never highlighted
    assert "Paper protocol" in golden["text"]


def test_paired_t_interval_against_hand_computation(golden):
    header, rows = _table(golden["text"], "## Significance against the baseline (joint)")
    t_crit = 4.303  # t_{0.975}(2)
    base = np.array(TEST_AT_BEST[("joint", None)])
    for alpha, excludes in ((0.5, False), (1.0, True)):
        d = np.array(TEST_AT_BEST[("ogm", alpha)]) - base
        half = t_crit * d.std(ddof=1) / math.sqrt(3)
        row = _row(rows, "ogm", str(alpha))
        assert row[header.index("baseline")] == "joint"
        assert row[header.index("seeds paired")] == "3"
        assert row[header.index("Δ test acc (mean ± sd)")] == f"{d.mean():+.3f} ± {d.std(ddof=1):.3f}"
        interval = f"[{d.mean() - half:+.3f}, {d.mean() + half:+.3f}]"
        assert row[header.index("95% CI")] == interval
        assert (d.mean() - half > 0) == excludes
        p_t = 2 * scipy_stats.t.sf(abs(d.mean()) / (d.std(ddof=1) / math.sqrt(3)), 2)
        assert row[header.index("p (paired t)")] == ("< 0.001" if p_t < 0.001 else f"{p_t:.3f}")
        assert row[header.index("p (Wilcoxon)")] == f"{scipy_stats.wilcoxon(d).pvalue:.3f}"
    assert "paired t interval" in golden["text"] and "Holm" in golden["text"]
    holm_col = next(h for h in header if h.startswith("p, Holm ("))
    family = int(holm_col.split("(")[1].split()[0])
    p_values = {}
    for row in rows:
        cell = row[header.index("p (paired t)")]
        if cell not in ("—",):
            p_values[tuple(row[:2])] = row
    assert family == len(p_values) >= 2


def test_holm_adjustment_by_hand():
    from mmtune.report.stats import holm

    # sorted 0.01, 0.03, 0.04 (m = 3): 3·0.01 = 0.03, max(0.03, 2·0.03) = 0.06, max(0.06, 1·0.04) = 0.06
    assert holm([0.01, 0.04, float("nan"), 0.03]) == pytest.approx([0.03, 0.06, float("nan"), 0.06], nan_ok=True)
    assert holm([0.6, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_wilcoxon_and_t_p_values_of_a_paired_difference():
    d = paired_t_interval({0: 0.8, 1: 0.85, 2: 0.9, 3: 0.7, 4: 0.95, 5: 0.9}, {0: 0.7, 1: 0.7, 2: 0.75, 3: 0.72, 4: 0.8, 5: 0.6})
    diffs = [0.1, 0.15, 0.15, -0.02, 0.15, 0.3]
    assert d.p_t == pytest.approx(scipy_stats.ttest_1samp(diffs, 0.0).pvalue, rel=1e-9)
    assert d.p_wilcoxon == pytest.approx(scipy_stats.wilcoxon(diffs).pvalue, rel=1e-9)
    assert math.isnan(paired_t_interval({0: 0.5, 1: 0.6}, {0: 0.5, 1: 0.6}).p_wilcoxon)  # d ≡ 0


def test_per_modality_table_reads_final_rho_and_unimodal_acc_at_best_epoch(golden):
    header, rows = _table(golden["text"], "## Per-modality")
    joint = _row(rows, "joint", "—")
    assert joint[header.index("ρ audio (final)")] == "1.400 ± 0.200 (3)"
    assert joint[header.index("val acc audio")] == "0.520 ± 0.000 (3)"  # epoch 2 of 0.5 + 0.01·epoch
    assert joint[header.index("test acc video")] == "0.250 ± 0.000 (3)"
    # train.probe=true columns: the linear probes, at the best-validation epoch too
    assert joint[header.index("val probe audio")] == "0.620 ± 0.000 (3)"
    assert joint[header.index("test probe video")] == "0.350 ± 0.000 (3)"


def test_header_and_provenance(golden):
    text = golden["text"]
    marker, text = text.split("\n", 1)  # first line: which sweep this report belongs to (overwrite guard)
    assert marker == f"<!-- mmtune report of sweep 'golden' created {CREATED} -->"
    assert text.startswith("# Ablation report: golden")
    for expected in (CREATED, COMMAND, "mmtune 0.1.0", "torch", "ray", "<details>", "Σ epoch time",
                     "Σ trial wall time", "CPUs"):
        assert expected in text, expected
    assert "- joint" in text.split("<details>", 1)[1].split("</details>", 1)[0]  # the spec, as YAML
    # every table is followed by where its numbers come from
    assert text.count(f"*Source: sweep `golden`, created {CREATED}, mmtune 0.1.0, command `{COMMAND}`") == 3


def test_plots_exist_are_pngs_and_are_referenced(golden):
    import matplotlib.image as mpimg

    md = golden["md"]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", golden["text"])
    assert links and all(not Path(link).is_absolute() for link in links)
    files = {(md.parent / link).resolve() for link in links}
    on_disk = set((md.parent / "golden_files").glob("*.png"))
    assert {p.resolve() for p in on_disk} == files  # every plot referenced, every reference exists
    names = {p.name for p in on_disk}
    assert {"curve_val_acc.png", "trace_k.png", "trace_imbalance.png", "sensitivity_params.alpha.png"} <= names
    assert "optuna_importances.png" not in names  # a grid sweep has no importances
    for path in on_disk:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
        assert float(np.asarray(mpimg.imread(path)).std()) > 0.01  # not a blank canvas


def test_latex_table(golden):
    tex = golden["md"].with_suffix(".tex").read_text()
    for rule in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}"):
        assert rule in tex
    assert r"$\mathbf{0.800 \pm 0.095}$" in tex  # the bold (unique best) test acc of ogm α=1.0
    assert r"$0.700 \pm 0.100$ &" in tex and "n = 3 seeds" in tex  # n in the caption, not in every cell
    assert COMMAND in tex  # provenance comment
    assert "```latex\n" + tex.rstrip() in golden["text"]


# -- data layer ------------------------------------------------------------------------------------
def test_selection_metric_changes_the_best_epoch(tmp_path):
    data = load_sweep(make_golden(tmp_path))
    by_val = trial_outcomes(data, "val_acc").set_index("trial_id")
    by_f1 = trial_outcomes(data, "val_macro_f1").set_index("trial_id")
    assert by_val.loc["t00", "best_epoch"] == 2 and by_val.loc["t00", "test_acc"] == pytest.approx(0.60)
    assert by_f1.loc["t00", "best_epoch"] == 3 and by_f1.loc["t00", "test_acc"] == pytest.approx(0.58)
    assert by_val.loc["t00", "max_test_acc"] == pytest.approx(0.65)
    assert math.isnan(by_val.loc["t10", "best_epoch"])  # the ERROR trial never reported an epoch


def test_optuna_report_has_importances_and_single_seed_cells(built):
    md = Path(built["optuna"])
    text = md.read_text()
    assert "## Parameter importances (Optuna)" in text
    assert "![Optuna parameter importances](opt_files/optuna_importances.png)" in text
    png = md.parent / "opt_files" / "optuna_importances.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    header, rows = _table(text, "## Ablation table")
    last = _row(rows, "0.07", "2")
    assert last[header.index("seeds finished")] == "1 of 2"
    assert last[header.index("not in mean")] == "1 stopped early (ASHA)"
    assert last[header.index("test acc @ best val")].replace("**", "") == "0.750 (n=1)"  # 0.4 + 0.3 + 0.06 − 0.01
    assert "4 configurations used (1 of them on only some seeds), 0 left out" in text


def test_optuna_study_rebuilt_from_tables(tmp_path):
    data = load_sweep(make_optuna(tmp_path))
    imp = optuna_importances(data, trial_outcomes(data, "val_acc"))
    assert (imp.n_configs, imp.n_partial, imp.n_left_out) == (4, 1, 0)
    assert set(imp.values) == {"params.alpha", "params.start_epoch"}
    assert sum(imp.values.values()) == pytest.approx(1.0)
    assert imp.objective == "best_val_acc" and not imp.reason


def test_optuna_report_has_optunas_own_plots(built, golden):
    md = Path(built["optuna"])
    text = md.read_text()
    assert "### Optuna's plots" in text
    for stem in ("optuna_history", "optuna_slice", "optuna_contour"):
        assert f"_files/{stem}.png)" in text and (md.parent / f"{md.stem}_files" / f"{stem}.png").is_file()
    assert "### Optuna's plots" not in golden["text"]  # a grid sweep has no study


def test_bare_name_under_storage_and_default_out(tmp_path, monkeypatch):
    make_golden(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    path = write_report("golden", storage=str(tmp_path / "runs"), baseline="joint")
    assert path == Path("reports") / "golden.md" and path.is_file()
    assert not path.with_suffix(".tex").exists()  # LaTeX only when asked
    assert "optimistic" not in path.read_text()  # the paper-protocol column only when asked
    assert (tmp_path / "reports" / "golden_files" / "curve_val_acc.png").is_file()


# -- errors ----------------------------------------------------------------------------------------
def test_missing_sweep_names_the_path_and_the_known_sweeps(tmp_path):
    make_golden(tmp_path / "runs")
    with pytest.raises(ConfigError) as err:
        write_report("goldn", storage=str(tmp_path / "runs"), out=str(tmp_path / "x.md"))
    text = str(err.value)
    assert f"{tmp_path}/runs/goldn" in text and "Did you mean 'golden'?" in text and "--storage" in text
    with pytest.raises(ConfigError, match="no sweep folder"):
        write_report(str(tmp_path / "nowhere" / "sweep"), out=str(tmp_path / "x.md"))


def test_empty_sweep_is_refused(tmp_path):
    _write_store(tmp_path / "empty", [], [], None)
    with pytest.raises(ConfigError, match="the sweep is empty"):
        write_report(str(tmp_path / "empty"), out=str(tmp_path / "x.md"))
    (tmp_path / "started").mkdir()
    with pytest.raises(ConfigError, match="trials.parquet"):
        write_report(str(tmp_path / "started"), out=str(tmp_path / "x.md"))


def test_unknown_or_test_metric_and_unknown_baseline(tmp_path):
    sweep = str(make_golden(tmp_path))
    with pytest.raises(ConfigError, match="Did you mean 'val_acc'"):
        write_report(sweep, metric="val_ac", out=str(tmp_path / "x.md"))
    with pytest.raises(ConfigError, match="test metric"):
        write_report(sweep, metric="test_acc", out=str(tmp_path / "x.md"))
    with pytest.raises(ConfigError, match="no variant labelled 'jont'.*Did you mean 'joint'"):
        write_report(sweep, baseline="jont", out=str(tmp_path / "x.md"))
    assert not (tmp_path / "x.md").exists()


def test_without_spec_json_variants_are_inferred_from_configurations(tmp_path):
    sweep = make_golden(tmp_path)
    (sweep / "spec.json").unlink()
    data = load_sweep(sweep)
    assert set(data.axes) == {"label", "params.alpha"}
    assert any("spec.json is missing" in n for n in data.notes)


def test_store_without_epochs_still_reports_the_trials(tmp_path):
    sweep = make_golden(tmp_path / "runs")
    (sweep / "epochs.parquet").unlink()  # e.g. every trial failed before its first epoch
    text = write_report(str(sweep), out=str(tmp_path / "r.md")).read_text()
    assert "epochs.parquet is missing" in text
    header, rows = _table(text, "## Ablation table")
    assert _row(rows, "ogm", "0.5")[header.index("not in mean")] == "1 failed"
    assert _row(rows, "joint", "—")[header.index("test acc @ best val")] == "—"
    assert "![" not in text  # no epochs, no curves


# -- statistics ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("df", "expected"), [(1, 12.706), (2, 4.303), (5, 2.571), (10, 2.228), (30, 2.042),
                                              (1000, 1.962)])
def test_t_quantile_matches_the_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=5e-4)
    assert student_t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-10)


def test_summary_and_paired_interval_edge_cases():
    assert summarize([0.7, None, float("nan")]).n == 1
    one = paired_t_interval({0: 0.8, 1: 0.9}, {0: 0.7})
    assert one.n == 1 and not one.has_interval and not one.excludes_zero
    none = paired_t_interval({0: 0.8}, {1: 0.7})
    assert none.n == 0 and math.isnan(none.mean)
    with pytest.raises(ValueError, match="0 < p < 1"):
        t_quantile(1.0, 3)


def test_a_report_never_replaces_a_file_it_did_not_write_for_this_sweep(tmp_path, monkeypatch):
    """A spec comment once said `mmtune report runs/quickstart`, which rewrote the committed
    reports/quickstart.md and deleted its plots. Now only the sweep's own report is replaced."""
    make_golden(tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    committed = tmp_path / "reports" / "golden.md"
    committed.parent.mkdir()
    committed.write_text("# a committed report of another run\n")
    (tmp_path / "reports" / "golden_files").mkdir()
    (tmp_path / "reports" / "golden_files" / "keep.png").write_bytes(b"png")
    with pytest.raises(ConfigError, match="--force"):
        write_report("golden", storage=str(tmp_path / "runs"))
    assert committed.read_text() == "# a committed report of another run\n"
    assert (tmp_path / "reports" / "golden_files" / "keep.png").exists()
    path = write_report("golden", storage=str(tmp_path / "runs"), force=True)
    assert path.read_text().startswith("<!-- mmtune report of sweep 'golden' created")
    write_report("golden", storage=str(tmp_path / "runs"))  # its own report: replaced without --force
    # Another sweep of the same name (a different creation time) is another sweep.
    meta = json.loads((tmp_path / "runs" / "golden" / "spec.json").read_text())
    (tmp_path / "runs" / "golden" / "spec.json").write_text(json.dumps({**meta, "created": "2030-01-01T00:00:00"}))
    with pytest.raises(ConfigError, match="report of another sweep"):
        write_report("golden", storage=str(tmp_path / "runs"))


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs", "a/b", ".."])
def test_a_crafted_sweep_name_never_becomes_a_path(tmp_path, monkeypatch, name):
    folder = make_golden(tmp_path / "runs")
    meta = json.loads((folder / "spec.json").read_text())
    (folder / "spec.json").write_text(json.dumps({**meta, "name": name}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="not a plain file name"):
        write_report(str(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]


def test_headroom_rows_show_the_bayes_limit_and_the_gap_recovered(tmp_path, monkeypatch):
    """With `joint` and `ume` in a sweep on synthetic data: the Bayes limit and, per variant, the fraction
    of the joint → ensemble gap it recovers (issue 20)."""
    import pyarrow.parquet as pq

    folder = make_golden(tmp_path / "runs")
    import pyarrow as pa
    import pyarrow.compute as pc

    epochs = pq.read_table(folder / "epochs.parquet")
    for column, value in (("bayes_acc", 0.95), ("bayes_acc/audio", 0.88), ("bayes_acc/video", 0.65)):
        epochs = epochs.append_column(column, pa.array([value] * len(epochs)))
    trials = pq.read_table(folder / "trials.parquet")
    ume = pc.fill_null(pc.equal(trials["params.alpha"], 1.0), False)  # α = 1.0 plays the ensemble: 0.70, 0.81, 0.89
    for column in ("label", "method"):
        trials = trials.set_column(trials.schema.get_field_index(column), column,
                                   pc.if_else(ume, pa.scalar("ume"), trials[column]))
    pq.write_table(epochs, folder / "epochs.parquet")
    pq.write_table(trials, folder / "trials.parquet")
    monkeypatch.chdir(tmp_path)
    text = write_report(str(folder), out=str(tmp_path / "r.md")).read_text()
    assert "**Bayes limit** of the generative model" in text and "joint 0.950; audio alone 0.880, video alone 0.650" in text
    header, rows = _table(text, "## Headroom")
    cells = {tuple(r[:2]): r[2:] for r in rows}
    assert cells[("Bayes limit", "")][:2] == ["0.950", "+0.250"]
    assert cells[("joint", "—")] == ["0.700", "+0.000", "—"]
    assert cells[("ume", "1.0")] == ["0.800", "+0.100", "1.00"]
    assert cells[("ogm", "0.5")] == ["0.753", "+0.053", "0.53"]  # (0.7533 − 0.70) / (0.80 − 0.70)
