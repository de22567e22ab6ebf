"""torchrun with the gloo backend: 2 processes of batch B equal 1 process of batch 2B."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_or_show_hang
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

import shortcut_fast as sf

WORKER = Path(__file__).parent / "workers" / "ddp_train.py"


def setup_run(
    objective: str, batch: int, checkpoint_dir: str | None = None, fsdp: bool = False, dtype: str = "float32"
):
    """The model, data and settings every run of this file shares (weights and data in ``dtype``)."""
    torch.manual_seed(0)
    steps = "sinusoidal" if objective == "meanflow" else "table"  # MeanFlow trains continuous step sizes
    model = sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, num_classes=4, min_step=1 / 8, step_embedding=steps)
    model = model.to(getattr(torch, dtype))
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(64, 3, generator=g).to(getattr(torch, dtype)), torch.randint(0, 4, (64,), generator=g))
    config = sf.TrainConfig(
        batch_size=batch,
        lr=1e-2,
        ema_decay=0.9,
        progress=False,
        seed=5,
        checkpoint_dir=checkpoint_dir,
        fsdp=fsdp,
        shortcut=sf.ShortcutConfig(min_step=1 / 8, objective=objective),
    )
    return model, data, config


def weights(trainer) -> dict:
    """Full (gathered) weights and EMA weights of a trainer's model."""
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    out = {f"model.{k}": v for k, v in get_model_state_dict(trainer.model, options=full).items()}
    out.update({f"ema.{k}": v for k, v in get_model_state_dict(trainer.ema_model, options=full).items()})
    return out


def torchrun(tmp_path, *args) -> dict:
    """Run the worker under torchrun on 2 processes; its saved weights."""
    out = tmp_path / f"w{len(list(tmp_path.glob('w*')))}.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        "--out",
        str(out),
        *map(str, args),
    ]
    result = run_or_show_hang(cmd, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return load_file(str(out))


# In fp32 the sums over the batch (weight gradients in ATen's matmuls and
# index_add, then the all-reduce of the two halves) round differently from one
# process's sums, ~1e-7 of each gradient, and 5 Adam steps at lr 1e-2 lift that
# to ~1e-5 of the weights whose gradients are smallest. The fused kernels add
# nothing to it: each sample's bits do not depend on the split (the test at the
# end), and the reference backend measures the same order. In fp64 the same runs
# agree to ~1e-15 (RTOL_FP64), while a wrong split of the batch moves the weights
# by far more than either.
RTOL = 3e-5
RTOL_FP64 = 1e-12


def assert_close(a: dict, b: dict, rtol: float):
    """Every tensor within ``rtol`` of the other in norm."""
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).norm() <= rtol * b[k].norm(), (k, float((a[k] - b[k]).norm() / b[k].norm()))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["shortcut", "flow", "meanflow"])
def test_two_processes_equal_one_with_twice_the_batch(tmp_path, objective):
    model, data, config = setup_run(objective, batch=16)
    single = sf.Trainer(model, data, config)
    single.fit(5)
    assert_close(torchrun(tmp_path, "--objective", objective, "--batch", 8, "--steps", 5), weights(single), RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_in_float64_two_processes_equal_one_to_rounding(tmp_path, fsdp):
    model, data, config = setup_run("flow", batch=16, fsdp=fsdp, dtype="float64")
    single = sf.Trainer(model, data, config)
    single.fit(5)
    args = ["--objective", "flow", "--batch", 8, "--steps", 5, "--dtype", "float64"] + (["--fsdp"] if fsdp else [])
    assert_close(torchrun(tmp_path, *args), weights(single), RTOL_FP64)


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
    cfg.write_text(
        '{"data": "digits", "steps": 2, "model": {"hidden_size": 16, "depth": 1, "num_heads": 2, '
        '"patch_size": 4}, "train": {"batch_size": 8, "progress": false}}'
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "shortcut_fast.cli",
        "train",
        "--config",
        str(cfg),
        "--out",
        str(tmp_path / "run"),
    ]
    result = run_or_show_hang(cmd, {**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "run" / "latest").read_text().strip() == "step_00000002"
    assert result.stdout.count("trained to step 2") == 2  # both ranks ran the whole run
    assert isinstance(sf.load_model(tmp_path / "run"), sf.ShortcutDiT)


def _native_rows(op, inputs, rows):
    """``op``'s output and the gradients of its floating-point inputs on the native backend, for the samples
    ``rows`` of ``inputs``; the output gradient is a fixed function of the sample, the same in any batch."""
    leaves = [t[rows].detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with sf.backend("native"):
        out = op(*leaves)
    sample = torch.arange(len(inputs[0]))[rows].view(-1, *[1] * (out.dim() - 1))
    out.backward(torch.cos(sample + torch.linspace(0, 3, out[0].numel()).view_as(out[0])))
    return [out.detach()] + [t.grad for t in leaves if t.requires_grad]


@pytest.mark.parametrize("name", ["modulate_layernorm", "gated_residual", "attention", "condition_sum"])
def test_native_ops_give_each_sample_the_same_bits_in_any_batch_split(name):
    """What a rank computes for its rows is what one process computes for them in the whole batch.

    Every reduction of these kernels runs inside one sample (over tokens or
    channels) in a fixed order, whatever the batch size and OpenMP split; the
    sums over the batch (weight gradients, table rows) are ATen's and the
    all-reduce's, the same with every backend (see RTOL).
    """
    g = torch.Generator().manual_seed(0)
    batch, tokens, channels = 16, 9, 300  # two channel blocks; the full batch is above the threading threshold

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    inputs, op = {
        "modulate_layernorm": (
            [randn(batch, tokens, channels), randn(batch, channels), randn(batch, channels)],
            sf.ops.modulate_layernorm,
        ),
        "gated_residual": (
            [randn(batch, tokens, channels), randn(batch, channels), randn(batch, tokens, channels)],
            sf.ops.gated_residual,
        ),
        "attention": (
            [randn(batch, 2, tokens, 16), randn(batch, 2, tokens, 16), randn(batch, 2, tokens, 16)],
            sf.ops.attention,
        ),
        "condition_sum": (
            [randn(batch, channels), torch.randint(0, 4, (batch,), generator=g)],
            lambda c, level: sf.ops.condition_sum(c, level, d_table, None, None),
        ),
    }[name]
    d_table = randn(4, channels)
    full = _native_rows(op, inputs, slice(None))
    for rank in range(2):
        shard = _native_rows(op, inputs, slice(rank, None, 2))
        for a, b in zip(shard, [t[rank::2] for t in full], strict=True):
            assert torch.equal(a, b), name
