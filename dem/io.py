"""Saving and loading fitted models as Zarr groups (no pickle anywhere).

A saved model is an ``xarray.Dataset`` written with ``to_zarr``: the
parameters are arrays with named dims (``component``, ``feature``,
``feature_``), the hyperparameters and fit summary are JSON attributes. So
``xr.open_zarr(path)`` opens it, and :func:`load` turns it back into an
estimator.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from dem.errors import CheckpointError

FORMAT_VERSION = 1
MODEL_DIRNAME = "model.zarr"
#: Dataset attribute holding the checksum of a saved model (JSON text, see :func:`model_checksum`).
CHECKSUM_ATTR = "dem_checksum"

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


# -- integrity ---------------------------------------------------------------

def _array_digest(values: np.ndarray) -> str:
    """sha256 of an array's values, independent of byte order and of how strings are typed.

    Zarr hands numbers back in native byte order and strings as objects or
    fixed-width unicode depending on the version, so strings are hashed as
    their JSON text and numbers as little-endian bytes of their dtype.
    """
    a = np.asarray(values)
    h = hashlib.sha256()
    if a.dtype.kind in "OUS":
        h.update(json.dumps([str(v) for v in a.ravel().tolist()]).encode("utf-8"))
    else:
        h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _attrs_digest(attrs: Mapping[str, Any]) -> str:
    body = {k: v for k, v in attrs.items() if k != CHECKSUM_ATTR}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def model_checksum(ds: Any) -> dict[str, Any]:
    """Shapes and sha256 digests of every array (parameters and coordinates) and of the attributes.

    Parameters
    ----------
    ds : xarray.Dataset
        A model as written by ``save`` (any family).

    Returns
    -------
    dict
        ``{"arrays": {name: {"shape": [...], "sha256": ...}}, "attrs_sha256": ...}``;
        :func:`with_checksum` stores it in the attribute ``dem_checksum``.
    """
    arrays = {str(name): {"shape": [int(n) for n in var.shape], "sha256": _array_digest(var.values)}
              for name, var in ds.variables.items()}
    return {"arrays": arrays, "attrs_sha256": _attrs_digest(ds.attrs)}


def with_checksum(ds: Any) -> Any:
    """A shallow copy of ``ds`` whose attributes carry :func:`model_checksum` (for :func:`verify_model`)."""
    out = ds.copy(deep=False)
    out.attrs = {k: v for k, v in ds.attrs.items() if k != CHECKSUM_ATTR}
    out.attrs[CHECKSUM_ATTR] = json.dumps(model_checksum(out), sort_keys=True)
    return out


def verify_model(ds: Any, where: str, required: Sequence[str] = (),
                 shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a damaged model with one line naming what is wrong.

    Checks, in this order, so the message names the first cause rather than
    its consequences: every array the checksum lists (and every ``required``
    one) is present; each has the shape written with it and, if given, the
    shape in ``shapes`` that the model's sizes imply; floating-point arrays
    are finite (a missing Zarr chunk reads back as the fill value, NaN);
    values and attributes match their checksums. A model written before
    checksums existed gets every check but the last.

    Parameters
    ----------
    ds : xarray.Dataset
        The model, loaded into memory.
    where : str
        The model's path or URL, for the message.
    required : sequence of str
        Arrays the family needs.
    shapes : mapping, optional
        Expected shape per array, from the family's sizes (e.g. ``means``:
        ``(n_components, n_features)``).

    Raises
    ------
    dem.errors.CheckpointError
    """
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"the model at {where!r} is damaged: {what}; save or fit it again")

    recorded: dict[str, Any] = {}
    attrs_sha = None
    text = ds.attrs.get(CHECKSUM_ATTR)
    if text is not None:
        try:
            checksum = json.loads(text) if isinstance(text, str) else dict(text)
            recorded = dict(checksum["arrays"])
            attrs_sha = checksum["attrs_sha256"]
        except (TypeError, ValueError, KeyError):
            raise damaged(f"its {CHECKSUM_ATTR} attribute cannot be read") from None
    names = list(dict.fromkeys([*required, *recorded]))
    for name in names:
        if name not in ds.variables:
            raise damaged(f"array {name!r} is missing")
    for name in names:
        shape = tuple(int(n) for n in ds.variables[name].shape)
        if name in recorded and shape != tuple(recorded[name]["shape"]):
            raise damaged(f"array {name!r} has shape {shape}, it was written with {tuple(recorded[name]['shape'])}")
        if shapes is not None and name in shapes and shape != tuple(shapes[name]):
            raise damaged(f"array {name!r} has shape {shape}, the model's sizes need {tuple(shapes[name])}")
    for name in names or list(ds.data_vars):
        values = np.asarray(ds.variables[name].values)
        if values.dtype.kind in "fc":
            bad = ~np.isfinite(values)
            if bad.any():
                kind = "NaN" if np.isnan(values[bad]).all() else "non-finite"
                raise damaged(f"array {name!r} holds {int(bad.sum())} {kind} value{'s' if bad.sum() != 1 else ''} "
                              f"of {values.size} (a chunk is missing or unreadable)")
    for name in recorded:
        if _array_digest(ds.variables[name].values) != recorded[name]["sha256"]:
            raise damaged(f"array {name!r} does not match the checksum written with it")
    if attrs_sha is not None and _attrs_digest(ds.attrs) != attrs_sha:
        raise damaged("its attributes (hyperparameters, history) do not match the checksum written with them")


# -- writing -------------------------------------------------------------------

_TEMP_SUFFIX = re.compile(r"\.(tmp|old)-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def collect_stale_temporaries(directory: str, names: Sequence[str]) -> list[str]:
    """Remove ``<name>.tmp-<pid>`` / ``<name>.old-<pid>`` left in ``directory`` by dead processes.

    dem writes files and model groups under such names and renames them into
    place; a process killed in between (or stopped by a full disk before it
    could clean up) leaves them behind. Only the temporaries of ``names``
    (what dem writes there: never a user's own ``*.old-2024``) and only
    those of processes no longer running on this machine are removed, so a
    concurrent writer's are not. Returns the removed paths. URLs are left
    alone (nothing there is written under a temporary name).
    """
    if "://" in directory or not os.path.isdir(directory):
        return []
    removed = []
    for name in names:
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), glob.escape(name) + ".*-*"))):
            m = _TEMP_SUFFIX.search(path)
            if (m is None or os.path.basename(path)[: m.start() - len(path)] != name
                    or int(m.group(2)) == os.getpid() or _pid_alive(int(m.group(2)))):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    continue
            removed.append(path)
    return removed


def write_atomically(ds: Any, path: str, storage_options: dict | None = None) -> None:
    """Write a Dataset as a Zarr group with its checksum: temp dir + rename locally, straight to a URL otherwise.

    A failed local write (a full disk, a permission error) removes its
    temporary directory before the error propagates; one left by a killed
    process is collected by the next write to the same directory.
    """
    ds = with_checksum(ds)
    if "://" in path:
        ds.to_zarr(path, mode="w", storage_options=storage_options, consolidated=True)
        return
    collect_stale_temporaries(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.to_zarr(tmp, mode="w", consolidated=True)
        if os.path.exists(path):
            old = f"{path}.old-{os.getpid()}"
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_GMM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")


def _gmm_shapes(ds: Any) -> dict[str, tuple[int, ...]] | None:
    """The array shapes a mixture's hyperparameters and ``weights``/``means`` imply."""
    try:
        covariance_type = json.loads(ds.attrs["hyperparameters"])["covariance_type"]
        K, D = (int(n) for n in ds["means"].shape)
    except (KeyError, TypeError, ValueError):
        return None  # the presence checks name what is missing
    cov = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}.get(covariance_type)
    shapes = {"weights": (K,), "means": (K, D)}
    if cov is not None:
        shapes.update(covariances=cov, precisions_cholesky=cov)
    return shapes


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

        verify_model(ds, path, required=("startprob", "transmat"))
        return load_hmm(path, storage_options=storage_options)
    if ds.attrs.get("model_kind") != "gmm":
        raise CheckpointError(f"{path!r} holds a {ds.attrs.get('model_kind')!r} model, not a Gaussian mixture")
    verify_model(ds, path, required=_GMM_ARRAYS, shapes=_gmm_shapes(ds))
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
