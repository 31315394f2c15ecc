"""bench/hook_cost.py runs, and its studies hold: the float32 host path equals the tensor path, and so do
the same ops run under inference_mode or through TorchScript."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "hook_cost.py"


def test_hook_cost_counts_ops_and_the_host_path_matches_the_tensor_path_bit_for_bit():
    done = subprocess.run([sys.executable, str(BENCH), "--parts", "ops,modes,host", "--no-compile", "--methods", "joint,ogm,opm",
                           "--n-train", "256", "--samples", "500", "--repeats", "50", "--json"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ops"]["joint"] == {} and result["ops"]["ogm"]["modulate_gradients"] > 0
    assert set(result["ops"]["opm"]) == {"before_forward", "modulate_gradients"}
    host = result["host"]
    assert host["vectors"] == 1000 and host["host_differs_from_tensor"] == 0
    assert host["tensor_rho_k_us"] > 0 and host["host_rho_k_us"] > 0
    modes = result["modes"]
    assert not any("compile" in name for name in modes)
    for name in ("rho_k eager, no_grad (as the hook)", "rho_k eager, inference_mode", "rho_k torch.jit.script, no_grad"):
        assert modes[name]["bit_equal"] and modes[name]["probes_differing"] == "0/300" and modes[name]["us"] > 0
    assert modes["whole OGM hook, no_grad"]["us"] > 0 and modes["whole OGM hook, inference_mode"]["us"] > 0


def test_an_unknown_part_is_refused_naming_the_parts():
    done = subprocess.run([sys.executable, str(BENCH), "--parts", "opps"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "ops, ogm, modes, host" in done.stderr
