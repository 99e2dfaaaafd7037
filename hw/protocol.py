"""The host <-> board link protocol: one source of truth for gateware and host.

It must not import Amaranth: the host driver imports it without a hardware
toolchain, and the gateware (``ziphalp.hw.link``) takes its constants from here.

Framing
-------
Every request from the host is one frame::

    A5 5A | cmd:u8 | len:u16 | payload (len bytes) | crc:u16

and every reply from the board is one frame::

    A5 5A | cmd:u8 | status:u8 | len:u16 | payload (len bytes) | crc:u16

Integers are little-endian. ``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021,
initial value 0xFFFF, no reflection, no final XOR) over every byte between the
sync word and the CRC. The board buffers a whole request and checks its CRC
before it acts on it: a request that fails the CRC, has an unknown command, a
bad length or bad arguments changes nothing and is answered with an error
status and an empty payload. A request whose ``len`` exceeds the board's frame
buffer is answered with ``LENGTH`` at once and the board hunts for the next
sync word. A request that stalls for ``TIMEOUT_BYTES_TIME`` seconds between two
bytes is dropped and answered with ``TIMEOUT``.

Commands
--------
``IDENTIFY``      no payload. Reply: :data:`IDENTIFY_FORMAT`.
``CONFIGURE``     :data:`CONFIGURE_FORMAT`: features d, batch B, step shift,
                  precision k, mode (bit 0: double sampling; bits 1-2: the
                  :class:`~ziphalp.hw.params.Loss`; bits 3-4: the
                  :class:`~ziphalp.hw.params.Phase`; bit 5: stochastic rounding
                  of the HALP offset; bits 6-7 zero), L2 decay shift (0: off),
                  cost of the positive and of the negative class (``COST_FRAC``
                  fraction bits), HALP offset width b (2..``OFFSET_BITS``),
                  ``scale_log`` (int16) and the PRNG ``seed`` (u32); the HALP
                  fields are ignored in the SGD phase and must still be in
                  range. SGD: clears the gradient buffer and the sample/batch
                  position; the HALP phases do what ``ziphalp.hw.params`` says.
                  A HALP phase on a build without HALP, or with a loss other
                  than squared or logistic, is ``ARGUMENT``. Reply: empty.
``LOAD_LEVELS``   ``n`` int16 levels ``l_0 .. l_{n-1}`` (``LEVEL`` words, each within
                  the ``LEVEL`` range), 2 <= n <= ``2**max_k + 1``: the level
                  table (precision k uses ``l_0 .. l_{2**k}``). Kept across
                  ``CONFIGURE``. A payload of other than 2..``2**max_k + 1``
                  whole int16s is ``LENGTH``, a level out of range ``ARGUMENT``.
                  Reply: empty.
``LOAD_MODEL``    ``start:u16, 0:u16`` then ``count`` int32 weights. Reply: empty.
``READ_MODEL``    ``start:u16, count:u16``. Reply: ``count`` int32 weights.
``STREAM``        whole beats (a multiple of ``beat_bits // 8`` bytes): per
                  sample one label beat (label in the low 16 bits) then
                  ``ceil(d / K)`` feature beats of packed fields (the layout is
                  in :mod:`ziphalp.hw.params`). Needs ``CONFIGURE`` first. Reply:
                  empty.
``STREAM_FLUSH``  as ``STREAM``, and the mini-batch ends with the sample that
                  holds the frame's last beat (the model is updated even if the
                  batch is not full). Reply: empty.
``STATUS``        optional ``flags:u8`` (bit 0: clear counters and sticky flags
                  after reading). Reply: :data:`STATUS_FORMAT`.
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from enum import IntEnum, IntFlag

__all__ = [
    "VERSION", "SYNC", "MAGIC", "Command", "Status", "StatusFlags", "Options",
    "IDENTIFY_FORMAT", "CONFIGURE_FORMAT", "MODE_DOUBLE", "MODE_LOSS_SHIFT", "MODE_PHASE_SHIFT",
    "MODE_STOCHASTIC", "STATUS_FORMAT",
    "MODEL_HEADER_FORMAT",
    "crc16", "encode_request", "encode_reply", "Identity", "Counters",
]

#: Protocol version, reported by ``IDENTIFY``.
VERSION = 3
#: Sync word that opens every frame.
SYNC = bytes([0xA5, 0x5A])
#: Magic bytes at the start of the ``IDENTIFY`` reply.
MAGIC = b"ZHLP"
#: A request is dropped when no byte arrives for this long (seconds) mid-frame.
TIMEOUT_BYTES_TIME = 0.02


class Command(IntEnum):
    IDENTIFY = 0x01
    CONFIGURE = 0x02
    LOAD_MODEL = 0x03
    READ_MODEL = 0x04
    STREAM = 0x05
    STREAM_FLUSH = 0x06
    STATUS = 0x07
    LOAD_LEVELS = 0x08


class Status(IntEnum):
    OK = 0x00
    CRC = 0x01        # CRC mismatch
    COMMAND = 0x02    # unknown command
    LENGTH = 0x03     # payload length wrong for the command or larger than the buffer
    ARGUMENT = 0x04   # an argument out of range (configuration, model range, level)
    STATE = 0x05      # command not allowed now (STREAM before CONFIGURE)
    TIMEOUT = 0x06    # request stalled mid-frame

    def describe(self) -> str:
        return {
            Status.OK: "ok",
            Status.CRC: "CRC mismatch",
            Status.COMMAND: "unknown command",
            Status.LENGTH: "bad payload length",
            Status.ARGUMENT: "argument out of range",
            Status.STATE: "not configured",
            Status.TIMEOUT: "request timed out mid-frame",
        }[self]


class Options(IntFlag):
    """Optional engine blocks a build has (``IDENTIFY``)."""

    CLASS_COSTS = 0x01  # class costs other than 1.0
    L2_DECAY = 0x02     # an L2 decay shift other than 0
    HALP = 0x04         # the HALP phases (bit-centering SVRG)


class StatusFlags(IntFlag):
    OVERFLOW = 0x01    # sticky: a model update saturated
    CLIPPED = 0x02     # sticky: a scaled residual saturated
    CONFIGURED = 0x04  # CONFIGURE has been accepted since reset


#: magic, version, options, beat_bits, lanes, max_k, max_features,
#: max_batch, model_bits, model_frac, frame_bytes, clock_hz, build_id, halp_samples
IDENTIFY_FORMAT = struct.Struct("<4sBBHBBHHBBHIIH")
#: features, batch, shift, k, mode, l2_shift, cost_pos, cost_neg, offset_bits,
#: scale_log, seed
CONFIGURE_FORMAT = struct.Struct("<HHBBBBBBBhI")
#: bit 0 of the CONFIGURE mode byte: double sampling; bits 1-2: the loss;
#: bits 3-4: the phase; bit 5: stochastic rounding of the HALP offset
MODE_DOUBLE = 0x01
MODE_LOSS_SHIFT = 1
MODE_PHASE_SHIFT = 3
MODE_STOCHASTIC = 0x20
#: start index, then (LOAD_MODEL) a reserved zero u16 or (READ_MODEL) a count
MODEL_HEADER_FORMAT = struct.Struct("<HH")
#: flags, 3 reserved, cycles (engine busy cycles), samples, beats, updates,
#: frames accepted, frames rejected
STATUS_FORMAT = struct.Struct("<B3xQIIIHH")
#: Width in bits of the counters in ``STATUS`` (they wrap).
COUNTER_BITS = {"cycles": 48, "samples": 32, "beats": 32, "updates": 32,
                "frames_ok": 16, "frames_bad": 16}


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (the standard library's ``crc_hqx``)."""
    return binascii.crc_hqx(data, crc)


def encode_request(cmd: int, payload: bytes = b"") -> bytes:
    """One host -> board frame."""
    body = struct.pack("<BH", cmd, len(payload)) + payload
    return SYNC + body + struct.pack("<H", crc16(body))


def encode_reply(cmd: int, status: int, payload: bytes = b"") -> bytes:
    """One board -> host frame (used by tests and models of the board)."""
    body = struct.pack("<BBH", cmd, status, len(payload)) + payload
    return SYNC + body + struct.pack("<H", crc16(body))


@dataclass(frozen=True)
class Identity:
    """The board's answer to ``IDENTIFY``."""

    version: int
    beat_bits: int
    lanes: int
    max_k: int
    max_features: int
    max_batch: int
    model_bits: int
    model_frac: int
    frame_bytes: int
    clock_hz: int
    build_id: int
    options: Options = Options(0)
    halp_samples: int = 0

    @classmethod
    def unpack(cls, payload: bytes) -> Identity:
        if len(payload) != IDENTIFY_FORMAT.size:
            raise ValueError(f"IDENTIFY reply has {len(payload)} bytes, "
                             f"expected {IDENTIFY_FORMAT.size}")
        magic, version, options, *rest, halp_samples = IDENTIFY_FORMAT.unpack(payload)
        if magic != MAGIC:
            raise ValueError(f"IDENTIFY reply has magic {magic!r}, expected {MAGIC!r}")
        return cls(version, *rest, options=Options(options), halp_samples=halp_samples)

    def pack(self) -> bytes:
        return IDENTIFY_FORMAT.pack(
            MAGIC, self.version, self.options, self.beat_bits, self.lanes, self.max_k,
            self.max_features, self.max_batch, self.model_bits, self.model_frac,
            self.frame_bytes, self.clock_hz, self.build_id, self.halp_samples)


@dataclass(frozen=True)
class Counters:
    """The board's answer to ``STATUS``."""

    flags: StatusFlags
    cycles: int
    samples: int
    beats: int
    updates: int
    frames_ok: int
    frames_bad: int

    @classmethod
    def unpack(cls, payload: bytes) -> Counters:
        if len(payload) != STATUS_FORMAT.size:
            raise ValueError(f"STATUS reply has {len(payload)} bytes, "
                             f"expected {STATUS_FORMAT.size}")
        flags, *rest = STATUS_FORMAT.unpack(payload)
        return cls(StatusFlags(flags), *rest)
