"""One partition of the data as the E-step sees it.

A :class:`Partition` is the record every family's ``e_step`` receives: the
rows ``X`` and, where the data has them, the sample ``weights``, the
``lengths`` of the sequences the rows form (hidden Markov models), the
targets ``y`` (mixtures of experts), and ``start``, the global index of the
first row (for error messages and for random numbers keyed by row). Each
family reads the fields it needs; no field means two things.

This module imports numpy only, so families can use it without Dask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Partition:
    """Rows ``start … start + len(X) − 1`` of the data and their side data.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_features), or (n_rows,) integer symbols
    weights : ndarray of shape (n_rows,) or None
        Sample weights (float64), when the data is weighted.
    lengths : ndarray of shape (n_sequences,) or None
        Lengths of the whole sequences the rows form, in order (HMMs).
    y : ndarray of shape (n_rows,) or (n_rows, n_targets), or None
        Targets, for conditional models (mixtures of experts).
    start : int
        Global index of the first row.
    """

    X: Any
    weights: np.ndarray | None = None
    lengths: np.ndarray | None = None
    y: Any = None
    start: int = 0

    @property
    def n_rows(self) -> int:
        return int(np.shape(self.X)[0])

    def rows(self, a: int, b: int) -> "Partition":
        """Rows ``a:b`` of this partition (relative indices), as a partition.

        Not defined for sequence data, whose rows cannot be cut anywhere.
        """
        if self.lengths is not None:
            raise ValueError("a partition of whole sequences cannot be cut at arbitrary rows")
        return Partition(self.X[a:b], None if self.weights is None else self.weights[a:b], None,
                         None if self.y is None else self.y[a:b], self.start + a)
