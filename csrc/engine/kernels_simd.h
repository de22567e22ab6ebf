// The engine kernels of the vector ISAs (kernels_avx2.cpp, kernels_avx512.cpp), written once over a vector type.
//
// `V` names the ISA's register type `Reg`, its width `kWidth` and the few intrinsics used below. Include this
// header only after the ISA file's `#pragma GCC target`: the templates then compile for that target, and
// their instantiations over each file's own (internal) `V` are that file's functions alone.
#pragma once

#include <cstdint>

#include "kernels.h"

namespace shortcut_fast::engine::simd {

// e^x to about 2 ulp: 2^n e^r with |r| <= ln2 / 2 and a degree-6 polynomial for e^r
template <class V, class R = typename V::Reg>
inline R exp(R x) {
  x = V::min(V::max(x, V::set1(-87.3f)), V::set1(88.3f));
  const R n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  R r = V::fnmadd(n, V::set1(0.693359375f), x);
  r = V::fnmadd(n, V::set1(-2.12194440e-4f), r);
  R p = V::set1(1.9875691500e-4f);
  p = V::fmadd(p, r, V::set1(1.3981999507e-3f));
  p = V::fmadd(p, r, V::set1(8.3334519073e-3f));
  p = V::fmadd(p, r, V::set1(4.1665795894e-2f));
  p = V::fmadd(p, r, V::set1(1.6666665459e-1f));
  p = V::fmadd(p, r, V::set1(5.0000001201e-1f));
  p = V::fmadd(p, V::mul(r, r), V::add(r, V::set1(1.0f)));
  return V::mul(p, V::pow2(n));
}

// x / (1 + e^(-k x')) with x' = x for SiLU, x' = sqrt(2/pi) (x + 0.044715 x^3) and k = 2 for GELU(tanh)
template <class V, class R = typename V::Reg>
inline R gelu_tanh(R x) {
  const R x3 = V::mul(V::mul(x, x), x);
  const R u = V::mul(V::set1(0.7978845608028654f), V::fmadd(V::set1(0.044715f), x3, x));
  const R e = exp<V>(V::mul(V::set1(-2.0f), u));
  return V::div(x, V::add(V::set1(1.0f), e));
}

template <class V, class R = typename V::Reg>
inline R silu(R x) {
  const R e = exp<V>(V::sub(V::zero(), x));
  return V::div(x, V::add(V::set1(1.0f), e));
}

// rows x 2 columns of dot products (the second column may repeat the first when only one is left)
template <class V, int Rows>
inline void dot_tile(const float* a, int64_t lda, const float* w0, const float* w1, int64_t k, float* s0, float* s1) {
  typename V::Reg acc0[Rows], acc1[Rows];
  for (int r = 0; r < Rows; ++r) acc0[r] = acc1[r] = V::zero();
  int64_t i = 0;
  for (; i + V::kWidth <= k; i += V::kWidth) {
    const auto b0 = V::load(w0 + i), b1 = V::load(w1 + i);
    for (int r = 0; r < Rows; ++r) {
      const auto av = V::load(a + r * lda + i);
      acc0[r] = V::fmadd(av, b0, acc0[r]);
      acc1[r] = V::fmadd(av, b1, acc1[r]);
    }
  }
  for (int r = 0; r < Rows; ++r) {
    float t0 = V::hsum(acc0[r]), t1 = V::hsum(acc1[r]);
    for (int64_t j = i; j < k; ++j) {
      t0 += a[r * lda + j] * w0[j];
      t1 += a[r * lda + j] * w1[j];
    }
    s0[r] = t0;
    s1[r] = t1;
  }
}

template <class V, int Rows>
void dot_rows(const float* a, int64_t lda, const float* w, int64_t ldw, int64_t cols, int64_t k, float* out,
              int64_t ldo) {
  float s0[Rows], s1[Rows];
  for (int64_t c = 0; c < cols; c += 2) {
    const bool pair = c + 1 < cols;
    dot_tile<V, Rows>(a, lda, w + c * ldw, w + (pair ? c + 1 : c) * ldw, k, s0, s1);
    for (int r = 0; r < Rows; ++r) {
      out[r * ldo + c] = s0[r];
      if (pair) out[r * ldo + c + 1] = s1[r];
    }
  }
}

// kernels.h's DotBlockFn
template <class V>
void dot_block(const float* a, int64_t lda, int64_t rows, const float* w, int64_t ldw, int64_t cols, int64_t k,
               float* out, int64_t ldo) {
  switch (rows) {
    case 1:
      return dot_rows<V, 1>(a, lda, w, ldw, cols, k, out, ldo);
    case 2:
      return dot_rows<V, 2>(a, lda, w, ldw, cols, k, out, ldo);
    case 3:
      return dot_rows<V, 3>(a, lda, w, ldw, cols, k, out, ldo);
    default:
      return dot_rows<V, 4>(a, lda, w, ldw, cols, k, out, ldo);
  }
}

// kernels.h's FinishFn: whole vectors, then the scalar epilogue for the tail
template <class V>
void finish(const float* v, float* out, int64_t n, const Epilogue& e, int64_t row, int64_t col) {
  int64_t i = 0;
  const float* table = e.kind == Epi::kBiasTable ? e.table + (row % e.tokens) * e.gate_ld + col : nullptr;
  const float* gate = e.kind == Epi::kGatedResidual ? e.gate + (row / e.tokens) * e.gate_ld + col : nullptr;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    auto x = V::load(v + i);
    if (e.bias) x = V::add(x, V::load(e.bias + col + i));
    switch (e.kind) {
      case Epi::kBias:
        break;
      case Epi::kBiasGelu:
        x = gelu_tanh<V>(x);
        break;
      case Epi::kBiasSilu:
        x = silu<V>(x);
        break;
      case Epi::kBiasTable:
        x = V::add(x, V::load(table + i));
        break;
      case Epi::kGatedResidual:
        x = V::fmadd(V::load(gate + i), x, V::load(out + i));
        break;
    }
    V::store(out + i, x);
  }
  for (; i < n; ++i) out[i] = finish_one(v[i], out[i], e, row, col + i);
}

}  // namespace shortcut_fast::engine::simd
