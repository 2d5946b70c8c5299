"""Fused subtrees of the fixed reduction tree: fewer tasks, the same bits.

The reduction tree (:mod:`dem.engine.reduction`) depends only on the number
of leaves and the fan-in. A subtree of depth ``d`` covers ``fan_in ** d``
consecutive leaves starting at a multiple of ``fan_in ** d``; the nodes above
it see only its sum. So any such subtree can run as one task, adding its
leaves with the same tree inside, and the result is bitwise what the unfused
tree gives. The depth is chosen per pass from the cluster's size (enough
tasks to keep every thread busy) and the partitions' size (a task's input
stays bounded); it changes where additions run, never their order.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from dem.engine.reduction import add_in_order

#: Tasks per thread a pass keeps at least, so that threads finishing early find work.
TASKS_PER_THREAD = 4
#: Most input bytes a fused task reads; partitions larger than this are never fused.
MAX_FUSED_BYTES = 64 * 2**20


def fused_depth(n_leaves: int, fan_in: int, n_threads: int, leaf_bytes: int,
                tasks_per_thread: int = TASKS_PER_THREAD, max_bytes: int = MAX_FUSED_BYTES) -> int:
    """The deepest subtree that still leaves ``tasks_per_thread`` tasks per thread.

    0 means one task per leaf. ``leaf_bytes`` bounds a fused task's input to
    ``max_bytes`` (large partitions already cost far more than a task does).
    """
    depth = 0
    want = max(1, tasks_per_thread * max(1, n_threads))
    while True:
        size = fan_in ** (depth + 1)
        if size * max(1, leaf_bytes) > max_bytes or -(-n_leaves // size) < want:
            return depth
        depth += 1


def subtrees(n_leaves: int, fan_in: int, depth: int) -> list[range]:
    """Leaf ranges of the depth-``depth`` subtrees, in order (the last may be short)."""
    size = fan_in ** depth
    return [range(a, min(a + size, n_leaves)) for a in range(0, n_leaves, size)]


def fold(values: Iterable[Any], fan_in: int, combine: Callable[..., Any] = add_in_order) -> Any:
    """The fixed tree's sum of ``values`` (in order), holding one partial group per level.

    Equal to ``tree_reduce(list(values), combine, fan_in)`` with every
    addition in the same order, without keeping all values at once.
    """
    levels: list[list[Any]] = [[]]
    count = 0
    for value in values:
        count += 1
        levels[0].append(value)
        level = 0
        while len(levels[level]) == fan_in:
            full, levels[level] = levels[level], []
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(combine(*full))
            level += 1
    if count == 0:
        raise ValueError("nothing to reduce")
    # Flush the short groups bottom-up: each is the last group of its level in
    # tree_levels; a group of one passes through unadded, as in tree_reduce.
    level = 0
    while True:
        group = levels[level]
        if level == len(levels) - 1 and len(group) == 1:
            return group[0]
        if group:
            node = combine(*group) if len(group) > 1 else group[0]
            levels[level] = []
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(node)
        level += 1
