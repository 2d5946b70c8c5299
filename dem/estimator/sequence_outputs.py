"""What a fitted HMM gives back: scores, decoding, sampling, criteria, a summary, its saved form.

:class:`HMMOutputs` is mixed into :class:`dem.estimator.sequence.HMMEstimator`
(hmmlearn's ``score``, ``score_samples``, ``predict_proba``, ``decode``,
``predict``, ``sample``, ``get_stationary_distribution``, ``aic`` and
``bic``; dem's ``predict_to_zarr``; the lines ``dem info`` prints; the
persistence hooks of :mod:`dem.estimator.persistence`). In-memory data is
scored on the driver, partition by partition; a Zarr group by the workers
(:meth:`HMMOutputs._run`).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from dem.errors import ConfigError

# -- block functions (module level, so they pickle) ---------------------------


def _block_score(shared: tuple, part: Any) -> np.ndarray:
    family, params = shared
    return family.score(params, part.X, part.lengths, part.start)


def _block_decode(shared: tuple, part: Any) -> tuple:
    family, params, algorithm = shared
    return family.decode(params, part.X, part.lengths, algorithm, part.start)


def _block_posteriors(shared: tuple, part: Any) -> tuple:
    family, params = shared
    return family.score_and_posteriors(params, part.X, part.lengths, part.start)


def _block_predict(shared: tuple, part: Any) -> tuple:
    family, params, algorithm, posteriors = shared
    return family.predict_block(params, part, algorithm, posteriors)


class HMMOutputs:
    """Inference, sampling, summary and persistence of a fitted HMM estimator."""

    # -- inference -------------------------------------------------------------------------

    def _run(self, X: Any, lengths: Any, block_fn: Any, extra: tuple) -> list:
        """Apply a block function to every partition; in memory, directly on the driver."""
        from dem.data.row_sources import read_partition
        from dem.engine.executor import Executor

        data = self._open_data(X, y=None, sample_weight=None, lengths=lengths, variable=None,
                               partition_rows=None, memory_per_thread=None)
        shared = (self._fitted_family(), self._fitted_params()) + extra
        if data.in_memory:
            return [block_fn(shared, read_partition(*src)) for src in data.sources()]
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        return executor.map(block_fn, shared, executor.place(data, cache=False))

    def score(self, X: Any, lengths: Any = None) -> float:
        """Total log-likelihood of ``X`` under the model (a sum over sequences)."""
        return float(sum(float(p.sum()) for p in self._run(X, lengths, _block_score, ())))

    def score_samples(self, X: Any, lengths: Any = None) -> tuple[float, np.ndarray]:
        """Total log-likelihood and the state posteriors of every sample, (n_samples, n_components)."""
        parts = self._run(X, lengths, _block_posteriors, ())
        return float(sum(float(p[0].sum()) for p in parts)), np.concatenate([p[1] for p in parts])

    def predict_proba(self, X: Any, lengths: Any = None) -> np.ndarray:
        """State posteriors of every sample, (n_samples, n_components)."""
        return self.score_samples(X, lengths)[1]

    def _algorithm(self, algorithm: str | None) -> str:
        algorithm = algorithm or self.algorithm
        if algorithm not in ("viterbi", "map"):
            raise ConfigError(f"algorithm must be one of viterbi, map; got {algorithm!r}")
        return algorithm

    def decode(self, X: Any, lengths: Any = None, algorithm: str | None = None) -> tuple[float, np.ndarray]:
        """Most likely state sequence.

        Returns
        -------
        log_prob : float
            Viterbi: log-probability of the best paths (summed over sequences).
            MAP: as hmmlearn 0.3.3, the sum of the largest posteriors.
        state_sequence : ndarray of shape (n_samples,)
        """
        parts = self._run(X, lengths, _block_decode, (self._algorithm(algorithm),))
        return float(sum(float(p[0].sum()) for p in parts)), np.concatenate([p[1] for p in parts])

    def predict(self, X: Any, lengths: Any = None) -> np.ndarray:
        """Most likely state of every sample (by ``algorithm``), (n_samples,)."""
        return self.decode(X, lengths)[1]

    def predict_to_zarr(self, X: Any, path: str, lengths: Any = None, *, algorithm: str | None = None,
                        posteriors: bool = True, chunk_rows: int | None = None) -> str:
        """Write decoded states (and posteriors) of a whole dataset to a Zarr group.

        Partitions are decoded in parallel by the workers and written as
        ``states`` (n_samples,) int32, ``log_prob`` (n_sequences,) float64 (per
        sequence, what ``decode`` sums), optionally ``posteriors``
        (n_samples, n_components) float64, and ``offsets``. Nothing passes
        through the driver.

        Returns
        -------
        str : ``path``
        """
        from dem.data import sequences as seqdata
        from dem.engine.executor import Executor

        algorithm = self._algorithm(algorithm)
        data = self._open_data(X, y=None, sample_weight=None, lengths=lengths, variable=None,
                               partition_rows=None, memory_per_thread=None)
        outputs = [("states", "row", (), np.int32), ("log_prob", "sequence", (), np.float64)]
        if posteriors:
            outputs.append(("posteriors", "row", (self.n_components,), np.float64))
        executor = Executor.resolve(self.client, fan_in=self.fan_in)
        seqdata.write_partition_outputs(
            data, _block_predict, (self._fitted_family(), self._fitted_params(), algorithm, bool(posteriors)),
            os.fspath(path), outputs, client=executor.client, chunk_rows=chunk_rows,
            storage_options=self.storage_options, attrs={"algorithm": algorithm, "model_kind": self._kind})
        return os.fspath(path)

    def sample(self, n_samples: int = 1, random_state: Any = None, currstate: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one sequence of ``n_samples`` steps, as hmmlearn's ``sample`` (same draws)."""
        from sklearn.utils import check_random_state

        if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
            raise ConfigError(f"n_samples must be an integer >= 1; got {n_samples!r}")
        family, params = self._fitted_family(), self._fitted_params()
        rs = check_random_state(self.random_state if random_state is None else random_state)
        return family.sample(params, int(n_samples), rs, currstate)

    def get_stationary_distribution(self) -> np.ndarray:
        """Stationary distribution of the states (left eigenvector of ``transmat_`` for eigenvalue 1)."""
        from scipy import linalg

        check_is_fitted(self, "transmat_")
        eigvals, eigvecs = linalg.eig(np.asarray(self.transmat_).T)
        eigvec = np.real_if_close(eigvecs[:, np.argmax(eigvals)])
        return eigvec / eigvec.sum()

    def _n_parameters(self) -> int:
        return int(self._fitted_family().n_parameters(self.n_features))

    def aic(self, X: Any, lengths: Any = None) -> float:
        """Akaike information criterion, ``−2 log L + 2 · free parameters``."""
        return -2.0 * self.score(X, lengths) + 2.0 * self._n_parameters()

    def bic(self, X: Any, lengths: Any = None) -> float:
        """Bayesian information criterion, ``−2 log L + free parameters · log n_samples``."""
        data = self._open_data(X, y=None, sample_weight=None, lengths=lengths, variable=None,
                               partition_rows=None, memory_per_thread=None)
        return -2.0 * self.score(X, lengths) + self._n_parameters() * math.log(data.n_samples)

    # -- summary (``dem info``) -------------------------------------------------------------

    def summary_lines(self) -> list[str]:
        with np.printoptions(precision=3, suppress=True):
            return [f"states: {self.n_components}; start probabilities {np.asarray(self.startprob_)}",
                    f"transitions (rows: from state):\n{np.asarray(self.transmat_)}"]

    # -- persistence ----------------------------------------------------------------------

    _saved_arrays = ("startprob", "transmat")

    def _fitted_arrays(self) -> dict[str, tuple[tuple[str, ...], np.ndarray]]:
        check_is_fitted(self, "startprob_")
        out = {"startprob": (("state",), np.asarray(self.startprob_)),
               "transmat": (("state", "state_to"), np.asarray(self.transmat_))}
        for name, value in self._emission_params().items():
            value = np.asarray(value)
            out[name] = (tuple(f"{name}_dim_{i}" for i in range(value.ndim)), value)
        return out

    def _fitted_coords(self) -> dict[str, np.ndarray]:
        return {}

    def _fitted_json(self) -> dict[str, Any]:
        monitor = getattr(self, "monitor_", None)
        return {"n_features": int(self.n_features),
                "monitor": {"history": list(monitor.history) if monitor else [],
                            "converged": bool(monitor.converged) if monitor else False},
                **{k: getattr(self, k, None) for k in ("converged_", "n_iter_", "lower_bound_", "lower_bounds_",
                                                        "n_passes_", "n_init_passes_", "best_restart_")}}

    def _restore_fitted(self, arrays: dict[str, np.ndarray], coords: dict, fitted: dict[str, Any]) -> None:
        import json

        self.startprob_ = arrays["startprob"]
        self.transmat_ = arrays["transmat"]
        params = self._params_type()(startprob=self.startprob_, transmat=self.transmat_,
                                     **{n: arrays[n] for n in self._emission_params_names()})
        self._check_transitions(params.startprob, params.transmat)
        self._set_emission(params)
        self.n_features = int(fitted["n_features"])
        self._check_emission(params, self.n_features, fitted=True)
        monitor = fitted.get("monitor") or {}
        if isinstance(monitor, str):
            monitor = json.loads(monitor)
        for k, v in fitted.items():
            if k.endswith("_") and v is not None:
                setattr(self, k, v)
        self.monitor_ = self._monitor(list(monitor.get("history", [])), bool(monitor.get("converged", False)))
        self.n_iter_ = int(getattr(self, "n_iter_", None) or self.monitor_.iter)
        self.n_features_in_ = self.n_features
