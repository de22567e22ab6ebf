"""Hostile inputs to ``ShortcutConfig`` and ``shortcut_loss`` (``shortcut_fast.objective``).

Wrong types, shapes, dtypes, devices ("meta" stands in for a second device),
NaN/inf, huge sizes and malformed files must end in a ``ValueError`` or
``TypeError`` (``FileNotFoundError`` for a missing path) whose message names the
offending argument; valid inputs drawn by the same strategies must work. The
strategies and tiny models shared by these files are in ``helpers.py``.
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
from helpers import (
    DIT_COND,
    DIT_UNCOND,
    FEW,
    MANY,
    META,
    MLP_COND,
    MLP_UNCOND,
    SHORTCUT_BAD,
    SOME,
    TinyCustomModel,
    WrongOutput,
    expect_error,
    not_a_number,
    x_shape,
)
from hypothesis import given
from hypothesis import strategies as st

import shortcut_fast as sf

pytestmark = pytest.mark.usefixtures("single_thread")


@st.composite
def shortcut_configs(draw, min_step=None):
    return sf.ShortcutConfig(
        min_step=min_step if min_step is not None else draw(st.sampled_from([0.5, 1 / 8, 1 / 128])),
        bootstrap_fraction=draw(st.floats(0, 1, exclude_max=True)),
        ema_targets=draw(st.booleans()),
        clip=draw(st.none() | st.floats(0.01, 100) | st.integers(1, 10)),
        class_dropout=draw(st.floats(0, 1)),
        bootstrap_cfg_scale=draw(st.none() | st.floats(0, 5)),
        objective=draw(st.sampled_from(["shortcut", "flow"])),
    )


@SOME
@given(st.sampled_from([MLP_COND, MLP_UNCOND, DIT_COND, DIT_UNCOND]), st.data())
def test_shortcut_loss_on_valid_batches_is_finite(model, data):
    config = data.draw(shortcut_configs(min_step=model.min_step))
    assert sf.ShortcutConfig.from_dict(config.to_dict()) == config
    batch = data.draw(st.integers(1, 6))
    x1 = torch.randn(x_shape(model, batch)).clamp(-3, 3)
    y = None
    if model.num_classes and data.draw(st.booleans()):
        y = torch.tensor(data.draw(st.lists(st.integers(0, model.num_classes), min_size=batch, max_size=batch)))
    target = data.draw(st.sampled_from([None, model]))
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    loss, logs = sf.shortcut_loss(model, x1, y, config, target_model=target, generator=gen)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert set(logs) >= {"loss", "flow_loss", "consistency_loss"}


@MANY
@given(st.sampled_from(sorted(SHORTCUT_BAD)), st.data())
def test_shortcut_config_rejects_bad_values_naming_the_field(name, data):
    value = data.draw(SHORTCUT_BAD[name])
    expect_error(lambda: sf.ShortcutConfig(**{name: value}), names=[name])
    expect_error(lambda: sf.ShortcutConfig.from_dict({name: value}), names=[name])


@SOME
@given(
    st.one_of(st.text(min_size=1, max_size=8), st.just("shortcut_")).filter(
        lambda k: k not in {f.name for f in fields(sf.ShortcutConfig)}
    ),
    st.integers(),
)
def test_shortcut_config_from_dict_names_unknown_keys(key, value):
    expect_error(lambda: sf.ShortcutConfig.from_dict({key: value, "clip": 1.0}), ValueError, names=[repr(key)])


@FEW
@given(st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=3), st.integers(), st.none()))
def test_shortcut_config_from_dict_needs_a_dict(data):
    expect_error(lambda: sf.ShortcutConfig.from_dict(data), TypeError, names=["dict"])


@MANY
@given(st.sampled_from([MLP_COND, DIT_COND, MLP_UNCOND]), st.data())
def test_shortcut_loss_rejects_bad_batches(model, data):
    kind = data.draw(
        st.sampled_from(
            [
                "dtype",
                "type",
                "nonfinite",
                "rank",
                "labels_range",
                "labels_dtype",
                "labels_shape",
                "labels_device",
                "min_step",
            ]
        )
    )
    if not model.num_classes and kind.startswith("labels"):
        kind = "unconditional"
    batch, y, config = 4, None, sf.ShortcutConfig(min_step=model.min_step)
    x1 = torch.randn(x_shape(model, batch))
    if kind == "dtype":
        x1 = x1.to(data.draw(st.sampled_from([torch.int64, torch.bool, torch.complex64])))
        exc, names = TypeError, ["x1"]
    elif kind == "type":
        x1, exc, names = data.draw(not_a_number()), TypeError, ["x1"]
    elif kind == "nonfinite":
        x1.flatten()[data.draw(st.integers(0, x1.numel() - 1))] = data.draw(
            st.sampled_from([math.nan, math.inf, -math.inf])
        )
        exc, names = ValueError, ["x1"]
    elif kind == "rank":
        x1, exc, names = torch.zeros(data.draw(st.sampled_from([(), (4,), (0, 3)]))), ValueError, ["x1"]
    elif kind == "labels_range":  # every row: a lone bad label may be dropped to the null class (see the gap below)
        y = torch.full((batch,), data.draw(st.integers(model.num_classes + 1, 2**40) | st.integers(-(2**40), -1)))
        exc, names = ValueError, ["labels"]
    elif kind == "labels_dtype":
        y = torch.zeros(batch, dtype=data.draw(st.sampled_from([torch.float32, torch.bool, torch.complex64])))
        exc, names = TypeError, ["y must be"]
    elif kind == "labels_shape":
        y = torch.zeros(
            data.draw(st.lists(st.integers(0, 5), max_size=2).filter(lambda s: s != [batch])), dtype=torch.long
        )
        exc, names = ValueError, ["y must"]
    elif kind == "labels_device":
        y, exc, names = torch.zeros(batch, dtype=torch.long, device=META), ValueError, ["y is on meta"]
    elif kind == "unconditional":
        y, exc, names = torch.zeros(batch, dtype=torch.long), ValueError, ["unconditional"]
    else:
        config = sf.ShortcutConfig(
            min_step=data.draw(st.sampled_from([0.5, 1 / 4, 1 / 64, 1 / 128]).filter(lambda m: m != model.min_step))
        )
        exc, names = ValueError, ["min_step"]
    expect_error(lambda: sf.shortcut_loss(model, x1, y, config), exc, names=names)


# ---- gaps in objective.py (not editable here) ----


def test_shortcut_loss_x1_on_another_device():
    expect_error(lambda: sf.shortcut_loss(MLP_COND, torch.zeros(4, 3, device=META)), ValueError, names=["x1"])


def test_shortcut_loss_config_of_the_wrong_type():
    expect_error(
        lambda: sf.shortcut_loss(MLP_COND, torch.zeros(4, 3), config={"clip": 1.0}), TypeError, names=["config"]
    )


def test_shortcut_loss_generator_of_the_wrong_type():
    expect_error(lambda: sf.shortcut_loss(MLP_COND, torch.zeros(4, 3), generator=3), TypeError, names=["generator"])


@pytest.mark.parametrize("y", [torch.tensor([0, 1, 2, 9]), torch.tensor([0, 1, 2, -3]), torch.zeros(4)])
def test_shortcut_loss_labels_for_a_custom_model(y):
    model = TinyCustomModel(dim=3, num_classes=4)
    expect_error(lambda: sf.shortcut_loss(model, torch.randn(4, 3), y), names=["y", "labels"])


def test_shortcut_loss_out_of_range_label_hidden_by_class_dropout():
    config = sf.ShortcutConfig(bootstrap_fraction=0.0, class_dropout=1.0)
    expect_error(
        lambda: sf.shortcut_loss(MLP_COND, torch.randn(4, 3), torch.tensor([0, 1, 2, 99]), config),
        ValueError,
        names=["labels", "y"],
    )


def test_shortcut_loss_model_output_of_the_wrong_shape():
    expect_error(
        lambda: sf.shortcut_loss(WrongOutput("narrow"), torch.randn(8, 3)), ValueError, names=["the model returned"]
    )


def test_shortcut_config_from_dict_with_mixed_key_types():
    expect_error(lambda: sf.ShortcutConfig.from_dict({1: 0.5, "zz": 1}), names=["ShortcutConfig", "unknown"])
