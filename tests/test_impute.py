"""Imputation with a fitted mixture: conditional expectations, draws, Zarr output.

References: a per-row loop computing ``Σ_k r_k(x_o) (μ_k,m + Σ_k,mo Σ_k,oo⁻¹
(x_o − μ_k,o))`` with scipy and ``numpy.linalg.solve``; column-mean
imputation as the baseline to beat; the law of large numbers for the draws.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import zarr
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning

import dem
from dem.errors import ConfigError, DataError
from dem.impute import impute


def _with_holes(X: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    out = X.copy()
    out[np.random.default_rng(seed).random(X.shape) < fraction] = np.nan
    return out


def _full_covariances(est) -> np.ndarray:
    K, D = est.means_.shape
    cov = est.covariances_
    return {"full": lambda: cov, "tied": lambda: np.repeat(cov[None], K, 0),
            "diag": lambda: np.stack([np.diag(c) for c in cov]),
            "spherical": lambda: np.stack([np.eye(D) * c for c in cov])}[est.covariance_type]()


def reference_expectation(est, X: np.ndarray) -> np.ndarray:
    """E[x_m | x_o] under the fitted mixture, one row at a time."""
    covs = _full_covariances(est)
    K = len(est.weights_)
    out = X.copy()
    for n in range(len(X)):
        o = ~np.isnan(X[n])
        m = ~o
        if not m.any():
            continue
        lp = np.array([np.log(est.weights_[k]) + (
            multivariate_normal(est.means_[k][o], covs[k][np.ix_(o, o)]).logpdf(X[n, o]) if o.any() else 0.0)
            for k in range(K)])
        r = np.exp(lp - logsumexp(lp))
        fill = np.zeros(m.sum())
        for k in range(K):
            cond = est.means_[k][m].copy()
            if o.any():
                cond += covs[k][np.ix_(m, o)] @ np.linalg.solve(covs[k][np.ix_(o, o)], X[n, o] - est.means_[k][o])
            fill += r[k] * cond
        out[n, m] = fill
    return out


@pytest.fixture(scope="module")
def data():
    """10 000 rows of a 3-component mixture of strongly correlated 5-D Gaussians, 25 % MCAR."""
    rng = np.random.default_rng(77)
    means = np.array([[0, 0, 0, 0, 0], [5, 3, -2, 1, 0], [-4, 4, 3, -2, 2.0]])
    labels = rng.choice(3, size=10_000, p=[0.5, 0.3, 0.2])
    X = np.empty((10_000, 5))
    for k in range(3):
        A = rng.normal(size=(5, 5)) * 0.7 + np.eye(5) * 0.5
        idx = labels == k
        X[idx] = means[k] + rng.normal(size=(idx.sum(), 5)) @ A.T
    Xm = _with_holes(X, 0.25, seed=78)
    Xm[11] = np.nan  # a row with nothing observed
    return X, Xm


@pytest.fixture(scope="module", params=["full", "diag"])
def fitted(request, data):
    _, Xm = data
    return dem.GaussianMixture(3, covariance_type=request.param, missing="em", random_state=0,
                               tol=1e-5, max_iter=200).fit(Xm)


def test_expectation_matches_reference_and_keeps_observed_values(data, fitted):
    _, Xm = data
    rows = Xm[:300]
    out = fitted.impute(rows)
    observed = ~np.isnan(rows)
    assert not np.isnan(out).any()
    assert np.array_equal(out[observed], rows[observed])  # bit for bit
    np.testing.assert_allclose(out, reference_expectation(fitted, rows), rtol=1e-10, atol=1e-10)
    # A row with nothing observed gets the mixture mean.
    np.testing.assert_allclose(out[11], fitted.weights_ @ fitted.means_, rtol=1e-12)


def test_beats_column_means_on_held_out_entries(data, fitted):
    """RMSE on the removed entries: conditional expectation vs the column means of observed data."""
    X, Xm = data
    held_out = np.isnan(Xm)
    ours = fitted.impute(Xm)
    col_mean = np.where(held_out, np.nanmean(Xm, axis=0), Xm)
    rmse = lambda Y: float(np.sqrt(np.mean((Y[held_out] - X[held_out]) ** 2)))  # noqa: E731
    ratio = rmse(ours) / rmse(col_mean)
    print(f"{fitted.covariance_type}: RMSE {rmse(ours):.3f} vs column means {rmse(col_mean):.3f} "
          f"({1 - ratio:.0%} lower)")
    # Measured: full 40 % lower (1.48 vs 2.49), diag 26 % lower (1.84 vs 2.49): a
    # diagonal model predicts a coordinate from the component only, a full one
    # also from the correlated observed coordinates.
    assert ratio < (0.7 if fitted.covariance_type == "full" else 0.85)


def test_zarr_round_trip_bounded_memory_tasks(data, fitted, tmp_path):
    """Zarr in → Zarr out through several tasks: same numbers as numpy, same chunks, NaN gone."""
    _, Xm = data
    src = tmp_path / "in.zarr"
    group = zarr.open_group(str(src), mode="w")
    group.create_array("X", data=Xm, chunks=(700, 5))
    out = impute(fitted, str(src), str(tmp_path / "out.zarr"), partition_rows=2100)
    result = zarr.open_group(out, mode="r")
    assert result["X"].chunks == (700, 5) and result["X"].dtype == Xm.dtype
    Y = result["X"][:]
    observed = ~np.isnan(Xm)
    assert not np.isnan(Y).any()
    assert np.array_equal(Y[observed], Xm[observed])
    np.testing.assert_array_equal(Y, fitted.impute(Xm))
    info = result.attrs["dem_impute"]
    assert info["n_imputed"] == int(np.isnan(Xm).sum()) and info["n_empty_rows"] == int(np.isnan(Xm).all(axis=1).sum())
    assert "draws" not in result
    xr = pytest.importorskip("xarray")
    ds = xr.open_zarr(out, consolidated=False)
    assert ds["X"].dims == ("sample", "feature")
    with pytest.raises(ConfigError, match="already exists"):
        impute(fitted, str(src), out)
    impute(fitted, str(src), out, overwrite=True)


def test_draws_average_to_the_expectation(data, fitted):
    """Mean of 600 draws is within 5 Monte-Carlo standard errors of E[x_m | x_o] at every entry."""
    _, Xm = data
    rows = Xm[:40]
    expectation, draws = fitted.impute(rows, n_draws=600, random_state=3)
    assert draws.shape == (600, 40, 5)
    observed = ~np.isnan(rows)
    assert np.array_equal(draws[:, observed], np.broadcast_to(rows[observed], (600, observed.sum())))
    missing = ~observed
    mc_mean = draws.mean(axis=0)[missing]
    mc_se = draws.std(axis=0)[missing] / np.sqrt(600)
    z = np.abs(mc_mean - expectation[missing]) / mc_se
    assert z.max() < 5.0, z.max()
    assert (draws.std(axis=0)[missing] > 0).all()  # real draws, not copies of the mean
    again = fitted.impute(rows, n_draws=600, random_state=3)[1]
    np.testing.assert_array_equal(again, draws)


def test_zarr_draws_do_not_depend_on_partitioning(data, fitted, tmp_path):
    _, Xm = data
    src = tmp_path / "in.zarr"
    zarr.open_group(str(src), mode="w").create_array("X", data=Xm[:2000], chunks=(250, 5))
    a = zarr.open_group(impute(fitted, str(src), str(tmp_path / "a.zarr"), n_draws=3, random_state=5,
                               partition_rows=500), mode="r")
    b = zarr.open_group(impute(fitted, str(src), str(tmp_path / "b.zarr"), n_draws=3, random_state=5,
                               partition_rows=1000), mode="r")
    assert a["draws"].shape == (3, 2000, 5) and a["draws"].chunks == (1, 250, 5)
    np.testing.assert_array_equal(a["draws"][:], b["draws"][:])
    np.testing.assert_array_equal(a["X"][:], b["X"][:])
    assert not np.isnan(a["draws"][:]).any()


def test_float32_dask_and_xarray_inputs(data, fitted):
    _, Xm = data
    rows = Xm[:500]
    x32 = rows.astype(np.float32)
    out32 = fitted.impute(x32)
    assert out32.dtype == np.float32
    obs = ~np.isnan(x32)
    assert np.array_equal(out32[obs], x32[obs])
    lazy = fitted.impute(da.from_array(rows, chunks=(120, 5)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), fitted.impute(rows), rtol=1e-13)
    xr = pytest.importorskip("xarray")
    arr = xr.DataArray(rows, dims=("sample", "feature"), coords={"feature": list("abcde")})
    out = fitted.impute(arr)
    assert out.dims == ("sample", "feature") and list(out["feature"].values) == list("abcde")
    np.testing.assert_array_equal(out.values, fitted.impute(rows))


def test_loaded_plain_model_imputes(data, tmp_path):
    """A model fitted on complete rows with missing="error", saved and loaded, still imputes."""
    X, Xm = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        plain = dem.GaussianMixture(3, random_state=0).fit(X[:3000])
    plain.save(str(tmp_path / "m.zarr"))
    loaded = dem.load(str(tmp_path / "m.zarr"))
    np.testing.assert_array_equal(impute(loaded, Xm[:100]), plain.impute(Xm[:100]))


def test_errors(data, fitted, tmp_path):
    _, Xm = data
    bad = Xm[:20].copy()
    bad[4, 2] = np.inf
    with pytest.raises(DataError, match="inf at row 4, feature 2"):
        fitted.impute(bad)
    with pytest.raises(DataError, match="has 4 features"):
        fitted.impute(Xm[:10, :4])
    with pytest.raises(ConfigError, match="needs out="):
        fitted.impute(str(tmp_path / "whatever.zarr"))
    with pytest.raises(ConfigError, match="n_draws"):
        fitted.impute(Xm[:10], n_draws=-1)
    with pytest.raises(ConfigError, match="need out="):
        fitted.impute(da.from_array(Xm[:10]), n_draws=2)
