"""The E-step kernel of Gaussian mixtures: densities and moments over row blocks.

Shared by every family whose components are Gaussians with one of the four
covariance structures (the Gaussian mixture, its annealed and stochastic
variants, the variational Bayesian mixture). Pure numpy.

Conventions follow scikit-learn: ``precisions_cholesky`` is the upper
triangular ``U`` with ``precision = U Uᵀ`` (full, tied), or ``1/σ``
(diag, spherical).

Numerical choices
-----------------
* Blocks are processed transposed, (features × rows), so products are GEMMs
  over the block's rows, on cache-sized blocks (temporaries are
  ``block_rows × K × D`` at most, never ``N × K × D``).
* Mahalanobis terms whiten with each component's own centring,
  ``‖U_kᵀ(x − c) − U_kᵀ(m_k − c)‖²`` with ``c`` the mixture's mean (a shift
  every worker knows), so rounding grows only linearly with a component's
  distance from ``c``.
* Moments are accumulated about the components' means (``Σ r (x − m_k)``
  and ``Σ r (x − m_k)(x − m_k)ᵀ``), never as raw ``Σ r x xᵀ``; sums across
  blocks are float64 whatever the data's dtype.
* float32 data is processed in float32 inside a block (SGEMM runs at twice
  the DGEMM rate) and every block's sums are added in float64.
* Block buffers are allocated once per partition and reused: fresh
  multi-megabyte temporaries per block cost a page fault per 4 KiB each
  time (glibc returns them to the OS, and Dask's nanny sets
  ``MALLOC_TRIM_THRESHOLD_`` low).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import numpy as np

from dem.data.record import Partition
from dem.data.row_random import row_uniforms
from dem.families.block_buffers import reused
from dem.errors import DataError

COVARIANCE_TYPES: tuple[str, ...] = ("full", "tied", "diag", "spherical")
LOG_2PI = math.log(2.0 * math.pi)


def block_rows(n_components: int, n_features: int) -> int:
    """Rows per block: keeps the (K·D × block) temporaries near 2 MB."""
    return int(max(256, min(8192, (1 << 18) // max(1, n_components * n_features))))


def second_moment_shape(covariance_type: str, n_components: int, n_features: int) -> tuple[int, ...]:
    K, D = n_components, n_features
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


def log_det_cholesky(precisions_cholesky: np.ndarray, covariance_type: str, n_features: int) -> Any:
    """``log det U_k`` of each component (half the log-determinant of its precision)."""
    if covariance_type == "full":
        return np.log(np.diagonal(precisions_cholesky, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return float(np.log(np.diag(precisions_cholesky)).sum())
    if covariance_type == "diag":
        return np.log(precisions_cholesky).sum(axis=1)
    return n_features * np.log(precisions_cholesky)


@dataclasses.dataclass(frozen=True)
class Components:
    """K Gaussian components ready for the kernel.

    ``const[k]`` is everything of component k's weighted log-density that
    does not depend on x: ``log w_k + log det U_k − D/2 log 2π`` for a
    mixture; a variational family passes expected values instead.
    """

    covariance_type: str
    means: np.ndarray
    precisions_cholesky: np.ndarray
    const: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])


def mixture_components(weights: np.ndarray, means: np.ndarray, precisions_cholesky: np.ndarray,
                       covariance_type: str) -> Components:
    """The components of a Gaussian mixture with these parameters."""
    D = means.shape[1]
    with np.errstate(divide="ignore"):
        log_w = np.log(weights)
    const = log_w + log_det_cholesky(precisions_cholesky, covariance_type, D) - 0.5 * D * LOG_2PI
    return Components(covariance_type, means, precisions_cholesky, np.asarray(const, dtype=np.float64))


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Per-parameter quantities every block reuses (features × rows layout)."""

    covariance_type: str
    shift: np.ndarray          # (D, 1) overall centre c, so large offsets in X cancel first
    centred_means: np.ndarray  # (K, D) m_k − c
    const: np.ndarray          # (K, 1)
    whiten: np.ndarray         # full: (K·D, D) stacked U_kᵀ; tied: (D, D) Uᵀ; diag: (K, D); spherical: (K,)
    offset: np.ndarray         # full: (K·D, 1) U_kᵀ(m_k − c); tied/diag: (K, D) in whitened space
    rows: int
    dtype: np.dtype

    @property
    def n_components(self) -> int:
        return int(self.centred_means.shape[0])

    def astype(self, dtype: np.dtype) -> "Prepared":
        if dtype == self.dtype:
            return self
        cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return dataclasses.replace(self, shift=cast(self.shift), centred_means=cast(self.centred_means),
                                   const=cast(self.const), whiten=cast(self.whiten), offset=cast(self.offset),
                                   dtype=np.dtype(dtype))


def prepare(comps: Components, shift: np.ndarray) -> Prepared:
    """Whitening matrices and offsets for evaluating ``comps`` on rows centred on ``shift``."""
    ct = comps.covariance_type
    K, D = comps.means.shape
    cm = comps.means - shift
    pc = comps.precisions_cholesky
    if ct == "full":
        whiten = np.ascontiguousarray(pc.transpose(0, 2, 1).reshape(K * D, D))
        offset = np.einsum("kji,kj->ki", pc, cm).reshape(K * D, 1)
    elif ct == "tied":
        whiten = np.ascontiguousarray(pc.T)
        offset = cm @ pc
    elif ct == "diag":
        whiten = pc
        offset = cm * pc
    else:
        whiten = pc
        offset = np.zeros((K, 0))
    return Prepared(ct, shift[:, None], cm, np.asarray(comps.const, float)[:, None], whiten, offset,
                    block_rows(K, D), np.dtype(np.float64))


def work_dtype(X: Any) -> np.dtype:
    """float32 for float32 data (SGEMM runs at twice the DGEMM rate), else float64."""
    return np.dtype(np.float32) if np.asarray(X[:0]).dtype == np.float32 else np.dtype(np.float64)


class Workspace:
    """Block buffers an E-step reuses from block to block."""

    def __init__(self, n_components: int, n_features: int, rows: int, dtype: np.dtype) -> None:
        K, D = n_components, n_features
        self.XcT = np.empty((D, rows), dtype)
        self.Y = np.empty((K * D, rows), dtype)  # full: whitened rows; else (K, D, rows) below
        self.Z = self.Y.reshape(K, D, rows)
        self.Yt = np.empty((D, rows), dtype)
        self.lp = np.empty((K, rows), dtype)
        self.Dk = np.empty((D, rows), dtype)
        self.sqrt_r = np.empty((K, rows), dtype)


def workspaces(prep: Prepared, n: int, n_features: int) -> dict[int, Workspace]:
    """One workspace per block size a partition of ``n`` rows needs."""
    sizes = {min(prep.rows, n)}
    if n % prep.rows and n > prep.rows:
        sizes.add(n % prep.rows)
    K, dtype = prep.n_components, prep.dtype
    return {m: reused(("gaussian_kernel", K, n_features, m, dtype.str), lambda m=m: Workspace(K, n_features, m, dtype))
            for m in sizes}


def centred_block(prep: Prepared, X: Any, a: int, b: int, ws: Workspace | None = None) -> np.ndarray:
    """Rows a:b of X, centred on the shift, as a contiguous (D, rows) array of prep.dtype."""
    block = np.asarray(X[a:b])
    if ws is None:
        return np.ascontiguousarray(block.astype(prep.dtype, copy=False).T - prep.shift)
    return np.subtract(block.T, prep.shift, out=ws.XcT, casting="unsafe")


def log_prob_T(prep: Prepared, XcT: np.ndarray, ws: Workspace | None = None) -> np.ndarray:
    """(K, rows) weighted log-densities ``const_k − ½‖U_kᵀ(x − m_k)‖²``."""
    ct = prep.covariance_type
    K = prep.n_components
    D, B = XcT.shape
    if ws is None:
        ws = Workspace(K, D, B, XcT.dtype)
    lp = ws.lp
    with np.errstate(invalid="ignore", over="ignore"):  # inf rows are reported by the caller
        if ct == "full":
            Y = np.matmul(prep.whiten, XcT, out=ws.Y)
            Y -= prep.offset
            np.square(Y, out=Y)
            np.sum(ws.Z, axis=1, out=lp)
        else:
            Z = ws.Z
            if ct == "tied":
                np.subtract(np.matmul(prep.whiten, XcT, out=ws.Yt)[None, :, :], prep.offset[:, :, None], out=Z)
            elif ct == "diag":
                np.multiply(prep.whiten[:, :, None], XcT[None, :, :], out=Z)
                Z -= prep.offset[:, :, None]
            else:
                np.subtract(XcT[None, :, :], prep.centred_means[:, :, None], out=Z)
            np.square(Z, out=Z)
            np.sum(Z, axis=1, out=lp)
            if ct == "spherical":
                lp *= (prep.whiten**2)[:, None]
        lp *= -0.5
        lp += prep.const
    return lp


def new_accumulator(covariance_type: str, n_components: int, n_features: int) -> dict[str, Any]:
    """Zeroed float64 sums of one E-step."""
    K, D = n_components, n_features
    return {"n_rows": 0.0, "weight_sum": 0.0, "log_likelihood": 0.0, "resp_sum": np.zeros(K),
            "first_moment": np.zeros((K, D)),
            "second_moment": np.zeros(second_moment_shape(covariance_type, K, D)),
            "resp_entropy": 0.0}


def accumulate_moments(acc: dict, covariance_type: str, XcT: np.ndarray, RT: np.ndarray,
                       centred_means: np.ndarray, w: np.ndarray | None, ws: Workspace | None = None) -> None:
    """Add one block's moments about the component means.

    ``RT`` (K, rows) are the weighted responsibilities; ``XcT`` the block
    centred on the overall shift, ``centred_means`` the means on the same
    shift, so ``XcT − centred_means[k]`` is exactly ``x − m_k``.
    """
    ct = covariance_type
    K = RT.shape[0]
    acc["n_rows"] += XcT.shape[1]
    acc["weight_sum"] += XcT.shape[1] if w is None else w.sum()
    nk = RT.sum(axis=1, dtype=np.float64)
    acc["resp_sum"] += nk
    # Σ r (x − m_k) = Σ r (x − c) − n_k (m_k − c): rounding grows only linearly in |m_k − c|.
    acc["first_moment"] += RT @ XcT.T - nk[:, None] * centred_means
    S2 = acc["second_moment"]
    if ws is None:
        ws = Workspace(K, XcT.shape[0], XcT.shape[1], XcT.dtype)
    if ct in ("full", "tied"):
        sqrt_r = np.sqrt(RT, out=ws.sqrt_r)
        Dk = ws.Dk
        for k in range(K):
            np.subtract(XcT, centred_means[k][:, None], out=Dk)
            Dk *= sqrt_r[k]
            # Z Zᵀ with Z = √r (x − m_k): numpy hands A @ A.T to SYRK.
            if ct == "full":
                S2[k] += Dk @ Dk.T
            else:
                S2 += Dk @ Dk.T
    else:
        Z = np.subtract(XcT[None, :, :], centred_means[:, :, None].astype(XcT.dtype, copy=False), out=ws.Z)
        np.square(Z, out=Z)
        if ct == "diag":
            S2 += np.einsum("kdb,kb->kd", Z, RT)
        else:
            S2 += np.einsum("kb,kb->k", Z.sum(axis=1), RT)


def data_centre(X: Any, dtype: np.dtype, max_rows: int = 1024) -> np.ndarray:
    """A centre for the rows of X that depends on the data alone: the mean of a row sample.

    Up to ``max_rows`` evenly spaced rows with finite values are averaged in
    float64. Each coordinate is rounded to the spacing of ``dtype`` at the
    sample's largest magnitude in that column, so subtracting it from a row
    in the working precision is exact for the rows that set the scale (a
    centre with finer bits would shift every far row by the same rounding);
    the result is exactly representable in ``dtype``. Members evaluated
    together therefore share the centre a lone fit uses.
    """
    n = X.shape[0]
    sample = np.asarray(X[:: max(1, n // max_rows)], dtype=np.float64)
    finite = np.isfinite(sample).all(axis=1)
    if not finite.any():
        return np.zeros(X.shape[1])
    sample = sample[finite]
    spacing = np.spacing(np.abs(sample).max(axis=0).astype(dtype)).astype(np.float64)
    return np.round(sample.mean(axis=0) / spacing) * spacing


def e_step_sums(comps: Components, part: Partition, *, shift: np.ndarray | None = None, beta: float = 1.0,
                sample_key: tuple[int, ...] | None = None, entropy: bool = False) -> dict[str, Any]:
    """Float64 sums of one partition: log-likelihood, responsibilities and moments.

    Parameters
    ----------
    comps : the components, with their constant terms
    part : the partition (``X``, optional ``weights``)
    shift : (D,) centre the rows are taken about first; None (the default)
        takes :func:`data_centre` of the partition, which does not depend on
        the parameters, so several members stack bit for bit
    beta : inverse temperature; responsibilities ``softmax(β · log p)`` and the
        per-row objective ``(1/β) log Σ_k exp(β log p_k)`` (β = 1: EM)
    sample_key : when given, each row's label is drawn from its responsibilities
        with uniforms keyed by (key, global row), and the moments are those of
        the one-hot labels (stochastic EM)
    entropy : also sum ``Σ w r log r`` (variational bounds need it)

    Raises
    ------
    DataError
        NaN or inf in X (naming the global row and feature), or a negative or
        non-finite sample weight.
    """
    return e_step_sums_members([comps], part, shift=shift, beta=beta, sample_key=sample_key,
                               entropy=entropy)[0]


def e_step_sums_members(comps_list: list[Components], part: Partition, *, shift: np.ndarray | None = None,
                        beta: float = 1.0, sample_key: tuple[int, ...] | None = None,
                        entropy: bool = False) -> list[dict[str, Any]]:
    """:func:`e_step_sums` of several members (same covariance type and K) in one read.

    Full covariances are evaluated as one stack: every member's components
    are rows of one wider product (:mod:`dem.families.gaussian_stack`), and
    each member's sums equal bit for bit those of evaluating it alone. Other
    covariance types are evaluated member by member.
    """
    if not comps_list:
        return []
    X = part.X
    dtype = work_dtype(X)
    centre = data_centre(X, dtype) if shift is None else np.asarray(shift, dtype=np.float64)
    if comps_list[0].covariance_type == "full":
        from dem.families.gaussian_stack import stacked_sums  # (it builds on this module)

        return stacked_sums(comps_list, part, centre, dtype, beta=beta, sample_key=sample_key,
                            entropy=entropy)
    return [_whitened_sums(c, part, centre, beta=beta, sample_key=sample_key, entropy=entropy)
            for c in comps_list]


def _whitened_sums(comps: Components, part: Partition, shift: np.ndarray, *, beta: float,
                   sample_key: tuple[int, ...] | None, entropy: bool) -> dict[str, Any]:
    """One member's sums by whitening (tied, diag and spherical covariances)."""
    X, row_offset = part.X, part.start
    n, D = X.shape
    prep = prepare(comps, shift).astype(work_dtype(X))
    ct = comps.covariance_type
    acc = new_accumulator(ct, comps.n_components, D)
    spaces = workspaces(prep, n, D)
    for a in range(0, n, prep.rows):
        ws = spaces[min(prep.rows, n - a)]
        XcT = centred_block(prep, X, a, a + prep.rows, ws)
        lp = log_prob_T(prep, XcT, ws)
        lse, total = exp_normalised(lp, beta, axis=0)
        if not np.isfinite(lse).all():
            raise_non_finite(X, a, lse, row_offset)
        lp /= total  # responsibilities, (K, rows)
        if entropy:
            plogp = resp_entropy(lp)
        if sample_key is not None:
            lp = draw_labels(lp, sample_key, row_offset + a)
        w = None
        if part.weights is None:
            acc["log_likelihood"] += lse.sum()
            if entropy:
                acc["resp_entropy"] += plogp.sum()
        else:
            w = checked_weights(part.weights, a, a + prep.rows, row_offset)
            acc["log_likelihood"] += lse @ w
            if entropy:
                acc["resp_entropy"] += plogp @ w
            lp *= w.astype(lp.dtype, copy=False)
        accumulate_moments(acc, ct, XcT, lp, prep.centred_means, w, ws)
    return acc


def exp_normalised(lp: np.ndarray, beta: float, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """``exp(β·lp − max)`` over the components' ``axis``, in place; returns ``(lse, total)``.

    ``lse`` is each row's log-sum-exp (the tempered free energy ``(1/β)·log Σ_k
    exp(β·lp_k)`` when β ≠ 1), in float64; ``total`` the sum that turns ``lp``
    into responsibilities, which the caller divides by once it has checked
    that ``lse`` is finite.
    """
    if beta != 1.0:
        lp *= beta
    top = lp.max(axis=axis)
    lp -= np.expand_dims(top, axis)
    # No term is left to become a subnormal number. On Intel CPUs a subnormal
    # result of exp, or a subnormal operand of the moments' GEMM, costs a
    # microcode assist per element: float32 W1, whose far components give
    # responsibilities under 1e-38, ran 9x slower than float64. Terms below the
    # floor become exact zeros (as exp's underflow made them before, so a
    # component's rows stay exactly its own), and the rest lose exp(floor),
    # about 1e-29 in float32 and 1e-298 in float64. Vectorised passes: writing
    # the zeros through a mask costs more than exp where many terms are small.
    floor = subnormal_floor(lp.dtype, lp.shape[axis])
    if lp.size and lp.min() < floor:
        np.maximum(lp, floor, out=lp)
        np.exp(lp, out=lp)
        lp -= _exp_floor(lp.dtype.str, lp.shape[axis])  # exact zeros where raised to the floor
        np.maximum(lp, 0.0, out=lp)
    else:
        np.exp(lp, out=lp)
    total = lp.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        lse = np.log(total, dtype=np.float64) + top
        if beta != 1.0:
            lse /= beta  # the tempered free energy per row
    return lse, total


def subnormal_floor(dtype: Any, n_terms: int) -> Any:
    """The least log-ratio of a term to its row's largest that :func:`exp_normalised` keeps.

    ``exp`` of it is ``tiny · n_terms · 2**24`` (``tiny`` the dtype's smallest
    normal number): divided by the row's total (at most ``n_terms``) and
    scaled by a sample weight of at least ``2**-24``, a term stays normal.
    """
    return _subnormal_floor(np.dtype(dtype).str, int(n_terms))


@functools.lru_cache(maxsize=None)
def _subnormal_floor(dtype: str, n_terms: int) -> Any:
    value = math.log(float(np.finfo(dtype).tiny)) + math.log(max(1, n_terms)) + 24 * math.log(2.0)
    return np.dtype(dtype).type(value)


@functools.lru_cache(maxsize=None)
def _exp_floor(dtype: str, n_terms: int) -> Any:
    # Through the same vectorised loop as a block's exp, so the two agree to the bit.
    return np.exp(np.full(64, _subnormal_floor(dtype, n_terms), dtype=dtype))[0]


def resp_entropy(resp: np.ndarray) -> np.ndarray:
    """``Σ_k r log r`` of each row (column) of responsibilities, in float64."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(resp > 0, resp * np.log(resp, dtype=np.float64), 0.0).sum(axis=-2)


def draw_labels(resp: np.ndarray, key: tuple[int, ...], first_row: int) -> np.ndarray:
    """One-hot labels (K, rows) drawn from responsibilities with row-keyed uniforms."""
    K, m = resp.shape
    u = row_uniforms(key, first_row, m).astype(resp.dtype)
    cdf = np.cumsum(resp, axis=0)
    label = np.minimum((cdf < u * cdf[-1]).sum(axis=0), K - 1)
    out = np.zeros_like(resp)
    out[label, np.arange(m)] = 1.0
    return out


def checked_weights(sample_weight: np.ndarray, a: int, b: int, row_offset: int) -> np.ndarray:
    """Rows a:b of the weights as float64, refusing negative or non-finite values."""
    w = np.asarray(sample_weight[a:b], dtype=np.float64)
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "negative" if w[i] < 0 else "not finite"
        raise DataError(f"sample_weight is {what} at row {row_offset + a + i} ({float(w[i])})")
    return w


def raise_non_finite(X: Any, a: int, values: np.ndarray, row_offset: int) -> None:
    """A DataError naming the first row of X[a:] whose value in ``values`` is not finite."""
    bad = int(np.flatnonzero(~np.isfinite(values))[0])
    row = np.asarray(X[a + bad], dtype=np.float64)
    global_row = row_offset + a + bad
    if np.isnan(row).any():
        col = int(np.flatnonzero(np.isnan(row))[0])
        raise DataError(f"X contains NaN at row {global_row}, feature {col}")
    if not np.isfinite(row).all():
        col = int(np.flatnonzero(~np.isfinite(row))[0])
        raise DataError(f"X contains inf at row {global_row}, feature {col}")
    raise DataError(
        f"the log-density of row {global_row} is not finite (values too large for "
        f"float64?); scale the input data"
    )


def weighted_log_prob(comps: Components, X: Any, shift: np.ndarray) -> np.ndarray:
    """``const_k − ½ Mahalanobis²`` for every row and component, (n, K), in float64."""
    prep = prepare(comps, shift)
    out = np.empty((X.shape[0], comps.n_components))
    for a in range(0, X.shape[0], prep.rows):
        out[a: a + prep.rows] = log_prob_T(prep, centred_block(prep, X, a, a + prep.rows)).T.copy()
    return out
