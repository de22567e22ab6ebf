"""The official checkpoints: restricted loading, conversion, and parity with a Flax model of the same architecture.

The parity tests need jax and flax (``pip install -e ".[flax-test]"``) and skip without them.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

import shortcut_fast as sf
from shortcut_fast.cli import main as cli_main
from shortcut_fast.models import ShortcutDiT
from shortcut_fast.official import convert_official, read_official_checkpoint, safe_loads
from shortcut_fast.official.convert import model_config

SMALL = dict(patch=2, hidden=64, depth=2, heads=4, mlp_ratio=4.0, channels=4)
SIZE = 8
# class-conditional (as the ImageNet checkpoints) and unconditional (CelebA: one class, always the null one)
CASES = {"imagenet-like": 10, "celeba-like": 1}


# ------------------------------------------------------------------ the restricted unpickler (no jax needed)
class Boom:
    """Pickles to a call of ``os.system``: loading it with plain pickle would run the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_loads_admits_numpy_arrays_and_containers():
    data = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "s": np.int32(3),
        "l": [1.5, (2, "x")],
        "f": np.asfortranarray(np.ones((2, 2), np.float64)),
    }
    for protocol in (2, 4, 5):
        got = safe_loads(pickle.dumps(data, protocol=protocol))
        np.testing.assert_array_equal(got["a"], data["a"])
        np.testing.assert_array_equal(got["f"], data["f"])
        assert got["s"] == 3 and got["l"] == [1.5, (2, "x")]


def test_malicious_reduce_is_refused_without_running(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Boom(marker)))
    with pytest.raises(ValueError, match="not an official checkpoint.*system"):
        read_official_checkpoint(path)
    # hidden where the converter never looks, it is still only a stand-in
    state = {"params": {}, "params_ema": {}, "opt_state": Boom(marker), "step": 1}
    path.write_bytes(pickle.dumps(state))
    assert type(read_official_checkpoint(path)["opt_state"]).stands_for.endswith("system")
    # and where it would need an array, it is refused
    state["params_ema"] = {"PatchEmbed_0": {"Conv_0": {"kernel": Boom(marker)}}}
    path.write_bytes(pickle.dumps(state))
    with pytest.raises(ValueError, match="params_ema/PatchEmbed_0/Conv_0/kernel is a .*system object"):
        convert_official(path, tmp_path / "out")
    assert not marker.exists()


def test_not_a_checkpoint_and_truncated_files(tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"weights": np.zeros(3)}))
    with pytest.raises(ValueError, match="not an official checkpoint.*'params'"):
        read_official_checkpoint(path)
    path.write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="not a readable pickle"):
        read_official_checkpoint(path)
    full = pickle.dumps({"params": {"w": np.zeros((4, 4), np.float32)}, "params_ema": {}})
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_official_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        read_official_checkpoint(tmp_path / "missing.pkl")


def test_official_option_errors():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        ShortcutDiT(input_size=8, in_channels=1, hidden_size=32, depth=1, num_heads=2, conditioning="jax")
    with pytest.raises(ValueError, match="num_classes=1 for an unconditional"):
        ShortcutDiT(
            input_size=8, in_channels=1, hidden_size=32, depth=1, num_heads=2, num_classes=0, conditioning="official"
        )


def test_official_model_round_trips_through_save_and_load(tmp_path):
    model = ShortcutDiT(
        input_size=8, in_channels=2, hidden_size=32, depth=1, num_heads=2, num_classes=3, conditioning="official"
    )
    loaded = sf.load_model(sf.save_model(model, tmp_path / "m"))
    assert loaded.config["conditioning"] == "official" and loaded.config == model.config
    x = torch.randn(2, 2, 8, 8)
    torch.testing.assert_close(loaded(x, 0.25, 0.5), model(x, 0.25, 0.5), rtol=0, atol=0)


# ------------------------------------------------------------------ parity with the Flax model
@pytest.fixture(scope="module")
def flax_dit():
    pytest.importorskip("flax", reason="the parity tests need flax: pip install -e '.[flax-test]'")
    from tests import flax_dit as fd

    return fd


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, flax_dit, tmp_path_factory):
    """(flax module, EMA params, our converted model) for one configuration."""
    num_classes = CASES[request.param]
    net = flax_dit.DiT(**SMALL, num_classes=num_classes)
    params = flax_dit.init_params(net, SIZE, seed=1)
    params_ema = flax_dit.init_params(net, SIZE, seed=2)
    tmp = tmp_path_factory.mktemp(request.param)
    flax_dit.save_checkpoint(tmp / "ckpt", params, params_ema, as_jax=num_classes == 1)
    assert (
        cli_main(
            ["convert-official", str(tmp / "ckpt"), str(tmp / "model"), "--num-heads", "4", "--input-size", str(SIZE)]
        )
        == 0
    )
    return net, params_ema, sf.load_model(tmp / "model"), params, tmp


def _random_inputs(num_classes, batch=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, SIZE, SIZE, SMALL["channels"])).astype(np.float32)
    t = rng.uniform(0, 1, batch).astype(np.float32)
    levels = rng.integers(0, 8, batch)  # d = 2**-level
    y = rng.integers(0, num_classes + 1, batch).astype(np.int32)  # the null class included
    return x, t, levels, y


def _ours(model, x_nhwc, t, d, y):
    out = model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2), torch.from_numpy(t), d, torch.from_numpy(y).long())
    return out.permute(0, 2, 3, 1).detach().numpy()


@pytest.mark.slow  # builds and runs the Flax model (jax)
def test_forward_matches_flax(converted):
    net, params, model, _, _ = converted
    x, t, levels, y = _random_inputs(net.num_classes)
    want = np.asarray(net.apply({"params": params}, x, t, levels.astype(np.float32), y))
    got = _ours(model, x, t, torch.from_numpy(2.0**-levels).float(), y)
    assert np.abs(want).max() > 0.1  # random weights everywhere: a real signal, not zeros
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


@pytest.mark.slow  # builds and runs the Flax model (jax)
def test_live_weights_on_request(converted, flax_dit):
    net, _, _, live, tmp = converted
    from shortcut_fast.official import official_to_model

    model = official_to_model(read_official_checkpoint(tmp / "ckpt"), weights="params", num_heads=4, input_size=SIZE)
    x, t, levels, y = _random_inputs(net.num_classes, seed=3)
    want = np.asarray(net.apply({"params": live}, x, t, levels.astype(np.float32), y))
    np.testing.assert_allclose(_ours(model, x, t, torch.from_numpy(2.0**-levels).float(), y), want, rtol=0, atol=1e-4)


@pytest.mark.slow  # builds and runs the Flax model (jax)
@pytest.mark.parametrize("steps", [1, 4])
def test_samples_match_flax(converted, flax_dit, steps):
    net, params, model, _, _ = converted
    rng = np.random.default_rng(steps)
    noise = rng.standard_normal((4, SIZE, SIZE, SMALL["channels"])).astype(np.float32)
    y = np.full(4, net.num_classes, np.int32) if net.num_classes == 1 else rng.integers(0, 10, 4).astype(np.int32)
    cfg = None if net.num_classes == 1 else 1.5
    want = flax_dit.sample(net, params, noise, y, steps, cfg_scale=cfg)
    yt = None if net.num_classes == 1 else torch.from_numpy(y).long()  # no label = the null class
    got = sf.sample(model, torch.from_numpy(noise).permute(0, 3, 1, 2), steps=steps, y=yt, cfg_scale=cfg)
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), want, rtol=0, atol=1e-4)


@pytest.mark.slow  # builds and runs the Flax model (jax)
def test_paper_sizes_are_recognised(flax_dit):
    """DiT-B and DiT-XL trees (shapes only) give the paper's settings without a stored config."""
    import jax
    import jax.numpy as jnp

    for hidden, depth, heads in ((768, 12, 12), (1152, 28, 16)):
        net = flax_dit.DiT(
            patch=2, hidden=hidden, depth=depth, heads=heads, mlp_ratio=4.0, channels=4, num_classes=1000
        )
        shapes = jax.eval_shape(
            net.init,
            jax.random.PRNGKey(0),
            jnp.zeros((1, 32, 32, 4)),
            jnp.zeros((1,)),
            jnp.zeros((1,)),
            jnp.zeros((1,), jnp.int32),
        )["params"]
        flat = {
            "/".join(str(getattr(k, "key", k)) for k in path): np.broadcast_to(np.float32(0), leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
        }
        assert model_config(flat) == dict(
            input_size=32,
            in_channels=4,
            patch_size=2,
            hidden_size=hidden,
            depth=depth,
            num_heads=heads,
            mlp_ratio=4.0,
            num_classes=1000,
            min_step=1 / 128,
            conditioning="official",
        )


@pytest.mark.slow  # builds and runs the Flax model (jax)
def test_config_errors(flax_dit, tmp_path):
    net = flax_dit.DiT(**SMALL, num_classes=1)
    params = flax_dit.init_params(net, SIZE)
    flax_dit.save_checkpoint(tmp_path / "naive", params, params, config={"train_type": "naive"})
    with pytest.raises(ValueError, match="train_type 'naive' is not covered"):
        convert_official(tmp_path / "naive", tmp_path / "out")
    flax_dit.save_checkpoint(tmp_path / "odd", params, params, config={"denoise_timesteps": 100})
    with pytest.raises(ValueError, match="power of two, got 100"):
        convert_official(tmp_path / "odd", tmp_path / "out")
    # width 64 is none of the paper's sizes and no config says the head count
    flax_dit.save_checkpoint(tmp_path / "plain", params, params)
    with pytest.raises(ValueError, match="--num-heads"):
        convert_official(tmp_path / "plain", tmp_path / "out")
    with pytest.raises(ValueError, match="weights must be one of"):
        convert_official(tmp_path / "plain", tmp_path / "out", weights="best", num_heads=4)
    # a config the weights contradict (a head count that does not divide the width)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        convert_official(tmp_path / "plain", tmp_path / "out", num_heads=3)
    assert not (tmp_path / "out").exists()
