"""Exceptions dem raises for problems a user can fix.

Each carries one line that names what is wrong and where; the CLI prints that
line and exits non-zero without a traceback.
"""

from __future__ import annotations


class DemError(Exception):
    """Base class of every error dem reports to a user as one line."""


class DataError(DemError, ValueError):
    """The input data cannot be fitted as given (shape, dtype, NaN/inf, path)."""


class ConfigError(DemError, ValueError):
    """A configuration key or value is not valid."""


class CollapsedComponentError(DemError, ValueError):
    """A component's covariance stopped being positive definite."""


class CheckpointError(DemError):
    """A run directory or checkpoint cannot be used."""


class EmptyComponentWarning(UserWarning):
    """A component lost all its responsibility; it kept its previous mean and covariance."""
