"""Forward-mode AD (JVP) and the ``torch.func`` transforms through every fused op and the models, on every backend.

Each op's tangent under ``torch.func.jvp`` on the native CPU kernels and the Triton kernels (under
``TRITON_INTERPRET=1``) against ``torch.func.jvp`` of the plain reference in fp64 (the reference's own JVP
checked against an fp64 central difference), with a tangent on every float input and then with each input held
constant; whole models against an fp64 central difference (the test that catches a silent zero tangent); the
gradients MeanFlow takes under a jvp; nested transforms; and the fallback of a backend that declares no JVP.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import op_close, op_randn, perturb_
from torch.func import grad, jvp, linearize, vjp, vmap

import shortcut_fast as sf
from shortcut_fast import ops
from shortcut_fast.ops import backends, contract, dispatch
from shortcut_fast.ops import jvp as jvp_rules
from shortcut_fast.ops import reference as SF

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- one spec per op: (public op, reference, inputs)
def _spec(name: str, device: str, dtype: torch.dtype = torch.float32):
    """The public op, its reference and its float inputs (each takes a tangent) at odd shapes."""

    def r(*shape, seed, scale=1.0):
        return op_randn(*shape, device=device, seed=seed, scale=scale).to(dtype)

    level = torch.tensor([0, 3, 7], device=device)
    label = torch.tensor([10, 0, 4], device=device)
    d = torch.tensor([0.5, 0.25, 0.125], device=device, dtype=dtype)
    specs = {
        "attention": (ops.attention, SF.attention, [r(2, 3, 17, 32, seed=s) for s in range(3)]),
        "modulate_layernorm": (
            ops.modulate_layernorm,
            SF.modulate_layernorm,
            [r(2, 7, 48, seed=0, scale=2.0) + 0.5, r(2, 48, seed=1), r(2, 48, seed=2)],
        ),
        "modulate_layernorm_rows": (  # (B, C), as ShortcutMLP calls it
            ops.modulate_layernorm,
            SF.modulate_layernorm,
            [r(5, 48, seed=0, scale=2.0), r(5, 48, seed=1), r(5, 48, seed=2)],
        ),
        "gated_residual": (
            ops.gated_residual,
            SF.gated_residual,
            [r(2, 7, 48, seed=0), r(2, 48, seed=1), r(2, 7, 48, seed=2)],
        ),
        "condition_sum": (
            lambda c, dt, yt: ops.condition_sum(c, level, dt, label, yt),
            lambda c, dt, yt: SF.condition_sum(c, level, dt, label, yt),
            [r(3, 48, seed=0), r(8, 48, seed=1), r(11, 48, seed=2)],
        ),
        "timestep_features": (
            lambda t: ops.timestep_features(t, 33),
            lambda t: SF.timestep_features(t, 33),
            [torch.rand(5, generator=torch.Generator().manual_seed(0)).to(device, dtype)],
        ),
        "euler_step": (ops.euler_step, SF.euler_step, [r(3, 2, 5, seed=0), r(3, 2, 5, seed=1), d]),
        "bootstrap_midpoint": (
            lambda x, v, d: ops.bootstrap_midpoint(x, v, d, 1.0),
            lambda x, v, d: SF.bootstrap_midpoint(x, v, d, 1.0),
            [r(3, 2, 5, seed=0), r(3, 2, 5, seed=1, scale=2.0), d],
        ),
        "bootstrap_target": (
            lambda a, b: ops.bootstrap_target(a, b, 1.0),
            lambda a, b: SF.bootstrap_target(a, b, 1.0),
            [r(3, 2, 5, seed=0), r(3, 2, 5, seed=1)],
        ),
        "bootstrap_target_unclipped": (
            lambda a, b: ops.bootstrap_target(a, b, None),
            lambda a, b: SF.bootstrap_target(a, b, None),
            [r(3, 2, 5, seed=0), r(3, 2, 5, seed=1)],
        ),
    }
    return specs[name]


OPS = [
    "attention",
    "modulate_layernorm",
    "modulate_layernorm_rows",
    "gated_residual",
    "condition_sum",
    "timestep_features",
    "euler_step",
    "bootstrap_midpoint",
    "bootstrap_target",
    "bootstrap_target_unclipped",
]
# every float input with a tangent ("all"), then each one held constant in turn (its tangent absent)
ARITY = {name: len(_spec(name, "cpu")[2]) for name in OPS}
CASES = [(name, held) for name in OPS for held in [None, *(range(ARITY[name]) if ARITY[name] > 1 else ())]]


def _tangents(inputs, seed=100):
    return [op_randn(*t.shape, device=str(t.device), seed=seed + i).to(t.dtype) for i, t in enumerate(inputs)]


def _jvp_holding(fn, inputs, tangents, held):
    """``torch.func.jvp`` of ``fn`` in every input but ``held`` (a constant of the function: no tangent)."""
    free = [i for i in range(len(inputs)) if i != held]

    def call(*args):
        full = list(inputs)
        for i, a in zip(free, args, strict=True):
            full[i] = a
        return fn(*full)

    return jvp(call, tuple(inputs[i] for i in free), tuple(tangents[i] for i in free))


def _reference_jvp(ref, inputs, tangents, held):
    """The reference's jvp on fp64 copies (the reference backend: the public ops are the plain functions)."""
    with sf.backend("reference"):
        return _jvp_holding(ref, [t.double() for t in inputs], [t.double() for t in tangents], held)


@pytest.mark.parametrize("name,held", CASES, ids=[f"{n}-{'all' if h is None else f'const{h}'}" for n, h in CASES])
def test_op_jvp_matches_the_reference(op_backend, name, held):
    fast, ref, inputs = _spec(name, op_backend.device)
    tangents = _tangents(inputs)
    out, tangent = _jvp_holding(fast, inputs, tangents, held)
    want_out, want = _reference_jvp(ref, inputs, tangents, held)
    assert tangent.dtype == out.dtype and tangent.shape == out.shape
    op_close(out, want_out, torch.float32, grad=name == "timestep_features")  # sin, cos of 1000 t: ~1e-5
    op_close(tangent, want, torch.float32, grad=True)


@pytest.mark.parametrize("name", [n for n in OPS if n != "timestep_features"])  # its features are fp32 everywhere
def test_native_fp64_jvp_matches_the_fp64_reference(name):
    if not backends.native_available():
        pytest.skip("needs the C++ extension")
    # fp32-representable values: the per-sample step sizes reach the kernels in fp32, by the op's contract
    fast, ref, inputs = _spec(name, "cpu", torch.float64)
    tangents = [t.double() for t in _tangents([t.float() for t in inputs])]
    with sf.backend("native"):
        _, tangent = jvp(fast, tuple(inputs), tuple(tangents))
    _, want = _reference_jvp(ref, inputs, tangents, None)
    assert tangent.dtype == torch.float64
    op_close(tangent, want, torch.float64, grad=True)


def test_op_jvp_under_forward_ad(op_backend):
    """``torch.autograd.forward_ad`` dual tensors reach the same rules as ``torch.func.jvp``."""
    for name in ("attention", "modulate_layernorm", "gated_residual"):
        fast, ref, inputs = _spec(name, op_backend.device)
        tangents = _tangents(inputs)
        with fwAD.dual_level():
            tangent = fwAD.unpack_dual(
                fast(*(fwAD.make_dual(p, t) for p, t in zip(inputs, tangents, strict=True)))
            ).tangent
        op_close(tangent, _reference_jvp(ref, inputs, tangents, None)[1], torch.float32, grad=True)


# ---------------------------------------------------------------- the reference itself
def _central_difference(fn, inputs, tangents, h=1e-6):
    plus = fn(*(p + h * t for p, t in zip(inputs, tangents, strict=True)))
    minus = fn(*(p - h * t for p, t in zip(inputs, tangents, strict=True)))
    return (plus - minus) / (2 * h)


@pytest.mark.parametrize("name", ["attention", "modulate_layernorm"])
def test_the_reference_jvp_is_a_central_difference(name):
    """Under a dual level the reference runs plain-op attention (SDPA's flash kernel has no JVP) and layer norm."""
    _, ref, inputs = _spec(name, "cpu", torch.float64)
    tangents = [t.double() for t in _tangents(inputs)]
    _, tangent = jvp(ref, tuple(inputs), tuple(tangents))
    torch.testing.assert_close(tangent, _central_difference(ref, inputs, tangents), rtol=1e-7, atol=1e-7)


def test_the_reference_keeps_sdpa_outside_forward_mode(monkeypatch):
    q = op_randn(1, 2, 5, 32, device="cpu")
    calls = []
    monkeypatch.setattr(SF.F, "scaled_dot_product_attention", lambda *a: calls.append(1) or SF.math_attention(*a))
    SF.attention(q, q, q)
    grad(lambda q: SF.attention(q, q, q).sum())(q)  # reverse mode only: SDPA serves it
    assert len(calls) == 2
    jvp(lambda q: SF.attention(q, q, q), (q,), (q,))
    assert len(calls) == 2


def test_the_gradient_of_the_reference_layernorm_tangent_is_a_central_difference():
    """``F.layer_norm``'s JVP reads its saved statistics as constants, so the gradient of its tangent is wrong
    (pytorch/pytorch#196700); the reference's plain-op layer norm under a dual level gets it right."""
    _, ref, (x, shift, scale) = _spec("modulate_layernorm", "cpu", torch.float64)
    tangents = tuple(t.double() for t in _tangents([x, shift, scale]))
    direction = op_randn(*x.shape, device="cpu", seed=7).double()

    def loss(x):
        return jvp(ref, (x, shift, scale), tangents)[1].square().sum()

    leaf = x.clone().requires_grad_()
    (got,) = torch.autograd.grad(loss(leaf), leaf)
    want = _central_difference(loss, [x], [direction])
    torch.testing.assert_close((got * direction).sum(), want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- gradients through and around the tangent
@pytest.mark.parametrize("name", ["attention", "modulate_layernorm", "gated_residual"])  # the others' are constant
def test_the_gradient_of_a_tangent_matches_the_reference(op_backend, name):
    """The rules recompute from the primals what they need, so a loss on the tangent back-propagates exactly."""
    fast, ref, inputs = _spec(name, op_backend.device)
    tangents = _tangents(inputs)

    def grads(fn, inputs):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        _, tangent = jvp(fn, tuple(leaves), tuple(t.to(leaves[0].dtype) for t in tangents))
        return torch.autograd.grad(tangent.square().sum(), leaves, allow_unused=True, materialize_grads=True)

    with sf.backend("reference"):
        want = grads(ref, [t.double() for t in inputs])
    for got, expected in zip(grads(fast, inputs), want, strict=True):
        op_close(got, expected, torch.float32, grad=True)


def test_a_kernel_backward_that_meets_tangents_raises(op_backend):
    """Forward-over-reverse through a backward kernel (a backward inside a dual level with dual inputs) has no rule."""
    fast, _, inputs = _spec("attention", op_backend.device)
    leaves = [t.clone().requires_grad_() for t in inputs]
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="no forward-mode"):
        out = fast(fwAD.make_dual(leaves[0], torch.ones_like(leaves[0])), *leaves[1:])
        out.sum().backward()


def test_the_row_statistics_have_their_tangents(op_backend):
    """The raw ops through the Functions: lse, mean and rstd get the tangents of their formulas (dispatch hands them
    out nowhere, but a tangent given is a right one)."""
    raw = jvp_rules.transformed(op_backend.ops.name)
    q, k, v = _spec("attention", op_backend.device)[2]
    qkv_tangents = _tangents([q, k, v])
    _, (_, lse) = jvp(raw.attention_fwd.default, (q, k, v), tuple(qkv_tangents))
    _, want = jvp(
        lambda q, k: torch.logsumexp((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5, -1),
        (q.double(), k.double()),
        tuple(t.double() for t in qkv_tangents[:2]),
    )
    op_close(lse, want, torch.float32, grad=True)
    x, shift, scale = _spec("modulate_layernorm", op_backend.device)[2]
    tangents = tuple(_tangents([x, shift, scale]))
    _, (_, mean, rstd) = jvp(lambda *a: raw.modulate_layernorm_fwd.default(*a, 1e-6), (x, shift, scale), tangents)
    _, want_mean = jvp(lambda x: x.mean(-1), (x.double(),), (tangents[0].double(),))
    _, want_rstd = jvp(lambda x: torch.rsqrt(x.var(-1, unbiased=False) + 1e-6), (x.double(),), (tangents[0].double(),))
    op_close(mean, want_mean, torch.float32, grad=True)
    op_close(rstd, want_rstd, torch.float32, grad=True)


def test_the_row_statistics_refuse_a_gradient(op_backend):
    q = op_backend.randn(1, 2, 5, 32).requires_grad_()
    _, lse = jvp_rules.transformed(op_backend.ops.name).attention_fwd.default(q, q, q)
    with pytest.raises(RuntimeError, match="row statistics have no gradient"):
        lse.sum().backward()


# ---------------------------------------------------------------- torch.func transforms on one op
def test_func_transforms_of_attention(op_backend):
    """grad, vjp, jacfwd (vmap of jvp), jvp of vmap, grad of jvp and linearize against the reference."""
    q, k, v = (op_backend.randn(1, 2, 5, 32, seed=s) for s in range(3))  # vmap runs the kernels once per sample
    dq, dk, dv = _tangents([q, k, v])

    def transforms(fn):
        batch = torch.stack([q, 0.5 * q])
        return {
            "grad": grad(lambda q: fn(q, k, v).sin().sum())(q),
            "vjp": vjp(lambda q, k, v: fn(q, k, v), q, k, v)[1](dq)[1],
            "vmap(jvp)": vmap(lambda q: jvp(fn, (q, k, v), (dq, dk, dv))[1])(batch),
            "jvp(vmap)": jvp(vmap(lambda q: fn(q, k, v)), (batch,), (torch.stack([dq, dq]),))[1],
            "grad(jvp)": grad(lambda q: jvp(fn, (q, k, v), (dq, dk, dv))[1].square().sum())(q),
            "linearize": linearize(lambda q: fn(q, k, v), q)[1](dq),
        }

    got = transforms(ops.attention)
    with sf.backend("reference"):
        want = transforms(SF.attention)
    for name, expected in want.items():
        op_close(got[name], expected, torch.float32, grad=True)


def test_nested_forward_mode_runs_the_reference(op_backend, monkeypatch):
    """PyTorch runs an autograd.Function's jvp rule with forward AD off, so a jvp of a jvp through one would come
    back zero: those calls (and a jvp of a gradient) run the reference, and give the second derivative."""
    x, gate, y = _spec("gated_residual", op_backend.device)[2]
    dx, dgate, dy = _tangents([x, gate, y])

    def second(x, gate, y):
        return jvp(lambda *a: jvp(ops.gated_residual, a, (dx, dgate, dy))[1], (x, gate, y), (dx, dgate, dy))[1]

    kernels = []
    choose = dispatch._kernels
    monkeypatch.setattr(dispatch, "_kernels", lambda *a, **k: kernels.append(choose(*a, **k)) or kernels[-1])
    got = second(x, gate, y)
    assert kernels and all(k is None for k in kernels)
    op_close(got, 2 * dgate[:, None] * dy, torch.float32, grad=True)  # the only second-order term of x + gate y
    # jvp of a gradient: the backward kernels have no forward-mode rule, so the reference serves it too
    q, k, v = _spec("attention", op_backend.device)[2]
    dq = _tangents([q])[0]
    got = jvp(grad(lambda q: ops.attention(q, k, v).sin().sum()), (q,), (dq,))[1]
    with sf.backend("reference"):
        want = jvp(grad(lambda q: SF.attention(q, k, v).sin().sum()), (q.double(),), (dq.double(),))[1]
    op_close(got, want, torch.float32, grad=True)


def test_plain_calls_keep_the_raw_ops_and_transforms_get_the_functions(op_backend):
    x, gate, y = _spec("gated_residual", op_backend.device)[2]
    assert dispatch._kernels("gated_residual", x) is op_backend.ops
    seen = []
    jvp(lambda x: seen.append(dispatch._kernels("gated_residual", x)) or x, (x,), (x,))
    grad(lambda x: seen.append(dispatch._kernels("gated_residual", x)) or x.sum())(x)
    assert all(isinstance(k, jvp_rules.Transformed) and k.name == op_backend.ops.name for k in seen), seen


# ---------------------------------------------------------------- a backend that declares no JVP
def test_a_backend_without_jvp_in_its_contract_runs_the_reference_with_one_warning(op_backend, monkeypatch):
    backend = op_backend.contract
    table = contract.BY_NAME["gated_residual"].support
    monkeypatch.setitem(table, backend, replace(table[backend], jvp=False))
    monkeypatch.setattr(dispatch, "_warned_no_jvp", set())
    calls = []
    monkeypatch.setattr(SF, "gated_residual", lambda *a, _f=SF.gated_residual: calls.append(1) or _f(*a))
    x, gate, y = _spec("gated_residual", op_backend.device)[2]
    dx, dgate, dy = _tangents([x, gate, y])
    with pytest.warns(RuntimeWarning, match=f"{backend} kernels of gated_residual have no forward-mode") as caught:
        for _ in range(2):
            _, tangent = jvp(ops.gated_residual, (x, gate, y), (dx, dgate, dy))
    assert len([w for w in caught if "forward-mode" in str(w.message)]) == 1
    assert len(calls) == 2
    op_close(tangent, dx + dgate[:, None] * y + gate[:, None] * dy, torch.float32, grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.gated_residual(x, gate, y)  # outside a transform the kernel runs, without a word
    assert len(calls) == 2


# ---------------------------------------------------------------- whole models
def _dit(dtype):
    """One block on 4 tokens of head size 32 (a size the Triton attention runs), well off the zero init."""
    model = sf.ShortcutDiT(
        input_size=4, in_channels=2, patch_size=2, hidden_size=64, depth=1, num_heads=2, num_classes=5
    )
    return perturb_(model, seed=0, scale=0.1).to(dtype).eval()


def _mlp(dtype):
    return perturb_(sf.ShortcutMLP(dim=3, hidden_size=32, depth=2), seed=2, scale=0.1).to(dtype).eval()


MODELS = {"dit": _dit, "mlp": _mlp}
# the reference and the native CPU kernels run fp64; the interpreter fp32 only
MODEL_BACKENDS = ["reference", "native", "triton"]


def _model_backend(name: str) -> tuple[str, torch.dtype]:
    if name == "native" and not backends.native_available():
        pytest.skip("needs the C++ extension")
    if name == "triton" and not (backends.triton_available() and backends.triton_interpreted()):
        pytest.skip("needs Triton under TRITON_INTERPRET=1")
    return name, torch.float32 if name == "triton" else torch.float64


def _model_inputs(kind, dtype, batch=3):
    shape = (batch, 2, 4, 4) if kind == "dit" else (batch, 3)
    x = op_randn(*shape, device="cpu", seed=1).to(dtype)
    t = torch.tensor([0.25, 0.5, 0.75][:batch], dtype=dtype)
    d = torch.tensor([0.5, 0.25, 1 / 128][:batch], dtype=dtype)
    y = torch.tensor([1, 5, 2][:batch]) if kind == "dit" else None
    dx, dt = op_randn(*shape, device="cpu", seed=2).to(dtype), torch.tensor([1.0, -0.5, 2.0][:batch], dtype=dtype)
    return x, t, d, y, dx, dt


# The timestep features are fp32 on every backend (their contract), and the kernels' sin and cos of 1000 t differ
# from torch's by ~1e-5: a model compared across backends, or differentiated in t, agrees to that, not to fp64.
FEATURES_TOL = 1e-4


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_model_jvp_is_a_central_difference(kind, backend):
    """The tangent in x against an fp64 central difference (of the same backend where it runs fp64, else of the
    reference): a silent zero tangent fails it by its whole size."""
    backend, dtype = _model_backend(backend)
    model = MODELS[kind](dtype)
    x, t, d, y, dx, _ = _model_inputs(kind, dtype)
    with sf.backend(backend):
        out, tangent = jvp(lambda x: model(x, t, d, y), (x,), (dx,))
        assert_close(out, model(x, t, d, y), 1e-6)
    m64, (x64, t64, d64, dx64) = copy.deepcopy(model).double(), (a.double() for a in (x, t, d, dx))
    with sf.backend(backend if dtype == torch.float64 else "reference"):
        want = _central_difference(lambda x: m64(x, t64, d64, y), [x64], [dx64])
    assert want.abs().max() > 1e-2  # the model is off its zero init: a zero tangent cannot pass
    assert_close(tangent.double(), want, 2e-4 if dtype == torch.float32 else 1e-7)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_model_jvp_along_x_and_t_matches_the_reference_backend(kind, backend):
    """MeanFlow's direction (dx, dt): t enters through the fp32 timestep features (their own JVP is checked
    against the reference above), so the reference backend's jvp, not a difference quotient, is the measure."""
    backend, dtype = _model_backend(backend)
    model = MODELS[kind](dtype)
    x, t, d, y, dx, dt = _model_inputs(kind, dtype)
    with sf.backend(backend):
        _, tangent = jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))
    with sf.backend("reference"):
        _, want = jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))
    assert want.abs().max() > 1e-2
    assert_close(tangent, want, FEATURES_TOL)


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    """Within ``rtol`` of ``want``, absolutely up to ``rtol`` times its largest magnitude (at least 1)."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(1.0, want.abs().max().item()))


def _meanflow_grads(model, x, t, d, y, dx, dt):
    """MeanFlow's loss: the tangent under stop-gradient in the target, the primal back-propagated."""
    model.zero_grad(set_to_none=True)
    u, dudt = jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))
    target = (dx - dudt).detach()
    (u - target).square().mean().backward()
    return target, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_the_primal_of_a_jvp_back_propagates_as_plain_autograd(kind, backend):
    backend, dtype = _model_backend(backend)
    model = MODELS[kind](dtype)
    x, t, d, y, dx, dt = _model_inputs(kind, dtype)
    with sf.backend(backend):
        target, grads = _meanflow_grads(model, x, t, d, y, dx, dt)
        model.zero_grad(set_to_none=True)
        (model(x, t, d, y) - target).square().mean().backward()  # the same loss with plain autograd
    for name, p in model.named_parameters():
        assert_close(grads[name], p.grad, 1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_func_grad_and_vjp_of_a_model_are_plain_autograd(kind, backend):
    backend, dtype = _model_backend(backend)
    model = MODELS[kind](dtype)
    x, t, d, y, dx, _ = _model_inputs(kind, dtype)
    with sf.backend(backend):
        got_grad = grad(lambda x: model(x, t, d, y).sin().sum())(x)
        _, pullback = vjp(lambda x: model(x, t, d, y), x)
        (got_vjp,) = pullback(dx)
        leaf = x.clone().requires_grad_()
        out = model(leaf, t, d, y)
        (want_grad,) = torch.autograd.grad(out.sin().sum(), leaf, retain_graph=True)
        (want_vjp,) = torch.autograd.grad(out, leaf, dx)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert_close(got_grad, want_grad, tol)
    assert_close(got_vjp, want_vjp, tol)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("backend", ["native", "triton"])
def test_the_weights_gradient_of_a_loss_on_the_tangent_matches_the_reference(kind, backend):
    """Reverse over forward, at the model: what a loss on du/dt back-propagates into every weight."""
    backend, dtype = _model_backend(backend)
    model = MODELS[kind](dtype)
    x, t, d, y, dx, dt = _model_inputs(kind, dtype)

    def weights_grad():
        model.zero_grad(set_to_none=True)
        _, dudt = jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))
        dudt.square().sum().backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]

    with sf.backend(backend):
        got = weights_grad()
    with sf.backend("reference"):
        want = weights_grad()
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, FEATURES_TOL)


@pytest.mark.slow
def test_compiled_jvp_of_the_dit_matches_eager():
    """Dynamo drops an autograd.Function's jvp rule under torch.func.jvp (pytorch/pytorch#192985), so a traced
    transform runs the reference ops: the compiled tangent is the eager one, not zero."""
    if not backends.native_available():
        pytest.skip("needs the C++ extension")
    model = _dit(torch.float32)
    x, t, d, y, dx, dt = _model_inputs("dit", torch.float32, batch=2)

    def f(x, t):
        return jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))

    with sf.backend("native"), sf.checks.trusted_inputs():
        eager = f(x, t)
        compiled = torch.compile(f, fullgraph=True, dynamic=False)(x, t)
    for got, want in zip(compiled, eager, strict=True):  # the compiled transform runs the reference ops
        assert_close(got, want, 1e-5)
