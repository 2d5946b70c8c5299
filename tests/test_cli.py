"""The `dem` command end to end: real subprocesses, a real 2-process LocalCluster, tiny data.

Fits, `dem info` and one validation error run the real command in a
subprocess; the other validation errors call ``dem.cli.main`` in-process
(same code path, without paying the interpreter start-up each time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

import dem
import dem.errors
from dem.data.generate import generate_dataset

N_SAMPLES, N_FEATURES, N_COMPONENTS, CHUNK_ROWS = 20_000, 3, 3, 5_000


def run_dem(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real command line (`python -m dem.cli` is what the `dem` script calls)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore::DeprecationWarning", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "dem.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def run_main(*args: str, cwd: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
             ) -> subprocess.CompletedProcess:
    """Run ``dem.cli.main`` in this process (for fast validation paths), same result shape as ``run_dem``."""
    from dem.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, info.value.code, captured.out, captured.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "mix.zarr"
    generate_dataset(path, N_SAMPLES, N_FEATURES, N_COMPONENTS, chunk_rows=CHUNK_ROWS, seed=4)
    return path


def write_config(directory: Path, data_path: Path, **sections: dict) -> Path:
    cfg = {
        "data": {"path": str(data_path)},
        "model": {"n_components": N_COMPONENTS, "covariance_type": "full"},
        "fit": {"max_iter": 50, "tol": 1e-4, "random_state": 0, "partition_rows": CHUNK_ROWS},
        "cluster": {"n_workers": 2, "threads_per_worker": 1, "memory_limit": "1GiB", "dashboard": False},
        "output": {"run_dir": "run"},
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def fitted_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real fit on a 2-worker-process LocalCluster, shared by the tests that inspect it."""
    work = tmp_path_factory.mktemp("fit")
    write_config(work, dataset)
    proc = run_dem("fit", "--set", "fit.n_init=1", cwd=work)
    return work, proc


def test_fit_writes_the_run_and_recovers_the_true_means(dataset: Path, fitted_run) -> None:
    work, proc = fitted_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    run = work / "run"
    for name in ("config.yaml", "history.json", "model.zarr"):
        assert (run / name).exists(), name
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["path"] == str(dataset) and saved["output"]["run_dir"] == str(run)
    history = json.loads((run / "history.json").read_text())
    assert [h["iteration"] for h in history] == list(range(1, len(history) + 1))
    # One progress line per iteration, with log-likelihood, delta and timing.
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iteration")]
    assert len(lines) == len(history)
    assert "mean log-likelihood" in lines[-1] and "s/iter" in lines[-1]
    assert "converged after" in proc.stdout

    est = dem.load(run)
    g = zarr.open_group(str(dataset), mode="r")
    true_means, true_cov, labels = g["true_means"][:], g["true_covariances"][:], g["labels"][:]
    # Match each true component to the nearest fitted mean; the matching must be one-to-one.
    dist = np.linalg.norm(true_means[:, None, :] - est.means_[None, :, :], axis=-1)
    match = dist.argmin(axis=1)
    assert sorted(match.tolist()) == list(range(N_COMPONENTS))
    for k in range(N_COMPONENTS):
        n_k = int((labels == k).sum())
        # Tolerance: 5 standard errors of the component's sample mean, per feature.
        tolerance = 5 * np.sqrt(np.diag(true_cov[k]) / n_k)
        assert (np.abs(est.means_[match[k]] - true_means[k]) < tolerance).all(), (k, est.means_[match[k]],
                                                                                  true_means[k])


def test_info_shows_the_history(fitted_run) -> None:
    work, proc = fitted_run
    assert proc.returncode == 0, proc.stderr
    history = json.loads((work / "run" / "history.json").read_text())
    info = run_dem("info", "run", cwd=work)
    assert info.returncode == 0, info.stderr
    assert "history" in info.stdout and "mean log-likelihood" in info.stdout
    assert "model: gmm (n_components 3, covariance_type 'full', reg_covar 1e-06, missing 'error')" in info.stdout
    table_rows = [line for line in info.stdout.splitlines() if f"{history[-1]['objective']:.6f}" in line]
    assert table_rows, info.stdout
    for h in history:
        assert f"{h['objective']:.6f}" in info.stdout
    assert f"after {len(history)} iterations" in info.stdout
    assert "model.zarr" in info.stdout


def test_info_names_an_algorithm_other_than_plain_em(fitted_run, tmp_path, capsys, monkeypatch) -> None:
    import shutil

    work, proc = fitted_run
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    plain = run_main("info", str(run), cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    fit_line = next(line for line in plain.stdout.splitlines() if line.startswith("fit: "))
    assert fit_line.endswith("random_state 0"), fit_line  # plain EM adds nothing
    for extra, words in [
        ({"accelerate": "squarem"}, ", accelerate squarem (max_iter counts passes)"),
        ({"learning_method": "online", "learning_decay": 0.6, "learning_offset": 10, "batch_size": None},
         ", online EM (learning_decay 0.6, learning_offset 10, batch_size auto; max_iter counts passes)"),
        ({"learning_method": "sem+em"}, ", learning_method sem+em"),
    ]:
        (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "fit": {**cfg["fit"], **extra}}))
        info = run_main("info", str(run), cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
        assert info.returncode == 0, info.stderr
        assert f"{fit_line}{words}" in info.stdout.splitlines(), info.stdout


def test_fit_refuses_a_finished_run_with_another_config(fitted_run, capsys, monkeypatch) -> None:
    work, proc = fitted_run
    assert proc.returncode == 0, proc.stderr
    before = (work / "run" / "config.yaml").read_text()
    refused = run_main("fit", "--set", "model.n_components=2", cwd=work, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(refused, 1, "finished run with a different config", "model.n_components",
                          "output.overwrite")
    assert (work / "run" / "config.yaml").read_text() == before


def test_resume_may_only_change_max_iter_and_tol(fitted_run, capsys, monkeypatch) -> None:
    work, _ = fitted_run
    proc = run_main("resume", "run", "--set", "model.covariance_type=diag", cwd=work, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "fit.max_iter", "fit.tol")


def test_resume_of_a_finished_run_ends_where_it_was(fitted_run) -> None:
    work, proc = fitted_run
    assert proc.returncode == 0, proc.stderr
    before = json.loads((work / "run" / "history.json").read_text())
    resumed = run_dem("resume", "run", "--set", "fit.max_iter=60", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    after = json.loads((work / "run" / "history.json").read_text())
    assert [h["objective"] for h in after] == [h["objective"] for h in before]
    assert yaml.safe_load((work / "run" / "config.yaml").read_text())["fit"]["max_iter"] == 60


def test_info_reads_checkpoint_meta_without_history(tmp_path: Path, capsys, monkeypatch) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-00000002-abc"
    ckpt.mkdir(parents=True)
    history = [{"iteration": 1, "objective": -3.25, "delta": None, "seconds": 0.5, "n_rows": 10,
                "resumed": False, "notes": []},
               {"iteration": 2, "objective": -3.125, "delta": 0.125, "seconds": 0.25, "n_rows": 10,
                "resumed": True, "notes": []}]
    (ckpt / "meta.json").write_text(json.dumps({"history": history}))
    proc = run_main("info", "run", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert proc.returncode == 0, proc.stderr
    assert "-3.250000" in proc.stdout and "-3.125000" in proc.stdout and "resumed" in proc.stdout
    assert "dem resume" in proc.stdout


def test_generate_command(tmp_path: Path, capsys, monkeypatch) -> None:
    proc = run_dem("generate", "g.zarr", "--samples", "3000", "--features", "2", "--components", "2",
                   "--chunk-rows", "1000", "--seed", "9", "--weighted", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="r")
    assert g["X"].shape == (3000, 2) and g["X"].chunks == (1000, 2) and "weights" in g
    assert g.attrs["seed"] == 9
    again = run_main("generate", "g.zarr", "--samples", "3000", "--features", "2", "--components", "2",
                     cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(again, 1, "already exists")
    bad = run_main("generate", "h.zarr", "--samples", "0", "--features", "2", "--components", "2",
                   cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(bad, 1, "n_samples must be an integer >= 1; got 0")
    assert not (tmp_path / "h.zarr").exists()


# -- errors: one line, no traceback, nothing written -----------------------------

def test_unknown_key_suggests_the_nearest(tmp_path: Path, dataset: Path) -> None:
    """Through the real script: exit 1, one line, the nearest key, nothing written."""
    write_config(tmp_path, dataset)
    proc = run_dem("fit", "config.yaml", "--set", "model.n_componets=4", cwd=tmp_path)
    assert proc.stdout == ""
    assert_one_line_error(proc, 1, "unknown key 'model.n_componets'", "did you mean 'model.n_components'?")
    assert not (tmp_path / "run").exists()


def test_missing_data_path(tmp_path: Path, capsys, monkeypatch) -> None:
    write_config(tmp_path, tmp_path / "nowhere.zarr")
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "nowhere.zarr", "does not exist")
    assert not (tmp_path / "run").exists()


def test_wrong_variable_is_caught_before_anything_is_written(tmp_path: Path, dataset: Path, capsys,
                                                             monkeypatch) -> None:
    write_config(tmp_path, dataset, data={"variable": "Y"})
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "has no array 'Y'")
    assert not (tmp_path / "run").exists()


def test_invalid_covariance_type(tmp_path: Path, dataset: Path, capsys, monkeypatch) -> None:
    write_config(tmp_path, dataset, model={"covariance_type": "fulll"})
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "model.covariance_type must be one of diag, full, spherical, tied", "'fulll'")
    assert not (tmp_path / "run").exists()


def test_missing_config_file(tmp_path: Path, capsys, monkeypatch) -> None:
    proc = run_main("fit", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "config.yaml", "not found")


def test_bad_set_syntax(tmp_path: Path, dataset: Path, capsys, monkeypatch) -> None:
    write_config(tmp_path, dataset)
    proc = run_main("fit", "--set", "model.n_components", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "section.key=value")


def test_usage_error_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    kw = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(run_main("fit", "--bogus", **kw), 2, "--bogus")
    assert_one_line_error(run_main("info", **kw), 2, "RUN_DIR")
    assert_one_line_error(run_main("generate", "x.zarr", "--samples", "ten", **kw), 2, "--samples")


def test_info_on_a_non_run(tmp_path: Path, capsys, monkeypatch) -> None:
    proc = run_main("info", "nothing", cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "no dem run")


def test_nan_in_data_names_the_row(tmp_path: Path) -> None:
    data = tmp_path / "nan.zarr"
    generate_dataset(data, 4_000, 2, 2, chunk_rows=1_000, seed=1)
    X = zarr.open_group(str(data), mode="r+")["X"]
    X[2_345, 1] = np.nan
    write_config(tmp_path, data, model={"n_components": 2}, cluster={"n_workers": 1},
                 fit={"partition_rows": 1_000})
    proc = run_dem("fit", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: ") and "NaN" in last and "row 2345" in last, proc.stderr
    # Nothing to resume: the failed run leaves no run directory behind.
    assert not (tmp_path / "run").exists()


def test_a_damaged_chunk_read_in_a_task_is_one_line(tmp_path: Path) -> None:
    # issue 17 item 6: this used to be a 130-line traceback ending in "Zstd decompression error".
    data = tmp_path / "damaged.zarr"
    generate_dataset(data, 4_000, 2, 2, chunk_rows=1_000, seed=1)
    # Chunk 1 (rows 1000-1999): not among the rows the fingerprint samples on the driver,
    # so the first read of it is in a worker's task.
    chunk = data / "X" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:20])
    write_config(tmp_path, data, model={"n_components": 2}, cluster={"n_workers": 1},
                 fit={"partition_rows": 1_000})
    proc = run_dem("fit", cwd=tmp_path)
    line = assert_one_line_error(proc, 1, f"cannot read {chunk} (rows 1000–1999 of Zarr array {data}/X)",
                                 "the chunk is damaged or truncated")
    assert not (tmp_path / "run").exists(), line


# -- issue 17 item 4: data.generate never turns a typo into a dataset --------------

REPO = Path(__file__).resolve().parents[1]


def test_a_mistyped_data_path_with_the_demo_config_is_refused(tmp_path: Path, capsys, monkeypatch) -> None:
    # The reproduction: this used to write 92 MiB of synthetic data at the typo and fit it.
    proc = run_main("fit", str(REPO / "config.yaml"), "--set", "data.path=data/demo.zar", cwd=tmp_path,
                    capsys=capsys, monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, f"data.path '{tmp_path}/data/demo.zar' does not exist, and data.generate only "
                                   f"creates data at data.generate.path '{tmp_path}/data/demo.zarr': "
                                   "check data.path for a typo")
    assert list(tmp_path.iterdir()) == []  # neither data nor a run directory


def test_the_demo_config_generates_at_its_own_path(tmp_path: Path, monkeypatch) -> None:
    from dem.cli import _preflight_data
    from dem.config import load_config

    monkeypatch.chdir(tmp_path)
    assert _preflight_data(load_config(REPO / "config.yaml")) is True  # data/demo.zarr: generate it
    assert list(tmp_path.iterdir()) == []


def test_generating_without_generate_path_is_said_loudly_and_recorded(tmp_path: Path) -> None:
    data = tmp_path / "made.zarr"
    write_config(tmp_path, data, data={"generate": {"n_samples": 2_000, "n_features": 2, "n_components": 2,
                                                    "chunk_rows": 500, "seed": 3}},
                 model={"n_components": 2}, cluster={"n_workers": 1}, fit={"partition_rows": 500})
    proc = run_dem("fit", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"warning: data.path {data} does not exist: generating SYNTHETIC data there (data.generate; "
            "set data.generate.path to refuse a mistyped data.path instead)") in proc.stderr.splitlines()
    assert zarr.open_group(str(data), mode="r")["X"].shape == (2_000, 2)
    record = json.loads((tmp_path / "run" / "data_generated.json").read_text())
    assert record["path"] == str(data) and record["settings"]["n_samples"] == 2_000
    assert record["settings"]["seed"] == 3
    info = run_dem("info", "run", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    assert (f"data generated by this run: SYNTHETIC data written to {data} at {record['generated_at']} "
            "(data.generate: 2000 rows, 2 components, seed 3)") in info.stdout


# -- issue 17 items 10 and 17: messages ----------------------------------------------------

def test_a_scheduler_address_without_a_port_is_one_line(tmp_path: Path, dataset: Path, capsys,
                                                        monkeypatch) -> None:
    write_config(tmp_path, dataset)
    proc = run_main("fit", "--set", "cluster.address=notanaddress", cwd=tmp_path, capsys=capsys,
                    monkeypatch=monkeypatch)
    assert_one_line_error(proc, 1, "cluster.address must be null or a scheduler address like tcp://host:8786 "
                                   "or tls://host:8786; got 'notanaddress' (str) in --set")
    assert not (tmp_path / "run").exists()


def test_existing_outputs_name_the_command_line_flag(tmp_path: Path, capsys, monkeypatch) -> None:
    kw = dict(cwd=tmp_path, capsys=capsys, monkeypatch=monkeypatch)
    args = ("generate", "g.zarr", "--samples", "100", "--features", "2", "--components", "2")
    assert run_main(*args, **kw).returncode == 0
    assert_one_line_error(run_main(*args, **kw), 1,
                          f"'{tmp_path / 'g.zarr'}' already exists; remove it or add --overwrite")
    assert run_main(*args, "--overwrite", **kw).returncode == 0
    # From Python the same error names the keyword argument.
    with pytest.raises(dem.errors.DataError, match=r"already exists; remove it or pass overwrite=True$"):
        generate_dataset(tmp_path / "g.zarr", 100, 2, 2)


def test_numbers_in_messages_are_plain_numbers(tmp_path: Path) -> None:
    with pytest.raises(dem.errors.ConfigError) as info:
        generate_dataset(tmp_path / "s.zarr", 100, 2, 2, separation=np.float64(-1.0))
    assert str(info.value) == "separation must be a finite number > 0; got -1.0"  # not np.float64(-1.0)
    with pytest.raises(dem.errors.ConfigError) as info:
        generate_dataset(tmp_path / "s.zarr", np.int64(0), 2, 2)
    assert str(info.value) == "n_samples must be an integer >= 1; got 0"


def test_a_one_iteration_fit_speaks_in_the_singular_and_draws_whole_ticks(tmp_path: Path, dataset: Path) -> None:
    write_config(tmp_path, dataset, fit={"max_iter": 1, "partition_rows": N_SAMPLES})
    proc = run_dem("fit", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"fitting {N_SAMPLES:,} rows × {N_FEATURES} features in 1 partition (n_init=1, max_iter=1)" \
        in proc.stdout
    assert "did not converge after 1 iteration in " in proc.stdout
    assert f"pictures: {tmp_path / 'run' / 'convergence.png'}, {tmp_path / 'run' / 'components.png'}" \
        in proc.stdout
    assert "singular" not in proc.stderr and "Traceback" not in proc.stderr
