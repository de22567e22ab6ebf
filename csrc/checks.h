// Input checks of the shortcut_fast ops, shared by the CPU and CUDA
// wrappers so that both devices reject bad input with the same message.
// Each check_<op> returns the sizes the kernels loop over.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>

namespace shortcut_fast {

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "shortcut_fast::", op, ": ", name, " must have ", dim, " dims, got shape ", t.sizes());
}

inline void check_sizes(const char* op, const char* name, const at::Tensor& t, at::IntArrayRef sizes) {
  TORCH_CHECK(t.sizes() == sizes, "shortcut_fast::", op, ": ", name, " must have shape ", sizes, ", got ", t.sizes());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "shortcut_fast::", op, ": ", name, " must be ", dtype, ", got ",
              t.scalar_type());
}

// On the device of `like` and contiguous: the kernels index raw pointers.
inline void check_layout(const char* op, const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK(t.device() == like.device(), "shortcut_fast::", op, ": ", name, " is on ", t.device(), ", expected ",
              like.device());
  TORCH_CHECK(t.is_contiguous(), "shortcut_fast::", op, ": ", name, " must be contiguous");
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "shortcut_fast::", op, ": ", name,
              " must be a floating point tensor, got ", t.scalar_type());
}

// A tensor with the shape, dtype, device and layout of `like`.
inline void check_like(const char* op, const char* name, const at::Tensor& t, const char* like_name,
                       const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == like.sizes(), "shortcut_fast::", op, ": ", name, " must have the shape of ", like_name, " ",
              like.sizes(), ", got ", t.sizes());
  check_dtype(op, name, t, like.scalar_type());
  check_layout(op, name, t, like);
}

struct AttentionSizes {
  int64_t heads;  // B * H
  int64_t tokens;
  int64_t head_dim;
};

inline AttentionSizes check_attention_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  const char* op = "attention_fwd";
  check_dim(op, "q", q, 4);
  check_floating(op, "q", q);
  check_layout(op, "q", q, q);
  check_like(op, "k", k, "q", q);
  check_like(op, "v", v, "q", q);
  TORCH_CHECK(q.size(2) > 0 && q.size(3) > 0, "shortcut_fast::", op, ": q must have tokens and head dims, got shape ",
              q.sizes());
  return {q.size(0) * q.size(1), q.size(2), q.size(3)};
}

inline AttentionSizes check_attention_bwd(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                          const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse) {
  const char* op = "attention_bwd";
  const AttentionSizes sizes = check_attention_fwd(q, k, v);
  check_like(op, "grad_out", grad_out, "q", q);
  check_like(op, "out", out, "q", q);
  check_sizes(op, "lse", lse, {q.size(0), q.size(1), q.size(2)});
  check_dtype(op, "lse", lse, at::kFloat);
  check_layout(op, "lse", lse, q);
  return sizes;
}

// The fused JVP of attention: six (B, H, N, Dh) tensors of one shape, dtype
// (fp32, fp64, fp16 or bf16: what the CPU kernels sum) and device, contiguous.
// Unlike the ops above it raises ValueError (shapes, devices, layouts) and
// TypeError (dtypes), as its Triton twin does.
inline AttentionSizes check_attention_jvp(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& dq, const at::Tensor& dk, const at::Tensor& dv) {
  const char* op = "shortcut_fast::attention_jvp: ";
  TORCH_CHECK_VALUE(q.dim() == 4, op, "q must be (B, H, N, Dh), got shape ", q.sizes());
  const auto dtype = q.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   "q must be float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(q.size(2) > 0 && q.size(3) > 0, op, "q must have tokens and head dims, got shape ", q.sizes());
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"k", &k}, {"v", &v}, {"dq", &dq}, {"dk", &dk}, {"dv", &dv}};
  for (const auto& [name, t] : others) {
    TORCH_CHECK_VALUE(t->sizes() == q.sizes(), op, name, " must have the shape of q ", q.sizes(), ", got ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == dtype, op, name, " must have the dtype of q (", dtype, "), got ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == q.device(), op, name, " is on ", t->device(), ", q on ", q.device());
  }
  TORCH_CHECK_VALUE(q.is_contiguous(), op, "q must be contiguous");
  for (const auto& [name, t] : others) TORCH_CHECK_VALUE(t->is_contiguous(), op, name, " must be contiguous");
  return {q.size(0) * q.size(1), q.size(2), q.size(3)};
}

struct RowSizes {
  int64_t batch;
  int64_t tokens;
  int64_t channels;
};

// x: (B, N, C) with per-sample (B, C) parameters named in `params`.
inline RowSizes check_tokens_and_params(const char* op, const at::Tensor& x,
                                        std::initializer_list<std::pair<const char*, const at::Tensor*>> params) {
  check_dim(op, "x", x, 3);
  check_floating(op, "x", x);
  check_layout(op, "x", x, x);
  for (const auto& [name, param] : params) {
    check_sizes(op, name, *param, {x.size(0), x.size(2)});
    check_dtype(op, name, *param, x.scalar_type());
    check_layout(op, name, *param, x);
  }
  return {x.size(0), x.size(1), x.size(2)};
}

inline RowSizes check_modulate_layernorm_fwd(const at::Tensor& x, const at::Tensor& shift, const at::Tensor& scale) {
  return check_tokens_and_params("modulate_layernorm_fwd", x, {{"shift", &shift}, {"scale", &scale}});
}

inline RowSizes check_modulate_layernorm_bwd(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& scale,
                                             const at::Tensor& mean, const at::Tensor& rstd) {
  const char* op = "modulate_layernorm_bwd";
  const RowSizes sizes = check_tokens_and_params(op, x, {{"scale", &scale}});
  check_like(op, "grad_y", grad_y, "x", x);
  for (const auto& [name, stat] : {std::pair{"mean", &mean}, std::pair{"rstd", &rstd}}) {
    check_sizes(op, name, *stat, {sizes.batch, sizes.tokens});
    check_dtype(op, name, *stat, at::kFloat);
    check_layout(op, name, *stat, x);
  }
  return sizes;
}

// y may have another floating dtype than x (autocast: a bf16 branch added to
// an fp32 residual stream); the kernels read it as it is rather than copy it.
inline RowSizes check_gated_residual(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& y) {
  const char* op = "gated_residual";
  const RowSizes sizes = check_tokens_and_params(op, x, {{"gate", &gate}});
  TORCH_CHECK(y.sizes() == x.sizes(), "shortcut_fast::", op, ": y must have the shape of x ", x.sizes(), ", got ",
              y.sizes());
  check_floating(op, "y", y);
  check_layout(op, "y", y, x);
  return sizes;
}

inline void check_timestep_features(const at::Tensor& t, int64_t dim) {
  const char* op = "timestep_features";
  check_dim(op, "t", t, 1);
  check_floating(op, "t", t);
  check_layout(op, "t", t, t);
  TORCH_CHECK(dim > 0, "shortcut_fast::", op, ": dim must be positive, got ", dim);
}

// c: (B, C); level and y: (B,) int64 rows of their tables (rows, C). Index
// ranges are checked by the device code (a host check would sync a GPU).
inline void check_condition_sum(const at::Tensor& c, const at::Tensor& level, const at::Tensor& d_table,
                                const std::optional<at::Tensor>& y, const std::optional<at::Tensor>& y_table) {
  const char* op = "condition_sum";
  check_dim(op, "c", c, 2);
  check_floating(op, "c", c);
  check_layout(op, "c", c, c);
  TORCH_CHECK(y.has_value() == y_table.has_value(), "shortcut_fast::", op,
              ": y and y_table must be given together (labels need their table)");
  auto check_lookup = [&](const char* index_name, const at::Tensor& index, const char* table_name,
                          const at::Tensor& table) {
    check_sizes(op, index_name, index, {c.size(0)});
    check_dtype(op, index_name, index, at::kLong);
    check_layout(op, index_name, index, c);
    check_dim(op, table_name, table, 2);
    TORCH_CHECK(table.size(1) == c.size(1), "shortcut_fast::", op, ": ", table_name, " must have ", c.size(1),
                " columns like c, got shape ", table.sizes());
    check_dtype(op, table_name, table, c.scalar_type());
    check_layout(op, table_name, table, c);
  };
  check_lookup("level", level, "d_table", d_table);
  if (y) check_lookup("y", *y, "y_table", *y_table);
}

// x, v: (B, ...); d: (B,) fp32. Returns the elements per sample.
inline int64_t check_per_sample_step(const char* op, const char* v_name, const at::Tensor& x, const at::Tensor& v,
                                     const at::Tensor& d) {
  TORCH_CHECK(x.dim() >= 1, "shortcut_fast::", op, ": x must have a batch dim, got a scalar");
  check_floating(op, "x", x);
  check_layout(op, "x", x, x);
  check_like(op, v_name, v, "x", x);
  check_sizes(op, "d", d, {x.size(0)});
  check_dtype(op, "d", d, at::kFloat);
  check_layout(op, "d", d, x);
  return x.size(0) == 0 ? 0 : x.numel() / x.size(0);
}

// clip bounds outputs to [-clip, clip]; a negative bound is a caller's mistake.
inline void check_clip(const char* op, std::optional<double> clip) {
  TORCH_CHECK(!clip || *clip >= 0, "shortcut_fast::", op, ": clip must be non-negative, got ", clip.value_or(0));
}

inline void check_bootstrap_target(const at::Tensor& v1, const at::Tensor& v2) {
  const char* op = "bootstrap_target";
  check_floating(op, "v1", v1);
  check_layout(op, "v1", v1, v1);
  check_like(op, "v2", v2, "v1", v1);
}

}  // namespace shortcut_fast
