"""``export_onnx``: the exported N-step sampler, run in ONNX Runtime, equals ``sample`` at any batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import micro_dit, perturb_

import shortcut_fast as sf
from shortcut_fast.export import export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("single_thread")


def _run(path, noise: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"noise": noise.numpy()}
    if labels is not None:
        feed["labels"] = labels.numpy()
    assert [i.name for i in session.get_inputs()] == list(feed)
    return torch.from_numpy(session.run(["samples"], feed)[0])


def _expected(model, noise, steps, labels, cfg_scale):
    with sf.backend("reference"), sf.engine.mode("off"):
        return sf.sample(model, noise, steps=steps, y=labels, cfg_scale=cfg_scale)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("steps", "cfg_scale", "guidance_input"),
    [(1, None, False), (3, 1.5, False), ((0.5, 0.25, 0.125, 0.125), None, False), (2, 2.0, True)],
)
def test_the_onnx_sampler_matches_sample_at_odd_batches(tmp_path, steps, cfg_scale, guidance_input):
    model = micro_dit(5, guidance_input=guidance_input).eval()
    path = export_onnx(model, tmp_path / "sampler.onnx", steps=steps, cfg_scale=cfg_scale)
    for batch in (1, 7):
        gen = torch.Generator().manual_seed(batch)
        noise, labels = torch.randn(batch, 2, 4, 4, generator=gen), torch.randint(0, 6, (batch,), generator=gen)
        want = _expected(model, noise, steps, labels, cfg_scale)
        got = _run(path, noise, labels)
        assert float((got - want).norm() / want.norm()) < 1e-5
        # the exported graph ran the model, not a constant: other noise, other samples
        assert not torch.allclose(got, _run(path, noise + 1, labels))


@pytest.mark.slow
def test_an_unconditional_mlp_exports_without_labels(tmp_path):
    model = perturb_(sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, min_step=1 / 8), seed=4).eval()
    path = export_onnx(model, tmp_path / "mlp.onnx", steps=4)
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    got = _run(path, noise, None)
    np.testing.assert_allclose(got.numpy(), _expected(model, noise, 4, None, None).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(steps=3, cfg_scale=float("nan")), ValueError, "cfg_scale must be a finite number"),
        (dict(steps=0), ValueError, "steps"),
        (dict(example_batch=1), ValueError, "example_batch"),
    ],
)
def test_bad_settings_are_refused_before_tracing(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        export_onnx(micro_dit(5).eval(), tmp_path / "x.onnx", **kwargs)
    assert not list(tmp_path.iterdir())  # nothing written


def test_other_models_are_refused(tmp_path):
    with pytest.raises(TypeError, match="exports a ShortcutDiT or ShortcutMLP"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="fp32 models"):
        export_onnx(micro_dit(5).double(), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        export_onnx(micro_dit(0), tmp_path / "x.onnx", cfg_scale=1.5)


@pytest.mark.slow
def test_the_cli_exports_a_saved_model(tmp_path):
    from shortcut_fast import cli

    model = micro_dit(5).eval()
    sf.save_model(model, tmp_path / "model")
    assert (
        cli.main(["export", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "s.onnx"), "--steps", "2"]) == 0
    )
    noise, labels = torch.randn(3, 2, 4, 4), torch.tensor([0, 4, 5])
    got = _run(tmp_path / "s.onnx", noise, labels)
    assert float((got - _expected(model, noise, 2, labels, None)).norm() / got.norm()) < 1e-5
