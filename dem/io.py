"""Saving and loading fitted models as Zarr groups (no pickle anywhere).

A saved model is an ``xarray.Dataset`` written with ``to_zarr``
(:mod:`dem.estimator.persistence` builds it); ``xr.open_zarr(path)`` opens
it, and :func:`load` turns it back into an estimator of the kind the
registry names.
"""

from __future__ import annotations

import os
from typing import Any


from dem.errors import CheckpointError
from dem.estimator.integrity import (  # noqa: F401  (the integrity API, public here)
    CHECKSUM_ATTR,
    collect_stale_temporaries,
    model_checksum,
    verify_model,
    with_checksum,
    write_atomically,
)

MODEL_DIRNAME = "model.zarr"


def load(path: str, *, storage_options: dict | None = None) -> Any:
    """Read a saved model, or the final model of a run directory.

    Parameters
    ----------
    path : str
        A model Zarr group written by ``save``, or a run directory written by
        ``dem fit`` (its ``model.zarr`` is read).

    Returns
    -------
    estimator
        A fitted estimator of the kind the model was saved from
        (``dem.GaussianMixture``, ``dem.GaussianHMM``, …).

    Raises
    ------
    CheckpointError
        No model there, an unknown format version or kind, or a damaged model.
    """
    from dem import registry
    from dem.estimator import persistence

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
    ds = persistence.open_model(path, storage_options)
    persistence.check_version(path, ds)
    cls = registry.estimator_class(ds.attrs.get("model_kind"), where=path)
    return persistence.restore(cls, path, ds)


def params_dataset(est: Any) -> Any:
    """The fitted parameters of a Gaussian mixture as an ``xarray.Dataset`` with named dims.

    See :meth:`dem.GaussianMixture.params_dataset`.
    """
    return est.params_dataset()
