"""Small bundled data sets used for training and evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

DIGITS_CLASSES = 10
"""Number of classes in the digits data set (the digits 0 to 9)."""

_DIGITS_MAX = 16.0


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Load scikit-learn's bundled 8x8 handwritten digits.

    The data ships with scikit-learn, so nothing is downloaded.

    Returns
    -------
    images : torch.Tensor
        float32 of shape (1797, 1, 8, 8), pixel intensities mapped
        linearly from 0..16 to [-1, 1].
    labels : torch.Tensor
        int64 of shape (1797,), values in 0..9.
    """
    # Imported lazily: scikit-learn is slow to import and only this loader needs it.
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float32)
    scaled = pixels * np.float32(2.0 / _DIGITS_MAX) - np.float32(1.0)
    images = torch.from_numpy(np.ascontiguousarray(scaled)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return images, labels


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"{path} is not a readable .npy array ({err})") from err
    raise ValueError(f"{path}: expected a .npy file")


def load_tensor_file(
    path: str | os.PathLike, labels: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training data from a file: ``.npy`` (an array) or ``.safetensors`` (tensor ``x``, optional ``y``).

    ``labels`` names a ``.npy`` file of integer labels. Returns float32 data
    (N, ...) and int64 labels (N,) or ``None``; no pickle is ever loaded.
    """
    path = Path(path)
    y = None
    if path.suffix == ".safetensors":
        from ..checkpoint import load_tensors

        tensors = load_tensors(path)
        if "x" not in tensors:
            raise ValueError(f"{path} must hold a tensor named 'x' (and optionally 'y'); found {sorted(tensors)}")
        x, y = tensors["x"], tensors.get("y")
    elif path.suffix == ".npy":
        x = torch.from_numpy(_read_array(path))
    else:
        raise ValueError(f"{path}: training data must be a .npy or .safetensors file")
    if labels is not None:
        y = torch.from_numpy(_read_array(Path(labels)))
    if x.dtype.is_complex or x.dtype == torch.bool or x.dim() < 2 or len(x) == 0:
        raise ValueError(f"{path}: data must be a real array (N, ...) with N >= 1, got {x.dtype} {tuple(x.shape)}")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{path}: data holds NaN or inf values")
    if y is not None:
        if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (len(x),):
            raise ValueError(f"labels must be integers of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")
        if bool((y < 0).any()):
            raise ValueError("labels must be >= 0")
        y = y.long()
    return x, y
