"""LayerNorm without affine over the channels, modulated per sample: the adaLN of the DiT blocks.

``y = (x - mean) * rstd * (1 + scale[b]) + shift[b]`` with x: (B, N, C), shift, scale: (B, C),
biased variance, and mean, rstd: (B, N) fp32 kept for the backward. Each program owns a tile of
(BLOCK_N tokens, all C channels) of one sample, so the row statistics never leave registers.
The backward writes dx per row and reduces dshift = Σ_N dy and dscale = Σ_N dy · x̂ in two
deterministic steps (no atomics): each program sums its own tokens into a (B, programs, C)
fp32 buffer, and torch sums that buffer over the programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import INTERPRET, programs_to_fill

# Live values per tile (fp32): past a few thousand a tile spills registers at 8 warps.
_TILE_ELEMENTS = 4096
MAX_GRID_Y = 65535  # CUDA's limit on a grid's second axis


@triton.jit
def _load_tile(ptr, sample, tokens, cols, seq_len, channels):
    """The (tokens, cols) tile of sample's (N, C) rows as fp32; out-of-range entries read as zeros."""
    mask = (tokens < seq_len)[:, None] & (cols < channels)[None, :]
    rows = sample * seq_len + tokens
    return tl.load(ptr + rows[:, None] * channels + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_tile(ptr, sample, tokens, cols, seq_len, channels, tile):
    mask = (tokens < seq_len)[:, None] & (cols < channels)[None, :]
    rows = sample * seq_len + tokens
    tl.store(ptr + rows[:, None] * channels + cols[None, :], tile.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _modulate_layernorm_fwd_kernel(
    x_ptr,
    shift_ptr,
    scale_ptr,
    y_ptr,
    mean_ptr,
    rstd_ptr,
    seq_len,
    channels,
    eps,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # grid: (B, token tiles)
    sample = tl.program_id(0).to(tl.int64)
    tokens = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < channels
    x = _load_tile(x_ptr, sample, tokens, cols, seq_len, channels)
    mean = tl.sum(x, 1) / channels
    centered = tl.where(col_mask[None, :], x - mean[:, None], 0.0)
    rstd = tl.rsqrt(tl.sum(centered * centered, 1) / channels + eps)
    scale = tl.load(scale_ptr + sample * channels + cols, mask=col_mask, other=0.0).to(tl.float32)
    shift = tl.load(shift_ptr + sample * channels + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * (1.0 + scale[None, :]) + shift[None, :]
    _store_tile(y_ptr, sample, tokens, cols, seq_len, channels, y)
    token_mask = tokens < seq_len
    tl.store(mean_ptr + sample * seq_len + tokens, mean, mask=token_mask)
    tl.store(rstd_ptr + sample * seq_len + tokens, rstd, mask=token_mask)


@triton.jit
def _modulate_layernorm_bwd_kernel(
    grad_y_ptr,
    x_ptr,
    scale_ptr,
    mean_ptr,
    rstd_ptr,
    dx_ptr,
    dshift_part_ptr,
    dscale_part_ptr,
    seq_len,
    channels,
    tokens_per_program,
    BLOCK_N: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # grid: (B, programs per sample); program p owns tokens [p, p + 1) * tokens_per_program
    sample = tl.program_id(0).to(tl.int64)
    part = tl.program_id(1)
    cols = tl.arange(0, BLOCK_C)
    col_mask = cols < channels
    gain = 1.0 + tl.load(scale_ptr + sample * channels + cols, mask=col_mask, other=0.0).to(tl.float32)

    dshift = tl.zeros([BLOCK_C], tl.float32)
    dscale = tl.zeros([BLOCK_C], tl.float32)
    first = part * tokens_per_program
    for start in range(first, first + tokens_per_program, BLOCK_N):
        tokens = start + tl.arange(0, BLOCK_N)
        token_mask = tokens < seq_len
        grad_y = _load_tile(grad_y_ptr, sample, tokens, cols, seq_len, channels)
        x = _load_tile(x_ptr, sample, tokens, cols, seq_len, channels)
        mean = tl.load(mean_ptr + sample * seq_len + tokens, mask=token_mask, other=0.0)
        rstd = tl.load(rstd_ptr + sample * seq_len + tokens, mask=token_mask, other=0.0)
        x_hat = tl.where(col_mask[None, :], (x - mean[:, None]) * rstd[:, None], 0.0)
        grad_x_hat = grad_y * gain[None, :]
        # dx = rstd * (g - mean(g) - x̂ * mean(g * x̂)), the layer norm's Jacobian applied to g = dy * (1 + scale)
        mean_g = tl.sum(grad_x_hat, 1) / channels
        mean_g_x_hat = tl.sum(grad_x_hat * x_hat, 1) / channels
        dx = (grad_x_hat - mean_g[:, None] - x_hat * mean_g_x_hat[:, None]) * rstd[:, None]
        _store_tile(dx_ptr, sample, tokens, cols, seq_len, channels, dx)
        dshift += tl.sum(grad_y, 0)
        dscale += tl.sum(grad_y * x_hat, 0)

    part_offset = (sample * tl.num_programs(1) + part) * channels
    tl.store(dshift_part_ptr + part_offset + cols, dshift, mask=col_mask)
    tl.store(dscale_part_ptr + part_offset + cols, dscale, mask=col_mask)


def _tiling(channels: int) -> tuple[int, int, int]:
    """``(BLOCK_N, BLOCK_C, num_warps)``: all channels of a row in one tile, as many rows as fit."""
    block_c = triton.next_power_of_2(channels)
    # a few tokens a tile under the interpreter, so that short test sequences span several tiles
    block_n = 4 if INTERPRET else max(1, min(16, _TILE_ELEMENTS // block_c))
    num_warps = 8 if block_n * block_c >= _TILE_ELEMENTS else 4
    return block_n, block_c, num_warps


def token_tiles(seq_len: int, channels: int) -> int:
    """The forward's programs per sample: its grid's second axis, which CUDA limits to ``MAX_GRID_Y``."""
    return triton.cdiv(seq_len, _tiling(channels)[0])


def modulate_layernorm_forward(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, mean, rstd)`` of contiguous x (B, N, C), shift and scale (B, C): y like x, mean and rstd (B, N) fp32."""
    batch, seq_len, channels = x.shape
    y = torch.empty_like(x)
    mean = torch.empty((batch, seq_len), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    block_n, block_c, num_warps = _tiling(channels)
    _modulate_layernorm_fwd_kernel[(batch, token_tiles(seq_len, channels))](
        x, shift, scale, y, mean, rstd, seq_len, channels, eps, BLOCK_N=block_n, BLOCK_C=block_c, num_warps=num_warps
    )
    return y, mean, rstd


def modulate_layernorm_backward(
    grad_y: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dshift, dscale)`` of ``modulate_layernorm_forward``'s y: dx like x, dshift, dscale (B, C) like scale."""
    batch, seq_len, channels = x.shape
    block_n, block_c, num_warps = _tiling(channels)
    # enough programs per sample to fill the GPU, each a whole number of tiles
    parts = max(1, min(triton.cdiv(seq_len, block_n), programs_to_fill(x.device) // max(batch, 1)))
    tokens_per_program = max(1, triton.cdiv(triton.cdiv(seq_len, parts), block_n)) * block_n
    parts = max(1, triton.cdiv(seq_len, tokens_per_program))
    dx = torch.empty_like(x)
    dshift_parts = torch.empty((batch, parts, channels), device=x.device, dtype=torch.float32)
    dscale_parts = torch.empty_like(dshift_parts)
    _modulate_layernorm_bwd_kernel[(batch, parts)](
        grad_y,
        x,
        scale,
        mean,
        rstd,
        dx,
        dshift_parts,
        dscale_parts,
        seq_len,
        channels,
        tokens_per_program,
        BLOCK_N=block_n,
        BLOCK_C=block_c,
        num_warps=num_warps,
    )
    return dx, dshift_parts.sum(1).to(scale.dtype), dscale_parts.sum(1).to(scale.dtype)
