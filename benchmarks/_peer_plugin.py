"""pytest plugin of ``benchmarks.peer_suites``: swap a peer's estimators for dem's, classify, record.

Loaded with ``-p benchmarks._peer_plugin`` in the child pytest that runs a
peer's own test module. Environment:

* ``PEER_SWAP`` — ``name=module:attr`` pairs (comma-separated): every
  collected test module's global ``name`` becomes ``module.attr`` (for
  scikit-learn, ``GaussianMixture=dem:GaussianMixture``). Empty: the peer's
  own classes (the baseline run).
* ``PEER_ESTIMATORS`` — words whose presence in a test's source means the
  test exercises an estimator (``GaussianMixture``, ``hmm.``, ``GMMHMM``).
* ``PEER_RESULTS`` — a file that receives one JSON line per test.

A test is left out (skipped, with the reason recorded) when it does not
touch an estimator at all (it tests the peer's private helper functions), or
when it calls a private method or reads a private attribute of an object
(``h._init(...)``, ``h._check()``): dem mirrors public behaviour only.
``_covars_``, which dem's GaussianHMM documents as the stored form of the
covariances, counts as public.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re

import pytest

#: ``obj._name`` — a private attribute or method of an object (not ``self.x``, not dunder).
_PRIVATE = re.compile(r"(?<!self)\.(_[a-z][A-Za-z0-9_]*)")
_ALLOWED_PRIVATE = {"_covars_"}


def _swaps() -> dict[str, object]:
    out = {}
    for pair in filter(None, os.environ.get("PEER_SWAP", "").split(",")):
        name, target = pair.split("=")
        module, attr = target.split(":")
        out[name] = getattr(importlib.import_module(module), attr)
    return out


def _source(item: pytest.Item) -> str:
    try:
        return inspect.getsource(item.function)
    except (OSError, TypeError):
        return ""


def classify(item: pytest.Item) -> str | None:
    """Why a test is left out, or None to run it."""
    src = _source(item)
    words = [w for w in os.environ.get("PEER_ESTIMATORS", "").split(",") if w]
    body = src.split(":", 1)[-1]
    if words and not any(w in body for w in words) and "self.new_hmm" not in body \
            and "self.test_" not in body:
        return "no estimator: tests the peer's own helper functions"
    private = sorted({m for m in _PRIVATE.findall(src) if m not in _ALLOWED_PRIVATE})
    if private:
        return "private API: " + ", ".join(private)
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    swaps = _swaps()
    for item in items:
        module = getattr(item, "module", None)
        if module is not None:
            for name, value in swaps.items():
                if hasattr(module, name):
                    setattr(module, name, value)
        reason = classify(item)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason="peer_suites: " + reason))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    path = os.environ.get("PEER_RESULTS")
    if not path:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple):
            reason = str(report.longrepr[2])
        elif report.failed:
            crash = getattr(report.longrepr, "reprcrash", None)
            reason = crash.message.splitlines()[0] if crash is not None else str(report.longrepr)[-300:]
        with open(path, "a") as f:
            f.write(json.dumps({"nodeid": report.nodeid, "outcome": outcome, "reason": reason[:300]}) + "\n")
