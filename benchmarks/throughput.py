"""Speed of shortcut_fast against eager PyTorch and torch.compile, side by side in one process.

    python benchmarks/throughput.py                  # DiT-B/2 on 32x32x4 latents (GPU), the digits DiT (CPU)
    python benchmarks/throughput.py --preset DiT-S/2 --batch 128 --dtype bf16 --json out.json

Sections: what ``auto``'s decisions cost at first use (``sf.tune`` with an empty and a filled decision
cache), one-step sampling (batch-1 latency, large-batch throughput), the
API's own cost per batch-1 call (``sample()`` minus the engine's op on the CPU,
minus the graph replay on CUDA), the training step (images/s; the flow-matching-only step for the cost of
self-consistency), per-op times of the fused kernels (forced), of ``auto`` and of their
references, forward and (for the ops that train) forward and backward, the table of what ``auto``
decided on this machine, and achieved TFLOP/s and GB/s against the peaks measured in the
same run. Timing: CUDA events (wall clock on the CPU) after warm-up, the
median of many repeats, fresh random inputs for every repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import shortcut_fast as sf
from shortcut_fast import ops, sampling
from shortcut_fast.objective import ShortcutConfig
from shortcut_fast.ops import autotune
from shortcut_fast.ops import reference as SF
from shortcut_fast.ops.decision_cache import DecisionCache
from shortcut_fast.sampling import schedule_of

DIGITS_DIT = dict(input_size=8, in_channels=1, patch_size=4, hidden_size=192, depth=4, num_heads=4, num_classes=10)
TINY_DIT = dict(input_size=8, in_channels=1, patch_size=2, hidden_size=64, depth=2, num_heads=2, num_classes=10)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(
    fn: Callable[[], object], make_inputs: Callable[[], tuple], device: torch.device, repeats: int, warmup: int
) -> float:
    """Median seconds of ``fn(*make_inputs())`` over ``repeats`` calls; inputs are drawn outside the timing."""
    for _ in range(warmup):
        fn(*make_inputs())
    _sync(device)
    times = []
    for _ in range(repeats):
        args = make_inputs()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            start = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device: torch.device, dtype: torch.dtype, repeats: int) -> float:
    """Achieved FLOP/s of a large square matmul: the practical peak of this device."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    seconds = median_time(lambda: a @ b, tuple, device, repeats, warmup=3)
    return 2 * n**3 / seconds


def copy_bandwidth(device: torch.device, repeats: int) -> float:
    """Achieved bytes/s of a large device-to-device copy (read + write)."""
    n = 2**28 if device.type == "cuda" else 2**24
    src, dst = torch.randn(n, device=device), torch.empty(n, device=device)
    seconds = median_time(lambda: dst.copy_(src), tuple, device, repeats, warmup=3)
    return 2 * 4 * n / seconds


# ---------------------------------------------------------------- the model and its variants
def build_model(args, device: torch.device) -> sf.ShortcutDiT:
    if args.preset == "tiny":
        kwargs = dict(TINY_DIT)
    elif args.preset == "digits":
        kwargs = dict(DIGITS_DIT)
    else:
        kwargs = dict(
            sf.DIT_PRESETS[args.preset], input_size=args.image_size, in_channels=args.channels, num_classes=args.classes
        )
    model = sf.ShortcutDiT(**kwargs)
    with torch.no_grad():  # off the zero init, so that every kernel sees real values
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.to(device)


def kernel_backend(device: torch.device) -> str:
    """The backend of the fused kernels on ``device``: Triton on a GPU, the C++ extension on the CPU."""
    return "triton" if device.type == "cuda" else "native"


@contextlib.contextmanager
def variant(name: str, device: torch.device):
    """The backend of a variant: the reference ops for eager and compiled PyTorch, ``auto`` for shortcut_fast.

    ``shortcut_fast`` is the loop on the fused ops under ``auto`` (the engine off), ``shortcut_fast:kernels`` the
    same with every kernel forced (what ``auto`` would run without its decisions), ``shortcut_fast:engine`` the
    C++ engine.
    """
    engine_mode = "on" if name == "shortcut_fast:engine" else "off"
    chosen = kernel_backend(device) if name.endswith(":kernels") else "auto"
    with sf.backend(chosen if name.startswith("shortcut_fast") else "reference"), sf.engine.mode(engine_mode):
        yield


def one_liner(model):
    """What a user writes for one step without the package's sampler: ``z + model(z, 0, 1, y)``."""

    def generate(z, y):
        t = torch.zeros(z.shape[0], device=z.device)
        return z + model(z, t, torch.ones_like(t), y)

    return generate


def sampling_variants(args, model_net) -> dict:
    """name -> fn(noise, y): the eager one-liner, torch.compile of it, the package's sampler and its engine."""

    # every variant runs the network in the weights' dtype: sample()'s CUDA default would be bf16 autocast
    precision = next(model_net.parameters()).dtype

    def sampler(noise, y):
        return sf.sample(model_net, noise, steps=args.steps, y=y, compute_dtype=precision)

    if args.steps == 1:
        eager = one_liner(model_net)
    else:

        def eager(noise, y):
            return sf.sample(model_net, noise, steps=args.steps, y=y, use_graph=False, compute_dtype=precision)

    variants = {"eager": eager}
    if args.compile:
        for mode in ("reduce-overhead", "max-autotune"):
            variants[f"compile:{mode}"] = torch.compile(eager, mode=mode, dynamic=False)
    variants["shortcut_fast"] = sampler
    variants["shortcut_fast:kernels"] = sampler
    variants.update(deployed_runtimes(args, model_net))
    if next(model_net.parameters()).device.type == "cpu" and sf.engine.available():
        variants["shortcut_fast:engine"] = sampler
    return variants


def deployed_runtimes(args, model_net) -> dict:
    """ONNX Runtime and OpenVINO running the same sampler exported by ``sf.export_onnx`` (fp32, the same threads,
    every graph optimisation): what a CPU user deploys instead. Skipped, with a note, where the ``[bench]`` extra
    (onnxruntime, openvino) is missing, on CUDA, and for non-fp32 weights."""
    if next(model_net.parameters()).device.type != "cpu" or next(model_net.parameters()).dtype != torch.float32:
        return {}
    try:
        import onnxruntime as ort
    except ImportError:
        print("note: onnxruntime is not installed (pip install 'shortcut_fast[bench]'): its rows are left out")
        return {}
    path = Path(tempfile.mkdtemp(prefix="shortcut_fast_bench_onnx_")) / "sampler.onnx"
    sf.export_onnx(model_net, path, steps=args.steps)
    threads = torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # its threads would otherwise spin after each call and slow the variant timed next (calls are interleaved)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def onnxruntime(noise, y):
        return session.run(["samples"], {"noise": noise.numpy(), "labels": y.numpy()})[0]

    runtimes = {"onnxruntime": onnxruntime}
    try:
        import openvino
    except ImportError:
        print("note: openvino is not installed (pip install 'shortcut_fast[bench]'): its rows are left out")
        return runtimes
    compiled = openvino.Core().compile_model(
        str(path), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    )
    request = compiled.create_infer_request()

    def openvino_run(noise, y):
        return request.infer({"noise": noise.numpy(), "labels": y.numpy()})

    runtimes["openvino"] = openvino_run
    return runtimes


def sampling_times(args, model, device, net_dtype) -> dict:
    """Seconds per sampling call at batch 1 and at the large batch, per variant, timed interleaved call by call."""
    shape = (model.in_channels, model.input_size, model.input_size)
    model_net = copy.deepcopy(model).to(net_dtype).eval()
    variants = sampling_variants(args, model_net)
    results = {}
    for batch in (1, args.batch):

        def make(batch=batch):
            return (
                torch.randn(batch, *shape, device=device),
                torch.randint(0, model.num_classes, (batch,), device=device),
            )

        first = {}
        for name, fn in variants.items():
            with variant(name, device), torch.no_grad():
                start = time.perf_counter()
                fn(*make())  # first call: compilation or graph capture, reported apart
                _sync(device)
                first[name] = time.perf_counter() - start
                for _ in range(args.warmup):
                    fn(*make())
        times = {name: [] for name in variants}
        for _ in range(args.repeats):  # one call of each variant in turn, so that load drifts hit all alike
            for name, fn in variants.items():
                with variant(name, device), torch.no_grad():
                    times[name].append(median_time(fn, make, device, 1, 0))
        for name in variants:
            results[f"{name}@{batch}"] = dict(
                seconds=statistics.median(times[name]), first_call_s=first[name], batch=batch
            )
    return results


def raw_engine_op(model, steps: int) -> Callable:
    """``fn(x, y)``: the C++ engine's op alone, on the inputs ``engine.run`` hands it for ``model`` (fp32, CPU).

    The floor of a CPU ``sample()`` call: what is left is the API's own work (validation, the
    engine's checks and weight lookup). The raw op's call lives here alone, so that a change of its
    signature is one edit.
    """
    tensors, config = sf.engine._pack(model)
    config = [*config, sf.engine.ISAS[sf.engine.active_isa()], sf.engine.ATEN_ROWS]
    schedule = list(schedule_of(model, steps))  # the engine takes the step sizes in order

    def call(x, y):
        return torch.ops.shortcut_fast_engine.sample(tensors, config, x, y, None, schedule)

    return call


def captured_replay(model, x, y, steps: int, precision: torch.dtype) -> Callable:
    """``fn(x, y)``: the replay of the CUDA graph ``sample()`` captured for these inputs, and nothing else."""
    sf.sample(model, x, steps=steps, y=y, compute_dtype=precision)  # captures (or finds) the graph
    captured = list(sampling.GRAPH_CACHE._entries.values())[-1]  # the most recently used: this call's
    return lambda x, y: captured.graph.replay()


def api_overhead(args, model, device, net_dtype) -> dict | None:
    """Seconds per batch-1 ``sample()`` call and per bare call of what it runs (the engine's op on the CPU,
    the graph replay on CUDA), timed call by call in turn; their difference is the API's own cost per call.
    None where neither runs (the CPU without the engine)."""
    model_net = copy.deepcopy(model).to(net_dtype).eval()
    x = torch.randn(1, model.in_channels, model.input_size, model.input_size, device=device)
    y = torch.randint(0, model.num_classes, (1,), device=device)
    if device.type == "cuda":
        floor, raw = "graph replay", captured_replay(model_net, x, y, args.steps, net_dtype)
    elif sf.engine.available() and net_dtype == torch.float32:
        floor, raw = "engine op", raw_engine_op(model_net, args.steps)
        with sf.engine.mode("on"):  # the same inputs give the same sample: the op is what sample() runs
            want = sf.sample(model_net, x, steps=args.steps, y=y)
        torch.testing.assert_close(raw(x, y), want, rtol=0, atol=0)
    else:
        return None

    def api(x, y):
        return sf.sample(model_net, x, steps=args.steps, y=y, compute_dtype=net_dtype)

    calls = {"sample": api, "raw": raw}
    if device.type == "cpu":  # the persistent sampler: its checks once, at build
        calls["sampler"] = sf.Sampler(model_net, steps=args.steps)
        torch.testing.assert_close(calls["sampler"](x, y), want, rtol=0, atol=0)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with sf.engine.mode("on" if device.type == "cpu" else "auto"), torch.no_grad():
        for fn in calls.values():
            for _ in range(args.warmup):
                fn(x, y)
        for _ in range(max(args.repeats, 100)):  # microseconds apart: many calls, in turn
            for name, fn in calls.items():
                times[name].append(median_time(fn, lambda: (x, y), device, 1, 0))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = dict(floor=floor, sample_s=medians["sample"], raw_s=medians["raw"])
    result["overhead_s"] = medians["sample"] - medians["raw"]
    if "sampler" in medians:
        result.update(sampler_s=medians["sampler"], sampler_overhead_s=medians["sampler"] - medians["raw"])
    return result


def training_times(args, model, device) -> dict:
    """Seconds per optimizer step on a batch of ``args.train_batch``, per variant."""
    shape = (model.in_channels, model.input_size, model.input_size)
    bf16 = args.dtype == "bf16"
    variants = {
        "eager": ("shortcut", False, False),
        "shortcut_fast": ("shortcut", None, False),
        "shortcut_fast:kernels": ("shortcut", None, False),
        "shortcut_fast:flow": ("flow", None, False),
    }
    if args.compile:
        variants["compile"] = ("shortcut", False, True)
    results = {}
    for name, (objective, use_graph, compiled) in variants.items():
        live = copy.deepcopy(model).train()
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        net = torch.compile(live, dynamic=False) if compiled else live
        opt = torch.optim.AdamW(live.parameters(), lr=1e-4, fused=True)  # as the Trainer
        config = ShortcutConfig(objective=objective)
        gen = torch.Generator(device).manual_seed(0)

        def make():
            return (
                torch.randn(args.train_batch, *shape, device=device),
                torch.randint(0, model.num_classes, (args.train_batch,), device=device),
            )

        def step(x1, y, net=net, opt=opt, ema=ema, config=config, use_graph=use_graph, gen=gen):
            sf.train_step(net, opt, x1, y, config=config, ema_model=ema, generator=gen, bf16=bf16, use_graph=use_graph)

        with variant(name, device):
            start = time.perf_counter()
            step(*make())
            _sync(device)
            first = time.perf_counter() - start
            seconds = median_time(step, make, device, args.repeats, args.warmup)
        results[name] = dict(seconds=seconds, first_call_s=first, images_per_s=args.train_batch / seconds)
    return results


def op_times(args, model, device, dtype) -> dict:
    """Per-op seconds of the fused kernels (``auto``) and of their references, at the model's shapes."""
    B, C, H = args.batch, model.config["hidden_size"], model.config["num_heads"]
    N, dh = model.grid**2, C // H
    latent = (B, model.in_channels, model.input_size, model.input_size)

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    d = torch.full((B,), 0.25, device=device)
    level, y = torch.randint(0, 8, (B,), device=device), torch.randint(0, model.num_classes, (B,), device=device)
    table, y_table = rand(8, C), rand(model.num_classes + 1, C)
    cases = {  # name: (fused fn, reference fn, input maker, bytes moved)
        "attention": (
            ops.attention,
            SF.attention,
            lambda: (rand(B, H, N, dh), rand(B, H, N, dh), rand(B, H, N, dh)),
            None,
        ),
        "modulate_layernorm": (
            ops.modulate_layernorm,
            SF.modulate_layernorm,
            lambda: (rand(B, N, C), rand(B, C), rand(B, C)),
            2 * B * N * C,
        ),
        "gated_residual": (
            ops.gated_residual,
            SF.gated_residual,
            lambda: (rand(B, N, C), rand(B, C), rand(B, N, C)),
            3 * B * N * C,
        ),
        "timestep_features": (
            lambda t: ops.timestep_features(t, 256),
            lambda t: SF.timestep_features(t, 256),
            lambda: (torch.rand(B, device=device),),
            B * 256 * 4 // dtype.itemsize,
        ),
        "condition_sum": (
            lambda c: ops.condition_sum(c, level, table, y, y_table),
            lambda c: SF.condition_sum(c, level, table, y, y_table),
            lambda: (rand(B, C),),
            4 * B * C,
        ),
        "euler_step": (
            lambda x, v: ops.euler_step(x, v, d),
            lambda x, v: SF.euler_step(x, v, d),
            lambda: (rand(*latent), rand(*latent)),
            3 * math.prod(latent),
        ),
        "bootstrap_midpoint": (
            lambda x, v: ops.bootstrap_midpoint(x, v, d, 4.0),
            lambda x, v: SF.bootstrap_midpoint(x, v, d, 4.0),
            lambda: (rand(*latent), rand(*latent)),
            3 * math.prod(latent),
        ),
        "bootstrap_target": (
            lambda a, b: ops.bootstrap_target(a, b, 4.0),
            lambda a, b: SF.bootstrap_target(a, b, 4.0),
            lambda: (rand(*latent), rand(*latent)),
            3 * math.prod(latent),
        ),
    }
    # on a GPU the kernels are Triton's; the hand-written CUDA kernels of the extension are timed beside them
    native_too = device.type == "cuda" and sf.backends.native_available() and sf.backends._native_cuda
    kernels = kernel_backend(device)
    results = {}
    for name, (fused, reference, make, elements) in cases.items():
        for grad in (False, True) if name in TRAINED_OPS else (False,):
            run_fused, run_reference = (with_backward(f) if grad else f for f in (fused, reference))
            make_leaves = with_grad(make) if grad else make
            times = {}
            with torch.set_grad_enabled(grad):
                for backend_name, fn in (("kernel", run_fused), ("auto", run_fused), ("reference", run_reference)):
                    with sf.backend(kernels if backend_name == "kernel" else backend_name):
                        times[backend_name] = median_time(fn, make_leaves, device, args.repeats, args.warmup)
                if native_too:
                    with sf.backend("native"):
                        times["native_cuda"] = median_time(run_fused, make_leaves, device, args.repeats, args.warmup)
            entry = {f"{k}_s": v for k, v in times.items()}
            if elements is not None and not grad:
                entry["kernel_bytes_per_s"] = elements * dtype.itemsize / times["kernel"]
            results[f"{name} fwd+bwd" if grad else name] = entry
    return results


TRAINED_OPS = ("attention", "modulate_layernorm", "gated_residual")


def with_grad(make: Callable[[], tuple]) -> Callable[[], tuple]:
    """Inputs that require gradients."""
    return lambda: tuple(a.requires_grad_() for a in make())


def with_backward(fn: Callable) -> Callable:
    """``fn`` then its backward (a ones gradient), as a training step runs an op."""

    def run(*args):
        out = fn(*args)
        out.backward(torch.ones_like(out))

    return run


def auto_first_use(args, model, device) -> dict:
    """Seconds of ``sf.tune`` for this benchmark's shapes (sampling at batch 1 and ``--batch`` on the fused ops,
    a training step at ``--train-batch``), first with an empty decision cache and then, in a fresh decision
    state, with the cache it filled: their difference is what the self-checks and the timing cost."""
    folder = tempfile.mkdtemp(prefix="shortcut_fast_bench_cache_")
    seconds = []
    for _ in range(2):
        autotune.reset(DecisionCache(folder=Path(folder)))
        start = time.perf_counter()
        with sf.engine.mode("off"):
            sf.tune(model, batch_sizes=sorted({1, args.batch}))
            sf.tune(model, batch_sizes=[args.train_batch], train=True)
        _sync(device)
        seconds.append(time.perf_counter() - start)
    what = f"sampling at batch 1 and {args.batch}, training at {args.train_batch}; mode {autotune.get_mode()!r}"
    return dict(cold_s=seconds[0], warm_s=seconds[1], what=what)


def forward_flops(model, batch: int, device, steps: int) -> int:
    """FLOPs of one ``steps``-step sampling call at ``batch``, counted on the reference ops."""
    x = torch.randn(batch, model.in_channels, model.input_size, model.input_size, device=device)
    with sf.backend("reference"), sf.engine.mode("off"), FlopCounterMode(display=False) as counter, torch.no_grad():
        sf.sample(model, x, steps=steps, y=torch.zeros(batch, dtype=torch.long, device=device), use_graph=False)
    return counter.get_total_flops()


def train_flops(model, batch: int, device) -> int:
    """FLOPs of one shortcut training step (targets, forward, backward), counted on the reference ops."""
    live, ema = copy.deepcopy(model), copy.deepcopy(model)
    x1 = torch.randn(batch, model.in_channels, model.input_size, model.input_size, device=device)
    opt = torch.optim.SGD(live.parameters(), lr=0.0)
    with sf.backend("reference"), FlopCounterMode(display=False) as counter:
        sf.train_step(
            live,
            opt,
            x1,
            torch.zeros(batch, dtype=torch.long, device=device),
            ema_model=ema,
            bf16=False,
            use_graph=False,
        )
    return counter.get_total_flops()


# ---------------------------------------------------------------- report
def report(results: dict) -> str:
    s, t, o = results["sampling"], results["training"], results["ops"]
    peak, bw = results["matmul_peak_flops"], results["copy_bytes_per_s"]
    lines = [
        f"# {results['device']} · {results['model']} · {results['dtype']} · torch {results['torch']}",
        f"matmul peak {peak / 1e12:.2f} TFLOP/s · copy bandwidth {bw / 1e9:.1f} GB/s",
        "",
        f"weights {results['weight_bytes'] / 1e6:.1f} MB: read once at the copy bandwidth "
        f"{1e3 * results['weight_bytes'] / bw:.3f} ms (the memory-bound limit of a batch-1 step)"
        f" · engine ISA {results['engine_isa']}",
        "",
        f"| sampling ({results['args']['steps']} step) | batch | ms/call | images/s | vs eager | TFLOP/s | % peak "
        "| % memory limit | first call s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, r in s.items():
        name, batch = key.rsplit("@", 1)
        eager = s[f"eager@{batch}"]["seconds"]
        flops = results["sample_flops_per_image"] * r["batch"] / r["seconds"]
        # the memory-bound limit: every step reads every weight once
        limit = results["args"]["steps"] * results["weight_bytes"] / bw
        memory = f"{100 * limit / r['seconds']:.1f}" if r["batch"] == 1 else "-"
        lines.append(
            f"| {name} | {batch} | {r['seconds'] * 1e3:.3f} | {r['batch'] / r['seconds']:.1f} | "
            f"{eager / r['seconds']:.2f}x | {flops / 1e12:.3f} | {100 * flops / peak:.1f} | {memory} | "
            f"{r['first_call_s']:.1f} |"
        )
    api = results.get("api_overhead")
    if api is not None:
        lines += [
            "",
            f"| API overhead ({results['args']['steps']} step, batch 1) | sample() ms | {api['floor']} ms "
            "| overhead µs |",
            "| --- | ---: | ---: | ---: |",
            f"| sample() − {api['floor']} | {api['sample_s'] * 1e3:.4f} | {api['raw_s'] * 1e3:.4f} | "
            f"{api['overhead_s'] * 1e6:.1f} |",
        ]
        if "sampler_s" in api:
            lines.append(
                f"| Sampler − {api['floor']} | {api['sampler_s'] * 1e3:.4f} | {api['raw_s'] * 1e3:.4f} | "
                f"{api['sampler_overhead_s'] * 1e6:.1f} |"
            )
    lines += [
        "",
        "| training step | ms/step | images/s | vs eager | TFLOP/s | % peak |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in t.items():
        flops = results["train_flops_per_step"] / r["seconds"]
        lines.append(
            f"| {name} | {r['seconds'] * 1e3:.2f} | {r['images_per_s']:.1f} | "
            f"{t['eager']['seconds'] / r['seconds']:.2f}x | {flops / 1e12:.3f} | {100 * flops / peak:.1f} |"
        )
    overhead = t["shortcut_fast"]["seconds"] / t["shortcut_fast:flow"]["seconds"] - 1
    lines += [
        f"self-consistency cost over a flow-matching step: {100 * overhead:+.1f}%",
        "",
        "| op | kernel ms | auto ms | reference ms | auto vs reference | kernel vs reference | kernel GB/s "
        "| % copy bw | native CUDA ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in o.items():
        gbs = r.get("kernel_bytes_per_s")
        bw_cols = f"{gbs / 1e9:.1f} | {100 * gbs / bw:.1f}" if gbs else "- | -"
        native = f"{r['native_cuda_s'] * 1e3:.4f}" if "native_cuda_s" in r else "-"
        lines.append(
            f"| {name} | {r['kernel_s'] * 1e3:.4f} | {r['auto_s'] * 1e3:.4f} | {r['reference_s'] * 1e3:.4f} | "
            f"{r['reference_s'] / r['auto_s']:.2f}x | {r['reference_s'] / r['kernel_s']:.2f}x | {bw_cols} | {native} |"
        )
    first = results["auto_first_use"]
    lines += [
        "",
        f"auto's first use for this model ({first['what']}): {first['cold_s']:.2f} s with an empty decision cache, "
        f"{first['warm_s']:.2f} s with it filled; decision cost {first['cold_s'] - first['warm_s']:.2f} s",
        "",
        "## what auto runs here",
        "",
        results["auto_decisions"],
    ]
    return "\n".join(lines)


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset",
        default="DiT-B/2" if cuda else "digits",
        choices=[*sf.DIT_PRESETS, "digits", "tiny", "cpu-serving"],
        help="a DiT preset on latents, the digits demo's model (the CPU default), a tiny model, or "
        "cpu-serving: DiT-S/2 on 32x32x4 latents at batch 1 and 16",
    )
    parser.add_argument("--image-size", type=int, default=32, help="latent side for DiT presets")
    parser.add_argument("--channels", type=int, default=4, help="latent channels for DiT presets")
    parser.add_argument("--classes", type=int, default=1000, help="classes for DiT presets")
    parser.add_argument("--batch", type=int, default=256 if cuda else 128, help="the large sampling batch")
    parser.add_argument("--train-batch", type=int, default=128, help="training batch")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="bf16" if cuda else "fp32",
        help="sampling weights dtype; bf16 also turns on autocast in training",
    )
    parser.add_argument("--repeats", type=int, default=50 if cuda else 10)
    parser.add_argument("--warmup", type=int, default=10 if cuda else 2)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out torch.compile")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    args = parser.parse_args(argv)
    if args.preset == "cpu-serving":
        args.preset, args.image_size, args.channels = "DiT-S/2", 32, 4
        args.batch = 16 if args.batch == parser.get_default("batch") else args.batch
    if args.dtype == "bf16" and not args.device.startswith("cuda"):
        parser.error("--dtype bf16 needs a CUDA device")
    for name in ("batch", "train_batch", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)
    model = build_model(args, device)
    results = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        model=args.preset,
        dtype=args.dtype,
        torch=torch.__version__,
        native_extension=sf.backends.native_available(),
        args=vars(args),
    )
    results["matmul_peak_flops"] = matmul_peak(device, dtype, args.repeats)
    results["copy_bytes_per_s"] = copy_bandwidth(device, args.repeats)
    results["weight_bytes"] = sum(p.numel() for p in model.parameters()) * dtype.itemsize
    results["engine_isa"] = sf.engine.active_isa()
    results["sample_flops_per_image"] = forward_flops(model, 1, device, args.steps)
    results["train_flops_per_step"] = train_flops(model, args.train_batch, device)
    results["auto_first_use"] = auto_first_use(args, model, device)
    results["sampling"] = sampling_times(args, model, device, dtype)
    results["api_overhead"] = api_overhead(args, model, device, dtype)
    results["training"] = training_times(args, model, device)
    results["ops"] = op_times(args, model, device, dtype)
    results["auto_decisions"] = autotune.markdown_table()
    print(report(results))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
