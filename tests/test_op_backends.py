"""Choosing the backend of the fused ops: by name, scoped, from the environment, and without the extension."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import shortcut_fast as sf
from shortcut_fast import ops
from shortcut_fast.ops import backends


# ---------------------------------------------------------------- choosing backends
def test_set_backend_checks_the_name_and_restores_on_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        sf.set_backend("cuda")
    with pytest.raises(RuntimeError, match="boom"), sf.backend("reference"):
        assert sf.get_backend() == "reference"
        raise RuntimeError("boom")
    assert sf.get_backend() == "auto"


def test_auto_picks_native_on_the_cpu():
    if not backends.native_available():
        pytest.skip("needs the C++ extension")
    assert backends.namespace(torch.device("cpu")) == backends.NATIVE_NAMESPACE
    with sf.backend("reference"):
        assert backends.namespace(torch.device("cpu")) == ""


def test_triton_on_the_cpu_needs_the_interpreter(monkeypatch):
    if not backends.triton_available():
        pytest.skip("needs Triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with sf.backend("triton"), pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        ops.euler_step(torch.zeros(2, 3), torch.ones(2, 3), 0.5)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.mark.slow
def test_a_missing_extension_warns_once_and_runs_the_reference():
    # the import of shortcut_fast._C fails as it does when the extension was never built
    result = _python(
        "import sys; sys.modules['shortcut_fast._C'] = None\n"
        "import torch, shortcut_fast as sf\n"
        "print(sf.backends.namespace(torch.device('cpu')) == '')"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert result.stderr.count("the C++ extension did not load") == 1


@pytest.mark.slow
def test_the_backend_can_be_chosen_from_the_environment():
    ok = _python("import shortcut_fast as sf; print(sf.get_backend())", SHORTCUT_FAST_BACKEND="reference")
    assert ok.returncode == 0 and ok.stdout.strip() == "reference", ok.stderr
    bad = _python("import shortcut_fast", SHORTCUT_FAST_BACKEND="fastest")
    assert bad.returncode != 0 and "SHORTCUT_FAST_BACKEND='fastest'" in bad.stderr
