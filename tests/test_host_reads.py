"""No tensor value is read back to the host in the hot paths (each read is a device sync on a GPU).

A ``TorchDispatchMode`` sees every aten call and counts those whose result
needs a tensor's value on the host. Each read is filed by where it came from:
the input validation in ``shortcut_fast/checks.py`` (allowed once per call,
where user input enters), torch's CPU optimizer (it reads its step counters;
the fused CUDA optimizer does not), the optimal-transport pairing of
``ShortcutConfig(ot_pairing=True)`` (its solver runs on the host: one copy off
the device per step, allowed only where that option is on), or anywhere else,
which must never happen. A copy from a device to the host counts as a read. Each test runs on the
reference, the native kernels, and ``auto`` deciding per call ("auto-measured", a fake timer): there the
first call of a shape self-checks and times (host reads by design) and every later call reads nothing.
"""

from __future__ import annotations

import copy
import os
import sys

import pytest
import torch
from helpers import micro_dit, perturb_
from torch.utils._python_dispatch import TorchDispatchMode

import shortcut_fast as sf
from shortcut_fast import checks
from shortcut_fast.ops import autotune, backends
from shortcut_fast.ops.decision_cache import DecisionCache

pytestmark = pytest.mark.usefixtures("single_thread")

aten = torch.ops.aten
# ops whose result depends on a tensor's value on the host (or whose output shape does)
HOST_READS = {
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.allclose.default,
    aten._assert_async.default,
    aten._assert_async.msg,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}
VALIDATION = os.path.join("shortcut_fast", "checks.py")
OPTIMIZER = os.path.join("torch", "optim", "")
PAIRING = os.path.join("shortcut_fast", "techniques", "pairing.py")


def _reads_host(func, args, kwargs) -> bool:
    if func in HOST_READS:
        return True
    # a copy off the device (the CPU runs of these tests make none; on a GPU the OT pairing's copy is one)
    return (
        func is aten._to_copy.default
        and str((kwargs or {}).get("device", "")) == "cpu"
        and args[0].device.type != "cpu"
    )


class HostReads(TorchDispatchMode):
    """Counts host reads by origin: ``validation``, ``optimizer``, ``pairing`` (only with ``pairing=True``) or
    ``other`` (with where ``other`` came from)."""

    def __init__(self, pairing: bool = False):
        super().__init__()
        self.counts = {"validation": 0, "optimizer": 0, "other": 0}
        if pairing:
            self.counts["pairing"] = 0
        self.where: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _reads_host(func, args, kwargs):
            files = []
            frame = sys._getframe(1)
            while frame is not None:
                files.append(frame.f_code.co_filename)
                frame = frame.f_back
            if any(f.endswith(VALIDATION) for f in files):
                self.counts["validation"] += 1
            elif any(OPTIMIZER in f for f in files):
                self.counts["optimizer"] += 1
            elif "pairing" in self.counts and any(f.endswith(PAIRING) for f in files):
                self.counts["pairing"] += 1
            else:
                self.counts["other"] += 1
                caller = next((f"{f}" for f in files if "shortcut_fast" in f), files[0] if files else "?")
                self.where.append(f"{func} from {caller}")
        return func(*args, **(kwargs or {}))


_NATIVE = pytest.mark.skipif(not backends.native_available(), reason="needs the C++ extension")
# "auto-measured": auto deciding per call (a fake timer that finds the kernels faster); the first call of each
# shape decides, so each test warms up before it counts
BACKENDS = ["reference", pytest.param("native", marks=_NATIVE), pytest.param("auto-measured", marks=_NATIVE)]


def _fake_timer(label, run, device):
    run()
    return 1.0 if label == "kernel" else 2.0


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, monkeypatch):
    if request.param != "auto-measured":
        with sf.backend(request.param):
            yield request.param
        return
    monkeypatch.setattr(autotune, "timer", _fake_timer)
    autotune.set_mode("measured")
    autotune.reset(DecisionCache(folder=tmp_path))
    try:
        with sf.backend("auto"):
            yield request.param
    finally:
        autotune.set_mode("fixed")
        autotune.reset()


def _dit(num_classes):
    return micro_dit(num_classes)


def _mlp(num_classes):
    return perturb_(sf.ShortcutMLP(dim=3, hidden_size=16, depth=1, num_classes=num_classes, min_step=1 / 8), seed=1)


MODELS = {"dit": (_dit, (6, 2, 4, 4)), "mlp": (_mlp, (6, 3))}


def test_the_counter_sees_a_read():
    with HostReads() as reads:
        bool(torch.ones(2).sum() > 0)
        float(torch.ones(()))
    assert reads.counts["other"] == 2


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [0, 5])
@pytest.mark.parametrize("guided", [False, True])
def test_shortcut_loss_and_backward_read_nothing_after_validation(backend, kind, num_classes, guided):
    if guided and not num_classes:
        pytest.skip("guided targets need a class-conditional model")
    build, shape = MODELS[kind]
    model = build(num_classes).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    config = sf.ShortcutConfig(min_step=1 / 8, bootstrap_fraction=0.5, bootstrap_cfg_scale=2.0 if guided else None)
    x1 = torch.randn(shape)
    y = torch.tensor([0, 1, 2, 3, 4, 5]) if num_classes else None
    if backend == "auto-measured":
        sf.shortcut_loss(model, x1, y, config, target_model=ema, generator=torch.Generator().manual_seed(0))[
            0
        ].backward()
    gen = torch.Generator().manual_seed(0)
    with HostReads() as reads:
        loss, _ = sf.shortcut_loss(model, x1, y, config, target_model=ema, generator=gen)
        loss.backward()
    assert torch.isfinite(loss)
    assert reads.counts["other"] == 0, reads.where
    assert reads.counts["validation"] <= 1  # x1 finite and labels in range: one read for both


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("cfg_scale", [None, 1.5])
def test_a_second_sample_call_reads_nothing_after_validation(backend, kind, steps, cfg_scale):
    build, shape = MODELS[kind]
    model = build(5).eval()
    y = torch.tensor([0, 1, 2, 3, 4, 5])
    gen = torch.Generator().manual_seed(0)
    sf.sample(model, shape=shape, steps=steps, y=y, cfg_scale=cfg_scale, generator=gen)
    with HostReads() as reads:
        out = sf.sample(model, shape=shape, steps=steps, y=y, cfg_scale=cfg_scale, generator=gen)
    assert torch.isfinite(out).all()
    assert reads.counts["other"] == 0, reads.where
    assert reads.counts["validation"] <= 1  # the labels' range
    with HostReads() as reads:
        sf.sample(model, shape=shape, steps=steps, generator=gen)
    assert reads.counts == {"validation": 0, "optimizer": 0, "other": 0}, reads.where


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("num_classes", [0, 5])
def test_a_trainer_step_reads_nothing_but_the_optimizer_and_the_labels(backend, kind, num_classes):
    build, shape = MODELS[kind]
    data = torch.randn(32, *shape[1:])
    if num_classes:
        data = (data, torch.arange(32) % num_classes)
    config = sf.TrainConfig(batch_size=8, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 8))
    trainer = sf.Trainer(build(num_classes), data, config)
    trainer.train_step(*next(trainer.data))  # the optimizer creates its state on the first step
    before = trainer.step
    with HostReads() as reads:
        logs = trainer.train_step(*next(trainer.data))
    assert trainer.step == before + 1 and float(logs["skipped"]) == 0.0
    assert reads.counts["other"] == 0, reads.where
    assert reads.counts["validation"] <= (1 if num_classes else 0)


def test_a_direct_forward_validates_with_one_read_and_trusted_callers_with_none(backend):
    model = _dit(5).eval()
    x, t, d, y = torch.randn(3, 2, 4, 4), torch.tensor([0.0, 0.5, 1.0]), torch.tensor([1.0, 0.5, 0.125]), None
    if backend == "auto-measured":
        model(x, t, d, y)  # decides the kernels of these shapes
    with HostReads() as reads:
        model(x, t, d, torch.tensor([0, 4, 5]))
    assert reads.counts == {"validation": 1, "optimizer": 0, "other": 0}, reads.where
    with HostReads() as reads, checks.trusted_inputs():
        model(x, t, d, y)
    assert reads.counts == {"validation": 0, "optimizer": 0, "other": 0}, reads.where
    with pytest.raises(ValueError, match="^t must lie in"):
        model.check_inputs(x, torch.tensor([0.0, 1.5, 1.0]), d)
    with pytest.raises(ValueError, match="^d must hold step sizes"):
        model.check_inputs(x, t, torch.tensor([1.0, 0.3, 1.0]))
    with pytest.raises(ValueError, match="labels must lie in"):
        model.check_inputs(x, t, d, torch.tensor([0, 6, 1]))


def _guided_dit():
    return micro_dit(5, seed=2, guidance_input=True)


@pytest.mark.parametrize("ot_pairing", [False, True])
def test_a_trainer_step_with_every_technique_reads_only_the_pairing_copy(backend, ot_pairing):
    shortcut = sf.ShortcutConfig(min_step=1 / 8, intrinsic_guidance=(1.0, 3.0), wavelet_levels=1, ot_pairing=ot_pairing)
    config = sf.TrainConfig(batch_size=8, progress=False, target_ema_decay=0.9, shortcut=shortcut)
    trainer = sf.Trainer(_guided_dit(), (torch.randn(32, 2, 4, 4), torch.arange(32) % 5), config)
    trainer.train_step(*next(trainer.data))
    before = trainer.step
    with HostReads(pairing=ot_pairing) as reads:
        logs = trainer.train_step(*next(trainer.data))
    assert trainer.step == before + 1 and float(logs["skipped"]) == 0.0
    assert reads.counts["other"] == 0, reads.where
    assert reads.counts["validation"] <= 1
    # the OT solve copies the batch to the host: at most that one copy (none here, where the batch is there already)
    assert reads.counts.get("pairing", 0) <= 1


@pytest.mark.parametrize("steps", [3, (0.25, 0.5, 0.25)])
@pytest.mark.parametrize("cfg_scale", [None, 2.5])
def test_a_second_sample_call_of_a_schedule_or_a_guidance_input_reads_nothing(backend, steps, cfg_scale):
    for model in (_dit(5).eval(), _guided_dit().eval()):
        y, gen = torch.tensor([0, 1, 2, 3, 4, 5]), torch.Generator().manual_seed(0)
        sf.sample(model, shape=(6, 2, 4, 4), steps=steps, y=y, cfg_scale=cfg_scale, generator=gen)
        with HostReads() as reads:
            out = sf.sample(model, shape=(6, 2, 4, 4), steps=steps, y=y, cfg_scale=cfg_scale, generator=gen)
        assert torch.isfinite(out).all()
        assert reads.counts["other"] == 0, reads.where
        assert reads.counts["validation"] <= 1  # the labels' range
