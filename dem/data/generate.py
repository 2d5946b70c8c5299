"""Synthetic Gaussian-mixture datasets written to Zarr, chunk by chunk, in parallel.

The layout is the one ``dem fit`` reads: a Zarr (format 3) group holding

* ``X`` (n_samples, n_features), chunked along samples only, Blosc lz4 with
  byte shuffle (decompresses fast, which matters for data read every iteration);
* ``labels`` (n_samples,) int32, the true component of every row;
* ``weights`` (n_samples,) float64, positive, when ``weighted``;
* ``true_weights`` (K,), ``true_means`` (K, D), ``true_covariances`` (K, D, D);
* group attributes describing the generation (seed, sizes, dtype, ...).

The true parameters come from the seed alone, and chunk ``i`` from
``np.random.default_rng([seed, i])`` alone, so the bytes written do not depend
on the scheduler, the number of threads or workers, or the order tasks run
in. Every chunk is generated and written by its own task and nothing but a
few counts comes back, so memory stays at a few chunks per thread whatever
the dataset's size.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

import numpy as np

from dem.data.atomic import replace_directory
from dem.errors import ConfigError, OutputExistsError, plain_repr

#: Default distance between the two closest means, in units of the largest
#: standard deviation of any component along any direction.
DEFAULT_SEPARATION = 6.0

#: Eigenvalues of the true covariances are drawn log-uniformly in this range,
#: so every covariance has a condition number of at most 10.
EIGENVALUE_RANGE = (0.3, 3.0)

#: Third word of the seed of the true-parameter stream. Chunk streams use
#: ``[seed, chunk]``, which numpy's SeedSequence pads as ``[seed, chunk, 0]``,
#: so a non-zero third word can never collide with a chunk's stream.
_PARAMS_STREAM = 0x6D6978

DTYPES = ("float32", "float64")

#: Rows drawn at a time inside a chunk. Part of the definition of the data
#: (it fixes the order of the draws), so it must never change.
BLOCK_ROWS = 16_384


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}; got {plain_repr(value)}")
    return int(value)


def true_parameters(
    seed: int, n_features: int, n_components: int, separation: float = DEFAULT_SEPARATION,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mixture a dataset is drawn from, as a function of the seed alone.

    Parameters
    ----------
    seed : int
        Non-negative seed.
    n_features, n_components : int
    separation : float
        Distance between the two closest means, in units of the largest
        standard deviation of any component (``sqrt`` of the largest
        covariance eigenvalue).

    Returns
    -------
    weights : ndarray of shape (K,)
        Each at least ``0.5 / K``, so no component is too rare to be found.
    means : ndarray of shape (K, D)
    covariances : ndarray of shape (K, D, D)
        Random rotations of log-uniform spectra in :data:`EIGENVALUE_RANGE`.
    """
    K, D = n_components, n_features
    rng = np.random.default_rng([seed, 0, _PARAMS_STREAM])
    weights = 0.5 / K + 0.5 * rng.dirichlet(np.ones(K))
    weights /= weights.sum()

    lo, hi = np.log(EIGENVALUE_RANGE[0]), np.log(EIGENVALUE_RANGE[1])
    covariances = np.empty((K, D, D))
    largest = 0.0
    for k in range(K):
        q, r = np.linalg.qr(rng.standard_normal((D, D)))
        q *= np.sign(np.diag(r))  # a Haar-distributed rotation, not QR's biased one
        eig = np.exp(rng.uniform(lo, hi, D))
        cov = (q * eig) @ q.T
        covariances[k] = (cov + cov.T) / 2
        largest = max(largest, float(eig.max()))

    # Of a few random layouts keep the most even one (largest ratio of the
    # closest pair to the farthest pair), then scale it so the closest pair
    # sits `separation` standard deviations apart: distinct components
    # without one pair forcing a huge spread.
    centre = rng.uniform(-10.0, 10.0, D)
    if K == 1:
        return weights, centre[None, :].copy(), covariances
    best, best_ratio = None, -1.0
    iu = np.triu_indices(K, 1)
    for _ in range(64):
        cand = rng.standard_normal((K, D))
        dist = np.linalg.norm(cand[:, None, :] - cand[None, :, :], axis=-1)[iu]
        ratio = dist.min() / dist.max()
        if ratio > best_ratio:
            best, best_ratio, best_min = cand, ratio, dist.min()
    assert best is not None
    means = centre + (best - best.mean(axis=0)) * (separation * math.sqrt(largest) / best_min)
    return weights, means, covariances


def generate_chunk(
    seed: int, chunk: int, rows: int, weights: np.ndarray, means: np.ndarray,
    cholesky: np.ndarray, weighted: bool, dtype: str = "float64",
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows of chunk ``chunk``: data (``dtype``), labels (int32) and optional weights.

    The draws come from ``default_rng([seed, chunk])`` in a fixed order
    (per block of :data:`BLOCK_ROWS` rows: labels, normals, weights), so a
    chunk is the same whoever makes it. Working block by block keeps the
    float64 temporaries at a fixed size however large the chunk is.
    """
    rng = np.random.default_rng([seed, chunk])
    K, D = means.shape
    X = np.empty((rows, D), dtype=dtype)
    labels = np.empty(rows, dtype=np.int32)
    w = np.empty(rows) if weighted else None
    for a in range(0, rows, BLOCK_ROWS):
        b = min(a + BLOCK_ROWS, rows)
        lab = rng.choice(K, size=b - a, p=weights)
        z = rng.standard_normal((b - a, D))
        for k in range(K):
            idx = lab == k
            z[idx] = z[idx] @ cholesky[k].T + means[k]
        X[a:b] = z
        labels[a:b] = lab
        if w is not None:
            w[a:b] = rng.uniform(0.5, 2.0, b - a)
    return X, labels, w


def _write_chunk(
    path: str, storage_options: dict | None, seed: int, chunk: int, start: int, stop: int,
    weights: np.ndarray, means: np.ndarray, cholesky: np.ndarray, weighted: bool,
) -> np.ndarray:
    # Runs in a task: opens the group itself, so only this small call crosses
    # the network, and writes whole chunks, which no other task touches.
    import zarr
    from threadpoolctl import threadpool_limits

    group = zarr.open_group(store=path, mode="r+", storage_options=storage_options)
    # One BLAS thread: the product's rounding must not depend on the thread count.
    with threadpool_limits(limits=1, user_api="blas"):
        X, labels, w = generate_chunk(seed, chunk, stop - start, weights, means, cholesky, weighted,
                                      str(group["X"].dtype))
    group["X"][start:stop] = X
    group["labels"][start:stop] = labels
    if w is not None:
        group["weights"][start:stop] = w
    return np.bincount(labels, minlength=len(weights))


def _is_url(path: str) -> bool:
    return "://" in path


def _is_complete(path: str, storage_options: dict | None) -> bool:
    import zarr

    try:
        group = zarr.open_group(store=path, mode="r", storage_options=storage_options)
    except Exception:
        return False
    return bool(group.attrs.get("complete", False))


def _remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def staging_target(path: str | os.PathLike, overwrite: bool,
                   storage_options: dict | None) -> tuple[str, str, bool, dict | None]:
    """Where a dataset writer writes before publishing: (path, target, is_url, options).

    Local paths are made absolute, an existing dataset is refused unless
    ``overwrite``, and the writer gets a fresh ``<path>.tmp-<pid>`` to rename
    into place; URLs are written in place (their completion is marked last).
    """
    path = os.fspath(path)
    url = _is_url(path)
    if not url:
        path = os.path.abspath(os.path.expanduser(path))
        if os.path.exists(path) and not overwrite:
            raise OutputExistsError(path)
    target = path if url else f"{path}.tmp-{os.getpid()}"
    if not url:
        _remove(target)
    return path, target, url, (storage_options if url else None)


def generate_dataset(
    path: str | os.PathLike,
    n_samples: int,
    n_features: int,
    n_components: int,
    chunk_rows: int = 100_000,
    dtype: str = "float32",
    seed: int = 0,
    separation: float = DEFAULT_SEPARATION,
    weighted: bool = False,
    storage_options: dict | None = None,
    client: Any = None,
    *,
    overwrite: bool = False,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Write a synthetic Gaussian-mixture dataset to a Zarr group.

    Parameters
    ----------
    path : str or path-like
        Local path or fsspec URL of the group to create. On a local
        filesystem the group is written under ``<path>.tmp-<pid>`` and renamed
        into place at the end, so a half-written dataset never appears at
        ``path``; on an object store the group attribute ``complete`` is set
        last.
    n_samples, n_features, n_components : int
        Sizes (all >= 1).
    chunk_rows : int, default=100_000
        Rows per Zarr chunk (and per generation task).
    dtype : {"float32", "float64"}, default="float32"
        Storage type of ``X``; rows are drawn in float64 and rounded.
    seed : int, default=0
        Non-negative seed; the data are a function of it alone.
    separation : float, default=6.0
        Distance between the two closest means in units of the largest
        component standard deviation.
    weighted : bool, default=False
        Also write positive sample ``weights`` (uniform in [0.5, 2)).
    storage_options : dict, optional
        fsspec options for URLs.
    client : distributed.Client, optional
        Cluster whose workers generate the chunks; they must be able to write
        ``path``. ``None`` uses Dask's threaded scheduler in this process.
    overwrite : bool, default=False
        Replace an existing dataset at ``path`` (otherwise that is an error).
    n_threads : int, optional
        Threads of the local scheduler (default: CPU count).

    Returns
    -------
    dict
        Summary: path, sizes, dtype, seed, n_chunks, nbytes,
        component_counts and seconds.

    Raises
    ------
    dem.errors.ConfigError
        An argument is out of range.
    dem.errors.DataError
        ``path`` already exists and ``overwrite`` is false.
    """
    import dask
    import zarr
    from zarr.codecs import BloscCodec

    n_samples = _check_positive_int("n_samples", n_samples)
    n_features = _check_positive_int("n_features", n_features)
    n_components = _check_positive_int("n_components", n_components)
    chunk_rows = _check_positive_int("chunk_rows", chunk_rows)
    seed = _check_positive_int("seed", seed, 0)
    if n_threads is not None:
        n_threads = _check_positive_int("n_threads", n_threads)
    if str(dtype) not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {plain_repr(dtype)}")
    dtype = str(dtype)
    if isinstance(separation, bool) or not isinstance(separation, (int, float)) or not separation > 0 \
            or not math.isfinite(separation):
        raise ConfigError(f"separation must be a finite number > 0; got {plain_repr(separation)}")
    if n_components > n_samples:
        raise ConfigError(f"n_components ({n_components}) must not exceed n_samples ({n_samples})")

    path, target, url, opts = staging_target(path, overwrite, storage_options)

    t0 = time.perf_counter()
    weights, means, covariances = true_parameters(seed, n_features, n_components, float(separation))
    cholesky = np.linalg.cholesky(covariances)
    n_chunks = -(-n_samples // chunk_rows)
    attrs = {
        "generator": "dem.data.generate",
        "n_samples": n_samples,
        "n_features": n_features,
        "n_components": n_components,
        "chunk_rows": chunk_rows,
        "dtype": dtype,
        "seed": seed,
        "separation": float(separation),
        "weighted": bool(weighted),
        "complete": False,
    }
    try:
        group = zarr.open_group(store=target, mode="w", zarr_format=3, storage_options=opts)
        blosc = [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")]
        group.create_array("X", shape=(n_samples, n_features), chunks=(chunk_rows, n_features),
                           dtype=dtype, compressors=blosc, fill_value=0.0)
        group.create_array("labels", shape=(n_samples,), chunks=(chunk_rows,), dtype="int32",
                           compressors=blosc, fill_value=-1)
        if weighted:
            group.create_array("weights", shape=(n_samples,), chunks=(chunk_rows,), dtype="float64",
                               compressors=blosc, fill_value=0.0)
        for name, value in (("true_weights", weights), ("true_means", means),
                            ("true_covariances", covariances)):
            group.create_array(name, shape=value.shape, dtype="float64")[...] = value
        group.attrs.update(attrs)

        task = dask.delayed(_write_chunk, pure=False)
        tasks = [
            task(target, opts, seed, i, i * chunk_rows, min((i + 1) * chunk_rows, n_samples),
                 weights, means, cholesky, bool(weighted), dask_key_name=f"dem-generate-{seed}-{i}")
            for i in range(n_chunks)
        ]
        if client is not None:
            counts = client.gather(client.compute(tasks))
        else:
            counts = dask.compute(*tasks, scheduler="threads", num_workers=n_threads or os.cpu_count() or 1)
        component_counts = np.sum(counts, axis=0).astype(int).tolist()
        group.attrs["complete"] = True
    except BaseException:
        if not url:
            _remove(target)
        raise

    if not url:
        _publish(target, path, overwrite)
    return {
        **{k: v for k, v in attrs.items() if k not in ("generator", "complete")},
        "path": path,
        "n_chunks": n_chunks,
        "nbytes": n_samples * n_features * np.dtype(dtype).itemsize,
        "component_counts": component_counts,
        "seconds": time.perf_counter() - t0,
    }


def _publish(tmp: str, path: str, overwrite: bool) -> None:
    """Rename the finished ``tmp`` to ``path`` (one atomic step on POSIX)."""
    if os.path.exists(path):
        if not overwrite:
            # Someone else published the same path while we wrote ours.
            if _is_complete(path, None):
                _remove(tmp)
                return
            _remove(tmp)
            raise OutputExistsError(path, "appeared while generating")
        replace_directory(tmp, path)
        return
    try:
        os.replace(tmp, path)
    except OSError:
        # A concurrent generator renamed its copy first; theirs is complete.
        if _is_complete(path, None):
            _remove(tmp)
            return
        raise
