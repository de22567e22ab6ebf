"""Hostile inputs to the model constructors, presets and forward pass (``shortcut_fast.models``).

Wrong types, shapes, dtypes, devices ("meta" stands in for a second device),
NaN/inf, huge sizes and malformed files must end in a ``ValueError`` or
``TypeError`` (``FileNotFoundError`` for a missing path) whose message names the
offending argument; valid inputs drawn by the same strategies must work. The
strategies and tiny models shared by these files are in ``helpers.py``.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import pytest
import torch
from helpers import (
    DIT_COND,
    DIT_UNCOND,
    FAIL_FAST_S,
    FEW,
    HUGE,
    MANY,
    META,
    MLP_COND,
    MLP_UNCOND,
    MODELS,
    MODELS_F64,
    MODELS_META,
    SOME,
    VALID_MIN_STEPS,
    bad_int,
    dit_settings,
    expect_error,
    mlp_settings,
    not_a_number,
    perturb_,
    x_shape,
)
from hypothesis import assume, given
from hypothesis import strategies as st

import shortcut_fast as sf
from shortcut_fast.models import MAX_DEPTH, MAX_PARAMETERS
from shortcut_fast.steps import step_sizes

pytestmark = pytest.mark.usefixtures("single_thread")


def _float32(value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.float32(value))


def is_time(value: float) -> bool:
    """A valid t: in [0, 1] once rounded to float32, the precision the models take t in."""
    return 0 <= _float32(value) <= 1


def is_step_size(value: float, min_step: float) -> bool:
    """A valid d: a step size once rounded to float32, within the models' tolerance of 1e-6 relative."""
    return any(abs(_float32(value) - s) <= 1e-6 * s for s in step_sizes(min_step))


def batch_floats(batch: int, low: float = 0.0, high: float = 1.0):
    return st.lists(st.floats(low, high, allow_nan=False, width=32), min_size=batch, max_size=batch)


@st.composite
def forward_args(draw, model):
    """Valid (x, t, d, y) for ``model``: t and d as floats, 0-d or (B,) tensors of assorted dtypes."""
    batch = draw(st.integers(1, 4))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    dtype = next(model.parameters()).dtype
    x = torch.randn(x_shape(model, batch), generator=gen, dtype=dtype)

    def as_input(values):
        form = draw(st.sampled_from(["number", "0d", "vector", "vector64"]))
        if form == "number":  # ints 0 and 1 are times and step sizes too
            return int(values[0]) if values[0] in (0.0, 1.0) and draw(st.booleans()) else float(values[0])
        if form == "0d":
            return torch.tensor(values[0])
        return torch.tensor(values, dtype=torch.float64 if form == "vector64" else torch.float32)

    t = as_input(draw(batch_floats(batch)))
    d = as_input(draw(st.lists(st.sampled_from(model.step_sizes), min_size=batch, max_size=batch)))
    y = None
    if model.num_classes and draw(st.booleans()):
        y = torch.tensor(
            draw(st.lists(st.integers(0, model.num_classes), min_size=batch, max_size=batch)),
            dtype=draw(st.sampled_from([torch.int64, torch.int32, torch.int16, torch.int8])),
        )
    return x, t, d, y


@SOME
@given(mlp_settings(), st.data())
def test_valid_mlp_settings_build_a_working_model(kwargs, data):
    model = sf.ShortcutMLP(**kwargs).eval()
    assert model.config == kwargs
    x, t, d, y = data.draw(forward_args(model))
    out = model(x, t, d, y)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


@SOME
@given(dit_settings(), st.data())
def test_valid_dit_settings_build_a_working_model(kwargs, data):
    model = perturb_(sf.ShortcutDiT(**kwargs)).eval()
    x, t, d, y = data.draw(forward_args(model))
    out = model(x, t, d, y)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


MLP_SIZES = {"dim": 1, "hidden_size": 1, "depth": 1, "num_classes": 0}


DIT_SIZES = {
    "input_size": 1,
    "in_channels": 1,
    "patch_size": 1,
    "hidden_size": 1,
    "depth": 1,
    "num_heads": 1,
    "num_classes": 0,
}


DIT_OK = dict(input_size=4, in_channels=1, patch_size=2, hidden_size=8, depth=1, num_heads=2, num_classes=3)


MLP_OK = dict(dim=2, hidden_size=8, depth=1, num_classes=0)


@MANY
@given(st.sampled_from(sorted(MLP_SIZES)), st.data())
def test_mlp_rejects_a_bad_size_naming_it(name, data):
    value = data.draw(bad_int(MLP_SIZES[name]))
    expect_error(lambda: sf.ShortcutMLP(**{**MLP_OK, name: value}), names=[name])


@MANY
@given(st.sampled_from(sorted(DIT_SIZES)), st.data())
def test_dit_rejects_a_bad_size_naming_it(name, data):
    value = data.draw(bad_int(DIT_SIZES[name]))
    expect_error(lambda: sf.ShortcutDiT(**{**DIT_OK, name: value}), names=[name])


@SOME
@given(st.sampled_from(["ShortcutMLP", "ShortcutDiT"]), st.data())
def test_huge_sizes_are_refused_fast_and_named(cls_name, data):
    """Sizes whose model would exceed MAX_PARAMETERS (or MAX_DEPTH) are refused before any allocation."""
    if cls_name == "ShortcutMLP":
        cls, base = sf.ShortcutMLP, MLP_OK
        name = data.draw(st.sampled_from(["dim", "hidden_size", "depth", "num_classes"]))
    else:
        cls, base = sf.ShortcutDiT, {**DIT_OK, "patch_size": 1, "num_heads": 1}
        name = data.draw(
            st.sampled_from(["input_size", "in_channels", "hidden_size", "depth", "num_classes", "mlp_ratio"])
        )
    value = data.draw(HUGE) if name != "mlp_ratio" else float(data.draw(HUGE))
    if name == "hidden_size":
        value -= value % 4  # still a multiple of num_heads and of 4: only the size is wrong
    start = time.perf_counter()
    msg = expect_error(lambda: cls(**{**base, name: value}), ValueError, names=[name])
    assert time.perf_counter() - start < FAIL_FAST_S
    assert "MAX_PARAMETERS" in msg or "MAX_DEPTH" in msg


def test_size_limits_are_generous_for_real_models():
    assert MAX_DEPTH >= 28 and MAX_PARAMETERS >= 10**9  # DiT-XL/2: depth 28, 0.68e9 weights
    model = sf.ShortcutDiT.preset("DiT-S/8", input_size=16, in_channels=1, num_classes=10)
    assert sf.models.count_parameters(model) < MAX_PARAMETERS


@SOME
@given(
    st.one_of(not_a_number(), st.booleans(), st.floats().filter(lambda r: not (math.isfinite(8 * r) and 8 * r >= 1)))
)
def test_dit_rejects_a_bad_mlp_ratio(ratio):
    expect_error(lambda: sf.ShortcutDiT(**{**DIT_OK, "mlp_ratio": ratio}), names=["mlp_ratio"])


@SOME
@given(
    st.sampled_from([sf.ShortcutMLP, sf.ShortcutDiT]),
    st.one_of(
        not_a_number(),
        st.booleans(),
        st.floats().filter(lambda v: v not in VALID_MIN_STEPS),
        st.integers().filter(lambda v: v != 1),
    ),
)
def test_models_reject_a_bad_min_step(cls, min_step):
    base = MLP_OK if cls is sf.ShortcutMLP else DIT_OK
    expect_error(lambda: cls(**base, min_step=min_step), names=["min_step"])


@SOME
@given(
    st.one_of(
        st.text(max_size=8).filter(lambda s: s not in sf.DIT_PRESETS),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=2), max_size=2),
        st.tuples(st.text(max_size=2)),
    )
)
def test_unknown_preset_names_are_rejected(name):
    expect_error(
        lambda: sf.ShortcutDiT.preset(name, input_size=8, in_channels=1, num_classes=0), ValueError, names=["preset"]
    )


@FEW
@given(st.sampled_from(sorted(sf.DIT_PRESETS)), st.sampled_from(["depth", "hidden_size", "num_heads", "patch_size"]))
def test_preset_refuses_to_override_its_own_sizes(name, key):
    expect_error(lambda: sf.ShortcutDiT.preset(name, **{key: 4}), ValueError, names=[key])


@MANY
@given(st.sampled_from(range(len(MODELS))), st.booleans(), st.data())
def test_forward_valid_inputs_give_finite_velocities(index, double, data):
    model = (MODELS_F64 if double else MODELS)[index]
    x, t, d, y = data.draw(forward_args(model))
    out = model(x, t, d, y)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


def test_forward_in_bfloat16_and_under_autocast():
    model = copy.deepcopy(DIT_COND).bfloat16()
    x = torch.randn(2, 1, 4, 4)
    assert torch.isfinite(model(x.bfloat16(), 0.0, 1.0, torch.tensor([0, 3]))).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(DIT_COND(x, 0.5, 0.5)).all()


@MANY
@given(
    st.sampled_from(MODELS),
    st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64, torch.complex128]),
)
def test_forward_rejects_non_float_x(model, dtype):
    x = torch.zeros(x_shape(model, 2), dtype=dtype)
    expect_error(lambda: model(x, 0.0, 1.0), TypeError, names=["x must be a floating-point tensor"])


@SOME
@given(
    st.sampled_from(range(len(MODELS))), st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.float32])
)
def test_forward_rejects_x_of_another_dtype_than_the_weights(index, dtype):
    model = MODELS[index] if dtype != torch.float32 else MODELS_F64[index]
    x = torch.zeros(x_shape(model, 2), dtype=dtype)
    expect_error(lambda: model(x, 0.0, 1.0), TypeError, names=["dtype"])


@MANY
@given(st.sampled_from(MODELS), st.lists(st.integers(0, 5), min_size=0, max_size=5))
def test_forward_rejects_x_of_a_wrong_shape(model, shape):
    assume(len(shape) < 2 or tuple(shape[1:]) != x_shape(model, 1)[1:])
    expect_error(lambda: model(torch.zeros(shape), 0.0, 1.0), ValueError, names=["x must have shape"])


@SOME
@given(st.sampled_from(range(len(MODELS))), st.sampled_from(["x", "t", "d", "y", "model"]))
def test_forward_rejects_inputs_on_another_device(index, which):
    model = MODELS[index]
    x = torch.zeros(x_shape(model, 2))
    args = {"x": x, "t": torch.zeros(2), "d": torch.ones(2), "y": None}
    if which == "model":
        expect_error(lambda: MODELS_META[index](**args), ValueError, names=["x is on cpu but the model is on meta"])
        return
    if which == "y":
        if not model.num_classes:
            return
        args["y"] = torch.zeros(2, dtype=torch.long)
    args[which] = args[which].to(META)
    msg = expect_error(lambda: model(**args), ValueError, names=[f"{which} is on meta"])
    assert "cpu" in msg


@MANY
@given(st.sampled_from(MODELS), st.sampled_from(["t", "d"]), st.data())
def test_forward_rejects_bad_t_and_d_naming_them(model, which, data):
    batch = 3
    kind = data.draw(st.sampled_from(["number", "tensor", "type", "shape", "dtype"]))
    if kind == "number":  # a value no step size or time can have
        too_big_for_a_float = st.integers(2**1024, 2**1100) | st.integers(-(2**1100), -(2**1024))
        if which == "t":
            value = data.draw(
                st.one_of(
                    st.floats().filter(lambda v: not is_time(v)),
                    too_big_for_a_float,
                    st.integers().filter(lambda v: v not in (0, 1)),
                )
            )
        else:
            value = data.draw(
                st.one_of(
                    st.floats().filter(lambda v: not is_step_size(v, model.min_step)),
                    too_big_for_a_float,
                    st.integers().filter(lambda v: v != 1),
                )
            )
        exc = ValueError
    elif kind == "tensor":
        values = data.draw(
            st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=batch, max_size=batch)
        )
        assume(not all(is_step_size(v, model.min_step) if which == "d" else is_time(v) for v in values))
        value, exc = torch.tensor(values), ValueError
    elif kind == "type":
        value, exc = data.draw(not_a_number().filter(lambda v: v is not None) | st.booleans()), TypeError
    elif kind == "shape":
        shape = data.draw(st.lists(st.integers(0, 4), min_size=1, max_size=3).filter(lambda s: s != [batch]))
        value, exc = torch.full(shape, 0.5 if which == "t" else 1.0), ValueError
    else:
        value, exc = torch.ones(batch, dtype=data.draw(st.sampled_from([torch.bool, torch.complex64]))), TypeError
    args = {"t": 0.0, "d": 1.0, which: value}
    msg = expect_error(lambda: model(torch.zeros(x_shape(model, batch)), args["t"], args["d"]), exc)
    assert msg.startswith(f"{which} "), msg


@MANY
@given(st.sampled_from([MLP_COND, DIT_COND]), st.data())
def test_forward_rejects_bad_labels(model, data):
    batch = 3
    kind = data.draw(st.sampled_from(["range", "dtype", "shape", "type"]))
    if kind == "range":
        values = data.draw(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=batch, max_size=batch))
        assume(any(not 0 <= v <= model.num_classes for v in values))
        y, exc, name = torch.tensor(values), ValueError, "labels must lie in"
    elif kind == "dtype":
        dtype = data.draw(
            st.sampled_from(
                [torch.float32, torch.float64, torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.complex64]
            )
        )
        y, exc, name = torch.zeros(batch, dtype=dtype), TypeError, "y must be an integer tensor"
    elif kind == "shape":
        shape = data.draw(st.lists(st.integers(0, 4), max_size=3).filter(lambda s: s != [batch]))
        y, exc, name = torch.zeros(shape, dtype=torch.long), ValueError, "y must have shape"
    else:
        y, exc, name = data.draw(not_a_number().filter(lambda v: v is not None)), TypeError, "y must be"
    expect_error(lambda: model(torch.zeros(x_shape(model, batch)), 0.0, 1.0, y), exc, names=[name])


@FEW
@given(st.sampled_from([MLP_UNCOND, DIT_UNCOND]), st.integers(0, 3))
def test_unconditional_models_refuse_labels(model, label):
    y = torch.full((2,), label)
    expect_error(lambda: model(torch.zeros(x_shape(model, 2)), 0.0, 1.0, y), ValueError, names=["unconditional"])


@SOME
@given(st.sampled_from(MODELS), st.integers(2, 4), st.data())
def test_non_finite_rows_of_x_stay_in_their_rows(model, batch, data):
    """``x`` is not scanned (documented): a NaN/inf row gives a non-finite row, the other rows are untouched."""
    x = torch.randn(x_shape(model, batch))
    bad = data.draw(st.lists(st.integers(0, batch - 1), min_size=1, max_size=batch - 1, unique=True))
    x.flatten(1)[bad, 0] = data.draw(st.sampled_from([math.nan, math.inf, -math.inf]))
    out = model(x, 0.0, 1.0)
    good = [i for i in range(batch) if i not in bad]
    torch.testing.assert_close(out[good], model(x[good], 0.0, 1.0))
    assert torch.isfinite(out[good]).all()
