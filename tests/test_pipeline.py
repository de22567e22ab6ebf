"""``ShortcutPipeline``: the same images as ``sample`` (and ``decode``), through a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import perturb_, tiny_vae

import shortcut_fast as sf
from shortcut_fast.data.latents import decode
from shortcut_fast.pipeline import ShortcutPipeline

pytestmark = pytest.mark.usefixtures("single_thread")


def _pixel_dit(num_classes=10):
    return perturb_(
        sf.ShortcutDiT(
            input_size=8, in_channels=1, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=num_classes
        ),
        seed=0,
    ).eval()


@pytest.fixture(scope="module")
def vae():
    pytest.importorskip("diffusers")
    return tiny_vae().eval()


def _as_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_a_pixel_pipeline_gives_the_samples_as_images_and_survives_a_round_trip(tmp_path):
    model = _pixel_dit()
    pipe = ShortcutPipeline(model, num_inference_steps=2)
    labels = [3, 1, 4]
    images = pipe(class_labels=labels, generator=torch.Generator().manual_seed(5))
    want = sf.sample(
        model, shape=(3, 1, 8, 8), steps=2, y=torch.tensor(labels), generator=torch.Generator().manual_seed(5)
    )
    assert [im.mode for im in images] == ["L"] * 3 and images[0].size == (8, 8)
    got = np.stack([np.asarray(im) for im in images])
    np.testing.assert_array_equal(got, _as_uint8(want.clamp(-1, 1))[..., 0])

    loaded = ShortcutPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "pipe"))
    assert loaded.num_inference_steps == 2 and loaded.vae is None
    again = loaded(class_labels=labels, generator=torch.Generator().manual_seed(5), output_type="pt")
    torch.testing.assert_close(again, want.clamp(-1, 1), rtol=0, atol=0)


def test_a_latent_pipeline_decodes_with_its_vae_and_keeps_it(tmp_path, vae):
    model = perturb_(
        sf.ShortcutDiT(input_size=4, in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=3),
        seed=1,
    ).eval()
    pipe = ShortcutPipeline(model, vae, num_inference_steps=1, cfg_scale=1.5)
    got = pipe(class_labels=torch.tensor([0, 2]), generator=torch.Generator().manual_seed(0), output_type="pt")
    z = sf.sample(
        model, shape=(2, 4, 4, 4), y=torch.tensor([0, 2]), cfg_scale=1.5, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(got, decode(z, vae), rtol=0, atol=0)
    assert got.shape == (2, 3, 8, 8)  # two encoder blocks: one 2x down-sampling

    loaded = ShortcutPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "pipe"))
    images = loaded(class_labels=[0, 2], generator=torch.Generator().manual_seed(0))
    assert [im.mode for im in images] == ["RGB", "RGB"]
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in images]), _as_uint8(got))


def test_an_unconditional_pipeline_takes_a_batch_size():
    pipe = ShortcutPipeline(_pixel_dit(num_classes=0))
    assert pipe(batch_size=2, output_type="np").shape == (2, 8, 8, 1)
    with pytest.raises(ValueError, match="the model is unconditional"):
        pipe(class_labels=[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(), "give class_labels .* or batch_size"),
        (dict(class_labels=[1], batch_size=1), "not both"),
        (dict(class_labels=[0.5]), "1-D sequence of ints"),
        (dict(class_labels=[]), "1-D sequence of ints"),
        (dict(class_labels=[11]), "labels must lie in"),
        (dict(class_labels=[1], output_type="jpeg"), "output_type must be one of"),
    ],
)
def test_bad_calls_say_what_is_allowed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShortcutPipeline(_pixel_dit())(**kwargs)


def test_bad_parts_and_folders_are_refused(tmp_path):
    with pytest.raises(TypeError, match="model must be a ShortcutDiT"):
        ShortcutPipeline(sf.ShortcutMLP(dim=2))
    with pytest.raises(ValueError, match="holds no pipeline.json"):
        ShortcutPipeline.from_pretrained(tmp_path)
    (tmp_path / "pipeline.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="has format 'other'"):
        ShortcutPipeline.from_pretrained(tmp_path)
