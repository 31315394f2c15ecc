"""Signed pickles: ``mmtune resume`` unpickles only what mmtune itself wrote, on this machine, for you.

Resuming a sweep unpickles files from its folder: Ray's ``tuner.pkl`` (the run configuration),
the experiment snapshot ``experiment_state-*.json`` (trial fields are cloudpickled inside it), the
search-algorithm and searcher states (``search_gen_state-*.json``, ``searcher-state-*.pkl``), the
callbacks' state (``callback-states-*.pkl``), and each errored trial's ``error.pkl``. Unpickling runs
whatever code the file names, so a sweep folder someone sent you, or one whose files were swapped,
could run code as you on ``mmtune resume``. Trust model:

* **Key.** A per-user secret, 32 random bytes, created on first use with mode 0600 at
  ``$XDG_CONFIG_HOME/mmtune/signing.key`` (default ``~/.config/mmtune/signing.key``). It never goes
  into a sweep folder, a pickle or a log.
* **Signatures.** An HMAC-SHA256 over (path in the sweep folder, content) of every file that resuming
  may unpickle (:func:`is_pickle_file`: ``*.pkl`` at any depth, and Tune's pickle-bearing JSON at the
  top), kept in ``pickle-signatures.hmac`` (JSON) in the sweep folder. They are
  refreshed whenever the files are written: ``tuner.pkl`` as soon as the Tuner writes it
  (:func:`sign_folder`), the snapshot files as every experiment snapshot writes them
  (:class:`PickleSigner`, a Tune callback: its ``get_state``, which the snapshot calls after writing
  the experiment and searcher state, and the same step's ``on_step_end``, after the callbacks'
  state), and at the end of every fit, a Ctrl-C / SIGTERM stop included (``on_experiment_end``,
  after Tune's last snapshot). Tune writes snapshots to a local staging folder and copies them to the
  sweep folder in the background; the signatures are of the staging copies, and the last
  :data:`KEPT` signatures of each file are kept, so a driver killed mid-copy leaves a folder that
  still verifies.
* **Verification.** Before ``Tuner.restore``, :func:`check_folder` requires every such file to
  carry a signature made with this key, and otherwise raises a :class:`ConfigError` naming each file
  and why (not signed, changed since mmtune signed it, signed with another key). ``mmtune resume
  --trust-pickles`` is the explicit opt-in for a folder whose writer you trust: its files are then
  signed with your key, so later resumes verify.

Reading a sweep never unpickles anything: ``mmtune report`` and ``mmtune ls`` read the Parquet
tables and ``spec.json``. Trial checkpoints (``trial.pt``) are not signed: they load with
``torch.load(weights_only=True)``, which refuses any pickled object beyond tensors and plain values.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ray.tune import Callback

from mmtune.errors import ConfigError, Problem

__all__ = ["SIGNATURES_FILE", "PickleSigner", "check_folder", "is_pickle_file", "key_file", "pickle_files",
           "sign_folder", "unverified_files"]

# Not *.json: Tune copies the top-level *.json and *.pkl of a restored experiment into its staging
# folder and uploads that folder after each snapshot, which would put a stale copy over this file.
log = logging.getLogger(__name__)

SIGNATURES_FILE = "pickle-signatures.hmac"
# Tune's JSON files that hold pickles (experiment_state: cloudpickled trial fields; the others are
# cloudpickles named .json). mmtune's own JSON (spec.json, driver.json) is read with json.loads.
TUNE_PICKLED_JSON = ("experiment_state-", "search_gen_state-", "basic-variant-state-")
KEPT = 8  # signatures kept per file (see the module docstring: snapshots still being copied)
SHOWN = 10  # files an error names before "and N more"
_DOMAIN = b"mmtune sweep pickle v1\0"


# ----------------------------------------------------------------------------------------- the key
def key_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "mmtune" / "signing.key"


def load_key(*, create: bool) -> bytes | None:
    """This user's signing key; created (0600, folder 0700) when ``create`` and absent, else None."""
    path = key_file()
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return _create_key(path) if create else None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        key = f.read()
    if st.st_mode & 0o077 or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise ConfigError(Problem(str(path), (
            f"mmtune's signing key must be readable by its owner only, but it has mode {st.st_mode & 0o777:o} "
            f"(owner uid {st.st_uid}): whoever can read it can sign pickles that `mmtune resume` then runs. "
            f"As its owner, run: chmod 600 {path}")))
    if len(key) < 32:
        raise ConfigError(Problem(str(path), (
            f"is not an mmtune signing key ({len(key)} bytes, expected 32). Delete it to get a new one (sweeps "
            "signed with the old key then need `mmtune resume --trust-pickles` once).")))
    return key


def _create_key(path: Path) -> bytes:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    try:
        os.link(tmp, path)  # appears whole, and never replaces a key another process just created
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    key = load_key(create=False)
    assert key is not None
    return key


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"mmtune key id\0" + key).hexdigest()[:16]


def _signature(key: bytes, rel: str, content: bytes) -> str:
    return hmac.new(key, _DOMAIN + rel.encode() + b"\0" + content, hashlib.sha256).hexdigest()


# ------------------------------------------------------------------------------------ which files
def is_pickle_file(rel: str) -> bool:
    """Whether resuming may unpickle the file at ``rel`` (a '/'-separated path in the sweep folder)."""
    parts = rel.split("/")
    if any(p.startswith(".") for p in parts):  # temporary files: Tune's loaders never match hidden names
        return False
    name = parts[-1]
    return name.endswith(".pkl") or (len(parts) == 1 and name.endswith(".json") and name.startswith(TUNE_PICKLED_JSON))


def pickle_files(rels: Iterable[str]) -> list[str]:
    return sorted(r for r in rels if is_pickle_file(r))


# ----------------------------------------------------------------------------- the sweep folder
def _filesystem(path: str):
    import pyarrow.fs as pafs

    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _folder_files(path: str) -> list[str]:
    """Every file under the sweep folder, as '/'-separated paths relative to it."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    return [info.path[len(root):].lstrip("/") for info in infos if info.type == pafs.FileType.File]


def _read(path: str, rel: str) -> bytes:
    fs, root = _filesystem(path)
    with fs.open_input_stream(f"{root}/{rel}") as f:
        return f.read()


def _read_manifest(path: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads(_read(path, SIGNATURES_FILE))
    except (FileNotFoundError, OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        return None
    return manifest


def _write_manifest(path: str, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    fs, root = _filesystem(path)
    if "://" in path:  # an object store replaces an object whole
        with fs.open_output_stream(f"{root}/{SIGNATURES_FILE}") as f:
            f.write(data)
        return
    os.makedirs(root, exist_ok=True)
    tmp = os.path.join(root, f".{SIGNATURES_FILE}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, os.path.join(root, SIGNATURES_FILE))


class _Manifest:
    """The signatures of one sweep folder, kept in memory and written when they change."""

    def __init__(self, path: str, key: bytes):
        self.path, self.key, self.key_id = path, key, _key_id(key)
        found = _read_manifest(path)
        # Signatures made with another key (a folder adopted with --trust-pickles) cannot verify here.
        self.files: dict[str, list[str]] = found["files"] if found and found.get("key_id") == self.key_id else {}
        self.written = found is not None and found.get("key_id") == self.key_id

    def add(self, contents: dict[str, bytes]) -> None:
        changed = False
        for rel, content in contents.items():
            signature = _signature(self.key, rel, content)
            kept = self.files.get(rel, [])
            if not kept or kept[0] != signature:
                self.files[rel] = [signature, *(s for s in kept if s != signature)][:KEPT]
                changed = True
        if changed or not self.written:
            _write_manifest(self.path, {"format": 1, "key_id": self.key_id, "files": self.files})
            self.written = True


def sign_folder(path: str, rels: Iterable[str] | None = None) -> list[str]:
    """Sign ``rels`` (default: every pickle file now in the sweep folder) as they are now; returns them."""
    rels = pickle_files(_folder_files(path)) if rels is None else list(rels)
    manifest = _Manifest(path, load_key(create=True))
    manifest.add({rel: _read(path, rel) for rel in rels})
    return rels


def _symlinks(path: str) -> list[str]:
    """Symbolic links in a local sweep folder. mmtune and Tune never make one, and one could lead Tune
    to a file outside what is verified (a checkpoint folder linked to a hidden one holding a pickle)."""
    if "://" in path:
        return []
    root = os.path.abspath(path)
    links = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            if os.path.islink(os.path.join(dirpath, name)):
                links.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
    return sorted(links)


def unverified_files(path: str) -> list[str]:
    """Each pickle file of the sweep folder that does not verify against this user's key, with why."""
    links = [f"{rel} (a symbolic link: a sweep folder holds none)" for rel in _symlinks(path)]
    rels = pickle_files(_folder_files(path))
    if not rels:
        return links
    manifest = _read_manifest(path)
    if manifest is None:
        return links + [f"{rel} (not signed: the folder has no {SIGNATURES_FILE})" for rel in rels]
    key = load_key(create=False)
    if key is None or manifest.get("key_id") != _key_id(key):
        return links + [f"{rel} (signed with another key: another user's or another machine's mmtune)" for rel in rels]
    bad = links
    for rel in rels:
        kept = manifest["files"].get(rel)
        if not kept:
            bad.append(f"{rel} (not signed)")
        elif _signature(key, rel, _read(path, rel)) not in kept:
            bad.append(f"{rel} (changed since mmtune signed it)")
    return bad


def check_folder(path: str, *, trust: bool = False) -> None:
    """Before anything of the sweep folder is unpickled: raise a ConfigError unless every pickle file
    verifies; with ``trust`` (``--trust-pickles``) sign them instead (the user vouches for the folder)."""
    if trust:
        sign_folder(path)
        return
    bad = unverified_files(path)
    if not bad:
        return
    problems = [Problem(path, (
        f"{len(bad)} file(s) here that resuming unpickles do not verify against your signing key ({key_file()}). "
        "Unpickling runs any code a file names: a folder from another user or machine, or changed after mmtune "
        "wrote it, could run code as you. Reading it is safe (mmtune report, mmtune ls). If you trust whoever "
        f"wrote every file in it: mmtune resume {path} --trust-pickles (its files are then signed with your key)."))]
    for line in bad[:SHOWN]:
        rel, _, why = line.partition(" (")
        problems.append(Problem(rel, why.rstrip(")")))
    if len(bad) > SHOWN:
        problems.append(Problem("", f"... and {len(bad) - SHOWN} more file(s)"))
    raise ConfigError(problems)


def unsigned_snapshot(path: str, *, trust: bool = False) -> list[str]:
    """Before ``mmtune resume`` unpickles anything: the pickle files of a folder this user's key signed
    that no longer verify (``[]`` when all do, or when ``trust`` signs them instead).

    Such files are what a driver killed, or a disk that filled up, between Tune's snapshot and its
    signature leaves behind, and what an edit leaves: resume then rebuilds the sweep from mmtune's own
    JSON and Parquet state and unpickles none of them. A folder with no signatures of this user's key
    (another user's or machine's, or from before signing) is refused: :func:`check_folder` raises."""
    if trust:
        sign_folder(path)
        return []
    bad = unverified_files(path)
    if not bad:
        return []
    manifest, key = _read_manifest(path), load_key(create=False)
    if manifest is None or key is None or manifest.get("key_id") != _key_id(key) or _symlinks(path):
        check_folder(path)
    return bad


# --------------------------------------------------------------------------------- the callback
class PickleSigner(Callback):
    """Signs the snapshot files Tune writes, right after each snapshot and at the end of the fit.

    It travels in ``tuner.pkl`` with the run configuration: only the sweep folder's path, never the
    key (loaded from this user's config folder when signing)."""

    def __init__(self, path: str):
        self.path = path if "://" in path else os.path.abspath(path)
        self._reset()

    def _reset(self) -> None:
        self._staging: str | None = None
        self._manifest: _Manifest | None = None
        self._last_snapshot: tuple | None = None
        self._stamps: dict[str, tuple[int, int]] = {}  # rel -> (size, mtime_ns) of the last signed content

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self._reset()

    # A snapshot (TuneController.save_to_dir) writes the experiment state and the searcher's files,
    # then asks the callbacks for their state (get_state) and writes theirs; Tune uploads the staging
    # folder right after. Signing in get_state covers the first files before the upload starts; the
    # callbacks' file is signed in the same step's on_step_end.
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._staging = self._staging or _staging(trials)

    def get_state(self) -> None:
        if self._staging is not None:
            self._sign(self._staging)
        return None  # nothing of its own to restore

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self._staging = self._staging or _staging(trials)
        if self._staging is None:
            return
        snapshot = _top_level_stamp(self._staging)  # one scandir: did this step snapshot?
        if snapshot != self._last_snapshot:
            self._sign(self._staging)
            self._last_snapshot = snapshot

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        staging = self._staging or _staging(trials)
        if staging is not None:
            self._sign(staging)

    def _sign(self, staging: str) -> None:
        try:
            self._sign_files(staging)
        except OSError as err:  # the sweep goes on; its next resume will name the unsigned files
            log.warning("could not sign the sweep's pickles in %s (%s): resuming it will need --trust-pickles "
                        "unless a later snapshot is signed", self.path, err)

    def _sign_files(self, staging: str) -> None:
        if self._manifest is None:
            self._manifest = _Manifest(self.path, load_key(create=True))
        contents = {}
        for rel in pickle_files(_local_files(staging)):
            file = os.path.join(staging, rel)
            try:
                st = os.stat(file)
                if self._stamps.get(rel) == (st.st_size, st.st_mtime_ns):
                    continue
                with open(file, "rb") as f:
                    contents[rel] = f.read()
            except OSError:  # replaced or removed meanwhile: the next snapshot signs it
                continue
            self._stamps[rel] = (st.st_size, st.st_mtime_ns)
        if contents:
            self._manifest.add(contents)


def _staging(trials: list) -> str | None:
    """Tune's local copy of the experiment folder on the driver (it writes there, then uploads)."""
    for trial in trials:
        staging = getattr(getattr(trial, "storage", None), "experiment_driver_staging_path", None)
        if staging:
            return str(staging)
    return None


def _top_level_stamp(folder: str) -> tuple:
    try:
        with os.scandir(folder) as entries:
            files = [(e.name, e.stat()) for e in entries if e.is_file() and is_pickle_file(e.name)]
        return tuple(sorted((name, st.st_size, st.st_mtime_ns) for name, st in files))
    except OSError:
        return ()


def _local_files(folder: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            out.append(name if rel_dir == "." else f"{rel_dir.replace(os.sep, '/')}/{name}")
    return out
