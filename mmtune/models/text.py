"""BERT text encoder (``bert``): token ids in, the [CLS] hidden state out, split into depth blocks.

Input: one modality tensor of token ids, ``(B, L)`` int64 (per-sample ``input_shape = (L,)``), as
:func:`mmtune.data.text.encode` writes them: [CLS] first, then the text, then padding. **Id 0 is
padding**: the attention mask is ``ids != 0``, so padded positions are never attended to and
appending padding does not change the feature. Position 0 is always attended, so a row of padding
only gives a finite (meaningless) feature instead of NaN.

Output: the last layer's hidden state at position 0, the [CLS] token: the feature the text–image
balancing papers classify. There is no pooler dense layer (``add_pooling_layer=False``).

Weights:

* ``weights=None``: a fresh ``transformers.BertModel`` built from a ``BertConfig`` with
  ``hidden_size = hidden_dim``, ``num_hidden_layers = num_layers``, 4, 2 or 1 heads (the first that
  divides ``hidden_dim``, as for ``transformer``), ``intermediate_size = 4 * hidden_dim``,
  ``max_position_embeddings = L`` and no dropout (like ``transformer``). ``vocab_size`` is
  :data:`BERT_VOCAB_SIZE` (30522, bert-base-uncased's vocabulary), which covers the built-in word
  tokenizer at its default size and any BERT-uncased ``vocab.txt``; the constructor takes another.
* ``weights=<folder>``: a local Hugging Face BERT folder (``config.json`` plus ``model.safetensors`` or
  ``pytorch_model.bin``), loaded with ``local_files_only=True``. Width, depth, vocabulary and dropout
  come from its config; ``hidden_dim`` and ``num_layers`` are ignored. Tokenize with the same folder
  (:func:`mmtune.data.text.load_tokenizer`), or ids will not mean what the weights learnt.

A token id outside ``[0, vocab_size)`` raises a ValueError naming the range (checked in ``fold``
before the embedding lookup). On CUDA the check is an asynchronous device assertion with the same
message, so it costs no host sync per batch (the error then surfaces at the next synchronisation).

Depth blocks (D = number of encoder layers): block 1 = embeddings + layer 0, block d = layer d - 1.
Blocks pass one tensor, so the attention mask travels *inside* it::

    h_0 = ids                                  (B, L) int64
    h_d = [hidden states | keep]               (B, L, hidden + 1) float, d = 1..D

The last channel of every ``h_d`` is the mask (1.0 = token, 0.0 = padding): each block reads it to
mask its attention and writes it back unchanged. A block is thus a function of ``h_{d-1}`` alone,
which is what AIM needs to re-run a block on a captured input or to continue the forward pass from
``h_d``. ``pool_intermediate(h_d, d)`` is the [CLS] hidden state at depth d, ``(B, hidden)`` (the mask
channel dropped). AIM's ``depth_features: flat`` flattens ``h_d`` with that channel included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from mmtune.errors import ConfigError, Problem
from mmtune.models.encoders import Encoder, _check_args, _shape_error, register_encoder
from mmtune.models.units import MaskLayer, head_split_attention, module_layers

__all__ = ["BERT_VOCAB_SIZE", "PAD_ID", "BertEncoder"]

BERT_VOCAB_SIZE = 30522  # bert-base-uncased
PAD_ID = 0  # BERT's [PAD]; the built-in word tokenizer pads with 0 too
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                 "pytorch_model.bin", "pytorch_model.bin.index.json")
_ATTENTION = "sdpa"  # the blocks pass a boolean key mask, the form torch's scaled_dot_product_attention takes


def _split(h: Tensor) -> tuple[Tensor, Tensor]:
    """``h_d`` -> hidden states (B, L, hidden) and the boolean key mask (B, 1, 1, L) the attention takes."""
    return h[..., :-1], (h[..., -1] > 0.5)[:, None, None, :]


def _join(hidden: Tensor, mask: Tensor) -> Tensor:
    return torch.cat([hidden, mask[:, 0, 0, :, None].to(hidden.dtype)], dim=-1)


class _EmbedAndLayer(nn.Module):
    """Block 1: token ids -> embeddings -> encoder layer 0; builds the mask channel."""

    def __init__(self, embeddings: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.layer = layer

    def forward(self, ids: Tensor) -> Tensor:
        keep = ids != PAD_ID
        keep = torch.cat([torch.ones_like(keep[:, :1]), keep[:, 1:]], dim=1)  # position 0 always attended
        mask = keep[:, None, None, :]
        return _join(self.layer(self.embeddings(input_ids=ids), mask), mask)


class _MaskedLayer(nn.Module):
    """Block d >= 2: one encoder layer, masked by the channel its input carries."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: Tensor) -> Tensor:
        hidden, mask = _split(h)
        return _join(self.layer(hidden, mask), mask)


@register_encoder("bert")
class BertEncoder(Encoder):
    """BERT over ``(L,)`` token ids (0 = padding), [CLS]-pooled; see the module docstring."""

    input_kind = "tokens"

    def __init__(self, *, input_shape: tuple[int, ...], hidden_dim: int = 128, num_layers: int = 2,
                 weights: str | os.PathLike[str] | None = None, vocab_size: int = BERT_VOCAB_SIZE) -> None:
        from transformers import BertConfig, BertModel  # imported here: transformers is slow to import

        if len(input_shape) != 1:
            raise _shape_error("bert", input_shape, "(L,) token-id sequences")
        seq_len = input_shape[0]
        if weights is None:
            _check_args("bert", hidden_dim=hidden_dim, num_layers=num_layers)
            if vocab_size < 2:
                raise ConfigError(Problem("vocab_size", f"encoder 'bert' needs vocab_size >= 2 (0 is padding), "
                                          f"got {vocab_size}."))
            config = BertConfig(
                vocab_size=vocab_size, hidden_size=hidden_dim, num_hidden_layers=num_layers,
                num_attention_heads=next(h for h in (4, 2, 1) if hidden_dim % h == 0),
                intermediate_size=4 * hidden_dim, max_position_embeddings=seq_len, pad_token_id=PAD_ID,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=_ATTENTION,
            )
            bert = BertModel(config, add_pooling_layer=False)
        else:
            bert = _load_bert(Path(weights))
            config = bert.config
            if seq_len > config.max_position_embeddings:
                raise _shape_error("bert", input_shape, f"(L,) with L <= {config.max_position_embeddings}",
                                   f" (the model in {weights} has {config.max_position_embeddings} positions)")
        layers = list(bert.encoder.layer)
        blocks = [_EmbedAndLayer(bert.embeddings, layers[0]), *(_MaskedLayer(layer) for layer in layers[1:])]
        super().__init__(blocks, [config.hidden_size] * len(layers))
        # The BertModel itself is not kept as a submodule: its parameters live in the blocks only,
        # so the state_dict has one key per tensor.
        self.config = config
        self.vocab_size: int = config.vocab_size
        self.max_len: int = config.max_position_embeddings

    def fold(self, x: Tensor) -> Tensor:
        if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            raise ValueError(f"encoder 'bert' takes integer token ids (B, L), got a {x.dtype} tensor; "
                             "tokenize the text with mmtune.data.text.encode")
        if x.dim() != 2 or x.shape[1] > self.max_len:
            raise ValueError(f"encoder 'bert' expected token ids (B, L) with L <= {self.max_len}, got {tuple(x.shape)}")
        # Inside torch.func transforms (AMSS's per-sample vmap) a data-dependent `if` cannot run; those
        # passes re-use a batch that an ordinary forward has already checked.
        if x.is_cuda:
            # No host sync per batch on a GPU: an asynchronous device assertion, raised at the next sync.
            torch._assert_async(((x >= 0) & (x < self.vocab_size)).all(),
                                f"token ids must lie in [0, {self.vocab_size}) for encoder 'bert'")
        elif not torch._C._functorch.is_functorch_wrapped_tensor(x):
            lo, hi = torch.aminmax(x)
            if bool((lo < 0) | (hi >= self.vocab_size)):
                raise ValueError(f"token ids must lie in [0, {self.vocab_size}) for encoder 'bert', got ids in "
                                 f"[{int(lo)}, {int(hi)}]: the tokenizer's vocabulary is larger than the model's. "
                                 "Use the tokenizer of the weights folder, or a smaller built-in vocabulary "
                                 "(max_vocab).")
        return x

    def pool_intermediate(self, h: Tensor, depth: int) -> Tensor:
        return h[:, 0, :-1]

    def mask_units(self, unit: str = "auto") -> list[MaskLayer]:
        """BERT's attention heads (Q, K, V rows and output-projection columns per head, AMSS App. C.2) and
        the rows of its feed-forward linear layers, block by block in module order."""
        layers: list[MaskLayer] = []
        for block in self.blocks:
            inside: set[int] = set()
            for module in block.modules():
                if id(module) in inside:
                    continue
                if _is_bert_attention(module):  # its Q, K, V and output projections form one head layer
                    inside.update(id(m) for m in module.modules() if m is not module)
                    a = module.self
                    layers += head_split_attention(a.query, a.key, a.value, module.output.dense,
                                                   a.num_attention_heads, a.attention_head_size, unit)
                elif isinstance(module, nn.Linear):
                    layers += module_layers([module], unit)
        return layers


def _is_bert_attention(module: nn.Module) -> bool:
    """A Hugging Face BERT-style attention (``BertAttention``): ``self.query/key/value`` and ``output.dense``."""
    self_attention, output = getattr(module, "self", None), getattr(module, "output", None)
    return (isinstance(self_attention, nn.Module) and hasattr(self_attention, "num_attention_heads")
            and all(isinstance(getattr(self_attention, n, None), nn.Linear) for n in ("query", "key", "value"))
            and isinstance(getattr(output, "dense", None), nn.Linear))


def _load_bert(path: Path) -> nn.Module:
    """``BertModel.from_pretrained`` on a local folder, every failure a ConfigError naming ``path``."""
    from transformers import BertModel

    expected = f"a local Hugging Face BERT folder with config.json and one of {', '.join(_WEIGHT_FILES)}"
    if not path.is_dir():
        raise ConfigError(Problem("weights", f"bert weights folder not found: {path}; expected {expected}."))
    missing = [] if (path / "config.json").is_file() else ["config.json"]
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        missing.append("a weights file")
    if missing:
        raise ConfigError(Problem("weights", f"{path} lacks {' and '.join(missing)}; expected {expected}."))
    try:
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(Problem("weights", f"cannot read {path / 'config.json'}: {e}")) from e
    if model_type != "bert":
        raise ConfigError(Problem("weights", f"{path} holds a '{model_type}' model; encoder 'bert' loads BERT "
                                  "models only (config.json model_type 'bert')."))
    try:
        bert = BertModel.from_pretrained(path, local_files_only=True, add_pooling_layer=False,
                                         attn_implementation=_ATTENTION)
    except Exception as e:  # unreadable or mismatched weights, whatever transformers raises for them
        raise ConfigError(Problem("weights", f"cannot load a BERT model from {path}: {type(e).__name__}: {e}")) from e
    if bert.config.pad_token_id not in (None, PAD_ID):
        raise ConfigError(Problem("weights", f"{path} pads with id {bert.config.pad_token_id}; encoder 'bert' "
                                  f"treats id {PAD_ID} as padding."))
    return bert
