"""The shortcut objective against an independent computation of its targets."""

import math

import pytest
import torch
from torch import nn

import shortcut_fast as sf
from shortcut_fast.objective import bootstrap_levels, make_batch

MIN_STEP = 1 / 8  # K = 3: levels d in {1/8, 1/4, 1/2, 1}


class Analytic(nn.Module):
    """v = w * (sin(3x) + t + log2 d) + 0.1 * y: every input visibly shapes the output."""

    def __init__(self, w=1.0, num_classes=3, min_step=MIN_STEP):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(w)))
        self.num_classes, self.min_step = num_classes, min_step

    def forward(self, x, t, d, y=None):
        shape = (-1,) + (1,) * (x.dim() - 1)
        v = self.w * (torch.sin(3 * x) + t.view(shape) + torch.log2(d).view(shape))
        if y is not None:
            v = v + 0.1 * y.float().view(shape)
        return v


def expected_target(f, x_t, t, d, y, clip):
    """The self-consistency target, written out from the method's definition."""
    shape = (-1,) + (1,) * (x_t.dim() - 1)
    v1 = f(x_t, t, d / 2, y)
    x_mid = x_t + (d / 2).view(shape) * v1
    if clip is not None:
        x_mid = x_mid.clamp(-clip, clip)
    v2 = f(x_mid, t + d / 2, d / 2, y)
    target = (v1 + v2) / 2
    return target if clip is None else target.clamp(-clip, clip)


def recover_noise(batch, x1):
    """x0 from x_t = (1 - t) x0 + t x1 (every t < 1 here)."""
    t = batch.t.view(-1, *([1] * (x1.dim() - 1)))
    return (batch.x_t - t * x1) / (1 - t)


def draw(model, x1, y=None, seed=0, target_model=None, **cfg):
    config = sf.ShortcutConfig(min_step=MIN_STEP, **cfg)
    return make_batch(model, x1, y, config, target_model, torch.Generator().manual_seed(seed)), config


# ---------------------------------------------------------------- levels and times
@pytest.mark.parametrize("batch", [8, 256])
def test_levels_cover_all_in_proportion(batch):
    config = sf.ShortcutConfig()  # K = 7: bootstrap levels d in {1/64, ..., 1}
    levels = [2.0**-k for k in range(7)]
    counts = {d: 0 for d in levels}
    n_boot = round(batch * config.bootstrap_fraction)
    draws = 7 * 60 // n_boot + 1
    for seed in range(draws):
        x1 = torch.randn(batch, 2)
        b = make_batch(
            Analytic(min_step=config.min_step), x1, config=config, generator=torch.Generator().manual_seed(seed)
        )
        per_batch = {d: int((b.d[: b.n_boot] == d).sum()) for d in levels}
        assert sum(per_batch.values()) == n_boot == b.n_boot
        # every batch spreads its rows over the levels as evenly as its size allows
        assert max(per_batch.values()) - min(per_batch.values()) <= 1
        for d in levels:
            counts[d] += per_batch[d]
    total = sum(counts.values())
    for d in levels:
        assert abs(counts[d] / total - 1 / 7) < 0.05, counts


def test_bootstrap_levels_balanced_over_offsets():
    gen = torch.Generator().manual_seed(1)
    seen = torch.zeros(8, dtype=torch.long)
    for _ in range(700):
        lv = bootstrap_levels(3, 7, gen)
        assert lv.min() >= 1 and lv.max() <= 7
        seen += torch.bincount(lv, minlength=8)
    assert seen[0] == 0
    assert (seen[1:] - 300).abs().max() < 60


def test_times_on_the_grid_of_their_step():
    x1 = torch.randn(64, 2)
    b, cfg = draw(Analytic(), x1)
    t_b, d_b = b.t[: b.n_boot], b.d[: b.n_boot]
    assert torch.all(d_b >= 2 * MIN_STEP)
    k = t_b / d_b
    assert torch.equal(k, k.round()) and torch.all(t_b + d_b <= 1)
    t_f = b.t[b.n_boot :]
    assert torch.all(b.d[b.n_boot :] == MIN_STEP)
    assert torch.equal(t_f * 8, (t_f * 8).round()) and torch.all(t_f < 1) and torch.all(t_f >= 0)
    assert b.n_boot == 16


def test_noisy_input_lies_on_the_straight_path():
    x1 = torch.randn(40, 3)
    b, _ = draw(Analytic(), x1)
    x0 = recover_noise(b, x1)
    # the noise is standard normal
    assert abs(float(x0.mean())) < 0.3 and abs(float(x0.std()) - 1) < 0.3


# ---------------------------------------------------------------- targets
@pytest.mark.parametrize("clip", [4.0, 0.3, None])
def test_targets_match_independent_computation(clip):
    torch.manual_seed(0)
    x1 = 2 * torch.randn(48, 1, 2, 3)
    y = torch.randint(0, 3, (48,))
    model, ema = Analytic(1.0), Analytic(0.7)
    b, cfg = draw(model, x1, y, target_model=ema, clip=clip)
    n = b.n_boot
    want_boot = expected_target(ema, b.x_t[:n], b.t[:n], b.d[:n], y[:n], clip)
    torch.testing.assert_close(b.target[:n], want_boot, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b.target[n:], x1[n:] - recover_noise(b, x1)[n:], rtol=1e-5, atol=1e-5)
    if clip is not None:
        assert b.target[:n].abs().max() <= clip


def test_live_weights_when_ema_targets_off():
    x1 = torch.randn(32, 2)
    model, ema = Analytic(1.0), Analytic(0.5)
    b, _ = draw(model, x1, target_model=ema, ema_targets=False)
    n = b.n_boot
    torch.testing.assert_close(b.target[:n], expected_target(model, b.x_t[:n], b.t[:n], b.d[:n], None, 4.0))
    # no target model at all: the live weights build the targets
    b2, _ = draw(model, x1)
    torch.testing.assert_close(b2.target[:n], expected_target(model, b2.x_t[:n], b2.t[:n], b2.d[:n], None, 4.0))


def test_class_dropout_only_on_flow_part():
    x1 = torch.randn(400, 2)
    y = torch.randint(0, 3, (400,))
    b, _ = draw(Analytic(), x1, y, class_dropout=1.0)
    assert torch.equal(b.y[: b.n_boot], y[: b.n_boot])
    assert torch.all(b.y[b.n_boot :] == 3)
    b, _ = draw(Analytic(), x1, y, class_dropout=0.0)
    assert torch.equal(b.y, y)
    b, _ = draw(Analytic(), x1, y, class_dropout=0.1)
    dropped = (b.y[b.n_boot :] == 3).float().mean()
    assert 0.05 < dropped < 0.15
    assert torch.equal(b.y[: b.n_boot], y[: b.n_boot])


def test_guided_targets_at_smallest_bootstrap_level():
    torch.manual_seed(1)
    x1 = torch.randn(64, 2)
    y = torch.randint(0, 3, (64,))
    w = 2.5
    model = Analytic()
    b, _ = draw(model, x1, y, bootstrap_cfg_scale=w, clip=None)
    n = b.n_boot

    def guided(x, t, d, yy):
        null = torch.full_like(yy, 3)
        return model(x, t, d, null) + w * (model(x, t, d, yy) - model(x, t, d, null))

    smallest = b.d[:n] == 2 * MIN_STEP
    assert smallest.any() and (~smallest).any()
    want_guided = expected_target(guided, b.x_t[:n], b.t[:n], b.d[:n], y[:n], None)
    want_plain = expected_target(model, b.x_t[:n], b.t[:n], b.d[:n], y[:n], None)
    torch.testing.assert_close(b.target[:n][smallest], want_guided[smallest])
    torch.testing.assert_close(b.target[:n][~smallest], want_plain[~smallest])
    assert not torch.allclose(want_guided[smallest], want_plain[smallest])


def test_flow_objective_has_no_consistency_part():
    x1 = torch.randn(16, 2)
    b, _ = draw(Analytic(), x1, objective="flow")
    assert b.n_boot == 0 and torch.all(b.d == MIN_STEP)
    loss, logs = sf.shortcut_loss(Analytic(), x1, config=sf.ShortcutConfig(min_step=MIN_STEP, objective="flow"))
    assert math.isnan(float(logs["consistency_loss"]))
    torch.testing.assert_close(loss.detach(), logs["flow_loss"])


# ---------------------------------------------------------------- the loss
def test_loss_is_mse_to_detached_targets():
    torch.manual_seed(2)
    x1 = torch.randn(20, 1, 2, 2)
    y = torch.randint(0, 3, (20,))
    model = Analytic(1.3)
    cfg = sf.ShortcutConfig(min_step=MIN_STEP, ema_targets=False)
    loss, logs = sf.shortcut_loss(model, x1, y, cfg, generator=torch.Generator().manual_seed(5))
    loss.backward()
    grad = model.w.grad.clone()

    b = make_batch(model, x1, y, cfg, generator=torch.Generator().manual_seed(5))
    model.w.grad = None
    err = (model(b.x_t, b.t, b.d, b.y) - b.target).pow(2).flatten(1).mean(1)
    err.mean().backward()
    torch.testing.assert_close(loss.detach(), err.mean().detach())
    torch.testing.assert_close(logs["consistency_loss"], err[: b.n_boot].mean().detach())
    torch.testing.assert_close(logs["flow_loss"], err[b.n_boot :].mean().detach())
    # the target is a constant: the gradient is that of the MSE to fixed targets
    torch.testing.assert_close(grad, model.w.grad)


def test_loss_with_package_models():
    model = sf.ShortcutMLP(dim=2, hidden_size=16, depth=1, num_classes=4)
    x1, y = torch.randn(12, 2), torch.randint(0, 4, (12,))
    loss, logs = sf.shortcut_loss(model, x1, y)
    loss.backward()
    assert torch.isfinite(loss) and set(logs) == {"loss", "flow_loss", "consistency_loss"}
    assert model.final_layer.linear.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, err",
    [
        ({"min_step": 0.3}, ValueError),
        ({"bootstrap_fraction": 1.0}, ValueError),
        ({"bootstrap_fraction": -0.1}, ValueError),
        ({"class_dropout": float("nan")}, ValueError),
        ({"clip": 0.0}, ValueError),
        ({"bootstrap_cfg_scale": float("inf")}, ValueError),
        ({"objective": "consistency"}, ValueError),
        ({"ema_targets": 1}, TypeError),
        ({"clip": "4"}, TypeError),
        ({"min_step": 1.0}, ValueError),
    ],
)
def test_config_rejects_bad_settings(kwargs, err):
    with pytest.raises(err):
        sf.ShortcutConfig(**kwargs)


def test_config_round_trip_and_unknown_keys():
    cfg = sf.ShortcutConfig(clip=None, bootstrap_cfg_scale=1.5)
    assert sf.ShortcutConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        sf.ShortcutConfig.from_dict({"bootstrap_frac": 0.2})


def test_loss_rejects_bad_input():
    model = Analytic()
    cfg = sf.ShortcutConfig(min_step=MIN_STEP)
    with pytest.raises(ValueError, match="min_step"):
        sf.shortcut_loss(model, torch.randn(4, 2))  # default config has 1/128
    with pytest.raises(ValueError, match="NaN"):
        sf.shortcut_loss(model, torch.full((4, 2), float("nan")), config=cfg)
    with pytest.raises(TypeError):
        sf.shortcut_loss(model, torch.ones(4, 2, dtype=torch.long), config=cfg)
    with pytest.raises(ValueError, match="shape"):
        sf.shortcut_loss(model, torch.randn(4, 2), torch.zeros(3, dtype=torch.long), config=cfg)
    with pytest.raises(ValueError, match="unconditional"):
        sf.shortcut_loss(Analytic(num_classes=0), torch.randn(4, 2), torch.zeros(4, dtype=torch.long), config=cfg)
    with pytest.raises(ValueError):
        sf.shortcut_loss(model, torch.randn(2), config=cfg)


@pytest.mark.parametrize("objective", ["shortcut", "flow"])
def test_shards_are_rows_of_the_global_batch(objective):
    torch.manual_seed(3)
    world, B = 3, 8
    x1 = torch.randn(world * B, 2)
    y = torch.randint(0, 3, (world * B,))
    model = Analytic(1.1)
    glob, _ = draw(model, x1, y, seed=4, objective=objective)
    for rank in range(world):
        cfg = sf.ShortcutConfig(min_step=MIN_STEP, objective=objective)
        part = make_batch(
            model, x1[rank::world], y[rank::world], cfg, generator=torch.Generator().manual_seed(4), shard=(rank, world)
        )
        for name in ("x_t", "t", "d", "y", "target"):
            torch.testing.assert_close(getattr(part, name), getattr(glob, name)[rank::world], msg=name)
        assert part.n_boot == len(range(rank, glob.n_boot, world))


def test_bad_shard_rejected():
    with pytest.raises(ValueError, match="shard"):
        make_batch(Analytic(), torch.randn(4, 2), config=sf.ShortcutConfig(min_step=MIN_STEP), shard=(2, 2))
