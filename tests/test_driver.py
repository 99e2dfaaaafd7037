"""The board driver and the training loop, against a fake serial port.

``FakeBoard`` answers requests with ``protocol.encode_reply`` and runs the
golden model on the streamed beats, so the driver and the training loop can be
checked quickly without building the simulated board.
"""

import re
import socket
import struct
import threading

import numpy as np
import pytest
import serial
from fakeboard import FakeBoard, FakeSerial, engine_config
from ziphalp.host import driver
from ziphalp.host.driver import Board, BoardError
from ziphalp.host.train import train
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, EngineParams
from ziphalp.hw.protocol import Command, StatusFlags


@pytest.fixture
def connect(monkeypatch):
    """Make ``Board(url)`` open a FakeSerial; returns a function giving (board, fake)."""
    def make(board: FakeBoard | None = None, mangle=None):
        fake = FakeSerial(board or FakeBoard(), mangle)
        opened = []

        def serial_for_url(url, baudrate, timeout):
            assert baudrate == driver.BAUDRATE
            opened.append(url)
            return fake
        monkeypatch.setattr(serial, "serial_for_url", serial_for_url)
        return fake
    return make


def test_identify(connect):
    fake = connect()
    with Board("fake://0") as board:
        identity = board.identify()
        assert board.params == BOARD_PARAMS["sim"]
    assert identity == fake.board.identity and fake.closed
    assert fake.requests == [(Command.IDENTIFY, b"")]


def test_wrong_protocol_version(connect):
    connect(FakeBoard(version=protocol.VERSION + 1))
    with Board("fake://0") as board, pytest.raises(BoardError, match="protocol version"):
        board.identify()


def test_model_load_and_read_split_into_frames(connect):
    params = EngineParams(beat_bits=32, max_features=100, frame_bytes=64)
    fake = connect(FakeBoard(params))
    weights = np.arange(-45, 45) * 1_000_003
    with Board("fake://0") as board:
        board.load_model(3, weights)
        np.testing.assert_array_equal(board.read_model(3, len(weights)), weights)
    loads = [p for c, p in fake.requests if c == Command.LOAD_MODEL]
    reads = [p for c, p in fake.requests if c == Command.READ_MODEL]
    assert all(len(p) <= params.frame_bytes for p in loads)
    assert [struct.unpack("<HH", p[:4])[0] for p in loads] == [3, 15, 27, 39, 51, 63, 75, 87]
    assert [struct.unpack("<HH", p) for p in reads] == [(3, 16), (19, 16), (35, 16),
                                                        (51, 16), (67, 16), (83, 10)]


def test_configure_stream_status(connect):
    fake = connect()
    with Board("fake://0") as board:
        board.configure(5, 2, 7)
        assert engine_config(fake.board) == (5, 2, 7)
        sample = bytes((1 + fake.board.p.words_for(5)) * fake.board.p.beat_bits // 8)
        board.stream(sample, flush=False)
        board.stream(sample, flush=True)
        counters = board.status(clear=True)
        assert counters.samples == 2 and counters.flags & StatusFlags.CONFIGURED
        assert board.status().samples == 0
    assert fake.board.flushes == [False, True]
    assert [p for c, p in fake.requests if c == Command.STATUS] == [b"\x01", b"\x00"]


def test_error_status_names_command(connect):
    connect()
    with Board("fake://0") as board:
        with pytest.raises(BoardError, match=r"CONFIGURE .*ARGUMENT \(argument out of range\)"):
            board.configure(5000, 1, 3)


def corrupt_crc(cmd, reply):
    return reply[:-1] + bytes([reply[-1] ^ 0x01])


@pytest.mark.parametrize("mangle, message", [
    (corrupt_crc, r"corrupt reply .*\(CRC mismatch\)"),
    (lambda cmd, reply: b"", "IDENTIFY: no reply from the board on fake://0"),
    (lambda cmd, reply: reply[:6], "incomplete reply"),
    (lambda cmd, reply: protocol.encode_reply(Command.STATUS, 0, reply[6:-2]),
     "for command 0x07"),
    (lambda cmd, reply: protocol.encode_reply(cmd, 0x7F), "unknown status 0x7f"),
    (lambda cmd, reply: protocol.encode_reply(cmd, 0, b"junk"), "malformed reply"),
])
def test_bad_replies(connect, mangle, message):
    connect(mangle=mangle)
    with Board("fake://0", timeout=0.1) as board, pytest.raises(BoardError, match=message):
        board.identify()


def test_hunts_for_sync(connect):
    fake = connect(mangle=lambda cmd, reply: b"\x00\xa5\x13\xa5" + reply)
    with Board("fake://0") as board:
        assert board.identify() == fake.board.identity


def test_no_board_on_port():
    with pytest.raises(BoardError, match="no board on /dev/ttyZZZ99"):
        Board("/dev/ttyZZZ99")


def test_training_loop_reaches_optimum(connect):
    fake = connect()
    seen = []
    result = train("diabetes", board="icebreaker", port="fake://0", epochs=30, seed=1,
                   progress=False, on_epoch=lambda r, record: seen.append(record.epoch))
    assert seen == list(range(1, 31))
    assert engine_config(fake.board) == (11, 8, 9)               # 10 features + bias, defaults
    assert fake.board.flushes.count(True) == 30 and fake.board.flushes[-1]
    history = result.history
    assert [r.samples for r in history] == [442] * 30
    beats = 1 + BOARD_PARAMS["sim"].words_for(11)
    assert all(r.cycles == 442 * beats and not r.overflow for r in history)  # fake: 1 a beat
    # Fixed-point SGD with 8-bit stochastic codes: within 2% of the float64 optimum.
    assert result.loss < 1.02 * result.optimum_loss
    assert history[0].loss > history[-1].loss
    # The reported coefficients are the model words converted once (127/128 per unit).
    np.testing.assert_allclose(result.coefficients,
                               result.words * 2.0 ** -24 * 127 / 128, rtol=1e-15)
    assert result.loss == pytest.approx(result.data.loss(result.coefficients))


def test_socket_url_and_silent_board():
    """The same driver over pyserial's socket:// transport (as the simulated board)."""
    fake = FakeBoard()
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        connection, _ = listener.accept()
        with connection:
            buffer = b""
            while chunk := connection.recv(4096):
                buffer += chunk
                while len(buffer) >= 5 and len(buffer) >= 7 + buffer[3] + 256 * buffer[4]:
                    length = 7 + buffer[3] + 256 * buffer[4]
                    request, buffer = buffer[:length], buffer[length:]
                    if request[2] != Command.STATUS:      # STATUS is never answered
                        connection.sendall(fake.handle(request[2], request[5:-2]))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with Board(f"socket://127.0.0.1:{port}", timeout=0.3) as board:
        assert board.identify() == fake.identity
        board.load_model(0, np.array([5, -7, 1 << 30]))
        np.testing.assert_array_equal(board.read_model(0, 3), [5, -7, 1 << 30])
        url = re.escape(f"socket://127.0.0.1:{port}")
        with pytest.raises(BoardError, match=f"STATUS: no reply from the board on {url}"):
            board.status()
    server.join(timeout=5)
    listener.close()
