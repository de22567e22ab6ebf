"""torchrun with the gloo backend: 2 processes of batch B equal 1 process of batch 2B."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import shortcut_fast as sf

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"
HANG_S = 30 * 60  # a guard against a hung run only: a loaded machine must not fail a run that would succeed


def setup_run(objective: str, batch: int, checkpoint_dir: str | None = None, fsdp: bool = False):
    """The model, data and settings every run of this file shares."""
    torch.manual_seed(0)
    model = sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, num_classes=4, min_step=1 / 8)
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(64, 3, generator=g), torch.randint(0, 4, (64,), generator=g))
    config = sf.TrainConfig(batch_size=batch, lr=1e-2, ema_decay=0.9, progress=False, seed=5,
                            checkpoint_dir=checkpoint_dir, fsdp=fsdp,
                            shortcut=sf.ShortcutConfig(min_step=1 / 8, objective=objective))
    return model, data, config


def weights(trainer) -> dict:
    """Full (gathered) weights and EMA weights of a trainer's model."""
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    out = {f"model.{k}": v for k, v in get_model_state_dict(trainer.model, options=full).items()}
    out.update({f"ema.{k}": v for k, v in get_model_state_dict(trainer.ema_model, options=full).items()})
    return out


def torchrun(tmp_path, *args) -> dict:
    out = tmp_path / f"w{len(list(tmp_path.glob('w*')))}.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), "--out", str(out), *map(str, args)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=HANG_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return load_file(str(out))


# The all-reduce sums gradients in another order than one process does, and Adam's
# normalisation lifts that rounding to ~1e-5 of the weights whose gradients are
# smallest; a wrong split of the batch moves the weights by far more.
RTOL = 3e-5


def assert_close(a: dict, b: dict, rtol: float):
    """Every tensor within ``rtol`` of the other in norm."""
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).norm() <= rtol * b[k].norm(), (k, float((a[k] - b[k]).norm() / b[k].norm()))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["shortcut", "flow"])
def test_two_processes_equal_one_with_twice_the_batch(tmp_path, objective):
    model, data, config = setup_run(objective, batch=16)
    single = sf.Trainer(model, data, config)
    single.fit(5)
    assert_close(torchrun(tmp_path, "--objective", objective, "--batch", 8, "--steps", 5), weights(single), RTOL)


@pytest.mark.slow
def test_resume_under_torchrun(tmp_path):
    straight = torchrun(tmp_path, "--objective", "shortcut", "--batch", 8, "--steps", 5)
    ckpt = tmp_path / "ck"
    torchrun(tmp_path, "--objective", "shortcut", "--batch", 8, "--steps", 3, "--ckpt", ckpt)
    assert (ckpt / "latest").read_text().strip() == "step_00000003"
    resumed = torchrun(tmp_path, "--objective", "shortcut", "--batch", 8, "--steps", 2, "--ckpt", ckpt, "--resume")
    assert_close(resumed, straight, 0.0)


@pytest.mark.slow
def test_fsdp_equals_one_process_and_resumes_exactly(tmp_path):
    model, data, config = setup_run("shortcut", batch=16)
    single = sf.Trainer(model, data, config)
    single.fit(5)
    args = ("--objective", "shortcut", "--batch", 8, "--fsdp")
    straight = torchrun(tmp_path, *args, "--steps", 5)
    assert_close(straight, weights(single), RTOL)
    ckpt = tmp_path / "ck"
    torchrun(tmp_path, *args, "--steps", 3, "--ckpt", ckpt)
    assert json.loads((ckpt / "step_00000003" / "trainer.json").read_text())["train_config"]["fsdp"] is True
    assert_close(torchrun(tmp_path, *args, "--steps", 2, "--ckpt", ckpt, "--resume"), straight, 0.0)


@pytest.mark.slow
def test_cli_train_under_torchrun(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text('{"data": "digits", "steps": 2, "model": {"hidden_size": 16, "depth": 1, "num_heads": 2, '
                   '"patch_size": 4}, "train": {"batch_size": 8, "progress": false}}')
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "shortcut_fast.cli", "train", "--config", str(cfg), "--out", str(tmp_path / "run")]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=HANG_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_00000002"
    assert result.stdout.count("trained to step 2") == 2  # both ranks ran the whole run
    assert isinstance(sf.load_model(tmp_path / "run"), sf.ShortcutDiT)
