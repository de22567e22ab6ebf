"""The op contract: every raw fused op declared once.

Each ``RawOp`` names an op, gives its schema (the same in the native
``shortcut_fast`` and the Triton ``shortcut_fast_triton`` namespaces), the public
function of ``dispatch.py`` it serves, whether autograd flows through it, and,
per backend, the storage dtypes of its main input (none: the backend has no
kernel for it), the attention head sizes it runs and whether it has a
forward-mode (JVP) rule. ``triton.py`` registers
its ops from these schemas, ``formulas.py`` registers a fake for each,
``dispatch.py`` falls back to the reference outside what is declared here
(``jvp.py`` holds the JVP rules), and ``docs/kernels.md`` holds the tables
``markdown`` prints (``python -m shortcut_fast.ops --markdown``). The C++ library
states the schemas again in ``csrc/bindings.cpp`` (a ``TORCH_LIBRARY`` must);
``tests/test_contract.py`` checks that both namespaces register exactly these.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

# Where a raw op runs: the C++ kernels on either device, the Triton kernels on a GPU or in the interpreter.
BACKENDS = ("native-cpu", "native-cuda", "triton", "triton-interpret")

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
# The CPU kernels sum in fp32 for 16-bit storage and in fp64 for fp64 storage.
_CPU_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# The interpreter runs kernels through numpy, which has no bf16 and whose fp16 tl.dot differs.
_INTERPRET_FLOATS = (torch.float32,)

# The CUDA attention kernel is instantiated for these head sizes (dispatch_head_dim in
# csrc/cuda/attention.cuh). The Triton kernel would take 16 too (the smallest tl.dot operand), but
# only these three are in the sm_80/sm_90 compile matrix (benchmarks/compile_matrix.py), so the GPU
# backends agree and nothing runs on a GPU that was not compiled for it here.
_CUDA_HEAD_DIMS = (32, 64, 128)
_TRITON_HEAD_DIMS = _CUDA_HEAD_DIMS


# Largest |kernel - reference| a backend may show, relative to the reference's largest magnitude (at least 1),
# for an op's outputs and for its gradients: what the self-check of ``auto`` (``selfcheck.py``) and
# ``shortcut-fast doctor`` hold each kernel to, on small random inputs against the fp32 (fp64) reference.
TOLERANCE = {
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-10, 1e-10),
    torch.bfloat16: (3e-2, 5e-2),
    torch.float16: (5e-3, 1e-2),
}


@dataclass(frozen=True)
class Support:
    """What one backend runs of an op: the dtypes of its main input (none: no kernel there); head sizes (None: any,
    or not a head op); ``jvp``: whether calls under forward-mode AD and the ``torch.func`` transforms (jvp, grad,
    vjp, vmap) run the kernel, through the autograd.Function of ``jvp.py`` that adds the op's JVP rule; where not,
    ``dispatch.py`` runs the reference for them (with one warning per op and backend)."""

    dtypes: tuple[torch.dtype, ...]
    head_dims: tuple[int, ...] | None = None
    jvp: bool = False

    def runs(self, dtype: torch.dtype, head_dim: int | None = None) -> bool:
        """Whether inputs of ``dtype`` (and head size ``head_dim``, for attention) run on this backend."""
        return dtype in self.dtypes and (self.head_dims is None or head_dim in self.head_dims)


# The JVP rules of jvp.py are plain torch over the primals, the same on every backend; the forward stays the kernel.
_ELEMENTWISE = {
    "native-cpu": Support(_CPU_FLOATS, jvp=True),
    "native-cuda": Support(_FLOATS, jvp=True),
    "triton": Support(_FLOATS, jvp=True),
    "triton-interpret": Support(_INTERPRET_FLOATS, jvp=True),
}
_ATTENTION = {
    "native-cpu": Support(_CPU_FLOATS, jvp=True),
    "native-cuda": Support(_FLOATS, _CUDA_HEAD_DIMS, jvp=True),
    "triton": Support(_FLOATS, _TRITON_HEAD_DIMS, jvp=True),
    "triton-interpret": Support(_INTERPRET_FLOATS, _TRITON_HEAD_DIMS, jvp=True),
}


# The fused JVP of attention (attention_fwd's jvp rule in jvp.py runs it where the table says so, else the plain rule
# over the (N, N) scores): the native CPU and Triton kernels; the native CUDA backend has none (no dtypes). On a GPU
# the Triton kernel runs 16-bit storage only: in fp32 LLVM's SLP vectorizer aborts compiling it for sm_90
# (benchmarks/compile_matrix.py, Triton 3.9), which would end the process; fp32 takes the plain rule there.
_ATTENTION_JVP = {
    "native-cpu": Support(_CPU_FLOATS),
    "native-cuda": Support(()),
    "triton": Support((torch.float16, torch.bfloat16), _TRITON_HEAD_DIMS),
    "triton-interpret": Support(_INTERPRET_FLOATS, _TRITON_HEAD_DIMS),
}


def _without_jvp(table: dict[str, Support]) -> dict[str, Support]:
    """The backward kernels have no forward-mode rule: a jvp of a gradient runs the reference, and a tangent that
    reaches them anyway raises (``jvp.py``)."""
    return {name: replace(s, jvp=False) for name, s in table.items()}


@dataclass(frozen=True)
class RawOp:
    """One raw op of the contract; ``schema`` is its signature without the name."""

    name: str
    schema: str
    serves: str
    differentiable: bool
    meaning: str
    support: dict[str, Support]

    def qualified_schema(self, namespace: str) -> str:
        """The schema as torch prints ``op.default._schema``: ``namespace::name(args) -> returns``."""
        return f"{namespace}::{self.name}{self.schema}"


OPS: tuple[RawOp, ...] = (
    RawOp(
        "attention_fwd",
        "(Tensor q, Tensor k, Tensor v) -> (Tensor out, Tensor lse)",
        "attention",
        True,
        "q, k, v: (B, H, N, Dh). `out = softmax(q kᵀ / √Dh) v`, dtype of q; `lse`: (B, H, N) fp32, the "
        "log-sum-exp of each row of the scaled scores",
        _ATTENTION,
    ),
    RawOp(
        "attention_bwd",
        "(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse) -> (Tensor dq, Tensor dk, Tensor dv)",
        "attention",
        False,
        "the gradients of `attention_fwd`'s `out`",
        _without_jvp(_ATTENTION),
    ),
    RawOp(
        "attention_jvp",
        "(Tensor q, Tensor k, Tensor v, Tensor dq, Tensor dk, Tensor dv)"
        " -> (Tensor out, Tensor lse, Tensor d_out, Tensor d_lse)",
        "attention",
        False,
        "`attention_fwd`'s out and lse and their tangents for the tangents dq, dk, dv of q, k, v (all six of one "
        "shape and dtype), in one pass with an online softmax (no (N, N) scores); d_out dtype of q, d_lse (B, H, N) "
        "fp32. The JVP rule of `attention_fwd` under forward-mode AD; its gradient is the plain rule's",
        _ATTENTION_JVP,
    ),
    RawOp(
        "modulate_layernorm_fwd",
        "(Tensor x, Tensor shift, Tensor scale, float eps) -> (Tensor y, Tensor mean, Tensor rstd)",
        "modulate_layernorm",
        True,
        "x: (B, N, C); shift, scale: (B, C). `y = (x - mean) * rstd * (1 + scale) + shift` over the last dim "
        "(biased variance); mean, rstd: (B, N) fp32",
        _ELEMENTWISE,
    ),
    RawOp(
        "modulate_layernorm_bwd",
        "(Tensor grad_y, Tensor x, Tensor scale, Tensor mean, Tensor rstd)"
        " -> (Tensor dx, Tensor dshift, Tensor dscale)",
        "modulate_layernorm",
        False,
        "dx like x; dshift = Σ_N grad_y and dscale = Σ_N grad_y · x̂, (B, C) in the dtype of scale",
        _without_jvp(_ELEMENTWISE),
    ),
    RawOp(
        "gated_residual",
        "(Tensor x, Tensor gate, Tensor y) -> Tensor",
        "gated_residual",
        True,
        "`x + gate[:, None, :] * y`; x, y: (B, N, C), gate: (B, C) of x's dtype; y may have another of the "
        "op's dtypes (read as it is, not copied); result dtype of x",
        _ELEMENTWISE,
    ),
    RawOp(
        "timestep_features",
        "(Tensor t, int dim, float max_period) -> Tensor",
        "timestep_features",
        False,
        "(B,) → (B, dim) fp32: `[cos(s f_i), sin(s f_i)]`, `s = 1000 t`, `f_i = exp(-ln(max_period) i / half)`, "
        "`half = dim // 2`, a zero column last when dim is odd",
        _ELEMENTWISE,
    ),
    RawOp(
        "condition_sum",
        "(Tensor c, Tensor level, Tensor d_table, Tensor? y, Tensor? y_table) -> Tensor",
        "condition_sum",
        True,
        "`c + d_table[level] (+ y_table[y])`; c: (B, C); level, y: (B,) int64; tables (rows, C)",
        _ELEMENTWISE,
    ),
    RawOp(
        "euler_step",
        "(Tensor x, Tensor v, Tensor d) -> Tensor",
        "euler_step",
        False,
        "`x + d[b] * v` per sample; x, v: (B, ...); d: (B,) fp32; result dtype of x",
        _ELEMENTWISE,
    ),
    RawOp(
        "bootstrap_midpoint",
        "(Tensor x, Tensor v1, Tensor d, float? clip) -> Tensor",
        "bootstrap_midpoint",
        False,
        "`clip(x + d[b] / 2 * v1)`, clamp to [-clip, clip] when clip is given",
        _ELEMENTWISE,
    ),
    RawOp(
        "bootstrap_target",
        "(Tensor v1, Tensor v2, float? clip) -> Tensor",
        "bootstrap_target",
        False,
        "`clip((v1 + v2) / 2)`",
        _ELEMENTWISE,
    ),
)

BY_NAME: dict[str, RawOp] = {op.name: op for op in OPS}


def support(op: str, backend: str) -> Support:
    """What ``backend`` (one of ``BACKENDS``) runs of the raw op ``op``."""
    return BY_NAME[op].support[backend]


def _dtype_names(dtypes: tuple[torch.dtype, ...]) -> str:
    short = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return ", ".join(short[d] for d in dtypes)


def markdown() -> str:
    """The two tables of ``docs/kernels.md`` that this module defines: the ops, and what each backend runs
    (dtypes; head sizes; JVP where the backend has the op's forward-mode rule)."""
    lines = ["| op | schema | serves | autograd | meaning |", "| --- | --- | --- | --- | --- |"]
    lines += [
        f"| `{op.name}` | `{op.schema}` | `{op.serves}` | {'yes' if op.differentiable else 'no'} | {op.meaning} |"
        for op in OPS
    ]
    lines += ["", "| op | " + " | ".join(BACKENDS) + " |", "| --- |" + " --- |" * len(BACKENDS)]
    for op in OPS:
        cells = []
        for name in BACKENDS:
            s = op.support[name]
            heads = "" if s.head_dims is None else "; Dh " + ", ".join(map(str, s.head_dims))
            cells.append((_dtype_names(s.dtypes) or "no kernel") + heads + ("; JVP" if s.jvp else ""))
        lines.append(f"| `{op.name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
