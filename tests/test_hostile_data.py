"""Hostile data for a ``Trainer``: tensors, Datasets, DataLoaders (``shortcut_fast.data.batches``).

Wrong types, shapes, dtypes, devices ("meta" stands in for a second device),
NaN/inf, huge sizes and malformed files must end in a ``ValueError`` or
``TypeError`` (``FileNotFoundError`` for a missing path) whose message names the
offending argument; valid inputs drawn by the same strategies must work. The
strategies and tiny models shared by these files are in ``helpers.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import FEW, META, SOME, expect_error, fresh_mlp, quiet_config
from hypothesis import given
from hypothesis import strategies as st

import shortcut_fast as sf

pytestmark = pytest.mark.usefixtures("single_thread")


@SOME
@given(st.data())
def test_trainer_fit_rejects_bad_data(data):
    kind = data.draw(
        st.sampled_from(["dtype", "float64", "features", "rank", "labels_range", "labels_dtype", "min_step"])
    )
    model, config = fresh_mlp(3), quiet_config()
    x, y = torch.randn(8, 3), None
    if kind == "dtype":
        x = torch.ones(8, 3, dtype=data.draw(st.sampled_from([torch.int64, torch.int8, torch.complex64])))
        exc, names = TypeError, ["x1", "data"]
    elif kind == "float64":
        x, exc, names = x.double(), TypeError, ["dtype"]
    elif kind == "features":
        x, exc, names = torch.randn(8, data.draw(st.integers(1, 6).filter(lambda d: d != 3))), ValueError, ["shape"]
    elif kind == "rank":
        x, exc, names = torch.randn(8), ValueError, ["x1", "data"]
    elif kind == "labels_range":
        y = torch.full((8,), data.draw(st.integers(4, 2**40) | st.integers(-(2**40), -1)))
        exc, names = ValueError, ["labels"]
    elif kind == "labels_dtype":
        y = torch.zeros(8, dtype=data.draw(st.sampled_from([torch.bool, torch.complex64, torch.uint16])))
        exc, names = TypeError, ["y must be"]
    else:
        model = fresh_mlp(3, min_step=data.draw(st.sampled_from([1.0, 0.5, 1 / 64])))
        exc, names = ValueError, ["min_step"]
    # rejected when the trainer is built (in-memory data is checked up front) or at the first step
    expect_error(lambda: sf.Trainer(model, x if y is None else (x, y), config).fit(2), exc, names=names)


class ItemsDataset(torch.utils.data.Dataset):
    """A user's Dataset whose item ``i`` is ``make(i)``."""

    def __init__(self, make, size: int = 8):
        self.make, self.size = make, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        return self.make(i)


BAD_ITEMS = {  # item kind -> (item i, exception, a word the message must hold)
    "text": (lambda i: "abc", TypeError, "data item"),
    "triple": (lambda i: (torch.zeros(3), 0, 0), TypeError, "data item"),
    "dict": (lambda i: {"x": torch.zeros(3)}, TypeError, "data item"),
    "ints": (lambda i: torch.ones(3, dtype=torch.long), TypeError, "x1"),
    "float_label": (lambda i: (torch.zeros(3), 0.5), TypeError, "y must be"),
    "label_range": (lambda i: (torch.zeros(3), 99), ValueError, "labels"),
    "features": (lambda i: torch.zeros(5), ValueError, "shape"),
}


@FEW
@given(st.sampled_from(sorted(BAD_ITEMS)), st.booleans())
def test_trainer_fit_on_a_dataset_of_bad_items(kind, loader):
    make, exc, word = BAD_ITEMS[kind]
    data = ItemsDataset(make)
    if loader:
        data = torch.utils.data.DataLoader(data, batch_size=4)
    trainer = sf.Trainer(fresh_mlp(3), data, quiet_config())
    expect_error(lambda: trainer.fit(2), exc, names=[word])


def test_trainer_on_a_dataset_of_ragged_items():
    trainer = sf.Trainer(fresh_mlp(), ItemsDataset(lambda i: torch.zeros(i + 1)), quiet_config())
    expect_error(lambda: trainer.fit(1), ValueError, names=["data", "item"])


def test_trainer_on_an_empty_dataloader():
    empty = torch.utils.data.DataLoader(ItemsDataset(lambda i: torch.zeros(3), size=0), batch_size=4)
    trainer = sf.Trainer(fresh_mlp(), empty, quiet_config())
    expect_error(lambda: trainer.fit(1), ValueError, names=["DataLoader", "data"])


def test_trainer_on_all_nan_data():
    def run():
        trainer = sf.Trainer(fresh_mlp(), torch.full((8, 3), math.nan), quiet_config())
        trainer.fit(100)

    expect_error(run, ValueError, names=["data", "x1", "NaN"])


def test_trainer_on_0d_data():
    expect_error(lambda: sf.Trainer(fresh_mlp(), torch.tensor(1.0), quiet_config()), names=["data"])


def test_trainer_on_meta_data():
    def run():
        sf.Trainer(fresh_mlp(), torch.zeros(8, 3, device=META), quiet_config()).fit(1)

    expect_error(run, names=["data", "meta"])
