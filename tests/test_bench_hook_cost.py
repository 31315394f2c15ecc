"""bench/hook_cost.py runs and its host-math study holds: the float32 host path equals the tensor path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "hook_cost.py"


def test_hook_cost_counts_ops_and_the_host_path_matches_the_tensor_path_bit_for_bit():
    done = subprocess.run([sys.executable, str(BENCH), "--parts", "ops,host", "--methods", "joint,ogm,opm",
                           "--n-train", "256", "--samples", "500", "--repeats", "50", "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ops"]["joint"] == {} and result["ops"]["ogm"]["modulate_gradients"] > 0
    assert set(result["ops"]["opm"]) == {"before_forward", "modulate_gradients"}
    host = result["host"]
    assert host["vectors"] == 1000 and host["host_differs_from_tensor"] == 0
    assert host["tensor_rho_k_us"] > 0 and host["host_rho_k_us"] > 0


def test_an_unknown_part_is_refused_naming_the_parts():
    done = subprocess.run([sys.executable, str(BENCH), "--parts", "opps"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "ops, ogm, host" in done.stderr
