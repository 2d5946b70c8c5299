"""Value checks of config.yaml keys: each returns the normalised value or raises ``_Invalid``."""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Callable

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
