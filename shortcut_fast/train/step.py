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

from ..distributed import is_fsdp, local_tensor
from ..graphs import CapturedCall, GraphCache, weights_key
from ..models import ShortcutModule, unwrap_model
from ..objective import ShortcutConfig, self_consistency_targets, shortcut_loss

TARGET_GRAPHS = GraphCache(max_size=4)  # captured target computations, least recently used dropped first


def can_capture(teacher: nn.Module) -> bool:
    """Whether the targets of ``teacher`` can be captured: a package model, unsharded, on CUDA."""
    base = unwrap_model(teacher)
    param = next(base.parameters(), None)
    return isinstance(base, ShortcutModule) and not is_fsdp(base) and param is not None \
        and param.is_cuda


def graph_targets(teacher, xb, tb, db, yb, guided, *, null_class: int, scale: float | None,
                  clip: float | None, w: torch.Tensor | None = None) -> torch.Tensor:
    """``self_consistency_targets`` replayed from a cached CUDA graph (same arguments, same numbers).

    Falls back to the eager computation for a teacher that cannot be captured
    (see ``can_capture``) and for an empty bootstrap part.
    """
    if xb.shape[0] == 0 or not can_capture(teacher):
        return self_consistency_targets(teacher, xb, tb, db, yb, guided, null_class=null_class, scale=scale,
                                        clip=clip, w=w)
    teacher = unwrap_model(teacher)
    autocast = (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
    key = (weights_key(teacher), tuple(xb.shape), xb.dtype, xb.device, yb is None, guided is None, w is None,
           null_class, scale, clip, autocast, torch.is_grad_enabled())

    def capture():
        def fn(xb, tb, db, yb, guided, w):
            return self_consistency_targets(teacher, xb, tb, db, yb, guided, null_class=null_class, scale=scale,
                                            clip=clip, w=w)

        # autocast's cache of cast weights must not outlive the capture: the casts in a graph only run on replay
        with torch.autocast("cuda", dtype=autocast[1], enabled=autocast[0], cache_enabled=False):
            return CapturedCall(fn, (xb, tb, db, yb, guided, w), pool=TARGET_GRAPHS.shared_pool())

    return TARGET_GRAPHS.get(key, capture).replay(xb, tb, db, yb, guided, w).clone()


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x1: torch.Tensor, y: torch.Tensor | None = None,
               *, config: ShortcutConfig | None = None, ema_model: nn.Module | None = None, ema_decay: float = 0.999,
               generator: torch.Generator | None = None, grad_clip: float | None = 1.0, bf16: bool = True,
               use_graph: bool | None = None) -> dict:
    """One optimizer step of the shortcut objective on ``(x1, y)``; returns the loss logs.

    The function form of what ``Trainer`` does each step, for training loops
    of one's own: targets from ``ema_model`` (when ``config.ema_targets``),
    replayed from a CUDA graph on a GPU (``use_graph=None``: when the teacher
    can be captured; ``False``: eager), bf16 autocast on CUDA when ``bf16``,
    gradient clipping at ``grad_clip`` (None: off), the optimizer step, and
    the EMA update ``ema = lerp(ema, live, 1 - ema_decay)`` (``update_ema``, as ``Trainer`` does). Gives the loss and
    gradients of ``shortcut_loss`` for the same batch and generator state.
    """
    if not isinstance(model, nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"model must be an nn.Module and optimizer a torch.optim.Optimizer, got "
                        f"{type(model).__name__} and {type(optimizer).__name__}")
    if use_graph is not None and not isinstance(use_graph, bool):
        raise TypeError(f"use_graph must be True, False or None (automatic), got {use_graph!r}")
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must be a number in [0, 1], got {ema_decay!r}")
    if use_graph and not x1.is_cuda:
        raise ValueError(f"use_graph=True needs CUDA tensors; x1 is on {x1.device}")
    targets = graph_targets if use_graph is not False and x1.is_cuda else self_consistency_targets
    with torch.autocast(x1.device.type, dtype=torch.bfloat16, enabled=bf16 and x1.is_cuda):
        loss, logs = shortcut_loss(model, x1, y, config, target_model=ema_model, generator=generator,
                                   targets=targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    live = unwrap_model(model)
    logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(live.parameters(), math.inf if grad_clip is None else grad_clip)
    optimizer.step()
    if ema_model is not None:
        update_ema(ema_model, live, ema_decay)
    return logs


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """``ema = lerp(ema, live, 1 - decay)`` for every parameter (each rank's shard of a sharded one), in one
    foreach call; buffers are copied."""
    ema = [local_tensor(p) for p in ema_model.parameters()]
    live = [local_tensor(p) for p in model.parameters()]
    torch._foreach_lerp_(ema, live, 1.0 - decay)
    for b_ema, b in zip(ema_model.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)

