import numpy as np
import pytest
import torch
from safetensors import safe_open

import shortcut_fast.eval.metrics as metrics
from shortcut_fast.data.files import load_digits
from shortcut_fast.eval.metrics import (
    CLASSIFIER_FILENAME,
    DigitsClassifier,
    class_accuracy,
    frechet_distance,
    gaussian_frechet_distance,
    load_or_train_digits_classifier,
    random_directions,
    sliced_wasserstein,
    train_digits_classifier,
    wasserstein_1d,
)


def _random_spd(rng, f):
    m = rng.normal(size=(f, f))
    return m @ m.T + 0.1 * np.eye(f)


def _reference_fd(mu1, cov1, mu2, cov2):
    # tr sqrt(S1 S2) is the sum of square roots of the (real, >= 0) eigenvalues of S1 S2.
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvals(cov1 @ cov2).real, 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean)


# --- Fréchet distance ---------------------------------------------------------------------------------------------


def test_set_with_itself_is_zero():
    a = np.random.default_rng(0).normal(size=(500, 16)) * 3 + 1
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_closed_form():
    mu1, s1, mu2, s2 = 0.5, 2.0, -1.5, 0.25
    expected = (mu1 - mu2) ** 2 + (s1 - s2) ** 2
    got = gaussian_frechet_distance([mu1], [[s1**2]], [mu2], [[s2**2]])
    assert got == pytest.approx(expected, rel=1e-12)


def test_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    v1, v2 = rng.uniform(0.1, 4, size=6), rng.uniform(0.1, 4, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = gaussian_frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_commuting_covariances_closed_form():
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    v1, v2 = rng.uniform(0.1, 4, size=5), rng.uniform(0.1, 4, size=5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    cov1, cov2 = q @ np.diag(v1) @ q.T, q @ np.diag(v2) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    assert gaussian_frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_general_covariances_match_eigvals_reference(seed):
    rng = np.random.default_rng(seed)
    f = 8
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    cov1, cov2 = _random_spd(rng, f), _random_spd(rng, f)
    expected = _reference_fd(mu1, cov1, mu2, cov2)
    assert gaussian_frechet_distance(mu1, cov1, mu2, cov2) == pytest.approx(expected, rel=1e-8)


def test_large_samples_approach_closed_form():
    rng = np.random.default_rng(3)
    f = 4
    mu1, mu2 = rng.normal(size=f), rng.normal(size=f)
    cov1, cov2 = _random_spd(rng, f), _random_spd(rng, f)
    expected = _reference_fd(mu1, cov1, mu2, cov2)
    a = rng.multivariate_normal(mu1, cov1, size=100_000)
    b = rng.multivariate_normal(mu2, cov2, size=100_000)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_sample_statistics_are_mean_and_unbiased_covariance():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 2
    expected = gaussian_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_symmetric_and_permutation_invariant():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(300, 10))
    b = rng.normal(size=(200, 10)) @ rng.normal(size=(10, 10)) + 0.5
    d = frechet_distance(a, b)
    assert d > 0
    assert frechet_distance(b, a) == pytest.approx(d, rel=1e-9)
    assert frechet_distance(a[rng.permutation(300)], b[rng.permutation(200)]) == pytest.approx(d, rel=1e-9)


def test_tensors_match_arrays():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(64, 5)).astype(np.float32), rng.normal(size=(64, 5)).astype(np.float32)
    expected = frechet_distance(a, b)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-12)


def test_rank_deficient_covariances():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d >= 0
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # a shift moves only the mean term, even with singular covariances
    shift = rng.normal(size=64)
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    # identical rows: zero covariance
    c = np.ones((5, 64))
    assert frechet_distance(c, c) == 0.0
    assert frechet_distance(c, 2 * c) == pytest.approx(64.0)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.zeros(5), np.zeros((5, 2))),
        (np.zeros((5, 2, 1)), np.zeros((5, 2))),
        (np.zeros((5, 2)), np.zeros((5, 3))),
        (np.zeros((1, 2)), np.zeros((5, 2))),
        (np.zeros((5, 2)), np.zeros((1, 2))),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.zeros((5, 2))),
        (np.zeros((5, 2)), np.array([[0.0, np.inf], [1.0, 2.0]])),
    ],
)
def test_frechet_distance_rejects_bad_input(a, b):
    with pytest.raises(ValueError):
        frechet_distance(a, b)


@pytest.mark.parametrize(
    "args",
    [
        (np.zeros((2, 1)), np.eye(2), np.zeros(2), np.eye(2)),
        (np.zeros(2), np.eye(2), np.zeros(3), np.eye(3)),
        (np.zeros(2), np.eye(3), np.zeros(2), np.eye(2)),
        (np.zeros(2), np.eye(2), np.zeros(2), np.ones((2, 3))),
        (np.zeros(0), np.zeros((0, 0)), np.zeros(0), np.zeros((0, 0))),
        (np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2)),
    ],
)
def test_gaussian_frechet_distance_rejects_bad_input(args):
    with pytest.raises(ValueError):
        gaussian_frechet_distance(*args)


# --- digits classifier --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_split():
    x, y = load_digits()
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    n_train = int(0.8 * len(x))
    return x[perm[:n_train]], y[perm[:n_train]], x[perm[n_train:]], y[perm[n_train:]]


@pytest.fixture(scope="module")
def held_out_classifier(digits_split):
    x_train, y_train, _, _ = digits_split
    return train_digits_classifier(x_train, y_train, seed=0)


@pytest.mark.slow
def test_classifier_generalizes(digits_split, held_out_classifier):
    _, _, x_test, y_test = digits_split
    accuracy = (held_out_classifier.predict(x_test) == y_test).double().mean().item()
    assert accuracy >= 0.97


@pytest.mark.slow
def test_classifier_outputs_and_mode(digits_split, held_out_classifier):
    x = digits_split[2][:7]
    clf = held_out_classifier
    assert not clf.training
    assert not any(p.requires_grad for p in clf.parameters())
    assert clf.features(x).shape == (7, 64)
    logits = clf(x)
    assert logits.shape == (7, 10)
    torch.testing.assert_close(clf.head(clf.features(x)), logits)
    assert torch.equal(clf.predict(x), logits.argmax(1))
    with pytest.raises(ValueError):
        clf(torch.zeros(2, 64))


@pytest.mark.slow
def test_class_accuracy(digits_split, held_out_classifier):
    _, _, x_test, y_test = digits_split
    predicted = held_out_classifier.predict(x_test)
    expected = (predicted == y_test).double().mean().item()
    assert class_accuracy(held_out_classifier, x_test, y_test) == pytest.approx(expected)
    # a single requested label applies to every image
    share_of_threes = (predicted == 3).double().mean().item()
    assert class_accuracy(held_out_classifier, x_test, 3) == pytest.approx(share_of_threes)
    with pytest.raises(ValueError):
        class_accuracy(held_out_classifier, x_test, y_test[:-1])
    with pytest.raises(TypeError):
        class_accuracy(held_out_classifier, x_test, y_test.float())


def test_training_is_deterministic(digits_split):
    x, y = digits_split[0][:300], digits_split[1][:300]
    first = train_digits_classifier(x, y, seed=3, steps=30)
    second = train_digits_classifier(x, y, seed=3, steps=30)
    other = train_digits_classifier(x, y, seed=4, steps=30)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not all(torch.equal(v, other.state_dict()[k]) for k, v in first.state_dict().items())


def test_training_leaves_global_state_alone(digits_split):
    threads = torch.get_num_threads()
    rng_state = torch.get_rng_state()
    train_digits_classifier(digits_split[0][:50], digits_split[1][:50], seed=0, steps=5)
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), rng_state)


def test_train_rejects_bad_input():
    x, y = torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError):
        train_digits_classifier(x.view(4, 64), y)
    with pytest.raises(ValueError):
        train_digits_classifier(x, y[:3])
    with pytest.raises(ValueError):
        train_digits_classifier(x, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(TypeError):
        train_digits_classifier(x, y.float())
    with pytest.raises(ValueError):
        train_digits_classifier(x, y, steps=0)


def _fast_trainer(monkeypatch, calls):
    real = metrics.train_digits_classifier

    def trainer(x, y, *, seed):
        calls.append(seed)
        return real(x, y, seed=seed, steps=20)

    monkeypatch.setattr(metrics, "train_digits_classifier", trainer)


@pytest.mark.slow
def test_cache_round_trip_does_not_retrain(tmp_path, monkeypatch):
    first = load_or_train_digits_classifier(tmp_path, seed=0)
    path = tmp_path / CLASSIFIER_FILENAME
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [CLASSIFIER_FILENAME]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["seed"] == "0"
    mtime = path.stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("retrained although a cached classifier exists")

    monkeypatch.setattr(metrics, "train_digits_classifier", fail)
    second = load_or_train_digits_classifier(tmp_path, seed=0)
    assert isinstance(second, DigitsClassifier)
    assert not second.training
    assert not any(p.requires_grad for p in second.parameters())
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert path.stat().st_mtime_ns == mtime


def test_cache_with_other_seed_or_unreadable_file_retrains(tmp_path, monkeypatch):
    calls = []
    _fast_trainer(monkeypatch, calls)
    path = tmp_path / CLASSIFIER_FILENAME
    load_or_train_digits_classifier(tmp_path, seed=1)
    load_or_train_digits_classifier(tmp_path, seed=1)
    assert calls == [1]
    load_or_train_digits_classifier(tmp_path, seed=2)
    assert calls == [1, 2]
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["seed"] == "2"
    path.write_bytes(b"not a safetensors file")
    load_or_train_digits_classifier(tmp_path, seed=2)
    assert calls == [1, 2, 2]
    load_or_train_digits_classifier(None, seed=2)
    assert calls == [1, 2, 2, 2]


# --- sliced Wasserstein distance ----------------------------------------------------------------------------------


def test_swd_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(300, 5))
    assert sliced_wasserstein(a, a) == 0.0
    assert sliced_wasserstein(a, a[::-1].copy()) == pytest.approx(0.0, abs=1e-12)  # order does not matter


def test_swd_of_a_shift_closed_form():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(400, 3))
    u = np.array([1.0, -2.0, 0.5]) / np.linalg.norm([1.0, -2.0, 0.5])
    s = 0.7
    theta = random_directions(3, 64, seed=5)
    # every projection is shifted by s <u, theta>: W_2 on that direction is |s <u, theta>|
    expected = abs(s) * np.sqrt(np.mean((theta @ u) ** 2))
    got = sliced_wasserstein(a, a + s * u, num_projections=64, seed=5)
    assert got == pytest.approx(expected, rel=1e-10)
    # p = 1: the mean of |s <u, theta>|
    got1 = sliced_wasserstein(a, a + s * u, num_projections=64, seed=5, p=1)
    assert got1 == pytest.approx(abs(s) * np.mean(np.abs(theta @ u)), rel=1e-10)


def test_swd_one_dimension_is_the_sorted_difference_formula():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(50, 1)), rng.uniform(-3, 3, size=(50, 1))
    expected = np.sqrt(np.mean((np.sort(a[:, 0]) - np.sort(b[:, 0])) ** 2))
    assert sliced_wasserstein(a, b) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(a, b, p=1) == pytest.approx(np.mean(np.abs(np.sort(a[:, 0]) - np.sort(b[:, 0]))))


def test_wasserstein_1d_unequal_sizes_closed_form():
    # {0, 1} against {0, 0.5, 1, 1.5}: the quantile functions differ by 0, 0.5, 0, 0.5 on quarters
    a = np.array([[0.0], [1.0]])
    b = np.array([[0.0], [0.5], [1.0], [1.5]])
    assert wasserstein_1d(a, b, p=1)[0] == pytest.approx(0.25)
    assert wasserstein_1d(a, b, p=2)[0] == pytest.approx(np.sqrt(0.125))
    # a set against its copy repeated (the same distribution) is 0
    c = np.random.default_rng(3).normal(size=(7, 2))
    assert np.allclose(wasserstein_1d(c, np.concatenate([c, c, c])), 0.0)
    # a point mass against a set: the root mean square distance to it
    assert wasserstein_1d(np.zeros((1, 1)), b)[0] == pytest.approx(np.sqrt(np.mean(b**2)))


def test_swd_symmetric_and_fixed_by_seed():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 4)), rng.normal(size=(150, 4)) + 0.3
    assert sliced_wasserstein(a, b) == pytest.approx(sliced_wasserstein(b, a), rel=1e-12)
    assert sliced_wasserstein(a, b, seed=3) == sliced_wasserstein(a, b, seed=3)
    assert sliced_wasserstein(a, b, seed=3) != sliced_wasserstein(a, b, seed=4)
    assert sliced_wasserstein(torch.from_numpy(a).float(), b) == pytest.approx(sliced_wasserstein(a, b), rel=1e-6)


def test_random_directions_are_unit_and_seeded():
    theta = random_directions(5, 100, seed=7)
    assert theta.shape == (100, 5)
    assert np.allclose(np.linalg.norm(theta, axis=1), 1.0)
    assert np.array_equal(theta, random_directions(5, 100, seed=7))
    assert not np.array_equal(theta, random_directions(5, 100, seed=8))
    # uniform on the sphere: the mean squared projection on any axis is 1/dim
    many = random_directions(3, 20000, seed=0)
    assert np.allclose(np.mean(many**2, axis=0), 1 / 3, atol=0.01)


@pytest.mark.parametrize(
    "a, b, kwargs",
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), {}),
        (np.zeros((0, 2)), np.zeros((3, 2)), {}),
        (np.full((3, 2), np.nan), np.zeros((3, 2)), {}),
        (np.zeros(3), np.zeros(3), {}),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"p": 0.5}),
        (np.zeros((3, 2)), np.zeros((3, 2)), {"num_projections": 0}),
    ],
)
def test_swd_rejects_bad_input(a, b, kwargs):
    with pytest.raises(ValueError):
        sliced_wasserstein(a, b, **kwargs)


# --- the digits scorer -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_classifier():
    # a briefly trained classifier: the scorer's arithmetic does not depend on how good its features are
    x, y = load_digits()
    return train_digits_classifier(x, y, seed=0, steps=100)


def test_digits_scorer_floor_and_scores(quick_classifier):
    x, y = load_digits()
    scorer = metrics.DigitsScorer(quick_classifier, 300, seed=5)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        feats = quick_classifier.features(x)
    # the floor: FD between the second and the first disjoint set of 300 real digits, in the seed's order
    assert scorer.floor == pytest.approx(frechet_distance(feats[order[300:600]], feats[order[:300]]))
    # a third disjoint real set of the same size scores near the floor; the same images as the reference score 0
    third = order[600:900]
    real = scorer.score(x[third], y[third])
    assert real["fd"] == pytest.approx(frechet_distance(feats[third], feats[order[:300]]))
    assert 0.6 < real["fd_over_floor"] < 1.6
    assert real["accuracy"] == pytest.approx(class_accuracy(quick_classifier, x[third], y[third]))
    assert scorer.score(x[order[:300]], y[order[:300]])["fd"] == pytest.approx(0.0, abs=1e-6)
    # noise scores far above the floor
    noise = torch.rand(300, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert scorer.score(noise, 0)["fd_over_floor"] > 5


@pytest.mark.parametrize("size", [1, 899, 2.5, True])
def test_digits_scorer_rejects_sizes(quick_classifier, size):
    with pytest.raises(ValueError, match=r"size must be an int in \[2, 898\]"):
        metrics.DigitsScorer(quick_classifier, size)
