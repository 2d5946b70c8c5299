"""One predict/score path for row-wise outputs: numpy in → numpy out, lazy in → lazy out.

A per-row function of a fitted family (``score_samples``, ``predict``,
``predict_proba``, …) is applied to whatever the user passes:

* numpy (or anything array-like): computed now, numpy returned;
* a dask array: ``map_blocks`` over row blocks, a lazy dask array returned;
* an xarray DataArray with dims (sample, feature): a DataArray aligned on
  ``sample`` (lazy when its data is dask);
* a Zarr path or URL (a group holding ``X``, or an array): a lazy dask array
  reading the rows on the workers, ready for ``.to_zarr``.

Written once, after dask-ml's ``ParallelPostFit``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dem.errors import DataError


def row_block(block: np.ndarray, fn: Callable, y_block: Any = None) -> np.ndarray:
    """Apply a fitted per-row function to one block (module-level, so it pickles)."""
    return fn(block) if y_block is None else fn(block, y_block)


def _row_block_xy(block: np.ndarray, y_block: np.ndarray, fn: Callable, flat: bool) -> np.ndarray:
    return fn(block, y_block[:, 0] if flat else y_block)


def _open_zarr(X: Any, storage_options: dict | None, variable: str = "X") -> Any:
    import dask.array as da
    import zarr

    node = zarr.open(store=str(X), mode="r", storage_options=storage_options)
    return da.from_zarr(node[variable] if hasattr(node, "array_keys") else node)


def check_width(shape: tuple, n_features: int, name: str) -> None:
    """A one-line error for input that is not 2-D or has the wrong number of features."""
    if len(shape) != 2:
        raise DataError(f"X must be 2-D (sample, feature); got shape {tuple(shape)}"
                        + ("; Reshape your data with X.reshape(-1, 1) if it has a single feature"
                           if len(shape) == 1 else ""))
    if shape[1] != n_features:
        raise DataError(f"X has {shape[1]} features, but {name} is expecting {n_features} features as input")


def apply_rows(X: Any, fn: Callable, *, n_features: int, name: str, out_columns: int | None = None,
               dtype: Any = np.float64, check: Callable[[np.ndarray], None] | None = None,
               storage_options: dict | None = None, y: Any = None) -> Any:
    """``fn(rows)`` (or ``fn(rows, y_rows)``) over every row of ``X``.

    Parameters
    ----------
    fn : module-level function or picklable callable of one numpy block
    n_features : expected columns of X
    name : the estimator's class name, for messages
    out_columns : columns of the output, or None for one value per row
    dtype : output dtype
    check : validation of an in-memory array (finite values, …)
    y : targets aligned with X for conditional models (same kind of input)
    """
    import dask.array as da

    if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
        url = str(X)
        X = _open_zarr(url, storage_options)
        if isinstance(y, str):
            y = _open_zarr(url, storage_options, y)
    xr_input = None
    if hasattr(X, "dims") and hasattr(X, "coords"):
        xr_input = X.transpose("sample", "feature") if set(X.dims) == {"sample", "feature"} else X
        X = xr_input.data
        if y is not None and hasattr(y, "dims"):
            y = y.data
    if isinstance(X, da.Array):
        check_width(X.shape, n_features, name)
        X = X.rechunk({1: -1})
        if y is not None:
            y = y if isinstance(y, da.Array) else da.from_array(np.asarray(y))
            y = y.rechunk({0: X.chunks[0]} if y.ndim == 1 else {0: X.chunks[0], 1: -1})
        kw: dict[str, Any] = {"dtype": dtype}
        if out_columns is None:
            kw["drop_axis"] = 1
        else:
            kw["chunks"] = (X.chunks[0], (out_columns,))
        if y is not None:
            # y as a 2-D block aligned with X's row blocks; 1-D targets come back 1-D.
            y2 = y[:, None] if y.ndim == 1 else y
            out = da.map_blocks(_row_block_xy, X, y2, fn, y.ndim == 1, **kw)
        else:
            out = X.map_blocks(row_block, fn, **kw)
    else:
        if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
            raise DataError("sparse input is not supported: pass a dense array")
        arr = np.asarray(X)
        if arr.dtype == object:
            arr = arr.astype(np.float64)
        check_width(arr.shape, n_features, name)
        if check is not None:
            check(arr)
        out = fn(arr) if y is None else fn(arr, np.asarray(y))
    if xr_input is not None:
        import xarray as xr
        dims = ("sample",) if out_columns is None else ("sample", "component")
        coords = {"sample": xr_input["sample"]} if "sample" in xr_input.coords else {}
        out = xr.DataArray(out, dims=dims, coords=coords)
    return out


def compute(value: Any) -> np.ndarray:
    """A numpy array from a possibly lazy result."""
    if hasattr(value, "compute"):
        value = value.compute()
    if hasattr(value, "values") and not isinstance(value, np.ndarray):
        value = value.values
    return np.asarray(value)
