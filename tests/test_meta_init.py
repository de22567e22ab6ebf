"""Models built on the meta device (the large-model path of FSDP) equal normal ones once initialised or loaded."""

import pytest
import torch
from helpers import perturb_
from safetensors.torch import load_file

import shortcut_fast as sf

pytestmark = pytest.mark.usefixtures("single_thread")

MODELS = {
    "dit": lambda: sf.ShortcutDiT(
        input_size=8, in_channels=2, patch_size=2, hidden_size=32, depth=2, num_heads=2, num_classes=3, min_step=1 / 8
    ),
    "dit-uncond": lambda: sf.ShortcutDiT(
        input_size=4, in_channels=1, patch_size=1, hidden_size=16, depth=1, num_heads=2, num_classes=0, min_step=1 / 8
    ),
    "mlp": lambda: sf.ShortcutMLP(dim=3, hidden_size=16, depth=2, num_classes=3, min_step=1 / 8),
}


def inputs(model):
    gen = torch.Generator().manual_seed(0)
    shape = (
        (4, model.dim)
        if isinstance(model, sf.ShortcutMLP)
        else (4, model.in_channels, model.input_size, model.input_size)
    )
    y = torch.tensor([0, 1, 2, 0]) if model.num_classes else None
    return torch.randn(shape, generator=gen), torch.rand(4, generator=gen), torch.full((4,), 0.25), y


def on_meta_then_garbage(build):
    """A model built on the meta device, materialised with ``to_empty`` and every tensor set to NaN.

    ``to_empty`` leaves whatever the memory held; NaN stands for it, so that
    anything left uninitialised shows in the output.
    """
    with torch.device("meta"):
        model = build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(float("nan"))
    return model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_meta_model_after_initialisation_equals_a_normal_one(name):
    normal = MODELS[name]()
    meta = on_meta_then_garbage(MODELS[name])
    meta.initialize_weights()
    assert all(bool(torch.isfinite(p).all()) for p in meta.parameters())
    for (key, want), (other, got) in zip(normal.named_buffers(), meta.named_buffers(), strict=True):
        assert key == other and torch.equal(got, want), key
    # the random draws differ from a normal build's (the constructors drew first); with the same weights
    # the outputs are the same
    perturb_(normal, seed=1)
    with torch.no_grad():
        for p, q in zip(meta.parameters(), normal.parameters(), strict=True):
            p.copy_(q)
    torch.testing.assert_close(meta(*inputs(meta)), normal(*inputs(normal)), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_meta_model_after_loading_equals_a_normal_one(name):
    normal = perturb_(MODELS[name](), seed=2)
    meta = on_meta_then_garbage(MODELS[name])
    meta.load_state_dict(normal.state_dict(), strict=True)
    torch.testing.assert_close(meta(*inputs(meta)), normal(*inputs(normal)), rtol=0, atol=0)


def test_a_checkpoint_without_the_position_buffer_loads_into_a_meta_model(tmp_path):
    normal = perturb_(MODELS["dit"](), seed=3).eval()
    sf.save_model(normal, tmp_path / "m")
    saved = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert "pos_embed" not in saved and saved.keys() == normal.state_dict().keys()
    loaded = sf.load_model(tmp_path / "m")
    torch.testing.assert_close(loaded(*inputs(loaded)), normal(*inputs(normal)), rtol=0, atol=0)
    meta = on_meta_then_garbage(MODELS["dit"])
    meta.load_state_dict(saved, strict=True)
    torch.testing.assert_close(meta.pos_embed, normal.pos_embed, rtol=0, atol=0)
    torch.testing.assert_close(meta(*inputs(meta)), normal(*inputs(normal)), rtol=0, atol=0)
