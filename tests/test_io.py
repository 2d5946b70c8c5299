"""Saving and loading fitted models as Zarr groups that xarray opens."""

from __future__ import annotations

import json
import os
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
    pytest.mark.filterwarnings("ignore:Consolidated metadata is currently not part"),
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


# -- issue 17 item 1: a damaged model is refused in one line ---------------------

def _damaged(path) -> str:
    with pytest.raises(CheckpointError) as info:
        dem.load(str(path))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def saved(tmp_path, X):
    est = _fit(X, covariance_type="full")
    path = tmp_path / "model.zarr"
    est.save(str(path))
    return est, path


def test_checksum_is_written_with_the_model(saved):
    import hashlib

    est, path = saved
    checksum = json.loads(zarr.open_group(str(path), mode="r").attrs["dem_checksum"])
    # Independent reference: sha256 of the little-endian float64 bytes, computed here.
    assert checksum["arrays"]["means"] == {
        "shape": [3, 3], "sha256": hashlib.sha256(np.asarray(est.means_, dtype="<f8").tobytes()).hexdigest()}
    assert set(checksum["arrays"]) == {"weights", "means", "covariances", "precisions_cholesky", "component",
                                       "feature", "feature_"}


def test_a_missing_chunk_is_refused_not_loaded_as_nan(saved):
    # The reproduction: `rm model.zarr/means/c/0/0` used to load NaN means.
    _, path = saved
    (path / "means" / "c" / "0" / "0").unlink()
    assert _damaged(path) == (f"the model at {str(path)!r} is damaged: array 'means' holds 9 NaN values of 9 "
                              "(a chunk is missing or unreadable); save or fit it again")


def test_a_missing_array_is_named(saved):
    import shutil

    _, path = saved
    shutil.rmtree(path / "precisions_cholesky")
    (path / "zarr.json").write_text(json.dumps(_without_consolidated(path)))
    assert _damaged(path) == (f"the model at {str(path)!r} is damaged: array 'precisions_cholesky' is missing; "
                              "save or fit it again")


def _without_consolidated(path) -> dict:
    meta = json.loads((path / "zarr.json").read_text())
    meta.pop("consolidated_metadata", None)
    return meta


def test_changed_finite_values_fail_the_checksum(saved):
    _, path = saved
    arr = zarr.open_array(str(path / "weights"), mode="r+")
    arr[0] = arr[0] + 1e-12  # still finite and positive: only the checksum can tell
    assert _damaged(path) == (f"the model at {str(path)!r} is damaged: array 'weights' does not match the "
                              "checksum written with it; save or fit it again")


def test_shapes_inconsistent_with_the_covariance_type_are_named(tmp_path, X):
    path = tmp_path / "m.zarr"
    _fit(X, covariance_type="diag").save(str(path))
    group = zarr.open_group(str(path), mode="r+")
    hp = json.loads(group.attrs["hyperparameters"])
    group.attrs["hyperparameters"] = json.dumps(dict(hp, covariance_type="full"))
    zarr.consolidate_metadata(str(path))
    assert _damaged(path) == (f"the model at {str(path)!r} is damaged: array 'covariances' has shape (3, 3), "
                              "the model's sizes need (3, 3, 3); save or fit it again")


def test_edited_hyperparameters_fail_the_checksum(saved):
    _, path = saved
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["hyperparameters"] = group.attrs["hyperparameters"].replace('"reg_covar": 1e-06', '"reg_covar": 0.1')
    zarr.consolidate_metadata(str(path))
    assert "its attributes (hyperparameters, history) do not match the checksum" in _damaged(path)


def test_a_model_written_without_a_checksum_still_loads_and_is_still_checked(saved, X_new):
    est, path = saved
    group = zarr.open_group(str(path), mode="r+")
    del group.attrs["dem_checksum"]
    zarr.consolidate_metadata(str(path))
    back = dem.load(str(path))
    np.testing.assert_array_equal(back.score_samples(X_new), est.score_samples(X_new))
    (path / "means" / "c" / "0" / "0").unlink()
    assert "array 'means' holds 9 NaN values of 9" in _damaged(path)


def test_a_damaged_hmm_is_refused(tmp_path):
    from dem import GaussianHMM

    X = np.random.default_rng(3).normal(size=(200, 2))
    est = GaussianHMM(2, n_iter=3, random_state=0).fit(X, [80, 120])
    path = tmp_path / "hmm.zarr"
    est.save(str(path))
    np.testing.assert_array_equal(dem.load(str(path)).means_, est.means_)
    (path / "transmat" / "c" / "0" / "0").unlink()
    expected = (f"the model at {str(path)!r} is damaged: array 'transmat' holds 4 NaN values of 4 "
                "(a chunk is missing or unreadable); save or fit it again")
    assert _damaged(path) == expected


# -- issue 17 item 7: temporary model directories do not outlive their writer -----

def test_a_failed_save_removes_its_temporary_directory(tmp_path, X, monkeypatch):
    import errno

    est = _fit(X)
    real_to_zarr = xr.Dataset.to_zarr

    def full_disk(self, store, *args, **kwargs):
        real_to_zarr(self, store, *args, **kwargs)  # the chunks are on disk when the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(store))

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk)
    with pytest.raises(OSError) as info:
        est.save(str(tmp_path / "model.zarr"))
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_temporaries_of_dead_processes_are_collected_by_the_next_save(tmp_path, X):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)  # a process that has exited: its temporaries are garbage
    (tmp_path / f"model.zarr.tmp-{pid}").mkdir()
    (tmp_path / f"model.zarr.tmp-{pid}" / "zarr.json").write_text("{}")
    (tmp_path / f"model.zarr.old-{pid}").mkdir()
    live = tmp_path / f"model.zarr.tmp-{os.getppid()}"  # a live process (pytest's parent): left alone
    live.mkdir()
    # Not the temporaries of this model: a user's files that only look alike stay.
    kept = [f"notes.old-{pid}", f"other.zarr.tmp-{pid}", "notes.tmp-abc"]
    for name in kept:
        (tmp_path / name).write_text("not ours")
    _fit(X).save(str(tmp_path / "model.zarr"))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.zarr", live.name, *kept])
