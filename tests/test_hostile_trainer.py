"""Hostile inputs to ``TrainConfig`` and ``Trainer`` (``shortcut_fast.train.trainer``).

Wrong types, shapes, dtypes, devices ("meta" stands in for a second device),
NaN/inf, huge sizes and malformed files must end in a ``ValueError`` or
``TypeError`` (``FileNotFoundError`` for a missing path) whose message names the
offending argument; valid inputs drawn by the same strategies must work. The
strategies and tiny models shared by these files are in ``helpers.py``.
"""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pytest
import torch
from helpers import FEW, MANY, SOME, TRAIN_BAD, bad_int, expect_error, fresh_mlp, not_an_int, quiet_config
from hypothesis import given
from hypothesis import strategies as st

import shortcut_fast as sf

pytestmark = pytest.mark.usefixtures("single_thread")


@MANY
@given(st.sampled_from(sorted(TRAIN_BAD)), st.data())
def test_train_config_rejects_bad_values_naming_the_field(name, data):
    value = data.draw(TRAIN_BAD[name])
    names = [name] if name != "shortcut" else ["shortcut", "clip", "min_step", "objective", "zzz"]
    expect_error(lambda: sf.TrainConfig(**{name: value}), names=names)
    expect_error(lambda: sf.TrainConfig.from_dict({name: value}), names=names)


@SOME
@given(
    st.text(min_size=1, max_size=10).filter(lambda k: k not in {f.name for f in fields(sf.TrainConfig)}), st.integers()
)
def test_train_config_from_dict_names_unknown_keys(key, value):
    expect_error(lambda: sf.TrainConfig.from_dict({key: value}), ValueError, names=[repr(key)])


@pytest.mark.parametrize("betas", [5, None, 0.9])
def test_train_config_betas_not_a_pair(betas):
    expect_error(lambda: sf.TrainConfig(betas=betas), TypeError, names=["betas"])


@pytest.mark.parametrize("checkpoint_dir", [5, ["run"], 1.5])
def test_train_config_checkpoint_dir_not_a_path(checkpoint_dir):
    expect_error(lambda: sf.TrainConfig(checkpoint_dir=checkpoint_dir), TypeError, names=["checkpoint_dir"])


@pytest.mark.parametrize("name", ["bf16", "progress"])
def test_train_config_flags_not_bools(name):
    expect_error(lambda: sf.TrainConfig(**{name: "no"}), TypeError, names=[name])


@pytest.mark.parametrize("seed", [10**30, 2**64])
def test_train_config_seed_too_large(seed):
    expect_error(
        lambda: sf.Trainer(
            sf.ShortcutMLP(dim=2, hidden_size=8, depth=1),
            torch.randn(8, 2),
            sf.TrainConfig(seed=seed, batch_size=4, progress=False),
        ).fit(1),
        names=["seed"],
    )


@FEW
@given(st.integers(4, 12), st.integers(0, 4), st.integers(1, 3), st.data())
def test_trainer_fits_valid_data(n, num_classes, steps, data):
    torch.manual_seed(0)
    model = fresh_mlp(num_classes)
    x = torch.tensor(data.draw(st.lists(st.floats(-3, 3, width=32), min_size=3 * n, max_size=3 * n))).view(n, 3)
    batch = data.draw(st.integers(1, n))
    if num_classes and data.draw(st.booleans()):
        y = torch.tensor(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
        source = (x, y)
    else:
        source = x
    trainer = sf.Trainer(model, source, quiet_config(batch_size=batch, lr=1e-3))
    history = trainer.fit(steps)
    assert trainer.step == steps and len(history) == steps
    assert all(math.isfinite(row["loss"]) for row in history)
    out = sf.sample(trainer.ema_model, shape=(2, 3), steps=2)
    assert torch.isfinite(out).all()


@SOME
@given(st.data())
def test_trainer_construction_rejects_bad_arguments(data):
    kind = data.draw(
        st.sampled_from(["model", "config", "data", "labels_len", "labels_dtype", "labels_rank", "small", "uncond"])
    )
    model, source, config = fresh_mlp(3), torch.randn(8, 3), quiet_config()
    if kind == "model":
        model, exc, names = data.draw(st.one_of(not_an_int(), st.just(lambda x, t, d, y: x))), TypeError, ["model"]
    elif kind == "config":
        config = data.draw(
            st.one_of(
                st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
                st.integers(1),
                st.text(min_size=1, max_size=3),
                st.just(sf.ShortcutConfig()),
            )
        )
        exc, names = TypeError, ["config"]
    elif kind == "data":
        source = data.draw(
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=3),
                st.lists(st.floats(), max_size=3).filter(lambda v: len(v) != 2),
                st.tuples(st.just(torch.randn(8, 3)), st.integers()),
                st.tuples(st.just(torch.randn(8, 3)), st.just(torch.zeros(8)), st.just(torch.zeros(8))),
                st.just(np.zeros((8, 3), dtype=np.float32)),
            )
        )
        exc, names = TypeError, ["data"]
    elif kind == "labels_len":
        source = (
            torch.randn(8, 3),
            torch.zeros(data.draw(st.integers(0, 20).filter(lambda n: n != 8)), dtype=torch.long),
        )
        exc, names = ValueError, ["labels"]
    elif kind == "labels_dtype":
        source = (torch.randn(8, 3), torch.zeros(8, dtype=data.draw(st.sampled_from([torch.float32, torch.float64]))))
        exc, names = TypeError, ["labels"]
    elif kind == "labels_rank":
        source, exc, names = (torch.randn(8, 3), torch.zeros(8, 2, dtype=torch.long)), ValueError, ["labels"]
    elif kind == "small":
        config, exc, names = quiet_config(batch_size=data.draw(st.integers(9, 10**12))), ValueError, ["batch_size"]
    else:
        model = fresh_mlp(0)
        source, exc, names = (torch.randn(8, 3), torch.zeros(8, dtype=torch.long)), ValueError, ["unconditional"]
    expect_error(lambda: sf.Trainer(model, source, config), exc, names=names)


@SOME
@given(bad_int(0))
def test_fit_rejects_bad_step_counts(steps):
    trainer = sf.Trainer(fresh_mlp(), torch.randn(8, 3), quiet_config())
    expect_error(lambda: trainer.fit(steps), ValueError, names=["steps"])
