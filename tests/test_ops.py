"""Every backend of the public ops against the plain PyTorch reference.

The public functions of ``shortcut_fast.ops`` under each available backend
(native C++, Triton: under ``TRITON_INTERPRET=1`` on the CPU) give the numbers
of ``functional.py``: per op, for the whole models forward and backward, under
``torch.library.opcheck`` and under ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import perturb_

import shortcut_fast as sf
from shortcut_fast import backends, ops
from shortcut_fast.ops import reference as SF

pytestmark = pytest.mark.usefixtures("single_thread")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _runs(name: str, device: str) -> bool:
    if name == "native":
        return backends.native_available() and (device == "cpu" or backends._native_cuda)
    return backends.triton_available() and (device == "cuda" or backends.triton_interpreted())


CASES = [(name, device) for name in ("native", "triton") for device in DEVICES if _runs(name, device)]
if not CASES:
    pytest.skip("neither the C++ extension nor the Triton kernels are available here", allow_module_level=True)


@pytest.fixture(params=CASES, ids=[f"{n}-{d}" for n, d in CASES])
def case(request):
    name, device = request.param
    with sf.backend(name):
        yield name, device


def _randn(*shape, device, seed, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(device).requires_grad_(requires_grad)


def _same(fast, ref, rtol=1e-5):
    torch.testing.assert_close(fast, ref, rtol=rtol, atol=rtol * max(1.0, ref.abs().max().item()))


def _compare(fn_fast, fn_ref, inputs, grad_rtol=1e-4):
    """Forward within 1e-5 and gradients of every floating input within ``grad_rtol``."""
    fast, ref = fn_fast(*inputs), fn_ref(*inputs)
    _same(fast, ref)
    diff_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if diff_inputs:
        cot = torch.randn_like(ref)
        g_fast = torch.autograd.grad(fast, diff_inputs, cot)
        g_ref = torch.autograd.grad(ref, diff_inputs, cot)
        for a, b in zip(g_fast, g_ref, strict=True):
            _same(a, b, grad_rtol)


# ---------------------------------------------------------------- per op
@pytest.mark.parametrize("n,head_dim", [(7, 32), (13, 64), (1, 32)])
def test_attention(case, n, head_dim):
    _, device = case
    q, k, v = (_randn(2, 3, n, head_dim, device=device, seed=s, requires_grad=True) for s in range(3))
    _compare(ops.attention, SF.attention, (q, k, v))


def test_attention_on_a_strided_view(case):
    _, device = case
    qkv = _randn(2, 5, 3, 2, 32, device=device, seed=4).permute(2, 0, 3, 1, 4)  # as the DiT makes it
    _same(ops.attention(qkv[0], qkv[1], qkv[2]), SF.attention(qkv[0], qkv[1], qkv[2]))


@pytest.mark.parametrize("shape", [(3, 7, 37), (2, 48), (1, 1, 64)])
def test_modulate_layernorm(case, shape):
    _, device = case
    x = _randn(*shape, device=device, seed=0, requires_grad=True)
    shift = _randn(shape[0], shape[-1], device=device, seed=1, requires_grad=True)
    scale = _randn(shape[0], shape[-1], device=device, seed=2, requires_grad=True)
    _compare(ops.modulate_layernorm, SF.modulate_layernorm, (x, shift, scale))


@pytest.mark.parametrize("shape", [(3, 7, 37), (5, 48)])
def test_gated_residual(case, shape):
    _, device = case
    x, y = (_randn(*shape, device=device, seed=s, requires_grad=True) for s in (0, 1))
    gate = _randn(shape[0], shape[-1], device=device, seed=2, requires_grad=True)
    _compare(ops.gated_residual, SF.gated_residual, (x, gate, y))


@pytest.mark.parametrize("dim", [256, 33])
def test_timestep_features(case, dim):
    _, device = case
    t = torch.tensor([0.0, 1 / 128, 0.5, 0.99, 1.0], device=device)
    # arguments reach 1000 rad, where one ulp of a frequency (another exp than torch's) moves the output by ~6e-5
    torch.testing.assert_close(ops.timestep_features(t, dim), SF.timestep_features(t, dim), rtol=0, atol=2e-4)


@pytest.mark.parametrize("labelled", [True, False])
def test_condition_sum(case, labelled):
    _, device = case
    c = _randn(6, 37, device=device, seed=0, requires_grad=True)
    d_table = _randn(8, 37, device=device, seed=1, requires_grad=True)
    y_table = _randn(11, 37, device=device, seed=2, requires_grad=True) if labelled else None
    level = torch.tensor([0, 7, 3, 3, 1, 0], device=device)
    y = torch.tensor([10, 0, 4, 4, 9, 1], device=device) if labelled else None
    _compare(lambda *a: ops.condition_sum(a[0], level, a[1], y, a[2]),
             lambda *a: SF.condition_sum(a[0], level, a[1], y, a[2]), (c, d_table, y_table))


@pytest.mark.parametrize("d", [0.25, "per-sample"])
def test_euler_and_bootstrap_arithmetic(case, d):
    _, device = case
    x, v1, v2 = (3 * _randn(4, 3, 5, device=device, seed=s) for s in range(3))
    if d == "per-sample":
        d = torch.tensor([1.0, 0.5, 1 / 128, 0.25], device=device)
    _same(ops.euler_step(x, v1, d), SF.euler_step(x, v1, d))
    for clip in (4.0, None):
        _same(ops.bootstrap_midpoint(x, v1, d, clip), SF.bootstrap_midpoint(x, v1, d, clip))
        _same(ops.bootstrap_target(v1, v2, clip), SF.bootstrap_target(v1, v2, clip))


# ---------------------------------------------------------------- the raw ops under opcheck
def _opcheck_cases(device):
    q, k, v = (_randn(2, 2, 5, 32, device=device, seed=s, requires_grad=True) for s in range(3))
    x = _randn(2, 5, 37, device=device, seed=3, requires_grad=True)
    shift, scale, gate = (_randn(2, 37, device=device, seed=s, requires_grad=True) for s in (4, 5, 6))
    d = torch.tensor([0.5, 0.25], device=device)
    table = _randn(8, 37, device=device, seed=7, requires_grad=True)
    level = torch.tensor([1, 7], device=device)
    plain = [t.detach() for t in (x, x * 2)]
    return {
        "attention_fwd": (q, k, v),
        "modulate_layernorm_fwd": (x, shift, scale, 1e-6),
        "gated_residual": (x, gate, _randn(2, 5, 37, device=device, seed=8, requires_grad=True)),
        "timestep_features": (torch.tensor([0.0, 0.5], device=device), 33, 10000.0),
        "condition_sum": (gate, level, table, level, table),
        "euler_step": (*plain, d),
        "bootstrap_midpoint": (*plain, d, 4.0),
        "bootstrap_target": (*plain, None),
    }


def test_opcheck(case):
    name, device = case
    namespace = getattr(torch.ops, backends.NATIVE_NAMESPACE if name == "native" else backends.TRITON_NAMESPACE)
    for op_name, args in _opcheck_cases(device).items():
        torch.library.opcheck(getattr(namespace, op_name).default, args)


# ---------------------------------------------------------------- whole models
def _dit(device, num_classes=5):
    # 9 tokens, head size 32: shapes the GPU kernels take too
    model = sf.ShortcutDiT(input_size=6, in_channels=3, patch_size=2, hidden_size=64, depth=2, num_heads=2,
                           num_classes=num_classes)
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


def test_dit_forward_and_backward_match_the_reference(case):
    _, device = case
    model = _dit(device)
    x = _randn(3, 3, 6, 6, device=device, seed=1)
    t, d = torch.tensor([0.0, 0.5, 0.75], device=device), torch.tensor([1.0, 0.5, 0.25], device=device)
    y = torch.tensor([0, 4, 5], device=device)
    _assert_model_matches_reference(model, x, t, d, y)


def test_mlp_forward_and_backward_match_the_reference(case, tiny_mlp):
    _, device = case
    model = tiny_mlp.to(device)
    x = _randn(5, 3, device=device, seed=2)
    t, d = torch.rand(5, generator=torch.Generator().manual_seed(3)).to(device), 0.125
    _assert_model_matches_reference(model, x, t, d, None)


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
    return subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_a_missing_extension_warns_once_and_runs_the_reference():
    # the import of shortcut_fast._C fails as it does when the extension was never built
    result = _python("import sys; sys.modules['shortcut_fast._C'] = None\n"
                     "import torch, shortcut_fast as sf\n"
                     "print(sf.backends.namespace(torch.device('cpu')) == '')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"
    assert result.stderr.count("the C++ extension did not load") == 1


def test_the_backend_can_be_chosen_from_the_environment():
    ok = _python("import shortcut_fast as sf; print(sf.get_backend())", SHORTCUT_FAST_BACKEND="reference")
    assert ok.returncode == 0 and ok.stdout.strip() == "reference", ok.stderr
    bad = _python("import shortcut_fast", SHORTCUT_FAST_BACKEND="fastest")
    assert bad.returncode != 0 and "SHORTCUT_FAST_BACKEND='fastest'" in bad.stderr
