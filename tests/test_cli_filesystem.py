"""Filesystem errors on the run directory: one line, exit 1, no temporary files left.

A full disk and a read-only filesystem are real where the machine allows an
unprivileged user namespace (``unshare -rm``): the run directory is then a
small tmpfs mounted in a private mount namespace, which nothing else sees
and which disappears with the command. Elsewhere those tests are skipped;
the in-process tests (a file in the way, a write that fails with ENOSPC)
run everywhere.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
import yaml

from dem.data.generate import generate_dataset
from test_cli import assert_one_line_error, run_main


def _unshare_works() -> bool:
    if shutil.which("unshare") is None or sys.platform != "linux":
        return False
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_tmpfs = pytest.mark.skipif(not _unshare_works(), reason="no unprivileged user namespaces to mount a tmpfs")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fsdata") / "mix.zarr"
    generate_dataset(path, 4_000, 2, 2, chunk_rows=1_000, seed=1)
    return path


def _config(directory: Path, data: Path, run_dir: Path) -> Path:
    cfg = {"data": {"path": str(data)}, "model": {"n_components": 2},
           "fit": {"max_iter": 10, "tol": 1e-6, "random_state": 0, "partition_rows": 1_000},
           "cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_limit": "1GiB", "dashboard": False},
           "output": {"run_dir": str(run_dir)}}
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _in_tmpfs(mount: Path, size: str, script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``script`` (sh) with a fresh tmpfs of ``size`` at ``mount``, in a private mount namespace."""
    mount.mkdir(exist_ok=True)
    dem = f"{shlex.quote(sys.executable)} -m dem.cli"
    body = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} && " + script.replace("DEM", dem)
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "COLUMNS": "200"}
    return subprocess.run(["unshare", "-rm", "sh", "-c", body], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def _section(stdout: str, name: str) -> list[str]:
    return stdout.split(f"=={name}==\n", 1)[1].split("==", 1)[0].split()


# -- a file in the way -------------------------------------------------------------

def test_run_dir_that_is_a_regular_file(tmp_path: Path, data: Path, capsys, monkeypatch) -> None:
    (tmp_path / "run").write_text("my notes")
    _config(tmp_path, data, tmp_path / "run")
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, f"output.run_dir '{tmp_path}/run' is a file, not a directory: "
                                   "choose another output.run_dir")
    assert (tmp_path / "run").read_text() == "my notes"


def test_run_dir_below_a_regular_file(tmp_path: Path, data: Path, capsys, monkeypatch) -> None:
    (tmp_path / "runs").write_text("my notes")
    _config(tmp_path, data, tmp_path / "runs" / "demo")
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, f"cannot create output.run_dir '{tmp_path}/runs/demo': "
                                   f"'{tmp_path}/runs' is a file, not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "runs"]


# -- a full disk ---------------------------------------------------------------------

def test_a_full_disk_while_saving_the_model_is_one_line_and_leaves_no_temporary(
        tmp_path: Path, data: Path, capsys, monkeypatch) -> None:
    real_to_zarr = xr.Dataset.to_zarr

    def full_disk(self, store, *args, **kwargs):
        real_to_zarr(self, store, *args, **kwargs)  # the chunks are written when the disk fills up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(xr.Dataset, "to_zarr", full_disk)
    _config(tmp_path, data, tmp_path / "run")
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    (run / f"model.zarr.tmp-{int(dead.stdout)}").mkdir()  # left by a killed run: collected by this one
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, f"no space left on the device writing {run}: free some space, "
                                   f"then continue with `dem resume {run}`")
    assert [p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    assert not (run / "model.zarr").exists() and (run / "checkpoints").is_dir()


@needs_tmpfs
def test_a_really_full_disk_then_resume_after_freeing_space(tmp_path: Path, data: Path) -> None:
    # 100 KiB: the checkpoints fit, model.zarr (a dozen 4 KiB files) does not.
    mnt = tmp_path / "mnt"
    _config(tmp_path, data, mnt / "run")
    proc = _in_tmpfs(mnt, "100k", "DEM fit config.yaml; rc=$?; echo ==first==; find mnt -name '*.tmp-*' -o "
                                   "-name '*.old-*'; echo ==rc==; echo $rc; mount -o remount,size=4m mnt && "
                                   "DEM resume mnt/run >/dev/null && echo ==model==; ls mnt/run/model.zarr | head -1",
                     cwd=tmp_path)
    run = mnt / "run"
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == [f"error: no space left on the device writing {run}: free some space, "
                      f"then continue with `dem resume {run}`"], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _section(proc.stdout, "first") == []  # no model.zarr.tmp-PID, no checkpoint .tmp-
    assert _section(proc.stdout, "rc") == ["1"]
    assert "==model==" in proc.stdout, proc.stdout  # resumed and saved once there was room


# -- read-only -------------------------------------------------------------------------

@needs_tmpfs
def test_a_read_only_filesystem_is_refused_before_anything_starts(tmp_path: Path, data: Path) -> None:
    mnt = tmp_path / "mnt"
    _config(tmp_path, data, mnt / "run")
    proc = _in_tmpfs(mnt, "4m", "mount -o remount,ro mnt && DEM fit config.yaml", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: cannot write to output.run_dir '{mnt}/run' (it would be created in '{mnt}'): "
        "Read-only file system; make it writable or choose another output.run_dir"]
    assert proc.stdout == ""


@needs_tmpfs
def test_resuming_a_run_made_read_only_is_one_line(tmp_path: Path, data: Path) -> None:
    mnt = tmp_path / "mnt"
    _config(tmp_path, data, mnt / "run")
    proc = _in_tmpfs(mnt, "4m", "DEM fit config.yaml >/dev/null && mount -o remount,ro mnt && "
                                "DEM resume mnt/run --set fit.max_iter=20", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        f"error: cannot write to output.run_dir '{mnt}/run': Read-only file system; make it writable or "
        "choose another output.run_dir"]
