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
#include <vector>

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

// Below this many elements an OpenMP region costs more than it saves.
constexpr int64_t kMinParallelWork = 1 << 15;

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

// ---------------------------------------------------------------- attention
// q, k, v, out: (heads, n, dh) with heads = B * H; lse: (heads, n).

template <typename T>
void attention_fwd(const T* q, const T* k, const T* v, T* out, float* lse, int64_t heads, int64_t n, int64_t dh) {
  using A = acc_t<T>;
  const A scale = A(1) / std::sqrt(A(dh));
#pragma omp parallel if (heads * n * n * dh > kMinParallelWork)
  {
    std::vector<A> q_row(dh), scores(n), acc(dh);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < heads * n; ++row) {
      const T* k_head = k + (row / n) * n * dh;
      const T* v_head = v + (row / n) * n * dh;
      for (int64_t d = 0; d < dh; ++d) q_row[d] = A(q[row * dh + d]) * scale;
      A max_score = -std::numeric_limits<A>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        A s = 0;
        for (int64_t d = 0; d < dh; ++d) s += q_row[d] * A(k_head[j * dh + d]);
        scores[j] = s;
        max_score = std::max(max_score, s);
      }
      std::fill(acc.begin(), acc.end(), A(0));
      A sum = 0;
      for (int64_t j = 0; j < n; ++j) {
        const A p = std::exp(scores[j] - max_score);
        sum += p;
        for (int64_t d = 0; d < dh; ++d) acc[d] += p * A(v_head[j * dh + d]);
      }
      for (int64_t d = 0; d < dh; ++d) out[row * dh + d] = T(acc[d] / sum);
      lse[row] = static_cast<float>(max_score + std::log(sum));
    }
  }
}

// The gradients of attention_fwd, recomputing the probabilities
// p_ij = exp(s_ij - lse_i) instead of storing them. With
// delta_i = <dO_i, O_i> and ds_ij = p_ij (<dO_i, v_j> - delta_i):
//   dq_i = scale sum_j ds_ij k_j,  dk_j = scale sum_i ds_ij q_i,  dv_j = sum_i p_ij dO_i.
// One pass over query rows writes dq, one over key rows writes dk and dv, so
// every thread owns the rows it writes and needs no atomics.
template <typename T>
void attention_bwd(const T* grad_out, const T* q, const T* k, const T* v, const T* out, const float* lse, T* dq, T* dk,
                   T* dv, int64_t heads, int64_t n, int64_t dh) {
  using A = acc_t<T>;
  const A scale = A(1) / std::sqrt(A(dh));
  const int64_t rows = heads * n;
  const bool parallel = heads * n * n * dh > kMinParallelWork;
  std::vector<A> delta(rows);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < rows; ++row) {
    A s = 0;
    for (int64_t d = 0; d < dh; ++d) s += A(grad_out[row * dh + d]) * A(out[row * dh + d]);
    delta[row] = s;
  }

#pragma omp parallel if (parallel)
  {
    std::vector<A> q_row(dh), do_row(dh), acc(dh);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t head_start = (i / n) * n * dh;
      for (int64_t d = 0; d < dh; ++d) {
        q_row[d] = A(q[i * dh + d]) * scale;
        do_row[d] = A(grad_out[i * dh + d]);
      }
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t j = 0; j < n; ++j) {
        const T* k_j = k + head_start + j * dh;
        const T* v_j = v + head_start + j * dh;
        A s = 0, dp = 0;
        for (int64_t d = 0; d < dh; ++d) {
          s += q_row[d] * A(k_j[d]);
          dp += do_row[d] * A(v_j[d]);
        }
        const A ds = std::exp(s - A(lse[i])) * (dp - delta[i]);
        for (int64_t d = 0; d < dh; ++d) acc[d] += ds * A(k_j[d]);
      }
      for (int64_t d = 0; d < dh; ++d) dq[i * dh + d] = T(acc[d] * scale);
    }
  }

#pragma omp parallel if (parallel)
  {
    std::vector<A> k_row(dh), v_row(dh), dk_acc(dh), dv_acc(dh);
#pragma omp for schedule(static)
    for (int64_t j = 0; j < rows; ++j) {
      const int64_t head = j / n;
      for (int64_t d = 0; d < dh; ++d) {
        k_row[d] = A(k[j * dh + d]) * scale;
        v_row[d] = A(v[j * dh + d]);
      }
      std::fill(dk_acc.begin(), dk_acc.end(), A(0));
      std::fill(dv_acc.begin(), dv_acc.end(), A(0));
      for (int64_t i = head * n; i < (head + 1) * n; ++i) {
        const T* q_i = q + i * dh;
        const T* do_i = grad_out + i * dh;
        A s = 0, dp = 0;
        for (int64_t d = 0; d < dh; ++d) {
          s += A(q_i[d]) * k_row[d];
          dp += A(do_i[d]) * v_row[d];
        }
        const A p = std::exp(s - A(lse[i]));
        const A ds = p * (dp - delta[i]);
        for (int64_t d = 0; d < dh; ++d) {
          dv_acc[d] += p * A(do_i[d]);
          dk_acc[d] += ds * A(q_i[d]);
        }
      }
      for (int64_t d = 0; d < dh; ++d) {
        dk[j * dh + d] = T(dk_acc[d] * scale);
        dv[j * dh + d] = T(dv_acc[d]);
      }
    }
  }
}

// ------------------------------------------------------ modulate_layernorm
// x, y: (batch, tokens, channels); shift, scale: (batch, channels);
// mean, rstd: (batch, tokens).

template <typename T>
void modulate_layernorm_fwd(const T* x, const T* shift, const T* scale, double eps, T* y, float* mean, float* rstd,
                            int64_t batch, int64_t tokens, int64_t channels) {
  using A = acc_t<T>;
#pragma omp parallel for schedule(static) if (batch * tokens * channels > kMinParallelWork)
  for (int64_t row = 0; row < batch * tokens; ++row) {
    const T* x_row = x + row * channels;
    const int64_t b = row / tokens;
    // Two passes over the row (mean, then squared deviations) keep the
    // variance accurate where sum(x^2) - sum(x)^2 would cancel.
    A sum = 0;
    for (int64_t c = 0; c < channels; ++c) sum += A(x_row[c]);
    const A mu = sum / A(channels);
    A sq = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const A centred = A(x_row[c]) - mu;
      sq += centred * centred;
    }
    const A r = A(1) / std::sqrt(sq / A(channels) + A(eps));
    for (int64_t c = 0; c < channels; ++c) {
      const A x_hat = (A(x_row[c]) - mu) * r;
      y[row * channels + c] = T(x_hat * (A(1) + A(scale[b * channels + c])) + A(shift[b * channels + c]));
    }
    mean[row] = static_cast<float>(mu);
    rstd[row] = static_cast<float>(r);
  }
}

// With g = grad_y (1 + scale) and x_hat = (x - mean) rstd:
//   dx = rstd (g - mean_c(g) - x_hat mean_c(g x_hat)),
//   dshift = sum_tokens grad_y,  dscale = sum_tokens grad_y x_hat.
template <typename T>
void modulate_layernorm_bwd(const T* grad_y, const T* x, const T* scale, const float* mean, const float* rstd, T* dx,
                            T* dshift, T* dscale, int64_t batch, int64_t tokens, int64_t channels) {
  using A = acc_t<T>;
  const bool parallel = batch * tokens * channels > kMinParallelWork;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t row = 0; row < batch * tokens; ++row) {
    const T* gy = grad_y + row * channels;
    const T* x_row = x + row * channels;
    const T* scale_b = scale + (row / tokens) * channels;
    const A mu = mean[row], r = rstd[row];
    A sum_g = 0, sum_g_xhat = 0;
    for (int64_t c = 0; c < channels; ++c) {
      const A g = A(gy[c]) * (A(1) + A(scale_b[c]));
      sum_g += g;
      sum_g_xhat += g * (A(x_row[c]) - mu) * r;
    }
    const A mean_g = sum_g / A(channels), mean_g_xhat = sum_g_xhat / A(channels);
    for (int64_t c = 0; c < channels; ++c) {
      const A g = A(gy[c]) * (A(1) + A(scale_b[c]));
      const A x_hat = (A(x_row[c]) - mu) * r;
      dx[row * channels + c] = T(r * (g - mean_g - x_hat * mean_g_xhat));
    }
  }

  // Column sums over tokens: threads own (sample, channel block) pairs and
  // walk the tokens, reading whole contiguous channel blocks.
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (channels + kBlock - 1) / kBlock;
#pragma omp parallel if (parallel)
  {
    std::vector<A> dshift_acc(kBlock), dscale_acc(kBlock);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < batch * blocks; ++i) {
      const int64_t b = i / blocks;
      const int64_t c0 = (i % blocks) * kBlock;
      const int64_t width = std::min(kBlock, channels - c0);
      std::fill(dshift_acc.begin(), dshift_acc.end(), A(0));
      std::fill(dscale_acc.begin(), dscale_acc.end(), A(0));
      for (int64_t t = 0; t < tokens; ++t) {
        const int64_t row = b * tokens + t;
        const T* gy = grad_y + row * channels + c0;
        const T* x_row = x + row * channels + c0;
        const A mu = mean[row], r = rstd[row];
        for (int64_t c = 0; c < width; ++c) {
          dshift_acc[c] += A(gy[c]);
          dscale_acc[c] += A(gy[c]) * (A(x_row[c]) - mu) * r;
        }
      }
      for (int64_t c = 0; c < width; ++c) {
        dshift[b * channels + c0 + c] = T(dshift_acc[c]);
        dscale[b * channels + c0 + c] = T(dscale_acc[c]);
      }
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
