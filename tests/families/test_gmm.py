"""The Gaussian mixture model against scikit-learn and against direct computation.

References used here are independent of dem's code: ``sklearn.mixture``
fitted from the same starting parameters, and a naive per-row loop over
``scipy.stats.multivariate_normal.logpdf`` with ``logsumexp``.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from scipy import linalg
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.errors import CollapsedComponentError, CollapsedComponentWarning
from dem.data.record import Partition
from dem.families.gaussian_mixture import GaussianMixtureFamily as GaussianMixtureModel

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


# -- helpers ---------------------------------------------------------------


def _sklearn_start(X: np.ndarray, ct: str, K: int = 3, seed: int = 0) -> dict:
    """Starting parameters from a 1-iteration sklearn fit from random data rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(K, covariance_type=ct, init_params="random_from_data",
                               max_iter=1, random_state=seed).fit(X)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)


def _fit_both(X_dem, X_sk, ct: str, start: dict, sk_start: dict | None = None, **kw):
    common = dict(covariance_type=ct, tol=0.0, max_iter=10, reg_covar=1e-6)
    common.update(kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(len(start["weights_init"]), **common, **(sk_start or start)).fit(X_sk)
        ours = dem.GaussianMixture(len(start["weights_init"]), **common, **start).fit(X_dem)
    return ours, sk


def _full_covariances(ct: str, cov: np.ndarray, K: int, D: int) -> np.ndarray:
    if ct == "full":
        return cov
    if ct == "tied":
        return np.repeat(cov[None], K, axis=0)
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(D) * c for c in cov])


def _random_params(rng: np.random.Generator, ct: str, K: int, D: int, scale: float = 3.0):
    weights = rng.dirichlet(np.full(K, 3.0))
    means = rng.normal(scale=scale, size=(K, D))
    if ct == "full":
        A = rng.normal(size=(K, D, D)) * 0.5
        cov = A @ A.transpose(0, 2, 1) + np.eye(D)
    elif ct == "tied":
        A = rng.normal(size=(D, D)) * 0.5
        cov = A @ A.T + np.eye(D)
    elif ct == "diag":
        cov = rng.uniform(0.5, 2.0, size=(K, D))
    else:
        cov = rng.uniform(0.5, 2.0, size=K)
    return weights, means, cov


def _direct_log_prob(X, weights, means, covs_full):
    """log w_k + log N(x_n | μ_k, Σ_k), one row at a time."""
    n, K = X.shape[0], len(weights)
    dists = [multivariate_normal(mean=means[k], cov=covs_full[k]) for k in range(K)]
    out = np.empty((n, K))
    for i in range(n):
        for k in range(K):
            out[i, k] = np.log(weights[k]) + dists[k].logpdf(X[i])
    return out


def _proba(model, params, X):
    lp = model.weighted_log_prob(params, X)
    return np.exp(lp - logsumexp(lp, axis=1, keepdims=True))


def _direct_m_step(X, w, resp, ct: str, reg: float):
    """Weighted maximum-likelihood parameters from responsibilities, written out."""
    n, D = X.shape
    K = resp.shape[1]
    wr = resp * w[:, None]
    nk = wr.sum(axis=0)
    means = np.stack([(wr[:, k, None] * X).sum(axis=0) / nk[k] for k in range(K)])
    scatter = np.zeros((K, D, D))
    for k in range(K):
        for i in range(n):
            d = X[i] - means[k]
            scatter[k] += wr[i, k] * np.outer(d, d)
    full = scatter / nk[:, None, None]
    if ct == "full":
        cov = full + reg * np.eye(D)
    elif ct == "tied":
        cov = scatter.sum(axis=0) / w.sum() + reg * np.eye(D)
    elif ct == "diag":
        cov = np.stack([np.diag(c) for c in full]) + reg
    else:
        cov = np.array([np.trace(c) / D for c in full]) + reg
    return nk / w.sum(), means, cov


@pytest.fixture(scope="module")
def data(correlated_blobs):
    return correlated_blobs


# -- fitted attributes equal sklearn's ------------------------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_fit_matches_sklearn(data, ct):
    start = _sklearn_start(data, ct)
    ours, sk = _fit_both(data, data, ct, start)
    for name in FITTED:
        np.testing.assert_allclose(getattr(ours, name), getattr(sk, name), rtol=1e-6, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-6)
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-6)
    assert ours.n_iter_ == sk.n_iter_ == 10
    assert ours.converged_ is False and sk.converged_ is False


@pytest.mark.parametrize("offset", [1e4, 1e7])
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_large_offset_matches_sklearn_on_centred_data(data, ct, offset):
    # EM is translation-equivariant: fitting X + offset from means + offset must
    # give sklearn's fit of X shifted by offset. sklearn runs on the *unshifted*
    # data, where it does not cancel. Raw Σ r x xᵀ accumulation would lose
    # ~eps·offset² ≈ 1e-2 (at 1e7) in the covariances; dem's shifted moments
    # only see the representation error of X + offset itself (~1e-9 at 1e7).
    start = _sklearn_start(data, ct)
    shifted = dict(start, means_init=start["means_init"] + offset)
    ours, sk = _fit_both(data + offset, data, ct, shifted, sk_start=start)
    np.testing.assert_allclose(ours.means_ - offset, sk.means_, rtol=0, atol=1e-6)
    for name in ("weights_", "covariances_", "precisions_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ours, name), getattr(sk, name), rtol=1e-6, atol=1e-12,
                                   err_msg=name)
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-6)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_float32_input_matches_sklearn_on_float64_cast(data, ct):
    # sklearn keeps float32 input in float32, so the reference is sklearn on the
    # float64 cast of the *same* float32 values (the cast is exact). dem does the
    # arithmetic inside a block in float32 (SGEMM) and accumulates across blocks
    # in float64, so each block's terms carry float32 rounding: eps32 ≈ 1.2e-7,
    # amplified by the expanded Mahalanobis / moment forms (|x − c|²/σ² ≈ 50 on
    # this data) and by sums over D terms: ~1e-5 of each attribute's scale. The
    # mean log-likelihood averages that noise over rows, so it is held to 1e-6.
    X32 = data.astype(np.float32)
    X64 = X32.astype(np.float64)
    start = _sklearn_start(X64, ct)
    with warnings.catch_warnings():
        # float32 noise makes tiny spurious "decreases" (see test_float32_fit_is_monotone).
        warnings.simplefilter("ignore", ObjectiveDecreasedWarning)
        ours, sk = _fit_both(X32, X64, ct, start)
    for name in FITTED:
        ref = getattr(sk, name)
        assert getattr(ours, name).dtype == np.float64, name
        np.testing.assert_allclose(getattr(ours, name), ref, rtol=1e-4,
                                   atol=2e-5 * np.abs(ref).max(), err_msg=name)
    np.testing.assert_allclose(ours.lower_bound_, sk.lower_bound_, rtol=1e-6)


# -- e_step and m_step against a direct computation -----------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_e_step_m_step_match_direct_computation(ct, weighted):
    rng = np.random.default_rng(5)
    K, D, n = 3, 3, 120
    weights, means, cov = _random_params(rng, ct, K, D)
    X = rng.normal(scale=3.0, size=(n, D)) + 1.0
    w = rng.uniform(0.0, 3.0, size=n) if weighted else np.ones(n)
    model = GaussianMixtureModel(K, ct, reg_covar=1e-4)
    params = model.params_from(weights, means, covariances=cov)

    log_prob = _direct_log_prob(X, weights, means, _full_covariances(ct, cov, K, D))
    lse = logsumexp(log_prob, axis=1)
    resp = np.exp(log_prob - lse[:, None])

    stats = model.e_step(params, Partition(X, w if weighted else None))
    assert stats.n_rows == n
    np.testing.assert_allclose(stats.weight_sum, w.sum(), rtol=1e-12)
    np.testing.assert_allclose(stats.log_likelihood, w @ lse, rtol=1e-10)
    np.testing.assert_allclose(model.objective(stats, params), (w @ lse) / w.sum(), rtol=1e-10)
    np.testing.assert_allclose(stats.resp_sum, (resp * w[:, None]).sum(axis=0), rtol=1e-10)

    new = model.m_step(stats, params)
    ref_w, ref_means, ref_cov = _direct_m_step(X, w, resp, ct, 1e-4)
    np.testing.assert_allclose(new.weights, ref_w, rtol=1e-10)
    np.testing.assert_allclose(new.means, ref_means, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(new.covariances, ref_cov, rtol=1e-9)
    # The precision Cholesky factor, by its definition: U upper (full/tied),
    # U Uᵀ = Σ⁻¹ (full/tied) or U² = 1/σ² (diag/spherical).
    U = new.precisions_cholesky
    if ct == "full":
        for k in range(K):
            np.testing.assert_array_equal(U[k], np.triu(U[k]))
            np.testing.assert_allclose(U[k] @ U[k].T, np.linalg.inv(ref_cov[k]), rtol=1e-8, atol=1e-12)
    elif ct == "tied":
        np.testing.assert_array_equal(U, np.triu(U))
        np.testing.assert_allclose(U @ U.T, np.linalg.inv(ref_cov), rtol=1e-8, atol=1e-12)
    else:
        np.testing.assert_allclose(U**2, 1.0 / ref_cov, rtol=1e-10)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_weighted_log_prob_and_predictions_match_direct_computation(ct):
    rng = np.random.default_rng(8)
    K, D = 4, 2
    weights, means, cov = _random_params(rng, ct, K, D)
    X = rng.normal(scale=4.0, size=(60, D))
    model = GaussianMixtureModel(K, ct)
    params = model.params_from(weights, means, covariances=cov)
    ref = _direct_log_prob(X, weights, means, _full_covariances(ct, cov, K, D))
    np.testing.assert_allclose(model.weighted_log_prob(params, X), ref, rtol=1e-10)
    np.testing.assert_allclose(model.log_density(params, Partition(X)), logsumexp(ref, axis=1), rtol=1e-10)
    np.testing.assert_allclose(_proba(model, params, X),
                               np.exp(ref - logsumexp(ref, axis=1, keepdims=True)), rtol=1e-8, atol=1e-14)
    np.testing.assert_array_equal(model.weighted_log_prob(params, X).argmax(axis=1), ref.argmax(axis=1))


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_integer_weights_equal_repeated_rows(ct):
    rng = np.random.default_rng(9)
    K, D, n = 3, 2, 150
    weights, means, cov = _random_params(rng, ct, K, D)
    X = rng.normal(scale=3.0, size=(n, D))
    counts = rng.integers(0, 4, size=n)
    model = GaussianMixtureModel(K, ct)
    params = model.params_from(weights, means, covariances=cov)
    weighted = model.e_step(params, Partition(X, counts.astype(float)))
    repeated = model.e_step(params, Partition(np.repeat(X, counts, axis=0)))
    assert weighted.n_rows == n and repeated.n_rows == counts.sum()
    for name in ("weight_sum", "log_likelihood", "resp_sum", "first_moment", "second_moment"):
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name),
                                   rtol=1e-11, atol=1e-11, err_msg=name)
    a, b = model.m_step(weighted, params), model.m_step(repeated, params)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("ct", ("full", "spherical"))
def test_fit_with_integer_weights_equals_fit_on_repeated_rows(data, ct):
    counts = np.random.default_rng(2).integers(0, 3, size=len(data))
    start = _sklearn_start(data, ct)
    kw = dict(covariance_type=ct, tol=0.0, max_iter=8, partition_rows=128, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = dem.GaussianMixture(3, **kw).fit(data, sample_weight=counts)
        repeated = dem.GaussianMixture(3, **kw).fit(np.repeat(data, counts, axis=0))
        # The repeated rows are also plain data for sklearn.
        sk = SkGaussianMixture(3, covariance_type=ct, tol=0.0, max_iter=8, **start).fit(
            np.repeat(data, counts, axis=0))
    for name in FITTED:
        np.testing.assert_allclose(getattr(weighted, name), getattr(repeated, name), rtol=1e-10,
                                   atol=1e-13, err_msg=name)
        np.testing.assert_allclose(getattr(weighted, name), getattr(sk, name), rtol=1e-6,
                                   atol=1e-12, err_msg=name)
    np.testing.assert_allclose(weighted.lower_bound_, sk.lower_bound_, rtol=1e-6)


# -- empty and collapsing components --------------------------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_empty_component_keeps_its_mean_and_covariance(data, ct):
    start = _sklearn_start(data, ct, K=2)
    K, D = 3, data.shape[1]
    far = np.full(D, 1e3)
    means0 = np.vstack([start["means_init"], far])
    weights0 = np.array([*(0.8 * start["weights_init"]), 0.2])
    prec = start["precisions_init"]
    if ct == "full":
        prec0 = np.concatenate([prec, np.eye(D)[None] * 4.0])
    elif ct == "diag":
        prec0 = np.vstack([prec, np.full(D, 4.0)])
    elif ct == "spherical":
        prec0 = np.append(prec, 4.0)
    else:
        prec0 = prec
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="component 2 is empty"):
            ours = dem.GaussianMixture(K, covariance_type=ct, tol=0.0, max_iter=6, weights_init=weights0,
                                       means_init=means0, precisions_init=prec0).fit(data)
        # Reference for the live components: sklearn with the empty one left out
        # (its responsibilities are exactly 0, so it cannot influence them).
        sk = SkGaussianMixture(2, covariance_type=ct, tol=0.0, max_iter=6, **start).fit(data)
    for name in FITTED:
        assert np.isfinite(getattr(ours, name)).all(), name
    assert np.isfinite(ours.lower_bounds_).all()
    np.testing.assert_array_equal(ours.means_[2], far)
    assert 0.0 < ours.weights_[2] < 1e-12
    if ct != "tied":
        np.testing.assert_allclose(ours.covariances_[2], 0.25 * (np.eye(D) if ct == "full" else 1.0)
                                   if ct != "diag" else np.full(D, 0.25), rtol=1e-12)
        np.testing.assert_allclose(ours.covariances_[:2], sk.covariances_, rtol=1e-6)
    else:
        np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-6)
    np.testing.assert_allclose(ours.means_[:2], sk.means_, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.weights_[:2], sk.weights_, rtol=1e-6)
    # After the first iteration the empty component's weight is ~1e-15, so the
    # mean log-likelihoods agree with the 2-component fit.
    np.testing.assert_allclose(ours.lower_bounds_[1:], sk.lower_bounds_[1:], rtol=1e-6)
    assert any(note["kind"] == "empty" and note["component"] == 2 for rec in ours.history_ for note in rec["notes"])


def _collapsing_data() -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(4)
    spread = rng.normal(size=(300, 2))
    point = np.full((50, 2), 100.0)
    X = np.concatenate([spread, point])
    start = dict(weights_init=[0.5, 0.5], means_init=[[0.0, 0.0], [100.0, 100.0]])
    return X, start


@pytest.mark.parametrize("ct", ("full", "diag", "spherical"))
def test_component_collapsing_during_em_stops_with_the_parameters_before(ct):
    """A component on a single point with reg_covar=0 collapses in the first M-step. scikit-learn
    raises; dem keeps what it had (here the starting parameters, whose mean log-likelihood the step
    measured), stops that restart, warns and records a note."""
    X, start = _collapsing_data()
    prec = {"full": np.stack([np.eye(2)] * 2), "diag": np.ones((2, 2)), "spherical": np.ones(2)}[ct]
    kw = dict(covariance_type=ct, reg_covar=0.0, max_iter=5, precisions_init=prec, **start)
    # sklearn agrees that this covariance is degenerate.
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        SkGaussianMixture(2, **kw).fit(X)
    with pytest.warns(CollapsedComponentWarning, match="component 1"), \
            pytest.warns(ConvergenceWarning, match="Best performing initialization did not converge"):
        est = dem.GaussianMixture(2, **kw).fit(X)
    assert not est.converged_ and est.n_iter_ == 1
    assert [n["kind"] for n in est.history_[-1]["notes"]] == ["collapsed"]
    assert est.history_[-1]["notes"][0]["component"] == 1
    # The reported model is the starting one, scored as sklearn scores it.
    sk = SkGaussianMixture(2, covariance_type=ct)
    sk.weights_, sk.means_ = np.asarray(start["weights_init"]), np.asarray(start["means_init"])
    sk.precisions_cholesky_ = np.sqrt(prec) if ct != "full" else np.stack([np.eye(2)] * 2)
    sk.covariances_ = 1.0 / prec if ct != "full" else np.stack([np.eye(2)] * 2)
    np.testing.assert_allclose(est.means_, sk.means_, rtol=0)
    np.testing.assert_allclose(est.covariances_, sk.covariances_, rtol=1e-15)
    np.testing.assert_allclose(est.lower_bound_, sk.score(X), rtol=1e-12)
    # With the default reg_covar the same fit runs, and the point component
    # stays on the point.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # (see test_log_likelihood_never_decreases_with_a_near_collapsed_component)
        warnings.simplefilter("ignore", ObjectiveDecreasedWarning)
        ok = dem.GaussianMixture(2, **dict(kw, reg_covar=1e-6)).fit(X)
    assert np.isfinite(ok.covariances_).all() and np.isfinite(ok.lower_bounds_).all()
    np.testing.assert_allclose(ok.means_[1], [100.0, 100.0], rtol=1e-12)
    np.testing.assert_allclose(ok.weights_, [300 / 350, 50 / 350], rtol=1e-9)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_ill_defined_covariance_at_initialisation_raises_sklearns_value_error(ct):
    """scikit-learn's test_regularisation: ten components on two distinct points, reg_covar=0."""
    X = np.vstack((np.ones((5, 5)), np.zeros((5, 5))))
    msg = ("Fitting the mixture model failed because some components have ill-defined empirical "
           "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
           "number of components, increase reg_covar, or scale the input data.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)  # sklearn's k-means: 2 distinct points
        with pytest.raises(ValueError, match=re.escape(msg)):
            SkGaussianMixture(10, reg_covar=0, covariance_type=ct, random_state=0).fit(X)
        with pytest.raises(CollapsedComponentError, match=re.escape(msg) + r" \(.+\)$"):
            dem.GaussianMixture(10, reg_covar=0, covariance_type=ct, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dem.GaussianMixture(10, reg_covar=1e-6, covariance_type=ct, random_state=0).fit(X)


def test_sklearn_issue_18216_divergence_keeps_the_best_parameters():
    """scikit-learn's test_gaussian_mixture_setting_best_params: spherical, reg_covar=0, one
    iteration from a start that diverges. The fit finishes, has not converged, and holds every
    fitted attribute; its lower bound is scikit-learn's (the objective of the same E-step)."""
    rnd = np.random.RandomState(0)
    X = rnd.uniform(size=(30, 3))
    kw = dict(covariance_type="spherical", reg_covar=0, n_components=6, max_iter=1, means_init=np.array([
        [0.670637869618158, 0.21038256107384043, 0.12892629765485303],
        [0.09394051075844147, 0.5759464955561779, 0.929296197576212],
        [0.5033230372781258, 0.9569852381759425, 0.08654043447295741],
        [0.18578301420435747, 0.5531158970919143, 0.19388943970532435],
        [0.4548589928173794, 0.35182513658825276, 0.568146063202464],
        [0.609279894978321, 0.7929063819678847, 0.9620097270828052]]),
        precisions_init=np.array([999999.999604483, 999999.9990869573, 553.7603944542167, 204.78596008931834,
                                  15.867423501783637, 85.4595728389735]),
        weights_init=[0.03333333333333341, 0.03333333333333341, 0.06666666666666674, 0.06666666666666674,
                      0.7000000000000001, 0.10000000000000007])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkGaussianMixture(random_state=rnd, **kw).fit(X)
        est = dem.GaussianMixture(random_state=rnd, **kw).fit(X)
    assert not est.converged_ and not sk.converged_
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "n_iter_", "lower_bound_",
                 "lower_bounds_"):
        assert hasattr(est, attr)
    np.testing.assert_allclose(est.lower_bound_, sk.lower_bound_, rtol=1e-12)
    np.testing.assert_allclose(est.means_, kw["means_init"], rtol=0)


def test_sample_raises_sklearns_errors():
    X = np.random.default_rng(0).normal(size=(50, 2))
    for cls in (SkGaussianMixture, dem.GaussianMixture):
        est = cls(2, random_state=0)
        with pytest.raises(NotFittedError, match="This GaussianMixture instance is not fitted"):
            est.sample(0)
        est.fit(X)
        with pytest.raises(ValueError, match="Invalid value for 'n_samples'"):
            est.sample(0)


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_score_after_setting_an_invalid_covariance_type_raises_value_error(data, ct):
    est = dem.GaussianMixture(2, covariance_type=ct, random_state=0).fit(data)
    est.covariance_type = "bad"
    with pytest.raises(ValueError, match="The 'covariance_type' parameter of GaussianMixture must be"):
        est.score(data)


# -- inference equals sklearn's for the same parameters -------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_inference_matches_sklearn_for_the_same_parameters(data, ct):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = SkGaussianMixture(3, covariance_type=ct, max_iter=5, random_state=1).fit(data)
    X_new = np.random.default_rng(12).normal(scale=4.0, size=(500, 3))

    model = GaussianMixtureModel(3, ct)
    params = model.params_from(sk.weights_, sk.means_, covariances=sk.covariances_)
    np.testing.assert_allclose(params.precisions_cholesky, sk.precisions_cholesky_, rtol=1e-10)
    np.testing.assert_allclose(model.log_density(params, Partition(X_new)), sk.score_samples(X_new), rtol=1e-10)
    np.testing.assert_allclose(_proba(model, params, X_new), sk.predict_proba(X_new),
                               rtol=1e-8, atol=1e-13)
    np.testing.assert_array_equal(model.weighted_log_prob(params, X_new).argmax(axis=1), sk.predict(X_new))

    # The estimator with max_iter=0 keeps user-given parameters as they are.
    ours = dem.GaussianMixture(3, covariance_type=ct, max_iter=0, weights_init=sk.weights_,
                               means_init=sk.means_, precisions_init=sk.precisions_).fit(data)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-9)
    np.testing.assert_allclose(ours.precisions_cholesky_, sk.precisions_cholesky_, rtol=1e-9)
    np.testing.assert_allclose(ours.score_samples(X_new), sk.score_samples(X_new), rtol=1e-9)
    np.testing.assert_allclose(ours.predict_proba(X_new), sk.predict_proba(X_new), rtol=1e-7, atol=1e-13)
    np.testing.assert_array_equal(ours.predict(X_new), sk.predict(X_new))
    np.testing.assert_allclose(ours.score(X_new), sk.score(X_new), rtol=1e-10)


def test_precisions_init_cholesky_follows_sklearn_convention():
    # U upper-triangular with U Uᵀ = P (not the lower factor of P).
    rng = np.random.default_rng(1)
    A = rng.normal(size=(2, 3, 3))
    P = A @ A.transpose(0, 2, 1) + np.eye(3)
    model = GaussianMixtureModel(2, "full")
    params = model.params_from(np.array([0.5, 0.5]), np.zeros((2, 3)), precisions=P)
    for k in range(2):
        U = params.precisions_cholesky[k]
        np.testing.assert_array_equal(U, np.triu(U))
        assert (np.diag(U) > 0).all()
        np.testing.assert_allclose(U @ U.T, P[k], rtol=1e-12)
        np.testing.assert_allclose(params.covariances[k], linalg.inv(P[k]), rtol=1e-10)


# -- accuracy when components are far apart relative to their spread ------
#
# dem centres data on one shift c shared by all components (the mixture mean).
# A tight cluster far from the mixture mean c: an expanded Mahalanobis form or
# moments taken about c would lose about eps·|μ_k − c|²/σ_k² relative (these
# tests caught exactly that once); whitening and per-component moments do not.



@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_log_density_of_narrow_component_far_from_mixture_centre(ct):
    # Two components 141 apart, one with σ = 1e-3 (what reg_covar leaves of a
    # near-collapsed component): rows near it must get its log-density.
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [100.0, 100.0]])
    X = means[1] + 1e-3 * rng.normal(size=(200, 2))
    cov = {"full": np.stack([np.eye(2), 1e-6 * np.eye(2)]), "tied": 1e-6 * np.eye(2),
           "diag": np.array([[1.0, 1.0], [1e-6, 1e-6]]), "spherical": np.array([1.0, 1e-6])}[ct]
    model = GaussianMixtureModel(2, ct)
    params = model.params_from(np.array([0.5, 0.5]), means, covariances=cov)
    ref = _direct_log_prob(X, [0.5, 0.5], means, _full_covariances(ct, cov, 2, 2))[:, 1]
    np.testing.assert_allclose(model.weighted_log_prob(params, X)[:, 1], ref, rtol=1e-9)


def _two_far_clusters(sep: float, sigma: float, dtype=np.float64):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(500, 2)) * sigma,
                        sep + rng.normal(size=(500, 2)) * sigma]).astype(dtype)
    labels = np.repeat([0, 1], 500)
    X64 = X.astype(np.float64)
    truth = np.stack([np.cov(X64[labels == k].T, bias=True) for k in range(2)])
    start = dict(weights_init=[0.5, 0.5], means_init=[[0.0, 0.0], [sep, sep]],
                 precisions_init=np.stack([np.eye(2) / sigma**2] * 2))
    return X, truth, start


def _fit_quietly(X, start, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", ObjectiveDecreasedWarning)
        return dem.GaussianMixture(2, tol=0.0, max_iter=3, reg_covar=0.0, **start, **kw).fit(X)


def test_covariance_of_well_separated_clusters_is_their_empirical_covariance():
    # 100σ apart: responsibilities are exactly 0/1, so the fitted covariances
    # are the clusters' own (biased) covariances — the ground truth.
    X, truth, start = _two_far_clusters(100.0, 1.0)
    est = _fit_quietly(X, start)
    np.testing.assert_allclose(est.covariances_, truth, rtol=1e-9, atol=1e-12)


def test_covariance_of_a_tight_cluster_far_away_is_accurate():
    X, truth, start = _two_far_clusters(1000.0, 0.01)
    est = _fit_quietly(X, start)
    np.testing.assert_allclose(est.covariances_, truth, rtol=1e-8, atol=1e-8 * np.abs(truth).max())


def test_float32_covariance_of_well_separated_clusters():
    # Tolerance for float32 data: 1e-4 (see test_float32_input_matches_sklearn_on_float64_cast).
    X, truth, start = _two_far_clusters(100.0, 1.0, np.float32)
    est = _fit_quietly(X, start)
    np.testing.assert_allclose(est.covariances_, truth, rtol=1e-4, atol=1e-4 * np.abs(truth).max())


def test_float32_far_apart_clusters_do_not_collapse():
    X, truth, start = _two_far_clusters(1e4, 1.0, np.float32)
    est = _fit_quietly(X, dict(start, precisions_init=np.ones((2, 2))), covariance_type="diag")
    np.testing.assert_allclose(est.covariances_, np.stack([np.diag(c) for c in truth]), rtol=1e-2)


def test_float32_fit_is_monotone(data):
    # A decrease beyond the engine's float32 tolerance would raise here (warnings as
    # errors), and the history is checked directly against the same bound.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        est = dem.GaussianMixture(3, covariance_type="tied", tol=0.0, max_iter=10,
                                  **_sklearn_start(data, "tied")).fit(data.astype(np.float32))
    ll = np.array(est.lower_bounds_)
    assert len(ll) == 10
    assert np.all(np.diff(ll) >= -1e-6 * np.abs(ll[1:]))


# -- the family contract ------------------------------------------------------------

from conftest import make_blobs  # noqa: E402
from contract import FamilyContract  # noqa: E402


class TestGaussianMixtureContract(FamilyContract):
    kind = "gmm"

    def estimator(self, **kw):
        args = dict(n_components=3, covariance_type="full", random_state=0, max_iter=8, partition_rows=150)
        return dem.GaussianMixture(**{**args, **kw})

    def data(self):
        X, _ = make_blobs(600, seed=3)
        w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(X))
        return {"X": X, "sample_weight": w}

    def family_and_params(self):
        family = GaussianMixtureModel(3, "full")
        rng = np.random.default_rng(2)
        params = family.params_from(np.array([0.5, 0.3, 0.2]), rng.normal(scale=4, size=(3, 3)),
                                    covariances=np.stack([np.eye(3) * (1 + k) for k in range(3)]))
        return family, params

    def predictions(self, est):
        X = self.data()["X"]
        return {"score_samples": est.score_samples(X), "predict_proba": est.predict_proba(X)}

    def bad_inputs(self):
        X = self.data()["X"].copy()
        X[5, 1] = np.nan
        return [
            (lambda: self.estimator().fit(X), dem.DataError, r"X contains NaN at row 5, feature 1"),
            (lambda: self.estimator().fit(X[:2, :]), dem.DataError, r"X has 2 samples, fewer than n_components=3"),
            (lambda: self.estimator().fit(self.data()["X"], sample_weight=-np.ones(600)), dem.DataError,
             r"sample_weight is negative at row 0"),
            (lambda: self.estimator(covariance_type="round").fit(self.data()["X"]), dem.ConfigError,
             r"The 'covariance_type' parameter of GaussianMixture must be"),
        ]
