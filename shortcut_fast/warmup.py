"""``shortcut_fast.tune``: make ``auto``'s kernel decisions for a model ahead of time.

The decisions are made at the first call of each shape anyway
(``ops/autotune.py``); ``tune`` makes them before work starts, so that no
timing falls into a served request, a ``torch.compile`` trace or a CUDA-graph
capture. It runs what the model will run: ``sample`` at each batch size (and,
with ``train=True``, one ``shortcut_loss`` and its backward on a copy of the
model, so the model's own gradients and the random streams are untouched).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from . import checks
from .models import ShortcutDiT, ShortcutMLP, unwrap_model
from .objective import ShortcutConfig, shortcut_loss
from .ops import autotune
from .sampling import sample


def _sample_shape(model: nn.Module, sample_shape: Sequence[int] | None) -> tuple[int, ...]:
    if sample_shape is not None:
        shape = tuple(sample_shape)
        if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"sample_shape must be a non-empty sequence of positive ints, got {sample_shape!r}")
        return shape
    if isinstance(model, ShortcutDiT):
        return (model.in_channels, model.input_size, model.input_size)
    if isinstance(model, ShortcutMLP):
        return (model.dim,)
    raise ValueError(
        f"the shape of one sample of a {type(model).__name__} is not known: pass sample_shape=(C, H, W) or (dim,)"
    )


def tune(
    model: nn.Module,
    batch_sizes: Sequence[int] = (1,),
    *,
    sample_shape: Sequence[int] | None = None,
    steps: int = 1,
    cfg_scale: float | None = None,
    train: bool = False,
    config: ShortcutConfig | None = None,
) -> list[dict]:
    """Decide, for every fused op ``model`` runs at these batch sizes, whether ``auto`` keeps its kernel.

    ``sample(model, shape=(b, *sample_shape), steps=steps, cfg_scale=cfg_scale)`` runs once per ``b`` in
    ``batch_sizes`` (``sample_shape`` defaults to the package models' own), and with ``train=True`` one
    ``shortcut_loss(..., config)`` and its backward per ``b`` on a copy of the model. Returns
    ``autotune.table()``: one row per decision of this process (op, dtypes, shape bucket, what ``auto``
    runs, the measured times and why). Under ``SHORTCUT_FAST_AUTO=fixed`` or a forced backend nothing is
    decided.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(batch_sizes, int) or not batch_sizes:
        raise ValueError(f"batch_sizes must be a non-empty sequence of ints, got {batch_sizes!r}")
    for b in batch_sizes:
        checks.check_int("batch_sizes", b, 1)
    base = unwrap_model(model)
    shape = _sample_shape(base, sample_shape)
    param = next(base.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    classes = int(getattr(base, "num_classes", 0) or 0)
    gen = torch.Generator(device).manual_seed(0)
    # fork_rng: nothing here moves the global random streams a training run or a seeded script relies on
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for b in batch_sizes:
            y = torch.arange(b, device=device) % classes if classes else None
            with torch.no_grad():
                sample(model, shape=(b, *shape), steps=steps, y=y, cfg_scale=cfg_scale, generator=gen)
            if train:
                twin = copy.deepcopy(base).train()
                x1 = torch.randn((b, *shape), generator=gen, device=device)
                loss_config = config or ShortcutConfig(min_step=float(getattr(base, "min_step", 1 / 128)))
                loss, _ = shortcut_loss(twin, x1, y, loss_config, target_model=twin, generator=gen)
                loss.backward()
    return autotune.table()
