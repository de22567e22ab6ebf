"""Shortcut models: velocity networks ``v(x_t, t, d, y)`` conditioned on the step size.

``ShortcutDiT`` is a DiT (patch embedding, fixed 2D sin-cos positions, adaLN-Zero
blocks) for images or latents; ``ShortcutMLP`` the same conditioning on plain
vectors. Both add the embedding of the step size ``d`` to the embedding of ``t``
and of the class label: by default a learned table row per trained level
(``step_embedding="table"``); with ``step_embedding="sinusoidal"`` an MLP of the
sinusoid of ``d``, as for ``t``, so that ``d`` can be any real in [0, 1] (the
flow-map family, e.g. the MeanFlow objective, trains and samples such steps).

``ShortcutDiT(..., conditioning="official")`` builds instead the conditioning
of the checkpoints published with the paper (see ``OfficialConditionEmbedder``),
which ``shortcut_fast.official`` converts.

Any ``nn.Module`` called as ``model(x, t, d, y)`` works with the objective, the
sampler and the trainer; these two are the package's own.

Constructors reject settings that would build more than ``MAX_PARAMETERS``
weights (counted before anything is allocated) or more than ``MAX_DEPTH``
blocks; raise these module constants for a larger model.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from . import checks, ops
from .ops.reference import T_SCALE
from .steps import DEFAULT_MIN_STEP, level_index, num_doublings, step_sizes
from .techniques.guidance import GuidanceEmbedder, guidance_parameters

MAX_PARAMETERS = 2**32  # ~4.3e9 weights (17 GB in fp32); the largest preset, DiT-XL/2, has 0.68e9
MAX_DEPTH = 1024  # blocks per model
FREQ_DIM = 256  # sinusoidal features of t
CONDITIONINGS = ("shortcut", "official")  # the ways ShortcutDiT embeds t, d and y
STEP_EMBEDDINGS = ("table", "sinusoidal")  # a row per trained level, or an MLP of sinusoid(d) for any d

#################################################################################
#                        Input validation shared by models                      #
#################################################################################


def _check_parameter_count(count: int, settings: dict) -> None:
    """Refuse, before allocating, a model of more than ``MAX_PARAMETERS`` weights."""
    if count > MAX_PARAMETERS:
        shown = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        raise ValueError(
            f"these settings ({shown}) make a model of {count:.3g} weights, more than "
            f"MAX_PARAMETERS={MAX_PARAMETERS:.3g}; lower the sizes"
        )


def _condition_parameters(
    hidden_size: int, num_levels: int, num_classes: int, guidance_input: bool = False, step_embedding: str = "table"
) -> int:
    """Weights of ``ConditionEmbedder``."""
    h = hidden_size
    mlp = FREQ_DIM * h + h + h * h + h  # the MLP of a sinusoid: t's, and d's when sinusoidal
    return (
        mlp
        + (mlp if step_embedding == "sinusoidal" else num_levels * h)
        + (num_classes + 1 if num_classes > 0 else 0) * h
        + (guidance_parameters(h) if guidance_input else 0)
    )


class ShortcutModule(nn.Module):
    """Base of the package's models: argument checks and the conditioning contract.

    Subclasses implement ``_check_x(x)`` and ``_velocity(x, t, step, y, w)`` where
    ``step`` holds step-size level indices (the step sizes themselves with
    ``continuous_steps``) and ``y`` class indices (the null class,
    ``num_classes``, for unlabelled rows) or ``None``.
    """

    num_classes: int
    min_step: float
    config: dict
    guidance_input: bool = False  # takes the guidance scale w as an input (intrinsic guidance)
    step_embedding: str = "table"  # "table" (trained levels) or "sinusoidal" (any d in [0, 1])
    # the submodules every subclass builds
    cond: ConditionEmbedder | OfficialConditionEmbedder
    blocks: nn.ModuleList
    final_layer: FinalLayer

    @property
    def step_sizes(self) -> list[float]:
        """The step-size levels this model was built for, smallest first (any ``d`` in [0, 1] when
        ``continuous_steps``; the levels are then those the shortcut objective trains)."""
        return step_sizes(self.min_step)

    @property
    def continuous_steps(self) -> bool:
        """Whether ``d`` may be any real in [0, 1] (``step_embedding="sinusoidal"``) rather than a trained level."""
        return self.step_embedding == "sinusoidal"

    def forward(self, x: torch.Tensor, t, d, y: torch.Tensor | None = None, w=None) -> torch.Tensor:
        """Velocity at ``(x, t)`` for a step of size ``d``: a tensor of the shape of ``x``.

        ``t`` in [0, 1] and ``d`` (one of ``step_sizes``; any value in [0, 1] for a model with
        ``continuous_steps``, where ``d = 0`` is the instantaneous velocity) are floats or (B,) tensors;
        ``y`` holds class indices in ``[0, num_classes]`` (``num_classes`` = no label)
        for a class-conditional model; ``None`` means unlabelled. ``w``, a float or (B,)
        tensor of guidance scales >= 0, is the guidance input of a model built with
        ``guidance_input=True`` (``None``: ``w = 1``, no guidance). ``x`` is not scanned
        for NaN/inf: rows are independent, so a non-finite row of ``x`` gives a
        non-finite row of the output and leaves the others as they are.

        Types, shapes, dtypes and devices are always checked (metadata, free).
        The values of ``t``, ``d``, ``y`` and ``w`` are checked too (``check_inputs``,
        one host read), except where the caller validated or built them itself:
        inside ``sample``, ``shortcut_loss`` and the trainer (``checks.trusted_inputs``),
        and while ``torch.compile`` traces or a CUDA graph is captured.
        """
        t, d, y, w = self._inputs(x, t, d, y, w)
        if not checks.values_checked_upstream(x):
            checks.require(*self._value_conditions(t, d, y, w))
        step = d if self.continuous_steps else level_index(d, self.min_step)
        return self._velocity(x, t, step, self._label_rows(y, x), self._guidance_rows(w, x))

    def check_inputs(self, x: torch.Tensor, t, d, y: torch.Tensor | None = None, w=None) -> None:
        """Raise ``TypeError``/``ValueError`` when ``forward(x, t, d, y, w)`` would refuse these inputs.

        Runs every check of ``forward`` (the value checks as one host read), so a
        loop of one's own can validate once and then call the model inside
        ``checks.trusted_inputs()`` without reading values back each step.
        """
        checks.require(*self._value_conditions(*self._inputs(x, t, d, y, w)))

    def _inputs(self, x, t, d, y, w):
        """The metadata checks of ``forward``; ``t``, ``d`` (and ``w``) as float (B,) tensors on the device of ``x``."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        self._check_x(x)
        param = next(self.parameters())
        if x.device != param.device:
            raise ValueError(f"x is on {x.device} but the model is on {param.device}; move one of them")
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(
                f"x has dtype {x.dtype} but the model's weights are {param.dtype}; "
                "cast one of them or run under torch.autocast"
            )
        batch = x.shape[0]
        t = checks.as_batch_vector("t", t, batch, x.device)
        d = checks.as_batch_vector("d", d, batch, x.device)
        w = checks.check_guidance_scales(w, self.guidance_input, batch, x.device)
        return t, d, checks.check_labels(y, self.num_classes, batch, x.device), w

    def _value_conditions(self, t, d, y, w) -> list[checks.Condition]:
        return [
            checks.in_unit_interval("t", t),
            checks.in_unit_interval("d", d) if self.continuous_steps else checks.step_sizes_of(d, self.min_step),
            *checks.labels_in_range(y, self.num_classes),
            *checks.guidance_scales_valid(w),
        ]

    def _guidance_rows(self, w, x) -> torch.Tensor | None:
        """Checked guidance scales; ``w = 1`` (no guidance) for every row when a guided model gets ``None``."""
        if w is None and self.guidance_input:
            return torch.ones(x.shape[0], device=x.device)
        return w

    def _label_rows(self, y, x) -> torch.Tensor | None:
        """Checked labels as int64; the null class for every row when a conditional model gets ``None``."""
        if y is None:
            return (
                None
                if self.num_classes == 0
                else torch.full((x.shape[0],), self.num_classes, dtype=torch.long, device=x.device)
            )
        return y.long()

    def _init_adaln_zero(self) -> None:
        """Xavier linears with zero bias, small embeddings, zero modulations and output.

        Every block then starts as the identity and the network outputs zero.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.cond.initialize()
        for block in self.blocks:
            _zero_(block.adaLN_modulation[-1])  # type: ignore[index,arg-type]  # a DiTBlock or MLPBlock
        _zero_(self.final_layer.adaLN_modulation[-1])  # type: ignore[arg-type]  # an nn.Linear
        _zero_(self.final_layer.linear)

    def _check_x(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _velocity(self, x, t, step, y, w) -> torch.Tensor:
        raise NotImplementedError


def _check_step_embedding(step_embedding) -> None:
    if step_embedding not in STEP_EMBEDDINGS:
        raise ValueError(
            f"step_embedding must be one of {list(STEP_EMBEDDINGS)} (a table row per trained level, or an MLP of "
            f"the sinusoid of any d in [0, 1]), got {step_embedding!r}"
        )


#################################################################################
#                 Conditioning: embeddings of t, the step size and the label    #
#################################################################################


def _sinusoid_mlp(freq_dim: int, hidden_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))


class ConditionEmbedder(nn.Module):
    """``c = MLP(sinusoid(t)) + table_d[level] + table_y[y] (+ MLP_w(sinusoid(w)))``: (B,) inputs -> (B, hidden).

    With ``step_embedding="sinusoidal"`` the table row becomes ``MLP_d(sinusoid(d))``
    (``d_mlp``), ``forward`` takes the step sizes themselves instead of level
    indices, and both sinusoids take ``t`` and ``d`` unstretched (not DiT's ``1000 t``),
    so that the network's derivatives in them are of order one.
    """

    d_table: nn.Embedding | None
    d_mlp: nn.Sequential | None

    def __init__(
        self,
        hidden_size: int,
        num_levels: int,
        num_classes: int,
        freq_dim: int = FREQ_DIM,
        guidance_input: bool = False,
        step_embedding: str = "table",
    ):
        super().__init__()
        # intrinsic guidance (techniques.guidance): the embedding of w, zero at initialisation
        self.w_embed = GuidanceEmbedder(hidden_size) if guidance_input else None
        self.freq_dim = freq_dim
        self.t_mlp = _sinusoid_mlp(freq_dim, hidden_size)
        continuous = step_embedding == "sinusoidal"
        self.d_table = None if continuous else nn.Embedding(num_levels, hidden_size)
        self.d_mlp = _sinusoid_mlp(freq_dim, hidden_size) if continuous else None
        # one extra row: the null class used by class dropout and guidance
        self.y_table = nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None

    def forward(
        self, t: torch.Tensor, step: torch.Tensor, y: torch.Tensor | None, w: torch.Tensor | None = None
    ) -> torch.Tensor:
        dtype: torch.dtype = self.t_mlp[0].weight.dtype  # type: ignore[assignment]  # an nn.Linear's weight
        if self.d_mlp is not None:
            # t and d unstretched (the shared sinusoid stretches by T_SCALE, DiT's 1000 t), as MeanFlow's official
            # code embeds them: the derivatives in t and d that its target takes stay of order one instead of
            # 1000. One call for both: the op costs more per call than per row
            both = torch.cat([t, step.to(t.dtype)]) / T_SCALE
            features = ops.timestep_features(both, self.freq_dim).to(dtype)
            c = self.t_mlp(features[: t.shape[0]]) + self.d_mlp(features[t.shape[0] :])
        else:
            c = self.t_mlp(ops.timestep_features(t, self.freq_dim).to(dtype))
        if self.w_embed is not None:
            c = c + self.w_embed(w)
        if self.d_table is None:
            return c if self.y_table is None or y is None else c + self.y_table(y)
        y_table = None if self.y_table is None else self.y_table.weight
        return ops.condition_sum(c, step, self.d_table.weight, y, y_table)

    def initialize(self) -> None:
        """Small normal rows for the tables and the weights of the MLPs (std 0.02, as in DiT)."""
        for mlp in (self.t_mlp, self.d_mlp):
            if mlp is not None:
                nn.init.normal_(mlp[0].weight, std=0.02)  # type: ignore[arg-type]  # nn.Linear
                nn.init.normal_(mlp[2].weight, std=0.02)  # type: ignore[arg-type]
        if self.d_table is not None:
            nn.init.normal_(self.d_table.weight, std=0.02)
        if self.y_table is not None:
            nn.init.normal_(self.y_table.weight, std=0.02)
        if self.w_embed is not None:
            self.w_embed.initialize()


class OfficialConditionEmbedder(nn.Module):
    """``c = MLP_t(sinusoid(t)) + MLP_d(sinusoid(log2(1/d))) + table_y[y]``, as in the published checkpoints.

    Both sinusoids take their input unscaled: ``t`` in [0, 1] and the step level
    ``log2(1/d)``, an integer from 0 (``d = 1``) to ``K`` (``d = d_min``). The label
    table always exists (``num_classes + 1`` rows, the last one the null class).
    """

    def __init__(self, hidden_size: int, num_levels: int, num_classes: int, freq_dim: int = FREQ_DIM):
        super().__init__()
        self.freq_dim, self.max_level = freq_dim, num_levels - 1
        self.t_mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.dt_mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.y_table = nn.Embedding(num_classes + 1, hidden_size)

    def _embed(self, mlp: nn.Sequential, value: torch.Tensor) -> torch.Tensor:
        # the shared sinusoid stretches its input by T_SCALE; these embedders see it unstretched
        return mlp(ops.timestep_features(value / T_SCALE, self.freq_dim).to(mlp[0].weight.dtype))  # type: ignore[arg-type]

    def forward(self, t: torch.Tensor, level: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dt_base = (self.max_level - level).float()  # level 0 is d_min, so log2(1/d) = K - level
        return self._embed(self.t_mlp, t) + self._embed(self.dt_mlp, dt_base) + self.y_table(y)

    def initialize(self) -> None:
        """Normal rows (std 0.02) for both MLPs' weights and the label table."""
        for mlp in (self.t_mlp, self.dt_mlp):
            nn.init.normal_(mlp[0].weight, std=0.02)  # type: ignore[arg-type]  # nn.Linear
            nn.init.normal_(mlp[2].weight, std=0.02)  # type: ignore[arg-type]
        nn.init.normal_(self.y_table.weight, std=0.02)


def _zero_(module: nn.Linear) -> None:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)


#################################################################################
#                                 DiT blocks                                    #
#################################################################################


class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C).

    ``q_scale`` multiplies the queries before the usual ``1/sqrt(head_dim)``
    scaling (the official conditioning's attention scales by ``1/head_dim``).
    """

    def __init__(self, hidden_size: int, num_heads: int, q_scale: float = 1.0):
        super().__init__()
        self.num_heads, self.q_scale = num_heads, q_scale
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q = qkv[0] if self.q_scale == 1.0 else qkv[0] * self.q_scale
        out = ops.attention(q, qkv[1], qkv[2])  # (B, nh, N, hs)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__(
            nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"), nn.Linear(mlp_hidden, hidden_size)
        )


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (gated residuals)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, q_scale: float = 1.0):
        super().__init__()
        self.attn = Attention(hidden_size, num_heads, q_scale)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = ops.gated_residual(x, gate_a, self.attn(ops.modulate_layernorm(x, shift_a, scale_a)))  # (B, N, C)
        return ops.gated_residual(x, gate_m, self.mlp(ops.modulate_layernorm(x, shift_m, scale_m)))


class FinalLayer(nn.Module):
    """Modulated LayerNorm and a linear map to the output (zero-initialised)."""

    def __init__(self, hidden_size: int, out_features: int):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))
        self.linear = nn.Linear(hidden_size, out_features)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(ops.modulate_layernorm(x, shift, scale))


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> np.ndarray:
    """Fixed 2D sin-cos position embedding: (grid_size**2, embed_dim), row-major tokens."""
    if embed_dim % 4:
        raise ValueError(f"hidden_size must be a multiple of 4 for 2D sin-cos positions, got {embed_dim}")
    omega = 1.0 / 10000 ** (np.arange(embed_dim // 4, dtype=np.float64) / (embed_dim / 4.0))
    coords = np.arange(grid_size, dtype=np.float64)
    gy, gx = np.meshgrid(coords, coords, indexing="ij")

    def embed_1d(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    # the first half of the channels encodes the column, the second the row (the DiT/MAE layout)
    return np.concatenate([embed_1d(gx), embed_1d(gy)], axis=1).astype(np.float32)


#################################################################################
#                                 ShortcutDiT                                   #
#################################################################################


class ShortcutDiT(ShortcutModule):
    """A DiT velocity network conditioned on ``t``, the step size ``d`` and a class label.

    Input and output are images or latents (B, in_channels, input_size, input_size).
    ``num_classes=0`` makes it unconditional; ``min_step`` sets the smallest step
    size (``2**-K``), hence the ``K + 1`` rows of the step-size table.
    ``step_embedding="sinusoidal"`` embeds any step size in [0, 1] instead (see the module doc).

    ``conditioning="official"`` reproduces the model of the published checkpoints
    (``shortcut_fast.official`` converts them): ``OfficialConditionEmbedder`` and
    attention scaled by ``1/head_dim``. It needs ``num_classes >= 1`` (an
    unconditional official model has one class and is always fed the null class).
    """

    pos_embed: torch.Tensor  # a buffer (register_buffer)

    def __init__(
        self,
        input_size: int = 32,
        in_channels: int = 4,
        patch_size: int = 2,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        min_step: float = DEFAULT_MIN_STEP,
        conditioning: str = "shortcut",
        guidance_input: bool = False,
        step_embedding: str = "table",
    ):
        super().__init__()
        if conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {list(CONDITIONINGS)}, got {conditioning!r}")
        _check_step_embedding(step_embedding)
        if conditioning == "official" and step_embedding != "table":
            raise ValueError(
                "conditioning='official' embeds log2(1/d) of the trained levels; "
                f"step_embedding={step_embedding!r} needs conditioning='shortcut'"
            )
        if conditioning == "official" and (isinstance(num_classes, int) and num_classes == 0):
            raise ValueError(
                "conditioning='official' always has a label table: use num_classes=1 for an "
                "unconditional model (it is fed the null class), got num_classes=0"
            )
        checks.check_sizes(
            MAX_DEPTH,
            input_size=input_size,
            in_channels=in_channels,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            num_classes=num_classes,
        )
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be a multiple of patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}")
        mlp_hidden = checks.check_mlp_ratio(mlp_ratio, hidden_size)
        checks.check_guidance_input(guidance_input, num_classes, conditioning)
        num_levels = num_doublings(min_step) + 1
        h, out = hidden_size, patch_size * patch_size * in_channels
        per_block = (4 * h * h + 4 * h) + (2 * h * mlp_hidden + mlp_hidden + h) + (6 * h * h + 6 * h)  # attn/mlp/adaLN
        if conditioning == "official":  # a second t-MLP (for log2(1/d)) instead of the step-size table
            cond_count = _condition_parameters(h, 0, num_classes) + FREQ_DIM * h + h * h + 2 * h
        else:
            cond_count = _condition_parameters(h, num_levels, num_classes, guidance_input, step_embedding)
        count = (
            cond_count
            + depth * per_block
            + (2 * h * h + 2 * h + h * out + out)  # final layer
            + (out * h + h)
            + (input_size // patch_size) ** 2 * h
        )  # patch embedding, fixed positions
        _check_parameter_count(
            count,
            dict(
                input_size=input_size,
                in_channels=in_channels,
                patch_size=patch_size,
                hidden_size=hidden_size,
                depth=depth,
                mlp_ratio=mlp_ratio,
                num_classes=num_classes,
            ),
        )
        self.config = dict(
            input_size=input_size,
            in_channels=in_channels,
            patch_size=patch_size,
            hidden_size=hidden_size,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            num_classes=num_classes,
            min_step=min_step,
        )
        if conditioning != "shortcut":  # only then, so configs saved before the option stay as they were
            self.config["conditioning"] = conditioning
        if guidance_input:  # likewise
            self.config["guidance_input"] = True
        if step_embedding != "table":  # likewise
            self.config["step_embedding"] = step_embedding
        self.conditioning, self.guidance_input, self.step_embedding = conditioning, guidance_input, step_embedding
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.min_step = num_classes, min_step
        self.grid = input_size // patch_size

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        # fixed, so not saved: initialize_weights and every load_state_dict fill it (see _fill_pos_embed)
        self.register_buffer("pos_embed", torch.empty(1, self.grid**2, hidden_size), persistent=False)
        self.register_load_state_dict_post_hook(ShortcutDiT._fill_pos_embed)
        if conditioning == "official":
            self.cond = OfficialConditionEmbedder(hidden_size, num_levels, num_classes)
        else:
            self.cond = ConditionEmbedder(
                hidden_size, num_levels, num_classes, guidance_input=guidance_input, step_embedding=step_embedding
            )
        q_scale = (hidden_size // num_heads) ** -0.5 if conditioning == "official" else 1.0
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio, q_scale) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size * patch_size * in_channels)
        self.initialize_weights()

    @classmethod
    def preset(cls, name: str, **kwargs) -> ShortcutDiT:
        """A model of the DiT paper's sizes: ``"DiT-S/2"``, ..., ``"DiT-XL/8"`` (see ``DIT_PRESETS``)."""
        if not isinstance(name, str) or name not in DIT_PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(DIT_PRESETS)}")
        clash = set(kwargs) & set(DIT_PRESETS[name])
        if clash:
            raise ValueError(f"preset {name!r} fixes {sorted(clash)}; pass only other settings")
        return cls(**DIT_PRESETS[name], **kwargs)

    def initialize_weights(self) -> None:
        """DiT initialisation: adaLN-Zero, so that every block starts as the identity; the fixed positions.

        A model built on the meta device and materialised with ``to_empty``
        (as for FSDP) is complete after this call or after ``load_state_dict``.
        """
        self._fill_pos_embed()
        self._init_adaln_zero()
        # patch embedding: like a linear layer over the flattened patch
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        assert self.x_embedder.bias is not None  # the Conv2d is built with a bias
        nn.init.zeros_(self.x_embedder.bias)

    @torch.no_grad()
    def _fill_pos_embed(self, _incompatible_keys=None) -> None:
        """Compute the sin-cos positions into the ``pos_embed`` buffer, on whatever device it lives."""
        self.pos_embed.copy_(torch.from_numpy(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid))[None])

    def _check_x(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W) image."""
        p, g, c = self.patch_size, self.grid, self.in_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def _velocity(self, x, t, step, y, w):
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        # w is None unless guidance_input, which the official conditioning refuses at construction
        c = self.cond(t, step, y) if w is None else self.cond(t, step, y, w)  # (B, C)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))  # (B, C_in, H, W)


DIT_PRESETS: dict[str, dict] = {
    f"DiT-{size}/{p}": dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=p)
    for size, (depth, hidden, heads) in {
        "S": (12, 384, 6),
        "B": (12, 768, 12),
        "L": (24, 1024, 16),
        "XL": (28, 1152, 16),
    }.items()
    for p in (2, 4, 8)
}


#################################################################################
#                                 ShortcutMLP                                   #
#################################################################################


class MLPBlock(nn.Module):
    """Residual MLP block with adaLN-Zero conditioning."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.mlp = Mlp(hidden_size, 4 * hidden_size)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 3 * hidden_size))

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=-1)
        return ops.gated_residual(h, gate, self.mlp(ops.modulate_layernorm(h, shift, scale)))


class ShortcutMLP(ShortcutModule):
    """A residual MLP velocity network on vectors (B, dim): 2D toys, tabular data, policies."""

    def __init__(
        self,
        dim: int = 2,
        hidden_size: int = 256,
        depth: int = 4,
        num_classes: int = 0,
        min_step: float = DEFAULT_MIN_STEP,
        guidance_input: bool = False,
        step_embedding: str = "table",
    ):
        super().__init__()
        checks.check_sizes(MAX_DEPTH, dim=dim, hidden_size=hidden_size, depth=depth, num_classes=num_classes)
        checks.check_guidance_input(guidance_input, num_classes)
        _check_step_embedding(step_embedding)
        h = hidden_size
        count = (
            _condition_parameters(h, num_doublings(min_step) + 1, num_classes, guidance_input, step_embedding)
            + (dim * h + h)  # input
            + depth * ((8 * h * h + 5 * h) + (3 * h * h + 3 * h))  # blocks: mlp, adaLN
            + (2 * h * h + 2 * h + h * dim + dim)
        )  # final layer
        _check_parameter_count(count, dict(dim=dim, hidden_size=hidden_size, depth=depth, num_classes=num_classes))
        self.config = dict(dim=dim, hidden_size=hidden_size, depth=depth, num_classes=num_classes, min_step=min_step)
        if guidance_input:  # only when set, so that the saved configs of other models stay as they were
            self.config["guidance_input"] = True
        if step_embedding != "table":  # likewise
            self.config["step_embedding"] = step_embedding
        self.guidance_input, self.step_embedding = guidance_input, step_embedding
        self.dim, self.num_classes, self.min_step = dim, num_classes, min_step
        self.inp = nn.Linear(dim, hidden_size)
        self.cond = ConditionEmbedder(
            hidden_size,
            num_doublings(min_step) + 1,
            num_classes,
            guidance_input=guidance_input,
            step_embedding=step_embedding,
        )
        self.blocks = nn.ModuleList([MLPBlock(hidden_size) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """adaLN-Zero initialisation: the network starts as the zero velocity."""
        self._init_adaln_zero()

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")

    def _velocity(self, x, t, step, y, w):
        c = self.cond(t, step, y, w)  # (B, C)
        h = self.inp(x)  # (B, C)
        for block in self.blocks:
            h = block(h, c)
        return self.final_layer(h, c)  # (B, dim)


MODEL_CLASSES: dict[str, type[ShortcutModule]] = {"ShortcutDiT": ShortcutDiT, "ShortcutMLP": ShortcutMLP}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else the model itself."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model
