"""Inputs as row partitions: numpy, dask, xarray and Zarr (local or fsspec URL).

A :class:`PartitionedData` describes a (sample, feature) matrix cut into row
ranges. Each range has a *block reference* the engine can hand to a task:

* for Zarr, a small :class:`ZarrRows` spec; the task opens the array on the
  worker and reads only its rows, so data never passes through the scheduler
  or the driver;
* for dask arrays, a :class:`DaskRows` naming the array's blocks: a task
  receives the blocks themselves (:class:`RowBlocks`), so a graph built from
  a persisted array carries its blocks as dependencies, and row chunks of any
  sizes are read without rechunking;
* for numpy arrays, a view of the rows.

The partitioning depends only on the data (its size and Zarr chunking) and the
requested partition size, never on the cluster, so the fixed-order reduction
gives bitwise the same result on any number of workers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import threading
from typing import Any, Iterator, NamedTuple, Sequence

import dask.array as da
import numpy as np

from dem.data.record import Partition
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


class FrozenOptions(dict):
    """A dict that hashes by content, for nested storage options (``client_kwargs``) in cache keys."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return FrozenOptions({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


def hashable_options(storage_options: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """``storage_options`` as sorted (key, value) pairs, nested dicts and lists made hashable.

    ``dict(result)`` gives the options back (nested dicts stay dicts) for fsspec.
    """
    return tuple(sorted((k, _frozen(v)) for k, v in (storage_options or {}).items()))


def normalise_location(url: str | os.PathLike) -> str:
    """One spelling per location, so the same data named differently has one fingerprint.

    A local path becomes absolute and normal (``good.zarr``, ``./good.zarr``,
    ``sub/../good.zarr/``, ``~/good.zarr`` and ``file://`` URLs of it are one
    path); symbolic links are kept, so a link's target may change without the
    path changing. A URL keeps its host and case (object-store keys are case
    sensitive) but loses spelling that names nothing: the scheme's case,
    repeated slashes, ``.`` segments and a trailing slash (``..`` is kept:
    in an object store it is part of a key, not the parent).
    """
    text = os.fspath(url)
    if "://" not in text:
        return os.path.abspath(os.path.expanduser(text))
    scheme, rest = text.split("://", 1)
    if scheme.lower() == "file":
        return os.path.abspath(rest) if rest.startswith("/") else os.path.abspath(os.path.expanduser(rest))
    host, _, path = rest.partition("/")
    segments = [p for p in path.split("/") if p not in ("", ".")]
    return f"{scheme.lower()}://{host}" + "".join(f"/{p}" for p in segments)


#: Most bytes one read of consecutive Zarr partitions fetches in a single call
#: (a fused task reads its rows slab by slab; zarr fetches a slab's chunks concurrently).
SLAB_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class ZarrRows:
    """Where a task finds its rows: a Zarr array at ``url``/``path``."""

    url: str
    path: str
    storage_options: tuple[tuple[str, Any], ...] = ()

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``start:stop``, into ``out`` (C-contiguous, the rows' shape and dtype) if given.

        A chunk that cannot be decoded is a :class:`DataError` naming it.
        """
        arr = _open_zarr_array(self.url, self.path, self.storage_options)
        try:
            if out is None:
                return arr[start:stop]
            from zarr.core.buffer import default_buffer_prototype

            arr.get_basic_selection(slice(start, stop),
                                    out=default_buffer_prototype().nd_buffer.from_numpy_array(out))
            return out
        except MemoryError:
            raise
        except Exception as exc:
            # The codec's own error ("Zstd decompression error") names no file
            # and no rows, and arrives on the driver through a task traceback.
            raise self._unreadable(arr, start, stop, exc) from None

    def row_shape(self) -> tuple[tuple[int, ...], np.dtype]:
        """The shape of one row and the dtype."""
        arr = _open_zarr_array(self.url, self.path, self.storage_options)
        return tuple(arr.shape[1:]), np.dtype(arr.dtype)

    def _unreadable(self, arr: Any, start: int, stop: int, exc: Exception) -> DataError:
        """The first chunk of rows ``start:stop`` that fails on its own, as one line."""
        where = f"{self.url.rstrip('/')}/{self.path}".rstrip("/")
        chunk_rows, chunk_cols = int(arr.chunks[0]), int(arr.chunks[1]) if arr.ndim > 1 else 1
        for i in range(start // chunk_rows, (max(start, stop - 1)) // chunk_rows + 1):
            a, b = i * chunk_rows, min((i + 1) * chunk_rows, arr.shape[0])
            for j in range(max(1, -(-arr.shape[1] // chunk_cols)) if arr.ndim > 1 else 1):
                index = (slice(a, b), slice(j * chunk_cols, (j + 1) * chunk_cols))[: arr.ndim]
                try:
                    arr[index]
                except MemoryError:
                    raise
                except Exception as chunk_exc:
                    coords = (i, j)[: arr.ndim]
                    try:
                        key = arr.metadata.encode_chunk_key(coords)
                    except Exception:  # another zarr version: name the chunk by its grid position
                        key = "chunk " + ".".join(map(str, coords))
                    return DataError(f"cannot read {where}/{key} (rows {a}–{b - 1} of Zarr array {where}): "
                                     f"{_first_line(chunk_exc)}; the chunk is damaged or truncated: "
                                     "restore or rewrite the data")
        return DataError(f"cannot read rows {start}–{stop - 1} of Zarr array {where}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@functools.lru_cache(maxsize=32)
def _open_zarr_array(url: str, path: str, storage_options: tuple) -> Any:
    # One open per worker process and array: metadata is read once, not per task.
    import zarr

    group_or_array = zarr.open(store=url, mode="r", storage_options=dict(storage_options) or None)
    return group_or_array[path] if path else group_or_array


def _remote_client(array: Any) -> Any:
    """The ``distributed`` client holding some of ``array``'s blocks (a persisted array), if any."""
    for value in dict(array.__dask_graph__()).values():
        if getattr(type(value), "__name__", "") == "Future" and hasattr(value, "client"):
            return value.client
    return None


@dataclasses.dataclass(frozen=True, eq=False)
class DaskRows:
    """The rows of a dask array, block by block: row chunks of any sizes, one chunk across columns.

    On the driver, :meth:`read` computes rows (on the cluster holding a
    persisted array's blocks). A task instead receives the blocks that hold its
    rows as a :class:`RowBlocks`, built by the engine from :meth:`blocks`.
    """

    array: Any

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        """First row of every block, and the row count at the end."""
        return np.concatenate([[0], np.cumsum(self.array.chunks[0])]).astype(np.int64)

    @functools.cached_property
    def keys(self) -> list:
        keys = self.array.__dask_keys__()
        return [k[0] for k in keys] if self.array.ndim == 2 else list(keys)

    def blocks(self, start: int, stop: int) -> tuple[int, list]:
        """The first row of the blocks holding rows ``start:stop``, and their keys in order."""
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = max(first + 1, int(np.searchsorted(self.offsets, stop, side="left")))
        return int(self.offsets[first]), self.keys[first:last]

    @functools.cached_property
    def client(self) -> Any:
        """The ``distributed`` client holding the blocks of a persisted array (None otherwise)."""
        return _remote_client(self.array)

    def read(self, start: int, stop: int) -> np.ndarray:
        rows = self.array[start:stop]
        if self.client is not None:
            return np.asarray(self.client.compute(rows, sync=True))
        return np.asarray(rows.compute(scheduler="sync"))


class RowBlocks(NamedTuple):
    """Consecutive blocks of rows as a task receives them; ``first_row`` is the first block's first row."""

    first_row: int
    blocks: tuple

    def read(self, start: int, stop: int) -> np.ndarray:
        out, row = [], self.first_row
        for block in self.blocks:
            block = np.asarray(block)
            lo, hi = max(start, row), min(stop, row + len(block))
            if lo < hi:
                out.append(block[lo - row : hi - row])
            row += len(block)
        return out[0] if len(out) == 1 else np.concatenate(out)


def read_block(ref: Any, start: int, stop: int) -> np.ndarray:
    """Materialise one block reference as a numpy array (runs in the task)."""
    if isinstance(ref, (ZarrRows, DaskRows, RowBlocks)):
        return ref.read(start, stop)
    return np.asarray(ref)


def read_partition(x_ref: Any, w_ref: Any, y_ref: Any, lengths: Any, start: int, stop: int) -> Partition:
    """One partition's rows and side data as a :class:`Partition` (runs in the task)."""
    return _partition(read_block(x_ref, start, stop), read_block(w_ref, start, stop) if w_ref is not None else None,
                      None if y_ref is None else read_block(y_ref, start, stop), lengths, start)


def _partition(X: Any, w: Any, y: Any, lengths: Any, start: int) -> Partition:
    return Partition(X, None if w is None else np.asarray(w, dtype=np.float64),
                     None if lengths is None else np.asarray(lengths), y, int(start))


_buffers = threading.local()


def _reused(nbytes: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    # One growing buffer per thread: streaming passes then fault in no fresh pages per slab.
    buf = getattr(_buffers, "x", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _buffers.x = np.empty(nbytes, dtype=np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _same(p: Any, q: Any) -> bool:
    return p is q or (isinstance(p, ZarrRows) and p == q)


def _slab_end(sources: Sequence[tuple], i: int) -> int:
    """End of the run of sources from ``i`` that one Zarr read per field can serve."""
    x, w, y = sources[i][:3]
    if not isinstance(x, ZarrRows) or not all(r is None or isinstance(r, ZarrRows) for r in (w, y)):
        return i + 1
    row_bytes = max(1, math.prod(x.row_shape()[0]) * x.row_shape()[1].itemsize)
    j, stop = i + 1, sources[i][5]
    while (j < len(sources) and all(_same(p, q) for p, q in zip(sources[j][:3], (x, w, y)))
           and sources[j][4] == stop
           and (sources[j][5] - sources[i][4]) * row_bytes <= SLAB_BYTES):
        stop = sources[j][5]
        j += 1
    return j


def read_partitions(sources: Sequence[tuple], reuse: bool = False) -> Iterator[Partition]:
    """The partitions of ``sources`` (:meth:`PartitionedData.sources` entries), in order.

    Consecutive partitions of one Zarr array are read a slab at a time, one
    call per slab (zarr then fetches and decompresses its chunks together).
    With ``reuse`` a slab's rows land in a buffer this thread reuses, so each
    partition is valid only until the next one is yielded: for passes whose
    results keep no reference to the rows (E-steps).
    """
    i = 0
    while i < len(sources):
        j = _slab_end(sources, i)
        if j == i + 1 and not reuse:
            yield read_partition(*sources[i])
            i = j
            continue
        x, w, y = sources[i][:3]
        a, b = sources[i][4], sources[j - 1][5]
        if isinstance(x, ZarrRows) and reuse:
            shape, dtype = x.row_shape()
            X = x.read(a, b, out=_reused((b - a) * math.prod(shape) * dtype.itemsize, (b - a, *shape), dtype))
        else:
            X = read_block(x, a, b)
        W = None if w is None else read_block(w, a, b)
        Y = None if y is None else read_block(y, a, b)
        for src in sources[i:j]:
            lo, hi = src[4] - a, src[5] - a
            yield _partition(X[lo:hi], None if W is None else W[lo:hi], None if Y is None else Y[lo:hi],
                             src[3], src[4])
        i = j


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
