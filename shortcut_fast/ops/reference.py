"""The plain PyTorch reference of every op the fast paths fuse.

These functions define the numbers: the models, the objective and the sampler
call them, and every fused kernel is tested against them.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

# The timestep features see t in [0, 1] stretched to [0, 1000] so that the
# sinusoid frequencies (periods up to 10000) resolve the grid of 2**-7 steps.
T_SCALE = 1000.0


def forward_ad_active() -> bool:
    """Whether forward-mode AD may reach an op: a dual level is open (``torch.autograd.forward_ad.dual_level``,
    which ``torch.func.jvp`` opens too, at any nesting).

    A read of one Python global, no tensor inspected: per tensor, a tangent is not visible through the
    wrappers of an inner transform (``torch.func.jvp`` of ``torch.func.grad``), so the level is what is checked.
    """
    return fwAD._current_level >= 0


def timestep_frequencies(dim: int, max_period: float, device: torch.device) -> torch.Tensor:
    """The ``dim // 2`` frequencies ``f_i = exp(-ln(max_period) i / half)`` of ``timestep_features``, fp32."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=device) / half)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(s f_i), sin(s f_i)]`` of ``s = 1000 t``: (B,) -> (B, dim), fp32."""
    freqs = timestep_frequencies(dim, max_period, t.device)
    args = (t.float() * T_SCALE)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def modulate_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then ``* (1 + scale) + shift``.

    x: (B, N, C) or (B, C); shift, scale: (B, C). Where forward-mode AD may reach it the normalisation runs in
    plain ops: ``F.layer_norm``'s JVP reads its saved statistics as constants, so the gradient of its tangent
    and its second-order JVP come out wrong (pytorch/pytorch#196700).
    """
    y = _layer_norm(x, eps) if forward_ad_active() else F.layer_norm(x, (x.shape[-1],), eps=eps)
    if x.dim() == 3:
        shift, scale = shift[:, None], scale[:, None]
    return y * (1 + scale) + shift


def _layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.layer_norm`` without affine in plain ops (biased variance), in fp32 for 16-bit storage as it sums."""
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    centred = xf - xf.mean(-1, keepdim=True)
    return (centred * torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)).to(x.dtype)


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The adaLN-Zero residual ``x + gate * y``; x, y: (B, N, C) or (B, C), gate: (B, C)."""
    if x.dim() == 3:
        gate = gate[:, None]
    return x + gate * y


def condition_sum(
    c: torch.Tensor, level: torch.Tensor, d_table: torch.Tensor, y: torch.Tensor | None, y_table: torch.Tensor | None
) -> torch.Tensor:
    """The conditioning vector ``c + d_table[level] (+ y_table[y])``: the t embedding plus the table rows."""
    c = c + F.embedding(level, d_table)
    if y_table is None:
        return c
    assert y is not None  # y comes with y_table
    return c + F.embedding(y, y_table)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Non-causal ``softmax(q k^T / sqrt(Dh)) v`` over (B, H, N, Dh) tensors.

    SDPA, except where forward-mode AD may reach it: its flash and memory-efficient kernels have no JVP, so
    there the same formula runs in plain ops (``math_attention``).
    """
    if forward_ad_active():
        return math_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(Dh)) v`` in plain ops (differentiable in both modes), summed in fp32 for 16-bit
    storage as SDPA and the kernels sum; the result in q's dtype."""
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(acc) @ k.to(acc).transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
    return (scores.softmax(-1) @ v.to(acc)).to(q.dtype)


def _per_sample(d: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor | float:
    """Shape a per-sample (B,) step size to broadcast against x; keep floats as they are."""
    if isinstance(d, torch.Tensor) and d.dim() == 1:
        return d.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return d


def euler_step(x: torch.Tensor, v: torch.Tensor, d: torch.Tensor | float) -> torch.Tensor:
    """One Euler step ``x + d * v``; d a float or a (B,) tensor."""
    return x + _per_sample(d, x) * v


def _clip(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    return x if clip is None else x.clamp(-clip, clip)


def bootstrap_midpoint(x: torch.Tensor, v1: torch.Tensor, d: torch.Tensor | float, clip: float | None) -> torch.Tensor:
    """The half step of the self-consistency target: ``clip(x + d/2 * v1)``."""
    return _clip(euler_step(x, v1, _per_sample(d, x) * 0.5), clip)


def bootstrap_target(v1: torch.Tensor, v2: torch.Tensor, clip: float | None) -> torch.Tensor:
    """The self-consistency target: ``clip((v1 + v2) / 2)``."""
    return _clip((v1 + v2) * 0.5, clip)


def guided_velocity(v_cond: torch.Tensor, v_null: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance ``v_null + w (v_cond - v_null)``."""
    return v_null + scale * (v_cond - v_null)
