"""Forward-mode AD (JVP) and the ``torch.func`` transforms through the fused kernels.

The raw ops' own autograd is reverse mode only, and does not run under ``torch.func``: the native one is a C++
``torch::autograd::Function`` (``csrc/autograd.cpp``), which functorch refuses; the Triton ops' is
``torch.library.register_autograd``, which has no JVP and which, under ``torch.func.jvp``, runs the kernel below
autograd and returns a zero tangent without a word. So ``dispatch.py`` hands a call made under forward-mode AD or
a ``torch.func`` transform (``active()``) the namespace of this module (``transformed``) in place of
``torch.ops.<namespace>``: there each op is a ``torch.autograd.Function`` whose forward is the same raw kernel,
whose backward is the op's formula of ``formulas.py`` (the backward kernel, for attention and the layer norm), and
whose ``jvp`` is written in plain torch from the primal inputs, recomputing what it needs rather than reading the
kernels' row statistics (which carry no gradient), so that the tangent is itself differentiable (a loss on the
tangent back-propagates through it). ``torch.func.vmap`` runs the forward per sample (``generate_vmap_rule``).

The rules, with ``d·`` a tangent (an input without one contributes nothing):

* attention: ``S = q kᵀ / √Dh``, ``P = softmax(S)``, ``dS = (dq kᵀ + q dkᵀ) / √Dh``,
  ``dP = P ⊙ (dS - rowsum(P ⊙ dS))``, ``d out = dP v + P dv``, ``d lse = rowsum(P ⊙ dS)``. Where the contract
  gives the namespace an ``attention_jvp`` kernel for the dtype and head size (the native CPU and the Triton
  ones; not native CUDA) and ``auto`` keeps it (self-checked, and measured faster than this rule on the call's
  inputs), that kernel computes them in one pass with an online softmax, never holding the
  (N, N) scores, through ``_AttentionTangent``, whose backward differentiates the plain rule ``attention_jvp``
  (the kernel's reference, recomputed on the saved primals and tangents only when a gradient is asked for);
  elsewhere the plain rule, over the (N, N) scores, is the tangent;
* modulate_layernorm: ``x̂ = (x - μ) rstd``, ``dx̂ = rstd (dx - mean(dx) - x̂ mean(dx x̂))``,
  ``dy = dx̂ (1 + scale) + x̂ dscale + dshift``;
* gated_residual ``dx + dgate y + gate dy``; condition_sum ``dc + dd_table[level] + dy_table[y]``;
  timestep_features ``1000 dt f [-sin, cos]``; euler_step ``dx + d dv + dd v``; the bootstrap ops the same
  linear maps, zero where the clip is active (``clamp``'s rule: inside ``[-clip, clip]`` inclusive).

The timestep, Euler and bootstrap ops have no backward here, as they have no backward kernel: ``dispatch.py``
runs their reference when a gradient is asked for, and a backward that still reaches one raises.
Nested derivatives (a jvp of a jvp or of a gradient, a gradient of a gradient) and transforms that
``torch.compile`` traces run the reference (``serves()``).
The backward kernels have no forward-mode rule: a backward that meets tangents anyway (inside a plain
``forward_ad.dual_level``) raises rather than return a zero tangent of the gradient.
"""

from __future__ import annotations

import contextlib
import functools

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import autotune, backends, contract, formulas
from . import reference as SF

Tensor = torch.Tensor


def active() -> bool:
    """Whether a call may carry a tangent or runs under a ``torch.func`` transform (jvp, grad, vjp, vmap), where
    the raw ops' own autograd cannot serve it: an open dual level, or a functorch interpreter on the stack.

    Two reads of global state (about 0.1 µs), no tensor inspected, nothing read from a device; ``torch.compile``
    guards on both (its dual-level and functorch-stack guards).
    """
    return SF.forward_ad_active() or torch._C._are_functorch_transforms_active()


_GRAD, _JVP = torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp


def serves() -> bool:
    """Whether the Functions serve the transforms active now (asked under ``active()``); where not, ``dispatch.py``
    runs the reference, whose plain ops every transform composes:

    * not while ``torch.compile`` traces: Dynamo inlines an autograd.Function's forward under ``torch.func.jvp``
      and drops its jvp rule, which would leave the raw op's zero tangent (pytorch/pytorch#192985);
    * not for nested derivatives: a jvp of a jvp (PyTorch runs an autograd.Function's jvp rule with forward AD
      off, so the outer tangent of the inner one would come back zero), a jvp of a gradient (the backward kernels
      have no forward-mode rule) or a gradient of a gradient (they are differentiable once). A gradient of a jvp is
      served: the rules are plain torch ops that the outer gradient records.

    The functorch stack is read outermost first, in well under a microsecond.
    """
    if torch.compiler.is_compiling():
        return False
    outer: set = set()
    for interpreter in torch._C._functorch.get_interpreter_stack() or ():
        key = interpreter.key()
        if (key == _JVP and _JVP in outer) or (key == _GRAD and outer):
            return False
        if key in (_GRAD, _JVP):
            outer.add(key)
    return True


def _acc(t: Tensor) -> torch.dtype:
    """The dtype the rules compute in: fp32 for 16-bit storage (as the kernels sum), else the storage's own."""
    return torch.promote_types(t.dtype, torch.float32)


def _total(terms: list[Tensor | None], like: Tensor) -> Tensor:
    """The sum of the terms that are there (None: an input without a tangent) in the dtype of ``like``, the output
    they are the tangent of; zeros of its shape when none is (PyTorch asserts on a None tangent under
    ``jvp(vmap(...))``)."""
    present = [t for t in terms if t is not None]
    if not present:
        return torch.zeros_like(like)
    return functools.reduce(torch.add, present).to(like.dtype)


def _per_sample(d: Tensor, like: Tensor) -> Tensor:
    """A (B,) step size shaped to broadcast against ``like``, in its dtype."""
    return d.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def _clip_mask(pre: Tensor, clip: float | None) -> Tensor | None:
    """Where ``pre.clamp(-clip, clip)`` passes its tangent (``clamp``'s rule, both ends included); None: everywhere."""
    return None if clip is None else (pre >= -clip) & (pre <= clip)


def _masked(tangent: Tensor, mask: Tensor | None) -> Tensor:
    return tangent if mask is None else tangent * mask


def _refuse_forward_over_reverse(op: str, *tensors: Tensor) -> None:
    """Raise where a tangent may reach the backward kernel of ``op``, which has no forward-mode rule: a backward
    inside a dual level whose inputs carry tangents, or a ``torch.func`` gradient inside a dual level (whose
    wrapped tensors do not show their tangents). ``torch.func.jvp`` of ``torch.func.grad`` never gets here: it
    runs the reference (``serves()``)."""
    if not SF.forward_ad_active():
        return
    if torch._C._are_functorch_transforms_active() or any(fwAD.unpack_dual(t).tangent is not None for t in tensors):
        raise RuntimeError(
            f"shortcut_fast: the backward kernel of {op} has no forward-mode (JVP) rule, so forward-over-reverse "
            "(a jvp of a gradient, or a backward with tangents inside forward_ad.dual_level) cannot run through "
            "it; run the backward outside the dual level, or use shortcut_fast.backend('reference')"
        )


# ---------------------------------------------------------------- the rules in plain torch
def attention_jvp(
    q: Tensor, k: Tensor, v: Tensor, dq: Tensor | None, dk: Tensor | None, dv: Tensor | None, out: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor]:
    """The tangents of ``out = softmax(q kᵀ / √Dh) v`` and of ``lse = logsumexp(q kᵀ / √Dh)`` (``rowsum(P ⊙ dS)``)
    for the tangents dq, dk, dv (None: zero); ``out`` and ``lse`` give their dtypes and shapes."""
    acc = _acc(q)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    scale = q.shape[-1] ** -0.5
    p = ((q @ k.transpose(-1, -2)) * scale).softmax(-1)  # (B, H, N, N), recomputed: differentiable in q and k
    scores = [
        None if dq is None else dq.to(acc) @ k.transpose(-1, -2),
        None if dk is None else q @ dk.to(acc).transpose(-1, -2),
    ]
    terms = [None if dv is None else p @ dv.to(acc)]
    d_lse = None
    if any(t is not None for t in scores):
        ds = _total(scores, p) * scale
        d_lse = (p * ds).sum(-1)
        terms.append((p * (ds - d_lse[..., None])) @ v)  # dP v
    return _total(terms, out), _total([d_lse], lse)


def modulate_layernorm_jvp(
    x: Tensor, scale: Tensor, eps: float, dx: Tensor | None, dshift: Tensor | None, dscale: Tensor | None, output
) -> tuple[Tensor, Tensor, Tensor]:
    """The tangents of ``y = layer_norm(x) * (1 + scale) + shift`` (x: (B, N, C), shift/scale: (B, C)) and of the
    row statistics ``mean`` and ``rstd`` (``mean(dx)``, ``-rstd² mean(x̂ dx)``); ``output`` (y, mean, rstd) gives
    their dtypes and shapes."""
    y, mean, rstd_out = output
    acc = _acc(x)
    xf = x.to(acc)
    centred = xf - xf.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)  # recomputed: differentiable in x
    x_hat = centred * rstd
    terms: list[Tensor | None] = [None if dshift is None else dshift.to(acc)[:, None]]
    if dscale is not None:
        terms.append(x_hat * dscale.to(acc)[:, None])
    d_mean = d_rstd = None
    if dx is not None:
        dxf = dx.to(acc)
        d_mean, along = dxf.mean(-1, keepdim=True), (dxf * x_hat).mean(-1, keepdim=True)
        terms.append(rstd * (dxf - d_mean - x_hat * along) * (1 + scale.to(acc)[:, None]))  # dx̂ (1 + scale)
        d_mean, d_rstd = d_mean[..., 0], -(rstd.square() * along)[..., 0]
    return _total(terms, y), _total([d_mean], mean), _total([d_rstd], rstd_out)


# ---------------------------------------------------------------- the Functions
def _ops(namespace: str):
    return getattr(torch.ops, namespace)


# The row statistics (lse; mean, rstd) that attention and the layer norm return beside their result have tangents
# (the rules give them) but no gradient: dispatch never hands them out. They are not marked non-differentiable, because
# PyTorch then wants a None tangent for them, on which it asserts under jvp(vmap(...)); unmaterialised gradients
# let the backward tell a gradient that reached them (refused) from none.
def _statistics_take_no_gradient(ctx) -> None:
    ctx.set_materialize_grads(False)


def _refuse_statistics_gradient(op: str, *grads: Tensor | None) -> None:
    if any(g is not None for g in grads):
        raise RuntimeError(f"shortcut_fast: {op}'s row statistics have no gradient rule; differentiate its result")


class _Attention(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, q, k, v):
        return _ops(namespace).attention_fwd.default(q, k, v)

    @staticmethod
    def setup_context(ctx, inputs, output):
        namespace, q, k, v = inputs
        ctx.namespace = namespace
        formulas.setup_attention(ctx, (q, k, v), output)
        ctx.save_for_forward(q, k, v, *output)
        _statistics_take_no_gradient(ctx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_lse):
        _refuse_statistics_gradient("attention_fwd", grad_lse)
        _refuse_forward_over_reverse("attention", grad_out, *ctx.saved_tensors)
        return None, *formulas.attention_backward(_ops(ctx.namespace), ctx, grad_out, grad_lse)

    @staticmethod
    def jvp(ctx, _, dq, dk, dv):
        q, k, v, out, lse = ctx.saved_tensors
        tangents = (dq, dk, dv)
        if any(t is not None for t in tangents) and _has_fused_jvp(ctx.namespace, q):
            tq, tk, tv = _zeros_for_none(tangents, q)  # once, for the decision and the kernel
            if _keeps_fused_jvp(ctx.namespace, q, k, v, tq, tk, tv, out, lse):
                given = tuple(t is not None for t in tangents)
                return _AttentionTangent.apply(ctx.namespace, given, q, k, v, tq, tk, tv)
        return attention_jvp(q, k, v, dq, dk, dv, out, lse)


def _has_fused_jvp(namespace: str, q: Tensor) -> bool:
    """Whether the contract gives ``namespace`` an ``attention_jvp`` kernel for q's device, dtype and head size."""
    from .dispatch import contract_backend  # dispatch imports this module

    return contract.support("attention_jvp", contract_backend(namespace, q.device.type)).runs(q.dtype, q.shape[-1])


def _keeps_fused_jvp(namespace: str, q, k, v, dq, dk, dv, out, lse) -> bool:
    """Whether ``auto`` keeps the fused kernel of ``namespace`` for this tangent (``autotune.py``: self-checked, and
    timed against the plain rule on these inputs, with the forward's out and lse that the rule reads; always, on a
    forced backend); every tangent is a tensor here.

    Timed only on plain tensors (``forward_ad``, as the MeanFlow objective and the trainer's first-batch decisions
    run it); under a ``torch.func`` transform, whose wrapped tensors the raw kernel does not take, an undecided
    call takes the nearest decision.
    """
    args = tuple(t.detach() for t in (q, k, v, dq, dk, dv, out, lse))
    wrapped = any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in args)
    with autotune.no_timing() if wrapped else contextlib.nullcontext():
        return autotune.keeps("attention_jvp", namespace, _fused_attention_tangent, _plain_attention_tangent, args)


def _zeros_for_none(tangents: tuple[Tensor | None, ...], like: Tensor) -> tuple[Tensor, ...]:
    """The tangents as the kernel takes them: zeros for an input without one."""
    return tuple(torch.zeros_like(like) if t is None else t for t in tangents)


def _kernel_attention_jvp(namespace: str, *tensors: Tensor) -> tuple[Tensor, ...]:
    """``(out, lse, d_out, d_lse)`` of the ``attention_jvp`` kernel of ``namespace`` on q, k, v, dq, dk, dv."""
    if namespace != backends.TRITON_NAMESPACE:  # the native kernels index contiguous tensors; Triton reads strides
        tensors = tuple(t.contiguous() for t in tensors)
    return _ops(namespace).attention_jvp.default(*tensors)


def _fused_attention_tangent(ops, q, k, v, dq, dk, dv, out, lse) -> Tensor:
    """d out from the kernel, as ``auto`` self-checks and times it (``out`` and ``lse``: the rule's, unread)."""
    return _kernel_attention_jvp(ops.name, q, k, v, dq, dk, dv)[2]


def _plain_attention_tangent(q, k, v, dq, dk, dv, out, lse) -> Tensor:
    """d out from the plain rule, which the kernel races."""
    return attention_jvp(q, k, v, dq, dk, dv, out, lse)[0]


class _AttentionTangent(torch.autograd.Function):
    """The tangents ``(d out, d lse)`` of attention from the fused ``attention_jvp`` kernel of a namespace, for the
    tangents dq, dk, dv (zeros where ``given``, one flag each, says the input had none). The kernel keeps no (N, N)
    scores and its result no graph; a gradient of the tangent (a loss on it, or ``grad`` of a ``jvp``) recomputes
    the plain rule on the saved primals and given tangents and differentiates that, so it is exact (once: a
    gradient of that gradient raises, never comes back zero)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, given, q, k, v, dq, dk, dv):
        _, _, d_out, d_lse = _kernel_attention_jvp(namespace, q, k, v, dq, dk, dv)
        return d_out, d_lse

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, given, *tensors = inputs
        ctx.given = [True, True, True, *given]  # q, k, v, dq, dk, dv: a missing tangent is None to the rule
        ctx.save_for_backward(*(t for t, g in zip(tensors, ctx.given, strict=True) if g))
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_lse):
        saved = iter(ctx.saved_tensors)
        tensors = [next(saved) if given else None for given in ctx.given]
        wanted = [i for i, t in enumerate(tensors) if t is not None and ctx.needs_input_grad[2 + i]]
        pairs = [(i, g) for i, g in enumerate((grad_out, grad_lse)) if g is not None]
        grads: list[Tensor | None] = [None] * len(tensors)
        if not wanted or not pairs:
            return None, None, *grads

        def rule(*free: Tensor) -> tuple[Tensor, ...]:
            args = list(tensors)
            for i, t in zip(wanted, free, strict=True):
                args[i] = t
            q, k, v, dq, dk, dv = args
            assert q is not None and k is not None and v is not None
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)  # with q, gives the tangents their dtypes and shapes
            results = attention_jvp(q, k, v, dq, dk, dv, q, lse)
            return tuple(results[i] for i, _ in pairs)

        # torch.func.vjp rather than autograd.grad: it also runs inside a torch.func transform (grad of a jvp), which
        # refuses requires_grad_ on its tensors; inputs the outputs do not read get zeros
        pullback = torch.func.vjp(rule, *(tensors[i] for i in wanted))[1]
        found = pullback(tuple(g for _, g in pairs))
        for i, g in zip(wanted, found, strict=True):
            grads[i] = g
        return None, None, *grads


class _ModulateLayerNorm(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, x, shift, scale, eps):
        return _ops(namespace).modulate_layernorm_fwd.default(x, shift, scale, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        namespace, x, shift, scale, eps = inputs
        ctx.namespace, ctx.eps = namespace, eps
        formulas.setup_modulate_layernorm(ctx, (x, shift, scale, eps), output)
        ctx.save_for_forward(x, scale, *output)
        _statistics_take_no_gradient(ctx)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, grad_mean, grad_rstd):
        _refuse_statistics_gradient("modulate_layernorm_fwd", grad_mean, grad_rstd)
        _refuse_forward_over_reverse("modulate_layernorm", grad_y, *ctx.saved_tensors)
        return None, *formulas.modulate_layernorm_backward(_ops(ctx.namespace), ctx, grad_y, grad_mean, grad_rstd)

    @staticmethod
    def jvp(ctx, _, dx, dshift, dscale, __):
        x, scale, *output = ctx.saved_tensors
        return modulate_layernorm_jvp(x, scale, ctx.eps, dx, dshift, dscale, output)


class _GatedResidual(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, x, gate, y):
        return _ops(namespace).gated_residual.default(x, gate, y)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, gate, y = inputs
        formulas.setup_gated_residual(ctx, (x, gate, y), output)
        ctx.save_for_forward(gate, y, output)

    @staticmethod
    def backward(ctx, grad):  # plain torch ops: differentiable again, and in forward mode
        return None, *formulas.gated_residual_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, _, dx, dgate, dy):
        gate, y, out = ctx.saved_tensors
        acc = _acc(gate)
        return _total(
            [
                dx,
                None if dgate is None else dgate.to(acc)[:, None] * y.to(acc),
                None if dy is None else gate.to(acc)[:, None] * dy.to(acc),
            ],
            out,
        )


class _ConditionSum(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, c, level, d_table, y, y_table):
        return _ops(namespace).condition_sum.default(c, level, d_table, y, y_table)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, c, level, d_table, y, y_table = inputs
        formulas.setup_condition_sum(ctx, (c, level, d_table, y, y_table), output)
        ctx.save_for_forward(level, y, output)

    @staticmethod
    def backward(ctx, grad):  # plain torch ops: differentiable again, and in forward mode
        return None, *formulas.condition_sum_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, _, dc, __, dd_table, ___, dy_table):
        level, y, out = ctx.saved_tensors
        rows = [None if dd_table is None else F.embedding(level, dd_table)]
        if dy_table is not None:
            rows.append(F.embedding(y, dy_table))
        return _total([dc, *rows], out)


class _TimestepFeatures(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, t, dim, max_period):
        return _ops(namespace).timestep_features.default(t, dim, max_period)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, t, ctx.dim, ctx.max_period = inputs
        ctx.save_for_forward(t)

    @staticmethod
    def jvp(ctx, _, dt, __, ___):
        (t,) = ctx.saved_tensors
        freqs = SF.timestep_frequencies(ctx.dim, ctx.max_period, t.device)
        args = (t.float() * SF.T_SCALE)[:, None] * freqs[None]  # as the reference forms them
        rate = torch.cat([-torch.sin(args), torch.cos(args)], dim=-1) * (SF.T_SCALE * freqs).repeat(2)  # d/dt
        return F.pad(dt.float()[:, None] * rate, (0, ctx.dim % 2))


class _EulerStep(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, x, v, d):
        return _ops(namespace).euler_step.default(x, v, d)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, v, d = inputs
        ctx.save_for_forward(x, v, d)

    @staticmethod
    def jvp(ctx, _, dx, dv, dd):
        x, v, d = ctx.saved_tensors
        return _total(
            [dx, None if dv is None else _per_sample(d, x) * dv, None if dd is None else _per_sample(dd, x) * v], x
        )


class _BootstrapMidpoint(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, x, v1, d, clip):
        return _ops(namespace).bootstrap_midpoint.default(x, v1, d, clip)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, v1, d, ctx.clip = inputs
        ctx.save_for_forward(x, v1, d)

    @staticmethod
    def jvp(ctx, _, dx, dv1, dd, __):
        x, v1, d = ctx.saved_tensors
        half = _per_sample(d, x) * 0.5
        tangent = _total(
            [dx, None if dv1 is None else half * dv1, None if dd is None else _per_sample(dd, x) * 0.5 * v1], x
        )
        return _masked(tangent, _clip_mask(x + half * v1, ctx.clip))


class _BootstrapTarget(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(namespace, v1, v2, clip):
        return _ops(namespace).bootstrap_target.default(v1, v2, clip)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, v1, v2, ctx.clip = inputs
        ctx.save_for_forward(v1, v2)

    @staticmethod
    def jvp(ctx, _, dv1, dv2, __):
        v1, v2 = ctx.saved_tensors
        return _masked(_total([dv1, dv2], v1) * 0.5, _clip_mask((v1 + v2) * 0.5, ctx.clip))


# The raw ops that dispatch.py's _fused_<op> functions call, each through its Function.
FUNCTIONS: dict[str, type[torch.autograd.Function]] = {
    "attention_fwd": _Attention,
    "modulate_layernorm_fwd": _ModulateLayerNorm,
    "gated_residual": _GatedResidual,
    "timestep_features": _TimestepFeatures,
    "condition_sum": _ConditionSum,
    "euler_step": _EulerStep,
    "bootstrap_midpoint": _BootstrapMidpoint,
    "bootstrap_target": _BootstrapTarget,
}


class _Overload:
    """``default``: the Function of one raw op with the namespace bound, called as ``torch.ops`` overloads are."""

    def __init__(self, function: type[torch.autograd.Function], namespace: str):
        self.default = functools.partial(function.apply, namespace)


class Transformed:
    """The raw ops of one namespace through the Functions above, in the shape of ``torch.ops.<namespace>``
    (``name``, ``<op>.default``), so that dispatch's ``_fused_<op>`` functions run them as they are."""

    def __init__(self, namespace: str):
        self.name = namespace
        for op, function in FUNCTIONS.items():
            setattr(self, op, _Overload(function, namespace))


_namespaces: dict[str, Transformed] = {}


def transformed(namespace: str) -> Transformed:
    """The raw ops of ``namespace`` (``backends.NATIVE_NAMESPACE`` or ``TRITON_NAMESPACE``) with JVP rules."""
    ops = _namespaces.get(namespace)
    if ops is None:
        ops = _namespaces[namespace] = Transformed(namespace)
    return ops
