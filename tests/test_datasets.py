"""Training data from disk: memory-mapped tensor shards, image folders, and the CLI that opens them."""

import json
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import shortcut_fast as sf
from shortcut_fast.cli import main, open_training_data
from shortcut_fast.data.datasets import ImageFolder, TensorShards, find_shards

pytestmark = pytest.mark.usefixtures("single_thread")


def _shards(tmp_path, sizes=(3, 0, 4), shape=(2, 3)):
    """``.npy`` shards of int16 rows numbered across files, and their label files (label = global row % 3)."""
    files, labels, start = [], [], 0
    for i, n in enumerate(sizes):
        rows = np.arange(start, start + n, dtype=np.int16)
        files.append(tmp_path / f"x{i}.npy")
        labels.append(tmp_path / f"y{i}.npy")
        np.save(files[-1], np.broadcast_to(rows.reshape(-1, *[1] * len(shape)), (n, *shape)).copy())
        np.save(labels[-1], (rows % 3).astype(np.int32))
        start += n
    return files, labels


def _write_image(path, pixels):
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def _image_folder(tmp_path, per_class=2, size=(10, 8)):
    """``root/<class>/<n>.png|jpg``: classes given out of order; image k of class c is a flat colour."""
    root = tmp_path / "images"
    for c, name in enumerate(["dogs", "cats"]):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            suffix = ".png" if k % 2 == 0 else ".JPG"
            _write_image(root / name / f"{k}{suffix}", np.full((size[1], size[0], 3), 40 * c + 100 * k))
    return root


# ---------------------------------------------------------------- TensorShards
def test_shards_map_global_indices_across_files(tmp_path):
    files, labels = _shards(tmp_path)
    data = TensorShards(files, labels)
    assert len(data) == 7 and data.sample_shape == (2, 3) and data.num_classes == 3
    for i in range(7):
        x, label = data[i]
        assert x.dtype == torch.float32 and x.shape == (2, 3)
        assert torch.equal(x, torch.full((2, 3), float(i))) and label == i % 3
    assert torch.equal(data[-1][0], data[6][0]) and data[torch.tensor(4)][1] == 1
    with pytest.raises(IndexError):
        data[7]
    assert TensorShards(files)[5].shape == (2, 3)  # unlabelled: items are x alone


def test_safetensors_shards_with_labels_and_bf16(tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"x": torch.arange(8.0).view(2, 4).bfloat16(), "y": torch.tensor([4, 0])}, str(a))
    save_file({"x": torch.arange(8.0, 20.0).view(3, 4), "y": torch.tensor([1, 2, 3], dtype=torch.uint8)}, str(b))
    data = TensorShards([a, b])
    assert len(data) == 5 and data.num_classes == 5
    assert torch.equal(torch.stack([data[i][0] for i in range(5)]), torch.arange(20.0).view(5, 4))
    assert [data[i][1] for i in range(5)] == [4, 0, 1, 2, 3]
    # label files replace 'y', also for a mix of file types
    npy = tmp_path / "c.npy"
    np.save(npy, np.ones((1, 4), dtype=np.float64))
    label_files = [tmp_path / f"l{i}.npy" for i in range(3)]
    for path, n in zip(label_files, (2, 3, 1), strict=True):
        np.save(path, np.full(n, 7))
    mixed = TensorShards([a, b, npy], label_files)
    assert mixed.num_classes == 8 and torch.equal(mixed[5][0], torch.ones(4)) and mixed[0][1] == 7
    float_y = tmp_path / "float_y.safetensors"
    save_file({"x": torch.zeros(2, 4), "y": torch.zeros(2)}, str(float_y))
    assert TensorShards([float_y], label_files[:1])[1][1] == 7  # the unusable 'y' is never read


def test_shards_are_memory_mapped_and_pickle_without_their_data(tmp_path):
    big = tmp_path / "big.npy"
    np.save(big, np.arange(64 * 1024, dtype=np.float32).reshape(64, 1024))
    data = TensorShards([big])
    assert torch.equal(data[3], torch.arange(3 * 1024, 4 * 1024, dtype=torch.float32))
    assert isinstance(data._reader(0), np.memmap)
    blob = pickle.dumps(data)
    assert len(blob) < 4096  # paths and offsets, not the 256 KiB the memmap would copy
    assert torch.equal(pickle.loads(blob)[63], data[63])


def test_find_shards(tmp_path):
    files, _ = _shards(tmp_path, sizes=(1, 1))
    save_file({"x": torch.zeros(1, 2, 3)}, str(tmp_path / "z.safetensors"))
    (tmp_path / "notes.txt").write_text("not a shard")
    (tmp_path / "sub").mkdir()
    everything = sorted([*files, *(tmp_path / f"y{i}.npy" for i in range(2)), tmp_path / "z.safetensors"])
    assert find_shards(tmp_path) == everything
    assert find_shards(str(tmp_path / "x*.npy")) == files
    assert find_shards(files[1]) == [files[1]]
    for arg, match in [
        (tmp_path / "sub", "matches no"),
        (str(tmp_path / "q*.npy"), "matches no"),
        (tmp_path / "missing.npy", "does not exist"),
        (tmp_path / "notes.txt", ".npy or .safetensors"),
    ]:
        with pytest.raises(ValueError, match=match):
            find_shards(arg)


def test_shard_errors_name_the_file(tmp_path):
    files, labels = _shards(tmp_path, sizes=(2, 3))
    np.save(tmp_path / "wide.npy", np.zeros((2, 2, 4)))
    np.save(tmp_path / "short_labels.npy", np.zeros(2, dtype=np.int64))
    np.save(tmp_path / "float_labels.npy", np.zeros(2))
    np.save(tmp_path / "negative.npy", -np.ones(2, dtype=np.int64))
    np.save(tmp_path / "flags.npy", np.zeros((2, 3), dtype=bool))
    np.save(tmp_path / "flat.npy", np.zeros(4))
    np.save(tmp_path / "empty.npy", np.zeros((0, 2, 3)))
    (tmp_path / "garbage.npy").write_bytes(b"not an array")
    save_file({"x": torch.zeros(2, 2, 3), "y": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "yes.safetensors"))
    save_file({"z": torch.zeros(2, 2, 3)}, str(tmp_path / "nox.safetensors"))
    save_file({"x": torch.zeros(2, 2, 3), "y": torch.zeros(2)}, str(tmp_path / "fy.safetensors"))
    t = tmp_path
    cases = [
        ([t / "missing.npy"], None, f"{t / 'missing.npy'} does not exist"),
        ([t / "garbage.npy"], None, f"{t / 'garbage.npy'} is not a readable .npy"),
        ([t / "x.pt"], None, "must end in .npy or .safetensors"),
        (
            [files[0], t / "wide.npy"],
            None,
            f"mixed sizes: {t / 'wide.npy'} holds samples of shape \\(2, 4\\), but {files[0]} holds \\(2, 3\\)",
        ),
        (
            files,
            [labels[0], t / "short_labels.npy"],
            f"{t / 'short_labels.npy'} holds labels of shape \\(2,\\) "
            f"for the 3 rows of {files[1]}; need one integer label per row",
        ),
        (files, labels[:1], "got 1 label files for 2 shard files"),
        (files[:1], [t / "float_labels.npy"], "float64 labels; labels must be integers"),
        (files[:1], [t / "negative.npy"], "labels must be >= 0"),
        (files[:1], [t / "missing_labels.npy"], "label file .*missing_labels.npy does not exist"),
        ([files[0], t / "yes.safetensors"], None, f"{t / 'yes.safetensors'} has labels 'y' but {files[0]} does not"),
        ([t / "flags.npy"], None, "real \\(int or float\\) array .* got bool"),
        ([t / "flat.npy"], None, "at least 2 dimensions"),
        ([t / "empty.npy"], None, "hold no rows"),
        ([t / "nox.safetensors"], None, "must hold a tensor named 'x'.*found \\['z'\\]"),
        ([t / "fy.safetensors"], None, "labels 'y' must be integers, got F32"),
        ([], None, "at least one"),
    ]
    for shard_files, label_files, match in cases:
        with pytest.raises(ValueError, match=match):
            TensorShards(shard_files, label_files)


# ---------------------------------------------------------------- ImageFolder
def test_image_folder_classes_labels_and_values(tmp_path):
    root = _image_folder(tmp_path)
    (root / ".hidden").mkdir()
    (root / "cats" / "readme.txt").write_text("not an image")
    data = ImageFolder(root, 4, flip=False)
    assert data.classes == ["cats", "dogs"] and data.num_classes == 2 and len(data) == 4 and not data.skipped
    items = [data[i] for i in range(4)]
    assert [label for _, label in items] == [0, 0, 1, 1]
    for (x, label), k in zip(items, [0, 1, 0, 1], strict=True):
        assert x.shape == (3, 4, 4) and x.dtype == torch.float32
        level = 40 * (1 - label) + 100 * k  # cats were written second (c = 1)
        torch.testing.assert_close(x, torch.full((3, 4, 4), level / 127.5 - 1), atol=2 / 127.5, rtol=0)
    gray = ImageFolder(root, 5, channels=1)
    assert gray[0][0].shape == (1, 5, 5)


@pytest.mark.parametrize("landscape", [True, False])
def test_resize_and_center_crop_of_a_non_square_image(tmp_path, landscape):
    rows, cols = np.mgrid[0:8, 0:12]
    pattern = np.stack([cols * 20, rows * 30, np.full_like(rows, 255)], axis=-1)  # (8, 12, 3): 12 wide, 8 high
    if not landscape:
        pattern = pattern.transpose(1, 0, 2)  # 8 wide, 12 high
    (tmp_path / "c").mkdir()
    _write_image(tmp_path / "c" / "img.png", pattern)
    data = ImageFolder(tmp_path, 8, flip=False)
    # the shorter side is already 8: no resize, and the crop keeps the middle 8 of 12 (offset 2)
    middle = pattern[:, 2:10] if landscape else pattern[2:10, :]
    want = torch.from_numpy(middle.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.equal(data[0][0], want)
    # halving: bicubic down to 6x4 (or 4x6), crop offset 1
    small = ImageFolder(tmp_path, 4, flip=False)[0][0]
    resized = np.asarray(
        Image.fromarray(pattern.astype(np.uint8)).resize((6, 4) if landscape else (4, 6), Image.Resampling.BICUBIC),
        dtype=np.float32,
    )
    middle = resized[:, 1:5] if landscape else resized[1:5, :]
    assert torch.equal(small, torch.from_numpy(middle / 127.5 - 1).permute(2, 0, 1))
    assert torch.equal(small[2], torch.ones(4, 4))  # a flat channel stays flat through the resize


def test_flip_is_left_right_and_drawn_per_epoch(tmp_path):
    (tmp_path / "c").mkdir()
    _write_image(tmp_path / "c" / "img.png", np.arange(48).reshape(4, 4, 3) * 5)
    plain = ImageFolder(tmp_path, 4, flip=False)
    want = plain.load(tmp_path / "c" / "img.png")
    assert all(torch.equal(plain[0][0], want) for _ in range(5))
    data = ImageFolder(tmp_path, 4)
    draws = []
    for epoch in range(40):
        data.set_epoch(epoch)
        draws.append(data[0][0])
    flipped = sum(torch.equal(x, want.flip(-1)) for x in draws)
    assert sum(torch.equal(x, want) for x in draws) + flipped == 40 and 5 < flipped < 35


def test_unreadable_images_are_skipped_with_one_warning(tmp_path):
    root = _image_folder(tmp_path, per_class=3)
    (root / "cats" / "garbage.png").write_bytes(b"this is not a picture")
    good = (root / "dogs" / "0.png").read_bytes()
    (root / "dogs" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "dogs" / "empty.jpg").write_bytes(b"")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageFolder(root, 4, flip=False)
    assert len(caught) == 1 and "skipping 3 unreadable image file(s)" in str(caught[0].message)
    assert "garbage.png" in str(caught[0].message)
    assert sorted(p.name for p in data.skipped) == ["empty.jpg", "garbage.png", "truncated.png"]
    assert len(data) == 6 and [data[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]


def test_image_broken_after_construction_gives_the_next_one(tmp_path):
    root = _image_folder(tmp_path)
    data = ImageFolder(root, 4, flip=False)
    broken = data.samples[1][0]
    broken.write_bytes(b"gone bad")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        x, label = data[1]
    assert torch.equal(x, data[2][0]) and label == 1 and data.skipped == [broken]
    for path, _ in data.samples:
        path.write_bytes(b"gone bad")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the 4 images"):
        data[0]


def test_image_folder_errors_name_the_folder(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    for name in ("a", "b"):
        (tmp_path / "one_empty" / name).mkdir(parents=True)
    _write_image(tmp_path / "one_empty" / "a" / "ok.png", np.zeros((4, 4, 3)))
    (tmp_path / "bad" / "c").mkdir(parents=True)
    (tmp_path / "bad" / "c" / "x.png").write_bytes(b"junk")
    cases = [
        (tmp_path / "missing", "does not exist or is not a directory"),
        (tmp_path / "file.png", "does not exist or is not a directory"),
        (tmp_path / "flat", "has no class sub-folders"),
        (tmp_path / "one_empty", f"class folder {tmp_path / 'one_empty' / 'b'} holds no images"),
        (tmp_path / "bad", "holds no readable images"),
    ]
    for root, match in cases:
        with pytest.raises(ValueError, match=match), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ImageFolder(root, 4)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(tmp_path / "one_empty", 0)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(tmp_path / "one_empty", 4, channels=4)


# ---------------------------------------------------------------- loaders and the command line
def test_dataloader_workers_read_both_datasets(tmp_path):
    files, labels = _shards(tmp_path)
    extra = tmp_path / "extra.safetensors"
    save_file({"x": torch.arange(7.0, 9.0).view(2, 1, 1).expand(2, 2, 3).contiguous()}, str(extra))
    np.save(tmp_path / "extra_labels.npy", np.array([1, 2]))
    shards = TensorShards([*files, extra], [*labels, tmp_path / "extra_labels.npy"])
    shards[0], shards[8]  # the parent has both kinds of file open when the workers start
    x, y = torch.utils.data.default_collate(list(DataLoader(shards, batch_size=None, num_workers=2)))
    assert torch.equal(x[:, 0, 0], torch.arange(9.0)) and torch.equal(y, torch.arange(9) % 3)
    images = ImageFolder(_image_folder(tmp_path), 4, flip=False)
    batches = list(DataLoader(images, batch_size=2, num_workers=2))
    assert torch.equal(torch.cat([b[1] for b in batches]), torch.tensor([0, 0, 1, 1]))
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.stack([images[i][0] for i in range(4)]))


def _config(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(
        json.dumps(
            {"model": {"hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": 4}, "train": {"progress": False}}
        )
    )
    return str(cfg)


def test_cli_trains_on_an_image_folder(tmp_path, capsys):
    root = _image_folder(tmp_path)
    run = tmp_path / "run"
    base = [
        "train",
        "--data",
        str(root),
        "--out",
        str(run),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--config",
        _config(tmp_path),
    ]
    with pytest.raises(SystemExit):
        main(base)
    assert "give --image-size" in capsys.readouterr().err
    assert main([*base, "--image-size", "8"]) == 0
    model = sf.load_model(run)
    assert (model.in_channels, model.input_size, model.num_classes) == (3, 8, 2)


def test_cli_trains_on_shards(tmp_path):
    shard_dir = tmp_path / "latents"
    shard_dir.mkdir()
    files, labels = _shards(shard_dir, sizes=(3, 4), shape=(4, 8, 8))
    for path in labels:
        path.rename(tmp_path / path.name)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(shard_dir),
                "--labels",
                str(tmp_path / "y*.npy"),
                "--out",
                str(run),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--config",
                _config(tmp_path),
            ]
        )
        == 0
    )
    model = sf.load_model(run)
    assert (model.in_channels, model.input_size, model.num_classes) == (4, 8, 3)
    # several files, unlabelled
    assert (
        main(
            [
                "train",
                "--data",
                *map(str, files),
                "--out",
                str(tmp_path / "run2"),
                "--steps",
                "2",
                "--batch-size",
                "4",
                "--config",
                _config(tmp_path),
            ]
        )
        == 0
    )
    assert sf.load_model(tmp_path / "run2").num_classes == 0


def test_open_training_data_picks_the_reader(tmp_path):
    files, labels = _shards(tmp_path, sizes=(2, 3))
    data, example, classes = open_training_data(str(files[0]), str(labels[0]))
    assert isinstance(data, tuple) and data[0].shape == (2, 2, 3) and example.shape == (1, 2, 3) and classes == 2
    data, example, classes = open_training_data(str(tmp_path / "x*.npy"), [str(p) for p in labels])
    assert isinstance(data, TensorShards) and len(data) == 5 and example.shape == (1, 2, 3) and classes == 3
    data, example, classes = open_training_data([str(p) for p in files])
    assert isinstance(data, TensorShards) and classes == 0 and torch.equal(example, data[0][None])
    with pytest.raises(ValueError, match="--labels does not apply"):
        open_training_data(str(_image_folder(tmp_path)), str(labels[0]), 8)
