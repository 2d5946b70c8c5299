"""The data passes a family's initialisation may ask for, bound to one dataset.

:class:`DataPasses` is the engine's side of :class:`dem.families.base.Passes`:
``map``, ``reduce``, small reads on the driver, and k-means‖. It counts the
passes it makes, so a fit can report its initialisation passes apart from
its EM passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

from dem.data.partitions import PartitionedData
from dem.data.record import Partition
from dem.engine.executor import Evaluation, Executor, Placement
from dem.engine.kmeans_parallel import kmeans_parallel_centres, partition_rows


@dataclasses.dataclass
class DataPasses:
    """Passes over one placed dataset.

    Attributes
    ----------
    n_passes : int
        Passes made so far (each ``map``/``reduce``/``evaluate`` over all
        partitions counts one; over a subset, its share of the rows).
    """

    executor: Executor
    placement: Placement
    n_passes: float = 0.0

    @property
    def data(self) -> PartitionedData:
        return self.placement.data

    @property
    def n_samples(self) -> int:
        return self.data.n_samples

    @property
    def n_features(self) -> int:
        return self.data.n_features

    def map(self, fn: Callable[[Any, Partition], Any], shared: Any) -> list[Any]:
        self.n_passes += 1
        return self.executor.map(fn, shared, self.placement)

    def reduce(self, fn: Callable[[Any, Partition], Any], shared: Any) -> Any:
        self.n_passes += 1
        return self.executor.reduce(fn, shared, self.placement)

    def evaluate(self, evaluations: list[Evaluation]) -> list[Any]:
        """Members' statistics in one read of every partition any of them needs."""
        wanted: set[int] = set()
        for ev in evaluations:
            wanted.update(range(self.placement.n_partitions) if ev.partitions is None else ev.partitions)
        self.n_passes += self.data.rows_in(wanted) / max(1, self.n_samples)
        return self.executor.evaluate(evaluations, self.placement)

    @property
    def runs_steps(self) -> bool:
        """Whether members' sequential steps can run inside tasks (:meth:`run_steps`)."""
        return self.executor.runs_steps(self.placement)

    def run_steps(self, segments: list[tuple[Any, list[tuple[int, ...]]]]) -> list[Any]:
        """Steppers advanced through their batches, one task each (see :meth:`Executor.run_steps`)."""
        # Each stepper reads its own partitions: no read is shared.
        rows = self.data.rows_in(p for _, batches in segments for b in batches for p in b)
        self.n_passes += rows / max(1, self.n_samples)
        return self.executor.run_steps(segments, self.placement)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        return self.data.read_rows(start, stop)

    def read_partition_rows(self, start: int, stop: int) -> Partition:
        """Rows ``start:stop`` with their side data (weights, targets), on the driver."""
        return self.data.read_partition(start, stop)

    def kmeans_parallel(self, n_clusters: list[int], seeds: list[int], rows: Callable | None = None,
                        first: list[np.ndarray] | None = None) -> list[np.ndarray]:
        return kmeans_parallel_centres(
            lambda fn, shared: self.map(fn, shared),
            lambda i: partition_rows(rows, self.read_partition_rows(i, i + 1)),
            self.n_samples, list(n_clusters), list(seeds), rows=rows, first=first)
