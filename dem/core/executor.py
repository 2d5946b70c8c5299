"""Where tasks run: a Dask ``distributed`` client or Dask's local threaded scheduler.

This module and the engine are the only places that know Dask. The executor
maps a model function over row partitions and adds the results through the
fixed tree of :mod:`dem.core.reduction`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import dask
import numpy as np
import psutil
from threadpoolctl import threadpool_limits

from dem.core.faults import maybe_crash
from dem.core.reduction import DEFAULT_FAN_IN, add_in_order, tree_reduce
from dem.data.partitions import PartitionedData, ZarrRows, read_block

BlockFunction = Callable[[Any, np.ndarray, "np.ndarray | None", int], Any]


def _run_block(fn: BlockFunction, shared: Any, x_ref: Any, w_ref: Any, start: int, stop: int) -> Any:
    X = read_block(x_ref, start, stop)
    w = None if w_ref is None else read_block(w_ref, start, stop)
    maybe_crash("e-step")
    return fn(shared, X, w, start)


def _read_pair(x_ref: Any, w_ref: Any, start: int, stop: int) -> tuple:
    return read_block(x_ref, start, stop), (None if w_ref is None else read_block(w_ref, start, stop))


def _run_cached(fn: BlockFunction, shared: Any, pair: tuple, start: int) -> Any:
    maybe_crash("e-step")
    return fn(shared, pair[0], pair[1], start)


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
class Executor:
    """Runs map-reduce passes over partitions.

    Parameters
    ----------
    client : distributed.Client or None
        ``None`` uses Dask's threaded scheduler in this process, with one
        BLAS thread per task thread so results do not depend on thread counts.
    n_threads : int or None
        Threads of the local scheduler (default: CPU count).
    fan_in : int
        Children per node of the reduction tree.
    """

    client: Any = None
    n_threads: int | None = None
    fan_in: int = DEFAULT_FAN_IN

    @classmethod
    def resolve(cls, client: Any = None, fan_in: int = DEFAULT_FAN_IN) -> "Executor":
        """An executor for ``client``, else the active client, else the local scheduler."""
        return cls(client if client is not None else active_client(), fan_in=fan_in)

    @property
    def dashboard_link(self) -> str | None:
        return getattr(self.client, "dashboard_link", None) if self.client is not None else None

    def memory_per_thread(self) -> int:
        """Smallest worker memory limit divided by its threads (local: RAM / CPUs)."""
        if self.client is not None:
            info = self.client.scheduler_info(n_workers=-1) if _accepts_n_workers(self.client) else self.client.scheduler_info()
            shares = [(w.get("memory_limit") or 0) // max(1, w.get("nthreads") or 1)
                      for w in info["workers"].values()]
            shares = [s for s in shares if s]
            if shares:
                return int(min(shares))
        return int(psutil.virtual_memory().total // self._threads())

    def total_memory(self) -> int:
        """Memory the data could be cached in: workers' limits, or this machine's available RAM."""
        if self.client is not None:
            workers = self.client.scheduler_info(n_workers=-1)["workers"].values() if _accepts_n_workers(self.client) else self.client.scheduler_info()["workers"].values()
            limits = [w.get("memory_limit") or 0 for w in workers]
            if limits and all(limits):
                return int(sum(limits))
        return int(psutil.virtual_memory().available)

    # -- data placement ----------------------------------------------------

    def place(self, data: PartitionedData, cache: bool) -> list[Any]:
        """Per-partition references the E-step tasks take, cached in memory if asked.

        Returns one entry per partition: ``("read", x_ref, w_ref)`` to read in
        the task, or ``("cached", ref)`` for a block already in (worker) memory.
        """
        pairs = list(zip(data.x_refs, data.w_refs or [None] * data.n_partitions))
        in_memory = all(isinstance(x, np.ndarray) for x, _ in pairs)
        if self.client is None:
            if in_memory:
                return [("cached", (x, w)) for x, w in pairs]
            if not cache:
                return [("read", x, w) for x, w in pairs]
            reads = [dask.delayed(_read_pair)(x, w, a, b) for (x, w), (a, b) in zip(pairs, data.bounds)]
            blocks = dask.compute(*reads, scheduler="threads", num_workers=self._threads())
            return [("cached", blk) for blk in blocks]
        if in_memory:
            # Data already in the driver's memory goes to the workers once.
            futures = self.client.scatter([(x, w) for x, w in pairs], hash=False)
            return [("cached", f) for f in futures]
        if not cache:
            return [("read", x, w) for x, w in pairs]
        reads = [
            dask.delayed(_read_pair, pure=True)(x, w, a, b, dask_key_name=f"dem-read-{_token(data)}-{i}")
            for i, ((x, w), (a, b)) in enumerate(zip(pairs, data.bounds))
        ]
        futures = self.client.compute(reads)
        return [("cached", f) for f in futures]

    # -- passes ------------------------------------------------------------

    def _threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def _leaves(self, fn: BlockFunction, shared: Any, placed: list[Any], bounds: list[tuple[int, int]]) -> list[Any]:
        # One graph value for the shared parameters: every task depends on its key,
        # so they are shipped once per iteration rather than once per task.
        shared_d = dask.delayed(shared, traverse=False)
        leaves = []
        for ref, (a, b) in zip(placed, bounds):
            if ref[0] == "read":
                leaves.append(dask.delayed(_run_block, pure=False)(fn, shared_d, ref[1], ref[2], a, b))
            else:
                leaves.append(dask.delayed(_run_cached, pure=False)(fn, shared_d, ref[1], a))
        return leaves

    def _compute(self, *objs: Any) -> tuple:
        if self.client is not None:
            return tuple(self.client.compute(list(objs), sync=True))
        with threadpool_limits(limits=1, user_api="blas"):
            return dask.compute(*objs, scheduler="threads", num_workers=self._threads(), optimize_graph=False)

    def map_reduce(self, fn: BlockFunction, shared: Any, placed: list[Any], bounds: list[tuple[int, int]]) -> Any:
        """``Σ_i fn(shared, X_i, w_i, start_i)`` over partitions, in the fixed tree order."""
        leaves = self._leaves(fn, shared, placed, bounds)
        combine = dask.delayed(add_in_order, pure=False)
        root = tree_reduce(leaves, combine, self.fan_in)
        return self._compute(root)[0]

    def map(self, fn: BlockFunction, shared: Any, placed: list[Any], bounds: list[tuple[int, int]]) -> list[Any]:
        """``[fn(shared, X_i, w_i, start_i) for each partition]``, in partition order."""
        return list(self._compute(*self._leaves(fn, shared, placed, bounds)))


def _accepts_n_workers(client: Any) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _token(data: PartitionedData) -> str:
    return dask.base.tokenize(data.description, data.n_samples, data.n_features, str(data.dtype), data.bounds)
