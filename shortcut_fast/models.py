"""Shortcut models: velocity networks ``v(x_t, t, d, y)`` conditioned on the step size.

``ShortcutDiT`` is a DiT (patch embedding, fixed 2D sin-cos positions, adaLN-Zero
blocks) for images or latents; ``ShortcutMLP`` the same conditioning on plain
vectors. Both add the embedding of the step size ``d`` (a learned table row per
level) to the embedding of ``t`` and of the class label.

Any ``nn.Module`` called as ``model(x, t, d, y)`` works with the objective, the
sampler and the trainer; these two are the package's own.

Constructors reject settings that would build more than ``MAX_PARAMETERS``
weights (counted before anything is allocated) or more than ``MAX_DEPTH``
blocks; raise these module constants for a larger model.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from . import ops
from .steps import DEFAULT_MIN_STEP, level_index, num_doublings, step_sizes
from .techniques.guidance import GuidanceEmbedder, guidance_parameters

MAX_PARAMETERS = 2**32  # ~4.3e9 weights (17 GB in fp32); the largest preset, DiT-XL/2, has 0.68e9
MAX_DEPTH = 1024  # blocks per model
FREQ_DIM = 256  # sinusoidal features of t
LABEL_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64)  # what class labels may be

#################################################################################
#                        Input validation shared by models                      #
#################################################################################

def _as_batch_vector(name: str, value, batch: int, device: torch.device) -> torch.Tensor:
    """A number, 0-d or (B,) tensor -> a float32 (B,) tensor on ``device``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
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


def _check_sizes(**sizes) -> None:
    """Every size a positive int; ``num_classes`` an int >= 0 (0 = unconditional); ``depth <= MAX_DEPTH``."""
    for name, value in sizes.items():
        low = 0 if name == "num_classes" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}{' (0 = unconditional)' if low == 0 else ''}, "
                             f"got {value!r}")
    if sizes.get("depth", 0) > MAX_DEPTH:
        raise ValueError(f"depth must be at most MAX_DEPTH={MAX_DEPTH}, got {sizes['depth']}")


def _check_mlp_ratio(mlp_ratio, hidden_size: int) -> int:
    """The width of the blocks' MLPs, ``int(hidden_size * mlp_ratio)``, which must be >= 1."""
    if isinstance(mlp_ratio, bool) or not isinstance(mlp_ratio, (int, float)):
        raise TypeError(f"mlp_ratio must be a positive number (e.g. 4.0), got {type(mlp_ratio).__name__}")
    if not (math.isfinite(hidden_size * mlp_ratio) and hidden_size * mlp_ratio >= 1):
        raise ValueError(f"mlp_ratio must be a finite number with hidden_size * mlp_ratio >= 1, got {mlp_ratio}")
    return int(hidden_size * mlp_ratio)


def _check_guidance_input(guidance_input, num_classes: int) -> None:
    """``guidance_input`` (intrinsic guidance) is a bool and needs a class-conditional model."""
    if not isinstance(guidance_input, bool):
        raise TypeError(f"guidance_input must be a bool, got {guidance_input!r}")
    if guidance_input and num_classes == 0:
        raise ValueError("guidance_input=True needs a class-conditional model (num_classes > 0): "
                         "guidance steers towards a label")


def _check_parameter_count(count: int, settings: dict) -> None:
    """Refuse, before allocating, a model of more than ``MAX_PARAMETERS`` weights."""
    if count > MAX_PARAMETERS:
        shown = ", ".join(f"{k}={v!r}" for k, v in settings.items())
        raise ValueError(f"these settings ({shown}) make a model of {count:.3g} weights, more than "
                         f"MAX_PARAMETERS={MAX_PARAMETERS:.3g}; lower the sizes")


def _condition_parameters(hidden_size: int, num_levels: int, num_classes: int, guidance_input: bool = False) -> int:
    """Weights of ``ConditionEmbedder``."""
    h = hidden_size
    return (FREQ_DIM * h + h + h * h + h + num_levels * h + (num_classes + 1 if num_classes > 0 else 0) * h
            + (guidance_parameters(h) if guidance_input else 0))


class ShortcutModule(nn.Module):
    """Base of the package's models: argument checks and the conditioning contract.

    Subclasses implement ``_check_x(x)`` and ``_velocity(x, t, level, y, w)`` where
    ``level`` holds step-size level indices and ``y`` class indices (the null
    class, ``num_classes``, for unlabelled rows) or ``None``.
    """

    num_classes: int
    min_step: float
    config: dict
    guidance_input: bool = False  # takes the guidance scale w as an input (intrinsic guidance)

    @property
    def step_sizes(self) -> list[float]:
        """The step sizes this model was built for, smallest first."""
        return step_sizes(self.min_step)

    def forward(self, x: torch.Tensor, t, d, y: torch.Tensor | None = None, w=None) -> torch.Tensor:
        """Velocity at ``(x, t)`` for a step of size ``d``: a tensor of the shape of ``x``.

        ``t`` in [0, 1] and ``d`` (one of ``step_sizes``) are floats or (B,) tensors;
        ``y`` holds class indices in ``[0, num_classes]`` (``num_classes`` = no label)
        for a class-conditional model; ``None`` means unlabelled. ``w``, a float or (B,)
        tensor of guidance scales, is the guidance input of a model built with
        ``guidance_input=True`` (``None``: ``w = 1``, no guidance). ``x`` is not scanned
        for NaN/inf: rows are independent, so a non-finite row of ``x`` gives a
        non-finite row of the output and leaves the others as they are.

        The checks of the values of ``t``, ``d`` and ``y`` read them back to the
        host; they are skipped while ``torch.compile`` traces the model and while a
        CUDA graph is captured, where a read-back is not allowed.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        self._check_x(x)
        param = next(self.parameters())
        if x.device != param.device:
            raise ValueError(f"x is on {x.device} but the model is on {param.device}; move one of them")
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype} but the model's weights are {param.dtype}; "
                            "cast one of them or run under torch.autocast")
        batch = x.shape[0]
        t = _as_batch_vector("t", t, batch, x.device)
        d = _as_batch_vector("d", d, batch, x.device)
        check_values = not (torch.compiler.is_compiling() or (x.is_cuda and torch.cuda.is_current_stream_capturing()))
        if check_values and not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError(f"t must lie in [0, 1]; got values from {t.min().item()} to {t.max().item()}")
        level = level_index(d, self.min_step, check=check_values)
        return self._velocity(x, t, level, self._check_labels(y, batch, x.device, check_values),
                              self._check_guidance(w, batch, x.device, check_values))

    def _check_guidance(self, w, batch: int, device: torch.device, check_values: bool) -> torch.Tensor | None:
        if not self.guidance_input:
            if w is not None:
                raise ValueError("this model has no guidance input (guidance_input=False) but w was given; "
                                 "pass w=None, or guide with two forwards (sample(..., cfg_scale=...))")
            return None
        if w is None:
            return torch.ones(batch, device=device)
        w = _as_batch_vector("w", w, batch, device)
        if check_values and not bool(torch.isfinite(w).all() & (w >= 0).all()):
            raise ValueError(f"guidance scales w must be finite and >= 0; got values from {w.min().item()} "
                             f"to {w.max().item()}")
        return w

    def _check_labels(self, y, batch: int, device: torch.device, check_values: bool) -> torch.Tensor | None:
        if y is None:
            if self.num_classes == 0:
                return None
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        if self.num_classes == 0:
            raise ValueError("this model is unconditional (num_classes=0) but labels y were given; pass y=None")
        if not isinstance(y, torch.Tensor) or y.dtype not in LABEL_DTYPES:
            got = getattr(y, "dtype", type(y).__name__)
            raise TypeError(f"y must be an integer tensor of class indices (int8/16/32/64), got {got}")
        if y.shape != (batch,):
            raise ValueError(f"y must have shape ({batch},) to match the batch of x, got {tuple(y.shape)}")
        if y.device != device:
            raise ValueError(f"y is on {y.device} but x is on {device}; put them on one device")
        if check_values and batch and not bool(((y >= 0) & (y <= self.num_classes)).all()):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes} for 'no label'); "
                f"got values from {y.min().item()} to {y.max().item()}"
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
            _zero_(block.adaLN_modulation[-1])
        _zero_(self.final_layer.adaLN_modulation[-1])
        _zero_(self.final_layer.linear)

    def _check_x(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def _velocity(self, x, t, level, y, w) -> torch.Tensor:
        raise NotImplementedError


#################################################################################
#                 Conditioning: embeddings of t, the step size and the label    #
#################################################################################

class ConditionEmbedder(nn.Module):
    """``c = MLP(sinusoid(t)) + table_d[level] + table_y[y] (+ MLP_w(sinusoid(w)))``: (B,) inputs -> (B, hidden)."""

    def __init__(self, hidden_size: int, num_levels: int, num_classes: int, freq_dim: int = FREQ_DIM,
                 guidance_input: bool = False):
        super().__init__()
        # intrinsic guidance (techniques.guidance): the embedding of w, zero at initialisation
        self.w_embed = GuidanceEmbedder(hidden_size) if guidance_input else None
        self.freq_dim = freq_dim
        self.t_mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.d_table = nn.Embedding(num_levels, hidden_size)
        # one extra row: the null class used by class dropout and guidance
        self.y_table = nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None

    def forward(self, t: torch.Tensor, level: torch.Tensor, y: torch.Tensor | None,
                w: torch.Tensor | None = None) -> torch.Tensor:
        c = self.t_mlp(ops.timestep_features(t, self.freq_dim).to(self.t_mlp[0].weight.dtype))
        if self.w_embed is not None:
            c = c + self.w_embed(w)
        y_table = None if self.y_table is None else self.y_table.weight
        return ops.condition_sum(c, level, self.d_table.weight, y, y_table)

    def initialize(self) -> None:
        """Small normal rows for the tables and the t MLP (std 0.02, as in DiT)."""
        nn.init.normal_(self.t_mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_mlp[2].weight, std=0.02)
        nn.init.normal_(self.d_table.weight, std=0.02)
        if self.y_table is not None:
            nn.init.normal_(self.y_table.weight, std=0.02)
        if self.w_embed is not None:
            self.w_embed.initialize()


def _zero_(module: nn.Linear) -> None:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)


#################################################################################
#                                 DiT blocks                                    #
#################################################################################

class Attention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C)."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = ops.attention(qkv[0], qkv[1], qkv[2])  # (B, nh, N, hs)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear."""

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__(nn.Linear(hidden_size, mlp_hidden), nn.GELU(approximate="tanh"),
                         nn.Linear(mlp_hidden, hidden_size))


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (gated residuals)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = Attention(hidden_size, num_heads)
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
    """

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
        guidance_input: bool = False,
    ):
        super().__init__()
        _check_sizes(input_size=input_size, in_channels=in_channels, patch_size=patch_size, hidden_size=hidden_size,
                     depth=depth, num_heads=num_heads, num_classes=num_classes)
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be a multiple of patch_size {patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}")
        mlp_hidden = _check_mlp_ratio(mlp_ratio, hidden_size)
        _check_guidance_input(guidance_input, num_classes)
        num_levels = num_doublings(min_step) + 1
        h, out = hidden_size, patch_size * patch_size * in_channels
        per_block = (4 * h * h + 4 * h) + (2 * h * mlp_hidden + mlp_hidden + h) + (6 * h * h + 6 * h)  # attn/mlp/adaLN
        count = (_condition_parameters(h, num_levels, num_classes, guidance_input) + depth * per_block
                 + (2 * h * h + 2 * h + h * out + out)  # final layer
                 + (out * h + h) + (input_size // patch_size) ** 2 * h)  # patch embedding, fixed positions
        _check_parameter_count(count, dict(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                                           hidden_size=hidden_size, depth=depth, mlp_ratio=mlp_ratio,
                                           num_classes=num_classes))
        self.config = dict(input_size=input_size, in_channels=in_channels, patch_size=patch_size,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           num_classes=num_classes, min_step=min_step)
        if guidance_input:  # only when set, so that the saved configs of other models stay as they were
            self.config["guidance_input"] = True
        self.guidance_input = guidance_input
        self.input_size, self.in_channels, self.patch_size = input_size, in_channels, patch_size
        self.num_classes, self.min_step = num_classes, min_step
        self.grid = input_size // patch_size

        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", torch.from_numpy(sincos_pos_embed_2d(hidden_size, self.grid))[None],
                             persistent=False)
        self.cond = ConditionEmbedder(hidden_size, num_levels, num_classes, guidance_input=guidance_input)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
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
        """DiT initialisation: adaLN-Zero, so that every block starts as the identity."""
        self._init_adaln_zero()
        # patch embedding: like a linear layer over the flattened patch
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)

    def _check_x(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, p*p*C) tokens -> (B, C, H, W) image."""
        p, g, c = self.patch_size, self.grid, self.in_channels
        x = x.reshape(x.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(x.shape[0], c, g * p, g * p)

    def _velocity(self, x, t, level, y, w):
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed  # (B, N, C)
        c = self.cond(t, level, y, w)  # (B, C)
        for block in self.blocks:
            h = block(h, c)
        return self.unpatchify(self.final_layer(h, c))  # (B, C_in, H, W)


DIT_PRESETS: dict[str, dict] = {
    f"DiT-{size}/{p}": dict(depth=depth, hidden_size=hidden, num_heads=heads, patch_size=p)
    for size, (depth, hidden, heads) in {"S": (12, 384, 6), "B": (12, 768, 12),
                                        "L": (24, 1024, 16), "XL": (28, 1152, 16)}.items()
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

    def __init__(self, dim: int = 2, hidden_size: int = 256, depth: int = 4, num_classes: int = 0,
                 min_step: float = DEFAULT_MIN_STEP, guidance_input: bool = False):
        super().__init__()
        _check_sizes(dim=dim, hidden_size=hidden_size, depth=depth, num_classes=num_classes)
        _check_guidance_input(guidance_input, num_classes)
        h = hidden_size
        count = (_condition_parameters(h, num_doublings(min_step) + 1, num_classes, guidance_input)
                 + (dim * h + h)  # input
                 + depth * ((8 * h * h + 5 * h) + (3 * h * h + 3 * h))  # blocks: mlp, adaLN
                 + (2 * h * h + 2 * h + h * dim + dim))  # final layer
        _check_parameter_count(count, dict(dim=dim, hidden_size=hidden_size, depth=depth, num_classes=num_classes))
        self.config = dict(dim=dim, hidden_size=hidden_size, depth=depth, num_classes=num_classes, min_step=min_step)
        if guidance_input:  # only when set, so that the saved configs of other models stay as they were
            self.config["guidance_input"] = True
        self.guidance_input = guidance_input
        self.dim, self.num_classes, self.min_step = dim, num_classes, min_step
        self.inp = nn.Linear(dim, hidden_size)
        self.cond = ConditionEmbedder(hidden_size, num_doublings(min_step) + 1, num_classes,
                                      guidance_input=guidance_input)
        self.blocks = nn.ModuleList([MLPBlock(hidden_size) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, dim)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """adaLN-Zero initialisation: the network starts as the zero velocity."""
        self._init_adaln_zero()

    def _check_x(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")

    def _velocity(self, x, t, level, y, w):
        c = self.cond(t, level, y, w)  # (B, C)
        h = self.inp(x)  # (B, C)
        for block in self.blocks:
            h = block(h, c)
        return self.final_layer(h, c)  # (B, dim)


MODEL_CLASSES: dict[str, type[ShortcutModule]] = {"ShortcutDiT": ShortcutDiT, "ShortcutMLP": ShortcutMLP}


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_velocity(v, shape) -> torch.Tensor:
    """A model's output, which the contract makes a float tensor of the input's shape."""
    if not isinstance(v, torch.Tensor) or not v.is_floating_point() or tuple(v.shape) != tuple(shape):
        got = f"a {v.dtype} tensor of shape {tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"the model returned {got}; expected a float tensor of shape {tuple(shape)}")
    return v


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else the model itself."""
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return model.module
    return model
