"""Where a partition's rows come from, and how a task reads them.

The block references a :class:`~dem.data.partitions.PartitionedData` hands
the engine: a :class:`ZarrRows` spec (the task opens the array on the worker
and reads only its rows), a :class:`DaskRows` naming a dask array's blocks (a
task receives the blocks themselves, :class:`RowBlocks`), or a numpy view.
:func:`read_partitions` turns a run of them into
:class:`~dem.data.record.Partition` records, reading consecutive Zarr
partitions a slab at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np

from dem.data import zarr_direct
from dem.data.record import Partition
from dem.errors import DataError


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
        direct = _direct_layout(self.url, self.path, self.storage_options)
        if direct is not None and stop > start:
            rows = out if out is not None else np.empty((stop - start, *direct.row_shape), direct.dtype)
            if zarr_direct.read_into(direct, start, stop, rows):
                return rows
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


@functools.lru_cache(maxsize=32)
def _direct_layout(url: str, path: str, storage_options: tuple) -> zarr_direct.Layout | None:
    return zarr_direct.layout(_open_zarr_array(url, path, storage_options))


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


def read_scattered(sources: Sequence[tuple]) -> list[Partition] | None:
    """Partitions at scattered rows of one Zarr array, in one read per field; None if they are not.

    zarr fetches and decodes the chunks of one selection concurrently, so
    reading the next steps' small partitions (online EM visits them in a
    shuffled order) in one call pays zarr's per-call cost, and an object
    store's latency, once rather than per partition. The rows are the ones
    a read of each partition gives, bit for bit. Returns None, to read them
    one by one, unless every field is one Zarr array (or absent) throughout;
    a failing read is also left to the one-by-one reads, which name the chunk.
    """
    fields = []
    for f in range(3):
        ref = sources[0][f]
        if not (ref is None or isinstance(ref, ZarrRows)) or not all(_same(src[f], ref) for src in sources):
            return None
        fields.append(ref)
    if fields[0] is None:
        return None
    order = sorted(range(len(sources)), key=lambda i: sources[i][4])
    rows = np.concatenate([np.arange(sources[i][4], sources[i][5]) for i in order])
    read = []
    for ref in fields:
        if ref is None:
            read.append(None)
            continue
        arr = _open_zarr_array(ref.url, ref.path, ref.storage_options)
        try:
            read.append(arr.get_orthogonal_selection((rows,) + (slice(None),) * (arr.ndim - 1)))
        except MemoryError:
            raise
        except Exception:
            return None
    out: list[Partition | None] = [None] * len(sources)
    at = 0
    for i in order:
        src = sources[i]
        n = src[5] - src[4]
        X, w, y = (None if r is None else r[at:at + n] for r in read)
        out[i] = _partition(X, w, y, src[3], src[4])
        at += n
    return out  # type: ignore[return-value]
