"""Text–image datasets on tiny fixtures in their real layouts — TomBERT's Twitter-15 tsv files, HFM's
Sarcasm list files, UPMC Food-101's csv files, a generic json file — through index, tokenizers,
cache, bad input, and one epoch with BERT (built from config) + ResNet-18, in-process and via the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmtune.cli import main
from mmtune.data import DATASETS, build_dataset, dataset_config
from mmtune.data.real import IMAGENET_MEAN, IMAGENET_STD, REAL_DATASETS, cache_path, prepare
from mmtune.data.text import WordTokenizer, encode, load_tokenizer
from mmtune.data.text_image import HFM_EXCLUDED_WORDS, Food101, Sarcasm, TextImage, Twitter15, stored_tokenizer
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

NAMES = ("text_image", "twitter15", "sarcasm", "food101")
SIZE = 32  # image_size of the tests
WORDS = {0: "awful gloomy", 1: "plain usual", 2: "great sunny"}  # class-correlated words
COLORS = {0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200)}




def write_jpg(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 16), color).save(path, quality=90)


def config(name: str, root: Path, **extra):
    return dataset_config({"name": name, "root": str(root), "workers": 0, "image_size": SIZE, **extra})


def words_of(ids: np.ndarray, info: dict) -> list[str]:
    """Token ids of the built-in tokenizer back to words ([CLS] dropped, padding stops)."""
    vocab = ["[PAD]", "[CLS]", "[UNK]", *stored_tokenizer(info).words]
    return [vocab[i] for i in ids[1:] if i != 0]


# ----------------------------------------------------------------------------- fixtures in the real layouts

TWITTER_SPLITS = {"train": 18, "dev": 6, "test": 6}


def twitter_rows(split: str, n: int, offset: int) -> list[tuple[int, str, str, str]]:
    """(label, image, tweet with $T$, target); two targets per tweet share its image, as in TomBERT's files."""
    rows = []
    for i in range(n):
        k = offset + i
        label = k % 3
        tweet = f"RT @ fan{k} : $T$ is {WORDS[label]} today # {split}"
        rows.append((label, f"{1000 + k // 2}.jpg", tweet, f"Star {k}"))
    return rows


def write_twitter15(root: Path) -> dict[str, list[tuple[int, str, str, str]]]:
    """TomBERT's absa_data/twitter2015/{train,dev,test}.tsv beside twitter2015_images/."""
    root.mkdir(parents=True)
    offset, out = 0, {}
    for split, n in TWITTER_SPLITS.items():
        rows = twitter_rows(split, n, offset)
        offset += n
        # TomBERT's test.tsv header is one column short; its rows are not.
        header = ("index\t#1 ImageID\t#2 String\t#2 String" if split == "test"
                  else "index\t#1 Label\t#2 ImageID\t#3 String\t#3 String")
        lines = [header] + ["\t".join(map(str, (i, *row))) for i, row in enumerate(rows, 1)]
        (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        for label, image, _, _ in rows:
            if not (root / "twitter2015_images" / image).exists():  # coloured by the tweet's first target
                write_jpg(root / "twitter2015_images" / image, COLORS[label])
        out[split] = rows
    return out


def write_sarcasm(root: Path) -> dict[str, list[list]]:
    """HFM's text/{train,valid2,test2}.txt (CRLF, one Python list per line) and dataset_image/<id>.jpg."""
    (root / "text").mkdir(parents=True)
    out = {}
    for split, n, file in (("train", 20, "train.txt"), ("val", 6, "valid2.txt"), ("test", 6, "test2.txt")):
        rows = []
        for i in range(n):
            label = i % 2
            post = f"9{len(out)}{i:016d}"
            text = f"<user> this is {WORDS[2 * label]} weather # post{i} emoji_{i}"
            row = [post, text, label] if split == "train" else [post, text, 1 - label if i == 0 else label, label]
            rows.append(row)
            write_jpg(root / "dataset_image" / f"{post}.jpg", COLORS[2 * label])
        if split == "train":  # posts HFM discards; the release has no image for them
            rows += [["8000000000000000001", "what a # sarcasm moment", 1], ["8000000000000000002", "look <url>", 0]]
        (root / "text" / file).write_bytes("".join(f"{row!r}\r\n" for row in rows).encode())
        out[split] = rows
    return out


FOODS = ("apple_pie", "baby_back_ribs", "caesar_salad")


def write_food101(root: Path, *, header: bool = False) -> None:
    """UPMC Food-101: texts/{train,test}_titles.csv (image, text, class) and images/<split>/<class>/<image>."""
    (root / "texts").mkdir(parents=True)
    for split, n in (("train", 8), ("test", 2)):
        lines = ["Image_path,text,label"] if header else []
        for c, food in enumerate(FOODS):
            for i in range(n):
                image = f"{food}_{i}.jpg"
                lines.append(f'{image},"{food.replace("_", " ")} recipe, {WORDS[c]} and easy",{food}')
                write_jpg(root / "images" / split / food / image, COLORS[c])
        (root / "texts" / f"{split}_titles.csv").write_text("\n".join(lines) + "\n")


def write_generic(root: Path, n: int = 24) -> None:
    """A json-lines layout with named columns and no validation file; word ``only{i}`` occurs in sample i only."""
    root.mkdir(parents=True)
    for split, count in (("train", n), ("test", 6)):
        with open(root / f"{split}.jsonl", "w") as f:
            for i in range(count):
                label = ("cat", "dog")[i % 2]
                key = f"{split}{i}"
                f.write(json.dumps({"img": key, "caption": f"a {label} photo only{key}", "y": label}) + "\n")
                write_jpg(root / "pics" / f"{key}.png", COLORS[2 * (i % 2)])


GENERIC = {"train_file": "train.jsonl", "test_file": "test.jsonl", "image_column": "img", "text_column": "caption",
           "label_column": "y", "image_dir": "pics", "image_pattern": "{image}.png"}


def write_bert_tokenizer(folder: Path, words: list[str]) -> Path:
    """A tiny local Hugging Face BERT tokenizer folder (vocab.txt -> tokenizer.json + config)."""
    from transformers import BertTokenizer

    raw = folder.parent / f"{folder.name}-vocab"
    raw.mkdir()
    (raw / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    BertTokenizer.from_pretrained(raw, local_files_only=True).save_pretrained(folder)
    return folder


# ----------------------------------------------------------------------------- index: rows, labels, splits


def test_registered():
    assert set(NAMES) <= set(REAL_DATASETS) and set(NAMES) <= set(DATASETS)


def test_twitter15_tomberts_tsv_files(tmp_path):
    rows = write_twitter15(tmp_path / "tw")
    cfg = config("twitter15", tmp_path / "tw")
    index = Twitter15.index(cfg)
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 18, "val": 6, "test": 6}  # dev.tsv is val
    assert index.classes == ["negative", "neutral", "positive"]
    assert not index.missing
    for split, file_split in (("train", "train"), ("val", "dev"), ("test", "test")):
        assert [s.label for s in index.splits[split]] == [r[0] for r in rows[file_split]]
    first = index.splits["test"][0]  # read by position despite test.tsv's short header
    label, image, tweet, target = rows["test"][0]
    assert first.sources["image"] == tmp_path / "tw" / "twitter2015_images" / image and first.label == label
    # $T$ is replaced by the target: the tweet as posted. "test" occurs in test tweets only: unknown.
    vocab = set(stored_tokenizer(index.info).words)
    assert words_of(first.sources["text"], index.info) == [
        w if w in vocab else "[UNK]" for w in WordTokenizer.split(tweet.replace("$T$", target))]
    assert "star" in vocab and "test" not in vocab and "[UNK]" in words_of(first.sources["text"], index.info)
    assert index.info["header"]["test"] == ["index", "#1 ImageID", "#2 String", "#2 String"]
    assert {m: (s.shape, s.dtype) for m, s in index.modalities.items()} == {
        "text": ((128,), "int64"), "image": ((3, SIZE, SIZE), "uint8")}
    assert index.modalities["image"].normalize == (IMAGENET_MEAN, IMAGENET_STD)


def test_sarcasm_hfm_lists_filter_and_annotator_label(tmp_path):
    rows = write_sarcasm(tmp_path / "sarc")
    index = Sarcasm.index(config("sarcasm", tmp_path / "sarc"))
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 20, "val": 6, "test": 6}
    assert index.info["excluded"] == {"train": 2, "val": 0, "test": 0}  # '# sarcasm' and '<url>' posts, HFM's filter
    assert not index.missing  # the discarded posts' images are not looked for
    assert index.classes == ["not_sarcastic", "sarcastic"]
    assert [s.label for s in index.splits["val"]] == [r[-1] for r in rows["val"]]  # the last element, not [-2]
    assert rows["val"][0][-2] != rows["val"][0][-1]
    post = rows["train"][3][0]
    assert index.splits["train"][3].sources["image"].name == f"{post}.jpg"
    assert "sarcasm" in HFM_EXCLUDED_WORDS


@pytest.mark.parametrize("header", [False, True], ids=["upmc", "with-header"])
def test_food101_classes_header_and_carved_validation(tmp_path, header):
    write_food101(tmp_path / "food", header=header)
    cfg = config("food101", tmp_path / "food")
    index = Food101.index(cfg)
    assert index.classes == list(FOODS)  # sorted class names of the training file
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 24, "test": 6} and "val" not in index.splits
    assert index.info["header"]["train"] == (["Image_path", "text", "label"] if header else None)
    sample = index.splits["test"][5]
    assert sample.sources["image"] == tmp_path / "food" / "images" / "test" / "caesar_salad" / "caesar_salad_1.jpg"
    assert "easy" in words_of(sample.sources["text"], index.info)  # the quoted comma stayed inside the text
    assert index.modalities["text"].shape == (40,)  # BalanceBenchmark's max_length
    data = build_dataset(cfg, "cpu")
    assert (len(data.train), len(data.val), len(data.test)) == (21, 3, 6)  # one per class carved out
    assert "carved from train" in data.info["splits"]["val"]["source"]


def test_word_vocabulary_comes_from_training_samples_only(tmp_path):
    """With validation carved, the words of the carved samples (and of test) are not in the vocabulary."""
    write_generic(tmp_path / "gen")
    cfg = config("text_image", tmp_path / "gen", **GENERIC)
    data = build_dataset(cfg, "cpu")
    folder = Path(data.info["cache"])
    meta = json.loads((folder / "meta.json").read_text())
    vocab = set(stored_tokenizer(meta["info"]).words)
    keys = {s: (folder / s / "keys.txt").read_text().split() for s in ("train", "val", "test")}
    assert len(keys["val"]) == 2 and meta["classes"] == ["cat", "dog"]
    only = {s: {f"only{k.split('/')[-1]}" for k in keys[s]} for s in keys}
    assert only["train"] <= vocab and not only["val"] & vocab and not only["test"] & vocab
    # The stored ids are the tokenizer's: same words, same ids.
    text = np.load(folder / "train" / "text.npy")
    assert text.dtype == np.int64 and text.shape == (22, 128) and (text[:, 0] == 1).all()  # [CLS]
    first_label = int(np.load(folder / "train" / "labels.npy")[0])
    assert words_of(text[0], meta["info"])[:2] == ["a", ("cat", "dog")[first_label]]


def test_named_tsv_columns_as_in_amss_annotations(tmp_path):
    """AMSS's Twitter15/annotations/{train,test}.tsv (a header with Label, String, ImageID), no dev file."""
    root = tmp_path / "Twitter15"
    write_twitter15(root)
    (root / "annotations").mkdir()
    for split in ("train", "test"):
        rows = twitter_rows(split, TWITTER_SPLITS[split], 0)
        lines = ["ImageID\tLabel\tString"] + [f"{image}\t{label}\t{tweet}" for label, image, tweet, _ in rows]
        (root / "annotations" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    amss = {"train_file": "annotations/train.tsv", "test_file": "annotations/test.tsv", "image_column": "ImageID",
            "text_column": "String", "label_column": "Label", "image_dir": "twitter2015_images"}
    index = TextImage.index(config("text_image", root, **amss))
    assert {s: len(v) for s, v in index.splits.items()} == {"train": 18, "test": 6}
    assert index.classes == ["0", "1", "2"] and index.info["classes_from"] == "integer labels"
    assert [s.label for s in index.splits["train"]] == [r[0] for r in twitter_rows("train", 18, 0)]
    assert index.info["header"]["train"] == ["ImageID", "Label", "String"]
    with pytest.raises(ConfigError, match="'Strings' is not a column of .*Did you mean 'String'"):
        TextImage.index(config("text_image", root, **{**amss, "text_column": "Strings"}))


def test_local_hugging_face_tokenizer_folder(tmp_path):
    write_twitter15(tmp_path / "tw")
    tok = write_bert_tokenizer(tmp_path / "bert", ["rt", "is", "today", "great", "sunny", "awful", "star", "##s"])
    cfg = config("twitter15", tmp_path / "tw", tokenizer=str(tok), max_len=12)
    index = Twitter15.index(cfg)
    assert index.info["tokenizer"]["kind"] == "huggingface" and index.info["tokenizer"]["vocab_size"] == 13
    texts = [r[2].replace("$T$", r[3]) for r in twitter_rows("train", 18, 0)]
    expected = encode(load_tokenizer(tok), texts, max_len=12)
    np.testing.assert_array_equal(np.stack([s.sources["text"] for s in index.splits["train"]]), expected)
    assert expected[0, 0] == 2 and (expected == 3).sum(1).tolist() == [1] * 18  # BERT's [CLS] … [SEP]
    # The folder's files are part of the cache key: an edited tokenizer gets a new cache.
    before = cache_path(cfg)
    (tok / "tokenizer.json").write_text((tok / "tokenizer.json").read_text() + "\n")
    assert cache_path(cfg) != before
    with pytest.raises(ConfigError, match="dataset.tokenizer: tokenizer folder not found"):
        Twitter15.index(config("twitter15", tmp_path / "tw", tokenizer=str(tmp_path / "nope")))


def test_cache_batches_and_reuse(tmp_path):
    write_twitter15(tmp_path / "tw")
    cfg = config("twitter15", tmp_path / "tw", max_len=16)
    data = build_dataset(cfg, "cpu")
    assert data.modalities == ["text", "image"] and data.num_classes == 3
    assert data.input_shapes == {"text": (16,), "image": (3, SIZE, SIZE)}
    assert data.info["splits"]["val"]["source"] == "given"
    batch = next(iter(data.test.batches(4)))
    assert batch.inputs["text"].dtype == torch.int64 and batch.inputs["image"].dtype == torch.float32
    red = (torch.tensor([200.0, 40.0, 40.0]) / 255 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    first = batch.inputs["image"][0, :, SIZE // 2, SIZE // 2]  # test row 0 has label 0: a red image
    assert int(batch.labels[0]) == 0 and torch.allclose(first, red, atol=0.08)  # JPEG rounding
    folder = prepare(cfg)
    assert prepare(config("twitter15", tmp_path / "tw", max_len=16, workers=2)) == folder  # runtime knob
    assert cache_path(config("twitter15", tmp_path / "tw", max_len=20)) != folder
    (tmp_path / "tw" / "dev.tsv").write_text((tmp_path / "tw" / "dev.tsv").read_text() + "\n")
    assert cache_path(cfg) != folder  # an edited annotation file is a new cache


# ----------------------------------------------------------------------------- bad input


def test_missing_images_are_counted_and_named_or_skipped(tmp_path):
    rows = write_sarcasm(tmp_path / "sarc")
    gone = [rows["train"][1][0], rows["test"][2][0]]
    for post in gone:
        (tmp_path / "sarc" / "dataset_image" / f"{post}.jpg").unlink()
    with pytest.raises(ConfigError) as err:
        build_dataset(config("sarcasm", tmp_path / "sarc"), "cpu")
    text = str(err.value)
    assert "2 missing file(s)" in text and f"dataset_image/{gone[0]}.jpg" in text and "skip_missing=true" in text
    assert "text/valid2.txt" in text  # the expected layout
    data = build_dataset(config("sarcasm", tmp_path / "sarc", skip_missing=True), "cpu")
    assert (len(data.train), len(data.val), len(data.test)) == (19, 6, 5)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    rows = write_twitter15(tmp_path / "tw")
    (tmp_path / "tw" / "twitter2015_images" / rows["dev"][0][1]).write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(ConfigError) as err:
        build_dataset(config("twitter15", tmp_path / "tw"), "cpu")
    assert "1 unreadable file(s)" in str(err.value) and rows["dev"][0][1] in str(err.value)
    data = build_dataset(config("twitter15", tmp_path / "tw", skip_missing=True), "cpu")
    assert len(data.val) == 4  # the two targets of that tweet share the image


def test_wrong_root_names_the_expected_entries(tmp_path):
    (tmp_path / "text").mkdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(config("sarcasm", tmp_path), "cpu")
    text = str(err.value)
    assert ("no folder 'dataset_image', no file 'text/train.txt', no file 'text/valid2.txt', no file 'text/test2.txt'"
            in text and "Expected layout" in text)
    with pytest.raises(ConfigError, match="is not a folder"):
        build_dataset(config("twitter15", tmp_path / "nowhere"), "cpu")
    write_twitter15(tmp_path / "tw")
    with pytest.raises(ConfigError, match="no file 'annotations/train.tsv'"):
        build_dataset(config("twitter15", tmp_path / "tw", train_file="annotations/train.tsv"), "cpu")


def test_malformed_rows_are_listed_or_skipped(tmp_path):
    write_sarcasm(tmp_path / "sarc")
    train = tmp_path / "sarc" / "text" / "train.txt"
    lines = train.read_text().splitlines()
    lines[2] = "['9000', 'an unfinished line"
    lines[4] = lines[4].replace(", 0]", ", 7]")
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as err:
        Sarcasm.index(config("sarcasm", tmp_path / "sarc"))
    text = str(err.value)
    assert "2 malformed annotation row(s)" in text and f"{train}:3: not a Python list literal" in text
    assert f"{train}:5: label 7 is not one of the classes [not_sarcastic, sarcastic]" in text
    index = Sarcasm.index(config("sarcasm", tmp_path / "sarc", skip_missing=True))
    assert len(index.splits["train"]) == 18 and index.info["malformed_rows_skipped"] == 2
    write_generic(tmp_path / "gen")
    with pytest.raises(ConfigError, match="'caption_text' is not a column|no key 'caption_text'"):
        TextImage.index(config("text_image", tmp_path / "gen", **{**GENERIC, "text_column": "caption_text"}))


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        dataset_config({"name": "text_image", "root": "/data", "image_pattern": "{id}.jpg", "format": "pylist",
                        "val_file": "test.csv", "classes": ["a", "a"]})
    text = str(err.value)
    for part in ("image_pattern: must contain {image}", "format: pylist rows have no column names",
                 "val_file: 'test.csv' is also the train or test file", "classes: names classes more than once"):
        assert part in text


# ----------------------------------------------------------------------------- training, CLI


def test_one_epoch_with_bert_from_config_and_resnet18(tmp_path):
    write_twitter15(tmp_path / "tw")
    spec = parse_trial_config({"method": "joint", "dataset": {"name": "twitter15", "root": str(tmp_path / "tw"),
                                                              "workers": 0, "image_size": SIZE},
                               "model": {"backbone": "resnet18", "backbones": {"text": "bert"}},
                               "train": {"epochs": 1, "batch_size": 8}})
    trial = Trial(spec)
    assert trial.modalities == ["text", "image"]
    metrics = trial.step()
    assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))
    assert 0.0 <= metrics["val_acc"] <= 1.0 and np.isfinite(metrics["train_loss"])


def test_cli_run_and_prepare(tmp_path, capsys):
    write_sarcasm(tmp_path / "sarc")
    assert main(["run", "ogm", "dataset.name=sarcasm", f"dataset.root={tmp_path / 'sarc'}", "dataset.workers=0",
                 f"dataset.image_size={SIZE}", "dataset.max_len=32", "model.backbone=resnet18",
                 "model.backbones={text: bert}", "train.epochs=1", "train.batch_size=8"]) == 0
    write_food101(tmp_path / "food")
    capsys.readouterr()
    assert main(["prepare", "food101", "--root", str(tmp_path / "food"), f"image_size={SIZE}"]) == 0
    assert "MiB in" in capsys.readouterr().out
    folder = cache_path(config("food101", tmp_path / "food"))
    assert np.load(folder / "test" / "image.npy").shape == (6, 3, SIZE, SIZE)
    assert main(["prepare", "food101", "--root", str(tmp_path / "food"), f"image_size={SIZE}"]) == 0
    assert "already prepared" in capsys.readouterr().out
