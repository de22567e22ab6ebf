"""GPU readiness without a GPU: every kernel compiled for the real targets, sm_80 and sm_90.

* The Triton kernels that really launch (``benchmarks/compile_matrix.py --ci``: on sm_90 every
  configuration left after pruning, in bf16 and fp32; on sm_80 one per kernel and dtype) compile with
  the ptxas inside Triton, fit the target's shared memory and do not spill registers, unless the
  script's table of accepted cases says why. The full matrix is the script's, with its table in
  ``docs/kernels.md``.
* Every CUDA source compiles with nvcc for sm_80 and sm_90 with no spill in ``-Xptxas -v``.

Both take minutes cold (results are cached: Triton's cache and the matrix's beside it), hence slow.
The compile runs in a subprocess without ``TRITON_INTERPRET``, which this test session may set.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import require_tool
from test_build import CUDA_SOURCES, HANG_S, ROOT, nvcc_command

from shortcut_fast.ops import contract

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "benchmarks" / "compile_matrix.py"
SHARED_LIMIT = {80: 166912, 90: 232448}  # bytes per block, opt-in maximum of each architecture
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _require_triton_ptxas() -> None:
    """Triton's own ptxas (inside its NVIDIA backend), which compiles the kernels for a GPU target."""
    import triton

    require_tool("ptxas", Path(triton.__file__).parent / "backends" / "nvidia" / "bin")


@pytest.fixture(scope="module")
def launched_rows(tmp_path_factory) -> list[dict]:
    _require_triton_ptxas()
    out = tmp_path_factory.mktemp("matrix") / "ci.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--ci", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert out.exists(), f"the matrix script wrote nothing:\n{result.stderr[-4000:]}"
    return json.loads(out.read_text())


def test_a_compiler_that_aborts_is_a_failed_row_not_the_end_of_the_matrix():
    # compile_case aborting as LLVM's failed assertions do, in a process of its own (the script refuses
    # TRITON_INTERPRET, which this session may set)
    check = textwrap.dedent(
        """
        import dataclasses, json, os, runpy, sys
        matrix = runpy.run_path(sys.argv[1])
        matrix["compile_apart"].__globals__["compile_case"] = lambda case: os.abort()
        case = matrix["full_matrix"]()[0]
        result = matrix["compile_apart"](case)
        verdicts = [matrix["verdict"](dataclasses.replace(case, pruned=p), result) for p in ("", "never launches")]
        print(json.dumps({"result": result, "verdicts": verdicts}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", check, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=HANG_S
    )
    assert out.returncode == 0, out.stderr[-4000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["result"]["ok"] is False and "SIGABRT" in found["result"]["error"]
    (launched, _), (pruned, decision) = found["verdicts"]
    assert launched is False and pruned is True and decision.startswith("does not compile (the compiler aborted")


def test_launched_triton_configurations_compile_fit_and_do_not_spill(launched_rows):
    problems = []
    for row in launched_rows:
        if not row["ok"]:
            problems.append(f"{row['key']}: does not compile: {row['error'][:300]}")
            continue
        if row["shared"] > SHARED_LIMIT[row["target"]] and not row["tuning"]:
            problems.append(f"{row['key']}: {row['shared']} B of shared memory, over the target's maximum")
        if row["spill_stores"] + row["spill_loads"] and "accepted" not in row["decision"]:
            problems.append(f"{row['key']}: spills {row['spill_stores']}/{row['spill_loads']} B")
        if not row["passed"]:
            problems.append(f"{row['key']}: {row['decision']}")
    assert not problems, "\n".join(problems)


def test_every_kernel_and_dtype_has_a_launchable_configuration_on_both_targets(launched_rows):
    defined = set()
    for path in (ROOT / "kernels").glob("*.py"):
        defined |= set(re.findall(r"^def (_\w+_kernel)\(", path.read_text(), flags=re.M))
    launchable = {
        (f"_{r['kernel']}_kernel", r["target"], r["dtype"])
        for r in launched_rows
        if r["ok"] and r["shared"] <= SHARED_LIMIT[r["target"]] and not r["pruned"]
    }
    wanted = {(name, 80, dtype) for name in defined for dtype in ("fp32", "bf16", "fp16")}
    wanted |= {(name, 90, dtype) for name in defined for dtype in ("fp32", "bf16")}
    # the fused attention JVP runs what the contract gives it on a GPU (16-bit storage); fp32 takes the plain rule
    jvp_dtypes = {_DTYPE_NAMES[t] for t in contract.support("attention_jvp", "triton").dtypes}
    wanted = {w for w in wanted if w[0] != "_attention_jvp_kernel" or w[2] in jvp_dtypes}
    assert defined and not wanted - launchable, sorted(wanted - launchable)


_PTXAS_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_cuda_source_compiles_without_spills(tmp_path, source, arch):
    cmd = nvcc_command(source, arch, tmp_path, "-Xptxas", "-v")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr[-4000:]
    report = result.stdout + result.stderr
    counts = _PTXAS_SPILLS.findall(report)
    assert counts, f"no ptxas -v report in nvcc's output:\n{report[-2000:]}"
    spilling = [line for line in report.splitlines() if (m := _PTXAS_SPILLS.search(line)) and (int(m[1]) or int(m[2]))]
    assert not spilling, "\n".join(spilling)
