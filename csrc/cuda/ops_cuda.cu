// CUDA kernels of the shortcut_fast ops (docs/kernels.md), registered under
// the CUDA dispatch key. Storage fp32, fp16 or bf16; every sum in fp32.
//
// Hand CUDA or Triton? The `auto` backend runs Triton on a GPU, and for
// attention that is the right call: Triton's kernels feed the tensor cores
// (wgmma on sm_90) and autotune their tiles, while the attention here is a
// flash-style kernel on CUDA cores (online softmax, fp32 accumulators):
// accurate in every storage dtype, but it leaves the tensor cores idle, so
// expect it behind Triton at large N. Hand CUDA is at its best on the small
// ops whose cost in a sampling step is launch latency rather than FLOPs or
// bytes: timestep_features, condition_sum, euler_step and the bootstrap
// arithmetic go from the C++ dispatcher straight to one launch, with no
// Python launcher or JIT cache lookup on the way. The row kernels
// (modulate_layernorm, gated_residual) are memory bound, where either tool
// should reach the same bandwidth; they are here so that the native backend
// covers every op on the GPU too.
//
// The attention kernels live in attention.cuh; this file holds the row and
// elementwise kernels and registers all of them (one translation unit, since
// each costs minutes of nvcc against torch's headers).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "../checks.h"
#include "attention.cuh"
#include "common.cuh"

namespace shortcut_fast::cuda {
namespace {

// ------------------------------------------------------ modulate_layernorm
// One warp per (sample, token) row; kRowWarps rows per block.

constexpr int kRowWarps = 4;

template <typename T>
__global__ void modulate_layernorm_fwd_kernel(const T* x, const T* shift, const T* scale, float eps, T* y, float* mean,
                                              float* rstd, int64_t rows, int64_t tokens, int64_t channels) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
  if (row >= rows) return;  // warp-uniform
  const int lane = threadIdx.x % kWarp;
  const T* x_row = x + row * channels;
  const int64_t param_start = (row / tokens) * channels;
  float sum = 0.f;
  for (int64_t c = lane; c < channels; c += kWarp) sum += static_cast<float>(x_row[c]);
  const float mu = warp_sum(sum) / channels;
  // A second pass over the (cached) row keeps the variance free of cancellation.
  float sq = 0.f;
  for (int64_t c = lane; c < channels; c += kWarp) {
    const float centred = static_cast<float>(x_row[c]) - mu;
    sq += centred * centred;
  }
  const float r = rsqrtf(warp_sum(sq) / channels + eps);
  for (int64_t c = lane; c < channels; c += kWarp) {
    const float x_hat = (static_cast<float>(x_row[c]) - mu) * r;
    y[row * channels + c] =
        T(x_hat * (1.f + static_cast<float>(scale[param_start + c])) + static_cast<float>(shift[param_start + c]));
  }
  if (lane == 0) {
    mean[row] = mu;
    rstd[row] = r;
  }
}

// dx = rstd (g - mean_c(g) - x_hat mean_c(g x_hat)) with g = grad_y (1 + scale).
template <typename T>
__global__ void modulate_layernorm_dx_kernel(const T* grad_y, const T* x, const T* scale, const float* mean,
                                             const float* rstd, T* dx, int64_t rows, int64_t tokens, int64_t channels) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowWarps + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t start = row * channels, param_start = (row / tokens) * channels;
  const float mu = mean[row], r = rstd[row];
  float sum_g = 0.f, sum_g_xhat = 0.f;
  for (int64_t c = lane; c < channels; c += kWarp) {
    const float g = static_cast<float>(grad_y[start + c]) * (1.f + static_cast<float>(scale[param_start + c]));
    sum_g += g;
    sum_g_xhat += g * (static_cast<float>(x[start + c]) - mu) * r;
  }
  const float mean_g = warp_sum(sum_g) / channels, mean_g_xhat = warp_sum(sum_g_xhat) / channels;
  for (int64_t c = lane; c < channels; c += kWarp) {
    const float g = static_cast<float>(grad_y[start + c]) * (1.f + static_cast<float>(scale[param_start + c]));
    const float x_hat = (static_cast<float>(x[start + c]) - mu) * r;
    dx[start + c] = T(r * (g - mean_g - x_hat * mean_g_xhat));
  }
}

// dshift = sum_tokens grad_y, dscale = sum_tokens grad_y x_hat. Block (32, 8):
// x walks channels (coalesced), y splits the tokens; grid (channel tiles, B).
constexpr int kColumnTokens = 8;

template <typename T>
__global__ void modulate_layernorm_dparams_kernel(const T* grad_y, const T* x, const float* mean, const float* rstd,
                                                  T* dshift, T* dscale, int64_t tokens, int64_t channels) {
  __shared__ float shift_part[kColumnTokens][kWarp + 1];
  __shared__ float scale_part[kColumnTokens][kWarp + 1];
  const int64_t b = blockIdx.y;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kWarp + threadIdx.x;
  float dshift_acc = 0.f, dscale_acc = 0.f;
  if (c < channels) {
    for (int64_t t = threadIdx.y; t < tokens; t += kColumnTokens) {
      const int64_t row = b * tokens + t;
      const float gy = static_cast<float>(grad_y[row * channels + c]);
      dshift_acc += gy;
      dscale_acc += gy * (static_cast<float>(x[row * channels + c]) - mean[row]) * rstd[row];
    }
  }
  shift_part[threadIdx.y][threadIdx.x] = dshift_acc;
  scale_part[threadIdx.y][threadIdx.x] = dscale_acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < channels) {
    for (int i = 1; i < kColumnTokens; ++i) {
      dshift_acc += shift_part[i][threadIdx.x];
      dscale_acc += scale_part[i][threadIdx.x];
    }
    dshift[b * channels + c] = T(dshift_acc);
    dscale[b * channels + c] = T(dscale_acc);
  }
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>((rows + kRowWarps - 1) / kRowWarps); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulate_layernorm_fwd(const at::Tensor& x, const at::Tensor& shift,
                                                                      const at::Tensor& scale, double eps) {
  const RowSizes s = check_modulate_layernorm_fwd(x, shift, scale);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({s.batch, s.tokens}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty_like(mean);
  const int64_t rows = s.batch * s.tokens;
  if (rows == 0) return {y, mean, rstd};
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "modulate_layernorm_fwd", [&] {
    modulate_layernorm_fwd_kernel<scalar_t>
        <<<row_blocks(rows), kRowWarps * kWarp, 0, c10::cuda::getCurrentCUDAStream()>>>(
            x.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), static_cast<float>(eps),
            y.data_ptr<scalar_t>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), rows, s.tokens, s.channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulate_layernorm_bwd(const at::Tensor& grad_y, const at::Tensor& x,
                                                                      const at::Tensor& scale, const at::Tensor& mean,
                                                                      const at::Tensor& rstd) {
  const RowSizes s = check_modulate_layernorm_bwd(grad_y, x, scale, mean, rstd);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor dx = at::empty_like(x), dshift = at::empty_like(scale), dscale = at::empty_like(scale);
  const int64_t rows = s.batch * s.tokens;
  if (s.batch == 0 || s.channels == 0) return {dx, dshift, dscale};
  TORCH_CHECK(s.batch < 65536, "shortcut_fast::modulate_layernorm_bwd on CUDA: batch must be below 65536");
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 column_grid(static_cast<unsigned>((s.channels + kWarp - 1) / kWarp), static_cast<unsigned>(s.batch));
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "modulate_layernorm_bwd", [&] {
    if (rows > 0) {
      modulate_layernorm_dx_kernel<scalar_t><<<row_blocks(rows), kRowWarps * kWarp, 0, stream>>>(
          grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), mean.data_ptr<float>(),
          rstd.data_ptr<float>(), dx.data_ptr<scalar_t>(), rows, s.tokens, s.channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    modulate_layernorm_dparams_kernel<scalar_t><<<column_grid, dim3(kWarp, kColumnTokens), 0, stream>>>(
        grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), mean.data_ptr<float>(), rstd.data_ptr<float>(),
        dshift.data_ptr<scalar_t>(), dscale.data_ptr<scalar_t>(), s.tokens, s.channels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dx, dshift, dscale};
}

// --------------------------------------------------------- elementwise ops
// Grid-stride loops over the flat output.

constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements; the stride loop covers any
// n beyond the cap.
unsigned elementwise_blocks(int64_t n) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, 1 << 16)));
}

#define SHORTCUT_FAST_GRID_STRIDE(i, n)                                                  \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)

template <typename T, typename U>
__global__ void gated_residual_kernel(const T* x, const T* gate, const U* y, T* out, int64_t numel, int64_t tokens,
                                      int64_t channels) {
  SHORTCUT_FAST_GRID_STRIDE(i, numel) {
    const int64_t b = i / (tokens * channels);
    const float g = static_cast<float>(gate[b * channels + i % channels]);
    out[i] = T(static_cast<float>(x[i]) + g * static_cast<float>(y[i]));
  }
}

// The frequencies as functional.timestep_features rounds them (fp32 throughout).
template <typename T>
__global__ void timestep_features_kernel(const T* t, float* out, int64_t batch, int64_t dim, float neg_log_period) {
  const int64_t half = dim / 2;
  SHORTCUT_FAST_GRID_STRIDE(i, batch * dim) {
    const int64_t b = i / dim, col = i % dim;
    if (col >= 2 * half) {
      out[i] = 0.f;  // the padding column of an odd dim
      continue;
    }
    const int64_t f = col % half;
    const float freq = expf(neg_log_period * static_cast<float>(f) / static_cast<float>(half));
    const float arg = static_cast<float>(t[b]) * 1000.f * freq;  // 1000: functional.T_SCALE
    out[i] = col < half ? cosf(arg) : sinf(arg);
  }
}

template <typename T>
__global__ void condition_sum_kernel(const T* c, const int64_t* level, const T* d_table, int64_t d_rows,
                                     const int64_t* y, const T* y_table, int64_t y_rows, T* out, int64_t batch,
                                     int64_t channels) {
  SHORTCUT_FAST_GRID_STRIDE(i, batch * channels) {
    const int64_t b = i / channels, col = i % channels;
    const int64_t d_row = level[b];
    CUDA_KERNEL_ASSERT(d_row >= 0 && d_row < d_rows && "condition_sum: level out of range of d_table");
    float sum = static_cast<float>(c[i]) + static_cast<float>(d_table[d_row * channels + col]);
    if (y_table != nullptr) {
      const int64_t y_row = y[b];
      CUDA_KERNEL_ASSERT(y_row >= 0 && y_row < y_rows && "condition_sum: y out of range of y_table");
      sum += static_cast<float>(y_table[y_row * channels + col]);
    }
    out[i] = T(sum);
  }
}

// clamp that lets NaN through, as torch.clamp does; clip < 0 means no clip.
__device__ __forceinline__ float clip_value(float x, float clip) {
  if (clip < 0.f) return x;
  return x < -clip ? -clip : (x > clip ? clip : x);
}

// x + step_scale * d[b] * v, then clip: euler_step (step_scale 1) and
// bootstrap_midpoint (step_scale 0.5).
template <typename T>
__global__ void per_sample_step_kernel(const T* x, const T* v, const float* d, float step_scale, float clip, T* out,
                                       int64_t numel, int64_t inner) {
  SHORTCUT_FAST_GRID_STRIDE(i, numel) {
    const float step = d[i / inner] * step_scale;
    out[i] = T(clip_value(static_cast<float>(x[i]) + step * static_cast<float>(v[i]), clip));
  }
}

template <typename T>
__global__ void bootstrap_target_kernel(const T* v1, const T* v2, float clip, T* out, int64_t numel) {
  SHORTCUT_FAST_GRID_STRIDE(i, numel) {
    out[i] = T(clip_value((static_cast<float>(v1[i]) + static_cast<float>(v2[i])) * 0.5f, clip));
  }
}

// The kernels' encoding of an optional clip: -1 for none.
float clip_arg(const char* op, std::optional<double> clip) {
  check_clip(op, clip);
  return clip ? static_cast<float>(*clip) : -1.f;
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  const RowSizes s = check_gated_residual(x, gate, y);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "gated_residual", [&] {
    using x_t = scalar_t;
    SHORTCUT_FAST_DISPATCH(y.scalar_type(), "gated_residual", [&] {
      gated_residual_kernel<x_t, scalar_t>
          <<<elementwise_blocks(x.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              x.data_ptr<x_t>(), gate.data_ptr<x_t>(), y.data_ptr<scalar_t>(), out.data_ptr<x_t>(), x.numel(), s.tokens,
              s.channels);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor timestep_features(const at::Tensor& t, int64_t dim, double max_period) {
  check_timestep_features(t, dim);
  const c10::cuda::CUDAGuard guard(t.device());
  at::Tensor out = at::empty({t.size(0), dim}, t.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  const float neg_log_period = -static_cast<float>(std::log(max_period));
  SHORTCUT_FAST_DISPATCH(t.scalar_type(), "timestep_features", [&] {
    timestep_features_kernel<scalar_t>
        <<<elementwise_blocks(out.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            t.data_ptr<scalar_t>(), out.data_ptr<float>(), t.size(0), dim, neg_log_period);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor condition_sum(const at::Tensor& c, const at::Tensor& level, const at::Tensor& d_table,
                         const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& y_table) {
  check_condition_sum(c, level, d_table, y, y_table);
  const c10::cuda::CUDAGuard guard(c.device());
  at::Tensor out = at::empty_like(c);
  if (c.numel() == 0) return out;
  SHORTCUT_FAST_DISPATCH(c.scalar_type(), "condition_sum", [&] {
    condition_sum_kernel<scalar_t><<<elementwise_blocks(c.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        c.data_ptr<scalar_t>(), level.data_ptr<int64_t>(), d_table.data_ptr<scalar_t>(), d_table.size(0),
        y ? y->data_ptr<int64_t>() : nullptr, y_table ? y_table->data_ptr<scalar_t>() : nullptr,
        y_table ? y_table->size(0) : 0, out.data_ptr<scalar_t>(), c.size(0), c.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor per_sample_step(const char* op, const char* v_name, const at::Tensor& x, const at::Tensor& v,
                           const at::Tensor& d, float step_scale, std::optional<double> clip) {
  const int64_t inner = check_per_sample_step(op, v_name, x, v, d);
  const float clip_bound = clip_arg(op, clip);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "per_sample_step", [&] {
    per_sample_step_kernel<scalar_t><<<elementwise_blocks(x.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), d.data_ptr<float>(), step_scale, clip_bound,
        out.data_ptr<scalar_t>(), x.numel(), inner);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor euler_step(const at::Tensor& x, const at::Tensor& v, const at::Tensor& d) {
  return per_sample_step("euler_step", "v", x, v, d, 1.f, std::nullopt);
}

at::Tensor bootstrap_midpoint(const at::Tensor& x, const at::Tensor& v1, const at::Tensor& d,
                              std::optional<double> clip) {
  return per_sample_step("bootstrap_midpoint", "v1", x, v1, d, 0.5f, clip);
}

at::Tensor bootstrap_target(const at::Tensor& v1, const at::Tensor& v2, std::optional<double> clip) {
  check_bootstrap_target(v1, v2);
  const float clip_bound = clip_arg("bootstrap_target", clip);
  const c10::cuda::CUDAGuard guard(v1.device());
  at::Tensor out = at::empty_like(v1);
  if (v1.numel() == 0) return out;
  SHORTCUT_FAST_DISPATCH(v1.scalar_type(), "bootstrap_target", [&] {
    bootstrap_target_kernel<scalar_t>
        <<<elementwise_blocks(v1.numel()), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            v1.data_ptr<scalar_t>(), v2.data_ptr<scalar_t>(), clip_bound, out.data_ptr<scalar_t>(), v1.numel());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(shortcut_fast, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd);
  m.impl("attention_bwd", &attention_bwd);
  m.impl("modulate_layernorm_fwd", &modulate_layernorm_fwd);
  m.impl("modulate_layernorm_bwd", &modulate_layernorm_bwd);
  m.impl("gated_residual", &gated_residual);
  m.impl("timestep_features", &timestep_features);
  m.impl("condition_sum", &condition_sum);
  m.impl("euler_step", &euler_step);
  m.impl("bootstrap_midpoint", &bootstrap_midpoint);
  m.impl("bootstrap_target", &bootstrap_target);
}

}  // namespace shortcut_fast::cuda
