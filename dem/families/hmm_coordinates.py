"""SQUAREM's unconstrained coordinates for HMM parameters.

Pure numpy; no Dask. Probability vectors become log-ratios over their
nonzero entries: an exact zero is structural in hmmlearn (the M-step keeps
it zero), so it is left out and stays zero. Parameters whose letter is not
in the family's ``params`` are fixed: they are left out too and
``from_vector`` takes them from ``like`` unchanged. The emission families
(:mod:`dem.families.gaussian_hmm`, :mod:`dem.families.categorical_hmm`,
:mod:`dem.families.gmm_hmm`) build their ``to_vector``/``from_vector`` from
these.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The smallest probability ``from_vector`` returns where ``like`` is positive: an
#: extrapolation may push a log-ratio below exp's range, and an exact zero there
#: would forbid paths (a DataError in the E-step) instead of merely scoring low.
_FLOOR = np.finfo(np.float64).tiny


def _simplex_to_vector(p: np.ndarray) -> np.ndarray:
    pos = np.flatnonzero(p > 0)
    if len(pos) <= 1:
        return np.empty(0)
    lp = np.log(p[pos])
    return lp[:-1] - lp[-1]


def _simplex_from_vector(z: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, int]:
    pos = np.flatnonzero(like > 0)
    out = np.zeros_like(like, dtype=np.float64)
    if len(pos) == 0:
        return out, 0
    k = len(pos) - 1
    full = np.concatenate([z[:k], [0.0]])
    e = np.exp(full - full.max())
    out[pos] = np.maximum(e / e.sum(), _FLOOR)
    return out, k


def simplex_rows_to_vector(rows: np.ndarray) -> np.ndarray:
    """Each row of a (…, K) array of probabilities as log-ratios over its nonzero entries."""
    rows = np.asarray(rows, dtype=np.float64)
    return np.concatenate([np.empty(0), *[_simplex_to_vector(r) for r in rows.reshape(-1, rows.shape[-1])]])


def simplex_rows_from_vector(vector: np.ndarray, like: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`simplex_rows_to_vector`: ``(rows, rest of the vector)``; zeros of ``like`` stay."""
    like = np.asarray(like, dtype=np.float64)
    v = np.asarray(vector, dtype=np.float64)
    rows, used = [], 0
    for row in like.reshape(-1, like.shape[-1]):
        r, k = _simplex_from_vector(v[used:], row)
        rows.append(r)
        used += k
    return np.stack(rows).reshape(like.shape), v[used:]


def transitions_to_vector(params: Any, letters: str = "st") -> np.ndarray:
    """``startprob`` (if ``'s'`` in ``letters``) and ``transmat``'s rows (if ``'t'``) as log-ratios."""
    return np.concatenate([simplex_rows_to_vector(params.startprob[None]) if "s" in letters else np.empty(0),
                           simplex_rows_to_vector(params.transmat) if "t" in letters else np.empty(0)])


def transitions_from_vector(vector: np.ndarray, like: Any, letters: str = "st"
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(startprob, transmat, rest of the vector)``; zeros and fixed parts of ``like`` stay."""
    rest = np.asarray(vector, dtype=np.float64)
    startprob, transmat = like.startprob, like.transmat
    if "s" in letters:
        start, rest = simplex_rows_from_vector(rest, like.startprob[None])
        startprob = start[0]
    if "t" in letters:
        transmat, rest = simplex_rows_from_vector(rest, like.transmat)
    return startprob, transmat, rest
