"""Signed pickles (mmtune.sweep.signing): the per-user key, the signatures of a sweep folder, the
Tune callback that refreshes them, and `mmtune resume` refusing a folder whose pickles do not verify."""

from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from mmtune.errors import ConfigError
from mmtune.sweep import signing
from mmtune.sweep.signing import SIGNATURES_FILE, PickleSigner, check_folder, key_file, sign_folder, unverified_files


@pytest.fixture(autouse=True)
def own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


class Payload:
    """Unpickling it calls ``Path.touch(marker)``: what a crafted pickle in a sweep folder could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def sweep_folder(root: Path) -> Path:
    """The files of a sweep folder that matter here (contents are arbitrary bytes)."""
    files = {
        "tuner.pkl": b"tuner", "experiment_state-2026.json": b'{"trial_data": []}', "search_gen_state-2026.json": b"gen",
        "searcher-state-2026.pkl": b"searcher", "trial_1/error.pkl": b"error", "trial_1/checkpoint_000000/trial.pt": b"pt",
        "spec.json": b"{}", "driver.json": b"{}", "epochs.parquet": b"", ".damaged-ray-state-1/tuner.pkl": b"old",
    }
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return root


def test_the_key_is_created_once_for_its_owner_only():
    key = signing.load_key(create=True)
    path = key_file()
    assert len(key) == 32 and signing.load_key(create=False) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by its owner only.*chmod 600"):
        signing.load_key(create=False)


def test_the_pickles_resuming_reads_are_the_ones_signed(tmp_path):
    folder = sweep_folder(tmp_path / "sweep")
    assert sign_folder(str(folder)) == ["experiment_state-2026.json", "search_gen_state-2026.json",
                                        "searcher-state-2026.pkl", "trial_1/error.pkl", "tuner.pkl"]
    assert unverified_files(str(folder)) == []
    assert str(signing.load_key(create=False).hex()) not in (folder / SIGNATURES_FILE).read_text()


def test_a_replaced_added_or_foreign_pickle_does_not_verify(tmp_path, monkeypatch):
    folder = sweep_folder(tmp_path / "sweep")
    sign_folder(str(folder))
    (folder / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    (folder / "trial_1" / "checkpoint_000000" / "_dict_checkpoint.pkl").write_bytes(b"ray unpickles this on restore")
    assert unverified_files(str(folder)) == ["trial_1/checkpoint_000000/_dict_checkpoint.pkl (not signed)",
                                             "tuner.pkl (changed since mmtune signed it)"]
    with pytest.raises(ConfigError) as err:
        check_folder(str(folder))
    text = " ".join(str(err.value).split())
    assert "2 file(s) here that resuming unpickles do not verify" in text and "could run code as you" in text
    assert f"mmtune resume {folder} --trust-pickles" in text and "Reading it is safe" in text
    assert "- tuner.pkl: changed since mmtune signed it" in text and "characters)" not in text  # nothing cut
    assert not (tmp_path / "ran").exists()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "someone-else"))
    assert all("signed with another key" in line for line in unverified_files(str(folder)))


def test_a_checkpoint_folder_linked_elsewhere_does_not_verify(tmp_path):
    folder = sweep_folder(tmp_path / "sweep")
    sign_folder(str(folder))
    hidden = folder / ".elsewhere"
    hidden.mkdir()
    (hidden / "_dict_checkpoint.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "ran")))  # Ray would unpickle it
    checkpoint = folder / "trial_1" / "checkpoint_000000"
    (checkpoint / "trial.pt").unlink()
    checkpoint.rmdir()
    checkpoint.symlink_to(hidden, target_is_directory=True)
    assert unverified_files(str(folder)) == ["trial_1/checkpoint_000000 (a symbolic link: a sweep folder holds none)",
                                             "trial_1/checkpoint_000000/_dict_checkpoint.pkl (not signed)"]


def test_an_unsigned_folder_is_refused_until_the_user_trusts_it(tmp_path):
    folder = sweep_folder(tmp_path / "sweep")
    with pytest.raises(ConfigError, match=f"not signed: the folder has no {SIGNATURES_FILE}"):
        check_folder(str(folder))
    check_folder(str(folder), trust=True)  # --trust-pickles: the folder is signed with this user's key
    check_folder(str(folder))


def test_the_callback_signs_tunes_snapshots_and_pickles_without_the_key(tmp_path):
    staging, folder = sweep_folder(tmp_path / "staging"), tmp_path / "sweep"
    trials = [SimpleNamespace(storage=SimpleNamespace(experiment_driver_staging_path=str(staging)))]
    signer = PickleSigner(str(folder))
    signer.on_step_begin(iteration=1, trials=trials)
    assert signer.get_state() is None  # a snapshot asks for it after writing the experiment state: signed there
    for rel in ("tuner.pkl", "experiment_state-2026.json", "trial_1/error.pkl"):  # what Tune uploads
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes((staging / rel).read_bytes())
    assert unverified_files(str(folder)) == []
    first = (staging / "experiment_state-2026.json").read_bytes()
    (staging / "experiment_state-2026.json").write_bytes(b'{"trial_data": [1]}')  # the next snapshot
    signer.on_step_end(iteration=2, trials=trials)
    for content in (first, b'{"trial_data": [1]}'):  # the old one still verifies while the upload runs
        (folder / "experiment_state-2026.json").write_bytes(content)
        assert unverified_files(str(folder)) == []
    clone = pickle.loads(pickle.dumps(signer))  # it travels in tuner.pkl: the path, never the key
    assert vars(clone)["path"] == str(folder) and signing.load_key(create=False) not in pickle.dumps(signer)


# ------------------------------------------------------------------------------------- end to end
def quiet() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=120)


@pytest.mark.slow
def test_resume_never_unpickles_a_crafted_pickle_and_refuses_an_unsigned_folder(ray_session, tmp_path, capsys):
    from mmtune.cli import main
    from mmtune.sweep.spec import parse_spec
    from mmtune.sweep.tuner import run_sweep

    spec = parse_spec({"name": "signed", "method": "joint", "dataset": {"n_train": 256, "n_val": 96, "n_test": 96},
                       "train": {"epochs": 2, "lr": {"grid": [0.01, 1.0e12]}}, "max_failures": 0})
    out = run_sweep(spec, storage=str(tmp_path), console=quiet(), live=False)
    assert out.counts == {"TERMINATED": 1, "ERROR": 1}
    path = Path(out.path)
    kinds = {rel.split("/")[-1].split("-")[0] for rel in signing.pickle_files(signing._folder_files(out.path))}
    assert kinds == {"tuner.pkl", "experiment_state", "search_gen_state", "searcher", "error.pkl"}
    assert unverified_files(out.path) == []  # everything Tune wrote is signed, the errored trial's error.pkl too

    # A pickle changed in a folder this user signed: resume unpickles none of Tune's snapshot and rebuilds
    # the sweep from mmtune's own tables instead (the errored trial runs again and errs again: exit 1).
    (path / "tuner.pkl").write_bytes(pickle.dumps(Payload(tmp_path / "ran")))
    assert main(["resume", out.path, "--retry-errored"]) == 1
    text = " ".join(capsys.readouterr().out.split())
    assert "changed after mmtune last signed them (tuner.pkl)" in text and "not unpickled" in text, text
    assert "Rebuilding the sweep from its tables: 1 ended trial(s) kept, 1 trial(s) run again" in text, text
    assert not (tmp_path / "ran").exists()
    assert unverified_files(out.path) == []  # the crafted file was set aside; the rebuilt sweep is signed
    aside = [p for p in path.iterdir() if p.name.startswith(".damaged-ray-state-")]
    assert len(aside) == 1 and (aside[0] / "tuner.pkl").read_bytes() == pickle.dumps(Payload(tmp_path / "ran"))

    os.remove(path / SIGNATURES_FILE)  # a folder from before signing, or from someone else
    assert main(["resume", out.path, "--retry-errored"]) == 2
    assert f"no {SIGNATURES_FILE}" in capsys.readouterr().err
    assert main(["resume", out.path, "--retry-errored", "--trust-pickles"]) == 1  # resumed: the bad lr errs again
    assert unverified_files(out.path) == []  # adopted, and this session's snapshot signed too
