"""How a fitted Gaussian mixture is saved: arrays with named dims, coordinates, and back.

A mixin of :class:`dem.GaussianMixture` holding the template's persistence
hooks (:mod:`dem.estimator.persistence`) and :meth:`params_dataset`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class GaussianMixtureStorage:
    """The saved form of a Gaussian mixture's fitted attributes."""

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

    def _cov_dims(self) -> tuple[str, ...]:
        return {"full": ("component", "feature", "feature_"), "tied": ("feature", "feature_"),
                "diag": ("component", "feature"), "spherical": ("component",)}[self.covariance_type]

    def _fitted_arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        p = self._fitted_params()
        dims = self._cov_dims()
        return {"weights": (("component",), p.weights), "means": (("component", "feature"), p.means),
                "covariances": (dims, p.covariances), "precisions_cholesky": (dims, p.precisions_cholesky)}

    def _fitted_coords(self) -> dict[str, np.ndarray]:
        names = self.feature_names_ if getattr(self, "feature_names_", None) is not None \
            else np.arange(self.n_features_in_)
        coords = {"component": np.arange(len(self.weights_)), "feature": np.asarray(names)}
        if "feature_" in self._cov_dims():
            coords["feature_"] = np.asarray(names)
        return coords

    def _fitted_json(self) -> dict[str, Any]:
        return {k: getattr(self, k, None) for k in (
            "n_components_", "converged_", "n_iter_", "lower_bound_", "lower_bounds_", "n_passes_",
            "n_init_passes_", "best_restart_", "model_selection_")}

    def _restore_fitted(self, arrays: dict[str, np.ndarray], coords: dict[str, np.ndarray],
                        fitted: dict[str, Any]) -> None:
        from dem.engine.monitor import objective_of
        from dem.families.gaussian_params import precisions_from_cholesky

        self.weights_ = arrays["weights"]
        self.means_ = arrays["means"]
        self.covariances_ = arrays["covariances"]
        self.precisions_cholesky_ = arrays["precisions_cholesky"]
        K, D = self.means_.shape
        expected = {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[self.covariance_type]
        if self.weights_.shape != (K,) or self.covariances_.shape != expected \
                or self.precisions_cholesky_.shape != expected:
            raise ValueError(f"array shapes do not fit {K} components × {D} features "
                             f"({self.covariance_type} covariances)")
        self.precisions_ = precisions_from_cholesky(self.precisions_cholesky_, self.covariance_type)
        if fitted.get("legacy"):
            fitted = {"converged_": fitted.get("converged"), "n_iter_": fitted.get("n_iter"),
                      "lower_bound_": fitted.get("lower_bound"),
                      "lower_bounds_": [objective_of(h) for h in self.history_]}
        for k, v in fitted.items():
            if v is not None and k.endswith("_"):
                setattr(self, k, v)
        self.converged_ = bool(self.converged_)
        self.n_iter_ = int(self.n_iter_)
        self.lower_bound_ = float(self.lower_bound_)
        self.n_components_ = K
        self.n_features_in_ = D
        feats = coords.get("feature", np.arange(D))
        self.feature_names_ = None if np.array_equal(feats, np.arange(len(feats))) else feats

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
