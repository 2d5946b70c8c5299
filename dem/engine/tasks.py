"""What runs inside the engine's tasks: reading partitions, E-steps, fused subtrees.

A task receives *entries*, one per partition, in partition order:

* ``("part", partition)`` — a partition held by value (local scheduler);
* ``("group", group, i)`` — partition ``i`` of a cached group (a tuple of
  partitions that is one value on a worker);
* ``("read", x, w, y, lengths, start, stop)`` — the arguments of
  :func:`dem.data.row_sources.read_partition`, with a dask array's blocks
  already substituted (:class:`dem.data.row_sources.RowBlocks`).

Consecutive ``read`` entries are read together
(:func:`dem.data.row_sources.read_partitions`).

:func:`run_steps` runs a member's sequential steps (online EM's mini-batches)
in one task: each step's E-step over its partitions, added with the fixed
tree, then the member's own update, exactly as the driver would run them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable, Iterator, Sequence

from dem.data.row_sources import ZarrRows, read_partitions, read_scattered
from dem.data.record import Partition
from dem.engine.faults import maybe_crash
from dem.engine.fusion import fold
from dem.engine.heap import task_heap
from dem.families.base import StatsTuple

BlockFunction = Callable[[Any, Partition], Any]

#: Most bytes of upcoming steps' partitions :func:`run_steps` reads in one call.
STEP_WINDOW_BYTES = 8 * 2**20


@dataclasses.dataclass(frozen=True)
class Batch:
    """The evaluations of one pass, and which of them each family call serves.

    ``stacks`` lists the unsampled members that go to one family together
    (one ``e_step_members`` call, so a kernel that stacks members can), in
    order. It is decided where the evaluations are made, on the driver, by the
    identity of their family objects, and travels as plain indices: identity
    does not survive the trip to a worker (``distributed`` serializes a
    tuple's items one by one when a worker fetches the value from another),
    so grouping there would stack members on one worker and evaluate them one
    by one on the next. Stacked members equal lone ones only to rounding, so
    the results would then depend on where each task ran.
    """

    evaluations: tuple
    stacks: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, evaluations: Sequence[Any]) -> Batch:
        stacks: dict[int, list[int]] = {}
        for i, ev in enumerate(evaluations):
            if ev.sample_key is None:
                stacks.setdefault(id(ev.family), []).append(i)
        return cls(tuple(evaluations), tuple(tuple(idx) for idx in stacks.values()))


def evaluate_partition(batch: Batch, part: Partition) -> StatsTuple:
    """Every evaluation's statistics of one partition (one read serves them all)."""
    evaluations = batch.evaluations
    out: list[Any] = [None] * len(evaluations)
    for i, ev in enumerate(evaluations):
        if ev.sample_key is not None:
            out[i] = ev.family.e_step_sampled(ev.params, part, ev.sample_key)
    for idx in batch.stacks:
        family = evaluations[idx[0]].family
        if len(idx) == 1:
            out[idx[0]] = family.e_step(evaluations[idx[0]].params, part)
            continue
        for i, stats in zip(idx, family.e_step_members([evaluations[i].params for i in idx], part)):
            out[i] = stats
    return StatsTuple(tuple(out))


def partitions(entries: Sequence[tuple], reuse: bool = False) -> Iterator[Partition]:
    """The partitions of ``entries`` in order (see the module docstring)."""
    i = 0
    while i < len(entries):
        kind = entries[i][0]
        if kind == "read":
            j = i
            while j < len(entries) and entries[j][0] == "read":
                j += 1
            yield from read_partitions([e[1:] for e in entries[i:j]], reuse=reuse)
            i = j
            continue
        yield entries[i][1] if kind == "part" else entries[i][1][entries[i][2]]
        i += 1


def _applied(fn: BlockFunction, shared: Any, parts: Iterable[Partition]) -> Iterator[Any]:
    for part in parts:
        maybe_crash("e-step")
        yield fn(shared, part)


def run_subtree(fn: BlockFunction, shared: Any, fan_in: int, reuse: bool, *entries: tuple) -> Any:
    """``fn`` over a subtree's partitions, added with the fixed tree's shape inside it."""
    with task_heap():
        return fold(_applied(fn, shared, partitions(entries, reuse)), fan_in)


def map_subtree(fn: BlockFunction, shared: Any, *entries: tuple) -> list:
    """``[fn(shared, part)]`` over consecutive partitions."""
    with task_heap():
        return list(_applied(fn, shared, partitions(entries)))


def read_group(*entries: tuple) -> tuple:
    """Consecutive partitions read to be cached together as one value."""
    return tuple(partitions(entries))


def run_steps(stepper: Any, fan_in: int, sizes: tuple[int, ...], shares: tuple[float, ...], *entries: tuple) -> Any:
    """``stepper``'s next ``len(sizes)`` steps in this task; returns the advanced stepper.

    Step ``s`` reads the next ``sizes[s]`` entries and sums the E-step of
    ``stepper.next_evaluation()`` over them with the fixed tree (:func:`fold`,
    the tree a pass over those partitions uses), then calls
    ``stepper.receive(stats, seconds, n_rows, shares[s])``, the call the
    engine loop would make on the driver.
    """
    with task_heap():
        for parts, share in zip(_step_partitions(entries, sizes), shares):
            t0 = time.perf_counter()
            batch = Batch.of([stepper.next_evaluation()])
            stats = fold(_applied(evaluate_partition, batch, parts), fan_in).members[0]
            stepper.receive(stats, time.perf_counter() - t0, int(stats.n_rows), share)
    return stepper


def _step_partitions(entries: Sequence[tuple], sizes: Sequence[int]) -> Iterator[list[Partition]]:
    """Each step's partitions; the next steps' Zarr partitions are read together, up to
    :data:`STEP_WINDOW_BYTES` at a time (:func:`dem.data.row_sources.read_scattered`)."""
    i = s = 0
    while s < len(sizes):
        j, k, nbytes = s, i, 0
        while j < len(sizes) and (j == s or nbytes < STEP_WINDOW_BYTES):
            nbytes += sum(_entry_bytes(e) for e in entries[k:k + sizes[j]])
            k += sizes[j]
            j += 1
        window = entries[i:k]
        parts = None
        if all(e[0] == "read" for e in window):
            parts = read_scattered([e[1:] for e in window])
        if parts is None:
            parts = list(partitions(window))
        at = 0
        for step in range(s, j):
            yield parts[at:at + sizes[step]]
            at += sizes[step]
        i, s = k, j


def _entry_bytes(entry: tuple) -> int:
    if entry[0] != "read" or not isinstance(entry[1], ZarrRows):
        return STEP_WINDOW_BYTES  # in memory already: a window of one step
    shape, dtype = entry[1].row_shape()
    return (entry[6] - entry[5]) * math.prod(shape) * dtype.itemsize
