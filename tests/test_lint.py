"""The code base passes the project's lint and format settings (pyproject.toml, .clang-format)."""

import subprocess
from pathlib import Path

import pytest
from helpers import require_tool

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    result = subprocess.run([require_tool("ruff"), "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_the_python_sources_as_they_are():
    result = subprocess.run(
        [require_tool("ruff"), "format", "--check", "--no-cache", str(ROOT)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clang_format_leaves_the_cpp_sources_as_they_are():
    listed = subprocess.run(
        ["git", "ls-files", "csrc/*.cpp", "csrc/*.h", "csrc/*.cu", "csrc/*.cuh", "tests/cpp/*.cpp"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    sources = listed.stdout.split()
    assert sources, "no C++ sources found"
    result = subprocess.run(
        [require_tool("clang-format"), "--dry-run", "--Werror", *sources], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]


@pytest.mark.slow
def test_mypy_is_clean():
    # the settings and the files to check are pyproject.toml's [tool.mypy], read from the repository root
    result = subprocess.run([require_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
