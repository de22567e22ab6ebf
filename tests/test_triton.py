"""The raw Triton ops (``torch.ops.shortcut_fast_triton``) against the plain PyTorch reference.

Without a GPU they run on CPU tensors under ``TRITON_INTERPRET=1`` (``conftest.py`` sets it): fp32
on small odd shapes that span several kernel blocks. On a GPU the same checks run in fp32 and
bf16; the reference then sees the same (rounded) inputs in fp32.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from shortcut_fast.ops import reference as SF

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from shortcut_fast.kernels import launch  # noqa: E402

from shortcut_fast.ops import triton as _registers_the_ops  # noqa: E402, F401

pytestmark = pytest.mark.usefixtures("single_thread")

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
CASES = [("cpu", torch.float32)] if INTERPRET else []
if torch.cuda.is_available():
    CASES += [("cuda", torch.float32), ("cuda", torch.bfloat16)]
if not CASES:
    pytest.skip("the Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

OPS = torch.ops.shortcut_fast_triton

# (forward, gradient) relative tolerances, scaled by the reference's largest magnitude
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 4e-2)}


@pytest.fixture(params=CASES, ids=[f"{d}-{str(t).removeprefix('torch.')}" for d, t in CASES])
def case(request):
    return request.param


def _randn(*shape, case, seed, scale=1.0):
    device, dtype = case
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)


def _close(fast, ref, dtype, grad=False):
    """fast (storage dtype) equals ref (fp32) within the dtype's tolerance of ref's scale."""
    rtol = TOLERANCES[dtype][grad]
    torch.testing.assert_close(fast.float(), ref.float(), rtol=rtol, atol=rtol * max(1.0, ref.abs().max().item()))


def _reference_grads(fn, inputs, grad_out):
    """The reference's output and its gradients with respect to every input, all in fp32."""
    leaves = [t.detach().float().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad_out.float())


# ---------------------------------------------------------------- attention
ATTENTION_SHAPES = [(2, 1, 5, 32), (3, 2, 13, 64), (2, 1, 37, 32)]  # N = 37 spans three 16-row blocks


@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_attention_fwd(case, shape):
    q, k, v = (_randn(*shape, case=case, seed=s) for s in range(3))
    out, lse = OPS.attention_fwd(q, k, v)
    ref_q, ref_k = q.float(), k.float()
    _close(out, SF.attention(ref_q, ref_k, v.float()), q.dtype)
    scores = ref_q @ ref_k.transpose(-1, -2) / math.sqrt(shape[-1])
    assert lse.dtype == torch.float32 and lse.shape == shape[:-1]
    _close(lse, torch.logsumexp(scores, -1), q.dtype)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
def test_attention_bwd(case, shape):
    q, k, v, grad_out = (_randn(*shape, case=case, seed=s) for s in range(4))
    out, lse = OPS.attention_fwd(q, k, v)
    grads = OPS.attention_bwd(grad_out, q, k, v, out, lse)
    _, ref_grads = _reference_grads(SF.attention, (q, k, v), grad_out)
    for fast, ref in zip(grads, ref_grads, strict=True):
        _close(fast, ref, q.dtype, grad=True)


def test_attention_on_strided_views(case):
    qkv = _randn(2, 7, 3, 2, 32, case=case, seed=0).permute(2, 0, 3, 1, 4)  # (3, B, H, N, Dh) as a DiT block makes it
    out, _ = OPS.attention_fwd(qkv[0], qkv[1], qkv[2])
    _close(out, SF.attention(*qkv.float()), qkv.dtype)


# ---------------------------------------------------------------- modulate_layernorm
LAYERNORM_SHAPES = [(2, 5, 37), (3, 13, 48), (2, 1, 37)]  # N = 13 spans several tiles and programs


def _layernorm_inputs(shape, case):
    x = _randn(*shape, case=case, seed=0, scale=2.0) + 0.5
    shift, scale = (_randn(shape[0], shape[-1], case=case, seed=s) for s in (1, 2))
    return x, shift, scale


@pytest.mark.parametrize("shape", LAYERNORM_SHAPES)
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_modulate_layernorm_fwd(case, shape, eps):
    x, shift, scale = _layernorm_inputs(shape, case)
    y, mean, rstd = OPS.modulate_layernorm_fwd(x, shift, scale, eps)
    _close(y, SF.modulate_layernorm(x.float(), shift.float(), scale.float(), eps), x.dtype)
    var, ref_mean = torch.var_mean(x.float(), -1, unbiased=False)
    _close(mean, ref_mean, x.dtype)
    _close(rstd, torch.rsqrt(var + eps), x.dtype)


@pytest.mark.parametrize("shape", LAYERNORM_SHAPES)
def test_modulate_layernorm_bwd(case, shape):
    x, shift, scale = _layernorm_inputs(shape, case)
    grad_y = _randn(*shape, case=case, seed=3)
    _, mean, rstd = OPS.modulate_layernorm_fwd(x, shift, scale, 1e-6)
    grads = OPS.modulate_layernorm_bwd(grad_y, x, scale, mean, rstd)
    _, (dx, dshift, dscale) = _reference_grads(SF.modulate_layernorm, (x, shift, scale), grad_y)
    for fast, ref in zip(grads, (dx, dshift, dscale), strict=True):
        _close(fast, ref, x.dtype, grad=True)


# ---------------------------------------------------------------- elementwise
def test_gated_residual(case):
    x, y = (_randn(3, 7, 37, case=case, seed=s) for s in (0, 1))
    gate = _randn(3, 37, case=case, seed=2)
    _close(OPS.gated_residual(x, gate, y), SF.gated_residual(x.float(), gate.float(), y.float()), x.dtype)


@pytest.mark.parametrize("shape", [(3, 7, 37), (2, 1, 8, 8)])
def test_euler_step_and_midpoint(case, shape):
    x, v = (_randn(*shape, case=case, seed=s, scale=3.0) for s in (0, 1))
    d = torch.tensor([1.0, 1 / 128, 0.5][: shape[0]], device=x.device)
    _close(OPS.euler_step(x, v, d), SF.euler_step(x.float(), v.float(), d), x.dtype)
    for clip in (None, 4.0):
        _close(OPS.bootstrap_midpoint(x, v, d, clip), SF.bootstrap_midpoint(x.float(), v.float(), d, clip), x.dtype)


@pytest.mark.parametrize("clip", [None, 0.5])
def test_bootstrap_target(case, clip):
    v1, v2 = (_randn(2, 5, 37, case=case, seed=s) for s in (0, 1))
    _close(OPS.bootstrap_target(v1, v2, clip), SF.bootstrap_target(v1.float(), v2.float(), clip), v1.dtype)


def test_clip_keeps_nans(case):
    v1 = _randn(2, 5, case=case, seed=0)
    v1[1, 2] = float("nan")
    assert OPS.bootstrap_target(v1, v1, 0.5).isnan().sum() == 1


# ---------------------------------------------------------------- embedding
@pytest.mark.parametrize("dim,max_period", [(64, 10000.0), (37, 100.0)])
def test_timestep_features(case, dim, max_period):
    t = torch.tensor([0.0, 1 / 128, 0.5, 0.99, 1.0], device=case[0])
    # features of 1000 t: one fp32 ulp of a frequency moves an argument near 1000 rad by up to 1e-4
    torch.testing.assert_close(OPS.timestep_features(t, dim, max_period), SF.timestep_features(t, dim, max_period),
                               rtol=0, atol=2e-4)


@pytest.mark.parametrize("labelled", [True, False])
def test_condition_sum(case, labelled):
    c = _randn(3, 37, case=case, seed=0)
    d_table, y_table = _randn(8, 37, case=case, seed=1), _randn(11, 37, case=case, seed=2)
    level = torch.tensor([0, 7, 3], device=c.device)
    y = torch.tensor([10, 0, 4], device=c.device) if labelled else None
    y_table = y_table if labelled else None
    ref = SF.condition_sum(c.float(), level, d_table.float(), y, None if y_table is None else y_table.float())
    _close(OPS.condition_sum(c, level, d_table, y, y_table), ref, c.dtype)


# ---------------------------------------------------------------- model sizes, GPU only
GPU_CASES = [c for c in CASES if c[0] == "cuda"]


@pytest.mark.skipif(not GPU_CASES, reason="model sizes need a GPU (the interpreter takes minutes)")
@pytest.mark.parametrize("gpu_case", GPU_CASES, ids=[str(t).removeprefix("torch.") for _, t in GPU_CASES])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_model_sizes_on_gpu(gpu_case, head_dim):
    """Sizes that span several blocks of the autotuned GPU configs: 257 tokens, 1152 channels."""
    q, k, v, grad_out = (_randn(2, 3, 257, head_dim, case=gpu_case, seed=s) for s in range(4))
    out, lse = OPS.attention_fwd(q, k, v)
    ref_out, ref_grads = _reference_grads(SF.attention, (q, k, v), grad_out)
    _close(out, ref_out, q.dtype)
    for fast, ref in zip(OPS.attention_bwd(grad_out, q, k, v, out, lse), ref_grads, strict=True):
        _close(fast, ref, q.dtype, grad=True)

    x, shift, scale = _layernorm_inputs((2, 257, 1152), gpu_case)
    grad_y = _randn(2, 257, 1152, case=gpu_case, seed=3)
    y, mean, rstd = OPS.modulate_layernorm_fwd(x, shift, scale, 1e-6)
    ref_y, ref_grads = _reference_grads(SF.modulate_layernorm, (x, shift, scale), grad_y)
    _close(y, ref_y, x.dtype)
    for fast, ref in zip(OPS.modulate_layernorm_bwd(grad_y, x, scale, mean, rstd), ref_grads, strict=True):
        _close(fast, ref, x.dtype, grad=True)


# ---------------------------------------------------------------- input checks
def test_clear_errors(case):
    q = _randn(1, 1, 5, 48, case=case, seed=0)
    with pytest.raises(RuntimeError, match="head size 48"):
        OPS.attention_fwd(q, q, q)
    x = _randn(2, 5, 37, case=case, seed=0)
    with pytest.raises(RuntimeError, match="shift must have shape"):
        OPS.modulate_layernorm_fwd(x, x[:, 0, :8], x[:, 0], 1e-6)
    c = _randn(2, 37, case=case, seed=0)
    with pytest.raises(RuntimeError, match="y and y_table together"):
        OPS.condition_sum(c, torch.zeros(2, dtype=torch.long, device=c.device), c, None, c)
    with pytest.raises(RuntimeError, match="d must be fp32"):
        OPS.euler_step(x, x, torch.ones(2, dtype=torch.float64, device=x.device))


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors are refused only outside the interpreter")
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    monkeypatch.setattr(launch, "INTERPRET", False)
    x = torch.zeros(2, 3)
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        OPS.bootstrap_target(x, x, None)
