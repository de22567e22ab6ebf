"""The trainer: AdamW, EMA, warmup, gradient clipping, bf16 autocast on CUDA, checkpoints.

Works with any module called as ``model(x, t, d, y)``; under ``torchrun`` (an
initialised process group) it wraps the model in DistributedDataParallel,
shards each batch by rank, and only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from .. import checkpoint as ckpt
from .. import checks
from ..data.batches import BatchSource
from ..distributed import fully_shard_blocks, rank_and_world
from ..models import unwrap_model
from ..objective import ShortcutConfig, check_loss_inputs, loss_on_checked_inputs, self_consistency_targets
from ..ops import autotune
from .step import graph_targets, step_on_checked_inputs

STATE_FILE, TRAINER_FILE = "state.safetensors", "trainer.json"
TARGET_EMA_FILE = "ema_target.safetensors"  # the fast EMA of twin EMA
TRAINER_FORMAT = "shortcut_fast.trainer/1"
# The share of the initial weights in the EMA (ema_decay ** step) above which fit() warns: at the zero-initialised
# output layer they give a zero velocity, so an EMA that still holds much of them samples little but the noise.
EMA_INITIAL_SHARE_LIMIT = 0.05


class NonFiniteError(RuntimeError, ValueError):
    """Raised when too many consecutive training steps had non-finite values."""


@dataclass
class TrainConfig:
    """Settings of a training run."""

    batch_size: int = 256  # per process
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.999
    # twin EMA (iSM Sec. 3.4): a second, fast EMA of this decay builds the self-consistency targets, while the
    # ema_decay EMA is kept for evaluation; None = one EMA for both
    target_ema_decay: float | None = None
    grad_clip: float | None = 1.0  # max global gradient norm; None disables
    warmup_steps: int = 0  # linear learning-rate warmup
    decay_steps: int = 0  # cosine decay of the learning rate to 0 at this step; 0 = constant after warmup
    seed: int = 0  # weights init is the caller's; this seeds noise, times, levels and data order
    bf16: bool = True  # autocast to bfloat16 on CUDA (ignored on the CPU)
    log_every: int = 50  # steps between progress-bar and history updates
    checkpoint_every: int = 0  # steps between checkpoints to checkpoint_dir; 0 = only at the end of fit
    checkpoint_dir: str | None = None  # holds step_XXXXXXXX/ checkpoints and a `latest` pointer
    keep_checkpoints: int = 3  # newest step checkpoints kept in checkpoint_dir
    max_bad_steps: int = 20  # consecutive skipped steps (non-finite batch, loss or gradients) that stop the run
    num_workers: int = 0  # DataLoader workers for Dataset inputs
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state (FSDP2) instead of DDP
    graph_targets: bool = True  # on CUDA: replay the self-consistency targets from one captured CUDA graph
    progress: bool = True  # tqdm bar
    shortcut: ShortcutConfig = field(default_factory=ShortcutConfig)

    def __post_init__(self):
        if isinstance(self.shortcut, dict):
            self.shortcut = ShortcutConfig.from_dict(self.shortcut)
        for name in ("fsdp", "bf16", "progress", "graph_targets"):
            checks.check_bool(name, getattr(self, name))
        if not isinstance(self.shortcut, ShortcutConfig):
            raise TypeError(f"shortcut must be a ShortcutConfig, got {type(self.shortcut).__name__}")
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, (str, os.PathLike)):
                raise TypeError(f"checkpoint_dir must be a path or None, got {type(self.checkpoint_dir).__name__}")
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        if not isinstance(self.betas, (tuple, list)):
            raise TypeError(f"betas must be a pair of numbers in [0, 1), got {self.betas!r}")
        self.betas = cast("tuple[float, float]", tuple(self.betas))  # checked as a pair below
        if isinstance(self.seed, int) and self.seed >= 2**32:
            raise ValueError(f"seed must be an int in [0, 2**32), got {self.seed}")
        for name, low in [
            ("batch_size", 1),
            ("log_every", 1),
            ("warmup_steps", 0),
            ("decay_steps", 0),
            ("checkpoint_every", 0),
            ("num_workers", 0),
            ("seed", 0),
            ("keep_checkpoints", 1),
            ("max_bad_steps", 1),
        ]:
            checks.check_int(name, getattr(self, name), low)
        checks.check_number("lr", self.lr, 0.0, math.inf, low_open=True, high_open=True)
        checks.check_number("weight_decay", self.weight_decay, 0.0, math.inf, high_open=True)
        checks.check_number("ema_decay", self.ema_decay, 0.0, 1.0)
        if self.target_ema_decay is not None:
            checks.check_number("target_ema_decay", self.target_ema_decay, 0.0, 1.0)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        for beta in self.betas:
            checks.check_number("betas", beta, 0.0, 1.0, high_open=True)
        if self.grad_clip is not None:
            checks.check_number("grad_clip", self.grad_clip, 0.0, math.inf, low_open=True, high_open=True)

    def to_dict(self) -> dict:
        """Plain JSON-able settings."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Settings from a dict (``shortcut`` may be a nested dict), rejecting unknown keys."""
        return cls(**checks.known_keys(cls, data))


#################################################################################
#                                   Trainer                                     #
#################################################################################


class Trainer:
    """Train a shortcut model: ``Trainer(model, data, TrainConfig(...)).fit(steps)``.

    ``data`` is a Tensor (B, ...), a pair (Tensor, labels), a Dataset yielding
    ``x`` or ``(x, label)``, or a DataLoader. The model stays on its device.
    ``encoder``, when given, maps each data batch to what the model is trained
    on (e.g. a frozen VAE's ``lambda x: vae.encode(x).latent_dist.sample() * 0.18215``);
    it runs without gradient on the model's device.
    ``trainer.ema_model`` holds the EMA weights (what to sample from, and the
    self-consistency targets unless ``target_ema_decay`` is set: twin EMA, whose
    fast EMA ``trainer.target_ema_model`` then builds the targets);
    ``trainer.history`` the logged losses;
    ``trainer.skipped_steps`` the steps skipped for non-finite values.

    A step reads nothing back to the host: whether its batch, loss and
    gradients were finite is a flag on the device that gates the update (see
    ``train_step``), and the run's counters of skipped steps stay there too.
    The trainer reads them every ``log_every`` steps and before a checkpoint.

    Nothing is timed inside a step either: before the first step, one loss and backward on the first
    batch (whose gradients are dropped) lets ``auto`` decide which fused kernels to run
    (``ops/autotune.py``), and under torchrun every rank takes rank 0's decisions.
    """

    def __init__(self, model: nn.Module, data, config: TrainConfig | None = None, encoder=None):
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
        self.rank, self.world = rank_and_world()
        self.is_main = self.rank == 0
        # the arguments are checked before the model is wrapped or sharded in place
        self.data = BatchSource(
            data,
            self.config.batch_size,
            self.config.seed,
            self.config.num_workers,
            self.rank,
            self.world,
            pin_memory=self.device.type == "cuda",
        )
        if self.data.has_labels and getattr(self.model, "num_classes", 0) == 0:
            raise ValueError("the data has labels but the model is unconditional (num_classes=0)")
        if self.data.has_labels:
            # in-memory labels are checked once here; batches of a Dataset or DataLoader at each step
            checks.require(*checks.labels_in_range(self.data.y, self.model.num_classes))  # type: ignore[arg-type]
        if encoder is not None and not callable(encoder):
            raise TypeError(f"encoder must be callable (a module or function), got {type(encoder).__name__}")
        self.encoder = encoder

        self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.target_ema_model = self.ema_model
        if self.config.target_ema_decay is not None:
            self.target_ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.train_model = self.model
        if self.world > 1 and self.config.fsdp:
            # the EMAs are sharded like the live weights, so their updates stay local to each rank
            for module in {id(m): m for m in (self.model, self.ema_model, self.target_ema_model)}.values():
                fully_shard_blocks(module)
            params = list(self.model.parameters())
        elif self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        # fused: one kernel per step on CUDA and on the CPU, and it can skip a step on a device flag
        self.optimizer = torch.optim.AdamW(
            params, lr=self.config.lr, betas=self.config.betas, weight_decay=self.config.weight_decay, fused=True
        )
        # one stream for noise, times, levels and label dropout, the same on every rank:
        # each rank draws for the global batch and keeps its rows (see make_batch)
        self.generator = torch.Generator(self.device).manual_seed(self.config.seed)
        self.step = 0
        # on the device: steps skipped, consecutive bad steps, the step at which max_bad_steps was reached (or -1)
        self._skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self._bad_run = torch.zeros((), dtype=torch.long, device=self.device)
        self._stopped_at = torch.full((), -1, dtype=torch.long, device=self.device)
        self.history: list[dict] = []
        self._ema_warned = False
        self._kernels_decided = False

    # ---------------------------------------------------------------- one step
    def _lr(self) -> float:
        """The learning rate of the coming step: linear warmup, then constant or a cosine decay."""
        warm, decay, step = self.config.warmup_steps, self.config.decay_steps, self.step + 1
        scale = min(1.0, step / warm) if warm else 1.0
        if decay:
            scale *= 0.5 * (1.0 + math.cos(math.pi * min(step, decay) / decay))
        return self.config.lr * scale

    @property
    def skipped_steps(self) -> int:
        """Steps skipped so far for a non-finite batch, loss or gradient (reads a device counter)."""
        return int(self._skipped)

    @property
    def _bad_in_a_row(self) -> int:
        return int(self._bad_run)

    def train_step(self, x1: torch.Tensor, y: torch.Tensor | None = None) -> dict:
        """One optimizer step on the batch ``(x1, y)``; returns the loss logs (detached tensors).

        A batch, loss or gradient that is not finite skips the update: weights,
        optimizer and EMA stay exactly as they were, and ``logs["skipped"]`` is 1.
        That decision is a flag on the device, never read back here. After
        ``max_bad_steps`` such steps in a row the run is stopped: every later
        step is skipped as well, and ``NonFiniteError`` is raised at the next
        check, every ``log_every`` steps, before a checkpoint and at the end of
        ``fit`` (so no checkpoint holds a step past the stop).
        """
        return self._train_step(x1, y, labels_checked=False)

    def _train_step(self, x1, y, labels_checked: bool) -> dict:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr()
        y_given = y
        x1 = x1.to(self.device, non_blocking=True)
        y = None if y is None else y.to(self.device, non_blocking=True)
        use_bf16 = self.config.bf16 and self.device.type == "cuda"
        if self.encoder is not None:
            with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                x1 = self.encoder(x1).float()
        shard = (self.rank, self.world)
        config, null_class = check_loss_inputs(self.train_model, x1, y, self.config.shortcut, self.generator, shard)
        if not labels_checked:
            # read where the labels were given: a DataLoader's batch on the CPU needs no device sync
            checks.require(*checks.labels_in_range(y_given, null_class))
        if not self._kernels_decided:
            self._decide_kernels(x1, y, config, null_class, use_bf16)
        fast = self.config.graph_targets and self.device.type == "cuda"
        with autotune.no_timing():
            logs, ok = step_on_checked_inputs(
                self.train_model,
                self.optimizer,
                x1,
                y,
                config=config,
                null_class=null_class,
                ema_model=self.ema_model,
                ema_decay=self.config.ema_decay,
                generator=self.generator,
                grad_clip=self.config.grad_clip,
                bf16=use_bf16,
                targets=graph_targets if fast else self_consistency_targets,
                shard=shard,
                skip_non_finite=True,
                agree=self._all_ranks,
                allowed=self._stopped_at < 0,
                target_model=self.target_ema_model,
                target_decay=self.config.target_ema_decay,
            )
        self.step += 1  # a skipped step spends its batch and random draws too
        assert ok is not None  # skip_non_finite=True: the step returns its flag
        self._skipped += (~ok).long()
        self._bad_run = torch.where(ok, 0, self._bad_run + 1)
        reached = (self._stopped_at < 0) & (self._bad_run >= self.config.max_bad_steps)
        self._stopped_at = torch.where(reached, self.step, self._stopped_at)
        logs["skipped"] = (~ok).float()
        if self.step % self.config.log_every == 0:
            self._raise_if_stopped()
        return logs

    def _decide_kernels(self, x1, y, config, null_class: int, use_bf16: bool) -> None:
        """``auto``'s kernel decisions for this run's shapes, made once before the first step.

        One loss and backward of the first batch, with its own random stream and its gradients dropped,
        so that the run itself is exactly the run without it. The self-consistency targets run eagerly
        here (no graph is captured while kernels are timed). Under torchrun all ranks run it in step and
        then take rank 0's decisions, so that every rank runs the same kernels.
        """
        self._kernels_decided = True
        if not autotune.active():
            return
        gen = torch.Generator(self.device).manual_seed(self.config.seed)
        teacher = self.target_ema_model
        # only rank 0 times (and writes the decision cache that ranks on one machine share); the others run the
        # pass in step with it, since under DDP/FSDP its forward and backward are collectives
        timing = contextlib.nullcontext() if self.is_main else autotune.no_timing()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), timing:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, _ = loss_on_checked_inputs(
                    self.train_model,
                    x1,
                    y,
                    config,
                    teacher,
                    gen,
                    (self.rank, self.world),
                    self_consistency_targets,
                    null_class,
                )
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            rows: list = [autotune.export() if self.is_main else None]
            dist.broadcast_object_list(rows, src=0)
            autotune.adopt(rows[0], self.device)

    def _all_ranks(self, ok: torch.Tensor) -> torch.Tensor:
        """``ok`` and'ed over all ranks on the device, so that every rank skips the same steps."""
        if self.world == 1:
            return ok
        flag = ok.float()
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return flag > 0

    def _raise_if_stopped(self) -> None:
        """Raise ``NonFiniteError`` if ``max_bad_steps`` bad steps in a row stopped the run (one host read)."""
        stopped_at = int(self._stopped_at)
        if stopped_at >= 0:
            raise NonFiniteError(
                f"{self.config.max_bad_steps} steps in a row had a non-finite batch, loss or gradient "
                f"(step {stopped_at}); stopping. Weights were not updated by them nor by the steps after them "
                f"(up to step {self.step}); the last checkpoint is intact. Check the data, lower lr or raise "
                "grad_clip, then resume."
            )

    # ---------------------------------------------------------------- the loop
    def fit(self, steps: int) -> list[dict]:
        """Train ``steps`` more steps; returns ``history`` (losses every ``log_every`` steps).

        With ``config.checkpoint_dir`` set, a checkpoint is written every
        ``checkpoint_every`` steps and at the end (see ``checkpoint``).
        """
        checks.check_int("steps", steps, 0)
        cfg = self.config
        bar = tqdm(total=steps, desc="training", disable=not (cfg.progress and self.is_main), dynamic_ncols=True)
        start = time.perf_counter()
        saved_at = None
        for _ in range(steps):
            x1, y = next(self.data)
            logs = self._train_step(x1, y, labels_checked=self.data.x is not None)
            if self.step % cfg.log_every == 0:
                row = {"step": self.step, "seconds": time.perf_counter() - start, "skipped_steps": self.skipped_steps}
                row.update({k: float(v) for k, v in logs.items() if k != "skipped"})
                self.history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            bar.update(1)
            if cfg.checkpoint_dir and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                self.checkpoint()
                saved_at = self.step
        bar.close()
        self._raise_if_stopped()
        if cfg.checkpoint_dir and steps and saved_at != self.step:
            self.checkpoint()
        if steps:
            self._warn_if_ema_near_start()
        return self.history

    def _warn_if_ema_near_start(self) -> None:
        """Warn (once, on rank 0) where the EMA model still holds much of the initial weights: its samples would
        be near the noise, and with ``ema_targets`` the self-consistency targets near zero."""
        decay = self.config.ema_decay
        share = decay**self.step
        if self._ema_warned or not self.is_main or share <= EMA_INITIAL_SHARE_LIMIT:
            return
        self._ema_warned = True
        lower = f"lower ema_decay (about {EMA_INITIAL_SHARE_LIMIT ** (1 / self.step):.4g} for {self.step} steps)"
        if decay < 1:
            lower = f"train to about {math.ceil(math.log(EMA_INITIAL_SHARE_LIMIT) / math.log(decay))} steps, or {lower}"
        warnings.warn(
            f"after {self.step} steps the EMA model (ema_decay={decay}) still holds {share:.0%} of the initial "
            f"weights, so its samples stay close to the noise: {lower}",
            UserWarning,
            stacklevel=2,
        )

    # ---------------------------------------------------------------- checkpoints
    def checkpoint(self) -> Path | None:
        """Save to ``checkpoint_dir/step_XXXXXXXX``, point ``checkpoint_dir/latest`` at it and
        keep the newest ``keep_checkpoints`` step directories (rank 0 writes; call on every rank).

        Each step directory is complete before ``latest`` names it, so a run
        killed at any moment leaves ``latest`` on a loadable checkpoint.
        """
        if not self.config.checkpoint_dir:
            raise ValueError("checkpoint() needs config.checkpoint_dir")
        self._raise_if_stopped()
        root = Path(self.config.checkpoint_dir)
        path = self.save(root / f"step_{self.step:08d}")
        if path is None:
            return None
        ckpt.point_latest(root, path.name)
        others = [p for p in sorted(root.glob("step_*")) if p.is_dir() and p.name != path.name]
        for old in others[: max(0, len(others) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(old, ignore_errors=True)
        for debris in root.glob(".step_*"):  # temporary directories of a save that was killed
            shutil.rmtree(debris, ignore_errors=True)
        return path

    def save(self, directory: str | os.PathLike) -> Path | None:
        """Write weights, EMA, optimizer, step, data position and RNG state.

        Call it on every rank (under FSDP it gathers the shards); rank 0 writes.
        The directory is replaced atomically. Returns it (``None`` on other ranks).
        """
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.model, options=full)
        ema = get_model_state_dict(self.ema_model, options=full)
        twin = self.target_ema_model is not self.ema_model
        fast = get_model_state_dict(self.target_ema_model, options=full) if twin else None
        opt = get_optimizer_state_dict(self.model, self.optimizer, options=full)
        if not self.is_main:
            return None
        directory = Path(directory)
        state = {"rng.generator": self.generator.get_state()}
        # the full state dicts (full_state_dict=True) hold tensors and plain values, finer than their stubs' types
        for name, param_state in opt["state"].items():  # type: ignore[union-attr]
            for key, value in param_state.items():  # type: ignore[union-attr]
                state[f"optimizer/{name}/{key}"] = torch.as_tensor(value)
        meta: dict[str, Any] = {
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
            ckpt.save_tensors(tmp / ckpt.WEIGHTS_FILE, weights)  # type: ignore[arg-type]
            ckpt.save_tensors(tmp / ckpt.EMA_FILE, ema)  # type: ignore[arg-type]
            if fast is not None:
                ckpt.save_tensors(tmp / TARGET_EMA_FILE, fast)  # type: ignore[arg-type]
            ckpt.save_tensors(tmp / STATE_FILE, state)
            ckpt.write_json(tmp / TRAINER_FILE, meta)
        return directory

    @classmethod
    def resume(
        cls,
        directory: str | os.PathLike,
        data,
        model: nn.Module | None = None,
        device: str | torch.device | None = None,
        **overrides,
    ) -> Trainer:
        """Continue a run saved by ``save`` or ``checkpoint``: same step, weights, EMA, optimizer,
        RNG and data order. ``directory`` is a checkpoint or a ``checkpoint_dir`` (its ``latest``).

        ``model`` is needed only for modules other than the package's own (it
        must have the saved architecture). ``overrides`` change TrainConfig
        fields that do not alter the run's math (e.g. ``progress``, ``checkpoint_dir``).
        """
        directory = ckpt.resolve_checkpoint(directory)
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
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True)
        pairs = [(trainer.model, ckpt.WEIGHTS_FILE), (trainer.ema_model, ckpt.EMA_FILE)]
        if trainer.target_ema_model is not trainer.ema_model:
            pairs.append((trainer.target_ema_model, TARGET_EMA_FILE))
        for module, name in pairs:
            try:
                set_model_state_dict(module, ckpt.read_weights(directory / name), options=full)  # type: ignore[arg-type]
            except (RuntimeError, KeyError) as err:
                raise ValueError(f"{directory / name} does not fit the model: {err}") from err
        state = ckpt.load_tensors(directory / STATE_FILE)
        trainer.generator.set_state(state.pop("rng.generator"))
        opt_state: dict[str, dict] = {}
        for key, value in state.items():
            _, name, field_name = key.split("/")
            opt_state.setdefault(name, {})[field_name] = value
        try:
            set_optimizer_state_dict(
                trainer.model,
                trainer.optimizer,
                options=full,
                optim_state_dict={
                    "state": opt_state,  # type: ignore[dict-item]
                    "param_groups": meta["optimizer_param_groups"],
                },
            )
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(f"{directory / STATE_FILE}: the optimizer state does not fit the model ({err})") from err
        trainer.data.load_state_dict(meta["data"])
        trainer.step = int(meta["step"])
        return trainer
