"""Run scikit-learn's and hmmlearn's own estimator tests against dem's classes.

``python -m benchmarks.peer_suites [--against dem|peer|both] [--seeds 0,1,2] [--out FILE]``

Not part of dem's test suite: it measures how far dem behaves like the peers
it mirrors (issue 17, "Behaving like the peers dem mirrors"). Each suite is
run in a child pytest with :mod:`benchmarks._peer_plugin`, which swaps the
peer's estimator classes for dem's and leaves out tests of the peer's
private API (see that module). ``--against peer`` runs the same selection
against the peers' own classes, the baseline that shows which tests the
peer itself passes.

* scikit-learn: ``sklearn/mixture/tests/test_gaussian_mixture.py`` from the
  installed scikit-learn (wheels ship their tests), with the module's
  ``GaussianMixture`` replaced by ``dem.GaussianMixture``. The array-API
  tests are left out (dem takes numpy, dask and xarray input).
* hmmlearn: its wheels ship no tests, so the sdist of the installed version
  is fetched with ``pip download`` (or ``--hmmlearn-sdist FILE``). Its
  test modules for GaussianHMM, GMMHMM and CategoricalHMM are copied into a
  temporary package whose ``hmm`` module holds dem's classes
  (``from hmmlearn import hmm`` becomes ``from .. import hmm``); helpers
  (``hmmlearn.utils.normalize``, ``ConvergenceMonitor``) stay hmmlearn's.
  ``test_gmm_hmm.py`` (every test xfail in hmmlearn: the removed ``gmms_``
  API) and ``test_base.py`` (subclasses of hmmlearn's BaseHMM) are not run.
  hmmlearn's conftest seeds numpy's global generator from ``HMMLEARN_SEED``;
  each of ``--seeds`` is one run.

Counts are per test item (a parametrisation) and, for scikit-learn, per test
function as well (a function passes when all its items pass). Nothing of the
peers' code is written into this repository: the copies live in a
temporary directory.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from typing import Any

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HMMLEARN_MODULES = ("test_gaussian_hmm.py", "test_gmm_hmm_new.py", "test_gmm_hmm_multisequence.py",
                    "test_categorical_hmm.py")
#: Support files the HMM test modules import.
HMMLEARN_SUPPORT = ("__init__.py", "conftest.py", "test_gmm_hmm.py")
DEM_HMM_SHIM = "from dem import CategoricalHMM, GaussianHMM, GMMHMM  # noqa: F401\n"
PEER_HMM_SHIM = "from hmmlearn.hmm import CategoricalHMM, GaussianHMM, GMMHMM  # noqa: F401\n"


#: Where ``import dem`` comes from in the child pytest (``--dem-src``; default this checkout).
DEM_SRC = [REPO_ROOT]


def _pytest(args: list[str], env: dict[str, str], cwd: str, results: str, timeout: int) -> list[dict]:
    if os.path.exists(results):
        os.remove(results)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "benchmarks._peer_plugin",
           "-o", "addopts=", "--timeout", str(timeout), "-W", "ignore::DeprecationWarning", *args]
    full_env = {**os.environ, **env, "PEER_RESULTS": results,
                "PYTHONPATH": os.pathsep.join(filter(None, [*DEM_SRC, REPO_ROOT, env.get("PYTHONPATH", "")]))}
    proc = subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True)
    if not os.path.exists(results):
        raise RuntimeError(f"pytest produced no results (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                           f"\n{proc.stderr[-3000:]}")
    with open(results) as f:
        return [json.loads(line) for line in f]


def run_sklearn(against: str, tmp: str, timeout: int) -> list[dict]:
    import sklearn

    pkg = os.path.dirname(sklearn.__file__)
    path = os.path.join(pkg, "mixture", "tests", "test_gaussian_mixture.py")
    env = {"PEER_ESTIMATORS": "GaussianMixture",
           "PEER_SWAP": "GaussianMixture=dem:GaussianMixture" if against == "dem" else ""}
    return _pytest(["--rootdir", pkg, "-k", "not array_api", path], env, tmp,
                   os.path.join(tmp, f"sklearn-{against}.jsonl"), timeout)


def hmmlearn_sdist(tmp: str, given: str | None) -> str:
    if given:
        return given
    import hmmlearn

    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    f"hmmlearn=={hmmlearn.__version__}", "-d", tmp], check=True, capture_output=True)
    found = [f for f in os.listdir(tmp) if f.startswith("hmmlearn-") and f.endswith(".tar.gz")]
    if not found:
        raise RuntimeError("pip download of the hmmlearn sdist produced no .tar.gz")
    return os.path.join(tmp, found[0])


def hmmlearn_package(sdist: str, tmp: str, against: str) -> str:
    """A temporary package ``hmmpeer`` whose ``hmm`` is dem's (or hmmlearn's) and whose tests are hmmlearn's."""
    root = os.path.join(tmp, f"hmm-{against}")
    tests = os.path.join(root, "hmmpeer", "tests")
    os.makedirs(tests, exist_ok=True)
    with open(os.path.join(root, "hmmpeer", "__init__.py"), "w") as f:
        f.write("")
    with open(os.path.join(root, "hmmpeer", "hmm.py"), "w") as f:
        f.write(DEM_HMM_SHIM if against == "dem" else PEER_HMM_SHIM)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            name = os.path.basename(member.name)
            if "/src/hmmlearn/tests/" in member.name and name in HMMLEARN_MODULES + HMMLEARN_SUPPORT:
                text = tar.extractfile(member).read().decode()
                with open(os.path.join(tests, name), "w") as f:
                    f.write(text.replace("from hmmlearn import hmm", "from .. import hmm"))
    return root


def run_hmmlearn(against: str, tmp: str, sdist: str, seed: int, timeout: int) -> list[dict]:
    root = hmmlearn_package(sdist, tmp, against)
    env = {"PEER_ESTIMATORS": "hmm.,GMMHMM(", "PEER_SWAP": "", "HMMLEARN_SEED": str(seed)}
    files = [os.path.join("hmmpeer", "tests", m) for m in HMMLEARN_MODULES]
    return _pytest(["--rootdir", root, *files], env, root,
                   os.path.join(tmp, f"hmm-{against}-{seed}.jsonl"), timeout)


def summarise(results: list[dict], by_function: bool = False) -> dict[str, Any]:
    counts = collections.Counter()
    for r in results:
        if r["outcome"] == "skipped" and "peer_suites: " in r["reason"]:
            counts["left out"] += 1
        else:
            counts[r["outcome"]] += 1
    out = {"passed": counts["passed"], "run": counts["passed"] + counts["failed"],
           "failed": counts["failed"], "xfailed": counts["xfailed"], "xpassed": counts["xpassed"],
           "skipped": counts["skipped"], "left_out": counts["left out"],
           "failures": sorted({f"{r['nodeid']}: {r['reason']}" for r in results if r["outcome"] == "failed"}),
           "results": results}
    if by_function:
        fns: dict[str, list[str]] = collections.defaultdict(list)
        for r in results:
            fns[r["nodeid"].split("[")[0]].append(r["outcome"])
        run = {k: v for k, v in fns.items() if any(o in ("passed", "failed") for o in v)}
        out["functions_run"] = len(run)
        out["functions_passed"] = sum(all(o != "failed" for o in v) for v in run.values())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.peer_suites", description=__doc__.splitlines()[0])
    p.add_argument("--against", default="dem", choices=("dem", "peer", "both"))
    p.add_argument("--suites", default="sklearn,hmmlearn")
    p.add_argument("--seeds", default="0,1,2", help="HMMLEARN_SEED values, one hmmlearn run each")
    p.add_argument("--hmmlearn-sdist", default=None, help="hmmlearn sdist (.tar.gz); default: pip download")
    p.add_argument("--timeout", type=int, default=600, help="seconds per test")
    p.add_argument("--dem-src", default=None,
                   help="a directory holding the dem package to measure (e.g. an exported older commit)")
    p.add_argument("--out", default=None, help="write the summaries as JSON here")
    p.add_argument("--failures", action="store_true", help="list every failing test")
    a = p.parse_args(argv)
    if a.dem_src:
        DEM_SRC[:] = [os.path.abspath(a.dem_src)]
    against = ["dem", "peer"] if a.against == "both" else [a.against]
    suites = a.suites.split(",")
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="dem-peer-suites-") as tmp:
        sdist = hmmlearn_sdist(tmp, a.hmmlearn_sdist) if "hmmlearn" in suites else None
        for who in against:
            if "sklearn" in suites:
                s = summarise(run_sklearn(who, tmp, a.timeout), by_function=True)
                summary[f"sklearn/{who}"] = s
                print(f"scikit-learn GaussianMixture tests vs {who}: {s['passed']} of {s['run']} items pass "
                      f"({s['functions_passed']} of {s['functions_run']} functions); "
                      f"{s['left_out']} left out, {s['xfailed']} xfailed, {s['xpassed']} xpassed", flush=True)
                if a.failures:
                    print("  " + "\n  ".join(s["failures"]), flush=True)
            if "hmmlearn" in suites:
                for seed in [int(v) for v in a.seeds.split(",")]:
                    s = summarise(run_hmmlearn(who, tmp, sdist, seed, a.timeout))
                    summary[f"hmmlearn/{who}/seed{seed}"] = s
                    print(f"hmmlearn HMM tests vs {who} (HMMLEARN_SEED={seed}): {s['passed']} of {s['run']} "
                          f"items pass; {s['left_out']} left out, {s['xfailed']} xfailed, "
                          f"{s['xpassed']} xpassed, {s['skipped']} skipped", flush=True)
                    if a.failures:
                        print("  " + "\n  ".join(s["failures"]), flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
