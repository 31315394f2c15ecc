"""Mask units: how a layer's weights split into the units a balancing method keeps or drops.

AMSS (Yang et al., TPAMI 2025, App. C.2) updates a sampled part of each modality's subnetwork,
unit by unit: the output channels of a convolution, the heads of a multi-head attention (the Q, K, V
rows of a head and its columns of the output projection: M = 4 matrices), the output rows of a
linear layer, or single weights (``unit="element"``). Which layers an encoder has, and how they
split, is the encoder's knowledge, not the method's: every :class:`~mmtune.models.encoders.Encoder`
answers :meth:`~mmtune.models.encoders.Encoder.mask_units` (the base class recognises linear,
convolution and ``nn.MultiheadAttention`` layers of its blocks; ResNet-18 restricts itself to its
residual branches and BERT declares its own attention heads), and a fusion answers
``Fusion.mask_units(modality)`` for the classifier part a modality owns.

A :class:`MaskLayer` is one layer l with C_l units; each of its :class:`MaskPiece` is one parameter
(or a column block of one) viewed so that one axis is the unit axis.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn

__all__ = ["CONVS", "MaskLayer", "MaskPiece", "attention_heads", "column_layer", "module_layers", "param_layer",
           "weight_modules"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class MaskPiece:
    """One parameter of a mask layer: its gradient viewed as ``shape``, the unit axis kept by ``reduce``."""

    param: nn.Parameter
    shape: tuple[int, ...]  # view of the (squared) gradient
    reduce: tuple[int, ...]  # axes summed to get one value per unit (empty: elements)
    mask_shape: tuple[int, ...]  # the (C,) unit mask viewed to broadcast over ``shape``
    columns: tuple[int, int] | None = None  # only param[:, start:stop] (a modality's block of a shared head)

    def of(self, tensor: Tensor) -> Tensor:
        """This piece of a gradient-shaped tensor, as ``shape`` (a strided view for column blocks)."""
        if self.columns is not None:
            return tensor[:, self.columns[0]: self.columns[1]]
        return tensor if tensor.shape == self.shape else tensor.view(self.shape)

    def masked(self, tensor: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """(target, factor) to mask a gradient-shaped ``tensor`` in place by this piece's (C,) unit ``mask``:
        ``target.mul_(factor)`` multiplies each unit's (or element's) values by its mask entry.

        Usually ``(self.of(tensor), mask viewed as mask_shape)``. A channels_last convolution weight's
        gradient (``train.channels_last``) has no view as ``shape``; it is masked in its own shape, its
        elements in logical order, the order in which :func:`trainables.amss.unit_fisher` reads its square.
        """
        if self.columns is not None or tensor.shape == self.shape or tensor.is_contiguous():
            return self.of(tensor), mask.view(self.mask_shape)
        if self.reduce == (1,) and len(self.shape) == 2:  # rows: one entry per output channel
            return tensor, mask.view(-1, *[1] * (tensor.dim() - 1))
        return tensor, mask.view(self.mask_shape).expand(self.shape).reshape(tensor.shape)


@dataclass(frozen=True)
class MaskLayer:
    """A layer l of a modality's subnetwork with C_l = ``units`` mask units (AMSS App. C.2).

    ``modality`` is the modality's index in the method's order (-1 until the model assigns it).
    """

    modality: int
    units: int
    kind: str  # channels | heads | rows | elements
    pieces: tuple[MaskPiece, ...]


def _rows(param: nn.Parameter) -> MaskPiece:
    out = param.shape[0]
    return MaskPiece(param, (out, param.numel() // out), (1,), (out, 1))


def _elements(param: nn.Parameter) -> MaskPiece:
    return MaskPiece(param, (param.numel(),), (), (param.numel(),))


def param_layer(param: nn.Parameter, unit: str, kind: str, modality: int = -1) -> MaskLayer:
    """A weight whose units are its output rows/channels (dim 0), or its elements."""
    if unit == "element":
        return MaskLayer(modality, param.numel(), "elements", (_elements(param),))
    return MaskLayer(modality, param.shape[0], kind, (_rows(param),))


def column_layer(param: nn.Parameter, start: int, stop: int, unit: str, modality: int = -1) -> MaskLayer:
    """Columns [start, stop) of a shared (out, in) weight: ``out`` row units, or its elements."""
    out, width = param.shape[0], stop - start
    if unit == "element":
        return MaskLayer(modality, out * width, "elements", (MaskPiece(param, (out, width), (), (out, width), (start, stop)),))
    return MaskLayer(modality, out, "rows", (MaskPiece(param, (out, width), (1,), (out, 1), (start, stop)),))


def attention_heads(mha: nn.MultiheadAttention, unit: str) -> list[MaskLayer]:
    """``nn.MultiheadAttention``: one layer of ``num_heads`` units (rows of [Q; K; V] and columns of the
    output projection, split by head), or one element layer per projection."""
    if unit == "element":
        params = [p for p in (mha.in_proj_weight, mha.q_proj_weight, mha.k_proj_weight,
                              mha.v_proj_weight, mha.out_proj.weight) if p is not None]
        return [MaskLayer(-1, p.numel(), "elements", (_elements(p),)) for p in params]
    heads, head_dim, dim = mha.num_heads, mha.head_dim, mha.embed_dim
    pieces = []
    if mha.in_proj_weight is not None:  # rows [Q; K; V], each split by head
        pieces.append(MaskPiece(mha.in_proj_weight, (3, heads, head_dim, dim), (0, 2, 3), (1, heads, 1, 1)))
    else:
        for w in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight):
            pieces.append(MaskPiece(w, (heads, head_dim, w.shape[1]), (1, 2), (heads, 1, 1)))
    out = mha.out_proj.weight  # columns split by head
    pieces.append(MaskPiece(out, (out.shape[0], heads, head_dim), (0, 2), (1, heads, 1)))
    return [MaskLayer(-1, heads, "heads", tuple(pieces))]


def head_split_attention(query: nn.Linear, key: nn.Linear, value: nn.Linear, output: nn.Linear,
                         heads: int, head_dim: int, unit: str) -> list[MaskLayer]:
    """An attention written as four linear layers (BERT's): the Q, K, V rows and output columns of each head."""
    weights = [query.weight, key.weight, value.weight, output.weight]
    if unit == "element":
        return [MaskLayer(-1, w.numel(), "elements", (_elements(w),)) for w in weights]
    pieces = [MaskPiece(w, (heads, head_dim, w.shape[1]), (1, 2), (heads, 1, 1)) for w in weights[:3]]
    dense = output.weight
    pieces.append(MaskPiece(dense, (dense.shape[0], heads, head_dim), (0, 2), (1, heads, 1)))
    return [MaskLayer(-1, heads, "heads", tuple(pieces))]


def weight_modules(block: nn.Module) -> list[nn.Module]:
    """Linear, convolution and ``nn.MultiheadAttention`` modules of a block, in module order
    (an attention's own output projection belongs to its head layer, not to a linear layer)."""
    found, inside_attention = [], set()
    for module in block.modules():
        if id(module) in inside_attention:
            continue
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.add(id(module.out_proj))
            found.append(module)
        elif isinstance(module, (nn.Linear, *CONVS)):
            found.append(module)
    return found


def module_layers(modules: Iterable[nn.Module], unit: str) -> list[MaskLayer]:
    """The mask layers of linear (rows), convolution (output channels) and attention (heads) modules."""
    layers: list[MaskLayer] = []
    for module in modules:
        if isinstance(module, nn.MultiheadAttention):
            layers.extend(attention_heads(module, unit))
        else:
            layers.append(param_layer(module.weight, unit, "channels" if isinstance(module, CONVS) else "rows"))
    return layers
