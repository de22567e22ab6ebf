"""benchmarks/quality.py at its CI size: it runs, writes its report and pictures, and its tables parse."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import shortcut_fast as sf

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")


def _load_benchmark():
    if "quality_benchmark" not in sys.modules:
        spec = importlib.util.spec_from_file_location("quality_benchmark", ROOT / "benchmarks" / "quality.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["quality_benchmark"] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules["quality_benchmark"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, single_thread):
    quality = _load_benchmark()
    out = tmp_path_factory.mktemp("quality")
    assert quality.main(["--quick", "--out", str(out), "--work", str(out / "cache"), "--threads", "1"]) == 0
    return quality, out


def _table(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_quick_mode_writes_report_and_pictures(quick_run):
    _, out = quick_run
    for name in ("quality_vs_steps.png", "quality_2d.png", "quality_digits.png"):
        with Image.open(out / "img" / name) as img:
            assert img.width > 200 and img.height > 100
    assert (out / "cache" / "digits_classifier.safetensors").is_file()
    report = json.loads((out / "quality.json").read_text())
    md = (out / "quality.md").read_text()
    assert "img/quality_vs_steps.png" in md and report["quick"] is True
    steps = [str(s) for s in report["budget"]["sample_steps"]]
    rows = _table(md, "| data | objective |")
    assert len(rows) == 2 * len(report["budget"]["datasets_2d"])
    for row in rows:
        name, objective = row[0], row[1]
        swd = report["2d"][name][objective]["swd"]
        assert [float(c) for c in row[3 : 3 + len(steps)]] == pytest.approx([swd[s] for s in steps], abs=1e-3)
    digits = _table(md, "| objective | train s | metric |")
    assert len(digits) == 4 and all(0 <= float(c) <= 1 for r in digits if r[2] == "accuracy" for c in r[3:])
    guidance = _table(md, "| steps | guidance |")
    assert [(r[0], r[1], r[2]) for r in guidance] == [
        (s, kind, f) for s in ("1", "4") for kind, f in (("none", "1"), ("sampling", "2"), ("baked", "1"))
    ]
    checked = _table(md, "| aim | met |")
    assert len(checked) == 2 * len(report["budget"]["datasets_2d"]) + 2
    assert {r[1] for r in checked} <= {"**met**", "**missed**"}
    finetune = _table(md, "| run | step |")
    assert [r[1] for r in finetune if r[0] == "finetune"] == ["0", "3", "6"]


@pytest.mark.slow
def test_quick_mode_flow_is_worse_at_one_step(quick_run):
    # even 200 steps separate the objectives at one step on these two sets (not at 128 steps)
    _, out = quick_run
    report = json.loads((out / "quality.json").read_text())
    for name in ("checkerboard", "8gaussians"):
        res = report["2d"][name]
        assert res["flow"]["swd"]["1"] > 1.3 * res["shortcut"]["swd"]["1"]
        assert res["flow"]["swd"]["1"] > 1.3 * res["flow"]["swd"]["128"]


@pytest.mark.slow
def test_render_rewrites_from_the_json(quick_run, tmp_path):
    quality, out = quick_run
    report = json.loads((out / "quality.json").read_text())
    quality.render(report, tmp_path)
    assert (tmp_path / "quality.md").read_text() == (out / "quality.md").read_text()
    assert (tmp_path / "img" / "quality_vs_steps.png").is_file()


def test_flow_baseline_is_sampled_at_its_trained_step(tiny_dit, rng):
    quality = _load_benchmark()
    z = torch.randn(3, 1, 8, 8, generator=rng)
    y = torch.tensor([1, 2, 3])
    flow = quality.for_sampling(tiny_dit, "flow")
    # one step of size 1 with the velocity of the d_min level
    want = z + tiny_dit(z, 0.0, tiny_dit.min_step, y)
    torch.testing.assert_close(sf.sample(flow, noise=z, steps=1, y=y), want)
    assert quality.for_sampling(tiny_dit, "shortcut") is tiny_dit


def test_first_step_meeting():
    quality = _load_benchmark()
    curve = [
        {"step": 100, "accuracy_1": 0.9, "fd_1": 0.2},
        {"step": 200, "accuracy_1": 0.96, "fd_1": 0.5},
        {"step": 300, "accuracy_1": 0.97, "fd_1": 0.3},
    ]
    assert quality.first_step_meeting(curve) == 200
    assert quality.first_step_meeting(curve, fd=0.35) == 300
    assert quality.first_step_meeting(curve, accuracy=0.99) is None
