"""Shipped specs by name, `mmtune example`, and the wheel as a pip user gets it (slow): it carries the
shipped specs (search_spaces/ as package data), and from a folder outside the repo `mmtune sweep
quickstart --smoke-test`, `mmtune validate search_spaces/quickstart.yaml` and `mmtune example
quickstart` work. The wheel goes into a fresh venv with --no-deps; its dependencies come from this
environment's site-packages (a .pth line), so nothing is downloaded for the install (building the
wheel fetches setuptools>=77 unless pip has it cached)."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mmtune.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml"))


# ------------------------------------------------------------------------ in the checkout (fast)
def test_a_shipped_spec_is_found_by_name_or_repo_path_from_any_folder(tmp_path, monkeypatch):
    from mmtune.sweep.spec import load_spec, resolve_spec_path, shipped_specs

    assert sorted(f"{name}.yaml" for name in shipped_specs()) == SHIPPED
    monkeypatch.chdir(tmp_path)
    quickstart = REPO / "search_spaces" / "quickstart.yaml"
    for given in ("quickstart", "quickstart.yaml", "search_spaces/quickstart.yaml"):
        assert resolve_spec_path(given) == quickstart
    assert load_spec("quickstart").name == "quickstart"
    (tmp_path / "quickstart.yaml").write_text("name: mine\nmethod: joint\n")
    assert resolve_spec_path("quickstart.yaml") == Path("quickstart.yaml")  # a file at the path wins
    assert resolve_spec_path("elsewhere/quickstart.yaml") == Path("elsewhere/quickstart.yaml")  # never guessed
    with pytest.raises(ConfigError) as err:
        load_spec("quikstart")
    (problem,) = err.value.problems
    assert problem.message.startswith("no such spec file. Did you mean 'quickstart'?") and "amss_tau" in problem.message


def test_example_lists_the_shipped_specs_and_copies_one_out(tmp_path, monkeypatch, capsys):
    from mmtune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["example"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listing[:-1]] == [name.removesuffix(".yaml") for name in SHIPPED]
    assert main(["example", "amss_tau"]) == 0
    assert (tmp_path / "amss_tau.yaml").read_bytes() == (REPO / "search_spaces" / "amss_tau.yaml").read_bytes()
    assert main(["example", "amss_tau"]) == 2 and "already exists" in capsys.readouterr().err
    assert main(["example", "amss_tau", "--force"]) == 0
    assert main(["example", "quickstart", "specs/"]) == 0 and (tmp_path / "specs" / "quickstart.yaml").is_file()
    assert main(["example", "quickstart", "mine.yaml"]) == 0 and (tmp_path / "mine.yaml").is_file()
    assert main(["example", "amss_tua"]) == 2
    assert "Did you mean 'amss_tau'?" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the wheel (slow)
def run(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the venv's bin folder, an environment without this checkout on the path)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # a copy: building in the checkout would leave build/ and egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for folder in ("mmtune", "trainables", "search_spaces"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)], cwd=tmp, env=env)
    (wheel,) = (tmp / "dist").glob("mmtune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("mmtune/search_spaces/")) == SHIPPED
    assert not any(n.startswith(("search_spaces/", "trainables/", "tests/")) for n in names)

    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True, env=env).stdout.strip()
    # This environment's packages (torch, ray …) after the venv's own: the wheel's mmtune comes first.
    Path(target, "_mmtune_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         "--ignore-installed", str(wheel)], cwd=tmp, env=env)
    return venv / "bin", env


@pytest.mark.slow
def test_the_installed_package_is_the_wheel_not_the_checkout(installed, tmp_path):
    bin_, env = installed
    where = run([str(bin_ / "python"), "-c", "import mmtune, mmtune.trainables; print(mmtune.__file__)"],
                cwd=tmp_path, env=env).stdout.strip()
    assert str(bin_.parent) in where and str(REPO) not in where


@pytest.mark.slow
def test_example_lists_and_copies_the_shipped_specs_outside_the_repo(installed, tmp_path):
    bin_, env = installed
    listing = run([str(bin_ / "mmtune"), "example"], cwd=tmp_path, env=env).stdout
    assert all(name.removesuffix(".yaml") in listing for name in SHIPPED)
    run([str(bin_ / "mmtune"), "example", "quickstart"], cwd=tmp_path, env=env)
    assert (tmp_path / "quickstart.yaml").read_bytes() == (REPO / "search_spaces" / "quickstart.yaml").read_bytes()
    done = subprocess.run([str(bin_ / "mmtune"), "example", "quickstart"], cwd=tmp_path, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "already exists" in done.stderr  # never overwritten silently
    # the README's repo-relative path works from anywhere, as does the bare name
    out = run([str(bin_ / "mmtune"), "validate", "search_spaces/quickstart.yaml"], cwd=tmp_path, env=env).stdout
    assert "valid — sweep 'quickstart'" in out


@pytest.mark.slow
def test_a_shipped_spec_smoke_runs_by_name_outside_the_repo(installed, tmp_path):
    import pandas as pd

    bin_, env = installed
    run([str(bin_ / "mmtune"), "sweep", "quickstart", "--smoke-test", "--storage", "runs"], cwd=tmp_path, env=env,
        timeout=400)
    trials = pd.read_parquet(tmp_path / "runs" / "quickstart" / "trials.parquet")
    assert len(trials) > 0 and set(trials["status"]) == {"TERMINATED"}
