"""The embedded demo: a class-conditional shortcut DiT on the 8x8 digits, trained on a CPU.

``run_demo`` trains, then samples every class at several step counts and scores
the samples with a small digits classifier: the share assigned to the
requested class (accuracy) and the Fréchet distance between classifier
features of the samples and of as many real digits (fd). ``fd_floor`` is the
same distance between two disjoint sets of real digits of that size: what a
perfect model scores, so ``fd_over_floor`` near 1 is as good as it gets
(``metrics.DigitsScorer``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import atomic_file, write_json
from ..data.files import DIGITS_CLASSES, load_digits
from ..models import ShortcutDiT
from ..objective import ShortcutConfig
from ..sampling import sample
from ..train.trainer import TrainConfig, Trainer
from .images import save_grid
from .metrics import DigitsScorer, load_or_train_digits_classifier


@dataclass
class DemoConfig:
    """Settings of the digits demo; the defaults train in a few minutes on 2 CPU cores."""

    train_steps: int = 1800
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 50
    cosine_decay: bool = True  # decay lr to 0 over the run: lower FD at every step count (measured)
    ema_decay: float = 0.995
    # In a run this short an EMA lags hundreds of steps behind the live weights,
    # and targets built from it slow the level-by-level bootstrap several times
    # over (measured); the EMA still supplies the weights that are evaluated.
    ema_targets: bool = False
    # half of each batch trains self-consistency: the 1-step level sees twice the rows
    # of the default split, which lowered the 1-step FD in the time budget (measured)
    bootstrap_fraction: float = 0.5
    # minibatch OT pairing of noise and data within each class (iSM Sec. 3.3; techniques.pairing)
    ot_pairing: bool = False
    # guided self-consistency targets at the smallest bootstrap level; None = unguided
    bootstrap_cfg_scale: float | None = None
    hidden_size: int = 192
    depth: int = 4
    num_heads: int = 4
    patch_size: int = 4  # 4 tokens of 4x4 pixels: a quarter of the cost of 2x2 patches
    # for the metrics, at most 89 (the FD floor needs two disjoint real sets of 10 x this many digits);
    # the pictures show the first 10 of each class
    samples_per_class: int = 80
    sample_steps: tuple[int, ...] = (1, 2, 4, 8, 128)
    seed: int = 0


def _digits_model(cfg: DemoConfig) -> ShortcutDiT:
    return ShortcutDiT(
        input_size=8,
        in_channels=1,
        patch_size=cfg.patch_size,
        hidden_size=cfg.hidden_size,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        num_classes=DIGITS_CLASSES,
    )


def evaluate_digits(model: torch.nn.Module, out_dir: Path, cfg: DemoConfig, progress: bool = True) -> dict:
    """Sample every class at each of ``cfg.sample_steps``, write the grids and return the metrics."""
    classifier = load_or_train_digits_classifier(out_dir, seed=cfg.seed)
    scorer = DigitsScorer(classifier, DIGITS_CLASSES * cfg.samples_per_class, seed=cfg.seed)
    metrics: dict[str, Any] = {"steps": {}, "fd_floor": scorer.floor}

    labels = torch.arange(DIGITS_CLASSES).repeat_interleave(cfg.samples_per_class)
    # the same noise for every step count, so the pictures compare like with like
    noise = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(cfg.seed + 1))
    for steps in cfg.sample_steps:
        images = sample(model, noise=noise, steps=steps, y=labels, progress=progress).clamp(-1, 1)
        metrics["steps"][str(steps)] = scorer.score(images, labels)
        shown = min(10, cfg.samples_per_class)
        grid = images.view(DIGITS_CLASSES, cfg.samples_per_class, 1, 8, 8)[:, :shown]
        save_grid(
            grid,
            out_dir / f"samples_{steps}step.png",
            row_labels=[str(c) for c in range(DIGITS_CLASSES)],
            title=f"{steps} step{'s' if steps > 1 else ''}",
        )
    return metrics


def run_demo(out_dir: str | os.PathLike = "demo_out", config: DemoConfig | None = None, progress: bool = True) -> dict:
    """Train the digits model, evaluate it and write pictures, the model and ``metrics.json``.

    Writes ``out_dir/model/`` (a trainer checkpoint), ``out_dir/samples_{N}step.png``
    and ``out_dir/metrics.json``; returns the metrics dict.
    """
    cfg = config or DemoConfig()
    largest = len(load_digits()[0]) // (2 * DIGITS_CLASSES)
    if isinstance(cfg.samples_per_class, bool) or not isinstance(cfg.samples_per_class, int):
        raise TypeError(f"samples_per_class must be an int, got {type(cfg.samples_per_class).__name__}")
    if not 1 <= cfg.samples_per_class <= largest:
        # checked before training: the FD floor needs two disjoint real sets of the samples' size
        raise ValueError(f"samples_per_class must be in [1, {largest}], got {cfg.samples_per_class}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    x, y = load_digits()
    model = _digits_model(cfg)
    train_cfg = TrainConfig(
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.train_steps if cfg.cosine_decay else 0,
        ema_decay=cfg.ema_decay,
        seed=cfg.seed,
        progress=progress,
        log_every=max(1, cfg.train_steps // 20),
        shortcut=ShortcutConfig(
            ema_targets=cfg.ema_targets,
            bootstrap_fraction=cfg.bootstrap_fraction,
            ot_pairing=cfg.ot_pairing,
            bootstrap_cfg_scale=cfg.bootstrap_cfg_scale,
        ),
    )
    trainer = Trainer(model, (x, y), train_cfg)
    start = time.perf_counter()
    trainer.fit(cfg.train_steps)
    train_seconds = time.perf_counter() - start
    trainer.save(out_dir / "model")

    metrics = evaluate_digits(trainer.ema_model, out_dir, cfg, progress=progress)
    metrics.update(
        train_seconds=train_seconds,
        train_steps=cfg.train_steps,
        config=asdict(cfg),
        final_loss=trainer.history[-1]["loss"] if trainer.history else None,
    )
    with atomic_file(out_dir / "metrics.json") as tmp:
        write_json(tmp, metrics)
    return metrics
