"""``auto``'s decisions: the self-check, the measured choice (with a fake timer), the disk cache, the trainer.

The suite runs under ``SHORTCUT_FAST_AUTO=fixed`` (conftest); the ``measured`` fixture turns the measured
choice on with a timer that says which side is faster, so every test here is independent of the clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from helpers import double_gradient, micro_dit, run_or_show_hang

import shortcut_fast as sf
from shortcut_fast import doctor
from shortcut_fast.ops import autotune, backends, dispatch
from shortcut_fast.ops import jvp as jvp_rules
from shortcut_fast.ops import reference as SF
from shortcut_fast.ops.decision_cache import DecisionCache, fingerprint
from shortcut_fast.train import trainer as trainer_module

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not backends.native_available(), reason="needs the C++ extension"),
]


class FakeTimer:
    """Runs each call (so the timed code is exercised) and reports ``seconds[label]`` as its time."""

    def __init__(self, kernel: float = 1.0, reference: float = 2.0):
        self.seconds = {"kernel": kernel, "reference": reference}
        self.calls = 0

    def __call__(self, label, run, device):
        self.calls += 1
        run()
        return self.seconds[label]


@pytest.fixture
def measured(tmp_path, monkeypatch):
    """``auto`` in measured mode with a fake timer (kernel faster) and a decision cache in ``tmp_path``."""
    timer = FakeTimer()
    monkeypatch.setattr(autotune, "timer", timer)
    autotune.set_mode("measured")
    autotune.reset(DecisionCache(folder=tmp_path))
    with sf.backend("auto"):
        yield timer
    autotune.set_mode("fixed")
    autotune.reset()


def _choices(op: str) -> set[str]:
    return {row["choice"] for row in autotune.table() if row["op"] == op}


def _layernorm_inputs(batch: int = 3):
    g = torch.Generator().manual_seed(0)
    return (
        torch.randn(batch, 7, 40, generator=g),
        torch.randn(batch, 40, generator=g),
        torch.randn(batch, 40, generator=g),
    )


class CountingKernel:
    """Wraps a ``_fused_<op>`` function of ``dispatch`` and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_a_faster_kernel_is_kept_and_a_slower_one_is_not(measured, monkeypatch):
    spy = CountingKernel(dispatch._fused_modulate_layernorm)
    monkeypatch.setattr(dispatch, "_fused_modulate_layernorm", spy)
    x, shift, scale = _layernorm_inputs()
    sf.ops.modulate_layernorm(x, shift, scale)
    assert _choices("modulate_layernorm") == {"kernel"}
    decided = spy.calls
    sf.ops.modulate_layernorm(x, shift, scale)
    assert spy.calls == decided + 1  # the kernel runs, and nothing is timed again

    measured.seconds = {"kernel": 3.0, "reference": 1.0}
    autotune.reset(DecisionCache(folder=Path(autotune._cache.path.parent) / "slow"))
    spy.calls = 0
    sf.ops.modulate_layernorm(x, shift, scale)
    assert _choices("modulate_layernorm") == {"reference"}
    decided = spy.calls
    out = sf.ops.modulate_layernorm(x, shift, scale)
    assert spy.calls == decided  # the reference ran
    torch.testing.assert_close(out, SF.modulate_layernorm(x, shift, scale), rtol=0, atol=0)


def test_gradients_are_decided_apart_from_the_forward(measured):
    x, shift, scale = (a.requires_grad_() for a in _layernorm_inputs())
    sf.ops.modulate_layernorm(x, shift, scale).sum().backward()
    with torch.no_grad():
        sf.ops.modulate_layernorm(x, shift, scale)
    grads = {row["grad"] for row in autotune.table() if row["op"] == "modulate_layernorm"}
    assert grads == {True, False}


@pytest.mark.parametrize("kernel_faster", [True, False])
def test_the_fused_attention_jvp_is_kept_only_where_it_measures_faster(measured, monkeypatch, kernel_faster):
    g = torch.Generator().manual_seed(0)
    q, k, v, dq, dk, dv = (torch.randn(2, 3, 17, 32, generator=g) for _ in range(6))
    sf.ops.attention(q, k, v)  # the forward decided (kernel faster), so the jvp below runs _Attention's rule
    assert _choices("attention") == {"kernel"}
    measured.seconds = {"kernel": 1.0, "reference": 2.0} if kernel_faster else {"kernel": 3.0, "reference": 1.0}
    spy = CountingKernel(jvp_rules._AttentionTangent.apply)
    monkeypatch.setattr(jvp_rules._AttentionTangent, "apply", spy)
    with fwAD.dual_level():
        duals = [fwAD.make_dual(p, t) for p, t in ((q, dq), (k, dk), (v, dv))]
        tangent = fwAD.unpack_dual(sf.ops.attention(*duals)).tangent
    assert _choices("attention_jvp") == {"kernel" if kernel_faster else "reference"}
    assert spy.calls == int(kernel_faster)
    want = torch.func.jvp(SF.attention, (q, k, v), (dq, dk, dv))[1]
    torch.testing.assert_close(tangent, want, rtol=1e-5, atol=1e-5)


def test_a_wrong_kernel_falls_back_with_one_warning_and_reference_results(measured, monkeypatch):
    def wrong(ops, x, shift, scale, eps=1e-6):
        return dispatch.__dict__["_right"](ops, x, shift, scale, eps) + 0.01

    monkeypatch.setitem(dispatch.__dict__, "_right", dispatch._fused_modulate_layernorm)
    monkeypatch.setattr(dispatch, "_fused_modulate_layernorm", wrong)
    x, shift, scale = _layernorm_inputs()
    with pytest.warns(RuntimeWarning, match="modulate_layernorm on cpu .*disagrees.*SHORTCUT_FAST_AUTO=fixed") as seen:
        out = sf.ops.modulate_layernorm(x, shift, scale)
        with torch.no_grad():
            sf.ops.modulate_layernorm(x[:1], shift[:1], scale[:1])  # another bucket: no second warning
    assert len([w for w in seen if "disagrees" in str(w.message)]) == 1
    torch.testing.assert_close(out, SF.modulate_layernorm(x, shift, scale), rtol=0, atol=0)
    assert _choices("modulate_layernorm") == {"reference"}
    failed = [r for r in autotune.checks().values() if not r.passed]
    assert len(failed) == 1 and failed[0].error > 1e-3
    assert measured.calls == 0  # a kernel that failed its check is not timed
    report = doctor.decision_report()
    assert "modulate_layernorm" in report and "FAIL" in report


def test_a_kernel_that_raises_fails_its_check(measured, monkeypatch):
    def broken(ops, *args):
        raise RuntimeError("no kernel for you")

    monkeypatch.setattr(dispatch, "_fused_gated_residual", broken)
    x, gate, y = torch.randn(2, 5, 24), torch.randn(2, 24), torch.randn(2, 5, 24)
    with pytest.warns(RuntimeWarning, match="raised RuntimeError: no kernel for you"):
        out = sf.ops.gated_residual(x, gate, y)
    torch.testing.assert_close(out, SF.gated_residual(x, gate, y), rtol=0, atol=0)


def test_the_self_check_covers_gradients(measured, monkeypatch):
    """A kernel right forward and wrong backward fails (the native attention's gradient scaled)."""

    def wrong_backward(ops, q, k, v):
        return double_gradient(dispatch.__dict__["_right"](ops, q, k, v))

    monkeypatch.setitem(dispatch.__dict__, "_right", dispatch._fused_attention)
    monkeypatch.setattr(dispatch, "_fused_attention", wrong_backward)
    q = torch.randn(1, 2, 9, 16, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="attention"):
        sf.ops.attention(q, q, q)
    (result,) = autotune.checks().values()
    assert not result.passed and result.error < 1e-5 and result.grad_error > 0.1


def test_decisions_are_reused_from_disk_and_time_nothing(measured, tmp_path):
    x, shift, scale = _layernorm_inputs()
    sf.ops.modulate_layernorm(x, shift, scale)
    timed = measured.calls
    assert timed > 0
    autotune.reset(DecisionCache(folder=tmp_path))  # a new process: memory empty, the same file
    sf.ops.modulate_layernorm(x, shift, scale)
    assert measured.calls == timed
    assert {r["source"] for r in autotune.table()} == {"cache"}


def test_a_damaged_or_foreign_cache_file_is_ignored_and_rewritten(measured, tmp_path):
    cache = DecisionCache(folder=tmp_path)
    for text in ("{not json", json.dumps({"fingerprint": {"torch": "0.0"}, "entries": {"a": {"fused": True}}})):
        cache.path.write_text(text)
        autotune.reset(DecisionCache(folder=tmp_path))
        before = measured.calls
        x, shift, scale = _layernorm_inputs()
        sf.ops.modulate_layernorm(x, shift, scale)
        assert measured.calls > before  # decided anew
        data = json.loads(cache.path.read_text())
        assert data["fingerprint"] == fingerprint() and any("modulate_layernorm" in k for k in data["entries"])


def test_a_version_change_is_another_file():
    stamp = fingerprint()
    assert DecisionCache(stamp=stamp).path == DecisionCache().path
    for field in ("torch", "triton", "shortcut_fast", "native build"):
        assert DecisionCache(stamp={**stamp, field: "other"}).path != DecisionCache().path


def test_another_thread_count_is_decided_again(measured):
    x, shift, scale = _layernorm_inputs()
    sf.ops.modulate_layernorm(x, shift, scale)
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before == 1 else 1)
    try:
        sf.ops.modulate_layernorm(x, shift, scale)
    finally:
        torch.set_num_threads(before)
    assert len({r["device"] for r in autotune.table()}) == 2


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from shortcut_fast.ops.decision_cache import DecisionCache

    folder, name = Path(sys.argv[1]), sys.argv[2]
    cache = DecisionCache(folder=folder)
    for i in range(40):
        cache.store({f"{name}-{i}": {"fused": True}})
    """
)


@pytest.mark.slow
def test_two_processes_writing_at_once_keep_both_sets(tmp_path):
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), name], stderr=subprocess.PIPE)
        for name in ("a", "b")
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    entries = DecisionCache(folder=tmp_path).load()
    assert set(entries) == {f"{n}-{i}" for n in "ab" for i in range(40)}
    assert not list(tmp_path.glob("*.tmp"))


_DECIDER = textwrap.dedent(
    """
    import sys
    import torch
    import shortcut_fast as sf
    from shortcut_fast.ops import autotune

    calls = []

    def timer(label, run, device):
        calls.append(label)
        run()
        return {"kernel": 1.0, "reference": 2.0}[label]

    autotune.timer = timer
    x = torch.randn(3, 7, 40)
    sf.ops.modulate_layernorm(x, x[:, 0], x[:, 1])
    print(len(calls), autotune.table()[0]["source"])
    """
)


@pytest.mark.slow
def test_decisions_are_reused_across_processes(tmp_path):
    env = {**os.environ, "SHORTCUT_FAST_AUTO": "measured", "SHORTCUT_FAST_CACHE": str(tmp_path)}
    runs = [
        subprocess.run([sys.executable, "-c", _DECIDER], env=env, capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (r.stdout.split() for r in runs)
    assert int(first[0]) > 0 and first[1] == "measured"
    assert second == ["0", "cache"]


def test_nothing_is_timed_inside_a_trainer_step(measured, monkeypatch):
    inside = []
    real_step = trainer_module.step_on_checked_inputs

    def step(*args, **kwargs):
        inside.append(True)
        try:
            return real_step(*args, **kwargs)
        finally:
            inside.pop()

    def timer(label, run, device):
        assert not inside, "timed inside a training step"
        run()
        return {"kernel": 1.0, "reference": 2.0}[label]

    monkeypatch.setattr(trainer_module, "step_on_checked_inputs", step)
    monkeypatch.setattr(autotune, "timer", timer)
    model = micro_dit()
    data = (torch.randn(40, 2, 4, 4), torch.arange(40) % 5)
    config = sf.TrainConfig(batch_size=8, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 8))
    trainer = sf.Trainer(model, data, config)
    trainer.fit(3)
    decided = autotune.decisions()
    assert {k[0] for k in decided} >= {"attention", "modulate_layernorm", "gated_residual"}
    assert {k[4] for k in decided} == {True, False}  # the loss's backward, and the targets' no-grad forwards


def test_the_trainer_run_is_the_same_with_and_without_deciding(measured, monkeypatch):
    """The pass that decides draws from its own stream and drops its gradients: the run is unchanged."""

    def run():
        torch.manual_seed(0)
        model = sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, num_classes=4, min_step=1 / 8)
        data = (torch.randn(32, 3), torch.arange(32) % 4)
        config = sf.TrainConfig(batch_size=8, progress=False, shortcut=sf.ShortcutConfig(min_step=1 / 8))
        trainer = sf.Trainer(model, data, config)
        trainer.fit(3)
        return trainer.model.state_dict(), torch.rand(1)

    monkeypatch.setattr(autotune, "timer", FakeTimer(kernel=2.0, reference=1.0))  # the reference everywhere
    with_pass, after = run()
    with sf.backend("reference"):
        without, after_reference = run()
    for name, value in without.items():
        torch.testing.assert_close(with_pass[name], value, rtol=0, atol=0)
    assert torch.equal(after, after_reference)  # the global random stream moved the same


def test_fallback_without_timing_takes_the_nearest_decided_bucket(measured):
    x, shift, scale = _layernorm_inputs()
    measured.seconds = {"kernel": 3.0, "reference": 1.0}
    with torch.no_grad():
        sf.ops.modulate_layernorm(x, shift, scale)
    calls = measured.calls
    big = torch.randn(64, 7, 40)
    with autotune.no_timing(), torch.no_grad():
        args = (big, big[:, 0], big[:, 1])
        sf.ops.modulate_layernorm(*args)
        assert autotune._fallback(autotune._key("modulate_layernorm", "shortcut_fast", args)) is False
    assert measured.calls == calls
    assert len(autotune.decisions()) == 1  # a fallback is not a decision


def test_fixed_mode_and_forced_backends_decide_nothing(measured):
    x, shift, scale = _layernorm_inputs()
    with sf.backend("native"):
        sf.ops.modulate_layernorm(x, shift, scale)
    autotune.set_mode("fixed")
    sf.ops.modulate_layernorm(x, shift, scale)
    assert measured.calls == 0 and not autotune.decisions()
    with pytest.raises(ValueError, match="SHORTCUT_FAST_AUTO must be one of"):
        autotune.set_mode("fastest")


def test_tune_decides_what_sampling_and_training_run(measured):
    model = micro_dit().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng_before = torch.get_rng_state()
    with sf.engine.mode("off"):
        rows = sf.tune(model, batch_sizes=(1, 3), train=True)
    assert {r["op"] for r in rows} >= {"attention", "modulate_layernorm", "euler_step"}
    assert {r["grad"] for r in rows} == {True, False}
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng_before)
    table = autotune.markdown_table(rows)
    assert "| attention |" in table and "kernel faster" in table


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(batch_sizes=()), "batch_sizes must be a non-empty sequence"),
        (dict(batch_sizes=(0,)), "batch_sizes"),
        (dict(sample_shape=(2, -1)), "sample_shape must be"),
    ],
)
def test_tune_rejects_bad_arguments(kwargs, message):
    model = sf.ShortcutMLP(dim=3, hidden_size=16, depth=1)
    with pytest.raises(ValueError, match=message):
        sf.tune(model, **kwargs)
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        sf.tune("model")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pass sample_shape"):
        sf.tune(torch.nn.Linear(2, 2))


def test_warnings_are_not_repeated_from_the_cache(measured, monkeypatch, tmp_path):
    """A failed check read from the cache in a new process still warns, once."""
    monkeypatch.setitem(dispatch.__dict__, "_right", dispatch._fused_gated_residual)
    monkeypatch.setattr(dispatch, "_fused_gated_residual", lambda ops, *a: dispatch._right(ops, *a) * 2)
    x, gate, y = torch.randn(2, 5, 24), torch.randn(2, 24), torch.randn(2, 5, 24)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        sf.ops.gated_residual(x, gate, y)
    autotune.reset(DecisionCache(folder=tmp_path))
    with pytest.warns(RuntimeWarning, match="gated_residual") as seen:
        sf.ops.gated_residual(x, gate, y)
        sf.ops.gated_residual(x, gate, y)
    assert len(seen) == 1


@pytest.mark.slow
@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_every_rank_runs_rank_0s_decisions(tmp_path, sharding):
    worker = Path(__file__).parent / "workers" / "ddp_autotune.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHORTCUT_FAST_AUTO": "measured", "SHORTCUT_FAST_CACHE": str(tmp_path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker)]
    result = run_or_show_hang([*cmd, str(tmp_path / "rows"), sharding], env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rows.{r}.json").read_text()) for r in (0, 1))
    assert rank0 and {row[3] for row in rank0} == {"kernel"}
    assert sorted(row[:4] for row in rank1) == sorted(row[:4] for row in rank0)
    assert {row[4] for row in rank1} == {"rank 0"}


def _traced_ops(fn, *args, dynamic: bool | None = None) -> set[str]:
    """The ops in the graph ``torch.compile(fn, fullgraph=True, dynamic=dynamic)`` traces for ``args``."""
    seen: set[str] = set()

    def backend(gm, example_inputs):
        seen.update(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True, dynamic=dynamic)(*args)
    return seen


def test_a_compiled_call_times_nothing_and_runs_what_was_decided(measured):
    x, shift, scale = _layernorm_inputs()

    def fn(x, shift, scale):
        return sf.ops.modulate_layernorm(x, shift, scale)

    with torch.no_grad():
        assert any("shortcut_fast.modulate_layernorm_fwd" in op for op in _traced_ops(fn, x, shift, scale))
        assert measured.calls == 0  # undecided while tracing: the fixed rule, nothing timed
        measured.seconds = {"kernel": 3.0, "reference": 1.0}
        fn(x, shift, scale)  # decided eagerly: the reference
        assert measured.calls > 0
        assert not any("shortcut_fast." in op for op in _traced_ops(fn, x, shift, scale))


def test_a_traced_call_of_symbolic_sizes_takes_what_most_decided_buckets_chose(measured):
    # dynamic shapes (what torch.compile turns to on a second batch size): the bucket is unknown while tracing
    def fn(x, shift, scale):
        return sf.ops.modulate_layernorm(x, shift, scale)

    with torch.no_grad():
        measured.seconds = {"kernel": 3.0, "reference": 1.0}
        for rows in (3, 9, 17):  # three buckets decided eagerly, each for the reference
            x, shift, scale = _layernorm_inputs(rows)
            fn(x, shift, scale)
        calls = measured.calls
        traced = _traced_ops(fn, *_layernorm_inputs(40), dynamic=True)
        assert not any("shortcut_fast." in op for op in traced)
        assert measured.calls == calls  # nothing timed while tracing
