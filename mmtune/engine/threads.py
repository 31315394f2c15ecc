"""How many CPU threads a trial's torch ops use.

torch sizes its intra-op pool to every core of the machine. A sweep runs several trials at once, each
given ``resources.cpu`` cores by Ray, and a laptop runs other work: a pool larger than the cores a
trial really has oversubscribes them, and the threads then wait on each other (measured on the
2-core default: `mmtune run joint train.epochs=5` took 18.2 s with the default pool on a busy
machine and 0.40 s with one thread; 0.22 s either way on a quiet one).

* A sweep's trial uses its CPU share: ``floor(resources.cpu)``, at least 1, so trials running side
  by side never ask for more threads than the cores Ray gave them.
* ``mmtune run`` uses the cores this process may use (its affinity mask, capped by a cgroup CPU
  quota: a container's share, not the host's core count).
* An explicit ``MMTUNE_THREADS`` or ``OMP_NUM_THREADS`` always wins: on a machine busy with other
  work, ``MMTUNE_THREADS=1`` is the fix. The pool is never sized by the current load, because the
  thread count changes float reduction order: a run must give the same numbers on a busy and a
  quiet machine (measured: 1 and 2 threads differ in the 7th digit on the default MLP).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

__all__ = ["available_cpus", "auto_threads", "configure_threads", "trial_threads"]


def available_cpus() -> int:
    """The cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def _explicit() -> int | None:
    for var in ("MMTUNE_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def auto_threads() -> int:
    """Threads for an in-process run (``mmtune run``): an explicit setting, else the available cores."""
    explicit = _explicit()
    return explicit if explicit is not None else available_cpus()


def trial_threads(cpu_share: float) -> int:
    """Threads for a sweep trial given ``cpu_share`` cores by Ray: ``floor(cpu_share)``, at least 1."""
    explicit = _explicit()
    return explicit if explicit is not None else max(1, math.floor(cpu_share))


def configure_threads(threads: int) -> int:
    """Size torch's intra-op pool; returns the number set."""
    torch.set_num_threads(max(1, int(threads)))
    return torch.get_num_threads()
