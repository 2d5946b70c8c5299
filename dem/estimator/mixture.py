"""What every mixture estimator shares: predict, predict_proba, score, BIC, sampling, progress lines.

Mixture families provide ``weighted_log_prob(params, X)`` (n, K); this mixin
turns it into scikit-learn's ``score_samples``, ``predict``,
``predict_proba``, ``score``, ``bic``, ``aic`` and ``fit_predict``, through
the one predict path of :mod:`dem.estimator.inference`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp
from sklearn.utils.validation import check_is_fitted

from dem.errors import DataError
from dem.estimator.inference import apply_rows, compute


class _RowFunction:
    """A fitted per-row function that pickles to workers: family, parameters, which output."""

    def __init__(self, family: Any, params: Any, what: str) -> None:
        self.family, self.params, self.what = family, params, what

    def __call__(self, X: np.ndarray) -> np.ndarray:
        lp = self.family.weighted_log_prob(self.params, X)
        if self.what == "score_samples":
            return logsumexp(lp, axis=1)
        if self.what == "predict":
            return lp.argmax(axis=1)
        return np.exp(lp - logsumexp(lp, axis=1, keepdims=True))


class MixtureMixin:
    """Inference of a fitted mixture estimator (numpy in → numpy out, lazy in → lazy out)."""

    #: What ``verbose`` calls the objective, and whether it prints it as a total over the data
    #: (the engine's objective is per unit weight).
    _progress: tuple[str, bool] = ("mean log-likelihood", False)

    def _verbose_callback(self, data: Any) -> Any:
        """scikit-learn's progress line every ``verbose_interval`` iterations (and the first)."""
        if not self.verbose:
            return None
        label, total = self._progress
        n = data.n_samples if total else 1

        def show(event: str, info: dict) -> None:
            if event != "iteration":
                return
            it = info["iteration"]
            if it % max(1, self.verbose_interval) == 0 or it == 1:
                delta = info["delta"] if info["delta"] is not None else float("inf")
                print(f"init {info['restart']} iteration {it}: {label} {info['objective'] * n:.6f}  "
                      f"Δ {delta * n:.3g}  {info['seconds']:.2f}s")
        return show

    #: Whether NaN in prediction input marks a missing value (Gaussian mixture, missing="em").
    def _nan_is_missing(self) -> bool:
        return False

    def _open_data(self, X: Any, *, y: Any, sample_weight: Any, lengths: Any, variable: str | None,
                   partition_rows: int | None, memory_per_thread: int | None) -> Any:
        """A mixture's data: rows, with optional sample weights (the template's hook)."""
        from dem.data.partitions import as_partitioned
        return as_partitioned(X, sample_weight, partition_rows, variable=variable,
                              storage_options=self.storage_options, memory_per_thread=memory_per_thread)

    def _check_rows(self, arr: np.ndarray) -> None:
        bad = np.isinf(arr) if self._nan_is_missing() else ~np.isfinite(arr)
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            raise DataError(f"X contains {'inf' if self._nan_is_missing() else 'NaN or inf'} at row {row}")

    def _apply(self, X: Any, what: str) -> Any:
        check_is_fitted(self, "n_iter_")
        fn = _RowFunction(self._fitted_family(), self._fitted_params(), what)
        k = self._fitted_params().weights.shape[0] if hasattr(self._fitted_params(), "weights") else None
        return apply_rows(
            X, fn, n_features=self.n_features_in_, name=type(self).__name__,
            out_columns=k if what == "predict_proba" else None,
            dtype=np.int64 if what == "predict" else np.float64, check=self._check_rows,
            storage_options=self.storage_options)

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
        return float(np.mean(compute(self.score_samples(X))))

    def _n_samples(self, X: Any) -> int:
        if isinstance(X, (str, bytes)) or hasattr(X, "__fspath__"):
            from dem.data.partitions import as_partitioned
            return as_partitioned(X, storage_options=self.storage_options).n_samples
        return int(np.shape(X)[0])

    def _n_parameters(self) -> int:
        return self._fitted_family().n_parameters(self.n_features_in_)

    def bic(self, X: Any) -> float:
        """Bayesian information criterion on ``X`` (lower is better)."""
        n = self._n_samples(X)
        return -2.0 * self.score(X) * n + self._n_parameters() * math.log(n)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Draw samples and their component labels from the fitted mixture, as scikit-learn does."""
        from dem.errors import ConfigError, plain_repr
        from dem.estimator.params import seed_from

        p = self._fitted_params()  # NotFittedError first, as scikit-learn checks
        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            # scikit-learn's sentence (it prints n_components where the value belongs; dem prints the value).
            raise ConfigError(f"Invalid value for 'n_samples': {plain_repr(n_samples)} . The sampling requires "
                              "at least one sample.")
        rng = np.random.default_rng(seed_from(self.random_state))
        covs = self._full_covariances()
        counts = rng.multinomial(int(n_samples), p.weights)
        X = np.vstack([rng.multivariate_normal(p.means[k], covs[k], int(c)) for k, c in enumerate(counts)])
        labels = np.concatenate([np.full(int(c), k, dtype=np.int64) for k, c in enumerate(counts)])
        return X, labels

    def _full_covariances(self) -> np.ndarray:
        """(K, D, D) covariances of the fitted mixture, whatever its covariance type (the family says)."""
        raise NotImplementedError

    def aic(self, X: Any) -> float:
        """Akaike information criterion on ``X`` (lower is better)."""
        n = self._n_samples(X)
        return -2.0 * self.score(X) * n + 2.0 * self._n_parameters()
