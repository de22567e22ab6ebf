"""Shared fixtures: tiny, perturbed models that run in milliseconds on a CPU."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

# Without a GPU, Triton runs its kernels on CPU tensors through its interpreter; set before anything imports triton.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Which kernel `auto` keeps must not depend on timing in a pass/fail test: the suite runs the fixed rule, and
# tests/test_autotune.py turns the measured choice on with a fake timer. Decisions go to a folder of this run
# (also for the subprocesses the tests start), never to the user's cache.
os.environ["SHORTCUT_FAST_AUTO"] = "fixed"
os.environ["SHORTCUT_FAST_CACHE"] = tempfile.mkdtemp(prefix="shortcut_fast_cache_")

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


class OpCase:
    """One backend of the raw ops under test: ``ops`` (its torch.ops namespace), ``device``, ``dtype``."""

    def __init__(self, name: str, dtype: torch.dtype):
        from helpers import OP_BACKENDS

        self.name, self.dtype = name, dtype
        namespace, self.device, self.dispatch, self.contract = OP_BACKENDS[name]
        self.ops = getattr(torch.ops, namespace)

    def randn(self, *shape: int, seed: int = 0, scale: float = 1.0, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Seeded normal samples on this case's device, in its dtype unless told."""
        from helpers import op_randn

        return op_randn(*shape, device=self.device, dtype=dtype or self.dtype, seed=seed, scale=scale)


def _op_case(request) -> OpCase:
    import shortcut_fast as sf

    case = OpCase(*request.param)
    with sf.backend(case.dispatch):
        yield case


def pytest_generate_tests(metafunc):
    """Parametrise ``op_case`` over every op backend in fp32 and bf16, ``op_backend`` in fp32 only
    (``tests/test_op_*.py``); backends that cannot run here skip with the reason."""
    from helpers import op_params

    if "op_case" in metafunc.fixturenames:
        metafunc.parametrize("op_case", op_params(), indirect=True)
    if "op_backend" in metafunc.fixturenames:
        metafunc.parametrize("op_backend", op_params((torch.float32,)), indirect=True)


op_case = pytest.fixture(_op_case)
op_backend = pytest.fixture(_op_case)
