// Autograd of the differentiable shortcut_fast ops, registered under the
// Autograd dispatch key so that every device's kernels share it:
// attention_fwd and modulate_layernorm_fwd call their backward kernels;
// gated_residual and condition_sum need only products, sums over tokens and
// row scatters, written here with ATen ops. The other ops (timestep
// features, sampler and bootstrap arithmetic) run without gradients.
//
// Each Function's forward steps below the autograd key (its guard), so that
// its op call reaches the CPU or CUDA kernel instead of this file again.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace shortcut_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor = at::Tensor;

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// fp32 for the half types and fp32, fp64 for fp64: a float64 run must not round its sums to fp32.
at::ScalarType accumulate_type(const Tensor& t) { return at::promote_types(t.scalar_type(), at::kFloat); }

class Attention : public torch::autograd::Function<Attention> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& q, const Tensor& k, const Tensor& v) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&)>(
        "shortcut_fast::attention_fwd");
    auto [out, lse] = op.call(q, k, v);
    ctx->save_for_backward({q, k, v, out, lse});
    ctx->mark_non_differentiable({lse});
    return {out, lse};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                   const Tensor&, const Tensor&)>("shortcut_fast::attention_bwd");
    const variable_list saved = ctx->get_saved_variables();
    auto [dq, dk, dv] = op.call(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3], saved[4]);
    return {dq, dk, dv};
  }
};

class ModulateLayerNorm : public torch::autograd::Function<ModulateLayerNorm> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& shift, const Tensor& scale,
                               double eps) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        find_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, double)>(
            "shortcut_fast::modulate_layernorm_fwd");
    auto [y, mean, rstd] = op.call(x, shift, scale, eps);
    ctx->save_for_backward({x, scale, mean, rstd});
    ctx->mark_non_differentiable({mean, rstd});
    return {y, mean, rstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op =
        find_op<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                   const Tensor&)>("shortcut_fast::modulate_layernorm_bwd");
    const variable_list saved = ctx->get_saved_variables();
    auto [dx, dshift, dscale] = op.call(grads[0].contiguous(), saved[0], saved[1], saved[2], saved[3]);
    return {dx, dshift, dscale, Tensor()};
  }
};

class GatedResidual : public torch::autograd::Function<GatedResidual> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& gate, const Tensor& y) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op =
        find_op<Tensor(const Tensor&, const Tensor&, const Tensor&)>("shortcut_fast::gated_residual");
    ctx->save_for_backward({gate, y});
    return op.call(x, gate, y);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor &gate = saved[0], &y = saved[1], &grad = grads[0];
    // The sum over tokens in fp32 or wider, as the kernels sum.
    const auto acc = accumulate_type(grad);
    const Tensor grad_gate = (grad.to(acc) * y.to(acc)).sum(1).to(gate.scalar_type());
    // y may have its own dtype (gated_residual reads it mixed): its gradient comes back in it
    return {grad, grad_gate, (grad * gate.unsqueeze(1)).to(y.scalar_type())};
  }
};

class ConditionSum : public torch::autograd::Function<ConditionSum> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& c, const Tensor& level, const Tensor& d_table,
                        const std::optional<Tensor>& y, const std::optional<Tensor>& y_table) {
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    static const auto op = find_op<Tensor(const Tensor&, const Tensor&, const Tensor&, const std::optional<Tensor>&,
                                          const std::optional<Tensor>&)>("shortcut_fast::condition_sum");
    ctx->save_for_backward({level, y.value_or(Tensor())});
    ctx->saved_data["d_rows"] = d_table.size(0);
    ctx->saved_data["y_rows"] = y_table ? y_table->size(0) : int64_t{0};
    return op.call(c, level, d_table, y, y_table);
  }

  // Each table row receives the sum (in fp32 or wider) of the gradients of
  // the samples that read it; the tables have the dtype of c and so of grad.
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const Tensor& grad = grads[0];
    auto rows_grad = [&](const Tensor& index, const char* rows) {
      const auto acc = accumulate_type(grad);
      const Tensor sums = at::zeros({ctx->saved_data[rows].toInt(), grad.size(1)}, grad.options().dtype(acc));
      return sums.index_add_(0, index, grad.to(acc)).to(grad.scalar_type());
    };
    const Tensor grad_y_table = saved[1].defined() ? rows_grad(saved[1], "y_rows") : Tensor();
    return {grad, Tensor(), rows_grad(saved[0], "d_rows"), Tensor(), grad_y_table};
  }
};

std::tuple<Tensor, Tensor> attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v) {
  const variable_list outs = Attention::apply(q, k, v);
  return {outs[0], outs[1]};
}

std::tuple<Tensor, Tensor, Tensor> modulate_layernorm_fwd(const Tensor& x, const Tensor& shift, const Tensor& scale,
                                                          double eps) {
  const variable_list outs = ModulateLayerNorm::apply(x, shift, scale, eps);
  return {outs[0], outs[1], outs[2]};
}

Tensor gated_residual(const Tensor& x, const Tensor& gate, const Tensor& y) { return GatedResidual::apply(x, gate, y); }

Tensor condition_sum(const Tensor& c, const Tensor& level, const Tensor& d_table, const std::optional<Tensor>& y,
                     const std::optional<Tensor>& y_table) {
  return ConditionSum::apply(c, level, d_table, y, y_table);
}

}  // namespace

TORCH_LIBRARY_IMPL(shortcut_fast, Autograd, m) {
  m.impl("attention_fwd", &attention_fwd);
  m.impl("modulate_layernorm_fwd", &modulate_layernorm_fwd);
  m.impl("gated_residual", &gated_residual);
  m.impl("condition_sum", &condition_sum);
}

}  // namespace shortcut_fast
