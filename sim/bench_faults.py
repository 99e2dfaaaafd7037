"""Training through a damaged link: slowdown and resends against a clean run.

``python -m ziphalp.sim.bench_faults [--out DIR]``

Each case trains twice with the same seed: once clean, once with the
:class:`~ziphalp.host.faults.FaultProxy` damaging a fraction of the link's bytes
(flips, drops, duplicates, delays) between the driver and the simulated board.
It checks that the model words are identical, and reports the faults injected,
the requests resent and the wall-clock slowdown (a ratio within this run). On
the simulated ULX3S a request cut short waits for the board's 20 ms inter-byte
time-out in simulated cycles, which takes seconds of simulation: its slowdown is
the simulation's, a real board waits 20 ms. Writes ``bench_faults.json`` and
``bench_faults.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from ziphalp.host.train import train

__all__ = ["CASES", "main", "measure"]

CASES = {
    "least squares, diabetes, sim (streamed, 10 epochs)":
        dict(dataset="diabetes", epochs=10),
    "HALP, synthetic n=300 d=8, sim-ulx3s (resident, 3 iterations)":
        dict(dataset="synthetic:n=300,d=8", epochs=3, board="sim-ulx3s", algo="halp"),
}
RATES = (1e-4, 1e-3)


def measure() -> list[dict]:
    rows = []
    for name, kw in CASES.items():
        start = time.perf_counter()
        clean = train(progress=False, timeout=60.0, **kw)
        clean_seconds = time.perf_counter() - start
        for rate in RATES:
            start = time.perf_counter()
            faulty = train(progress=False, timeout=60.0, faults=rate, fault_seed=1, **kw)
            seconds = time.perf_counter() - start
            if not np.array_equal(faulty.words, clean.words):
                raise SystemExit(f"bench_faults: {name} at {rate}: the model differs")
            rows.append({"case": name, "rate": rate, "same_model": True,
                         "faults": faulty.faults_injected,
                         "retries": sum(r.retries for r in faulty.history),
                         "host_bytes": sum(r.host_bytes or 0 for r in faulty.history),
                         "clean_seconds": clean_seconds, "seconds": seconds,
                         "slowdown": seconds / clean_seconds})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ziphalp.sim.bench_faults",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/faults", help="output folder")
    args = parser.parse_args(argv)
    rows = measure()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_faults.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| case | fault rate | faults injected | requests resent | same model | "
             "slowdown |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['rate']:g} | {r['faults']} | {r['retries']} | "
              f"{'yes' if r['same_model'] else 'NO'} | {r['slowdown']:.1f}x |" for r in rows]
    (out / "bench_faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
