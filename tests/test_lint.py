"""The code base passes the project's lint settings (pyproject.toml)."""

import subprocess
from pathlib import Path

import pytest
from helpers import require_tool

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_is_clean():
    result = subprocess.run([require_tool("ruff"), "check", "--no-cache", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_is_clean():
    # the settings and the files to check are pyproject.toml's [tool.mypy], read from the repository root
    result = subprocess.run([require_tool("mypy")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
