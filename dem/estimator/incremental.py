"""``partial_fit``: online EM one mini-batch at a time, for data that arrives as a stream.

Every estimator inherits :class:`IncrementalMixin` through the fit
template. Each ``partial_fit(X)`` call is one step of online EM
(:mod:`dem.engine.strategies.online`) on the batch ``X``: its statistics,
in mean form, are blended into the running statistics with
ρ_t = (t + learning_offset)^(−learning_decay) and the parameters become
their M-step. scikit-learn's convention holds: the first call initialises
the model from its own batch (with ``init_params``, or from the parameters
set before it) and then takes its step; a model fitted by ``fit`` (or
loaded) continues from its fitted parameters with fresh running statistics.

The running statistics are scaled to the rows seen so far before each
M-step, so priors weigh as they would in a fit of everything seen. Only
restart 0 is run (``n_init`` is ignored), a candidate list of
``n_components`` is refused, and nothing is checkpointed (pickle the
estimator to keep the running statistics). ``n_iter_`` counts calls and
``n_passes_`` counts the batches read.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

from dem.errors import ConfigError, DataError
from dem.estimator import params as P


class IncrementalMixin:
    """``partial_fit`` for every estimator built on :class:`~dem.estimator.base.EMEstimator`."""

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """One online-EM step on the batch ``X`` (the first call also initialises the model).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One batch of the stream (numpy, dask, xarray or a Zarr path).
        y : ignored
        sample_weight : array-like of shape (n_samples,), optional

        Returns
        -------
        self

        Raises
        ------
        DataError
            ``X`` has another number of features than the first batch.
        """
        return self._partial_fit(X, y=y, sample_weight=sample_weight)

    def _partial_fit(self, X: Any, *, y: Any = None, sample_weight: Any = None, lengths: Any = None) -> Any:
        from dem.engine.executor import Evaluation, Executor
        from dem.engine.fitting import FitOutcome
        from dem.engine.passes import DataPasses

        P.validate(self)
        self._check_parameters()
        data = self._open_data(X, y=y, sample_weight=sample_weight, lengths=lengths, variable=None,
                               partition_rows=None, memory_per_thread=None)
        state = self.__dict__.get("_partial_state")
        if state is not None and self.__dict__.get("history_") is not state["history"]:
            state = None  # fit() (or a new set of fitted attributes) came between: continue from those
        expected = state["columns"] if state is not None else self._fitted_columns()
        if expected is not None and data.n_features != expected:
            raise DataError(f"X has {data.n_features} features, but {type(self).__name__} is expecting "
                            f"{expected} features as input (partial_fit batches must all have the same features)")
        executor = Executor(self.client, fan_in=self.fan_in)
        passes = DataPasses(executor, executor.place(data, cache=False))
        if state is None:
            run, label = self._partial_start(data, passes)
            state = {"run": run, "label": label, "columns": int(data.n_features),
                     "init_passes": float(passes.n_passes)}
        run = state["run"]
        t0 = time.perf_counter()
        stats = passes.evaluate([Evaluation(run.family, run.params)])[0]
        run.n_samples += int(data.n_samples)
        run.receive_batch(stats, time.perf_counter() - t0, int(stats.n_rows), 1.0)
        self._set_fitted(run.family, run.result(), data)
        self._set_run_attributes(FitOutcome([run], None, state["init_passes"]), [state["label"]], 0, data)
        state["history"] = self.history_
        self._partial_state = state
        for note in run.monitor.history[-1].notes:
            if note["kind"] in self._warned_notes:
                warnings.warn(f"partial_fit step {run.t}: {note['message']}", self._warned_notes[note["kind"]],
                              stacklevel=3)
        return self

    def _online_partition_rows(self, data: Any, saved_rows: int | None) -> int | None:
        """Rows per partition for online EM: mini-batches are whole partitions, so none may exceed a batch.

        None keeps the data's partitioning: another learning method, a
        ``partition_rows`` set by the user, a resumed run (which keeps its
        own), or partitions already no larger than a batch.
        """
        p = self.get_params(deep=False)
        if p.get("learning_method") != "online" or saved_rows or self.partition_rows is not None:
            return None
        from dem.engine.strategies.online import default_batch_size

        batch = int(p.get("batch_size") or default_batch_size(data.n_samples))
        return batch if max(b - a for a, b in data.bounds) > batch else None

    def _fitted_columns(self) -> int | None:
        """Columns of the data a fitted model takes (None: not fitted, or symbols)."""
        if getattr(self, "_symbols", False) or not self._is_fitted():
            return None
        return getattr(self, "n_features_in_", None)

    def _partial_start(self, data: Any, passes: Any) -> tuple[Any, dict]:
        """The online run of the first ``partial_fit`` call: from the fitted model, or from this batch."""
        from dem.engine.monitor import MONOTONE_RTOL
        from dem.engine.strategies.online import OnlineStrategy

        p = self.get_params(deep=False)
        seed = P.seed_from(self.random_state)
        if self._is_fitted():
            family, params = self._fitted_family(), self._fitted_params()
            label = {"restart": 0}
        else:
            self._check_data(data)
            members = [(f, label) for f, label in self._members(data) if int(label["restart"]) == 0]
            if len(members) != 1:
                raise ConfigError("partial_fit fits one model: give a single n_components, not a list")
            family, label = members[0]
            params = self._initialize([(family, seed)], passes, data)[0]
        strategy = OnlineStrategy(int(p[self._max_iter_param]), float(self.tol), MONOTONE_RTOL,
                                  learning_decay=float(p["learning_decay"]),
                                  learning_offset=float(p["learning_offset"]), burn_in=0)
        return strategy.start(family, params, seed), label
