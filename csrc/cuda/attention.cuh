// Attention on CUDA cores: a flash-style forward (online softmax, fp32
// accumulators, any N by masking) and a two-kernel backward that recomputes
// the probabilities from lse. Head dims 32, 64 and 128.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cmath>
#include <tuple>
#include <type_traits>

#include "../checks.h"
#include "common.cuh"

namespace shortcut_fast::cuda {

// ---------------------------------------------------------------- attention
// q, k, v, out: (heads, n, Dh) with heads = B * H. A block of kAttnWarps
// warps owns a few query (or key) rows per warp and streams the other side in
// tiles of 32 rows through shared memory: when scoring, lane j handles row j
// of the tile; when accumulating, lane l owns elements l, l + 32, ... of the
// row. Tiles whose rows lane j reads whole are padded to Dh + 1 floats so the
// 32 lanes hit 32 different banks. Grid: (heads, row tiles).

constexpr int kAttnWarps = 4;
constexpr int kTile = kWarp;  // rows of the streamed side, one per lane
constexpr int kFwdRowsPerWarp = 4;
constexpr int kBwdRowsPerWarp = 2;  // the backward holds two streamed tiles: fewer own rows fit 48 KiB
// The Dh-long dot products and the 32-row tile loops unroll by 8 only: full
// unrolling keeps whole rows in registers and spills at Dh = 128.

template <typename T, int Dh>
__global__ void __launch_bounds__(kAttnWarps* kWarp)
    attention_fwd_kernel(const T* q, const T* k, const T* v, T* out, float* lse, int64_t n, float scale) {
  constexpr int kRows = kAttnWarps * kFwdRowsPerWarp;
  constexpr int kPerLane = Dh / kWarp;
  __shared__ float q_s[kRows][Dh];
  __shared__ float k_s[kTile][Dh + 1];
  __shared__ float v_s[kTile][Dh];
  static_assert(sizeof(q_s) + sizeof(k_s) + sizeof(v_s) <= 48 * 1024, "static shared memory limit");

  const int64_t head_start = static_cast<int64_t>(blockIdx.x) * n * Dh;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;

  for (int i = threadIdx.x; i < kRows * Dh; i += blockDim.x) {
    const int64_t row = row0 + i / Dh;
    q_s[i / Dh][i % Dh] = row < n ? static_cast<float>(q[head_start + row * Dh + i % Dh]) * scale : 0.f;
  }
  float row_max[kFwdRowsPerWarp], row_sum[kFwdRowsPerWarp], acc[kFwdRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kFwdRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[r][e] = 0.f;
  }

  for (int64_t key0 = 0; key0 < n; key0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    for (int i = threadIdx.x; i < kTile * Dh; i += blockDim.x) {
      const int64_t key = key0 + i / Dh;
      const bool valid = key < n;
      k_s[i / Dh][i % Dh] = valid ? static_cast<float>(k[head_start + key * Dh + i % Dh]) : 0.f;
      v_s[i / Dh][i % Dh] = valid ? static_cast<float>(v[head_start + key * Dh + i % Dh]) : 0.f;
    }
    __syncthreads();
    const bool key_valid = key0 + lane < n;
#pragma unroll
    for (int r = 0; r < kFwdRowsPerWarp; ++r) {
      const int local = warp * kFwdRowsPerWarp + r;
      if (row0 + local >= n) break;  // warp-uniform: no later row of this warp is valid either
      float s = 0.f;
#pragma unroll 8
      for (int d = 0; d < Dh; ++d) s += q_s[local][d] * k_s[lane][d];
      s = key_valid ? s : -INFINITY;
      // Finite: key0 < n, so lane 0's key is always valid.
      const float new_max = fmaxf(row_max[r], warp_max(s));
      const float p = expf(s - new_max);                 // 0 for masked keys
      const float rescale = expf(row_max[r] - new_max);  // 0 on the first tile
      row_sum[r] = row_sum[r] * rescale + warp_sum(p);
      row_max[r] = new_max;
#pragma unroll
      for (int e = 0; e < kPerLane; ++e) acc[r][e] *= rescale;
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) {
        const float p_j = __shfl_sync(kFullMask, p, j);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) acc[r][e] += p_j * v_s[j][lane + e * kWarp];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kFwdRowsPerWarp; ++r) {
    const int64_t row = row0 + warp * kFwdRowsPerWarp + r;
    if (row >= n) break;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) out[head_start + row * Dh + lane + e * kWarp] = T(acc[r][e] / row_sum[r]);
    if (lane == 0) lse[blockIdx.x * n + row] = row_max[r] + logf(row_sum[r]);
  }
}

// delta_i = <dO_i, O_i>, one warp per row.
template <typename T, int Dh>
__global__ void attention_delta_kernel(const T* grad_out, const T* out, float* delta, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kAttnWarps + threadIdx.x / kWarp;
  if (row >= rows) return;  // warp-uniform
  const int lane = threadIdx.x % kWarp;
  float s = 0.f;
#pragma unroll
  for (int d = lane; d < Dh; d += kWarp) {
    s += static_cast<float>(grad_out[row * Dh + d]) * static_cast<float>(out[row * Dh + d]);
  }
  s = warp_sum(s);
  if (lane == 0) delta[row] = s;
}

// dq_i = scale sum_j p_ij (<dO_i, v_j> - delta_i) k_j over key tiles, with
// p_ij = exp(scale <q_i, k_j> - lse_i) recomputed.
template <typename T, int Dh>
__global__ void __launch_bounds__(kAttnWarps* kWarp)
    attention_dq_kernel(const T* grad_out, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                        T* dq, int64_t n, float scale) {
  constexpr int kRows = kAttnWarps * kBwdRowsPerWarp;
  constexpr int kPerLane = Dh / kWarp;
  __shared__ float q_s[kRows][Dh];
  __shared__ float do_s[kRows][Dh];
  __shared__ float k_s[kTile][Dh + 1];
  __shared__ float v_s[kTile][Dh + 1];
  static_assert(sizeof(q_s) + sizeof(do_s) + sizeof(k_s) + sizeof(v_s) <= 48 * 1024, "static shared memory limit");

  const int64_t head_start = static_cast<int64_t>(blockIdx.x) * n * Dh;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;

  for (int i = threadIdx.x; i < kRows * Dh; i += blockDim.x) {
    const int64_t row = row0 + i / Dh;
    const int64_t at = head_start + row * Dh + i % Dh;
    q_s[i / Dh][i % Dh] = row < n ? static_cast<float>(q[at]) * scale : 0.f;
    do_s[i / Dh][i % Dh] = row < n ? static_cast<float>(grad_out[at]) : 0.f;
  }
  float row_lse[kBwdRowsPerWarp], row_delta[kBwdRowsPerWarp], acc[kBwdRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r) {
    const int64_t row = row0 + warp * kBwdRowsPerWarp + r;
    row_lse[r] = row < n ? lse[blockIdx.x * n + row] : 0.f;
    row_delta[r] = row < n ? delta[blockIdx.x * n + row] : 0.f;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) acc[r][e] = 0.f;
  }

  for (int64_t key0 = 0; key0 < n; key0 += kTile) {
    __syncthreads();
    for (int i = threadIdx.x; i < kTile * Dh; i += blockDim.x) {
      const int64_t key = key0 + i / Dh;
      const bool valid = key < n;
      k_s[i / Dh][i % Dh] = valid ? static_cast<float>(k[head_start + key * Dh + i % Dh]) : 0.f;
      v_s[i / Dh][i % Dh] = valid ? static_cast<float>(v[head_start + key * Dh + i % Dh]) : 0.f;
    }
    __syncthreads();
    const bool key_valid = key0 + lane < n;
#pragma unroll
    for (int r = 0; r < kBwdRowsPerWarp; ++r) {
      const int local = warp * kBwdRowsPerWarp + r;
      if (row0 + local >= n) break;
      float s = 0.f, dp = 0.f;
#pragma unroll 8
      for (int d = 0; d < Dh; ++d) {
        s += q_s[local][d] * k_s[lane][d];
        dp += do_s[local][d] * v_s[lane][d];
      }
      const float ds = key_valid ? expf(s - row_lse[r]) * (dp - row_delta[r]) : 0.f;
#pragma unroll 8
      for (int j = 0; j < kTile; ++j) {
        const float ds_j = __shfl_sync(kFullMask, ds, j);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) acc[r][e] += ds_j * k_s[j][lane + e * kWarp];
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r) {
    const int64_t row = row0 + warp * kBwdRowsPerWarp + r;
    if (row >= n) break;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) dq[head_start + row * Dh + lane + e * kWarp] = T(acc[r][e] * scale);
  }
}

// dk_j = scale sum_i ds_ij q_i and dv_j = sum_i p_ij dO_i over query tiles:
// the transpose of attention_dq_kernel, so that each block owns the key rows
// it writes and no atomics are needed.
template <typename T, int Dh>
__global__ void __launch_bounds__(kAttnWarps* kWarp)
    attention_dkdv_kernel(const T* grad_out, const T* q, const T* k, const T* v, const float* lse, const float* delta,
                          T* dk, T* dv, int64_t n, float scale) {
  constexpr int kRows = kAttnWarps * kBwdRowsPerWarp;
  constexpr int kPerLane = Dh / kWarp;
  __shared__ float k_s[kRows][Dh];
  __shared__ float v_s[kRows][Dh];
  __shared__ float q_s[kTile][Dh + 1];
  __shared__ float do_s[kTile][Dh + 1];
  __shared__ float lse_s[kTile];
  __shared__ float delta_s[kTile];
  static_assert(sizeof(k_s) + sizeof(v_s) + sizeof(q_s) + sizeof(do_s) + sizeof(lse_s) + sizeof(delta_s) <= 48 * 1024,
                "static shared memory limit");

  const int64_t head_start = static_cast<int64_t>(blockIdx.x) * n * Dh;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kRows;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;

  for (int i = threadIdx.x; i < kRows * Dh; i += blockDim.x) {
    const int64_t row = row0 + i / Dh;
    const int64_t at = head_start + row * Dh + i % Dh;
    k_s[i / Dh][i % Dh] = row < n ? static_cast<float>(k[at]) * scale : 0.f;
    v_s[i / Dh][i % Dh] = row < n ? static_cast<float>(v[at]) : 0.f;
  }
  float dk_acc[kBwdRowsPerWarp][kPerLane], dv_acc[kBwdRowsPerWarp][kPerLane];
#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r) {
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) dk_acc[r][e] = dv_acc[r][e] = 0.f;
  }

  for (int64_t query0 = 0; query0 < n; query0 += kTile) {
    __syncthreads();
    for (int i = threadIdx.x; i < kTile * Dh; i += blockDim.x) {
      const int64_t query = query0 + i / Dh;
      const bool valid = query < n;
      q_s[i / Dh][i % Dh] = valid ? static_cast<float>(q[head_start + query * Dh + i % Dh]) : 0.f;
      do_s[i / Dh][i % Dh] = valid ? static_cast<float>(grad_out[head_start + query * Dh + i % Dh]) : 0.f;
    }
    if (threadIdx.x < kTile) {
      const int64_t query = query0 + threadIdx.x;
      lse_s[threadIdx.x] = query < n ? lse[blockIdx.x * n + query] : 0.f;
      delta_s[threadIdx.x] = query < n ? delta[blockIdx.x * n + query] : 0.f;
    }
    __syncthreads();
    const bool query_valid = query0 + lane < n;
#pragma unroll
    for (int r = 0; r < kBwdRowsPerWarp; ++r) {
      const int local = warp * kBwdRowsPerWarp + r;
      if (row0 + local >= n) break;
      float s = 0.f, dp = 0.f;
#pragma unroll 8
      for (int d = 0; d < Dh; ++d) {
        s += q_s[lane][d] * k_s[local][d];
        dp += do_s[lane][d] * v_s[local][d];
      }
      const float p = query_valid ? expf(s - lse_s[lane]) : 0.f;
      const float ds = p * (dp - delta_s[lane]);
#pragma unroll 8
      for (int i = 0; i < kTile; ++i) {
        const float p_i = __shfl_sync(kFullMask, p, i);
        const float ds_i = __shfl_sync(kFullMask, ds, i);
#pragma unroll
        for (int e = 0; e < kPerLane; ++e) {
          dv_acc[r][e] += p_i * do_s[i][lane + e * kWarp];
          dk_acc[r][e] += ds_i * q_s[i][lane + e * kWarp];
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < kBwdRowsPerWarp; ++r) {
    const int64_t row = row0 + warp * kBwdRowsPerWarp + r;
    if (row >= n) break;
#pragma unroll
    for (int e = 0; e < kPerLane; ++e) {
      dk[head_start + row * Dh + lane + e * kWarp] = T(dk_acc[r][e] * scale);
      dv[head_start + row * Dh + lane + e * kWarp] = T(dv_acc[r][e]);
    }
  }
}

// Calls f(std::integral_constant<int, Dh>) for the head dims the attention
// kernels are built for.
template <typename F>
void dispatch_head_dim(const char* op, int64_t head_dim, F f) {
  switch (head_dim) {
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      TORCH_CHECK(false, "shortcut_fast::", op, " on CUDA supports head dims 32, 64 and 128, got ", head_dim);
  }
}

inline dim3 attention_grid(const AttentionSizes& s, int rows_per_block) {
  const int64_t tiles = (s.tokens + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(s.heads < (int64_t{1} << 31) && tiles < 65536, "shortcut_fast attention: too many heads or tokens");
  return dim3(static_cast<unsigned>(s.heads), static_cast<unsigned>(tiles));
}

inline std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const AttentionSizes s = check_attention_fwd(q, k, v);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (s.heads == 0) return {out, lse};
  const float scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
  const dim3 grid = attention_grid(s, kAttnWarps * kFwdRowsPerWarp);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SHORTCUT_FAST_DISPATCH(q.scalar_type(), "attention_fwd", [&] {
    dispatch_head_dim("attention_fwd", s.head_dim, [&](auto dh) {
      attention_fwd_kernel<scalar_t, decltype(dh)::value><<<grid, kAttnWarps * kWarp, 0, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          lse.data_ptr<float>(), s.tokens, scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& grad_out, const at::Tensor& q,
                                                                    const at::Tensor& k, const at::Tensor& v,
                                                                    const at::Tensor& out, const at::Tensor& lse) {
  const AttentionSizes s = check_attention_bwd(grad_out, q, k, v, out, lse);
  const c10::cuda::CUDAGuard guard(q.device());
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  if (s.heads == 0) return {dq, dk, dv};
  at::Tensor delta = at::empty_like(lse);
  const float scale = 1.f / std::sqrt(static_cast<float>(s.head_dim));
  const dim3 grid = attention_grid(s, kAttnWarps * kBwdRowsPerWarp);
  const int64_t rows = s.heads * s.tokens;
  const auto delta_blocks = static_cast<unsigned>((rows + kAttnWarps - 1) / kAttnWarps);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  SHORTCUT_FAST_DISPATCH(q.scalar_type(), "attention_bwd", [&] {
    dispatch_head_dim("attention_bwd", s.head_dim, [&](auto dh) {
      constexpr int Dh = decltype(dh)::value;
      attention_delta_kernel<scalar_t, Dh><<<delta_blocks, kAttnWarps * kWarp, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), delta.data_ptr<float>(), rows);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      attention_dq_kernel<scalar_t, Dh><<<grid, kAttnWarps * kWarp, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          lse.data_ptr<float>(), delta.data_ptr<float>(), dq.data_ptr<scalar_t>(), s.tokens, scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      attention_dkdv_kernel<scalar_t, Dh><<<grid, kAttnWarps * kWarp, 0, stream>>>(
          grad_out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          lse.data_ptr<float>(), delta.data_ptr<float>(), dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), s.tokens,
          scale);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {dq, dk, dv};
}

}  // namespace shortcut_fast::cuda
