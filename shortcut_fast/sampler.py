"""``Sampler``: one model's sampling settings checked once, then each call in one native call.

``sample()`` checks every argument on every call, walks the model's modules to
find where its weights live and checks each weight: about 0.3 ms at batch 1,
a third of a one-step call of the digits DiT. A serving process calls the same
model with the same settings many times, so a ``Sampler`` does that work when
it is built (the schedule, the guidance scale, the model and its weights, the
engine's packing) and leaves each call the checks of its inputs: the noise's
type, dtype, device and shape, the labels' dtype and shape, and, inside the
engine, their values (finite noise, labels in range). ``sampler(noise, y)``
returns what ``sample(model, noise, steps=..., y=y, cfg_scale=...)`` returns,
and raises the same errors.

**Staleness.** The engine reads the model's parameter tensors where they live,
so in-place updates (optimizer steps, including ``AdamW(fused=True)``, which
leaves the tensors' version counters alone; the EMA; ``load_state_dict``) and
``p.data = ...`` are seen by the next call with nothing to refresh. Per call
the sampler checks that the model still holds the same parameter and buffer
objects in the same submodules; where it does not (a module, parameter or
buffer assigned, ``load_state_dict(assign=True)``, ``model.to(...)`` under
``torch.__future__``'s overwrite setting, a block deleted) it packs again.
``refresh()`` does so on demand.

Calls the engine does not serve (a model on CUDA or in another dtype, noise
that is not fp32 on the CPU, autocast on, engine mode ``"off"``) run through
``sample()`` itself, with its CUDA graphs or its eager loop.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn as nn

from . import engine, graphs
from .checks import LABEL_DTYPES
from .models import ShortcutDiT, ShortcutMLP, unwrap_model
from .sampling import check_cfg_scale, sample, schedule_of


class _Packing:
    """What the engine runs for one model, and the objects whose identity says it is still the model's."""

    def __init__(self, base: ShortcutDiT | ShortcutMLP):
        self.tensors, self.config = engine._pack(base)
        self.generation = graphs._generation
        modules = graphs.modules_of(base)
        # every parameter, buffer and child by name: a replaced or deleted one reads back as another object
        tables: list[dict] = [t for m in modules for t in (m._parameters, m._buffers, m._modules)]
        self.entry_tables = [table for table in tables for _ in table]
        self.keys = [key for table in tables for key in table]
        self.values = [value for table in tables for value in table.values()]
        # the engine would skip hooks (sample() refuses them): none when packed, none now
        self.hooks = [table for m in modules for table in (m._forward_hooks, m._forward_pre_hooks)]

    def holds(self) -> bool:
        """Whether the model still holds what this packing read: no registration since (``graphs``' hooks
        count every one), the same object under every name, and no forward hook added."""
        return (
            graphs._generation == self.generation
            and all(map(operator.is_, map(dict.get, self.entry_tables, self.keys), self.values))
            and not any(map(len, self.hooks))
        )


class Sampler:
    """``sample(model, noise, steps=steps, y=y, cfg_scale=cfg_scale)`` as a callable built once.

    ``steps`` and ``cfg_scale`` are ``sample()``'s, fixed for the sampler's life;
    ``sampler(noise, y=None)`` runs them on a batch of noise (``y``: its labels).
    ``sampler.schedule`` is the resolved schedule. A sampler holds no copy of the
    weights: updates to the model are seen (the module's docstring gives the rule).
    """

    def __init__(self, model: nn.Module, *, steps: int | Sequence[float] = 1, cfg_scale: float | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module called as model(x, t, d, y), got {type(model).__name__}")
        self.model = model
        self._base = unwrap_model(model)
        self.schedule = schedule_of(self._base, steps)
        check_cfg_scale(self._base, cfg_scale)
        self.cfg_scale = None if cfg_scale is None else float(cfg_scale)
        self._steps = list(self.schedule)
        self._packing: _Packing | None = None
        self._shape: tuple[int, ...] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Pack the model again for the engine, or find that the engine cannot serve it."""
        base = self._base
        self._packing = None
        # a subclass may change the forward: the engine serves the package's own models only
        if type(base) not in (ShortcutDiT, ShortcutMLP) or not engine.available():
            return
        assert isinstance(base, (ShortcutDiT, ShortcutMLP))
        # what the engine asks of the noise is checked per call (_serves)
        if engine._unsupported_model(base) or engine._unsupported_weights(engine._Weights(base).tensors):
            return
        self._shape = (
            (base.in_channels, base.input_size, base.input_size) if isinstance(base, ShortcutDiT) else (int(base.dim),)
        )
        self._labels = getattr(base, "num_classes", 0) > 0
        self._packing = _Packing(base)

    def __call__(self, noise: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Samples from ``noise`` (B, ...) with labels ``y`` (B,) or None: a new tensor like ``noise``."""
        packing = self._packing
        if packing is not None and self._serves(noise, y):
            if not packing.holds():
                self.refresh()
                return self(noise, y)
            try:
                with torch.no_grad():
                    return torch.ops.shortcut_fast_engine.sample(
                        packing.tensors, engine.call_config(packing.config), noise, y, self.cfg_scale, self._steps
                    )
            except RuntimeError:
                self.refresh()  # the model may have changed under the sampler; sample() says what is wrong
        return sample(self.model, noise, steps=self.schedule, y=y, cfg_scale=self.cfg_scale)

    def _serves(self, noise, y) -> bool:
        """Whether this call's inputs are ones the engine takes as they are (else ``sample()`` checks them)."""
        return (
            type(noise) is torch.Tensor
            and noise.dtype == torch.float32
            and noise.device.type == "cpu"
            and noise.shape[1:] == self._shape
            and noise.shape[0] >= 1
            and (
                y is None
                and self.cfg_scale is None
                or type(y) is torch.Tensor
                and self._labels
                and y.dtype in LABEL_DTYPES
                and y.shape == noise.shape[:1]
                and y.device.type == "cpu"
            )
            and engine.get_mode() != "off"
            and not torch.is_autocast_enabled("cpu")
        )
