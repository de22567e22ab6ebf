"""The seeded 2D point sets."""

import numpy as np
import pytest
import torch

from shortcut_fast.eval.toy2d import TOY2D, checkerboard, eight_gaussians, sample_toy2d, spirals, two_moons


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


def test_errors():
    with pytest.raises(ValueError, match="unknown 2D data set"):
        sample_toy2d("circles", 10)
    with pytest.raises(ValueError, match="n must be"):
        checkerboard(0)
    with pytest.raises(TypeError, match="seed"):
        checkerboard(5, seed=1.5)
