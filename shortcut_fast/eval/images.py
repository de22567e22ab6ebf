"""Writing image grids as PNG files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..checkpoint import atomic_file

GRID_GAP = 2
"""Pixels of background between neighbouring images of a grid."""

_PAD = 4
_BACKGROUND = 255
_INK = 0


def _to_uint8(images: torch.Tensor) -> np.ndarray:
    # (rows, cols, C, H, W) in [-1, 1] -> (rows, cols, H, W, C) uint8
    pixels = (images.detach().to("cpu", torch.float64).clamp(-1.0, 1.0) + 1.0) * 127.5
    return pixels.round().to(torch.uint8).permute(0, 1, 3, 4, 2).numpy()


def _tile(cells: np.ndarray, scale: int) -> np.ndarray:
    rows, cols, h, w, c = cells.shape
    cells = cells.repeat(scale, axis=2).repeat(scale, axis=3)
    h, w = h * scale, w * scale
    # Each cell gets a gap on its right and bottom; the trailing gaps are cut off.
    padded = np.full((rows, cols, h + GRID_GAP, w + GRID_GAP, c), _BACKGROUND, dtype=np.uint8)
    padded[:, :, :h, :w] = cells
    grid = padded.transpose(0, 2, 1, 3, 4).reshape(rows * (h + GRID_GAP), cols * (w + GRID_GAP), c)
    return grid[:-GRID_GAP, :-GRID_GAP]


def _text_box(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int, int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(left), int(top), int(right), int(bottom)


def _validate(images, path: Path, row_labels, scale, title) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 5:
        raise ValueError(f"images must have shape (rows, cols, C, H, W), got {tuple(images.shape)}")
    rows, cols, channels, height, width = images.shape
    if min(rows, cols, height, width) < 1:
        raise ValueError(f"images must have at least one row, column and pixel, got shape {tuple(images.shape)}")
    if channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels (C), got {channels}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating point tensor, got {images.dtype}")
    if bool(torch.isnan(images).any()):
        raise ValueError("images must not contain NaN")
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an int >= 1, got {scale!r}")
    if path.suffix.lower() != ".png":
        raise ValueError(f"path must end in .png, got {path.name!r}")
    if row_labels is not None:
        if isinstance(row_labels, str) or len(row_labels) != rows:
            raise ValueError(f"row_labels must be a list of {rows} strings (one per row), got {row_labels!r}")
        if not all(isinstance(label, str) for label in row_labels):
            raise TypeError("row_labels must contain only strings")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__}")


def save_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    *,
    row_labels: list[str] | None = None,
    scale: int = 4,
    title: str | None = None,
) -> Path:
    """Write a grid of images as a PNG file.

    Parameters
    ----------
    images : torch.Tensor
        Shape (rows, cols, C, H, W), C = 1 (grey) or 3 (RGB), values in
        [-1, 1] (clamped; -1 is black, +1 white).
    path : str or os.PathLike
        Target ``.png`` file; parent directories are created and the file
        is replaced atomically.
    row_labels : list of str, optional
        One label per row, drawn left of the row.
    scale : int
        Nearest-neighbour upscaling factor of every image.
    title : str, optional
        A line of text above the grid.

    Returns
    -------
    pathlib.Path
        ``path``. Without labels and title the PNG is
        ``cols * W * scale + (cols - 1) * GRID_GAP`` pixels wide and
        ``rows * H * scale + (rows - 1) * GRID_GAP`` high, on a white background.
    """
    path = Path(path)
    _validate(images, path, row_labels, scale, title)
    channels, height = images.shape[2], images.shape[3]
    grid = _tile(_to_uint8(images), scale)
    mode = "L" if channels == 1 else "RGB"
    grid_image = Image.fromarray(grid[..., 0] if channels == 1 else grid)
    ink = _INK if channels == 1 else (_INK,) * 3
    background = _BACKGROUND if channels == 1 else (_BACKGROUND,) * 3

    font = ImageFont.load_default()
    measure = ImageDraw.Draw(grid_image)
    label_boxes = [_text_box(measure, label, font) for label in row_labels or []]
    label_width = max((right - left for left, _, right, _ in label_boxes), default=0)
    left_margin = label_width + 2 * _PAD if row_labels is not None else 0
    title_box = _text_box(measure, title, font) if title is not None else None
    top_margin = 0
    width = left_margin + grid_image.width
    if title_box is not None:
        top_margin = title_box[3] - title_box[1] + 2 * _PAD
        width = max(width, title_box[2] - title_box[0] + 2 * _PAD)

    canvas = Image.new(mode, (width, top_margin + grid_image.height), background)
    canvas.paste(grid_image, (left_margin, top_margin))
    draw = ImageDraw.Draw(canvas)
    if title_box is not None:
        assert title is not None  # title_box is measured from it
        draw.text((_PAD - title_box[0], _PAD - title_box[1]), title, fill=ink, font=font)
    row_pitch = height * scale + GRID_GAP
    for row, (label, (left, top, _, bottom)) in enumerate(zip(row_labels or [], label_boxes, strict=True)):
        # Centre the label's ink box on the row.
        y = top_margin + row * row_pitch + (height * scale - (bottom - top)) // 2 - top
        draw.text((_PAD - left, y), label, fill=ink, font=font)

    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def save_images(images: torch.Tensor, folder: str | os.PathLike) -> list[Path]:
    """Write each image of ``images`` (N, C, H, W) in [-1, 1], C = 1 or 3, as ``folder/000000.png``, ... atomically."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be a tensor (N, 1 or 3, H, W), got {tuple(getattr(images, 'shape', ()))}")
    folder = Path(folder)
    pixels = _to_uint8(images[None])[0]
    paths = []
    for i, cell in enumerate(pixels):
        path = folder / f"{i:06d}.png"
        with atomic_file(path) as tmp:
            Image.fromarray(cell[..., 0] if cell.shape[-1] == 1 else cell).save(tmp, format="PNG")
        paths.append(path)
    return paths
