"""shortcut_fast: a fast PyTorch runtime for shortcut models (one-step flow generation).

A shortcut model ``v(x_t, t, d, y)`` takes the step size ``d`` as an input and
is trained so that one large step agrees with two half steps; it then
generates in 1, 2, 4, ... or ``1/d_min`` Euler steps.

``shortcut_fast.metrics`` is ``shortcut_fast.eval.fid`` (``sf.metrics.fid(...)``),
imported on first use so that ``import shortcut_fast`` stays light.
"""

import importlib

from . import ops
from .checkpoint import load_model, save_model
from .export import export_onnx
from .finetune import from_flow_model
from .models import DIT_PRESETS, ShortcutDiT, ShortcutMLP, ShortcutModule
from .objective import ShortcutConfig, shortcut_loss
from .ops import autotune, backends
from .ops.backends import backend, get_backend, set_backend
from .pipeline import ShortcutPipeline
from .sampler import Sampler
from .sampling import clear_graph_cache, sample, set_graph_cache_size
from .steps import allowed_steps, step_sizes
from .train.step import train_step
from .train.trainer import TrainConfig, Trainer
from .warmup import tune

backends.preload()
autotune.preload()

__version__ = "0.1.0"


def __getattr__(name: str):
    """``shortcut_fast.metrics``: the FID module, imported on first access."""
    if name == "metrics":
        module = importlib.import_module(".eval.fid", __name__)
        globals()["metrics"] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DIT_PRESETS",
    "ShortcutConfig",
    "ShortcutDiT",
    "ShortcutMLP",
    "ShortcutModule",
    "Sampler",
    "ShortcutPipeline",
    "TrainConfig",
    "Trainer",
    "allowed_steps",
    "backend",
    "clear_graph_cache",
    "export_onnx",
    "from_flow_model",
    "get_backend",
    "load_model",
    "metrics",
    "ops",
    "sample",
    "save_model",
    "set_backend",
    "set_graph_cache_size",
    "shortcut_loss",
    "step_sizes",
    "train_step",
    "tune",
]
