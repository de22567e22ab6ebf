"""The fast training step: self-consistency targets replayed from one CUDA graph.

The targets of a shortcut step need two no-gradient forwards of the target
model at ``d/2``, a midpoint update and a clipped average: dozens of kernels
whose launches dominate at the moderate batch sizes of the bootstrap rows.
``graph_targets`` captures all of it once per (teacher weights, shapes,
settings) and replays it as one launch each step; the forward/backward over
the mixed batch then runs as usual (bf16 autocast, fused AdamW, a foreach EMA).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .. import checks
from ..distributed import full_tensor, is_fsdp, local_tensor
from ..graphs import CapturedCall, GraphCache, weights_key
from ..models import ShortcutModule, unwrap_model
from ..objective import (
    ShortcutConfig,
    check_loss_inputs,
    loss_on_checked_inputs,
    loss_value_conditions,
    self_consistency_targets,
)

TARGET_GRAPHS = GraphCache(max_size=4)  # captured target computations, least recently used dropped first


def can_capture(teacher: nn.Module) -> bool:
    """Whether the targets of ``teacher`` can be captured: a package model, unsharded, on CUDA."""
    base = unwrap_model(teacher)
    param = next(base.parameters(), None)
    return isinstance(base, ShortcutModule) and not is_fsdp(base) and param is not None and param.is_cuda


def graph_targets(
    teacher,
    xb,
    tb,
    db,
    yb,
    guided,
    *,
    null_class: int,
    scale: float | None,
    clip: float | None,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """``self_consistency_targets`` replayed from a cached CUDA graph (same arguments, same numbers).

    Falls back to the eager computation for a teacher that cannot be captured
    (see ``can_capture``) and for an empty bootstrap part.
    """
    if xb.shape[0] == 0 or not can_capture(teacher):
        return self_consistency_targets(
            teacher, xb, tb, db, yb, guided, null_class=null_class, scale=scale, clip=clip, w=w
        )
    teacher = unwrap_model(teacher)
    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    key = (
        weights_key(teacher),
        tuple(xb.shape),
        xb.dtype,
        xb.device,
        yb is None,
        guided is None,
        w is None,
        null_class,
        scale,
        clip,
        autocast,
        torch.is_grad_enabled(),
    )

    def capture():
        def fn(xb, tb, db, yb, guided, w):
            return self_consistency_targets(
                teacher, xb, tb, db, yb, guided, null_class=null_class, scale=scale, clip=clip, w=w
            )

        # autocast's cache of cast weights must not outlive the capture: the casts in a graph only run on replay
        with torch.autocast("cuda", dtype=autocast[1], enabled=autocast[0], cache_enabled=False):
            return CapturedCall(fn, (xb, tb, db, yb, guided, w), pool=TARGET_GRAPHS.shared_pool())

    return TARGET_GRAPHS.get(key, capture).replay(xb, tb, db, yb, guided, w).clone()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x1: torch.Tensor,
    y: torch.Tensor | None = None,
    *,
    config: ShortcutConfig | None = None,
    ema_model: nn.Module | None = None,
    ema_decay: float = 0.999,
    generator: torch.Generator | None = None,
    grad_clip: float | None = 1.0,
    bf16: bool = True,
    use_graph: bool | None = None,
    target_ema_model: nn.Module | None = None,
    target_ema_decay: float = 0.99,
) -> dict:
    """One optimizer step of the shortcut objective on ``(x1, y)``; returns the loss logs.

    The function form of what ``Trainer`` does each step, for training loops
    of one's own: targets from ``ema_model`` (when ``config.ema_targets``),
    replayed from a CUDA graph on a GPU (``use_graph=None``: when the teacher
    can be captured; ``False``: eager), bf16 autocast on CUDA when ``bf16``,
    gradient clipping at ``grad_clip`` (None: off), the optimizer step, and
    the EMA update ``ema = lerp(ema, live, 1 - ema_decay)`` (``update_ema``, as ``Trainer`` does). Twin EMA
    (``TrainConfig.target_ema_decay``): with ``target_ema_model`` the targets come from it instead, and it is
    updated with ``target_ema_decay`` after ``ema_model``. Gives the loss and
    gradients of ``shortcut_loss`` for the same batch and generator state; like it, checks that ``x1`` is
    finite and the labels in range (one host read) before any work.
    """
    if not isinstance(model, nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"model must be an nn.Module and optimizer a torch.optim.Optimizer, got "
            f"{type(model).__name__} and {type(optimizer).__name__}"
        )
    checks.check_optional_bool("use_graph", use_graph, "automatic")
    checks.check_number("ema_decay", ema_decay, 0.0, 1.0)
    checks.check_number("target_ema_decay", target_ema_decay, 0.0, 1.0)
    if target_ema_model is not None and not isinstance(target_ema_model, nn.Module):
        raise TypeError(f"target_ema_model must be an nn.Module or None, got {type(target_ema_model).__name__}")
    config, null_class = check_loss_inputs(model, x1, y, config, generator)
    if use_graph and not x1.is_cuda:
        raise ValueError(f"use_graph=True needs CUDA tensors; x1 is on {x1.device}")
    checks.require(*loss_value_conditions(x1, y, null_class))
    targets = graph_targets if use_graph is not False and x1.is_cuda else self_consistency_targets
    logs, _ = step_on_checked_inputs(
        model,
        optimizer,
        x1,
        y,
        config=config,
        null_class=null_class,
        ema_model=ema_model,
        ema_decay=ema_decay,
        generator=generator,
        grad_clip=grad_clip,
        bf16=bf16 and x1.is_cuda,
        targets=targets,
        target_model=target_ema_model,
        target_decay=target_ema_decay,
    )
    return logs


def step_on_checked_inputs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x1: torch.Tensor,
    y,
    *,
    config: ShortcutConfig,
    null_class: int,
    ema_model: nn.Module | None,
    ema_decay: float,
    generator,
    grad_clip: float | None,
    bf16: bool,
    targets,
    shard=(0, 1),
    skip_non_finite: bool = False,
    agree=None,
    allowed: torch.Tensor | None = None,
    target_model: nn.Module | None = None,
    target_decay: float | None = None,
) -> tuple[dict, torch.Tensor | None]:
    """The one training-step core of ``train_step`` and ``Trainer``: bf16 autocast (when ``bf16``), loss,
    backward, clipping, the optimizer step and the EMA update, on checked inputs and without a host read.

    ``skip_non_finite`` (``Trainer``; the optimizer must be a fused AdamW) makes the update conditional on
    one device flag, ``ok = isfinite(x1) & isfinite(loss) & isfinite(grad_norm)``, combined over ranks by
    ``agree`` and and'ed with ``allowed`` (a device flag of the caller's): where it is false, weights,
    optimizer state and EMA stay exactly as they were. ``target_model`` (twin EMA), when given, builds the
    self-consistency targets in place of ``ema_model`` and is updated with ``target_decay``. Returns the logs
    and ``ok`` (None without ``skip_non_finite``).
    """
    teacher = ema_model if target_model is None else target_model
    with torch.autocast(x1.device.type, dtype=torch.bfloat16, enabled=bf16):
        loss, logs = loss_on_checked_inputs(model, x1, y, config, teacher, generator, shard, targets, null_class)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    live = unwrap_model(model)
    max_norm = math.inf if grad_clip is None else grad_clip
    logs["grad_norm"] = full_tensor(torch.nn.utils.clip_grad_norm_(live.parameters(), max_norm))
    ok = None
    if skip_non_finite:
        # one scan of the batch, folded with the loss and the gradient norm into one flag that stays on the device
        ok = torch.isfinite(x1).all() & torch.isfinite(loss.detach()) & torch.isfinite(logs["grad_norm"])
        ok = ok if agree is None else agree(ok)
        ok = ok if allowed is None else ok & allowed
        # The fused AdamW kernels skip the whole update (weights, moments and step count) where found_inf
        # is set: the mechanism of gradient scaling, at no cost. Restoring from a copy after an
        # unconditional step would cost three extra copies of the weights per step.
        optimizer.found_inf = (~ok).float()  # type: ignore[attr-defined]  # read by the fused AdamW
    optimizer.step()
    if skip_non_finite:
        del optimizer.found_inf  # type: ignore[attr-defined]
    if ema_model is not None:
        update_ema(ema_model, live, ema_decay, ok)
    if target_model is not None and target_model is not ema_model:
        assert target_decay is not None  # given with target_model
        update_ema(target_model, live, target_decay, ok)
    return logs, ok


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float, ok: torch.Tensor | None = None) -> None:
    """``ema = lerp(ema, live, 1 - decay)`` for every parameter (each rank's shard of a sharded one), in one
    foreach call; buffers are copied. With the device flag ``ok`` the update applies only where it is true."""
    if is_fsdp(ema_model):
        # the root stays gathered after the target forwards (FSDP expects a backward next)
        ema_model.reshard()  # type: ignore[operator]  # an FSDPModule
    ema = [local_tensor(p) for p in ema_model.parameters()]
    live = [local_tensor(p) for p in model.parameters()]
    if ok is None:
        torch._foreach_lerp_(ema, live, 1.0 - decay)
    else:
        # a weight of 0 leaves each EMA value exactly as it is (lerp adds 0 * (live - ema))
        weight = ok.to(ema[0].dtype) * (1.0 - decay) if ema else None
        torch._foreach_lerp_(ema, live, [weight] * len(ema))  # type: ignore[list-item]  # weight is None: no ema
    for b_ema, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b if ok is None else torch.where(ok, b, b_ema))
