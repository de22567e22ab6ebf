"""Intrinsic guidance: the guidance scale ``w`` as an input of the network (iSM Sec. 3.1).

Classifier-free guidance at sampling time, ``v_null + w (v_y - v_null)``,
applied at every step of a shortcut model, compounds: a large step already
integrates many small guided ones when it was trained with guided targets, and
is guided once more. Intrinsic guidance instead trains ``v(x_t, t, d, y, w)``
with ``w`` drawn per row, so one forward gives any guidance at sampling time:

* flow rows (``d = d_min``) with a label regress on the guided flow target::

      target = (x1 - x0) + (w - 1) * (v_T(x_t, t, d_min, y, 1) - v_T(x_t, t, d_min, null, 1))

  where ``v_T`` is the target model without gradient at ``w = 1`` (the unguided
  slice of the network). Given ``x_t``, the mean of ``x1 - x0`` is the
  conditional velocity ``v_y``; for a target model that has learnt ``v_y`` and
  ``v_null`` the mean target is ``v_null + w (v_y - v_null)``: the two-forward
  CFG velocity, which is the limit this target is built to match;
* rows with the null label (class dropout) take ``w = 1`` and the plain target;
* self-consistency rows draw ``w`` too and build their target from two half
  steps of the target model at that same ``w``: a large step learns to jump
  along the guided small-step flow, so guidance enters once, at ``d_min``.

``w`` is drawn uniformly in ``[low, high]`` (the paper samples a range of
scales; the uniform law and the range are this package's choice, set by
``ShortcutConfig.intrinsic_guidance``). ``GuidanceEmbedder`` adds an embedding of
``w`` to the conditioning vector; its last layer starts at zero, so a new model
starts as if ``w`` were absent.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .. import ops

GUIDANCE_FREQ_DIM = 256  # sinusoidal features of w (the timestep features, which resolve w on a 0.001 grid)


class GuidanceEmbedder(nn.Module):
    """``MLP(sinusoid(w))``: guidance scales (B,) -> (B, hidden), zero at initialisation."""

    def __init__(self, hidden_size: int, freq_dim: int = GUIDANCE_FREQ_DIM):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.mlp(ops.timestep_features(w, self.freq_dim).to(self.mlp[0].weight.dtype))  # type: ignore[arg-type]

    def initialize(self) -> None:
        """A small first layer and a zero last layer: the embedding starts at zero for every ``w``."""
        # the stubs type a Sequential's items as Module, whose attributes are Tensor | Module: these are nn.Linear
        nn.init.normal_(self.mlp[0].weight, std=0.02)  # type: ignore[arg-type]
        nn.init.zeros_(self.mlp[0].bias)  # type: ignore[arg-type]
        nn.init.zeros_(self.mlp[2].weight)  # type: ignore[arg-type]
        nn.init.zeros_(self.mlp[2].bias)  # type: ignore[arg-type]


def guidance_parameters(hidden_size: int, freq_dim: int = GUIDANCE_FREQ_DIM) -> int:
    """Weights of ``GuidanceEmbedder`` (for the models' parameter count before allocation)."""
    return freq_dim * hidden_size + hidden_size + hidden_size * hidden_size + hidden_size


def draw_guidance_scales(
    n: int, low: float, high: float, generator: torch.Generator | None = None, device=None
) -> torch.Tensor:
    """``n`` guidance scales drawn uniformly in ``[low, high]`` (float32)."""
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def guided_flow_target(
    flow_target: torch.Tensor, v_cond: torch.Tensor, v_null: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """``flow_target + (w - 1) (v_cond - v_null)`` with one ``w`` per row (B,): the intrinsic flow target."""
    scale = (w - 1).to(flow_target.dtype).view(-1, *([1] * (flow_target.dim() - 1)))
    return flow_target + scale * (v_cond - v_null).to(flow_target.dtype)
