"""The graph cache, the graph sampler and the fast training step.

The CPU parts run everywhere; the CUDA-graph parity tests need a GPU and are
skipped without one (the GPU check script runs them).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from unittest import mock

import pytest
import torch
from helpers import perturb_

import shortcut_fast as sf
from shortcut_fast import sampling
from shortcut_fast.graphs import WARMUP_RUNS, CapturedCall, GraphCache, weights_key
from shortcut_fast.objective import ShortcutConfig, self_consistency_targets, shortcut_loss
from shortcut_fast.train.step import TARGET_GRAPHS, graph_targets

pytestmark = pytest.mark.usefixtures("single_thread")
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ---------------------------------------------------------------- the cache (CPU)
def test_graph_cache_keeps_the_most_recently_used():
    built = []
    cache = GraphCache(max_size=2)
    for key in ["a", "b", "a", "c", "a", "b"]:
        cache.get(key, lambda key=key: built.append(key) or key.upper())
    # "b" was dropped when "c" came (least recently used), then built again
    assert built == ["a", "b", "c", "b"]
    assert len(cache) == 2
    cache.max_size = 1
    assert len(cache) == 1 and cache.get("b", lambda: "rebuilt") == "B"
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("size", [-1, 1.5, True, "2"])
def test_graph_cache_size_is_checked(size):
    with pytest.raises(ValueError, match="graph cache size"):
        GraphCache(max_size=size)
    with pytest.raises(ValueError, match="graph cache size"):
        sf.set_graph_cache_size(size)


def test_weights_key_follows_where_the_weights_live(tiny_dit):
    key = weights_key(tiny_dit)
    with torch.no_grad():
        for p in tiny_dit.parameters():
            p.add_(1.0)  # in place: a graph of the old key still reads the right memory
    assert weights_key(tiny_dit) == key
    moved = tiny_dit.to(torch.float64)  # new tensors: a graph must be captured anew
    assert weights_key(moved) != key


def test_captured_call_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA"):
        CapturedCall(lambda x: x + 1, (torch.zeros(3),))


def test_capture_is_thread_local_so_other_threads_may_allocate(monkeypatch):
    """CapturedCall captures in "thread_local" mode, so that a DataLoader's pin-memory thread allocating during the
    capture does not fail it. The CUDA calls are stood in for, so this runs on the CPU."""
    assert "capture_error_mode" in inspect.signature(torch.cuda.graph.__init__).parameters  # this torch takes it
    seen = []

    @contextlib.contextmanager
    def graph(cuda_graph, pool=None, stream=None, capture_error_mode="global"):
        seen.append((pool, capture_error_mode))
        yield

    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", mock.MagicMock)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device: mock.MagicMock())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: mock.MagicMock())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    calls = []
    call = CapturedCall(lambda x: calls.append(1) or x + 1, (torch.zeros(3),), pool="the pool")
    assert seen == [("the pool", "thread_local")]
    assert len(calls) == WARMUP_RUNS + 1  # the warm-up runs, then the captured one
    assert torch.equal(call.outputs, torch.ones(3))


def test_use_graph_needs_cuda_and_a_bool(tiny_dit):
    with pytest.raises(ValueError, match="use_graph=True needs a model on a CUDA device"):
        sf.sample(tiny_dit, shape=(2, 1, 8, 8), use_graph=True)
    with pytest.raises(TypeError, match="use_graph"):
        sf.sample(tiny_dit, shape=(2, 1, 8, 8), use_graph="yes")


def test_graph_targets_on_the_cpu_are_the_eager_targets(tiny_dit):
    gen = torch.Generator().manual_seed(0)
    xb, tb = torch.randn(5, 1, 8, 8, generator=gen), torch.tensor([0.0, 0.25, 0.5, 0.5, 0.0])
    db, yb = torch.tensor([0.25, 0.25, 0.5, 0.5, 1.0]), torch.tensor([1, 2, 3, 10, 0])
    args = (tiny_dit, xb, tb, db, yb, db == 0.25)
    kwargs = dict(null_class=10, scale=2.0, clip=4.0)
    assert torch.equal(graph_targets(*args, **kwargs), self_consistency_targets(*args, **kwargs))
    assert len(TARGET_GRAPHS) == 0  # nothing captured on the CPU


# ---------------------------------------------------------------- train_step (CPU)
def _reference_step(model, ema, x1, y, config, generator, lr, decay):
    """shortcut_loss, backward, clipping, AdamW and the EMA written out by hand."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss, _ = shortcut_loss(model, x1, y, config, target_model=ema, generator=generator)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.mul_(decay).add_(p, alpha=1 - decay)
    return loss.detach(), grads


def test_train_step_is_the_reference_step(tiny_dit):
    config = ShortcutConfig(bootstrap_fraction=0.5)
    x1, y = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 10
    model_a, model_b = tiny_dit.train(), copy.deepcopy(tiny_dit).train()
    ema_a = perturb_(copy.deepcopy(tiny_dit), seed=5)
    ema_b = copy.deepcopy(ema_a)
    opt_a = torch.optim.AdamW(model_a.parameters(), lr=1e-3)
    logs = sf.train_step(
        model_a, opt_a, x1, y, config=config, ema_model=ema_a, ema_decay=0.9, generator=torch.Generator().manual_seed(7)
    )
    loss_b, grads_b = _reference_step(model_b, ema_b, x1, y, config, torch.Generator().manual_seed(7), 1e-3, 0.9)
    torch.testing.assert_close(logs["loss"], loss_b, rtol=1e-5, atol=0)
    for p, g in zip(model_a.parameters(), grads_b, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    for a, b in zip(
        list(model_a.parameters()) + list(ema_a.parameters()),
        list(model_b.parameters()) + list(ema_b.parameters()),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_train_step_checks_its_arguments(tiny_dit):
    opt = torch.optim.AdamW(tiny_dit.parameters())
    x1 = torch.randn(4, 1, 8, 8)
    with pytest.raises(TypeError, match="optimizer"):
        sf.train_step(tiny_dit, "adam", x1)
    with pytest.raises(ValueError, match="ema_decay"):
        sf.train_step(tiny_dit, opt, x1, ema_decay=1.5)
    with pytest.raises(ValueError, match="use_graph=True needs CUDA"):
        sf.train_step(tiny_dit, opt, x1, use_graph=True)


# ---------------------------------------------------------------- CUDA graphs (GPU)
def _cuda_model(dtype=torch.float32, num_classes=10):
    model = sf.ShortcutDiT(
        input_size=16, in_channels=4, patch_size=2, hidden_size=128, depth=2, num_heads=2, num_classes=num_classes
    )
    return perturb_(model, seed=11).to("cuda", dtype).eval()


@gpu
@pytest.mark.parametrize("steps,cfg", [(1, None), (4, None), (2, 3.0)])
def test_graph_sampling_equals_eager_fp32(steps, cfg):
    sf.clear_graph_cache()
    model = _cuda_model()
    noise = torch.randn(3, 4, 16, 16, device="cuda")
    y = torch.tensor([1, 5, 9], device="cuda")
    eager = sf.sample(model, noise, steps=steps, y=y, cfg_scale=cfg, use_graph=False)
    first = sf.sample(model, noise, steps=steps, y=y, cfg_scale=cfg, use_graph=True)
    second = sf.sample(model, noise, steps=steps, y=y, cfg_scale=cfg, use_graph=True)
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert first.data_ptr() != second.data_ptr()  # fresh tensors, never the graph's buffer
    assert len(sampling.GRAPH_CACHE) == 1


@gpu
def test_graph_sampling_bf16_within_tolerance():
    model = _cuda_model(torch.bfloat16)
    noise = torch.randn(4, 4, 16, 16, device="cuda")
    eager = sf.sample(model, noise, steps=2, use_graph=False)
    graph = sf.sample(model, noise, steps=2, use_graph=True)
    assert (graph - eager).norm() <= 1e-2 * eager.norm()


@gpu
def test_graph_sampling_sees_weight_updates():
    model = _cuda_model()
    noise = torch.randn(2, 4, 16, 16, device="cuda")
    before = sf.sample(model, noise, use_graph=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    after = sf.sample(model, noise, use_graph=True)
    assert not torch.equal(before, after)
    assert torch.equal(after, sf.sample(model, noise, use_graph=False))


@gpu
def test_graph_sampling_cache_is_bounded_and_large_batches_are_chunked(monkeypatch):
    model = _cuda_model(num_classes=0)
    sf.clear_graph_cache()
    sf.set_graph_cache_size(1)
    try:
        for batch in (1, 2):
            sf.sample(model, shape=(batch, 4, 16, 16), use_graph=True)
        assert len(sampling.GRAPH_CACHE) == 1
        monkeypatch.setattr(sampling, "GRAPH_MAX_BATCH", 4)
        noise = torch.randn(10, 4, 16, 16, device="cuda")
        torch.testing.assert_close(
            sf.sample(model, noise, use_graph=True), sf.sample(model, noise, use_graph=False), rtol=1e-5, atol=1e-6
        )
    finally:
        sf.set_graph_cache_size(8)


@gpu
def test_graph_targets_equal_eager_targets_and_follow_the_ema():
    model = _cuda_model()
    gen = torch.Generator("cuda").manual_seed(0)
    xb = torch.randn(6, 4, 16, 16, device="cuda", generator=gen)
    tb = torch.tensor([0.0, 0.5, 0.25, 0.0, 0.5, 0.75], device="cuda")
    db = torch.tensor([1.0, 0.5, 0.25, 0.5, 0.25, 0.25], device="cuda")
    yb = torch.tensor([0, 1, 2, 3, 4, 10], device="cuda")
    kwargs = dict(null_class=10, scale=1.5, clip=4.0)
    for _ in range(2):
        with torch.no_grad():
            graph = graph_targets(model, xb, tb, db, yb, db == 0.25, **kwargs)
            eager = self_consistency_targets(model, xb, tb, db, yb, db == 0.25, **kwargs)
        assert torch.equal(graph, eager)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.9)  # the next replay must see the update


@gpu
def test_fast_train_step_equals_eager_step():
    model_a = _cuda_model().train()
    model_b = copy.deepcopy(model_a)
    ema_a, ema_b = copy.deepcopy(model_a), copy.deepcopy(model_a)
    x1 = torch.randn(16, 4, 16, 16, device="cuda")
    y = torch.arange(16, device="cuda") % 10
    config = ShortcutConfig(bootstrap_cfg_scale=1.5)
    grads = []
    for model, ema, use_graph in [(model_a, ema_a, True), (model_b, ema_b, False)]:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        logs = [
            sf.train_step(
                model,
                opt,
                x1,
                y,
                config=config,
                ema_model=ema,
                bf16=False,
                use_graph=use_graph,
                generator=torch.Generator("cuda").manual_seed(step),
            )
            for step in range(3)
        ]
        grads.append(([lg["loss"] for lg in logs], [p.grad for p in model.parameters()]))
    (loss_a, grad_a), (loss_b, grad_b) = grads
    torch.testing.assert_close(torch.stack(loss_a), torch.stack(loss_b), rtol=1e-5, atol=0)
    for a, b in zip(grad_a, grad_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
