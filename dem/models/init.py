"""Starting points for mixture models, computed on a driver-side sample.

Each method produces *centres* from a sample of the data (drawn evenly from
every partition with per-partition seeds, so the sample is the same on any
cluster). The engine then makes one pass over the full data to turn the
centres into weights, means and covariances (hard nearest-centre assignment,
or random responsibilities for ``"random"``), as scikit-learn does on the
whole of X.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

INIT_METHODS: tuple[str, ...] = ("kmeans", "k-means++", "random", "random_from_data")

#: Rows of the driver-side sample used to place the initial centres.
def sample_size(n_samples: int, n_components: int) -> int:
    return int(min(n_samples, max(20_000, 200 * n_components)))


def sample_partition(
    seed_and_size: tuple[int, int, int], X: np.ndarray, w: np.ndarray | None, start: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """An even, seeded share of one partition's rows (runs in a task)."""
    seed, total_sample, n_samples = seed_and_size
    n = X.shape[0]
    take = min(n, int(round(total_sample * n / n_samples)))
    rng = np.random.default_rng([seed, start])
    idx = np.sort(rng.choice(n, size=take, replace=False)) if take < n else np.arange(n)
    Xs = np.asarray(X[idx], dtype=np.float64)
    return Xs, (None if w is None else np.asarray(w[idx], dtype=np.float64))


def centres(
    method: str, sample: np.ndarray, weights: np.ndarray | None, n_components: int, seed: int
) -> np.ndarray:
    """Initial centres (n_components, n_features) from the sample."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    rng = np.random.default_rng([seed, 1])
    # One OpenMP/BLAS thread: the same start whatever the driver's thread count.
    with threadpool_limits(limits=1):
        if method == "kmeans":
            km = KMeans(n_clusters=n_components, n_init=1, random_state=seed % (2**32))
            return km.fit(sample, sample_weight=weights).cluster_centers_
        if method == "k-means++":
            c, _ = kmeans_plusplus(sample, n_components, random_state=seed % (2**32), sample_weight=weights)
            return c
    if method == "random_from_data":
        p = None if weights is None else weights / weights.sum()
        idx = rng.choice(sample.shape[0], size=n_components, replace=False, p=p)
        return sample[idx]
    if method == "random":
        mean = np.average(sample, axis=0, weights=weights)
        return np.repeat(mean[None, :], n_components, axis=0)
    raise ValueError(f"unknown init_params {method!r}")
