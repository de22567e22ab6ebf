"""``timestep_features`` and ``condition_sum`` (raw and public) on every backend, against the reference."""

from __future__ import annotations

import pytest
import torch
from helpers import op_close, op_grads, reference_grads

from shortcut_fast import ops
from shortcut_fast.ops import reference as SF

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("dim,max_period", [(1, 1e4), (7, 1e4), (64, 1e4), (37, 100.0)])
def test_timestep_features(op_case, dim, max_period):
    t = torch.tensor([0.0, 1 / 128, 0.37, 0.5, 0.99, 1.0]).to(device=op_case.device, dtype=op_case.dtype)
    out = op_case.ops.timestep_features(t, dim, max_period)
    assert out.dtype == torch.float32 and out.shape == (6, dim)
    # phases reach 1000 rad, where one fp32 ulp of a frequency moves cos by up to ~1e-4
    torch.testing.assert_close(out.cpu(), SF.timestep_features(t, dim, max_period).cpu(), rtol=1e-5, atol=2e-4)


def _condition_inputs(case, labelled, batch=5):
    c, d_table, y_table = (case.randn(*s, seed=i) for i, s in enumerate([(batch, 37), (8, 37), (11, 37)]))
    level = torch.tensor([0, 7, 3, 3, 1][:batch], device=case.device)
    y = torch.tensor([10, 0, 4, 9, 9][:batch], device=case.device) if labelled else None
    return c, level, d_table, y, (y_table if labelled else None)


@pytest.mark.parametrize("labelled", [True, False])
def test_condition_sum(op_case, labelled):
    c, level, d_table, y, y_table = _condition_inputs(op_case, labelled)
    out = op_case.ops.condition_sum(c, level, d_table, y, y_table)
    assert out.dtype == op_case.dtype
    expected = SF.condition_sum(c.float(), level, d_table.float(), y, None if y_table is None else y_table.float())
    op_close(out, expected, op_case.dtype)


def test_condition_sum_of_a_single_row(op_case):
    c, level, d_table, y, y_table = _condition_inputs(op_case, True, batch=1)
    op_close(
        op_case.ops.condition_sum(c, level, d_table, y, y_table),
        SF.condition_sum(c.float(), level, d_table.float(), y, y_table.float()),
        op_case.dtype,
    )


def test_autograd_through_condition_sum(op_case):
    level, y = torch.tensor([2, 0, 2], device=op_case.device), torch.tensor([1, 4, 1], device=op_case.device)
    inputs = [op_case.randn(*s, seed=i) for i, s in enumerate([(3, 37), (3, 37), (5, 37)])]
    grad_out = op_case.randn(3, 37, seed=3)
    _, expected = reference_grads(lambda c, d, t: SF.condition_sum(c, level, d, y, t), inputs, grad_out)
    actual = op_grads(lambda c, d, t: op_case.ops.condition_sum(c, level, d, y, t), inputs, grad_out)
    for got, want in zip(actual, expected, strict=True):
        op_close(got, want, op_case.dtype, grad=True)


# ---------------------------------------------------------------- the public ops
@pytest.mark.parametrize("dim", [256, 33])
def test_public_timestep_features(op_backend, dim):
    t = torch.tensor([0.0, 1 / 128, 0.5, 0.99, 1.0], device=op_backend.device)
    torch.testing.assert_close(ops.timestep_features(t, dim), SF.timestep_features(t, dim), rtol=0, atol=2e-4)


@pytest.mark.parametrize("labelled", [True, False])
def test_public_condition_sum(op_backend, labelled):
    c = op_backend.randn(6, 37, seed=0).requires_grad_()
    d_table = op_backend.randn(8, 37, seed=1).requires_grad_()
    y_table = op_backend.randn(11, 37, seed=2).requires_grad_() if labelled else None
    level = torch.tensor([0, 7, 3, 3, 1, 0], device=op_backend.device)
    y = torch.tensor([10, 0, 4, 4, 9, 1], device=op_backend.device) if labelled else None
    out, ref = ops.condition_sum(c, level, d_table, y, y_table), SF.condition_sum(c, level, d_table, y, y_table)
    op_close(out, ref, torch.float32)
    leaves = [t for t in (c, d_table, y_table) if t is not None]
    cot = op_backend.randn(6, 37, seed=5)
    for got, want in zip(torch.autograd.grad(out, leaves, cot), torch.autograd.grad(ref, leaves, cot), strict=True):
        op_close(got, want, torch.float32, grad=True)


def test_opcheck(op_backend):
    gate = op_backend.randn(2, 37, seed=6).requires_grad_()
    table = op_backend.randn(8, 37, seed=7).requires_grad_()
    level = torch.tensor([1, 7], device=op_backend.device)
    torch.library.opcheck(
        op_backend.ops.timestep_features.default, (torch.tensor([0.0, 0.5], device=op_backend.device), 33, 10000.0)
    )
    torch.library.opcheck(op_backend.ops.condition_sum.default, (gate, level, table, level, table))
