"""Initialisation: centres from a driver-side sample, then one pass over all data.

References: scikit-learn's KMeans / kmeans_plusplus on the same sample and
seed, and the ground truth of well-separated generated blobs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.cluster import KMeans, kmeans_plusplus

import dem
from dem.data.record import Partition
from dem.families import mixture_init as gmm_init


def _match(found: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Permutation p with found[p[k]] nearest truth[k] (small K: brute force)."""
    K = len(truth)
    best = min(itertools.permutations(range(K)),
               key=lambda p: sum(np.linalg.norm(found[p[k]] - truth[k]) for k in range(K)))
    return np.array(best)


def test_sample_size():
    assert gmm_init.sample_size(500, 3) == 500
    assert gmm_init.sample_size(10**6, 3) == 20_000
    assert gmm_init.sample_size(10**6, 400) == 80_000
    assert gmm_init.sample_size(50_000, 400) == 50_000


def test_sample_is_row_keyed_and_does_not_depend_on_the_partitioning(rng):
    X = rng.normal(size=(1000, 2))
    w = rng.uniform(size=1000)
    fraction = 0.3

    def sample(cuts):
        bounds = [0, *cuts, 1000]
        shared = ((5,), fraction, False, False)  # seeds, fraction, missing, k-means‖ race
        parts = [gmm_init._sample_partition(shared, Partition(X[a:b], w[a:b], start=a))[0][0]
                 for a, b in zip(bounds, bounds[1:])]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    Xs, ws = sample([])
    # A Bernoulli(0.3) sample of 1000 rows: its size is within 5 standard deviations of 300.
    assert abs(len(Xs) - 300) < 5 * np.sqrt(1000 * 0.3 * 0.7)
    # Rows are distinct rows of the data, in order, with their own weights.
    idx = np.array([np.flatnonzero((X == row).all(axis=1))[0] for row in Xs])
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(ws, w[idx])
    # The same rows whatever the cuts; another seed draws other rows.
    for cuts in ([1], [333, 334], [100, 500, 999]):
        np.testing.assert_array_equal(sample(cuts)[0], Xs)
    other = gmm_init._sample_partition(((6,), fraction, False, False), Partition(X, w))[0][0][0]
    assert not np.array_equal(other, Xs)
    # A fraction of 1 is the whole partition.
    whole = gmm_init._sample_partition(((5,), 1.0, False, False), Partition(X))[0][0]
    np.testing.assert_array_equal(whole[0], X)
    assert whole[1] is None


def test_kmeans_centres_are_sklearns(rng):
    sample = rng.normal(size=(400, 3))
    ours = gmm_init.centres("kmeans", sample, None, 4, seed=123)
    ref = KMeans(n_clusters=4, n_init=1, random_state=123).fit(sample).cluster_centers_
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


def test_kmeans_plusplus_centres_are_sklearns(rng):
    sample = rng.normal(size=(400, 3))
    ours = gmm_init.centres("k-means++", sample, None, 4, seed=77)
    ref, _ = kmeans_plusplus(sample, 4, random_state=77)
    np.testing.assert_array_equal(ours, ref)


def test_random_from_data_picks_distinct_rows_with_positive_weight(rng):
    sample = rng.normal(size=(50, 2))
    weights = np.zeros(50)
    weights[[3, 9, 17, 30, 44]] = 1.0
    c = gmm_init.centres("random_from_data", sample, weights, 3, seed=1)
    rows = [int(np.flatnonzero((sample == r).all(axis=1))[0]) for r in c]
    assert len(set(rows)) == 3 and set(rows) <= {3, 9, 17, 30, 44}


def test_random_centres_are_the_weighted_mean(rng):
    sample = rng.normal(size=(50, 2))
    w = rng.uniform(size=50)
    c = gmm_init.centres("random", sample, w, 3, seed=1)
    np.testing.assert_allclose(c, np.repeat([(w[:, None] * sample).sum(0) / w.sum()], 3, axis=0),
                               rtol=1e-12)


def test_unknown_method_raises(rng):
    with pytest.raises(ValueError, match="init_params must be one of"):
        gmm_init.centres("bogus", rng.normal(size=(10, 2)), None, 2, seed=0)


@pytest.mark.parametrize("method", ["kmeans", "k-means++"])
@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
@pytest.mark.parametrize("partition_rows", [None, 100])
def test_initial_parameters_are_the_ground_truth_clusters(blobs, method, ct, partition_rows):
    # Blobs far apart: the centre-based init assigns every row to its own blob,
    # so max_iter=0 gives the empirical parameters of the true clusters.
    X, labels = blobs
    reg = 1e-6
    est = dem.GaussianMixture(3, covariance_type=ct, init_params=method, max_iter=0,
                              random_state=4, reg_covar=reg, partition_rows=partition_rows).fit(X)
    K, D = 3, X.shape[1]
    truth_means = np.stack([X[labels == k].mean(axis=0) for k in range(K)])
    p = _match(est.means_, truth_means)
    np.testing.assert_allclose(est.means_[p], truth_means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.weights_[p], np.bincount(labels) / len(X), rtol=1e-10)
    covs = np.stack([np.cov(X[labels == k].T, bias=True) for k in range(K)])
    if ct == "full":
        np.testing.assert_allclose(est.covariances_[p], covs + reg * np.eye(D), rtol=1e-9)
    elif ct == "tied":
        nk = np.bincount(labels)
        tied = (nk[:, None, None] * covs).sum(axis=0) / len(X)
        np.testing.assert_allclose(est.covariances_, tied + reg * np.eye(D), rtol=1e-9)
    elif ct == "diag":
        np.testing.assert_allclose(est.covariances_[p],
                                   np.stack([np.diag(c) for c in covs]) + reg, rtol=1e-9)
    else:
        np.testing.assert_allclose(est.covariances_[p],
                                   np.array([np.trace(c) / D for c in covs]) + reg, rtol=1e-9)


def test_random_init_starts_every_component_near_the_global_moments(blobs):
    # Uniform random responsibilities: each component gets ≈ 1/K of every row,
    # so its mean is near the global mean (tolerance: a few standard errors).
    X, _ = blobs
    est = dem.GaussianMixture(3, init_params="random", max_iter=0, random_state=0).fit(X)
    np.testing.assert_allclose(est.weights_.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(est.weights_, 1 / 3, atol=0.03)
    sem = X.std(axis=0) / np.sqrt(len(X) / 3)
    assert (np.abs(est.means_ - X.mean(axis=0)) < 6 * sem).all()
    np.testing.assert_allclose(est.covariances_, np.repeat(np.cov(X.T)[None], 3, axis=0),
                               rtol=0.1, atol=0.1 * np.abs(np.cov(X.T)).max())


def test_kmeans_init_on_a_sample_of_large_data_still_finds_the_clusters():
    # 40 000 rows: the centres come from a 20 000-row sample drawn from every
    # partition, the assignment pass still covers all rows.
    rng = np.random.default_rng(1)
    truth = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = rng.integers(0, 3, size=40_000)
    X = truth[labels] + rng.normal(size=(40_000, 2))
    est = dem.GaussianMixture(3, max_iter=0, random_state=2, partition_rows=5000).fit(X)
    truth_means = np.stack([X[labels == k].mean(axis=0) for k in range(3)])
    p = _match(est.means_, truth_means)
    np.testing.assert_allclose(est.means_[p], truth_means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(est.weights_[p], np.bincount(labels) / len(X), rtol=1e-10)


def test_same_random_state_gives_bitwise_the_same_start(blobs):
    X, _ = blobs
    a = dem.GaussianMixture(3, init_params="random_from_data", max_iter=0, random_state=9).fit(X)
    b = dem.GaussianMixture(3, init_params="random_from_data", max_iter=0, random_state=9).fit(X)
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
