"""Resident data on the host side (``ziphalp.host.resident``, ``Board.load_data`` and
``Board.run``, ``train(resident=...)``), against the golden model and FakeBoard.

The sampler table is checked where it matters, through the golden model's on-chip
sampling (``sample_fields``): double sampling is unbiased for the code value and
its two roundings are independent, a single sample's square carries the rounding
variance, and the nearest table rounds exactly as the host's nearest rounding.
"""

import dataclasses
import json
import math
import re
import struct

import numpy as np
import pytest
import serial
from fakeboard import FakeBoard, FakeSerial
from ziphalp.host import quantize, report
from ziphalp.host.data import DataError, load, normalise
from ziphalp.host.driver import ArgumentError, Board, BoardError
from ziphalp.host.levels import grid_levels, level_words, uniform_levels
from ziphalp.host.resident import (
    T_ONE,
    capacity,
    code_rows,
    code_values,
    does_not_fit,
    encode_codes,
    epoch_walk,
    label_words,
    replay_capacity,
    replay_does_not_fit,
    replay_walk,
    sampler_bytes,
    sampler_table,
)
from ziphalp.host.train import SettingsError, quantised_problem, train
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, CODE_ZERO, EngineParams
from ziphalp.hw.protocol import Command, Region, Status
from ziphalp.sim.golden import GoldenEngine, decode, sample_fields, walk

ULX3S = BOARD_PARAMS["sim-ulx3s"]          # 64-bit beats, 8 lanes, 8192 rows, 4096 labels
CODES = np.arange(1, 256)                  # every code a feature value can have
#: A small resident build: 32-bit beats of 4 codes, 64-byte frames (14 beats of data).
SMALL = EngineParams(beat_bits=32, lanes=4, max_k=4, max_features=64, max_batch=8,
                     frame_bytes=64, resident_rows=64, resident_samples=32)
#: A build with neither store (the protocol's refusals).
PLAIN = dataclasses.replace(ULX3S, resident_rows=0, resident_samples=0)
#: The iCEBreaker's engine with a replay store of 8192 beats (16 KB).
REPLAYED = dataclasses.replace(BOARD_PARAMS["icebreaker"], replay_beats=8192)


def skewed_levels(k: int) -> np.ndarray:
    u = np.linspace(-1.0, 1.0, (1 << k) + 1)
    return grid_levels(np.sign(u) * np.abs(u) ** 1.7)


LEVEL_SETS = {
    "uniform-1": (uniform_levels(1), 1),
    "uniform-2": (uniform_levels(2), 2),
    "uniform-8": (uniform_levels(8), 8),
    "skewed-3": (skewed_levels(3), 3),
    "duplicates-3": (np.array([-1, -0.5, -0.5, 0, 0.25, 0.25, 0.75, 1, 1.0]), 3),
}


@pytest.fixture
def connect(monkeypatch):
    """Make ``Board(url)`` open a FakeSerial of ``board``; returns the FakeSerial."""
    def make(board: FakeBoard) -> FakeSerial:
        fake = FakeSerial(board)
        monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
        return fake
    return make


# --- codes and the sampler table -------------------------------------------------------

def test_codes():
    assert encode_codes(np.array([-1.0, 0.0, 1.0])).tolist() == [1, 128, 255]
    np.testing.assert_array_equal(encode_codes(code_values(CODES)), CODES)
    x = np.random.default_rng(0).uniform(-1, 1, (50, 7))
    codes = encode_codes(x)
    assert codes.dtype == np.uint8 and codes.shape == x.shape and codes.min() >= 1
    assert np.max(np.abs(code_values(codes) - x)) <= 0.5 / 127 + 1e-15
    for bad in (np.array([1.01]), np.array([np.nan])):
        with pytest.raises(ValueError, match=r"\[-1, 1\]"):
            encode_codes(bad)


@pytest.mark.parametrize("name", LEVEL_SETS)
def test_sampler_table_entries(name):
    """Each code's interval holds its value, ``t / 2**16`` is the rounding-up
    probability within 2**-17 (of the interval width), a value on a level is exact,
    code 0 copies code 1, the top code is in the last interval; double and single
    share a table."""
    levels, k = LEVEL_SETS[name]
    table = sampler_table(levels, k, "double")
    assert table.dtype == np.uint32 and table.shape == (256,)
    np.testing.assert_array_equal(table, sampler_table(levels, k, "single"))
    assert table[0] == table[1]
    j, t = table & 0xFF, table >> 8
    x = code_values(CODES)
    j, t = j[1:].astype(int), t[1:].astype(np.int64)
    low, high = levels[j], levels[j + 1]
    assert np.all((low <= x) & (x <= high)) and np.all(j < 1 << k)
    assert np.all(t <= T_ONE)
    mean = low + t / T_ONE * (high - low)
    assert np.all(np.abs(mean - x) <= 2.0 ** -17 * (high - low) + 1e-15)
    # the top code: the last interval, rounded up (a zero-width one: t = 0, same value)
    assert j[-1] == (1 << k) - 1 and mean[-1] == 1.0
    assert t[-1] == (T_ONE if levels[-2] < 1 else 0)
    on_level = np.isin(x, levels)
    assert np.all((mean == x)[on_level])


def decoded(levels, k, sampling, samples, seed):
    """On-chip roundings of every code, ``samples`` times: ``q1, q2`` (floats) of
    shape (samples, 255), from the golden model at the ULX3S's lanes and beats."""
    double = sampling == "double"
    fields = sample_fields(np.tile(CODES, (samples, 1)), sampler_table(levels, k, sampling),
                           ULX3S.lanes, seed, k, double, ULX3S.values_per_beat(k, double))
    q1, q2 = decode(fields, level_words(levels), k, double)
    return q1 / 256.0, q2 / 256.0


def table_moments(levels, k):
    """Per code: its value ``x``, the table's mean ``m = E[q]``, the rounding variance
    ``v = (hi - m)(m - lo)``, the up-probability ``p`` and the interval ends."""
    entry = sampler_table(levels, k, "double")[CODES].astype(np.int64)
    j, p = entry & 0xFF, (entry >> 8) / T_ONE
    low, high = levels[j], levels[j + 1]
    m = low + p * (high - low)
    return code_values(CODES), m, (high - m) * (m - low), p, low, high


SAMPLES = 6000


@pytest.mark.parametrize("name", ["uniform-2", "skewed-3"])
def test_double_sampling_on_chip_is_unbiased(name):
    """E[q1] = E[q2] = x and E[q1 q2] = x**2 for every code's value x.

    Tolerance: 5 standard errors of each mean over SAMPLES draws, from the exact
    variance of the averaged quantity under the table's probabilities, plus the
    table's rounding of the probability (|E[q] - x| <= 2**-17 of the interval width
    w, so |E[q1] E[q2] - x**2| <= 2**-16 |x| w + 2**-34 w**2)."""
    levels, k = LEVEL_SETS[name]
    x, m, v, _, low, high = table_moments(levels, k)
    width = high - low
    q1, q2 = decoded(levels, k, "double", SAMPLES, seed=11)

    def check(mean, expected, variance, bias):
        bound = 5 * np.sqrt(variance / SAMPLES) + bias + 1e-12
        assert np.all(np.abs(mean - expected) <= bound), np.max(np.abs(mean - expected) / bound)

    delta = 2.0 ** -17 * width
    check(q1.mean(0), x, v, delta)
    check(q2.mean(0), x, v, delta)
    second = m * m + v
    check((q1 * q2).mean(0), x * x, second ** 2 - m ** 4, 2 * np.abs(x) * delta + delta ** 2)
    # the two roundings are independent: the product lacks the variance term, also
    # pooled over the codes with a large variance (single sampling: > 50 pooled errors)
    wide = v > 0.01
    assert np.all((q1 * q2).mean(0)[wide] < (q1 * q1).mean(0)[wide])
    se = np.sqrt((second ** 2 - m ** 4) / SAMPLES)
    assert abs(((q1 * q2).mean(0) - x * x)[wide].sum()) < 5 * np.sqrt((se[wide] ** 2).sum())


@pytest.mark.parametrize("name", ["uniform-2", "skewed-3"])
def test_single_sample_square_is_biased(name):
    """One rounding: E[q] = x, but E[q**2] = E[q]**2 + v, the rounding variance
    (5 standard errors, as above); over the codes with a large variance the excess
    over x**2 is many pooled standard errors: the test tells the two apart."""
    levels, k = LEVEL_SETS[name]
    x, m, v, p, low, high = table_moments(levels, k)
    q, q_again = decoded(levels, k, "single", SAMPLES, seed=12)
    np.testing.assert_array_equal(q, q_again)
    bound = 5 * np.sqrt(v / SAMPLES) + 2.0 ** -17 * (high - low) + 1e-12
    assert np.all(np.abs(q.mean(0) - x) <= bound)
    square_var = p * (1 - p) * (high ** 2 - low ** 2) ** 2
    se = np.sqrt(square_var / SAMPLES) + 1e-12
    assert np.all(np.abs((q * q).mean(0) - (m * m + v)) <= 5 * se)
    wide = v > 0.01
    assert wide.sum() > 20
    excess = ((q * q).mean(0) - x * x)[wide].sum()
    assert excess / np.sqrt((se[wide] ** 2).sum()) > 50


@pytest.mark.parametrize("name", LEVEL_SETS)
def test_nearest_table_is_deterministic(name):
    """Thresholds 0 or 2**16 only; two seeds round alike; each code decodes to the
    level ``quantize``'s nearest rounding gives its value (ties up)."""
    levels, k = LEVEL_SETS[name]
    table = sampler_table(levels, k, "nearest")
    assert set((table >> 8).tolist()) <= {0, T_ONE}
    per_beat = ULX3S.values_per_beat(k, False)
    codes = np.tile(CODES, (3, 1))
    fields = [sample_fields(codes, table, ULX3S.lanes, seed, k, False, per_beat)
              for seed in (0, 1, 0xDEADBEEF)]
    assert all(np.array_equal(fields[0], f) for f in fields[1:])
    q, _ = decode(fields[0][0], level_words(levels), k, False)
    host = quantize.quantize_features(code_values(CODES)[None, :], levels, k, "nearest")
    expected, _ = quantize.decode_fields(host, levels, k, False)
    np.testing.assert_array_equal(q / 256.0, expected[0])


def test_sampler_table_errors():
    with pytest.raises(ValueError, match="needs 5 levels"):
        sampler_table(uniform_levels(3), 2, "double")
    with pytest.raises(ValueError, match="sampling must be one of"):
        sampler_table(uniform_levels(2), 2, "triple")
    with pytest.raises(ValueError, match="LEVEL words"):
        sampler_table(np.array([-1, 0.001, 1.0]), 1, "double")


# --- the store image --------------------------------------------------------------------

def test_store_image_feeds_what_the_host_would_stream():
    """Codes, labels and sampler table loaded into the golden model: a RUN feeds the
    beats the host's packer makes of the same on-chip fields (layout of code_rows and
    label_words, padding included: d = 20 takes three rows of 8 codes)."""
    rng = np.random.default_rng(3)
    n, d, k = 9, 20, 3
    codes = encode_codes(rng.uniform(-1, 1, (n, d)))
    labels = quantize.quantize_labels(rng.uniform(-1, 1, n))
    levels = uniform_levels(k)
    table = sampler_table(levels, k, "double")
    image = code_rows(codes, ULX3S)
    assert len(image) == n * 3 * 8
    assert set(np.frombuffer(image, np.uint8).reshape(n, 24)[:, d:].ravel()) == {CODE_ZERO}
    assert len(label_words(labels, ULX3S)) == 3 * 8            # 4 labels a 64-bit beat
    golden = GoldenEngine(ULX3S)
    golden.load_data(Region.CODES, 0, image)
    golden.load_data(Region.LABELS, 0, label_words(labels, ULX3S))
    golden.load_data(Region.SAMPLER, 0, sampler_bytes(table))
    np.testing.assert_array_equal(golden.sampler, table)
    golden.load_levels(level_words(levels))
    golden.configure(d, 4, 10, k=k, double=True)
    beats = golden.run(13, 4, 2, n, seed=77)
    order = walk(13, 4, 2, n)
    fields = sample_fields(codes[order], table, ULX3S.lanes, 77, k, True,
                           ULX3S.values_per_beat(k, True))
    assert beats == quantize.pack_samples(fields, labels[order], ULX3S, k, True)


def test_capacity_and_fit():
    assert capacity(ULX3S, 16) == 4096 and capacity(ULX3S, 17) == 2730
    assert capacity(ULX3S, 257) == 248 and capacity(BOARD_PARAMS["sim"], 5) == 0
    # with the bias made on the board, the store keeps d - 1 features
    assert capacity(ULX3S, 17, bias=True) == 4096 and capacity(ULX3S, 33, bias=True) == 2048
    assert capacity(ULX3S, 1, bias=True) == 4096
    assert does_not_fit(ULX3S, 2048, 33, bias=True) is None
    assert "(the bias made on the board)" in does_not_fit(ULX3S, 2049, 33, bias=True)
    assert does_not_fit(ULX3S, 4096, 16) is None and does_not_fit(ULX3S, 2048, 17) is None
    assert does_not_fit(BOARD_PARAMS["sim"], 1, 1) == "the board has no resident data"
    assert does_not_fit(ULX3S, 4097, 1) == ("the resident store holds at most 4096 samples "
                                            "(labels), not 4097")
    assert does_not_fit(ULX3S, 300, 257) == (
        "the resident store holds at most 248 samples of 257 features (8192 rows of 8 "
        "codes, 33 rows a sample), not 300")


@pytest.mark.parametrize("n", [1, 2, 3, 12, 60, 97, 4096])
def test_epoch_walks_are_permutations(n):
    rng = np.random.default_rng(n)
    assert epoch_walk(n, False) == ((0, 0) if n == 1 else (0, 1))
    walks = {epoch_walk(n, True, rng) for _ in range(20)}
    for first, stride in walks:
        assert 0 <= first < n and 0 <= stride < n and math.gcd(stride, n) == 1
        assert sorted(walk(n, first, stride, n).tolist()) == list(range(n))
    if n >= 12:
        assert len(walks) > 10                     # fresh draws
    with pytest.raises(ValueError):
        epoch_walk(0, True, rng)


# --- the driver ---------------------------------------------------------------------------

def test_load_data_in_frames(connect):
    """40 beats into CODES of a build with 64-byte frames: three requests of 14, 14 and
    12 beats, each the 8-byte header (region, start beat) and whole beats; the store
    holds them, and the byte counters count every frame both ways."""
    fake = connect(FakeBoard(SMALL))
    data = bytes(range(160))
    with Board("fake://0") as board:
        board.identify()
        board.load_data(Region.CODES, data)
        board.load_data(Region.LABELS, bytes(8))
        loads = [p for c, p in fake.requests if c == Command.LOAD_DATA]
        sent, received = board.bytes_sent, board.bytes_received
    assert [len(p) for p in loads] == [8 + 56, 8 + 56, 8 + 48, 8 + 8]
    assert all(len(p) <= SMALL.frame_bytes for p in loads)
    assert [struct.unpack("<B3xI", p[:8]) for p in loads] == [(0, 0), (0, 14), (0, 28), (1, 0)]
    assert b"".join(p[8:] for p in loads[:3]) == data
    np.testing.assert_array_equal(fake.board.engine.codes[:40].ravel(), np.arange(160))
    assert fake.board.engine.loaded[Region.CODES] == 40
    assert sent == sum(8 + len(p) for _, p in fake.requests)
    assert received == 9 + protocol.IDENTIFY.size + 9 * len(loads)   # empty replies: 9 bytes


def test_run_payload(connect):
    fake = connect(FakeBoard(ULX3S))
    with Board("fake://0") as board:
        board.load_data(Region.SAMPLER, sampler_bytes(sampler_table(uniform_levels(2), 2,
                                                                    "double")))
        board.load_data(Region.CODES, code_rows(np.full((5, 3), 200, np.uint8), ULX3S))
        board.load_data(Region.LABELS, label_words(np.arange(5, dtype=np.int16), ULX3S))
        board.configure(3, 2, 10, k=2)
        board.run(7, 4, 3, 5, 0xFFFFFFFF)
        assert board.status().samples == 7
    run = protocol.Run.unpack(next(p for c, p in fake.requests if c == Command.RUN))
    assert run == protocol.Run(7, 4, 3, 5, 0xFFFFFFFF) == fake.board.runs[0]


class SlowRun(FakeSerial):
    """A port whose first ``empty`` reads after a RUN return nothing (a long run)."""

    def __init__(self, board, empty):
        super().__init__(board)
        self.empty, self.left = empty, 0

    def write(self, data: bytes) -> int:
        self.left = self.empty if data[2] == Command.RUN else 0
        return super().write(data)

    def read(self, size: int) -> bytes:
        if self.left:
            self.left -= 1
            return b""
        return super().read(size)


def test_run_waits_for_a_long_run(monkeypatch):
    """RUN's reply is awaited past empty reads of the port, up to the driver's timeout
    plus twice the run's time at the board's clock; other replies are not."""
    fake = SlowRun(FakeBoard(ULX3S), empty=5)
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
    with Board("fake://0", timeout=0.05) as board:
        board.load_data(Region.SAMPLER, sampler_bytes(sampler_table(uniform_levels(2), 2,
                                                                    "double")))
        board.load_data(Region.CODES, code_rows(np.full((5, 3), 200, np.uint8), ULX3S))
        board.load_data(Region.LABELS, label_words(np.arange(5, dtype=np.int16), ULX3S))
        board.configure(3, 2, 10, k=2)
        assert board._run_seconds(10 ** 6) == pytest.approx(
            10 ** 6 * (1 + 1 + 44) / ULX3S.clock_hz)       # update gap 44 at 8 lanes
        board.run(7, 0, 1, 5, 3)
        assert fake.board.runs
        fake.empty = 10 ** 9                                   # a board that never answers
        with pytest.raises(BoardError, match=r"RUN: no reply .* \(waited 0\.050\d* s\)"):
            board.run(7, 0, 1, 5, 3)


@pytest.mark.parametrize("call, message", [
    (lambda b: b.load_data(Region.CODES, bytes(8 * 4097 * 2)), "do not fit CODES"),
    (lambda b: b.load_data(Region.SAMPLER, bytes(1032)), "do not fit SAMPLER"),
    (lambda b: b.load_data(Region.LABELS, bytes(12)), "whole 8-byte beats"),
    (lambda b: b.load_data(Region.LABELS, b""), "whole 8-byte beats"),
    (lambda b: b.load_data(3, bytes(8)), "region must be one of CODES, LABELS, SAMPLER"),
    (lambda b: b.run(5, 5, 1, 5, 0), "first must be below samples"),
    (lambda b: b.run(5, 0, 7, 5, 0), "stride must be below samples"),
    (lambda b: b.run(5, 0, 1, 4097, 0), r"samples must be 1..4096 on the board"),
    (lambda b: b.run(0, 0, 1, 5, 0), "count must be"),
    (lambda b: b.run(5, 0, 1, 5, 1 << 32), "RUN"),
])
def test_errors_before_sending(connect, call, message):
    fake = connect(FakeBoard(ULX3S))
    with Board("fake://0") as board, pytest.raises(ArgumentError, match=message) as info:
        call(board)
    assert "\n" not in str(info.value)
    assert [c for c, _ in fake.requests] == [Command.IDENTIFY]


def test_no_resident_data_before_sending(connect):
    fake = connect(FakeBoard(BOARD_PARAMS["sim"]))
    with Board("fake://0") as board:
        with pytest.raises(ArgumentError, match="built without resident data"):
            board.load_data(Region.CODES, bytes(4))
        with pytest.raises(ArgumentError, match="built without resident data"):
            board.run(1, 0, 0, 1, 0)
    assert [c for c, _ in fake.requests] == [Command.IDENTIFY]


# --- the fake board -------------------------------------------------------------------------

def reply(status: Status, cmd: Command) -> bytes:
    return protocol.encode_reply(cmd, status)


def data_payload(region: int, start: int, data: bytes) -> bytes:
    return struct.pack("<B3xI", region, start) + data


def test_fakeboard_load_data_statuses():
    """LENGTH for a payload that is not the header and whole beats, ARGUMENT for an
    unknown region, a gap or a load past the region; a rejected load writes nothing."""
    fake = FakeBoard(ULX3S)
    engine = fake.engine
    ok = reply(Status.OK, Command.LOAD_DATA)
    assert fake.handle(Command.LOAD_DATA, data_payload(0, 0, bytes(range(16)))) == ok
    before = engine.codes.copy()
    rows = ULX3S.resident_rows * ULX3S.beats_per_row
    for payload, status in [
        (data_payload(0, 0, b""), Status.LENGTH),                       # the header alone
        (data_payload(0, 0, bytes(12)), Status.LENGTH),                 # not whole beats
        (data_payload(0, 0, bytes(8))[:7], Status.LENGTH),
        (data_payload(3, 0, bytes(8)), Status.ARGUMENT),                # no such region
        (data_payload(0, 3, b"\xff" * 8), Status.ARGUMENT),             # a gap after beat 2
        (data_payload(0, rows - 1, b"\xff" * 16), Status.ARGUMENT),     # past the region
        (data_payload(2, 0, bytes(1032)), Status.ARGUMENT),             # past the sampler table
    ]:
        assert fake.handle(Command.LOAD_DATA, payload) == reply(status, Command.LOAD_DATA)
    np.testing.assert_array_equal(engine.codes, before)
    assert engine.loaded[Region.CODES] == 2 and engine.loaded[Region.SAMPLER] == 0
    assert fake.handle(Command.LOAD_DATA, data_payload(0, 2, b"\x07" * 8)) == ok   # extends
    assert engine.loaded[Region.CODES] == 3
    no_store = FakeBoard(BOARD_PARAMS["sim"])       # as the gateware: an unknown command
    assert no_store.handle(Command.LOAD_DATA, data_payload(0, 0, bytes(2))) == \
        reply(Status.COMMAND, Command.LOAD_DATA)
    assert fake.handle(0x7E, b"") == reply(Status.COMMAND, 0x7E)


def test_fakeboard_run_statuses():
    """RUN: LENGTH for a wrong size, ARGUMENT for arguments the build does not take,
    STATE before CONFIGURE or beyond the data loaded; counted like STREAM."""
    fake = FakeBoard(ULX3S)
    n, d = 6, 20                                               # two rows a sample

    def run(count=n, first=0, stride=1, samples=n, seed=1) -> bytes:
        return fake.handle(Command.RUN, protocol.Run(count, first, stride, samples,
                                                     seed).pack())

    state = reply(Status.STATE, Command.RUN)
    assert run() == state                                      # nothing configured
    fake.handle(Command.LOAD_DATA, data_payload(2, 0, sampler_bytes(
        sampler_table(uniform_levels(4), 4, "double"))))
    fake.handle(Command.LOAD_DATA, data_payload(0, 0, code_rows(np.full((n, d), 140, np.uint8),
                                                        ULX3S)))
    fake.handle(Command.LOAD_DATA, data_payload(1, 0, label_words(np.ones(n, np.int16), ULX3S)))
    fake.engine.load_levels(level_words(uniform_levels(4)))
    fake.handle(Command.CONFIGURE, protocol.Configure(d, 4, 12, k=4).pack())
    assert run(samples=n + 3) == state                         # labels for 8 loaded, codes 6
    assert fake.handle(Command.RUN, protocol.Run(1, 0, 0, 1, 0).pack()[:-1]) == \
        reply(Status.LENGTH, Command.RUN)
    assert run(first=n) == reply(Status.ARGUMENT, Command.RUN)
    assert run(samples=4097) == reply(Status.ARGUMENT, Command.RUN)
    assert fake.samples == 0 and fake.runs == []
    assert run(count=10, stride=5) == reply(Status.OK, Command.RUN)
    beats = 1 + ULX3S.beats_for(d, 4, True)
    assert (fake.samples, fake.cycles, fake.updates) == (10, 10 * beats, 3)   # 4 + 4 + 2
    fake.handle(Command.CONFIGURE, protocol.Configure(40, 4, 12, k=4).pack())
    assert run() == state                                      # 3 rows a sample: beyond
    assert FakeBoard(BOARD_PARAMS["sim"]).handle(Command.RUN, protocol.Run(
        1, 0, 0, 1, 0).pack()) == reply(Status.COMMAND, Command.RUN)


# --- training -------------------------------------------------------------------------------

LS16 = "synthetic:n=500,d=16,seed=1"


def train_on(monkeypatch, params=ULX3S, **kwargs):
    fake = FakeSerial(FakeBoard(params))
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
    kwargs = {"board": "sim-ulx3s", "port": "fake://0", "progress": False, **kwargs}
    return fake, train(**kwargs)


def test_sgd_resident_converges_with_little_traffic(monkeypatch):
    """Least squares, d = 16, 20 epochs, 4-bit double sampling. Bars: the resident run
    ends within 2% of the float64 optimum, as the streamed one does (the codes move the
    problem by at most 1/254 per value); each resident epoch moves at least 10x fewer
    host bytes than a streamed one (here ~75x: a RUN, the model and the counters)."""
    fake, result = train_on(monkeypatch, dataset=LS16, epochs=20, resident=True)
    _, streamed = train_on(monkeypatch, dataset=LS16, epochs=20, resident=False)
    assert result.settings["data"] == "resident" and streamed.settings["data"] == "streamed"
    assert result.loss < 1.02 * result.optimum_loss
    assert streamed.loss < 1.02 * streamed.optimum_loss
    assert result.history[0].loss > result.history[-1].loss
    moved = [r.host_bytes for r in result.history]
    assert all(10 * m < s.host_bytes for m, s in zip(moved, streamed.history, strict=True))
    assert [r.samples for r in result.history] == [500] * 20
    # what was sent: the three regions once, then a RUN an epoch, no STREAM
    commands = [c for c, _ in fake.requests]
    assert Command.STREAM not in commands and Command.STREAM_FLUSH not in commands
    loads = [p for c, p in fake.requests if c == Command.LOAD_DATA]
    assert {p[0] for p in loads} == {Region.CODES, Region.LABELS, Region.SAMPLER}
    assert commands.index(Command.LOAD_LEVELS) < commands.index(Command.LOAD_DATA)
    assert result.settings["load_bytes"] == sum(8 + len(p) + 9 for p in loads)
    assert result.settings["load_bytes"] > 500 * 17        # the codes at least
    runs = fake.board.runs
    assert len(runs) == 20 and {(r.count, r.samples) for r in runs} == {(500, 500)}
    assert all(math.gcd(r.stride, 500) == 1 for r in runs)
    assert len({r.seed for r in runs}) == 20 and len({(r.first, r.stride) for r in runs}) > 15
    # the board holds the codes of the normalised features but the bias, which the
    # runs make on the board: 16 features, two rows of 8 codes a sample
    assert {r.bias for r in runs} == {1}
    data = normalise(load(LS16))
    stored = fake.board.engine.codes[:1000].reshape(500, 16)
    np.testing.assert_array_equal(stored, encode_codes(data.features[:, :-1]))
    # the history document
    doc = json.loads(json.dumps(report.history(result)))
    assert doc["format"] == "ziphalp-history/5"
    assert doc["settings"]["data"] == "resident" and doc["settings"]["load_bytes"] > 0
    assert [e["host_bytes"] for e in doc["epochs"]] == moved


def test_unshuffled_resident_epochs_walk_in_order(monkeypatch):
    fake, result = train_on(monkeypatch, dataset="synthetic:n=40,d=3", epochs=2,
                            shuffle=False, sampling="nearest", resident=True)
    assert [(r.first, r.stride) for r in fake.board.runs] == [(0, 1), (0, 1)]
    table = np.frombuffer(fake.requests[[c for c, _ in fake.requests].index(
        Command.LOAD_DATA)][1][8:], "<u4")
    assert set((table >> 8).tolist()) <= {0, T_ONE}           # the nearest table


def test_halp_resident_reaches_the_streaming_bar(monkeypatch):
    """HALP at 8 bits on the codes: relative suboptimality below 1e-6 within 10 outer
    iterations, the bar of the streamed HALP test, against the optimum of the data the
    engine decodes (the codes rounded to the nearest level)."""
    ls = "synthetic:n=300,d=8,seed=1"
    fake, result = train_on(monkeypatch, dataset=ls, algo="halp", bits=8, epochs=10, seed=2)
    assert result.settings["data"] == "resident"              # the default on sim-ulx3s
    gaps = [r.suboptimality for r in result.history]
    assert gaps[-1] < 1e-6, gaps
    data = normalise(load(ls))
    expected = quantised_problem(data, 8, "squared", resident=True)
    np.testing.assert_array_equal(result.problem.features, expected.features)
    assert not np.array_equal(result.problem.features,
                              quantised_problem(data, 8, "squared").features)
    assert "8-bit codes" in result.problem.description
    # the engine decoded exactly the problem's features: its full pass saw them
    golden = fake.board.engine
    codes = golden.codes[:300, :8]              # 9 features, the bias made on the board
    codes = np.hstack([codes, np.full((300, 1), 255, np.uint8)])
    fields = sample_fields(codes, golden.sampler, 16, 0, 8, False,
                           ULX3S.values_per_beat(8, False))
    np.testing.assert_array_equal(decode(fields, golden.levels[:257], 8, False)[0] / 256.0,
                                  result.problem.features)
    runs, phases = fake.board.runs, [c for c, _ in fake.requests]
    assert Command.STREAM not in phases and Command.STREAM_FLUSH not in phases
    assert [(r.count, r.first, r.stride) for r in runs[0::2]] == [(300, 0, 1)] * 10
    assert all(r.count == 300 and math.gcd(r.stride, 300) == 1 for r in runs[1::2])
    assert all(r.host_bytes < 1000 for r in result.history)


@pytest.mark.parametrize("dataset, message", [
    ("synthetic:n=5000,d=4", "holds at most 4096 samples (labels), not 5000"),
    ("synthetic:n=300,d=300", "at most 215 samples of 301 features"),
])
def test_too_large_for_the_store(dataset, message):
    with pytest.raises(DataError, match=re.escape(message)) as info:
        train(dataset, board="sim-ulx3s", port="fake://0", resident=True, progress=False)
    assert "\n" not in str(info.value) and "cannot be resident on the sim-ulx3s board" in \
        str(info.value)


def test_no_resident_data_on_the_board_kind():
    """Refused before any board is opened (or a simulated one started)."""
    with pytest.raises(SettingsError, match="the sim board has no resident data") as info:
        train("diabetes", board="sim", resident=True, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(SettingsError, match="resident must be True, False or None"):
        train("diabetes", board="sim", port="fake://0", resident="yes", progress=False)


def test_auto_streams_without_resident_data(monkeypatch):
    """Auto mode streams on "sim" (no resident data) and where the data set does not
    fit; resident=True on a board that reports no resident data is refused."""
    fake, result = train_on(monkeypatch, BOARD_PARAMS["sim"], dataset="diabetes", epochs=1,
                            board="sim")
    assert result.settings["data"] == "streamed" and result.settings["load_bytes"] == 0
    assert Command.LOAD_DATA not in [c for c, _ in fake.requests]
    assert result.history[0].host_bytes > 442 * 8
    fake, result = train_on(monkeypatch, dataset="synthetic:n=300,d=300", epochs=1)
    assert result.settings["data"] == "streamed" and not fake.board.runs
    plain = dataclasses.replace(ULX3S, resident_rows=0, resident_samples=0)
    with pytest.raises(SettingsError, match="the board on fake://0 has no resident data"):
        train_on(monkeypatch, plain, dataset="diabetes", epochs=1, resident=True)
    # HALP decides for the board kind: a board that cannot hold what the kind can is refused
    with pytest.raises(SettingsError, match="cannot hold .* stream the data"):
        train_on(monkeypatch, plain, dataset="synthetic:n=50,d=3", algo="halp", epochs=1)
    fake, result = train_on(monkeypatch, plain, dataset="synthetic:n=50,d=3", algo="halp",
                            epochs=1, resident=False)
    assert result.settings["data"] == "streamed"


# --- replayed data ---------------------------------------------------------------------

def test_replay_capacity_and_fit():
    """A sample is the label beat and ceil(d / K) feature beats, K = 2 values a 16-bit
    beat up to k = 6 with double sampling (fields of k + 2 bits), 1 above."""
    assert replay_capacity(REPLAYED, 17, 2, True) == 8192 // 10 == 819
    assert replay_capacity(REPLAYED, 17, 7, True) == 8192 // 18
    assert replay_capacity(REPLAYED, 17, 7, False) == 819          # fields of 8 bits
    assert replay_capacity(ULX3S, 17, 2, True) == 0
    assert replay_does_not_fit(REPLAYED, 819, 17, 2, True) is None
    assert replay_does_not_fit(REPLAYED, 820, 17, 2, True) == (
        "the replay store holds at most 819 samples of 17 features at k = 2 (8192 beats, "
        "10 a sample), not 820")
    assert replay_does_not_fit(ULX3S, 1, 1, 1, True) == "the board has no replay store"
    rng = np.random.default_rng(3)
    assert replay_walk(7, False) == 0 and replay_walk(1, True, rng) == 0
    starts = {replay_walk(50, True, rng) for _ in range(40)}
    assert len(starts) > 20 and starts <= set(range(50))
    with pytest.raises(ValueError):
        replay_walk(0, False)


def test_replay_payload_and_refusals(connect):
    fake = connect(FakeBoard(REPLAYED))
    with Board("fake://0") as board:
        board.configure(4, 1, 6, k=2, double=True)
        with pytest.raises(BoardError, match="STATE"):
            board.replay(0, 5)                             # nothing loaded
        board.load_data(Region.BEATS, bytes(range(20)))
        board.replay(3, 12)
        for call, message in [(lambda: board.replay(0, 0), "count must be"),
                              (lambda: board.replay(-1, 1), "REPLAY: "),
                              (lambda: board.load_data(Region.CODES, bytes(2)),
                               "region must be one of BEATS"),
                              (lambda: board.run(1, 0, 0, 1, 0), "without resident data")]:
            with pytest.raises(ArgumentError, match=message) as info:
                call()
            assert "\n" not in str(info.value)
        with pytest.raises(BoardError, match="STATE"):
            board.replay(10, 1)                            # 10 beats loaded
    assert fake.board.replays == [protocol.Replay(3, 12)]
    payload = [p for c, p in fake.requests if c == Command.REPLAY][-2]
    assert payload == struct.pack("<II", 3, 12)
    connect(FakeBoard(ULX3S))
    with Board("fake://0") as board, pytest.raises(ArgumentError,
                                                   match="built without a replay store"):
        board.replay(0, 1)


def test_sgd_replayed_converges_with_little_traffic(monkeypatch):
    """Least squares, d = 16, 20 epochs, 4-bit double sampling on a board with a replay
    store. Bars: within 2% of the float64 optimum, as streamed; each epoch moves at
    least 10x fewer host bytes than a streamed one. The board holds exactly the stream
    the host packed once, and each epoch replays all of it from a sample boundary."""
    fake, result = train_on(monkeypatch, REPLAYED, dataset=LS16, epochs=20, board="sim")
    _, streamed = train_on(monkeypatch, REPLAYED, dataset=LS16, epochs=20, board="sim",
                           resident=False)
    assert result.settings["data"] == "replayed" and streamed.settings["data"] == "streamed"
    assert result.loss < 1.02 * result.optimum_loss
    assert result.history[0].loss > result.history[-1].loss
    assert all(10 * r.host_bytes < s.host_bytes
               for r, s in zip(result.history, streamed.history, strict=True))
    assert [r.samples for r in result.history] == [500] * 20
    commands = [c for c, _ in fake.requests]
    assert Command.STREAM not in commands and Command.STREAM_FLUSH not in commands
    assert commands.index(Command.LOAD_LEVELS) < commands.index(Command.LOAD_DATA)
    loads = [p for c, p in fake.requests if c == Command.LOAD_DATA]
    assert {p[0] for p in loads} == {Region.BEATS}
    beats = 1 + REPLAYED.beats_for(17, 4, True)                  # 10
    stored = b"".join(p[8:] for p in loads)
    assert len(stored) == 500 * beats * 2 and fake.board.engine.loaded[Region.BEATS] == 5000
    assert result.settings["load_bytes"] == sum(8 + len(p) + 9 for p in loads)
    # the stream of the normalised data, quantised once: its fields decode to levels
    # within a level step of the features, in one shuffled order
    fields, labels = quantize.unpack_fields(stored, REPLAYED, 17, 4, True)
    data = normalise(load(LS16))
    words = quantize.quantize_labels(data.labels)
    assert sorted(labels.tolist()) == sorted(words.tolist())
    assert not np.array_equal(labels, words)                       # shuffled once
    q1, _ = decode(fields, np.asarray(level_words(result.levels)), 4, True)
    # matched by label (those the clip makes equal left out): each value one of the
    # two levels around it
    once = [y for y in set(words.tolist()) if (words == y).sum() == 1]
    at = {y: i for i, y in enumerate(labels.tolist())}
    rows = [words.tolist().index(y) for y in once]
    got = q1[[at[y] for y in once]] / 256.0
    assert len(once) > 480 and np.abs(got - data.features[rows]).max() < 2 / 16
    replays = fake.board.replays
    assert len(replays) == 20 and {r.count for r in replays} == {5000}
    assert all(r.first % beats == 0 for r in replays) and len({r.first for r in replays}) > 10
    doc = json.loads(json.dumps(report.history(result)))
    assert doc["settings"]["data"] == "replayed" and doc["settings"]["load_bytes"] > 0


def test_replay_placement():
    """The first store the data set fits, resident before replayed; a one-line error
    naming the replay store's limit when neither holds it and the user asked."""
    both = dataclasses.replace(SMALL, replay_beats=4096)
    ds = load("synthetic:n=40,d=70")                              # 71 features: no codes
    from ziphalp.host.train import _placement
    assert _placement(None, both, load("synthetic:n=20,d=3"), "b", 2, "double") == "resident"
    assert _placement(None, both, ds, "b", 2, "double") == "replayed"
    assert _placement(False, both, ds, "b", 2, "double") == "streamed"
    assert _placement(None, REPLAYED, ds, "b", 2, "double") == "replayed"
    big = load("synthetic:n=300,d=70")                            # 37 beats a sample
    assert _placement(None, REPLAYED, big, "b", 2, "double") == "streamed"
    with pytest.raises(DataError, match=re.escape(
            "cannot be resident on b: the replay store holds at most 221 samples of 71 "
            "features at k = 2 (8192 beats, 37 a sample), not 300")):
        _placement(True, REPLAYED, big, "b", 2, "double")
    with pytest.raises(SettingsError, match="b has no resident data or a replay store"):
        _placement(True, PLAIN, big, "b", 2, "double")


def test_capacity_table_of_the_boards():
    """bench_resident's table: the resident store's capacity, or the replay store's at
    the precision that holds fewest (65536 beats of a label beat and d / 2 beats)."""
    from ziphalp.sim.bench_resident import capacity_table
    table = capacity_table((8, 64, 1024))
    assert table["ulx3s"] == {d: capacity(ULX3S, d) for d in (8, 64, 1024)}
    assert table["icebreaker-replay"] == {8: 65536 // 5, 64: 65536 // 33, 1024: None}
    assert table["icebreaker"] == {8: 0, 64: 0, 1024: None}
    assert not any(board.startswith("sim") for board in table)
