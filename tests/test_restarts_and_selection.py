"""Restarts sharing passes, k-means‖, model selection by BIC, deterministic annealing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import zarr
from sklearn.cluster import kmeans_plusplus
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.data.row_sources import ZarrRows
from dem.data.record import Partition
from dem.data.row_random import content_uniforms, row_hashes, weighted_race
from dem.engine import kmeans_parallel as kmp

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bound_", "n_iter_")


def _quiet(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, **kw)


@pytest.fixture(scope="module")
def grid_blobs():
    """Nine well-separated clusters on a 3x3 grid (known truth)."""
    rng = np.random.default_rng(1)
    centres = np.array([(i, j) for i in range(3) for j in range(3)], dtype=float) * 10.0
    labels = rng.integers(0, 9, size=9000)
    return centres[labels] + rng.normal(size=(9000, 2)), centres


# -- restarts in one pass --------------------------------------------------

def test_restarts_in_one_pass_equal_separate_fits(grid_blobs):
    # Restarts sharing a pass stack their components into one wider product,
    # which BLAS may round differently from a product of one member's rows, so
    # restart r equals the separate fit with random_state + r to rounding
    # (tests/families/test_gaussian_kernel.py bounds one E-step's difference).
    X, _ = grid_blobs
    kw = dict(covariance_type="full", max_iter=15, tol=1e-6, partition_rows=1000)
    together = _quiet(dem.GaussianMixture(9, n_init=4, random_state=20, **kw), X)
    alone = [_quiet(dem.GaussianMixture(9, random_state=20 + r, **kw), X) for r in range(4)]
    for r, single in enumerate(alone):
        np.testing.assert_allclose(together.restarts_[r]["lower_bound"], single.lower_bound_, rtol=1e-10)
        np.testing.assert_allclose([h["objective"] for h in together.restarts_[r]["history"]],
                                   single.lower_bounds_, rtol=1e-10)
    # Restarts that reach the same optimum tie to rounding: the one chosen has the best bound.
    bounds = np.array([s.lower_bound_ for s in alone])
    chosen = together.best_restart_
    assert bounds[chosen] >= bounds.max() - 1e-10 * abs(bounds.max())
    for name in FITTED:
        np.testing.assert_allclose(getattr(together, name), getattr(alone[chosen], name), rtol=1e-7,
                                   atol=1e-9, err_msg=name)


def test_restarts_read_each_partition_once_per_iteration(tmp_path, monkeypatch, grid_blobs):
    X, _ = grid_blobs
    path = str(tmp_path / "x.zarr")
    zarr.open_group(path, mode="w").create_array("X", data=X, chunks=(1000, 2))
    reads = []
    original = ZarrRows.read
    # Consecutive partitions may be read in one call (a slab): count rows, not calls.
    monkeypatch.setattr(ZarrRows, "read", lambda self, a, b, out=None: (reads.append(b - a), original(self, a, b, out))[1])

    def reads_for(n_init: int, max_iter: int) -> int:
        reads.clear()
        _quiet(dem.GaussianMixture(9, n_init=n_init, random_state=0, max_iter=max_iter, tol=0.0,
                                   cache=False, init_params="random_from_data", partition_rows=1000), path)
        return sum(reads)

    per_iteration_single = reads_for(1, 4) - reads_for(1, 2)
    per_iteration_eight = reads_for(8, 4) - reads_for(8, 2)
    assert per_iteration_single == 2 * len(X)  # two more iterations, every row once each
    assert per_iteration_eight == per_iteration_single


def test_a_converged_restart_stops_costing_compute():
    rng = np.random.default_rng(2)
    X = np.vstack([rng.normal(size=(1500, 2)) + c for c in ([0, 0], [2.5, 0], [0, 2.5], [2.5, 2.5])])
    est = _quiet(dem.GaussianMixture(4, n_init=4, random_state=3, tol=1e-5, max_iter=500,
                                     init_params="random_from_data"), X)
    n_iters = [r["n_iter"] for r in est.restarts_]
    assert all(r["converged"] for r in est.restarts_)
    # Each restart's history stops at its own convergence, not at the slowest one's.
    assert [len(r["history"]) for r in est.restarts_] == n_iters
    assert len(set(n_iters)) > 1


# -- k-means‖ ---------------------------------------------------------------

def _direct_kmeans_parallel_candidates(X, seed, rounds, ell):
    """Bahmani et al.'s sequential algorithm written plainly, with the same random numbers
    (keyed by each row's content), the candidates in sorted order."""
    n = X.shape[0]
    first = int(np.random.default_rng([seed, 7]).integers(n))
    C = X[[first]]
    for r in range(rounds):
        d = np.min(((X[:, None, :] - C[None, :, :]) ** 2).sum(axis=2), axis=1)
        phi = d.sum()
        u = content_uniforms((seed, 7, r), row_hashes(X))
        C = np.vstack([C, X[u < ell * d / phi]])
    return np.unique(C, axis=0)


@pytest.mark.parametrize("cut", [1, 3, 7])
def test_kmeans_parallel_samples_exactly_the_sequential_algorithm(grid_blobs, cut):
    X, _ = grid_blobs
    X = X[:3000]
    bounds = np.linspace(0, len(X), cut + 1).astype(int)
    captured = {}

    def map_partitions(fn, shared):
        out = [fn(shared, Partition(X[a:b], start=a)) for a, b in zip(bounds[:-1], bounds[1:])]
        if fn is kmp.candidate_weights:
            captured["candidates"] = shared[0][0]
        return out

    kmp.kmeans_parallel_centres(map_partitions, lambda i: X[i], len(X), 9, [123], rounds=2)
    expected = _direct_kmeans_parallel_candidates(X, 123, rounds=2, ell=18.0)
    np.testing.assert_array_equal(captured["candidates"], expected)


def test_kmeans_parallel_starts_at_least_as_well_as_kmeans_plus_plus(grid_blobs):
    """On well-separated data, k-means‖ finds every cluster at least as often as k-means++."""
    X, centres = grid_blobs

    def found_all(start_means):
        nearest = np.argmin(((start_means[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)
        return len(set(nearest)) == 9

    seeds = range(12)
    ours = []
    for s in seeds:
        est = _quiet(dem.GaussianMixture(9, random_state=s, max_iter=0, partition_rows=1000), X)
        ours.append(found_all(est.means_))
    theirs = [found_all(kmeans_plusplus(X, 9, random_state=s)[0]) for s in seeds]
    assert sum(ours) >= sum(theirs)
    lls_ours = [_quiet(dem.GaussianMixture(9, random_state=s, partition_rows=1000), X).lower_bound_ for s in seeds]
    lls_pp = [_quiet(dem.GaussianMixture(9, random_state=s, init_params="k-means++", partition_rows=1000), X).lower_bound_
              for s in seeds]
    assert np.mean(lls_ours) >= np.mean(lls_pp) - 1e-9


def test_weighted_race_picks_rows_in_proportion_to_their_weight():
    X = np.arange(8.0).reshape(4, 2)
    w = np.array([1.0, 2.0, 3.0, 0.0])
    copies = np.repeat(X, w.astype(int), axis=0)[::-1]
    wins = np.zeros(4)
    n = 4000
    for seed in range(n):
        # two blocks; the winner is the entry with the smallest key
        entries = [weighted_race((seed, 5), X[:2], w[:2]), weighted_race((seed, 5), X[2:], w[2:])]
        row = min(entries, key=lambda e: e[0])[1]
        wins[int(row[0] // 2)] += 1
        # a row of weight w and w copies of it enter alike
        np.testing.assert_array_equal(weighted_race((seed, 5), copies, None)[1], weighted_race((seed, 5), X, w)[1])
    p = w / w.sum()
    assert wins[3] == 0
    assert (np.abs(wins - n * p) <= 4 * np.sqrt(n * p * (1 - p))).all()


def test_kmeans_parallel_treats_a_weight_of_w_as_w_copies(grid_blobs):
    X, _ = grid_blobs
    X = X[:600]
    counts = np.random.default_rng(3).integers(0, 4, size=len(X))
    order = np.random.default_rng(4).permutation(len(X))
    repeated = np.repeat(X, counts, axis=0)

    def centres(part):
        first = [weighted_race((s, 5), part.X, part.weights)[1] for s in (11, 12)]
        return kmp.kmeans_parallel_centres(lambda fn, shared: [fn(shared, part)], None, part.n_rows, 9,
                                           [11, 12], first=first)

    weighted = centres(Partition(X[order], counts[order].astype(float)))
    copies = centres(Partition(repeated))
    for a, b in zip(weighted, copies):
        np.testing.assert_array_equal(a, b)


def test_kmeans_parallel_start_does_not_depend_on_partitioning(grid_blobs):
    X, _ = grid_blobs
    a = _quiet(dem.GaussianMixture(9, random_state=4, max_iter=0, partition_rows=1000), X)
    b = _quiet(dem.GaussianMixture(9, random_state=4, max_iter=0, partition_rows=777), X)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)


# -- model selection ----------------------------------------------------------

def test_bic_picks_the_true_number_of_components(grid_blobs):
    X, centres = grid_blobs
    est = _quiet(dem.GaussianMixture([3, 6, 9, 12], n_init=2, random_state=0, partition_rows=1000), X)
    assert est.n_components_ == 9
    assert [row["n_components"] for row in est.model_selection_] == [3, 6, 9, 12]
    row = next(r for r in est.model_selection_ if r["n_components"] == 9)
    # The table's BIC is scikit-learn's formula on the chosen parameters.
    sk = SkGaussianMixture(9)
    sk.weights_, sk.means_, sk.covariances_ = est.weights_, est.means_, est.covariances_
    sk.precisions_cholesky_ = est.precisions_cholesky_
    np.testing.assert_allclose(row["bic"], sk.bic(X), rtol=1e-10)
    np.testing.assert_allclose(row["aic"], sk.aic(X), rtol=1e-10)
    nearest = np.argmin(((est.means_[:, None] - centres[None]) ** 2).sum(axis=2), axis=1)
    assert sorted(nearest) == list(range(9))
    np.testing.assert_allclose(np.sort(est.means_, axis=0), np.sort(centres, axis=0), atol=0.15)


def test_candidates_share_passes_with_the_same_results_as_single_k(grid_blobs):
    X, _ = grid_blobs
    together = _quiet(dem.GaussianMixture([6, 9], random_state=5, partition_rows=1000), X)
    alone = _quiet(dem.GaussianMixture(9, random_state=5, partition_rows=1000), X)
    for name in FITTED:
        assert np.array_equal(getattr(together, name), getattr(alone, name)), name


# -- deterministic annealing --------------------------------------------------

def test_annealing_escapes_a_start_that_traps_plain_em():
    # Four clusters at the corners of a square; the start puts every component
    # inside one corner cluster, where plain EM settles in a poor local optimum.
    rng = np.random.default_rng(0)
    truth = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    X = np.vstack([rng.normal(size=(1000, 2)) + c for c in truth])
    eye = np.stack([np.eye(2)] * 4)
    start = dict(weights_init=np.full(4, 0.25), means_init=truth[0] + np.array([[1, 0], [-1, 0], [0, 1], [0, -1.0]]),
                 precisions_init=eye)
    kw = dict(max_iter=500, tol=1e-6)
    plain = _quiet(dem.GaussianMixture(4, **kw, **start), X)
    annealed = _quiet(dem.GaussianMixture(4, beta_init=0.05, beta_rate=1.5, random_state=0, **kw, **start), X)
    best = _quiet(dem.GaussianMixture(4, weights_init=np.full(4, 0.25), means_init=truth, precisions_init=eye, **kw), X)
    assert annealed.lower_bound_ >= plain.lower_bound_ + 0.2  # plain EM is trapped
    np.testing.assert_allclose(annealed.lower_bound_, best.lower_bound_, rtol=1e-5)
    nearest = np.argmin(((annealed.means_[:, None] - truth[None]) ** 2).sum(axis=2), axis=1)
    assert sorted(nearest) == [0, 1, 2, 3]
    stages = [h["stage"] for h in annealed.history_]
    assert stages[0] == "beta=0.05" and stages[-1] is None
    # Within each stage the tempered objective never decreases.
    lls = np.array([h["objective"] for h in annealed.history_])
    same = np.array([a == b for a, b in zip(stages[:-1], stages[1:])])
    assert np.all(np.diff(lls)[same] >= -1e-9 * np.abs(lls[1:][same]))
