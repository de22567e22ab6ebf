"""The trainer: AdamW, EMA, warmup, gradient clipping, bf16 autocast on CUDA, checkpoints.

Works with any module called as ``model(x, t, d, y)``; under ``torchrun`` (an
initialised process group) it wraps the model in DistributedDataParallel,
shards each batch by rank, and only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .models import unwrap_model
from .objective import ShortcutConfig, _check_number, _known_keys, shortcut_loss

STATE_FILE, TRAINER_FILE = "state.safetensors", "trainer.json"
TRAINER_FORMAT = "shortcut_fast.trainer/1"


@dataclass
class TrainConfig:
    """Settings of a training run."""

    batch_size: int = 256  # per process
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.999
    grad_clip: float | None = 1.0  # max global gradient norm; None disables
    warmup_steps: int = 0  # linear learning-rate warmup
    seed: int = 0  # weights init is the caller's; this seeds noise, times, levels and data order
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on the CPU)
    log_every: int = 50  # steps between progress-bar and history updates
    checkpoint_every: int = 0  # steps between checkpoints to checkpoint_dir; 0 = only at the end of fit
    checkpoint_dir: str | None = None
    num_workers: int = 0  # DataLoader workers for Dataset inputs
    progress: bool = True  # tqdm bar
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)

    def __post_init__(self):
        if isinstance(self.shortcut, dict):
            self.shortcut = ShortcutConfig.from_dict(self.shortcut)
        if not isinstance(self.shortcut, ShortcutConfig):
            raise TypeError(f"shortcut must be a ShortcutConfig, got {type(self.shortcut).__name__}")
        self.betas = tuple(self.betas)
        for name, low in [("batch_size", 1), ("log_every", 1), ("warmup_steps", 0), ("checkpoint_every", 0),
                          ("num_workers", 0), ("seed", 0)]:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        _check_number("lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        _check_number("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        _check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        for beta in self.betas:
            _check_number("betas", beta, 0.0, 1.0, high_open=True)
        if self.grad_clip is not None:
            _check_number("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True, high_open=True)

    def to_dict(self) -> dict:
        """Plain JSON-able settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Settings from a dict (``shortcut`` may be a nested dict), rejecting unknown keys."""
        return cls(**_known_keys(cls, data))


#################################################################################
#                          Batches from the user's data                         #
#################################################################################

def _split_item(batch):
    """A collated batch -> (x, labels or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError("each data item must be a tensor x or a pair (x, label); "
                    f"got a batch of type {type(batch).__name__}")


class BatchSource:
    """Endless, resumable batches of ``(x, y)`` from tensors, a Dataset or a DataLoader.

    For tensors and Datasets the order is a seeded permutation per epoch, and
    the position in it is part of the checkpoint, so a resumed run sees the
    same batches. Under torchrun each rank takes its share of every global batch.
    A user's DataLoader is iterated as it is (restarted when exhausted) and its
    order is its own.
    """

    def __init__(self, data, batch_size: int, seed: int, num_workers: int = 0, rank: int = 0, world: int = 1,
                 pin_memory: bool = False):
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.x = self.y = self.dataset = self.loader = None
        if isinstance(data, DataLoader):
            self.loader, self.size = data, None
        elif isinstance(data, torch.Tensor):
            self.x, self.size = data, len(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(a, torch.Tensor) for a in data):
            self.x, self.y = data
            if len(self.x) != len(self.y):
                raise ValueError(f"data and labels differ in length: {len(self.x)} vs {len(self.y)}")
            if self.y.dtype.is_floating_point or self.y.dim() != 1:
                raise ValueError(f"labels must be a 1-D integer tensor, got dtype {self.y.dtype}, "
                                 f"shape {tuple(self.y.shape)}")
            self.size = len(self.x)
        elif isinstance(data, Dataset):
            self.dataset, self.size = data, len(data)
        else:
            raise TypeError("data must be a Tensor, a (Tensor, labels) pair, a Dataset or a DataLoader; "
                            f"got {type(data).__name__}")
        if self.size is not None and self.size < batch_size * world:
            raise ValueError(f"the data holds {self.size} samples, fewer than one batch "
                             f"({batch_size} x {world} processes); lower batch_size")
        self.epoch, self.pos, self._iter = 0, 0, None

    @property
    def has_labels(self) -> bool | None:
        """Whether items carry labels (None: unknown until a DataLoader yields)."""
        if self.x is not None:
            return self.y is not None
        return None

    def state_dict(self) -> dict:
        """Where the next batch starts: the epoch and the position in its permutation."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict``."""
        self.epoch, self.pos, self._iter = int(state["epoch"]), int(state["pos"]), None

    def _permutation(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=gen)

    def _epoch_batches(self) -> list[torch.Tensor]:
        """This rank's index lists for the rest of the current epoch (full global batches only)."""
        perm, step = self._permutation(), self.batch_size * self.world
        first = self.rank * self.batch_size
        return [perm[p + first:p + first + self.batch_size] for p in range(self.pos, self.size - step + 1, step)]

    def _new_iter(self):
        if self.loader is not None:
            return iter(self.loader)
        batches = self._epoch_batches()
        if self.x is not None:
            return ((self.x[i], None if self.y is None else self.y[i]) for i in batches)
        return iter(DataLoader(self.dataset, batch_sampler=batches, num_workers=self.num_workers,
                               pin_memory=self.pin_memory, collate_fn=default_collate))

    def __next__(self):
        if self._iter is None:
            self._iter = self._new_iter()
        batch = next(self._iter, None)
        if batch is None:
            if self.loader is None:
                self.epoch, self.pos = self.epoch + 1, 0
            self._iter = self._new_iter()
            batch = next(self._iter)
        if self.loader is not None:
            return _split_item(batch)
        # pos counts batches handed out, not batches a DataLoader worker prefetched
        self.pos += self.batch_size * self.world
        return batch if self.x is not None else _split_item(batch)


#################################################################################
#                                   Trainer                                     #
#################################################################################

def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class Trainer:
    """Train a shortcut model: ``Trainer(model, data, TrainConfig(...)).fit(steps)``.

    ``data`` is a Tensor (B, ...), a pair (Tensor, labels), a Dataset yielding
    ``x`` or ``(x, label)``, or a DataLoader. The model stays on its device.
    ``trainer.ema_model`` holds the EMA weights (the self-consistency targets
    and what to sample from); ``trainer.history`` the logged losses.
    """

    def __init__(self, model: nn.Module, data, config: TrainConfig | None = None):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.config = config or TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(self.config).__name__}")
        self.model = unwrap_model(model)
        params = list(self.model.parameters())
        if not params:
            raise ValueError("the model has no parameters to train")
        self.device = params[0].device
        self.rank, self.world = _distributed()
        self.is_main = self.rank == 0

        self.train_model = self.model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, betas=self.config.betas,
                                           weight_decay=self.config.weight_decay,
                                           fused=self.device.type == "cuda")
        self.data = BatchSource(data, self.config.batch_size, self.config.seed, self.config.num_workers,
                                self.rank, self.world, pin_memory=self.device.type == "cuda")
        if self.data.has_labels and getattr(self.model, "num_classes", 0) == 0:
            raise ValueError("the data has labels but the model is unconditional (num_classes=0)")
        # per-rank stream of noise, times, levels and label dropout
        self.generator = torch.Generator(self.device).manual_seed(self.config.seed + 1_000_003 * self.rank)
        self.step = 0
        self.history: list[dict] = []

    # ---------------------------------------------------------------- one step
    def _lr(self) -> float:
        warm = self.config.warmup_steps
        return self.config.lr * min(1.0, (self.step + 1) / warm) if warm else self.config.lr

    @torch.no_grad()
    def _update_ema(self) -> None:
        ema = list(self.ema_model.parameters())
        live = list(self.model.parameters())
        torch._foreach_lerp_(ema, live, 1.0 - self.config.ema_decay)
        for b_ema, b in zip(self.ema_model.buffers(), self.model.buffers(), strict=True):
            b_ema.copy_(b)

    def train_step(self, x1: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """One optimizer step on the batch ``(x1, y)``; returns the loss logs (detached tensors)."""
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        x1 = x1.to(self.device, non_blocking=True)
        y = None if y is None else y.to(self.device, non_blocking=True)
        use_bf16 = self.config.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, logs = shortcut_loss(self.train_model, x1, y, self.config.shortcut,
                                       target_model=self.ema_model, generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self._update_ema()
        self.step += 1
        return logs

    # ---------------------------------------------------------------- the loop
    def fit(self, steps: int) -> list[dict]:
        """Train ``steps`` more steps; returns ``history`` (losses every ``log_every`` steps).

        Checkpoints go to ``config.checkpoint_dir`` every ``checkpoint_every``
        steps and at the end, when a directory is set.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be an int >= 0, got {steps!r}")
        cfg = self.config
        bar = tqdm(total=steps, desc="training", disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        start = time.perf_counter()
        for _ in range(steps):
            x1, y = next(self.data)
            logs = self.train_step(x1, y)
            if self.step % cfg.log_every == 0:
                row = {"step": self.step, "seconds": time.perf_counter() - start}
                row.update({k: float(v) for k, v in logs.items()})
                self.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            if cfg.checkpoint_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.save(cfg.checkpoint_dir)
        bar.close()
        if cfg.checkpoint_dir and steps:
            self.save(cfg.checkpoint_dir)
        return self.history

    # ---------------------------------------------------------------- checkpoints
    def save(self, directory: str | os.PathLike) -> Path | None:
        """Write weights, EMA, optimizer, step, data position and RNG state (rank 0 only).

        The directory is replaced atomically. Returns it (``None`` on other ranks).
        """
        if not self.is_main:
            return None
        directory = Path(directory)
        state = {"rng.generator": self.generator.get_state()}
        opt = self.optimizer.state_dict()
        for idx, param_state in opt["state"].items():
            for name, value in param_state.items():
                state[f"optimizer.{idx}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
        meta = {
            "format": TRAINER_FORMAT,
            "step": self.step,
            "train_config": self.config.to_dict(),
            "optimizer_param_groups": opt["param_groups"],
            "data": self.data.state_dict(),
            "model": ckpt.model_spec(self.model),
        }
        with ckpt.atomic_directory(directory) as tmp:
            if meta["model"] is not None:
                ckpt.write_json(tmp / ckpt.CONFIG_FILE, meta["model"])
            ckpt.save_tensors(tmp / ckpt.WEIGHTS_FILE, self.model.state_dict())
            ckpt.save_tensors(tmp / ckpt.EMA_FILE, self.ema_model.state_dict())
            ckpt.save_tensors(tmp / STATE_FILE, state)
            ckpt.write_json(tmp / TRAINER_FILE, meta)
        return directory

    @classmethod
    def resume(cls, directory: str | os.PathLike, data, model: nn.Module | None = None,
               device: str | torch.device | None = None, **overrides) -> Trainer:
        """Continue a run saved by ``save``: same step, weights, EMA, optimizer, RNG and data order.

        ``model`` is needed only for modules other than the package's own (it
        must have the saved architecture). ``overrides`` change TrainConfig
        fields that do not alter the run's math (e.g. ``progress``, ``checkpoint_dir``).
        """
        directory = Path(directory)
        meta = ckpt.read_json(directory / TRAINER_FILE)
        if meta.get("format") != TRAINER_FORMAT:
            raise ValueError(f"{directory / TRAINER_FILE} is not a shortcut_fast trainer checkpoint")
        if model is None:
            if meta.get("model") is None:
                raise ValueError(f"{directory} holds a custom model: pass model= with the same architecture")
            model = ckpt.build_model(meta["model"], directory / TRAINER_FILE)
        if device is not None:
            model = model.to(device)
        config = TrainConfig.from_dict({**meta["train_config"], **overrides})
        trainer = cls(model, data, config)
        ckpt.load_weights(trainer.model, directory / ckpt.WEIGHTS_FILE)
        ckpt.load_weights(trainer.ema_model, directory / ckpt.EMA_FILE)
        state = ckpt.load_tensors(directory / STATE_FILE)
        trainer.generator.set_state(state.pop("rng.generator"))
        opt_state: dict[int, dict] = {}
        for key, value in state.items():
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
        try:
            trainer.optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer_param_groups"]})
        except (ValueError, KeyError) as err:
            raise ValueError(f"{directory}: the optimizer state does not fit the model ({err})") from err
        trainer.data.load_state_dict(meta["data"])
        trainer.step = int(meta["step"])
        return trainer
