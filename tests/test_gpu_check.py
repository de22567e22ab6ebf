"""The logic of ``benchmarks/gpu_check.sh`` on the CPU, through its ``--dry-run`` mode.

Each stage then runs a stand-in command (``GPU_CHECK_DRY_<STAGE>``) under the stage's real time limit,
so these tests drive the script through success, failure, timeout and a spent budget, and read the
summary table it must print last whatever happened.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
STAGES = ("build", "warm", "tests", "throughput")

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


def _run(tmp_path, *args, **env) -> tuple[int, str, dict[str, str]]:
    full_env = {**os.environ, "OUT": str(tmp_path), **env}
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], capture_output=True, text=True, env=full_env, timeout=120
    )
    out = result.stdout
    summary = out[out.rindex("== summary") :].splitlines()
    rows = {line.split("|")[0].strip(): line.split("|")[1].strip() for line in summary[2:] if "|" in line}
    assert list(rows) == list(STAGES), out
    assert summary[-1].split("|")[0].strip() == STAGES[-1], "the table is not the last thing printed"
    return result.returncode, out, rows


def test_every_stage_passes_and_the_real_commands_parse(tmp_path):
    rc, out, rows = _run(tmp_path)
    assert rc == 0 and set(rows.values()) == {"ok"}
    for stage in STAGES:
        assert f"== {stage} (limit " in out
    assert "budget 480 s" in out and "pytest" in out and "throughput.py" in out


def test_quick_has_a_three_minute_budget_and_the_stage_limits_fit_it(tmp_path):
    rc, out, _ = _run(tmp_path, "--quick")
    limits = [
        int(line.split("limit ")[1].split(" s")[0])
        for line in out.splitlines()
        if line.startswith("== ") and "(limit " in line
    ]
    assert rc == 0 and "budget 180 s" in out and sum(limits) <= 180 and len(limits) == len(STAGES)


def test_a_failed_stage_is_reported_and_later_stages_still_run(tmp_path):
    rc, _, rows = _run(tmp_path, GPU_CHECK_DRY_TESTS="echo two tests failed; exit 3")
    assert rc != 0
    assert rows == {"build": "ok", "warm": "ok", "tests": "FAILED (rc 3)", "throughput": "ok"}
    assert "two tests failed" in (tmp_path / "tests.log").read_text()


def test_a_failed_build_leaves_the_other_stages_not_reached(tmp_path):
    rc, _, rows = _run(tmp_path, GPU_CHECK_DRY_BUILD="exit 1")
    assert rc != 0 and rows["build"] == "FAILED (rc 1)"
    assert all(rows[stage] == "not reached (build failed)" for stage in STAGES[1:])


def test_a_stage_over_its_limit_is_stopped_and_said_so(tmp_path):
    rc, out, rows = _run(tmp_path, GPU_CHECK_DRY_WARM="sleep 30", GPU_CHECK_LIMIT_WARM="1")
    assert rc != 0 and rows["warm"] == "TIMED OUT (limit 1 s)" and rows["tests"] == "ok"


@pytest.mark.slow
def test_stages_the_budget_cannot_fit_are_not_reached(tmp_path):
    rc, _, rows = _run(tmp_path, GPU_CHECK_BUDGET="8", GPU_CHECK_DRY_BUILD="sleep 5")
    assert rc != 0 and rows["build"] == "ok"
    assert rows["warm"] == "not reached (budget spent)" and rows["throughput"] == "not reached (budget spent)"


def test_an_unknown_option_is_refused(tmp_path):
    result = subprocess.run(
        ["bash", str(SCRIPT), "--fast"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "OUT": str(tmp_path)},
    )
    assert result.returncode == 2 and "usage:" in result.stderr
