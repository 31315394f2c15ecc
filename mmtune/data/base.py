"""What the training loop consumes: batches of named modality tensors.

A dataset is a :class:`MultimodalData`: three disjoint splits (train / val / test), the modality
names, the number of classes and each modality's per-sample input shape. In-memory datasets (the
synthetic default, cached real datasets) hold each split as whole tensors on the training device
and batch by indexing, so the hot path has no DataLoader, no worker processes and no host copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Batch", "MultimodalData", "TensorSplit"]


@dataclass
class Batch:
    """One mini-batch. ``drop`` holds per-sample keep weights per modality, set by OPM-style methods:
    0 drops the sample's feature of that modality, 1 keeps it (other values rescale a kept feature)."""

    inputs: dict[str, Tensor]
    labels: Tensor
    drop: dict[str, Tensor] | None = None
    # Encoder outputs a method already computed in before_forward (with grad), reused by the forward
    # pass instead of encoding again (e.g. OPM's code timing scores the batch before dropping in it).
    features: dict[str, Tensor] | None = None
    # Positions of the rows in the sequence the pass iterates (the split, or a method's epoch_indices),
    # on the batch's device: lets a method tell its re-sampled copies apart.
    index: Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]


@dataclass
class TensorSplit:
    """A split held as whole tensors: ``inputs[m]`` is (N, *shape_m), ``labels`` is (N,) int64."""

    inputs: dict[str, Tensor]
    labels: Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.labels.device

    def subset(self, index: Tensor) -> TensorSplit:
        """The samples at ``index`` (1-D integer tensor, any device), in that order. Methods that pass over
        part of a split (PMR's prototypes, G-Blending's held-out samples) use this and :meth:`batches`,
        which every split type has (the prepared real-dataset cache's too), never ``inputs``/``labels``."""
        index = index.to(self.labels.device)
        return TensorSplit({m: x.index_select(0, index) for m, x in self.inputs.items()}, self.labels.index_select(0, index))

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit({m: x.to(device) for m, x in self.inputs.items()}, self.labels.to(device))

    def select(self, modalities: list[str]) -> TensorSplit:
        return TensorSplit({m: self.inputs[m] for m in modalities}, self.labels)

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None) -> Iterator[Batch]:
        """Shuffled batches when ``generator`` is given (training), in order otherwise (evaluation).

        The permutation is drawn on the CPU from ``generator`` so that the same seed gives the same
        order on every device; it is moved to the data's device once per epoch.
        """
        n = len(self)
        if generator is None:
            for start in range(0, n, batch_size):
                end = min(start + batch_size, n)
                yield Batch({m: x[start:end] for m, x in self.inputs.items()}, self.labels[start:end],
                            index=torch.arange(start, end, device=self.labels.device))
            return
        order = torch.randperm(n, generator=generator).to(self.labels.device, non_blocking=True)
        for idx in order.split(batch_size):
            yield Batch({m: x.index_select(0, idx) for m, x in self.inputs.items()}, self.labels.index_select(0, idx), index=idx)


@dataclass
class MultimodalData:
    """Three disjoint splits plus what models need to be built for them."""

    train: TensorSplit
    val: TensorSplit
    test: TensorSplit
    modalities: list[str]
    num_classes: int
    input_shapes: dict[str, tuple[int, ...]]
    info: dict[str, object] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> MultimodalData:
        return MultimodalData(
            self.train.to(device), self.val.to(device), self.test.to(device),
            list(self.modalities), self.num_classes, dict(self.input_shapes), dict(self.info),
        )

    def select(self, modalities: list[str]) -> MultimodalData:
        """The same data restricted to ``modalities`` (the uni-modal baseline trains on one)."""
        return MultimodalData(
            self.train.select(modalities), self.val.select(modalities), self.test.select(modalities),
            list(modalities), self.num_classes, {m: self.input_shapes[m] for m in modalities}, dict(self.info),
        )

    def split(self, name: str) -> TensorSplit:
        return {"train": self.train, "val": self.val, "test": self.test}[name]
