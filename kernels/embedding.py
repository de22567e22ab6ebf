"""The conditioning embedding: sinusoidal timestep features and the sum of the condition rows.

* ``timestep_features``: (B,) -> (B, dim) fp32 ``[cos(s f_i), sin(s f_i)]`` with ``s = t_scale * t``,
  ``f_i = exp(-ln(max_period) i / half)``, ``half = dim // 2``, a zero column last when dim is odd;
* ``condition_sum``: ``c + d_table[level] (+ y_table[y])``, c: (B, C), level, y: (B,) int64.

Both are tiny (B rows), so they run one fixed launch config and are not autotuned.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from .launch import INTERPRET

# Arguments reach 1000 rad. On a GPU tl.exp/tl.cos/tl.sin may lower to approximate instructions whose
# error grows with the argument, so the kernel calls libdevice's accurate ones; the interpreter has
# no libdevice and uses numpy's (accurate) functions through tl.*.
_USE_LIBDEVICE = not INTERPRET

_CHANNEL_BLOCK = 1024


@triton.jit
def _timestep_features_kernel(
    t_ptr, out_ptr, dim, half, neg_log_period, t_scale, BLOCK: tl.constexpr, USE_LIBDEVICE: tl.constexpr
):
    # grid: (B,)
    sample = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, BLOCK)
    mask = i < half
    # same rounding order as the reference: (-ln(max_period) * i) / half in fp32
    exponent = neg_log_period * i.to(tl.float32) / tl.maximum(half, 1)
    s = tl.load(t_ptr + sample).to(tl.float32) * t_scale
    if USE_LIBDEVICE:
        args = s * libdevice.exp(exponent)
        cos, sin = libdevice.cos(args), libdevice.sin(args)
    else:
        args = s * tl.exp(exponent)
        cos, sin = tl.cos(args), tl.sin(args)
    row = out_ptr + sample * dim
    tl.store(row + i, cos, mask=mask)
    tl.store(row + half + i, sin, mask=mask)
    tl.store(row + 2 * half + i, tl.zeros([BLOCK], tl.float32), mask=i < dim - 2 * half)  # odd dim's zero column


@triton.jit
def _table_row(table_ptr, row, row_ok, channels, cols, mask):
    """The row's columns as fp32 when ``row_ok``, else NaNs read from row 0: never an address outside the table."""
    values = tl.load(table_ptr + tl.where(row_ok, row, 0) * channels + cols, mask=mask).to(tl.float32)
    return tl.where(row_ok, values, float("nan"))


# A level or label outside its table must not read out of bounds, also inside a CUDA graph or torch.compile
# where no host check runs: debug=True keeps the device asserts, which stop the kernel on a GPU as the native
# CUDA op's asserts do; the interpreter skips asserts, and there _table_row gives the row NaNs.
@triton.jit(debug=True)
def _condition_sum_kernel(
    c_ptr,
    level_ptr,
    d_table_ptr,
    label_ptr,
    y_table_ptr,
    out_ptr,
    channels,
    d_rows,
    y_rows,
    HAS_LABELS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # grid: (B, channel blocks)
    sample = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < channels
    acc = tl.load(c_ptr + sample * channels + cols, mask=mask).to(tl.float32)
    level = tl.load(level_ptr + sample)
    level_ok = (level >= 0) & (level < d_rows)
    tl.device_assert(level_ok, "condition_sum: level out of range of d_table")
    acc += _table_row(d_table_ptr, level, level_ok, channels, cols, mask)
    if HAS_LABELS:
        label = tl.load(label_ptr + sample)
        label_ok = (label >= 0) & (label < y_rows)
        tl.device_assert(label_ok, "condition_sum: y out of range of y_table")
        acc += _table_row(y_table_ptr, label, label_ok, channels, cols, mask)
    tl.store(out_ptr + sample * channels + cols, acc.to(out_ptr.dtype.element_ty), mask=mask)


def timestep_features(t: torch.Tensor, dim: int, max_period: float, t_scale: float) -> torch.Tensor:
    """The (B, dim) fp32 sinusoidal features of ``t_scale * t`` for contiguous t (B,)."""
    half = dim // 2
    out = torch.empty((t.shape[0], dim), device=t.device, dtype=torch.float32)
    _timestep_features_kernel[(t.shape[0],)](
        t,
        out,
        dim,
        half,
        -math.log(max_period),
        t_scale,
        BLOCK=triton.next_power_of_2(max(half, 1)),
        USE_LIBDEVICE=_USE_LIBDEVICE,
    )
    return out


def condition_sum(
    c: torch.Tensor, level: torch.Tensor, d_table: torch.Tensor, y: torch.Tensor | None, y_table: torch.Tensor | None
) -> torch.Tensor:
    """``c + d_table[level] (+ y_table[y])`` of contiguous tensors, in c's dtype."""
    batch, channels = c.shape
    out = torch.empty_like(c)
    block = min(_CHANNEL_BLOCK, triton.next_power_of_2(channels))
    has_labels = y is not None
    label_rows = 0
    if has_labels:
        assert y_table is not None  # the op passes y and y_table together
        label_rows = y_table.shape[0]
    # without labels the kernel never reads its label arguments; level and d_table stand in for them
    _condition_sum_kernel[(batch, triton.cdiv(channels, block))](
        c,
        level,
        d_table,
        y if has_labels else level,
        y_table if has_labels else d_table,
        out,
        channels,
        d_table.shape[0],
        label_rows,
        HAS_LABELS=has_labels,
        BLOCK=block,
    )
    return out
