"""The board driver and the training loop, against a fake serial port.

``FakeBoard`` answers requests with ``protocol.encode_reply`` and runs the
golden model on the streamed beats, so the driver and the training loop can be
checked quickly without building the simulated board.
"""

import dataclasses
import re
import socket
import struct
import threading
import time

import numpy as np
import pytest
import serial
from fakeboard import FakeBoard, FakeSerial, engine_config
from ziphalp.host import driver, quantize
from ziphalp.host.driver import ArgumentError, Board, BoardError
from ziphalp.host.train import train
from ziphalp.hw import protocol
from ziphalp.hw.engine import SGDEngine
from ziphalp.hw.params import (
    BOARD_PARAMS,
    L2_SHIFT_MAX,
    LEVEL,
    OFFSET_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
)
from ziphalp.hw.protocol import Command, Status, StatusFlags
from ziphalp.sim.golden import GoldenEngine

#: CONFIGURE v3 (``protocol.CONFIGURE_FORMAT``), written out to check the driver by.
CONFIGURE_V4 = "<HHBBBBBBBhIB"
#: The HALP fields' defaults: offset_bits, scale_log, seed.
HALP_DEFAULTS = (8, 0, 0)
#: The configuration fields the fake board reports for the HALP defaults.
SGD_FIELDS = dict(offset_bits=8, scale_log=0, seed=0, phase=Phase.SGD, stochastic=False,
                  stale=0)


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


def test_identity_round_trip(connect):
    params = EngineParams(beat_bits=32, lanes=4, max_k=5, max_features=100, max_batch=7,
                          model_bits=24, model_frac=16, frame_bytes=128, clock_hz=12_000_000)
    fake = connect(FakeBoard(params))
    identity = fake.board.identity
    payload = identity.pack()
    assert len(payload) == protocol.IDENTIFY_FORMAT.size
    assert protocol.Identity.unpack(payload) == identity
    assert payload[9] == identity.max_k == 5        # after magic, version, reserved, beat, lanes
    with Board("fake://0") as board:
        assert board.identify() == identity
        assert board.params == params and board.levels_max == 33
    with pytest.raises(ValueError, match="magic"):
        protocol.Identity.unpack(b"ZHLQ" + payload[4:])


def test_identity_reports_halp(connect):
    """The ULX3S build has HALP: options and cache size come through IDENTIFY."""
    fake = connect(FakeBoard(BOARD_PARAMS["sim-ulx3s"]))
    payload = fake.board.identity.pack()
    # halp_samples, update_gap, resident_rows, resident_samples, replay_beats: the last
    assert payload[-13:] == ((4096).to_bytes(2, "little")
                             + bytes([SGDEngine.update_gap(BOARD_PARAMS["ulx3s"])])
                             + (8192).to_bytes(4, "little") + (4096).to_bytes(2, "little")
                             + bytes(4))
    with Board("fake://0") as board:
        identity = board.identify()
        assert identity.options & protocol.Options.HALP and identity.halp_samples == 4096
        assert board.halp_samples == 4096
        assert identity.update_gap == 44                 # 8 lanes, deep_pipeline
        assert identity.options & protocol.Options.DEEP_PIPELINE
        assert board.params == BOARD_PARAMS["ulx3s"]
    connect(FakeBoard(BOARD_PARAMS["sim"]))
    with Board("fake://0") as board:
        assert board.halp_samples == 0 and board.params.halp_samples == 0
    fake = FakeBoard(BOARD_PARAMS["sim-ulx3s"])            # options and cache disagree
    fake.identity = dataclasses.replace(fake.identity, halp_samples=0)
    connect(fake)
    with Board("fake://0") as board, pytest.raises(BoardError, match="impossible parameters"):
        _ = board.params


def test_options_missing_from_the_build(connect):
    """The iCEBreaker engine has neither class costs nor the L2 decay: both are refused
    before anything is sent."""
    fake = connect(FakeBoard(BOARD_PARAMS["icebreaker"]))
    with Board("fake://0") as board:
        assert not board.params.class_costs and not board.params.l2_decay
        with pytest.raises(ArgumentError, match="without class costs"):
            board.configure(5, 2, 7, cost_pos=32)
        with pytest.raises(ArgumentError, match="without the L2 decay"):
            board.configure(5, 2, 7, l2_shift=3)
        for phase in (Phase.FULL, Phase.INNER):
            with pytest.raises(ArgumentError, match=r"without HALP mode \(phase must be SGD\)"):
                board.configure(5, 1, 7, phase=phase)
    assert Command.CONFIGURE not in [c for c, _ in fake.requests]


def test_wrong_protocol_version(connect):
    connect(FakeBoard(version=protocol.VERSION + 1))
    with Board("fake://0") as board, pytest.raises(BoardError, match="protocol version"):
        board.identify()


def test_model_load_and_read_split_into_frames(connect):
    params = EngineParams(beat_bits=32, lanes=4, max_k=4, max_features=100, frame_bytes=64)
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
        board.load_levels(np.linspace(-256, 256, 257).astype(int))
        board.configure(5, 2, 7)
        assert engine_config(fake.board) == (5, 2, 7)
        sample = bytes((1 + fake.board.p.beats_for(5, 8, True)) * fake.board.p.beat_bits // 8)
        board.stream(sample, flush=False)
        board.stream(sample, flush=True)
        counters = board.status(clear=True)
        assert counters.samples == 2 and counters.flags & StatusFlags.CONFIGURED
        assert board.status().samples == 0
    assert fake.board.flushes == [False, True]
    # a clearing read is a read, then a clear
    assert [p for c, p in fake.requests if c == Command.STATUS] == [b"\0", b"\1", b"\0"]


def test_configure_fields(connect):
    fake = connect(FakeBoard(BOARD_PARAMS["ulx3s"]))
    with Board("fake://0") as board:
        board.configure(5, 2, 7)
        assert fake.board.config == dict(features=5, batch=2, shift=7, k=8, double=True,
                                         loss=Loss.SQUARED, l2_shift=0, cost_pos=64,
                                         cost_neg=64, **SGD_FIELDS)
        board.configure(512, 16, SHIFT_MAX, k=3, double=False, loss=Loss.SQUARED_HINGE,
                        l2_shift=L2_SHIFT_MAX, cost_pos=255, cost_neg=0)
        assert fake.board.config == dict(features=512, batch=16, shift=SHIFT_MAX, k=3,
                                         double=False, loss=Loss.SQUARED_HINGE,
                                         l2_shift=L2_SHIFT_MAX, cost_pos=255, cost_neg=0,
                                         **SGD_FIELDS)
        board.configure(np.int64(1), 1, 0, k=1, double=1, loss=1, cost_pos=10, cost_neg=20)
        board.configure(9, 1, 8, k=4, double=False, cost_pos=43, cost_neg=43,
                        phase=Phase.FULL, offset_bits=4)
        board.configure(9, 1, 3, k=4, double=False, loss=Loss.LOGISTIC, phase=Phase.INNER,
                        offset_bits=OFFSET_BITS, scale_log=-32768, seed=0xDEADBEEF,
                        stochastic=True, stale=5)
        assert fake.board.config == dict(features=9, batch=1, shift=3, k=4, double=False,
                                         loss=Loss.LOGISTIC, l2_shift=0, cost_pos=64,
                                         cost_neg=64, offset_bits=16, scale_log=-32768,
                                         seed=0xDEADBEEF, phase=Phase.INNER, stochastic=True,
                                         stale=5)
        board.configure(2, 1, 3, phase=2, offset_bits=np.int16(2), scale_log=32767,
                        seed=(1 << 32) - 1, stochastic=1)
    configures = [p for c, p in fake.requests if c == Command.CONFIGURE]
    assert configures == [
        struct.pack(CONFIGURE_V4, 5, 2, 7, 8, 0b001, 0, 64, 64, *HALP_DEFAULTS, 0),
        struct.pack(CONFIGURE_V4, 512, 16, SHIFT_MAX, 3, 0b110, L2_SHIFT_MAX, 255, 0,
                    *HALP_DEFAULTS, 0),
        struct.pack(CONFIGURE_V4, 1, 1, 0, 1, 0b011, 0, 10, 20, *HALP_DEFAULTS, 0),
        struct.pack(CONFIGURE_V4, 9, 1, 8, 4, 0b001000, 0, 43, 43, 4, 0, 0, 0),
        struct.pack(CONFIGURE_V4, 9, 1, 3, 4, 0b110010, 0, 64, 64, 16, -32768, 0xDEADBEEF, 5),
        struct.pack(CONFIGURE_V4, 2, 1, 3, 8, 0b110001, 0, 64, 64, 2, 32767, (1 << 32) - 1,
                    0),
    ]
    assert protocol.CONFIGURE_FORMAT.format == CONFIGURE_V4


@pytest.mark.parametrize("kwargs, message", [
    (dict(features=0), r"features must be 1\.\.512 on the board on fake://0, not 0"),
    (dict(features=513), "features must be 1..512 on the board"),
    (dict(features=2.0), "features must be an integer, not 2.0"),
    (dict(batch=0), "batch must be 1..16 on the board"),
    (dict(batch=17), "batch must be 1..16 on the board"),
    (dict(shift=-1), f"shift must be 0..{SHIFT_MAX}, not -1"),
    (dict(shift=SHIFT_MAX + 1), f"shift must be 0..{SHIFT_MAX}"),
    (dict(k=0), "k must be 1..8 on the board"),
    (dict(k=9), "k must be 1..8 on the board"),
    (dict(double=2), "double must be a bool, not 2"),
    (dict(loss=4), "loss must be a Loss .*SQUARED, LOGISTIC, HINGE, SQUARED_HINGE.*not 4"),
    (dict(loss="hinge"), "loss must be a Loss"),
    (dict(l2_shift=-1), f"l2_shift must be 0..{L2_SHIFT_MAX}"),
    (dict(l2_shift=L2_SHIFT_MAX + 1), f"l2_shift must be 0..{L2_SHIFT_MAX}"),
    (dict(cost_pos=256), "cost_pos must be 0..255, not 256"),
    (dict(cost_neg=-1), "cost_neg must be 0..255, not -1"),
    (dict(phase=3), "phase must be a Phase .*SGD, FULL, INNER.*not 3"),
    (dict(phase="full"), "phase must be a Phase"),
    (dict(offset_bits=1), f"offset_bits must be 2..{OFFSET_BITS}, not 1"),
    (dict(offset_bits=OFFSET_BITS + 1), f"offset_bits must be 2..{OFFSET_BITS}"),
    (dict(scale_log=32768), "scale_log must be -32768..32767, not 32768"),
    (dict(scale_log=-32769), "scale_log must be -32768..32767"),
    (dict(scale_log=1.5), "scale_log must be an integer"),
    (dict(seed=-1), "seed must be 0..4294967295, not -1"),
    (dict(seed=1 << 32), "seed must be 0..4294967295"),
    (dict(stochastic=2), "stochastic must be a bool, not 2"),
    (dict(phase=Phase.FULL, loss=Loss.HINGE), "phase FULL runs the SQUARED or the LOGISTIC "
                                              "loss, not HINGE"),
    (dict(phase=Phase.INNER, loss=Loss.SQUARED_HINGE), "phase INNER runs the SQUARED"),
    (dict(step=3), "unexpected keyword argument 'step'"),
])
def test_configure_rejects_before_sending(connect, kwargs, message):
    fake = connect(FakeBoard(dataclasses.replace(BOARD_PARAMS["sim"], beat_bits=32, lanes=2,
                                                 halp_samples=64, class_costs=True)))
    args = dict(features=5, batch=2, shift=7) | kwargs
    with Board("fake://0") as board, pytest.raises(ArgumentError, match=message) as error:
        board.configure(**args)
    assert isinstance(error.value, BoardError) and isinstance(error.value, ValueError)
    assert str(error.value).startswith("CONFIGURE: ")
    assert not [c for c, _ in fake.requests if c == Command.CONFIGURE]
    assert fake.board.config is None


def test_load_levels(connect):
    params = EngineParams(beat_bits=24, lanes=2, max_k=4, max_features=16, max_batch=4,
                          model_bits=24, model_frac=16, frame_bytes=66)
    fake = connect(FakeBoard(params))
    full = [LEVEL.min_int + 64 * i for i in range(16)] + [LEVEL.max_int]
    with Board("fake://0") as board:
        assert board.levels_max == 17
        board.load_levels([-256, 256])
        assert fake.board.levels == [-256, 256]
        board.load_levels(np.array(full, np.int16))
        assert fake.board.levels == full
        board.load_levels(range(-8, 8))
        assert fake.board.levels == list(range(-8, 8))
    loads = [p for c, p in fake.requests if c == Command.LOAD_LEVELS]
    assert loads == [struct.pack("<2h", -256, 256), struct.pack("<17h", *full),
                     struct.pack("<16h", *range(-8, 8))]


@pytest.mark.parametrize("levels, message", [
    ([], r"takes 2\.\.257 levels \(max_k 8\), not 0"),
    ([0], "takes 2..257 levels"),
    (list(range(258)), "takes 2..257 levels .*not 258"),
    ([[0, 1], [2, 3]], r"not an array of shape \(2, 2\)"),
    ([0.0, 0.5], "levels must be integers .*Q2.8 words, value l / 256.*float64"),
    ([0, 512], r"level 1 is 512, outside the Q2\.8 range -512\.\.511"),
    ([-513, 0, 1], "level 0 is -513"),
    (np.array([0, 1, 40000], np.uint16), "level 2 is 40000"),
])
def test_load_levels_rejects_before_sending(connect, levels, message):
    fake = connect()
    with Board("fake://0") as board, pytest.raises(ArgumentError, match=message) as error:
        board.load_levels(levels)
    assert str(error.value).startswith("LOAD_LEVELS: ")
    assert not [c for c, _ in fake.requests if c == Command.LOAD_LEVELS]
    assert fake.board.levels is None


def test_fakeboard_answers_like_the_link():
    """The fake board's status codes for CONFIGURE and LOAD_LEVELS are the gateware's."""
    p = BOARD_PARAMS["sim"]
    fake = FakeBoard()
    halp = FakeBoard(BOARD_PARAMS["sim-ulx3s"])

    def configure(k=1, mode=0, l2_shift=0, cost=64, offset_bits=8, stale=0):
        return struct.pack(CONFIGURE_V4, 1, 1, 0, k, mode, l2_shift, cost, cost,
                           offset_bits, -5, 99, stale)

    good = configure()
    cases = [
        (Command.CONFIGURE, good, Status.OK),
        (Command.CONFIGURE, good[:5], Status.LENGTH),
        (Command.CONFIGURE, good[:-5], Status.LENGTH),                  # a v2 payload
        (Command.CONFIGURE, good[:-1], Status.LENGTH),                  # a v3 payload
        (Command.CONFIGURE, configure(stale=1), Status.ARGUMENT),       # no delays without HALP
        (Command.CONFIGURE, good + b"\0", Status.LENGTH),
        (Command.CONFIGURE, configure(k=p.max_k + 1, cost=0), Status.ARGUMENT),
        (Command.CONFIGURE, configure(mode=0x08), Status.ARGUMENT),     # no HALP in the build
        (Command.CONFIGURE, configure(mode=0x10), Status.ARGUMENT),
        (Command.CONFIGURE, configure(mode=0x18), Status.ARGUMENT),     # phase 3
        (Command.CONFIGURE, configure(mode=0x40), Status.ARGUMENT),     # reserved bits
        (Command.CONFIGURE, configure(mode=0x80), Status.ARGUMENT),
        (Command.CONFIGURE, configure(mode=0x20), Status.OK),           # ignored in SGD
        (Command.CONFIGURE, configure(offset_bits=1), Status.ARGUMENT),
        (Command.CONFIGURE, configure(offset_bits=17), Status.ARGUMENT),
        (Command.CONFIGURE, configure(l2_shift=L2_SHIFT_MAX + 1, cost=0), Status.ARGUMENT),
        (Command.LOAD_LEVELS, struct.pack("<2h", -1, 1), Status.OK),
        (Command.LOAD_LEVELS, struct.pack("<h", 0), Status.LENGTH),
        (Command.LOAD_LEVELS, struct.pack("<2h", -1, 1)[:3], Status.LENGTH),
        (Command.LOAD_LEVELS, bytes(2 * p.levels_max + 2), Status.LENGTH),
        (Command.LOAD_LEVELS, struct.pack("<3h", 0, 0, 512), Status.ARGUMENT),
    ]
    for cmd, payload, status in cases:
        assert fake.handle(cmd, payload) == protocol.encode_reply(cmd, status), (cmd, payload)
    assert fake.config["k"] == 1 and fake.levels == [-1, 1]
    assert halp.handle(Command.CONFIGURE, configure(stale=7)) == \
        protocol.encode_reply(Command.CONFIGURE, Status.ARGUMENT)        # beyond max_stale
    for mode, status in ((0x08, Status.OK), (0x10 | 0x20 | 0x02, Status.OK),
                         (0x08 | 0x04, Status.ARGUMENT),                # hinge
                         (0x10 | 0x06, Status.ARGUMENT)):               # squared hinge
        reply = halp.handle(Command.CONFIGURE, configure(mode=mode))
        assert reply == protocol.encode_reply(Command.CONFIGURE, status), mode
    assert halp.config == dict(features=1, batch=1, shift=0, k=1, double=False,
                               loss=Loss.LOGISTIC, l2_shift=0, cost_pos=64, cost_neg=64,
                               offset_bits=8, scale_log=-5, seed=99, phase=Phase.INNER,
                               stochastic=True, stale=0)


def test_halp_outer_steps_through_the_driver(connect):
    """Two HALP outer steps sent by the driver (indices in the label beats, the stream
    cut into frames) leave the board's model equal to the golden model driven directly."""
    params = BOARD_PARAMS["sim-ulx3s"]
    fake = connect(FakeBoard(params))
    rng = np.random.default_rng(4)
    n, d, k = 300, 21, 6
    fields = rng.integers(0, 1 << (k + 1), (n, d)).astype(np.uint8)
    labels = rng.integers(-8000, 8000, n).astype(np.int16)
    levels = np.rint(np.linspace(-256, 256, (1 << k) + 1)).astype(np.int64)
    start = rng.integers(-1 << 20, 1 << 20, d)
    golden = GoldenEngine(params)
    golden.load_levels(levels)
    golden.load_model(0, start)
    full = dict(shift=9, cost_pos=109, cost_neg=109)        # ceil(log2 300), 2**15 / 300
    with Board("fake://0") as board:
        board.load_levels(levels)
        board.load_model(0, start)
        for epoch in range(2):
            inner = dict(shift=4, offset_bits=6, scale_log=700, seed=epoch, stochastic=True)
            order = rng.permutation(n)
            for phase, config, index in ((Phase.FULL, full, np.arange(n)),
                                         (Phase.INNER, inner, order)):
                board.configure(d, 1, k=k, double=False, phase=phase, **config)
                golden.configure(d, 1, k=k, double=False, phase=phase, **config)
                stream = quantize.pack_samples(fields[index], labels[index], params, k,
                                               False, index)
                chunks = quantize.frames(stream, params, d, k, False)
                assert len(chunks) > 1
                for chunk in chunks:
                    board.stream(chunk)
                golden.train(fields[index], labels[index], indices=index)
                counters = board.status(clear=True)
                assert counters.samples == n
                assert counters.updates == (n if phase == Phase.INNER else 0)
        model = board.read_model(0, d)
    np.testing.assert_array_equal(model, golden.read_model(0, d))
    assert not np.array_equal(model, start)
    assert fake.board.engine.offset_shift == golden.offset_shift


def test_error_status_names_command(connect):
    # a board claiming more features than its engine takes refuses what the host let through
    fake = FakeBoard()
    fake.identity = dataclasses.replace(fake.identity, max_features=60000)
    connect(fake)
    with Board("fake://0") as board:
        with pytest.raises(BoardError, match=r"CONFIGURE .*ARGUMENT \(argument out of range\)"):
            board.configure(5000, 1, 3)


def corrupt_crc(cmd, reply):
    return reply[:-1] + bytes([reply[-1] ^ 0x01])


@pytest.mark.parametrize("mangle, message", [
    (corrupt_crc, r"corrupt reply .*\(CRC mismatch\)"),
    (lambda cmd, reply: b"", "IDENTIFY: no reply from the board on fake://0"),
    (lambda cmd, reply: reply[:6], "incomplete reply"),
    (lambda cmd, reply: protocol.encode_reply(Command.STATUS, 0, reply[7:-2], reply[4]),
     "for command 0x07"),
    (lambda cmd, reply: protocol.encode_reply(cmd, 0x7F, seq=reply[4]), "unknown status 0x7f"),
    (lambda cmd, reply: protocol.encode_reply(cmd, 0, b"junk", reply[4]), "malformed reply"),
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
    beats = 1 + BOARD_PARAMS["sim"].beats_for(11, 4, True)      # default: 4-bit, double
    assert all(r.cycles == 442 * beats and not r.overflow for r in history)  # fake: 1 a beat
    # Fixed-point SGD with 4-bit double-sampled features: within 2% of the float64 optimum.
    assert result.loss < 1.02 * result.optimum_loss
    assert history[0].loss > history[-1].loss
    # The reported coefficients are the model words converted once (2**-24 per unit).
    np.testing.assert_allclose(result.coefficients, result.words * 2.0 ** -24, rtol=1e-15)
    assert result.loss == pytest.approx(result.data.loss(result.coefficients))
    # The board decoded the uniform 4-bit level table.
    assert list(fake.board.levels[:17]) == [-256 + 32 * m for m in range(17)]


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
                while len(buffer) >= 6 and len(buffer) >= 8 + buffer[4] + 256 * buffer[5]:
                    length = 8 + buffer[4] + 256 * buffer[5]
                    request, buffer = buffer[:length], buffer[length:]
                    if request[2] != Command.STATUS:      # STATUS is never answered
                        connection.sendall(fake.request(request[2], request[3],
                                                        request[6:-2]))

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    with Board(f"socket://127.0.0.1:{port}", timeout=0.3) as board:
        assert board.identify() == fake.identity
        board.load_model(0, np.array([5, -7, 1 << 30]))
        np.testing.assert_array_equal(board.read_model(0, 3), [5, -7, 1 << 30])
        url = re.escape(f"socket://127.0.0.1:{port}")
        with pytest.raises(BoardError, match=f"^STATUS: no reply from the board on {url} "
                           r"\(waited 0.3 s\), twice$"):
            board.status()
    server.join(timeout=5)
    listener.close()


def test_socket_port_closes_at_once(monkeypatch):
    """Closing a socket:// port shuts the connection (the board sees its end) without
    pyserial's 0.3 s sleep, which every fit of a grid search would pay."""
    listener = socket.create_server(("127.0.0.1", 0))
    ended = threading.Event()

    def serve():
        connection, _ = listener.accept()
        with connection:
            while connection.recv(4096):
                pass
        ended.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    board = Board(f"socket://127.0.0.1:{listener.getsockname()[1]}", timeout=0.3)
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    board.close()
    monkeypatch.undo()
    assert slept == []
    assert ended.wait(timeout=5)
    board.close()                       # a second close does nothing
    listener.close()


class Faulty:
    """A mangle that spoils the replies whose numbers (counted from 0) are in ``bad``:
    dropped, cut, CRC-flipped, or replaced by the board's TIMEOUT refusal."""

    def __init__(self, bad, how):
        self.bad, self.how, self.count = set(bad), how, 0

    def __call__(self, cmd, reply):
        n, self.count = self.count, self.count + 1
        if n not in self.bad:
            return reply
        return {"drop": b"", "cut": reply[:-1], "crc": corrupt_crc(cmd, reply),
                "refused": protocol.encode_reply(cmd, Status.TIMEOUT, seq=reply[4])}[self.how]


@pytest.mark.parametrize("how", ["drop", "cut", "crc", "refused"])
def test_lost_replies_are_retried_and_nothing_runs_twice(connect, how):
    """The replies to the STREAM requests are spoiled once each: the driver resends
    with the same number; a STREAM the board executed is not executed again (a
    refused one was not executed at all) and the model is the golden model's."""
    fake = connect(mangle=Faulty(range(3, 18, 2), how))      # each STREAM's first reply
    with Board("fake://0", timeout=0.2) as board:
        board.identify()
        board.load_levels([-256, 0, 256])
        board.configure(4, 1, 4, k=1, double=False)
        golden = GoldenEngine(board.params)
        golden.load_levels([-256, 0, 256])
        golden.configure(4, 1, 4, k=1, double=False)
        rng = np.random.default_rng(0)
        for _ in range(8):
            frame = rng.integers(0, 256, 2 * (1 + 1), np.uint8).tobytes()
            board.stream(frame)
            golden.stream(frame)
        np.testing.assert_array_equal(board.read_model(0, 4), golden.read_model(0, 4))
        assert fake.board.engine.samples == golden.samples
        streams = sum(c == Command.STREAM for c, _ in fake.requests)
        assert len(fake.board.flushes) == 8 and streams == 16
        assert board.retries == 8


def test_retries_run_out_with_one_line(connect):
    connect(mangle=Faulty(range(1, 100), "cut"))
    with Board("fake://0", timeout=0.2, retries=3) as board:
        board.identify()
        with pytest.raises(BoardError, match=r"^STATUS: no good reply from the board on "
                           r"fake://0 after 4 tries \(lost: incomplete reply from the board "
                           r"on fake://0 \(waited 0.2 s\)\)$"):
            board.status()
        assert board.retries == 3


class GarbledBoard(FakeBoard):
    """Refuses (CRC, without executing) the STREAM requests longer than ``longest``
    bytes, as a line that garbles long requests would."""

    def __init__(self, longest):
        super().__init__()
        self.longest = longest

    def request(self, cmd, seq, payload):
        if cmd in (Command.STREAM, Command.STREAM_FLUSH) and len(payload) > self.longest:
            return protocol.encode_reply(cmd, Status.CRC, seq=seq)
        return super().request(cmd, seq, payload)


def test_long_requests_that_never_get_through_are_split(connect):
    """A frame the line always garbles is refused twice, dropped (it was never
    executed) and sent again in halves, then quarters...: the engine takes every
    beat once, the flush on the last; clean requests grow the size back."""
    fake = connect(GarbledBoard(longest=100))
    with Board("fake://0") as board:
        board.configure(1, 1, 4, k=8, double=False)
        frame = bytes(range(256)) * 2                       # 256 beats of 2 bytes
        board.stream(frame, flush=True)
        streamed = [p for c, p in fake.requests if c in (Command.STREAM, Command.STREAM_FLUSH)]
        taken = [p for p in streamed if len(p) <= 100]
        assert b"".join(taken) == frame
        assert [c for c, p in fake.requests if c == Command.STREAM_FLUSH and len(p) <= 100] \
            == [Command.STREAM_FLUSH]
        assert board.payload_limit == driver.SMALLEST
        assert len(fake.board.flushes) == len(taken)
        for _ in range(driver.CLEAN_RUN):
            board.status()
        assert board.payload_limit == 2 * driver.SMALLEST
