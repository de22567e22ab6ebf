"""Faults: killed writers, non-finite batches and gradients, an encoder in front of the model."""

import errno
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import shortcut_fast as sf
from shortcut_fast import checkpoint as ckpt
from shortcut_fast.data.batches import BatchSource
from shortcut_fast.train.trainer import NonFiniteError

WORKER = Path(__file__).parent / "workers" / "checkpoint_forever.py"


def small_trainer(data, **kw):
    torch.manual_seed(0)
    model = sf.ShortcutMLP(dim=2, hidden_size=16, depth=1, min_step=1 / 8)
    config = sf.TrainConfig(batch_size=8, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 8), **kw)
    return sf.Trainer(model, data, config)


def snapshot(trainer):
    tensors = [p.detach().clone() for p in trainer.model.parameters()]
    tensors += [p.detach().clone() for p in trainer.ema_model.parameters()]
    for state in trainer.optimizer.state.values():
        tensors += [v.clone() for v in state.values()]
    return tensors


@pytest.mark.slow
@pytest.mark.parametrize("point", ["data", "half", "rename", "pointer"])
def test_sigkill_inside_a_save_leaves_the_last_complete_checkpoint(tmp_path, point):
    root = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(WORKER), str(root), point], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(30 * 60, proc.kill)  # a guard against a hang only, far above the normal time
    watchdog.start()
    try:
        assert proc.stdout.readline().strip() == f"at {point}"  # paused inside the save of step 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        watchdog.cancel()
    debris = [p for p in root.iterdir() if p.name.startswith(".")]
    assert bool(debris) == (point != "pointer")  # the half-written save, unless it was already in place
    assert (root / "step_00000002").is_dir() == (point == "pointer")
    assert (root / "latest").read_text().strip() == "step_00000001"
    resumed = sf.Trainer.resume(root, torch.randn(256, 2), progress=False)
    assert resumed.step == 1
    resumed.fit(1)  # and the run goes on, replacing or clearing what the killed save left
    assert (root / "latest").read_text().strip() == "step_00000002"
    assert sf.Trainer.resume(root, torch.randn(256, 2), progress=False).step == 2
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_disk_full_during_a_save_raises_and_the_run_continues_after(tmp_path, monkeypatch):
    trainer = small_trainer(torch.randn(32, 2), checkpoint_dir=str(tmp_path))
    trainer.fit(2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "step_00000002").iterdir()}
    real_save = ckpt.save_tensors

    def full_disk(path, tensors):
        if path.name == ckpt.EMA_FILE:  # the weights fitted, the EMA does not
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_save(path, tensors)

    monkeypatch.setattr(ckpt, "save_tensors", full_disk)
    with pytest.raises(OSError, match="no space left to write .*step_00000003.*earlier checkpoints are intact") as err:
        trainer.fit(1)
    assert err.value.errno == errno.ENOSPC
    assert trainer.step == 3 and (tmp_path / "latest").read_text().strip() == "step_00000002"
    assert {p.name: p.read_bytes() for p in (tmp_path / "step_00000002").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000002"]  # nothing half-written
    assert sf.Trainer.resume(tmp_path, torch.randn(32, 2)).step == 2
    monkeypatch.setattr(ckpt, "save_tensors", real_save)  # space freed
    trainer.fit(1)
    assert (tmp_path / "latest").read_text().strip() == "step_00000004"
    assert sf.Trainer.resume(tmp_path, torch.randn(32, 2)).step == 4


def test_non_finite_batch_is_skipped_and_counted():
    trainer = small_trainer(torch.randn(32, 2))
    trainer.fit(2)
    before = snapshot(trainer)
    bad = torch.randn(8, 2)
    bad[3, 1] = float("nan")
    logs = trainer.train_step(bad)
    assert float(logs["skipped"]) == 1.0 and trainer.skipped_steps == 1 and trainer.step == 3
    for a, b in zip(before, snapshot(trainer), strict=True):
        assert torch.equal(a, b)
    logs = trainer.train_step(torch.randn(8, 2))
    assert float(logs["skipped"]) == 0.0 and trainer._bad_in_a_row == 0


class Exploding(nn.Module):
    """A model whose output turns to inf while ``armed`` (like a diverged network)."""

    num_classes, min_step = 0, 1 / 8

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.armed = False

    def forward(self, x, t, d, y=None):
        out = self.lin(x)
        return out * float("inf") if self.armed else out


def test_non_finite_gradients_are_skipped():
    torch.manual_seed(0)
    model = Exploding()
    trainer = sf.Trainer(
        model,
        torch.randn(32, 2),
        sf.TrainConfig(batch_size=8, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 8)),
    )
    trainer.fit(1)
    before = snapshot(trainer)
    model.armed = True
    trainer.fit(2)
    assert trainer.skipped_steps == 2
    for a, b in zip(before, snapshot(trainer), strict=True):
        assert torch.equal(a, b)
    model.armed = False
    trainer.fit(1)
    assert trainer.skipped_steps == 2 and trainer._bad_in_a_row == 0
    assert not torch.equal(before[0], model.lin.weight)


@pytest.mark.slow
def test_too_many_bad_steps_stop_the_run_with_the_checkpoint_intact(tmp_path):
    good = torch.randn(32, 2)
    trainer = small_trainer(good, checkpoint_dir=str(tmp_path), max_bad_steps=3)
    trainer.fit(2)
    saved = (tmp_path / "latest").read_text()
    # a loader, not a tensor: in-memory tensors are scanned for NaN up front
    trainer.data = BatchSource(DataLoader(torch.full((32, 2), float("nan")), batch_size=8), 8, 0)
    with pytest.raises(NonFiniteError, match="3 steps in a row"):
        trainer.fit(10)
    assert (tmp_path / "latest").read_text() == saved
    assert sf.Trainer.resume(tmp_path, good).step == 2


def test_a_stopped_run_applies_no_later_step_and_raises_at_the_next_check():
    """The stop is decided on the device at the step that reaches max_bad_steps and read every log_every steps."""
    trainer = small_trainer(torch.randn(32, 2), max_bad_steps=2, log_every=4)
    trainer.fit(1)
    nan = torch.full((8, 2), float("nan"))
    trainer.train_step(nan)
    trainer.train_step(nan)  # step 3: the second bad step in a row stops the run
    stopped = snapshot(trainer)
    with pytest.raises(NonFiniteError, match=r"2 steps in a row.*\(step 3\)"):
        trainer.train_step(torch.randn(8, 2))  # step 4: a good batch, not applied; the check runs here
    for a, b in zip(stopped, snapshot(trainer), strict=True):
        assert torch.equal(a, b)
    assert trainer.skipped_steps == 3


def test_encoder_runs_before_the_model_without_gradient():
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 2, 1))  # a stand-in for a VAE: 8x8x1 -> 4x4x2
    model = sf.ShortcutDiT(
        input_size=4, in_channels=2, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=0, min_step=1 / 8
    )
    config = sf.TrainConfig(batch_size=4, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 8))
    trainer = sf.Trainer(model, torch.randn(16, 1, 8, 8), config, encoder=encoder)
    trainer.fit(2)
    assert trainer.step == 2 and trainer.skipped_steps == 0
    assert all(p.grad is None for p in encoder.parameters())
    with pytest.raises(TypeError, match="encoder"):
        sf.Trainer(model, torch.randn(16, 1, 8, 8), config, encoder="vae")
