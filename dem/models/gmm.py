"""Gaussian mixture model: parameters, sufficient statistics, E-step, M-step, init.

Pure numpy; no Dask. Conventions follow scikit-learn's ``GaussianMixture``:
``precisions_cholesky`` is the upper-triangular ``U`` with ``precision = U Uᵀ``
(full, tied), or ``1/sqrt(variance)`` (diag, spherical).

Numerical choices (see DESIGN.md):

* Responsibilities are computed in log space with log-sum-exp.
* Mahalanobis terms use the Cholesky factor of the precision ("whitening"),
  with the data first centred on a shift every worker knows (the mixture's
  current overall mean), so large offsets in the data do not cancel away.
* Moments are accumulated about the E-step's component means (shifts every
  worker knows), never as raw ``Σ r x xᵀ``; sums across blocks and
  partitions are float64 whatever the data's dtype.
* float32 data is processed in float32 inside a block (at most
  ``_block_rows`` rows: SGEMM runs at twice the DGEMM rate) and every block's
  sums are added in float64; the float32 results agree with float64 on the
  same data to about 1e-6 relative.
* Work proceeds on cache-sized row blocks, so temporaries are
  ``block_rows × K × D`` at most, never ``N × K × D``.

Empty and collapsing components
-------------------------------
A component whose total responsibility falls below ``10·eps·Σw`` is *empty*:
it keeps its previous mean and covariance, and its weight is floored at
``10·eps`` (relative) so it can still win points back later. A warning is
emitted by the estimator. A component whose covariance (with ``reg_covar``
on the diagonal) is not positive definite has *collapsed*: dem raises
:class:`~dem.errors.CollapsedComponentError` naming the component, instead
of producing NaN.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from scipy import linalg
from scipy.special import logsumexp

from dem.errors import CollapsedComponentError, DataError
from dem.models.base import SufficientStats

CovarianceType = Literal["full", "tied", "diag", "spherical"]
COVARIANCE_TYPES: tuple[str, ...] = ("full", "tied", "diag", "spherical")

_EPS = np.finfo(np.float64).eps
_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class GMMParams:
    """Parameters of a Gaussian mixture (all float64).

    Attributes
    ----------
    weights : ndarray of shape (n_components,)
    means : ndarray of shape (n_components, n_features)
    covariances : ndarray
        (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical.
    precisions_cholesky : ndarray
        Same shapes as ``covariances``.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    @property
    def shift(self) -> np.ndarray:
        """Centre every worker subtracts from the data: the mixture's mean."""
        return self.weights @ self.means


@dataclasses.dataclass(frozen=True)
class GMMStats(SufficientStats):
    """Sufficient statistics of a Gaussian mixture, accumulated in float64.

    Moments are taken about the E-step's component means ``m_k`` (shifts
    every worker knows), never as raw ``Σ r x xᵀ``: ``first_moment[k] =
    Σ w r_k (x − m_k)``, and ``second_moment`` is ``Σ w r_k (x − m_k)(x −
    m_k)ᵀ`` per component (full, (K, D, D)), its diagonal (diag, (K, D)), its
    trace (spherical, (K,)), or its sum over components (tied, (D, D)). Near
    convergence ``first_moment`` is close to zero, so the M-step's
    correction ``S1 S1ᵀ / n_k`` cancels nothing.
    """

    resp_sum: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


def _block_rows(n_components: int, n_features: int) -> int:
    # Keep the (K·D × block) temporaries near 2 MB, so the squaring and
    # summing passes stay in cache while GEMMs still see long inner dimensions.
    return int(max(256, min(8192, (1 << 18) // max(1, n_components * n_features))))


def compute_precision_cholesky(
    covariances: np.ndarray, covariance_type: str
) -> np.ndarray:
    """Cholesky factors of the precision matrices, as scikit-learn defines them.

    Raises
    ------
    CollapsedComponentError
        If a covariance is not positive definite.
    """
    advice = (
        "increase reg_covar, decrease n_components, or scale the input data"
    )
    if covariance_type == "full":
        n_components, n_features, _ = covariances.shape
        out = np.empty_like(covariances)
        for k in range(n_components):
            try:
                chol = linalg.cholesky(covariances[k], lower=True)
            except linalg.LinAlgError:
                raise CollapsedComponentError(
                    f"component {k}'s covariance is not positive definite "
                    f"(it collapsed onto a lower-dimensional set); {advice}"
                ) from None
            out[k] = linalg.solve_triangular(
                chol, np.eye(n_features), lower=True
            ).T
        return out
    if covariance_type == "tied":
        try:
            chol = linalg.cholesky(covariances, lower=True)
        except linalg.LinAlgError:
            raise CollapsedComponentError(
                f"the tied covariance is not positive definite; {advice}"
            ) from None
        return linalg.solve_triangular(
            chol, np.eye(covariances.shape[0]), lower=True
        ).T
    bad = np.flatnonzero(
        ~(covariances > 0).reshape(covariances.shape[0], -1).all(axis=1)
    )
    if bad.size:
        raise CollapsedComponentError(
            f"component {int(bad[0])} has a zero or negative variance; {advice}"
        )
    return 1.0 / np.sqrt(covariances)


def precisions_from_cholesky(
    precisions_cholesky: np.ndarray, covariance_type: str
) -> np.ndarray:
    """Precision matrices from their Cholesky factors."""
    if covariance_type == "full":
        return np.einsum("kij,klj->kil", precisions_cholesky, precisions_cholesky)
    if covariance_type == "tied":
        return precisions_cholesky @ precisions_cholesky.T
    return precisions_cholesky**2


def covariances_from_precisions(
    precisions: np.ndarray, covariance_type: str
) -> np.ndarray:
    """Covariances from user-supplied precisions (inverse, via Cholesky)."""
    if covariance_type == "full":
        return np.stack([linalg.pinvh(p) for p in precisions])
    if covariance_type == "tied":
        return linalg.pinvh(precisions)
    return 1.0 / precisions


def _log_det_cholesky(
    precisions_cholesky: np.ndarray, covariance_type: str, n_features: int
) -> np.ndarray | float:
    if covariance_type == "full":
        return np.log(
            np.diagonal(precisions_cholesky, axis1=1, axis2=2)
        ).sum(axis=1)
    if covariance_type == "tied":
        return float(np.log(np.diag(precisions_cholesky)).sum())
    if covariance_type == "diag":
        return np.log(precisions_cholesky).sum(axis=1)
    return n_features * np.log(precisions_cholesky)


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """Per-parameter quantities every block of an E-step reuses (features × rows layout)."""

    shift: np.ndarray          # (D, 1) overall centre c, so large offsets in X cancel first
    centred_means: np.ndarray  # (K, D) m_k − c
    const: np.ndarray          # (K, 1) log w_k + log det U_k − D/2 log 2π
    whiten: np.ndarray         # full: (K·D, D) stacked U_kᵀ; tied: (D, D) Uᵀ; diag: (K, D); spherical: (K,)
    offset: np.ndarray         # full: (K·D, 1) U_kᵀ(m_k − c); tied/diag: (K, D) in whitened space
    rows: int                  # block size
    dtype: np.dtype            # float32 for float32 data, else float64

    def astype(self, dtype: np.dtype) -> "_Prepared":
        if dtype == self.dtype:
            return self
        cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return _Prepared(cast(self.shift), cast(self.centred_means), cast(self.const),
                         cast(self.whiten), cast(self.offset), self.rows, np.dtype(dtype))


class _Workspace:
    """Block buffers an E-step reuses from block to block.

    Fresh multi-megabyte temporaries per block cost a page fault per 4 KiB
    each time (glibc returns them to the OS; Dask's nanny even sets
    MALLOC_TRIM_THRESHOLD_ low): the benchmark measured 666k faults per
    iteration and half the E-step's time in the kernel. Buffers are sized
    once per partition (plus once for a shorter last block).
    """

    def __init__(self, n_components: int, n_features: int, rows: int, dtype: np.dtype) -> None:
        K, D = n_components, n_features
        self.XcT = np.empty((D, rows), dtype)
        self.Y = np.empty((K * D, rows), dtype)  # full: whitened rows; else (K, D, rows) below
        self.Z = self.Y.reshape(K, D, rows)
        self.Yt = np.empty((D, rows), dtype)
        self.lp = np.empty((K, rows), dtype)
        self.Dk = np.empty((D, rows), dtype)
        self.sqrt_r = np.empty((K, rows), dtype)


class MixturePosteriors:
    """Per-row outputs every mixture model derives from its ``weighted_log_prob``."""

    def score_samples(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """Log-likelihood of each row, (n,)."""
        return logsumexp(self.weighted_log_prob(params, X), axis=1)

    def predict_proba(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """Posterior responsibilities, (n, K)."""
        lp = self.weighted_log_prob(params, X)
        return np.exp(lp - logsumexp(lp, axis=1, keepdims=True))

    def predict(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """Most probable component of each row, (n,)."""
        return self.weighted_log_prob(params, X).argmax(axis=1)


@dataclasses.dataclass(frozen=True)
class GaussianMixtureModel(MixturePosteriors):
    """Gaussian mixture as pure functions over numpy blocks.

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance in the M-step.
    beta : float
        Inverse temperature of deterministic annealing (Ueda & Nakano, 1998):
        responsibilities are ``softmax(β·log(w_k N_k(x)))`` and the objective is
        the tempered free energy ``(1/β)·Σ log Σ_k (w_k N_k(x))^β``, which EM
        increases at fixed β. β = 1 is plain EM and the log-likelihood.

    Notes
    -----
    Blocks are processed transposed, (features × rows), so products are
    GEMMs over the block's rows. Mahalanobis terms are computed by whitening
    with each component's own centring, ``‖U_kᵀ(x − c) − U_kᵀ(m_k − c)‖²``
    (one GEMM for all components), whose rounding grows only linearly with a
    component's distance from the shift. The expanded form
    ``xᵀΛx − 2μᵀΛx + μᵀΛμ`` would halve the flops but loses digits as the
    square of that distance (measured: 1e-3 relative covariance error at
    100σ in float32), so dem does not use it.
    """

    n_components: int
    covariance_type: CovarianceType = "full"
    reg_covar: float = 1e-6
    beta: float = 1.0

    @property
    def stage(self) -> str | None:
        """The annealing temperature this model optimises at (None for plain EM)."""
        return None if self.beta == 1.0 else f"beta={self.beta:.6g}"

    # -- densities ---------------------------------------------------------

    def _prepare(self, params: GMMParams) -> _Prepared:
        ct = self.covariance_type
        K, D = params.means.shape
        shift = params.shift
        cm = params.means - shift
        with np.errstate(divide="ignore"):
            log_weights = np.log(params.weights)
        pc = params.precisions_cholesky
        const = log_weights + _log_det_cholesky(pc, ct, D) - 0.5 * D * _LOG_2PI
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
        return _Prepared(shift[:, None], cm, np.asarray(const, float)[:, None], whiten,
                         offset, _block_rows(K, D), np.dtype(np.float64))

    @staticmethod
    def _work_dtype(X: np.ndarray) -> np.dtype:
        # float32 data keeps float32 arithmetic inside a block (SGEMM runs at
        # twice the DGEMM rate); every block's sums are added up in float64.
        return np.dtype(np.float32) if np.asarray(X[:0]).dtype == np.float32 else np.dtype(np.float64)

    def _centred_block(self, prep: _Prepared, X: np.ndarray, a: int, b: int,
                       ws: _Workspace | None = None) -> np.ndarray:
        """Rows a:b of X, centred on the shift, as a contiguous (D, rows) array of prep.dtype."""
        block = np.asarray(X[a:b])
        if ws is None:
            return np.ascontiguousarray(block.astype(prep.dtype, copy=False).T - prep.shift)
        return np.subtract(block.T, prep.shift, out=ws.XcT, casting="unsafe")

    def _workspaces(self, prep: _Prepared, n: int, n_features: int) -> dict[int, _Workspace]:
        sizes = {min(prep.rows, n)}
        if n % prep.rows and n > prep.rows:
            sizes.add(n % prep.rows)
        return {m: _Workspace(self.n_components, n_features, m, prep.dtype) for m in sizes}

    def _log_prob_T(self, prep: _Prepared, XcT: np.ndarray, ws: _Workspace | None = None) -> np.ndarray:
        """(K, rows) weighted log-densities ``log w_k + log N(x | m_k, Σ_k)``."""
        ct = self.covariance_type
        K = self.n_components
        D, B = XcT.shape
        if ws is None:
            ws = _Workspace(K, D, B, XcT.dtype)
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

    def weighted_log_prob(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """``log w_k + log N(x_n | μ_k, Σ_k)`` for every row and component, (n, K)."""
        prep = self._prepare(params)  # float64 throughout: outputs are user-facing
        out = np.empty((X.shape[0], self.n_components))
        for a in range(0, X.shape[0], prep.rows):
            out[a : a + prep.rows] = self._log_prob_T(prep, self._centred_block(prep, X, a, a + prep.rows)).T.copy()
        return out

    # -- statistics --------------------------------------------------------

    def zero_stats(self, n_features: int) -> GMMStats:
        K, D = self.n_components, n_features
        second = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}
        return GMMStats(
            n_rows=0.0,
            weight_sum=0.0,
            log_likelihood=0.0,
            resp_sum=np.zeros(K),
            first_moment=np.zeros((K, D)),
            second_moment=np.zeros(second[self.covariance_type]),
        )

    def _new_acc(self, n_features: int) -> dict:
        zero = self.zero_stats(n_features)
        return {f.name: np.array(getattr(zero, f.name), dtype=np.float64)
                for f in dataclasses.fields(zero)}

    def _accumulate(self, acc: dict, XcT: np.ndarray, RT: np.ndarray, centred_means: np.ndarray,
                    w: np.ndarray | None, ws: _Workspace | None = None) -> None:
        """Add one block's moments about the component means.

        ``RT`` (K, rows) are the weighted responsibilities; ``XcT`` the block
        centred on the overall shift, ``centred_means`` the means on the same
        shift, so ``XcT − centred_means[k]`` is exactly ``x − m_k``.
        """
        ct = self.covariance_type
        acc["n_rows"] += XcT.shape[1]
        acc["weight_sum"] += XcT.shape[1] if w is None else w.sum()
        nk = RT.sum(axis=1, dtype=np.float64)
        acc["resp_sum"] += nk
        # Σ r (x − m_k) = Σ r (x − c) − n_k (m_k − c): rounding grows only linearly in |m_k − c|.
        acc["first_moment"] += RT @ XcT.T - nk[:, None] * centred_means
        S2 = acc["second_moment"]
        if ws is None:
            ws = _Workspace(self.n_components, XcT.shape[0], XcT.shape[1], XcT.dtype)
        if ct in ("full", "tied"):
            sqrt_r = np.sqrt(RT, out=ws.sqrt_r)
            Dk = ws.Dk
            for k in range(self.n_components):
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

    @staticmethod
    def _finish(acc: dict) -> GMMStats:
        return GMMStats(**{k: (float(v) if np.ndim(v) == 0 else v) for k, v in acc.items()})

    def e_step(
        self,
        params: GMMParams,
        X: np.ndarray,
        sample_weight: np.ndarray | None = None,
        row_offset: int = 0,
    ) -> GMMStats:
        """Statistics of one partition under ``params``.

        Raises
        ------
        DataError
            If the block holds NaN or inf (naming the global row), or a
            sample weight is negative or not finite.
        """
        n, D = X.shape
        prep = self._prepare(params).astype(self._work_dtype(X))
        acc = self._new_acc(D)
        spaces = self._workspaces(prep, n, D)
        for a in range(0, n, prep.rows):
            ws = spaces[min(prep.rows, n - a)]
            XcT = self._centred_block(prep, X, a, a + prep.rows, ws)
            lp = self._log_prob_T(prep, XcT, ws)
            if self.beta != 1.0:
                lp *= self.beta
            top = lp.max(axis=0)
            lp -= top
            np.exp(lp, out=lp)
            total = lp.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                lse = np.log(total, dtype=np.float64) + top
                if self.beta != 1.0:
                    lse /= self.beta  # the tempered free energy per row
            if not np.isfinite(lse).all():
                _raise_non_finite(X, a, lse, row_offset)
            lp /= total  # responsibilities, (K, rows)
            w = None
            if sample_weight is None:
                acc["log_likelihood"] += lse.sum()
            else:
                w = _checked_weights(sample_weight, a, a + prep.rows, row_offset)
                acc["log_likelihood"] += lse @ w
                lp *= w.astype(lp.dtype, copy=False)
            self._accumulate(acc, XcT, lp, prep.centred_means, w, ws)
        return self._finish(acc)

    def assignment_stats(
        self,
        params: GMMParams,
        X: np.ndarray,
        sample_weight: np.ndarray | None = None,
        row_offset: int = 0,
        *,
        responsibilities: str = "nearest",
        seed: tuple[int, ...] = (0,),
    ) -> GMMStats:
        """Statistics from initial responsibilities instead of the posterior.

        ``responsibilities="nearest"`` assigns each row wholly to the nearest
        mean in ``params`` (Euclidean), as scikit-learn's k-means init does;
        ``"random"`` draws uniform responsibilities from a generator seeded
        with ``seed`` (which the caller makes unique per partition).
        """
        n, D = X.shape
        prep = self._prepare(params)
        cm = prep.centred_means
        cm_sq = (cm * cm).sum(axis=1)[:, None]
        acc = self._new_acc(D)
        rng = np.random.default_rng(list(seed))
        K = self.n_components
        for a in range(0, n, prep.rows):
            XcT = self._centred_block(prep, X, a, a + prep.rows)
            if not np.isfinite(XcT).all():
                _raise_non_finite(X, a, XcT.sum(axis=0), row_offset)
            m = XcT.shape[1]
            if responsibilities == "nearest":
                RT = np.zeros((K, m))
                RT[(cm_sq - 2.0 * (cm @ XcT)).argmin(axis=0), np.arange(m)] = 1.0
            else:
                RT = rng.uniform(size=(K, m))
                RT /= RT.sum(axis=0)
            w = None
            if sample_weight is not None:
                w = _checked_weights(sample_weight, a, a + prep.rows, row_offset)
                RT *= w
            self._accumulate(acc, XcT, RT, cm, w)
        return self._finish(acc)

    # -- M-step ------------------------------------------------------------

    def m_step(self, stats: GMMStats, params: GMMParams) -> GMMParams:
        """New parameters from summed statistics taken under ``params``.

        Raises
        ------
        CollapsedComponentError
            If a covariance is not positive definite after ``reg_covar``.
        """
        ct = self.covariance_type
        K, D = params.means.shape
        nk = np.asarray(stats.resp_sum, dtype=np.float64)
        total = float(stats.weight_sum)
        empty = nk < 10.0 * _EPS * total
        safe_nk = np.where(empty, 1.0, nk)
        S1 = stats.first_moment
        means = np.where(empty[:, None], params.means, params.means + S1 / safe_nk[:, None])

        # About the new means: (S2 − S1 S1ᵀ / n_k) / n_k, with S1, S2 about the old means.
        if ct == "full":
            cov = (stats.second_moment
                   - np.einsum("ki,kj->kij", S1, S1) / safe_nk[:, None, None]) / safe_nk[:, None, None]
            cov = 0.5 * (cov + cov.transpose(0, 2, 1))
            cov[:, np.arange(D), np.arange(D)] += self.reg_covar
            cov = np.where(empty[:, None, None], params.covariances, cov)
        elif ct == "tied":
            live = ~empty
            scatter = stats.second_moment - np.einsum("ki,kj->ij", S1[live], S1[live] / safe_nk[live, None])
            cov = scatter / nk.sum()
            cov = 0.5 * (cov + cov.T)
            cov[np.arange(D), np.arange(D)] += self.reg_covar
        elif ct == "diag":
            var = (stats.second_moment - S1**2 / safe_nk[:, None]) / safe_nk[:, None]
            cov = np.maximum(var, 0.0) + self.reg_covar
            cov = np.where(empty[:, None], params.covariances, cov)
        else:
            var = (stats.second_moment - (S1**2).sum(axis=1) / safe_nk) / safe_nk / D
            cov = np.maximum(var, 0.0) + self.reg_covar
            cov = np.where(empty, params.covariances, cov)

        floor = 10.0 * _EPS * total
        weights = np.maximum(nk, floor)
        weights = weights / weights.sum()
        prec_chol = compute_precision_cholesky(cov, ct)
        return GMMParams(weights, means, cov, prec_chol)

    def empty_components(self, stats: GMMStats) -> np.ndarray:
        """Indices of components the M-step treats as empty."""
        return np.flatnonzero(stats.resp_sum < 10.0 * _EPS * stats.weight_sum)

    def diagnose(self, stats: GMMStats) -> list[str]:
        """Notes for the fit's history: components the M-step found empty."""
        return [
            f"component {int(k)} is empty; it keeps its previous mean and covariance"
            for k in self.empty_components(stats)
        ]

    # -- parameters --------------------------------------------------------

    def n_parameters(self, n_features: int) -> int:
        """Number of free parameters (for BIC/AIC), as scikit-learn counts them."""
        K, D = self.n_components, n_features
        cov = {
            "full": K * D * (D + 1) / 2.0,
            "tied": D * (D + 1) / 2.0,
            "diag": K * D,
            "spherical": K,
        }[self.covariance_type]
        return int(cov + K * D + K - 1)

    def params_from(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        covariances: np.ndarray | None = None,
        precisions: np.ndarray | None = None,
    ) -> GMMParams:
        """Validated parameters from weights, means and covariances or precisions."""
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        if covariances is None:
            if precisions is None:
                raise ValueError("need covariances or precisions")
            precisions = np.asarray(precisions, dtype=np.float64)
            covariances = covariances_from_precisions(precisions, self.covariance_type)
            if self.covariance_type in ("full", "tied"):
                pc = _precision_cholesky_from_precisions(precisions, self.covariance_type)
            else:
                pc = np.sqrt(precisions)
        else:
            covariances = np.asarray(covariances, dtype=np.float64)
            pc = compute_precision_cholesky(covariances, self.covariance_type)
        return GMMParams(weights, means, covariances, pc)


def _precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    # scikit-learn's convention: U upper with precision = U Uᵀ, obtained by
    # flipping the lower Cholesky factor of the reversed matrix.
    def one(p: np.ndarray) -> np.ndarray:
        flipped = np.flipud(np.fliplr(p))
        try:
            chol = linalg.cholesky(flipped, lower=True)
        except linalg.LinAlgError:
            raise CollapsedComponentError("precisions_init is not positive definite") from None
        return np.flipud(np.fliplr(chol))

    if covariance_type == "full":
        return np.stack([one(p) for p in precisions])
    return one(precisions)


def _checked_weights(sample_weight: np.ndarray, a: int, b: int, row_offset: int) -> np.ndarray:
    """Rows a:b of the weights as float64, refusing negative or non-finite values."""
    w = np.asarray(sample_weight[a:b], dtype=np.float64)
    bad = ~(np.isfinite(w) & (w >= 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        what = "negative" if w[i] < 0 else "not finite"
        raise DataError(f"sample_weight is {what} at row {row_offset + a + i} ({w[i]!r})")
    return w


def _raise_non_finite(X: np.ndarray, a: int, values: np.ndarray, row_offset: int) -> None:
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


def sample(params: GMMParams, covariance_type: str, n_samples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_samples`` rows and their component labels, as scikit-learn does."""
    K, D = params.means.shape
    counts = rng.multinomial(n_samples, params.weights)
    X_parts, y_parts = [], []
    for k, c in enumerate(counts):
        if covariance_type == "full":
            cov = params.covariances[k]
        elif covariance_type == "tied":
            cov = params.covariances
        elif covariance_type == "diag":
            cov = np.diag(params.covariances[k])
        else:
            cov = np.eye(D) * params.covariances[k]
        X_parts.append(rng.multivariate_normal(params.means[k], cov, int(c)))
        y_parts.append(np.full(int(c), k, dtype=np.int64))
    return np.vstack(X_parts), np.concatenate(y_parts)
