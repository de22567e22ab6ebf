"""One op's kernel against its reference on small random inputs: the self-check of ``auto`` and ``doctor``.

``cases`` builds, per op, a few small odd-sized inputs (one row or head count
that is not a power of two, a channel count off any block size) and names
which of them carry gradients. ``compare`` runs the kernel and the reference
(on inputs widened to fp32, or fp64, so that the error is the kernel's alone),
forward and, for the ops that train, backward against the same random output
gradient, and measures the error as ``contract.TOLERANCE`` states it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import contract

# The ops whose kernels have a backward: their gradients are checked too.
DIFFERENTIABLE = ("attention", "modulate_layernorm", "gated_residual", "condition_sum")


@dataclass(frozen=True)
class CheckResult:
    """What one self-check found: the largest relative error (forward, and gradients where the op trains)."""

    passed: bool
    error: float
    grad_error: float | None
    tolerance: tuple[float, float]
    message: str = ""  # the exception, when the kernel raised

    def describe(self) -> str:
        """One line: the errors against the tolerances, or what the kernel raised."""
        if self.message:
            return f"raised {self.message}"
        grads = "" if self.grad_error is None else f", gradients {self.grad_error:.1e}"
        return f"error {self.error:.1e}{grads} (tolerance {self.tolerance[0]:.0e}/{self.tolerance[1]:.0e})"


def cases(name: str, device: torch.device, dtype: torch.dtype, head_dim: int = 32) -> tuple[tuple, tuple[int, ...]]:
    """Inputs of op ``name`` for a self-check, and the positions of those that carry gradients."""
    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(device=device, dtype=dtype)

    x, y, shift, scale = rand(2, 17, 48), rand(2, 17, 48), rand(2, 48), rand(2, 48)
    d = torch.tensor([0.25, 0.5], device=device)
    if name == "attention":
        return (rand(2, 3, 33, head_dim), rand(2, 3, 33, head_dim), rand(2, 3, 33, head_dim)), (0, 1, 2)
    if name == "attention_jvp":  # the JVP rule's inputs: q, k, v, their tangents, and the forward's out and lse
        q, k, v, dq, dk, dv = (rand(2, 3, 33, head_dim) for _ in range(6))
        scores = (q.float() @ k.float().transpose(-1, -2)) * head_dim**-0.5
        out = (scores.softmax(-1) @ v.float()).to(dtype)
        return (q, k, v, dq, dk, dv, out, scores.logsumexp(-1)), ()
    if name == "modulate_layernorm":
        return (x, shift, scale), (0, 1, 2)
    if name == "gated_residual":
        return (x, shift, y), (0, 1, 2)
    if name == "timestep_features":
        return (torch.rand(5, generator=gen).to(device), 64), ()
    if name == "condition_sum":
        level, labels = torch.tensor([0, 3], device=device), torch.tensor([1, 4], device=device)
        return (rand(2, 48), level, rand(6, 48), labels, rand(5, 48)), (0, 2, 4)
    if name == "euler_step":
        return (x, y, d), ()
    if name == "bootstrap_midpoint":
        return (x, y, d, 1.0), ()
    if name == "bootstrap_target":
        return (x, y, 1.0), ()
    raise ValueError(f"no self-check inputs for op {name!r}")


def _widen(args: tuple) -> tuple:
    """Float tensors in fp32 (fp64 stays fp64), detached leaves that keep whether they carry gradients."""
    out = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            wide = a.detach().to(torch.float64 if a.dtype == torch.float64 else torch.float32)
            a = wide.requires_grad_(a.requires_grad)
        out.append(a)
    return tuple(out)


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    want = want.double()
    return float((got.double() - want).abs().max() / want.abs().max().clamp(min=1))


def _output_gradient(out: torch.Tensor) -> torch.Tensor:
    """A seeded random gradient of the output: the same for kernel and reference."""
    gen = torch.Generator().manual_seed(1)
    return torch.randn(out.shape, generator=gen).to(device=out.device, dtype=out.dtype)


def _run(fn: Callable, args: tuple, grad_at: tuple[int, ...]):
    """The output, and the gradients of ``<output, g>`` at ``grad_at`` for a fixed random ``g``."""
    with torch.enable_grad():
        out = fn(*args)
        if not grad_at:
            return out.detach(), []
        grads = torch.autograd.grad(out, [args[i] for i in grad_at], _output_gradient(out))
    return out.detach(), list(grads)


def compare(name: str, kernel: Callable, reference: Callable, device: torch.device, dtype: torch.dtype, head_dim=32):
    """Run the self-check of op ``name`` (``kernel`` and ``reference`` take the op's arguments)."""
    args, grad_at = cases(name, device, dtype, head_dim)
    if name not in DIFFERENTIABLE:
        grad_at = ()
    leaves = tuple(
        a.detach().requires_grad_(i in grad_at) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
        for i, a in enumerate(args)
    )
    tolerance = contract.TOLERANCE[dtype]
    try:
        want, want_grads = _run(reference, _widen(leaves), grad_at)
        got, got_grads = _run(kernel, leaves, grad_at)
    except Exception as err:  # a kernel that raises fails its check; the reason is shown
        return CheckResult(False, float("nan"), None, tolerance, f"{type(err).__name__}: {err}")
    error = _relative(got, want)
    grad_error = max((_relative(g, w) for g, w in zip(got_grads, want_grads, strict=True)), default=None)
    passed = error <= tolerance[0] and (grad_error is None or grad_error <= tolerance[1])
    return CheckResult(passed, error, grad_error, tolerance)
