"""Test doubles for the host side: a board that answers requests with the golden
model as its engine, and a serial port that talks to it in memory."""

import dataclasses
import struct

import numpy as np
from ziphalp.hw import protocol
from ziphalp.hw.engine import SGDEngine
from ziphalp.hw.params import BOARD_PARAMS, EngineParams
from ziphalp.hw.protocol import Command, Status, StatusFlags
from ziphalp.sim.golden import GoldenEngine


class FakeBoard:
    """Answers requests like the board, with ``GoldenEngine`` as its engine.

    ``config`` is the last configuration accepted (a dict of the fields of
    ``protocol.CONFIGURE``, also the golden model's keywords), ``levels`` the last
    level table loaded; both ``None`` until then.
    """

    def __init__(self, params: EngineParams = BOARD_PARAMS["sim"], version=protocol.VERSION):
        self.p = params
        self.identity = protocol.Identity.of(params, version,
                                             update_gap=SGDEngine.update_gap(params))
        self.engine = GoldenEngine(params)
        self.configured = False
        self.config: dict | None = None
        self.levels: list[int] | None = None
        self.samples = self.cycles = self.updates = 0
        self.flushes: list[bool] = []

    @property
    def model(self) -> np.ndarray:
        return self.engine.model

    def handle(self, cmd: int, payload: bytes) -> bytes:
        if cmd == Command.IDENTIFY:
            return protocol.encode_reply(cmd, Status.OK, self.identity.pack())
        if cmd == Command.CONFIGURE:
            if len(payload) != protocol.CONFIGURE.size:
                return protocol.encode_reply(cmd, Status.LENGTH)
            try:    # a reserved bit, a phase that is none, or the golden model refuses
                config = dataclasses.asdict(protocol.Configure.unpack(payload))
                self.engine.configure(**config)
            except ValueError:
                return protocol.encode_reply(cmd, Status.ARGUMENT)
            self.configured, self.config = True, config
        elif cmd == Command.LOAD_LEVELS:
            if len(payload) % 2 or not 2 <= len(payload) // 2 <= self.p.levels_max:
                return protocol.encode_reply(cmd, Status.LENGTH)
            levels = np.frombuffer(payload, "<i2").astype(np.int64)
            try:
                self.engine.load_levels(levels)
            except ValueError:
                return protocol.encode_reply(cmd, Status.ARGUMENT)
            self.levels = levels.tolist()
        elif cmd == Command.LOAD_MODEL:
            start, _ = protocol.MODEL_HEADER_FORMAT.unpack(payload[:4])
            try:
                self.engine.load_model(start, np.frombuffer(payload[4:], "<i4"))
            except RuntimeError:        # in the HALP inner loop
                return protocol.encode_reply(cmd, Status.STATE)
        elif cmd == Command.READ_MODEL:
            start, count = protocol.MODEL_HEADER_FORMAT.unpack(payload)
            words = self.engine.read_model(start, count).astype("<i4").tobytes()
            return protocol.encode_reply(cmd, Status.OK, words)
        elif cmd in (Command.STREAM, Command.STREAM_FLUSH):
            self.flushes.append(cmd == Command.STREAM_FLUSH)
            before, updates = self.engine.samples, self.engine.updates
            self.engine.stream(payload, flush=cmd == Command.STREAM_FLUSH)
            self.samples += self.engine.samples - before
            self.updates += self.engine.updates - updates
            self.cycles += len(payload) // (self.p.beat_bits // 8)
        elif cmd == Command.STATUS:
            e = self.engine
            flags = (StatusFlags.OVERFLOW * e.overflow | StatusFlags.CLIPPED * e.clipped
                     | StatusFlags.CONFIGURED * self.configured)
            reply = protocol.Counters(flags, self.cycles, self.samples, self.cycles,
                                      self.updates, 0, 0).pack()
            if payload[:1] == b"\x01":
                self.samples = self.cycles = self.updates = 0
                e.clear_flags()
            return protocol.encode_reply(cmd, Status.OK, reply)
        return protocol.encode_reply(cmd, Status.OK)


def engine_config(board: FakeBoard) -> tuple[int, int, int]:
    """features, batch and shift of the last configuration accepted."""
    return tuple(board.config[field] for field in ("features", "batch", "shift"))


class FakeSerial:
    """A serial port: write() captures requests, read() serves the board's replies."""

    def __init__(self, board: FakeBoard, mangle=None):
        self.board, self.mangle = board, mangle or (lambda cmd, reply: reply)
        self.requests: list[tuple[int, bytes]] = []
        self.pending = b""
        self.closed = False

    def write(self, data: bytes) -> int:
        assert data[:2] == protocol.SYNC
        cmd, length = struct.unpack("<BH", data[2:5])
        payload = data[5:5 + length]
        assert len(data) == 7 + length
        assert struct.unpack("<H", data[-2:])[0] == protocol.crc16(data[2:-2])
        self.requests.append((cmd, payload))
        self.pending += self.mangle(cmd, self.board.handle(cmd, payload))
        return len(data)

    def read(self, size: int) -> bytes:
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def reset_input_buffer(self) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
