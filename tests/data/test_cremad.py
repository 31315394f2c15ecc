"""CREMA-D on a tiny fixture in the release / OGM-GE layout: AudioWAV/, Image-01-FPS/, train.csv, test.csv."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmtune.cli import main
from mmtune.data import build_dataset, dataset_config
from mmtune.data.audio import read_wav, spectrogram
from mmtune.data.cremad import EMOTIONS, CremadConfig, stored_positions
from mmtune.data.real import prepare
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

SIZE = 32  # image_size of the fast tests; the end-to-end run uses the papers' 224 (timed in its docstring)
ACTORS = ("1001", "1002", "1003", "1004")  # four clips per emotion: 24 clips
SENTENCES = ("DFA", "IEO", "TIE", "IOM")
LEVEL = {"IEO": "MD"}  # the release marks the intensity of IEO sentences; the others are XX


def clip_names() -> list[str]:
    return [f"{actor}_{SENTENCES[i]}_{emo}_{LEVEL.get(SENTENCES[i], 'XX')}"
            for emo in EMOTIONS for i, actor in enumerate(ACTORS)]


def write_wav(path: Path, seed: int, seconds: float = 0.6, rate: int = 16_000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t) + 0.01 * np.random.default_rng(seed).normal(size=t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(tone, -1, 1) * 32767).astype("<i2").tobytes())


def write_jpg(path: Path, value: int) -> None:
    Image.new("RGB", (48, 36), (value, 255 - value, 90)).save(path, quality=95)


def write_cremad(root: Path, *, frames: bool = True, csv: str | None = None) -> Path:
    """The release's AudioWAV/ and OGM-GE's Image-01-FPS/<clip>/<index>.jpg (2-4 frames at 1 fps).

    ``csv``: None (no split files), "ogm" (OGM-GE's rows, CRLF, no header) or "header" (with "name,label").
    """
    (root / "AudioWAV").mkdir(parents=True)
    clips = clip_names()
    for i, clip in enumerate(clips):
        write_wav(root / "AudioWAV" / f"{clip}.wav", seed=i)
        if frames:
            folder = root / "Image-01-FPS" / clip
            folder.mkdir(parents=True)
            for j in range(2 + i % 3):
                write_jpg(folder / f"{30 * j:05d}.jpg", value=10 * j + i)
    if csv:
        test = {c for c in clips if c.startswith("1004")}  # one clip per emotion
        header = "name,label\r\n" if csv == "header" else ""
        for split, rows in (("train", [c for c in clips if c not in test]), ("test", sorted(test))):
            lines = "".join(f"{c},{c.split('_')[2]}\r\n" for c in rows)
            (root / f"{split}.csv").write_bytes((header + lines).encode())
    return root


def config(root: Path, **extra) -> CremadConfig:
    return dataset_config({"name": "cremad", "root": str(root), "workers": 0, "image_size": SIZE, **extra})


def cached(data) -> tuple[Path, dict[str, list[str]]]:
    folder = Path(data.info["cache"])
    return folder, {s: (folder / s / "keys.txt").read_text().split() for s in ("train", "val", "test")}


def test_labels_from_clip_names_and_a_seeded_stratified_split(tmp_path):
    data = build_dataset(config(write_cremad(tmp_path / "cremad")), "cpu")
    assert data.modalities == ["audio", "visual"] and data.num_classes == 6
    assert data.info["classes"] == ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
    assert data.input_shapes == {"audio": (1, 257, 299), "visual": (1, 3, SIZE, SIZE)}
    # 4 clips per class: test_fraction 0.1 holds 1 out per class, then val_fraction 0.1 1 of the 3 left.
    assert (len(data.train), len(data.val), len(data.test)) == (12, 6, 6)
    assert data.info["splits"]["test"]["source"] == "given" and "carved" in data.info["splits"]["val"]["source"]
    folder, keys = cached(data)
    for split in ("train", "val", "test"):
        labels = np.load(folder / split / "labels.npy")
        assert [EMOTIONS[y] for y in labels] == [k.split("_")[2] for k in keys[split]]
    assert sorted(keys["train"] + keys["val"] + keys["test"]) == sorted(clip_names())
    assert "test_fraction=0.1" in json.loads((folder / "meta.json").read_text())["info"]["split"]
    counts = np.load(folder / "train" / "visual.count.npy")
    assert set(counts) <= {2, 3} and counts.max() == 3  # 2-4 frames per clip, K = 3 stored


@pytest.mark.parametrize("csv", ["ogm", "header"])
def test_the_given_csv_split_is_used(tmp_path, csv):
    data = build_dataset(config(write_cremad(tmp_path / "cremad", csv=csv)), "cpu")
    folder, keys = cached(data)
    assert sorted(keys["test"]) == sorted(c for c in clip_names() if c.startswith("1004"))
    assert len(keys["train"]) + len(keys["val"]) == 18 and len(keys["val"]) == 6  # val carved from train.csv
    assert json.loads((folder / "meta.json").read_text())["info"]["split"].startswith("given: train.csv / test.csv")


def test_adding_the_csv_split_to_a_prepared_root_prepares_again(tmp_path):
    root = write_cremad(tmp_path / "cremad")
    carved = prepare(config(root))
    write_cremad(tmp_path / "with_csv", csv="ogm")
    for name in ("train.csv", "test.csv"):
        (root / name).write_bytes((tmp_path / "with_csv" / name).read_bytes())
    given = prepare(config(root))
    assert given != carved and "given" in json.loads((given / "meta.json").read_text())["info"]["split"]


def test_csv_rows_that_contradict_the_clip_name_are_named(tmp_path):
    root = write_cremad(tmp_path / "cremad", csv="ogm")
    (root / "test.csv").write_text("1004_IOM_NEU_XX,ANG\n1004_IOM_HAP_XX,HAPPY\n")
    with pytest.raises(ConfigError) as err:
        prepare(config(root))
    text = str(err.value)
    assert "2 malformed row(s)" in text and "label ANG but the clip name says NEU" in text and "'HAPPY'" in text


@pytest.mark.parametrize("mode, frames", [("paper", 299), ("code", 188)])
def test_spectrogram_as_the_papers_state_it_or_as_the_code_computes_it(tmp_path, mode, frames):
    root = write_cremad(tmp_path / "cremad")
    folder = prepare(config(root, spectrogram=mode))
    audio = np.load(folder / "test" / "audio.npy")
    assert audio.shape[1:] == (1, 257, frames) and audio.dtype == np.float16
    key = (folder / "test" / "keys.txt").read_text().split()[0]
    expected = spectrogram(*read_wav(root / "AudioWAV" / f"{key}.wav"), mode=mode, seconds=3.0)
    np.testing.assert_allclose(audio[0].astype(np.float32), expected, atol=0.02)


def test_missing_files_are_counted_and_named_or_skipped(tmp_path):
    root = write_cremad(tmp_path / "cremad")
    # Without split files the clips are the WAVs found, so a missing WAV needs a csv that lists it.
    (root / "AudioWAV" / "1002_IEO_SAD_MD.wav").unlink()
    (root / "train.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in clip_names()[:-6]))
    (root / "test.csv").write_text("".join(f"{c},{c.split('_')[2]}\n" for c in clip_names()[-6:]))
    for f in (root / "Image-01-FPS" / "1003_TIE_HAP_XX").iterdir():
        f.unlink()
    (root / "Image-01-FPS" / "1003_TIE_HAP_XX").rmdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(config(root), "cpu")
    text = str(err.value)
    assert "2 missing file(s)" in text and "skip_missing=true" in text and "Image-01-FPS/" in text
    assert "AudioWAV/1002_IEO_SAD_MD.wav" in text and "Image-01-FPS/1003_TIE_HAP_XX" in text
    data = build_dataset(config(root, skip_missing=True), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 22


def test_corrupt_wav_jpg_and_lfs_pointers_are_named_or_skipped(tmp_path):
    root = write_cremad(tmp_path / "cremad")
    (root / "AudioWAV" / "1001_DFA_NEU_XX.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    (root / "Image-01-FPS" / "1002_IEO_ANG_MD" / "00030.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    # A clone of the CREMA-D repository without `git lfs pull` holds pointer files instead of media.
    (root / "AudioWAV" / "1003_TIE_FEA_XX.wav").write_text("version https://git-lfs.github.com/spec/v1\n"
                                                          "oid sha256:0123\nsize 96044\n")
    with pytest.raises(ConfigError) as err:
        build_dataset(config(root), "cpu")
    text = str(err.value)
    assert "3 unreadable file(s)" in text and "1001_DFA_NEU_XX.wav" in text and "00030.jpg" in text
    assert "CorruptFileError" in text and "1003_TIE_FEA_XX.wav" in text and "git lfs pull" in text
    data = build_dataset(config(root, skip_missing=True), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 21


def test_wrong_root_names_the_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(config(tmp_path / "empty"), "cpu")
    assert "no folder 'AudioWAV', no folder 'Image-01-FPS'" in str(err.value) and "VideoFlash/" in str(err.value)
    root = write_cremad(tmp_path / "cremad", csv="ogm")
    (root / "test.csv").unlink()  # half a split is an error, not "no split"
    with pytest.raises(ConfigError, match="no file 'test.csv'"):
        build_dataset(config(root), "cpu")


def write_video(path: Path, colours: list[int], fps: int = 5) -> None:
    """One second per colour (red level), ``fps`` frames each."""
    import av

    container_format = "flv" if path.suffix == ".flv" else None
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("flv" if path.suffix == ".flv" else "mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for colour in colours:
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[..., 0] = colour
            for _ in range(fps):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("folder, suffix", [("VideoFlash", ".flv"), ("VideoMP4", ".mp4")])
def test_frames_are_decoded_from_the_videos_when_there_are_no_frame_folders(tmp_path, folder, suffix):
    root = write_cremad(tmp_path / "cremad", frames=False)
    (root / folder).mkdir()
    for i, clip in enumerate(clip_names()):
        write_video(root / folder / f"{clip}{suffix}", [40, 120, 200, 250][: 2 + i % 3])
    data = build_dataset(config(root, image_size=16), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 24
    cache, keys = cached(data)
    assert folder in json.loads((cache / "meta.json").read_text())["info"]["visual"]
    visual = np.load(cache / "train" / "visual.npy")
    counts = np.load(cache / "train" / "visual.count.npy")
    for key, stack, count in zip(keys["train"], visual, counts, strict=True):
        seconds = 2 + clip_names().index(key) % 3
        assert count == min(seconds, 3)
        reds = stack[:count, 0, 8, 8].astype(int)  # 1 fps: one frame per second, evenly chosen when > K
        wanted = [[40, 120, 200, 250][i] for i in stored_positions(seconds, 3)]  # 4 s: seconds 0, 2, 3
        assert np.abs(reds - wanted).max() < 12, (key, reds, wanted)


def test_one_epoch_at_the_papers_setting(tmp_path):
    """ResNet-18 for both modalities, 224 × 224 frames, the papers' 257 × 299 spectrogram, 1 frame per clip.

    24 clips (12 train, 6 val, 6 test): about 6 s on 2 idle CPU cores (prepare 0.5 s, the epoch 5.5 s).
    """
    root = write_cremad(tmp_path / "cremad", csv="ogm")
    spec = parse_trial_config({
        "method": "joint",
        "dataset": {"name": "cremad", "root": str(root), "workers": 0, "image_size": 224},
        "model": {"backbone": "resnet18"},
        "train": {"epochs": 1, "batch_size": 8},
    })
    trial = Trial(spec)
    assert trial.data.input_shapes == {"audio": (1, 257, 299), "visual": (1, 3, 224, 224)}
    metrics = trial.step()
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_acc"] <= 1.0 and 0.0 <= metrics["test_acc"] <= 1.0


def test_prepare_then_run_ogm_from_the_cli(tmp_path, capsys):
    root = write_cremad(tmp_path / "cremad")
    assert main(["prepare", "cremad", "--root", str(root), f"image_size={SIZE}", "spectrogram=code"]) == 0
    assert "MiB in" in capsys.readouterr().out
    assert main(["prepare", "cremad", "--root", str(root), f"image_size={SIZE}", "spectrogram=code"]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(["run", "ogm", "dataset.name=cremad", f"dataset.root={root}", "dataset.workers=0",
                 f"dataset.image_size={SIZE}", "dataset.spectrogram=code", "model.backbone=resnet18",
                 "train.epochs=1", "train.batch_size=8"]) == 0


# ----------------------------------------------------------------------------- a prepared cache follows its files


def test_a_deleted_wav_prepares_again_without_it(tmp_path):
    root = write_cremad(tmp_path / "cremad")
    first = build_dataset(config(root), "cpu")
    assert len(first.train) + len(first.val) + len(first.test) == 24
    (root / "AudioWAV" / "1002_IEO_SAD_MD.wav").unlink()
    again = build_dataset(config(root), "cpu")
    _, keys = cached(again)
    assert len(again.train) + len(again.val) + len(again.test) == 23
    assert "1002_IEO_SAD_MD" not in keys["train"] + keys["val"] + keys["test"]


def test_a_replaced_wav_prepares_again_and_its_new_audio_is_trained_on(tmp_path, caplog):
    root = write_cremad(tmp_path / "cremad")
    folder = prepare(config(root))
    clip = (folder / "test" / "keys.txt").read_text().split()[0]
    old = np.load(folder / "test" / "audio.npy")[0].astype(np.float32)
    write_wav(root / "AudioWAV" / f"{clip}.wav", seed=99)  # another tone, the same length: same size
    with caplog.at_level("WARNING"):
        data = build_dataset(config(root), "cpu")
    assert f"AudioWAV/{clip}.wav (changed)" in caplog.text and "preparing it again" in caplog.text
    folder, keys = cached(data)
    audio = np.load(folder / "test" / "audio.npy")[keys["test"].index(clip)].astype(np.float32)
    expected = spectrogram(*read_wav(root / "AudioWAV" / f"{clip}.wav"), mode="paper", seconds=3.0)
    np.testing.assert_allclose(audio, expected, atol=0.02)
    assert not np.allclose(audio, old, atol=0.02)


def test_with_split_files_a_deleted_wav_is_named_not_served_from_the_cache(tmp_path):
    root = write_cremad(tmp_path / "cremad", csv="ogm")
    prepare(config(root))
    (root / "AudioWAV" / "1001_DFA_ANG_XX.wav").unlink()
    with pytest.raises(ConfigError, match="(?s)1 missing file.*AudioWAV/1001_DFA_ANG_XX.wav  \\(missing\\)"):
        build_dataset(config(root), "cpu")


def test_a_frame_added_to_a_clip_prepares_again_and_an_unchanged_root_does_not(tmp_path):
    from mmtune.data.real import cache_changes

    root = write_cremad(tmp_path / "cremad", csv="ogm")
    cfg = config(root)
    folder = prepare(cfg)
    built = (folder / "meta.json").stat().st_mtime_ns
    assert prepare(cfg) == folder and (folder / "meta.json").stat().st_mtime_ns == built  # reused as is
    write_jpg(root / "Image-01-FPS" / "1001_DFA_ANG_XX" / "00120.jpg", value=200)
    assert cache_changes(cfg, folder) == ["Image-01-FPS/1001_DFA_ANG_XX/00120.jpg (new)"]
    assert prepare(cfg) == folder and (folder / "meta.json").stat().st_mtime_ns != built
    assert cache_changes(cfg, folder) == []
