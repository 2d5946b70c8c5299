"""Where tasks run: a Dask ``distributed`` client or Dask's local threaded scheduler.

The engine is the only Dask code in dem, and this module is where it meets
Dask. The executor runs three kinds of pass over the partitions of a
:class:`~dem.data.partitions.PartitionedData`:

* :meth:`Executor.evaluate` — E-steps of several members, each over all
  partitions or a subset, every partition read once for all members that
  want it, each member's statistics added through the fixed tree;
* :meth:`Executor.reduce` — ``Σ fn(shared, part)`` through the fixed tree;
* :meth:`Executor.map` — ``[fn(shared, part)]`` in partition order.

Each group of ``fan_in`` consecutive leaves of the tree is one task (it reads
its partitions one after the other and adds their results left to right,
exactly the first level of the tree), so the bits do not change while the
number of tasks falls by the fan-in.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import dask
import numpy as np
import psutil
from threadpoolctl import ThreadpoolController

from dem.data.partitions import PartitionedData, read_partition
from dem.data.record import Partition
from dem.engine.faults import maybe_crash
from dem.engine.reduction import DEFAULT_FAN_IN, add_in_order, tree_levels, tree_reduce
from dem.families.base import StatsTuple

BlockFunction = Callable[[Any, Partition], Any]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """What one member asks of a pass.

    ``family.e_step(params, part)`` over ``partitions`` (None: all of them),
    or ``family.e_step_sampled(params, part, sample_key)`` when a key is given.
    """

    family: Any
    params: Any
    partitions: tuple[int, ...] | None = None
    sample_key: tuple[int, ...] | None = None


_BLAS: ThreadpoolController | None = None


def single_blas_thread() -> Any:
    """A context in which BLAS runs on one thread.

    threadpoolctl scans the loaded libraries once (about a millisecond);
    limiting through the kept controller then costs microseconds, which
    matters to strategies that take thousands of small steps.
    """
    global _BLAS
    if _BLAS is None:
        import scipy.linalg  # noqa: F401  (scipy ships its own BLAS: load it before the one scan)

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def _evaluate_partition(evaluations: tuple[Evaluation, ...], part: Partition) -> StatsTuple:
    """Every evaluation's statistics of one partition (one read serves them all)."""
    out: list[Any] = [None] * len(evaluations)
    plain: dict[int, list[int]] = {}
    for i, ev in enumerate(evaluations):
        if ev.sample_key is not None:
            out[i] = ev.family.e_step_sampled(ev.params, part, ev.sample_key)
        else:
            plain.setdefault(id(ev.family), []).append(i)
    # Members of one family go together, so a kernel that stacks members can.
    for idx in plain.values():
        family = evaluations[idx[0]].family
        if len(idx) == 1:
            out[idx[0]] = family.e_step(evaluations[idx[0]].params, part)
            continue
        for i, stats in zip(idx, family.e_step_members([evaluations[i].params for i in idx], part)):
            out[i] = stats
    return StatsTuple(tuple(out))


def _load(entry: tuple) -> Partition:
    if entry[0] == "cached":
        return entry[1]
    return read_partition(*entry[1:])


def _reduce_group(fn: BlockFunction, shared: Any, *entries: tuple) -> Any:
    # One task for consecutive leaves: read, apply, add left to right (the tree's first level).
    results = []
    for entry in entries:
        part = _load(entry)
        maybe_crash("e-step")
        results.append(fn(shared, part))
    return add_in_order(*results) if len(results) > 1 else results[0]


def _map_group(fn: BlockFunction, shared: Any, *entries: tuple) -> list:
    out = []
    for entry in entries:
        part = _load(entry)
        maybe_crash("e-step")
        out.append(fn(shared, part))
    return out


def active_client() -> Any | None:
    """The current ``distributed`` client, if one is active in this process."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    for _ in range(3):
        try:
            client = default_client()
            break
        except ValueError:  # no client at all
            return None
        except KeyError:
            # distributed's registry is a WeakValueDictionary: a client collected
            # between listing its keys and reading one raises KeyError; look again.
            continue
    else:
        return None
    # A client whose connection failed can stay registered as the default; never use it.
    return client if getattr(client, "status", "running") == "running" else None


@dataclasses.dataclass
class Placement:
    """Where each partition's data is: entries ``("read", *sources)`` or ``("cached", partition)``."""

    entries: list[tuple]
    data: PartitionedData

    @property
    def n_partitions(self) -> int:
        return len(self.entries)


@dataclasses.dataclass
class Executor:
    """Runs passes over partitions.

    Parameters
    ----------
    client : distributed.Client or None
        ``None`` uses Dask's threaded scheduler in this process, with one
        BLAS thread per task thread so results do not depend on thread counts.
    n_threads : int or None
        Threads of the local scheduler (default: CPU count).
    fan_in : int
        Children per node of the reduction tree.
    fuse : bool
        One task per group of ``fan_in`` leaves (the default), or one per leaf.
    """

    client: Any = None
    n_threads: int | None = None
    fan_in: int = DEFAULT_FAN_IN
    fuse: bool = True

    @classmethod
    def resolve(cls, client: Any = None, fan_in: int = DEFAULT_FAN_IN) -> "Executor":
        """An executor for ``client``, else the active client, else the local scheduler."""
        return cls(client if client is not None else active_client(), fan_in=fan_in)

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client is not None else None

    def _workers(self) -> list[dict]:
        info = self.client.scheduler_info(n_workers=-1) if _accepts_n_workers(self.client) \
            else self.client.scheduler_info()
        return list(info["workers"].values())

    def memory_per_thread(self) -> int:
        """Smallest worker memory limit divided by its threads (local: RAM / CPUs)."""
        if self.client is not None:
            shares = [(w.get("memory_limit") or 0) // max(1, w.get("nthreads") or 1) for w in self._workers()]
            shares = [s for s in shares if s]
            if shares:
                return int(min(shares))
        return int(psutil.virtual_memory().total // self._threads())

    def total_memory(self) -> int:
        """Memory the data could be cached in: workers' limits, or this machine's available RAM."""
        if self.client is not None:
            limits = [w.get("memory_limit") or 0 for w in self._workers()]
            if limits and all(limits):
                return int(sum(limits))
        return int(psutil.virtual_memory().available)

    # -- data placement ----------------------------------------------------

    def place(self, data: PartitionedData, cache: bool) -> Placement:
        """Where tasks find each partition, caching them in (worker) memory if asked."""
        sources = data.sources()
        in_memory = all(isinstance(s[0], np.ndarray) for s in sources)
        if in_memory:
            parts = [read_partition(*s) for s in sources]
            if self.client is None:
                return Placement([("cached", p) for p in parts], data)
            # Data already in the driver's memory goes to the workers once.
            futures = self.client.scatter(parts, hash=False)
            return Placement([("cached", f) for f in futures], data)
        if not cache:
            return Placement([("read", *s) for s in sources], data)
        if self.client is None:
            reads = [dask.delayed(read_partition)(*s) for s in sources]
            parts = dask.compute(*reads, scheduler="threads", num_workers=self._threads())
            return Placement([("cached", p) for p in parts], data)
        token = _token(data)
        reads = [dask.delayed(read_partition, pure=True)(*s, dask_key_name=f"dem-read-{token}-{i}")
                 for i, s in enumerate(sources)]
        futures = self.client.compute(reads)
        return Placement([("cached", f) for f in futures], data)

    # -- passes ------------------------------------------------------------

    def _threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def _groups(self, n: int) -> list[range]:
        if not self.fuse or n <= 1:
            return [range(i, i + 1) for i in range(n)]
        return tree_levels(n, self.fan_in)[0]

    def _tree(self, fn: BlockFunction, shared_d: Any, entries: Sequence[tuple]) -> Any:
        """A lazy fixed-shape sum of ``fn`` over ``entries`` (in order)."""
        leaves = [dask.delayed(_reduce_group, pure=False)(fn, shared_d, *[entries[i] for i in g])
                  for g in self._groups(len(entries))]
        if self.fuse and len(entries) > 1:
            # The fused leaves are the tree's first level; the rest of the tree is unchanged.
            combine = dask.delayed(add_in_order, pure=False)
            return tree_reduce(leaves, combine, self.fan_in)
        return tree_reduce(leaves, dask.delayed(add_in_order, pure=False), self.fan_in)

    def _compute(self, *objs: Any) -> tuple:
        if self.client is not None:
            return tuple(self.client.compute(list(objs), sync=True))
        with single_blas_thread():
            return dask.compute(*objs, scheduler="threads", num_workers=self._threads(), optimize_graph=False)

    def reduce(self, fn: BlockFunction, shared: Any, placement: Placement) -> Any:
        """``Σ_i fn(shared, part_i)`` over all partitions, in the fixed tree order."""
        shared_d = dask.delayed(shared, traverse=False)
        return self._compute(self._tree(fn, shared_d, placement.entries))[0]

    def map(self, fn: BlockFunction, shared: Any, placement: Placement) -> list[Any]:
        """``[fn(shared, part_i) for each partition]``, in partition order."""
        shared_d = dask.delayed(shared, traverse=False)
        groups = self._groups(placement.n_partitions)
        tasks = [dask.delayed(_map_group, pure=False)(fn, shared_d, *[placement.entries[i] for i in g])
                 for g in groups]
        return [r for chunk in self._compute(*tasks) for r in chunk]

    def evaluate(self, evaluations: Sequence[Evaluation], placement: Placement) -> list[Any]:
        """Every evaluation's summed statistics, reading each partition once per pass.

        Evaluations over the same partitions share their tasks; each one's
        statistics go through the fixed tree over its own partitions, so a
        member's result never depends on the other members.
        """
        by_parts: dict[tuple[int, ...], list[int]] = {}
        everything = tuple(range(placement.n_partitions))
        for i, ev in enumerate(evaluations):
            by_parts.setdefault(everything if ev.partitions is None else tuple(ev.partitions), []).append(i)
        roots = []
        for parts, idx in by_parts.items():
            shared_d = dask.delayed(tuple(evaluations[i] for i in idx), traverse=False)
            roots.append(self._tree(_evaluate_partition, shared_d, [placement.entries[p] for p in parts]))
        results = self._compute(*roots)
        out: list[Any] = [None] * len(evaluations)
        for (_, idx), summed in zip(by_parts.items(), results):
            for i, stats in zip(idx, summed.members):
                out[i] = stats
        return out


def _accepts_n_workers(client: Any) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _token(data: PartitionedData) -> str:
    return dask.base.tokenize(data.description, data.n_samples, data.n_features, str(data.dtype), data.bounds)
