"""The fused ops of the models, the objective and the sampler.

Each function has the signature and the numbers of its plain PyTorch
reference in ``reference.py`` and runs on the backend that
``shortcut_fast.set_backend`` chose (``backends.py``): the reference, the C++
extension or the Triton kernels. The kernels take contiguous inputs (the Triton
attention also strided q, k, v); the wrappers here make them so and fall back to the reference for what the op
contract (``contract.py``) says a backend does not run (a dtype, a head size)
and for gradients through an op that has no backward kernel. Under ``auto``, ``autotune.py`` decides per
call whether the kernel that the fixed rule names is kept (self-checked and measured faster) or the
reference runs; each op's kernel call is its ``_fused_<op>`` function, the one the decision times.

Under forward-mode AD or a ``torch.func`` transform (``jvp.active()``) the raw ops' own autograd cannot serve a
call (the native one is C++, which functorch refuses; the Triton one has no JVP and would drop the tangent), so
``_fused_<op>`` gets ``jvp.transformed(namespace)`` in place of ``torch.ops.<namespace>``: the same kernels through
autograd.Functions that add the JVP rule. A backend whose contract declares no JVP for an op runs the reference
there instead, with one warning; so do nested derivatives (a jvp of a jvp, ...) and transforms under
``torch.compile`` (``jvp.serves``).
"""

from __future__ import annotations

import warnings

import torch

from . import autotune, backends, contract, jvp
from . import reference as SF


def contract_backend(namespace: str, device_type: str) -> str:
    """The contract's name (``contract.BACKENDS``) of the kernels of op ``namespace`` on ``device_type``."""
    if namespace == backends.NATIVE_NAMESPACE:
        return f"native-{device_type}"
    return "triton-interpret" if device_type == "cpu" else "triton"


_warned_no_jvp: set[tuple[str, str]] = set()  # (op, contract backend) already named by _warn_no_jvp


def _kernels(op: str, x: torch.Tensor, head_dim: int | None = None, dtype: torch.dtype | None = None):
    """The op namespace that runs the raw op ``op`` on x now, or None for the reference: when no backend
    is chosen for x's device, or the contract says that backend does not run ``dtype`` (x's by default) or
    the head size, or, under forward-mode AD or a ``torch.func`` transform, has no JVP rule for the op or cannot
    serve that transform (``jvp.serves``). Under a transform the namespace is ``jvp.transformed``'s."""
    name = backends.namespace(x.device)
    backend = contract_backend(name, x.device.type) if name else ""
    support = contract.support(op, backend) if name else None
    if support is None or not support.runs(x.dtype if dtype is None else dtype, head_dim):
        return None
    if not jvp.active():
        return getattr(torch.ops, name)
    if not support.jvp:
        _warn_no_jvp(op, backend)
        return None
    return jvp.transformed(name) if jvp.serves() else None


def _warn_no_jvp(op: str, backend: str) -> None:
    """Say once per op and backend that a transform runs the reference: slower, not wrong."""
    if (op, backend) in _warned_no_jvp:
        return
    _warned_no_jvp.add((op, backend))
    warnings.warn(
        f"shortcut_fast: the {backend} kernels of {op} have no forward-mode (JVP) rule in the op contract, so "
        "under forward-mode AD and torch.func transforms it runs the reference PyTorch op",
        RuntimeWarning,
        stacklevel=4,
    )


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _per_sample_d(d: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """The step size as the kernels take it: a (B,) fp32 tensor on x's device."""
    if isinstance(d, torch.Tensor):
        return d.to(device=x.device, dtype=torch.float32).expand(x.shape[0]).contiguous()
    return torch.full((x.shape[0],), float(d), device=x.device, dtype=torch.float32)


def _keeps(name: str, ops, fused, reference, args: tuple) -> bool:
    """Whether ``auto`` keeps the kernel of ``ops`` for this call (``autotune.py``); always, for a forced backend.

    Under a transform (``ops`` from ``jvp.transformed``) nothing is timed: the timing would run the raw ops on the
    transform's wrapped tensors, which they do not take; an undecided call takes the nearest decision.
    """
    if isinstance(ops, jvp.Transformed):
        with autotune.no_timing():
            return autotune.keeps(name, ops.name, fused, reference, args)
    return autotune.keeps(name, ops.name, fused, reference, args)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal ``softmax(q k^T / sqrt(Dh)) v`` over (B, H, N, Dh) tensors; forward and backward."""
    ops = _kernels("attention_fwd", q, q.shape[-1])
    if ops is None or not _keeps("attention", ops, _fused_attention, SF.attention, (q, k, v)):
        return SF.attention(q, k, v)
    return _fused_attention(ops, q, k, v)


def _fused_attention(ops, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if ops.name != backends.TRITON_NAMESPACE:
        # the native kernels index contiguous tensors; the Triton ones take the strides of qkv's slices as they are
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return ops.attention_fwd.default(q, k, v)[0]


def modulate_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then ``* (1 + scale) + shift``; forward and backward.

    x: (B, N, C) or (B, C); shift, scale: (B, C).
    """
    ops = _kernels("modulate_layernorm_fwd", x)
    args = (x, shift, scale, eps)
    if ops is None or not _keeps("modulate_layernorm", ops, _fused_modulate_layernorm, SF.modulate_layernorm, args):
        return SF.modulate_layernorm(x, shift, scale, eps)
    return _fused_modulate_layernorm(ops, x, shift, scale, eps)


def _fused_modulate_layernorm(ops, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6):
    tokens = x if x.dim() == 3 else x[:, None]
    shift, scale = (p.to(x.dtype).contiguous() for p in (shift, scale))  # mixed only under autocast
    y = ops.modulate_layernorm_fwd.default(tokens.contiguous(), shift, scale, float(eps))[0]
    return y.view_as(x)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The adaLN-Zero residual ``x + gate * y``; x, y: (B, N, C) or (B, C), gate: (B, C).

    Under autocast y (a bf16 branch) joins an fp32 stream x: the kernels read y in its own dtype
    (no B x N x C copy) and return x's dtype; only the small gate is cast.
    """
    ops = _kernels("gated_residual", x)
    if (
        ops is None
        or _kernels("gated_residual", x, dtype=y.dtype) is None
        or not _keeps("gated_residual", ops, _fused_gated_residual, SF.gated_residual, (x, gate, y))
    ):
        return SF.gated_residual(x, gate, y)
    return _fused_gated_residual(ops, x, gate, y)


def _fused_gated_residual(ops, x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    tokens = (x, y) if x.dim() == 3 else (x[:, None], y[:, None])
    out = ops.gated_residual.default(tokens[0].contiguous(), gate.to(x.dtype).contiguous(), tokens[1].contiguous())
    return out.view_as(x)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of ``1000 t``: (B,) -> (B, dim), fp32 (no gradient flows to t)."""
    ops = _kernels("timestep_features", t)
    args = (t, dim, max_period)
    if (
        ops is None
        or _needs_grad(t)
        or not _keeps("timestep_features", ops, _fused_timestep_features, SF.timestep_features, args)
    ):
        return SF.timestep_features(t, dim, max_period)
    return _fused_timestep_features(ops, t, dim, max_period)


def _fused_timestep_features(ops, t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    return ops.timestep_features.default(t.contiguous(), int(dim), float(max_period))


def condition_sum(
    c: torch.Tensor, level: torch.Tensor, d_table: torch.Tensor, y: torch.Tensor | None, y_table: torch.Tensor | None
) -> torch.Tensor:
    """``c + d_table[level] (+ y_table[y])``: the t embedding plus the step-size and label rows."""
    # mixed only under autocast (a bf16 c from the t MLP, fp32 tables): the result has the promoted dtype, as in the
    # reference, and what is cast is the (B, C) c, not the tables (a 1001-row label table on every forward)
    dtype = torch.promote_types(c.dtype, d_table.dtype)
    if y_table is not None:
        dtype = torch.promote_types(dtype, y_table.dtype)
    ops = _kernels("condition_sum", c, dtype=dtype)
    args = (c, level, d_table, y, y_table)
    if ops is None or not _keeps("condition_sum", ops, _fused_condition_sum, SF.condition_sum, args):
        return SF.condition_sum(*args)
    return _fused_condition_sum(ops, *args)


def _fused_condition_sum(
    ops, c: torch.Tensor, level: torch.Tensor, d_table: torch.Tensor, y: torch.Tensor | None, y_table
) -> torch.Tensor:
    dtype = torch.promote_types(c.dtype, d_table.dtype)
    labels: torch.Tensor | None = None
    y_rows: torch.Tensor | None = None
    if y_table is not None:
        assert y is not None  # y comes with y_table
        dtype = torch.promote_types(dtype, y_table.dtype)
        labels, y_rows = y.long().contiguous(), y_table.to(dtype).contiguous()
    return ops.condition_sum.default(
        c.to(dtype).contiguous(), level.long().contiguous(), d_table.to(dtype).contiguous(), labels, y_rows
    )


def euler_step(x: torch.Tensor, v: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """One Euler step ``x + d * v``; d a float or a (B,) tensor."""
    ops = _kernels("euler_step", x)
    if ops is None or _needs_grad(x, v) or not _keeps("euler_step", ops, _fused_euler_step, SF.euler_step, (x, v, d)):
        return SF.euler_step(x, v, d)
    return _fused_euler_step(ops, x, v, d)


def _fused_euler_step(ops, x: torch.Tensor, v: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    return ops.euler_step.default(x.contiguous(), v.to(x.dtype).contiguous(), _per_sample_d(d, x))


def bootstrap_midpoint(x: torch.Tensor, v1: torch.Tensor, d: torch.Tensor | float, clip: float | None) -> torch.Tensor:
    """The half step of the self-consistency target: ``clip(x + d/2 * v1)``."""
    ops = _kernels("bootstrap_midpoint", x)
    args = (x, v1, d, clip)
    if (
        ops is None
        or _needs_grad(x, v1)
        or not _keeps("bootstrap_midpoint", ops, _fused_bootstrap_midpoint, SF.bootstrap_midpoint, args)
    ):
        return SF.bootstrap_midpoint(*args)
    return _fused_bootstrap_midpoint(ops, *args)


def _fused_bootstrap_midpoint(ops, x: torch.Tensor, v1: torch.Tensor, d: torch.Tensor | float, clip: float | None):
    return ops.bootstrap_midpoint.default(x.contiguous(), v1.to(x.dtype).contiguous(), _per_sample_d(d, x), clip)


def bootstrap_target(v1: torch.Tensor, v2: torch.Tensor, clip: float | None) -> torch.Tensor:
    """The self-consistency target: ``clip((v1 + v2) / 2)``."""
    ops = _kernels("bootstrap_target", v1)
    args = (v1, v2, clip)
    if (
        ops is None
        or _needs_grad(v1, v2)
        or not _keeps("bootstrap_target", ops, _fused_bootstrap_target, SF.bootstrap_target, args)
    ):
        return SF.bootstrap_target(*args)
    return _fused_bootstrap_target(ops, *args)


def _fused_bootstrap_target(ops, v1: torch.Tensor, v2: torch.Tensor, clip: float | None) -> torch.Tensor:
    return ops.bootstrap_target.default(v1.contiguous(), v2.to(v1.dtype).contiguous(), clip)
