"""Real datasets: what `mmtune prepare` buys — decoding once vs reading the cache every epoch.

Writes a CREMA-D-shaped dataset in its real on-disk layout (``AudioWAV/<clip>.wav`` 16 kHz mono,
2–4 s; ``Image-01-FPS/<clip>/*.jpg`` 2–4 frames of 640 × 360, the size of the release's videos),
then measures, for the same clips and the same batches:

* **prepare** — the first run: index, decode every WAV into the paper's 257 × 299 log-spectrogram
  and every frame to 224 × 224, write the cache (``--workers`` processes);
* **reuse** — the next run with the same dataset settings: ``build_dataset`` finds the cache;
* **one epoch of batches** (train split, batch 64, what the training loop iterates) read from the
  cache with the DataLoader (``dataset.workers`` processes, memmapped arrays), versus decoding the
  same media files per epoch as a loader without a cache would (decode time per sample × samples).

The speed-up reported is decode-per-epoch / cached-read-per-epoch: how much faster every epoch after
the first is, and how much less CPU the data side takes from training.

    .venv/bin/python bench/prepare_cache.py [--clips 300] [--workers 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmtune.data import build_dataset, dataset_config  # noqa: E402
from mmtune.data.images import list_frames, read_image  # noqa: E402
from mmtune.data.real import REAL_DATASETS, cache_path, prepare  # noqa: E402

EMOTIONS = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")


def write_cremad(root: Path, clips: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    (root / "AudioWAV").mkdir(parents=True)
    for i in range(clips):
        clip = f"{1001 + i // 6}_{('IEO', 'TIE', 'IOM')[i % 3]}_{EMOTIONS[i % 6]}_XX"
        seconds = rng.uniform(2.0, 4.0)
        samples = (rng.normal(0, 0.1, int(16_000 * seconds)) * 32767).clip(-32768, 32767).astype("<i2")
        with wave.open(str(root / "AudioWAV" / f"{clip}.wav"), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(16_000)
            f.writeframes(samples.tobytes())
        frames = root / "Image-01-FPS" / clip
        frames.mkdir(parents=True)
        for j in range(int(math.ceil(seconds))):
            pixels = rng.integers(0, 255, (360, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(frames / f"{j:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=300, help="clips in the generated dataset (default 300)")
    parser.add_argument("--workers", type=int, default=2, help="prepare processes and DataLoader workers (default 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print the numbers as one JSON line")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="mmtune-prepare-bench-"))
    try:
        root = tmp / "CREMA-D"
        start = time.perf_counter()
        write_cremad(root, args.clips)
        write_s = time.perf_counter() - start
        cfg = dataset_config({"name": "cremad", "root": str(root), "workers": args.workers})

        start = time.perf_counter()
        prepare(cfg, workers=args.workers)
        prepare_s = time.perf_counter() - start

        start = time.perf_counter()
        data = build_dataset(cfg, "cpu")
        reuse_s = time.perf_counter() - start

        generator = torch.Generator().manual_seed(0)
        read: dict[int, float] = {}
        for workers in sorted({0, args.workers}):
            loaded = build_dataset(cfg.replace(workers=workers), "cpu")
            for _ in loaded.train.batches(args.batch_size, generator=generator):  # start the worker pool
                pass
            start = time.perf_counter()
            n = 0
            for batch in loaded.train.batches(args.batch_size, generator=generator):
                n += len(batch)
            read[workers] = time.perf_counter() - start
        read_epoch_s = min(read.values())

        # Decoding per epoch, as a loader without a cache does: the clip's WAV into the spectrogram
        # and the ONE frame it samples (not all K stored frames), timed on the same training clips.
        dataset = REAL_DATASETS["cremad"]
        index = dataset.index(cfg)
        samples = index.splits["train"][: min(64, len(index.splits["train"]))]
        start = time.perf_counter()
        for s in samples:
            dataset.decode(cfg, "audio", s.sources["audio"])
            read_image(list_frames(root / "Image-01-FPS" / s.key)[0], cfg.image_size)
        decode_per_sample = (time.perf_counter() - start) / len(samples)
        decode_epoch_s = decode_per_sample * n / max(args.workers, 1)  # as if spread over the same workers

        size = sum(f.stat().st_size for f in cache_path(cfg).rglob("*") if f.is_file())
        out = {
            "clips": args.clips, "train_samples": n, "workers": args.workers, "write_fixture_s": round(write_s, 2),
            "prepare_s": round(prepare_s, 2), "reuse_s": round(reuse_s, 4),
            "cached_epoch_s": round(read_epoch_s, 3), "cached_samples_per_s": round(n / read_epoch_s, 1),
            "cached_samples_per_s_by_workers": {w: round(n / t, 1) for w, t in read.items()},
            "decode_epoch_s": round(decode_epoch_s, 3), "decode_ms_per_sample": round(1000 * decode_per_sample, 2),
            "speedup_per_epoch": round(decode_epoch_s / read_epoch_s, 1),
            "cache_mib": round(size / 2**20, 1), "input_shapes": {m: list(s) for m, s in data.input_shapes.items()},
        }
        if args.json:
            print(json.dumps(out))
            return
        print(f"CREMA-D layout, {args.clips} clips ({n} train), {args.workers} workers, shapes {out['input_shapes']}")
        print(f"  first run (prepare: decode + write cache) {prepare_s:8.2f} s   cache {out['cache_mib']} MiB")
        print(f"  next run finds the cache                  {reuse_s:8.4f} s")
        by = ", ".join(f"{v} with workers={w}" for w, v in out["cached_samples_per_s_by_workers"].items())
        print(f"  one epoch from the cache                  {read_epoch_s:8.3f} s   (samples/s: {by})")
        print(f"  one epoch decoding the files              {decode_epoch_s:8.3f} s   ({out['decode_ms_per_sample']} ms/sample/worker)")
        print(f"  speed-up per epoch                        {out['speedup_per_epoch']:8.1f} ×")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
