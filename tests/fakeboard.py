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

#: Commands whose replies carry data: a retry of one is executed again.
REPLIES_WITH_DATA = (Command.IDENTIFY, Command.READ_MODEL, Command.STATUS)


class FakeBoard:
    """Answers requests like the board, with ``GoldenEngine`` as its engine.

    ``config`` is the last configuration accepted (a dict of the fields of
    ``protocol.CONFIGURE``, also the golden model's keywords), ``levels`` the last
    level table loaded; both ``None`` until then. ``runs`` are the ``RUN`` requests
    accepted (``protocol.Run``), ``replays`` the ``REPLAY`` ones (``protocol.Replay``).
    The counters count samples, updates and beats fed (one cycle a beat) of
    ``STREAM``, ``RUN`` and ``REPLAY`` alike.
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
        self.runs: list[protocol.Run] = []
        self.replays: list[protocol.Replay] = []
        self.last: tuple[int, int] = (0, 0)     # (seq, cmd) of the last request accepted

    def request(self, cmd: int, seq: int, payload: bytes) -> bytes:
        """The reply frame to request ``seq``: a retry of the last request accepted is
        answered OK without being executed again unless its reply carries data
        (``protocol``, "Sequence numbers and retries")."""
        if seq and (seq, cmd) == self.last and cmd not in REPLIES_WITH_DATA:
            return protocol.encode_reply(cmd, Status.OK, seq=seq)
        reply = self.handle(cmd, payload)
        echo, status, _, body = protocol.decode_reply(reply)
        if status == Status.OK:
            self.last = (seq, cmd)
        return protocol.encode_reply(echo, status, body, seq)

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

            def stream() -> bytes:
                self.engine.stream(payload, flush=cmd == Command.STREAM_FLUSH)
                return payload
            self._count(stream)
        elif cmd == Command.LOAD_DATA:
            return self._load_data(payload)
        elif cmd == Command.RUN:
            return self._run(payload)
        elif cmd == Command.REPLAY:
            return self._replay(payload)
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
        elif cmd not in {c.value for c in Command}:
            return protocol.encode_reply(cmd, Status.COMMAND)
        return protocol.encode_reply(cmd, Status.OK)

    def _count(self, feed) -> None:
        """Run ``feed`` (which returns the beats the engine took) and count its
        samples, updates and cycles (a beat a cycle)."""
        before, updates = self.engine.samples, self.engine.updates
        beats = feed()
        self.samples += self.engine.samples - before
        self.updates += self.engine.updates - updates
        self.cycles += len(beats) // (self.p.beat_bits // 8)

    def _load_data(self, payload: bytes) -> bytes:
        """LOAD_DATA: LENGTH unless the header and whole beats; ARGUMENT for an
        unknown region or a load the golden model refuses (it writes nothing then)."""
        cmd, header = Command.LOAD_DATA, protocol.DATA_HEADER
        if not self.p.stores_data:          # the gateware does not know the command
            return protocol.encode_reply(cmd, Status.COMMAND)
        width = self.p.beat_bits // 8
        if len(payload) <= header.size or (len(payload) - header.size) % width:
            return protocol.encode_reply(cmd, Status.LENGTH)
        region, start = header.format.unpack(payload[:header.size])
        try:
            self.engine.load_data(protocol.Region(region), start, payload[header.size:])
        except ValueError:          # no such region, no resident data, past it or a gap
            return protocol.encode_reply(cmd, Status.ARGUMENT)
        return protocol.encode_reply(cmd, Status.OK)

    def _run(self, payload: bytes) -> bytes:
        """RUN: the golden model's ``run`` (:meth:`_feed`)."""
        return self._feed(Command.RUN, self.p.resident, protocol.Run, payload, self.runs,
                          lambda run: self.engine.run(run.count, run.first, run.stride,
                                                      run.samples, run.seed, run.bias))

    def _replay(self, payload: bytes) -> bytes:
        """REPLAY: the golden model's ``replay`` (:meth:`_feed`)."""
        return self._feed(Command.REPLAY, self.p.replay, protocol.Replay, payload,
                          self.replays, lambda replay: self.engine.replay(replay.first,
                                                                          replay.count))

    def _feed(self, cmd, built, record, payload, accepted, feed) -> bytes:
        """A command that feeds the engine from a store: COMMAND unless ``built``,
        LENGTH for a wrong size, ARGUMENT for arguments the build does not take
        (``record``'s check), STATE when the golden model refuses in ``feed`` (not
        configured, beyond the data); an accepted request joins ``accepted``."""
        if not built:
            return protocol.encode_reply(cmd, Status.COMMAND)
        if len(payload) != record.MESSAGE.size:
            return protocol.encode_reply(cmd, Status.LENGTH)
        try:
            request = record.unpack(payload).check(self.identity)
        except ValueError:
            return protocol.encode_reply(cmd, Status.ARGUMENT)
        try:
            self._count(lambda: feed(request))
        except RuntimeError:
            return protocol.encode_reply(cmd, Status.STATE)
        accepted.append(request)
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
        head = protocol.REQUEST_HEADER
        cmd, seq, length = head.unpack(data[2:2 + head.size])
        payload = data[2 + head.size:2 + head.size + length]
        assert len(data) == 4 + head.size + length
        assert struct.unpack("<H", data[-2:])[0] == protocol.crc16(data[2:-2])
        self.requests.append((cmd, payload))
        self.pending += self.mangle(cmd, self.board.request(cmd, seq, payload))
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
