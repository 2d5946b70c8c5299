"""Saving and loading fitted models as Zarr groups (no pickle anywhere).

A saved model is an ``xarray.Dataset`` written with ``to_zarr``: the
parameters are arrays with named dims (``component``, ``feature``,
``feature_``), the hyperparameters and fit summary are JSON attributes. So
``xr.open_zarr(path)`` opens it, and :func:`load` turns it back into an
estimator.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from dem.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_DIRNAME = "model.zarr"

_HYPERPARAMETERS = ("n_components", "covariance_type", "tol", "reg_covar", "max_iter",
                    "n_init", "init_params", "partition_rows", "fan_in", "missing", "beta_init",
                    "beta_rate")


def _cov_dims(covariance_type: str) -> tuple[str, ...]:
    return {"full": ("component", "feature", "feature_"), "tied": ("feature", "feature_"),
            "diag": ("component", "feature"), "spherical": ("component",)}[covariance_type]


def model_dataset(est: Any) -> Any:
    """The fitted parameters of ``est`` as an ``xarray.Dataset``."""
    import xarray as xr

    dims = _cov_dims(est.covariance_type)
    names = est.feature_names_ if getattr(est, "feature_names_", None) is not None else np.arange(est.n_features_in_)
    ds = xr.Dataset(
        {
            "weights": (("component",), np.asarray(est.weights_)),
            "means": (("component", "feature"), np.asarray(est.means_)),
            "covariances": (dims, np.asarray(est.covariances_)),
            "precisions_cholesky": (dims, np.asarray(est.precisions_cholesky_)),
        },
        coords={"component": np.arange(len(est.weights_)), "feature": np.asarray(names)},
    )
    if "feature_" in dims:
        ds = ds.assign_coords(feature_=np.asarray(names))
    ds.attrs.update(
        dem_format_version=FORMAT_VERSION,
        model_kind="gmm",
        hyperparameters=json.dumps({k: getattr(est, k) for k in _HYPERPARAMETERS}),
        converged=bool(est.converged_),
        n_iter=int(est.n_iter_),
        lower_bound=float(est.lower_bound_),
        history=json.dumps(getattr(est, "history_", [])),
    )
    return ds


def save_model(est: Any, path: str, *, storage_options: dict | None = None) -> None:
    """Write ``est`` to ``path`` atomically where the filesystem allows (temp dir + rename)."""
    import warnings

    ds = model_dataset(est)
    with warnings.catch_warnings():
        # Consolidated metadata lets `xr.open_zarr(path)` open the model without
        # a fallback warning; zarr 3 warns that it is not in the v3 spec yet.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        write_atomically(ds, os.fspath(path), storage_options)


def write_atomically(ds: Any, path: str, storage_options: dict | None = None) -> None:
    """Write a Dataset as a Zarr group: temp dir + rename locally, straight to a URL otherwise."""
    import shutil

    if "://" in path:
        ds.to_zarr(path, mode="w", storage_options=storage_options, consolidated=True)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    ds.to_zarr(tmp, mode="w", consolidated=True)
    if os.path.exists(path):
        old = f"{path}.old-{os.getpid()}"
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def load(path: str, *, storage_options: dict | None = None) -> Any:
    """Read a saved model, or the final model of a run directory.

    Parameters
    ----------
    path : str
        A model Zarr group written by ``save``, or a run directory written by
        ``dem fit`` (its ``model.zarr`` is read).

    Returns
    -------
    dem.GaussianMixture
        A fitted estimator.
    """
    import xarray as xr

    from dem.estimators import GaussianMixture
    from dem.models.gmm import precisions_from_cholesky

    path = os.fspath(path)
    if "://" not in path:
        if not os.path.exists(path):
            raise CheckpointError(f"no model at {path!r}: the path does not exist")
        if os.path.isdir(os.path.join(path, MODEL_DIRNAME)):
            path = os.path.join(path, MODEL_DIRNAME)
    else:
        import fsspec

        fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
        if fs.exists(f"{root.rstrip('/')}/{MODEL_DIRNAME}"):  # a run directory: its final model
            path = f"{path.rstrip('/')}/{MODEL_DIRNAME}"
    try:
        try:
            ds = xr.open_zarr(path, storage_options=storage_options, consolidated=True)
        except (KeyError, FileNotFoundError, ValueError):
            # Models written without consolidated metadata (HMMs) open the slow way, quietly.
            ds = xr.open_zarr(path, storage_options=storage_options, consolidated=False)
        ds = ds.load(scheduler="threads")
    except Exception as exc:
        raise CheckpointError(f"cannot read a dem model at {path!r}: {exc}") from None
    version = ds.attrs.get("dem_format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path!r} has model format version {version!r}; this dem reads {FORMAT_VERSION}")
    if str(ds.attrs.get("model_kind", "")).endswith("_hmm"):
        from dem.hmm import load_hmm

        return load_hmm(path, storage_options=storage_options)
    if ds.attrs.get("model_kind") != "gmm":
        raise CheckpointError(f"{path!r} holds a {ds.attrs.get('model_kind')!r} model, not a Gaussian mixture")
    hp = json.loads(ds.attrs["hyperparameters"])
    est = GaussianMixture(**hp)
    est.weights_ = ds["weights"].values
    est.means_ = ds["means"].values
    est.covariances_ = ds["covariances"].values
    est.precisions_cholesky_ = ds["precisions_cholesky"].values
    est.precisions_ = precisions_from_cholesky(est.precisions_cholesky_, est.covariance_type)
    est.converged_ = bool(ds.attrs["converged"])
    est.n_iter_ = int(ds.attrs["n_iter"])
    est.lower_bound_ = float(ds.attrs["lower_bound"])
    est.history_ = json.loads(ds.attrs.get("history", "[]"))
    est.lower_bounds_ = [h["mean_log_likelihood"] for h in est.history_]
    est.n_features_in_ = est.means_.shape[1]
    est.n_components_ = est.means_.shape[0]
    feats = ds["feature"].values
    est.feature_names_ = None if np.array_equal(feats, np.arange(len(feats))) else feats
    return est


def params_dataset(est: Any) -> Any:
    """The fitted parameters of ``est`` as an ``xarray.Dataset`` with named dims.

    Variables ``weights`` (component), ``means`` (component, feature),
    ``covariances`` and ``precisions`` (dims by ``covariance_type``: full
    (component, feature, feature_), tied (feature, feature_), diag
    (component, feature), spherical (component)) and
    ``precisions_cholesky``. The ``feature`` and ``feature_`` coordinates
    are the ``feature`` coordinate of the data the model was fitted on
    (a DataArray's, or a Zarr group's ``feature`` array), else 0..D-1.
    Attributes: ``covariance_type``, ``converged``, ``n_iter``,
    ``lower_bound``.
    """
    ds = model_dataset(est)
    dims = ds["covariances"].dims
    ds["precisions"] = (dims, np.asarray(est.precisions_))
    ds = ds[["weights", "means", "covariances", "precisions", "precisions_cholesky"]]
    ds.attrs = {"covariance_type": est.covariance_type, "converged": bool(est.converged_),
                "n_iter": int(est.n_iter_), "lower_bound": float(est.lower_bound_)}
    return ds
