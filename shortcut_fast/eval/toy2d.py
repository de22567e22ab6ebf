"""Seeded 2D point sets for quality tests, of different kinds.

Several modes (8 Gaussians, a 5x5 grid of Gaussians), thin curves (two moons,
spirals, a Swiss roll), rings (three concentric circles), densities with holes
(checkerboard, a square with round holes) and heavy tails (a Student-t).

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


def rings(n: int, seed: int = 0, noise: float = 0.04) -> torch.Tensor:
    """Three concentric circles of radius 0.65, 1.3 and 1.95, points spread by circumference, Gaussian ``noise``."""
    rng = _rng(n, seed)
    radii = np.array([0.65, 1.3, 1.95])
    radius = rng.choice(radii, n, p=radii / radii.sum())  # even density along the curves
    angle = rng.uniform(0, 2 * math.pi, n)
    points = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return _tensor(points + noise * rng.standard_normal((n, 2)))


def grid(n: int, seed: int = 0, size: int = 5, std: float = 0.08) -> torch.Tensor:
    """A mixture of ``size`` x ``size`` equal Gaussians (standard deviation ``std``) on a grid over [-1.6, 1.6]^2."""
    rng = _rng(n, seed)
    ticks = np.linspace(-1.6, 1.6, size)
    centers = np.stack([rng.choice(ticks, n), rng.choice(ticks, n)], axis=1)
    return _tensor(centers + std * rng.standard_normal((n, 2)))


def swiss_roll(n: int, seed: int = 0, noise: float = 0.04) -> torch.Tensor:
    """A one-armed spiral of 1.5 turns, radius 0.4 to 2, points uniform in the angle, Gaussian ``noise``.

    The curve's own mean (by quadrature) is subtracted, so the set is centred.
    """
    rng = _rng(n, seed)

    def curve(u: np.ndarray) -> np.ndarray:
        angle, radius = 1.5 * math.pi * (1 + 2 * u), 0.4 + 1.6 * u
        return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)

    centre = curve(np.linspace(0, 1, 4097)).mean(axis=0)
    return _tensor(curve(rng.uniform(0, 1, n)) - centre + noise * rng.standard_normal((n, 2)))


HOLES = ((-0.9, -0.9, 0.55), (0.9, 0.9, 0.55), (0.9, -0.9, 0.35), (-0.9, 0.9, 0.35), (0.0, 0.0, 0.45))
"""The round holes of ``holes``: (x, y, radius)."""


def holes(n: int, seed: int = 0) -> torch.Tensor:
    """Uniform points on the square [-1.8, 1.8]^2 outside the five discs of ``HOLES`` (by rejection)."""
    rng = _rng(n, seed)
    kept: list[np.ndarray] = []
    count = 0
    while count < n:
        points = rng.uniform(-1.8, 1.8, (2 * n, 2))
        outside = np.ones(len(points), dtype=bool)
        for cx, cy, r in HOLES:
            outside &= np.hypot(points[:, 0] - cx, points[:, 1] - cy) > r
        kept.append(points[outside])
        count += int(outside.sum())
    return _tensor(np.concatenate(kept)[:n])


def heavy_tail(n: int, seed: int = 0, dof: float = 2.5, scale: float = 0.35, bound: float = 2.9) -> torch.Tensor:
    """A standard bivariate Student-t with ``dof`` degrees of freedom times ``scale``, cut at radius ``bound``.

    A t with 2.5 degrees of freedom has no fourth moment: most points sit in a
    tight core, a few per cent far out. The cut (by rejection) keeps the points
    inside the objective's clip; about 1 % of the draws fall beyond it.
    """
    rng = _rng(n, seed)
    kept: list[np.ndarray] = []
    count = 0
    while count < n:
        chi = rng.chisquare(dof, 2 * n) / dof
        points = scale * rng.standard_normal((2 * n, 2)) / np.sqrt(chi)[:, None]
        inside = points[np.hypot(points[:, 0], points[:, 1]) < bound]
        kept.append(inside)
        count += len(inside)
    return _tensor(np.concatenate(kept)[:n])


TOY2D = {
    "checkerboard": checkerboard,
    "8gaussians": eight_gaussians,
    "moons": two_moons,
    "spirals": spirals,
    "rings": rings,
    "grid": grid,
    "swissroll": swiss_roll,
    "holes": holes,
    "heavytail": heavy_tail,
}
"""The generators by name: ``TOY2D[name](n, seed)``."""


def sample_toy2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points (float32 (n, 2)) of the data set ``name``, one of ``TOY2D``, from ``seed``."""
    if name not in TOY2D:
        raise ValueError(f"unknown 2D data set {name!r}; choose one of {sorted(TOY2D)}")
    return TOY2D[name](n, seed)
