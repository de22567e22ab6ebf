"""IDX files (MNIST's format): round trips, damaged files, directories of them, and the real Fashion-MNIST."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import require_fashion_mnist

import shortcut_fast as sf
from shortcut_fast.checkpoint import resolve_checkpoint
from shortcut_fast.cli import main, open_training_data
from shortcut_fast.data.idx import idx_files, is_idx_dir, load_idx_dir, read_idx, read_idx_images, read_idx_labels

pytestmark = pytest.mark.usefixtures("single_thread")


# IDX element type codes of the specification, by numpy dtype
TYPE_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(
    path: Path, array: np.ndarray, *, gz: bool = False, magic: bytes | None = None, tail: bytes = b""
) -> Path:
    """``array`` as an IDX file written from the specification with struct (big-endian), optionally gzipped."""
    code = TYPE_CODES[array.dtype.type]
    header = magic if magic is not None else bytes([0, 0, code, array.ndim])
    body = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(array.dtype.newbyteorder(">")).tobytes()
    body += tail
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


def fake_set(root: Path, n: int = 6, *, split: str = "train", gz: bool = True, labels: int | None = None) -> tuple:
    """A split of ``n`` random 5x4 images and labels in 0..9 under ``root`` with the standard names."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 5, 4), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the byte range
    y = rng.integers(0, 10, n if labels is None else labels, dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if gz else ""
    write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images, gz=gz)
    write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", y, gz=gz)
    return images, y


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_round_trip_of_images_labels_and_other_types(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 3, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    got = read_idx_images(write_idx(tmp_path / "i", images, gz=gz))
    assert got.dtype == np.uint8 and got.shape == (7, 3, 5) and np.array_equal(got, images)
    assert np.array_equal(read_idx_labels(write_idx(tmp_path / "l", labels, gz=gz)), labels)
    # the other element types come back in native byte order with their values
    for dtype in (np.int8, np.int16, np.int32, np.float32, np.float64):
        array = (rng.standard_normal((2, 3, 2, 2)) * 100).astype(dtype)
        got = read_idx(write_idx(tmp_path / f"{np.dtype(dtype).name}", array, gz=gz))
        assert got.dtype == np.dtype(dtype) and got.dtype.isnative and np.array_equal(got, array)
    # gzip is told by its magic bytes, not by the name
    assert np.array_equal(read_idx_images(write_idx(tmp_path / "plain.gz", images, gz=False)), images)
    assert got.flags.writeable  # torch.from_numpy takes it without a warning


def test_load_idx_dir_gives_the_training_convention(tmp_path):
    train_x, train_y = fake_set(tmp_path, 6, gz=True)
    test_x, test_y = fake_set(tmp_path, 3, split="test", gz=False)
    for split, (pixels, y) in {"train": (train_x, train_y), "test": (test_x, test_y)}.items():
        x, labels = load_idx_dir(tmp_path, split)
        assert x.dtype == torch.float32 and x.shape == (len(pixels), 1, 5, 4)
        # bytes 0..255 linearly onto [-1, 1], as ImageFolder maps them
        np.testing.assert_allclose(x[:, 0].numpy(), pixels.astype(np.float64) / 127.5 - 1, rtol=0, atol=1e-6)
        assert labels.dtype == torch.int64 and labels.tolist() == y.tolist()
    assert x.min() >= -1 and x.max() <= 1 and float(load_idx_dir(tmp_path)[0][0, 0, 0, 1]) == 1.0
    assert is_idx_dir(tmp_path) and not is_idx_dir(tmp_path / "train-images-idx3-ubyte.gz")


# ---------------------------------------------------------------- damaged files
def test_damaged_files_are_refused_with_the_file_and_the_expectation(tmp_path):
    images = np.zeros((4, 3, 2), np.uint8)
    good = write_idx(tmp_path / "good", images).read_bytes()
    cases = {
        "short": (
            good[:-1],
            "is truncated: the header's shape \\(4, 3, 2\\) of uint8 needs 24 bytes of data, found 23",
        ),
        "short_header": (good[:9], "truncated in its header: 3 dimension sizes need 12 bytes, found 5"),
        "trailing": (good + b"\0", "has bytes after its data: .* needs 24 bytes"),
        "not_idx": (b"\x89PNG\r\n\x1a\n" + good, "is not an IDX file: it starts with 89504e47"),
        "empty": (b"", "is not an IDX file: it starts with nothing"),
        "bad_type": (b"\0\0\x0a\x03" + good[4:], "unknown IDX element type 0x0a"),
        "no_dims": (b"\0\0\x08\x00", "0 dimensions"),
        "huge_claim": (b"\0\0\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + good[16:], "truncated"),
    }
    for name, (data, match) in cases.items():
        for gz in (False, True):
            path = tmp_path / f"{name}{'.gz' if gz else ''}"
            path.write_bytes(gzip.compress(data) if gz else data)
            with pytest.raises(ValueError, match=match) as err:
                read_idx(path)
            assert str(path) in str(err.value), name
    gz = tmp_path / "cut.gz"
    gz.write_bytes(gzip.compress(good)[:-12])  # a gzip stream that stops before its end
    with pytest.raises(ValueError, match=f"{gz} is not a readable gzip file"):
        read_idx(gz)
    with pytest.raises(ValueError, match="does not exist"):
        read_idx(tmp_path / "missing")


def test_wrong_kind_of_file_names_the_expected_magic(tmp_path):
    labels = write_idx(tmp_path / "labels", np.zeros(4, np.uint8))
    images2d = write_idx(tmp_path / "images2d", np.zeros((4, 9), np.uint8))  # magic 0x802: one dimension short
    floats = write_idx(tmp_path / "floats", np.zeros((4, 3, 3), np.float32))
    for path, reader, match in [
        (labels, read_idx_images, "not images: expected the magic number 0x00000803 \\(uint8, 3 dimensions\\)"),
        (images2d, read_idx_images, "magic 0x00000802.*expected the magic number 0x00000803"),
        (floats, read_idx_images, "float32 data .*0x00000803"),
        (images2d, read_idx_labels, "not labels: expected the magic number 0x00000801 \\(uint8, 1 dimension\\)"),
    ]:
        with pytest.raises(ValueError, match=match) as err:
            reader(path)
        assert str(path) in str(err.value)


def test_directory_errors(tmp_path):
    fake_set(tmp_path / "mismatch", 5, labels=4)
    with pytest.raises(ValueError, match="holds 4 labels but .*train-images-idx3-ubyte.gz holds 5 images"):
        load_idx_dir(tmp_path / "mismatch")
    partial = tmp_path / "partial"
    fake_set(partial, 3, split="test")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(partial / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="lacks train-labels-idx1-ubyte\\[.gz\\] \\(found: t10k-images"):
        load_idx_dir(partial, "train")
    with pytest.raises(ValueError, match="'test' split: it lacks t10k-labels-idx1-ubyte\\[.gz\\]"):
        load_idx_dir(partial, "test")
    with pytest.raises(ValueError, match="split must be one of 'train', 'test'"):
        idx_files(partial, "validation")
    both = tmp_path / "both"
    fake_set(both, 2, gz=True)
    fake_set(both, 2, gz=False)
    with pytest.raises(ValueError, match="both train-images-idx3-ubyte and train-images-idx3-ubyte.gz"):
        load_idx_dir(both)
    with pytest.raises(ValueError, match="does not exist or is not a directory"):
        load_idx_dir(tmp_path / "nowhere")


def test_cli_reads_an_idx_directory_and_refuses_a_partial_one(tmp_path, capsys):
    pixels, y = fake_set(tmp_path / "set", 6)
    data, example, classes = open_training_data(str(tmp_path / "set"))
    x, labels = data
    assert x.shape == (6, 1, 5, 4) and example.shape == (1, 1, 5, 4) and labels.tolist() == y.tolist()
    assert classes == int(y.max()) + 1
    with pytest.raises(ValueError, match="--labels does not apply to the IDX directory"):
        open_training_data(str(tmp_path / "set"), str(tmp_path / "y.npy"))
    with pytest.raises(ValueError, match="are 5x4 and are not resized"):
        open_training_data(str(tmp_path / "set"), image_size=8)
    only_test = tmp_path / "only_test"
    fake_set(only_test, 3, split="test")
    with pytest.raises(SystemExit) as code:
        main(["train", "--data", str(only_test), "--out", str(tmp_path / "run"), "--steps", "1"])
    assert code.value.code == 2
    assert (
        "not a complete IDX set for the 'train' split: it lacks train-images-idx3-ubyte[.gz]" in capsys.readouterr().err
    )


# ---------------------------------------------------------------- the real Fashion-MNIST (Debian package)
@pytest.fixture(scope="module")
def fashion() -> Path:
    """The Fashion-MNIST directory of the Debian package dataset-fashion-mnist (fails under CI when absent)."""
    return require_fashion_mnist()


def test_real_fashion_mnist(fashion):
    train_x, train_y = load_idx_dir(fashion, "train")
    test_x, test_y = load_idx_dir(fashion, "test")
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    # a published property of Fashion-MNIST: 10 classes, exactly 6000 training and 1000 test images each
    assert train_y.bincount().tolist() == [6000] * 10 and test_y.bincount().tolist() == [1000] * 10
    assert train_x.min() == -1 and train_x.max() == 1
    # the bytes as a plain parse of the test file (16-byte header) gives them
    raw = np.frombuffer(gzip.decompress((fashion / "t10k-images-idx3-ubyte.gz").read_bytes()), np.uint8, offset=16)
    np.testing.assert_array_equal(((test_x + 1) * 127.5).round().to(torch.uint8).numpy().ravel(), raw)
    labels = np.frombuffer(gzip.decompress((fashion / "t10k-labels-idx1-ubyte.gz").read_bytes()), np.uint8, offset=8)
    assert test_y.tolist() == labels.tolist()


@pytest.mark.slow
def test_cli_trains_on_real_fashion_mnist(fashion, tmp_path):
    run, cfg = tmp_path / "run", tmp_path / "run.json"
    model = {"hidden_size": 32, "depth": 1, "num_heads": 2, "patch_size": 4}
    cfg.write_text(json.dumps({"model": model, "train": {"batch_size": 32, "progress": False, "log_every": 1}}))
    assert main(["train", "--data", str(fashion), "--config", str(cfg), "--out", str(run), "--steps", "8"]) == 0
    meta = json.loads((resolve_checkpoint(run) / "trainer.json").read_text())
    assert meta["step"] == 8
    trained = sf.load_model(run)
    assert isinstance(trained, sf.ShortcutDiT)
    assert (trained.in_channels, trained.input_size, trained.num_classes) == (1, 28, 10)
    x = sf.sample(trained, shape=(2, 1, 28, 28), steps=1, y=torch.tensor([0, 9]))
    assert x.shape == (2, 1, 28, 28) and bool(torch.isfinite(x).all())
