"""Test doubles for the host side: a board that answers requests with the golden
model as its engine, and a serial port that talks to it in memory."""

import struct

import numpy as np
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, CODE, EngineParams
from ziphalp.hw.protocol import Command, Status, StatusFlags
from ziphalp.sim.golden import GoldenEngine


class FakeBoard:
    """Answers requests like the board, with ``GoldenEngine`` as its engine."""

    def __init__(self, params: EngineParams = BOARD_PARAMS["sim"], version=protocol.VERSION):
        self.p = params
        self.identity = protocol.Identity(
            version, params.beat_bits, params.lanes, CODE.bits, params.max_features,
            params.max_batch, params.model_bits, params.model_frac, params.frame_bytes,
            params.clock_hz, params.build_id)
        self.engine = GoldenEngine(params)
        self.configured = False
        self.samples = self.cycles = 0
        self.flushes: list[bool] = []

    @property
    def model(self) -> np.ndarray:
        return self.engine.model

    def handle(self, cmd: int, payload: bytes) -> bytes:
        if cmd == Command.IDENTIFY:
            return protocol.encode_reply(cmd, Status.OK, self.identity.pack())
        if cmd == Command.CONFIGURE:
            try:
                self.engine.configure(*protocol.CONFIGURE_FORMAT.unpack(payload))
            except ValueError:
                return protocol.encode_reply(cmd, Status.ARGUMENT)
            self.configured = True
        elif cmd == Command.LOAD_MODEL:
            start, _ = protocol.MODEL_HEADER_FORMAT.unpack(payload[:4])
            self.engine.load_model(start, np.frombuffer(payload[4:], "<i4"))
        elif cmd == Command.READ_MODEL:
            start, count = protocol.MODEL_HEADER_FORMAT.unpack(payload)
            words = self.engine.read_model(start, count).astype("<i4").tobytes()
            return protocol.encode_reply(cmd, Status.OK, words)
        elif cmd in (Command.STREAM, Command.STREAM_FLUSH):
            self.flushes.append(cmd == Command.STREAM_FLUSH)
            before = self.engine.samples
            self.engine.stream(payload, flush=cmd == Command.STREAM_FLUSH)
            self.samples += self.engine.samples - before
            self.cycles += len(payload) // (self.p.beat_bits // 8)
        elif cmd == Command.STATUS:
            e = self.engine
            flags = (StatusFlags.OVERFLOW * e.overflow | StatusFlags.CLIPPED * e.clipped
                     | StatusFlags.CONFIGURED * self.configured)
            reply = protocol.STATUS_FORMAT.pack(flags, self.cycles, self.samples, 0, 0, 0, 0)
            if payload[:1] == b"\x01":
                self.samples = self.cycles = 0
                e.clear_flags()
            return protocol.encode_reply(cmd, Status.OK, reply)
        return protocol.encode_reply(cmd, Status.OK)


def engine_config(board: FakeBoard) -> tuple[int, int, int]:
    return board.engine.features, board.engine.batch, board.engine.shift


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
