"""shortcut_fast: a fast PyTorch runtime for shortcut models (one-step flow generation).

A shortcut model ``v(x_t, t, d, y)`` takes the step size ``d`` as an input and
is trained so that one large step agrees with two half steps; it then
generates in 1, 2, 4, ... or ``1/d_min`` Euler steps.
"""

from . import backends, ops
from .backends import backend, get_backend, set_backend
from .checkpoint import load_model, save_model
from .fast_train import train_step
from .models import DIT_PRESETS, ShortcutDiT, ShortcutMLP, ShortcutModule
from .objective import ShortcutConfig, shortcut_loss
from .sampling import clear_graph_cache, sample, set_graph_cache_size
from .steps import allowed_steps, step_sizes
from .trainer import TrainConfig, Trainer

backends.preload()

__version__ = "0.1.0"

__all__ = [
    "DIT_PRESETS",
    "ShortcutConfig",
    "ShortcutDiT",
    "ShortcutMLP",
    "ShortcutModule",
    "TrainConfig",
    "Trainer",
    "allowed_steps",
    "backend",
    "clear_graph_cache",
    "get_backend",
    "load_model",
    "ops",
    "sample",
    "save_model",
    "set_backend",
    "set_graph_cache_size",
    "shortcut_loss",
    "step_sizes",
    "train_step",
]
