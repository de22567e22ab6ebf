"""IDX files (the format of MNIST and Fashion-MNIST), raw or gzip-compressed, and directories of them.

An IDX file is a 4-byte magic number ``0x0000TTDD`` (``TT`` the element type,
``DD`` the number of dimensions), ``DD`` big-endian uint32 sizes, then the
elements in C order, big-endian. Images are ``0x00000803`` (uint8, (N, rows,
cols)) and labels ``0x00000801`` (uint8, (N,)). Every size is checked against
the bytes actually there, so a damaged file is a ``ValueError`` that names it,
never a silently short data set.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

IMAGES_MAGIC = 0x00000803
"""Magic number of an IDX file of uint8 images (N, rows, cols)."""

LABELS_MAGIC = 0x00000801
"""Magic number of an IDX file of uint8 labels (N,)."""

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The standard (images, labels) file names of each split; each may also end in ``.gz``."""

# element type byte -> big-endian numpy dtype (the IDX specification's table)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _read_prefix(handle, size: int) -> bytearray:
    """Up to ``size`` bytes of ``handle``, read in chunks, so that a gzip stream is never inflated past ``size``."""
    parts, left = [], size
    while left > 0:
        part = handle.read(min(left, _CHUNK))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    # a bytearray, so that the arrays viewing it are writable (torch.from_numpy warns on read-only ones)
    return bytearray().join(parts)


def _read(path: Path) -> tuple[int, np.ndarray]:
    """The magic number and the array of the IDX file ``path``; see ``read_idx``."""
    if not path.is_file():
        raise ValueError(f"IDX file {path} does not exist")
    with open(path, "rb") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if compressed else open(path, "rb") as handle:
            magic = _read_prefix(handle, 4)
            if len(magic) < 4 or magic[:2] != b"\0\0":
                raise ValueError(
                    f"{path} is not an IDX file: it starts with {magic.hex() or 'nothing'}, "
                    "expected a magic number 0x0000TTDD (TT the element type, DD the number of dimensions)"
                )
            kind, ndim = magic[2], magic[3]
            if kind not in _IDX_DTYPES:
                raise ValueError(
                    f"{path}: unknown IDX element type 0x{kind:02x} (magic 0x{magic.hex()}); "
                    f"expected one of {', '.join(f'0x{k:02x}' for k in _IDX_DTYPES)}"
                )
            if ndim == 0:
                raise ValueError(f"{path}: the IDX header gives 0 dimensions; expected at least 1")
            header = _read_prefix(handle, 4 * ndim)
            if len(header) < 4 * ndim:
                raise ValueError(
                    f"{path} is truncated in its header: {ndim} dimension sizes need {4 * ndim} bytes, "
                    f"found {len(header)}"
                )
            shape = tuple(int(s) for s in np.frombuffer(header, ">u4"))
            dtype = np.dtype(_IDX_DTYPES[kind])
            expected = math.prod(shape) * dtype.itemsize
            # a raw file's length is known up front: a header that claims more than is there allocates nothing;
            # one byte past the expected end tells trailing bytes apart without reading them all
            stored = path.stat().st_size - 4 - 4 * ndim if not compressed else expected + 1
            data = _read_prefix(handle, min(stored, expected + 1))
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a readable gzip file ({type(err).__name__}: {err})") from err
    if len(data) > expected:
        raise ValueError(
            f"{path} has bytes after its data: the header's shape {shape} of {dtype.name} needs "
            f"{expected} bytes of data; a different file or a damaged header"
        )
    if len(data) < expected:
        raise ValueError(
            f"{path} is truncated: the header's shape {shape} of {dtype.name} needs {expected} bytes "
            f"of data, found {len(data)}"
        )
    array = np.frombuffer(data, dtype).reshape(shape)
    return int.from_bytes(magic, "big"), array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array in the IDX file ``path`` (raw, or gzip-compressed: told by its first bytes, not its name).

    Returns the elements in their IDX type (uint8, int8, int16, int32,
    float32 or float64) in native byte order, shaped as the header says.
    Raises ValueError, naming the file, for a missing file, a bad magic
    number, an unknown element type, or data shorter or longer than the
    header's sizes.
    """
    return _read(Path(path))[1]


def _read_typed(path: str | os.PathLike, magic: int, what: str) -> np.ndarray:
    """``read_idx`` for one kind of file: the magic number must be ``magic``."""
    found, array = _read(Path(path))
    if found != magic:
        ndim = magic & 0xFF
        raise ValueError(
            f"{path} holds {array.dtype} data of shape {array.shape} (magic 0x{found:08x}), not {what}: "
            f"expected the magic number 0x{magic:08x} (uint8, {ndim} dimension{'s' if ndim > 1 else ''})"
        )
    return array


def read_idx_images(path: str | os.PathLike) -> np.ndarray:
    """The uint8 images (N, rows, cols) of an IDX images file (magic ``0x00000803``); ValueError for any other."""
    return _read_typed(path, IMAGES_MAGIC, "images")


def read_idx_labels(path: str | os.PathLike) -> np.ndarray:
    """The uint8 labels (N,) of an IDX labels file (magic ``0x00000801``); ValueError for any other."""
    return _read_typed(path, LABELS_MAGIC, "labels")


def _find(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists; ValueError when both do."""
    found = [p for p in (directory / name, directory / f"{name}.gz") if p.is_file()]
    if len(found) > 1:
        raise ValueError(f"{directory} holds both {name} and {name}.gz; keep one of them")
    return found[0] if found else None


def is_idx_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding any of the standard IDX file names (see ``IDX_FILES``)."""
    path = Path(path)
    names = [n for pair in IDX_FILES.values() for n in pair]
    return path.is_dir() and any((path / n).is_file() or (path / f"{n}.gz").is_file() for n in names)


def idx_files(directory: str | os.PathLike, split: str = "train") -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` ("train" or "test") in ``directory``, with or without ``.gz``.

    Raises ValueError when ``split`` is unknown, or when the directory lacks
    either file of the split (a partial set), naming what is missing and what is there.
    """
    if split not in IDX_FILES:
        raise ValueError(f"split must be one of {', '.join(repr(s) for s in IDX_FILES)}, got {split!r}")
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"IDX directory {directory} does not exist or is not a directory")
    images_name, labels_name = IDX_FILES[split]
    images, labels = _find(directory, images_name), _find(directory, labels_name)
    if images is None or labels is None:
        missing = [n for n, p in ((images_name, images), (labels_name, labels)) if p is None]
        present = sorted(p.name for p in directory.iterdir() if "idx" in p.name)
        raise ValueError(
            f"{directory} is not a complete IDX set for the {split!r} split: it lacks "
            f"{' and '.join(f'{n}[.gz]' for n in missing)} (found: {', '.join(present) or 'no IDX files'}); "
            f"the split needs {images_name}[.gz] and {labels_name}[.gz]"
        )
    return images, labels


def load_idx_dir(directory: str | os.PathLike, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of ``split`` ("train" or "test") from a directory of IDX files, e.g. Fashion-MNIST.

    Returns float32 images (N, 1, rows, cols) with the bytes 0..255 mapped
    linearly to [-1, 1] (the training convention of ``load_digits`` and
    ``ImageFolder``) and int64 labels (N,). Raises ValueError for a partial
    set (see ``idx_files``), a damaged file, or label and image counts that differ.
    """
    images_path, labels_path = idx_files(directory, split)
    pixels = read_idx_images(images_path)
    labels = read_idx_labels(labels_path)
    if len(labels) != len(pixels):
        raise ValueError(
            f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(pixels)} images; "
            "expected one label per image"
        )
    if len(pixels) == 0:
        raise ValueError(f"{images_path} holds no images; expected at least one")
    images = torch.from_numpy(pixels).unsqueeze(1).to(torch.float32).div_(127.5).sub_(1.0)
    return images, torch.from_numpy(labels.astype(np.int64))
