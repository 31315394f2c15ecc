"""Frames: image decoding (layout, colour, antialiasing), greyscale flow frames, natural frame order,
video sampling at a given fps, evaluation positions, and corrupt files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from mmtune.data.errors import CorruptFileError
from mmtune.data.images import frame_positions, list_frames, read_gray, read_image, video_frames

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(width: int = 40, height: int = 20) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white: catches H/W/C mix-ups."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2 :] = GREEN
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = WHITE
    return Image.fromarray(pixels)


# ---------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_pure_red_stays_red(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"red{suffix}"
    Image.new("RGB", (50, 30), RED).save(path, quality=95)
    image = read_image(path, 16)
    assert image.shape == (3, 16, 16) and image.dtype == np.uint8
    tolerance = 0 if suffix == ".png" else 4  # JPEG's colour conversion is lossy
    assert (image[0] >= 255 - tolerance).all()
    assert (image[1:] <= tolerance).all()


def test_layout_is_channels_rows_columns(tmp_path: Path) -> None:
    quadrants().save(tmp_path / "q.png")
    image = read_image(tmp_path / "q.png", 8)  # non-square 40 × 20 in, square out
    assert image.shape == (3, 8, 8)
    assert tuple(image[:, 0, 0]) == RED
    assert tuple(image[:, 0, -1]) == GREEN
    assert tuple(image[:, -1, 0]) == BLUE
    assert tuple(image[:, -1, -1]) == WHITE


def test_downscaling_is_antialiased(tmp_path: Path) -> None:
    # A one-pixel checkerboard averages to mid-grey; a non-antialiased resize would sample 0s and 255s.
    board = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)
    Image.fromarray(board).save(tmp_path / "board.png")
    image = read_image(tmp_path / "board.png", 8)
    assert np.abs(image.astype(int) - 127.5).max() <= 3


def test_greyscale_and_alpha_inputs_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (10, 10), 77).save(tmp_path / "grey.png")
    Image.new("RGBA", (10, 10), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    assert (read_image(tmp_path / "grey.png", 4) == 77).all()
    alpha = read_image(tmp_path / "alpha.png", 4)
    assert alpha.shape == (3, 4, 4)
    assert [int(alpha[c].mean()) for c in range(3)] == [10, 20, 30]  # alpha dropped, colour kept


def test_read_gray_gives_one_channel(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # brightness grows left to right
    Image.fromarray(ramp).save(tmp_path / "flow_u.png")
    flow = read_gray(tmp_path / "flow_u.png", 16)
    assert flow.shape == (1, 16, 16) and flow.dtype == np.uint8
    assert (np.diff(flow[0].astype(int), axis=1) > 0).all()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(tmp_path / "grey_rgb.jpg", quality=100)
    assert np.abs(read_gray(tmp_path / "grey_rgb.jpg", 4).astype(int) - 128).max() <= 1


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "text"])
@pytest.mark.parametrize("reader", [read_image, read_gray])
def test_undecodable_images_raise_corrupt_file_error(
    tmp_path: Path, damage: str, reader: Callable[[Path, int], np.ndarray]
) -> None:
    path = tmp_path / "broken.jpg"
    quadrants(400, 300).save(path, quality=90)
    good = path.read_bytes()
    content = {
        "random bytes": np.random.default_rng(0).bytes(3000),
        "truncated": good[: len(good) // 2],
        "text": b"not an image at all\n",
    }[damage]
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as info:
        reader(path, 32)
    assert info.value.path == path and str(path) in str(info.value)


def test_missing_image_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "nope.jpg", 8)


# ---------------------------------------------------------------------------------------------- frame folders


def test_list_frames_sorts_naturally_and_keeps_only_images(tmp_path: Path) -> None:
    for name in ["frame_10.jpg", "frame_2.jpg", "frame_1.jpg", "Frame_3.PNG", "x.jpeg", "notes.txt", "._frame_1.jpg"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "frame_5.jpg").mkdir()  # a folder with an image suffix is not a frame
    names = [p.name for p in list_frames(tmp_path)]
    assert names == ["frame_1.jpg", "frame_2.jpg", "Frame_3.PNG", "frame_10.jpg", "x.jpeg"]
    assert all(isinstance(p, Path) and p.parent == tmp_path for p in list_frames(tmp_path))


def test_list_frames_of_missing_folder_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list_frames(tmp_path / "nope")


# ---------------------------------------------------------------------------------------------- video files

VIDEO_FPS, VIDEO_SECONDS = 10, 3


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 s at 10 fps, 64 × 48; frame i has red level 8·i, so a decoded frame tells its own index."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    codec = next(name for name in ("libx264", "mpeg4") if _can_encode(name))
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(VIDEO_FPS * VIDEO_SECONDS):
            pixels = np.zeros((48, 64, 3), np.uint8)
            pixels[..., 0] = 8 * i
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path


def _can_encode(codec: str) -> bool:
    try:
        av.codec.Codec(codec, "w")
    except Exception:  # an unknown codec raises different errors across PyAV versions
        return False
    return True


def frame_indices(frames: np.ndarray) -> list[int]:
    """Recover each frame's index from its red level (8·i, give or take compression)."""
    return [round(float(frame[0].mean()) / 8) for frame in frames]


def test_one_frame_per_second(video: Path) -> None:
    frames = video_frames(video, 1.0, 32)
    assert frames.shape == (3, 3, 32, 32) and frames.dtype == np.uint8
    assert frame_indices(frames) == [0, 10, 20]  # the first frame of every second


def test_other_rates_and_max_frames(video: Path) -> None:
    assert frame_indices(video_frames(video, 2.0, 16)) == [0, 5, 10, 15, 20, 25]
    assert frame_indices(video_frames(video, 1.0, 16, max_frames=2)) == [0, 10]
    assert len(video_frames(video, 30.0, 16)) == VIDEO_FPS * VIDEO_SECONDS  # above the video's rate: every frame


def test_bad_video_arguments_are_named(video: Path) -> None:
    with pytest.raises(ValueError, match="fps"):
        video_frames(video, 0.0, 16)
    with pytest.raises(ValueError, match="max_frames"):
        video_frames(video, 1.0, 16, max_frames=0)


@pytest.mark.parametrize("damage", ["random bytes", "truncated", "empty"])
def test_undecodable_video_raises_corrupt_file_error(tmp_path: Path, video: Path, damage: str) -> None:
    good = video.read_bytes()
    content = {
        "random bytes": np.random.default_rng(0).bytes(4000),
        "truncated": good[: len(good) // 3],  # the mp4 index (moov) is written last, so it is gone
        "empty": b"",
    }[damage]
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError) as info:
        video_frames(path, 1.0, 16)
    assert info.value.path == path


def test_missing_video_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        video_frames(tmp_path / "nope.mp4", 1.0, 16)


# ---------------------------------------------------------------------------------------------- positions


def test_frame_positions_are_segment_centres() -> None:
    assert frame_positions(10, 3) == [1, 5, 8]
    assert frame_positions(3, 1) == [1]
    assert frame_positions(5, 5) == [0, 1, 2, 3, 4]
    assert frame_positions(2, 4) == [0, 0, 1, 1]  # fewer frames than positions: frames repeat
    assert frame_positions(1, 3) == [0, 0, 0]


def test_frame_positions_stay_in_range_and_ordered() -> None:
    for count in range(1, 40):
        for k in range(1, 12):
            positions = frame_positions(count, k)
            assert len(positions) == k
            assert all(0 <= p < count for p in positions)
            assert positions == sorted(positions)
            if count >= k:
                assert len(set(positions)) == k


def test_frame_positions_reject_empty_requests() -> None:
    with pytest.raises(ValueError):
        frame_positions(0, 3)
    with pytest.raises(ValueError):
        frame_positions(5, 0)
