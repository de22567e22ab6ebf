import numpy as np
import pytest
import torch
from PIL import Image

from shortcut_fast.eval.images import GRID_GAP, save_grid


def _read(path):
    with Image.open(path) as im:
        return np.array(im), im.mode


def test_size_without_labels(tmp_path):
    rows, cols, h, w, scale = 2, 3, 8, 5, 4
    out = save_grid(torch.zeros(rows, cols, 1, h, w), tmp_path / "g.png", scale=scale)
    assert out == tmp_path / "g.png"
    pixels, mode = _read(out)
    assert mode == "L"
    assert pixels.shape == (rows * h * scale + (rows - 1) * GRID_GAP, cols * w * scale + (cols - 1) * GRID_GAP)


def test_pixels_reflect_input_and_are_clamped(tmp_path):
    scale = 3
    images = torch.empty(2, 2, 1, 4, 4)
    images[0, 0] = -1.0
    images[0, 1] = 1.0
    images[1, 0] = -5.0  # clamped to black
    images[1, 1] = 7.0  # clamped to white
    pixels, _ = _read(save_grid(images, tmp_path / "g.png", scale=scale))
    cell = 4 * scale
    step = cell + GRID_GAP
    assert (pixels[:cell, :cell] == 0).all()
    assert (pixels[:cell, step : step + cell] == 255).all()
    assert (pixels[step : step + cell, :cell] == 0).all()
    assert (pixels[step : step + cell, step : step + cell] == 255).all()
    # the gap between the two black cells of the first column is background (white)
    assert (pixels[cell:step, :cell] == 255).all()


def test_nearest_neighbour_upscaling(tmp_path):
    scale = 5
    values = torch.linspace(-1, 1, 12).reshape(1, 1, 1, 3, 4)
    pixels, _ = _read(save_grid(values, tmp_path / "g.png", scale=scale))
    expected = np.round((values[0, 0, 0].double().numpy() + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(pixels, np.kron(expected, np.ones((scale, scale), dtype=np.uint8)))


def test_rgb_channels(tmp_path):
    images = -torch.ones(1, 2, 3, 2, 2)
    images[0, 0, 0] = 1.0  # red
    images[0, 1, 2] = 1.0  # blue
    pixels, mode = _read(save_grid(images, tmp_path / "g.png", scale=1))
    assert mode == "RGB"
    assert pixels.shape == (2, 2 * 2 + GRID_GAP, 3)
    assert (pixels[:, :2] == [255, 0, 0]).all()
    assert (pixels[:, 2 + GRID_GAP :] == [0, 0, 255]).all()


def test_labels_widen_and_title_heightens(tmp_path):
    images = torch.ones(3, 2, 1, 8, 8)
    plain, _ = _read(save_grid(images, tmp_path / "plain.png"))
    labelled, _ = _read(save_grid(images, tmp_path / "labels.png", row_labels=["zero", "one", "two"]))
    assert labelled.shape[0] == plain.shape[0]
    assert labelled.shape[1] > plain.shape[1]
    margin = labelled.shape[1] - plain.shape[1]
    assert (labelled[:, :margin] < 128).any(), "label text is drawn left of the grid"
    np.testing.assert_array_equal(labelled[:, margin:], plain)
    titled, _ = _read(save_grid(images, tmp_path / "title.png", title="4 steps"))
    assert titled.shape[0] > plain.shape[0]
    assert titled.shape[1] == plain.shape[1]
    np.testing.assert_array_equal(titled[titled.shape[0] - plain.shape[0] :], plain)


def test_creates_parents_and_replaces_atomically(tmp_path):
    target = tmp_path / "a" / "b" / "g.png"
    save_grid(-torch.ones(1, 1, 1, 2, 2), target, scale=1)
    save_grid(torch.ones(1, 1, 1, 2, 2), target, scale=1)
    pixels, _ = _read(target)
    assert (pixels == 255).all()
    assert [p.name for p in target.parent.iterdir()] == ["g.png"]


@pytest.mark.parametrize(
    ("images", "kwargs"),
    [
        (torch.zeros(2, 1, 8, 8), {}),
        (torch.zeros(1, 2, 2, 8, 8), {}),
        (torch.zeros(0, 2, 1, 8, 8), {}),
        (torch.zeros(2, 2, 1, 8, 8), {"row_labels": ["only one"]}),
        (torch.zeros(2, 2, 1, 8, 8), {"scale": 0}),
        (torch.full((1, 1, 1, 2, 2), float("nan")), {}),
    ],
)
def test_bad_input_raises_value_error(tmp_path, images, kwargs):
    with pytest.raises(ValueError):
        save_grid(images, tmp_path / "g.png", **kwargs)
    assert not any(tmp_path.iterdir())


def test_bad_suffix_and_type(tmp_path):
    with pytest.raises(ValueError, match=".png"):
        save_grid(torch.zeros(1, 1, 1, 2, 2), tmp_path / "g.jpg")
    with pytest.raises(TypeError):
        save_grid(np.zeros((1, 1, 1, 2, 2)), tmp_path / "g.png")
