"""Fault injection for dem's own crash tests.

``DEM_FAULT_INJECT=stage:n[:marker]`` makes the process kill itself with
SIGKILL the n-th time it reaches ``stage`` (``e-step``, ``reduce``,
``checkpoint-write``, ``checkpoint-pointer``, ``m-step``). With a marker path
the fault fires once across processes: the marker is created just before the
kill, and a process that finds it carries on (so a restarted worker does not
die again). Unset, this costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_ENV = "DEM_FAULT_INJECT"
_counts: Counter[str] = Counter()


def maybe_crash(stage: str) -> None:
    spec = os.environ.get(_ENV)
    if not spec:
        return
    parts = spec.split(":", 2)
    if parts[0] != stage:
        return
    _counts[stage] += 1
    if _counts[stage] != int(parts[1]):
        return
    if len(parts) == 3:
        marker = parts[2]
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
