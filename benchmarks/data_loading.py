"""Data-loading time per epoch of ``BatchSource`` over an ``ImageFolder`` of small files, with workers.

    python benchmarks/data_loading.py                       # 3000 16x16 PNGs, 2 workers, 4 epochs
    python benchmarks/data_loading.py --images 500 --epochs 2 --json out.json

Writes a folder of random PNG files (10 classes) to a temporary directory,
then draws every batch of a few epochs from ``BatchSource`` (as ``Trainer.fit``
does, without training) and reports the wall-clock seconds of each epoch. The
first epoch includes starting the workers; with workers kept across epochs
the later ones do not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from shortcut_fast.data.batches import BatchSource
from shortcut_fast.data.datasets import ImageFolder


def write_images(root: Path, count: int, size: int, classes: int = 10) -> None:
    """``count`` random RGB PNG files of ``size`` x ``size`` in ``classes`` class folders."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")


def epoch_seconds(dataset, batch_size: int, workers: int, epochs: int) -> tuple[list[float], list[float]]:
    """Seconds of each epoch of full batches from a fresh ``BatchSource``, and of each epoch's first batch."""
    source = BatchSource(dataset, batch_size, seed=0, num_workers=workers)
    per_epoch = len(dataset) // batch_size
    whole, first = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        next(source)
        first.append(time.perf_counter() - start)
        for _ in range(per_epoch - 1):
            next(source)
        whole.append(time.perf_counter() - start)
    return whole, first


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print and return ``{"settings", "epoch_seconds", "first_batch_seconds"}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.images, args.size)
        dataset = ImageFolder(tmp, args.size, flip=True)
        whole, first = epoch_seconds(dataset, args.batch, args.workers, args.epochs)
    results = {"settings": vars(args), "epoch_seconds": whole, "first_batch_seconds": first}
    for epoch, (seconds, wait) in enumerate(zip(whole, first, strict=True)):
        print(f"epoch {epoch}: {seconds:.3f} s (first batch after {wait:.3f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
