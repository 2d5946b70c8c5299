"""The contract between a model family and the engine.

A family is a small, picklable object holding hyperparameters, whose methods
are pure numpy functions. The engine calls :meth:`Family.e_step` on workers,
adds the returned :class:`Stats` in a fixed tree, and calls
:meth:`Family.m_step` and :meth:`Family.objective` on the driver. It knows
nothing else about the model.

Statistics form a commutative monoid with scaling: ``a + b`` adds field by
field, every field at zero is the neutral element, and ``s * a`` scales
every field (what stochastic approximation needs). Statistics of any split
of the data add up to those of the whole.

Optional abilities are declared by inheriting one of the small abstract
classes below, never probed with ``getattr``:

* :class:`Tempering` — deterministic annealing (a tempered E-step);
* :class:`FlatParameters` — parameters as one vector in unconstrained
  coordinates (SQUAREM extrapolates there);
* :class:`Rebasing` — statistics taken under one parameter set re-expressed
  so they add to statistics taken under another (online EM blends them);
* :class:`SampledAssignments` — an E-step whose statistics are those of
  latent labels drawn from the posterior (stochastic EM).

This module imports numpy only: families never import Dask.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Protocol, TypeVar

import numpy as np

from dem.data.record import Partition

S = TypeVar("S", bound="Stats")


@dataclasses.dataclass(frozen=True)
class Stats:
    """Additive statistics of one partition, or of a sum of partitions.

    Subclasses are frozen dataclasses whose fields are all float64 scalars
    or arrays. Every subclass carries ``n_rows`` (rows seen), ``weight_sum``
    (the sum of sample weights, or of whatever unit the objective is
    averaged over) and ``log_likelihood`` (the weighted sum of the per-unit
    log-likelihoods), so convergence is judged from the same reduction that
    feeds the M-step.
    """

    n_rows: float
    weight_sum: float
    log_likelihood: float

    def __add__(self: S, other: S) -> S:
        if type(other) is not type(self):
            return NotImplemented
        return type(self)(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                             for f in dataclasses.fields(self)})

    def scaled(self: S, factor: float) -> S:
        """Every field times ``factor``."""
        return type(self)(**{f.name: getattr(self, f.name) * factor for f in dataclasses.fields(self)})

    def __mul__(self: S, factor: float) -> S:
        if isinstance(factor, Stats):
            return NotImplemented
        return self.scaled(float(factor))

    __rmul__ = __mul__

    def zero(self: S) -> S:
        """The neutral element of the same shape."""
        return self.scaled(0.0)

    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as arrays (for checkpoints)."""
        return {f.name: np.asarray(getattr(self, f.name), dtype=np.float64) for f in dataclasses.fields(self)}

    @classmethod
    def from_arrays(cls: type[S], arrays: dict[str, np.ndarray]) -> S:
        """Inverse of :meth:`arrays`."""
        return cls(**{f.name: (float(arrays[f.name]) if np.ndim(arrays[f.name]) == 0 else arrays[f.name])
                      for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Note:
    """A structured diagnostic of one iteration (never a string to grep).

    Attributes
    ----------
    kind : str
        What happened: ``"empty"`` (a component lost its data),
        ``"never_left"`` (an HMM state was never left), ``"decreased"`` (the
        objective fell), ``"rejected"`` (an extrapolation was rejected),
        ``"collapsed"`` (the M-step collapsed a component: the member
        stopped with the parameters from before it), …
    component : int or None
        The component or state concerned, if any.
    message : str
        One line for people.
    """

    kind: str
    component: int | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "component": self.component, "message": self.message}

    @classmethod
    def from_json(cls, value: Any) -> "Note":
        if isinstance(value, str):  # run directories of dem 0.1 stored plain strings
            return cls("note", None, value)
        return cls(str(value.get("kind", "note")), value.get("component"), str(value.get("message", "")))

    def __str__(self) -> str:
        return self.message or self.kind


class Family(abc.ABC):
    """One latent-variable model as pure functions over partitions.

    Subclasses are frozen dataclasses of hyperparameters (so they pickle and
    compare by value). Parameters are frozen dataclasses of float64 arrays.
    """

    #: Short name of the family (what ``model.kind`` names in config.yaml).
    kind: str = ""
    #: The dataclass of its parameters (checkpoints rebuild them field by field).
    params_type: type = object

    @abc.abstractmethod
    def e_step(self, params: Any, part: Partition) -> Stats:
        """Statistics of one partition under ``params`` (runs on a worker)."""

    @abc.abstractmethod
    def m_step(self, stats: Stats, params: Any) -> Any:
        """New parameters from summed statistics taken under ``params``."""

    def objective(self, stats: Stats, params: Any) -> float:
        """What EM increases, per unit weight: by default the mean log-likelihood.

        ``params`` are those the statistics were taken under. A variational
        family returns its evidence lower bound here.
        """
        return float(stats.log_likelihood / stats.weight_sum) if stats.weight_sum > 0 else float("-inf")

    def notes(self, stats: Stats, params: Any) -> list[Note]:
        """Diagnostics of one iteration (empty components, …)."""
        return []

    @abc.abstractmethod
    def n_parameters(self, n_features: int) -> int:
        """Free parameters of the model (for BIC and AIC)."""

    @abc.abstractmethod
    def log_density(self, params: Any, part: Partition) -> np.ndarray:
        """Log-likelihood of each unit the family scores (a row, or a sequence for HMMs)."""

    def e_step_members(self, params: list[Any], part: Partition) -> list[Stats]:
        """Statistics of one partition under several parameter sets (restarts sharing a pass).

        A family whose kernel can stack members into one wider product
        overrides this; the result must equal ``[e_step(p, part) for p in params]``.
        """
        return [self.e_step(p, part) for p in params]


@dataclasses.dataclass(frozen=True)
class StatsTuple:
    """Statistics of several members side by side, added member by member."""

    members: tuple

    def __add__(self, other: "StatsTuple") -> "StatsTuple":
        return StatsTuple(tuple(a + b for a, b in zip(self.members, other.members)))


# -- optional abilities -----------------------------------------------------------


class Tempering(abc.ABC):
    """Deterministic annealing: an E-step at inverse temperature β.

    ``tempered(beta)`` is the family whose responsibilities are
    ``softmax(β · log(w_k p_k(x)))`` and whose objective is the tempered
    free energy; ``tempered(1.0)`` is the family itself.
    """

    @abc.abstractmethod
    def tempered(self, beta: float) -> Family:
        """The family at inverse temperature ``beta``."""

    @abc.abstractmethod
    def perturb(self, params: Any, rng: np.random.Generator) -> Any:
        """Parameters nudged apart, so components merged at high temperature can split."""


class FlatParameters(abc.ABC):
    """Parameters as one vector in unconstrained coordinates.

    Every vector maps to a valid model (log-ratio weights, Cholesky factors
    with log diagonals, …), so an extrapolated vector is a model too.
    """

    @abc.abstractmethod
    def to_vector(self, params: Any) -> np.ndarray:
        """The free coordinates of ``params`` as a float64 vector."""

    @abc.abstractmethod
    def from_vector(self, vector: np.ndarray, like: Any) -> Any:
        """Parameters from a vector; ``like`` supplies fixed parts and shapes."""


class Rebasing(abc.ABC):
    """Statistics whose reference point depends on the parameters, moved to another.

    Statistics accumulated about a shift derived from the parameters (the
    component means, say) add only to statistics taken about the same
    shift. Online EM re-expresses its running statistics under the new
    parameters before blending in a mini-batch taken under them.
    """

    @abc.abstractmethod
    def rebase(self, stats: Stats, old: Any, new: Any) -> Stats:
        """``stats`` taken under ``old`` as if taken about the reference of ``new``."""


class SampledAssignments(abc.ABC):
    """Stochastic EM (Celeux and Diebolt): statistics of labels drawn from the posterior."""

    @abc.abstractmethod
    def e_step_sampled(self, params: Any, part: Partition, key: tuple[int, ...]) -> Stats:
        """Statistics of one partition with each row's latent label drawn from its posterior.

        The draw of global row ``i`` depends only on ``key`` and ``i``, never
        on the partitioning; ``log_likelihood`` is the observed-data one.
        """


# -- what a family's initialisation may ask of the engine --------------------------


class Passes(Protocol):
    """Data passes the engine runs for a family's initialisation (duck-typed).

    ``fn`` arguments are module-level functions ``fn(shared, part)`` so
    that they pickle to workers.
    """

    n_samples: int
    n_features: int

    def map(self, fn: Callable[[Any, Partition], Any], shared: Any) -> list[Any]:
        """``[fn(shared, part) for each partition]``, in partition order."""

    def reduce(self, fn: Callable[[Any, Partition], Any], shared: Any) -> Any:
        """``Σ fn(shared, part)`` over partitions, through the fixed tree."""

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of X on the driver (small reads only)."""

    def sample(self, seeds: list[int], size: int, rows: Callable | None = None) -> list[Partition]:
        """For each seed, an even sample of about ``size`` rows from every partition."""

    def kmeans_parallel(self, n_clusters: list[int], seeds: list[int], rows: Callable | None = None,
                        first: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """k-means‖ centres per (n_clusters, seed), sharing the passes; ``first``: each seed's first candidate."""


def member_seed(random_state_seed: int, restart: int) -> int:
    """The seed of restart ``restart``: restart r of ``random_state=s`` is the fit with ``s + r``."""
    return int(random_state_seed) + int(restart)
