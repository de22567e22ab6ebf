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
#include <vector>

#include "cpu/kernels.h"

namespace {

namespace sf = shortcut_fast::cpu;
using Vec = std::vector<double>;

int failures = 0;

template <typename T>
Vec widen(const std::vector<T>& values) {
  return Vec(values.begin(), values.end());
}

void expect_close(const char* what, const Vec& actual, const Vec& expected, double tol) {
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!(std::abs(actual[i] - expected[i]) <= tol * (1 + std::abs(expected[i])))) {
      std::printf("FAIL %s[%zu]: %.9g, expected %.9g\n", what, i, actual[i], expected[i]);
      ++failures;
      return;
    }
  }
  std::printf("ok   %s\n", what);
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

void test_attention(std::mt19937& rng) {
  const int64_t heads = 3, n = 7, dh = 5;
  const size_t size = heads * n * dh;
  Vec q = random_values(size, rng), k = random_values(size, rng), v = random_values(size, rng);

  Vec out_ref(size), lse_ref(heads * n);
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t i = 0; i < n; ++i) {
      Vec scores(n);
      double max_score = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t d = 0; d < dh; ++d) scores[j] += q[(h * n + i) * dh + d] * k[(h * n + j) * dh + d];
        scores[j] /= std::sqrt(double(dh));
        max_score = std::max(max_score, scores[j]);
      }
      double sum = 0;
      for (double s : scores) sum += std::exp(s - max_score);
      lse_ref[h * n + i] = max_score + std::log(sum);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t d = 0; d < dh; ++d) {
          out_ref[(h * n + i) * dh + d] += std::exp(scores[j] - lse_ref[h * n + i]) * v[(h * n + j) * dh + d];
        }
      }
    }
  }
  std::vector<float> out(size), lse(heads * n);
  sf::attention_fwd(narrow(q).data(), narrow(k).data(), narrow(v).data(), out.data(), lse.data(), heads, n, dh);
  expect_close("attention_fwd out (fp32)", widen(out), out_ref, 1e-5);
  expect_close("attention_fwd lse (fp32)", widen(lse), lse_ref, 1e-5);

  // The backward in fp64 against finite differences of loss = <grad_out, out>.
  const Vec grad_out = random_values(size, rng);
  Vec out64(size);
  std::vector<float> lse32(heads * n);
  auto loss = [&] {
    sf::attention_fwd(q.data(), k.data(), v.data(), out64.data(), lse32.data(), heads, n, dh);
    return dot(grad_out, out64);
  };
  loss();
  Vec dq(size), dk(size), dv(size);
  sf::attention_bwd(grad_out.data(), q.data(), k.data(), v.data(), out64.data(), lse32.data(), dq.data(), dk.data(),
                    dv.data(), heads, n, dh);
  // lse passes through fp32, which bounds the agreement near 1e-6.
  expect_close("attention_bwd dq", dq, numeric_grad(loss, q), 1e-5);
  expect_close("attention_bwd dk", dk, numeric_grad(loss, k), 1e-5);
  expect_close("attention_bwd dv", dv, numeric_grad(loss, v), 1e-5);
}

void test_modulate_layernorm(std::mt19937& rng) {
  const int64_t batch = 2, tokens = 3, channels = 37;
  const double eps = 1e-6;
  const size_t size = batch * tokens * channels;
  Vec x = random_values(size, rng), shift = random_values(batch * channels, rng);
  Vec scale = random_values(batch * channels, rng);

  Vec y_ref(size);
  for (int64_t row = 0; row < batch * tokens; ++row) {
    double mean = 0, var = 0;
    for (int64_t c = 0; c < channels; ++c) mean += x[row * channels + c] / channels;
    for (int64_t c = 0; c < channels; ++c) var += std::pow(x[row * channels + c] - mean, 2) / channels;
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t p = (row / tokens) * channels + c;
      y_ref[row * channels + c] = (x[row * channels + c] - mean) / std::sqrt(var + eps) * (1 + scale[p]) + shift[p];
    }
  }
  std::vector<float> y(size), mean(batch * tokens), rstd(batch * tokens);
  sf::modulate_layernorm_fwd(narrow(x).data(), narrow(shift).data(), narrow(scale).data(), eps, y.data(), mean.data(),
                             rstd.data(), batch, tokens, channels);
  expect_close("modulate_layernorm_fwd (fp32)", widen(y), y_ref, 1e-5);

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
  test_modulate_layernorm(rng);
  test_small_ops(rng);
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
