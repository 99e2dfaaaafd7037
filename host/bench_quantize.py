"""Throughput of the host's quantisation and packing (``python -m ziphalp.host.bench_quantize``).

For each precision k, sampling, kind of levels (uniform: the arithmetic fast
path; optimal: the grid-cell lookup) and engine, times quantising and packing a
random ``n x d`` float64 feature matrix on one core, best of ``--repeat`` runs
(``time.perf_counter``), and prints millions of feature values per second for
quantisation alone, packing alone and both together (:func:`encode_epoch`, what
training calls). ``--json PATH`` also writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from ziphalp.hw.params import BOARD_PARAMS, EngineParams

from .levels import grid_levels, optimal_levels, uniform_levels
from .quantize import SAMPLINGS, encode_epoch, pack_samples, quantize_features

#: The engines measured: the iCEBreaker's and a wide one.
ENGINES: dict[str, EngineParams] = {
    "icebreaker": BOARD_PARAMS["icebreaker"],
    "w64-l32": EngineParams(beat_bits=64, lanes=32),
}


def _best(repeat: int, run, *args) -> float:
    """Shortest of ``repeat`` timed calls ``run(*args)``, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def measure(n: int, d: int, ks: list[int], samplings: list[str], repeat: int,
            seed: int) -> list[dict]:
    """One row per (engine, k, sampling, levels kind): M values/s of each stage."""
    rng = np.random.default_rng(seed)
    features = np.clip(rng.normal(0.0, 0.35, (n, d)), -1.0, 1.0)
    labels = rng.integers(-1 << 14, 1 << 14, n).astype(np.int16)
    values = n * d / 1e6
    rows = []
    for k in ks:
        table = {"uniform": uniform_levels(k),
                 "optimal": grid_levels(optimal_levels(features[:20_000], k))}
        for kind, levels in table.items():
            for sampling in samplings:
                double = sampling == "double"
                fields = quantize_features(features, levels, k, sampling, rng)
                quant = _best(repeat, quantize_features, features, levels, k, sampling, rng)
                for engine, params in ENGINES.items():
                    pack = _best(repeat, pack_samples, fields, labels, params, k, double)
                    total = _best(repeat, encode_epoch, features, labels, levels, k, sampling,
                                  rng, params)
                    rows.append({"engine": engine, "k": k, "sampling": sampling,
                                 "levels": kind, "values": n * d,
                                 "quantise_mvps": values / quant, "pack_mvps": values / pack,
                                 "total_mvps": values / total})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ziphalp.host.bench_quantize",
        description="Measure quantisation and packing throughput (M values/s, one core).")
    parser.add_argument("--samples", type=int, default=100_000, help="rows n (default 100000)")
    parser.add_argument("--features", type=int, default=64, help="columns d (default 64)")
    parser.add_argument("--k", default="1,2,4,8", help="precisions, comma-separated")
    parser.add_argument("--sampling", default="double,single",
                        help=f"comma-separated, of {', '.join(SAMPLINGS)}")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing, best kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.k.split(",")]
    samplings = args.sampling.split(",")
    if any(s not in SAMPLINGS for s in samplings):
        parser.error(f"--sampling takes {', '.join(SAMPLINGS)}")
    rows = measure(args.samples, args.features, ks, samplings, args.repeat, args.seed)
    print(f"{args.samples} x {args.features} float64 features; M values/s, "
          f"best of {args.repeat}")
    print(f"{'engine':<11} {'k':>2} {'sampling':<8} {'levels':<8} "
          f"{'quantise':>9} {'pack':>9} {'total':>9}")
    for r in rows:
        print(f"{r['engine']:<11} {r['k']:>2} {r['sampling']:<8} {r['levels']:<8} "
              f"{r['quantise_mvps']:9.1f} {r['pack_mvps']:9.1f} {r['total_mvps']:9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": args.samples, "features": args.features,
                       "repeat": args.repeat, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
