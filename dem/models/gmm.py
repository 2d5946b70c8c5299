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

    ``first_moment[k] = Σ w r_k (x - m_k)`` and ``second_moment`` is taken about
    the same per-component shift ``m_k`` (the E-step's means); for ``tied`` it
    is ``Σ w (x - c)(x - c)ᵀ`` about the overall shift ``c`` instead, which is
    all the tied M-step needs.
    """

    resp_sum: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


def _block_rows(n_components: int, n_features: int) -> int:
    # Keep the block × K × D float64 temporary near 2 MB (L2-ish), so the
    # exp/log and weighting passes stay in cache.
    return int(max(256, min(16384, (1 << 18) // max(1, n_components * n_features))))


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
    """Per-parameter quantities every block of an E-step reuses."""

    shift: np.ndarray          # (D,) overall centre c
    centred_means: np.ndarray  # (K, D) m_k - c
    log_weights: np.ndarray    # (K,)
    const: np.ndarray          # (K,) log det - D/2 log 2π + log w
    whiten: np.ndarray         # full: (D, K·D); tied: (D, D); diag: (K, D) precisions; spherical: (K,)
    whitened_means: np.ndarray  # full: (K·D,); tied: (K, D); diag: (K, D) m·p; spherical: (K, D)
    mean_term: np.ndarray      # (K,) for tied/diag/spherical expansions


@dataclasses.dataclass(frozen=True)
class GaussianMixtureModel:
    """Gaussian mixture as pure functions over numpy blocks.

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance in the M-step.
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
        const = logdet - 0.5 * D * _LOG_2PI + log_weights
        if ct == "full":
            whiten = np.ascontiguousarray(pc.transpose(1, 0, 2).reshape(D, K * D))
            wm = np.einsum("kd,kde->ke", cm, pc).reshape(K * D)
            mean_term = np.zeros(K)
        elif ct == "tied":
            whiten = pc
            wm = cm @ pc
            mean_term = (wm * wm).sum(axis=1)
        elif ct == "diag":
            prec = pc**2
            whiten = prec
            wm = cm * prec
            mean_term = (cm * cm * prec).sum(axis=1)
        else:
            prec = pc**2
            whiten = prec
            wm = cm
            mean_term = (cm * cm).sum(axis=1) * prec
        return _Prepared(shift, cm, log_weights, np.asarray(const, float), whiten, wm, mean_term)

    def _weighted_log_prob_centred(self, prep: _Prepared, Xc: np.ndarray) -> np.ndarray:
        """log w_k + log N(x | m_k, Σ_k) for rows already centred on the shift."""
        ct = self.covariance_type
        n, D = Xc.shape
        K = self.n_components
        if ct == "full":
            Y = Xc @ prep.whiten
            Y -= prep.whitened_means
            Y *= Y
            maha = Y.reshape(n, K, D).sum(axis=2)
        elif ct == "tied":
            Y = Xc @ prep.whiten
            maha = (Y * Y).sum(axis=1)[:, None] - 2.0 * (Y @ prep.whitened_means.T)
            maha += prep.mean_term
        elif ct == "diag":
            maha = (Xc * Xc) @ prep.whiten.T - 2.0 * (Xc @ prep.whitened_means.T)
            maha += prep.mean_term
        else:
            sq = (Xc * Xc).sum(axis=1)[:, None] - 2.0 * (Xc @ prep.whitened_means.T)
            maha = sq * prep.whiten + prep.mean_term
        return prep.const - 0.5 * maha

    def weighted_log_prob(self, params: GMMParams, X: np.ndarray) -> np.ndarray:
        """``log w_k + log N(x_n | μ_k, Σ_k)`` for every row and component, (n, K)."""
        prep = self._prepare(params)
        X = np.asarray(X)
        out = np.empty((X.shape[0], self.n_components))
        step = _block_rows(self.n_components, params.n_features)
        for a in range(0, X.shape[0], step):
            Xc = np.asarray(X[a : a + step], dtype=np.float64) - prep.shift
            out[a : a + step] = self._weighted_log_prob_centred(prep, Xc)
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

    def zero_stats(self, n_features: int) -> GMMStats:
        K, D = self.n_components, n_features
        shapes = {
            "full": (K, D, D),
            "tied": (D, D),
            "diag": (K, D),
            "spherical": (K,),
        }
        return GMMStats(
            n_rows=0.0,
            weight_sum=0.0,
            log_likelihood=0.0,
            resp_sum=np.zeros(K),
            first_moment=np.zeros((K, D)),
            second_moment=np.zeros(shapes[self.covariance_type]),
        )

    def _accumulate(
        self,
        acc: dict,
        Xc: np.ndarray,
        rw: np.ndarray,
        centred_means: np.ndarray,
        w: np.ndarray | None,
    ) -> None:
        """Add one block's moments; ``rw`` are weighted responsibilities."""
        ct = self.covariance_type
        nk = rw.sum(axis=0)
        acc["resp_sum"] += nk
        # Σ r (x - m_k) = rᵀ(x - c) - n_k (m_k - c): both sides share the shift c.
        acc["first_moment"] += rw.T @ Xc - nk[:, None] * centred_means
        if ct == "tied":
            Xw = Xc if w is None else Xc * w[:, None]
            acc["second_moment"] += Xw.T @ Xc
            return
        S2 = acc["second_moment"]
        for k in range(self.n_components):
            d = Xc - centred_means[k]
            if ct == "full":
                S2[k] += (d * rw[:, k, None]).T @ d
            elif ct == "diag":
                S2[k] += rw[:, k] @ (d * d)
            else:
                S2[k] += rw[:, k] @ (d * d).sum(axis=1)

    def _new_acc(self, n_features: int) -> dict:
        zero = self.zero_stats(n_features)
        return {f.name: np.array(getattr(zero, f.name), dtype=np.float64)
                for f in dataclasses.fields(zero)}

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
        prep = self._prepare(params)
        acc = self._new_acc(D)
        step = _block_rows(self.n_components, D)
        for a in range(0, n, step):
            Xc = np.asarray(X[a : a + step], dtype=np.float64) - prep.shift
            w = None if sample_weight is None else np.asarray(
                sample_weight[a : a + step], dtype=np.float64
            )
            lp = self._weighted_log_prob_centred(prep, Xc)
            lse = logsumexp(lp, axis=1)
            if not np.isfinite(lse).all():
                _raise_non_finite(X, a, lse, row_offset)
            rw = np.exp(lp - lse[:, None])
            if w is None:
                acc["log_likelihood"] += lse.sum()
                acc["weight_sum"] += Xc.shape[0]
            else:
                acc["log_likelihood"] += w @ lse
                acc["weight_sum"] += w.sum()
                rw *= w[:, None]
            acc["n_rows"] += Xc.shape[0]
            self._accumulate(acc, Xc, rw, prep.centred_means, w)
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
        shift = params.shift
        cm = params.means - shift
        acc = self._new_acc(D)
        rng = np.random.default_rng(list(seed))
        step = _block_rows(self.n_components, D)
        cm_sq = (cm * cm).sum(axis=1)
        for a in range(0, n, step):
            Xc = np.asarray(X[a : a + step], dtype=np.float64) - shift
            if not np.isfinite(Xc).all():
                _raise_non_finite(X, a, Xc.sum(axis=1), row_offset)
            m = Xc.shape[0]
            if responsibilities == "nearest":
                dist = cm_sq - 2.0 * (Xc @ cm.T)
                r = np.zeros((m, self.n_components))
                r[np.arange(m), dist.argmin(axis=1)] = 1.0
            else:
                r = rng.uniform(size=(m, self.n_components))
                r /= r.sum(axis=1, keepdims=True)
            w = None if sample_weight is None else np.asarray(
                sample_weight[a : a + step], dtype=np.float64
            )
            if w is not None:
                r *= w[:, None]
                acc["weight_sum"] += w.sum()
            else:
                acc["weight_sum"] += m
            acc["n_rows"] += m
            self._accumulate(acc, Xc, r, cm, w)
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
        delta = stats.first_moment / safe_nk[:, None]  # μ_k - m_k
        means = np.where(empty[:, None], params.means, params.means + delta)

        if ct == "full":
            cov = (
                stats.second_moment
                - np.einsum("ki,kj->kij", stats.first_moment, stats.first_moment)
                / safe_nk[:, None, None]
            ) / safe_nk[:, None, None]
            cov = 0.5 * (cov + cov.transpose(0, 2, 1))
            cov[:, np.arange(D), np.arange(D)] += self.reg_covar
            cov = np.where(empty[:, None, None], params.covariances, cov)
        elif ct == "tied":
            d = means - params.shift  # about the overall shift of the E-step
            live = ~empty
            scatter = stats.second_moment - np.einsum(
                "k,ki,kj->ij", nk[live], d[live], d[live]
            )
            cov = scatter / nk.sum()
            cov = 0.5 * (cov + cov.T)
            cov[np.arange(D), np.arange(D)] += self.reg_covar
        elif ct == "diag":
            var = (stats.second_moment - stats.first_moment**2 / safe_nk[:, None]) / safe_nk[:, None]
            cov = np.maximum(var, 0.0) + self.reg_covar
            cov = np.where(empty[:, None], params.covariances, cov)
        else:
            sq = (stats.first_moment**2).sum(axis=1)
            var = (stats.second_moment - sq / safe_nk) / safe_nk / D
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
