"""dem: Expectation–Maximization on data larger than memory, on Dask.

Data in Zarr (local or object store), E-steps mapped over partitions on a
Dask cluster, statistics added through a fixed reduction tree, M-step on the
driver, checkpoints so interrupted fits resume exactly.
"""

from dem.errors import CheckpointError, CollapsedComponentError, ConfigError, DataError, DemError
from dem.estimators import GaussianMixture
from dem.io import load

__version__ = "0.1.0"

__all__ = [
    "GaussianMixture",
    "load",
    "DemError",
    "DataError",
    "ConfigError",
    "CollapsedComponentError",
    "CheckpointError",
    "__version__",
]
