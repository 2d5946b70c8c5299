"""Child-process entry: ``python -m benchmarks._child SPEC.json RESULT.json``.

Runs one measurement of :mod:`benchmarks.measure` and writes its result
(or the error) as JSON. The parent enforces the timeout.
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    t0 = time.perf_counter()
    try:
        from benchmarks.kernel_bench import KINDS as KERNEL_KINDS
        from benchmarks.measure import KINDS

        result = {**KINDS, **KERNEL_KINDS}[spec["kind"]](spec)
        result.setdefault("status", "ok")
    except Exception as exc:
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}".splitlines()[0][:500]}
    result["child_seconds"] = time.perf_counter() - t0
    with open(result_path, "w") as f:
        json.dump(result, f, default=_jsonable)
    return 0


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
