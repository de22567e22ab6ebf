"""Which implementation runs the fused ops of ``shortcut_fast.ops``.

``reference``: the plain PyTorch functions of ``functional.py``.
``native``: the C++ extension ``shortcut_fast._C`` (CPU kernels; CUDA kernels where it was built with CUDA).
``triton``: the Triton kernels of ``shortcut_fast.kernels`` (CUDA; CPU tensors only under ``TRITON_INTERPRET=1``).
``auto`` (the default): Triton on a GPU, native on the CPU, the reference where neither is there; and then,
per op and shape, only where that kernel passes its self-check and measures faster than the reference
(``autotune.py``; ``SHORTCUT_FAST_AUTO=fixed`` keeps the rule alone).

The choice is process-wide (``set_backend``, or the environment variable
``SHORTCUT_FAST_BACKEND`` read at import, e.g. for every process of a torchrun
job) or scoped (``with backend(name):``).
What is available is settled when first asked and kept in module globals, so
that ``torch.compile`` traces the dispatch as plain attribute reads.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator

import torch

BACKENDS = ("auto", "reference", "native", "triton")
NATIVE_NAMESPACE = "shortcut_fast"
TRITON_NAMESPACE = "shortcut_fast_triton"

_current = "auto"
_native_loaded: bool | None = None  # None: not tried yet
_native_cuda = False
_triton_loaded: bool | None = None
_triton_error = ""
_native_error = ""


def _load_native() -> bool:
    """Import the C++ extension (which registers its ops) and its fake/autograd formulas, once."""
    global _native_loaded, _native_cuda, _native_error
    if _native_loaded is None:
        try:
            ext = importlib.import_module("shortcut_fast._C")
        except ImportError as err:
            _native_loaded, _native_error = False, str(err)
        else:
            from . import formulas

            formulas.register_fakes(NATIVE_NAMESPACE)  # the autograd of the native ops is in C++
            _native_loaded, _native_cuda = True, bool(ext.cuda_built())
    return _native_loaded


def _load_triton() -> bool:
    """Import the Triton kernels (which define their ops) and their fake/autograd formulas, once."""
    global _triton_loaded, _triton_error
    if _triton_loaded is None:
        try:
            importlib.import_module("shortcut_fast.ops.triton")
        except ImportError as err:
            _triton_loaded, _triton_error = False, str(err)
        else:
            from . import formulas

            formulas.register_fakes(TRITON_NAMESPACE)
            formulas.register_autograd(TRITON_NAMESPACE)
            _triton_loaded = True
    return _triton_loaded


def native_available() -> bool:
    """Whether the C++ extension is built and loads."""
    return _load_native()


def triton_available() -> bool:
    """Whether Triton and the package's Triton kernels import."""
    return _load_triton()


def triton_interpreted() -> bool:
    """Whether Triton runs kernels through its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def set_backend(name: str) -> None:
    """Choose the backend of the fused ops for the whole process: one of ``BACKENDS``.

    ``native`` needs the C++ extension and ``triton`` needs Triton; asking for
    one that is not there raises ``ValueError`` saying how to get it.
    """
    global _current
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {name!r}")
    if name == "native" and not _load_native():
        raise ValueError(
            "the native backend needs the C++ extension shortcut_fast._C, which did not load "
            f"({_native_error}); build it with: pip install --no-build-isolation -e ."
        )
    if name == "triton" and not _load_triton():
        raise ValueError(f"the triton backend needs Triton, which did not import ({_triton_error}); pip install triton")
    _current = name


def get_backend() -> str:
    """The backend chosen by ``set_backend`` (``"auto"`` unless changed)."""
    return _current


@contextlib.contextmanager
def backend(name: str) -> Iterator[None]:
    """Run a block with another backend: ``with shortcut_fast.backend("reference"): ...``."""
    previous = _current
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _auto(device_type: str) -> str:
    if device_type == "cuda" and _load_triton():
        return TRITON_NAMESPACE
    if _load_native() and (device_type == "cpu" or (device_type == "cuda" and _native_cuda)):
        return NATIVE_NAMESPACE
    return ""


def namespace(device: torch.device) -> str:
    """The op namespace that runs tensors on ``device`` now; ``""`` means the reference.

    An explicit backend that cannot run on ``device`` raises ``ValueError``.
    """
    kind = device.type
    if _current == "reference":
        return ""
    if _current == "auto":
        return _auto(kind)
    if _current == "native":
        if kind == "cpu" or (kind == "cuda" and _native_cuda):
            return NATIVE_NAMESPACE
        raise ValueError(
            f"the native backend has no kernels for {kind} tensors (CUDA kernels built: "
            f"{_native_cuda}); use set_backend('auto') or 'reference'"
        )
    if kind == "cuda" or (kind == "cpu" and triton_interpreted()):
        return TRITON_NAMESPACE
    raise ValueError(
        f"the triton backend runs {kind} tensors only on a GPU, or on the CPU under "
        "TRITON_INTERPRET=1; use set_backend('native') or 'reference'"
    )


def preload() -> None:
    """Take ``SHORTCUT_FAST_BACKEND`` and load what ``auto`` will use before anything is traced.

    Warns once when the C++ extension does not load, so that the CPU is left the reference ops.
    """
    chosen = os.environ.get("SHORTCUT_FAST_BACKEND")
    if chosen:
        try:
            set_backend(chosen)
        except ValueError as err:
            raise ValueError(f"SHORTCUT_FAST_BACKEND={chosen!r}: {err}") from None
    if torch.cuda.is_available():
        _load_triton()
    if not _load_native():
        warnings.warn(
            "shortcut_fast: the C++ extension did not load, so the CPU runs the reference "
            f"PyTorch ops ({_native_error}); build it with: pip install --no-build-isolation -e .",
            RuntimeWarning,
            stacklevel=3,
        )
