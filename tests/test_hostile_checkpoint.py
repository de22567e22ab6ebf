"""Hostile inputs to ``save_model`` and ``load_model`` (``shortcut_fast.checkpoint``).

Wrong types, shapes, dtypes, devices ("meta" stands in for a second device),
NaN/inf, huge sizes and malformed files must end in a ``ValueError`` or
``TypeError`` (``FileNotFoundError`` for a missing path) whose message names the
offending argument; valid inputs drawn by the same strategies must work. The
strategies and tiny models shared by these files are in ``helpers.py``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    FAIL_FAST_S,
    FEW,
    HUGE,
    MANY,
    MLP_COND,
    MLP_UNCOND,
    SOME,
    VALID_MIN_STEPS,
    TinyCustomModel,
    dit_settings,
    expect_error,
    mlp_settings,
    not_an_int,
    perturb_,
    scratch,
    x_shape,
)
from hypothesis import assume, given
from hypothesis import strategies as st
from safetensors.torch import save_file

import shortcut_fast as sf

pytestmark = pytest.mark.usefixtures("single_thread")


@FEW
@given(st.one_of(mlp_settings(), dit_settings()))
def test_save_and_load_round_trip(kwargs):
    cls = sf.ShortcutDiT if "patch_size" in kwargs else sf.ShortcutMLP
    model = perturb_(cls(**kwargs)).eval()
    with scratch() as tmp:
        sf.save_model(model, tmp / "model")
        loaded = sf.load_model(tmp / "model")
    assert type(loaded) is cls and loaded.config == model.config
    x = torch.randn(x_shape(model, 2))
    torch.testing.assert_close(loaded(x, 0.0, 1.0), model(x, 0.0, 1.0), rtol=0, atol=0)


def _saved_model(tmp: Path) -> Path:
    return sf.save_model(MLP_COND, tmp / "model")


CONFIG_KEYS = sorted(MLP_COND.config)


@MANY
@given(st.data())
def test_load_model_rejects_a_damaged_config(data):
    kind = data.draw(st.sampled_from(["bytes", "json", "format", "class", "config", "field", "unknown", "huge"]))
    with scratch() as tmp:
        directory = _saved_model(tmp)
        spec = json.loads((directory / "config.json").read_text())
        if kind == "bytes":
            blob = data.draw(st.binary(max_size=64))
        elif kind == "json":  # valid JSON that is not a model description
            blob = json.dumps(
                data.draw(
                    st.one_of(
                        st.integers(),
                        st.text(max_size=4),
                        st.none(),
                        st.lists(st.integers(), max_size=3),
                        st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
                    )
                )
            )
        elif kind in ("format", "class", "config"):
            value = data.draw(
                st.one_of(not_an_int().filter(lambda v: not isinstance(v, (bytes, complex))), st.integers())
            )
            assume(value != spec[kind])
            blob = json.dumps({**spec, kind: value})
        elif kind == "field":
            key = data.draw(st.sampled_from(CONFIG_KEYS))
            value = data.draw(
                st.one_of(
                    st.text(max_size=4),
                    st.none(),
                    st.lists(st.integers(), max_size=2),
                    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                    st.floats(allow_nan=True).filter(lambda v: v not in VALID_MIN_STEPS),
                    st.integers(max_value=-1),
                )
            )
            blob = json.dumps({**spec, "config": {**spec["config"], key: value}})
        elif kind == "unknown":
            blob = json.dumps({**spec, "config": {**spec["config"], data.draw(st.sampled_from(["zzz", "", "x y"])): 1}})
        else:
            key = data.draw(st.sampled_from(["dim", "hidden_size", "depth", "num_classes"]))
            blob = json.dumps({**spec, "config": {**spec["config"], key: data.draw(HUGE)}})
        (directory / "config.json").write_bytes(blob if isinstance(blob, bytes) else blob.encode())
        # settings that build some other model (e.g. "config": {}, the defaults) fail on the weights instead
        names = ["config.json"] + (["model.safetensors"] if kind == "config" else [])
        start = time.perf_counter()
        expect_error(lambda: sf.load_model(directory), ValueError, names=names)
        assert time.perf_counter() - start < FAIL_FAST_S


@SOME
@given(st.data())
def test_load_model_rejects_damaged_weights(data):
    kind = data.draw(st.sampled_from(["bytes", "truncated", "other_model", "missing_key", "extra_key"]))
    with scratch() as tmp:
        directory = _saved_model(tmp)
        weights = directory / "model.safetensors"
        if kind == "bytes":
            weights.write_bytes(data.draw(st.binary(max_size=256)))
        elif kind == "truncated":
            blob = weights.read_bytes()
            weights.write_bytes(blob[: data.draw(st.integers(0, len(blob) - 1))])
        else:
            state = {k: v.clone() for k, v in MLP_COND.state_dict().items()}
            if kind == "other_model":
                state = {k: v.clone() for k, v in MLP_UNCOND.state_dict().items()}
            elif kind == "missing_key":
                del state[data.draw(st.sampled_from(sorted(state)))]
            else:
                state["zzz"] = torch.zeros(2)
            save_file(state, str(weights))
        expect_error(lambda: sf.load_model(directory), ValueError, names=["model.safetensors"])


@FEW
@given(st.sampled_from(["no_dir", "is_file", "no_config", "no_weights", "config_is_dir", "ema_required"]))
def test_load_model_on_missing_pieces(kind):
    with scratch() as tmp:
        directory = _saved_model(tmp)
        exc, names = FileNotFoundError, [str(directory)]
        if kind == "no_dir":
            directory = tmp / "nowhere"
            names = ["nowhere"]
        elif kind == "is_file":
            directory = tmp / "file"
            directory.write_text("{}")
            names = ["file"]
        elif kind == "no_config":
            (directory / "config.json").unlink()
            names = ["config.json"]
        elif kind == "no_weights":
            (directory / "model.safetensors").unlink()
            names = ["model.safetensors"]
        elif kind == "config_is_dir":
            (directory / "config.json").unlink()
            (directory / "config.json").mkdir()
            names = ["config.json"]
        else:
            exc, names = ValueError, ["ema"]
        expect_error(lambda: sf.load_model(directory, ema=True if kind == "ema_required" else None), exc, names=names)


@FEW
@given(st.one_of(not_an_int(), st.integers(), st.just(TinyCustomModel())))
def test_save_model_rejects_what_it_cannot_save(model):
    with scratch() as tmp:
        expect_error(lambda: sf.save_model(model, tmp / "m"), TypeError, names=["save_model"])
        assert not (tmp / "m").exists()


# ---- gaps in checkpoint.py (not editable here) ----


def test_load_model_deeply_nested_config():
    with scratch() as tmp:
        directory = _saved_model(tmp)
        (directory / "config.json").write_text("[" * 100_000 + "]" * 100_000)
        expect_error(lambda: sf.load_model(directory), ValueError, names=["config.json"])


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool, torch.int64])
@pytest.mark.filterwarnings("ignore:Casting complex values to real")
def test_load_model_weights_of_a_non_float_dtype(dtype):
    with scratch() as tmp:
        directory = _saved_model(tmp)
        save_file({k: v.to(dtype) for k, v in MLP_COND.state_dict().items()}, str(directory / "model.safetensors"))
        expect_error(lambda: sf.load_model(directory), ValueError, names=["model.safetensors"])


def test_load_model_non_finite_weights():
    with scratch() as tmp:
        directory = _saved_model(tmp)
        state = {k: torch.full_like(v, math.nan) for k, v in MLP_COND.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"))
        expect_error(lambda: sf.load_model(directory), ValueError, names=["model.safetensors"])


@pytest.mark.parametrize("device", ["nonsense", "cuda:x"])
def test_load_model_bad_device(device):
    with scratch() as tmp:
        directory = _saved_model(tmp)
        expect_error(lambda: sf.load_model(directory, device=device), names=["device"])


def test_load_model_latest_pointer_of_random_bytes():
    with scratch() as tmp:
        directory = _saved_model(tmp)
        (directory / "latest").write_bytes(b"\xff\xfe\x00garbage")
        expect_error(lambda: sf.load_model(directory), ValueError, names=["latest"])


def test_save_model_over_a_regular_file():
    with scratch() as tmp:
        target = tmp / "notes.txt"
        target.write_text("precious")
        expect_error(lambda: sf.save_model(MLP_COND, target), (ValueError, FileExistsError), names=["notes.txt"])
