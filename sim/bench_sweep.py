"""Speed-up of a sweep from one worker to several, on the simulated board.

``python -m ziphalp.sim.bench_sweep [--workers 1,2] [--epochs N] [--out DIR]``

Runs the same grid (bits x sampling x seed on diabetes, 3-fold cross-validation,
ZipMLRegressor) through :func:`ziphalp.host.sweep.sweep` with each worker count, on
joblib's local processes and on a Dask ``LocalCluster``, one after the other in
this process, and reports the wall-clock seconds of each as a ratio to the
one-worker local run. The tables must be identical (a fit is deterministic);
the script fails if they are not. Each fit starts its own simulated board, so a
fit costs the board's start (a process and a socket) plus the epochs; the
speed-up is bounded by the cores (this machine has 2) and by the fits' count.
Writes ``bench_sweep.json`` and ``bench_sweep.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ziphalp.host.data import load
from ziphalp.host.sweep import sweep

__all__ = ["main", "measure"]

GRID = {"bits": [1, 2, 4, 8], "sampling": ["double", "single"], "seed": [0, 1]}


def measure(workers: list[int], epochs: int) -> list[dict]:
    """One run per (backend, workers); seconds and the speed-up over the first run."""
    data = load("diabetes")
    runs, reference = [], None
    for backend in ("loky", "dask"):
        for count in workers:
            result = sweep(data, GRID, params={"epochs": epochs, "timeout": 30.0}, folds=3,
                           workers=count, backend=backend)
            table = [{k: v for k, v in row.items() if k != "fit_seconds"}
                     for row in result.rows]
            if reference is None:
                reference = (table, result.seconds)
            elif table != reference[0]:
                raise SystemExit(f"bench_sweep: {backend} with {count} workers gave "
                                 "another table than one local worker")
            fits = len(result.rows) * result.folds
            runs.append({"backend": backend, "workers": count, "fits": fits,
                         "seconds": result.seconds,
                         "fit_seconds": sum(r["fit_seconds"] for r in result.rows) * 3,
                         "speedup": reference[1] / result.seconds})
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ziphalp.sim.bench_sweep",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="1,2", help="worker counts (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs a fit (default: %(default)s)")
    parser.add_argument("--out", default="results/sweep", help="output folder")
    args = parser.parse_args(argv)
    runs = measure([int(w) for w in args.workers.split(",")], args.epochs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"grid": GRID, "epochs": args.epochs, "folds": 3, "cores": os.cpu_count(),
                "runs": runs}
    (out / "bench_sweep.json").write_text(json.dumps(document, indent=2) + "\n")
    lines = [f"Sweep of {runs[0]['fits']} fits (diabetes, ZipMLRegressor, {args.epochs} "
             f"epochs, 3 folds) on {os.cpu_count()} cores", "",
             "| backend | workers | seconds | speed-up over 1 local worker |",
             "|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['workers']} | {r['seconds']:.1f} | {r['speedup']:.2f}x |"
              for r in runs]
    (out / "bench_sweep.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
