"""The fused ops of the models, the objective and the sampler, and the backends that run them.

Each op is declared once in ``contract.py``; its plain PyTorch formula is in
``reference.py``, its fake and autograd formulas in ``formulas.py``. The
backends implement it in their own places: the Triton kernels of
``shortcut_fast.kernels`` (registered by ``triton.py``) and the C++ kernels of
``csrc/``. ``dispatch.py`` holds the functions below, which run each op on the
backend chosen with ``shortcut_fast.set_backend`` (``backends.py``).
"""

from . import backends
from .dispatch import (
    attention,
    bootstrap_midpoint,
    bootstrap_target,
    condition_sum,
    euler_step,
    gated_residual,
    modulate_layernorm,
    timestep_features,
)

__all__ = [
    "attention",
    "backends",
    "bootstrap_midpoint",
    "bootstrap_target",
    "condition_sum",
    "euler_step",
    "gated_residual",
    "modulate_layernorm",
    "timestep_features",
]
