"""Where tasks run: a Dask ``distributed`` client or Dask's local threaded scheduler.

The engine is the only Dask code in dem, and this module is where it meets
Dask. The executor runs three kinds of pass over the partitions of a
:class:`~dem.data.partitions.PartitionedData`:

* :meth:`Executor.evaluate` — E-steps of several members, each over all
  partitions or a subset, every partition read once for all members that
  want it, each member's statistics added through the fixed tree;
* :meth:`Executor.reduce` — ``Σ fn(shared, part)`` through the fixed tree;
* :meth:`Executor.map` — ``[fn(shared, part)]`` in partition order.

Each pass is one low-level graph of task specs built directly: the shared
value (parameters) travels inside each task's spec when it is small, and is
otherwise one node every task depends on; each task runs a
whole subtree of the fixed reduction tree (:mod:`dem.engine.fusion`), so the
bits do not change while the number of tasks falls by ``fan_in ** depth``.
Cached partitions are grouped by those subtrees on the worker that will run
them; streaming tasks are marked as data producers, so the scheduler spreads
them over workers as threads free up instead of stacking them on the worker
that holds the parameters.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import uuid
from typing import Any, Callable, Sequence

import numpy as np
import psutil
from dask._task_spec import DataNode, Task, TaskRef, convert_legacy_graph, parse_input
from threadpoolctl import ThreadpoolController

from dem.data.partitions import PartitionedData
from dem.data.row_sources import DaskRows, RowBlocks
from dem.data.record import Partition
from dem.engine import tasks
from dem.engine.fusion import fused_depth, subtrees
from dem.engine.reduction import DEFAULT_FAN_IN, add_in_order, tree_levels
from dem.errors import DataError

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
    """Where each partition's data is, and how passes over it are cut into tasks.

    Attributes
    ----------
    entries : per partition, what a task receives (see :mod:`dem.engine.tasks`)
    data : the partitioned data
    depth : depth of the fused subtrees of a pass over every partition
    graph : tasks the entries depend on (a streamed dask array's own graph)
    workers : per subtree, the worker holding its cached partitions (None: anywhere)
    streaming : whether tasks read their partitions from storage
    keep : futures of the cached groups (held so the cluster keeps them)
    held : futures of the last pass's statistics, released once the next pass is submitted
    """

    entries: list[tuple]
    data: PartitionedData
    depth: int = 0
    graph: dict = dataclasses.field(default_factory=dict)
    workers: list[str | None] | None = None
    streaming: bool = False
    keep: list = dataclasses.field(default_factory=list, repr=False)
    held: list = dataclasses.field(default_factory=list, repr=False)

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
        Whole subtrees of the tree per task (the default), or one task per
        partition; the result is bitwise the same.
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
        return [{"address": address, **w} for address, w in info["workers"].items()]

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

    def _threads(self) -> int:
        return self.n_threads or os.cpu_count() or 1

    def _thread_slots(self) -> list[str]:
        """Worker addresses, each once per thread, in a fixed order."""
        workers = sorted(self._workers(), key=lambda w: str(w.get("id") or w.get("address", "")))
        return [w["address"] for w in workers for _ in range(max(1, w.get("nthreads") or 1))]

    def _depth(self, n: int, threads: int, data: PartitionedData) -> int:
        if not self.fuse or n <= 1:
            return 0
        return fused_depth(n, self.fan_in, threads, data.nbytes // max(1, data.n_partitions))

    def place(self, data: PartitionedData, cache: bool) -> Placement:
        """Where tasks find each partition, caching them in (worker) memory if asked.

        Cached partitions are grouped by the fused subtrees of a full pass,
        each group one value on one worker (groups dealt over the workers'
        threads in turn), so a task finds all its partitions where it runs.
        A persisted dask array stays where it is, never copied.
        """
        sources = data.sources()
        slots = self._thread_slots() if self.client is not None else []
        depth = self._depth(data.n_partitions, len(slots) or self._threads(), data)
        groups = subtrees(data.n_partitions, self.fan_in, depth)
        entries, graph, remote = _task_entries(sources)
        in_memory = all(isinstance(s[0], np.ndarray) and all(r is None or isinstance(r, np.ndarray) for r in s[1:3])
                        for s in sources)
        if self.client is None:
            if remote:
                raise DataError("X is persisted on a distributed cluster: pass that cluster's client "
                                "(client=...) or compute it first")
            if not (cache or in_memory):
                return Placement(entries, data, depth, graph, streaming=True)
            keys = [("dem-cache-" + uuid.uuid4().hex, g) for g in range(len(groups))]
            dsk = {**graph, **{k: Task(k, tasks.read_group, *[entries[i] for i in r]) for k, r in zip(keys, groups)}}
            with single_blas_thread():
                values = _local_get(dsk, keys, self._threads())
            return Placement([("part", v[i - r.start]) for v, r in zip(values, groups) for i in r], data, depth)
        where = [slots[g % len(slots)] for g in range(len(groups))] if slots else [None] * len(groups)
        if in_memory:
            # Data already in the driver's memory goes to the workers once, a group to a worker.
            futures: list[Any] = [None] * len(groups)
            for address in set(where):
                mine = [g for g in range(len(groups)) if where[g] == address]
                parts = [tuple(tasks.read_group(*[entries[i] for i in groups[g]])) for g in mine]
                for g, f in zip(mine, self.client.scatter(parts, workers=address and [address], hash=False)):
                    futures[g] = f
        elif cache and not _persisted(remote, graph):
            token = uuid.uuid4().hex
            keys = [(f"dem-cache-{token}", g) for g in range(len(groups))]
            leaves = {k: Task(k, tasks.read_group, *[entries[i] for i in r]) for k, r in zip(keys, groups)}
            placed = {k: w for k, w in zip(keys, where) if w is not None}
            futures = self.client.get(_annotated(leaves, placed, graph), keys, sync=False)
        else:
            return Placement(entries, data, depth, graph, streaming=not remote or bool(graph))
        group_entries = [parse_input(("group", TaskRef(f.key), i - r.start)) for f, r in zip(futures, groups) for i in r]
        return Placement(group_entries, data, depth, workers=where, keep=list(futures))

    # -- passes ------------------------------------------------------------

    def _pass_shape(self, placement: Placement, parts: Sequence[int]) -> tuple[list[range], list[str | None]]:
        """Fused leaf ranges (over ``parts``' positions) of one pass, and where each should run."""
        if len(parts) == placement.n_partitions:
            leaves = subtrees(len(parts), self.fan_in, placement.depth)
            where = placement.workers or [None] * len(leaves)
            return leaves, list(where)
        threads = len(self._thread_slots()) if self.client is not None else self._threads()
        leaves = subtrees(len(parts), self.fan_in, self._depth(len(parts), threads, placement.data))
        return leaves, [None] * len(leaves)

    def _tree(self, dsk: dict, token: str, fn: BlockFunction, shared: Any, placement: Placement,
              parts: Sequence[int], reuse: bool, where_of: dict) -> Any:
        """Adds a fixed-shape sum of ``fn`` over ``parts`` (in order) to ``dsk``, all but the root
        addition; returns the keys the root adds (:class:`_Root`)."""
        leaves, where = self._pass_shape(placement, parts)
        level = []
        for j, (r, w) in enumerate(zip(leaves, where)):
            key = (f"dem-leaf-{token}", j)
            entries = [placement.entries[parts[i]] for i in r]
            dsk[key] = Task(key, tasks.run_subtree, fn, shared, self.fan_in, reuse, *entries,
                            _data_producer=placement.streaming and not placement.graph)
            if w is not None:
                where_of[key] = w
            level.append(key)
        # The levels above the fused subtrees, exactly as tree_levels cuts them; the
        # root's own addition is left to the driver (see _run): one hop fewer.
        levels = tree_levels(len(level), self.fan_in)
        for depth, groups in enumerate(levels[:-1]):
            nxt = []
            for j, g in enumerate(groups):
                if len(g) == 1:
                    nxt.append(level[g[0]])
                    continue
                key = (f"dem-sum-{token}", depth, j)
                dsk[key] = Task(key, add_in_order, *[TaskRef(level[i]) for i in g])
                nxt.append(key)
            level = nxt
        return _Root(tuple(level))

    def _run(self, build: Callable[[dict, str, TaskRef, dict], list], shared: Any, placement: Placement,
             hold: bool = True) -> list:
        """Run the pass ``build`` adds to a graph; its wanted values, roots added here.

        With ``hold`` (small results: statistics, stepper states) the cluster
        keeps this pass's results until the next pass has been submitted.
        Releasing them is a message on the client's batched stream, which
        holds a message sent within its interval (10 ms) of the last one: a
        release sent just before the next pass's graph delayed its start.
        """
        token = uuid.uuid4().hex
        shared_key = f"dem-shared-{token}"
        dsk: dict = {shared_key: DataNode(shared_key, shared)}
        where_of: dict = {}
        wanted = build(dsk, token, TaskRef(shared_key), where_of)
        keys = [k for w in wanted for k in (w.parts if isinstance(w, _Root) else (w,))]
        if self.client is not None:
            futures = self.client.get(_annotated(dsk, where_of, placement.graph), keys, sync=False)
            placement.held = futures if hold else []
            values = list(self.client.gather(futures))
        else:
            with single_blas_thread():
                values = _local_get({**placement.graph, **dsk}, keys, self._threads())
        out, i = [], 0
        for w in wanted:
            if isinstance(w, _Root):
                part, i = values[i:i + len(w.parts)], i + len(w.parts)
                out.append(add_in_order(*part) if len(part) > 1 else part[0])
            else:
                out.append(values[i])
                i += 1
        return out

    def reduce(self, fn: BlockFunction, shared: Any, placement: Placement) -> Any:
        """``Σ_i fn(shared, part_i)`` over all partitions, in the fixed tree order."""
        every = range(placement.n_partitions)
        return self._run(lambda dsk, tok, sh, wh: [self._tree(dsk, tok, fn, sh, placement, every, False, wh)],
                         shared, placement)[0]

    def map(self, fn: BlockFunction, shared: Any, placement: Placement) -> list[Any]:
        """``[fn(shared, part_i) for each partition]``, in partition order."""
        def build(dsk: dict, token: str, sh: TaskRef, where_of: dict) -> list:
            leaves, where = self._pass_shape(placement, range(placement.n_partitions))
            keys = []
            for j, (r, w) in enumerate(zip(leaves, where)):
                key = (f"dem-map-{token}", j)
                dsk[key] = Task(key, tasks.map_subtree, fn, sh, *[placement.entries[i] for i in r],
                                _data_producer=placement.streaming and not placement.graph)
                if w is not None:
                    where_of[key] = w
                keys.append(key)
            return keys
        return [r for chunk in self._run(build, shared, placement, hold=False) for r in chunk]

    def runs_steps(self, placement: Placement) -> bool:
        """Whether :meth:`run_steps` suits ``placement``: its tasks read their own
        partitions (Zarr, or this process's memory), so one task can visit any
        of them without moving cached data between workers, and without
        computing a whole segment's blocks of a dask array before it starts."""
        return not placement.graph and (self.client is None or placement.streaming)

    def run_steps(self, segments: Sequence[tuple[Any, Sequence[tuple[int, ...]]]], placement: Placement
                  ) -> list[Any]:
        """Advance each stepper through its batches of partitions, one task per stepper.

        ``segments`` pairs a stepper (see :func:`dem.engine.tasks.run_steps`)
        with the partitions of each of its next steps. The steppers run
        concurrently, each in order inside its task; what returns are the
        advanced steppers (copies, on a cluster).
        """
        data = placement.data
        total = max(1, data.n_samples)

        def build(dsk: dict, token: str, sh: TaskRef, where_of: dict) -> list:
            keys = []
            for n, (stepper, batches) in enumerate(segments):
                node, key = f"dem-stepper-{token}-{n}", (f"dem-steps-{token}", n)
                dsk[node] = DataNode(node, stepper)
                sizes = tuple(len(b) for b in batches)
                shares = tuple(data.rows_in(b) / total for b in batches)
                entries = [placement.entries[p] for b in batches for p in b]
                dsk[key] = Task(key, tasks.run_steps, TaskRef(node), self.fan_in, sizes, shares, *entries,
                                _data_producer=placement.streaming and not placement.graph)
                keys.append(key)
            return keys

        return self._run(build, None, placement)

    def evaluate(self, evaluations: Sequence[Evaluation], placement: Placement) -> list[Any]:
        """Every evaluation's summed statistics, reading each partition once per pass.

        Evaluations over the same partitions share their tasks; each one's
        statistics go through the fixed tree over its own partitions, so a
        member's result does not depend on the other members' partitions.
        Members of one family are stacked into one family call (equal to
        lone calls only to rounding); which ones is decided here, on the
        driver (:class:`dem.engine.tasks.Batch`), never in the tasks, so it
        is the same on every worker and scheduler.
        """
        by_parts: dict[tuple[int, ...], list[int]] = {}
        everything = tuple(range(placement.n_partitions))
        for i, ev in enumerate(evaluations):
            by_parts.setdefault(everything if ev.partitions is None else tuple(ev.partitions), []).append(i)

        def build(dsk: dict, token: str, sh: TaskRef, where_of: dict) -> list:
            roots = []
            for n, (parts, idx) in enumerate(by_parts.items()):
                batch = tasks.Batch.of([evaluations[i] for i in idx])
                if self.client is None or _pickled_size(batch) <= INLINE_BYTES:
                    shared: Any = batch  # in every task's spec: no extra task, no fetch before the E-steps
                else:
                    shared = TaskRef(key := f"dem-evaluations-{token}-{n}")
                    dsk[key] = DataNode(key, batch)
                roots.append(self._tree(dsk, f"{token}-{n}", tasks.evaluate_partition, shared, placement,
                                        parts, True, where_of))
            return roots

        results = self._run(build, None, placement)
        out: list[Any] = [None] * len(evaluations)
        for (_, idx), summed in zip(by_parts.items(), results):
            for i, stats in zip(idx, summed.members):
                out[i] = stats
        return out


#: Parameters up to this size travel inside each task of a pass; larger ones are
#: one value the tasks depend on (sent to each worker once).
INLINE_BYTES = 256 * 2**10


def _pickled_size(value: Any) -> int:
    """Bytes ``value`` pickles to, counting large arrays without copying them."""
    buffers: list = []
    head = pickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(memoryview(b).nbytes for b in buffers)


@dataclasses.dataclass(frozen=True)
class _Root:
    """The keys whose sum, in order, is a tree's root: the driver adds them
    itself, as the root task would, rather than wait for one more task."""

    parts: tuple


def _task_entries(sources: Sequence[tuple]) -> tuple[list[tuple], dict, set]:
    """Tasks' entries for ``sources`` (a dask array's blocks as task references), the graph
    those blocks need, and the keys already held by a cluster (a persisted array's)."""
    graph: dict = {}
    remote: set = set()
    seen: set[int] = set()
    entries = []
    for src in sources:
        refs = []
        for ref in src[:3]:
            if isinstance(ref, DaskRows):
                if id(ref.array) not in seen:
                    seen.add(id(ref.array))
                    for key, value in dict(ref.array.__dask_graph__()).items():
                        if type(value).__name__ == "Future":
                            remote.add(key)
                        else:
                            graph[key] = value
                first, keys = ref.blocks(src[4], src[5])
                ref = RowBlocks(first, tuple(TaskRef(k) for k in keys))
            refs.append(ref)
        entries.append(parse_input(("read", *refs, *src[3:])))
    return entries, (convert_legacy_graph(graph) if graph else {}), remote


def _persisted(remote: set, graph: dict) -> bool:
    """Data that is a persisted array as it is (nothing left to compute)."""
    return bool(remote) and not graph


def _annotated(tasks_by_key: dict, where_of: dict, extra: dict) -> Any:
    """A graph whose tasks in ``where_of`` prefer that worker (loosely: any other if it is gone)."""
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    placed = {k: v for k, v in tasks_by_key.items() if k in where_of}
    rest = {**extra, **{k: v for k, v in tasks_by_key.items() if k not in where_of}}
    if not placed:
        return rest
    layers = {"dem-placed": MaterializedLayer(placed, annotations={
        "workers": {k: [w] for k, w in where_of.items()}.get, "allow_other_workers": True}),
        "dem-rest": MaterializedLayer(rest)}
    return HighLevelGraph(layers, {"dem-placed": {"dem-rest"}, "dem-rest": set()})


def _local_get(dsk: dict, keys: list, n_threads: int) -> list:
    import dask.threaded

    return list(dask.threaded.get(dsk, list(keys), num_workers=n_threads))


def _accepts_n_workers(client: Any) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


