"""The parameters every estimator shares, declared once, and one seed policy.

Constraints use scikit-learn's declarative ``_parameter_constraints``
machinery, so a bad value raises what scikit-learn raises (an
``InvalidParameterError``, a ``ValueError`` and ``TypeError``) with its
wording; dem's :class:`InvalidParameter` is also a
:class:`~dem.errors.ConfigError`, so the CLI prints it as one line.
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from typing import Any

import numpy as np
from sklearn.utils._param_validation import (
    Interval,
    InvalidParameterError,
    StrOptions,
    validate_parameter_constraints,
)

from dem.engine.reduction import DEFAULT_FAN_IN
from dem.errors import ConfigError

__all__ = ["SHARED_CONSTRAINTS", "SHARED_DEFAULTS", "InvalidParameter", "validate", "seed_from",
           "IDENTITY_EXCLUDED", "LEARNING_METHODS", "Interval", "StrOptions", "Integral", "Real"]


class InvalidParameter(ConfigError, InvalidParameterError):
    """A hyperparameter has a wrong type or value (scikit-learn's error, and dem's one line)."""


#: What fits the engine, whatever the family: how to iterate, where, and where to checkpoint.
SHARED_CONSTRAINTS: dict[str, list] = {
    "tol": [Interval(Real, 0.0, None, closed="left")],
    "max_iter": [Interval(Integral, 0, None, closed="left")],
    "n_init": [Interval(Integral, 1, None, closed="left")],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
    "verbose_interval": [Interval(Integral, 1, None, closed="left")],
    "client": "no_validation",
    "partition_rows": [Interval(Integral, 1, None, closed="left"), None],
    "fan_in": [Interval(Integral, 2, None, closed="left")],
    "cache": [StrOptions({"auto"}), "boolean"],
    "checkpoint_dir": [str, os.PathLike, None],
    "checkpoint_every": [Interval(Integral, 1, None, closed="left")],
    "keep_checkpoints": [Interval(Integral, 1, None, closed="left")],
    "storage_options": [dict, None],
    "accelerate": [StrOptions({"squarem"}), None],
    "learning_method": [StrOptions({"batch", "online", "sem", "sem+em"})],
    "learning_decay": [Interval(Real, 0.5, 1.0, closed="right")],
    "learning_offset": [Interval(Real, 0.0, None, closed="left")],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
}

#: Defaults of the shared engine parameters (each estimator's ``__init__`` repeats them).
SHARED_DEFAULTS: dict[str, Any] = {
    "client": None, "partition_rows": None, "fan_in": DEFAULT_FAN_IN, "cache": "auto",
    "checkpoint_dir": None, "checkpoint_every": 1, "keep_checkpoints": 3, "storage_options": None,
    "accelerate": None, "learning_method": "batch", "learning_decay": 0.7, "learning_offset": 10.0,
    "batch_size": None,
}

#: ``learning_method`` values (scikit-learn's LatentDirichletAllocation names the choice so).
LEARNING_METHODS = ("batch", "online", "sem", "sem+em")

#: Parameters that do not change what a fit computes, so a run directory may be
#: resumed with other values: how long to iterate, how to show it, where it runs.
IDENTITY_EXCLUDED = frozenset({
    "client", "max_iter", "n_iter", "tol", "verbose", "verbose_interval", "checkpoint_dir",
    "checkpoint_every", "keep_checkpoints", "storage_options", "cache", "random_state",
    "max_sequence_bytes", "algorithm", "warm_start", "implementation",
})


def validate(estimator: Any, names: tuple[str, ...] | None = None) -> None:
    """Check every hyperparameter (or those in ``names``) against the estimator's constraints (one clear error).

    ``names`` serves inference on a fitted model: the settings it reads
    (``covariance_type``, …) may have been changed after ``fit``.
    """
    constraints, values = estimator._parameter_constraints, estimator.get_params(deep=False)
    if names is not None:
        constraints = {k: v for k, v in constraints.items() if k in names}
        values = {k: v for k, v in values.items() if k in names}
    try:
        validate_parameter_constraints(constraints, values, caller_name=type(estimator).__name__)
    except InvalidParameterError as exc:
        raise InvalidParameter(str(exc)) from None


def seed_from(random_state: Any) -> int:
    """An integer seed from scikit-learn-style ``random_state``.

    ``None`` draws from numpy's global RandomState, as scikit-learn's
    ``check_random_state(None)`` does, so ``np.random.seed(0)`` makes a fit
    reproducible; an int is used as it is; a RandomState or Generator gives
    one draw.
    """
    if random_state is None or random_state is np.random:
        return int(np.random.mtrand._rand.randint(0, 2**31 - 1))
    if isinstance(random_state, (bool, np.bool_)):
        raise InvalidParameter(f"random_state must be None, an int, a RandomState or a Generator; "
                               f"got {random_state!r}")
    if isinstance(random_state, (int, np.integer)):
        if random_state < 0:
            raise InvalidParameter(f"random_state must be non-negative; got {int(random_state)}")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    raise InvalidParameter(f"random_state must be None, an int, a RandomState or a Generator; "
                           f"got {type(random_state).__name__}")
