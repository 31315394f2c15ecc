"""CMU-MOSI and CMU-MOSEI: utterance-level sentiment from the reference feature pickles.

Three modalities, ``text``, ``audio`` and ``vision``, each a float32 ``(L, D)`` feature sequence, and
two classes. The balancing papers (OGM-GE / OPM, Wei et al., TPAMI 2024, arXiv:2410.11582; AIM) train
a transformer encoder per modality from scratch on MOSI (``model.backbone=transformer``; AIM: 3
layers) and classify "whether the sentiment is positive or negative" on the official split.

Files
-----
Like most MOSI / MOSEI work, the balancing code reads pre-extracted features, from one of two
families of pickles, one file per setting, each ``{"train" | "valid" | "test": {key: array}}``:

* **MulT** (yaohungt/Multimodal-Transformer, ``src/dataset.py``; also what GeWu-Lab's
  BalanceBenchmark reads): ``mosi_data.pkl`` / ``mosi_data_noalign.pkl`` and
  ``mosei_senti_data.pkl`` / ``mosei_senti_data_noalign.pkl``. Keys ``text`` (GloVe, 300-d),
  ``audio`` (COVAREP: 5-d for MOSI, 74-d for MOSEI), ``vision`` (FACET: 20-d / 35-d), ``labels``
  ``(N, 1, 1)`` sentiment in [-3, 3], ``id``. Aligned files have 50 steps per modality; unaligned
  ones keep the audio / vision frame rates (MOSI: 375 audio and 500 vision steps), zero-padded at
  the front (code that reads them keeps ``x[L - length:]``).
* **MMSA** (thuiar/MMSA): ``<MOSI|MOSEI>/Processed/aligned_50.pkl`` / ``unaligned_50.pkl``. Keys
  ``text`` (BERT features, 768-d), ``text_bert`` (token ids, masks and segment ids, ``(N, 3, 50)``),
  ``audio``, ``vision`` (same dimensions as MulT's), ``regression_labels`` ``(N,)`` sentiment,
  ``classification_labels`` (0 negative / 1 neutral / 2 positive), ``id``, ``audio_lengths``,
  ``vision_lengths``, ``raw_text``.

The family is recognised by its label key (``labels`` → MulT, ``regression_labels`` → MMSA), not by
the file name. With ``dataset.file`` empty the first reference name found under the root is read
(aligned before unaligned, MulT before MMSA; see :data:`CANDIDATES`); the chosen file is recorded in
the cache's ``meta.json`` (``info.file``). The file's own ``valid`` split is the validation split
(nothing is carved from train).

Labels
------
Binary sentiment: **positive (1) when the score is >= 0, negative (0) when it is < 0**. A score of
exactly 0 (neutral) counts as positive, "non-negative", as in MMSA's ``Has0_acc_2``
(``test_truth >= 0``) and BalanceBenchmark's ``acc2``. ``dataset.zero_label`` changes that:
``negative`` follows MulT's ``eval_mosei_senti`` (``> 0``), ``drop`` removes neutral samples from
every split, as MMSA's ``Non0_acc_2`` does. ``dataset.label_key`` picks the score: ``labels`` (MulT),
``regression_labels`` or ``classification_labels`` (MMSA; read as score = class − 1, which gives the
same binary labels as the regression score). A sample whose score is NaN fails the index, or is left
out with a warning under ``dataset.skip_missing=true``.

Cleaning
--------
Features are converted to float32 and every non-finite value (NaN, ±inf, or a float64 value beyond
the float32 range) becomes 0. MulT's loader zeroes ``audio == -inf``; MMSA's zeroes ``-inf`` audio
and, when it averages over time, NaN in audio and vision ("remove possible NaN values"). Replacing
every non-finite value with 0 in every modality covers both; the count per split and modality is
logged and kept in ``meta.json`` (``info.nonfinite_replaced``).

``dataset.seq_len`` crops or zero-pads every modality to that many steps (0, the default, keeps the
stored lengths). Cropping keeps the end that holds the content and padding adds zeros where the
file pads: the side is detected per modality from the training split (a front-padded file has more
all-zero first steps than last steps), or set with ``dataset.pad_side``.

Loading
-------
A feature file is unpickled once per process. ``index`` loads it; each sample's source is a
``(file, split, row)`` reference (small, and picklable as the file's path and stamp), which
``prepare``'s decoding threads resolve against the loaded file. In the training process it lives
only as long as the index, so a trial does not keep gigabytes of MOSEI after the cache is written. Only unpickle files you trust: a pickle can run code.
"""

from __future__ import annotations

import logging
import multiprocessing
import pickle
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmtune.config import hp
from mmtune.data.real import Index, Layout, Modality, RealDataConfig, RealDataset, Sample, register_dataset
from mmtune.errors import ConfigError, Problem

__all__ = ["CANDIDATES", "Mosei", "MoseiConfig", "Mosi", "MosiConfig"]

log = logging.getLogger(__name__)

MODALITIES = ("text", "audio", "vision")
FILE_SPLITS = {"train": "train", "valid": "val", "test": "test"}  # key in the pickle -> mmtune split
CLASSES = ["negative", "positive"]
LABEL_KEYS = ("labels", "regression_labels", "classification_labels")
# Feature dimensions (audio, vision) of both families, to tell MOSI and MOSEI files apart in a warning.
KNOWN_DIMS = {"mosi": (5, 20), "mosei": (74, 35)}
_ROWS_PER_CHUNK = 1024  # rows scanned at a time when counting non-finite values (bounds the temporary)


def _candidates(upper: str, mult_stem: str) -> tuple[str, ...]:
    mmsa = ("aligned_50.pkl", "unaligned_50.pkl")
    return (
        f"{mult_stem}_data.pkl", f"{mult_stem}_data_noalign.pkl",  # root = MulT's data/ folder
        *(f"{upper}/Processed/{f}" for f in mmsa),  # root = MMSA's dataset_root_dir
        *(f"Processed/{f}" for f in mmsa),  # root = MMSA's MOSI/ folder
        *mmsa,  # root = MMSA's MOSI/Processed/ folder
    )


# Files looked for, in order, when dataset.file is empty.
CANDIDATES: dict[str, tuple[str, ...]] = {"mosi": _candidates("MOSI", "mosi"), "mosei": _candidates("MOSEI", "mosei_senti")}


def _layout_tree(name: str, upper: str, mult_stem: str, audio: int, vision: int) -> str:
    files = [
        (f"{mult_stem}_data.pkl", "MulT (yaohungt/Multimodal-Transformer), word-aligned, 50 steps"),
        (f"{mult_stem}_data_noalign.pkl", "MulT, unaligned"),
        (f"{upper}/Processed/aligned_50.pkl", "MMSA (thuiar/MMSA), aligned, 50 steps"),
        (f"{upper}/Processed/unaligned_50.pkl", "MMSA, unaligned"),
    ]
    width = max(len(f) for f, _ in files) + 2
    listing = "\n".join(f"    {f.ljust(width)}{what}" for f, what in files)
    return f"""\
  <root>/  holds one feature pickle (dataset.file=PATH picks one; else the first found of):
{listing}
    (an MMSA file is also found as Processed/<file> or <file> when root is MMSA's {upper}/ or Processed/ folder)
  each a pickle {{"train" | "valid" | "test": {{
    "text":   (N, L, 300) GloVe (MulT) or (N, L, 768) BERT features (MMSA)   [dataset.text_key]
    "audio":  (N, L, {audio}) COVAREP
    "vision": (N, L, {vision}) FACET
    "labels": (N, 1, 1) sentiment in [-3, 3] (MulT) | "regression_labels": (N,) (MMSA)   [dataset.label_key]
    "id":     clip ids (optional) }}}}
  then: mmtune prepare {name} --root DIR"""


@dataclass(frozen=True)
class MosiConfig(RealDataConfig):
    name: str = hp("mosi", choices=("mosi",), doc="dataset name")
    file: str = hp("", doc="feature pickle, relative to root (mosi_data_noalign.pkl, MOSI/Processed/unaligned_50.pkl, …); "
                           "empty: the first reference file found (aligned before unaligned)")
    seq_len: int = hp(0, low=0, doc="crop or zero-pad every modality to this many time steps (0: as stored)")
    pad_side: str = hp("auto", choices=("auto", "front", "back"),
                       doc="where the file zero-pads sequences, for seq_len (auto: detected per modality)")
    text_key: str = hp("text", doc="key of the text features: text (GloVe in MulT files, BERT features in MMSA files)")
    label_key: str = hp("auto", choices=("auto", *LABEL_KEYS),
                        doc="sentiment key (auto: labels in MulT files, regression_labels in MMSA files)")
    zero_label: str = hp("positive", choices=("positive", "negative", "drop"),
                         doc="class of a sentiment of exactly 0: positive (score >= 0, MMSA Has0), negative "
                             "(score > 0, MulT), or drop the sample (MMSA Non0)")

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        if self.text_key == "text_bert":
            problems.append(Problem("text_key", "'text_bert' holds BERT token ids, masks and segment ids (N, 3, L), "
                                                "not a feature sequence; mmtune's encoders read features: use "
                                                "text_key=text (BERT features in MMSA files, GloVe in MulT files)."))
        if self.text_key in ("audio", "vision", *LABEL_KEYS):
            problems.append(Problem("text_key", f"'{self.text_key}' is not a text key; use text_key=text."))
        return problems


@dataclass(frozen=True)
class MoseiConfig(MosiConfig):
    name: str = hp("mosei", choices=("mosei",), doc="dataset name")
    file: str = hp("", doc="feature pickle, relative to root (mosei_senti_data_noalign.pkl, "
                           "MOSEI/Processed/unaligned_50.pkl, …); empty: the first reference file found")


# ----------------------------------------------------------------------------- the file, loaded once


class _FeatureFile:
    """A loaded feature pickle. It pickles as its path and stamp (never its arrays), so a process that
    receives a sample reopens the file from its own per-process registry instead of a copy."""

    def __init__(self, path: Path, stamp: tuple[str, int, int], data: Any):
        self.path, self.stamp, self.data = path, stamp, data

    def __reduce__(self) -> tuple[Any, tuple[str, tuple[str, int, int]]]:
        return _reopen, (str(self.path), self.stamp)


# Files alive in this process, by (resolved path, mtime, size). Weak: in the training process a file
# lives as long as the index that refers to it. A decoding worker also keeps its last file (below),
# since the samples it receives refer to the file only by path.
_OPEN: weakref.WeakValueDictionary[tuple[str, int, int], _FeatureFile] = weakref.WeakValueDictionary()
_WORKER_KEEP: dict[tuple[str, int, int], _FeatureFile] = {}


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def _open(path: Path, layout: str) -> _FeatureFile:
    stamp = _stamp(path)
    file = _OPEN.get(stamp)
    if file is None:
        file = _FeatureFile(path, stamp, _unpickle(path, layout))
        _OPEN[stamp] = file
    return _keep_in_worker(file)


def _reopen(path: str, stamp: tuple[str, int, int]) -> _FeatureFile:
    """Unpickling a sample's source: the file already in this process (forked), else load it once."""
    file = _OPEN.get(stamp)
    if file is None:
        file = _open(Path(path), f"  the file '{path}' read by `mmtune prepare`")
    if file.stamp != stamp:
        raise RuntimeError(f"'{path}' changed while it was being prepared; run `mmtune prepare` again.")
    return _keep_in_worker(file)


def _keep_in_worker(file: _FeatureFile) -> _FeatureFile:
    if multiprocessing.parent_process() is not None and file.stamp not in _WORKER_KEEP:  # a worker of `prepare`
        _WORKER_KEEP.clear()
        _WORKER_KEEP[file.stamp] = file
    return file


def _unpickle(path: Path, layout: str) -> Any:
    try:
        with open(path, "rb") as f:
            try:
                return pickle.load(f)
            except UnicodeDecodeError:  # a Python 2 pickle of NumPy arrays
                f.seek(0)
                return pickle.load(f, encoding="latin1")
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not what we expect
        raise ConfigError(Problem("dataset.file", f"'{path}' is not a readable pickle ({type(err).__name__}: {str(err).rstrip('.')}). "
                                                  f"Re-download it, or point dataset.file at the feature pickle. "
                                                  f"Expected layout:\n{layout}")) from None


@dataclass(frozen=True)
class Row:
    """A sample's source: one row of one modality's array in the file (``split`` as the file names it)."""

    file: _FeatureFile
    split: str
    key: str  # the array's key in the split (text_key for text)
    row: int
    pad_front: bool  # the file pads this modality at the front (so crop the front, pad the front)


# ----------------------------------------------------------------------------- reading and checking


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} ({value.dtype})"
    if isinstance(value, dict):
        keys = ", ".join(map(repr, list(value)[:12])) + (", …" if len(value) > 12 else "")
        return f"a dict with keys [{keys}]"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _as_array(value: Any) -> np.ndarray | None:
    """A numeric ndarray view of ``value`` (lists are converted), or None."""
    if not isinstance(value, np.ndarray):
        try:
            value = np.asarray(value)
        except Exception:  # noqa: BLE001 - ragged or odd objects: reported as not an array
            return None
    if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
        return None
    return value


def _label_key(split: dict[str, Any], wanted: str) -> str | None:
    if wanted != "auto":
        return wanted if wanted in split else None
    return next((k for k in ("labels", "regression_labels") if k in split), None)


def _check_file(cfg: MosiConfig, data: Any, path: Path, layout: str) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """Every structural problem of the file at once; returns the label key and the arrays per file split."""
    issues: list[str] = []
    arrays: dict[str, dict[str, np.ndarray]] = {}
    if not isinstance(data, dict):
        raise ConfigError(Problem("dataset.file", f"'{path}' holds {_describe(data)}; expected a dict with keys "
                                                  f"'train', 'valid', 'test'. Expected layout:\n{layout}"))
    absent = [s for s in FILE_SPLITS if s not in data]
    if absent:
        issues.append(f"no split(s) {absent} among its keys {sorted(map(str, data))}")
    first = data.get("train")
    label_key = _label_key(first, cfg.label_key) if isinstance(first, dict) else None
    if label_key is None and isinstance(first, dict):
        wanted_label = "'labels' (MulT) or 'regression_labels' (MMSA)" if cfg.label_key == "auto" else repr(cfg.label_key)
        issues.append(f"'train' has no sentiment key {wanted_label}; its keys: {', '.join(map(repr, first))}")
    keys = {"text": cfg.text_key, "audio": "audio", "vision": "vision"}
    for split in (s for s in FILE_SPLITS if s in data):
        node = data[split]
        if not isinstance(node, dict):
            issues.append(f"'{split}' is {_describe(node)}, expected a dict of arrays")
            continue
        missing = [k for k in [*keys.values(), *([label_key] if label_key else [])] if k not in node]
        if missing:
            issues.append(f"'{split}' has no key(s) {', '.join(repr(k) for k in missing)}; its keys: "
                          f"{', '.join(map(repr, node)) or '(none)'}")
        found: dict[str, np.ndarray] = {}
        n = None
        for m, key in keys.items():
            if key not in node:
                continue
            array = _as_array(node[key])
            if array is None or array.ndim != 3:
                issues.append(f"'{split}/{key}' is {_describe(node[key])}, expected a numeric (N, L, D) array")
                continue
            found[m] = array
            n = len(array) if n is None else n
        if label_key and label_key in node:
            labels = _as_array(node[label_key])
            if labels is None or len(labels) == 0 or labels.size != len(labels):
                issues.append(f"'{split}/{label_key}' is {_describe(node[label_key])}, expected one sentiment score "
                              "per sample: (N,), (N, 1) or (N, 1, 1)")
            else:
                found["labels"] = labels.reshape(-1)
                n = len(labels) if n is None else n
        sizes = {k: len(v) for k, v in found.items()}
        if len(set(sizes.values())) > 1:
            issues.append(f"'{split}' arrays disagree on the number of samples: {sizes}")
        found_ids = node.get("id")
        if found_ids is not None and n is not None:
            try:
                if len(found_ids) == n:
                    found["id"] = found_ids
            except TypeError:
                pass
        arrays[split] = found
    for m in MODALITIES:  # a modality has one feature size (and, unless seq_len is set, one length)
        shapes = {s: tuple(a[m].shape[2 if cfg.seq_len else 1:]) for s, a in arrays.items() if m in a}
        if len(set(shapes.values())) > 1:
            what = "feature size" if cfg.seq_len else "(steps, feature size)"
            issues.append(f"'{keys[m]}' has a different {what} per split: {shapes}"
                          + ("" if cfg.seq_len else "; set dataset.seq_len to bring them to one length"))
    if issues:
        listing = "\n".join(f"    - {i}" for i in issues)
        raise ConfigError(Problem("dataset.file", f"'{path}' is not a {cfg.name} feature file as expected:\n{listing}\n"
                                                  f"  Expected layout:\n{layout}"))
    return label_key or "labels", arrays


def _count_nonfinite(array: np.ndarray) -> int:
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return sum(int(np.count_nonzero(~np.isfinite(array[i:i + _ROWS_PER_CHUNK])))
               for i in range(0, len(array), _ROWS_PER_CHUNK))


def _pads_front(array: np.ndarray) -> bool:
    """More samples with an all-zero first step than an all-zero last step: padded at the front."""
    first = np.count_nonzero((array[:, 0] == 0).all(axis=-1))
    last = np.count_nonzero((array[:, -1] == 0).all(axis=-1))
    return bool(first > last)


def _clip_id(ids: Any, row: int) -> str:
    item = ids[row]
    if isinstance(item, (np.ndarray, list, tuple)) and len(item):  # MulT: (video_id, start, end)-like rows
        item = item[0]
    if isinstance(item, (bytes, np.bytes_)):
        item = item.decode("utf-8", "replace")
    return "_".join(str(item).split())


def _fit_steps(x: np.ndarray, steps: int, front: bool) -> np.ndarray:
    """Crop or zero-pad the time axis to ``steps``, on the side the file pads (the content stays)."""
    if not steps or len(x) == steps:
        return x
    if len(x) > steps:
        return x[-steps:] if front else x[:steps]
    pad = np.zeros((steps - len(x), *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([pad, x] if front else [x, pad])


def clean(x: np.ndarray) -> np.ndarray:
    """float32 with every non-finite value (NaN, ±inf, overflow of the float32 cast) replaced by 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        x = np.asarray(x, dtype=np.float32)
    return np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


# ----------------------------------------------------------------------------- the datasets


@register_dataset
class Mosi(RealDataset):
    """CMU-MOSI (2,199 utterances: 1,284 / 229 / 686) from the MulT or MMSA feature pickles."""

    name = "mosi"
    Config = MosiConfig
    layout = _layout_tree("mosi", "MOSI", "mosi", *KNOWN_DIMS["mosi"])

    @classmethod
    def resolve_file(cls, cfg: MosiConfig) -> Path:
        """The feature pickle ``cfg`` names, or the first reference file under the root."""
        layout = Layout(cfg, cls.layout)
        if cfg.file:
            path = layout.require(cfg.file, kind="file")
            layout.check()
            return path
        layout.check()  # is root a folder at all
        for candidate in CANDIDATES[cls.name]:
            if layout.path(candidate).is_file():
                return layout.path(candidate)
        listing = ", ".join(CANDIDATES[cls.name])
        raise ConfigError(Problem(
            "dataset.root",
            f"'{layout.root}' holds none of the {cls.name} feature files mmtune looks for ({listing}). Point "
            f"dataset.root at the folder that holds one, or name yours with dataset.file=PATH (relative to the "
            f"root). Expected layout:\n{cls.layout}",
        ))

    @classmethod
    def fingerprint(cls, cfg: MosiConfig) -> str:
        """The resolved pickle with its size and mtime: a replaced or newly found file gets a new cache."""
        path = cls.resolve_file(cfg)
        stat = path.stat()
        return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    @classmethod
    def index(cls, cfg: MosiConfig) -> Index:
        path = cls.resolve_file(cfg)
        file = _open(path, cls.layout)
        label_key, arrays = _check_file(cfg, file.data, path, cls.layout)
        keys = {"text": cfg.text_key, "audio": "audio", "vision": "vision"}
        train = arrays["train"]
        if cfg.pad_side == "auto":
            front = {m: _pads_front(train[m]) for m in MODALITIES}
        else:
            front = dict.fromkeys(MODALITIES, cfg.pad_side == "front")
        shapes = {m: (cfg.seq_len or train[m].shape[1], train[m].shape[2]) for m in MODALITIES}
        cls._warn_if_other_dataset(shapes, path)

        splits: dict[str, list[Sample]] = {}
        nonfinite: dict[str, dict[str, int]] = {}
        zeros: dict[str, int] = {}
        bad_labels: list[str] = []
        for file_split, split in FILE_SPLITS.items():
            found = arrays[file_split]
            score = np.asarray(found["labels"], dtype=np.float64)
            if label_key == "classification_labels":  # 0 negative / 1 neutral / 2 positive -> -1 / 0 / 1
                score = score - 1.0
            zeros[split] = int(np.count_nonzero(score == 0))
            nonfinite[split] = {m: _count_nonfinite(found[m]) for m in MODALITIES}
            samples = []
            for row, s in enumerate(score):
                key = f"{file_split}/{row:05d}" + (f"/{_clip_id(found['id'], row)}" if "id" in found else "")
                if not np.isfinite(s):
                    bad_labels.append(key)
                    continue
                if s == 0 and cfg.zero_label == "drop":
                    continue
                label = int(s > 0 or (s == 0 and cfg.zero_label == "positive"))
                sources = {m: Row(file, file_split, keys[m], row, front[m]) for m in MODALITIES}
                samples.append(Sample(key, label, sources))
            splits[split] = samples
        if bad_labels and not cfg.skip_missing:
            shown = ", ".join(bad_labels[:10]) + (f" and {len(bad_labels) - 10} more" if len(bad_labels) > 10 else "")
            raise ConfigError(Problem("dataset.file", f"'{path}': {len(bad_labels)} sample(s) have a non-finite "
                                                      f"'{label_key}' score: {shown}. Set dataset.skip_missing=true "
                                                      "to leave them out."))
        if bad_labels:
            log.warning("%s: left out %d sample(s) with a non-finite '%s' (dataset.skip_missing=true), e.g. %s",
                        cls.name, len(bad_labels), label_key, bad_labels[0])
        replaced = {s: {m: c for m, c in counts.items() if c} for s, counts in nonfinite.items()}
        if any(replaced.values()):
            log.info("%s: replacing non-finite feature values with 0: %s", cls.name, replaced)
        info = {
            "file": str(path),
            "format": "MulT" if label_key == "labels" else "MMSA",
            "label_key": label_key,
            "text_key": cfg.text_key,
            "zero_sentiment": zeros,
            "zero_label": cfg.zero_label,
            "stored_steps": {m: int(train[m].shape[1]) for m in MODALITIES},
            "pad_side": {m: "front" if front[m] else "back" for m in MODALITIES},
            "nonfinite_replaced": replaced,
            "skipped_labels": len(bad_labels),
        }
        modalities = {m: Modality(shapes[m], "float32") for m in MODALITIES}
        return Index(splits, list(CLASSES), modalities, info)

    @classmethod
    def decode(cls, cfg: MosiConfig, modality: str, source: Row) -> np.ndarray:
        x = source.file.data[source.split][source.key][source.row]
        return clean(_fit_steps(np.asarray(x), cfg.seq_len, source.pad_front))

    @classmethod
    def _warn_if_other_dataset(cls, shapes: dict[str, tuple[int, int]], path: Path) -> None:
        dims = (shapes["audio"][1], shapes["vision"][1])
        for other, known in KNOWN_DIMS.items():
            if other != cls.name and dims == known and dims != KNOWN_DIMS[cls.name]:
                log.warning("%s: '%s' has audio/vision features of %d/%d dimensions, as %s files do: is "
                            "dataset.name=%s meant?", cls.name, path, *dims, other, other)


@register_dataset
class Mosei(Mosi):
    """CMU-MOSEI (~22.8k utterances, ~16.3k / 1.9k / 4.6k) from the MulT or MMSA feature pickles."""

    name = "mosei"
    Config = MoseiConfig
    layout = _layout_tree("mosei", "MOSEI", "mosei_senti", *KNOWN_DIMS["mosei"])

