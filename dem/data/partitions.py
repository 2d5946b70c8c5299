"""Inputs as row partitions: numpy, dask, xarray and Zarr (local or fsspec URL).

A :class:`PartitionedData` describes a (sample, feature) matrix cut into row
ranges, each with a *block reference* the engine hands to a task
(:mod:`dem.data.row_sources`: a :class:`~dem.data.row_sources.ZarrRows` spec
the task reads on the worker, a :class:`~dem.data.row_sources.DaskRows`
naming a dask array's blocks, or a numpy view).

The partitioning depends only on the data (its size and Zarr chunking) and the
requested partition size, never on the cluster, so the fixed-order reduction
gives bitwise the same result on any number of workers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from typing import Any

import dask.array as da
import numpy as np

from dem.data.record import Partition
from dem.data.row_sources import DaskRows, ZarrRows, hashable_options, normalise_location
from dem.errors import DataError

#: Bounds of the automatic partition size (uncompressed bytes): large enough
#: that per-task overhead (≈1 ms) is noise next to ≥50 ms of E-step, small
#: enough that small data still makes ≥16 partitions for parallelism.
MIN_PARTITION_BYTES = 16 * 2**20
MAX_PARTITION_BYTES = 128 * 2**20
#: A partition in flight costs about this many times its size on a worker
#: (the block, its float64 copy by cache block, the cached copy, transfer).
WORKING_SET_FACTOR = 4


def auto_partition_bytes(nbytes: int, memory_per_thread: int | None = None) -> int:
    """Uncompressed bytes per partition, from the data size and worker memory.

    Data-only by default (``nbytes / 16`` clamped to 16–128 MiB), so the same
    data is cut the same way on any cluster and results stay bitwise equal;
    the size shrinks only when a worker thread could not hold a partition's
    working set in a quarter of its memory.
    """
    target = int(min(MAX_PARTITION_BYTES, max(MIN_PARTITION_BYTES, nbytes // 16)))
    if memory_per_thread:
        target = min(target, max(2**20, memory_per_thread // (4 * WORKING_SET_FACTOR)))
    return target


@dataclasses.dataclass
class PartitionedData:
    """A (sample, feature) matrix cut into row partitions.

    Attributes
    ----------
    n_samples, n_features : int
    dtype : numpy dtype of the stored data
    bounds : list of (start, stop) row ranges, in order
    x_refs, w_refs : per-partition block references (``w_refs`` None when unweighted)
    description : where the data came from, for messages and fingerprints
    chunk_rows : rows per storage chunk (partition bounds are multiples of it)
    feature_names : optional coordinate labels of the feature axis
    """

    n_samples: int
    n_features: int
    dtype: np.dtype
    bounds: list[tuple[int, int]]
    x_refs: list[Any]
    w_refs: list[Any] | None
    description: str
    chunk_rows: int
    feature_names: np.ndarray | None = None
    zarr_source: ZarrRows | None = None
    weights_source: ZarrRows | None = None
    in_memory: bool = False
    _fingerprint: str | None = dataclasses.field(default=None, repr=False)
    y_refs: list[Any] | None = None
    length_refs: list[Any] | None = None

    def sources(self) -> list[tuple]:
        """Per partition, the arguments of :func:`read_partition`: (x, w, y, lengths, start, stop)."""
        none = [None] * self.n_partitions
        return [(x, w, y, l, a, b) for x, w, y, l, (a, b) in
                zip(self.x_refs, self.w_refs or none, self.y_refs or none, self.length_refs or none,
                    self.bounds)]

    def rows_in(self, partitions: Any) -> int:
        """Rows of the partitions numbered in ``partitions`` (each counted as often as it is listed)."""
        return int(sum(self.bounds[p][1] - self.bounds[p][0] for p in partitions))

    def stored(self) -> bool:
        """Whether every partition is read from storage (Zarr) by the task that needs it."""
        return all(isinstance(r, ZarrRows) for src in self.sources() for r in src[:3] if r is not None)

    @property
    def n_partitions(self) -> int:
        return len(self.bounds)

    @property
    def nbytes(self) -> int:
        return self.n_samples * self.n_features * self.dtype.itemsize

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this data: location, shape, dtype, chunking, a content hash.

        The content hash covers a few rows from the start, middle and end of
        the data (reading those is cheap even on terabytes).
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            for start in sorted({0, self.n_samples // 2, max(0, self.n_samples - 64)}):
                stop = min(self.n_samples, start + 64)
                h.update(np.ascontiguousarray(self.read_rows(start, stop)).tobytes())
            self._fingerprint = h.hexdigest()[:32]
        return {
            "source": self.description,
            "shape": [self.n_samples, self.n_features],
            "dtype": str(self.dtype),
            "chunk_rows": self.chunk_rows,
            "weighted": self.w_refs is not None,
            "content_sha256": self._fingerprint,
        }

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` on the driver (small reads only: sampling, checks)."""
        out = self._read_field(self.x_refs, start, stop)
        return np.empty((0, self.n_features), dtype=self.dtype) if out is None else out

    def read_partition(self, start: int, stop: int) -> Partition:
        """Rows ``start:stop`` with their weights and targets, on the driver (small reads only)."""
        w = self._read_field(self.w_refs, start, stop)
        return Partition(self.read_rows(start, stop), None if w is None else np.asarray(w, dtype=np.float64),
                         None, self._read_field(self.y_refs, start, stop), int(start))

    def _read_field(self, refs: list[Any] | None, start: int, stop: int) -> np.ndarray | None:
        if refs is None:
            return None
        out = []
        for (a, b), ref in zip(self.bounds, refs):
            lo, hi = max(a, start), min(b, stop)
            if lo >= hi:
                continue
            if isinstance(ref, (ZarrRows, DaskRows)):
                out.append(ref.read(lo, hi))
            else:
                out.append(np.asarray(ref)[lo - a : hi - a])
        return np.concatenate(out) if out else None


def partition_rows_for(
    n_samples: int, n_features: int, itemsize: int, chunk_rows: int,
    partition_rows: int | None = None, memory_per_thread: int | None = None,
) -> int:
    """Rows per partition: a multiple of the storage chunk near the target size."""
    if partition_rows is None:
        row_bytes = max(1, n_features * itemsize)
        target = auto_partition_bytes(n_samples * row_bytes, memory_per_thread)
        partition_rows = max(1, target // row_bytes)
    if partition_rows <= 0:
        raise DataError(f"partition_rows must be positive, got {partition_rows}")
    chunks_per = max(1, round(partition_rows / chunk_rows))
    return min(max(chunk_rows * chunks_per, 1), max(n_samples, 1))


def _bounds(n_samples: int, rows: int) -> list[tuple[int, int]]:
    return [(a, min(a + rows, n_samples)) for a in range(0, n_samples, rows)]


def _check_matrix(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if len(shape) != 2:
        raise DataError(
            f"{where} must be 2-D (sample, feature); got {len(shape)}-D shape {tuple(shape)}"
            + ("; Reshape your data with X.reshape(-1, 1) if it has a single feature"
               if len(shape) == 1 else "")
        )
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{where} must hold real numbers; got dtype {dtype} (Complex data not supported)")
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise DataTypeError(f"{where} must hold real numbers; got dtype {dtype}")
    if shape[0] == 0:
        raise DataError(f"{where} is empty: 0 sample(s) (shape={tuple(shape)}) while a minimum of 1 is required.")
    if shape[1] == 0:
        raise DataError(f"{where} is empty: 0 feature(s) (shape={tuple(shape)}) while a minimum of 1 is required.")


class DataTypeError(DataError, TypeError):
    """The input's dtype cannot be read as real numbers."""


def _as_numeric(X: np.ndarray) -> np.ndarray:
    """Object arrays of numbers become float64; anything else is a one-line error."""
    if X.dtype != object:
        return X
    try:
        return X.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise DataTypeError(f"X must hold real numbers; {exc}") from None


def _check_weights(shape: tuple[int, ...], n_samples: int, where: str) -> None:
    if tuple(shape) != (n_samples,):
        raise DataError(
            f"{where} must have shape ({n_samples},) to match X; got {tuple(shape)}"
        )


def from_numpy(X: np.ndarray, sample_weight: Any = None, partition_rows: int | None = None,
               memory_per_thread: int | None = None) -> PartitionedData:
    """Partition an in-memory numpy array (views, no copies)."""
    X = _as_numeric(np.asarray(X))
    _check_matrix(X.shape, X.dtype, "X")
    if X.dtype == np.bool_ or np.issubdtype(X.dtype, np.integer):
        X = X.astype(np.float64)
    n, d = X.shape
    rows = partition_rows_for(n, d, X.dtype.itemsize, 1, partition_rows, memory_per_thread)
    bounds = _bounds(n, rows)
    w_refs = None
    if sample_weight is not None:
        w = _validated_weights(np.asarray(sample_weight, dtype=np.float64), n, "sample_weight")
        w_refs = [w[a:b] for a, b in bounds]
    return PartitionedData(
        n, d, X.dtype, bounds, [X[a:b] for a, b in bounds], w_refs,
        f"numpy array {X.shape} {X.dtype}", 1, in_memory=True,
    )


def _validated_weights(w: np.ndarray, n: int, where: str) -> np.ndarray:
    _check_weights(w.shape, n, where)
    if not np.isfinite(w).all():
        raise DataError(f"{where} contains NaN or inf at row {int(np.flatnonzero(~np.isfinite(w))[0])}")
    if (w < 0).any():
        raise DataError(f"{where} is negative at row {int(np.flatnonzero(w < 0)[0])}")
    if w.sum() <= 0:
        raise DataError(f"{where} sums to zero")
    return w


def from_dask(X: da.Array, sample_weight: Any = None, partition_rows: int | None = None,
              description: str | None = None, memory_per_thread: int | None = None) -> PartitionedData:
    """Partition a dask array along rows, reading its blocks as they are.

    Row chunks of any sizes are kept (a partition reads the slices of the
    blocks it spans), so a persisted array is used where it lies; only
    several chunks across columns are merged into one.
    """
    _check_matrix(X.shape, X.dtype, "X")
    if any(math.isnan(c) for c in X.shape):
        raise DataError("X has unknown row count (NaN chunks); call X.compute_chunk_sizes() first")
    n, d = X.shape
    row_chunks = X.chunks[0]
    regular = all(c == row_chunks[0] for c in row_chunks[:-1]) and row_chunks[-1] <= row_chunks[0]
    rows = partition_rows_for(n, d, X.dtype.itemsize,
                              row_chunks[0] if partition_rows is None and regular else 1,
                              partition_rows, memory_per_thread)
    if X.numblocks[1] > 1:
        X = X.rechunk({1: -1})
    bounds = _bounds(n, rows)
    x_refs: list[Any] = [DaskRows(X)] * len(bounds)
    w_refs: list[Any] | None = None
    if sample_weight is not None:
        if hasattr(sample_weight, "dims") and hasattr(sample_weight, "coords"):
            sample_weight = sample_weight.data
        if isinstance(sample_weight, da.Array):
            _check_weights(sample_weight.shape, n, "sample_weight")
            w_refs = [DaskRows(sample_weight.astype(np.float64))] * len(bounds)
        else:
            w = np.asarray(sample_weight, dtype=np.float64)
            _check_weights(w.shape, n, "sample_weight")
            w_refs = [w[a:b] for a, b in bounds]
    return PartitionedData(
        n, d, X.dtype, bounds, x_refs, w_refs,
        description or f"dask array {X.shape} {X.dtype}", rows,
    )


def from_zarr(
    url: str,
    variable: str | None = None,
    sample_weight: str | None = None,
    partition_rows: int | None = None,
    storage_options: dict[str, Any] | None = None,
    memory_per_thread: int | None = None,
) -> PartitionedData:
    """Partition a Zarr array, or the array ``variable`` (default ``X``) of a Zarr group.

    ``sample_weight`` may name a 1-D array in the same group.
    """
    import zarr

    url = str(url)
    # Local paths are read (and fingerprinted) by their absolute form; URLs are
    # read as given, fingerprinted by their normal spelling.
    location = normalise_location(url)
    if "://" not in url:
        url = location
    opts = hashable_options(storage_options)
    if "://" not in url and not os.path.exists(url):
        raise DataError(f"no Zarr data at {url!r}: the path does not exist")
    try:
        node = zarr.open(store=url, mode="r", storage_options=dict(opts) or None)
    except Exception as exc:  # zarr raises several types for "not a store"
        raise DataError(f"cannot open Zarr data at {url!r}: {exc}") from None
    path = ""
    if isinstance(node, zarr.Group):
        path = variable or "X"
        if path not in node:
            names = sorted(node.array_keys())
            raise DataError(
                f"Zarr group {url!r} has no array {path!r}; it has {names}"
            )
        arr = node[path]
    else:
        if variable not in (None, "", "X"):
            raise DataError(f"{url!r} is a Zarr array, not a group holding {variable!r}")
        arr = node
    _check_matrix(arr.shape, arr.dtype, f"Zarr array {url}/{path}".rstrip("/"))
    n, d = arr.shape
    chunk_rows, chunk_cols = arr.chunks[0], arr.chunks[1]
    if chunk_cols < d and partition_rows is None:
        pass  # column chunking only costs more reads; rows still align to chunks
    rows = partition_rows_for(n, d, arr.dtype.itemsize, chunk_rows, partition_rows, memory_per_thread)
    bounds = _bounds(n, rows)
    source = ZarrRows(url, path, opts)
    x_refs = [source] * len(bounds)
    w_refs = None
    wsource = None
    if sample_weight is not None:
        if not isinstance(node, zarr.Group) or sample_weight not in node:
            raise DataError(f"Zarr group {url!r} has no weights array {sample_weight!r}")
        _check_weights(node[sample_weight].shape, n, f"weights array {sample_weight!r}")
        wsource = ZarrRows(url, sample_weight, opts)
        w_refs = [wsource] * len(bounds)
    feature_names = None
    if isinstance(node, zarr.Group) and "feature" in node:
        try:
            feature_names = np.asarray(node["feature"][:])
        except Exception:
            feature_names = None
    return PartitionedData(
        n, d, np.dtype(arr.dtype), bounds, x_refs, w_refs,
        f"zarr {location}" + (f"/{path}" if path else ""), chunk_rows,
        feature_names=feature_names, zarr_source=source, weights_source=wsource,
    )


def from_xarray(X: Any, sample_weight: Any = None, partition_rows: int | None = None,
                memory_per_thread: int | None = None) -> PartitionedData:
    """Partition an xarray DataArray with dims ("sample", "feature")."""
    if set(X.dims) != {"sample", "feature"}:
        raise DataError(f"DataArray X must have dims ('sample', 'feature'); got {X.dims}")
    X = X.transpose("sample", "feature")
    names = np.asarray(X["feature"].values) if "feature" in X.coords else None
    if isinstance(sample_weight, str):
        raise DataError("sample_weight as a name needs a Zarr group, not a DataArray")
    if sample_weight is not None and hasattr(sample_weight, "dims"):
        sample_weight = sample_weight.data
    data = X.data
    if isinstance(data, da.Array):
        out = from_dask(data, sample_weight, partition_rows,
                        f"xarray DataArray {X.name or ''} {X.shape}".strip(), memory_per_thread)
    else:
        out = from_numpy(np.asarray(data), sample_weight, partition_rows, memory_per_thread)
    out.feature_names = names
    return out


def attach_targets(data: PartitionedData, y: Any) -> PartitionedData:
    """``data`` with targets ``y`` cut along the same rows (conditional models).

    ``y`` is an array-like, dask array or DataArray of ``n_samples`` rows, or
    with Zarr input the name of an array in the same group.
    """
    n = data.n_samples
    if isinstance(y, str):
        src = data.zarr_source
        if src is None:
            raise DataError(f"targets given by name ({y!r}) need Zarr input; pass the array itself")
        import zarr

        group = zarr.open(store=src.url, mode="r", storage_options=dict(src.storage_options) or None)
        if not isinstance(group, zarr.Group) or y not in group:
            names = sorted(group.array_keys()) if isinstance(group, zarr.Group) else []
            raise DataError(f"Zarr group {src.url!r} has no target array {y!r}; it has {names}")
        shape = group[y].shape
        if len(shape) not in (1, 2) or shape[0] != n:
            raise DataError(f"target array {y!r} must have {n} rows to match X; got shape {tuple(shape)}")
        data.y_refs = [ZarrRows(src.url, y, src.storage_options)] * data.n_partitions
        return data
    if hasattr(y, "dims") and hasattr(y, "coords"):
        y = y.data
    if isinstance(y, da.Array):
        if y.ndim not in (1, 2) or y.shape[0] != n:
            raise DataError(f"y must have {n} rows to match X; got shape {tuple(y.shape)}")
        if y.ndim == 2 and y.numblocks[1] > 1:
            y = y.rechunk({1: -1})
        data.y_refs = [DaskRows(y)] * data.n_partitions
        return data
    try:
        arr = np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot read y as an array: {exc}") from None
    if arr.ndim not in (1, 2) or arr.shape[0] != n:
        raise DataError(f"y must have {n} rows to match X; got shape {tuple(arr.shape)}")
    data.y_refs = [arr[a:b] for a, b in data.bounds]
    return data


def as_partitioned(
    X: Any,
    sample_weight: Any = None,
    partition_rows: int | None = None,
    *,
    variable: str | None = None,
    storage_options: dict[str, Any] | None = None,
    memory_per_thread: int | None = None,
    y: Any = None,
) -> PartitionedData:
    """Partition any supported input: numpy, dask, xarray, Zarr path/URL.

    ``partition_rows=None`` picks the size with :func:`auto_partition_bytes`;
    ``y`` (targets of a conditional model) is cut along the same rows.
    """
    data = _as_partitioned(X, sample_weight, partition_rows, variable=variable,
                           storage_options=storage_options, memory_per_thread=memory_per_thread)
    return data if y is None else attach_targets(data, y)


def _as_partitioned(
    X: Any,
    sample_weight: Any = None,
    partition_rows: int | None = None,
    *,
    variable: str | None = None,
    storage_options: dict[str, Any] | None = None,
    memory_per_thread: int | None = None,
) -> PartitionedData:
    if isinstance(X, PartitionedData):
        return X
    if isinstance(X, (str, os.PathLike)):
        if sample_weight is not None and not isinstance(sample_weight, str):
            raise DataError("with Zarr input, sample_weight names an array in the same group")
        return from_zarr(os.fspath(X), variable, sample_weight, partition_rows, storage_options,
                         memory_per_thread)
    if hasattr(X, "dims") and hasattr(X, "coords"):
        if hasattr(X, "data_vars"):
            if variable is None or variable not in X.data_vars:
                raise DataError(f"pass variable=<name> to fit one of the Dataset's variables {sorted(X.data_vars)}")
            X = X[variable]
        return from_xarray(X, sample_weight, partition_rows, memory_per_thread)
    if isinstance(X, da.Array):
        return from_dask(X, sample_weight, partition_rows, memory_per_thread=memory_per_thread)
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise DataTypeError("sparse input is not supported: pass a dense array (X.toarray()) "
                            "or a Zarr/dask array")
    if isinstance(X, (list, tuple)) or hasattr(X, "__array__"):
        try:
            arr = np.asarray(X)
        except (ValueError, TypeError) as exc:
            raise DataError(f"cannot read X as an array: {exc}") from None
        return from_numpy(arr, sample_weight, partition_rows, memory_per_thread)
    raise DataError(f"unsupported input type {type(X).__name__}: pass numpy, dask, xarray or a Zarr path")


def describe_json(fp: dict[str, Any]) -> str:
    return json.dumps(fp, sort_keys=True)
