"""Step sizes of a shortcut model: the discrete levels ``d in {d_min, 2 d_min, ..., 1}``.

A level index ``i`` names the step size ``d = d_min * 2**i``: level 0 is the
smallest step (the flow-matching level), level ``K = log2(1 / d_min)`` is the
one-step jump ``d = 1``. Every module of the package speaks of step sizes
through these helpers so that the validation and its messages live in one place.
"""

from __future__ import annotations

import math

import torch

from .checks import is_int, is_number, require, step_sizes_of

DEFAULT_MIN_STEP = 1.0 / 128


def num_doublings(min_step: float) -> int:
    """``K`` such that ``min_step == 2**-K``; raises ``ValueError`` otherwise."""
    if not is_number(min_step):
        raise TypeError(f"min_step must be a float 2**-K, got {type(min_step).__name__}")
    if not (0.0 < min_step <= 1.0):
        raise ValueError(f"min_step must be 2**-K with K >= 0 (e.g. 1/128), got {min_step}")
    k = round(-math.log2(min_step))
    if k > 20 or min_step != 2.0**-k:
        raise ValueError(f"min_step must be 2**-K with 0 <= K <= 20 (e.g. 1/128), got {min_step}")
    return k


def step_sizes(min_step: float = DEFAULT_MIN_STEP) -> list[float]:
    """All step sizes ``[d_min, 2 d_min, ..., 1]``, smallest first (index = level)."""
    return [2.0 ** (i - num_doublings(min_step)) for i in range(num_doublings(min_step) + 1)]


def allowed_steps(min_step: float = DEFAULT_MIN_STEP) -> list[int]:
    """Numbers of sampling steps a model trained down to ``min_step`` supports."""
    return [2**i for i in range(num_doublings(min_step) + 1)]


def check_num_steps(steps: int, min_step: float = DEFAULT_MIN_STEP) -> int:
    """Validate a number of sampling steps: a power of two in ``[1, 1 / min_step]``."""
    allowed = allowed_steps(min_step)
    if not is_int(steps):
        raise TypeError(f"steps must be an int, one of {allowed}; got {type(steps).__name__}")
    steps = int(steps)
    if steps not in allowed:
        raise ValueError(f"steps must be a power of two in [1, {allowed[-1]}], one of {allowed}; got {steps}")
    return steps


def level_index(d: torch.Tensor, min_step: float = DEFAULT_MIN_STEP) -> torch.Tensor:
    """Map step sizes ``d`` (float tensor) to level indices (int64), without reading them back to the host.

    ``d`` must hold step sizes of the model: validate a user's values with
    ``check_step_sizes`` first (a value that is none of them maps to a wrong level).
    """
    # log2 of an exact power of two is exact, also after a bf16 or fp16 cast
    return (torch.round(torch.log2(d.detach().to(torch.float64).clamp_min(1e-30))) + num_doublings(min_step)).long()


def check_step_sizes(d: torch.Tensor, min_step: float = DEFAULT_MIN_STEP) -> None:
    """Raise ``ValueError`` when any value of ``d`` is not one of ``step_sizes(min_step)`` (one host read)."""
    num_doublings(min_step)
    require(step_sizes_of(d, min_step))
