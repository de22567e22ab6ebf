"""Step sizes of a shortcut model: the discrete levels ``d in {d_min, 2 d_min, ..., 1}``.

A level index ``i`` names the step size ``d = d_min * 2**i``: level 0 is the
smallest step (the flow-matching level), level ``K = log2(1 / d_min)`` is the
one-step jump ``d = 1``. Every module of the package speaks of step sizes
through these helpers so that the validation and its messages live in one place.

Sampling with ``N`` steps, any ``N`` in ``[1, 1 / d_min]``, follows a schedule
of trained step sizes that sum to 1 (``step_schedule``): ``N`` a power of two
gives ``N`` equal steps, and any other ``N`` splits ``N - P`` of the ``P``
equal steps of the power of two ``P < N`` below it into halves, e.g. 3 steps as
``1/2, 1/4, 1/4``. Only two adjacent levels are used, so the steps are as even
as trained levels allow.

A model with continuous step sizes (``step_embedding="sinusoidal"``) takes any
schedule of real steps in (0, 1] that sum to 1 (``continuous=True`` below);
``N`` steps are then ``N`` equal steps ``1 / N``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .checks import is_int, is_number, require, step_sizes_of

DEFAULT_MIN_STEP = 1.0 / 128
MAX_CONTINUOUS_STEPS = 4096  # sampling steps of a model with continuous step sizes
SUM_TOLERANCE = 1e-9  # |sum - 1| allowed of a schedule of real steps (fp64 rounding of their sum)


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
    """Numbers of sampling steps a model trained down to ``min_step`` supports: ``1 .. 1 / min_step``."""
    return list(range(1, 2 ** num_doublings(min_step) + 1))


def check_num_steps(steps: int, min_step: float = DEFAULT_MIN_STEP) -> int:
    """Validate a number of sampling steps: an int in ``[1, 1 / min_step]``."""
    top = 2 ** num_doublings(min_step)
    if not is_int(steps):
        raise TypeError(f"steps must be an int in [1, {top}] or a sequence of step sizes; got {type(steps).__name__}")
    steps = int(steps)
    if not 1 <= steps <= top:
        raise ValueError(f"steps must be an int in [1, {top}] (1 / min_step for min_step={min_step}); got {steps}")
    return steps


SCHEDULE_ORDERS = ("descending", "ascending")  # large steps first, or small steps first


def step_schedule(steps: int, min_step: float = DEFAULT_MIN_STEP, order: str = "descending") -> tuple[float, ...]:
    """The step sizes of ``steps`` sampling steps (see the module doc), in ``order``.

    ``"descending"`` takes the large steps first, ``"ascending"`` the small ones.
    In both orders every step starts at a multiple of its own size, the times at
    which the self-consistency rows of that level were trained. The default,
    large steps first, is the measured one (``benchmarks/quality.py``, the
    tables of unequal steps in ``docs/quality.md``): on the digits it gave the
    lower FD at 3, 5 and 6 steps for five of the six unguided models, and on
    the 2D sets the lower SWD in 14, 19 and 20 of 27 runs at 3, 5 and 6 steps.
    """
    steps = check_num_steps(steps, min_step)
    if order not in SCHEDULE_ORDERS:
        raise ValueError(f"order must be one of {SCHEDULE_ORDERS}, got {order!r}")
    coarse = 2 ** (steps.bit_length() - 1)  # the largest power of two <= steps
    split = steps - coarse  # this many coarse steps become two half steps each
    sizes = [1.0 / coarse] * (coarse - split) + [0.5 / coarse] * (2 * split)
    return tuple(sizes if order == "descending" else reversed(sizes))


def check_schedule(schedule: Sequence[float], min_step: float = DEFAULT_MIN_STEP) -> tuple[float, ...]:
    """Validate an explicit schedule: step sizes of the model (powers of two in ``[min_step, 1]``) summing to 1."""
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or not schedule:
        raise TypeError(f"steps must be an int or a schedule, a non-empty sequence of step sizes; got {schedule!r}")
    sizes = step_sizes(min_step)
    if not all(is_number(d) and d in sizes for d in schedule):
        raise ValueError(f"every one of steps={schedule!r} must be a step size of the model, one of {sizes}")
    # sums of powers of two >= 2**-20 are exact in float64, so the test is exact
    if math.fsum(schedule) != 1.0:
        raise ValueError(f"the step sizes of steps={schedule!r} must sum to 1, got {math.fsum(schedule)}")
    return tuple(float(d) for d in schedule)


def check_continuous_schedule(schedule: Sequence[float]) -> tuple[float, ...]:
    """Validate a schedule of real step sizes in (0, 1] that sum to 1 (within ``SUM_TOLERANCE``)."""
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence) or not schedule:
        raise TypeError(f"steps must be an int or a schedule, a non-empty sequence of step sizes; got {schedule!r}")
    if len(schedule) > MAX_CONTINUOUS_STEPS:
        raise ValueError(f"a schedule has at most {MAX_CONTINUOUS_STEPS} steps, got {len(schedule)}")
    if not all(is_number(d) and 0.0 < d <= 1.0 for d in schedule):
        bad = [d for d in schedule if not (is_number(d) and 0.0 < d <= 1.0)][:4]
        raise ValueError(f"every step size must be a number in (0, 1]; got {bad} in steps")
    if abs(math.fsum(schedule) - 1.0) > SUM_TOLERANCE:
        raise ValueError(f"the step sizes of steps must sum to 1, got {math.fsum(schedule)}")
    return tuple(float(d) for d in schedule)


def resolve_schedule(steps, min_step: float = DEFAULT_MIN_STEP, continuous: bool = False) -> tuple[float, ...]:
    """``steps`` as a schedule: an int through ``step_schedule``, a sequence through ``check_schedule``.

    ``continuous`` (a model with ``continuous_steps``): an int ``N`` in ``[1, MAX_CONTINUOUS_STEPS]`` is ``N``
    equal steps, a sequence any real steps (``check_continuous_schedule``).
    """
    sequence = isinstance(steps, Sequence) and not isinstance(steps, (str, bytes))
    if continuous:
        if sequence:
            return check_continuous_schedule(steps)
        if not is_int(steps) or not 1 <= int(steps) <= MAX_CONTINUOUS_STEPS:
            raise ValueError(
                f"steps must be an int in [1, {MAX_CONTINUOUS_STEPS}] or a sequence of step sizes; got {steps!r}"
            )
        return (1.0 / int(steps),) * int(steps)
    if sequence:
        return check_schedule(steps, min_step)
    return step_schedule(check_num_steps(steps, min_step), min_step)


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
