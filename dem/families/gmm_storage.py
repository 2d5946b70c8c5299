"""How fitted Gaussian mixtures are saved: arrays with named dims, coordinates, and back.

Mixins holding the template's persistence hooks
(:mod:`dem.estimator.persistence`): :class:`GaussianMixtureStorage` of
:class:`dem.GaussianMixture` (with :meth:`~GaussianMixtureStorage.params_dataset`),
:class:`BayesianGaussianMixtureStorage` of
:class:`dem.BayesianGaussianMixture`, and what the two share,
:class:`GaussianStorage`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dem.families.gaussian_kernel import second_moment_shape


class GaussianStorage:
    """What the saved forms of the Gaussian mixtures share: covariance dims and shapes, run attributes."""

    def _cov_dims(self) -> tuple[str, ...]:
        return {"full": ("component", "feature", "feature_"), "tied": ("feature", "feature_"),
                "diag": ("component", "feature"), "spherical": ("component",)}[self.covariance_type]

    def _full_covariances(self) -> np.ndarray:
        """(K, D, D) covariances, for :meth:`dem.estimator.mixture.MixtureMixin.sample`."""
        from dem.families.gaussian_params import full_covariances

        p = self._fitted_params()
        return full_covariances(p.covariances, self.covariance_type, *p.means.shape)

    def _feature_names(self) -> np.ndarray:
        names = self.feature_names_ if getattr(self, "feature_names_", None) is not None \
            else np.arange(self.n_features_in_)
        return np.asarray(names)

    def _check_restored_shapes(self, K: int, D: int, covariances: list[np.ndarray], fits: bool = True) -> None:
        """A ValueError unless every array of ``covariances`` has the (K, D) covariance shape, and ``fits``."""
        expected = second_moment_shape(self.covariance_type, K, D)
        if not fits or any(c.shape != expected for c in covariances):
            raise ValueError(f"array shapes do not fit {K} components × {D} features "
                             f"({self.covariance_type} covariances)")

    #: Fitted attributes saved as JSON.
    _saved_run_attributes: tuple[str, ...] = ("n_components_", "converged_", "n_iter_", "lower_bound_",
                                              "lower_bounds_", "n_passes_", "n_init_passes_", "best_restart_")

    def _fitted_json(self) -> dict[str, Any]:
        return {k: getattr(self, k, None) for k in self._saved_run_attributes}

    def _restore_run_attributes(self, fitted: dict[str, Any], coords: dict[str, np.ndarray], D: int) -> None:
        """The trailing-underscore attributes saved as JSON, the feature count and names."""
        for k, v in fitted.items():
            if v is not None and k.endswith("_"):
                setattr(self, k, v)
        self.converged_ = bool(self.converged_)
        self.n_iter_ = int(self.n_iter_)
        self.lower_bound_ = float(self.lower_bound_)
        self.n_features_in_ = D
        feats = coords.get("feature", np.arange(D))
        self.feature_names_ = None if np.array_equal(feats, np.arange(len(feats))) else feats


class GaussianMixtureStorage(GaussianStorage):
    """The saved form of a Gaussian mixture's fitted attributes."""

    _saved_run_attributes = GaussianStorage._saved_run_attributes + ("model_selection_",)

    _saved_arrays = ("weights", "means", "covariances", "precisions_cholesky")

    @classmethod
    def _saved_shapes(cls, ds: Any) -> dict[str, tuple[int, ...]] | None:
        import json

        try:
            covariance_type = json.loads(ds.attrs["hyperparameters"])["covariance_type"]
            K, D = (int(n) for n in ds["means"].shape)
        except (KeyError, TypeError, ValueError):
            return None  # the presence checks name what is missing
        cov = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}.get(covariance_type)
        shapes = {"weights": (K,), "means": (K, D)}
        if cov is not None:
            shapes.update(covariances=cov, precisions_cholesky=cov)
        return shapes

    def _fitted_arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        p = self._fitted_params()
        dims = self._cov_dims()
        return {"weights": (("component",), p.weights), "means": (("component", "feature"), p.means),
                "covariances": (dims, p.covariances), "precisions_cholesky": (dims, p.precisions_cholesky)}

    def _fitted_coords(self) -> dict[str, np.ndarray]:
        names = self._feature_names()
        coords = {"component": np.arange(len(self.weights_)), "feature": names}
        if "feature_" in self._cov_dims():
            coords["feature_"] = names
        return coords

    def _restore_fitted(self, arrays: dict[str, np.ndarray], coords: dict[str, np.ndarray],
                        fitted: dict[str, Any]) -> None:
        from dem.engine.monitor import objective_of
        from dem.families.gaussian_params import precisions_from_cholesky

        self.weights_ = arrays["weights"]
        self.means_ = arrays["means"]
        self.covariances_ = arrays["covariances"]
        self.precisions_cholesky_ = arrays["precisions_cholesky"]
        K, D = self.means_.shape
        self._check_restored_shapes(K, D, [self.covariances_, self.precisions_cholesky_], self.weights_.shape == (K,))
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)
        if fitted.get("legacy"):
            fitted = {"converged_": fitted.get("converged"), "n_iter_": fitted.get("n_iter"),
                      "lower_bound_": fitted.get("lower_bound"),
                      "lower_bounds_": [objective_of(h) for h in self.history_]}
        self._restore_run_attributes(fitted, coords, D)
        self.n_components_ = K

    def params_dataset(self) -> Any:
        """The fitted parameters as an ``xarray.Dataset`` with dims (component, feature, feature_).

        Variables ``weights``, ``means``, ``covariances``, ``precisions`` and
        ``precisions_cholesky``; the ``feature`` coordinates are those of the
        data the model was fitted on (a DataArray's, or a Zarr group's
        ``feature`` array), else 0..D-1.
        """
        import xarray as xr

        arrays = self._fitted_arrays()
        arrays["precisions"] = (self._cov_dims(), np.asarray(self.precisions_))
        ds = xr.Dataset({k: arrays[k] for k in ("weights", "means", "covariances", "precisions",
                                                 "precisions_cholesky")}, coords=self._fitted_coords())
        ds.attrs = {"covariance_type": self.covariance_type, "converged": bool(self.converged_),
                    "n_iter": int(self.n_iter_), "lower_bound": float(self.lower_bound_)}
        return ds


class BayesianGaussianMixtureStorage(GaussianStorage):
    """The saved form of a variational Bayesian Gaussian mixture: posterior, prior and ``weight_sum``."""

    def _fitted_arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        p = self._fitted_params()
        cov = self._cov_dims()
        conc = ("stick", "component") if np.ndim(p.weight_concentration) == 2 else ("component",)
        prior_cov = {"full": ("feature", "feature_"), "tied": ("feature", "feature_"), "diag": ("feature",),
                     "spherical": ()}[self.covariance_type]
        out = {"weights": (("component",), p.weights), "means": (("component", "feature"), p.means),
               "covariances": (cov, p.covariances), "precisions_cholesky": (cov, p.precisions_cholesky),
               "weight_concentration": (conc, p.weight_concentration),
               "mean_precision": (("component",), p.mean_precision),
               "degrees_of_freedom": ((), p.degrees_of_freedom) if self.covariance_type == "tied"
               else (("component",), p.degrees_of_freedom),
               "mean_prior": (("feature",), p.mean_prior), "covariance_prior": (prior_cov, p.covariance_prior)}
        for name in ("weight_concentration_prior", "mean_precision_prior", "degrees_of_freedom_prior",
                     "weight_sum"):
            out[name] = ((), np.asarray(getattr(p, name)))
        return out

    def _fitted_coords(self) -> dict[str, np.ndarray]:
        # ``feature_`` whatever the covariance type (as saved models have it).
        return {"component": np.arange(len(self.weights_)), "feature": self._feature_names(),
                "feature_": self._feature_names()}

    def _restore_fitted(self, arrays: dict[str, np.ndarray], coords: dict[str, np.ndarray],
                        fitted: dict[str, Any]) -> None:
        from dem.families.bayesian_gmm_math import BGMMParams

        fields = [f.name for f in dataclasses.fields(BGMMParams)]
        params = BGMMParams(**{name: np.asarray(arrays[name], dtype=np.float64) for name in fields})
        K, D = params.means.shape
        self._check_restored_shapes(K, D, [params.covariances, params.precisions_cholesky],
                                    params.mean_prior.shape == (D,))
        self._set_fitted(self._family(), params, None)
        self._restore_run_attributes(fitted, coords, D)
