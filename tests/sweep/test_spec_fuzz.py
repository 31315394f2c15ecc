"""Property: nothing escapes spec validation. Every file ``mmtune validate`` reads — a shipped spec
mutated in its keys, values, structure or bytes — ends as a SweepSpec or a ConfigError (never another
exception), quickly, and with a message of readable length. Parsing only: Ray is never started."""

from __future__ import annotations

import copy
import datetime
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmtune.engine.trial  # noqa: F401  (imported up front: the time bound is on validation, not on torch's import)
import mmtune.trainables  # noqa: F401
from mmtune.errors import ConfigError
from mmtune.sweep.spec import SweepSpec, expand_grid, load_spec, optuna_base

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "search_spaces").glob("*.yaml"))]
SECONDS_PER_SPEC = 5.0  # typical: ~10 ms; the bound catches anything that grows with the input
LONGEST_PROBLEM = 1_000  # characters of one reported problem (path and message)

KEYS = ["name", "method", "dataset", "model", "train", "params", "seeds", "search", "scheduler", "resources",
        "max_concurrent", "max_failures", "checkpoint_every_s", "grid", "choice", "uniform", "loguniform", "int",
        "asha", "grace_period", "reduction_factor", "metric", "mode", "algorithm", "num_samples", "cpu", "gpu",
        "alpha", "epochs", "lr", "n_train", "dim", "seed", "weights", "<<", "fusion", "backbone", "modalities"]
NASTY = [math.nan, math.inf, -math.inf, 2**63, 2**63 - 1, 2**64, 10**30, -(2**63) - 1, 0, -1, 1, 0.0, -0.0, 1e308,
         5e-324, True, False, None, "", "1e-3", "1E5", "x" * 5000, "ogm", "joint", "val_nonexistent", "val_acc/text",
         "synthetic", "grid", "optuna", "test_acc", "/nonexistent.pt", "ü", "\x00", [], {}, [[]], {"a": 1},
         datetime.date(2024, 1, 1)]

leaves = st.one_of(
    # A fresh copy per draw: a mutation that walks into a drawn [[]] or {"a": 1} and appends to it must not
    # change NASTY itself, or later test cases draw different data (Hypothesis: FlakyStrategyDefinition).
    st.sampled_from(NASTY).map(copy.deepcopy), st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.binary(max_size=6), st.booleans(), st.none(),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=8), st.integers(-3, 3), st.booleans(), st.none(), st.floats(0, 2))
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(keys, inner, max_size=4),
        st.builds(lambda kind, items: {kind: items}, st.sampled_from(["grid", "choice", "uniform", "loguniform", "int"]),
                  st.lists(inner, max_size=5)),
    ),
    max_leaves=12,
)


def nested(depth: int, kind: str) -> Any:
    node: Any = 1
    for _ in range(depth):
        node = [node] if kind == "list" else {"a": node}
    return node


def children(node: Any) -> list[tuple[Any, Any]]:
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return list(enumerate(node))
    return []


@st.composite
def mutated_data(draw: st.DrawFn) -> Any:
    """A shipped spec (as data) with 1-4 mutations at random places."""
    data = yaml.safe_load(yaml.safe_dump(draw(st.sampled_from(SHIPPED))))  # a private copy
    for _ in range(draw(st.integers(1, 4))):
        node = data
        while children(node) and draw(st.booleans()):  # walk down to a random container
            _, child = draw(st.sampled_from(children(node)))
            if not children(child):
                break
            node = child
        if not isinstance(node, (dict, list)):
            continue
        op = draw(st.sampled_from(["set", "set", "add", "delete", "rename", "deep"]))
        entries = children(node)
        if op == "add" or not entries:
            value = draw(values)
            if isinstance(node, dict):
                node[draw(keys)] = value
            else:
                node.append(value)
            continue
        key, old = draw(st.sampled_from(entries))
        if op == "set":
            node[key] = draw(values)
        elif op == "deep":
            node[key] = nested(draw(st.integers(1, 120)), draw(st.sampled_from(["list", "dict"])))
        elif op == "delete":
            del node[key]
        elif isinstance(node, dict):
            node[draw(keys)] = node.pop(key)
        else:
            node[key] = [old]
    return data


BOMB = "bomb:\n  a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  {chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


@st.composite
def spec_bytes(draw: st.DrawFn) -> bytes:
    """A mutated spec as the bytes of a file, sometimes damaged at the YAML or byte level as well."""
    try:
        text = yaml.safe_dump(draw(mutated_data()), sort_keys=False, allow_unicode=draw(st.booleans()), width=100)
    except (yaml.YAMLError, RecursionError):
        text = yaml.safe_dump(draw(st.sampled_from(SHIPPED)), sort_keys=False)
    lines = text.splitlines(keepends=True)
    op = draw(st.sampled_from(["none", "none", "none", "insert", "duplicate-line", "truncate", "bomb", "recursive",
                               "brackets", "alias"]))
    if op == "insert":
        at = draw(st.integers(0, len(text)))
        snippet = draw(st.sampled_from(["&a ", "*a", "*nope", ": ", "- ", "{", "[", "!!python/object:os.system ", "<<: ",
                                        "!!binary AAAA", "!!set {a}", "? [a]\n: 1\n", "\t", "%YAML 1.1\n---\n", "---\n",
                                        "'", '"', "\\x", "\ufeff", "2001-12-14t21:59:43.10-05:00"]))
        text = text[:at] + snippet + text[at:]
    elif op == "duplicate-line" and lines:
        i = draw(st.integers(0, len(lines) - 1))
        text = "".join(lines[: i + 1] + lines[i:])
    elif op == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    elif op == "bomb":
        text = BOMB + text
    elif op == "recursive":
        text = text + "loop: &r {a: *r, b: [*r]}\n"
    elif op == "brackets":
        n = draw(st.integers(1, 4000))
        text = text + "deep: " + "[" * n + "]" * n + "\n"
    elif op == "alias":
        text = text.replace("name:", "name: &n", 1) + "params2: *n\n"
    raw = text.encode("utf-8")
    if draw(st.sampled_from([False] * 9 + [True])):  # a stray byte in another encoding, or a NUL
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xe9", b"\xff", b"\x00", b"\xc3", b"\x80\x80"])) + raw[at:]
    return raw


def escape_of(raw: bytes, path: Path) -> str | None:
    """Why validating ``raw`` escaped (an exception other than ConfigError, too slow, an unreadable
    message), or None when it ended as a SweepSpec or a readable ConfigError in time."""
    path.write_bytes(raw)
    start = time.perf_counter()
    try:
        spec = load_spec(path)
        assert isinstance(spec, SweepSpec)
        if spec.algorithm == "grid":
            assert len(expand_grid(spec)) == spec.num_trials()
        else:
            optuna_base(spec)
    except ConfigError as err:
        long = [p for p in err.problems if len(str(p)) > LONGEST_PROBLEM]
        if long:
            return f"a problem of {len(str(long[0]))} characters: {str(long[0])[:200]}…"
    except BaseException as err:  # noqa: BLE001  (what escaped is the finding)
        if isinstance(err, KeyboardInterrupt):
            raise
        return f"{type(err).__name__}: {str(err)[:200]}"
    took = time.perf_counter() - start
    if took > SECONDS_PER_SPEC:
        return f"took {took:.1f} s"
    return None


_FOLDER = tempfile.TemporaryDirectory(prefix="mmtune-fuzz-")


@settings(max_examples=1000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(raw=spec_bytes())
def test_no_spec_escapes_validation(raw: bytes) -> None:
    escape = escape_of(raw, Path(_FOLDER.name) / "spec.yaml")
    assert escape is None, (escape, raw[:2000])
