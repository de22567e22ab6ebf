"""Validation of user input, run once where the input enters: the Python twin of ``csrc/checks.h``.

Two kinds of checks live here. Checks of types, shapes, dtypes and devices
read only metadata and cost nothing, so every public function runs them.
Checks of values (``t`` in [0, 1], ``d`` a step size of the model, labels in
range, finiteness) read tensors back to the host, which is a device sync on
a GPU. Each entry point (``sample``, ``shortcut_loss``, ``Trainer.train_step``,
a user's own call of a model) therefore gathers its value checks into one
``require(...)``, one host read, and runs the rest of its work under
``trusted_inputs()``, where the package's models skip their value checks.
Errors are ``TypeError`` for a wrong kind of thing, ``ValueError`` for a wrong
value, with a message that names the argument and what is allowed.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterator
from dataclasses import fields

import torch

LABEL_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)  # what class labels may be

# A value check: a 0-d bool tensor that is true when the input is valid, and the error to raise when it is not
# (built only then, so that the message may read the offending values).
Condition = tuple[torch.Tensor, Callable[[], Exception]]

#################################################################################
#                        Python numbers, flags and settings                     #
#################################################################################


def is_int(value) -> bool:
    """Whether ``value`` is an integer (any ``numbers.Integral``) and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """Whether ``value`` is an int or a float and not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(name: str, value, low: int = 0, note: str = "") -> int:
    """``value`` as an int ``>= low``; ``ValueError`` (naming ``name``) for anything else, bools included."""
    if not is_int(value) or value < low:
        raise ValueError(f"{name} must be an int >= {low}{note}, got {value!r}")
    return int(value)


def check_number(name: str, value, low: float, high: float, low_open: bool = False, high_open: bool = False):
    """``value``, a number in the interval from ``low`` to ``high`` (open at the ends marked so)."""
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    # written so that NaN fails both comparisons
    ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {lo}{low}, {high}{hi}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """``value``, which must be True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_optional_bool(name: str, value, none_means: str) -> bool | None:
    """``value``: True, False or None (which means ``none_means``)."""
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be True, False or None ({none_means}), got {value!r}")
    return value


def known_keys(cls, data) -> dict:
    """``data`` as settings of the dataclass ``cls``: a dict whose keys are all fields of ``cls``."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__} settings must be a dict, got {type(data).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names, key=repr)  # keys of mixed types sort by their repr
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings {unknown}; allowed: {sorted(names)}")
    return dict(data)


def check_sizes(max_depth: int, **sizes) -> None:
    """Every size a positive int; ``num_classes`` an int >= 0 (0 = unconditional); ``depth <= max_depth``."""
    for name, value in sizes.items():
        if name == "num_classes":
            check_int(name, value, 0, " (0 = unconditional)")
        else:
            check_int(name, value, 1)
    if sizes.get("depth", 0) > max_depth:
        raise ValueError(f"depth must be at most MAX_DEPTH={max_depth}, got {sizes['depth']}")


def check_mlp_ratio(mlp_ratio, hidden_size: int) -> int:
    """The width of the blocks' MLPs, ``int(hidden_size * mlp_ratio)``, which must be >= 1."""
    if not is_number(mlp_ratio):
        raise TypeError(f"mlp_ratio must be a positive number (e.g. 4.0), got {type(mlp_ratio).__name__}")
    if not (math.isfinite(hidden_size * mlp_ratio) and hidden_size * mlp_ratio >= 1):
        raise ValueError(f"mlp_ratio must be a finite number with hidden_size * mlp_ratio >= 1, got {mlp_ratio}")
    return int(hidden_size * mlp_ratio)


def check_guidance_input(guidance_input, num_classes: int, conditioning: str = "shortcut") -> None:
    """``guidance_input`` (intrinsic guidance): a bool; True needs a class-conditional model of the own conditioning."""
    check_bool("guidance_input", guidance_input)
    if guidance_input and num_classes == 0:
        raise ValueError(
            "guidance_input=True needs a class-conditional model (num_classes > 0): guidance steers towards a label"
        )
    if guidance_input and conditioning != "shortcut":
        raise ValueError(
            f"guidance_input=True is available with conditioning='shortcut' only (the published "
            f"checkpoints have no guidance input), got conditioning={conditioning!r}"
        )


def check_generator(generator, device: torch.device | None = None, what: str = "the model") -> None:
    """``generator``: None or a ``torch.Generator`` (on the device type of ``device`` when given)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator is not None and device is not None and generator.device.type != device.type:
        raise ValueError(
            f"generator is on {generator.device} but {what} is on {device}; use torch.Generator(device) on that device"
        )


#################################################################################
#                      Tensors: metadata (no host read)                         #
#################################################################################


def as_batch_vector(name: str, value, batch: int, device: torch.device) -> torch.Tensor:
    """A number, 0-d or (B,) tensor -> a float32 (B,) tensor on ``device``."""
    if not (is_number(value) or isinstance(value, torch.Tensor)):
        raise TypeError(f"{name} must be a float or a float tensor of shape ({batch},), got {type(value).__name__}")
    if not isinstance(value, torch.Tensor):
        if isinstance(value, int) and abs(value) > 2**53:  # float(value) may overflow; never in [0, 1] anyway
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
        value = torch.tensor(float(value), device=device)
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must be a real float tensor, got dtype {value.dtype}")
    if value.dim() == 0:
        value = value.expand(batch)
    if value.shape != (batch,):
        raise ValueError(f"{name} must have shape ({batch},) to match the batch of x, got {tuple(value.shape)}")
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but x is on {device}; put them on one device")
    return value.float()


def check_labels(y, num_classes: int, batch: int, device: torch.device, x_name: str = "x") -> torch.Tensor | None:
    """Class labels ``y`` for a model of ``num_classes`` classes: None, or an integer (B,) tensor on ``device``."""
    if y is None:
        return None
    if num_classes == 0:
        raise ValueError("labels y were given but the model is unconditional (num_classes=0); pass y=None")
    if not isinstance(y, torch.Tensor) or y.dtype not in LABEL_DTYPES:
        got = getattr(y, "dtype", type(y).__name__)
        raise TypeError(f"y must be an integer tensor of class indices (int8/16/32/64), got {got}")
    if y.shape != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match the batch of {x_name}, got {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"y is on {y.device} but {x_name} is on {device}; put them on one device")
    return y


def check_guidance_scales(w, guidance_input: bool, batch: int, device: torch.device) -> torch.Tensor | None:
    """A model's guidance input ``w``: None, or (``guidance_input`` models only) a number or (B,) float tensor."""
    if w is None:
        return None
    if not guidance_input:
        raise ValueError(
            "this model has no guidance input (guidance_input=False) but w was given; "
            "pass w=None, or guide with two forwards (sample(..., cfg_scale=...))"
        )
    return as_batch_vector("w", w, batch, device)


def check_velocity(v, shape) -> torch.Tensor:
    """A model's output, which the contract makes a float tensor of the input's shape."""
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or tuple(v.shape) != tuple(shape):
        got = f"a {v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"the model returned {got}; expected a float tensor of shape {tuple(shape)}")
    return v


#################################################################################
#                  Tensors: values (one host read per entry point)              #
#################################################################################


def finite(name: str, x: torch.Tensor) -> Condition:
    """``x`` holds no NaN or inf."""
    return torch.isfinite(x).all(), lambda: ValueError(f"{name} holds NaN or inf values")


def in_unit_interval(name: str, t: torch.Tensor) -> Condition:
    """Every value of ``t`` lies in [0, 1]."""
    return ((t >= 0) & (t <= 1)).all(), lambda: ValueError(
        f"{name} must lie in [0, 1]; got values from {t.min().item()} to {t.max().item()}"
    )


def step_sizes_of(d: torch.Tensor, min_step: float) -> Condition:
    """Every value of ``d`` is a step size ``2**-k`` in ``[min_step, 1]`` (``min_step`` itself a valid ``2**-K``)."""
    k = round(-math.log2(min_step))
    d64 = d.detach().to(torch.float64)
    idx = torch.round(torch.log2(d64.clamp_min(1e-30))) + k
    # the tolerance only admits values that went through a low-precision cast (bf16 keeps powers of two exact)
    ok = (
        torch.isfinite(d64)
        & (d64 > 0)
        & (idx >= 0)
        & (idx <= k)
        & ((d64 - torch.exp2(idx - k)).abs() <= 1e-6 * d64.abs())
    )
    return ok.all(), lambda: ValueError(
        f"d must hold step sizes of the model, powers of two in [{min_step}, 1] "
        f"(the flow level is d = {min_step}, not 0); got {d64[~ok].flatten()[:4].tolist()}"
    )


def guidance_scales_valid(w: torch.Tensor | None) -> list[Condition]:
    """Every guidance scale finite and >= 0; nothing to check for ``None``."""
    if w is None:
        return []
    return [
        (
            torch.isfinite(w).all() & (w >= 0).all(),
            lambda: ValueError(
                f"guidance scales w must be finite and >= 0; got values from {w.min().item()} to {w.max().item()}"
            ),
        )
    ]


def labels_in_range(y: torch.Tensor | None, num_classes: int) -> list[Condition]:
    """Every label in ``[0, num_classes]`` (``num_classes`` is the null class); nothing to check for ``None``."""
    if y is None or y.numel() == 0:
        return []
    return [
        (
            ((y >= 0) & (y <= num_classes)).all(),
            lambda: ValueError(
                f"labels must lie in [0, {num_classes - 1}] (or {num_classes} for 'no label'); "
                f"got values from {int(y.min())} to {int(y.max())}"
            ),
        )
    ]


def require(*conditions: Condition) -> None:
    """Raise the error of the first condition that fails; one host read when all hold."""
    if not conditions:
        return
    if bool(torch.stack([ok for ok, _ in conditions]).all()):
        return
    for ok, error in conditions:
        if not bool(ok):
            raise error()


#################################################################################
#                          Inputs valid by construction                         #
#################################################################################

# > 0 inside trusted_inputs(). A plain global, not thread-local: torch.compile guards on it, and the replicas of
# nn.DataParallel run the forward in worker threads of the caller.
_trusted_depth = 0


@contextlib.contextmanager
def trusted_inputs() -> Iterator[None]:
    """Inside, the package's models skip their value checks: the caller validated its inputs or built them.

    ``sample``, ``shortcut_loss`` and the trainer enter it after their one
    ``require``; the Euler loop and the objective build ``t`` and ``d``
    themselves, so those are valid by construction.
    """
    global _trusted_depth
    _trusted_depth += 1
    try:
        yield
    finally:
        _trusted_depth -= 1


def values_checked_upstream(x: torch.Tensor) -> bool:
    """Whether a model's forward on ``x`` may skip its value checks.

    True inside ``trusted_inputs()``, and while ``torch.compile`` traces or a
    CUDA graph is captured a user's direct call, where no value can be read.
    """
    return (
        _trusted_depth > 0 or torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing())
    )
