"""The models, noise and comparisons of the engine's tests and the Sampler's: the C++ loop against the eager one."""

from __future__ import annotations

import pytest
import torch
from helpers import perturb_

import shortcut_fast as sf
from shortcut_fast import engine, sampling

ISA_PATHS = [
    "scalar",
    pytest.param("avx2", marks=pytest.mark.skipif(not engine.isa_supported("avx2"), reason="this CPU has no AVX2+FMA")),
    pytest.param(
        "avx512",
        marks=pytest.mark.skipif(
            not engine.isa_supported("avx512"), reason="this CPU has no AVX-512F: its kernels are built, not run"
        ),
    ),
]


def dit(num_classes: int, patch: int = 2, channels: int = 2) -> sf.ShortcutDiT:
    model = sf.ShortcutDiT(
        input_size=8,
        in_channels=channels,
        patch_size=patch,
        hidden_size=48,
        depth=2,
        num_heads=3,
        num_classes=num_classes,
    )
    return perturb_(model, seed=num_classes + patch, scale=0.1).eval()


def mlp(num_classes: int) -> sf.ShortcutMLP:
    return perturb_(sf.ShortcutMLP(dim=3, hidden_size=40, depth=2, num_classes=num_classes), seed=5, scale=0.1).eval()


def noise_for(model, batch: int, seed: int = 0) -> torch.Tensor:
    shape = (
        (model.dim,) if isinstance(model, sf.ShortcutMLP) else (model.in_channels, model.input_size, model.input_size)
    )
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed))


def reference(model, z, **kwargs) -> torch.Tensor:
    with engine.mode("off"), sf.backend("reference"):
        return sf.sample(model, z, **kwargs)


def engine_result(model, z, monkeypatch, **kwargs) -> torch.Tensor:
    """The engine's result, with the eager loop made to fail so that a silent fallback cannot pass."""

    def no_eager(*args, **kw):
        raise AssertionError("the eager loop ran")

    with monkeypatch.context() as patch, engine.mode("on"):
        patch.setattr(sampling, "_euler_loop", no_eager)
        return sf.sample(model, z, **kwargs)


def assert_matches(out, ref, z) -> None:
    """1e-5 of the largest change the sampler made (the output minus its noise)."""
    scale = (ref - z).abs().max().item()
    assert scale > 1e-2  # the models move the noise: the comparison is of real velocities
    torch.testing.assert_close(out - z, ref - z, rtol=0, atol=1e-5 * scale)


def conditional(kind: str, seed: int, **option) -> sf.ShortcutDiT | sf.ShortcutMLP:
    """A class-conditional model built with ``option`` (a guidance input, continuous step sizes), off its zero
    init."""
    if kind == "dit":
        model: sf.ShortcutDiT | sf.ShortcutMLP = sf.ShortcutDiT(
            input_size=8, in_channels=2, patch_size=2, hidden_size=48, depth=2, num_heads=3, num_classes=10, **option
        )
    else:
        model = sf.ShortcutMLP(dim=3, hidden_size=40, depth=2, num_classes=4, **option)
    return perturb_(model, seed=seed, scale=0.1).eval()
