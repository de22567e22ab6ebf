"""Sampling: N Euler steps from noise at ``t = 0`` to data at ``t = 1``, of the sizes of a step schedule.

Any ``N`` from 1 to ``1 / min_step`` works: the steps are trained step sizes
that sum to 1 (``steps.step_schedule``), all equal when ``N`` is a power of two.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from . import checks, engine, ops
from .checks import check_velocity
from .graphs import CapturedCall, GraphCache, weights_key
from .models import ShortcutModule, unwrap_model
from .ops import reference as SF
from .steps import DEFAULT_MIN_STEP, resolve_schedule

MAX_NOISE_ELEMENTS = 2**31  # per call (8 GiB of fp32 noise); draw larger sets in several calls
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what compute_dtype may name


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _check_fits_model(model: nn.Module, what: str, x: torch.Tensor) -> None:
    """The package's models know their input shape: check it before any work (``x`` may be a meta tensor)."""
    base = unwrap_model(model)
    if isinstance(base, ShortcutModule):
        try:
            base._check_x(x)
        except ValueError as err:
            raise ValueError(f"{what} {tuple(x.shape)} does not fit the model: {err}") from None


def _model_dtype(model: nn.Module, fallback: torch.dtype) -> torch.dtype:
    param = next(model.parameters(), None)
    return param.dtype if param is not None and param.is_floating_point() else fallback


def resolve_compute_dtype(
    compute_dtype: torch.dtype | None, weights_dtype: torch.dtype, device: torch.device
) -> torch.dtype | None:
    """The autocast dtype the network runs under for ``sample(compute_dtype=...)``, or None: no autocast, the
    network runs in its weights' dtype.

    ``None`` picks bf16 autocast for fp32 weights on CUDA (the tensor-core path of the
    kernels; fp32 there takes the ``ieee`` dot path of the attention) and the weights'
    own dtype everywhere else (fp32 on the CPU, where the C++ engine runs it). An
    explicit dtype is the weights' own, or bf16/fp16 autocast over fp32 weights.
    """
    if compute_dtype is not None and compute_dtype not in COMPUTE_DTYPES:
        raise TypeError(
            f"compute_dtype must be None (automatic) or one of {[str(t) for t in COMPUTE_DTYPES]}, "
            f"got {compute_dtype!r}"
        )
    if compute_dtype is None:
        return torch.bfloat16 if device.type == "cuda" and weights_dtype == torch.float32 else None
    if compute_dtype == weights_dtype:
        return None
    if weights_dtype == torch.float32 and compute_dtype != torch.float32:
        return compute_dtype
    raise ValueError(
        f"compute_dtype={compute_dtype} cannot run a model whose weights are {weights_dtype}: give the "
        "weights' dtype, or bfloat16/float16 (autocast) for fp32 weights"
    )


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Autocast to ``dtype`` on ``device``, or autocast off when None: sample() sets the precision itself,
    overriding any enclosing autocast, so that its CUDA-graph key says what the graph ran.

    Without autocast's cache of cast weights: under an enclosing autocast the cache lives until the outermost
    context exits, so weights cast inside a graph capture would be read back, stale, by later calls.
    """
    if dtype is None and not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False)


def _noise(model, noise, shape, generator, dtype) -> tuple[torch.Tensor, list[checks.Condition]]:
    """The starting point: the given ``noise`` (and the check that it is finite) or noise drawn for ``shape``."""
    if (noise is None) == (shape is None):
        raise ValueError("give exactly one of noise (a tensor) or shape (a tuple such as (16, 1, 8, 8))")
    if noise is not None:
        if not isinstance(noise, torch.Tensor) or noise.dtype not in FLOAT_DTYPES:
            got = getattr(noise, "dtype", type(noise).__name__)
            raise TypeError(f"noise must be a floating-point tensor (float16/bfloat16/float32/float64), got {got}")
        if noise.dim() < 2 or noise.shape[0] < 1:
            raise ValueError(f"noise must be a batch (B, ...) with B >= 1, got shape {tuple(noise.shape)}")
        param = next(model.parameters(), None)
        if param is not None and noise.device != param.device:
            raise ValueError(f"noise is on {noise.device} but the model is on {param.device}; move one of them")
        _check_fits_model(model, "noise of shape", noise)
        return noise, [checks.finite("noise", noise)]
    if (
        not isinstance(shape, (tuple, list, torch.Size))
        or len(shape) < 2
        or not all(checks.is_int(s) and s >= 1 for s in shape)
    ):
        raise ValueError(f"shape must be a tuple of at least two positive ints (B, ...), got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) > MAX_NOISE_ELEMENTS:
        raise ValueError(
            f"shape {shape} holds {math.prod(shape):.3g} values, more than "
            f"MAX_NOISE_ELEMENTS={MAX_NOISE_ELEMENTS:.3g}; sample in smaller batches"
        )
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of {[str(t) for t in FLOAT_DTYPES]}, got {dtype!r}")
    device = _model_device(model)
    if device.type == "meta":
        raise ValueError("the model is on the meta device: it has no weights to sample with; load them first")
    checks.check_generator(generator, device)
    _check_fits_model(model, "shape", torch.empty(shape, device="meta"))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype), []


def _euler_loop(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    scale: torch.Tensor | None,
    schedule: tuple[float, ...],
    null_class: int,
    net_dtype: torch.dtype,
    progress: bool = False,
    intrinsic: bool = False,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Euler steps of the sizes in ``schedule`` from ``x`` at t = 0; guided by ``scale`` (a 0-d tensor) when given.

    ``intrinsic``: the model takes the guidance scale as its input ``w``, so one
    forward per step gives the guided velocity. ``autocast``: the dtype the network
    runs under (``resolve_compute_dtype``); the Euler updates stay in x's dtype.
    Reads nothing back to the host, so a CUDA graph can capture it whole, ``scale``
    being one of its inputs.
    """
    with _autocast(x.device, autocast):
        return _euler_steps(model, x, y, scale, schedule, null_class, net_dtype, progress, intrinsic)


def _euler_steps(model, x, y, scale, schedule, null_class, net_dtype, progress, intrinsic) -> torch.Tensor:
    """The body of ``_euler_loop``, under its autocast setting."""
    batch = x.shape[0]
    t_start = 0.0
    for d in tqdm(schedule, desc="sampling", disable=not progress, leave=False):
        t = torch.full((batch,), t_start, device=x.device)
        d_vec = torch.full((batch,), d, device=x.device)
        t_start += d
        if scale is None or intrinsic:
            w = None if scale is None else scale.expand(batch)
            v = model(x.to(net_dtype), t, d_vec, y) if w is None else model(x.to(net_dtype), t, d_vec, y, w=w)
            v = check_velocity(v, x.shape)
        else:
            # conditional and null-class rows in one batched forward
            assert y is not None  # sample() refuses cfg_scale without labels
            null = torch.full_like(y, null_class)
            v = model(
                torch.cat([x, x]).to(net_dtype), torch.cat([t, t]), torch.cat([d_vec, d_vec]), torch.cat([y, null])
            )
            v = check_velocity(v, torch.Size([2 * batch, *x.shape[1:]]))
            v_cond, v_null = v[:batch], v[batch:]  # slices, not chunk(): ONNX export folds them with a dynamic batch
            v = SF.guided_velocity(v_cond, v_null, scale)
        x = ops.euler_step(x, v, d)
    return x


# ------------------------------------------------------------------ CUDA graphs
GRAPH_CACHE = GraphCache(max_size=8)  # captured sampling loops, least recently used dropped first
GRAPH_MAX_BATCH = 256  # larger batches run as chunks of this size, so one graph serves any large batch


def set_graph_cache_size(size: int) -> None:
    """Keep at most ``size`` captured sampling graphs (0: capture, replay once, keep none)."""
    GRAPH_CACHE.max_size = size


def clear_graph_cache() -> None:
    """Drop every captured sampling graph and free its memory."""
    GRAPH_CACHE.clear()


def _graph_run(model, x, y, scale, steps, null_class, net_dtype, autocast) -> torch.Tensor:
    """The Euler loop through a cached CUDA graph, one graph per (weights, batch, schedule, guidance on/off, dtypes,
    autocast dtype).

    ``steps`` is the schedule (a tuple of step sizes); the guidance scale is an
    input of the graph, so a new scale replays the same graph.
    """
    key = (weights_key(model), tuple(x.shape), x.dtype, x.device, net_dtype, autocast, steps, y is None, scale is None)

    def capture():
        loop = functools.partial(
            _euler_loop,
            model,
            schedule=steps,
            null_class=null_class,
            net_dtype=net_dtype,
            intrinsic=getattr(model, "guidance_input", False),
            autocast=autocast,
        )
        return CapturedCall(loop, (x, y, scale), pool=GRAPH_CACHE.shared_pool())

    return GRAPH_CACHE.get(key, capture).replay(x, y, scale).clone()


def graph_batch(rows: int) -> int:
    """The batch size of the graph that runs ``rows`` samples (at most ``GRAPH_MAX_BATCH``): the next power of
    two, so that a few graphs serve every batch size; the extra rows are padding."""
    if not checks.is_int(rows) or not 1 <= rows <= GRAPH_MAX_BATCH:
        raise ValueError(f"a graph runs 1 to GRAPH_MAX_BATCH={GRAPH_MAX_BATCH} rows, got {rows!r}")
    return min(1 << (rows - 1).bit_length(), GRAPH_MAX_BATCH)


def _graph_run_chunked(model, x, y, scale, steps, null_class, net_dtype, autocast) -> torch.Tensor:
    """Chunks of at most ``GRAPH_MAX_BATCH`` rows, each padded to ``graph_batch`` rows with zero noise (and the
    null class); rows are independent, so padding rows change nothing in the others."""
    out = []
    for start in range(0, x.shape[0], GRAPH_MAX_BATCH):
        xc = x[start : start + GRAPH_MAX_BATCH]
        yc = None if y is None else y[start : start + GRAPH_MAX_BATCH]
        rows = xc.shape[0]
        pad = graph_batch(rows) - rows
        if pad:
            xc = torch.cat([xc, xc.new_zeros((pad, *xc.shape[1:]))])
            yc = None if yc is None else torch.cat([yc, yc.new_full((pad,), null_class)])
        out.append(_graph_run(model, xc, yc, scale, steps, null_class, net_dtype, autocast)[:rows])
    return out[0] if len(out) == 1 else torch.cat(out)


def schedule_of(base: nn.Module, steps) -> tuple[float, ...]:
    """``sample()``'s ``steps`` as the schedule the (unwrapped) model ``base`` runs (``steps.resolve_schedule``
    with its ``min_step``, 1/128 when it has none, and its ``continuous_steps``)."""
    return resolve_schedule(
        steps, getattr(base, "min_step", DEFAULT_MIN_STEP), getattr(base, "continuous_steps", False)
    )


def check_cfg_scale(base: nn.Module, cfg_scale: float | None) -> None:
    """``cfg_scale`` of ``sample()`` for the (unwrapped) model ``base``: None, or a finite number for a
    class-conditional model (``>= 0`` where it is the model's guidance input)."""
    if cfg_scale is None:
        return
    if not checks.is_number(cfg_scale):
        raise TypeError(f"cfg_scale must be a number or None, got {cfg_scale!r}")
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be finite, got {cfg_scale}")
    if getattr(base, "num_classes", 0) <= 0:
        raise ValueError("cfg_scale needs a class-conditional model (num_classes > 0); this one is unconditional")
    if getattr(base, "guidance_input", False) and cfg_scale < 0:
        raise ValueError(
            f"cfg_scale is the guidance input of this model (intrinsic guidance) and must be >= 0, got {cfg_scale}"
        )


@torch.no_grad()
def sample(
    model: nn.Module,
    noise: torch.Tensor | None = None,
    *,
    shape: tuple[int, ...] | None = None,
    steps: int | tuple[float, ...] = 1,
    y: torch.Tensor | None = None,
    cfg_scale: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    compute_dtype: torch.dtype | None = None,
    progress: bool = False,
    use_graph: bool | None = None,
) -> torch.Tensor:
    """Generate samples with ``steps`` Euler steps.

    ``model`` is any module called as ``model(x, t, d, y)``. Give either
    ``noise`` (the result is a deterministic function of it) or ``shape``
    (noise drawn from ``generator`` on the model's device, in ``dtype``: the dtype of the noise and the result,
    not of the network, see ``compute_dtype``).
    ``steps`` is an int in ``[1, 1/min_step]`` (``min_step`` of the model,
    1/128 when it has none), run as ``step_schedule(steps)`` (large steps first,
    e.g. 3 steps as 1/2, 1/4, 1/4), or an explicit schedule: a sequence of step
    sizes of the model that sum to 1. A model with ``continuous_steps`` takes ``steps`` up to
    ``MAX_CONTINUOUS_STEPS`` as equal steps ``1 / steps``, or any real steps in (0, 1] that sum
    to 1. With ``cfg_scale=w`` the velocity is
    ``v_null + w (v_y - v_null)``, the null class being ``model.num_classes``;
    a model with a guidance input (``guidance_input``, intrinsic guidance)
    instead takes ``w`` as its input, one forward per step, and without
    ``cfg_scale`` runs at ``w = 1``.

    ``sample(model, noise=z, steps=1, y=y)`` equals ``z + model(z, 0, 1, y)`` (bit for bit on the
    eager loop, to fp32 rounding, 1e-5 relative, on the C++ engine).
    ``compute_dtype`` is the precision of the network (``resolve_compute_dtype``): None (the default)
    runs fp32 weights under bf16 autocast on CUDA, where fp32 attention has no tensor cores, and
    in the weights' dtype elsewhere (fp32 on the CPU); ``torch.float32`` asks for full precision
    on CUDA too; ``torch.bfloat16`` / ``torch.float16`` run fp32 weights under autocast. sample()
    sets autocast itself, overriding an enclosing one. The Euler updates run in the dtype of the
    noise, and the result is a new tensor of the shape and dtype of the noise, whatever ``compute_dtype``.
    A ``shape`` of more than ``MAX_NOISE_ELEMENTS`` values is refused: draw it in several calls.

    On a CUDA device the whole loop (every forward, the guidance and the Euler
    updates) is captured in a CUDA graph on the first call for a given batch
    size (rounded up to a power of two, ``graph_batch``), schedule, guidance on/off and dtype, and
    replayed on later calls (``use_graph=None``, the default; ``False`` forces the eager loop). The
    graphs are kept in an LRU cache (``set_graph_cache_size``,
    ``clear_graph_cache``); batches above ``GRAPH_MAX_BATCH`` run in chunks of
    that size. In-place weight updates are seen by the graphs. On the CPU the
    package's fp32 models run the loop in fp32 in the C++ engine (``shortcut_fast.engine``:
    its switch and what it covers); other modules and calls run it eagerly.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module called as model(x, t, d, y), got {type(model).__name__}")
    checks.check_optional_bool("use_graph", use_graph, "automatic")
    base = unwrap_model(model)
    steps = schedule_of(base, steps)
    x, conditions = _noise(model, noise, shape, generator, dtype)
    batch = x.shape[0]
    null_class = getattr(base, "num_classes", 0)
    if y is not None and not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a tensor of class indices or None, got {type(y).__name__}")
    check_cfg_scale(base, cfg_scale)
    if cfg_scale is not None and y is None:
        raise ValueError("cfg_scale needs labels y to guide towards")
    if isinstance(y, torch.Tensor) and y.shape != (batch,):
        raise ValueError(f"y must have shape ({batch},) to match the batch of the noise, got {tuple(y.shape)}")
    if isinstance(base, ShortcutModule):
        # the Euler loop builds t and d itself; the labels are the package model's only other input
        checks.check_labels(y, null_class, batch, x.device, x_name="the noise")
        conditions += checks.labels_in_range(y, null_class)
    if use_graph and x.device.type != "cuda":
        raise ValueError(f"use_graph=True needs a model on a CUDA device; this one is on {x.device}")
    if use_graph is None:
        use_graph = x.device.type == "cuda" and isinstance(base, ShortcutModule)
    checks.require(*conditions)

    # the network runs in its weights' dtype (or under autocast); the Euler sum stays in the noise's dtype
    net_dtype = _model_dtype(model, x.dtype)
    autocast = resolve_compute_dtype(compute_dtype, net_dtype, x.device)
    scale = None if cfg_scale is None else torch.tensor(float(cfg_scale), device=x.device)
    with checks.trusted_inputs():
        if not use_graph:
            # the engine computes in fp32 and refuses a call under autocast (as engine mode "on" says)
            with _autocast(x.device, autocast):
                out = engine.run(model, x, y, cfg_scale, steps, progress)  # None: not an engine call
            if out is not None:
                return out
            return _euler_loop(
                model,
                x,
                y,
                scale,
                steps,
                null_class,
                net_dtype,
                progress,
                intrinsic=getattr(base, "guidance_input", False),
                autocast=autocast,
            )
        return _graph_run_chunked(base, x, y, scale, steps, null_class, net_dtype, autocast)
