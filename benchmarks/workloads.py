"""Benchmark datasets and shared initial parameters.

Datasets are written once by :func:`dem.data.generate.generate_dataset`
(deterministic in the seed; Zarr format 3, chunked along rows only,
``BloscCodec(cname="lz4", shuffle="shuffle")``) into a cache directory and
reused by later runs. The float32 dataset holds the float64 dataset's values
rounded, since both come from the same seed.

Initial parameters are *not fitted*: means are a k-means++ seeding
(:func:`sklearn.cluster.kmeans_plusplus`) of a fixed sample of the data,
weights are uniform and every precision is the inverse of the sample's
covariance. They are computed once, from the float64 data, saved next to the
datasets and handed to every peer (dem, scikit-learn, Spark), so all peers run
the same EM iterations from the same point.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from typing import Any

import numpy as np

#: Rows per Zarr chunk of the benchmark datasets (8 MB of float64 at D=16).
DEFAULT_CHUNK_ROWS = 62_500
#: Rows in the sample the initial means are seeded from.
INIT_SAMPLE_ROWS = 10_000


def default_data_dir() -> str:
    return os.environ.get("DEM_BENCH_DATA") or os.path.join(tempfile.gettempdir(), "dem-bench-data")


def dataset_name(n: int, d: int, k: int, dtype: str, seed: int, chunk_rows: int) -> str:
    return f"gmm-n{n}-d{d}-k{k}-{dtype}-seed{seed}-c{chunk_rows}.zarr"


def ensure_dataset(data_dir: str, n: int, d: int, k: int, dtype: str, seed: int,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, n_threads: int | None = None) -> dict[str, Any]:
    """Path of the dataset, generating it first when the cache lacks it."""
    import zarr

    from dem.data.generate import generate_dataset

    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, dataset_name(n, d, k, dtype, seed, chunk_rows))
    generated, seconds = False, 0.0
    complete = False
    if os.path.exists(path):
        try:
            complete = bool(zarr.open_group(path, mode="r").attrs.get("complete", False))
        except Exception:
            complete = False
    if not complete:
        t0 = time.perf_counter()
        generate_dataset(path, n, d, k, chunk_rows=chunk_rows, dtype=dtype, seed=seed,
                         overwrite=True, n_threads=n_threads)
        generated, seconds = True, time.perf_counter() - t0
    return {"path": path, "generated": generated, "generate_seconds": seconds,
            "bytes_uncompressed": n * d * np.dtype(dtype).itemsize,
            "bytes_on_disk": directory_bytes(path)}


def directory_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def _sample_rows(path: str, n_rows: int, seed: int) -> np.ndarray:
    """``n_rows`` float64 rows drawn from up to 16 evenly spaced chunks of the dataset.

    The rows are regenerated in float64 from the dataset's seed (the chunk
    stream of :mod:`dem.data.generate`), so float32 and float64 copies of a
    dataset get bitwise the same initial parameters.
    """
    import zarr

    from dem.data.generate import generate_chunk, true_parameters

    attrs = dict(zarr.open_group(path, mode="r").attrs)
    n, d, k, chunk = attrs["n_samples"], attrs["n_features"], attrs["n_components"], attrs["chunk_rows"]
    weights, means, covariances = true_parameters(attrs["seed"], d, k, attrs["separation"])
    chol = np.linalg.cholesky(covariances)
    n_chunks = math.ceil(n / chunk)
    pick = np.unique(np.linspace(0, n_chunks - 1, min(16, n_chunks)).round().astype(int))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # as the generator does: same rounding
        rows = np.concatenate([
            generate_chunk(attrs["seed"], int(i), min(n, (i + 1) * chunk) - i * chunk, weights, means, chol, False)[0]
            for i in pick
        ])
    rng = np.random.default_rng([seed, 1])
    return rows[np.sort(rng.choice(len(rows), size=min(n_rows, len(rows)), replace=False))]


def initial_parameters_from_sample(S: np.ndarray, k: int, seed: int, reg_covar: float = 1e-6) -> dict[str, np.ndarray]:
    from sklearn.cluster import kmeans_plusplus

    d = S.shape[1]
    means, _ = kmeans_plusplus(S, k, random_state=seed)
    cov = np.atleast_2d(np.cov(S, rowvar=False)) + reg_covar * np.eye(d)
    prec = np.linalg.inv(cov)
    prec = 0.5 * (prec + prec.T)
    return {
        "weights": np.full(k, 1.0 / k),
        "means": np.asarray(means, dtype=np.float64),
        "covariances": np.repeat(cov[None], k, axis=0),
        "precisions": np.repeat(prec[None], k, axis=0),
    }


def ensure_initial_parameters(data_dir: str, path: str, k: int, seed: int) -> str:
    """Path of an ``.npz`` with weights, means, covariances and precisions for ``path``'s data."""
    # float32 and float64 copies share one file: the sample is regenerated in float64.
    out = path[: -len(".zarr")].replace("-float32-", "-").replace("-float64-", "-") + f"-init-k{k}-seed{seed}.npz"
    if not os.path.exists(out):
        params = initial_parameters_from_sample(_sample_rows(path, INIT_SAMPLE_ROWS, seed), k, seed)
        tmp = out + f".tmp-{os.getpid()}.npz"
        np.savez(tmp, **params)
        os.replace(tmp, out)
    return out


def load_initial_parameters(npz: str) -> dict[str, np.ndarray]:
    with np.load(npz) as f:
        return {name: np.array(f[name]) for name in f.files}


def load_matrix(path: str, dtype: str | None = None) -> np.ndarray:
    """The whole ``X`` array of a dataset in memory."""
    import zarr

    X = zarr.open_group(path, mode="r")["X"][:]
    return X if dtype is None else X.astype(dtype, copy=False)


def overhead_data(n_partitions: int, rows_per_partition: int, seed: int = 0) -> np.ndarray:
    """Tiny 2-D, 2-component data for the engine-overhead run."""
    n = n_partitions * rows_per_partition
    rng = np.random.default_rng([seed, 7])
    labels = rng.random(n) < 0.4
    X = rng.standard_normal((n, 2))
    X[labels] = X[labels] * 0.7 + np.array([4.0, 1.0])
    return X
