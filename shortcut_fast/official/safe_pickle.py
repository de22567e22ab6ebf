"""A restricted unpickler: numpy arrays and plain containers, and inert stand-ins for everything else.

A pickle names the callables that rebuild its objects, and a plain
``pickle.load`` imports and calls them, so a file from the internet can run
any code. ``safe_load`` resolves only the numpy array, dtype and scalar
rebuilders (numpy 1 and numpy 2 names), ``OrderedDict``, latin1 bytes, and maps two
rebuilders of Flax train states onto safe equivalents: jax arrays become numpy
arrays and Flax ``FrozenDict`` becomes ``dict``. Every other name becomes a
``StandIn`` subclass that records its arguments and state: nothing from the file
is imported or run. Callers then refuse stand-ins wherever they need real data.
"""

from __future__ import annotations

import collections
import io
import pickle
from collections.abc import Iterable
from typing import Any, cast

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy 1
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

_ARRAY_REBUILDERS = {
    "_reconstruct": _multiarray._reconstruct,
    "scalar": _multiarray.scalar,
    "_frombuffer": _numeric._frombuffer,  # type: ignore[attr-defined]
}
_NUMPY_MODULES = {
    "multiarray": ("numpy.core.multiarray", "numpy._core.multiarray"),
    "numeric": ("numpy.core.numeric", "numpy._core.numeric"),
}


def _jax_array(fun, args, arr_state, aval_state):
    """What a pickled jax ``Array`` rebuilds to, as a numpy array (its device placement is dropped)."""
    if fun is not _multiarray._reconstruct:
        raise pickle.UnpicklingError(f"a jax array in this file is rebuilt by {fun!r}, not by numpy's array rebuilder")
    array = cast(np.ndarray, fun(*args))  # numpy's stub types _reconstruct as returning object
    array.__setstate__(arr_state)
    return array


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """Pickle protocols below 3 write bytes as ``_codecs.encode(text, "latin1")``; no other codec is admitted."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"only latin1 text may be encoded to bytes in this file, got {encoding!r}")
    return text.encode("latin1")


def _frozen_dict(*args, **kwargs) -> dict:
    """A Flax ``FrozenDict`` rebuilds from a plain dict; keep the plain dict."""
    return dict(*args, **kwargs)


ALLOWED = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): _latin1_bytes,
    ("jax._src.array", "_reconstruct_array"): _jax_array,
    ("flax.core.frozen_dict", "FrozenDict"): _frozen_dict,
    **{
        (module, name): fn
        for name, fn in _ARRAY_REBUILDERS.items()
        for module in _NUMPY_MODULES["numeric" if name == "_frombuffer" else "multiarray"]
    },
}


class StandIn:
    """An object of a class (or the result of a function) the file names but that is never imported.

    ``stands_for`` is ``"module.name"`` as written in the file; ``args``,
    ``kwargs`` and ``state`` are what the file passed to it.
    """

    stands_for = "?"
    args: tuple
    kwargs: dict
    state: object

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state = args, kwargs, None
        return obj

    def __init__(self, *args, **kwargs):
        pass  # __new__ recorded the arguments; nothing else happens

    def __setstate__(self, state) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.stands_for}>"


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits ``ALLOWED`` and stands in for every other name."""

    def find_class(self, module: str, name: str):
        """The safe object for ``module.name``, else a fresh ``StandIn`` subclass; imports nothing."""
        found = ALLOWED.get((module, name))
        if found is not None:
            return found
        return type("StandIn", (StandIn,), {"stands_for": f"{module}.{name}"})

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed in this file")


def safe_loads(data: bytes):
    """Unpickle ``data`` with ``RestrictedUnpickler``; a truncated or corrupt stream raises ``ValueError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        MemoryError,
        OverflowError,
    ) as err:
        raise ValueError(f"not a readable pickle (truncated or corrupt?): {type(err).__name__}: {err}") from None


def find_stand_ins(tree, path: str = "") -> list[tuple[str, StandIn]]:
    """Every ``StandIn`` in a tree of dicts, lists and tuples, with its path (``a/b/0``)."""
    if isinstance(tree, StandIn):
        return [(path or "/", tree)]
    items: Iterable[tuple[Any, Any]]
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    return [hit for key, value in items for hit in find_stand_ins(value, f"{path}/{key}" if path else str(key))]
