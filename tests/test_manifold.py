"""Precision, recall, density and coverage: the package's numbers on the same rows, and what they are known to
be on simulated features whose truth is known (Naeem et al. 2020, section 4)."""
import numpy as np
import pytest
from prdc import compute_prdc

from harness.protocol.manifold import manifold_metrics


def gaussian(n, shift=0.0, scale=1.0, seed=0, dim=64):
    return (np.random.default_rng(seed).standard_normal((n, dim)) * scale + shift).astype(np.float32)


def test_the_metrics_are_the_prdc_packages_on_the_first_rows_of_each_side():
    generated, reference = gaussian(700, seed=1), gaussian(900, seed=2)
    ours = manifold_metrics(generated, reference, k=3, max_rows=500)
    theirs = compute_prdc(real_features=reference[:500], fake_features=generated[:500], nearest_k=3)
    assert ours == {**{k: pytest.approx(float(v), abs=0) for k, v in theirs.items()}, "manifold_k": 3,
                    "manifold_rows": 500}
    assert manifold_metrics(generated[:4], reference, k=3, max_rows=500) is None  # fewer rows than k + 2


def test_on_simulated_features_they_separate_fidelity_from_diversity():
    """The same distribution: density near 1 (its expectation), coverage near 1 - 2^-k, and precision equal
    to recall (in 64 dimensions with k = 3 both are about 0.6, not 1: the k-NN balls are small there). A
    generator collapsed to a quarter of the real spread keeps precision and loses recall (and is over-dense);
    one spread beyond it keeps recall and loses precision and density."""
    real = gaussian(2000, seed=3)
    same = manifold_metrics(gaussian(2000, seed=4), real, k=3, max_rows=2000)
    assert same["density"] == pytest.approx(1.0, abs=0.1)
    assert same["coverage"] == pytest.approx(1 - 2 ** -3, abs=0.05)
    assert same["precision"] == pytest.approx(same["recall"], abs=0.05) and 0.4 < same["precision"] < 0.8
    collapsed = manifold_metrics(gaussian(2000, scale=0.25, seed=5), real, k=3, max_rows=2000)
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.05 and collapsed["density"] > 2
    spread = manifold_metrics(gaussian(2000, scale=1.5, seed=6), real, k=3, max_rows=2000)
    assert spread["precision"] < 0.05 and spread["density"] < 0.05 and spread["recall"] > 0.95
