"""Fuzzing the simulated board's port: 10,000 random and mutated requests.

The board holds a trained state (levels, a configuration, a model, counters of a
streamed frame). Then every request sent is one that must be refused, and its
status is known by construction:

* ``random``: the sync word, a random command byte, a short random payload and a
  wrong CRC -> ``CRC``;
* ``flipped``: a valid request with one bit flipped in the command, the payload
  or the CRC -> ``CRC``;
* ``unknown``: an unknown command byte with a valid CRC -> ``COMMAND``;
* ``invalid``: a valid CRC over a bad payload (wrong length, argument out of
  range, a STATUS flag that must not clear...; ``test_link.bad_requests``),
  mutated at random within its kind -> its status;
* ``oversized``: a length beyond the frame buffer -> ``LENGTH`` at once;
* ``truncated``: a request cut short, then silence -> ``TIMEOUT``.

After each request the board must answer a valid IDENTIFY; every 100 requests
(and at the end) the model and the counters are read back: the model is the one
loaded, the engine counters unchanged, ``frames_bad`` up by exactly the requests
refused.
"""

import os

import numpy as np
import pytest
from test_link import bad_requests
from ziphalp.host import quantize
from ziphalp.host.driver import Board
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, LABEL, LEVEL, field_bits
from ziphalp.hw.protocol import Command, Status, encode_request
from ziphalp.sim.board import simulated_board

PARAMS = BOARD_PARAMS["sim"]
FRAMES = int(os.environ.get("ZIPHALP_FUZZ_FRAMES", 10_000))
#: Shares of the kinds. A truncated request costs the board's 20 ms time-out in
#: simulated cycles (most of a second here), so it is rarer than the others.
KINDS = {"random": 0.3, "flipped": 0.25, "unknown": 0.1, "invalid": 0.265,
         "oversized": 0.08, "truncated": 0.005}
FEATURES, BATCH, SHIFT, K = 9, 2, 6, 4
#: Engine counters a refused request must leave alone.
ENGINE_COUNTERS = ("cycles", "samples", "beats", "updates")


def _valid(rng) -> bytes:
    """A well-formed request the board would take."""
    choice = rng.integers(4)
    if choice == 0:
        return encode_request(Command.IDENTIFY)
    if choice == 1:
        return encode_request(Command.READ_MODEL, protocol.MODEL_HEADER_FORMAT.pack(0, 3))
    if choice == 2:
        return encode_request(Command.STATUS)
    beats = PARAMS.beat_bits // 8 * int(rng.integers(1, 8))
    return encode_request(Command.STREAM, rng.integers(0, 256, beats, np.uint8).tobytes())


def _request(rng, kind: str, invalid: list) -> tuple[bytes, Status]:
    known = {int(c) for c in Command}
    if kind == "random":
        length = int(rng.integers(0, 48))
        body = protocol.REQUEST_HEADER.pack(int(rng.integers(256)), int(rng.integers(256)),
                                            length)
        body += rng.integers(0, 256, length, np.uint8).tobytes()
        crc = (protocol.crc16(body) ^ int(rng.integers(1, 1 << 16))).to_bytes(2, "little")
        return protocol.SYNC + body + crc, Status.CRC
    if kind == "flipped":
        frame = bytearray(_valid(rng))
        # cmd or seq, or the payload or the CRC (not the length: the frame would end elsewhere)
        where = int(rng.integers(2, 4)) if rng.random() < 0.2 else int(rng.integers(6, len(frame)))
        frame[where] ^= 1 << int(rng.integers(8))
        return bytes(frame), Status.CRC
    if kind == "unknown":
        cmd = int(rng.choice([c for c in range(256) if c not in known]))
        return encode_request(cmd, rng.integers(0, 256, int(rng.integers(0, 16)),
                                                np.uint8).tobytes(),
                              int(rng.integers(256))), Status.COMMAND
    if kind == "invalid":
        cmd, payload, status = invalid[int(rng.integers(len(invalid)))]
        return encode_request(cmd, payload), status
    if kind == "oversized":
        length = int(rng.integers(PARAMS.frame_bytes + 1, 1 << 16))
        return protocol.SYNC + protocol.REQUEST_HEADER.pack(
            int(rng.integers(256)), int(rng.integers(256)), length), Status.LENGTH
    frame = _valid(rng)
    return frame[:int(rng.integers(3, len(frame)))], Status.TIMEOUT


def _trained_state(board: Board, rng) -> None:
    levels = np.sort(rng.integers(LEVEL.min_int, LEVEL.max_int + 1, (1 << K) + 1))
    board.load_levels(levels)
    board.configure(FEATURES, BATCH, SHIFT, k=K, double=True)
    board.load_model(0, rng.integers(-(1 << 20), 1 << 20, FEATURES))
    fields = rng.integers(0, 1 << field_bits(K, True), size=(6, FEATURES))
    labels = rng.integers(LABEL.min_int >> 2, LABEL.max_int >> 2, 6).astype(np.int16)
    data = quantize.pack_samples(fields, labels, PARAMS, K, True)
    for frame in quantize.frames(data, PARAMS, FEATURES, K, True):
        board.stream(frame, flush=True)


@pytest.mark.slow
def test_fuzz_the_board_port():
    rng = np.random.default_rng(2026)
    timeout_cycles = int(protocol.TIMEOUT_BYTES_TIME * PARAMS.clock_hz)
    # a request stalled mid-frame must time out in simulation as on the board
    with simulated_board(PARAMS, idle_ms=2, idle_cycles=timeout_cycles) as sim, \
            Board(sim.url, timeout=10.0) as board:
        _trained_state(board, rng)
        model = board.read_model(0, FEATURES)
        start = board.status()
        invalid = bad_requests(PARAMS)
        kinds = rng.choice(list(KINDS), size=FRAMES, p=list(KINDS.values()))
        counts = dict.fromkeys(KINDS, 0)
        good = 0                       # requests taken since (STATUS counts itself)
        for i, kind in enumerate(kinds):
            frame, status = _request(rng, kind, invalid)
            echo, got, payload = board.exchange(frame)
            assert (got, payload) == (status, b""), (i, kind, frame.hex(), echo, got)
            counts[kind] += 1
            assert board.identify().build_id == board.identity.build_id
            good += 1
            if i % 100 == 99 or i == FRAMES - 1:
                assert np.array_equal(board.read_model(0, FEATURES), model), i
                now = board.status()
                good += 2
                for name in ENGINE_COUNTERS:
                    assert getattr(now, name) == getattr(start, name), (i, name)
                assert now.frames_bad == (start.frames_bad + i + 1) % (1 << 16), i
                assert now.frames_ok == (start.frames_ok + good) % (1 << 16), i
                assert now.flags == start.flags, i
        assert sum(counts.values()) == FRAMES and min(counts.values()) >= FRAMES // 400, counts
