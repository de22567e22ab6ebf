// The engine's inner kernels: small-M matrix products over nn.Linear weights and their fused epilogues, per ISA.
//
// Every ISA file (kernels_scalar.cpp, kernels_avx2.cpp, kernels_avx512.cpp)
// defines the same two functions in its own namespace (the vector ones from the
// templates of kernels_simd.h); `kernels_for` picks the set the running CPU
// supports, so one build runs on any x86-64.
#pragma once

#include <cstdint>

namespace shortcut_fast::engine {

enum class Isa : int64_t { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };

// What a linear layer does with its product v = a . w[col] before storing it.
enum class Epi : int64_t { kBias, kBiasGelu, kBiasSilu, kBiasTable, kGatedResidual };

struct Epilogue {
  Epi kind = Epi::kBias;
  const float* bias = nullptr;   // (N,)
  const float* table = nullptr;  // kBiasTable: (tokens, N) rows added by token, row % tokens
  const float* gate = nullptr;   // kGatedResidual: out += gate[row / tokens] * (v + bias)
  int64_t gate_ld = 0;
  int64_t tokens = 1;
};

// out[r * ldo + c] = sum_k a[r * lda + k] * w[c * ldw + k] for r < rows (<= kRowBlock), c < cols.
using DotBlockFn = void (*)(const float* a, int64_t lda, int64_t rows, const float* w, int64_t ldw, int64_t cols,
                            int64_t k, float* out, int64_t ldo);
// Epilogue of columns [col, col + n) of row `row`: from the products `v` into `out` (which may alias v).
using FinishFn = void (*)(const float* v, float* out, int64_t n, const Epilogue& e, int64_t row, int64_t col);

constexpr int64_t kRowBlock = 4;

struct Kernels {
  DotBlockFn dot_block;
  FinishFn finish;
};

namespace scalar {
void dot_block(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
void finish(const float*, float*, int64_t, const Epilogue&, int64_t, int64_t);
}  // namespace scalar
namespace avx2 {
void dot_block(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
void finish(const float*, float*, int64_t, const Epilogue&, int64_t, int64_t);
}  // namespace avx2
namespace avx512 {
void dot_block(const float*, int64_t, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t);
void finish(const float*, float*, int64_t, const Epilogue&, int64_t, int64_t);
}  // namespace avx512

// Whether this build and this CPU can run `isa` (kAuto: always).
bool isa_supported(Isa isa);
// The best supported ISA for kAuto, else `isa` itself (which must be supported).
Isa resolve_isa(Isa isa);
Kernels kernels_for(Isa isa);

// The scalar epilogue of one value, shared by every ISA's column tails.
float finish_one(float v, float out, const Epilogue& e, int64_t row, int64_t col);

}  // namespace shortcut_fast::engine
