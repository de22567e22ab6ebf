"""The Triton ops of the ``shortcut_fast_triton`` namespace (importing this module registers them).

Each op is a ``torch.library.custom_op`` with the schema ``contract.py`` declares for it, shared
with the native ``shortcut_fast`` namespace; its body checks the inputs against what the contract
says the Triton backend runs and launches the kernels. ``custom_op`` rather than ``triton_op``: it
keeps the kernel opaque to torch.compile, which also works under TRITON_INTERPRET=1. The fake
(meta) functions and the autograd formulas of both namespaces live in ``formulas.py``;
``backends.py`` registers them when it imports this module.
"""

from __future__ import annotations

import functools

import torch

from ..kernels import attention, elementwise, embedding, layernorm
from ..kernels import attention_jvp as attention_tangents
from ..kernels.launch import INTERPRET
from . import contract
from .reference import T_SCALE

NAMESPACE = "shortcut_fast_triton"
BACKEND = "triton-interpret" if INTERPRET else "triton"

Tensor = torch.Tensor


def check(condition: bool, message: str) -> None:
    """Raise the RuntimeError a ``TORCH_CHECK`` of the native ops raises, so both backends fail alike."""
    if not condition:
        raise RuntimeError(message)


def check_device(op: str, *tensors: torch.Tensor) -> None:
    """The tensors share one device the kernels can run on: CUDA, or the CPU under the interpreter."""
    device = tensors[0].device
    check(all(t.device == device for t in tensors), f"{op}: all tensors must be on one device")
    if INTERPRET:
        check(device.type == "cpu", f"{op}: under TRITON_INTERPRET=1 the Triton kernels take CPU tensors")
    else:
        check(device.type == "cuda", f"{op}: the Triton kernels take CUDA tensors (CPU ones with TRITON_INTERPRET=1)")


def check_float(op: str, *tensors: torch.Tensor) -> None:
    """Floating storage the kernels of ``op`` handle here, as the contract states it."""
    allowed = contract.support(op, BACKEND).dtypes
    for t in tensors:
        check(t.dtype in allowed, f"{op}: dtype {t.dtype} is not supported (expected one of {allowed})")


def _on_input_device(fn):
    """Run ``fn`` with the device of its first tensor current: Triton launches on the current CUDA device."""

    @functools.wraps(fn)
    def run(*args):
        device = next(a.device for a in args if isinstance(a, Tensor))
        if device.type != "cuda":
            return fn(*args)
        with torch.cuda.device(device):
            return fn(*args)

    return run


def _op(fn):
    """Register ``fn`` as ``NAMESPACE::<its name>`` with the schema the contract gives that name."""
    return torch.library.custom_op(
        f"{NAMESPACE}::{fn.__name__}",
        _on_input_device(fn),
        mutates_args=(),
        device_types=("cuda", "cpu"),
        schema=contract.BY_NAME[fn.__name__].schema,
    )


def _check_head_dim(op: str, q: Tensor) -> None:
    head_dims = contract.support(op, BACKEND).head_dims
    assert head_dims is not None  # the contract lists the Triton attention's head sizes
    check(q.shape[-1] in head_dims, f"{op}: head size {q.shape[-1]} not in {head_dims}")


def _check_shape(op: str, name: str, t: Tensor, shape: tuple[int, ...]) -> None:
    check(tuple(t.shape) == tuple(shape), f"{op}: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _check_same_dtype(op: str, *tensors: Tensor) -> None:
    check(len({t.dtype for t in tensors}) == 1, f"{op}: inputs must share one dtype, got {[t.dtype for t in tensors]}")


def _check_token_tiles(op: str, x: Tensor) -> None:
    """The layer norm's forward grid has one program per tile of tokens on CUDA's second grid axis."""
    tiles = layernorm.token_tiles(x.shape[1], x.shape[2])
    check(
        tiles <= layernorm.MAX_GRID_Y,
        f"{op}: {x.shape[1]} tokens of {x.shape[2]} channels make {tiles} tiles, "
        f"more than the grid's {layernorm.MAX_GRID_Y}; split the sequence",
    )


def _check_alike(op: str, x: Tensor, other: Tensor) -> None:
    """x and other: float tensors of one device, dtype and shape."""
    check_device(op, x, other)
    check_float(op, x, other)
    _check_same_dtype(op, x, other)
    _check_shape(op, "the second input", other, x.shape)


def _check_step(op: str, x: Tensor, d: Tensor) -> None:
    """d: the (B,) fp32 step sizes of the samples of x."""
    check_device(op, x, d)
    check(x.dim() >= 1, f"{op}: x must have a batch dimension")
    _check_shape(op, "d", d, (x.shape[0],))
    check(d.dtype == torch.float32, f"{op}: d must be fp32, got {d.dtype}")


def _strided_alike(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q, k, v themselves when they share strides with a contiguous last dim (the slices of one qkv projection:
    the kernels take those strides), else contiguous copies."""
    if q.stride() == k.stride() == v.stride() and q.stride(-1) == 1:
        return q, k, v
    return q.contiguous(), k.contiguous(), v.contiguous()


@_op
def attention_fwd(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    op = "attention_fwd"
    check_device(op, q, k, v)
    check_float(op, q, k, v)
    _check_same_dtype(op, q, k, v)
    check(q.dim() == 4, f"{op}: q must be (B, H, N, Dh), got shape {tuple(q.shape)}")
    _check_shape(op, "k", k, q.shape)
    _check_shape(op, "v", v, q.shape)
    _check_head_dim(op, q)
    return attention.attention_forward(*_strided_alike(q, k, v))


@_op
def attention_bwd(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    op = "attention_bwd"
    check_device(op, grad_out, q, k, v, out, lse)
    check_float(op, grad_out, q, k, v, out)
    _check_same_dtype(op, grad_out, q, k, v, out)
    check(q.dim() == 4, f"{op}: q must be (B, H, N, Dh), got shape {tuple(q.shape)}")
    for name, t in (("grad_out", grad_out), ("k", k), ("v", v), ("out", out)):
        _check_shape(op, name, t, q.shape)
    _check_shape(op, "lse", lse, q.shape[:-1])
    check(lse.dtype == torch.float32, f"{op}: lse must be fp32, got {lse.dtype}")
    _check_head_dim(op, q)
    q, k, v = _strided_alike(q, k, v)
    return attention.attention_backward(grad_out.contiguous(), q, k, v, out.contiguous(), lse.contiguous())


def _check_attention_jvp(tensors: dict[str, Tensor]) -> None:
    """The fused JVP's six inputs, against the contract; unlike the ops above it raises ValueError (shapes, devices,
    head sizes) and TypeError (dtypes), as its native twin does."""
    op = "attention_jvp"
    support = contract.support(op, BACKEND)
    q = tensors["q"]
    if q.dim() != 4:
        raise ValueError(f"{op}: q must be (B, H, N, Dh), got shape {tuple(q.shape)}")
    if q.dtype not in support.dtypes:
        raise TypeError(f"{op}: dtype {q.dtype} is not supported here (expected one of {support.dtypes})")
    for name, t in tensors.items():
        if t.shape != q.shape:
            raise ValueError(f"{op}: {name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise TypeError(f"{op}: {name} must have the dtype of q ({q.dtype}), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{op}: {name} is on {t.device}, q on {q.device}")
    if INTERPRET and q.device.type != "cpu":
        raise ValueError(f"{op}: under TRITON_INTERPRET=1 the Triton kernels take CPU tensors")
    if not INTERPRET and q.device.type != "cuda":
        raise ValueError(f"{op}: the Triton kernels take CUDA tensors (CPU ones with TRITON_INTERPRET=1)")
    assert support.head_dims is not None  # the contract lists the Triton attention's head sizes
    if q.shape[-1] not in support.head_dims:
        raise ValueError(f"{op}: head size {q.shape[-1]} not in {support.head_dims}")
    if q.shape[2] == 0:
        raise ValueError(f"{op}: q must have tokens, got shape {tuple(q.shape)}")


@_op
def attention_jvp(
    q: Tensor, k: Tensor, v: Tensor, dq: Tensor, dk: Tensor, dv: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_attention_jvp({"q": q, "k": k, "v": v, "dq": dq, "dk": dk, "dv": dv})
    return attention_tangents.attention_jvp(*_strided_alike(q, k, v), *_strided_alike(dq, dk, dv))


@_op
def modulate_layernorm_fwd(x: Tensor, shift: Tensor, scale: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    op = "modulate_layernorm_fwd"
    check_device(op, x, shift, scale)
    check_float(op, x, shift, scale)
    _check_same_dtype(op, x, shift, scale)
    check(x.dim() == 3, f"{op}: x must be (B, N, C), got shape {tuple(x.shape)}")
    _check_shape(op, "shift", shift, (x.shape[0], x.shape[2]))
    _check_shape(op, "scale", scale, (x.shape[0], x.shape[2]))
    _check_token_tiles(op, x)
    return layernorm.modulate_layernorm_forward(x.contiguous(), shift.contiguous(), scale.contiguous(), eps)


@_op
def modulate_layernorm_bwd(
    grad_y: Tensor, x: Tensor, scale: Tensor, mean: Tensor, rstd: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    op = "modulate_layernorm_bwd"
    check_device(op, grad_y, x, scale, mean, rstd)
    check_float(op, grad_y, x, scale)
    _check_same_dtype(op, grad_y, x, scale)
    check(x.dim() == 3, f"{op}: x must be (B, N, C), got shape {tuple(x.shape)}")
    _check_shape(op, "grad_y", grad_y, x.shape)
    _check_shape(op, "scale", scale, (x.shape[0], x.shape[2]))
    for name, t in (("mean", mean), ("rstd", rstd)):
        _check_shape(op, name, t, x.shape[:2])
        check(t.dtype == torch.float32, f"{op}: {name} must be fp32, got {t.dtype}")
    return layernorm.modulate_layernorm_backward(*(t.contiguous() for t in (grad_y, x, scale, mean, rstd)))


@_op
def gated_residual(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    op = "gated_residual"
    # y may have its own dtype, as in the native ops: the kernel reads it as it is
    check_device(op, x, y)
    check_float(op, x, y)
    _check_shape(op, "y", y, x.shape)
    check(x.dim() == 3, f"{op}: x must be (B, N, C), got shape {tuple(x.shape)}")
    check_device(op, x, gate)
    check_float(op, gate)
    _check_same_dtype(op, x, gate)
    _check_shape(op, "gate", gate, (x.shape[0], x.shape[2]))
    return elementwise.gated_residual(x.contiguous(), gate.contiguous(), y.contiguous())


@_op
def timestep_features(t: Tensor, dim: int, max_period: float) -> Tensor:
    op = "timestep_features"
    check_device(op, t)
    check(t.dim() == 1, f"{op}: t must be (B,), got shape {tuple(t.shape)}")
    check(t.is_floating_point(), f"{op}: t must be floating point, got {t.dtype}")
    check(dim >= 1, f"{op}: dim must be positive, got {dim}")
    check(max_period > 0, f"{op}: max_period must be positive, got {max_period}")
    return embedding.timestep_features(t.contiguous(), dim, max_period, T_SCALE)


@_op
def condition_sum(c: Tensor, level: Tensor, d_table: Tensor, y: Tensor | None, y_table: Tensor | None) -> Tensor:
    op = "condition_sum"
    check((y is None) == (y_table is None), f"{op}: pass y and y_table together, or neither")
    labelled = [] if y is None or y_table is None else [y, y_table]
    check_device(op, c, level, d_table, *labelled)
    check_float(op, c, d_table, *labelled[1:])
    _check_same_dtype(op, c, d_table, *labelled[1:])
    check(c.dim() == 2, f"{op}: c must be (B, C), got shape {tuple(c.shape)}")
    for name, index, table in (("level", level, d_table), ("y", y, y_table)):
        if index is None:
            continue
        assert table is not None  # y comes with y_table (checked above)
        _check_shape(op, name, index, (c.shape[0],))
        check(index.dtype == torch.int64, f"{op}: {name} must be int64, got {index.dtype}")
        check(
            table.dim() == 2 and table.shape[1] == c.shape[1],
            f"{op}: the table of {name} must be (rows, {c.shape[1]}), got shape {tuple(table.shape)}",
        )
    return embedding.condition_sum(
        c.contiguous(),
        level.contiguous(),
        d_table.contiguous(),
        None if y is None else y.contiguous(),
        None if y_table is None else y_table.contiguous(),
    )


@_op
def euler_step(x: Tensor, v: Tensor, d: Tensor) -> Tensor:
    _check_alike("euler_step", x, v)
    _check_step("euler_step", x, d)
    return elementwise.per_sample_step(x.contiguous(), v.contiguous(), d.contiguous(), 1.0, None)


@_op
def bootstrap_midpoint(x: Tensor, v1: Tensor, d: Tensor, clip: float | None) -> Tensor:
    _check_alike("bootstrap_midpoint", x, v1)
    _check_step("bootstrap_midpoint", x, d)
    return elementwise.per_sample_step(x.contiguous(), v1.contiguous(), d.contiguous(), 0.5, clip)


@_op
def bootstrap_target(v1: Tensor, v2: Tensor, clip: float | None) -> Tensor:
    _check_alike("bootstrap_target", v1, v2)
    return elementwise.bootstrap_target(v1.contiguous(), v2.contiguous(), clip)
