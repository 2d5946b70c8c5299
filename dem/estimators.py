"""scikit-learn-style estimators wrapping a model family and the engine."""

from __future__ import annotations

import dataclasses
import math
import os
import secrets
import warnings
from typing import Any

import dask.array as da
import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from dem.core.engine import EMState, MemberStats
from dem.core.executor import Executor
from dem.core.fitting import RunDirectory, chain_callbacks, digest, fit_members
from dem.core.reduction import DEFAULT_FAN_IN
from dem.data.partitions import PartitionedData, as_partitioned
from dem.errors import ConfigError, DataError
from dem.models import init as gmm_init
from dem.models.gmm import (
    COVARIANCE_TYPES,
    GaussianMixtureModel,
    GMMParams,
    precisions_from_cholesky,
)
from dem.models.gmm import sample as gmm_sample
from dem.models.gmm_missing import MissingDataGaussianMixtureModel
from dem.models.kmeans_parallel import kmeans_parallel_centres

MISSING_CHOICES = ("error", "em")  # issue #7

CACHE_CHOICES = ("auto", True, False)
MODEL_DIRNAME = "model.zarr"


class EmptyComponentWarning(UserWarning):
    """A component lost all its responsibility; it kept its previous mean and covariance."""




def _seed_from(random_state: Any) -> int:
    """A 63-bit integer seed from scikit-learn-style ``random_state``."""
    if random_state is None:
        return secrets.randbits(63)
    if isinstance(random_state, (int, np.integer)):
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**63 - 1))
    raise ConfigError(f"random_state must be None, an int, a RandomState or a Generator; got {type(random_state).__name__}")


def _restart_seed(base: int, restart: int) -> int:
    # Restart r of random_state=s starts exactly like restart 0 of random_state=s+r,
    # so n_init=R equals R single fits with seeds s, s+1, …, s+R-1.
    return int(np.random.SeedSequence([base + restart]).generate_state(2, np.uint64)[0] >> 1)


def _sample_members(shared: tuple, X: np.ndarray, w: Any, start: int) -> tuple[list, bool]:
    sampler, specs = shared
    # Whether the partition holds NaN decides if k-means‖ (complete rows only) can run.
    has_nan = bool(np.isnan(np.asarray(X)).any()) if np.asarray(X[:0]).dtype.kind == "f" else False
    return [sampler(spec, X, w, start) for spec in specs], has_nan


def _assign_members(shared: tuple, X: np.ndarray, w: Any, start: int) -> MemberStats:
    # One read of the partition turns every member's centres into statistics.
    return MemberStats(tuple(
        model.assignment_stats(p, X, w, start, responsibilities=how, seed=(seed, start))
        for model, p, how, seed in shared
    ))


#: Annealing's kick at each new temperature, in units of a component's standard deviation.
#: Merged components sit on a saddle that EM leaves slowly; 1% kicks were measured to
#: leave them merged until |Δ| < tol, 30% lets the split happen within a stage.
_PERTURBATION = 0.3


def _perturb_means(params: GMMParams, covariance_type: str, seed: tuple) -> GMMParams:
    """Means moved by a fraction of each component's spread, in a seeded random direction.

    At high temperature annealing merges components; exactly merged ones would
    stay merged, so each new temperature starts from separated copies and the
    unstable merged state splits where the data supports it (Rose, 1998).
    """
    rng = np.random.default_rng(list(seed) + [13])
    cov = params.covariances
    var = {"full": lambda: np.diagonal(cov, axis1=1, axis2=2).mean(axis=1),
           "tied": lambda: np.full(len(params.weights), np.diag(cov).mean()),
           "diag": lambda: cov.mean(axis=1), "spherical": lambda: cov}[covariance_type]()
    step = _PERTURBATION * np.sqrt(var)[:, None] * rng.standard_normal(params.means.shape)
    return dataclasses.replace(params, means=params.means + step)


def _score_members(shared: tuple, X: np.ndarray, w: Any, start: int) -> MemberStats:
    return MemberStats(tuple(model.e_step(p, X, w, start) for model, p in shared))


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM on data of any size, on a Dask cluster.

    Parameters follow :class:`sklearn.mixture.GaussianMixture`; the fitted
    attributes have the same names and meanings, and given the same initial
    parameters dem reaches the same numbers.

    Parameters
    ----------
    n_components : int or list of int, default=1
        A list fits every candidate in the same data passes and keeps the one
        with the lowest BIC (``n_components_``, ``model_selection_``).
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Convergence threshold on the change of the mean log-likelihood.
    reg_covar : float, default=1e-6
        Added to the diagonal of covariances.
    max_iter : int, default=100
    n_init : int, default=1
        Number of initialisations; the best lower bound is kept. Restarts
        share every data pass (each partition is read once per iteration for
        all of them) and a converged restart stops costing compute. Restart r
        of ``random_state=s`` is exactly the fit with ``random_state=s+r``.
    init_params : {"k-means||", "kmeans", "k-means++", "random", "random_from_data"}, default="k-means||"
        How initial centres are placed. ``"k-means||"`` is scalable k-means++
        (Bahmani et al., 2012) over all partitions: 2 oversampling passes, a
        weighting pass, weighted k-means of the candidates on the driver. The
        others work on a sample of up to ``max(20000, 200·n_components)`` rows
        drawn evenly from every partition (``"kmeans"`` is k-means on it, as
        scikit-learn's default does on all of X). One pass over all data then
        turns the centres into weights, means and covariances. All restarts
        and candidate K share these passes.
    weights_init, means_init, precisions_init : array-like, optional
        User-supplied initial parameters (they override ``init_params``).
    random_state : int, RandomState, Generator or None
    warm_start : bool, default=False
        Start from the previous fit's parameters (``n_init`` is then 1).
    beta_init : float, optional
        Deterministic annealing (Ueda & Nakano, 1998): EM first runs at inverse
        temperature β = ``beta_init`` (responsibilities ∝ (w_k N_k(x))^β,
        which smooths the likelihood surface), then β is multiplied by
        ``beta_rate`` until it reaches 1; each stage iterates until the tempered
        objective changes by less than ``tol`` (at most ``max_iter`` iterations),
        then plain EM finishes. Use it when restarts keep finding poor local
        optima (overlapping or very unequal components). ``None``: plain EM.
    beta_rate : float, default=2.0
        Factor by which β grows between annealing stages.
    verbose : int, default=0
        1 prints one line per iteration.
    verbose_interval : int, default=10
        Iterations between progress lines when ``verbose >= 1``.
    client : distributed.Client, optional
        Cluster to run on. ``None`` uses the active client if there is one,
        else Dask's threaded scheduler in this process.
    partition_rows : int, optional
        Rows per partition (rounded to whole Zarr chunks). Default: about
        64 MiB of data per partition.
    fan_in : int, default=8
        Children per node of the reduction tree.
    cache : {"auto", True, False}, default="auto"
        Keep partitions in (worker) memory between iterations. ``"auto"``
        caches when the data takes at most half the cluster's memory (a
        quarter of this machine's without a cluster), and streams otherwise.
    checkpoint_dir : str, optional
        Run directory (local path or fsspec URL) for checkpoints, history and
        the final model (``model.zarr``). A fit given a directory that already
        holds a matching run resumes it from its last complete checkpoint.
    checkpoint_every : int, default=1
        Iterations between checkpoints (the last iteration is always saved).
    keep_checkpoints : int, default=3
        How many of the newest checkpoints to keep.
    storage_options : dict, optional
        fsspec options (credentials, endpoint) for Zarr URLs and ``checkpoint_dir``.
    missing : {"error", "em"}, default="error"
        ``"error"``: NaN in the data is an error naming the first offending
        row and feature. ``"em"``: NaN marks a value missing at random; EM
        maximises the observed-data likelihood, filling missing coordinates
        with their conditional expectation given the observed ones (see
        :mod:`dem.models.gmm_missing`); rows with nothing observed are left
        out; :meth:`predict`, :meth:`score_samples` and :meth:`predict_proba`
        accept NaN and use the observed coordinates; :meth:`impute` completes
        data. ``inf`` is an error either way.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood of the last E-step of the best initialisation.
    lower_bounds_ : list of float
        ``lower_bound_`` at each iteration of the best initialisation.
    n_components_ : int
        The number of components of the fitted model (the BIC choice when
        ``n_components`` is a list).
    restarts_ : list of dict
        Every member fitted (n_components, restart, lower_bound, n_iter,
        converged, history).
    model_selection_ : list of dict
        Per candidate K: the best restart's log-likelihood on the data, BIC,
        AIC (only when ``n_components`` is a list).
    history_ : list of dict
        Per iteration: mean log-likelihood, Δ, seconds, rows, notes.
    n_features_in_ : int
    feature_names_ : ndarray or None
        The ``feature`` coordinate of xarray/Zarr input, when present.
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        covariance_type: str = "full",
        tol: float = 1e-3,
        reg_covar: float = 1e-6,
        max_iter: int = 100,
        n_init: int = 1,
        init_params: str = "k-means||",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
        beta_init: float | None = None,
        beta_rate: float = 2.0,
        verbose: int = 0,
        verbose_interval: int = 10,
        client: Any = None,
        partition_rows: int | None = None,
        fan_in: int = DEFAULT_FAN_IN,
        cache: Any = "auto",
        checkpoint_dir: str | None = None,
        checkpoint_every: int = 1,
        keep_checkpoints: int = 3,
        storage_options: dict | None = None,
        missing: str = "error",
    ) -> None:
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.beta_init = beta_init
        self.beta_rate = beta_rate
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.client = client
        self.partition_rows = partition_rows
        self.fan_in = fan_in
        self.cache = cache
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.storage_options = storage_options
        self.missing = missing

    # -- validation --------------------------------------------------------

    def _check_hyperparameters(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}; got {v!r}")

        def non_negative(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not v >= 0 or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number >= 0; got {v!r}")

        candidates = self.n_components if isinstance(self.n_components, (list, tuple)) else [self.n_components]
        if not candidates or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                                 for k in candidates):
            raise ConfigError(f"n_components must be an integer >= 1 or a list of them; got {self.n_components!r}")
        if len(set(candidates)) != len(candidates):
            raise ConfigError(f"n_components lists a value twice: {list(candidates)}")
        if len(candidates) > 1 and any(v is not None for v in (self.weights_init, self.means_init,
                                                               self.precisions_init)):
            raise ConfigError("weights_init/means_init/precisions_init need a single n_components, not a list")
        if self.beta_init is not None:
            b = self.beta_init
            if isinstance(b, bool) or not isinstance(b, (int, float, np.number)) or not 0 < b <= 1:
                raise ConfigError(f"beta_init must be in (0, 1]; got {b!r}")
            r = self.beta_rate
            if isinstance(r, bool) or not isinstance(r, (int, float, np.number)) or not r > 1 or not math.isfinite(r):
                raise ConfigError(f"beta_rate must be a number > 1; got {r!r}")
        positive_int("max_iter", 0)
        positive_int("n_init")
        positive_int("fan_in", 2)
        non_negative("tol")
        non_negative("reg_covar")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(
                f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}; got {self.covariance_type!r}"
            )
        if self.init_params not in gmm_init.INIT_METHODS:
            raise ConfigError(
                f"init_params must be one of {', '.join(gmm_init.INIT_METHODS)}; got {self.init_params!r}"
            )
        if self.cache not in CACHE_CHOICES:
            raise ConfigError(f"cache must be 'auto', True or False; got {self.cache!r}")
        if self.missing not in MISSING_CHOICES:
            raise ConfigError(f"missing must be 'error' or 'em'; got {self.missing!r}")
        if self.partition_rows is not None:
            positive_int("partition_rows")

    def _candidates(self) -> list[int]:
        ks = self.n_components if isinstance(self.n_components, (list, tuple)) else [self.n_components]
        return [int(k) for k in ks]

    def _model(self, n_components: int | None = None) -> GaussianMixtureModel | MissingDataGaussianMixtureModel:
        if n_components is None:
            # A fitted model knows its K; before fitting only a single K is meaningful.
            n_components = getattr(self, "n_components_", None) or self._candidates()[0]
        if self.missing == "em":  # issue #7: NaN are missing values
            return MissingDataGaussianMixtureModel(int(n_components), self.covariance_type,
                                                   float(self.reg_covar))
        return GaussianMixtureModel(int(n_components), self.covariance_type, float(self.reg_covar))

    def _annealing_betas(self) -> list[float]:
        if self.beta_init is None:
            return []
        betas, b = [], float(self.beta_init)
        while b < 1.0:
            betas.append(b)
            b *= float(self.beta_rate)
        return betas

    def _check_initial_parameters(self, n_features: int) -> None:
        K, D, ct = self._candidates()[0], n_features, self.covariance_type
        if self.weights_init is not None:
            w = np.asarray(self.weights_init, dtype=np.float64)
            if w.shape != (K,):
                raise ConfigError(f"weights_init must have shape ({K},); got {w.shape}")
            if (w < 0).any() or (w > 1).any() or not math.isclose(w.sum(), 1.0, rel_tol=0, abs_tol=1e-6):
                raise ConfigError(f"weights_init must be in [0, 1] and sum to 1; they sum to {w.sum():.6f}")
        if self.means_init is not None:
            m = np.asarray(self.means_init, dtype=np.float64)
            if m.shape != (K, D):
                raise ConfigError(f"means_init must have shape ({K}, {D}); got {m.shape}")
        if self.precisions_init is not None:
            p = np.asarray(self.precisions_init, dtype=np.float64)
            shape = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[ct]
            if p.shape != shape:
                raise ConfigError(f"precisions_init must have shape {shape} for covariance_type={ct!r}; got {p.shape}")
            if ct in ("diag", "spherical") and not (p > 0).all():
                raise ConfigError("precisions_init must be positive")

    # -- fitting -----------------------------------------------------------

    def _partition(self, X: Any, sample_weight: Any, variable: str | None,
                   storage_options: dict | None, executor: Executor | None = None,
                   partition_rows: int | None = None) -> PartitionedData:
        data = as_partitioned(
            X, sample_weight, partition_rows or self.partition_rows, variable=variable,
            storage_options=storage_options,
            memory_per_thread=None if executor is None else executor.memory_per_thread(),
        )
        if data.n_samples < max(self._candidates()):
            raise DataError(
                f"X has {data.n_samples} samples, fewer than n_components={max(self._candidates())}"
            )
        return data

    def _initial_params(self, members: list[tuple[int, int]], models: list, data: PartitionedData,
                        placed: list, executor: Executor) -> list[GMMParams]:
        """Starting parameters of every member (K, seed), sharing the data passes.

        Passes: k-means‖ rounds (or one sampling pass for the sample-based
        methods), then one assignment pass turning every member's centres
        into weights, means and covariances.
        """
        ct = self.covariance_type
        user = (self.weights_init, self.means_init, self.precisions_init)
        if all(v is not None for v in user):
            return [models[0].params_from(self.weights_init, self.means_init, precisions=self.precisions_init)
                    for _ in members]
        seeds = [seed for _, seed in members]
        # A sample serves the sample-based methods and the fallback covariances.
        total = gmm_init.sample_size(data.n_samples, max(k for k, _ in members))
        sampler = gmm_init.sample_partition_with_nan if self.missing == "em" else gmm_init.sample_partition
        specs = tuple((seed, total, data.n_samples) for seed in seeds)
        results = executor.map(_sample_members, (sampler, specs), placed, data.bounds)
        parts = [r[0] for r in results]
        method = self.init_params
        if method == "k-means||" and any(r[1] for r in results):
            method = "kmeans"  # distances need complete rows: centres from the NaN-tolerant sample
        samples = []
        for j in range(len(members)):
            sample = np.concatenate([p[j][0] for p in parts])
            sw = None if parts[0][j][1] is None else np.concatenate([p[j][1] for p in parts])
            if self.missing == "em":  # issue #7: centres from a NaN-tolerant sample
                sample, sw, var = gmm_init.nan_tolerant_sample(sample, sw, members[j][0])
            else:
                var = np.var(sample, axis=0)
            samples.append((sample, sw, var))
        if method == "k-means||":
            centres = kmeans_parallel_centres(
                lambda fn, shared: executor.map(fn, shared, placed, data.bounds),
                lambda i: data.read_rows(i, i + 1)[0], data.n_samples,
                [k for k, _ in members], seeds,
            )
        else:
            centres = [gmm_init.centres(method, s_, sw, k, seed)
                       for (s_, sw, _), (k, seed) in zip(samples, members)]
        how = "random" if method == "random" else "nearest"
        pseudo = []
        for (k, seed), model, c, (_, _, var) in zip(members, models, centres, samples):
            var = np.maximum(var, 1e-12) + self.reg_covar
            cov0 = {"full": np.repeat(np.diag(var)[None], k, axis=0), "tied": np.diag(var),
                    "diag": np.repeat(var[None], k, axis=0), "spherical": np.full(k, var.mean())}[ct]
            pseudo.append(model.params_from(np.full(k, 1.0 / k), c, covariances=cov0))
        summed = executor.map_reduce(
            _assign_members, tuple((m, p, how, seed) for m, p, (_, seed) in zip(models, pseudo, members)),
            placed, data.bounds)
        out = []
        for model, p0, stats in zip(models, pseudo, summed.members):
            params = model.m_step(stats, p0)
            weights, means = params.weights, params.means
            if self.weights_init is not None:
                weights = np.asarray(self.weights_init, dtype=np.float64)
            if self.means_init is not None:
                means = np.asarray(self.means_init, dtype=np.float64)
            if self.precisions_init is not None:
                out.append(model.params_from(weights, means, precisions=self.precisions_init))
            else:
                out.append(GMMParams(weights, means, params.covariances, params.precisions_cholesky))
        return out

    def _use_cache(self, data: PartitionedData, executor: Executor) -> bool:
        if self.cache != "auto":
            return bool(self.cache)
        share = 0.5 if executor.client is not None else 0.25
        return data.nbytes <= share * executor.total_memory()

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *,
            variable: str | None = None, callback: Any = None) -> "GaussianMixture":
        """Fit the mixture by EM.

        Parameters
        ----------
        X : numpy array, dask array, xarray DataArray/Dataset, or Zarr path/URL
            Data of shape (n_samples, n_features). A Zarr group must hold the
            array ``variable`` (default ``"X"``).
        y : ignored
        sample_weight : array-like of shape (n_samples,), or the name of an
            array in the Zarr group, optional
        variable : str, optional
            Array of a Zarr group or variable of an xarray Dataset to fit.
        callback : callable, optional
            ``callback(event, info)`` for progress displays: event
            ``"start"`` (info: n_samples, n_features, n_partitions, n_init,
            max_iter, resumed_from, dashboard_link), ``"iteration"`` (info:
            restart, iteration, mean_log_likelihood, delta, seconds, resumed,
            notes) and ``"end"`` (info: converged, n_iter, lower_bound).

        Returns
        -------
        self
        """
        self._fit(X, sample_weight, variable, callback)
        return self

    def _fit(self, X: Any, sample_weight: Any, variable: str | None, callback: Any) -> None:
        self._check_hyperparameters()
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        # A resumed run keeps the partitioning it started with, whatever cluster it resumes on.
        saved_rows = None
        if self.checkpoint_dir is not None and self.partition_rows is None:
            saved_rows = RunDirectory.saved_partition_rows(os.fspath(self.checkpoint_dir), self.storage_options)
        data = self._partition(X, sample_weight, variable, self.storage_options, executor, saved_rows)
        self._check_initial_parameters(data.n_features)
        warm = self.warm_start and hasattr(self, "converged_")
        if warm and self.checkpoint_dir is not None:
            raise ConfigError("warm_start cannot be combined with checkpoint_dir: a run directory resumes by itself")
        seed = _seed_from(self.random_state)
        run_dir = None
        if self.checkpoint_dir is not None:
            run_dir = RunDirectory(
                os.fspath(self.checkpoint_dir), self._fingerprint(data), seed,
                keep=self.keep_checkpoints, storage_options=self.storage_options,
                seed_is_fixed=self.random_state is not None,
            )
            seed = run_dir.seed
        placed = executor.place(data, self._use_cache(data, executor))
        # Members: every candidate K × every restart, all sharing each data pass.
        if warm:
            members = [(int(self.n_components_), _restart_seed(seed, 0))]
        else:
            members = [(k, _restart_seed(seed, r)) for k in self._candidates() for r in range(self.n_init)]
        n_init = 1 if warm else self.n_init
        labels = [{"n_components": k, "restart": i % n_init} for i, (k, _) in enumerate(members)]
        models = [self._model(k) for k, _ in members]
        schedule = [[dataclasses.replace(m, beta=b) for m in models] for b in self._annealing_betas()]
        previous = self._params() if warm else None

        def initial_params(indices: list[int]) -> list[GMMParams]:
            if previous is not None:
                return [previous for _ in indices]
            return self._initial_params([members[i] for i in indices], [models[i] for i in indices],
                                        data, placed, executor)

        result = fit_members(
            models, data, placed, executor, initial_params=initial_params, params_cls=GMMParams,
            max_iter=self.max_iter, tol=self.tol, labels=labels, run_dir=run_dir,
            checkpoint_every=self.checkpoint_every, schedule=schedule or None,
            between_stages=lambda stage, states: [
                dataclasses.replace(st, params=_perturb_means(st.params, self.covariance_type, (seed_, stage)))
                for st, (_, seed_) in zip(states, members)],
            initial_lower_bound=self.lower_bound_ if warm else -math.inf,
            callback=chain_callbacks(callback, self._progress_callback()),
        )
        # Within a K the best lower bound wins (scikit-learn's rule); across K the lowest BIC.
        winners = {k: result.best_index([i for i, (kk, _) in enumerate(members) if kk == k])
                   for k in dict.fromkeys(k for k, _ in members)}
        self.model_selection_ = []
        if len(winners) > 1:
            chosen = self._select_by_bic(winners, models, result, data, placed, executor)
        else:
            chosen = next(iter(winners.values()))
        best = result.states[chosen]
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in {self.max_iter} iterations (last Δ = "
                f"{best.history[-1].delta if best.history else float('nan'):.3g}); try a larger "
                "max_iter, a larger tol, or check the data",
                ConvergenceWarning,
                stacklevel=3,
            )
        self.n_components_ = members[chosen][0]
        self._set_fitted(best, data)
        self.restarts_ = [{**labels[i], "lower_bound": st.lower_bound, "n_iter": st.iteration,
                           "converged": st.converged, "history": [h.to_json() for h in st.history]}
                          for i, st in enumerate(result.states)]
        self.best_restart_ = labels[chosen]["restart"]
        for rec in best.history:
            for note in rec.notes:
                if "empty" in note:
                    warnings.warn(f"iteration {rec.iteration}: {note}", EmptyComponentWarning, stacklevel=3)
        if run_dir is not None:
            self._write_run_outputs(run_dir)

    def _select_by_bic(self, winners: dict[int, int], models: list, result: Any, data: PartitionedData,
                       placed: list, executor: Executor) -> int:
        """Score each K's best restart with its final parameters in one pass; lowest BIC wins."""
        idx = list(winners.values())
        summed = executor.map_reduce(
            _score_members, tuple((models[i], result.states[i].params) for i in idx), placed, data.bounds)
        n = data.n_samples
        table = []
        for (k, i), stats in zip(winners.items(), summed.members):
            p = models[i].n_parameters(data.n_features)
            ll = float(stats.log_likelihood)  # weighted total, as scikit-learn's score(X)·n unweighted
            table.append({"n_components": k, "log_likelihood": ll, "mean_log_likelihood": ll / stats.weight_sum,
                          "n_parameters": p, "bic": -2.0 * ll + p * math.log(n), "aic": -2.0 * ll + 2.0 * p,
                          "n_iter": result.states[i].iteration, "converged": result.states[i].converged})
        self.model_selection_ = table
        best_k = min(table, key=lambda row: row["bic"])["n_components"]
        return winners[best_k]

    def _fingerprint(self, data: PartitionedData) -> dict[str, Any]:
        return {
            "data": data.fingerprint(),
            "settings": {
                "model": "gmm", "n_components": self._candidates(),
                "missing": self.missing,
                "annealing": self._annealing_betas(),
                "covariance_type": self.covariance_type, "reg_covar": float(self.reg_covar),
                "n_init": int(self.n_init), "init_params": self.init_params,
                "weights_init": digest(self.weights_init), "means_init": digest(self.means_init),
                "precisions_init": digest(self.precisions_init),
                "partitions": [len(data.bounds), data.bounds[0][1] - data.bounds[0][0]],
                "fan_in": int(self.fan_in),
            },
        }

    def _write_run_outputs(self, run_dir: RunDirectory) -> None:
        store = run_dir.store
        store.write_json(self.history_, "history.json")
        store.write_json(self.restarts_, "restarts.json")
        if self.model_selection_:
            store.write_json(self.model_selection_, "model_selection.json")
        self.save(store.url.rstrip("/") + "/" + MODEL_DIRNAME, storage_options=self.storage_options)

    def _progress_callback(self):
        if not self.verbose:
            return None

        def show(event: str, info: dict) -> None:
            if event != "iteration":
                return
            it = info["iteration"]
            if it % max(1, self.verbose_interval) == 0 or it == 1:
                print(f"init {info['restart']} iteration {it}: mean log-likelihood "
                      f"{info['mean_log_likelihood']:.6f}  Δ {info['delta'] if info['delta'] is not None else float('inf'):.3g}"
                      f"  {info['seconds']:.2f}s")
        return show

    def _set_fitted(self, state: EMState, data: PartitionedData) -> None:
        p = state.params
        self.weights_ = p.weights
        self.means_ = p.means
        self.covariances_ = p.covariances
        self.precisions_cholesky_ = p.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(p.precisions_cholesky, self.covariance_type)
        self.converged_ = bool(state.converged)
        self.n_iter_ = int(state.iteration)
        self.lower_bound_ = float(state.lower_bound)
        self.lower_bounds_ = [r.mean_log_likelihood for r in state.history]
        self.history_ = [r.to_json() for r in state.history]
        self.n_features_in_ = data.n_features
        self.feature_names_ = data.feature_names

    def _params(self) -> GMMParams:
        check_is_fitted(self, "means_")
        return GMMParams(np.asarray(self.weights_, float), np.asarray(self.means_, float),
                         np.asarray(self.covariances_, float), np.asarray(self.precisions_cholesky_, float))

    # -- inference ---------------------------------------------------------

    def _apply(self, X: Any, what: str) -> Any:
        """Run a per-row function of the model on numpy (eager) or lazy input."""
        params = self._params()
        model = self._model()
        fn = {"score_samples": model.score_samples, "predict": model.predict,
              "predict_proba": model.predict_proba}[what]
        K = self.n_components_
        if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
            import zarr
            node = zarr.open(store=str(X), mode="r")
            X = da.from_zarr(node["X"] if hasattr(node, "array_keys") else node)
        xr_input = None
        if hasattr(X, "dims") and hasattr(X, "coords"):
            xr_input = X.transpose("sample", "feature")
            X = xr_input.data
        if isinstance(X, da.Array):
            self._check_features(X.shape)
            X = X.rechunk({1: -1})
            if what == "predict_proba":
                out = X.map_blocks(fn_block, params, model, what, dtype=np.float64, chunks=(X.chunks[0], (K,)))
            else:
                out = X.map_blocks(fn_block, params, model, what, drop_axis=1,
                                   dtype=np.int64 if what == "predict" else np.float64)
        else:
            if hasattr(X, "tocsr"):
                raise DataError("sparse input is not supported: pass a dense array")
            arr = np.asarray(X)
            if arr.dtype == object:
                arr = arr.astype(np.float64)
            self._check_features(arr.shape)
            # With missing="em" NaN is a missing value (issue #7); inf never is.
            bad = np.isinf(arr) if self.missing == "em" else ~np.isfinite(arr)
            if bad.any():
                row = int(np.flatnonzero(bad.any(axis=1))[0])
                raise DataError(f"X contains {'inf' if self.missing == 'em' else 'NaN or inf'} at row {row}")
            out = fn(params, arr)
        if xr_input is not None:
            import xarray as xr
            dims = ("sample", "component") if what == "predict_proba" else ("sample",)
            coords = {"sample": xr_input["sample"]} if "sample" in xr_input.coords else {}
            out = xr.DataArray(out, dims=dims, coords=coords, name=what)
        return out

    def _check_features(self, shape: tuple) -> None:
        if len(shape) != 2:
            raise DataError(f"X must be 2-D (sample, feature); got shape {tuple(shape)}"
                            + ("; Reshape your data with X.reshape(-1, 1) if it has a single feature"
                               if len(shape) == 1 else ""))
        if shape[1] != self.n_features_in_:
            raise DataError(f"X has {shape[1]} features, but GaussianMixture is expecting "
                            f"{self.n_features_in_} features as input")

    def score_samples(self, X: Any) -> Any:
        """Log-likelihood of each sample (numpy in, numpy out; lazy in, lazy out)."""
        return self._apply(X, "score_samples")

    def predict(self, X: Any) -> Any:
        """Most probable component of each sample."""
        return self._apply(X, "predict")

    def predict_proba(self, X: Any) -> Any:
        """Posterior probability of each component for each sample, (n, K)."""
        return self._apply(X, "predict_proba")

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """Fit, then predict the labels of ``X``."""
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def score(self, X: Any, y: Any = None) -> float:
        """Mean log-likelihood per sample of ``X``."""
        s = self.score_samples(X)
        if hasattr(s, "compute"):
            s = s.compute()
        return float(np.mean(np.asarray(s)))

    def _n_samples(self, X: Any) -> int:
        if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
            return as_partitioned(X).n_samples
        return int(X.shape[0])

    def _n_parameters(self) -> int:
        return self._model().n_parameters(self.n_features_in_)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = self._n_samples(X)
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        n = self._n_samples(X)
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples and their component labels from the fitted mixture."""
        if n_samples < 1:
            raise ConfigError(f"n_samples must be >= 1; got {n_samples}")
        rng = np.random.default_rng(_seed_from(self.random_state))
        return gmm_sample(self._params(), self.covariance_type, int(n_samples), rng)

    # -- imputation (issue #7) ----------------------------------------------

    def impute(self, X: Any, out: str | None = None, n_draws: int = 0,
               random_state: Any = None) -> Any:
        """Complete ``X``: each NaN becomes its conditional expectation under the fitted mixture.

        See :func:`dem.impute.impute` (this passes the estimator's
        ``storage_options``). Works whatever ``missing`` was used to fit.
        """
        from dem.impute import impute
        return impute(self, X, out, n_draws=n_draws, random_state=random_state,
                      storage_options=self.storage_options)

    # -- persistence -------------------------------------------------------

    def params_dataset(self) -> Any:
        """The fitted parameters as an ``xarray.Dataset`` with dims (component, feature, feature_).

        Coordinates come from the ``feature`` coordinate of the data the model
        was fitted on; see :func:`dem.io.params_dataset`.
        """
        from dem.io import params_dataset
        return params_dataset(self)

    def save(self, path: str, *, storage_options: dict | None = None) -> None:
        """Write the fitted model as a Zarr group that ``xarray.open_zarr`` opens."""
        from dem.io import save_model
        save_model(self, path, storage_options=storage_options)


def fn_block(block: np.ndarray, params: GMMParams, model: GaussianMixtureModel, what: str) -> np.ndarray:
    """Apply a model function to one dask block (module-level, so it pickles)."""
    return getattr(model, what)(params, block)
