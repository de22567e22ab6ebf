"""FID: the Fréchet distance between Inception-v3 features of samples and of reference images or statistics.

The Inception network is torchmetrics' ``NoTrainInceptionV3`` (the
TensorFlow-compatible FID network that torch-fidelity implements), built
from a local weights file the user names, with the TensorFlow-style bilinear
resize to 299x299 so numbers compare with published FIDs. Nothing is
downloaded. Features accumulate as float64 sums (the mean and covariance of
any number of images in a 2048 x 2048 matrix); the distance is this
package's ``gaussian_frechet_distance``, which the tests check against
torchmetrics' on the same features. Reference statistics are ``.npz`` files
with ``mu`` and ``sigma``, the format published with FID reference sets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoint import atomic_file, parse_device
from ..data.datasets import _IMAGE_ERRORS
from .metrics import gaussian_frechet_distance

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
"""File name of the FID Inception-v3 weights that torch-fidelity publishes (a plain state dict)."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Extractor = Callable[[torch.Tensor], torch.Tensor]
"""Maps uint8 images (B, 3, H, W) to features (B, F)."""


def inception_extractor(weights: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The FID Inception-v3 (2048 pool features) from the local file ``weights``; needs torchmetrics and torch-fidelity.

    A missing file is a ValueError that says which file to put where.
    """
    path = Path(weights)
    if not path.is_file():
        raise ValueError(
            f"the Inception weights {path} do not exist: put torch-fidelity's {INCEPTION_WEIGHTS} "
            f"(the FID Inception-v3 state dict) at {path.resolve()}, or name its path with --inception; "
            "nothing is downloaded at run time"
        )
    try:
        import torch_fidelity  # noqa: F401  (NoTrainInceptionV3 needs it; fail here with the fix)
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as err:
        raise ImportError(
            "the FID Inception network needs torchmetrics and torch-fidelity: pip install 'shortcut_fast[fid]'"
        ) from err
    # antialias=False: torch-fidelity's TensorFlow-1.x bilinear resize, as the published FIDs used
    net = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(path), antialias=False)
    return net.to(parse_device(device))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (float, clamped) as uint8 in [0, 255], rounded as a PNG of them would be; uint8 passes."""
    if images.dtype == torch.uint8:
        return images
    return ((images.detach().to(torch.float64).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _check_batch(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3) or len(images) < 1:
        raise ValueError(
            f"{name} must be images (N, 1 or 3, H, W): uint8 or float in [-1, 1]; got "
            f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
        )
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise ValueError(f"{name} must be uint8 or floating point, got {images.dtype}")
    return images


def _folder_batches(folder: Path, batch_size: int) -> Iterator[torch.Tensor]:
    """The images under ``folder`` (recursively, sorted) as uint8 RGB batches; a batch ends where the size changes."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder} holds no {', '.join(IMAGE_SUFFIXES)} images")
    batch: list[np.ndarray] = []
    for path in files:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB"))
        except _IMAGE_ERRORS:
            continue
        if batch and (len(batch) == batch_size or batch[0].shape != pixels.shape):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(pixels)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def _batches(source, batch_size: int, name: str) -> Iterator[torch.Tensor]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            yield from _folder_batches(path, batch_size)
            return
        if path.suffix == ".npy" and path.is_file():
            source = torch.from_numpy(np.load(path, mmap_mode="r", allow_pickle=False)[:])
        else:
            raise ValueError(f"{name} {path} must be a folder of images or a .npy array of images")
    images = _check_batch(source, name)
    for chunk in images.split(batch_size):
        yield to_uint8(chunk)


@torch.no_grad()
def feature_stats(
    source, extractor: Extractor, *, batch_size: int = 50, device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The mean (F,) and unbiased covariance (F, F) in float64 of ``extractor``'s features of ``source``.

    ``source`` is a folder of images (read recursively), a ``.npy`` file or a
    tensor (N, C, H, W) of uint8 images or floats in [-1, 1]; grey images are
    repeated to RGB. Images go to ``extractor`` as uint8 batches on ``device``.
    """
    device = parse_device(device)
    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None
    count = 0
    for batch in _batches(source, batch_size, "images"):
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        feats = extractor(batch.to(device)).to("cpu", torch.float64).reshape(len(batch), -1)
        if total is None or outer is None:  # both are set at once
            total, outer = (
                torch.zeros(feats.shape[1], dtype=torch.float64),
                torch.zeros(feats.shape[1], feats.shape[1], dtype=torch.float64),
            )
        total += feats.sum(0)
        outer += feats.T @ feats
        count += len(feats)
    if count < 2:
        raise ValueError(f"FID needs at least 2 readable images per side, got {count}")
    assert total is not None and outer is not None  # set by the first of the count >= 2 batches
    mu = total / count
    sigma = (outer - count * torch.outer(mu, mu)) / (count - 1)
    return mu.numpy(), sigma.numpy()


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Reference statistics from an ``.npz`` file with arrays ``mu`` (F,) and ``sigma`` (F, F)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"reference statistics {path} do not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "mu" not in data or "sigma" not in data:
                raise ValueError(f"{path} must hold arrays 'mu' and 'sigma'; found {sorted(data.keys())}")
            mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
    except (OSError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npz file ({err})") from err
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: mu must be (F,) and sigma (F, F); got {mu.shape} and {sigma.shape}")
    return mu, sigma


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write ``mu`` and ``sigma`` as an ``.npz`` file (the format ``load_stats`` reads), atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files end in .npz, got {path.name}")
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    return path


def fid(
    samples,
    reference,
    *,
    inception: str | os.PathLike | None = None,
    extractor: Extractor | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> float:
    """FID between ``samples`` and ``reference``.

    ``samples``: a folder of images, a ``.npy`` file or a tensor (N, C, H, W)
    of uint8 or [-1, 1] floats. ``reference``: the same kinds, or an ``.npz``
    file of statistics (``mu``, ``sigma``). The features come from the FID
    Inception-v3 loaded from the local file ``inception``, or from
    ``extractor`` (any callable from uint8 (B, 3, H, W) to (B, F)), exactly
    one of the two.
    """
    if (inception is None) == (extractor is None):
        raise ValueError("give exactly one of inception (the path of the Inception weights file) or extractor")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if extractor is None:
        assert inception is not None  # exactly one of the two is given (checked above)
        extractor = inception_extractor(inception, device)
    mu, sigma = feature_stats(samples, extractor, batch_size=batch_size, device=device)
    if isinstance(reference, (str, os.PathLike)) and Path(reference).suffix == ".npz":
        ref_mu, ref_sigma = load_stats(reference)
    else:
        ref_mu, ref_sigma = feature_stats(reference, extractor, batch_size=batch_size, device=device)
    if ref_mu.shape != mu.shape:
        raise ValueError(f"the reference has {ref_mu.shape[0]} features but the extractor gives {mu.shape[0]}")
    return gaussian_frechet_distance(mu, sigma, ref_mu, ref_sigma)
