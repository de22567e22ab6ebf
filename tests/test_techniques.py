"""The iSM techniques against independent computations (OT pairing, wavelet loss, intrinsic guidance, twin EMA),
and sampling with any step count."""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import TINY_DIT
from helpers import perturb_

import shortcut_fast as sf
from shortcut_fast.objective import make_batch, shortcut_loss
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
    ref_loss, ref_grad = _reference_loss_and_grad(
        pred.detach(), target, levels, [1.0] * (levels + 1) if weights is None else list(weights)
    )
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


@pytest.mark.parametrize(
    "schedule,match",
    [
        ([0.5, 0.25], "sum to 1"),
        ([0.5, 0.3, 0.2], "step size of the model"),
        ([1 / 256] * 256, "step size of the model"),
        ([True], "step size of the model"),
    ],
)
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


#################################################################################
#                   the options through the objective, sampler, trainer         #
#################################################################################

MU = torch.tensor([[2.0, 0.0], [-1.0, 1.5], [0.0, -2.0]])  # three point-mass classes


def _exact_velocities(x, t):
    """The conditional velocities of every class and the unconditional one, for the point masses ``MU``."""
    t = t.view(-1, 1)
    v_all = (MU[None] - x[:, None]) / (1 - t[:, None])  # (B, classes, 2)
    logp = -((x[:, None] - t[:, None] * MU[None]) ** 2).sum(-1) / (2 * (1 - t) ** 2)
    return v_all, (torch.softmax(logp, dim=1)[..., None] * v_all).sum(1)


class ExactTeacher(nn.Module):
    """The exact velocity of the point masses at any d, with a guidance input that it records."""

    guidance_input = True
    num_classes = 3

    def __init__(self):
        super().__init__()
        self.seen_w = []

    def forward(self, x, t, d, y, w=None):
        self.seen_w.append(w)
        v_all, v_null = _exact_velocities(x, t)
        rows = torch.arange(x.shape[0])
        return torch.where((y == 3)[:, None], v_null, v_all[rows, y.clamp(max=2)])


def test_intrinsic_flow_targets_are_two_forward_cfg_of_the_exact_velocity():
    teacher = ExactTeacher()
    y = torch.arange(64) % 3
    config = sf.ShortcutConfig(min_step=1 / 8, intrinsic_guidance=(1.0, 5.0), class_dropout=0.3)
    batch = make_batch(teacher, MU[y], y, config, target_model=teacher, generator=torch.Generator().manual_seed(0))
    flow = slice(batch.n_boot, None)
    v_all, v_null = _exact_velocities(batch.x_t[flow], batch.t[flow])
    labelled = batch.y[flow] < 3
    assert 0 < int(labelled.sum()) < labelled.numel()  # both kinds of rows are in the batch
    v_cond = v_all[torch.arange(v_all.shape[0]), y[flow]]
    w = batch.w[flow]
    expected = torch.where(labelled[:, None], SF.guided_velocity(v_cond, v_null, w[:, None]), v_cond)
    torch.testing.assert_close(batch.target[flow], expected, rtol=1e-4, atol=1e-4)
    assert torch.all(w[~labelled] == 1) and float(w[labelled].min()) >= 1 and float(w[labelled].max()) <= 5
    # the self-consistency rows: the teacher's half steps see each row's own w
    assert any(
        seen is not None and seen.shape == (batch.n_boot,) and torch.equal(seen, batch.w[: batch.n_boot])
        for seen in teacher.seen_w
    )


def _recovered_noise(batch, x1):
    t = batch.t.view(-1, *([1] * (x1.dim() - 1)))
    return (batch.x_t - t * x1) / (1 - t)


def _is_permutation_of(a, b):
    return all(any(torch.allclose(row, other, atol=1e-5) for other in b) for row in a) and len(a) == len(b)


def test_ot_pairing_with_labels_pairs_within_each_class():
    gen = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(11, 3, generator=gen), torch.randn(11, 3, generator=gen) + 1
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 2, 1, 0, 0, 2])
    paired = ot_pair(x0, x1, labels)
    for c in range(3):
        rows = (labels == c).nonzero().flatten()
        # the class keeps the noise at its own positions, in the order of a brute-force best assignment
        assert _is_permutation_of(paired[rows], x0[rows])
        best = min(_pair_cost(x0[rows], x1[rows], p) for p in itertools.permutations(range(len(rows))))
        assert _pair_cost(paired[rows], x1[rows], range(len(rows))) == pytest.approx(best, rel=1e-12)
    # one label for all rows is the unlabelled pairing
    assert torch.equal(ot_pair(x0, x1, torch.zeros(11, dtype=torch.long)), ot_pair(x0, x1))
    with pytest.raises(ValueError, match=r"labels must have shape \(11,\)"):
        ot_pair(x0, x1, labels[:5])


def test_ot_pairing_in_make_batch_pairs_each_ranks_rows():
    model = sf.ShortcutMLP(dim=2, hidden_size=8, depth=1, min_step=1 / 8)
    x1 = torch.randn(12, 2, generator=torch.Generator().manual_seed(1)) * 2
    plain = sf.ShortcutConfig(min_step=1 / 8, objective="flow")
    x0_global = _recovered_noise(make_batch(model, x1, config=plain, generator=torch.Generator().manual_seed(5)), x1)
    paired = sf.ShortcutConfig(min_step=1 / 8, objective="flow", ot_pairing=True)
    for rank in range(2):
        rows = x1[rank::2]
        batch = make_batch(model, rows, config=paired, generator=torch.Generator().manual_seed(5), shard=(rank, 2))
        x0 = _recovered_noise(batch, rows)
        assert _is_permutation_of(x0, x0_global[rank::2])  # the rank's own noise, reordered
        best = min(_pair_cost(x0_global[rank::2], rows, p) for p in itertools.permutations(range(6)))
        assert _pair_cost(x0, rows, range(6)) == pytest.approx(best, rel=1e-5)


def test_wavelet_option_is_the_wavelet_loss_of_the_batch(tiny_dit):
    x1, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 10
    config = sf.ShortcutConfig(wavelet_levels=2, wavelet_weights=(2.0, 1.0, 0.5))
    loss, logs = shortcut_loss(tiny_dit, x1, y, config, generator=torch.Generator().manual_seed(0))
    batch = make_batch(tiny_dit, x1, y, config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        v = tiny_dit(batch.x_t, batch.t, batch.d, batch.y)
    ref, _ = _reference_loss_and_grad(v.double(), batch.target.double(), 2, [2.0, 1.0, 0.5])
    assert float(loss.detach()) == pytest.approx(float(ref.mean()), rel=1e-5)


@pytest.mark.parametrize(
    "config,match",
    [
        (dict(intrinsic_guidance=(2.0, 1.0)), "low <= high"),
        (dict(intrinsic_guidance=(1.0,)), "pair"),
        (dict(intrinsic_guidance=(1.0, 3.0), bootstrap_cfg_scale=2.0), "exclude each other"),
        (dict(wavelet_levels=-1), "wavelet_levels"),
        (dict(wavelet_weights=(1.0, 1.0)), "needs wavelet_levels"),
        (dict(wavelet_levels=1, wavelet_weights=(1.0,)), "2 numbers"),
        (dict(wavelet_levels=1, wavelet_weights=(0.0, 0.0)), "not all be 0"),
    ],
)
def test_technique_settings_errors(config, match):
    with pytest.raises(ValueError, match=match):
        sf.ShortcutConfig(**config)


def test_technique_settings_round_trip_through_a_dict():
    config = sf.ShortcutConfig(
        intrinsic_guidance=(1.0, 4.0), wavelet_levels=2, wavelet_weights=(1.0, 2.0, 3.0), ot_pairing=True
    )
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}
    assert sf.ShortcutConfig.from_dict(as_json) == config


def test_batch_errors_name_the_option(tiny_dit):
    with pytest.raises(ValueError, match="divisible by 2\\*\\*4"):
        shortcut_loss(tiny_dit, torch.randn(2, 1, 8, 8), config=sf.ShortcutConfig(wavelet_levels=4))
    with pytest.raises(ValueError, match="guidance_input=True"):
        shortcut_loss(
            tiny_dit,
            torch.randn(2, 1, 8, 8),
            torch.tensor([0, 1]),
            config=sf.ShortcutConfig(intrinsic_guidance=(1.0, 3.0)),
        )


def _guided_dit():
    return perturb_(sf.ShortcutDiT(**TINY_DIT, num_classes=10, guidance_input=True), seed=4).eval()


def _euler(model, z, schedule, y=None, w=None):
    """A hand-written Euler loop over an explicit schedule; ``w`` goes in as the model's guidance input."""
    x, t = z.clone(), 0.0
    with torch.no_grad():
        for d in schedule:
            x = x + d * (model(x, t, d, y) if w is None else model(x, t, d, y, w=w))
            t += d
    return x


@pytest.mark.parametrize(
    "steps,schedule", [(3, (0.5, 0.25, 0.25)), (5, (0.25,) * 3 + (0.125,) * 2), ((0.25, 0.25, 0.5), (0.25, 0.25, 0.5))]
)
def test_sampling_any_step_count_follows_the_schedule(tiny_dit, steps, schedule):
    z, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    torch.testing.assert_close(
        sf.sample(tiny_dit, noise=z, steps=steps, y=y), _euler(tiny_dit, z, schedule, y), rtol=1e-5, atol=1e-5
    )


def test_intrinsic_sampling_is_one_forward_with_the_scale_as_input():
    model = _guided_dit()
    z, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 4, 9])
    for w in (1.0, 2.5):
        torch.testing.assert_close(
            sf.sample(model, noise=z, steps=3, y=y, cfg_scale=w),
            _euler(model, z, (0.5, 0.25, 0.25), y, w=torch.full((3,), w)),
            rtol=1e-5,
            atol=1e-5,
        )
    torch.testing.assert_close(
        sf.sample(model, noise=z, steps=2, y=y), sf.sample(model, noise=z, steps=2, y=y, cfg_scale=1.0)
    )
    assert not torch.allclose(
        sf.sample(model, noise=z, y=y, cfg_scale=1.0), sf.sample(model, noise=z, y=y, cfg_scale=3.0)
    )
    with pytest.raises(ValueError, match=">= 0"):
        sf.sample(model, noise=z, y=y, cfg_scale=-1.0)


def test_guidance_input_errors(tiny_dit):
    with pytest.raises(ValueError, match="no guidance input"):
        tiny_dit(torch.randn(2, 1, 8, 8), 0.0, 1.0, torch.tensor([0, 1]), w=2.0)
    with pytest.raises(ValueError, match="class-conditional"):
        sf.ShortcutMLP(dim=2, num_classes=0, guidance_input=True)
    with pytest.raises(ValueError, match="finite and >= 0"):
        _guided_dit()(torch.randn(2, 1, 8, 8), 0.0, 1.0, torch.tensor([0, 1]), w=torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="conditioning='shortcut' only"):
        sf.ShortcutDiT(**TINY_DIT, num_classes=4, conditioning="official", guidance_input=True)
    with pytest.raises(TypeError, match="guidance_input must be a bool"):
        sf.ShortcutMLP(dim=2, num_classes=3, guidance_input=1)
    # check_inputs validates w like the forward does
    with pytest.raises(ValueError, match="finite and >= 0"):
        _guided_dit().check_inputs(torch.randn(2, 1, 8, 8), 0.0, 1.0, torch.tensor([0, 1]), w=-1.0)


def test_guided_model_saves_and_loads(tmp_path):
    model = _guided_dit()
    sf.save_model(model, tmp_path / "m")
    loaded = sf.load_model(tmp_path / "m")
    z, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    assert loaded.guidance_input
    torch.testing.assert_close(
        sf.sample(loaded, noise=z, y=y, cfg_scale=2.0), sf.sample(model, noise=z, y=y, cfg_scale=2.0)
    )


def _twin_trainer(**kw):
    torch.manual_seed(0)
    model = sf.ShortcutMLP(dim=2, hidden_size=16, depth=2, num_classes=3, min_step=1 / 8)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (32,), generator=g)
    x = torch.randn(32, 2, generator=g) * 0.1 + torch.stack([y.float(), -y.float()], 1)
    config = sf.TrainConfig(
        batch_size=8,
        lr=1e-2,
        ema_decay=0.9,
        target_ema_decay=0.5,
        progress=False,
        seed=1,
        shortcut=sf.ShortcutConfig(min_step=1 / 8),
        **kw,
    )
    return sf.Trainer(model, (x, y), config), (x, y)


@pytest.mark.slow
def test_twin_ema_follows_both_decays_and_feeds_the_targets(monkeypatch):
    import shortcut_fast.train.trainer as trainer_module

    teachers = []
    original = trainer_module.self_consistency_targets

    def spy(teacher, *args, **kwargs):
        teachers.append(teacher)
        return original(teacher, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "self_consistency_targets", spy)
    trainer, _ = _twin_trainer()
    start = [p.detach().clone() for p in trainer.model.parameters()]
    slow, fast = [p.clone() for p in start], [p.clone() for p in start]
    for _ in range(4):
        trainer.fit(1)
        live = [p.detach() for p in trainer.model.parameters()]
        slow = [0.9 * e + 0.1 * w for e, w in zip(slow, live, strict=True)]
        fast = [0.5 * e + 0.5 * w for e, w in zip(fast, live, strict=True)]
    for got, want in [(trainer.ema_model, slow), (trainer.target_ema_model, fast)]:
        for p, q in zip(got.parameters(), want, strict=True):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert teachers and all(t is trainer.target_ema_model for t in teachers)
    assert trainer.target_ema_model is not trainer.ema_model


def test_twin_ema_is_saved_and_resumed(tmp_path):
    trainer, data = _twin_trainer()
    trainer.fit(3)
    trainer.save(tmp_path / "c")
    resumed = sf.Trainer.resume(tmp_path / "c", data)
    for a, b in zip(resumed.target_ema_model.parameters(), trainer.target_ema_model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not all(
        torch.equal(a, b)
        for a, b in zip(resumed.target_ema_model.parameters(), resumed.ema_model.parameters(), strict=True)
    )
    # resumed, the run goes on bit for bit as the uninterrupted one, both EMAs included
    trainer.fit(2)
    resumed.fit(2)
    for name in ("model", "ema_model", "target_ema_model"):
        for a, b in zip(getattr(resumed, name).parameters(), getattr(trainer, name).parameters(), strict=True):
            assert torch.equal(a, b), name


def test_train_step_with_a_target_ema_is_the_trainers_twin_ema_step():
    trainer, _ = _twin_trainer()
    model = copy.deepcopy(trainer.model)
    ema, fast = copy.deepcopy(trainer.ema_model), copy.deepcopy(trainer.target_ema_model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0, fused=True)
    generator = torch.Generator().manual_seed(1)  # the trainer's seed
    x1, y = next(trainer.data)
    trainer.train_step(x1, y)
    sf.train_step(
        model,
        optimizer,
        x1,
        y,
        config=trainer.config.shortcut,
        ema_model=ema,
        ema_decay=0.9,
        target_ema_model=fast,
        target_ema_decay=0.5,
        generator=generator,
    )
    for mine, theirs in [(model, trainer.model), (ema, trainer.ema_model), (fast, trainer.target_ema_model)]:
        for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_every_option_trains_a_few_steps():
    torch.manual_seed(0)
    model = sf.ShortcutDiT(**TINY_DIT, num_classes=4, guidance_input=True)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 4
    shortcut = sf.ShortcutConfig(intrinsic_guidance=(1.0, 3.0), wavelet_levels=2, ot_pairing=True)
    trainer = sf.Trainer(
        model,
        (x, y),
        sf.TrainConfig(batch_size=8, lr=1e-3, target_ema_decay=0.9, progress=False, log_every=1, shortcut=shortcut),
    )
    history = trainer.fit(3)
    assert trainer.skipped_steps == 0 and all(math.isfinite(row["loss"]) for row in history)
