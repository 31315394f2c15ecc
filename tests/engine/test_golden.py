"""Every shipped variant still produces its recorded golden metrics (tests/golden/).

The goldens were recorded at commit 8b18039, before the methods-contract refactor
(``python tests/golden/golden.py record``). Fidelity fixes that change a variant on purpose re-record
that variant alone, in the commit that makes the fix, and say so there.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.golden import golden  # noqa: E402

GOLDEN = json.loads(golden.GOLDEN.read_text())


@pytest.fixture(scope="module")
def cremad_root():
    with tempfile.TemporaryDirectory() as tmp:
        yield golden.write_cremad_fixture(Path(tmp))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_variant_matches_its_golden_metrics(name, cremad_root):
    config = dict(golden.configs(cremad_root))[name]
    diff = golden.differences(GOLDEN[name], golden.run(config), rel=1e-6)
    assert not diff, f"{name} changed:\n" + "\n".join(diff[:10])
