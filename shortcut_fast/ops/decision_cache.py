"""The on-disk cache of ``auto``'s decisions: one JSON file per installation fingerprint.

The fingerprint holds what can change a kernel's speed or numbers without
changing the device: the versions of Python, torch, Triton and this package,
and the identity (size and modification time) of the built C++ extension. Its
hash names the file, so a new version or a rebuild finds no file and decides
anew. Inside, entries are keyed by device (CPU model and thread count, or the
card), op, backend, dtypes and shape bucket.

The folder is ``$SHORTCUT_FAST_CACHE``, else ``$XDG_CACHE_HOME/shortcut_fast``,
else ``~/.cache/shortcut_fast``. Writes hold a file lock, merge with what is
on disk and replace the file atomically, so two processes deciding at once
both keep their entries and a reader never sees half a file. A file that does
not parse, has another format or another fingerprint is ignored (and replaced
at the next write); a folder that cannot be written costs the cache, never the
run.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import tempfile
import warnings
from pathlib import Path

import torch
from filelock import FileLock, Timeout

FORMAT = "shortcut_fast.autotune/1"
LOCK_TIMEOUT_S = 10.0


def cache_dir() -> Path:
    """The folder of the decision cache (``SHORTCUT_FAST_CACHE``, else the user's cache folder)."""
    chosen = os.environ.get("SHORTCUT_FAST_CACHE")
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "shortcut_fast"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "none"


def _native_build() -> str:
    """Size and mtime of the built extension: a rebuild (new kernels, same version) is a new fingerprint."""
    spec = importlib.util.find_spec("shortcut_fast._C")
    if spec is None or spec.origin is None:
        return "none"
    stat = os.stat(spec.origin)
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def fingerprint() -> dict[str, str]:
    """What the cached decisions hold for: the versions and the build of this installation."""
    return {
        "format": FORMAT,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "shortcut_fast": _version("shortcut_fast"),
        "native build": _native_build(),
    }


class DecisionCache:
    """The decisions of one fingerprint on disk: ``load()`` once, ``store(entries)`` after deciding."""

    def __init__(self, folder: Path | None = None, stamp: dict[str, str] | None = None):
        self.stamp = fingerprint() if stamp is None else stamp
        digest = hashlib.sha256(json.dumps(self.stamp, sort_keys=True).encode()).hexdigest()[:16]
        self.path = (cache_dir() if folder is None else folder) / f"autotune-{digest}.json"
        self._warned = False

    def load(self) -> dict[str, dict]:
        """The stored entries (``{}`` for a missing, damaged or foreign file)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("fingerprint") != self.stamp:
            return {}
        entries = data.get("entries")
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items() if isinstance(k, str) and isinstance(v, dict)}

    def store(self, entries: dict[str, dict]) -> None:
        """Merge ``entries`` into the file under a lock and replace it atomically; warn once if it cannot."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S):
                merged = {**self.load(), **entries}
                text = json.dumps({"fingerprint": self.stamp, "entries": merged}, indent=1, sort_keys=True)
                fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(text)
                    os.replace(tmp, self.path)
                except BaseException:
                    os.unlink(tmp)
                    raise
        except (OSError, Timeout) as err:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"shortcut_fast: cannot write the kernel decision cache {self.path} ({err}); decisions are "
                    "kept for this process only. Set SHORTCUT_FAST_CACHE to a writable folder.",
                    RuntimeWarning,
                    stacklevel=2,
                )
