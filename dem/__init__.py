"""dem: Expectation–Maximization on data larger than memory, on Dask.

Data in Zarr (local or object store), E-steps mapped over partitions on a
Dask cluster, statistics added through a fixed reduction tree, M-step on the
driver, checkpoints so interrupted fits resume exactly.
"""

from typing import Any

from dem.errors import CheckpointError, CollapsedComponentError, ConfigError, DataError, DemError

# Estimators pull in scikit-learn and dask; import them on first use (PEP 562)
# so `dem --help` and config errors answer at once.
_LAZY = {"GaussianMixture": ("dem.estimators", "GaussianMixture"), "load": ("dem.io", "load"),
         "GaussianHMM": ("dem.hmm", "GaussianHMM"), "CategoricalHMM": ("dem.hmm", "CategoricalHMM"),
         "GMMHMM": ("dem.hmm", "GMMHMM"), "params_dataset": ("dem.io", "params_dataset")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dem' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "GaussianHMM",
    "CategoricalHMM",
    "GMMHMM",
    "load",
    "params_dataset",
    "DemError",
    "DataError",
    "ConfigError",
    "CollapsedComponentError",
    "CheckpointError",
    "__version__",
]
