"""save_model / load_model: round trips, the on-disk format, atomic replacement, damaged checkpoints."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from helpers import TinyCustomModel, perturb_
from safetensors import safe_open
from safetensors.torch import save_file

import shortcut_fast.checkpoint as ckpt
from shortcut_fast import ShortcutDiT, ShortcutMLP, load_model, save_model

pytestmark = pytest.mark.usefixtures("single_thread")


def _x(batch: int = 3) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def _vec(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, generator=torch.Generator().manual_seed(0))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _read_safetensors_header(path: Path) -> dict:
    """The format by hand: an 8-byte little-endian length, then that many bytes of JSON."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert 8 + n <= len(raw)
    return json.loads(raw[8 : 8 + n])


#################################################################################
#                                  Round trips                                  #
#################################################################################


def test_dit_round_trip(tiny_dit, tmp_path):
    out = save_model(tiny_dit, tmp_path / "dit")
    assert out == tmp_path / "dit"
    loaded = load_model(tmp_path / "dit")
    assert type(loaded) is ShortcutDiT
    assert loaded.config == tiny_dit.config
    assert not loaded.training
    state, ref = loaded.state_dict(), tiny_dit.state_dict()
    assert state.keys() == ref.keys()
    for k in ref:
        assert torch.equal(state[k], ref[k]), k
    torch.testing.assert_close(loaded.pos_embed, tiny_dit.pos_embed, atol=0, rtol=0)
    x, y = _x(), torch.tensor([0, 5, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, 0.25, 0.5, y), tiny_dit(x, 0.25, 0.5, y))


def test_mlp_round_trip_with_non_default_settings(tmp_path):
    mlp = perturb_(ShortcutMLP(dim=3, hidden_size=16, depth=3, num_classes=4, min_step=1 / 16), seed=9)
    save_model(mlp, str(tmp_path / "mlp"))  # a str path works too
    loaded = load_model(str(tmp_path / "mlp"))
    assert type(loaded) is ShortcutMLP
    assert loaded.config == mlp.config == dict(dim=3, hidden_size=16, depth=3, num_classes=4, min_step=1 / 16)
    assert loaded.step_sizes == mlp.step_sizes
    x, y = _vec(), torch.tensor([0, 1, 2, 4])
    with torch.no_grad():
        assert torch.equal(loaded(x, 0.5, 1 / 16, y), mlp(x, 0.5, 1 / 16, y))


def test_unconditional_round_trip(tiny_uncond_dit, tiny_mlp, tmp_path):
    for name, model, x in [("dit", tiny_uncond_dit, _x()), ("mlp", tiny_mlp, _vec())]:
        save_model(model, tmp_path / name)
        loaded = load_model(tmp_path / name)
        with torch.no_grad():
            assert torch.equal(loaded(x, 0.0, 1.0), model(x, 0.0, 1.0)), name


def test_save_creates_missing_parents(tiny_mlp, tmp_path):
    save_model(tiny_mlp, tmp_path / "a" / "b" / "model")
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["model"]


def test_save_unwraps_data_parallel(tiny_mlp, tmp_path):
    save_model(nn.DataParallel(tiny_mlp), tmp_path / "dp")
    loaded = load_model(tmp_path / "dp")
    assert loaded.state_dict().keys() == tiny_mlp.state_dict().keys()
    with torch.no_grad():
        assert torch.equal(loaded(_vec(), 0.5, 0.5), tiny_mlp(_vec(), 0.5, 0.5))


#################################################################################
#                                 On-disk format                                #
#################################################################################


def test_directory_holds_exactly_json_and_safetensors(tiny_dit, tmp_path):
    save_model(tiny_dit, tmp_path / "m")
    assert sorted(os.listdir(tmp_path / "m")) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["m"]

    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config == {"format": "shortcut_fast.model/1", "class": "ShortcutDiT", "config": tiny_dit.config}

    weights = tmp_path / "m" / "model.safetensors"
    raw = weights.read_bytes()
    assert not raw.startswith(b"\x80")  # a pickle stream
    assert not raw.startswith(b"PK")  # torch.save's zip archive
    header = _read_safetensors_header(weights)
    state = tiny_dit.state_dict()
    assert set(header) - {"__metadata__"} == set(state)
    for k, v in state.items():
        assert header[k]["dtype"] == "F32" and header[k]["shape"] == list(v.shape), k
    with safe_open(str(weights), framework="pt") as f:
        assert set(f.keys()) == set(state)
        for k in state:
            assert torch.equal(f.get_tensor(k), state[k]), k


def test_load_ignores_nothing_but_needs_every_key(tiny_mlp, tmp_path):
    """A weights file from a differently sized model is refused with the file named."""
    save_model(tiny_mlp, tmp_path / "m")
    other = ShortcutMLP(dim=3, hidden_size=16, depth=2)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ValueError, match="model.safetensors does not fit the model"):
        load_model(tmp_path / "m")


#################################################################################
#                               Atomic replacement                              #
#################################################################################


def test_saving_over_a_directory_replaces_it(tiny_mlp, tmp_path):
    target = tmp_path / "m"
    first = ShortcutMLP(dim=3, hidden_size=8, depth=1, num_classes=2)
    save_model(first, target)
    (target / "ema.safetensors").write_bytes((target / "model.safetensors").read_bytes())  # a stale extra file
    (target / "notes.txt").write_text("stale")
    save_model(tiny_mlp, target)
    assert sorted(os.listdir(target)) == ["config.json", "model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no .m.tmp-* or .m.old-* left behind
    loaded = load_model(target)
    assert loaded.config == tiny_mlp.config
    with torch.no_grad():
        assert torch.equal(loaded(_vec(), 0.5, 0.5), tiny_mlp(_vec(), 0.5, 0.5))


class _Boom(RuntimeError):
    pass


def _fail(*args, **kwargs):
    raise _Boom("disk full")


def test_failed_save_leaves_previous_directory_intact(tiny_dit, tiny_mlp, tmp_path, monkeypatch):
    target = tmp_path / "m"
    save_model(tiny_mlp, target)
    before = _snapshot(target)
    monkeypatch.setattr(ckpt, "save_tensors", _fail)
    with pytest.raises(_Boom):
        save_model(tiny_dit, target)
    assert _snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["m"]
    monkeypatch.undo()
    assert load_model(target).config == tiny_mlp.config


def test_failed_first_save_leaves_nothing(tiny_mlp, tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "save_tensors", _fail)
    with pytest.raises(_Boom):
        save_model(tiny_mlp, tmp_path / "m")
    assert os.listdir(tmp_path) == []


def test_interrupted_save_leaves_nothing(tiny_mlp, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    save_model(tiny_mlp, tmp_path / "m")
    before = _snapshot(tmp_path / "m")
    monkeypatch.setattr(ckpt, "write_json", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_model(tiny_mlp, tmp_path / "m")
    assert _snapshot(tmp_path / "m") == before
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_failed_final_rename_restores_previous_directory(tiny_mlp, tmp_path, monkeypatch):
    target = tmp_path / "m"
    save_model(tiny_mlp, target)
    before = _snapshot(target)
    real_rename, calls = os.rename, []

    def flaky_rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the tmp -> target move, after target was moved aside
            raise OSError("rename failed")
        return real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", flaky_rename)
    with pytest.raises(OSError, match="rename failed"):
        save_model(tiny_mlp, target)
    monkeypatch.undo()
    assert target.is_dir() and _snapshot(target) == before
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_atomic_file_writes_and_replaces(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with ckpt.atomic_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_text("new")
        assert path.read_text() == "old"  # not visible until the block ends
    assert path.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_file_creates_parents(tmp_path):
    path = tmp_path / "sub" / "dir" / "out.bin"
    with ckpt.atomic_file(path) as tmp, open(tmp, "wb") as fh:
        fh.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(path.parent) == ["out.bin"]


@pytest.mark.parametrize("exc", [ValueError("boom"), KeyboardInterrupt()])
def test_atomic_file_cleans_up_on_error(tmp_path, exc):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(type(exc)), ckpt.atomic_file(path) as tmp:
        tmp.write_text("half written")
        raise exc
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    fresh = tmp_path / "fresh.txt"
    with pytest.raises(type(exc)), ckpt.atomic_file(fresh) as tmp:
        raise exc
    assert os.listdir(tmp_path) == ["out.txt"]


#################################################################################
#                              Damaged checkpoints                              #
#################################################################################


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")


def test_load_a_file_instead_of_a_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "f")


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_load_with_a_missing_file(tiny_mlp, tmp_path, missing):
    save_model(tiny_mlp, tmp_path / "m")
    (tmp_path / "m" / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("keep", [0, 5, 20, "half", "all-but-one"])
def test_load_truncated_weights_names_the_file(tiny_dit, tmp_path, keep):
    save_model(tiny_dit, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    raw = weights.read_bytes()
    n = {"half": len(raw) // 2, "all-but-one": len(raw) - 1}.get(keep, keep)
    weights.write_bytes(raw[:n])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path / "m")


def test_load_garbage_weights_names_the_file(tiny_mlp, tmp_path):
    save_model(tiny_mlp, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x80\x04not a safetensors file at all" * 10)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("raw", [b"{not json", b"", b'["a list"]', b"\xff\xfe{}"])
def test_load_malformed_config_names_the_file(tiny_mlp, tmp_path, raw):
    save_model(tiny_mlp, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_bytes(raw)
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path / "m")


def _rewrite_config(directory: Path, **changes) -> None:
    path = directory / "config.json"
    spec = json.loads(path.read_text())
    spec.update(changes)
    path.write_text(json.dumps(spec))


@pytest.mark.parametrize(
    "changes",
    [
        dict(**{"class": "Trainer"}),
        dict(**{"class": "ShortcutModule"}),
        dict(format="shortcut_fast.model/2"),
        dict(format=None),
    ],
)
def test_load_unknown_class_or_format(tiny_mlp, tmp_path, changes):
    save_model(tiny_mlp, tmp_path / "m")
    _rewrite_config(tmp_path / "m", **changes)
    with pytest.raises(ValueError, match="config.json does not describe a shortcut_fast model"):
        load_model(tmp_path / "m")


def test_load_config_that_does_not_fit_the_class(tiny_mlp, tmp_path):
    save_model(tiny_mlp, tmp_path / "m")
    _rewrite_config(tmp_path / "m", config={**tiny_mlp.config, "bogus": 1})
    with pytest.raises(ValueError, match="config.json: the model config does not fit ShortcutMLP"):
        load_model(tmp_path / "m")


@pytest.mark.parametrize("damage", ["drop-config", "list-class"])
def test_load_config_with_missing_or_odd_fields_names_the_file(tiny_mlp, tmp_path, damage):
    save_model(tiny_mlp, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    spec = json.loads(path.read_text())
    if damage == "drop-config":
        del spec["config"]
    else:
        spec["class"] = ["ShortcutMLP"]
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path / "m")


def test_ema_true_on_a_plain_model_directory(tiny_mlp, tmp_path):
    save_model(tiny_mlp, tmp_path / "m")
    with pytest.raises(ValueError, match="no ema.safetensors"):
        load_model(tmp_path / "m", ema=True)
    # the default and ema=False take the live weights
    for ema in (None, False):
        with torch.no_grad():
            assert torch.equal(load_model(tmp_path / "m", ema=ema)(_vec(), 0.5, 1.0), tiny_mlp(_vec(), 0.5, 1.0))


def test_ema_weights_are_preferred_when_present(tiny_mlp, tmp_path):
    save_model(tiny_mlp, tmp_path / "m")
    ema = perturb_(ShortcutMLP(**tiny_mlp.config), seed=77)
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp_path / "m" / "ema.safetensors"))
    x = _vec()
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m")(x, 0.5, 1.0), ema(x, 0.5, 1.0))
        assert torch.equal(load_model(tmp_path / "m", ema=True)(x, 0.5, 1.0), ema(x, 0.5, 1.0))
        assert torch.equal(load_model(tmp_path / "m", ema=False)(x, 0.5, 1.0), tiny_mlp(x, 0.5, 1.0))


def test_save_model_refuses_other_modules(tmp_path):
    with pytest.raises(TypeError, match="save_model saves"):
        save_model(TinyCustomModel(), tmp_path / "custom")

    class MyMLP(ShortcutMLP):
        pass

    with pytest.raises(TypeError, match="MyMLP"):
        save_model(MyMLP(dim=3, hidden_size=8, depth=1), tmp_path / "sub")
    assert os.listdir(tmp_path) == []
