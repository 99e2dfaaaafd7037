"""Benchmark of the simulated board with a small echo design.

``python -m ziphalp.sim.bench_simboard [--bytes N] [--latency N] [--cxxflags "..."]``
builds the echo design, streams random bytes through it and prints the build time,
the simulation speed (clock cycles per second) and the round-trip time of short
requests. :class:`Echo` is also the design the tests of the simulated board use.
(This module has no ``from __future__ import annotations``: Amaranth reads the
port annotations of a component at run time.)
"""


import argparse
import os
import shlex
import time

import serial
from amaranth import Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .board import SimulatedBoard

__all__ = ["Echo", "echo_transform", "main"]


class Echo(wiring.Component):
    """Echoes every byte plus ``increment`` (mod 256), ``latency`` cycles later.

    Bytes pass through a pipeline of ``latency`` registers into a FIFO of ``depth``
    entries; ``rx.ready`` is high while the bytes in flight fit in the FIFO, so the
    design takes one byte per cycle while ``tx`` drains. ``rx.ready`` stays high while
    bytes are in the pipeline, which exercises the harness's check that the design has
    settled before it sleeps.
    """

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def __init__(self, *, latency: int = 3, depth: int = 16, increment: int = 1):
        if latency < 0 or depth < 2:
            raise ValueError("latency must be >= 0 and depth >= 2")
        self.latency = latency
        self.depth = depth
        self.increment = increment
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.fifo = buffer = fifo.SyncFIFOBuffered(width=8, depth=self.depth)

        take = self.rx.valid & self.rx.ready
        give = self.tx.valid & self.tx.ready
        data, valid = (self.rx.payload + self.increment)[:8], take
        for stage in range(self.latency):
            next_data, next_valid = Signal(8, name=f"data{stage}"), Signal(name=f"valid{stage}")
            m.d.sync += [next_data.eq(data), next_valid.eq(valid)]
            data, valid = next_data, next_valid

        in_flight = Signal(range(self.depth + 1))
        m.d.sync += in_flight.eq(in_flight + take - give)
        m.d.comb += [
            buffer.w_data.eq(data),
            buffer.w_en.eq(valid),
            self.rx.ready.eq(in_flight < self.depth),
            self.tx.payload.eq(buffer.r_data),
            self.tx.valid.eq(buffer.r_rdy),
            buffer.r_en.eq(self.tx.ready),
        ]
        return m


def echo_transform(data: bytes, increment: int = 1) -> bytes:
    """What :class:`Echo` sends back for ``data``."""
    table = bytes((value + increment) & 0xFF for value in range(256))
    return data.translate(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bytes", type=int, default=8 << 20, help="bytes to stream")
    parser.add_argument("--latency", type=int, default=3, help="pipeline stages of the echo")
    parser.add_argument("--round-trips", type=int, default=2000,
                        help="64-byte request/reply round trips to time")
    parser.add_argument("--cxxflags", type=shlex.split, default=None,
                        help='compiler flags, e.g. "-std=c++17 -O3"')
    parser.add_argument("--cache-dir", default=None, help="build cache directory")
    args = parser.parse_args(argv)

    board = SimulatedBoard(lambda: Echo(latency=args.latency), cache_dir=args.cache_dir,
                           cxxflags=None if args.cxxflags is None else tuple(args.cxxflags))
    binary = board.build()
    print(f"build: {binary.seconds:.2f} s ({'compiled' if binary.built else 'cached'}) "
          f"{binary.path}")

    data = os.urandom(args.bytes)
    expected = echo_transform(data)
    with board, serial.serial_for_url(board.url, timeout=60) as ser:
        start = time.monotonic()
        for _ in range(args.round_trips):
            ser.write(data[:64])
            if ser.read(64) != expected[:64]:
                raise SystemExit("round trip: wrong reply")
        round_trip = (time.monotonic() - start) / max(1, args.round_trips)

        start = time.monotonic()
        ser.write(data)
        received = ser.read(len(data))
        stream_seconds = time.monotonic() - start
        if received != expected:
            raise SystemExit(f"stream: {len(received)} of {len(data)} bytes, "
                             f"{'in order' if received == expected[:len(received)] else 'wrong'}")
    print(f"round trip (64 bytes): {round_trip * 1e6:.0f} us")
    print(f"stream: {len(data)} bytes in {stream_seconds:.3f} s "
          f"({len(data) / stream_seconds / 1e6:.1f} MB/s)")
    print(f"simulated: {board.cycles} cycles, {board.busy_seconds:.3f} s busy, "
          f"{board.cycles_per_second / 1e6:.1f} M cycles/s")


if __name__ == "__main__":
    main()
