"""CREMA-D (Cao et al., IEEE TAC 2014): audio + face video of 91 actors, 6 emotions, 7,442 clips.

How the balancing papers use it (OGM-GE, CVPR 2022, arXiv:2203.15332; OPM / OGM-GE, TPAMI 2024,
arXiv:2410.11582, §4.1-4.2): two modalities, audio and visual; ResNet-18 for both, trained from
scratch, the audio one taking a 1-channel spectrogram; "one visual frame is randomly extracted from
each clip" (1-fps frames, 224 × 224); the audio "processed into a spectrogram of size 257 × 299 with
a window length of 512 and overlap of 353". OGM-GE's ``data/CREMAD/{train,test}.csv`` split the
7,442 clips into 6,698 train / 744 test. Here:

* ``audio``  = ``(1, 257, T)`` float16 (``log(|STFT| + 1e-7)``), T = 299 for ``spectrogram=paper``
  (16 kHz, hop 159, 3 s, no padding: the papers' stated size) or 188 for ``spectrogram=code`` (what
  the official ``dataset/CramedDataset.py`` computes: 22.05 kHz, hop 353, librosa's centred STFT).
  Both recipes, and the two small differences from the official code (clips shorter than 1 s are
  tiled to fill 3 s; torchaudio's resampler), are documented in :mod:`mmtune.data.audio`.
* ``visual`` = ``(K, 3, S, S)`` uint8, normalised with the ImageNet mean / std on the device.
  ``K = stored_frames`` (default 3) of a clip's 1-fps frames are stored, evenly spaced (CREMA-D
  clips last 2-5 s, so 2-5 frames at 1 fps; a clip with at most K frames is stored whole);
  ``k = sampled_frames`` (default 1, the papers' setting) of them are used per item: a random one in
  training, the middle one in evaluation (the core's sampling, :mod:`mmtune.data.real`). Frames are
  resized to ``image_size`` (default 224) ignoring the aspect ratio, like the official evaluation
  transform ``Resize((224, 224))``. The official training transform's ``RandomResizedCrop`` is not
  reproduced; the core applies the random horizontal flip. (The official loader also draws random
  frame indices and then ignores them, reading the first names of an unsorted ``os.listdir``.)

Labels come from the clip name's third token, the emotion: ``1001_DFA_ANG_XX`` is ANG. Class
indices follow OGM-GE's ``class_dict``: NEU 0, HAP 1, SAD 2, FEA 3, DIS 4, ANG 5.

Layouts read
------------
* Audio: the release's ``AudioWAV/<clip>.wav`` (16 kHz mono PCM).
* Frames: OGM-GE's ``data/CREMAD/video_preprocessing.py`` writes ``Image-01-FPS/<clip>/`` with
  frames named by their video frame index (``00000.jpg``, ``00030.jpg``, …); any image names work
  (natural order, hidden files skipped). ``frames_dir`` renames the folder.
* Videos instead of frames: when ``frames_dir`` does not exist, the release's ``VideoFlash/<clip>.flv``
  (or ``VideoMP4/<clip>.mp4``, the converted copies many mirrors carry) are decoded with PyAV at
  ``video_fps`` (default 1) while preparing; nothing is written next to the videos.
* Split: OGM-GE's ``train.csv`` / ``test.csv`` (copy them from the repository's ``data/CREMAD/`` into
  the root, or point ``split_dir`` at that folder). Rows are ``clip,LABEL`` with no header, CRLF line
  ends, labels spelled like the clip token (``1088_IOM_NEU_XX,NEU``); a header row (``name,label``,
  as in GeWu-Lab's Diagnosing & Re-learning copy) and a UTF-8 byte-order mark are accepted. A row's
  label must agree with its clip name. Without the two files, ``test_fraction`` (default 0.1, OGM-GE's
  744 / 7,442) of every class is held out as test, seeded by ``split_seed``: a clip-level split like
  OGM-GE's (actors appear in both splits), not a speaker-independent one.

Validation: OGM-GE has none (it reports the test accuracy of the best epoch); the core carves
``val_fraction`` of train out, stratified and seeded, so model selection never sees the test split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from mmtune.config import hp
from mmtune.data.audio import read_wav, spectrogram, spectrogram_shape
from mmtune.data.errors import CorruptFileError
from mmtune.data.images import read_frame_folder, stored_positions, video_frames
from mmtune.data.real import (
    IMAGENET_MEAN, IMAGENET_STD, SHOWN_FILES, FrameDataConfig, Index, Layout, Modality, RealDataset, Sample,
    register_dataset, stratified_split,
)
from mmtune.errors import ConfigError, Problem

__all__ = ["EMOTIONS", "SECONDS", "Cremad", "CremadConfig"]

log = logging.getLogger(__name__)

# OGM-GE's class_dict order: {'NEU': 0, 'HAP': 1, 'SAD': 2, 'FEA': 3, 'DIS': 4, 'ANG': 5}.
EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
SECONDS = 3.0  # the official code tiles every clip to 3 s before the STFT
VIDEO_DIRS = (("VideoFlash", ".flv"), ("VideoMP4", ".mp4"))
LFS_POINTER = b"version https://git-lfs"  # what a clone without `git lfs pull` holds instead of media

LAYOUT = """\
<root>/
  AudioWAV/                 the CREMA-D release's audio
    1001_DFA_ANG_XX.wav ...
  Image-01-FPS/             1-fps frames, one folder per clip (frames_dir; OGM-GE's video_preprocessing.py)
    1001_DFA_ANG_XX/00000.jpg 00030.jpg ...
  VideoFlash/               or, when Image-01-FPS/ is absent: the release's videos, decoded at 1 fps
    1001_DFA_ANG_XX.flv ...   (or VideoMP4/1001_DFA_ANG_XX.mp4)
  train.csv                 optional, with test.csv: OGM-GE's data/CREMAD split (6698 / 744 rows),
  test.csv                    rows "1001_DFA_ANG_XX,ANG" (split_dir: another folder holding them);
                            without them test_fraction of each class is held out, seeded"""


@dataclass(frozen=True)
class CremadConfig(FrameDataConfig):
    name: str = hp("cremad", doc="dataset name")
    spectrogram: str = hp("paper", choices=("paper", "code"),
                          doc="paper: 257 × 299 as the papers state it; code: 257 × 188 as OGM-GE's code computes it")
    image_size: int = hp(224, low=1, doc="frames are resized to image_size × image_size (papers: 224)")
    stored_frames: int = hp(3, low=1, doc="K: 1-fps frames stored per clip, evenly spaced (clips give 2-5)")
    sampled_frames: int = hp(1, low=1, doc="k: frames per clip the model sees (papers: 1; random in training, "
                                           "the middle one in evaluation)")
    frames_dir: str = hp("Image-01-FPS", doc="1-fps frame folders, one per clip, relative to root")
    video_fps: float = hp(1.0, low=0.0, low_open=True, doc="frame rate at which frames are taken from "
                                                           "VideoFlash/ or VideoMP4/ when frames_dir is absent")
    split_dir: str = hp("", doc="folder holding OGM-GE's train.csv / test.csv, relative to root ('': root)")
    test_fraction: float = hp(0.1, low=0.0, low_open=True, high=1.0, high_open=True,
                              doc="share of each class held out as test when there is no train.csv / test.csv")


@register_dataset
class Cremad(RealDataset):
    """Index AudioWAV/ against the frame folders (or videos) and the optional csv split."""

    name = "cremad"
    Config = CremadConfig
    layout: ClassVar[str] = LAYOUT

    @classmethod
    def fingerprint(cls, cfg: CremadConfig) -> str:
        """The split files (size, mtime) and where frames come from: copying OGM-GE's csv files into a
        prepared root, or extracting frames next to the videos, must not reuse the old cache. Without
        split files the clips are the WAVs found, so their names count too (the cache's sources.json
        covers the files it was decoded from, not one added later)."""
        root = Path(cfg.root).expanduser()
        split_files = [_stamp(root / cfg.split_dir / name) for name in ("train.csv", "test.csv")]
        parts = [*split_files, "frames" if (root / cfg.frames_dir).is_dir() else "videos"]
        if split_files[0].endswith(":absent") and split_files[1].endswith(":absent") and (root / "AudioWAV").is_dir():
            names = sorted(e.name for e in os.scandir(root / "AudioWAV")
                           if not e.name.startswith(".") and e.name.lower().endswith(".wav"))
            parts.append(hashlib.sha256("\n".join(names).encode()).hexdigest()[:16])
        return ";".join(parts)

    @classmethod
    def index(cls, cfg: CremadConfig) -> Index:
        layout = Layout(cfg, cls.layout)
        audio_dir = layout.require("AudioWAV")
        frames_dir = layout.path(cfg.frames_dir)
        videos = [(layout.path(folder), suffix) for folder, suffix in VIDEO_DIRS if layout.path(folder).is_dir()]
        if not frames_dir.is_dir() and not videos:
            layout.require(cfg.frames_dir)  # named in the error; the tree shows the video alternatives
        train_csv, test_csv = layout.path(cfg.split_dir, "train.csv"), layout.path(cfg.split_dir, "test.csv")
        given = train_csv.is_file() or test_csv.is_file()
        if given:  # one without the other is a half-copied split, not "no split"
            layout.require(cfg.split_dir, "train.csv", kind="file")
            layout.require(cfg.split_dir, "test.csv", kind="file")
        layout.check()

        if given:
            rows = {"train": _read_split_csv(train_csv), "test": _read_split_csv(test_csv)}
            _check_disjoint(rows, train_csv.parent)
            split_info = f"given: {train_csv.name} / {test_csv.name} in {train_csv.parent}"
        else:
            rows = _split_audio_folder(audio_dir, cfg)
            split_info = (f"no train.csv / test.csv: test_fraction={cfg.test_fraction} of each class held out "
                          f"(split_seed={cfg.split_seed}, stratified)")

        splits: dict[str, list[Sample]] = {}
        for split, clips in rows.items():
            splits[split] = []
            for clip, label in clips:
                wav = audio_dir / f"{clip}.wav"
                visual = frames_dir / clip if frames_dir.is_dir() else _find_video(videos, clip)
                for path in (wav, visual):
                    if not path.exists():
                        layout.missing(path, clip)
                splits[split].append(Sample(clip, label, {"audio": wav, "visual": visual}))

        size = cfg.image_size
        modalities = {
            "audio": Modality(spectrogram_shape(mode=cfg.spectrogram, seconds=SECONDS), "float16"),
            "visual": Modality((cfg.stored_frames, 3, size, size), "uint8", frames=cfg.sampled_frames,
                               normalize=(IMAGENET_MEAN, IMAGENET_STD)),
        }
        info = {
            "split": split_info,
            "visual": (f"frame folders in {cfg.frames_dir}" if frames_dir.is_dir()
                       else f"videos in {', '.join(str(v.name) for v, _ in videos)}, frames taken at "
                            f"{cfg.video_fps:g} fps with PyAV"),
            "spectrogram": cfg.spectrogram,
        }
        return Index(splits, list(EMOTIONS), modalities, info=info, missing=layout.missing_files)

    @classmethod
    def decode(cls, cfg: CremadConfig, modality: str, source: Path) -> np.ndarray:
        try:
            if modality == "audio":
                wave, rate = read_wav(source)
                return spectrogram(wave, rate, mode=cfg.spectrogram, seconds=SECONDS)
            if modality == "visual":
                if source.suffix.lower() in {suffix for _, suffix in VIDEO_DIRS}:
                    frames = video_frames(source, cfg.video_fps, cfg.image_size)
                    return frames[stored_positions(len(frames), cfg.stored_frames)]
                return read_frame_folder(source, cfg.stored_frames, cfg.image_size)
        except CorruptFileError as err:
            if _is_lfs_pointer(err.path):
                raise CorruptFileError(err.path, "it is a Git LFS pointer, not the media file: the CREMA-D "
                                                 "repository stores its files with Git LFS; run `git lfs pull` "
                                                 "in the clone") from err
            raise
        raise ValueError(f"cremad has modalities 'audio' and 'visual', not {modality!r}")


# ----------------------------------------------------------------------------- shared decode helpers


# ----------------------------------------------------------------------------- index helpers


def emotion(clip: str) -> str | None:
    """The emotion token of a CREMA-D clip name (``1001_DFA_ANG_XX`` -> ``ANG``), or None."""
    parts = clip.split("_")
    return parts[2] if len(parts) >= 3 and parts[2] in EMOTIONS else None


def _bad_rows(path: Path, bad: list[str], expected: str) -> ConfigError:
    shown = "\n".join(f"    {b}" for b in bad[:SHOWN_FILES])
    more = f"\n    ... and {len(bad) - SHOWN_FILES} more" if len(bad) > SHOWN_FILES else ""
    return ConfigError(Problem("dataset.root", f"{len(bad)} malformed row(s) in '{path}':\n{shown}{more}\n"
                                               f"  Expected rows like {expected}. Expected layout:\n{LAYOUT}"))


def _read_split_csv(path: Path) -> list[tuple[str, int]]:
    """OGM-GE's ``clip,LABEL`` rows -> (clip, label index); a header row and a BOM are skipped."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [(n, [field.strip() for field in row]) for n, row in enumerate(csv.reader(f), start=1)]
    rows = [(n, row) for n, row in rows if any(row)]
    out: list[tuple[str, int]] = []
    bad = []
    for i, (n, row) in enumerate(rows):
        clip = row[0]
        label = row[1].upper() if len(row) > 1 else ""
        if i == 0 and label not in EMOTIONS and emotion(clip) is None:
            continue  # a header such as "name,label"
        if len(row) < 2 or label not in EMOTIONS:
            bad.append(f"row {n}: {','.join(row)!r} (label {label!r} is not one of {', '.join(EMOTIONS)})")
        elif emotion(clip) not in (None, label):
            bad.append(f"row {n}: {','.join(row)!r} (label {label} but the clip name says {emotion(clip)})")
        else:
            out.append((clip, EMOTIONS.index(label)))
    if bad:
        raise _bad_rows(path, bad, "'1001_DFA_ANG_XX,ANG'")
    return out


def _check_disjoint(rows: dict[str, list[tuple[str, int]]], folder: Path) -> None:
    seen: dict[str, str] = {}
    repeated = []
    for split, clips in rows.items():
        for clip, _ in clips:
            if clip in seen:
                repeated.append(f"{clip} ({seen[clip]}.csv and {split}.csv)" if seen[clip] != split
                                else f"{clip} (twice in {split}.csv)")
            seen.setdefault(clip, split)
    if repeated:
        shown = ", ".join(repeated[:SHOWN_FILES]) + (f" and {len(repeated) - SHOWN_FILES} more"
                                                    if len(repeated) > SHOWN_FILES else "")
        raise ConfigError(Problem("dataset.root", f"{len(repeated)} clip(s) listed more than once in the split "
                                                  f"files in '{folder}': {shown}. Each clip must be in exactly one "
                                                  f"of train.csv and test.csv, once."))


def _split_audio_folder(audio_dir: Path, cfg: CremadConfig) -> dict[str, list[tuple[str, int]]]:
    """Every AudioWAV/<clip>.wav, labelled by its name; test_fraction of each class held out, seeded."""
    clips, unnamed = [], []
    for wav in sorted(audio_dir.iterdir()):
        if wav.name.startswith(".") or wav.suffix.lower() != ".wav":
            continue
        (clips if emotion(wav.stem) else unnamed).append(wav.stem)
    if unnamed:
        what = (f"{len(unnamed)} file(s) in '{audio_dir}' whose name has no emotion token "
                f"({', '.join(EMOTIONS)}) as its third '_' part, e.g. {', '.join(unnamed[:3])}")
        if not cfg.skip_missing:
            raise ConfigError(Problem("dataset.root", f"{what}. Expected names like 1001_DFA_ANG_XX.wav; remove "
                                                      f"those files or set dataset.skip_missing=true to skip them."))
        log.warning("cremad: skipping %s (dataset.skip_missing=true)", what)
    labels = [EMOTIONS.index(emotion(c)) for c in clips]
    train, test = stratified_split(labels, cfg.test_fraction, cfg.split_seed)
    return {"train": [(clips[i], labels[i]) for i in train], "test": [(clips[i], labels[i]) for i in test]}


def _stamp(path: Path) -> str:
    try:
        stat = path.stat()
    except OSError:
        return f"{path.name}:absent"
    return f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}"


def _is_lfs_pointer(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER)) == LFS_POINTER
    except OSError:
        return False


def _find_video(videos: list[tuple[Path, str]], clip: str) -> Path:
    """The clip's video in the first video folder that has it, or where it was expected."""
    for folder, suffix in videos:
        if (folder / f"{clip}{suffix}").is_file():
            return folder / f"{clip}{suffix}"
    folder, suffix = videos[0]
    return folder / f"{clip}{suffix}"
