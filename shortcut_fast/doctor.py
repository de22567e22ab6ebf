"""``shortcut-fast doctor``: what this installation runs on, which kernels it picks, and whether they are right.

Run it first, and paste its output into a bug report. It prints the versions (torch, CUDA, Triton, and
on a GPU the ptxas and driver a launch uses), the card and the CPU's instruction set, the backend each
op picks on the current device and why, each op's parity with ``shortcut_fast.ops.reference`` at small
shapes in every dtype the device supports, and a one-second timing of 1-step sampling. The exit
status is 1 when any parity check fails.
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
from .ops import backends, contract, dispatch
from .ops import reference as SF

# Largest |kernel - reference| allowed, relative to the reference's largest magnitude (at least 1).
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}
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


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:  # not Linux
        return platform.processor()


def hardware(device: torch.device) -> dict[str, str]:
    """The card (name, compute capability, memory) and the CPU with the vector ISA torch's kernels use."""
    info = {
        "device": str(device),
        "cpu": f"{platform.machine()} {_cpu_model()}".strip(),
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
    else:
        why = f"PyTorch reference (backend {chosen!r}; extension {native}; triton {triton})"
    rows = dict.fromkeys(OPS, why)
    if namespace and not (namespace == backends.NATIVE_NAMESPACE and device.type == "cpu"):
        head_dims = contract.support("attention_fwd", dispatch.contract_backend(namespace, device.type)).head_dims
        rows["attention"] = f"{why}; head dims other than {list(head_dims or ())} use the reference"
    return rows


def _parity_cases(device: torch.device, dtype: torch.dtype) -> dict[str, tuple[Callable, Callable]]:
    """Per op: a call of the dispatched op and of the reference on the same small inputs."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    q, k, v = rand(2, 2, 33, 32), rand(2, 2, 33, 32), rand(2, 2, 33, 32)
    x, y, shift, scale = rand(2, 17, 48), rand(2, 17, 48), rand(2, 48), rand(2, 48)
    t = torch.rand(5, generator=gen).to(device)
    level = torch.tensor([0, 3], device=device)
    labels = torch.tensor([1, 4], device=device)
    c, d_table, y_table = rand(2, 48), rand(6, 48), rand(5, 48)
    d = torch.tensor([0.25, 0.5], device=device)

    def pair(name, *args):
        # the reference computes in fp32 from the same (rounded) inputs: the error is the kernel's alone
        wide = [a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        return (lambda: getattr(ops, name)(*args), lambda: getattr(SF, name)(*wide))

    return {
        "attention": pair("attention", q, k, v),
        "modulate_layernorm": pair("modulate_layernorm", x, shift, scale),
        "gated_residual": pair("gated_residual", x, shift, y),
        "timestep_features": pair("timestep_features", t, 64),
        "condition_sum": pair("condition_sum", c, level, d_table, labels, y_table),
        "euler_step": pair("euler_step", x, y, d),
        "bootstrap_midpoint": pair("bootstrap_midpoint", x, y, d, 1.0),
        "bootstrap_target": pair("bootstrap_target", x, y, 1.0),
    }


def supported_dtypes(device: torch.device) -> list[torch.dtype]:
    """The storage dtypes the kernels take on ``device``: fp32 and bf16, and fp16 on a GPU."""
    if device.type == "cuda":
        return [torch.float32, torch.bfloat16, torch.float16]
    if backends.triton_interpreted() and backends.namespace(device) == backends.TRITON_NAMESPACE:
        return [torch.float32]  # the interpreter runs fp32 only
    return [torch.float32, torch.bfloat16]


def parity(device: torch.device) -> list[tuple[str, str, float, float, bool]]:
    """``(op, dtype, error, tolerance, passed)`` per op and supported dtype; errors relative to the reference."""
    rows = []
    for dtype in supported_dtypes(device):
        for name, (fast, ref) in _parity_cases(device, dtype).items():
            tol = TOLERANCE[dtype]
            with torch.no_grad():
                try:
                    got, want = fast().float(), ref().float()
                except Exception as err:  # an op that raises fails its check, with the reason shown
                    rows.append((name, str(dtype).removeprefix("torch."), float("nan"), tol, False))
                    print(f"  {name} {dtype}: raised {type(err).__name__}: {err}")
                    continue
            error = (
                ((got - want).abs().max() / want.abs().max().clamp(min=1)).item()
                if got.shape == want.shape
                else float("inf")
            )
            rows.append((name, str(dtype).removeprefix("torch."), error, tol, bool(error <= tol)))
    return rows


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
    print(f"== parity with the reference on {dev} (max |fast - ref| / max(|ref|, 1))")
    results = parity(dev)
    for name, dtype, err, tol, passed in results:
        print(f"  {name:<20} {dtype:<9} {err:.2e}  (tolerance {tol:.0e})  {'ok' if passed else 'FAIL'}")
    if timing_seconds > 0:
        calls, ms = sampling_time(dev, timing_seconds)
        print(f"== 1-step sampling, DiT hidden 128 depth 2, batch 8 of 4x16x16: {ms:.2f} ms per call ({calls} calls)")
    failed = [f"{name} {dtype}" for name, dtype, _, _, passed in results if not passed]
    print(f"== {'FAILED parity: ' + ', '.join(failed) if failed else 'all parity checks passed'}")
    return 1 if failed else 0
