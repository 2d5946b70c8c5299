"""``GaussianMixture``: scikit-learn's Gaussian mixture on the fit template, for data of any size.

The family's math is :mod:`dem.families.gaussian_mixture` (and
:mod:`dem.families.gmm_missing` for ``missing="em"``); this module only
declares the estimator: its parameters, members, initialisation passes,
model selection by BIC and fitted attributes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import DensityMixin

from dem.estimator.base import ConfigKey, EMEstimator, store_params
from dem.estimator.mixture import MixtureMixin
from dem.estimator.params import Integral, Interval, Real, StrOptions
from dem.families import mixture_init
from dem.families.gaussian_mixture import COVARIANCE_TYPES, GaussianMixtureFamily
from dem.families.gaussian_params import GMMParams
from dem.families.gmm_missing import MissingDataGaussianMixtureFamily
from dem.families.gmm_storage import GaussianMixtureStorage



class GaussianMixture(GaussianMixtureStorage, MixtureMixin, DensityMixin, EMEstimator):
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
        Convergence threshold on the change of the mean log-likelihood per sample.
    reg_covar : float, default=1e-6
        Added to the diagonal of covariances.
    max_iter : int, default=100
    n_init : int, default=1
        Number of initialisations; the best lower bound is kept. Restarts
        share every data pass and a converged restart stops costing compute.
        Restart r of ``random_state=s`` is exactly the fit with ``random_state=s+r``.
    init_params : {"k-means||", "kmeans", "k-means++", "random", "random_from_data"}, default="k-means||"
        How initial centres are placed. ``"k-means||"`` is scalable k-means++
        (Bahmani et al., 2012) over all partitions: 2 oversampling passes, a
        weighting pass, weighted k-means of the candidates on the driver. The
        others work on a row-keyed sample of about ``max(20000, 200·n_components)``
        rows. One pass over all data then turns the centres into weights,
        means and covariances. All restarts and candidate K share these passes.
    weights_init, means_init, precisions_init : array-like, optional
        User-supplied initial parameters (they override ``init_params``).
    random_state : int, RandomState, Generator or None
        None draws a seed from numpy's global generator.
    warm_start : bool, default=False
        Start from the previous fit's parameters (``n_init`` is then 1).
    beta_init, beta_rate : float, optional
        Deterministic annealing (Ueda and Nakano, 1998): EM first runs at
        inverse temperature β = ``beta_init``, then β grows by ``beta_rate``
        per stage until it reaches 1 (:mod:`dem.engine.strategies.annealing`).
        Use it when restarts keep finding poor local optima.
    missing : {"error", "em"}, default="error"
        ``"error"``: NaN is an error naming the first offending row and
        feature. ``"em"``: NaN marks a value missing at random; EM maximises
        the observed-data likelihood (:mod:`dem.families.gmm_missing`);
        :meth:`impute` completes data. ``inf`` is an error either way.
    accelerate : {"squarem"} or None, default=None
        SQUAREM extrapolation between EM steps (:mod:`dem.engine.strategies.squarem`).
    learning_method : {"batch", "online", "sem", "sem+em"}, default="batch"
        Batch EM, online EM over mini-batches of partitions, or stochastic EM.
    learning_decay, learning_offset, batch_size
        Online EM's step sizes ρ_t = (t + learning_offset)^(−learning_decay)
        and mini-batch rows.
    verbose : int, default=0
    verbose_interval : int, default=10
    client : distributed.Client, optional
        Cluster to run on. None uses the active client if there is one, else
        Dask's threaded scheduler in this process.
    partition_rows : int, optional
        Rows per partition (whole Zarr chunks). Default: from the data size alone.
    fan_in : int, default=8
        Children per node of the reduction tree.
    cache : {"auto", True, False}, default="auto"
        Keep partitions in (worker) memory between iterations.
    checkpoint_dir : str, optional
        Run directory (local path or fsspec URL) for checkpoints, history and
        the final model; a matching run there is resumed.
    checkpoint_every : int, default=1
    keep_checkpoints : int, default=3
    storage_options : dict, optional
        fsspec options for Zarr URLs and ``checkpoint_dir``.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        Mean log-likelihood of the last E-step of the best initialisation.
    lower_bounds_ : list of float
    n_components_ : int
        The fitted model's number of components (the BIC choice for a list).
    restarts_, model_selection_, history_ : list of dict
    n_passes_ : float
        Data passes of the reported fit, initialisation excluded
        (``n_init_passes_``).
    n_features_in_ : int
    feature_names_ : ndarray or None
    """

    _kind = "gmm"
    _config_keys = {
        "model.n_components": ConfigKey("n_components", 1, "mixture components, or a list of candidates "
                                                          "(lowest BIC wins)"),
        "model.covariance_type": ConfigKey("covariance_type", "full", "covariance structure"),
        "model.reg_covar": ConfigKey("reg_covar", 1e-6, "added to covariance diagonals"),
        "model.missing": ConfigKey("missing", "error", "NaN: error, or em (missing at random, fitted by EM)"),
    }
    _config_generates_data = True
    _config_fit_arguments = {"data.weights": "sample_weight", "data.variable": "variable"}
    _parameter_constraints = {
        **EMEstimator._parameter_constraints,
        "n_components": [Interval(Integral, 1, None, closed="left"), list, tuple],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "init_params": [StrOptions(set(mixture_init.INIT_METHODS))],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "warm_start": ["boolean"],
        "beta_init": [Interval(Real, 0.0, 1.0, closed="right"), None],
        "beta_rate": [Interval(Real, 1.0, None, closed="neither")],
        "missing": [StrOptions({"error", "em"})],
    }

    def __init__(self, n_components: Any = 1, *, covariance_type: str = "full", tol: float = 1e-3,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, init_params: str = "k-means||",
                 weights_init: Any = None, means_init: Any = None, precisions_init: Any = None,
                 random_state: Any = None, warm_start: bool = False, beta_init: float | None = None,
                 beta_rate: float = 2.0, verbose: int = 0, verbose_interval: int = 10, missing: str = "error",
                 accelerate: str | None = None, learning_method: str = "batch", learning_decay: float = 0.7,
                 learning_offset: float = 10.0, batch_size: int | None = None, client: Any = None,
                 partition_rows: int | None = None, fan_in: int = 8, cache: Any = "auto",
                 checkpoint_dir: str | None = None, checkpoint_every: int = 1, keep_checkpoints: int = 3,
                 storage_options: dict | None = None) -> None:
        store_params(self, locals())

    # -- members and data ------------------------------------------------------------

    def _candidates(self) -> list[int]:
        ks = self.n_components if isinstance(self.n_components, (list, tuple)) else [self.n_components]
        return [int(k) for k in ks]

    def _family(self, n_components: int) -> Any:
        if self.missing == "em":
            return MissingDataGaussianMixtureFamily(int(n_components), self.covariance_type, float(self.reg_covar))
        return GaussianMixtureFamily(int(n_components), self.covariance_type, float(self.reg_covar))

    def _nan_is_missing(self) -> bool:
        return self.missing == "em"

    def _init(self) -> mixture_init.MixtureInit:
        return mixture_init.MixtureInit(self.init_params, self.covariance_type, float(self.reg_covar),
                                        self.weights_init, self.means_init, self.precisions_init,
                                        self.missing == "em")

    def _check_parameters(self) -> None:
        from dem.errors import ConfigError

        ks = self.n_components if isinstance(self.n_components, (list, tuple)) else [self.n_components]
        if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 for k in ks):
            raise ConfigError(f"n_components must be an integer >= 1 or a list of them; got {self.n_components!r}")
        if len(set(ks)) != len(ks):
            raise ConfigError(f"n_components lists a value twice: {list(ks)}")
        if len(ks) > 1 and any(v is not None for v in (self.weights_init, self.means_init, self.precisions_init)):
            raise ConfigError("weights_init/means_init/precisions_init need a single n_components, not a list")

    def _check_data(self, data: Any) -> None:
        from dem.errors import DataError

        k = max(self._candidates())
        if data.n_samples < k:
            n = data.n_samples
            raise DataError(f"X has {n} sample{'s' if n != 1 else ''}, fewer than n_components={k}")
        mixture_init.check_user_parameters(self._init(), self._candidates()[0], data.n_features)

    def _members(self, data: Any) -> list[tuple[Any, dict[str, Any]]]:
        out = []
        for k in self._candidates():
            family = self._family(k)  # one object per K: restarts of a K stack in the kernel
            out.extend((family, {"n_components": k, "restart": r}) for r in range(self.n_init))
        return out

    def _initialize(self, members: list[tuple[Any, int]], passes: Any, data: Any) -> list[GMMParams]:
        return mixture_init.initial_params(members, passes, self._init())

    def _select(self, outcome: Any, members: list, passes: Any) -> int:
        """Within a K the best lower bound wins (scikit-learn's rule); across K the lowest BIC."""
        chosen, self.model_selection_ = select_by_bic(outcome, members, passes)
        return chosen

    # -- fitted attributes -------------------------------------------------------------

    def _set_fitted(self, family: Any, params: GMMParams, data: Any) -> None:
        from dem.families.gaussian_params import precisions_from_cholesky

        self.weights_ = params.weights
        self.means_ = params.means
        self.covariances_ = params.covariances
        self.precisions_cholesky_ = params.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(params.precisions_cholesky, self.covariance_type)
        self.n_components_ = int(params.means.shape[0])

    def _fitted_params(self) -> GMMParams:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "means_")
        return GMMParams(np.asarray(self.weights_, float), np.asarray(self.means_, float),
                         np.asarray(self.covariances_, float), np.asarray(self.precisions_cholesky_, float))

    def _fitted_family(self) -> Any:
        from dem.estimator.params import validate

        validate(self, ("covariance_type", "reg_covar", "missing"))  # they may have changed since fit
        return self._family(int(getattr(self, "n_components_", None) or self._candidates()[0]))

    def _run_outputs(self) -> dict[str, Any]:
        out = super()._run_outputs()
        if getattr(self, "model_selection_", None):
            out["model_selection.json"] = self.model_selection_
        return out

    # -- fitting and the rest of scikit-learn's API ------------------------------------

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, variable: str | None = None,
            callback: Any = None) -> "GaussianMixture":
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
            ``callback(event, info)`` for progress displays: events
            ``"start"``, ``"iteration"`` (a history record plus ``restart``
            and the member's labels) and ``"end"``.

        Returns
        -------
        self
        """
        return self._fit(X, sample_weight=sample_weight, variable=variable, callback=callback)

    def impute(self, X: Any, out: str | None = None, n_draws: int = 0, random_state: Any = None, *,
               storage_options: dict | None = None, variable: str | None = None,
               partition_rows: int | None = None, overwrite: bool = False) -> Any:
        """Complete ``X``: each NaN becomes its conditional expectation under the fitted mixture.

        Works whatever ``missing`` was used to fit. See
        :func:`dem.estimator.impute.impute` for the outputs (numpy, lazy dask,
        or a Zarr group written by the workers when ``out`` is given).
        """
        from sklearn.utils.validation import check_is_fitted

        from dem.estimator.impute import impute

        check_is_fitted(self, "means_")
        family = MissingDataGaussianMixtureFamily(int(self.n_components_), self.covariance_type,
                                                  float(self.reg_covar))
        return impute(family, self._fitted_params(), X, out, n_draws=n_draws, random_state=random_state,
                      storage_options=storage_options if storage_options is not None else self.storage_options,
                      variable=variable, partition_rows=partition_rows or self.partition_rows,
                      overwrite=overwrite, client=self.client)

    @classmethod
    def _generate_demo(cls, path: str, options: dict[str, Any], client: Any = None) -> str:
        from dem.data.generate import generate_dataset
        from dem.errors import ConfigError

        for flag, key in (("--samples", "n_samples"), ("--features", "n_features")):
            if options.get(key) is None:
                raise ConfigError(f"dem generate --kind gmm needs {flag}")
        o = options
        summary = generate_dataset(path, o["n_samples"], o["n_features"], o["n_components"],
                                   chunk_rows=o["chunk_rows"], dtype=o["dtype"], seed=o["seed"],
                                   separation=o["separation"], weighted=o["weighted"], client=client,
                                   overwrite=o["overwrite"])
        return (f"{o['n_samples']:,} rows × {o['n_features']} features ({o['dtype']}), {o['n_components']} "
                f"components, {summary['n_chunks']} chunks, {summary['nbytes'] / 2**20:,.1f} MiB uncompressed")

    def summary_lines(self) -> list[str]:
        order = np.argsort(-np.asarray(self.weights_))
        shown = ", ".join(f"{int(k)}: {float(self.weights_[k]):.3f}" for k in order[:12])
        more = f" (and {len(order) - 12} more)" if len(order) > 12 else ""
        return [f"components: {self.n_components_} ({self.covariance_type} covariances); weights {shown}{more}"]


def select_by_bic(outcome: Any, members: list, passes: Any) -> tuple[int, list[dict[str, Any]]]:
    """The member to report and the model-selection table (empty for a single K).

    Within a K the best lower bound wins (scikit-learn's rule); each K's best
    restart is scored once more with its final parameters, in one pass, and
    the lowest BIC wins.
    """
    import math

    from dem.engine.executor import Evaluation

    ks = [label["n_components"] for _, label in members]
    winners = {k: outcome.best_index([i for i, kk in enumerate(ks) if kk == k]) for k in dict.fromkeys(ks)}
    if len(winners) == 1:
        return next(iter(winners.values())), []
    idx = list(winners.values())
    stats = passes.evaluate([Evaluation(members[i][0], outcome.runs[i].result()) for i in idx])
    n = passes.n_samples
    table = []
    for (k, i), s in zip(winners.items(), stats):
        p = members[i][0].n_parameters(passes.n_features)
        ll = float(s.log_likelihood)
        table.append({"n_components": k, "log_likelihood": ll, "mean_log_likelihood": ll / s.weight_sum,
                      "n_parameters": p, "bic": -2.0 * ll + p * math.log(n), "aic": -2.0 * ll + 2.0 * p,
                      "n_iter": outcome.runs[i].iterations, "converged": outcome.runs[i].converged})
    best_k = min(table, key=lambda row: row["bic"])["n_components"]
    return winners[best_k], table


ESTIMATORS = [GaussianMixture]
