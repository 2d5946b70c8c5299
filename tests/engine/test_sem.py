"""Stochastic EM (learning_method="sem") and the SEM → EM chain ("sem+em").

References: labels drawn in the test from scikit-learn's responsibilities
with the documented row-keyed uniforms; the M-step of hard assignments
computed with numpy; scikit-learn's converged EM; a fit never interrupted.
"""

from __future__ import annotations

import signal
import warnings

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.data.record import Partition
from dem.data.row_random import row_uniforms
from dem.engine.monitor import Monitor
from dem.engine.strategies.sem import SEM_ITERATIONS, SEM_STREAM, SEMRun
from dem.errors import ConfigError, DemError
from dem.families.gaussian_mixture import GaussianMixtureFamily
from tests.conftest import make_blobs
from tests.engine.test_online import run_child, zarr_overlapping  # noqa: F401 (a fixture)

FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def _quiet_fit(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, **kw)


def _start(X):
    family = GaussianMixtureFamily(3, "full", 1e-6)
    rng = np.random.default_rng(0)
    params = family.params_from(np.full(3, 1 / 3), X[rng.choice(len(X), 3, replace=False)],
                                covariances=np.stack([np.cov(X.T)] * 3))
    return family, params


def _reference_labels(family, params, X, key):
    """Labels drawn from scikit-learn's responsibilities with the row-keyed uniforms of ``key``."""
    sk = SkGaussianMixture(3, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = params.weights, params.means, params.covariances
    sk.precisions_cholesky_ = params.precisions_cholesky
    resp = sk.predict_proba(X)
    cdf = np.cumsum(resp, axis=1)
    u = row_uniforms(key, 0, len(X))
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), 2)


@pytest.mark.parametrize("sizes", [[1], [7], [100], [37, 250, 13], [600]])
def test_labels_of_a_row_do_not_depend_on_the_partitioning(overlapping, sizes):
    X = overlapping
    family, params = _start(X)
    key = (11, SEM_STREAM, 4)
    labels = _reference_labels(family, params, X, key)
    cuts, a = [], 0
    while a < len(X):
        size = sizes[len(cuts) % len(sizes)]
        cuts.append((a, min(a + size, len(X))))
        a += size
    for a, b in cuts:
        stats = family.e_step_sampled(params, Partition(X[a:b], start=a), key)
        # Hard assignments: the counts are those of the reference labels of exactly these rows.
        assert np.array_equal(stats.resp_sum, np.bincount(labels[a:b], minlength=3).astype(float))
    whole = family.e_step_sampled(params, Partition(X), key)
    assert np.array_equal(whole.resp_sum, np.bincount(labels, minlength=3).astype(float))


def test_sem_m_step_is_that_of_the_drawn_labels(overlapping):
    X = overlapping
    family, params = _start(X)
    run = SEMRun(family, params, Monitor(0.0), max_iter=5, seed=11)
    ev = run.next_evaluation()
    assert ev.sample_key == (11, SEM_STREAM, 0)
    stats = family.e_step_sampled(params, Partition(X), ev.sample_key)
    run.receive(stats, 0.0, len(X), 1.0)
    labels = _reference_labels(family, params, X, ev.sample_key)
    for k in range(3):
        rows = X[labels == k]
        np.testing.assert_allclose(run.params.means[k], rows.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(run.params.covariances[k], np.cov(rows.T, bias=True) + 1e-6 * np.eye(2),
                                   rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(run.params.weights, np.bincount(labels, minlength=3) / len(X), rtol=1e-12)
    # The recorded objective is the observed-data likelihood of the parameters the labels were drawn under.
    assert run.monitor.history[0].objective == pytest.approx(_sk_score(params, X), rel=1e-12)


def _sk_score(params, X):
    sk = SkGaussianMixture(3, covariance_type="full")
    sk.weights_, sk.means_, sk.covariances_ = params.weights, params.means, params.covariances
    sk.precisions_cholesky_ = params.precisions_cholesky
    return float(sk.score(X))


def test_sem_keeps_the_iterate_with_the_best_observed_likelihood(overlapping):
    est = _quiet_fit(dem.GaussianMixture(3, random_state=1, learning_method="sem", max_iter=12), overlapping)
    objectives = [h["objective"] for h in est.history_]
    assert len(objectives) == 12 and {h["event"] for h in est.history_} == {"sem"}
    assert est.lower_bound_ == max(objectives)
    assert est.score(overlapping) == pytest.approx(max(objectives), rel=1e-12)
    assert est.converged_ and est.n_iter_ == 12 and est.n_passes_ == 12.0


def test_sem_is_near_and_sem_then_em_reaches_em_optimum():
    X, _ = make_blobs(20_000, seed=9, means=np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.0, 1.0]]))
    sk = SkGaussianMixture(3, tol=1e-10, max_iter=2000, n_init=3, random_state=0).fit(X)
    optimum = sk.score(X)
    sem = _quiet_fit(dem.GaussianMixture(3, random_state=0, learning_method="sem", max_iter=30), X)
    assert sem.score(X) > optimum - 2e-2
    chain = _quiet_fit(dem.GaussianMixture(3, random_state=0, learning_method="sem+em", max_iter=2000,
                                           tol=1e-10), X)
    events = [h["event"] for h in chain.history_]
    assert events[:SEM_ITERATIONS] == ["sem"] * SEM_ITERATIONS and set(events[SEM_ITERATIONS:]) == {"em"}
    # EM starts from the best SEM iterate: its first objective is that iterate's likelihood.
    best = max(h["objective"] for h in chain.history_[:SEM_ITERATIONS])
    assert chain.history_[SEM_ITERATIONS]["objective"] == pytest.approx(best, rel=1e-12)
    em = [h["objective"] for h in chain.history_[SEM_ITERATIONS:]]
    assert np.all(np.diff(em) >= -1e-12)
    assert chain.converged_
    assert chain.score(X) == pytest.approx(optimum, abs=1e-6)


def test_sem_does_not_depend_on_the_partitioning(overlapping):
    kw = dict(random_state=4, learning_method="sem", max_iter=6)
    a = _quiet_fit(dem.GaussianMixture(3, partition_rows=50, **kw), overlapping)
    b = _quiet_fit(dem.GaussianMixture(3, partition_rows=600, **kw), overlapping)
    # The same labels for every row: sums in another order, so equal to round-off.
    for name in FITTED:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_sem_bitwise_equal_on_threads_and_on_one_and_two_workers(overlapping, local_cluster_client,
                                                                one_worker_client):
    kw = dict(random_state=2, learning_method="sem+em", max_iter=SEM_ITERATIONS + 3, tol=0.0, partition_rows=100)
    local = _quiet_fit(dem.GaussianMixture(3, **kw), overlapping)
    for client in (one_worker_client, local_cluster_client):
        remote = _quiet_fit(dem.GaussianMixture(3, client=client, **kw), overlapping)
        for name in FITTED:
            assert np.array_equal(getattr(remote, name), getattr(local, name)), name


@pytest.mark.slow
@pytest.mark.parametrize("method, max_iter, kill_at", [("sem", 8, 5), ("sem+em", SEM_ITERATIONS + 5, 31)])
def test_sigkill_then_resume_is_bitwise_equal(tmp_path, zarr_overlapping, method, max_iter, kill_at):  # noqa: F811
    run_child(tmp_path, zarr_overlapping, tmp_path / "ref", tmp_path / "ref.npz", method, max_iter)
    killed = tmp_path / "killed"
    assert run_child(tmp_path, zarr_overlapping, killed, tmp_path / "out.npz", method, max_iter,
                     fault=f"m-step:{kill_at}") == -signal.SIGKILL
    assert run_child(tmp_path, zarr_overlapping, killed, tmp_path / "out.npz", method, max_iter) == 0
    ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
    assert len(ref["objectives"]) == max_iter
    for name in ref.files:
        assert np.array_equal(got[name], ref[name]), name


def test_families_without_sampled_assignments_give_one_clear_line(overlapping):
    X = overlapping.copy()
    X[3, 1] = np.nan
    for method in ("sem", "sem+em"):
        for call in (lambda: dem.GaussianMixture(3, missing="em", learning_method=method).fit(X),
                     lambda: dem.GaussianHMM(2, learning_method=method).fit(overlapping)):
            with pytest.raises(ConfigError, match="stochastic EM .* not available") as info:
                call()
            assert isinstance(info.value, DemError) and "\n" not in str(info.value)


def test_sem_records_do_not_warn_when_the_likelihood_falls(overlapping):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = dem.GaussianMixture(3, random_state=0, learning_method="sem", max_iter=15).fit(overlapping)
    assert len(est.history_) == 15
