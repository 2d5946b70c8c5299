"""The fixed-shape reduction tree: its shape, and that it keeps leaf order."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dem.engine.reduction import add_in_order, tree_levels, tree_reduce


def test_tree_levels_documented_example():
    assert tree_levels(20, 8) == [[range(0, 8), range(8, 16), range(16, 20)], [range(0, 3)]]


def test_tree_levels_trivial_and_invalid():
    assert tree_levels(1, 8) == []
    assert tree_levels(2, 2) == [[range(0, 2)]]
    with pytest.raises(ValueError, match="fan_in"):
        tree_levels(10, 1)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 3000), fan_in=st.integers(2, 20))
def test_tree_levels_shape(n, fan_in):
    levels = tree_levels(n, fan_in)
    # Depth is ceil(log_fan_in(n)), computed without floating point.
    depth, width = 0, n
    while width > 1:
        width = -(-width // fan_in)
        depth += 1
    assert len(levels) == depth
    width = n
    for groups in levels:
        # Consecutive, non-empty groups of at most fan_in that tile the level below.
        assert groups[0].start == 0 and groups[-1].stop == width
        for a, b in zip(groups, groups[1:]):
            assert a.stop == b.start
        assert all(1 <= len(g) <= fan_in for g in groups)
        assert all(len(g) == fan_in for g in groups[:-1])
        assert len(groups) == math.ceil(width / fan_in)
        width = len(groups)
    assert width == 1


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 600), fan_in=st.integers(2, 12))
def test_tree_reduce_keeps_leaf_order_with_non_commutative_combine(n, fan_in):
    leaves = [f"<{i}>" for i in range(n)]
    calls = []

    def concat(*parts):
        calls.append(len(parts))
        return "".join(parts)

    assert tree_reduce(leaves, concat, fan_in) == "".join(leaves)
    assert all(2 <= c <= fan_in for c in calls)
    # One combine per internal node of the tree.
    assert len(calls) == sum(sum(1 for g in lv if len(g) > 1) for lv in tree_levels(n, fan_in))


@settings(max_examples=100, deadline=None)
@given(items=st.lists(st.text(max_size=3), min_size=1, max_size=200), fan_in=st.integers(2, 9))
def test_tree_reduce_with_add_in_order_is_concatenation(items, fan_in):
    assert tree_reduce(items, add_in_order, fan_in) == "".join(items)


def test_tree_reduce_of_nothing_raises():
    with pytest.raises(ValueError):
        tree_reduce([], add_in_order)


def test_add_in_order_is_left_to_right():
    assert add_in_order("a", "b", "c") == "abc"
    assert add_in_order([1], [2], [3, 4]) == [1, 2, 3, 4]
