"""Real images, real FID: Fashion-MNIST in pixels and in the latents of a VAE trained here.

    python benchmarks/real_data.py --jobs 2            # the full run (planned at about 3 hours on 2 cores); resumes
    python benchmarks/real_data.py --small --spaces pixels --models shortcut flow shortcut+ot  # ~1.5 h, 2 AVX2 cores
    python benchmarks/real_data.py --quick             # every stage at a toy size, a substitute FID network

Same budget and seeds for every model of a table:

* **pixels** (1x28x28, patch 4, 49 tokens): a shortcut DiT, a flow-matching
  DiT, the shortcut DiT with minibatch OT pairing, and a MeanFlow DiT (the
  same network with continuous step sizes);
* **latents**: a diffusers ``AutoencoderKL`` trained on Fashion-MNIST here
  (28x28 RGB of the grey images -> 4x7x7), the training set written as PNG
  class folders and encoded with ``shortcut-fast encode``'s ``encode_folder``,
  then a shortcut, a flow-matching and a MeanFlow DiT (patch 1, 49 tokens) on the shards;
* class-conditional samples at 1, 2, 4, 8 and 128 steps, without and with
  guidance, scored by FID against the 10,000 test images (N samples per row,
  the same N in every row, classes balanced); the floors: N real training
  images (the real-data floor) and N VAE reconstructions (the latent path's).

The FID network is the TF-FID Inception-v3 of ``shortcut_fast.eval.fid``.
Absolute values compare with the literature only as far as that network
matches the TF graph; ratios between rows of one table are exact.
Results: ``OUT/real_data.json`` and the tables ``OUT/real-data-table.md``, with sample grids in
``OUT/img/``. Every job stores its result under ``--work``, and the trainers
checkpoint, so a stopped run resumes where it was.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import shortcut_fast as sf
from shortcut_fast.checkpoint import atomic_file, write_json
from shortcut_fast.data.idx import load_idx_dir
from shortcut_fast.data.latents import decode, encode_folder, load_vae
from shortcut_fast.eval import fid as fidlib
from shortcut_fast.eval.images import save_grid
from shortcut_fast.eval.metrics import gaussian_frechet_distance

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
MEANFLOW = {"objective": "meanflow"}  # the paper's default settings, on a model with continuous step sizes
PIXEL_MODELS = {
    "shortcut": {},
    "flow": {"objective": "flow"},
    "shortcut+ot": {"ot_pairing": True},
    "meanflow": MEANFLOW,
}
LATENT_MODELS = {"shortcut": {}, "flow": {"objective": "flow"}, "meanflow": MEANFLOW}


@dataclass(frozen=True)
class Budget:
    """Sizes of one run; ``quick()`` shrinks every one of them."""

    train_steps: int = 5000  # per DiT
    batch: int = 128
    lr: float = 3e-4
    # The EMA that is sampled lags about 1 / (1 - decay) steps: 0.999 (the paper's, for 400k steps) leaves a run of
    # a few thousand steps near its initial weights, whose velocity is zero (the samples are the noise). The
    # self-consistency targets come from the live weights for the same reason (benchmarks/quality.py's choice).
    ema_decay: float = 0.995
    ema_targets: bool = False
    hidden: int = 128
    depth: int = 4
    heads: int = 2
    vae_steps: int = 3000
    vae_batch: int = 64
    n_fid: int = 1000  # samples per row, and real images per floor
    n_reference: int = 10_000  # test images of the reference statistics
    train_images: int = 60_000
    sample_steps: tuple[int, ...] = (1, 2, 4, 8, 128)
    cfg_scale: float = 1.5
    substitute_fid: bool = False  # quick: a small fixed random network instead of Inception

    @staticmethod
    def small() -> Budget:
        """A fifth of the training and a third of the samples: for a 2-core machine without AVX-512."""
        return Budget(train_steps=1000, n_fid=300, n_reference=2000)

    @staticmethod
    def quick() -> Budget:
        return Budget(
            train_steps=3,
            batch=8,
            hidden=32,
            depth=1,
            heads=2,
            vae_steps=2,
            vae_batch=8,
            n_fid=12,
            n_reference=24,
            train_images=64,
            sample_steps=(1, 2),
            substitute_fid=True,
        )


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------- data and the FID network
def load_split(budget: Budget, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``split`` as images (N, 1, 28, 28) in [-1, 1] and labels (N,), cut to the budget."""
    images, labels = load_idx_dir(FASHION_MNIST, split)
    keep = budget.train_images if split == "train" else budget.n_reference
    return images[:keep], labels[:keep]


class SubstituteNetwork(torch.nn.Module):
    """``--quick``'s stand-in for Inception: fixed random convolutions, pooled (the plumbing, not the numbers)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * 0.1)
            self.conv.bias.zero_()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(images.float() / 127.5 - 1)).mean((2, 3))


def fid_network(budget: Budget) -> fidlib.Extractor:
    """The extractor every FID of the run uses."""
    return SubstituteNetwork().eval() if budget.substitute_fid else fidlib.load_fid_network()


def stats_of(images: torch.Tensor, network: fidlib.Extractor) -> tuple[np.ndarray, np.ndarray]:
    return fidlib.feature_stats(images, network, batch_size=50)


# ---------------------------------------------------------------- jobs
@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` in train, vae, encode, evaluate, floor; ``space`` pixels or latents."""

    kind: str
    space: str
    name: str = ""
    seed: int = 0

    @property
    def label(self) -> str:
        return "-".join(p for p in (self.kind, self.space, self.name.replace("+", "_")) if p)


def _key(budget: Budget, job: Job) -> str:
    text = json.dumps({"budget": asdict(budget), "job": asdict(job)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dit(budget: Budget, space: str, objective: str = "shortcut") -> sf.ShortcutDiT:
    torch.manual_seed(0)
    if space == "pixels":
        shape = dict(input_size=28, in_channels=1, patch_size=4)
    else:
        shape = dict(input_size=7, in_channels=4, patch_size=1)
    return sf.ShortcutDiT(
        **shape,
        hidden_size=budget.hidden,
        depth=budget.depth,
        num_heads=budget.heads,
        num_classes=10,
        step_embedding="sinusoidal" if objective == "meanflow" else "table",
    )


def train_dit(budget: Budget, job: Job, work: Path) -> dict:
    """Train one DiT of ``job`` (resuming from its checkpoints); save its EMA model."""
    data = load_split(budget, "train") if job.space == "pixels" else latent_data(work)
    run_dir = work / "runs" / job.label
    settings = PIXEL_MODELS[job.name] if job.space == "pixels" else LATENT_MODELS[job.name]
    shortcut = sf.ShortcutConfig(**settings, ema_targets=budget.ema_targets)
    config = sf.TrainConfig(
        batch_size=budget.batch,
        lr=budget.lr,
        ema_decay=budget.ema_decay,
        seed=job.seed,
        warmup_steps=min(500, budget.train_steps // 10),
        checkpoint_dir=str(run_dir),
        checkpoint_every=500,
        progress=False,
        shortcut=shortcut,
    )
    start = time.perf_counter()
    if (run_dir / "latest").exists():
        trainer = sf.Trainer.resume(run_dir, data)
    else:
        trainer = sf.Trainer(dit(budget, job.space, shortcut.objective), data, config)
    trainer.fit(max(0, budget.train_steps - trainer.step))
    sf.save_model(trainer.ema_model, work / "models" / job.label)
    loss = trainer.history[-1]["loss"] if trainer.history else None
    return dict(steps=trainer.step, seconds=time.perf_counter() - start, final_loss=loss)


def vae_model(budget: Budget):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    wide = 16 if budget.substitute_fid else 64
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(wide // 2, wide, wide),
        sample_size=28,
    )


def train_vae(budget: Budget, job: Job, work: Path) -> dict:
    """The documented VAE recipe: AdamW 1e-3, MSE + 1e-6 KL, then the scaling factor 1/std of the latents."""
    images, _ = load_split(budget, "train")
    rgb = images.expand(-1, 3, -1, -1)
    vae = vae_model(budget).train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(job.seed)
    start = time.perf_counter()
    for step in range(budget.vae_steps):
        x = rgb[torch.randint(0, len(rgb), (budget.vae_batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0:
            _log(f"vae step {step}: loss {float(loss):.4f}")
    vae.eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(c).latent_dist.mean for c in rgb[:2048].split(256)])
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    vae.save_pretrained(str(work / "vae"))
    return dict(
        steps=budget.vae_steps,
        seconds=time.perf_counter() - start,
        final_loss=float(loss),
        scaling_factor=float(1 / z.std()),
    )


def encode(budget: Budget, job: Job, work: Path) -> dict:
    """Write the training set as PNG class folders and encode it with ``encode_folder`` (``shortcut-fast encode``)."""
    images, labels = load_split(budget, "train")
    folder = work / "png"
    pixels = fidlib.to_uint8(images)[:, 0].numpy()
    for i, (img, label) in enumerate(zip(pixels, labels.tolist(), strict=True)):
        path = folder / str(label) / f"{i:05d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path)
    return encode_folder(folder, work / "latents", work / "vae", image_size=28, progress=False)


def latent_data(work: Path):
    from shortcut_fast.data.datasets import TensorShards, find_shards

    return TensorShards(find_shards(work / "latents"))


def _samples(model, vae, n: int, steps: int, cfg_scale: float | None, seed: int) -> torch.Tensor:
    labels = torch.arange(n) % 10
    gen = torch.Generator().manual_seed(seed)
    chunks = []
    for y in labels.split(250):
        x = sf.sample(
            model,
            shape=(len(y), model.in_channels, model.input_size, model.input_size),
            steps=steps,
            y=y,
            cfg_scale=cfg_scale,
            generator=gen,
        )
        chunks.append(x if vae is None else decode(x, vae))
    return torch.cat(chunks).clamp(-1, 1)


def evaluate(budget: Budget, job: Job, work: Path) -> dict:
    """FID of the model of ``job`` at every step count, without and with guidance; a grid of its 1-step samples."""
    model = sf.load_model(work / "models" / Job("train", job.space, job.name).label)
    vae = load_vae(work / "vae") if job.space == "latents" else None
    network = fid_network(budget)
    mu_ref, sigma_ref = reference_stats(budget, work, network)
    rows = {}
    for guided in (False, True):
        for steps in budget.sample_steps:
            start = time.perf_counter()
            x = _samples(model, vae, budget.n_fid, steps, budget.cfg_scale if guided else None, seed=1)
            mu, sigma = stats_of(x, network)
            label = f"{steps} step{'s' if steps > 1 else ''}" + (f", cfg {budget.cfg_scale}" if guided else "")
            rows[label] = dict(
                fid=gaussian_frechet_distance(mu, sigma, mu_ref, sigma_ref), seconds=time.perf_counter() - start
            )
            rows_of_10 = min(8, len(x) // 10)
            if steps == 1 and not guided and rows_of_10:
                grid = x[: 10 * rows_of_10].view(rows_of_10, 10, *x.shape[1:]).transpose(0, 1)
                save_grid(grid, work / "img" / f"{job.space}-{job.name}-1step.png", scale=2)
    return rows


def reference_stats(budget: Budget, work: Path, network) -> tuple[np.ndarray, np.ndarray]:
    """The test set's statistics, computed once and kept in ``WORK/reference.npz``."""
    path = work / f"reference-{_key(budget, Job('reference', ''))}.npz"
    if path.is_file():
        return fidlib.load_stats(path)
    images, _ = load_split(budget, "test")
    mu, sigma = stats_of(images, network)
    fidlib.save_stats(path, mu, sigma)
    return mu, sigma


def floor(budget: Budget, job: Job, work: Path) -> dict:
    """FID of N real training images (``pixels``) or of their VAE reconstructions (``latents``)."""
    images, _ = load_split(budget, "train")
    real = images[-budget.n_fid :]  # the end of the set, balanced enough and apart from the encode check
    network = fid_network(budget)
    if job.space == "latents":
        vae = load_vae(work / "vae")
        with torch.no_grad():
            rgb = real.expand(-1, 3, -1, -1)
            real = torch.cat([vae.decode(vae.encode(c).latent_dist.mean).sample for c in rgb.split(250)]).clamp(-1, 1)
    mu, sigma = stats_of(real, network)
    mu_ref, sigma_ref = reference_stats(budget, work, network)
    return dict(fid=gaussian_frechet_distance(mu, sigma, mu_ref, sigma_ref))


RUNNERS = {"train": train_dit, "vae": train_vae, "encode": encode, "evaluate": evaluate, "floor": floor}


def run_job(budget: Budget, job: Job, work: Path) -> dict:
    """``job``'s result: stored under ``WORK/jobs/`` when it finished before, else run and stored."""
    path = work / "jobs" / f"{job.label}-{_key(budget, job)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    _log(f"start {job.label}")
    result = RUNNERS[job.kind](budget, job, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        write_json(tmp, result)
    _log(f"done {job.label}")
    return result


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_stage(budget: Budget, jobs: list[Job], work: Path, workers: int) -> dict[str, dict]:
    """Every job of one stage (they are independent), ``workers`` at a time in fresh processes."""
    if workers <= 1 or len(jobs) == 1:
        return {job.label: run_job(budget, job, work) for job in jobs}
    context = multiprocessing.get_context("spawn")  # a forked child of a process that ran OpenMP can hang
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        futures = {job.label: pool.submit(run_job, budget, job, work) for job in jobs}
        return {label: f.result() for label, f in futures.items()}


SPACES = ("pixels", "latents")


def plan(spaces: tuple[str, ...] = SPACES, models: tuple[str, ...] = tuple(PIXEL_MODELS)) -> list[list[Job]]:
    """The stages in order, for the tables of ``spaces`` and the rows of ``models``; the jobs of a stage run
    in parallel."""
    pixel = [Job("train", "pixels", name) for name in PIXEL_MODELS if name in models] if "pixels" in spaces else []
    latent = [Job("train", "latents", name) for name in LATENT_MODELS if name in models] if "latents" in spaces else []
    # the pixel floor computes the reference statistics too, so it runs beside the first trainings
    first = [*pixel, Job("floor", "pixels")] if pixel else []
    stages = [
        first + ([Job("vae", "latents")] if latent else []),
        [Job("encode", "latents")] if latent else [],
        [*latent, Job("floor", "latents")] if latent else [],
        [Job("evaluate", j.space, j.name) for j in (*pixel, *latent)],
    ]
    return [stage for stage in stages if stage]


# ---------------------------------------------------------------- report
def write_report(report: dict, out: Path, work: Path) -> None:
    """``OUT/real_data.json``, the tables (``OUT/real-data-table.md``) and the sample grids (``OUT/img/``)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "real_data.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    b = report["budget"]
    lines = [
        "# Fashion-MNIST: FID against the test set",
        "",
        f"N = {b['n_fid']} samples per row (classes balanced) against {b['n_reference']} test images; "
        f"{b['train_steps']} steps of batch {b['batch']} per DiT (hidden {b['hidden']}, depth {b['depth']}); "
        f"guidance scale {b['cfg_scale']}. {report['machine']}, {report['wall_seconds'] / 3600:.1f} h.",
        "",
    ]
    results = report["results"]
    for space, models in (("pixels", PIXEL_MODELS), ("latents", LATENT_MODELS)):
        if f"floor-{space}" not in results:
            continue
        floor_fid = results[f"floor-{space}"]["fid"]
        what = "real training images" if space == "pixels" else "VAE reconstructions of them"
        lines += [f"## {space} (floor: {what}, FID {floor_fid:.2f})", ""]
        rows = {n: results[key] for n in models if (key := f"evaluate-{space}-{n.replace('+', '_')}") in results}
        cols = list(next(iter(rows.values())))
        lines += ["| model | " + " | ".join(cols) + " |", "| --- |" + " ---: |" * len(cols)]
        for name, row in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{row[c]['fid']:.2f}" for c in cols) + " |")
        lines.append("")
    (out / "real-data-table.md").write_text("\n".join(lines))
    for picture in sorted((work / "img").glob("*.png")):
        (out / "img").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(picture, out / "img" / f"real-data-{picture.name}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and run every stage; ``--quick`` for the CI size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parent.parent
    parser.add_argument("--out", default=str(root / "docs"), help="where real_data.json and the table go")
    parser.add_argument("--work", help="models, runs and job results (default OUT/.real_data); keep it to resume")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="toy sizes and a substitute FID network: seconds")
    size.add_argument("--small", action="store_true", help="1000 steps per DiT, 300 samples per row, 2000 references")
    parser.add_argument("--spaces", nargs="+", choices=SPACES, default=list(SPACES), help="the tables to make")
    parser.add_argument(
        "--models", nargs="+", choices=list(PIXEL_MODELS), default=list(PIXEL_MODELS), help="the rows to make"
    )
    parser.add_argument("--jobs", type=int, default=2, help="jobs at a time, one thread each (default 2)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if not Path(FASHION_MNIST).is_dir():
        parser.error(f"{FASHION_MNIST} is missing: apt-get install dataset-fashion-mnist")
    budget = Budget.quick() if args.quick else Budget.small() if args.small else Budget()
    out = Path(args.out)
    work = Path(args.work) if args.work else out / ".real_data"
    start = time.perf_counter()
    torch.set_num_threads(1 if args.jobs > 1 else torch.get_num_threads())
    results: dict[str, dict] = {}
    for stage in plan(tuple(args.spaces), tuple(args.models)):
        results.update(run_stage(budget, stage, work, args.jobs))
    report = dict(
        budget=asdict(budget),
        results=results,
        quick=args.quick,
        spaces=args.spaces,
        models=args.models,
        torch=torch.__version__,
        machine=f"{platform.machine()} {sf.ops.autotune.cpu_model()} ({os.cpu_count()} cores)",
        wall_seconds=time.perf_counter() - start,
    )
    write_report(report, out, work)
    _log(f"wrote {out / 'real_data.json'} in {report['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
