"""The missing-data Gaussian mixture (``missing="em"``) against an independent EM.

The reference here is a plain per-row loop written from the textbook
formulas: for each row and component, the marginal log-density of the
observed coordinates with ``scipy.stats.multivariate_normal``, the
conditional mean ``μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o)`` and covariance
``Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om`` with ``numpy.linalg.solve``, and an M-step by
direct formulas on raw moments. It shares no code with dem.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning

import dem
from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.errors import ConfigError, DataError
from dem.data.record import Partition
from dem.families.gmm_missing import MissingDataGaussianMixtureFamily as MissingDataGaussianMixtureModel
from dem.families.missing_patterns import pattern_order

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
FITTED = ("weights_", "means_", "covariances_", "precisions_cholesky_")


# -- the independent reference ----------------------------------------------


def _as_full(ct: str, cov: np.ndarray, K: int, D: int) -> np.ndarray:
    if ct == "full":
        return cov
    if ct == "tied":
        return np.repeat(cov[None], K, axis=0)
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([np.eye(D) * c for c in cov])


def reference_iteration(X, w, weights, means, covs, ct: str, reg: float, beta: float = 1.0):
    """One EM iteration over rows with NaN, one row and component at a time.

    Returns the new (weights, means, covariances in ``ct``'s layout) and the
    mean observed-data log-likelihood under the *given* parameters. Rows with
    nothing observed are skipped. ``beta`` < 1 tempers the responsibilities
    (deterministic annealing) and the objective becomes ``(1/β) log Σ_k p_k^β``.
    """
    N, D = X.shape
    K = len(weights)
    S0, S1, S2 = np.zeros(K), np.zeros((K, D)), np.zeros((K, D, D))
    ll = wsum = 0.0
    for n in range(N):
        o = ~np.isnan(X[n])
        m = ~o
        if not o.any():
            continue
        lp = np.array([np.log(weights[k])
                       + multivariate_normal(means[k][o], covs[k][np.ix_(o, o)]).logpdf(X[n, o])
                       for k in range(K)])
        lse = logsumexp(beta * lp)
        r = np.exp(beta * lp - lse)
        ll += w[n] * lse / beta
        wsum += w[n]
        for k in range(K):
            x_hat, C = X[n].copy(), np.zeros((D, D))
            if m.any():
                S_oo, S_mo = covs[k][np.ix_(o, o)], covs[k][np.ix_(m, o)]
                G = np.linalg.solve(S_oo, S_mo.T).T  # Σ_mo Σ_oo⁻¹
                x_hat[m] = means[k][m] + G @ (X[n, o] - means[k][o])
                C[np.ix_(m, m)] = covs[k][np.ix_(m, m)] - G @ S_mo.T
            S0[k] += w[n] * r[k]
            S1[k] += w[n] * r[k] * x_hat
            S2[k] += w[n] * r[k] * (np.outer(x_hat, x_hat) + C)
    mu = S1 / S0[:, None]
    cov = S2 / S0[:, None, None] - np.einsum("ki,kj->kij", mu, mu)
    if ct == "full":
        new = cov + reg * np.eye(D)
    elif ct == "tied":
        new = (cov * S0[:, None, None]).sum(axis=0) / S0.sum() + reg * np.eye(D)
    elif ct == "diag":
        new = np.diagonal(cov, axis1=1, axis2=2) + reg
    else:
        new = np.diagonal(cov, axis1=1, axis2=2).mean(axis=1) + reg
    return S0 / S0.sum(), mu, new, ll / wsum


def _with_holes(X: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """X with ``fraction`` of its entries set to NaN completely at random (MCAR)."""
    out = X.copy()
    out[np.random.default_rng(seed).random(X.shape) < fraction] = np.nan
    return out


def _start(ct: str, K: int, D: int, seed: int):
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(K, 4.0))
    means = rng.normal(scale=2.0, size=(K, D))
    if ct == "full":
        A = rng.normal(size=(K, D, D)) * 0.4
        cov = A @ A.transpose(0, 2, 1) + np.eye(D)
    elif ct == "tied":
        A = rng.normal(size=(D, D)) * 0.4
        cov = A @ A.T + np.eye(D)
    elif ct == "diag":
        cov = rng.uniform(0.7, 2.0, size=(K, D))
    else:
        cov = rng.uniform(0.7, 2.0, size=K)
    return weights, means, cov


def _precisions(ct: str, cov: np.ndarray) -> np.ndarray:
    return np.linalg.inv(cov) if ct in ("full", "tied") else 1.0 / cov


@pytest.fixture(scope="module")
def small():
    """120 rows, 4 correlated features from 3 clusters, 30 % MCAR holes, plus
    two rows with nothing observed and a few complete ones; positive weights."""
    rng = np.random.default_rng(5)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 2.0, -1.0, 0.0], [-2.0, 3.0, 2.0, 1.0]])
    A = rng.normal(size=(4, 4)) * 0.5 + np.eye(4)
    X = centres[rng.choice(3, size=120)] + rng.normal(size=(120, 4)) @ A
    Xm = _with_holes(X, 0.3, seed=6)
    Xm[[7, 50]] = np.nan
    w = rng.uniform(0.2, 3.0, size=120)
    return Xm, w


# -- dem against the reference ----------------------------------------------


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_em_iterations_match_reference(small, ct, K):
    """Four weighted iterations over 4 partitions agree with the per-row loop to 1e-8."""
    X, w = small
    D = X.shape[1]
    weights, means, cov = _start(ct, K, D, seed=K)
    n_iter, reg = 4, 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours = dem.GaussianMixture(K, covariance_type=ct, missing="em", tol=0.0, max_iter=n_iter,
                                   reg_covar=reg, weights_init=weights, means_init=means,
                                   precisions_init=_precisions(ct, cov), partition_rows=30,
                                   ).fit(X, sample_weight=w)
    lls = []
    for _ in range(n_iter):
        weights, means, cov, ll = reference_iteration(X, w, weights, means, _as_full(ct, cov, K, D),
                                                      ct, reg)
        lls.append(ll)
    np.testing.assert_allclose(ours.weights_, weights, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(ours.means_, means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.covariances_, cov, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(ours.lower_bounds_, lls, rtol=1e-10)
    n_empty = int(np.isnan(X).all(axis=1).sum())
    assert n_empty >= 2
    assert all(any(n["kind"] == "empty_rows" and n["message"].startswith(f"{n_empty} rows have no observed value")
                   for n in h["notes"]) for h in ours.history_)


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_marginal_densities_match_scipy(small, ct):
    """score_samples and predict_proba use the observed coordinates' marginal."""
    X, _ = small
    K, D = 3, X.shape[1]
    weights, means, cov = _start(ct, K, D, seed=9)
    model = MissingDataGaussianMixtureModel(K, ct)
    params = model.params_from(weights, means, covariances=cov)
    full = _as_full(ct, cov, K, D)
    expected = np.empty((len(X), K))
    for n in range(len(X)):
        o = ~np.isnan(X[n])
        for k in range(K):
            expected[n, k] = np.log(weights[k]) + (
                multivariate_normal(means[k][o], full[k][np.ix_(o, o)]).logpdf(X[n, o]) if o.any() else 0.0)
    np.testing.assert_allclose(model.weighted_log_prob(params, X), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(model.log_density(params, Partition(X)), logsumexp(expected, axis=1),
                               rtol=1e-12, atol=1e-12)
    lp = model.weighted_log_prob(params, X)
    np.testing.assert_allclose(np.exp(lp - logsumexp(lp, axis=1, keepdims=True)).sum(axis=1), 1.0)


def test_annealed_iterations_match_reference(small):
    """β = 0.5: tempered responsibilities and free energy, as the reference computes them."""
    X, w = small
    K, D, ct, reg = 3, X.shape[1], "full", 1e-6
    weights, means, cov = _start(ct, K, D, seed=3)
    model = MissingDataGaussianMixtureModel(K, ct, reg, beta=0.5)
    params = model.params_from(weights, means, covariances=cov)
    for _ in range(3):
        stats = model.e_step(params, Partition(X, w))
        new = model.m_step(stats, params)
        rw, rm, rc, ll = reference_iteration(X, w, params.weights, params.means, params.covariances,
                                             ct, reg, beta=0.5)
        np.testing.assert_allclose(model.objective(stats, params), ll, rtol=1e-10)
        np.testing.assert_allclose(new.means, rm, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(new.covariances, rc, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(new.weights, rw, rtol=1e-8)
        params = new
    assert MissingDataGaussianMixtureModel(K).tempered(0.5) == model


# -- no NaN: exactly the plain mixture --------------------------------------


@pytest.mark.parametrize("ct", COVARIANCE_TYPES)
def test_without_nan_equals_plain_mixture(blobs, ct):
    """Same data, same seed, k-means init: missing="em" gives the plain fit (to 1e-10; in fact bitwise)."""
    X, _ = blobs
    w = np.random.default_rng(1).uniform(0.5, 2.0, size=len(X))
    kw = dict(covariance_type=ct, random_state=3, partition_rows=400, init_params="kmeans")
    plain = dem.GaussianMixture(3, **kw).fit(X, sample_weight=w)
    em = dem.GaussianMixture(3, missing="em", **kw).fit(X, sample_weight=w)
    for name in FITTED:
        np.testing.assert_allclose(getattr(em, name), getattr(plain, name), rtol=1e-10, atol=0, err_msg=name)
        assert np.array_equal(getattr(em, name), getattr(plain, name)), name
    assert em.n_iter_ == plain.n_iter_ and em.lower_bounds_ == plain.lower_bounds_
    np.testing.assert_array_equal(em.predict(X), plain.predict(X))


# -- monoid and monotonicity -------------------------------------------------


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_statistics_of_splits_add_up(small, ct):
    """Any split of the rows gives, summed, the statistics of the whole."""
    X, w = small
    model = MissingDataGaussianMixtureModel(3, ct)
    weights, means, cov = _start(ct, 3, X.shape[1], seed=2)
    params = model.params_from(weights, means, covariances=cov)
    whole = model.e_step(params, Partition(X, w))
    cuts = [0, 1, 8, 45, 46, 90, len(X)]
    parts = [model.e_step(params, Partition(X[a:b], w[a:b], start=a)) for a, b in zip(cuts[:-1], cuts[1:])]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    for name in ("n_rows", "weight_sum", "log_likelihood", "resp_sum", "first_moment",
                 "second_moment", "n_empty_rows", "observed_count", "n_missing"):
        np.testing.assert_allclose(getattr(total, name), getattr(whole, name), rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    n_empty = int(np.isnan(X).all(axis=1).sum())
    assert whole.n_empty_rows == n_empty and whole.n_rows == len(X) - n_empty


@pytest.mark.parametrize("ct", ["full", "diag"])
def test_observed_log_likelihood_never_decreases(ct):
    """60 exact EM iterations (reg_covar=0) on 35 %-missing data: the objective is monotone."""
    rng = np.random.default_rng(21)
    centres = np.array([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0], [0.0, 2.5, 1.5]])
    X = centres[rng.choice(3, size=900)] + rng.normal(size=(900, 3)) @ (np.eye(3) + 0.3)
    Xm = _with_holes(X, 0.35, seed=22)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("error", ObjectiveDecreasedWarning)
        gm = dem.GaussianMixture(3, covariance_type=ct, missing="em", tol=0.0, max_iter=60, reg_covar=0.0,
                                 init_params="random_from_data", random_state=0, partition_rows=200).fit(Xm)
    lb = np.asarray(gm.lower_bounds_)
    assert len(lb) == 60
    assert np.all(np.diff(lb) >= -1e-12 * np.abs(lb[1:])), np.diff(lb).min()
    assert lb[-1] - lb[0] > 0.01  # it did climb


def test_pattern_order_groups_patterns_by_missing_count():
    rng = np.random.default_rng(0)
    M = rng.random((500, 5)) < 0.4
    order = pattern_order(M)
    assert sorted(order) == list(range(500))
    Mo = M[order]
    counts = Mo.sum(axis=1)
    assert np.all(np.diff(counts) >= 0)
    # Each pattern occupies one contiguous run.
    keys = [tuple(r) for r in Mo]
    runs = [keys[0]] + [b for a, b in zip(keys, keys[1:]) if a != b]
    assert len(runs) == len(set(keys))


def test_many_features_use_byte_keys():
    """More than 64 features: patterns keyed by bytes, same statistics as an unsorted pass."""
    rng = np.random.default_rng(4)
    D = 70
    X = _with_holes(rng.normal(size=(200, D)), 0.02, seed=5)
    model = MissingDataGaussianMixtureModel(2, "full")
    params = model.params_from(np.array([0.5, 0.5]), rng.normal(scale=0.3, size=(2, D)),
                               covariances=np.repeat(np.eye(D)[None], 2, axis=0))
    whole = model.e_step(params, Partition(X))
    halves = model.e_step(params, Partition(X[:77])) + model.e_step(params, Partition(X[77:], start=77))
    np.testing.assert_allclose(whole.second_moment, halves.second_moment, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(whole.log_likelihood, halves.log_likelihood, rtol=1e-12)


# -- recovery from MCAR data --------------------------------------------------

TRUE_MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [6.0, 4.0, -2.0, 1.0], [-5.0, 5.0, 3.0, -3.0]])
TRUE_WEIGHTS = np.array([0.45, 0.35, 0.2])


@pytest.fixture(scope="module")
def mixture_20k():
    """20 000 rows from a known 3-component mixture of correlated 4-D Gaussians."""
    rng = np.random.default_rng(2024)
    labels = rng.choice(3, size=20_000, p=TRUE_WEIGHTS)
    X = np.empty((20_000, 4))
    for k in range(3):
        A = rng.normal(size=(4, 4)) * 0.6 + np.eye(4) * (0.8 + 0.2 * k)
        idx = labels == k
        X[idx] = TRUE_MEANS[k] + rng.normal(size=(idx.sum(), 4)) @ A.T
    return X


@pytest.fixture(scope="module")
def complete_fit(mixture_20k):
    return dem.GaussianMixture(3, random_state=0, tol=1e-6, max_iter=300).fit(mixture_20k)


@pytest.mark.parametrize("fraction", [0.10, 0.25, 0.40])
def test_parameters_from_incomplete_data_are_close_to_complete_data_fit(mixture_20k, complete_fit, fraction):
    """MCAR holes at 10/25/40 %: each parameter within 5 of its standard errors.

    Tolerance: the complete-data estimate has standard error SE (below); the
    incomplete-data estimate uses a subset of the same information, and for
    MCAR data in which each entry is observed with probability 1 − p its
    standard error is at most about SE/√(1 − p) (the information about a
    coordinate scales with the fraction of rows observing it, less when
    other coordinates predict it). Their difference is therefore within a
    few SE/√(1 − p); we allow 5 of those. SE of a mean coordinate is
    √(Σ_jj / n_k); of a covariance entry √((Σ_ii Σ_jj + Σ_ij²) / n_k); of a
    weight √(π(1 − π) / N). (Measured worst |Δ|/SE: 0.8 at 10 %, 1.4 at
    25 %, 1.6 at 40 %, against limits 5.3, 5.8, 6.5.)
    """
    X = mixture_20k
    ref = complete_fit
    Xm = _with_holes(X, fraction, seed=int(fraction * 100))
    gm = dem.GaussianMixture(3, missing="em", random_state=0, tol=1e-6, max_iter=300).fit(Xm)
    assert gm.converged_
    order = [int(np.argmin(np.linalg.norm(gm.means_ - m, axis=1))) for m in ref.means_]
    assert sorted(order) == [0, 1, 2]
    N = len(X)
    nk = ref.weights_ * N
    inflate = 5.0 / np.sqrt(1.0 - fraction)
    cov = ref.covariances_
    var = np.diagonal(cov, axis1=1, axis2=2)
    se_mean = np.sqrt(var / nk[:, None])
    se_cov = np.sqrt((var[:, :, None] * var[:, None, :] + cov**2) / nk[:, None, None])
    se_w = np.sqrt(ref.weights_ * (1 - ref.weights_) / N)
    ratios = {
        "means": np.abs(gm.means_[order] - ref.means_) / se_mean,
        "covariances": np.abs(gm.covariances_[order] - cov) / se_cov,
        "weights": np.abs(gm.weights_[order] - ref.weights_) / se_w,
    }
    print(f"{fraction:.0%} missing, worst |Δ|/SE: "
          + ", ".join(f"{name} {r.max():.2f}" for name, r in ratios.items()))
    for name, r in ratios.items():
        assert r.max() < inflate, f"{name}: {r.max():.2f} standard errors at {fraction:.0%} missing"
    # And it is near the truth.
    truth = [int(np.argmin(np.linalg.norm(gm.means_ - m, axis=1))) for m in TRUE_MEANS]
    np.testing.assert_allclose(gm.means_[truth], TRUE_MEANS, atol=0.15)


# -- errors -------------------------------------------------------------------


def test_nan_is_an_error_by_default():
    X = np.random.default_rng(0).normal(size=(50, 3))
    X[17, 2] = np.nan
    with pytest.raises(DataError, match=r"^X contains NaN at row 17, feature 2$"):
        dem.GaussianMixture(2, random_state=0).fit(X)


@pytest.mark.parametrize("missing", ["error", "em"])
def test_inf_is_an_error_in_both_modes(missing):
    X = np.random.default_rng(0).normal(size=(60, 3))
    X[::5, 0] = np.nan if missing == "em" else 0.0
    X[33, 1] = np.inf
    with pytest.raises(DataError, match=r"X contains inf at row 33, feature 1"):
        dem.GaussianMixture(2, random_state=0, missing=missing).fit(X)
    # Also when the inf is in a row the init sample skips, and at E-step time.
    model = MissingDataGaussianMixtureModel(2)
    params = model.params_from(np.array([0.5, 0.5]), np.zeros((2, 3)), covariances=np.repeat(np.eye(3)[None], 2, 0))
    X[0, 0] = np.nan
    with pytest.raises(DataError, match=r"^X contains inf at row 133, feature 1"):
        model.e_step(params, Partition(X, start=100))


def test_column_entirely_missing_is_named():
    X = np.random.default_rng(0).normal(size=(80, 4))
    X[:, 2] = np.nan
    X[::3, 0] = np.nan
    with pytest.raises(DataError, match=r"^feature 2 of X is entirely missing \(NaN in every row\); drop it"):
        dem.GaussianMixture(2, missing="em", random_state=0).fit(X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # k-means on an all-NaN sample
def test_all_rows_empty():
    X = np.full((30, 3), np.nan)
    with pytest.raises(DataError, match=r"^every row of X is entirely missing"):
        dem.GaussianMixture(2, missing="em", random_state=0).fit(X)


def test_missing_must_be_error_or_em():
    with pytest.raises(ConfigError, match="The 'missing' parameter of GaussianMixture must be a str among"):
        dem.GaussianMixture(2, missing="drop").fit(np.zeros((10, 2)))


def test_predict_accepts_nan_only_with_em(small):
    X, _ = small
    complete = X[~np.isnan(X).any(axis=1)]
    em = dem.GaussianMixture(2, missing="em", random_state=0).fit(X)
    assert em.predict(X).shape == (len(X),)
    assert np.isfinite(em.score_samples(X)).all()
    plain = dem.GaussianMixture(2, random_state=0).fit(complete)
    with pytest.raises(DataError, match="NaN or inf"):
        plain.predict(X)
    Xi = X.copy()
    Xi[3, 1] = -np.inf
    with pytest.raises(DataError, match="inf at row 3"):
        em.predict(Xi)


# -- persistence and the cluster ------------------------------------------------


def test_save_load_and_resume_from_a_checkpoint(small, tmp_path):
    X, w = small
    kw = dict(missing="em", random_state=4, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        straight = dem.GaussianMixture(3, max_iter=6, **kw).fit(X, sample_weight=w)
        run = tmp_path / "run"
        dem.GaussianMixture(3, max_iter=3, checkpoint_dir=str(run), **kw).fit(X, sample_weight=w)
        resumed = dem.GaussianMixture(3, max_iter=6, checkpoint_dir=str(run), **kw).fit(X, sample_weight=w)
    for name in FITTED:
        assert np.array_equal(getattr(resumed, name), getattr(straight, name)), name
    loaded = dem.load(str(run))
    for name in FITTED:
        assert np.array_equal(getattr(loaded, name), getattr(straight, name)), name


@pytest.mark.slow
def test_cluster_fit_on_zarr_with_nan_is_bitwise_local(tmp_path, local_cluster_client):
    """A real 2-process cluster reading a Zarr group with NaN gives the local scheduler's bits."""
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(8)
    X = rng.normal(size=(3000, 5)) + rng.choice([-4.0, 0.0, 4.0], size=(3000, 1))
    X = _with_holes(X, 0.3, seed=9)
    w = rng.uniform(0.5, 2.0, size=3000)
    path = tmp_path / "holes.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("X", data=X, chunks=(250, 5))
    group.create_array("weights", data=w, chunks=(250,))
    kw = dict(missing="em", random_state=1, partition_rows=500, max_iter=15, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        local = dem.GaussianMixture(3, **kw).fit(str(path), sample_weight="weights")
        remote = dem.GaussianMixture(3, client=local_cluster_client, **kw).fit(str(path), sample_weight="weights")
    for name in FITTED + ("lower_bounds_",):
        assert np.array_equal(np.asarray(getattr(remote, name)), np.asarray(getattr(local, name))), name
