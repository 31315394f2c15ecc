"""Text to token ids for the ``bert`` encoder: a local Hugging Face tokenizer, or a built-in word one.

Loaders of text–image datasets (Twitter-15, Sarcasm, Food-101) turn each split's texts into an
``(N, max_len)`` int64 array with :func:`encode`: [CLS] first, truncated to ``max_len``, padded with 0
(the ``bert`` encoder's padding id; it masks id 0 out of attention). Two kinds of tokenizer:

* ``load_tokenizer(path)``: a local Hugging Face tokenizer folder (``tokenizer.json``, or ``vocab.txt``
  with or without ``tokenizer_config.json``), loaded with ``local_files_only=True``; nothing is
  downloaded. A bare ``vocab.txt`` is read as an uncased BERT WordPiece vocabulary. Use the folder of
  the BERT weights, so ids match the embeddings. Its own [CLS] / [SEP] / [PAD] are used; its pad id
  must be 0 (BERT's [PAD] is).
* ``load_tokenizer(None, train_texts=...)``: :class:`WordTokenizer`, fitted on the *training* texts
  only (validation and test words it has not seen become [UNK]), for users without BERT files.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from mmtune.errors import ConfigError, Problem

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["DEFAULT_MAX_VOCAB", "Tokenizer", "WordTokenizer", "encode", "load_tokenizer"]

# With the 3 special ids this stays below the 30522 embeddings of a config-built ``bert`` encoder.
DEFAULT_MAX_VOCAB = 30000
_WORD = re.compile(r"[^\W_]+")  # runs of letters / digits in any script; everything else separates


class WordTokenizer:
    """Lower-cased word-level tokenizer: ids 0 [PAD], 1 [CLS], 2 [UNK], then words, most frequent first.

    Deterministic: words are ranked by training count, ties broken alphabetically. Holds only a
    tuple of words and its index, so it pickles (Ray workers, checkpoints) and compares by value.
    """

    SPECIAL = ("[PAD]", "[CLS]", "[UNK]")
    pad_token_id, cls_token_id, unk_token_id = 0, 1, 2

    def __init__(self, words: Sequence[str]) -> None:
        self.words: tuple[str, ...] = tuple(words)
        if len(set(self.words)) != len(self.words):
            raise ValueError("WordTokenizer words must be unique")
        self._index = {w: i for i, w in enumerate(self.words, start=len(self.SPECIAL))}

    @classmethod
    def fit(cls, texts: Iterable[str], *, max_vocab: int = DEFAULT_MAX_VOCAB) -> WordTokenizer:
        """Keep the ``max_vocab`` most frequent words of ``texts`` (the training split only)."""
        if isinstance(max_vocab, bool) or not isinstance(max_vocab, int) or max_vocab < 1:
            raise ValueError(f"`max_vocab >= 1` must hold, but got {max_vocab=!r}.")
        counts = Counter(w for text in _checked(texts) for w in cls.split(text))
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return cls([w for w, _ in ranked[:max_vocab]])

    @staticmethod
    def split(text: str) -> list[str]:
        return _WORD.findall(text.lower())

    def ids(self, text: str) -> list[int]:
        """[CLS] followed by the word ids of ``text`` (unknown words: [UNK]); not truncated."""
        return [self.cls_token_id, *(self._index.get(w, self.unk_token_id) for w in self.split(text))]

    def __len__(self) -> int:
        """The vocabulary size: every id is below it."""
        return len(self.SPECIAL) + len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and self.words == other.words

    def __hash__(self) -> int:
        return hash(self.words)

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self.words)} words)"


Tokenizer = Union[WordTokenizer, "PreTrainedTokenizerBase"]


def load_tokenizer(path: str | os.PathLike[str] | None, *, train_texts: Iterable[str] | None = None,
                   max_vocab: int = DEFAULT_MAX_VOCAB) -> Tokenizer:
    """The Hugging Face tokenizer in local folder ``path``, or, when ``path`` is None, a
    :class:`WordTokenizer` fitted on ``train_texts`` (required then; ignored with a path)."""
    if path is None:
        if train_texts is None:
            raise ValueError("the built-in tokenizer is fitted on the training texts: pass train_texts "
                             "(or a tokenizer folder as path)")
        return WordTokenizer.fit(train_texts, max_vocab=max_vocab)
    return _load_hf_tokenizer(Path(path))


def encode(tokenizer: Tokenizer, texts: Sequence[str], *, max_len: int) -> np.ndarray:
    """Token ids, int64 ``(len(texts), max_len)``: [CLS] first, truncated to ``max_len``, padded with 0.

    A Hugging Face tokenizer adds its own [CLS] ... [SEP] (the [SEP] is kept when truncating) and
    must pad with id 0; it needs ``max_len`` of at least its number of special tokens (2 for BERT).
    """
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"`max_len >= 1` must hold, but got {max_len=!r}.")
    texts = _checked(texts)
    if isinstance(tokenizer, WordTokenizer):
        out = np.zeros((len(texts), max_len), dtype=np.int64)
        for row, text in zip(out, texts):
            ids = tokenizer.ids(text)[:max_len]
            row[: len(ids)] = ids
        return out
    _check_hf_tokenizer(tokenizer, where=type(tokenizer).__name__)
    specials = tokenizer.num_special_tokens_to_add()
    if max_len < specials:
        raise ValueError(f"`max_len >= {specials}` must hold for {type(tokenizer).__name__}, which adds "
                         f"{specials} special tokens, but got {max_len=}.")
    if not texts:
        return np.zeros((0, max_len), dtype=np.int64)
    ids = tokenizer(texts, max_length=max_len, truncation=True, padding="max_length", padding_side="right",
                    return_tensors="np", return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    ids = np.asarray(ids, dtype=np.int64)
    if not (ids[:, 0] == tokenizer.cls_token_id).all():
        raise ConfigError(Problem("tokenizer", f"{type(tokenizer).__name__} does not put its [CLS] token "
                                  f"(id {tokenizer.cls_token_id}) first; the bert encoder reads the feature there."))
    return ids


def _checked(texts: Iterable[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, got one string")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, not a str (missing text? use '')")
    return texts


def _load_hf_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    expected = "a local Hugging Face tokenizer folder with tokenizer.json or vocab.txt"
    if not path.is_dir():
        raise ConfigError(Problem("tokenizer", f"tokenizer folder not found: {path}; expected {expected}."))
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        raise ConfigError(Problem("tokenizer", f"{path} has neither tokenizer.json nor vocab.txt; "
                                  f"expected {expected}."))
    from transformers import AutoTokenizer, BertTokenizer  # imported here: transformers is slow to import

    # AutoTokenizer needs a config to pick the class; a bare vocab.txt is a BERT WordPiece vocabulary.
    bare_vocab = not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "config.json"))
    try:
        tokenizer = (BertTokenizer if bare_vocab else AutoTokenizer).from_pretrained(path, local_files_only=True)
    except Exception as e:  # unreadable or inconsistent files, whatever transformers raises for them
        raise ConfigError(Problem("tokenizer", f"cannot load a tokenizer from {path}: {type(e).__name__}: {e}")) from e
    _check_hf_tokenizer(tokenizer, where=str(path))
    return tokenizer


def _check_hf_tokenizer(tokenizer: PreTrainedTokenizerBase, *, where: str) -> None:
    problems = []
    if tokenizer.pad_token_id != 0:
        problems.append(f"pads with id {tokenizer.pad_token_id}, but the bert encoder treats id 0 as padding")
    if tokenizer.cls_token_id is None:
        problems.append("has no [CLS] token to put first")
    if problems:
        raise ConfigError(Problem("tokenizer", f"the tokenizer of {where} {' and '.join(problems)}; "
                                  "use a BERT tokenizer ([PAD] = 0, [CLS])."))
