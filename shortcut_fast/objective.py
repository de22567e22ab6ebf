"""The shortcut objective: flow matching at the smallest step plus self-consistency.

One batch is split per sample. The flow part (``1 - bootstrap_fraction``)
regresses ``v(x_t, t, d_min)`` on ``x1 - x0`` with ``t`` on the grid ``k / 2**K``.
The self-consistency part draws a level ``d`` in ``{2 d_min, ..., 1}`` (spread
evenly over the levels at any batch size), ``t`` on the grid of multiples of
``d``, and regresses ``v(x_t, t, d)`` on the no-gradient target built from two
half steps of the target model (the EMA weights by default)::

    v1 = v(x_t, t, d/2);  x' = clip(x_t + d/2 v1);  v2 = v(x', t + d/2, d/2)
    target = clip((v1 + v2) / 2)

Rows ``[0, n_boot)`` of the batch are the self-consistency part, the rest the
flow part. ``objective="flow"`` is plain flow matching through the same code.
``objective="meanflow"`` is MeanFlow (arXiv 2505.13447; ``meanflow.py``: the
conventions, the identity and the choices) for models with continuous step
sizes (``step_embedding="sinusoidal"``).

Three techniques of iSM (arXiv 2510.21250) are options here, off by default:
``intrinsic_guidance`` (``techniques.guidance``), ``wavelet_levels``
(``techniques.wavelet``) and ``ot_pairing`` (``techniques.pairing``); the fourth,
twin EMA, is ``TrainConfig.target_ema_decay``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn as nn

from . import checks, meanflow, ops
from .checks import check_velocity
from .models import unwrap_model
from .ops import reference as SF
from .steps import DEFAULT_MIN_STEP, num_doublings
from .techniques.guidance import draw_guidance_scales, guided_flow_target
from .techniques.pairing import ot_pair
from .techniques.wavelet import check_wavelet_levels, wavelet_loss

OBJECTIVES = ("shortcut", "flow", "meanflow")


@dataclass
class ShortcutConfig:
    """Settings of the shortcut objective."""

    min_step: float = DEFAULT_MIN_STEP  # d_min = 2**-K: the flow level and the finest sampling step
    bootstrap_fraction: float = 0.25  # share of each batch trained for self-consistency
    ema_targets: bool = True  # build targets with target_model (EMA) rather than the live weights
    clip: float | None = 4.0  # clamp the midpoint and the target to [-clip, clip]; None disables
    class_dropout: float = 0.1  # probability of the null label on the flow part
    bootstrap_cfg_scale: float | None = None  # guided targets at the smallest bootstrap level; None = off
    objective: str = "shortcut"  # "shortcut", "flow" (plain flow matching baseline) or "meanflow"
    # iSM Sec. 3.1: (low, high) range of the guidance scale w drawn per labelled row; the model takes w as an input
    intrinsic_guidance: tuple[float, float] | None = None
    wavelet_levels: int = 0  # iSM Sec. 3.2: Haar levels of the wavelet loss on image batches; 0 = the plain L2
    wavelet_weights: tuple[float, ...] | None = None  # wavelet_levels + 1 band weights (details per level, then LL)
    ot_pairing: bool = False  # iSM Sec. 3.3: pair noise and data rows by minibatch optimal transport (per rank)
    # objective="meanflow" (meanflow.py): the paper's ImageNet settings
    instant_fraction: float = 0.75  # share of rows with d = 0 (r = t): flow matching
    time_distribution: tuple[float, float] = (-0.4, 1.0)  # (mean, std) of the logit-normal MeanFlow times
    adaptive_power: float = 1.0  # p of the adaptive weight 1 / (||Δ||² + c)^p; 0 = the plain squared error
    meanflow_cfg_scale: float | None = None  # ω of the guided velocity folded into the target; None = off
    meanflow_derivative: str = "jvp"  # "jvp" (forward-mode AD) or "central_difference" (two no-grad forwards)

    def __post_init__(self):
        num_doublings(self.min_step)
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        checks.check_number("bootstrap_fraction", self.bootstrap_fraction, 0.0, 1.0, high_open=True)
        checks.check_number("class_dropout", self.class_dropout, 0.0, 1.0)
        checks.check_bool("ema_targets", self.ema_targets)
        if self.clip is not None:
            checks.check_number("clip", self.clip, 0.0, math.inf, low_open=True, high_open=True)
        if self.bootstrap_cfg_scale is not None:
            checks.check_number("bootstrap_cfg_scale", self.bootstrap_cfg_scale, 0.0, math.inf, high_open=True)
        if self.objective == "shortcut" and num_doublings(self.min_step) == 0:
            raise ValueError("the shortcut objective needs min_step < 1 (at least two step levels)")
        self._check_techniques()
        self._check_meanflow()

    def _check_meanflow(self) -> None:
        checks.check_number("instant_fraction", self.instant_fraction, 0.0, 1.0)
        if not isinstance(self.time_distribution, (tuple, list)) or len(self.time_distribution) != 2:
            raise ValueError(f"time_distribution must be a pair (mean, std), got {self.time_distribution!r}")
        self.time_distribution = cast("tuple[float, float]", tuple(self.time_distribution))  # a pair (checked)
        checks.check_number("time_distribution mean", self.time_distribution[0], -math.inf, math.inf, True, True)
        checks.check_number("time_distribution std", self.time_distribution[1], 0.0, math.inf, True, True)
        checks.check_number("adaptive_power", self.adaptive_power, 0.0, math.inf, high_open=True)
        if self.meanflow_cfg_scale is not None:
            checks.check_number("meanflow_cfg_scale", self.meanflow_cfg_scale, 0.0, math.inf, high_open=True)
        if self.meanflow_derivative not in meanflow.DERIVATIVES:
            raise ValueError(
                f"meanflow_derivative must be one of {list(meanflow.DERIVATIVES)}, got {self.meanflow_derivative!r}"
            )
        if self.objective != "meanflow":
            return
        excluded = {
            "bootstrap_cfg_scale": self.bootstrap_cfg_scale is not None,
            "intrinsic_guidance": self.intrinsic_guidance is not None,
            "wavelet_levels": self.wavelet_levels != 0,
        }
        clash = [name for name, on in excluded.items() if on]
        if clash:
            raise ValueError(
                f"objective='meanflow' does not combine with {clash}: they shape the shortcut objective's targets "
                "or loss (guidance for MeanFlow is meanflow_cfg_scale)"
            )

    def _check_techniques(self) -> None:
        checks.check_bool("ot_pairing", self.ot_pairing)
        if self.intrinsic_guidance is not None:
            if not isinstance(self.intrinsic_guidance, (tuple, list)) or len(self.intrinsic_guidance) != 2:
                raise ValueError(
                    f"intrinsic_guidance must be a pair (low, high) of guidance scales or None, "
                    f"got {self.intrinsic_guidance!r}"
                )
            self.intrinsic_guidance = cast("tuple[float, float]", tuple(self.intrinsic_guidance))  # a pair (checked)
            for value in self.intrinsic_guidance:
                checks.check_number("intrinsic_guidance", value, 0.0, math.inf, high_open=True)
            if self.intrinsic_guidance[0] > self.intrinsic_guidance[1]:
                raise ValueError(
                    f"intrinsic_guidance must be (low, high) with low <= high, got {self.intrinsic_guidance}"
                )
            if self.bootstrap_cfg_scale is not None:
                raise ValueError(
                    "intrinsic_guidance and bootstrap_cfg_scale exclude each other: with intrinsic "
                    "guidance the self-consistency targets are guided by the w input; set one of them"
                )
        if not checks.is_int(self.wavelet_levels) or not 0 <= self.wavelet_levels <= 10:
            raise ValueError(f"wavelet_levels must be an int in [0, 10] (0 = plain L2), got {self.wavelet_levels!r}")
        if self.wavelet_weights is not None:
            if self.wavelet_levels == 0:
                raise ValueError("wavelet_weights needs wavelet_levels >= 1")
            count = self.wavelet_levels + 1
            if not isinstance(self.wavelet_weights, (tuple, list)) or len(self.wavelet_weights) != count:
                raise ValueError(
                    f"wavelet_weights must be wavelet_levels + 1 = {count} numbers "
                    f"(detail bands of each level, then the approximation), got {self.wavelet_weights!r}"
                )
            self.wavelet_weights = tuple(self.wavelet_weights)
            for value in self.wavelet_weights:
                checks.check_number("wavelet_weights", value, 0.0, math.inf, high_open=True)
            if not sum(self.wavelet_weights) > 0:
                raise ValueError(f"wavelet_weights must not all be 0, got {self.wavelet_weights}")

    def to_dict(self) -> dict:
        """Plain JSON-able settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShortcutConfig:
        """Settings from a dict, rejecting unknown keys."""
        return cls(**checks.known_keys(cls, data))


def bootstrap_levels(n: int, num_levels: int, generator=None, device=None) -> torch.Tensor:
    """Level indices in ``[1, num_levels]`` for ``n`` rows, spread evenly.

    Row ``i`` gets level ``1 + (i + offset) % num_levels`` with a random offset,
    so every batch holds each level ``n // num_levels`` or one more times and,
    over batches, every level equally often, whatever ``n`` is.
    """
    offset = torch.randint(0, num_levels, (1,), generator=generator, device=device)
    return 1 + (torch.arange(n, device=device) + offset) % num_levels


@dataclass
class ShortcutBatch:
    """The inputs and regression targets of one training batch (rows: bootstrap, then flow)."""

    x_t: torch.Tensor
    t: torch.Tensor
    d: torch.Tensor
    y: torch.Tensor | None
    target: torch.Tensor
    n_boot: int
    w: torch.Tensor | None = None  # guidance inputs (intrinsic guidance), else None


def check_loss_inputs(model: nn.Module, x1, y, config, generator=None, shard=(0, 1)) -> tuple[ShortcutConfig, int]:
    """The metadata checks of the loss inputs (no host read); returns the config and the null-class index.

    The value checks (``x1`` finite, labels in range) are ``loss_value_conditions``.
    """
    config = ShortcutConfig() if config is None else config
    if not isinstance(config, ShortcutConfig):
        raise TypeError(
            f"config must be a ShortcutConfig (ShortcutConfig.from_dict for a dict), got {type(config).__name__}"
        )
    checks.check_generator(generator)
    base = unwrap_model(model)
    if not isinstance(x1, torch.Tensor) or not x1.is_floating_point():
        raise TypeError(f"x1 must be a floating-point tensor, got {getattr(x1, 'dtype', type(x1).__name__)}")
    if x1.dim() < 2 or x1.shape[0] < 1:
        raise ValueError(f"x1 must be a batch (B, ...) with B >= 1, got shape {tuple(x1.shape)}")
    param = next(base.parameters(), None)
    if x1.is_meta or (param is not None and param.device != x1.device):
        where = "the model's" if param is None else f"the model's device {param.device}"
        raise ValueError(f"x1 is on {x1.device}; it must hold values on {where}")
    if config.wavelet_levels:
        check_wavelet_levels(config.wavelet_levels, x1.shape)
    if config.intrinsic_guidance is not None and y is not None and not getattr(base, "guidance_input", False):
        raise ValueError(
            "intrinsic_guidance needs a model that takes the guidance scale as an input: "
            "ShortcutDiT/ShortcutMLP(guidance_input=True), or a module with guidance_input = True "
            "called as model(x, t, d, y, w=w)"
        )
    if config.objective == "meanflow" and not getattr(base, "continuous_steps", False):
        raise ValueError(
            "objective='meanflow' trains every step size in [0, 1]: it needs a model with continuous step sizes, "
            "ShortcutDiT/ShortcutMLP(step_embedding='sinusoidal') (or a module with continuous_steps = True); "
            f"this {type(base).__name__} embeds a table of trained levels"
        )
    model_min_step = getattr(base, "min_step", None)
    if model_min_step is not None and model_min_step != config.min_step:
        raise ValueError(f"config.min_step={config.min_step} differs from the model's min_step={model_min_step}")
    num_classes = getattr(base, "num_classes", 0)
    checks.check_labels(y, num_classes, x1.shape[0], x1.device, x_name="x1")
    _check_shard(shard)
    checks.check_generator(generator, x1.device, "x1")
    return config, num_classes


def loss_value_conditions(x1: torch.Tensor, y, num_classes: int) -> list[checks.Condition]:
    """``x1`` finite and the labels in range, checked before class dropout could hide a bad label."""
    return [checks.finite("x1", x1), *checks.labels_in_range(y, num_classes)]


def _call(model, x, t, d, y, w: torch.Tensor | None) -> torch.Tensor:
    """``model(x, t, d, y)``, with ``w=w`` for a model with a guidance input when ``w`` is given."""
    v = model(x, t, d, y) if w is None else model(x, t, d, y, w=w)
    return check_velocity(v, x.shape)


def _velocity(
    model, x, t, d, y, null_class: int, guided: torch.Tensor | None, scale: float | None, w: torch.Tensor | None = None
):
    """``model(x, t, d, y[, w])``; rows where ``guided`` is true get the two-forward guided velocity."""
    if guided is None:
        return _call(model, x, t, d, y, w)
    assert scale is not None  # guided rows come with their scale (bootstrap_cfg_scale)
    # conditional and unconditional rows in one batched forward
    v = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([d, d]), torch.cat([y, torch.full_like(y, null_class)]))
    v_cond, v_null = check_velocity(v, (2 * x.shape[0], *x.shape[1:])).chunk(2)
    mask = guided.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(mask, SF.guided_velocity(v_cond, v_null, scale), v_cond)


def self_consistency_targets(
    teacher,
    xb,
    tb,
    db,
    yb,
    guided,
    *,
    null_class: int,
    scale: float | None,
    clip: float | None,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """The no-gradient targets of the self-consistency rows: two half steps of ``teacher``.

    ``v1 = v(x, t, d/2)``, ``x' = clip(x + d/2 v1)``, ``v2 = v(x', t + d/2, d/2)``,
    target ``clip((v1 + v2) / 2)``; rows where ``guided`` is true use the guided
    velocity of scale ``scale``; ``w`` (B,), for intrinsic guidance, is the
    teacher's guidance input in both half steps. Reads nothing back to the host beyond what the
    teacher does, so a CUDA graph can capture it (``fast_train.graph_targets``).
    """
    v1 = _velocity(teacher, xb, tb, db / 2, yb, null_class, guided, scale, w)
    x_mid = ops.bootstrap_midpoint(xb, v1, db, clip)
    v2 = _velocity(teacher, x_mid, tb + db / 2, db / 2, yb, null_class, guided, scale, w)
    return ops.bootstrap_target(v1, v2, clip)


def _check_shard(shard) -> tuple[int, int]:
    if (
        not isinstance(shard, tuple)
        or len(shard) != 2
        or not all(checks.is_int(v) for v in shard)
        or not 0 <= shard[0] < shard[1]
    ):
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    return shard


def make_batch(
    model,
    x1,
    y=None,
    config: ShortcutConfig | None = None,
    target_model=None,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
    targets=self_consistency_targets,
) -> ShortcutBatch:
    """Draw noise, times and step sizes for ``x1`` and build the regression targets.

    The self-consistency targets come from ``target_model`` (no gradient) when
    ``config.ema_targets`` and it is given, else from ``model``, computed by
    ``targets`` (``self_consistency_targets`` or its CUDA-graph replay).

    ``shard=(rank, world)``: ``x1`` holds rows ``rank, rank + world, ...`` of a
    global batch of ``world * B`` rows. Every process draws the random numbers
    of the whole global batch from an identically seeded ``generator`` and keeps
    its rows, so ``world`` processes see exactly what one process with the
    global batch sees, and each holds its share of the bootstrap rows.
    """
    config, null_class = check_loss_inputs(model, x1, y, config, generator, shard)
    checks.require(*loss_value_conditions(x1, y, null_class))
    return draw_batch(model, x1, y, config, target_model, generator, shard, targets, null_class)


def draw_batch(
    model, x1, y, config: ShortcutConfig, target_model, generator, shard, targets, null_class: int
) -> ShortcutBatch:
    """``make_batch`` on checked inputs (``check_loss_inputs``, ``loss_value_conditions``).

    No host read, except the one copy off the device that ``config.ot_pairing`` makes (``techniques.pairing``).

    ``t`` and ``d`` are drawn here, valid by construction, so the models run under ``checks.trusted_inputs()``.
    """
    with checks.trusted_inputs():
        return _draw_batch(model, x1, y, config, target_model, generator, shard, targets, null_class)


def _draw_batch(
    model, x1, y, config: ShortcutConfig, target_model, generator, shard, targets, null_class
) -> ShortcutBatch:
    rank, world = shard
    B, device, K = x1.shape[0], x1.device, num_doublings(config.min_step)
    n_global = B * world
    n_boot_global = round(n_global * config.bootstrap_fraction) if config.objective == "shortcut" else 0
    # this process's rows of the global layout [bootstrap rows | flow rows]
    rows_b = slice(rank, n_boot_global, world)
    rows_f = slice((rank - n_boot_global) % world, None, world)
    n_boot = len(range(n_boot_global)[rows_b])
    n_flow = B - n_boot
    expand = (-1,) + (1,) * (x1.dim() - 1)

    # step sizes and times: bootstrap rows on the grid of their d, flow rows on the finest grid
    level_b = bootstrap_levels(n_boot_global, K, generator, device)[rows_b]
    d_b = torch.exp2((level_b - K).float())
    u_b = torch.rand(n_boot_global, generator=generator, device=device)[rows_b]
    t_b = torch.floor(u_b * torch.exp2((K - level_b).float())) * d_b
    t_f = torch.randint(0, 2**K, (n_global - n_boot_global,), generator=generator, device=device)[rows_f].float() / 2**K
    t = torch.cat([t_b, t_f])
    d = torch.cat([d_b, torch.full((n_flow,), config.min_step, device=device)])

    x0 = torch.randn((n_global, *x1.shape[1:]), generator=generator, device=device, dtype=x1.dtype)[rank::world]
    if config.ot_pairing:
        x0 = ot_pair(x0, x1, y)  # within this rank's rows, and within each class: see techniques.pairing
    x_t = (1 - t.view(expand)) * x0 + t.view(expand) * x1

    y_in = None
    if y is not None:
        u_drop = torch.rand(n_global - n_boot_global, generator=generator, device=device)[rows_f]
        drop = u_drop < config.class_dropout
        y_in = torch.cat([y[:n_boot], torch.where(drop, torch.full_like(y[n_boot:], null_class), y[n_boot:])])

    teacher = target_model if (config.ema_targets and target_model is not None) else model
    target_f = x1[n_boot:] - x0[n_boot:]
    w = None
    if config.intrinsic_guidance is not None and y is not None:
        assert y_in is not None  # drawn above for labelled data
        w_all = draw_guidance_scales(n_global, *config.intrinsic_guidance, generator, device)
        w = torch.cat([w_all[:n_boot_global][rows_b], w_all[n_boot_global:][rows_f]])
        w = torch.where(y_in == null_class, torch.ones_like(w), w)  # w means nothing without a label
        target_f = _guided_flow_target(
            teacher, x_t[n_boot:], t_f, d[n_boot:], y_in[n_boot:], w[n_boot:], target_f, null_class
        )
    if n_boot == 0:
        return ShortcutBatch(x_t, t, d, y_in, target_f, 0, w)

    guided = None
    if config.bootstrap_cfg_scale is not None and y is not None:
        guided = level_b == 1  # the half step d/2 is d_min: the level trained by flow matching
    with torch.no_grad():
        yb = None if y is None else y[:n_boot]
        extra = {} if w is None else {"w": w[:n_boot]}
        target_b = targets(
            teacher,
            x_t[:n_boot],
            t_b,
            d_b,
            yb,
            guided,
            null_class=null_class,
            scale=config.bootstrap_cfg_scale,
            clip=config.clip,
            **extra,
        ).to(x1.dtype)
    return ShortcutBatch(x_t, t, d, y_in, torch.cat([target_b, target_f]), n_boot, w)


@torch.no_grad()
def _guided_flow_target(teacher, x, t, d, y, w, target, null_class: int) -> torch.Tensor:
    """The intrinsic-guidance flow target: the teacher's unguided (w = 1) velocities for ``y`` and the null class."""
    if x.shape[0] == 0:
        return target
    ones = torch.ones(2 * x.shape[0], device=x.device)
    v = _call(
        teacher,
        torch.cat([x, x]),
        torch.cat([t, t]),
        torch.cat([d, d]),
        torch.cat([y, torch.full_like(y, null_class)]),
        ones,
    )
    v_cond, v_null = v.chunk(2)
    return guided_flow_target(target, v_cond, v_null, w)


def shortcut_loss(
    model,
    x1,
    y=None,
    config: ShortcutConfig | None = None,
    target_model=None,
    generator: torch.Generator | None = None,
    shard: tuple[int, int] = (0, 1),
    targets=self_consistency_targets,
):
    """The shortcut (or flow-matching) loss of one batch ``x1`` (B, ...) with labels ``y`` (B,).

    ``model`` is any module called as ``model(x, t, d, y)``; class-conditional
    models expose ``num_classes`` (the null-class index). ``target_model`` (the
    EMA weights) builds the self-consistency targets when ``config.ema_targets``.
    Randomness comes from ``generator`` (on the device of ``x1``) when given.
    ``shard=(rank, world)`` marks ``x1`` as one process's rows of a global batch
    (see ``make_batch``); the trainer sets it under torchrun. ``targets`` computes
    the self-consistency targets (``fast_train.graph_targets`` replays them from a CUDA graph).

    Returns ``(loss, logs)``: the scalar loss to backpropagate and detached
    tensors ``loss``, ``flow_loss`` and ``consistency_loss`` (NaN when that part
    of the batch is empty).
    """
    config, null_class = check_loss_inputs(model, x1, y, config, generator, shard)
    checks.require(*loss_value_conditions(x1, y, null_class))
    return loss_on_checked_inputs(model, x1, y, config, target_model, generator, shard, targets, null_class)


def loss_on_checked_inputs(
    model, x1, y, config: ShortcutConfig, target_model, generator, shard, targets, null_class: int
):
    """``shortcut_loss`` on checked inputs (``check_loss_inputs``, ``loss_value_conditions``).

    No host read, except the one copy off the device that ``config.ot_pairing`` makes (``techniques.pairing``).
    """
    if config.objective == "meanflow":
        return _meanflow_loss(model, x1, y, config, generator, shard, null_class)
    batch = draw_batch(model, x1, y, config, target_model, generator, shard, targets, null_class)
    with checks.trusted_inputs():
        v = _call(model, batch.x_t, batch.t, batch.d, batch.y, batch.w)
    if config.wavelet_levels:
        err = wavelet_loss(v, batch.target, config.wavelet_levels, config.wavelet_weights)  # (B,)
    else:
        err = (v.float() - batch.target.float()).pow(2).flatten(1).mean(1)  # (B,)
    loss = err.mean()
    logs = {
        "loss": loss.detach(),
        "flow_loss": err[batch.n_boot :].detach().mean(),
        "consistency_loss": err[: batch.n_boot].detach().mean(),
    }
    return loss, logs


def _meanflow_loss(model, x1, y, config: ShortcutConfig, generator, shard, null_class: int):
    """The MeanFlow loss of checked inputs (``meanflow.py``); the logs as ``shortcut_loss``'s.

    ``flow_loss`` and ``consistency_loss`` are the plain mean squared errors of the ``d = 0`` rows and of the
    others, comparable with the other objectives' whatever ``adaptive_power`` weights the loss.
    """
    rank, world = shard
    device, n_global = x1.device, x1.shape[0] * shard[1]
    expand = (-1,) + (1,) * (x1.dim() - 1)
    s, d = meanflow.draw_times(n_global, *config.time_distribution, config.instant_fraction, generator, device)
    s, d = s[rank::world], d[rank::world]
    x0 = torch.randn((n_global, *x1.shape[1:]), generator=generator, device=device, dtype=x1.dtype)[rank::world]
    if config.ot_pairing:
        x0 = ot_pair(x0, x1, y)  # within this rank's rows, and within each class: see techniques.pairing
    with checks.trusted_inputs():
        x_s = (1 - s.view(expand)) * x0 + s.view(expand) * x1
        v = x1 - x0
        y_in = None
        if y is not None:
            dropped = torch.rand(n_global, generator=generator, device=device)[rank::world] < config.class_dropout
            y_in = torch.where(dropped, torch.full_like(y, null_class), y)
            if config.meanflow_cfg_scale is not None:
                v = meanflow.guided_velocity(model, x_s, s, y_in, v, config.meanflow_cfg_scale, null_class, dropped)
        # one process: the JVP on the d > 0 rows only (their count is the draw's); torchrun: one forward
        n_step = meanflow.stepping_rows(n_global, config.instant_fraction) if world == 1 else None
        u, target = meanflow.average_velocity_and_target(model, x_s, s, d, y_in, v, n_step, config.meanflow_derivative)
    err, weighted = meanflow.adaptive_loss(u, target, config.adaptive_power)
    mse = err.detach() / x1[0].numel()
    step = d > 0
    count = step.sum()
    logs = {
        "loss": weighted.detach().mean(),
        "flow_loss": (mse * ~step).sum() / (len(mse) - count),
        "consistency_loss": (mse * step).sum() / count,
    }
    return weighted.mean(), logs
