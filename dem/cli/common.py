"""What every ``dem`` command shares: the consoles, the run directory's file names, I/O on paths or URLs, state."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

from rich.console import Console


@dataclasses.dataclass
class _State:
    """What the error handler needs to know about the command in progress."""

    #: Set by ``dem --debug``: full tracebacks and worker logs.
    debug: bool = False
    #: The run directory being fitted, for the message after Ctrl-C.
    current_run: str | None = None
    #: The scheduler address of the fit (None: embedded), for the message when it is lost.
    current_address: str | None = None


session = _State()


CONFIG_NAME = "config.yaml"


HISTORY_NAME = "history.json"


#: Keys ``dem resume`` may change: they extend a run without changing its path.
RESUMABLE_KEYS = ("fit.max_iter", "fit.tol", "data.storage_options")


#: Keys of data/model/fit that may differ between a run directory's config and
#: a new one without making it another run: how long to iterate, and whether
#: partitions are cached (results do not depend on it, nor on the cluster).
_IGNORED_FOR_IDENTITY = {"fit.max_iter", "fit.tol", "fit.cache", "data.storage_options", "data.generate.path"}


#: Written into the run directory when `dem fit` generated the data it fitted.
GENERATED_NAME = "data_generated.json"


# markup off: paths, keys and notes may hold [brackets] that rich would eat.
out = Console(soft_wrap=True, highlight=False, markup=False)


err = Console(stderr=True, soft_wrap=True, highlight=False, markup=False)


def _fs(path: str, storage_options: dict | None = None) -> tuple[Any, str]:
    import fsspec

    return fsspec.core.url_to_fs(path, **(storage_options if "://" in path and storage_options else {}))


def _join(base: str, *names: str) -> str:
    return "/".join([base.rstrip("/"), *names]) if "://" in base else os.path.join(base, *names)


def _write_text(path: str, text: str, storage_options: dict | None = None) -> None:
    """Write ``text`` so readers never see half of it (temp file + rename locally)."""
    if "://" in path:
        fs, p = _fs(path, storage_options)
        with fs.open(p, "w") as fh:
            fh.write(text)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a full disk must not leave half a file behind
        raise


def _exists(path: str, storage_options: dict | None = None) -> bool:
    if "://" not in path:
        return os.path.exists(path)
    fs, p = _fs(path, storage_options)
    return bool(fs.exists(p))


def _read_json(path: str, storage_options: dict | None = None) -> Any:
    fs, p = _fs(path, storage_options)
    with fs.open(p, "r") as fh:
        return json.load(fh)


def _makedirs(path: str, storage_options: dict | None) -> None:
    if "://" in path:
        fs, p = _fs(path, storage_options)
        fs.makedirs(p, exist_ok=True)
    else:
        os.makedirs(path, exist_ok=True)


def _remove_tree(path: str, storage_options: dict | None) -> None:
    try:
        fs, p = _fs(path, storage_options)
        fs.rm(p, recursive=True)
    except Exception:
        pass


def _first_missing(path: str, storage_options: dict | None) -> str | None:
    """The outermost directory of ``path`` that does not exist yet (what a makedirs would create)."""
    if _exists(path, storage_options):
        return None
    if "://" in path:
        return path
    missing = path
    parent = os.path.dirname(missing)
    while parent != missing and not os.path.exists(parent):
        missing, parent = parent, os.path.dirname(parent)
    return missing


def _list(path: str, pattern: str) -> list[str]:
    fs, p = _fs(path)
    base = p.rstrip("/")
    try:
        found = fs.glob(f"{base}/{pattern}")
    except (OSError, ValueError):
        return []
    if "://" in path:
        proto = path.split("://", 1)[0]
        return [f"{proto}://{f}" for f in found]
    return list(found)


#: Logger levels `dem` changed, restored when :func:`main` returns (it also runs in-process in tests).
_SAVED_LEVELS: dict[str, int] = {}


def _quiet_logs() -> None:
    """Only CRITICAL from distributed and asyncio: their errors reach dem as exceptions, reported once.

    Client-side chatter (and asyncio's "exception never retrieved" after
    Ctrl-C) would bury the one line that matters. distributed.client has a
    level of its own, which importing distributed sets, so this runs again
    once distributed is imported.
    """
    import logging

    for name in ("distributed", "distributed.client", "asyncio"):
        logger = logging.getLogger(name)
        _SAVED_LEVELS.setdefault(name, logger.level)
        logger.setLevel(logging.CRITICAL)
