"""Checkpoints in a run directory, on a filesystem or an object store (fsspec).

Layout of a run directory::

    run.json                      seed and fingerprint, written once at the start
    checkpoints/
      ckpt-00000012-1f3a9c0e/     one checkpoint, never overwritten
        arrays.npz                parameters (np.savez, loaded with allow_pickle=False)
        meta.json                 iteration, history, state, sha256 of arrays.npz
      LATEST                      pointer: {"name": "ckpt-00000012-1f3a9c0e", ...}
    model.zarr                    final model (dem.io)
    history.json                  final history

Atomicity. On a filesystem a checkpoint is written under ``.tmp-…`` and made
visible by one ``rename``; the pointer is replaced by rename too. On an object
store the checkpoint goes to a new key prefix that is never overwritten,
``meta.json`` (holding the checksum of ``arrays.npz``) last, then the small
``LATEST`` object is put. A checkpoint counts only if its ``meta.json``
parses, has this format version and the checksum of ``arrays.npz`` matches,
so a kill at any moment leaves either the old or the new checkpoint usable.

Nothing is unpickled: arrays are ``.npz`` read with ``allow_pickle=False``,
metadata is JSON.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem

from dem.engine.faults import maybe_crash
from dem.errors import CheckpointError

#: 2: one state per member (restarts share passes); 3: each member's whole strategy state (dem 0.2).
FORMAT_VERSION = 3
CHECKPOINTS = "checkpoints"
POINTER = "LATEST"
RUN_FILE = "run.json"
_NAME = re.compile(r"^ckpt-(\d{8})-([0-9a-f]{8})$")


class RunStore:
    """A run directory addressed by a local path or an fsspec URL."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = os.fspath(url)
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.local = isinstance(self.fs, LocalFileSystem)
        self.root = self.root.rstrip("/")

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open(self.path(*parts), "rb") as f:
            return f.read()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_bytes(*parts).decode("utf-8"))

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write one object; on a filesystem via a temporary name and a rename."""
        target = self.path(*parts)
        if self.local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except OSError:
                if os.path.exists(tmp):
                    os.remove(tmp)  # a full disk must not leave the temporary behind
                raise
        else:
            self.fs.pipe_file(target, data)

    def write_json(self, obj: Any, *parts: str) -> None:
        self.write_bytes(json.dumps(obj, indent=1, sort_keys=True).encode("utf-8"), *parts)

    def listdir(self, *parts: str) -> list[str]:
        try:
            entries = self.fs.ls(self.path(*parts), detail=False, refresh=True)
        except (FileNotFoundError, OSError):
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries]

    def remove(self, *parts: str) -> None:
        try:
            self.fs.rm(self.path(*parts), recursive=True)
        except (FileNotFoundError, OSError):
            pass


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


class Checkpointer:
    """Writes, prunes and finds checkpoints of one run directory.

    Parameters
    ----------
    store : RunStore
    keep : int
        Number of newest checkpoints kept; older ones are deleted after each
        successful write.
    """

    def __init__(self, store: RunStore, keep: int = 3) -> None:
        if keep < 1:
            raise CheckpointError(f"keep_checkpoints must be >= 1; got {keep}")
        self.store = store
        self.keep = keep

    def save(self, step: int, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
        """Write checkpoint number ``step`` and point ``LATEST`` at it; returns its name."""
        name = f"ckpt-{step:08d}-{uuid.uuid4().hex[:8]}"
        blob = _npz_bytes(arrays)
        meta = dict(meta, format_version=FORMAT_VERSION, step=step,
                    arrays_sha256=hashlib.sha256(blob).hexdigest())
        meta_blob = json.dumps(meta, indent=1, sort_keys=True).encode("utf-8")
        s = self.store
        if s.local:
            tmp = s.path(CHECKPOINTS, f".tmp-{name}")
            os.makedirs(tmp, exist_ok=True)
            try:
                for fname, data in (("arrays.npz", blob), ("meta.json", meta_blob)):
                    with open(os.path.join(tmp, fname), "wb") as f:
                        f.write(data)
                        maybe_crash("checkpoint-write")
                        f.flush()
                        os.fsync(f.fileno())
                os.replace(tmp, s.path(CHECKPOINTS, name))
            except OSError:
                import shutil

                shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not leave half a checkpoint
                raise
        else:
            s.write_bytes(blob, CHECKPOINTS, name, "arrays.npz")
            maybe_crash("checkpoint-write")
            s.write_bytes(meta_blob, CHECKPOINTS, name, "meta.json")
        maybe_crash("checkpoint-pointer")
        s.write_json({"name": name, "step": step}, CHECKPOINTS, POINTER)
        self._prune(keep_name=name)
        return name

    def _prune(self, keep_name: str) -> None:
        names = sorted((n for n in self.store.listdir(CHECKPOINTS) if _NAME.match(n)),
                       key=lambda n: int(_NAME.match(n).group(1)))
        for n in names[: max(0, len(names) - self.keep)]:
            if n != keep_name:
                self.store.remove(CHECKPOINTS, n)
        for n in self.store.listdir(CHECKPOINTS):
            # Temporaries of killed writers: checkpoint directories and LATEST.tmp-… files.
            if ".tmp-" in n and n != f".tmp-{keep_name}":
                self.store.remove(CHECKPOINTS, n)

    def _validate(self, name: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Meta and arrays of checkpoint ``name``; raises ValueError saying what is wrong."""
        s = self.store
        try:
            meta = s.read_json(CHECKPOINTS, name, "meta.json")
        except FileNotFoundError:
            raise ValueError("meta.json is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("meta.json is not valid JSON (truncated?)") from None
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            got = meta.get("format_version") if isinstance(meta, dict) else None
            raise ValueError(f"format version {got!r}, this dem reads {FORMAT_VERSION}")
        try:
            blob = s.read_bytes(CHECKPOINTS, name, "arrays.npz")
        except FileNotFoundError:
            raise ValueError("arrays.npz is missing") from None
        if hashlib.sha256(blob).hexdigest() != meta.get("arrays_sha256"):
            raise ValueError("arrays.npz does not match its checksum (truncated or altered)")
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:
            raise ValueError(f"arrays.npz cannot be read: {exc}") from None
        return meta, arrays

    def load_latest(self) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]] | None:
        """The newest valid checkpoint, or None; with notes on anything skipped.

        The ``LATEST`` pointer names the checkpoint made visible last; a
        complete checkpoint newer than it (a kill between writing it and
        moving the pointer) is valid too. Damaged checkpoints, a pointer to a
        missing checkpoint and foreign files are reported in the notes and
        passed over.
        """
        notes: list[str] = []
        entries = self.store.listdir(CHECKPOINTS)
        names = sorted((n for n in entries if _NAME.match(n)),
                       key=lambda n: int(_NAME.match(n).group(1)), reverse=True)
        foreign = [n for n in entries if not _NAME.match(n) and n != POINTER and not n.startswith(".tmp-")]
        if foreign:
            notes.append(f"ignored foreign entries in {CHECKPOINTS}/: {', '.join(sorted(foreign))}")
        pointed = None
        if POINTER in entries:
            try:
                pointed = self.store.read_json(CHECKPOINTS, POINTER).get("name")
            except Exception:
                notes.append(f"{CHECKPOINTS}/{POINTER} is unreadable; searching for the newest valid checkpoint")
            if pointed is not None and pointed not in names:
                notes.append(f"{CHECKPOINTS}/{POINTER} points to missing checkpoint {pointed}; "
                             "searching for the newest valid checkpoint")
        for i, name in enumerate(names):
            try:
                meta, arrays = self._validate(name)
            except ValueError as exc:
                notes.append(f"checkpoint {name} is damaged ({exc}); falling back to an older one")
                continue
            if i > 0 or notes:
                notes.append(f"resuming from checkpoint {name} (iteration {meta.get('iteration')})")
            return meta, arrays, notes
        if names:
            notes.append("no valid checkpoint found; starting from the beginning")
        # Nothing to resume; an empty meta still carries the notes to the user.
        return ({}, {}, notes) if notes else None


def compare_fingerprints(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they match)."""
    diffs = []
    for section in sorted(set(saved) | set(current)):
        a, b = saved.get(section, {}), current.get(section, {})
        if not isinstance(a, dict) or not isinstance(b, dict):
            if a != b:
                diffs.append(f"{section}: {a!r} → {b!r}")
            continue
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: run has {a.get(key)!r}, now {b.get(key)!r}")
    return diffs
