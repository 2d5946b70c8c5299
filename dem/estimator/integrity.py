"""A saved model's integrity: a checksum written with it, verified on load; atomic writes.

A model is small, so it is verified whole when it is read: every array is
present, has the shape it was written with (and the shape the model's sizes
imply), floating-point values are finite (a missing Zarr chunk reads back as
NaN), and values and attributes match the checksum written with them. A
damaged model is refused with one line naming the first cause.

Writes go to a temporary name and are renamed into place; a failed write
removes its temporary, and one left by a killed process is collected by the
next write to the same directory.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from dem.data.atomic import replace_directory
from dem.errors import CheckpointError

#: Dataset attribute holding the checksum of a saved model (JSON text, see :func:`model_checksum`).
CHECKSUM_ATTR = "dem_checksum"


# -- integrity ---------------------------------------------------------------

def _array_digest(values: np.ndarray) -> str:
    """sha256 of an array's values, independent of byte order and of how strings are typed.

    Zarr hands numbers back in native byte order and strings as objects or
    fixed-width unicode depending on the version, so strings are hashed as
    their JSON text and numbers as little-endian bytes of their dtype.
    """
    a = np.asarray(values)
    h = hashlib.sha256()
    if a.dtype.kind in "OUST":
        h.update(json.dumps([str(v) for v in a.ravel().tolist()]).encode("utf-8"))
    else:
        h.update(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes())
    return h.hexdigest()


def _attrs_digest(attrs: Mapping[str, Any]) -> str:
    body = {k: v for k, v in attrs.items() if k != CHECKSUM_ATTR}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def model_checksum(ds: Any) -> dict[str, Any]:
    """Shapes and sha256 digests of every array (parameters and coordinates) and of the attributes.

    Parameters
    ----------
    ds : xarray.Dataset
        A model as written by ``save`` (any family).

    Returns
    -------
    dict
        ``{"arrays": {name: {"shape": [...], "sha256": ...}}, "attrs_sha256": ...}``;
        :func:`with_checksum` stores it in the attribute ``dem_checksum``.
    """
    arrays = {str(name): {"shape": [int(n) for n in var.shape], "sha256": _array_digest(var.values)}
              for name, var in ds.variables.items()}
    return {"arrays": arrays, "attrs_sha256": _attrs_digest(ds.attrs)}


def with_checksum(ds: Any) -> Any:
    """A shallow copy of ``ds`` whose attributes carry :func:`model_checksum` (for :func:`verify_model`)."""
    out = ds.copy(deep=False)
    out.attrs = {k: v for k, v in ds.attrs.items() if k != CHECKSUM_ATTR}
    out.attrs[CHECKSUM_ATTR] = json.dumps(model_checksum(out), sort_keys=True)
    return out


def verify_model(ds: Any, where: str, required: Sequence[str] = (),
                 shapes: Mapping[str, tuple[int, ...]] | None = None) -> None:
    """Refuse a damaged model with one line naming what is wrong.

    Checks, in this order, so the message names the first cause rather than
    its consequences: every array the checksum lists (and every ``required``
    one) is present; each has the shape written with it and, if given, the
    shape in ``shapes`` that the model's sizes imply; floating-point arrays
    are finite (a missing Zarr chunk reads back as the fill value, NaN);
    values and attributes match their checksums. A model written before
    checksums existed gets every check but the last.

    Parameters
    ----------
    ds : xarray.Dataset
        The model, loaded into memory.
    where : str
        The model's path or URL, for the message.
    required : sequence of str
        Arrays the family needs.
    shapes : mapping, optional
        Expected shape per array, from the family's sizes (e.g. ``means``:
        ``(n_components, n_features)``).

    Raises
    ------
    dem.errors.CheckpointError
    """
    def damaged(what: str) -> CheckpointError:
        return CheckpointError(f"the model at {where!r} is damaged: {what}; save or fit it again")

    recorded: dict[str, Any] = {}
    attrs_sha = None
    text = ds.attrs.get(CHECKSUM_ATTR)
    if text is not None:
        try:
            checksum = json.loads(text) if isinstance(text, str) else dict(text)
            recorded = dict(checksum["arrays"])
            attrs_sha = checksum["attrs_sha256"]
        except (TypeError, ValueError, KeyError):
            raise damaged(f"its {CHECKSUM_ATTR} attribute cannot be read") from None
    names = list(dict.fromkeys([*required, *recorded]))
    for name in names:
        if name not in ds.variables:
            raise damaged(f"array {name!r} is missing")
    for name in names:
        shape = tuple(int(n) for n in ds.variables[name].shape)
        if name in recorded and shape != tuple(recorded[name]["shape"]):
            raise damaged(f"array {name!r} has shape {shape}, it was written with {tuple(recorded[name]['shape'])}")
        if shapes is not None and name in shapes and shape != tuple(shapes[name]):
            raise damaged(f"array {name!r} has shape {shape}, the model's sizes need {tuple(shapes[name])}")
    for name in names or list(ds.data_vars):
        values = np.asarray(ds.variables[name].values)
        if values.dtype.kind in "fc":
            bad = ~np.isfinite(values)
            if bad.any():
                kind = "NaN" if np.isnan(values[bad]).all() else "non-finite"
                raise damaged(f"array {name!r} holds {int(bad.sum())} {kind} value{'s' if bad.sum() != 1 else ''} "
                              f"of {values.size} (a chunk is missing or unreadable)")
    for name in recorded:
        if _array_digest(ds.variables[name].values) != recorded[name]["sha256"]:
            raise damaged(f"array {name!r} does not match the checksum written with it")
    if attrs_sha is not None and _attrs_digest(ds.attrs) != attrs_sha:
        raise damaged("its attributes (hyperparameters, history) do not match the checksum written with them")


# -- writing -------------------------------------------------------------------

_TEMP_SUFFIX = re.compile(r"\.(tmp|old)-(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def collect_stale_temporaries(directory: str, names: Sequence[str]) -> list[str]:
    """Remove ``<name>.tmp-<pid>`` / ``<name>.old-<pid>`` left in ``directory`` by dead processes.

    dem writes files and model groups under such names and renames them into
    place; a process killed in between (or stopped by a full disk before it
    could clean up) leaves them behind. Only the temporaries of ``names``
    (what dem writes there: never a user's own ``*.old-2024``) and only
    those of processes no longer running on this machine are removed, so a
    concurrent writer's are not. Returns the removed paths. URLs are left
    alone (nothing there is written under a temporary name).
    """
    if "://" in directory or not os.path.isdir(directory):
        return []
    removed = []
    for name in names:
        for path in sorted(glob.glob(os.path.join(glob.escape(directory), glob.escape(name) + ".*-*"))):
            m = _TEMP_SUFFIX.search(path)
            if (m is None or os.path.basename(path)[: m.start() - len(path)] != name
                    or int(m.group(2)) == os.getpid() or _pid_alive(int(m.group(2)))):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                try:
                    os.remove(path)
                except OSError:
                    continue
            removed.append(path)
    return removed


def write_atomically(ds: Any, path: str, storage_options: dict | None = None) -> None:
    """Write a Dataset as a Zarr group with its checksum: temp dir + rename locally, straight to a URL otherwise.

    A failed local write (a full disk, a permission error) removes its
    temporary directory before the error propagates; one left by a killed
    process is collected by the next write to the same directory.
    """
    ds = with_checksum(ds)
    if "://" in path:
        ds.to_zarr(path, mode="w", storage_options=storage_options, consolidated=True)
        return
    collect_stale_temporaries(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.to_zarr(tmp, mode="w", consolidated=True)
        replace_directory(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
