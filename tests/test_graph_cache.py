"""The key of the captured graphs and the batch sizes they are captured for (CPU: no graph runs here).

A graph reads the weights where they lived at capture, so ``weights_key`` must change exactly when
some weight or buffer of the model moves to other memory, and stay when weights change in place.
"""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
import torch.nn as nn

from shortcut_fast import sampling
from shortcut_fast.graphs import weights_key

pytestmark = pytest.mark.usefixtures("single_thread")


def _addresses(model: nn.Module) -> set[int]:
    """Where the model's tensors live, found by torch's own walk: the reference the key is checked against."""
    return {t.data_ptr() for t in (*model.parameters(), *model.buffers())}


def _key_addresses(key: tuple) -> set[int]:
    return set(key[1:]) - {None}


def test_the_key_holds_exactly_the_models_addresses(tiny_dit):
    key = weights_key(tiny_dit)
    assert key[0] == id(tiny_dit)
    assert _key_addresses(key) == _addresses(tiny_dit)


@pytest.mark.parametrize("fused", [False, True])
def test_an_optimizer_step_keeps_the_key(tiny_dit, fused):
    key = weights_key(tiny_dit)
    before = [p.detach().clone() for p in tiny_dit.parameters()]
    optimizer = torch.optim.AdamW(tiny_dit.parameters(), lr=1e-2, fused=fused)
    x = torch.randn(2, 1, 8, 8)
    tiny_dit(x, torch.zeros(2), torch.ones(2), torch.tensor([1, 2])).square().mean().backward()
    optimizer.step()
    assert any(not torch.equal(a, p) for a, p in zip(before, tiny_dit.parameters(), strict=True))  # it did update
    assert weights_key(tiny_dit) == key


def test_load_state_dict_in_place_keeps_the_key_and_assign_changes_it(tiny_dit):
    key = weights_key(tiny_dit)
    state = {name: t + 1 for name, t in tiny_dit.state_dict().items()}
    tiny_dit.load_state_dict(state)
    assert weights_key(tiny_dit) == key
    tiny_dit.load_state_dict(state, assign=True)
    new_key = weights_key(tiny_dit)
    assert new_key != key and _key_addresses(new_key) == _addresses(tiny_dit)


def _set_data(model):
    p = next(model.parameters())
    p.data = p.data.clone()


def _swap(model):
    p = next(model.parameters())
    torch.utils.swap_tensors(p, nn.Parameter(p.detach().clone()))


def _overwrite_in_table(model):
    name, p = next(iter(model.final_layer.linear._parameters.items()))
    model.final_layer.linear._parameters[name] = nn.Parameter(p.detach().clone())


def _new_parameter(model):
    model.blocks[0].extra = nn.Parameter(torch.zeros(3))


def _delete_block(model):
    del model.blocks[0]


def _replace_submodule(model):
    model.final_layer = copy.deepcopy(model.final_layer)


def _new_buffer(model):
    model.blocks[0].register_buffer("extra", torch.zeros(3))


@pytest.mark.parametrize(
    "change",
    [
        _set_data,
        _swap,
        _overwrite_in_table,
        _new_parameter,
        _delete_block,
        _replace_submodule,
        _new_buffer,
        lambda m: m.to(torch.float64),
    ],
)
def test_tensors_in_new_memory_change_the_key(tiny_dit, change):
    key = weights_key(tiny_dit)
    change(tiny_dit)
    new_key = weights_key(tiny_dit)
    assert new_key != key
    assert _key_addresses(new_key) == _addresses(tiny_dit)


def test_the_key_keeps_no_model_alive(tiny_dit):
    model = copy.deepcopy(tiny_dit)
    weights_key(model)
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


# ---------------------------------------------------------------- the batch sizes of the graphs
def test_graph_batches_are_few_powers_of_two_that_hold_the_rows():
    sizes = {rows: sampling.graph_batch(rows) for rows in range(1, sampling.GRAPH_MAX_BATCH + 1)}
    for rows, size in sizes.items():
        assert rows <= size < 2 * rows and size & (size - 1) == 0
    assert len(set(sizes.values())) == sampling.GRAPH_MAX_BATCH.bit_length()
    for rows in (0, sampling.GRAPH_MAX_BATCH + 1, 2.0):
        with pytest.raises(ValueError, match="GRAPH_MAX_BATCH"):
            sampling.graph_batch(rows)


@pytest.mark.parametrize("batch", [3, 5, 300])
def test_padded_graph_batches_give_the_unpadded_samples(tiny_dit, monkeypatch, batch):
    """The graph runner's chunking and padding, with the eager loop standing in for the graph replay."""
    seen = []

    def eager_graph(model, x, y, scale, steps, null_class, net_dtype, autocast):
        seen.append(x.shape[0])
        return sampling._euler_loop(model, x, y, scale, steps, null_class, net_dtype, autocast=autocast)

    monkeypatch.setattr(sampling, "_graph_run", eager_graph)
    noise = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(batch))
    y = torch.arange(batch) % 10
    args = (tiny_dit, noise, y, torch.tensor(1.5), (0.5, 0.5), 10, torch.float32, None)  # two steps of 1/2
    got = sampling._graph_run_chunked(*args)
    assert seen == [
        sampling.graph_batch(min(r, sampling.GRAPH_MAX_BATCH)) for r in range(batch, 0, -sampling.GRAPH_MAX_BATCH)
    ]
    torch.testing.assert_close(got, sampling._euler_loop(*args), rtol=1e-5, atol=1e-5)


class _EagerCall:
    """Stands in for CapturedCall on the CPU: records what was captured and runs it eagerly."""

    built: list = []

    def __init__(self, fn, inputs, pool=None):
        self.fn = fn
        _EagerCall.built.append(fn)

    def replay(self, *inputs):
        return self.fn(*inputs)


def test_graph_key_holds_the_autocast_dtype(tiny_dit, monkeypatch):
    """A graph captured under one precision is never replayed for another."""
    monkeypatch.setattr(sampling, "CapturedCall", _EagerCall)
    monkeypatch.setattr(sampling.GRAPH_CACHE, "shared_pool", lambda: None)
    monkeypatch.setattr(_EagerCall, "built", [])
    sampling.clear_graph_cache()
    noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 2])
    runs = {}
    for autocast in (None, torch.bfloat16, torch.float16, torch.bfloat16):
        runs[autocast] = sampling._graph_run(tiny_dit, noise, y, None, (0.5, 0.5), 10, torch.float32, autocast)
    try:
        assert [fn.keywords["autocast"] for fn in _EagerCall.built] == [None, torch.bfloat16, torch.float16]
        assert len(sampling.GRAPH_CACHE) == 3
    finally:
        sampling.clear_graph_cache()
    want = sampling._euler_loop(tiny_dit, noise, y, None, (0.5, 0.5), 10, torch.float32, autocast=torch.float16)
    torch.testing.assert_close(runs[torch.float16], want, rtol=0, atol=0)
