// Checks the CPU kernels of csrc/cpu/kernels.h against naive loops in double
// and, for the backward kernels, against central finite differences of the
// forward kernels. Includes nothing of torch, so it builds in seconds.
// Exit status 0 when every check passes.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cpu/kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

namespace sf = shortcut_fast::cpu;
using Vec = std::vector<double>;

int failures = 0;

// OpenMP runs `threads` threads while this lives, then 1 again.
struct ThreadsInScope {
  explicit ThreadsInScope(int threads) {
#ifdef _OPENMP
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  ~ThreadsInScope() {
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
  }
};

// A check's name: "<what> <tensor> (a, b, c) x<threads>".
std::string case_name(const std::string& what, const char* tensor, int64_t a, int64_t b, int64_t c, int threads) {
  char name[128];
  std::snprintf(name, sizeof name, "%s %s (%ld, %ld, %ld) x%d", what.c_str(), tensor, long(a), long(b), long(c),
                threads);
  return name;
}

const char* isa_name(sf::Isa isa) { return isa == sf::Isa::kAvx512 ? "avx512" : "portable"; }

template <typename T>
Vec widen(const std::vector<T>& values) {
  return Vec(values.begin(), values.end());
}

void expect_close(const std::string& what, const Vec& actual, const Vec& expected, double tol) {
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!(std::abs(actual[i] - expected[i]) <= tol * (1 + std::abs(expected[i])))) {
      std::printf("FAIL %s[%zu]: %.9g, expected %.9g\n", what.c_str(), i, actual[i], expected[i]);
      ++failures;
      return;
    }
  }
  std::printf("ok   %s\n", what.c_str());
}

Vec random_values(size_t n, std::mt19937& rng) {
  std::normal_distribution<double> normal;
  Vec values(n);
  for (double& v : values) v = normal(rng);
  return values;
}

std::vector<float> narrow(const Vec& values) { return std::vector<float>(values.begin(), values.end()); }

// d loss / d inputs[i] by central differences, loss a function of all inputs.
Vec numeric_grad(const std::function<double()>& loss, Vec& input) {
  constexpr double kStep = 1e-6;
  Vec grad(input.size());
  for (size_t i = 0; i < input.size(); ++i) {
    const double saved = input[i];
    input[i] = saved + kStep;
    const double up = loss();
    input[i] = saved - kStep;
    grad[i] = (up - loss()) / (2 * kStep);
    input[i] = saved;
  }
  return grad;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Attention in double by the book: the full score matrix, softmax, products.
struct AttentionRef {
  Vec out, lse, dq, dk, dv;
};

AttentionRef naive_attention(const Vec& q, const Vec& k, const Vec& v, const Vec& grad_out, int64_t heads, int64_t n,
                             int64_t dh) {
  AttentionRef ref{Vec(q.size()), Vec(heads * n), Vec(q.size()), Vec(q.size()), Vec(q.size())};
  const double scale = 1 / std::sqrt(double(dh));
  for (int64_t h = 0; h < heads; ++h) {
    const auto at = [&](const Vec& x, int64_t row, int64_t d) { return x[(h * n + row) * dh + d]; };
    Vec p(n * n), dp(n * n);
    for (int64_t i = 0; i < n; ++i) {
      double max_score = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t d = 0; d < dh; ++d) p[i * n + j] += at(q, i, d) * at(k, j, d) * scale;
        max_score = std::max(max_score, p[i * n + j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < n; ++j) sum += std::exp(p[i * n + j] - max_score);
      ref.lse[h * n + i] = max_score + std::log(sum);
      for (int64_t j = 0; j < n; ++j) p[i * n + j] = std::exp(p[i * n + j] - ref.lse[h * n + i]);
    }
    for (int64_t i = 0; i < n; ++i) {
      double delta = 0;  // <dO_i, O_i> = sum_j p_ij <dO_i, v_j>
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t d = 0; d < dh; ++d) {
          ref.out[(h * n + i) * dh + d] += p[i * n + j] * at(v, j, d);
          dp[i * n + j] += at(grad_out, i, d) * at(v, j, d);
        }
        delta += p[i * n + j] * dp[i * n + j];
      }
      for (int64_t j = 0; j < n; ++j) {
        const double ds = p[i * n + j] * (dp[i * n + j] - delta);
        for (int64_t d = 0; d < dh; ++d) {
          ref.dq[(h * n + i) * dh + d] += scale * ds * at(k, j, d);
          ref.dk[(h * n + j) * dh + d] += scale * ds * at(q, i, d);
          ref.dv[(h * n + j) * dh + d] += p[i * n + j] * at(grad_out, i, d);
        }
      }
    }
  }
  return ref;
}

// The fp32 kernels of `isa` against naive_attention; run with `threads`
// threads, so that one head with several key blocks splits over them.
void check_attention(std::mt19937& rng, int64_t heads, int64_t n, int64_t dh, sf::Isa isa, int threads) {
  const ThreadsInScope scope(threads);
  const size_t size = heads * n * dh;
  const Vec q = random_values(size, rng), k = random_values(size, rng), v = random_values(size, rng);
  const Vec grad_out = random_values(size, rng);
  const AttentionRef ref = naive_attention(q, k, v, grad_out, heads, n, dh);
  std::vector<float> out(size), lse(heads * n), dq(size), dk(size), dv(size);
  sf::attention_fwd(narrow(q).data(), narrow(k).data(), narrow(v).data(), out.data(), lse.data(), heads, n, dh, isa);
  sf::attention_bwd(narrow(grad_out).data(), narrow(q).data(), narrow(k).data(), narrow(v).data(), out.data(),
                    lse.data(), dq.data(), dk.data(), dv.data(), heads, n, dh, isa);
  const std::string op = std::string("attention ") + isa_name(isa);
  const auto name = [&](const char* tensor) { return case_name(op, tensor, heads, n, dh, threads); };
  expect_close(name("out"), widen(out), ref.out, 1e-5);
  expect_close(name("lse"), widen(lse), ref.lse, 1e-5);
  expect_close(name("dq"), widen(dq), ref.dq, 1e-4);
  expect_close(name("dk"), widen(dk), ref.dk, 1e-4);
  expect_close(name("dv"), widen(dv), ref.dv, 1e-4);
}

void test_attention(std::mt19937& rng) {
  // (heads, n, dh): one row; n on both sides of the blocks (64 queries, 256
  // keys forward, 64 keys backward) and of the 6-row register tiles; head
  // sizes no vector width divides, and wider than one 64-column panel
  const int64_t sizes[][3] = {{2, 1, 33}, {3, 7, 5}, {2, 64, 48}, {2, 65, 48}, {1, 130, 33}, {2, 70, 80}, {1, 300, 33}};
  std::vector<sf::Isa> isas = {sf::Isa::kPortable};
  if (sf::use_avx512(sf::Isa::kAuto)) isas.push_back(sf::Isa::kAvx512);
  for (const sf::Isa isa : isas) {
    for (const auto& s : sizes) check_attention(rng, s[0], s[1], s[2], isa, 1);
    check_attention(rng, 1, 130, 33, isa, 3);  // three splits of one head's keys
    check_attention(rng, 2, 257, 64, isa, 3);  // two splits per head, five key blocks
  }

  // fp64 against the book to fp64 rounding, and its backward against
  // central finite differences of loss = <grad_out, out>.
  const int64_t heads = 3, n = 7, dh = 5;
  const size_t size = heads * n * dh;
  Vec q = random_values(size, rng), k = random_values(size, rng), v = random_values(size, rng);
  const Vec grad_out = random_values(size, rng);
  Vec out64(size);
  std::vector<float> lse32(heads * n);
  auto loss = [&] {
    sf::attention_fwd(q.data(), k.data(), v.data(), out64.data(), lse32.data(), heads, n, dh);
    return dot(grad_out, out64);
  };
  loss();
  expect_close("attention_fwd out (fp64)", out64, naive_attention(q, k, v, grad_out, heads, n, dh).out, 1e-12);
  Vec dq(size), dk(size), dv(size);
  sf::attention_bwd(grad_out.data(), q.data(), k.data(), v.data(), out64.data(), lse32.data(), dq.data(), dk.data(),
                    dv.data(), heads, n, dh);
  // lse passes through fp32, which bounds the agreement near 1e-6.
  expect_close("attention_bwd dq", dq, numeric_grad(loss, q), 1e-5);
  expect_close("attention_bwd dk", dk, numeric_grad(loss, k), 1e-5);
  expect_close("attention_bwd dv", dv, numeric_grad(loss, v), 1e-5);
}

// Random q, k, v and tangents dq, dk, dv of (heads, n, dh), and the fp64
// book (naive_attention) along them.
struct JvpCase {
  JvpCase(std::mt19937& rng, int64_t heads, int64_t n, int64_t dh) : heads(heads), n(n), dh(dh), size(heads * n * dh) {
    for (Vec* x : {&q, &k, &v, &dq, &dk, &dv}) *x = random_values(size, rng);
  }
  // out and lse at q + h dq, k + h dk, v + h dv
  AttentionRef along(double h) const {
    Vec qh(q), kh(k), vh(v);
    for (size_t x = 0; x < size; ++x) qh[x] += h * dq[x], kh[x] += h * dk[x], vh[x] += h * dv[x];
    return naive_attention(qh, kh, vh, Vec(size), heads, n, dh);
  }
  // The central differences of out and lse along the tangents.
  std::pair<Vec, Vec> differences(double step) const {
    const AttentionRef up = along(step), down = along(-step);
    Vec d_out(size), d_lse(heads * n);
    for (size_t x = 0; x < size; ++x) d_out[x] = (up.out[x] - down.out[x]) / (2 * step);
    for (int64_t x = 0; x < heads * n; ++x) d_lse[x] = (up.lse[x] - down.lse[x]) / (2 * step);
    return {d_out, d_lse};
  }
  int64_t heads, n, dh;
  size_t size;
  Vec q, k, v, dq, dk, dv;
};

// The JVP kernel in fp32 against central differences of the fp64 book
// along the tangents, with `threads` threads.
void check_attention_jvp(std::mt19937& rng, int64_t heads, int64_t n, int64_t dh, sf::Isa isa, int threads) {
  const ThreadsInScope scope(threads);
  const JvpCase c(rng, heads, n, dh);
  const AttentionRef ref = c.along(0);
  const auto [want_d_out, want_d_lse] = c.differences(1e-5);
  std::vector<float> out(c.size), lse(heads * n), d_out(c.size), d_lse(heads * n);
  sf::attention_jvp(narrow(c.q).data(), narrow(c.k).data(), narrow(c.v).data(), narrow(c.dq).data(),
                    narrow(c.dk).data(), narrow(c.dv).data(), out.data(), lse.data(), d_out.data(), d_lse.data(), heads,
                    n, dh, isa);
  const std::string op = std::string("attention_jvp ") + isa_name(isa);
  const auto name = [&](const char* tensor) { return case_name(op, tensor, heads, n, dh, threads); };
  expect_close(name("out"), widen(out), ref.out, 1e-5);
  expect_close(name("lse"), widen(lse), ref.lse, 1e-5);
  expect_close(name("d_out"), widen(d_out), want_d_out, 1e-4);
  expect_close(name("d_lse"), widen(d_lse), want_d_lse, 1e-4);
}

void test_attention_jvp(std::mt19937& rng) {
  // one row; n on both sides of the 64-query and 256-key blocks (300: two
  // key blocks, so the sums are rescaled); head sizes off the vector widths
  const int64_t sizes[][3] = {{2, 1, 33}, {3, 7, 5}, {2, 65, 48}, {1, 300, 33}};
  std::vector<sf::Isa> isas = {sf::Isa::kPortable};
  if (sf::use_avx512(sf::Isa::kAuto)) isas.push_back(sf::Isa::kAvx512);
  for (const sf::Isa isa : isas) {
    for (const auto& s : sizes) check_attention_jvp(rng, s[0], s[1], s[2], isa, 1);
    check_attention_jvp(rng, 3, 130, 64, isa, 3);  // (head, query block) units over three threads
  }
  // fp64 storage sums in fp64: its d_out agrees with the difference quotient to its truncation error
  const JvpCase c(rng, 2, 9, 5);
  const Vec want = c.differences(1e-4).first;
  Vec out(c.size), d_out(c.size);
  std::vector<float> lse(c.heads * c.n), d_lse(c.heads * c.n);
  sf::attention_jvp(c.q.data(), c.k.data(), c.v.data(), c.dq.data(), c.dk.data(), c.dv.data(), out.data(), lse.data(),
                    d_out.data(), d_lse.data(), c.heads, c.n, c.dh);
  expect_close("attention_jvp out (fp64)", out, c.along(0).out, 1e-12);
  expect_close("attention_jvp d_out (fp64)", d_out, want, 1e-7);
}

// The tile kernels of attention against loops: every register tile shape,
// edges of the 64-column panels, both layouts of a.
template <class Tiles>
void test_tiles(const char* isa_name, std::mt19937& rng) {
  int bad = 0;
  for (const int64_t m : {1, 2, 3, 4, 5, 6, 7, 13}) {
    for (const int64_t n : {1, 15, 16, 17, 33, 48, 64, 65, 130}) {
      for (const int64_t k : {1, 5, 64}) {
        const Vec a = random_values(m * k, rng), b = random_values(k * n, rng), c0 = random_values(m * n, rng);
        for (const bool trans_a : {false, true}) {
          for (const bool accumulate : {false, true}) {
            std::vector<float> c = narrow(c0);
            const std::vector<float> a32 = narrow(a), b32 = narrow(b);
            // a is (m, k), or (k, m) for trans_a
            if (trans_a)
              Tiles::template gemm<true>(m, n, k, a32.data(), m, b32.data(), n, c.data(), n, accumulate);
            else
              Tiles::template gemm<false>(m, n, k, a32.data(), k, b32.data(), n, c.data(), n, accumulate);
            for (int64_t i = 0; i < m; ++i) {
              for (int64_t j = 0; j < n; ++j) {
                double want = accumulate ? double(float(c0[i * n + j])) : 0;
                for (int64_t p = 0; p < k; ++p)
                  want += double(a32[trans_a ? p * m + i : i * k + p]) * double(b32[p * n + j]);
                if (!(std::abs(c[i * n + j] - want) <= 1e-5 * (1 + std::abs(want)))) ++bad;
              }
            }
          }
        }
      }
    }
  }
  std::printf("%s tiles gemm (%s)\n", bad ? "FAIL" : "ok  ", isa_name);
  failures += bad > 0;

  bad = 0;
  for (const auto& [rows, cols] : {std::pair{1, 1}, {5, 3}, {16, 16}, {17, 33}, {40, 20}}) {
    const std::vector<float> src = narrow(random_values((rows + 1) * (cols + 2), rng));
    std::vector<float> dst((cols + 1) * (rows + 3), -1.0f);
    Tiles::transpose(src.data(), cols + 2, rows, cols, dst.data(), rows + 3);
    for (int64_t c = 0; c <= cols; ++c) {
      for (int64_t r = 0; r < rows + 3; ++r) {
        const float want = c < cols && r < rows ? src[r * (cols + 2) + c] : -1.0f;  // nothing else written
        if (dst[c * (rows + 3) + r] != want) ++bad;
      }
    }
  }
  std::printf("%s tiles transpose (%s)\n", bad ? "FAIL" : "ok  ", isa_name);
  failures += bad > 0;
}

// modulate_layernorm in fp32 against its formulas in double, run with
// `threads` threads (more than samples: a sample's tokens split over them).
void check_modulate_layernorm(std::mt19937& rng, int64_t batch, int64_t tokens, int64_t channels, int threads) {
  const ThreadsInScope scope(threads);
  const double eps = 1e-6;
  const size_t size = batch * tokens * channels;
  const Vec x = random_values(size, rng), grad_y = random_values(size, rng);
  const Vec shift = random_values(batch * channels, rng), scale = random_values(batch * channels, rng);
  Vec y_ref(size), dx_ref(size), dshift_ref(batch * channels), dscale_ref(batch * channels);
  for (int64_t row = 0; row < batch * tokens; ++row) {
    const double* x_row = &x[row * channels];
    const int64_t p = (row / tokens) * channels;
    double mean = 0, var = 0, mean_g = 0, mean_g_xhat = 0;
    for (int64_t c = 0; c < channels; ++c) mean += x_row[c] / channels;
    for (int64_t c = 0; c < channels; ++c) var += std::pow(x_row[c] - mean, 2) / channels;
    const double rstd = 1 / std::sqrt(var + eps);
    for (int64_t c = 0; c < channels; ++c) {
      const double x_hat = (x_row[c] - mean) * rstd, g = grad_y[row * channels + c] * (1 + scale[p + c]);
      y_ref[row * channels + c] = x_hat * (1 + scale[p + c]) + shift[p + c];
      mean_g += g / channels;
      mean_g_xhat += g * x_hat / channels;
      dshift_ref[p + c] += grad_y[row * channels + c];
      dscale_ref[p + c] += grad_y[row * channels + c] * x_hat;
    }
    for (int64_t c = 0; c < channels; ++c) {
      const double x_hat = (x_row[c] - mean) * rstd, g = grad_y[row * channels + c] * (1 + scale[p + c]);
      dx_ref[row * channels + c] = rstd * (g - mean_g - x_hat * mean_g_xhat);
    }
  }
  std::vector<float> y(size), mean(batch * tokens), rstd(batch * tokens), dx(size), dshift(batch * channels),
      dscale(batch * channels);
  sf::modulate_layernorm_fwd(narrow(x).data(), narrow(shift).data(), narrow(scale).data(), eps, y.data(), mean.data(),
                             rstd.data(), batch, tokens, channels);
  sf::modulate_layernorm_bwd(narrow(grad_y).data(), narrow(x).data(), narrow(scale).data(), mean.data(), rstd.data(),
                             dx.data(), dshift.data(), dscale.data(), batch, tokens, channels);
  const auto name = [&](const char* tensor) {
    return case_name("modulate_layernorm", tensor, batch, tokens, channels, threads);
  };
  expect_close(name("y"), widen(y), y_ref, 1e-5);
  expect_close(name("dx"), widen(dx), dx_ref, 1e-4);
  expect_close(name("dshift"), widen(dshift), dshift_ref, 1e-4);
  expect_close(name("dscale"), widen(dscale), dscale_ref, 1e-4);
}

void test_modulate_layernorm(std::mt19937& rng) {
  // one channel; tails of the 16 partial sums; one token; the DiT sizes
  check_modulate_layernorm(rng, 2, 3, 1, 1);
  check_modulate_layernorm(rng, 3, 1, 37, 1);
  check_modulate_layernorm(rng, 4, 4, 192, 1);
  check_modulate_layernorm(rng, 2, 65, 384, 3);  // splits of each sample's tokens
  check_modulate_layernorm(rng, 5, 9, 385, 3);

  // fp64 backward against central finite differences of loss = <grad_y, y>
  const int64_t batch = 2, tokens = 3, channels = 37;
  const double eps = 1e-6;
  const size_t size = batch * tokens * channels;
  Vec x = random_values(size, rng), shift = random_values(batch * channels, rng);
  Vec scale = random_values(batch * channels, rng);

  std::vector<float> mean(batch * tokens), rstd(batch * tokens);

  const Vec grad_y = random_values(size, rng);
  Vec y64(size);
  auto loss = [&] {
    sf::modulate_layernorm_fwd(x.data(), shift.data(), scale.data(), eps, y64.data(), mean.data(), rstd.data(), batch,
                               tokens, channels);
    return dot(grad_y, y64);
  };
  loss();
  Vec dx(size), dshift(batch * channels), dscale(batch * channels);
  sf::modulate_layernorm_bwd(grad_y.data(), x.data(), scale.data(), mean.data(), rstd.data(), dx.data(), dshift.data(),
                             dscale.data(), batch, tokens, channels);
  // mean and rstd pass through fp32.
  expect_close("modulate_layernorm_bwd dx", dx, numeric_grad(loss, x), 1e-5);
  expect_close("modulate_layernorm_bwd dshift", dshift, numeric_grad(loss, shift), 1e-5);
  expect_close("modulate_layernorm_bwd dscale", dscale, numeric_grad(loss, scale), 1e-5);
}

void test_small_ops(std::mt19937& rng) {
  const int64_t batch = 3, tokens = 5, channels = 37, inner = tokens * channels;
  const Vec x = random_values(batch * inner, rng), y = random_values(batch * inner, rng);
  const Vec gate = random_values(batch * channels, rng);
  std::vector<float> out(batch * inner);
  Vec expected(batch * inner);

  for (int64_t i = 0; i < batch * inner; ++i) expected[i] = x[i] + gate[(i / inner) * channels + i % channels] * y[i];
  sf::gated_residual(narrow(x).data(), narrow(gate).data(), narrow(y).data(), out.data(), batch, tokens, channels);
  expect_close("gated_residual", widen(out), expected, 1e-6);

  const std::vector<float> d = {0.25f, 0.5f, 1.0f};
  for (int64_t i = 0; i < batch * inner; ++i) expected[i] = x[i] + d[i / inner] * y[i];
  sf::euler_step(narrow(x).data(), narrow(y).data(), d.data(), out.data(), batch, inner);
  expect_close("euler_step", widen(out), expected, 1e-6);

  for (int64_t i = 0; i < batch * inner; ++i) expected[i] = std::clamp(x[i] + d[i / inner] / 2 * y[i], -0.5, 0.5);
  sf::bootstrap_midpoint(narrow(x).data(), narrow(y).data(), d.data(), 0.5, out.data(), batch, inner);
  expect_close("bootstrap_midpoint (clip 0.5)", widen(out), expected, 1e-6);

  for (int64_t i = 0; i < batch * inner; ++i) expected[i] = (x[i] + y[i]) / 2;
  sf::bootstrap_target(narrow(x).data(), narrow(y).data(), std::nullopt, out.data(), batch * inner);
  expect_close("bootstrap_target (no clip)", widen(out), expected, 1e-6);

  const Vec c = random_values(batch * channels, rng), table = random_values(4 * channels, rng);
  const std::vector<int64_t> level = {3, 0, 3}, label = {1, 2, 0};
  Vec sums(batch * channels);
  for (int64_t i = 0; i < batch * channels; ++i) {
    const int64_t b = i / channels, col = i % channels;
    sums[i] = c[i] + table[level[b] * channels + col] + table[label[b] * channels + col];
  }
  std::vector<float> sum_out(batch * channels);
  sf::condition_sum(narrow(c).data(), level.data(), narrow(table).data(), label.data(), narrow(table).data(),
                    sum_out.data(), batch, channels);
  expect_close("condition_sum (with labels)", widen(sum_out), sums, 1e-6);

  const int64_t dim = 7, half = dim / 2;
  const std::vector<float> t = {0.0f, 0.37f};
  Vec features(2 * dim);
  for (int64_t b = 0; b < 2; ++b) {
    for (int64_t i = 0; i < half; ++i) {
      const double arg = 1000.0 * t[b] * std::exp(-std::log(10000.0) * i / half);
      features[b * dim + i] = std::cos(arg);
      features[b * dim + half + i] = std::sin(arg);
    }
  }
  std::vector<float> features_out(2 * dim);
  sf::timestep_features(t.data(), features_out.data(), 2, dim, 10000.0);
  // Phases reach ~400 rad: fp32 rounding of the argument dominates.
  expect_close("timestep_features (odd dim)", widen(features_out), features, 1e-4);
}

}  // namespace

int main() {
  std::mt19937 rng(0);
  test_attention(rng);
  test_attention_jvp(rng);
  test_tiles<sf::PortableTiles<float>>("portable", rng);
#if defined(__x86_64__) && defined(__GNUC__)
  if (sf::use_avx512(sf::Isa::kAuto)) test_tiles<sf::avx512::Tiles>("avx512", rng);
#endif
  test_modulate_layernorm(rng);
  test_small_ops(rng);
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
