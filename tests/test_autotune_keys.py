"""The autotune keys of the Triton kernels: size buckets, so that a kernel is timed once per bucket of sizes.

The launchers run here with the kernels replaced by recorders (no GPU and no interpreter needed): what is
checked is the key each launch hands the autotuner.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")

from shortcut_fast.kernels import attention, elementwise  # noqa: E402
from shortcut_fast.kernels.launch import size_bucket  # noqa: E402


class Recorder:
    """Stands in for an autotuned kernel: ``kernel[grid](*args, **kwargs)`` records the arguments by name."""

    def __init__(self, kernel):
        self.arg_names, self.keys, self.calls = kernel.fn.arg_names, kernel.keys, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append({**dict(zip(self.arg_names, args, strict=False)), **kwargs})

        return launch

    def key(self, call: dict) -> tuple:
        return tuple(call[name] for name in self.keys)


def test_size_bucket_is_the_next_power_of_two_capped():
    assert [size_bucket(n, 64) for n in (0, 1, 2, 3, 5, 16, 17, 64, 65, 10**9)] == [1, 1, 2, 4, 8, 16, 32, 64, 64, 64]


def _record(monkeypatch, module, name):
    recorder = Recorder(getattr(module, name))
    monkeypatch.setattr(module, name, recorder)
    return recorder


def test_elementwise_kernels_are_keyed_on_a_bucket_of_numel(monkeypatch):
    names = ("_gated_residual_kernel", "_per_sample_step_kernel", "_bootstrap_target_kernel")
    recorders = {name: _record(monkeypatch, elementwise, name) for name in names}
    for recorder in recorders.values():
        assert recorder.keys == ["numel_bucket"]
    for rows in (1000, 1001, 1024, 1025, 3_000_000, 9_000_000):
        x = torch.empty(rows, 1)
        elementwise.gated_residual(x[:, None], torch.empty(rows, 1), x[:, None])
        elementwise.per_sample_step(x, x, torch.empty(rows), 1.0, None)
        elementwise.bootstrap_target(x, x, None)
    for name, recorder in recorders.items():
        keys = [recorder.key(call) for call in recorder.calls]
        assert [call["numel"] for call in recorder.calls] == [1000, 1001, 1024, 1025, 3_000_000, 9_000_000], name
        # four sizes near 1024 share two timings, and sizes past the cap share one
        assert keys == [(1024,), (1024,), (1024,), (2048,), (1 << 22,), (1 << 22,)], name


def test_attention_kernels_are_keyed_on_a_bucket_of_the_batch(monkeypatch):
    names = ("_attention_fwd_kernel", "_attention_bwd_dkdv_kernel", "_attention_bwd_dq_kernel")
    recorders = {name: _record(monkeypatch, attention, name) for name in names}
    monkeypatch.setattr(attention, "_attention_bwd_delta_kernel", _Launch())  # not autotuned
    for batch in (1, 3, 4, 200):
        q = torch.empty(batch, 2, 77, 32)
        out, lse = attention.attention_forward(q, q, q)
        attention.attention_backward(q, q, q, q, out, lse)
    for name, recorder in recorders.items():
        assert recorder.keys == ["seq_len", "HEAD_DIM", "batch_bucket"], name
        assert [recorder.key(call) for call in recorder.calls] == [(77, 32, b) for b in (1, 4, 4, 64)], name


class _Launch:
    """A kernel launch that does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None
