"""Exceptions dem raises for problems a user can fix.

Each carries one line that names what is wrong and where; the CLI prints that
line and exits non-zero without a traceback.
"""

from __future__ import annotations

from typing import Any


def plain_repr(value: Any) -> str:
    """``repr(value)`` for messages, numpy scalars shown as the number they hold.

    numpy 2 writes ``np.float64(-1.0)`` for ``repr(np.float64(-1.0))``; a
    user who passed -1 should read ``-1.0``.
    """
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    return repr(value)


class DemError(Exception):
    """Base class of every error dem reports to a user as one line."""


class DataError(DemError, ValueError):
    """The input data cannot be fitted as given (shape, dtype, NaN/inf, path)."""


class ConfigError(DemError, ValueError):
    """A configuration key or value is not valid."""


class CollapsedComponentError(DemError, ValueError):
    """A component's covariance stopped being positive definite.

    ``component`` is the index of the component concerned, when one is;
    ``detail`` says what happened to it in dem's words (the message may
    start with a peer's sentence, as scikit-learn's for Gaussian mixtures).
    """

    def __init__(self, message: str, component: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.component = component
        self.detail = detail

    def __reduce__(self) -> tuple:  # raised in tasks too: keep the details across processes
        return (type(self), (str(self), self.component, self.detail))


class CheckpointError(DemError):
    """A run directory or checkpoint cannot be used."""


class EmptyComponentWarning(UserWarning):
    """A component lost all its responsibility; it kept its previous mean and covariance."""


class CollapsedComponentWarning(UserWarning):
    """A restart's M-step collapsed a component; it stopped with its last good parameters."""


class OutputExistsError(DataError, ConfigError):
    """An output path already exists and overwriting was not asked for.

    Both a :class:`DataError` and a :class:`ConfigError` (what the writers
    raised before it existed). The message names Python's ``overwrite=True``;
    :attr:`cli_message` names the command line's ``--overwrite`` instead.
    """

    def __init__(self, path: str, problem: str = "already exists") -> None:
        self.path, self.problem = path, problem
        super().__init__(f"{path!r} {problem}; remove it or pass overwrite=True")
        self.cli_message = f"{path!r} {problem}; remove it or add --overwrite"

    def __reduce__(self) -> tuple:  # raised in tasks too: rebuild from the path, not the message
        return (type(self), (self.path, self.problem))
