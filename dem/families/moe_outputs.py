"""What a fitted mixture of experts gives back: predictions, a summary, its saved form.

:class:`MoEOutputs` is mixed into :class:`dem.families.moe.MixtureOfExperts`:
``predict``, ``predict_proba``, ``gate_proba``, ``score_samples`` and
``score`` through the one predict path of :mod:`dem.estimator.inference`
(numpy in → numpy out; dask, xarray or Zarr in → lazy out), the lines
``dem info`` prints, and the persistence hooks of
:mod:`dem.estimator.persistence`. Family modules import no Dask: the
predict path brings it only when lazy input does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils._available_if import available_if

from dem.errors import DataError
from dem.families import moe_kernel as kern


class RowFunction:
    """A fitted per-row output that pickles to workers."""

    def __init__(self, prep: kern.Prepared, what: str, classes: np.ndarray | None = None) -> None:
        self.prep, self.what, self.classes = prep, what, classes

    def __call__(self, X: np.ndarray, y: Any = None) -> np.ndarray:
        if self.what == "score_samples":
            return kern.log_likelihood_rows(self.prep, X, y)
        if self.what == "label":
            return self.classes[kern.predict_rows(self.prep, X, "proba").argmax(axis=1)]
        return kern.predict_rows(self.prep, X, self.what)


def is_path(X: Any) -> bool:
    return isinstance(X, (str, bytes)) or hasattr(X, "__fspath__")


def unique_labels(y: Any) -> np.ndarray:
    """Sorted class labels of ``y``: in memory, a dask array (computed by blocks), or a Zarr array."""
    if hasattr(y, "dims") and hasattr(y, "coords"):
        y = y.data
    if hasattr(y, "map_blocks"):  # dask: unique per block, then of the union
        y = y.ravel()
        return np.unique(y.map_blocks(np.unique, chunks=(np.nan,), dtype=y.dtype).compute())
    if hasattr(y, "chunks") and hasattr(y, "shape") and not isinstance(y, np.ndarray):  # a Zarr array
        step = max(1, int(y.chunks[0])) * max(1, 1_000_000 // max(1, int(y.chunks[0])))
        return np.unique(np.concatenate([np.unique(y[a:a + step]) for a in range(0, y.shape[0], step)]))
    return np.unique(np.asarray(y))


class MoEOutputs:
    """Predictions, summary and persistence of a fitted ``MixtureOfExperts``."""

    def _apply(self, X: Any, what: str, y: Any = None, out_columns: int | None = None, dtype: Any = np.float64
               ) -> Any:
        from dem.estimator.inference import apply_rows

        family, params = self._fitted_family(), self._fitted_params()
        if what == "score_samples" and y is None:
            if not is_path(X):
                raise DataError("score_samples needs the targets y: the model scores log p(y | x)")
            y = "y"
        if y is not None and not isinstance(y, str) and not hasattr(y, "map_blocks") and not hasattr(y, "dims"):
            y = np.asarray(y)
            if y.ndim == 2 and y.shape[1] == 1 and self.expert == "categorical":
                y = y[:, 0]
            if not is_path(X) and y.shape[0] != np.shape(X)[0]:
                raise DataError(f"y has {y.shape[0]} rows, X has {np.shape(X)[0]}")
        fn = RowFunction(family.prepared(params), what, getattr(self, "classes_", None))

        def check(arr: np.ndarray) -> None:
            if not np.isfinite(arr).all():
                raise DataError(f"X contains NaN or inf at row {int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])}")

        return apply_rows(X, fn, n_features=self.n_features_in_, name=type(self).__name__, out_columns=out_columns,
                          dtype=dtype, check=check, storage_options=self.storage_options, y=y)

    def predict(self, X: Any) -> Any:
        """E[y | x] (Gaussian experts) or the most probable class (categorical)."""
        self._fitted_params()
        if self.expert == "categorical":
            return self._apply(X, "label", dtype=self.classes_.dtype)
        out = self._apply(X, "mean", out_columns=self.n_targets_)
        return out[:, 0] if self.target_ndim_ == 1 else out

    @available_if(lambda self: self.expert == "categorical")
    def predict_proba(self, X: Any) -> Any:
        """p(class | x) of every class, (n, C), columns in the order of ``classes_``."""
        self._fitted_params()
        return self._apply(X, "proba", out_columns=len(self.classes_))

    def gate_proba(self, X: Any) -> Any:
        """The gate's probabilities g(x), (n, K)."""
        self._fitted_params()
        return self._apply(X, "gate", out_columns=self.n_experts_)

    def score_samples(self, X: Any, y: Any = None) -> Any:
        """log p(y | x) of every row (numpy in, numpy out; lazy in, lazy out)."""
        self._fitted_params()
        return self._apply(X, "score_samples", y=y)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Mean log p(y | x), weighted by ``sample_weight`` when given."""
        from dem.estimator.inference import compute

        values = compute(self.score_samples(X, y))
        return float(np.average(values, weights=None if sample_weight is None else np.asarray(sample_weight)))

    def summary_lines(self) -> list[str]:
        """A few lines describing the gate and the experts (``dem info``)."""
        self._fitted_params()
        K, p = self.gate_coef_.shape
        lines = [f"mixture of {K} {self.expert} experts on {p} inputs (gate: softmax, expert {K - 1} is the "
                 f"reference); lower bound {self.lower_bound_:.6g} after {self.n_iter_} iterations"]
        norms = np.linalg.norm(self.gate_coef_, axis=1)
        for k in range(K):
            head = f"expert {k}: gate |V_k| {norms[k]:.3g}, intercept {self.gate_intercept_[k]:+.3g}; "
            if self.expert == "gaussian":
                sd = np.sqrt(np.diagonal(self.expert_covariances_[k]) if self.covariance_type == "full"
                             else self.expert_covariances_[k])
                lines.append(head + f"intercept {np.array2string(self.expert_intercept_[k], precision=3)}, "
                                    f"|W_k| {np.linalg.norm(self.expert_coef_[k]):.3g}, noise sd "
                                    f"{np.array2string(sd, precision=3)}")
            else:
                top = self.classes_[int(np.argmax(self.expert_intercept_[k]))]
                lines.append(head + f"|A_k| {np.linalg.norm(self.expert_coef_[k]):.3g}, favours class {top!r} "
                                    "at the mean input")
        return lines

    # -- persistence -------------------------------------------------------------------

    def _out_dim(self) -> str:
        return "target" if self.expert == "gaussian" else "class"

    def _fitted_arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        p = self._fitted_params()
        o = self._out_dim()
        out = {"gate_coef": (("expert", "feature"), p.gate_coef), "gate_intercept": (("expert",), p.gate_intercept),
               "expert_coef": (("expert", o, "feature"), p.expert_coef),
               "expert_intercept": (("expert", o), p.expert_intercept), "x_mean": (("feature",), p.x_shift)}
        if self.expert == "gaussian":
            cov_dims = ("expert", "target", "target_") if self.covariance_type == "full" else ("expert", "target")
            out["expert_covariances"] = (cov_dims, p.expert_covariances)
            out["y_mean"] = (("target",), p.y_shift)
        return out

    def _fitted_coords(self) -> dict[str, np.ndarray]:
        names = self.feature_names_ if getattr(self, "feature_names_", None) is not None \
            else np.arange(self.n_features_in_)
        coords = {"expert": np.arange(self.n_experts_), "feature": np.asarray(names)}
        if self.expert == "gaussian":
            coords["target"] = np.arange(self.n_targets_)
            if self.covariance_type == "full":
                coords["target_"] = np.arange(self.n_targets_)
        else:
            coords["class"] = np.asarray(self.classes_)
        return coords

    def _fitted_json(self) -> dict[str, Any]:
        return {k: getattr(self, k, None) for k in (
            "n_experts_", "converged_", "n_iter_", "lower_bound_", "lower_bounds_", "n_passes_", "n_init_passes_",
            "best_restart_", "n_targets_", "target_ndim_")}

    def _restore_fitted(self, arrays: dict[str, np.ndarray], coords: dict[str, np.ndarray],
                        fitted: dict[str, Any]) -> None:
        self.gate_coef_, self.gate_intercept_ = arrays["gate_coef"], arrays["gate_intercept"]
        self.expert_coef_, self.expert_intercept_ = arrays["expert_coef"], arrays["expert_intercept"]
        self.x_mean_ = arrays["x_mean"]
        K, p = self.gate_coef_.shape
        if self.expert_coef_.shape[0] != K or self.expert_coef_.shape[2] != p or self.gate_intercept_.shape != (K,):
            raise ValueError(f"array shapes do not fit {K} experts × {p} features")
        if self.expert == "gaussian":
            self.expert_covariances_, self.y_mean_ = arrays["expert_covariances"], arrays["y_mean"]
        else:
            self.classes_ = np.asarray(coords["class"])
        for k, v in fitted.items():
            if v is not None and k.endswith("_"):
                setattr(self, k, v)
        self.converged_, self.n_iter_ = bool(self.converged_), int(self.n_iter_)
        self.lower_bound_ = float(self.lower_bound_)
        self.n_features_in_ = p
        feats = coords.get("feature", np.arange(p))
        self.feature_names_ = None if np.array_equal(feats, np.arange(len(feats))) else feats
