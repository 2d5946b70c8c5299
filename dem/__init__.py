"""dem: Expectation–Maximization on data larger than memory, on Dask.

Data in Zarr (local or object store), E-steps mapped over partitions on a
Dask cluster, statistics added through a fixed reduction tree, M-step on the
driver, checkpoints so interrupted fits resume exactly.

Estimators (``dem.GaussianMixture``, ``dem.GaussianHMM``, …) come from the
registry of model families (:mod:`dem.registry`) on first use, so
``dem --help`` and config errors answer at once.
"""

from typing import Any

from dem.errors import (
    CheckpointError, CollapsedComponentError, CollapsedComponentWarning, ConfigError, DataError, DemError,
    EmptyComponentWarning,
)

__version__ = "0.2.0"


def __getattr__(name: str) -> Any:
    if name in ("load", "params_dataset"):
        import dem.io

        value = getattr(dem.io, name)
    elif name[:1].isupper():
        from dem import registry

        value = registry.by_name(name)
    else:
        raise AttributeError(f"module 'dem' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    from dem import registry

    return sorted(set(globals()) | {"load", "params_dataset", *registry.names()})


__all__ = ["load", "params_dataset", "DemError", "DataError", "ConfigError", "CollapsedComponentError",
           "CollapsedComponentWarning", "CheckpointError", "EmptyComponentWarning", "__version__", "GaussianMixture",
           "GaussianHMM", "CategoricalHMM", "GMMHMM", "BayesianGaussianMixture"]
