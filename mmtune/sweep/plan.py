"""``mmtune sweep SPEC --plan``: how many trials fit at once, measured, before a sweep runs (no Ray).

A sweep spec asks for trials (grid size × seeds, or Optuna's ``num_samples`` × seeds). Packing several
trials on one GPU (``resources.gpu: 0.25``) needs each trial's GPU memory, which only running it tells.
:func:`plan` therefore runs a **one-batch probe** (:func:`probe_trial`) per distinct (method, model,
dataset, batch size, precision) configuration, at most ``max_probes`` of them (the others are assumed
to need the largest probed memory and time): it builds the :class:`~mmtune.engine.trial.Trial` on the
device the trial would use, runs the trial's own epoch step on one training batch (forward, the
method's hooks, backward, optimizer step; a warm-up step, then a timed one) and one evaluation batch
of each of val and test, and measures

* on CUDA: the peak of the caching allocator's reserved memory (its allocated peak plus the
  allocator's overhead), plus the memory the process holds outside the allocator — the CUDA context,
  loaded kernels and library handles — measured with ``torch.cuda.mem_get_info`` around the first
  CUDA use (with NVML's per-device reading before it when ``pynvml`` is installed; without it, the
  GPU is assumed to have been otherwise idle);
* on the CPU: the process's peak resident memory growth over the probe (Linux ``VmHWM``, reset
  through ``/proc/self/clear_refs``; ``ru_maxrss`` elsewhere) plus the resident memory of the
  process before it (torch and mmtune loaded). Approximate: a Ray worker process adds Ray's own.

:func:`suggest_packing` (pure) turns a per-trial size and a GPU's free memory into trials per GPU and
the ``resources.gpu`` fraction to write; :func:`render` prints the plan. Nothing is written to the
storage folder and Ray is never imported; the probe frees what it allocated.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import json
import math
import resource
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from mmtune.errors import ConfigError, Problem
from mmtune.sweep.spec import SweepSpec, entry_config, entry_domains, expand_grid

__all__ = ["Device", "Packing", "Plan", "Probe", "compare_gpu_share", "plan", "probe_trial", "render", "suggest_packing",
           "MAX_PROBES", "DEFAULT_MARGIN"]

MAX_PROBES = 8  # probes per plan: each builds a trial and its data
DEFAULT_MARGIN = 0.9  # the share of free memory a plan packs into
RAY_UNITS = 10_000  # Ray holds fractional resources in units of 1/10000 of one GPU
MAX_PER_GPU = 100  # 0.01 GPU per trial: below that the fraction means nothing to Ray's scheduler
# The train keys that change a trial's memory or step time (the probe's key, with method, model and dataset).
PROBE_TRAIN_KEYS = ("batch_size", "eval_batch_size", "precision", "channels_last", "compile", "device", "optimizer", "probe")
GIB = 1024**3


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Probe:
    """One measured configuration. ``per_trial_bytes`` is what one such trial would hold; ``parts``
    says how it adds up; the times are one step's, after a warm-up step, and are estimates."""

    label: str
    method: str
    batch_size: int
    device: str
    per_trial_bytes: int
    parts: dict[str, int]
    data_bytes: int  # the dataset's tensors (train, val, test), on the trial's device
    step_s: float  # one training step (all the method's substeps), synchronised
    eval_batch_s: float  # one evaluation batch
    steps_per_epoch: int
    eval_batches: int  # val + test batches per epoch
    epoch_s: float  # steps_per_epoch × step_s + eval_batches × eval_batch_s (an estimate)
    configurations: int = 1  # distinct configurations (seeds aside) this probe stands for
    resolved: dict[str, Any] = field(default_factory=dict)  # the trial's settings with every auto resolved


@dataclass(frozen=True)
class Device:
    kind: str  # cuda | cpu
    index: int
    name: str
    total_bytes: int
    free_bytes: int  # free now, plus what this planning process itself holds there (it exits before the sweep)


@dataclass(frozen=True)
class Packing:
    """How many trials one GPU holds: ``min(memory_fit, cpu_cap)``, and the ``resources.gpu`` to write."""

    per_trial_bytes: int
    free_bytes: int
    margin: float
    usable_bytes: int  # free × margin
    memory_fit: int  # floor(usable / per trial)
    cpu_cap: int | None  # CPU cores per GPU // resources.cpu (None: not capped)
    trials_per_gpu: int
    gpu_fraction: float | None  # None when no trial fits
    limited_by: str  # memory | cpu | max (MAX_PER_GPU) | too large
    message: str

    @property
    def spec_line(self) -> str:
        return "" if self.gpu_fraction is None else f"gpu: {_number(self.gpu_fraction)}"


@dataclass(frozen=True)
class Plan:
    spec_name: str
    algorithm: str
    trials: int
    configurations: int  # distinct trial configurations, seeds aside
    seeds: int
    epochs: int
    cpu: float  # resources.cpu
    gpu: float  # resources.gpu as the spec sets it
    probes: list[Probe]
    unprobed: int  # probe keys beyond max_probes: assumed to need the largest probe's memory and time
    device: str  # the device the trials would use: cuda | cpu
    devices: list[Device]
    cpus: int
    memory_total: int | None
    memory_available: int | None
    margin: float
    packing: Packing | None  # GPU only
    concurrent: int  # trials at once on this machine
    verdict: str | None  # the spec's resources.gpu: fits | too tight | wastes | unset (None on the CPU)
    verdict_message: str
    sweep_s: float  # rough sweep wall time: trial-epochs × epoch_s / concurrent
    notes: list[str] = field(default_factory=list)

    @property
    def per_trial_bytes(self) -> int:
        return max((p.per_trial_bytes for p in self.probes), default=0)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["per_trial_bytes"] = self.per_trial_bytes
        out["sweep_s"] = self.sweep_s if math.isfinite(self.sweep_s) else None
        if self.packing is not None:
            out["packing"]["spec_line"] = self.packing.spec_line
        return out


# ------------------------------------------------------------------------------------------ packing
def gpu_share(trials: int) -> float:
    """The ``resources.gpu`` with which Ray puts exactly ``trials`` trials on one GPU: 1/trials rounded
    down to 2 decimals (0.14 for 7), or to 3–4 decimals when 2 would let Ray fit one more (1/13: 0.07 fits
    14, so 0.076). Ray counts a GPU as 10,000 units, so floor(10000 / units(f)) trials fit."""
    if not 1 <= trials <= MAX_PER_GPU:
        raise ValueError(f"trials per GPU must be in [1, {MAX_PER_GPU}], got {trials}")
    for decimals in (2, 3, 4):
        step = 10 ** (4 - decimals)
        units = RAY_UNITS // trials // step * step
        if units and RAY_UNITS // units == trials:
            return units / RAY_UNITS
    raise AssertionError("unreachable: 4 decimals fit any trials <= 100 exactly")


def trials_per_share(share: float) -> int:
    """How many trials with ``resources.gpu: share`` Ray places on one GPU (0: none asked, 1 for >= 1)."""
    if share <= 0:
        return 0
    units = round(share * RAY_UNITS)
    return 1 if units >= RAY_UNITS else RAY_UNITS // units


def suggest_packing(per_trial_bytes: int, free_bytes: int, *, margin: float = DEFAULT_MARGIN,
                    cpus_per_gpu: float | None = None, trial_cpu: float = 1.0) -> Packing:
    """Trials per GPU = floor(free × margin / per trial), capped by ``cpus_per_gpu // trial_cpu`` (Ray would
    not start more: each trial holds ``resources.cpu`` cores) and by 100; with the ``resources.gpu`` that
    makes Ray put exactly that many on one GPU."""
    check_margin(margin)
    if per_trial_bytes <= 0 or free_bytes < 0:
        raise ValueError(f"per_trial_bytes must be > 0 and free_bytes >= 0, got {per_trial_bytes}, {free_bytes}")
    usable = int(free_bytes * margin)
    memory_fit = usable // per_trial_bytes
    cpu_cap = None if cpus_per_gpu is None else int(cpus_per_gpu // trial_cpu)
    k, limited_by = memory_fit, "memory"
    if cpu_cap is not None and cpu_cap < k:
        k, limited_by = cpu_cap, "cpu"
    if k > MAX_PER_GPU:
        k, limited_by = MAX_PER_GPU, "max"
    need = f"one trial needs {_gib(per_trial_bytes)}, the GPU has {_gib(usable)} usable ({_gib(free_bytes)} free × {margin})"
    if memory_fit == 0:
        message = (f"a trial does not fit: {need}. Lower train.batch_size or the model/dataset size, use "
                   "train.precision=bf16, or run on a GPU with more memory.")
        return Packing(per_trial_bytes, free_bytes, margin, usable, 0, cpu_cap, 0, None, "too large", message)
    if k == 0:
        message = (f"no trial can start: resources.cpu is {_number(trial_cpu)} but a GPU has only {_number(cpus_per_gpu)} "
                   f"CPU cores; lower resources.cpu.")
        return Packing(per_trial_bytes, free_bytes, margin, usable, memory_fit, cpu_cap, 0, None, "cpu", message)
    share = gpu_share(k)
    why = {"memory": f"{need}: {memory_fit} fit",
           "cpu": f"memory fits {memory_fit} but {_number(cpus_per_gpu)} CPU cores per GPU / resources.cpu "
                  f"{_number(trial_cpu)} = {cpu_cap}",
           "max": f"memory fits {memory_fit}; capped at {MAX_PER_GPU} (0.01 GPU)"}[limited_by]
    message = f"{k} trial(s) per GPU ({why}); write resources.gpu: {_number(share)}"
    return Packing(per_trial_bytes, free_bytes, margin, usable, memory_fit, cpu_cap, k, share, limited_by, message)


def compare_gpu_share(spec_gpu: float, packing: Packing) -> tuple[str, str]:
    """The spec's own ``resources.gpu`` against the suggestion: fits | too tight | wastes | unset."""
    if spec_gpu <= 0:
        return "unset", ("the spec sets no resources.gpu: Ray reserves no GPU share, so the CPU cores alone decide how "
                         "many trials share the GPU (out of memory if more than fit). Paste the line above.")
    asked = trials_per_share(spec_gpu)
    if asked > packing.memory_fit:
        return "too tight", (f"resources.gpu {_number(spec_gpu)} puts {asked} trials on a GPU, but only {packing.memory_fit} "
                             f"fit in its memory ({asked} × {_gib(packing.per_trial_bytes)} > {_gib(packing.usable_bytes)}): "
                             f"expect CUDA out-of-memory errors. Use resources.gpu: {_share_or_one(packing)}.")
    if asked < packing.trials_per_gpu:
        return "wastes", (f"resources.gpu {_number(spec_gpu)} puts {asked} trial(s) on a GPU; {packing.trials_per_gpu} "
                          f"would fit. Use resources.gpu: {_share_or_one(packing)} to run more at once.")
    return "fits", f"resources.gpu {_number(spec_gpu)} puts {asked} trial(s) on a GPU, and they fit."


def check_margin(margin: Any) -> float:
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin <= 1:
        raise ConfigError(Problem("--plan-margin", f"must be a number in (0, 1] (the share of free memory to pack; 0.9 "
                                                   f"leaves 10% for fragmentation), got {margin!r}."))
    return float(margin)


# ------------------------------------------------------------------------------------------ the probe
_CUDA_BASELINE: dict[int, int] = {}  # device index → bytes other processes held there before this one used it
_CUDA_ASSUMED_IDLE: set[int] = set()  # devices whose baseline could not be read (no pynvml): assumed 0


def _cuda_baselines() -> None:
    """Read, before this process makes any CUDA context, what each GPU already has in use (NVML, through
    pynvml). Without pynvml, or once CUDA is initialised, a GPU is assumed otherwise idle (0 bytes)."""
    for index in range(torch.cuda.device_count()):
        if index in _CUDA_BASELINE:
            continue
        try:
            if torch.cuda.is_initialized():
                raise RuntimeError("CUDA already initialised: NVML would count this process too")
            _CUDA_BASELINE[index] = torch.cuda.device_memory_used(index)
        except Exception:  # no pynvml (ModuleNotFoundError), no NVML: assume the GPU was idle
            _CUDA_BASELINE[index] = 0
            _CUDA_ASSUMED_IDLE.add(index)


def _cuda_own_bytes(index: int) -> int:
    """Bytes this process holds on GPU ``index`` outside the caching allocator (the CUDA context, loaded
    kernels, library handles): used (``mem_get_info``) − reserved by the allocator − the baseline."""
    _cuda_baselines()
    free, total = torch.cuda.mem_get_info(index)
    return max(0, total - free - torch.cuda.memory_reserved(index) - _CUDA_BASELINE[index])


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> int | None:
    """Reset the process's peak resident size (Linux 4.0+); return the resident size now, or None."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so that it is not counted as the baseline
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return None
    return _proc_status("VmRSS")


def _peak_rss() -> int:
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _tensor_bytes(obj: Any, seen: set[int]) -> int:
    """Bytes of the tensors a split holds (its fields, one level into dicts), each storage once."""
    total = 0
    values = vars(obj).values() if hasattr(obj, "__dict__") else ()
    for value in values:
        for t in (value.values() if isinstance(value, Mapping) else (value,)):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
            elif hasattr(t, "nbytes") and type(t).__module__.startswith("numpy"):
                total += int(t.nbytes)
    return total


def _first(split: Any, n: int) -> Any:
    return split.subset(torch.arange(min(n, len(split))))


def _time_eval(trial: Any) -> float:
    """Seconds of one evaluation batch (the trial's val batch), synchronised."""
    from mmtune.engine.loop import evaluate

    t = trial.spec.train
    start = time.perf_counter()
    metrics = evaluate(trial.model, trial.data.val, batch_size=t.eval_batch_size, prefix="val", method=trial.method,
                       precision=getattr(trial, "precision", t.precision))  # train.precision as resolved on the device
    torch.stack([v.float().reshape(()) for v in metrics.values()]).cpu()  # waits for the device
    return time.perf_counter() - start


def _probe_epochs(trial: Any) -> list[int]:
    """The epochs the probe steps at: the first of each stage and the first inside the method's window
    (so that the hooks run), at most 4; memory and time are the largest over them."""
    epochs = trial.spec.train.epochs
    starts, start = [], 1
    for stage in trial.stages:
        starts.append(start)
        start += stage.epochs
    window = next((e for e in range(1, epochs + 1) if trial.method.in_window(e)), 1)
    return sorted({e for e in [*starts, window] if 1 <= e <= epochs})[:4]


def probe_trial(config: Mapping[str, Any], *, threads: int | None = None) -> Probe:
    """Build one trial from ``config`` (a trial config as the sweep hands it to Ray) and measure one
    training step and one evaluation batch of val and test; see the module docstring for what is
    measured. Frees everything it built; never imports Ray."""
    from mmtune.engine.threads import configure_threads
    from mmtune.engine.trial import Trial, parse_trial_config, resolve_device

    spec = parse_trial_config(config)
    device = resolve_device(spec.train.device, spec.train.precision)
    old_threads = torch.get_num_threads()
    if threads is not None:
        configure_threads(threads)
    cuda = device.type == "cuda"
    trial = full = None
    try:
        if cuda:
            index = device.index if device.index is not None else torch.cuda.current_device()
            own_before = _cuda_own_bytes(index)  # the context, measured before the trial's first allocation
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base_allocated = torch.cuda.memory_allocated(device)
        else:
            base_rss = _reset_peak_rss()
            base_rss = base_rss if base_rss is not None else _peak_rss()  # no clear_refs: growth beyond the old peak
        trial = Trial(spec)
        resolved = dict(getattr(trial, "resolved", {}))
        full = trial.data  # held: the trial keeps its whole dataset while it trains
        train_n, val_n, test_n = len(trial.train_split), len(full.val), len(full.test)
        seen: set[int] = set()
        data_bytes = sum(_tensor_bytes(s, seen) for s in (full.train, full.val, full.test))
        t = spec.train
        trial.train_split = _first(trial.train_split, t.batch_size)
        trial.data = dataclasses.replace(full, train=trial.train_split, val=_first(full.val, t.eval_batch_size),
                                         test=_first(full.test, t.eval_batch_size))
        step_s = eval_batch_s = 0.0
        for epoch in _probe_epochs(trial):
            for timed in (False, True):  # the first step warms up kernels, allocator and lazy state
                trial.epoch = epoch - 1
                # One training step (every substep of the method), one val and one test batch. The trial times
                # its training part itself (samples_per_s, synchronised): a batch's share of it is one step.
                samples_per_s = trial.step()["samples_per_s"]
                if timed:
                    step_s = max(step_s, min(t.batch_size, train_n) / max(samples_per_s, 1e-12))
                    eval_batch_s = max(eval_batch_s, _time_eval(trial))
        if cuda:
            torch.cuda.synchronize(device)
            peak_allocated = torch.cuda.max_memory_allocated(device) - base_allocated
            peak_reserved = torch.cuda.max_memory_reserved(device)
            own = max(own_before, _cuda_own_bytes(index))
            overhead = max(0, peak_reserved - peak_allocated - base_allocated)  # cached but unallocated blocks
            parts = {"peak_allocated": peak_allocated, "allocator_overhead": overhead, "cuda_context": own}
        else:
            parts = {"process_base": base_rss, "rss_growth": max(0, _peak_rss() - base_rss)}
    finally:
        del trial, full
        gc.collect()  # the model, method and optimizer may hold one another in cycles
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        configure_threads(old_threads)
    steps = math.ceil(train_n / spec.train.batch_size)
    evals = math.ceil(val_n / spec.train.eval_batch_size) + math.ceil(test_n / spec.train.eval_batch_size)
    return Probe(label=spec.label, method=spec.method, batch_size=spec.train.batch_size, device=str(device),
                 per_trial_bytes=sum(parts.values()), parts=parts, data_bytes=data_bytes, step_s=step_s,
                 eval_batch_s=eval_batch_s, steps_per_epoch=steps, eval_batches=evals,
                 epoch_s=steps * step_s + evals * eval_batch_s, resolved=resolved)


# ------------------------------------------------------------------------------------------ the plan
def trial_configs(spec: SweepSpec) -> list[dict[str, Any]]:
    """One trial config per distinct configuration (seeds aside). An Optuna sweep's configurations are
    sampled, so its probes take every candidate of each memory-relevant searched leaf (dataset, model,
    the train keys of PROBE_TRAIN_KEYS) and the first candidate (the low bound) of every other one."""
    if spec.algorithm == "grid":
        first_seed = spec.seeds[0]
        return [c for c in expand_grid(spec) if c["seed"] == first_seed]
    entry = spec.methods[0]
    domains = entry_domains(spec, entry)
    relevant = [p for p in domains if p.startswith(("dataset.", "model."))
                or p in {f"train.{k}" for k in PROBE_TRAIN_KEYS}]
    configs = [{}]
    for path in relevant:
        configs = [{**c, path: v} for c in configs for v in domains[path].candidates()]
    rest = {p: d.candidates()[0] for p, d in domains.items() if p not in relevant}
    return [entry_config(spec, entry, {**rest, **c}, spec.seeds[0]) for c in configs]


def probe_key(config: Mapping[str, Any]) -> str:
    train = config.get("train") or {}
    return json.dumps([config["method"], config.get("model"), config.get("dataset"),
                       {k: train.get(k) for k in PROBE_TRAIN_KEYS}], sort_keys=True, default=str)


def plan(spec: SweepSpec, *, margin: float = DEFAULT_MARGIN, max_probes: int = MAX_PROBES,
         max_concurrent: int | None = None) -> Plan:
    """Probe the spec's configurations and suggest how to pack them on this machine (see the module)."""
    from mmtune.engine.threads import available_cpus, trial_threads
    from mmtune.engine.trial import memory_of_machine

    margin = check_margin(margin)
    if torch.cuda.is_available():
        _cuda_baselines()  # before anything here makes a CUDA context
    if max_probes < 1:
        raise ConfigError(Problem("max_probes", f"must be >= 1, got {max_probes}."))
    configs = trial_configs(spec)
    groups: dict[str, list[dict[str, Any]]] = {}
    for config in configs:
        groups.setdefault(probe_key(config), []).append(config)
    # The largest batch sizes first: when there are more keys than probes, the unprobed ones are smaller.
    order = sorted(groups, key=lambda k: -int((groups[k][0].get("train") or {}).get("batch_size", 64)))
    probed, unprobed = order[:max_probes], order[max_probes:]
    configurations = spec.num_samples if spec.algorithm == "optuna" else len(configs)
    notes: list[str] = []
    probes = [dataclasses.replace(probe_trial(groups[k][0], threads=trial_threads(spec.cpu)), configurations=len(groups[k]))
              for k in probed]
    if spec.algorithm == "optuna":
        notes.append(f"Optuna samples its {spec.num_samples} configurations; the probes cover the searched model, "
                     "dataset and batch-size candidates (range bounds), the sweep time assumes the largest.")
    if unprobed:
        notes.append(f"{len(unprobed)} more configuration group(s) were not probed (at most {max_probes}); they are "
                     "assumed to need the largest probed memory and time.")
    device = probes[0].device.split(":")[0]
    cpus = available_cpus()
    mem_total, mem_available = memory_of_machine(available=False), memory_of_machine(available=True)
    per_trial = max(p.per_trial_bytes for p in probes)
    cpu_slots = max(0, int(cpus // spec.cpu))
    packing, verdict, verdict_message = None, None, ""
    if device == "cuda":
        devices = _cuda_devices()
        free = min(d.free_bytes for d in devices)
        packing = suggest_packing(per_trial, free, margin=margin, cpus_per_gpu=cpus / len(devices), trial_cpu=spec.cpu)
        concurrent = min(packing.trials_per_gpu * len(devices), cpu_slots)
        verdict, verdict_message = compare_gpu_share(spec.gpu, packing)
        if _CUDA_ASSUMED_IDLE:
            notes.append("pynvml is not installed (pip install nvidia-ml-py): the CUDA context was measured assuming "
                         "no other process used the GPU when the plan started.")
        notes.append("Packed trials share the GPU's compute: each runs slower than the probe's step time when it is "
                     "not alone (bench/gpu.py measures packed throughput).")
    else:
        devices = [Device("cpu", 0, f"{cpus} CPU core(s)", mem_total or 0, mem_available or 0)]
        memory_cap = int((mem_available or 0) * margin // per_trial) if mem_available else cpu_slots
        concurrent = min(cpu_slots, memory_cap)
        notes.append("CPU memory is approximate (peak resident growth of this process plus its resident base; a Ray "
                     "worker adds Ray's own).")
        if torch.cuda.is_available():
            notes.append("train.device is cpu: the trials would not use the GPU.")
        else:
            notes.append("No CUDA device is visible here: run `mmtune sweep SPEC --plan` on the GPU machine for the GPU "
                         "packing factor (resources.gpu).")
    cap = max_concurrent or spec.max_concurrent
    if cap:
        concurrent = min(concurrent, cap)
    trial_epochs_s = sum(p.epoch_s * p.configurations for p in probes)
    if unprobed:
        trial_epochs_s += max(p.epoch_s for p in probes) * sum(len(groups[k]) for k in unprobed)
    if spec.algorithm == "optuna":
        trial_epochs_s = max(p.epoch_s for p in probes) * spec.num_samples
    trial_s = trial_epochs_s * spec.epochs * len(spec.seeds)
    sweep_s = trial_s / concurrent if concurrent else math.inf
    if spec.asha is not None:
        notes.append("ASHA stops some trials early: the sweep time is an upper bound.")
    return Plan(spec_name=spec.name, algorithm=spec.algorithm, trials=spec.num_trials(), configurations=configurations,
                seeds=len(spec.seeds), epochs=spec.epochs, cpu=spec.cpu, gpu=spec.gpu, probes=probes, unprobed=len(unprobed),
                device=device, devices=devices, cpus=cpus, memory_total=mem_total, memory_available=mem_available,
                margin=margin, packing=packing, concurrent=concurrent, verdict=verdict, verdict_message=verdict_message,
                sweep_s=sweep_s, notes=notes)


def _cuda_devices() -> list[Device]:
    devices = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        own = _cuda_own_bytes(i) + torch.cuda.memory_reserved(i)  # this process exits first
        devices.append(Device("cuda", i, torch.cuda.get_device_name(i), total, min(total, free + own)))
    return devices


# ------------------------------------------------------------------------------------------ output
def render(p: Plan) -> str:
    """The plan as text for a terminal."""
    lines = [f"plan for sweep '{p.spec_name}': {p.trials} trials = {p.configurations} configuration(s) × {p.seeds} seed(s)"
             f"{' (Optuna samples)' if p.algorithm == 'optuna' else ''}, {p.epochs} epochs each; "
             f"resources: cpu {_number(p.cpu)}, gpu {_number(p.gpu)}",
             f"one-batch probes on {p.device} ({len(p.probes)} probed"
             f"{f', {p.unprobed} more assumed as large as the largest' if p.unprobed else ''}):"]
    for probe in p.probes:
        parts = ", ".join(f"{k} {_gib(v)}" for k, v in probe.parts.items())
        ran = "".join(f", {k} {v}" for k, v in probe.resolved.items() if k in ("precision", "compile") and v)
        lines.append(f"  {probe.label} ({probe.method}), batch {probe.batch_size}{ran}, {probe.configurations} config(s): "
                     f"{_gib(probe.per_trial_bytes)} per trial ({parts}; data {_gib(probe.data_bytes)}); "
                     f"step {probe.step_s * 1e3:.1f} ms, eval batch {probe.eval_batch_s * 1e3:.1f} ms "
                     f"→ ~{probe.epoch_s:.2f} s/epoch "
                     f"(estimate: {probe.steps_per_epoch} steps + {probe.eval_batches} eval batches)")
    lines.append("devices:")
    for d in p.devices:
        if d.kind == "cuda":
            lines.append(f"  cuda:{d.index} {d.name}: {_gib(d.total_bytes)} total, {_gib(d.free_bytes)} free")
        else:
            lines.append(f"  cpu: {p.cpus} core(s), {_gib(d.total_bytes)} memory, {_gib(d.free_bytes)} available")
    if p.packing is not None:
        lines.append(f"packing (margin {p.margin}): {p.packing.message}")
        if p.packing.gpu_fraction is not None:
            lines.append(f"  paste into the spec:  resources: {{cpu: {_number(p.cpu)}, gpu: {_number(p.packing.gpu_fraction)}}}")
        lines.append(f"  the spec's resources.gpu: {p.verdict} — {p.verdict_message}")
    else:
        lines.append(f"CPU concurrency: {p.concurrent} trial(s) at once ({p.cpus} cores // resources.cpu {_number(p.cpu)}, "
                     f"capped by {_gib(p.memory_available or 0)} available memory × {p.margin} / "
                     f"{_gib(p.per_trial_bytes)} per trial)")
    lines.append(f"runs {p.concurrent} trial(s) at once on this machine; sweep wall time ≈ {_duration(p.sweep_s)} "
                 "(rough estimate from the probes' step times)")
    lines += [f"note: {n}" for n in p.notes]
    return "\n".join(lines)


def run_plan(spec: SweepSpec, *, margin: float, as_json: bool, max_concurrent: int | None = None) -> int:
    """``mmtune sweep SPEC --plan [--json]``: print the plan; exit 0."""
    result = plan(spec, margin=margin, max_concurrent=max_concurrent)
    print(json.dumps(result.to_json(), default=str) if as_json else render(result))
    return 0


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= 0.1 * GIB else f"{n / 1024**2:.1f} MiB"


def _number(x: float | None) -> str:
    return "-" if x is None else (str(int(x)) if float(x).is_integer() else f"{x:g}")


def _share_or_one(packing: Packing) -> str:
    return _number(packing.gpu_fraction) if packing.gpu_fraction is not None else "(none fits: see above)"


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown (no trial can run)"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
