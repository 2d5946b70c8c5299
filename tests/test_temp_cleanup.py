"""The test suite leaves nothing in the system temporary directory (issue 17, item 19)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path


def test_temporary_files_go_to_the_sessions_private_directory(private_system_temp) -> None:
    private = Path(private_system_temp)
    assert private.name.startswith("dem-tests-") and private.is_dir()
    assert tempfile.gettempdir() == str(private)
    assert os.environ["TMPDIR"] == str(private)
    # A subprocess (a notebook kernel, a `dem` command, a Dask worker) resolves the same directory.
    child = subprocess.run([sys.executable, "-c", "import tempfile; print(tempfile.gettempdir())"],
                           capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(private)
    import dask

    assert dask.config.get("temporary-directory") == str(private)


def test_a_local_cluster_keeps_its_scratch_space_in_the_private_directory(private_system_temp,
                                                                          local_cluster_client) -> None:
    dirs = local_cluster_client.run(lambda dask_worker: dask_worker.local_directory)
    assert len(dirs) == 2
    assert all(Path(d).is_relative_to(Path(private_system_temp) / "dask-scratch-space") for d in dirs.values())


def test_a_killed_sessions_directory_is_collected_by_the_next(tmp_path) -> None:
    from conftest import _remove_private_temps_of_dead_sessions

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    stale = tmp_path / f"dem-tests-{int(dead.stdout)}-abc"
    (stale / "dask-scratch-space").mkdir(parents=True)
    live = tmp_path / f"dem-tests-{os.getpid()}-xyz"
    live.mkdir()
    other = tmp_path / "dem-tests-notapid"
    other.mkdir()
    _remove_private_temps_of_dead_sessions(str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
