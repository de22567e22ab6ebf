"""Fine-tuning a flow model into a shortcut model: from_flow_model and ``train --init``."""

import json
import re

import pytest
import torch
from conftest import TINY_DIT
from helpers import perturb_

import shortcut_fast as sf
from shortcut_fast.checkpoint import resolve_checkpoint
from shortcut_fast.cli import main
from shortcut_fast.finetune import STEP_TABLE_KEY, copy_flow_level, from_flow_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _outputs_at_every_level(model, x, y=None):
    t = torch.linspace(0, 0.9, x.shape[0])
    return torch.stack([model(x, t, d, y) for d in model.step_sizes])


def test_from_flow_model_starts_as_the_flow_model_at_every_level(tiny_dit, rng):
    x = torch.randn(6, 1, 8, 8, generator=rng)
    y = torch.tensor([0, 1, 2, 3, 10, 9])
    flow_v = tiny_dit(x, torch.linspace(0, 0.9, 6), tiny_dit.min_step, y)
    before = _outputs_at_every_level(tiny_dit, x, y)
    assert not torch.allclose(before[0], before[-1])  # the source's levels differ (perturbed table)
    model = sf.from_flow_model(tiny_dit, sf.ShortcutDiT)
    assert model.training and model is not tiny_dit
    after = _outputs_at_every_level(model.eval(), x, y)
    for v in after:
        torch.testing.assert_close(v, flow_v, rtol=0, atol=0)
    # the source is untouched
    torch.testing.assert_close(_outputs_at_every_level(tiny_dit, x, y), before)


def test_from_flow_model_mlp_and_copy_flow_level(tiny_mlp, rng):
    x = torch.randn(5, 3, generator=rng)
    model = sf.from_flow_model(tiny_mlp, sf.ShortcutMLP).eval()
    flow_v = tiny_mlp(x, 0.25, tiny_mlp.min_step)
    for d in model.step_sizes:
        torch.testing.assert_close(model(x, 0.25, d), flow_v, rtol=0, atol=0)
    table = copy_flow_level(perturb_(sf.ShortcutMLP(dim=3, hidden_size=32, depth=1), seed=4)).cond.d_table.weight
    assert torch.equal(table, table[:1].expand_as(table))


def test_from_flow_model_from_a_directory_and_from_flow_only_weights(tmp_path, tiny_dit, rng):
    x = torch.randn(4, 1, 8, 8, generator=rng)
    y = torch.tensor([1, 2, 3, 4])
    sf.save_model(tiny_dit, tmp_path / "flow")
    loaded = sf.from_flow_model(tmp_path / "flow", sf.ShortcutDiT).eval()
    want = tiny_dit(x, 0.5, tiny_dit.min_step, y)
    torch.testing.assert_close(loaded(x, 0.5, 1.0, y), want, rtol=0, atol=0)
    # weights of a flow model that never had a step-size table: the table starts at zero
    state = {k: v for k, v in tiny_dit.state_dict().items() if k != STEP_TABLE_KEY}
    config = dict(tiny_dit.config)
    model = sf.from_flow_model(state, sf.ShortcutDiT, config=config).eval()
    assert torch.count_nonzero(model.cond.d_table.weight) == 0
    no_table = sf.ShortcutDiT(**config)
    no_table.load_state_dict({**state, STEP_TABLE_KEY: torch.zeros_like(model.cond.d_table.weight)})
    torch.testing.assert_close(model(x, 0.5, 0.25, y), no_table.eval()(x, 0.5, 1 / 128, y), rtol=0, atol=0)


def test_from_flow_model_errors(tmp_path, tiny_dit, tiny_mlp):
    with pytest.raises(ValueError, match="not a ShortcutDiT"):
        sf.from_flow_model(tiny_mlp, sf.ShortcutDiT)
    sf.save_model(tiny_mlp, tmp_path / "mlp")
    with pytest.raises(ValueError, match="holds a ShortcutMLP, not a ShortcutDiT"):
        sf.from_flow_model(tmp_path / "mlp", sf.ShortcutDiT)
    with pytest.raises(FileNotFoundError):
        sf.from_flow_model(tmp_path / "missing", sf.ShortcutDiT)
    with pytest.raises(ValueError, match="needs config"):
        sf.from_flow_model(tiny_dit.state_dict(), sf.ShortcutDiT)
    bad = dict(TINY_DIT, hidden_size=64, num_classes=10)
    with pytest.raises(ValueError, match="do not fit ShortcutDiT"):
        sf.from_flow_model(tiny_dit.state_dict(), sf.ShortcutDiT, config=bad)
    with pytest.raises(TypeError, match="source must be"):
        from_flow_model(3.0)


def _train_flow_run(tmp_path, **model):
    cfg = tmp_path / "flow.toml"
    settings = "".join(f"{k} = {v}\n" for k, v in {"hidden_size": 32, "depth": 1, "num_heads": 2, **model}.items())
    cfg.write_text(
        'data = "digits"\nsteps = 3\n[model]\n'
        + settings
        + '[train]\nbatch_size = 16\nprogress = false\n[train.shortcut]\nobjective = "flow"\n'
    )
    run = tmp_path / "flow_run"
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 0
    return run


def test_train_init_fine_tunes_a_flow_run(tmp_path):
    flow_run = _train_flow_run(tmp_path)
    flow = sf.load_model(flow_run)  # EMA weights
    out = tmp_path / "ft"
    # no model settings: the architecture is the saved one; zero steps keeps the initial weights
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--init",
                str(flow_run),
                "--out",
                str(out),
                "--steps",
                "0",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    assert not out.exists() or not any(out.glob("step_*"))
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--init",
                str(flow_run),
                "--out",
                str(out),
                "--steps",
                "2",
                "--batch-size",
                "16",
            ]
        )
        == 0
    )
    meta = json.loads((resolve_checkpoint(out) / "trainer.json").read_text())
    assert meta["step"] == 2 and meta["train_config"]["shortcut"]["objective"] == "shortcut"
    assert meta["model"]["config"] == flow.config
    ft = sf.load_model(out, ema=False)
    assert not torch.equal(ft.cond.d_table.weight, flow.cond.d_table.weight)


def test_init_copies_the_flow_level_only_for_flow_runs(tmp_path):
    from shortcut_fast.cli import init_model

    flow_run = _train_flow_run(tmp_path)
    example = torch.zeros(1, 1, 8, 8)
    copied = init_model(flow_run, example, 10, {})
    table = copied.cond.d_table.weight
    assert torch.equal(table, table[:1].expand_as(table))
    kept = init_model(flow_run, example, 10, {}, levels="keep")
    assert torch.equal(kept.cond.d_table.weight, sf.load_model(flow_run).cond.d_table.weight)
    assert not torch.equal(kept.cond.d_table.weight, table)


def test_train_init_errors(tmp_path, capsys):
    flow_run = _train_flow_run(tmp_path)
    out = str(tmp_path / "ft")
    cases = [
        (
            ["--data", "digits", "--init", str(flow_run), "--preset", "DiT-S/2"],
            "depth=1, but the run asks for depth=12",
        ),
        (["--data", "digits", "--init", str(tmp_path / "missing")], "is not a model directory"),
    ]
    cfg = tmp_path / "deeper.toml"
    cfg.write_text('data = "digits"\n[model]\ndepth = 2\n')
    cases.append((["--config", str(cfg), "--init", str(flow_run)], "depth=1.*depth=2"))
    mlp_dir = tmp_path / "mlp"
    sf.save_model(sf.ShortcutMLP(dim=2, hidden_size=16, depth=1), mlp_dir)
    cases.append((["--data", "digits", "--init", str(mlp_dir)], "holds a ShortcutMLP, but this data needs"))
    uncond = tmp_path / "uncond"
    sf.save_model(sf.ShortcutDiT(**TINY_DIT, num_classes=0), uncond)
    cases.append((["--data", "digits", "--init", str(uncond)], "num_classes=0.*num_classes=10"))
    for extra, match in cases:
        with pytest.raises(SystemExit) as exc:
            main(["train", "--out", out, "--steps", "1", *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "error:" in err
        assert re.search(match, err), err


def test_the_classmethod_of_the_last_release_still_routes_to_from_flow_model(tiny_dit, rng):
    x = torch.randn(3, 1, 8, 8, generator=rng)
    t, d = torch.full((3,), 0.5), torch.full((3,), 0.25)
    old, new = sf.ShortcutDiT.from_flow_model(tiny_dit).eval(), sf.from_flow_model(tiny_dit, sf.ShortcutDiT).eval()
    torch.testing.assert_close(old(x, t, d), new(x, t, d), rtol=0, atol=0)
