// The CPU attention of the shortcut_fast ops (docs/kernels.md), in the manner
// of FlashAttention-2: tiles of kQueryBlock queries by a block of keys, an
// online softmax over the key blocks, and no score matrix larger than one tile.
// The products run in the tile kernels of tiles.h (AVX-512 for fp32 where the
// CPU has it, else portable loops); F is the storage and summing type, float
// or double (the ATen glue converts 16-bit storage to fp32 and back).
//
// q, k, v, out and the gradients: (heads, n, dh) with heads = B * H;
// lse: (heads, n), fp32 whatever F is.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "parallel.h"
#include "tiles.h"

namespace shortcut_fast::cpu {

// Queries are the vector lanes of the score tiles: 64 fill the 4 vectors of a register tile.
constexpr int64_t kQueryBlock = 64;
// The forward's key blocks: long ones rescale the sums of a query block seldom
// (never up to 256 keys), and their score tile (64 KB) stays in L2.
constexpr int64_t kForwardKeyBlock = 256;
// The backward's: 64 measured best (a block's dk, dv and two score tiles: 64 KB at dh = 64).
constexpr int64_t kBackwardKeyBlock = 64;
// Below this many multiply-adds an OpenMP region costs more than it saves.
constexpr int64_t kMinParallelAttention = 1 << 15;

namespace detail {

// <a, b> in 8 partial sums, so that the loop vectorises without reassociating one sum.
template <typename F>
F dot(const F* a, const F* b, int64_t n) {
  F part[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) part[j] += a[i + j] * b[i + j];
  F sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// A thread's buffers for forward_block, no larger than n asks (small n is
// common and its calls are short).
template <typename F>
struct ForwardScratch {
  ForwardScratch(int64_t n, int64_t dh)
      : q_t(dh * std::min(kQueryBlock, n)),
        s(std::min(kForwardKeyBlock, n) * std::min(kQueryBlock, n)),
        o(std::min(kQueryBlock, n) * dh),
        m(std::min(kQueryBlock, n)),
        l(std::min(kQueryBlock, n)),
        alpha(std::min(kQueryBlock, n)) {}
  std::vector<F> q_t, s, o, m, l, alpha;
};

// out and lse of queries [i0, i0 + qb) of one head (q, k, v, out at the head's start).
template <class Tiles, typename F>
void forward_block(const F* q, const F* k, const F* v, F* out, float* lse, int64_t n, int64_t dh, int64_t i0,
                   int64_t qb, ForwardScratch<F>& w) {
  const F scale = F(1) / std::sqrt(F(dh));
  Tiles::transpose(q + i0 * dh, dh, qb, dh, w.q_t.data(), qb);
  std::fill(w.m.begin(), w.m.end(), -std::numeric_limits<F>::infinity());
  std::fill(w.l.begin(), w.l.end(), F(0));
  for (int64_t j0 = 0; j0 < n; j0 += kForwardKeyBlock) {
    const int64_t kb = std::min(kForwardKeyBlock, n - j0);
    // s[key][query] = k_j . q_i, then p in place of it
    Tiles::template gemm<false>(kb, qb, dh, k + j0 * dh, dh, w.q_t.data(), qb, w.s.data(), qb, false);
    Tiles::softmax_cols(w.s.data(), qb, kb, qb, scale, w.m.data(), w.l.data(), w.alpha.data());
    if (j0 > 0) {
      for (int64_t i = 0; i < qb; ++i)
        for (int64_t d = 0; d < dh; ++d) w.o[i * dh + d] *= w.alpha[i];
    }
    // o[query] += sum_key p[key][query] v[key]: p read transposed
    Tiles::template gemm<true>(qb, dh, kb, w.s.data(), qb, v + j0 * dh, dh, w.o.data(), dh, j0 > 0);
  }
  for (int64_t i = 0; i < qb; ++i) {
    const F inv_sum = F(1) / w.l[i];
    for (int64_t d = 0; d < dh; ++d) out[(i0 + i) * dh + d] = w.o[i * dh + d] * inv_sum;
    lse[i0 + i] = static_cast<float>(w.m[i] + std::log(w.l[i]));
  }
}

// body(scratch, head, i0, qb) for every (head, query block [i0, i0 + qb))
// unit, the units split over the threads, each thread with its own
// Scratch(n, dh): each unit writes its own rows.
template <class Scratch, class Body>
void for_query_blocks(int64_t heads, int64_t n, int64_t dh, const Body& body) {
  const int64_t q_blocks = (n + kQueryBlock - 1) / kQueryBlock;
#pragma omp parallel if (heads * n * n * dh > kMinParallelAttention)
  {
    Scratch scratch(n, dh);
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < heads * q_blocks; ++unit) {
      const int64_t head = unit / q_blocks, i0 = (unit % q_blocks) * kQueryBlock;
      body(scratch, head, i0, std::min(kQueryBlock, n - i0));
    }
  }
}

template <class Tiles, typename F>
void forward(const F* q, const F* k, const F* v, F* out, float* lse, int64_t heads, int64_t n, int64_t dh) {
  for_query_blocks<ForwardScratch<F>>(heads, n, dh, [&](ForwardScratch<F>& w, int64_t head, int64_t i0, int64_t qb) {
    const int64_t at = head * n * dh;
    forward_block<Tiles>(q + at, k + at, v + at, out + at, lse + head * n, n, dh, i0, qb, w);
  });
}

// A thread's buffers for backward_keys, no larger than n asks.
template <typename F>
struct BackwardScratch {
  BackwardScratch(int64_t n, int64_t dh)
      : q_t(dh * n),
        do_t(dh * n),
        delta(n),
        s(std::min(kBackwardKeyBlock, n) * std::min(kQueryBlock, n)),
        ds(std::min(kBackwardKeyBlock, n) * std::min(kQueryBlock, n)),
        dk(std::min(kBackwardKeyBlock, n) * dh),
        dv(std::min(kBackwardKeyBlock, n) * dh) {}
  std::vector<F> q_t, do_t, delta, s, ds, dk, dv;
};

// dk and dv of key blocks [first, last) of one head, and their part of dq,
// summed into dq_acc (all pointers at the head's start). Recomputes
// p = exp(s - lse) per tile; with delta_i = <dO_i, O_i> and ds = p (dO v - delta):
//   dv_j = sum_i p_ij dO_i,  dk_j = scale sum_i ds_ij q_i,  dq_i = scale sum_j ds_ij k_j.
// dq_acc sums without the scale, which the caller applies.
template <class Tiles, typename F>
void backward_keys(const F* grad_out, const F* q, const F* k, const F* v, const F* out, const float* lse, F* dq_acc,
                   F* dk, F* dv, int64_t n, int64_t dh, int64_t first, int64_t last, BackwardScratch<F>& w) {
  const F scale = F(1) / std::sqrt(F(dh));
  Tiles::transpose(q, dh, n, dh, w.q_t.data(), n);
  Tiles::transpose(grad_out, dh, n, dh, w.do_t.data(), n);
  for (int64_t i = 0; i < n; ++i) w.delta[i] = dot(grad_out + i * dh, out + i * dh, dh);
  std::fill(dq_acc, dq_acc + n * dh, F(0));
  for (int64_t block = first; block < last; ++block) {
    const int64_t j0 = block * kBackwardKeyBlock, kb = std::min(kBackwardKeyBlock, n - j0);
    for (int64_t i0 = 0; i0 < n; i0 += kQueryBlock) {
      const int64_t qb = std::min(kQueryBlock, n - i0);
      // tiles [key][query]: s = k_j . q_i and dp = v_j . dO_i, which grad_cols turns into p and ds
      Tiles::template gemm<false>(kb, qb, dh, k + j0 * dh, dh, w.q_t.data() + i0, n, w.s.data(), qb, false);
      Tiles::template gemm<false>(kb, qb, dh, v + j0 * dh, dh, w.do_t.data() + i0, n, w.ds.data(), qb, false);
      Tiles::grad_cols(w.s.data(), w.ds.data(), qb, kb, qb, scale, lse + i0, w.delta.data() + i0);
      Tiles::template gemm<false>(kb, dh, qb, w.s.data(), qb, grad_out + i0 * dh, dh, w.dv.data(), dh, i0 > 0);
      Tiles::template gemm<false>(kb, dh, qb, w.ds.data(), qb, q + i0 * dh, dh, w.dk.data(), dh, i0 > 0);
      Tiles::template gemm<true>(qb, dh, kb, w.ds.data(), qb, k + j0 * dh, dh, dq_acc + i0 * dh, dh, true);
    }
    for (int64_t x = 0; x < kb * dh; ++x) {
      dk[j0 * dh + x] = scale * w.dk[x];
      dv[j0 * dh + x] = w.dv[x];
    }
  }
}

// Threads own (head, split) units, a split being a range of the head's key
// blocks, so that each writes its own dk and dv rows. A head takes more than
// one split only when there are fewer heads than threads; its splits then sum
// dq in buffers of their own, added up at the end.
template <class Tiles, typename F>
void backward(const F* grad_out, const F* q, const F* k, const F* v, const F* out, const float* lse, F* dq, F* dk,
              F* dv, int64_t heads, int64_t n, int64_t dh) {
  const bool parallel = heads * n * n * dh > kMinParallelAttention;
  const int64_t key_blocks = (n + kBackwardKeyBlock - 1) / kBackwardKeyBlock;
  const int64_t threads = parallel ? max_threads() : 1;
  const int64_t splits = std::clamp<int64_t>((threads + heads - 1) / std::max<int64_t>(heads, 1), 1, key_blocks);
  const int64_t blocks_per_split = (key_blocks + splits - 1) / splits;
  std::vector<F> dq_parts(splits > 1 ? heads * splits * n * dh : 0);
  F* dq_acc = splits > 1 ? dq_parts.data() : dq;  // (heads, splits, n, dh)
  const F scale = F(1) / std::sqrt(F(dh));
#pragma omp parallel if (parallel)
  {
    BackwardScratch<F> scratch(n, dh);
#pragma omp for schedule(static)
    for (int64_t unit = 0; unit < heads * splits; ++unit) {
      const int64_t head = unit / splits, first = (unit % splits) * blocks_per_split;
      const int64_t at = head * n * dh;
      backward_keys<Tiles>(grad_out + at, q + at, k + at, v + at, out + at, lse + head * n, dq_acc + unit * n * dh,
                           dk + at, dv + at, n, dh, first, std::min(first + blocks_per_split, key_blocks), scratch);
    }
#pragma omp for schedule(static)
    for (int64_t head = 0; head < heads; ++head) {
      for (int64_t x = 0; x < n * dh; ++x) {
        F sum = 0;
        for (int64_t split = 0; split < splits; ++split) sum += dq_acc[(head * splits + split) * n * dh + x];
        dq[head * n * dh + x] = scale * sum;
      }
    }
  }
}

}  // namespace detail

// softmax(q k^T / sqrt(dh)) v and the log-sum-exp of each row of the scaled scores.
template <typename F>
void attention_fwd(const F* q, const F* k, const F* v, F* out, float* lse, int64_t heads, int64_t n, int64_t dh,
                   Isa isa = Isa::kAuto) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<F, float>) {
    if (use_avx512(isa)) return detail::forward<avx512::Tiles>(q, k, v, out, lse, heads, n, dh);
  }
#endif
  detail::forward<PortableTiles<F>>(q, k, v, out, lse, heads, n, dh);
}

// The gradients of attention_fwd's out, from its out and lse.
template <typename F>
void attention_bwd(const F* grad_out, const F* q, const F* k, const F* v, const F* out, const float* lse, F* dq, F* dk,
                   F* dv, int64_t heads, int64_t n, int64_t dh, Isa isa = Isa::kAuto) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<F, float>) {
    if (use_avx512(isa)) return detail::backward<avx512::Tiles>(grad_out, q, k, v, out, lse, dq, dk, dv, heads, n, dh);
  }
#endif
  detail::backward<PortableTiles<F>>(grad_out, q, k, v, out, lse, dq, dk, dv, heads, n, dh);
}

}  // namespace shortcut_fast::cpu
