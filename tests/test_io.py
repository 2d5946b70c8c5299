"""Saving and loading fitted models as Zarr groups that xarray opens."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import xarray as xr
import zarr
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

import dem
from dem.errors import CheckpointError

pytestmark = [
    # dem writes unconsolidated metadata; xarray's default open says it falls back.
    pytest.mark.filterwarnings("ignore:Failed to open Zarr store with consolidated metadata"),
    # String feature coordinates have no Zarr-v3 spec yet.
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
]

FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")
COV_DIMS = {"full": ("component", "feature", "feature_"), "tied": ("feature", "feature_"),
            "diag": ("component", "feature"), "spherical": ("component",)}


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return dem.GaussianMixture(3, random_state=0, max_iter=20, **kw).fit(X)


@pytest.fixture(scope="module")
def X(blobs):
    return blobs[0]


@pytest.fixture(scope="module")
def X_new():
    return np.random.default_rng(9).normal(scale=6.0, size=(300, 3))


@pytest.mark.parametrize("ct", ["full", "tied", "diag", "spherical"])
def test_save_load_round_trip(tmp_path, X, X_new, ct):
    est = _fit(X, covariance_type=ct, reg_covar=1e-5, tol=1e-4)
    path = tmp_path / "model.zarr"
    est.save(str(path))
    back = dem.load(str(path))
    assert isinstance(back, dem.GaussianMixture)
    for name in FITTED:
        np.testing.assert_array_equal(getattr(back, name), getattr(est, name), err_msg=name)
    np.testing.assert_array_equal(back.predict(X_new), est.predict(X_new))
    np.testing.assert_array_equal(back.predict_proba(X_new), est.predict_proba(X_new))
    np.testing.assert_array_equal(back.score_samples(X_new), est.score_samples(X_new))
    assert back.score(X_new) == est.score(X_new)
    assert back.bic(X_new) == est.bic(X_new)
    assert (back.covariance_type, back.n_components, back.reg_covar, back.tol) == (ct, 3, 1e-5, 1e-4)
    assert (back.converged_, back.n_iter_, back.lower_bound_) == (est.converged_, est.n_iter_, est.lower_bound_)
    assert back.lower_bounds_ == est.lower_bounds_
    assert back.n_features_in_ == 3 and back.feature_names_ is None

    # Independent reference: sklearn holding the loaded parameters scores the same.
    sk = SkGaussianMixture(3, covariance_type=ct, max_iter=1, weights_init=back.weights_,
                           means_init=back.means_, precisions_init=back.precisions_)
    sk.weights_, sk.means_, sk.covariances_ = back.weights_, back.means_, back.covariances_
    sk.precisions_cholesky_, sk.precisions_ = back.precisions_cholesky_, back.precisions_
    sk.converged_, sk.n_iter_, sk.lower_bound_, sk.n_features_in_ = True, 1, 0.0, 3
    np.testing.assert_allclose(back.score_samples(X_new), sk.score_samples(X_new), rtol=1e-9)

    ds = xr.open_zarr(str(path))
    assert set(ds.data_vars) >= {"weights", "means", "covariances", "precisions_cholesky"}
    assert ds["weights"].dims == ("component",)
    assert ds["means"].dims == ("component", "feature")
    assert ds["covariances"].dims == COV_DIMS[ct]
    assert ds.sizes["component"] == 3 and ds.sizes["feature"] == 3
    np.testing.assert_array_equal(ds["means"].values, est.means_)
    np.testing.assert_array_equal(ds["covariances"].values, est.covariances_)
    assert json.loads(ds.attrs["hyperparameters"])["covariance_type"] == ct


def test_feature_names_survive(tmp_path, X):
    arr = xr.DataArray(X, dims=("sample", "feature"), coords={"feature": ["a", "b", "c"]})
    est = _fit(arr)
    est.save(str(tmp_path / "m.zarr"))
    back = dem.load(str(tmp_path / "m.zarr"))
    np.testing.assert_array_equal(back.feature_names_, ["a", "b", "c"])
    ds = xr.open_zarr(str(tmp_path / "m.zarr"))
    np.testing.assert_array_equal(ds["feature"].values, ["a", "b", "c"])
    np.testing.assert_array_equal(back.predict(arr).values, est.predict(arr).values)


def test_save_overwrites_an_existing_model(tmp_path, X, X_new):
    path = str(tmp_path / "m.zarr")
    _fit(X, covariance_type="diag").save(path)
    est = _fit(X, covariance_type="spherical")
    est.save(path)
    back = dem.load(path)
    assert back.covariance_type == "spherical"
    np.testing.assert_array_equal(back.score_samples(X_new), est.score_samples(X_new))


def test_load_a_run_directory(tmp_path, X, X_new):
    run = tmp_path / "run"
    est = _fit(X, checkpoint_dir=str(run))
    back = dem.load(str(run))
    np.testing.assert_array_equal(back.means_, est.means_)
    np.testing.assert_array_equal(back.score_samples(X_new), est.score_samples(X_new))


def test_load_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        dem.load(str(tmp_path / "nothing.zarr"))


def test_load_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError):
        dem.load(str(tmp_path / "plain"))


def test_load_a_data_group_that_is_not_a_model(tmp_path, X):
    g = zarr.open_group(str(tmp_path / "data.zarr"), mode="w")
    g.create_array("X", data=X, chunks=(400, 3))
    with pytest.raises(CheckpointError, match="data.zarr"):
        dem.load(str(tmp_path / "data.zarr"))


def test_load_a_dataset_of_another_kind(tmp_path):
    xr.Dataset({"v": ("x", np.arange(3.0))}, attrs={"title": "not dem"}).to_zarr(
        str(tmp_path / "other.zarr"), consolidated=False)
    with pytest.raises(CheckpointError, match="format version"):
        dem.load(str(tmp_path / "other.zarr"))
