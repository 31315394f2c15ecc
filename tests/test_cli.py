"""`mmtune run` / `mmtune methods` end to end, including every error path (exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmtune.cli import apply_overrides, main, parse_value

TINY = ["dataset.n_train=256", "dataset.n_val=96", "dataset.n_test=96", "train.batch_size=32"]
DESIGN_KEYS = ["epoch", "train_loss", "val_acc", "val_macro_f1", "val_map", "test_acc", "test_macro_f1", "test_map",
               "val_acc/audio", "val_acc/video", "imbalance/audio", "imbalance/video", "epoch_s", "samples_per_s",
               "best_val_acc", "best_epoch", "test_acc_at_best_val"]


def run_json(capsys, *args) -> dict:
    assert main(["run", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_run_json_reports_every_metric_and_is_deterministic(capsys):
    first = run_json(capsys, "joint", "train.epochs=2", "seed=0", *TINY)
    second = run_json(capsys, "joint", "train.epochs=2", "seed=0", *TINY)
    for key in DESIGN_KEYS:
        assert key in first
    timing = {"epoch_s", "samples_per_s", "wall_s"}
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in second.items() if k not in timing}
    assert first["epoch"] == 2


def test_overrides_reach_the_trial(capsys):
    out = run_json(capsys, "unimodal", "modality=audio", "train.epochs=1", "model.fusion=sum", *TINY)
    assert "val_acc/audio" in out and "val_acc/video" not in out


def test_run_prints_every_column_whole_when_not_a_terminal(capsys):
    """A pipe or log file gets one aligned line per epoch, trace columns included, never squeezed into '…'."""
    assert main(["run", "amss", "train.epochs=2", *TINY]) == 0
    out = capsys.readouterr().out
    assert "…" not in out
    lines = out.splitlines()
    header = next(line for line in lines if line.split()[:2] == ["ep", "loss"])
    for key in ["val/audio", "val/video", "xi/audio", "u/video", "p/audio", "p/video"]:
        assert key in header.split()
    rows = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"])]
    assert [r[0] for r in rows] == ["1", "2"]
    assert all(len(r) == len(header.split()) for r in rows)
    assert all(0.0 <= float(p) <= 1.0 for r in rows for p in r[-2:])


@pytest.mark.parametrize(
    "args,needles",
    [
        (["joint", "bogus_key=1"], ["bogus_key", "start_epoch"]),
        (["jiont"], ["jiont", "Did you mean 'joint'"]),
        (["joint", "epocs=3"], ["epocs", "train.epochs"]),
        (["joint", "train.lr=-1", "model.fusion=concatt"], ["train.lr", "(0, inf)", "model.fusion", "'concat'"]),
        (["joint", "trian.epochs=3"], ["trian", "dataset, model, train, params"]),
        (["joint", "noequals"], ["noequals", "key=value"]),
        (["joint", "dataset.name=cremd"], ["dataset.name", "Did you mean 'cremad'"]),
    ],
)
def test_bad_input_exits_2_naming_the_problem(capsys, args, needles):
    assert main(["run", *args]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err
    assert "Traceback" not in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "run", "joint", "bogus_key=1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "bogus_key" in proc.stderr and "Traceback" not in proc.stderr


def test_methods_lists_each_method_with_hyperparameters(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for needle in ["joint", "unimodal", "start_epoch", "end_epoch", "modality"]:
        assert needle in out


def test_parse_value_types():
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5 and parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[audio, video]") == ["audio", "video"] and parse_value("sum") == "sum"


def test_apply_overrides_nests_sections_and_params():
    config, problems = apply_overrides({}, ["train.lr=0.1", "alpha=0.8", "seed=2", "dataset.modalities=[a, b]"])
    assert not problems
    assert config == {"train": {"lr": 0.1}, "params": {"alpha": 0.8}, "seed": 2, "dataset": {"modalities": ["a", "b"]}}


# ----------------------------------------------------------------------------- sweep overrides, did-you-mean


def console_script(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The installed `mmtune` console script, as a user runs it."""
    exe = str(__import__("pathlib").Path(sys.executable).with_name("mmtune"))
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_a_bare_key_that_is_a_section_key_suggests_the_section_key():
    out = console_script("run", "joint", "epochs=3")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "Did you mean 'train.epochs'?" in out.stderr and "end_epoch" not in out.stderr.split("Did you mean")[1].split("?")[0]


def test_method_is_not_an_override():
    out = console_script("run", "joint", "method=ogm", "train.epochs=1")
    assert out.returncode == 2 and "first argument" in out.stderr


def test_sweep_overrides_are_validated_like_run_and_recorded(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmethod: [joint]\ndataset: {name: synthetic}\ntrain: {epochs: 20}\nseeds: [0]\n")
    out = console_script("validate", str(spec))  # validate takes no overrides: the file as is
    assert out.returncode == 0 and "20 epochs each" in out.stdout
    from mmtune.cli import load_spec_with_overrides

    overridden = load_spec_with_overrides(str(spec), ["train.epochs=3", "seeds=[0, 1]", "dataset.n_train=64"])
    assert overridden.epochs == 3 and list(overridden.seeds) == [0, 1]
    assert overridden.source["train"]["epochs"] == 3 and overridden.source["dataset"]["n_train"] == 64
    bad = console_script("sweep", str(spec), "epochs=5", "--storage", str(tmp_path / "runs"))
    assert bad.returncode == 2 and "Did you mean 'train.epochs'?" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "runs").exists()  # nothing started or written
    bad = console_script("sweep", str(spec), "train.epochz=5", "--storage", str(tmp_path / "runs"))
    assert bad.returncode == 2 and "train.epochz" in bad.stderr and "epochs" in bad.stderr


def _fake_sweep(storage, name: str, *, damaged: bool = False) -> None:
    """A sweep folder with a small trials table, as the writer leaves it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mmtune.store.schema import SCHEMA_VERSION, TRIALS_FILE, VERSION_KEY

    folder = storage / name
    folder.mkdir(parents=True)
    table = pa.table({"status": ["TERMINATED"], "epochs_run": [3], "max_epochs": [3]})
    pq.write_table(table.replace_schema_metadata({VERSION_KEY: str(SCHEMA_VERSION).encode()}), folder / TRIALS_FILE)
    if damaged:
        data = bytearray((folder / TRIALS_FILE).read_bytes())
        data[8:40] = b"\xff" * 32
        (folder / TRIALS_FILE).write_bytes(bytes(data))


def test_ls_takes_the_storage_as_an_argument_and_never_tracebacks(tmp_path):
    out = console_script("ls", cwd=tmp_path)  # no runs/ here
    assert out.returncode == 2 and "Traceback" not in out.stderr and "no such storage folder" in out.stderr
    long = "quickstart-20261207-101112-with-a-long-name"
    _fake_sweep(tmp_path / "store", long)
    _fake_sweep(tmp_path / "store", "broken", damaged=True)
    out = console_script("ls", str(tmp_path / "store"))  # piped: whole names, tab-separated
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in out.stdout.splitlines()}
    assert rows[long][1:3] == ["1", "TERMINATED 1"]
    assert "DAMAGED" in rows["broken"][2] and "trials.parquet" in rows["broken"][2]
    assert console_script("ls", "--storage", str(tmp_path / "store")).stdout == out.stdout


def test_methods_shows_text_literally_and_defaults_as_yaml():
    out = console_script("methods", "amss")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "[p_min, p_max]" in text  # was eaten as rich markup: "clip p to ; null = …"
    assert "clamp null" in text and "plus false" in text and "None" not in text and "True" not in text
    assert "ogm" not in out.stdout.split("—")[0]  # only the method asked for
    out = console_script("methods", "opm+amss")
    assert out.returncode == 0 and "opm.lam" in out.stdout and "amss.lam" in out.stdout
    out = console_script("methods", "ogmm")
    assert out.returncode == 2 and "Did you mean 'ogm'?" in out.stderr and "Traceback" not in out.stderr


def test_a_wrong_address_is_one_clear_error_in_seconds(tmp_path):
    import time

    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nmethod: [joint]\ndataset: {name: synthetic}\ntrain: {epochs: 1}\nseeds: [0]\n")
    start = time.monotonic()
    out = console_script("sweep", str(spec), "--address", "127.0.0.1:1", "--storage", str(tmp_path / "runs"))
    assert time.monotonic() - start < 15
    assert out.returncode == 2 and "Traceback" not in out.stderr and "GCS" not in out.stderr
    assert "127.0.0.1:1" in out.stderr and "ray start --head" in out.stderr
    assert not (tmp_path / "runs").exists()
    out = console_script("sweep", str(spec), "--address", "nonsense", "--storage", str(tmp_path / "runs"))
    assert out.returncode == 2 and "not HOST:PORT" in out.stderr


@pytest.mark.parametrize("name", ["../escaped", "a/b", "/tmp/abs", "..", ".hidden", "x\n"])
def test_sweep_name_is_one_plain_folder_name_and_nothing_is_written(tmp_path, capsys, name):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: ok\nmethod: joint\ntrain: {epochs: 1}\n")
    (tmp_path / "work").mkdir()
    storage = tmp_path / "work" / "runs"
    assert main(["sweep", str(spec), "--storage", str(storage), "--name", name]) == 2
    assert "--name: must be a plain folder name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["spec.yaml", "work"]  # no spec.json anywhere


def test_run_sweep_refuses_a_name_that_leaves_the_storage(tmp_path):
    from mmtune.errors import ConfigError
    from mmtune.sweep.spec import parse_spec
    from mmtune.sweep.tuner import run_sweep

    with pytest.raises(ConfigError, match="plain folder name"):
        run_sweep(parse_spec({"name": "ok", "method": "joint"}), storage=str(tmp_path / "runs"), name="../x")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- nothing escapes (issue 23)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["train.batch_size=9223372036854775808"], ["train.batch_size", "must fit in a 64-bit integer"]),
        (["seed=18446744073709551616"], ["seed", "below 2**63 - 2**20"]),
        (["dataset.seed=18446744073709551616"], ["dataset.seed", "must fit in a 64-bit integer"]),
        (["dataset.n_train=100000000000000"], ["dataset: the trial would need about 102.4 PB", "Lower dataset.n_train"]),
        (["model.hidden_dim=1000000000"], ["dataset: the trial would need about", "for the MLP"]),
        (["model.weights.audio=/nonexistent.pt"], ["model.weights.audio: no such weights file or folder: '/nonexistent.pt'."]),
        (["dataset.name={a: 1}"], ["dataset.name: must be a dataset name such as 'synthetic'"]),
        (["train.lr=.nan"], ["train.lr: must be a finite number"]),
        (["model.backbones=" + "[" * 3000 + "]" * 3000], ["model.backbones: expected mapping of str to str, got '[[[[[["]),
        (["dataset.modalities=[&a [x, x, x, x], &b [*a, *a, *a, *a], &c [*b, *b, *b, *b], *c, *c, *c, *c, *c, *c]"],
         ["dataset.modalities: expected list of str"]),
    ],
    ids=["batch-size-2**63", "seed-2**64", "data-seed-2**64", "n-train-1e14", "hidden-1e9", "missing-weights", "dataset-name-mapping",
         "lr-nan", "3000-brackets", "alias-bomb"],
)
def test_bad_overrides_exit_2_naming_the_key(capsys, args, needles):
    assert main(["run", "joint", *args]) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    assert "Traceback" not in err and len(err) < 2_000


def test_validate_names_the_byte_that_is_not_utf8(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(b"name: caf\xe9\nmethod: joint\n")
    assert main(["validate", str(spec)]) == 2
    assert "byte 0xe9 at offset 9 (line 1, byte 10 of the line) cannot be decoded. Save the file as UTF-8." in capsys.readouterr().err


def test_an_encoder_problem_names_the_model_key(tmp_path):
    from mmtune.data import dataset_config
    from mmtune.errors import ConfigError
    from mmtune.models import ModelConfig, build_model

    weights = tmp_path / "w.pt"
    weights.write_bytes(b"")
    cfg = ModelConfig(backbone="mlp", weights={"audio": str(weights)})
    shapes = {m: dataset_config({}).input_shape(m) for m in ("audio", "video")}
    with pytest.raises(ConfigError) as err:
        build_model(cfg, input_shapes=shapes, num_classes=3)
    assert [p.path for p in err.value.problems] == ["model.weights.audio"]
