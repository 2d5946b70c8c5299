"""xarray in and out: named dims and coordinates through fit, predict and the parameters.

References: scikit-learn's GaussianMixture started from the same parameters
(dem promises the same numbers), and plain numpy fits of the same matrix.
"""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.io import params_dataset

FEATURES = ["height", "width", "depth"]


@pytest.fixture(scope="module")
def data(blobs):
    X, _ = blobs
    rng = np.random.default_rng(2)
    # Sample labels that are neither 0..n-1 nor sorted: alignment must follow them, not positions.
    samples = rng.permutation(np.arange(10_000, 10_000 + len(X)))
    return X, xr.DataArray(X, dims=("sample", "feature"), coords={"sample": samples, "feature": FEATURES},
                           name="X")


def _start(X, covariance_type="full", K=3, seed=0):
    """A complete starting point (weights, means, precisions): both libraries then run the same EM."""
    rng = np.random.default_rng(seed)
    means = X[rng.choice(len(X), K, replace=False)]
    D = X.shape[1]
    precisions = {"full": np.repeat(np.eye(D)[None], K, axis=0), "tied": np.eye(D),
                  "diag": np.ones((K, D)), "spherical": np.ones(K)}[covariance_type]
    return dict(weights_init=np.full(K, 1.0 / K), means_init=means, precisions_init=precisions)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_params_dataset_has_named_dims_and_the_input_feature_coordinate(data, covariance_type):
    X, arr = data
    kw = dict(n_components=3, covariance_type=covariance_type, max_iter=5, tol=0.0, random_state=0,
              **_start(X, covariance_type))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = dem.GaussianMixture(**kw).fit(arr)
        sk = SkGaussianMixture(**kw).fit(X)
    ds = params_dataset(est)
    assert isinstance(ds, xr.Dataset)
    cov_dims = {"full": ("component", "feature", "feature_"), "tied": ("feature", "feature_"),
                "diag": ("component", "feature"), "spherical": ("component",)}[covariance_type]
    assert ds["weights"].dims == ("component",)
    assert ds["means"].dims == ("component", "feature")
    assert ds["covariances"].dims == cov_dims and ds["precisions"].dims == cov_dims
    assert list(ds["feature"].values) == FEATURES
    if "feature_" in cov_dims:
        assert list(ds["feature_"].values) == FEATURES
    assert list(ds["component"].values) == [0, 1, 2]
    # The numbers are scikit-learn's from the same start.
    np.testing.assert_allclose(ds["weights"].values, sk.weights_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(ds["means"].values, sk.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(ds["covariances"].values, sk.covariances_, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ds["precisions"].values, sk.precisions_, rtol=1e-6, atol=1e-8)
    # Label-based selection works as xarray users expect.
    np.testing.assert_allclose(ds["means"].sel(feature="width").values, sk.means_[:, 1], rtol=1e-7, atol=1e-9)
    assert ds.attrs["covariance_type"] == covariance_type and ds.attrs["n_iter"] == 5


def test_predict_on_a_dataarray_returns_dataarrays_aligned_on_sample(data):
    X, arr = data
    kw = dict(n_components=3, max_iter=20, tol=1e-6, random_state=0, **_start(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = dem.GaussianMixture(**kw).fit(arr)
        sk = SkGaussianMixture(**kw).fit(X)
    # Transposed and in another sample order: dem must follow the dims and the labels.
    order = np.random.default_rng(9).permutation(len(X))[:500]
    query = arr.isel(sample=order).transpose("feature", "sample")
    labels = est.predict(query)
    proba = est.predict_proba(query)
    assert isinstance(labels, xr.DataArray) and labels.dims == ("sample",)
    assert isinstance(proba, xr.DataArray) and proba.dims == ("sample", "component")
    np.testing.assert_array_equal(labels["sample"].values, arr["sample"].values[order])
    np.testing.assert_array_equal(proba["sample"].values, arr["sample"].values[order])
    np.testing.assert_array_equal(labels.values, sk.predict(X[order]))
    np.testing.assert_allclose(proba.values, sk.predict_proba(X[order]), atol=1e-8)
    # xarray alignment by label: the result lines up with the original array.
    aligned = labels.reindex(sample=arr["sample"].values[np.sort(order)])
    np.testing.assert_array_equal(aligned.values, sk.predict(X[np.sort(order)]))
    # Dask-backed DataArray: lazy in, lazy out, same numbers.
    lazy = query.chunk({"sample": 128})
    lazy_proba = est.predict_proba(lazy)
    assert isinstance(lazy_proba.data, da.Array)
    np.testing.assert_allclose(lazy_proba.compute().values, sk.predict_proba(X[order]), atol=1e-8)


def test_fit_a_dataset_variable(data):
    X, arr = data
    ds = xr.Dataset({"X": arr, "other": (("sample",), np.zeros(len(X)))})
    kw = dict(n_components=3, random_state=4, max_iter=10, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_ds = dem.GaussianMixture(**kw).fit(ds, variable="X")
        from_numpy = dem.GaussianMixture(**kw).fit(X)
    for attr in ("weights_", "means_", "covariances_", "lower_bound_"):
        assert np.array_equal(getattr(from_ds, attr), getattr(from_numpy, attr)), attr
    assert list(params_dataset(from_ds)["feature"].values) == FEATURES
    with pytest.raises(dem.DataError, match="variable"):
        dem.GaussianMixture(**kw).fit(ds)


@pytest.mark.xfail(not hasattr(dem.GaussianMixture, "params_dataset"), strict=True, raises=AttributeError,
                   reason="the estimator method and dem.params_dataset are proposed with issue #8")
def test_estimator_and_package_expose_params_dataset(data):
    X, arr = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = dem.GaussianMixture(3, random_state=0, max_iter=5).fit(arr)
    xr.testing.assert_identical(est.params_dataset(), params_dataset(est))
    assert dem.params_dataset is params_dataset
