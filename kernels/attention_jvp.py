"""The forward-mode derivative (JVP) of ``attention.py``'s attention, fused into one kernel.

For (B, H, N, Dh) q, k, v and their tangents dq, dk, dv, one pass over the key blocks computes the forward's
``out`` and ``lse`` and their tangents, with the forward's online softmax and no (N, N) matrix. Per query row i,
with ``s_j = scale q·k_j`` and ``ds_j = scale (dq·k_j + q·dk_j)``, the sums run over ``e_j = exp(s_j - m)``::

    l = Σ e_j,   acc = Σ e_j v_j,   acc_t = Σ e_j (ds_j v_j + dv_j),   g = Σ e_j ds_j

all rescaled by ``exp(m_old - m_new)`` when the running max m grows; then ``out = acc / l``,
``lse = m + log l``, ``d_lse = g / l`` and ``d_out = acc_t / l - d_lse out``. Scores are in log2 units for
``exp2``, as in the forward; the tangent scores ``ds`` stay in natural units. q, k, v are read through one set of
strides and dq, dk, dv through another (each the last dim contiguous: the slices of a fused qkv projection and of
its tangent); out and d_out come back contiguous in q's dtype, lse and d_lse (B, H, N) fp32. All products
accumulate in fp32; for 16-bit storage the probabilities and ``p ds`` meet v and dv in that dtype, as the
forward's ``p`` does.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .attention import (
    _BATCH_BUCKET_CAP,
    _INTERPRET_CONFIG,
    _LN2,
    _LOG2E,
    _TUNING_KEY,
    _dot_precision,
    _grid,
    _head_start,
    _load_rows,
    _smallest_for_fp32,
    _store_rows,
    _strides,
)
from .launch import autotune, size_bucket

# Each program holds two query blocks (q, dq) and two fp32 sums of their size (acc, acc_t), and streams four key
# blocks (k, v, dk, dv): about twice the forward's registers, so its tiles stop at 64 by 64, or 128 queries by 32
# keys. Configs that do not fit fail to compile and the autotuner drops them.
_JVP_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2),
]


@autotune(_JVP_CONFIGS, _INTERPRET_CONFIG, _TUNING_KEY, _smallest_for_fp32)
@triton.jit(do_not_specialize=["batch_bucket"])
def _attention_jvp_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    dq_ptr,
    dk_ptr,
    dv_ptr,
    out_ptr,
    lse_ptr,
    d_out_ptr,
    d_lse_ptr,
    heads,
    stride_b,
    stride_h,
    stride_n,
    tangent_stride_b,
    tangent_stride_h,
    tangent_stride_n,
    seq_len,
    sm_scale,
    batch_bucket,  # the autotune key only (not specialised: one compile serves every bucket)
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # grid: (B * H, query blocks), as the forward's; int64 offsets since B * H * N * Dh may pass 2**31
    head = tl.program_id(0).to(tl.int64)
    offset = head * seq_len * HEAD_DIM  # of the contiguous out and d_out
    k_head = _head_start(k_ptr, head, heads, stride_b, stride_h)
    v_head = _head_start(v_ptr, head, heads, stride_b, stride_h)
    dk_head = _head_start(dk_ptr, head, heads, tangent_stride_b, tangent_stride_h)
    dv_head = _head_start(dv_ptr, head, heads, tangent_stride_b, tangent_stride_h)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(_head_start(q_ptr, head, heads, stride_b, stride_h), rows, seq_len, stride_n, HEAD_DIM)
    dq = _load_rows(
        _head_start(dq_ptr, head, heads, tangent_stride_b, tangent_stride_h), rows, seq_len, tangent_stride_n, HEAD_DIM
    )
    qk_scale = sm_scale * _LOG2E

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    tangent_sum = tl.zeros([BLOCK_M], tl.float32)  # g = Σ e ds
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    acc_t = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_head, keys, seq_len, stride_n, HEAD_DIM)
        v = _load_rows(v_head, keys, seq_len, stride_n, HEAD_DIM)
        dk = _load_rows(dk_head, keys, seq_len, tangent_stride_n, HEAD_DIM)
        dv = _load_rows(dv_head, keys, seq_len, tangent_stride_n, HEAD_DIM)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # every block holds at least one real key, so the running max stays finite; keys past N read as zeros,
        # so their tangent scores are 0 and their p is 0
        scores = tl.where((keys < seq_len)[None, :], scores, float("-inf"))
        d_scores = tl.dot(dq, tl.trans(k), input_precision=DOT_PRECISION)
        d_scores = (d_scores + tl.dot(q, tl.trans(dk), input_precision=DOT_PRECISION)) * sm_scale
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.exp2(row_max - new_max)
        p = tl.exp2(scores - new_max[:, None])
        p_ds = p * d_scores
        row_sum = row_sum * rescale + tl.sum(p, 1)
        tangent_sum = tangent_sum * rescale + tl.sum(p_ds, 1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        acc_t = acc_t * rescale[:, None] + tl.dot(p_ds.to(v.dtype), v, input_precision=DOT_PRECISION)
        acc_t += tl.dot(p.to(dv.dtype), dv, input_precision=DOT_PRECISION)
        row_max = new_max

    out = acc / row_sum[:, None]
    d_lse = tangent_sum / row_sum
    _store_rows(out_ptr + offset, rows, seq_len, out, HEAD_DIM)
    _store_rows(d_out_ptr + offset, rows, seq_len, acc_t / row_sum[:, None] - d_lse[:, None] * out, HEAD_DIM)
    row_mask = rows < seq_len
    tl.store(lse_ptr + head * seq_len + rows, (row_max + tl.log2(row_sum)) * _LN2, mask=row_mask)
    tl.store(d_lse_ptr + head * seq_len + rows, d_lse, mask=row_mask)


def attention_jvp(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, lse, d_out, d_lse)`` of (B, H, N, Dh) q, k, v (one set of strides, the last dim contiguous) and their
    tangents dq, dk, dv (another such set): out, d_out contiguous in q's dtype, lse, d_lse (B, H, N) fp32."""
    batch, heads, seq_len, head_dim = q.shape
    out, d_out = (torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(2))
    lse, d_lse = (torch.empty((batch, heads, seq_len), device=q.device, dtype=torch.float32) for _ in range(2))
    _attention_jvp_kernel[_grid(batch * heads, seq_len, "BLOCK_M")](
        q,
        k,
        v,
        dq,
        dk,
        dv,
        out,
        lse,
        d_out,
        d_lse,
        heads,
        *_strides(q, k, v),
        *_strides(dq, dk, dv),
        seq_len,
        1.0 / math.sqrt(head_dim),
        size_bucket(batch, _BATCH_BUCKET_CAP),
        HEAD_DIM=head_dim,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, lse, d_out, d_lse
