"""CUDA-graph capture with static buffers, and a bounded cache of captured graphs.

A captured graph replays fixed kernels on fixed memory: its inputs are copied
into static buffers before each replay and its outputs are static tensors that
the next replay overwrites, so callers copy them out. Weights are read where
they live, so in-place updates (optimizer steps, EMA, ``load_state_dict``) are
seen by later replays; new weight tensors (``model.to(...)``) change
``weights_key`` and so get a new graph.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
import torch.nn as nn

from .checks import check_int

WARMUP_RUNS = 2  # eager runs before capture: lazy initialisation, cuBLAS workspaces, Triton autotuning


def weights_key(model: nn.Module) -> tuple:
    """Identifies the memory a graph of ``model`` reads: the model and where its weights and buffers live."""
    return (id(model), *(t.data_ptr() for t in model.parameters()), *(t.data_ptr() for t in model.buffers()))


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
        with torch.cuda.graph(self.graph, pool=pool):
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
        self.pool = None  # one CUDA memory pool shared by the graphs of this cache

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
