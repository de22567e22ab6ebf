"""benchmarks/throughput.py end to end at a tiny size (its numbers are not judged here, only their form)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

import shortcut_fast as sf
from shortcut_fast.ops import autotune

pytestmark = pytest.mark.usefixtures("single_thread")

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_throughput_runs_every_comparison_and_writes_json(tmp_path, capsys):
    out = tmp_path / "throughput.json"
    throughput = _load_script()
    autotune.set_mode("measured")  # the decisions are shown (the benchmark keeps them in a folder of its own)
    try:
        results = throughput.main(
            [
                "--preset",
                "tiny",
                "--no-compile",
                "--batch",
                "3",
                "--train-batch",
                "4",
                "--repeats",
                "2",
                "--warmup",
                "1",
                "--json",
                str(out),
            ]
        )
    finally:
        autotune.set_mode("fixed")
        autotune.reset()
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    engine = {"shortcut_fast:engine@1", "shortcut_fast:engine@3"} if sf.engine.available() else set()
    kernels = {"shortcut_fast:kernels@1", "shortcut_fast:kernels@3"}
    runtimes = {f"{r}@{b}" for r in ("onnxruntime", "openvino") if importlib.util.find_spec(r) for b in (1, 3)}
    expected = {"eager@1", "eager@3", "shortcut_fast@1", "shortcut_fast@3", *kernels, *engine, *runtimes}
    assert set(results["sampling"]) == expected
    assert set(results["training"]) == {"eager", "shortcut_fast", "shortcut_fast:kernels", "shortcut_fast:flow"}
    assert set(results["ops"]) == {
        "attention",
        "attention fwd+bwd",
        "modulate_layernorm",
        "modulate_layernorm fwd+bwd",
        "gated_residual",
        "gated_residual fwd+bwd",
        "timestep_features",
        "condition_sum",
        "euler_step",
        "bootstrap_midpoint",
        "bootstrap_target",
    }
    for entry in [*results["sampling"].values(), *results["training"].values()]:
        assert math.isfinite(entry["seconds"]) and entry["seconds"] > 0
    for name, entry in results["training"].items():
        assert entry["images_per_s"] == pytest.approx(4 / entry["seconds"]), name
    # a training step of 4 rows: forward and backward (3 forwards' worth) of all 4, plus the two
    # target forwards of the 1 self-consistency row (a quarter of the batch): 14 one-row forwards
    assert results["train_flops_per_step"] == pytest.approx(14 * results["sample_flops_per_image"], rel=0.05)
    table = capsys.readouterr().out
    for row in (
        "| eager | 1 |",
        "| shortcut_fast | 3 |",
        "| shortcut_fast:flow |",
        "| attention |",
        "self-consistency cost over a flow-matching step",
        "auto's first use for this model",
        "## what auto runs here",
        "| attention | shortcut_fast |",
        *(["| sample() − engine op |"] if sf.engine.available() else []),
    ):
        assert row in table


@pytest.mark.parametrize(
    "argv,message",
    [(["--batch", "0"], "--batch must be >= 1"), (["--dtype", "bf16", "--device", "cpu"], "needs a CUDA device")],
)
def test_throughput_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        _load_script().parse_args(argv)
    assert message in capsys.readouterr().err


def test_api_overhead_times_sample_against_the_engine_op_it_runs():
    if not sf.engine.available():
        pytest.skip("the native extension with the engine is not built")
    import torch

    throughput = _load_script()
    args = throughput.parse_args(["--preset", "tiny", "--repeats", "3", "--warmup", "1", "--steps", "2"])
    model = throughput.build_model(args, torch.device("cpu"))
    # api_overhead itself checks that the bare op, on the same inputs, gives sample()'s result bit for bit
    result = throughput.api_overhead(args, model, torch.device("cpu"), torch.float32)
    assert result["floor"] == "engine op"
    assert 0 < result["raw_s"] and 0 < result["sample_s"]
    assert result["overhead_s"] == pytest.approx(result["sample_s"] - result["raw_s"])


@pytest.mark.slow
def test_meanflow_step_times_every_row_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("meanflow_step", SCRIPT.parent / "meanflow_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "meanflow_step.json"
    assert module.main(["--preset", "digits", "--batch", "4", "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert set(row["seconds"]) == {"flow", "meanflow", "meanflow, reference ops", "meanflow, central difference"}
    assert all(s > 0 for s in row["seconds"].values()) and row["ratio_to_flow"]["flow"] == 1.0
    assert "meanflow, reference ops" in capsys.readouterr().out


@pytest.mark.slow
def test_ot_cost_times_the_pairing_and_both_steps(tmp_path):
    spec = importlib.util.spec_from_file_location("ot_cost", SCRIPT.parent / "ot_cost.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "ot.json"
    assert module.main(["--batch", "12", "--repeats", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["batch"] == 12 and all(s > 0 for s in row["seconds"].values())
    assert set(row["seconds"]) == {"pairing within classes", "pairing over the batch", "step", "step with ot_pairing"}
