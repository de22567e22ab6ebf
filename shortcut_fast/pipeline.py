"""``ShortcutPipeline``: generation the way diffusers users know it, a model plus an optional VAE in one folder.

    pipe = ShortcutPipeline(model, vae=vae, num_inference_steps=1)
    pipe.save_pretrained("fmnist-latent/")
    pipe = ShortcutPipeline.from_pretrained("fmnist-latent/")
    images = pipe(class_labels=[0, 1, 2], num_inference_steps=1)  # a list of PIL images

The folder holds ``pipeline.json`` (the defaults), ``model/`` (``save_model``:
config and safetensors weights) and, for a latent model, ``vae/`` (the
diffusers ``AutoencoderKL``'s own ``save_pretrained``). Only local files are
read. A call is ``sample`` (any step count or schedule the model takes) and,
with a VAE, ``decode`` of the scaled latents; pixels come out in [-1, 1] and
are turned into images (grayscale for one channel, RGB for three).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from . import checks
from .checkpoint import atomic_directory, load_model, parse_device, read_json, save_model, write_json
from .data.latents import decode, load_vae, scaling_factor
from .models import ShortcutDiT
from .sampling import sample

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "shortcut_fast.pipeline/1"
OUTPUT_TYPES = ("pil", "np", "pt")


class ShortcutPipeline:
    """A class-conditional (or unconditional) ``ShortcutDiT``, an optional VAE and the default sampling settings.

    ``num_inference_steps`` and ``cfg_scale`` are the defaults a call may override. With ``vae`` the model
    generates the VAE's scaled latents (``vae.config.scaling_factor`` times the posterior), as
    ``shortcut-fast encode`` stores them.
    """

    def __init__(
        self,
        model: nn.Module,
        vae: nn.Module | None = None,
        *,
        num_inference_steps: int | tuple[float, ...] = 1,
        cfg_scale: float | None = None,
    ):
        if not isinstance(model, ShortcutDiT):
            raise TypeError(f"model must be a ShortcutDiT, got {type(model).__name__}")
        if vae is not None:
            scaling_factor(vae)  # an AutoencoderKL, or a clear error now rather than at the first call
        self.model, self.vae = model.eval(), vae
        self.num_inference_steps = num_inference_steps
        self.cfg_scale = cfg_scale

    @property
    def device(self) -> torch.device:
        """The model's device, where noise is drawn."""
        return next(self.model.parameters()).device

    def __call__(
        self,
        class_labels: Sequence[int] | torch.Tensor | None = None,
        *,
        batch_size: int | None = None,
        num_inference_steps: int | tuple[float, ...] | None = None,
        cfg_scale: float | None = None,
        generator: torch.Generator | None = None,
        output_type: str = "pil",
    ):
        """Generate one image per entry of ``class_labels`` (or ``batch_size`` unconditional ones).

        ``output_type``: ``"pil"`` (a list of ``PIL.Image``), ``"np"`` (uint8 array (N, H, W, C)) or
        ``"pt"`` (a float tensor (N, C, H, W) in [-1, 1]).
        """
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")
        y = self._labels(class_labels, batch_size)
        n = int(y.shape[0]) if y is not None else int(batch_size or 0)
        shape = (n, self.model.in_channels, self.model.input_size, self.model.input_size)
        steps = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        scale = self.cfg_scale if cfg_scale is None else cfg_scale
        with torch.no_grad():
            x = sample(self.model, shape=shape, steps=steps, y=y, cfg_scale=scale, generator=generator)
            pixels = decode(x, self.vae) if self.vae is not None else x.clamp(-1, 1)
        if output_type == "pt":
            return pixels
        array = ((pixels.float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return array
        return [Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in np.ascontiguousarray(array)]

    def _labels(self, class_labels, batch_size) -> torch.Tensor | None:
        classes = self.model.num_classes
        if class_labels is None:
            if batch_size is None:
                raise ValueError("give class_labels (one image each) or batch_size (unconditional images)")
            checks.check_int("batch_size", batch_size, 1)
            return None
        if batch_size is not None:
            raise ValueError("give class_labels or batch_size, not both: the labels set the batch")
        if not classes:
            raise ValueError("class_labels given, but the model is unconditional (num_classes=0); use batch_size")
        y = torch.as_tensor(class_labels)
        if y.dim() != 1 or y.numel() == 0 or y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"class_labels must be a non-empty 1-D sequence of ints, got {class_labels!r}")
        return y.to(self.device, torch.long)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the pipeline to ``directory`` atomically (``pipeline.json``, ``model/``, ``vae/``)."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            save_model(self.model, tmp / "model")
            if self.vae is not None:
                self.vae.save_pretrained(str(tmp / "vae"))  # type: ignore[operator]  # an AutoencoderKL
            steps = self.num_inference_steps
            write_json(
                tmp / PIPELINE_FILE,
                dict(
                    format=PIPELINE_FORMAT,
                    num_inference_steps=steps if isinstance(steps, int) else list(steps),
                    cfg_scale=self.cfg_scale,
                    vae=self.vae is not None,
                ),
            )
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> ShortcutPipeline:
        """Load a pipeline written by ``save_pretrained`` from the local folder ``directory``."""
        directory = Path(directory)
        if not (directory / PIPELINE_FILE).is_file():
            raise ValueError(f"{directory} holds no {PIPELINE_FILE}: it is not a folder save_pretrained wrote")
        spec = read_json(directory / PIPELINE_FILE)
        if spec.get("format") != PIPELINE_FORMAT:
            raise ValueError(f"{directory / PIPELINE_FILE} has format {spec.get('format')!r}, not {PIPELINE_FORMAT!r}")
        device = parse_device(device)
        model = load_model(directory / "model", device=device)
        vae = load_vae(directory / "vae", device=device) if spec.get("vae") else None
        steps = spec["num_inference_steps"]
        return cls(
            model,
            vae,
            num_inference_steps=steps if isinstance(steps, int) else tuple(steps),
            cfg_scale=spec.get("cfg_scale"),
        )
