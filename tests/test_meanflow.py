"""MeanFlow and continuous step sizes: the identity on a closed form, the JVP target, the draws, the loss,
sampling, saving, resuming, and the errors."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import expect_error, perturb_

import shortcut_fast as sf
from shortcut_fast import meanflow
from shortcut_fast.finetune import copy_flow_level
from shortcut_fast.ops import backends


class GaussianFlowMap(torch.nn.Module):
    """The exact average velocity of the flow from N(0, I) noise (s = 0) to N(mu, sigma^2 I) data (s = 1).

    With independent pairs, x_s has mean ``s mu`` and std ``a(s) = sqrt((1 - s)^2 + s^2 sigma^2)``, and the
    probability-flow ODE moves ``x_s`` to ``x_e = e mu + a(e) / a(s) (x_s - s mu)``: so
    ``u(x, s, d) = (x_{s+d} - x) / d``, in closed form, differentiable in x, s and d.
    """

    continuous_steps = True

    def __init__(self, mu: float, sigma: float):
        super().__init__()
        self.mu, self.sigma = mu, sigma
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # a device and dtype for the objective's checks

    def a(self, s):
        return torch.sqrt((1 - s) ** 2 + (s * self.sigma) ** 2)

    def velocity(self, x, s):
        """The marginal velocity v(x, s) = mu + a'(s) / a(s) (x - s mu)."""
        s = s.view(-1, 1)
        da = (-(1 - s) + s * self.sigma**2) / self.a(s)
        return self.mu + da / self.a(s) * (x - s * self.mu)

    def forward(self, x, s, d, y=None):
        s, d = s.view(-1, 1), d.view(-1, 1)
        e = s + d
        return (e * self.mu + self.a(e) / self.a(s) * (x - s * self.mu) - x) / d


@pytest.mark.parametrize("s, d", [(0.0, 1.0), (0.1, 0.5), (0.5, 0.25), (0.8, 0.2), (0.3, 1e-3)])
def test_the_target_of_the_exact_flow_map_is_the_flow_map(s, d):
    """MeanFlow's identity u = v + d (∂x u · v + ∂s u - ∂d u), with the marginal velocity: exact for the exact u."""
    oracle = GaussianFlowMap(mu=1.5, sigma=0.5).double()
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s_, d_ = torch.full((7,), s, dtype=torch.float64), torch.full((7,), d, dtype=torch.float64)
    u, target = meanflow.average_velocity_and_target(oracle, x, s_, d_, None, oracle.velocity(x, s_))
    torch.testing.assert_close(u, oracle(x, s_, d_), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(target, u, rtol=1e-9, atol=1e-9)
    # the identity is not an accident of the oracle: the instantaneous velocity differs from the average one
    assert (oracle.velocity(x, s_) - u).abs().max() > 1e-2 or d < 0.01


def test_a_wrong_sign_of_the_step_tangent_breaks_the_identity():
    """The same check with the tangent of d flipped (+1, as if d moved with s): the target is off."""
    oracle = GaussianFlowMap(mu=1.5, sigma=0.5).double()
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    s, d = torch.full((5,), 0.2, dtype=torch.float64), torch.full((5,), 0.6, dtype=torch.float64)
    v = oracle.velocity(x, s)
    _, tangent = torch.func.jvp(oracle, (x, s, d), (v, torch.ones_like(s), torch.ones_like(d)))
    assert (v + d.view(-1, 1) * tangent - oracle(x, s, d)).abs().max() > 1e-2


def _model(kind: str, dtype: torch.dtype):
    if kind == "dit":
        model = sf.ShortcutDiT(
            input_size=4, in_channels=2, patch_size=2, hidden_size=64, depth=1, num_heads=2, num_classes=3,
            step_embedding="sinusoidal",
        )  # fmt: skip
    else:
        model = sf.ShortcutMLP(dim=3, hidden_size=32, depth=2, num_classes=3, step_embedding="sinusoidal")
    return perturb_(model, seed=0, scale=0.1).to(dtype).eval()


def _backend(name: str) -> torch.dtype:
    if name == "native" and not backends.native_available():
        pytest.skip("needs the C++ extension")
    if name == "triton" and not (backends.triton_available() and backends.triton_interpreted()):
        pytest.skip("needs Triton under TRITON_INTERPRET=1")
    return torch.float32 if name == "triton" else torch.float64


@pytest.mark.parametrize("kind", ["mlp", "dit"])
@pytest.mark.parametrize("backend", ["reference", "native", "triton"])
def test_the_target_is_the_derivative_along_the_trajectory(kind, backend):
    """``v + d · JVP`` of the backend's fused rules under forward-mode AD, against ``torch.func.jvp`` of the fp64
    reference along ``(v, 1, -1)``, and against a central difference ``(u(x + h v, s + h, d - h) -
    u(x - h v, s - h, d + h)) / 2h`` (loose: the timestep features are fp32 on every backend)."""
    dtype = _backend(backend)
    model = _model(kind, dtype)
    shape = (3, 2, 4, 4) if kind == "dit" else (3, 3)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)
    s, d = torch.tensor([0.2, 0.5, 0.1], dtype=dtype), torch.tensor([0.5, 0.3, 0.0], dtype=dtype)
    y = torch.tensor([0, 1, 3])
    with sf.backend(backend):
        u, target = meanflow.average_velocity_and_target(model, x, s, d, y, v)
    m64, (x, v, s, d) = model.double(), (a.double() for a in (x, v, s, d))
    expand = (-1,) + (1,) * (x.dim() - 1)
    with sf.backend("reference"):
        plain, jvp = torch.func.jvp(
            lambda x, s, d: m64(x, s, d, y), (x, s, d), (v, torch.ones_like(s), -torch.ones_like(d))
        )
        h = 1e-3
        ahead = m64(x + h * v, s + h, (d - h).abs(), y)  # |d - h|: at d = 0 the term vanishes whatever the slope
        behind = m64(x - h * v, s - h, d + h, y)
    assert (jvp * d.view(expand)).abs().max() > 1e-2  # the JVP term is there
    tol = 2e-4 if dtype == torch.float32 else 1e-6
    torch.testing.assert_close(u.double(), plain, rtol=tol, atol=tol)
    torch.testing.assert_close(target.double(), v + d.view(expand) * jvp, rtol=tol, atol=tol)
    central = v + d.view(expand) * (ahead - behind) / (2 * h)
    torch.testing.assert_close(target.double()[:2], central[:2], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("kind", ["mlp", "dit"])
def test_the_central_difference_target_is_the_jvp_target(kind):
    """The finite-difference option against the exact JVP in fp64: they differ by the difference's O(h²) only
    (a row with d < FD_STEP takes h = d)."""
    model = _model(kind, torch.float64)
    shape = (4, 2, 4, 4) if kind == "dit" else (4, 3)
    g = torch.Generator().manual_seed(3)
    x, v = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    s, d = (
        torch.tensor([0.2, 0.5, 0.1, 0.3], dtype=torch.float64),
        torch.tensor([0.5, 0.3, 0.0, 1e-4], dtype=torch.float64),
    )
    y = torch.tensor([0, 1, 3, 2])
    with sf.backend("reference"):
        u, exact = meanflow.average_velocity_and_target(model, x, s, d, y, v)
        u_fd, difference = meanflow.average_velocity_and_target(model, x, s, d, y, v, derivative="central_difference")
    assert (exact - v).abs().max() > 1e-2
    torch.testing.assert_close(u_fd, u)
    torch.testing.assert_close(difference, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_step", [0, 2, 5])
def test_the_jvp_on_the_stepping_rows_only_is_the_jvp_on_every_row(n_step):
    """One process runs the JVP on the d > 0 rows and a plain forward on the d = 0 rows: the same values and
    gradients as one forward with the JVP on every row (torchrun's path)."""
    model = _model("dit", torch.float64)
    g = torch.Generator().manual_seed(4)
    x, v = (
        torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64),
        torch.randn(5, 2, 4, 4, generator=g, dtype=torch.float64),
    )
    s = torch.tensor([0.1, 0.4, 0.2, 0.6, 0.3], dtype=torch.float64)
    d = torch.tensor([0.5, 0.2, 0.1, 0.3, 0.6], dtype=torch.float64) * (torch.arange(5) < n_step)
    y = torch.tensor([0, 1, 2, 3, 1])
    results = []
    for split in (n_step, None):
        model.zero_grad(set_to_none=True)
        u, target = meanflow.average_velocity_and_target(model, x, s, d, y, v, split)
        meanflow.adaptive_loss(u, target, 1.0)[1].mean().backward()
        results.append((u.detach(), target, [p.grad.clone() for p in model.parameters()]))
    (u1, t1, g1), (u2, t2, g2) = results
    torch.testing.assert_close(u1, u2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t1, t2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_the_draws_are_the_papers_logit_normal_pairs_in_this_convention():
    n, mean, std = 200_000, -0.4, 1.0
    s, d = meanflow.draw_times(n, mean, std, 0.0, torch.Generator().manual_seed(0))
    assert bool((d >= 0).all() and (s >= 0).all() and (s + d <= 1).all())
    t, r = 1 - s, 1 - s - d  # MeanFlow's times: t >= r
    logit = lambda p: torch.log(p) - torch.log1p(-p)  # noqa: E731
    pair = torch.stack([logit(t), logit(r.clamp_min(1e-12))])
    # sorting a pair keeps its sum and its sum of squares: the moments of two independent N(mean, std) draws
    assert abs(pair.sum(0).mean().item() - 2 * mean) < 0.02
    assert abs(pair.pow(2).sum(0).mean().item() - 2 * (std**2 + mean**2)) < 0.05
    s, d = meanflow.draw_times(1000, mean, std, 0.75, torch.Generator().manual_seed(1))
    assert int((d > 0).sum()) == 250 and bool((d[250:] == 0).all())


def test_the_adaptive_weight_scales_each_rows_gradient():
    u = torch.randn(5, 4, requires_grad=True)
    target = torch.randn(5, 4)
    err, loss = meanflow.adaptive_loss(u, target, power=0.75, eps=1e-3)
    loss.sum().backward()
    want = (err.detach() + 1e-3).pow(-0.75).view(-1, 1) * 2 * (u.detach() - target)
    torch.testing.assert_close(u.grad, want)
    torch.testing.assert_close(err, (u.detach() - target).pow(2).sum(1))


def test_guidance_mixes_the_null_velocity_into_kept_rows():
    class Constant(torch.nn.Module):
        def forward(self, x, s, d, y):
            assert bool((d == 0).all() and (y == 3).all())  # the unconditional instantaneous velocity
            return torch.full_like(x, 2.0)

    v = torch.randn(4, 3)
    dropped = torch.tensor([False, True, False, True])
    got = meanflow.guided_velocity(Constant(), torch.zeros(4, 3), torch.rand(4), torch.zeros(4, dtype=torch.long),
                                   v, 1.5, 3, dropped)  # fmt: skip
    want = torch.where(dropped.view(-1, 1), v, 1.5 * v - 0.5 * 2.0)
    torch.testing.assert_close(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("derivative", ["jvp", "central_difference"])
def test_meanflow_learns_the_one_step_map_better_than_flow_matching(derivative):
    """On 1-D Gaussian data N(1.5, 0.5²), the same short run (300 steps): MeanFlow's u(x, 0, 1) is nearer the
    exact one-step map (``GaussianFlowMap``) than what flow matching's one Euler step takes, v(x, 0). Measured on
    this setup: relative errors 0.17-0.20 against 0.28-0.31 over two seeds and both CPU backends. The plain
    squared error (adaptive_power=0), and the EMA weights."""
    oracle = GaussianFlowMap(mu=1.5, sigma=0.5)
    x = torch.randn(4000, 1, generator=torch.Generator().manual_seed(5))  # noise: s = 0
    s, one = torch.zeros(4000), torch.ones(4000)

    def relative_error(objective: str, **settings) -> float:
        torch.manual_seed(0)
        model = sf.ShortcutMLP(dim=1, hidden_size=64, depth=2, step_embedding="sinusoidal")
        data = 1.5 + 0.5 * torch.randn(4096, 1, generator=torch.Generator().manual_seed(0))
        config = sf.TrainConfig(
            batch_size=256, lr=3e-3, ema_decay=0.99, progress=False, seed=0,
            shortcut=sf.ShortcutConfig(objective=objective, adaptive_power=0.0, **settings),
        )  # fmt: skip
        trainer = sf.Trainer(model, data, config)
        trainer.fit(300)
        d = one if objective == "meanflow" else torch.full_like(one, model.min_step)  # flow: its trained step
        with torch.no_grad():
            want, got = oracle(x, s, one), trainer.ema_model(x, s, d)
        return ((got - want).norm() / want.norm()).item()

    meanflow_error, flow_error = relative_error("meanflow", meanflow_derivative=derivative), relative_error("flow")
    assert meanflow_error < 0.25 and meanflow_error < 0.8 * flow_error, (meanflow_error, flow_error)


def test_meanflow_resumes_exactly(tmp_path):
    data = torch.randn(48, 3, generator=torch.Generator().manual_seed(0)), torch.arange(48) % 3

    def run():
        torch.manual_seed(0)
        model = sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, num_classes=3, step_embedding="sinusoidal")
        config = sf.TrainConfig(
            batch_size=8, progress=False, seed=1,
            shortcut=sf.ShortcutConfig(objective="meanflow", meanflow_cfg_scale=2.0, adaptive_power=0.5),
        )  # fmt: skip
        return sf.Trainer(model, data, config)

    straight = run()
    straight.fit(6)
    first = run()
    first.fit(3)
    first.save(tmp_path / "ckpt")
    resumed = sf.Trainer.resume(tmp_path / "ckpt", data, progress=False)
    resumed.fit(3)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_a_continuous_model_samples_any_real_schedule_and_round_trips(tmp_path):
    model = _model("dit", torch.float32)
    x, y = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 2])
    got = sf.sample(model, noise=x, steps=[0.3, 0.7], y=y)
    with torch.no_grad():
        mid = x + 0.3 * model(x, 0.0, 0.3, y)
        want = mid + 0.7 * model(mid, 0.3, 0.7, y)
    torch.testing.assert_close(got, want)
    uniform = sf.sample(model, noise=x, steps=3, y=y)
    torch.testing.assert_close(uniform, sf.sample(model, noise=x, steps=[1 / 3] * 3, y=y))
    sf.save_model(model, tmp_path / "m")
    loaded = sf.load_model(tmp_path / "m")
    assert loaded.continuous_steps and loaded.config["step_embedding"] == "sinusoidal"
    torch.testing.assert_close(sf.sample(loaded, noise=x, steps=[0.3, 0.7], y=y), got)
    # a table model's saved config is as it was before the option
    assert "step_embedding" not in sf.ShortcutMLP(dim=2, hidden_size=8, depth=1).config


def test_bad_settings_get_clear_errors():
    table = sf.ShortcutMLP(dim=2, hidden_size=8, depth=1)
    continuous = sf.ShortcutMLP(dim=2, hidden_size=8, depth=1, step_embedding="sinusoidal")
    meanflow_config = sf.ShortcutConfig(objective="meanflow")
    expect_error(lambda: sf.shortcut_loss(table, torch.randn(4, 2), None, meanflow_config), names=["sinusoidal"])
    expect_error(lambda: sf.ShortcutMLP(dim=2, step_embedding="learned"), names=["step_embedding"])
    expect_error(lambda: sf.ShortcutDiT(conditioning="official", step_embedding="sinusoidal"), names=["official"])
    expect_error(lambda: sf.ShortcutConfig(objective="meanflow", wavelet_levels=1), names=["wavelet_levels"])
    expect_error(lambda: sf.ShortcutConfig(instant_fraction=1.5), names=["instant_fraction"])
    expect_error(lambda: sf.ShortcutConfig(time_distribution=(0.0, -1.0)), names=["std"])
    expect_error(lambda: sf.ShortcutConfig(time_distribution=(0.0,)), names=["time_distribution"])
    expect_error(lambda: sf.ShortcutConfig(adaptive_power=math.nan), names=["adaptive_power"])
    expect_error(lambda: sf.ShortcutConfig(meanflow_derivative="fd"), names=["meanflow_derivative"])
    expect_error(lambda: continuous(torch.randn(2, 2), 0.5, 1.5), names=["d must lie in [0, 1]"])
    x = torch.randn(2, 2)
    expect_error(lambda: sf.sample(continuous, noise=x, steps=[0.5, 0.6]), names=["sum to 1"])
    expect_error(lambda: sf.sample(continuous, noise=x, steps=[1.5, -0.5]), names=["(0, 1]"])
    expect_error(lambda: sf.sample(continuous, noise=x, steps=0), names=["steps"])
    expect_error(lambda: sf.sample(table, noise=x, steps=[0.3, 0.7]), names=["step size of the model"])
    expect_error(lambda: copy_flow_level(continuous), names=["step_embedding='sinusoidal'"])
