"""``shortcut-fast doctor``: what this installation runs on, which kernels it picks, and whether they are right.

Run it first, and paste its output into a bug report. It prints the versions (torch, CUDA, Triton, and
on a GPU the ptxas and driver a launch uses), the card and the CPU's instruction set, the backend each
op's kernel on the current device, each kernel's parity with ``shortcut_fast.ops.reference`` at small
shapes in every dtype the device supports (forward and gradients: the self-check of ``auto``), what
``auto`` decided per op and shape (in this process and in the decision cache: kernel or reference, the
measured times and why), and a one-second timing of 1-step sampling. The exit status is 1 when any
parity check fails.
"""

from __future__ import annotations

import importlib
import platform
import shutil
import subprocess
import time
from collections.abc import Callable

import torch

from . import ops
from .ops import autotune, backends, contract, dispatch, selfcheck
from .ops import reference as SF

OPS = (
    "attention",
    "modulate_layernorm",
    "gated_residual",
    "timestep_features",
    "condition_sum",
    "euler_step",
    "bootstrap_midpoint",
    "bootstrap_target",
)


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as err:  # a broken install is reported, not raised: that is what the doctor is for
        return f"not available ({type(err).__name__}: {err})"


def _first_line(cmd: list[str]) -> str:
    if shutil.which(cmd[0]) is None and "/" not in cmd[0]:
        return "not found"
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError) as err:
        return f"not available ({err})"
    return out[-1] if out else "no output"


def versions() -> dict[str, str]:
    """The versions that decide what runs: Python, torch, CUDA, Triton, and Triton's ptxas and the driver."""
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none (CPU build)",
        "triton": _version("triton"),
    }
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        info["triton ptxas"] = _first_line([get_ptxas(90).path, "--version"])
    except Exception as err:  # triton missing, or built without its NVIDIA backend
        info["triton ptxas"] = f"not available ({type(err).__name__})"
    info["driver"] = _first_line(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return info


def hardware(device: torch.device) -> dict[str, str]:
    """The card (name, compute capability, memory) and the CPU with the vector ISA torch's kernels use."""
    info = {
        "device": str(device),
        "cpu": f"{platform.machine()} {autotune.cpu_model()}".strip(),
        "cpu ISA (torch)": torch.backends.cpu.get_cpu_capability(),
        "cpu threads": str(torch.get_num_threads()),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["card"] = (
            f"{props.name}, sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs"
        )
    return info


def backend_choice(device: torch.device) -> dict[str, str]:
    """The implementation each op runs on ``device`` now, and why."""
    chosen = backends.get_backend()
    try:
        namespace = backends.namespace(device)
    except ValueError as err:
        return dict.fromkeys(OPS, f"error: {err}")
    native = "loaded" if backends.native_available() else f"not loaded ({backends._native_error})"
    triton = "importable" if backends.triton_available() else f"not importable ({backends._triton_error})"
    if namespace == backends.TRITON_NAMESPACE:
        why = f"Triton kernels (backend {chosen!r}; interpreter: {backends.triton_interpreted()})"
    elif namespace == backends.NATIVE_NAMESPACE:
        why = f"native C++ extension (backend {chosen!r}; triton {triton})"
    if namespace and chosen == "auto" and autotune.active():
        why += "; auto keeps it per shape only where it passes its self-check and measures faster (see below)"
    else:
        why = f"PyTorch reference (backend {chosen!r}; extension {native}; triton {triton})"
    rows = dict.fromkeys(OPS, why)
    if namespace and not (namespace == backends.NATIVE_NAMESPACE and device.type == "cpu"):
        head_dims = contract.support("attention_fwd", dispatch.contract_backend(namespace, device.type)).head_dims
        rows["attention"] = f"{why}; head dims other than {list(head_dims or ())} use the reference"
    return rows


def kernel_of(name: str, device: torch.device) -> Callable:
    """The kernel of op ``name`` that the fixed rule names on ``device`` (bypassing ``auto``'s decision), or the
    dispatched op where no backend is there."""
    namespace = backends.namespace(device)
    if not namespace:
        return getattr(ops, name)
    fused = getattr(dispatch, f"_fused_{name}")
    return lambda *args: fused(getattr(torch.ops, namespace), *args)


def supported_dtypes(device: torch.device) -> list[torch.dtype]:
    """The storage dtypes the kernels take on ``device``: fp32 and bf16, and fp16 on a GPU."""
    if device.type == "cuda":
        return [torch.float32, torch.bfloat16, torch.float16]
    if backends.triton_interpreted() and backends.namespace(device) == backends.TRITON_NAMESPACE:
        return [torch.float32]  # the interpreter runs fp32 only
    return [torch.float32, torch.bfloat16]


def parity(device: torch.device) -> list[tuple[str, str, selfcheck.CheckResult]]:
    """``(op, dtype, result)`` of each op's self-check (``ops/selfcheck.py``) in every supported dtype."""
    rows = []
    for dtype in supported_dtypes(device):
        for name in OPS:
            result = selfcheck.compare(name, kernel_of(name, device), getattr(SF, name), device, dtype)
            rows.append((name, str(dtype).removeprefix("torch."), result))
    return rows


def decision_report() -> str:
    """What ``auto`` decided: this process's self-checks and decisions, then those of the disk cache."""
    lines = []
    for (name, namespace, device, dtype, head_dim), result in sorted(autotune.checks().items(), key=str):
        head = f" Dh {head_dim}" if head_dim else ""
        verdict = "ok" if result.passed else "FAIL: auto runs the reference"
        lines.append(f"  self-check {name} ({namespace}, {dtype}{head}) on {device}: {result.describe()}  {verdict}")
    lines.append(f"  mode {autotune.get_mode()!r}; cache {autotune.cache_path()}")
    decided = autotune.table()
    lines.append("  this process:" if decided else "  this process decided nothing yet")
    if decided:
        lines.append(autotune.markdown_table(decided))
    stored = autotune.stored_table()
    lines.append("  in the cache:" if stored else "  the cache holds no decision yet (sf.tune(model, ...) makes them)")
    if stored:
        lines.append(autotune.markdown_table(stored))
    return "\n".join(lines)


def sampling_time(device: torch.device, seconds: float = 1.0) -> tuple[int, float]:
    """``(calls, ms per call)`` of 1-step sampling of a small class-conditional DiT for about ``seconds``."""
    from .models import ShortcutDiT
    from .sampling import sample

    model = (
        ShortcutDiT(input_size=16, in_channels=4, patch_size=2, hidden_size=128, depth=2, num_heads=4, num_classes=10)
        .to(device)
        .eval()
    )
    y = torch.arange(8, device=device) % 10

    def once():
        sample(model, shape=(8, 4, 16, 16), steps=1, y=y, generator=torch.Generator(device).manual_seed(0))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    once()  # compile and warm up outside the timing
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        once()
        calls += 1
    return calls, 1000 * (time.perf_counter() - start) / calls


def _section(title: str, rows: dict[str, str]) -> None:
    print(f"== {title}")
    width = max(map(len, rows))
    for key, value in rows.items():
        print(f"  {key:<{width}}  {value}")


def run(device: str | None = None, timing_seconds: float = 1.0) -> int:
    """Print the report for ``device`` (default: the GPU if there is one, else the CPU); 1 if parity fails."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no GPU; use --device cpu")
    _section("versions", versions())
    _section("hardware", hardware(dev))
    _section(f"backend per op on {dev}", backend_choice(dev))
    print(f"== parity of the kernels with the reference on {dev} (max |kernel - ref| / max(|ref|, 1), and gradients)")
    results = parity(dev)
    for name, dtype, result in results:
        print(f"  {name:<20} {dtype:<9} {result.describe()}  {'ok' if result.passed else 'FAIL'}")
    print("== what auto runs (self-check, then the faster of kernel and reference per shape bucket)")
    print(decision_report())
    if timing_seconds > 0:
        calls, ms = sampling_time(dev, timing_seconds)
        print(f"== 1-step sampling, DiT hidden 128 depth 2, batch 8 of 4x16x16: {ms:.2f} ms per call ({calls} calls)")
    failed = [f"{name} {dtype}" for name, dtype, result in results if not result.passed]
    print(f"== {'FAILED parity: ' + ', '.join(failed) if failed else 'all parity checks passed'}")
    return 1 if failed else 0
