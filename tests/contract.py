"""The contract every registered model family keeps, checked once for all of them.

A family's test module subclasses :class:`FamilyContract` and fills in a few
hooks (a small deterministic dataset, how to build the estimator, how to cut
the data, bad inputs); pytest then runs every check below on it:

* statistics of any split of the data add up to those of the whole;
* the objective never decreases over a fit (beyond round-off);
* a fit is bitwise equal on local threads, a 1-worker and a 2-worker process cluster;
* a fit killed with SIGKILL and resumed from its run directory ends bitwise equal
  to an uninterrupted one;
* save → load gives back the same parameters and the same predictions;
* bad input gives one clear line (a ``DemError``), with the expected words.

Independent references (scikit-learn, hmmlearn, direct computations, ground
truth) are each family's own tests; this suite checks the invariants.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from typing import Any, Callable

import numpy as np
import pytest

import dem
from dem import registry
from dem.data.record import Partition
from dem.engine.monitor import ObjectiveDecreasedWarning
from dem.errors import DemError

_CHILD = textwrap.dedent(
    """
    import importlib.util, os, sys, warnings
    import numpy as np
    path, name, run_dir, out = sys.argv[1:5]
    sys.path[:0] = [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
    spec = importlib.util.spec_from_file_location("contract_child", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    warnings.simplefilter("ignore")
    case = getattr(module, name)()
    est = case.fit(checkpoint_dir=run_dir, tol=0.0)
    np.savez(out, **case.fitted_arrays(est))
    """
)


class FamilyContract:
    """Base of every family's contract tests (pytest collects ``Test*`` subclasses)."""

    #: the ``model.kind`` this case covers
    kind: str = ""

    # -- hooks ------------------------------------------------------------------------

    def estimator(self, **kw: Any) -> Any:
        """A small, seeded estimator of the family, with ``kw`` overriding settings."""
        raise NotImplementedError

    def data(self) -> dict[str, Any]:
        """The dataset: ``{"X": …}`` plus ``lengths``/``y``/``sample_weight`` as the family takes."""
        raise NotImplementedError

    def fit_arguments(self) -> tuple[tuple, dict]:
        """Positional and keyword arguments of ``fit`` for :meth:`data`."""
        d = self.data()
        return (d["X"],), {k: v for k, v in d.items() if k != "X"}

    def family_and_params(self) -> tuple[Any, Any]:
        """A family and parameters for the E-step checks."""
        raise NotImplementedError

    def partitions(self, cuts: list[int]) -> list[Partition]:
        """The data cut before each row index in ``cuts`` (families of sequences cut between them)."""
        d = self.data()
        X, w, y = d["X"], d.get("sample_weight"), d.get("y")
        bounds = [0, *cuts, len(X)]
        return [Partition(X[a:b], None if w is None else np.asarray(w[a:b], float), None,
                          None if y is None else y[a:b], a) for a, b in zip(bounds, bounds[1:])]

    def cut_points(self, rng: np.random.Generator) -> list[int]:
        n = len(self.data()["X"])
        return sorted(rng.choice(np.arange(1, n), size=int(rng.integers(1, 8)), replace=False).tolist())

    def fitted_arrays(self, est: Any) -> dict[str, np.ndarray]:
        """The fitted parameters to compare bit for bit."""
        return {name: np.asarray(value) for name, (_, value) in est._fitted_arrays().items()}

    def predictions(self, est: Any) -> dict[str, np.ndarray]:
        """Outputs of the fitted estimator on the data (compared after a save/load round trip)."""
        args, kw = self.fit_arguments()
        return {"score": np.asarray(est.score(*args, **{k: v for k, v in kw.items() if k != "sample_weight"}))}

    def bad_inputs(self) -> list[tuple[Callable[[], Any], type, str]]:
        """``(call, exception type, regex)`` triples: each call must raise one line matching."""
        return []

    # -- helpers ----------------------------------------------------------------------

    def fit(self, **kw: Any) -> Any:
        args, fit_kw = self.fit_arguments()
        est = self.estimator(**kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return est.fit(*args, **fit_kw)

    # -- the checks -------------------------------------------------------------------

    def test_registered(self) -> None:
        assert type(self.estimator()) is registry.estimator_class(self.kind)

    @pytest.mark.parametrize("seed", range(6))
    def test_statistics_of_any_split_add_up_to_the_whole(self, seed: int) -> None:
        family, params = self.family_and_params()
        whole = family.e_step(params, self.partitions([])[0])
        parts = self.partitions(self.cut_points(np.random.default_rng(seed)))
        total = family.e_step(params, parts[0])
        for part in parts[1:]:
            total = total + family.e_step(params, part)
        for name, value in whole.arrays().items():
            got = total.arrays()[name]
            atol = 1e-10 * max(1.0, float(np.abs(value).max(initial=0.0)))
            np.testing.assert_allclose(got, value, rtol=1e-10, atol=atol, err_msg=name)
        # The monoid's zero is neutral, and scaling is field by field.
        zero = whole.zero()
        for name, value in (zero + whole).arrays().items():
            assert np.array_equal(value, whole.arrays()[name]), name
        np.testing.assert_allclose((2.0 * whole).arrays()["log_likelihood"], 2.0 * whole.log_likelihood)

    def test_objective_never_decreases(self) -> None:
        args, kw = self.fit_arguments()
        est = self.estimator(tol=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", ObjectiveDecreasedWarning)
            est.fit(*args, **kw)
        objective = np.array([h["objective"] for h in est.history_ if h.get("event") != "extrapolated"])
        assert len(objective) >= 2
        assert np.all(np.diff(objective) >= -1e-9 * np.maximum(1.0, np.abs(objective[1:])))

    @pytest.mark.slow
    def test_bitwise_equal_on_threads_and_on_one_and_two_workers(self, local_cluster_client,
                                                                 one_worker_client) -> None:
        local = self.fitted_arrays(self.fit(tol=0.0))
        for client in (one_worker_client, local_cluster_client):
            remote = self.fitted_arrays(self.fit(tol=0.0, client=client))
            for name, value in local.items():
                assert np.array_equal(remote[name], value), name

    @pytest.mark.slow
    def test_sigkill_then_resume_is_bitwise_equal(self, tmp_path) -> None:
        path = sys.modules[type(self).__module__].__file__
        script = tmp_path / "child.py"
        script.write_text(_CHILD)

        def run(run_dir: str, out: str, fault: str | None = None) -> int:
            env = dict(os.environ)
            env.pop("DEM_FAULT_INJECT", None)
            if fault:
                env["DEM_FAULT_INJECT"] = fault
            proc = subprocess.run([sys.executable, str(script), path, type(self).__name__, run_dir, out],
                                  env=env, timeout=300, capture_output=True, text=True)
            if proc.returncode not in (0, -signal.SIGKILL):
                raise AssertionError(f"fit failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            return proc.returncode

        run(str(tmp_path / "ref"), str(tmp_path / "ref.npz"))
        killed = str(tmp_path / "killed")
        assert run(killed, str(tmp_path / "out.npz"), fault="m-step:3") == -signal.SIGKILL
        assert run(killed, str(tmp_path / "out.npz")) == 0
        ref, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "out.npz")
        assert set(ref.files) == set(got.files)
        for name in ref.files:
            assert np.array_equal(got[name], ref[name]), name

    def test_save_and_load_round_trip(self, tmp_path) -> None:
        est = self.fit()
        est.save(str(tmp_path / "model.zarr"))
        back = dem.load(str(tmp_path / "model.zarr"))
        assert type(back) is type(est)
        for name, value in est.get_params().items():
            if name != "client":
                np.testing.assert_equal(back.get_params()[name], value, err_msg=name)
        for name, value in self.fitted_arrays(est).items():
            assert np.array_equal(self.fitted_arrays(back)[name], value), name
        for name, value in self.predictions(est).items():
            np.testing.assert_array_equal(self.predictions(back)[name], value, err_msg=name)

    def test_bad_input_gives_one_clear_line(self) -> None:
        for call, exc, match in self.bad_inputs():
            with pytest.raises(exc, match=match) as info:
                call()
            assert isinstance(info.value, DemError), type(info.value)
            assert "\n" not in str(info.value)


def contract_cases() -> list[type]:
    """Every FamilyContract subclass in the test modules under tests/families."""
    import pathlib

    found = []
    for path in sorted((pathlib.Path(__file__).parent / "families").glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(f"_contract_scan_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found += [v for v in vars(module).values()
                  if isinstance(v, type) and issubclass(v, FamilyContract) and v is not FamilyContract]
    return found
