"""The C++ sampling engine against the eager loop on the reference ops: values, fallbacks, weight updates, errors."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn as nn
from engine_cases import ISA_PATHS, assert_matches, conditional, dit, engine_result, mlp, noise_for, reference
from helpers import TinyCustomModel

import shortcut_fast as sf
from shortcut_fast import engine
from shortcut_fast.steps import num_doublings, step_schedule

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not engine.available(), reason="the native extension with the engine is not built"),
]

MODELS = {
    "dit": lambda: dit(10),
    "dit_uncond_patch4": lambda: dit(0, patch=4, channels=1),
    "mlp": lambda: mlp(4),
    "mlp_uncond": lambda: mlp(0),
}


@pytest.mark.parametrize("isa", ISA_PATHS)
@pytest.mark.parametrize("aten_rows", [1, 10**9], ids=["aten_gemm", "own_gemm"])
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_matches_reference_on_odd_batches_with_and_without_guidance(name, aten_rows, isa, monkeypatch):
    model = MODELS[name]()
    monkeypatch.setattr(engine, "ATEN_ROWS", aten_rows)
    for batch, steps in [(1, 1), (3, 2), (7, 4)]:
        z = noise_for(model, batch, seed=batch)
        labels = torch.randint(0, model.num_classes, (batch,)) if model.num_classes else None
        guidance = [None, 1.7] if model.num_classes else [None]
        for cfg in guidance:
            with engine.use_isa(isa):
                out = engine_result(model, z, monkeypatch, steps=steps, y=labels, cfg_scale=cfg)
            assert_matches(out, reference(model, z, steps=steps, y=labels, cfg_scale=cfg), z)


def test_engine_matches_reference_at_every_count_of_equal_steps(monkeypatch):
    model = dit(10)
    z, labels = noise_for(model, 3), torch.tensor([0, 9, 10])  # 10: the null class
    for k in range(num_doublings(model.min_step) + 1):
        assert_matches(
            engine_result(model, z, monkeypatch, steps=2**k, y=labels), reference(model, z, steps=2**k, y=labels), z
        )
    # an explicit schedule of equal steps is the same call
    assert_matches(
        engine_result(model, z, monkeypatch, steps=(0.25,) * 4, y=labels), reference(model, z, steps=4, y=labels), z
    )


def test_engine_sees_an_optimizer_step_and_new_weight_tensors(monkeypatch):
    model = dit(10)
    z, labels = noise_for(model, 2), torch.tensor([1, 2])
    before = engine_result(model, z, monkeypatch, y=labels)  # the engine now holds this model's tensors
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    x1 = torch.randn(4, 2, 8, 8)
    sf.train_step(model.train(), opt, x1, torch.tensor([0, 1, 2, 3]), use_graph=False)
    model.eval()
    after = engine_result(model, z, monkeypatch, y=labels)
    expected = reference(model, z, y=labels)
    assert (after - before).abs().max() > 1e-3
    assert_matches(after, expected, z)
    model.double().float()  # new tensors everywhere
    with torch.no_grad():
        model.final_layer.linear.bias.add_(0.5)
    assert_matches(engine_result(model, z, monkeypatch, y=labels), reference(model, z, y=labels), z)


def test_calls_the_engine_does_not_cover_fall_back_with_one_notice(caplog, monkeypatch):
    model = dit(10).double()
    z, labels = noise_for(model, 2).double(), torch.tensor([1, 2])
    monkeypatch.setattr(engine, "_noticed", set())
    with caplog.at_level(logging.WARNING, logger="shortcut_fast.engine"):
        first = sf.sample(model, z, y=labels)
        sf.sample(model, z, y=labels)
    notices = [r for r in caplog.records if r.name == "shortcut_fast.engine"]
    assert len(notices) == 1 and "fp32" in notices[0].getMessage()
    with engine.mode("off"):
        torch.testing.assert_close(first, sf.sample(model, z, y=labels), rtol=0, atol=0)
    with engine.mode("on"), pytest.raises(ValueError, match="engine runs fp32 models"):
        sf.sample(model, z, y=labels)


# unequal schedules: step counts that are no power of two (large steps first) and an explicit ascending one
SCHEDULES = [3, 5, 6, step_schedule(6, order="ascending")]


@pytest.mark.parametrize("isa", ISA_PATHS)
@pytest.mark.parametrize("name", ["dit", "mlp"])
def test_engine_matches_reference_on_schedules_of_unequal_steps(name, isa, monkeypatch):
    model = MODELS[name]()
    for batch, steps in zip([1, 3, 5, 3], SCHEDULES, strict=True):
        z = noise_for(model, batch, seed=batch)
        labels = torch.randint(0, model.num_classes, (batch,), generator=torch.Generator().manual_seed(batch))
        for cfg in [None, 1.7]:
            with engine.use_isa(isa):
                out = engine_result(model, z, monkeypatch, steps=steps, y=labels, cfg_scale=cfg)
            assert_matches(out, reference(model, z, steps=steps, y=labels, cfg_scale=cfg), z)
    # the order of the steps is seen: the same sizes in the other order give another result (z, labels: batch 3)
    descending, ascending = (engine_result(model, z, monkeypatch, steps=s, y=labels) for s in (6, SCHEDULES[-1]))
    assert (descending - ascending).abs().max() > 1e-3


@pytest.mark.parametrize("isa", ISA_PATHS)
@pytest.mark.parametrize("kind", ["dit", "mlp"])
def test_engine_embeds_the_guidance_input_as_the_model_does(kind, isa, monkeypatch):
    model = conditional(kind, seed=7, guidance_input=True)
    z = noise_for(model, 3, seed=1)
    labels = torch.tensor([0, 1, model.num_classes])  # the last row unlabelled: the null class
    results = {}
    for steps in [2, 3]:
        # cfg_scale None: w = 1 with labels and without (every row the null class)
        for cfg, y in [(None, labels), (None, None), (0.0, labels), (1.0, labels), (2.5, labels)]:
            with engine.use_isa(isa):
                out = engine_result(model, z, monkeypatch, steps=steps, y=y, cfg_scale=cfg)
            assert_matches(out, reference(model, z, steps=steps, y=y, cfg_scale=cfg), z)
            results[steps, cfg, y is None] = out
    # w enters the network: guidance scales give other samples, and w = 1 is the unguided call
    assert (results[2, 0.0, False] - results[2, 2.5, False]).abs().max() > 1e-3
    torch.testing.assert_close(results[2, 1.0, False], results[2, None, False], rtol=0, atol=0)


@pytest.mark.parametrize("isa", ISA_PATHS)
@pytest.mark.parametrize("kind", ["dit", "mlp"])
def test_engine_runs_real_step_sizes_of_a_continuous_model(kind, isa, monkeypatch):
    model = conditional(kind, seed=9, step_embedding="sinusoidal")
    z = noise_for(model, 3, seed=2)
    labels = torch.tensor([0, 1, model.num_classes])
    for steps in [1, 3, (0.1, 0.6, 0.3), (0.7, 0.2, 0.1)]:
        for cfg in [None, 1.7]:
            with engine.use_isa(isa):
                out = engine_result(model, z, monkeypatch, steps=steps, y=labels, cfg_scale=cfg)
            assert_matches(out, reference(model, z, steps=steps, y=labels, cfg_scale=cfg), z)
    # each step gets its own embedding of d: the same steps in another order give another result
    first, second = (
        engine_result(model, z, monkeypatch, steps=s, y=labels) for s in ((0.1, 0.6, 0.3), (0.6, 0.1, 0.3))
    )
    assert (first - second).abs().max() > 1e-3
    with torch.no_grad():  # the step embedding is read from the module's weights at every call
        model.cond.d_mlp[2].bias.add_(0.5)  # type: ignore[index,union-attr]
    assert_matches(engine_result(model, z, monkeypatch, steps=2, y=labels), reference(model, z, steps=2, y=labels), z)


def test_the_op_refuses_steps_that_are_not_a_schedule_of_the_model():
    model = mlp(0)
    tensors, config = engine._pack(model)
    config = [*config, engine.ISAS["scalar"], engine.ATEN_ROWS]
    z = noise_for(model, 2)
    for steps, words in [([0.5, 0.25], "sum to 1"), ([0.75, 0.25], "step size"), ([2.0**-8] * 256, "step size")]:
        with pytest.raises(RuntimeError, match=words):
            torch.ops.shortcut_fast_engine.sample(tensors, config, z, None, None, steps)


def test_other_modules_keep_the_eager_loop_quietly(caplog):
    model = TinyCustomModel(dim=3, hidden=32, num_classes=4, seed=3).eval()
    z = torch.randn(2, 3)
    with caplog.at_level(logging.WARNING, logger="shortcut_fast.engine"):
        out = sf.sample(model, z, steps=2)
    assert not [r for r in caplog.records if r.name == "shortcut_fast.engine"]
    with engine.mode("off"):
        torch.testing.assert_close(out, sf.sample(model, z, steps=2), rtol=0, atol=0)
    with engine.mode("on"), pytest.raises(ValueError, match="ShortcutDiT and ShortcutMLP only"):
        sf.sample(model, z, steps=2)


def _bad_calls(model):
    z = noise_for(model, 2)
    return {
        "schedule not summing to 1": dict(noise=z, steps=(0.5, 0.25)),
        "steps too many": dict(noise=z, steps=256),
        "label out of range": dict(noise=z, y=torch.tensor([0, 11])),
        "negative label": dict(noise=z, y=torch.tensor([-1, 0])),
        "float labels": dict(noise=z, y=torch.tensor([0.0, 1.0])),
        "labels of the wrong batch": dict(noise=z, y=torch.tensor([0, 1, 2])),
        "labels not a tensor": dict(noise=z, y=[0, 1]),
        "guidance without labels": dict(noise=z, cfg_scale=2.0),
        "infinite guidance": dict(noise=z, y=torch.tensor([0, 1]), cfg_scale=float("inf")),
        "NaN noise": dict(noise=torch.full_like(z, float("nan"))),
        "noise of the wrong shape": dict(noise=torch.randn(2, 2, 4, 4)),
        "integer noise": dict(noise=torch.zeros(2, 2, 8, 8, dtype=torch.long)),
        "noise and shape": dict(noise=z, shape=(2, 2, 8, 8)),
    }


@pytest.mark.parametrize("case", list(_bad_calls(dit(10))))
def test_bad_input_raises_the_same_error_on_both_paths(case):
    model = dit(10)
    kwargs = _bad_calls(model)[case]
    errors = []
    for name in ("off", "on"):
        with engine.mode(name), pytest.raises((ValueError, TypeError)) as err:
            sf.sample(model, **kwargs)
        errors.append((type(err.value), str(err.value)))
    assert errors[0] == errors[1]


def test_switches_reject_unknown_names():
    with pytest.raises(ValueError, match="engine mode must be one of"):
        engine.set_mode("fast")
    with pytest.raises(ValueError, match="ISA must be one of"):
        engine.set_isa("sse9")
    assert engine.isa_supported("scalar") and engine.active_isa() in engine.ISAS


def test_unsupported_isa_is_refused_with_what_is_supported():
    missing = [name for name in ("avx2", "avx512") if not engine.isa_supported(name)]
    if not missing:
        pytest.skip("this CPU runs every ISA path")
    with pytest.raises(ValueError, match="supported: "):
        engine.set_isa(missing[0])


def test_plain_modules_are_not_mistaken_for_the_package_models():
    class Sub(sf.ShortcutMLP):  # a subclass may change the forward: the engine leaves it alone
        def _velocity(self, x, t, level, y, w):
            return super()._velocity(x, t, level, y, w) * 0 + 1

    model = Sub(dim=3, hidden_size=8, depth=1).eval()
    z = torch.zeros(2, 3)
    torch.testing.assert_close(sf.sample(model, z), torch.ones(2, 3))
    assert isinstance(model, nn.Module)
