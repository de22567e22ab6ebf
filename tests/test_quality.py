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
    assert quality.main(["--quick", "--out", str(out), "--work", str(out / "cache")]) == 0
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
    quality, out = quick_run
    for name in ("quality_vs_steps.png", "quality_2d.png", "quality_digits.png"):
        with Image.open(out / "img" / name) as img:
            assert img.width > 200 and img.height > 100
    assert (out / "cache" / "digits_classifier.safetensors").is_file()
    report = json.loads((out / "quality.json").read_text())
    md = (out / "quality.md").read_text()
    assert "img/quality_vs_steps.png" in md and report["quick"] is True
    budget = report["budget"]
    steps = [str(s) for s in budget["sample_steps"]]
    # the main 2D table: mean ± spread over the seeds, recomputed here from the per-seed numbers
    rows = _table(md, "| data | objective |")
    assert len(rows) == len(quality.OBJECTIVE_ROWS) * len(budget["datasets_2d"])
    for row in rows:
        name, objective = row[0], row[1]
        runs = report["2d"][name]["runs"]["baseline" if objective == "shortcut" else objective]
        assert sorted(runs) == [str(s) for s in budget["seeds"]]
        for cell, s in zip(row[3 : 3 + len(steps)], steps, strict=True):
            mean, spread = (float(v) for v in cell.split("±"))
            values = [runs[seed]["swd"][s] for seed in runs]
            assert mean == pytest.approx(sum(values) / len(values), abs=1e-3)
            assert spread == pytest.approx(float(torch.tensor(values).std()), abs=1e-3)
    # the ablation: every 2D configuration on every set, the digits ones, and the best of each
    ablation = _table(md, "| data | configuration |")
    assert {(r[0], r[1]) for r in ablation} == {
        (name, v) for name in budget["datasets_2d"] for v in ("baseline", "ot_pairing", "twin_ema", "all")
    }
    assert report["best"]["2d"] in quality.variants("2d")
    digits_ablation = [r[0] for r in _table(md, "| configuration | train s |")]
    assert digits_ablation[:6] == ["baseline", "intrinsic_guidance", "wavelet", "ot_pairing", "twin_ema", "all"]
    assert report["best"]["digits"] in digits_ablation
    helpful = quality.helpful_digits_techniques(report)
    assert (digits_ablation[6:] == ["best"]) == (helpful not in quality.variants("digits").values())
    orders = _table(md, "| steps | descending |")
    assert [r[0] for r in orders] == [s for s in steps if int(s) & (int(s) - 1)]
    digits = _table(md, "| objective | train s | metric |")
    assert len(digits) == 3 * len(quality.OBJECTIVE_ROWS)
    assert all(0 <= float(c) <= 1 for r in digits if r[2] == "accuracy" for c in r[3:])
    floor = report["digits"]["floor"]
    for r in digits:
        if r[2] == "fd_over_floor":
            fd = next(x for x in digits if x[0] == r[0] and x[2] == "fd")
            assert [float(c) for c in r[3:]] == pytest.approx([float(c) / floor for c in fd[3:]], abs=2e-3)
    guidance = _table(md, "| steps | guidance |")
    kinds = ["none", "sampling", "baked", "intrinsic, w = 1 (intrinsic_guidance)", "intrinsic (intrinsic_guidance)"]
    assert [(r[0], r[1], r[2]) for r in guidance] == [
        (s, kind, "2" if kind == "sampling" else "1") for s in ("1", "4") for kind in kinds
    ]
    checked = _table(md, "| aim |")
    assert len(checked) == 4 * len(budget["datasets_2d"]) + 4  # with MeanFlow against shortcut
    assert all(cell.split(" ")[0] in {"**met**", "**missed**"} for r in checked for cell in r[1:] if cell)
    finetune = _table(md, "| run | step |")
    assert [r[1] for r in finetune if r[0] == "finetune"] == ["0", "3", "6"]


@pytest.mark.slow
def test_quick_mode_resumes_from_stored_jobs(quick_run, tmp_path, monkeypatch):
    # a second run with the same work directory trains nothing: every job's result is read back
    quality, out = quick_run
    budget = quality.Budget.quick()
    report = json.loads((out / "quality.json").read_text())
    waves = quality.plan(budget) + quality.plan(budget, quality.helpful_digits_techniques(report))
    assert len(list((out / "cache" / "jobs").iterdir())) == len(waves)
    trained = []
    monkeypatch.setattr(quality, "run_2d_job", lambda *a: trained.append(a))
    monkeypatch.setattr(quality, "run_digits_job", lambda *a: trained.append(a))
    assert quality.main(["--quick", "--out", str(tmp_path), "--work", str(out / "cache")]) == 0
    assert trained == []
    first, second = (json.loads((d / "quality.json").read_text()) for d in (out, tmp_path))
    assert first["2d"] == second["2d"] and first["digits"] == second["digits"]


@pytest.mark.slow
def test_quick_mode_flow_is_worse_at_one_step(quick_run):
    # even 200 steps separate the objectives at one step on these two sets (seed means; not at 128 steps)
    quality, out = quick_run
    report = json.loads((out / "quality.json").read_text())
    for name in ("checkerboard", "8gaussians"):
        entry = report["2d"][name]
        flow_one = quality.mean_swd(entry, "flow", "1")
        assert flow_one > 1.25 * quality.mean_swd(entry, "baseline", "1")
        assert flow_one > 1.25 * quality.mean_swd(entry, "flow", "128")


def test_technique_settings_turn_on_each_technique():
    quality = _load_benchmark()
    budget = quality.Budget()
    shortcut, train, model = quality.technique_settings(
        budget, ("intrinsic_guidance", "wavelet", "ot_pairing", "twin_ema")
    )
    assert shortcut == {
        "intrinsic_guidance": budget.guidance_range,
        "wavelet_levels": budget.wavelet_levels,
        "ot_pairing": True,
        "ema_targets": True,
    }
    assert train == {"target_ema_decay": budget.target_ema_decay} and model == {"guidance_input": True}
    assert quality.technique_settings(budget, ()) == ({}, {}, {})
    # the 2D sets take only the techniques for unlabelled vectors; every subset of them is a configuration
    assert set(quality.variants("2d").values()) == {(), ("ot_pairing",), ("twin_ema",), ("ot_pairing", "twin_ema")}
    assert len(quality.variants("digits")) == 6


def test_data_seeds_do_not_overlap_across_runs():
    quality = _load_benchmark()
    drawn = [v for seed in range(5) for v in quality.data_seeds(seed).values()]
    assert len(drawn) == len(set(drawn))


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
        {"step": 200, "accuracy_1": 0.975, "fd_1": 0.5},
        {"step": 300, "accuracy_1": 0.98, "fd_1": 0.3},
    ]
    assert quality.first_step_meeting(curve) == 200
    assert quality.first_step_meeting(curve, fd=0.35) == 300
    assert quality.first_step_meeting(curve, accuracy=0.99) is None
