"""shortcut_fast: a fast PyTorch runtime for shortcut models (one-step flow generation).

A shortcut model ``v(x_t, t, d, y)`` takes the step size ``d`` as an input and
is trained so that one large step agrees with two half steps; it then
generates in 1, 2, 4, ... or ``1/d_min`` Euler steps.
"""

from . import ops
from .checkpoint import load_model, save_model
from .finetune import from_flow_model
from .models import DIT_PRESETS, ShortcutDiT, ShortcutMLP, ShortcutModule
from .objective import ShortcutConfig, shortcut_loss
from .ops import backends
from .ops.backends import backend, get_backend, set_backend
from .sampling import clear_graph_cache, sample, set_graph_cache_size
from .steps import allowed_steps, step_sizes
from .train.step import train_step
from .train.trainer import TrainConfig, Trainer

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
    "from_flow_model",
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
