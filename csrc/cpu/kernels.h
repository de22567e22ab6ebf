// CPU kernels of the shortcut_fast ops (docs/kernels.md): torch-free math on
// raw, contiguous pointers, so that tests/cpp can check them against naive
// loops without compiling torch's headers.
//
// T is the storage type (float, double, c10::Half, c10::BFloat16: anything
// that converts to and from float). Sums run in acc_t<T>: float, or double
// for double inputs. OpenMP spreads rows (or heads) over threads; the inner
// loops walk the contiguous last dim so that g++ -O3 vectorises them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "attention.h"
#include "attention_jvp.h"
#include "parallel.h"

namespace shortcut_fast::cpu {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};
template <typename T>
using acc_t = typename Acc<T>::type;

// Runs body(b, begin, end) over [0, inner) of each of `batch` samples in
// chunks, so that one large sample still spreads over all threads.
template <typename F>
void for_each_chunk(int64_t batch, int64_t inner, F body) {
  constexpr int64_t kChunk = 1 << 14;
  const int64_t chunks = std::max<int64_t>(1, (inner + kChunk - 1) / kChunk);
#pragma omp parallel for schedule(static) if (batch * inner > kMinParallelWork)
  for (int64_t i = 0; i < batch * chunks; ++i) {
    const int64_t b = i / chunks;
    const int64_t begin = (i % chunks) * kChunk;
    body(b, begin, std::min(begin + kChunk, inner));
  }
}

// clamp(x, -clip, clip) that lets NaN through, as torch.clamp does.
template <typename A>
inline A clip_value(A x, std::optional<double> clip) {
  if (!clip) return x;
  const A hi = static_cast<A>(*clip);
  return x < -hi ? -hi : (x > hi ? hi : x);
}

// ------------------------------------------------------ modulate_layernorm
// x, y: (batch, tokens, channels); shift, scale: (batch, channels);
// mean, rstd: (batch, tokens).

// sum_{c < n} f(c) in 16 partial sums, so that the loop vectorises without
// reassociating a single sum (one chain of dependent adds is what made the
// row sums slow).
template <typename A, typename F>
A lane_sum(int64_t n, F f) {
  constexpr int kLanes = 16;
  A part[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) part[lane] += f(c + lane);
  A sum = 0;
  for (; c < n; ++c) sum += f(c);
  for (int lane = 0; lane < kLanes; ++lane) sum += part[lane];
  return sum;
}

// One row of modulate_layernorm_fwd; returns its mean and rstd.
template <typename T, typename A = acc_t<T>>
std::pair<A, A> layernorm_row(const T* __restrict x, const T* __restrict shift, const T* __restrict scale, A eps,
                              T* __restrict y, int64_t channels) {
  // Two passes over the (cached) row, mean then squared deviations, keep
  // the variance accurate where sum(x^2) - sum(x)^2 would cancel.
  const A mu = lane_sum<A>(channels, [=](int64_t c) { return A(x[c]); }) / A(channels);
  const A sq = lane_sum<A>(channels, [=](int64_t c) { return (A(x[c]) - mu) * (A(x[c]) - mu); });
  const A r = A(1) / std::sqrt(sq / A(channels) + eps);
  for (int64_t c = 0; c < channels; ++c) y[c] = T((A(x[c]) - mu) * r * (A(1) + A(scale[c])) + A(shift[c]));
  return {mu, r};
}

template <typename T>
void modulate_layernorm_fwd(const T* x, const T* shift, const T* scale, double eps, T* y, float* mean, float* rstd,
                            int64_t batch, int64_t tokens, int64_t channels) {
  using A = acc_t<T>;
#pragma omp parallel for schedule(static) if (batch * tokens * channels > kMinParallelWork)
  for (int64_t row = 0; row < batch * tokens; ++row) {
    const int64_t b = row / tokens;
    const auto [mu, r] = layernorm_row(x + row * channels, shift + b * channels, scale + b * channels, A(eps),
                                       y + row * channels, channels);
    mean[row] = static_cast<float>(mu);
    rstd[row] = static_cast<float>(r);
  }
}

// One row of modulate_layernorm_bwd: its dx, and its terms of the column
// sums added to dshift_acc and dscale_acc.
template <typename T, typename A = acc_t<T>>
void layernorm_grad_row(const T* __restrict grad_y, const T* __restrict x, const T* __restrict scale, A mu, A r,
                        T* __restrict dx, A* __restrict dshift_acc, A* __restrict dscale_acc, int64_t channels) {
  const A mean_g = lane_sum<A>(channels, [=](int64_t c) { return A(grad_y[c]) * (A(1) + A(scale[c])); });
  const A mean_g_xhat =
      lane_sum<A>(channels, [=](int64_t c) { return A(grad_y[c]) * (A(1) + A(scale[c])) * (A(x[c]) - mu) * r; });
  const A inv_channels = A(1) / A(channels);
  for (int64_t c = 0; c < channels; ++c) {
    const A gy = A(grad_y[c]);
    const A x_hat = (A(x[c]) - mu) * r;
    dx[c] = T(r * (gy * (A(1) + A(scale[c])) - mean_g * inv_channels - x_hat * mean_g_xhat * inv_channels));
    dshift_acc[c] += gy;
    dscale_acc[c] += gy * x_hat;
  }
}

// With g = grad_y (1 + scale) and x_hat = (x - mean) rstd:
//   dx = rstd (g - mean_c(g) - x_hat mean_c(g x_hat)),
//   dshift = sum_tokens grad_y,  dscale = sum_tokens grad_y x_hat.
// Threads own (sample, token range) units and sum the column sums of their
// rows as they write dx; a sample takes more than one range only when there
// are fewer samples than threads, and its ranges' sums are added at the end.
template <typename T>
void modulate_layernorm_bwd(const T* grad_y, const T* x, const T* scale, const float* mean, const float* rstd, T* dx,
                            T* dshift, T* dscale, int64_t batch, int64_t tokens, int64_t channels) {
  using A = acc_t<T>;
  const bool parallel = batch * tokens * channels > kMinParallelWork;
  const int64_t threads = parallel ? max_threads() : 1;
  const int64_t splits =
      std::clamp<int64_t>((threads + batch - 1) / std::max<int64_t>(batch, 1), 1, std::max<int64_t>(tokens, 1));
  const int64_t tokens_per_split = (tokens + splits - 1) / splits;
  std::vector<A> col_sums(batch * splits * 2 * channels, A(0));  // (batch, splits, dshift | dscale, channels)
#pragma omp parallel if (parallel)
  {
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < batch * splits; ++unit) {
      const int64_t b = unit / splits, first = b * tokens + (unit % splits) * tokens_per_split;
      const int64_t last = std::min(first + tokens_per_split, (b + 1) * tokens);
      A* dshift_acc = col_sums.data() + unit * 2 * channels;
      for (int64_t row = first; row < last; ++row) {
        const int64_t at = row * channels;
        layernorm_grad_row(grad_y + at, x + at, scale + b * channels, A(mean[row]), A(rstd[row]), dx + at, dshift_acc,
                           dshift_acc + channels, channels);
      }
    }
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch * channels; ++i) {
      const int64_t b = i / channels, c = i % channels;
      A shift_sum = 0, scale_sum = 0;
      for (int64_t split = 0; split < splits; ++split) {
        shift_sum += col_sums[((b * splits + split) * 2) * channels + c];
        scale_sum += col_sums[((b * splits + split) * 2 + 1) * channels + c];
      }
      dshift[i] = T(shift_sum);
      dscale[i] = T(scale_sum);
    }
  }
}

// ------------------------------------------------------------ gated_residual
// x, y, out: (batch, tokens, channels); gate: (batch, channels); y in its own dtype U.

template <typename T, typename U>
void gated_residual(const T* x, const T* gate, const U* y, T* out, int64_t batch, int64_t tokens, int64_t channels) {
  using A = acc_t<T>;
#pragma omp parallel for schedule(static) if (batch * tokens * channels > kMinParallelWork)
  for (int64_t row = 0; row < batch * tokens; ++row) {
    const T* gate_b = gate + (row / tokens) * channels;
    const int64_t start = row * channels;
    for (int64_t c = 0; c < channels; ++c) out[start + c] = T(A(x[start + c]) + A(gate_b[c]) * A(y[start + c]));
  }
}

// --------------------------------------------------------- timestep_features
// t: (batch,); out: (batch, dim) fp32.

// The frequencies exactly as functional.timestep_features rounds them (fp32
// arange times the fp32-rounded -ln(max_period), divided by half, then exp),
// since at s = 1000 t an ulp of frequency moves the phase visibly.
template <typename T>
void timestep_features(const T* t, float* out, int64_t batch, int64_t dim, double max_period) {
  constexpr float kTimeScale = 1000.0f;  // functional.T_SCALE
  const int64_t half = dim / 2;
  const float neg_log_period = -static_cast<float>(std::log(max_period));
  std::vector<float> freqs(half);
  for (int64_t i = 0; i < half; ++i) freqs[i] = std::exp(neg_log_period * float(i) / float(half));
  for (int64_t b = 0; b < batch; ++b) {
    const float s = static_cast<float>(t[b]) * kTimeScale;
    float* row = out + b * dim;
    for (int64_t i = 0; i < half; ++i) {
      row[i] = std::cos(s * freqs[i]);
      row[half + i] = std::sin(s * freqs[i]);
    }
    if (dim % 2) row[dim - 1] = 0.0f;
  }
}

// ------------------------------------------------------------- condition_sum
// c, out: (batch, channels); level, y: (batch,) row indices, checked by the
// caller; tables: (rows, channels). y and y_table are null together.

template <typename T>
void condition_sum(const T* c, const int64_t* level, const T* d_table, const int64_t* y, const T* y_table, T* out,
                   int64_t batch, int64_t channels) {
  using A = acc_t<T>;
#pragma omp parallel for schedule(static) if (batch * channels > kMinParallelWork)
  for (int64_t b = 0; b < batch; ++b) {
    const T* d_row = d_table + level[b] * channels;
    const T* c_row = c + b * channels;
    T* out_row = out + b * channels;
    if (y_table) {
      const T* y_row = y_table + y[b] * channels;
      for (int64_t i = 0; i < channels; ++i) out_row[i] = T(A(c_row[i]) + A(d_row[i]) + A(y_row[i]));
    } else {
      for (int64_t i = 0; i < channels; ++i) out_row[i] = T(A(c_row[i]) + A(d_row[i]));
    }
  }
}

// -------------------------------------------------- sampler and bootstrap
// x, v, out: (batch, inner) flattened; d: (batch,) fp32 step sizes.

template <typename T>
void euler_step(const T* x, const T* v, const float* d, T* out, int64_t batch, int64_t inner) {
  using A = acc_t<T>;
  for_each_chunk(batch, inner, [&](int64_t b, int64_t begin, int64_t end) {
    const A step = A(d[b]);
    const int64_t base = b * inner;
    for (int64_t i = base + begin; i < base + end; ++i) out[i] = T(A(x[i]) + step * A(v[i]));
  });
}

template <typename T>
void bootstrap_midpoint(const T* x, const T* v1, const float* d, std::optional<double> clip, T* out, int64_t batch,
                        int64_t inner) {
  using A = acc_t<T>;
  for_each_chunk(batch, inner, [&](int64_t b, int64_t begin, int64_t end) {
    const A half_step = A(d[b]) * A(0.5);
    const int64_t base = b * inner;
    for (int64_t i = base + begin; i < base + end; ++i) out[i] = T(clip_value(A(x[i]) + half_step * A(v1[i]), clip));
  });
}

// v1, v2, out: numel elements.
template <typename T>
void bootstrap_target(const T* v1, const T* v2, std::optional<double> clip, T* out, int64_t numel) {
  using A = acc_t<T>;
  for_each_chunk(1, numel, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = T(clip_value((A(v1[i]) + A(v2[i])) * A(0.5), clip));
  });
}

}  // namespace shortcut_fast::cpu
