"""Saving and loading: safetensors for tensors, JSON for the rest, never pickle.

A model directory holds ``config.json`` (the class and its constructor
arguments) and ``model.safetensors``; a trainer checkpoint adds
``ema.safetensors``, ``state.safetensors`` (optimizer and RNG tensors) and
``trainer.json``. Every directory is written beside its destination and moved
into place only when complete, so a crash never leaves a half-written one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .distributed import unsharded_class
from .models import MODEL_CLASSES, unwrap_model

MODEL_FORMAT = "shortcut_fast.model/1"
CONFIG_FILE, WEIGHTS_FILE, EMA_FILE = "config.json", "model.safetensors", "ema.safetensors"
LATEST_FILE = "latest"  # in a run's checkpoint_dir: the name of the newest complete checkpoint


def _umask_mode(mode: int) -> int:
    # mkdtemp/mkstemp create private (0700/0600) entries; outputs follow the umask like any file
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a fresh temporary directory that replaces ``path`` when the block succeeds.

    The temporary directory lives beside ``path`` (same file system, so the
    final moves are renames). An existing ``path`` is moved aside first and
    removed only after the new one is in place; on an exception the temporary
    directory is removed and ``path`` is left as it was. A full disk (or
    quota) raises an ``OSError`` that says so and that nothing was replaced.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory; it is not replaced by a checkpoint")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    aside = None
    try:
        yield tmp
        for f in tmp.rglob("*"):  # the data is on disk before the rename makes it visible (sub-folders too)
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, _umask_mode(0o777))
        if path.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent)) / path.name
            os.rename(path, aside)
        os.rename(tmp, path)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if aside is not None and not path.exists():
            os.rename(aside, path)
        if aside is not None:
            shutil.rmtree(aside.parent, ignore_errors=True)
        _raise_if_disk_full(err, path)
        raise
    _fsync_directory(path.parent)  # the rename itself survives a power cut
    if aside is not None:
        shutil.rmtree(aside.parent)


def _raise_if_disk_full(err: BaseException, path: Path) -> None:
    """Turn a full disk or quota while writing ``path`` into an error that says what it means for the run."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise OSError(
            err.errno,
            f"no space left to write {path} ({err.strerror}); nothing was replaced and "
            "earlier checkpoints are intact: free space and save again",
        ) from err


def _fsync_directory(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside ``path`` that replaces it when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        _raise_if_disk_full(err, path)
        raise


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> dict:
    """Read a JSON object, with an error naming the file when it is missing or malformed."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{path} is not valid JSON ({type(err).__name__}); the checkpoint is damaged") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat dict of tensors as safetensors (moved to the CPU, contiguous)."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file, with an error naming it when it is missing or damaged."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); the checkpoint is damaged") from err


def model_spec(model: nn.Module) -> dict | None:
    """``{"format", "class", "config"}`` for the package's models, ``None`` for other modules."""
    base = unwrap_model(model)
    cls = unsharded_class(base)
    name = cls.__name__
    if MODEL_CLASSES.get(name) is not cls:
        return None
    return {"format": MODEL_FORMAT, "class": name, "config": dict(base.config)}  # type: ignore[arg-type]  # a package model


def build_model(spec: dict, source: Path) -> nn.Module:
    """Construct a model (random weights) from ``model_spec``'s dict; errors name ``source``."""
    name, config = spec.get("class"), spec.get("config")
    if spec.get("format") != MODEL_FORMAT or not isinstance(name, str) or name not in MODEL_CLASSES:
        raise ValueError(
            f"{source} does not describe a shortcut_fast model (format {spec.get('format')!r}, "
            f"class {name!r}; known classes {sorted(MODEL_CLASSES)})"
        )
    if not isinstance(config, dict):
        raise ValueError(f"{source}: 'config' must be an object of {name} settings, got {config!r}")
    try:
        return MODEL_CLASSES[name](**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: the model config does not fit {name} ({err})") from err


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict whose tensors are all finite floating-point values."""
    state = load_tensors(path)
    for key, value in state.items():
        if not value.is_floating_point():
            raise ValueError(f"{path}: {key} holds {value.dtype} values; weights are floating point")
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{path}: {key} holds NaN or inf values; the checkpoint is damaged")
    return state


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a safetensors state dict into ``model`` (strict: every key must match)."""
    state = read_weights(path)
    try:
        unwrap_model(model).load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the model: {err}") from err


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Save one of the package's models to ``directory`` (config.json + model.safetensors).

    Returns the directory. Other modules: save their ``state_dict`` yourself,
    e.g. with ``safetensors.torch.save_file``.
    """
    spec = model_spec(model)
    if spec is None:
        raise TypeError(f"save_model saves {sorted(MODEL_CLASSES)}; got {type(unwrap_model(model)).__name__}")
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_json(tmp / CONFIG_FILE, spec)
        save_tensors(tmp / WEIGHTS_FILE, unwrap_model(model).state_dict())
    return directory


def point_latest(root: Path, name: str) -> None:
    """Atomically make ``root/latest`` name the checkpoint directory ``root/name``."""
    with atomic_file(root / LATEST_FILE) as tmp:
        tmp.write_text(name + "\n")


def resolve_checkpoint(directory: str | os.PathLike) -> Path:
    """The checkpoint a directory stands for: the one its ``latest`` file names, else itself."""
    directory = Path(directory)
    latest = directory / LATEST_FILE
    if not latest.is_file():
        return directory
    try:
        name = latest.read_text().strip()
    except UnicodeDecodeError as err:
        raise ValueError(f"{latest} is not text naming a checkpoint directory; it is damaged") from err
    if not name or Path(name).name != name or not (directory / name).is_dir():
        raise ValueError(f"{latest} names {name!r}, which is not a checkpoint directory beside it")
    return directory / name


def parse_device(device: str | torch.device) -> torch.device:
    """A device this torch can use, or a ValueError naming it."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name such as 'cpu' or 'cuda:0'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but this torch has no usable CUDA device")
    return device


def load_model(
    directory: str | os.PathLike, *, ema: bool | None = None, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a model saved by ``save_model`` or ``Trainer.save``.

    ``ema=None`` takes the EMA weights when the directory has them (a trainer
    checkpoint), ``True`` requires them, ``False`` takes the live weights.
    A training run's ``checkpoint_dir`` stands for its latest checkpoint.
    The model is returned in eval mode on ``device``.
    """
    device = parse_device(device)
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    directory = resolve_checkpoint(directory)
    model = build_model(read_json(directory / CONFIG_FILE), directory / CONFIG_FILE)
    has_ema = (directory / EMA_FILE).is_file()
    if ema and not has_ema:
        raise ValueError(f"{directory} has no {EMA_FILE}: it holds a model without EMA weights")
    use_ema = has_ema if ema is None else ema
    load_weights(model, directory / (EMA_FILE if use_ema else WEIGHTS_FILE))
    return model.to(device).eval()
