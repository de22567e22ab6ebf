"""Fake (shape-only) implementations and autograd formulas of the fused ops.

The native (``shortcut_fast::``) and Triton (``shortcut_fast_triton::``) op
namespaces share one schema per op (``contract.py``), so one set of fakes
serves both (``register_fakes``, which refuses a contract op without a fake).
The autograd formulas here serve the Triton ops (``register_autograd``) and, under forward-mode AD and the
``torch.func`` transforms, both namespaces (the autograd.Functions of ``jvp.py``); the
native ops carry the same formulas in C++ (``csrc/autograd.cpp``), since a Python autograd kernel costs a Python call on
every use of the op, more than a fused CPU kernel saves on a small batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from . import contract


# the attention's outputs are contiguous whatever the strides of q, k and v (the Triton kernels read strided ones)
def _fake_attention_fwd(q, k, v):
    return q.new_empty(q.shape), q.new_empty(q.shape[:-1], dtype=torch.float32)


def _fake_attention_bwd(grad_out, q, k, v, out, lse):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fake_attention_jvp(q, k, v, dq, dk, dv):
    out, lse = _fake_attention_fwd(q, k, v)
    return out, lse, q.new_empty(q.shape), torch.empty_like(lse)


def _fake_modulate_layernorm_fwd(x, shift, scale, eps):
    stats = x.new_empty(x.shape[:-1], dtype=torch.float32)
    return torch.empty_like(x), stats, torch.empty_like(stats)


def _fake_modulate_layernorm_bwd(grad_y, x, scale, mean, rstd):
    return torch.empty_like(x), torch.empty_like(scale), torch.empty_like(scale)


def _fake_gated_residual(x, gate, y):
    return torch.empty_like(x)


def _fake_timestep_features(t, dim, max_period):
    return t.new_empty((t.shape[0], dim), dtype=torch.float32)


def _fake_condition_sum(c, level, d_table, y, y_table):
    return torch.empty_like(c)


def _fake_euler_step(x, v, d):
    return torch.empty_like(x)


def _fake_bootstrap_midpoint(x, v1, d, clip):
    return torch.empty_like(x)


def _fake_bootstrap_target(v1, v2, clip):
    return torch.empty_like(v1)


FAKES = {
    "attention_fwd": _fake_attention_fwd,
    "attention_bwd": _fake_attention_bwd,
    "attention_jvp": _fake_attention_jvp,
    "modulate_layernorm_fwd": _fake_modulate_layernorm_fwd,
    "modulate_layernorm_bwd": _fake_modulate_layernorm_bwd,
    "gated_residual": _fake_gated_residual,
    "timestep_features": _fake_timestep_features,
    "condition_sum": _fake_condition_sum,
    "euler_step": _fake_euler_step,
    "bootstrap_midpoint": _fake_bootstrap_midpoint,
    "bootstrap_target": _fake_bootstrap_target,
}


def setup_attention(ctx, inputs, output):
    """Save what the attention's backward reads: q, k, v, out, lse."""
    q, k, v = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)


def setup_modulate_layernorm(ctx, inputs, output):
    """Save what the layer norm's backward reads: x, scale and the row statistics."""
    x, _, scale, _ = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, scale, mean, rstd)


def setup_gated_residual(ctx, inputs, output):
    """Save gate and y, the factors of the product."""
    _, gate, y = inputs
    ctx.save_for_backward(gate, y)


def setup_condition_sum(ctx, inputs, output):
    """Save the row indices and the tables' sizes and dtypes (not the tables)."""
    _, level, d_table, y, y_table = inputs
    ctx.save_for_backward(level, y)
    ctx.d_table = (d_table.shape[0], d_table.dtype)
    ctx.y_table = None if y_table is None else (y_table.shape[0], y_table.dtype)


def _accumulate(t: torch.Tensor) -> torch.dtype:
    """fp32 for the half types and fp32, fp64 for fp64 (as csrc/autograd.cpp): an fp64 run keeps its precision."""
    return torch.promote_types(t.dtype, torch.float32)


def _rows_grad(grad: torch.Tensor, index: torch.Tensor, table: tuple[int, torch.dtype]) -> torch.Tensor:
    """The gradient of ``table[index]`` for a table of (rows, dtype): the batch rows summed per index."""
    rows, dtype = table
    acc = _accumulate(grad)
    return grad.new_zeros((rows, grad.shape[1]), dtype=acc).index_add_(0, index, grad.to(acc)).to(dtype)


def condition_sum_backward(ctx, grad):
    """The gradients of c and of the tables' rows (none for the indices)."""
    level, y = ctx.saved_tensors
    grad_y_table = None if ctx.y_table is None else _rows_grad(grad, y, ctx.y_table)
    return grad, None, _rows_grad(grad, level, ctx.d_table), None, grad_y_table


def gated_residual_backward(ctx, grad):
    """The gradients of x, gate (summed over tokens in fp32) and y (in y's dtype)."""
    gate, y = ctx.saved_tensors
    acc = _accumulate(grad)
    grad_gate = (grad.to(acc) * y.to(acc)).sum(dim=1).to(gate.dtype)
    return grad, grad_gate, (grad * gate[:, None, :]).to(y.dtype)  # y may have its own dtype (autocast)


def _check_covers(what: str, have: set[str], want: set[str]) -> None:
    """Fail at registration, not at the first trace, when the formulas and the contract name other ops."""
    if have != want:
        raise RuntimeError(
            f"shortcut_fast: the {what} do not match the op contract: missing "
            f"{sorted(want - have)}, not in the contract {sorted(have - want)}"
        )


def register_fakes(namespace: str) -> None:
    """Attach the fake implementations to every op of the contract in ``namespace`` (once per process)."""
    _check_covers("fakes", set(FAKES), {op.name for op in contract.OPS})
    for name, fake in FAKES.items():
        torch.library.register_fake(f"{namespace}::{name}")(fake)


def attention_backward(ops, ctx, grad_out, grad_lse):
    """The gradients of q, k, v from the backward kernel of the namespace ``ops`` (``lse`` takes none)."""
    q, k, v, out, lse = ctx.saved_tensors
    return ops.attention_bwd.default(grad_out.contiguous(), q, k, v, out, lse)


def modulate_layernorm_backward(ops, ctx, grad_y, grad_mean, grad_rstd):
    """The gradients of x, shift, scale from the backward kernel of the namespace ``ops`` (eps takes none)."""
    x, scale, mean, rstd = ctx.saved_tensors
    dx, dshift, dscale = ops.modulate_layernorm_bwd.default(grad_y.contiguous(), x, scale, mean, rstd)
    return dx, dshift, dscale, None


def register_autograd(namespace: str) -> None:
    """Attach the autograd formulas to the differentiable ops of ``namespace``; each backward calls the
    backward op of the same namespace."""
    ops = getattr(torch.ops, namespace)
    formulas: dict[str, tuple[Callable, Callable]] = {
        "attention_fwd": (functools.partial(attention_backward, ops), setup_attention),
        "modulate_layernorm_fwd": (functools.partial(modulate_layernorm_backward, ops), setup_modulate_layernorm),
        "gated_residual": (gated_residual_backward, setup_gated_residual),
        "condition_sum": (condition_sum_backward, setup_condition_sum),
    }
    _check_covers("autograd formulas", set(formulas), {op.name for op in contract.OPS if op.differentiable})
    for name, (backward, setup) in formulas.items():
        torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)
