"""The ``config.yaml`` schema: dataclasses with defaults, YAML loading,
``--set section.key=value`` overrides, and validation with one-line errors.

Every problem is a :class:`dem.errors.ConfigError` whose message names the
key, what was expected, the value found, and where it came from (the file or
``--set``); an unknown key suggests the nearest valid one.

Relative paths (``data.path``, ``output.run_dir``, the TLS files of
``cluster.security``) are resolved against the current working directory
when the configuration is loaded, so the resolved configuration a run saves
in its run directory works from anywhere. URLs (anything with ``://``) are
left as they are.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from typing import Any, Callable

import yaml

from dem.data.generate import DTYPES
from dem.errors import ConfigError
from dem.models.gmm import COVARIANCE_TYPES
from dem.models.init import INIT_METHODS

MODEL_KINDS = ("gmm", "gaussian_hmm", "categorical_hmm", "gmm_hmm")
HMM_KINDS = ("gaussian_hmm", "categorical_hmm", "gmm_hmm")
ADDRESS_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


class _Invalid(Exception):
    """A value does not fit; ``args[0]`` says what was expected."""


Check = Callable[[Any], Any]


# -- value checks: each returns the (normalised) value or raises _Invalid ----

def _number(text: str) -> Any:
    """``text`` as a float when it is written like one, else unchanged.

    PyYAML (YAML 1.1) reads ``1e-3`` and ``1e5`` -- no dot -- as strings;
    they are the numbers the user meant.
    """
    if re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", text):
        return float(text)
    return text


def _int(minimum: int | None = None, maximum: int | None = None, optional: bool = False) -> Check:
    if minimum is not None and maximum is not None:
        want = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        want = f"an integer >= {minimum}"
    else:
        want = "an integer"
    if optional:
        want += " or null"

    def check(v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, str):
            v = _number(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)  # 1.0e6 in YAML
        if isinstance(v, bool) or not isinstance(v, int):
            raise _Invalid(want)
        if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
            raise _Invalid(want)
        return v
    return check


def _float(minimum: float = 0.0) -> Check:
    want = f"a finite number >= {minimum:g}"

    def check(v: Any) -> float:
        if isinstance(v, str):
            v = _number(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < minimum:
            raise _Invalid(want)
        return float(v)
    return check


_SECRET_WORDS = ("secret", "token", "password", "key", "credential")


def _without_secrets(options: Any) -> Any:
    """storage_options minus anything that looks like a credential (recursively)."""
    if isinstance(options, dict):
        return {k: _without_secrets(v) for k, v in options.items()
                if not any(w in str(k).lower() for w in _SECRET_WORDS)}
    return options


def _components(v: Any) -> Any:
    """An integer >= 1, or a list of distinct ones (model selection by BIC)."""
    one = _int(1)
    if isinstance(v, (list, tuple)):
        if not v:
            raise _Invalid("an integer >= 1 or a non-empty list of them")
        try:
            out = [one(x) for x in v]
        except _Invalid:
            raise _Invalid("an integer >= 1 or a list of them") from None
        if len(set(out)) != len(out):
            raise _Invalid("a list without repeated values")
        return out
    try:
        return one(v)
    except _Invalid:
        raise _Invalid("an integer >= 1 or a list of them") from None


def _beta(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        v = _number(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise _Invalid("a number in (0, 1] or null")
    return float(v)


def _bool(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    raise _Invalid("true or false")


def _choice(choices: tuple[str, ...]) -> Check:
    def check(v: Any) -> str:
        if v not in choices:
            raise _Invalid("one of " + ", ".join(choices))
        return v
    return check


def _str(optional: bool = False) -> Check:
    want = "a non-empty string" + (" or null" if optional else "")

    def check(v: Any) -> Any:
        if v is None and optional:
            return None
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if not isinstance(v, str) or not v:
            raise _Invalid(want)
        return v
    return check


def _mapping(v: Any) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _Invalid("a mapping")
    return dict(v)


def _cache(v: Any) -> Any:
    if v in ("auto", True, False):
        return v
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise _Invalid("auto, true or false")


def _memory_limit(v: Any) -> Any:
    from dask.utils import parse_bytes

    want = "'auto', a size like 2GiB, or a positive number of bytes"
    if v == "auto":
        return v
    if isinstance(v, bool):
        raise _Invalid(want)
    if isinstance(v, int) and v > 0:
        return v
    if isinstance(v, str):
        try:
            if parse_bytes(v) > 0:
                return v
        except (ValueError, TypeError):
            pass
    raise _Invalid(want)


#: ``host:port`` as Dask parses it: a name, an IPv4 address or a bracketed IPv6
#: address, then a port number (distributed has no default port for a client).
_HOST_PORT = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def _address(v: Any) -> Any:
    want = "null or a scheduler address like tcp://host:8786 or tls://host:8786"
    if v is None:
        return None
    if not isinstance(v, str) or not v or any(c.isspace() for c in v):
        raise _Invalid(want)
    m = re.fullmatch(r"(?:([a-z]+)://)?(.+)", v)
    assert m is not None
    scheme, location = m.group(1) or "tcp", m.group(2)
    if scheme not in ADDRESS_SCHEMES:
        raise _Invalid(want)
    if scheme != "inproc":
        # Checked here so a typo is one line before anything starts, rather
        # than a ValueError from deep inside distributed's connect.
        port = _HOST_PORT.fullmatch(location)
        if port is None or not 0 < int(port.group(1)) < 65536:
            raise _Invalid(want)
    return v


def _host(v: Any) -> str:
    want = "a host name or IP address to listen on, like 127.0.0.1 or 0.0.0.0"
    if not isinstance(v, str) or not re.fullmatch(r"\[?[0-9A-Za-z_.:-]+\]?", v):
        raise _Invalid(want)
    return v


def _listen_address(v: Any) -> Any:
    want = "null or host:port to serve the dashboard on, like 127.0.0.1:8787 (port 0: any free port)"
    if v is None:
        return None
    if isinstance(v, str):
        port = _HOST_PORT.fullmatch(v)
        if port is not None and int(port.group(1)) < 65536:
            return v
    raise _Invalid(want)


def _field(default: Any, check: Check, doc: str = "") -> Any:
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default),
                                 metadata={"check": check, "doc": doc})
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


# -- the schema ---------------------------------------------------------------

@dataclasses.dataclass
class GenerateConfig:
    """``data.generate``: make a synthetic dataset at ``data.path`` when it is missing."""

    path: str | None = _field(None, _str(optional=True),
                              "the only data.path to generate into; another missing data.path is an error "
                              "(null: any, with a warning)")
    n_samples: int = _field(None, _int(1), "rows")
    n_features: int = _field(None, _int(1), "columns")
    n_components: int = _field(None, _int(1), "true mixture components")
    chunk_rows: int = _field(100_000, _int(1), "rows per Zarr chunk")
    dtype: str = _field("float32", _choice(DTYPES), "storage dtype of X")
    seed: int = _field(0, _int(0), "seed of the true parameters and the rows")
    separation: float = _field(6.0, _float(1e-12), "closest means, in standard deviations")
    weighted: bool = _field(False, _bool, "also write sample weights")

    REQUIRED = ("n_samples", "n_features", "n_components")


@dataclasses.dataclass
class DataConfig:
    """``data``: where the rows are."""

    path: str | None = _field(None, _str(optional=True), "Zarr path/URL of a group holding X, or of an array")
    variable: str = _field("X", _str(), "array of the group to fit")
    weights: str | None = _field(None, _str(optional=True), "array of sample weights in the group")
    storage_options: dict = _field({}, _mapping, "fsspec options for URLs")
    generate: GenerateConfig | None = _field(None, lambda v: v, "synthetic data to create if path is missing")


@dataclasses.dataclass
class ModelConfig:
    """``model``: which latent-variable model."""

    kind: str = _field("gmm", _choice(MODEL_KINDS), "model family: gmm, gaussian_hmm, categorical_hmm, gmm_hmm")
    n_components: Any = _field(1, _components, "mixture components, or a list of candidates (lowest BIC wins)")
    covariance_type: str = _field("full", _choice(COVARIANCE_TYPES), "covariance structure")
    reg_covar: float = _field(1e-6, _float(0.0), "added to covariance diagonals")
    missing: str = _field("error", _choice(("error", "em")), "NaN: error, or em (missing at random, fitted by EM)")
    n_mix: int = _field(1, _int(1), "HMM kinds: Gaussians per state (gmm_hmm)")
    min_covar: float = _field(1e-3, _float(0.0), "HMM kinds: floor of initial covariances")
    algorithm: str = _field("viterbi", _choice(("viterbi", "map")), "HMM kinds: decoder")
    n_features: int | None = _field(None, _int(1, optional=True), "categorical_hmm: number of symbols (null: inferred)")


@dataclasses.dataclass
class FitConfig:
    """``fit``: the EM iterations."""

    max_iter: int = _field(100, _int(1), "iterations at most")
    tol: float = _field(1e-3, _float(0.0), "stop when |Δ mean log-likelihood| < tol (HMM kinds: when the total "
                        "log-likelihood gains less than tol, hmmlearn's rule)")
    n_init: int = _field(1, _int(1), "initialisations; the best is kept")
    init_params: str = _field("k-means||", _choice(INIT_METHODS), "how initial centres are placed")
    random_state: int | None = _field(0, _int(0, optional=True), "seed (null: a fresh one)")
    partition_rows: int | None = _field(None, _int(1, optional=True), "rows per task, whole chunks (null: automatic, 1/16 of the data within 16-128 MiB)")
    fan_in: int = _field(8, _int(2), "children per node of the reduction tree")
    cache: Any = _field("auto", _cache, "keep partitions in worker memory")
    beta_init: float | None = _field(None, _beta, "deterministic annealing: first inverse temperature (null: off)")
    beta_rate: float = _field(2.0, _float(1.000001), "annealing: factor by which beta grows per stage")


@dataclasses.dataclass
class SecurityConfig:
    """``cluster.security``: TLS files for a ``tls://`` scheduler."""

    tls_ca_file: str | None = _field(None, _str(optional=True), "CA certificate")
    tls_client_cert: str | None = _field(None, _str(optional=True), "client certificate")
    tls_client_key: str | None = _field(None, _str(optional=True), "client private key")


@dataclasses.dataclass
class ClusterConfig:
    """``cluster``: where the tasks run."""

    address: str | None = _field(None, _address, "scheduler address (null: embedded LocalCluster)")
    n_workers: int = _field(2, _int(1), "LocalCluster worker processes")
    threads_per_worker: int = _field(1, _int(1), "threads per worker")
    memory_limit: Any = _field("auto", _memory_limit, "per worker")
    dashboard: bool = _field(True, _bool, "serve the Dask dashboard")
    host: str = _field("127.0.0.1", _host,
                       "interface the embedded scheduler and workers listen on (0.0.0.0: every interface)")
    dashboard_address: str | None = _field(None, _listen_address,
                                           "host:port of the embedded dashboard (null: cluster.host, a free port)")
    security: SecurityConfig | None = _field(None, lambda v: v, "TLS for a tls:// address")


@dataclasses.dataclass
class OutputConfig:
    """``output``: the run directory."""

    run_dir: str = _field("runs/demo", _str(), "checkpoints, history, model")
    checkpoint_every: int = _field(1, _int(1), "iterations between checkpoints")
    keep_checkpoints: int = _field(3, _int(1), "newest checkpoints kept")
    overwrite: bool = _field(False, _bool, "replace a finished run with a different config")


@dataclasses.dataclass
class Config:
    """A whole ``config.yaml``.

    Build one with :func:`load_config`; ``Config()`` holds the defaults
    (without ``data.path``, which a fit needs).
    """

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    fit: FitConfig = dataclasses.field(default_factory=FitConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-safe) of every key, defaults included."""
        return dataclasses.asdict(self)

    def to_yaml(self, redact_secrets: bool = False) -> str:
        """The configuration as YAML that :func:`load_config` reads back unchanged.

        With ``redact_secrets`` (the copy kept in a run directory), credentials
        in ``data.storage_options`` are left out: they come from the
        environment, or from ``--set data.storage_options=…`` when resuming.
        """
        d = self.to_dict()
        if redact_secrets:
            d["data"]["storage_options"] = _without_secrets(d["data"]["storage_options"])
        return yaml.safe_dump(d, sort_keys=False)

    def estimator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`dem.GaussianMixture` (without ``client``)."""
        m, f, o = self.model, self.fit, self.output
        return {
            "n_components": m.n_components,
            "covariance_type": m.covariance_type,
            "reg_covar": m.reg_covar,
            "missing": m.missing,
            "max_iter": f.max_iter,
            "tol": f.tol,
            "n_init": f.n_init,
            "init_params": f.init_params,
            "random_state": f.random_state,
            "partition_rows": f.partition_rows,
            "fan_in": f.fan_in,
            "cache": f.cache,
            "beta_init": f.beta_init,
            "beta_rate": f.beta_rate,
            "checkpoint_dir": o.run_dir,
            "checkpoint_every": o.checkpoint_every,
            "keep_checkpoints": o.keep_checkpoints,
            "storage_options": dict(self.data.storage_options) or None,
        }

    def make_estimator(self, client: Any = None) -> Any:
        """The estimator ``model.kind`` names, configured from every section."""
        if self.model.kind == "gmm":
            import dem

            return dem.GaussianMixture(**self.estimator_kwargs(), client=client)
        from dem import hmm

        m, f, o = self.model, self.fit, self.output
        common = dict(n_components=m.n_components, n_iter=f.max_iter, tol=f.tol, random_state=f.random_state,
                      algorithm=m.algorithm, n_init=f.n_init, partition_rows=f.partition_rows, fan_in=f.fan_in,
                      cache=f.cache, checkpoint_dir=o.run_dir, checkpoint_every=o.checkpoint_every,
                      keep_checkpoints=o.keep_checkpoints,
                      storage_options=dict(self.data.storage_options) or None, client=client)
        if m.kind == "categorical_hmm":
            return hmm.CategoricalHMM(n_features=m.n_features, **common)
        if m.kind == "gmm_hmm":
            return hmm.GMMHMM(n_mix=m.n_mix, min_covar=m.min_covar, covariance_type=m.covariance_type, **common)
        return hmm.GaussianHMM(min_covar=m.min_covar, covariance_type=m.covariance_type, **common)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the estimator's ``fit`` besides the data and the callback."""
        if self.model.kind == "gmm":
            return {"sample_weight": self.data.weights, "variable": self.data.variable}
        return {}


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "fit": FitConfig,
            "cluster": ClusterConfig, "output": OutputConfig}
_NESTED = {("data", "generate"): GenerateConfig, ("cluster", "security"): SecurityConfig}


def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. ``model.n_components``, ``data.generate.seed``."""
    out = []
    for section, cls in SECTIONS.items():
        for key in _keys(cls):
            out.append(f"{section}.{key}")
            nested = _NESTED.get((section, key))
            if nested is not None:
                out.extend(f"{section}.{key}.{k}" for k in _keys(nested))
    return out


# -- loading ------------------------------------------------------------------

class _Source:
    """Where each dotted key's value came from, for messages."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.overridden: set[str] = set()

    def of(self, key: str) -> str:
        if key in self.overridden or any(key.startswith(k + ".") for k in self.overridden):
            return "--set"
        return self.filename


def _unknown(key: str, candidates: list[str], where: str, what: str = "key") -> ConfigError:
    """An unknown-key error suggesting the nearest valid key."""
    last = key.rsplit(".", 1)[-1]
    # The right name in the wrong section (model.max_iter -> fit.max_iter) first.
    moved = sorted((c for c in all_keys() if c.rsplit(".", 1)[-1] == last and c != key),
                   key=lambda c: c.count("."))
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(key, all_keys(), n=1, cutoff=0.75)
    hint = moved[:1] or close
    msg = f"unknown {what} {key!r} in {where}"
    if hint:
        return ConfigError(f"{msg}; did you mean {hint[0]!r}?")
    return ConfigError(f"{msg}; valid {what}s are {', '.join(candidates)}")


def _build(cls: type, raw: Any, prefix: str, src: _Source) -> Any:
    """An instance of section dataclass ``cls`` from a raw mapping, checked key by key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{prefix} in {src.of(prefix)} must be a mapping of keys; got {_show(raw)}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if not isinstance(key, str) or key not in fields:
            raise _unknown(f"{prefix}.{key}", [f"{prefix}.{k}" for k in fields], src.of(f"{prefix}.{key}"))
    values = {}
    for name, f in fields.items():
        dotted = f"{prefix}.{name}"
        if name not in raw:
            continue
        value = raw[name]
        nested = _NESTED.get(tuple(dotted.split(".")))  # type: ignore[arg-type]
        if nested is not None:
            values[name] = None if value is None else _build(nested, value, dotted, src)
            continue
        try:
            values[name] = f.metadata["check"](value)
        except _Invalid as exc:
            raise ConfigError(f"{dotted} must be {exc.args[0]}; got {_show(value)} in {src.of(dotted)}") from None
    obj = cls(**values)
    for name in getattr(cls, "REQUIRED", ()):
        if getattr(obj, name) is None:
            raise ConfigError(f"{prefix}.{name} is required when {prefix} is set (in {src.of(prefix)})")
    return obj


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split ``section.key=value`` into the key path and the value read as a YAML scalar."""
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or len(parts) < 2 or not all(re.fullmatch(r"[A-Za-z_][\w+-]*", p) for p in parts):
        raise ConfigError(f"--set expects section.key=value (e.g. model.n_components=4); got {item!r}")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text  # not YAML: keep the text, the key's check decides
    return parts, value


def apply_overrides(raw: dict, overrides: list[str] | tuple[str, ...], src: _Source | None = None) -> dict:
    """``raw`` with each ``section.key=value`` of ``overrides`` set (a new dict)."""
    import copy

    raw = copy.deepcopy(raw)
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for i, p in enumerate(parts[:-1]):
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is not a mapping")
            node = child
        node[parts[-1]] = value
        if src is not None:
            src.overridden.add(".".join(parts))
    return raw


def _refuse_duplicate_keys(node: Any, name: str, path: str = "", seen: set[int] | None = None) -> None:
    """A :class:`ConfigError` naming the first key written twice in one mapping, and both lines.

    PyYAML keeps the last value of a repeated key without a word, so a second
    ``fit:`` section would silently replace the first.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node already checked (or a recursive one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, Any] = {}
        for key, value in node.value:
            # `<<` merges are meant to be overridden; other non-scalar keys are refused later.
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                dotted = f"{path}.{key.value}" if path else key.value
                if key.value in first:
                    raise ConfigError(
                        f"{name}: key {dotted!r} appears twice, at lines {first[key.value].start_mark.line + 1} "
                        f"and {key.start_mark.line + 1}; keep one (YAML would silently use the last)")
                first[key.value] = key
            else:
                dotted = path
            _refuse_duplicate_keys(value, name, dotted, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, name, f"{path}[{i}]", seen)


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping."""

    def construct_document(self, node: Any) -> Any:
        _refuse_duplicate_keys(node, self.name)
        return super().construct_document(node)


def read_yaml(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file (empty file: ``{}``).

    Parsed with PyYAML's safe loader (no Python objects), refusing a key
    that appears twice in one mapping.
    """
    path = os.fspath(path)
    name = path
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except FileNotFoundError:
        raise ConfigError(f"config file {name!r} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {name!r} is a directory") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"cannot parse {name}{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} must hold a mapping of sections (data, model, fit, cluster, output); "
                          f"got {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = (), *,
                     source: str = "config", resolve_paths: bool = True,
                     require_data: bool = True) -> Config:
    """Validate a raw nested mapping (plus overrides) into a :class:`Config`.

    Parameters
    ----------
    raw : dict
        Sections as read from YAML.
    overrides : list of str
        ``section.key=value`` items applied on top.
    source : str
        Name used in messages for values from ``raw``.
    resolve_paths : bool
        Make relative local paths absolute (against the working directory).
    require_data : bool
        Require ``data.path``.
    """
    src = _Source(source)
    raw = apply_overrides(raw, overrides, src)
    for section in raw:
        if not isinstance(section, str) or section not in SECTIONS:
            raise _unknown(str(section), list(SECTIONS), src.of(str(section)), what="section")
    cfg = Config(**{name: _build(cls, raw.get(name), name, src) for name, cls in SECTIONS.items()})
    _check_consistency(cfg, src, require_data)
    if resolve_paths:
        _resolve_paths(cfg)
    return cfg


def load_config(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read, override and validate a ``config.yaml``.

    Parameters
    ----------
    path : path-like or None
        The YAML file; ``None`` starts from the defaults.
    overrides : list of str
        ``section.key=value`` items (values parsed as YAML scalars), applied
        after the file.

    Returns
    -------
    Config
        With relative local paths resolved against the working directory.

    Raises
    ------
    dem.errors.ConfigError
        One line naming the key, the expected type or range, and the value.
    """
    if path is None:
        return config_from_dict({}, overrides, source="defaults")
    raw = read_yaml(path)
    return config_from_dict(raw, overrides, source=os.path.basename(os.fspath(path)) or os.fspath(path))


def _check_consistency(cfg: Config, src: _Source, require_data: bool) -> None:
    """Rules that span keys."""
    if require_data and cfg.data.path is None:
        raise ConfigError(f"data.path is not set in {src.of('data.path')}: give the Zarr path or URL of the data")
    gen = cfg.data.generate
    if gen is not None:
        if gen.n_components > gen.n_samples:
            raise ConfigError(f"data.generate.n_components ({gen.n_components}) must not exceed "
                              f"data.generate.n_samples ({gen.n_samples})")
        if cfg.data.weights is not None and (not gen.weighted or cfg.data.weights != "weights"):
            raise ConfigError("data.weights must be 'weights' with data.generate.weighted: true when the data "
                              f"is generated; got data.weights={cfg.data.weights!r}")
        if cfg.data.variable != "X":
            raise ConfigError(f"data.variable must be 'X' for generated data; got {cfg.data.variable!r}")
    if cfg.model.kind in HMM_KINDS:
        m = cfg.model
        if isinstance(m.n_components, list):
            raise ConfigError(f"model.n_components must be a single integer for model.kind={m.kind}; "
                              f"got {m.n_components}")
        for key, value, default in (("model.missing", m.missing, "error"), ("data.weights", cfg.data.weights, None),
                                    ("fit.beta_init", cfg.fit.beta_init, None)):
            if value != default:
                raise ConfigError(f"{key} is not available for model.kind={m.kind}; got {value!r}")
        if gen is not None:
            raise ConfigError(f"data.generate writes Gaussian-mixture data, not sequences for model.kind={m.kind}: "
                              "write them with dem.data.sequences.generate_hmm_dataset")
    sec = cfg.cluster.security
    if sec is not None:
        if cfg.cluster.address is None or not cfg.cluster.address.startswith("tls://"):
            raise ConfigError("cluster.security is for a TLS scheduler: set cluster.address to tls://host:port "
                              f"(got {cfg.cluster.address!r})")
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            if getattr(sec, name) is None:
                raise ConfigError(f"cluster.security.{name} is required when cluster.security is set")


def _resolve(path: str) -> str:
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _resolve_paths(cfg: Config) -> None:
    if cfg.data.path is not None:
        cfg.data.path = _resolve(cfg.data.path)
    if cfg.data.generate is not None and cfg.data.generate.path is not None:
        cfg.data.generate.path = _resolve(cfg.data.generate.path)
    cfg.output.run_dir = _resolve(cfg.output.run_dir)
    sec = cfg.cluster.security
    if sec is not None:
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            value = _resolve(getattr(sec, name))
            if not os.path.isfile(value):
                raise ConfigError(f"cluster.security.{name}: file {value!r} not found")
            setattr(sec, name, value)
