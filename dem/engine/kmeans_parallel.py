"""Scalable k-means++ ("k-means‖", Bahmani et al., 2012) over row partitions.

The candidate set C starts with one row chosen at random in proportion to
its weight; each round, every row joins C independently with probability
``ℓ·w·d²(x, C)/φ`` (``φ`` the total weighted cost of C); finally each
candidate is weighted by the (weighted) number of rows nearest to it, and
weighted k-means on the driver reduces the candidates to ``n_components``
centres.

One pass per round, not two: a partition does not know ``φ`` during the pass,
but its own cost ``φ_p ≤ φ``, so it keeps every row with ``u < ℓ·c/φ_p`` (a
superset of the rows to sample, about ℓ of them) together with its cost
``c`` and uniform ``u``; the driver, once it has ``φ = Σ φ_p``, keeps those
with ``u < ℓ·c/φ``. The result is exactly the sequential algorithm's sample.

Model-agnostic: it sees rows, never a family. ``rows(part)`` (default: the
partition's ``X``) chooses what is clustered, so a conditional model can
cluster the joint ``[x, y]``. The passes go through any object with the
executor's ``map``. Each restart draws from its own seed, so restarts
evaluated in the same passes get exactly the candidates they would get
alone.

A sample weight of w acts exactly as w copies of the row: the draws are keyed
by a row's content, not its index (:func:`~dem.data.row_random.content_uniforms`),
identical rows of a partition are merged into one row carrying their total
weight, the first candidate comes from a weighted race the caller runs in a
pass it makes anyway (``first``), and the candidates are sorted before the
driver's k-means, so neither their order nor the rows' order matters. The
draws do not depend on the partitioning, with one exception: identical rows
that straddle a partition boundary are merged per partition (one draw each,
with each part's weight), which a single pass cannot avoid — knowing a row's
total multiplicity needs a group-by over the whole dataset.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from threadpoolctl import threadpool_limits

from dem.data.record import Partition
from dem.data.row_random import content_uniforms, merge_identical_rows

#: Rounds of oversampling. Spark MLlib uses 2 (its initSteps); each costs a pass.
DEFAULT_ROUNDS = 2


def _min_sqdist(C: np.ndarray, X: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance of each row of X to its nearest row of C, and that row's index."""
    n = X.shape[0]
    dist = np.empty(n)
    arg = np.empty(n, dtype=np.int64)
    shift = C.mean(axis=0)  # centre both sides so large offsets do not cancel away
    Cc = C - shift
    c_sq = (Cc * Cc).sum(axis=1)
    for a in range(0, n, block):
        Xc = np.asarray(X[a : a + block], dtype=np.float64) - shift
        d = (Xc * Xc).sum(axis=1)[:, None] - 2.0 * (Xc @ Cc.T) + c_sq
        arg[a : a + block] = d.argmin(axis=1)
        dist[a : a + block] = np.maximum(d[np.arange(d.shape[0]), arg[a : a + block]], 0.0)
    return dist, arg


def partition_rows(rows: Callable | None, part: Partition) -> np.ndarray:
    """The rows k-means‖ clusters: ``rows(part)``, or the partition's X."""
    return np.asarray(part.X if rows is None else rows(part), dtype=np.float64)


def oversample_partition(shared: tuple, part: Partition) -> list[tuple]:
    """One round on one partition, for every restart: (φ_p, rows, costs, uniforms) each."""
    seeds, round_index, ells, candidates, rows = shared
    X = partition_rows(rows, part)
    first, total, hashes = merge_identical_rows(X, part.weights)
    X = X[first]  # each distinct row once, carrying the weight of its copies
    out = []
    for seed, ell, C in zip(seeds, ells, candidates):
        d, _ = _min_sqdist(C, X)
        cost = d * total
        phi_p = float(cost.sum())
        u = content_uniforms((seed, 7, round_index), hashes)
        keep = (u * phi_p < ell * cost) if phi_p > 0 else np.zeros(X.shape[0], dtype=bool)
        out.append((phi_p, X[keep], cost[keep], u[keep]))
    return out


def candidate_weights(shared: tuple, part: Partition) -> list[np.ndarray]:
    """Weighted count of the partition's rows nearest to each candidate, per restart."""
    candidates, rows = shared
    X = partition_rows(rows, part)
    ww = np.ones(X.shape[0]) if part.weights is None else np.asarray(part.weights, dtype=np.float64)
    out = []
    for C in candidates:
        _, arg = _min_sqdist(C, X)
        out.append(np.bincount(arg, weights=ww, minlength=C.shape[0]))
    return out


def kmeans_parallel_centres(
    map_partitions: Callable[[Callable, Any], list[Any]],
    read_row: Callable[[int], np.ndarray],
    n_samples: int,
    n_components: int | list[int],
    seeds: list[int],
    *,
    rounds: int = DEFAULT_ROUNDS,
    oversampling: float | None = None,
    rows: Callable | None = None,
    first: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Initial centres for each seed by k-means‖, sharing the data passes.

    Parameters
    ----------
    map_partitions : ``map_partitions(fn, shared)`` runs ``fn(shared, part)``
        on every partition and returns the results in partition order.
    read_row : ``read_row(i)`` returns row ``i`` of what is clustered (the first centre).
    n_samples : int
    n_components : int, or one per seed (candidate K of model selection)
    seeds : one seed per restart
    rounds : oversampling rounds (passes)
    oversampling : ℓ, expected rows added per round (default ``2·n_components``)
    rows : module-level ``rows(part)`` giving what to cluster (default: ``part.X``)
    first : the first candidate of each seed, e.g. the winner of a
        :func:`~dem.data.row_random.weighted_race` run in an earlier pass;
        default a row drawn uniformly by index (``read_row``), which ignores
        weights and is not the same row for repeated data

    Returns
    -------
    list of ndarray of shape (n_components, n_features), one per seed
    """
    ks = list(n_components) if isinstance(n_components, (list, tuple)) else [n_components] * len(seeds)
    ells = tuple(float(oversampling if oversampling is not None else 2 * k) for k in ks)
    candidates = []
    for j, seed in enumerate(seeds):
        if first is not None:
            candidates.append(np.asarray(first[j], dtype=np.float64).reshape(1, -1))
            continue
        row = int(np.random.default_rng([seed, 7]).integers(n_samples))
        candidates.append(np.asarray(read_row(row), dtype=np.float64).reshape(1, -1))
    for r in range(rounds):
        parts = map_partitions(oversample_partition, (tuple(seeds), r, ells, tuple(candidates), rows))
        for j, ell in enumerate(ells):
            phi = sum(p[j][0] for p in parts)
            if phi <= 0:
                continue  # every row already sits on a candidate
            new = [p[j][1][p[j][3] * phi < ell * p[j][2]] for p in parts]
            candidates[j] = np.vstack([candidates[j], *new])
    # Sorted and without repeats: the driver's k-means (and its k-means++ start) sees
    # the same candidates in the same order whatever the order of the rows.
    candidates = [np.unique(C + 0.0, axis=0) for C in candidates]
    weights = map_partitions(candidate_weights, (tuple(candidates), rows))
    centres = []
    for j, (seed, k) in enumerate(zip(seeds, ks)):
        cw = np.sum([wp[j] for wp in weights], axis=0)
        centres.append(_reduce_candidates(candidates[j], cw, k, seed))
    return centres


def _reduce_candidates(C: np.ndarray, weights: np.ndarray, n_components: int, seed: int) -> np.ndarray:
    """Weighted k-means (k-means++ start) of the candidates down to n_components centres."""
    from sklearn.cluster import KMeans

    keep = weights > 0
    C, weights = C[keep], weights[keep]
    if C.shape[0] <= n_components:
        # Too few distinct candidates (tiny or heavily duplicated data): repeat
        # them; the M-step treats the duplicates as empty components.
        reps = np.resize(np.arange(C.shape[0]), n_components)
        return C[reps]
    with threadpool_limits(limits=1):  # the same centres whatever the driver's thread count
        km = KMeans(n_clusters=n_components, n_init=1, random_state=seed % (2**32))
        return km.fit(C, sample_weight=weights).cluster_centers_
