// The engine's N-step sampler for ShortcutDiT and ShortcutMLP, and its ops torch.ops.shortcut_fast_engine.*.
//
// shortcut_fast/engine.py passes the module's own parameter tensors (no copies and no views, so in-place updates
// and `p.data = ...` are both seen) in the order below, and the configuration as ints:
//   config  = [kind (0 DiT, 1 MLP), hidden, heads, depth, tokens, patch, in_channels (MLP: dim), grid,
//              doublings K (min_step = 2^-K; -1: continuous step sizes), isa (kernels.h Isa), aten_rows]
//   weights = [freqs, t_w1, t_b1, t_w2, t_b2, d_table or empty, y_table or empty, in_w (DiT: the patch
//              convolution's (hidden, C, p, p) weight), in_b, pos_embed (1, tokens, hidden) or empty,
//              final_ada_w, final_ada_b, final_w, final_b, then the guidance input's embedder (intrinsic
//              guidance) or five empties: w_freqs, w_w1, w_b1, w_w2, w_b2] then per block
//              DiT: [ada_w, ada_b, qkv_w, qkv_b, proj_w, proj_b, fc1_w, fc1_b, fc2_w, fc2_b]
//              MLP: [ada_w, ada_b, fc1_w, fc1_b, fc2_w, fc2_b]
//              and last, for a model with continuous step sizes, the embedder of d: [d_w1, d_b1, d_w2, d_b2].
// A continuous model embeds t and d unstretched: its freqs are the sinusoid's divided by the stretch 1000.
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#include "layers.h"

namespace shortcut_fast::engine {
namespace {

constexpr int64_t kCommon = 19;
constexpr int64_t kGuidance = 14;  // the first of the guidance input's weights

struct Config {
  bool dit;
  int64_t hidden, heads, depth, tokens, patch, in_channels, grid, doublings;
  Context ctx;
};

// Releases the GIL for the loop when the caller holds it (the op may be called with or without it).
struct GilRelease {
  PyThreadState* state = nullptr;
  GilRelease() {
    if (Py_IsInitialized() && PyGILState_Check()) state = PyEval_SaveThread();
  }
  ~GilRelease() {
    if (state) PyEval_RestoreThread(state);
  }
};

const float* ptr(const at::Tensor& t) { return t.numel() ? t.const_data_ptr<float>() : nullptr; }

at::Tensor buffer(int64_t rows, int64_t cols) { return at::empty({rows, cols}, at::TensorOptions().dtype(at::kFloat)); }

struct Sampler {
  const Config& cfg;
  const std::vector<at::Tensor>& w;
  int64_t batch, rows_batch, m;  // samples, rows of the network (2x under guidance), token rows
  int64_t per_block;

  const at::Tensor& block(int64_t i, int64_t j) const { return w[kCommon + i * per_block + j]; }

  // mlp(features(value)) of the sinusoid embedders (of t, of d with continuous step sizes, and of w under
  // intrinsic guidance): the frequencies `freqs`, then the two linear layers' weight and bias from w[first]
  std::vector<float> embed(const at::Tensor& freqs, int64_t first, float value) const {
    const int64_t half = freqs.numel(), fdim = w[first].size(1);
    std::vector<float> feat(fdim, 0.0f);  // an odd fdim keeps its last feature at zero, as the reference pads
    const float s = value * 1000.0f;      // as the reference: the value in fp32, then stretched in fp32
    for (int64_t j = 0; j < half; ++j) {
      const float arg = s * freqs.const_data_ptr<float>()[j];
      feat[j] = std::cos(arg);
      feat[half + j] = std::sin(arg);
    }
    std::vector<float> hid(cfg.hidden), out(cfg.hidden);
    linear(cfg.ctx, feat.data(), 1, w[first], {Epi::kBiasSilu, ptr(w[first + 1])}, hid.data(), nullptr);
    linear(cfg.ctx, hid.data(), 1, w[first + 2], {Epi::kBias, ptr(w[first + 3])}, out.data(), nullptr);
    return out;
  }

  // c = t_mlp(features(t)) (+ the guidance embedding `w_emb`) + the embedding of d + y_table[y] for every
  // row; returns silu(c), the adaLN input. The embedding of d: d_table[level of d] (d = 2^-K is level 0), or
  // with continuous step sizes d_mlp(features(d)).
  at::Tensor condition(float t, double d, const std::vector<float>& w_emb, const int64_t* y) const {
    const int64_t h = cfg.hidden;
    std::vector<float> base = embed(w[0], 1, t);
    for (size_t i = 0; i < w_emb.size(); ++i) base[i] += w_emb[i];  // the model's order: (t + w) + d + y
    std::vector<float> d_emb;
    const float* d_row;
    if (cfg.doublings < 0) {
      d_emb = embed(w[0], kCommon + cfg.depth * per_block, static_cast<float>(d));
      d_row = d_emb.data();
    } else {
      d_row = ptr(w[5]) + (cfg.doublings + std::llround(std::log2(d))) * h;
    }
    const float* y_table = ptr(w[6]);
    at::Tensor sc = buffer(rows_batch, h);
    float* out = sc.data_ptr<float>();
    for (int64_t b = 0; b < rows_batch; ++b) {
      const float* y_row = y_table ? y_table + y[b] * h : nullptr;
      for (int64_t i = 0; i < h; ++i) {
        float c = base[i] + d_row[i];
        if (y_row) c += y_row[i];
        out[b * h + i] = c / (1.0f + std::exp(-c));
      }
    }
    return sc;
  }

  // one velocity evaluation of every row: x (B, ...) -> v (rows, out_features) in token order
  at::Tensor velocity(const float* x, const at::Tensor& sc) const {
    const int64_t h = cfg.hidden;
    at::Tensor hs = buffer(m, h), ln = buffer(m, h), scratch = buffer(m, h);
    float* hp = hs.data_ptr<float>();
    if (cfg.dit) {
      const at::Tensor conv = w[7].view({h, -1});  // (hidden, C, p, p) as a linear layer over (C, p, p) patches
      at::Tensor patches = buffer(m, conv.size(1));
      patchify(x, batch, rows_batch, cfg.in_channels, cfg.patch, cfg.grid, patches.data_ptr<float>());
      Epilogue e{Epi::kBiasTable, ptr(w[8]), ptr(w[9])};
      e.gate_ld = h;
      e.tokens = cfg.tokens;
      linear(cfg.ctx, patches.data_ptr<float>(), m, conv, e, hp, nullptr);
    } else {
      at::Tensor rows = buffer(m, cfg.in_channels);
      for (int64_t b = 0; b < rows_batch; ++b)
        std::copy(x + (b % batch) * cfg.in_channels, x + (b % batch + 1) * cfg.in_channels,
                  rows.data_ptr<float>() + b * cfg.in_channels);
      linear(cfg.ctx, rows.data_ptr<float>(), m, w[7], {Epi::kBias, ptr(w[8])}, hp, nullptr);
    }
    const int64_t chunks = cfg.dit ? 6 : 3;
    at::Tensor mod = buffer(rows_batch, chunks * h);
    const float* mp = mod.data_ptr<float>();
    const int64_t ld = chunks * h;
    for (int64_t i = 0; i < cfg.depth; ++i) {
      linear(cfg.ctx, sc.data_ptr<float>(), rows_batch, block(i, 0), {Epi::kBias, ptr(block(i, 1))},
             mod.data_ptr<float>(), nullptr);
      int64_t j = 2;
      if (cfg.dit) {
        modulate_layernorm(hp, m, h, mp, mp + h, ld, cfg.tokens, ln.data_ptr<float>());
        at::Tensor qkv = buffer(m, 3 * h), att = buffer(m, h);
        linear(cfg.ctx, ln.data_ptr<float>(), m, block(i, 2), {Epi::kBias, ptr(block(i, 3))}, qkv.data_ptr<float>(),
               nullptr);
        attention(qkv.data_ptr<float>(), rows_batch, cfg.tokens, cfg.heads, h / cfg.heads, att.data_ptr<float>());
        linear(cfg.ctx, att.data_ptr<float>(), m, block(i, 4), gated(block(i, 5), mp + 2 * h, ld), hp,
               scratch.data_ptr<float>());
        j = 6;
      }
      const int64_t off = cfg.dit ? 3 * h : 0;  // the MLP half of the modulation
      modulate_layernorm(hp, m, h, mp + off, mp + off + h, ld, cfg.tokens, ln.data_ptr<float>());
      at::Tensor f = buffer(m, block(i, j).size(0));
      linear(cfg.ctx, ln.data_ptr<float>(), m, block(i, j), {Epi::kBiasGelu, ptr(block(i, j + 1))}, f.data_ptr<float>(),
             nullptr);
      linear(cfg.ctx, f.data_ptr<float>(), m, block(i, j + 2), gated(block(i, j + 3), mp + off + 2 * h, ld), hp,
             scratch.data_ptr<float>());
    }
    at::Tensor fmod = buffer(rows_batch, 2 * h);
    linear(cfg.ctx, sc.data_ptr<float>(), rows_batch, w[10], {Epi::kBias, ptr(w[11])}, fmod.data_ptr<float>(), nullptr);
    modulate_layernorm(hp, m, h, fmod.data_ptr<float>(), fmod.data_ptr<float>() + h, 2 * h, cfg.tokens,
                       ln.data_ptr<float>());
    at::Tensor v = buffer(m, w[12].size(0));
    linear(cfg.ctx, ln.data_ptr<float>(), m, w[12], {Epi::kBias, ptr(w[13])}, v.data_ptr<float>(), nullptr);
    return v;
  }

  Epilogue gated(const at::Tensor& bias, const float* gate, int64_t ld) const {
    Epilogue e{Epi::kGatedResidual, ptr(bias)};
    e.gate = gate;
    e.gate_ld = ld;
    e.tokens = cfg.tokens;
    return e;
  }

  // x += d * v, v guided as v_null + s (v_cond - v_null) when s is given; v rows in token order
  void euler(float* x, const float* v, float d, std::optional<float> s) const {
    const int64_t p = cfg.patch, c = cfg.in_channels, g = cfg.grid, side = g * p;
    const int64_t width = v_width(), half = batch * cfg.tokens * width;
    at::parallel_for(0, batch * cfg.tokens, 64, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = i / cfg.tokens, tok = i % cfg.tokens, gy = tok / g, gx = tok % g;
        for (int64_t j = 0; j < width; ++j) {
          float vel = v[i * width + j];
          if (s) {
            const float vn = v[half + i * width + j];
            vel = vn + *s * (vel - vn);
          }
          // token columns are (py, px, c), as the model's unpatchify reads them
          const int64_t idx =
              cfg.dit ? ((b * c + j % c) * side + gy * p + (j / c) / p) * side + gx * p + (j / c) % p : b * width + j;
          x[idx] = x[idx] + d * vel;
        }
      }
    });
  }

  int64_t v_width() const { return w[12].size(0); }
};

at::Tensor engine_sample(std::vector<at::Tensor> weights, std::vector<int64_t> config, const at::Tensor& x,
                         const std::optional<at::Tensor>& y, std::optional<double> cfg_scale,
                         std::vector<double> steps) {
  TORCH_CHECK(config.size() == 11, "engine_sample: config must hold 11 ints, got ", config.size());
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.device().is_cpu(), "engine_sample: x must be an fp32 CPU tensor");
  for (const auto& t : weights)
    TORCH_CHECK(t.numel() == 0 || (t.scalar_type() == at::kFloat && t.is_contiguous() && t.device().is_cpu()),
                "engine_sample: every weight must be a contiguous fp32 CPU tensor");
  const Isa isa = static_cast<Isa>(config[9]);
  TORCH_CHECK(isa_supported(isa), "engine_sample: this CPU or build cannot run ISA ", config[9]);
  Config cfg{config[0] == 0, config[1], config[2], config[3], config[4],
             config[5],      config[6], config[7], config[8], Context{kernels_for(isa), config[10]}};
  const bool continuous = cfg.doublings < 0;
  double total = 0.0;
  for (const double d : steps) {
    if (continuous) {
      TORCH_CHECK(d > 0.0 && d <= 1.0, "engine_sample: every step must lie in (0, 1], got ", d);
    } else {
      const double level = cfg.doublings + std::log2(d);
      TORCH_CHECK(d > 0.0 && level >= 0.0 && level <= cfg.doublings && level == std::round(level),
                  "engine_sample: every step must be a step size 2^-k of the model (k from 0 to ", cfg.doublings,
                  "), got ", d);
    }
    total += d;
  }
  // sums of powers of two down to 2^-20 are exact in double, so a table model's test of the sum is exact; real
  // steps get the rounding of their sum (steps.SUM_TOLERANCE)
  TORCH_CHECK(!steps.empty() && std::abs(total - 1.0) <= (continuous ? 1e-9 : 0.0),
              "engine_sample: the steps must sum to 1, got ", total);
  const int64_t per_block = cfg.dit ? 10 : 6;
  const int64_t expected = kCommon + cfg.depth * per_block + (continuous ? 4 : 0);  // continuous: d's embedder
  TORCH_CHECK(static_cast<int64_t>(weights.size()) == expected, "engine_sample: expected ", expected, " weights, got ",
              weights.size());
  // intrinsic guidance: w = cfg_scale (1 without one) is an input of the network, one forward per step
  const bool intrinsic = weights[kGuidance].numel() > 0;
  const bool guided = cfg_scale.has_value() && !intrinsic;
  const int64_t batch = x.size(0), rows_batch = guided ? 2 * batch : batch;
  at::Tensor out = x.contiguous().clone();
  const float* noise = out.const_data_ptr<float>();
  TORCH_CHECK(std::all_of(noise, noise + out.numel(), [](float v) { return std::isfinite(v); }),
              "engine_sample: the noise holds NaN or inf values");
  std::vector<int64_t> labels;
  if (weights[6].numel()) {
    const int64_t null_class = weights[6].size(0) - 1;
    TORCH_CHECK(y.has_value() || !guided, "engine_sample: guidance needs labels");
    at::Tensor yl = y.has_value() ? y->to(at::kLong).contiguous() : at::full({batch}, null_class, at::kLong);
    labels.assign(yl.const_data_ptr<int64_t>(), yl.const_data_ptr<int64_t>() + batch);
    // a label indexes the table: the callers check the range in Python first, a Sampler here alone
    for (const int64_t label : labels)
      TORCH_CHECK(label >= 0 && label <= null_class, "engine_sample: labels must lie in [0, ", null_class, "], got ",
                  label);
    if (guided) labels.resize(rows_batch, null_class);
  }
  GilRelease release;
  Sampler sampler{cfg, weights, batch, rows_batch, rows_batch * cfg.tokens, per_block};
  const std::optional<float> s = guided ? std::optional<float>(static_cast<float>(*cfg_scale)) : std::nullopt;
  // the same w every step: its embedding once per call
  const std::vector<float> w_emb =
      intrinsic ? sampler.embed(weights[kGuidance], kGuidance + 1, static_cast<float>(cfg_scale.value_or(1.0)))
                : std::vector<float>();
  float* xp = out.data_ptr<float>();
  double t = 0.0;  // as the eager loop: t accumulates the step sizes in double and enters the model in fp32
  for (const double d : steps) {
    at::Tensor sc = sampler.condition(static_cast<float>(t), d, w_emb, labels.data());
    at::Tensor v = sampler.velocity(xp, sc);
    sampler.euler(xp, v.const_data_ptr<float>(), static_cast<float>(d), s);
    t += d;
  }
  return out;
}

}  // namespace

// Its own namespace: the engine is no fused op of the op contract (shortcut_fast::), only the CPU sampler's.
TORCH_LIBRARY(shortcut_fast_engine, m) {
  m.def("sample(Tensor[] weights, int[] config, Tensor x, Tensor? y, float? cfg_scale, float[] steps) -> Tensor");
  m.def("isa_supported(int isa) -> bool", [](int64_t isa) { return isa_supported(static_cast<Isa>(isa)); });
  m.def("resolve_isa(int isa) -> int",
        [](int64_t isa) { return static_cast<int64_t>(resolve_isa(static_cast<Isa>(isa))); });
  m.impl("sample", c10::DispatchKey::CPU, TORCH_FN(engine_sample));
}

}  // namespace shortcut_fast::engine
