"""The multi-level Haar wavelet loss (iSM Sec. 3.2).

A plain L2 on the velocity weighs every pixel alike, so the few coarse
components, which hold most of an image's energy, dominate it and the fine
detail is learnt late. The wavelet loss compares prediction and target band by
band after ``J`` levels of the orthonormal 2D Haar transform, each sub-band
with its own weight::

    L = sum_b w_b * mean_b((W v - W u)^2) / sum_b w_b

over the ``3J + 1`` sub-bands ``b``: the detail bands ``(LH, HL, HH)`` of
levels ``1..J`` (level 1 the finest) and the approximation ``LL`` of level
``J``; ``mean_b`` is the mean over the band's coefficients (per sample), so a
small coarse band counts as much as a large fine one. The paper does not pin
the weights down; the default here is equal weights, and ``weights`` takes
``J + 1`` numbers (the detail bands of each level, then the approximation).
Weights proportional to the bands' sizes (``4**-l`` for level ``l``, ``4**-J``
for the approximation) give back the plain L2 exactly, since the transform is
orthonormal (Parseval); equal weights raise the share of the coarse detail
bands over that of the plain L2. Which weights train best is for measurement.

The transform is a few lines of torch rather than a wavelet package: Haar needs
only sums and differences of 2x2 blocks, which run on any device, in any
dtype, under autograd and inside a CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def haar2d(x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One level of the orthonormal 2D Haar transform of ``x`` (..., H, W), H and W even.

    Returns ``(LL, (LH, HL, HH))``, each (..., H/2, W/2): ``LL = (a + b + c + d) / 2``,
    ``LH = (a - b + c - d) / 2`` (differences along W), ``HL = (a + b - c - d) / 2``
    (along H), ``HH = (a - b - c + d) / 2``, where ``a b / c d`` is each 2x2 block.
    """
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, ((a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2)


def wavelet_bands(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """The ``3 * levels + 1`` sub-bands of ``x`` (B, C, H, W): level 1's LH, HL, HH, ..., level J's, then LL_J."""
    bands: list[torch.Tensor] = []
    for _ in range(levels):
        x, details = haar2d(x)
        bands.extend(details)
    return [*bands, x]


def check_wavelet_levels(levels: int, shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``levels`` Haar levels fit images of ``shape`` (B, C, H, W)."""
    if len(shape) != 4:
        raise ValueError(f"the wavelet loss needs image batches (B, C, H, W), got shape {tuple(shape)}")
    step = 2**levels
    if shape[-1] % step or shape[-2] % step:
        raise ValueError(
            f"wavelet_levels={levels} needs H and W divisible by 2**{levels} = {step}, got {shape[-2]}x{shape[-1]}"
        )


def wavelet_loss(
    pred: torch.Tensor, target: torch.Tensor, levels: int, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """The per-sample wavelet loss (B,) of ``pred`` against ``target`` (B, C, H, W), in fp32 (see the module doc).

    ``weights``: ``levels + 1`` numbers, the weight of the detail bands of levels
    ``1..levels`` and then of the approximation; ``None`` weighs every band alike.
    """
    check_wavelet_levels(levels, pred.shape)
    weights = [1.0] * (levels + 1) if weights is None else list(weights)
    err = pred.float() - target.float()  # the transform is linear: transform the error once
    per_band = [w for w in weights[:-1] for _ in range(3)] + [weights[-1]]
    total = sum(
        w * band.pow(2).flatten(1).mean(1) for w, band in zip(per_band, wavelet_bands(err, levels), strict=True)
    )
    return total / math.fsum(per_band)  # type: ignore[return-value]  # total: a sum of (B,) tensors
