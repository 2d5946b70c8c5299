"""A fixed-shape reduction tree over partition results, keyed by partition order.

The tree depends only on the number of leaves and the fan-in, never on which
task finishes first, so floating-point sums come out bitwise the same on any
cluster.
"""

from __future__ import annotations

import functools
import operator
from typing import Any, Callable, Sequence

from dem.engine.faults import maybe_crash

DEFAULT_FAN_IN = 8


def add_in_order(*parts: Any) -> Any:
    """``parts[0] + parts[1] + …``, left to right."""
    maybe_crash("reduce")
    return functools.reduce(operator.add, parts)


def tree_levels(n_leaves: int, fan_in: int = DEFAULT_FAN_IN) -> list[list[range]]:
    """The tree's shape: for each level, the slices of the level below it adds.

    ``tree_levels(20, 8)`` is ``[[range(0, 8), range(8, 16), range(16, 20)], [range(0, 3)]]``.
    """
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    levels = []
    n = n_leaves
    while n > 1:
        groups = [range(a, min(a + fan_in, n)) for a in range(0, n, fan_in)]
        levels.append(groups)
        n = len(groups)
    return levels


def tree_reduce(
    leaves: Sequence[Any], combine: Callable[..., Any], fan_in: int = DEFAULT_FAN_IN
) -> Any:
    """Combine ``leaves`` level by level with ``combine(*group)`` in leaf order.

    ``combine`` may build lazy tasks (``dask.delayed(add_in_order)``) or add
    values directly; either way the shape is :func:`tree_levels`.
    """
    if not leaves:
        raise ValueError("nothing to reduce")
    level = list(leaves)
    for groups in tree_levels(len(level), fan_in):
        level = [combine(*[level[i] for i in g]) if len(g) > 1 else level[g[0]] for g in groups]
    return level[0]
