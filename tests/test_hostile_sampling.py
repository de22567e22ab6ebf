"""Hostile inputs to ``sample`` (``shortcut_fast.sampling``).

Wrong types, shapes, dtypes, devices ("meta" stands in for a second device),
NaN/inf, huge sizes and malformed files must end in a ``ValueError`` or
``TypeError`` (``FileNotFoundError`` for a missing path) whose message names the
offending argument; valid inputs drawn by the same strategies must work. The
strategies and tiny models shared by these files are in ``helpers.py``.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from helpers import (
    DIT_COND,
    FAIL_FAST_S,
    FEW,
    MANY,
    META,
    MLP_COND,
    MLP_UNCOND,
    MODELS,
    MODELS_META,
    SOME,
    WrongOutput,
    expect_error,
    not_a_number,
    not_an_int,
    x_shape,
)
from hypothesis import assume, given
from hypothesis import strategies as st

import shortcut_fast as sf
from shortcut_fast.sampling import MAX_NOISE_ELEMENTS
from shortcut_fast.steps import allowed_steps

pytestmark = pytest.mark.usefixtures("single_thread")


@FEW
@given(st.sampled_from(range(len(MODELS))), st.booleans())
def test_sample_with_a_model_on_another_device(index, with_noise):
    model = MODELS_META[index]
    if with_noise:
        expect_error(
            lambda: sf.sample(model, torch.zeros(x_shape(model, 2))),
            ValueError,
            names=["noise is on cpu but the model is on meta"],
        )
    else:
        expect_error(lambda: sf.sample(model, shape=x_shape(model, 2)), ValueError, names=["meta"])


@MANY
@given(st.sampled_from(range(len(MODELS))), st.data())
def test_sample_valid_requests_give_finite_samples(index, data):
    model = MODELS[index]
    steps = data.draw(st.sampled_from([s for s in allowed_steps(model.min_step) if s <= 8]))
    batch = data.draw(st.integers(1, 4))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    y = cfg = None
    if model.num_classes and data.draw(st.booleans()):
        y = torch.tensor(data.draw(st.lists(st.integers(0, model.num_classes), min_size=batch, max_size=batch)))
        if data.draw(st.booleans()):
            cfg = data.draw(st.floats(-2, 4) | st.integers(-2, 4))
    if data.draw(st.booleans()):
        noise = torch.randn(x_shape(model, batch), dtype=dtype)
        out = sf.sample(model, noise, steps=steps, y=y, cfg_scale=cfg)
        again = sf.sample(model, noise.clone(), steps=steps, y=y, cfg_scale=cfg)
        torch.testing.assert_close(out, again, rtol=0, atol=0)
    else:
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
        out = sf.sample(model, shape=x_shape(model, batch), steps=steps, y=y, cfg_scale=cfg, generator=gen, dtype=dtype)
    assert out.shape == x_shape(model, batch) and out.dtype == dtype and torch.isfinite(out).all()


@MANY
@given(st.sampled_from(MODELS), st.data())
def test_sample_rejects_bad_noise_naming_it(model, data):
    kind = data.draw(st.sampled_from(["dtype", "type", "nonfinite", "rank", "shape", "device"]))
    shape = x_shape(model, 2)
    if kind == "dtype":
        dtype = data.draw(st.sampled_from([torch.int64, torch.uint8, torch.bool, torch.complex64]))
        noise, exc = torch.zeros(shape, dtype=dtype), TypeError
    elif kind == "type":
        noise, exc = (
            data.draw(
                st.one_of(
                    st.lists(st.floats(), max_size=3),
                    st.floats(),
                    st.text(max_size=3),
                    st.just(np.zeros(shape, dtype=np.float32)),
                )
            ),
            TypeError,
        )
    elif kind == "nonfinite":
        noise = torch.randn(shape)
        noise.flatten()[data.draw(st.integers(0, noise.numel() - 1))] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
        exc = ValueError
    elif kind == "rank":
        noise, exc = torch.zeros(data.draw(st.sampled_from([(), (3,), (0, *shape[1:])]))), ValueError
    elif kind == "shape":
        bad = tuple(data.draw(st.lists(st.integers(1, 5), min_size=2, max_size=5)))
        assume(bad[1:] != shape[1:])
        noise, exc = torch.zeros(bad), ValueError
    else:
        noise, exc = torch.zeros(shape, device=META), ValueError
    expect_error(lambda: sf.sample(model, noise), exc, names=["noise"])


@MANY
@given(
    st.sampled_from(MODELS),
    st.one_of(
        st.lists(st.integers(1, 4), max_size=1),
        st.lists(st.integers(-(2**70), 0), min_size=2, max_size=4),
        st.lists(st.one_of(st.booleans(), st.floats(), st.text(max_size=2), st.none()), min_size=2, max_size=4),
        st.text(max_size=4),
        st.integers(),
        st.floats(),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
        st.lists(st.integers(10**5, 10**30), min_size=2, max_size=4),
        st.lists(st.integers(1, 5), min_size=2, max_size=5),
    ),
)
def test_sample_rejects_bad_shapes_before_allocating(model, shape):
    if isinstance(shape, list) and len(shape) >= 2 and all(isinstance(s, int) and s >= 1 for s in shape):
        assume(tuple(shape[1:]) != x_shape(model, 1)[1:] or math.prod(shape) > MAX_NOISE_ELEMENTS)
    start = time.perf_counter()
    expect_error(lambda: sf.sample(model, shape=shape), ValueError, names=["shape"])
    assert time.perf_counter() - start < FAIL_FAST_S


def test_sample_needs_exactly_one_of_noise_and_shape():
    expect_error(lambda: sf.sample(MLP_COND), ValueError, names=["noise", "shape"])
    expect_error(lambda: sf.sample(MLP_COND, torch.zeros(2, 3), shape=(2, 3)), ValueError, names=["noise", "shape"])


@SOME
@given(
    st.sampled_from(MODELS),
    st.one_of(
        not_an_int().filter(lambda s: s != [1]),  # [1]: the one-step schedule
        st.integers(max_value=0),
        st.integers(129, 2**40),
    ),
)
def test_sample_rejects_bad_steps(model, steps):
    expect_error(lambda: sf.sample(model, shape=x_shape(model, 1), steps=steps), names=["steps"])


@SOME
@given(
    st.one_of(
        not_a_number().filter(lambda v: v is not None), st.booleans(), st.sampled_from([math.nan, math.inf, -math.inf])
    )
)
def test_sample_rejects_bad_cfg_scale(cfg):
    expect_error(lambda: sf.sample(MLP_COND, shape=(2, 3), y=torch.tensor([0, 1]), cfg_scale=cfg), names=["cfg_scale"])


def test_sample_guidance_needs_labels_and_a_conditional_model():
    expect_error(lambda: sf.sample(MLP_COND, shape=(2, 3), cfg_scale=2.0), ValueError, names=["labels"])
    expect_error(
        lambda: sf.sample(MLP_UNCOND, shape=(2, 2), y=torch.tensor([0, 1]), cfg_scale=2.0),
        ValueError,
        names=["unconditional"],
    )


@SOME
@given(
    st.one_of(
        not_an_int().filter(lambda v: v is not None),
        st.sampled_from(
            [
                torch.int32,
                torch.int64,
                torch.bool,
                torch.uint8,
                torch.complex64,
                torch.float8_e4m3fn,
                "float32",
                float,
                np.float32,
            ]
        ),
    )
)
def test_sample_rejects_a_bad_dtype(dtype):
    expect_error(lambda: sf.sample(MLP_COND, shape=(2, 3), dtype=dtype), TypeError, names=["dtype"])


@SOME
@given(st.one_of(not_an_int().filter(lambda v: v is not None), st.integers(), st.just(np.random.default_rng(0))))
def test_sample_rejects_a_bad_generator(generator):
    expect_error(lambda: sf.sample(MLP_COND, shape=(2, 3), generator=generator), names=["generator"])


@SOME
@given(st.sampled_from([MLP_COND, DIT_COND]), st.booleans(), st.data())
def test_sample_rejects_bad_labels(model, guided, data):
    kind = data.draw(st.sampled_from(["type", "dtype", "shape", "range", "device"]))
    if kind == "type":
        y = data.draw(st.one_of(st.lists(st.integers(0, 2), min_size=2, max_size=2), st.integers(), st.text()))
    elif kind == "dtype":
        y = torch.zeros(2, dtype=data.draw(st.sampled_from([torch.float32, torch.bool, torch.complex64])))
    elif kind == "shape":
        y = torch.zeros(data.draw(st.lists(st.integers(0, 3), max_size=2).filter(lambda s: s != [2])), dtype=torch.long)
    elif kind == "range":
        y = torch.tensor([0, data.draw(st.integers(-(2**62), -1) | st.integers(model.num_classes + 1, 2**62))])
    else:
        y = torch.zeros(2, dtype=torch.long, device=META)
    expect_error(
        lambda: sf.sample(model, shape=x_shape(model, 2), y=y, cfg_scale=2.0 if guided else None),
        names=["y ", "labels"],
    )


@FEW
@given(st.one_of(not_an_int(), st.integers(), st.just(lambda x, t, d, y=None: x), st.just(torch.zeros(2, 3))))
def test_sample_rejects_a_model_that_is_not_a_module(model):
    expect_error(lambda: sf.sample(model, torch.zeros(2, 3)), TypeError, names=["model"])


@FEW
@given(st.sampled_from(["narrow", "flat", "int", "tuple", "none"]), st.sampled_from([None, 1.5]))
def test_sample_rejects_a_model_output_of_the_wrong_kind(kind, cfg):
    model = WrongOutput(kind)
    model.num_classes = 2
    y = None if cfg is None else torch.tensor([0, 1, 2])
    expect_error(
        lambda: sf.sample(model, torch.randn(3, 4), y=y, cfg_scale=cfg), ValueError, names=["the model returned"]
    )
