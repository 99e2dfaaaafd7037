"""Benchmark of resident data against streaming, on the simulated board.

``python -m ziphalp.sim.bench_resident [--board sim-ulx3s] [--samples N] [--out DIR]``

For several precisions k, sampling modes and feature counts d it trains one
epoch of random data on the simulated board twice: streamed from the host
(``STREAM`` frames, host-sampled) and from the resident store (one ``RUN``,
sampled on chip). It reads the engine's busy-cycle counter (``STATUS``) and the
driver's byte counters for each, and projects the epoch's time on the real
board: ``cycles / f`` at the engine clock ``f`` (nextpnr's achieved Fmax when a
``report.json`` of the board is given, else the build's ``clock_hz``) against
the streamed epoch's bytes over the 3 Mbaud UART (``bytes / 300 kB/s``: ten bits
a byte). Every cycle count comes from the gateware; only the projection is
arithmetic. It also prints each board's capacity (the most samples of d
features it keeps: codes are 8 bits, so a resident store's capacity is the same
at every precision; a replay store's is the least over the precisions it runs,
with double sampling). Writes ``bench_resident.json`` and ``bench_resident.md`` into
``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from ziphalp.host import quantize, resident
from ziphalp.host.driver import BAUDRATE, Board
from ziphalp.host.levels import grid_levels, level_words, uniform_levels
from ziphalp.hw.params import BOARD_PARAMS, EngineParams
from ziphalp.hw.protocol import Region
from ziphalp.sim.board import simulated_board

__all__ = ["capacity_table", "main", "measure"]

#: Bytes a second the UART moves (start and stop bit: ten bits a byte).
LINK_BYTES_PER_SECOND = BAUDRATE / 10
MODES = [(1, "double"), (2, "double"), (4, "double"), (8, "double"), (8, "nearest")]
FEATURES = [16, 64, 256]


CAPACITY_FEATURES = (8, 16, 32, 64, 128, 256, 512, 1024)


def capacity_table(features=CAPACITY_FEATURES) -> dict:
    """The most samples of each d every board keeps: its resident store's, or its
    replay store's at the precision (double sampling) that holds fewest (None where
    d exceeds the board's ``max_features``)."""
    def most(p, d):
        if d > p.max_features:
            return None
        replayed = min((resident.replay_capacity(p, d, k, True)
                        for k in range(1, p.max_k + 1)), default=0)
        return max(resident.capacity(p, d), replayed)
    return {board: {d: most(p, d) for d in features}
            for board, p in BOARD_PARAMS.items() if not board.startswith("sim")}


def _epoch(driver: Board, feed) -> dict:
    """Run ``feed`` (one epoch) and return its counters and host bytes."""
    driver.status(clear=True)
    sent, received = driver.bytes_sent, driver.bytes_received
    feed()
    moved = driver.bytes_sent + driver.bytes_received - sent - received
    counters = driver.status(clear=True)
    return {"cycles": counters.cycles, "samples": counters.samples, "host_bytes": moved}


def measure(driver: Board, params: EngineParams, k: int, sampling: str, features: int,
            samples: int, batch: int, rng) -> dict:
    """One epoch of ``samples`` random samples, streamed and then resident."""
    x = rng.uniform(-1, 1, (samples, features))
    labels = quantize.quantize_labels(rng.uniform(-1, 1, samples))
    levels = grid_levels(uniform_levels(k))
    double = sampling == "double"
    driver.load_levels(level_words(levels))
    driver.configure(features, batch, 12, k=k, double=double)
    driver.load_model(0, np.zeros(features, dtype=np.int64))
    stream = quantize.encode_epoch(x, labels, levels, k, sampling, rng, params)
    chunks = quantize.frames(stream, params, features, k, double)

    def streamed():
        for i, chunk in enumerate(chunks):
            driver.stream(chunk, flush=i == len(chunks) - 1)

    codes = resident.encode_codes(x)
    sent = driver.bytes_sent + driver.bytes_received
    driver.load_data(Region.SAMPLER, resident.sampler_bytes(resident.sampler_table(
        levels, k, sampling)))
    driver.load_data(Region.CODES, resident.code_rows(codes, params))
    driver.load_data(Region.LABELS, resident.label_words(labels, params))
    load_bytes = driver.bytes_sent + driver.bytes_received - sent
    first, stride = resident.epoch_walk(samples, True, rng)
    stream_run = _epoch(driver, streamed)
    resident_run = _epoch(driver, lambda: driver.run(samples, first, stride, samples,
                                                     int(rng.integers(1 << 32))))
    beats = params.beats_for(features, k, double)
    gap = driver.identity.update_gap
    return {"k": k, "sampling": sampling, "features": features, "samples": samples,
            "batch": batch, "feature_beats": beats, "load_bytes": load_bytes,
            # the engine's rate at its full input rate: a beat a cycle, a batch end
            # costing update_gap - 1 more (ziphalp.hw.engine)
            "engine_bound": beats + 1 + (gap - 1) / batch,
            "streamed": stream_run, "resident": resident_run,
            "stream_bytes": len(stream)}


def project(row: dict, clock_hz: float) -> dict:
    """Epoch seconds on the real board: resident at the engine clock, streamed over
    the UART (whichever is slower: the link here)."""
    engine = row["resident"]["cycles"] / clock_hz
    link = row["streamed"]["host_bytes"] / LINK_BYTES_PER_SECOND
    return {"resident_s": engine, "streamed_s": max(link, row["streamed"]["cycles"] / clock_hz),
            "speedup": max(link, row["streamed"]["cycles"] / clock_hz) / engine}


def _markdown(rows: list[dict], clock_hz: float, clock_source: str, capacity: dict) -> str:
    lines = [f"Engine clock for the projection: {clock_hz / 1e6:.1f} MHz ({clock_source}); "
             f"link {LINK_BYTES_PER_SECOND / 1e3:.0f} kB/s.", "",
             "Cycles a sample from the board's counters; the engine's full input rate "
             "`ceil(d/K) + 1 + (update_gap - 1) / B` beside them (one-beat samples are "
             "bound by the update pass instead); host bytes to feed one epoch (STREAM "
             "frames against one RUN request and its reply).", "",
             "| k | sampling | d | n | cycles/sample streamed | resident | full rate | "
             "host bytes/epoch streamed | resident | epoch streamed (link) | resident | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, res, p = r["streamed"], r["resident"], r["projection"]
        lines.append(
            f"| {r['k']} | {r['sampling']} | {r['features']} | {r['samples']} | "
            f"{s['cycles'] / s['samples']:.2f} | {res['cycles'] / res['samples']:.2f} | "
            f"{r['engine_bound']:.2f} | {s['host_bytes']:,} | {res['host_bytes']:,} | "
            f"{p['streamed_s'] * 1e3:.1f} ms | {p['resident_s'] * 1e3:.3f} ms | "
            f"{p['speedup']:.0f}x |")
    lines += ["", "Capacity (most samples of d features a board keeps, at every precision: "
              "8-bit codes in a resident store, or packed beats with double sampling in a "
              "replay store; 0: no store, -: d above max_features):", "",
              "| board | " + " | ".join(f"d={d}" for d in CAPACITY_FEATURES) + " |",
              "|---|" + "---|" * len(CAPACITY_FEATURES)]
    for board, row in capacity.items():
        lines.append(f"| {board} | " + " | ".join("-" if n is None else f"{n:,}"
                                                 for n in row.values()) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ziphalp.sim.bench_resident",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", default="sim-ulx3s", help="simulated board (default sim-ulx3s)")
    parser.add_argument("--samples", type=int, default=512, help="samples an epoch")
    parser.add_argument("--batch", type=int, default=16, help="mini-batch size")
    parser.add_argument("--report", type=Path, default=Path("build/ulx3s/report.json"),
                        help="the real board's report.json, for its Fmax (if present)")
    parser.add_argument("--out", type=Path, default=Path("results/resident"))
    args = parser.parse_args(argv)
    params = BOARD_PARAMS[args.board]
    clock_hz, source = params.clock_hz, "the build's clock_hz"
    if args.report.exists():
        fmax = json.loads(args.report.read_text()).get("fmax_mhz") or {}
        if fmax.get("achieved"):
            clock_hz = min(fmax["achieved"], fmax["constraint"]) * 1e6
            source = f"the clock nextpnr met in {args.report} (Fmax {fmax['achieved']:.1f} MHz)"
    rng = np.random.default_rng(0)
    rows = []
    with simulated_board(params) as board, Board(board.url, timeout=60) as driver:
        for d in FEATURES:
            for k, sampling in MODES:
                samples = min(args.samples, resident.capacity(params, d))
                row = measure(driver, params, k, sampling, d, samples, args.batch, rng)
                row["projection"] = project(row, clock_hz)
                rows.append(row)
                print(json.dumps({key: row[key] for key in ("k", "sampling", "features")}
                                 | {"streamed": row["streamed"], "resident": row["resident"]}),
                      flush=True)
    capacity = capacity_table()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_resident.json").write_text(json.dumps(
        {"board": args.board, "clock_hz": clock_hz, "clock_source": source, "rows": rows,
         "capacity": capacity}, indent=1))
    text = _markdown(rows, clock_hz, source, capacity)
    (args.out / "bench_resident.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
