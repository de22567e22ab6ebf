"""Batches from the user's data: tensors, a Dataset or a DataLoader, endless and resumable."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..checks import LABEL_DTYPES


def _check_tensor_data(x: torch.Tensor) -> torch.Tensor:
    """In-memory training data: a real (N, ...) tensor with values, all finite."""
    if not x.is_floating_point():
        raise TypeError(f"data must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 2 or x.is_meta:
        raise ValueError(f"data must be a tensor (N, ...) with values, got shape {tuple(x.shape)} on {x.device}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("data holds NaN or inf values")
    return x


def _collate(items):
    """``default_collate`` with an error that says what is wrong with the dataset's items."""
    try:
        return default_collate(items)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"the dataset's items cannot form a batch (they must be tensors of one shape, "
            f"or (tensor, label) pairs): {err}"
        ) from err


def _split_item(batch):
    """A collated batch -> (x, labels or None)."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(
        f"each data item must be a tensor x or a pair (x, label); got a batch of type {type(batch).__name__}"
    )


class _EpochItems(Dataset):
    """A Dataset indexed by ``(epoch, index)``: tells the dataset its epoch, then returns its item ``index``.

    The epoch travels with every index, so a DataLoader worker that prefetched
    across an epoch boundary, or was started before a resume, still draws each
    sample's random choices (e.g. ``ImageFolder``'s flips) for the right epoch.
    """

    epoch: int | None

    def __init__(self, dataset: Dataset):
        self.dataset, self.epoch = dataset, None
        self.has_epochs = callable(getattr(dataset, "set_epoch", None))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # BatchSource took len() of it; Dataset declares none

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        if self.has_epochs and epoch != self.epoch:
            self.dataset.set_epoch(epoch)  # type: ignore[attr-defined]  # has_epochs: it has one
            self.epoch = epoch
        return self.dataset[index]


class _RemainingBatches:
    """The batch sampler of a ``BatchSource``'s one DataLoader: its current epoch from its position on.

    Each ``iter`` reads the source's epoch and position afresh, so one
    DataLoader (and its persistent workers) serves every epoch and a resume.
    """

    def __init__(self, source: BatchSource):
        self.source = source

    def __iter__(self):
        epoch = self.source.epoch
        for batch in self.source._epoch_batches():
            yield [(epoch, i) for i in batch.tolist()]

    def __len__(self) -> int:
        return len(self.source._epoch_batches())


class BatchSource:
    """Endless, resumable batches of ``(x, y)`` from tensors, a Dataset or a DataLoader.

    For tensors and Datasets the order is a seeded permutation per epoch, and
    the position in it is part of the checkpoint, so a resumed run sees the
    same batches. Under torchrun each rank takes its share of every global batch.
    A user's DataLoader is iterated as it is (restarted when exhausted) and its
    order is its own.

    A Dataset is read through one DataLoader for the whole run, whose workers
    persist across epochs. A Dataset with a ``set_epoch(epoch)`` method (like
    ``ImageFolder``) is told the epoch of every item it serves, in the worker
    that serves it, so its random choices do not depend on the workers.
    """

    x: torch.Tensor | None
    y: torch.Tensor | None
    dataset: Dataset | None
    loader: DataLoader | None
    size: int | None
    _iter: Iterator | None
    _loader: DataLoader | None

    def __init__(
        self,
        data,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        rank: int = 0,
        world: int = 1,
        pin_memory: bool = False,
    ):
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.x = self.y = self.dataset = self.loader = None
        if isinstance(data, DataLoader):
            self.loader, self.size = data, None
        elif isinstance(data, torch.Tensor):
            self.x, self.size = _check_tensor_data(data), len(data)
        elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(a, torch.Tensor) for a in data):
            self.x, self.y = _check_tensor_data(data[0]), data[1]
            if self.y.dtype not in LABEL_DTYPES:
                raise TypeError(f"labels y must be an integer tensor, got dtype {self.y.dtype}")
            if self.y.dim() != 1:
                raise ValueError(f"labels must be a 1-D tensor, got shape {tuple(self.y.shape)}")
            if len(self.x) != len(self.y):
                raise ValueError(f"data and labels differ in length: {len(self.x)} vs {len(self.y)}")
            self.size = len(self.x)
        elif isinstance(data, Dataset):
            self.dataset, self.size = data, len(data)  # type: ignore[arg-type]  # Dataset declares no __len__
        else:
            raise TypeError(
                f"data must be a Tensor, a (Tensor, labels) pair, a Dataset or a DataLoader; got {type(data).__name__}"
            )
        if self.size is not None and self.size < batch_size * world:
            raise ValueError(
                f"the data holds {self.size} samples, fewer than one batch "
                f"({batch_size} x {world} processes); lower batch_size"
            )
        self.epoch, self.pos, self._iter, self._loader = 0, 0, None, None

    @property
    def has_labels(self) -> bool | None:
        """Whether items carry labels (None: unknown until a DataLoader yields)."""
        if self.x is not None:
            return self.y is not None
        return None

    def state_dict(self) -> dict:
        """Where the next batch starts: the epoch and the position in its permutation."""
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``state_dict``."""
        self.epoch, self.pos, self._iter = int(state["epoch"]), int(state["pos"]), None

    def _permutation(self) -> torch.Tensor:
        assert self.size is not None  # only tensors and Datasets, which have a size, are permuted
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.size, generator=gen)

    def _epoch_batches(self) -> list[torch.Tensor]:
        """This rank's index lists for the rest of the current epoch (full global batches only)."""
        perm, step = self._permutation(), self.batch_size * self.world
        assert self.size is not None  # _permutation checked it
        # rank r takes rows r, r + world, ... of each global batch: the layout the objective's shards assume
        return [perm[p + self.rank : p + step : self.world] for p in range(self.pos, self.size - step + 1, step)]

    def _new_iter(self):
        if self.loader is not None:
            return iter(self.loader)
        if self.x is not None:
            return ((self.x[i], None if self.y is None else self.y[i]) for i in self._epoch_batches())
        if self._loader is None:
            assert self.dataset is not None  # neither a DataLoader nor tensors: a Dataset
            self._loader = DataLoader(
                _EpochItems(self.dataset),
                batch_sampler=_RemainingBatches(self),
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                collate_fn=_collate,
                persistent_workers=self.num_workers > 0,
            )
        return iter(self._loader)

    def __next__(self):
        if self._iter is None:
            self._iter = self._new_iter()
        batch = next(self._iter, None)
        if batch is None:
            if self.loader is None:
                self.epoch, self.pos = self.epoch + 1, 0
            self._iter = self._new_iter()
            batch = next(self._iter, None)
            if batch is None:
                raise ValueError("the DataLoader yields no batches")
        if self.loader is not None:
            return _split_item(batch)
        # pos counts batches handed out, not batches a DataLoader worker prefetched
        self.pos += self.batch_size * self.world
        return batch if self.x is not None else _split_item(batch)
