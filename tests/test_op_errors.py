"""The raw ops refuse bad input with the op's name and what was wrong; each backend words it its own way."""

from __future__ import annotations

import pytest
import torch

ops = torch.ops.shortcut_fast
TRITON = torch.ops.shortcut_fast_triton


def _native_cuda() -> bool:
    from shortcut_fast.ops import backends

    return torch.cuda.is_available() and backends.native_available() and backends._native_cuda


needs_cuda_build = pytest.mark.skipif(not _native_cuda(), reason="needs a CUDA GPU and the CUDA kernels")


@pytest.fixture
def make():
    """make(*shape, device=, dtype=): seeded normal samples in the storage dtype, from the native extension."""
    pytest.importorskip("shortcut_fast._C", reason="extension not built (pip install --no-build-isolation -e .)")
    gen = torch.Generator().manual_seed(0)

    def _make(*shape: int, device: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return _make


@pytest.fixture
def triton_case(op_backend):
    """The Triton backends of ``op_backend`` (fp32)."""
    if not op_backend.name.startswith("triton"):
        pytest.skip("the Triton ops' messages")
    return op_backend


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda_build)])
def test_native_bad_input_raises_clear_errors(make, device):
    f32 = dict(device=device, dtype=torch.float32)
    q = make(2, 2, 7, 32, **f32)
    with pytest.raises(RuntimeError, match=r"attention_fwd: q must have 4 dims"):
        ops.attention_fwd(q[0], q[0], q[0])
    with pytest.raises(RuntimeError, match=r"attention_fwd: k must have the shape of q"):
        ops.attention_fwd(q, make(2, 2, 8, 32, **f32), q)
    with pytest.raises(RuntimeError, match=r"attention_fwd: v must be Float, got Double"):
        ops.attention_fwd(q, q, q.double())
    with pytest.raises(RuntimeError, match=r"attention_fwd: k must be contiguous"):
        ops.attention_fwd(q, q.transpose(2, 3).contiguous().transpose(2, 3), q)
    with pytest.raises(RuntimeError, match=r"attention_bwd: lse must have shape"):
        ops.attention_bwd(q, q, q, q, q, torch.zeros(2, 2, 8, device=device))

    x, per_sample = make(3, 7, 37, **f32), make(3, 37, **f32)
    with pytest.raises(RuntimeError, match=r"modulate_layernorm_fwd: x must have 3 dims"):
        ops.modulate_layernorm_fwd(x[0], per_sample, per_sample, 1e-6)
    with pytest.raises(RuntimeError, match=r"modulate_layernorm_fwd: scale must have shape \[3, 37\]"):
        ops.modulate_layernorm_fwd(x, per_sample, make(3, 36, **f32), 1e-6)
    with pytest.raises(RuntimeError, match=r"modulate_layernorm_bwd: rstd must be Float"):
        ops.modulate_layernorm_bwd(x, x, per_sample, x[..., 0].contiguous(), x[..., 0].double())
    with pytest.raises(RuntimeError, match=r"gated_residual: y must have the shape of x"):
        ops.gated_residual(x, per_sample, make(3, 7, 36, **f32))
    with pytest.raises(RuntimeError, match=r"timestep_features: t must have 1 dims"):
        ops.timestep_features(per_sample, 16, 10000.0)

    c, level = make(3, 37, **f32), torch.zeros(3, dtype=torch.long, device=device)
    with pytest.raises(RuntimeError, match=r"condition_sum: y and y_table must be given together"):
        ops.condition_sum(c, level, c, level, None)
    with pytest.raises(RuntimeError, match=r"condition_sum: level must be Long"):
        ops.condition_sum(c, level.int(), c, None, None)
    with pytest.raises(RuntimeError, match=r"condition_sum: d_table must have 37 columns"):
        ops.condition_sum(c, level, make(3, 36, **f32), None, None)

    d = torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match=r"euler_step: d must have shape \[3\]"):
        ops.euler_step(x, x, torch.ones(2, device=device))
    with pytest.raises(RuntimeError, match=r"euler_step: d must be Float"):
        ops.euler_step(x, x, d.double())
    with pytest.raises(RuntimeError, match=r"bootstrap_midpoint: clip must be non-negative"):
        ops.bootstrap_midpoint(x, x, d, -1.0)
    with pytest.raises(RuntimeError, match=r"bootstrap_target: v2 must have the shape of v1"):
        ops.bootstrap_target(x, x[:, :3], None)


def test_out_of_range_rows_raise_on_cpu(make):
    c = torch.zeros(2, 4)
    with pytest.raises(RuntimeError, match=r"condition_sum: level\[1\] = 8 is out of range for a table of 8 rows"):
        ops.condition_sum(c, torch.tensor([0, 8]), torch.zeros(8, 4), None, None)


@needs_cuda_build
def test_mixed_devices_raise():
    q = torch.zeros(1, 1, 4, 32, device="cuda")
    with pytest.raises(RuntimeError, match=r"attention_fwd: k is on cpu, expected cuda"):
        ops.attention_fwd(q, q.cpu(), q)


@needs_cuda_build
def test_cuda_rejects_unsupported_head_dim():
    q = torch.zeros(1, 1, 4, 48, device="cuda")
    with pytest.raises(RuntimeError, match=r"head dims 32, 64 and 128, got 48"):
        ops.attention_fwd(q, q, q)


def test_triton_clear_errors(triton_case):
    case = triton_case
    q = case.randn(1, 1, 5, 48)
    with pytest.raises(RuntimeError, match="head size 48"):
        TRITON.attention_fwd(q, q, q)
    x = case.randn(2, 5, 37)
    with pytest.raises(RuntimeError, match="shift must have shape"):
        TRITON.modulate_layernorm_fwd(x, x[:, 0, :8], x[:, 0], 1e-6)
    c = case.randn(2, 37)
    with pytest.raises(RuntimeError, match="y and y_table together"):
        TRITON.condition_sum(c, torch.zeros(2, dtype=torch.long, device=c.device), c, None, c)
    with pytest.raises(RuntimeError, match="d must be fp32"):
        TRITON.euler_step(x, x, torch.ones(2, dtype=torch.float64, device=x.device))


def test_triton_ops_refuse_mixed_dtypes_as_the_native_ops_do(triton_case, monkeypatch):
    registered = pytest.importorskip("shortcut_fast.ops.triton", reason="Triton is not installed (pip install triton)")
    monkeypatch.setattr(registered, "BACKEND", "triton")  # the dtypes a GPU runs, so the mix is what is refused
    x = triton_case.randn(2, 5, 37)
    half = x[:, 0].bfloat16()
    with pytest.raises(RuntimeError, match="modulate_layernorm_fwd: inputs must share one dtype"):
        TRITON.modulate_layernorm_fwd(x, x[:, 0], half, 1e-6)
    with pytest.raises(RuntimeError, match="modulate_layernorm_bwd: inputs must share one dtype"):
        stats = torch.zeros(2, 5, device=x.device)
        TRITON.modulate_layernorm_bwd(x, x, half, stats, stats)
    with pytest.raises(RuntimeError, match="gated_residual: inputs must share one dtype"):
        TRITON.gated_residual(x, half, x)
    level = torch.zeros(2, dtype=torch.long, device=x.device)
    with pytest.raises(RuntimeError, match="condition_sum: inputs must share one dtype"):
        TRITON.condition_sum(x[:, 0], level, half, level, x[:, 0])
    with pytest.raises(RuntimeError, match="condition_sum: inputs must share one dtype"):
        TRITON.condition_sum(x[:, 0], level, x[:, 0], level, half)


def test_triton_layernorm_refuses_more_token_tiles_than_the_grid_holds(triton_case, monkeypatch):
    layernorm = pytest.importorskip("shortcut_fast.kernels.layernorm", reason="Triton is not installed")
    x = triton_case.randn(2, 9, 37)
    tiles = layernorm.token_tiles(9, 37)
    assert tiles > 1  # the interpreter's 4-token tiles
    monkeypatch.setattr(layernorm, "MAX_GRID_Y", tiles - 1)
    with pytest.raises(RuntimeError, match=f"{tiles} tiles, more than the grid's {tiles - 1}"):
        TRITON.modulate_layernorm_fwd(x, x[:, 0], x[:, 0], 1e-6)
    monkeypatch.setattr(layernorm, "MAX_GRID_Y", tiles)
    TRITON.modulate_layernorm_fwd(x, x[:, 0], x[:, 0], 1e-6)


def test_triton_condition_sum_reads_no_row_outside_its_tables(triton_case):
    """On a GPU the kernel's device asserts stop it; the interpreter skips asserts, and the bad rows are NaN."""
    if triton_case.device != "cpu":
        pytest.skip("a device assert leaves the CUDA context unusable for the rest of the session")
    c, d_table, y_table = triton_case.randn(4, 37), triton_case.randn(3, 37), triton_case.randn(5, 37)
    level, y = torch.tensor([0, 3, 2, -1]), torch.tensor([4, 0, 5, 1])
    out = TRITON.condition_sum(c, level, d_table, y, y_table)
    ok = torch.tensor([True, False, False, False])
    assert out[~ok].isnan().all()
    torch.testing.assert_close(out[ok], c[ok] + d_table[level[ok]] + y_table[y[ok]])


def test_cpu_tensors_need_the_interpreter(monkeypatch):
    registered = pytest.importorskip("shortcut_fast.ops.triton", reason="Triton is not installed (pip install triton)")
    monkeypatch.setattr(registered, "INTERPRET", False)
    x = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        TRITON.bootstrap_target(x, x, None)
