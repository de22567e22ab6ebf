"""Shared fixtures: tiny, perturbed models that run in milliseconds on a CPU."""

from __future__ import annotations

import os
import shutil
import sys

# Without a GPU, Triton runs its kernels on CPU tensors through its interpreter; set before anything imports triton.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

from helpers import TinyCustomModel, perturb_  # noqa: E402

from shortcut_fast import ShortcutDiT, ShortcutMLP  # noqa: E402

TINY_DIT = dict(input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's tests on one intra-op thread, then restore the setting.

    Tiny models gain nothing from a second thread, and when other processes
    share the two cores an OpenMP pool that spins waiting for its threads
    makes each forward pass ~100x slower. Opt in with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_dit() -> ShortcutDiT:
    """A class-conditional DiT (10 classes, null class 10) on 1x8x8 images, weights off the zero init."""
    return perturb_(ShortcutDiT(**TINY_DIT, num_classes=10), seed=0).eval()


@pytest.fixture
def tiny_uncond_dit() -> ShortcutDiT:
    """An unconditional DiT (num_classes=0) on 1x8x8 images, weights off the zero init."""
    return perturb_(ShortcutDiT(**TINY_DIT, num_classes=0), seed=1).eval()


@pytest.fixture
def tiny_mlp() -> ShortcutMLP:
    """An unconditional MLP on 3-vectors, weights off the zero init."""
    return perturb_(ShortcutMLP(dim=3, hidden_size=32, depth=2), seed=2).eval()


@pytest.fixture
def tiny_custom() -> TinyCustomModel:
    """A user's module (4 classes, null class 4) that knows nothing of the package."""
    return TinyCustomModel(dim=3, hidden=32, num_classes=4, seed=3).eval()


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh seeded CPU generator for test inputs."""
    return torch.Generator().manual_seed(1234)
