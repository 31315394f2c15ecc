"""UCF-101 (Soomro et al., arXiv:1212.0402): RGB frames + TV-L1 optical flow, 101 action classes.

How the balancing papers use it (OPM / OGM-GE, TPAMI 2024, arXiv:2410.11582, §4.1-4.2): two
modalities, RGB and optical flow; the official split 1 (9,537 train / 3,783 test videos); frames
extracted at 1 fps and three sampled uniformly per video; ResNet-18 for both modalities, the flow
encoder taking "the horizontal vector and vertical vector [stacked] as one frame" and several frames
folded into the 2-D network as TSN does. Here:

* ``rgb``  = ``(K, 3, S, S)`` uint8, normalised with the ImageNet mean / std;
* ``flow`` = ``(K, 2, S, S)`` uint8, channel 0 the u (horizontal) frame and channel 1 the v
  (vertical) frame of the same position, normalised as TSN / TSM do for flow with an ImageNet
  backbone: ``(x / 255 − 0.5) / 0.226`` (0.5: the flow JPEGs store zero motion as mid-grey;
  0.226: the mean of the ImageNet stds, so a conv1 initialised from RGB weights sees the same scale).

``K = stored_frames`` (default 6) frames are stored per video, ``k = sampled_frames`` (default 3)
of them are used per item: a sorted random subset in training, ``k`` evenly spaced ones in evaluation
(the core's sampling; see :mod:`mmtune.data.real`). GeWu-Lab's BalanceBenchmark loader reads six
1-fps frames and picks three, hence K = 6. The two modalities are sampled independently, as in that
loader. A folder with at most K frames is stored whole; a longer one (25-fps ``jpegs_256``) gives K
frames at the centres of K equal segments (:func:`~mmtune.data.images.frame_positions`), i.e. spread
over the whole clip. Frames are resized to S × S = ``image_size`` (default 224) ignoring the aspect
ratio, like the reference loader's ``Resize((224, 224))``. Full UCF-101 at K = 6, S = 224 makes a
cache of about 20 GB (``image_size=112``: 5 GB).

Layouts read (folder names are knobs, defaults shown)
-----------------------------------------------------
* Split lists — the official ``UCF101TrainTestSplits-RecognitionTask.zip`` (``ucfTrainTestlist/``),
  also found directly in the root (BalanceBenchmark) or in ``UCF_list/`` (the two-stream PyTorch
  repositories); ``list_dir`` picks one explicitly. ``classInd.txt``: ``1 ApplyEyeMakeup`` … ``101
  YoYo``; ``trainlist0N.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`` (1-based label);
  ``testlist0N.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`` (no label: the class folder
  gives it, through ``classInd.txt``). ``split`` = 1, 2 or 3 picks the list pair. Labels are
  classInd's numbers minus one.
* RGB — ``rgb_dir`` (default ``jpegs_256``: feichtenhofer/twostreamfusion's ``ucf101_jpegs_256``,
  ``v_<video>/frame000001.jpg``; any frame folder per video works, e.g. BalanceBenchmark's
  ``ucf101-frames-1fps/video-set``). When ``rgb_dir`` does not exist, frames are extracted from the
  original videos, ``video_dir/<Class>/v_<video>.avi`` (default ``UCF-101``, the official archive;
  ``.mp4`` accepted too), with PyAV at ``video_fps`` (default 1, the papers' rate) while preparing.
* Flow — ``flow_dir`` (default ``tvl1_flow``: twostreamfusion's ``ucf101_tvl1_flow``) holds ``u/`` and
  ``v/``, each with ``v_<video>/frame000001.jpg`` greyscale frames; ``flow_dir=.`` reads ``u/`` and
  ``v/`` from the root (BalanceBenchmark). u and v frames are paired by file name. mmtune does not
  compute optical flow (TV-L1 is out of scope): flow frames must be given.

Folder names are matched case-insensitively, because the official lists and videos spell one class
``v_HandStandPushups_…`` while the twostreamfusion frame folders spell it ``v_HandstandPushups_…``.

Validation: UCF-101 has none; the core carves ``val_fraction`` of train out, stratified and seeded.
Augmentation: the core's random horizontal flip (``flip``) mirrors RGB and flow frames alike and
inverts the flow's u channel (255 − u), since a mirrored clip moves the other way horizontally, as
TSN does (BalanceBenchmark's loader does not invert; set ``dataset.flip=false`` to train without flips).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np

from mmtune.config import hp
from mmtune.data.errors import CorruptFileError
from mmtune.data.images import frame_files, list_frames, read_gray, read_image, stored_positions, video_frames
from mmtune.data.real import (
    IMAGENET_MEAN, IMAGENET_STD, SHOWN_FILES, FrameDataConfig, Index, Layout, Modality, RealDataset, Sample,
    register_dataset,
)
from mmtune.errors import ConfigError, Problem

__all__ = ["FLOW_MEAN", "FLOW_STD", "LIST_DIRS", "VIDEO_SUFFIXES", "Ucf101", "Ucf101Config"]

# TSN / TSM's flow normalisation for ImageNet backbones: mean 0.5 (zero motion is mid-grey),
# std = mean of the ImageNet stds (0.229 + 0.224 + 0.225) / 3.
FLOW_MEAN = (0.5, 0.5)
FLOW_STD = (round(sum(IMAGENET_STD) / 3, 3),) * 2
# Where classInd.txt and the lists are looked for when list_dir is "": the root, the official zip's
# folder, the two-stream repositories' folder.
LIST_DIRS = ("", "ucfTrainTestlist", "UCF_list")
VIDEO_SUFFIXES = (".avi", ".mp4")

LAYOUT = """\
<root>/
  ucfTrainTestlist/           split lists (list_dir; also found in <root>/ or UCF_list/)
    classInd.txt              "1 ApplyEyeMakeup" ... "101 YoYo"
    trainlist01.txt           "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"  (also 02, 03: split=2|3)
    testlist01.txt            "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
  jpegs_256/                  RGB frames, one folder per video (rgb_dir)
    v_ApplyEyeMakeup_g08_c01/frame000001.jpg ...
  UCF-101/                    or the original videos, used when rgb_dir is absent (video_dir)
    ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi ...
  tvl1_flow/                  optical flow frames, greyscale (flow_dir; flow_dir=. reads <root>/u, <root>/v)
    u/v_ApplyEyeMakeup_g08_c01/frame000001.jpg ...   horizontal component
    v/v_ApplyEyeMakeup_g08_c01/frame000001.jpg ...   vertical component
  Flow must be given as frames (e.g. feichtenhofer/twostreamfusion's ucf101_tvl1_flow):
  mmtune does not compute TV-L1 optical flow."""


@dataclass(frozen=True)
class Ucf101Config(FrameDataConfig):
    name: str = hp("ucf101", doc="dataset name")
    split: int = hp(1, choices=(1, 2, 3), doc="official split: trainlist0N.txt / testlist0N.txt")
    list_dir: str = hp("", doc="folder of classInd.txt and the lists, relative to root "
                               "('': the first of <root>, ucfTrainTestlist/, UCF_list/ that holds classInd.txt)")
    rgb_dir: str = hp("jpegs_256", doc="RGB frame folders, one per video (v_<video>/), relative to root")
    video_dir: str = hp("UCF-101", doc="original videos <Class>/v_<video>.avi, read with PyAV when rgb_dir is absent")
    flow_dir: str = hp("tvl1_flow", doc="folder holding the u/ and v/ flow frame folders, relative to root ('.': root)")
    image_size: int = hp(224, low=1, doc="frames are resized to image_size × image_size")
    stored_frames: int = hp(6, low=1, doc="K: frames stored per video and modality, evenly spaced over the clip")
    sampled_frames: int = hp(3, low=1, doc="k: frames per video the model sees "
                                           "(random in training, evenly spaced in evaluation)")
    video_fps: float = hp(1.0, low=0.0, low_open=True,
                          doc="frame rate at which RGB frames are taken from videos (papers: 1 fps)")


@register_dataset
class Ucf101(RealDataset):
    """Index the official lists against the frame / flow folders; decode K frames per modality."""

    name = "ucf101"
    Config = Ucf101Config
    layout: ClassVar[str] = LAYOUT

    @classmethod
    def index(cls, cfg: Ucf101Config) -> Index:
        layout = Layout(cfg, cls.layout)
        lists = _find_list_dir(layout, cfg)
        if lists is not None:
            class_file = layout.require(lists, "classInd.txt", kind="file")
            train_file = layout.require(lists, f"trainlist0{cfg.split}.txt", kind="file")
            test_file = layout.require(lists, f"testlist0{cfg.split}.txt", kind="file")
        rgb_from_frames = layout.exists(cfg.rgb_dir)
        if not rgb_from_frames and not layout.exists(cfg.video_dir):
            layout.require(cfg.rgb_dir)
            layout.require(cfg.video_dir)
        flow_u = layout.require(cfg.flow_dir, "u")
        flow_v = layout.require(cfg.flow_dir, "v")
        layout.check()

        classes = _read_class_index(class_file)
        entries = {"train": _read_list(train_file, classes, labelled=True),
                   "test": _read_list(test_file, classes, labelled=False)}
        rgb_folders = _Folder(layout.path(cfg.rgb_dir)) if rgb_from_frames else None
        u_folders, v_folders = _Folder(flow_u), _Folder(flow_v)
        splits: dict[str, list[Sample]] = {}
        for split, rows in entries.items():
            splits[split] = []
            for list_path, label in rows:
                key = PurePosixPath(list_path).stem  # v_<Class>_gXX_cYY
                if rgb_folders is not None:
                    rgb = rgb_folders.find(key)
                else:
                    rgb = _find_video(layout.path(cfg.video_dir), list_path)
                u, v = u_folders.find(key), v_folders.find(key)
                for found in (rgb, u, v):
                    if not found.exists():
                        layout.missing(found, key)
                splits[split].append(Sample(key, label, {"rgb": rgb, "flow": (u, v)}))

        size, k_max, k = cfg.image_size, cfg.stored_frames, cfg.sampled_frames
        modalities = {
            "rgb": Modality((k_max, 3, size, size), "uint8", frames=k, normalize=(IMAGENET_MEAN, IMAGENET_STD)),
            "flow": Modality((k_max, 2, size, size), "uint8", frames=k, normalize=(FLOW_MEAN, FLOW_STD),
                             flip_invert=(0,)),  # u changes sign under a horizontal flip (TSN does the same)
        }
        info = {
            "split": cfg.split,
            "lists": lists or ".",
            "rgb": (f"frame folders in {cfg.rgb_dir}" if rgb_from_frames
                    else f"videos in {cfg.video_dir}, frames taken at {cfg.video_fps:g} fps with PyAV"),
            "flow": f"u/v frame folders in {cfg.flow_dir}",
        }
        return Index(splits, classes, modalities, info=info, missing=layout.missing_files)

    @classmethod
    def decode(cls, cfg: Ucf101Config, modality: str, source: Path | tuple[Path, Path]) -> np.ndarray:
        size, k_max = cfg.image_size, cfg.stored_frames
        if modality == "rgb":
            if source.suffix.lower() in VIDEO_SUFFIXES and source.is_file():
                frames = video_frames(source, cfg.video_fps, size)
                return frames[stored_positions(len(frames), k_max)]
            files = frame_files(source)
            return np.stack([read_image(files[i], size) for i in stored_positions(len(files), k_max)])
        if modality == "flow":
            pairs = _flow_pairs(*source)
            return np.stack([np.concatenate([read_gray(pairs[i][0], size), read_gray(pairs[i][1], size)])
                             for i in stored_positions(len(pairs), k_max)])
        raise ValueError(f"ucf101 has modalities 'rgb' and 'flow', not {modality!r}")


# ----------------------------------------------------------------------------- index helpers


def _find_list_dir(layout: Layout, cfg: Ucf101Config) -> str | None:
    """The folder holding classInd.txt; None (with every candidate required, for the error) if none does."""
    candidates = (cfg.list_dir,) if cfg.list_dir else LIST_DIRS
    for folder in candidates:
        if layout.path(folder, "classInd.txt").is_file():
            return folder
    for folder in candidates:
        layout.require(folder, "classInd.txt", kind="file")
    return None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines; the official files end lines with CRLF."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _bad_lines(path: Path, bad: list[str], expected: str) -> ConfigError:
    shown = "\n".join(f"    {b}" for b in bad[:SHOWN_FILES])
    more = f"\n    ... and {len(bad) - SHOWN_FILES} more" if len(bad) > SHOWN_FILES else ""
    return ConfigError(Problem("dataset.root", f"{len(bad)} malformed line(s) in '{path}':\n{shown}{more}\n"
                                               f"  Expected lines like {expected}. Expected layout:\n{LAYOUT}"))


def _read_class_index(path: Path) -> list[str]:
    """classInd.txt -> class names ordered by their 1-based number (names[i] has label i)."""
    by_number: dict[int, str] = {}
    bad = []
    for n, line in _lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            bad.append(f"line {n}: {line!r}")
        elif int(parts[0]) in by_number:
            bad.append(f"line {n}: {line!r} (number {parts[0]} given twice)")
        elif parts[1].casefold() in (name.casefold() for name in by_number.values()):
            bad.append(f"line {n}: {line!r} (class {parts[1]} given twice)")
        else:
            by_number[int(parts[0])] = parts[1]
    if bad or not by_number:
        raise _bad_lines(path, bad or ["(no class lines)"], "'1 ApplyEyeMakeup'")
    gaps = sorted(set(range(1, len(by_number) + 1)) - set(by_number))
    if gaps:
        raise ConfigError(Problem("dataset.root", f"'{path}' must number its {len(by_number)} classes 1..{len(by_number)}, "
                                                  f"but lacks {gaps[:SHOWN_FILES]}."))
    return [by_number[i] for i in range(1, len(by_number) + 1)]


def _read_list(path: Path, classes: list[str], *, labelled: bool) -> list[tuple[str, int]]:
    """A train/test list -> (``Class/v_<video>.avi``, 0-based label).

    The class comes from the folder part of each path (through classInd.txt); a train list's number
    must agree with it (the official lists always do; a disagreement means a wrong classInd.txt).
    """
    number = {name.casefold(): i for i, name in enumerate(classes)}
    rows: list[tuple[str, int]] = []
    bad = []
    for n, line in _lines(path):
        parts = line.split()
        folder = parts[0].split("/")[0] if "/" in parts[0] else ""
        label = number.get(folder.casefold())
        if len(parts) > 2 or not folder or label is None:
            why = "no '<Class>/' folder part" if not folder else f"class '{folder}' is not in classInd.txt"
            bad.append(f"line {n}: {line!r} ({why if len(parts) <= 2 else 'too many fields'})")
            continue
        if labelled and len(parts) == 2:
            if not parts[1].isdigit() or int(parts[1]) != label + 1:
                bad.append(f"line {n}: {line!r} (label {parts[1]} but classInd.txt numbers {folder} {label + 1})")
                continue
        rows.append((parts[0], label))
    if bad:
        expected = ("'ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1'" if labelled
                    else "'ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi'")
        raise _bad_lines(path, bad, expected)
    return rows


class _Folder:
    """The entries of one folder, found by exact name or, failing that, case-insensitively."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.names = set(os.listdir(folder)) if folder.is_dir() else set()
        self.folded = {name.casefold(): name for name in sorted(self.names)}

    def find(self, name: str) -> Path:
        """The entry's path, or where it was expected (for the missing-file report)."""
        return self.folder / (name if name in self.names else self.folded.get(name.casefold(), name))


def _find_video(video_dir: Path, list_path: str) -> Path:
    expected = video_dir / list_path
    for suffix in (expected.suffix, *VIDEO_SUFFIXES):
        if expected.with_suffix(suffix).is_file():
            return expected.with_suffix(suffix)
    return expected


# ----------------------------------------------------------------------------- decode helpers


def _flow_pairs(u_folder: Path, v_folder: Path) -> list[tuple[Path, Path]]:
    """(u, v) frames with the same file name, in natural order."""
    v_by_name = {f.name: f for f in list_frames(v_folder)}
    pairs = [(u, v_by_name[u.name]) for u in list_frames(u_folder) if u.name in v_by_name]
    if not pairs:
        raise CorruptFileError(u_folder, f"no flow frame has both a u and a v image (v folder: '{v_folder}')")
    return pairs
