"""The shortcut-fast command line: demo, train, sample, and its errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import shortcut_fast as sf
from shortcut_fast.checkpoint import resolve_checkpoint
from shortcut_fast.cli import main


@pytest.mark.slow
def test_demo_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "20", "--samples-per-class", "3", "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["steps"], key=int) == ["1", "2", "4", "8", "128"]
    for row in metrics["steps"].values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["fd"] >= 0.0
        assert row["fd_over_floor"] == pytest.approx(row["fd"] / metrics["fd_floor"])
    assert metrics["fd_floor"] > 0.0 and metrics["train_seconds"] > 0
    for steps in (1, 2, 4, 8, 128):
        with Image.open(out / f"samples_{steps}step.png") as img:
            assert img.width > 3 * 8 and img.height > 10 * 8
    model = sf.load_model(out / "model")
    assert isinstance(model, sf.ShortcutDiT) and model.num_classes == 10
    assert "1 step(s): accuracy" in capsys.readouterr().out


def test_demo_refuses_too_many_samples_before_training(tmp_path, capsys):
    # 90 per class would need two disjoint real sets of 900 of the 1797 digits
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--out", str(tmp_path / "demo"), "--samples-per-class", "90", "--quiet"])
    assert exit_info.value.code == 2
    assert "samples_per_class must be in [1, 89], got 90" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_train_then_sample(tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'data = "digits"\nsteps = 4\n[model]\nhidden_size = 32\ndepth = 1\nnum_heads = 2\n'
        "[train]\nbatch_size = 16\nprogress = false\n[train.shortcut]\nclip = 3.0\n"
    )
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    meta = json.loads((resolve_checkpoint(run) / "trainer.json").read_text())
    assert meta["step"] == 4 and meta["train_config"]["shortcut"]["clip"] == 3.0
    # --resume continues to the total number of steps
    assert main(["train", "--config", str(cfg), "--out", str(run), "--steps", "6", "--resume"]) == 0
    assert json.loads((resolve_checkpoint(run) / "trainer.json").read_text())["step"] == 6
    assert (run / "latest").read_text().strip() == "step_00000006"

    grid = tmp_path / "grid.png"
    assert main(["sample", "--model", str(run), "--steps", "2", "--n", "3", "--out", str(grid)]) == 0
    assert Image.open(grid).height >= 10 * 8
    arr = tmp_path / "s.npy"
    assert main(["sample", "--model", str(run), "--n", "4", "--label", "7", "--out", str(arr)]) == 0
    x = np.load(arr)
    assert x.shape == (4, 1, 8, 8) and np.isfinite(x).all()
    # the CLI samples what the Python API samples
    model = sf.load_model(run)
    want = sf.sample(
        model, shape=(4, 1, 8, 8), steps=1, y=torch.full((4,), 7), generator=torch.Generator().manual_seed(0)
    )
    np.testing.assert_allclose(x, want.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_train_on_vector_file(tmp_path):
    data = tmp_path / "points.safetensors"
    save_file({"x": torch.randn(64, 2), "y": torch.randint(0, 2, (64,))}, str(data))
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "3", "--batch-size", "16"]) == 0
    model = sf.load_model(run)
    assert isinstance(model, sf.ShortcutMLP) and model.dim == 2 and model.num_classes == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["sample", "--model", str(run), "--out", str(tmp_path / "g.png")])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    "content, suffix, match",
    [
        ("data = digits", ".toml", "malformed"),
        ('{"data": "digits", "optimizer": {}}', ".json", "unknown keys"),
        ('{"data": "digits", "train": {"lr": -1}}', ".json", "lr"),
        ('{"data": "digits", "model": []}', ".json", "model"),
        ("data: digits", ".yaml", ".json or .toml"),
    ],
)
def test_bad_config_files_exit_with_message(tmp_path, capsys, content, suffix, match):
    cfg = tmp_path / f"run{suffix}"
    cfg.write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--steps", "1"])
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_bad_data_files(tmp_path, capsys):
    bad = tmp_path / "x.npy"
    np.save(bad, np.array([1.0, np.nan, 2.0]).reshape(3, 1))
    for args, match in [
        (["--data", str(bad)], "NaN"),
        (["--data", str(tmp_path / "missing.npy")], "does not exist"),
        (["--data", str(tmp_path / "x.csv")], ".npy or .safetensors"),
        ([], "give --data"),
    ]:
        with pytest.raises(SystemExit):
            main(["train", *args, "--out", str(tmp_path / "r"), "--steps", "1"])
        assert match in capsys.readouterr().err


def test_sample_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(tmp_path / "nowhere"), "--out", str(tmp_path / "g.png")])
    assert "not a directory" in capsys.readouterr().err
    model = sf.ShortcutDiT(
        input_size=8, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=0
    )
    sf.save_model(model, tmp_path / "m")
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(tmp_path / "m"), "--steps", "129", "--out", str(tmp_path / "g.png")])
    assert "steps must be an int in [1, 128]" in capsys.readouterr().err


def test_sample_dtype_sets_the_networks_precision(tmp_path, capsys):
    model = sf.ShortcutDiT(
        input_size=8, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=0
    )
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)  # off the zero init, so that the precision shows
    sf.save_model(model, tmp_path / "m")
    got = {}
    for dtype in ("auto", "float32", "bfloat16"):
        out = tmp_path / f"{dtype}.npy"
        assert main(["sample", "--model", str(tmp_path / "m"), "--n", "3", "--dtype", dtype, "--out", str(out)]) == 0
        got[dtype] = np.load(out)
        assert got[dtype].dtype == np.float32
    loaded = sf.load_model(tmp_path / "m")
    want = sf.sample(
        loaded, shape=(3, 1, 8, 8), generator=torch.Generator().manual_seed(0), compute_dtype=torch.bfloat16
    )
    np.testing.assert_array_equal(got["bfloat16"], want.numpy())
    np.testing.assert_array_equal(got["auto"], got["float32"])  # the CPU default is fp32
    assert not np.array_equal(got["bfloat16"], got["float32"])
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(tmp_path / "m"), "--dtype", "float64", "--out", str(tmp_path / "x.npy")])
    assert "invalid choice: 'float64'" in capsys.readouterr().err
