"""What the kernel launchers share: the interpreter switch, autotuning and the grid size."""

from __future__ import annotations

import functools
import os

import torch
import triton

# With TRITON_INTERPRET=1 (read by triton at import) the kernels run on CPU tensors through
# numpy: fp32 only, and timing configs there would measure numpy, so one fixed config runs.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def autotune(gpu_configs: list[triton.Config], interpret_config: triton.Config, key: list[str], prune=None):
    """``triton.autotune`` over ``gpu_configs`` on a GPU; ``interpret_config`` alone under the interpreter.

    ``prune(configs, named_args, **kwargs) -> configs`` narrows the configs per call before timing.
    """
    if INTERPRET:
        return triton.autotune(configs=[interpret_config], key=key)
    prune_configs_by = {"early_config_prune": prune} if prune else None
    return triton.autotune(configs=gpu_configs, key=key, prune_configs_by=prune_configs_by)


def size_bucket(size: int, cap: int) -> int:
    """The autotuning bucket of a size: the next power of two, at most ``cap``.

    Autotune keys take it instead of the size itself, so that a kernel is timed once per bucket
    rather than for every new size, while sizes far apart (batch 1 against batch 256) get their own
    configuration; past ``cap`` every size fills the GPU alike.
    """
    return min(triton.next_power_of_2(max(1, size)), cap)


def programs_to_fill(device: torch.device) -> int:
    """A grid size that keeps every SM busy: two programs per SM (a small fixed count under the interpreter)."""
    if device.type != "cuda":
        return 4
    return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
