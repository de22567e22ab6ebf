"""CUDA-graph capture with static buffers, and a bounded cache of captured graphs.

A captured graph replays fixed kernels on fixed memory: its inputs are copied
into static buffers before each replay and its outputs are static tensors that
the next replay overwrites, so callers copy them out. Weights are read where
they live, so in-place updates (optimizer steps, EMA, ``load_state_dict``) are
seen by later replays; new weight tensors (``model.to(...)``) change
``weights_key`` and so get a new graph.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
import torch.nn as nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

from .checks import check_int

WARMUP_RUNS = 2  # eager runs before capture: lazy initialisation, cuBLAS workspaces, Triton autotuning
# "thread_local": only a capture-unsafe CUDA call (cudaMalloc, a sync) on the capturing thread fails the capture. The
# default "global" also fails it for such calls on any other thread, e.g. the pin-memory thread of a DataLoader with
# num_workers > 0 allocating pinned host memory while the trainer captures its targets' graph. Work on other threads
# never enters the graph (it records the capturing stream only), so this thread's own calls are all it must check.
CAPTURE_ERROR_MODE = "thread_local"


class _Layout:
    """The submodules of one model, found once: the walk ``model.parameters()`` does costs far more than reading
    the tensors' addresses (about 8 ms against 0.1 ms at DiT-XL size on a busy CPU core)."""

    def __init__(self, model: nn.Module):
        self.generation = _generation
        # the root itself is left out: a weak dictionary's value must not hold its key alive
        self.submodules = tuple(m for m in model.modules() if m is not model)
        self.children = _children(model, self.submodules)


def _children(model: nn.Module, submodules: tuple[nn.Module, ...]) -> list[int]:
    """Who the submodules' children are now (read live: ``ModuleList`` deletions replace ``_modules``)."""
    return [id(child) for m in (model, *submodules) for child in m._modules.values()]


_LAYOUTS: weakref.WeakKeyDictionary[nn.Module, _Layout] = weakref.WeakKeyDictionary()
_generation = 0  # bumped by every registration of a module, parameter or buffer anywhere


def _registered(*_args) -> None:
    global _generation
    _generation += 1


for _hook in (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
    register_module_buffer_registration_hook,
):
    _hook(_registered)


def modules_of(model: nn.Module) -> tuple[nn.Module, ...]:
    """``(model, *its submodules)``, as ``model.modules()`` lists them, from the cached layout."""
    layout = _LAYOUTS.get(model)
    if layout is None or layout.generation != _generation or layout.children != _children(model, layout.submodules):
        layout = _LAYOUTS[model] = _Layout(model)
    return (model, *layout.submodules)


def weights_key(model: nn.Module) -> tuple:
    """Identifies the memory a graph of ``model`` reads: the model and where its weights and buffers live.

    The addresses are read live from every module's parameter and buffer tables on each call, so
    ``model.to(...)``, ``p.data = ...``, ``torch.utils.swap_tensors``, ``load_state_dict(assign=True)``
    and new or deleted parameters all change the key, and in-place updates (optimizer steps, EMA, a plain
    ``load_state_dict``) leave it. Only the list of submodules is cached, and it is found again after any
    registration of a module, parameter or buffer or when a module's children change.
    """
    modules = modules_of(model)
    return (
        id(model),
        *(t.data_ptr() for m in modules for t in m._parameters.values() if t is not None),
        None,
        *(t.data_ptr() for m in modules for t in m._buffers.values() if t is not None),
    )


class CapturedCall:
    """``fn(*inputs)`` captured once in a CUDA graph over static copies of ``inputs``.

    ``fn`` must not read values back to the host. ``replay(*inputs)`` copies
    ``inputs`` (same shapes and dtypes) into the static buffers, replays and
    returns ``fn``'s outputs as static tensors, valid until the next replay.
    Arguments that are None stay None.
    """

    def __init__(self, fn: Callable, inputs: tuple, pool=None):
        tensors = [a for a in inputs if a is not None]
        if not tensors or any(not a.is_cuda for a in tensors):
            raise ValueError("CUDA graphs capture work on CUDA tensors; every input must be on a CUDA device")
        self.inputs = tuple(None if a is None else a.clone() for a in inputs)
        device = tensors[0].device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                fn(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, capture_error_mode=CAPTURE_ERROR_MODE):
            self.outputs = fn(*self.inputs)

    def replay(self, *inputs):
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the graph was captured with {len(self.inputs)} inputs, got {len(inputs)}")
        for buffer, value in zip(self.inputs, inputs, strict=True):
            if (buffer is None) != (value is None):
                raise ValueError("an input that was None at capture must stay None, and the reverse")
            if buffer is not None:
                buffer.copy_(value)
        self.graph.replay()
        return self.outputs


class GraphCache:
    """At most ``max_size`` built values by key, the least recently used dropped first."""

    def __init__(self, max_size: int):
        self._entries: OrderedDict[Hashable, object] = OrderedDict()
        self.max_size = max_size
        self.pool: tuple[int, int] | None = None  # one CUDA memory pool shared by the graphs of this cache

    @property
    def max_size(self) -> int:
        return self._max_size

    @max_size.setter
    def max_size(self, value: int) -> None:
        self._max_size = check_int("the graph cache size", value, 0, " (0 turns caching off)")
        self._trim()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, build: Callable[[], object]):
        """The value cached under ``key``, built by ``build()`` on a miss."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = build()
        self._entries[key] = value
        self._trim()
        return value

    def shared_pool(self):
        """The CUDA memory pool the graphs of this cache capture into (created on first use)."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        return self.pool

    def clear(self) -> None:
        """Drop every cached graph and its memory pool."""
        self._entries.clear()
        self.pool = None

    def _trim(self) -> None:
        while len(self._entries) > self._max_size:
            self._entries.popitem(last=False)
