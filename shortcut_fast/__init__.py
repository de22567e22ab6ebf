"""shortcut_fast: a fast PyTorch runtime for shortcut models (one-step flow generation).

A shortcut model ``v(x_t, t, d, y)`` takes the step size ``d`` as an input and
is trained so that one large step agrees with two half steps; it then
generates in 1, 2, 4, ... or ``1/d_min`` Euler steps.
"""

from .checkpoint import load_model, save_model
from .models import DIT_PRESETS, ShortcutDiT, ShortcutMLP, ShortcutModule
from .objective import ShortcutConfig, shortcut_loss
from .sampling import sample
from .steps import allowed_steps, step_sizes
from .trainer import TrainConfig, Trainer

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
    "load_model",
    "sample",
    "save_model",
    "shortcut_loss",
    "step_sizes",
]
