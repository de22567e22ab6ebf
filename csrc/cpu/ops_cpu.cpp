// CPU implementations of the shortcut_fast ops: check the inputs, allocate
// the outputs and run the torch-free kernels of kernels.h for each storage
// dtype (fp32, fp64, fp16, bf16; sums in fp32, fp64 for fp64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "kernels.h"

namespace shortcut_fast {
namespace {

#define SHORTCUT_FAST_DISPATCH(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

// The attention kernels take fp32 or fp64 (attention.h): 16-bit storage
// goes through fp32 copies, converted back at the end.
bool is_16_bit(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const AttentionSizes s = check_attention_fwd(q, k, v);
  if (is_16_bit(q)) {
    auto [out, lse] = attention_fwd(q.to(at::kFloat), k.to(at::kFloat), v.to(at::kFloat));
    return {out.to(q.scalar_type()), lse};
  }
  at::Tensor out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_fwd", [&] {
    cpu::attention_fwd(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                       lse.data_ptr<float>(), s.heads, s.tokens, s.head_dim);
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& grad_out, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& out, const at::Tensor& lse) {
  const AttentionSizes s = check_attention_bwd(grad_out, q, k, v, out, lse);
  if (is_16_bit(q)) {
    const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
    auto [dq, dk, dv] = attention_bwd(f32(grad_out), f32(q), f32(k), f32(v), f32(out), lse);
    return {dq.to(q.scalar_type()), dk.to(q.scalar_type()), dv.to(q.scalar_type())};
  }
  at::Tensor dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_bwd", [&] {
    cpu::attention_bwd(grad_out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                       v.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<float>(), dq.data_ptr<scalar_t>(),
                       dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), s.heads, s.tokens, s.head_dim);
  });
  return {dq, dk, dv};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_jvp(const at::Tensor& q, const at::Tensor& k,
                                                                         const at::Tensor& v, const at::Tensor& dq,
                                                                         const at::Tensor& dk, const at::Tensor& dv) {
  const AttentionSizes s = check_attention_jvp(q, k, v, dq, dk, dv);
  if (is_16_bit(q)) {
    const auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat); };
    auto [out, lse, d_out, d_lse] = attention_jvp(f32(q), f32(k), f32(v), f32(dq), f32(dk), f32(dv));
    return {out.to(q.scalar_type()), lse, d_out.to(q.scalar_type()), d_lse};
  }
  at::Tensor out = at::empty_like(q), d_out = at::empty_like(q);
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  at::Tensor d_lse = at::empty_like(lse);
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_jvp", [&] {
    cpu::attention_jvp(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), dq.data_ptr<scalar_t>(),
                       dk.data_ptr<scalar_t>(), dv.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                       lse.data_ptr<float>(), d_out.data_ptr<scalar_t>(), d_lse.data_ptr<float>(), s.heads, s.tokens,
                       s.head_dim);
  });
  return {out, lse, d_out, d_lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulate_layernorm_fwd(const at::Tensor& x, const at::Tensor& shift,
                                                                      const at::Tensor& scale, double eps) {
  const RowSizes s = check_modulate_layernorm_fwd(x, shift, scale);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({s.batch, s.tokens}, x.options().dtype(at::kFloat));
  at::Tensor rstd = at::empty_like(mean);
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "modulate_layernorm_fwd", [&] {
    cpu::modulate_layernorm_fwd(x.data_ptr<scalar_t>(), shift.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(), eps,
                                y.data_ptr<scalar_t>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), s.batch,
                                s.tokens, s.channels);
  });
  return {y, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> modulate_layernorm_bwd(const at::Tensor& grad_y, const at::Tensor& x,
                                                                      const at::Tensor& scale, const at::Tensor& mean,
                                                                      const at::Tensor& rstd) {
  const RowSizes s = check_modulate_layernorm_bwd(grad_y, x, scale, mean, rstd);
  at::Tensor dx = at::empty_like(x), dshift = at::empty_like(scale), dscale = at::empty_like(scale);
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "modulate_layernorm_bwd", [&] {
    cpu::modulate_layernorm_bwd(grad_y.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), scale.data_ptr<scalar_t>(),
                                mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr<scalar_t>(),
                                dshift.data_ptr<scalar_t>(), dscale.data_ptr<scalar_t>(), s.batch, s.tokens,
                                s.channels);
  });
  return {dx, dshift, dscale};
}

at::Tensor gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  const RowSizes s = check_gated_residual(x, gate, y);
  at::Tensor out = at::empty_like(x);
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "gated_residual", [&] {
    using x_t = scalar_t;
    SHORTCUT_FAST_DISPATCH(y.scalar_type(), "gated_residual", [&] {
      cpu::gated_residual(x.data_ptr<x_t>(), gate.data_ptr<x_t>(), y.data_ptr<scalar_t>(), out.data_ptr<x_t>(), s.batch,
                          s.tokens, s.channels);
    });
  });
  return out;
}

at::Tensor timestep_features(const at::Tensor& t, int64_t dim, double max_period) {
  check_timestep_features(t, dim);
  at::Tensor out = at::empty({t.size(0), dim}, t.options().dtype(at::kFloat));
  SHORTCUT_FAST_DISPATCH(t.scalar_type(), "timestep_features", [&] {
    cpu::timestep_features(t.data_ptr<scalar_t>(), out.data_ptr<float>(), t.size(0), dim, max_period);
  });
  return out;
}

// Host-side range check of table rows: cheap on the CPU, where no device
// sync is at stake.
void check_rows(const at::Tensor& index, const char* index_name, const at::Tensor& table) {
  const int64_t* rows = index.data_ptr<int64_t>();
  for (int64_t b = 0; b < index.numel(); ++b) {
    TORCH_CHECK(rows[b] >= 0 && rows[b] < table.size(0), "shortcut_fast::condition_sum: ", index_name, "[", b,
                "] = ", rows[b], " is out of range for a table of ", table.size(0), " rows");
  }
}

at::Tensor condition_sum(const at::Tensor& c, const at::Tensor& level, const at::Tensor& d_table,
                         const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& y_table) {
  check_condition_sum(c, level, d_table, y, y_table);
  check_rows(level, "level", d_table);
  if (y) check_rows(*y, "y", *y_table);
  at::Tensor out = at::empty_like(c);
  SHORTCUT_FAST_DISPATCH(c.scalar_type(), "condition_sum", [&] {
    cpu::condition_sum(c.data_ptr<scalar_t>(), level.data_ptr<int64_t>(), d_table.data_ptr<scalar_t>(),
                       y ? y->data_ptr<int64_t>() : nullptr, y_table ? y_table->data_ptr<scalar_t>() : nullptr,
                       out.data_ptr<scalar_t>(), c.size(0), c.size(1));
  });
  return out;
}

at::Tensor euler_step(const at::Tensor& x, const at::Tensor& v, const at::Tensor& d) {
  const int64_t inner = check_per_sample_step("euler_step", "v", x, v, d);
  at::Tensor out = at::empty_like(x);
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "euler_step", [&] {
    cpu::euler_step(x.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), d.data_ptr<float>(), out.data_ptr<scalar_t>(),
                    x.size(0), inner);
  });
  return out;
}

at::Tensor bootstrap_midpoint(const at::Tensor& x, const at::Tensor& v1, const at::Tensor& d,
                              std::optional<double> clip) {
  const int64_t inner = check_per_sample_step("bootstrap_midpoint", "v1", x, v1, d);
  check_clip("bootstrap_midpoint", clip);
  at::Tensor out = at::empty_like(x);
  SHORTCUT_FAST_DISPATCH(x.scalar_type(), "bootstrap_midpoint", [&] {
    cpu::bootstrap_midpoint(x.data_ptr<scalar_t>(), v1.data_ptr<scalar_t>(), d.data_ptr<float>(), clip,
                            out.data_ptr<scalar_t>(), x.size(0), inner);
  });
  return out;
}

at::Tensor bootstrap_target(const at::Tensor& v1, const at::Tensor& v2, std::optional<double> clip) {
  check_bootstrap_target(v1, v2);
  check_clip("bootstrap_target", clip);
  at::Tensor out = at::empty_like(v1);
  SHORTCUT_FAST_DISPATCH(v1.scalar_type(), "bootstrap_target", [&] {
    cpu::bootstrap_target(v1.data_ptr<scalar_t>(), v2.data_ptr<scalar_t>(), clip, out.data_ptr<scalar_t>(), v1.numel());
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(shortcut_fast, CPU, m) {
  m.impl("attention_fwd", &attention_fwd);
  m.impl("attention_bwd", &attention_bwd);
  m.impl("attention_jvp", &attention_jvp);
  m.impl("modulate_layernorm_fwd", &modulate_layernorm_fwd);
  m.impl("modulate_layernorm_bwd", &modulate_layernorm_bwd);
  m.impl("gated_residual", &gated_residual);
  m.impl("timestep_features", &timestep_features);
  m.impl("condition_sum", &condition_sum);
  m.impl("euler_step", &euler_step);
  m.impl("bootstrap_midpoint", &bootstrap_midpoint);
  m.impl("bootstrap_target", &bootstrap_target);
}

}  // namespace shortcut_fast
