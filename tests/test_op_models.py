"""Whole models on every op backend: forward and every weight's gradient against the reference backend,
and the compiled DiT without graph breaks."""

from __future__ import annotations

import pytest
import torch
from helpers import perturb_

import shortcut_fast as sf
from shortcut_fast.ops import backends

pytestmark = pytest.mark.usefixtures("single_thread")


def _randn(*shape, device, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device)


def _same(fast, ref, rtol=1e-5):
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * max(1.0, ref.abs().max().item()))


# ---------------------------------------------------------------- whole models
def _dit(device, num_classes=5):
    # 9 tokens, head size 32: shapes the GPU kernels take too
    model = sf.ShortcutDiT(
        input_size=6, in_channels=3, patch_size=2, hidden_size=64, depth=2, num_heads=2, num_classes=num_classes
    )
    return perturb_(model, seed=0).to(device)


def _model_outputs_and_grads(model, x, t, d, y):
    model.zero_grad(set_to_none=True)
    out = model(x, t, d, y)
    (out * torch.linspace(-1, 1, out.numel(), device=out.device).view_as(out)).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_model_matches_reference(model, x, t, d, y):
    """The output within 1e-5 and every weight's gradient within 1e-4 of the reference backend's."""
    out, grads = _model_outputs_and_grads(model, x, t, d, y)
    with sf.backend("reference"):
        ref_out, ref_grads = _model_outputs_and_grads(model, x, t, d, y)
    _same(out, ref_out)
    for name, g in ref_grads.items():
        _same(grads[name], g, 1e-4)


def test_dit_forward_and_backward_match_the_reference(op_backend):
    device = op_backend.device
    model = _dit(device)
    x = _randn(3, 3, 6, 6, device=device, seed=1)
    t, d = torch.tensor([0.0, 0.5, 0.75], device=device), torch.tensor([1.0, 0.5, 0.25], device=device)
    y = torch.tensor([0, 4, 5], device=device)
    _assert_model_matches_reference(model, x, t, d, y)


def test_mlp_forward_and_backward_match_the_reference(op_backend, tiny_mlp):
    device = op_backend.device
    model = tiny_mlp.to(device)
    x = _randn(5, 3, device=device, seed=2)
    t, d = torch.rand(5, generator=torch.Generator().manual_seed(3)).to(device), 0.125
    _assert_model_matches_reference(model, x, t, d, None)


@pytest.mark.slow
def test_compiled_model_has_no_graph_breaks():
    if not backends.native_available():
        pytest.skip("needs the C++ extension")
    model = _dit("cpu")
    x, y = _randn(2, 3, 6, 6, device="cpu", seed=5), torch.tensor([1, 5])
    t, d = torch.tensor([0.0, 0.5]), torch.tensor([1.0, 0.5])
    with sf.backend("native"):
        eager, _ = _model_outputs_and_grads(model, x, t, d, y)
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        out = compiled(x, t, d, y)
        out.sum().backward()
    _same(out.detach(), eager)
