"""Process groups and sharded tensors, with torch's FSDP and DTensor modules imported only when used.

Importing ``torch.distributed.fsdp`` costs about a second and a half; a
process that never shards a model never needs it. No module can be an
``FSDPModule`` (nor a tensor a ``DTensor``) before those modules are imported,
so the tests here look them up in ``sys.modules`` instead of importing them.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn


def is_fsdp(module: nn.Module) -> bool:
    """Whether ``module`` was sharded with FSDP2's ``fully_shard``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def unsharded_class(module: nn.Module) -> type:
    """The class of ``module`` before ``fully_shard`` swapped in ``FSDP<Class>(FSDPModule, Class)``."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return type(module)
    return next(c for c in type(module).__mro__ if not issubclass(c, fsdp.FSDPModule))


def _is_dtensor(t: torch.Tensor) -> bool:
    tensor = sys.modules.get("torch.distributed.tensor")
    return tensor is not None and isinstance(t, tensor.DTensor)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a sharded (DTensor) parameter; a plain tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t  # type: ignore[attr-defined]  # a DTensor


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A replicated DTensor (e.g. a gradient norm under FSDP) as a plain tensor."""
    return t.full_tensor() if _is_dtensor(t) else t  # type: ignore[attr-defined]  # a DTensor


def fully_shard_blocks(module: nn.Module) -> None:
    """FSDP2: shard each block (one all-gather per block in forward) and then the rest."""
    from torch.distributed.fsdp import fully_shard

    for block in getattr(module, "blocks", []):
        fully_shard(block)
    fully_shard(module)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes (0 and 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | torch.device = "cpu") -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Returns the device this process trains on: ``cuda:LOCAL_RANK`` (NCCL) for a
    CUDA device under torchrun, else ``device`` (gloo on the CPU). Without
    torchrun's ``WORLD_SIZE`` > 1 nothing is initialised.
    """
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def leave_distributed() -> None:
    """Leave the process group at the end of a run that succeeded on every rank (no-op without one).

    Every rank first meets at a barrier, so that no rank tears down while
    another still runs a collective, and so that the last collective's work is
    done before the group goes. Without it a gloo rank could hang at exit: one
    of gloo's threads, still dropping that work's tensors, waits for the GIL
    that the exiting thread holds while it joins those threads.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
