"""Non-causal attention ``softmax(q kᵀ / √Dh) v`` over (B, H, N, Dh) tensors, forward and backward.

The forward streams key blocks past each query block with an online softmax and keeps the
row's log-sum-exp ``lse`` (B, H, N) fp32 for the backward, which recomputes the probabilities
``p = exp(s - lse)`` instead of storing them: one kernel computes ``delta = rowsum(dO * O)``,
one walks the query blocks for a key block's dk and dv, one walks the key blocks for a query
block's dq (two passes over the scores rather than atomics, so the results are deterministic).
Scores are kept in log2 units (scaled by log2 e) so that the exponentials are ``exp2``.
Any N works (blocks are masked); Dh must be a power of two (``tl.arange``) of at least 16 (the
smallest ``tl.dot`` operand); the head sizes the package runs are declared in its op contract.
q, k and v are read through their batch, head and token strides (shared by the three, the last dim
contiguous), so the slices of a fused qkv projection go in without copies; the outputs are contiguous.
(One set of strides: k and v then share their address arithmetic, which keeps the bf16 forward's
largest tile at sm_90 within its registers.)
All products accumulate in fp32 whatever the storage dtype.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .launch import autotune, size_bucket

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)

# The forward holds a (BLOCK_M, Dh) query block and streams (BLOCK_N, Dh) key and value blocks.
# Configs whose blocks shared memory cannot hold (fp32 storage, Dh 128) fail to compile, and the
# autotuner drops them; blocks stay >= 16, the smallest tl.dot operand.
_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
]
_BWD_CONFIGS = [
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 128}, num_warps=8, num_stages=2),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
]
# the smallest blocks tl.dot takes, so that the tests' short sequences still span several blocks
_INTERPRET_CONFIG = triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=4, num_stages=1)
# batch_bucket (size_bucket of B): batch-1 sampling launches B*H programs per query block where training launches
# hundreds of times more, and the best tile differs; the kernels take it only for the key
_TUNING_KEY = ["seq_len", "HEAD_DIM", "batch_bucket"]
_BATCH_BUCKET_CAP = 64


def _smallest_for_fp32(configs, named_args, **kwargs):
    """fp32 storage multiplies on CUDA cores ("ieee"), where the tile shape matters little and each
    config compiles for up to a minute: time only the smallest tile there."""
    if named_args["q_ptr"].dtype == torch.float32:
        return [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]
    return configs


@triton.jit
def _load_rows(ptr, rows, seq_len, row_stride, HEAD_DIM: tl.constexpr):
    """The (len(rows), HEAD_DIM) block of one head's (N, Dh) matrix, rows ``row_stride`` apart; rows past N read
    as zeros."""
    dims = tl.arange(0, HEAD_DIM)
    return tl.load(ptr + rows[:, None] * row_stride + dims[None, :], mask=(rows < seq_len)[:, None], other=0.0)


@triton.jit
def _head_start(ptr, head, heads, stride_b, stride_h):
    """Where head ``head`` of the flattened B * H heads starts in a strided (B, H, N, Dh) tensor (int64 offsets)."""
    return ptr + (head // heads) * stride_b + (head % heads) * stride_h


@triton.jit
def _store_rows(ptr, rows, seq_len, block, HEAD_DIM: tl.constexpr):
    dims = tl.arange(0, HEAD_DIM)
    tl.store(
        ptr + rows[:, None] * HEAD_DIM + dims[None, :], block.to(ptr.dtype.element_ty), mask=(rows < seq_len)[:, None]
    )


@autotune(_FWD_CONFIGS, _INTERPRET_CONFIG, _TUNING_KEY, _smallest_for_fp32)
@triton.jit(do_not_specialize=["batch_bucket"])
def _attention_fwd_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    heads,
    stride_b,
    stride_h,
    stride_n,
    seq_len,
    sm_scale,
    batch_bucket,  # the autotune key only (not specialised: one compile serves every bucket)
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # grid: (B * H, query blocks), the heads on the axis without the 65535 limit;
    # int64 offsets since B * H * N * Dh may pass 2**31
    head = tl.program_id(0).to(tl.int64)
    offset = head * seq_len * HEAD_DIM  # of the contiguous out
    q_head = _head_start(q_ptr, head, heads, stride_b, stride_h)
    k_head = _head_start(k_ptr, head, heads, stride_b, stride_h)
    v_head = _head_start(v_ptr, head, heads, stride_b, stride_h)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_rows(q_head, rows, seq_len, stride_n, HEAD_DIM)
    qk_scale = sm_scale * _LOG2E

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_head, keys, seq_len, stride_n, HEAD_DIM)
        v = _load_rows(v_head, keys, seq_len, stride_n, HEAD_DIM)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        # every block holds at least one real key, so the running max stays finite
        scores = tl.where((keys < seq_len)[None, :], scores, float("-inf"))
        new_max = tl.maximum(row_max, tl.max(scores, 1))
        rescale = tl.exp2(row_max - new_max)
        p = tl.exp2(scores - new_max[:, None])
        row_sum = row_sum * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        row_max = new_max

    _store_rows(out_ptr + offset, rows, seq_len, acc / row_sum[:, None], HEAD_DIM)
    tl.store(lse_ptr + head * seq_len + rows, (row_max + tl.log2(row_sum)) * _LN2, mask=rows < seq_len)


@triton.jit
def _attention_bwd_delta_kernel(
    out_ptr, grad_out_ptr, delta_ptr, n_rows, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr
):
    # rows of all heads at once: (B * H * N, Dh) matrices
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    out = _load_rows(out_ptr, rows, n_rows, HEAD_DIM, HEAD_DIM).to(tl.float32)
    grad_out = _load_rows(grad_out_ptr, rows, n_rows, HEAD_DIM, HEAD_DIM).to(tl.float32)
    tl.store(delta_ptr + rows, tl.sum(out * grad_out, 1), mask=rows < n_rows)


@autotune(_BWD_CONFIGS, _INTERPRET_CONFIG, _TUNING_KEY, _smallest_for_fp32)
@triton.jit(do_not_specialize=["batch_bucket"])
def _attention_bwd_dkdv_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    grad_out_ptr,
    lse_ptr,
    delta_ptr,
    dk_ptr,
    dv_ptr,
    heads,
    stride_b,
    stride_h,
    stride_n,
    seq_len,
    sm_scale,
    batch_bucket,  # the autotune key only (not specialised: one compile serves every bucket)
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # grid: (B * H, key blocks)
    head = tl.program_id(0).to(tl.int64)
    offset = head * seq_len * HEAD_DIM  # of the contiguous grad_out, dk and dv
    q_head = _head_start(q_ptr, head, heads, stride_b, stride_h)
    keys = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = _load_rows(_head_start(k_ptr, head, heads, stride_b, stride_h), keys, seq_len, stride_n, HEAD_DIM)
    v = _load_rows(_head_start(v_ptr, head, heads, stride_b, stride_h), keys, seq_len, stride_n, HEAD_DIM)
    qk_scale = sm_scale * _LOG2E

    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    for start in range(0, seq_len, BLOCK_M):
        rows = start + tl.arange(0, BLOCK_M)
        row_mask = rows < seq_len
        q = _load_rows(q_head, rows, seq_len, stride_n, HEAD_DIM)
        grad_out = _load_rows(grad_out_ptr + offset, rows, seq_len, HEAD_DIM, HEAD_DIM)
        lse = tl.load(lse_ptr + head * seq_len + rows, mask=row_mask, other=0.0)
        delta = tl.load(delta_ptr + head * seq_len + rows, mask=row_mask, other=0.0)
        # transposed scores (keys, queries): dk and dv then come out of plain products
        scores_t = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION) * qk_scale
        p_t = tl.where(row_mask[None, :], tl.exp2(scores_t - lse[None, :] * _LOG2E), 0.0)
        dv += tl.dot(p_t.to(grad_out.dtype), grad_out, input_precision=DOT_PRECISION)
        dp_t = tl.dot(v, tl.trans(grad_out), input_precision=DOT_PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PRECISION)

    _store_rows(dk_ptr + offset, keys, seq_len, dk * sm_scale, HEAD_DIM)
    _store_rows(dv_ptr + offset, keys, seq_len, dv, HEAD_DIM)


@autotune(_BWD_CONFIGS, _INTERPRET_CONFIG, _TUNING_KEY, _smallest_for_fp32)
@triton.jit(do_not_specialize=["batch_bucket"])
def _attention_bwd_dq_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    grad_out_ptr,
    lse_ptr,
    delta_ptr,
    dq_ptr,
    heads,
    stride_b,
    stride_h,
    stride_n,
    seq_len,
    sm_scale,
    batch_bucket,  # the autotune key only (not specialised: one compile serves every bucket)
    HEAD_DIM: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # grid: (B * H, query blocks)
    head = tl.program_id(0).to(tl.int64)
    offset = head * seq_len * HEAD_DIM  # of the contiguous grad_out and dq
    k_head = _head_start(k_ptr, head, heads, stride_b, stride_h)
    v_head = _head_start(v_ptr, head, heads, stride_b, stride_h)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < seq_len
    q = _load_rows(_head_start(q_ptr, head, heads, stride_b, stride_h), rows, seq_len, stride_n, HEAD_DIM)
    grad_out = _load_rows(grad_out_ptr + offset, rows, seq_len, HEAD_DIM, HEAD_DIM)
    lse = tl.load(lse_ptr + head * seq_len + rows, mask=row_mask, other=0.0)
    delta = tl.load(delta_ptr + head * seq_len + rows, mask=row_mask, other=0.0)
    qk_scale = sm_scale * _LOG2E

    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, seq_len, BLOCK_N):
        keys = start + tl.arange(0, BLOCK_N)
        k = _load_rows(k_head, keys, seq_len, stride_n, HEAD_DIM)
        v = _load_rows(v_head, keys, seq_len, stride_n, HEAD_DIM)
        scores = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        p = tl.where((keys < seq_len)[None, :], tl.exp2(scores - lse[:, None] * _LOG2E), 0.0)
        dp = tl.dot(grad_out, tl.trans(v), input_precision=DOT_PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION)

    _store_rows(dq_ptr + offset, rows, seq_len, dq * sm_scale, HEAD_DIM)


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 storage multiplies in full fp32 as torch does by default (no TF32); half types use tensor cores anyway
    return "ieee" if dtype == torch.float32 else "tf32"


def _grid(heads: int, seq_len: int, blocks_of: str):
    return lambda meta: (heads, triton.cdiv(seq_len, meta[blocks_of]))


def _strides(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[int]:
    """The batch, head and token strides that q, k and v share, in the kernels' argument order."""
    assert q.stride() == k.stride() == v.stride() and q.stride(-1) == 1  # ops/triton.py makes them so
    return list(q.stride()[:3])


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, lse)`` of (B, H, N, Dh) q, k, v of one set of strides, the last dim contiguous: out contiguous,
    lse (B, H, N) fp32."""
    batch, heads, seq_len, head_dim = q.shape
    out = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty((batch, heads, seq_len), device=q.device, dtype=torch.float32)
    _attention_fwd_kernel[_grid(batch * heads, seq_len, "BLOCK_M")](
        q,
        k,
        v,
        out,
        lse,
        heads,
        *_strides(q, k, v),
        seq_len,
        1.0 / math.sqrt(head_dim),
        size_bucket(batch, _BATCH_BUCKET_CAP),
        HEAD_DIM=head_dim,
        DOT_PRECISION=_dot_precision(q.dtype),
    )
    return out, lse


def attention_backward(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` of ``attention_forward``'s out, contiguous; q, k, v as ``attention_forward`` takes them,
    grad_out, out and lse contiguous."""
    batch, heads, seq_len, head_dim = q.shape
    delta = torch.empty_like(lse)
    n_rows = batch * heads * seq_len
    _attention_bwd_delta_kernel[(triton.cdiv(n_rows, 64),)](out, grad_out, delta, n_rows, HEAD_DIM=head_dim, BLOCK_M=64)
    dq, dk, dv = (torch.empty(q.shape, device=q.device, dtype=q.dtype) for _ in range(3))
    strides = _strides(q, k, v)
    scale, precision = 1.0 / math.sqrt(head_dim), _dot_precision(q.dtype)
    bucket = size_bucket(batch, _BATCH_BUCKET_CAP)
    constants = dict(HEAD_DIM=head_dim, DOT_PRECISION=precision)
    _attention_bwd_dkdv_kernel[_grid(batch * heads, seq_len, "BLOCK_N")](
        q, k, v, grad_out, lse, delta, dk, dv, heads, *strides, seq_len, scale, bucket, **constants
    )
    _attention_bwd_dq_kernel[_grid(batch * heads, seq_len, "BLOCK_M")](
        q, k, v, grad_out, lse, delta, dq, heads, *strides, seq_len, scale, bucket, **constants
    )
    return dq, dk, dv
