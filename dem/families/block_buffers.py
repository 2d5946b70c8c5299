"""Block buffers an E-step keeps per thread, from one partition to the next.

A kernel's block buffers (packed products, log-densities, whitened rows) are
a few MiB. Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set,
which pins glibc's mmap threshold at 128 KiB, so buffers allocated afresh
for every partition are fresh pages each time, faulted in and zeroed on
first touch; kept per thread, a worker touches them once. Every user of a
buffer writes it before reading it, so reuse cannot change a result.

A thread keeps at most :data:`KEEP_COUNT` buffer sets and :data:`KEEP_BYTES`
in all, the most recently used first: a pass's partitions share one block
size and at most one shorter last block.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

import numpy as np

#: Most bytes of buffers one thread keeps between calls: a few blocks' worth
#: (a block aims at 4 MiB). Larger sets come with partitions whose arithmetic
#: dwarfs their page faults, and kept memory is outside Dask's accounting.
KEEP_BYTES = 16 * 2**20
#: Most buffer sets one thread keeps between calls.
KEEP_COUNT = 4

T = TypeVar("T")

_local = threading.local()


def nbytes_of(obj: object) -> int:
    """Bytes of the numpy arrays an object holds as attributes (views of them not counted again)."""
    return sum(v.nbytes for v in vars(obj).values() if isinstance(v, np.ndarray) and v.base is None)


def reused(key: Hashable, build: Callable[[], T]) -> T:
    """The buffer set ``key`` names in this thread, built by ``build()`` on first use.

    ``key`` must determine every shape and dtype ``build`` makes. The set's
    size is its ``nbytes`` attribute if it has one, else :func:`nbytes_of`; a
    set larger than :data:`KEEP_BYTES` is built afresh each time and not kept.
    """
    kept: OrderedDict = getattr(_local, "kept", None)
    if kept is None:
        kept = _local.kept = OrderedDict()
    found = kept.get(key)
    if found is not None:
        kept.move_to_end(key)
        return found[0]
    obj = build()
    size = getattr(obj, "nbytes", None)
    if not isinstance(size, int):
        size = nbytes_of(obj)
    if size <= KEEP_BYTES:
        kept[key] = (obj, size)
        while len(kept) > KEEP_COUNT or sum(s for _, s in kept.values()) > KEEP_BYTES:
            kept.popitem(last=False)
    return obj


def clear() -> None:
    """Drop this thread's kept buffers."""
    _local.kept = OrderedDict()
