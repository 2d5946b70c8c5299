"""glibc's malloc thresholds raised while engine tasks run on a Dask worker.

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``
(``distributed.nanny.pre-spawn-environ``) so that freed memory goes back to
the operating system at once. Setting it also switches off glibc's adaptive
mmap threshold: every array over 128 KiB is then a fresh mapping, faulted
in and zeroed page by page, and unmapped when freed. A kernel that makes
lattice-sized temporaries batch after batch (an HMM's forward–backward
makes about eight arrays of 8 MiB per batch) then spends a third of its
time in page faults.

While at least one engine task runs in the process, :func:`task_heap` raises
the mmap threshold to :data:`MMAP_THRESHOLD` and the trim threshold to
:data:`TRIM_THRESHOLD`, so a freed array's memory serves the next one. When
the last running task ends, it puts the values the process started with
back and returns the free memory to the operating system
(``malloc_trim``), so nothing is held between tasks.

It acts only where glibc's ``mallopt`` exists and the process was started
with ``MALLOC_TRIM_THRESHOLD_``. Elsewhere glibc's adaptive thresholds
already reuse freed arrays, and setting a threshold would switch them off.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading
from typing import Any, Iterator

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's mmap threshold when none is set (and the adaptive one is off).
DEFAULT_MMAP_THRESHOLD = 128 * 1024
#: While tasks run: arrays up to this size come from the heap. It is glibc's
#: own ceiling for the adaptive threshold on 64-bit systems.
MMAP_THRESHOLD = 32 * 2**20
#: While tasks run: free memory at the top of the heap is kept up to this size.
TRIM_THRESHOLD = 1 << 30

_lock = threading.Lock()
_running = 0
_libc: Any = None
_checked = False


def _glibc() -> Any:
    """glibc with ``mallopt`` and ``malloc_trim``, when this process was started with the nanny's
    ``MALLOC_TRIM_THRESHOLD_``; None otherwise."""
    global _libc, _checked
    if not _checked:
        _checked = True
        if os.environ.get("MALLOC_TRIM_THRESHOLD_"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version"):
                    _libc = libc
            except OSError:
                _libc = None
    return _libc


def _started_with(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


@contextlib.contextmanager
def task_heap() -> Iterator[None]:
    """Raise the thresholds while this and any other task of the process runs (see the module)."""
    global _running
    libc = _glibc()
    if libc is None:
        yield
        return
    with _lock:
        _running += 1
        if _running == 1:
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                libc.mallopt(M_TRIM_THRESHOLD, _started_with("MALLOC_TRIM_THRESHOLD_", 65536))
                libc.mallopt(M_MMAP_THRESHOLD, _started_with("MALLOC_MMAP_THRESHOLD_", DEFAULT_MMAP_THRESHOLD))
                libc.malloc_trim(0)
