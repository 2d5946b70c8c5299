"""The Gaussian mixture family: statistics, M-step and abilities, as pure numpy.

The E-step is :mod:`dem.families.gaussian_kernel`; the parameters and their
linear algebra :mod:`dem.families.gaussian_params`; the starting points
:mod:`dem.families.mixture_init`; the missing-data variant
:mod:`dem.families.gmm_missing`; the estimator ``GaussianMixture``
:mod:`dem.families.gmm`. Conventions follow scikit-learn's
``GaussianMixture``, and given the same starting parameters the fitted
attributes equal scikit-learn's.

Empty and collapsing components
-------------------------------
A component whose total responsibility falls below ``10·eps·Σw`` is *empty*:
it keeps its previous mean and covariance, and its weight is floored at
``10·eps`` (relative) so it can still win points back later; the iteration
gets a ``Note(kind="empty")``. A component whose covariance (with
``reg_covar`` on the diagonal) is not positive definite has *collapsed*:
:class:`~dem.errors.CollapsedComponentError` (a ``ValueError`` with
scikit-learn's sentence, then dem's detail naming the component) says so,
instead of NaN. At initialisation the fit raises it, as scikit-learn does;
during EM the restart stops with the parameters from before the collapsing
M-step (``Note(kind="collapsed")``, a
:class:`~dem.errors.CollapsedComponentWarning`), so a fit that diverges
still reports its best parameters (scikit-learn's issue 18216).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
from scipy.special import logsumexp

from dem.data.record import Partition
from dem.data.row_random import content_uniforms, row_hashes
from dem.families import gaussian_kernel as kernel
from dem.families.base import (
    Family, FlatParameters, Note, Rebasing, SampledAssignments, Stats, Tempering,
)
from dem.families.gaussian_params import (
    GMMParams, collapsed, compute_precision_cholesky, covariance_from_vector, covariance_to_vector,
    from_log_ratio, log_ratio, params_from,
)

CovarianceType = Literal["full", "tied", "diag", "spherical"]
COVARIANCE_TYPES = kernel.COVARIANCE_TYPES
_EPS = np.finfo(np.float64).eps

#: Annealing's kick at each new temperature, in units of a component's standard deviation.
#: Merged components sit on a saddle that EM leaves slowly; 1% kicks were measured to
#: leave them merged until |Δ| < tol, 30% lets the split happen within a stage.
PERTURBATION = 0.3


@dataclasses.dataclass(frozen=True)
class GMMStats(Stats):
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


def empty_components(resp_sum: np.ndarray, weight_sum: float) -> np.ndarray:
    """Boolean mask of components the M-step treats as empty."""
    return np.asarray(resp_sum) < 10.0 * _EPS * float(weight_sum)


def gmm_m_step(stats: GMMStats, params: GMMParams, covariance_type: str, reg_covar: float) -> GMMParams:
    """New parameters from summed statistics taken under ``params``.

    Raises
    ------
    CollapsedComponentError
        If a covariance is not positive definite after ``reg_covar``.
    """
    ct = covariance_type
    K, D = params.means.shape
    nk = np.asarray(stats.resp_sum, dtype=np.float64)
    total = float(stats.weight_sum)
    empty = empty_components(nk, total)
    safe_nk = np.where(empty, 1.0, nk)
    S1 = np.asarray(stats.first_moment)
    means = np.where(empty[:, None], params.means, params.means + S1 / safe_nk[:, None])
    # About the new means: (S2 − S1 S1ᵀ / n_k) / n_k, with S1, S2 about the old means.
    if ct == "full":
        cov = (stats.second_moment - np.einsum("ki,kj->kij", S1, S1) / safe_nk[:, None, None]) / safe_nk[:, None, None]
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
        cov[:, np.arange(D), np.arange(D)] += reg_covar
        cov = np.where(empty[:, None, None], params.covariances, cov)
    elif ct == "tied":
        live = ~empty
        scatter = stats.second_moment - np.einsum("ki,kj->ij", S1[live], S1[live] / safe_nk[live, None])
        cov = scatter / nk.sum()
        cov = 0.5 * (cov + cov.T)
        cov[np.arange(D), np.arange(D)] += reg_covar
    elif ct == "diag":
        var = (stats.second_moment - S1**2 / safe_nk[:, None]) / safe_nk[:, None]
        cov = np.where(empty[:, None], params.covariances, np.maximum(var, 0.0) + reg_covar)
    else:
        var = (stats.second_moment - (S1**2).sum(axis=1) / safe_nk) / safe_nk / D
        cov = np.where(empty, params.covariances, np.maximum(var, 0.0) + reg_covar)
    weights = np.maximum(nk, 10.0 * _EPS * total)
    weights = weights / weights.sum()
    return GMMParams(weights, means, cov, compute_precision_cholesky(cov, ct))


def rebase_moments(stats: GMMStats, old_means: np.ndarray, new_means: np.ndarray,
                   covariance_type: str) -> GMMStats:
    """Moments about ``old_means`` re-expressed about ``new_means`` (exact algebra).

    With δ = m − m': Σr(x−m') = S1 + n δ and Σr(x−m')(x−m')ᵀ = S2 + S1δᵀ + δS1ᵀ + n δδᵀ.
    """
    nk = np.asarray(stats.resp_sum)
    S1 = np.asarray(stats.first_moment)
    d = np.asarray(old_means) - np.asarray(new_means)
    S2 = np.asarray(stats.second_moment)
    if covariance_type in ("full", "tied"):
        cross = (S1[:, :, None] * d[:, None, :] + d[:, :, None] * S1[:, None, :]
                 + nk[:, None, None] * d[:, :, None] * d[:, None, :])
        S2 = S2 + (cross if covariance_type == "full" else cross.sum(axis=0))
    elif covariance_type == "diag":
        S2 = S2 + 2.0 * S1 * d + nk[:, None] * d * d
    else:
        S2 = S2 + 2.0 * (S1 * d).sum(axis=1) + nk * (d * d).sum(axis=1)
    return dataclasses.replace(stats, first_moment=S1 + nk[:, None] * d, second_moment=S2)


def gmm_to_vector(params: GMMParams, covariance_type: str) -> np.ndarray:
    """Log-ratio weights, means, and covariances in Cholesky-log coordinates."""
    return np.concatenate([log_ratio(params.weights), params.means.ravel(),
                           covariance_to_vector(params.covariances, covariance_type)])


def gmm_from_vector(vector: np.ndarray, like: GMMParams, covariance_type: str) -> GMMParams:
    """Inverse of :func:`gmm_to_vector`; ``like`` gives the shapes.

    Raises
    ------
    CollapsedComponentError
        If a covariance is not finite and positive definite in floating point.
    """
    K, D = like.means.shape
    v = np.asarray(vector, dtype=np.float64)
    weights = from_log_ratio(v[: K - 1], (K,))
    means = v[K - 1: K - 1 + K * D].reshape(K, D)
    cov = covariance_from_vector(v[K - 1 + K * D:], covariance_type, np.shape(like.covariances))
    if not np.isfinite(cov).all():
        raise collapsed("a covariance overflowed to infinity")
    return GMMParams(weights, means, cov, compute_precision_cholesky(cov, covariance_type))


def perturb_means(params: GMMParams, covariance_type: str, rng: np.random.Generator) -> GMMParams:
    """Means moved by :data:`PERTURBATION` of each component's spread, in a random direction.

    At high temperature annealing merges components; exactly merged ones would
    stay merged, so each new temperature starts from separated copies and the
    unstable merged state splits where the data supports it (Rose, 1998).
    """
    cov = params.covariances
    var = {"full": lambda: np.diagonal(cov, axis1=1, axis2=2).mean(axis=1),
           "tied": lambda: np.full(len(params.weights), np.diag(cov).mean()),
           "diag": lambda: cov.mean(axis=1), "spherical": lambda: cov}[covariance_type]()
    step = PERTURBATION * np.sqrt(var)[:, None] * rng.standard_normal(params.means.shape)
    return dataclasses.replace(params, means=params.means + step)


def random_responsibilities(seed: int, X: np.ndarray, n_components: int) -> np.ndarray:
    """Uniform random responsibilities (K, rows) of the rows ``X``, keyed by (seed, a row's content).

    Keyed by content, not by global row, so a row of sample weight w adds
    exactly what w copies of it add, wherever the copies are; the draws do
    not depend on the partitioning either.
    """
    h = row_hashes(X)
    R = np.stack([content_uniforms((seed, 13, k), h) for k in range(n_components)])
    return R / R.sum(axis=0)


def n_mixture_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Free parameters of a Gaussian mixture, as scikit-learn counts them."""
    K, D = n_components, n_features
    cov = {"full": K * D * (D + 1) / 2.0, "tied": D * (D + 1) / 2.0, "diag": K * D,
           "spherical": K}[covariance_type]
    return int(cov + K * D + K - 1)


def empty_notes(stats: GMMStats) -> list[Note]:
    return [Note("empty", int(k), f"component {int(k)} is empty; it keeps its previous mean and covariance")
            for k in np.flatnonzero(empty_components(stats.resp_sum, stats.weight_sum))]


class GaussianMixtureAbilities(Tempering, FlatParameters, Rebasing):
    """What the Gaussian mixture families share over :class:`GMMParams`.

    The parameter count, validated parameters, and the abilities annealing
    (tempering), SQUAREM (flat parameters) and online EM (rebasing) use.
    Mixed into :class:`GaussianMixtureFamily` and
    :class:`~dem.families.gmm_missing.MissingDataGaussianMixtureFamily`, ahead
    of :class:`~dem.families.base.Family` so that its ``n_parameters`` is the
    one the family has; the family has the fields ``n_components``,
    ``covariance_type`` and ``beta``.
    """

    def n_parameters(self, n_features: int) -> int:
        """Number of free parameters (for BIC/AIC), as scikit-learn counts them."""
        return n_mixture_parameters(self.covariance_type, self.n_components, n_features)

    def params_from(self, weights: Any, means: Any, covariances: Any = None, precisions: Any = None) -> GMMParams:
        """Validated parameters from weights, means and covariances or precisions."""
        return params_from(self.covariance_type, weights, means, covariances, precisions)

    def tempered(self, beta: float) -> Family:
        return dataclasses.replace(self, beta=float(beta))

    def perturb(self, params: GMMParams, rng: np.random.Generator) -> GMMParams:
        return perturb_means(params, self.covariance_type, rng)

    def to_vector(self, params: GMMParams) -> np.ndarray:
        return gmm_to_vector(params, self.covariance_type)

    def from_vector(self, vector: np.ndarray, like: GMMParams) -> GMMParams:
        return gmm_from_vector(vector, like, self.covariance_type)

    def rebase(self, stats: GMMStats, old: GMMParams, new: GMMParams) -> GMMStats:
        return rebase_moments(stats, old.means, new.means, self.covariance_type)


@dataclasses.dataclass(frozen=True)
class GaussianMixtureFamily(GaussianMixtureAbilities, Family, SampledAssignments):
    """A Gaussian mixture as pure functions over partitions.

    Parameters
    ----------
    n_components : int
    covariance_type : {"full", "tied", "diag", "spherical"}
    reg_covar : float
        Added to the diagonal of every covariance in the M-step.
    beta : float
        Inverse temperature of deterministic annealing (Ueda and Nakano,
        1998): responsibilities are ``softmax(β·log(w_k N_k(x)))`` and the
        objective is the tempered free energy ``(1/β)·Σ log Σ_k (w_k
        N_k(x))^β``, which EM increases at fixed β. β = 1 is plain EM.
    """

    n_components: int
    covariance_type: CovarianceType = "full"
    reg_covar: float = 1e-6
    beta: float = 1.0

    kind = "gmm"
    params_type = GMMParams

    def components(self, params: GMMParams) -> kernel.Components:
        return kernel.mixture_components(params.weights, params.means, params.precisions_cholesky,
                                         self.covariance_type)

    def _stats(self, acc: dict) -> GMMStats:
        acc = dict(acc)
        acc.pop("resp_entropy", None)
        return GMMStats(**{k: (float(v) if np.ndim(v) == 0 else v) for k, v in acc.items()})

    def e_step(self, params: GMMParams, part: Partition) -> GMMStats:
        """Statistics of one partition under ``params``.

        Raises
        ------
        DataError
            If the block holds NaN or inf (naming the global row), or a
            sample weight is negative or not finite.
        """
        return self._stats(kernel.e_step_sums(self.components(params), part, beta=self.beta))

    def e_step_members(self, params: list[GMMParams], part: Partition) -> list[GMMStats]:
        """Statistics of several members in one read of ``part``, their densities one wider product.

        The rows are centred on a point of the data, not of any member, but
        BLAS may round a wider product differently (OpenBLAS does), so each
        member's statistics equal those of :meth:`e_step` alone only to
        rounding: which members stack is decided on the driver
        (:class:`dem.engine.tasks.Batch`), never per task.
        """
        sums = kernel.e_step_sums_members([self.components(p) for p in params], part, beta=self.beta)
        return [self._stats(acc) for acc in sums]

    def e_step_sampled(self, params: GMMParams, part: Partition, key: tuple[int, ...]) -> GMMStats:
        return self._stats(kernel.e_step_sums(self.components(params), part, sample_key=key))

    def m_step(self, stats: GMMStats, params: GMMParams) -> GMMParams:
        return gmm_m_step(stats, params, self.covariance_type, self.reg_covar)

    def notes(self, stats: GMMStats, params: GMMParams) -> list[Note]:
        return empty_notes(stats)

    def weighted_log_prob(self, params: GMMParams, X: Any) -> np.ndarray:
        """``log w_k + log N(x_n | μ_k, Σ_k)`` for every row and component, (n, K)."""
        return kernel.weighted_log_prob(self.components(params), X, params.shift)

    def log_density(self, params: GMMParams, part: Partition) -> np.ndarray:
        return logsumexp(self.weighted_log_prob(params, part.X), axis=1)

    def zero_stats(self, n_features: int) -> GMMStats:
        return self._stats(kernel.new_accumulator(self.covariance_type, self.n_components, n_features))

    def assignment_stats(self, params: GMMParams, part: Partition, responsibilities: str = "nearest",
                         seed: int = 0) -> GMMStats:
        """Statistics from initial responsibilities instead of the posterior (the init pass).

        ``"nearest"`` assigns each row wholly to the nearest mean in
        ``params`` (Euclidean), as scikit-learn's k-means init does;
        ``"random"`` draws uniform responsibilities keyed by (seed, global row).
        """
        X = part.X
        n, D = X.shape
        K = self.n_components
        prep = kernel.prepare(self.components(params), params.shift)
        cm = prep.centred_means
        cm_sq = (cm * cm).sum(axis=1)[:, None]
        acc = kernel.new_accumulator(self.covariance_type, K, D)
        for a in range(0, n, prep.rows):
            XcT = kernel.centred_block(prep, X, a, a + prep.rows)
            if not np.isfinite(XcT).all():
                kernel.raise_non_finite(X, a, XcT.sum(axis=0), part.start)
            m = XcT.shape[1]
            if responsibilities == "nearest":
                RT = np.zeros((K, m))
                RT[(cm_sq - 2.0 * (cm @ XcT)).argmin(axis=0), np.arange(m)] = 1.0
            else:
                RT = random_responsibilities(seed, X[a : a + m], K)
            w = None
            if part.weights is not None:
                w = kernel.checked_weights(part.weights, a, a + prep.rows, part.start)
                RT *= w
            kernel.accumulate_moments(acc, self.covariance_type, XcT, RT, cm, w)
        return self._stats(acc)
