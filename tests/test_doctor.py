"""``shortcut-fast doctor`` on the CPU: its sections, its parity checks, and its exit status when one fails."""

from __future__ import annotations

import pytest
import torch
from helpers import double_gradient

from shortcut_fast import cli, doctor
from shortcut_fast.ops import dispatch, reference


def test_doctor_reports_every_section_and_every_op_and_passes(capsys):
    assert cli.main(["doctor", "--device", "cpu", "--timing-seconds", "0.05"]) == 0
    out = capsys.readouterr().out
    sections = ("== versions", "== hardware", "== backend per op on cpu", "== parity", "== what auto runs", "== 1-step")
    for section in sections:
        assert section in out
    assert f"torch         {torch.__version__}" in out
    parity_lines = [line for line in out.splitlines() if line.strip().endswith((" ok", " FAIL"))]
    dtypes = doctor.supported_dtypes(torch.device("cpu"))
    assert len(parity_lines) == len(doctor.OPS) * len(dtypes)
    assert all(line.split()[0] in doctor.OPS for line in parity_lines)
    assert "all parity checks passed" in out


def test_a_wrong_kernel_fails_parity_and_the_exit_status(monkeypatch, capsys):
    def off_by_a_bit(ops, x, v, d):
        return reference.euler_step(x, v, d) + 0.1

    monkeypatch.setattr(dispatch, "_fused_euler_step", off_by_a_bit)
    assert doctor.run("cpu", timing_seconds=0) == 1
    out = capsys.readouterr().out
    assert any(line.split()[:1] == ["euler_step"] and line.endswith("FAIL") for line in out.splitlines())
    assert "FAILED parity: euler_step float32" in out


def test_a_kernel_that_raises_fails_its_check(monkeypatch):
    def broken(*args):
        raise RuntimeError("kernel launch failed")

    monkeypatch.setattr(dispatch, "_fused_attention", broken)
    rows = doctor.parity(torch.device("cpu"))
    assert {(name, r.passed) for name, _, r in rows if name == "attention"} == {("attention", False)}
    assert all(
        "raised RuntimeError: kernel launch failed" in r.describe() for name, _, r in rows if name == "attention"
    )


def test_a_wrong_gradient_fails_parity(monkeypatch):
    right = dispatch._fused_gated_residual
    monkeypatch.setattr(dispatch, "_fused_gated_residual", lambda ops, *a: double_gradient(right(ops, *a)))
    rows = {(name, dtype): r for name, dtype, r in doctor.parity(torch.device("cpu"))}
    result = rows[("gated_residual", "float32")]
    assert not result.passed and result.error < 1e-6 and result.grad_error > 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_doctor_rejects_a_gpu_it_cannot_see(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["doctor", "--device", "cuda", "--timing-seconds", "0"])
    assert exited.value.code == 2
    assert "torch sees no GPU" in capsys.readouterr().err


@pytest.mark.parametrize("namespace", ["triton", "native"])
def test_backend_choice_names_the_kernels_head_dims(monkeypatch, namespace):
    # the attention row of a kernel backend other than the native CPU one lists the head sizes the contract gives it
    from shortcut_fast.ops import backends, contract, dispatch

    name = backends.TRITON_NAMESPACE if namespace == "triton" else backends.NATIVE_NAMESPACE
    device = torch.device("cpu" if namespace == "triton" else "cuda")
    monkeypatch.setattr(backends, "namespace", lambda _device: name)
    row = doctor.backend_choice(device)["attention"]
    head_dims = contract.support("attention_fwd", dispatch.contract_backend(name, device.type)).head_dims
    assert f"head dims other than {list(head_dims)} use the reference" in row
