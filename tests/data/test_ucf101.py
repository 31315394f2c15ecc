"""UCF-101 on a tiny fixture in its real layout: official lists, jpegs_256 / UCF-101 videos, tvl1_flow u/v."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtune.cli import main
from mmtune.data import build_dataset, dataset_config
from mmtune.data.images import frame_positions
from mmtune.data.real import cache_path, prepare
from mmtune.data.ucf101 import FLOW_MEAN, FLOW_STD
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

# classInd numbers 1..4; the list files spell HandstandPushups' videos "v_HandStandPushups_…" (as the
# official lists do) while the frame folders spell them "v_HandstandPushups_…" (as twostreamfusion's).
CLASSES = ["ApplyEyeMakeup", "Archery", "HandstandPushups", "YoYo"]
TRAIN_GROUPS, TEST_GROUPS = (8, 9, 10, 11), (1, 2)  # one clip per group; split 1 tests on groups 1-7
RGB_FRAMES, FLOW_FRAMES, FRAME_SIZE = 8, 4, 16


def list_stem(cls: str, group: int, clip: int = 1) -> str:
    spelled = "HandStandPushups" if cls == "HandstandPushups" else cls
    return f"v_{spelled}_g{group:02d}_c{clip:02d}"


def folder_stem(cls: str, group: int, clip: int = 1) -> str:
    return f"v_{cls}_g{group:02d}_c{clip:02d}"


def rgb_value(label: int, frame: int) -> int:
    return 20 * label + 5 * frame


def u_value(frame: int) -> int:
    return 40 + 30 * frame


def v_value(frame: int) -> int:
    return 220 - 30 * frame


def save_gray(path: Path, value: int, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (FRAME_SIZE, FRAME_SIZE), value if mode == "L" else (value,) * 3).save(path, quality=95)


def write_ucf(root: Path, *, rgb: str = "frames", list_dir: str = "ucfTrainTestlist", split: int = 1) -> Path:
    """classInd / lists (CRLF, as the official files), RGB frames or videos, and u/v flow frames."""
    lists = root / list_dir
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_bytes("".join(f"{i} {c}\r\n" for i, c in enumerate(CLASSES, 1)).encode())
    train = [f"{c}/{list_stem(c, g)}.avi {i}\r\n" for i, c in enumerate(CLASSES, 1) for g in TRAIN_GROUPS]
    test = [f"{c}/{list_stem(c, g)}.avi\r\n" for c in CLASSES for g in TEST_GROUPS]
    (lists / f"trainlist0{split}.txt").write_bytes("".join(train).encode())
    (lists / f"testlist0{split}.txt").write_bytes("".join(test).encode())
    for label, cls in enumerate(CLASSES):
        for group in (*TRAIN_GROUPS, *TEST_GROUPS):
            stem = folder_stem(cls, group)
            if rgb == "frames":
                for j in range(RGB_FRAMES):
                    save_gray(root / "jpegs_256" / stem / f"frame{j + 1:06d}.jpg", rgb_value(label, j), "RGB")
            else:
                suffix = ".mp4" if (label, group) == (1, 8) else ".avi"  # a re-encoded copy of one clip
                write_video(root / "UCF-101" / cls / f"{list_stem(cls, group)}{suffix}", rgb_value(label, 0))
            for j in range(FLOW_FRAMES):
                save_gray(root / "tvl1_flow" / "u" / stem / f"frame{j + 1:06d}.jpg", u_value(j))
                save_gray(root / "tvl1_flow" / "v" / stem / f"frame{j + 1:06d}.jpg", v_value(j))
    return root


def write_video(path: Path, value: int, *, fps: int = 8, seconds: int = 3) -> None:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for _ in range(fps * seconds):
            pixels = np.full((24, 32, 3), value, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def ucf_config(root: Path, **extra):
    return dataset_config({"name": "ucf101", "root": str(root), "workers": 0, "image_size": 16, **extra})


def cached(folder: Path, split: str) -> tuple[list[str], np.ndarray]:
    return (folder / split / "keys.txt").read_text().split(), np.load(folder / split / "labels.npy")


def test_labels_and_splits_come_from_the_official_lists(tmp_path):
    data = build_dataset(ucf_config(write_ucf(tmp_path / "ucf")), "cpu")
    assert data.modalities == ["rgb", "flow"] and data.num_classes == 4
    assert data.info["classes"] == CLASSES
    assert data.input_shapes == {"rgb": (3, 3, 16, 16), "flow": (3, 2, 16, 16)}
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 8)  # val: 1 per class carved from train
    assert "carved from train" in data.info["splits"]["val"]["source"]
    folder = Path(data.info["cache"])
    expected = {list_stem(c, g): i for i, c in enumerate(CLASSES) for g in (*TRAIN_GROUPS, *TEST_GROUPS)}
    for split in ("train", "val", "test"):
        keys, labels = cached(folder, split)
        assert [expected[k] for k in keys] == labels.tolist()  # 1-based list numbers -> 0-based labels
    test_keys = set(cached(folder, "test")[0])
    assert test_keys == {list_stem(c, g) for c in CLASSES for g in TEST_GROUPS}  # labels from the class folder
    assert not test_keys & (set(cached(folder, "train")[0]) | set(cached(folder, "val")[0]))
    counts = np.load(folder / "train" / "rgb.count.npy")
    assert set(counts.tolist()) == {6}  # K = 6 of the 8 frames, evenly spaced
    rgb = np.load(folder / "train" / "rgb.npy")
    label = int(cached(folder, "train")[1][0])
    assert [int(rgb[0, j, 0, 0, 0]) for j in range(6)] == pytest.approx(
        [rgb_value(label, j) for j in frame_positions(RGB_FRAMES, 6)], abs=2)


def test_flow_stacks_u_then_v_of_the_same_frame_and_is_centred(tmp_path):
    data = build_dataset(ucf_config(write_ucf(tmp_path / "ucf")), "cpu")
    folder = Path(data.info["cache"])
    flow = np.load(folder / "test" / "flow.npy")  # (N, K, 2, S, S)
    assert flow.shape == (8, 6, 2, 16, 16)
    assert np.load(folder / "test" / "flow.count.npy").tolist() == [FLOW_FRAMES] * 8
    for j in range(FLOW_FRAMES):
        assert np.abs(flow[:, j, 0].astype(int) - u_value(j)).max() <= 2
        assert np.abs(flow[:, j, 1].astype(int) - v_value(j)).max() <= 2
    batch = next(data.test.batches(8))
    x = batch.inputs["flow"]  # evaluation frames: positions 0, 2, 3 of the 4 real ones
    assert tuple(x.shape) == (8, 3, 2, 16, 16)
    u = x[:, :, 0, 0, 0] * FLOW_STD[0] * 255 + FLOW_MEAN[0] * 255
    assert u[0].tolist() == pytest.approx([u_value(j) for j in (0, 2, 3)], abs=2.5)


def test_a_missing_flow_folder_is_counted_named_and_skippable(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    for component in ("u", "v"):
        gone = root / "tvl1_flow" / component / folder_stem("Archery", 9)
        for f in gone.iterdir():
            f.unlink()
        gone.rmdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(ucf_config(root), "cpu")
    text = str(err.value)
    assert "2 missing file(s)" in text and str(Path("tvl1_flow", "u", "v_Archery_g09_c01")) in text
    assert "skip_missing=true" in text and "does not compute TV-L1" in text
    data = build_dataset(ucf_config(root, skip_missing=True), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 23
    assert json.loads((Path(data.info["cache"]) / "meta.json").read_text())["skipped"] == ["v_Archery_g09_c01"]


def test_a_corrupt_frame_is_named_or_skipped(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    bad = root / "jpegs_256" / folder_stem("YoYo", 1) / "frame000001.jpg"
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(ConfigError) as err:
        build_dataset(ucf_config(root), "cpu")
    assert "1 unreadable file(s)" in str(err.value) and str(bad) in str(err.value)
    data = build_dataset(ucf_config(root, skip_missing=True), "cpu")
    assert len(data.test) == 7


def test_wrong_root_names_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match="is not a folder"):
        build_dataset(ucf_config(tmp_path / "nowhere"), "cpu")
    (tmp_path / "jpegs_256").mkdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(ucf_config(tmp_path), "cpu")
    text = str(err.value)
    for needle in ("file 'ucfTrainTestlist/classInd.txt'", "file 'UCF_list/classInd.txt'",
                   "folder 'tvl1_flow/u'", "folder 'tvl1_flow/v'", "does not compute TV-L1", "Expected layout"):
        assert needle in text
    assert "jpegs_256'" not in text.split("Expected layout")[0]  # present: not reported


def test_no_rgb_source_names_both_frame_and_video_folders(tmp_path):
    root = write_ucf(tmp_path / "ucf", list_dir="UCF_list")  # lists found in UCF_list/ without list_dir
    (root / "jpegs_256").rename(root / "frames")
    with pytest.raises(ConfigError) as err:
        build_dataset(ucf_config(root), "cpu")
    assert "no folder 'jpegs_256', no folder 'UCF-101'" in str(err.value)
    data = build_dataset(ucf_config(root, rgb_dir="frames"), "cpu")
    assert data.info["classes"] == CLASSES


def test_malformed_lists_name_the_line(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    train = root / "ucfTrainTestlist" / "trainlist01.txt"
    train.write_text(train.read_text() + "Archery/v_Archery_g20_c01.avi 4\nBowling/v_Bowling_g08_c01.avi 5\n")
    with pytest.raises(ConfigError) as err:
        build_dataset(ucf_config(root), "cpu")
    text = str(err.value)
    assert "2 malformed line(s)" in text and "line 17" in text and "classInd.txt numbers Archery 2" in text
    assert "class 'Bowling' is not in classInd.txt" in text
    (root / "ucfTrainTestlist" / "classInd.txt").write_text("1 ApplyEyeMakeup\n3 Archery\n")
    with pytest.raises(ConfigError, match=r"must number its 2 classes 1..2, but lacks \[2\]"):
        build_dataset(ucf_config(root), "cpu")


def test_split_knob_reads_the_matching_lists(tmp_path):
    root = write_ucf(tmp_path / "ucf", split=2, list_dir=".")  # lists directly in the root
    data = build_dataset(ucf_config(root, split=2), "cpu")
    assert len(data.test) == 8
    with pytest.raises(ConfigError, match="trainlist03.txt"):
        build_dataset(ucf_config(root, split=3), "cpu")
    with pytest.raises(ConfigError, match="sampled_frames"):
        ucf_config(root, sampled_frames=7)


def test_rgb_frames_are_extracted_from_videos_with_pyav(tmp_path):
    root = write_ucf(tmp_path / "ucf", rgb="video")
    assert not (root / "jpegs_256").exists()
    data = build_dataset(ucf_config(root), "cpu")
    assert "PyAV" in json.loads((Path(data.info["cache"]) / "meta.json").read_text())["info"]["rgb"]
    folder = Path(data.info["cache"])
    keys, labels = cached(folder, "train")
    counts = np.load(folder / "train" / "rgb.count.npy")
    assert set(counts.tolist()) == {3}  # 3 s at video_fps = 1
    rgb = np.load(folder / "train" / "rgb.npy")
    for i, label in enumerate(labels):
        assert abs(int(rgb[i, 0, 0, 8, 8]) - rgb_value(int(label), 0)) <= 6
    assert list_stem("Archery", 8) in keys + cached(folder, "val")[0]  # the .mp4 copy


def test_one_epoch_trial_with_resnet18_for_rgb_and_flow(tmp_path):
    root = write_ucf(tmp_path / "ucf")
    spec = parse_trial_config({"method": "joint", "dataset": {"name": "ucf101", "root": str(root), "workers": 0,
                                                              "image_size": 32},
                               "model": {"backbone": "resnet18"}, "train": {"epochs": 1, "batch_size": 8}})
    metrics = Trial(spec).step()
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_acc"] <= 1.0
    assert "val_acc/rgb" in metrics and "val_acc/flow" in metrics


def test_prepare_then_run_from_the_cli(tmp_path, capsys):
    root = write_ucf(tmp_path / "ucf")
    assert main(["prepare", "ucf101", "--root", str(root), "image_size=16", "--workers", "2"]) == 0
    assert "MiB in" in capsys.readouterr().out
    assert main(["prepare", "ucf101", "--root", str(root), "image_size=16"]) == 0
    assert "already prepared" in capsys.readouterr().out
    folder = cache_path(ucf_config(root, image_size=16))
    stamp = (folder / "meta.json").stat().st_mtime_ns
    args = ["run", "joint", "dataset.name=ucf101", f"dataset.root={root}", "dataset.workers=0",
            "dataset.image_size=16", "model.backbone=resnet18", "train.epochs=1", "train.batch_size=8", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(out["train_loss"]) and "val_acc/flow" in out
    assert (folder / "meta.json").stat().st_mtime_ns == stamp  # the run reused the prepared cache
    assert prepare(ucf_config(root, image_size=16)) == folder
