"""Missingness patterns: the linear algebra behind the missing-data Gaussian mixture.

Rows are grouped by which coordinates are missing (a pattern); per pattern
the E-step needs the missing block of each component's precision, its
inverse (the conditional covariance) and log-determinant. These helpers
group rows, order them deterministically, invert many small SPD matrices at
once, and turn a block of incomplete rows into marginal log-densities and
conditional means (:func:`incomplete_block`; the identities are in
:mod:`dem.families.gmm_missing`'s docstring). Pure numpy; used by
:mod:`dem.families.gmm_missing` and :mod:`dem.families.missing_imputation`.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from dem.errors import DataError
from dem.families.gaussian_kernel import LOG_2PI as _LOG_2PI
from dem.families.gaussian_params import GMMParams, precisions_from_cholesky


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """What the incomplete rows of every block need from the parameters (float64)."""

    shift: np.ndarray            # (D,) mixture mean c: data and means are centred on it first
    centred_means: np.ndarray    # (K, D) μ_k − c
    log_weights: np.ndarray      # (K,)
    precisions: np.ndarray       # (K, D, D) full/tied; (K, D) diag/spherical
    variances: np.ndarray        # (K, D): diag/spherical variances, diagonal of Σ_k for full/tied
    log_det_cov: np.ndarray      # (K,) log det Σ_k
    diagonal: bool               # diag/spherical: no patterns needed


@dataclasses.dataclass(frozen=True)
class _PatternGroup:
    """Rows of a block whose patterns all have ``s`` missing coordinates."""

    rows: np.ndarray             # (n_s,) row indices within the block
    pattern: np.ndarray          # (n_s,) index of each row's pattern in ``missing_idx``
    missing_idx: np.ndarray      # (u_s, s) missing columns of each pattern, increasing
    cond_cov: np.ndarray         # (u_s, K, s, s) conditional covariance A⁻¹ = Λ_mm⁻¹


@dataclasses.dataclass(frozen=True)
class _BlockResult:
    """E-step quantities of one block of rows that each miss at least one coordinate."""

    log_prob: np.ndarray         # (K, n) log π_k + log N(x_o | μ_k,o, Σ_k,oo)
    dev: np.ndarray              # (K, n, D) x̂_k − μ_k: observed x − μ_k, missing E_k[x_m|x_o] − μ_k,m
    groups: list[_PatternGroup]  # full/tied only
    missing: np.ndarray          # (n, D) bool


def _row_blocks(n_components: int, n_features: int) -> int:
    # Temporaries are a few (K, rows, D) float64 arrays: keep each near 2 MB.
    return int(max(128, min(4096, (1 << 18) // max(1, n_components * n_features))))


def _pattern_keys(missing: np.ndarray) -> np.ndarray:
    """One sortable key per row identifying its mask: the packed bits.

    An unsigned integer up to 64 features (sorting integers is several times
    faster than sorting bytes), else the packed bytes as one opaque value.
    """
    packed = np.packbits(missing, axis=1, bitorder="little")
    width = packed.shape[1]
    if width <= 8:
        padded = np.zeros((packed.shape[0], 8), dtype=np.uint8)
        padded[:, :width] = packed
        return padded.view("<u8").ravel()
    packed = np.ascontiguousarray(packed)
    return packed.view(np.dtype((np.void, width))).ravel()


def pattern_order(missing: np.ndarray) -> np.ndarray:
    """Row order grouping equal missingness patterns, by number missing then pattern key.

    Deterministic (stable sorts on the mask alone), so the statistics are
    added in the same order on any cluster.
    """
    if missing.shape[0] == 0:
        return np.zeros(0, dtype=np.intp)
    keys = _pattern_keys(missing)
    n_missing = missing.sum(axis=1)
    if keys.dtype != np.dtype("<u8"):
        # Opaque byte keys: rank them first (np.lexsort takes numbers only).
        keys = np.unique(keys, return_inverse=True)[1].ravel()
    return np.lexsort((keys, n_missing))


def _spd_inverse(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse and log-determinant of a stack of small SPD matrices (..., s, s).

    The sweep operator (Gauss–Jordan without pivoting, stable on SPD
    matrices) vectorised across the stack: ``s`` steps of whole-array
    operations. LAPACK's batched routines cost about a microsecond of
    overhead per matrix, which dominates for the 1×1…6×6 blocks most rows
    have; larger blocks go to LAPACK.

    Raises
    ------
    numpy.linalg.LinAlgError
        If a pivot is not positive (the matrix is not positive definite).
    """
    s = A.shape[-1]
    if s > 6:
        # Past ~6×6 LAPACK's O(s³) kernels beat s whole-array passes (measured).
        chol = np.linalg.cholesky(A)
        return np.linalg.inv(A), 2.0 * np.log(np.diagonal(chol, axis1=-2, axis2=-1)).sum(axis=-1)
    A = np.array(A, dtype=np.float64, copy=True)
    log_det = np.zeros(A.shape[:-2])
    for k in range(s):
        d = A[..., k, k].copy()
        if not (d > 0).all():
            raise np.linalg.LinAlgError("matrix is not positive definite")
        log_det += np.log(d)
        col = A[..., :, k] / d[..., None]
        row = A[..., k, :].copy()
        A -= col[..., :, None] * row[..., None, :]
        A[..., :, k] = col
        A[..., k, :] = col
        A[..., k, k] = -1.0 / d
    # Sweeping every pivot leaves −A⁻¹.
    np.negative(A, out=A)
    return A, log_det


def _log_sum_exp(a: np.ndarray) -> np.ndarray:
    """log Σ_k exp(a_k) over axis 0 (scipy's version costs more than the E-step itself here)."""
    top = a.max(axis=0)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.log(np.exp(a - top).sum(axis=0)) + top


def _sum_by_pattern(values: np.ndarray, pattern: np.ndarray, n_patterns: int) -> np.ndarray:
    """(K, n) values summed over rows of the same pattern, (K, n_patterns)."""
    if n_patterns and pattern.size and np.all(pattern[1:] >= pattern[:-1]):
        # Rows come sorted by pattern (see pattern_order): contiguous sums.
        starts = np.flatnonzero(np.r_[True, pattern[1:] != pattern[:-1]])
        out = np.zeros((values.shape[0], n_patterns))
        out[:, pattern[starts]] = np.add.reduceat(values, starts, axis=1)
        return out
    out = np.zeros((values.shape[0], n_patterns))
    np.add.at(out, (slice(None), pattern), values)
    return out


def _raise_inf(X: np.ndarray, row_offset: int) -> None:
    bad = np.isinf(X)
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        raise DataError(
            f"X contains inf at row {row_offset + row}, feature {col} "
            "(only NaN marks a missing value)"
        )


def _checked_weights(sample_weight: np.ndarray | None, row_offset: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    w = np.asarray(sample_weight, dtype=np.float64)
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"sample weight at row {row_offset + i} is {w[i]!r}; weights must be finite and >= 0")
    return w


# -- blocks of incomplete rows ---------------------------------------------------


def prepare(params: GMMParams, covariance_type: str) -> _Prepared:
    """What the incomplete rows of every block need from ``params``."""
    ct = covariance_type
    K, D = params.means.shape
    shift = params.shift
    with np.errstate(divide="ignore"):
        log_weights = np.log(params.weights)
    pc = np.asarray(params.precisions_cholesky, dtype=np.float64)
    cov = np.asarray(params.covariances, dtype=np.float64)
    if ct in ("full", "tied"):
        prec = precisions_from_cholesky(pc, ct)
        if ct == "tied":
            prec = np.broadcast_to(prec, (K, D, D))
            pc = np.broadcast_to(pc, (K, D, D))
            cov = np.broadcast_to(cov, (K, D, D))
        # log det Σ = −2 Σ log diag(U), U the precision's Cholesky factor.
        log_det = -2.0 * np.log(np.diagonal(pc, axis1=1, axis2=2)).sum(axis=1)
        variances = np.diagonal(cov, axis1=1, axis2=2)
        return _Prepared(shift, params.means - shift, log_weights, np.ascontiguousarray(prec),
                         np.ascontiguousarray(variances), log_det, False)
    var = cov if ct == "diag" else np.repeat(cov[:, None], D, axis=1)
    return _Prepared(shift, params.means - shift, log_weights, 1.0 / var, var,
                     np.log(var).sum(axis=1), True)


def incomplete_block(prep: _Prepared, Xb: np.ndarray, Mb: np.ndarray) -> _BlockResult:
    """Marginal log-densities and conditional means of rows ``Xb`` (float64, each with NaN)."""
    n, D = Xb.shape
    # x − μ_k as (x − c) − (μ_k − c): rounding grows only linearly with |μ_k − c|.
    X0c = np.where(Mb, 0.0, Xb - prep.shift)
    dev = X0c[None, :, :] - prep.centred_means[:, None, :]
    dev *= ~Mb                           # d_k: x − μ_k, 0 at missing coordinates
    n_obs = (D - Mb.sum(axis=1)).astype(np.float64)
    if prep.diagonal:
        maha = np.einsum("knd,knd,kd->kn", dev, dev, prep.precisions)
        log_det = np.log(prep.variances) @ (~Mb).T.astype(np.float64)   # (K, n) log det Σ_oo
        log_prob = prep.log_weights[:, None] - 0.5 * (n_obs * _LOG_2PI + log_det + maha)
        return _BlockResult(log_prob, dev, [], Mb)

    prec = prep.precisions
    V = np.matmul(dev, prec)             # Λ_k d_k (Λ symmetric)
    maha = np.einsum("knd,knd->kn", dev, V)
    log_det = np.repeat(prep.log_det_cov[:, None], n, axis=1)
    groups = []
    _, first, inverse = np.unique(_pattern_keys(Mb), return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    pat_masks = Mb[first]
    pat_s = pat_masks.sum(axis=1)
    row_s = pat_s[inverse]
    local = np.empty(len(first), dtype=np.intp)
    for s in np.unique(pat_s):
        s = int(s)
        pats = np.flatnonzero(pat_s == s)
        local[pats] = np.arange(len(pats))
        midx = np.nonzero(pat_masks[pats])[1].reshape(len(pats), s)
        # A = Λ_mm for every (pattern, component): one batched factorisation.
        A = prec[:, midx[:, :, None], midx[:, None, :]].transpose(1, 0, 2, 3)
        cond_cov, log_det_A = _spd_inverse(A)
        rows = np.flatnonzero(row_s == s)
        p = local[inverse[rows]]
        cols = midx[p]
        b = V[:, rows[:, None], cols]                      # (K, n_s, s)
        cv = np.einsum("nkij,knj->kni", cond_cov[p], b)    # A⁻¹ b
        maha[:, rows] -= (b * cv).sum(axis=2)
        log_det[:, rows] += log_det_A[p].T
        dev[:, rows[:, None], cols] = -cv                  # E[x_m | x_o] − μ_m = −A⁻¹ b
        groups.append(_PatternGroup(rows, p, midx, cond_cov))
    np.maximum(maha, 0.0, out=maha)
    log_prob = prep.log_weights[:, None] - 0.5 * (n_obs * _LOG_2PI + log_det + maha)
    return _BlockResult(log_prob, dev, groups, Mb)


def incomplete_blocks(X: np.ndarray, missing: np.ndarray, rows: np.ndarray, n_components: int,
                      diagonal: bool) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(row indices, float64 rows, mask)`` per block of ``rows``, grouped by pattern unless ``diagonal``."""
    if rows.size == 0:
        return
    if not diagonal:
        rows = rows[pattern_order(missing[rows])]
    step = _row_blocks(n_components, X.shape[1])
    for a in range(0, rows.size, step):
        idx = rows[a : a + step]
        yield idx, np.asarray(X[idx], dtype=np.float64), missing[idx]
