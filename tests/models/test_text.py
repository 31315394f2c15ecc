"""The ``bert`` text encoder: the depth-block contract on token ids, padding, equality with
``transformers.BertModel``, local weights, errors, and a text + image model that trains."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

import mmtune.models.text  # noqa: F401  registers "bert"
from mmtune.errors import ConfigError
from mmtune.models import ModelConfig, build_model
from mmtune.models.encoders import build_encoder, list_encoders
from mmtune.models.text import BERT_VOCAB_SIZE, BertEncoder

L, B, VOCAB = 12, 4, 50
SMALL = dict(hidden_dim=16, num_layers=3)


def make(seq_len: int = L, seed: int = 0, vocab_size: int = VOCAB) -> BertEncoder:
    torch.manual_seed(seed)
    return BertEncoder(input_shape=(seq_len,), vocab_size=vocab_size, **SMALL).eval()


def token_ids(n: int = B, seq_len: int = L, lengths: tuple[int, ...] = (12, 7, 3, 1), seed: int = 1) -> torch.Tensor:
    """[CLS]-first rows (id 1) of the given lengths, padded with 0."""
    ids = torch.randint(3, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 1
    for row, length in zip(ids, lengths):
        row[length:] = 0
    return ids


def reference(enc: BertEncoder) -> BertModel:
    """A plain BertModel sharing the encoder's parameters."""
    ref = BertModel(enc.config, add_pooling_layer=False).eval()
    ref.embeddings = enc.blocks[0].embeddings
    ref.encoder.layer = torch.nn.ModuleList(block.layer for block in enc.blocks)
    return ref


def test_registered_and_built_from_config() -> None:
    assert "bert" in list_encoders()
    enc = build_encoder("bert", input_shape=(L,), **SMALL)
    assert isinstance(enc, BertEncoder) and enc.vocab_size == BERT_VOCAB_SIZE and enc.max_len == L
    assert len(enc.blocks) == 3 and enc.block_dims == [16] * 3 and enc.out_dim == 16
    c = enc.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (16, 3, 4, 64)
    assert build_encoder("bert", input_shape=(L,), hidden_dim=6, num_layers=1).config.num_attention_heads == 2
    # one state_dict key per tensor: the BertModel is not kept beside the blocks
    assert all(k.startswith("blocks.") for k in enc.state_dict())


def test_depth_block_contract_and_continuing_from_any_depth() -> None:
    enc, x = make(), token_ids()
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (B, 16) and torch.equal(out, enc.pool(enc.forward_blocks(x)))
        assert torch.equal(enc.forward_blocks(x, upto=0), x)
        h = x
        for d, block in enumerate(enc.blocks, start=1):
            h = block(h)
            h_d = enc.forward_blocks(x, upto=d)
            assert torch.equal(h, h_d) and h_d.shape == (B, L, 16 + 1)
            assert enc.pool_intermediate(h_d, d).shape == (B, 16)
            rest = h_d
            for later in enc.blocks[d:]:  # AIM: finish the pass from h_d
                rest = later(rest)
            assert torch.equal(enc.pool(rest), out)
        assert torch.equal(enc.pool(h), out)


def test_equals_transformers_bert_cls_state() -> None:
    enc, x = make(), token_ids()
    with torch.no_grad():
        want = reference(enc)(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state[:, 0]
        torch.testing.assert_close(enc(x), want, atol=1e-6, rtol=0)


def test_padding_changes_nothing_at_any_depth() -> None:
    short, long = make(), make(seq_len=L + 5)
    with torch.no_grad():
        for p, q in zip(short.parameters(), long.parameters(), strict=True):
            q[: p.shape[0]] = p  # the same weights; position embeddings: the first L rows
    x = token_ids()
    padded = torch.cat([x, torch.zeros(B, 5, dtype=x.dtype)], 1)
    with torch.no_grad():
        # the mask reaches every layer: without it at depth d the [CLS] state would see the padding
        for d in range(1, 4):
            torch.testing.assert_close(long.pool_intermediate(long.forward_blocks(padded, d), d),
                                       short.pool_intermediate(short.forward_blocks(x, d), d), atol=1e-6, rtol=0)
        changed = x.clone()
        changed[2, 5] = 7  # a real token where row 2 had padding changes row 2 only
        assert not torch.allclose(short(changed)[2], short(x)[2])
        torch.testing.assert_close(short(changed)[[0, 1, 3]], short(x)[[0, 1, 3]], atol=1e-6, rtol=0)


def test_shorter_input_and_all_padding_row() -> None:
    enc = make()
    with torch.no_grad():
        assert enc(token_ids(seq_len=5, lengths=(5, 2, 1, 1))).shape == (B, 16)
        assert torch.isfinite(enc(torch.zeros(2, L, dtype=torch.long))).all()


def test_same_seed_same_encoder_and_gradients_reach_every_parameter() -> None:
    a, b = make(), make()
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    a.train()
    a(token_ids()).sum().backward()
    assert not [n for n, p in a.named_parameters() if p.grad is None]
    assert all(torch.isfinite(p.grad).all() for p in a.parameters())


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap fallbacks (CPU attention)
def test_per_sample_gradients_under_vmap() -> None:
    # AMSS's Fisher importance: vmap(grad(...)) over the batch, through the whole encoder.
    from torch.func import functional_call, grad, vmap

    enc, x = make(), token_ids()
    params = {n: p.detach() for n, p in enc.named_parameters()}
    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor) -> torch.Tensor:
        return functional_call(enc, p, (xi.unsqueeze(0),)).sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x)
    for i in (0, 3):
        enc.zero_grad()
        enc(x[i : i + 1]).sum().backward()
        for n, p in enc.named_parameters():
            torch.testing.assert_close(per_sample[n][i], p.grad, atol=1e-5, rtol=1e-4)


def test_bad_token_ids_are_explained() -> None:
    enc = make()
    with pytest.raises(ValueError, match=r"\[0, 50\).*\[0, 50\]"):
        enc(torch.tensor([[1, 50, 0]]))
    with pytest.raises(ValueError, match="-1"):
        enc(torch.tensor([[1, -1, 0]]))
    with pytest.raises(ValueError, match="integer token ids"):
        enc(torch.rand(2, L))
    with pytest.raises(ValueError, match=f"L <= {L}"):
        enc(torch.ones(2, L + 1, dtype=torch.long))


def test_bad_arguments_are_explained() -> None:
    with pytest.raises(ConfigError, match=r"\(L,\) token-id sequences"):
        build_encoder("bert", input_shape=(4, 8))
    with pytest.raises(ConfigError) as err:
        build_encoder("bert", input_shape=(L,), hidden_dim=0, num_layers=0)
    assert {p.path for p in err.value.problems} == {"hidden_dim", "num_layers"}
    with pytest.raises(ConfigError, match="vocab_size"):
        BertEncoder(input_shape=(L,), vocab_size=1)


# ----------------------------------------------------------------------------- local weights


@pytest.fixture
def bert_folder(tmp_path):
    torch.manual_seed(7)
    config = BertConfig(vocab_size=VOCAB, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=20)
    model = BertModel(config).eval()  # with a pooler: loading must drop it
    model.save_pretrained(tmp_path / "bert")
    return tmp_path / "bert", model


def test_loads_local_weights_and_ignores_size_arguments(bert_folder) -> None:
    path, saved = bert_folder
    enc = build_encoder("bert", input_shape=(L,), hidden_dim=64, num_layers=5, weights=str(path)).eval()
    assert enc.block_dims == [8, 8] and enc.vocab_size == VOCAB and enc.max_len == 20
    assert torch.equal(enc.blocks[1].layer.output.dense.weight, saved.encoder.layer[1].output.dense.weight)
    x = token_ids()
    with torch.no_grad():
        want = saved(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state[:, 0]
        torch.testing.assert_close(enc(x), want, atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="L <= 20"):
        build_encoder("bert", input_shape=(21,), weights=path)


def test_weight_errors_name_the_path(bert_folder, tmp_path) -> None:
    path, _ = bert_folder
    with pytest.raises(ConfigError, match="not found.*nope.*config.json"):
        build_encoder("bert", input_shape=(L,), weights=tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="empty lacks config.json and a weights file"):
        build_encoder("bert", input_shape=(L,), weights=empty)
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot load a BERT model from .*bert"):
        build_encoder("bert", input_shape=(L,), weights=path)
    (path / "config.json").write_text('{"model_type": "roberta"}')
    with pytest.raises(ConfigError, match="'roberta' model"):
        build_encoder("bert", input_shape=(L,), weights=path)


# ----------------------------------------------------------------------------- in a multimodal model


def test_text_and_image_model_trains() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="cnn", backbones={"text": "bert"}, hidden_dim=16, num_layers=2)
    model = build_model(cfg, input_shapes={"text": (L,), "image": (3, 16, 16)}, num_classes=3)
    assert [len(model.depth_blocks(m)) for m in model.modalities] == [2, 2]
    g = torch.Generator().manual_seed(0)
    inputs = {"text": token_ids(n=8, lengths=(12, 9, 7, 5, 4, 3, 2, 1)),
              "image": torch.randn(8, 3, 16, 16, generator=g)}
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        out = model(inputs)
        loss = torch.nn.functional.cross_entropy(out.logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert out.features["text"].shape == (8, 16) and losses[-1] < 0.5 * losses[0]
    assert set(model.unimodal_logits(out.features)) == {"text", "image"}
