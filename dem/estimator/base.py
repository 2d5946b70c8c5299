"""The one fit template every estimator shares.

``fit`` opens the data, resolves where it runs, builds the members (restarts
× candidate K), the family and the strategy, runs the engine with
checkpoints, picks the winner and sets the trailing-underscore attributes.
A family's estimator only declares its parameters and fills a few hooks:

* ``_members(data)`` — the families to fit and their labels;
* ``_initialize(members, passes, data)`` — starting parameters, as passes;
* ``_set_fitted(family, params, data)`` / ``_fitted_params()`` /
  ``_fitted_family()`` — parameters to and from fitted attributes;
* ``_open_data(...)`` — how its input becomes partitions (rows, sequences).

Everything else (validation, the seed policy, fingerprints, run
directories, convergence warnings, saving) is here, once. This module
imports the engine, and so Dask, only when a fit starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import ConvergenceWarning

from dem.estimator import params as P
from dem.estimator.incremental import IncrementalMixin
from dem.errors import CollapsedComponentWarning, ConfigError, EmptyComponentWarning

if TYPE_CHECKING:  # pragma: no cover
    from dem.data.partitions import PartitionedData
    from dem.engine.fitting import FitOutcome, RunDirectory
    from dem.engine.passes import DataPasses

MODEL_DIRNAME = "model.zarr"

#: scikit-learn's words when the best initialisation did not converge.
NOT_CONVERGED = ("Best performing initialization did not converge. Try different init parameters, "
                 "or increase max_iter, tol, or check for degenerate data.")


@dataclasses.dataclass(frozen=True)
class ConfigKey:
    """A ``model.*`` key of config.yaml, declared by the estimator that takes it.

    The config schema's ``model`` section is the union of every registered
    estimator's keys (:mod:`dem.config`); a key's value is checked with the
    estimator's own ``_parameter_constraints`` for ``param``.

    Attributes
    ----------
    param : the estimator parameter the key sets
    default : the value when config.yaml does not set the key
    doc : one line for the config reference
    """

    param: str
    default: Any
    doc: str


#: config.yaml keys outside ``model`` that set a parameter of every estimator (``max_iter``
#: becomes the estimator's ``_max_iter_param``, e.g. hmmlearn's ``n_iter``).
SHARED_CONFIG_PARAMS: dict[str, str] = {
    "fit.max_iter": "max_iter", "fit.tol": "tol", "fit.n_init": "n_init", "fit.random_state": "random_state",
    "fit.partition_rows": "partition_rows", "fit.fan_in": "fan_in", "fit.cache": "cache",
    "fit.accelerate": "accelerate", "fit.learning_method": "learning_method",
    "fit.learning_decay": "learning_decay", "fit.learning_offset": "learning_offset",
    "fit.batch_size": "batch_size", "output.run_dir": "checkpoint_dir",
    "output.checkpoint_every": "checkpoint_every", "output.keep_checkpoints": "keep_checkpoints",
    "data.storage_options": "storage_options",
}


def store_params(estimator: Any, values: dict[str, Any]) -> None:
    """Set every ``__init__`` parameter as an attribute (scikit-learn's convention, without the list)."""
    for name in estimator._get_param_names():
        setattr(estimator, name, values[name])


def digest(value: Any) -> str | None:
    """Short sha256 of an array-like setting (user-supplied parameters) for fingerprints."""
    if value is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(np.asarray(value, dtype=np.float64)).tobytes()).hexdigest()[:16]


def _identity_value(value: Any) -> Any:
    if isinstance(value, (str, bool, int, float, type(None))):
        return value
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in value):
        return [int(v) for v in value]
    return digest(value)


class EMEstimator(IncrementalMixin, BaseEstimator):
    """Base of every dem estimator: the shared parameters and the fit template."""

    #: The registry key (``model.kind`` in config.yaml, ``model_kind`` of saved models).
    _kind: ClassVar[str] = ""
    #: Name of the iteration budget (``n_iter`` in hmmlearn's API).
    _max_iter_param: ClassVar[str] = "max_iter"
    #: hmmlearn (and scikit-learn's variational mixture) compare ``tol`` with the
    #: change of a total over the data, not of a mean.
    _tol_is_total: ClassVar[bool] = False
    #: What ``tol`` is compared with, in words, when it is not the mean (``dem info`` says it).
    _tol_rule: ClassVar[str] = ""
    _parameter_constraints: ClassVar[dict] = dict(P.SHARED_CONSTRAINTS)
    #: ``model.*`` keys of config.yaml this estimator takes (see :class:`ConfigKey`).
    _config_keys: ClassVar[dict[str, ConfigKey]] = {}
    #: config.yaml keys that become ``fit`` arguments (``data.weights`` → ``sample_weight``).
    _config_fit_arguments: ClassVar[dict[str, str]] = {}
    #: Shared config keys this estimator does not take (a value other than the default is refused).
    _config_excluded: ClassVar[frozenset[str]] = frozenset()
    #: Whether ``data.generate`` (synthetic Gaussian-mixture data) makes sense for this kind.
    _config_generates_data: ClassVar[bool] = False
    #: Notes of the reported fit that ``fit`` also raises as warnings, by kind.
    _warned_notes: ClassVar[dict[str, type]] = {"empty": EmptyComponentWarning,
                                                 "collapsed": CollapsedComponentWarning}
    #: scikit-learn warns when the best initialisation did not converge; hmmlearn does not.
    _warn_not_converged: ClassVar[bool] = True

    # -- hooks a family's estimator provides ---------------------------------------------

    def _members(self, data: "PartitionedData") -> list[tuple[Any, dict[str, Any]]]:
        """Families to fit with their labels; every label has ``restart``."""
        raise NotImplementedError

    def _initialize(self, members: list[tuple[Any, int]], passes: "DataPasses", data: "PartitionedData") -> list[Any]:
        """Starting parameters of each ``(family, seed)``, sharing passes."""
        raise NotImplementedError

    def _set_fitted(self, family: Any, params: Any, data: "PartitionedData") -> None:
        raise NotImplementedError

    def _fitted_params(self) -> Any:
        raise NotImplementedError

    def _fitted_family(self) -> Any:
        raise NotImplementedError

    def _open_data(self, X: Any, *, y: Any, sample_weight: Any, lengths: Any, variable: str | None,
                   partition_rows: int | None, memory_per_thread: int | None) -> "PartitionedData":
        raise NotImplementedError

    def _check_parameters(self) -> None:
        """Cross-parameter checks beyond the declared constraints."""

    def _check_data(self, data: "PartitionedData") -> None:
        """Checks of the data against the parameters (enough rows, …)."""

    def _fingerprint_extra(self) -> dict[str, Any]:
        """Settings outside ``get_params`` that change the fit (parameters set before fit)."""
        return {}

    def _select(self, outcome: "FitOutcome", members: list, passes: "DataPasses") -> int:
        """The member the fit reports: the best lower bound (scikit-learn's rule)."""
        return outcome.best_index()

    def _warm_start_params(self) -> Any | None:
        """Parameters to continue from (``warm_start``), or None."""
        if self.get_params(deep=False).get("warm_start") and self._is_fitted():
            return self._fitted_params()
        return None

    def _is_fitted(self) -> bool:
        return hasattr(self, "n_iter_") and hasattr(self, "history_")

    def _verbose_callback(self, data: "PartitionedData") -> Any:
        return None

    # -- the template ---------------------------------------------------------------------

    def _tol(self, data: "PartitionedData") -> float:
        tol = float(self.tol)
        return tol / max(1, data.n_samples) if self._tol_is_total else tol

    def _strategy(self, data: "PartitionedData") -> Any:
        from dem.engine.monitor import MONOTONE_RTOL, MONOTONE_RTOL_FLOAT32
        from dem.engine.strategies.annealing import AnnealingStrategy
        from dem.engine.strategies.em import EMStrategy

        p = self.get_params(deep=False)
        max_iter, tol = int(p[self._max_iter_param]), self._tol(data)
        rtol = MONOTONE_RTOL_FLOAT32 if str(data.dtype) == "float32" else MONOTONE_RTOL
        method = p.get("learning_method", "batch")
        accelerate = p.get("accelerate")
        annealing = p.get("beta_init") is not None
        if sum([method != "batch", accelerate is not None, annealing]) > 1:
            raise ConfigError("choose one of learning_method (online/sem), accelerate and annealing (beta_init); "
                              "they cannot be combined")
        if method != "batch" or accelerate is not None:
            from dem.engine.strategies import by_name
            name = accelerate if accelerate is not None else method
            return by_name(name).from_estimator(p, max_iter=max_iter, tol=tol, rtol=rtol, data=data)
        if annealing:
            return AnnealingStrategy(max_iter, tol, rtol, beta_init=float(p["beta_init"]),
                                     beta_rate=float(p["beta_rate"]))
        return EMStrategy(max_iter, tol, rtol)

    def _use_cache(self, data: "PartitionedData", executor: Any) -> bool:
        if self.cache != "auto":
            return bool(self.cache)
        if executor.client is not None and self.get_params(deep=False).get("learning_method") == "online" \
                and data.stored():
            # Online EM reads the data once or twice, a mini-batch at a time; streamed
            # from storage its steps run a quarter pass per task, while steps over data
            # cached across workers need a scheduler round trip each.
            return False
        share = 0.5 if executor.client is not None else 0.25
        return data.nbytes <= share * executor.total_memory()

    def _fingerprint(self, data: "PartitionedData") -> dict[str, Any]:
        """What identifies a fit: the data, and every setting that changes the result."""
        settings = {k: _identity_value(v) for k, v in sorted(self.get_params(deep=False).items())
                    if k not in P.IDENTITY_EXCLUDED}
        settings.update(self._fingerprint_extra())
        settings["model"] = self._kind
        settings["partitions"] = [data.n_partitions, data.bounds[0][1] - data.bounds[0][0]]
        return {"data": data.fingerprint(), "settings": settings}

    def _fit(self, X: Any, *, y: Any = None, sample_weight: Any = None, lengths: Any = None,
             variable: str | None = None, callback: Any = None) -> "EMEstimator":
        from dem.engine.executor import Executor
        from dem.engine.fitting import RunDirectory, chain_callbacks, fit_members
        from dem.engine.passes import DataPasses

        P.validate(self)
        self._check_parameters()
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        saved_rows = None
        if self.checkpoint_dir is not None and self.partition_rows is None:
            # A resumed run keeps the partitioning it started with, whatever cluster it resumes on.
            saved_rows = RunDirectory.saved_partition_rows(os.fspath(self.checkpoint_dir), self.storage_options)
        data = self._open_data(X, y=y, sample_weight=sample_weight, lengths=lengths, variable=variable,
                               partition_rows=saved_rows or self.partition_rows,
                               memory_per_thread=executor.memory_per_thread())
        if (rows := self._online_partition_rows(data, saved_rows)) is not None:
            data = self._open_data(X, y=y, sample_weight=sample_weight, lengths=lengths, variable=variable,
                                   partition_rows=rows, memory_per_thread=executor.memory_per_thread())
        self._check_data(data)
        warm = self._warm_start_params()
        if warm is not None and self.checkpoint_dir is not None:
            raise ConfigError("warm_start cannot be combined with checkpoint_dir: a run directory resumes by itself")
        seed = P.seed_from(self.random_state)
        run_dir = None
        if self.checkpoint_dir is not None:
            run_dir = RunDirectory(os.fspath(self.checkpoint_dir), self._fingerprint(data), seed,
                                   keep=self.keep_checkpoints, storage_options=self.storage_options,
                                   seed_is_fixed=self.random_state is not None)
            seed = run_dir.seed
        passes = DataPasses(executor, executor.place(data, self._use_cache(data, executor)))
        members = self._members(data)
        if warm is not None:
            members = [(self._fitted_family(), {**members[0][1], "restart": 0})]
        labels = [label for _, label in members]
        seeds = [seed + int(label["restart"]) for label in labels]  # restart r of seed s is the fit with s + r
        strategy = self._strategy(data)
        start_objective = float(self.lower_bound_) if warm is not None else -math.inf

        def start() -> list:
            if warm is not None:
                initial = [warm]
            else:
                initial = self._initialize([(f, s) for (f, _), s in zip(members, seeds)], passes, data)
            return [strategy.start(f, p, s, start_objective) for (f, _), p, s in zip(members, initial, seeds)]

        def restore(states: list[dict], arrays: dict[str, np.ndarray]) -> list:
            if len(states) != len(members):
                from dem.errors import CheckpointError
                raise CheckpointError(f"the checkpoint holds {len(states)} members, this fit has {len(members)}")
            out = []
            for i, ((family, _), js) in enumerate(zip(members, states)):
                prefix = f"member.{i}."
                out.append(strategy.restore(family, js, {k[len(prefix):]: v for k, v in arrays.items()
                                                         if k.startswith(prefix)}))
            return out

        outcome = fit_members(passes, start=start, restore=restore, labels=labels, run_dir=run_dir,
                              checkpoint_every=self.checkpoint_every,
                              callback=chain_callbacks(callback, self._verbose_callback(data)))
        chosen = self._select(outcome, members, passes)
        run = outcome.runs[chosen]
        if self._warn_not_converged and not run.converged \
                and int(self.get_params(deep=False)[self._max_iter_param]) > 0:
            warnings.warn(NOT_CONVERGED, ConvergenceWarning, stacklevel=3)
        self._set_fitted(run.family, run.result(), data)
        self._set_run_attributes(outcome, labels, chosen, data)
        for rec in run.monitor.history:
            for note in rec.notes:
                if note["kind"] in self._warned_notes:
                    warnings.warn(f"iteration {rec.iteration}: {note['message']}", self._warned_notes[note["kind"]],
                                  stacklevel=3)
        if run_dir is not None:
            self._write_run_outputs(run_dir)
        return self

    def _set_run_attributes(self, outcome: "FitOutcome", labels: list[dict], chosen: int,
                            data: "PartitionedData") -> None:
        run = outcome.runs[chosen]
        self.converged_ = bool(run.converged)
        self.n_iter_ = int(run.iterations)
        self.lower_bound_ = float(run.lower_bound)
        self.lower_bounds_ = [r.objective for r in run.monitor.history if r.iterate]
        self.history_ = [r.to_json() for r in run.monitor.history]
        self.n_passes_ = float(run.n_passes)
        self.n_init_passes_ = float(outcome.init_passes)
        self.restarts_ = [{**labels[i], "lower_bound": r.lower_bound, "n_iter": r.iterations,
                           "converged": r.converged, "n_passes": r.n_passes,
                           "history": [h.to_json() for h in r.monitor.history]}
                          for i, r in enumerate(outcome.runs)]
        self.best_restart_ = int(labels[chosen]["restart"])
        self.n_features_in_ = int(data.n_features)
        self.feature_names_ = data.feature_names

    def _run_outputs(self) -> dict[str, Any]:
        """JSON files written beside the model in a run directory."""
        return {"history.json": self.history_, "restarts.json": self.restarts_}

    def _write_run_outputs(self, run_dir: "RunDirectory") -> None:
        for name, value in self._run_outputs().items():
            run_dir.store.write_json(value, name)
        self.save(run_dir.store.url.rstrip("/") + "/" + MODEL_DIRNAME, storage_options=self.storage_options)

    @classmethod
    def _generate_demo(cls, path: str, options: dict[str, Any], client: Any = None) -> str:
        """Write a synthetic dataset of this kind to ``path`` (``dem generate --kind``); one summary line.

        ``options`` holds the command's flags (n_samples, n_features, n_components, chunk_rows, dtype,
        seed, overwrite, …; None when not given); a family refuses missing ones with a ConfigError.
        """
        from dem.errors import ConfigError
        raise ConfigError(f"dem generate does not know how to make {cls._kind} data")

    def summary_lines(self) -> list[str]:
        """A few lines describing the fitted model, for ``dem info``."""
        return []

    # -- persistence ------------------------------------------------------------------------

    #: Arrays every saved model of this kind holds (checked on load).
    _saved_arrays: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _saved_shapes(cls, ds: Any) -> dict[str, tuple[int, ...]] | None:
        """The shapes a saved model's sizes imply, per array (checked on load), or None."""
        return None

    def save(self, path: str, *, storage_options: dict | None = None) -> None:
        """Write the fitted model as a Zarr group that ``xarray.open_zarr`` opens (no pickle).

        ``dem.load(path)`` reads it back; a damaged model is refused on load.
        """
        from dem.estimator.persistence import save_model

        save_model(self, os.fspath(path), storage_options=storage_options)
