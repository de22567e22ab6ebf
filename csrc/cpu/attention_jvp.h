// The forward-mode derivative (JVP) of the CPU attention (attention.h), fused:
// out, lse and their tangents for the tangents dq, dk, dv of q, k, v, in one
// pass over the keys with the forward's online softmax, and no score matrix
// larger than one tile. Per query row i, with s_j = scale q_i . k_j and
// ds_j = scale (dq_i . k_j + q_i . dk_j), the sums run over e_j = exp(s_j - m):
//   l = sum e_j,  acc = sum e_j v_j,  acc_t = sum e_j (ds_j v_j + dv_j),  g = sum e_j ds_j,
// all rescaled by exp(m_old - m_new) when the running max m grows; then
//   out = acc / l,  lse = m + log l,  d_lse = g / l,  d_out = acc_t / l - d_lse out.
// The products run in the tile kernels of tiles.h, as the forward's; F is the
// storage and summing type, float or double (the ATen glue converts 16-bit
// storage to fp32 and back).
//
// q, k, v, their tangents, out and d_out: (heads, n, dh) with heads = B * H;
// lse and d_lse: (heads, n), fp32 whatever F is.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention.h"
#include "parallel.h"
#include "tiles.h"

namespace shortcut_fast::cpu {

namespace detail {

// A thread's buffers for jvp_block: the query block and its tangent
// transposed, the score and tangent tiles of one key block, the sums.
template <typename F>
struct JvpScratch {
  JvpScratch(int64_t n, int64_t dh)
      : q_t(dh * std::min(kQueryBlock, n)),
        dq_t(dh * std::min(kQueryBlock, n)),
        s(std::min(kForwardKeyBlock, n) * std::min(kQueryBlock, n)),
        ds(std::min(kForwardKeyBlock, n) * std::min(kQueryBlock, n)),
        o(std::min(kQueryBlock, n) * dh),
        o_t(std::min(kQueryBlock, n) * dh),
        m(std::min(kQueryBlock, n)),
        l(std::min(kQueryBlock, n)),
        g(std::min(kQueryBlock, n)),
        alpha(std::min(kQueryBlock, n)) {}
  std::vector<F> q_t, dq_t, s, ds, o, o_t, m, l, g, alpha;
};

// The tangent's step between the products, over tiles [key][query] (rows
// keys, cols queries) that softmax_cols has just turned into p: ds (the
// unscaled dq . k + q . dk) becomes p scale ds, and g, rescaled by alpha,
// gains its column sums. Queries are the contiguous inner loop, so it
// vectorises without reassociating a sum.
template <typename F>
void tangent_cols(const F* p, F* ds, int64_t ld, int64_t rows, int64_t cols, F scale, F* g, const F* alpha) {
  for (int64_t c = 0; c < cols; ++c) g[c] *= alpha[c];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const F p_ds = p[r * ld + c] * (scale * ds[r * ld + c]);
      ds[r * ld + c] = p_ds;
      g[c] += p_ds;
    }
  }
}

// out, lse and their tangents of queries [i0, i0 + qb) of one head (every
// pointer at the head's start).
template <class Tiles, typename F>
void jvp_block(const F* q, const F* k, const F* v, const F* dq, const F* dk, const F* dv, F* out, float* lse, F* d_out,
               float* d_lse, int64_t n, int64_t dh, int64_t i0, int64_t qb, JvpScratch<F>& w) {
  const F scale = F(1) / std::sqrt(F(dh));
  Tiles::transpose(q + i0 * dh, dh, qb, dh, w.q_t.data(), qb);
  Tiles::transpose(dq + i0 * dh, dh, qb, dh, w.dq_t.data(), qb);
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<F>::infinity());
  std::fill(w.l.begin(), w.l.end(), F(0));
  std::fill(w.g.begin(), w.g.end(), F(0));
  for (int64_t j0 = 0; j0 < n; j0 += kForwardKeyBlock) {
    const int64_t kb = std::min(kForwardKeyBlock, n - j0);
    const F *k_j = k + j0 * dh, *v_j = v + j0 * dh;
    // s[key][query] = k_j . q_i and ds[key][query] = k_j . dq_i + dk_j . q_i
    Tiles::template gemm<false>(kb, qb, dh, k_j, dh, w.q_t.data(), qb, w.s.data(), qb, false);
    Tiles::template gemm<false>(kb, qb, dh, k_j, dh, w.dq_t.data(), qb, w.ds.data(), qb, false);
    Tiles::template gemm<false>(kb, qb, dh, dk + j0 * dh, dh, w.q_t.data(), qb, w.ds.data(), qb, true);
    Tiles::softmax_cols(w.s.data(), qb, kb, qb, scale, w.m.data(), w.l.data(), w.alpha.data());
    tangent_cols(w.s.data(), w.ds.data(), qb, kb, qb, scale, w.g.data(), w.alpha.data());
    if (j0 > 0) {
      for (int64_t i = 0; i < qb; ++i) {
        for (int64_t d = 0; d < dh; ++d) {
          w.o[i * dh + d] *= w.alpha[i];
          w.o_t[i * dh + d] *= w.alpha[i];
        }
      }
    }
    // o[query] += sum_key p v and o_t[query] += sum_key (p ds) v + p dv: the tiles read transposed
    Tiles::template gemm<true>(qb, dh, kb, w.s.data(), qb, v_j, dh, w.o.data(), dh, j0 > 0);
    Tiles::template gemm<true>(qb, dh, kb, w.ds.data(), qb, v_j, dh, w.o_t.data(), dh, j0 > 0);
    Tiles::template gemm<true>(qb, dh, kb, w.s.data(), qb, dv + j0 * dh, dh, w.o_t.data(), dh, true);
  }
  for (int64_t i = 0; i < qb; ++i) {
    const F inv_sum = F(1) / w.l[i], tangent_lse = w.g[i] * inv_sum;
    for (int64_t d = 0; d < dh; ++d) {
      const F y = w.o[i * dh + d] * inv_sum;
      out[(i0 + i) * dh + d] = y;
      d_out[(i0 + i) * dh + d] = w.o_t[i * dh + d] * inv_sum - tangent_lse * y;
    }
    lse[i0 + i] = static_cast<float>(w.m[i] + std::log(w.l[i]));
    d_lse[i0 + i] = static_cast<float>(tangent_lse);
  }
}

template <class Tiles, typename F>
void jvp(const F* q, const F* k, const F* v, const F* dq, const F* dk, const F* dv, F* out, float* lse, F* d_out,
         float* d_lse, int64_t heads, int64_t n, int64_t dh) {
  for_query_blocks<JvpScratch<F>>(heads, n, dh, [&](JvpScratch<F>& w, int64_t head, int64_t i0, int64_t qb) {
    const int64_t at = head * n * dh;
    jvp_block<Tiles>(q + at, k + at, v + at, dq + at, dk + at, dv + at, out + at, lse + head * n, d_out + at,
                     d_lse + head * n, n, dh, i0, qb, w);
  });
}

}  // namespace detail

// attention_fwd's out and lse, and their tangents d_out and d_lse for the
// tangents dq, dk, dv of q, k, v.
template <typename F>
void attention_jvp(const F* q, const F* k, const F* v, const F* dq, const F* dk, const F* dv, F* out, float* lse,
                   F* d_out, float* d_lse, int64_t heads, int64_t n, int64_t dh, Isa isa = Isa::kAuto) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<F, float>) {
    if (use_avx512(isa)) return detail::jvp<avx512::Tiles>(q, k, v, dq, dk, dv, out, lse, d_out, d_lse, heads, n, dh);
  }
#endif
  detail::jvp<PortableTiles<F>>(q, k, v, dq, dk, dv, out, lse, d_out, d_lse, heads, n, dh);
}

}  // namespace shortcut_fast::cpu
