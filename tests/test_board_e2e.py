"""End to end through the simulated board: host driver -> CXXRTL gateware -> host.

The board is the real BoardCore (link + engine) built for the simulated board's
parameters; the host reaches it through ``socket://`` exactly as a serial port.
Models read back must equal the golden model bit for bit; a corrupted request
must change nothing; training diabetes must reach within 2% of the optimum.
"""

import numpy as np
import pytest
from ziphalp.host import quantize
from ziphalp.host.driver import Board, BoardError
from ziphalp.host.train import train
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, CODE, LABEL
from ziphalp.sim.board import simulated_board
from ziphalp.sim.golden import GoldenEngine

PARAMS = BOARD_PARAMS["sim"]


@pytest.fixture(scope="module")
def board():
    with simulated_board(PARAMS) as sim, Board(sim.url) as b:
        yield b


@pytest.mark.parametrize("features,batch,shift", [(11, 1, 7), (37, 5, 9), (1, 16, 4)])
def test_stream_matches_golden(board, features, batch, shift):
    rng = np.random.default_rng(features * 100 + batch)
    golden = GoldenEngine(PARAMS)
    init = rng.integers(-(1 << 22), 1 << 22, size=features)
    board.load_model(0, init)
    golden.load_model(0, init)
    board.configure(features, batch, shift)
    golden.configure(features, batch, shift)
    board.status(clear=True)
    for flush in (False, True):
        codes = rng.integers(CODE.min_int, CODE.max_int + 1, size=(23, features)).astype(np.int8)
        labels = rng.integers(LABEL.min_int >> 2, LABEL.max_int >> 2, size=23).astype(np.int16)
        data = quantize.pack_samples(codes, labels, PARAMS)
        frames = quantize.frames(data, PARAMS, features)
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
    assert counters.cycles > 0


def test_corrupt_request_changes_nothing(board):
    board.configure(4, 1, 6)
    board.load_model(0, [1, 2, 3, 4])
    frame = quantize.pack_samples(np.ones((1, 4), np.int8) * 50, np.array([1000], np.int16),
                                  PARAMS)
    request = bytearray(protocol.encode_request(protocol.Command.STREAM_FLUSH, frame))
    request[-1] ^= 0xFF                                   # break the CRC
    board._port.write(bytes(request))    # a corrupted request, sent raw
    with pytest.raises(BoardError, match="CRC"):
        board._reply(protocol.Command.STREAM_FLUSH)
    assert list(board.read_model(0, 4)) == [1, 2, 3, 4]


def test_train_diabetes_within_two_percent():
    result = train("diabetes", board="sim", epochs=30, seed=0, progress=False)
    assert result.loss < 1.02 * result.optimum_loss
    assert all(r.cycles > 0 and r.samples == 442 for r in result.history)
