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
                              "the one `data.path` to generate into: any other missing `data.path` is an error, "
                              "so a typo is refused rather than filled with new data (null: generate at any "
                              "missing `data.path`, with a warning)")
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
    target: str | None = _field(None, _str(optional=True), "array of targets y in the group (conditional models: "
                                                          "mixture_of_experts)")
    storage_options: dict = _field({}, _mapping, "fsspec options for URLs")
    generate: GenerateConfig | None = _field(None, lambda v: v, "synthetic data to create if path is missing")


class ModelConfig:
    """``model``: which family (``model.kind``) and that family's own keys.

    The keys are not listed here: each family's estimator declares the
    ``model.*`` keys it takes (``_config_keys``, with defaults and one-line
    docs) and the registry collects them, so a new family brings its keys
    with it. A key's value is checked with the estimator's own parameter
    constraints. ``cfg.model.<key>`` reads a key.
    """

    def __init__(self, kind: str = "gmm", values: dict[str, Any] | None = None) -> None:
        self.__dict__["kind"] = kind
        self.__dict__["values"] = dict(values) if values is not None else _model_defaults(kind)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"model.{name} is not a key of model.kind={self.__dict__.get('kind')!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "kind":
            self.__dict__["kind"] = value
        else:
            self.__dict__["values"][name] = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ModelConfig({self.to_dict()!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.values}


def _estimator_class(kind: Any) -> type:
    from dem import registry
    return registry.estimator_class(kind)


def _model_keys(kind: str) -> dict[str, Any]:
    """``{key: ConfigKey}`` of the ``model.*`` keys ``kind`` takes (without the ``model.`` prefix)."""
    return {k.split(".", 1)[1]: ck for k, ck in _estimator_class(kind)._config_keys.items()
            if k.startswith("model.")}


def _model_defaults(kind: str) -> dict[str, Any]:
    return {name: ck.default for name, ck in _model_keys(kind).items()}


def model_keys() -> dict[str, dict[str, Any]]:
    """Every kind's ``model.*`` keys: ``{kind: {key: ConfigKey}}`` (the config reference lists them)."""
    from dem import registry
    return {kind: _model_keys(kind) for kind in registry.kinds()}


@dataclasses.dataclass
class FitConfig:
    """``fit``: the EM iterations."""

    max_iter: int = _field(100, _int(1), "iterations at most")
    tol: float = _field(1e-3, _float(0.0), "stop when |Δ mean log-likelihood| < tol (scikit-learn's rule). HMM kinds: when "
                        "the *total* log-likelihood gains less than tol (hmmlearn's rule); the display still shows Δ "
                        "per time step and prints the per-step threshold this amounts to (tol / steps)")
    n_init: int = _field(1, _int(1), "initialisations; the best is kept")
    init_params: str = _field("k-means||", _str(), "how initial centres are placed (mixtures: k-means||, kmeans, "
                                                   "k-means++, random, random_from_data)")
    random_state: int | None = _field(0, _int(0, optional=True), "seed (null: a fresh one)")
    partition_rows: int | None = _field(None, _int(1, optional=True), "rows per task, whole chunks (null: automatic, 1/16 of the data within 16-128 MiB)")
    fan_in: int = _field(8, _int(2), "children per node of the reduction tree")
    cache: Any = _field("auto", _cache, "keep partitions in worker memory")
    beta_init: float | None = _field(None, _beta, "deterministic annealing: first inverse temperature (null: off)")
    beta_rate: float = _field(2.0, _float(1.000001), "annealing: factor by which beta grows per stage")
    accelerate: str | None = _field(None, _str(optional=True), "squarem: SQUAREM extrapolation between EM steps "
                                                               "(null: plain EM)")
    learning_method: str = _field("batch", _str(), "batch EM, online (mini-batches), sem (stochastic EM) or sem+em")
    learning_decay: float = _field(0.7, _float(0.0), "online EM: step sizes (t + learning_offset)^-learning_decay, "
                                                     "in (0.5, 1]")
    learning_offset: float = _field(10.0, _float(0.0), "online EM: offset t0 of the step sizes")
    batch_size: int | None = _field(None, _int(1, optional=True), "online EM: rows per mini-batch, whole "
                                                                 "partitions (null: automatic)")


@dataclasses.dataclass
class SecurityConfig:
    """``cluster.security``: TLS files for a ``tls://`` scheduler."""

    tls_ca_file: str | None = _field(None, _str(optional=True), "CA certificate")
    tls_client_cert: str | None = _field(None, _str(optional=True), "client certificate")
    tls_client_key: str | None = _field(None, _str(optional=True), "client private key")


@dataclasses.dataclass
class ClusterConfig:
    """``cluster``: where the tasks run."""

    address: str | None = _field(None, _address, "scheduler address `[scheme://]host:port` (null: embedded "
                                                         "LocalCluster)")
    n_workers: int = _field(2, _int(1), "LocalCluster worker processes")
    threads_per_worker: int = _field(1, _int(1), "threads per worker")
    memory_limit: Any = _field("auto", _memory_limit, "per worker")
    dashboard: bool = _field(True, _bool, "serve the Dask dashboard")
    host: str = _field("127.0.0.1", _host,
                       "interface the embedded scheduler and workers listen on (`0.0.0.0`: every "
                       "interface, reachable from the network)")
    dashboard_address: str | None = _field(None, _listen_address,
                                           "`host:port` the embedded dashboard listens on (null: `cluster.host`, a "
                                           "free port); `0.0.0.0:8787` serves it to the network")
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
        return {name: (getattr(self, name).to_dict() if name == "model" else dataclasses.asdict(getattr(self, name)))
                for name in SECTIONS}

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

    def value(self, dotted: str) -> Any:
        """The value of a dotted key (``fit.tol``, ``model.n_components``)."""
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)

    def estimator_class(self) -> type:
        """The estimator class of ``model.kind`` (from the registry)."""
        return _estimator_class(self.model.kind)

    def estimator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the ``model.kind`` estimator (without ``client``)."""
        cls = self.estimator_class()
        names = set(cls._get_param_names())
        kwargs = {ck.param: self.model.values[key] for key, ck in _model_keys(self.model.kind).items()}
        for dotted, param in _shared_params(cls).items():
            if param in names:
                kwargs[param] = self.value(dotted)
        kwargs["storage_options"] = dict(self.data.storage_options) or None
        return kwargs

    def make_estimator(self, client: Any = None) -> Any:
        """The estimator ``model.kind`` names, configured from every section."""
        return self.estimator_class()(**self.estimator_kwargs(), client=client)

    def fit_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the estimator's ``fit`` besides the data and the callback."""
        out = {}
        for dotted, argument in self.estimator_class()._config_fit_arguments.items():
            value = self.value(dotted)
            if value is not None:
                out[argument] = value
        return out


def _shared_params(cls: type) -> dict[str, str]:
    """The shared config keys ``cls`` takes, mapped to its parameter names."""
    from dem.estimator.base import SHARED_CONFIG_PARAMS

    out = {}
    for dotted, param in {**SHARED_CONFIG_PARAMS, **_MIXTURE_FIT_KEYS}.items():
        if dotted in cls._config_excluded:
            continue
        out[dotted] = cls._max_iter_param if param == "max_iter" else param
    return out


#: Keys of the fit section that only some families take (the others refuse a value other than the default).
_MIXTURE_FIT_KEYS = {"fit.init_params": "init_params", "fit.beta_init": "beta_init", "fit.beta_rate": "beta_rate"}


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "fit": FitConfig,
            "cluster": ClusterConfig, "output": OutputConfig}
_NESTED = {("data", "generate"): GenerateConfig, ("cluster", "security"): SecurityConfig}



def _keys(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def all_keys() -> list[str]:
    """Every valid dotted key, e.g. ``model.n_components``, ``data.generate.seed``."""
    out = []
    for section, cls in SECTIONS.items():
        if cls is ModelConfig:
            out.append("model.kind")
            out.extend(dict.fromkeys(f"model.{k}" for keys in model_keys().values() for k in keys))
            continue
        for key in _keys(cls):
            out.append(f"{section}.{key}")
            nested = _NESTED.get((section, key))
            if nested is not None:
                out.extend(f"{section}.{key}.{k}" for k in _keys(nested))
    return out


def _cell(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return "`" + str(value).replace("|", "\\|") + "`"


def reference_markdown() -> str:
    """The config reference table of the README, generated from the schema and the registry."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def section(prefix: str, cls: type) -> None:
        for f in dataclasses.fields(cls):
            nested = _NESTED.get((prefix.split(".")[0], f.name)) if "." not in prefix else None
            doc = f.metadata.get("doc", "").replace("|", "\\|")
            if nested is not None:
                rows.append(f"| `{prefix}.{f.name}` | null | {doc}: a mapping of the keys below |")
                section(f"{prefix}.{f.name}", nested)
            else:
                rows.append(f"| `{prefix}.{f.name}` | {_cell(f.default if f.default is not dataclasses.MISSING else f.default_factory())} | {doc} |")

    for name, cls in SECTIONS.items():
        if cls is not ModelConfig:
            section(name, cls)
            continue
        per_kind = dict(sorted(model_keys().items(), key=lambda kv: (kv[0] != "gmm", kv[0])))
        rows.append(f"| `model.kind` | `gmm` | model family: {', '.join(per_kind)} |")
        for key in dict.fromkeys(k for keys in per_kind.values() for k in keys):
            owners = {kind: keys[key] for kind, keys in per_kind.items() if key in keys}
            defaults = {_cell(ck.default) for ck in owners.values()}
            if len(defaults) == 1:
                default = defaults.pop()
            else:
                default = "; ".join(f"{kind}: {_cell(ck.default)}" for kind, ck in owners.items())
            docs: dict[str, list[str]] = {}
            for kind, ck in owners.items():
                docs.setdefault(ck.doc.replace("|", "\\|"), []).append(kind)
            if len(docs) == 1:
                doc = next(iter(docs))
                if len(owners) < len(per_kind):
                    doc += f" ({', '.join(owners)})"
            else:
                doc = "; ".join(f"{', '.join(kinds)}: {text}" for text, kinds in docs.items())
            rows.append(f"| `model.{key}` | {default} | {doc} |")
    return "\n".join(rows)


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


def _check_parameter(cls: type, param: str, value: Any, dotted: str, src: _Source) -> Any:
    """A config value checked with the estimator's own constraint for ``param`` (one line)."""
    from sklearn.utils._param_validation import InvalidParameterError, validate_parameter_constraints

    if isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads 1e-3 as a string
    if isinstance(value, float) and value.is_integer() and param in ("n_components", "n_mix", "n_features",
                                                                      "n_experts"):
        value = int(value)
    constraints = cls._parameter_constraints.get(param)
    if constraints is None or constraints == "no_validation":
        return value
    try:
        validate_parameter_constraints({param: constraints}, {param: value}, caller_name=cls.__name__)
    except InvalidParameterError:
        raise ConfigError(f"{dotted} must be {_describe(constraints)}; got {_show(value)} "
                          f"in {src.of(dotted)}") from None
    return value


def _describe(constraints: list) -> str:
    """scikit-learn parameter constraints in the config's words ("an integer >= 1 or null")."""
    from numbers import Integral

    from sklearn.utils._param_validation import Interval, StrOptions

    parts: list[str] = []
    for c in constraints:
        if isinstance(c, Interval):
            integer = c.type is Integral
            lo, hi = c.left, c.right
            fmt = (lambda v: str(int(v))) if integer else (lambda v: f"{v:g}")
            if hi is None:
                op = ">=" if c.closed in ("left", "both") else ">"
                parts.append(f"{'an integer' if integer else 'a finite number'} {op} {fmt(lo)}")
            else:
                left = "[" if c.closed in ("left", "both") else "("
                right = "]" if c.closed in ("right", "both") else ")"
                parts.append(f"{'an integer' if integer else 'a number'} in {left}{fmt(lo)}, {fmt(hi)}{right}")
        elif isinstance(c, StrOptions):
            parts.append("one of " + ", ".join(sorted(c.options)))
        elif c is None:
            parts.append("null")
        elif c in (list, tuple):
            if "a list of them" not in parts:
                parts.append("a list of them")
        else:
            parts.append({"boolean": "true or false", "array-like": "a list of numbers", str: "a string",
                          dict: "a mapping", "random_state": "an integer >= 0 or null",
                          "verbose": "an integer"}.get(c, str(c)))
    return " or ".join(parts)


def _build_model(raw: Any, src: _Source) -> ModelConfig:
    """The ``model`` section: ``kind`` picks the family, whose estimator declares the other keys."""
    from dem import registry

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"model in {src.of('model')} must be a mapping of keys; got {_show(raw)}")
    kind = raw.get("kind", "gmm")
    if kind not in registry.kinds():
        raise ConfigError(f"model.kind must be one of {', '.join(registry.kinds())}; got {_show(kind)} "
                          f"in {src.of('model.kind')}")
    cls = registry.estimator_class(kind)
    keys = _model_keys(kind)
    values = _model_defaults(kind)
    for key, value in raw.items():
        if key == "kind":
            continue
        dotted = f"model.{key}"
        if not isinstance(key, str) or key not in keys:
            owners = [k for k, declared in model_keys().items() if key in declared]
            if owners:
                raise ConfigError(f"{dotted} is not a key of model.kind={kind} (it belongs to model.kind="
                                  f"{' or '.join(owners)}); {kind} takes {', '.join(f'model.{k}' for k in keys)} "
                                  f"(in {src.of(dotted)})")
            raise _unknown(dotted, ["model.kind", *(f"model.{k}" for k in keys)], src.of(dotted))
        values[key] = _check_parameter(cls, keys[key].param, value, dotted, src)
    return ModelConfig(kind, values)


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
    cfg = Config(**{name: (_build_model(raw.get(name), src) if cls is ModelConfig else
                           _build(cls, raw.get(name), name, src)) for name, cls in SECTIONS.items()})
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
    _check_kind_takes_keys(cfg, src)
    sec = cfg.cluster.security
    if sec is not None:
        if cfg.cluster.address is None or not cfg.cluster.address.startswith("tls://"):
            raise ConfigError("cluster.security is for a TLS scheduler: set cluster.address to tls://host:port "
                              f"(got {cfg.cluster.address!r})")
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            if getattr(sec, name) is None:
                raise ConfigError(f"cluster.security.{name} is required when cluster.security is set")


def _check_kind_takes_keys(cfg: Config, src: _Source) -> None:
    """Keys set for a family that does not take them are refused; the estimator checks the rest."""
    cls = cfg.estimator_class()
    kind = cfg.model.kind
    defaults = Config(model=ModelConfig(kind))
    names = set(cls._get_param_names())
    from dem.estimator.base import SHARED_CONFIG_PARAMS

    for dotted, param in {**SHARED_CONFIG_PARAMS, **_MIXTURE_FIT_KEYS}.items():
        taken = dotted not in cls._config_excluded and (cls._max_iter_param if param == "max_iter" else param) in names
        if not taken and cfg.value(dotted) != defaults.value(dotted):
            raise ConfigError(f"{dotted} is not available for model.kind={kind}; got {_show(cfg.value(dotted))} "
                              f"in {src.of(dotted)}")
    for dotted in ("data.weights", "data.target"):
        if cfg.value(dotted) is not None and dotted not in cls._config_fit_arguments:
            raise ConfigError(f"{dotted} is not available for model.kind={kind}; got {_show(cfg.value(dotted))} "
                              f"in {src.of(dotted)}")
    if cfg.data.variable != "X" and "data.variable" not in cls._config_fit_arguments:
        raise ConfigError(f"data.variable is not available for model.kind={kind}; got {_show(cfg.data.variable)}")
    if cfg.data.generate is not None and not cls._config_generates_data:
        raise ConfigError(f"data.generate writes Gaussian-mixture data, not data for model.kind={kind}: write it "
                          f"with `dem generate PATH --kind {kind} ...` and set data.path")
    # Every value the estimator takes is checked with its own constraints, named by its key here.
    for dotted, param in _shared_params(cls).items():
        if param in names and dotted not in ("output.run_dir", "data.storage_options"):
            _check_parameter(cls, param, cfg.value(dotted), dotted, src)
    est = cfg.make_estimator()
    try:
        est._check_parameters()
    except ConfigError as exc:  # a combination of values: name the config key
        message = str(exc)
        for key, ck in _model_keys(kind).items():
            if message.startswith(ck.param + " "):
                message = f"model.{key}{message[len(ck.param):]} in {src.of('model.' + key)}"
                break
        raise ConfigError(message) from None


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
