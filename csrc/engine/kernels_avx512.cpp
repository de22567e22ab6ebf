// The engine kernels for AVX-512F, compiled for that target only and chosen at run time (kernels_scalar.cpp).
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#pragma GCC push_options
#pragma GCC target("avx512f")

namespace shortcut_fast::engine::avx512 {
namespace {

inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// e^x to about 2 ulp: 2^n e^r with |r| <= ln2 / 2 and a degree-6 polynomial for e^r
inline __m512 exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
  const __m512 n =
      _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

// x / (1 + e^(-k x')) with x' = x for SiLU, x' = sqrt(2/pi) (x + 0.044715 x^3) and k = 2 for GELU(tanh)
inline __m512 gelu_tanh(__m512 x) {
  const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
  const __m512 u =
      _mm512_mul_ps(_mm512_set1_ps(0.7978845608028654f), _mm512_fmadd_ps(_mm512_set1_ps(0.044715f), x3, x));
  const __m512 e = exp(_mm512_mul_ps(_mm512_set1_ps(-2.0f), u));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

inline __m512 silu(__m512 x) {
  const __m512 e = exp(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// rows x 2 columns of dot products (the second column may repeat the first when only one is left)
template <int R>
inline void dot_tile(const float* a, int64_t lda, const float* w0, const float* w1, int64_t k, float* s0, float* s1) {
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= k; i += 16) {
    const __m512 b0 = _mm512_loadu_ps(w0 + i), b1 = _mm512_loadu_ps(w1 + i);
    for (int r = 0; r < R; ++r) {
      const __m512 av = _mm512_loadu_ps(a + r * lda + i);
      acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
      acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
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
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(v + i);
    if (e.bias) x = _mm512_add_ps(x, _mm512_loadu_ps(e.bias + col + i));
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
        x = _mm512_add_ps(x, _mm512_loadu_ps(table + i));
        break;
      case Epi::kGatedResidual:
        x = _mm512_fmadd_ps(_mm512_loadu_ps(gate + i), x, _mm512_loadu_ps(out + i));
        break;
    }
    _mm512_storeu_ps(out + i, x);
  }
  for (; i < n; ++i) out[i] = finish_one(v[i], out[i], e, row, col + i);
}

}  // namespace shortcut_fast::engine::avx512

#pragma GCC pop_options
#endif
