"""The scikit-learn-style estimator: input/output types, information criteria,
sampling, restarts, warm start, ground-truth recovery, sklearn API, clients.
"""

from __future__ import annotations

import itertools
import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem

# Short fits (max_iter of a few, tol=0) are the point of several tests here.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _quiet_fit(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X, **kw)


@pytest.fixture(scope="module")
def X(blobs):
    return blobs[0]


@pytest.fixture(scope="module")
def sk(X):
    return SkGaussianMixture(3, random_state=0).fit(X)


@pytest.fixture(scope="module")
def est(X, sk):
    """A dem estimator holding exactly sklearn's fitted parameters (max_iter=0)."""
    return dem.GaussianMixture(3, max_iter=0, weights_init=sk.weights_, means_init=sk.means_,
                               precisions_init=sk.precisions_).fit(X)


@pytest.fixture(scope="module")
def X_new():
    return np.random.default_rng(5).normal(scale=6.0, size=(1000, 3))


# -- outputs follow inputs --------------------------------------------------


def test_numpy_in_numpy_out(est, sk, X_new):
    labels, proba, scores = est.predict(X_new), est.predict_proba(X_new), est.score_samples(X_new)
    assert isinstance(labels, np.ndarray) and labels.shape == (1000,)
    assert np.issubdtype(labels.dtype, np.integer)
    assert isinstance(proba, np.ndarray) and proba.shape == (1000, 3)
    assert isinstance(scores, np.ndarray) and scores.shape == (1000,)
    np.testing.assert_array_equal(labels, sk.predict(X_new))
    np.testing.assert_allclose(proba, sk.predict_proba(X_new), rtol=1e-7, atol=1e-13)
    np.testing.assert_allclose(scores, sk.score_samples(X_new), rtol=1e-9)
    np.testing.assert_allclose(est.score(X_new), sk.score(X_new), rtol=1e-10)


def test_dask_in_lazy_dask_out(est, sk, X_new):
    calls = []

    def touch(block):
        calls.append(1)
        return block

    lazy = da.from_array(X_new, chunks=(300, 3)).map_blocks(touch, dtype=float, meta=np.empty((0, 0)))
    outs = {what: getattr(est, what)(lazy) for what in ("predict", "predict_proba", "score_samples")}
    assert not calls, "building the outputs must not compute anything"
    for what, out in outs.items():
        assert isinstance(out, da.Array), what
        assert out.chunks[0] == (300, 300, 300, 100), what
    np.testing.assert_array_equal(outs["predict"].compute(), sk.predict(X_new))
    np.testing.assert_allclose(outs["predict_proba"].compute(), sk.predict_proba(X_new), rtol=1e-7, atol=1e-13)
    np.testing.assert_allclose(outs["score_samples"].compute(), sk.score_samples(X_new), rtol=1e-9)
    assert calls
    np.testing.assert_allclose(est.score(lazy), sk.score(X_new), rtol=1e-10)


@pytest.mark.parametrize("chunked", [False, True])
def test_xarray_in_dataarray_out_aligned_on_sample(est, sk, X_new, chunked):
    samples = np.array([f"s{i}" for i in np.random.default_rng(0).permutation(1000)])
    arr = xr.DataArray(X_new, dims=("sample", "feature"), coords={"sample": samples})
    if chunked:
        arr = arr.chunk({"sample": 250})
    proba = est.predict_proba(arr)
    labels = est.predict(arr)
    scores = est.score_samples(arr)
    assert isinstance(proba, xr.DataArray) and proba.dims == ("sample", "component")
    assert labels.dims == ("sample",) and scores.dims == ("sample",)
    for out in (proba, labels, scores):
        np.testing.assert_array_equal(out["sample"].values, samples)
        assert isinstance(out.data, da.Array) == chunked
    # Alignment: picking rows by label gives the rows' own results.
    pick = samples[[10, 500, 999]]
    np.testing.assert_allclose(scores.sel(sample=pick).values, sk.score_samples(X_new[[10, 500, 999]]),
                               rtol=1e-9)
    np.testing.assert_allclose(proba.values, sk.predict_proba(X_new), rtol=1e-7, atol=1e-13)
    np.testing.assert_array_equal(labels.values, sk.predict(X_new))
    # Feature-major input is transposed by name.
    np.testing.assert_allclose(est.score_samples(arr.transpose("feature", "sample")).values,
                               sk.score_samples(X_new), rtol=1e-9)


def test_zarr_path_in_lazy_dask_out_writable_to_zarr(tmp_path, est, sk, X_new):
    g = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    g.create_array("X", data=X_new, chunks=(250, 3))
    scores = est.score_samples(str(tmp_path / "in.zarr"))
    proba = est.predict_proba(str(tmp_path / "in.zarr"))
    assert isinstance(scores, da.Array) and isinstance(proba, da.Array)
    scores.to_zarr(str(tmp_path / "scores.zarr"))
    proba.to_zarr(str(tmp_path / "proba.zarr"))
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "scores.zarr"), mode="r")[:],
                               sk.score_samples(X_new), rtol=1e-9)
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "proba.zarr"), mode="r")[:],
                               sk.predict_proba(X_new), rtol=1e-7, atol=1e-13)


def test_non_finite_rows_in_prediction_input(est, X_new):
    bad = X_new.copy()
    bad[4, 1] = np.nan
    with pytest.raises(dem.DataError, match="row 4"):
        est.predict(bad)


def test_wrong_number_of_features(est):
    with pytest.raises(dem.DataError, match=r"2 features.*3"):
        est.predict(np.zeros((5, 2)))


# -- information criteria and sampling ------------------------------------


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_bic_aic_equal_sklearn(tmp_path, X, ct):
    ref = SkGaussianMixture(3, covariance_type=ct, random_state=0).fit(X)
    ours = dem.GaussianMixture(3, covariance_type=ct, max_iter=0, weights_init=ref.weights_,
                               means_init=ref.means_, precisions_init=ref.precisions_).fit(X)
    np.testing.assert_allclose(ours.bic(X), ref.bic(X), rtol=1e-10)
    np.testing.assert_allclose(ours.aic(X), ref.aic(X), rtol=1e-10)
    if ct == "full":
        g = zarr.open_group(str(tmp_path / "x.zarr"), mode="w")
        g.create_array("X", data=X, chunks=(400, 3))
        np.testing.assert_allclose(ours.bic(str(tmp_path / "x.zarr")), ref.bic(X), rtol=1e-10)
        np.testing.assert_allclose(ours.aic(da.from_array(X, chunks=500)), ref.aic(X), rtol=1e-10)


@pytest.mark.parametrize("ct", ["full", "spherical"])
def test_sample_matches_the_fitted_mixture(X, ct):
    est = _quiet_fit(dem.GaussianMixture(3, covariance_type=ct, random_state=0), X)
    n = 20_000
    Xs, ys = est.sample(n)
    assert Xs.shape == (n, 3) and ys.shape == (n,)
    assert set(np.unique(ys)) <= {0, 1, 2}
    counts = np.bincount(ys, minlength=3)
    # Component counts are multinomial(n, weights_): within 5 standard deviations.
    sd = np.sqrt(n * est.weights_ * (1 - est.weights_))
    assert (np.abs(counts - n * est.weights_) < 5 * sd).all()
    for k in range(3):
        cov = est.covariances_[k] if ct == "full" else np.eye(3) * est.covariances_[k]
        se = np.sqrt(np.diag(cov) / counts[k])
        assert (np.abs(Xs[ys == k].mean(axis=0) - est.means_[k]) < 5 * se).all()
    with pytest.raises(dem.ConfigError):
        est.sample(0)


# -- restarts, warm start, ground truth ------------------------------------


@pytest.fixture(scope="module")
def five_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [6, 0], [0, 6], [6, 6], [3, 12]], float)
    return centres[rng.integers(0, 5, 1000)] + rng.normal(size=(1000, 2))


@pytest.mark.parametrize("random_state", [3, 4, 7])  # seeds whose first restart ends in a local optimum
def test_n_init_keeps_the_best_lower_bound(five_clusters, random_state):
    kw = dict(init_params="random_from_data", random_state=random_state)
    one = _quiet_fit(dem.GaussianMixture(5, n_init=1, **kw), five_clusters)
    five = _quiet_fit(dem.GaussianMixture(5, n_init=5, **kw), five_clusters)
    assert five.lower_bound_ >= one.lower_bound_
    # The reference optimum: sklearn with many restarts.
    best = SkGaussianMixture(5, n_init=10, random_state=0).fit(five_clusters).lower_bound_
    np.testing.assert_allclose(five.lower_bound_, best, atol=1e-3)
    assert one.lower_bound_ < best - 1e-2  # these seeds start n_init=1 in a local optimum
    if hasattr(five, "restarts_"):
        assert len(five.restarts_) == 5
        assert five.lower_bound_ == max(r["lower_bound"] for r in five.restarts_)


def test_warm_start_continues_where_the_last_fit_stopped(X):
    start = SkGaussianMixture(3, init_params="random_from_data", max_iter=1, random_state=2).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    ours = dem.GaussianMixture(3, tol=0.0, max_iter=4, warm_start=True, **init)
    _quiet_fit(ours, X)
    first_means = ours.means_.copy()
    _quiet_fit(ours, X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = SkGaussianMixture(3, tol=0.0, max_iter=8, **init).fit(X)
        ref4 = SkGaussianMixture(3, tol=0.0, max_iter=4, **init).fit(X)
    np.testing.assert_allclose(first_means, ref4.means_, rtol=1e-8)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(ref, name), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-10)
    assert ours.n_iter_ == 4


def test_warm_start_convergence_like_sklearn(X):
    start = SkGaussianMixture(3, init_params="random_from_data", max_iter=1, random_state=2).fit(X)
    init = dict(weights_init=start.weights_, means_init=start.means_, precisions_init=start.precisions_)
    ours = dem.GaussianMixture(3, tol=1e-3, warm_start=True, **init).fit(X)
    ref = SkGaussianMixture(3, tol=1e-3, warm_start=True, **init).fit(X)
    assert ours.converged_ and ref.converged_
    ours.fit(X)
    ref.fit(X)
    assert (ours.n_iter_, ours.converged_) == (ref.n_iter_, ref.converged_)


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_recovers_ground_truth_of_separated_clusters(ct):
    rng = np.random.default_rng(42)
    truth = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 5.0], [0.0, 10.0, -5.0], [10.0, 10.0, 10.0]])
    weights = np.array([0.4, 0.3, 0.2, 0.1])
    labels = rng.choice(4, size=4000, p=weights)
    X = truth[labels] + rng.normal(size=(4000, 3))
    est = _quiet_fit(dem.GaussianMixture(4, covariance_type=ct, random_state=0, partition_rows=512), X)
    perm = min(itertools.permutations(range(4)),
               key=lambda p: np.abs(est.means_[list(p)] - truth).sum())
    perm = list(perm)
    n_k = np.bincount(labels, minlength=4)
    # Sample means of unit-variance clusters: standard error 1/sqrt(n_k).
    assert (np.abs(est.means_[perm] - truth) < 5 / np.sqrt(n_k)[:, None]).all()
    assert (np.abs(est.weights_[perm] - weights) < 5 * np.sqrt(weights * (1 - weights) / 4000)).all()
    np.testing.assert_array_equal(est.predict(X), np.argsort(perm)[labels])
    cov = est.covariances_
    diag = {"full": np.diagonal(cov, axis1=1, axis2=2) if ct == "full" else None,
            "tied": np.diag(cov) if ct == "tied" else None,
            "diag": cov if ct == "diag" else None,
            "spherical": cov if ct == "spherical" else None}[ct]
    np.testing.assert_allclose(diag, 1.0, atol=0.2)
    assert est.converged_


# -- scikit-learn API -------------------------------------------------------


def test_get_set_params_and_clone(X):
    est = dem.GaussianMixture(3, covariance_type="diag", tol=1e-4, random_state=3, partition_rows=128)
    params = est.get_params()
    assert params["n_components"] == 3 and params["covariance_type"] == "diag"
    assert params["tol"] == 1e-4 and params["partition_rows"] == 128
    assert est.set_params(n_components=2, reg_covar=1e-3) is est
    assert est.n_components == 2 and est.reg_covar == 1e-3
    with pytest.raises(ValueError):
        est.set_params(no_such_parameter=1)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    _quiet_fit(est, X)
    twin2 = clone(est)
    assert not hasattr(twin2, "means_")
    _quiet_fit(twin2, X)
    np.testing.assert_array_equal(twin2.means_, est.means_)


def test_fit_predict_equals_fit_then_predict(X):
    kw = dict(random_state=1, max_iter=30)
    labels = dem.GaussianMixture(3, **kw).fit_predict(X)
    np.testing.assert_array_equal(labels, dem.GaussianMixture(3, **kw).fit(X).predict(X))


@pytest.mark.parametrize("make", [
    lambda: SkGaussianMixture(3, init_params="random_from_data", max_iter=2),  # the peer's behaviour
    lambda: dem.GaussianMixture(3, init_params="random_from_data", max_iter=2),
    lambda: dem.GaussianMixture(3, max_iter=2),
    lambda: dem.GaussianHMM(3, n_iter=2),
])
def test_random_state_none_draws_from_numpys_global_generator(X, make):
    """As scikit-learn's check_random_state(None): np.random.seed(0) makes a fit reproducible."""
    state = np.random.get_state()
    try:
        fits = []
        for seed in (0, 0, 1):
            np.random.seed(seed)
            fits.append(_quiet_fit(make(), X))
    finally:
        np.random.set_state(state)
    first, again, other = (np.concatenate([np.ravel(f.means_), np.ravel(getattr(f, "startprob_", []))])
                           for f in fits)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_unfitted_estimator_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        dem.GaussianMixture(2).predict(np.zeros((3, 2)))


# -- distributed clients ----------------------------------------------------


def _cluster_tasks(client, fit):
    from distributed import get_task_stream

    with get_task_stream(client=client) as ts:
        fit()
    return ts.data


@pytest.mark.slow
def test_uses_the_active_client_explicit_client_and_otherwise_local_threads(X, local_cluster_client):
    client = local_cluster_client
    kw = dict(n_components=3, max_iter=3, tol=0.0, partition_rows=200, random_state=0, fan_in=2)
    local = _quiet_fit(dem.GaussianMixture(**kw), X)
    # No active client: the cluster sees nothing.
    assert _cluster_tasks(client, lambda: _quiet_fit(dem.GaussianMixture(**kw), X)) == []

    def fit_as_current():
        with client.as_current():
            return _quiet_fit(dem.GaussianMixture(**kw), X)

    tasks = _cluster_tasks(client, fit_as_current)
    # 8 partitions, fan-in 2: each iteration ran 4 fused leaf tasks (2 partitions each) on the cluster.
    assert len(tasks) >= 3 * 4
    explicit_tasks = _cluster_tasks(client, lambda: _quiet_fit(dem.GaussianMixture(client=client, **kw), X))
    assert len(explicit_tasks) >= 3 * 4
    workers = {t["worker"] for t in tasks + explicit_tasks}
    assert workers <= set(client.nthreads())
    remote = _quiet_fit(dem.GaussianMixture(client=client, **kw), X)
    np.testing.assert_array_equal(remote.means_, local.means_)
