"""Sample quality against the number of sampling steps: shortcut models against flow matching.

Trains, with the same budget (steps, batch, learning rate, seed) and the same
network, a shortcut model and a plain flow-matching baseline
(``ShortcutConfig(objective="flow")``) on four 2D point sets (``ShortcutMLP``,
scored by the sliced Wasserstein distance to fresh data) and on the 8x8 digits
(class-conditional ``ShortcutDiT``, scored by a digits classifier: accuracy and
Fréchet distance of its features). Each model samples with 1, 2, 4, ..., 128
Euler steps; the flow baseline is conditioned on its trained step size
``d_min`` at every step, since it never learned the larger ones.

Two more digits experiments: guidance (none; at sampling, two forwards per
step; baked into the bootstrap targets with ``bootstrap_cfg_scale``, one
forward) and fine-tuning the flow baseline into a shortcut model
(``sf.from_flow_model``) against training from scratch.

Writes ``OUT/quality.md`` (tables), ``OUT/quality.json`` (every number) and
pictures in ``OUT/img/``: ``quality_vs_steps.png``, ``quality_2d.png`` and
``quality_digits.png``. ``--quick`` runs everything at a tiny size (seconds,
for CI); its numbers mean nothing.

    python benchmarks/quality.py                 # the default budget, writes docs/
    python benchmarks/quality.py --quick --out /tmp/q
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image, ImageDraw, ImageFont

import shortcut_fast as sf
from shortcut_fast.data.files import DIGITS_CLASSES, load_digits
from shortcut_fast.eval.images import save_grid
from shortcut_fast.eval.metrics import (
    class_accuracy,
    frechet_distance,
    load_or_train_digits_classifier,
    sliced_wasserstein,
)
from shortcut_fast.eval.toy2d import TOY2D, sample_toy2d

OBJECTIVES = ("shortcut", "flow")


@dataclass
class Budget:
    """Sizes of one benchmark run; ``Budget()`` is the default, ``Budget.quick()`` the CI size."""

    # 2D sets: ShortcutMLP
    datasets_2d: tuple[str, ...] = tuple(TOY2D)
    mlp_hidden: int = 128
    mlp_depth: int = 3
    steps_2d: int = 1500
    batch_2d: int = 256
    lr_2d: float = 2e-3
    n_eval_2d: int = 4000  # samples scored against as many fresh data points
    # digits: ShortcutDiT (the demo's model and recipe)
    dit_hidden: int = 192
    dit_depth: int = 4
    dit_heads: int = 4
    dit_patch: int = 4
    steps_digits: int = 1200
    batch_digits: int = 128
    lr_digits: float = 2e-3
    samples_per_class: int = 100
    # both: half of each batch on self-consistency, targets from the live weights, EMA 0.995 evaluated
    bootstrap_fraction: float = 0.5
    ema_decay: float = 0.995
    ema_targets: bool = False
    warmup_steps: int = 50
    # guidance and fine-tuning
    cfg_scale: float = 1.5
    guidance_steps: tuple[int, ...] = (1, 4)
    finetune_steps: int = 400
    eval_every: int = 100  # fine-tuning curves: 1-step scores every this many steps
    sample_steps: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128)
    seed: int = 0
    sections: tuple[str, ...] = ("2d", "digits", "guidance", "finetune")

    @classmethod
    def quick(cls) -> Budget:
        """A tiny budget that runs every section in seconds (for CI; the numbers are noise)."""
        return cls(
            datasets_2d=("checkerboard", "8gaussians"),
            mlp_hidden=64,
            mlp_depth=1,
            steps_2d=200,
            batch_2d=128,
            n_eval_2d=500,
            dit_hidden=32,
            dit_depth=1,
            dit_heads=2,
            steps_digits=12,
            batch_digits=32,
            samples_per_class=5,
            finetune_steps=6,
            eval_every=3,
            warmup_steps=2,
            sample_steps=(1, 2, 4, 128),
        )


class AtStep(nn.Module):
    """``model`` conditioned on the fixed step size ``d`` whatever step the sampler asks for.

    The flow baseline learned only ``d = d_min``: ``sample(AtStep(flow, flow.min_step), steps=N)``
    takes N Euler steps of size 1/N with the velocity of the flow level.
    """

    def __init__(self, model: nn.Module, d: float):
        super().__init__()
        self.model, self.d = model, d
        self.num_classes = getattr(model, "num_classes", 0)
        self.min_step = getattr(model, "min_step", sf.steps.DEFAULT_MIN_STEP)

    def forward(self, x, t, d, y=None):
        return self.model(x, t, self.d, y)


def for_sampling(model: nn.Module, objective: str) -> nn.Module:
    """What to sample from: the shortcut model as it is, the flow model at its trained ``d_min``."""
    return model if objective == "shortcut" else AtStep(model, model.min_step)


def _train_config(budget: Budget, objective: str, steps: int, batch: int, lr: float, **shortcut) -> sf.TrainConfig:
    return sf.TrainConfig(
        batch_size=batch,
        lr=lr,
        warmup_steps=budget.warmup_steps,
        decay_steps=steps,
        ema_decay=budget.ema_decay,
        seed=budget.seed,
        progress=False,
        log_every=max(1, steps // 10),
        shortcut=sf.ShortcutConfig(
            objective=objective,
            ema_targets=budget.ema_targets,
            bootstrap_fraction=budget.bootstrap_fraction,
            **shortcut,
        ),
    )


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- 2D point sets
def run_2d(budget: Budget) -> tuple[dict, dict]:
    """Train both objectives on every 2D set; returns (results, samples at 1 and 128 steps for the pictures)."""
    results, pictures = {}, {}
    for name in budget.datasets_2d:
        data = sample_toy2d(name, 100_000, seed=budget.seed)
        reference = sample_toy2d(name, budget.n_eval_2d, seed=budget.seed + 1)
        floor = sliced_wasserstein(sample_toy2d(name, budget.n_eval_2d, seed=budget.seed + 2), reference)
        noise = torch.randn(budget.n_eval_2d, 2, generator=torch.Generator().manual_seed(budget.seed + 3))
        results[name] = {"floor": floor}
        pictures[name] = {"data": reference}
        for objective in OBJECTIVES:
            torch.manual_seed(budget.seed)
            model = sf.ShortcutMLP(dim=2, hidden_size=budget.mlp_hidden, depth=budget.mlp_depth)
            trainer = sf.Trainer(
                model, data, _train_config(budget, objective, budget.steps_2d, budget.batch_2d, budget.lr_2d)
            )
            start = time.perf_counter()
            trainer.fit(budget.steps_2d)
            seconds = time.perf_counter() - start
            sampler = for_sampling(trainer.ema_model, objective)
            swd = {}
            for steps in budget.sample_steps:
                x = sf.sample(sampler, noise=noise, steps=steps)
                swd[str(steps)] = sliced_wasserstein(x, reference, seed=budget.seed)
                if steps in (1, max(budget.sample_steps)):
                    pictures[name][f"{objective} {steps}"] = x
            results[name][objective] = {"swd": swd, "train_seconds": seconds}
            _log(
                f"2d {name} {objective}: {seconds:.0f} s, swd 1 step {swd['1']:.4f}, "
                f"{max(budget.sample_steps)} steps {swd[str(max(budget.sample_steps))]:.4f} (floor {floor:.4f})"
            )
    return results, pictures


# ---------------------------------------------------------------- digits
class DigitsJudge:
    """Scores digit samples: classifier accuracy on the requested class and FD of classifier features."""

    def __init__(self, budget: Budget, cache_dir: Path):
        x_real, _ = load_digits()
        self.classifier = load_or_train_digits_classifier(cache_dir, seed=budget.seed)
        with torch.no_grad():
            self.real = self.classifier.features(x_real)
        split = torch.randperm(len(x_real), generator=torch.Generator().manual_seed(budget.seed))
        half = len(x_real) // 2
        self.reference_fd = frechet_distance(self.real[split[:half]], self.real[split[half:]])
        self.labels = torch.arange(DIGITS_CLASSES).repeat_interleave(budget.samples_per_class)
        # the same noise for every model and step count
        self.noise = torch.randn(len(self.labels), 1, 8, 8, generator=torch.Generator().manual_seed(budget.seed + 1))

    def images(self, model: nn.Module, steps: int, cfg_scale: float | None = None) -> torch.Tensor:
        """Samples of every class (``samples_per_class`` each, class-major), clamped to [-1, 1]."""
        return sf.sample(model, noise=self.noise, steps=steps, y=self.labels, cfg_scale=cfg_scale).clamp(-1, 1)

    def score(self, model: nn.Module, steps: int, cfg_scale: float | None = None) -> dict:
        """``{"accuracy", "fd"}`` of ``steps``-step samples."""
        images = self.images(model, steps, cfg_scale)
        with torch.no_grad():
            feats = self.classifier.features(images)
        return {
            "accuracy": class_accuracy(self.classifier, images, self.labels),
            "fd": frechet_distance(feats, self.real),
        }


def _digits_model(budget: Budget) -> sf.ShortcutDiT:
    return sf.ShortcutDiT(
        input_size=8,
        in_channels=1,
        patch_size=budget.dit_patch,
        hidden_size=budget.dit_hidden,
        depth=budget.dit_depth,
        num_heads=budget.dit_heads,
        num_classes=DIGITS_CLASSES,
    )


def _curve_point(judge: DigitsJudge, model: nn.Module, step: int, seconds: float) -> dict:
    one = judge.score(model, 1)
    return {"step": step, "seconds": seconds, "accuracy_1": one["accuracy"], "fd_1": one["fd"]}


def _fit_with_curve(
    trainer: sf.Trainer, steps: int, judge: DigitsJudge, every: int, curve: list | None, sampler=lambda m: m
) -> float:
    """Train ``steps`` steps; when ``curve`` is a list, append 1-step scores every ``every`` steps."""
    seconds = 0.0
    done = 0
    while done < steps:
        chunk = min(every, steps - done) if curve is not None else steps
        start = time.perf_counter()
        trainer.fit(chunk)
        seconds += time.perf_counter() - start
        done += chunk
        if curve is not None:
            curve.append(_curve_point(judge, sampler(trainer.ema_model), done, seconds))
    return seconds


def train_digits(
    budget: Budget,
    judge: DigitsJudge,
    objective: str,
    curve: list | None = None,
    init: nn.Module | None = None,
    steps: int | None = None,
    **shortcut,
) -> tuple[sf.Trainer, float]:
    """Train a digits model (from scratch, or from ``init``); returns the trainer and the training seconds."""
    torch.manual_seed(budget.seed)
    model = _digits_model(budget) if init is None else init
    steps = budget.steps_digits if steps is None else steps
    x, y = load_digits()
    trainer = sf.Trainer(
        model, (x, y), _train_config(budget, objective, steps, budget.batch_digits, budget.lr_digits, **shortcut)
    )
    sampler = lambda m: for_sampling(m, objective)
    seconds = _fit_with_curve(trainer, steps, judge, budget.eval_every, curve, sampler)
    return trainer, seconds


def run_digits(budget: Budget, judge: DigitsJudge) -> tuple[dict, dict, dict]:
    """Both objectives on the digits; returns (results, the trained EMA models, the shortcut run's curve)."""
    results, models, curve = {"reference_fd": judge.reference_fd}, {}, []
    for objective in OBJECTIVES:
        want_curve = objective == "shortcut" and "finetune" in budget.sections
        trainer, seconds = train_digits(budget, judge, objective, curve if want_curve else None)
        sampler = for_sampling(trainer.ema_model, objective)
        scores = {str(s): judge.score(sampler, s) for s in budget.sample_steps}
        results[objective] = {"steps": scores, "train_seconds": seconds}
        models[objective] = trainer.ema_model
        _log(f"digits {objective}: {seconds:.0f} s, 1 step {scores['1']}, 128 steps {scores['128']}")
    return results, models, curve


def run_guidance(budget: Budget, judge: DigitsJudge, plain: nn.Module) -> dict:
    """No guidance, guidance at sampling, and guidance baked into the bootstrap targets (a second run)."""
    w = budget.cfg_scale
    trainer, seconds = train_digits(budget, judge, "shortcut", bootstrap_cfg_scale=w)
    rows = {}
    for steps in budget.guidance_steps:
        rows[str(steps)] = {
            "none": judge.score(plain, steps),
            "sampling": judge.score(plain, steps, cfg_scale=w),
            "baked": judge.score(trainer.ema_model, steps),
        }
        _log(f"guidance {steps} step(s): {rows[str(steps)]}")
    return {"cfg_scale": w, "steps": rows, "baked_train_seconds": seconds}


def run_finetune(budget: Budget, judge: DigitsJudge, flow: nn.Module, scratch_curve: list) -> dict:
    """Fine-tune the flow baseline into a shortcut model; its curve against the scratch run's."""
    init = sf.from_flow_model(flow, sf.ShortcutDiT)
    curve = [_curve_point(judge, init.eval(), 0, 0.0)]
    trainer, seconds = train_digits(
        budget, judge, "shortcut", curve=curve, init=init.train(), steps=budget.finetune_steps
    )
    final = {str(s): judge.score(trainer.ema_model, s) for s in (1, 128)}
    _log(f"finetune: {seconds:.0f} s, {final}")
    return {"finetune": curve, "scratch": scratch_curve, "finetune_seconds": seconds, "finetune_final": final}


def first_step_meeting(curve: list[dict], accuracy: float = 0.95, fd: float | None = None) -> int | None:
    """The first training step of ``curve`` whose 1-step accuracy reaches ``accuracy`` (and 1-step FD <= ``fd``)."""
    for point in curve:
        if point["accuracy_1"] >= accuracy and (fd is None or point["fd_1"] <= fd):
            return point["step"]
    return None


# ---------------------------------------------------------------- pictures
_COLORS = {"shortcut": (31, 119, 180), "flow": (230, 120, 20)}


def _font():
    return ImageFont.load_default()


def plot_vs_steps(panels: list[tuple[str, str, dict]], path: Path, steps: tuple[int, ...]) -> None:
    """One panel per data set: metric (log scale) against steps (log scale), one line per objective.

    ``panels`` holds ``(title, y label, {objective: {steps: value}})``.
    """
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    pw, ph, ml, mb, mt = 260, 190, 46, 30, 22
    legend_h = 22
    img = Image.new("RGB", (cols * pw, rows * ph + legend_h), "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    lx = [math.log2(s) for s in steps]
    for i, (title, ylabel, series) in enumerate(panels):
        ox, oy = (i % cols) * pw, (i // cols) * ph
        x0, x1, y0, y1 = ox + ml, ox + pw - 20, oy + mt, oy + ph - mb
        values = [v for s in series.values() for v in s.values() if v > 0]
        lo, hi = math.log10(min(values)), math.log10(max(values))
        lo, hi = math.floor(lo * 2) / 2, math.ceil(hi * 2) / 2
        if hi - lo < 0.5:
            hi = lo + 0.5
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
        draw.text((ox + ml, oy + 4), f"{title} ({ylabel})", fill=(0, 0, 0), font=font)

        def px(s, v, x0=x0, x1=x1, y0=y0, y1=y1, lo=lo, hi=hi):
            fx = (math.log2(s) - lx[0]) / max(lx[-1] - lx[0], 1e-9)
            fy = (math.log10(max(v, 1e-12)) - lo) / (hi - lo)
            return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

        for s in steps:  # x ticks: the step counts
            x, _ = px(s, 10**lo)
            draw.line([x, y1, x, y1 + 3], fill=(0, 0, 0))
            draw.text((x - 3 * len(str(s)), y1 + 5), str(s), fill=(0, 0, 0), font=font)
        for k in range(int(round(lo * 2)), int(round(hi * 2)) + 1):  # y ticks every half decade
            v = 10 ** (k / 2)
            _, y = px(steps[0], v)
            draw.line([x0 - 3, y, x0, y], fill=(0, 0, 0))
            draw.line([x0 + 1, y, x1 - 1, y], fill=(230, 230, 230))
            draw.text((ox + 2, y - 6), f"{v:.2g}", fill=(0, 0, 0), font=font)
        for objective, pts in series.items():
            xy = [px(int(s), v) for s, v in sorted(pts.items(), key=lambda kv: int(kv[0]))]
            draw.line(xy, fill=_COLORS[objective], width=2)
            for x, y in xy:
                draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=_COLORS[objective])
    ly = rows * ph + 4
    draw.text((8, ly), "sampling steps (log scale) ->", fill=(0, 0, 0), font=font)
    for j, (objective, label) in enumerate([("shortcut", "shortcut model"), ("flow", "flow matching (at d_min)")]):
        x = 220 + j * 200
        draw.line([x, ly + 6, x + 24, ly + 6], fill=_COLORS[objective], width=3)
        draw.text((x + 30, ly), label, fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def scatter_grid(pictures: dict, path: Path, cell: int = 150, extent: float = 3.0) -> None:
    """2D samples as dots: one row per data set, columns data / each objective at 1 and 128 steps."""
    names = list(pictures)
    columns = list(next(iter(pictures.values())))
    top, left = 16, 84
    img = Image.new("L", (left + len(columns) * (cell + 4), top + len(names) * (cell + 4)), 255)
    draw = ImageDraw.Draw(img)
    font = _font()
    for c, col in enumerate(columns):
        label = col if col == "data" else col.replace("shortcut", "shortcut,").replace("flow", "flow,") + " step(s)"
        draw.text((left + c * (cell + 4) + 4, 2), label, fill=0, font=font)
    for r, name in enumerate(names):
        draw.text((4, top + r * (cell + 4) + cell // 2 - 6), name, fill=0, font=font)
        for c, col in enumerate(columns):
            ox, oy = left + c * (cell + 4), top + r * (cell + 4)
            draw.rectangle([ox, oy, ox + cell - 1, oy + cell - 1], outline=160)
            pts = pictures[name][col].detach().cpu()
            px = ((pts[:, 0] + extent) / (2 * extent) * (cell - 1)).round().long()
            py = ((extent - pts[:, 1]) / (2 * extent) * (cell - 1)).round().long()
            keep = (px >= 0) & (px < cell) & (py >= 0) & (py < cell)
            for x, y in zip(px[keep].tolist(), py[keep].tolist(), strict=True):
                img.putpixel((ox + x, oy + y), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def digits_grid(judge: DigitsJudge, models: dict, path: Path, per_class: int = 2) -> None:
    """Digit samples: rows shortcut / flow at 1 and 128 steps, ``per_class`` samples of every class."""
    rows, labels = [], []
    spc = len(judge.labels) // DIGITS_CLASSES
    pick = torch.arange(DIGITS_CLASSES)[:, None] * spc + torch.arange(min(per_class, spc))[None]
    for objective in OBJECTIVES:
        for steps in (1, 128):
            images = judge.images(for_sampling(models[objective], objective), steps)
            rows.append(images[pick.flatten()])
            labels.append(f"{objective} {steps}")
    save_grid(torch.stack(rows), path, row_labels=labels, scale=3)


# ---------------------------------------------------------------- the report
def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


NOTES_MARKER = "<!-- notes: kept when the report is rewritten -->"


def aims(report: dict) -> list[tuple[str, bool, str]]:
    """The issue's aims as ``(aim, met, numbers)``, from a report."""
    rows = []
    b = report["budget"]
    many = str(max(b["sample_steps"]))
    for name, res in report.get("2d", {}).items():
        sc, fl = res["shortcut"]["swd"], res["flow"]["swd"]
        rows.append(
            (
                f"{name}: shortcut 1-step SWD <= 1.5x its {many}-step SWD",
                sc["1"] <= 1.5 * sc[many],
                f"{sc['1']:.3f} / {sc[many]:.3f} = {sc['1'] / sc[many]:.2f}x",
            )
        )
        rows.append(
            (
                f"{name}: shortcut 1-step SWD >= 10x better than flow matching at 1 step",
                fl["1"] >= 10 * sc["1"],
                f"{fl['1']:.3f} / {sc['1']:.3f} = {fl['1'] / sc['1']:.1f}x",
            )
        )
    if "digits" in report:
        sc = report["digits"]["shortcut"]["steps"]
        rows.append(
            ("digits: shortcut 1-step accuracy >= 0.95", sc["1"]["accuracy"] >= 0.95, f"{sc['1']['accuracy']:.3f}")
        )
        rows.append(
            (
                f"digits: shortcut 1-step FD <= 2x its {many}-step FD",
                sc["1"]["fd"] <= 2 * sc[many]["fd"],
                f"{sc['1']['fd']:.3f} / {sc[many]['fd']:.3f} = {sc['1']['fd'] / sc[many]['fd']:.2f}x",
            )
        )
    return rows


def write_markdown(report: dict, path: Path) -> None:
    """``quality.md``: the tables of ``report`` (as written to ``quality.json``) with the pictures.

    Text below ``NOTES_MARKER`` in an existing file is kept.
    """
    notes = ""
    if path.is_file() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    b = report["budget"]
    lines = [
        "# Sample quality against sampling steps: shortcut models against flow matching",
        "",
        f"Written by `python benchmarks/quality.py{' --quick' if report['quick'] else ''}` "
        f"on {report['machine']} with {report['threads']} thread(s), torch {report['torch']}; "
        f"total wall time **{report['wall_seconds']:.0f} s**.",
        "",
        "Every model is trained with the same budget, network and seed as its flow-matching twin "
        '(`ShortcutConfig(objective="flow")`); the flow model samples with N Euler steps of size 1/N '
        "conditioned on its trained step size d_min at every step. Settings: "
        f"`{json.dumps({k: v for k, v in b.items() if k != 'sections'})}`.",
        "",
        "![metric against steps](img/quality_vs_steps.png)",
        "",
    ]
    checked = aims(report)
    if checked:
        lines += ["## Aims", "", "| aim | met | measured |", "| --- | --- | --- |"]
        lines += [f"| {aim} | {'**met**' if met else '**missed**'} | {numbers} |" for aim, met, numbers in checked]
        lines.append("")
    steps = [str(s) for s in b["sample_steps"]]
    many = steps[-1]
    if "2d" in report:
        lines += [
            "## 2D point sets (`ShortcutMLP`)",
            "",
            f"Sliced Wasserstein distance (p = 2, 256 directions) between {b['n_eval_2d']} samples and as "
            "many fresh data points; *floor* is the distance between two independent draws of the data. "
            f"{b['steps_2d']} steps of batch {b['batch_2d']} for each model.",
            "",
        ]
        lines += [
            "| data | objective | train s | " + " | ".join(steps) + f" | 1 / {many} | floor |",
            "| --- | --- | ---: | " + " | ".join("---:" for _ in steps) + " | ---: | ---: |",
        ]
        for name, res in report["2d"].items():
            for objective in OBJECTIVES:
                swd = res[objective]["swd"]
                lines.append(
                    f"| {name} | {objective} | {res[objective]['train_seconds']:.0f} | "
                    + " | ".join(f"{swd[s]:.3f}" for s in steps)
                    + f" | {_ratio(swd['1'], swd[many])} | {res['floor']:.3f} |"
                )
        lines += [
            "",
            "| data | shortcut 1 step | flow 1 step | flow / shortcut at 1 step |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name, res in report["2d"].items():
            a, f = res["shortcut"]["swd"]["1"], res["flow"]["swd"]["1"]
            lines.append(f"| {name} | {a:.3f} | {f:.3f} | {_ratio(f, a)} |")
        lines += ["", "![2D samples](img/quality_2d.png)", ""]
    if "digits" in report:
        d = report["digits"]
        lines += [
            "## Digits (class-conditional `ShortcutDiT`)",
            "",
            f"{b['samples_per_class']} samples per class; accuracy is the share a digits classifier assigns "
            "to the requested class, FD the Fréchet distance of its features to all real digits "
            f"(two halves of the real digits: {d['reference_fd']:.3f}). {b['steps_digits']} steps of batch "
            f"{b['batch_digits']}.",
            "",
            "| objective | train s | metric | " + " | ".join(steps) + " |",
            "| --- | ---: | --- | " + " | ".join("---:" for _ in steps) + " |",
        ]
        for objective in OBJECTIVES:
            rows = d[objective]["steps"]
            for metric in ("accuracy", "fd"):
                lines.append(
                    f"| {objective} | {d[objective]['train_seconds']:.0f} | {metric} | "
                    + " | ".join(f"{rows[s][metric]:.3f}" for s in steps)
                    + " |"
                )
        sc = d["shortcut"]["steps"]
        lines += [
            "",
            f"Shortcut 1-step FD / {many}-step FD: {_ratio(sc['1']['fd'], sc[many]['fd'])}.",
            "",
            "![digit samples](img/quality_digits.png)",
            "",
        ]
    if "guidance" in report:
        g = report["guidance"]
        lines += [
            "## Guidance baked into the targets",
            "",
            f"Scale w = {g['cfg_scale']}. *none*: the shortcut model above without guidance; *sampling*: the "
            "same model with classifier-free guidance at sampling (two forwards per step); *baked*: a second "
            f"run with `bootstrap_cfg_scale={g['cfg_scale']}` (guided self-consistency targets at the "
            f"smallest bootstrap level), sampled without guidance (one forward per step; trained in "
            f"{g['baked_train_seconds']:.0f} s).",
            "",
            "| steps | guidance | forwards per step | accuracy | FD |",
            "| ---: | --- | ---: | ---: | ---: |",
        ]
        for s, row in g["steps"].items():
            for kind, forwards in (("none", 1), ("sampling", 2), ("baked", 1)):
                lines.append(f"| {s} | {kind} | {forwards} | {row[kind]['accuracy']:.3f} | {row[kind]['fd']:.3f} |")
        lines.append("")
    if "finetune" in report:
        ft = report["finetune"]
        lines += [
            "## Fine-tuning the flow model into a shortcut model",
            "",
            "`sf.from_flow_model(flow, sf.ShortcutDiT)` copies the d_min row of the step-size table into every "
            "row, "
            "so the model starts as the flow baseline above at every step size; it then trains with the "
            f"shortcut objective for {b['finetune_steps']} steps (learning-rate warmup and cosine decay over "
            f"those steps; {ft['finetune_seconds']:.0f} s). The shortcut run from scratch above, scored "
            "during its training, is the comparison (its decay spans its own "
            f"{b['steps_digits']} steps).",
            "",
            "| run | step | train s | 1-step accuracy | 1-step FD |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for run in ("finetune", "scratch"):
            for p in ft[run]:
                lines.append(f"| {run} | {p['step']} | {p['seconds']:.0f} | {p['accuracy_1']:.3f} | {p['fd_1']:.3f} |")
        fin = ft["finetune_final"]
        lines += [
            "",
            f"After fine-tuning: 1 step accuracy {fin['1']['accuracy']:.3f}, FD {fin['1']['fd']:.3f}; "
            f"128 steps accuracy {fin['128']['accuracy']:.3f}, FD {fin['128']['fd']:.3f} "
            f"(1 / 128: {_ratio(fin['1']['fd'], fin['128']['fd'])}).",
            "",
            "First step with 1-step accuracy >= 0.95: fine-tuning "
            f"{ft['first_accuracy']['finetune']}, from scratch {ft['first_accuracy']['scratch']}. "
            f"First step that also has a 1-step FD <= {ft['fd_target']:.3f} (2x the 128-step FD of the "
            f"model trained from scratch): fine-tuning {ft['first_aim']['finetune']}, from scratch "
            f"{ft['first_aim']['scratch']} (None: not within the run).",
            "",
        ]
    lines.append(NOTES_MARKER)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + (notes if notes else "\n"))


def run(budget: Budget, out: Path, work: Path, quick: bool = False) -> dict:
    """Run the sections of ``budget``; write ``out/quality.md``, ``out/quality.json`` and ``out/img/``."""
    start = time.perf_counter()
    report: dict = {
        "budget": asdict(budget),
        "quick": quick,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": f"{platform.machine()} CPU ({os.cpu_count()} cores)",
    }
    if "2d" in budget.sections:
        report["2d"], pictures = run_2d(budget)
        scatter_grid(pictures, out / "img" / "quality_2d.png")
    need_digits = {"digits", "guidance", "finetune"} & set(budget.sections)
    if need_digits:
        judge = DigitsJudge(budget, work)
        report["digits"], models, curve = run_digits(budget, judge)
        digits_grid(judge, models, out / "img" / "quality_digits.png")
        if "guidance" in budget.sections:
            report["guidance"] = run_guidance(budget, judge, models["shortcut"])
        if "finetune" in budget.sections:
            ft = run_finetune(budget, judge, models["flow"], curve)
            ft["first_accuracy"] = {k: first_step_meeting(ft[k]) for k in ("finetune", "scratch")}
            # the 1-step FD aim: at most 2x the 128-step FD of the model trained from scratch
            ft["fd_target"] = 2.0 * report["digits"]["shortcut"]["steps"][str(max(budget.sample_steps))]["fd"]
            ft["first_aim"] = {k: first_step_meeting(ft[k], fd=ft["fd_target"]) for k in ("finetune", "scratch")}
            report["finetune"] = ft
    report["wall_seconds"] = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, sort_keys=True)
    (out / "quality.json").write_text(text + "\n")
    report = json.loads(text)  # rendered from what the file holds, as --render does
    render(report, out)
    return report


def render(report: dict, out: Path) -> None:
    """Write ``out/quality.md`` and ``out/img/quality_vs_steps.png`` from a report (``quality.json``)."""
    panels = [(name, "SWD", {o: res[o]["swd"] for o in OBJECTIVES}) for name, res in report.get("2d", {}).items()]
    if "digits" in report:
        panels.append(
            ("digits", "FD", {o: {s: v["fd"] for s, v in report["digits"][o]["steps"].items()} for o in OBJECTIVES})
        )
    if panels:
        plot_vs_steps(panels, out / "img" / "quality_vs_steps.png", tuple(report["budget"]["sample_steps"]))
    write_markdown(report, out / "quality.md")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run; ``--quick`` for the CI size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", default=str(root / "docs"), help="where quality.md, quality.json and img/ go")
    parser.add_argument("--work", default=None, help="cache directory (digits classifier); default OUT/.quality")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every section in seconds")
    parser.add_argument("--only", nargs="+", choices=list(Budget.sections), help="run only these sections")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite quality.md and the plot from OUT/quality.json (no training)"
    )
    args = parser.parse_args(argv)
    if args.render:
        render(json.loads((Path(args.out) / "quality.json").read_text()), Path(args.out))
        return 0
    torch.set_num_threads(args.threads)
    budget = Budget.quick() if args.quick else Budget()
    budget = replace(budget, seed=args.seed, sections=tuple(args.only or budget.sections))
    out = Path(args.out)
    work = Path(args.work) if args.work else out / ".quality"
    report = run(budget, out, work, quick=args.quick)
    _log(f"wrote {out / 'quality.md'} in {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
