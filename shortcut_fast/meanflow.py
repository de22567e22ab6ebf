"""The MeanFlow objective (arXiv 2505.13447): regress the average velocity over a step through a JVP.

Conventions. MeanFlow writes ``z_t = (1 - t) x + t e`` (``t = 1`` is noise) and
the average velocity ``u(z_t, r, t)`` of the interval from ``t`` down to ``r``,
sampled as ``z_r = z_t - (t - r) u``. This package writes ``x_s = (1 - s) x0 + s x1``
(``s = 0`` is noise) and steps ``x_{s+d} = x_s + d u(x_s, s, d)``. So

    s = 1 - t,    d = t - r,    u_here(x, s, d) = -u_MeanFlow(z, r, t),

and ``u_here(x_s, s, d) = (1/d) ∫_s^{s+d} v(x_τ, τ) dτ`` along the trajectory
through ``x_s``, with ``d = 0`` the instantaneous velocity ``v``.

The identity (the paper's Eq. 6, here with the end ``e = s + d`` of the step
held fixed while ``s`` moves): ``d u = ∫_s^e v dτ``, differentiated in ``s``
along the trajectory, gives

    u(x_s, s, d) = v(x_s, s) + d · (∂_x u · v + ∂_s u - ∂_d u),

the paper's Eq. 8 in this convention (its ``t - r`` is ``d``; its ``d/dt`` is
``-d/ds`` and both ``u`` and ``v`` change sign). The bracket is the JVP of the
network along the tangent ``(v, 1, -1)`` of its inputs ``(x, s, d)``. The
target is ``u_tgt = sg(v + d · JVP)`` with the sample's velocity ``v = x1 - x0``
in place of the marginal one (Eq. 10), and the loss is the paper's adaptive
one (Sec. 4.3): ``sg(1 / (||Δ||² + c)^p) · ||Δ||²`` per row, ``Δ = u - u_tgt``,
``||·||²`` summed over the features.

Times (Sec. 4.3): two logit-normal draws ``sigmoid(N(μ, σ))`` in MeanFlow's
time, the larger one ``t`` and the smaller ``r``; on a share
``instant_fraction`` of the rows ``r = t`` (``d = 0``: flow matching). The
defaults are the paper's ImageNet ones: ``(μ, σ) = (-0.4, 1.0)``, 25% of the
rows with ``r ≠ t``, ``p = 1``, ``c = 1e-3`` (the value of the public ports).

Guidance (Sec. 4.2, Eq. 19): with ``meanflow_cfg_scale = ω`` the velocity of a
labelled row is ``ṽ = ω v + (1 - ω) sg(u(x_s, s, 0 | ∅))``, the network's own
unconditional instantaneous velocity, and ``ṽ`` replaces ``v`` in the tangent
and the target; rows whose label was dropped keep ``v``. The model then
samples guided in one step, without ``cfg_scale``. The paper's second mixing
term (its appendix's ``κ``) is not built.

Choices of ours: the JVP is forward-mode AD (``torch.autograd.forward_ad``),
which the fused ops serve with their own rules (``ops/jvp.py``). In one
process it runs on the rows with ``d > 0`` only, and the ``d = 0`` rows (whose
target is ``v``) take a plain forward; under torchrun the whole batch takes the
JVP, one forward, as DDP allows one forward per backward.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD

from . import checks
from .checks import check_velocity

ADAPTIVE_EPS = 1e-3  # c of the adaptive weight 1 / (||Δ||² + c)^p
FD_STEP = 1e-3  # h of the central difference: t and d enter unstretched, so u is smooth on this scale
DERIVATIVES = ("jvp", "central_difference")


def stepping_rows(n: int, instant_fraction: float) -> int:
    """How many of ``n`` rows ``draw_times`` gives ``d > 0``: the first ``round(n (1 - instant_fraction))``."""
    return round(n * (1.0 - instant_fraction))


def draw_times(
    n: int, mean: float, std: float, instant_fraction: float, generator=None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, d)`` of ``n`` rows: logit-normal MeanFlow times mapped to this package's convention.

    Rows ``[0, stepping_rows(n, instant_fraction))`` have ``d > 0``, the rest ``d = 0``.
    ``s + d <= 1`` on every row.
    """
    normal = torch.randn(2, n, generator=generator, device=device)
    a, b = torch.sigmoid(mean + std * normal)
    t, r = torch.maximum(a, b), torch.minimum(a, b)  # MeanFlow's end points, t = 1 noise
    n_step = stepping_rows(n, instant_fraction)
    r = torch.cat([r[:n_step], t[n_step:]])
    return 1.0 - t, t - r


def guided_velocity(model, x, s, y, v, scale: float, null_class: int, dropped: torch.Tensor) -> torch.Tensor:
    """``ṽ = ω v + (1 - ω) u(x, s, 0 | ∅)`` on the rows not ``dropped`` (no gradient), ``v`` on the others."""
    with torch.no_grad():
        zeros = torch.zeros_like(s)
        u_null = check_velocity(model(x, s, zeros, torch.full_like(y, null_class)), x.shape)
        guided = scale * v + (1.0 - scale) * u_null.to(v.dtype)
    keep = dropped.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, v, guided)


def average_velocity_and_target(
    model, x, s, d, y, v, n_step: int | None = None, derivative: str = "jvp"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``u(x, s, d)`` (differentiable in the weights) and its target ``sg(v + d · JVP)``.

    The JVP is the derivative of ``u`` along ``(dx, ds, dd) = (v, 1, -1)`` (see the module doc):
    ``derivative="jvp"`` takes it exactly by forward-mode AD, ``"central_difference"`` as
    ``(u(x + h v, s + h, d - h) - u(x - h v, s - h, d + h)) / 2h`` from one more forward of twice the rows
    without gradients (``h = min(d, FD_STEP)``), the fallback of ports whose attention has no JVP.
    ``n_step``: rows ``[0, n_step)`` have ``d > 0`` and the others ``d = 0``, whose target is ``v`` without a
    JVP: two forwards, the JVP on the first rows only. ``None``: one forward, the JVP on every row.
    """
    if n_step is not None and n_step < x.shape[0]:
        with checks.trusted_inputs():
            u_flow = check_velocity(
                model(x[n_step:], s[n_step:], d[n_step:], None if y is None else y[n_step:]), x[n_step:].shape
            )
        wide = torch.promote_types(u_flow.dtype, torch.float32)
        if n_step == 0:
            return u_flow, v.to(wide).detach()
        u, target = average_velocity_and_target(
            model, x[:n_step], s[:n_step], d[:n_step], None if y is None else y[:n_step], v[:n_step], None, derivative
        )
        return torch.cat([u, u_flow]), torch.cat([target, v[n_step:].to(wide).detach()])
    u, dudt = _jvp(model, x, s, d, y, v) if derivative == "jvp" else _central_difference(model, x, s, d, y, v)
    expand = (-1,) + (1,) * (x.dim() - 1)
    wide = torch.promote_types(u.dtype, torch.float32)  # bf16 outputs get an fp32 target; fp64 stays fp64
    target = (v.to(wide) + d.view(expand).to(wide) * dudt.to(wide)).detach()
    return u, target


def _jvp(model, x, s, d, y, v) -> tuple[torch.Tensor, torch.Tensor]:
    with fwAD.dual_level(), checks.trusted_inputs():
        out = model(
            fwAD.make_dual(x, v.to(x.dtype)),
            fwAD.make_dual(s, torch.ones_like(s)),
            fwAD.make_dual(d, -torch.ones_like(d)),
            y,
        )
        u, dudt = fwAD.unpack_dual(out)
    u = check_velocity(u, x.shape)
    if dudt is None:  # nothing carried a tangent: a model that ignores x, s and d
        raise RuntimeError("the model's output carries no tangent: MeanFlow needs u to depend on (x, s, d)")
    return u, dudt


def _central_difference(model, x, s, d, y, v) -> tuple[torch.Tensor, torch.Tensor]:
    with checks.trusted_inputs():
        u = check_velocity(model(x, s, d, y), x.shape)
        # h <= d keeps d - h >= 0; rows with d = 0 get FD_STEP, their term is multiplied by d = 0
        h = torch.where(d > 0, d.clamp(max=FD_STEP), torch.full_like(d, FD_STEP))
        hx = h.view((-1,) + (1,) * (x.dim() - 1)).to(x.dtype)
        with torch.no_grad():
            both = model(
                torch.cat([x + hx * v.to(x.dtype), x - hx * v.to(x.dtype)]),
                torch.cat([s + h, s - h]),
                torch.cat([d - h, d + h]),
                None if y is None else torch.cat([y, y]),
            )
            ahead, behind = check_velocity(both, (2 * x.shape[0], *x.shape[1:])).chunk(2)
            wide = torch.promote_types(u.dtype, torch.float32)
            dudt = (ahead.to(wide) - behind.to(wide)) / (2 * hx.to(wide))
    return u, dudt


def adaptive_loss(u: torch.Tensor, target: torch.Tensor, power: float, eps: float = ADAPTIVE_EPS):
    """Per row: ``||Δ||²`` (summed over features), and the loss ``sg((||Δ||² + eps)^-power) · ||Δ||²``."""
    err = (u.to(target.dtype) - target).pow(2).flatten(1).sum(1)
    weight = (err.detach() + eps).pow(-power)
    return err, weight * err
