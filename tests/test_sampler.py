"""``sf.Sampler``: the result of ``sample()``, its errors, and the model's updates seen whichever way they come."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
from engine_cases import ISA_PATHS, assert_matches, conditional, dit, mlp, noise_for, reference

import shortcut_fast as sf
from shortcut_fast import engine, sampling

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not engine.available(), reason="the native extension with the engine is not built"),
]


def _engine_only(patch: pytest.MonkeyPatch) -> None:
    """Make every other path fail, so that a sampler that silently left the engine cannot pass."""

    def refuse(*args, **kwargs):
        raise AssertionError("the sampler left the engine")

    patch.setattr(sampling, "_euler_loop", refuse)
    patch.setattr(engine, "run", refuse)


MODELS = {
    "dit": lambda: dit(10),
    "dit_uncond_patch4": lambda: dit(0, patch=4, channels=1),
    "mlp": lambda: mlp(4),
    "continuous_dit": lambda: conditional("dit", seed=9, step_embedding="sinusoidal"),
    "guidance_input_mlp": lambda: conditional("mlp", seed=7, guidance_input=True),
}


@pytest.mark.parametrize("isa", ISA_PATHS)
@pytest.mark.parametrize("name", list(MODELS))
def test_the_sampler_matches_the_eager_loop_on_odd_batches_schedules_and_guidance(name, isa, monkeypatch):
    model = MODELS[name]()
    schedules = [1, 3, (0.1, 0.6, 0.3)] if model.continuous_steps else [1, 3, (0.5, 0.125, 0.125, 0.25)]
    guidance = [None, 1.7] if model.num_classes else [None]
    samplers = {(s, g): sf.Sampler(model, steps=s, cfg_scale=g) for s in schedules for g in guidance}
    calls = []
    with monkeypatch.context() as patch, engine.use_isa(isa):
        _engine_only(patch)
        for batch in (1, 3, 5):
            z = noise_for(model, batch, seed=batch)
            labels = torch.randint(0, model.num_classes, (batch,)) if model.num_classes else None
            calls += [(z, labels, key, sampler(z, labels)) for key, sampler in samplers.items()]
    for z, labels, (steps, cfg), out in calls:
        assert_matches(out, reference(model, z, steps=steps, y=labels, cfg_scale=cfg), z)
        with engine.use_isa(isa):  # bit for bit what sample() gives through the engine
            torch.testing.assert_close(out, sf.sample(model, z, steps=steps, y=labels, cfg_scale=cfg), rtol=0, atol=0)
    assert torch.equal(calls[-1][0], noise_for(model, 5, seed=5))  # the noise is not written


def _updates():
    """Changes to a DiT after its sampler was built, each in another way that torch allows."""

    def optimizer_step(model, fused):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=fused)
        sf.train_step(model.train(), opt, torch.randn(4, 2, 8, 8), torch.tensor([0, 1, 2, 3]), use_graph=False)
        model.eval()

    def load_state_dict(model, assign):
        other = dit(10)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(0.05 * torch.randn_like(p))
        model.load_state_dict(other.state_dict(), assign=assign)

    def set_data(model):
        model.final_layer.linear.weight.data = model.final_layer.linear.weight.data + 0.1

    def replace_parameter_entry(model):  # past Module's API: no registration hook fires
        layer = model.blocks[0].mlp[0]
        layer._parameters["bias"] = torch.nn.Parameter(layer.bias.detach() + 0.3)

    def replace_block(model):
        model.blocks[1] = copy.deepcopy(model.blocks[0])

    def delete_block(model):
        del model.blocks[1]

    def to_other_dtype_and_back(model):
        model.double().float()  # new storage under the same parameters, then a change only the new one holds
        with torch.no_grad():
            model.final_layer.linear.bias.add_(0.5)

    def forward_hook(model):  # the engine would skip it: the sampler must leave the engine
        model.blocks[0].register_forward_hook(lambda module, args, out: out * 0.5)

    return {
        "fused AdamW": lambda m: optimizer_step(m, fused=True),
        "foreach AdamW": lambda m: optimizer_step(m, fused=False),
        "load_state_dict": lambda m: load_state_dict(m, assign=False),
        "load_state_dict(assign=True)": lambda m: load_state_dict(m, assign=True),
        "p.data = ...": set_data,
        "_parameters entry replaced": replace_parameter_entry,
        "block replaced": replace_block,
        "block deleted": delete_block,
        ".double().float()": to_other_dtype_and_back,
        "forward hook": forward_hook,
    }


@pytest.mark.parametrize("update", list(_updates()))
def test_the_next_call_after_an_update_is_the_reference_of_the_new_weights(update):
    model = dit(10)
    sampler = sf.Sampler(model, steps=2, cfg_scale=1.5)
    z, labels = noise_for(model, 3), torch.tensor([0, 4, 10])
    before = sampler(z, labels)
    assert_matches(before, reference(model, z, steps=2, y=labels, cfg_scale=1.5), z)
    _updates()[update](model)
    after = sampler(z, labels)
    assert (after - before).abs().max() > 1e-3
    assert_matches(after, reference(model, z, steps=2, y=labels, cfg_scale=1.5), z)


def test_the_trainer_s_steps_are_seen_by_a_sampler_of_its_models():
    model = dit(10)
    data = (torch.randn(32, 2, 8, 8), torch.randint(0, 10, (32,)))
    config = sf.TrainConfig(batch_size=8, lr=1e-2, progress=False)
    trainer = sf.Trainer(model, data, config)
    samplers = {"model": sf.Sampler(trainer.model), "ema": sf.Sampler(trainer.ema_model)}
    z, labels = noise_for(model, 2), torch.tensor([3, 7])
    before = {name: s(z, labels) for name, s in samplers.items()}
    trainer.fit(3)
    for name, sampler in samplers.items():
        target = trainer.model if name == "model" else trainer.ema_model
        out = sampler(z, labels)
        assert (out - before[name]).abs().max() > 1e-5
        assert_matches(out, reference(target.eval(), z, y=labels), z)


def _bad_calls(z):
    y = torch.tensor([1, 2])
    return {
        "label out of range": dict(noise=z, y=torch.tensor([0, 11])),
        "negative label": dict(noise=z, y=torch.tensor([-1, 0])),
        "float labels": dict(noise=z, y=torch.tensor([0.0, 1.0])),
        "labels of the wrong batch": dict(noise=z, y=torch.tensor([0, 1, 2])),
        "labels not a tensor": dict(noise=z, y=[0, 1]),
        "NaN noise": dict(noise=torch.full_like(z, float("nan")), y=y),
        "inf noise": dict(noise=torch.where(torch.arange(z.numel()).view_as(z) == 5, float("inf"), z), y=y),
        "noise of the wrong shape": dict(noise=torch.randn(2, 2, 4, 4), y=y),
        "noise without a batch": dict(noise=torch.randn(2, 8, 8), y=y),
        "empty batch": dict(noise=torch.randn(0, 2, 8, 8), y=y[:0]),
        "integer noise": dict(noise=torch.zeros(2, 2, 8, 8, dtype=torch.long), y=y),
        "noise not a tensor": dict(noise=z.numpy(), y=y),
        "noise on another device": dict(noise=z.to("meta"), y=y),
    }


@pytest.mark.parametrize("cfg_scale", [None, 2.0])
@pytest.mark.parametrize("case", list(_bad_calls(torch.zeros(2, 2, 8, 8))))
def test_bad_input_raises_what_sample_raises(case, cfg_scale):
    model = dit(10)
    sampler = sf.Sampler(model, steps=2, cfg_scale=cfg_scale)
    kwargs = _bad_calls(noise_for(model, 2))[case]
    errors = []
    for call in (lambda: sf.sample(model, steps=2, cfg_scale=cfg_scale, **kwargs), lambda: sampler(**kwargs)):
        with pytest.raises((ValueError, TypeError)) as err:
            call()
        errors.append((type(err.value), str(err.value)))
    assert errors[0] == errors[1]
    z, y = noise_for(model, 2), torch.tensor([1, 2])  # a failed call leaves the sampler serving
    assert_matches(sampler(z, y), reference(model, z, steps=2, y=y, cfg_scale=cfg_scale), z)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(steps=3.5), TypeError, "steps must be an int"),
        (dict(steps=0), ValueError, "steps"),
        (dict(steps=(0.5, 0.25)), ValueError, "sum to 1"),
        (dict(cfg_scale="2"), TypeError, "cfg_scale must be a number"),
        (dict(cfg_scale=float("nan")), ValueError, "finite"),
    ],
)
def test_bad_settings_are_refused_when_the_sampler_is_built(kwargs, error, words):
    with pytest.raises(error, match=words):
        sf.Sampler(dit(10), **kwargs)


def test_guidance_of_an_unconditional_model_and_a_non_module_are_refused():
    with pytest.raises(ValueError, match="class-conditional"):
        sf.Sampler(dit(0, patch=4, channels=1), cfg_scale=1.5)
    with pytest.raises(TypeError, match="nn.Module"):
        sf.Sampler(lambda x: x)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cfg_scale needs labels"):
        sf.Sampler(dit(10), cfg_scale=1.5)(noise_for(dit(10), 2))


def test_calls_the_engine_does_not_serve_run_through_sample():
    model = dit(10)
    sampler = sf.Sampler(model, steps=2)
    z, labels = noise_for(model, 2), torch.tensor([1, 2])
    wide = z.double()  # fp64 noise: the eager loop, as sample() runs it
    torch.testing.assert_close(sampler(wide, labels), sf.sample(model, wide, steps=2, y=labels), rtol=0, atol=0)
    with engine.mode("off"):
        torch.testing.assert_close(sampler(z, labels), sf.sample(model, z, steps=2, y=labels), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(sampler(z, labels), sf.sample(model, z, steps=2, y=labels), rtol=0, atol=0)
    model.double()  # a model the engine cannot run: every call through sample()
    torch.testing.assert_close(sampler(wide, labels), sf.sample(model, wide, steps=2, y=labels), rtol=0, atol=0)


def test_threads_calling_one_sampler_each_get_what_a_lone_call_gives():
    model = dit(10)
    sampler = sf.Sampler(model, steps=4, cfg_scale=1.5)
    inputs = [(noise_for(model, 1 + i % 3, seed=i), torch.randint(0, 10, (1 + i % 3,))) for i in range(8)]
    alone = [sampler(z, y) for z, y in inputs]
    results: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(inputs))}
    barrier = threading.Barrier(4)

    def work(worker: int) -> None:
        barrier.wait()
        for _ in range(5):
            for i in range(worker, len(inputs), 4):
                results[i].append(sampler(*inputs[i]))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in results.items():
        assert len(outs) == 5
        for out in outs:
            torch.testing.assert_close(out, alone[i], rtol=0, atol=0)
