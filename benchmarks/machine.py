"""What a benchmark records about the machine it ran on: the CPU model and the BLAS libraries."""

from __future__ import annotations

import platform
from typing import Any

BLAS_FIELDS = ("internal_api", "version", "num_threads", "threading_layer", "architecture")


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or None


def blas_libraries(fields: tuple[str, ...] = BLAS_FIELDS) -> list[dict[str, Any]]:
    """The BLAS libraries loaded in this process, as threadpoolctl reports them."""
    from threadpoolctl import threadpool_info

    return [{k: i.get(k) for k in fields} for i in threadpool_info() if i.get("user_api") == "blas"]
