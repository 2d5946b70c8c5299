"""The notebooks in notebooks/ run top to bottom on a fresh kernel.

They carry their own checks (recovered means against the generating ones,
the resumed iteration, the K that BIC picks against the true K); here they
must run without an error and show their pictures. The notebooks are stored
without outputs; nothing is written back.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _execute(name: str, cwd: Path) -> tuple[object, float]:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=120, allow_errors=False,
                                     resources={"metadata": {"path": str(cwd)}})
    t0 = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - t0


def _images(nb) -> int:
    return sum(1 for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []) if "image/png" in out.get("data", {}))


@pytest.mark.parametrize("name, pictures", [("quickstart.ipynb", 3), ("model_selection.ipynb", 2)])
def test_notebook_runs(name, pictures, tmp_path):
    stored = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in stored.cells if cell.cell_type == "code"), f"{name} is committed with outputs"
    nb, seconds = _execute(name, tmp_path)
    assert _images(nb) >= pictures
    assert seconds < 90, f"{name} took {seconds:.0f} s"
