"""The plain PyTorch reference of every op the fast paths fuse.

These functions define the numbers: the models, the objective and the sampler
call them, and every fused kernel is tested against them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The timestep features see t in [0, 1] stretched to [0, 1000] so that the
# sinusoid frequencies (periods up to 10000) resolve the grid of 2**-7 steps.
T_SCALE = 1000.0


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features ``[cos(s f_i), sin(s f_i)]`` of ``s = 1000 t``: (B,) -> (B, dim), fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * T_SCALE)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def modulate_layernorm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine over the last dim, then ``* (1 + scale) + shift``.

    x: (B, N, C) or (B, C); shift, scale: (B, C).
    """
    y = F.layer_norm(x, (x.shape[-1],), eps=eps)
    if x.dim() == 3:
        shift, scale = shift[:, None], scale[:, None]
    return y * (1 + scale) + shift


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
    """Non-causal ``softmax(q k^T / sqrt(Dh)) v`` over (B, H, N, Dh) tensors."""
    return F.scaled_dot_product_attention(q, k, v)


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
