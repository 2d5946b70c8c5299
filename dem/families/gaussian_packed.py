"""The expanded Mahalanobis form over packed outer products (full covariance).

For rows centred on a point ``c`` (``x = row − c``) and a component with
precision ``Λ = U Uᵀ`` and centred mean ``μ = m − c``,

    −½ (x − μ)ᵀ Λ (x − μ) + const = −½ xᵀΛx + μᵀΛx + (const − ½ μᵀΛμ),

which is one dot product of a component's coefficient row with the column
``g(x) = [x_i x_j (i ≤ j), x, 1]`` of ``P + D + 1`` numbers (``P =
D(D+1)/2``). A block of rows becomes one matrix ``G`` (columns ``g(x)``);
all components' log-densities are one GEMM ``C @ G``, and their moments
about ``c`` another, ``G @ Rᵀ``: the packed second moments, the first
moments and the responsibilities together. That is ``4·K·(P + D)`` flops a
row against ``4·K·D²`` for whitening and per-component moments, and members
evaluated together stack their coefficient rows into one wider product.

The price is cancellation: ``xᵀΛx`` and ``μᵀΛμ`` are of size
``‖μ‖²/σ_min²`` while their difference is of size ``D``, so the form loses
about ``eps·(‖m − c‖ + √tr Σ)²/σ_min²`` relative to a whitened evaluation.
:func:`expanded_components` computes that bound per component and admits
the form only where it stays below :func:`tolerance` (half the working
precision's digits); the other components take the whitened path.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any, Callable

import numpy as np


def packed_size(n_features: int) -> int:
    """Number of distinct products ``x_i x_j`` (i ≤ j)."""
    return n_features * (n_features + 1) // 2


@functools.lru_cache(maxsize=64)
def upper_indices(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.triu_indices(n_features)``, the packed order, made once per size (read-only).

    Building them costs more than the rest of a small partition's E-step.
    """
    iu = np.triu_indices(n_features)
    for a in iu:
        a.setflags(write=False)
    return iu


def tolerance(dtype: np.dtype) -> float:
    """Largest rounding bound at which a component may use the expanded form: √eps.

    The expanded form then keeps at least half the working precision's
    digits (8 in float64, 3.5 in float32), which is below every accuracy
    dem promises for that precision.
    """
    return float(np.sqrt(np.finfo(dtype).eps))


def rounding_bound(centred_means: np.ndarray, precisions_cholesky: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``eps·(‖m_k − c‖ + √tr Σ_k)² / σ_min,k²`` for each component, (K,).

    ``‖m_k − c‖`` is how far the component sits from the centre the rows are
    taken about, ``√tr Σ_k`` how far its rows spread around its mean, and
    ``1/σ_min² = ‖U_k‖₂²`` the largest precision eigenvalue: the terms the
    expanded form cancels are ``(distance / σ_min)²`` in size.
    """
    s = np.linalg.svd(precisions_cholesky, compute_uv=False)  # (K, D) singular values of U_k
    with np.errstate(divide="ignore"):
        spread = np.sqrt((1.0 / s**2).sum(axis=1))
    reach = np.linalg.norm(centred_means, axis=1) + spread
    return np.finfo(dtype).eps * reach**2 * s[:, 0] ** 2


def expanded_coefficients(centred_means: np.ndarray, precisions_cholesky: np.ndarray,
                          const: np.ndarray) -> np.ndarray:
    """(K, P + D + 1) float64 rows ``[−½Λ packed (off-diagonal doubled), Λμ, const − ½μᵀΛμ]``."""
    K, D = centred_means.shape
    iu = upper_indices(D)
    prec = np.einsum("kij,klj->kil", precisions_cholesky, precisions_cholesky)
    quad = prec[:, iu[0], iu[1]] * np.where(iu[0] == iu[1], -0.5, -1.0)
    lin = np.einsum("kij,kj->ki", prec, centred_means)
    w = np.einsum("kji,kj->ki", precisions_cholesky, centred_means)  # Uᵀμ: μᵀΛμ = ‖Uᵀμ‖² ≥ 0
    const = np.asarray(const, dtype=np.float64) - 0.5 * (w * w).sum(axis=1)
    return np.concatenate([quad, lin, const[:, None]], axis=1)


def second_moments_about_means(packed: np.ndarray, first: np.ndarray, resp_sum: np.ndarray,
                               centred_means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moments about the component means from float64 sums about the centre ``c``.

    ``packed`` (P, K) holds ``Σ r x_i x_j``, ``first`` (D, K) ``Σ r x``, with
    ``x = row − c``; returns ``Σ r (x − μ)`` (K, D) and ``Σ r (x − μ)(x −
    μ)ᵀ`` (K, D, D) with ``μ = m − c``.
    """
    K, D = centred_means.shape
    iu = upper_indices(D)
    S = np.empty((K, D, D))
    S[:, iu[0], iu[1]] = packed.T
    S[:, iu[1], iu[0]] = packed.T
    s1 = first.T
    mu = centred_means
    S -= s1[:, :, None] * mu[:, None, :] + mu[:, :, None] * s1[:, None, :]
    S += resp_sum[:, None, None] * mu[:, :, None] * mu[:, None, :]
    return s1 - resp_sum[:, None] * mu, S


def collapsed(packed: np.ndarray, second: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Which expanded components' rows turned out tighter than the bound assumed.

    The bound takes the spread from the parameters the E-step ran under; a
    component whose rows sit much closer together (one collapsing onto a
    point) has its moments, rounded to ``eps·Σ r ‖x − c‖²``, read against a
    far smaller covariance. ``packed`` (P, K) holds ``Σ r x_i x_j`` about the
    centre, ``second`` (K, D, D) the moments about the means; a component
    fails when ``eps·Σ r ‖x − c‖² > √eps · λ_min(second)``.
    """
    D = second.shape[-1]
    iu = upper_indices(D)
    spread_c = packed[iu[0] == iu[1]].sum(axis=0)  # Σ r ‖x − c‖²
    lam = np.linalg.eigvalsh(second)[:, 0]
    return (spread_c > 0) & (np.finfo(dtype).eps * spread_c > tolerance(dtype) * np.maximum(lam, 0.0))


# -- filling G ---------------------------------------------------------------------


def _pack_numpy(block: np.ndarray, centre: np.ndarray, G: np.ndarray) -> None:
    """Columns ``[x_i x_j (i ≤ j), x, 1]`` of ``x = row − centre`` into G, row by row of G."""
    B, D = block.shape
    P = packed_size(D)
    Xc = G[P:P + D]
    np.subtract(block.T, centre[:, None], out=Xc, casting="unsafe")
    G[P + D] = 1.0
    o = 0
    for i in range(D):
        np.multiply(Xc[i], Xc[i:], out=G[o:o + D - i])
        o += D - i


def _pack_loops(block: Any, centre: Any, G: Any) -> None:  # pragma: no cover - compiled by numba
    # The same values as _pack_numpy (one rounding per subtraction and product), in
    # one pass over the block instead of D + 2 numpy calls per block.
    B, D = block.shape
    P = D * (D + 1) // 2
    for i in range(D):
        row = G[P + i]
        c = centre[i]
        for b in range(B):
            row[b] = block[b, i] - c
    last = G[P + D]
    for b in range(B):
        last[b] = 1.0
    o = 0
    for i in range(D):
        xi = G[P + i]
        for j in range(i, D):
            xj = G[P + j]
            out = G[o]
            for b in range(B):
                out[b] = xi[b] * xj[b]
            o += 1


_JIT_LOCK = threading.Lock()
#: Compiled packing loops still to try, best first (cached, then uncached); empty: numpy.
_JIT: dict[str, list[Callable]] = {}


def _jit_candidates() -> list[Callable]:
    with _JIT_LOCK:
        if "pack" not in _JIT:
            try:
                import numba
            except ImportError:
                _JIT["pack"] = []
            else:
                opts = dict(nogil=True, boundscheck=False)
                # A read-only install has nowhere to cache: the same loop compiled per process.
                _JIT["pack"] = [numba.njit(cache=True, **opts)(_pack_loops), numba.njit(**opts)(_pack_loops)]
        return _JIT["pack"]


def pack_block(block: np.ndarray, centre: np.ndarray, G: np.ndarray) -> None:
    """Fill ``G`` (P + D + 1, rows) from ``block`` (rows, D) centred on ``centre`` (G's dtype).

    Uses a numba-compiled loop when numba is installed (one pass over the
    block), else numpy; both give the same bits.
    """
    if block.dtype == G.dtype and block.flags.c_contiguous:
        for fn in list(_jit_candidates()):
            try:
                fn(block, centre, G)
                return
            except Exception:  # a JIT that cannot compile or cache here: try the next, then numpy
                with _JIT_LOCK:
                    if fn in _JIT["pack"]:
                        _JIT["pack"].remove(fn)
    _pack_numpy(block, centre, G)


@dataclasses.dataclass(frozen=True)
class Split:
    """Which components of a stack take the expanded form.

    ``expanded`` and ``whitened`` index rows of the stack (member-major); the
    coefficients are those of the expanded rows, in that order.
    """

    expanded: np.ndarray
    whitened: np.ndarray
    coefficients: np.ndarray

    @property
    def all_expanded(self) -> bool:
        return self.whitened.size == 0


def split_components(centred_means: np.ndarray, precisions_cholesky: np.ndarray, const: np.ndarray,
                     dtype: np.dtype, refuse: np.ndarray | None = None) -> Split:
    """The components (rows of a stack) whose rounding bound admits the expanded form.

    ``refuse`` (boolean, one per row) sends components to the whitened path whatever their bound.
    """
    ok = rounding_bound(centred_means, precisions_cholesky, dtype) <= tolerance(dtype)
    if refuse is not None:
        ok &= ~refuse
    idx = np.flatnonzero(ok)
    coef = expanded_coefficients(centred_means[idx], precisions_cholesky[idx], np.asarray(const)[idx])
    return Split(idx, np.flatnonzero(~ok), np.ascontiguousarray(coef, dtype=dtype))
