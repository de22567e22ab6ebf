// The tile kernels of the CPU attention (attention.h): small matrix products
// and the softmax steps between them. `PortableTiles` runs on any CPU, in
// float or double; `avx512::Tiles` holds the fp32 kernels for AVX-512F, compiled
// for that target alone (the pragma region below) and picked at run time by
// `use_avx512`, so that one build runs on any x86-64.
//
// Every tile is row-major with the leading dimensions given. Attention keeps
// its score tiles as s[key][query], so that the softmax over keys runs down the
// columns of a tile, with queries along the vector lanes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace shortcut_fast::cpu {

enum class Isa { kAuto, kPortable, kAvx512 };

// Whether `isa` picks the AVX-512 kernels: kAuto does where this CPU has them.
inline bool use_avx512(Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool supported = __builtin_cpu_supports("avx512f");
  return isa != Isa::kPortable && supported;
#else
  (void)isa;
  return false;
#endif
}

template <typename F>
struct PortableTiles {
  // dst[c][r] = src[r][c] for r < rows, c < cols.
  static void transpose(const F* src, int64_t ld_src, int64_t rows, int64_t cols, F* dst, int64_t ld_dst) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) dst[c * ld_dst + r] = src[r * ld_src + c];
  }

  // c[i][j] (+)= sum_p a(i, p) b[p][j] for i < m, j < n, p < k, where
  // a(i, p) = a[i lda + p], or a[p lda + i] with TransA (a stored transposed).
  template <bool TransA>
  static void gemm(int64_t m, int64_t n, int64_t k, const F* a, int64_t lda, const F* b, int64_t ldb, F* c, int64_t ldc,
                   bool accumulate) {
    for (int64_t i = 0; i < m; ++i) {
      F* c_row = c + i * ldc;
      if (!accumulate) std::fill(c_row, c_row + n, F(0));
      for (int64_t p = 0; p < k; ++p) {
        const F a_ip = TransA ? a[p * lda + i] : a[i * lda + p];
        const F* b_row = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) c_row[j] += a_ip * b_row[j];
      }
    }
  }

  // One key block of the online softmax over s[key][query] = q . k (rows keys,
  // cols queries). m and l hold each query's running max of scale s and sum of
  // exp(scale s - m). Overwrites s with p = exp(scale s - m_new), updates m and
  // l, and sets alpha = exp(m_old - m_new), by which the caller rescales what
  // it summed before.
  static void softmax_cols(F* s, int64_t lds, int64_t rows, int64_t cols, F scale, F* m, F* l, F* alpha) {
    std::copy(m, m + cols, alpha);  // m_old, until it becomes alpha
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) m[c] = std::max(m[c], scale * s[r * lds + c]);
    for (int64_t c = 0; c < cols; ++c) {
      alpha[c] = std::exp(alpha[c] - m[c]);
      l[c] *= alpha[c];
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const F p = std::exp(scale * s[r * lds + c] - m[c]);
        s[r * lds + c] = p;
        l[c] += p;
      }
    }
  }

  // The backward's step between its products, over tiles [key][query]:
  // s (q . k) becomes p = exp(scale s - lse) and dp (dO . v) becomes
  // ds = p (dp - delta), with lse and delta per query.
  static void grad_cols(F* s, F* dp, int64_t ld, int64_t rows, int64_t cols, F scale, const float* lse,
                        const F* delta) {
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = 0; c < cols; ++c) {
        const F p = std::exp(scale * s[r * ld + c] - F(lse[c]));
        s[r * ld + c] = p;
        dp[r * ld + c] = p * (dp[r * ld + c] - delta[c]);
      }
    }
  }
};

}  // namespace shortcut_fast::cpu

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#include <array>

#include "../engine/kernels.h"  // before the AVX-512 region: its declarations stay untargeted

#pragma GCC push_options
#pragma GCC target("avx512f")
// GCC 12 takes the _mm512_undefined_ps() inside the intrinsics for uninitialised variables.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "../engine/kernels_simd.h"  // simd::exp, compiled here for AVX-512F

namespace shortcut_fast::cpu::avx512 {

// The vector type simd::exp takes: 16 floats. min and max return their first
// operand where it is NaN (the instructions return the second), so that
// simd::exp's clamp keeps a NaN score NaN rather than making it exp(-87.3).
struct V {
  using Reg = __m512;
  static Reg set1(float x) { return _mm512_set1_ps(x); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg min(Reg a, Reg b) { return _mm512_min_ps(b, a); }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(b, a); }
  static Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg fnmadd(Reg a, Reg b, Reg c) { return _mm512_fnmadd_ps(a, b, c); }
  static Reg round(Reg x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT); }
  static Reg pow2(Reg n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
};

inline __m512 exp(__m512 x) { return engine::simd::exp<V>(x); }

// The first `n` of 16 lanes (all of them for n >= 16).
inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }

// The register tile of PortableTiles::gemm: R rows of W vectors (R W
// accumulators, W vectors of b, a broadcast of a: at most 32 registers), the
// last vector masked to `last` lanes. Each step of p loads W vectors of b and
// R elements of a for R W multiply-adds. The loops over r and w must unroll
// before GCC places acc, or it keeps acc in memory.
template <int R, int W, bool TransA>
void micro_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t k, float* c, int64_t ldc,
                __mmask16 last, bool accumulate) {
  const auto mask = [last](int w) { return w + 1 < W ? __mmask16(0xFFFF) : last; };
  __m512 acc[R][W];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) acc[r][w] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k; ++p) {
    __m512 b_p[W];
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) b_p[w] = _mm512_maskz_loadu_ps(mask(w), b + p * ldb + 16 * w);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m512 a_rp = _mm512_set1_ps(TransA ? a[p * lda + r] : a[r * lda + p]);
#pragma GCC unroll 8
      for (int w = 0; w < W; ++w) acc[r][w] = _mm512_fmadd_ps(a_rp, b_p[w], acc[r][w]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 8
    for (int w = 0; w < W; ++w) {
      float* c_rw = c + r * ldc + 16 * w;
      if (accumulate) acc[r][w] = _mm512_add_ps(acc[r][w], _mm512_maskz_loadu_ps(mask(w), c_rw));
      _mm512_mask_storeu_ps(c_rw, mask(w), acc[r][w]);
    }
  }
}

constexpr int kTileRows = 6;
constexpr int kTileVectors = 4;

using MicroTile = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t, __mmask16, bool);

// kMicroTiles<TransA>[R - 1][W - 1] = micro_tile<R, W, TransA>
template <bool TransA, int R>
constexpr std::array<MicroTile, kTileVectors> row_of_tiles() {
  return {micro_tile<R, 1, TransA>, micro_tile<R, 2, TransA>, micro_tile<R, 3, TransA>, micro_tile<R, 4, TransA>};
}
template <bool TransA>
constexpr std::array<std::array<MicroTile, kTileVectors>, kTileRows> kMicroTiles = {
    row_of_tiles<TransA, 1>(), row_of_tiles<TransA, 2>(), row_of_tiles<TransA, 3>(),
    row_of_tiles<TransA, 4>(), row_of_tiles<TransA, 5>(), row_of_tiles<TransA, 6>()};

// The pairs of floats of a and b interleaved, low and high halves of each 128-bit lane.
inline __m512 unpacklo_pairs(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}
inline __m512 unpackhi_pairs(__m512 a, __m512 b) {
  return _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(a), _mm512_castps_pd(b)));
}

// Transposes 16 rows of 16 in registers: three rounds of shuffles, each
// swapping ever larger blocks (1, 2 then 4 floats) between pairs of rows.
inline void transpose_16x16(__m512 (&x)[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {  // t[i] lane L: x[i], x[i+1] interleaved at columns 4L, 4L + 1
    t[i] = _mm512_unpacklo_ps(x[i], x[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(x[i], x[i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {  // x[i + j] lane L: column 4L + j of rows i..i+3
    x[i] = unpacklo_pairs(t[i], t[i + 2]);
    x[i + 1] = unpackhi_pairs(t[i], t[i + 2]);
    x[i + 2] = unpacklo_pairs(t[i + 1], t[i + 3]);
    x[i + 3] = unpackhi_pairs(t[i + 1], t[i + 3]);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {  // lanes 0, 2 and lanes 1, 3 of pairs of 4-row groups
    t[j] = _mm512_shuffle_f32x4(x[j], x[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_f32x4(x[j], x[4 + j], 0xdd);
    t[8 + j] = _mm512_shuffle_f32x4(x[8 + j], x[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(x[8 + j], x[12 + j], 0xdd);
  }
#pragma GCC unroll 8
  for (int k = 0; k < 8; ++k) {  // x[c]: column c of all 16 rows
    x[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    x[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
}

struct Tiles {
  // PortableTiles::transpose in blocks of 16 x 16, masked at the edges.
  static void transpose(const float* src, int64_t ld_src, int64_t rows, int64_t cols, float* dst, int64_t ld_dst) {
    for (int64_t r0 = 0; r0 < rows; r0 += 16) {
      const int64_t block_rows = std::min<int64_t>(16, rows - r0);
      for (int64_t c0 = 0; c0 < cols; c0 += 16) {
        const int64_t block_cols = std::min<int64_t>(16, cols - c0);
        __m512 x[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i)
          x[i] = i < block_rows ? _mm512_maskz_loadu_ps(lanes(block_cols), src + (r0 + i) * ld_src + c0)
                                : _mm512_setzero_ps();
        transpose_16x16(x);
        for (int64_t c = 0; c < block_cols; ++c)
          _mm512_mask_storeu_ps(dst + (c0 + c) * ld_dst + r0, lanes(block_rows), x[c]);
      }
    }
  }

  // PortableTiles::gemm in fp32: for each panel of 64 columns, the register
  // tiles of 6 rows in turn, all reading the panel's columns of b.
  template <bool TransA>
  static void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                   int64_t ldc, bool accumulate) {
    constexpr int64_t kPanel = 16 * kTileVectors;
    for (int64_t j = 0; j < n; j += kPanel) {
      const int64_t width = std::min(kPanel, n - j);
      const int64_t vectors = (width + 15) / 16;
      const __mmask16 last = lanes(width - 16 * (vectors - 1));
      for (int64_t i = 0; i < m; i += kTileRows) {
        const int64_t rows = std::min<int64_t>(kTileRows, m - i);
        const float* a_i = TransA ? a + i : a + i * lda;
        float* c_ij = c + i * ldc + j;
        kMicroTiles<TransA>[rows - 1][vectors - 1](a_i, lda, b + j, ldb, k, c_ij, ldc, last, accumulate);
      }
    }
  }

  // PortableTiles::softmax_cols, 16 queries at a time.
  static void softmax_cols(float* s, int64_t lds, int64_t rows, int64_t cols, float scale, float* m, float* l,
                           float* alpha) {
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 mask = lanes(cols - c);
      __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
      for (int64_t r = 0; r < rows; ++r) top = _mm512_max_ps(top, _mm512_maskz_loadu_ps(mask, s + r * lds + c));
      const __m512 m_old = _mm512_maskz_loadu_ps(mask, m + c);
      const __m512 m_new = _mm512_max_ps(m_old, _mm512_mul_ps(top, vscale));
      __m512 sum = _mm512_setzero_ps();
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 p = exp(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, s + r * lds + c), vscale, m_new));
        _mm512_mask_storeu_ps(s + r * lds + c, mask, p);
        sum = _mm512_add_ps(sum, p);
      }
      const __m512 a = exp(_mm512_sub_ps(m_old, m_new));
      _mm512_mask_storeu_ps(m + c, mask, m_new);
      _mm512_mask_storeu_ps(l + c, mask, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, l + c), a, sum));
      _mm512_mask_storeu_ps(alpha + c, mask, a);
    }
  }

  // PortableTiles::grad_cols, 16 queries at a time.
  static void grad_cols(float* s, float* dp, int64_t ld, int64_t rows, int64_t cols, float scale, const float* lse,
                        const float* delta) {
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int64_t c = 0; c < cols; c += 16) {
      const __mmask16 mask = lanes(cols - c);
      const __m512 lse_c = _mm512_maskz_loadu_ps(mask, lse + c), delta_c = _mm512_maskz_loadu_ps(mask, delta + c);
      for (int64_t r = 0; r < rows; ++r) {
        const __m512 p = exp(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, s + r * ld + c), vscale, lse_c));
        const __m512 dp_rc = _mm512_maskz_loadu_ps(mask, dp + r * ld + c);
        _mm512_mask_storeu_ps(s + r * ld + c, mask, p);
        _mm512_mask_storeu_ps(dp + r * ld + c, mask, _mm512_mul_ps(p, _mm512_sub_ps(dp_rc, delta_c)));
      }
    }
  }
};

}  // namespace shortcut_fast::cpu::avx512

#pragma GCC diagnostic pop
#pragma GCC pop_options
#endif
