"""The variational Bayesian Gaussian mixture: family, initialisation passes and estimator.

Variational EM maximises the evidence lower bound (ELBO) of a Gaussian
mixture with a Dirichlet (process) prior on the weights and a
Gaussian–Wishart prior on each component (Bishop 2006, §10.2; Blei and
Jordan 2006). Given the same starting responsibilities, every iteration's
bound and every fitted attribute equal scikit-learn's
``BayesianGaussianMixture``.

* E-step: the Gaussian mixture's kernel
  (:func:`dem.families.gaussian_kernel.e_step_sums`) with each component's
  constant replaced by its expected log-weight and expected log-determinant
  terms, and ``Σ w r log r`` summed for the bound: the statistics are the
  Gaussian mixture's (``n_k`` and moments about the component means) plus
  that entropy term (:class:`~dem.families.bayesian_gmm_math.BGMMStats`).
* M-step and bound: :mod:`dem.families.bayesian_gmm_math`.
* The objective is scikit-learn's lower bound per unit weight. scikit-learn
  evaluates it *after* the M-step, with the new parameters and the old
  responsibilities; :meth:`BayesianGaussianMixtureFamily.objective` makes
  that M-step itself (a few K·D³ flops on the driver) so the engine's
  "objective of the statistics taken under ``params``" is exactly it.
* The prior's data-derived defaults come from one pass, shared with the
  assignment pass of the initialisation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from scipy.special import logsumexp
from sklearn.base import DensityMixin

from dem.data.record import Partition
from dem.estimator.base import ConfigKey, EMEstimator, store_params
from dem.estimator.mixture import MixtureMixin
from dem.estimator.params import Integral, Interval, Real, StrOptions
from dem.families import bayesian_gmm_math as bm
from dem.families import gaussian_kernel as kernel
from dem.families import mixture_init
from dem.families.base import Family, FlatParameters, Note, Passes, Rebasing, StatsTuple
from dem.families.gaussian_mixture import (
    COVARIANCE_TYPES, GaussianMixtureFamily, n_mixture_parameters, rebase_moments,
)
from dem.families.gaussian_params import precisions_from_cholesky
from dem.families.gmm_storage import BayesianGaussianMixtureStorage

#: Weight below which ``summary_lines`` (``dem info``) counts a component as unused.
EFFECTIVE_WEIGHT = 1e-2


@dataclasses.dataclass(frozen=True)
class BayesianGaussianMixtureFamily(Family, FlatParameters, Rebasing):
    """A variational Bayesian Gaussian mixture as pure functions over partitions.

    Parameters
    ----------
    n_components : int
        Components of the truncated model (an upper bound on those used).
    covariance_type : {"full", "tied", "diag", "spherical"}
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}
    reg_covar : float
        Added to the diagonal of each component's empirical covariance.

    The prior's values travel in the parameters
    (:class:`~dem.families.bayesian_gmm_math.BGMMParams`), since their
    defaults come from a data pass.
    """

    n_components: int
    covariance_type: str = "full"
    weight_concentration_prior_type: str = "dirichlet_process"
    reg_covar: float = 1e-6

    kind = "bayesian_gmm"
    params_type = bm.BGMMParams

    def components(self, params: bm.BGMMParams) -> kernel.Components:
        return kernel.Components(self.covariance_type, params.means, params.precisions_cholesky,
                                 bm.component_constants(params, self.covariance_type))

    def e_step(self, params: bm.BGMMParams, part: Partition) -> bm.BGMMStats:
        """Statistics of one partition under ``params``.

        Raises
        ------
        DataError
            NaN or inf in X (naming the global row), or a negative or
            non-finite sample weight.
        """
        acc = kernel.e_step_sums(self.components(params), part, shift=params.shift, entropy=True)
        return bm.BGMMStats(**{k: (float(v) if np.ndim(v) == 0 else v) for k, v in acc.items()})

    def m_step(self, stats: bm.BGMMStats, params: bm.BGMMParams) -> bm.BGMMParams:
        return bm.variational_m_step(stats, params.means, bm.priors_of(params), self.covariance_type,
                                     self.weight_concentration_prior_type, self.reg_covar)

    def objective(self, stats: bm.BGMMStats, params: bm.BGMMParams) -> float:
        """scikit-learn's lower bound per unit weight, at the parameters the M-step makes from ``stats``."""
        if not stats.weight_sum > 0:
            return float("-inf")
        new = self.m_step(stats, params)
        return bm.lower_bound_total(stats.resp_entropy, new, self.covariance_type) / float(stats.weight_sum)

    def notes(self, stats: bm.BGMMStats, params: bm.BGMMParams) -> list[Note]:
        # Components losing their data is what the prior is for: no "empty" notes.
        return []

    def n_parameters(self, n_features: int) -> int:
        return n_mixture_parameters(self.covariance_type, self.n_components, n_features)

    def weighted_log_prob(self, params: bm.BGMMParams, X: Any) -> np.ndarray:
        """scikit-learn's ``_estimate_weighted_log_prob``: (n, K) expected log joint terms."""
        return kernel.weighted_log_prob(self.components(params), X, params.shift)

    def log_density(self, params: bm.BGMMParams, part: Partition) -> np.ndarray:
        return logsumexp(self.weighted_log_prob(params, part.X), axis=1)

    def zero_stats(self, n_features: int) -> bm.BGMMStats:
        acc = kernel.new_accumulator(self.covariance_type, self.n_components, n_features)
        return bm.BGMMStats(**{k: (float(v) if np.ndim(v) == 0 else v) for k, v in acc.items()})

    # -- abilities -------------------------------------------------------------------

    def to_vector(self, params: bm.BGMMParams) -> np.ndarray:
        return bm.to_vector(params, self.covariance_type)

    def from_vector(self, vector: np.ndarray, like: bm.BGMMParams) -> bm.BGMMParams:
        return bm.from_vector(vector, like, self.covariance_type)

    def rebase(self, stats: bm.BGMMStats, old: bm.BGMMParams, new: bm.BGMMParams) -> bm.BGMMStats:
        return rebase_moments(stats, old.means, new.means, self.covariance_type)


# -- initialisation: centres → responsibilities → first variational M-step -------------


@dataclasses.dataclass(frozen=True)
class BayesianInit:
    """How members start: the Gaussian mixture's initialisation settings plus the prior's."""

    mixture: mixture_init.MixtureInit
    priors: dict


def _moments_and_statistics(shared: tuple, part: Partition) -> StatsTuple:
    """One read of a partition: the data's moments for the prior, and each member's start statistics."""
    shift, members = shared
    X = np.asarray(part.X)
    first = bm.data_moments(shift, X, part.weights)
    out = [first]
    for family, params, how, seed in members:
        if how == "posterior":
            out.append(family.e_step(params, part))
        else:
            out.append(family.assignment_stats(params, part, how, seed))
    return StatsTuple(tuple(out))


def initial_params(members: list[tuple[BayesianGaussianMixtureFamily, int]], passes: Passes,
                   init: BayesianInit) -> list[bm.BGMMParams]:
    """Starting variational parameters of every member ``(family, seed)``, sharing the data passes.

    Without user parameters: :mod:`dem.families.mixture_init`'s sampling
    pass and centres (k-means‖ passes, or a method on the sample), then
    one pass that assigns every row to its nearest centre (or to row-keyed
    random responsibilities for ``"random"``) and sums the data's moments.
    With ``weights_init``/``means_init``/``precisions_init``: the Gaussian
    mixture they define (completed by ``init_params`` for what is missing,
    as ``GaussianMixture`` does), and one pass of its posterior
    responsibilities with the data's moments. Either way the first
    variational M-step then runs on the driver, as scikit-learn's
    ``_initialize(X, resp)``.
    """
    mi = init.mixture
    ct = mi.covariance_type
    gmm = {f.n_components: GaussianMixtureFamily(f.n_components, ct, mi.reg_covar) for f, _ in members}
    user = any(v is not None for v in (mi.weights_init, mi.means_init, mi.precisions_init))
    if user:
        starts = mixture_init.initial_params([(gmm[f.n_components], s) for f, s in members], passes, mi)
        shift = starts[0].shift
        shared = tuple((gmm[f.n_components], p, "posterior", s) for (f, s), p in zip(members, starts))
    else:
        starts, how, samples = mixture_init.starting_mixtures(
            [f.n_components for f, _ in members], [s for _, s in members], passes, mi)
        sample0 = samples[0][0]
        shift = sample0.mean(axis=0) if sample0.shape[0] else passes.read_rows(0, 1)[0].astype(np.float64)
        shared = tuple((gmm[f.n_components], p, how, s) for (f, s), p in zip(members, starts))
    summed = passes.reduce(_moments_and_statistics, (np.asarray(shift, dtype=np.float64), shared))
    moments, stats = summed.members[0], summed.members[1:]
    out = []
    for (family, _), p0, st in zip(members, starts, stats):
        priors = bm.resolve_priors(init.priors, moments, np.asarray(shift, dtype=np.float64), ct,
                                   family.n_components)
        out.append(bm.variational_m_step(st, p0.means, priors, ct, family.weight_concentration_prior_type,
                                         family.reg_covar))
    return out


# -- the estimator ------------------------------------------------------------------------


PRIOR_PARAMS = ("weight_concentration_prior", "mean_precision_prior", "mean_prior", "degrees_of_freedom_prior",
                "covariance_prior")


class BayesianGaussianMixture(BayesianGaussianMixtureStorage, MixtureMixin, DensityMixin, EMEstimator):
    """Variational Bayesian Gaussian mixture on data of any size, on a Dask cluster.

    Parameters and fitted attributes follow
    :class:`sklearn.mixture.BayesianGaussianMixture`; given the same
    starting responsibilities dem reaches the same numbers.

    Parameters
    ----------
    n_components : int, default=1
        Components of the truncated model; the prior leaves the unneeded
        ones with tiny weights.
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Convergence threshold. As scikit-learn, on the change of the *total*
        lower bound over the data (the bound per unit weight times
        ``n_samples``): with a million rows that is a change of 1e-9 per
        row, so a large fit runs until ``max_iter`` unless ``tol`` grows
        with the data — or set ``tol_per_sample=True``.
    tol_per_sample : bool, default=False
        Compare ``tol`` with the change of the bound per unit weight
        instead (the rule of dem's other estimators and of scikit-learn's
        ``GaussianMixture``), which does not depend on the data's size.
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
        Restarts; they share every data pass. The highest bound wins.
    init_params : {"k-means||", "kmeans", "k-means++", "random", "random_from_data"}, default="k-means||"
        How the starting responsibilities are made: centres (as
        ``dem.GaussianMixture`` places them), each row wholly given to its
        nearest centre, then the first variational M-step. ``"random"``
        draws row-keyed uniform responsibilities. (scikit-learn's default
        is ``"kmeans"`` on all of X; its ``"k-means++"`` and
        ``"random_from_data"`` give responsibility only to the chosen rows,
        dem's to every row's nearest chosen row.)
    weight_concentration_prior_type : {"dirichlet_process", "dirichlet_distribution"}, default="dirichlet_process"
    weight_concentration_prior : float, optional
        Dirichlet concentration γ (default ``1/n_components``).
    mean_precision_prior : float, optional
        β₀ (default 1).
    mean_prior : array-like of shape (n_features,), optional
        m₀ (default: the data's mean).
    degrees_of_freedom_prior : float, optional
        ν₀ > n_features − 1 (default n_features).
    covariance_prior : float or array-like, optional
        Wishart scale prior: (D, D) full/tied, (D,) diag, a number for
        spherical (default: the data's covariance with ddof=1, its
        diagonal, or the diagonal's mean).
    weights_init, means_init, precisions_init : array-like, optional
        A Gaussian mixture whose posterior responsibilities start the fit
        (parts not given come from ``init_params``, as in ``GaussianMixture``).
    random_state, warm_start, verbose, verbose_interval
        As scikit-learn. ``warm_start`` continues from the previous fit's
        variational parameters with that fit's prior.
    accelerate, learning_method, learning_decay, learning_offset, batch_size,
    client, partition_rows, fan_in, cache, checkpoint_dir, checkpoint_every,
    keep_checkpoints, storage_options
        dem's engine parameters, as in :class:`dem.GaussianMixture`.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    weight_concentration_prior_, weight_concentration_ : float, tuple or ndarray
    mean_precision_prior_, mean_precision_, mean_prior_ : float or ndarray
    degrees_of_freedom_prior_, degrees_of_freedom_, covariance_prior_ : float or ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        scikit-learn's lower bound of the best initialisation: a total over
        the data (weighted rows count their weight).
    lower_bounds_ : list of float
        The same, each iteration (``history_`` holds it per unit weight).
    n_passes_, n_init_passes_, restarts_, history_, n_features_in_, feature_names_
        As :class:`dem.GaussianMixture` (``restarts_`` and ``history_`` per unit weight).
    """

    _kind = "bayesian_gmm"
    _tol_is_total = True
    _progress = ("lower bound", True)  # scikit-learn prints the bound as a total over the data
    _warned_notes: dict = {}
    _config_keys = {
        "model.n_components": ConfigKey("n_components", 1, "mixture components (an upper bound: the prior "
                                                          "switches off what the data does not need)"),
        "model.covariance_type": ConfigKey("covariance_type", "full", "covariance structure"),
        "model.reg_covar": ConfigKey("reg_covar", 1e-6, "added to covariance diagonals"),
        "model.init_params": ConfigKey("init_params", "k-means||", "how initial centres are placed"),
        "model.weight_concentration_prior_type": ConfigKey(
            "weight_concentration_prior_type", "dirichlet_process", "dirichlet_process or dirichlet_distribution"),
        "model.weight_concentration_prior": ConfigKey("weight_concentration_prior", None,
                                                      "Dirichlet concentration (null: 1/n_components)"),
        "model.mean_precision_prior": ConfigKey("mean_precision_prior", None, "prior precision of the means "
                                                                              "(null: 1)"),
        "model.mean_prior": ConfigKey("mean_prior", None, "prior mean, a list (null: the data's mean)"),
        "model.degrees_of_freedom_prior": ConfigKey("degrees_of_freedom_prior", None,
                                                    "Wishart degrees of freedom (null: n_features)"),
        "model.covariance_prior": ConfigKey("covariance_prior", None,
                                            "Wishart prior covariance (null: the data's covariance)"),
        "model.tol_per_sample": ConfigKey("tol_per_sample", False, "compare tol with the bound's change per "
                                                                  "sample, not its total (scikit-learn)"),
    }
    _config_fit_arguments = {"data.weights": "sample_weight", "data.variable": "variable"}
    _parameter_constraints = {
        **EMEstimator._parameter_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "init_params": [StrOptions(set(mixture_init.INIT_METHODS))],
        "weight_concentration_prior_type": [StrOptions(set(bm.PRIOR_TYPES))],
        "weight_concentration_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_precision_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "covariance_prior": [None, "array-like", Interval(Real, 0.0, None, closed="neither")],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "warm_start": ["boolean"],
        "tol_per_sample": ["boolean"],
    }

    def __init__(self, n_components: int = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, init_params: str = "k-means||",
                 weight_concentration_prior_type: str = "dirichlet_process",
                 weight_concentration_prior: float | None = None, mean_precision_prior: float | None = None,
                 mean_prior: Any = None, degrees_of_freedom_prior: float | None = None,
                 covariance_prior: Any = None, weights_init: Any = None, means_init: Any = None,
                 precisions_init: Any = None, random_state: Any = None, warm_start: bool = False,
                 verbose: int = 0, verbose_interval: int = 10, tol_per_sample: bool = False,
                 accelerate: str | None = None, learning_method: str = "batch", learning_decay: float = 0.7,
                 learning_offset: float = 10.0, batch_size: int | None = None, client: Any = None,
                 partition_rows: int | None = None, fan_in: int = 8, cache: Any = "auto",
                 checkpoint_dir: str | None = None, checkpoint_every: int = 1, keep_checkpoints: int = 3,
                 storage_options: dict | None = None) -> None:
        store_params(self, locals())

    # -- members, data, initialisation -------------------------------------------------

    def _family(self) -> BayesianGaussianMixtureFamily:
        return BayesianGaussianMixtureFamily(int(self.n_components), self.covariance_type,
                                             self.weight_concentration_prior_type, float(self.reg_covar))

    def _init(self) -> BayesianInit:
        mi = mixture_init.MixtureInit(self.init_params, self.covariance_type, float(self.reg_covar),
                                      self.weights_init, self.means_init, self.precisions_init, False)
        return BayesianInit(mi, {name: getattr(self, name) for name in PRIOR_PARAMS})

    def _tol(self, data: Any) -> float:
        # scikit-learn's total: tol / n_samples per unit weight (EMEstimator, _tol_is_total).
        return float(self.tol) if self.tol_per_sample else super()._tol(data)

    def _check_data(self, data: Any) -> None:
        from dem.errors import DataError

        n, k = data.n_samples, int(self.n_components)
        if n < max(2, k):
            raise DataError(f"X has {n} sample{'s' if n != 1 else ''}, fewer than "
                            + (f"n_components={k}" if k >= 2 else "2 (the default priors need 2)"))
        bm.check_priors({name: getattr(self, name) for name in PRIOR_PARAMS}, self.covariance_type,
                        data.n_features)
        mixture_init.check_user_parameters(self._init().mixture, k, data.n_features)

    def _members(self, data: Any) -> list[tuple[Any, dict[str, Any]]]:
        family = self._family()
        return [(family, {"n_components": int(self.n_components), "restart": r}) for r in range(self.n_init)]

    def _initialize(self, members: list[tuple[Any, int]], passes: Any, data: Any) -> list[bm.BGMMParams]:
        return initial_params(members, passes, self._init())

    # -- fitted attributes ---------------------------------------------------------------

    def _set_fitted(self, family: Any, params: bm.BGMMParams, data: Any) -> None:
        ct = self.covariance_type
        self._params = params
        conc = np.asarray(params.weight_concentration)
        self.weight_concentration_ = (conc[0], conc[1]) if conc.ndim == 2 else conc
        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = params.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(params.precisions_cholesky, ct)
        self.mean_precision_ = params.mean_precision
        self.degrees_of_freedom_ = params.degrees_of_freedom if ct != "tied" else float(params.degrees_of_freedom)
        self.weight_concentration_prior_ = float(params.weight_concentration_prior)
        self.mean_precision_prior_ = float(params.mean_precision_prior)
        self.mean_prior_ = params.mean_prior
        self.degrees_of_freedom_prior_ = float(params.degrees_of_freedom_prior)
        cp = np.asarray(params.covariance_prior)
        self.covariance_prior_ = float(cp) if cp.ndim == 0 else cp
        self.n_components_ = int(params.means.shape[0])

    def _set_run_attributes(self, outcome: Any, labels: list[dict], chosen: int, data: Any) -> None:
        super()._set_run_attributes(outcome, labels, chosen, data)
        # scikit-learn's bound is a total over the data; the engine's objective is per unit weight.
        scale = float(self._params.weight_sum)
        self.lower_bound_ = self.lower_bound_ * scale
        self.lower_bounds_ = [v * scale for v in self.lower_bounds_]

    def _fitted_params(self) -> bm.BGMMParams:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "means_")
        return self._params

    def _fitted_family(self) -> BayesianGaussianMixtureFamily:
        return self._family()

    # -- fitting and the rest of scikit-learn's API --------------------------------------

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, variable: str | None = None,
            callback: Any = None) -> "BayesianGaussianMixture":
        """Fit the variational posterior by variational EM.

        Parameters
        ----------
        X : numpy array, dask array, xarray DataArray/Dataset, or Zarr path/URL
            Data of shape (n_samples, n_features).
        y : ignored
        sample_weight : array-like of shape (n_samples,), or the name of an
            array in the Zarr group, optional. Frequency weights: weight 2
            counts as the row twice (in the prior's defaults too).
        variable : str, optional
            Array of a Zarr group or variable of an xarray Dataset to fit.
        callback : callable, optional
            ``callback(event, info)`` (see :meth:`dem.GaussianMixture.fit`).

        Returns
        -------
        self
        """
        if self.warm_start and self._is_fitted():
            # The template starts a warm fit from ``lower_bound_`` in the engine's units.
            total = self.lower_bound_
            self.lower_bound_ = total / float(self._params.weight_sum)
            try:
                return self._fit(X, sample_weight=sample_weight, variable=variable, callback=callback)
            except BaseException:
                self.lower_bound_ = total
                raise
        return self._fit(X, sample_weight=sample_weight, variable=variable, callback=callback)

    def summary_lines(self, threshold: float = EFFECTIVE_WEIGHT) -> list[str]:
        """Lines for ``dem info``: the components whose weight reaches ``threshold``."""
        w = np.asarray(self._fitted_params().weights)
        used = np.flatnonzero(w >= threshold)
        lines = [f"effective components: {used.size} of {w.size} with weight >= {threshold:g} "
                 f"({self.weight_concentration_prior_type}, concentration {self.weight_concentration_prior_:g})"]
        lines += [f"  component {int(k)}: weight {w[k]:.4f}" for k in used[np.argsort(-w[used], kind="stable")]]
        return lines


ESTIMATORS = [BayesianGaussianMixture]
