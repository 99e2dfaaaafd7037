"""Benchmark of the real board core on the simulated board.

``python -m ziphalp.sim.bench_board [--samples N] [--json FILE]``

For several precisions k (double sampling), feature counts d and batch sizes B
it streams random samples through the simulated board, reads the engine's
busy-cycle counter (``STATUS``) and prints cycles per sample next to
``ceil(d/K)``; then it reports how many clock
cycles per second the simulated board ran (from its own statistics, busy time
only). Every figure comes from the gateware; nothing is modelled here.
"""

import argparse
import json
import time

import numpy as np
from ziphalp.host import quantize
from ziphalp.host.driver import Board
from ziphalp.hw.engine import SGDEngine
from ziphalp.hw.params import BOARD_PARAMS, LABEL, field_bits
from ziphalp.sim.board import simulated_board

__all__ = ["main"]


def measure(board: Board, params, k: int, features: int, batch: int, samples: int,
            rng) -> dict:
    fields = rng.integers(0, 1 << field_bits(k, True), size=(samples, features))
    labels = rng.integers(LABEL.min_int >> 2, LABEL.max_int >> 2, size=samples)
    data = quantize.pack_samples(fields, labels.astype(np.int16), params, k, True)
    board.load_model(0, np.zeros(features, dtype=np.int64))
    board.configure(features, batch, 12, k=k, double=True)
    board.status(clear=True)
    frames = quantize.frames(data, params, features, k, True)
    for i, frame in enumerate(frames):
        board.stream(frame, flush=i == len(frames) - 1)
    counters = board.status(clear=True)
    return {"k": k, "features": features, "batch": batch, "samples": counters.samples,
            "cycles": counters.cycles, "cycles_per_sample": counters.cycles / counters.samples,
            "beats_per_sample": params.beats_for(features, k, True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples per measurement")
    parser.add_argument("--board", choices=sorted(k for k in BOARD_PARAMS if k.startswith("sim")),
                        default="sim", help="simulated engine (default: %(default)s)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    params = BOARD_PARAMS[args.board]
    gap = SGDEngine(params).batch_end_gap
    rng = np.random.default_rng(0)
    rows = []
    start = time.perf_counter()
    with simulated_board(params) as sim:
        with Board(sim.url) as board:
            board.load_levels(np.arange(params.levels_max) - params.levels_max // 2)
            for k in (1, 2, 4, 8):
                for features in (11, 64, 256, 512):
                    for batch in (1, 8, 16):
                        if features <= params.max_features:
                            rows.append(measure(board, params, k, features, batch,
                                                args.samples, rng))
    wall = time.perf_counter() - start
    print(f"engine: {params.lanes} lanes, {params.beat_bits}-bit beats, batch-end gap {gap}")
    print(f"{'k':>2} {'d':>5} {'B':>3} {'ceil(d/K)':>9} {'cycles/sample':>14}")
    for r in rows:
        print(f"{r['k']:2d} {r['features']:5d} {r['batch']:3d} {r['beats_per_sample']:9d} "
              f"{r['cycles_per_sample']:14.2f}")
    speed = {"cycles": sim.cycles, "busy_seconds": sim.busy_seconds,
             "cycles_per_second": sim.cycles / sim.busy_seconds, "wall_seconds": wall}
    print(f"simulated board: {sim.cycles} cycles in {sim.busy_seconds:.2f} s busy "
          f"= {speed['cycles_per_second'] / 1e6:.2f} M cycles/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"params": params.__dict__, "batch_end_gap": gap, "rows": rows,
                       "simulated_board": speed}, f, indent=2)


if __name__ == "__main__":
    main()
