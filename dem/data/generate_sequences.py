"""Synthetic hidden-Markov sequence data with known parameters (``dem generate --kind *_hmm``).

The true parameters are a function of the seed alone; the sequences are
written chunk by chunk in parallel, each chunk from its own seeded stream,
so the dataset does not depend on how it was written.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

import numpy as np

from dem.data.atomic import replace_directory
from dem.data.sequences import KINDS, _blosc
from dem.errors import ConfigError, plain_repr

# -- synthetic data ----------------------------------------------------------

#: Third word of the true-parameter stream's seed (chunk streams use [seed, chunk]).
_PARAMS_STREAM = 0x686D6D


def true_hmm_parameters(seed: int, kind: str, n_components: int, n_features: int = 1,
                        n_symbols: int = 2, n_mix: int = 2) -> dict[str, np.ndarray]:
    """The HMM a synthetic dataset is drawn from, as a function of its arguments alone.

    Returns a dict with ``startprob`` (K,), ``transmat`` (K, K) (self-transition
    0.6–0.9, so states persist), and ``means`` (K, D) + ``covars`` (K, D, D)
    (gaussian), ``emissionprob`` (K, n_symbols) (categorical) or ``weights``
    (K, M) + ``means`` (K, M, D) + ``covars`` (K, M, D, D) (gmm). Gaussian
    components are those of :func:`dem.data.generate.true_parameters`:
    well-separated means, covariances of condition number at most 10.
    """
    from dem.data.generate import true_parameters

    K = n_components
    rng = np.random.default_rng([seed, 0, _PARAMS_STREAM])
    startprob = 0.5 / K + 0.5 * rng.dirichlet(np.ones(K))
    startprob /= startprob.sum()
    transmat = np.ones((1, 1))
    if K > 1:
        stay = rng.uniform(0.6, 0.9, K)
        transmat = np.empty((K, K))
        for k in range(K):
            rest = rng.dirichlet(np.ones(K - 1)) * (1.0 - stay[k])
            transmat[k] = np.insert(rest, k, stay[k])
        transmat /= transmat.sum(axis=1, keepdims=True)
    out = {"startprob": startprob, "transmat": transmat}
    if kind == "gaussian":
        _, means, covars = true_parameters(seed, n_features, K)
        out.update(means=means, covars=covars)
    elif kind == "categorical":
        e = rng.dirichlet(np.full(n_symbols, 0.5), size=K) + 1e-3
        out["emissionprob"] = e / e.sum(axis=1, keepdims=True)
    elif kind == "gmm":
        _, means, covars = true_parameters(seed, n_features, K * n_mix)
        w = 0.5 / n_mix + 0.5 * rng.dirichlet(np.ones(n_mix), size=K)
        out.update(weights=w / w.sum(axis=1, keepdims=True), means=means.reshape(K, n_mix, n_features),
                   covars=covars.reshape(K, n_mix, n_features, n_features))
    else:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    return out


def generate_sequences(rng: np.random.Generator, truth: dict[str, np.ndarray], kind: str,
                       n_sequences: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``n_sequences`` sequences of ``length`` steps: observations and hidden states.

    The chain is drawn for all sequences at once, one step at a time
    (inverse CDF); rows come out sequence after sequence.
    """
    K = truth["startprob"].shape[0]
    n, L = n_sequences, length
    u = rng.random((L, n))
    states = np.empty((L, n), dtype=np.int64)
    states[0] = np.minimum((u[0][:, None] > np.cumsum(truth["startprob"])[None]).sum(axis=1), K - 1)
    cdf = np.cumsum(truth["transmat"], axis=1)
    for t in range(1, L):
        states[t] = np.minimum((u[t][:, None] > cdf[states[t - 1]]).sum(axis=1), K - 1)
    s = states.T.reshape(-1)  # sequence after sequence
    if kind == "categorical":
        cdf_e = np.cumsum(truth["emissionprob"], axis=1)
        S = cdf_e.shape[1]
        v = rng.random(s.shape[0])
        X = np.minimum((v[:, None] > cdf_e[s]).sum(axis=1), S - 1)
        return X, s
    if kind == "gmm":
        M = truth["weights"].shape[1]
        cdf_w = np.cumsum(truth["weights"], axis=1)
        comp = s * M + np.minimum((rng.random(s.shape[0])[:, None] > cdf_w[s]).sum(axis=1), M - 1)
        means = truth["means"].reshape(K * M, -1)
        chol = np.linalg.cholesky(truth["covars"].reshape(K * M, means.shape[1], means.shape[1]))
    else:
        comp = s
        means = truth["means"]
        chol = np.linalg.cholesky(truth["covars"])
    z = rng.standard_normal((s.shape[0], means.shape[1]))
    for c in range(means.shape[0]):
        idx = comp == c
        z[idx] = z[idx] @ chol[c].T + means[c]
    return z, s


def _write_chunk(path: str, opts: dict | None, seed: int, chunk: int, first_seq: int, n_seq: int,
                 length: int, kind: str, truth: dict[str, np.ndarray]) -> int:
    # Runs in a task: generates whole sequences for one Zarr chunk and writes
    # only that chunk, which no other task touches.
    import zarr
    from threadpoolctl import threadpool_limits

    group = zarr.open_group(store=path, mode="r+", storage_options=opts)
    with threadpool_limits(limits=1, user_api="blas"):
        X, states = generate_sequences(np.random.default_rng([seed, chunk]), truth, kind, n_seq, length)
    a, b = first_seq * length, (first_seq + n_seq) * length
    group["X"][a:b] = X.astype(group["X"].dtype)
    group["states"][a:b] = states.astype(np.int32)
    return b - a


def generate_hmm_dataset(
    path: str | os.PathLike,
    n_sequences: int,
    length: int,
    n_components: int,
    n_features: int | None = None,
    n_symbols: int | None = None,
    kind: str = "gaussian",
    seed: int = 0,
    chunk_rows: int = 100_000,
    *,
    n_mix: int = 2,
    dtype: str = "float32",
    storage_options: dict | None = None,
    client: Any = None,
    overwrite: bool = False,
    n_threads: int | None = None,
) -> dict[str, Any]:
    """Write a synthetic HMM sequence dataset to a Zarr group, in parallel.

    Layout: ``X`` (gaussian/gmm: (total_steps, n_features) ``dtype``;
    categorical: (total_steps,) int32 symbols), ``offsets`` (n_sequences + 1,)
    int64, ``states`` (total_steps,) int32 hidden states, and the true
    parameters ``true_startprob``, ``true_transmat`` plus ``true_means`` and
    ``true_covars`` (full (K, D, D), or (K, M, D, D) for gmm),
    ``true_emissionprob`` or ``true_weights``; group attributes describe the
    generation.

    Parameters
    ----------
    path : local path or fsspec URL; locally the group is written under a
        temporary name and renamed into place when complete
    n_sequences, length : every sequence has ``length`` steps
    n_components : hidden states
    n_features : features of gaussian/gmm observations
    n_symbols : alphabet size of categorical observations
    kind : {"gaussian", "categorical", "gmm"}
    seed : the data are a function of (seed, sizes, chunk_rows)
    chunk_rows : rows per Zarr chunk, rounded to whole sequences
        (``max(1, round(chunk_rows / length)) · length``): each chunk holds
        whole sequences and is generated and written by one task, so memory
        stays at a few chunks per thread whatever the dataset's size
    n_mix : mixture components per state (gmm)
    dtype : {"float32", "float64"} storage of gaussian/gmm ``X``
    client : distributed.Client whose workers write (they must reach ``path``);
        None uses Dask's threaded scheduler

    Returns
    -------
    dict : summary (path, sizes, kind, seed, chunk_rows, n_chunks, seconds)
    """
    import dask
    import zarr

    def positive(name: str, v: Any, minimum: int = 1) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ConfigError(f"{name} must be an integer >= {minimum}; got {plain_repr(v)}")
        return int(v)

    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    n_sequences = positive("n_sequences", n_sequences)
    length = positive("length", length)
    K = positive("n_components", n_components)
    seed = positive("seed", seed, 0)
    chunk_rows = positive("chunk_rows", chunk_rows)
    n_mix = positive("n_mix", n_mix)
    if kind == "categorical":
        n_symbols = positive("n_symbols", n_symbols)
        D = 1
    else:
        D = positive("n_features", n_features)
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be float32 or float64; got {dtype!r}")

    from dem.data.generate import staging_target

    path, target, url, opts = staging_target(path, overwrite, storage_options)

    t0 = time.perf_counter()
    truth = true_hmm_parameters(seed, kind, K, D, n_symbols or 2, n_mix)
    per_chunk = max(1, round(chunk_rows / length))
    rows_per_chunk = per_chunk * length
    total = n_sequences * length
    n_chunks = math.ceil(n_sequences / per_chunk)
    attrs = {"generator": "dem.data.sequences", "kind": kind, "n_sequences": n_sequences,
             "length": length, "n_components": K, "n_features": D if kind != "categorical" else None,
             "n_symbols": n_symbols if kind == "categorical" else None,
             "n_mix": n_mix if kind == "gmm" else None, "seed": seed, "chunk_rows": rows_per_chunk,
             "dtype": "int32" if kind == "categorical" else dtype, "complete": False}
    try:
        group = zarr.open_group(store=target, mode="w", zarr_format=3, storage_options=opts)
        if kind == "categorical":
            group.create_array("X", shape=(total,), chunks=(rows_per_chunk,), dtype="int32",
                               compressors=_blosc(), fill_value=0)
        else:
            group.create_array("X", shape=(total, D), chunks=(rows_per_chunk, D), dtype=dtype,
                               compressors=_blosc(), fill_value=0.0)
        group.create_array("states", shape=(total,), chunks=(rows_per_chunk,), dtype="int32",
                           compressors=_blosc(), fill_value=-1)
        off_chunk = 1 << 20
        offsets = group.create_array("offsets", shape=(n_sequences + 1,), dtype="int64",
                                     chunks=(min(off_chunk, n_sequences + 1),), fill_value=0)
        for a in range(0, n_sequences + 1, off_chunk):  # bounded memory on the driver
            b = min(a + off_chunk, n_sequences + 1)
            offsets[a:b] = np.arange(a, b, dtype=np.int64) * length
        for name, value in truth.items():
            group.create_array(f"true_{name}", shape=value.shape, dtype="float64")[...] = value
        group.attrs.update(attrs)
        task = dask.delayed(_write_chunk, pure=False)
        tasks = [task(target, opts, seed, i, i * per_chunk, min(per_chunk, n_sequences - i * per_chunk),
                      length, kind, truth, dask_key_name=f"dem-hmm-generate-{seed}-{i}")
                 for i in range(n_chunks)]
        if client is not None:
            client.gather(client.compute(tasks))
        else:
            dask.compute(*tasks, scheduler="threads", num_workers=n_threads or os.cpu_count() or 1)
        group.attrs["complete"] = True
    except BaseException:
        if not url:
            shutil.rmtree(target, ignore_errors=True)
        raise
    if not url:
        replace_directory(target, path)
    return {**{k: v for k, v in attrs.items() if k not in ("generator", "complete")},
            "path": path, "total_steps": total, "n_chunks": n_chunks,
            "seconds": time.perf_counter() - t0}
