"""MOSI / MOSEI from tiny feature pickles in both reference layouts (MulT and MMSA): index, labels,
cleaning, cropping, bad input, and one epoch through the real training path and the CLI."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from mmtune.cli import main
from mmtune.data import DATASETS, build_dataset, dataset_config
from mmtune.data.mosi import Mosi
from mmtune.data.real import cache_path, prepare
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

SIZES = {"train": 24, "valid": 8, "test": 8}
SPLIT = {"train": "train", "valid": "val", "test": "test"}


def test_registered():
    assert {"mosi", "mosei"} <= set(DATASETS)


def scores(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sentiment in [-3, 3]; row 0 is exactly neutral, rows 1 / 2 just below / above it."""
    s = rng.uniform(-3, 3, n)
    s[:3] = (0.0, -0.5, 0.5)
    return s


def write_mult(path: Path, *, steps: int = 10, dims: tuple[int, int, int] = (30, 5, 20), seed: int = 0,
               sizes: dict[str, int] = SIZES) -> dict:
    """A MulT-style pickle: (N, L, D) float64 features, zero-padded at the front; labels (N, 1, 1)."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in sizes.items():
        node = {m: rng.normal(size=(n, steps, d)) + 1.0 for m, d in zip(("text", "audio", "vision"), dims)}
        for i in range(n):  # utterance i is i % 4 steps shorter: zeros first, as the CMU SDK pads
            for x in node.values():
                x[i, : i % 4] = 0.0
        node["labels"] = scores(n, rng).reshape(n, 1, 1).astype(np.float32)
        node["id"] = np.array([[f"vid{split}{i}_{i}".encode(), b"0.0", b"1.0"] for i in range(n)])
        data[split] = node
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return data


def write_mmsa(path: Path, *, steps: tuple[int, int, int] = (10, 14, 12), dims: tuple[int, int, int] = (16, 5, 20),
               seed: int = 1) -> dict:
    """An MMSA-style pickle: BERT-like text, unaligned audio / vision padded at the back, regression labels."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in SIZES.items():
        node = {m: rng.normal(size=(n, L, d)).astype(np.float32) + 1.0
                for m, L, d in zip(("text", "audio", "vision"), steps, dims)}
        for i in range(n):
            for x in node.values():
                x[i, x.shape[1] - i % 3:] = 0.0
        s = scores(n, rng)
        node.update(
            text_bert=np.ones((n, 3, steps[0]), dtype=np.float32),
            regression_labels=s.astype(np.float32),
            classification_labels=np.sign(s).astype(np.float32) + 1,  # 0 negative, 1 neutral, 2 positive
            id=[f"vid{split}{i}$_${i}" for i in range(n)],
            raw_text=[f"utterance {i}" for i in range(n)],
            audio_lengths=[steps[1]] * n,
            vision_lengths=[steps[2]] * n,
        )
        data[split] = node
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(data))
    return data


def config(root: Path, name: str = "mosi", **extra):
    return dataset_config({"name": name, "root": str(root), "workers": 0, **extra})


def label_of(score: float) -> int:
    return int(score >= 0)


# ----------------------------------------------------------------------------- index, labels, decode


def test_mult_layout_splits_labels_shapes_and_rows(tmp_path):
    data = write_mult(tmp_path / "mosi_data.pkl")
    cfg = config(tmp_path)
    index = Mosi.index(cfg)
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 24, "val": 8, "test": 8}  # 'valid' is val
    assert index.classes == ["negative", "positive"]
    assert {m: (s.shape, s.dtype) for m, s in index.modalities.items()} == {
        "text": ((10, 30), "float32"), "audio": ((10, 5), "float32"), "vision": ((10, 20), "float32")}
    assert index.info["format"] == "MulT" and index.info["pad_side"]["audio"] == "front"
    for file_split, split in SPLIT.items():
        truth = data[file_split]["labels"].reshape(-1)
        assert [s.label for s in index.splits[split]] == [label_of(v) for v in truth]
    first = index.splits["train"][0]
    assert first.label == 1  # sentiment exactly 0 is non-negative: positive
    assert first.key == "train/00000/vidtrain0_0"
    sample = index.splits["test"][5]
    for m in ("text", "audio", "vision"):
        row = Mosi.decode(cfg, m, sample.sources[m])
        assert row.dtype == np.float32
        np.testing.assert_array_equal(row, data["test"][m][5].astype(np.float32))


def test_zero_sentiment_can_be_negative_or_dropped(tmp_path):
    write_mult(tmp_path / "mosi_data.pkl")
    negative = Mosi.index(config(tmp_path, zero_label="negative"))
    assert [s.label for s in negative.splits["train"][:3]] == [0, 0, 1]
    dropped = Mosi.index(config(tmp_path, zero_label="drop"))
    assert {s: len(v) for s, v in dropped.splits.items()} == {"train": 23, "val": 7, "test": 7}
    assert dropped.info["zero_sentiment"] == {"train": 1, "val": 1, "test": 1}


def test_mmsa_layout_is_found_under_its_dataset_root(tmp_path):
    data = write_mmsa(tmp_path / "MOSI" / "Processed" / "unaligned_50.pkl")
    index = Mosi.index(config(tmp_path))
    assert index.info["file"].endswith("MOSI/Processed/unaligned_50.pkl") and index.info["format"] == "MMSA"
    assert index.info["label_key"] == "regression_labels" and index.info["pad_side"]["vision"] == "back"
    assert {m: s.shape for m, s in index.modalities.items()} == {"text": (10, 16), "audio": (14, 5), "vision": (12, 20)}
    assert [s.label for s in index.splits["val"]] == [label_of(v) for v in data["valid"]["regression_labels"]]
    assert index.splits["train"][4].key == "train/00004/vidtrain4$_$4"
    by_class = Mosi.index(config(tmp_path, label_key="classification_labels"))
    for split in ("train", "val", "test"):
        assert [s.label for s in by_class.splits[split]] == [s.label for s in index.splits[split]]
    # The same root seen from MMSA's MOSI/ and MOSI/Processed/ folders.
    assert Mosi.index(config(tmp_path / "MOSI")).info["file"] == index.info["file"]
    assert Mosi.index(config(tmp_path / "MOSI" / "Processed")).info["file"] == index.info["file"]


def test_file_choice_prefers_mult_aligned_and_follows_dataset_file(tmp_path):
    write_mmsa(tmp_path / "MOSI" / "Processed" / "aligned_50.pkl")
    write_mult(tmp_path / "mosi_data_noalign.pkl", steps=16)
    write_mult(tmp_path / "mosi_data.pkl")
    assert Mosi.index(config(tmp_path)).info["file"].endswith("/mosi_data.pkl")
    unaligned = Mosi.index(config(tmp_path, file="mosi_data_noalign.pkl"))
    assert unaligned.modalities["audio"].shape == (16, 5)
    mmsa = Mosi.index(config(tmp_path, file="MOSI/Processed/aligned_50.pkl"))
    assert mmsa.info["format"] == "MMSA"


def test_text_bert_token_ids_are_rejected_with_the_reason():
    with pytest.raises(ConfigError, match="token ids"):
        dataset_config({"name": "mosi", "root": "/data", "text_key": "text_bert"})


def test_samples_travel_to_workers_as_references(tmp_path):
    write_mult(tmp_path / "mosi_data.pkl", steps=50, dims=(300, 5, 20))
    cfg = config(tmp_path)
    sample = Mosi.index(cfg).splits["train"][3]
    blob = pickle.dumps(sample)
    assert len(blob) < 2_000  # the path of the file, not a (50, 300) float64 row
    again = pickle.loads(blob)
    np.testing.assert_array_equal(Mosi.decode(cfg, "text", again.sources["text"]),
                                  Mosi.decode(cfg, "text", sample.sources["text"]))


# ----------------------------------------------------------------------------- cleaning and lengths


def test_nonfinite_features_become_zero_in_the_cache(tmp_path):
    data = write_mult(tmp_path / "mosi_data.pkl")
    data["train"]["audio"][5, 6, 1] = -np.inf  # COVAREP log-energy of silence
    data["train"]["vision"][7, 8, 2] = np.nan  # FACET without a face
    data["test"]["text"][2, 9, 0] = np.inf
    data["test"]["text"][3, 9, 0] = 1e300  # finite in float64, inf in float32
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    folder = Path(build_dataset(config(tmp_path), "cpu").info["cache"])
    train = {m: np.load(folder / "train" / f"{m}.npy") for m in ("text", "audio", "vision")}
    test_text = np.load(folder / "test" / "text.npy")
    assert all(np.isfinite(x).all() for x in [*train.values(), test_text])
    assert train["audio"][5, 6, 1] == 0 and train["vision"][7, 8, 2] == 0
    assert test_text[2, 9, 0] == 0 and test_text[3, 9, 0] == 0
    assert train["audio"][5, 6, 0] == np.float32(data["train"]["audio"][5, 6, 0])  # the rest is untouched
    info = json.loads((folder / "meta.json").read_text())["info"]
    assert info["nonfinite_replaced"] == {"train": {"audio": 1, "vision": 1}, "val": {}, "test": {"text": 1}}


def test_seq_len_crops_and_pads_on_the_side_the_file_pads(tmp_path):
    data = write_mult(tmp_path / "mosi_data.pkl")  # front-padded, 10 steps
    row = data["train"]["audio"][3].astype(np.float32)  # steps 0..2 are padding
    short, long = config(tmp_path, seq_len=6), config(tmp_path, seq_len=13)
    source = Mosi.index(short).splits["train"][3].sources["audio"]
    np.testing.assert_array_equal(Mosi.decode(short, "audio", source), row[-6:])  # the content is at the end
    padded = Mosi.decode(long, "audio", Mosi.index(long).splits["train"][3].sources["audio"])
    assert padded.shape == (13, 5) and not padded[:3].any()
    np.testing.assert_array_equal(padded[3:], row)
    back = config(tmp_path, seq_len=6, pad_side="back")
    np.testing.assert_array_equal(Mosi.decode(back, "audio", Mosi.index(back).splits["train"][3].sources["audio"]), row[:6])

    mmsa = write_mmsa(tmp_path / "mmsa" / "unaligned_50.pkl")  # back-padded, text 10 / audio 14 / vision 12 steps
    cfg = config(tmp_path / "mmsa", seq_len=8)
    index = Mosi.index(cfg)
    assert {m: s.shape[0] for m, s in index.modalities.items()} == {"text": 8, "audio": 8, "vision": 8}
    np.testing.assert_array_equal(Mosi.decode(cfg, "vision", index.splits["test"][1].sources["vision"]),
                                  mmsa["test"]["vision"][1][:8])


# ----------------------------------------------------------------------------- bad input


def test_wrong_root_names_the_expected_files(tmp_path):
    with pytest.raises(ConfigError) as err:
        build_dataset(config(tmp_path), "cpu")
    text = str(err.value)
    for name in ("mosi_data.pkl", "mosi_data_noalign.pkl", "MOSI/Processed/aligned_50.pkl", "dataset.file=PATH",
                 "Expected layout"):
        assert name in text
    with pytest.raises(ConfigError, match="is not a folder"):
        build_dataset(config(tmp_path / "nowhere"), "cpu")
    with pytest.raises(ConfigError, match="no file 'features/mine.pkl'"):
        build_dataset(config(tmp_path, file="features/mine.pkl"), "cpu")
    write_mult(tmp_path / "mosi_data.pkl")  # a MOSI root is not a MOSEI root
    with pytest.raises(ConfigError, match="mosei_senti_data.pkl"):
        build_dataset(config(tmp_path, name="mosei"), "cpu")


@pytest.mark.parametrize("content, found", [
    (b"", "EOFError"),
    (b"<html>404 not found</html>", "not a readable pickle"),
    (pickle.dumps([1, 2, 3]), "holds a list of 3 items"),
])
def test_a_file_that_is_not_a_feature_pickle_is_named(tmp_path, content, found):
    (tmp_path / "mosi_data.pkl").write_bytes(content)
    with pytest.raises(ConfigError) as err:
        build_dataset(config(tmp_path), "cpu")
    text = str(err.value)
    assert str(tmp_path / "mosi_data.pkl") in text and found in text and "Expected layout" in text
    assert not any(cache_path(config(tmp_path)).parent.glob("mosi-*"))  # nothing half-written


def test_every_structural_problem_is_listed_at_once(tmp_path):
    data = write_mult(tmp_path / "mosi_data.pkl")
    del data["valid"]
    data["train"]["audio"] = data["train"]["audio"][:, 0]  # (N, D): the time axis is gone
    data["test"]["labels"] = np.zeros((8, 7))  # emotion scores, not one sentiment
    del data["test"]["vision"]
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(ConfigError) as err:
        Mosi.index(config(tmp_path))
    text = str(err.value)
    assert "no split(s) ['valid']" in text
    assert "'train/audio' is an array of shape (24, 5) (float64), expected a numeric (N, L, D) array" in text
    assert "'test/labels' is an array of shape (8, 7)" in text and "one sentiment score per sample" in text
    assert "'test' has no key(s) 'vision'" in text


def test_wrong_label_key_and_nonfinite_labels(tmp_path):
    data = write_mult(tmp_path / "mosi_data.pkl")
    with pytest.raises(ConfigError, match="no sentiment key 'regression_labels'"):
        Mosi.index(config(tmp_path, label_key="regression_labels"))
    data["train"]["labels"][4] = np.nan
    (tmp_path / "mosi_data.pkl").write_bytes(pickle.dumps(data))
    with pytest.raises(ConfigError, match="1 sample.* non-finite 'labels'.*train/00004"):
        Mosi.index(config(tmp_path))
    assert len(Mosi.index(config(tmp_path, skip_missing=True)).splits["train"]) == 23


def test_mosei_features_under_the_mosi_name_are_flagged(tmp_path, caplog):
    write_mult(tmp_path / "mosi_data.pkl", dims=(30, 74, 35))
    with caplog.at_level(logging.WARNING, logger="mmtune.data.mosi"):
        Mosi.index(config(tmp_path))
    assert "is dataset.name=mosei meant?" in caplog.text


# ----------------------------------------------------------------------------- training, CLI


def test_one_epoch_with_the_transformer_backbone(tmp_path):
    write_mult(tmp_path / "mosi_data.pkl")
    spec = parse_trial_config({"method": "joint", "dataset": {"name": "mosi", "root": str(tmp_path), "workers": 0},
                               "model": {"backbone": "transformer"}, "train": {"epochs": 1, "batch_size": 8}})
    trial = Trial(spec)
    assert trial.modalities == ["text", "audio", "vision"]
    metrics = trial.step()
    assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert 0.0 <= metrics["val_acc"] <= 1.0 and np.isfinite(metrics["train_loss"])


def test_mosei_unaligned_mmsa_file_trains(tmp_path):
    write_mmsa(tmp_path / "MOSEI" / "Processed" / "unaligned_50.pkl", dims=(16, 74, 35))
    spec = parse_trial_config({"method": "joint", "dataset": {"name": "mosei", "root": str(tmp_path), "workers": 0},
                               "model": {"backbone": "transformer", "hidden_dim": 32, "num_layers": 1},
                               "train": {"epochs": 1, "batch_size": 8}})
    assert np.isfinite(Trial(spec).step()["train_loss"])


def test_cli_run_and_prepare(tmp_path, capsys):
    write_mult(tmp_path / "mosi_data.pkl")
    assert main(["run", "joint", "dataset.name=mosi", f"dataset.root={tmp_path}", "model.backbone=transformer",
                 "train.epochs=1"]) == 0
    root = tmp_path / "again"
    write_mult(root / "mosi_data.pkl")
    capsys.readouterr()
    assert main(["prepare", "mosi", "--root", str(root), "--workers", "2"]) == 0
    assert "MiB in" in capsys.readouterr().out
    folder = cache_path(config(root))
    assert (folder / "meta.json").is_file() and np.load(folder / "val" / "vision.npy").shape == (8, 10, 20)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert main(["prepare", "mosi", "--root", str(root)]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert prepare(config(root)) == folder and (folder / "meta.json").stat().st_mtime_ns == stamp
