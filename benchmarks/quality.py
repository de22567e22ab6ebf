"""Sample quality against the number of sampling steps, and the improved training techniques, measured.

Trains, with the same budget (steps, batch, learning rate, seed) and the same
network, shortcut models and a plain flow-matching baseline
(``ShortcutConfig(objective="flow")``) on nine 2D point sets (``ShortcutMLP``,
scored by the sliced Wasserstein distance to fresh data; several seeds, mean
and spread) and on the 8x8 digits (class-conditional ``ShortcutDiT``, scored
by a digits classifier: accuracy, and the Fréchet distance of its features
against its floor, ``metrics.DigitsScorer``). Each model samples with 1 to 128
Euler steps; step counts that are not powers of two run the schedules of
``steps.step_schedule`` in both orders. The flow baseline is conditioned on its
trained step size ``d_min`` at every step, since it never learned the larger
ones.

The ablation trains the shortcut model with each improved training technique
of iSM (arXiv 2510.21250) alone, all together and in the best combination:
intrinsic guidance and the wavelet loss on the digits only (they need labels
and an image grid), minibatch OT pairing and twin EMA on both.

Two more digits experiments: guidance (none; at sampling, two forwards per
step; baked into the bootstrap targets with ``bootstrap_cfg_scale``; intrinsic,
one forward) and fine-tuning the flow baseline into a shortcut model
(``sf.from_flow_model``) against training from scratch.

MeanFlow (``ShortcutConfig(objective="meanflow")``, a model with
``step_embedding="sinusoidal"``) is a third objective beside them, with the
same budget and seeds, sampled with N equal steps. Its loss is the plain
squared error (``MEANFLOW_SETTINGS``), not the paper's adaptive weight.

Every training run is one job; ``--jobs N`` runs N at a time in worker
processes (one torch thread each). A finished job's result is kept in
``WORK/jobs/``, so a run that stops resumes where it was.

Writes ``OUT/quality.md`` (tables), ``OUT/quality.json`` (every number) and
pictures in ``OUT/img/``: ``quality_vs_steps.png``, ``quality_2d.png`` and
``quality_digits.png``. ``--quick`` runs everything at a tiny size (seconds,
for CI); its numbers mean nothing.

    python benchmarks/quality.py --jobs 2        # the default budget, writes docs/
    python benchmarks/quality.py --quick --out /tmp/q
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
from PIL import Image, ImageDraw, ImageFont

import shortcut_fast as sf
from shortcut_fast.checkpoint import atomic_file, write_json
from shortcut_fast.data.files import DIGITS_CLASSES, load_digits
from shortcut_fast.eval.images import save_grid
from shortcut_fast.eval.metrics import DigitsScorer, load_or_train_digits_classifier, sliced_wasserstein
from shortcut_fast.eval.toy2d import TOY2D, sample_toy2d
from shortcut_fast.steps import step_schedule

OBJECTIVES = ("shortcut", "flow", "meanflow")
# the report's rows per objective: (the configuration's label in the report, the objective)
OBJECTIVE_ROWS = (("baseline", "shortcut"), ("flow", "flow"), ("meanflow", "meanflow"))
# MeanFlow's settings here: the paper's, but for the loss weight. Its adaptive weight (p = 1) minimises about
# log ||Δ||² per row, which at 2 dims left the 1-step SWD 2-6x the squared error's (heavytail 0.285 against 0.063)
MEANFLOW_SETTINGS = (("adaptive_power", 0.0),)
TECHNIQUES = ("intrinsic_guidance", "wavelet", "ot_pairing", "twin_ema")
IMAGE_ONLY = ("intrinsic_guidance", "wavelet")  # need class labels / an image grid: digits only
ORDERS = ("descending", "ascending")


@dataclass
class Budget:
    """Sizes of one benchmark run; ``Budget()`` is the default, ``Budget.quick()`` the CI size."""

    # 2D sets: ShortcutMLP, every set at every seed
    datasets_2d: tuple[str, ...] = tuple(TOY2D)
    seeds: tuple[int, ...] = (0, 1, 2)  # the 2D runs; the digits runs use the first
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
    samples_per_class: int = 80  # the FD floor takes two disjoint real sets of this many per class
    # both: half of each batch on self-consistency, targets from the live weights, EMA 0.995 evaluated
    bootstrap_fraction: float = 0.5
    ema_decay: float = 0.995
    ema_targets: bool = False
    warmup_steps: int = 50
    # the techniques' settings (iSM); each is off in the baseline
    guidance_range: tuple[float, float] = (1.0, 3.0)  # intrinsic guidance: w drawn uniformly in this range
    wavelet_levels: int = 2  # Haar levels of the wavelet loss (8x8 digits: 8 -> 4 -> 2)
    target_ema_decay: float = 0.95  # twin EMA's fast EMA: a tenth of the evaluated EMA's lag of ~200 steps
    # guidance and fine-tuning
    cfg_scale: float = 1.5
    guidance_steps: tuple[int, ...] = (1, 4)
    finetune_steps: int = 400
    eval_every: int = 100  # fine-tuning curves: 1-step scores every this many steps
    sample_steps: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 16, 32, 64, 128)
    sections: tuple[str, ...] = ("2d", "digits", "guidance", "finetune")

    @classmethod
    def quick(cls) -> Budget:
        """A tiny budget that runs every section in seconds (for CI; the numbers are noise)."""
        return cls(
            datasets_2d=("checkerboard", "8gaussians"),
            seeds=(0, 1),
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
            sample_steps=(1, 2, 3, 4, 128),
        )


def variants(section: str) -> dict[str, tuple[str, ...]]:
    """The shortcut configurations of the ablation, by name: the techniques each turns on.

    The baseline, each technique alone and all together; the 2D sets take
    only the techniques that apply to unlabelled vectors, so there every
    combination is among these and the best one is picked from them.
    """
    usable = tuple(t for t in TECHNIQUES if section == "digits" or t not in IMAGE_ONLY)
    return {"baseline": (), **{t: (t,) for t in usable}, "all": usable}


def technique_settings(budget: Budget, techniques: tuple[str, ...]) -> tuple[dict, dict, dict]:
    """``(ShortcutConfig, TrainConfig, model)`` keyword arguments that turn on ``techniques``."""
    shortcut: dict = {}
    train: dict = {}
    model: dict = {}
    if "intrinsic_guidance" in techniques:
        shortcut["intrinsic_guidance"] = budget.guidance_range
        model["guidance_input"] = True
    if "wavelet" in techniques:
        shortcut["wavelet_levels"] = budget.wavelet_levels
    if "ot_pairing" in techniques:
        shortcut["ot_pairing"] = True
    if "twin_ema" in techniques:
        shortcut["ema_targets"] = True  # the targets come from the fast EMA
        train["target_ema_decay"] = budget.target_ema_decay
    return shortcut, train, model


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
    """What to sample from: the shortcut and MeanFlow models as they are, the flow model at its trained ``d_min``."""
    return AtStep(model, model.min_step) if objective == "flow" else model


def step_embedding(objective: str) -> str:
    """MeanFlow trains every step size in [0, 1]: its models embed d continuously."""
    return "sinusoidal" if objective == "meanflow" else "table"


def present(runs: dict) -> list[tuple[str, str]]:
    """The rows of ``OBJECTIVE_ROWS`` that ``runs`` holds (a report made before MeanFlow has no such row)."""
    return [(label, objective) for label, objective in OBJECTIVE_ROWS if label in runs]


@dataclass(frozen=True)
class Job:
    """One training run and its evaluation."""

    section: str  # "2d" or "digits"
    objective: str  # "shortcut", "flow" or "meanflow"
    variant: str = "baseline"  # a name of ``variants(section)``, "best", or "baked" (digits guidance)
    techniques: tuple[str, ...] = ()
    dataset: str = "digits"
    seed: int = 0
    extra: tuple[tuple[str, float], ...] = ()  # more ShortcutConfig settings (the baked guidance scale)
    save: bool = False  # keep the EMA model in WORK/models/ (the pictures and the fine-tuning read it)
    curve: bool = False  # score 1 step every eval_every steps during training (the fine-tuning comparison)
    init: str | None = None  # start from this saved model (fine-tuning), for finetune_steps steps

    @property
    def name(self) -> str:
        """A file name for this job."""
        return f"{self.section}-{self.dataset}-{self.objective}-{self.variant}-s{self.seed}"


def _train_config(budget: Budget, job: Job, steps: int, batch: int, lr: float) -> sf.TrainConfig:
    shortcut, train, _ = technique_settings(budget, job.techniques)
    shortcut = {"ema_targets": budget.ema_targets, **shortcut, **dict(job.extra)}
    return sf.TrainConfig(
        batch_size=batch,
        lr=lr,
        warmup_steps=min(budget.warmup_steps, steps // 2),
        decay_steps=steps,
        ema_decay=budget.ema_decay,
        seed=job.seed,
        progress=False,
        log_every=max(1, steps // 10),
        shortcut=sf.ShortcutConfig(objective=job.objective, bootstrap_fraction=budget.bootstrap_fraction, **shortcut),
        **train,
    )


def _log(msg: str) -> None:
    print(msg, flush=True)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


# ---------------------------------------------------------------- 2D point sets
def data_seeds(seed: int) -> dict[str, int]:
    """The seeds of one 2D run's draws: training data, the reference, the floor's second draw, the noise."""
    return {"data": 10 * seed, "reference": 10 * seed + 1, "floor": 10 * seed + 2, "noise": 10 * seed + 3}


def run_2d_job(budget: Budget, job: Job) -> dict:
    """Train one ``ShortcutMLP`` on ``job.dataset`` and score it at every step count (and both orders)."""
    seeds = data_seeds(job.seed)
    data = sample_toy2d(job.dataset, 100_000, seed=seeds["data"])
    reference = sample_toy2d(job.dataset, budget.n_eval_2d, seed=seeds["reference"])
    floor = sliced_wasserstein(sample_toy2d(job.dataset, budget.n_eval_2d, seed=seeds["floor"]), reference)
    noise = torch.randn(budget.n_eval_2d, 2, generator=torch.Generator().manual_seed(seeds["noise"]))
    torch.manual_seed(job.seed)
    model = sf.ShortcutMLP(
        dim=2, hidden_size=budget.mlp_hidden, depth=budget.mlp_depth, step_embedding=step_embedding(job.objective)
    )
    trainer = sf.Trainer(model, data, _train_config(budget, job, budget.steps_2d, budget.batch_2d, budget.lr_2d))
    start = time.perf_counter()
    trainer.fit(budget.steps_2d)
    seconds = time.perf_counter() - start
    sampler = for_sampling(trainer.ema_model, job.objective)
    swd, ascending, pictures = {}, {}, {}
    many = max(budget.sample_steps)
    for steps in budget.sample_steps:
        x = sf.sample(sampler, noise=noise, steps=steps)
        swd[str(steps)] = sliced_wasserstein(x, reference, seed=job.seed)
        if steps in (1, many):
            pictures[str(steps)] = x.tolist()
        if job.objective == "shortcut" and steps & (steps - 1):  # not a power of two: the other order too
            x = sf.sample(sampler, noise=noise, steps=step_schedule(steps, sampler.min_step, "ascending"))
            ascending[str(steps)] = sliced_wasserstein(x, reference, seed=job.seed)
    result = {"swd": swd, "floor": floor, "train_seconds": seconds}
    if ascending:
        result["swd_ascending"] = ascending
    if job.seed == budget.seeds[0] and job.variant == "baseline":
        result["pictures"] = pictures
        result["data"] = reference.tolist()
    return result


# ---------------------------------------------------------------- digits
class DigitsJudge:
    """Scores digit samples: the same labels and noise for every model (``metrics.DigitsScorer``)."""

    def __init__(self, budget: Budget, cache_dir: Path):
        classifier = load_or_train_digits_classifier(cache_dir, seed=0)
        self.labels = torch.arange(DIGITS_CLASSES).repeat_interleave(budget.samples_per_class)
        self.scorer = DigitsScorer(classifier, len(self.labels), seed=0)
        self.floor = self.scorer.floor
        self.noise = torch.randn(len(self.labels), 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def images(self, model: nn.Module, steps, cfg_scale: float | None = None) -> torch.Tensor:
        """Samples of every class (``samples_per_class`` each, class-major), clamped to [-1, 1]."""
        return sf.sample(model, noise=self.noise, steps=steps, y=self.labels, cfg_scale=cfg_scale).clamp(-1, 1)

    def score(self, model: nn.Module, steps, cfg_scale: float | None = None) -> dict:
        """``{"accuracy", "fd", "fd_over_floor"}`` of ``steps``-step samples."""
        return self.scorer.score(self.images(model, steps, cfg_scale), self.labels)


def _digits_model(budget: Budget, techniques: tuple[str, ...], objective: str) -> sf.ShortcutDiT:
    return sf.ShortcutDiT(
        step_embedding=step_embedding(objective),
        input_size=8,
        in_channels=1,
        patch_size=budget.dit_patch,
        hidden_size=budget.dit_hidden,
        depth=budget.dit_depth,
        num_heads=budget.dit_heads,
        num_classes=DIGITS_CLASSES,
        **technique_settings(budget, techniques)[2],
    )


def _curve_point(judge: DigitsJudge, model: nn.Module, step: int, seconds: float) -> dict:
    one = judge.score(model, 1)
    return {"step": step, "seconds": seconds, "accuracy_1": one["accuracy"], "fd_1": one["fd"]}


def run_digits_job(budget: Budget, job: Job, work: Path) -> dict:
    """Train one digits model (from scratch, or from ``job.init``) and score it."""
    judge = DigitsJudge(budget, work)
    torch.manual_seed(job.seed)
    if job.init is None:
        model, steps = _digits_model(budget, job.techniques, job.objective), budget.steps_digits
    else:
        flow = sf.load_model(work / "models" / job.init)
        model, steps = sf.from_flow_model(flow, sf.ShortcutDiT).train(), budget.finetune_steps
    x, y = load_digits()
    trainer = sf.Trainer(model, (x, y), _train_config(budget, job, steps, budget.batch_digits, budget.lr_digits))
    sampler = lambda: for_sampling(trainer.ema_model, job.objective)
    curve = [_curve_point(judge, model.eval(), 0, 0.0)] if job.init is not None else []
    model.train()
    seconds, done = 0.0, 0
    while done < steps:
        chunk = min(budget.eval_every, steps - done) if job.curve else steps
        start = time.perf_counter()
        trainer.fit(chunk)
        seconds += time.perf_counter() - start
        done += chunk
        if job.curve:
            curve.append(_curve_point(judge, sampler(), done, seconds))
    many = max(budget.sample_steps)
    counts = budget.sample_steps if job.init is None else (1, many)
    result: dict = {"steps": {str(s): judge.score(sampler(), s) for s in counts}, "train_seconds": seconds}
    result["floor"] = judge.floor
    if job.objective == "shortcut":
        result["ascending"] = {
            str(s): judge.score(sampler(), step_schedule(s, model.min_step, "ascending")) for s in counts if s & (s - 1)
        }
    if job.curve:
        result["curve"] = curve
    guided = "intrinsic_guidance" in job.techniques or (job.variant == "baseline" and job.objective == "shortcut")
    if guided:  # the guided scores of the guidance table; a model without w input takes two-forward CFG
        result["guided"] = {str(s): judge.score(sampler(), s, budget.cfg_scale) for s in budget.guidance_steps}
    if job.save:
        sf.save_model(trainer.ema_model, work / "models" / job.name)
    return result


def first_step_meeting(curve: list[dict], accuracy: float = 0.97, fd: float | None = None) -> int | None:
    """The first training step of ``curve`` whose 1-step accuracy reaches ``accuracy`` (and 1-step FD <= ``fd``)."""
    for point in curve:
        if point["accuracy_1"] >= accuracy and (fd is None or point["fd_1"] <= fd):
            return point["step"]
    return None


# ---------------------------------------------------------------- the jobs
def plan(budget: Budget, digits_best: tuple[str, ...] | None = None) -> list[Job]:
    """The jobs of ``budget``'s sections: the digits ones first (the longest), then the 2D ones.

    With ``digits_best`` (the second wave) only the jobs that need the first
    wave's results: the digits best combination when it is a new one, and the
    fine-tuning of the saved flow model.
    """
    sections = set(budget.sections)
    if digits_best is not None:
        jobs = []
        if "digits" in sections and digits_best not in variants("digits").values():
            jobs.append(Job("digits", "shortcut", "best", digits_best, seed=budget.seeds[0]))
        if "finetune" in sections:
            flow = Job("digits", "flow", seed=budget.seeds[0]).name
            jobs.append(Job("digits", "shortcut", "finetune", seed=budget.seeds[0], curve=True, init=flow))
        return jobs
    jobs = []
    if {"digits", "guidance", "finetune"} & sections:
        seed = budget.seeds[0]
        finetune = "finetune" in sections
        jobs.append(Job("digits", "flow", seed=seed, save=True))
        jobs.append(Job("digits", "shortcut", seed=seed, save=True, curve=finetune))
        jobs.append(Job("digits", "meanflow", seed=seed, extra=MEANFLOW_SETTINGS, save=True))
        if "digits" in sections:
            jobs += [
                Job("digits", "shortcut", name, techniques, seed=seed)
                for name, techniques in variants("digits").items()
                if name != "baseline"
            ]
        elif "guidance" in sections:
            jobs.append(Job("digits", "shortcut", "intrinsic_guidance", ("intrinsic_guidance",), seed=seed))
        if "guidance" in sections:
            jobs.append(
                Job("digits", "shortcut", "baked", seed=seed, extra=(("bootstrap_cfg_scale", budget.cfg_scale),))
            )
    if "2d" in sections:
        for seed in budget.seeds:
            for name in budget.datasets_2d:
                jobs.append(Job("2d", "flow", dataset=name, seed=seed))
                jobs.append(Job("2d", "meanflow", dataset=name, seed=seed, extra=MEANFLOW_SETTINGS))
                jobs += [
                    Job("2d", "shortcut", variant, techniques, dataset=name, seed=seed)
                    for variant, techniques in variants("2d").items()
                ]
    return jobs


def _settings(budget: dict) -> dict:
    """A budget (``asdict`` of one, or a report's) less its sections: what the results depend on."""
    return {k: v for k, v in budget.items() if k != "sections"}


def _machine() -> str:
    """The machine as the report names it."""
    return f"{platform.machine()} CPU ({os.cpu_count()} cores)"


def _job_key(budget: Budget, job: Job) -> str:
    """What a stored result depends on: the budget (less the sections) and the job."""
    text = json.dumps({"budget": _settings(asdict(budget)), "job": asdict(job)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_job(budget: Budget, job: Job, work: Path) -> dict:
    """Run ``job``, or read its stored result (``WORK/jobs/``) when the same job at the same budget finished."""
    path = work / "jobs" / f"{job.name}-{_job_key(budget, job)}.json"
    if path.is_file() and (not job.save or (work / "models" / job.name).is_dir()):
        return json.loads(path.read_text())
    result = run_2d_job(budget, job) if job.section == "2d" else run_digits_job(budget, job, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        write_json(tmp, result)
    return result


def _worker_init() -> None:
    torch.set_num_threads(1)


def run_jobs(budget: Budget, jobs: list[Job], work: Path, workers: int) -> dict[Job, dict]:
    """Every job's result; ``workers`` > 1 runs that many at once in fresh processes."""
    results: dict[Job, dict] = {}
    total = len(jobs)
    if workers <= 1:
        for i, job in enumerate(jobs, 1):
            results[job] = run_job(budget, job, work)
            _log(f"[{i}/{total}] {job.name}")
        return results
    context = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP can hang
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        futures = {pool.submit(run_job, budget, job, work): job for job in jobs}
        for i, future in enumerate(concurrent.futures.as_completed(futures), 1):
            job = futures[future]
            results[job] = future.result()
            _log(f"[{i}/{total}] {job.name}")
    return results


# ---------------------------------------------------------------- pictures
_COLORS = {"shortcut": (31, 119, 180), "flow": (230, 120, 20), "meanflow": (44, 160, 44)}
_LEGEND = {"shortcut": "shortcut model", "flow": "flow matching (at d_min)", "meanflow": "MeanFlow"}


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
    shown = list(dict.fromkeys(o for _, _, series in panels for o in series))
    for j, (objective, label) in enumerate((o, _LEGEND[o]) for o in shown):
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
        label = col if col == "data" else col.replace(" ", ", ") + " step(s)"
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
    for objective in models:
        for steps in (1, 128):
            images = judge.images(for_sampling(models[objective], objective), steps)
            rows.append(images[pick.flatten()])
            labels.append(f"{objective} {steps}")
    save_grid(torch.stack(rows), path, row_labels=labels, scale=3)


# ---------------------------------------------------------------- collecting the results
def collect(budget: Budget, results: dict[Job, dict]) -> dict:
    """The report's numbers from the jobs' results, keyed by data set / configuration / seed."""
    report: dict = {}
    for job, result in results.items():
        label = job.variant if job.objective == "shortcut" else job.objective
        if job.section == "2d":
            entry = report.setdefault("2d", {}).setdefault(job.dataset, {"runs": {}})
            entry["runs"].setdefault(label, {})[str(job.seed)] = result
        else:
            report.setdefault("digits", {"runs": {}})["runs"][label] = result
            report["digits"]["floor"] = result["floor"]
            if job.variant == "best":
                report["digits"]["best_techniques"] = list(job.techniques)
    for entry in report.get("2d", {}).values():
        entry["floor"] = _mean(r["floor"] for r in entry["runs"]["baseline"].values())
    return report


def mean_swd(entry: dict, label: str, steps: str, key: str = "swd") -> float:
    """The mean over seeds of one configuration's SWD at ``steps``."""
    return _mean(r[key][steps] for r in entry["runs"][label].values())


def spread_swd(entry: dict, label: str, steps: str, key: str = "swd") -> float:
    """The standard deviation over seeds (0 with one seed)."""
    values = [r[key][steps] for r in entry["runs"][label].values()]
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _geomean(values) -> float:
    values = list(values)
    return math.exp(sum(math.log(v) for v in values) / len(values))


def best_2d(report: dict) -> str:
    """The 2D configuration with the lowest 1-step SWD relative to the baseline (geometric mean over sets)."""
    sets = report["2d"].values()
    return min(variants("2d"), key=lambda v: _geomean(mean_swd(e, v, "1") / mean_swd(e, "baseline", "1") for e in sets))


def helpful_digits_techniques(report: dict) -> tuple[str, ...]:
    """The techniques that alone lowered the digits 1-step FD below the baseline's: the best combination's."""
    runs = report["digits"]["runs"]
    base = runs["baseline"]["steps"]["1"]["fd"]
    return tuple(t for t in TECHNIQUES if t in runs and runs[t]["steps"]["1"]["fd"] < base)


def best_digits(report: dict) -> str:
    """The digits configuration of the ablation with the lowest 1-step FD."""
    runs = report["digits"]["runs"]
    names = [v for v in (*variants("digits"), "best") if v in runs]
    return min(names, key=lambda v: runs[v]["steps"]["1"]["fd"])


# ---------------------------------------------------------------- the report
def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


NOTES_MARKER = "<!-- notes: kept when the report is rewritten -->"


def aims(report: dict, config: str) -> list[tuple[str, bool, str]]:
    """The issue's aims for one shortcut configuration as ``(aim, met, numbers)``."""
    rows = []
    many = str(max(report["budget"]["sample_steps"]))
    for name, entry in report.get("2d", {}).items():
        if config not in entry["runs"]:
            continue
        one, top = mean_swd(entry, config, "1"), mean_swd(entry, config, many)
        flow_one, flow_top = mean_swd(entry, "flow", "1"), mean_swd(entry, "flow", many)
        if "meanflow" in entry["runs"]:
            mf = mean_swd(entry, "meanflow", "1")
            rows.append((f"{name}: MeanFlow's 1-step SWD <= shortcut's", mf <= one, f"{mf:.3f} / {one:.3f}"))
        rows += [
            (
                f"{name}: 1-step SWD <= 1.3x its {many}-step SWD",
                one <= 1.3 * top,
                f"{one:.3f} / {top:.3f} = {_ratio(one, top)}",
            ),
            (
                f"{name}: 1-step SWD >= 10x better than flow at 1 step",
                flow_one >= 10 * one,
                f"{flow_one:.3f} / {one:.3f} = {_ratio(flow_one, one)}",
            ),
            (
                f"{name}: {many}-step SWD <= 1.1x flow's",
                top <= 1.1 * flow_top,
                f"{top:.3f} / {flow_top:.3f} = {_ratio(top, flow_top)}",
            ),
        ]
    runs = report.get("digits", {}).get("runs", {})
    if config in runs:
        sc, fl, floor = runs[config]["steps"], runs["flow"]["steps"], report["digits"]["floor"]
        if "meanflow" in runs:
            mf = runs["meanflow"]["steps"]["1"]["fd"]
            rows.append(
                (
                    "digits: MeanFlow's 1-step FD <= shortcut's",
                    mf <= sc["1"]["fd"],
                    f"{mf:.3f} / {sc['1']['fd']:.3f} = {_ratio(mf, sc['1']['fd'])}",
                )
            )
        rows += [
            ("digits: 1-step accuracy >= 0.97", sc["1"]["accuracy"] >= 0.97, f"{sc['1']['accuracy']:.3f}"),
            (
                "digits: 1-step FD <= 1.1x the floor",
                sc["1"]["fd"] <= 1.1 * floor,
                f"{sc['1']['fd']:.3f} / {floor:.3f} = {_ratio(sc['1']['fd'], floor)}",
            ),
            (
                f"digits: {many}-step FD <= 1.1x flow's",
                sc[many]["fd"] <= 1.1 * fl[many]["fd"],
                f"{sc[many]['fd']:.3f} / {fl[many]['fd']:.3f} = {_ratio(sc[many]['fd'], fl[many]['fd'])}",
            ),
        ]
    return rows


def _pm(mean: float, spread: float) -> str:
    return f"{mean:.3f} ± {spread:.3f}"


def _aims_lines(report: dict) -> list[str]:
    configs = ["baseline"]
    if "2d" in report:
        configs.append(report["best"]["2d"])
    if "digits" in report and "best" in report:
        configs.append(report["best"]["digits"])
    configs = list(dict.fromkeys(configs))
    table = {c: {aim: (met, numbers) for aim, met, numbers in aims(report, c)} for c in configs}
    names = list(dict.fromkeys(aim for c in configs for aim in table[c]))
    lines = [
        "## Aims",
        "",
        "Each configuration is one setting for every set (seed means), with no tuning for any single set; "
        "*best* configurations are the ablation's (below). A blank cell: the configuration was not run there.",
        "",
        "| aim | " + " | ".join(configs) + " |",
        "| --- | " + " | ".join("---" for _ in configs) + " |",
    ]
    for aim in names:
        cells = []
        for c in configs:
            if aim in table[c]:
                met, numbers = table[c][aim]
                cells.append(f"{'**met**' if met else '**missed**'} {numbers}")
            else:
                cells.append("")
        lines.append(f"| {aim} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _lines_2d(report: dict) -> list[str]:
    b = report["budget"]
    steps = [str(s) for s in b["sample_steps"]]
    many = steps[-1]
    lines = [
        "## 2D point sets (`ShortcutMLP`)",
        "",
        f"Sliced Wasserstein distance (p = 2, 256 directions) between {b['n_eval_2d']} samples and as many fresh "
        f"data points, mean ± standard deviation over seeds {b['seeds']}; *floor* is the distance between two "
        f"independent draws of the data. {b['steps_2d']} steps of batch {b['batch_2d']} for each model; step "
        "counts that are not powers of two run large steps first.",
        "",
        "| data | objective | train s | " + " | ".join(steps) + f" | 1 / {many} | floor |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in steps) + " | ---: | ---: |",
    ]
    for name, entry in report["2d"].items():
        for label, objective in present(entry["runs"]):
            seconds = _mean(r["train_seconds"] for r in entry["runs"][label].values())
            cells = [_pm(mean_swd(entry, label, s), spread_swd(entry, label, s)) for s in steps]
            ratio = _ratio(mean_swd(entry, label, "1"), mean_swd(entry, label, many))
            lines.append(
                f"| {name} | {objective} | {seconds:.0f} | "
                + " | ".join(cells)
                + f" | {ratio} | {entry['floor']:.3f} |"
            )
    lines += ["", "![2D samples](img/quality_2d.png)", ""]
    # the ablation
    names = list(variants("2d"))
    lines += [
        "### Ablation on the 2D sets",
        "",
        "The shortcut model with each technique that applies to unlabelled 2D vectors (minibatch OT pairing, twin "
        "EMA), and both. Seed means; *vs baseline* is the 1-step SWD over the baseline's.",
        "",
        f"| data | configuration | train s | 1 step | 4 steps | {many} steps | 1 / {many} | vs baseline at 1 step |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in report["2d"].items():
        for v in names:
            seconds = _mean(r["train_seconds"] for r in entry["runs"][v].values())
            one, four, top = (mean_swd(entry, v, s) for s in ("1", "4", many))
            lines.append(
                f"| {name} | {v} | {seconds:.0f} | {_pm(one, spread_swd(entry, v, '1'))} | {four:.3f} | "
                f"{_pm(top, spread_swd(entry, v, many))} | {_ratio(one, top)} | "
                f"{_ratio(one, mean_swd(entry, 'baseline', '1'))} |"
            )
    sets = list(report["2d"].values())
    lines += [
        "",
        "Geometric means over the sets, relative to the baseline:",
        "",
        f"| configuration | 1 step | {many} steps |",
        "| --- | ---: | ---: |",
    ]
    for v in names:
        g1 = _geomean(mean_swd(e, v, "1") / mean_swd(e, "baseline", "1") for e in sets)
        gt = _geomean(mean_swd(e, v, many) / mean_swd(e, "baseline", many) for e in sets)
        lines.append(f"| {v} | {g1:.3f} | {gt:.3f} |")
    lines += ["", f"Best at 1 step: **{report['best']['2d']}**.", ""]
    # the order of the steps
    odd = [s for s in steps if int(s) & (int(s) - 1)]
    if odd:
        lines += [
            "### The order of unequal steps",
            "",
            "Step counts that are not powers of two, as `step_schedule` composes them (3 steps: 1/2, 1/4, 1/4), "
            "large steps first (*descending*, the default) or small steps first (*ascending*); baseline shortcut "
            "model, geometric mean of the SWD over sets and seeds, and the share of (set, seed) pairs where "
            "descending scored lower.",
            "",
            "| steps | descending | ascending | descending lower |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for s in odd:
            pairs = [(r["swd"][s], r["swd_ascending"][s]) for e in sets for r in e["runs"]["baseline"].values()]
            wins = sum(d < a for d, a in pairs)
            lines.append(
                f"| {s} | {_geomean(d for d, _ in pairs):.4f} | {_geomean(a for _, a in pairs):.4f} | "
                f"{wins} of {len(pairs)} |"
            )
        lines.append("")
    return lines


def _lines_digits(report: dict) -> list[str]:
    b = report["budget"]
    d = report["digits"]
    runs = d["runs"]
    steps = [str(s) for s in b["sample_steps"]]
    many = steps[-1]
    lines = [
        "## Digits (class-conditional `ShortcutDiT`)",
        "",
        f"{b['samples_per_class']} samples per class; accuracy is the share a digits classifier assigns to the "
        f"requested class, FD the Fréchet distance of its features to {10 * b['samples_per_class']} real digits; "
        f"the *floor*, the FD between two disjoint sets of that many real digits, is {d['floor']:.3f}. "
        f"{b['steps_digits']} steps of batch {b['batch_digits']}, seed {b['seeds'][0]}.",
        "",
        "| objective | train s | metric | " + " | ".join(steps) + " |",
        "| --- | ---: | --- | " + " | ".join("---:" for _ in steps) + " |",
    ]
    for label, objective in present(runs):
        rows = runs[label]["steps"]
        for metric in ("accuracy", "fd", "fd_over_floor"):
            lines.append(
                f"| {objective} | {runs[label]['train_seconds']:.0f} | {metric} | "
                + " | ".join(f"{rows[s][metric]:.3f}" for s in steps)
                + " |"
            )
    asc = runs["baseline"].get("ascending", {})
    if asc:
        lines += [
            "",
            "Unequal steps in the other order (small steps first), shortcut model, FD: "
            + ", ".join(
                f"{s} steps {asc[s]['fd']:.3f} (descending {runs['baseline']['steps'][s]['fd']:.3f})" for s in asc
            )
            + ".",
        ]
    lines += ["", "![digit samples](img/quality_digits.png)", ""]
    names = [v for v in (*variants("digits"), "best") if v in runs]
    if len(names) > 1:
        best = d.get("best_techniques")
        lines += [
            "### Ablation on the digits",
            "",
            "Intrinsic guidance samples here at w = 1 (no guidance; its guided scores are in the guidance table). "
            + (
                f"*best*: the techniques that alone beat the baseline's 1-step FD, together ({', '.join(best)})."
                if best
                else ""
            ),
            "",
            "| configuration | train s | 1-step accuracy | 1-step FD | 1-step FD / floor | 4-step FD | "
            f"{many}-step FD |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for v in names:
            r = runs[v]["steps"]
            lines.append(
                f"| {v} | {runs[v]['train_seconds']:.0f} | {r['1']['accuracy']:.3f} | {r['1']['fd']:.3f} | "
                f"{r['1']['fd_over_floor']:.2f} | {r['4']['fd']:.3f} | {r[many]['fd']:.3f} |"
            )
        lines += ["", f"Best at 1 step: **{report['best']['digits']}**.", ""]
    return lines


def _lines_guidance(report: dict) -> list[str]:
    b = report["budget"]
    runs = report["digits"]["runs"]
    w = b["cfg_scale"]
    ig = next((v for v in ("intrinsic_guidance", "all") if v in runs), None)
    lines = [
        "## Guidance",
        "",
        f"Scale w = {w}. *none*: the baseline shortcut model; *sampling*: the same model with classifier-free "
        f"guidance at sampling (two forwards per step); *baked*: a run with `bootstrap_cfg_scale={w}` (guided "
        "self-consistency targets at the smallest bootstrap level), one forward; *intrinsic*: the run with "
        f"`intrinsic_guidance={tuple(b['guidance_range'])}`, w given as its input, one forward.",
        "",
        "| steps | guidance | forwards per step | accuracy | FD | FD / floor |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for s in (str(s) for s in b["guidance_steps"]):
        rows = [("none", 1, runs["baseline"]["steps"][s]), ("sampling", 2, runs["baseline"]["guided"][s])]
        rows.append(("baked", 1, runs["baked"]["steps"][s]))
        if ig is not None:
            rows += [
                (f"intrinsic, w = 1 ({ig})", 1, runs[ig]["steps"][s]),
                (f"intrinsic ({ig})", 1, runs[ig]["guided"][s]),
            ]
        for kind, forwards, r in rows:
            lines.append(
                f"| {s} | {kind} | {forwards} | {r['accuracy']:.3f} | {r['fd']:.3f} | {r['fd_over_floor']:.2f} |"
            )
    return [*lines, ""]


def _lines_finetune(report: dict) -> list[str]:
    b = report["budget"]
    runs = report["digits"]["runs"]
    ft, scratch = runs["finetune"], runs["baseline"]
    many = str(max(b["sample_steps"]))
    lines = [
        "## Fine-tuning the flow model into a shortcut model",
        "",
        "`sf.from_flow_model(flow, sf.ShortcutDiT)` copies the d_min row of the step-size table into every row, so "
        "the model starts as the flow baseline above at every step size; it then trains with the shortcut "
        f"objective for {b['finetune_steps']} steps (learning-rate warmup and cosine decay over those steps; "
        f"{ft['train_seconds']:.0f} s). The shortcut run from scratch above, scored during its training, is the "
        f"comparison (its decay spans its own {b['steps_digits']} steps).",
        "",
        "| run | step | train s | 1-step accuracy | 1-step FD |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for run, result in (("finetune", ft), ("scratch", scratch)):
        for p in result.get("curve", []):
            lines.append(f"| {run} | {p['step']} | {p['seconds']:.0f} | {p['accuracy_1']:.3f} | {p['fd_1']:.3f} |")
    fin = ft["steps"]
    lines += [
        "",
        f"After fine-tuning: 1 step accuracy {fin['1']['accuracy']:.3f}, FD {fin['1']['fd']:.3f}; {many} steps "
        f"accuracy {fin[many]['accuracy']:.3f}, FD {fin[many]['fd']:.3f}.",
        "",
    ]
    floor = report["digits"]["floor"]
    first = {run: first_step_meeting(r.get("curve", [])) for run, r in (("fine-tuning", ft), ("from scratch", scratch))}
    aim = {
        run: first_step_meeting(r.get("curve", []), fd=1.1 * floor)
        for run, r in (("fine-tuning", ft), ("from scratch", scratch))
    }
    lines += [
        "First step with a 1-step accuracy >= 0.97: "
        + ", ".join(f"{run} {step}" for run, step in first.items())
        + f"; that also has a 1-step FD <= 1.1x the floor ({1.1 * floor:.3f}): "
        + ", ".join(f"{run} {step}" for run, step in aim.items())
        + " (None: not within the run).",
        "",
    ]
    return lines


def write_markdown(report: dict, path: Path) -> None:
    """``quality.md``: the tables of ``report`` (as written to ``quality.json``) with the pictures.

    Text below ``NOTES_MARKER`` in an existing file is kept.
    """
    notes = ""
    if path.is_file() and NOTES_MARKER in path.read_text():
        notes = path.read_text().split(NOTES_MARKER, 1)[1]
    b = report["budget"]
    lines = [
        "# Sample quality against sampling steps: shortcut models, flow matching and the improved techniques",
        "",
        f"Written by `python benchmarks/quality.py{' --quick' if report['quick'] else ''}` on {report['machine']}, "
        f"{report['jobs']} job(s) at a time with one torch thread each, torch {report['torch']}; total wall time "
        f"**{report['wall_seconds']:.0f} s**.",
        "",
        *(
            f"The {objective} rows were trained later and merged in by `quality.py --add {objective}` on "
            f"{a['machine']}, {a['jobs']} job(s) at a time, torch {a['torch']}, in {a['wall_seconds']:.0f} s; the "
            "pictures of samples predate them.\n"
            for objective, a in report.get("added", {}).items()
        ),
        "Every model is trained with the same budget, network and seed as its flow-matching twin "
        '(`ShortcutConfig(objective="flow")`); the flow model samples with N Euler steps of size 1/N conditioned '
        'on its trained step size d_min at every step. MeanFlow (`objective="meanflow"`, a model with '
        '`step_embedding="sinusoidal"`, the paper\'s settings but the plain squared error, `adaptive_power=0`) '
        "samples with N equal steps. Settings: "
        f"`{json.dumps(_settings(b))}`.",
        "",
        "![metric against steps](img/quality_vs_steps.png)",
        "",
    ]
    lines += _aims_lines(report)
    if "2d" in report:
        lines += _lines_2d(report)
    runs = report.get("digits", {}).get("runs", {})
    if "baseline" in runs:
        lines += _lines_digits(report)
    if "baked" in runs:
        lines += _lines_guidance(report)
    if "finetune" in runs:
        lines += _lines_finetune(report)
    lines.append(NOTES_MARKER)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + (notes if notes else "\n"))


def run(budget: Budget, out: Path, work: Path, workers: int = 1, quick: bool = False) -> dict:
    """Run the sections of ``budget``; write ``out/quality.md``, ``out/quality.json`` and ``out/img/``."""
    start = time.perf_counter()
    if {"digits", "guidance", "finetune"} & set(budget.sections):
        load_or_train_digits_classifier(work, seed=0)  # once, before the workers read the cache
    results = run_jobs(budget, plan(budget), work, workers)
    report = collect(budget, results)
    if "digits" in report:
        results.update(run_jobs(budget, plan(budget, helpful_digits_techniques(report)), work, workers))
        report = collect(budget, results)
    report["best"] = {}
    if "2d" in report:
        report["best"]["2d"] = best_2d(report)
    if "digits" in budget.sections and "digits" in report:
        report["best"]["digits"] = best_digits(report)
    pictures = {}
    for name, entry in report.get("2d", {}).items():
        first = {o: entry["runs"][label][str(budget.seeds[0])] for label, o in present(entry["runs"])}
        pictures[name] = {"data": torch.tensor(first["shortcut"]["data"])}
        for objective, r in first.items():
            r.pop("data")
            for steps, points in r.pop("pictures").items():
                pictures[name][f"{objective} {steps}"] = torch.tensor(points)
    if pictures:
        scatter_grid(pictures, out / "img" / "quality_2d.png")
    if "digits" in report:
        judge = DigitsJudge(budget, work)
        models = {
            o: sf.load_model(work / "models" / Job("digits", o, seed=budget.seeds[0]).name)
            for _, o in present(report["digits"]["runs"])
        }
        digits_grid(judge, models, out / "img" / "quality_digits.png")
    report.update(
        budget=asdict(budget),
        quick=quick,
        jobs=workers,
        torch=torch.__version__,
        machine=_machine(),
        wall_seconds=time.perf_counter() - start,
    )
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=1, sort_keys=True)
    (out / "quality.json").write_text(text + "\n")
    report = json.loads(text)  # rendered from what the file holds, as --render does
    render(report, out)
    return report


def add_rows(budget: Budget, out: Path, work: Path, objectives: tuple[str, ...], workers: int = 1) -> dict:
    """Train only the rows of ``objectives`` (one row each: "flow", "meanflow") and merge them into the report
    at ``out/quality.json``, which must be of the same budget; the rest of the report and its pictures stay.

    For a row added after a full run (MeanFlow after the ablation), at the cost of its own jobs alone.
    """
    path = out / "quality.json"
    if not path.is_file():
        raise ValueError(f"--add merges into an earlier report, and {path} does not exist: run without --add first")
    report = json.loads(path.read_text())
    settings = _settings(json.loads(json.dumps(asdict(budget))))  # tuples as the report's lists
    stored = _settings(report["budget"])
    if settings != stored:
        changed = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
        raise ValueError(f"{path} was made with another budget (differs in {changed}): its rows would not compare")
    start = time.perf_counter()
    if "digits" in budget.sections:
        load_or_train_digits_classifier(work, seed=0)
    jobs = [j for j in plan(budget) if j.objective in objectives and j.section in budget.sections]
    results = run_jobs(budget, jobs, work, workers)
    for job, result in results.items():
        result.pop("pictures", None)
        result.pop("data", None)
        if job.section == "2d":
            report["2d"][job.dataset]["runs"].setdefault(job.objective, {})[str(job.seed)] = result
        else:
            report["digits"]["runs"][job.objective] = result
    for objective in objectives:
        report.setdefault("added", {})[objective] = {
            "wall_seconds": time.perf_counter() - start,
            "jobs": workers,
            "torch": torch.__version__,
            "machine": _machine(),
        }
    text = json.dumps(report, indent=1, sort_keys=True)
    path.write_text(text + "\n")
    report = json.loads(text)
    render(report, out)
    return report


def render(report: dict, out: Path) -> None:
    """Write ``out/quality.md`` and ``out/img/quality_vs_steps.png`` from a report (``quality.json``)."""
    steps = [str(s) for s in report["budget"]["sample_steps"]]
    panels = [
        (
            name,
            "SWD",
            {o: {s: mean_swd(e, label, s) for s in steps} for label, o in present(e["runs"])},
        )
        for name, e in report.get("2d", {}).items()
    ]
    runs = report.get("digits", {}).get("runs", {})
    if "baseline" in runs:
        panels.append(
            (
                "digits",
                "FD",
                {o: {s: runs[label]["steps"][s]["fd"] for s in steps} for label, o in present(runs)},
            )
        )
    if panels:
        plot_vs_steps(panels, out / "img" / "quality_vs_steps.png", tuple(report["budget"]["sample_steps"]))
    write_markdown(report, out / "quality.md")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run; ``--quick`` for the CI size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", default=str(root / "docs"), help="where quality.md, quality.json and img/ go")
    parser.add_argument("--work", default=None, help="cache directory (classifier, job results); default OUT/.quality")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: every section in seconds")
    parser.add_argument("--only", nargs="+", choices=list(Budget.sections), help="run only these sections")
    parser.add_argument("--jobs", type=int, default=1, help="training runs at a time, one thread each (default 1)")
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="2D seeds (default 0 1 2); digits: the first"
    )
    parser.add_argument(
        "--add",
        nargs="+",
        choices=("flow", "meanflow"),
        help="train only these rows and merge them into OUT/quality.json (same budget); its other rows stay",
    )
    parser.add_argument(
        "--render", action="store_true", help="only rewrite quality.md and the plot from OUT/quality.json (no training)"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.render:
        render(json.loads((Path(args.out) / "quality.json").read_text()), Path(args.out))
        return 0
    torch.set_num_threads(1)
    budget = Budget.quick() if args.quick else Budget()
    budget = replace(budget, sections=tuple(args.only or budget.sections))
    if args.seeds:
        budget = replace(budget, seeds=tuple(args.seeds))
    out = Path(args.out)
    work = Path(args.work) if args.work else out / ".quality"
    if args.add:
        try:
            report = add_rows(budget, out, work, tuple(args.add), args.jobs)
        except ValueError as e:
            parser.error(str(e))
        seconds = report["added"][args.add[0]]["wall_seconds"]
        _log(f"added {', '.join(args.add)} to {out / 'quality.json'} in {seconds:.0f} s")
        return 0
    report = run(budget, out, work, args.jobs, quick=args.quick)
    _log(f"wrote {out / 'quality.md'} in {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
