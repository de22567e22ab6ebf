"""Test helpers importable from every test file (``from helpers import TinyCustomModel``)."""

from __future__ import annotations

import torch
import torch.nn as nn


def perturb_(model: nn.Module, seed: int = 0, scale: float = 0.02) -> nn.Module:
    """Add ``scale * randn`` (from a generator seeded with ``seed``) to every parameter, in place.

    The package's models start with zero output (adaLN-Zero); this moves them
    off that point so that every input visibly changes the output.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device))
    return model


class TinyCustomModel(nn.Module):
    """A user's own velocity network, called as ``model(x, t, d, y)``, knowing nothing of the package.

    A 2-layer MLP on vectors ``[x, t, log2(d), emb(y)]``. ``num_classes`` is the
    index of the null class (``y=None`` means every row unlabelled). It has no
    ``min_step``, so the sampler must fall back to its default (1/128).
    """

    def __init__(self, dim: int = 3, hidden: int = 32, num_classes: int = 4, emb_dim: int = 8, seed: int = 0):
        super().__init__()
        self.dim = dim
        self.num_classes = num_classes
        self.y_emb = nn.Embedding(num_classes + 1, emb_dim)
        self.fc1 = nn.Linear(dim + 2 + emb_dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))

    def forward(self, x: torch.Tensor, t, d, y: torch.Tensor | None = None) -> torch.Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(batch)
        d = torch.as_tensor(d, dtype=x.dtype, device=x.device).expand(batch)
        if y is None:
            y = torch.full((batch,), self.num_classes, dtype=torch.long, device=x.device)
        h = torch.cat([x, t[:, None], torch.log2(d)[:, None], self.y_emb(y)], dim=-1)
        return self.fc2(torch.nn.functional.silu(self.fc1(h)))
