"""Kinetics-Sounds (Arandjelović & Zisserman, arXiv:1705.08168): 31 Kinetics classes that can be heard.

How the balancing papers use it (OPM / OGM-GE, TPAMI 2024, arXiv:2410.11582, §4.1-4.2; AIM; AMSS):
10-second clips, audio and visual; videos "extracted at 1fps and three frames are uniformly sampled
as the visual input"; the audio "re-sampled into 16KHz and transformed into a spectrogram with size
257 × 1,004 using a window with length of 512 and overlap of 353"; ResNet-18 for both modalities,
trained from scratch. Here:

* ``visual`` = ``(K, 3, S, S)`` uint8, normalised with the ImageNet mean / std on the device;
  ``K = stored_frames`` (default 10: the ten 1-fps frames ``frame_00001.jpg`` … ``frame_00010.jpg``)
  and ``k = sampled_frames`` (default 3) of them per item: a sorted random subset in training, three
  evenly spaced ones in evaluation (the core's sampling, :mod:`mmtune.data.real`). GeWu-Lab's loaders
  draw one random frame from each third of the clip in training and the middle of each third in
  evaluation; ours is the same in evaluation and a close relative in training. A clip with fewer
  than K frames is stored whole (the reference loaders drop clips with 3 frames or fewer; we keep
  them and repeat frames when needed). Frames are resized to ``image_size`` (default 224).
* ``audio`` = ``(1, F, T)`` float16, from whichever of two sources the root holds:

  - ``.npy`` spectrograms (``audio=npy``), the GeWu-Lab layout (``train_spec/<clip>.npy``): stored
    as saved, ``(F, T)`` or ``(1, F, T)``, and fed to the encoder as ``(1, F, T)`` exactly as the
    reference loaders feed them (``np.expand_dims(spectrogram, 0)``). The shape is read from the
    header of the first training file; every other file must have the same F and is cropped or tiled
    along its last axis to the same T (``spectrogram_frames`` sets T explicitly). Note that the
    preprocessing script GeWu-Lab publishes (OGM-GE ``data/KineticSound/process_audio.py``, CRMT
    ``pre-processing/extract_audio.py``) saves 128-bin Kaldi fbanks of 1,024 frames as ``(1024, 128)``
    (time × mel), which become ``(1, 1024, 128)``, not the papers' 257 × 1,004.
  - ``.wav`` files (``audio=wav``): turned into the papers' log spectrogram by
    :func:`mmtune.data.audio.spectrogram` with ``seconds`` = 10: ``spectrogram=paper`` gives
    ``(1, 257, 1004)`` (16 kHz, window 512, hop 159: the stated size), ``spectrogram=code`` gives
    ``(1, 257, 625)`` (OGM-GE's CREMA-D code recipe at 10 s). Clips shorter than ``seconds`` are
    tiled, longer ones cut.

  ``audio=auto`` (default) takes ``npy`` when the training audio folder holds any ``.npy`` file.

Labels are the integer last field of each list line; the class names are the 31 Kinetics-Sounds
classes in alphabetical order (checked against GeWu-Lab's BML ``KS.json``: label i in
``ks_train_overlap.txt`` and in OGM-GE's ``my_train.txt`` is the i-th name for every clip both list).
A clip may appear in one list only.

Layouts read (each path is a knob; "" tries the candidates below in order)
---------------------------------------------------------------------------
* Lists: ``ks_train_overlap.txt`` / ``ks_test_overlap.txt`` (GeWu-Lab's "KS_2023" copy used by
  MMPareto, Diagnosing & Re-learning, CRMT and BalanceBenchmark: ``<clip> <label>``, 20,715 / 1,376
  lines) or OGM-GE's ``data/KineticSound/my_train.txt`` / ``my_test.txt`` (``<clip>,10,<label>``,
  CRLF, 14,799 / 2,597 lines). Fields are split on commas and white space: the clip name is the
  first field (a trailing ``.mp4`` is dropped), the label the last. An unlabelled first line
  (a header) is skipped.
* Audio: ``train_spec/``, ``test_spec/`` (``.npy``), or ``train_wav/train/``, ``test_wav/test/``
  (``.wav``: where CRMT's ``extract_audio.py`` reads them), or ``train_wav/``, ``test_wav/``.
* Frames: ``train-frames-1fps/train/<clip>/`` and ``val-frames-1fps/test/<clip>/`` (the KS_2023
  loaders open ``frame_00001.jpg`` … ``frame_00009.jpg`` of ten 1-fps frames), or
  ``train-frames-1fps/<clip>/``, ``test-frames-1fps/<clip>/``. Any image names work (natural order),
  e.g. CRMT's ffmpeg ``-r 1`` output ``000001.jpg`` …

Validation: none is given; the core carves ``val_fraction`` of train out, stratified and seeded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from mmtune.config import hp
from mmtune.data.audio import fit_time, load_npy_spectrogram, read_wav, spectrogram, spectrogram_shape
from mmtune.data.errors import CorruptFileError
from mmtune.data.images import read_frame_folder
from mmtune.data.real import (
    IMAGENET_MEAN, IMAGENET_STD, SHOWN_FILES, FrameDataConfig, Index, Layout, Modality, RealDataset, Sample,
    register_dataset,
)
from mmtune.errors import ConfigError, Problem

__all__ = ["CANDIDATES", "CLASSES", "KineticsSounds", "KineticsSoundsConfig"]

log = logging.getLogger(__name__)

CLASSES = (
    "blowing_nose", "blowing_out_candles", "bowling", "chopping_wood", "dribbling_basketball", "laughing",
    "mowing_lawn", "playing_accordion", "playing_bagpipes", "playing_bass_guitar", "playing_clarinet",
    "playing_drums", "playing_guitar", "playing_harmonica", "playing_keyboard", "playing_organ", "playing_piano",
    "playing_saxophone", "playing_trombone", "playing_trumpet", "playing_violin", "playing_xylophone",
    "ripping_paper", "shoveling_snow", "shuffling_cards", "singing", "stomping_grapes", "tap_dancing",
    "tapping_guitar", "tapping_pen", "tickling",
)
# Where each path knob looks when it is "" (first existing wins), per split.
CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "list": {"train": ("ks_train_overlap.txt", "my_train.txt"), "test": ("ks_test_overlap.txt", "my_test.txt")},
    "audio": {"train": ("train_spec", "train_wav/train", "train_wav"),
              "test": ("test_spec", "test_wav/test", "test_wav")},
    "frames": {"train": ("train-frames-1fps/train", "train-frames-1fps"),
               "test": ("val-frames-1fps/test", "test-frames-1fps/test", "val-frames-1fps", "test-frames-1fps")},
}
VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi")  # dropped from list names ("<clip>.mp4 <label>")

LAYOUT = """\
<root>/
  ks_train_overlap.txt      "<clip> <label>" per line (train_list; or OGM-GE's my_train.txt "<clip>,10,<label>")
  ks_test_overlap.txt       (test_list; or my_test.txt)
  train_spec/               audio, one per clip (train_audio): <clip>.npy spectrograms,
    --4-0ihtnBU_000058_000068.npy ...   or .wav files in train_wav/train/ (or train_wav/)
  test_spec/                (test_audio; or test_wav/test/, test_wav/)
  train-frames-1fps/train/  1-fps frames, one folder per clip (train_frames; or train-frames-1fps/)
    --4-0ihtnBU_000058_000068/frame_00001.jpg ... frame_00010.jpg
  val-frames-1fps/test/     (test_frames; or test-frames-1fps/test/, val-frames-1fps/, test-frames-1fps/)"""


@dataclass(frozen=True)
class KineticsSoundsConfig(FrameDataConfig):
    name: str = hp("kinetics_sounds", doc="dataset name")
    train_list: str = hp("", doc="train list file, relative to root ('': ks_train_overlap.txt, else my_train.txt)")
    test_list: str = hp("", doc="test list file, relative to root ('': ks_test_overlap.txt, else my_test.txt)")
    train_audio: str = hp("", doc="train audio folder ('': train_spec/, else train_wav/train/, else train_wav/)")
    test_audio: str = hp("", doc="test audio folder ('': test_spec/, else test_wav/test/, else test_wav/)")
    train_frames: str = hp("", doc="train frame folders ('': train-frames-1fps/train/, else train-frames-1fps/)")
    test_frames: str = hp("", doc="test frame folders ('': val-frames-1fps/test/, test-frames-1fps/test/, "
                                  "val-frames-1fps/, test-frames-1fps/)")
    audio: str = hp("auto", choices=("auto", "npy", "wav"),
                    doc="audio files: npy spectrograms or wav ('auto': npy if the train audio folder holds any)")
    spectrogram: str = hp("paper", choices=("paper", "code"),
                          doc="recipe for wav files: paper (257 × 1004 at 10 s) or code (OGM-GE's, 257 × 625)")
    seconds: float = hp(10.0, low=0.05, doc="clip length of wav spectrograms, tiled or cut (papers: 10 s)")
    spectrogram_frames: int = hp(0, low=0, doc="T: spectrograms cropped / tiled to T frames (0: as the first "
                                               ".npy file, or as `seconds` gives for wav files)")
    image_size: int = hp(224, low=1, doc="frames are resized to image_size × image_size (papers: 224)")
    stored_frames: int = hp(10, low=1, doc="K: 1-fps frames stored per clip, evenly spaced (clips give 10)")
    sampled_frames: int = hp(3, low=1, doc="k: frames per clip the model sees (papers: 3)")


@register_dataset
class KineticsSounds(RealDataset):
    """Index the list files against the audio and frame folders; decode spectrograms and K frames."""

    name = "kinetics_sounds"
    Config = KineticsSoundsConfig
    layout: ClassVar[str] = LAYOUT

    @classmethod
    def fingerprint(cls, cfg: KineticsSoundsConfig) -> str:
        """The paths the empty knobs resolve to, the audio kind and the list files' size and mtime: a
        root that gains my_train.txt or loses train_spec/ must not reuse the old cache."""
        paths = _paths(Layout(cfg, LAYOUT), cfg)
        kind = cfg.audio if cfg.audio != "auto" else _audio_kind(paths["train"]["audio"])
        parts = [kind]
        for where in paths.values():
            stat = where["list"].stat() if where["list"].is_file() else None
            parts += [str(p) for p in where.values()] + [f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "absent"]
        return ";".join(parts)

    @classmethod
    def index(cls, cfg: KineticsSoundsConfig) -> Index:
        layout = Layout(cfg, cls.layout)
        paths = _paths(layout, cfg)
        layout.check()

        kind = cfg.audio if cfg.audio != "auto" else _audio_kind(paths["train"]["audio"])
        entries: dict[str, list[tuple[str, int, Path, Path]]] = {}
        for split, where in paths.items():
            entries[split] = []
            for clip, label in _read_list(where["list"]):
                audio, frames = where["audio"] / f"{clip}.{kind}", where["frames"] / clip
                for path in (audio, frames):
                    if not path.exists():
                        layout.missing(path, clip)
                entries[split].append((clip, label, audio, frames))
        _check_disjoint(entries, paths)

        if kind == "npy":
            rows, frames_t = _npy_shape(audio for _, _, audio, _ in entries["train"])
        else:
            _, rows, frames_t = spectrogram_shape(mode=cfg.spectrogram, seconds=cfg.seconds)
        audio_shape = (1, rows, cfg.spectrogram_frames or frames_t)
        # decode() sees one sample only: each audio source carries the (F, T) every clip is fitted to.
        splits = {split: [Sample(clip, label, {"audio": (audio, audio_shape[1:]), "visual": frames})
                          for clip, label, audio, frames in listed]
                  for split, listed in entries.items()}
        size = cfg.image_size
        modalities = {
            "audio": Modality(audio_shape, "float16"),
            "visual": Modality((cfg.stored_frames, 3, size, size), "uint8", frames=cfg.sampled_frames,
                               normalize=(IMAGENET_MEAN, IMAGENET_STD)),
        }
        recipe = f", spectrogram={cfg.spectrogram}, seconds={cfg.seconds:g}" if kind == "wav" else ""
        info = {"audio": f"{kind} files{recipe}",
                **{f"{split}_{what}": str(path) for split, where in paths.items() for what, path in where.items()}}
        return Index(splits, list(CLASSES), modalities, info=info, missing=layout.missing_files)

    @classmethod
    def decode(cls, cfg: KineticsSoundsConfig, modality: str,
               source: Path | tuple[Path, tuple[int, int]]) -> np.ndarray:
        if modality == "audio":
            path, (rows, frames_t) = source
            if path.suffix == ".npy":
                spec = load_npy_spectrogram(path)
            else:
                wave, rate = read_wav(path)
                spec = spectrogram(wave, rate, mode=cfg.spectrogram, seconds=cfg.seconds)
            if spec.shape[1] != rows:
                raise CorruptFileError(path, f"its spectrogram has shape {spec.shape[1:]}, but the dataset's have "
                                             f"{rows} rows (as the first training file; see dataset.audio)")
            return fit_time(spec, frames_t)
        if modality == "visual":
            return read_frame_folder(source, cfg.stored_frames, cfg.image_size)
        raise ValueError(f"kinetics_sounds has modalities 'audio' and 'visual', not {modality!r}")


# ----------------------------------------------------------------------------- index helpers


def _paths(layout: Layout, cfg: KineticsSoundsConfig) -> dict[str, dict[str, Path]]:
    """Per split, the list file and the audio and frame folders: the knobs, or the first existing candidates."""
    return {
        split: {
            what: _resolve(layout, getattr(cfg, f"{split}_{what}"), CANDIDATES[what][split],
                           "file" if what == "list" else "folder")
            for what in ("list", "audio", "frames")
        }
        for split in ("train", "test")
    }


def _resolve(layout: Layout, given: str, candidates: tuple[str, ...], kind: str) -> Path:
    """The knob's path, or the first existing candidate; absent ones are required (named in the error)."""
    options = (given,) if given else candidates
    for option in options:
        path = layout.path(option)
        if path.is_file() if kind == "file" else path.is_dir():
            return path
    return layout.require(options[0], kind=kind)


def _audio_kind(folder: Path) -> str:
    return "npy" if folder.is_dir() and next(folder.glob("*.npy"), None) is not None else "wav"


_FIELDS = re.compile(r"[,\s]+")


def _read_list(path: Path) -> list[tuple[str, int]]:
    """``<clip> <label>`` or ``<clip>,10,<label>`` lines -> (clip, label); a header line is skipped."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    rows: list[tuple[str, int]] = []
    seen: set[str] = set()
    bad, repeated = [], []
    for i, (n, line) in enumerate(lines):
        fields = _FIELDS.split(line)
        label = fields[-1]
        if not re.fullmatch(r"\d+", label) or len(fields) < 2:
            if i == 0:
                continue  # a header
            bad.append(f"line {n}: {line!r} (no integer label as the last field)")
            continue
        if int(label) >= len(CLASSES):
            bad.append(f"line {n}: {line!r} (label {label} outside 0..{len(CLASSES) - 1})")
            continue
        clip = fields[0]
        if Path(clip).suffix.lower() in VIDEO_SUFFIXES:
            clip = clip[: -len(Path(clip).suffix)]
        if clip in seen:
            repeated.append(clip)
            continue
        seen.add(clip)
        rows.append((clip, int(label)))
    if bad:
        shown = "\n".join(f"    {b}" for b in bad[:SHOWN_FILES])
        more = f"\n    ... and {len(bad) - SHOWN_FILES} more" if len(bad) > SHOWN_FILES else ""
        expected = f"'<clip> <label>' or '<clip>,10,<label>' lines, the label in 0..{len(CLASSES) - 1}"
        raise ConfigError(Problem("dataset.root", f"{len(bad)} malformed line(s) in '{path}':\n{shown}{more}\n"
                                                  f"  Expected {expected}. Expected layout:\n{LAYOUT}"))
    if repeated:
        log.warning("kinetics_sounds: %d clip(s) listed twice in %s, kept once (e.g. %s)",
                    len(repeated), path, repeated[0])
    return rows


def _check_disjoint(entries: dict[str, list[tuple[str, int, Path, Path]]], paths: dict[str, dict[str, Path]]) -> None:
    both = sorted({clip for clip, *_ in entries["train"]} & {clip for clip, *_ in entries["test"]})
    if both:
        more = f" and {len(both) - SHOWN_FILES} more" if len(both) > SHOWN_FILES else ""
        raise ConfigError(Problem("dataset.root", f"{len(both)} clip(s) are in both '{paths['train']['list']}' and "
                                                  f"'{paths['test']['list']}': {', '.join(both[:SHOWN_FILES])}{more}. "
                                                  "A clip belongs to one split."))


def _npy_shape(paths: Iterable[Path]) -> tuple[int, int]:
    """(F, T) of the first readable .npy header among ``paths`` (the header only; nothing is decoded)."""
    tried = 0
    for path in paths:
        if not path.is_file():
            continue
        tried += 1
        try:
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError, EOFError):
            if tried >= SHOWN_FILES:
                break
            continue
        if len(shape) == 2 or (len(shape) == 3 and shape[0] == 1):
            return int(shape[-2]), int(shape[-1])
        if tried >= SHOWN_FILES:
            break
    raise ConfigError(Problem("dataset.root", f"none of the first {tried} training .npy spectrograms has a readable "
                                              "(F, T) or (1, F, T) array, so the spectrogram size is unknown. "
                                              f"Expected layout:\n{LAYOUT}"))
