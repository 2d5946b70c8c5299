"""The full-covariance E-step of one or several members over one partition.

Every member's components are rows of one stack. Per block of rows, one
matrix ``G`` of packed products (:mod:`dem.families.gaussian_packed`)
serves all of them: the log-densities of the components that pass the
rounding bound are one GEMM ``C @ G`` (C: their coefficient rows, all
members stacked), the others are whitened as in
:func:`dem.families.gaussian_kernel.log_prob_T`; the softmax runs on a
(members, K, rows) view; the moments of the expanded components are one
GEMM ``G @ Rᵀ`` and those of the whitened ones per-component SYRKs about
their means.

The centre depends on the data alone, but BLAS may round a member's rows
of a stacked product differently from a product of its own rows (OpenBLAS's
DGEMM does, in ``G @ Rᵀ``), so a member's sums equal its lone sums only to
rounding; the engine decides on the driver which members stack, so the
bits never depend on where a task ran.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dem.data.record import Partition
from dem.families import gaussian_kernel as gk
from dem.families.block_buffers import nbytes_of, reused
from dem.families.gaussian_packed import (
    collapsed, packed_size, pack_block, second_moments_about_means, split_components,
)

#: Bytes of the packed block ``G`` the block size aims at. Large enough that the
#: dozen numpy calls per block cost little against the arithmetic (the fixed cost
#: per call weighs most on float32, whose arithmetic is the faster), small enough
#: that G stays in the last-level cache between the two GEMMs that read it. The
#: float32 products are summed over a block's rows in float32, so the block's rows
#: also bound that sum's rounding (a test holds it to float32's promised accuracy).
BLOCK_BYTES = 1 << 22


def stack_block_rows(n_features: int, itemsize: int, n_stack: int) -> int:
    """Rows per block: the packed block and the stack's log-densities fill about BLOCK_BYTES."""
    width = packed_size(n_features) + n_features + 1 + n_stack
    return int(max(128, min(8192, BLOCK_BYTES // (width * itemsize))))


class _Space:
    """Buffers of one block size (kept per thread: :mod:`dem.families.block_buffers`)."""

    def __init__(self, n_columns: int, n_stack: int, n_expanded: int, n_whitened: int, n_features: int,
                 rows: int, dtype: np.dtype) -> None:
        self.G = np.empty((n_columns, rows), dtype)
        self.LP = np.empty((n_stack, rows), dtype)
        self.S = np.empty((n_columns - 1, n_expanded), dtype)
        self.wh = gk.Workspace(n_whitened, n_features, rows, dtype) if n_whitened else None
        self.nbytes = nbytes_of(self) + (nbytes_of(self.wh) if self.wh is not None else 0)


def stacked_sums(comps_list: list[gk.Components], part: Partition, centre: np.ndarray, dtype: np.dtype, *,
                 beta: float = 1.0, sample_key: tuple[int, ...] | None = None,
                 entropy: bool = False, refuse: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Each member's float64 sums over ``part`` (see :func:`gaussian_kernel.e_step_sums`).

    ``refuse`` (boolean, one per component of the stack) whitens those
    components whatever their bound. A component whose rows turn out far
    tighter than its parameters said (see :func:`gaussian_packed.collapsed`)
    is evaluated again whitened: the partition is read a second time.
    """
    X, start = part.X, part.start
    n, D = X.shape
    R, K = len(comps_list), comps_list[0].n_components
    if any(c.n_components != K or c.covariance_type != "full" for c in comps_list):
        raise ValueError("stacked members must all have full covariances and the same number of components")
    if sample_key is not None and R != 1:
        raise ValueError("sampled assignments are drawn one member at a time")
    means = np.concatenate([c.means for c in comps_list])
    pcs = np.concatenate([c.precisions_cholesky for c in comps_list])
    const = np.concatenate([np.asarray(c.const, dtype=np.float64) for c in comps_list])
    cm = means - centre
    split = split_components(cm, pcs, const, dtype, refuse)
    ie, iw = split.expanded, split.whitened
    prep_w = None
    if iw.size:
        prep_w = gk.prepare(gk.Components("full", means[iw], pcs[iw], const[iw]), centre).astype(dtype)
    P = packed_size(D)
    centre_w = centre.astype(dtype)
    rows = stack_block_rows(D, np.dtype(dtype).itemsize, R * K)
    spaces: dict[int, _Space] = {}

    log_lik = np.zeros(R)
    resp_ent = np.zeros(R)
    nk = np.zeros(R * K)
    about_c = np.zeros((P + D, ie.size))      # Σ r [x_i x_j, x] of the expanded rows, about c
    s1_w = np.zeros((iw.size, D))             # Σ r (x − m) of the whitened rows
    s2_w = np.zeros((iw.size, D, D))
    for a in range(0, n, rows):
        m = min(rows, n - a)
        ws = spaces.get(m)
        if ws is None:
            shape = (P + D + 1, R * K, ie.size, iw.size, D, m, np.dtype(dtype).str)
            ws = spaces[m] = reused(("gaussian_stack",) + shape, lambda: _Space(*shape[:-1], dtype))
        G, LP = ws.G, ws.LP
        pack_block(np.ascontiguousarray(X[a:a + m], dtype=dtype), centre_w, G)
        XcT = G[P:P + D]
        with np.errstate(invalid="ignore", over="ignore"):  # inf rows are reported below
            if split.all_expanded:
                np.matmul(split.coefficients, G, out=LP)
            else:
                if ie.size:
                    LP[ie] = split.coefficients @ G
                LP[iw] = gk.log_prob_T(prep_w, XcT, ws.wh)
        L3 = LP.reshape(R, K, m)
        lse, total = gk.exp_normalised(L3, beta, axis=1)
        if not np.isfinite(lse).all():
            bad = int(np.flatnonzero(~np.isfinite(lse).all(axis=1))[0])
            gk.raise_non_finite(X, a, lse[bad], start)
        L3 /= total[:, None, :]
        resp = LP
        if entropy:
            plogp = gk.resp_entropy(L3)
        if sample_key is not None:
            resp = gk.draw_labels(LP, sample_key, start + a)
        if part.weights is None:
            for r in range(R):
                log_lik[r] += lse[r].sum()
                if entropy:
                    resp_ent[r] += plogp[r].sum()
        else:
            w = gk.checked_weights(part.weights, a, a + m, start)
            for r in range(R):
                log_lik[r] += lse[r] @ w
                if entropy:
                    resp_ent[r] += plogp[r] @ w
            resp *= w.astype(dtype, copy=False)
        block_nk = resp.sum(axis=1, dtype=np.float64)
        nk += block_nk
        if ie.size:
            if split.all_expanded:
                about_c += np.matmul(G[:P + D], resp.T, out=ws.S)
            else:
                about_c += np.matmul(G[:P + D], resp[ie].T, out=ws.S)
        if iw.size:
            _whitened_moments(s1_w, s2_w, XcT, resp[iw], prep_w.centred_means, ws.wh)

    # One sum over the partition, whatever the block size (which depends on the stack).
    weight_sum = float(n) if part.weights is None else float(np.sum(part.weights, dtype=np.float64))
    first = np.zeros((R * K, D))
    second = np.zeros((R * K, D, D))
    if ie.size:
        first[ie], second[ie] = second_moments_about_means(about_c[:P], about_c[P:], nk[ie], cm[ie])
        bad = collapsed(about_c[:P], second[ie], dtype)
        if bad.any():
            again = np.zeros(R * K, dtype=bool) if refuse is None else refuse.copy()
            again[ie[bad]] = True
            return stacked_sums(comps_list, part, centre, dtype, beta=beta, sample_key=sample_key,
                                entropy=entropy, refuse=again)
    if iw.size:
        # The whitened moments are about the means rounded to the working precision.
        delta = prep_w.centred_means.astype(np.float64) - cm[iw]
        first[iw], second[iw] = about_exact_means(s1_w, s2_w, nk[iw], delta)
    return [{"n_rows": float(n), "weight_sum": float(weight_sum), "log_likelihood": float(log_lik[r]),
             "resp_sum": nk[r * K:(r + 1) * K].copy(), "first_moment": first[r * K:(r + 1) * K],
             "second_moment": second[r * K:(r + 1) * K], "resp_entropy": float(resp_ent[r])}
            for r in range(R)]


def _whitened_moments(s1: np.ndarray, s2: np.ndarray, XcT: np.ndarray, RT: np.ndarray,
                      centred_means: np.ndarray, ws: gk.Workspace) -> None:
    """Add one block's moments of the whitened components about their means.

    Both moments come from ``√r (x − m)``: a component far from the centre
    would lose ``eps·‖m − c‖/σ`` in ``Σ r (x − c) − n (m − c)``.
    """
    sqrt_r = np.sqrt(RT, out=ws.sqrt_r)
    Dk = ws.Dk
    for j in range(RT.shape[0]):
        np.subtract(XcT, centred_means[j][:, None], out=Dk)
        Dk *= sqrt_r[j]
        s1[j] += Dk @ sqrt_r[j]
        s2[j] += Dk @ Dk.T  # numpy hands A @ A.T to SYRK


def about_exact_means(s1: np.ndarray, s2: np.ndarray, nk: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Moments about ``m`` from moments about ``m + delta`` (the means rounded to the working precision)."""
    s2 = s2 + s1[:, :, None] * delta[:, None, :] + delta[:, :, None] * s1[:, None, :] \
        + nk[:, None, None] * delta[:, :, None] * delta[:, None, :]
    return s1 + nk[:, None] * delta, s2
