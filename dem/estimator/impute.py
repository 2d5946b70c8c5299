"""Completing data with a fitted Gaussian mixture: conditional expectations and draws.

Each NaN of a row is replaced by its conditional expectation under the
fitted mixture given the row's observed coordinates,

    E[x_m | x_o] = Σ_k r_k(x_o) (μ_k,m + Σ_k,mo Σ_k,oo⁻¹ (x_o − μ_k,o)),

with ``r_k(x_o)`` the posterior of component ``k`` from the observed
coordinates alone (a row with nothing observed gets the mixture mean).
Observed entries are copied bit for bit. Optionally ``n_draws`` multiple
imputations are drawn: per draw and row, a component from ``r_k(x_o)``, then
``x_m`` from that component's conditional Gaussian.

Output
------
* numpy (or list) in, ``out=None``: a numpy array (and the draws, see
  :func:`impute`); an xarray DataArray comes back as a DataArray.
* dask in, ``out=None``: a lazy dask array of the expectations, same chunks.
* anything in, ``out`` a path or fsspec URL: a Zarr group written in
  bounded memory, one task per row partition writing its own whole chunks:

  - ``X``: (sample, feature), the input's dtype (float64 for integers),
    chunked like the input along rows (full width);
  - ``draws`` (only when ``n_draws > 0``): (draw, sample, feature), chunks
    of one draw × the input's rows, so reading one imputation reads only
    its own chunks;
  - attribute ``dem_impute``: source, n_draws, seed, n_imputed (entries
    that were NaN), n_empty_rows.

  The arrays carry Zarr dimension names, so ``xarray.open_zarr(out)`` opens
  the group. Draws are seeded per chunk, by ``(seed, first row of the
  chunk)``: they depend on ``random_state`` and the chunking only, not on
  the cluster or the partitioning.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from dem.errors import ConfigError, DataError, OutputExistsError, plain_repr
from dem.estimator.params import seed_from

#: Rows per task sub-range are sized so (1 + n_draws) copies stay near this many bytes.
_WRITE_BYTES = 64 * 2**20


def _check_width(shape: tuple, n_features: int) -> None:
    if len(shape) != 2:
        raise DataError(f"X must be 2-D (sample, feature); got shape {tuple(shape)}")
    if shape[1] != n_features:
        raise DataError(f"X has {shape[1]} features, but the model was fitted on {n_features}")


def impute(
    family: Any,
    params: Any,
    X: Any,
    out: str | os.PathLike | None = None,
    n_draws: int = 0,
    random_state: Any = None,
    storage_options: dict | None = None,
    *,
    variable: str | None = None,
    partition_rows: int | None = None,
    overwrite: bool = False,
    client: Any = None,
) -> Any:
    """Fill the NaN of ``X`` with their conditional expectation under a fitted mixture.

    Parameters
    ----------
    family, params : a family that can impute (``family.impute(params, X, n_draws, rng)``,
        as :class:`~dem.families.gmm_missing.MissingDataGaussianMixtureFamily`) and its
        fitted parameters
    X : numpy array, dask array, xarray DataArray, or Zarr path/URL
        Data of shape (n_samples, n_features) with NaN at missing entries.
        A Zarr group must hold the array ``variable`` (default ``"X"``).
    out : str or path, optional
        Where to write the completed data as a Zarr group (see the module
        docstring for its layout). Required for Zarr input.
    n_draws : int, default=0
        Number of multiple-imputation draws.
    random_state : int, RandomState, Generator or None
        Seed of the draws.
    storage_options : dict, optional
        fsspec options for Zarr URLs (input and ``out``).
    variable : str, optional
        Array of a Zarr group to read.
    partition_rows : int, optional
        Rows per task (rounded to whole chunks); default as in fitting.
    overwrite : bool, default=False
        Replace an existing ``out``.

    Returns
    -------
    ndarray, or (ndarray, ndarray) when ``n_draws > 0``
        For in-memory input without ``out``: the completed copy, and the
        draws of shape (n_draws, n_samples, n_features). A DataArray input
        gives DataArrays (dims ``draw``, ``sample``, ``feature``).
    dask.array.Array
        For dask input without ``out`` (``n_draws`` must be 0).
    str
        ``out``, when given.

    Raises
    ------
    DataError
        If ``X`` holds inf or has the wrong number of features.
    """
    if isinstance(n_draws, bool) or not isinstance(n_draws, (int, np.integer)) or n_draws < 0:
        raise ConfigError(f"n_draws must be an integer >= 0; got {plain_repr(n_draws)}")
    n_draws = int(n_draws)
    from dem.data.partitions import as_partitioned
    from dem.engine.executor import Executor

    model = family
    D = params.n_features
    seed = seed_from(random_state)
    if out is None:
        return _impute_in_memory(model, params, X, n_draws, seed)

    data = as_partitioned(X, None, partition_rows,
                          variable=variable, storage_options=storage_options)
    _check_width((data.n_samples, data.n_features), D)
    chunk_rows = data.chunk_rows if data.chunk_rows > 1 else data.bounds[0][1] - data.bounds[0][0]
    dtype = data.dtype if np.issubdtype(data.dtype, np.floating) else np.dtype(np.float64)
    url = os.fspath(out)
    _create_output(url, storage_options, overwrite, data.n_samples, D, chunk_rows, dtype, n_draws,
                   {"source": data.description, "n_draws": n_draws, "seed": seed})
    per_chunk = max(1, data.n_features * dtype.itemsize * (1 + n_draws) * chunk_rows)
    job = _Job(model, params, url, tuple(sorted((storage_options or {}).items())), n_draws, seed,
               chunk_rows, chunk_rows * max(1, _WRITE_BYTES // per_chunk))
    executor = Executor.resolve(client)
    counts = executor.map(_impute_partition, job, executor.place(data, cache=False))
    group = _open_group(url, storage_options, "r+")
    attrs = dict(group.attrs.get("dem_impute", {}))
    attrs.update(n_imputed=int(sum(c[0] for c in counts)), n_empty_rows=int(sum(c[1] for c in counts)))
    group.attrs["dem_impute"] = attrs
    return url


def _impute_in_memory(model: Any, params: Any, X: Any,
                      n_draws: int, seed: int) -> Any:
    import dask.array as da

    if isinstance(X, (str, bytes, os.PathLike)):
        raise ConfigError("Zarr input needs out=<path or URL> for the completed data")
    xr_input = None
    if hasattr(X, "dims") and hasattr(X, "coords"):
        xr_input = X.transpose("sample", "feature")
        X = xr_input.data
    if isinstance(X, da.Array):
        _check_width(X.shape, params.n_features)
        if n_draws:
            raise ConfigError("draws from dask input need out=<path or URL> to write them to")
        X = X.rechunk({1: -1})
        dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.dtype(np.float64)
        result: Any = X.map_blocks(_expectation_block, model, params, dtype=dtype)
        draws = None
    else:
        arr = np.asarray(X)
        if arr.dtype == object:
            arr = arr.astype(np.float64)
        _check_width(arr.shape, params.n_features)
        result, draws = model.impute(params, arr, n_draws, np.random.default_rng(seed))
    if xr_input is not None:
        import xarray as xr
        result = xr_input.copy(data=result)
        if draws is not None:
            draws = xr.DataArray(draws, dims=("draw",) + xr_input.dims, coords=xr_input.coords)
    return result if draws is None else (result, draws)


def _expectation_block(block: np.ndarray, model: Any,
                       params: Any) -> np.ndarray:
    """One dask block's conditional expectation (module-level, so it pickles)."""
    return model.impute(params, block)[0]


@dataclasses.dataclass(frozen=True)
class _Job:
    """What every imputation task shares (one graph value)."""

    model: Any
    params: Any
    url: str
    storage_options: tuple
    n_draws: int
    seed: int
    chunk_rows: int
    write_rows: int  # a multiple of chunk_rows: every write covers whole chunks


def _open_group(url: str, storage_options: Any, mode: str) -> Any:
    import zarr

    opts = dict(storage_options) if storage_options else None
    return zarr.open_group(store=url, mode=mode, storage_options=opts)


def _create_output(url: str, storage_options: dict | None, overwrite: bool, n: int, D: int,
                   chunk_rows: int, dtype: np.dtype, n_draws: int, attrs: dict) -> None:
    if "://" not in url and os.path.exists(url) and not overwrite:
        raise OutputExistsError(url)
    try:
        group = _open_group(url, storage_options, "w" if overwrite else "w-")
    except Exception as exc:  # zarr raises several types for "exists" / "cannot write"
        raise ConfigError(f"cannot create the output Zarr group {url!r}: {exc}") from None
    group.create_array("X", shape=(n, D), chunks=(chunk_rows, D), dtype=dtype,
                       dimension_names=("sample", "feature"))
    if n_draws:
        group.create_array("draws", shape=(n_draws, n, D), chunks=(1, chunk_rows, D), dtype=dtype,
                           dimension_names=("draw", "sample", "feature"))
    group.attrs["dem_impute"] = attrs


def _impute_partition(job: _Job, part: Any) -> tuple[int, int]:
    """Complete one partition and write its rows (runs in a task); returns counts."""
    group = _open_group(job.url, job.storage_options, "r+")
    out_x = group["X"]
    out_d = group["draws"] if job.n_draws else None
    X = np.asarray(part.X)
    start = part.start
    n_imputed = n_empty = 0
    for a in range(0, X.shape[0], job.write_rows):
        b = min(X.shape[0], a + job.write_rows)
        parts = []
        for c in range(a, b, job.chunk_rows):
            # Seeded per chunk: the draws do not depend on how chunks are grouped into tasks.
            rng = np.random.default_rng([job.seed, start + c])
            block = X[c : min(b, c + job.chunk_rows)]
            parts.append(job.model.impute(job.params, block, job.n_draws, rng))
            if np.issubdtype(block.dtype, np.floating):
                missing = np.isnan(block)
                n_imputed += int(missing.sum())
                n_empty += int(missing.all(axis=1).sum())
        out_x[start + a : start + b] = np.concatenate([p[0] for p in parts])
        if out_d is not None:
            out_d[:, start + a : start + b] = np.concatenate([p[1] for p in parts], axis=1)
    return n_imputed, n_empty
