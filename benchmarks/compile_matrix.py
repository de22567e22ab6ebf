"""Compile every Triton kernel of the package for sm_80 and sm_90 without a GPU, and judge each result.

    python benchmarks/compile_matrix.py --json matrix.json             # the full matrix (tens of minutes cold)
    python benchmarks/compile_matrix.py --ci --json ci.json            # what really launches (the CI test)
    python benchmarks/compile_matrix.py --write-docs docs/kernels.md   # the full matrix, its table into the docs

The cases come from the kernels themselves: the autotuned kernels' config lists and prune functions, the
launchers' tilings, the head dims the dispatch sends to the GPU kernels and the model presets' widths,
so the matrix follows the kernels when they change. Each case is compiled with ``triton.compile`` for a
``GPUTarget`` (the ptxas that ships inside Triton), then judged: it must compile, its shared memory must
fit the target's per-block maximum and ``ptxas -v`` must report no spills, unless the configuration is
pruned for that target and dtype (by the kernel's prune function, or dropped by the autotuner because it
does not fit) or ``ACCEPTED`` states why it may spill. For ``tl.dot`` kernels in 16-bit dtypes on sm_90
the table says whether wgmma is emitted. Must run without ``TRITON_INTERPRET=1`` (the kernels are then
plain JIT functions); results are cached beside Triton's cache, so reruns take seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("compile_matrix.py compiles for real GPU targets: run it without TRITON_INTERPRET=1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kernels import attention, attention_jvp, elementwise, embedding, layernorm  # noqa: E402
from shortcut_fast.models import DIT_PRESETS, FREQ_DIM  # noqa: E402
from shortcut_fast.ops import contract  # noqa: E402

# The largest dynamic shared memory one block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin).
SHARED_LIMIT = {80: 166912, 90: 232448}
TARGETS = (80, 90)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TRITON_TYPE = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
DOCS_HEADING = "## Compiled for sm_80 and sm_90"

# Spills accepted, each with why and a ceiling in bytes (stores + loads): (kernel, dtype, target) -> (bytes, why).
_FP32_ATTENTION = (
    "fp32 storage multiplies in full fp32 (ieee) on CUDA cores with (block, Dh) fp32 tiles "
    "held in registers; accepted until the fp32 attention path gets smaller tiles "
    "(bf16/fp16 are the fast paths)"
)
_HALF_BACKWARD = (
    "at most a few hundred bytes in the backward's largest tiles, which stay in L1; the autotuner "
    "times these configurations against ones that do not spill"
)
_HALF_FORWARD_SM80 = (
    "a few bytes in the 4-warp 128x32 tile at Dh 128 on sm_80 (255 registers), which stay in L1; the "
    "autotuner times it against the three configurations that do not spill"
)
_HALF_JVP_SM80 = (
    "up to 3.1 KB in the JVP's 64-row tiles at Dh 128 on sm_80 (two query blocks and two fp32 sums in 255 "
    "registers), which stay in L1; the autotuner times them against the 32x64 tile, which does not spill"
)
_FP32_LAYERNORM_BWD_SM80 = (
    "8 B stores and 8 B loads in the fp32 backward's 8x512 tile (C=384 padded to 512 channels) on sm_80, "
    "which stay in L1; bf16/fp16 and sm_90 do not spill, nor does any other width"
)
ACCEPTED: dict[tuple[str, str, int], tuple[int, str]] = {
    **{
        (kernel, "fp32", target): (128 * 1024, _FP32_ATTENTION)
        for kernel in ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq")
        for target in TARGETS
    },
    **{
        (kernel, dtype, target): (1024, _HALF_BACKWARD)
        for kernel in ("attention_bwd_dkdv", "attention_bwd_dq")
        for dtype in ("bf16", "fp16")
        for target in TARGETS
    },
    **{("attention_fwd", dtype, 80): (64, _HALF_FORWARD_SM80) for dtype in ("bf16", "fp16")},
    **{("attention_jvp", dtype, 80): (3200, _HALF_JVP_SM80) for dtype in ("bf16", "fp16")},
    ("modulate_layernorm_bwd", "fp32", 80): (16, _FP32_LAYERNORM_BWD_SM80),
}
# wgmma works on 64-row tiles per warpgroup; a kernel's dots whose row block is smaller get mma.sync.
_DOT_ROWS = {
    "attention_fwd": "BLOCK_M",
    "attention_jvp": "BLOCK_M",
    "attention_bwd_dq": "BLOCK_M",
    "attention_bwd_dkdv": "BLOCK_N",
}
WGMMA_ROWS = 64


@dataclasses.dataclass(frozen=True)
class Case:
    """One compilation: a kernel for one target, storage dtype and launch configuration."""

    kernel: str
    target: int
    dtype: str
    shape: str  # what the constexprs stand for: "Dh=64", "C=768", ...
    config: str  # the launch configuration: blocks, warps, stages
    constexprs: tuple  # ((name, value), ...)
    num_warps: int
    num_stages: int
    pruned: str = ""  # why this configuration never launches for this target and dtype; "" if it may
    uses_dot: bool = False
    tuning: str = ""  # the autotune configuration; "" for a kernel launched with one fixed configuration

    @property
    def key(self) -> str:
        """A name unique in the matrix."""
        return f"{self.kernel}|sm_{self.target}|{self.dtype}|{self.shape}|{self.config}"


def _signature(fn, dtype: torch.dtype, types: dict[str, str], constexprs: dict) -> dict[str, str]:
    """The ASTSource signature of ``fn``: ``*dt`` for pointers to the storage dtype, the given types otherwise."""
    dt = TRITON_TYPE[dtype]
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        else:
            signature[name] = types.get(name, "*dt").replace("dt", dt)
    return signature


def _config_label(kwargs: dict, num_warps: int, num_stages: int) -> str:
    blocks = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{blocks} w{num_warps} s{num_stages}"


def _autotuned_cases(
    name: str, tuner, dtype: torch.dtype, target: int, shape: str, fixed: dict, pointer_arg: str, uses_dot: bool
) -> list[Case]:
    """One case per config of an autotuned kernel; those its prune function drops for ``dtype`` say so."""
    prune = getattr(tuner, "early_config_prune", None)
    kept = tuner.configs
    if prune is not None:
        kept = prune(tuner.configs, {pointer_arg: torch.empty(0, dtype=dtype)})
    cases = []
    for config in tuner.configs:
        reason = "" if config in kept else f"pruned by {prune.__name__}: {prune.__doc__.split(':')[0].strip()}"
        label = _config_label(config.kwargs, config.num_warps, config.num_stages)
        cases.append(
            Case(
                name,
                target,
                TRITON_TYPE[dtype],
                shape,
                label,
                tuple({**fixed, **config.kwargs}.items()),
                config.num_warps,
                config.num_stages,
                " ".join(reason.split()),
                uses_dot,
                label,
            )
        )
    return cases


def _fixed_case(
    name: str, dtype: torch.dtype, target: int, shape: str, constexprs: dict, num_warps: int = 4, num_stages: int = 3
) -> Case:
    return Case(
        name,
        target,
        TRITON_TYPE[dtype],
        shape,
        _config_label(constexprs, num_warps, num_stages),
        tuple(constexprs.items()),
        num_warps,
        num_stages,
    )


def model_widths() -> list[int]:
    """The channel counts of the model presets: what layer norm, the residual and the condition sum see."""
    return sorted({preset["hidden_size"] for preset in DIT_PRESETS.values()})


# the attention's head count and the batch, head and token strides q, k and v share (kernels/attention.py)
_STRIDES = {"heads": "i32", "stride_b": "i32", "stride_h": "i32", "stride_n": "i32"}
KERNELS = {
    "attention_fwd": (
        attention._attention_fwd_kernel,
        {"lse_ptr": "*fp32", "seq_len": "i32", "sm_scale": "fp32", "batch_bucket": "i32", **_STRIDES},
    ),
    "attention_jvp": (
        attention_jvp._attention_jvp_kernel,
        {
            "lse_ptr": "*fp32",
            "d_lse_ptr": "*fp32",
            "seq_len": "i32",
            "sm_scale": "fp32",
            "batch_bucket": "i32",
            **_STRIDES,
            **{f"tangent_{name}": "i32" for name in ("stride_b", "stride_h", "stride_n")},
        },
    ),
    "attention_bwd_delta": (attention._attention_bwd_delta_kernel, {"delta_ptr": "*fp32", "n_rows": "i32"}),
    "attention_bwd_dkdv": (
        attention._attention_bwd_dkdv_kernel,
        {
            "lse_ptr": "*fp32",
            "delta_ptr": "*fp32",
            "seq_len": "i32",
            "sm_scale": "fp32",
            "batch_bucket": "i32",
            **_STRIDES,
        },
    ),
    "attention_bwd_dq": (
        attention._attention_bwd_dq_kernel,
        {
            "lse_ptr": "*fp32",
            "delta_ptr": "*fp32",
            "seq_len": "i32",
            "sm_scale": "fp32",
            "batch_bucket": "i32",
            **_STRIDES,
        },
    ),
    "modulate_layernorm_fwd": (
        layernorm._modulate_layernorm_fwd_kernel,
        {"mean_ptr": "*fp32", "rstd_ptr": "*fp32", "seq_len": "i32", "channels": "i32", "eps": "fp32"},
    ),
    "modulate_layernorm_bwd": (
        layernorm._modulate_layernorm_bwd_kernel,
        {
            "mean_ptr": "*fp32",
            "rstd_ptr": "*fp32",
            "dshift_part_ptr": "*fp32",
            "dscale_part_ptr": "*fp32",
            "seq_len": "i32",
            "channels": "i32",
            "tokens_per_program": "i32",
        },
    ),
    "gated_residual": (
        elementwise._gated_residual_kernel,
        {"numel": "i32", "numel_bucket": "i32", "channels": "i32", "per_sample": "i32"},
    ),
    "per_sample_step": (
        elementwise._per_sample_step_kernel,
        {
            "d_ptr": "*fp32",
            "numel": "i32",
            "numel_bucket": "i32",
            "per_sample": "i32",
            "step_factor": "fp32",
            "clip": "fp32",
        },
    ),
    "bootstrap_target": (elementwise._bootstrap_target_kernel, {"numel": "i32", "numel_bucket": "i32", "clip": "fp32"}),
    "timestep_features": (
        embedding._timestep_features_kernel,
        {"out_ptr": "*fp32", "dim": "i32", "half": "i32", "neg_log_period": "fp32", "t_scale": "fp32"},
    ),
    "condition_sum": (
        embedding._condition_sum_kernel,
        {"level_ptr": "*i64", "label_ptr": "*i64", "channels": "i32", "d_rows": "i32", "y_rows": "i32"},
    ),
}


def _cases_for(target: int, dtype: torch.dtype) -> list[Case]:
    """Every case of one target and storage dtype."""
    cases = []
    precision = attention._dot_precision(dtype)
    for head_dim in contract.support("attention_fwd", "triton").head_dims:
        shape, fixed = f"Dh={head_dim}", {"HEAD_DIM": head_dim, "DOT_PRECISION": precision}
        for name in ("attention_fwd", "attention_jvp", "attention_bwd_dkdv", "attention_bwd_dq"):
            op = "attention_bwd" if name.startswith("attention_bwd") else name
            if not contract.support(op, "triton").runs(dtype, head_dim):
                continue  # the contract sends it to the reference (attention_jvp in fp32)
            cases += _autotuned_cases(name, KERNELS[name][0], dtype, target, shape, fixed, "q_ptr", True)
        # attention_backward launches the delta kernel with BLOCK_M 64 and Triton's default warps and stages
        cases.append(_fixed_case("attention_bwd_delta", dtype, target, shape, {"HEAD_DIM": head_dim, "BLOCK_M": 64}))
    tilings = {}
    for width in model_widths():
        tilings.setdefault(layernorm._tiling(width), width)
    for (block_n, block_c, num_warps), width in tilings.items():
        for name in ("modulate_layernorm_fwd", "modulate_layernorm_bwd"):
            cases.append(
                _fixed_case(name, dtype, target, f"C={width}", {"BLOCK_N": block_n, "BLOCK_C": block_c}, num_warps)
            )
    for name in ("gated_residual", "per_sample_step", "bootstrap_target"):
        for has_clip in (None,) if name == "gated_residual" else (False, True):
            fixed = {} if has_clip is None else {"HAS_CLIP": has_clip}
            shape = "" if has_clip is None else f"clip={'yes' if has_clip else 'no'}"
            cases += _autotuned_cases(name, KERNELS[name][0], dtype, target, shape, fixed, "x_ptr", False)
    half = FREQ_DIM // 2
    cases.append(
        _fixed_case(
            "timestep_features",
            dtype,
            target,
            f"dim={FREQ_DIM}",
            {"BLOCK": triton.next_power_of_2(half), "USE_LIBDEVICE": True},
        )
    )
    for width in model_widths():
        block = min(embedding._CHANNEL_BLOCK, triton.next_power_of_2(width))
        for has_labels in (False, True):
            shape = f"C={width} labels={'yes' if has_labels else 'no'}"
            cases.append(_fixed_case("condition_sum", dtype, target, shape, {"HAS_LABELS": has_labels, "BLOCK": block}))
    return cases


def full_matrix() -> list[Case]:
    """Every kernel, target, dtype, launch configuration and used shape."""
    return [case for target in TARGETS for dtype in DTYPES.values() for case in _cases_for(target, dtype)]


def ci_matrix() -> list[Case]:
    """What really launches, small enough for CI: on sm_90 every configuration left after pruning in bf16
    and fp32 at the largest shape of each kernel; on sm_80 one such configuration per kernel and dtype."""
    chosen, seen = [], set()
    for case in reversed(full_matrix()):  # the largest shape of each kernel comes last
        if case.pruned:
            continue
        if case.target == 90 and case.dtype in ("bf16", "fp32"):
            group = (case.kernel, case.target, case.dtype, case.tuning)
        elif case.target == 80:
            group = (case.kernel, case.target, case.dtype)
        else:
            continue
        if group not in seen:
            seen.add(group)
            chosen.append(case)
    return chosen[::-1]


_PTXAS_USAGE = re.compile(r"Used (\d+) registers")
_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def _ptxas_report(ptx: str, target: int) -> str:
    """``ptxas -v`` of the PTX with the ptxas inside Triton, for results whose compile was a cache hit."""
    from triton.backends.nvidia.compiler import get_ptxas

    arch = "sm_90a" if target == 90 else f"sm_{target}"
    with tempfile.TemporaryDirectory() as scratch:
        src = Path(scratch) / "kernel.ptx"
        src.write_text(ptx)
        result = subprocess.run(
            [get_ptxas(target).path, "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(scratch) / "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    return result.stderr


def _jit(kernel: str) -> triton.runtime.JITFunction:
    """The JIT function of a kernel, under its autotuner if it has one."""
    fn = KERNELS[kernel][0]
    return fn.fn if isinstance(fn, triton.runtime.Autotuner) else fn


def compile_case(case: Case) -> dict:
    """Compile one case; its registers, shared memory, spills and matrix instructions, or its error."""
    fn, types = _jit(case.kernel), KERNELS[case.kernel][1]
    constexprs = dict(case.constexprs)
    signature = _signature(fn, DTYPES[case.dtype], types, constexprs)
    # the launcher passes 16-byte aligned pointers, which Triton specialises on at launch, and so are the
    # attention's strides multiples of 16 at every head size it runs (Dh, 3C, N Dh, N 3C ...)
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if signature[name][0] == "*" or name.startswith(("stride_", "tangent_stride_"))
    }
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                src,
                target=GPUTarget("cuda", case.target, 32),
                options={"num_warps": case.num_warps, "num_stages": case.num_stages},
            )
    except Exception as err:  # any compiler failure is a result to report, not a crash of the matrix
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:2000], "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    ptx = compiled.asm["ptx"]
    report = log.getvalue()
    if not _PTXAS_USAGE.search(report):
        report = _ptxas_report(ptx, case.target)
    spills = [int(n) for n in _PTXAS_SPILLS.findall(report)[-1]] if _PTXAS_SPILLS.search(report) else [0, 0]
    return {
        "ok": True,
        "registers": int(_PTXAS_USAGE.findall(report)[-1]),
        "shared": int(compiled.metadata.shared),
        "spill_stores": spills[0],
        "spill_loads": spills[1],
        "wgmma": "wgmma.mma_async" in ptx,
        "mma_sync": "mma.sync" in ptx,
        "seconds": seconds,
    }


def compile_apart(case: Case) -> dict:
    """``compile_case`` in a forked child, so that a compiler that aborts (an LLVM assertion) is a failed row of
    the matrix rather than the end of it."""
    start = time.perf_counter()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compile, send the row, leave without running the parent's exit handlers
        os.close(read)
        with os.fdopen(write, "w") as out:
            out.write(json.dumps(compile_case(case)))
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or not text:
        why = f"signal {signal.Signals(os.WTERMSIG(status)).name}" if os.WIFSIGNALED(status) else "no result"
        return {"ok": False, "error": f"the compiler aborted ({why})", "seconds": time.perf_counter() - start}
    return json.loads(text)


def verdict(case: Case, result: dict) -> tuple[bool, str]:
    """Whether the case passes, and the decision the table shows. A pruned case never launches: that it does not
    compile is shown, and fails nothing."""
    if not result["ok"]:
        if case.pruned:
            return True, f"does not compile ({result['error'].splitlines()[0][:120]}); {case.pruned}"
        return False, "does not compile"
    notes = []
    if result["shared"] > SHARED_LIMIT[case.target]:
        if case.pruned:
            notes.append("over the shared-memory limit; pruned")
        elif case.tuning:
            notes.append("over the shared-memory limit: the autotuner drops it (OutOfResources)")
        else:
            return False, f"shared memory {result['shared']} B over the sm_{case.target} limit"
    spills = result["spill_stores"] + result["spill_loads"]
    if spills and not case.pruned and not notes:
        ceiling, why = ACCEPTED.get((case.kernel, case.dtype, case.target), (0, ""))
        if spills > ceiling:
            return False, f"spills {result['spill_stores']} B stores, {result['spill_loads']} B loads"
        notes.append(f"spills accepted: {why}")
    if case.uses_dot and case.target == 90 and case.dtype != "fp32" and not result["wgmma"] and not case.pruned:
        rows = dict(case.constexprs)[_DOT_ROWS[case.kernel]]
        if rows >= WGMMA_ROWS:
            return False, "no wgmma on sm_90"
        notes.append(
            f"mma.sync, accepted: its {rows}-row tile is under wgmma's {WGMMA_ROWS} rows; the autotuner "
            "times it against the wgmma configurations"
        )
    if case.pruned:
        notes.append(case.pruned)
    return True, "; ".join(notes) or "ok"


def _cache_dir() -> Path:
    base = os.environ.get("TRITON_CACHE_DIR") or str(Path.home() / ".triton" / "cache")
    return Path(base).parent / "shortcut_fast_matrix"


def run(cases: list[Case], log=sys.stderr) -> list[dict]:
    """Compile (or take from the cache) every case, one at a time; the rows of the table."""
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, case in enumerate(cases):
        stored = cache / (re.sub(r"[^A-Za-z0-9=.,_-]+", "_", case.key) + f"-{triton.__version__}.json")
        # the kernel's source and its callees', and the argument types this script gives it
        sources = _jit(case.kernel).cache_key + repr(sorted(KERNELS[case.kernel][1].items()))
        result = None
        if stored.exists():
            saved = json.loads(stored.read_text())
            result = saved["result"] if saved.get("sources") == sources else None
        if result is None:
            result = compile_apart(case)
            stored.write_text(json.dumps({"sources": sources, "result": result}))
        passed, decision = verdict(case, result)
        rows.append({**dataclasses.asdict(case), "key": case.key, **result, "passed": passed, "decision": decision})
        print(f"[{i + 1}/{len(cases)}] {case.key}: {decision} ({result['seconds']:.0f} s)", file=log, flush=True)
    return rows


def table(rows: list[dict], ci: bool) -> str:
    """The matrix (``ci``: its CI subset) as a Markdown section."""
    scope = (
        "The CI subset (what really launches: on sm_90 every configuration left after pruning in bf16 and "
        "fp32 at the largest shape, on sm_80 one per kernel and dtype); the full matrix adds every dtype, "
        "configuration and shape"
        if ci
        else "Every Triton kernel, for each target, storage dtype, launch configuration and used shape"
    )
    command = "--ci --write-docs" if ci else "--write-docs"
    lines = [
        DOCS_HEADING,
        "",
        f"Generated by `python benchmarks/compile_matrix.py {command} docs/kernels.md` (triton "
        f"{triton.__version__}, its own ptxas); do not edit by hand. {scope}: registers per thread, "
        "shared memory per block "
        f"(limits: sm_80 {SHARED_LIMIT[80]} B, sm_90 {SHARED_LIMIT[90]} B), spill stores/loads from "
        "`ptxas -v`, and for `tl.dot` kernels the matrix instruction emitted. "
        f"{sum(r['passed'] for r in rows)} of {len(rows)} cases pass.",
        "",
        "| kernel | target | dtype | shape | config | regs | shared B | spills st/ld B | mma | decision |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if not r["ok"]:
            lines.append(
                f"| {r['kernel']} | sm_{r['target']} | {r['dtype']} | {r['shape']} | {r['config']} "
                f"| - | - | - | - | **{r['decision']}** |"
            )
            continue
        mma = ("wgmma" if r["wgmma"] else "mma.sync" if r["mma_sync"] else "fma") if r["uses_dot"] else ""
        decision = r["decision"] if r["passed"] else f"**FAIL: {r['decision']}**"
        lines.append(
            f"| {r['kernel']} | sm_{r['target']} | {r['dtype']} | {r['shape']} | {r['config']} "
            f"| {r['registers']} | {r['shared']} | {r['spill_stores']}/{r['spill_loads']} | {mma} "
            f"| {decision} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(path: Path, section: str) -> None:
    """Replace (or append) the generated section at the end of ``path``, atomically."""
    text = path.read_text() if path.exists() else ""
    head = text.split(DOCS_HEADING)[0].rstrip("\n")
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text((head + "\n\n" if head else "") + section)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Compile the matrix; exit 1 when any case fails its checks."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ci", action="store_true", help="only what really launches (the CI test's subset)")
    parser.add_argument("--only", default="", help="only cases whose key contains this text")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    parser.add_argument("--write-docs", type=Path, help="write the table as the last section of this Markdown file")
    args = parser.parse_args(argv)
    cases = [c for c in (ci_matrix() if args.ci else full_matrix()) if args.only in c.key]
    rows = run(cases)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.write_docs:
        write_docs(args.write_docs, table(rows, args.ci))
    failed = [r for r in rows if not r["passed"]]
    for r in failed:
        print(f"FAIL {r['key']}: {r['decision']}", file=sys.stderr)
    print(f"{len(rows) - len(failed)} of {len(rows)} cases pass", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
