"""The C++ inference engine: the whole N-step sampling loop of the package's models in one native call.

``sample()`` hands a call to the engine when the model is a plain ``ShortcutDiT``
or ``ShortcutMLP`` in fp32 on the CPU, the noise is fp32 and the native
extension is built; the loop (every forward, the guidance and the Euler
updates) then runs in C++ with the GIL released, its small-batch matrix
products in hand-written AVX2/AVX-512 kernels chosen for the running CPU and
its large ones in ATen's BLAS, each followed by a fused epilogue. Any other
module keeps the eager loop. It runs any schedule (``steps.resolve_schedule``:
equal steps or not, each forward conditioned on its own step size) and models
with a guidance input (intrinsic guidance: ``w = cfg_scale``, 1 without one, is
embedded as the model does, one forward per step). A call the engine does not
cover (another dtype, hooks on the model, autocast, a progress bar or the
official conditioning) falls back to the eager loop with one logged notice per
reason.

The engine reads the module's own parameter tensors where they live, without
copies or views, so in-place updates (optimizer steps, the EMA,
``load_state_dict``) and ``p.data = ...`` are seen by the next call, as with
the CUDA graphs; new parameter objects (``load_state_dict(assign=True)``, a
replaced submodule) change ``weights_key`` and so the tensors handed over.
(Prepacked copies would need a change signal: ``torch.optim.AdamW(fused=True)``
does not bump the tensors' version counters.) ``Sampler`` (``sampler.py``)
holds one model's packing and checks it per call at a fraction of this cost.

The switch: ``set_mode("auto" | "on" | "off")`` or ``with mode(name):``;
``"on"`` raises ``ValueError`` where the engine cannot serve a call, ``"off"``
never uses it. ``set_isa`` / ``use_isa`` force the kernels of one ISA
(``"scalar"``, ``"avx2"``, ``"avx512"``; ``"auto"`` picks the best the CPU has).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import torch
import torch.nn as nn

from .graphs import GraphCache, modules_of, weights_key
from .models import ConditionEmbedder, ShortcutDiT, ShortcutMLP, unwrap_model
from .ops import backends
from .ops import reference as SF
from .steps import num_doublings

MODES = ("auto", "on", "off")
ISAS = {"auto": 0, "scalar": 1, "avx2": 2, "avx512": 3}  # the values of csrc/engine/kernels.h's Isa
ATEN_ROWS = 64  # token rows from which a linear layer runs on ATen's BLAS instead of the small-M kernels

_mode = "auto"
_isa = "auto"
_TENSORS = GraphCache(max_size=8)  # _Weights by weights_key: what the engine reads of each model
_noticed: set[str] = set()
log = logging.getLogger(__name__)


def set_mode(name: str) -> None:
    """Use the engine where it applies (``"auto"``), always (``"on"``: raise where it cannot) or never (``"off"``)."""
    global _mode
    if name not in MODES:
        raise ValueError(f"engine mode must be one of {MODES}, got {name!r}")
    _mode = name


def get_mode() -> str:
    """The current engine mode."""
    return _mode


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """Scoped ``set_mode``."""
    previous = _mode
    set_mode(name)
    try:
        yield
    finally:
        set_mode(previous)


def isa_supported(name: str) -> bool:
    """Whether this build and this CPU run the engine's kernels for ``name`` (a key of ``ISAS``)."""
    if name not in ISAS:
        raise ValueError(f"ISA must be one of {sorted(ISAS)}, got {name!r}")
    return available() and bool(torch.ops.shortcut_fast_engine.isa_supported(ISAS[name]))


def active_isa() -> str:
    """The ISA whose kernels the engine runs now (``"auto"`` resolved for this CPU)."""
    if not available():
        return "none"
    code = torch.ops.shortcut_fast_engine.resolve_isa(ISAS[_isa])
    return next(name for name, value in ISAS.items() if value == code)


def set_isa(name: str) -> None:
    """Force the engine's kernels of one ISA; ``"auto"`` picks the best this CPU supports."""
    global _isa
    if not isa_supported(name):
        raise ValueError(
            f"this build or CPU cannot run the engine's {name!r} kernels; "
            f"supported: {[n for n in ISAS if isa_supported(n)]}"
        )
    _isa = name


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Scoped ``set_isa``."""
    previous = _isa
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def available() -> bool:
    """Whether the native extension with the engine is built and loaded."""
    return backends.native_available() and hasattr(torch.ops.shortcut_fast_engine, "sample")


def _freqs(freq_dim: int, stretch: bool = True) -> torch.Tensor:
    # the sinusoid frequencies of ops.reference.timestep_features, in the same fp32 arithmetic; the engine stretches
    # t by T_SCALE, which the frequencies undo for a model that embeds t unstretched (continuous step sizes)
    half = freq_dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    return freqs if stretch else freqs / SF.T_SCALE


def _linear(layer: nn.Module) -> list[torch.Tensor]:
    # the parameters themselves, not detached views: a view would keep the old storage after `p.data = ...`
    return [layer.weight, layer.bias]  # type: ignore[list-item]  # an nn.Linear


def _pack(base: ShortcutDiT | ShortcutMLP) -> tuple[list[torch.Tensor], list[int]]:
    """The module's tensors in the order of csrc/engine/engine.cpp, and its configuration ints."""
    empty = torch.empty(0)
    cond = base.cond
    assert isinstance(cond, ConditionEmbedder)  # _unsupported_model() refuses conditioning="official"
    tensors = [
        _freqs(cond.freq_dim, stretch=not base.continuous_steps),
        *_linear(cond.t_mlp[0]),
        *_linear(cond.t_mlp[2]),
        empty if cond.d_table is None else cond.d_table.weight,
        empty if cond.y_table is None else cond.y_table.weight,
    ]
    hidden: int = base.config["hidden_size"]
    heads: int
    if isinstance(base, ShortcutDiT):
        conv = base.x_embedder
        assert conv.bias is not None  # the patch embedding has a bias
        tensors += [conv.weight, conv.bias, base.pos_embed]
        heads, tokens, patch, channels, grid = (
            base.blocks[0].attn.num_heads if base.blocks else 1,  # type: ignore[union-attr,assignment]
            base.grid**2,
            base.patch_size,
            base.in_channels,
            base.grid,
        )
    else:
        tensors += [*_linear(base.inp), empty]
        heads, tokens, patch, channels, grid = 1, 1, 1, base.dim, 1
    tensors += [*_linear(base.final_layer.adaLN_modulation[-1]), *_linear(base.final_layer.linear)]
    if cond.w_embed is None:
        tensors += [empty] * 5
    else:  # intrinsic guidance: the embedder of w, built as the one of t
        mlp = cond.w_embed.mlp
        tensors += [_freqs(cond.w_embed.freq_dim), *_linear(mlp[0]), *_linear(mlp[2])]
    # the stubs type a ModuleList's items as Module (attributes Tensor | Module): each is a DiTBlock or MLPBlock
    for block in base.blocks:
        tensors += _linear(block.adaLN_modulation[-1])  # type: ignore[index,arg-type]
        if isinstance(base, ShortcutDiT):
            tensors += [*_linear(block.attn.qkv), *_linear(block.attn.proj)]  # type: ignore[union-attr,arg-type]
        tensors += [*_linear(block.mlp[0]), *_linear(block.mlp[2])]  # type: ignore[index,arg-type]
    if cond.d_mlp is not None:  # continuous step sizes: the engine embeds each step's d as it does t
        tensors += [*_linear(cond.d_mlp[0]), *_linear(cond.d_mlp[2])]
    config = [
        0 if isinstance(base, ShortcutDiT) else 1,
        hidden,
        heads,
        len(base.blocks),
        tokens,
        patch,
        channels,
        grid,
        -1 if base.continuous_steps else num_doublings(base.min_step),
    ]
    return tensors, config


def _unsupported_model(base: nn.Module) -> str | None:
    """Why the engine cannot serve this model for reasons of its settings, or None (its weights: see
    ``_unsupported_weights``)."""
    if not available():
        return "the native extension with the engine is not built"
    if getattr(base, "conditioning", "shortcut") != "shortcut":
        return "the engine runs the package's own conditioning, not conditioning='official'"
    # the cached module list (graphs.modules_of): a walk of model.modules() on every call costs more than the
    # engine's whole batch-1 step
    if any(m._forward_hooks or m._forward_pre_hooks for m in modules_of(base)):
        return "the model has forward hooks, which the engine would skip"
    return None


def _unsupported_call(x: torch.Tensor, progress: bool) -> str | None:
    """Why the engine cannot serve a call on the noise ``x``, or None."""
    if x.device.type != "cpu":
        return f"the engine runs on the CPU; the noise is on {x.device}"
    if x.dtype != torch.float32:
        return "the engine runs fp32 models on fp32 noise"
    if torch.is_autocast_enabled("cpu"):
        return "CPU autocast is on"
    if progress:
        return "the engine shows no progress bar"
    return None


class _Weights:
    """The tensors of one model at one weights key, and their packing for the engine (made on first use)."""

    def __init__(self, base: nn.Module):
        self.tensors = [t.detach() for t in (*base.parameters(), *base.buffers())]
        self.packed: tuple[list[torch.Tensor], list[int]] | None = None


def _unsupported_weights(tensors: list[torch.Tensor]) -> str | None:
    """Why the engine cannot read these weights, or None (checked on every call: an in-place change of a
    weight's layout keeps its address, so the weights key does not see it)."""
    if any(t.dtype != torch.float32 for t in tensors):
        return "the engine runs fp32 models on fp32 noise"
    if any(t.device.type != "cpu" for t in tensors):
        return "the engine needs the model's weights on the CPU"
    if any(not t.is_contiguous() for t in tensors):
        return "a weight is not contiguous"
    return None


def _fall_back(reason: str) -> None:
    """Refuse under mode "on"; else log the reason once."""
    if _mode == "on":
        raise ValueError(f"the engine cannot serve this call: {reason}; use engine.set_mode('auto') to fall back")
    if reason not in _noticed:
        _noticed.add(reason)
        log.warning("shortcut_fast engine: %s; sampling with the eager loop instead", reason)


def run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    cfg_scale: float | None,
    schedule: tuple[float, ...],
    progress: bool = False,
) -> torch.Tensor | None:
    """Euler steps of the validated ``schedule`` (``steps.resolve_schedule``) from the validated noise ``x``.

    Runs them in the engine, or returns None where the eager loop should run.
    """
    base = unwrap_model(model)
    if _mode == "off" or type(base) not in (ShortcutDiT, ShortcutMLP):
        if _mode == "on":
            raise ValueError(f"the engine serves ShortcutDiT and ShortcutMLP only, not {type(base).__name__}")
        return None
    reason = _unsupported_model(base) or _unsupported_call(x, progress)
    if reason is not None:
        _fall_back(reason)
        return None
    entry = _TENSORS.get(weights_key(base), lambda: _Weights(base))
    reason = _unsupported_weights(entry.tensors)
    if reason is not None:
        _fall_back(reason)
        return None
    if entry.packed is None:
        assert isinstance(base, (ShortcutDiT, ShortcutMLP))  # its type was checked above
        entry.packed = _pack(base)
    tensors, config = entry.packed
    y = None if y is None else y.long()  # validated by sample()
    return torch.ops.shortcut_fast_engine.sample(tensors, call_config(config), x, y, cfg_scale, list(schedule))


def call_config(config: list[int]) -> list[int]:
    """A model's configuration ints (``_pack``) with the switches of this call: the ISA and ``ATEN_ROWS``."""
    return [*config, ISAS[_isa], ATEN_ROWS]
