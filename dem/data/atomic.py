"""Publishing a finished directory under its final name."""

from __future__ import annotations

import os
import shutil


def replace_directory(finished: str, path: str) -> None:
    """Move the finished directory ``finished`` to ``path``, replacing what is there.

    Readers see the old directory or the new one, never a half-written one:
    the old one is renamed aside first and removed only after the new one
    took its name (two renames, each atomic on POSIX).
    """
    if not os.path.exists(path):
        os.replace(finished, path)
        return
    old = f"{path}.old-{os.getpid()}"
    os.replace(path, old)
    os.replace(finished, path)
    shutil.rmtree(old, ignore_errors=True)
