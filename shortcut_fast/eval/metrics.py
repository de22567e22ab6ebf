"""Sample-quality metrics: sliced Wasserstein and Fréchet distances, and a small digits classifier."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import atomic_file
from ..data.files import DIGITS_CLASSES, load_digits

CLASSIFIER_FILENAME = "digits_classifier.safetensors"
"""File name of the cached digits classifier inside a cache directory."""

# Bump when the architecture or the training recipe changes, so that caches
# written by an older recipe are retrained instead of silently reused.
_CACHE_RECIPE = "1"

_FEATURE_DIM = 64
_IMAGE_SHAPE = (1, 8, 8)


def _as_float64_matrix(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (n, f), got {arr.ndim} dimensions {arr.shape}")
    return arr


def _sym_sqrt(mat: np.ndarray) -> np.ndarray:
    # eigh of a symmetric matrix is stable; clipping removes the small negative
    # eigenvalues rounding produces on (near) singular covariances.
    w, v = np.linalg.eigh(mat)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Fréchet distance between two Gaussians.

    Parameters
    ----------
    mu1, mu2 : array_like
        Means, shape (f,).
    cov1, cov2 : array_like
        Covariances, shape (f, f). Symmetrized before use; negative
        eigenvalues (from rounding) are treated as 0.

    Returns
    -------
    float
        ``||mu1 - mu2||^2 + tr(cov1 + cov2 - 2 (cov1^{1/2} cov2 cov1^{1/2})^{1/2})``,
        computed in float64 and never negative.
    """
    mu1 = np.asarray(mu1, dtype=np.float64)
    mu2 = np.asarray(mu2, dtype=np.float64)
    cov1 = np.asarray(cov1, dtype=np.float64)
    cov2 = np.asarray(cov2, dtype=np.float64)
    if mu1.ndim != 1 or mu2.ndim != 1:
        raise ValueError(f"means must be 1-D, got shapes {mu1.shape} and {mu2.shape}")
    if mu1.shape != mu2.shape:
        raise ValueError(f"means must have the same length, got {mu1.shape[0]} and {mu2.shape[0]}")
    f = mu1.shape[0]
    if f == 0:
        raise ValueError("means must have at least one feature, got length 0")
    for name, cov in (("cov1", cov1), ("cov2", cov2)):
        if cov.shape != (f, f):
            raise ValueError(f"{name} must have shape ({f}, {f}) to match the means, got {cov.shape}")
    for name, arr in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must contain only finite values")

    cov1 = 0.5 * (cov1 + cov1.T)
    cov2 = 0.5 * (cov2 + cov2.T)
    sqrt1 = _sym_sqrt(cov1)
    # sqrt1 @ cov2 @ sqrt1 is symmetric PSD, unlike cov1 @ cov2, so its trace
    # square root follows from eigvalsh without a general matrix square root.
    inner = sqrt1 @ cov2 @ sqrt1
    inner = 0.5 * (inner + inner.T)
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(inner), 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(cov1) + np.trace(cov2)) - 2.0 * tr_covmean
    return max(value, 0.0)


def frechet_distance(a, b) -> float:
    """Fréchet distance between two feature sets, each fitted by a Gaussian.

    Parameters
    ----------
    a, b : array_like or torch.Tensor
        Features of shape (n_a, f) and (n_b, f); rows are samples, at least
        2 rows each, finite values, the same f.

    Returns
    -------
    float
        :func:`gaussian_frechet_distance` of the sample means and the
        unbiased sample covariances.
    """
    a, b = _point_sets(a, b, min_rows=2, why=" to estimate a covariance")
    return gaussian_frechet_distance(*_mean_cov(a), *_mean_cov(b))


def _point_sets(a, b, min_rows: int, why: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Two finite float64 matrices (rows: samples) with the same number of features and ``min_rows`` rows each."""
    a = _as_float64_matrix(a, "a")
    b = _as_float64_matrix(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must have the same number of features, got {a.shape[1]} and {b.shape[1]}")
    for name, arr in (("a", a), ("b", b)):
        if arr.shape[0] < min_rows:
            raise ValueError(
                f"{name} needs at least {min_rows} row{'s' if min_rows > 1 else ''}{why}, got {arr.shape[0]}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must contain only finite values")
    return a, b


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(axis=0)
    centered = x - mu
    return mu, centered.T @ centered / (x.shape[0] - 1)


def random_directions(dim: int, num: int = 256, seed: int = 0) -> np.ndarray:
    """Unit vectors drawn uniformly on the sphere, a fixed function of ``seed``.

    Parameters
    ----------
    dim : int
        Dimension of the space (>= 1).
    num : int
        Number of directions (>= 1).
    seed : int
        Seed of a private ``numpy.random.Generator``: the same seed gives the
        same directions on every machine.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (num, dim), each row of unit length.
    """
    _check_positive_int(dim, "dim")
    _check_positive_int(num, "num")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    g = np.random.default_rng(seed).standard_normal((num, dim))
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    g[norms[:, 0] == 0] = 1.0  # probability zero, but never divide by 0
    return g / np.linalg.norm(g, axis=1, keepdims=True)


def wasserstein_1d(a, b, p: float = 2.0) -> np.ndarray:
    """Exact p-Wasserstein distances between 1-D empirical distributions, column by column.

    Parameters
    ----------
    a, b : array_like
        Shapes (n_a, k) and (n_b, k): ``k`` pairs of point sets on the line,
        each point of weight ``1/n``. The sizes may differ.
    p : float
        Order, ``p >= 1``.

    Returns
    -------
    numpy.ndarray
        Shape (k,): ``(integral_0^1 |F_a^{-1}(q) - F_b^{-1}(q)|^p dq)^{1/p}``,
        computed exactly from the quantile functions (step functions). For
        equal sizes this is ``mean(|sort(a) - sort(b)|^p)^{1/p}``.
    """
    a = np.sort(np.asarray(a, dtype=np.float64), axis=0)
    b = np.sort(np.asarray(b, dtype=np.float64), axis=0)
    na, nb = a.shape[0], b.shape[0]
    if na == nb:
        return np.mean(np.abs(a - b) ** p, axis=0) ** (1.0 / p)
    # the quantile functions are constant between the levels i/n_a and j/n_b: integrate exactly
    levels = np.union1d(np.arange(1, na + 1) / na, np.arange(1, nb + 1) / nb)
    lo = np.concatenate([[0.0], levels[:-1]])
    widths, mid = levels - lo, (levels + lo) / 2
    ia = np.minimum((mid * na).astype(np.int64), na - 1)
    ib = np.minimum((mid * nb).astype(np.int64), nb - 1)
    return (widths @ (np.abs(a[ia] - b[ib]) ** p)) ** (1.0 / p)


def sliced_wasserstein(a, b, *, num_projections: int = 256, p: float = 2.0, seed: int = 0) -> float:
    """Sliced p-Wasserstein distance between two point sets in any dimension.

    Both sets are projected on ``num_projections`` fixed unit directions
    (:func:`random_directions` of ``seed``; in 1-D the single direction +1),
    the exact 1-D distance is taken on each (:func:`wasserstein_1d`) and

        ``SWD_p = (mean over directions of W_p^p)^{1/p}``.

    Parameters
    ----------
    a, b : array_like or torch.Tensor
        Points of shape (n_a, f) and (n_b, f), at least one row each, finite;
        the sizes may differ.
    num_projections : int
        Number of directions; the same ``seed`` gives the same directions.
    p : float
        Order, ``p >= 1`` (2 by default).
    seed : int
        Seed of the directions.

    Returns
    -------
    float
        A distance in the units of the points: 0 for identical sets, ``|s| *
        sqrt(mean_k <u, theta_k>^2)`` (p = 2) between a set and its copy shifted
        by ``s u``.
    """
    a, b = _point_sets(a, b, min_rows=1)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p >= 1):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}")
    dim = a.shape[1]
    theta = np.ones((1, 1)) if dim == 1 else random_directions(dim, num_projections, seed)
    per_direction = wasserstein_1d(a @ theta.T, b @ theta.T, p)
    return float(np.mean(per_direction**p) ** (1.0 / p))


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or tuple(x.shape[1:]) != _IMAGE_SHAPE:
        raise ValueError(f"images must have shape (B, 1, 8, 8), got {tuple(x.shape)}")


class DigitsClassifier(nn.Module):
    """MLP classifier of 8x8 digit images with values in [-1, 1].

    The 64 activations before the last layer serve as features for
    Fréchet distances between image sets.

    Parameters
    ----------
    generator : torch.Generator, optional
        Source of the initial weights; the global RNG when None.
    """

    def __init__(self, generator: torch.Generator | None = None) -> None:
        super().__init__()
        # Built on the meta device and initialized once below, so that a
        # seeded construction leaves the global RNG untouched.
        self.body = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 128, device="meta"),
            nn.ReLU(),
            nn.Linear(128, _FEATURE_DIM, device="meta"),
            nn.ReLU(),
        )
        self.head = nn.Linear(_FEATURE_DIM, DIGITS_CLASSES, device="meta")
        self.to_empty(device="cpu")
        self.reset_parameters(generator)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-initialize all weights with PyTorch's default Linear scheme.

        Draws from ``generator``, or from the global RNG when it is None.
        """
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.bias, -bound, bound, generator=generator)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations, shape (B, 64), of images of shape (B, 1, 8, 8)."""
        _check_images(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, shape (B, 10), of images of shape (B, 1, 8, 8)."""
        return self.head(self.features(x))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Most likely class, int64 of shape (B,), of images of shape (B, 1, 8, 8)."""
        return self(x).argmax(dim=1)


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


@contextmanager
def _single_thread() -> Iterator[None]:
    # The matrices are tiny, so intra-op threads add only overhead, and their
    # busy-waiting slows training several times over when other processes
    # hold the cores. One thread also keeps the float reduction order, and so
    # the weights, independent of the machine's core count.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_digits_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    seed: int = 0,
    steps: int = 1000,
    batch_size: int = 128,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    noise_std: float = 0.1,
    label_smoothing: float = 0.1,
) -> DigitsClassifier:
    """Train a :class:`DigitsClassifier` deterministically on the CPU.

    Parameters
    ----------
    x : torch.Tensor
        Float images of shape (N, 1, 8, 8) in [-1, 1].
    y : torch.Tensor
        Integer labels of shape (N,) in 0..9.
    seed : int
        Seeds the initialization, minibatch sampling and input noise.
    steps, batch_size : int
        Number of AdamW steps and minibatch size (sampled with replacement).
    lr, weight_decay : float
        Peak learning rate (cosine decay to 0) and AdamW weight decay.
    noise_std, label_smoothing : float
        Regularization: Gaussian input noise and cross-entropy label smoothing.

    Returns
    -------
    DigitsClassifier
        On the CPU, in eval mode, with ``requires_grad`` False.

    Notes
    -----
    Runs with one intra-op thread (``torch.set_num_threads``), restored on
    return; about 1 to 2 seconds for 1437 images with the defaults.
    """
    _check_images(x)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor, got {x.dtype}")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError("y must be an integer torch.Tensor")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must contain at least one image")
    if int(y.min()) < 0 or int(y.max()) >= DIGITS_CLASSES:
        raise ValueError(f"labels must lie in 0..{DIGITS_CLASSES - 1}, got {int(y.min())}..{int(y.max())}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    _check_positive_int(steps, "steps")
    _check_positive_int(batch_size, "batch_size")

    x = x.detach().to("cpu", torch.float32)
    y = y.detach().to("cpu", torch.int64)
    generator = torch.Generator().manual_seed(seed)
    model = DigitsClassifier(generator)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    with _single_thread():
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch_size,), generator=generator)
            xb = x[idx] + noise_std * torch.randn((batch_size, *_IMAGE_SHAPE), generator=generator)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.requires_grad_(False)
    return model.eval()


def _read_cached(path: Path, seed: int) -> DigitsClassifier | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("seed") != str(seed) or metadata.get("recipe") != _CACHE_RECIPE:
                return None
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError):
        # An unreadable file is treated as a stale cache and rebuilt.
        return None
    # A private generator: the weights are overwritten, the global RNG stays untouched.
    model = DigitsClassifier(torch.Generator())
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval()


def _write_atomic(model: DigitsClassifier, path: Path, seed: int) -> None:
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    with atomic_file(path) as tmp:
        save_file(state, str(tmp), metadata={"seed": str(seed), "recipe": _CACHE_RECIPE})


def load_or_train_digits_classifier(cache_dir: str | os.PathLike | None = None, seed: int = 0) -> DigitsClassifier:
    """Digits classifier trained on all 1797 digits, cached on disk when asked.

    Parameters
    ----------
    cache_dir : str or os.PathLike, optional
        Directory holding ``digits_classifier.safetensors``. Weights found
        there are reused when they were trained with the same ``seed`` (and
        the current recipe); otherwise the classifier is trained and saved
        atomically. ``None`` always trains and writes nothing.
    seed : int
        Training seed, see :func:`train_digits_classifier`.

    Returns
    -------
    DigitsClassifier
        On the CPU, in eval mode, with ``requires_grad`` False.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    path = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / CLASSIFIER_FILENAME
        cached = _read_cached(path, seed) if path.exists() else None
        if cached is not None:
            return cached
    images, labels = load_digits()
    model = train_digits_classifier(images, labels, seed=seed)
    if path is not None:
        _write_atomic(model, path, seed)
    return model


def class_accuracy(classifier: DigitsClassifier, images: torch.Tensor, labels) -> float:
    """Share of ``images`` that ``classifier`` assigns to the requested labels.

    Parameters
    ----------
    classifier : DigitsClassifier
        Any module whose ``predict`` maps (B, 1, 8, 8) images to labels.
    images : torch.Tensor
        Shape (B, 1, 8, 8), B >= 1; moved to the classifier's device.
    labels : int or torch.Tensor
        The requested class for every image, or one per image, shape (B,).

    Returns
    -------
    float
        Accuracy in [0, 1].
    """
    _check_images(images)
    if images.shape[0] == 0:
        raise ValueError("images must contain at least one image")
    if isinstance(labels, bool) or not isinstance(labels, int | torch.Tensor):
        raise TypeError(f"labels must be an int or an integer torch.Tensor, got {type(labels).__name__}")
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integers, got {labels.dtype}")
    if labels.ndim == 0:
        labels = labels.expand(images.shape[0])
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be a scalar or have shape ({images.shape[0]},), got {tuple(labels.shape)}")
    param = next(classifier.parameters())
    predicted = classifier.predict(images.to(param.device, param.dtype)).cpu()
    return float((predicted == labels.cpu()).double().mean())


class DigitsScorer:
    """Scores class-conditional digit samples: classifier accuracy, and FD against real digits with its floor.

    The real digits are split at random (``seed``) into two disjoint sets of
    ``size`` images each: the *reference*, against which samples are scored,
    and a second real set whose FD to the reference is the *floor*, what a
    perfect model scores with ``size`` samples (the FD of two finite samples of
    one distribution is not 0). Score ``size`` samples for a like-for-like
    ratio ``fd / floor``; ``size`` is at most half of the 1797 digits.
    """

    def __init__(self, classifier: DigitsClassifier, size: int, seed: int = 0):
        x_real, _ = load_digits()
        if isinstance(size, bool) or not isinstance(size, int) or not 2 <= size <= len(x_real) // 2:
            raise ValueError(
                f"size must be an int in [2, {len(x_real) // 2}] (two disjoint sets of the real digits), got {size!r}"
            )
        self.classifier = classifier
        param = next(classifier.parameters())
        with torch.no_grad():
            feats = classifier.features(x_real.to(param.device, param.dtype)).cpu()
        order = torch.randperm(len(x_real), generator=torch.Generator().manual_seed(seed))
        self.size = size
        self.reference = feats[order[:size]]
        self.floor = frechet_distance(feats[order[size : 2 * size]], self.reference)

    def score(self, images: torch.Tensor, labels) -> dict[str, float]:
        """``{"accuracy", "fd", "fd_over_floor"}`` of ``images`` (B, 1, 8, 8) generated for ``labels``."""
        _check_images(images)
        param = next(self.classifier.parameters())
        with torch.no_grad():
            feats = self.classifier.features(images.to(param.device, param.dtype)).cpu()
        fd = frechet_distance(feats, self.reference)
        return {
            "accuracy": class_accuracy(self.classifier, images, labels),
            "fd": fd,
            "fd_over_floor": fd / self.floor,
        }
