"""Exact resume after real SIGKILLs, worker deaths, and damaged checkpoints.

The reference in every test is a fit that was never interrupted, run in a
separate process with the same settings; "exact" means np.array_equal.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import zarr

import dem
from dem.engine.fitting import ResumeWarning

FIT_SCRIPT = textwrap.dedent(
    """
    import sys, json, warnings
    import numpy as np
    import dem
    data, run_dir, out = sys.argv[1:4]
    warnings.simplefilter("ignore")
    est = dem.GaussianMixture(3, covariance_type="full", random_state=7, n_init=2, max_iter=12,
                              tol=0.0, partition_rows=500, checkpoint_dir=run_dir, cache=False)
    est.fit(data)
    np.savez(out, weights=est.weights_, means=est.means_, covariances=est.covariances_,
             lower_bound=est.lower_bound_, n_iter=est.n_iter_)
    """
)

# Fits stopped at a fixed max_iter on purpose: scikit-learn's non-convergence warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _write_data(path: str) -> None:
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [4.0, 1.0], [1.0, 5.0]])
    X = np.vstack([rng.normal(size=(1500, 2)) * 0.8 + c for c in centres])[rng.permutation(4500)]
    g = zarr.open_group(path, mode="w")
    g.create_array("X", data=X, chunks=(250, 2))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = str(root / "data.zarr")
    _write_data(data)
    script = root / "fit.py"
    script.write_text(FIT_SCRIPT)
    ref_out = root / "ref.npz"
    _run(script, data, root / "ref_run", ref_out)
    return root, data, script, np.load(ref_out)


def _run(script, data, run_dir, out, fault: str | None = None, timeout: float = 240) -> int:
    env = dict(os.environ)
    env.pop("DEM_FAULT_INJECT", None)
    if fault:
        env["DEM_FAULT_INJECT"] = fault
    proc = subprocess.run([sys.executable, str(script), str(data), str(run_dir), str(out)],
                          env=env, timeout=timeout, capture_output=True, text=True)
    if proc.returncode not in (0, -signal.SIGKILL):
        raise AssertionError(f"fit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.returncode


def _assert_same(result_path, ref) -> None:
    got = np.load(result_path)
    for key in ("weights", "means", "covariances", "lower_bound", "n_iter"):
        assert np.array_equal(got[key], ref[key]), key


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "e-step:60",            # driver dies inside an E-step of iteration 5 (local scheduler: tasks run in-process)
        "reduce:15",            # ... inside the reduction tree
        "m-step:9",             # ... between the reduction and the M-steps (both restarts share the pass)
        "checkpoint-write:7",   # ... halfway through writing a checkpoint's files
        "checkpoint-pointer:4", # ... after the checkpoint, before the pointer moved
    ],
)
def test_sigkill_then_resume_is_bitwise_equal(workspace, fault):
    root, data, script, ref = workspace
    run_dir = root / f"run-{fault.replace(':', '-')}"
    out = root / f"out-{fault.replace(':', '-')}.npz"
    assert _run(script, data, run_dir, out, fault=fault) == -signal.SIGKILL
    assert not out.exists()
    assert _run(script, data, run_dir, out) == 0
    _assert_same(out, ref)
    history = json.loads((run_dir / "history.json").read_text())
    assert [h["iteration"] for h in history] == list(range(1, int(ref["n_iter"]) + 1))


@pytest.mark.slow
def test_kill_at_random_moments_then_resume(workspace):
    root, data, script, ref = workspace
    run_dir, out = root / "run-random", root / "out-random.npz"
    rng = np.random.default_rng(11)
    kills = 0
    for _ in range(3):
        env = dict(os.environ)
        env.pop("DEM_FAULT_INJECT", None)
        proc = subprocess.Popen([sys.executable, str(script), data, str(run_dir), str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Wait until the fit has written something, then kill at a random moment after.
        deadline = time.monotonic() + 60
        while not (run_dir / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
    assert kills >= 1
    assert _run(script, data, run_dir, out) == 0
    _assert_same(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("cache", [False, True])
def test_worker_killed_mid_iteration_still_bitwise_equal(tmp_path, monkeypatch, cache):
    from distributed import Client, LocalCluster

    data = str(tmp_path / "data.zarr")
    _write_data(data)
    kwargs = dict(random_state=5, max_iter=8, tol=0.0, partition_rows=500, cache=cache)
    reference = dem.GaussianMixture(3, **kwargs).fit(data)
    marker = tmp_path / "killed"
    # Worker processes inherit the environment: one of them dies at its 6th E-step task.
    monkeypatch.setenv("DEM_FAULT_INJECT", f"e-step:6:{marker}")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        got = dem.GaussianMixture(3, client=client, **kwargs).fit(data)
    assert marker.exists(), "the fault was never injected"
    for attr in ("weights_", "means_", "covariances_", "lower_bound_"):
        assert np.array_equal(getattr(got, attr), getattr(reference, attr)), attr


def _fit_in_process(data, run_dir, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=Warning)
        return dem.GaussianMixture(3, random_state=2, max_iter=6, tol=0.0, partition_rows=500,
                                   checkpoint_dir=str(run_dir), **kw).fit(data)


@pytest.mark.parametrize("damage", ["truncate", "version", "pointer", "meta-missing"])
def test_damaged_newest_checkpoint_falls_back_and_says_so(tmp_path, damage):
    data = str(tmp_path / "data.zarr")
    _write_data(data)
    ref = _fit_in_process(data, tmp_path / "ref", keep_checkpoints=10)
    run = tmp_path / "run"
    _fit_in_process(data, run, keep_checkpoints=10)
    ckdir = run / "checkpoints"
    names = sorted(n for n in os.listdir(ckdir) if n.startswith("ckpt-"))
    # Pretend the run stopped after iteration 4: drop later checkpoints and outputs.
    for n in names[6:]:
        shutil.rmtree(ckdir / n)
    newest = ckdir / names[5]
    shutil.rmtree(run / "model.zarr")
    (ckdir / "LATEST").write_text(json.dumps({"name": names[5]}))
    (ckdir / "notes.txt").write_text("a foreign file")
    if damage == "truncate":
        blob = (newest / "arrays.npz").read_bytes()
        (newest / "arrays.npz").write_bytes(blob[: len(blob) // 2])
    elif damage == "version":
        meta = json.loads((newest / "meta.json").read_text())
        meta["format_version"] = 999
        (newest / "meta.json").write_text(json.dumps(meta))
    elif damage == "pointer":
        (ckdir / "LATEST").write_text(json.dumps({"name": "ckpt-00000099-deadbeef"}))
    else:
        (newest / "meta.json").unlink()
    with pytest.warns(ResumeWarning) as record:
        got = dem.GaussianMixture(3, random_state=2, max_iter=6, tol=0.0, partition_rows=500,
                                  checkpoint_dir=str(run), keep_checkpoints=10).fit(data)
    text = " ".join(str(w.message) for w in record)
    assert "notes.txt" in text
    if damage == "pointer":
        assert "missing checkpoint" in text
    else:
        assert "damaged" in text and names[5] in text
    assert np.array_equal(got.means_, ref.means_)
    assert np.array_equal(got.covariances_, ref.covariances_)


def test_mismatched_run_is_refused_naming_the_difference(tmp_path):
    data = str(tmp_path / "data.zarr")
    _write_data(data)
    _fit_in_process(data, tmp_path / "run")
    with pytest.raises(dem.CheckpointError, match=r"reg_covar: run has 1e-06, now 0.001"):
        _fit_in_process(data, tmp_path / "run", reg_covar=1e-3)
    other = str(tmp_path / "other.zarr")
    g = zarr.open_group(other, mode="w")
    g.create_array("X", data=np.random.default_rng(0).normal(size=(4500, 2)), chunks=(250, 2))
    with pytest.raises(dem.CheckpointError, match=r"data\.content_sha256"):
        _fit_in_process(other, tmp_path / "run")


def test_raising_max_iter_continues_a_finished_run(tmp_path):
    data = str(tmp_path / "data.zarr")
    _write_data(data)
    full = dem.GaussianMixture(3, random_state=4, max_iter=9, tol=0.0, partition_rows=500).fit(data)
    run = str(tmp_path / "run")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = dem.GaussianMixture(3, random_state=4, max_iter=5, tol=0.0, partition_rows=500,
                                    checkpoint_dir=run).fit(data)
        assert first.n_iter_ == 5
        more = dem.GaussianMixture(3, random_state=4, max_iter=9, tol=0.0, partition_rows=500,
                                   checkpoint_dir=run).fit(data)
    assert more.n_iter_ == 9
    assert np.array_equal(more.means_, full.means_)
    assert [h["resumed"] for h in more.history_].index(True) == 5


def test_object_store_pointer_protocol(tmp_path):
    """A non-local fsspec filesystem takes the pointer-object path, and resumes exactly."""
    import fsspec

    data = str(tmp_path / "data.zarr")
    _write_data(data)
    url = "memory://dem-test-run"
    fsspec.filesystem("memory").rm("/dem-test-run", recursive=True) if fsspec.filesystem("memory").exists("/dem-test-run") else None
    ref = dem.GaussianMixture(3, random_state=9, max_iter=6, tol=0.0, partition_rows=500).fit(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dem.GaussianMixture(3, random_state=9, max_iter=3, tol=0.0, partition_rows=500,
                            checkpoint_dir=url).fit(data)
        fs = fsspec.filesystem("memory")
        pointer = json.loads(fs.cat_file("/dem-test-run/checkpoints/LATEST"))
        assert fs.exists(f"/dem-test-run/checkpoints/{pointer['name']}/meta.json")
        got = dem.GaussianMixture(3, random_state=9, max_iter=6, tol=0.0, partition_rows=500,
                                  checkpoint_dir=url).fit(data)
    assert np.array_equal(got.means_, ref.means_)
    assert got.history_[3]["resumed"] is True


def test_a_run_directory_of_an_older_format_is_refused_naming_the_version(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    # What dem 0.1 wrote: run.json without a format version (checkpoint format 2).
    (run / "run.json").write_text(json.dumps({"fingerprint": {}, "seed": 0, "partition_rows": 100}))
    X = np.random.default_rng(0).normal(size=(200, 2))
    with pytest.raises(dem.CheckpointError, match=r"checkpoint format 2; this dem reads format 3\), so it cannot "
                                                  r"be resumed: start a new run directory"):
        dem.GaussianMixture(2, random_state=0, checkpoint_dir=str(run)).fit(X)


def test_lowering_tol_on_a_converged_run_continues_it_to_the_new_tol(tmp_path):
    # issue 17 item 2: a lower tol, like a higher max_iter, continues a finished fit.
    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + 1.5])
    kw = dict(random_state=2, max_iter=500, init_params="random_from_data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loose = dem.GaussianMixture(2, tol=1e-2, checkpoint_dir=str(tmp_path / "run"), **kw).fit(X)
        tight = dem.GaussianMixture(2, tol=1e-8, checkpoint_dir=str(tmp_path / "run"), **kw).fit(X)
        straight = dem.GaussianMixture(2, tol=1e-8, **kw).fit(X)
    assert loose.converged_ and tight.converged_
    assert tight.n_iter_ == straight.n_iter_ > loose.n_iter_
    assert abs(tight.history_[-1]["delta"]) < 1e-8 <= abs(loose.history_[-1]["delta"]) or loose.n_iter_ < tight.n_iter_
    assert [h["resumed"] for h in tight.history_].index(True) == loose.n_iter_
    for name in ("weights_", "means_", "covariances_"):
        assert np.array_equal(getattr(tight, name), getattr(straight, name)), name
