"""sample(): the one-step contract, N-step Euler, noise handling, guidance, errors, any model(x, t, d, y)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import TinyCustomModel

from shortcut_fast import ShortcutDiT, engine, sample

pytestmark = pytest.mark.usefixtures("single_thread")


def _noise(shape=(3, 1, 8, 8), seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _euler(model, z, n, y=None):
    """The sampler written out: x += (1/N) * model(x, i/N, 1/N, y)."""
    x = z.clone()
    with torch.no_grad():
        for i in range(n):
            x = x + (1.0 / n) * model(x, i / n, 1.0 / n, y)
    return x


def _euler_cfg(model, z, n, y, w):
    """Guided Euler: v = v_null + w (v_y - v_null), the null class being model.num_classes."""
    x = z.clone()
    null = torch.full_like(y, model.num_classes)
    with torch.no_grad():
        for i in range(n):
            v_y = model(x, i / n, 1.0 / n, y)
            v_null = model(x, i / n, 1.0 / n, null)
            x = x + (1.0 / n) * (v_null + w * (v_y - v_null))
    return x


#################################################################################
#                              The sampling contract                            #
#################################################################################


def _same(out, ref):
    # bit for bit on the eager loop; the C++ engine (the CPU default for these models) to fp32 rounding
    if engine.get_mode() == "off":
        return torch.equal(out, ref)
    return torch.allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine_mode", ["off", "auto"])
def test_one_step_contract(tiny_dit, engine_mode):
    z, y = _noise(), torch.tensor([0, 4, 10])
    with engine.mode(engine_mode):
        out = sample(tiny_dit, noise=z, steps=1, y=y)
        with torch.no_grad():
            ref = z + tiny_dit(z, 0, 1, y)
        assert _same(out, ref)
    assert not torch.equal(out, z)


@pytest.mark.parametrize("engine_mode", ["off", "auto"])
def test_one_step_contract_unconditional(tiny_uncond_dit, tiny_mlp, engine_mode):
    z, v = _noise(), _noise((4, 3))
    with engine.mode(engine_mode), torch.no_grad():
        assert _same(sample(tiny_uncond_dit, z), z + tiny_uncond_dit(z, 0.0, 1.0))
        assert _same(sample(tiny_mlp, v), v + tiny_mlp(v, 0.0, 1.0))


@pytest.mark.parametrize("n", [2, 4, 8])
def test_n_steps_equal_a_hand_written_euler_loop(tiny_dit, n):
    z, y = _noise(), torch.tensor([1, 2, 10])
    out = sample(tiny_dit, noise=z, steps=n, y=y)
    torch.testing.assert_close(out, _euler(tiny_dit, z, n, y), atol=1e-6, rtol=0)


def test_y_none_samples_the_null_class(tiny_dit):
    z = _noise()
    assert torch.equal(sample(tiny_dit, z, steps=2), sample(tiny_dit, z, steps=2, y=torch.full((3,), 10)))


def test_labels_change_the_sample(tiny_dit):
    z = _noise()
    a = sample(tiny_dit, z, steps=2, y=torch.tensor([1, 1, 1]))
    b = sample(tiny_dit, z, steps=2, y=torch.tensor([2, 2, 2]))
    assert not torch.allclose(a, b, atol=1e-5)


def test_number_of_steps_changes_the_sample(tiny_dit):
    z = _noise()
    assert not torch.allclose(sample(tiny_dit, z, steps=1), sample(tiny_dit, z, steps=2), atol=1e-5)


def test_deterministic_given_noise(tiny_dit):
    z, y = _noise(), torch.tensor([3, 3, 7])
    assert torch.equal(sample(tiny_dit, z.clone(), steps=4, y=y), sample(tiny_dit, z.clone(), steps=4, y=y))


def test_result_is_a_new_tensor_and_noise_is_unchanged(tiny_dit):
    z = _noise()
    before = z.clone()
    out = sample(tiny_dit, noise=z, steps=2)
    assert torch.equal(z, before)
    assert out.data_ptr() != z.data_ptr()
    assert out.shape == z.shape and out.dtype == z.dtype
    assert not out.requires_grad


def test_sample_does_not_record_gradients(tiny_dit):
    z = _noise().requires_grad_(True)
    out = sample(tiny_dit, noise=z, steps=1)
    assert out.grad_fn is None


def test_shape_with_seeded_generator_is_reproducible(tiny_dit):
    shape = (3, 1, 8, 8)
    a = sample(tiny_dit, shape=shape, steps=2, generator=torch.Generator().manual_seed(42))
    b = sample(tiny_dit, shape=shape, steps=2, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, b)
    c = sample(tiny_dit, shape=shape, steps=2, generator=torch.Generator().manual_seed(43))
    assert not torch.allclose(a, c)
    z = torch.randn(shape, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, sample(tiny_dit, noise=z, steps=2))


def test_shape_accepts_list_and_size(tiny_mlp):
    gen = lambda: torch.Generator().manual_seed(0)
    a = sample(tiny_mlp, shape=(4, 3), generator=gen())
    assert a.shape == (4, 3)
    assert torch.equal(a, sample(tiny_mlp, shape=[4, 3], generator=gen()))
    assert torch.equal(a, sample(tiny_mlp, shape=torch.Size([4, 3]), generator=gen()))


#################################################################################
#                           Classifier-free guidance                            #
#################################################################################


@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("w", [0.0, 2.5, -1.0])
def test_cfg_matches_hand_written_guidance(tiny_dit, steps, w):
    z, y = _noise(), torch.tensor([0, 5, 9])
    out = sample(tiny_dit, noise=z, steps=steps, y=y, cfg_scale=w)
    torch.testing.assert_close(out, _euler_cfg(tiny_dit, z, steps, y, w), atol=1e-5, rtol=1e-5)


def test_cfg_zero_is_the_unconditional_sample(tiny_dit):
    z = _noise()
    out = sample(tiny_dit, noise=z, steps=2, y=torch.tensor([0, 5, 9]), cfg_scale=0.0)
    torch.testing.assert_close(out, sample(tiny_dit, noise=z, steps=2), atol=1e-6, rtol=0)


def test_cfg_scale_one_equals_no_guidance(tiny_dit):
    z, y = _noise(), torch.tensor([0, 5, 9])
    guided = sample(tiny_dit, noise=z, steps=2, y=y, cfg_scale=1.0)
    torch.testing.assert_close(guided, sample(tiny_dit, noise=z, steps=2, y=y), atol=1e-6, rtol=0)
    # an int scale is a number like any other
    assert torch.equal(
        sample(tiny_dit, noise=z, steps=1, y=y, cfg_scale=1), sample(tiny_dit, noise=z, steps=1, y=y, cfg_scale=1.0)
    )


def test_cfg_changes_the_sample(tiny_dit):
    z, y = _noise(), torch.tensor([0, 5, 9])
    assert not torch.allclose(sample(tiny_dit, z, y=y, cfg_scale=4.0), sample(tiny_dit, z, y=y), atol=1e-5)


def test_cfg_with_a_custom_model(tiny_custom):
    z, y = _noise((4, 3)), torch.tensor([0, 1, 2, 3])
    out = sample(tiny_custom, noise=z, steps=4, y=y, cfg_scale=3.0)
    torch.testing.assert_close(out, _euler_cfg(tiny_custom, z, 4, y, 3.0), atol=1e-5, rtol=1e-5)


#################################################################################
#                                    Errors                                     #
#################################################################################


@pytest.mark.parametrize("steps", [0, 129, 256, -2])
def test_bad_steps_raise_naming_allowed_values(tiny_dit, steps):
    with pytest.raises(ValueError, match=r"\[1, 128\]"):
        sample(tiny_dit, noise=_noise(), steps=steps)


@pytest.mark.parametrize("steps", [2.0, True, "4"])
def test_non_int_steps_raise_type_error(tiny_dit, steps):
    with pytest.raises(TypeError, match="steps must be an int"):
        sample(tiny_dit, noise=_noise(), steps=steps)


def test_steps_follow_the_models_min_step():
    model = ShortcutDiT(
        input_size=8, in_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=0, min_step=1 / 4
    )
    assert sample(model, noise=_noise(), steps=4).shape == (3, 1, 8, 8)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        sample(model, noise=_noise(), steps=8)


def test_noise_and_shape_both_or_neither_raise(tiny_dit):
    with pytest.raises(ValueError, match="exactly one of noise"):
        sample(tiny_dit)
    with pytest.raises(ValueError, match="exactly one of noise"):
        sample(tiny_dit, noise=_noise(), shape=(3, 1, 8, 8))


@pytest.mark.parametrize("shape", [(3,), (0, 1, 8, 8), (3, 1.0, 8, 8), (3, True, 8, 8), "3x1x8x8", (3, -1, 8, 8)])
def test_bad_shape_raises(tiny_dit, shape):
    with pytest.raises(ValueError, match="shape must be"):
        sample(tiny_dit, shape=shape)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_noise_raises(tiny_dit, bad):
    z = _noise()
    z[1, 0, 2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        sample(tiny_dit, noise=z)


@pytest.mark.parametrize(
    "noise", [torch.zeros(3, 1, 8, 8, dtype=torch.long), torch.zeros(3, 1, 8, 8, dtype=torch.bool), [[0.0] * 3] * 2]
)
def test_non_float_noise_raises_type_error(tiny_dit, noise):
    with pytest.raises(TypeError, match="noise must be a floating-point tensor"):
        sample(tiny_dit, noise=noise)


@pytest.mark.parametrize("noise", [torch.zeros(0, 1, 8, 8), torch.zeros(8)])
def test_noise_without_a_batch_raises(tiny_dit, noise):
    with pytest.raises(ValueError, match=r"noise must be a batch"):
        sample(tiny_dit, noise=noise)


def test_cfg_on_unconditional_model_raises(tiny_uncond_dit, tiny_mlp):
    with pytest.raises(ValueError, match="unconditional"):
        sample(tiny_uncond_dit, noise=_noise(), cfg_scale=2.0)
    with pytest.raises(ValueError, match="unconditional"):
        sample(tiny_mlp, noise=_noise((2, 3)), cfg_scale=2.0)


def test_cfg_without_labels_raises(tiny_dit):
    with pytest.raises(ValueError, match="needs labels y"):
        sample(tiny_dit, noise=_noise(), cfg_scale=2.0)


@pytest.mark.parametrize(
    "scale,exc",
    [
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (True, TypeError),
        ("2", TypeError),
        (torch.tensor(2.0), TypeError),
    ],
)
def test_bad_cfg_scale_raises(tiny_dit, scale, exc):
    with pytest.raises(exc, match="cfg_scale"):
        sample(tiny_dit, noise=_noise(), y=torch.tensor([0, 1, 2]), cfg_scale=scale)


@pytest.mark.parametrize("y", [torch.tensor([0, 1]), torch.tensor([0, 1, 2, 3]), torch.tensor([[0, 1, 2]])])
@pytest.mark.parametrize("cfg", [None, 2.0])
def test_labels_of_wrong_batch_raise(tiny_dit, y, cfg):
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        sample(tiny_dit, noise=_noise(), y=y, cfg_scale=cfg)


def test_model_errors_surface_through_sample(tiny_dit, tiny_uncond_dit):
    with pytest.raises(ValueError, match="labels must lie"):
        sample(tiny_dit, noise=_noise(), y=torch.tensor([0, 1, 11]))
    with pytest.raises(ValueError, match="unconditional"):
        sample(tiny_uncond_dit, noise=_noise(), y=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="x must have shape"):
        sample(tiny_dit, noise=_noise((3, 2, 8, 8)))


#################################################################################
#                       The drop-in contract: any model(x, t, d, y)             #
#################################################################################


@pytest.mark.parametrize("n", [1, 2, 8])
def test_mlp_sampling_equals_euler(tiny_mlp, n):
    z = _noise((5, 3))
    torch.testing.assert_close(sample(tiny_mlp, noise=z, steps=n), _euler(tiny_mlp, z, n), atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [1, 4])
def test_custom_model_sampling_equals_euler(tiny_custom, n):
    z, y = _noise((4, 3)), torch.tensor([0, 1, 4, 3])
    torch.testing.assert_close(
        sample(tiny_custom, noise=z, steps=n, y=y), _euler(tiny_custom, z, n, y), atol=1e-6, rtol=0
    )
    with torch.no_grad():
        one = z + tiny_custom(z, 0.0, 1.0, y)
    torch.testing.assert_close(sample(tiny_custom, noise=z, steps=1, y=y), one, atol=1e-6, rtol=0)


def test_custom_model_defaults_to_min_step_1_128(tiny_custom):
    z = _noise((2, 3))
    out = sample(tiny_custom, noise=z, steps=128)
    torch.testing.assert_close(out, _euler(tiny_custom, z, 128), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"\[1, 128\]"):
        sample(tiny_custom, noise=z, steps=256)


def test_custom_model_receives_batched_t_and_d():
    seen = []

    class Recorder(TinyCustomModel):
        def forward(self, x, t, d, y=None):
            seen.append((t.clone(), d.clone(), None if y is None else y.clone()))
            return super().forward(x, t, d, y)

    model = Recorder(num_classes=4)
    y = torch.tensor([1, 2])
    sample(model, noise=_noise((2, 3)), steps=4, y=y, cfg_scale=2.0)
    assert len(seen) == 4
    for i, (t, d, yy) in enumerate(seen):
        assert torch.equal(t, torch.full((4,), i / 4))  # conditional and null rows in one batch
        assert torch.equal(d, torch.full((4,), 0.25))
        assert torch.equal(yy, torch.tensor([1, 2, 4, 4]))


def test_parameterless_model_samples_on_cpu():
    class Drift(torch.nn.Module):
        num_classes = 0

        def forward(self, x, t, d, y=None):
            return torch.ones_like(x) * (1.0 + t.view(-1, 1))

    out = sample(Drift(), shape=(2, 3), steps=4, generator=torch.Generator().manual_seed(0))
    z = torch.randn(2, 3, generator=torch.Generator().manual_seed(0))
    # x1 = x0 + sum_i (1/4) (1 + i/4) = x0 + 1 + 6/16
    torch.testing.assert_close(out, z + 1.375, atol=1e-6, rtol=0)


def test_bf16_weights_sample_fp32_noise(tiny_dit):
    z = torch.randn(4, 1, 8, 8)
    y = torch.arange(4)
    half = copy.deepcopy(tiny_dit).to(torch.bfloat16)
    got = sample(half, noise=z, steps=2, y=y)
    assert got.dtype == torch.float32
    # the network runs in bf16, the Euler sum in fp32: written out by hand
    x = z.clone()
    for i in range(2):
        x = x + 0.5 * half(x.to(torch.bfloat16), i / 2, 0.5, y).float()
    torch.testing.assert_close(got, x)
    torch.testing.assert_close(got, sample(tiny_dit, noise=z, steps=2, y=y), rtol=0.05, atol=0.05)


def test_numpy_integers_are_accepted(tiny_mlp):
    z = torch.randn(3, 3)
    torch.testing.assert_close(sample(tiny_mlp, noise=z, steps=np.int64(4)), sample(tiny_mlp, noise=z, steps=4))
    assert sample(tiny_mlp, shape=(np.int64(2), 3), steps=1).shape == (2, 3)


#################################################################################
#                     compute_dtype: the precision of the network               #
#################################################################################


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compute_dtype_runs_the_network_under_autocast(tiny_dit, dtype):
    z, y = _noise(), torch.tensor([0, 4, 10])
    got = sample(tiny_dit, noise=z, steps=2, y=y, compute_dtype=dtype)
    assert got.dtype == torch.float32  # the noise's dtype
    # written out: the network under CPU autocast, the Euler sum in fp32
    x = z.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        for i in range(2):
            x = x + 0.5 * tiny_dit(x, i / 2, 0.5, y).float()
    torch.testing.assert_close(got, x)
    full = sample(tiny_dit, noise=z, steps=2, y=y)
    assert not torch.equal(got, full)  # the precision really changed
    torch.testing.assert_close(got, full, rtol=0.05, atol=0.05)


def test_compute_dtype_default_and_float32_are_the_fp32_engine_call(tiny_dit):
    z, y = _noise(), torch.tensor([0, 4, 10])
    with engine.mode("on"):  # raises where the engine cannot serve the call
        auto = sample(tiny_dit, noise=z, steps=2, y=y)
        full = sample(tiny_dit, noise=z, steps=2, y=y, compute_dtype=torch.float32)
        # an enclosing autocast does not reach the network: sample() sets the precision itself
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = sample(tiny_dit, noise=z, steps=2, y=y)
        with pytest.raises(ValueError, match="engine cannot serve"):
            sample(tiny_dit, noise=z, steps=2, y=y, compute_dtype=torch.bfloat16)
    assert torch.equal(auto, full) and torch.equal(auto, inside)


def test_compute_dtype_keeps_fp64_noise(tiny_mlp):
    z = torch.randn(3, 3, dtype=torch.float64)
    assert sample(tiny_mlp, noise=z, steps=2, compute_dtype=torch.bfloat16).dtype == torch.float64


@pytest.mark.parametrize("bad", [torch.float64, torch.int32, "bfloat16", float, np.float32, 16])
def test_bad_compute_dtype_raises_type_error(tiny_dit, bad):
    with pytest.raises(TypeError, match="compute_dtype must be None .automatic. or one of"):
        sample(tiny_dit, noise=_noise(), steps=1, y=torch.tensor([0, 1, 2]), compute_dtype=bad)


def test_compute_dtype_that_cannot_run_the_weights_raises(tiny_dit):
    half = copy.deepcopy(tiny_dit).to(torch.bfloat16)
    for dtype in (torch.float32, torch.float16):
        with pytest.raises(ValueError, match=f"compute_dtype={dtype} cannot run a model whose weights are"):
            sample(half, noise=_noise(), steps=1, y=torch.tensor([0, 1, 2]), compute_dtype=dtype)
    # the weights' own dtype is always allowed
    got = sample(half, noise=_noise(), steps=1, y=torch.tensor([0, 1, 2]), compute_dtype=torch.bfloat16)
    torch.testing.assert_close(got, sample(half, noise=_noise(), steps=1, y=torch.tensor([0, 1, 2])))


@pytest.mark.parametrize(
    "compute_dtype, weights, device, want",
    [
        (None, torch.float32, "cuda", torch.bfloat16),
        (None, torch.float32, "cpu", None),
        (None, torch.bfloat16, "cuda", None),
        (torch.float32, torch.float32, "cuda", None),
        (torch.float16, torch.float32, "cuda", torch.float16),
        (torch.bfloat16, torch.float32, "cpu", torch.bfloat16),
        (torch.float16, torch.float16, "cpu", None),
    ],
)
def test_resolve_compute_dtype(compute_dtype, weights, device, want):
    from shortcut_fast.sampling import resolve_compute_dtype

    assert resolve_compute_dtype(compute_dtype, weights, torch.device(device)) == want


def test_compute_dtype_leaves_no_cast_weights_in_an_enclosing_autocast(tiny_dit):
    """Under a caller's autocast, sample() caches no bf16 copies of the weights: a weight update after it is
    seen by the next forward (a cached cast made inside a CUDA-graph capture would be stale and freed)."""
    z, y = _noise(), torch.tensor([0, 4, 10])
    model = copy.deepcopy(tiny_dit)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sample(model, noise=z, steps=1, y=y, compute_dtype=torch.bfloat16)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
            got = model(z, 0.0, 1.0, y)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = copy.deepcopy(model)(z, 0.0, 1.0, y)  # fresh tensors: nothing cached for them
    torch.testing.assert_close(got, want, rtol=0, atol=0)
