// The portable engine kernels (any CPU) and the run-time choice of the ISA kernels.
#include <cmath>

#include "kernels.h"

namespace shortcut_fast::engine {

namespace {
inline float gelu_tanh(float x) {
  // 0.5 x (1 + tanh(u)) written as x * sigmoid(2u), the form the vector kernels use
  const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
  return x / (1.0f + std::exp(-2.0f * u));
}
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }
}  // namespace

float finish_one(float v, float out, const Epilogue& e, int64_t row, int64_t col) {
  const float b = e.bias ? v + e.bias[col] : v;
  switch (e.kind) {
    case Epi::kBias:
      return b;
    case Epi::kBiasGelu:
      return gelu_tanh(b);
    case Epi::kBiasSilu:
      return silu(b);
    case Epi::kBiasTable:
      return b + e.table[(row % e.tokens) * e.gate_ld + col];
    case Epi::kGatedResidual:
      return out + e.gate[(row / e.tokens) * e.gate_ld + col] * b;
  }
  return b;
}

namespace scalar {

void dot_block(const float* a, int64_t lda, int64_t rows, const float* w, int64_t ldw, int64_t cols, int64_t k,
               float* out, int64_t ldo) {
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t r = 0; r < rows; ++r) {
      // eight partial sums: the loop vectorises without reassociating a single sum
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; ++j) acc[j] += a[r * lda + i + j] * w[c * ldw + i + j];
      float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
      for (; i < k; ++i) s += a[r * lda + i] * w[c * ldw + i];
      out[r * ldo + c] = s;
    }
  }
}

void finish(const float* v, float* out, int64_t n, const Epilogue& e, int64_t row, int64_t col) {
  for (int64_t i = 0; i < n; ++i) out[i] = finish_one(v[i], out[i], e, row, col + i);
}

}  // namespace scalar

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar:
      return true;
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      return __builtin_cpu_supports("avx512f");
#endif
    default:
      return false;
  }
}

Isa resolve_isa(Isa isa) {
  if (isa != Isa::kAuto) return isa;
  if (isa_supported(Isa::kAvx512)) return Isa::kAvx512;
  if (isa_supported(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kScalar;
}

Kernels kernels_for(Isa isa) {
  switch (resolve_isa(isa)) {
#if defined(__x86_64__) && defined(__GNUC__)
    case Isa::kAvx512:
      return {avx512::dot_block, avx512::finish};
    case Isa::kAvx2:
      return {avx2::dot_block, avx2::finish};
#endif
    default:
      return {scalar::dot_block, scalar::finish};
  }
}

}  // namespace shortcut_fast::engine
