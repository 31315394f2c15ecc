"""How a sweep starts Ray: a local sweep's Ray processes listen on loopback only."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(ROOT))
    return env


def _address(hex_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """/proc/net/tcp{,6} addresses: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_ip)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def is_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def process_tree(pid: int) -> dict[int, str]:
    """pid -> command name of ``pid`` and every descendant (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier and p not in tree]
        tree.update(children)
        frontier = children
    names = {}
    for p in tree:
        try:
            names[p] = Path(f"/proc/{p}/comm").read_text().strip()
        except OSError:
            continue
    return names


def listeners(pid: int) -> dict[tuple[str, str, int], int]:
    """(process name, address, port) -> pid of every TCP listener of ``pid`` and its descendants."""
    sockets: dict[str, tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ip, port = fields[1].split(":")
                sockets[fields[9]] = (_address(ip), int(port, 16))
    found = {}
    for p, name in process_tree(pid).items():
        try:
            links = [os.readlink(fd) for fd in Path(f"/proc/{p}/fd").iterdir()]
        except OSError:
            continue
        for link in links:
            if link.startswith("socket:[") and link[8:-1] in sockets:
                ip, port = sockets[link[8:-1]]
                found[(name, str(ip), port)] = p
    return found


def test_a_local_ray_starts_on_loopback_and_a_cluster_is_joined_as_it_is(monkeypatch):
    import ray
    from ray._private import ray_constants

    from mmtune.sweep import tuner

    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(tuner, "_quiet_ray", lambda: None)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw, ray_constants.ENABLE_RAY_CLUSTER)))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    for address in (None, "local", "10.0.0.1:6379"):
        tuner._init_ray(address, SimpleNamespace(gpu=0))
    (local, single_machine), (named, _), (joined, joined_mode) = calls
    # Ray's servers bind 127.0.0.1 only when the node IP is exactly that; ray.init keeps it so only in
    # its single-machine mode, which is on while it starts and restored after.
    assert local["address"] == named["address"] == "local" and local["_node_ip_address"] == "127.0.0.1"
    assert single_machine is False and ray_constants.ENABLE_RAY_CLUSTER == cluster_mode
    assert joined["address"] == "10.0.0.1:6379" and "_node_ip_address" not in joined and joined_mode == cluster_mode


# The GCS, the raylet, the driver's and a worker's core-worker servers: every kind of Ray listener.
REQUIRED = {"gcs_server", "raylet", "python", "ray::IDLE"}


@pytest.mark.slow
def test_a_local_sweep_listens_on_loopback_only(tmp_path):
    if not (Path("/proc/net/tcp").is_file() and os.access(f"/proc/{os.getpid()}/fd", os.R_OK)):
        pytest.skip("needs Linux /proc to list the sockets of the sweep's processes")
    spec = tmp_path / "spec.yaml"
    spec.write_text(textwrap.dedent("""\
        name: net
        method: joint
        dataset: {n_train: 256, n_val: 96, n_test: 96}
        train: {epochs: 2}
        seeds: [0]
        """))
    proc = subprocess.Popen([sys.executable, "-m", "mmtune.cli", "sweep", str(spec), "--storage", str(tmp_path / "runs")],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[tuple[str, str, int], int] = {}
    deadline = time.time() + 80
    try:
        while proc.poll() is None and time.time() < deadline:
            seen.update(listeners(proc.pid))
            if REQUIRED <= {name for name, _, _ in seen}:
                break
            time.sleep(0.5)
        seen.update(listeners(proc.pid))
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    names = {name for name, _, _ in seen}
    assert REQUIRED <= names, sorted(seen)
    exposed = sorted((name, ip, port) for name, ip, port in seen if not is_loopback(ipaddress.ip_address(ip)))
    assert not exposed, f"Ray processes of a local sweep listen beyond loopback: {exposed}"
