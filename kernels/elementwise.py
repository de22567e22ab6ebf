"""The per-element updates: the gated residual, the Euler step and the bootstrap target arithmetic.

Every kernel walks the flat contiguous tensors in BLOCK-sized chunks, computes in fp32 and
stores in the dtype of the first input:

* ``gated_residual``: ``x + gate[b, c] * y``, x, y: (B, N, C), gate: (B, C);
* ``euler_step``: ``x + d[b] * v``, and ``bootstrap_midpoint``: ``clip(x + d[b] / 2 * v)``,
  one kernel with the step's factor (1 or 1/2) and an optional clip;
* ``bootstrap_target``: ``clip((v1 + v2) / 2)``.

The clip is ``clamp(-clip, clip)`` and keeps NaNs, as ``torch.clamp`` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch import autotune, size_bucket

_CONFIGS = [
    triton.Config({"BLOCK": 1024}, num_warps=4),
    triton.Config({"BLOCK": 2048}, num_warps=8),
    triton.Config({"BLOCK": 4096}, num_warps=8),
]
_INTERPRET_CONFIG = triton.Config({"BLOCK": 256}, num_warps=4)
# past 4M elements every config streams at the memory bandwidth: one timing serves them all
_NUMEL_BUCKET_CAP = 1 << 22


def _tuned(kernel):
    """Autotuned on ``numel_bucket`` (``size_bucket`` of numel), an argument the kernels take for the key alone:
    keyed on numel itself they were timed again for every new tensor size. Not specialised, so one compile
    serves every bucket."""
    return autotune(_CONFIGS, _INTERPRET_CONFIG, key=["numel_bucket"])(
        triton.jit(kernel, do_not_specialize=["numel_bucket"])
    )


@triton.jit
def _flat_offsets(numel, BLOCK: tl.constexpr):
    """This program's chunk of a flat tensor (int64: tensors may pass 2**31 elements) and its mask."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    return offsets, offsets < numel


@triton.jit
def _clip(x, clip, HAS_CLIP: tl.constexpr):
    if HAS_CLIP:
        x = tl.minimum(tl.maximum(x, -clip, propagate_nan=tl.PropagateNan.ALL), clip, propagate_nan=tl.PropagateNan.ALL)
    return x


@_tuned
def _gated_residual_kernel(
    x_ptr, gate_ptr, y_ptr, out_ptr, numel, numel_bucket, channels, per_sample, BLOCK: tl.constexpr
):
    offsets, mask = _flat_offsets(numel, BLOCK)
    gate_offsets = offsets // per_sample * channels + offsets % channels
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    y = tl.load(y_ptr + offsets, mask=mask).to(tl.float32)
    gate = tl.load(gate_ptr + gate_offsets, mask=mask).to(tl.float32)
    tl.store(out_ptr + offsets, (x + gate * y).to(out_ptr.dtype.element_ty), mask=mask)


@_tuned
def _per_sample_step_kernel(
    x_ptr,
    v_ptr,
    d_ptr,
    out_ptr,
    numel,
    numel_bucket,
    per_sample,
    step_factor,
    clip,
    HAS_CLIP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offsets, mask = _flat_offsets(numel, BLOCK)
    x = tl.load(x_ptr + offsets, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offsets, mask=mask).to(tl.float32)
    d = tl.load(d_ptr + offsets // per_sample, mask=mask).to(tl.float32)
    out = _clip(x + d * step_factor * v, clip, HAS_CLIP)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


@_tuned
def _bootstrap_target_kernel(
    v1_ptr, v2_ptr, out_ptr, numel, numel_bucket, clip, HAS_CLIP: tl.constexpr, BLOCK: tl.constexpr
):
    offsets, mask = _flat_offsets(numel, BLOCK)
    v1 = tl.load(v1_ptr + offsets, mask=mask).to(tl.float32)
    v2 = tl.load(v2_ptr + offsets, mask=mask).to(tl.float32)
    out = _clip((v1 + v2) * 0.5, clip, HAS_CLIP)
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=mask)


def _bucket(numel: int) -> int:
    return size_bucket(numel, _NUMEL_BUCKET_CAP)


def _grid(numel: int):
    return lambda meta: (triton.cdiv(numel, meta["BLOCK"]),)


def _per_sample_size(x: torch.Tensor) -> int:
    """Elements per sample of a (B, ...) tensor; at least 1 so that empty tensors index safely."""
    return max(1, x[0].numel()) if x.shape[0] else 1


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x + gate[:, None, :] * y`` of contiguous x, y (B, N, C) and gate (B, C), in x's dtype."""
    out = torch.empty_like(x)
    numel = x.numel()
    _gated_residual_kernel[_grid(numel)](x, gate, y, out, numel, _bucket(numel), x.shape[-1], _per_sample_size(x))
    return out


def per_sample_step(
    x: torch.Tensor, v: torch.Tensor, d: torch.Tensor, step_factor: float, clip: float | None
) -> torch.Tensor:
    """``clip(x + step_factor * d[b] * v)`` of contiguous x, v (B, ...) and d (B,): the Euler step and midpoint."""
    out = torch.empty_like(x)
    numel = x.numel()
    _per_sample_step_kernel[_grid(numel)](
        x,
        v,
        d,
        out,
        numel,
        _bucket(numel),
        _per_sample_size(x),
        step_factor,
        0.0 if clip is None else clip,
        HAS_CLIP=clip is not None,
    )
    return out


def bootstrap_target(v1: torch.Tensor, v2: torch.Tensor, clip: float | None) -> torch.Tensor:
    """``clip((v1 + v2) / 2)`` of contiguous v1 and v2, in v1's dtype."""
    out = torch.empty_like(v1)
    numel = v1.numel()
    _bootstrap_target_kernel[_grid(numel)](
        v1, v2, out, numel, _bucket(numel), 0.0 if clip is None else clip, HAS_CLIP=clip is not None
    )
    return out
