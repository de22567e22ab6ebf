"""Training data from disk: memory-mapped tensor shards and folders of images.

Both classes are ``torch.utils.data.Dataset``s whose items are ``x`` (a float32
tensor) or ``(x, label)``, as ``Trainer`` and ``BatchSource`` expect. They hold
only paths and small indexes, so they pickle cheaply into DataLoader workers,
and every process opens the files itself on first use.
"""

from __future__ import annotations

import bisect
import glob
import operator
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset

SHARD_SUFFIXES = (".npy", ".safetensors")
"""File types ``TensorShards`` and ``find_shards`` accept."""

# safetensors dtypes that convert to float32 without losing their meaning (no BOOL, no complex)
_REAL_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8"}
_INT_DTYPES = {d for d in _REAL_DTYPES if d[0] in "IU"}

# what PIL raises for missing, damaged, truncated or oversized image files
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _global_index(index, length: int) -> int:
    """``index`` (an int, numpy int or 0-d tensor; negative counts from the end) as 0..length-1."""
    index = operator.index(index)
    if not -length <= index < length:
        raise IndexError(f"index {index} is out of range for {length} items")
    return index % length


def find_shards(pattern_or_dir: str | os.PathLike) -> list[Path]:
    """The sorted ``.npy`` / ``.safetensors`` files of a directory, a glob pattern or a single file.

    A directory is not searched recursively. Raises ValueError when nothing matches.
    """
    text = os.fspath(pattern_or_dir)
    path = Path(text)
    if path.is_dir():
        found = [p for p in path.iterdir() if p.is_file()]
    elif path.is_file() or not any(c in text for c in "*?["):
        if path.suffix not in SHARD_SUFFIXES:
            raise ValueError(f"{path}: shard files must end in {' or '.join(SHARD_SUFFIXES)}")
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        found = [path]
    else:
        found = [Path(p) for p in glob.glob(text) if Path(p).is_file()]
    shards = sorted((p for p in found if p.suffix in SHARD_SUFFIXES), key=str)
    if not shards:
        raise ValueError(
            f"{text} matches no {' or '.join(SHARD_SUFFIXES)} files "
            "(give a file, a directory of shards or a glob pattern)"
        )
    return shards


def _open_npy(path: Path) -> np.memmap:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ValueError(f"{path} is not a readable .npy array ({err})") from err


def _open_safetensors(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (OSError, SafetensorError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err


def _check_labels(values: np.ndarray, rows: int, source: Path, shard: Path) -> np.ndarray:
    """``values`` as int64 after checking there is one label >= 0 per row of ``shard``."""
    if values.shape != (rows,):
        raise ValueError(
            f"{source} holds labels of shape {values.shape} for the {rows} rows of {shard}; "
            "need one integer label per row"
        )
    values = values.astype(np.int64)
    if rows and values.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0")
    return values


def _read_label_file(path: Path, rows: int, shard: Path) -> np.ndarray:
    if path.suffix != ".npy":
        raise ValueError(f"{path}: label files must be .npy arrays of integers")
    if not path.is_file():
        raise ValueError(f"label file {path} does not exist")
    values = np.asarray(_open_npy(path))
    if values.dtype.kind not in "iu":
        raise ValueError(f"{path} holds {values.dtype} labels; labels must be integers")
    return _check_labels(values, rows, path, shard)


def _read_header(path: Path, with_labels: bool) -> tuple[tuple[int, ...], np.ndarray | None]:
    """The shape of a shard's data and, when ``with_labels``, its safetensors labels ``y`` (``None`` when absent).

    Reads only the header (and the labels, which are small), never the data.
    """
    if path.suffix not in SHARD_SUFFIXES:
        raise ValueError(f"{path}: shard files must end in {' or '.join(SHARD_SUFFIXES)}")
    if not path.is_file():
        raise ValueError(f"shard file {path} does not exist")
    if path.suffix == ".npy":
        array = _open_npy(path)
        shape, kind, real = array.shape, str(array.dtype), array.dtype.kind in "iuf"
        labels = None
    else:
        with _open_safetensors(path) as handle:
            if "x" not in handle.keys():
                raise ValueError(
                    f"{path} must hold a tensor named 'x' (and optionally 'y'); found {sorted(handle.keys())}"
                )
            x = handle.get_slice("x")
            shape, kind = tuple(x.get_shape()), x.get_dtype()
            real = kind in _REAL_DTYPES
            labels = None
            if with_labels and "y" in handle.keys():
                label_kind = handle.get_slice("y").get_dtype()
                if label_kind not in _INT_DTYPES:
                    raise ValueError(f"{path}: labels 'y' must be integers, got {label_kind}")
                labels = handle.get_tensor("y").to(torch.int64).numpy()
    if not real or len(shape) < 2:
        raise ValueError(
            f"{path}: data must be a real (int or float) array of shape (N, ...) with at least "
            f"2 dimensions; got {kind} {shape}"
        )
    if labels is not None:
        labels = _check_labels(labels, shape[0], path, path)
    return shape, labels


class TensorShards(Dataset):
    """Samples split over ``.npy`` / ``.safetensors`` files, memory-mapped rather than loaded.

    For data too big for memory, such as precomputed VAE latents. Row ``i`` of
    every file is one sample; all files must share the per-sample shape. A
    ``.safetensors`` file holds the tensor ``x`` and optionally integer labels
    ``y``. ``labels``, when given, is a list of ``.npy`` label files, one per
    file in ``files`` (it replaces any ``y``). Either every shard has labels or
    none does. Items are float32 tensors ``x`` or pairs ``(x, label)``.

    Construction reads only headers (and the labels); the data is read a row at
    a time. ``sample_shape`` is the shape of one item's ``x``; ``num_classes``
    is the largest label + 1, or 0 without labels.
    """

    def __init__(self, files: Sequence[str | os.PathLike], labels: Sequence[str | os.PathLike] | None = None):
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ValueError("TensorShards needs at least one .npy or .safetensors file")
        if labels is not None:
            if isinstance(labels, (str, os.PathLike)):
                labels = [labels]
            if len(labels) != len(self.files):
                raise ValueError(
                    f"got {len(labels)} label files for {len(self.files)} shard files; "
                    "give one .npy label file per shard"
                )
        # label files replace any 'y', so 'y' is read only without them
        shapes, shard_labels = zip(*(_read_header(f, labels is None) for f in self.files), strict=True)
        first = self.files[0]
        self.sample_shape = tuple(shapes[0][1:])
        for path, shape in zip(self.files, shapes, strict=True):
            if tuple(shape[1:]) != self.sample_shape:
                raise ValueError(
                    f"mixed sizes: {path} holds samples of shape {tuple(shape[1:])}, "
                    f"but {first} holds {self.sample_shape}; every shard needs the same shape"
                )
        rows = [shape[0] for shape in shapes]
        if labels is not None:
            shard_labels = [
                _read_label_file(Path(lab), n, f) for lab, n, f in zip(labels, rows, self.files, strict=True)
            ]
        for path, lab in zip(self.files, shard_labels, strict=True):
            if (lab is None) != (shard_labels[0] is None):
                raise ValueError(
                    f"{path} has {'no ' if lab is None else ''}labels 'y' but {first} "
                    f"{'does' if lab is None else 'does not'}; either all shards have labels or none"
                )
        self._ends = np.cumsum(rows).tolist()
        if self._ends[-1] == 0:
            raise ValueError(
                f"the {len(self.files)} shard file(s) from {first} on hold no rows; need at least one sample"
            )
        # labels are one int per row, small next to the data, and num_classes needs all of them
        self._labels = None if shard_labels[0] is None else np.concatenate(shard_labels)
        self.num_classes = 0 if self._labels is None else int(self._labels.max()) + 1
        self._readers: dict[int, object] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._ends[-1]

    def _reader(self, shard: int):
        """The open memmap (``.npy``) or ``x`` slice (``.safetensors``) of a shard, opened once per process."""
        # a forked DataLoader worker inherits the parent's handles; give it its own
        if self._pid != os.getpid():
            self._readers, self._pid = {}, os.getpid()
        if shard not in self._readers:
            path = self.files[shard]
            if path.suffix == ".npy":
                self._readers[shard] = _open_npy(path)
            else:
                self._readers[shard] = _open_safetensors(path).get_slice("x")
        return self._readers[shard]

    def __getitem__(self, index):
        index = _global_index(index, len(self))
        shard = bisect.bisect_right(self._ends, index)
        row = index - (self._ends[shard - 1] if shard else 0)
        values = self._reader(shard)[row]
        if isinstance(values, torch.Tensor):
            x = values.to(torch.float32)
        else:
            x = torch.from_numpy(np.array(values, dtype=np.float32))
        return x if self._labels is None else (x, int(self._labels[index]))

    def __getstate__(self) -> dict:
        # open files do not travel: a memmap would pickle its whole content, a safetensors slice not at all
        return {**self.__dict__, "_readers": {}}


class ImageFolder(Dataset):
    """Images in ``root/<class>/*.png|jpg``, as ``(x, label)`` with ``x`` of shape (channels, size, size) in [-1, 1].

    The classes are the sorted sub-folder names (``classes``); labels index
    them. Each image is converted to RGB (``channels=3``) or grayscale
    (``channels=1``), resized so its shorter side is ``image_size`` (bicubic),
    center-cropped to a square and, when ``flip``, mirrored left-right with
    probability 0.5. Whether sample ``i`` is mirrored is a hash of
    (``seed``, ``epoch``, ``i``): the same in any process, with any number of
    DataLoader workers, and again after a resume. ``set_epoch`` moves to the
    flips of another epoch (``BatchSource`` calls it); indexing the dataset
    directly gives the flips of its current epoch (0 unless set).

    Unreadable files are skipped with one warning at construction; a file that
    fails later is replaced by the next readable one. Both kinds are listed in
    ``skipped`` (in the process that met them).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int,
        *,
        channels: int = 3,
        flip: bool = True,
        extensions: Sequence[str] = (".png", ".jpg", ".jpeg"),
        seed: int = 0,
    ):
        self.root = Path(root)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        self.seed, self.epoch = _check_count("seed", seed), 0
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if not self.root.is_dir():
            raise ValueError(f"image folder {self.root} does not exist or is not a directory")
        self.image_size, self.channels, self.flip = image_size, channels, flip
        extensions = tuple(e.lower() for e in extensions)
        # hidden folders (.git, .ipynb_checkpoints) are never classes
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise ValueError(
                f"image folder {self.root} has no class sub-folders; expected root/<class>/<image>.png|jpg"
            )
        self.num_classes = len(self.classes)
        candidates = []
        for label, name in enumerate(self.classes):
            folder = self.root / name
            files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)
            if not files:
                raise ValueError(f"class folder {folder} holds no images ({', '.join(extensions)})")
            candidates += [(p, label) for p in files]
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[Path] = []
        for path, label in candidates:
            if _verifies(path):
                self.samples.append((path, label))
            else:
                self.skipped.append(path)
        if self.skipped:
            shown = ", ".join(str(p) for p in self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
            warnings.warn(
                f"skipping {len(self.skipped)} unreadable image file(s) under {self.root}: {shown}", stacklevel=2
            )
        if not self.samples:
            raise ValueError(f"image folder {self.root} holds no readable images")

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Draw the random flips of ``epoch`` (an int >= 0) from now on."""
        self.epoch = _check_count("epoch", epoch)

    def is_flipped(self, index: int) -> bool:
        """Whether item ``index`` is mirrored in the current epoch (always False without ``flip``)."""
        return self.flip and random_bits(self.seed, self.epoch, _global_index(index, len(self))) >> 63 == 1

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """One image file as a (channels, size, size) float32 tensor in [-1, 1], before any flip."""
        size = self.image_size
        with Image.open(path) as opened:
            img = opened.convert("RGB" if self.channels == 3 else "L")
        width, height = img.size
        scale = size / min(width, height)
        resized = (max(size, round(width * scale)), max(size, round(height * scale)))
        if resized != img.size:
            img = img.resize(resized, Image.Resampling.BICUBIC)
        left, top = (resized[0] - size) // 2, (resized[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        pixels = np.asarray(img, dtype=np.float32).reshape(size, size, self.channels)
        return torch.from_numpy(pixels / np.float32(127.5) - np.float32(1.0)).permute(2, 0, 1).contiguous()

    def __getitem__(self, index) -> tuple[torch.Tensor, int]:
        index = _global_index(index, len(self))
        # a file that broke after construction: deterministically take the next readable one
        for offset in range(len(self)):
            path, label = self.samples[(index + offset) % len(self)]
            try:
                x = self.load(path)
            except _IMAGE_ERRORS as err:
                if path not in self.skipped:
                    self.skipped.append(path)
                    warnings.warn(f"skipping unreadable image {path} ({err})", stacklevel=2)
                continue
            if self.is_flipped(index):
                x = x.flip(-1)
            return x, label
        raise ValueError(f"none of the {len(self)} images under {self.root} can be read")


_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """A bijective 64-bit mixing function (the finaliser of splitmix64): nearby inputs, unrelated outputs."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def random_bits(seed: int, epoch: int, index: int) -> int:
    """64 pseudo-random bits that depend only on (``seed``, ``epoch``, ``index``), for per-sample augmentation.

    A counter-based draw: no generator state to carry between processes or
    to save in a checkpoint, and the same bits whatever order samples are read in.
    """
    return _mix64(_mix64(_mix64(seed) ^ epoch) ^ index)


def _check_count(name: str, value) -> int:
    """``value`` as an int >= 0 (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value


def _verifies(path: Path) -> bool:
    """Whether PIL can parse ``path`` as an image (a cheap check that decodes no pixels)."""
    try:
        with Image.open(path) as img:
            img.verify()
    except _IMAGE_ERRORS:
        return False
    return True
