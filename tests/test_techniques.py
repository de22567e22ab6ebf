"""The iSM techniques against independent computations: OT pairing, wavelet loss, intrinsic guidance, schedules."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from shortcut_fast.ops import reference as SF
from shortcut_fast.steps import check_schedule, resolve_schedule, step_schedule
from shortcut_fast.techniques.guidance import GuidanceEmbedder, draw_guidance_scales, guided_flow_target
from shortcut_fast.techniques.pairing import ot_pair, ot_permutation
from shortcut_fast.techniques.wavelet import haar2d, wavelet_loss

#################################################################################
#                               OT pairing                                      #
#################################################################################


def _pair_cost(x0, x1, sigma) -> float:
    return float(((x0[list(sigma)] - x1).double() ** 2).sum())


@pytest.mark.parametrize("batch,shape", [(1, (3,)), (2, (3,)), (4, (2,)), (5, (2, 2, 2)), (6, (1, 3, 2))])
def test_ot_permutation_matches_brute_force(batch, shape):
    gen = torch.Generator().manual_seed(batch)
    x0 = torch.randn((batch, *shape), generator=gen)
    x1 = torch.randn((batch, *shape), generator=gen) * 2 + 1
    sigma = ot_permutation(x0, x1)
    assert sorted(sigma.tolist()) == list(range(batch))
    best = min(_pair_cost(x0, x1, p) for p in itertools.permutations(range(batch)))
    assert _pair_cost(x0, x1, sigma.tolist()) == pytest.approx(best, rel=1e-12)
    assert torch.equal(ot_pair(x0, x1), x0[sigma])


def test_ot_pairing_lowers_the_cost_of_a_random_pairing():
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 2, generator=gen), torch.randn(64, 2, generator=gen) + 3
    assert _pair_cost(x0, x1, ot_permutation(x0, x1).tolist()) < _pair_cost(x0, x1, range(64))


def test_ot_permutation_refuses_mismatched_batches():
    with pytest.raises(ValueError, match="one shape"):
        ot_permutation(torch.zeros(3, 2), torch.zeros(4, 2))


#################################################################################
#                               wavelet loss                                    #
#################################################################################


def _haar_matrices(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The low-pass and high-pass halves (n/2, n) of the orthonormal 1D Haar analysis matrix."""
    low, high = np.zeros((n // 2, n)), np.zeros((n // 2, n))
    for i in range(n // 2):
        low[i, 2 * i] = low[i, 2 * i + 1] = 1 / math.sqrt(2)
        high[i, 2 * i], high[i, 2 * i + 1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
    return low, high


def _band_operators(h: int, w: int, levels: int) -> list[np.ndarray]:
    """Each sub-band as a matrix on row-major vec(image): level 1's LH, HL, HH, ..., then LL_J."""
    ops, rows, cols = [], np.eye(h), np.eye(w)  # rows / cols: the approximation so far, per axis
    for _ in range(levels):
        lh, hh_ = _haar_matrices(rows.shape[0])
        lw, hw = _haar_matrices(cols.shape[0])
        # vec(A X B^T) = kron(A, B) vec(X) for row-major vec
        ops += [np.kron(lh @ rows, hw @ cols), np.kron(hh_ @ rows, lw @ cols), np.kron(hh_ @ rows, hw @ cols)]
        rows, cols = lh @ rows, lw @ cols
    return ops + [np.kron(rows, cols)]


def _reference_loss_and_grad(pred, target, levels, weights):
    b, c, h, w = pred.shape
    per_band = [wt for wt in weights[:-1] for _ in range(3)] + [weights[-1]]
    err = (pred - target).double().reshape(b * c, h * w).numpy()
    loss, grad = np.zeros(b), np.zeros_like(err)
    for wt, op in zip(per_band, _band_operators(h, w, levels), strict=True):
        coef = err @ op.T  # (B*C, n_band)
        n_band = c * op.shape[0]
        loss += wt * (coef**2).reshape(b, -1).sum(1) / n_band
        grad += 2 * wt * (coef @ op) / n_band
    total = sum(per_band)
    return loss / total, grad.reshape(b, c, h, w) / total / b  # grad of the batch mean


def test_haar2d_is_the_orthonormal_transform():
    x = torch.randn(2, 3, 4, 6, dtype=torch.float64)
    ll, (lh, hl, hh) = haar2d(x)
    ops = _band_operators(4, 6, 1)
    flat = x.reshape(6, 24).numpy()
    for band, op in zip((lh, hl, hh, ll), ops, strict=True):
        np.testing.assert_allclose(band.reshape(6, -1).numpy(), flat @ op.T, atol=1e-12)
    energy = sum(float(t.pow(2).sum()) for t in (ll, lh, hl, hh))
    assert energy == pytest.approx(float(x.pow(2).sum()), rel=1e-12)  # Parseval


@pytest.mark.parametrize("levels,weights", [(1, None), (2, None), (2, (3.0, 0.5, 1.0)), (3, (1.0, 2.0, 4.0, 0.25))])
def test_wavelet_loss_and_gradient_match_the_direct_transform(levels, weights):
    gen = torch.Generator().manual_seed(levels)
    pred = torch.randn(3, 2, 8, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 2, 8, 16, generator=gen, dtype=torch.float64)
    loss = wavelet_loss(pred, target, levels, weights)
    ref_loss, ref_grad = _reference_loss_and_grad(pred.detach(), target, levels,
                                                  [1.0] * (levels + 1) if weights is None else list(weights))
    np.testing.assert_allclose(loss.detach().double().numpy(), ref_loss, rtol=1e-5)
    loss.mean().backward()
    np.testing.assert_allclose(pred.grad.numpy(), ref_grad, rtol=1e-4, atol=1e-9)


def test_wavelet_loss_with_size_weights_is_the_plain_l2():
    pred, target = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    levels = 3
    weights = [4.0**-level for level in range(1, levels + 1)] + [4.0**-levels]
    plain = (pred - target).pow(2).flatten(1).mean(1)
    torch.testing.assert_close(wavelet_loss(pred, target, levels, weights), plain, rtol=1e-5, atol=1e-6)


def test_wavelet_loss_refuses_shapes_the_levels_do_not_fit():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*3"):
        wavelet_loss(torch.zeros(1, 1, 12, 12), torch.zeros(1, 1, 12, 12), 3)
    with pytest.raises(ValueError, match="image batches"):
        wavelet_loss(torch.zeros(4, 2), torch.zeros(4, 2), 1)


#################################################################################
#                             intrinsic guidance                                #
#################################################################################


def test_guided_flow_target_is_cfg_of_an_exact_teacher():
    # point-mass classes: x1 = mu_y, so x1 - x0 is exactly the conditional velocity (mu_y - x_t) / (1 - t)
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])
    y = torch.tensor([0, 1, 2, 1, 0])
    t = torch.tensor([0.0, 0.25, 0.5, 0.75, 0.125])[:, None]
    x0 = torch.randn(5, 2, generator=gen)
    x1 = mu[y]
    x_t = (1 - t) * x0 + t * x1
    v_cond = (mu[y] - x_t) / (1 - t)
    # the unconditional velocity of the uniform mixture: the posterior mean of mu_y given x_t
    logp = -((x_t[:, None] - t[:, None] * mu[None]) ** 2).sum(-1) / (2 * (1 - t) ** 2)
    v_null = (torch.softmax(logp, dim=1)[..., None] * (mu[None] - x_t[:, None])).sum(1) / (1 - t)
    w = draw_guidance_scales(5, 1.0, 4.0, gen)
    target = guided_flow_target(x1 - x0, v_cond, v_null, w)
    torch.testing.assert_close(target, SF.guided_velocity(v_cond, v_null, w[:, None]))
    torch.testing.assert_close(guided_flow_target(x1 - x0, v_cond, v_null, torch.ones(5)), x1 - x0)


def test_guidance_scales_are_uniform_in_the_range():
    w = draw_guidance_scales(20000, 1.5, 3.5, torch.Generator().manual_seed(0))
    assert float(w.min()) >= 1.5 and float(w.max()) <= 3.5
    assert float(w.mean()) == pytest.approx(2.5, abs=0.02)
    assert float(w.var()) == pytest.approx(2.0**2 / 12, rel=0.05)


def test_guidance_embedder_starts_at_zero_and_then_depends_on_w():
    emb = GuidanceEmbedder(16)
    emb.initialize()
    w = torch.tensor([1.0, 2.0, 3.5])
    assert torch.equal(emb(w), torch.zeros(3, 16))
    torch.nn.init.normal_(emb.mlp[2].weight)
    out = emb(w)
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])


#################################################################################
#                             step schedules                                    #
#################################################################################


@pytest.mark.parametrize("min_step", [1 / 8, 1 / 128])
@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_step_schedule_uses_trained_levels_and_their_grids(min_step, order):
    for steps in range(1, round(1 / min_step) + 1):
        schedule = step_schedule(steps, min_step, order)
        assert len(schedule) == steps and math.fsum(schedule) == 1.0
        assert max(schedule) <= 2 * min(schedule)  # two adjacent levels at most: as even as levels allow
        assert check_schedule(schedule, min_step) == schedule
        t = 0.0
        for d in schedule:
            assert (t / d) == int(t / d)  # each step starts on its level's grid of trained times
            t += d
        assert list(schedule) == sorted(schedule, reverse=order == "descending")


def test_step_schedule_examples():
    assert step_schedule(3) == (0.5, 0.25, 0.25)
    assert step_schedule(3, order="ascending") == (0.25, 0.25, 0.5)
    assert step_schedule(4) == (0.25,) * 4
    assert step_schedule(6, 1 / 8) == (0.25, 0.25, 0.125, 0.125, 0.125, 0.125)
    assert resolve_schedule(2) == (0.5, 0.5)
    assert resolve_schedule([0.25, 0.5, 0.25]) == (0.25, 0.5, 0.25)


@pytest.mark.parametrize("schedule,match", [
    ([0.5, 0.25], "sum to 1"),
    ([0.5, 0.3, 0.2], "step size of the model"),
    ([1 / 256] * 256, "step size of the model"),
    ([True], "step size of the model"),
])
def test_check_schedule_errors(schedule, match):
    with pytest.raises(ValueError, match=match):
        check_schedule(schedule)


def test_step_schedule_errors():
    with pytest.raises(ValueError, match="order must be one of"):
        step_schedule(3, order="random")
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        step_schedule(9, 1 / 8)
    with pytest.raises(TypeError, match="non-empty sequence"):
        check_schedule([])
