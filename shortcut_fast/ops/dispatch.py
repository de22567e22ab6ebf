"""The fused ops of the models, the objective and the sampler.

Each function has the signature and the numbers of its plain PyTorch
reference in ``functional.py`` and runs on the backend that
``shortcut_fast.set_backend`` chose (``backends.py``): the reference, the C++
extension or the Triton kernels. The kernels take contiguous inputs; the
wrappers here make them so and fall back to the reference for what a kernel
does not cover (a head size the GPU attention kernels were not built for,
gradients through an op that has no backward kernel). The op contract is in
``docs/kernels.md``.
"""

from __future__ import annotations

import torch

from . import backends
from . import reference as SF

# head sizes the GPU (Triton and CUDA) attention kernels are built for; the CPU kernel takes any
GPU_HEAD_DIMS = (32, 64, 128)


def _kernels(device: torch.device):
    """The op namespace that runs on ``device`` now, or None for the reference."""
    name = backends.namespace(device)
    return getattr(torch.ops, name) if name else None


def _attention_kernels(q: torch.Tensor):
    """The attention ops for q, or None: the native CPU kernel takes any head size, the others a fixed set."""
    name = backends.namespace(q.device)
    if not name or (q.shape[-1] not in GPU_HEAD_DIMS and (name, q.device.type) != (backends.NATIVE_NAMESPACE, "cpu")):
        return None
    return getattr(torch.ops, name)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _per_sample_d(d: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """The step size as the kernels take it: a (B,) fp32 tensor on x's device."""
    if isinstance(d, torch.Tensor):
        return d.to(device=x.device, dtype=torch.float32).expand(x.shape[0]).contiguous()
    return torch.full((x.shape[0],), float(d), device=x.device, dtype=torch.float32)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal ``softmax(q k^T / sqrt(Dh)) v`` over (B, H, N, Dh) tensors; forward and backward."""
    ops = _attention_kernels(q)
    if ops is None:
        return SF.attention(q, k, v)
    return ops.attention_fwd.default(q.contiguous(), k.contiguous(), v.contiguous())[0]


def modulate_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then ``* (1 + scale) + shift``; forward and backward.

    x: (B, N, C) or (B, C); shift, scale: (B, C).
    """
    ops = _kernels(x.device)
    if ops is None:
        return SF.modulate_layernorm(x, shift, scale, eps)
    tokens = x if x.dim() == 3 else x[:, None]
    shift, scale = (p.to(x.dtype).contiguous() for p in (shift, scale))  # mixed only under autocast
    y = ops.modulate_layernorm_fwd.default(tokens.contiguous(), shift, scale, float(eps))[0]
    return y.view_as(x)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The adaLN-Zero residual ``x + gate * y``; x, y: (B, N, C) or (B, C), gate: (B, C)."""
    ops = _kernels(x.device)
    if ops is None:
        return SF.gated_residual(x, gate, y)
    tokens = (x, y) if x.dim() == 3 else (x[:, None], y[:, None])
    out = ops.gated_residual.default(tokens[0].contiguous(), gate.to(x.dtype).contiguous(),
                                     tokens[1].to(x.dtype).contiguous())
    return out.view_as(x)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of ``1000 t``: (B,) -> (B, dim), fp32 (no gradient flows to t)."""
    ops = _kernels(t.device)
    if ops is None or _needs_grad(t):
        return SF.timestep_features(t, dim, max_period)
    return ops.timestep_features.default(t.contiguous(), int(dim), float(max_period))


def condition_sum(c: torch.Tensor, level: torch.Tensor, d_table: torch.Tensor, y: torch.Tensor | None,
                  y_table: torch.Tensor | None) -> torch.Tensor:
    """``c + d_table[level] (+ y_table[y])``: the t embedding plus the step-size and label rows."""
    ops = _kernels(c.device)
    if ops is None:
        return SF.condition_sum(c, level, d_table, y, y_table)
    labels, y_rows = (None, None) if y_table is None else (y.long().contiguous(), y_table.to(c.dtype).contiguous())
    return ops.condition_sum.default(c.contiguous(), level.long().contiguous(), d_table.to(c.dtype).contiguous(),
                                     labels, y_rows)


def euler_step(x: torch.Tensor, v: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """One Euler step ``x + d * v``; d a float or a (B,) tensor."""
    ops = _kernels(x.device)
    if ops is None or _needs_grad(x, v):
        return SF.euler_step(x, v, d)
    return ops.euler_step.default(x.contiguous(), v.to(x.dtype).contiguous(), _per_sample_d(d, x))


def bootstrap_midpoint(x: torch.Tensor, v1: torch.Tensor, d: torch.Tensor | float, clip: float | None) -> torch.Tensor:
    """The half step of the self-consistency target: ``clip(x + d/2 * v1)``."""
    ops = _kernels(x.device)
    if ops is None or _needs_grad(x, v1):
        return SF.bootstrap_midpoint(x, v1, d, clip)
    return ops.bootstrap_midpoint.default(x.contiguous(), v1.to(x.dtype).contiguous(), _per_sample_d(d, x), clip)


def bootstrap_target(v1: torch.Tensor, v2: torch.Tensor, clip: float | None) -> torch.Tensor:
    """The self-consistency target: ``clip((v1 + v2) / 2)``."""
    ops = _kernels(v1.device)
    if ops is None or _needs_grad(v1, v2):
        return SF.bootstrap_target(v1, v2, clip)
    return ops.bootstrap_target.default(v1.contiguous(), v2.to(v1.dtype).contiguous(), clip)
