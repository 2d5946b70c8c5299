"""How passes turn into parameters: one module per strategy.

A strategy makes one :class:`~dem.engine.strategies.base.MemberRun` per
member (a restart, a candidate K); the engine asks every live run which
E-step it needs, evaluates them all in one read of the data, and hands
each run its statistics. See :mod:`dem.engine.strategies.base`.
"""

from __future__ import annotations

import importlib

from dem.errors import ConfigError

#: Strategy modules chosen by an estimator's ``accelerate`` or ``learning_method``.
_MODULES = {"squarem": "squarem", "online": "online", "sem": "sem", "sem+em": "sem"}


def by_name(name: str) -> type:
    """The strategy class for ``accelerate``/``learning_method`` value ``name``."""
    if name not in _MODULES:
        raise ConfigError(f"unknown strategy {name!r}; dem knows {', '.join(sorted(_MODULES))}")
    try:
        module = importlib.import_module(f"dem.engine.strategies.{_MODULES[name]}")
    except ModuleNotFoundError:
        raise ConfigError(f"the {name!r} strategy is not available in this version of dem") from None
    return module.STRATEGIES[name]
