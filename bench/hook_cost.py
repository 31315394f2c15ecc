"""Where a method's per-step cost goes on the CPU default: ATen ops per hook, OGM's hook by part, and
whether host-side scalar math could replace the (M,)-sized tensor ops (issue 24's CPU-overhead study).

The mlp default's step (~1.2 ms) is dispatch-bound: each ATen op costs microseconds whatever its size,
so a hook's cost is roughly its op count. Three parts (``--parts``, all by default):

* **ops**: the ATen ops each hook of each method dispatches in one training step (after a full epoch,
  so lazily built state is built), counted with a ``TorchDispatchMode`` around the hook calls; the
  backward of an ``extra_loss`` runs in the loop, outside the hooks, and is not counted.
* **ogm**: OGM's ``modulate_gradients`` by part, each timed ``--repeats`` times on a real batch, best
  of 5: the stacked uni-modal logits, the scores and ρ (Eq. 6–7), k (Eq. 11), the gradient scaling,
  the traces; the whole hook; the joint step (forward, backward, SGD) for scale; and the hook's stages
  timed in place, as the hook runs them one after another.
* **modes**: whether another way of running the same ops is cheaper, bit for bit: OGM's per-step
  equations (scores, ρ, k from the stacked uni-modal logits; Eq. 6, 7, 11) eager under ``no_grad`` (as
  the hook runs them), eager under ``inference_mode``, through ``torch.jit.script`` (deprecated since
  torch 2.10, still shipped) and through ``torch.compile`` (inductor; ``--no-compile`` leaves it out),
  each timed and compared with the eager result; and the whole OGM hook under ``no_grad`` vs
  ``inference_mode``.
* **host**: ρ and k (ratio form, tanh, the paper's k) computed on the host in float32 arithmetic
  (numpy float32, IEEE-exact like torch's; tanh through torch) against the tensor path, bit for bit,
  on ``--samples`` random score vectors for M = 2 and 3, and both paths timed; and how many values
  numpy's float32 tanh gives differently from torch's vectorised one.

    OMP_NUM_THREADS=1 .venv/bin/python bench/hook_cost.py
    OMP_NUM_THREADS=1 .venv/bin/python bench/hook_cost.py --parts ops --methods ogm,opm,amss,amss+,aim --json
    OMP_NUM_THREADS=1 .venv/bin/python bench/hook_cost.py --parts modes
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import console, emit_json, parse_entry  # noqa: E402

HOOKS = ("before_forward", "loss", "extra_loss", "modulate_gradients", "after_step")
PARTS = ("ops", "ogm", "modes", "host")


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **(kwargs or {}))


def build_trial(entry: str, n_train: int, batch_size: int) -> Any:
    import mmtune.trainables  # noqa: F401  registers the methods
    from mmtune.engine.trial import Trial, parse_trial_config

    name, params = parse_entry(entry)
    return Trial(parse_trial_config({
        "method": name, "seed": 0, "params": params, "dataset": {"n_train": n_train, "n_val": 64, "n_test": 64},
        "model": {"backbone": "mlp"}, "train": {"batch_size": batch_size, "epochs": 3, "device": "cpu"},
    }))


def hook_ops(entry: str, n_train: int, batch_size: int) -> dict[str, int]:
    """ATen ops per hook in one training step of the method's second epoch."""
    trial = build_trial(entry, n_train, batch_size)
    trial.step()
    method, counters, step = trial.method, {h: _OpCounter() for h in HOOKS}, [0]
    for hook in HOOKS:
        original = getattr(method, hook)

        def counted(*args, _original=original, _hook=hook, **kwargs):
            if step[0] != 1:  # the epoch's second step: past any first-step set-up
                return _original(*args, **kwargs)
            with counters[_hook]:
                return _original(*args, **kwargs)
        setattr(method, hook, counted)
    after = method.after_step

    def next_step(*args, **kwargs):
        out = after(*args, **kwargs)
        step[0] += 1
        return out
    method.after_step = next_step
    trial.step()
    return {h: sum(c.ops.values()) for h, c in counters.items() if c.ops}


def best_time(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call: the best of 5 runs of ``repeats`` calls, after a warm-up."""
    for _ in range(max(repeats // 10, 20)):
        fn()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


class HookContext:
    """What OGM's hook reads of a StepContext (no GE: no generator)."""

    generator = None
    device = torch.device("cpu")


def ogm_after_backward(n_train: int, batch_size: int) -> tuple[Any, Any, Any]:
    """An OGM trial after one batch's forward and backward: (trial, batch, model output), gradients in place."""
    trial = build_trial("ogm", n_train, batch_size)
    batch = next(iter(trial.train_split.batches(batch_size, generator=torch.Generator().manual_seed(0))))
    out = trial.model(batch.inputs)
    F.cross_entropy(out.logits, batch.labels).backward()
    return trial, batch, out


def ogm_parts(n_train: int, batch_size: int, repeats: int) -> dict[str, float]:
    """Microseconds of each part of OGM's modulate_gradients (and the joint step), on a real batch."""
    from mmtune.engine.metrics import discrepancy_ratio, unimodal_score_sums
    from mmtune.trainables.ogm import gradient_coefficient, modulate

    trial, batch, out = ogm_after_backward(n_train, batch_size)
    model, method, cfg = trial.model, trial.method, trial.method.config

    def joint_step() -> None:
        trial.optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch.inputs).logits, batch.labels).backward()
        trial.optimizer.step()

    times = {"joint step (forward, backward, SGD)": best_time(joint_step, max(repeats // 6, 50))}
    F.cross_entropy(model(batch.inputs).logits, batch.labels).backward()  # gradients for the hook to scale
    with torch.no_grad():
        uni = model.stacked_unimodal_logits(out.features, bias_split=cfg.gamma)
        sums = unimodal_score_sums(uni, batch.labels)
        rho = discrepancy_ratio(sums, cfg.discrepancy)
        k = gradient_coefficient(rho, cfg.alpha, k_form=cfg.k_form, z=cfg.z)
        grads = {m: [p.grad for p in method.groups[m] if p.grad is not None] for m in method.modalities}

        def scale() -> None:
            for i, m in enumerate(method.modalities):
                modulate(grads[m], k[i])

        def traces() -> None:
            method.traces.add_many("k", k, method.modalities)
            method.traces.add_many("rho", rho, method.modalities)

        times["stacked uni-modal logits"] = best_time(
            lambda: model.stacked_unimodal_logits(out.features, bias_split=cfg.gamma), repeats)
        times["scores and rho (Eq. 6-7), from the logits"] = best_time(
            lambda: discrepancy_ratio(unimodal_score_sums(uni, batch.labels), cfg.discrepancy), repeats)
        times["k (Eq. 11)"] = best_time(lambda: gradient_coefficient(rho, cfg.alpha, k_form=cfg.k_form, z=cfg.z), repeats)
        times["gradient scaling (all modalities)"] = best_time(scale, repeats)
        times["traces"] = best_time(traces, repeats)
        times["a 0-d tensor add, for scale"] = best_time(lambda: rho + 1.0, repeats)

    times["the whole hook"] = best_time(lambda: method.modulate_gradients(model, out, batch, HookContext()), repeats)
    times.update(_hook_stages_in_place(model, method, out, batch, repeats))
    return {name: round(seconds * 1e6, 2) for name, seconds in times.items()}


def _hook_stages_in_place(model: Any, method: Any, out: Any, batch: Any, repeats: int) -> dict[str, float]:
    """The hook's four stages timed where they run, one after the other as the hook calls them (mean over
    ``repeats`` passes): a part timed alone in a tight loop runs warmer than inside the hook."""
    from mmtune.trainables._discrepancy import batch_discrepancy
    from mmtune.trainables.ogm import gradient_coefficient, modulate

    cfg, spent = method.config, [0.0, 0.0, 0.0, 0.0]
    for _ in range(repeats):
        t0 = time.perf_counter()
        rho = batch_discrepancy(model, out, batch.labels, cfg)
        t1 = time.perf_counter()
        k = gradient_coefficient(rho, cfg.alpha, k_form=cfg.k_form, z=cfg.z)
        t2 = time.perf_counter()
        for i, m in enumerate(method.modalities):
            modulate([p.grad for p in method.groups[m] if p.grad is not None], k[i])
        t3 = time.perf_counter()
        method.traces.add_many("k", k, method.modalities)
        method.traces.add_many("rho", rho, method.modalities)
        t4 = time.perf_counter()
        for i, d in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[i] += d
    names = ("logits, scores and rho", "k", "gradient scaling", "traces")
    return {f"in place: {name}": total / repeats for name, total in zip(names, spent, strict=True)}


def rho_k(uni: torch.Tensor, labels: torch.Tensor, alpha: float, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """OGM's per-step equations written as one scriptable function, op for op as the hook runs them
    (``unimodal_score_sums``, ``discrepancy_ratio`` ratio form, ``gradient_coefficient`` paper form, tanh)."""
    m, b = uni.shape[0], uni.shape[1]
    sums = torch.softmax(uni, dim=2).gather(2, labels.view(1, b, 1).expand(m, b, 1)).sum(dim=(1, 2))
    inv = (sums + eps).reciprocal()
    rho = sums * (inv.sum() - inv) / (m - 1)
    k = 1.0 - alpha * torch.tanh(rho - 1.0)
    return rho, torch.where(rho > 1.0, k.clamp_min(0.0), 1.0)


def modes_study(n_train: int, batch_size: int, repeats: int, compile_too: bool) -> dict[str, Any]:
    """Microseconds of OGM's ρ and k under each way of running them, whether each equals eager bit for bit,
    and the whole hook under no_grad vs inference_mode."""
    import warnings

    from mmtune.engine.metrics import EPS, discrepancy_ratio, unimodal_score_sums
    from mmtune.trainables.ogm import gradient_coefficient

    trial, batch, out = ogm_after_backward(n_train, batch_size)
    model, method, cfg = trial.model, trial.method, trial.method.config
    with torch.no_grad():
        uni = model.stacked_unimodal_logits(out.features, bias_split=cfg.gamma)
        rho = discrepancy_ratio(unimodal_score_sums(uni, batch.labels))
        reference = (rho, gradient_coefficient(rho, cfg.alpha))
    labels, alpha = batch.labels, float(cfg.alpha)

    generator = torch.Generator().manual_seed(1)
    probes = [(uni + torch.randn(uni.shape, generator=generator) * scale, labels[torch.randperm(len(labels), generator=generator)])
              for scale in (0.1, 1.0, 4.0) for _ in range(100)]  # 300 more inputs of the same shape

    def run(fn: Callable[..., Any], grad_mode: Callable[[], Any]) -> dict[str, Any]:
        with grad_mode():
            got = fn(uni, labels, alpha, EPS)
            us = best_time(lambda: fn(uni, labels, alpha, EPS), repeats) * 1e6
            differ = sum(not all(torch.equal(a, b) for a, b in zip(fn(x, y, alpha, EPS), rho_k(x, y, alpha, EPS), strict=True))
                         for x, y in probes)
        return {"us": round(us, 2), "bit_equal": all(torch.equal(a, b) for a, b in zip(got, reference, strict=True)),
                "probes_differing": f"{differ}/{len(probes)}"}

    results: dict[str, Any] = {"rho_k eager, no_grad (as the hook)": run(rho_k, torch.no_grad),
                               "rho_k eager, inference_mode": run(rho_k, torch.inference_mode)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(rho_k)
    results["rho_k torch.jit.script, no_grad"] = run(scripted, torch.no_grad)
    if compile_too:
        start = time.perf_counter()
        compiled = torch.compile(rho_k, dynamic=False)
        with torch.no_grad():
            compiled(uni, labels, alpha, EPS)
        results["rho_k torch.compile (inductor), no_grad"] = {**run(compiled, torch.no_grad),
                                                               "compile_s": round(time.perf_counter() - start, 1)}

    undecorated = inspect.unwrap(type(method).modulate_gradients)  # the hook's body, without its grad-mode decorator
    for name, grad_mode in (("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
        def hook(grad_mode=grad_mode) -> None:
            with grad_mode():
                undecorated(method, model, out, batch, HookContext())
        results[f"whole OGM hook, {name}"] = {"us": round(best_time(hook, repeats) * 1e6, 2)}
    return results


def host_rho_k(sums: list[float], alpha: float) -> tuple[list[np.float32], list[np.float32]]:
    """ρ (Eq. 7, ratio form) and k (Eq. 11, tanh, the paper's form) in float32 on the host, op for op as the
    tensor path computes them (:func:`mmtune.engine.metrics.discrepancy_ratio`, ``gradient_coefficient``)."""
    from mmtune.engine.metrics import EPS

    f32 = np.float32
    s = [f32(v) for v in sums]
    inv = [f32(1.0) / (v + f32(EPS)) for v in s]
    total = f32(0.0)
    for v in inv:
        total = total + v
    m = len(s)
    rho = [v * (total - i) / f32(m - 1) for v, i in zip(s, inv, strict=True)]
    z = torch.tanh(torch.tensor([r - f32(1.0) for r in rho], dtype=torch.float32)).tolist()
    k = [max(f32(1.0) - f32(alpha) * f32(t), f32(0.0)) if r > 1.0 else f32(1.0) for r, t in zip(rho, z, strict=True)]
    return rho, k


def host_study(samples: int, repeats: int, alpha: float = 0.8) -> dict[str, Any]:
    from mmtune.engine.metrics import discrepancy_ratio
    from mmtune.trainables.ogm import gradient_coefficient

    generator = torch.Generator().manual_seed(0)
    differ = 0
    for m in (2, 3):
        for _ in range(samples):
            sums = torch.rand(m, generator=generator) * 64
            rho = discrepancy_ratio(sums)
            k = gradient_coefficient(rho, alpha)
            rho_h, k_h = host_rho_k(sums.tolist(), alpha)
            differ += rho.tolist() != [float(v) for v in rho_h] or k.tolist() != [float(v) for v in k_h]
    x = (torch.rand(samples, 2, generator=generator) * 6 - 3)
    tanh_differ = sum(float(a) != b for a, b in zip(np.tanh(x.numpy()).ravel(), torch.tanh(x).ravel().tolist(), strict=True))
    sums = torch.rand(2, generator=generator) * 64
    tensor_us = best_time(lambda: gradient_coefficient(discrepancy_ratio(sums), alpha), repeats) * 1e6
    host_us = best_time(lambda: host_rho_k(sums.tolist(), alpha), repeats) * 1e6
    return {"vectors": 2 * samples, "host_differs_from_tensor": differ, "tensor_rho_k_us": round(tensor_us, 2),
            "host_rho_k_us": round(host_us, 2), "tanh_values": x.numel(), "numpy_tanh_differs_from_torch": tanh_differ}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--methods", default="ogm,opm,amss,amss+,aim", help="method entries for the ops part")
    parser.add_argument("--n-train", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3000, help="calls per timing run (best of 5 runs)")
    parser.add_argument("--samples", type=int, default=20000, help="random score vectors per M in the host part")
    parser.add_argument("--no-compile", action="store_true", help="modes part: leave torch.compile out (it needs a C++ compiler)")
    parser.add_argument("--json", action="store_true", help="last stdout line: the results as JSON")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        parser.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; the parts are {', '.join(PARTS)}")
    out = console(args.json)
    results: dict[str, Any] = {}
    if "ops" in parts:
        entries = [e.strip() for e in args.methods.split(",") if e.strip()]  # aliases too: amss+, ogm-ge
        results["ops"] = {e: hook_ops(e, args.n_train, args.batch_size) for e in entries}
        for entry, hooks in results["ops"].items():
            out.print(f"{entry:8s} ATen ops per step in its hooks: {sum(hooks.values()):4d}  {hooks}")
    if "ogm" in parts:
        results["ogm"] = ogm_parts(args.n_train, args.batch_size, args.repeats)
        for name, us in results["ogm"].items():
            out.print(f"ogm  {name:45s} {us:9.2f} µs")
    if "modes" in parts:
        results["modes"] = modes_study(args.n_train, args.batch_size, args.repeats, not args.no_compile)
        for name, r in results["modes"].items():
            extra = "".join(f"  {k}={v}" for k, v in r.items() if k != "us")
            out.print(f"modes {name:42s} {r['us']:9.2f} µs{extra}")
    if "host" in parts:
        results["host"] = host_study(args.samples, args.repeats)
        out.print(f"host {results['host']}")
    if args.json:
        emit_json(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
