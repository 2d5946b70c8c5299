"""Benchmarks of dem against scikit-learn and Spark (issue #4).

Run everything with one command from the repository root::

    python -m benchmarks.run

See ``benchmarks/README.md`` for the workloads, the flags and the output.
Every measurement runs in its own subprocess (fresh peak-RSS counters, a
hard timeout, clusters always closed), driven by :mod:`benchmarks.run`.
"""
