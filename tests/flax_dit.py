"""Test fixture: the paper's JAX/Flax DiT, rebuilt from its description, and its checkpoint format.

Only for the parity tests of ``shortcut_fast.official`` (needs jax and flax).
The module names and their creation order give the parameter tree the same
paths as the published checkpoints (``DiTBlock_3/Dense_2/kernel``, ...). The
published model's conventions that matter for parity: t and the step level
``log2(1/d)`` enter unscaled through sinusoids ``[cos, sin]``; c = t + d + label
embeddings; attention logits are scaled by ``1/head_dim``; LayerNorms have no
affine (eps 1e-6); GELU is the tanh form; images are NHWC and each output patch
is laid out (p, q, C).
"""

from __future__ import annotations

import math
import pickle
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def sinusoid(x, dim: int = 256, max_period: float = 10000.0):
    """(B,) -> (B, dim) features ``[cos(x f), sin(x f)]``, x taken as it is."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = x.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def positions(hidden: int, grid: int) -> np.ndarray:
    """(1, grid**2, hidden) fixed positions: column code then row code, each ``[sin, cos]``."""
    quarter = hidden // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float32) / quarter)
    rows, cols = np.divmod(np.arange(grid * grid, dtype=np.float32), grid)

    def code(pos):
        angle = pos[:, None] * omega[None]
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)

    return np.concatenate([code(cols), code(rows)], axis=1)[None]


def modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class TimestepEmbedder(nn.Module):
    hidden: int

    @nn.compact
    def __call__(self, x):
        h = nn.silu(nn.Dense(self.hidden)(sinusoid(x)))  # flax names layers in creation order: keep it
        return nn.Dense(self.hidden)(h)


class LabelEmbedder(nn.Module):
    num_classes: int
    hidden: int

    @nn.compact
    def __call__(self, y):
        return nn.Embed(self.num_classes + 1, self.hidden)(y)


class PatchEmbed(nn.Module):
    patch: int
    hidden: int

    @nn.compact
    def __call__(self, x):
        p = (self.patch, self.patch)
        h = nn.Conv(self.hidden, p, strides=p, padding="VALID")(x)
        return h.reshape(h.shape[0], -1, self.hidden)


class MlpBlock(nn.Module):
    width: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.width)(x))
        return nn.Dense(x.shape[-1])(h)


class DiTBlock(nn.Module):
    hidden: int
    heads: int
    mlp_ratio: float

    @nn.compact
    def __call__(self, x, c):
        mods = jnp.split(nn.Dense(6 * self.hidden)(nn.silu(c)), 6, axis=-1)
        xn = modulate(nn.LayerNorm(use_bias=False, use_scale=False)(x), mods[0], mods[1])
        b, n, _ = x.shape
        k, q, v = (nn.Dense(self.hidden)(xn).reshape(b, n, self.heads, -1) for _ in range(3))
        logits = jnp.einsum("bqhc,bkhc->bhqk", q / q.shape[-1], k)
        attn = jnp.einsum("bhqk,bkhc->bqhc", nn.softmax(logits, axis=-1), v).reshape(x.shape)
        x = x + mods[2][:, None] * nn.Dense(self.hidden)(attn)
        xn = modulate(nn.LayerNorm(use_bias=False, use_scale=False)(x), mods[3], mods[4])
        return x + mods[5][:, None] * MlpBlock(int(self.hidden * self.mlp_ratio))(xn)


class FinalLayer(nn.Module):
    patch: int
    channels: int
    hidden: int

    @nn.compact
    def __call__(self, x, c):
        shift, scale = jnp.split(nn.Dense(2 * self.hidden)(nn.silu(c)), 2, axis=-1)
        x = modulate(nn.LayerNorm(use_bias=False, use_scale=False)(x), shift, scale)
        return nn.Dense(self.patch * self.patch * self.channels)(x)


class DiT(nn.Module):
    """``v(x, t, dt_base, y)`` on NHWC images; ``dt_base = log2(1/d)``; ``y = num_classes`` is the null class."""

    patch: int
    hidden: int
    depth: int
    heads: int
    mlp_ratio: float
    channels: int
    num_classes: int

    @nn.compact
    def __call__(self, x, t, dt_base, y):
        b, size = x.shape[0], x.shape[1]
        grid = size // self.patch
        h = PatchEmbed(self.patch, self.hidden)(x) + positions(self.hidden, grid)
        c = TimestepEmbedder(self.hidden)(t)
        c = c + TimestepEmbedder(self.hidden)(dt_base)
        c = c + LabelEmbedder(self.num_classes, self.hidden)(y)
        for _ in range(self.depth):
            h = DiTBlock(self.hidden, self.heads, self.mlp_ratio)(h, c)
        h = FinalLayer(self.patch, self.channels, self.hidden)(h, c)
        h = h.reshape(b, grid, grid, self.patch, self.patch, self.channels).transpose(0, 1, 3, 2, 4, 5)
        # the published model also learns a per-t log-variance table that does not enter the velocity
        nn.Embed(256, 1)(jnp.floor(t * 256).astype(jnp.int32))
        return h.reshape(b, size, size, self.channels)


def init_params(model: DiT, size: int, seed: int = 0) -> dict:
    """Random parameters at every leaf (flax's zero-initialised layers would hide mapping errors)."""
    shapes = jax.eval_shape(
        model.init,
        jax.random.PRNGKey(0),
        jnp.zeros((1, size, size, model.channels)),
        jnp.zeros((1,)),
        jnp.zeros((1,)),
        jnp.zeros((1,), jnp.int32),
    )["params"]
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 25
        return rng.normal(0.0, 1.0 / math.sqrt(fan_in), leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map(draw, shapes)


def sample(model: DiT, params, noise, y, steps: int, cfg_scale: float | None = None):
    """The published sampling rule: Euler from t = 0 with t = i/N, dt_base = log2(N), x += v/N."""
    apply = jax.jit(model.apply)
    x = jnp.asarray(noise)
    b = x.shape[0]
    dt_base = jnp.full((b,), math.log2(steps), jnp.float32)
    null = jnp.full((b,), model.num_classes, jnp.int32)
    for i in range(steps):
        t = jnp.full((b,), i / steps, jnp.float32)
        v = apply({"params": params}, x, t, dt_base, y)
        if cfg_scale is not None:
            v_null = apply({"params": params}, x, t, dt_base, null)
            v = v_null + cfg_scale * (v - v_null)
        x = x + v / steps
    return np.asarray(x)


def save_checkpoint(path, params, params_ema, *, as_jax: bool = False, config: dict | None = None) -> None:
    """Write a file as the published training script does: ``{"train_state": {...}, "_timestamp": ...}``.

    Arrays are numpy (what a gathered train state holds) or, with ``as_jax``, jax arrays.
    ``opt_state`` is the real optax AdamW state, so the file names optax classes.
    """
    convert = jnp.asarray if as_jax else np.asarray
    params, params_ema = (jax.tree_util.tree_map(convert, p) for p in (params, params_ema))
    state = {
        "params": params,
        "params_ema": params_ema,
        "opt_state": optax.adamw(1e-4).init(params),
        "step": np.int32(7),
    }
    if config is not None:
        state["config"] = config
    with open(path, "wb") as fh:
        fh.write(pickle.dumps({"train_state": state, "_timestamp": time.time()}))
