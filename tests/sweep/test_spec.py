"""Sweep specs: every problem reported at once with its YAML path/line, exact grid expansion, the
searchers' bookkeeping (grid exactly once; Optuna seeds, and stopped trials kept out of the posterior)."""

from __future__ import annotations

import itertools
import os
import textwrap
import time
from pathlib import Path

import pytest

from mmtune.cli import main
from mmtune.errors import ConfigError
from mmtune.sweep.spec import expand_grid, load_spec, optuna_base, parse_spec, smoke_spec

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "search_spaces").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_spec(write(tmp_path, text))
    return [str(p) for p in err.value.problems]


# ------------------------------------------------------------------------------------ validation
def test_every_problem_is_reported_at_once_with_paths_and_lines(tmp_path):
    got = problems(tmp_path, """\
        name: demo
        methd: ogm
        method: [joint, ogmm, {name: ge, method: ogm, params: {ge: true, alpha: {grid: [0.5, -1]}}}]
        dataset: {dominance: {grid: [1.0, 2.0]}, n_trian: 5}
        train: {epochs: 3, lr: {uniform: [0.1, 0.2]}}
        params:
          q_base: {grid: [0.1, 0.5]}
        seeds: [0, 0]
        search: {metric: test_acc}
        scheduler: {asha: {grace_period: 5}}
        resources: {cpu: -1}
        """)
    expected_prefixes = [
        "methd (line 2): unknown key. Did you mean 'method'?",
        "search.metric (line 9): 'test_acc' is a test metric",
        "method[1] (line 3): unknown method 'ogmm'. Did you mean 'ogm'?",
        "train.lr.uniform (line 5): a uniform domain needs search.algorithm: optuna",
        "seeds (line 8): has duplicates [0, 0]",
        "resources.cpu (line 11): must be a number of CPUs per trial in (0, 1024], got -1.",
        "dataset.n_trian (line 4): unknown key. Did you mean 'n_train'?",
        "params.q_base (line 7): is not a hyperparameter of method 'joint'.",
        "params.q_base (line 7): is not a hyperparameter of method 'ogm' (variant 'ge').",
        "method[2].params.alpha.grid[1] (line 3): must lie in (0, inf), got -1.0.",
        "scheduler.asha.grace_period (line 10): is 5 but train.epochs is 3",
    ]
    for prefix in expected_prefixes:
        assert sum(p.startswith(prefix) for p in got) == 1, (prefix, got)
    assert len(got) == len(expected_prefixes), got


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the spec file is empty"),
        ("# only a comment\n", "the spec holds no data"),
        ("- a\n- b\n", "a spec is a mapping of keys"),
        ("name: x\nmethod: [joint\n", "YAML syntax error (line 3, column 1)"),
        ("name: x\n  method: joint\n", "YAML syntax error (line 2"),
        ("method: joint\n", "name: is required"),
        ("name: x\n", "method: is required"),
        ("name: x\nmethod: joint\ntrain: {epochs: many}\n", "train.epochs (line 3): expected int"),
        ("name: x\nmethod: ogm\nparams: {alpha: {grid: []}}\n", "params.alpha.grid (line 3): must be a non-empty list"),
        ("name: x\nmethod: ogm\nparams: {alpha: {grid: [1, 1]}}\n", "has duplicate values"),
        ("name: x\nmethod: ogm\nparams: {alpha: {grid: [1], choice: [2]}}\n", "a domain has exactly one key"),
        ("name: x\nmethod: ogm\nsearch: {algorithm: optuna}\nparams: {alpha: {grid: [0.1, 0.2]}}\n", "Optuna cannot search a grid"),
        ("name: x\nmethod: ogm\nsearch: {algorithm: optuna}\nparams: {alpha: {uniform: [0.5, 0.1]}}\n", "`low < high` must hold"),
        ("name: x\nmethod: ogm\nsearch: {algorithm: optuna}\nparams: {alpha: {loguniform: [0, 1]}}\n", "log-uniform needs low > 0"),
        ("name: x\nmethod: ogm\nsearch: {algorithm: optuna}\nparams: {start_epoch: {int: [1, 2.5]}}\n", "integer bounds"),
        ("name: x\nmethod: ogm\nsearch: {algorithm: optuna}\nparams: {alpha: {uniform: [0.5, 5.0]}, k_form: {choice: [paper, nope]}}\n",
         "params.k_form.choice[1] (line 4): must be one of"),
        ("name: x\nmethod: [joint, ogm]\nsearch: {algorithm: optuna}\n", "an Optuna search tunes one method"),
        ("name: x\nmethod: joint\nsearch: {algorithm: bayes}\n", "search.algorithm (line 3): must be 'grid' or 'optuna'"),
        ("name: x\nmethod: joint\nsearch: {num_samples: 5}\n", "only applies to search.algorithm: optuna"),
        ("name: x\nmethod: joint\nsearch: {metric: train_loss}\n", "'train_loss' is not a validation metric"),
        ("name: x\nmethod: joint\nsearch: {mode: maximize}\n", "search.mode (line 3): must be 'max' or 'min'"),
        ("name: x\nmethod: joint\nscheduler: {hyperband: {}}\n", "scheduler.hyperband (line 3): unknown key"),
        ("name: x\nmethod: joint\nscheduler: {asha: {grace_perod: 2}}\n", "scheduler.asha.grace_perod (line 3): unknown key. Did you mean 'grace_period'?"),
        ("name: x\nmethod: joint\nscheduler: {asha: {reduction_factor: 1}}\n", "must be a number > 1"),
        ("name: x\nmethod: joint\nscheduler: {asha: {metric: val_map}}\n", "ASHA stops on the sweep's metric"),
        ("name: x\nmethod: joint\nresources: {gpus: 1}\n", "resources.gpus (line 3): unknown key. Did you mean 'gpu'?"),
        ("name: x\nmethod: joint\nresources: {gpu: 1.5}\n", "a fraction (<= 1) or a whole number of GPUs"),
        ("name: x\nmethod: joint\nseeds: 0\n", "seeds (line 3): a count must be in [1, 1,000], got 0."),
        ("name: x\nmethod: joint\nseeds: [0, -1]\n", "seeds[1] (line 3): must be a non-negative integer"),
        ("name: x\nmethod: joint\nmax_concurrent: 0\n", "max_concurrent (line 3): must be an integer >= 1"),
        ("name: x\nmethod: [joint, joint]\n", "two variants are named 'joint'"),
        ("name: x\nmethod: [{method: ogm, parms: {}}]\n", "method[0].parms (line 2): unknown key. Did you mean 'params'?"),
        ("name: x\nmethod: joint\nmodel: {fusion: {grid: [concat, mean]}}\n", "model.fusion.grid[1] (line 3): unknown fusion 'mean'"),
        ("name: x\nmethod: joint\ndataset: {name: imagenet}\n", "dataset.name (line 3): unknown dataset 'imagenet'"),
        ("name: x\nmethod: joint\ncheckpoint_every_s: -1\n", "checkpoint_every_s (line 3): must be a number of seconds >= 0"),
        ("name: x\nmethod: ogm\nparams: {alpha: {grid: [0.5, fast]}}\n", "params.alpha.grid[1] (line 3)"),
        ("name: x\nmethod: ogm\nparams: {tau: 0.5}\n", "params.tau (line 3): is not a hyperparameter of method 'ogm'"),
    ],
)
def test_malformed_specs_name_the_problem(tmp_path, text, expected):
    got = problems(tmp_path, text)
    assert any(expected in p for p in got), (expected, got)


LONG = "x" * 5000


@pytest.mark.parametrize("text", [f"name: x\nmethod: {LONG}\n", f"name: x\nmethod: joint\nmodel: {{fusion: {LONG}}}\n",
                                  f"name: x\nmethod: joint\nmodel: {{backbone: {LONG}}}\n"], ids=["method", "fusion", "backbone"])
def test_a_long_unknown_name_is_quoted_cut_in_its_problem(tmp_path, text):
    # Found by the spec fuzz: the unknown-name message quoted a 5,000-character method name in full.
    got = problems(tmp_path, text)
    assert len(got) == 1 and "unknown" in got[0] and "(5,002 characters)" in got[0], got
    assert len(got[0]) < 1_000


def test_validate_cli_exits_2_and_writes_nothing(tmp_path, capsys):
    spec = write(tmp_path, "name: x\nmethod: ogmm\n")
    before = set(os.listdir(tmp_path))
    assert main(["validate", str(spec)]) == 2
    assert main(["sweep", str(spec), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "method (line 2): unknown method 'ogmm'. Did you mean 'ogm'?" in err
    assert set(os.listdir(tmp_path)) == before  # no storage folder, no Ray session files
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such spec file" in capsys.readouterr().err


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_specs_validate(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out


def test_shipped_specs_cover_the_papers_ablations():
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "amss_tau", "amss_sampling", "amss_scope", "opm_ogm_sensitivity", "opm_plus_ogm",
            "fusion_method", "aim_ablation", "aim_label", "aim_start_epoch", "optuna_ogm_ge"} <= names


# ------------------------------------------------------------------ nothing escapes validation
BASE = "name: x\nmethod: ogm\ntrain: {epochs: 3}\n"
BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 10)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))


def problems_of_bytes(tmp_path: Path, raw: bytes) -> list[str]:
    path = tmp_path / "spec.yaml"
    path.write_bytes(raw)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert time.perf_counter() - start < 5  # refused before anything grows with the input
    return [str(p).replace(f"{path}: ", "") for p in err.value.problems]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (BASE.encode() + b"description: caf\xe9\n",
         "is not UTF-8 text: byte 0xe9 at offset 55 (line 4, byte 17 of the line) cannot be decoded. Save the file as UTF-8."),
        (BASE.encode() + b"description: a\x00b\n", "YAML cannot read the character U+0000 (line 4)"),
        (f"{BASE}params: {{alpha: {'[' * 3000}{']' * 3000}}}\n".encode(), "nests more than 32 levels deep (line 4)"),
        (f"{BASE}x: &a [a, a, a, a, a, a, a, a, a, a]\n{BOMB}".encode(),
         "holds 1,234,567,917 values with its aliases expanded (*a (line 5), *b (line 6), *c (line 7), …); "
         "a sweep spec is a few dozen lines, at most 10,000 values are allowed"),
        (f"{BASE}x: &r {{a: *r}}\n".encode(), "the value at line 4 contains itself through an alias"),
        (f"{BASE}description: 2024-01-01\n".encode(), "'2024-01-01' (line 4) reads as a date"),
        (f"{BASE}description: !!python/object:os.system x\n".encode(), "tag:yaml.org,2002:python/object:os.system' (line 4) is not supported"),
        (f"{BASE}max_failures: !!int abc\n".encode(), "'abc' (line 4) is not a valid !!int"),
        (f"{BASE}params: {{alpha: {{grid: [0.5], 1: 2}}}}\n".encode(), "params.alpha.1 (line 4): a key must be text, got int 1"),
        (f"{BASE}dataset: {{name: {{a: 1}}}}\n".encode(), "dataset.name (line 4): must be a dataset name such as 'synthetic'"),
        (f"{BASE}seeds: 1000000000\n".encode(), "seeds (line 4): a count must be in [1, 1,000], got 1000000000."),
        (f"{BASE}seeds: {10**30}\n".encode(), "seeds (line 4): must fit in a 64-bit integer (|x| < 2**63)"),
        (f"{BASE}seeds: [{2**64}]\n".encode(), "seeds[0] (line 4): must fit in a 64-bit integer"),
        (f"{BASE}seeds: [{2**63 - 1}]\n".encode(), "seeds[0] (line 4): must be a non-negative integer below 2**63 - 2**20"),
        (f"{BASE}search: {{algorithm: optuna}}\nparams: {{start_epoch: {{int: [1, {10**20}]}}}}\n".encode(),
         "params.start_epoch.int[1] (line 5): must fit in a 64-bit integer"),
        (f"{BASE}params: {{alpha: 0.5}}\nparams: {{alpha: 0.9}}\n".encode(),
         "params: is given twice (lines 4 and 5); YAML would silently keep only the last. Remove one."),
        (f"{BASE}resources: {{cpu: .nan}}\n".encode(), "resources.cpu (line 4): must be a finite number, got nan."),
        (f"{BASE}resources: {{cpu: 0}}\n".encode(), "resources.cpu (line 4): must be a number of CPUs per trial in (0, 1024], got 0."),
        (f"{BASE}resources: {{gpu: .inf}}\n".encode(), "resources.gpu (line 4): must be a finite number, got inf."),
        (f"{BASE}scheduler: {{asha: {{reduction_factor: .nan}}}}\n".encode(),
         "scheduler.asha.reduction_factor (line 4): must be a finite number, got nan."),
        (f"{BASE}scheduler: {{asha: {{grace_period: {2**64}}}}}\n".encode(), "scheduler.asha.grace_period (line 4): must fit in a 64-bit"),
        (f"{BASE}checkpoint_every_s: .nan\n".encode(), "checkpoint_every_s (line 4): must be a finite number, got nan."),
        (f"{BASE}search: {{metric: val_nonexistent}}\n".encode(),
         "search.metric (line 4): 'val_nonexistent' is not reported by the trials of ogm. They report best_val_acc, "
         "best_val_macro_f1, best_val_map, val_acc, val_acc/audio, val_acc/video, val_macro_f1, val_map."),
        (f"{BASE}search: {{metric: val_probe/audio}}\n".encode(), "'val_probe/audio' is not reported by the trials of ogm"),
        (f"{BASE}search: {{seed: {2**32}}}\n".encode(), "search.seed (line 4): must be an integer in [0, 4,294,967,295]"),
        (BASE.replace("{epochs: 3}", "{epochs: 3, lr: 1e-3}").encode(),
         "train.lr (line 3): expected float, got '1e-3' (str). YAML reads '1e-3' as text; write 1.0e-3 for the number."),
        (BASE.replace("{epochs: 3}", "{epochs: 3, lr: .nan}").encode(), "train.lr (line 3): must be a finite number, got nan."),
        (BASE.replace("{epochs: 3}", f"{{epochs: 3, batch_size: {2**63}}}").encode(), "train.batch_size (line 3): must fit in a 64-bit"),
        (BASE.replace("{epochs: 3}", f"{{epochs: 3, lr: {10**400}}}").encode(), "train.lr (line 3): must fit in a 64-bit integer"),
        (BASE.replace("{epochs: 3}", "{epochs: {grid: [3, 4]}}").encode(), "train.epochs (line 3): must be one number for the whole sweep"),
        (f"{BASE}model: {{weights: {{audio: /nonexistent.pt}}}}\n".encode(),
         "model.weights.audio (line 4): no such weights file or folder: '/nonexistent.pt'."),
        (f"{BASE}dataset: {{n_train: 100000000000000}}\n".encode(), "dataset (line 4): the trial would need about 102.4 PB"),
        (f"{BASE}params: {{modality: text}}\n".replace("ogm", "unimodal").encode(),
         "params.modality (line 4): 'text' is not a modality of this dataset: ['audio', 'video']."),
        (f"{BASE}method: amss\nparams: {{fixed_p: {{audio: .nan}}}}\n".replace("method: ogm\n", "").encode(),
         "params.fixed_p.audio (line 4): must be a finite number, got nan."),
    ],
    ids=["byte-e9", "nul", "3000-brackets", "alias-bomb", "recursive-alias", "date", "python-tag", "bad-int-tag", "int-key",
         "dataset-name-mapping", "seeds-1e9", "seeds-1e30", "seed-2**64", "seed-near-2**63", "int-domain-1e20", "duplicate-key",
         "cpu-nan", "cpu-0", "gpu-inf", "reduction-factor-nan", "grace-period-2**64", "checkpoint-nan", "unknown-metric",
         "probe-metric-without-probe", "search-seed-2**32", "lr-1e-3", "lr-nan", "batch-size-2**63", "lr-10**400",
         "epochs-grid", "missing-weights", "n-train-1e14", "unimodal-modality", "fixed-p-nan"],
)
def test_what_would_fail_later_is_refused_by_validation(tmp_path, raw, expected):
    got = problems_of_bytes(tmp_path, raw)
    assert any(expected in p for p in got), (expected, got)


def test_sizes_are_counted_before_anything_expands(tmp_path):
    values = ", ".join(f"0.{i:02d}" for i in range(1, 31))
    axes = ", ".join(f"{k}: {{grid: [{values}]}}" for k in ("alpha", "gamma", "beta", "eta", "delta"))
    spec = f"name: x\nmethod: joint\nparams: {{{axes}}}\nseeds: 30\n"
    got = problems_of_bytes(tmp_path, spec.encode())
    assert got == ["the sweep would run 729,000,000 trials (24,300,000 configurations (params.alpha 30 × params.gamma 30 × "
                   "params.beta 30 × params.eta 30 × params.delta 30) × 30 seeds); at most 10,000 are allowed. Shrink the grid "
                   "or the seeds, or split it into several sweeps."], got
    fine = parse_spec({"name": "x", "method": "joint", "params": {"start_epoch": {"grid": list(range(1, 101))}}, "seeds": 100})
    assert fine.num_trials() == 10_000 and len(expand_grid(fine)) == 10_000


def test_messages_stay_readable_whatever_the_value(tmp_path):
    long = ", ".join(["x" * 200] * 40)
    got = problems_of_bytes(tmp_path, f"name: x\nmethod: ogm\nparams: {{alpha: {{grid: [{long}]}}}}\n".encode())
    assert got and all(len(p) < 400 for p in got), got
    assert "… (8," in got[0]  # cut, with the length it had
    (tmp_path / "many.yaml").write_text("name: x\nmethod: ogm\n" + "".join(f"k{i}: 1\n" for i in range(500)))
    with pytest.raises(ConfigError) as err:
        load_spec(tmp_path / "many.yaml")
    assert len(err.value.problems) == 500  # all kept; the message lists 50
    lines = str(err.value).splitlines()
    assert len(lines) == 51 and lines[-1] == "  … and 450 more problems. Fix these first."


def test_values_only_wrong_together_are_found_in_every_configuration(tmp_path):
    got = problems(tmp_path, "name: x\nmethod: joint\ndataset: {dim: {grid: [64, 8]}, latent_dim: {grid: [4, 16]}}\n")
    assert got == ["dataset.latent_dim (line 3): must be <= dim = 8, got 16. (in the configuration of variant 'joint' with "
                   "dataset.dim=8, dataset.latent_dim=16)"], got


def test_anchors_and_merge_keys_within_the_budget_are_fine(tmp_path):
    spec = load_spec(write(tmp_path, """\
        name: x
        method: [joint, {name: ogm-a, method: ogm, params: &p {alpha: 0.5, start_epoch: 2}},
                 {name: ogm-b, method: ogm, params: {<<: *p, alpha: 0.9}}]
        train: {epochs: 3}
        """))
    assert [e.params for e in spec.methods] == [{}, {"alpha": 0.5, "start_epoch": 2}, {"alpha": 0.9, "start_epoch": 2}]


def test_the_metric_may_name_a_modality_or_the_probe_when_trials_report_it(tmp_path):
    assert load_spec(write(tmp_path, "name: x\nmethod: joint\nsearch: {metric: val_acc/video}\n")).metric == "val_acc/video"
    spec = "name: x\nmethod: joint\ntrain: {probe: true}\nsearch: {metric: val_probe/audio}\n"
    assert load_spec(write(tmp_path, spec)).metric == "val_probe/audio"
    got = problems(tmp_path, "name: x\nmethod: [joint, {method: unimodal, params: {modality: audio}}]\nsearch: {metric: val_acc/video}\n")
    assert any("'val_acc/video' is not reported by the trials of unimodal" in p for p in got), got


def test_plain_data_from_python_is_bounded_too():
    looped: dict = {"name": "x", "method": "joint"}
    looped["params"] = {"a": looped}
    with pytest.raises(ConfigError, match="contains itself"):
        parse_spec(looped)
    shared: list = [1] * 10
    for _ in range(8):
        shared = [shared] * 10
    with pytest.raises(ConfigError, match="holds more than 10,000 values"):
        parse_spec({"name": "x", "method": "joint", "description": shared})


# ------------------------------------------------------------------------------------- expansion
def test_grid_expansion_is_every_combination_times_every_seed_once():
    spec = parse_spec({
        "name": "g",
        "method": ["joint", {"name": "ogm-ge", "method": "ogm", "params": {"ge": True, "alpha": {"grid": [0.2, 0.8]}}}],
        "model": {"fusion": {"grid": ["concat", "sum", "late"]}},
        "train": {"epochs": 2, "lr": {"grid": [0.1, 0.01]}},
        "seeds": [3, 4],
    })
    trials = expand_grid(spec)
    key = lambda t: (t["label"], t["model"]["fusion"], t["train"]["lr"], t["params"].get("alpha"), t["seed"])  # noqa: E731
    expected = {("joint", f, lr, None, s) for f, lr, s in itertools.product(["concat", "sum", "late"], [0.1, 0.01], [3, 4])}
    expected |= {("ogm-ge", f, lr, a, s) for f, lr, a, s in itertools.product(["concat", "sum", "late"], [0.1, 0.01], [0.2, 0.8], [3, 4])}
    assert [key(t) for t in trials] == sorted(expected, key=lambda k: [key(t) for t in trials].index(k))  # no duplicates
    assert {key(t) for t in trials} == expected and len(trials) == len(expected) == spec.num_trials() == 36
    assert all(t["params"]["ge"] is True for t in trials if t["label"] == "ogm-ge")
    assert all(t["method"] == "ogm" for t in trials if t["label"] == "ogm-ge")
    assert trials[0]["seed"] == 3 and trials[1]["seed"] == 4 and key(trials[0])[:4] == key(trials[1])[:4]  # seeds innermost
    assert spec.axes() == ["label", "model.fusion", "train.lr", "params.alpha"]
    from mmtune.engine.trial import parse_trial_config

    for t in trials:  # every expanded config is a valid trial config as Ray will hand it over
        parse_trial_config(t)


def test_optuna_base_splits_fixed_values_and_space():
    spec = parse_spec({
        "name": "o", "method": {"name": "ogm-ge", "method": "ogm", "params": {"ge": True}},
        "train": {"epochs": 6}, "params": {"alpha": {"loguniform": [0.05, 2.0]}, "start_epoch": {"int": [1, 4]}},
        "search": {"algorithm": "optuna", "num_samples": 5}, "seeds": 3,
    })
    fixed, space = optuna_base(spec)
    assert fixed["method"] == "ogm" and fixed["label"] == "ogm-ge" and fixed["params"] == {"ge": True}
    assert set(space["params"]) == {"alpha", "start_epoch"}
    assert space["params"]["start_epoch"].upper == 5  # spec bounds are inclusive, Tune's randint is not
    assert spec.num_trials() == 15


def test_smoke_spec_shrinks_every_trial():
    spec = parse_spec({"name": "s", "method": "joint", "train": {"epochs": 30}, "seeds": [4, 5, 6],
                       "params": {"start_epoch": {"grid": [1, 2]}}, "scheduler": {"asha": {"grace_period": 5}}})
    small = smoke_spec(spec)
    assert small.epochs == 2 and small.seeds == (4,) and small.asha["grace_period"] == 1
    assert small.sections["dataset"]["n_train"] == 256
    assert len(expand_grid(small)) == 2 and spec.epochs == 30  # the original is untouched


def test_smoke_spec_runs_at_least_the_epochs_a_staged_method_needs():
    import mmtune.trainables  # noqa: F401  registers umt, ume

    def smoke_epochs(method, params=None, epochs=30):
        return smoke_spec(parse_spec({"name": "s", "method": method, "train": {"epochs": epochs},
                                      "params": params or {}})).epochs

    assert smoke_epochs("umt") == 3  # a teacher per modality, then the student
    assert smoke_epochs("umt", {"teacher_epochs": [2, 1]}) == 4
    assert smoke_epochs("ume") == 2 and smoke_epochs("joint") == 2
    assert smoke_epochs("umt", epochs=3) == 3 and smoke_epochs("joint", epochs=1) == 1  # never more than the spec's


# ------------------------------------------------------------------------------------- searchers
def test_trial_list_searcher_hands_out_each_config_once_and_survives_a_restore(tmp_path):
    from mmtune.sweep.tuner import TrialListSearcher

    configs = [{"seed": i} for i in range(3)]
    s = TrialListSearcher(configs)
    assert s.suggest("a") == {"seed": 0}
    assert s.suggest("a") == {"seed": 0}  # asking again for the same trial is not a new trial
    assert s.suggest("b") == {"seed": 1}
    s.save(str(tmp_path / "state.pkl"))
    t = TrialListSearcher([])
    t.restore(str(tmp_path / "state.pkl"))
    assert t.suggest("c") == {"seed": 2}
    assert t.suggest("d") == TrialListSearcher.FINISHED


def test_seeded_optuna_runs_each_sample_per_seed_and_keeps_stopped_trials_out_of_the_posterior():
    import optuna

    from mmtune.sweep.tuner import SeededOptunaSearcher

    spec = parse_spec({
        "name": "o", "method": "ogm", "train": {"epochs": 4}, "params": {"alpha": {"uniform": [0.1, 1.0]}},
        "search": {"algorithm": "optuna", "num_samples": 3, "metric": "val_acc"}, "seeds": [0, 1],
    })
    fixed, space = optuna_base(spec)
    s = SeededOptunaSearcher(fixed=fixed, space=space, seeds=[0, 1], num_samples=3, metric="val_acc", mode="max", max_epochs=4)
    configs = {tid: s.suggest(tid) for tid in ["t0", "t1", "t2", "t3", "t4", "t5"]}
    assert s.suggest("t6") == s.FINISHED
    assert [c["seed"] for c in configs.values()] == [0, 1, 0, 1, 0, 1]
    alphas = [c["params"]["alpha"] for c in configs.values()]
    assert alphas[0] == alphas[1] and alphas[2] == alphas[3] and alphas[4] == alphas[5] and len(set(alphas)) == 3
    assert all(c["method"] == "ogm" and c["train"]["epochs"] == 4 for c in configs.values())

    finished = {"val_acc": 0.6, "training_iteration": 4}
    s.on_trial_complete("t0", finished)
    study = s.base._ot_study
    assert all(t.state == optuna.trial.TrialState.RUNNING for t in study.trials)  # nothing told until both seeds end
    s.on_trial_complete("t1", {"val_acc": 0.8, "training_iteration": 4})
    s.on_trial_complete("t2", {"val_acc": 0.9, "training_iteration": 4})
    s.on_trial_complete("t3", {"val_acc": 0.2, "training_iteration": 2})  # ASHA stopped seed 1 at epoch 2
    s.on_trial_complete("t4", {"val_acc": 0.7, "training_iteration": 4})
    s.on_trial_complete("t5", None, error=True)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL]
    assert study.trials[0].value == pytest.approx(0.7)  # the seed mean
    assert study.trials[1].value is None  # the truncated 0.9/0.2 never reached the posterior


def test_relative_paths_become_absolute_for_trials_that_run_in_their_own_folder(tmp_path, monkeypatch):
    from mmtune.sweep.tuner import absolute_paths

    monkeypatch.chdir(tmp_path)
    config = {"dataset": {"name": "cremad", "root": "data/CREMA-D", "cache_dir": "/abs/cache", "tokenizer": ""},
              "model": {"weights": {"audio": "w/a.pt", "video": "s3://bucket/v.pt"}}, "train": {"epochs": 1}}
    out = absolute_paths(config)
    assert out["dataset"]["root"] == str(tmp_path / "data" / "CREMA-D")
    assert out["dataset"]["cache_dir"] == "/abs/cache" and out["dataset"]["tokenizer"] == ""
    assert out["model"]["weights"] == {"audio": str(tmp_path / "w" / "a.pt"), "video": "s3://bucket/v.pt"}
    assert config["dataset"]["root"] == "data/CREMA-D"  # the spec itself is left as written
