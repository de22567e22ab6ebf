"""Sampling: N Euler steps of size ``1/N`` from noise at ``t = 0`` to data at ``t = 1``."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import functional as SF
from .models import ShortcutModule, check_velocity, unwrap_model
from .steps import DEFAULT_MIN_STEP, check_num_steps

MAX_NOISE_ELEMENTS = 2**31  # per call (8 GiB of fp32 noise); draw larger sets in several calls
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_fits_model(model: nn.Module, what: str, x: torch.Tensor) -> None:
    """The package's models know their input shape: check it before any work (``x`` may be a meta tensor)."""
    base = unwrap_model(model)
    if isinstance(base, ShortcutModule):
        try:
            base._check_x(x)
        except ValueError as err:
            raise ValueError(f"{what} {tuple(x.shape)} does not fit the model: {err}") from None


def _model_dtype(model: nn.Module, fallback: torch.dtype) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else fallback


def _noise(model, noise, shape, generator, dtype) -> torch.Tensor:
    if (noise is None) == (shape is None):
        raise ValueError("give exactly one of noise (a tensor) or shape (a tuple such as (16, 1, 8, 8))")
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or noise.dtype not in FLOAT_DTYPES:
            got = getattr(noise, "dtype", type(noise).__name__)
            raise TypeError(f"noise must be a floating-point tensor (float16/bfloat16/float32/float64), got {got}")
        if noise.dim() < 2 or noise.shape[0] < 1:
            raise ValueError(f"noise must be a batch (B, ...) with B >= 1, got shape {tuple(noise.shape)}")
        param = next(model.parameters(), None)
        if param is not None and noise.device != param.device:
            raise ValueError(f"noise is on {noise.device} but the model is on {param.device}; move one of them")
        _check_fits_model(model, "noise of shape", noise)
        if not bool(torch.isfinite(noise).all()):
            raise ValueError("noise holds NaN or inf values")
        return noise
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 2 or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(f"shape must be a tuple of at least two positive ints (B, ...), got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) > MAX_NOISE_ELEMENTS:
        raise ValueError(f"shape {shape} holds {math.prod(shape):.3g} values, more than "
                         f"MAX_NOISE_ELEMENTS={MAX_NOISE_ELEMENTS:.3g}; sample in smaller batches")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {[str(t) for t in FLOAT_DTYPES]}, got {dtype!r}")
    device = _model_device(model)
    if device.type == "meta":
        raise ValueError("the model is on the meta device: it has no weights to sample with; load them first")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the model is on {device}; "
                         "use torch.Generator(device) on the model's device")
    _check_fits_model(model, "shape", torch.empty(shape, device="meta"))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


@torch.no_grad()
def sample(
    model: nn.Module,
    noise: torch.Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    steps: int = 1,
    y: torch.Tensor | None = None,
    cfg_scale: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Generate samples with ``steps`` Euler steps of size ``d = 1/steps``.

    ``model`` is any module called as ``model(x, t, d, y)``. Give either
    ``noise`` (the result is a deterministic function of it) or ``shape``
    (noise drawn from ``generator`` on the model's device, in ``dtype``).
    ``steps`` is a power of two in ``[1, 1/min_step]`` (``min_step`` of the
    model, 1/128 when it has none). With ``cfg_scale=w`` the velocity is
    ``v_null + w (v_y - v_null)``, the null class being ``model.num_classes``.

    ``sample(model, noise=z, steps=1, y=y)`` equals ``z + model(z, 0, 1, y)``.
    The network runs in the dtype of its weights, the Euler updates in the
    dtype of the noise. Returns a new tensor of the shape and dtype of the noise.
    A ``shape`` of more than ``MAX_NOISE_ELEMENTS`` values is refused: draw it in several calls.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module called as model(x, t, d, y), got {type(model).__name__}")
    base = unwrap_model(model)
    steps = check_num_steps(steps, getattr(base, "min_step", DEFAULT_MIN_STEP))
    x = _noise(model, noise, shape, generator, dtype)
    batch = x.shape[0]
    if y is not None and not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor of class indices or None, got {type(y).__name__}")
    if cfg_scale is not None:
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
            raise TypeError(f"cfg_scale must be a number or None, got {cfg_scale!r}")
        if not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
        if getattr(base, "num_classes", 0) <= 0:
            raise ValueError("cfg_scale needs a class-conditional model (num_classes > 0); this one is unconditional")
        if y is None:
            raise ValueError("cfg_scale needs labels y to guide towards")
    if isinstance(y, torch.Tensor) and y.shape != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match the batch of the noise, got {tuple(y.shape)}")

    # the network runs in its weights' dtype; the Euler sum stays in the noise's dtype
    net_dtype = _model_dtype(model, x.dtype)
    d = 1.0 / steps
    d_vec = torch.full((batch,), d, device=x.device)
    for i in tqdm(range(steps), desc="sampling", disable=not progress, leave=False):
        t = torch.full((batch,), i * d, device=x.device)
        if cfg_scale is None:
            v = model(x.to(net_dtype), t, d_vec, y)
            check_velocity(v, x.shape)
        else:
            # conditional and null-class rows in one batched forward
            null = torch.full_like(y, base.num_classes)
            v = model(torch.cat([x, x]).to(net_dtype), torch.cat([t, t]), torch.cat([d_vec, d_vec]),
                      torch.cat([y, null]))
            check_velocity(v, torch.Size([2 * batch, *x.shape[1:]]))
            v_cond, v_null = v.chunk(2)
            v = SF.guided_velocity(v_cond, v_null, cfg_scale)
        x = SF.euler_step(x, v.to(x.dtype), d)
    return x
