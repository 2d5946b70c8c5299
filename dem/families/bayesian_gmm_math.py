"""The variational Bayesian Gaussian mixture's parameters, M-step and bound, as pure numpy.

Split from :mod:`dem.families.bayesian_gmm` (the family, its initialisation
passes and the estimator) so each module stays small: this one holds only
formulas, each written to equal scikit-learn's ``BayesianGaussianMixture``
(``sklearn/mixture/_bayesian_mixture.py``) operation for operation where it
matters:

* the variational M-step (Bishop 2006, §10.2; Blei and Jordan 2006 for the
  Dirichlet-process weights), from the statistics of
  :class:`BGMMStats` — moments about the component means, never raw sums;
* the expected log-weights and log-determinant terms the E-step kernel
  takes as each component's constant;
* the evidence lower bound with scikit-learn's simplifications (its
  constant terms dropped), evaluated at the parameters the M-step makes
  from the statistics, as scikit-learn's fit loop evaluates it;
* priors defaulting from one pass over the data, and their validation;
* the unconstrained coordinates SQUAREM extrapolates in.

Like scikit-learn, ``n_k`` carries ``10·eps`` so that an empty component's
moments divide by a positive number; ``reg_covar`` is added to each
component's empirical covariance before it meets the Wishart prior.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from scipy import linalg
from scipy.special import betaln, digamma, gammaln

from dem.errors import ConfigError, DataError
from dem.families import gaussian_kernel as kernel
from dem.families.base import Stats
from dem.families.gaussian_mixture import GMMStats
from dem.families.gaussian_params import (
    compute_precision_cholesky, covariance_from_vector, covariance_to_vector,
)

PRIOR_TYPES: tuple[str, ...] = ("dirichlet_process", "dirichlet_distribution")
_EPS = np.finfo(np.float64).eps
_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class BGMMStats(GMMStats):
    """The Gaussian mixture's statistics plus ``Σ w r log r`` (the bound's entropy term).

    ``resp_sum``, ``first_moment`` and ``second_moment`` are those of
    :class:`~dem.families.gaussian_mixture.GMMStats` (moments about the
    E-step's component means); ``resp_entropy`` is ``Σ_n w_n Σ_k r_nk log
    r_nk`` (≤ 0).
    """

    resp_entropy: float = 0.0


@dataclasses.dataclass(frozen=True)
class BGMMParams:
    """The variational posterior of a Bayesian Gaussian mixture, and the prior it started from.

    Attributes follow scikit-learn's fitted attributes of the same names
    (without the trailing underscore). ``weight_concentration`` is (K,)
    for the Dirichlet distribution and (2, K) — the two Beta parameters of
    each stick — for the Dirichlet process. ``degrees_of_freedom`` is (K,),
    or 0-d for tied covariances. ``covariances`` are the Wishart scale
    matrices divided by the degrees of freedom (scikit-learn's
    normalisation), so ``precisions_cholesky`` factors the expected
    precision.

    The prior fields and ``weight_sum`` (the data's total weight, the
    unit in which scikit-learn's bound is a total) are fixed during a fit:
    they are parameters only so that checkpoints and extrapolations carry
    them.
    """

    weight_concentration: np.ndarray
    mean_precision: np.ndarray
    means: np.ndarray
    degrees_of_freedom: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    weight_concentration_prior: np.ndarray
    mean_precision_prior: np.ndarray
    mean_prior: np.ndarray
    degrees_of_freedom_prior: np.ndarray
    covariance_prior: np.ndarray
    weight_sum: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    @property
    def weights(self) -> np.ndarray:
        """Expected mixture weights, as scikit-learn's ``weights_``."""
        return expected_weights(self.weight_concentration)

    @property
    def shift(self) -> np.ndarray:
        """Centre every worker subtracts from the data first: the mixture's mean."""
        return self.weights @ self.means


@dataclasses.dataclass(frozen=True)
class Priors:
    """The prior's values, resolved (defaults from the data filled in)."""

    weight_concentration_prior: float
    mean_precision_prior: float
    mean_prior: np.ndarray
    degrees_of_freedom_prior: float
    covariance_prior: np.ndarray
    weight_sum: float


@dataclasses.dataclass(frozen=True)
class DataMoments(Stats):
    """Weighted sums of one pass for the data-derived priors: ``Σw(x − c)``, ``Σw(x − c)(x − c)ᵀ``.

    ``c`` is a shift every worker knows (a sample's mean), so the
    covariance does not lose digits to a large offset in the data.
    """

    total: np.ndarray
    scatter: np.ndarray


def data_moments(shift: np.ndarray, X: Any, weights: np.ndarray | None) -> DataMoments:
    """The :class:`DataMoments` of rows ``X`` about ``shift`` (float64 sums over blocks)."""
    n, D = X.shape
    total, scatter = np.zeros(D), np.zeros((D, D))
    wsum = 0.0
    step = max(1, (1 << 20) // max(1, 8 * D))
    for a in range(0, n, step):
        Xc = np.asarray(X[a:a + step], dtype=np.float64) - shift
        if weights is None:
            total += Xc.sum(axis=0)
            scatter += Xc.T @ Xc
            wsum += Xc.shape[0]
        else:
            w = np.asarray(weights[a:a + step], dtype=np.float64)
            total += w @ Xc
            scatter += (Xc * w[:, None]).T @ Xc
            wsum += float(w.sum())
    return DataMoments(float(n), wsum, 0.0, total, scatter)


# -- the prior ------------------------------------------------------------------------


def check_priors(settings: dict[str, Any], covariance_type: str, n_features: int) -> None:
    """One clear error for a prior scikit-learn would refuse (before any data pass).

    Raises
    ------
    ConfigError
        (a ``ValueError``, as scikit-learn raises) naming the prior.
    """
    D, ct = n_features, covariance_type
    dof = settings.get("degrees_of_freedom_prior")
    if dof is not None and not dof > D - 1.0:
        raise ConfigError(f"degrees_of_freedom_prior must be greater than n_features - 1 = {D - 1}; "
                          f"got {float(dof):.3f}")
    m = settings.get("mean_prior")
    if m is not None:
        m = np.asarray(m, dtype=np.float64)
        if m.shape != (D,):
            raise ConfigError(f"mean_prior must have shape ({D},); got {m.shape}")
        if not np.isfinite(m).all():
            raise ConfigError("mean_prior must be finite")
    c = settings.get("covariance_prior")
    if c is None:
        return
    c = np.asarray(c, dtype=np.float64)
    if ct in ("full", "tied"):
        if c.shape != (D, D):
            raise ConfigError(f"covariance_prior must have shape ({D}, {D}) for covariance_type={ct!r}; "
                              f"got {c.shape}")
        if not np.isfinite(c).all() or not np.allclose(c, c.T):
            raise ConfigError("covariance_prior must be a symmetric positive definite matrix; it is not symmetric")
        low = float(linalg.eigvalsh(c)[0])
        if not low > 0.0:
            raise ConfigError("covariance_prior must be a symmetric positive definite matrix; "
                              f"its smallest eigenvalue is {low:.3g}")
    elif ct == "diag":
        if c.shape != (D,):
            raise ConfigError(f"covariance_prior must have shape ({D},) for covariance_type='diag'; got {c.shape}")
        if not (c > 0).all():
            raise ConfigError("covariance_prior must be positive for covariance_type='diag'; "
                              f"entry {int(np.flatnonzero(~(c > 0))[0])} is not")
    elif c.ndim != 0 or not c > 0:
        raise ConfigError(f"covariance_prior must be a positive number for covariance_type='spherical'; "
                          f"got {settings.get('covariance_prior')!r}")


def resolve_priors(settings: dict[str, Any], moments: DataMoments, shift: np.ndarray, covariance_type: str,
                   n_components: int) -> Priors:
    """The prior, with scikit-learn's defaults from the data's moments.

    Defaults: ``1/K`` concentration, mean precision 1, the data's mean,
    ``D`` degrees of freedom, and the data's covariance with ``ddof=1``
    (full, tied), its diagonal (diag) or the diagonal's mean (spherical).
    Sample weights count as frequencies (weight 2 is the row twice).
    """
    D = shift.shape[0]
    W = float(moments.weight_sum)
    mean = shift + moments.total / W
    g = settings.get("weight_concentration_prior")
    b = settings.get("mean_precision_prior")
    dof = settings.get("degrees_of_freedom_prior")
    m = settings.get("mean_prior")
    c = settings.get("covariance_prior")
    if c is None:
        if not W > 1.0:
            raise DataError(f"the data's total weight is {W:g}; the default covariance_prior "
                            "(the data's covariance, ddof=1) needs more than 1")
        cov = (moments.scatter - np.outer(moments.total, moments.total) / W) / (W - 1.0)
        cov = 0.5 * (cov + cov.T)
        c = {"full": lambda: cov, "tied": lambda: cov, "diag": lambda: np.diag(cov).copy(),
             "spherical": lambda: np.asarray(np.diag(cov).mean())}[covariance_type]()
    return Priors(1.0 / n_components if g is None else float(g), 1.0 if b is None else float(b),
                  mean if m is None else np.asarray(m, dtype=np.float64), float(D) if dof is None else float(dof),
                  np.asarray(c, dtype=np.float64), W)


# -- the variational M-step -------------------------------------------------------------


def gaussian_estimates(stats: GMMStats, about: np.ndarray, covariance_type: str, reg_covar: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ``_estimate_gaussian_parameters`` from moments about ``about`` (the means used).

    Returns ``n_k`` (with ``10·eps``), the weighted means ``x̄_k`` and the
    empirical covariances ``S_k`` (+ ``reg_covar``), shaped by covariance type.
    """
    ct = covariance_type
    nk = np.asarray(stats.resp_sum, dtype=np.float64) + 10.0 * _EPS
    S1 = np.asarray(stats.first_moment, dtype=np.float64)
    S2 = np.asarray(stats.second_moment, dtype=np.float64)
    D = S1.shape[1]
    xk = about + S1 / nk[:, None]
    # About x̄_k instead of the E-step's means: (S2 − S1 S1ᵀ / n_k) / n_k.
    if ct == "full":
        sk = (S2 - np.einsum("ki,kj->kij", S1, S1) / nk[:, None, None]) / nk[:, None, None]
        sk[:, np.arange(D), np.arange(D)] += reg_covar
    elif ct == "tied":
        sk = (S2 - np.einsum("ki,kj->ij", S1, S1 / nk[:, None])) / nk.sum()
        sk[np.arange(D), np.arange(D)] += reg_covar
    elif ct == "diag":
        sk = (S2 - S1**2 / nk[:, None]) / nk[:, None] + reg_covar
    else:
        sk = (S2 - (S1**2).sum(axis=1) / nk) / nk / D + reg_covar
    return nk, xk, sk


def variational_m_step(stats: GMMStats, about: np.ndarray, priors: Priors, covariance_type: str,
                       prior_type: str, reg_covar: float) -> BGMMParams:
    """The variational posterior given the responsibilities summarised in ``stats``.

    ``about`` are the means the moments were taken about. scikit-learn's
    ``_estimate_weights``, ``_estimate_means`` and ``_estimate_wishart_*``.

    Raises
    ------
    CollapsedComponentError
        If a covariance is not positive definite.
    """
    ct = covariance_type
    nk, xk, sk = gaussian_estimates(stats, about, ct, reg_covar)
    K = nk.shape[0]
    g, b0, m0 = priors.weight_concentration_prior, priors.mean_precision_prior, priors.mean_prior
    nu0, psi0 = priors.degrees_of_freedom_prior, priors.covariance_prior
    if prior_type == "dirichlet_process":
        conc = np.stack([1.0 + nk, g + np.hstack((np.cumsum(nk[::-1])[-2::-1], 0.0))])
    else:
        conc = g + nk
    beta = b0 + nk
    means = (b0 * m0 + nk[:, None] * xk) / beta[:, None]
    diff = xk - m0
    if ct == "full":
        nu = nu0 + nk
        cov = psi0 + nk[:, None, None] * sk + (nk * b0 / beta)[:, None, None] * np.einsum("ki,kj->kij", diff, diff)
        cov /= nu[:, None, None]
    elif ct == "tied":
        nu = np.asarray(nu0 + nk.sum() / K)
        cov = psi0 + sk * nk.sum() / K + b0 / K * np.dot((nk / beta) * diff.T, diff)
        cov /= nu
    elif ct == "diag":
        nu = nu0 + nk
        cov = psi0 + nk[:, None] * (sk + (b0 / beta)[:, None] * np.square(diff))
        cov /= nu[:, None]
    else:
        nu = nu0 + nk
        cov = psi0 + nk * (sk + b0 / beta * np.mean(np.square(diff), 1))
        cov /= nu
    return BGMMParams(conc, beta, means, nu, cov, compute_precision_cholesky(cov, ct),
                      np.asarray(g), np.asarray(b0), np.asarray(m0, dtype=np.float64), np.asarray(nu0),
                      np.asarray(psi0, dtype=np.float64), np.asarray(priors.weight_sum))


def priors_of(params: BGMMParams) -> Priors:
    return Priors(float(params.weight_concentration_prior), float(params.mean_precision_prior),
                  np.asarray(params.mean_prior), float(params.degrees_of_freedom_prior),
                  np.asarray(params.covariance_prior), float(params.weight_sum))


# -- what the E-step and the bound need --------------------------------------------------


def expected_weights(conc: np.ndarray) -> np.ndarray:
    """scikit-learn's ``weights_`` from the concentration ((2, K): stick-breaking)."""
    conc = np.asarray(conc, dtype=np.float64)
    if conc.ndim == 2:
        a, b = conc
        tmp = b / (a + b)
        w = a / (a + b) * np.hstack((1.0, np.cumprod(tmp[:-1])))
        return w / np.sum(w)
    return conc / np.sum(conc)


def expected_log_weights(conc: np.ndarray) -> np.ndarray:
    """``E[log π_k]`` under the variational Dirichlet (process) posterior."""
    conc = np.asarray(conc, dtype=np.float64)
    if conc.ndim == 2:
        a, b = conc
        dsum = digamma(a + b)
        return digamma(a) - dsum + np.hstack((0.0, np.cumsum(digamma(b) - dsum)[:-1]))
    return digamma(conc) - digamma(np.sum(conc))


def log_det_precision_terms(params: BGMMParams, covariance_type: str) -> Any:
    """``log det U_k − ½ D log ν_k``: half the log-determinant of the Wishart scale."""
    D = params.means.shape[1]
    return kernel.log_det_cholesky(params.precisions_cholesky, covariance_type, D) \
        - 0.5 * D * np.log(params.degrees_of_freedom)


def component_constants(params: BGMMParams, covariance_type: str) -> np.ndarray:
    """Each component's x-independent term of the expected log joint (the kernel's ``const``).

    ``E[log π_k] + log det U_k − ½D log 2π − ½D log ν_k + ½(E[log|Λ_k|]' − D/β_k)``,
    as scikit-learn's ``_estimate_log_prob`` plus ``_estimate_log_weights``;
    ``U_k`` factors the expected precision ``ν_k W_k``, which whitens x.
    """
    D = params.means.shape[1]
    nu = params.degrees_of_freedom
    log_lambda = D * math.log(2.0) + np.sum(digamma(0.5 * (nu - np.arange(0, D)[:, np.newaxis])), 0)
    const = (expected_log_weights(params.weight_concentration) + log_det_precision_terms(params, covariance_type)
             - 0.5 * D * _LOG_2PI + 0.5 * (log_lambda - D / params.mean_precision))
    return np.broadcast_to(np.asarray(const, dtype=np.float64), (params.n_components,)).copy()


def log_wishart_norm(nu: Any, log_det_chol: Any, n_features: int) -> Any:
    """scikit-learn's ``_log_wishart_norm`` (its ``log π`` term dropped)."""
    return -(nu * log_det_chol + nu * n_features * 0.5 * math.log(2.0)
             + np.sum(gammaln(0.5 * (nu - np.arange(n_features)[:, np.newaxis])), 0))


def lower_bound_total(resp_entropy: float, params: BGMMParams, covariance_type: str) -> float:
    """scikit-learn's ``_compute_lower_bound``: a total over the data, constants dropped.

    ``params`` are those the M-step made from the statistics whose
    ``Σ w r log r`` is ``resp_entropy``.
    """
    D = params.means.shape[1]
    K = params.n_components
    log_det = log_det_precision_terms(params, covariance_type)
    if covariance_type == "tied":
        log_wishart = K * np.sum(log_wishart_norm(params.degrees_of_freedom, log_det, D))
    else:
        log_wishart = np.sum(log_wishart_norm(params.degrees_of_freedom, log_det, D))
    conc = np.asarray(params.weight_concentration)
    if conc.ndim == 2:
        log_norm_weight = -np.sum(betaln(conc[0], conc[1]))
    else:
        log_norm_weight = gammaln(np.sum(conc)) - np.sum(gammaln(conc))
    return float(-resp_entropy - log_wishart - log_norm_weight
                 - 0.5 * D * np.sum(np.log(params.mean_precision)))


# -- unconstrained coordinates (SQUAREM) -----------------------------------------------


def to_vector(params: BGMMParams, covariance_type: str) -> np.ndarray:
    """Log concentrations, log mean precisions, means, ``log(ν − (D − 1))``, Cholesky-log covariances."""
    D = params.means.shape[1]
    return np.concatenate([np.log(params.weight_concentration).ravel(), np.log(params.mean_precision),
                           params.means.ravel(), np.log(np.ravel(params.degrees_of_freedom) - (D - 1.0)),
                           covariance_to_vector(params.covariances, covariance_type)])


def from_vector(vector: np.ndarray, like: BGMMParams, covariance_type: str) -> BGMMParams:
    """Inverse of :func:`to_vector`; the prior and the data's weight come from ``like``."""
    v = np.asarray(vector, dtype=np.float64)
    shapes = [np.shape(like.weight_concentration), np.shape(like.mean_precision), np.shape(like.means),
              np.shape(like.degrees_of_freedom)]
    parts, at = [], 0
    for shape in shapes:
        n = int(np.prod(shape, dtype=int))
        parts.append(v[at:at + n].reshape(shape))
        at += n
    conc, beta, means, nu = parts
    D = like.means.shape[1]
    cov = covariance_from_vector(v[at:], covariance_type, np.shape(like.covariances))
    return dataclasses.replace(like, weight_concentration=np.exp(conc), mean_precision=np.exp(beta), means=means,
                               degrees_of_freedom=np.exp(nu) + (D - 1.0), covariances=cov,
                               precisions_cholesky=compute_precision_cholesky(cov, covariance_type))
