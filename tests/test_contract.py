"""The op contract (``shortcut_fast/ops/contract.py``) against what is registered and what runs."""

from __future__ import annotations

import ast
import pathlib
import re
from unittest import mock

import pytest
import torch

from shortcut_fast import ops
from shortcut_fast.ops import backends, contract, formulas, jvp
from shortcut_fast.ops import reference as SF

ROOT = pathlib.Path(__file__).resolve().parent.parent
NAMESPACES = {"native": backends.NATIVE_NAMESPACE, "triton": backends.TRITON_NAMESPACE}
LOADED = {"native": backends.native_available, "triton": backends.triton_available}


def _registered(namespace: str) -> set[str]:
    return {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.split("::")[0] == namespace}


@pytest.mark.parametrize("backend", list(NAMESPACES))
def test_each_namespace_holds_exactly_the_contract_with_its_schemas(backend):
    if not LOADED[backend]():
        pytest.skip(f"the {backend} ops are not available here")
    namespace = NAMESPACES[backend]
    assert _registered(namespace) == set(contract.BY_NAME)
    for op in contract.OPS:
        assert str(getattr(getattr(torch.ops, namespace), op.name).default._schema) == op.qualified_schema(namespace)


def test_every_op_has_a_fake_and_every_differentiable_op_a_formula():
    assert set(formulas.FAKES) == set(contract.BY_NAME)
    with mock.patch.dict(formulas.FAKES), pytest.raises(RuntimeError, match=r"missing \['euler_step'\]"):
        del formulas.FAKES["euler_step"]
        formulas.register_fakes("not_registered")


def test_every_op_declared_with_a_jvp_has_its_rule_and_the_backward_kernels_have_none():
    declared = {op.name for op in contract.OPS if any(s.jvp for s in op.support.values())}
    assert declared == set(jvp.FUNCTIONS)
    assert not any(
        s.jvp for name in ("attention_bwd", "modulate_layernorm_bwd") for s in contract.BY_NAME[name].support.values()
    )
    # the JVP column of the docs table is the contract's
    assert "| `attention_bwd` | fp32, fp64, fp16, bf16 |" in contract.markdown()
    assert "| `attention_fwd` | fp32, fp64, fp16, bf16; JVP |" in contract.markdown()


def test_every_op_serves_a_public_op():
    assert {op.serves for op in contract.OPS} <= set(ops.__all__)
    assert all(set(op.support) == set(contract.BACKENDS) for op in contract.OPS)


def test_the_docs_table_is_the_generated_one():
    text = (ROOT / "docs" / "kernels.md").read_text()
    table = re.search(r"<!-- contract tables: begin -->\n(.*?)<!-- contract tables: end -->", text, re.S)
    assert table is not None, "docs/kernels.md lost its contract table markers"
    assert table.group(1) == contract.markdown(), "regenerate with: python -m shortcut_fast.ops --markdown"


def test_kernels_import_nothing_from_the_package():
    for path in (ROOT / "kernels").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            for name in names:
                assert not name.startswith(("shortcut_fast", "..")), f"{path.name} imports {name}"


# ---------------------------------------------------------------- what the contract says runs, runs
def _backends_here():
    cases = []
    if backends.native_available():
        cases.append(("native", "cpu"))
        if torch.cuda.is_available() and backends._native_cuda:
            cases.append(("native", "cuda"))
    if backends.triton_available():
        if backends.triton_interpreted():
            cases.append(("triton", "cpu"))
        elif torch.cuda.is_available():
            cases.append(("triton", "cuda"))
    return cases


BACKENDS_HERE = _backends_here()


@pytest.fixture(params=BACKENDS_HERE, ids=[f"{b}-{d}" for b, d in BACKENDS_HERE])
def here(request):
    name, device = request.param
    with ops.backends.backend(name):
        yield getattr(torch.ops, NAMESPACES[name]), device, ops.dispatch.contract_backend(NAMESPACES[name], device)


def _public_attention_uses_the_reference(q) -> bool:
    with mock.patch.object(SF, "attention", wraps=SF.attention) as reference:
        ops.attention(q, q, q)
    return reference.called


@pytest.mark.parametrize("head_dim", [16, 32, 48, 64, 128])
def test_attention_runs_the_declared_head_sizes_and_falls_back_outside(here, head_dim):
    raw, device, backend = here
    support = contract.support("attention_fwd", backend)
    q = torch.randn(1, 2, 3, head_dim, device=device)
    declared = support.head_dims is None or head_dim in support.head_dims
    if declared:
        torch.testing.assert_close(raw.attention_fwd(q, q, q)[0], SF.attention(q, q, q), rtol=1e-5, atol=1e-5)
    else:
        with pytest.raises(RuntimeError, match=str(head_dim)):
            raw.attention_fwd(q, q, q)
    assert _public_attention_uses_the_reference(q) != declared


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_the_declared_dtypes_run_and_the_others_fall_back(here, dtype):
    raw, device, backend = here
    support = contract.support("gated_residual", backend)
    x = torch.randn(2, 3, 5, device=device).to(dtype)
    gate = x[:, 0].contiguous()
    if support.runs(dtype):
        # the kernels sum in fp32 and round once, so compare with the fp32 reference at 16-bit rounding
        torch.testing.assert_close(
            raw.gated_residual(x, gate, x).double(),
            SF.gated_residual(x.double(), gate.double(), x.double()),
            rtol=2e-2,
            atol=2e-2,
        )
    else:
        with pytest.raises(RuntimeError, match="dtype"):
            raw.gated_residual(x, gate, x)
    with mock.patch.object(SF, "gated_residual", wraps=SF.gated_residual) as reference:
        ops.gated_residual(x, gate, x)
    assert reference.called != support.runs(dtype)
