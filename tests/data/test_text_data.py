"""Tokenization for text modalities: the built-in word tokenizer, local Hugging Face tokenizers,
``encode``'s layout ([CLS] first, truncated, padded with 0) and the error paths."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mmtune.data.text import DEFAULT_MAX_VOCAB, WordTokenizer, encode, load_tokenizer
from mmtune.errors import ConfigError

TRAIN = ["The cat sat on the mat.", "the DOG sat; the cat ran!", "A dog's day_out #2"]
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "dog", "##s", "."]


def test_word_tokenizer_ranks_words_by_training_count_then_alphabet() -> None:
    tok = load_tokenizer(None, train_texts=TRAIN)
    # the: 4; cat, dog, sat: 2; then the words seen once, alphabetically ('day_out' splits at '_')
    assert tok.words[:4] == ("the", "cat", "dog", "sat")
    assert tok.words[4:] == ("2", "a", "day", "mat", "on", "out", "ran", "s")
    assert len(tok) == 3 + 12 and WordTokenizer.SPECIAL == ("[PAD]", "[CLS]", "[UNK]")
    assert tok.ids("THE cat, zebra") == [1, 3, 4, 2]  # [CLS] the cat [UNK]
    assert load_tokenizer(None, train_texts=list(reversed(TRAIN))) == tok  # order of texts does not matter
    small = WordTokenizer.fit(TRAIN, max_vocab=2)
    assert small.words == ("the", "cat") and small.ids("dog the") == [1, 2, 3]


def test_word_tokenizer_pickles_and_handles_any_script() -> None:
    tok = WordTokenizer.fit(["Café über naïve 東京", "café"])
    assert tok.words[0] == "café" and "東京" in tok.words
    again = pickle.loads(pickle.dumps(tok))
    assert again == tok and again.ids("CAFÉ 東京") == tok.ids("CAFÉ 東京")


def test_encode_with_word_tokenizer() -> None:
    tok = WordTokenizer.fit(TRAIN)
    ids = encode(tok, ["the cat sat on the mat", "dog", ""], max_len=4)
    assert ids.dtype == np.int64 and ids.shape == (3, 4)
    assert ids.tolist() == [[1, 3, 4, 6], [1, 5, 0, 0], [1, 0, 0, 0]]
    assert encode(tok, [], max_len=4).shape == (0, 4)


def test_bad_arguments_are_explained() -> None:
    tok = WordTokenizer.fit(TRAIN)
    with pytest.raises(ValueError, match="max_len >= 1"):
        encode(tok, ["x"], max_len=0)
    with pytest.raises(TypeError, match="one string"):
        encode(tok, "the cat", max_len=4)
    with pytest.raises(TypeError, match=r"texts\[1\] is a float"):
        encode(tok, ["ok", float("nan")], max_len=4)
    with pytest.raises(ValueError, match="max_vocab >= 1"):
        WordTokenizer.fit(TRAIN, max_vocab=0)
    with pytest.raises(ValueError, match="train_texts"):
        load_tokenizer(None)
    assert DEFAULT_MAX_VOCAB + 3 <= 30522  # fits a config-built bert encoder's embeddings


# ----------------------------------------------------------------------------- Hugging Face folders


def write_vocab(folder, words=BERT_VOCAB):
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return folder


@pytest.mark.parametrize("saved", [False, True], ids=["bare-vocab.txt", "save_pretrained"])
def test_local_bert_tokenizer(tmp_path, saved: bool) -> None:
    path = write_vocab(tmp_path / "tok")
    if saved:
        from transformers import BertTokenizer

        out = tmp_path / "saved"
        BertTokenizer.from_pretrained(path, local_files_only=True).save_pretrained(out)
        assert (out / "tokenizer.json").is_file()
        path = out
    tok = load_tokenizer(str(path), train_texts=["ignored"])
    ids = encode(tok, ["The cats sat", "on the mat on the mat", "zebra"], max_len=6)
    assert ids.dtype == np.int64
    # [CLS] the cat ##s sat [SEP] / truncated, [SEP] kept / unknown word, then [PAD] = 0
    assert ids.tolist() == [[2, 5, 6, 11, 7, 3], [2, 8, 5, 9, 8, 3], [2, 1, 3, 0, 0, 0]]
    assert pickle.loads(pickle.dumps(tok))(["the cat"]).input_ids == tok(["the cat"]).input_ids
    with pytest.raises(ValueError, match="max_len >= 2"):
        encode(tok, ["the"], max_len=1)


def test_tokenizer_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not found.*nope.*vocab.txt"):
        load_tokenizer(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty has neither tokenizer.json nor vocab.txt"):
        load_tokenizer(tmp_path / "empty")
    broken = write_vocab(tmp_path / "broken")
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot load a tokenizer from .*broken"):
        load_tokenizer(broken)
    pad_last = write_vocab(tmp_path / "pad_last", BERT_VOCAB[1:] + ["[PAD]"])
    with pytest.raises(ConfigError, match="pads with id 12"):
        load_tokenizer(pad_last)


def test_local_folder_feeds_a_local_bert_encoder(tmp_path) -> None:
    """One folder, as a user would have it: vocab.txt + tokenizer files + weights, ids into the encoder."""
    from transformers import BertConfig, BertModel

    import mmtune.models.text  # noqa: F401  registers "bert"
    from mmtune.models.encoders import build_encoder

    path = write_vocab(tmp_path / "bert")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=16)).save_pretrained(path)
    ids = torch.from_numpy(encode(load_tokenizer(path), ["the cat sat", "dogs"], max_len=8))
    enc = build_encoder("bert", input_shape=(8,), weights=path).eval()
    with torch.no_grad():
        assert enc(ids).shape == (2, 8)
    # The built-in tokenizer's ids (15 of them) do not fit this model's 13 embeddings: an error, not an assert.
    words = torch.from_numpy(encode(WordTokenizer.fit(TRAIN), ["the dog's"], max_len=8))
    with pytest.raises(ValueError, match=r"\[0, 13\).*\[0, 14\]"):
        enc(words)
