"""Fine-tuning a flow-matching model into a shortcut model.

A model trained with plain flow matching (``ShortcutConfig(objective="flow")``,
or any flow model of the same architecture whose weights lack the step-size
table) knows the velocity at the smallest step ``d_min`` only. Copying the
``d_min`` row of the step-size table into every row makes every level output
that flow velocity: the fine-tuning run then starts exactly as the flow model
and the self-consistency loss teaches the larger steps from there.

``from_flow_model`` (``sf.from_flow_model(source, sf.ShortcutDiT)``) builds such
a model; ``shortcut-fast train --init DIR`` is a thin route to it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.nn as nn

from .checkpoint import CONFIG_FILE, build_model, load_model, read_json, resolve_checkpoint
from .models import ShortcutModule, unwrap_model

STEP_TABLE_KEY = "cond.d_table.weight"
"""State-dict key of the step-size table (one row per level, level 0 = ``d_min``)."""


@torch.no_grad()
def copy_flow_level(model: ShortcutModule) -> ShortcutModule:
    """Copy the ``d_min`` row (level 0) of the step-size table into every row, in place.

    Afterwards ``model(x, t, d, y)`` is the same for every step size ``d``: the
    velocity the model had at ``d_min``. Returns ``model``.
    """
    base = unwrap_model(model)
    if not isinstance(base, ShortcutModule):
        raise TypeError(f"model must be a ShortcutDiT or ShortcutMLP, got {type(base).__name__}")
    _check_table(base)
    # the package's conditioning (an OfficialConditionEmbedder has no step-size table)
    table: torch.Tensor = base.cond.d_table.weight  # type: ignore[union-attr,assignment]
    table.copy_(table[:1].expand_as(table))
    return model


def _check_table(model: ShortcutModule) -> None:
    if model.continuous_steps:
        raise ValueError(
            "a model with step_embedding='sinusoidal' has no step-size table to fill from the flow level; "
            "copy_flow_level and from_flow_model take models with step_embedding='table'"
        )


def _check_architecture(cls: type, model: nn.Module, source) -> None:
    if not isinstance(model, cls):
        raise ValueError(f"{source} holds a {type(model).__name__}, not a {cls.__name__}")


def from_flow_model(
    source,
    cls: type = ShortcutModule,
    *,
    ema: bool | None = None,
    config: dict | None = None,
    device: str | torch.device | None = None,
) -> ShortcutModule:
    """A shortcut model that starts as the flow model ``source`` at every step size.

    Parameters
    ----------
    source : ShortcutModule, path or dict
        The flow model: a model instance (copied, not modified); a directory
        written by ``save_model``, ``Trainer.save`` or ``shortcut-fast train``
        (its ``latest`` checkpoint; EMA weights when present unless ``ema=False``);
        or a state dict of flow-only weights, which needs ``config``. A state
        dict may lack the step-size table (``cond.d_table.weight``, a flow
        model never needs one): it then starts at zero, which adds nothing to
        the conditioning.
    cls : type
        The class the result must be (``ShortcutDiT``, ``ShortcutMLP``);
        ``ShortcutModule`` accepts either.
    ema : bool, optional
        For a directory: as in ``load_model``.
    config : dict, optional
        Constructor settings of ``cls`` for a state-dict ``source``.
    device : str or torch.device, optional
        Where to put the result (default: where the source is, the CPU for files).

    Returns
    -------
    ShortcutModule
        In train mode with every weight trainable (``requires_grad``; an EMA
        copy is often frozen), with the ``d_min`` row of the step-size table copied into
        every row (see ``copy_flow_level``).
    """
    if not (isinstance(cls, type) and issubclass(cls, ShortcutModule)):
        raise TypeError(f"cls must be a ShortcutModule subclass, got {cls!r}")
    if isinstance(source, nn.Module):
        model = copy.deepcopy(unwrap_model(source))
        _check_architecture(cls, model, "the flow model")
        if config is not None:
            raise ValueError("config applies to a state-dict source only; the model instance has its own")
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is not a model directory")
        if config is not None:
            raise ValueError("config applies to a state-dict source only; the directory has its own")
        model = load_model(path, ema=ema)
        _check_architecture(cls, model, path)
    elif isinstance(source, dict):
        if config is None:
            raise ValueError("a state-dict source needs config= (the constructor settings of the model)")
        if cls is ShortcutModule:
            raise ValueError("a state-dict source needs a concrete class: ShortcutDiT.from_flow_model(...)")
        model = cls(**config)
        _check_table(model)
        state = dict(source)
        if STEP_TABLE_KEY not in state:
            state[STEP_TABLE_KEY] = torch.zeros_like(model.cond.d_table.weight)  # type: ignore[union-attr,arg-type]
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"the flow weights do not fit {cls.__name__}(**config): {err}") from err
    else:
        raise TypeError(f"source must be a model, a model directory or a state dict, got {type(source).__name__}")
    assert isinstance(model, ShortcutModule)  # an instance of cls, a ShortcutModule subclass (checked above)
    copy_flow_level(model)
    if device is not None:
        model = model.to(device)
    return model.train().requires_grad_(True)


def read_model_spec(directory: str | os.PathLike) -> dict:
    """The ``{"class", "config"}`` of the model saved in ``directory`` (its ``latest`` checkpoint)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a model directory")
    path = resolve_checkpoint(directory) / CONFIG_FILE
    spec = read_json(path)
    build_model(spec, path)  # validates the class and its settings
    return spec


def _from_flow_model_alias(cls, source, **kwargs) -> ShortcutModule:
    """``ShortcutDiT.from_flow_model(source)``: kept for one release; use ``sf.from_flow_model(source, cls)``."""
    return from_flow_model(source, cls, **kwargs)


# The classmethod of 0.1 lives here, not in models.py, so that models.py does not import this module (which
# imports checkpoint.py, which imports models.py). Removed in the next release.
ShortcutModule.from_flow_model = classmethod(_from_flow_model_alias)  # type: ignore[attr-defined]
