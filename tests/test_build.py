"""CI checks of the native build that need no GPU.

* The CMake project configures against the installed torch, builds the C++
  test of the CPU kernels and passes ctest.
* Every CUDA source compiles (nvcc, compile only, sm_90) against torch's
  headers with the flags torch's extension tooling uses. Linking and running
  need a CUDA build of torch and a GPU, which the GPU machine checks.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from helpers import require_tool
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, CUDA_HOME, include_paths

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc").rglob("*.cu"))
# Guards against a hung tool only, far above the normal times (nvcc: ~100 s per source on a quiet
# 2-core machine), so that a slow or loaded machine never fails a build that would succeed.
HANG_S = 30 * 60


def _run(cmd: list[str], timeout: float) -> None:
    cmd = [str(part) for part in cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{shlex.join(cmd)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


@pytest.mark.slow
def test_cmake_builds_the_cpu_kernel_test_and_ctest_passes(tmp_path):
    cmake, ctest = require_tool("cmake"), require_tool("ctest")
    build = tmp_path / "build"
    configure = [cmake, "-S", ROOT, "-B", build, f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"]
    _run([*configure, f"-DPython3_EXECUTABLE={sys.executable}"], timeout=HANG_S)
    # Only the test target: the extension itself takes minutes here and pip builds it already.
    _run([cmake, "--build", build, "--target", "test_cpu_kernels"], timeout=HANG_S)
    _run([ctest, "--test-dir", build, "--output-on-failure"], timeout=HANG_S)


def _torch_includes(scratch: Path) -> list[str]:
    """torch's and Python's include dirs, plus a stand-in for the one c10/cuda header a CPU wheel lacks."""
    dirs = [*include_paths(), sysconfig.get_paths()["include"]]
    generated = Path("c10") / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not any((Path(d) / generated).exists() for d in dirs):
        # CMake generates it in a CUDA build of torch; for shared libraries it holds just this macro.
        (scratch / generated).parent.mkdir(parents=True)
        (scratch / generated).write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        dirs.append(str(scratch))
    return dirs


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_cuda_source_compiles_for_sm90(tmp_path, source):
    # torch finds the CUDA toolkit (CUDA_HOME) beside a CUDA build; otherwise nvcc must be on PATH.
    nvcc = require_tool("nvcc", CUDA_HOME and Path(CUDA_HOME) / "bin")
    abi = int(torch.compiled_with_cxx11_abi())
    cmd = [
        nvcc, "-c", "-x", "cu", "-std=c++20", "-arch=sm_90", "-O3",
        *COMMON_NVCC_FLAGS,  # -D__CUDA_NO_HALF_OPERATORS__ etc., --expt-relaxed-constexpr
        "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        "-DSHORTCUT_FAST_WITH_CUDA",
        *(f"-I{d}" for d in _torch_includes(tmp_path)),
        source, "-o", os.devnull,
    ]  # fmt: skip
    _run(cmd, timeout=HANG_S)


def test_a_missing_tool_skips_but_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-5b1e is not installed"):
        require_tool("no-such-tool-5b1e")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_tool("no-such-tool-5b1e")


def test_a_tool_is_found_in_the_extra_folders(tmp_path, monkeypatch):
    tool = tmp_path / "fake-tool-5b1e"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    monkeypatch.setenv("CI", "true")
    assert require_tool("fake-tool-5b1e", None, tmp_path) == str(tool)
