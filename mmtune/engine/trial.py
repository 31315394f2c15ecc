"""One trial: data, model, method, optimizer and the epoch-by-epoch state (no Ray here).

A trial is described by a plain nested dict — the same shape as one Tune config and one
``mmtune run`` invocation::

    {"method": "ogm", "seed": 0,
     "dataset": {"name": "synthetic", "dominance": 1.5},
     "model": {"backbone": "mlp", "fusion": "concat"},
     "train": {"epochs": 20, "lr": 0.01},
     "params": {"alpha": 0.8}}

:func:`parse_trial_config` validates all of it (every problem at once, with paths).
:class:`Trial` builds everything from it; :meth:`Trial.step` runs one epoch (train, evaluate val and
test) and returns the metrics of DESIGN §3.3. :meth:`Trial.state_dict` holds everything needed to
continue bit-exactly on the CPU: model, optimizer, scheduler, method state, RNG states, epoch and
best-so-far.

Held-out samples: a method may reserve part of the training split (``train_indices``, drawn once
from the trial's seed); the loop never trains on them and the method's hooks see them as
``ctx.holdout``. A method that reserves nothing (the default) trains on the whole split.

Model selection: ``best_*`` and ``*_at_best_val`` follow the best *validation* accuracy (first
epoch on ties). Test metrics are reported every epoch and never select anything.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mmtune.config import MAX_SEED, Record, from_dict, hp, to_dict
from mmtune.data import build_dataset, dataset_config
from mmtune.data.base import TensorSplit
from mmtune.engine.loop import PRECISIONS, evaluate, train_epoch
from mmtune.config import external_name
from mmtune.engine.method import BalancingMethod, MethodConfig, Stage, StepContext, check_stages
from mmtune.engine.optim import OPTIMIZERS, build_optimizer, build_scheduler
from mmtune.engine.probe import probe_metrics
from mmtune.engine.registry import get_method
from mmtune.errors import ConfigError, Problem, did_you_mean, shorten
from mmtune.models import ModelConfig, build_model, use_channels_last

__all__ = ["TrainConfig", "TrialSpec", "Trial", "parse_trial_config", "preflight", "memory_of_machine", "TRIAL_SECTIONS",
           "resolve_device", "resolve_precision", "resolve_channels_last", "compile_encoders", "reserve_holdout"]

TRIAL_SECTIONS = ("method", "label", "seed", "dataset", "model", "train", "params")
# Metrics that measure the machine, not the model: excluded from reproducibility comparisons.
TIMING_KEYS = ("epoch_s", "samples_per_s")
# train.compile: off, on (torch.compile's "default" mode), or a torch.compile mode by name.
COMPILE_MODES = (False, True, "default", "reduce-overhead", "max-autotune")
# Keys that change how a trial runs, not what it computes (up to float rounding): a checkpoint written
# with other values of them loads (a compiled trial's checkpoint in an uncompiled one, a resident cache's
# in a loader's). Section -> keys.
RUNTIME_KEYS: dict[str, tuple[str, ...]] = {"train": ("compile",), "dataset": ("resident",)}


@dataclass(frozen=True)
class TrainConfig(Record):
    epochs: int = hp(20, low=1, doc="epochs (one Tune step each)")
    batch_size: int = hp(64, low=1, doc="training mini-batch size")
    eval_batch_size: int = hp(1024, low=1, doc="evaluation batch size")
    optimizer: str = hp("sgd", choices=OPTIMIZERS, doc="optimizer")
    lr: float = hp(0.01, low=0.0, low_open=True, doc="learning rate")
    momentum: float = hp(0.9, low=0.0, high=1.0, high_open=True, doc="SGD momentum")
    weight_decay: float = hp(1e-4, low=0.0, doc="L2 weight decay")
    lr_step: int | None = hp(None, low=1, doc="decay the LR every lr_step epochs (null: constant)")
    lr_gamma: float = hp(0.1, low=0.0, low_open=True, high=1.0, doc="LR decay factor")
    grad_clip: float | None = hp(None, low=0.0, low_open=True, doc="clip the gradient norm (null: off)")
    probe: bool = hp(False, doc="also report val_probe/<m>, test_probe/<m>: a linear probe per frozen encoder "
                                "(one extra encoder pass over every split per epoch)")
    device: str = hp("auto", choices=("auto", "cpu", "cuda"), doc="auto = cuda when available")
    precision: str = hp("auto", choices=("auto", *PRECISIONS),
                        doc="auto | fp32 | bf16 | fp16: bf16/fp16 run the model's forward pass under autocast (fp16 with "
                            "a GradScaler); loss and method statistics stay fp32. auto: fp32 on CPU; on CUDA bf16 where "
                            "the GPU supports it, else fp16")
    channels_last: bool | str = hp("auto", choices=("auto", True, False),
                                   doc="hold CNN/ResNet encoders and their 4-D inputs in torch.channels_last memory "
                                       "format (faster convolutions on CUDA). auto: on CUDA when an encoder convolves, "
                                       "off on CPU")
    compile: bool | str = hp(False, choices=COMPILE_MODES,
                             doc="torch.compile each encoder in place (true = mode 'default'; or 'reduce-overhead', "
                                 "'max-autotune'). Off by default: compiling costs tens of seconds per trial, more "
                                 "than short trials gain")


@dataclass(frozen=True)
class TrialSpec:
    method: str
    params: MethodConfig
    dataset: Record
    model: ModelConfig
    train: TrainConfig
    seed: int
    label: str = ""  # the variant's name in a sweep (``ogm-ge`` for ogm ge=true); the method's by default

    def to_config(self) -> dict[str, Any]:
        """The plain nested dict this spec was parsed from, with every default filled in."""
        return {
            "method": self.method,
            "label": self.label or self.method,
            "seed": self.seed,
            "dataset": to_dict(self.dataset),
            "model": to_dict(self.model),
            "train": to_dict(self.train),
            "params": to_dict(self.params),
        }


def parse_trial_config(config: Mapping[str, Any], *, method: str | None = None) -> TrialSpec:
    """Validate a trial config; raise :class:`ConfigError` listing every problem with its path."""
    problems: list[Problem] = []
    for key in config:
        if key not in TRIAL_SECTIONS:
            problems.append(
                Problem(str(key), f"unknown key.{did_you_mean(str(key), TRIAL_SECTIONS)} Valid keys: {', '.join(TRIAL_SECTIONS)}.")
            )
    method = method or config.get("method", "joint")
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < MAX_SEED:
        problems.append(Problem("seed", f"must be a non-negative integer below 2**63 - 2**20, got {shorten(seed, 30)}."))

    def section(build: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return build(*args, **kwargs)
        except ConfigError as err:
            problems.extend(err.problems)
            return None

    label = config.get("label")
    if label is not None and (not isinstance(label, str) or not label):
        problems.append(Problem("label", f"must be a non-empty string naming the variant, got {shorten(label)}."))
    method_cls = section(get_method, method)
    params = section(from_dict, method_cls.Config, config.get("params"), path="params") if method_cls else None
    dataset = section(dataset_config, config.get("dataset"))
    model = section(from_dict, ModelConfig, config.get("model"), path="model")
    train = section(from_dict, TrainConfig, config.get("train"), path="train")
    if problems:
        raise ConfigError(problems)
    return TrialSpec(method_cls.name, params, dataset, model, train, seed, label or method_cls.name)


def preflight(spec: TrialSpec, *, memory: int | None) -> list[Problem]:
    """What building the trial would refuse, found without building it (nothing is allocated or read):
    a modality the method or the model names that the dataset lacks, a weights path that does not
    exist, and a synthetic dataset (with an MLP model) larger than ``memory`` bytes (None: unchecked).
    Real datasets' modalities and sizes are known only from their files; they are checked when built.
    """
    problems: list[Problem] = []
    modalities = getattr(spec.dataset, "modalities", None)  # the synthetic set declares them
    if modalities is not None:
        try:
            modalities = get_method(spec.method).select_modalities(spec.params, list(modalities))
        except ConfigError as err:
            problems += err.problems
            modalities = None
    if modalities is not None:
        unknown = sorted((set(spec.model.backbones) | set(spec.model.weights)) - set(modalities))
        if unknown:
            problems.append(Problem("model.backbones" if set(unknown) & set(spec.model.backbones) else "model.weights",
                                    f"names modalities {unknown} that the dataset does not have ({list(modalities)})."))
    for modality, path in spec.model.weights.items():
        if not os.path.exists(os.path.expanduser(path)):
            problems.append(Problem(f"model.weights.{modality}", f"no such weights file or folder: {shorten(path)}."))
    need = _memory_needed(spec, modalities)
    if need is not None and memory is not None and need[0] > memory:
        problems.append(Problem("dataset", f"the trial would need about {_bytes(need[0])} ({need[1]}), more than the "
                                           f"{_bytes(memory)} of memory here. Lower dataset.n_train/n_val/n_test, "
                                           "dataset.dim or model.hidden_dim."))
    return problems


def memory_of_machine(*, available: bool) -> int | None:
    """Bytes of memory this machine has available now (``available``) or in all; None if unknown."""
    if available:
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES" if available else "SC_PHYS_PAGES")
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _memory_needed(spec: TrialSpec, modalities: list[str] | None) -> tuple[int, str] | None:
    """(bytes, how they add up) of a synthetic dataset's tensors and an MLP model's weights, gradients
    and optimizer state, in float32; None for other datasets."""
    from mmtune.data.synthetic import SyntheticConfig

    cfg = spec.dataset
    if not isinstance(cfg, SyntheticConfig):
        return None
    n = cfg.n_train + cfg.n_val + cfg.n_test
    sizes = {m: math.prod(cfg.input_shape(m)) for m in cfg.modalities}
    clusters = getattr(cfg, "clusters_of", lambda m: cfg.clusters)
    # Inputs (twice while drawing: the signal and its noise), each modality's decoder (twice: its QR) and class codes.
    data = 4 * sum(2 * n * d + 2 * d * cfg.latent_dim + cfg.num_classes * clusters(m) * cfg.latent_dim for m, d in sizes.items())
    h, layers = spec.model.hidden_dim, spec.model.num_layers
    weights = sum(sizes[m] * h + (layers - 1) * h * h for m in (modalities or cfg.modalities)
                  if spec.model.backbone_for(m) == "mlp" and cfg.shape == "flat")
    model = 4 * 3 * weights  # weights, gradients, optimizer state
    how = f"{n:,} samples × {sum(sizes.values()):,} input values × 4 bytes for the data"
    return data + model, how + (f", {_bytes(model)} for the MLP" if model else "")


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"


def resolve_device(name: str, precision: str = "fp32") -> torch.device:
    """The device of ``train.device``; an explicit ``precision`` its autocast lacks is a config error
    (``auto`` is resolved later, by :func:`resolve_precision`, to one it has)."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif name == "cuda" and not torch.cuda.is_available():
        raise ConfigError([Problem("train.device", "is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'.")])
    else:
        device = torch.device(name)
    if device.type == "cuda" and device.index is None:  # the index tensors carry, so that devices compare equal
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = PRECISIONS.get(precision)
    if dtype is not None and not _autocast_supports(device, dtype):
        raise ConfigError([Problem("train.precision", f"is '{precision}' but this torch's {device.type} autocast does "
                                                      f"not support {dtype}; use bf16 on CPU, fp16 on CUDA.")])
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` as it runs on ``device``. auto: fp32 on the CPU (so CPU results stay
    bit-identical to the fp32 loop, pinned by tests/engine/test_golden.py); on CUDA bf16 where the GPU's
    autocast supports it (Ampere and later: fp32's range, no scaler), else fp16 with the GradScaler, else fp32."""
    if precision != "auto":
        return precision
    if device.type != "cuda":
        return "fp32"
    for name in ("bf16", "fp16"):
        if _autocast_supports(device, PRECISIONS[name]):
            return name
    return "fp32"


def resolve_channels_last(channels_last: bool | str, device: torch.device, model: torch.nn.Module) -> bool:
    """``train.channels_last`` as it runs. auto: on CUDA when an encoder convolves (cnn, resnet18: the layout
    of cuDNN's tensor-core convolution kernels); off on the CPU (the fp32 golden path) and for
    models with no convolving encoder, where it changes nothing."""
    if channels_last != "auto":
        return bool(channels_last)
    return device.type == "cuda" and any(hasattr(e, "use_channels_last") for e in model.encoders.values())


def compile_encoders(model: torch.nn.Module, mode: bool | str) -> str | None:
    """``train.compile``: compile each encoder in place (``nn.Module.compile``) and return the mode (None: off).

    Encoders, not the whole model: methods call ``model.encoders[m]`` directly (UME, MLA, ReconBoost, UMT)
    and ``unimodal_logits`` / ``modality_logits`` / ``subset_logits`` skip ``forward``, so compiling
    ``model.forward`` would leave them uncompiled; the encoders hold the compute, and compiling them in
    place keeps every call path compiled. ``Module.compile`` keeps the module and its parameters, so the
    state_dict keys stay as they are (no ``_orig_mod.`` prefix) and checkpoints move freely between
    compiled and uncompiled trials; a deep copy (UMT's teachers) is an uncompiled module."""
    if mode is False:
        return None
    mode = "default" if mode is True else mode
    for encoder in model.encoders.values():
        encoder.compile(mode=mode)
    return mode


def _autocast_supports(device: torch.device, dtype: torch.dtype) -> bool:
    if device.type == "cuda" and dtype == torch.bfloat16:
        return torch.cuda.is_bf16_supported(including_emulation=False)  # pre-Ampere: fp16 and the scaler, not emulated bf16
    try:
        with warnings.catch_warnings():  # an unsupported dtype warns and disables autocast: read that, quietly
            warnings.simplefilter("ignore")
            with torch.autocast(device.type, dtype=dtype):
                return torch.is_autocast_enabled(device.type)
    except (RuntimeError, ValueError):  # some builds refuse a dtype their autocast lacks
        return False


# The generator a method's train_indices draws from: seeded from the trial's seed alone (offset below
# 2**20, so that every valid seed stays a valid generator seed).
HOLDOUT_SEED_OFFSET = 524_287


def reserve_holdout(split: TensorSplit, method: BalancingMethod,
                    seed: int) -> tuple[TensorSplit, TensorSplit | None, Tensor | None]:
    """The samples the loop trains on, the samples ``method.train_indices`` reserved (None: none), and
    the sorted indices of the first in ``split`` (None: the whole split, returned as is)."""
    n = len(split)
    kept = method.train_indices(n, torch.Generator().manual_seed(seed + HOLDOUT_SEED_OFFSET))
    if kept is None:
        return split, None, None
    kept = torch.as_tensor(kept).detach().cpu()
    where = f"method '{method.name}': train_indices({n}, ...)"
    if kept.dim() != 1 or kept.dtype.is_floating_point or kept.dtype.is_complex or kept.dtype == torch.bool:
        raise ValueError(f"{where} must return a 1-D integer tensor of indices, got {tuple(kept.shape)} {kept.dtype}")
    kept = kept.long().sort().values
    if len(kept) == 0 or kept[0] < 0 or kept[-1] >= n or bool((kept[1:] == kept[:-1]).any()):
        raise ValueError(f"{where} must return distinct indices in [0, {n}), at least one; got {len(kept)} indices "
                         f"in [{int(kept.min()) if len(kept) else '-'}, {int(kept.max()) if len(kept) else '-'}]")
    reserved = torch.ones(n, dtype=torch.bool)
    reserved[kept] = False
    held = reserved.nonzero().squeeze(1)

    return split.subset(kept), (split.subset(held) if len(held) else None), kept


class Trial:
    """Everything one training run needs, built from a :class:`TrialSpec`."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec
        self.device = resolve_device(spec.train.device, spec.train.precision)
        self.precision = resolve_precision(spec.train.precision, self.device)
        data = build_dataset(spec.dataset, self.device)
        method_cls: type[BalancingMethod] = get_method(spec.method)
        modalities = method_cls.select_modalities(spec.params, data.modalities)
        self.data = data.select(modalities)
        torch.manual_seed(spec.seed)  # model initialisation
        self.model = build_model(spec.model, input_shapes=self.data.input_shapes, num_classes=self.data.num_classes)
        self.model.to(self.device)
        self.channels_last = resolve_channels_last(spec.train.channels_last, self.device, self.model)
        if self.channels_last:
            use_channels_last(self.model)
        self.compile_mode = compile_encoders(self.model, spec.train.compile)
        # fp16 scales the loss so that small gradients do not flush to zero (bf16 has fp32's range: no scaler).
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.method = method_cls(spec.params, modalities=modalities, num_classes=self.data.num_classes, device=self.device)
        self.method.bind(self.model)
        # What the loop trains on: the training split less what the method reserves (train_indices).
        self.train_split, self.holdout_split, self.train_index = reserve_holdout(self.data.train, self.method, spec.seed)
        self.stages = self.method.stages(spec.train.epochs)
        check_stages(self.stages, spec.train.epochs, spec.method)
        self._build_optimizer()
        self.data_generator = torch.Generator().manual_seed(spec.seed)  # batch order, drawn on the CPU
        self.method_generator = torch.Generator(self.device).manual_seed(spec.seed + 1_000_003)
        self.epoch = 0
        self.global_step = 0
        self.best: dict[str, float] = {}

    def _build_optimizer(self) -> None:
        t = self.spec.train
        params = list(self.model.parameters()) + self.method.extra_parameters()
        self.optimizer = build_optimizer(params, name=t.optimizer, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, step_size=t.lr_step, gamma=t.lr_gamma)

    @property
    def modalities(self) -> list[str]:
        return self.data.modalities

    @property
    def resolved(self) -> dict[str, Any]:
        """What this trial runs with after every ``auto`` is resolved: device, precision, channels_last,
        compile (the mode, or None) and resident (a prepared cache held on the device; None: not a real
        dataset). A spec's ``auto`` is stored as written (``train.precision`` column "auto"); this is what ran,
        for reports of the run (bench/gpu.py and ``mmtune sweep --plan`` read it)."""
        return {"device": str(self.device), "precision": self.precision, "channels_last": self.channels_last,
                "compile": self.compile_mode, "resident": self.data.info.get("resident")}

    def stage_of(self, epoch: int) -> tuple[Stage, int, bool]:
        """The stage of a 1-based epoch, the epoch's 1-based index within it, and whether it is the last stage."""
        start = 0
        for i, stage in enumerate(self.stages):
            if epoch <= start + stage.epochs:
                return stage, epoch - start, i == len(self.stages) - 1
            start += stage.epochs
        return self.stages[-1], epoch - start + self.stages[-1].epochs, True

    def step(self) -> dict[str, float]:
        """Train one epoch, evaluate validation and test; return every metric of DESIGN §3.3."""
        self.epoch += 1
        t = self.spec.train
        stage, stage_epoch, _ = self.stage_of(self.epoch)
        if stage_epoch == 1 and stage.fresh_optimizer and self.epoch > 1:
            self._build_optimizer()  # a stage that trains a new model starts its own optimizer and LR schedule
        ctx = StepContext(
            epoch=self.epoch, step=0, global_step=self.global_step,
            modulating=self.method.in_window(self.epoch),
            generator=self.method_generator, device=self.device,
            model=self.model, optimizer=self.optimizer, train=self.train_split, batch_size=t.batch_size,
            stage=stage, stage_epoch=stage_epoch, holdout=self.holdout_split,
        )
        start = time.perf_counter()
        self.method.begin_epoch(ctx)
        stats = train_epoch(
            self.model, self.train_split, self.method, self.optimizer, ctx,
            batch_size=t.batch_size, data_generator=self.data_generator, grad_clip=t.grad_clip,
            precision=self.precision, scaler=self.scaler,
        )
        self.global_step = ctx.global_step
        if self.scheduler is not None:
            self.scheduler.step()
        traces = self.method.end_epoch(ctx)
        train_loss = stats.mean_loss
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_s = time.perf_counter() - start
        device_metrics = {"train_loss": train_loss}
        device_metrics.update(evaluate(self.model, self.data.val, batch_size=t.eval_batch_size, prefix="val", method=self.method,
                                       precision=self.precision))
        device_metrics.update(evaluate(self.model, self.data.test, batch_size=t.eval_batch_size, prefix="test", imbalance=False,
                                       method=self.method, precision=self.precision))
        if t.probe:
            device_metrics.update(probe_metrics(self.model, self.data.train, {"val": self.data.val, "test": self.data.test},
                                                batch_size=t.eval_batch_size))
        # One host sync for the whole epoch's metrics.
        keys = list(device_metrics)
        values = torch.stack([device_metrics[k].float().reshape(()) for k in keys]).cpu().tolist()
        metrics: dict[str, float] = {"epoch": self.epoch, **dict(zip(keys, values, strict=True)), **traces}
        if not math.isfinite(metrics["train_loss"]):
            # A method's own learning rates (e.g. AIM's dap_lr) can diverge too: name them as well.
            config = self.method.config
            own = [f"params.{external_name(type(config), f.name)} ({getattr(config, f.name)})"
                   for f in dataclasses.fields(config) if f.name.endswith("_lr")]
            also = f", or the method's {', '.join(own)}" if own else ""
            raise FloatingPointError(
                f"train_loss is {metrics['train_loss']} at epoch {self.epoch} (method {self.spec.method}, "
                f"lr {t.lr}): training diverged. Lower train.lr or set train.grad_clip{also}."
            )
        metrics["epoch_s"] = time.perf_counter() - start
        metrics["samples_per_s"] = stats.samples / max(train_s, 1e-9)
        self._track_best(metrics)
        metrics.update(self.best)
        return metrics

    def _track_best(self, metrics: dict[str, float]) -> None:
        if not self.best or metrics["val_acc"] > self.best["best_val_acc"]:
            self.best = {
                "best_val_acc": metrics["val_acc"],
                "best_val_macro_f1": metrics["val_macro_f1"],
                "best_val_map": metrics["val_map"],
                "best_epoch": float(metrics["epoch"]),
                "test_acc_at_best_val": metrics["test_acc"],
                "test_macro_f1_at_best_val": metrics["test_macro_f1"],
                "test_map_at_best_val": metrics["test_map"],
            }

    # -- checkpointing --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.spec.to_config(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": dict(self.best),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "method": self.method.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": {
                "data": self.data_generator.get_state(),
                "method": self.method_generator.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        }

    def _same_config(self, stored: Mapping[str, Any]) -> bool:
        """Whether a checkpoint's config is this trial's. A checkpoint written before a key existed (a
        newer mmtune added ``train.precision``) is the same config when the key's default fills it in;
        precision and channels_last compare as resolved on this trial's device (an old explicit "fp32" is
        this CPU trial's "auto"), and the :data:`RUNTIME_KEYS` (compile, resident) do not count."""
        current = self.spec.to_config()
        if stored == current:
            return True
        try:
            return self._comparable(parse_trial_config(stored).to_config()) == self._comparable(current)
        except ConfigError:
            return False

    def _comparable(self, config: dict[str, Any]) -> dict[str, Any]:
        config = {**config, **{section: dict(config[section]) for section in RUNTIME_KEYS}}
        for section, keys in RUNTIME_KEYS.items():
            for key in keys:
                config[section].pop(key, None)
        train = config["train"]
        train["precision"] = resolve_precision(train["precision"], self.device)
        train["channels_last"] = resolve_channels_last(train["channels_last"], self.device, self.model)
        return config

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self._same_config(state["config"]):
            raise ValueError("checkpoint was written by a trial with a different config; refusing to load it")
        self.epoch = state["epoch"]
        self.global_step = state["global_step"]
        self.best = dict(state["best"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        if state.get("scaler") is not None:  # fp16 only (and absent from checkpoints older than precision)
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]  # RNG states are CPU byte tensors; a checkpoint read onto the GPU (map_location) has them there
        self.data_generator.set_state(rng["data"].cpu())
        self.method_generator.set_state(rng["method"].cpu())
        torch.set_rng_state(rng["torch"].cpu())
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])
