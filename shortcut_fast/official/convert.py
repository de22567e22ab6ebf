"""Convert a checkpoint of the paper's JAX/Flax implementation into a ``ShortcutDiT(conditioning="official")``.

Such a checkpoint is a pickle of a dict: the train state's ``params``,
``params_ema``, ``opt_state`` and ``step`` (and a ``config`` when one was
stored), either at the top level or under ``train_state`` (as its training
script writes it, beside a ``_timestamp``). It is read with the restricted
unpickler of ``safe_pickle``; the optimizer state is never needed and may hold
stand-ins. The Flax parameter tree is mapped onto our module names:

* ``PatchEmbed_0/Conv_0`` (kernel ``(p, p, C, h)``, NHWC) -> ``x_embedder`` (``(h, C, p, p)``);
* ``TimestepEmbedder_0`` / ``TimestepEmbedder_1`` (of t / of ``log2(1/d)``) -> ``cond.t_mlp`` / ``cond.dt_mlp``;
* ``LabelEmbedder_0/Embed_0`` -> ``cond.y_table``;
* ``DiTBlock_i``: ``Dense_0`` adaLN, ``Dense_1..3`` the keys, queries and values
  (fused into ``attn.qkv`` as q, k, v), ``Dense_4`` the attention output,
  ``MlpBlock_0/Dense_0..1`` the MLP;
* ``FinalLayer_0``: ``Dense_0`` adaLN, ``Dense_1`` the output, whose features are
  ordered (p, q, C) per patch in both implementations.

Dense kernels are ``(in, out)`` and become ``(out, in)`` weights. The top-level
``Embed_0`` (a per-t log-variance table that does not enter the velocity) is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import save_model
from ..models import ShortcutDiT
from .safe_pickle import StandIn, find_stand_ins, safe_loads

# The paper's model sizes, for files that store no config: the head count is not in the weights.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}
DEFAULT_INPUT_SIZE = 32  # the latent grid of 256x256 images, what every published checkpoint models
WEIGHT_CHOICES = ("ema", "params")
IGNORED = ("Embed_0",)
COVERED_TRAIN_TYPES = ("shortcut", "livereflow")  # the ones whose network sees the step size


def _fail(source, message: str):
    raise ValueError(f"{source}: {message}")


def read_official_checkpoint(path: str | os.PathLike) -> dict:
    """The train-state dict of an official checkpoint file (``params``, ``params_ema``, ``step``, ...).

    Raises ``ValueError`` when the file is not a readable pickle or not such a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    try:
        data = safe_loads(path.read_bytes())
    except ValueError as err:
        _fail(path, str(err))
    if isinstance(data, dict) and isinstance(data.get("train_state"), dict):
        data = data["train_state"]
    if isinstance(data, StandIn):
        _fail(path, f"not an official checkpoint: the file rebuilds {data.stands_for}, which was not run")
    if not isinstance(data, dict) or "params" not in data:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        _fail(
            path,
            f"not an official checkpoint: expected a dict with 'params' and 'params_ema' "
            f"(optionally under 'train_state'), got {keys}",
        )
    return data


def _flatten(tree, source, prefix: str = "") -> dict[str, np.ndarray]:
    """``{"a/b/kernel": array}`` for a nested dict of numeric arrays."""
    if isinstance(tree, dict) and set(tree) == {"params"} and not prefix:
        tree = tree["params"]  # a variables dict rather than its params collection
    if not isinstance(tree, dict):
        _fail(source, f"parameters must be a nested dict of arrays, got {type(tree).__name__} at {prefix or '/'}")
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(_flatten(value, source, name))
        elif isinstance(value, np.ndarray) and value.dtype.kind == "f":
            flat[name] = value
        else:
            what = getattr(value, "stands_for", None) or getattr(value, "dtype", None) or type(value).__name__
            _fail(source, f"parameter {name} must be a float array, got {what}")
    return flat


def _config_value(config: dict, key: str, default):
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"config {key} must be an integer, got {value!r}")
    return int(value)


def model_config(
    flat: dict[str, np.ndarray],
    config: dict | None = None,
    *,
    input_size: int | None = None,
    num_heads: int | None = None,
    source="checkpoint",
) -> dict:
    """The ``ShortcutDiT`` settings of a flattened official parameter tree.

    Sizes come from the weights' shapes; the head count and the input size
    (absent from the weights) from the arguments, else the stored ``config``,
    else ``HEADS_BY_WIDTH`` and ``DEFAULT_INPUT_SIZE``.
    """
    config = {} if config is None else config
    if not isinstance(config, dict):
        _fail(source, f"its config must be a dict, got {getattr(config, 'stands_for', type(config).__name__)}")
    try:
        train_type = config.get("train_type", "shortcut")
        if train_type not in COVERED_TRAIN_TYPES:
            raise ValueError(
                f"train_type {train_type!r} is not covered: conditioning='official' feeds the step "
                f"size to the network (train types {list(COVERED_TRAIN_TYPES)})"
            )
        steps = _config_value(config, "denoise_timesteps", 128)
        if steps < 1 or steps & (steps - 1):
            raise ValueError(f"config denoise_timesteps must be a power of two, got {steps}")
        patch = flat["PatchEmbed_0/Conv_0/kernel"]
        if patch.ndim != 4 or patch.shape[0] != patch.shape[1]:
            raise ValueError(f"PatchEmbed_0/Conv_0/kernel must be (p, p, C, hidden), got {patch.shape}")
        patch_size, in_channels, hidden = patch.shape[0], patch.shape[2], patch.shape[3]
        depth = sum(
            1
            for name in flat
            if name.startswith("DiTBlock_") and name.endswith("/Dense_0/kernel") and name.count("/") == 2
        )
        mlp_hidden = flat["DiTBlock_0/MlpBlock_0/Dense_0/kernel"].shape[1] if depth else 4 * hidden
        num_classes = flat["LabelEmbedder_0/Embed_0/embedding"].shape[0] - 1
        if input_size is None:
            input_size = _config_value(config, "image_size", DEFAULT_INPUT_SIZE)
        if num_heads is None:
            num_heads = _config_value(config, "num_heads", HEADS_BY_WIDTH.get(hidden, 0))
            if num_heads == 0:
                raise ValueError(
                    f"its config gives no num_heads and width {hidden} is none of the paper's sizes "
                    f"{sorted(HEADS_BY_WIDTH)}; give the head count (--num-heads)"
                )
    except KeyError as err:
        _fail(source, f"not an official DiT: parameter {err.args[0]} is missing")
    except ValueError as err:
        _fail(source, str(err))
    return dict(
        input_size=input_size,
        in_channels=int(in_channels),
        patch_size=int(patch_size),
        hidden_size=int(hidden),
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_hidden / hidden,
        num_classes=int(num_classes),
        min_step=1.0 / steps,
        conditioning="official",
    )


def _dense(flat, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    return flat[f"{prefix}/kernel"].T, flat[f"{prefix}/bias"]


def state_dict_from_flax(flat: dict[str, np.ndarray], depth: int) -> dict[str, torch.Tensor]:
    """Our state dict (numpy -> float32 tensors) from a flattened official parameter tree."""
    out: dict[str, np.ndarray] = {}

    def linear(ours: str, theirs: str) -> None:
        out[f"{ours}.weight"], out[f"{ours}.bias"] = _dense(flat, theirs)

    kernel = flat["PatchEmbed_0/Conv_0/kernel"]
    out["x_embedder.weight"] = kernel.transpose(3, 2, 0, 1)  # (p, p, C, h) -> (h, C, p, p)
    out["x_embedder.bias"] = flat["PatchEmbed_0/Conv_0/bias"]
    for ours, theirs in (("t_mlp", "TimestepEmbedder_0"), ("dt_mlp", "TimestepEmbedder_1")):
        linear(f"cond.{ours}.0", f"{theirs}/Dense_0")
        linear(f"cond.{ours}.2", f"{theirs}/Dense_1")
    out["cond.y_table.weight"] = flat["LabelEmbedder_0/Embed_0/embedding"]
    for i in range(depth):
        block, theirs = f"blocks.{i}", f"DiTBlock_{i}"
        linear(f"{block}.adaLN_modulation.1", f"{theirs}/Dense_0")
        (wk, bk), (wq, bq), (wv, bv) = (_dense(flat, f"{theirs}/Dense_{j}") for j in (1, 2, 3))
        out[f"{block}.attn.qkv.weight"] = np.concatenate([wq, wk, wv], axis=0)
        out[f"{block}.attn.qkv.bias"] = np.concatenate([bq, bk, bv], axis=0)
        linear(f"{block}.attn.proj", f"{theirs}/Dense_4")
        linear(f"{block}.mlp.0", f"{theirs}/MlpBlock_0/Dense_0")
        linear(f"{block}.mlp.2", f"{theirs}/MlpBlock_0/Dense_1")
    linear("final_layer.adaLN_modulation.1", "FinalLayer_0/Dense_0")
    linear("final_layer.linear", "FinalLayer_0/Dense_1")
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def _used_names(depth: int) -> set[str]:
    dense = ("kernel", "bias")
    names = {"PatchEmbed_0/Conv_0/kernel", "PatchEmbed_0/Conv_0/bias", "LabelEmbedder_0/Embed_0/embedding"}
    names |= {f"TimestepEmbedder_{e}/Dense_{j}/{p}" for e in (0, 1) for j in (0, 1) for p in dense}
    names |= {f"FinalLayer_0/Dense_{j}/{p}" for j in (0, 1) for p in dense}
    for i in range(depth):
        names |= {f"DiTBlock_{i}/Dense_{j}/{p}" for j in range(5) for p in dense}
        names |= {f"DiTBlock_{i}/MlpBlock_0/Dense_{j}/{p}" for j in (0, 1) for p in dense}
    return names


def official_to_model(
    train_state: dict,
    *,
    weights: str = "ema",
    input_size: int | None = None,
    num_heads: int | None = None,
    source="checkpoint",
) -> ShortcutDiT:
    """A ``ShortcutDiT(conditioning="official")`` holding the ``weights`` ("ema" or "params") of a train state."""
    if weights not in WEIGHT_CHOICES:
        raise ValueError(f"weights must be one of {list(WEIGHT_CHOICES)}, got {weights!r}")
    key = "params_ema" if weights == "ema" else "params"
    if key not in train_state:
        _fail(source, f"has no {key!r}; choose weights from the keys it has")
    hits = find_stand_ins(train_state[key])
    if hits:
        where, obj = hits[0]
        _fail(source, f"{key}/{where} is a {obj.stands_for} object, not an array; it was not loaded")
    flat = _flatten(train_state[key], source)
    settings = model_config(flat, train_state.get("config"), input_size=input_size, num_heads=num_heads, source=source)
    unknown = sorted(set(flat) - _used_names(settings["depth"]) - set(IGNORED) - {f"{n}/embedding" for n in IGNORED})
    if unknown:
        _fail(source, f"parameters outside the official DiT: {unknown[:5]}; this conversion does not cover them")
    try:
        model = ShortcutDiT(**settings)
        state = state_dict_from_flax(flat, settings["depth"])
        model.load_state_dict(state, strict=True)
    except KeyError as err:
        _fail(source, f"not an official DiT: parameter {err.args[0]} is missing")
    except (RuntimeError, ValueError) as err:
        _fail(source, f"the weights do not fit a ShortcutDiT of {settings}: {err}")
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        _fail(source, f"{key} holds NaN or inf values")
    return model.eval()


def convert_official(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    weights: str = "ema",
    input_size: int | None = None,
    num_heads: int | None = None,
) -> Path:
    """Convert an official checkpoint file into a model directory that ``load_model`` reads; returns ``out``."""
    train_state = read_official_checkpoint(checkpoint)
    model = official_to_model(
        train_state, weights=weights, input_size=input_size, num_heads=num_heads, source=Path(checkpoint)
    )
    return save_model(model, out)
