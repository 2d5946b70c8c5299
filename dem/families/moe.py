"""Mixture of experts fitted by generalised EM: a softmax gate and linear experts, out of core.

The model (Jacobs, Jordan, Nowlan and Hinton, 1991) is

    p(y | x) = Σ_k g_k(x) p_k(y | x),   g(x) = softmax(V x + c),

with linear-Gaussian experts ``y | x, k ~ N(W_k x + b_k, Σ_k)`` or
multinomial logistic experts. One pass over the data gives the posteriors
and every statistic the M-step needs (:mod:`dem.families.moe_kernel`):
the experts' weighted normal equations and the gate's gradient (and, for
Newton steps, Hessian). The M-step solves the Gaussian experts in closed
form (:mod:`dem.families.moe_experts`) and takes one guaranteed-ascent step
for the gate and for categorical experts (:mod:`dem.families.moe_gate`):
generalised EM, so the objective — the mean log-likelihood minus the
ridge penalties per unit weight — never decreases. Initialisation passes
and the demo dataset are :mod:`dem.families.moe_init`; the estimator
``MixtureOfExperts`` closes this module.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from typing import Any

import numpy as np

from dem.data.record import Partition
from dem.errors import ConfigError, DataError
from dem.estimator.base import ConfigKey, EMEstimator, store_params
from dem.estimator.params import Integral, Interval, Real, StrOptions
from dem.families import moe_experts as ex
from dem.families import moe_init
from dem.families import moe_kernel as kern
from dem.families.base import Family, FlatParameters, Note, Rebasing, Stats
from dem.families.gaussian_params import covariance_from_vector, covariance_to_vector
from dem.families.moe_experts import COVARIANCE_TYPES, EXPERTS, MoEParams
from dem.families.moe_gate import GATE_STEPS, gate_step
from dem.families.moe_outputs import MoEOutputs, is_path, unique_labels
from dem.families.moe_init import generate_dataset  # noqa: F401  (``dem generate --kind mixture_of_experts``)


@dataclasses.dataclass(frozen=True)
class MoEStats(Stats):
    """What every mixture of experts accumulates (float64, about the shift in the parameters).

    ``resp_sum[k] = Σ w h_k``; ``xx[k] = Σ w h_k x̃x̃ᵀ`` with x̃ = [x − μ, 1];
    ``gate_grad = Σ w (h − g(x)) x̃`` (p+1, K); ``gate_hessian`` the upper
    blocks ``Σ w (g_k δ_kl − g_k g_l) x̃x̃ᵀ`` of the gate's free rows for
    Newton steps ((0, p+1, p+1) otherwise).
    """

    resp_sum: np.ndarray
    xx: np.ndarray
    gate_grad: np.ndarray
    gate_hessian: np.ndarray


@dataclasses.dataclass(frozen=True)
class GaussianExpertStats(MoEStats):
    """Adds residual moments ``xr[k] = Σ w h_k x̃ r_kᵀ`` and ``rr[k] = Σ w h_k r_k r_kᵀ``.

    ``r_k = y − (W_k x + b_k)`` under the parameters the statistics were
    taken with (``rr`` holds the diagonal for diag covariances).
    """

    xr: np.ndarray
    rr: np.ndarray


@dataclasses.dataclass(frozen=True)
class CategoricalExpertStats(MoEStats):
    """Adds ``expert_grad[k] = Σ w h_k x̃ (e_y − p_k(x))ᵀ`` (K, p+1, C)."""

    expert_grad: np.ndarray


@dataclasses.dataclass(frozen=True)
class MixtureOfExpertsFamily(Family, FlatParameters, Rebasing):
    """A mixture of experts as pure functions over partitions.

    Parameters
    ----------
    n_experts : int
    expert : {"gaussian", "categorical"}
    covariance_type : {"full", "diag"}
        Noise covariance of Gaussian experts.
    classes : tuple
        Sorted class labels (categorical experts).
    gate_reg, expert_reg : float
        Ridges ``½ λ ‖V‖²`` on the gate's coefficients and ``½ λ_e ‖A_k‖²`` on
        categorical experts' coefficients (intercepts are not penalised), in
        units of the summed sample weight, as scikit-learn's ``1/C``.
    reg_covar : float
        Added to the diagonal of Gaussian experts' covariances.
    gate_step : {"bohning", "newton"}
        The gate's M-step (:mod:`dem.families.moe_gate`).
    """

    n_experts: int
    expert: str = "gaussian"
    covariance_type: str = "full"
    classes: tuple = ()
    gate_reg: float = 1.0
    expert_reg: float = 1.0
    reg_covar: float = 1e-6
    gate_step: str = "newton"

    kind = "mixture_of_experts"
    params_type = MoEParams

    def prepared(self, params: MoEParams, newton: bool = False) -> kern.Prepared:
        classes = np.asarray(self.classes) if self.expert == "categorical" else None
        return ex.prepare(params, self.expert, self.covariance_type, classes, newton)

    def _stats(self, acc: dict[str, Any]) -> MoEStats:
        cls = GaussianExpertStats if self.expert == "gaussian" else CategoricalExpertStats
        return cls(**{k: (float(v) if np.ndim(v) == 0 else v) for k, v in acc.items()})

    def e_step(self, params: MoEParams, part: Partition) -> MoEStats:
        """Statistics of one partition; DataError names the first bad row of X, y or the weights."""
        newton = self.gate_step == "newton" and self.n_experts > 1
        return self._stats(kern.e_step_sums(self.prepared(params, newton), part))

    def assignment_stats(self, params: MoEParams, part: Partition, assign: Any) -> MoEStats:
        """Statistics with given responsibilities instead of the posterior (the initial pass)."""
        return self._stats(kern.e_step_sums(self.prepared(params), part, responsibilities=assign))

    def m_step(self, stats: MoEStats, params: MoEParams) -> MoEParams:
        K = self.n_experts
        empty = ex.empty_experts(stats.resp_sum, stats.weight_sum)
        beta = ex.expert_beta(params)
        cov = params.expert_covariances
        if self.expert == "gaussian":
            beta, cov = ex.gaussian_experts_m_step(stats.xx, stats.xr, stats.rr, stats.resp_sum, empty, beta,
                                                   cov, self.covariance_type, self.reg_covar)
        else:
            beta = ex.categorical_experts_m_step(stats.xx, stats.expert_grad, empty, beta, self.expert_reg)
        W, b = ex.expert_from_beta(beta, params.x_shift, params.y_shift)
        hessian = stats.gate_hessian if self.gate_step == "newton" and stats.gate_hessian.shape[0] else None
        theta = gate_step(ex.gate_theta(params), stats.gate_grad[:, :K - 1].T, stats.xx.sum(axis=0),
                          self.gate_reg, hessian)
        V, c = ex.gate_from_theta(theta, params.x_shift)
        return MoEParams(V, c, W, b, cov, params.x_shift, params.y_shift)

    def penalty(self, params: MoEParams) -> float:
        """The ridge terms GEM's objective subtracts from the log-likelihood."""
        pen = 0.5 * self.gate_reg * float(np.sum(params.gate_coef**2))
        if self.expert == "categorical":
            pen += ex.expert_penalty(params, self.expert_reg)
        return pen

    def objective(self, stats: Stats, params: MoEParams) -> float:
        """``(Σ w log p(y | x) − penalties) / Σ w``: what every M-step raises."""
        if stats.weight_sum <= 0:
            return float("-inf")
        return float((stats.log_likelihood - self.penalty(params)) / stats.weight_sum)

    def notes(self, stats: MoEStats, params: MoEParams) -> list[Note]:
        return [Note("empty", int(k), f"expert {int(k)} is empty; it keeps its previous parameters")
                for k in np.flatnonzero(ex.empty_experts(stats.resp_sum, stats.weight_sum))]

    def n_parameters(self, n_features: int, n_out: int | None = None) -> int:
        out = n_out if n_out is not None else (len(self.classes) if self.expert == "categorical" else 1)
        gate = (self.n_experts - 1) * (n_features + 1)
        return gate + ex.n_expert_parameters(self.expert, self.covariance_type, self.n_experts, n_features, out)

    def log_density(self, params: MoEParams, part: Partition) -> np.ndarray:
        """``log p(y_i | x_i)`` of every row."""
        return kern.log_likelihood_rows(self.prepared(params), part.X, part.y, part.start)

    # -- abilities -------------------------------------------------------------------

    def to_vector(self, params: MoEParams) -> np.ndarray:
        """Free gate rows, expert coefficients and intercepts as they are; covariances as Cholesky-log."""
        parts = [params.gate_coef[:-1].ravel(), params.gate_intercept[:-1], params.expert_coef.ravel(),
                 params.expert_intercept.ravel()]
        if self.expert == "gaussian":
            parts.append(covariance_to_vector(params.expert_covariances, self.covariance_type))
        return np.concatenate(parts)

    def from_vector(self, vector: np.ndarray, like: MoEParams) -> MoEParams:
        v = np.asarray(vector, dtype=np.float64)
        K, p = like.gate_coef.shape
        sizes = [(K - 1) * p, K - 1, like.expert_coef.size, like.expert_intercept.size]
        cuts = np.cumsum(sizes)
        V = np.vstack([v[:cuts[0]].reshape(K - 1, p), np.zeros((1, p))])
        c = np.append(v[cuts[0]:cuts[1]], 0.0)
        W = v[cuts[1]:cuts[2]].reshape(like.expert_coef.shape)
        b = v[cuts[2]:cuts[3]].reshape(like.expert_intercept.shape)
        cov = like.expert_covariances
        if self.expert == "gaussian":
            cov = covariance_from_vector(v[cuts[3]:], self.covariance_type, like.expert_covariances.shape)
        return MoEParams(V, c, W, b, cov, like.x_shift, like.y_shift)

    def rebase(self, stats: MoEStats, old: MoEParams, new: MoEParams) -> MoEStats:
        """Gaussian experts' residual moments moved exactly onto ``new``'s coefficients.

        ``xx`` is about the data's mean, which M-steps never move, so it
        needs nothing. The gate's gradient (and a categorical expert's) is a
        gradient at ``old`` and stays one: online EM blends it with newer
        ones as a stochastic-approximation step, which is all it can be
        without another pass.
        """
        if self.expert != "gaussian":
            return stats
        xr, rr = ex.rebase_residual_moments(stats.xx, stats.xr, stats.rr, ex.expert_beta(old), ex.expert_beta(new),
                                            self.covariance_type)
        return dataclasses.replace(stats, xr=xr, rr=rr)


# -- the estimator -------------------------------------------------------------------

class MixtureOfExperts(MoEOutputs, EMEstimator):
    """Mixture of experts fitted by generalised EM on data of any size, on a Dask cluster.

    ``p(y | x) = Σ_k g_k(x) p_k(y | x)`` with a softmax gate ``g(x) =
    softmax(V x + c)`` (the last expert is the reference: its row is 0) and
    linear-Gaussian experts ``N(W_k x + b_k, Σ_k)`` (a regressor) or
    multinomial logistic experts (a classifier). scikit-learn sees a
    regressor or a classifier according to ``expert``.

    Parameters
    ----------
    n_experts : int, default=2
    expert : {"gaussian", "categorical"}, default="gaussian"
    covariance_type : {"full", "diag"}, default="full"
        Noise covariance of Gaussian experts over the T targets.
    gate_reg : float, default=1.0
        Ridge ``½ λ ‖V‖²`` on the gate's coefficients (not its intercepts),
        added to the summed weighted log-likelihood as scikit-learn's
        ``LogisticRegression`` adds ``½ ‖w‖² / C``; keeps separable gates finite.
    expert_reg : float, default=1.0
        The same ridge on categorical experts' coefficients (``1/C`` of
        ``LogisticRegression``); unused by Gaussian experts.
    reg_covar : float, default=1e-6
        Added to the diagonal of Gaussian experts' covariances.
    gate_step : {"bohning", "newton"}, default="newton"
        The gate's generalised M-step: Böhning's fixed-curvature bound (free
        from the experts' statistics), or a Newton step from the exact
        Hessian accumulated in the same pass, safeguarded by that bound.
    tol : float, default=1e-3
        Convergence threshold on the change of the objective per unit weight.
    max_iter : int, default=100
    n_init : int, default=1
        Restarts sharing every data pass; restart r of ``random_state=s`` is
        the fit with ``random_state=s+r``; the best objective wins.
    init_params : {"k-means||", "random"}, default="k-means||"
        k-means‖ on the standardised joint rows ``[x, y]`` (one-hot labels for
        categorical experts) then weighted least squares per cluster, or
        row-keyed random responsibilities.
    random_state, warm_start, verbose, verbose_interval
        As :class:`dem.GaussianMixture`.
    accelerate, learning_method, learning_decay, learning_offset, batch_size, client, partition_rows,
    fan_in, cache, checkpoint_dir, checkpoint_every, keep_checkpoints, storage_options
        The engine's parameters, as :class:`dem.GaussianMixture`.

    Attributes
    ----------
    gate_coef_ : ndarray of shape (K, p)
    gate_intercept_ : ndarray of shape (K,)
    expert_coef_ : ndarray of shape (K, T, p) Gaussian, (K, C, p) categorical
    expert_intercept_ : ndarray of shape (K, T) or (K, C)
    expert_covariances_ : ndarray of shape (K, T, T) full or (K, T) diag (Gaussian experts)
    classes_ : ndarray of shape (C,) (categorical experts)
    x_mean_, y_mean_ : ndarray
        The weighted means the statistics were centred on.
    lower_bound_ : float
        The objective at the last E-step: mean log p(y | x) per unit weight
        minus the ridge penalties divided by the summed weight.
    n_iter_, converged_, history_, n_passes_, n_init_passes_, restarts_, best_restart_
        As :class:`dem.GaussianMixture`.
    n_experts_, n_targets_, n_features_in_, feature_names_
    """

    _kind = "mixture_of_experts"
    _config_keys = {
        "model.n_experts": ConfigKey("n_experts", 2, "number of experts"),
        "model.expert": ConfigKey("expert", "gaussian", "gaussian (regression) or categorical (classification)"),
        "model.covariance_type": ConfigKey("covariance_type", "full", "noise covariance of gaussian experts"),
        "model.gate_reg": ConfigKey("gate_reg", 1.0, "ridge on the gate's coefficients"),
        "model.expert_reg": ConfigKey("expert_reg", 1.0, "ridge on categorical experts' coefficients"),
        "model.reg_covar": ConfigKey("reg_covar", 1e-6, "added to gaussian experts' covariance diagonals"),
        "model.gate_step": ConfigKey("gate_step", "newton", "the gate's M-step: newton (safeguarded) or bohning"),
        "model.init_params": ConfigKey("init_params", "k-means||", "k-means|| on [x, y], or random"),
    }
    _config_fit_arguments = {"data.target": "y", "data.weights": "sample_weight", "data.variable": "variable"}
    _parameter_constraints = {
        **EMEstimator._parameter_constraints,
        "n_experts": [Interval(Integral, 1, None, closed="left")],
        "expert": [StrOptions(set(EXPERTS))],
        "covariance_type": [StrOptions(set(COVARIANCE_TYPES))],
        "gate_reg": [Interval(Real, 0.0, None, closed="left")],
        "expert_reg": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "gate_step": [StrOptions(set(GATE_STEPS))],
        "init_params": [StrOptions(set(moe_init.INIT_METHODS))],
        "warm_start": ["boolean"],
    }

    def __init__(self, n_experts: int = 2, *, expert: str = "gaussian", covariance_type: str = "full",
                 gate_reg: float = 1.0, expert_reg: float = 1.0, reg_covar: float = 1e-6,
                 gate_step: str = "newton", tol: float = 1e-3, max_iter: int = 100, n_init: int = 1,
                 init_params: str = "k-means||", random_state: Any = None, warm_start: bool = False,
                 verbose: int = 0, verbose_interval: int = 10, accelerate: str | None = None,
                 learning_method: str = "batch", learning_decay: float = 0.7, learning_offset: float = 10.0,
                 batch_size: int | None = None, client: Any = None, partition_rows: int | None = None,
                 fan_in: int = 8, cache: Any = "auto", checkpoint_dir: str | None = None,
                 checkpoint_every: int = 1, keep_checkpoints: int = 3, storage_options: dict | None = None) -> None:
        store_params(self, locals())

    def __sklearn_tags__(self) -> Any:
        from sklearn.utils import ClassifierTags, RegressorTags

        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        if self.expert == "categorical":
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags(multi_class=True, multi_label=False)
        else:
            tags.estimator_type = "regressor"
            # score() is the mean log-likelihood, not R², so scikit-learn's R² > 0.5 check does not apply.
            tags.regressor_tags = RegressorTags(poor_score=True)
            tags.target_tags.multi_output = True
        return tags

    # -- data and members ------------------------------------------------------------

    def _family(self, classes: Any = ()) -> MixtureOfExpertsFamily:
        return MixtureOfExpertsFamily(int(self.n_experts), self.expert, self.covariance_type,
                                      tuple(np.asarray(classes).tolist()), float(self.gate_reg),
                                      float(self.expert_reg), float(self.reg_covar), self.gate_step)

    def _targets(self, X: Any, y: Any) -> Any:
        """``y`` as given, checked; ``"y"`` for a Zarr group without one."""
        if y is None:
            if is_path(X):
                return "y"
            raise DataError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        if isinstance(y, str) or hasattr(y, "dims") or hasattr(y, "map_blocks"):
            return y
        arr = np.asarray(y)
        if self.expert == "categorical":
            from sklearn.exceptions import DataConversionWarning
            from sklearn.utils.multiclass import check_classification_targets

            if arr.ndim == 2 and arr.shape[1] == 1:
                warnings.warn("A column-vector y was passed when a 1d array was expected. Please change the "
                              "shape of y to (n_samples, ), for example using ravel().", DataConversionWarning,
                              stacklevel=4)
                arr = arr[:, 0]
            try:
                check_classification_targets(arr)
            except ValueError as exc:
                raise DataError(str(exc).splitlines()[0]) from None
        elif arr.dtype.kind not in "biuf":
            try:
                arr = arr.astype(np.float64)
            except (TypeError, ValueError):
                raise DataError(f"y must hold real numbers for gaussian experts; got dtype {arr.dtype}") from None
        return arr

    def _open_data(self, X: Any, *, y: Any, sample_weight: Any, lengths: Any, variable: str | None,
                   partition_rows: int | None, memory_per_thread: int | None) -> Any:
        from dem.data.partitions import as_partitioned

        data = as_partitioned(X, sample_weight, partition_rows, variable=variable,
                              storage_options=self.storage_options, memory_per_thread=memory_per_thread,
                              y=self._targets(X, y))
        fixed = self.__dict__.get("_partial_classes")  # partial_fit's classes, fixed by its first call
        self._classes = None
        if self.expert == "categorical":
            found = self._find_classes(data, y if y is not None else "y", at_least=2 if fixed is None else 1)
            if fixed is not None:
                unknown = np.setdiff1d(found, fixed)
                if unknown.size:
                    raise DataError(f"y holds classes {unknown.tolist()} not in the classes given to the first "
                                    f"partial_fit call ({fixed.tolist()})")
            self._classes = found if fixed is None else fixed
        h = hashlib.sha256()
        for a in sorted({0, data.n_samples // 2, max(0, data.n_samples - 64)}):
            rows = np.asarray(data.read_partition(a, min(data.n_samples, a + 64)).y)
            h.update(f"{rows.dtype.str}{rows.shape}".encode() + np.ascontiguousarray(rows).tobytes())
        self._target_fingerprint = {"target": y if isinstance(y, str) else None, "sha256": h.hexdigest()[:32]}
        return data

    def _find_classes(self, data: Any, y: Any, at_least: int = 2) -> np.ndarray:
        if isinstance(y, str):
            import zarr

            src = data.zarr_source
            y = zarr.open(store=src.url, mode="r", storage_options=dict(src.storage_options) or None)[y]
        try:
            classes = unique_labels(y)
        except TypeError as exc:
            raise DataError(f"y's labels cannot be sorted: {exc}") from None
        if classes.ndim != 1:
            classes = classes.ravel()
        if classes.dtype.kind == "f" and not np.isfinite(classes).all():
            raise DataError("y contains NaN or inf")
        if len(classes) < at_least:
            raise DataError(f"y has only one class ({classes.tolist()[0]!r}); categorical experts need at least 2")
        return classes

    def _check_data(self, data: Any) -> None:
        n, K = data.n_samples, int(self.n_experts)
        if n < K:
            raise DataError(f"X has {n} sample{'s' if n != 1 else ''}, fewer than n_experts={K}")

    def _fingerprint_extra(self) -> dict[str, Any]:
        extra = dict(getattr(self, "_target_fingerprint", {}))
        if getattr(self, "_classes", None) is not None:
            extra["classes"] = [str(c) for c in self._classes]
        return extra

    def _members(self, data: Any) -> list[tuple[Any, dict[str, Any]]]:
        family = self._family(self._classes if self.expert == "categorical" else ())
        return [(family, {"n_experts": int(self.n_experts), "restart": r}) for r in range(self.n_init)]

    def _initialize(self, members: list[tuple[Any, int]], passes: Any, data: Any) -> list[MoEParams]:
        return moe_init.initial_params(members, passes, self.init_params)

    # -- fitted attributes -----------------------------------------------------------

    def _set_fitted(self, family: Any, params: MoEParams, data: Any) -> None:
        self.gate_coef_, self.gate_intercept_ = params.gate_coef, params.gate_intercept
        self.expert_coef_, self.expert_intercept_ = params.expert_coef, params.expert_intercept
        self.x_mean_ = params.x_shift
        self.n_experts_ = int(params.gate_coef.shape[0])
        if self.expert == "gaussian":
            self.expert_covariances_, self.y_mean_ = params.expert_covariances, params.y_shift
            self.n_targets_ = int(params.expert_coef.shape[1])
            self.target_ndim_ = int(np.ndim(data.read_partition(0, 1).y))
        else:
            self.classes_ = np.asarray(family.classes)

    def _fitted_params(self) -> MoEParams:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "gate_coef_")
        f = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
        K = self.gate_coef_.shape[0]
        gaussian = self.expert == "gaussian"
        return MoEParams(f(self.gate_coef_), f(self.gate_intercept_), f(self.expert_coef_),
                         f(self.expert_intercept_), f(self.expert_covariances_) if gaussian else np.zeros((K, 0)),
                         f(self.x_mean_), f(self.y_mean_) if gaussian else np.zeros(0))

    def _fitted_family(self) -> MixtureOfExpertsFamily:
        return self._family(getattr(self, "classes_", ()))

    # -- fitting and predicting ----------------------------------------------------------

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None, *, variable: str | None = None,
            callback: Any = None) -> "MixtureOfExperts":
        """Fit the mixture of experts by generalised EM.

        Parameters
        ----------
        X : numpy array, dask array, xarray DataArray/Dataset, or Zarr path/URL
            Inputs of shape (n_samples, n_features); a Zarr group holds them as
            ``variable`` (default ``"X"``).
        y : array-like of shape (n_samples,) or (n_samples, n_targets), or the
            name of an array in the Zarr group (default ``"y"`` there)
            Real targets (Gaussian experts) or class labels (categorical).
        sample_weight : array-like of shape (n_samples,), or an array name in the Zarr group
        variable : str, optional
        callback : callable, optional
            ``callback(event, info)``, as :meth:`dem.GaussianMixture.fit`.

        Returns
        -------
        self
        """
        self.__dict__.pop("_partial_classes", None)
        return self._fit(X, y=y, sample_weight=sample_weight, variable=variable, callback=callback)

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None, classes: Any = None
                    ) -> "MixtureOfExperts":
        """One online generalised-EM step on the batch ``(X, y)``; the first call also initialises.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), optional
        classes : array-like of shape (n_classes,), optional
            Categorical experts: every class the stream can hold. Required on
            the first call (a batch need not show every class), as
            scikit-learn's incremental classifiers require it; later calls
            may repeat it and must then give the same classes.

        Returns
        -------
        self
        """
        categorical = self.expert == "categorical"
        first = "_partial_classes" not in self.__dict__
        if categorical and classes is not None:
            given = unique_labels(np.asarray(classes))
            if not first and not np.array_equal(given, self._partial_classes):
                raise ConfigError(f"classes={given.tolist()} is not the classes of the first partial_fit call "
                                  f"({self._partial_classes.tolist()})")
            self._partial_classes = given
        elif categorical and first:
            fitted = getattr(self, "classes_", None)
            if fitted is None:
                raise ConfigError("classes must be passed on the first call to partial_fit (the categorical "
                                  "experts need every class the stream can hold)")
            self._partial_classes = np.asarray(fitted)
        return self._partial_fit(X, y=y, sample_weight=sample_weight)


ESTIMATORS = [MixtureOfExperts]
