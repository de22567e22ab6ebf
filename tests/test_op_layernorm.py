"""``modulate_layernorm`` (raw forward and backward, and the public op) on every backend.

Against ``shortcut_fast/ops/reference.py`` on the same (rounded) inputs in fp32: odd channel counts
no vector width divides, a power of two, a single token, token counts that span several tiles.
"""

from __future__ import annotations

import pytest
import torch
from helpers import op_close, op_grads, reference_grads

from shortcut_fast import ops
from shortcut_fast.ops import reference as SF

pytestmark = pytest.mark.usefixtures("single_thread")

# one channel, and the DiT sizes: 257 tokens of 384 channels, the digits DiT's 4 tokens of 192
SHAPES = [
    (2, 5, 37),
    (3, 7, 37),
    (3, 13, 48),
    (3, 13, 64),
    (2, 1, 37),
    (3, 1, 300),
    (2, 3, 1),
    (1, 257, 384),
    (4, 4, 192),
]


def _inputs(case, shape):
    x = case.randn(*shape, seed=0, scale=2.0) + 0.5
    shift, scale = (case.randn(shape[0], shape[-1], seed=s) for s in (1, 2))
    return x, shift, scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_modulate_layernorm_fwd(op_case, shape, eps):
    x, shift, scale = _inputs(op_case, shape)
    y, mean, rstd = op_case.ops.modulate_layernorm_fwd(x, shift, scale, eps)
    assert y.dtype == op_case.dtype and mean.dtype == rstd.dtype == torch.float32
    op_close(y, SF.modulate_layernorm(x.float(), shift.float(), scale.float(), eps), op_case.dtype)
    var, ref_mean = torch.var_mean(x.float(), -1, unbiased=False)
    op_close(mean, ref_mean, torch.float32)
    op_close(rstd, torch.rsqrt(var + eps), torch.float32)


@pytest.mark.parametrize("shape", SHAPES)
def test_modulate_layernorm_bwd(op_case, shape):
    x, shift, scale = _inputs(op_case, shape)
    grad_y = op_case.randn(*shape, seed=3)
    _, mean, rstd = op_case.ops.modulate_layernorm_fwd(x, shift, scale, 1e-6)
    grads = op_case.ops.modulate_layernorm_bwd(grad_y, x, scale, mean, rstd)
    _, ref_grads = reference_grads(SF.modulate_layernorm, (x, shift, scale), grad_y)
    for fast, ref in zip(grads, ref_grads, strict=True):
        assert fast.dtype == op_case.dtype
        op_close(fast, ref, op_case.dtype, grad=True)


def test_cpu_backward_splits_a_sample_over_threads():
    """With fewer samples than threads the CPU backward splits each sample's tokens and sums their dshift, dscale."""
    pytest.importorskip("shortcut_fast._C", reason="extension not built (pip install --no-build-isolation -e .)")
    gen = torch.Generator().manual_seed(0)
    x, grad_y = (torch.randn(1, 257, 384, generator=gen) for _ in range(2))
    shift, scale = (torch.randn(1, 384, generator=gen) for _ in range(2))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, mean, rstd = torch.ops.shortcut_fast.modulate_layernorm_fwd(x, shift, scale, 1e-6)
        grads = torch.ops.shortcut_fast.modulate_layernorm_bwd(grad_y, x, scale, mean, rstd)
    finally:
        torch.set_num_threads(before)
    _, ref_grads = reference_grads(SF.modulate_layernorm, (x, shift, scale), grad_y)
    for fast, ref in zip(grads, ref_grads, strict=True):
        op_close(fast, ref, torch.float32, grad=True)


def test_autograd_through_the_raw_op(op_case):
    inputs = _inputs(op_case, (3, 7, 37))
    grad_out = op_case.randn(3, 7, 37, seed=4)
    _, expected = reference_grads(SF.modulate_layernorm, inputs, grad_out)
    actual = op_grads(
        lambda x, shift, scale: op_case.ops.modulate_layernorm_fwd(x, shift, scale, 1e-6)[0], inputs, grad_out
    )
    for got, want in zip(actual, expected, strict=True):
        op_close(got, want, op_case.dtype, grad=True)


def test_model_sizes_on_gpu(op_case):
    """257 tokens of 1152 channels: several blocks of the autotuned GPU configs."""
    if op_case.device != "cuda":
        pytest.skip("model sizes need a GPU (the interpreter takes minutes)")
    x, shift, scale = _inputs(op_case, (2, 257, 1152))
    grad_y = op_case.randn(2, 257, 1152, seed=3)
    y, mean, rstd = op_case.ops.modulate_layernorm_fwd(x, shift, scale, 1e-6)
    ref_y, ref_grads = reference_grads(SF.modulate_layernorm, (x, shift, scale), grad_y)
    op_close(y, ref_y, op_case.dtype)
    for fast, ref in zip(op_case.ops.modulate_layernorm_bwd(grad_y, x, scale, mean, rstd), ref_grads, strict=True):
        op_close(fast, ref, op_case.dtype, grad=True)


# ---------------------------------------------------------------- the public op
@pytest.mark.parametrize("shape", [(3, 7, 37), (2, 48), (1, 1, 64)])
def test_public_modulate_layernorm(op_backend, shape):
    x = op_backend.randn(*shape, seed=0).requires_grad_()
    shift, scale = (op_backend.randn(shape[0], shape[-1], seed=s).requires_grad_() for s in (1, 2))
    out, ref = ops.modulate_layernorm(x, shift, scale), SF.modulate_layernorm(x, shift, scale)
    op_close(out, ref, torch.float32)
    cot = op_backend.randn(*shape, seed=5)
    for got, want in zip(
        torch.autograd.grad(out, (x, shift, scale), cot), torch.autograd.grad(ref, (x, shift, scale), cot), strict=True
    ):
        op_close(got, want, torch.float32, grad=True)


def test_public_modulate_layernorm_on_a_strided_input(op_backend):
    x = op_backend.randn(3, 37, 7, seed=0).transpose(1, 2)  # (3, 7, 37), not contiguous
    shift, scale = (op_backend.randn(3, 37, seed=s) for s in (1, 2))
    op_close(ops.modulate_layernorm(x, shift, scale), SF.modulate_layernorm(x, shift, scale), torch.float32)


def test_opcheck(op_backend):
    x = op_backend.randn(2, 5, 37, seed=3).requires_grad_()
    shift, scale = (op_backend.randn(2, 37, seed=s).requires_grad_() for s in (4, 5))
    torch.library.opcheck(op_backend.ops.modulate_layernorm_fwd.default, (x, shift, scale, 1e-6))


def test_gradcheck_in_fp64_on_cpu():
    """Numerical Jacobians against the backward kernel (fp64 storage sums in fp64 on the CPU)."""
    pytest.importorskip("shortcut_fast._C", reason="extension not built (pip install --no-build-isolation -e .)")
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_() for s in [(2, 3, 5), (2, 5), (2, 5)]]
    assert torch.autograd.gradcheck(lambda *a: torch.ops.shortcut_fast.modulate_layernorm_fwd(*a, 1e-6)[0], inputs)
