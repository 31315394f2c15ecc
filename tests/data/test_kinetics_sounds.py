"""Kinetics-Sounds on tiny fixtures in GeWu-Lab's layouts: list files, .npy or .wav audio, 1-fps frame folders."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtune.cli import main
from mmtune.data import build_dataset, dataset_config
from mmtune.data.audio import read_wav, spectrogram, spectrogram_shape
from mmtune.data.kinetics_sounds import CLASSES, KineticsSoundsConfig
from mmtune.data.real import prepare
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

SIZE = 24  # image_size of the fast tests; the end-to-end run uses the papers' 224 (timed in its docstring)
LABELS = (0, 5, 12, 30)  # a few of the 31 classes: blowing_nose, laughing, playing_guitar, tickling
SPEC = (257, 40)  # (F, T) of the fixture's .npy spectrograms


def clips(per_class: int) -> dict[str, list[tuple[str, int]]]:
    """YouTube-id-like names (with the leading dashes real ids have); the last clip of each class is test."""
    out: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label in LABELS:
        for j in range(per_class):
            name = f"-{label:02d}x{j}AbC_{10 * j:06d}_{10 * j + 10:06d}"
            out["test" if j == per_class - 1 else "train"].append((name, label))
    return out


def write_wav(path: Path, seed: int, seconds: float, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (300 + 50 * seed) * t)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((tone * 32767).astype("<i2").tobytes())


def write_ks(root: Path, *, variant: str = "ks2023", per_class: int = 5, frames: int = 10,
             wav_seconds: float = 1.0) -> Path:
    """variant "ks2023": ks_*_overlap.txt "<clip> <label>", train_spec/*.npy, train-frames-1fps/train/;
    variant "ogm": OGM-GE's my_*.txt "<clip>,10,<label>" (CRLF), train_wav/train/*.wav."""
    rng = np.random.default_rng(0)
    folders = {"train": "train-frames-1fps/train", "test": "val-frames-1fps/test"}
    for split, listed in clips(per_class).items():
        if variant == "ks2023":
            lines = "".join(f"{name} {label}\n" for name, label in listed)
            (root / f"ks_{split}_overlap.txt").parent.mkdir(parents=True, exist_ok=True)
            (root / f"ks_{split}_overlap.txt").write_text(lines)
            audio = root / f"{split}_spec"
        else:
            lines = "".join(f"{name},10,{label}\r\n" for name, label in listed)
            root.mkdir(parents=True, exist_ok=True)
            (root / f"my_{split}.txt").write_bytes(lines.encode())
            audio = root / f"{split}_wav" / split
        audio.mkdir(parents=True)
        for i, (name, label) in enumerate(listed):
            if variant == "ks2023":
                np.save(audio / f"{name}.npy", rng.normal(size=SPEC).astype(np.float32))
            else:
                write_wav(audio / f"{name}.wav", seed=i + label, seconds=wav_seconds)
            folder = root / folders[split] / name
            folder.mkdir(parents=True)
            for f in range(1, frames + 1):
                Image.new("RGB", (32, 24), (20 * f, label * 8, 100)).save(folder / f"frame_{f:05d}.jpg", quality=95)
    return root


def config(root: Path, **extra) -> KineticsSoundsConfig:
    return dataset_config({"name": "kinetics_sounds", "root": str(root), "workers": 0, "image_size": SIZE, **extra})


def cached(data) -> tuple[Path, dict[str, list[str]]]:
    folder = Path(data.info["cache"])
    return folder, {s: (folder / s / "keys.txt").read_text().split() for s in ("train", "val", "test")}


def test_labels_from_the_list_files_and_val_carved_from_train(tmp_path):
    data = build_dataset(config(write_ks(tmp_path / "ks")), "cpu")
    assert data.num_classes == 31 and data.info["classes"] == list(CLASSES)
    assert data.info["classes"][12] == "playing_guitar"
    assert data.input_shapes == {"audio": (1, *SPEC), "visual": (3, 3, SIZE, SIZE)}
    assert (len(data.train), len(data.val), len(data.test)) == (12, 4, 4)  # 4 per class; 1 val, 1 test each
    folder, keys = cached(data)
    truth = {name: label for listed in clips(5).values() for name, label in listed}
    for split in ("train", "val", "test"):
        assert list(np.load(folder / split / "labels.npy")) == [truth[k] for k in keys[split]]
    assert sorted(keys["test"]) == sorted(name for name, _ in clips(5)["test"])
    assert "carved from train" in data.info["splits"]["val"]["source"]
    assert set(np.load(folder / "train" / "visual.count.npy")) == {10}  # frame_00001 ... frame_00010


def test_ogm_ge_lists_and_wav_audio(tmp_path):
    root = write_ks(tmp_path / "ks", variant="ogm", per_class=3, wav_seconds=0.7)
    folder = prepare(config(root, seconds=1.0))
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["info"]["train_list"].endswith("my_train.txt") and meta["info"]["audio"].startswith("wav files")
    audio = np.load(folder / "test" / "audio.npy")
    assert audio.shape[1:] == spectrogram_shape(mode="paper", seconds=1.0) == (1, 257, 98)
    key = (folder / "test" / "keys.txt").read_text().split()[0]
    expected = spectrogram(*read_wav(root / "test_wav" / "test" / f"{key}.wav"), mode="paper", seconds=1.0)
    np.testing.assert_allclose(audio[0].astype(np.float32), expected, atol=0.02)
    code = prepare(config(root, seconds=1.0, spectrogram="code"))
    assert np.load(code / "train" / "audio.npy").shape[1:] == (1, 257, 63)  # 1 + 22050 // 353


def test_the_cache_follows_the_audio_source_found(tmp_path):
    root = write_ks(tmp_path / "ks", per_class=3)
    from_npy = prepare(config(root))
    write_ks(tmp_path / "wav", variant="ogm", per_class=3)
    for split in ("train", "test"):  # the same clips, now also as wavs
        (tmp_path / "wav" / f"{split}_wav").rename(root / f"{split}_wav")
    assert prepare(config(root)) == from_npy  # train_spec/ still wins
    assert prepare(config(root, audio="wav", train_audio="train_wav/train", test_audio="test_wav/test")) != from_npy
    for split in ("train", "test"):
        (root / f"{split}_spec").rename(root / f"{split}_spec_old")
    from_wav = prepare(config(root))  # auto: no train_spec/ any more, so train_wav/train/ and wav
    assert from_wav != from_npy and json.loads((from_wav / "meta.json").read_text())["info"]["audio"].startswith("wav")


def test_papers_spectrogram_size_for_10_second_wavs():
    assert spectrogram_shape(mode="paper", seconds=KineticsSoundsConfig.seconds) == (1, 257, 1004)


def test_npy_spectrograms_are_fitted_to_the_first_training_file(tmp_path):
    root = write_ks(tmp_path / "ks", per_class=3)
    first = (root / "ks_train_overlap.txt").read_text().split()[0]
    np.save(root / "train_spec" / f"{first}.npy", np.zeros((1, 257, 30), np.float32))  # T = 30 for every clip
    longer = (root / "ks_test_overlap.txt").read_text().split()[0]
    np.save(root / "test_spec" / f"{longer}.npy", np.arange(257 * 45, dtype=np.float32).reshape(257, 45))
    folder = prepare(config(root))
    test_audio = np.load(folder / "test" / "audio.npy")
    keys = (folder / "test" / "keys.txt").read_text().split()
    assert test_audio.shape[1:] == (1, 257, 30)
    np.testing.assert_array_equal(test_audio[keys.index(longer), 0, 1, :3], [45, 46, 47])  # cropped, not resized
    assert prepare(config(root, spectrogram_frames=50)) != folder
    np.save(root / "test_spec" / f"{longer}.npy", np.zeros((128, 30), np.float32))  # other F: a bad file
    with pytest.raises(ConfigError) as err:
        prepare(config(root, spectrogram_frames=20))
    text = str(err.value)
    assert "1 unreadable file(s)" in text and f"{longer}.npy" in text and "257 rows" in text


def test_missing_files_are_counted_and_named_or_skipped(tmp_path):
    root = write_ks(tmp_path / "ks")
    name, _ = clips(5)["train"][2]
    (root / "train_spec" / f"{name}.npy").unlink()
    other, _ = clips(5)["test"][1]
    for f in (root / "val-frames-1fps" / "test" / other).iterdir():
        f.unlink()
    (root / "val-frames-1fps" / "test" / other).rmdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(config(root), "cpu")
    text = str(err.value)
    assert "2 missing file(s)" in text and f"train_spec/{name}.npy" in text
    assert f"val-frames-1fps/test/{other}" in text
    assert "skip_missing=true" in text and "frame_00010.jpg" in text  # the expected layout is shown
    data = build_dataset(config(root, skip_missing=True), "cpu")
    assert (len(data.train) + len(data.val), len(data.test)) == (15, 3)


def test_corrupt_npy_and_jpg_are_named_or_skipped(tmp_path):
    root = write_ks(tmp_path / "ks")
    bad_npy, _ = clips(5)["train"][5]
    (root / "train_spec" / f"{bad_npy}.npy").write_bytes(b"\x93NUMPY garbage")
    bad_jpg, _ = clips(5)["train"][9]
    (root / "train-frames-1fps" / "train" / bad_jpg / "frame_00004.jpg").write_bytes(b"\xff\xd8\xff broken")
    with pytest.raises(ConfigError) as err:
        build_dataset(config(root), "cpu")
    text = str(err.value)
    assert "2 unreadable file(s)" in text and f"{bad_npy}.npy" in text and "frame_00004.jpg" in text
    data = build_dataset(config(root, skip_missing=True), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 18


def test_wrong_root_names_the_missing_entries(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(config(tmp_path / "empty"), "cpu")
    text = str(err.value)
    assert ("no file 'ks_train_overlap.txt', no folder 'train_spec', no folder 'train-frames-1fps/train', "
            "no file 'ks_test_overlap.txt'") in text and "my_train.txt" in text  # the tree names the alternatives
    root = write_ks(tmp_path / "ks", per_class=2)
    with pytest.raises(ConfigError, match="no folder 'frames'"):
        build_dataset(config(root, test_frames="frames"), "cpu")


def test_malformed_list_lines_are_named(tmp_path):
    root = write_ks(tmp_path / "ks", per_class=2)
    with open(root / "ks_train_overlap.txt", "a") as f:
        f.write("no-label-here\nclip_x 31\n")
    with pytest.raises(ConfigError) as err:
        prepare(config(root))
    text = str(err.value)
    assert "2 malformed line(s)" in text and "'no-label-here'" in text and "label 31 outside 0..30" in text


def test_one_epoch_at_the_papers_setting(tmp_path):
    """ResNet-18 for both modalities, 3 of 10 frames per clip at 224 × 224, 10-second wavs as the papers'
    257 × 1004 spectrogram. 12 clips (4 train, 4 val, 4 test): about 9 s on 2 idle CPU cores (prepare
    0.6 s, the epoch 8 s)."""
    root = write_ks(tmp_path / "ks", variant="ogm", per_class=3, wav_seconds=10.0)
    spec = parse_trial_config({
        "method": "joint",
        "dataset": {"name": "kinetics_sounds", "root": str(root), "workers": 0, "image_size": 224},
        "model": {"backbone": "resnet18"},
        "train": {"epochs": 1, "batch_size": 8},
    })
    trial = Trial(spec)
    assert trial.data.input_shapes == {"audio": (1, 257, 1004), "visual": (3, 3, 224, 224)}
    metrics = trial.step()
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_acc"] <= 1.0 and 0.0 <= metrics["test_acc"] <= 1.0


def test_prepare_then_run_ogm_from_the_cli(tmp_path, capsys):
    root = write_ks(tmp_path / "ks", per_class=3)
    assert main(["prepare", "kinetics_sounds", "--root", str(root), f"image_size={SIZE}"]) == 0
    assert "MiB in" in capsys.readouterr().out
    assert main(["prepare", "kinetics_sounds", "--root", str(root), f"image_size={SIZE}"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(["run", "ogm", "dataset.name=kinetics_sounds", f"dataset.root={root}", "dataset.workers=0",
                 f"dataset.image_size={SIZE}", "model.backbone=resnet18", "train.epochs=1", "train.batch_size=8"]) == 0
