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
                params.append(pytest.param((name, dtype), id=f"{name}-{str(dtype).removeprefix('torch.')}",
                                           marks=pytest.mark.skipif(bool(missing), reason=missing)))
    return params


def op_randn(*shape: int, device: str, dtype: torch.dtype = torch.float32, seed: int = 0,
             scale: float = 1.0) -> torch.Tensor:
    """Seeded ``scale * randn`` drawn on the CPU in fp32, then moved to ``device`` and ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen)).to(device=device, dtype=dtype)


def op_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, grad: bool = False) -> None:
    """actual (any dtype) equals expected (the fp32 reference) within the tolerance of ``dtype``."""
    rtol = TOLERANCES[dtype][grad]
    expected = expected.detach().to("cpu", torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(actual.detach().to("cpu", expected.dtype), expected, rtol=rtol,
                               atol=rtol * max(1.0, expected.abs().max().item()))


def reference_grads(fn, inputs, grad_out: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """``fn``'s output on fp32 copies of ``inputs`` and its gradients with respect to each, for ``grad_out``."""
    leaves = [t.detach().float().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out, torch.autograd.grad(out, leaves, grad_out.float())


def op_grads(fn, inputs, grad_out: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The gradients of ``fn`` with respect to each of ``inputs`` (in their dtype) for ``grad_out``."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, grad_out)
