"""The real-dataset core on a toy dataset in its own on-disk layout: index -> cache -> batches."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mmtune.cli import main
from mmtune.config import hp
from mmtune.data import DATASETS, build_dataset, dataset_config
from mmtune.data.real import (
    IMAGENET_MEAN, IMAGENET_STD, REAL_DATASETS, Index, Layout, Modality, RealDataConfig, RealDataset, Sample,
    cache_path, load_real, prepare, stratified_split,
)
from mmtune.engine.trial import Trial, parse_trial_config
from mmtune.errors import ConfigError

FRAMES = 4  # stored frames per clip (K); 2 are sampled per item


@dataclass(frozen=True)
class ToyConfig(RealDataConfig):
    name: str = hp("toy", doc="dataset name")
    size: int = hp(8, low=2, doc="spatial size")


class Toy(RealDataset):
    """root/spec/<key>.npy (1, S, S) float32 and root/frames/<key>/<j>.npy (3, S, S) uint8, label = key's last digit."""

    name = "toy"
    Config = ToyConfig
    layout = "<root>/\n  spec/<key>.npy\n  frames/<key>/<j>.npy\n  test.txt (keys of the test split)"

    @classmethod
    def index(cls, cfg: ToyConfig) -> Index:
        layout = Layout(cfg, cls.layout)
        layout.require("spec")
        layout.require("frames")
        layout.require("test.txt", kind="file")
        layout.check()
        test_keys = set(layout.path("test.txt").read_text().split())
        splits: dict[str, list[Sample]] = {"train": [], "test": []}
        for f in sorted(layout.path("spec").glob("*.npy")):
            key = f.stem
            frames = layout.path("frames", key)
            if not frames.is_dir():
                layout.missing(frames, key)
            splits["test" if key in test_keys else "train"].append(Sample(key, int(key[-1]), {"audio": f, "video": frames}))
        modalities = {
            "audio": Modality((1, cfg.size, cfg.size), "float16"),
            "video": Modality((FRAMES, 3, cfg.size, cfg.size), "uint8", frames=2, normalize=(IMAGENET_MEAN, IMAGENET_STD)),
        }
        return Index(splits, ["c0", "c1", "c2"], modalities, missing=layout.missing_files)

    @classmethod
    def decode(cls, cfg: ToyConfig, modality: str, source: Path) -> np.ndarray:
        if modality == "audio":
            return np.load(source)
        return np.stack([np.load(p) for p in sorted(source.glob("*.npy"))])


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    REAL_DATASETS["toy"] = Toy
    DATASETS["toy"] = (ToyConfig, load_real)
    yield
    REAL_DATASETS.pop("toy")
    DATASETS.pop("toy")


def write_toy(root: Path, n: int = 40, size: int = 8) -> Path:
    rng = np.random.default_rng(0)
    (root / "spec").mkdir(parents=True)
    keys = [f"clip{i:03d}_{i % 3}" for i in range(n)]
    for i, key in enumerate(keys):
        np.save(root / "spec" / f"{key}.npy", rng.normal(size=(1, size, size)).astype(np.float32))
        (root / "frames" / key).mkdir(parents=True)
        for j in range(1 + i % 5):  # 1..5 frames: more than K for some clips
            np.save(root / "frames" / key / f"{j}.npy", np.full((3, size, size), 10 * j + i % 7, dtype=np.uint8))
    (root / "test.txt").write_text("\n".join(keys[-n // 4:]))
    return root


def toy_config(root: Path, **extra) -> RealDataConfig:
    return dataset_config({"name": "toy", "root": str(root), "workers": 0, **extra})


def test_stratified_split_is_seeded_and_per_class():
    labels = [0] * 20 + [1] * 10 + [2] * 1
    keep, held = stratified_split(labels, 0.2, seed=3)
    assert sorted(keep + held) == list(range(31))
    assert [labels[i] for i in held].count(0) == 4 and [labels[i] for i in held].count(1) == 2
    assert 30 in keep  # a singleton class is never held out
    assert stratified_split(labels, 0.2, seed=3) == (keep, held)
    assert stratified_split(labels, 0.2, seed=4)[1] != held


def test_cache_shapes_splits_and_val_carve_out(tmp_path):
    cfg = toy_config(write_toy(tmp_path / "toy"))
    data = build_dataset(cfg, "cpu")
    assert data.modalities == ["audio", "video"] and data.num_classes == 3
    assert data.input_shapes == {"audio": (1, 8, 8), "video": (2, 3, 8, 8)}
    assert (len(data.train), len(data.val), len(data.test)) == (27, 3, 10)
    assert "carved from train" in data.info["splits"]["val"]["source"]
    folder = Path(data.info["cache"])
    keys = {s: (folder / s / "keys.txt").read_text().split() for s in ("train", "val", "test")}
    assert not set(keys["train"]) & set(keys["val"]) and not set(keys["val"]) & set(keys["test"])
    assert json.loads((folder / "meta.json").read_text())["splits"]["test"]["n"] == 10
    counts = np.load(folder / "train" / "video.count.npy")
    assert counts.min() == 1 and counts.max() == FRAMES  # clips with 5 frames keep K = 4


def test_batches_normalise_frames_on_device_and_sample_real_frames(tmp_path):
    data = build_dataset(toy_config(write_toy(tmp_path / "toy")), "cpu")
    folder = Path(data.info["cache"])
    raw = np.load(folder / "train" / "video.npy")
    counts = np.load(folder / "train" / "video.count.npy")
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    seen = 0
    for batch in data.train.batches(8, generator=torch.Generator().manual_seed(0)):
        video = batch.inputs["video"]
        assert video.dtype == torch.float32 and batch.inputs["audio"].dtype == torch.float32
        pixel = (video[:, :, :, 0, 0] * std.view(1, 1, 3) + mean.view(1, 1, 3)) * 255  # (B, 2, 3)
        stored = {int(round(v)) for v in pixel[:, :, 0].flatten().tolist()}
        real = {int(raw[i, j, 0, 0, 0]) for i in range(len(raw)) for j in range(counts[i])}
        assert stored <= real  # only real frames are sampled, never the padding of short clips
        seen += len(batch)
    assert seen == 27


def test_same_seed_same_batches_whatever_the_worker_count(tmp_path):
    root = write_toy(tmp_path / "toy")

    def first_batches(workers):
        data = build_dataset(toy_config(root, workers=workers), "cpu")
        out = [b for _, b in zip(range(3), data.train.batches(5, generator=torch.Generator().manual_seed(7)))]
        return [(b.labels, b.inputs["video"], b.inputs["audio"]) for b in out]

    for a, b in zip(first_batches(0), first_batches(2), strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)


def test_evaluation_frames_are_fixed(tmp_path):
    data = build_dataset(toy_config(write_toy(tmp_path / "toy")), "cpu")
    a = torch.cat([b.inputs["video"] for b in data.test.batches(4)])
    b = torch.cat([b.inputs["video"] for b in data.test.batches(3)])
    assert torch.equal(a, b)


def test_prepared_cache_is_reused_and_keyed_by_content_settings(tmp_path):
    root = write_toy(tmp_path / "toy")
    cfg = toy_config(root)
    folder = prepare(cfg)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert prepare(toy_config(root, workers=3, flip=False)) == folder  # runtime knobs share the cache
    assert (folder / "meta.json").stat().st_mtime_ns == stamp
    assert cache_path(toy_config(root, size=4)) != folder  # a content knob does not
    assert cache_path(toy_config(root, val_fraction=0.2)) != folder


def test_wrong_root_names_every_expected_entry(tmp_path):
    (tmp_path / "spec").mkdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(toy_config(tmp_path), "cpu")
    assert "no folder 'frames', no file 'test.txt'" in str(err.value) and "Expected layout" in str(err.value)
    with pytest.raises(ConfigError, match="is not a folder"):
        build_dataset(toy_config(tmp_path / "nowhere"), "cpu")


def test_root_is_required():
    with pytest.raises(ConfigError, match="dataset.root"):
        dataset_config({"name": "toy"})


def test_missing_files_are_counted_and_named_or_skipped(tmp_path):
    root = write_toy(tmp_path / "toy")
    for key in ("clip001_1", "clip002_2"):
        for f in (root / "frames" / key).iterdir():
            f.unlink()
        (root / "frames" / key).rmdir()
    with pytest.raises(ConfigError) as err:
        build_dataset(toy_config(root), "cpu")
    text = str(err.value)
    assert "2 missing file(s)" in text and "clip001_1" in text and "skip_missing=true" in text
    assert not any(cache_path(toy_config(root)).parent.glob("toy-*"))  # nothing half-written
    data = build_dataset(toy_config(root, skip_missing=True), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 38


def test_corrupt_files_are_found_while_preparing(tmp_path):
    root = write_toy(tmp_path / "toy")
    (root / "spec" / "clip005_2.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ConfigError) as err:
        build_dataset(toy_config(root, workers=0), "cpu")
    assert "1 unreadable file(s)" in str(err.value) and "clip005_2.npy" in str(err.value)
    data = build_dataset(toy_config(root, skip_missing=True), "cpu")
    assert len(data.train) + len(data.val) + len(data.test) == 39


def test_one_epoch_trains_from_the_cache(tmp_path):
    root = write_toy(tmp_path / "toy")
    spec = parse_trial_config({"method": "joint", "dataset": {"name": "toy", "root": str(root), "workers": 1},
                               "model": {"backbone": "cnn"}, "train": {"epochs": 1, "batch_size": 8}})
    metrics = Trial(spec).step()
    assert np.isfinite(metrics["train_loss"]) and 0.0 <= metrics["val_acc"] <= 1.0


def test_prepare_cli(tmp_path, capsys):
    root = write_toy(tmp_path / "toy")
    assert main(["prepare", "toy", "--root", str(root), "size=8", "--workers", "2"]) == 0
    assert "MiB in" in capsys.readouterr().out
    assert main(["prepare", "toy", "--root", str(root)]) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main(["prepare", "synthetic", "--root", str(root)]) == 2
    assert "not a real dataset" in capsys.readouterr().err


def test_a_sweep_prepares_each_real_dataset_once_before_trials_start(tmp_path):
    from mmtune.sweep.spec import parse_spec
    from mmtune.sweep.tuner import _prepare_datasets

    root = write_toy(tmp_path / "toy")
    spec = parse_spec({"name": "toy", "method": ["joint", "ogm"], "seeds": [0, 1],
                       "dataset": {"name": "toy", "root": str(root), "val_fraction": {"grid": [0.1, 0.2]}, "workers": 0}})
    _prepare_datasets(spec, console=None)
    assert sorted(p.name.split("-")[0] for p in (root / ".mmtune_cache").glob("toy-*")) == ["toy", "toy"]
    for fraction in (0.1, 0.2):
        assert (cache_path(toy_config(root, val_fraction=fraction)) / "meta.json").is_file()


def test_a_second_pass_cannot_start_inside_another(tmp_path):
    data = build_dataset(toy_config(write_toy(tmp_path / "toy"), workers=1), "cpu")
    train = data.train.batches(4, generator=torch.Generator().manual_seed(0))
    next(train)
    with pytest.raises(RuntimeError, match="still running"):
        next(iter(data.val.batches(4)))
    assert sum(len(b) for b in train) == 27 - 4  # the training pass is intact


def test_a_flip_mirrors_frames_and_inverts_the_declared_channels(tmp_path):
    from mmtune.data.real import _Reader

    folder = tmp_path / "cache"
    (folder / "train").mkdir(parents=True)
    frames = np.arange(2 * 3 * 2 * 2 * 3, dtype=np.uint8).reshape(2, 3, 2, 2, 3)  # (N, K, C, H, W)
    np.save(folder / "train" / "flow.npy", frames)
    np.save(folder / "train" / "labels.npy", np.zeros(2, dtype=np.int64))
    reader = _Reader(folder, {"flow": Modality((3, 2, 2, 3), "uint8", frames=1, flip_invert=(0,))})
    out = reader[("train", np.array([0, 1]), {"flow": np.array([[1], [2]])}, np.array([True, False]))]["flow"].numpy()
    assert np.array_equal(out[0, 0, 0], 255 - frames[0, 1, 0, :, ::-1])  # u: mirrored and negated
    assert np.array_equal(out[0, 0, 1], frames[0, 1, 1, :, ::-1])  # v: mirrored only
    assert np.array_equal(out[1, 0], frames[1, 2])  # not flipped
    with pytest.raises(ValueError, match="1..K frames"):
        Modality((3, 2, 2, 3), "uint8", frames=4)


def test_a_dataset_without_index_or_decode_is_refused_at_registration():
    from mmtune.data.real import register_dataset

    class Half(RealDataset):
        name = "half"
        Config = ToyConfig
        layout = ""

        @classmethod
        def index(cls, cfg):
            return Index({}, [], {})

    with pytest.raises(TypeError, match="does not define decode"):
        register_dataset(Half)
    assert "half" not in REAL_DATASETS


# -- dataset.resident: the prepared cache held on the training device ---------------------------------


def all_batches(data, seed: int = 3) -> list:
    """Every batch of a shuffled training pass, a subset's pass, and the evaluation passes, as plain tensors."""
    passes = [data.train.batches(6, generator=torch.Generator().manual_seed(seed)),
              data.train.subset(torch.tensor([5, 0, 9, 2])).batches(3, generator=torch.Generator().manual_seed(seed)),
              data.val.batches(2), data.test.batches(4)]
    return [(b.labels, b.index, b.inputs["audio"], b.inputs["video"]) for p in passes for b in p]


def test_a_resident_cache_serves_the_loaders_batches(tmp_path):
    root = write_toy(tmp_path / "toy")
    on_device = build_dataset(toy_config(root, resident=True), "cpu")
    loader = build_dataset(toy_config(root, resident=False, workers=1), "cpu")
    assert on_device.info["resident"] is True and loader.info["resident"] is False
    a, b = all_batches(on_device), all_batches(loader)
    assert len(a) == len(b) == 5 + 2 + 2 + 3
    for x, y in zip(a, b, strict=True):
        for u, v in zip(x, y, strict=True):
            assert u.dtype == v.dtype and torch.equal(u, v)


def test_a_resident_cache_flips_and_inverts_as_the_reader_does(tmp_path):
    from mmtune.data.real import _Reader, _Resident

    folder = tmp_path / "cache"
    (folder / "train").mkdir(parents=True)
    np.save(folder / "train" / "flow.npy", np.arange(3 * 3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 3, 2, 2, 3))
    np.save(folder / "train" / "labels.npy", np.arange(3, dtype=np.int64))
    modalities = {"flow": Modality((3, 2, 2, 3), "uint8", frames=2, flip_invert=(0,))}
    item = ("train", np.array([2, 0, 1]), {"flow": np.array([[0, 2], [1, 1], [0, 1]])}, np.array([True, False, True]))
    disk, device = _Reader(folder, modalities)[item], _Resident(folder, modalities, torch.device("cpu")).read(*item)
    assert disk.keys() == device.keys() and all(torch.equal(disk[k], device[k]) for k in disk)


def test_resident_auto_is_off_on_the_cpu_and_a_trial_says_what_ran(tmp_path):
    root = write_toy(tmp_path / "toy")
    assert build_dataset(toy_config(root), "cpu").info["resident"] is False  # auto
    with pytest.raises(ConfigError, match=r"resident.*must be one of"):
        toy_config(root, resident="yes")

    def run(resident):
        spec = parse_trial_config({"method": "ogm", "dataset": {"name": "toy", "root": str(root), "workers": 0,
                                                                "resident": resident},
                                   "model": {"backbone": "cnn"}, "train": {"epochs": 1, "batch_size": 8, "device": "cpu"}})
        trial = Trial(spec)
        return trial.resolved, {k: v for k, v in trial.step().items() if k not in ("epoch_s", "samples_per_s")}

    (resolved_a, a), (resolved_b, b) = run(True), run(False)
    assert resolved_a["resident"] is True and resolved_b["resident"] is False
    assert a == b  # the same samples, frames and flips in the same order: the same 1-epoch trial


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_resident_cache_trial_runs_on_cuda(tmp_path, monkeypatch):
    root = write_toy(tmp_path / "toy")
    data = build_dataset(toy_config(root), "cuda")
    assert data.info["resident"] is True  # auto: a few KB fit in any GPU's free memory
    batch = next(iter(data.train.batches(8, generator=torch.Generator().manual_seed(0))))
    assert batch.inputs["video"].device.type == "cuda" and batch.labels.device.type == "cuda"
    all_batches(data)  # every split on the GPU now; from here no batch may read a split from disk again
    reads = []
    real_load = np.load
    monkeypatch.setattr(np, "load", lambda *args, **kwargs: reads.append(args[0]) or real_load(*args, **kwargs))
    all_batches(data)
    monkeypatch.undo()
    assert reads == [], reads
    spec = parse_trial_config({"method": "ogm", "dataset": {"name": "toy", "root": str(root)},
                               "model": {"backbone": "cnn"}, "train": {"epochs": 1, "batch_size": 8, "device": "cuda"}})
    trial = Trial(spec)
    metrics = trial.step()
    assert trial.resolved["resident"] is True and np.isfinite(metrics["train_loss"])
    cpu = build_dataset(toy_config(root, resident=True), "cpu")
    for x, y in zip(all_batches(data), all_batches(cpu), strict=True):
        assert all(torch.equal(u.cpu(), v) for u, v in zip(x, y, strict=True))
