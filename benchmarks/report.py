"""Derived numbers (ratios, GFLOP/s, agreement) and the printed table."""

from __future__ import annotations

from typing import Any


def _ok(row: dict[str, Any]) -> bool:
    return row.get("status") == "ok" and row.get("seconds_per_iter") is not None


def blas_summary(out: dict[str, Any]) -> dict[str, float]:
    """Best rate of each kernel over the BLAS runs (before and after the rows)."""
    best: dict[str, float] = {}
    for run in out.get("blas", []):
        if run.get("status") != "ok":
            continue
        for key, val in run.items():
            if isinstance(val, dict) and "best_gflops" in val:
                best[key] = max(best.get(key, 0.0), val["best_gflops"])
    return best


def nominal_flops(n: int, d: int, k: int, covariance_type: str) -> float | None:
    """4·N·K·D² per iteration (whitening GEMM + second-moment GEMM), full covariance only."""
    return 4.0 * n * k * d * d if covariance_type == "full" else None


def derive(out: dict[str, Any]) -> None:
    cfg = out["config"]
    blas = blas_summary(out)
    out["blas_summary"] = blas
    flops = nominal_flops(cfg["n"], cfg["d"], cfg["k"], cfg["covariance_type"])
    rows = out["rows"]
    for row in rows:
        if row.get("group") in ("W1", "float32") and _ok(row) and flops:
            g = flops / row["seconds_per_iter"] / 1e9
            kernel = "sgemm" if row.get("dtype") == "float32" else "dgemm"
            row["gflops_nominal"] = g
            if blas.get(f"{kernel}_2t"):
                row["pct_of_gemm_2t"] = 100.0 * g / blas[f"{kernel}_2t"]
            if blas.get(f"{kernel}_1t"):
                row["pct_of_2x_gemm_1t"] = 100.0 * g / (2.0 * blas[f"{kernel}_1t"])

    ratios: dict[str, Any] = {}
    for group in ("W1", "float32"):
        members = [r for r in rows if r.get("group") == group]
        ref = next((r for r in members if r.get("reference") and _ok(r)), None) or \
            next((r for r in members if r.get("engine") == "dem" and r.get("client", "cluster") and _ok(r)
                  and "cluster memory" in r.get("name", "")), None)
        if ref is None:
            continue
        for r in members:
            if _ok(r) and r is not ref:
                r["ratio_vs_dem"] = r["seconds_per_iter"] / ref["seconds_per_iter"]
                ratios[f"{group}: {r['name']} / {ref['name']}"] = r["ratio_vs_dem"]
        ref["ratio_vs_dem"] = 1.0
        # The same initial parameters and iterations must end at the same likelihood. Spark MLlib
        # is listed apart: its E-step works with densities (pdf + EPSILON), not in log space, and
        # adds no reg_covar, so where densities underflow (D=16 here) its iterates differ.
        lls = {r["name"]: r["final_mean_log_likelihood"] for r in members
               if _ok(r) and r.get("final_mean_log_likelihood") is not None and r.get("engine") in ("dem", "sklearn")}
        if lls and ref["name"] in lls:
            base = lls[ref["name"]]
            out.setdefault("agreement", {})[group] = {
                "reference": ref["name"], "reference_final_mean_log_likelihood": base,
                "max_abs_difference": max(abs(v - base) for v in lls.values()), "by_row": lls,
                "spark": {r["name"]: {"final_mean_log_likelihood": r.get("final_mean_log_likelihood"),
                                      "difference": (r["final_mean_log_likelihood"] - base)
                                      if r.get("final_mean_log_likelihood") is not None else None,
                                      "same_initial_parameters": r.get("same_initial_parameters")}
                          for r in members if _ok(r) and r.get("engine") == "spark"},
            }
        stream = next((r for r in members if r.get("mode") == "zarr" and _ok(r)), None)
        if stream is not None:
            ratios[f"{group}: streaming / in-memory (dem cluster)"] = stream["seconds_per_iter"] / ref["seconds_per_iter"]
    dem64 = next((r for r in rows if r.get("group") == "W1" and r.get("reference") and _ok(r)), None)
    dem32 = next((r for r in rows if r.get("group") == "float32" and r.get("engine") == "dem" and _ok(r)), None)
    if dem64 and dem32:
        ratios["dem float64 / float32 speed-up (target >= 1.6)"] = dem64["seconds_per_iter"] / dem32["seconds_per_iter"]

    for r in rows:
        if r.get("group") == "paired" and r.get("status") == "ok":
            ref = r["reference"]
            for label, x in r["ratio_to_reference"].items():
                if label != ref:
                    ratios[f"paired (median of {r['rounds']} alternating rounds): {label} / {ref}"] = x
            f32 = r["ratio_to_reference"].get("in-memory float32")
            if f32:
                ratios["paired: dem float64 / float32 speed-up (target >= 1.6)"] = 1.0 / f32
            if flops:
                r["gflops_nominal"] = {label: flops / v / 1e9 for label, v in r["seconds_per_iter"].items() if v}

    over = [r for r in rows if r.get("group") == "overhead" and _ok(r)]
    by_parts = {(r["partitions"], r.get("client")): r for r in over}
    cl = sorted(p for p, c in by_parts if c == "cluster")
    if len(cl) >= 2:
        lo, hi = by_parts[(cl[0], "cluster")], by_parts[(cl[-1], "cluster")]
        ratios[f"overhead: s/partition/iter at {cl[-1]} / at {cl[0]} (1.0 = linear)"] = (
            hi["seconds_per_partition_per_iter"] / lo["seconds_per_partition_per_iter"])
    out["ratios"] = ratios


def _f(x: Any, fmt: str = "{:.3f}", none: str = "—") -> str:
    if x is None:
        return none
    try:
        return fmt.format(x)
    except (TypeError, ValueError):
        return str(x)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def _workers_peak(row: dict[str, Any]) -> str:
    w = row.get("peak_rss_workers_mb")
    if isinstance(w, dict) and w:
        return f"{max(w.values()):.0f}"
    if row.get("peak_rss_jvm_and_python_workers_mb"):
        return f"{row['peak_rss_jvm_and_python_workers_mb']:.0f}*"
    return "—"


def _spread(s: dict[str, Any] | None, fmt: str = "{:.2f}") -> str:
    if not s or s.get("median") is None:
        return "—"
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}–{fmt.format(s['max'])}]"


def _kernel_sections(out: dict[str, Any]) -> list[str]:
    """The w1 and restarts modes: median [min–max] over alternating rounds."""
    parts: list[str] = []
    cfg = out["config"]
    for r in [r for r in out["rows"] if r.get("group") == "kernel"]:
        parts += ["", f"W1 kernel: N={cfg['n']:,} D={cfg['d']} K={cfg['k']} {cfg['covariance_type']}, "
                      f"{cfg['iters']} iterations, 2 single-threaded workers, data cached on them; "
                      f"median [min–max] of {cfg.get('rounds')} alternating rounds"]
        if r.get("status") != "ok":
            parts.append(f"  {r.get('status')}: {r.get('reason')}")
            continue
        body = [
            ["workers' dgemm, summed (GFLOP/s)", _spread(r.get("workers_dgemm_gflops"), "{:.1f}")],
            ["limit: 4·N·K·D² at that rate (s/iter)", _spread(r.get("limit_seconds"), "{:.3f}")],
            ["dem float64 (s/iter)", _spread(r.get("dem_float64_seconds_per_iter"), "{:.3f}")],
            ["dem float32, partitions of the float64 fit's bytes (s/iter)",
             _spread(r.get("dem_float32_seconds_per_iter"), "{:.3f}")],
            ["dem float32, partitions of the float64 fit's rows (s/iter)",
             _spread(r.get("dem_float32_same_rows_seconds_per_iter"), "{:.3f}")],
            ["scikit-learn (s/iter)", _spread(r.get("sklearn_seconds_per_iter"), "{:.3f}")],
            ["fraction of the limit, float64 (target >= 0.50)", _spread(r.get("fraction_of_limit"))],
            ["  the same against the E-step tasks' busy time per worker", _spread(r.get("estep_fraction_of_limit"))],
            ["float32 speed-up over float64 (target >= 1.8)", _spread(r.get("float32_speedup"))],
            ["  the same, E-step tasks' busy time per worker", _spread(r.get("estep_float32_speedup"))],
            ["  the same per iteration, float32 partitions of the float64 fit's rows",
             _spread(r.get("float32_speedup_same_rows"))],
            ["  the same, the kernel alone in one process (per row)", _spread(r.get("kernel_float32_speedup"))],
            ["scikit-learn / dem float64", _spread(r.get("sklearn_over_dem"))],
        ]
        parts.append(_table(["figure", "median [min–max]"], body))
        if r.get("worker_blas"):
            parts.append("  workers' BLAS: " + "; ".join(r["worker_blas"]))
        if r.get("dem_vs_sklearn_lower_bound_max_abs_difference") is not None:
            parts.append(f"  dem vs scikit-learn final lower bound: max |Δ| = "
                         f"{r['dem_vs_sklearn_lower_bound_max_abs_difference']:.2e}")
    for r in [r for r in out["rows"] if r.get("group") == "restarts"]:
        parts += ["", f"restarts: n_init={r.get('restarts', '?')} against n_init=1 (s/iter, data cached on "
                      f"2 single-threaded workers), median [min–max] of {cfg.get('rounds')} rounds"]
        if r.get("status") != "ok":
            parts.append(f"  {r.get('status')}: {r.get('reason')}")
            continue
        parts.append(_table(["figure", "median [min–max]"], [
            ["n_init=1 (s/iter)", _spread(r.get("one_seconds_per_iter"), "{:.3f}")],
            [f"n_init={r.get('restarts')} (s/iter)", _spread(r.get("many_seconds_per_iter"), "{:.3f}")],
            ["ratio (target <= 5)", _spread(r.get("ratio"))],
        ]))
    return parts


def render(out: dict[str, Any]) -> str:
    cfg = out["config"]
    parts = []
    m = out["machine"]
    parts.append(f"machine: {m.get('cpu')} ({m.get('logical_cpus')} CPUs, {m.get('memory_gb')} GB), load "
                 f"{m['load_average'][0]:.1f} at start, {m.get('load_average_end', [float('nan')])[0]:.1f} at end")
    bl = [r for r in out.get("blas", []) if r.get("status") == "ok"]
    if bl:
        libs = sorted({f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')})"
                       for i in bl[0].get("threadpool_info", []) if i.get("user_api") == "blas"})
        parts.append("BLAS: " + "; ".join(libs) + (f"; env {bl[0].get('env')}" if bl[0].get("env") else ""))
        parts.append("GEMM 2000x2000 best GFLOP/s (before, after):  " + "  ".join(
            f"{k} " + "/".join(_f(r.get(k, {}).get("best_gflops"), "{:.1f}") for r in bl)
            for k in ("dgemm_1t", "dgemm_2t", "sgemm_1t", "sgemm_2t")))
    parts += _kernel_sections(out)
    for group, title in (("W1", f"W1: N={cfg['n']:,} D={cfg['d']} K={cfg['k']} {cfg['covariance_type']}, "
                                f"{cfg['iters']} iterations (s/iter = median of iterations 2..n)"),
                         ("float32", "W1 in float32")):
        rows = [r for r in out["rows"] if r.get("group") == group]
        if not rows:
            continue
        body = []
        for r in rows:
            if r.get("status") != "ok":
                body.append([r.get("name", "?"), r.get("status", "?"), "", "", "", "", "", "", "", "", ""])
                continue
            body.append([
                r["name"], _f(r.get("seconds_per_iter")), _f(r.get("first_iter_seconds") or r.get("wall_per_iter")),
                _f(r.get("ratio_vs_dem"), "{:.2f}x"), _f(r.get("gflops_nominal"), "{:.1f}"),
                _f(r.get("pct_of_gemm_2t"), "{:.0f}%"), _f(r.get("pct_of_2x_gemm_1t"), "{:.0f}%"),
                _f(r.get("peak_rss_driver_mb"), "{:.0f}"),
                _workers_peak(r), _f(r.get("worker_minor_faults_per_iter") and r["worker_minor_faults_per_iter"] / 1e3, "{:.0f}k"),
                _f(r.get("final_mean_log_likelihood"), "{:.6f}"),
            ])
        parts += ["", title, _table(["row", "s/iter", "1st/wall", "vs dem", "GFLOP/s", "%gemm2T", "%2x1T", "drv MB",
                                     "wrk MB", "wrk faults/it", "final LL"], body)]
        notes = [f"  {r['name']}: {r['status']}: {r.get('reason')}" for r in rows if r.get("status") != "ok"]
        parts += notes
    if any(r.get("group") in ("W1", "float32") for r in out["rows"]):
        parts.append("  GFLOP/s counts 4·N·K·D² per iteration; %gemm2T is against the best 2-thread GEMM rate of the "
                     "same dtype, %2x1T against twice the best 1-thread rate. sklearn '1st/wall' is its first iteration; Spark's is wall/maxIter (incl. data "
                     "conversion), its s/iter is (T_iters − T_1)/(iters − 1). wrk MB: max over workers (* = Spark JVM "
                     "+ Python workers, summed); wrk faults/it: minor page faults of all workers per iteration.")
    for r in [r for r in out["rows"] if r.get("group") == "paired"]:
        parts += ["", f"dem variants in alternation ({r.get('rounds')} rounds, fresh cluster per fit; "
                      "ratio = median of per-round ratios to the first)"]
        if r.get("status") != "ok":
            parts.append(f"  {r.get('status')}: {r.get('reason')}")
            continue
        body = [[label, _f(r["seconds_per_iter"][label]),
                 " ".join(_f(x, "{:.2f}") for x in r["seconds_per_iter_by_round"][label]),
                 _f(r["ratio_to_reference"][label], "{:.2f}x"),
                 _f((r.get("gflops_nominal") or {}).get(label), "{:.1f}"),
                 _f((r.get("worker_minor_faults_per_iter") or {}).get(label) and
                    r["worker_minor_faults_per_iter"][label] / 1e3, "{:.0f}k")]
                for label in r["seconds_per_iter"]]
        parts.append(_table(["variant", "s/iter", "by round", "ratio", "GFLOP/s", "wrk faults/it"], body))

    over = [r for r in out["rows"] if r.get("group") == "overhead"]
    if over:
        body = []
        for r in over:
            if r.get("status") != "ok":
                body.append([r.get("name", "?"), r.get("status", "?"), "", "", "", "", "", ""])
                continue
            build = r.get("driver_graph_build_seconds") or []
            body.append([r["name"], _f(r.get("seconds_per_iter")), _f(r.get("first_iter_seconds")),
                         _f(r.get("last_iter_seconds")),
                         _f(r.get("seconds_per_partition_per_iter") and 1e3 * r["seconds_per_partition_per_iter"], "{:.3f}"),
                         _f(sorted(build)[len(build) // 2] if build else None),
                         {True: "yes", False: "no"}.get(r.get("grows"), "n/a"), _f(r.get("slope_seconds_per_iter"), "{:+.4f}")])
        parts += ["", "engine overhead (tiny partitions)",
                  _table(["row", "s/iter", "first", "last", "ms/part/iter", "graph build s", "grows?", "slope s/iter"], body)]
    bigs = [r for r in out["rows"] if r.get("group") == "big"]
    for r in bigs:
        parts += ["", "larger than memory"]
        if r.get("status") != "ok":
            parts.append(f"  {r.get('status')}: {r.get('reason')}")
            continue
        parts.append(
            f"  data {r.get('data_bytes', 0) / 1e9:.2f} GB = {r.get('data_over_memory_limit', 0):.1f}x workers' total "
            f"limit {r.get('workers_total_memory_limit', 0) / 2**30:.2f} GiB; {r.get('n_partitions')} partitions of "
            f"{r.get('partition_bytes', 0) / 2**20:.0f} MiB; cache={r.get('cache')} -> "
            f"{'streaming' if r.get('streaming') else 'CACHED'}")
        parts.append(
            f"  completed: {r.get('completed')}  iterations: {r.get('iterations')}  s/iter: {_f(r.get('seconds_per_iter'))}"
            f"  stream GB/s: {_f(r.get('stream_gb_per_s'), '{:.2f}')}  worker restarts: {r.get('worker_restarts')}"
            f"  spilled: {r.get('spilled_anything')}  peak worker RSS MB: {_workers_peak(r)}"
            f"  driver MB: {_f(r.get('peak_rss_driver_mb'), '{:.0f}')}"
            f"  worker faults/iter: {_f(r.get('worker_minor_faults_per_iter'), '{:.3g}')}"
            f"  worker sys s/iter: {_f(r.get('worker_system_seconds_per_iter'), '{:.1f}')}"
            + (f"  error: {r['error']}" if r.get("error") else ""))
    if out.get("ratios"):
        parts += ["", "ratios"] + [f"  {k}: {v:.2f}" for k, v in out["ratios"].items()]
    for group, a in (out.get("agreement") or {}).items():
        parts.append(f"  {group} agreement (same init, final-parameter mean log-likelihood): max |Δ| = "
                     f"{a['max_abs_difference']:.2e} over {len(a['by_row'])} dem/sklearn rows")
        for name, sp in a.get("spark", {}).items():
            if sp.get("difference") is not None:
                parts.append(f"    {name}: Δ = {sp['difference']:+.3g} ("
                             + ("same initial parameters; MLlib's E-step uses densities + EPSILON, not log space, "
                                "and no reg_covar" if sp.get("same_initial_parameters") else "its own random init")
                             + ")")
    return "\n".join(parts)
