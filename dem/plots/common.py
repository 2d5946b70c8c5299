"""What both pictures share: file names, colours, a headless figure, PNG bytes written atomically."""

from __future__ import annotations

import io
import os
from typing import Any

SAMPLE_ROWS = 20_000
CONVERGENCE_PNG = "convergence.png"
COMPONENTS_PNG = "components.png"
#: Bytes read at most when sampling rows from Zarr chunks.
_SAMPLE_READ_BYTES = 256 * 2**20
_BEST_COLOUR = "#1f4e9c"
_OTHER_COLOURS = ("#e07b39", "#3a9e5f", "#9b59b6", "#c0392b", "#7f8c8d", "#b8a200", "#17a2b8")
_RESUMED_COLOUR = "#6c6c6c"


def _new_figure(nrows: int = 1, figsize: tuple[float, float] = (7.0, 5.0), **subplot_kw: Any) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, squeeze=False, **subplot_kw)[:, 0]
    return fig, axes



def _png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _write_bytes(path: str, data: bytes, storage_options: dict | None) -> None:
    if "://" in path:
        import fsspec

        fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
        fs.pipe_file(p, data)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)  # a full disk must not leave half a picture behind
        raise
