"""Exact resume with augmentation: flips keyed by (seed, epoch, index), one DataLoader with kept workers."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

import shortcut_fast as sf
from shortcut_fast.data.batches import BatchSource
from shortcut_fast.data.datasets import ImageFolder

pytestmark = pytest.mark.usefixtures("single_thread")

IMAGES, SIZE, BATCH = 12, 4, 4  # 3 batches per epoch
BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "data_loading.py"


def image_folder(root):
    """``IMAGES`` asymmetric 4x4 RGB files in two classes (a left-right flip changes every one)."""
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        folder = root / f"c{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def expected_batches(root, dataset_seed: int, order_seed: int, epochs: int):
    """The batches of ``epochs`` epochs built by hand: the documented permutation, each item indexed directly."""
    reference = ImageFolder(root, SIZE, seed=dataset_seed)
    out = []
    for epoch in range(epochs):
        perm = torch.randperm(IMAGES, generator=torch.Generator().manual_seed(order_seed * 1_000_003 + epoch))
        reference.set_epoch(epoch)
        for start in range(0, IMAGES - BATCH + 1, BATCH):
            items = [reference[int(i)] for i in perm[start : start + BATCH]]
            out.append((torch.stack([x for x, _ in items]), [y for _, y in items]))
    return out


def test_flips_are_a_function_of_seed_epoch_and_index(tmp_path):
    root = image_folder(tmp_path)
    data = ImageFolder(root, SIZE)
    plain = ImageFolder(root, SIZE, flip=False)
    pattern = []
    for epoch in range(8):
        data.set_epoch(epoch)
        for i in range(IMAGES):
            x, want = data[i][0], plain[i][0]
            assert torch.equal(x, want.flip(-1) if data.is_flipped(i) else want)
            assert torch.equal(data[i][0], x)  # indexing again draws the same flip
            pattern.append(data.is_flipped(i))
    assert 0.3 < sum(pattern) / len(pattern) < 0.7
    other_seed = ImageFolder(root, SIZE, seed=1)
    assert [other_seed.is_flipped(i) for i in range(IMAGES)] != pattern[:IMAGES]
    assert not any(plain.is_flipped(i) for i in range(IMAGES))
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        data.set_epoch(-1)
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        ImageFolder(root, SIZE, seed=1.5)


@pytest.mark.parametrize("workers", [0, 2])
def test_batch_source_flips_do_not_depend_on_workers(tmp_path, workers):
    root = image_folder(tmp_path)
    source = BatchSource(ImageFolder(root, SIZE, seed=3), BATCH, seed=7, num_workers=workers)
    want = expected_batches(root, dataset_seed=3, order_seed=7, epochs=3)
    for wx, wy in want:
        x, y = next(source)
        assert torch.equal(x, wx) and y.tolist() == wy


def flip_run(root, workers: int, checkpoint_dir=None):
    """A tiny class-conditional DiT trained on the flipped image folder, logging every step."""
    torch.manual_seed(0)
    model = sf.ShortcutDiT(
        input_size=SIZE,
        in_channels=3,
        patch_size=2,
        hidden_size=16,
        depth=1,
        num_heads=2,
        num_classes=2,
        min_step=1 / 8,
    )
    config = sf.TrainConfig(
        batch_size=BATCH,
        lr=1e-2,
        ema_decay=0.9,
        log_every=1,
        num_workers=workers,
        seed=4,
        progress=False,
        checkpoint_dir=checkpoint_dir,
        shortcut=sf.ShortcutConfig(min_step=1 / 8),
    )
    return sf.Trainer(model, ImageFolder(root, SIZE), config)


def losses(history):
    """The logged values of each step, without the wall-clock seconds."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def weights(trainer):
    return {
        **{f"model.{k}": v for k, v in trainer.model.state_dict().items()},
        **{f"ema.{k}": v for k, v in trainer.ema_model.state_dict().items()},
    }


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_with_flips_is_bitwise_the_uninterrupted_run(tmp_path, workers):
    root = image_folder(tmp_path / "images")
    straight = flip_run(root, workers)
    straight.fit(8)  # 3 batches an epoch: the save at step 4 falls inside epoch 1
    first = flip_run(root, workers, checkpoint_dir=str(tmp_path / "ck"))
    first.fit(4)
    resumed = sf.Trainer.resume(tmp_path / "ck", ImageFolder(root, SIZE), progress=False)
    assert resumed.config.num_workers == workers
    resumed.fit(4)
    assert losses(first.history + resumed.history) == losses(straight.history)
    want = weights(straight)
    got = weights(resumed)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    if workers:  # and the workers do not change the run either
        serial = flip_run(root, 0)
        serial.fit(8)
        assert losses(serial.history) == losses(straight.history)


class WorkerIds(Dataset):
    """Items that name the process that read them."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index):
        return torch.tensor([float(index), float(os.getpid())])


def test_workers_are_kept_across_epochs_and_a_resume():
    source = BatchSource(WorkerIds(), 2, seed=0, num_workers=2)
    batches = [next(source) for _ in range(12)]  # three epochs of four batches
    pids = {int(p) for x, _ in batches for p in x[:, 1]}
    assert len(pids) == 2 and os.getpid() not in pids
    for epoch in range(3):  # each epoch still serves its own permutation
        rows = torch.cat([x[:, 0] for x, _ in batches[4 * epoch : 4 * epoch + 4]])
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(epoch))
        assert rows.tolist() == perm.tolist()
    state = {"epoch": 1, "pos": 4}
    source.load_state_dict(state)  # a resume in the same process: the same workers, the stored position
    x, _ = next(source)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    assert x[:, 0].tolist() == perm[4:6].tolist() and {int(p) for p in x[:, 1]} <= pids


def test_data_loading_benchmark_runs_at_tiny_size(tmp_path):
    """benchmarks/data_loading.py end to end on 40 files (its times are not judged, only their form)."""
    spec = importlib.util.spec_from_file_location("data_loading", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "loading.json"
    results = module.main(
        ["--images", "40", "--size", "4", "--batch", "8", "--workers", "1", "--epochs", "2", "--json", str(out)]
    )
    assert json.loads(out.read_text()) == results
    assert len(results["epoch_seconds"]) == len(results["first_batch_seconds"]) == 2
    for whole, first in zip(results["epoch_seconds"], results["first_batch_seconds"], strict=True):
        assert 0 < first <= whole
