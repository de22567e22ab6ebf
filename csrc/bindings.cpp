// The shortcut_fast op library: the schemas of docs/kernels.md, and the
// Python module shortcut_fast._C whose import loads the kernels.
//
// The CPU kernels register in cpu/ops_cpu.cpp, the CUDA kernels (when built)
// in cuda/ops_cuda.cu, the autograd formulas in autograd.cpp; the fake
// (shape-only) implementations live in Python (shortcut_fast/ops/formulas.py).
#include <pybind11/pybind11.h>
#include <torch/library.h>

TORCH_LIBRARY(shortcut_fast, m) {
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v) -> (Tensor out, Tensor lse)");
  m.def(
      "attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse)"
      " -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def(
      "attention_jvp(Tensor q, Tensor k, Tensor v, Tensor dq, Tensor dk, Tensor dv)"
      " -> (Tensor out, Tensor lse, Tensor d_out, Tensor d_lse)");
  m.def(
      "modulate_layernorm_fwd(Tensor x, Tensor shift, Tensor scale, float eps)"
      " -> (Tensor y, Tensor mean, Tensor rstd)");
  m.def(
      "modulate_layernorm_bwd(Tensor grad_y, Tensor x, Tensor scale, Tensor mean, Tensor rstd)"
      " -> (Tensor dx, Tensor dshift, Tensor dscale)");
  m.def("gated_residual(Tensor x, Tensor gate, Tensor y) -> Tensor");
  m.def("timestep_features(Tensor t, int dim, float max_period) -> Tensor");
  m.def("condition_sum(Tensor c, Tensor level, Tensor d_table, Tensor? y, Tensor? y_table) -> Tensor");
  m.def("euler_step(Tensor x, Tensor v, Tensor d) -> Tensor");
  m.def("bootstrap_midpoint(Tensor x, Tensor v1, Tensor d, float? clip) -> Tensor");
  m.def("bootstrap_target(Tensor v1, Tensor v2, float? clip) -> Tensor");
}

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "Native kernels of shortcut_fast. Importing this module registers the ops "
      "torch.ops.shortcut_fast.* (CPU always, CUDA when built with it); see docs/kernels.md.";
  m.def(
      "cuda_built",
      [] {
#ifdef SHORTCUT_FAST_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether this build holds the CUDA kernels (it may still run on a machine without a GPU).");
}
