"""Latent datasets from a diffusers ``AutoencoderKL``: encode an image folder into shards, decode samples to pixels.

``encode_folder`` writes ``latents-00000.safetensors``, ... into a folder;
each holds ``x`` (latents times the VAE's scaling factor, float32) and ``y``
(the class index of each image, from the sorted class folders), and its
metadata records the scaling factor, the source folder, the VAE, the image
size, whether the latents are the posterior means or samples, and the class
names. ``TensorShards`` reads them memory-mapped, so training never loads a
shard whole. Needs the ``[latent]`` extra (diffusers); the VAE is read from a
local directory and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..checkpoint import atomic_file, parse_device
from ..distributed import rank_and_world
from .datasets import _IMAGE_ERRORS, ImageFolder

SHARD_PATTERN = "latents-{:05d}.safetensors"
"""File name of shard ``i`` in an encoded folder."""

LATENT_KINDS = ("mean", "sample")


def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise ImportError("latent datasets need diffusers: pip install 'shortcut_fast[latent]'") from err
    return diffusers


def load_vae(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> torch.nn.Module:
    """A diffusers ``AutoencoderKL`` from a local directory (``save_pretrained`` output), in eval mode.

    ``path`` is the VAE's own folder or a pipeline folder with a ``vae``
    sub-folder. Only local files are read; a missing folder is a ValueError.
    """
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "vae" / "config.json").is_file():
        path = path / "vae"
    if not (path / "config.json").is_file():
        raise ValueError(
            f"--vae {path} is not a saved AutoencoderKL: expected a folder with config.json and the "
            "weights (from save_pretrained, or a pipeline folder with a vae/ sub-folder); "
            "nothing is downloaded"
        )
    vae = _diffusers().AutoencoderKL.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype)
    return vae.to(parse_device(device)).eval().requires_grad_(False)


def scaling_factor(vae: torch.nn.Module) -> float:
    """The factor that brings the VAE's latents to about unit variance (``vae.config.scaling_factor``)."""
    value = getattr(getattr(vae, "config", None), "scaling_factor", None)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"the VAE has no positive config.scaling_factor (got {value!r}); is it an AutoencoderKL?")
    return float(value)


@torch.no_grad()
def decode(latents: torch.Tensor, vae: torch.nn.Module, *, batch_size: int = 32) -> torch.Tensor:
    """Pixels in [-1, 1], shape (N, 3, H, W), from scaled latents (N, C, h, w) such as a latent model's samples.

    The latents are divided by the VAE's scaling factor and decoded in
    batches of ``batch_size`` on the VAE's device; the result is float32 on
    the device of ``latents``.
    """
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.dim() != 4:
        raise ValueError(
            f"latents must be a float tensor (N, C, h, w), got "
            f"{getattr(latents, 'dtype', type(latents).__name__)} {tuple(getattr(latents, 'shape', ()))}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    param = next(vae.parameters())
    factor = scaling_factor(vae)
    chunks = [
        vae.decode(chunk.to(param.device, param.dtype) / factor).sample.float().clamp(-1, 1).to(latents.device)  # type: ignore[operator]  # an AutoencoderKL
        for chunk in latents.split(batch_size)
    ]
    return torch.cat(chunks)


class _Images(Dataset):
    """Items ``start..stop`` of an ``ImageFolder`` as ``(x, label, ok)``; an unreadable file gives ``ok=False``."""

    def __init__(self, images: ImageFolder, start: int, stop: int):
        self.images, self.start, self.stop = images, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        path, label = self.images.samples[self.start + index]
        try:
            return self.images.load(path), label, True
        except _IMAGE_ERRORS:
            size = self.images.image_size
            return torch.zeros(3, size, size), label, False


def _finished(path: Path, meta: dict) -> bool:
    """Whether ``path`` is a complete shard written with the same settings (``meta``)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            found = handle.metadata() or {}
    except (OSError, SafetensorError):
        return False
    return all(found.get(k) == v for k, v in meta.items())


def encode_folder(
    root: str | os.PathLike,
    out: str | os.PathLike,
    vae: torch.nn.Module | str | os.PathLike,
    *,
    image_size: int,
    latents: str = "mean",
    batch_size: int = 32,
    shard_size: int = 4096,
    num_workers: int = 0,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Encode ``root/<class>/<image>`` into latent shards in ``out``; returns a summary of counts.

    Each image is resized (shorter side to ``image_size``, bicubic),
    center-cropped, scaled to [-1, 1] and encoded; ``latents="mean"`` stores
    the posterior mean, ``"sample"`` a draw from it (seeded by ``seed`` and the
    shard). ``vae`` is an ``AutoencoderKL`` or its local folder. Shard ``i``
    holds images ``i * shard_size`` onwards, in sorted order; a shard already
    written with the same settings is skipped, so a stopped run resumes.
    Under ``torchrun`` rank ``r`` writes the shards ``i`` with ``i % world ==
    r`` and the summary counts all ranks. Unreadable images are skipped and
    counted, never fatal. Summary keys: ``images`` (readable at the start),
    ``encoded``, ``skipped`` (unreadable), ``shards`` (in all),
    ``shards_written`` and ``shards_skipped`` (already done).
    """
    if latents not in LATENT_KINDS:
        raise ValueError(f"latents must be one of {LATENT_KINDS}, got {latents!r}")
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("shard_size", shard_size, 1),
        ("num_workers", num_workers, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if not isinstance(vae, torch.nn.Module):
        vae_source, vae = str(vae), load_vae(vae)
    else:
        vae_source = str(getattr(vae.config, "_name_or_path", "") or type(vae).__name__)
    images = ImageFolder(root, image_size, flip=False)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    param = next(vae.parameters())
    meta = {
        "scaling_factor": repr(scaling_factor(vae)),
        "source": str(Path(root).resolve()),
        "vae": vae_source,
        "image_size": str(image_size),
        "latents": latents,
        "classes": json.dumps(images.classes),
    }
    rank, world = rank_and_world()
    num_shards = -(-len(images) // shard_size)
    mine = range(rank, num_shards, world)
    counts = {"encoded": 0, "skipped": 0, "shards_written": 0, "shards_skipped": 0}
    bar = tqdm(
        total=len(mine), desc=f"encode (rank {rank})" if world > 1 else "encode", unit="shard", disable=not progress
    )
    for shard in mine:
        path = out / SHARD_PATTERN.format(shard)
        if _finished(path, meta):
            counts["shards_skipped"] += 1
            bar.update()
            continue
        start = shard * shard_size
        loader = DataLoader(
            _Images(images, start, min(start + shard_size, len(images))), batch_size=batch_size, num_workers=num_workers
        )
        gen = torch.Generator(param.device).manual_seed(seed * 1_000_003 + shard)
        xs, ys = [], []
        for x, y, ok in loader:
            counts["skipped"] += int((~ok).sum())
            if ok.any():
                with torch.no_grad():
                    dist_ = vae.encode(x[ok].to(param.device, param.dtype)).latent_dist  # type: ignore[operator]
                    z = dist_.mean if latents == "mean" else dist_.sample(generator=gen)
                xs.append((z.float() * scaling_factor(vae)).cpu())
                ys.append(y[ok])
        if xs:
            x_all, y_all = torch.cat(xs), torch.cat(ys).to(torch.int64)
            with atomic_file(path) as tmp:
                save_file({"x": x_all.contiguous(), "y": y_all}, str(tmp), metadata=meta)
            counts["encoded"] += len(x_all)
            counts["shards_written"] += 1
        bar.update()
    bar.close()
    if world > 1:
        totals = torch.tensor(
            list(counts.values()), dtype=torch.int64, device=param.device if dist.get_backend() == "nccl" else "cpu"
        )
        dist.all_reduce(totals)
        counts = dict(zip(counts, totals.tolist(), strict=True))
    skipped = counts.pop("skipped") + len(images.skipped)
    return {"images": len(images), "skipped": skipped, "shards": num_shards, **counts}
