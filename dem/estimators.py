"""scikit-learn-style estimators wrapping a model family and the engine."""

from __future__ import annotations

import hashlib
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

from dem.core.engine import EMState
from dem.core.executor import Executor
from dem.core.fitting import RunDirectory, fit_with_restarts
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

MISSING_CHOICES = ("error", "em")  # issue #7

CACHE_CHOICES = ("auto", True, False)
MODEL_DIRNAME = "model.zarr"


class EmptyComponentWarning(UserWarning):
    """A component lost all its responsibility; it kept its previous mean and covariance."""


def _chain(*callbacks: Any) -> Any:
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def call(event: str, info: dict) -> None:
        for c in live:
            c(event, info)
    return call


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
    return int(np.random.SeedSequence([base, restart]).generate_state(2, np.uint64)[0] >> 1)


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture fitted by EM on data of any size, on a Dask cluster.

    Parameters follow :class:`sklearn.mixture.GaussianMixture`; the fitted
    attributes have the same names and meanings, and given the same initial
    parameters dem reaches the same numbers.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {"full", "tied", "diag", "spherical"}, default="full"
    tol : float, default=1e-3
        Convergence threshold on the change of the mean log-likelihood.
    reg_covar : float, default=1e-6
        Added to the diagonal of covariances.
    max_iter : int, default=100
    n_init : int, default=1
        Number of initialisations; the best lower bound is kept.
    init_params : {"kmeans", "k-means++", "random", "random_from_data"}, default="kmeans"
        How initial centres are placed. Centres are computed on a sample of
        up to ``max(20000, 200·n_components)`` rows drawn evenly from every
        partition; one pass over all data then turns them into weights,
        means and covariances.
    weights_init, means_init, precisions_init : array-like, optional
        User-supplied initial parameters (they override ``init_params``).
    random_state : int, RandomState, Generator or None
    warm_start : bool, default=False
        Start from the previous fit's parameters (``n_init`` is then 1).
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
        caches when the data takes at most half the cluster's memory.
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
        init_params: str = "kmeans",
        weights_init: Any = None,
        means_init: Any = None,
        precisions_init: Any = None,
        random_state: Any = None,
        warm_start: bool = False,
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

        positive_int("n_components")
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

    def _model(self) -> GaussianMixtureModel | MissingDataGaussianMixtureModel:
        if self.missing == "em":  # issue #7: NaN are missing values
            return MissingDataGaussianMixtureModel(int(self.n_components), self.covariance_type,
                                                   float(self.reg_covar))
        return GaussianMixtureModel(int(self.n_components), self.covariance_type, float(self.reg_covar))

    def _check_initial_parameters(self, n_features: int) -> None:
        K, D, ct = self.n_components, n_features, self.covariance_type
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
        if data.n_samples < self.n_components:
            raise DataError(
                f"X has {data.n_samples} samples, fewer than n_components={self.n_components}"
            )
        return data

    def _initial_params(self, model: GaussianMixtureModel, data: PartitionedData,
                        placed: list, executor: Executor, seed: int) -> GMMParams:
        K, D, ct = self.n_components, data.n_features, self.covariance_type
        user = (self.weights_init, self.means_init, self.precisions_init)
        if all(v is not None for v in user):
            return model.params_from(self.weights_init, self.means_init, precisions=self.precisions_init)
        total = gmm_init.sample_size(data.n_samples, K)
        sampler = gmm_init.sample_partition_with_nan if self.missing == "em" else gmm_init.sample_partition
        parts = executor.map(sampler, (seed, total, data.n_samples), placed, data.bounds)
        sample = np.concatenate([p[0] for p in parts])
        sw = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
        if self.missing == "em":  # issue #7: centres from a NaN-tolerant sample
            sample, sw, var = gmm_init.nan_tolerant_sample(sample, sw, K)
        else:
            var = np.var(sample, axis=0)
        centres = gmm_init.centres(self.init_params, sample, sw, K, seed)
        var = np.maximum(var, 1e-12) + self.reg_covar
        cov0 = {
            "full": np.repeat(np.diag(var)[None], K, axis=0),
            "tied": np.diag(var),
            "diag": np.repeat(var[None], K, axis=0),
            "spherical": np.full(K, var.mean()),
        }[ct]
        pseudo = model.params_from(np.full(K, 1.0 / K), centres, covariances=cov0)
        how = "random" if self.init_params == "random" else "nearest"

        def assign(p: GMMParams, X: np.ndarray, w: Any, start: int) -> Any:
            return model.assignment_stats(p, X, w, start, responsibilities=how, seed=(seed, start))

        stats = executor.map_reduce(assign, pseudo, placed, data.bounds)
        params = model.m_step(stats, pseudo)
        weights, means = params.weights, params.means
        if self.weights_init is not None:
            weights = np.asarray(self.weights_init, dtype=np.float64)
        if self.means_init is not None:
            means = np.asarray(self.means_init, dtype=np.float64)
        if self.precisions_init is not None:
            return model.params_from(weights, means, precisions=self.precisions_init)
        return GMMParams(weights, means, params.covariances, params.precisions_cholesky)

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
        model = self._model()
        warm = self.warm_start and hasattr(self, "converged_")
        if warm and self.checkpoint_dir is not None:
            raise ConfigError("warm_start cannot be combined with checkpoint_dir: a run directory resumes by itself")
        n_init = 1 if warm else self.n_init
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
        previous = self._params() if warm else None

        def initial_params(restart: int) -> GMMParams:
            if previous is not None:
                return previous
            return self._initial_params(model, data, placed, executor, _restart_seed(seed, restart))

        result = fit_with_restarts(
            model, data, placed, executor, n_init=n_init, initial_params=initial_params,
            params_cls=GMMParams, max_iter=self.max_iter, tol=self.tol, run_dir=run_dir,
            initial_lower_bound=self.lower_bound_ if warm else -math.inf,
            checkpoint_every=self.checkpoint_every,
            callback=_chain(callback, self._progress_callback()),
        )
        best = result.best
        if not best.converged and self.max_iter > 0:
            warnings.warn(
                f"EM did not converge in {self.max_iter} iterations (last Δ = "
                f"{best.history[-1].delta if best.history else float('nan'):.3g}); try a larger "
                "max_iter, a larger tol, or check the data",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._set_fitted(best, data)
        self.restarts_ = result.restarts
        self.best_restart_ = result.best_restart
        for rec in best.history:
            for note in rec.notes:
                if "empty" in note:
                    warnings.warn(f"iteration {rec.iteration}: {note}", EmptyComponentWarning, stacklevel=3)
        if run_dir is not None:
            self._write_run_outputs(run_dir)

    def _fingerprint(self, data: PartitionedData) -> dict[str, Any]:
        def digest(v: Any) -> str | None:
            if v is None:
                return None
            return hashlib.sha256(np.ascontiguousarray(np.asarray(v, dtype=np.float64)).tobytes()).hexdigest()[:16]

        return {
            "data": data.fingerprint(),
            "settings": {
                "model": "gmm", "n_components": int(self.n_components),
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
        K = self.n_components
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

    def save(self, path: str, *, storage_options: dict | None = None) -> None:
        """Write the fitted model as a Zarr group that ``xarray.open_zarr`` opens."""
        from dem.io import save_model
        save_model(self, path, storage_options=storage_options)


def fn_block(block: np.ndarray, params: GMMParams, model: GaussianMixtureModel, what: str) -> np.ndarray:
    """Apply a model function to one dask block (module-level, so it pickles)."""
    return getattr(model, what)(params, block)
