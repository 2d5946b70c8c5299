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
