"""The simulated board (ziphalp.sim.board) with small test designs.

No ``from __future__ import annotations`` here: Amaranth reads the port annotations
of the components below at run time.
"""

import random
import stat
import threading
import time
from pathlib import Path

import pytest
import serial
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from boards import CHECKS_HALP_BOARD, add_checks_board
from ziphalp.sim.bench_simboard import Echo, echo_transform
from ziphalp.sim.board import (
    SimBinary,
    SimBoardBuildError,
    SimBoardError,
    SimulatedBoard,
    build_simboard,
    eval_lines,
    generate_cxxrtl,
)

#: Conservative lower bound of the simulation speed of the echo design (it runs at
#: about 2e7 cycles/s on one core of the development machine).
MIN_CYCLES_PER_SECOND = 1e6


class CountingEcho(Echo):
    """:class:`Echo` with a free-running counter: it never reaches a fixed point."""

    count: Out(32)

    def elaborate(self, platform) -> Module:
        m = super().elaborate(platform)
        m.d.sync += self.count.eq(self.count + 1)
        return m


class Watchdog(wiring.Component):
    """Sends 0xEE once ``timeout`` cycles pass after a byte without another byte."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def __init__(self, timeout: int):
        self.timeout = timeout
        super().__init__()

    def elaborate(self, platform) -> Module:
        m = Module()
        counter = Signal(range(self.timeout + 1))
        armed = Signal()
        m.d.comb += [self.rx.ready.eq(~self.tx.valid), self.tx.payload.eq(0xEE)]
        with m.If(self.tx.valid & self.tx.ready):
            m.d.sync += self.tx.valid.eq(0)
        with m.If(self.rx.valid & self.rx.ready):
            m.d.sync += [armed.eq(1), counter.eq(0)]
        with m.Elif(armed):
            m.d.sync += counter.eq(counter + 1)
            with m.If(counter == self.timeout - 1):
                m.d.sync += [armed.eq(0), self.tx.valid.eq(1)]
        return m


class NoStreams(wiring.Component):
    led: Out(1)

    _MustUse__silence = True   # rejected before elaboration: no "unused" warning

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.sync += self.led.eq(~self.led)
        return m


def read_exactly(ser: serial.Serial, n: int) -> bytes:
    data = ser.read(n)
    assert len(data) == n, f"got {len(data)} of {n} bytes"
    return data


# --- talking to the board ----------------------------------------------------------

@pytest.mark.parametrize("flatten", [None, False], ids=["flat", "hierarchical"])
def test_echo_bytes(flatten):
    with SimulatedBoard(Echo, key="tests/echo", flatten=flatten) as board:
        assert board.url.startswith("socket://127.0.0.1:")
        with serial.serial_for_url(board.url, timeout=10) as ser:
            ser.write(b"hello")
            assert read_exactly(ser, 5) == b"ifmmp"
            every = bytes(range(256))
            ser.write(every)
            assert read_exactly(ser, 256) == echo_transform(every)
            for size in (1, 2, 17, 1000):
                message = random.Random(size).randbytes(size)
                ser.write(message)
                assert read_exactly(ser, size) == echo_transform(message)
            # Nothing more than what was sent comes back.
            ser.timeout = 0.2
            assert ser.read(1) == b""
    assert board.returncode == 0
    assert not board.terminated
    assert board.rx_bytes == board.tx_bytes == 5 + 256 + 1 + 2 + 17 + 1000


def test_flatten_by_eval_length(monkeypatch):
    """A design is flattened unless its flattened ``eval`` is longer than
    ``FLATTEN_EVAL_LINES``; ``flatten`` decides it outright."""
    from ziphalp.sim import board as simboard

    flat = generate_cxxrtl(Echo())
    hierarchical = generate_cxxrtl(Echo(), flatten=False)
    assert 0 < eval_lines(flat) <= simboard.FLATTEN_EVAL_LINES
    # the FIFO is a module of its own only in the hierarchical design
    assert "struct p_top_2e_fifo" in hierarchical and "struct p_top_2e_fifo" not in flat
    monkeypatch.setattr(simboard, "FLATTEN_EVAL_LINES", eval_lines(flat) - 1)
    assert generate_cxxrtl(Echo()) == hierarchical
    assert generate_cxxrtl(Echo(), flatten=True) == flat


def test_large_transfer_is_lossless_and_in_order():
    data = random.Random(1).randbytes(1 << 20)
    with SimulatedBoard(Echo, key="tests/echo") as board:
        with serial.serial_for_url(board.url, timeout=60) as ser:
            ser.write(data)   # all of it before reading anything
            received = read_exactly(ser, len(data))
    assert received == echo_transform(data)
    assert board.rx_bytes == board.tx_bytes == len(data)
    assert board.cycles >= len(data)


def test_stats_line():
    with SimulatedBoard(Echo, key="tests/echo") as board:
        with serial.serial_for_url(board.url, timeout=10) as ser:
            ser.write(b"x" * 1000)
            read_exactly(ser, 1000)
    assert board.returncode == 0
    lines = [line for line in board.log.splitlines() if line.startswith("simboard: ")]
    assert len(lines) == 1, board.log
    for name in ("cycles", "seconds", "busy_seconds", "cycles_per_second",
                 "rx_bytes", "tx_bytes"):
        assert f" {name}=" in lines[0]
        assert board.stats[name] == getattr(board, name)
    assert isinstance(board.cycles, int) and 1000 <= board.cycles < 100_000
    assert 0 < board.busy_seconds <= board.seconds
    assert board.cycles_per_second == pytest.approx(board.cycles / board.busy_seconds,
                                                    rel=0.05)


def test_cycles_per_second():
    data = random.Random(2).randbytes(4 << 20)
    with SimulatedBoard(Echo, key="tests/echo") as board:
        with serial.serial_for_url(board.url, timeout=60) as ser:
            start = time.monotonic()
            ser.write(data)
            received = read_exactly(ser, len(data))
            seconds = time.monotonic() - start
    assert received == echo_transform(data)
    print(f"\nsimulated board, echo design: {board.cycles_per_second / 1e6:.1f} M cycles/s "
          f"({board.cycles} cycles in {board.busy_seconds:.3f} s busy); "
          f"{len(data) / seconds / 1e6:.1f} MB/s through pyserial")
    assert board.cycles_per_second > MIN_CYCLES_PER_SECOND


def test_long_pipeline_is_not_put_to_sleep_early():
    # rx.ready stays high and tx.valid low while a byte crosses 300 registers: the
    # board must keep clocking while the design's state changes.
    with SimulatedBoard(lambda: Echo(latency=300), key="tests/echo-300") as board:
        with serial.serial_for_url(board.url, timeout=10) as ser:
            for message in (b"a", b"bc", bytes(range(40))):
                ser.write(message)
                assert read_exactly(ser, len(message)) == echo_transform(message)


def test_free_running_design_sleeps_after_settle_cycles():
    with SimulatedBoard(CountingEcho, key="tests/counting-echo",
                        settle_cycles=1000) as board:
        with serial.serial_for_url(board.url, timeout=10) as ser:
            ser.write(b"abc")
            assert read_exactly(ser, 3) == b"bcd"
            time.sleep(0.3)   # spinning would simulate millions of cycles meanwhile
            ser.write(b"d")
            assert read_exactly(ser, 1) == b"e"
    assert board.cycles < 20_000
    assert board.busy_seconds < board.seconds


def test_idle_cycles_let_timeouts_fire():
    timeout = 100_000
    # A running counter keeps the board clocking, up to settle_cycles.
    with SimulatedBoard(lambda: Watchdog(timeout), key="tests/watchdog",
                        settle_cycles=2 * timeout) as board:
        with serial.serial_for_url(board.url, timeout=10) as ser:
            ser.write(b"?")
            assert read_exactly(ser, 1) == b"\xee"
    # Beyond settle_cycles the board sleeps and the time-out never comes...
    with SimulatedBoard(lambda: Watchdog(timeout), key="tests/watchdog",
                        settle_cycles=1000) as board:
        with serial.serial_for_url(board.url, timeout=0.5) as ser:
            ser.write(b"?")
            assert ser.read(1) == b""
    # ...unless idle time is converted into idle cycles.
    with SimulatedBoard(lambda: Watchdog(timeout), key="tests/watchdog",
                        settle_cycles=1000, idle_ms=5, idle_cycles=10_000) as board:
        with serial.serial_for_url(board.url, timeout=10) as ser:
            ser.write(b"?")
            assert read_exactly(ser, 1) == b"\xee"
    assert board.cycles >= timeout


# --- lifetime ----------------------------------------------------------------------

def test_stop_with_connection_open():
    with SimulatedBoard(Echo, key="tests/echo", stop_timeout=5) as board:
        ser = serial.serial_for_url(board.url, timeout=10)
        ser.write(b"A")
        assert read_exactly(ser, 1) == b"B"
    try:
        assert board.terminated
        assert board.returncode == 0
        assert board.rx_bytes == 1
        assert not board.running
    finally:
        ser.close()


def test_url_before_start():
    board = SimulatedBoard(Echo)
    with pytest.raises(SimBoardError, match="not running"):
        board.url  # noqa: B018


def _fake_binary(tmp_path: Path, script: str) -> SimBinary:
    path = tmp_path / "simboard"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return SimBinary(path, "fake", False, 0.0)


def test_start_failure_reports_stderr(tmp_path):
    board = SimulatedBoard(Echo)
    board.binary = _fake_binary(tmp_path, "echo 'cannot bind' >&2; exit 2")
    with pytest.raises(SimBoardError, match=r"status 2 before printing its port:\ncannot bind"):
        board.start()


def test_start_timeout(tmp_path):
    board = SimulatedBoard(Echo, start_timeout=0.5)
    board.binary = _fake_binary(tmp_path, "exec sleep 30")
    start = time.monotonic()
    with pytest.raises(SimBoardError, match="printed no port within 0.5 s"):
        board.start()
    assert time.monotonic() - start < 5
    assert board.returncode is not None   # the process was killed and reaped


def test_start_garbage(tmp_path):
    board = SimulatedBoard(Echo)
    board.binary = _fake_binary(tmp_path, "echo hello")
    with pytest.raises(SimBoardError, match="printed 'hello' instead of a port"):
        board.start()


# --- building and caching ----------------------------------------------------------

def test_cache_is_reused(tmp_path):
    first = build_simboard(Echo, cache_dir=tmp_path)
    assert first.built and first.path.is_file()
    assert first.path == tmp_path / first.digest / "simboard"
    second = build_simboard(Echo, cache_dir=tmp_path)
    assert not second.built
    assert second.path == first.path
    print(f"\nsimulated board build: {first.seconds:.2f} s first, "
          f"{second.seconds:.3f} s cached")
    assert second.seconds < first.seconds

    # With a key, a hit does not even elaborate the design.
    keyed = build_simboard(Echo, key="echo", cache_dir=tmp_path)
    assert keyed.path == first.path and not keyed.built

    def must_not_be_called():
        raise AssertionError("the key should have hit the cache")

    hit = build_simboard(must_not_be_called, key="echo", cache_dir=tmp_path)
    assert hit.path == first.path and not hit.built
    assert hit.seconds < 0.5

    # A different design is a different build.
    other = build_simboard(lambda: Echo(increment=2), cache_dir=tmp_path)
    assert other.built and other.digest != first.digest


def test_concurrent_builds_compile_once(tmp_path):
    results: list[SimBinary] = []
    errors: list[BaseException] = []

    def build():
        try:
            results.append(build_simboard(lambda: Echo(latency=5), cache_dir=tmp_path))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({result.path for result in results}) == 1
    assert sum(result.built for result in results) == 1
    assert not list(tmp_path.rglob("*.tmp"))


def test_compiler_error_is_reported(tmp_path):
    with pytest.raises(SimBoardBuildError, match="no-such-option") as info:
        build_simboard(Echo, cache_dir=tmp_path, cxxflags=("-std=c++17", "--no-such-option"))
    assert "compiling the simulated board failed" in str(info.value)
    assert not list(tmp_path.rglob("simboard"))
    assert not list(tmp_path.rglob("*.tmp"))


def test_missing_compiler(tmp_path):
    with pytest.raises(SimBoardBuildError, match="not found"):
        build_simboard(Echo, cache_dir=tmp_path, cxx="no-such-c++-compiler")


def test_design_without_streams(tmp_path):
    with pytest.raises(TypeError, match=r"port rx: In\(stream.Signature\(8\)\)"):
        build_simboard(NoStreams, cache_dir=tmp_path)


# --- the board core ----------------------------------------------------------------

#: The simulated boards the suite trains on, largest first.
PRESETS = ("sim-ulx3s", "sim", "sim-icebreaker-replay", CHECKS_HALP_BOARD)


@pytest.mark.prebuild
@pytest.mark.parametrize("name", PRESETS)
def test_simulated_board_identifies(name, monkeypatch):
    """Each preset's simulated board builds, answers IDENTIFY with its own parameters
    and is then found in the cache. Collected before everything else (``prebuild``):
    one worker compiles the ULX3S board (over a minute of C++) while the other builds
    bitstreams, and the many tests that train on these boards find them built."""
    from ziphalp.hw.params import BOARD_PARAMS
    from ziphalp.hw.protocol import Command, Identity, encode_reply, encode_request
    from ziphalp.sim.board import simulated_board

    add_checks_board(monkeypatch)
    params = BOARD_PARAMS[name]
    with simulated_board(params) as board:
        with serial.serial_for_url(board.url, timeout=10) as ser:
            ser.write(encode_request(Command.IDENTIFY))
            head = read_exactly(ser, 7)
            length = int.from_bytes(head[5:7], "little")
            rest = read_exactly(ser, length + 2)
    payload = rest[:length]
    assert head + rest == encode_reply(Command.IDENTIFY, 0, payload)
    identity = Identity.unpack(payload)
    assert identity.build_id == params.build_id and identity.params() == params
    # The second time the key hits the cache: no elaboration, no compilation.
    again = simulated_board(params).build()
    assert again.path == board.binary.path and not again.built
