// The engine's layers: the linear driver (own kernels or ATen BLAS), LayerNorm, attention, patch extraction.
#include "layers.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace shortcut_fast::engine {

namespace {
constexpr int64_t kColChunk = 64;              // columns of one task of the small-M product
constexpr int64_t kParallelWork = 1 << 15;     // multiply-adds below which a task is not split further
constexpr int64_t kSmallAttentionTokens = 32;  // above, ATen's fused attention (blocked matrix products) wins

int64_t grain(int64_t work_per_item) {
  return std::max<int64_t>(1, kParallelWork / std::max<int64_t>(1, work_per_item));
}
}  // namespace

void linear(const Context& ctx, const float* a, int64_t m, const at::Tensor& w, const Epilogue& e, float* out,
            float* scratch) {
  const int64_t n = w.size(0), k = w.size(1);
  const float* wp = w.const_data_ptr<float>();
  const Kernels& kn = ctx.kernels;
  if (m >= ctx.aten_rows) {
    float* v = e.kind == Epi::kGatedResidual ? scratch : out;
    auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor vt = at::from_blob(v, {m, n}, opts);
    at::mm_out(vt, at::from_blob(const_cast<float*>(a), {m, k}, opts), w.t());
    at::parallel_for(0, m, grain(n * 8), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) kn.finish(v + r * n, out + r * n, n, e, r, 0);
    });
    return;
  }
  const int64_t row_blocks = (m + kRowBlock - 1) / kRowBlock, col_blocks = (n + kColChunk - 1) / kColChunk;
  at::parallel_for(0, row_blocks * col_blocks, grain(kRowBlock * kColChunk * k), [&](int64_t i0, int64_t i1) {
    float buf[kRowBlock * kColChunk];
    for (int64_t i = i0; i < i1; ++i) {
      // consecutive tasks share a column block, so its weights stay in cache across row blocks
      const int64_t r0 = (i % row_blocks) * kRowBlock, c0 = (i / row_blocks) * kColChunk;
      const int64_t rows = std::min(kRowBlock, m - r0), cols = std::min(kColChunk, n - c0);
      kn.dot_block(a + r0 * k, k, rows, wp + c0 * k, k, cols, k, buf, kColChunk);
      for (int64_t r = 0; r < rows; ++r) kn.finish(buf + r * kColChunk, out + (r0 + r) * n + c0, cols, e, r0 + r, c0);
    }
  });
}

void modulate_layernorm(const float* x, int64_t rows, int64_t c, const float* shift, const float* scale, int64_t ld,
                        int64_t tokens, float* out) {
  at::parallel_for(0, rows, grain(c * 4), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = x + r * c;
      float sum = 0;
      for (int64_t i = 0; i < c; ++i) sum += xr[i];
      const float mean = sum / c;
      float sq = 0;
      for (int64_t i = 0; i < c; ++i) sq += (xr[i] - mean) * (xr[i] - mean);
      const float rstd = 1.0f / std::sqrt(sq / c + 1e-6f);
      const float* sh = shift + (r / tokens) * ld;
      const float* sc = scale + (r / tokens) * ld;
      float* o = out + r * c;
      for (int64_t i = 0; i < c; ++i) o[i] = (xr[i] - mean) * rstd * (1.0f + sc[i]) + sh[i];
    }
  });
}

void attention(const float* qkv, int64_t batch, int64_t tokens, int64_t heads, int64_t dh, float* out) {
  const int64_t c = heads * dh;
  if (tokens > kSmallAttentionTokens) {
    auto opts = at::TensorOptions().dtype(at::kFloat);
    at::Tensor all =
        at::from_blob(const_cast<float*>(qkv), {batch, tokens, 3, heads, dh}, opts).permute({2, 0, 3, 1, 4});
    at::Tensor o = at::scaled_dot_product_attention(all[0], all[1], all[2]);  // (B, H, N, dh)
    at::from_blob(out, {batch, tokens, heads, dh}, opts).copy_(o.transpose(1, 2));
    return;
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(dh));
  at::parallel_for(0, batch * heads, grain(tokens * tokens * dh * 2), [&](int64_t i0, int64_t i1) {
    std::vector<float> scores(tokens), acc(dh);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / heads, h = i % heads;
      const float* base = qkv + b * tokens * 3 * c + h * dh;
      for (int64_t qi = 0; qi < tokens; ++qi) {
        const float* q = base + qi * 3 * c;
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < tokens; ++j) {
          const float* kj = base + j * 3 * c + c;
          float s = 0;
          for (int64_t d = 0; d < dh; ++d) s += q[d] * kj[d];
          scores[j] = s * scale;
          mx = std::max(mx, scores[j]);
        }
        float sum = 0;
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int64_t j = 0; j < tokens; ++j) {
          const float p = std::exp(scores[j] - mx);
          sum += p;
          const float* vj = base + j * 3 * c + 2 * c;
          for (int64_t d = 0; d < dh; ++d) acc[d] += p * vj[d];
        }
        float* o = out + (b * tokens + qi) * c + h * dh;
        for (int64_t d = 0; d < dh; ++d) o[d] = acc[d] / sum;
      }
    }
  });
}

void patchify(const float* x, int64_t batch, int64_t rows_batch, int64_t c, int64_t p, int64_t grid, float* out) {
  const int64_t side = grid * p, tokens = grid * grid, width = c * p * p;
  at::parallel_for(0, rows_batch * tokens, grain(width), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = (i / tokens) % batch, gy = (i % tokens) / grid, gx = i % grid;
      float* o = out + i * width;
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t py = 0; py < p; ++py)
          for (int64_t px = 0; px < p; ++px) *o++ = x[((b * c + ch) * side + gy * p + py) * side + gx * p + px];
    }
  });
}

}  // namespace shortcut_fast::engine
