"""``gated_residual``, ``euler_step``, ``bootstrap_midpoint``, ``bootstrap_target`` on every backend.

Raw ops and public ops against ``shortcut_fast/ops/reference.py`` on the same (rounded) inputs in fp32.
"""

from __future__ import annotations

import pytest
import torch
from helpers import op_close, op_grads, reference_grads

import shortcut_fast as sf
from shortcut_fast import ops
from shortcut_fast.ops import reference as SF

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("shape", [(3, 13, 37), (3, 7, 37), (2, 1, 64)])
def test_gated_residual(op_case, shape):
    x, y = (op_case.randn(*shape, seed=s) for s in (0, 1))
    gate = op_case.randn(shape[0], shape[-1], seed=2)
    out = op_case.ops.gated_residual(x, gate, y)
    assert out.dtype == op_case.dtype
    op_close(out, SF.gated_residual(x.float(), gate.float(), y.float()), op_case.dtype)


@pytest.mark.parametrize("shape", [(3, 37), (3, 1, 7, 5), (3, 7, 37), (2, 1, 8, 8)])
def test_euler_step(op_case, shape):
    x, v = (op_case.randn(*shape, seed=s, scale=3.0) for s in (0, 1))
    d = torch.tensor([1 / 128, 0.5, 1.0][: shape[0]], device=op_case.device)
    out = op_case.ops.euler_step(x, v, d)
    assert out.dtype == op_case.dtype
    op_close(out, SF.euler_step(x.float(), v.float(), d), op_case.dtype)


@pytest.mark.parametrize("shape", [(3, 1, 7, 5), (3, 7, 37), (2, 1, 8, 8)])
@pytest.mark.parametrize("clip", [None, 0.75, 4.0])
def test_bootstrap_midpoint(op_case, shape, clip):
    x, v1 = (op_case.randn(*shape, seed=s, scale=3.0) for s in (0, 1))
    d = torch.tensor([0.25, 1 / 128, 1.0][: shape[0]], device=op_case.device)
    out = op_case.ops.bootstrap_midpoint(x, v1, d, clip)
    op_close(out, SF.bootstrap_midpoint(x.float(), v1.float(), d, clip), op_case.dtype)


@pytest.mark.parametrize("shape", [(3, 1, 7, 5), (2, 5, 37)])
@pytest.mark.parametrize("clip", [None, 0.5, 0.75])
def test_bootstrap_target(op_case, shape, clip):
    v1, v2 = (op_case.randn(*shape, seed=s) for s in (0, 1))
    out = op_case.ops.bootstrap_target(v1, v2, clip)
    op_close(out, SF.bootstrap_target(v1.float(), v2.float(), clip), op_case.dtype)


def test_clip_keeps_nans(op_case):
    v1 = op_case.randn(2, 5)
    v1[1, 2] = float("nan")
    assert op_case.ops.bootstrap_target(v1, v1, 0.5).isnan().sum() == 1


def test_autograd_through_gated_residual(op_case):
    inputs = [op_case.randn(*s, seed=i) for i, s in enumerate([(3, 7, 37), (3, 37), (3, 7, 37)])]
    grad_out = op_case.randn(3, 7, 37, seed=3)
    _, expected = reference_grads(SF.gated_residual, inputs, grad_out)
    for got, want in zip(op_grads(op_case.ops.gated_residual, inputs, grad_out), expected, strict=True):
        op_close(got, want, op_case.dtype, grad=True)


# ---------------------------------------------------------------- the public ops
@pytest.mark.parametrize("shape", [(3, 7, 37), (5, 48)])
def test_public_gated_residual(op_backend, shape):
    x, y = (op_backend.randn(*shape, seed=s).requires_grad_() for s in (0, 1))
    gate = op_backend.randn(shape[0], shape[-1], seed=2).requires_grad_()
    out, ref = ops.gated_residual(x, gate, y), SF.gated_residual(x, gate, y)
    op_close(out, ref, torch.float32)
    cot = op_backend.randn(*shape, seed=5)
    for got, want in zip(
        torch.autograd.grad(out, (x, gate, y), cot), torch.autograd.grad(ref, (x, gate, y), cot), strict=True
    ):
        op_close(got, want, torch.float32, grad=True)


@pytest.mark.parametrize("d", [0.25, "per-sample"])
def test_public_euler_and_bootstrap_arithmetic(op_backend, d):
    x, v1, v2 = (op_backend.randn(4, 3, 5, seed=s, scale=3.0) for s in range(3))
    if d == "per-sample":
        d = torch.tensor([1.0, 0.5, 1 / 128, 0.25], device=op_backend.device)
    op_close(ops.euler_step(x, v1, d), SF.euler_step(x, v1, d), torch.float32)
    for clip in (4.0, None):
        op_close(ops.bootstrap_midpoint(x, v1, d, clip), SF.bootstrap_midpoint(x, v1, d, clip), torch.float32)
        op_close(ops.bootstrap_target(v1, v2, clip), SF.bootstrap_target(v1, v2, clip), torch.float32)


def test_public_ops_on_a_strided_input(op_backend):
    x = op_backend.randn(5, 4, 3, seed=0).transpose(1, 2)  # (5, 3, 4), not contiguous
    v = op_backend.randn(5, 3, 4, seed=1)
    op_close(ops.euler_step(x, v, 0.5), SF.euler_step(x, v, 0.5), torch.float32)
    op_close(ops.bootstrap_target(x, v, None), SF.bootstrap_target(x, v, None), torch.float32)


def test_opcheck(op_backend):
    x = op_backend.randn(2, 5, 37, seed=3).requires_grad_()
    gate, y = op_backend.randn(2, 37, seed=6).requires_grad_(), op_backend.randn(2, 5, 37, seed=8).requires_grad_()
    plain = [t.detach() for t in (x, x * 2)]
    d = torch.tensor([0.5, 0.25], device=op_backend.device)
    torch.library.opcheck(op_backend.ops.gated_residual.default, (x, gate, y))
    torch.library.opcheck(op_backend.ops.euler_step.default, (*plain, d))
    torch.library.opcheck(op_backend.ops.bootstrap_midpoint.default, (*plain, d, 4.0))
    torch.library.opcheck(op_backend.ops.bootstrap_target.default, (*plain, None))


# ---------------------------------------------------------------- mixed dtypes (autocast)
@pytest.mark.parametrize("y_dtype", [torch.bfloat16, torch.float16])
def test_gated_residual_reads_y_in_its_own_dtype(op_backend, y_dtype, monkeypatch):
    """The raw op takes a 16-bit y into an fp32 x (what autocast hands it), and its gradient returns in y's dtype."""
    if op_backend.contract == "triton-interpret":
        registered = pytest.importorskip("shortcut_fast.ops.triton")
        monkeypatch.setattr(registered, "BACKEND", "triton")  # the dtypes a GPU runs: the interpreter runs them too
    x = op_backend.randn(3, 7, 37, seed=0).requires_grad_()
    gate = op_backend.randn(3, 37, seed=1).requires_grad_()
    y = op_backend.randn(3, 7, 37, seed=2, dtype=y_dtype).requires_grad_()
    out = op_backend.ops.gated_residual(x, gate, y)
    ref = SF.gated_residual(x, gate, y)  # type promotion: fp32
    assert out.dtype == torch.float32
    op_close(out, ref, torch.float32)
    cot = op_backend.randn(3, 7, 37, seed=3)
    got, want = torch.autograd.grad(out, (x, gate, y), cot), torch.autograd.grad(ref, (x, gate, y), cot)
    assert got[2].dtype == y_dtype
    for g, w in zip(got, want, strict=True):
        # the gradient of y is rounded to y's dtype: held to the 16-bit tolerance
        op_close(g.float(), w.float(), torch.bfloat16 if g.dtype == y_dtype else torch.float32, grad=True)


def _fp32_copies(fn) -> list[tuple[int, ...]]:
    """The shapes of the tensors ``fn()`` casts up to fp32 (aten._to_copy), seen below the Python API."""
    from torch.utils._python_dispatch import TorchDispatchMode

    shapes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default and out.dtype == torch.float32 and args[0].dtype != out.dtype:
                shapes.append(tuple(out.shape))
            return out

    with Record():
        fn()
    return shapes


def test_autocast_forward_copies_neither_the_branches_nor_the_label_table(op_backend):
    """Under bf16 autocast a DiT forward upcasts no (B, N, C) branch for the residual and no table."""
    if op_backend.contract == "triton-interpret":
        pytest.skip("the interpreter's contract runs fp32 only: bf16 branches take the reference")
    model = sf.ShortcutDiT(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2)
    model = model.to(op_backend.device).eval()
    x = op_backend.randn(2, 1, 8, 8)
    t = torch.zeros(2, device=x.device)
    y = torch.tensor([3, 7], device=x.device)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
        copies = _fp32_copies(lambda: model(x, t, torch.ones_like(t), y))
        out = model(x, t, torch.ones_like(t), y)
    tokens, table = (2, 16, 32), tuple(model.cond.y_table.weight.shape)
    assert tokens not in copies and table not in copies, copies
    with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16), sf.backend("reference"):
        want = model(x, t, torch.ones_like(t), y)
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2)
