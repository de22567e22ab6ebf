"""FID: the plumbing with a substitute feature extractor, our Fréchet distance against torchmetrics', npz statistics."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import shortcut_fast as sf
from shortcut_fast.cli import main
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
    with pytest.raises(ValueError, match="exactly one of inception"):
        fid.fid(images(4, 0), images(4, 1))
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
