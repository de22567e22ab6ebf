// The engine kernels for AVX2 + FMA, compiled for that target only and chosen at run time (kernels_scalar.cpp).
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx2,fma")

namespace shortcut_fast::engine::avx2 {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// e^x to about 2 ulp: 2^n e^r with |r| <= ln2 / 2 and a degree-6 polynomial for e^r
inline __m256 exp(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// x / (1 + e^(-k x')) with x' = x for SiLU, x' = sqrt(2/pi) (x + 0.044715 x^3) and k = 2 for GELU(tanh)
inline __m256 gelu_tanh(__m256 x) {
  const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
  const __m256 u =
      _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
  const __m256 e = exp(_mm256_mul_ps(_mm256_set1_ps(-2.0f), u));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

inline __m256 silu(__m256 x) {
  const __m256 e = exp(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

// rows x 2 columns of dot products (the second column may repeat the first when only one is left)
template <int R>
inline void dot_tile(const float* a, int64_t lda, const float* w0, const float* w1, int64_t k, float* s0, float* s1) {
  __m256 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= k; i += 8) {
    const __m256 b0 = _mm256_loadu_ps(w0 + i), b1 = _mm256_loadu_ps(w1 + i);
    for (int r = 0; r < R; ++r) {
      const __m256 av = _mm256_loadu_ps(a + r * lda + i);
      acc0[r] = _mm256_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm256_fmadd_ps(av, b1, acc1[r]);
    }
  }
  for (int r = 0; r < R; ++r) {
    float t0 = hsum(acc0[r]), t1 = hsum(acc1[r]);
    for (int64_t j = i; j < k; ++j) {
      t0 += a[r * lda + j] * w0[j];
      t1 += a[r * lda + j] * w1[j];
    }
    s0[r] = t0;
    s1[r] = t1;
  }
}

template <int R>
void dot_rows(const float* a, int64_t lda, const float* w, int64_t ldw, int64_t cols, int64_t k, float* out,
              int64_t ldo) {
  float s0[R], s1[R];
  for (int64_t c = 0; c < cols; c += 2) {
    const bool pair = c + 1 < cols;
    dot_tile<R>(a, lda, w + c * ldw, w + (pair ? c + 1 : c) * ldw, k, s0, s1);
    for (int r = 0; r < R; ++r) {
      out[r * ldo + c] = s0[r];
      if (pair) out[r * ldo + c + 1] = s1[r];
    }
  }
}

}  // namespace

void dot_block(const float* a, int64_t lda, int64_t rows, const float* w, int64_t ldw, int64_t cols, int64_t k,
               float* out, int64_t ldo) {
  switch (rows) {
    case 1:
      return dot_rows<1>(a, lda, w, ldw, cols, k, out, ldo);
    case 2:
      return dot_rows<2>(a, lda, w, ldw, cols, k, out, ldo);
    case 3:
      return dot_rows<3>(a, lda, w, ldw, cols, k, out, ldo);
    default:
      return dot_rows<4>(a, lda, w, ldw, cols, k, out, ldo);
  }
}

void finish(const float* v, float* out, int64_t n, const Epilogue& e, int64_t row, int64_t col) {
  int64_t i = 0;
  const float* table = e.kind == Epi::kBiasTable ? e.table + (row % e.tokens) * e.gate_ld + col : nullptr;
  const float* gate = e.kind == Epi::kGatedResidual ? e.gate + (row / e.tokens) * e.gate_ld + col : nullptr;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(v + i);
    if (e.bias) x = _mm256_add_ps(x, _mm256_loadu_ps(e.bias + col + i));
    switch (e.kind) {
      case Epi::kBias:
        break;
      case Epi::kBiasGelu:
        x = gelu_tanh(x);
        break;
      case Epi::kBiasSilu:
        x = silu(x);
        break;
      case Epi::kBiasTable:
        x = _mm256_add_ps(x, _mm256_loadu_ps(table + i));
        break;
      case Epi::kGatedResidual:
        x = _mm256_fmadd_ps(_mm256_loadu_ps(gate + i), x, _mm256_loadu_ps(out + i));
        break;
    }
    _mm256_storeu_ps(out + i, x);
  }
  for (; i < n; ++i) out[i] = finish_one(v[i], out[i], e, row, col + i);
}

}  // namespace shortcut_fast::engine::avx2

#pragma GCC pop_options
#endif
