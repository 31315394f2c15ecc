"""Frames: still images, optical-flow frames, and frames sampled from a video file.

Everything returns uint8 channel-first arrays, (C, size, size) per frame: normalisation (ImageNet
mean / std) and augmentation belong to the loader, and a uint8 cache is four times smaller than a
float32 one.

Resizing. Frames are resized to size × size, ignoring the aspect ratio, as the papers do for CREMA-D
(224 × 224; the official test transform is ``transforms.Resize(size=(224, 224))``). Pillow's
bilinear resize is antialiased: its filter widens with the downscale factor, which is what
torchvision's ``Resize(antialias=True)`` does on PIL images. Colour images go through
``.convert("RGB")`` like the official loader (alpha is dropped, greyscale is replicated); optical-flow
frames, greyscale JPEGs in UCF-101's u / v flow layout (mid-grey ≈ 128 is zero motion), go through
``.convert("L")`` and are returned as raw uint8 — centring them is the loader's job.

Frame folders. :func:`list_frames` sorts names naturally (``frame_2`` before ``frame_10``) and skips
hidden files: macOS archives put a ``._frame_1.jpg`` resource fork beside every frame, which has an
image suffix but is not an image.

Video files. :func:`video_frames` decodes with PyAV and keeps one frame per 1/fps seconds: the first
frame whose timestamp reaches each multiple of 1/fps after the first frame. OGM-GE's CREMA-D
extraction (``data/CREMAD/video_preprocessing.py``) keeps frame indices 0, r, 2r, … of an r-fps video
for 1 fps; for a constant, integer frame rate that is the same set of frames. Timestamps stay
correct for variable frame rates and for rates such as 29.97, where counting ``int(r)`` = 29 frames
as a second drifts by about 1 s every 30 s.

Evaluation sampling. :func:`frame_positions` picks the centres of k equal segments of a clip,
⌊(2i + 1)·count / 2k⌋ for i = 0 … k−1 (TSN's test-time sampling), so validation and test see the
same frames at every evaluation. (The official CREMA-D loader draws a random index set and then
ignores it, reading the first ``fps`` names of an unsorted ``os.listdir``.)

A file that exists but cannot be decoded raises :class:`~mmtune.data.errors.CorruptFileError`; a
missing one raises ``FileNotFoundError``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from mmtune.data.errors import CorruptFileError

__all__ = [
    "IMAGE_SUFFIXES", "frame_files", "frame_positions", "list_frames", "read_frame_folder", "read_gray", "read_image",
    "stored_positions", "video_frames",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

# A timestamp within this many slots of a slot boundary counts as on it (float rounding of pts·time_base).
_SLOT_TOLERANCE = 1e-6


def _check_size(size: int) -> None:
    if size < 1:
        raise ValueError(f"`size` must be >= 1 pixel, but got {size=}.")


def _resize(image: Image.Image, size: int) -> Image.Image:
    return image.resize((size, size), Image.Resampling.BILINEAR)


def _decode_image(path: str | os.PathLike[str], mode: str, size: int) -> np.ndarray:
    """The image at ``path`` converted to ``mode`` and resized, as (size, size[, channels]) uint8."""
    _check_size(size)
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)  # decodes the pixels: truncated data fails here, not later
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CorruptFileError(path, f"not a readable image ({err})") from err
    return np.array(_resize(converted, size), dtype=np.uint8)


def read_image(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """An RGB image resized to size × size (bilinear, antialiased), as uint8 (3, size, size)."""
    return np.ascontiguousarray(_decode_image(path, "RGB", size).transpose(2, 0, 1))


def read_gray(path: str | os.PathLike[str], size: int) -> np.ndarray:
    """A greyscale image (an optical-flow u or v frame) resized to size × size, as uint8 (1, size, size)."""
    return _decode_image(path, "L", size)[np.newaxis]


def _natural_key(path: Path) -> tuple[tuple[str | int, ...], str]:
    # re.split with a capturing group alternates text, number, text, …, so keys compare type by type.
    parts = re.split(r"(\d+)", path.name)
    return tuple(int(part) if i % 2 else part.casefold() for i, part in enumerate(parts)), path.name


def list_frames(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files (.jpg, .jpeg, .png, any case) of a frame folder, in natural order, hidden files skipped."""
    frames = [
        entry
        for entry in Path(folder).iterdir()
        if entry.suffix.lower() in IMAGE_SUFFIXES and not entry.name.startswith(".") and entry.is_file()
    ]
    return sorted(frames, key=_natural_key)


def frame_positions(count: int, k: int) -> list[int]:
    """``k`` evenly spaced positions in [0, count): the centres of k equal segments.

    Non-decreasing; distinct when ``count >= k``, and repeating frames when ``count < k``.
    """
    if count < 1 or k < 1:
        raise ValueError(f"need at least one frame and one position, but got {count=} and {k=}.")
    return [(2 * i + 1) * count // (2 * k) for i in range(k)]


def _require_av() -> ModuleType:
    try:
        import av
    except ImportError as err:
        raise ImportError("decoding video files needs PyAV: `pip install av`.") from err
    return av


def _frame_time(frame: Any, index: int, stream: Any) -> float | None:
    """Presentation time in seconds; from the frame index and the stream's rate when pts is missing."""
    if frame.time is not None:
        return float(frame.time)
    rate = stream.average_rate or stream.guessed_rate
    return index / float(rate) if rate else None


def _sample_frames(
    container: Any, path: str | os.PathLike[str], fps: float, size: int, max_frames: int | None
) -> list[np.ndarray]:
    if not container.streams.video:
        raise CorruptFileError(path, "it has no video stream")
    stream = container.streams.video[0]
    kept: list[np.ndarray] = []
    start: float | None = None
    next_slot = 0  # slot s covers [start + s/fps, start + (s+1)/fps): keep the first frame of each
    for index, frame in enumerate(container.decode(stream)):
        time = _frame_time(frame, index, stream)
        if time is None:
            raise CorruptFileError(path, "its frames carry no timestamps and the stream states no frame rate")
        start = time if start is None else start
        slot = math.floor((time - start) * fps + _SLOT_TOLERANCE)
        if slot < next_slot:
            continue
        kept.append(np.asarray(_resize(frame.to_image(), size)).transpose(2, 0, 1))
        next_slot = slot + 1  # after a gap (variable frame rate) empty slots are skipped, not filled
        if max_frames is not None and len(kept) >= max_frames:
            break
    return kept


def video_frames(
    path: str | os.PathLike[str], fps: float, size: int, *, max_frames: int | None = None
) -> np.ndarray:
    """Frames of a video file sampled at ``fps`` frames per second, resized, as uint8 (n, 3, size, size).

    ``max_frames`` stops decoding once that many frames are kept. A file that is not a decodable
    video, has no video stream or yields no frame raises :class:`CorruptFileError`.
    """
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"`fps` must be a finite number > 0, but got {fps=}.")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"`max_frames` must be None or >= 1, but got {max_frames=}.")
    _check_size(size)
    av = _require_av()
    try:
        with av.open(os.fspath(path)) as container:
            frames = _sample_frames(container, path, fps, size, max_frames)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except av.FFmpegError as err:
        raise CorruptFileError(path, f"not a decodable video ({err})") from err
    if not frames:
        raise CorruptFileError(path, "no video frame could be decoded")
    return np.ascontiguousarray(np.stack(frames))


def stored_positions(count: int, k_max: int) -> list[int]:
    """Which of a clip's ``count`` frames a cache stores: all of them when there are at most K,
    else K at the centres of K equal segments (:func:`frame_positions`)."""
    return list(range(count)) if count <= k_max else frame_positions(count, k_max)


def frame_files(folder: str | os.PathLike[str]) -> list[Path]:
    """:func:`list_frames`, but an empty frame folder is a :class:`CorruptFileError`."""
    files = list_frames(folder)
    if not files:
        raise CorruptFileError(folder, "the frame folder holds no .jpg / .png frame")
    return files


def read_frame_folder(folder: str | os.PathLike[str], k_max: int, size: int) -> np.ndarray:
    """Up to ``k_max`` evenly spaced frames of a frame folder, as uint8 ``(n, 3, size, size)``."""
    files = frame_files(folder)
    return np.stack([read_image(files[i], size) for i in stored_positions(len(files), k_max)])

