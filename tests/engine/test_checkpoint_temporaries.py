"""A checkpoint write that fails (a full disk) leaves nothing half-written behind."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dem.engine import checkpoint as ckpt


def _full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_checkpoint_leaves_no_temporary_directory(tmp_path, monkeypatch):
    saver = ckpt.Checkpointer(ckpt.RunStore(str(tmp_path)), keep=3)
    saver.save(1, {"iteration": 1}, {"a": np.arange(3.0)})
    monkeypatch.setattr(ckpt.os, "fsync", _full_disk)
    with pytest.raises(OSError) as info:
        saver.save(2, {"iteration": 2}, {"a": np.arange(3.0)})
    assert info.value.errno == errno.ENOSPC
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names[0] == "LATEST" and len(names) == 2 and names[1].startswith("ckpt-00000001-")


def test_a_failed_pointer_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    store = ckpt.RunStore(str(tmp_path))
    monkeypatch.setattr(ckpt.os, "fsync", _full_disk)
    with pytest.raises(OSError):
        store.write_json({"name": "x"}, "checkpoints", "LATEST")
    assert os.listdir(tmp_path / "checkpoints") == []


def test_pointer_temporaries_of_a_killed_writer_are_pruned(tmp_path):
    saver = ckpt.Checkpointer(ckpt.RunStore(str(tmp_path)), keep=3)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "LATEST.tmp-0badc0de").write_text("{")
    (tmp_path / "checkpoints" / ".tmp-ckpt-00000001-deadbeef").mkdir()
    saver.save(1, {"iteration": 1}, {"a": np.arange(3.0)})
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names[0] == "LATEST" and len(names) == 2 and names[1].startswith("ckpt-00000001-")
