"""Saving and loading fitted estimators as Zarr groups (no pickle anywhere).

A saved model is an ``xarray.Dataset`` written with ``to_zarr``: the fitted
arrays with named dims, and JSON attributes holding the model kind, the
hyperparameters, the fitted scalars and the history. ``xr.open_zarr(path)``
opens it; :func:`load_model` turns it back into an estimator of the kind
the registry names.

A model is small, so it is verified whole on load: a checksum of every
array (name, dtype, shape, bytes) is written with it, and a model whose
arrays are missing, altered, not finite or of inconsistent shapes is
refused with one line naming what is wrong.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import numpy as np

from dem.errors import CheckpointError
from dem.estimator.integrity import verify_model, write_atomically

FORMAT_VERSION = 2
#: Versions this dem reads (1: dem 0.1, without a checksum).
READABLE_VERSIONS = (1, 2)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (np.random.RandomState, np.random.Generator)):
        return None
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _number(value: Any) -> Any:
    if value == "inf":
        return float("inf")
    if value == "-inf":
        return float("-inf")
    return value


def _plain_labels(values: np.ndarray) -> np.ndarray:
    """Labels read back as numpy's fixed-width unicode, as scikit-learn's ``classes_`` are."""
    if values.dtype.kind == "T" or (values.dtype == object and all(isinstance(v, str) for v in values.flat)):
        return np.array(values.tolist(), dtype=str)
    return values


def model_dataset(est: Any) -> Any:
    """The fitted estimator as an ``xarray.Dataset`` (arrays, coordinates and JSON attributes)."""
    import xarray as xr

    arrays = est._fitted_arrays()
    # Labels (classes, feature names) go in as variable-length strings: zarr warns that its
    # fixed-width unicode type has no v3 specification.
    coords = {name: (value.astype(np.dtypes.StringDType()) if np.asarray(value).dtype.kind == "U" else value)
              for name, value in est._fitted_coords().items()}
    ds = xr.Dataset({name: (dims, np.asarray(value)) for name, (dims, value) in arrays.items()}, coords=coords)
    hyper = {k: _jsonable(v) for k, v in est.get_params(deep=False).items() if k != "client"}
    ds.attrs.update(
        dem_format_version=FORMAT_VERSION,
        model_kind=est._kind,
        hyperparameters=json.dumps(hyper),
        fitted=json.dumps(_jsonable(est._fitted_json())),
        history=json.dumps(getattr(est, "history_", [])),
    )
    return ds


def save_model(est: Any, path: str, *, storage_options: dict | None = None) -> None:
    """Write ``est`` to ``path`` atomically where the filesystem allows (temp dir + rename)."""
    ds = model_dataset(est)
    with warnings.catch_warnings():
        # Consolidated metadata lets `xr.open_zarr(path)` open the model without
        # a fallback warning; zarr 3 warns that it is not in the v3 spec yet.
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        write_atomically(ds, os.fspath(path), storage_options)


def open_model(path: str, storage_options: dict | None) -> Any:
    import xarray as xr

    try:
        try:
            ds = xr.open_zarr(path, storage_options=storage_options, consolidated=True)
        except (KeyError, FileNotFoundError, ValueError):
            # Models written without consolidated metadata open the slow way, quietly.
            ds = xr.open_zarr(path, storage_options=storage_options, consolidated=False)
        return ds.load(scheduler="threads")
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"cannot read a dem model at {path!r}: {first}") from None


def restore(cls: type, path: str, ds: Any) -> Any:
    """An estimator of class ``cls`` from an opened, verified model dataset."""
    version = ds.attrs.get("dem_format_version")
    verify_model(ds, path, required=cls._saved_arrays, shapes=cls._saved_shapes(ds))
    arrays = {name: np.asarray(ds[name].values) for name in ds.data_vars}
    hyper = {k: _number(v) for k, v in json.loads(ds.attrs["hyperparameters"]).items()}
    est = cls(**{k: v for k, v in hyper.items() if k in cls._get_param_names()})
    if version == 1:
        fitted = {k: ds.attrs[k] for k in ("converged", "n_iter", "lower_bound", "monitor", "n_features")
                  if k in ds.attrs}
        fitted["legacy"] = True
    else:
        fitted = {k: _number(v) for k, v in json.loads(ds.attrs["fitted"]).items()}
    est.history_ = json.loads(ds.attrs.get("history", "[]"))
    coords = {name: _plain_labels(np.asarray(ds[name].values)) for name in ds.coords}
    try:
        est._restore_fitted(arrays, coords, fitted)
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"the model at {path!r} is damaged or incomplete: {exc}") from None
    return est


def check_version(path: str, ds: Any) -> None:
    version = ds.attrs.get("dem_format_version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"{path!r} has model format version {version!r}; this dem reads "
                              f"{', '.join(map(str, READABLE_VERSIONS))}")
