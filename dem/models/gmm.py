"""Gaussian mixture model: parameters, sufficient statistics, E-step, M-step, init.

Pure numpy; no Dask. Conventions follow scikit-learn's ``GaussianMixture``:
``precisions_cholesky`` is the upper-triangular ``U`` with ``precision = U Uᵀ``
(full, tied), or ``1/sqrt(variance)`` (diag, spherical).

Numerical choices (see DESIGN.md):

* Responsibilities are computed in log space with log-sum-exp.
* Mahalanobis terms use the Cholesky factor of the precision ("whitening"),
  with the data first centred on a shift every worker knows (the mixture's
  current overall mean), so large offsets in the data do not cancel away.
* Second moments are accumulated about the current component means (the
  shift), never as raw ``Σ r x xᵀ``; all accumulation is float64 whatever the
  data's dtype.
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

    All moments are about the shift ``c`` of the E-step's parameters (the
    mixture mean, known to every worker), never raw ``Σ r x xᵀ``:
    ``first_moment[k] = Σ w r_k (x − c)``; ``second_moment`` is
    ``Σ w r_k (x − c)(x − c)ᵀ`` packed as the upper triangle (full, (K, P)),
    its diagonal (diag, (K, D)), its trace (spherical, (K,)), or
    ``Σ w (x − c)(x − c)ᵀ`` (tied, (D, D)).
    """

    resp_sum: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


def _block_rows(n_components: int, n_features: int, covariance_type: str) -> int:
    # Keep the (columns × block) float64 temporaries near 4 MB, so the
    # exp/log and packing passes stay in cache while GEMMs see long inner
    # dimensions. Columns: D(D+1)/2 packed products for full, else D or K.
    width = n_features * (n_features + 1) // 2 if covariance_type == "full" else n_features
    return int(max(256, min(8192, (1 << 19) // max(1, width, n_components))))


def packed_outer(XcT: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Upper-triangle products ``x_i x_j`` (i <= j) of each column of ``XcT`` (D, B).

    Rows follow ``np.triu_indices(D)`` order; built row by row so writes are
    contiguous.
    """
    D, B = XcT.shape
    if out is None:
        out = np.empty((D * (D + 1) // 2, B), dtype=XcT.dtype)
    o = 0
    for i in range(D):
        np.multiply(XcT[i], XcT[i:], out=out[o : o + D - i])
        o += D - i
    return out


def unpack_symmetric(packed: np.ndarray, n_features: int) -> np.ndarray:
    """(…, D(D+1)/2) upper-triangle rows → (…, D, D) symmetric matrices."""
    iu = np.triu_indices(n_features)
    out = np.zeros(packed.shape[:-1] + (n_features, n_features))
    out[..., iu[0], iu[1]] = packed
    out[..., iu[1], iu[0]] = packed
    return out


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
    """Per-parameter quantities every block of an E-step reuses (transposed layout)."""

    shift: np.ndarray      # (D, 1) overall centre c
    const: np.ndarray      # (K, 1) log w + log det - D/2 log 2π - ½·(mean term)
    quad: np.ndarray       # full: (K, P) packed precisions; tied: (D, D) Uᵀ; diag: (K, D); spherical: (K, 1)
    linear: np.ndarray     # (K, D) or (K, D) in whitened space for tied
    rows: int              # block size
    dtype: np.dtype        # float32 for float32 data, else float64

    def astype(self, dtype: np.dtype) -> "_Prepared":
        if dtype == self.dtype:
            return self
        cast = lambda a: np.ascontiguousarray(a, dtype=dtype)  # noqa: E731
        return _Prepared(cast(self.shift), cast(self.const), cast(self.quad), cast(self.linear),
                         self.rows, np.dtype(dtype))


@dataclasses.dataclass(frozen=True)
class GaussianMixtureModel:
    """Gaussian mixture as pure functions over numpy blocks.

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance in the M-step.

    Notes
    -----
    Blocks are processed transposed, (features × rows), so every product is
    a GEMM with a long inner dimension. For ``full`` the Mahalanobis term is
    expanded, ``(x−μ)ᵀΛ(x−μ) = xᵀΛx − 2μᵀΛx + μᵀΛμ`` with ``x`` centred on
    the shared shift, using the packed outer products of ``x``; the same
    packed products give the second moments as one GEMM with the
    responsibilities. That is about half the flops of whitening each
    component and avoids ``rows × K × D`` temporaries.
    """

    n_components: int
    covariance_type: CovarianceType = "full"
    reg_covar: float = 1e-6

    # -- densities ---------------------------------------------------------

    def _prepare(self, params: GMMParams) -> _Prepared:
        ct = self.covariance_type
        K, D = params.means.shape
        shift = params.shift
        cm = params.means - shift
        with np.errstate(divide="ignore"):
            log_weights = np.log(params.weights)
        pc = params.precisions_cholesky
        logdet = _log_det_cholesky(pc, ct, D)
        if ct == "full":
            prec = np.einsum("kij,klj->kil", pc, pc)
            iu = np.triu_indices(D)
            quad = prec[:, iu[0], iu[1]] * np.where(iu[0] == iu[1], 1.0, 2.0)
            pm = np.einsum("kij,kj->ki", prec, cm)
            linear = -2.0 * pm
            mean_term = (pm * cm).sum(axis=1)
        elif ct == "tied":
            quad = np.ascontiguousarray(pc.T)
            wm = cm @ pc
            linear = -2.0 * wm
            mean_term = (wm * wm).sum(axis=1)
        elif ct == "diag":
            quad = pc**2
            linear = -2.0 * cm * quad
            mean_term = (cm * cm * quad).sum(axis=1)
        else:
            prec = pc**2
            quad = prec[:, None]
            linear = -2.0 * cm * prec[:, None]
            mean_term = (cm * cm).sum(axis=1) * prec
        const = log_weights + logdet - 0.5 * D * _LOG_2PI - 0.5 * mean_term
        return _Prepared(shift[:, None], np.asarray(const, float)[:, None], quad, linear,
                         _block_rows(K, D, ct), np.dtype(np.float64))

    @staticmethod
    def _work_dtype(X: np.ndarray) -> np.dtype:
        # float32 data keeps float32 arithmetic inside a block (SGEMM runs at
        # twice the DGEMM rate); everything is accumulated across blocks in
        # float64.
        return np.dtype(np.float32) if np.asarray(X[:0]).dtype == np.float32 else np.dtype(np.float64)

    def _centred_block(self, prep: _Prepared, X: np.ndarray, a: int, b: int) -> np.ndarray:
        """Rows a:b of X, centred on the shift, as a contiguous (D, rows) array of prep.dtype."""
        XcT = np.asarray(X[a:b], dtype=prep.dtype).T - prep.shift
        return np.ascontiguousarray(XcT)

    def _log_prob_T(self, prep: _Prepared, XcT: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(K, rows) weighted log-densities, and the block's second-moment rows.

        The second return value is what the statistics need from the same
        pass: packed products (full), squares (diag), squared norms
        (spherical) or None (tied).
        """
        ct = self.covariance_type
        if ct == "full":
            moments = packed_outer(XcT)
            maha = prep.quad @ moments
        elif ct == "tied":
            YT = prep.quad @ XcT
            maha = (YT * YT).sum(axis=0)[None, :] + np.zeros((self.n_components, 1), dtype=YT.dtype)
            maha += prep.linear @ YT
            return prep.const - 0.5 * maha, None
        elif ct == "diag":
            moments = XcT * XcT
            maha = prep.quad @ moments
        else:
            moments = (XcT * XcT).sum(axis=0)
            maha = prep.quad * moments[None, :]
        maha += prep.linear @ XcT
        maha *= -0.5
        maha += prep.const
        return maha, moments

    def weighted_log_prob(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """``log w_k + log N(x_n | μ_k, Σ_k)`` for every row and component, (n, K)."""
        prep = self._prepare(params)  # float64 throughout: outputs are user-facing
        out = np.empty((X.shape[0], self.n_components))
        for a in range(0, X.shape[0], prep.rows):
            lp, _ = self._log_prob_T(prep, self._centred_block(prep, X, a, a + prep.rows))
            out[a : a + prep.rows] = lp.T
        return out

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

    # -- statistics --------------------------------------------------------

    def _moment_width(self, n_features: int) -> tuple[int, ...]:
        D = n_features
        return {"full": (D * (D + 1) // 2,), "tied": (D, D), "diag": (D,), "spherical": ()}[self.covariance_type]

    def zero_stats(self, n_features: int) -> GMMStats:
        K = self.n_components
        second = (self._moment_width(n_features) if self.covariance_type == "tied"
                  else (K,) + self._moment_width(n_features))
        return GMMStats(
            n_rows=0.0,
            weight_sum=0.0,
            log_likelihood=0.0,
            resp_sum=np.zeros(K),
            first_moment=np.zeros((K, n_features)),
            second_moment=np.zeros(second),
        )

    def _new_acc(self, n_features: int) -> dict:
        zero = self.zero_stats(n_features)
        return {f.name: np.array(getattr(zero, f.name), dtype=np.float64)
                for f in dataclasses.fields(zero)}

    def _accumulate(self, acc: dict, XcT: np.ndarray, moments: np.ndarray | None,
                    RT: np.ndarray, w: np.ndarray | None) -> None:
        """Add one block's moments; ``RT`` (K, rows) are weighted responsibilities."""
        acc["n_rows"] += XcT.shape[1]
        acc["weight_sum"] += XcT.shape[1] if w is None else w.sum()
        acc["resp_sum"] += RT.sum(axis=1, dtype=np.float64)
        acc["first_moment"] += RT @ XcT.T
        if self.covariance_type == "tied":
            XwT = XcT if w is None else XcT * w.astype(XcT.dtype, copy=False)[None, :]
            acc["second_moment"] += XwT @ XcT.T
        else:
            acc["second_moment"] += RT @ moments.T

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
            If the block holds NaN or inf (naming the global row).
        """
        n, D = X.shape
        prep = self._prepare(params).astype(self._work_dtype(X))
        acc = self._new_acc(D)
        for a in range(0, n, prep.rows):
            XcT = self._centred_block(prep, X, a, a + prep.rows)
            lp, moments = self._log_prob_T(prep, XcT)
            top = lp.max(axis=0)
            lp -= top
            np.exp(lp, out=lp)
            total = lp.sum(axis=0)
            lse = np.log(total, dtype=np.float64) + top
            if not np.isfinite(lse).all():
                _raise_non_finite(X, a, lse, row_offset)
            lp /= total  # responsibilities, (K, rows)
            w = None
            if sample_weight is None:
                acc["log_likelihood"] += lse.sum()
            else:
                w = np.asarray(sample_weight[a : a + prep.rows], dtype=np.float64)
                acc["log_likelihood"] += lse @ w
                lp *= w.astype(lp.dtype, copy=False)
            self._accumulate(acc, XcT, moments, lp, w)
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
        cm = params.means - params.shift
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
                w = np.asarray(sample_weight[a : a + prep.rows], dtype=np.float64)
                RT *= w
            ct = self.covariance_type
            moments = (packed_outer(XcT) if ct == "full" else XcT * XcT if ct == "diag"
                       else (XcT * XcT).sum(axis=0) if ct == "spherical" else None)
            self._accumulate(acc, XcT, moments, RT, w)
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
        delta = S1 / safe_nk[:, None]  # μ_k − c
        means = np.where(empty[:, None], params.means, params.shift + delta)

        # Covariances about the new means: (S2 − S1 S1ᵀ / n_k) / n_k, all about c.
        if ct == "full":
            S2 = unpack_symmetric(stats.second_moment, D)
            cov = (S2 - np.einsum("ki,kj->kij", S1, S1) / safe_nk[:, None, None]) / safe_nk[:, None, None]
            cov[:, np.arange(D), np.arange(D)] += self.reg_covar
            cov = np.where(empty[:, None, None], params.covariances, cov)
        elif ct == "tied":
            live = ~empty
            scatter = stats.second_moment - np.einsum(
                "ki,kj->ij", S1[live], S1[live] / safe_nk[live, None]
            )
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
