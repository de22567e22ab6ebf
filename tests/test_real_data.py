"""``benchmarks/real_data.py --quick``: every stage on real Fashion-MNIST at a toy size (the plumbing, not the FIDs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from helpers import require_fashion_mnist

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "real_data.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("real_data", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_quick_run_fills_every_row_and_resumes(tmp_path):
    require_fashion_mnist()
    pytest.importorskip("diffusers")
    script = _load_script()
    argv = ["--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--jobs", "1"]
    assert script.main(argv) == 0
    report = json.loads((tmp_path / "out" / "real_data.json").read_text())
    results = report["results"]
    budget = script.Budget.quick()
    for space, models in (("pixels", script.PIXEL_MODELS), ("latents", script.LATENT_MODELS)):
        assert results[f"floor-{space}"]["fid"] >= 0
        for name in models:
            rows = results[f"evaluate-{space}-{name.replace('+', '_')}"]
            assert len(rows) == 2 * len(budget.sample_steps)
            assert all(row["fid"] >= 0 for row in rows.values())
    assert results["encode-latents"]["encoded"] == budget.train_images
    table = (tmp_path / "out" / "real-data-table.md").read_text()
    assert "| shortcut+ot |" in table and "## latents" in table
    # a second run reads every stored job and trains nothing
    stored = sorted((tmp_path / "work" / "jobs").iterdir())
    assert script.main(argv) == 0
    assert sorted((tmp_path / "work" / "jobs").iterdir()) == stored
