"""Completing data with a fitted Gaussian mixture (see :meth:`dem.GaussianMixture.impute`).

The work is :mod:`dem.estimator.impute`: conditional expectations of the
missing entries, optional multiple-imputation draws, in memory or written
to Zarr by the workers in bounded memory.
"""

from __future__ import annotations

import os
from typing import Any


def impute(estimator: Any, X: Any, out: str | os.PathLike | None = None, n_draws: int = 0,
           random_state: Any = None, storage_options: dict | None = None, *, variable: str | None = None,
           partition_rows: int | None = None, overwrite: bool = False) -> Any:
    """Fill the NaN of ``X`` with their conditional expectation under a fitted mixture.

    ``estimator`` is a fitted :class:`dem.GaussianMixture` (fitted with either
    ``missing`` setting, or loaded with :func:`dem.load`); the other
    arguments are those of :meth:`dem.GaussianMixture.impute`.
    """
    return estimator.impute(X, out, n_draws=n_draws, random_state=random_state, storage_options=storage_options,
                            variable=variable, partition_rows=partition_rows, overwrite=overwrite)
