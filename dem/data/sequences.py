"""Sequence data for hidden Markov models: whole sequences per partition.

Layout
------
A sequence dataset is one Zarr group holding

* ``X`` — every observation of every sequence, one after another:
  ``(total_steps, n_features)`` floats, or integer symbols ``(total_steps,)``
  (``(total_steps, 1)`` is read the same way), chunked along steps only;
* ``offsets`` — ``(n_sequences + 1,)`` int64: sequence ``i`` is rows
  ``offsets[i]:offsets[i + 1]``; ``offsets[0] == 0``, strictly increasing
  (no empty sequence), ``offsets[-1] == total_steps``.

In memory, numpy ``X`` comes with hmmlearn-style ``lengths`` (``None``: one
sequence).

Partitions
----------
A partition holds whole sequences: the data are cut at the sequence
boundaries nearest to multiples of a target row count, which depends on the
data (and the model's per-step working size) only, never on the cluster, so
fits are bitwise the same on any number of workers. The result is an ordinary
:class:`~dem.data.partitions.PartitionedData` whose ``x_refs`` read the rows
(a :class:`~dem.data.row_sources.ZarrRows` spec, or a numpy view) and whose
``length_refs`` are the partition's sequence lengths (a small int64 array),
which reach the E-step as :attr:`~dem.data.record.Partition.lengths`. The
engine needs no notion of sequences.

The limit on one sequence
-------------------------
A sequence is never split: its forward–backward lattices live in one task.
A sequence of ``T`` steps needs about ``8 · T · n_components · 8`` bytes
(emission log-probabilities and probabilities, forward and backward
variables, posteriors and temporaries;
:data:`dem.families.hmm_lattice.LATTICE_ARRAYS`) plus ``8 · T · n_features``
bytes for its rows.
:func:`check_sequence_memory` refuses, with a :class:`~dem.errors.DataError`
naming the sequence, a dataset whose longest sequence would need more than
the allowed bytes (the estimators' ``max_sequence_bytes``, by default a
quarter of a worker thread's memory), instead of letting a worker run out
of memory. Split such sequences
into shorter ones or use workers with more memory.

The offsets are read onto the driver (8 bytes per sequence).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Callable

import numpy as np

from dem.data.partitions import MAX_PARTITION_BYTES, PartitionedData, auto_partition_bytes
from dem.data.row_sources import ZarrRows, normalise_location, read_partition
from dem.errors import ConfigError, DataError, OutputExistsError, plain_repr

KINDS: tuple[str, ...] = ("gaussian", "categorical", "gmm")


# -- sequence bookkeeping ----------------------------------------------------


def offsets_from_lengths(lengths: Any, n_samples: int) -> np.ndarray:
    """Offsets ``(n_sequences + 1,)`` from hmmlearn-style ``lengths``.

    Raises
    ------
    DataError
        Lengths that are not positive integers or do not sum to ``n_samples``.
    """
    if lengths is None:
        return np.array([0, n_samples], dtype=np.int64)
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise DataError(f"lengths must be a 1-D array of sequence lengths; got shape {arr.shape}")
    if arr.size == 0:
        raise DataError("lengths is empty: there must be at least one sequence")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise DataError(f"lengths must be integers; got dtype {arr.dtype}")
    if (arr <= 0).any():
        i = int(np.flatnonzero(arr <= 0)[0])
        raise DataError(f"sequence {i} has length {int(arr[i])}; empty sequences are not allowed "
                        "(every length must be at least 1)")
    total = int(arr.sum())
    if total != n_samples:
        raise DataError(f"lengths sum to {total} but X has {n_samples} samples")
    return np.concatenate([[0], np.cumsum(arr, dtype=np.int64)])


def check_offsets(offsets: Any, n_samples: int, where: str = "offsets") -> np.ndarray:
    """Validated int64 offsets.

    Raises
    ------
    DataError
        Not 1-D integers, not starting at 0, not strictly rising (an empty
        sequence), or not ending at ``n_samples``.
    """
    arr = np.asarray(offsets)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where} must be a 1-D integer array; got shape {arr.shape} dtype {arr.dtype}")
    if arr.size < 2:
        raise DataError(f"{where} has {arr.size} entries; it needs n_sequences + 1 >= 2")
    arr = arr.astype(np.int64)
    if arr[0] != 0:
        raise DataError(f"{where}[0] is {int(arr[0])}; the first sequence must start at row 0")
    steps = np.diff(arr)
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        if steps[i] == 0:
            raise DataError(f"{where} does not rise at sequence {i} ({where}[{i}] == {where}[{i + 1}] "
                            f"== {int(arr[i])}): empty sequences are not allowed")
        raise DataError(f"{where} must rise strictly; {where}[{i + 1}] = {int(arr[i + 1])} < "
                        f"{where}[{i}] = {int(arr[i])}")
    if arr[-1] != n_samples:
        raise DataError(f"{where}[-1] is {int(arr[-1])} but X has {n_samples} rows; "
                        "the last offset must equal the number of rows")
    return arr


def sequence_cuts(offsets: np.ndarray, target_rows: int) -> np.ndarray:
    """Sequence indices where partitions start, plus ``n_sequences`` at the end.

    Cuts fall on the sequence boundary nearest to each multiple of
    ``target_rows``; a sequence longer than the target forms (most of) a
    partition of its own. A function of the offsets and the target only.
    """
    n_seq = len(offsets) - 1
    total = int(offsets[-1])
    target_rows = max(1, int(target_rows))
    if target_rows >= total:
        return np.array([0, n_seq], dtype=np.int64)
    targets = np.arange(target_rows, total, target_rows, dtype=np.int64)
    hi = np.searchsorted(offsets, targets, side="left")  # offsets[hi] >= target
    lo = hi - 1
    nearest = np.where(targets - offsets[lo] <= offsets[hi] - targets, lo, hi)
    cuts = np.unique(np.concatenate([[0], nearest, [n_seq]]))
    return cuts.astype(np.int64)


def working_row_bytes(n_features: int, n_components: int, n_mix: int = 1, lattice_arrays: int = 8) -> int:
    """Bytes one time step costs an E-step task (its row in float64 plus lattices).

    ``lattice_arrays`` is how many (steps × states) float64 arrays one
    sequence's forward–backward holds at once (the HMM family says how many).
    """
    return 8 * (n_features + lattice_arrays * n_components + n_components * n_mix)


def target_partition_rows(n_rows: int, row_bytes: int, partition_rows: int | None = None) -> int:
    """Rows per partition: given, or :func:`~dem.data.partitions.auto_partition_bytes` of the working size."""
    if partition_rows is not None:
        if isinstance(partition_rows, bool) or not isinstance(partition_rows, (int, np.integer)) \
                or partition_rows <= 0:
            raise ConfigError(f"partition_rows must be a positive integer; got {plain_repr(partition_rows)}")
        return int(partition_rows)
    row_bytes = max(1, int(row_bytes))
    return max(1, auto_partition_bytes(n_rows * row_bytes) // row_bytes)


def check_sequence_memory(offsets: np.ndarray, n_components: int, n_features: int,
                          limit_bytes: int, lattice_arrays: int = 8) -> None:
    """Refuse data whose longest sequence cannot fit in one task's memory.

    Raises
    ------
    DataError
        Naming the longest sequence, its length and the bytes it needs.
    """
    lengths = np.diff(offsets)
    i = int(lengths.argmax())
    T = int(lengths[i])
    need = T * (lattice_arrays * n_components * 8 + 8 * n_features)
    if need > limit_bytes:
        raise DataError(
            f"sequence {i} has {T} steps; its forward-backward lattices need about "
            f"{lattice_arrays} x length x n_components x 8 bytes = {need / 2**20:.0f} MiB in one task, "
            f"more than the {limit_bytes / 2**20:.0f} MiB allowed per task; split it into shorter "
            "sequences or use workers with more memory per thread")


# -- partitioned sequence data ----------------------------------------------


@dataclasses.dataclass
class SequenceData(PartitionedData):
    """:class:`PartitionedData` of whole sequences; ``length_refs`` are per-partition lengths.

    Extra attributes
    ----------------
    offsets : (n_sequences + 1,) int64, on the driver
    cuts : (n_partitions + 1,) first sequence of each partition, then n_sequences
    symbols : True when X holds integer symbols (categorical data)
    """

    offsets: np.ndarray | None = None
    cuts: np.ndarray | None = None
    symbols: bool = False
    target_rows: int = 0

    @property
    def n_sequences(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def fingerprint(self) -> dict[str, Any]:
        fp = super().fingerprint()
        fp["weighted"] = False
        fp["n_sequences"] = self.n_sequences
        fp["offsets_sha256"] = hashlib.sha256(np.ascontiguousarray(self.offsets).tobytes()).hexdigest()[:32]
        return fp


def _partitioned(X_refs: list, offsets: np.ndarray, cuts: np.ndarray, n_features: int, dtype: np.dtype,
                 description: str, chunk_rows: int, symbols: bool, target_rows: int,
                 **kw: Any) -> SequenceData:
    bounds = [(int(offsets[a]), int(offsets[b])) for a, b in zip(cuts[:-1], cuts[1:])]
    lengths = np.diff(offsets)
    length_refs = [np.ascontiguousarray(lengths[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    return SequenceData(
        int(offsets[-1]), n_features, np.dtype(dtype), bounds, X_refs, None, description,
        chunk_rows, offsets=offsets, cuts=cuts, symbols=symbols, target_rows=target_rows,
        length_refs=length_refs, **kw)


def _check_observations(shape: tuple[int, ...], dtype: np.dtype, symbols: bool, where: str) -> int:
    """n_features of the observations, or a DataError."""
    if shape[0] == 0:
        raise DataError(f"{where} is empty: 0 samples while a minimum of 1 is required")
    if symbols:
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise DataError(f"{where} must hold integer symbols of shape (n_samples,) or "
                            f"(n_samples, 1); got {tuple(shape)}")
        if not np.issubdtype(dtype, np.integer):
            raise DataError(f"{where} must hold integer symbols for a categorical HMM; got dtype {dtype}")
        return 1
    if len(shape) != 2:
        raise DataError(f"{where} must be 2-D (n_samples, n_features); got shape {tuple(shape)}"
                        + ("; reshape with X.reshape(-1, 1) for a single feature" if len(shape) == 1 else ""))
    if shape[1] == 0:
        raise DataError(f"{where} has 0 features")
    if not (np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)):
        raise DataError(f"{where} must hold real numbers; got dtype {dtype}")
    return int(shape[1])


def _row_bytes(row_bytes: Any, n_features: int) -> int:
    if callable(row_bytes):
        return int(row_bytes(n_features))
    return int(row_bytes or 8 * n_features)


def from_numpy(X: Any, lengths: Any = None, *, symbols: bool = False, row_bytes: Any = None,
               partition_rows: int | None = None) -> SequenceData:
    """Partition in-memory sequences (numpy views, no copies).

    Parameters
    ----------
    X : (n_samples, n_features) floats, or integer symbols (n_samples,) / (n_samples, 1)
    lengths : hmmlearn-style lengths, or None for one sequence
    symbols : categorical data (integer symbols)
    row_bytes : working bytes per step (sets the automatic partition size), or a
        function of n_features giving them
    partition_rows : target rows per partition (overrides the automatic size)
    """
    try:
        X = np.asarray(X)
    except (TypeError, ValueError) as exc:
        raise DataError(f"cannot read X as an array: {exc}") from None
    if X.dtype == object:
        try:
            X = X.astype(np.int64 if symbols else np.float64)
        except (TypeError, ValueError) as exc:
            raise DataError(f"X must hold numbers: {exc}") from None
    n_features = _check_observations(X.shape, X.dtype, symbols, "X")
    if symbols and X.ndim == 2:
        X = X[:, 0]
    if not symbols and (X.dtype == np.bool_ or np.issubdtype(X.dtype, np.integer)):
        X = X.astype(np.float64)
    offsets = offsets_from_lengths(lengths, X.shape[0])
    target = target_partition_rows(X.shape[0], _row_bytes(row_bytes, n_features), partition_rows)
    cuts = sequence_cuts(offsets, target)
    x_refs = [X[int(offsets[a]):int(offsets[b])] for a, b in zip(cuts[:-1], cuts[1:])]
    return _partitioned(x_refs, offsets, cuts, n_features, X.dtype,
                        f"numpy sequences {X.shape} {X.dtype}, {len(offsets) - 1} sequences", 1,
                        symbols, target, in_memory=True)


def from_zarr(url: str, *, symbols: bool = False, row_bytes: Any = None,
              partition_rows: int | None = None, storage_options: dict | None = None,
              variable: str = "X") -> SequenceData:
    """Partition a Zarr group holding ``X`` and ``offsets``; tasks read their own rows."""
    import zarr

    url = os.fspath(url)
    location = normalise_location(url)  # one fingerprint however the path is spelled
    if "://" not in url:
        url = location
    opts = tuple(sorted((storage_options or {}).items()))
    if "://" not in url and not os.path.exists(url):
        raise DataError(f"no Zarr data at {url!r}: the path does not exist")
    try:
        group = zarr.open_group(store=url, mode="r", storage_options=dict(opts) or None)
    except Exception as exc:
        raise DataError(f"cannot open a Zarr group at {url!r}: {exc}") from None
    for name in (variable, "offsets"):
        if name not in group:
            raise DataError(f"Zarr group {url!r} has no array {name!r}; a sequence dataset needs "
                            f"{variable!r} and 'offsets' (it has {sorted(group.array_keys())})")
    arr = group[variable]
    n_features = _check_observations(arr.shape, np.dtype(arr.dtype), symbols, f"Zarr array {url}/{variable}")
    offsets = check_offsets(group["offsets"][:], arr.shape[0], f"{url}/offsets")
    target = target_partition_rows(arr.shape[0], _row_bytes(row_bytes, n_features), partition_rows)
    cuts = sequence_cuts(offsets, target)
    source = ZarrRows(url, variable, opts)
    return _partitioned([source] * (len(cuts) - 1), offsets, cuts, n_features, np.dtype(arr.dtype),
                        f"zarr {location}/{variable}", int(arr.chunks[0]), symbols, target,
                        zarr_source=source)


def as_sequences(X: Any, lengths: Any = None, *, symbols: bool = False, row_bytes: Any = None,
                 partition_rows: int | None = None, storage_options: dict | None = None) -> SequenceData:
    """Numpy ``X`` + ``lengths``, or a Zarr path/URL of a group with ``X`` and ``offsets``."""
    if isinstance(X, SequenceData):
        return X
    if isinstance(X, (str, os.PathLike)):
        if lengths is not None:
            raise DataError("with a Zarr sequence dataset the lengths come from its 'offsets' array; "
                            "do not pass lengths")
        return from_zarr(X, symbols=symbols, row_bytes=row_bytes, partition_rows=partition_rows,
                         storage_options=storage_options)
    if hasattr(X, "tocsr") or type(X).__module__.startswith("scipy.sparse"):
        raise DataError("sparse input is not supported: pass a dense array")
    if hasattr(X, "dask") or hasattr(X, "dims"):
        raise DataError("HMMs take numpy X with lengths, or a Zarr group with X and offsets; "
                        "write dask/xarray data with dem.data.sequences.write_sequences first")
    return from_numpy(X, lengths, symbols=symbols, row_bytes=row_bytes, partition_rows=partition_rows)


# -- writing -----------------------------------------------------------------


def _is_url(path: str) -> bool:
    return "://" in path


def _blosc() -> list:
    from zarr.codecs import BloscCodec

    return [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]


def write_sequences(path: str | os.PathLike, X: Any, lengths: Any = None, *, chunk_rows: int = 100_000,
                    storage_options: dict | None = None, overwrite: bool = False) -> str:
    """Write in-memory sequences as a dataset dem reads (``X`` and ``offsets``).

    Parameters
    ----------
    path : local path or fsspec URL of the group to create
    X : (n_samples, n_features) or integer symbols (n_samples,)
    lengths : hmmlearn-style lengths (None: one sequence)
    chunk_rows : rows per Zarr chunk of ``X``
    overwrite : replace an existing group

    Returns
    -------
    str : the path
    """
    import zarr

    X = np.asarray(X)
    if X.ndim not in (1, 2) or X.shape[0] == 0:
        raise DataError(f"X must be (n_samples, n_features) or (n_samples,) with n_samples >= 1; got {X.shape}")
    offsets = offsets_from_lengths(lengths, X.shape[0])
    path = os.fspath(path)
    if not _is_url(path) and os.path.exists(path) and not overwrite:
        raise OutputExistsError(path)
    group = zarr.open_group(store=path, mode="w", zarr_format=3,
                            storage_options=storage_options if _is_url(path) else None)
    chunks = (min(chunk_rows, X.shape[0]),) + X.shape[1:]
    group.create_array("X", data=X, chunks=chunks, compressors=_blosc())
    group.create_array("offsets", data=offsets, chunks=(min(1 << 20, len(offsets)),))
    group.attrs.update({"n_sequences": len(offsets) - 1, "n_samples": int(X.shape[0])})
    return path


def write_partition_outputs(
    data: SequenceData,
    fn: Callable[[Any, Any], tuple[np.ndarray, ...]],
    shared: Any,
    path: str,
    outputs: list[tuple[str, str, tuple[int, ...], Any]],
    *,
    client: Any = None,
    chunk_rows: int | None = None,
    storage_options: dict | None = None,
    n_threads: int | None = None,
    attrs: dict | None = None,
) -> None:
    """Map ``fn`` over the partitions and write its outputs to a Zarr group, in parallel.

    ``fn(shared, part)`` (``part`` a :class:`~dem.data.record.Partition`) returns one array per entry of
    ``outputs``, each ``(name, per, trailing_shape, dtype)`` with ``per``
    ``"row"`` (first axis: the partition's rows) or ``"sequence"`` (its
    sequences). Each partition's result becomes a block of a dask array that
    is rechunked to regular Zarr chunks and stored by the workers; only a few
    partitions' results are in memory at a time, and nothing passes through
    the driver. ``offsets`` is written beside them.
    """
    import dask
    import dask.array as da
    import zarr
    from threadpoolctl import threadpool_limits

    path = os.fspath(path)
    opts = storage_options if _is_url(path) else None
    group = zarr.open_group(store=path, mode="w", zarr_format=3, storage_options=opts)
    group.create_array("offsets", data=data.offsets, chunks=(min(1 << 20, len(data.offsets)),))
    group.attrs.update({"n_sequences": data.n_sequences, "n_samples": data.n_samples, **(attrs or {})})
    rows = int(chunk_rows or max(1, MAX_PARTITION_BYTES // max(8, 8 * max(
        (int(np.prod(o[2])) for o in outputs), default=1))))
    shared_d = dask.delayed(shared, traverse=False)
    parts: dict[str, list] = {name: [] for name, *_ in outputs}
    for i, ((a, b), x_ref, lengths) in enumerate(zip(data.bounds, data.x_refs, data.length_refs)):
        res = dask.delayed(_run_outputs, pure=False, nout=len(outputs))(fn, shared_d, x_ref, lengths, a, b)
        if len(outputs) == 1:
            res = (res,)
        for (name, per, trailing, dtype), r in zip(outputs, res):
            n = b - a if per == "row" else len(lengths)
            parts[name].append(da.from_delayed(r, shape=(n,) + tuple(trailing), dtype=dtype))
    stores = []
    for name, per, trailing, dtype in outputs:
        arr = da.concatenate(parts[name], axis=0)
        step = rows if per == "row" else max(rows, 1 << 16)
        arr = arr.rechunk((min(step, arr.shape[0]),) + tuple(trailing))
        stores.append(da.to_zarr(arr, path, component=name, compute=False, storage_options=opts,
                                 mode="a"))
    if client is not None:
        client.compute(stores, sync=True)
    else:
        with threadpool_limits(limits=1, user_api="blas"):
            dask.compute(*stores, scheduler="threads", num_workers=n_threads or os.cpu_count() or 1)


def _run_outputs(fn: Callable, shared: Any, x_ref: Any, lengths: np.ndarray, start: int, stop: int) -> tuple:
    return tuple(fn(shared, read_partition(x_ref, None, None, lengths, start, stop)))
