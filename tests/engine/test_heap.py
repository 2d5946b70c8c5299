"""glibc's malloc thresholds while engine tasks run (:mod:`dem.engine.heap`).

The page faults and resident memory are the operating system's own counts
(``getrusage``, ``/proc/self/statm``) in a fresh process started with the
variable Dask's nanny sets; the calls into glibc are recorded by a stand-in.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
import threading

import pytest

from dem.engine import heap


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def libc(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setattr(heap, "_glibc", lambda: recorder)
    monkeypatch.setattr(heap, "_running", 0)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    return recorder


RAISE = [
    ("mallopt", heap.M_MMAP_THRESHOLD, heap.MMAP_THRESHOLD),
    ("mallopt", heap.M_TRIM_THRESHOLD, heap.TRIM_THRESHOLD),
]


def test_the_first_task_raises_the_thresholds_and_the_last_puts_the_started_values_back(libc):
    with heap.task_heap():
        assert libc.calls == RAISE
        with heap.task_heap():  # a second task of the process, while the first runs
            pass
        assert libc.calls == RAISE  # still running: nothing put back, nothing trimmed
    assert libc.calls == RAISE + [("mallopt", heap.M_TRIM_THRESHOLD, 65536),
                                  ("mallopt", heap.M_MMAP_THRESHOLD, 128 * 1024), ("malloc_trim", 0)]


def test_a_task_that_fails_still_puts_the_values_back(libc, monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")
    with pytest.raises(ZeroDivisionError):
        with heap.task_heap():
            1 / 0
    assert libc.calls[-3:] == [("mallopt", heap.M_TRIM_THRESHOLD, 65536),
                               ("mallopt", heap.M_MMAP_THRESHOLD, 1048576), ("malloc_trim", 0)]
    assert heap._running == 0


def test_tasks_in_threads_share_one_raise(libc):
    inside, release = threading.Barrier(5), threading.Event()

    def task():
        with heap.task_heap():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=task) for _ in range(4)]
    for t in threads:
        t.start()
    inside.wait()
    assert libc.calls == RAISE and heap._running == 4
    release.set()
    for t in threads:
        t.join()
    assert libc.calls[:2] == RAISE and libc.calls.count(("malloc_trim", 0)) == 1 and len(libc.calls) == 5


def test_nothing_is_set_in_a_process_started_without_the_nannys_variable(monkeypatch):
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setattr(heap, "_checked", False)
    monkeypatch.setattr(heap, "_libc", None)
    assert heap._glibc() is None
    with heap.task_heap():
        pass


_PROBE = textwrap.dedent("""
    import json, resource
    import numpy as np
    from dem.engine.heap import task_heap

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def freed():  # resident bytes an 8 MiB array gives back when freed
        a = np.ones(1 << 20)
        before = rss()
        del a
        return before - rss()

    def batches():  # a kernel making lattice-sized temporaries batch after batch
        for _ in range(20):
            a = np.ones(1 << 20)
            a += 1.0
            del a

    out = {"freed_outside": freed()}
    with task_heap():
        out["freed_inside"] = freed()
        batches()
        f0 = faults(); batches(); out["faults_inside"] = faults() - f0
        kept = rss()
    out["given_back_after"] = kept - rss()
    print(json.dumps(out))
""")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc")
def test_under_the_nannys_variable_a_task_reuses_freed_arrays_and_gives_the_memory_back_after():
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    MiB = 2**20
    # Outside a task a freed 8 MiB array is unmapped at once (the next one is fresh pages);
    # inside, its memory stays for the next array, and no page is faulted in again.
    assert seen["freed_outside"] >= 7 * MiB, seen
    assert seen["freed_inside"] < 1 * MiB, seen
    assert seen["faults_inside"] < 50, seen  # 20 arrays of 2,048 pages each
    assert seen["given_back_after"] >= 7 * MiB, seen  # returned when the task ends
