"""Text–image datasets: one tweet / title and one image per sample (Twitter-15, Sarcasm, Food-101).

How the balancing papers use them (AMSS / AMSS+, Yang et al., TPAMI 2025, arXiv:2404.08347, §5.1 and
its official code njustkmg/TPAMI-AMSS): two modalities, ``text`` through BERT and ``image`` through a
ResNet (the paper: ResNet-50; mmtune's runs use ``resnet18``), images resized to 224 × 224, "the
maximum sequence length for text data [set] to 128". Sarcasm Detection has 24,635 pairs (19,816
train / 2,410 validation / 2,409 test, two classes); Twitter-15 has 5,338 (3,179 / 1,122 / 1,037,
three sentiment classes). GeWu-Lab's BalanceBenchmark adds UPMC Food-101 (101 classes, BERT token
ids of length 40, 224 × 224 images, no validation split).

Here every sample is stored as

* ``text``  = ``(max_len,)`` int64 token ids: [CLS] first, truncated, padded with 0 (the ``bert``
  encoder's padding id), written by :func:`mmtune.data.text.encode`;
* ``image`` = ``(3, S, S)`` uint8, ``S = image_size`` (default 224), resized ignoring the aspect
  ratio like the reference ``transforms.Resize((224, 224))``, normalised with the ImageNet mean / std
  on the device. (AMSS normalises with per-dataset statistics; BalanceBenchmark with ImageNet's.)

One reader, :class:`TextImage` (``name: text_image``), covers the layouts; the named datasets are
presets of its knobs with their own expected tree:

* ``twitter15``: TomBERT's (jefferyYu/TomBERT) ``absa_data/twitter2015/{train,dev,test}.tsv`` —
  a header row, then ``index, label, image id, tweet with the target replaced by $T$, target`` —
  and ``twitter2015_images/`` from TomBERT's image archive. The header of TomBERT's ``test.tsv`` is
  one column short, so columns are read by position, as TomBERT's own reader does. Labels are
  0 negative, 1 neutral, 2 positive (polarity + 1). The target is put back in place of ``$T$``, so
  the text is the tweet as posted (TomBERT feeds the pair (tweet with $T$, target) to its BERT).
* ``sarcasm``: HFM's release (headacheboy/data-of-multimodal-sarcasm-detection): ``text/train.txt``,
  ``text/valid2.txt``, ``text/test2.txt``, one Python list literal per line (``['<id>', '<text>',
  <label>]``; validation and test lines carry a hashtag label and an annotator label, and the
  *last* one is read, as HFM's ``loadData.py`` does), images ``dataset_image/<id>.jpg``. HFM discards
  posts containing any of :data:`HFM_EXCLUDED_WORDS`; ``exclude_words`` does the same, which gives
  exactly the 19,816 / 2,410 / 2,409 samples of the papers (and the discarded posts have no image).
* ``food101``: UPMC Food-101 as BalanceBenchmark reads it: ``texts/{train,test}_titles.csv`` rows
  ``image file, text, class`` and ``images/{train,test}/<class>/<image file>``. Classes are the sorted
  class names of the training file (BalanceBenchmark: the sorted folder names of ``images/train``).

Annotation files
----------------
``train_file`` / ``val_file`` / ``test_file`` (relative to the root; ``val_file`` empty: the core
carves ``val_fraction`` of train out, seeded and stratified) in one ``format``: ``csv``, ``tsv`` (tab
separated, no quoting), ``json`` (a JSON array of objects, or one object per line) or ``pylist`` (one
Python list literal per line, read with ``ast.literal_eval``); ``auto`` picks it from the suffix
(``.txt``: ``pylist`` when the first line starts with ``[``, else ``tsv`` when it holds a tab, else
``csv``). A column (``image_column``, ``text_column``, ``label_column``, ``target_column``) is a name —
a header cell of a csv / tsv file, a key of a json object — or a 0-based position such as ``0`` or
``-1`` (csv / tsv / pylist rows). With positions, ``header`` says whether a csv / tsv file starts
with a header row; ``auto`` takes the first row for a header when its label cell is not a label: not
an integer, not one of ``classes``, and found in no other row.

Labels: with ``classes`` given, a label is a class name or its index; without, integer labels give
classes ``"0" … "K-1"``, and names give the sorted names of the training file.

A malformed row (too few cells, an unparsable line, an unknown label) is named with its file and line,
with the count; ``skip_missing=true`` leaves such rows out with a warning, as it does for samples
whose image is missing or unreadable.

Tokenizer
---------
``tokenizer`` = a local Hugging Face tokenizer folder (``tokenizer.json`` or ``vocab.txt``; use the
folder of the BERT weights given as ``model.weights.text``), loaded with ``local_files_only=True``.
Empty: the built-in :class:`~mmtune.data.text.WordTokenizer`, fitted on the texts of the samples that
train on — the training file minus rows skipped and, when validation is carved from train, minus the
samples the core will carve out (its own :func:`carve_validation` of the same list), so no
validation or test word is in its vocabulary. Its words, in id order, are stored in the cache's
``meta.json`` (``info.tokenizer.words``; :func:`stored_tokenizer` rebuilds it). Tokenizing happens in
:meth:`TextImage.index`, once per prepare: the text's "source" is already its row of token ids.

The cache key holds every knob above plus (:meth:`TextImage.fingerprint`) the size and modification
time of the annotation files and of the tokenizer folder's files, so an edited file gets a new cache.
Images are not stamped: after replacing images, run ``mmtune prepare … --force``.
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import re
import string
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from mmtune.config import hp
from mmtune.data.images import read_image
from mmtune.data.real import (
    IMAGENET_MEAN, IMAGENET_STD, SHOWN_FILES, Index, Layout, Modality, RealDataConfig, RealDataset, Sample,
    carve_validation, register_dataset,
)
from mmtune.data.text import DEFAULT_MAX_VOCAB, Tokenizer, WordTokenizer, encode, load_tokenizer
from mmtune.errors import ConfigError, Problem, did_you_mean

__all__ = [
    "FORMATS", "HFM_EXCLUDED_WORDS", "Food101", "Food101Config", "Sarcasm", "SarcasmConfig", "TextImage",
    "TextImageConfig", "Twitter15", "Twitter15Config", "stored_tokenizer",
]

log = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "tsv", "json", "pylist")
PATTERN_FIELDS = ("image", "label", "split")
TARGET_PLACEHOLDER = "$T$"  # TomBERT's mark of the target in a tweet
# Posts HFM's loadData.py discards (any of these whitespace-separated words in the text).
HFM_EXCLUDED_WORDS = ("exgag", "sarcasm", "sarcastic", "reposting", "<url>", "joke", "humour", "humor",
                      "jokes", "irony", "ironic")
# Files of a tokenizer folder whose size and mtime go into the cache key.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "config.json")
_INTEGER = re.compile(r"\s*-?\d+\s*")


def _is_position(column: str) -> bool:
    return bool(_INTEGER.fullmatch(column))


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(_INTEGER.fullmatch(value)))


@dataclass(frozen=True)
class TextImageConfig(RealDataConfig):
    name: str = hp("text_image", doc="dataset name")
    train_file: str = hp("train.csv", doc="training annotation file, relative to root")
    val_file: str = hp("", doc="validation annotation file, relative to root ('': carve val_fraction of train out)")
    test_file: str = hp("test.csv", doc="test annotation file, relative to root")
    format: str = hp("auto", choices=FORMATS, doc="annotation format: csv | tsv | json | pylist (auto: by suffix)")
    header: bool | str = hp("auto", choices=("auto", True, False),
                            doc="csv / tsv with positional columns: the first row is a header (auto: when "
                                "its label cell is not a label)")
    image_column: str = hp("image", doc="column of the image id / file name: a header name or json key, "
                                        "or a position (0, -1)")
    text_column: str = hp("text", doc="column of the text: a name or a position")
    label_column: str = hp("label", doc="column of the label (class name or index): a name or a position")
    target_column: str = hp("", doc=f"column whose value replaces {TARGET_PLACEHOLDER} in the text "
                                    "(Twitter-15's target); '': none")
    image_dir: str = hp("images", doc="folder of the images, relative to root ('': root)")
    image_pattern: str = hp("{image}", doc="image path inside image_dir; fields {image}, {label} (as written), "
                                           "{split} (train / val / test), e.g. '{image}.jpg', "
                                           "'{split}/{label}/{image}'")
    classes: tuple[str, ...] = hp((), doc="class names in index order (labels may be names or indices); empty: "
                                          "0..K-1 for integer labels, else the sorted training labels")
    exclude_words: tuple[str, ...] = hp((), doc="leave out rows whose text holds any of these words "
                                                "(whitespace-separated, case-insensitive)")
    tokenizer: str = hp("", doc="local Hugging Face tokenizer folder (tokenizer.json or vocab.txt); '': the "
                                "built-in word tokenizer fitted on the training texts")
    max_len: int = hp(128, low=2, doc="token ids per text: [CLS] first, truncated, padded with 0 (AMSS: 128)")
    max_vocab: int = hp(DEFAULT_MAX_VOCAB, low=1, doc="words kept by the built-in tokenizer (most frequent in train)")
    image_size: int = hp(224, low=1, doc="images are resized to image_size × image_size (papers: 224)")

    def columns(self) -> dict[str, str]:
        """The columns read, by role (``target`` only when set)."""
        cols = {"image": self.image_column, "text": self.text_column, "label": self.label_column}
        return {**cols, "target": self.target_column} if self.target_column else cols

    def extra_checks(self) -> list[Problem]:
        problems = super().extra_checks()
        for role, column in self.columns().items():
            if not column.strip():
                problems.append(Problem(f"{role}_column", "is empty: give a column name or a 0-based position."))
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(self.image_pattern) if f is not None]
        except ValueError as err:
            fields = None
            problems.append(Problem("image_pattern", f"is not a format pattern ({err}); write e.g. '{{image}}.jpg'."))
        if fields is not None:
            unknown = sorted(set(fields) - set(PATTERN_FIELDS))
            if unknown or "image" not in fields:
                problems.append(Problem("image_pattern", f"must contain {{image}} and may contain {{label}} and "
                                                         f"{{split}}, got {self.image_pattern!r}."))
        files = {"train_file": self.train_file, "test_file": self.test_file, "val_file": self.val_file}
        for key in ("train_file", "test_file"):
            if not files[key]:
                problems.append(Problem(key, "is required: the annotation file of that split, relative to root."))
        if self.train_file and self.train_file == self.test_file:
            problems.append(Problem("test_file", f"is the training file '{self.train_file}': train and test must "
                                                 "be separate."))
        if self.val_file and self.val_file in (self.train_file, self.test_file):
            problems.append(Problem("val_file", f"'{self.val_file}' is also the train or test file; validation must "
                                                "be a split of its own (or '' to carve it from train)."))
        if len(set(self.classes)) != len(self.classes):
            repeated = sorted(c for c, n in Counter(self.classes).items() if n > 1)
            problems.append(Problem("classes", f"names classes more than once: {repeated}."))
        named = [c for c in self.columns().values() if c and not _is_position(c)]
        if self.format == "pylist" and named:
            problems.append(Problem("format", f"pylist rows have no column names; give positions, got {named}."))
        if self.format in ("csv", "tsv") and named and self.header is False:
            problems.append(Problem("header", f"is false, but columns {named} are names, which need a header row; "
                                              "give positions (0, 1, …) or set header=true."))
        if self.format == "json" and len(named) < len(self.columns()):
            problems.append(Problem("format", "json rows are objects: give every column as a key name."))
        return problems


# ----------------------------------------------------------------------------- the presets' knobs


@dataclass(frozen=True)
class Twitter15Config(TextImageConfig):
    name: str = hp("twitter15", doc="dataset name")
    train_file: str = hp("train.tsv", doc="TomBERT's training file, relative to root")
    val_file: str = hp("dev.tsv", doc="TomBERT's validation file ('': carve val_fraction of train out)")
    test_file: str = hp("test.tsv", doc="TomBERT's test file")
    format: str = hp("tsv", choices=FORMATS, doc="annotation format")
    header: bool | str = hp(True, choices=("auto", True, False), doc="the files start with a header row")
    image_column: str = hp("2", doc="column of the image file name (TomBERT: 2)")
    text_column: str = hp("3", doc=f"column of the tweet, the target written as {TARGET_PLACEHOLDER} (TomBERT: 3)")
    label_column: str = hp("1", doc="column of the label, 0 negative / 1 neutral / 2 positive (TomBERT: 1)")
    target_column: str = hp("4", doc=f"column of the target, put back in place of {TARGET_PLACEHOLDER} ('': keep "
                                     f"{TARGET_PLACEHOLDER})")
    image_dir: str = hp("twitter2015_images", doc="folder of the tweets' images, relative to root")
    classes: tuple[str, ...] = hp(("negative", "neutral", "positive"), doc="class names in index order")


@dataclass(frozen=True)
class SarcasmConfig(TextImageConfig):
    name: str = hp("sarcasm", doc="dataset name")
    train_file: str = hp("text/train.txt", doc="HFM's training file, relative to root")
    val_file: str = hp("text/valid2.txt", doc="HFM's validation file ('': carve val_fraction of train out)")
    test_file: str = hp("text/test2.txt", doc="HFM's test file")
    format: str = hp("pylist", choices=FORMATS, doc="annotation format")
    image_column: str = hp("0", doc="position of the post id in a line")
    text_column: str = hp("1", doc="position of the text in a line")
    label_column: str = hp("-1", doc="position of the label: -1, the last element (HFM's code; in valid2 / test2 "
                                     "the human annotator's label, the one before it being the hashtag's)")
    image_dir: str = hp("dataset_image", doc="folder of the images, relative to root")
    image_pattern: str = hp("{image}.jpg", doc="image file of a post inside image_dir")
    classes: tuple[str, ...] = hp(("not_sarcastic", "sarcastic"), doc="class names in index order")
    exclude_words: tuple[str, ...] = hp(HFM_EXCLUDED_WORDS, doc="leave out posts holding any of these words "
                                                                "(HFM's filter)")


@dataclass(frozen=True)
class Food101Config(TextImageConfig):
    name: str = hp("food101", doc="dataset name")
    train_file: str = hp("texts/train_titles.csv", doc="training annotation file, relative to root")
    test_file: str = hp("texts/test_titles.csv", doc="test annotation file, relative to root")
    format: str = hp("csv", choices=FORMATS, doc="annotation format")
    image_column: str = hp("0", doc="column of the image file name")
    text_column: str = hp("1", doc="column of the text")
    label_column: str = hp("2", doc="column of the class name")
    image_pattern: str = hp("{split}/{label}/{image}", doc="image file inside image_dir")
    max_len: int = hp(40, low=2, doc="token ids per text (BalanceBenchmark: 40)")


# ----------------------------------------------------------------------------- reading annotation files


@dataclass
class _Row:
    """One annotation row: its cells by role, or (``problem`` set) why it is malformed."""

    line: int
    image: str = ""
    text: str = ""
    label: Any = None
    problem: str = ""


@dataclass
class _Table:
    """An annotation file: its (line, cells) rows (cells: a list, a dict, or why the line is unreadable)
    and, once :func:`_extract` has looked at it, its header row."""

    path: Path
    format: str
    raw: list[tuple[int, Any]]
    header: list[str] | None = None


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return suffix[1:]
    if suffix in (".json", ".jsonl"):
        return "json"
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    if first.lstrip().startswith("["):
        return "pylist"
    return "tsv" if "\t" in first else "csv"


def _read_table(path: Path, fmt: str, tree: str) -> _Table:
    """Every non-empty row of ``path`` with its line number; json / pylist rows parsed (or an error string)."""
    fmt = _detect_format(path, fmt)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if fmt in ("csv", "tsv"):
                reader = csv.reader(f, delimiter="," if fmt == "csv" else "\t",
                                    quoting=csv.QUOTE_MINIMAL if fmt == "csv" else csv.QUOTE_NONE)
                rows = [(reader.line_num, [c.strip() for c in row]) for row in reader if any(c.strip() for c in row)]
            elif fmt == "pylist":
                rows = [(n, _literal(line)) for n, line in enumerate(f, start=1) if line.strip()]
            else:
                rows = _json_rows(f.read())
    except (UnicodeDecodeError, csv.Error, json.JSONDecodeError) as err:
        raise ConfigError(Problem("dataset.root", f"'{path}' is not a readable {fmt} annotation file "
                                                  f"({type(err).__name__}: {err}). Expected layout:\n{tree}")) from None
    return _Table(path, fmt, rows)


def _literal(line: str) -> Any:
    try:
        value = ast.literal_eval(line.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as err:
        return f"not a Python list literal ({type(err).__name__})"
    return list(value) if isinstance(value, (list, tuple)) else f"a {type(value).__name__}, not a list"


def _json_rows(content: str) -> list[tuple[int, Any]]:
    if content.lstrip().startswith("["):  # one JSON array of objects; "line" = item number
        items = json.loads(content)
        return [(i, item if isinstance(item, dict) else f"a {type(item).__name__}, not an object")
                for i, item in enumerate(items, start=1)]
    rows = []
    for n, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append((n, f"not a JSON object ({err.msg})"))
            continue
        rows.append((n, item if isinstance(item, dict) else f"a {type(item).__name__}, not an object"))
    return rows


def _cell(cells: Any, column: str, role: str) -> Any:
    """The cell of ``column`` (a position or, for a dict row, a key); raises KeyError naming what is missing."""
    if isinstance(cells, dict):
        if column not in cells:
            raise KeyError(f"no key '{column}' ({role})")
        return cells[column]
    position = int(column)
    if not -len(cells) <= position < len(cells):
        raise KeyError(f"{len(cells)} cell(s), no column {position} ({role})")
    return cells[position]


def _extract(table: _Table, cfg: TextImageConfig, classes: tuple[str, ...], tree: str) -> list[_Row]:
    """Rows by role: header row handled, named csv / tsv columns mapped to positions."""
    columns = cfg.columns()
    named = {role: c for role, c in columns.items() if not _is_position(c)}
    if table.format == "pylist" and named:
        raise ConfigError(Problem("dataset.format", f"'{table.path}' holds Python lists, which have no column names; "
                                                    f"give positions (0, 1, -1, …) for {sorted(named)}."))
    if table.format == "json" and len(named) < len(columns):
        raise ConfigError(Problem("dataset.format", f"'{table.path}' holds JSON objects: give every column as a key "
                                                    f"name, got {columns}."))
    raw = table.raw
    if table.format in ("csv", "tsv") and raw:
        if named or _starts_with_header(raw, columns["label"], cfg.header, classes):
            table.header = raw[0][1]
            raw = raw[1:]
        if named:
            columns = {**columns, **_positions(table, named, tree)}
    rows = []
    for line, cells in raw:
        if isinstance(cells, str):  # an unparsable json / pylist line
            rows.append(_Row(line, problem=cells))
            continue
        try:
            values = {role: _cell(cells, column, role) for role, column in columns.items()}
        except KeyError as err:
            rows.append(_Row(line, problem=err.args[0]))
            continue
        text = "" if values["text"] is None else str(values["text"])
        if "target" in values and values["target"] is not None:
            text = text.replace(TARGET_PLACEHOLDER, str(values["target"]))
        image = "" if values["image"] is None else str(values["image"]).strip()
        rows.append(_Row(line, image, text, values["label"], "" if image else "no image id"))
    return rows


def _starts_with_header(raw: list[tuple[int, Any]], label_column: str, header: bool | str,
                        classes: tuple[str, ...]) -> bool:
    """``header`` for positional csv / tsv columns; auto: the first label cell is not a label."""
    if header != "auto":
        return bool(header)
    try:
        first = str(_cell(raw[0][1], label_column, "label"))
    except KeyError:
        return True  # a short first row with no label cell cannot be a sample
    if _is_integer(first) or first in classes:
        return False
    return not any(str(_cell_or_none(cells, label_column)) == first for _, cells in raw[1:])


def _cell_or_none(cells: Any, column: str) -> Any:
    try:
        return _cell(cells, column, "")
    except KeyError:
        return None


def _positions(table: _Table, named: dict[str, str], tree: str) -> dict[str, str]:
    """Positions of named columns in the header row; a name that is not there fails, naming the header."""
    header = table.header or []
    found, problems = {}, []
    for role, name in named.items():
        if name in header:
            found[role] = str(header.index(name))
        else:
            problems.append(Problem(f"dataset.{role}_column", f"'{name}' is not a column of '{table.path}'; its header "
                                                              f"is {header}.{did_you_mean(name, header)}"))
    if problems:
        problems.append(Problem("dataset.root", f"Expected layout:\n{tree}"))
        raise ConfigError(problems)
    return found


# ----------------------------------------------------------------------------- labels


def _label_resolver(cfg: TextImageConfig, rows: dict[str, list[_Row]]) -> tuple[list[str], str, Any]:
    """(class names, where they came from, label -> index or None)."""
    if cfg.classes:
        names = list(cfg.classes)
        by_name = {c: i for i, c in enumerate(names)}

        def given(label: Any) -> int | None:
            if str(label) in by_name:
                return by_name[str(label)]
            return int(label) if _is_integer(label) and 0 <= int(label) < len(names) else None

        return names, "dataset.classes", given
    labels = [r.label for split in rows.values() for r in split if not r.problem]
    if labels and all(_is_integer(label) for label in labels):
        k = max(int(label) for label in labels) + 1
        return [str(i) for i in range(k)], "integer labels", lambda label: int(label) if 0 <= int(label) < k else None
    names = sorted({str(r.label) for r in rows["train"] if not r.problem})
    by_name = {c: i for i, c in enumerate(names)}
    return names, "the sorted labels of the training file", lambda label: by_name.get(str(label))


# ----------------------------------------------------------------------------- tokenizer


def _load_tokenizer(cfg: TextImageConfig, train_texts: list[str]) -> Tokenizer:
    try:
        if cfg.tokenizer:
            return load_tokenizer(Path(cfg.tokenizer).expanduser())
        return load_tokenizer(None, train_texts=train_texts, max_vocab=cfg.max_vocab)
    except ConfigError as err:
        raise err.prefixed("dataset") from None


def _tokenizer_info(cfg: TextImageConfig, tokenizer: Tokenizer) -> dict[str, Any]:
    if isinstance(tokenizer, WordTokenizer):
        return {"kind": "word", "vocab_size": len(tokenizer), "special": list(WordTokenizer.SPECIAL),
                "words": list(tokenizer.words)}
    return {"kind": "huggingface", "path": str(Path(cfg.tokenizer).expanduser().resolve()),
            "class": type(tokenizer).__name__, "vocab_size": len(tokenizer)}


def _token_counts(tokenizer: Tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text with the specials, before truncation (for the truncation count in meta.json)."""
    if isinstance(tokenizer, WordTokenizer):
        return [len(tokenizer.ids(t)) for t in texts]
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]]


def stored_tokenizer(info: dict[str, Any]) -> WordTokenizer | None:
    """The built-in tokenizer a cache was written with, from its ``meta.json`` ``info`` (None for a
    Hugging Face tokenizer: load it from ``info["tokenizer"]["path"]``)."""
    tok = info["tokenizer"]
    return WordTokenizer(tok["words"]) if tok["kind"] == "word" else None


def _stamp(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}:absent"
    return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"


# ----------------------------------------------------------------------------- the dataset


def _bad_rows_problem(cfg: TextImageConfig, bad: list[str], tree: str) -> Problem:
    shown = "\n".join(f"    {b}" for b in bad[:SHOWN_FILES])
    more = f"\n    ... and {len(bad) - SHOWN_FILES} more" if len(bad) > SHOWN_FILES else ""
    return Problem("dataset.root", f"{len(bad)} malformed annotation row(s) under '{cfg.root}':\n{shown}{more}\n"
                                   f"  Fix the rows (or the dataset's column / format settings), or set "
                                   f"dataset.skip_missing=true to leave them out. Expected layout:\n{tree}")


GENERIC_LAYOUT = """\
  <root>/
    <train_file> [<val_file>] <test_file>   annotation files, one sample per row (format: csv | tsv | json |
                                            pylist); columns image_column, text_column, label_column
                                            (names, or positions 0, 1, …); no val_file: val carved from train
    <image_dir>/<image_pattern>              the images, e.g. images/{image}; fields {image} {label} {split}
  e.g. dataset.train_file=annotations/train.tsv dataset.image_column=ImageID dataset.text_column=String
  then: mmtune prepare text_image --root DIR [key=value ...]"""


@register_dataset
class TextImage(RealDataset):
    """Annotation files (one text, one image id and one label per row) plus an image folder."""

    name = "text_image"
    Config: ClassVar[type[TextImageConfig]] = TextImageConfig
    layout: ClassVar[str] = GENERIC_LAYOUT

    @classmethod
    def files(cls, cfg: TextImageConfig) -> dict[str, str]:
        """Annotation file (relative to root) per split; no ``val`` when validation is carved."""
        files = {"train": cfg.train_file, "val": cfg.val_file, "test": cfg.test_file}
        return {split: f for split, f in files.items() if f}

    @classmethod
    def fingerprint(cls, cfg: TextImageConfig) -> str:
        """Size and mtime of the annotation files and of the tokenizer folder's files."""
        root = Path(cfg.root).expanduser()
        parts = [_stamp(root / f) for f in cls.files(cfg).values()]
        if cfg.tokenizer:
            folder = Path(cfg.tokenizer).expanduser()
            parts += [_stamp(folder / name) for name in TOKENIZER_FILES]
        return ";".join(parts)

    @classmethod
    def index(cls, cfg: TextImageConfig) -> Index:
        layout = Layout(cfg, cls.layout)
        image_dir = layout.require(cfg.image_dir) if cfg.image_dir else layout.root
        paths = {split: layout.require(f, kind="file") for split, f in cls.files(cfg).items()}
        layout.check()

        tables = {split: _read_table(path, cfg.format, cls.layout) for split, path in paths.items()}
        classes = tuple(cfg.classes)
        rows = {split: _extract(table, cfg, classes, cls.layout) for split, table in tables.items()}
        names, classes_from, label_of = _label_resolver(cfg, rows)

        bad: list[str] = []
        excluded = dict.fromkeys(rows, 0)
        exclude = {w.lower() for w in cfg.exclude_words}
        splits: dict[str, list[Sample]] = {}
        texts: dict[str, str] = {}
        for split, split_rows in rows.items():
            splits[split] = []
            for row in split_rows:
                where = f"{tables[split].path}:{row.line}"
                label = None if row.problem else label_of(row.label)
                if label is None:
                    bad.append(f"{where}: {row.problem or _label_problem(row.label, names, classes_from)}")
                    continue
                if exclude and exclude & set(row.text.lower().split()):
                    excluded[split] += 1
                    continue
                key = f"{split}/{row.line}/{row.image}"
                image = image_dir / cfg.image_pattern.format(image=row.image, label=row.label, split=split)
                if not image.is_file():
                    layout.missing(image, key)
                splits[split].append(Sample(key, label, {"image": image}))
                texts[key] = row.text
        if bad and not cfg.skip_missing:
            raise ConfigError(_bad_rows_problem(cfg, bad, cls.layout))
        if bad:
            log.warning("%s: left out %d malformed annotation row(s) (dataset.skip_missing=true), e.g. %s",
                        cfg.name, len(bad), bad[0])

        fit_on = cls._training_samples(cfg, splits, layout.missing_files)
        tokenizer = _load_tokenizer(cfg, [texts[s.key] for s in fit_on])
        longest: dict[str, int] = {}
        truncated: dict[str, int] = {}
        for split, samples in splits.items():
            split_texts = [texts[s.key] for s in samples]
            ids = encode(tokenizer, split_texts, max_len=cfg.max_len)
            for sample, row in zip(samples, ids, strict=True):
                sample.sources["text"] = row
            lengths = _token_counts(tokenizer, split_texts)
            longest[split] = max(lengths, default=0)
            truncated[split] = sum(n > cfg.max_len for n in lengths)

        size = cfg.image_size
        modalities = {
            "text": Modality((cfg.max_len,), "int64"),
            "image": Modality((3, size, size), "uint8", normalize=(IMAGENET_MEAN, IMAGENET_STD)),
        }
        info = {
            "files": {split: str(path) for split, path in paths.items()},
            "formats": {split: t.format for split, t in tables.items()},
            "header": {split: t.header for split, t in tables.items()},
            "classes_from": classes_from,
            "excluded": excluded,
            "malformed_rows_skipped": len(bad),
            "tokenizer": _tokenizer_info(cfg, tokenizer),
            "max_len": cfg.max_len,
            "longest_text_tokens": longest,
            "truncated_texts": truncated,
        }
        return Index(splits, names, modalities, info=info, missing=layout.missing_files)

    @classmethod
    def decode(cls, cfg: TextImageConfig, modality: str, source: Any) -> np.ndarray:
        if modality == "text":
            return source  # token ids, computed once in index()
        if modality == "image":
            return read_image(source, cfg.image_size)
        raise ValueError(f"{cfg.name} has modalities 'text' and 'image', not {modality!r}")

    @staticmethod
    def _training_samples(cfg: TextImageConfig, splits: dict[str, list[Sample]],
                          missing: dict[str, list[str]]) -> list[Sample]:
        """The samples that will train: train minus missing files and, when validation is carved, minus the
        samples the core carves out (the core's own ``carve_validation`` of the same list)."""
        gone = {key for keys in missing.values() for key in keys}
        train = [s for s in splits["train"] if s.key not in gone]
        if any(s.key not in gone for s in splits.get("val", [])):
            return train
        return carve_validation(train, cfg)[0]


def _label_problem(label: Any, names: list[str], classes_from: str) -> str:
    shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
    if classes_from == "dataset.classes":
        rule = f"one of the classes [{shown}] (dataset.classes) or an index below {len(names)}"
    elif classes_from == "integer labels":
        rule = f"an integer in [0, {len(names)})"
    else:
        rule = f"a label of the training file [{shown}]"
    return f"label {label!r} is not {rule}"


# ----------------------------------------------------------------------------- the named datasets


@register_dataset
class Twitter15(TextImage):
    """Twitter-15 (TMSC): 5,338 tweet–image pairs, 3,179 / 1,122 / 1,037, three sentiment classes."""

    name = "twitter15"
    Config = Twitter15Config
    layout = """\
  <root>/                        TomBERT's absa_data/twitter2015/ files and the tweets' images
    train.tsv dev.tsv test.tsv   jefferyYu/TomBERT: a header row, then tab-separated rows
                                   index, label (0 negative, 1 neutral, 2 positive), image file,
                                   tweet with the target written as $T$, target
    twitter2015_images/          IJCAI2019_data.zip's twitter2015_images/ (TomBERT's README link)
      1860693.jpg ...
  files elsewhere: dataset.train_file= val_file= test_file= image_dir= (relative to root);
  no dev.tsv (AMSS's annotations/): val_file='' carves val_fraction of train out
  then: mmtune prepare twitter15 --root DIR"""


@register_dataset
class Sarcasm(TextImage):
    """Twitter multimodal sarcasm detection (HFM, Cai et al., ACL 2019): 19,816 / 2,410 / 2,409, two classes."""

    name = "sarcasm"
    Config = SarcasmConfig
    layout = """\
  <root>/                 headacheboy/data-of-multimodal-sarcasm-detection
    text/train.txt        one Python list per line: ['<post id>', '<text>', <label 0 | 1>]
    text/valid2.txt       ['<post id>', '<text>', <hashtag label>, <annotator label>]
    text/test2.txt        (the last element is the label, as in HFM's code; 1 = sarcastic)
    dataset_image/        the images from the repository's Google Drive links
      <post id>.jpg ...
  posts with the words HFM discards (sarcasm, <url>, joke, …: dataset.exclude_words) are left out
  then: mmtune prepare sarcasm --root DIR"""


@register_dataset
class Food101(TextImage):
    """UPMC Food-101: recipe page titles and images of 101 dishes, train / test (val carved)."""

    name = "food101"
    Config = Food101Config
    layout = """\
  <root>/                     UPMC Food-101 (as GeWu-Lab's BalanceBenchmark reads it)
    texts/train_titles.csv    rows: image file, text, class (a header row is skipped)
    texts/test_titles.csv
    images/train/<class>/<image file>   e.g. images/train/apple_pie/apple_pie_0.jpg
    images/test/<class>/<image file>
  then: mmtune prepare food101 --root DIR"""
