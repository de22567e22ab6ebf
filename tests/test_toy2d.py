"""The seeded 2D point sets."""

import numpy as np
import pytest
import torch

from shortcut_fast.eval.toy2d import (
    HOLES,
    TOY2D,
    checkerboard,
    eight_gaussians,
    grid,
    heavy_tail,
    holes,
    rings,
    sample_toy2d,
    spirals,
    swiss_roll,
    two_moons,
)


@pytest.mark.parametrize("name", sorted(TOY2D))
def test_shape_range_and_seed(name):
    x = sample_toy2d(name, 2000, seed=3)
    assert x.shape == (2000, 2) and x.dtype == torch.float32 and bool(torch.isfinite(x).all())
    assert float(x.abs().max()) < 3.0  # inside the objective's clip with room for noise
    assert torch.equal(x, sample_toy2d(name, 2000, seed=3))
    assert not torch.equal(x, sample_toy2d(name, 2000, seed=4))
    assert abs(float(x.mean())) < 0.15  # centred


def test_checkerboard_only_dark_squares():
    x = checkerboard(5000).numpy()
    assert np.all((np.floor(x[:, 0]) + np.floor(x[:, 1])) % 2 == 0)
    assert x.min() >= -2 and x.max() <= 2
    # all 8 squares are used, evenly
    squares = {(int(a), int(b)) for a, b in np.floor(x)}
    assert len(squares) == 8


def test_eight_gaussians_modes():
    x = eight_gaussians(8000, std=0.05).numpy()
    angles = np.round(np.arctan2(x[:, 1], x[:, 0]) / (np.pi / 4)) % 8
    counts = np.bincount(angles.astype(int), minlength=8)
    assert counts.min() > 800  # 8 equal modes
    assert np.allclose(np.linalg.norm(x, axis=1).mean(), 2.0, atol=0.02)


def test_moons_and_spirals_noise_free_geometry():
    m = two_moons(1000, noise=0.0).numpy() / 1.5 + np.array([0.5, 0.25])
    upper = np.isclose(np.hypot(m[:, 0], m[:, 1]), 1.0)
    lower = np.isclose(np.hypot(m[:, 0] - 1, m[:, 1] - 0.5), 1.0)
    assert np.all(upper | lower) and upper.any() and lower.any()
    s = spirals(1000, noise=0.0).numpy()
    assert np.linalg.norm(s, axis=1).max() <= 2.0 + 1e-6


def test_suite_covers_the_kinds():
    # several modes, thin curves, rings, grids, holes and heavy tails: at least 8 sets
    assert len(TOY2D) >= 8


def test_rings_radii_and_even_density():
    x = rings(30000, noise=0.0).numpy()
    r = np.linalg.norm(x, axis=1)
    nearest = np.array([0.65, 1.3, 1.95])[np.abs(r[:, None] - np.array([0.65, 1.3, 1.95])).argmin(axis=1)]
    assert np.allclose(r, nearest, atol=1e-5)
    # points per unit length equal on every ring: counts proportional to the radius
    counts = np.array([np.sum(nearest == v) for v in (0.65, 1.3, 1.95)])
    assert np.allclose(counts / counts.sum(), [1 / 6, 2 / 6, 3 / 6], atol=0.01)


def test_grid_modes():
    x = grid(25000, std=0.01).numpy()
    ticks = np.linspace(-1.6, 1.6, 5)
    ix = np.abs(x[:, :1] - ticks).argmin(axis=1)
    iy = np.abs(x[:, 1:] - ticks).argmin(axis=1)
    assert np.abs(x[:, 0] - ticks[ix]).max() < 0.06
    counts = np.bincount(ix * 5 + iy, minlength=25)
    assert counts.min() > 800  # 25 equal modes of 1000 points each


def test_swiss_roll_is_one_centred_arm():
    x = swiss_roll(20000, noise=0.0).numpy()
    # the curve's points, shifted back by the quadrature centre, lie at radius 0.4 .. 2 and wind once and a half
    u = np.linspace(0, 1, 4097)
    angle, radius = 1.5 * np.pi * (1 + 2 * u), 0.4 + 1.6 * u
    curve = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    centre = curve.mean(axis=0)
    dist = np.sqrt(((x[:, None, :] + centre - curve[None, ::8]) ** 2).sum(-1)).min(axis=1)
    assert dist.max() < 0.05
    assert np.abs(x.mean(axis=0)).max() < 0.03


def test_holes_are_empty_and_the_rest_uniform():
    x = holes(40000).numpy()
    for cx, cy, r in HOLES:
        assert np.hypot(x[:, 0] - cx, x[:, 1] - cy).min() > r
    assert x.min() >= -1.8 and x.max() <= 1.8
    # uniform outside the holes: a square cell with no hole gets its share of the free area
    free = 3.6**2 - sum(np.pi * r**2 for _, _, r in HOLES)
    cell = (x[:, 0] > 1.2) & (x[:, 1] > -0.3) & (x[:, 1] < 0.3)  # 0.6 x 0.6, clear of every hole
    assert abs(cell.mean() - 0.36 / free) < 0.004


def test_heavy_tail_has_heavier_tails_than_a_gaussian():
    x = heavy_tail(40000).numpy()
    r = np.linalg.norm(x, axis=1)
    assert r.max() < 2.9
    # a Gaussian of the same median radius puts almost nothing beyond 4 median radii; the t puts percent there
    median = np.median(r)
    gauss = np.linalg.norm(np.random.default_rng(0).standard_normal((40000, 2)), axis=1)
    gauss *= median / np.median(gauss)
    assert np.mean(r > 4 * median) > 0.01 > 100 * np.mean(gauss > 4 * median)


def test_errors():
    with pytest.raises(ValueError, match="unknown 2D data set"):
        sample_toy2d("circles", 10)
    with pytest.raises(ValueError, match="n must be"):
        checkerboard(0)
    with pytest.raises(TypeError, match="seed"):
        checkerboard(5, seed=1.5)
