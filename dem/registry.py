"""Every model family dem can fit, keyed by ``model.kind``.

Each module of :mod:`dem.families` that defines estimators lists them in a
module-level ``ESTIMATORS``; the registry finds them by walking the package,
so adding a family adds no line anywhere else. ``dem.load``, ``model.kind``
in config.yaml, the CLI and ``dem info`` all ask the registry; nothing else
in dem branches on a kind.

Family modules import numpy, scipy and scikit-learn only (Dask comes with
the first fit), so walking the package is cheap.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Any

from dem.errors import CheckpointError, ConfigError


@functools.lru_cache(maxsize=1)
def _estimators() -> dict[str, type]:
    import dem.families

    found: dict[str, type] = {}
    for info in sorted(pkgutil.iter_modules(dem.families.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"dem.families.{info.name}")
        for cls in getattr(module, "ESTIMATORS", ()):
            if cls._kind in found:
                raise RuntimeError(f"two estimators claim model kind {cls._kind!r}: "
                                   f"{found[cls._kind].__name__} and {cls.__name__}")
            found[cls._kind] = cls
    return found


def kinds() -> list[str]:
    """Every ``model.kind``, in a stable order."""
    return sorted(_estimators())


def estimators() -> dict[str, type]:
    """``{kind: estimator class}``."""
    return dict(_estimators())


def estimator_class(kind: Any, *, where: str | None = None) -> type:
    """The estimator of ``kind``, or one clear error naming the kinds there are."""
    found = _estimators()
    if kind not in found:
        if where is not None:
            raise CheckpointError(f"{where!r} holds a {kind!r} model, which this dem does not know "
                                  f"(it knows {', '.join(sorted(found))})")
        raise ConfigError(f"model.kind must be one of {', '.join(sorted(found))}; got {kind!r}")
    return found[kind]


def by_name(name: str) -> type:
    """The estimator class called ``name`` (``GaussianMixture``, ``GaussianHMM``, …)."""
    for cls in _estimators().values():
        if cls.__name__ == name:
            return cls
    raise AttributeError(name)


def names() -> list[str]:
    return sorted(cls.__name__ for cls in _estimators().values())
