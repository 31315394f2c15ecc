"""Sweep efficiency: how much of a sweep's wall time is trial compute, and is driver memory flat?

(1) Compute share. A grid sweep of ``--trials`` short trials (``--methods`` × seeds; the synthetic
dataset shrunk to ``--n-train`` samples so one epoch takes ~0.05–0.2 s on one core; ``--epochs``
epochs each; ``resources: {cpu: 1}``) runs through the product's own entry point,
``mmtune.sweep.tuner.run_sweep``, on a Ray that this script starts once with
``num_cpus = --concurrency``, so resources alone let ``--concurrency`` trials run at a time (as a
user's spec does; ``--max-concurrent`` also sets the spec's ``max_concurrent``). Ray start-up is
timed on its own and is NOT in the sweep's wall time (paid once per sweep). From the sweep's own
``epochs`` table::

    compute share = Σ epoch_s over every (trial, epoch) / (wall of run_sweep × concurrency)

``epoch_s`` is the wall time of one epoch inside the trial (train + val/test evaluation). The rest
of the concurrency slots is overhead, split with a probe callback that only appends the driver-clock
times of trial starts, results and completions ("slots:" rows): head (sweep start → first trial
start per slot: Tuner set-up and the trial worker's start — Python, ray.tune, torch, and
torch._dynamo, which the first torch.optim optimizer imports), first-epoch dispatch, gaps between
results beyond the epoch (result round-trip, per-epoch checkpoint, driver latency), last result →
completion, transitions (a slot between two trials: stop, ``reset_config``, scheduling — or a fresh
worker when Tune did not reuse an actor) and tail. Also reported: the share without head and tail
(the per-trial part alone), mean trials running at once, trial worker processes that did work
(``--concurrency`` of them = every later trial reused an actor), Tune's experiment snapshots
(timed; the driver blocks during each), Σ compute, overhead per trial
(``(wall × concurrency − Σ compute) / trials``), trials per minute, and the CPU seconds of the
driver, the trial workers, raylet/GCS and of every OTHER process on the machine (psutil): on a
shared machine that last number says how much the run was disturbed. Compare compute shares only
with similar ``epoch_s``: slower epochs alone raise the share.

(2) Driver memory. After (1) (driver warm: imports, Ray, Tune, one sweep) the driver's RSS is read
after ``gc.collect()``; then ``--memory-rounds`` sweeps of ``--memory-trials`` tiny 1-epoch trials
run one after the other and the RSS is read after each. Reported: before, after each round, growth
(MiB) and growth per 100 trials, the number of live Python objects, and the RSS at each trial
completion during a sweep (a probe callback that only reads RSS) with its slope over the second half
of the sweep. Flat = growth small and not proportional to the number of trials.

Goals (issue): compute share >= 0.90 for 32 short trials on 2 CPUs; driver memory flat.

Diagnostics (never part of the default measurement): ``--profile-driver N`` runs the driver under
cProfile during (1) and prints the top N functions; ``--what-if`` re-runs (1) with a product setting
changed IN THIS PROCESS ONLY (monkeypatched; no file is edited) to price a change before making it:
``ckpt-end`` (trial checkpoint only at the end instead of every epoch), ``ckpt-5`` (every 5 epochs),
``ckpt-none`` (no trial checkpoints), ``no-progress`` / ``no-writer`` (without the SweepProgress /
ResultsWriter callback; compute then comes from Tune's results), ``snapshot-rare``
(TUNE_GLOBAL_CHECKPOINT_S=600: fewer periodic experiment snapshots; forced ones remain), ``buffer``
(TUNE_RESULT_BUFFER_LENGTH=16: several epochs per train() round-trip; Tune only buffers with
``ckpt-none``), ``start-barrier`` (each worker's first setup waits, at most 60 s, until every slot's
worker is up: no trial can end while another slot's worker is still starting, which is when Tune
hands the freed actor to that slot's trial and kills the starting one). Comma-separate to combine.

    python bench/sweep_efficiency.py                         # rich table
    python bench/sweep_efficiency.py --json                  # last stdout line: one JSON object
    python bench/sweep_efficiency.py --memory-trials 0       # compute share only
    python bench/sweep_efficiency.py --max-concurrent --what-if ckpt-end --memory-trials 0
    python bench/sweep_efficiency.py --profile-driver 25 --memory-trials 0
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import logging
import os
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import console, emit_json, mean_std  # noqa: E402

MIB = 1024 * 1024
WHAT_IFS = ("ckpt-end", "ckpt-5", "ckpt-none", "no-progress", "no-writer", "snapshot-rare", "buffer", "start-barrier")


# ---------------------------------------------------------------------------------------- specs
def sweep_data(name: str, *, methods: list[str], trials: int, epochs: int, n_train: int, n_eval: int,
               concurrency: int, device: str, max_concurrent: bool = False) -> dict[str, Any]:
    if trials % len(methods):
        raise SystemExit(f"error: --trials {trials} is not a multiple of the {len(methods)} method(s)")
    return {
        "name": name,
        "method": methods if len(methods) > 1 else methods[0],
        "dataset": {"name": "synthetic", "n_train": n_train, "n_val": n_eval, "n_test": n_eval},
        "train": {"epochs": epochs, "device": device},
        "seeds": trials // len(methods),
        "resources": {"cpu": 1, "gpu": (1.0 / concurrency) if device == "cuda" else 0},
        "max_failures": 0,
        **({"max_concurrent": concurrency} if max_concurrent else {}),
    }


# ------------------------------------------------------------------------------- CPU accounting
def _kind(proc: Any) -> str:
    try:
        name = proc.name()
        cmd = " ".join(proc.cmdline()[:3])
    except Exception:  # noqa: BLE001 - gone or inaccessible
        return "ray other"
    if "raylet" in name or "/raylet" in cmd:
        return "raylet"
    if "gcs_server" in name or "gcs_server" in cmd:
        return "gcs"
    if name.startswith("ray::") or cmd.startswith("ray::") or "default_worker.py" in cmd:
        return "trial workers"
    return "ray other"


class CpuSampler:
    """CPU seconds of the driver, of every Ray process under it, and of the whole machine.

    Ray's processes are the driver's descendants (raylet, GCS, workers). They are polled every
    ``interval`` seconds and their last seen CPU times kept, so a worker that exits (Tune ends its
    actors at the end of a sweep) still counts up to its last poll.
    """

    def __init__(self, interval: float = 0.5):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.start_times: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _poll(self, first: bool = False) -> None:
        for proc in self.me.children(recursive=True):
            try:
                t = proc.cpu_times()
            except Exception:  # noqa: BLE001
                continue
            pid = proc.pid
            if pid not in self.kinds:
                self.kinds[pid] = _kind(proc)
                self.start_times[pid] = (t.user + t.system) if first else 0.0
            self.last[pid] = t.user + t.system

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._poll()

    def __enter__(self) -> CpuSampler:
        self._poll(first=True)
        t = self.me.cpu_times()
        self._driver0 = t.user + t.system
        self._sys0 = self.psutil.cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self._poll()
        t = self.me.cpu_times()
        self.driver_s = t.user + t.system - self._driver0
        s1 = self.psutil.cpu_times()
        idle = (s1.idle - self._sys0.idle) + (getattr(s1, "iowait", 0) - getattr(self._sys0, "iowait", 0))
        total = sum(s1) - sum(self._sys0)
        steal = getattr(s1, "steal", 0) - getattr(self._sys0, "steal", 0)
        self.machine_busy_s = total - idle - steal

    def workers_used(self, min_cpu_s: float = 1.0) -> int:
        """Worker processes that did real work (an actor: imports + trials); idle pool workers excluded."""
        return sum(1 for pid, kind in self.kinds.items()
                   if kind == "trial workers" and self.last.get(pid, 0.0) - self.start_times.get(pid, 0.0) >= min_cpu_s)

    def by_kind(self) -> dict[str, float]:
        out = {"driver": self.driver_s, "trial workers": 0.0, "raylet": 0.0, "gcs": 0.0, "ray other": 0.0}
        for pid, kind in self.kinds.items():
            out[kind] += max(self.last.get(pid, 0.0) - self.start_times.get(pid, 0.0), 0.0)
        ours = sum(out.values())
        out["other processes"] = max(self.machine_busy_s - ours, 0.0)
        return out


# ------------------------------------------------------------------------------------- what-ifs
@contextlib.contextmanager
def what_if(changes: list[str], probe: Any = None):
    """Apply product-setting changes to THIS process only (monkeypatches, undone on exit)."""
    from ray import tune

    import mmtune.sweep.tuner as tuner_mod

    saved_ckpt, saved_cb = tune.CheckpointConfig, tuner_mod._callbacks
    saved_env = {k: os.environ.get(k) for k in ("TUNE_GLOBAL_CHECKPOINT_S", "TUNE_RESULT_BUFFER_LENGTH")}
    real_ckpt = tune.CheckpointConfig
    if {"ckpt-end", "ckpt-5", "ckpt-none"} & set(changes):
        freq = 5 if "ckpt-5" in changes else 0
        at_end = "ckpt-none" not in changes

        def ckpt(**kwargs: Any):
            return real_ckpt(**{**kwargs, "checkpoint_frequency": freq, "checkpoint_at_end": at_end})

        tune.CheckpointConfig = ckpt
    if {"no-progress", "no-writer"} & set(changes) or probe is not None:
        from mmtune.store.writer import ResultsWriter
        from mmtune.sweep.progress import SweepProgress

        def callbacks(*args: Any, **kwargs: Any) -> list:
            cbs = saved_cb(*args, **kwargs)
            if "no-progress" in changes:
                cbs = [c for c in cbs if not isinstance(c, SweepProgress)]
            if "no-writer" in changes:
                cbs = [c for c in cbs if not isinstance(c, ResultsWriter)]
            return cbs + (list(probe) if isinstance(probe, Probes) else [probe] if probe is not None else [])

        tuner_mod._callbacks = callbacks
    if "snapshot-rare" in changes:
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "600"
    if "buffer" in changes:
        os.environ["TUNE_RESULT_BUFFER_LENGTH"] = "16"
    try:
        yield
    finally:
        tune.CheckpointConfig, tuner_mod._callbacks = saved_ckpt, saved_cb
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _probe_class():
    from ray import tune

    class EpochTimes(tune.Callback):
        """Collects epoch_s from results: the compute of a sweep run without the ResultsWriter."""

        def __init__(self):
            self.epoch_s: list[float] = []

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            if "epoch_s" in result:
                self.epoch_s.append(float(result["epoch_s"]))

    class RssProbe(tune.Callback):
        """Driver RSS (MiB) at each trial completion; nothing else."""

        def __init__(self):
            import psutil

            self.proc = psutil.Process()
            self.samples: list[tuple[int, float]] = []

        def __getstate__(self) -> dict[str, Any]:  # Tune pickles its RunConfig, callbacks included
            return {}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__init__()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.samples.append((len(self.samples) + 1, self.proc.memory_info().rss / MIB))

    class Timeline(tune.Callback):
        """Driver-clock times of trial starts, results, checkpoints and completions (appends only)."""

        def __init__(self):
            self.events: list[tuple[float, str, str, float, float]] = []

        def __getstate__(self) -> dict[str, Any]:
            return {}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__init__()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append((time.perf_counter(), "start", trial.trial_id, 0.0, 0.0))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            self.events.append((time.perf_counter(), "result", trial.trial_id, float(result.get("epoch_s", 0.0)),
                                float(result.get("time_this_iter_s", 0.0))))

        def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
            self.events.append((time.perf_counter(), "checkpoint", trial.trial_id, 0.0, 0.0))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.events.append((time.perf_counter(), "complete", trial.trial_id, 0.0, 0.0))

    return EpochTimes, RssProbe, Timeline


class Probes(list):
    """Several probe callbacks handed to ``what_if`` as one (it appends them to the sweep's callbacks)."""


@contextlib.contextmanager
def snapshot_timer():
    """Time Tune's experiment-state snapshots (``sync_up_experiment_state`` calls that wrote one)."""
    from ray.tune.execution.experiment_state import _ExperimentCheckpointManager as Manager

    real = Manager.sync_up_experiment_state
    records: list[tuple[float, bool]] = []  # (seconds, forced)

    def timed(self, save_fn, force=False, wait=False):
        forced = bool(force or self._should_force_sync_up)
        wrote: list[bool] = []

        def save():
            wrote.append(True)
            save_fn()

        start = time.perf_counter()
        try:
            return real(self, save, force=force, wait=wait)
        finally:
            if wrote:
                records.append((time.perf_counter() - start, forced))

    Manager.sync_up_experiment_state = timed
    try:
        yield records
    finally:
        Manager.sync_up_experiment_state = real


def decompose(events: list[tuple[float, str, str, float, float]], start: float, end: float, conc: int) -> dict[str, float]:
    """Split the concurrency slots (wall × concurrency) of a sweep into compute and overheads.

    In-trial (on_trial_start → on_trial_complete, driver clock): compute (Σ epoch_s), the first
    epoch's dispatch, the gaps between consecutive results beyond the epoch's own time (result
    round-trip, per-epoch checkpoint, driver latency), and last result → completion. Outside
    trials: head (sweep start → the first ``conc`` trial starts: Tuner set-up, actor start, imports),
    tail (the last ``conc`` completions → sweep end) and transitions (everything else: the slot
    between one trial's completion and the next one's start on it: stop, reset_config, scheduling).
    """
    by_trial: dict[str, list[tuple[float, str, float, float]]] = {}
    for t, kind, tid, epoch_s, iter_s in events:
        by_trial.setdefault(tid, []).append((t, kind, epoch_s, iter_s))
    starts, completes = [], []
    out = {"compute": 0.0, "first_dispatch": 0.0, "between_results": 0.0, "to_complete": 0.0,
           "in_worker_train_overhead": 0.0, "span": 0.0}
    for evs in by_trial.values():
        t_start = next((t for t, k, _, _ in evs if k == "start"), None)
        t_end = next((t for t, k, _, _ in reversed(evs) if k == "complete"), None)
        results = [(t, e, i) for t, k, e, i in evs if k == "result"]
        if t_start is None or t_end is None or not results:
            continue
        starts.append(t_start)
        completes.append(t_end)
        out["span"] += t_end - t_start
        out["compute"] += sum(e for _, e, _ in results)
        out["in_worker_train_overhead"] += sum(max(i - e, 0.0) for _, e, i in results)
        out["first_dispatch"] += results[0][0] - t_start - results[0][1]
        for (t0, _, _), (t1, e1, _) in zip(results, results[1:], strict=False):
            out["between_results"] += t1 - t0 - e1
        out["to_complete"] += t_end - results[-1][0]
    starts.sort()
    completes.sort()
    out["head"] = sum(t - start for t in starts[:conc])
    out["tail"] = sum(end - t for t in completes[-conc:])
    out["teardown"] = end - completes[-1] if completes else 0.0  # last completion → run_sweep returns
    out["transitions"] = (end - start) * conc - out["span"] - out["head"] - out["tail"]
    out["trials_seen"] = len(starts)
    out["mean_running"] = out["span"] / (end - start) if end > start else 0.0  # trials running at once, on average
    return out


def barrier_trainable(slots: int, timeout_s: float = 60.0):
    """What-if ``start-barrier``: a BalancedTrainable whose FIRST setup in each worker waits (at most
    ``timeout_s``) until ``slots`` workers are set up, so that no trial can finish while another
    slot's worker is still starting (Tune would hand that trial the freed actor and kill the one
    starting). Returns (trainable class, barrier actor)."""
    import ray

    from mmtune.sweep.trainable import BalancedTrainable

    @ray.remote(num_cpus=0)
    class Barrier:
        def __init__(self):
            self.n = 0

        def arrive(self) -> int:
            self.n += 1
            return self.n

        def count(self) -> int:
            return self.n

    barrier = Barrier.remote()

    class BarrierTrainable(BalancedTrainable):
        def setup(self, config: dict[str, Any], **kwargs: Any) -> None:
            super().setup(config, **kwargs)
            ray.get(barrier.arrive.remote())
            deadline = time.monotonic() + timeout_s
            while ray.get(barrier.count.remote()) < slots and time.monotonic() < deadline:
                time.sleep(0.02)

    return BarrierTrainable, barrier


# ------------------------------------------------------------------------------------- running
def run_one(data: dict[str, Any], storage: str, *, changes: list[str] = (), profile: int = 0,
            probe: Any = None, breakdown: bool = True, concurrency: int = 2) -> dict[str, Any]:
    """Run one sweep through run_sweep; return its timing, compute and CPU accounting."""
    from rich.console import Console

    from mmtune.store.reader import read_epochs
    from mmtune.sweep.spec import parse_spec
    from mmtune.sweep.tuner import run_sweep

    spec = parse_spec(data)
    log = io.StringIO()
    EpochTimes, _, Timeline = _probe_class()
    epoch_probe = EpochTimes() if "no-writer" in changes else None
    timeline = Timeline() if breakdown else None
    extra = Probes(p for p in (probe, epoch_probe, timeline) if p is not None)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
    trainable = barrier = None
    if "start-barrier" in changes:
        trainable, barrier = barrier_trainable(concurrency)
    with what_if(list(changes), extra), snapshot_timer() as snapshots, CpuSampler() as cpu:
        start = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        outcome = run_sweep(spec, storage=storage, console=Console(file=log, width=200, highlight=False),
                            live=False, command="bench/sweep_efficiency.py", trainable=trainable)
        if profiler is not None:
            profiler.disable()
        end = time.perf_counter()
        wall = end - start
    if barrier is not None:
        import ray

        ray.kill(barrier)
    if epoch_probe is not None:
        epoch_s, rows = epoch_probe.epoch_s, len(epoch_probe.epoch_s)
    else:
        epochs = read_epochs(outcome.path)
        epoch_s, rows = epochs.column("epoch_s").to_pylist(), epochs.num_rows
    out = {
        "wall_s": wall, "fit_s": outcome.wall_s, "compute_s": float(sum(epoch_s)), "epoch_rows": rows,
        "epoch_s_mean": mean_std(epoch_s)[0], "counts": outcome.counts, "cpu": cpu.by_kind(),
        "worker_processes": cpu.workers_used(),
        "trials": spec.num_trials(), "epochs": spec.epochs, "path": outcome.path,
        "snapshots": len(snapshots), "snapshots_forced": sum(f for _, f in snapshots),
        "snapshot_s": sum(d for d, _ in snapshots),
    }
    if timeline is not None:
        out["breakdown"] = decompose(timeline.events, start, end, concurrency)
    if profiler is not None:
        import pstats

        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(profile)
        out["profile"] = buf.getvalue()
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(profile)
        out["profile_cum"] = buf.getvalue()
    return out


def rss_mib() -> float:
    import ray  # noqa: F401 - Ray puts its bundled psutil on sys.path
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss / MIB


def slope_per_100(samples: list[tuple[int, float]]) -> float | None:
    """Least-squares slope (MiB per 100 completed trials) over the second half of the samples."""
    half = samples[len(samples) // 2:]
    if len(half) < 3:
        return None
    xs, ys = [float(x) for x, _ in half], [y for _, y in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 100.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32, help="trials of the compute-share sweep (default 32)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per trial (default 5)")
    parser.add_argument("--methods", default="joint", help="comma-separated methods (a grid axis; default joint)")
    parser.add_argument("--n-train", type=int, default=2048,
                        help="synthetic training samples (default 2048: 0.05-0.2 s per epoch on one core)")
    parser.add_argument("--n-eval", type=int, default=256, help="synthetic val and test samples each (default 256)")
    parser.add_argument("--concurrency", type=int, default=2, help="Ray num_cpus = trials at a time (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="trial device (default cpu; cuda packs --concurrency trials on one GPU)")
    parser.add_argument("--max-concurrent", action="store_true",
                        help="also set the spec's max_concurrent = --concurrency (default: concurrency comes from "
                             "resources alone: cpu 1 per trial on num_cpus = --concurrency)")
    parser.add_argument("--memory-trials", type=int, default=200, help="tiny 1-epoch trials per memory sweep (0: skip)")
    parser.add_argument("--memory-rounds", type=int, default=2, help="memory sweeps run one after the other (default 2)")
    parser.add_argument("--what-if", default="",
                        help=f"diagnostic: change a product setting in this process only ({', '.join(WHAT_IFS)})")
    parser.add_argument("--profile-driver", type=int, default=0, metavar="N",
                        help="diagnostic: cProfile the driver during the compute sweep, print the top N functions")
    parser.add_argument("--no-breakdown", action="store_true",
                        help="do not record the trial timeline (a probe callback that only appends event times)")
    parser.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    args = parser.parse_args(argv)
    changes = [c.strip() for c in args.what_if.split(",") if c.strip()]
    for c in changes:
        if c not in WHAT_IFS:
            parser.error(f"--what-if {c!r}: choose from {', '.join(WHAT_IFS)}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    conc = args.concurrency

    import ray  # (first: Ray puts its bundled psutil on sys.path)
    import psutil

    from mmtune.sweep.tuner import _quiet_ray

    _quiet_ray()  # the product's own env/logging settings before Ray starts
    rss_start = psutil.Process().memory_info().rss / MIB
    t0 = time.perf_counter()
    ray.init(num_cpus=conc, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
             configure_logging=True)
    ray_init_s = time.perf_counter() - t0

    common = {"concurrency": conc, "device": args.device, "max_concurrent": args.max_concurrent}
    mem_rounds: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="mmtune-bench-") as storage:
            data = sweep_data("efficiency", methods=methods, trials=args.trials, epochs=args.epochs,
                              n_train=args.n_train, n_eval=args.n_eval, **common)
            eff = run_one(data, storage, changes=changes, profile=args.profile_driver,
                          breakdown=not args.no_breakdown, concurrency=conc)
            rss_before = rss_mib()
            objects_before = len(gc.get_objects())
            if args.memory_trials > 0:
                _, RssProbe, _ = _probe_class()
                for r in range(args.memory_rounds):
                    mdata = sweep_data(f"memory{r}", methods=["joint"], trials=args.memory_trials, epochs=1,
                                       n_train=128, n_eval=64, **common)
                    probe = RssProbe()
                    m = run_one(mdata, storage, probe=probe, breakdown=False, concurrency=conc)
                    mem_rounds.append({
                        "trials": args.memory_trials, "wall_s": m["wall_s"], "counts": m["counts"],
                        "rss_after_mib": rss_mib(), "objects_after": len(gc.get_objects()),
                        "in_sweep_first_mib": probe.samples[0][1] if probe.samples else None,
                        "in_sweep_peak_mib": max((y for _, y in probe.samples), default=None),
                        "in_sweep_slope_mib_per_100": slope_per_100(probe.samples),
                        "snapshots": m["snapshots"], "snapshot_s": m["snapshot_s"],
                    })
    finally:
        ray.shutdown()

    slots = eff["wall_s"] * conc
    b = eff.get("breakdown")
    result: dict[str, Any] = {
        "compute_share": eff["compute_s"] / slots,
        "compute_share_excl_start_end": eff["compute_s"] / (slots - b["head"] - b["tail"]) if b else None,
        "wall_s": eff["wall_s"], "fit_s": eff["fit_s"], "compute_s": eff["compute_s"],
        "trials": eff["trials"], "epochs": eff["epochs"], "concurrency": conc, "methods": methods,
        "n_train": args.n_train, "max_concurrent": args.max_concurrent, "epoch_s_mean": eff["epoch_s_mean"],
        "overhead_per_trial_s": (slots - eff["compute_s"]) / eff["trials"],
        "trials_per_min": eff["trials"] / eff["wall_s"] * 60, "ray_init_s": ray_init_s,
        "worker_processes": eff["worker_processes"], "snapshots": eff["snapshots"],
        "snapshots_forced": eff["snapshots_forced"], "snapshot_s": eff["snapshot_s"],
        "slots_s": b or {}, "cpu_s": eff["cpu"], "counts": eff["counts"], "what_if": changes,
        "ok": eff["counts"].get("TERMINATED", 0) == eff["trials"] and eff["epoch_rows"] == eff["trials"] * eff["epochs"],
        "loadavg": list(os.getloadavg()),
    }
    if mem_rounds:
        total = sum(m["trials"] for m in mem_rounds)
        growth = mem_rounds[-1]["rss_after_mib"] - rss_before
        result.update(
            driver_rss_start_mib=rss_start, driver_rss_before_mib=rss_before,
            driver_rss_after_mib=mem_rounds[-1]["rss_after_mib"], driver_rss_growth_mib=growth,
            driver_rss_growth_mib_per_100_trials=100 * growth / total, memory_trials=total,
            python_objects_before=objects_before, memory_rounds=mem_rounds,
        )
    report(console(args.json), result, eff)
    if args.json:
        emit_json(result)
    return 0 if result["ok"] else 1


def report(out: Any, r: dict[str, Any], eff: dict[str, Any]) -> None:
    from rich.table import Table

    conc = r["concurrency"]
    slots = r["wall_s"] * conc
    title = f"sweep efficiency · {r['trials']} trials × {r['epochs']} epochs · {','.join(r['methods'])} · {conc} CPUs"
    if r["max_concurrent"]:
        title += f" · max_concurrent {conc}"
    if r["what_if"]:
        title += f" · WHAT-IF {'+'.join(r['what_if'])} (not the product)"
    table = Table(title=title)
    for col in ("measure", "value", "note"):
        table.add_column(col, justify="right" if col == "value" else "left")
    table.add_row("compute share", f"{r['compute_share']:.3f}", "Σ epoch_s / (wall × concurrency); goal ≥ 0.90")
    b = r["slots_s"]
    if b:
        table.add_row("  without head and tail", f"{r['compute_share_excl_start_end']:.3f}",
                      "Σ epoch_s / (wall × concurrency − head − tail): the per-trial part alone")
    table.add_row("sweep wall (run_sweep)", f"{r['wall_s']:.2f} s", f"of which tuner.fit {r['fit_s']:.2f} s")
    table.add_row("Σ trial compute", f"{r['compute_s']:.2f} s",
                  f"{eff['epoch_rows']} epochs, mean epoch_s {r['epoch_s_mean']:.3f} s")
    table.add_row("overhead per trial", f"{r['overhead_per_trial_s']:.3f} s",
                  f"(wall × concurrency − Σ compute) / trials; per epoch {r['overhead_per_trial_s'] / r['epochs']:.3f} s")
    table.add_row("trials / minute", f"{r['trials_per_min']:.1f}", "")
    table.add_row("Ray start-up", f"{r['ray_init_s']:.2f} s", "ray.init, once per sweep; not in the wall above")
    table.add_row("trial worker processes", str(r["worker_processes"]),
                  f"that did work (≥ 1 CPU-s); {conc} = every later trial reused an actor")
    table.add_row("Tune experiment snapshots", f"{r['snapshot_s']:.2f} s",
                  f"{r['snapshots']} written, {r['snapshots_forced']} forced by trial checkpoints; the driver blocks")
    if b:
        rows = (
            ("compute (Σ epoch_s)", b["compute"], "inside trials"),
            ("first epoch dispatch", b["first_dispatch"], "trial start → first result, minus its epoch"),
            ("between results", b["between_results"],
             "result → next result, minus the epoch: round-trip, per-epoch checkpoint, driver"),
            ("last result → complete", b["to_complete"], "final checkpoint, stop"),
            ("head", b["head"], "sweep start → first trial start per slot: Tuner, worker start, imports"),
            ("transitions", b["transitions"], "between two trials on a slot: stop, reset_config, scheduling, new workers"),
            ("tail", b["tail"], f"last completion per slot → sweep end (after the very last: {b['teardown']:.2f} s)"),
        )
        for label, value, note in rows:
            table.add_row(f"slots: {label}", f"{value:.2f} s", f"{value / slots:.1%} · {note}")
        table.add_row("trials running at once", f"{b['mean_running']:.2f}",
                      f"mean over the sweep wall (Σ trial spans / wall); {conc} slots")
    cpu = r["cpu_s"]
    for kind in ("trial workers", "driver", "raylet", "gcs", "ray other", "other processes"):
        table.add_row(f"CPU: {kind}", f"{cpu[kind]:.2f} s", f"{cpu[kind] / slots:.1%} of wall × concurrency")
    if "driver_rss_before_mib" in r:
        table.add_row("driver RSS before", f"{r['driver_rss_before_mib']:.1f} MiB",
                      f"after the sweep above, gc'd (at start: {r['driver_rss_start_mib']:.1f} MiB)")
        prev = r["driver_rss_before_mib"]
        for i, m in enumerate(r["memory_rounds"], 1):
            slope = m["in_sweep_slope_mib_per_100"]
            table.add_row(
                f"driver RSS after round {i}", f"{m['rss_after_mib']:.1f} MiB",
                f"{m['rss_after_mib'] - prev:+.1f} MiB after {m['trials']} more 1-epoch trials ({m['wall_s']:.0f} s); "
                f"during it: first {m['in_sweep_first_mib']:.1f}, peak {m['in_sweep_peak_mib']:.1f}, slope "
                + ("n/a" if slope is None else f"{slope:+.2f} MiB/100 trials")
                + f"; {m['snapshots']} snapshots {m['snapshot_s']:.1f} s",
            )
            prev = m["rss_after_mib"]
        table.add_row("driver RSS growth", f"{r['driver_rss_growth_mib']:+.1f} MiB",
                      f"{r['driver_rss_growth_mib_per_100_trials']:+.2f} MiB per 100 trials over {r['memory_trials']} "
                      "trials; goal: flat")
        table.add_row("Python objects", f"{r['python_objects_before']} → {r['memory_rounds'][-1]['objects_after']}",
                      "gc.get_objects()")
    out.print(table)
    if not r["ok"]:
        out.print(f"[red]warning: the compute sweep did not finish cleanly: {r['counts']}, {eff['epoch_rows']} epoch rows[/red]")
    out.print(f"{os.cpu_count()} logical CPUs, load average {' '.join(f'{x:.2f}' for x in r['loadavg'])}: other "
              "processes slow trials and the driver alike (see 'CPU: other processes').")
    if "profile" in eff:
        out.print("[bold]driver profile (cProfile, by own time)[/bold]")
        out.print(eff["profile"], markup=False, highlight=False)
        out.print("[bold]driver profile (by cumulative time)[/bold]")
        out.print(eff["profile_cum"], markup=False, highlight=False)


if __name__ == "__main__":
    sys.exit(main())
