"""Per-modality encoders, each split into D sequential depth blocks.

An encoder maps one modality's input ``(B, *input_shape)`` to a feature vector ``(B, out_dim)``. Its
trainable layers live in ``blocks``, an ``nn.ModuleList`` of D >= 1 *depth blocks* run in order::

    h_0 = fold(x)                    # input reshaping only (frame folding, token view); no parameters
    h_d = blocks[d - 1](h_{d - 1})   # d = 1..D
    forward(x) == pool(h_D)

``forward_blocks(x, upto=d)`` returns ``h_d`` (``upto=0`` gives ``h_0``, ``None`` gives ``h_D``) and
``pool_intermediate(h_d, d)`` reduces it to ``(B, block_dims[d - 1])`` by a global average over the
spatial / sequence dimensions (identity for vectors), so a depth-wise balancing method such as AIM can
read features at, or continue the forward pass from, any depth.

Frame folding: the 2-D conv encoders (``cnn``, ``resnet18``) take an image ``(C, H, W)`` or a frame
stack ``(T, C, H, W)``. A stack is folded into the batch, ``(B, T, C, H, W) -> (B*T, C, H, W)``, so
every frame goes through the same 2-D network and every block sees a plain image batch; pooling then
averages over H, W and afterwards over the T frames of each sample (the OGM-GE recipe for video).
Intermediate ``h_d`` of a frame encoder therefore has batch size ``B*T``.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import torch
from torch import Tensor, nn

from mmtune.errors import ConfigError, Problem, unknown_name_message
from mmtune.models.units import CONVS, MaskLayer, module_layers, weight_modules

__all__ = [
    "ENCODERS",
    "CNNEncoder",
    "Encoder",
    "MLPEncoder",
    "ResNet18Encoder",
    "TransformerEncoder",
    "build_encoder",
    "list_encoders",
    "register_encoder",
]


class Encoder(nn.Module):
    """Base: ``forward(x) == self.pool(self.forward_blocks(x))``.

    Subclasses build ``blocks`` and override ``fold`` (input reshaping) and ``pool_intermediate``.
    """

    # What the input holds: "real" values, or integer "tokens" (ids) that cannot be perturbed or
    # synthesised in input space (methods that do so check this).
    input_kind: str = "real"

    def __init__(self, blocks: Sequence[nn.Module], block_dims: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.block_dims: list[int] = list(block_dims)
        self.out_dim: int = self.block_dims[-1]

    def fold(self, x: Tensor) -> Tensor:
        """Reshape the raw input into what ``blocks[0]`` takes (``h_0``)."""
        return x

    def forward_blocks(self, x: Tensor, upto: int | None = None) -> Tensor:
        """Run ``blocks[0:upto]`` (all when ``None``) on the folded input."""
        h = self.fold(x)
        for block in islice(self.blocks, upto):
            h = block(h)
        return h

    def pool_intermediate(self, h: Tensor, depth: int) -> Tensor:
        """Reduce block ``depth``'s (1-based) output to ``(B, block_dims[depth - 1])``."""
        return h

    def pool(self, h: Tensor) -> Tensor:
        """Reduce the last block's output to ``(B, out_dim)``."""
        return self.pool_intermediate(h, len(self.blocks))

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.forward_blocks(x))

    def mask_units(self, unit: str = "auto") -> list[MaskLayer]:
        """The mask units of the weight layers of every block, in order (AMSS App. C.2; :mod:`mmtune.models.units`).

        ``unit``: ``auto`` (output channels of convolutions, heads of attentions, output rows of
        linear layers) or ``element``. The base class finds the linear, convolution and
        ``nn.MultiheadAttention`` layers of its blocks; an encoder built from other layers (or one
        that masks a narrower set) overrides this.
        """
        return [layer for block in self.blocks for layer in module_layers(weight_modules(block), unit)]


# ----------------------------------------------------------------------------- registry

ENCODERS: dict[str, Callable[..., Encoder]] = {}


def register_encoder(name: str) -> Callable[[Callable[..., Encoder]], Callable[..., Encoder]]:
    """Register a factory ``f(*, input_shape, hidden_dim, num_layers, weights) -> Encoder`` under ``name``."""

    def decorator(factory: Callable[..., Encoder]) -> Callable[..., Encoder]:
        if name in ENCODERS:
            raise ValueError(f"encoder '{name}' is already registered")
        ENCODERS[name] = factory
        return factory

    return decorator


def list_encoders() -> list[str]:
    return sorted(ENCODERS)


def build_encoder(
    name: str,
    *,
    input_shape: tuple[int, ...],
    hidden_dim: int = 128,
    num_layers: int = 2,
    weights: str | os.PathLike[str] | None = None,
) -> Encoder:
    """Build encoder ``name`` for inputs of shape ``(B, *input_shape)``."""
    if name not in ENCODERS:
        raise ConfigError(unknown_name_message("encoder", name, ENCODERS))
    try:
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(Problem("input_shape", f"encoder '{name}' needs a non-empty tuple of positive "
                                  f"ints (batch dim excluded), got {input_shape!r}."))
    return ENCODERS[name](input_shape=shape, hidden_dim=hidden_dim, num_layers=num_layers, weights=weights)


def _shape_error(name: str, shape: tuple[int, ...], accepts: str, why: str = "") -> ConfigError:
    return ConfigError(Problem("input_shape", f"encoder '{name}' cannot take input_shape {shape}{why}; "
                               f"it accepts {accepts} (batch dim excluded)."))


def _check_args(name: str, *, hidden_dim: int | None = None, num_layers: int | None = None,
                max_layers: int | None = None, weights: object = None) -> None:
    """Raise one ConfigError listing every bad size argument, and weights given to an encoder without any."""
    problems = []
    if hidden_dim is not None and hidden_dim < 1:
        problems.append(Problem("hidden_dim", f"encoder '{name}' needs hidden_dim >= 1, got {hidden_dim}."))
    if num_layers is not None and not 1 <= num_layers <= (max_layers or num_layers):
        allowed = f"1..{max_layers}" if max_layers else ">= 1"
        problems.append(Problem("num_layers", f"encoder '{name}' needs num_layers {allowed}, got {num_layers}."))
    if weights is not None:
        problems.append(Problem("weights", f"encoder '{name}' has no pretrained weights to load; "
                                "only 'resnet18' takes weights."))
    if problems:
        raise ConfigError(problems)


# ----------------------------------------------------------------------------- vectors


@register_encoder("mlp")
class MLPEncoder(Encoder):
    """``num_layers`` blocks of ``Linear -> ReLU`` on a ``(d,)`` vector; out_dim = hidden_dim."""

    def __init__(self, *, input_shape: tuple[int, ...], hidden_dim: int = 128, num_layers: int = 2,
                 weights: str | os.PathLike[str] | None = None) -> None:
        if len(input_shape) != 1:
            raise _shape_error("mlp", input_shape, "(d,) feature vectors")
        _check_args("mlp", hidden_dim=hidden_dim, num_layers=num_layers, weights=weights)
        dims = [input_shape[0]] + [hidden_dim] * num_layers
        super().__init__([nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(dims, dims[1:])], dims[1:])


# ----------------------------------------------------------------------------- images / frames

_FRAME_SHAPES = "(C, H, W) images or (T, C, H, W) frame stacks"


def _num_frames(name: str, shape: tuple[int, ...]) -> int | None:
    if len(shape) not in (3, 4):
        raise _shape_error(name, shape, _FRAME_SHAPES)
    return shape[0] if len(shape) == 4 else None


class _FrameEncoder(Encoder):
    """2-D conv encoder over images or folded frame stacks, pooled by global average (then over frames)."""

    def __init__(self, blocks: Sequence[nn.Module], block_dims: Sequence[int], num_frames: int | None) -> None:
        super().__init__(blocks, block_dims)
        self.num_frames = num_frames  # None: (C, H, W) input, no frame axis
        self.channels_last = False  # see use_channels_last

    def use_channels_last(self) -> None:
        """Hold the convolution weights, and the (B·T, C, H, W) input of ``blocks[0]``, as channels_last."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True

    def fold(self, x: Tensor) -> Tensor:
        if self.num_frames is not None:
            if x.dim() != 5 or x.shape[1] != self.num_frames:
                raise ValueError(f"expected input (B, {self.num_frames}, C, H, W), got {tuple(x.shape)}")
            x = x.flatten(0, 1)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def pool_intermediate(self, h: Tensor, depth: int) -> Tensor:
        h = h.mean((-2, -1))
        return h if self.num_frames is None else h.unflatten(0, (-1, self.num_frames)).mean(1)


@register_encoder("cnn")
class CNNEncoder(_FrameEncoder):
    """``num_layers`` (1..6) blocks of ``Conv3x3/s2 -> BN -> ReLU`` with 32, 64, 128, ... channels."""

    def __init__(self, *, input_shape: tuple[int, ...], hidden_dim: int = 128, num_layers: int = 2,
                 weights: str | os.PathLike[str] | None = None) -> None:
        num_frames = _num_frames("cnn", input_shape)
        _check_args("cnn", num_layers=num_layers, max_layers=6, weights=weights)
        chans = [input_shape[-3]] + [32 * 2**i for i in range(num_layers)]
        blocks = [
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU())
            for a, b in zip(chans, chans[1:])
        ]
        super().__init__(blocks, chans[1:], num_frames)


@register_encoder("resnet18")
class ResNet18Encoder(_FrameEncoder):
    """torchvision ResNet-18, fc removed, conv1 taking C_in channels.

    blocks = [stem (conv1, bn1, relu, maxpool) + layer1, layer2, layer3, layer4].
    """

    def __init__(self, *, input_shape: tuple[int, ...], hidden_dim: int = 128, num_layers: int = 2,
                 weights: str | os.PathLike[str] | None = None) -> None:
        from torchvision.models import resnet18  # imported here: torchvision is slow to import

        num_frames = _num_frames("resnet18", input_shape)
        in_chans = input_shape[-3]
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        net.fc = nn.Identity()
        if weights is not None:
            _load_resnet18(net, Path(weights), in_chans)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        super().__init__([stem, net.layer2, net.layer3, net.layer4], [64, 128, 256, 512], num_frames)

    @property
    def conv1(self) -> nn.Conv2d:
        return self.blocks[0][0]

    def mask_units(self, unit: str = "auto") -> list[MaskLayer]:
        """Only the convolutions of the residual branches (conv1/conv2 of every BasicBlock): not the stem
        convolution, not the downsample projections, not BatchNorm — what the official AMSS code masks
        (``'layer' in name and 'conv' in name``, 4-D)."""
        from torchvision.models.resnet import BasicBlock, Bottleneck

        convs = [child for block in self.blocks for rb in block.modules() if isinstance(rb, (BasicBlock, Bottleneck))
                 for child in rb.children() if isinstance(child, CONVS)]
        return module_layers(convs, unit)


def _load_resnet18(net: nn.Module, path: Path, in_chans: int) -> None:
    """Load a local torchvision resnet18 state_dict into ``net``; drop fc, adapt conv1 to ``in_chans``."""
    if not path.is_file():
        raise ConfigError(Problem("weights", f"resnet18 weights file not found: {path}"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable / non-tensor pickle
        raise ConfigError(Problem("weights", f"cannot read resnet18 weights {path}: {e}")) from e
    if not isinstance(state, dict):
        raise ConfigError(Problem("weights", f"{path} holds a {type(state).__name__}, not a state_dict."))
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    w = state.get("conv1.weight")
    if isinstance(w, Tensor) and w.dim() == 4 and w.shape[1] != in_chans:
        state["conv1.weight"] = w.mean(1, keepdim=True).repeat(1, in_chans, 1, 1)
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise ConfigError(Problem("weights", f"{path} is not a torchvision resnet18 state_dict: {e}")) from e


# ----------------------------------------------------------------------------- sequences


class _TokenEmbedding(nn.Module):
    """Project tokens to the model width and add a learned positional embedding."""

    def __init__(self, d_in: int, dim: int, max_len: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(torch.randn(1, max_len, dim) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x) + self.pos[:, : x.shape[1]]


@register_encoder("transformer")
class TransformerEncoder(Encoder):
    """Pre-norm transformer over ``(L, d_in)`` tokens, mean-pooled over L.

    A flat ``(d,)`` input is viewed as 8 tokens of ``d/8`` features.
    """

    FLAT_TOKENS = 8

    def __init__(self, *, input_shape: tuple[int, ...], hidden_dim: int = 128, num_layers: int = 2,
                 weights: str | os.PathLike[str] | None = None) -> None:
        accepts = f"(L, d_in) sequences or flat (d,) vectors with d divisible by {self.FLAT_TOKENS}"
        if len(input_shape) == 1:
            if input_shape[0] % self.FLAT_TOKENS:
                why = f" (a flat input is viewed as {self.FLAT_TOKENS} tokens of d/{self.FLAT_TOKENS} features)"
                raise _shape_error("transformer", input_shape, accepts, why)
            seq_len, d_in = self.FLAT_TOKENS, input_shape[0] // self.FLAT_TOKENS
        elif len(input_shape) == 2:
            seq_len, d_in = input_shape
        else:
            raise _shape_error("transformer", input_shape, accepts)
        _check_args("transformer", hidden_dim=hidden_dim, num_layers=num_layers, weights=weights)
        nhead = next(h for h in (4, 2, 1) if hidden_dim % h == 0)

        def layer() -> nn.TransformerEncoderLayer:
            return nn.TransformerEncoderLayer(hidden_dim, nhead, dim_feedforward=2 * hidden_dim, dropout=0.0,
                                              batch_first=True, norm_first=True)

        blocks = [nn.Sequential(_TokenEmbedding(d_in, hidden_dim, seq_len), layer())]
        blocks += [layer() for _ in range(num_layers - 1)]
        super().__init__(blocks, [hidden_dim] * num_layers)
        self.flat = len(input_shape) == 1

    def fold(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.FLAT_TOKENS, -1)) if self.flat else x

    def pool_intermediate(self, h: Tensor, depth: int) -> Tensor:
        return h.mean(1)
