"""ShortcutDiT / ShortcutMLP: shapes, adaLN-Zero init, presets, input validation, conditioning, gradients.

Also the step-size helpers of ``shortcut_fast.steps``.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import perturb_

from shortcut_fast import DIT_PRESETS, ShortcutDiT, ShortcutMLP, allowed_steps, models, step_sizes
from shortcut_fast.checks import as_batch_vector
from shortcut_fast.models import count_parameters, sincos_pos_embed_2d
from shortcut_fast.steps import check_num_steps, check_step_sizes, level_index, num_doublings

TINY = dict(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2)
ALLOWED_D_MSG = r"powers of two in \[0\.0078125, 1\]"
pytestmark = pytest.mark.usefixtures("single_thread")


def _x(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def _vec(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, generator=torch.Generator().manual_seed(seed))


#################################################################################
#                                 Shapes and init                               #
#################################################################################


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_dit_output_shape_and_dtype(tiny_dit, batch):
    x = _x(batch)
    out = tiny_dit(x, torch.rand(batch), torch.full((batch,), 0.25), torch.arange(batch) % 10)
    assert out.shape == x.shape
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_dit_non_square_channels_and_patch_shapes():
    model = perturb_(
        ShortcutDiT(input_size=12, in_channels=3, patch_size=4, hidden_size=16, depth=1, num_heads=4, num_classes=0),
        seed=5,
    )
    x = torch.randn(3, 3, 12, 12)
    out = model(x, 0.5, 0.5)
    assert out.shape == (3, 3, 12, 12)
    assert model.pos_embed.shape == (1, 9, 16)


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_mlp_output_shape(tiny_mlp, batch):
    x = _vec(batch)
    out = tiny_mlp(x, torch.rand(batch), 1 / 128)
    assert out.shape == (batch, 3)
    assert torch.isfinite(out).all()
    assert out.abs().max() > 0


def test_dit_outputs_exactly_zero_at_init():
    model = ShortcutDiT(**TINY, num_classes=10)
    x = _x(3)
    out = model(x, torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1 / 128, 0.5, 1.0]), torch.tensor([0, 9, 10]))
    assert torch.equal(out, torch.zeros_like(x))


def test_mlp_outputs_exactly_zero_at_init():
    model = ShortcutMLP(dim=3, hidden_size=32, depth=2, num_classes=4)
    out = model(_vec(4), 0.25, 0.125, torch.tensor([0, 1, 2, 4]))
    assert torch.equal(out, torch.zeros(4, 3))


def test_step_sizes_property_and_config():
    model = ShortcutDiT(**TINY, num_classes=10, min_step=1 / 8)
    assert model.step_sizes == [1 / 8, 1 / 4, 1 / 2, 1.0]
    assert model.cond.d_table.num_embeddings == 4
    assert model.config == dict(**TINY, mlp_ratio=4.0, num_classes=10, min_step=1 / 8)
    mlp = ShortcutMLP(dim=3, hidden_size=32, depth=2)
    assert mlp.cond.d_table.num_embeddings == 8
    assert mlp.config == dict(dim=3, hidden_size=32, depth=2, num_classes=0, min_step=1 / 128)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(input_size=9),  # not a multiple of patch_size
        dict(hidden_size=30),  # not a multiple of num_heads (2) ... and of 4 for positions
        dict(hidden_size=34),  # multiple of num_heads but not of 4 (sin-cos positions)
        dict(num_heads=3),  # 32 % 3
        dict(depth=0),
        dict(patch_size=True),
        dict(min_step=0.3),
    ],
)
def test_dit_constructor_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        ShortcutDiT(**{**TINY, "num_classes": 10, **kwargs})


@pytest.mark.parametrize("num_classes", [-1, 2.0, True])
def test_constructors_reject_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        ShortcutDiT(**TINY, num_classes=num_classes)
    with pytest.raises(ValueError, match="num_classes"):
        ShortcutMLP(dim=3, num_classes=num_classes)


#################################################################################
#                                    Presets                                    #
#################################################################################

# published parameter counts of the DiT paper (Peebles & Xie 2023, table 1)
PUBLISHED = {"DiT-S/2": 33e6, "DiT-B/2": 130e6, "DiT-L/2": 458e6, "DiT-XL/2": 675e6}


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_every_preset_constructs_on_meta(name):
    with torch.device("meta"):
        model = ShortcutDiT.preset(name)
    for key, value in DIT_PRESETS[name].items():
        assert model.config[key] == value
    assert model.config["num_classes"] == 1000 and model.config["in_channels"] == 4
    grid = 32 // DIT_PRESETS[name]["patch_size"]
    assert model.pos_embed.shape == (1, grid * grid, DIT_PRESETS[name]["hidden_size"])
    assert len(model.blocks) == DIT_PRESETS[name]["depth"]
    assert all(p.is_meta for p in model.parameters())
    if name in PUBLISHED:
        n = count_parameters(model)
        assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.02, (name, n)


def test_preset_names_cover_the_dit_family():
    assert set(DIT_PRESETS) == {f"DiT-{s}/{p}" for s in "S B L XL".split() for p in (2, 4, 8)}


def test_preset_accepts_other_settings():
    with torch.device("meta"):
        model = ShortcutDiT.preset("DiT-S/8", input_size=16, in_channels=1, num_classes=0, min_step=1 / 4)
    assert model.config["input_size"] == 16 and model.config["num_classes"] == 0
    assert model.step_sizes == [0.25, 0.5, 1.0]


def test_preset_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown preset 'DiT-M/2'.*DiT-B/2"):
        ShortcutDiT.preset("DiT-M/2")


@pytest.mark.parametrize("clash", [dict(depth=3), dict(hidden_size=64), dict(patch_size=4), dict(num_heads=2)])
def test_preset_rejects_clashing_kwargs(clash):
    with pytest.raises(ValueError, match=f"fixes .*{next(iter(clash))}"):
        ShortcutDiT.preset("DiT-S/2", **clash)


#################################################################################
#                         Validation of x, t, d and y                           #
#################################################################################


@pytest.mark.parametrize("bad_d", [0.0, 0.3, 2.0, 1 / 256, float("nan"), float("inf"), -0.5, 3 / 128])
def test_d_not_a_step_size_raises(tiny_dit, bad_d):
    with pytest.raises(ValueError, match=ALLOWED_D_MSG):
        tiny_dit(_x(2), 0.5, bad_d)


def test_one_bad_d_in_a_batch_raises(tiny_dit):
    with pytest.raises(ValueError, match=ALLOWED_D_MSG):
        tiny_dit(_x(3), 0.5, torch.tensor([0.5, 1.0, 0.0]))


def test_d_range_follows_min_step():
    model = perturb_(ShortcutDiT(**TINY, num_classes=0, min_step=1 / 8), seed=4)
    model(_x(2), 0.0, 1 / 8)  # the flow level of this model
    with pytest.raises(ValueError, match=r"\[0\.125, 1\]"):
        model(_x(2), 0.0, 1 / 16)


def test_every_step_size_is_accepted(tiny_dit):
    d = torch.tensor(step_sizes(1 / 128))
    out = tiny_dit(_x(len(d)), 0.5, d)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("bad_t", [-0.01, 1.01, float("nan"), float("inf")])
def test_t_outside_unit_interval_raises(tiny_dit, bad_t):
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        tiny_dit(_x(2), bad_t, 0.5)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        tiny_dit(_x(2), torch.tensor([0.5, bad_t]), 0.5)


def test_t_endpoints_accepted(tiny_dit):
    out = tiny_dit(_x(2), torch.tensor([0.0, 1.0]), 1.0)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("label", [-1, 11])
def test_labels_out_of_range_raise(tiny_dit, label):
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 9\] \(or 10"):
        tiny_dit(_x(2), 0.5, 0.5, torch.tensor([0, label]))


def test_null_class_label_is_accepted(tiny_dit):
    out = tiny_dit(_x(2), 0.5, 0.5, torch.tensor([10, 10]))
    assert torch.isfinite(out).all()


def test_labels_on_unconditional_model_raise(tiny_uncond_dit, tiny_mlp):
    with pytest.raises(ValueError, match="unconditional"):
        tiny_uncond_dit(_x(2), 0.5, 0.5, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unconditional"):
        tiny_mlp(_vec(2), 0.5, 0.5, torch.tensor([0, 0]))


@pytest.mark.parametrize(
    "labels",
    [
        torch.tensor([0.0, 1.0]),
        torch.tensor([True, False]),
        torch.tensor([0, 1], dtype=torch.uint8),
        [0, 1],
    ],
)
def test_non_integer_labels_raise_type_error(tiny_dit, labels):
    with pytest.raises(TypeError, match="integer tensor"):
        tiny_dit(_x(2), 0.5, 0.5, labels)


def test_int32_labels_accepted_like_int64(tiny_dit):
    x = _x(2)
    a = tiny_dit(x, 0.5, 0.5, torch.tensor([3, 7], dtype=torch.int32))
    b = tiny_dit(x, 0.5, 0.5, torch.tensor([3, 7]))
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(2, 8, 8), (2, 2, 8, 8), (2, 1, 8, 4), (2, 1, 16, 16), (2, 1, 1, 8, 8)])
def test_dit_wrong_x_shape_raises(tiny_dit, shape):
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, 8, 8\)"):
        tiny_dit(torch.randn(shape), 0.5, 0.5)


@pytest.mark.parametrize("shape", [(2, 4), (2,), (2, 3, 1)])
def test_mlp_wrong_x_shape_raises(tiny_mlp, shape):
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        tiny_mlp(torch.randn(shape), 0.5, 0.5)


@pytest.mark.parametrize("x", [[[0.0] * 3] * 2, None, torch.zeros(2, 1, 8, 8, dtype=torch.long)])
def test_x_not_a_float_tensor_raises_type_error(tiny_dit, x):
    with pytest.raises(TypeError, match="x must be"):
        tiny_dit(x, 0.5, 0.5)


@pytest.mark.parametrize("which", ["t", "d", "y"])
@pytest.mark.parametrize("n", [2, 4])
def test_batch_mismatch_raises(tiny_dit, which, n):
    args = dict(t=torch.full((3,), 0.5), d=torch.full((3,), 0.5), y=torch.zeros(3, dtype=torch.long))
    args[which] = torch.full((n,), 0.5) if which != "y" else torch.zeros(n, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"{which} must have shape \(3,\)"):
        tiny_dit(_x(3), args["t"], args["d"], args["y"])


def test_t_of_wrong_rank_raises(tiny_dit):
    with pytest.raises(ValueError, match=r"t must have shape \(3,\)"):
        tiny_dit(_x(3), torch.full((3, 1), 0.5), 0.5)


@pytest.mark.parametrize("bad", ["0.5", None, True, torch.tensor([True, False])])
def test_t_and_d_of_wrong_type_raise(tiny_dit, bad):
    with pytest.raises(TypeError):
        tiny_dit(_x(2), bad, 0.5)
    with pytest.raises(TypeError):
        tiny_dit(_x(2), 0.5, bad)


#################################################################################
#                                Conditioning                                   #
#################################################################################


def test_scalar_t_and_d_broadcast(tiny_dit):
    x, y = _x(3), torch.tensor([1, 2, 3])
    full = tiny_dit(x, torch.full((3,), 0.25), torch.full((3,), 0.5), y)
    assert torch.equal(tiny_dit(x, 0.25, 0.5, y), full)
    assert torch.equal(tiny_dit(x, torch.tensor(0.25), torch.tensor(0.5), y), full)
    assert torch.equal(tiny_dit(x, torch.tensor(0.25, dtype=torch.float64), 0.5, y), full)


def test_integer_scalars_broadcast(tiny_dit):
    x = _x(2)
    assert torch.equal(tiny_dit(x, 1, 1), tiny_dit(x, torch.ones(2), torch.ones(2)))
    assert torch.equal(tiny_dit(x, 0, 1), tiny_dit(x, torch.zeros(2), torch.ones(2)))


def test_y_none_equals_null_class(tiny_dit):
    x = _x(3)
    assert torch.equal(tiny_dit(x, 0.5, 0.25), tiny_dit(x, 0.5, 0.25, torch.full((3,), 10)))


def test_class_label_matters(tiny_dit):
    x = _x(2)
    a = tiny_dit(x, 0.5, 0.25, torch.tensor([1, 1]))
    b = tiny_dit(x, 0.5, 0.25, torch.tensor([2, 2]))
    assert not torch.allclose(a, b, atol=1e-5)
    # a row's output only depends on its own label
    c = tiny_dit(x, 0.5, 0.25, torch.tensor([1, 2]))
    torch.testing.assert_close(c[0], a[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(c[1], b[1], atol=1e-6, rtol=0)


def test_step_size_matters(tiny_dit, tiny_mlp):
    x = _x(2)
    outs = [tiny_dit(x, 0.5, d) for d in step_sizes(1 / 128)]
    for i in range(len(outs)):
        for j in range(i):
            assert not torch.allclose(outs[i], outs[j], atol=1e-5), (i, j)
    v = _vec(2)
    assert not torch.allclose(tiny_mlp(v, 0.5, 1.0), tiny_mlp(v, 0.5, 0.5), atol=1e-5)


def test_time_matters(tiny_dit):
    x = _x(2)
    assert not torch.allclose(tiny_dit(x, 0.5, 0.5), tiny_dit(x, 0.25, 0.5), atol=1e-5)


def test_rows_are_independent_of_the_batch(tiny_dit):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 1, 8, 8, generator=gen)
    t = torch.rand(5, generator=gen)
    d = torch.tensor([1 / 128, 1 / 2, 1.0, 1 / 16, 1 / 2])
    y = torch.tensor([0, 10, 9, 3, 3])
    out = tiny_dit(x, t, d, y)
    for i in range(5):
        alone = tiny_dit(x[i : i + 1], t[i : i + 1], d[i : i + 1], y[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_mlp_rows_are_independent_of_the_batch(tiny_mlp):
    x = _vec(5, seed=3)
    t = torch.linspace(0, 1, 5)
    d = torch.tensor([1 / 128, 1 / 64, 1 / 2, 1.0, 1.0])
    out = tiny_mlp(x, t, d)
    for i in range(5):
        torch.testing.assert_close(
            out[i : i + 1], tiny_mlp(x[i : i + 1], t[i : i + 1], d[i : i + 1]), atol=1e-5, rtol=1e-5
        )


#################################################################################
#                           Fixed sin-cos positions                             #
#################################################################################


def _reference_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Token ``r * grid + c``: [sin(c w_i), cos(c w_i), sin(r w_i), cos(r w_i)], w_i = 10000**(-i / (dim/4))."""
    quarter = dim // 4
    rows = []
    for r in range(grid):
        for c in range(grid):
            w = [10000.0 ** (-i / quarter) for i in range(quarter)]
            rows.append(
                [math.sin(c * wi) for wi in w]
                + [math.cos(c * wi) for wi in w]
                + [math.sin(r * wi) for wi in w]
                + [math.cos(r * wi) for wi in w]
            )
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dim,grid", [(8, 3), (16, 4), (32, 1), (4, 5)])
def test_sincos_pos_embed_matches_formula(dim, grid):
    got = torch.from_numpy(sincos_pos_embed_2d(dim, grid))
    assert got.shape == (grid * grid, dim) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), _reference_pos_embed(dim, grid), atol=1e-6, rtol=0)


def test_model_pos_embed_is_the_formula_in_token_order(tiny_dit):
    # tokens are the conv patches flattened row-major: token r*grid + c is the patch at row r, column c
    torch.testing.assert_close(tiny_dit.pos_embed[0].double(), _reference_pos_embed(32, 4), atol=1e-6, rtol=0)
    assert "pos_embed" not in tiny_dit.state_dict()  # fixed, recomputed, never saved
    assert not tiny_dit.pos_embed.requires_grad


def test_sincos_pos_embed_rejects_dim_not_multiple_of_4():
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_pos_embed_2d(6, 2)


#################################################################################
#                          Mixed precision and gradients                        #
#################################################################################


def test_autocast_bf16_gives_finite_output(tiny_dit, tiny_mlp):
    x = _x(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_dit(x, torch.rand(3), torch.tensor([1 / 128, 0.5, 1.0]), torch.tensor([0, 5, 10]))
        out_mlp = tiny_mlp(_vec(3), 0.5, 0.25)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.isfinite(out_mlp).all()


def test_bf16_step_sizes_are_exact_levels(tiny_dit):
    d = torch.tensor(step_sizes(1 / 128))
    assert torch.equal(level_index(d.bfloat16()), torch.arange(8))
    assert torch.equal(level_index(d.half()), torch.arange(8))


def test_backward_gives_finite_gradients_everywhere(tiny_dit):
    tiny_dit.train()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    d = torch.tensor([1 / 2, 1 / 8, 1 / 2, 1 / 8])  # levels 6 and 4 of 0..7
    out = tiny_dit(x, torch.rand(4, generator=gen), d, torch.tensor([0, 3, 10, 3]))
    (out * torch.randn(out.shape, generator=gen)).sum().backward()
    for name, p in tiny_dit.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    for name in [
        "x_embedder.weight",
        "cond.t_mlp.0.weight",
        "blocks.0.attn.qkv.weight",
        "blocks.1.mlp.0.weight",
        "blocks.0.adaLN_modulation.1.weight",
        "final_layer.linear.weight",
    ]:
        assert dict(tiny_dit.named_parameters())[name].grad.abs().sum() > 0, name

    grad_d = tiny_dit.cond.d_table.weight.grad
    used = {4, 6}
    for level in range(8):
        if level in used:
            assert grad_d[level].abs().sum() > 0, level
        else:
            assert torch.equal(grad_d[level], torch.zeros_like(grad_d[level])), level
    grad_y = tiny_dit.cond.y_table.weight.grad
    for label in range(11):
        assert (grad_y[label].abs().sum() > 0) == (label in {0, 3, 10}), label


def test_mlp_backward_gives_finite_gradients(tiny_mlp):
    out = tiny_mlp(_vec(3), torch.rand(3), 1.0)
    out.square().sum().backward()
    for name, p in tiny_mlp.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    grad_d = tiny_mlp.cond.d_table.weight.grad
    assert grad_d[7].abs().sum() > 0
    assert torch.equal(grad_d[:7], torch.zeros_like(grad_d[:7]))


def test_zero_d_cpu_tensors_and_floats_are_put_on_the_batch_device():
    out = as_batch_vector("t", torch.tensor(0.25), 3, torch.device("cpu"))
    assert out.shape == (3,) and out.dtype == torch.float32 and torch.equal(out, torch.full((3,), 0.25))


def test_python_float_t_lands_on_the_device_of_x():
    out = as_batch_vector("t", 0.5, 3, torch.device("meta"))
    assert out.device.type == "meta" and out.shape == (3,)


#################################################################################
#                                 steps.py                                      #
#################################################################################


def test_step_sizes_and_allowed_steps():
    assert step_sizes(1 / 8) == [1 / 8, 1 / 4, 1 / 2, 1.0]
    assert step_sizes() == [2.0**-k for k in range(7, -1, -1)]
    assert step_sizes(1.0) == [1.0]
    assert allowed_steps(1 / 8) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert allowed_steps() == list(range(1, 129))
    assert allowed_steps(1) == [1]


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 100, 128])
def test_check_num_steps_accepts_any_count_up_to_the_finest_level(steps):
    assert check_num_steps(steps) == steps


@pytest.mark.parametrize(
    "steps,min_step,exc",
    [
        (0, 1 / 128, ValueError),
        (129, 1 / 128, ValueError),
        (256, 1 / 128, ValueError),
        (16, 1 / 8, ValueError),
        (-4, 1 / 128, ValueError),
        (True, 1 / 128, TypeError),
        (2.0, 1 / 128, TypeError),
        ("4", 1 / 128, TypeError),
    ],
)
def test_check_num_steps_errors_give_the_allowed_range(steps, min_step, exc):
    allowed = f"[1, {round(1 / min_step)}]"
    with pytest.raises(exc) as info:
        check_num_steps(steps, min_step)
    assert allowed in str(info.value)


@pytest.mark.parametrize("min_step,k", [(1.0, 0), (0.5, 1), (1 / 128, 7), (2.0**-20, 20), (1, 0)])
def test_num_doublings(min_step, k):
    assert num_doublings(min_step) == k


@pytest.mark.parametrize("bad", [0, 0.0, 0.3, -1, 1.5, 2.0**-21, float("nan"), float("inf")])
def test_num_doublings_rejects_non_powers_of_two(bad):
    with pytest.raises(ValueError, match="min_step must be 2\\*\\*-K"):
        num_doublings(bad)


@pytest.mark.parametrize("bad", [True, "1/128", None, torch.tensor(0.5)])
def test_num_doublings_rejects_non_numbers(bad):
    with pytest.raises(TypeError, match="min_step"):
        num_doublings(bad)


def test_level_index_maps_step_sizes_to_levels():
    assert torch.equal(level_index(torch.tensor(step_sizes(1 / 128))), torch.arange(8))
    assert torch.equal(level_index(torch.tensor([1.0, 0.125]), 1 / 8), torch.tensor([3, 0]))
    assert level_index(torch.tensor([0.5])).dtype == torch.int64
    with pytest.raises(ValueError, match=r"powers of two in \[0\.125, 1\].*not 0"):
        check_step_sizes(torch.tensor([0.0]), 1 / 8)
    check_step_sizes(torch.tensor([1.0, 0.125]), 1 / 8)


def test_dtype_mismatch_is_a_type_error(tiny_dit):
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(TypeError, match="dtype"):
        tiny_dit(x, 0.0, 1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(tiny_dit(x.float(), 0.0, 1.0)).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: ShortcutDiT(
            input_size=8,
            in_channels=3,
            patch_size=2,
            hidden_size=24,
            depth=3,
            num_heads=3,
            mlp_ratio=2.5,
            num_classes=7,
            min_step=1 / 16,
        ),
        lambda: ShortcutDiT(
            input_size=12, in_channels=1, patch_size=4, hidden_size=16, depth=1, num_heads=2, num_classes=0
        ),
        lambda: ShortcutMLP(dim=5, hidden_size=12, depth=2, num_classes=3, min_step=1 / 4),
        lambda: ShortcutMLP(dim=1, hidden_size=8, depth=1),
    ],
)
def test_size_guard_counts_the_weights_exactly(make, monkeypatch):
    # the guard counts before allocating; its arithmetic must equal what gets built
    model = make()
    real = count_parameters(model) + sum(b.numel() for b in model.buffers())
    monkeypatch.setattr(models, "MAX_PARAMETERS", real)
    make()
    monkeypatch.setattr(models, "MAX_PARAMETERS", real - 1)
    with pytest.raises(ValueError, match="MAX_PARAMETERS"):
        make()
