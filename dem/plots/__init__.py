"""Pictures of a fit: how EM converged, and where the components sit in the data.

Both functions draw with matplotlib's Agg canvas on a new
:class:`matplotlib.figure.Figure` (no pyplot, no GUI, no global backend
switch, safe in threads and on headless machines), or on the axes you pass —
e.g. from ``plt.subplots()`` in a notebook — and return the figure::

    from dem.plots import plot_convergence, plot_components, sample_rows
    plot_convergence(est).savefig("convergence.png")        # or a run directory
    plot_components(est, sample_rows("data.zarr")).savefig("components.png")

``dem fit`` writes both pictures into the run directory at the end
(:func:`write_run_pictures`).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from dem.plots.common import COMPONENTS_PNG, CONVERGENCE_PNG, SAMPLE_ROWS, _png_bytes, _write_bytes  # noqa: F401
from dem.plots.components import (  # noqa: F401
    Projection, ellipse_geometry, is_mixture, plot_components, projection_for, sample_rows,
)
from dem.plots.convergence import ConvergenceData, Curve, convergence_data, plot_convergence  # noqa: F401


def write_run_pictures(estimator: Any, run_dir: str, data: Any = None, *, variable: str | None = None,
                       storage_options: dict | None = None, convergence_source: Any = None,
                       restart_histories: Mapping[int, Sequence] | None = None,
                       n_rows: int = SAMPLE_ROWS) -> list[str]:
    """Write ``convergence.png`` (every model kind) and ``components.png`` (Gaussian mixtures) into ``run_dir``.

    Returns the paths written. HMMs get only the convergence picture
    (:func:`plot_components` draws the ellipses of Gaussian mixtures).

    ``data`` (a Zarr path/URL or an array) supplies the sample of at most
    ``n_rows`` rows drawn under the ellipses; ``projection="pca"`` is used
    when the data has more than two features. ``convergence_source``
    (default: the estimator) is what :func:`plot_convergence` reads — the
    run directory itself holds every restart's history, resumed parts
    included.
    """
    run_dir = os.fspath(run_dir)

    def join(name: str) -> str:
        return f"{run_dir.rstrip('/')}/{name}" if "://" in run_dir else os.path.join(run_dir, name)

    written = []
    source = estimator if convergence_source is None else convergence_source
    fig = plot_convergence(source, storage_options=storage_options, restart_histories=restart_histories)
    _write_bytes(join(CONVERGENCE_PNG), _png_bytes(fig), storage_options)
    written.append(join(CONVERGENCE_PNG))
    if not is_mixture(estimator):
        return written  # an HMM: states have no one picture in feature space
    sample = None
    if data is not None:
        sample = sample_rows(data, n_rows, variable=variable, storage_options=storage_options)
    projection = "pca" if int(estimator.n_features_in_) > 2 else None
    fig = plot_components(estimator, sample, projection=projection)
    _write_bytes(join(COMPONENTS_PNG), _png_bytes(fig), storage_options)
    written.append(join(COMPONENTS_PNG))
    return written
