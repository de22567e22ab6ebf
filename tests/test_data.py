import numpy as np
import torch
from sklearn.datasets import load_digits as sklearn_load_digits

from shortcut_fast.data.files import DIGITS_CLASSES, load_digits


def test_load_digits_shapes_dtypes_and_range():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8)
    assert x.dtype == torch.float32
    assert y.shape == (1797,)
    assert y.dtype == torch.int64
    assert x.min().item() == -1.0
    assert x.max().item() == 1.0
    assert DIGITS_CLASSES == 10
    assert sorted(y.unique().tolist()) == list(range(DIGITS_CLASSES))


def test_load_digits_is_a_linear_map_of_the_raw_intensities():
    raw = sklearn_load_digits()
    x, y = load_digits()
    # 0..16 -> [-1, 1] is v / 8 - 1, exact in float32 for these integers.
    np.testing.assert_array_equal(x[:, 0].numpy(), raw.images.astype(np.float32) / 8 - 1)
    np.testing.assert_array_equal(y.numpy(), raw.target)
