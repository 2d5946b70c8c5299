"""Hidden Markov models with Gaussian emissions: the family and ``GaussianHMM`` (hmmlearn's API).

One Gaussian per state, covariance ``full``, ``diag``, ``spherical`` or
``tied``; ``covars`` are stored as hmmlearn stores ``_covars_`` (``(K, D,
D)``, ``(K, D)``, ``(K,)``, ``(D, D)``). The machinery every HMM shares is
:mod:`dem.families.hmm`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dem.errors import ConfigError, DataError
from dem.estimator.base import ConfigKey, store_params
from dem.estimator.params import Interval, Real, StrOptions
from dem.estimator.sequence import HMMEstimator, kmeans_centres
from dem.families.base import FlatParameters, Rebasing
from dem.families.gaussian_params import covariance_from_vector, covariance_to_vector
from dem.families.hmm import HMMFamily, HMMStats, _finite_block, _per_state, _ratio_or_previous
from dem.families.hmm_coordinates import transitions_from_vector, transitions_to_vector
from dem.families.hmm_gaussians import (
    COVARIANCE_TYPES, ROW_BLOCK, Gaussians, check_covariances, full_covariances, packed_outer, shift_moments,
    unpack_symmetric,
)


@dataclasses.dataclass(frozen=True)
class GaussianHMMParams:
    """Parameters of a Gaussian HMM (float64 arrays).

    Attributes
    ----------
    startprob : (K,)
    transmat : (K, K)
    means : (K, D)
    covars : (K, D, D) full, (D, D) tied, (K, D) diag, (K,) spherical
    """

    startprob: np.ndarray
    transmat: np.ndarray
    means: np.ndarray
    covars: np.ndarray


@dataclasses.dataclass(frozen=True)
class GaussianHMMStats(HMMStats):
    """Gaussian emission moments about the shift ``c`` (mean of the state means).

    ``post[k] = Σ γ_k``; ``first_moment[k] = Σ γ_k (x − c)``;
    ``second_moment[k]`` is ``Σ γ_k (x − c)²`` per feature (diag, spherical)
    or ``Σ γ_k (x − c)(x − c)ᵀ`` packed as the upper triangle (full, tied).
    """

    post: np.ndarray
    first_moment: np.ndarray
    second_moment: np.ndarray


@dataclasses.dataclass(frozen=True)
class _GaussianPrep:
    shift: np.ndarray
    gaussians: Gaussians


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianHMMFamily(HMMFamily, FlatParameters, Rebasing):
    """HMM with one Gaussian per state (hmmlearn's ``GaussianHMM``).

    Parameters (beyond :class:`~dem.families.hmm.HMMFamily`)
    -------------------------------------
    covariance_type : {"spherical", "diag", "full", "tied"}
    means_prior, means_weight : Normal prior on the means (scalars, or
        ``means_prior`` (K, D) and ``means_weight`` (K,))
    covars_prior, covars_weight : inverse-gamma (diag, spherical) or
        inverse-Wishart (full, tied) prior, broadcast as hmmlearn does
    """

    params: str = "stmc"
    covariance_type: str = "diag"
    means_prior: Any = 0.0
    means_weight: Any = 0.0
    covars_prior: Any = 1e-2
    covars_weight: Any = 1.0

    stats_cls = GaussianHMMStats
    kind = "gaussian_hmm"
    params_type = GaussianHMMParams

    def check_block(self, params: GaussianHMMParams | None, X: np.ndarray, row_offset: int) -> np.ndarray:
        return _finite_block(X, row_offset, params)

    def prepare(self, params: GaussianHMMParams) -> _GaussianPrep:
        K, D = params.means.shape
        shift = params.means.mean(axis=0)
        ct = self.covariance_type
        names = [f"state {k}" for k in range(K)]
        if ct == "tied":
            covs, kind = np.repeat(np.asarray(params.covars)[None], K, axis=0), "full"
        else:
            covs, kind = np.asarray(params.covars), ct
        return _GaussianPrep(shift, Gaussians.from_covariances(params.means, covs, kind, shift, names))

    def log_emission(self, prep: _GaussianPrep, Xb: np.ndarray) -> np.ndarray:
        out = np.empty((Xb.shape[0], self.n_components))
        for a in range(0, Xb.shape[0], ROW_BLOCK):
            Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
            out[a : a + ROW_BLOCK] = prep.gaussians.log_density(Xc)
        return out

    def _second_width(self, D: int) -> int:
        return D * (D + 1) // 2 if self.covariance_type in ("full", "tied") else D

    def _new_emission_acc(self, params: GaussianHMMParams) -> dict[str, np.ndarray]:
        K, D = params.means.shape
        return {"post": np.zeros(K), "first_moment": np.zeros((K, D)),
                "second_moment": np.zeros((K, self._second_width(D)))}

    def _accumulate(self, prep: _GaussianPrep, Xb: np.ndarray, gamma: np.ndarray, acc: dict) -> None:
        packed = self.covariance_type in ("full", "tied")
        for a in range(0, Xb.shape[0], ROW_BLOCK):
            Xc = np.asarray(Xb[a : a + ROW_BLOCK], dtype=np.float64) - prep.shift
            g = gamma[a : a + ROW_BLOCK]
            acc["post"] += g.sum(axis=0)
            acc["first_moment"] += g.T @ Xc
            if packed:
                acc["second_moment"] += g.T @ packed_outer(Xc)
            else:
                acc["second_moment"] += g.T @ (Xc * Xc)

    def _m_step_emission(self, stats: GaussianHMMStats, params: GaussianHMMParams) -> dict[str, np.ndarray]:
        # hmmlearn's GaussianHMM._do_mstep (Huang, Acero & Hon, pp. 443-445),
        # with Σγx and Σγxxᵀ rebuilt from the moments about the shift c.
        K, D = params.means.shape
        c = params.means.mean(axis=0)
        post = np.asarray(stats.post)
        F = np.asarray(stats.first_moment)
        denom = post[:, None]
        mw = _per_state(self.means_weight, 1)
        mp = np.asarray(self.means_prior, dtype=np.float64)
        means = params.means
        if "m" in self.params:
            obs = F + denom * c
            means = _ratio_or_previous(mw * mp + obs, mw + denom, params.means)
        covars = params.covars
        if "c" in self.params:
            meandiff = means - mp
            d = means - c  # the new means about the shift
            cp = np.asarray(self.covars_prior, dtype=np.float64)
            if self.covariance_type in ("spherical", "diag"):
                # Σγ(x−μ)² = Σγ(x−c)² − 2(μ−c)Σγ(x−c) + (μ−c)²Σγ
                sq = np.asarray(stats.second_moment) - 2.0 * d * F + denom * d * d
                c_n = mw * meandiff**2 + sq
                c_d = np.maximum(_per_state(self.covars_weight, 1) - 1.0, 0.0) + denom
                covars = (cp + c_n) / np.maximum(c_d, 1e-5)
                if self.covariance_type == "spherical":
                    covars = covars.mean(axis=1)
            else:
                S = unpack_symmetric(np.asarray(stats.second_moment), D)
                scatter = (S - F[:, :, None] * d[:, None, :] - d[:, :, None] * F[:, None, :]
                           + post[:, None, None] * d[:, :, None] * d[:, None, :])
                c_n = _per_state(self.means_weight, 2) * (meandiff[:, :, None] * meandiff[:, None, :]) + scatter
                cvweight = np.maximum(np.asarray(self.covars_weight, dtype=np.float64) - D, 0.0)
                if self.covariance_type == "tied":
                    covars = _ratio_or_previous(cp + c_n.sum(axis=0), cvweight + post.sum(), params.covars)
                else:
                    covars = _ratio_or_previous(cp + c_n, _per_state(cvweight, 2) + post[:, None, None],
                                                params.covars)
        return {"means": means, "covars": covars}

    def free_scalars(self, n_features: int) -> dict[str, int]:
        K, D = self.n_components, n_features
        return {**super().free_scalars(n_features), "m": K * D,
                "c": {"spherical": K, "diag": K * D, "full": K * D * (D + 1) // 2,
                      "tied": D * (D + 1) // 2}[self.covariance_type]}

    def emit(self, params: GaussianHMMParams, state: int, random_state: np.random.RandomState) -> Any:
        D = params.means.shape[1]
        cov = full_covariances(params.covars, self.covariance_type, self.n_components, D)[state]
        return random_state.multivariate_normal(params.means[state], cov)

    def rebase(self, stats: GaussianHMMStats, old: GaussianHMMParams, new: GaussianHMMParams) -> GaussianHMMStats:
        """Moments about the mean of ``old``'s state means moved to that of ``new``'s (online EM)."""
        form = "packed" if self.covariance_type in ("full", "tied") else "diag"
        delta = old.means.mean(axis=0) - new.means.mean(axis=0)
        first, second = shift_moments(stats.first_moment, stats.second_moment, stats.post, delta, form)
        return dataclasses.replace(stats, first_moment=first, second_moment=second)

    # -- SQUAREM's unconstrained coordinates ------------------------------------------

    def to_vector(self, params: GaussianHMMParams) -> np.ndarray:
        """Log-ratio transitions, means, Cholesky-log covariances: only what ``params`` letters update."""
        return np.concatenate([
            transitions_to_vector(params, self.params),
            params.means.ravel() if "m" in self.params else np.empty(0),
            covariance_to_vector(params.covars, self.covariance_type) if "c" in self.params else np.empty(0)])

    def from_vector(self, vector: np.ndarray, like: GaussianHMMParams) -> GaussianHMMParams:
        """Parameters from :meth:`to_vector`'s coordinates; fixed parts and zeros come from ``like``.

        Raises
        ------
        CollapsedComponentError
            If a covariance is not positive definite in floating point.
        """
        startprob, transmat, rest = transitions_from_vector(vector, like, self.params)
        means, covars = like.means, like.covars
        if "m" in self.params:
            n = like.means.size
            means, rest = rest[:n].reshape(like.means.shape), rest[n:]
        if "c" in self.params:
            covars = covariance_from_vector(rest, self.covariance_type, np.shape(like.covars))
        out = GaussianHMMParams(startprob, transmat, means, covars)
        self.prepare(out)  # refuses a covariance that is not positive definite in floating point
        return out


class GaussianHMM(HMMEstimator):
    """Hidden Markov model with Gaussian emissions (hmmlearn's ``GaussianHMM``), on Dask.

    Parameters
    ----------
    n_components : int, default=1
        Number of states.
    covariance_type : {"spherical", "diag", "full", "tied"}, default="diag"
    min_covar : float, default=1e-3
        Added to the diagonal of the data covariance that initialises
        ``covars_`` (as in hmmlearn 0.3.3, where it is used only there).
    startprob_prior, transmat_prior : float or array, default=1.0
        Dirichlet priors of ``startprob_`` and the rows of ``transmat_``.
    means_prior, means_weight : float or array, default=0
        Normal prior of ``means_`` (mean, precision).
    covars_prior, covars_weight : float or array, default=1e-2, 1
        Inverse-gamma (diag, spherical) or inverse-Wishart (full, tied) prior
        of the covariances, applied as hmmlearn applies it.
    algorithm : {"viterbi", "map"}, default="viterbi"
        Decoder of ``decode``/``predict``.
    random_state : int, RandomState or None
        Seed of the initialisation; an int gives hmmlearn's starting point.
    n_iter : int, default=10
        Maximum number of EM iterations.
    tol : float, default=1e-2
        Convergence threshold on the gain of the total log-likelihood.
    verbose : bool, default=False
        Print one line per iteration to stderr, as hmmlearn does.
    params, init_params : str, default="stmc"
        Parameters updated by EM / initialised before it: 's' startprob,
        't' transmat, 'm' means, 'c' covars. An attribute set before ``fit``
        whose letter is not in ``init_params`` is used as given.
    implementation : {"log", "scaling"}, default="log"
        Accepted for hmmlearn compatibility; dem always runs the scaled
        recursions with exact log-space fallback (:mod:`dem.families.hmm_lattice`).
    client : distributed.Client, optional
        Cluster to run on (default: the active client, else local threads).
    partition_rows : int, optional
        Target rows per partition (cut at sequence boundaries). Default:
        about 16–128 MiB of E-step working set, from the data alone.
    n_init : int, default=1
        Initialisations; the best final log-likelihood is kept. Restart 0
        uses ``random_state`` itself.
    fan_in : int, default=8
        Children per node of the reduction tree.
    cache : {"auto", True, False}, default="auto"
        Keep partitions in (worker) memory between iterations.
    checkpoint_dir : str, optional
        Run directory for checkpoints, ``history.json`` and ``model.zarr``;
        a matching run there is resumed exactly.
    checkpoint_every : int, default=1
    keep_checkpoints : int, default=3
    storage_options : dict, optional
        fsspec options for Zarr URLs and ``checkpoint_dir``.
    max_sequence_bytes : int, optional
        Memory one sequence's E-step may use (default: a quarter of a worker
        thread's memory); longer sequences are refused with a DataError.

    Attributes
    ----------
    startprob_ : (n_components,)
    transmat_ : (n_components, n_components)
    means_ : (n_components, n_features)
    covars_ : (n_components, n_features, n_features)
        Full covariance matrices whatever ``covariance_type`` (hmmlearn's
        property); ``_covars_`` holds the stored form.
    n_features : int
    monitor_ : ConvergenceMonitor
    history_ : list of dict
        dem's per-iteration records (mean log-likelihood per step, Δ, seconds…).
    """

    _kind = "gaussian_hmm"
    _attributes = {"s": "startprob_", "t": "transmat_", "m": "means_", "c": "_covars_"}
    _config_keys = {
        "model.n_components": ConfigKey("n_components", 1, "hidden states"),
        "model.covariance_type": ConfigKey("covariance_type", "diag", "covariance structure of the emissions"),
        "model.min_covar": ConfigKey("min_covar", 1e-3, "floor added to initial covariances"),
        "model.algorithm": ConfigKey("algorithm", "viterbi", "decoder of predict: viterbi or map"),
    }
    _parameter_constraints = {
        **HMMEstimator._parameter_constraints,
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "min_covar": [Interval(Real, 0.0, None, closed="left")],
        "means_prior": ["array-like", Real], "means_weight": ["array-like", Real],
        "covars_prior": ["array-like", Real], "covars_weight": ["array-like", Real],
    }

    def __init__(self, n_components: int = 1, covariance_type: str = "diag", min_covar: float = 1e-3,
                 startprob_prior: Any = 1.0, transmat_prior: Any = 1.0, means_prior: Any = 0,
                 means_weight: Any = 0, covars_prior: Any = 1e-2, covars_weight: Any = 1,
                 algorithm: str = "viterbi", random_state: Any = None, n_iter: int = 10, tol: float = 1e-2,
                 verbose: bool = False, params: str = "stmc", init_params: str = "stmc",
                 implementation: str = "log", *, n_init: int = 1, max_sequence_bytes: int | None = None,
                 accelerate: str | None = None, learning_method: str = "batch", learning_decay: float = 0.7,
                 learning_offset: float = 10.0, batch_size: int | None = None, client: Any = None,
                 partition_rows: int | None = None, fan_in: int = 8, cache: Any = "auto",
                 checkpoint_dir: str | None = None, checkpoint_every: int = 1, keep_checkpoints: int = 3,
                 storage_options: dict | None = None) -> None:
        store_params(self, locals())

    @property
    def covars_(self) -> np.ndarray:
        """Covariances as full matrices, (n_components, n_features, n_features)."""
        if "_covars_" not in self.__dict__:
            raise AttributeError("covars_")
        covars = self._covars_
        if "means_" in self.__dict__:
            D = np.shape(self.means_)[-1]
        elif self.covariance_type != "spherical":
            D = covars.shape[-1]
        else:
            D = getattr(self, "n_features", None) or 1
        return full_covariances(covars, self.covariance_type, self.n_components, D)

    @covars_.setter
    def covars_(self, covars: Any) -> None:
        self._covars_ = np.array(covars, dtype=np.float64, copy=True)

    def _family(self, n_features: int) -> GaussianHMMFamily:
        return GaussianHMMFamily(
            n_components=int(self.n_components), params=self.params, startprob_prior=self.startprob_prior,
            transmat_prior=self.transmat_prior, covariance_type=self.covariance_type,
            means_prior=self.means_prior, means_weight=self.means_weight, covars_prior=self.covars_prior,
            covars_weight=self.covars_weight)

    def _init_emission(self, needs: set[str], user: dict, summary: Any, seed: int, n_features: int) -> dict:
        K, D, ct = self.n_components, n_features, self.covariance_type
        if "m" in needs:
            sample = summary["sample"]
            if sample.shape[0] < K:
                raise DataError(f"X has {sample.shape[0]} samples, fewer than n_components={K}")
            means = kmeans_centres(sample, K, seed)[0]
        else:
            means = user["m"]
        if "c" in needs:
            cv = np.atleast_2d(summary["cov"]) + self.min_covar * np.eye(D)
            covars = {"spherical": np.full(K, cv.mean()), "tied": cv, "diag": np.tile(np.diag(cv), (K, 1)),
                      "full": np.tile(cv, (K, 1, 1))}[ct]
        else:
            covars = self._stored_covars(user["c"])
        return {"means": np.asarray(means, dtype=np.float64), "covars": np.asarray(covars, dtype=np.float64)}

    def _check_emission(self, p: GaussianHMMParams, n_features: int, fitted: bool = False) -> None:
        K, D = self.n_components, n_features
        if p.means.shape != (K, D):
            raise ConfigError(f"means_ must have shape ({K}, {D}); got {p.means.shape}")
        if not np.isfinite(p.means).all():
            raise ConfigError("means_ must be finite")
        check_covariances(p.covars, K, D, "covars_", self.covariance_type, fitted=fitted)

    def _set_emission(self, p: GaussianHMMParams) -> None:
        self.means_ = p.means
        self._covars_ = p.covars

    def _emission_params_names(self) -> tuple[str, ...]:
        return ("means", "covars")

    def _emission_params(self) -> dict[str, np.ndarray]:
        return {"means": np.asarray(self.means_, dtype=np.float64),
                "covars": self._stored_covars(self._covars_)}

    def _stored_covars(self, covars: Any) -> np.ndarray:
        """``covars`` in the stored shape; spherical ones of any length-K shape, e.g. (K, 1), become (K,).

        hmmlearn accepts any spherical ``covars_`` with ``len(covars) == n_components``;
        dem takes those holding one variance per state.
        """
        covars = np.asarray(covars, dtype=np.float64)
        K = self.n_components
        if self.covariance_type == "spherical" and covars.ndim > 1 and len(covars) == K and covars.size == K:
            return covars.reshape(K)
        return covars


ESTIMATORS = [GaussianHMM]
