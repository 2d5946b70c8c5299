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

INIT_METHODS: tuple[str, ...] = ("k-means||", "kmeans", "k-means++", "random", "random_from_data")

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
    finite = np.isfinite(Xs)
    if not finite.all():
        # Name the first offending row of the whole partition, not just of the sample.
        X_all = np.asarray(X)
        bad_rows = np.flatnonzero(~np.isfinite(X_all).all(axis=1))
        row = int(bad_rows[0])
        col = int(np.flatnonzero(~np.isfinite(X_all[row]))[0])
        kind = "NaN" if np.isnan(X_all[row, col]) else "inf"
        from dem.errors import DataError
        raise DataError(f"X contains {kind} at row {start + row}, feature {col}")
    if w is not None:
        from dem.models.gmm import _checked_weights

        w = _checked_weights(w, 0, n, start)[idx]
    return Xs, w


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


def sample_partition_with_nan(
    seed_and_size: tuple[int, int, int], X: np.ndarray, w: np.ndarray | None, start: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`sample_partition` for ``missing="em"``: NaN is kept, inf is still an error.

    Draws exactly the rows :func:`sample_partition` draws, so data without
    NaN gets the same start under either setting.
    """
    seed, total_sample, n_samples = seed_and_size
    n = X.shape[0]
    take = min(n, int(round(total_sample * n / n_samples)))
    rng = np.random.default_rng([seed, start])
    idx = np.sort(rng.choice(n, size=take, replace=False)) if take < n else np.arange(n)
    Xs = np.asarray(X[idx], dtype=np.float64)
    if np.isinf(Xs).any():
        X_all = np.asarray(X)
        row, col = (int(v[0]) for v in np.nonzero(np.isinf(X_all)))
        from dem.errors import DataError
        raise DataError(f"X contains inf at row {start + row}, feature {col} (only NaN marks a missing value)")
    if w is not None:
        w = np.asarray(w, dtype=np.float64)
        bad = np.flatnonzero(~(np.isfinite(w) & (w >= 0)))
        if bad.size:
            from dem.errors import DataError
            i = int(bad[0])
            raise DataError(f"sample weight at row {start + i} is {w[i]!r}; weights must be finite "
                            "and >= 0 (negative at row {start + i})".replace("{start + i}", str(start + i)))
        w = w[idx]
    return Xs, w

def nan_tolerant_sample(
    sample: np.ndarray, weights: np.ndarray | None, n_components: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The init sample made usable when it holds NaN (``missing="em"``).

    Returns ``(filled, weights, variances)``: the sample without rows that
    are entirely NaN (when enough rows remain) and with every other NaN
    replaced by its column's observed mean, so k-means can place centres;
    and each column's variance over its *observed* values (the filled
    values would shrink it). A column with no observed value in the sample
    is filled with 0 and given variance 1; the pass over all data that
    follows raises a clear error if it is missing everywhere.

    Without NaN the sample is returned untouched, with ``np.var``, so the
    start is bitwise that of ``missing="error"``.
    """
    missing = np.isnan(sample)
    if not missing.any():
        return sample, weights, np.var(sample, axis=0)
    keep = ~missing.all(axis=1)
    if keep.sum() >= n_components:
        sample, missing = sample[keep], missing[keep]
        weights = None if weights is None else weights[keep]
    observed = (~missing).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        col_mean = np.where(observed > 0, np.where(missing, 0.0, sample).sum(axis=0) / np.maximum(observed, 1), 0.0)
        filled = np.where(missing, col_mean, sample)
        dev = np.where(missing, 0.0, sample - col_mean)
        var = np.where(observed > 0, (dev * dev).sum(axis=0) / np.maximum(observed, 1), 1.0)
    return filled, weights, var
