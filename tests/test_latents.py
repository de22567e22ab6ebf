"""Latent datasets: encoding an image folder with a tiny random AutoencoderKL, resuming, torchrun, decoding."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

pytest.importorskip("diffusers", reason="diffusers is not installed (the [latent] extra)")

from helpers import tiny_vae  # noqa: E402

import shortcut_fast as sf  # noqa: E402
from shortcut_fast import ShortcutDiT, save_model  # noqa: E402
from shortcut_fast.cli import main, open_training_data  # noqa: E402
from shortcut_fast.data import latents as lat  # noqa: E402
from shortcut_fast.data.batches import BatchSource  # noqa: E402
from shortcut_fast.data.datasets import ImageFolder, TensorShards  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    vae = tiny_vae()
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Two classes, seven readable images of assorted sizes and modes, one broken file."""
    root = tmp_path_factory.mktemp("images")
    g = np.random.default_rng(0)
    for name, sizes in (("cat", [(20, 16), (16, 24), (33, 33), (18, 18)]), ("dog", [(16, 16), (40, 20), (17, 30)])):
        (root / name).mkdir()
        for i, (w, h) in enumerate(sizes):
            mode = "RGBA" if i == 1 else "RGB"
            Image.fromarray(g.integers(0, 256, (h, w, len(mode)), dtype=np.uint8), mode).save(root / name / f"{i}.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def expected_latents(folder: Path, vae_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Means of the posteriors of every readable image, times the scaling factor, and the class labels."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    with pytest.warns(UserWarning, match="skipping 1 unreadable"):
        images = ImageFolder(folder, 16, flip=False)
    x = torch.stack([images.load(p) for p, _ in images.samples])
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean * 0.5
    return z, torch.tensor([label for _, label in images.samples])


def encode(folder, out, vae_dir, **kw):
    with pytest.warns(UserWarning, match="unreadable"):
        return lat.encode_folder(folder, out, vae_dir, image_size=16, batch_size=3, shard_size=3, progress=False, **kw)


def test_encode_writes_the_vae_means_with_labels_and_metadata(folder, vae_dir, tmp_path):
    summary = encode(folder, tmp_path / "z", vae_dir)
    assert summary == {"images": 7, "skipped": 1, "shards": 3, "encoded": 7, "shards_written": 3, "shards_skipped": 0}
    files = sorted((tmp_path / "z").glob("*.safetensors"))
    assert [f.name for f in files] == [lat.SHARD_PATTERN.format(i) for i in range(3)]
    shards = TensorShards(files)
    z, y = expected_latents(folder, vae_dir)
    assert len(shards) == 7 and shards.sample_shape == (4, 8, 8) and shards.num_classes == 2
    got = torch.stack([shards[i][0] for i in range(7)])
    torch.testing.assert_close(got, z, rtol=1e-4, atol=1e-5)
    assert [shards[i][1] for i in range(7)] == y.tolist()
    with safe_open(str(files[0]), framework="pt") as handle:
        meta = handle.metadata()
    assert float(meta["scaling_factor"]) == 0.5
    assert meta["source"] == str(folder.resolve()) and meta["vae"] == str(vae_dir)
    assert json.loads(meta["classes"]) == ["cat", "dog"] and meta["latents"] == "mean" and meta["image_size"] == "16"


def test_resume_skips_finished_shards_and_redoes_changed_settings(folder, vae_dir, tmp_path):
    out = tmp_path / "z"
    encode(folder, out, vae_dir)
    first = (out / lat.SHARD_PATTERN.format(0)).read_bytes()
    (out / lat.SHARD_PATTERN.format(1)).unlink()
    (out / lat.SHARD_PATTERN.format(2)).write_bytes(b"cut short")
    summary = encode(folder, out, vae_dir)
    assert (summary["shards_written"], summary["shards_skipped"]) == (2, 1)
    assert (out / lat.SHARD_PATTERN.format(0)).read_bytes() == first
    assert len(TensorShards(sorted(out.glob("*.safetensors")))) == 7
    # sampled latents are other data: nothing of the mean run is reused
    assert encode(folder, out, vae_dir, latents="sample")["shards_written"] == 3


def test_sampled_latents_are_seeded_draws_around_the_mean(folder, vae_dir, tmp_path):
    means = encode(folder, tmp_path / "m", vae_dir)
    assert means["encoded"] == 7
    encode(folder, tmp_path / "a", vae_dir, latents="sample", seed=1)
    encode(folder, tmp_path / "b", vae_dir, latents="sample", seed=1)
    encode(folder, tmp_path / "c", vae_dir, latents="sample", seed=2)
    read = {
        k: torch.stack(list(TensorShards(sorted((tmp_path / k).glob("*.safetensors")))[i][0] for i in range(7)))
        for k in "mabc"
    }
    assert torch.equal(read["a"], read["b"]) and not torch.equal(read["a"], read["c"])
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_dir)
    with pytest.warns(UserWarning, match="unreadable"):
        x = ImageFolder(folder, 16, flip=False)
    std = vae.encode(torch.stack([x.load(p) for p, _ in x.samples])).latent_dist.std * 0.5
    standardised = (read["a"] - read["m"]) / std.detach()
    assert 0.8 < float(standardised.std()) < 1.2 and abs(float(standardised.mean())) < 0.1


def test_an_image_that_breaks_while_encoding_is_counted_not_fatal(folder, vae_dir, tmp_path, monkeypatch):
    z, y = expected_latents(folder, vae_dir)
    real_load = ImageFolder.load

    def load(self, path):
        if Path(path).name == "2.png" and Path(path).parent.name == "cat":
            raise OSError("truncated")
        return real_load(self, path)

    monkeypatch.setattr(ImageFolder, "load", load)
    summary = encode(folder, tmp_path / "z", vae_dir)
    assert (summary["encoded"], summary["skipped"]) == (6, 2)
    shards = TensorShards(sorted((tmp_path / "z").glob("*.safetensors")))
    keep = [i for i in range(7) if i != 2]
    torch.testing.assert_close(torch.stack([shards[i][0] for i in range(6)]), z[keep], rtol=1e-4, atol=1e-5)


def test_decode_inverts_the_scaling_and_returns_pixels(vae_dir):
    vae = lat.load_vae(vae_dir)
    z = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = vae.decode(z / 0.5).sample.clamp(-1, 1)
    pixels = lat.decode(z, vae, batch_size=2)
    assert pixels.shape == (5, 3, 16, 16)
    torch.testing.assert_close(pixels, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(N, C, h, w\)"):
        lat.decode(z[0], vae)


def test_a_missing_vae_folder_says_what_is_expected(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        lat.load_vae(tmp_path)
    with pytest.raises(ValueError, match="latents must be one of"):
        lat.encode_folder(tmp_path, tmp_path, tmp_path, image_size=16, latents="mode")


def test_the_trainer_trains_on_latent_shards_read_row_by_row(folder, vae_dir, tmp_path):
    encode(folder, tmp_path / "z", vae_dir)
    data, _, num_classes = open_training_data(str(tmp_path / "z"))
    z, labels = expected_latents(folder, vae_dir)
    x, y = next(BatchSource(data, batch_size=3, seed=0))
    for row, label in zip(x, y, strict=True):  # every row of a batch is one encoded image with its label
        nearest = int(((z - row) ** 2).flatten(1).sum(1).argmin())
        torch.testing.assert_close(row, z[nearest], rtol=1e-5, atol=1e-5)
        assert label == labels[nearest]
    torch.manual_seed(0)
    model = ShortcutDiT(
        input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=num_classes
    )
    trainer = sf.Trainer(model, data, sf.TrainConfig(batch_size=3, progress=False, log_every=1))
    trainer.fit(2)
    assert trainer.step == 2 and all(np.isfinite(row["loss"]) for row in trainer.history)


def test_cli_encode_train_and_sample_png(folder, vae_dir, tmp_path, capsys):
    out = tmp_path / "z"
    with pytest.warns(UserWarning, match="unreadable"):
        assert (
            main(
                [
                    "encode",
                    "--data",
                    str(folder),
                    "--vae",
                    str(vae_dir),
                    "--out",
                    str(out),
                    "--image-size",
                    "16",
                    "--shard-size",
                    "4",
                    "--workers",
                    "0",
                    "--quiet",
                ]
            )
            == 0
        )
    assert "encoded 7 of 8 images (1 unreadable, skipped) into 2 shard(s)" in capsys.readouterr().out
    data, example, num_classes = open_training_data(str(out))
    assert isinstance(data, TensorShards) and example.shape == (1, 4, 8, 8) and num_classes == 2
    # rows are read through a lazy slice of each file, never a loaded tensor
    assert data[5][1] == 1 and data._readers.keys() == {0, 1}
    assert not any(isinstance(r, torch.Tensor) for r in data._readers.values())

    torch.manual_seed(0)
    model = ShortcutDiT(input_size=8, in_channels=4, patch_size=2, hidden_size=32, depth=1, num_heads=2, num_classes=2)
    save_model(model, tmp_path / "m")
    assert (
        main(
            [
                "sample",
                "--model",
                str(tmp_path / "m"),
                "--vae",
                str(vae_dir),
                "--out",
                str(tmp_path / "g.png"),
                "--n",
                "3",
                "--batch-size",
                "4",
            ]
        )
        == 0
    )
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.width >= 3 * 16 * 4 and grid.height >= 2 * 16 * 4
    assert (
        main(
            [
                "sample",
                "--model",
                str(tmp_path / "m"),
                "--vae",
                str(vae_dir),
                "--out",
                str(tmp_path / "pngs"),
                "--n",
                "2",
                "--label",
                "1",
            ]
        )
        == 0
    )
    pngs = sorted((tmp_path / "pngs").glob("*.png"))
    assert len(pngs) == 2 and all(Image.open(p).size == (16, 16) for p in pngs)
    with pytest.raises(SystemExit):
        main(["sample", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "x.png")])
    assert "--vae" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_splits_the_shards_and_writes_what_one_process_writes(folder, vae_dir, tmp_path):
    single = encode(folder, tmp_path / "one", vae_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "shortcut_fast.cli",
        "encode",
        "--data",
        str(folder),
        "--vae",
        str(vae_dir),
        "--out",
        str(tmp_path / "two"),
        "--image-size",
        "16",
        "--shard-size",
        "3",
        "--batch-size",
        "3",
        "--workers",
        "0",
        "--quiet",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"encoded {single['encoded']} of 8 images (1 unreadable, skipped) into 3 shard(s)" in result.stdout
    for i in range(single["shards"]):
        name = lat.SHARD_PATTERN.format(i)
        a = TensorShards([tmp_path / "one" / name])
        b = TensorShards([tmp_path / "two" / name])
        assert len(a) == len(b)
        for j in range(len(a)):
            torch.testing.assert_close(a[j][0], b[j][0], rtol=1e-5, atol=1e-6)
            assert a[j][1] == b[j][1]
