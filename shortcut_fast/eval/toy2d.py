"""Seeded 2D point sets for quality tests: checkerboard, 8 Gaussians, two moons, spirals.

Every generator returns a float32 tensor (n, 2), a fixed function of ``seed``,
scaled so that the points lie within about [-2, 2] (inside the objective's
default clip of 4 for midpoints and targets, with room for the noise).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def _rng(n: int, seed: int) -> np.random.Generator:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return np.random.default_rng(seed)


def _tensor(points: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    """Uniform points on the 8 dark squares of a 4x4 checkerboard covering [-2, 2]^2."""
    rng = _rng(n, seed)
    x = rng.uniform(-2, 2, n)
    # pick a column offset so that (floor(x) + floor(y)) is even: the dark squares
    y = rng.uniform(0, 1, n) + rng.integers(0, 2, n) * 2 - 2  # in [-2, -1) or [0, 1)
    y = y + (np.floor(x) % 2)
    return _tensor(np.stack([x, y], axis=1))


def eight_gaussians(n: int, seed: int = 0, radius: float = 2.0, std: float = 0.1) -> torch.Tensor:
    """A mixture of 8 equal Gaussians (standard deviation ``std``) on a circle of ``radius``."""
    rng = _rng(n, seed)
    angle = rng.integers(0, 8, n) * (2 * math.pi / 8)
    centers = radius * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _tensor(centers + std * rng.standard_normal((n, 2)))


def two_moons(n: int, seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """scikit-learn's two interleaved half circles, centred and scaled by 1.5 (Gaussian ``noise`` before scaling)."""
    rng = _rng(n, seed)
    upper = rng.integers(0, 2, n).astype(bool)
    angle = rng.uniform(0, math.pi, n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1) + noise * rng.standard_normal((n, 2))
    return _tensor(1.5 * points)


def spirals(n: int, seed: int = 0, noise: float = 0.05, turns: float = 1.5) -> torch.Tensor:
    """Two interleaved Archimedean spirals of ``turns`` turns, radius up to 2, with Gaussian ``noise``."""
    rng = _rng(n, seed)
    arm = rng.integers(0, 2, n)
    s = np.sqrt(rng.uniform(0, 1, n))  # uniform along the arm's length (roughly)
    angle = s * turns * 2 * math.pi + arm * math.pi
    radius = 2.0 * s
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return _tensor(points + noise * rng.standard_normal((n, 2)))


TOY2D = {"checkerboard": checkerboard, "8gaussians": eight_gaussians, "moons": two_moons, "spirals": spirals}
"""The generators by name: ``TOY2D[name](n, seed)``."""


def sample_toy2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points (float32 (n, 2)) of the data set ``name``, one of ``TOY2D``, from ``seed``."""
    if name not in TOY2D:
        raise ValueError(f"unknown 2D data set {name!r}; choose one of {sorted(TOY2D)}")
    return TOY2D[name](n, seed)
