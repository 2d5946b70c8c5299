"""The variational Bayesian Gaussian mixture against scikit-learn and ground truth.

References: ``sklearn.mixture.BayesianGaussianMixture`` started from the
same responsibilities (a subclass whose ``_initialize_parameters`` calls
``_initialize(X, resp0)``; ``resp0`` is the posterior of the Gaussian
mixture that dem gets as ``weights_init``/``means_init``/``precisions_init``),
numpy's mean and ``np.cov`` for the priors, repeated rows for integer
weights, and the known number of clusters.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import BayesianGaussianMixture as SkBayesianGaussianMixture
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils._param_validation import InvalidParameterError

import dem
from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.families import bayesian_gmm_math as bm
from dem.families.bayesian_gmm import BayesianGaussianMixtureFamily

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_", "mean_precision_",
          "degrees_of_freedom_", "weight_concentration_prior_", "mean_precision_prior_", "mean_prior_",
          "degrees_of_freedom_prior_", "covariance_prior_", "lower_bound_")


class _FromResponsibilities(SkBayesianGaussianMixture):
    """scikit-learn's estimator started from given responsibilities."""

    def __init__(self, resp0=None, **kw):
        super().__init__(**kw)
        self.resp0 = resp0

    def _initialize_parameters(self, X, random_state, xp=None):
        self._initialize(X, self.resp0)


def _gmm_start(X, ct, K=4, seed=0, init="random_from_data") -> tuple[dict, np.ndarray]:
    """A Gaussian mixture (dem's *_init) and its posterior responsibilities on X (scikit-learn's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g = SkGaussianMixture(K, covariance_type=ct, init_params=init, max_iter=1, random_state=seed).fit(X)
    return dict(weights_init=g.weights_, means_init=g.means_, precisions_init=g.precisions_), g.predict_proba(X)


DEM_ONLY = ("partition_rows", "client", "tol_per_sample")


def _fit_both(X_dem, X_sk, ct, pt, K=3, seed=0, init="kmeans", **kw):
    start, resp0 = _gmm_start(X_sk, ct, K, seed, init)
    dem_kw = {k: kw.pop(k) for k in DEM_ONLY if k in kw}
    common = dict(covariance_type=ct, weight_concentration_prior_type=pt, max_iter=300, tol=1e-3)
    common.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = _FromResponsibilities(resp0=resp0, n_components=K, **common).fit(X_sk)
        ours = dem.BayesianGaussianMixture(K, **common, **start, **dem_kw).fit(X_dem)
    return ours, sk


def _assert_equal_to_sklearn(ours, sk, rtol=1e-6):
    for name in FITTED:
        np.testing.assert_allclose(np.asarray(getattr(ours, name)), np.asarray(getattr(sk, name)), rtol=rtol,
                                   atol=1e-300, err_msg=name)
    for a, b in zip(np.atleast_2d(ours.weight_concentration_), np.atleast_2d(sk.weight_concentration_)):
        np.testing.assert_allclose(a, b, rtol=rtol, err_msg="weight_concentration_")
    # scikit-learn's tied bound is a list of 1-element arrays.
    np.testing.assert_allclose(ours.lower_bounds_, np.ravel(sk.lower_bounds_), rtol=rtol, err_msg="lower_bounds_")
    assert ours.n_iter_ == sk.n_iter_
    assert ours.converged_ == sk.converged_


@pytest.fixture(scope="module")
def data(correlated_blobs):
    return correlated_blobs


# -- equality with scikit-learn ------------------------------------------------------------


@pytest.mark.parametrize("pt", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_fit_matches_sklearn(data, ct, pt):
    ours, sk = _fit_both(data, data, ct, pt, partition_rows=200)
    assert sk.converged_ and sk.n_iter_ >= 2  # the total-bound tol rule decided when to stop
    _assert_equal_to_sklearn(ours, sk)


@pytest.mark.parametrize("pt", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_forty_iterations_from_a_poor_start_match_sklearn(data, ct, pt):
    # Five components from random rows: some lose their data, as the prior lets them.
    ours, sk = _fit_both(data, data, ct, pt, K=5, seed=2, init="random_from_data", max_iter=40, tol=0.0,
                         partition_rows=130)
    assert len(sk.lower_bounds_) == 40
    _assert_equal_to_sklearn(ours, sk)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_fit_with_given_priors_matches_sklearn(data, ct):
    D = data.shape[1]
    cov_prior = {"full": np.eye(D) * 2.0 + 0.3, "tied": np.eye(D) * 2.0 + 0.3, "diag": np.array([1.0, 2.0, 3.0]),
                 "spherical": 1.5}[ct]
    priors = dict(weight_concentration_prior=0.5, mean_precision_prior=0.1, mean_prior=np.array([1.0, 0.0, -1.0]),
                  degrees_of_freedom_prior=4.5, covariance_prior=cov_prior, reg_covar=1e-4)
    ours, sk = _fit_both(data, data, ct, "dirichlet_distribution", K=5, seed=2, init="random_from_data",
                         max_iter=25, tol=0.0, **priors)
    _assert_equal_to_sklearn(ours, sk)


def test_warm_start_continues_as_sklearn_does(data):
    start, resp0 = _gmm_start(data, "diag", K=3)
    kw = dict(covariance_type="diag", max_iter=4, tol=0.0, warm_start=True)
    sk = _FromResponsibilities(resp0=resp0, n_components=3, **kw)
    ours = dem.BayesianGaussianMixture(3, **kw, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(2):
            sk.fit(data)
            ours.fit(data)
    _assert_equal_to_sklearn(ours, sk)


def test_predictions_match_sklearn(data):
    ours, sk = _fit_both(data, data, "full", "dirichlet_process")
    np.testing.assert_allclose(ours.predict_proba(data), sk.predict_proba(data), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.score_samples(data), sk.score_samples(data), rtol=1e-6)
    np.testing.assert_array_equal(ours.predict(data), sk.predict(data))
    np.testing.assert_allclose(ours.score(data), sk.score(data), rtol=1e-6)


@pytest.mark.slow
def test_fit_from_zarr_on_a_cluster_matches_sklearn(data, tmp_path, local_cluster_client):
    zarr = pytest.importorskip("zarr")
    path = tmp_path / "x.zarr"
    zarr.open_group(str(path), mode="w").create_array("X", data=data, chunks=(100, 3))
    for pt in PRIOR_TYPES:
        for ct in COVARIANCE_TYPES:
            ours, sk = _fit_both(str(path), data, ct, pt, client=local_cluster_client, partition_rows=200)
            _assert_equal_to_sklearn(ours, sk)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_integer_weights_equal_sklearn_on_repeated_rows(data, ct):
    w = np.random.default_rng(5).integers(1, 4, size=len(data))
    repeated = np.repeat(data, w, axis=0)
    start, _ = _gmm_start(data, ct)
    # The repeated rows' posterior under the same Gaussian mixture starts scikit-learn.
    g = SkGaussianMixture(4, covariance_type=ct)
    g.weights_, g.means_ = start["weights_init"], start["means_init"]
    g.precisions_cholesky_ = np.sqrt(start["precisions_init"]) if ct == "diag" else \
        np.linalg.cholesky(start["precisions_init"])
    resp0 = g.predict_proba(repeated)
    kw = dict(covariance_type=ct, max_iter=30, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = _FromResponsibilities(resp0=resp0, n_components=4, **kw).fit(repeated)
        ours = dem.BayesianGaussianMixture(4, **kw, **start, partition_rows=150).fit(data, sample_weight=w)
    _assert_equal_to_sklearn(ours, sk)


def test_priors_default_from_one_pass_as_numpy_computes_them():
    rng = np.random.default_rng(9)
    X = rng.normal(size=(2000, 4)) @ rng.normal(size=(4, 4)) + 1e6  # a large offset must not cost digits
    for ct in COVARIANCE_TYPES:
        est = dem.BayesianGaussianMixture(2, covariance_type=ct, max_iter=0, partition_rows=300,
                                          random_state=0).fit(X)
        np.testing.assert_allclose(est.mean_prior_, X.mean(axis=0), rtol=1e-12)
        cov = np.cov(X.T)
        want = {"full": cov, "tied": cov, "diag": np.var(X, axis=0, ddof=1),
                "spherical": np.var(X, axis=0, ddof=1).mean()}[ct]
        np.testing.assert_allclose(est.covariance_prior_, want, rtol=1e-9)
        assert est.degrees_of_freedom_prior_ == 4.0 and est.mean_precision_prior_ == 1.0
        assert est.weight_concentration_prior_ == 0.5


# -- the bound, the tol rule, the prior at work ------------------------------------------


@pytest.mark.parametrize("pt", PRIOR_TYPES)
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_elbo_never_decreases(data, ct, pt):
    est = dem.BayesianGaussianMixture(6, covariance_type=ct, weight_concentration_prior_type=pt, tol=0.0,
                                      max_iter=60, init_params="random", random_state=1, partition_rows=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        est.fit(data)
    bounds = np.asarray(est.lower_bounds_)
    assert len(bounds) == 60
    assert np.all(np.diff(bounds) >= -1e-9 * np.abs(bounds[1:]))


def test_tol_compares_the_total_bound_by_default_and_per_sample_on_request(data):
    start, resp0 = _gmm_start(data, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = _FromResponsibilities(resp0=resp0, n_components=4, max_iter=200, tol=0.0).fit(data)
    delta = np.abs(np.diff(np.concatenate([[-np.inf], sk.lower_bounds_])))
    tol = 1e-2
    total_rule = int(np.argmax(delta < tol)) + 1
    per_sample_rule = int(np.argmax(delta / len(data) < tol)) + 1
    assert per_sample_rule < total_rule
    for per_sample, want in ((False, total_rule), (True, per_sample_rule)):
        est = dem.BayesianGaussianMixture(4, tol=tol, max_iter=200, tol_per_sample=per_sample, **start).fit(data)
        assert est.n_iter_ == want and est.converged_


def test_dirichlet_process_switches_off_seven_of_ten_components():
    from conftest import BLOB_WEIGHTS, make_blobs

    X, _ = make_blobs(3000, seed=4)
    est = dem.BayesianGaussianMixture(10, weight_concentration_prior_type="dirichlet_process", max_iter=500,
                                      random_state=0, partition_rows=500).fit(X)
    assert est.converged_
    assert (est.weights_ < 1e-2).sum() == 7
    np.testing.assert_allclose(np.sort(est.weights_)[::-1][:3], BLOB_WEIGHTS, atol=0.03)
    lines = est.summary_lines()
    assert lines[0].startswith("effective components: 3 of 10")
    assert len(lines) == 4


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # two iterations on purpose
def test_rebased_statistics_give_the_same_m_step(data):
    family = BayesianGaussianMixtureFamily(3, "full")
    est = dem.BayesianGaussianMixture(3, max_iter=2, random_state=0).fit(data)
    old = est._fitted_params()
    from dem.data.record import Partition

    stats = family.e_step(old, Partition(data))
    moved = bm.BGMMParams(**{**old.__dict__, "means": old.means + np.array([0.5, -1.0, 2.0])})
    a, b = family.m_step(stats, old), family.m_step(family.rebase(stats, old, moved), moved)
    for name in ("means", "covariances", "degrees_of_freedom", "weight_concentration"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-10, err_msg=name)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # two iterations on purpose
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_flat_parameters_round_trip(data, ct):
    family = BayesianGaussianMixtureFamily(3, ct)
    params = dem.BayesianGaussianMixture(3, covariance_type=ct, max_iter=2, random_state=0).fit(data)._fitted_params()
    back = family.from_vector(family.to_vector(params), params)
    for name in ("weight_concentration", "mean_precision", "means", "degrees_of_freedom", "covariances",
                 "precisions_cholesky"):
        np.testing.assert_allclose(getattr(back, name), getattr(params, name), rtol=1e-10, err_msg=name)


# -- bad priors: scikit-learn's exception types, one clear line --------------------------


@pytest.mark.parametrize("kw, exc", [
    (dict(weight_concentration_prior=-1.0), InvalidParameterError),
    (dict(degrees_of_freedom_prior=1.5), ValueError),
    (dict(covariance_prior=np.diag([1.0, -1.0, 1.0])), ValueError),
])
def test_bad_priors_raise_what_sklearn_raises(data, kw, exc):
    with pytest.raises(exc):
        SkBayesianGaussianMixture(n_components=2, **kw).fit(data)
    with pytest.raises(exc) as info:
        dem.BayesianGaussianMixture(2, **kw).fit(data)
    assert isinstance(info.value, dem.DemError) and "\n" not in str(info.value)


# -- the family contract ------------------------------------------------------------------

from conftest import make_blobs  # noqa: E402
from contract import FamilyContract  # noqa: E402


def _params(ct: str = "full") -> bm.BGMMParams:
    """Arbitrary valid variational parameters, written out (not fitted)."""
    from dem.families.gaussian_params import compute_precision_cholesky

    rng = np.random.default_rng(2)
    K, D = 3, 3
    cov = np.stack([np.eye(D) * (1 + k) + 0.2 for k in range(K)])
    return bm.BGMMParams(np.stack([1 + rng.uniform(10, 200, K), rng.uniform(1, 50, K)]), rng.uniform(10, 200, K),
                         rng.normal(scale=4, size=(K, D)), rng.uniform(5, 200, K), cov,
                         compute_precision_cholesky(cov, ct), np.asarray(1 / 3), np.asarray(1.0), np.zeros(D),
                         np.asarray(3.0), np.eye(D), np.asarray(600.0))


class TestBayesianGaussianMixtureContract(FamilyContract):
    kind = "bayesian_gmm"

    def estimator(self, **kw):
        args = dict(n_components=4, covariance_type="full", random_state=0, max_iter=8, partition_rows=150)
        return dem.BayesianGaussianMixture(**{**args, **kw})

    def data(self):
        X, _ = make_blobs(600, seed=3)
        w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(X))
        return {"X": X, "sample_weight": w}

    def family_and_params(self):
        return BayesianGaussianMixtureFamily(3, "full"), _params()

    def predictions(self, est):
        X = self.data()["X"]
        return {"score_samples": est.score_samples(X), "predict_proba": est.predict_proba(X)}

    def bad_inputs(self):
        X = self.data()["X"].copy()
        X[5, 1] = np.nan
        good = self.data()["X"]
        return [
            (lambda: self.estimator().fit(X), dem.DataError, r"X contains NaN at row 5, feature 1"),
            (lambda: self.estimator().fit(X[:2, :]), dem.DataError, r"X has 2 samples, fewer than n_components=4"),
            (lambda: self.estimator().fit(good, sample_weight=-np.ones(600)), dem.DataError,
             r"sample_weight is negative at row 0"),
            (lambda: self.estimator(covariance_type="round").fit(good), dem.ConfigError,
             r"The 'covariance_type' parameter of BayesianGaussianMixture must be"),
            (lambda: self.estimator(weight_concentration_prior=-1.0).fit(good), dem.ConfigError,
             r"The 'weight_concentration_prior' parameter of BayesianGaussianMixture must be None or a "
             r"float in the range \(0.0, inf\)"),
            (lambda: self.estimator(degrees_of_freedom_prior=2.0).fit(good), dem.ConfigError,
             r"degrees_of_freedom_prior must be greater than n_features - 1 = 2; got 2.000"),
            (lambda: self.estimator(covariance_prior=np.diag([1.0, -1.0, 1.0])).fit(good), dem.ConfigError,
             r"covariance_prior must be a symmetric positive definite matrix; its smallest eigenvalue is -1"),
            (lambda: self.estimator(covariance_type="diag", covariance_prior=np.array([1.0, 0.0, 1.0])).fit(good),
             dem.ConfigError, r"covariance_prior must be positive for covariance_type='diag'; entry 1 is not"),
            (lambda: self.estimator(mean_prior=np.zeros(2)).fit(good), dem.ConfigError,
             r"mean_prior must have shape \(3,\); got \(2,\)"),
        ]
