"""Progress display (plain lines and the live terminal panel), its time-left estimate, and `dem info`.

The time-left numbers are checked against the closed form of a geometric
series of Δ; the displays against the fit's own history; the live panel by
running the real `dem fit` under a pseudo-terminal.
"""

from __future__ import annotations

import fcntl
import io
import json
import math
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings

import pytest
import yaml
from rich.console import Console

import dem
from dem.progress import FitProgress, ProgressDisplay, format_seconds, iterations_to_tol

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _records(n, *, d0=0.1, rate=0.5, seconds=2.0, restart=0, ll0=-5.0):
    """Iteration events whose Δ shrink geometrically: Δ_t = d0·rate^(t-2)."""
    out, ll = [], ll0
    for t in range(1, n + 1):
        delta = None if t == 1 else d0 * rate ** (t - 2)
        ll = ll if delta is None else ll + delta
        out.append({"restart": restart, "iteration": t, "objective": ll, "delta": delta,
                    "seconds": seconds, "n_rows": 100, "resumed": False, "notes": []})
    return out


def test_iterations_to_tol_follows_the_geometric_trend():
    deltas = [0.1 * 0.5 ** k for k in range(5)]  # last Δ = 0.00625
    # 0.00625 · 0.5^n < 1e-4  ⇔  n > log(1e-4 / 0.00625) / log(0.5) = 5.97
    assert iterations_to_tol(deltas, 1e-4) == 6
    assert iterations_to_tol(deltas, 1.0) == 0  # already below tol
    assert iterations_to_tol([0.1, 0.2, 0.3], 1e-4) is None  # growing: no trend to extrapolate
    assert iterations_to_tol(deltas, 0.0) is None  # tol 0 never converges early
    assert iterations_to_tol([0.1], 1e-4) is None


def test_time_left_one_restart():
    p = FitProgress(tol=1e-4)
    p("start", {"n_init": 1, "max_iter": 40})
    for rec in _records(6):
        p("iteration", rec)
    likely, upper = p.eta()
    assert upper == pytest.approx((40 - 6) * 2.0)
    n = math.ceil(math.log(1e-4 / (0.1 * 0.5 ** 4)) / math.log(0.5))
    assert likely == pytest.approx(n * 2.0)
    assert p.eta_text() == f"~{format_seconds(n * 2.0)} (≤ {format_seconds(34 * 2.0)})"


def test_time_left_restarts_in_sequence_and_sharing_passes():
    # Restarts one after another: the left-over restart adds a whole typical restart.
    seq = FitProgress(tol=1e-4)
    seq("start", {"n_init": 2, "max_iter": 40})
    first = _records(12)  # converged: last Δ = 0.1·0.5^10 < 1e-4
    for rec in first + _records(3, restart=1):
        seq("iteration", rec)
    assert not seq.concurrent and seq.done(0)
    likely, upper = seq.eta()
    assert upper == pytest.approx((40 - 3) * 2.0)
    n1 = iterations_to_tol([r["delta"] for r in _records(3)], 1e-4)
    assert likely == pytest.approx(n1 * 2.0)
    # Restarts sharing every pass: the slowest one decides.
    con = FitProgress(tol=1e-4)
    con("start", {"n_init": 2, "max_iter": 40})
    for a, b in zip(_records(5, rate=0.5), _records(5, rate=0.8, restart=1)):
        con("iteration", a)
        con("iteration", b)
    assert con.concurrent
    likely, upper = con.eta()
    slow = iterations_to_tol([r["delta"] for r in _records(5, rate=0.8)], 1e-4)
    assert likely == pytest.approx(slow * 2.0) and upper == pytest.approx(35 * 2.0)


def test_plain_lines_from_a_real_fit(blobs):
    X, _ = blobs
    buf = io.StringIO()
    display = ProgressDisplay(Console(file=buf, width=200, highlight=False, markup=False), tol=0.0)
    assert not display.live_mode
    est = dem.GaussianMixture(3, random_state=0, max_iter=8, tol=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, callback=display)
    out = buf.getvalue()
    lines = [line for line in out.splitlines() if line.startswith("iteration")]
    assert len(lines) == len(est.history_) == 8
    for line, h in zip(lines, est.history_):
        assert f"iteration {h['iteration']:>4}" in line
        assert f"mean log-likelihood {h['objective']:.6f}" in line
        assert "s/iter" in line and "Δ" in line
    assert "ETA" in lines[3]
    assert "\x1b[" not in out and f"{len(X):,} rows × 3 features" in out


def test_live_panel_on_a_terminal_console():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    display = ProgressDisplay(console, tol=1e-4)
    assert display.live_mode
    link = "http://127.0.0.1:8787/status"
    display("start", {"n_samples": 1000, "n_features": 2, "n_partitions": 4, "n_init": 2, "max_iter": 40,
                      "resumed_from": None, "dashboard_link": link})
    recs = list(zip(_records(5), _records(5, rate=0.8, restart=1, ll0=-6.0)))
    for a, b in recs[:4]:
        display("iteration", a)
        display("iteration", b)
    mid = ANSI.sub("", buf.getvalue())
    frame = mid[mid.rindex("dem fit"):]
    for field in ("2 restarts (2 running)", "iteration 4/40", "s/iter", "ETA ~", "mean log-likelihood", "Δ",
                  "best: restart 1/2", "running", "best so far",
                  f"{recs[3][0]['objective']:.6f}", f"{recs[3][1]['objective']:.6f}"):
        assert field in frame, (field, frame)
    display("iteration", recs[4][0])
    display("iteration", recs[4][1])
    display("end", {})
    text = ANSI.sub("", buf.getvalue())
    assert text.count(link) == 1  # the dashboard address, once
    last = text[text.rindex("dem fit"):]
    assert "done" in last and "iteration 5/40" in last


def _read_pty(master: int, proc: subprocess.Popen, timeout: float) -> bytes:
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    return b"".join(chunks)


@pytest.mark.slow
def test_dem_fit_on_a_terminal_shows_the_live_panel_and_writes_pictures(tmp_path):
    from dem.data.generate import generate_dataset

    data = tmp_path / "d.zarr"
    generate_dataset(data, 12_000, 3, 3, chunk_rows=2_000, seed=2)
    cfg = {"data": {"path": str(data)},
           "model": {"n_components": 3},
           "fit": {"max_iter": 30, "tol": 1e-6, "n_init": 2, "init_params": "kmeans", "random_state": 0,
                   "partition_rows": 4_000},
           "cluster": {"n_workers": 1, "threads_per_worker": 1, "memory_limit": "1GiB", "dashboard": False},
           "output": {"run_dir": "run"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 110, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "TERM")}
    env.update(TERM="xterm-256color", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "dem.cli", "fit", "config.yaml"], cwd=tmp_path, env=env,
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    try:
        raw = _read_pty(master, proc, timeout=180)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    text = ANSI.sub("", raw.decode("utf-8", "replace"))
    assert proc.returncode == 0, text[-3000:]
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    assert "\x1b[" in raw.decode("utf-8", "replace")  # rich drew on the terminal
    panel = text[text.rindex("dem fit"):]
    for field in ("2 restarts", f"iteration {len(history)}", "s/iter", "elapsed", "done",
                  "mean log-likelihood", "Δ", f"{history[-1]['objective']:.6f}", "converged, best"):
        assert field in panel, (field, panel)
    assert not [line for line in text.splitlines() if line.startswith("restart 1/2  iteration")]  # no plain lines
    for name in ("convergence.png", "components.png"):
        assert (run / name).stat().st_size > 10_000
        assert f"{run / name}" in text.replace("\r", "").replace("\n", "")
    # The pictures show this run: the best restart's curve is history.json.
    from matplotlib.image import imread

    img = imread(run / "convergence.png")
    assert img.shape[0] >= 400 and img.shape[1] >= 600


def test_info_summarises_a_resumed_run_with_restarts(blobs, tmp_path, capsys, monkeypatch):
    from dem.cli import main
    from dem.plots import write_run_pictures

    X, _ = blobs
    run = tmp_path / "run"
    kw = dict(n_components=3, random_state=3, n_init=2, tol=0.0, checkpoint_dir=str(run))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dem.GaussianMixture(max_iter=3, **kw).fit(X)
        est = dem.GaussianMixture(max_iter=6, **kw).fit(X)
    write_run_pictures(est, str(run), X)
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "run"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "iterations: 6 (resumed at iteration 4; sessions: 1–3 | 4–6)" in out
    assert f"final mean log-likelihood (lower bound) {est.lower_bound_:.6f}" in out
    restarts = next(line for line in out.splitlines() if line.startswith("restarts: 2"))
    for r in est.restarts_:
        assert f"{r['lower_bound']:.6f}" in restarts
    assert "(best)" in restarts
    assert f"pictures: {run / 'convergence.png'}, {run / 'components.png'}" in out


# -- issue 17 item 17: what tol tests, and counts in words -----------------------------------

def _plain(**kw):
    buf = io.StringIO()
    return buf, ProgressDisplay(Console(file=buf, width=300, highlight=False, markup=False), live=False, **kw)


def test_start_line_counts_one_partition_in_the_singular_and_states_the_mixture_rule():
    buf, display = _plain(tol=1e-3)
    display("start", {"n_samples": 500, "n_features": 2, "n_partitions": 1, "max_iter": 10, "n_init": 1})
    assert buf.getvalue().splitlines() == [
        "fitting 500 rows × 2 features in 1 partition (n_init=1, max_iter=10)",
        "converged when |Δ mean log-likelihood| < tol = 0.001"]


def test_an_hmm_display_says_tol_is_on_the_total_and_judges_the_per_step_delta():
    buf, display = _plain(tol=0.01, tol_on_total=True)
    display("start", {"n_samples": 20_000, "n_features": 2, "n_partitions": 4, "max_iter": 50, "n_init": 1})
    assert buf.getvalue().splitlines()[1] == (
        "converged when the total log-likelihood gains less than tol = 0.01 (hmmlearn's rule), "
        "i.e. Δ per time step < 5e-07 over 20,000 steps")
    # Δ per step of 4e-7 is a total gain of 0.008 < 0.01: converged by hmmlearn's rule, as shown.
    display("iteration", {"iteration": 1, "mean_log_likelihood": -2.0, "delta": None, "seconds": 0.1})
    display("iteration", {"iteration": 2, "mean_log_likelihood": -2.0 + 4e-7, "delta": 4e-7, "seconds": 0.1})
    assert display.progress.converged(0)
    assert display.tol_text == "tol 0.01 on the total = 5e-07 per step"
    buf, mixture = _plain(tol=0.01)
    mixture("start", {"n_samples": 20_000, "n_partitions": 4, "max_iter": 50})
    mixture("iteration", {"iteration": 2, "mean_log_likelihood": -2.0, "delta": 0.02, "seconds": 0.1})
    assert not mixture.progress.converged(0)
