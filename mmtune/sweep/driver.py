"""The process that drives a sweep, and what its Ray session leaves behind when it is killed.

`mmtune sweep` and `mmtune resume` record in ``<sweep>/driver.json`` the driver's pid, host and
process start time, and the Ray session folder when the driver started Ray itself
(``/tmp/ray/session_<date>_<pid>``; Ray names it after the driver's pid). A driver killed with
SIGKILL cannot shut Ray down: the raylet's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
and idle workers outlive it. Before it starts, `mmtune resume` reads the record:

* the recorded driver still runs (same host, pid and start time): refuse — two drivers would write
  one sweep;
* it is gone: end the processes of its Ray session — those whose command line names the session
  folder, and ``ray::`` processes holding a file open inside it — and nothing else. Another sweep's
  processes name another session; a record that names no Ray session folder ending in the dead
  driver's pid ends nothing, and neither does one whose pid is in use again (a reused pid, or a
  crafted record naming a live driver's session: that session is never ended).

Process discovery reads ``/proc`` (Linux); elsewhere nothing is ended.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import time
from typing import Any

from mmtune.errors import ConfigError, Problem

__all__ = ["DRIVER_FILE", "record_driver", "read_driver", "driver_alive", "session_processes", "end_processes",
           "clean_up_dead_driver", "ray_session_dir"]

log = logging.getLogger(__name__)

DRIVER_FILE = "driver.json"
_SESSION_NAME = re.compile(r"^session_[0-9]{4}-[0-9]{2}-[0-9]{2}_[0-9-]+_[0-9]+_([0-9]+)$")


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22): with the
    pid, it names one process, even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in parentheses, may hold spaces
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def ray_session_dir() -> str | None:
    """This process's Ray session folder (None when Ray is not initialised here)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        return ray._private.worker.global_worker.node.get_session_dir_path()
    except Exception:  # noqa: BLE001 - private Ray API: without it, a killed driver's leftovers stay
        return None


def record_driver(sweep_path: str, *, session_dir: str | None) -> None:
    """Write ``driver.json``: this process drives the sweep; ``session_dir`` is the Ray session it
    started (None when it joined a running cluster: that Ray is not the sweep's to stop)."""
    from mmtune.store.faults import write_atomic

    record = {"pid": os.getpid(), "host": socket.gethostname(), "start_ticks": _start_ticks(os.getpid()),
              "ray_session_dir": session_dir, "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_atomic(f"{sweep_path.rstrip('/')}/{DRIVER_FILE}", json.dumps(record, indent=2).encode())


def read_driver(sweep_path: str) -> dict[str, Any] | None:
    """The recorded driver, or None (no record, or one that cannot be read: nothing to clean up)."""
    from mmtune.store.reader import open_storage

    fs, base = open_storage(sweep_path)
    try:
        with fs.open_input_stream(f"{base.rstrip('/')}/{DRIVER_FILE}") as f:
            record = json.loads(f.read().decode())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("pid"), int) else None


def driver_alive(record: dict[str, Any]) -> bool:
    """Whether the recorded driver still runs on this host (same pid and start time)."""
    if record.get("host") != socket.gethostname():
        return False
    pid = record["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's: compare start times below
    ticks = record.get("start_ticks")
    return ticks is None or _start_ticks(pid) == ticks


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _holds_file_under(pid: int, folder: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(folder + "/"):
            return True
    return False


def session_processes(session_dir: str) -> list[int]:
    """This user's processes that belong to the Ray session ``session_dir``: the command line names
    the folder (or the session, as ``--session-name=``), or a ``ray::`` process holds a file in it."""
    if not os.path.isdir("/proc"):
        return []
    folder = session_dir.rstrip("/")
    name = os.path.basename(folder)
    named = re.compile(rf"(?<![\w.-]){re.escape(name)}(?![\w.-])")  # not a prefix of session_..._1234
    me, uid = os.getpid(), os.getuid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        cmd = _cmdline(pid)
        if not cmd:
            continue  # a kernel thread or a process that just ended
        if named.search(cmd) or (cmd.startswith("ray::") and _holds_file_under(pid, folder)):
            found.append(pid)
    return sorted(found)


def end_processes(pids: list[int], *, grace_s: float = 3.0) -> list[int]:
    """SIGTERM, then SIGKILL after ``grace_s`` for those still running (Ray's agents ignore SIGTERM
    while their raylet is gone). Returns the pids that were running."""
    ended = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            ended.append(pid)
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.monotonic() + grace_s
    alive = list(ended)
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in alive if _running(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2.0
    while any(_running(pid) for pid in alive) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ended


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")  # a zombie has ended; its parent (init, the dead driver's) reaps it


def clean_up_dead_driver(sweep_path: str) -> list[int]:
    """Before a resume: refuse if the sweep's recorded driver still runs; if it is dead, end the
    processes of the Ray session it started. Returns the pids ended."""
    record = read_driver(sweep_path)
    if record is None or record["pid"] == os.getpid() or record.get("host") != socket.gethostname():
        return []  # no record, this very process (a sweep resumed in-process), or another machine's
    if driver_alive(record):
        raise ConfigError(Problem(sweep_path, (
            f"this sweep is still running: its driver, pid {record['pid']}, has been running since "
            f"{record.get('recorded', '?')}. Two drivers would write the same tables; wait for it to end, or stop "
            f"it (Ctrl-C in its terminal, or `kill {record['pid']}`) and resume then. (If pid {record['pid']} is no "
            f"sweep of yours, delete {sweep_path.rstrip('/')}/{DRIVER_FILE}.)")))
    session = record.get("ray_session_dir")
    if not isinstance(session, str):
        return []
    match = _SESSION_NAME.match(os.path.basename(session.rstrip("/")))
    if not match or int(match.group(1)) != record["pid"] or not os.path.isabs(session):
        return []  # not the Ray session the dead driver started: not ours to end
    if _running(record["pid"]):
        # The pid runs with another start time: reused by another process, or a record not written by
        # mmtune naming a live driver's session. Ending that session could stop a sweep that still runs.
        log.warning("not ending the processes of Ray session %s: its driver's pid %d is in use", session, record["pid"])
        return []
    pids = session_processes(session)
    if pids:
        log.info("ending %d process(es) left by the killed driver's Ray session %s", len(pids), session)
    return end_processes(pids)
