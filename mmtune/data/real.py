"""Real datasets: the users' on-disk layout -> an index -> a prepared cache -> batches.

A real dataset is three small pieces, written once per dataset in ``mmtune/data/<name>.py``:

* a config record (a :class:`RealDataConfig` subclass): ``root`` plus the dataset's own knobs;
* ``index(cfg) -> Index``: reads the reference repositories' layout *as it is* (list files, CSVs,
  frame folders) and returns the samples of each split with the sources of every modality (file
  paths, arrays), the class names and each modality's stored shape. It never decodes media; it
  checks that expected folders exist (:meth:`Layout.require`) and that every referenced file is there
  (:meth:`Layout.missing`);
* ``decode(cfg, modality, source) -> np.ndarray``: one sample's one modality as the array to store
  (a spectrogram, the frames of a clip, token ids, a feature sequence).

Everything else is here, shared: a missing or corrupt file is named with the count of such files and
the expected layout, or skipped with a warning under ``skip_missing``; a validation split is carved
from train (seeded, stratified) when the dataset has none; and :func:`prepare` decodes every sample
once, in parallel, into NumPy arrays (one ``.npy`` per split and modality, memory-mapped when read)
under a cache folder keyed by a hash of every config field that changes the arrays. The cache also
records the name, size and modification time of every media file it was decoded from
(``sources.json``); every use re-checks them (a stat pass) and a cache whose files were deleted,
replaced or added since is prepared again, with a message naming them. Training then
reads that cache through a DataLoader (worker processes, pinned memory on CUDA): a sampler drawn
from the trial's data generator decides the order *and* the random choices (which frames of a clip,
flips), so a run is reproducible whatever the number of workers, and uint8 frames travel to the
device as bytes and are normalised there.

Frames are stored as a stack of up to ``K`` frames per clip (``Modality.shape == (K, C, H, W)``, the
real count in ``<modality>.count.npy``); each batch uses ``Modality.frames`` of them: a sorted random
subset in training, evenly spaced fixed positions in evaluation (CREMA-D: 1 of the 1-fps frames;
Kinetics-Sounds: 3 of 10).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from mmtune.config import Record, hp, to_dict
from mmtune.data.base import Batch, MultimodalData
from mmtune.errors import ConfigError, Problem

__all__ = [
    "CacheSplit", "FrameDataConfig", "Index", "Layout", "Modality", "RealDataConfig", "RealDataset", "Sample",
    "REAL_DATASETS", "cache_changes", "cache_path", "carve_validation", "load_real", "prepare", "register_dataset",
    "stratified_split",
]

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: sources.json, the media files a cache was decoded from
META_FILE = "meta.json"
SOURCES_FILE = "sources.json"
SPLITS = ("train", "val", "test")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# How many missing/corrupt files an error message names before it says "and N more".
SHOWN_FILES = 10
# dataset.resident auto: the largest share of the GPU's free memory (torch.cuda.mem_get_info) a cache may
# take on the device; the rest is left to the model, its activations and other trials packed on the GPU.
RESIDENT_SHARE = 0.5


@dataclass(frozen=True)
class RealDataConfig(Record):
    """Knobs every real dataset has. Subclasses add their own (and set ``name``'s default)."""

    name: str = hp("", doc="dataset name")
    root: str = hp("", doc="dataset root folder, in the layout the reference repositories use")
    val_fraction: float = hp(0.1, low=0.0, high=1.0, high_open=True,
                             doc="share of train carved out (seeded, stratified) as validation when the dataset has none")
    split_seed: int = hp(0, low=0, doc="seed of every split mmtune draws (validation carve-out, missing test lists)")
    skip_missing: bool = hp(False, doc="skip samples whose files are missing or corrupt (with a warning) instead of failing")
    cache_dir: str = hp("", doc="where `mmtune prepare` puts decoded arrays (default: <root>/.mmtune_cache, "
                                "or ~/.cache/mmtune when root is read-only)")
    workers: int = hp(-1, low=-1, doc="DataLoader worker processes reading the cache (0: in the training process; "
                                      "-1: 0 on CPU, where reading in-process measured fastest, 4 on CUDA)")
    flip: bool = hp(True, doc="random horizontal flip of frames in training (the reference recipes' augmentation)")
    resident: bool | str = hp("auto", choices=("auto", True, False),
                              doc="hold the prepared cache on the training device (uint8 as stored) and index batches "
                                  "there, no DataLoader workers. auto: on CUDA when the cache takes at most "
                                  f"{RESIDENT_SHARE:.0%} of the GPU's free memory; off on CPU (the memory-mapped "
                                  "reader shares the OS page cache between trials instead of a copy per trial)")

    # Fields that change how the cache is read, not what it holds: left out of the cache key.
    runtime_fields: ClassVar[tuple[str, ...]] = ("cache_dir", "workers", "flip", "resident")

    def extra_checks(self) -> list[Problem]:
        if not self.root:
            return [Problem("root", f"is required for dataset '{self.name}': set dataset.root=DIR (the folder "
                                    "holding the dataset in its reference layout; see the README's Datasets section).")]
        return []


@dataclass(frozen=True)
class FrameDataConfig(RealDataConfig):
    """A dataset with frame stacks: K frames stored per clip, k of them sampled per item."""

    image_size: int = hp(224, low=1, doc="frames are resized to image_size × image_size (papers: 224)")
    stored_frames: int = hp(3, low=1, doc="K: frames stored per clip, evenly spaced")
    sampled_frames: int = hp(1, low=1, doc="k: frames per clip the model sees (random in training, evenly spaced in evaluation)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.sampled_frames > self.stored_frames:
            problems.append(Problem("sampled_frames", f"must be <= stored_frames, but got sampled_frames="
                                                      f"{self.sampled_frames} and stored_frames={self.stored_frames}."))
        return problems


@dataclass(frozen=True)
class Modality:
    """How one modality is stored: per-sample ``shape`` and ``dtype`` in the cache.

    ``frames > 0`` marks a frame stack ``(K, C, H, W)`` of which ``frames`` are sampled per item.
    ``normalize = (mean, std)`` per channel: a uint8 modality is scaled to [0, 1] and normalised on
    the device; other dtypes are cast to float32 unless ``dtype`` is an integer type (token ids).
    """

    shape: tuple[int, ...]
    dtype: str
    frames: int = 0
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    flip_invert: tuple[int, ...] = ()  # channels negated (255 − x) by a horizontal flip: optical flow's u

    def __post_init__(self) -> None:
        if self.frames and not (len(self.shape) == 4 and 1 <= self.frames <= self.shape[0]):
            raise ValueError(f"a frame modality samples 1..K frames of a (K, C, H, W) stack; got frames={self.frames} "
                             f"for shape {self.shape}")

    @property
    def item_shape(self) -> tuple[int, ...]:
        """Per-sample shape the model sees."""
        return (self.frames, *self.shape[1:]) if self.frames else self.shape


@dataclass
class Sample:
    """One clip: a unique ``key`` (clip id), its class, and per modality what ``decode`` needs."""

    key: str
    label: int
    sources: dict[str, Any]


@dataclass
class Index:
    """What ``index(cfg)`` returns: samples per split (``val`` optional), class names, modalities."""

    splits: dict[str, list[Sample]]
    classes: list[str]
    modalities: dict[str, Modality]
    info: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)  # path of an absent file -> keys of its samples

    def missing_keys(self) -> set[str]:
        return {key for keys in self.missing.values() for key in keys}


class Layout:
    """Checks a dataset root against its expected layout and collects every problem before raising.

    ``require`` names a folder or file that must exist (a wrong root fails on the first call to
    :meth:`check`, naming all of them); ``missing`` records a file a sample refers to that is not there.
    """

    def __init__(self, cfg: RealDataConfig, tree: str):
        self.cfg = cfg
        self.root = Path(cfg.root).expanduser()
        self.tree = tree
        self._absent: list[str] = []
        self.missing_files: dict[str, list[str]] = {}  # path -> keys of the samples that need it

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def require(self, *parts: str, kind: str = "folder") -> Path:
        p = self.path(*parts)
        ok = p.is_dir() if kind == "folder" else p.is_file()
        if not ok:
            self._absent.append(f"{kind} '{Path(*parts)}'")
        return p

    def exists(self, *parts: str) -> bool:
        return self.path(*parts).exists()

    def check(self) -> None:
        """Raise naming every required entry that is absent (call after the ``require`` calls)."""
        if not self.root.is_dir():
            raise ConfigError(Problem("dataset.root", f"'{self.root}' is not a folder. Expected the "
                                                      f"{self.cfg.name} layout:\n{self.tree}"))
        if self._absent:
            raise ConfigError(Problem(
                "dataset.root",
                f"'{self.root}' does not look like a {self.cfg.name} root: no {', no '.join(self._absent)}. "
                f"Expected layout:\n{self.tree}",
            ))

    def missing(self, path: Path, key: str) -> None:
        self.missing_files.setdefault(str(path), []).append(key)


def bad_files_problem(cfg: RealDataConfig, bad: Mapping[str, str], what: str, tree: str) -> Problem:
    shown = list(bad.items())[:SHOWN_FILES]
    more = f"\n    ... and {len(bad) - len(shown)} more" if len(bad) > len(shown) else ""
    listing = "\n".join(f"    {path}  ({why})" for path, why in shown)
    return Problem(
        "dataset.root",
        f"{len(bad)} {what} file(s) under '{cfg.root}':\n{listing}{more}\n"
        f"  Fix the files, or set dataset.skip_missing=true to skip those samples. Expected layout:\n{tree}",
    )


def drop_samples(samples: list[Sample], bad_keys: set[str]) -> list[Sample]:
    return [s for s in samples if s.key not in bad_keys]


def stratified_split(labels: Iterable[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split positions into (kept, held out): ``fraction`` of every class held out, seeded.

    Each class with n >= 2 samples gives round(fraction · n) of them (at least 1, at most n − 1).
    """
    labels = list(labels)
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    held: list[int] = []
    for y in sorted(by_class):
        members = by_class[y]
        if len(members) < 2 or fraction <= 0:
            continue
        take = min(max(round(fraction * len(members)), 1), len(members) - 1)
        held.extend(members[j] for j in rng.permutation(len(members))[:take])
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


def carve_validation(train: list[Sample], cfg: RealDataConfig) -> tuple[list[Sample], list[Sample]]:
    """(train, val): the validation split mmtune carves out of ``train`` when a dataset has none.

    Datasets that fit something on the training samples alone (a vocabulary) call this to know them."""
    keep, held = stratified_split([s.label for s in train], cfg.val_fraction, cfg.split_seed)
    return [train[i] for i in keep], [train[i] for i in held]


class RealDataset(ABC):
    """One real dataset: its config, layout (for messages) and the two functions described above."""

    name: ClassVar[str]
    Config: ClassVar[type[RealDataConfig]]
    layout: ClassVar[str]  # the expected tree, shown in every error and in the README

    @classmethod
    @abstractmethod
    def index(cls, cfg: Any) -> Index:
        """Read the layout under ``cfg.root``: samples per split, classes, stored modalities."""

    @classmethod
    @abstractmethod
    def decode(cls, cfg: Any, modality: str, source: Any) -> np.ndarray:
        """One sample's one modality, as the array the cache stores."""

    @classmethod
    def fingerprint(cls, cfg: Any) -> str:
        """Extra cache-key content: what identifies the source files beyond the config (e.g. a
        feature file's size and mtime), so a replaced file is not served from a stale cache."""
        return ""


REAL_DATASETS: dict[str, type[RealDataset]] = {}


def register_dataset(cls: type[RealDataset]) -> type[RealDataset]:
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"dataset '{cls.name}' does not define {', '.join(missing)}")
    if cls.name in REAL_DATASETS:
        raise ValueError(f"dataset '{cls.name}' is registered twice")
    REAL_DATASETS[cls.name] = cls
    return cls


# ----------------------------------------------------------------------------- cache


def cache_key(cfg: RealDataConfig) -> str:
    content = {k: v for k, v in to_dict(cfg).items() if k not in cfg.runtime_fields}
    content["root"] = str(Path(cfg.root).expanduser().resolve())
    content["source"] = REAL_DATASETS[cfg.name].fingerprint(cfg)
    blob = json.dumps({"format": CACHE_FORMAT, **content}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cache_path(cfg: RealDataConfig) -> Path:
    """``<cache_dir>/<name>-<key>``: one folder per distinct decoded content."""
    if cfg.cache_dir:
        base = Path(cfg.cache_dir).expanduser()
    else:
        base = Path(cfg.root).expanduser() / ".mmtune_cache"
        if not _writable(base):
            base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mmtune"
    return base / f"{cfg.name}-{cache_key(cfg)}"


def _writable(folder: Path) -> bool:
    probe = folder if folder.exists() else folder.parent
    return probe.is_dir() and os.access(probe, os.W_OK)


def _resolve_splits(cfg: RealDataConfig, index: Index) -> tuple[dict[str, list[Sample]], dict[str, str]]:
    """train / val / test, carving val out of train (seeded, stratified) when the dataset has none."""
    splits = dict(index.splits)
    source = {s: "given" for s in splits}
    missing = [s for s in ("train", "test") if not splits.get(s)]
    if missing:
        raise ConfigError(Problem("dataset.root", f"the {cfg.name} index has no samples in split(s) {missing} "
                                                  f"under '{cfg.root}'. Expected layout:\n{REAL_DATASETS[cfg.name].layout}"))
    if not splits.get("val"):
        if cfg.val_fraction <= 0:
            raise ConfigError(Problem("dataset.val_fraction", f"is 0 but {cfg.name} has no validation split; model "
                                                              "selection needs one: set it > 0 (default 0.1)."))
        splits["train"], splits["val"] = carve_validation(splits["train"], cfg)
        source["val"] = f"carved from train (val_fraction={cfg.val_fraction}, split_seed={cfg.split_seed}, stratified)"
    return {s: splits[s] for s in SPLITS}, source


def _decode_sample(name: str, cfg: RealDataConfig, sample: Sample, modalities: list[str]) -> dict[str, Any]:
    """Decode one sample (runs in a worker process): arrays per modality, or the error per file."""
    dataset = REAL_DATASETS[name]
    out: dict[str, Any] = {}
    for m in modalities:
        try:
            out[m] = dataset.decode(cfg, m, sample.sources[m])
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file, reported with its path
            source = sample.sources[m]
            path = (getattr(err, "path", None) or getattr(err, "filename", None)
                    or (source if isinstance(source, (str, os.PathLike)) else f"sample '{sample.key}' ({m})"))
            out[m] = BadFile(str(path), f"{type(err).__name__}: {getattr(err, 'reason', None) or err}")
    return out


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


def _fit(array: np.ndarray, modality: Modality, key: str, name: str) -> tuple[np.ndarray, int]:
    """Check a decoded array against the stored shape; frame stacks may hold 1..K frames."""
    if modality.frames:
        k = modality.shape[0]
        if array.ndim != len(modality.shape) or tuple(array.shape[1:]) != modality.shape[1:] or len(array) == 0:
            raise ValueError(f"{name}: decoded frames of '{key}' have shape {array.shape}, expected (1..{k}, "
                             f"{', '.join(map(str, modality.shape[1:]))})")
        count = min(len(array), k)
        if len(array) > k:  # keep K evenly spaced frames
            array = array[np.linspace(0, len(array) - 1, k).round().astype(int)]
        return array, count
    if tuple(array.shape) != modality.shape:
        raise ValueError(f"{name}: decoded '{key}' has shape {array.shape}, expected {modality.shape}")
    return array, 1


def prepare(cfg: RealDataConfig, *, workers: int | None = None, force: bool = False,
            progress: Callable[[str], None] | None = None) -> Path:
    """Decode every sample once into the cache folder (idempotent; concurrent callers wait for one).

    Returns the cache folder. The folder appears atomically (built under a temporary name, renamed),
    so an interrupted prepare leaves nothing a later run could mistake for a cache.
    """
    target = cache_path(cfg)
    if not force and cache_changes(cfg, target) == []:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second trial preparing the same cache waits for the first
        changed = None if force else cache_changes(cfg, target)
        if changed == []:
            return target
        if changed:
            shown = ", ".join(changed[:SHOWN_FILES]) + (f" and {len(changed) - SHOWN_FILES} more" if len(changed) > SHOWN_FILES else "")
            (progress or log.warning)(f"{cfg.name}: {len(changed)} source file(s) changed since {target} was prepared: "
                                      f"{shown}; preparing it again.")
        _build_cache(cfg, target, workers=workers if workers is not None else os.cpu_count() or 1, progress=progress or log.info)
    return target


def cache_changes(cfg: RealDataConfig, folder: Path) -> list[str] | None:
    """What changed among the media files the cache in ``folder`` was decoded from: ``None`` when
    there is no cache there, ``[]`` when it is current, else one ``"path (deleted|changed|new|appeared)"``
    per difference. A stat pass over the recorded sources (files by name, size and modification time;
    a folder source by the files in it), no decoding."""
    if not (folder / META_FILE).is_file():
        return None
    try:
        recorded = json.loads((folder / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return [f"{SOURCES_FILE} (missing or unreadable)"]
    root = Path(cfg.root).expanduser()
    now = _stamps((os.path.join(root, rel) for rel in recorded["sources"]), root)
    old = recorded["stamps"]
    changes = []
    for rel in sorted(old.keys() | now.keys()):
        before, after = old.get(rel, "unlisted"), now.get(rel, "unlisted")
        if before == after:
            continue
        if after is None or after == "unlisted":
            changes.append(f"{rel} (deleted)")
        elif before == "unlisted":
            changes.append(f"{rel} (new)")
        elif before is None:
            changes.append(f"{rel} (appeared)")
        else:
            changes.append(f"{rel} (changed)")
    return changes


def _source_paths(source: Any) -> Iterator[Path]:
    """The files and folders one sample's source names (a path, or paths inside tuples and lists)."""
    if isinstance(source, Path):
        yield source
    elif isinstance(source, (tuple, list)):
        for item in source:
            yield from _source_paths(item)


def _stamps(paths: Iterable[Path | str], root: Path) -> dict[str, Any]:
    """``{path: [size, mtime_ns]}`` for files, ``"folder"`` plus every file inside for folders (hidden
    entries skipped), ``None`` for a path that does not exist. Paths are relative to ``root`` when under it.
    Plain strings and ``os.scandir`` throughout: ~40k entries (CREMA-D) take a fraction of a second."""
    out: dict[str, Any] = {}
    prefix = os.path.join(os.path.abspath(root), "")

    def visit(path: str, st: os.stat_result | None) -> None:
        key = path[len(prefix):] if path.startswith(prefix) else path
        if key in out:
            return
        if st is None:
            try:
                st = os.stat(path)
            except OSError:
                out[key] = None
                return
        if not stat.S_ISDIR(st.st_mode):
            out[key] = [st.st_size, st.st_mtime_ns]
            return
        out[key] = "folder"
        with os.scandir(path) as scan:
            entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
        for entry in entries:
            try:
                entry_stat = entry.stat()
            except OSError:
                entry_stat = None
            visit(entry.path, entry_stat)

    for path in paths:
        visit(os.path.abspath(path), None)
    return out


def _relative(path: Path, root: Path) -> str:
    prefix, text = os.path.join(os.path.abspath(root), ""), os.path.abspath(path)
    return text[len(prefix):] if text.startswith(prefix) else text


def _record_sources(cfg: RealDataConfig, index: Index) -> dict[str, Any]:
    """The sources of every indexed sample (missing ones too: a file that appears later is a change),
    stamped before decoding, so a file replaced while decoding is seen as changed next time."""
    root = Path(cfg.root).expanduser()
    paths = {p: None for samples in index.splits.values() for s in samples for v in s.sources.values()
             for p in _source_paths(v)}
    return {"sources": [_relative(p, root) for p in paths], "stamps": _stamps(paths, root)}


def _build_cache(cfg: RealDataConfig, target: Path, *, workers: int, progress: Callable[[str], None]) -> None:
    dataset = REAL_DATASETS[cfg.name]
    start = time.perf_counter()
    index = dataset.index(cfg)
    sources = _record_sources(cfg, index)
    if index.missing and not cfg.skip_missing:  # fail before spending time on decoding
        raise ConfigError(bad_files_problem(cfg, {p: "missing" for p in index.missing}, "missing", dataset.layout))
    gone = index.missing_keys()
    index.splits = {s: drop_samples(v, gone) for s, v in index.splits.items()}
    splits, split_source = _resolve_splits(cfg, index)
    modalities = list(index.modalities)
    bad: dict[str, str] = {path: "missing" for path in index.missing}
    skipped: list[str] = sorted(gone)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, int] = {}
    total = sum(len(v) for v in splits.values())
    progress(f"preparing {cfg.name} ({total} samples, {workers} decoding threads) into {target}")
    # Threads, not processes: the decoders (PIL, torch.stft, resampling, PyAV) release the GIL, and
    # forking a process that already runs threads (DataLoader, Ray, OpenMP) can deadlock the child.
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for split, samples in splits.items():
            folder = tmp / split
            folder.mkdir(parents=True)
            decoded = _decode_all(cfg, samples, modalities, pool)
            good = [i for i, d in enumerate(decoded) if not any(isinstance(v, BadFile) for v in d.values())]
            for i, d in enumerate(decoded):
                for v in d.values():
                    if isinstance(v, BadFile):
                        bad[v.path] = v.reason
                        skipped.append(samples[i].key)
            _write_split(folder, [samples[i] for i in good], [decoded[i] for i in good], index.modalities, cfg.name)
            counts[split] = len(good)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if bad and not cfg.skip_missing:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(bad_files_problem(cfg, bad, "unreadable", dataset.layout))
    if bad:
        log.warning("%s: skipped %d sample(s) with missing or unreadable files (dataset.skip_missing=true), e.g. %s",
                    cfg.name, len(set(skipped)), next(iter(bad)))
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(Problem("dataset.root", f"{cfg.name}: no readable samples left in split(s) {empty}."))
    meta = {
        "format": CACHE_FORMAT,
        "dataset": cfg.name,
        "config": to_dict(cfg),
        "classes": index.classes,
        "modalities": {m: {"shape": list(s.shape), "dtype": s.dtype, "frames": s.frames,
                           "normalize": [list(v) for v in s.normalize] if s.normalize else None,
                           "flip_invert": list(s.flip_invert)}
                       for m, s in index.modalities.items()},
        "splits": {s: {"n": counts[s], "source": split_source[s]} for s in SPLITS},
        "skipped": sorted(set(skipped)),
        "info": index.info,
        "prepare_s": round(time.perf_counter() - start, 3),
    }
    (tmp / SOURCES_FILE).write_text(json.dumps(sources))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
    if target.exists():  # a forced rebuild replaces the old cache
        shutil.rmtree(target)
    os.replace(tmp, target)
    progress(f"prepared {cfg.name}: " + ", ".join(f"{s} {counts[s]}" for s in SPLITS)
             + f" samples in {meta['prepare_s']:.1f} s -> {target}")


def _decode_all(cfg: RealDataConfig, samples: list[Sample], modalities: list[str],
                pool: ThreadPoolExecutor | None) -> list[dict[str, Any]]:
    if pool is None:
        return [_decode_sample(cfg.name, cfg, s, modalities) for s in samples]
    return list(pool.map(_decode_sample, [cfg.name] * len(samples), [cfg] * len(samples), samples,
                         [modalities] * len(samples)))


def _write_split(folder: Path, samples: list[Sample], decoded: list[dict[str, Any]],
                 modalities: Mapping[str, Modality], name: str) -> None:
    n = len(samples)
    np.save(folder / "labels.npy", np.asarray([s.label for s in samples], dtype=np.int64))
    (folder / "keys.txt").write_text("".join(f"{s.key}\n" for s in samples))
    for m, spec in modalities.items():
        out = np.lib.format.open_memmap(folder / f"{m}.npy", mode="w+", dtype=np.dtype(spec.dtype), shape=(n, *spec.shape))
        count = np.ones(n, dtype=np.int64)
        for i, (sample, d) in enumerate(zip(samples, decoded, strict=True)):
            array, count[i] = _fit(np.asarray(d[m]), spec, sample.key, name)
            if spec.frames:
                out[i, : len(array)] = array
                out[i, len(array):] = array[-1]  # pad with the last frame (never sampled: count says how many are real)
            else:
                out[i] = array
        out.flush()
        del out
        if spec.frames:
            np.save(folder / f"{m}.count.npy", count)


# ----------------------------------------------------------------------------- reading


class _Reader(torch.utils.data.Dataset):
    """Reads batches from the memory-mapped cache; one item = one batch (opened lazily per process)."""

    def __init__(self, folder: Path, modalities: Mapping[str, Modality]):
        self.folder = folder
        self.modalities = dict(modalities)
        self._arrays: dict[tuple[str, str], np.ndarray] = {}

    def array(self, split: str, name: str) -> np.ndarray:
        key = (split, name)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.folder / split / f"{name}.npy", mmap_mode="r")
        return self._arrays[key]

    def __len__(self) -> int:  # the sampler decides what is read
        return 0

    def __getitem__(self, item: tuple[str, np.ndarray, dict[str, np.ndarray], np.ndarray | None]) -> dict[str, Tensor]:
        split, idx, frames, flip = item
        order = np.argsort(idx, kind="stable")  # read the memmap in file order, then restore the batch order
        sorted_idx = idx[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        out: dict[str, Tensor] = {"labels": torch.from_numpy(np.ascontiguousarray(self.array(split, "labels")[idx]))}
        for m in frames:
            spec = self.modalities[m]
            if spec.frames:  # read only the chosen frames of each clip
                rows = self.array(split, m)[sorted_idx[:, None], frames[m][order]][inverse]
                if flip is not None and flip.any():
                    flipped = rows[flip][..., ::-1]
                    for c in spec.flip_invert:  # a mirrored flow field moves the other way
                        flipped[:, :, c] = 255 - flipped[:, :, c]
                    rows[flip] = flipped
            else:
                rows = self.array(split, m)[sorted_idx][inverse]
            # Bytes travel (4x fewer than float32) and the training device converts them: measured
            # faster than converting in the workers even on the CPU (bench/prepare_cache.py).
            out[m] = torch.from_numpy(np.ascontiguousarray(rows))
        return out


class _Resident:
    """The cache held on the training device, uint8 as stored: serves the batches :class:`_Reader` reads
    from disk (same items, same rows, frames and flips, same dtypes) by indexing on the device, with no
    DataLoader, no workers and no host-to-device copy per batch. Each split's arrays are copied to the
    device on first use, once."""

    def __init__(self, folder: Path, modalities: Mapping[str, Modality], device: torch.device):
        self.folder, self.modalities, self.device = folder, dict(modalities), device
        self._arrays: dict[tuple[str, str], Tensor] = {}

    def array(self, split: str, name: str) -> Tensor:
        key = (split, name)
        if key not in self._arrays:  # (a device comparison here never held on CUDA: "cuda" != "cuda:0")
            self._arrays[key] = torch.from_numpy(np.load(self.folder / split / f"{name}.npy")).to(self.device)
        return self._arrays[key]

    def run(self, items: list[Any]) -> Iterator[dict[str, Tensor]]:
        for item in items:
            yield self.read(*item)

    def read(self, split: str, idx: np.ndarray, frames: dict[str, np.ndarray | None],
             flip: np.ndarray | None) -> dict[str, Tensor]:
        rows_at = torch.from_numpy(np.ascontiguousarray(idx)).to(self.device)
        out = {"labels": self.array(split, "labels")[rows_at]}
        flips = torch.from_numpy(flip).to(self.device) if flip is not None and flip.any() else None
        for m in frames:
            spec = self.modalities[m]
            if spec.frames:
                chosen = torch.from_numpy(frames[m]).to(self.device)
                rows = self.array(split, m)[rows_at.unsqueeze(1), chosen]  # (B, k, C, H, W)
                if flips is not None:
                    flipped = rows[flips].flip(-1)
                    for c in spec.flip_invert:  # a mirrored flow field moves the other way
                        flipped[:, :, c] = 255 - flipped[:, :, c]
                    rows[flips] = flipped
            else:
                rows = self.array(split, m)[rows_at]
            out[m] = rows
        return out


def resident_cache(resident: bool | str, folder: Path, device: torch.device) -> bool:
    """Whether ``dataset.resident`` holds the cache at ``folder`` on ``device``. auto: on CUDA when all of
    its arrays take at most :data:`RESIDENT_SHARE` of the device's free memory; on the CPU no: there the
    memory-mapped reader serves the same bytes from the OS page cache, shared by every trial on the
    machine, where a resident copy would be one more copy of the whole cache per trial."""
    if resident != "auto":
        return bool(resident)
    if device.type != "cuda":
        return False
    size = sum(f.stat().st_size for f in folder.glob("*/*.npy"))
    free, _ = torch.cuda.mem_get_info(device)
    return size <= RESIDENT_SHARE * free


def to_float(x: Tensor, spec: Modality) -> Tensor:
    """What the model sees: uint8 scaled to [0, 1] and normalised per channel, floats as float32,
    integer ids unchanged."""
    if x.dtype == torch.uint8:
        mean, inv_std = _normalisation(spec.normalize or ((0.0,), (1.0,)), x.device)
        return x.float().sub_(mean).mul_(inv_std)
    if x.dtype in (torch.float16, torch.float64):
        return x.float()
    return x


class _Plan:
    """The sampler: a list of batch descriptions, replaced before every pass over a split."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class _Loader:
    """One DataLoader (and worker pool) per trial, shared by its three splits."""

    def __init__(self, reader: _Reader, workers: int, device: torch.device):
        self.reader, self.workers, self.device = reader, workers, device
        self.plan = _Plan()
        self._busy = False
        self._loader: torch.utils.data.DataLoader | None = None

    def run(self, items: list[Any]) -> Iterator[dict[str, Tensor]]:
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.reader, batch_size=None, sampler=self.plan, num_workers=self.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
                prefetch_factor=4 if self.workers else None,
            )
        if self._busy:  # one worker pool serves the three splits, one pass at a time
            raise RuntimeError("a pass over another split of this dataset is still running; finish it first")
        self.plan.items = items
        self._busy = True
        try:
            yield from self._loader
        finally:
            self._busy = False


class CacheSplit:
    """A split read from the prepared cache; same interface as :class:`TensorSplit` for the loop.
    ``loader`` reads from disk through a DataLoader (:class:`_Loader`) or from the device (:class:`_Resident`)."""

    def __init__(self, split: str, loader: _Loader | _Resident, labels: np.ndarray, counts: dict[str, np.ndarray],
                 modalities: dict[str, Modality], flip: bool, rows: np.ndarray | None = None):
        self.name, self.loader, self.labels_np = split, loader, labels
        self.counts, self.modalities, self.flip = counts, modalities, flip
        self.rows = rows  # the cache rows this split reads, in order (None: all of them)

    def __len__(self) -> int:
        return len(self.labels_np) if self.rows is None else len(self.rows)

    def subset(self, index: Tensor) -> CacheSplit:
        """The samples at ``index`` (positions in this split, any device), in that order; reads the same cache."""
        index = index.detach().cpu().numpy()
        rows = index if self.rows is None else self.rows[index]
        return CacheSplit(self.name, self.loader, self.labels_np, self.counts, self.modalities, self.flip, rows)

    @property
    def device(self) -> torch.device:
        return self.loader.device

    def select(self, modalities: list[str]) -> CacheSplit:
        return CacheSplit(self.name, self.loader, self.labels_np, {m: c for m, c in self.counts.items() if m in modalities},
                          {m: self.modalities[m] for m in modalities}, self.flip, self.rows)

    def to(self, device: torch.device | str) -> CacheSplit:
        self.loader.device = torch.device(device)
        return self

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled batches with random frames and flips drawn from ``generator`` (training), or in
        order with fixed frames (evaluation). All randomness is drawn here, on the CPU, in order."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        rows = (lambda idx: idx) if self.rows is None else (lambda idx: self.rows[idx])
        chunks = order.split(batch_size)
        items = [self._describe(rows(idx.numpy()), generator) for idx in chunks]
        for idx, raw in zip(chunks, self.loader.run(items), strict=True):
            labels = raw.pop("labels").to(self.device, non_blocking=True)
            yield Batch({m: self._to_model(m, x) for m, x in raw.items()}, labels, index=idx.to(self.device, non_blocking=True))

    def _describe(self, idx: np.ndarray, generator: torch.Generator | None) -> tuple:
        frames: dict[str, np.ndarray | None] = {}
        flip = None
        for m, spec in self.modalities.items():
            if not spec.frames:
                frames[m] = None
                continue
            count = torch.from_numpy(self.counts[m][idx])
            frames[m] = _frame_choice(count, spec.shape[0], spec.frames, generator).numpy()
            if generator is not None and self.flip and flip is None:
                flip = (torch.rand(len(idx), generator=generator) < 0.5).numpy()
        return self.name, idx, frames, flip

    def _to_model(self, m: str, x: Tensor) -> Tensor:
        return to_float(x.to(self.device, non_blocking=True), self.modalities[m])


@functools.lru_cache(maxsize=64)
def _normalisation(normalize: tuple[tuple[float, ...], tuple[float, ...]], device: torch.device) -> tuple[Tensor, Tensor]:
    """(255·mean, 1 / (255·std)) per channel on ``device``, built once (not a host copy per batch)."""
    mean, std = (torch.tensor(v, dtype=torch.float32).view(-1, 1, 1) * 255.0 for v in normalize)
    return mean.to(device), (1.0 / std).to(device)


def _frame_choice(count: Tensor, k_max: int, k: int, generator: torch.Generator | None) -> Tensor:
    """(B, k) frame positions: a sorted random subset of each clip's ``count`` frames (training) or k
    evenly spaced positions (evaluation); clips with fewer than k frames repeat frames."""
    b = len(count)
    if generator is None:
        pos = ((torch.arange(k, dtype=torch.float64) + 0.5) / k).unsqueeze(0) * count.unsqueeze(1)
        return pos.long().clamp_max(count.unsqueeze(1) - 1)
    keys = torch.rand(b, k_max, generator=generator)
    keys.masked_fill_(torch.arange(k_max).unsqueeze(0) >= count.unsqueeze(1), 2.0)
    chosen = keys.argsort(1)[:, :k].sort(1).values
    return torch.where(chosen < count.unsqueeze(1), chosen, chosen % count.unsqueeze(1))


def load_real(cfg: RealDataConfig, device: torch.device) -> MultimodalData:
    """Prepare the cache if needed (once), then return splits that read it.

    A trial that finds no cache decodes with ``workers`` processes (at least 1; 2 when -1);
    ``mmtune prepare`` and ``mmtune sweep`` prepare ahead with every core."""
    folder = prepare(cfg, workers=max(1, cfg.workers, 2 if cfg.workers < 0 else 1))
    meta = json.loads((folder / META_FILE).read_text())
    modalities = {
        m: Modality(tuple(s["shape"]), s["dtype"], s["frames"],
                    tuple(tuple(v) for v in s["normalize"]) if s["normalize"] else None,
                    tuple(s.get("flip_invert", ())))
        for m, s in meta["modalities"].items()
    }
    device = torch.device(device)
    resident = resident_cache(cfg.resident, folder, device)
    if resident:
        loader: _Loader | _Resident = _Resident(folder, modalities, device)
    else:
        workers = cfg.workers if cfg.workers >= 0 else (4 if device.type == "cuda" else 0)
        loader = _Loader(_Reader(folder, modalities), workers, device)

    def split(name: str) -> CacheSplit:
        labels = np.load(folder / name / "labels.npy")
        counts = {m: np.load(folder / name / f"{m}.count.npy") for m, s in modalities.items() if s.frames}
        return CacheSplit(name, loader, labels, counts, modalities, cfg.flip)

    info = {"cache": str(folder), "classes": meta["classes"], "splits": meta["splits"], "skipped": len(meta["skipped"]),
            "resident": resident}
    return MultimodalData(
        split("train"), split("val"), split("test"), list(modalities), len(meta["classes"]),
        {m: s.item_shape for m, s in modalities.items()}, info,
    )
