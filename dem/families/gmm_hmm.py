"""Hidden Markov models with Gaussian-mixture emissions: the family and ``GMMHMM``.

A mixture of ``n_mix`` Gaussians per state (hmmlearn's ``GMMHMM``);
``tied`` means one covariance per state, shared by its mixture components.
The machinery every HMM shares is :mod:`dem.families.hmm`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.special import logsumexp

from dem.errors import ConfigError, DataError
from dem.estimator.base import ConfigKey, store_params
from dem.estimator.params import Integral, Interval, Real, StrOptions
from dem.estimator.sequence import HMMEstimator, check_distribution, kmeans_centres
from dem.families.base import FlatParameters, Rebasing
from dem.families.gaussian_params import covariance_from_vector, covariance_to_vector
from dem.families.hmm import HMMFamily, HMMStats, _finite_block, _ratio_or_previous
from dem.families.hmm_coordinates import (
    simplex_rows_from_vector, simplex_rows_to_vector, transitions_from_vector, transitions_to_vector,
)
from dem.families.hmm_gaussians import (
    COVARIANCE_TYPES, ROW_BLOCK, Gaussians, check_covariances, packed_outer, shift_moments, unpack_symmetric,
)


@dataclasses.dataclass(frozen=True)
class GMMHMMParams:
    """Parameters of an HMM with Gaussian-mixture emissions.

    Attributes
    ----------
    weights : (K, M) mixture weights per state
    means : (K, M, D)
    covars : (K, M, D, D) full, (K, D, D) tied, (K, M, D) diag, (K, M) spherical
    """

    startprob: np.ndarray
    transmat: np.ndarray
    weights: np.ndarray
    means: np.ndarray
    covars: np.ndarray


@dataclasses.dataclass(frozen=True)
class GMMHMMStats(HMMStats):
    """Mixture-emission moments about the shift ``c`` (mean of all component means).

    ``post[k] = Σ γ_k``; ``post_mix[k, m] = Σ γ_km``;
    ``first_moment[k, m] = Σ γ_km (x − c)``; ``second_moment`` is
    ``Σ γ_km (x − c)(x − c)ᵀ`` packed (full, (K, M, P)), its diagonal (diag,
    (K, M, D)), its trace (spherical, (K, M)) or ``Σ γ_k (x − c)(x − c)ᵀ``
    packed per state (tied, (K, P)).
    """

    post: np.ndarray
    post_mix: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


@dataclasses.dataclass(frozen=True)
class _GMMPrep:
    shift: np.ndarray
    gaussians: Gaussians       # K·M components, state-major
    log_weights: np.ndarray    # (K·M,)


@dataclasses.dataclass(frozen=True, eq=False)
class GMMHMMFamily(HMMFamily, FlatParameters, Rebasing):
    """HMM with a mixture of ``n_mix`` Gaussians per state (hmmlearn's ``GMMHMM``).

    The priors are given at full shape, as hmmlearn's ``_fix_priors_shape``
    makes them: ``weights_prior`` (K, M), ``means_prior`` (K, M, D),
    ``means_weight`` (K, M), ``covars_prior`` (K, M, D, D) full / (K, D, D)
    tied / (K, M, D) diag / (K, M) spherical, ``covars_weight`` (K, M) full /
    (K,) tied / (K, M, D) diag / (K, M) spherical.

    Notes
    -----
    As in hmmlearn, the covariance statistics are taken about the means of
    the E-step (``Σ γ_km (x − μ_km^old)(x − μ_km^old)ᵀ``), while the prior term
    uses the new means. That is a generalised M-step (the means step is exact
    for any covariance, and the covariance step is exact for the old means),
    so the objective still cannot decrease.
    """

    params: str = "stmcw"
    n_mix: int = 1
    covariance_type: str = "diag"
    weights_prior: Any = 1.0
    means_prior: Any = 0.0
    means_weight: Any = 0.0
    covars_prior: Any = 0.0
    covars_weight: Any = 0.0

    stats_cls = GMMHMMStats
    kind = "gmm_hmm"
    params_type = GMMHMMParams

    def check_block(self, params: GMMHMMParams | None, X: np.ndarray, row_offset: int) -> np.ndarray:
        return _finite_block(X, row_offset, params)

    def prepare(self, params: GMMHMMParams) -> _GMMPrep:
        K, M, D = params.means.shape
        means = params.means.reshape(K * M, D)
        shift = means.mean(axis=0)
        ct = self.covariance_type
        names = [f"state {k}, mixture component {m}" for k in range(K) for m in range(M)]
        covars = np.asarray(params.covars)
        if ct == "tied":
            covs, kind = np.repeat(covars, M, axis=0), "full"
        elif ct == "full":
            covs, kind = covars.reshape(K * M, D, D), "full"
        elif ct == "diag":
            covs, kind = covars.reshape(K * M, D), "diag"
        else:
            covs, kind = covars.reshape(K * M), "spherical"
        with np.errstate(divide="ignore"):
            log_w = np.log(params.weights).reshape(K * M)
        return _GMMPrep(shift, Gaussians.from_covariances(means, covs, kind, shift, names), log_w)

    def _component_log(self, prep: _GMMPrep, Xc: np.ndarray) -> np.ndarray:
        """``log w_km + log N(x | μ_km, Σ_km)``, (n, K, M)."""
        lp = prep.gaussians.log_density(Xc) + prep.log_weights
        return lp.reshape(Xc.shape[0], self.n_components, self.n_mix)

    def log_emission(self, prep: _GMMPrep, Xb: np.ndarray) -> np.ndarray:
        out = np.empty((Xb.shape[0], self.n_components))
        with np.errstate(under="ignore", divide="ignore"):
            for a in range(0, Xb.shape[0], ROW_BLOCK):
                Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
                out[a : a + ROW_BLOCK] = logsumexp(self._component_log(prep, Xc), axis=2)
        return out

    def _new_emission_acc(self, params: GMMHMMParams) -> dict[str, np.ndarray]:
        K, M, D = params.means.shape
        P = D * (D + 1) // 2
        second = {"full": (K, M, P), "tied": (K, P), "diag": (K, M, D), "spherical": (K, M)}
        return {"post": np.zeros(K), "post_mix": np.zeros((K, M)), "first_moment": np.zeros((K, M, D)),
                "second_moment": np.zeros(second[self.covariance_type])}

    def _accumulate(self, prep: _GMMPrep, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        K, M = self.n_components, self.n_mix
        ct = self.covariance_type
        for a in range(0, Xb.shape[0], ROW_BLOCK):
            Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
            g = gamma[a : a + ROW_BLOCK]
            lp = self._component_log(prep, Xc)
            with np.errstate(under="ignore", invalid="ignore"):
                lp -= logsumexp(lp, axis=2, keepdims=True)
                g_mix = (g[:, :, None] * np.exp(lp)).reshape(-1, K * M)  # γ_km
            g_mix = np.nan_to_num(g_mix, copy=False)
            D = Xc.shape[1]
            acc["post"] += g.sum(axis=0)
            acc["post_mix"] += g_mix.sum(axis=0).reshape(K, M)
            acc["first_moment"] += (g_mix.T @ Xc).reshape(K, M, D)
            if ct == "full":
                acc["second_moment"] += (g_mix.T @ packed_outer(Xc)).reshape(K, M, -1)
            elif ct == "tied":
                acc["second_moment"] += g.T @ packed_outer(Xc)
            elif ct == "diag":
                acc["second_moment"] += (g_mix.T @ (Xc * Xc)).reshape(K, M, D)
            else:
                acc["second_moment"] += (g_mix.T @ np.einsum("ij,ij->i", Xc, Xc)).reshape(K, M)

    def _m_step_emission(self, stats: GMMHMMStats, params: GMMHMMParams) -> dict[str, np.ndarray]:
        # hmmlearn's GMMHMM._do_mstep; priors at full shape (see class notes).
        K, M, D = params.means.shape
        ct = self.covariance_type
        c = params.means.reshape(K * M, D).mean(axis=0)
        post = np.asarray(stats.post)
        post_mix = np.asarray(stats.post_mix)
        F = np.asarray(stats.first_moment)
        out: dict[str, np.ndarray] = {}
        weights = params.weights
        if "w" in self.params:
            alphas_minus_one = np.asarray(self.weights_prior, dtype=np.float64) - 1.0
            w_n = post_mix + alphas_minus_one
            w_d = (post + alphas_minus_one.sum(axis=1))[:, None]
            weights = out["weights"] = _ratio_or_previous(w_n, w_d, params.weights)
        lambdas = np.asarray(self.means_weight, dtype=np.float64)
        mus = np.asarray(self.means_prior, dtype=np.float64)
        means = params.means
        if "m" in self.params:
            m_n = lambdas[:, :, None] * mus + (F + post_mix[:, :, None] * c)
            m_d = post_mix + lambdas
            # An unused component (zero weight, no data) would get 0/0: its
            # mean is irrelevant, so hmmlearn divides by 1 (before the
            # covariances, where NaN would spread through tied covariances).
            m_d[(weights == 0) & (m_n == 0).all(axis=-1)] = 1.0
            means = out["means"] = _ratio_or_previous(m_n, m_d[:, :, None], params.means)
        if "c" in self.params:
            centered_means = means - mus
            d = params.means - c  # E-step means about the shift
            nus = np.asarray(self.covars_weight, dtype=np.float64)
            psis = np.asarray(self.covars_prior, dtype=np.float64)
            if ct in ("full", "tied"):
                # Σγ_km (x−μ_old)(x−μ_old)ᵀ = S − F dᵀ − d Fᵀ + N d dᵀ, all about c
                cross = (-F[..., :, None] * d[..., None, :] - d[..., :, None] * F[..., None, :]
                         + post_mix[..., None, None] * d[..., :, None] * d[..., None, :])
                dots = centered_means[..., :, None] * centered_means[..., None, :]
                if ct == "full":
                    c_n_stat = unpack_symmetric(np.asarray(stats.second_moment), D) + cross
                    c_n = np.transpose(psis, (0, 1, 3, 2)) + lambdas[:, :, None, None] * dots + c_n_stat
                    c_d = (post_mix + 1 + nus + D + 1)[:, :, None, None]
                else:
                    c_n_stat = unpack_symmetric(np.asarray(stats.second_moment), D) + cross.sum(axis=1)
                    c_n = np.einsum("ij,ijkl->ikl", lambdas, dots) + np.transpose(psis, (0, 2, 1)) + c_n_stat
                    c_d = (post + M + nus + D + 1)[:, None, None]
            elif ct == "diag":
                c_n_stat = np.asarray(stats.second_moment) - 2.0 * d * F + post_mix[:, :, None] * d * d
                c_n = lambdas[:, :, None] * centered_means**2 + 2 * nus + c_n_stat
                c_d = post_mix[:, :, None] + 1 + 2 * (psis + 1)
            else:
                c_n_stat = (np.asarray(stats.second_moment) - 2.0 * np.einsum("kmd,kmd->km", d, F)
                            + post_mix * np.einsum("kmd,kmd->km", d, d))
                c_n = lambdas * np.einsum("...i,...i", centered_means, centered_means) + 2 * nus + c_n_stat
                c_d = D * (post_mix + 1) + 2 * (psis + 1)
            out["covars"] = _ratio_or_previous(c_n, c_d, params.covars)
        return out

    def free_scalars(self, n_features: int) -> dict[str, int]:
        K, D, M = self.n_components, n_features, self.n_mix
        return {**super().free_scalars(n_features), "m": K * M * D,
                "c": {"spherical": K * M, "diag": K * M * D, "full": K * M * D * (D + 1) // 2,
                      "tied": K * D * (D + 1) // 2}[self.covariance_type],
                "w": K * (M - 1)}

    def emit(self, params: GMMHMMParams, state: int, random_state: np.random.RandomState) -> Any:
        _, M, D = params.means.shape
        m = random_state.choice(M, p=params.weights[state])
        ct = self.covariance_type
        if ct == "tied":
            cov = params.covars[state]
        elif ct == "full":
            cov = params.covars[state, m]
        elif ct == "diag":
            cov = np.diag(params.covars[state, m])
        else:
            cov = np.eye(D) * params.covars[state, m]
        return random_state.multivariate_normal(params.means[state, m], cov)

    def rebase(self, stats: GMMHMMStats, old: GMMHMMParams, new: GMMHMMParams) -> GMMHMMStats:
        """Moments about the mean of ``old``'s component means moved to that of ``new``'s (online EM)."""
        D = old.means.shape[2]
        delta = old.means.reshape(-1, D).mean(axis=0) - new.means.reshape(-1, D).mean(axis=0)
        F, S = np.asarray(stats.first_moment), np.asarray(stats.second_moment)
        ct = self.covariance_type
        if ct == "tied":  # one scatter per state, weighted by the state posteriors
            _, second = shift_moments(F.sum(axis=1), S, stats.post, delta, "packed")
            first = F + np.asarray(stats.post_mix)[..., None] * delta
        else:
            form = {"full": "packed", "diag": "diag", "spherical": "trace"}[ct]
            first, second = shift_moments(F, S, stats.post_mix, delta, form)
        return dataclasses.replace(stats, first_moment=first, second_moment=second)

    def _covariance_kind(self) -> tuple[str, tuple[int, ...]]:
        K, M = self.n_components, self.n_mix
        return ("full", (K, -1)) if self.covariance_type == "tied" else (self.covariance_type, (K * M, -1))

    def _flat_covariances(self, covars: np.ndarray, n_features: int) -> tuple[str, np.ndarray]:
        # Tied covariances are one full matrix per state; the others one per (state, component).
        ct = "full" if self.covariance_type == "tied" else self.covariance_type
        D = n_features
        return ct, np.asarray(covars).reshape((-1, D, D) if ct == "full" else (-1,) + np.shape(covars)[2:])

    def to_vector(self, params: GMMHMMParams) -> np.ndarray:
        """Log-ratio transitions and mixture weights, means, Cholesky-log covariances (updated letters only)."""
        ct, covs = self._flat_covariances(params.covars, params.means.shape[2])
        return np.concatenate([
            transitions_to_vector(params, self.params),
            simplex_rows_to_vector(params.weights) if "w" in self.params else np.empty(0),
            params.means.ravel() if "m" in self.params else np.empty(0),
            covariance_to_vector(covs, ct) if "c" in self.params else np.empty(0)])

    def from_vector(self, vector: np.ndarray, like: GMMHMMParams) -> GMMHMMParams:
        """Parameters from :meth:`to_vector`'s coordinates; fixed parts and zeros come from ``like``.

        Raises
        ------
        CollapsedComponentError
            If a covariance is not positive definite in floating point.
        """
        startprob, transmat, rest = transitions_from_vector(vector, like, self.params)
        weights, means, covars = like.weights, like.means, like.covars
        if "w" in self.params:
            weights, rest = simplex_rows_from_vector(rest, like.weights)
        if "m" in self.params:
            n = like.means.size
            means, rest = rest[:n].reshape(like.means.shape), rest[n:]
        if "c" in self.params:
            ct, flat = self._flat_covariances(like.covars, like.means.shape[2])
            covars = covariance_from_vector(rest, ct, flat.shape).reshape(like.covars.shape)
        out = GMMHMMParams(startprob, transmat, weights, means, covars)
        self.prepare(out)  # refuses a covariance that is not positive definite in floating point
        return out


class GMMHMM(HMMEstimator):
    """Hidden Markov model with Gaussian-mixture emissions (hmmlearn's ``GMMHMM``), on Dask.

    Parameters are hmmlearn's (``n_mix`` components per state;
    ``covariance_type`` "tied" shares one covariance among a state's
    components; ``weights_prior``, ``means_prior``, ``means_weight``,
    ``covars_prior``, ``covars_weight`` with hmmlearn's per-type defaults when
    None; ``params``/``init_params`` letters 's', 't', 'm', 'c', 'w') plus
    dem's, as for :class:`GaussianHMM`.

    Attributes
    ----------
    startprob_, transmat_ : as GaussianHMM
    weights_ : (n_components, n_mix)
    means_ : (n_components, n_mix, n_features)
    covars_ : (K, M) spherical, (K, M, D) diag, (K, M, D, D) full, (K, D, D) tied
    n_features : int
    monitor_, history_ : as GaussianHMM
    """

    _kind = "gmm_hmm"
    _attributes = {"s": "startprob_", "t": "transmat_", "w": "weights_", "m": "means_", "c": "covars_"}
    _config_keys = {
        "model.n_components": ConfigKey("n_components", 1, "hidden states"),
        "model.n_mix": ConfigKey("n_mix", 1, "Gaussians per state"),
        "model.covariance_type": ConfigKey("covariance_type", "diag", "covariance structure of the emissions"),
        "model.min_covar": ConfigKey("min_covar", 1e-3, "floor added to initial covariances"),
        "model.algorithm": ConfigKey("algorithm", "viterbi", "decoder of predict: viterbi or map"),
    }
    _parameter_constraints = {
        **HMMEstimator._parameter_constraints,
        "n_mix": [Interval(Integral, 1, None, closed="left")],
        "min_covar": [Interval(Real, 0.0, None, closed="left")],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "weights_prior": ["array-like", Real], "means_prior": ["array-like", Real],
        "means_weight": ["array-like", Real], "covars_prior": ["array-like", Real, None],
        "covars_weight": ["array-like", Real, None],
    }

    def __init__(self, n_components: int = 1, n_mix: int = 1, min_covar: float = 1e-3,
                 startprob_prior: Any = 1.0, transmat_prior: Any = 1.0, weights_prior: Any = 1.0,
                 means_prior: Any = 0.0, means_weight: Any = 0.0, covars_prior: Any = None,
                 covars_weight: Any = None, algorithm: str = "viterbi", covariance_type: str = "diag",
                 random_state: Any = None, n_iter: int = 10, tol: float = 1e-2, verbose: bool = False,
                 params: str = "stmcw", init_params: str = "stmcw", implementation: str = "log", *,
                 n_init: int = 1, max_sequence_bytes: int | None = None, accelerate: str | None = None,
                 learning_method: str = "batch", learning_decay: float = 0.7, learning_offset: float = 10.0,
                 batch_size: int | None = None, client: Any = None, partition_rows: int | None = None,
                 fan_in: int = 8, cache: Any = "auto", checkpoint_dir: str | None = None,
                 checkpoint_every: int = 1, keep_checkpoints: int = 3,
                 storage_options: dict | None = None) -> None:
        store_params(self, locals())

    def _priors(self, n_features: int) -> dict[str, np.ndarray]:
        """hmmlearn's ``_init_covar_priors`` and ``_fix_priors_shape``, without mutating self."""
        K, D, M, ct = self.n_components, n_features, self.n_mix, self.covariance_type
        default_prior, default_weight = {
            "full": (0.0, -(1.0 + D + 1.0)), "tied": (0.0, -(M + D + 1.0)),
            "diag": (-1.5, 0.0), "spherical": (-(M + 2.0) / 2.0, 0.0)}[ct]
        cp = default_prior if self.covars_prior is None else self.covars_prior
        cw = default_weight if self.covars_weight is None else self.covars_weight
        cov_shape, weight_shape = {"full": ((K, M, D, D), (K, M)), "tied": ((K, D, D), (K,)),
                                   "diag": ((K, M, D), (K, M, D)), "spherical": ((K, M), (K, M))}[ct]

        def shaped(name: str, v: Any, shape: tuple) -> np.ndarray:
            try:
                return np.broadcast_to(np.asarray(v, dtype=np.float64), shape).copy()
            except ValueError:
                raise ConfigError(f"{name} cannot be broadcast to shape {shape}; got shape "
                                  f"{np.shape(v)}") from None

        return {"weights_prior": shaped("weights_prior", self.weights_prior, (K, M)),
                "means_prior": shaped("means_prior", self.means_prior, (K, M, D)),
                "means_weight": shaped("means_weight", self.means_weight, (K, M)),
                "covars_prior": shaped("covars_prior", cp, cov_shape),
                "covars_weight": shaped("covars_weight", cw, weight_shape)}

    def _family(self, n_features: int) -> GMMHMMFamily:
        return GMMHMMFamily(
            n_components=int(self.n_components), params=self.params, startprob_prior=self.startprob_prior,
            transmat_prior=self.transmat_prior, n_mix=int(self.n_mix), covariance_type=self.covariance_type,
            **self._priors(n_features))

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int, n_features: int) -> dict:
        K, M, D, ct = self.n_components, self.n_mix, n_features, self.covariance_type
        cv = None
        if summary is not None:
            cv = np.atleast_2d(summary["cov"]) + self.min_covar * np.eye(D)
        means = user.get("m")
        if "m" in needs:
            # hmmlearn's GMMHMM._init: k-means into states, then into mixture components.
            sample = summary["sample"]
            if sample.shape[0] < K:
                raise DataError(f"X has {sample.shape[0]} samples, fewer than n_components={K}")
            centres, labels = kmeans_centres(sample, K, seed)
            main_centroid = centres.mean(axis=0)
            rng = np.random.RandomState(seed)
            parts = []
            for label in range(K):
                cluster = sample[labels == label]
                if cluster.shape[0] >= M:
                    parts.append(kmeans_centres(cluster, M, seed)[0])
                else:
                    parts.append(rng.multivariate_normal(main_centroid, cov=cv, size=M))
            means = np.stack(parts)
        weights = np.full((K, M), 1.0 / M) if "w" in needs else user["w"]
        if "c" in needs:
            covars = {"tied": np.tile(cv, (K, 1, 1)), "full": np.tile(cv, (K, M, 1, 1)),
                      "diag": np.tile(np.diag(cv), (K, M, 1)), "spherical": np.full((K, M), cv.mean())}[ct]
        else:
            covars = user["c"]
        return {"weights": np.asarray(weights, dtype=np.float64), "means": np.asarray(means, dtype=np.float64),
                "covars": np.asarray(covars, dtype=np.float64)}

    def _check_emission(self, p: GMMHMMParams, n_features: int, fitted: bool = False) -> None:
        K, M, D, ct = self.n_components, self.n_mix, n_features, self.covariance_type
        check_distribution("weights_", p.weights, (K, M), rows=True)
        if p.means.shape != (K, M, D):
            raise ConfigError(f"means_ must have shape ({K}, {M}, {D}); got {p.means.shape}")
        if not np.isfinite(p.means).all():
            raise ConfigError("means_ must be finite")
        if ct == "tied":
            check_covariances(p.covars, K, D, "covars_", "full", fitted=fitted)
        else:
            check_covariances(p.covars.reshape((K * M,) + p.covars.shape[2:]) if p.covars.shape[:2] == (K, M)
                               else p.covars, K * M, D, "covars_", ct, fitted=fitted)

    def _set_emission(self, p: GMMHMMParams) -> None:
        self.weights_ = p.weights
        self.means_ = p.means
        self.covars_ = p.covars

    def _emission_params_names(self) -> tuple[str, ...]:
        return ("weights", "means", "covars")

    def _emission_params(self) -> dict[str, np.ndarray]:
        return {"weights": np.asarray(self.weights_, dtype=np.float64),
                "means": np.asarray(self.means_, dtype=np.float64),
                "covars": np.asarray(self.covars_, dtype=np.float64)}


ESTIMATORS = [GMMHMM]
