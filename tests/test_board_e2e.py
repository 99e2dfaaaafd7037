"""End to end through the simulated board: host driver -> CXXRTL gateware -> host.

The board is the real BoardCore (link + engine) built for the simulated board's
parameters; the host reaches it through ``socket://`` exactly as a serial port.
Models read back must equal the golden model bit for bit, across precisions,
sampling modes, level tables, losses, costs and L2 decay; a corrupted request
must change nothing; training diabetes must reach within 2% of the optimum.
"""

import numpy as np
import pytest
from ziphalp.host import quantize
from ziphalp.host.driver import Board
from ziphalp.host.train import train
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, LABEL, LEVEL, Loss, field_bits
from ziphalp.sim.board import simulated_board
from ziphalp.sim.golden import GoldenEngine

PARAMS = BOARD_PARAMS["sim"]


@pytest.fixture(scope="module")
def board():
    with simulated_board(PARAMS) as sim, Board(sim.url) as b:
        yield b


CASES = [  # d, B, shift, k, double, loss, l2_shift, cost_pos, cost_neg
    (11, 1, 7, 8, True, Loss.SQUARED, 0, 64, 64),
    (37, 5, 9, 1, True, Loss.LOGISTIC, 0, 100, 30),
    (1, 16, 4, 4, False, Loss.HINGE, 3, 64, 64),
    (20, 3, 8, 7, False, Loss.SQUARED_HINGE, 12, 17, 255),
    (64, 16, 10, 2, True, Loss.SQUARED, 5, 64, 64),
    (512, 2, 14, 8, True, Loss.SQUARED, 0, 64, 64),     # a sample larger than a frame
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"d{c[0]}-k{c[3]}-{c[5].name.lower()}")
def test_stream_matches_golden(board, case):
    features, batch, shift, k, double, loss, l2_shift, cost_pos, cost_neg = case
    if not PARAMS.l2_decay:
        l2_shift = 0
    if not PARAMS.class_costs:
        cost_pos = cost_neg = 64
    config = dict(k=k, double=double, loss=loss, l2_shift=l2_shift, cost_pos=cost_pos,
                  cost_neg=cost_neg)
    rng = np.random.default_rng(features * 100 + batch)
    golden = GoldenEngine(PARAMS)
    init = rng.integers(-(1 << 22), 1 << 22, size=features)
    levels = np.sort(rng.integers(LEVEL.min_int, LEVEL.max_int + 1, size=(1 << k) + 1))
    board.load_model(0, init)
    golden.load_model(0, init)
    board.load_levels(levels)
    golden.load_levels(levels)
    board.configure(features, batch, shift, **config)
    golden.configure(features, batch, shift, **config)
    board.status(clear=True)
    for flush in (False, True):
        fields = rng.integers(0, 1 << field_bits(k, double), size=(23, features))
        labels = rng.integers(LABEL.min_int >> 2, LABEL.max_int >> 2, size=23).astype(np.int16)
        data = quantize.pack_samples(fields, labels, PARAMS, k, double)
        frames = quantize.frames(data, PARAMS, features, k, double)
        for i, frame in enumerate(frames):
            last = flush and i == len(frames) - 1
            board.stream(frame, flush=last)
            golden.stream(frame, last)
    model = np.asarray(board.read_model(0, features))
    assert np.array_equal(model, golden.read_model(0, features))
    counters = board.status()
    assert counters.samples == golden.samples == 46
    assert counters.updates == golden.updates
    assert bool(counters.flags & protocol.StatusFlags.OVERFLOW) == golden.overflow
    assert bool(counters.flags & protocol.StatusFlags.CLIPPED) == golden.clipped
    assert counters.cycles > 0


def test_corrupt_request_changes_nothing(board):
    board.configure(4, 1, 6, k=8, double=True)
    board.load_model(0, [1, 2, 3, 4])
    frame = quantize.pack_samples(np.full((1, 4), 300), np.array([1000], np.int16), PARAMS,
                                  8, True)
    request = bytearray(protocol.encode_request(protocol.Command.STREAM_FLUSH, frame))
    request[-1] ^= 0xFF                                   # break the CRC
    echo, status, payload = board.exchange(bytes(request))   # sent raw: no retries
    assert (echo, status, payload) == (protocol.Command.STREAM_FLUSH, protocol.Status.CRC, b"")
    assert list(board.read_model(0, 4)) == [1, 2, 3, 4]


def test_train_diabetes_within_two_percent():
    result = train("diabetes", board="sim", epochs=30, seed=0, progress=False)
    assert result.loss < 1.02 * result.optimum_loss
    assert all(r.cycles > 0 and r.samples == 442 for r in result.history)


#: The iCEBreaker's engine with its four SPRAMs as a replay store (README, "iCEBreaker").
REPLAYED = BOARD_PARAMS["sim-icebreaker-replay"]


@pytest.fixture
def replay_board():
    """A simulated board of that engine (it serves one connection: one a test)."""
    with simulated_board(REPLAYED) as sim:
        yield sim


def test_replay_matches_golden(replay_board):
    """Stream beats loaded once, replayed three times from other beats (wrapping round
    the store): the model equals the golden model's, bit for bit."""
    features, k = 13, 3
    rng = np.random.default_rng(7)
    golden = GoldenEngine(REPLAYED)
    levels = np.sort(rng.integers(-256, 257, size=(1 << k) + 1))
    fields = rng.integers(0, 1 << field_bits(k, True), size=(40, features))
    labels = rng.integers(LABEL.min_int >> 2, LABEL.max_int >> 2, size=40).astype(np.int16)
    data = quantize.pack_samples(fields, labels, REPLAYED, k, True)
    beats = 1 + REPLAYED.beats_for(features, k, True)
    with Board(replay_board.url) as board:
        for target in (board, golden):
            target.load_levels(levels)
            target.configure(features, 4, 8, k=k, double=True)
            target.load_data(protocol.Region.BEATS, *((data,) if target is board else (0, data)))
        board.status(clear=True)
        for first, count in ((0, 40), (17, 40), (39, 25)):
            board.replay(first * beats, count * beats)
            golden.replay(first * beats, count * beats)
        model = np.asarray(board.read_model(0, features))
        counters = board.status()
    assert np.array_equal(model, golden.read_model(0, features))
    assert counters.samples == golden.samples == 105 and counters.updates == golden.updates
    assert counters.beats == 105 * beats


def test_train_replayed_within_two_percent(replay_board):
    """diabetes with the data replayed (2-bit double sampling, quantised once): within
    2% of the optimum, as streamed, each epoch a REPLAY of the 442 samples."""
    result = train("diabetes", board="sim-icebreaker-replay", port=replay_board.url,
                   epochs=30, bits=2,
                   seed=0, progress=False)
    assert result.settings["data"] == "replayed"
    assert result.loss < 1.02 * result.optimum_loss
    assert all(r.samples == 442 and r.host_bytes < 200 for r in result.history)
