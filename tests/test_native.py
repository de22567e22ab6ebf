"""Parity of the raw native ops ``torch.ops.shortcut_fast.*`` with the references of functional.py.

Odd shapes throughout (tokens on both sides of the CUDA kernels' 32-row
tiles, channels that no vector width divides). The CUDA twins run on a GPU
machine and skip elsewhere; the whole file skips when the extension is not
built.
"""

from __future__ import annotations

import math

import pytest
import torch

from shortcut_fast.ops import reference as F

_C = pytest.importorskip("shortcut_fast._C", reason="extension not built (pip install --no-build-isolation -e .)")

ops = torch.ops.shortcut_fast

needs_cuda_build = pytest.mark.skipif(
    not (torch.cuda.is_available() and _C.cuda_built()), reason="needs a CUDA GPU and the CUDA kernels"
)

# (device, dtype) pairs every parity test runs on.
CASES = [
    pytest.param("cpu", torch.float32, id="cpu-fp32"),
    pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
    pytest.param("cuda", torch.float32, id="cuda-fp32", marks=needs_cuda_build),
    pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=needs_cuda_build),
]

# (rtol, atol) of outputs and of gradients against an fp32 reference on the same inputs.
TOLERANCES = {
    torch.float32: {"fwd": (1e-5, 1e-6), "grad": (1e-4, 1e-5)},
    torch.bfloat16: {"fwd": (2e-2, 2e-2), "grad": (5e-2, 5e-2)},
}


def _close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str = "fwd") -> None:
    rtol, atol = TOLERANCES[dtype][kind]
    torch.testing.assert_close(actual.float().cpu(), expected.float().cpu(), rtol=rtol, atol=atol)


@pytest.fixture
def make():
    """make(*shape, device=, dtype=): seeded normal samples in the storage dtype."""
    gen = torch.Generator().manual_seed(0)

    def _make(*shape: int, device: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    return _make


def _attention_inputs(make, b, h, n, dh, device, dtype):
    return [make(b, h, n, dh, device=device, dtype=dtype) for _ in range(3)]


# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("n,dh", [(7, 32), (13, 64), (40, 32), (1, 64)])
def test_attention_fwd(make, device, dtype, n, dh):
    q, k, v = _attention_inputs(make, 3, 2, n, dh, device, dtype)
    out, lse = ops.attention_fwd(q, k, v)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (3, 2, n)
    qf, kf, vf = q.float(), k.float(), v.float()
    _close(out, F.attention(qf, kf, vf), dtype)
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(dh)
    _close(lse, torch.logsumexp(scores, dim=-1), torch.float32 if dtype == torch.float32 else dtype)


@needs_cuda_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_fwd_cuda_head_dim_128(make, dtype):
    q, k, v = _attention_inputs(make, 2, 3, 77, 128, "cuda", dtype)
    out, _ = ops.attention_fwd(q, k, v)
    _close(out, F.attention(q.float(), k.float(), v.float()), dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("n,dh", [(7, 32), (13, 64), (40, 32)])
def test_attention_bwd(make, device, dtype, n, dh):
    q, k, v = _attention_inputs(make, 3, 2, n, dh, device, dtype)
    grad_out = make(3, 2, n, dh, device=device, dtype=dtype)
    out, lse = ops.attention_fwd(q, k, v)
    dq, dk, dv = ops.attention_bwd(grad_out, q, k, v, out, lse)

    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    F.attention(*leaves).backward(grad_out.float())
    for actual, leaf in zip((dq, dk, dv), leaves, strict=True):
        assert actual.dtype == dtype
        _close(actual, leaf.grad, dtype, "grad")


# ------------------------------------------------------ modulate_layernorm


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("n,c", [(7, 37), (13, 64), (1, 300)])
def test_modulate_layernorm_fwd(make, device, dtype, n, c):
    x = make(3, n, c, device=device, dtype=dtype) * 3 + 1
    shift, scale = make(3, c, device=device, dtype=dtype), make(3, c, device=device, dtype=dtype)
    y, mean, rstd = ops.modulate_layernorm_fwd(x, shift, scale, 1e-6)
    xf = x.float()
    _close(y, F.modulate_layernorm(xf, shift.float(), scale.float(), 1e-6), dtype)
    _close(mean, xf.mean(-1), torch.float32)
    _close(rstd, torch.rsqrt(xf.var(-1, unbiased=False) + 1e-6), torch.float32)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("n,c", [(7, 37), (13, 64), (1, 300)])
def test_modulate_layernorm_bwd(make, device, dtype, n, c):
    x = make(3, n, c, device=device, dtype=dtype)
    shift, scale = make(3, c, device=device, dtype=dtype), make(3, c, device=device, dtype=dtype)
    grad_y = make(3, n, c, device=device, dtype=dtype)
    _, mean, rstd = ops.modulate_layernorm_fwd(x, shift, scale, 1e-6)
    dx, dshift, dscale = ops.modulate_layernorm_bwd(grad_y, x, scale, mean, rstd)

    leaves = [t.float().requires_grad_() for t in (x, shift, scale)]
    F.modulate_layernorm(*leaves, 1e-6).backward(grad_y.float())
    for actual, leaf in zip((dx, dshift, dscale), leaves, strict=True):
        assert actual.dtype == dtype
        _close(actual, leaf.grad, dtype, "grad")


# ------------------------------------------------------------- small ops


@pytest.mark.parametrize("device,dtype", CASES)
def test_gated_residual(make, device, dtype):
    x, y = make(3, 13, 37, device=device, dtype=dtype), make(3, 13, 37, device=device, dtype=dtype)
    gate = make(3, 37, device=device, dtype=dtype)
    out = ops.gated_residual(x, gate, y)
    assert out.dtype == dtype
    _close(out, F.gated_residual(x.float(), gate.float(), y.float()), dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("dim", [1, 7, 64])
def test_timestep_features(device, dtype, dim):
    t = torch.tensor([0.0, 1 / 128, 0.37, 0.5, 1.0]).to(device=device, dtype=dtype)
    out = ops.timestep_features(t, dim, 10000.0)
    assert out.dtype == torch.float32 and out.shape == (5, dim)
    # Phases reach 1000 rad, where one ulp of a frequency moves cos by ~6e-5.
    torch.testing.assert_close(out.cpu(), F.timestep_features(t, dim, 10000.0).cpu(), rtol=1e-5, atol=2e-4)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("with_labels", [False, True])
def test_condition_sum(make, device, dtype, with_labels):
    c, d_table, y_table = (make(*s, device=device, dtype=dtype) for s in [(5, 37), (8, 37), (11, 37)])
    level = torch.tensor([0, 7, 3, 3, 1], device=device)
    y, y_table = (torch.tensor([10, 0, 4, 9, 9], device=device), y_table) if with_labels else (None, None)
    out = ops.condition_sum(c, level, d_table, y, y_table)
    assert out.dtype == dtype
    expected = F.condition_sum(c.float(), level, d_table.float(), y, None if y_table is None else y_table.float())
    _close(out, expected, dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("shape", [(3, 37), (3, 1, 7, 5)])
def test_euler_step(make, device, dtype, shape):
    x, v = make(*shape, device=device, dtype=dtype), make(*shape, device=device, dtype=dtype)
    d = torch.tensor([1 / 128, 0.5, 1.0], device=device)
    out = ops.euler_step(x, v, d)
    assert out.dtype == dtype
    _close(out, F.euler_step(x.float(), v.float(), d), dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("clip", [None, 0.75])
def test_bootstrap_midpoint(make, device, dtype, clip):
    x, v1 = make(3, 1, 7, 5, device=device, dtype=dtype), make(3, 1, 7, 5, device=device, dtype=dtype)
    d = torch.tensor([0.25, 0.5, 1.0], device=device)
    out = ops.bootstrap_midpoint(x, v1, d, clip)
    _close(out, F.bootstrap_midpoint(x.float(), v1.float(), d, clip), dtype)


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("clip", [None, 0.75])
def test_bootstrap_target(make, device, dtype, clip):
    v1, v2 = make(3, 1, 7, 5, device=device, dtype=dtype), make(3, 1, 7, 5, device=device, dtype=dtype)
    out = ops.bootstrap_target(v1, v2, clip)
    _close(out, F.bootstrap_target(v1.float(), v2.float(), clip), dtype)


# ---------------------------------------------------------------- autograd
# csrc/autograd.cpp: the raw forward ops are differentiable.


def _grads(fn, inputs, grad_out):
    leaves = [t.detach().requires_grad_() for t in inputs]
    fn(*leaves).backward(grad_out)
    return [leaf.grad for leaf in leaves]


def _native_attention(q, k, v):
    return ops.attention_fwd(q, k, v)[0]


def _native_modulate_layernorm(x, shift, scale):
    return ops.modulate_layernorm_fwd(x, shift, scale, 1e-6)[0]


@pytest.mark.parametrize("device,dtype", CASES)
@pytest.mark.parametrize("op", ["attention", "modulate_layernorm", "gated_residual", "condition_sum"])
def test_autograd_through_raw_ops(make, device, dtype, op):
    level, y = torch.tensor([2, 0, 2], device=device), torch.tensor([1, 4, 1], device=device)
    native, reference, shapes = {
        "attention": (_native_attention, F.attention, [(3, 2, 13, 32)] * 3),
        "modulate_layernorm": (_native_modulate_layernorm, F.modulate_layernorm, [(3, 7, 37), (3, 37), (3, 37)]),
        "gated_residual": (ops.gated_residual, F.gated_residual, [(3, 7, 37), (3, 37), (3, 7, 37)]),
        "condition_sum": (
            lambda c, d, t: ops.condition_sum(c, level, d, y, t),
            lambda c, d, t: F.condition_sum(c, level, d, y, t),
            [(3, 37), (3, 37), (5, 37)],
        ),
    }[op]
    inputs = [make(*shape, device=device, dtype=dtype) for shape in shapes]
    grad_out = make(*shapes[0], device=device, dtype=dtype)
    expected = _grads(reference, [t.float() for t in inputs], grad_out.float())
    for actual, want in zip(_grads(native, inputs, grad_out), expected, strict=True):
        _close(actual, want, dtype, "grad")


def test_gradcheck_in_fp64_on_cpu(make):
    """Numerical Jacobians against the backward kernels (fp64 storage sums in fp64 on the CPU)."""
    qkv = [t.requires_grad_() for t in _attention_inputs(make, 1, 2, 5, 4, "cpu", torch.float64)]
    assert torch.autograd.gradcheck(_native_attention, qkv)
    x_shift_scale = [make(*s, device="cpu", dtype=torch.float64).requires_grad_() for s in [(2, 3, 5), (2, 5), (2, 5)]]
    assert torch.autograd.gradcheck(_native_modulate_layernorm, x_shift_scale)


def test_cpu_fp64_runs_in_fp64(make):
    """fp64 storage sums in fp64 on the CPU, so it matches the reference far below fp32 rounding."""
    q, k, v = _attention_inputs(make, 1, 2, 9, 32, "cpu", torch.float64)
    out, _ = ops.attention_fwd(q, k, v)
    torch.testing.assert_close(out, F.attention(q, k, v), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------- bad input


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda_build)])
def test_bad_input_raises_clear_errors(make, device):
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


def test_out_of_range_rows_raise_on_cpu():
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
