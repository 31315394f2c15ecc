"""Golden metrics of every shipped variant: fixed-seed 3-epoch runs, recorded before a refactor.

``python tests/golden/golden.py record [NAME ...]`` writes ``metrics.json`` beside this file (every
variant, or re-records only the named ones: a fix that changes a variant on purpose);
``python tests/golden/golden.py check`` reruns every variant and prints the ones that differ.
``tests/engine/test_golden.py`` runs the same comparison in the suite. A variant is the config that
``mmtune run <method> <overrides> train.epochs=3 seed=0`` builds, run in-process (no console).

The variants cover each method at its defaults and the knobs that change which code runs (AMSS's
sampling, unit, scope, Fisher, formula and plus variants; OGM-GE, OGM*, OPM's code variants; AIM's
ablations), the five fusions, the conv/transformer backbones AMSS masks by channel and head, and a
CREMA-D fixture in the release layout with ResNet-18 encoders (tiny images, so it runs in seconds).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
GOLDEN = HERE / "metrics.json"
TIMING = ("epoch_s", "samples_per_s")

# name → (method, overrides as dotted keys)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "joint": ("joint", {}),
    "unimodal-video": ("unimodal", {"params.modality": "video"}),
    "ogm": ("ogm", {}),
    "ogm-ge": ("ogm", {"params.ge": True}),
    "ogm-cvpr2022": ("ogm", {"params.k_form": "cvpr2022", "params.ge": True}),
    "ogm-boost": ("ogm", {"params.variant": "boost"}),
    "ogm-difference-sigmoid": ("ogm", {"params.discrepancy": "difference", "params.z": "sigmoid"}),
    "opm": ("opm", {}),
    "opm-code": ("opm", {"params.p_exe": 0.7, "params.rescale": "theta_all"}),
    "opm-inverted": ("opm", {"params.rescale": "inverted", "params.gamma": [0.3, 0.7]}),
    "opm+ogm": ("opm+ogm", {}),
    "amss": ("amss", {}),
    "amss+": ("amss", {"params.plus": True}),
    "amss-uniform": ("amss", {"params.sampling": "uniform"}),
    "amss-element": ("amss", {"params.mask_unit": "element"}),
    "amss-per-sample": ("amss", {"params.fisher": "per_sample"}),
    "amss-code": ("amss", {"params.formula": "code"}),
    "amss-scope-classifier": ("amss", {"params.mask_scope": "classifier"}),
    "amss-scope-both": ("amss", {"params.mask_scope": "both"}),
    "amss-fixed": ("amss", {"params.fixed_p": {"audio": 0.2, "video": 1.0}, "params.sampling": "uniform"}),
    "amss-late-both": ("amss", {"model.fusion": "late", "params.mask_scope": "both"}),
    "amss-cnn": ("amss", {"model.backbone": "cnn", "dataset.shape": "shaped", "dataset.n_train": 256,
                          "dataset.n_val": 64, "dataset.n_test": 64, "dataset.image_size": 16}),
    "amss+-transformer": ("amss", {"params.plus": True, "model.backbone": "transformer"}),
    "aim": ("aim", {}),
    "aim-wo-pam": ("aim", {"params.pam": False}),
    "aim-wo-dam": ("aim", {"params.dam": False}),
    "aim-label": ("aim", {"params.prototypes": "label"}),
    "aim-dap-joint": ("aim", {"params.dap_cls": "joint", "params.start_epoch": 2}),
    "joint-sum": ("joint", {"model.fusion": "sum"}),
    "ogm-ge-late": ("ogm", {"params.ge": True, "model.fusion": "late"}),
    "opm-film": ("opm", {"model.fusion": "film"}),
    "ogm-gated": ("ogm", {"model.fusion": "gated"}),
    "opm-probe": ("opm", {"train.probe": True}),
    # Added with the methods contract v2 (recorded then, not at 8b18039):
    "opm-timing-code": ("opm", {"params.timing": "code", "params.p_exe": 0.7, "params.rescale": "theta_all"}),
    "opm+amss": ("opm+amss", {"params.opm.lam": 0.3}),
    "aim+ogm": ("aim+ogm", {"params.aim.start_epoch": 2}),
    "pmr": ("pmr", {}),
    "pmr-code": ("pmr", {"params.coeff": "code", "params.entropy": False}),
    "agm": ("agm", {}),
    "agm-inputs-3mod": ("agm", {"params.padding": "inputs", "dataset.modalities": ["audio", "video", "text"]}),
    "ume": ("ume", {"train.epochs": 4}),
}
# Real-dataset fixture (CREMA-D layout) with ResNet-18 for both modalities.
CREMAD_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "cremad-resnet18-joint": ("joint", {}),
    "cremad-resnet18-ogm-ge-conv": ("ogm", {"params.ge": True, "params.scope": "conv"}),
    "cremad-resnet18-opm": ("opm", {}),
    "cremad-resnet18-amss+": ("amss", {"params.plus": True}),
    "cremad-resnet18-aim": ("aim", {"params.start_epoch": 2, "train.batch_size": 12}),  # AIM's subset: 3 rows
}


def _nested(method: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"method": method, "seed": 0, "train": {"epochs": 3}}
    for key, value in overrides.items():
        *path, leaf = key.split(".", 2) if key.startswith("params.") else key.split(".")
        node = config
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def configs(cremad_root: Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, (method, overrides) in VARIANTS.items():
        config = _nested(method, overrides)
        # Recorded on the synthetic default of the time, which is the preset v1 since issue 20.
        config.setdefault("dataset", {}).setdefault("preset", "v1")
        yield name, config
    if cremad_root is not None:
        for name, (method, overrides) in CREMAD_VARIANTS.items():
            config = _nested(method, overrides)
            config["dataset"] = {"name": "cremad", "root": str(cremad_root), "workers": 0, "image_size": 32}
            config.setdefault("model", {})["backbone"] = "resnet18"
            config["train"].setdefault("batch_size", 8)
            yield name, config


def run(config: Mapping[str, Any]) -> list[dict[str, float]]:
    """Every epoch's metrics of one trial, timing keys dropped."""
    import mmtune.trainables  # noqa: F401  registers the methods
    from mmtune.engine.trial import Trial, parse_trial_config

    trial = Trial(parse_trial_config(config))
    out = []
    for _ in range(trial.spec.train.epochs):
        metrics = trial.step()
        out.append({k: v for k, v in metrics.items() if k not in TIMING})
    return out


def write_cremad_fixture(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.data.test_cremad import write_cremad

    return write_cremad(folder / "cremad", csv="ogm")


def record_all(names: set[str] | None = None) -> dict[str, list[dict[str, float]]]:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_cremad_fixture(Path(tmp))
        return {name: run(config) for name, config in configs(root) if names is None or name in names}


def differences(expected: list[dict[str, float]], got: list[dict[str, float]], *, rel: float = 0.0) -> list[str]:
    """Keys whose values differ (beyond ``rel``) per epoch; missing and new keys too."""
    out = []
    for epoch, (a, b) in enumerate(zip(expected, got, strict=True), start=1):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"epoch {epoch} {key}: {'missing' if key not in b else 'new'}")
            elif not math.isclose(a[key], b[key], rel_tol=rel, abs_tol=rel) and not (a[key] != a[key] and b[key] != b[key]):
                out.append(f"epoch {epoch} {key}: {a[key]!r} -> {b[key]!r}")
    return out


def main(argv: list[str]) -> int:
    verb = argv[0] if argv else "check"
    if verb == "record":  # record [NAME ...]: all variants, or re-record only the named ones
        names = set(argv[1:]) or None
        golden = json.loads(GOLDEN.read_text()) if names and GOLDEN.exists() else {}
        golden.update(record_all(names))
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
        print(f"wrote {GOLDEN} ({', '.join(sorted(names)) if names else 'every variant'})")
        return 0
    golden = json.loads(GOLDEN.read_text())
    names = set(argv[1:]) or None
    got = record_all(names)
    bad = 0
    for name, metrics in got.items():
        diff = differences(golden[name], metrics) if name in golden else ["not in the golden file"]
        bad += bool(diff)
        print(f"{'DIFF' if diff else 'same'} {name}" + "".join(f"\n    {d}" for d in diff[:8]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
