"""Attention (``attention_fwd``, ``attention_bwd``, ``shortcut_fast.ops.attention``) on every backend.

Each test runs on the native CPU kernels, the Triton kernels (under ``TRITON_INTERPRET=1`` on the
CPU, ``conftest.py`` sets it) and, on a GPU machine, the CUDA and Triton GPU kernels, against
``shortcut_fast/ops/reference.py`` on the same (rounded) inputs in fp32. Sequence lengths on both
sides of the kernels' 16- and 32-row blocks, a single row, a power of two, and strided views.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import op_close, op_grads, reference_grads

from shortcut_fast import ops
from shortcut_fast.ops import contract
from shortcut_fast.ops import reference as SF

pytestmark = pytest.mark.usefixtures("single_thread")

# (B, H, N, Dh); N = 37 and 40 span several blocks, N = 1 is a single row, N = 16 one exact block
SHAPES = [(2, 1, 5, 32), (3, 2, 7, 32), (3, 2, 13, 64), (2, 1, 37, 32), (3, 2, 40, 32), (3, 2, 1, 64), (2, 2, 16, 64)]


def _qkv(case, shape, seeds=range(3)):
    return [case.randn(*shape, seed=s) for s in seeds]


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_fwd(op_case, shape):
    q, k, v = _qkv(op_case, shape)
    out, lse = op_case.ops.attention_fwd(q, k, v)
    assert out.dtype == op_case.dtype and lse.dtype == torch.float32 and lse.shape == shape[:-1]
    qf, kf = q.float(), k.float()
    op_close(out, SF.attention(qf, kf, v.float()), op_case.dtype)
    op_close(lse, torch.logsumexp(qf @ kf.transpose(-1, -2) / math.sqrt(shape[-1]), -1), op_case.dtype)


@pytest.mark.parametrize("shape", SHAPES)
def test_attention_bwd(op_case, shape):
    q, k, v, grad_out = _qkv(op_case, shape, range(4))
    out, lse = op_case.ops.attention_fwd(q, k, v)
    grads = op_case.ops.attention_bwd(grad_out, q, k, v, out, lse)
    _, ref_grads = reference_grads(SF.attention, (q, k, v), grad_out)
    for fast, ref in zip(grads, ref_grads, strict=True):
        assert fast.dtype == op_case.dtype
        op_close(fast, ref, op_case.dtype, grad=True)


# (B, H, N, Dh) off the tiles of the CPU kernels (64 queries by 64 keys, register tiles of 6 rows by 64
# columns): N = 257 and 130 end in partial blocks, N = 1 is one row; head sizes no vector width divides
# (33, 48) and wider than one 64-column panel (80)
ODD_SHAPES = [(1, 2, 257, 48), (2, 1, 1, 80), (1, 3, 130, 33), (2, 2, 65, 80)]


@pytest.mark.parametrize("shape", ODD_SHAPES)
def test_attention_fwd_and_bwd_off_the_tiles(op_case, shape):
    if not contract.support("attention_fwd", op_case.contract).runs(op_case.dtype, shape[-1]):
        pytest.skip(f"{op_case.name} runs no head size {shape[-1]}")
    q, k, v, grad_out = _qkv(op_case, shape, range(4))
    out, lse = op_case.ops.attention_fwd(q, k, v)
    ref_out, ref_grads = reference_grads(SF.attention, (q, k, v), grad_out)
    op_close(out, ref_out, op_case.dtype)
    qf, kf = q.float(), k.float()
    op_close(lse, torch.logsumexp(qf @ kf.transpose(-1, -2) / math.sqrt(shape[-1]), -1), op_case.dtype)
    for fast, ref in zip(op_case.ops.attention_bwd(grad_out, q, k, v, out, lse), ref_grads, strict=True):
        op_close(fast, ref, op_case.dtype, grad=True)


def test_attention_fwd_on_strided_views(op_case):
    """The Triton op takes views; the native one refuses them (the public op hands it contiguous copies)."""
    qkv = op_case.randn(2, 7, 3, 2, 32).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh) as a DiT block makes it
    if op_case.name.startswith("native"):
        with pytest.raises(RuntimeError, match="q must be contiguous"):
            op_case.ops.attention_fwd(qkv[0], qkv[1], qkv[2])
        return
    out, _ = op_case.ops.attention_fwd(qkv[0], qkv[1], qkv[2])
    op_close(out, SF.attention(*qkv.float()), op_case.dtype)


def _triton_only(case):
    if case.name.startswith("native"):
        pytest.skip("the native kernels take contiguous tensors (the public op copies for them)")


@pytest.mark.parametrize("shape", [(2, 2, 7, 32), (1, 3, 40, 64), (3, 1, 1, 32)])
def test_attention_bwd_on_qkv_slices(op_case, shape):
    """The forward and backward read q, k, v through their strides: slices of one fused projection, as a
    DiT block makes them, give the gradients of contiguous copies."""
    _triton_only(op_case)
    B, H, N, Dh = shape
    qkv = op_case.randn(B, N, 3, H, Dh).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh), token stride 3 H Dh
    q, k, v = qkv.unbind(0)
    assert not q.is_contiguous() and q.stride(-1) == 1
    grad_out = op_case.randn(*shape, seed=4)
    out, lse = op_case.ops.attention_fwd(q, k, v)
    assert out.is_contiguous()
    want_out, want_grads = reference_grads(SF.attention, [t.contiguous() for t in (q, k, v)], grad_out)
    op_close(out, want_out, op_case.dtype)
    for got, want in zip(op_case.ops.attention_bwd(grad_out, q, k, v, out, lse), want_grads, strict=True):
        assert got.is_contiguous()
        op_close(got, want, op_case.dtype, grad=True)
    # the fake (meta) functions give the strides the kernels give, so torch.compile traces these views alike
    torch.library.opcheck(op_case.ops.attention_fwd.default, (q, k, v))
    torch.library.opcheck(op_case.ops.attention_bwd.default, (grad_out, q, k, v, out, lse))


def test_attention_copies_q_k_v_of_different_strides(op_case):
    """The kernels take one set of strides: q, k, v of different ones (a transposed view, a slice of a wider
    tensor, a contiguous one) or a last dim that is not contiguous are copied first, and give the same result."""
    _triton_only(op_case)
    q = op_case.randn(2, 5, 3, 32, seed=0).transpose(1, 2)  # (B, H, N, Dh) stored (B, N, H, Dh)
    k = op_case.randn(2, 3, 5, 64, seed=1)[..., 16:48]  # a slice of the feature dim: row stride 64
    v = op_case.randn(2, 3, 5, 32, seed=2)
    out, _ = op_case.ops.attention_fwd(q, k, v)
    op_close(out, SF.attention(q.float(), k.float(), v.float()), op_case.dtype)
    v_cols = op_case.randn(2, 3, 32, 5, seed=3).transpose(-1, -2)  # last-dim stride 5
    out, _ = op_case.ops.attention_fwd(q, k, v_cols)
    op_close(out, SF.attention(q.float(), k.float(), v_cols.float()), op_case.dtype)


def test_public_attention_hands_triton_the_slices_without_copies(op_backend):
    """ops.attention makes no copies of q, k, v for the Triton kernels (three per call before)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    qkv = op_backend.randn(2, 7, 3, 2, 32).permute(2, 0, 3, 1, 4)
    copies = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.clone.default, torch.ops.aten.copy_.default):
                copies.append(func)
            return func(*args, **(kwargs or {}))

    with Record():
        out = ops.attention(qkv[0], qkv[1], qkv[2])
    op_close(out, SF.attention(*qkv), torch.float32)
    assert len(copies) == (3 if op_backend.name.startswith("native") else 0), copies


def test_autograd_through_the_raw_op(op_case):
    inputs = _qkv(op_case, (3, 2, 13, 32))
    grad_out = op_case.randn(3, 2, 13, 32, seed=3)
    _, expected = reference_grads(SF.attention, inputs, grad_out)
    actual = op_grads(lambda q, k, v: op_case.ops.attention_fwd(q, k, v)[0], inputs, grad_out)
    for got, want in zip(actual, expected, strict=True):
        op_close(got, want, op_case.dtype, grad=True)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_model_sizes_on_gpu(op_case, head_dim):
    """Sizes that span several blocks of the autotuned GPU configs: 257 tokens (77 at head size 128)."""
    if op_case.device != "cuda":
        pytest.skip("model sizes need a GPU (the interpreter takes minutes)")
    for n in (257, 77):
        q, k, v, grad_out = _qkv(op_case, (2, 3, n, head_dim), range(4))
        out, lse = op_case.ops.attention_fwd(q, k, v)
        ref_out, ref_grads = reference_grads(SF.attention, (q, k, v), grad_out)
        op_close(out, ref_out, op_case.dtype)
        for fast, ref in zip(op_case.ops.attention_bwd(grad_out, q, k, v, out, lse), ref_grads, strict=True):
            op_close(fast, ref, op_case.dtype, grad=True)


# ---------------------------------------------------------------- the public op
@pytest.mark.parametrize("n,head_dim", [(7, 32), (13, 64), (1, 32), (16, 64)])
def test_public_attention(op_backend, n, head_dim):
    q, k, v = (t.requires_grad_() for t in _qkv(op_backend, (2, 3, n, head_dim)))
    out = ops.attention(q, k, v)
    ref = SF.attention(q, k, v)
    op_close(out, ref, torch.float32)
    cot = op_backend.randn(*ref.shape, seed=9)
    for got, want in zip(
        torch.autograd.grad(out, (q, k, v), cot), torch.autograd.grad(ref, (q, k, v), cot), strict=True
    ):
        op_close(got, want, torch.float32, grad=True)


def test_public_attention_on_a_strided_view(op_backend):
    qkv = op_backend.randn(2, 5, 3, 2, 32, seed=4).permute(2, 0, 3, 1, 4)  # as the DiT makes it
    op_close(ops.attention(qkv[0], qkv[1], qkv[2]), SF.attention(qkv[0], qkv[1], qkv[2]), torch.float32)


def test_opcheck(op_backend):
    q, k, v = (op_backend.randn(2, 2, 5, 32, seed=s).requires_grad_() for s in range(3))
    torch.library.opcheck(op_backend.ops.attention_fwd.default, (q, k, v))


# ---------------------------------------------------------------- fp64 and threads on the native CPU kernels
@pytest.fixture
def native_cpu():
    pytest.importorskip("shortcut_fast._C", reason="extension not built (pip install --no-build-isolation -e .)")
    return torch.ops.shortcut_fast


def test_gradcheck_in_fp64_on_cpu(native_cpu):
    """Numerical Jacobians against the backward kernel (fp64 storage sums in fp64 on the CPU)."""
    qkv = [
        torch.randn(1, 2, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s)).requires_grad_()
        for s in range(3)
    ]
    assert torch.autograd.gradcheck(lambda q, k, v: native_cpu.attention_fwd(q, k, v)[0], qkv)


def test_cpu_fp64_runs_in_fp64(native_cpu):
    """fp64 storage sums in fp64 on the CPU, so it matches the reference far below fp32 rounding."""
    q, k, v = (
        torch.randn(1, 2, 9, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in range(3)
    )
    out, _ = native_cpu.attention_fwd(q, k, v)
    torch.testing.assert_close(out, SF.attention(q, k, v), rtol=1e-12, atol=1e-12)


def test_cpu_backward_splits_a_head_over_threads(native_cpu):
    """With fewer heads than threads the CPU backward splits each head's keys over threads and sums their dq."""
    q, k, v, grad_out = (torch.randn(1, 1, 257, 64, generator=torch.Generator().manual_seed(s)) for s in range(4))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out, lse = native_cpu.attention_fwd(q, k, v)
        grads = native_cpu.attention_bwd(grad_out, q, k, v, out, lse)
    finally:
        torch.set_num_threads(before)
    ref_out, ref_grads = reference_grads(SF.attention, (q, k, v), grad_out)
    op_close(out, ref_out, torch.float32)
    for fast, ref in zip(grads, ref_grads, strict=True):
        op_close(fast, ref, torch.float32, grad=True)


def test_cpu_nan_reaches_the_output(native_cpu):
    """A NaN score makes its query's row NaN, as in the reference, rather than dropping out of the softmax."""
    q, k, v = (torch.randn(1, 2, 70, 48, generator=torch.Generator().manual_seed(s)) for s in range(3))
    q[0, 1, 5, 7] = float("nan")
    out, lse = native_cpu.attention_fwd(q, k, v)
    nan_rows = torch.zeros(1, 2, 70, dtype=torch.bool)
    nan_rows[0, 1, 5] = True
    assert out.isnan().any(-1).equal(nan_rows) and lse.isnan().equal(nan_rows)
    assert SF.attention(q, k, v).isnan().any(-1).equal(nan_rows)
