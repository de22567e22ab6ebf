// The engine's layers on raw fp32 rows: linear with fused epilogue, modulated LayerNorm, attention, patches.
#pragma once

#include <ATen/ATen.h>

#include "kernels.h"

namespace shortcut_fast::engine {

struct Context {
  Kernels kernels;
  int64_t aten_rows;  // from this many rows on, linear layers use ATen's matrix product (BLAS) plus our epilogue
};

// out (M x N, row stride N) = epilogue(a (M x K) . w^T) with w an nn.Linear weight (N x K, contiguous);
// `scratch` (M x N) holds the products when the epilogue is a gated residual read from `out`.
void linear(const Context& ctx, const float* a, int64_t m, const at::Tensor& w, const Epilogue& e, float* out,
            float* scratch);

// out = LayerNorm(x) * (1 + scale[row / tokens]) + shift[row / tokens]; shift, scale rows of stride ld
void modulate_layernorm(const float* x, int64_t rows, int64_t c, const float* shift, const float* scale, int64_t ld,
                        int64_t tokens, float* out);

// softmax(q k^T / sqrt(dh)) v per (sample, head); qkv rows [q | k | v] of 3C (heads of dh inside), out rows of C
void attention(const float* qkv, int64_t batch, int64_t tokens, int64_t heads, int64_t dh, float* out);

// x (B, C, H, W) -> rows (B * grid^2, C * p * p) in the order of a Conv2d weight (c, py, px);
// row b of the output reads sample b % B of x (guidance runs the batch twice)
void patchify(const float* x, int64_t batch, int64_t rows_batch, int64_t c, int64_t p, int64_t grid, float* out);

}  // namespace shortcut_fast::engine
