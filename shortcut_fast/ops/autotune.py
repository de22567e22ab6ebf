"""What ``auto`` runs: each fused kernel self-checked on first use, and kept only where it measures faster.

Under the backend ``auto`` (the default), the fixed rule (Triton on a GPU,
the C++ kernels on the CPU) names a candidate kernel for each call of a fused
op, and this module decides whether to keep it or to run the op's plain
PyTorch reference (on CUDA the reference attention is
``scaled_dot_product_attention``, so that is what the kernel races):

1. **Self-check**, once per (op, backend, device, dtype): the kernel against
   the reference on small random inputs, forward and, where the op trains,
   backward (``selfcheck.py``, tolerances in ``contract.TOLERANCE``). A kernel
   that disagrees is never used on that device and dtype: one warning names
   the op, the device, the error and the switch, and ``doctor`` lists it.
2. **Measured choice**, once per (op, backend, device, dtypes, gradients or
   not, shape bucket: each dim rounded up to a power of two, the last one
   exact): the kernel and the reference run interleaved on the call's own
   inputs (forward, or forward and backward when gradients flow) and the
   faster one is kept.

Decisions are made at the first call of a bucket, or ahead of time by
``shortcut_fast.tune``; they are kept on disk (``decision_cache.py``), so
later processes time nothing. No timing happens while ``torch.compile``
traces, while a CUDA graph is captured, or inside ``no_timing()`` (the
trainer's steps): a call whose bucket is undecided there takes the decision of
the nearest decided bucket of the same op, else the fixed rule.

``SHORTCUT_FAST_AUTO=fixed`` (or ``set_mode("fixed")``) keeps the fixed rule
with no check and no timing; ``set_backend(...)`` still forces one backend.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from . import backends, selfcheck
from .decision_cache import DecisionCache

MODES = ("measured", "fixed")
# Timing of one decision: a warm-up call of each side, then interleaved calls until each side has MIN_REPS and
# BUDGET_S is spent (or MAX_REPS); a side DECISIVE times slower than the other after one call is decided at once.
MIN_REPS, MAX_REPS, BUDGET_S, DECISIVE = 3, 15, 0.05, 3.0

Key = tuple  # (op, namespace, device, dtypes, grad, bucket)
Timer = Callable[[str, Callable[[], object], torch.device], float]


@dataclass(frozen=True)
class Decision:
    """Whether ``auto`` runs the kernel for one key, the times it measured (ms; None when not timed) and why."""

    fused: bool
    kernel_ms: float | None
    reference_ms: float | None
    why: str
    source: str = "measured"  # "measured", "cache" (an earlier process), "rank 0" (broadcast)


_mode = "measured"
_lock = threading.RLock()
_choices: dict[Key, bool] = {}
_calls: dict[tuple, bool] = {}  # the hot path's lookup: a call's shapes, dtypes, devices -> its key's decision
_decisions: dict[Key, Decision] = {}
_checks: dict[tuple, selfcheck.CheckResult] = {}
_fallbacks: dict[Key, bool] = {}
_warned: set[tuple] = set()
_stored: dict[str, dict] | None = None  # the disk entries, read at the first undecided call
_cache: DecisionCache | None = None
_local = threading.local()
_devices: dict[torch.device, str] = {}
_cpu = ""


def _wall_clock(label: str, run: Callable[[], object], device: torch.device) -> float:
    """Seconds of one ``run()``, the device synchronised before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


timer: Timer = _wall_clock  # tests put a fake timer here: the mechanism is tested, the clock is benchmarked


def set_mode(name: str) -> None:
    """``"measured"`` (self-check and timing, the default) or ``"fixed"`` (today's rule, nothing checked)."""
    global _mode
    if name not in MODES:
        raise ValueError(f"SHORTCUT_FAST_AUTO must be one of {list(MODES)}, got {name!r}")
    _mode = name


def get_mode() -> str:
    """The mode of ``auto``: ``"measured"`` or ``"fixed"``."""
    return _mode


def active() -> bool:
    """Whether calls are being decided: the backend is ``auto`` and the mode ``measured``."""
    return _mode == "measured" and backends.get_backend() == "auto"


def reset(cache: DecisionCache | None = None) -> None:
    """Forget every decision and check of this process; read ``cache`` (default: the usual file) when next needed."""
    global _stored, _cache
    with _lock:
        for table in (_choices, _calls, _decisions, _checks, _fallbacks):
            table.clear()
        _warned.clear()
        _stored, _cache = None, cache


@contextlib.contextmanager
def no_timing() -> Iterator[None]:
    """Within the block (on this thread) nothing is timed or checked: undecided calls take a fallback."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` says elsewhere."""
    global _cpu
    if not _cpu:
        try:
            with open("/proc/cpuinfo") as info:
                _cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
        except OSError:  # not Linux
            _cpu = ""
        _cpu = _cpu or platform.processor() or platform.machine()
    return _cpu


def device_key(device: torch.device) -> str:
    """The device as decisions are keyed: the CPU model and thread count, or the card and its arch."""
    if device.type == "cpu":
        return f"cpu {cpu_model()} x{torch.get_num_threads()}"
    name = _devices.get(device)
    if name is None:
        if device.type == "cuda":
            major, minor = torch.cuda.get_device_capability(device)
            name = f"cuda {torch.cuda.get_device_name(device)} sm_{major}{minor}"
        else:
            name = device.type
        _devices[device] = name
    return name


def _bucket(shape: torch.Size) -> tuple[int, ...]:
    """Each dim rounded up to a power of two, except the last (channels or head size), kept exact."""
    return (*(1 << max(0, s - 1).bit_length() for s in shape[:-1]), *shape[-1:])


def _signature(args: tuple) -> tuple:
    """What a call's decision depends on besides the op: device, float dtypes, gradients, shape bucket.

    Plain tensor attributes only, so that ``torch.compile`` traces it."""
    x = args[0]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    dtypes = tuple(a.dtype for a in tensors if a.is_floating_point())
    grad = torch.is_grad_enabled() and any(a.requires_grad for a in tensors)
    return x.device, dtypes, grad, _bucket(x.shape)


def _key_of(name: str, namespace: str, device: torch.device, dtypes: tuple, grad: bool, bucket: tuple) -> Key:
    return (name, namespace, device_key(device), tuple(str(d).removeprefix("torch.") for d in dtypes), grad, bucket)


def _key(name: str, namespace: str, args: tuple) -> Key:
    return _key_of(name, namespace, *_signature(args))


@torch.compiler.assume_constant_result
def _choice_while_tracing(name: str, namespace: str, device, dtypes: tuple, grad: bool) -> bool:
    """The decision of a call that ``torch.compile`` traces, of any size: what most of the op's decided buckets
    chose (ties: the kernel), else the fixed rule. Run at trace time and kept as a constant of the graph, so a
    compiled model runs what ``auto`` decided before it was compiled (``shortcut_fast.tune``)."""
    key = _key_of(name, namespace, device, dtypes, grad, ())
    with _lock:
        return _fallback(key)


def _text(key: Key) -> str:
    name, namespace, device, dtypes, grad, bucket = key
    return f"{device}|{name}|{namespace}|{','.join(dtypes)}|{'grad' if grad else 'nograd'}|{list(bucket)}"


def keeps(name: str, namespace: str, fused: Callable, reference: Callable, args: tuple) -> bool:
    """Whether the call ``fused(ops, *args)`` of op ``name`` runs its kernel (True) or ``reference(*args)``.

    The hot path is one dict lookup; the first call of a key decides it (see the module's docstring).
    """
    if not active():
        return True
    if torch.compiler.is_compiling():
        # no bucket: under dynamic shapes the sizes are symbolic while tracing (dynamo shows them as ints, so
        # that cannot be told), and a constant of the graph must not depend on them
        device, dtypes, grad, _ = _signature(args)
        return _choice_while_tracing(name, namespace, device, dtypes, grad)
    # the raw attributes of the call: no string or bucket built once its key is decided
    call = (
        name,
        namespace,
        torch.get_num_threads(),
        torch.is_grad_enabled(),
        *[(a.shape, a.dtype, a.device, a.requires_grad) if isinstance(a, torch.Tensor) else None for a in args],
    )
    choice = _calls.get(call)
    if choice is None:
        key = _key_of(name, namespace, *_signature(args))
        choice = _choices.get(key)
        if choice is None:
            choice = _decide(key, lambda *a: fused(getattr(torch.ops, namespace), *a), reference, args)
        if key in _choices:  # a decision, not a fallback: later calls of this signature look it up
            _calls[call] = choice
    return choice


def _may_time(device: torch.device) -> bool:
    if getattr(_local, "depth", 0):
        return False
    return not (device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _stored_entries() -> dict[str, dict]:
    global _stored, _cache
    if _stored is None:
        _cache = _cache or DecisionCache()
        _stored = _cache.load()
    return _stored


def cache_path() -> str:
    """The file that holds this installation's decisions."""
    return str((_cache or DecisionCache()).path)


def _store(text: str, entry: dict) -> None:
    _stored_entries()[text] = entry
    assert _cache is not None  # set by _stored_entries
    _cache.store({text: entry})


def _decide(key: Key, kernel: Callable, reference: Callable, args: tuple) -> bool:
    device = args[0].device
    with _lock:
        if key in _choices:
            return _choices[key]
        if not _may_time(device):
            return _fallback(key)
        text = _text(key)
        stored = _stored_entries().get(text)
        try:
            decision = Decision(**{**stored, "source": "cache"}) if stored else None
        except TypeError:  # an entry of another shape: decide again
            decision = None
        if decision is None:
            check = _self_check(key, kernel, reference, args)
            if not check.passed:
                decision = Decision(False, None, None, f"self-check failed: {check.describe()}")
            else:
                kernel_s, reference_s = _measure(kernel, reference, args, key[4], device)
                faster = kernel_s < reference_s
                decision = Decision(
                    faster, 1e3 * kernel_s, 1e3 * reference_s, "kernel faster" if faster else "reference faster"
                )
            _store(text, {k: v for k, v in asdict(decision).items() if k != "source"})
        elif decision.why.startswith("self-check failed"):
            _warn(key, decision.why)
        _decisions[key] = decision
        _choices[key] = decision.fused
        _fallbacks.clear()
        return decision.fused


def _check_key(key: Key, args: tuple) -> tuple:
    name, namespace, device = key[:3]
    head_dim = args[0].shape[-1] if name in ("attention", "attention_jvp") else None
    return (name, namespace, device, key[3][0] if key[3] else "", head_dim)


def _self_check(key: Key, kernel: Callable, reference: Callable, args: tuple) -> selfcheck.CheckResult:
    """The op's self-check on this device and dtype: run once per process, or read from the disk cache."""
    ckey = _check_key(key, args)
    result = _checks.get(ckey)
    if result is None:
        text = "check|" + "|".join(map(str, ckey))
        stored = _stored_entries().get(text)
        try:
            result = selfcheck.CheckResult(**{**stored, "tolerance": tuple(stored["tolerance"])}) if stored else None
        except (TypeError, KeyError):
            result = None
        if result is None:
            x = args[0]
            result = selfcheck.compare(key[0], kernel, reference, x.device, x.dtype, x.shape[-1])
            _store(text, asdict(result))
        _checks[ckey] = result
    if not result.passed:
        _warn(key, f"self-check failed: {result.describe()}")
    return result


def _warn(key: Key, why: str) -> None:
    name, namespace, device, dtypes = key[:4]
    once = (name, namespace, device, dtypes[:1])
    if once in _warned:
        return
    _warned.add(once)
    warnings.warn(
        f"shortcut_fast: the {namespace} kernel of {name} on {device} ({', '.join(dtypes)}) disagrees with the "
        f"reference ({why}); auto runs the reference for it. SHORTCUT_FAST_AUTO=fixed or "
        "SHORTCUT_FAST_BACKEND=native|triton forces the kernels; shortcut-fast doctor lists every check.",
        RuntimeWarning,
        stacklevel=5,
    )


def _runner(fn: Callable, args: tuple, grad: bool) -> Callable[[], object]:
    """``fn(*args)``; with ``grad``, on detached copies of the inputs and followed by its backward."""
    if not grad:
        return lambda: fn(*args)
    leaves = tuple(
        a.detach().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for a in args
    )
    wanted = [a for a in leaves if isinstance(a, torch.Tensor) and a.requires_grad]

    def run():
        with torch.enable_grad():
            out = fn(*leaves)
            torch.autograd.grad(out, wanted, torch.ones_like(out))

    return run


def _measure(kernel: Callable, reference: Callable, args: tuple, grad: bool, device: torch.device):
    """The smallest of interleaved times (seconds) of the kernel and of the reference on ``args``."""
    runs = {"kernel": _runner(kernel, args, grad), "reference": _runner(reference, args, grad)}
    for label, run in runs.items():  # warm-up: first-call allocation, lazy loading, Triton's autotuning
        timer(label, run, device)
    times: dict[str, list[float]] = {"kernel": [], "reference": []}
    start = time.perf_counter()
    for rep in range(MAX_REPS):
        for label, run in runs.items():
            times[label].append(timer(label, run, device))
        fast, slow = sorted(min(t) for t in times.values())
        if slow > DECISIVE * fast or (rep + 1 >= MIN_REPS and time.perf_counter() - start > BUDGET_S):
            break
    return min(times["kernel"]), min(times["reference"])


def _fallback(key: Key) -> bool:
    """An undecided key where nothing may be timed: the nearest decided bucket of the op, else the fixed rule."""
    choice = _fallbacks.get(key)
    if choice is None:
        failed = any(c[:4] == (*key[:3], key[3][0] if key[3] else "") and not r.passed for c, r in _checks.items())
        near = [(k, d) for k, d in _decisions.items() if k[:5] == key[:5]]
        if failed:
            choice = False
        elif near and not key[5]:  # a traced call (no bucket): what most of the op's buckets chose
            choice = 2 * sum(d.fused for _, d in near) >= len(near)
        elif near:
            size = sum(b.bit_length() for b in key[5])
            choice = min(near, key=lambda kd: abs(sum(b.bit_length() for b in kd[0][5]) - size))[1].fused
        else:
            choice = True
        _fallbacks[key] = choice
    return choice


def decisions() -> dict[Key, Decision]:
    """Every decision of this process, by key."""
    with _lock:
        return dict(_decisions)


def checks() -> dict[tuple, selfcheck.CheckResult]:
    """Every self-check of this process, by (op, backend, device, dtype, head size or None)."""
    with _lock:
        return dict(_checks)


def export() -> list[tuple]:
    """This process's decisions without the device, for another process to ``adopt`` (DDP: rank 0's)."""
    with _lock:
        return [
            (k[0], k[1], k[3], k[4], k[5], d.fused, d.kernel_ms, d.reference_ms, d.why) for k, d in _decisions.items()
        ]


def adopt(rows: list[tuple], device: torch.device) -> None:
    """Make ``export()``'s rows of another process this process's decisions on ``device`` (its own are dropped)."""
    dev = device_key(device)
    with _lock:
        for key in [k for k in _decisions if k[2] == dev]:
            del _decisions[key], _choices[key]
        _calls.clear()
        for name, namespace, dtypes, grad, bucket, fused, kernel_ms, reference_ms, why in rows:
            key = (name, namespace, dev, tuple(dtypes), bool(grad), tuple(bucket))
            _decisions[key] = Decision(bool(fused), kernel_ms, reference_ms, why, source="rank 0")
            _choices[key] = bool(fused)
        _fallbacks.clear()


def _row(name: str, namespace: str, device: str, dtypes, grad: bool, bucket, *, d: Decision) -> dict:
    return dict(
        op=name,
        backend=namespace,
        device=device,
        dtypes=",".join(dtypes),
        grad=grad,
        bucket="x".join(map(str, bucket)),
        choice="kernel" if d.fused else "reference",
        kernel_ms=d.kernel_ms,
        reference_ms=d.reference_ms,
        why=d.why,
        source=d.source,
    )


def table() -> list[dict]:
    """This process's decisions as rows (op, backend, device, dtypes, grad, bucket, choice, times, why, source)."""
    return [_row(*key, d=d) for key, d in sorted(decisions().items(), key=lambda kd: _text(kd[0]))]


def stored_table() -> list[dict]:
    """The decisions of the disk cache of this installation (every device it was used on), as ``table()``'s rows."""
    with _lock:
        entries = dict(_stored_entries())
    rows = []
    for text, entry in sorted(entries.items()):
        parts = text.split("|")
        if parts[0] == "check" or len(parts) != 6:
            continue
        device, name, namespace, dtypes, grad, bucket = parts
        try:
            d = Decision(**{**entry, "source": "cache"})
            sizes = [int(b) for b in bucket.strip("[]").split(",") if b.strip()]
        except (TypeError, ValueError):
            continue
        rows.append(_row(name, namespace, device, dtypes.split(","), grad == "grad", sizes, d=d))
    return rows


def markdown_table(rows: list[dict] | None = None) -> str:
    """``table()`` as a markdown table (what ``throughput.py``, ``gpu_check.sh`` and ``doctor`` print)."""
    rows = table() if rows is None else rows
    if not rows:
        return "(auto decided nothing in this process)\n"

    def ms(v):
        return "-" if v is None else f"{v:.3f}"

    lines = [
        "| op | backend | dtypes | grad | bucket | auto runs | kernel ms | reference ms | why | from |",
        "| --- | --- | --- | --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['op']} | {r['backend']} | {r['dtypes']} | {'fwd+bwd' if r['grad'] else 'fwd'} | {r['bucket']} | "
            f"{r['choice']} | {ms(r['kernel_ms'])} | {ms(r['reference_ms'])} | {r['why']} | {r['source']} |"
        )
    devices = sorted({r["device"] for r in rows})
    return f"on {'; '.join(devices)}\n\n" + "\n".join(lines) + "\n"


def preload() -> None:
    """Take ``SHORTCUT_FAST_AUTO`` from the environment (``measured``, the default, or ``fixed``)."""
    chosen = os.environ.get("SHORTCUT_FAST_AUTO")
    if chosen:
        set_mode(chosen)
