"""The fused JVP of attention (``attention_jvp``) on every backend that has one, and its wiring in ``jvp.py``.

The raw op's out, lse and tangents against ``torch.func.jvp`` of a plain softmax attention in fp64 (written here,
independent of the package) and against the plain rule ``jvp.attention_jvp`` it replaces; the public op under
``torch.func.jvp`` with tangents partly absent, through the fused kernel (counted) or, where the contract gives a
backend none, the plain rule; a ShortcutDiT on the fused backend against the reference backend; the gradient of a
loss on the tangents against the plain rule's and the fp64 one; bad inputs. Sequence lengths on both sides of the
kernels' blocks (16 under the interpreter; 64 queries by 256 keys on the CPU), a single row, odd head sizes where
the backend takes them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from helpers import op_close, op_randn, perturb_
from torch.func import jvp

import shortcut_fast as sf
from shortcut_fast import ops
from shortcut_fast.ops import backends, contract
from shortcut_fast.ops import jvp as jvp_rules

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------- independent references
def _softmax_attention(q, k, v):
    """out and lse of softmax attention by the book: the full (N, N) scores."""
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.softmax(-1) @ v, torch.logsumexp(scores, -1)


def _fp64_jvp(primals, tangents):
    """((out, lse), (d_out, d_lse)) of ``_softmax_attention`` in fp64 (a None tangent: the input held constant)."""
    free = [i for i, t in enumerate(tangents) if t is not None]
    wide = [p.double() for p in primals]

    def call(*args):
        full = list(wide)
        for i, a in zip(free, args, strict=True):
            full[i] = a
        return _softmax_attention(*full)

    return jvp(call, tuple(wide[i] for i in free), tuple(tangents[i].double() for i in free))


def _inputs(device, shape, dtype=torch.float32):
    """q, k, v and their tangents, seeded; the tangents at half the primals' scale."""
    primals = [op_randn(*shape, device=device, seed=s).to(dtype) for s in range(3)]
    return primals, [op_randn(*shape, device=device, seed=10 + s, scale=0.5).to(dtype) for s in range(3)]


def _fused_op(case, dtype=torch.float32, head_dim=32):
    """The raw ``attention_jvp`` of ``case``'s namespace; skip where its contract declares no kernel for it."""
    if not contract.support("attention_jvp", case.contract).runs(dtype, head_dim):
        pytest.skip(f"{case.name} has no attention_jvp kernel for {dtype}, head size {head_dim}")
    return case.ops.attention_jvp


# (B, H, N, Dh): N = 1 a single row, 7 inside one block, 37 and 130 over several query and key blocks of the
# interpreter's 16 and the CPU's 64 queries, 300 over two of the CPU's 256-key blocks (the sums rescaled); head
# sizes 33 and 48 only where the contract takes them (the native CPU kernels)
SHAPES = [
    (2, 3, 1, 32),
    (2, 3, 7, 64),
    (2, 3, 37, 32),
    (1, 1, 130, 32),
    (2, 3, 130, 32),
    (2, 3, 130, 48),
    (1, 2, 300, 33),
]
TOO_SLOW_TO_INTERPRET = {(2, 3, 130, 32)}  # the interpreter runs the long sequence on one head


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_fused_jvp_matches_the_fp64_jvp_and_the_plain_rule(op_backend, shape):
    fused = _fused_op(op_backend, head_dim=shape[-1])
    if op_backend.contract == "triton-interpret" and shape in TOO_SLOW_TO_INTERPRET:
        pytest.skip("minutes under the interpreter; (1, 1, 130, 32) covers the long sequence")
    primals, tangents = _inputs(op_backend.device, shape)
    out, lse, d_out, d_lse = fused(*primals, *tangents)
    assert out.dtype == d_out.dtype == torch.float32 and out.shape == d_out.shape == shape
    assert lse.dtype == d_lse.dtype == torch.float32 and lse.shape == d_lse.shape == shape[:-1]
    (want_out, want_lse), (want_d_out, want_d_lse) = _fp64_jvp(primals, tangents)
    op_close(out, want_out, torch.float32)
    op_close(lse, want_lse, torch.float32)
    op_close(d_out, want_d_out, torch.float32, grad=True)
    op_close(d_lse, want_d_lse, torch.float32, grad=True)
    # the plain rule it replaces, on the same fp32 inputs
    plain_d_out, plain_d_lse = jvp_rules.attention_jvp(*primals, *tangents, out, lse)
    op_close(d_out, plain_d_out, torch.float32, grad=True)
    op_close(d_lse, plain_d_lse, torch.float32, grad=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_native_fused_jvp_in_fp64_and_16_bit_storage(dtype):
    """fp64 storage sums in fp64 (lse and d_lse are fp32 by the contract); 16-bit storage sums in fp32."""
    if not backends.native_available():
        pytest.skip("needs the C++ extension")
    primals, tangents = _inputs("cpu", (2, 3, 70, 48), dtype)
    out, lse, d_out, d_lse = torch.ops.shortcut_fast.attention_jvp(*primals, *tangents)
    assert out.dtype == d_out.dtype == dtype and lse.dtype == d_lse.dtype == torch.float32
    (want_out, want_lse), (want_d_out, want_d_lse) = _fp64_jvp(primals, tangents)
    if dtype == torch.float64:
        torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d_out, want_d_out, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(lse.double(), want_lse, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(d_lse.double(), want_d_lse, rtol=1e-6, atol=1e-6)
        return
    tol = 1e-2 if dtype == torch.float16 else 5e-2  # one rounding of the result to the storage dtype
    for got, want in ((out, want_out), (d_out, want_d_out), (lse, want_lse), (d_lse, want_d_lse)):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(1.0, want.abs().max().item()))


# ---------------------------------------------------------------- the wiring in jvp.py
@pytest.fixture
def counted(monkeypatch):
    """Counts of the fused kernel's calls (through ``_AttentionTangent``) and of the plain rule's."""
    calls = {"fused": 0, "plain": 0}
    forward, plain = jvp_rules._AttentionTangent.forward, jvp_rules.attention_jvp

    def fused_forward(*args):
        calls["fused"] += 1
        return forward(*args)

    def plain_rule(*args):
        calls["plain"] += 1
        return plain(*args)

    monkeypatch.setattr(jvp_rules._AttentionTangent, "forward", staticmethod(fused_forward))
    monkeypatch.setattr(jvp_rules, "attention_jvp", plain_rule)
    return calls


# which of q, k, v carry a tangent: all, one of each, two
HELD = [(0, 1, 2), (0,), (1,), (2,), (1, 2)]


@pytest.mark.parametrize("free", HELD, ids=lambda f: "d" + "".join("qkv"[i] for i in f))
def test_public_attention_jvp_runs_the_fused_kernel_with_tangents_partly_none(op_backend, counted, free):
    _fused_op(op_backend)
    primals, tangents = _inputs(op_backend.device, (2, 3, 37, 32))
    tangents = [t if i in free else None for i, t in enumerate(tangents)]

    def call(*args):
        full = list(primals)
        for i, a in zip(free, args, strict=True):
            full[i] = a
        return ops.attention(*full)

    out, tangent = jvp(call, tuple(primals[i] for i in free), tuple(tangents[i] for i in free))
    assert counted == {"fused": 1, "plain": 0}
    (want_out, _), (want, _) = _fp64_jvp(primals, tangents)
    op_close(out, want_out, torch.float32)
    op_close(tangent, want, torch.float32, grad=True)
    assert want.abs().max() > 1e-2  # a zero tangent cannot pass


def test_a_backend_without_the_kernel_runs_the_plain_rule(op_backend, counted, monkeypatch):
    """As the native CUDA backend does (its contract entry has no dtypes): the tangent is the plain rule's."""
    assert contract.support("attention_jvp", "native-cuda").dtypes == ()
    table = contract.BY_NAME["attention_jvp"].support
    monkeypatch.setitem(table, op_backend.contract, replace(table[op_backend.contract], dtypes=()))
    primals, tangents = _inputs(op_backend.device, (2, 3, 37, 32))
    _, tangent = jvp(ops.attention, tuple(primals), tuple(tangents))
    assert counted == {"fused": 0, "plain": 1}
    op_close(tangent, _fp64_jvp(primals, tangents)[1][0], torch.float32, grad=True)


@pytest.mark.parametrize("backend", ["native", "triton"])
def test_dit_jvp_on_the_fused_backend_matches_the_reference_backend(backend, counted):
    """A two-block DiT on 16 tokens of head size 32, along x and t (MeanFlow's direction)."""
    if backend == "native" and not backends.native_available():
        pytest.skip("needs the C++ extension")
    if backend == "triton" and not (backends.triton_available() and backends.triton_interpreted()):
        pytest.skip("needs Triton under TRITON_INTERPRET=1")
    model = sf.ShortcutDiT(
        input_size=8, in_channels=2, patch_size=2, hidden_size=64, depth=2, num_heads=2, num_classes=5
    )
    model = perturb_(model, seed=0, scale=0.1).eval()
    x, dx = (op_randn(2, 2, 8, 8, device="cpu", seed=s) for s in (1, 2))
    t, d, y = torch.tensor([0.25, 0.75]), torch.tensor([0.5, 0.125]), torch.tensor([1, 4])
    dt = torch.tensor([1.0, -0.5])
    with sf.backend(backend), sf.checks.trusted_inputs():
        _, tangent = jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))
    assert counted["fused"] == 2 and counted["plain"] == 0  # one per block
    with sf.backend("reference"), sf.checks.trusted_inputs():
        _, want = jvp(lambda x, t: model(x, t, d, y), (x, t), (dx, dt))
    assert want.abs().max() > 1e-2
    # the fp32 timestep features of the kernels differ from torch's by ~1e-5 (test_op_jvp.py's FEATURES_TOL)
    torch.testing.assert_close(tangent, want, rtol=1e-4, atol=1e-4 * max(1.0, want.abs().max().item()))


# ---------------------------------------------------------------- gradients of the tangents
def _tangent_loss_grads(fn, primals, tangents, weights):
    """The gradients of ``<d_out, w_out> + <d_lse, w_lse>`` in q, k, v and in their tangents (None where absent)."""
    leaves = [p.detach().clone().requires_grad_() for p in primals]
    tangent_leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tangents]
    free = [i for i, t in enumerate(tangent_leaves) if t is not None]

    def call(*args):
        full = list(leaves)
        for i, a in zip(free, args, strict=True):
            full[i] = a
        return fn(*full)

    _, (d_out, d_lse) = jvp(call, tuple(leaves[i] for i in free), tuple(tangent_leaves[i] for i in free))
    loss = (d_out * weights[0]).sum() + (d_lse * weights[1]).sum()
    wrt = leaves + [t for t in tangent_leaves if t is not None]
    return torch.autograd.grad(loss, wrt, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("free", [(0, 1, 2), (0,), (1, 2)], ids=lambda f: "d" + "".join("qkv"[i] for i in f))
def test_the_gradient_of_a_loss_on_the_tangents_matches_the_plain_rule(op_backend, counted, monkeypatch, free):
    _fused_op(op_backend)
    raw = jvp_rules.transformed(op_backend.ops.name).attention_fwd.default
    primals, tangents = _inputs(op_backend.device, (2, 3, 37, 32))
    tangents = [t if i in free else None for i, t in enumerate(tangents)]
    weights = (op_backend.randn(2, 3, 37, 32, seed=20), op_backend.randn(2, 3, 37, seed=21))
    got = _tangent_loss_grads(raw, primals, tangents, weights)
    assert counted["fused"] == 1 and counted["plain"] == 1  # the forward the kernel's, the backward the plain rule
    want = _tangent_loss_grads(
        _softmax_attention,
        [p.double() for p in primals],
        [None if t is None else t.double() for t in tangents],
        [w.double() for w in weights],
    )
    for g, w in zip(got, want, strict=True):
        op_close(g, w, torch.float32, grad=True)
    monkeypatch.setattr(jvp_rules, "_keeps_fused_jvp", lambda *a: False)
    plain = _tangent_loss_grads(raw, primals, tangents, weights)
    assert counted["fused"] == 1
    for g, p in zip(got, plain, strict=True):
        op_close(g, p, torch.float32, grad=True)


def test_a_gradient_of_the_tangents_gradient_raises(op_backend):
    """The gradient is differentiable once: a second one raises rather than come back zero."""
    _fused_op(op_backend)
    primals, tangents = _inputs(op_backend.device, (1, 2, 7, 32))
    q = primals[0].clone().requires_grad_()
    _, d_out = jvp(lambda q: ops.attention(q, *primals[1:]), (q,), (tangents[0],))
    (g,) = torch.autograd.grad(d_out.square().sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|double backward"):
        g.sum().backward()


# ---------------------------------------------------------------- the raw op itself
def test_opcheck(op_backend):
    _fused_op(op_backend)
    primals, tangents = _inputs(op_backend.device, (2, 2, 5, 32))
    torch.library.opcheck(op_backend.ops.attention_jvp.default, (*primals, *tangents))


def test_bad_inputs_raise(op_backend):
    fused = _fused_op(op_backend)
    (q, k, v), (dq, dk, dv) = _inputs(op_backend.device, (2, 2, 7, 32))
    with pytest.raises(ValueError, match="attention_jvp: q must be"):
        fused(q[0], k[0], v[0], dq[0], dk[0], dv[0])
    with pytest.raises(ValueError, match="attention_jvp: dk must have the shape of q"):
        fused(q, k, v, dq, dk[:, :, :5], dv)
    with pytest.raises(TypeError, match="attention_jvp: dv must have the dtype of q"):
        fused(q, k, v, dq, dk, dv.double())
    with pytest.raises(TypeError, match="attention_jvp: .*(int64|Long)"):
        fused(*(t.long() for t in (q, k, v, dq, dk, dv)))
    if op_backend.name.startswith("native"):
        with pytest.raises(ValueError, match="attention_jvp: dq must be contiguous"):
            fused(q, k, v, dq.transpose(2, 3).contiguous().transpose(2, 3), dk, dv)
        return
    wide = [op_backend.randn(2, 2, 7, 48, seed=s) for s in range(6)]
    with pytest.raises(ValueError, match="attention_jvp: head size 48"):
        fused(*wide)
    if op_backend.contract == "triton-interpret":
        with pytest.raises(TypeError, match="attention_jvp: dtype torch.float64"):
            fused(*(t.double() for t in (q, k, v, dq, dk, dv)))
