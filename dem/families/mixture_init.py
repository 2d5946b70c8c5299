"""Starting points of Gaussian mixtures, as passes the engine runs.

1. One sampling pass: every partition contributes a row-keyed Bernoulli
   sample (the same rows whatever the partitioning) and reports whether it
   holds NaN; it also checks the data (naming the first bad row), and enters
   k-means‖'s weighted race for each member's first candidate
   (:func:`~dem.data.row_random.weighted_race`: a sample weight of w acts as
   w copies of the row).
2. Centres: k-means‖ over all partitions (two oversampling passes and a
   weighting pass, :mod:`dem.engine.kmeans_parallel`), or a method on the
   sample (``kmeans``, ``k-means++``, ``random_from_data``, ``random``).
3. One assignment pass turns every member's centres into weights, means and
   covariances (hard nearest-centre assignment, or row-keyed random
   responsibilities for ``random``), as scikit-learn does on the whole of X.

All members (restarts × candidate K) share every pass. Pure numpy: the
passes go through the engine's :class:`~dem.families.base.Passes`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from dem.data.record import Partition
from dem.data.row_random import merge_identical_rows, sample_mask, sample_size, weighted_race
from dem.errors import ConfigError, DataError
from dem.families.base import Passes, StatsTuple
from dem.families.gaussian_params import GMMParams, params_from

INIT_METHODS: tuple[str, ...] = ("k-means||", "kmeans", "k-means++", "random", "random_from_data")


@dataclasses.dataclass(frozen=True)
class MixtureInit:
    """How a Gaussian mixture's members start.

    ``weights_init``, ``means_init``, ``precisions_init`` override what the
    method produces; with all three given no pass is made.
    """

    method: str = "k-means||"
    covariance_type: str = "full"
    reg_covar: float = 1e-6
    weights_init: Any = None
    means_init: Any = None
    precisions_init: Any = None
    missing: bool = False  # NaN marks missing values (missing="em")


def _sample_partition(shared: tuple, part: Partition) -> tuple[list, bool, list]:
    """Each seed's row-keyed sample of the partition, whether it holds NaN, and its k-means‖ race entries."""
    seeds, fraction, missing, race = shared
    X = np.asarray(part.X)
    if missing:
        bad = np.isinf(X)
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            raise DataError(f"X contains inf at row {part.start + row}, feature {col} "
                            "(only NaN marks a missing value)")
    else:
        bad = ~np.isfinite(X)
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            kind = "NaN" if np.isnan(X[row, col]) else "inf"
            raise DataError(f"X contains {kind} at row {part.start + row}, feature {col}")
    w = None
    if part.weights is not None:
        w = np.asarray(part.weights, dtype=np.float64)
        b = ~(np.isfinite(w) & (w >= 0))
        if b.any():
            i = int(np.flatnonzero(b)[0])
            raise DataError(f"sample_weight is {'negative' if w[i] < 0 else 'not finite'} at row "
                            f"{part.start + i} ({float(w[i])})")
    out = []
    for seed in seeds:
        keep = sample_mask((seed, 11), part.start, X.shape[0], fraction)
        out.append((np.asarray(X[keep], dtype=np.float64), None if w is None else w[keep]))
    has_nan = bool(missing and np.isnan(X).any())
    races = [weighted_race((seed, 5), X, w) for seed in seeds] if race and not has_nan else []
    return out, has_nan, races


def _assign_members(shared: tuple, part: Partition) -> StatsTuple:
    # One read of the partition turns every member's centres into statistics.
    return StatsTuple(tuple(family.assignment_stats(p, part, how, seed) for family, p, how, seed in shared))


def centres(method: str, sample: np.ndarray, weights: np.ndarray | None, n_components: int, seed: int
            ) -> np.ndarray:
    """Initial centres (n_components, n_features) from the sample."""
    from sklearn.cluster import KMeans, kmeans_plusplus

    if sample.shape[0] < n_components:
        raise DataError(f"the data has too few rows ({sample.shape[0]} in the sample) for "
                        f"n_components={n_components}")
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
    raise ConfigError(f"init_params must be one of {', '.join(INIT_METHODS)}; got {method!r}")


def nan_tolerant_sample(sample: np.ndarray, weights: np.ndarray | None, n_components: int
                        ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The init sample made usable when it holds NaN (``missing="em"``).

    Returns ``(filled, weights, variances)``: the sample without rows that
    are entirely NaN (when enough rows remain) and with every other NaN
    replaced by its column's observed mean, so k-means can place centres;
    and each column's variance over its *observed* values. A column with no
    observed value in the sample is filled with 0 and given variance 1.
    Without NaN the sample is returned untouched, with ``np.var``.
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


def canonical_sample(sample: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The sample as distinct rows in sorted order, each with its total weight; zero-weight rows dropped.

    What a centre-placing method sees then does not depend on the order of the
    rows, and a row of weight w is the same input as w copies of it.
    Weights come back as None when every row counts once.
    """
    first, total, _ = merge_identical_rows(sample, weights)
    rows = sample[first] + 0.0
    keep = total > 0
    rows, total = rows[keep], total[keep]
    order = np.lexsort(rows.T[::-1]) if rows.shape[0] else np.arange(0)
    rows, total = rows[order], total[order]
    return rows, (None if (total == 1.0).all() else total)


def sample_centres(method: str, sample: np.ndarray, weights: np.ndarray | None, n_components: int,
                   seed: int) -> np.ndarray:
    """:func:`centres` of the :func:`canonical_sample`.

    Fewer distinct rows than components (heavily repeated data) are repeated,
    as k-means‖ does with its candidates; the M-step treats the duplicates as
    empty components.
    """
    rows, w = canonical_sample(sample, weights)
    if 0 < rows.shape[0] < n_components <= sample.shape[0] and method != "random":
        return rows[np.resize(np.arange(rows.shape[0]), n_components)]
    return centres(method, rows, w, n_components, seed)


def weighted_variance(sample: np.ndarray, weights: np.ndarray | None, n_features: int) -> np.ndarray:
    """Each column's variance over the sample, rows counted by their weight (ones for an empty sample)."""
    if sample.shape[0] == 0 or (weights is not None and not weights.sum() > 0):
        return np.ones(n_features)
    mean = np.average(sample, axis=0, weights=weights)
    return np.average((sample - mean) ** 2, axis=0, weights=weights)


def starting_covariances(var: np.ndarray, k: int, covariance_type: str, reg_covar: float) -> np.ndarray:
    """Diagonal starting covariances from the sample's variances."""
    var = np.maximum(var, 1e-12) + reg_covar
    return {"full": lambda: np.repeat(np.diag(var)[None], k, axis=0), "tied": lambda: np.diag(var),
            "diag": lambda: np.repeat(var[None], k, axis=0),
            "spherical": lambda: np.full(k, var.mean())}[covariance_type]()


def starting_mixtures(ks: list[int], seeds: list[int], passes: Passes, init: MixtureInit
                      ) -> tuple[list[GMMParams], str, list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]]:
    """The sampling pass and the centres every mixture family starts from.

    Returns, per member ``(k, seed)``, a mixture of uniform weights at the
    centres (``init.method`` on the row-keyed sample, or k-means‖ passes)
    with the sample's variance as covariances; the rule that assigns rows to
    them (``"nearest"``, or ``"random"`` responsibilities); and each member's
    sample ``(rows, weights, variance)``.
    """
    ct = init.covariance_type
    fraction = sample_size(passes.n_samples, max(ks)) / passes.n_samples
    method = init.method
    results = passes.map(_sample_partition, (tuple(seeds), fraction, init.missing, method == "k-means||"))
    if method == "k-means||" and any(r[1] for r in results):
        method = "kmeans"  # distances need complete rows: centres from the NaN-tolerant sample
    samples = []
    for j, k in enumerate(ks):
        sample = np.concatenate([r[0][j][0] for r in results])
        sw = None if results[0][0][j][1] is None else np.concatenate([r[0][j][1] for r in results])
        if init.missing:
            sample, sw, var = nan_tolerant_sample(sample, sw, k)
        else:
            var = weighted_variance(sample, sw, passes.n_features)
        samples.append((sample, sw, var))
    if method == "k-means||":
        # Each member's first candidate: the winner of the race the sampling pass ran.
        first = [min((r[2][j] for r in results), key=lambda entry: entry[0])[1] for j in range(len(seeds))]
        found = passes.kmeans_parallel(ks, seeds, first=None if any(f is None for f in first) else first)
    else:
        found = [sample_centres(method, s, sw, k, seed) for (s, sw, _), k, seed in zip(samples, ks, seeds)]
    how = "random" if method == "random" else "nearest"
    pseudo = [params_from(ct, np.full(k, 1.0 / k), c, covariances=starting_covariances(var, k, ct, init.reg_covar))
              for k, c, (_, _, var) in zip(ks, found, samples)]
    return pseudo, how, samples


def initial_params(members: list[tuple[Any, int]], passes: Passes, init: MixtureInit) -> list[GMMParams]:
    """Starting parameters of every member ``(family, seed)``, sharing the data passes.

    Each ``family`` provides ``n_components``, ``assignment_stats`` and ``m_step``.
    """
    ct = init.covariance_type
    user = (init.weights_init, init.means_init, init.precisions_init)
    if all(v is not None for v in user):
        return [params_from(ct, init.weights_init, init.means_init, precisions=init.precisions_init)
                for _ in members]
    seeds = [seed for _, seed in members]
    pseudo, how, _ = starting_mixtures([family.n_components for family, _ in members], seeds, passes, init)
    summed = passes.reduce(_assign_members, tuple((family, p, how, seed)
                                                  for (family, seed), p in zip(members, pseudo)))
    out = []
    for (family, _), p0, stats in zip(members, pseudo, summed.members):
        params = family.m_step(stats, p0)
        weights, means = params.weights, params.means
        if init.weights_init is not None:
            weights = np.asarray(init.weights_init, dtype=np.float64)
        if init.means_init is not None:
            means = np.asarray(init.means_init, dtype=np.float64)
        if init.precisions_init is not None:
            out.append(params_from(ct, weights, means, precisions=init.precisions_init))
        else:
            out.append(GMMParams(weights, means, params.covariances, params.precisions_cholesky))
    return out


def check_user_parameters(init: MixtureInit, n_components: int, n_features: int) -> None:
    """One clear error for user-supplied initial parameters of the wrong shape or value.

    The sentences are scikit-learn's (``sklearn/mixture``: ``_check_shape``,
    ``_check_weights``, ``_check_precisions``), followed by the parameter's name.
    """
    K, D, ct = n_components, n_features, init.covariance_type

    def shape_error(name: str, expected: tuple, got: tuple, param: str) -> ConfigError:
        return ConfigError(f"The parameter '{name}' should have the shape of {expected}, but got {got} ({param})")

    if init.weights_init is not None:
        w = np.asarray(init.weights_init, dtype=np.float64)
        if w.shape != (K,):
            raise shape_error("weights", (K,), w.shape, "weights_init")
        if (w < 0).any() or (w > 1).any():
            # scikit-learn's words, min and max as it prints them
            raise ConfigError(f"The parameter 'weights' should be in the range [0, 1], but got max value "
                              f"{w.min():.5f}, min value {w.max():.5f} (weights_init)")
        if not math.isclose(w.sum(), 1.0, rel_tol=0, abs_tol=1e-6):
            raise ConfigError(f"The parameter 'weights' should be normalized, but got sum(weights) = "
                              f"{w.sum():.5f} (weights_init)")
    if init.means_init is not None:
        m = np.asarray(init.means_init, dtype=np.float64)
        if m.shape != (K, D):
            raise shape_error("means", (K, D), m.shape, "means_init")
    if init.precisions_init is not None:
        p = np.asarray(init.precisions_init, dtype=np.float64)
        shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[ct]
        if p.shape != shape:
            raise shape_error(f"{ct} precision", shape, p.shape, "precisions_init")
        if ct in ("diag", "spherical"):
            if not (p > 0).all():
                raise ConfigError(f"'{ct} precision' should be positive (precisions_init)")
        elif not all(np.allclose(q, q.T) and np.linalg.eigvalsh(q).min() > 0 for q in p.reshape(-1, D, D)):
            raise ConfigError(f"'{ct} precision' should be symmetric, positive-definite (precisions_init)")
