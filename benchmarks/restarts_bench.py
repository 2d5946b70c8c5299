"""R restarts sharing each data pass against one fit, in this process.

    flock /work/.heavy.lock python -m benchmarks.restarts_bench [--n 1000000 --restarts 8 --rounds 3]

The same measurement as ``python -m benchmarks.run --mode restarts``
(:func:`benchmarks.kernel_bench.restarts`): per round, a fresh LocalCluster
of two single-threaded workers fits ``n_init=1`` and ``n_init=R`` (same
``init_params``, ``tol=0``), alternating which goes first; the ratio of
seconds per iteration is reported as median and spread over the rounds.
``--stream`` reads every partition from Zarr in every iteration
(``cache=False``) instead of caching the data on the workers.
"""

from __future__ import annotations

import argparse
import json

from benchmarks import kernel_bench, workloads


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--d", type=int, default=16)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    ap.add_argument("--stream", action="store_true", help="cache=False: read Zarr in every iteration")
    ap.add_argument("--init-params", default="random_from_data")
    ap.add_argument("--data-dir", default=workloads.default_data_dir())
    ap.add_argument("--out", default=None, help="write the result as JSON here")
    args = ap.parse_args(argv)

    ds = workloads.ensure_dataset(args.data_dir, args.n, args.d, args.k, args.dtype, 0)
    init = workloads.ensure_initial_parameters(args.data_dir, ds["path"], args.k, 0)
    spec = {"n": args.n, "d": args.d, "k": args.k, "iters": args.iters, "workers": 2, "rounds": args.rounds,
            "restarts": args.restarts, "path": ds["path"], "init": init, "partition_rows": 125_000,
            "cache": not args.stream, "init_params": args.init_params}
    res = kernel_bench.restarts(spec)
    print(f"data: {ds['path']} ({args.n:,} x {args.d} {args.dtype}), K={args.k} full, "
          f"{'streaming from Zarr' if args.stream else 'cached on the workers'}, 2 workers x 1 thread")
    for r in res["rounds"]:
        print(f"  round {r['round']}: n_init=1 {r['one']['seconds_per_iter']:.3f} s/iter, "
              f"n_init={args.restarts} {r['many']['seconds_per_iter']:.3f} s/iter, ratio {r['ratio']:.2f}")
    q = res["ratio"]
    print(f"  ratio {args.restarts} restarts / 1: median {q['median']:.2f} [{q['min']:.2f}-{q['max']:.2f}] "
          f"(target <= 5)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1, default=str)


if __name__ == "__main__":
    main()
