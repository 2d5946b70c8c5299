"""Random numbers keyed by global row, so draws never depend on the partitioning.

Every random draw inside a data pass (k-means‖ sampling, stochastic EM's
labels, random initial responsibilities) goes through :func:`row_uniforms`:
row ``i`` of a pass keyed ``key`` always gets the same number, whichever
partition it falls in and whichever worker computes it.
"""

from __future__ import annotations

import numpy as np


def row_uniforms(key: tuple[int, ...] | list[int], start: int, n: int, per_row: int = 1) -> np.ndarray:
    """Uniforms in [0, 1) for global rows ``start … start + n − 1``.

    Philox is counter-based: row ``i`` takes the first ``per_row`` doubles
    of counter block ``i·⌈per_row/4⌉`` (each block yields four 64-bit
    words), so any cut of the rows draws the same numbers for the same row.

    Returns
    -------
    ndarray of shape (n,) when ``per_row == 1``, else (n, per_row)
    """
    words = 4 * max(1, -(-per_row // 4))  # doubles per row, a whole number of counter blocks
    seed = np.random.SeedSequence([int(k) for k in key]).generate_state(2, np.uint64)
    bitgen = np.random.Philox(key=seed)
    bitgen.advance(int(start) * (words // 4))
    draws = np.random.Generator(bitgen).random(words * n).reshape(n, words)[:, :per_row]
    return draws[:, 0].copy() if per_row == 1 else np.ascontiguousarray(draws)


def sample_mask(key: tuple[int, ...] | list[int], start: int, n: int, fraction: float) -> np.ndarray:
    """Which of rows ``start … start + n − 1`` a row-keyed Bernoulli sample keeps.

    Row ``i`` is kept when its uniform is below ``fraction``, so the sample
    (about ``fraction · n_samples`` rows) is the same however the rows are
    partitioned.
    """
    if fraction >= 1.0:
        return np.ones(n, dtype=bool)
    return row_uniforms(key, start, n) < fraction


def sample_size(n_samples: int, n_components: int) -> int:
    """Rows of a driver-side sample that places initial centres: 20,000, or 200 per component."""
    return int(min(n_samples, max(20_000, 200 * n_components)))


# -- draws keyed by a row's content ---------------------------------------------------
#
# A sample weight of w should act exactly as w copies of the row. Draws keyed by
# global row cannot do that (the copies sit at other rows than the weighted row), so
# k-means‖ keys its draws by what a row holds, and merges identical rows of a
# partition into one row carrying their total weight: w copies in a partition and
# one row of weight w then make the same draw and the same decision.

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _finalise(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def row_hashes(X: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's float64 values, (n,) uint64; equal rows hash equal.

    ``-0.0`` hashes as ``0.0``. Distinct rows collide with probability about
    2⁻⁶⁴ per pair.
    """
    X = np.asarray(X, dtype=np.float64) + 0.0  # also turns -0.0 into 0.0
    bits = np.ascontiguousarray(X.T).view(np.uint64)  # column-major: each column one contiguous read
    h = np.full(X.shape[0], _GOLDEN, dtype=np.uint64)
    for column in bits:
        h ^= column
        h *= _MIX1
        h ^= h >> np.uint64(29)
    return _finalise(h)


def content_uniforms(key: tuple[int, ...] | list[int], hashes: np.ndarray) -> np.ndarray:
    """Uniforms in [0, 1) keyed by ``key`` and a row's content (its :func:`row_hashes` value)."""
    salt = np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]
    z = _finalise(_finalise(np.asarray(hashes, dtype=np.uint64) ^ salt) + _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def merge_identical_rows(X: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Identical rows of a block as one: ``(first index of each distinct row, total weight, hash)``.

    Distinct rows come in order of their hashes (not of the rows), so the
    result does not depend on the order of the block's rows.
    """
    h = row_hashes(X)
    unique, first, inverse = np.unique(h, return_index=True, return_inverse=True)
    w = np.ones(len(h)) if weights is None else np.asarray(weights, dtype=np.float64)
    return first, np.bincount(inverse.reshape(-1), weights=w, minlength=len(unique)), unique


def weighted_race(key: tuple[int, ...] | list[int], X: np.ndarray, weights: np.ndarray | None
                  ) -> tuple[float, np.ndarray | None]:
    """A block's entry in an exponential race: ``(its key, its row)``, or ``(inf, None)``.

    Each distinct row draws ``E = −log(u)`` (``u`` keyed by ``key`` and the
    row's content) and enters with ``E / W``, ``W`` its total weight in the
    block. The smallest key over all blocks wins; a row wins with probability
    proportional to its weight (Efraimidis and Spirakis, 2006), so a row of
    weight w and w copies of it enter alike.
    """
    first, total, hashes = merge_identical_rows(X, weights)
    live = total > 0
    if not live.any():
        return float("inf"), None
    with np.errstate(divide="ignore"):
        race = np.where(live, -np.log1p(-content_uniforms(key, hashes)) / np.where(live, total, 1.0), np.inf)
    i = int(np.argmin(race))
    return float(race[i]), np.asarray(X[first[i]], dtype=np.float64) + 0.0
