"""The host <-> board link protocol: one source of truth for gateware and host.

It must not import Amaranth: the host driver imports it without a hardware
toolchain. Each payload with fields is declared once, as a :class:`Message`
table (:data:`CONFIGURE`, :data:`IDENTIFY`, :data:`STATUS`,
:data:`MODEL_HEADER`): name, struct code or width, meaning and valid range of
every field. The struct formats, the host's records (:class:`Configure`,
:class:`Identity`, :class:`Counters`) with their ``pack``, ``unpack`` and range
checks, the gateware's payload layouts (``ziphalp.hw.link_messages``), its
checks of CONFIGURE (``ziphalp.hw.link_check``), the engine's control members
(``ziphalp.hw.control``) and the test doubles are all derived from these tables.

Framing
-------
Every request from the host is one frame::

    A5 5A | cmd:u8 | seq:u8 | len:u16 | payload (len bytes) | crc:u16

and every reply from the board is one frame::

    A5 5A | cmd:u8 | status:u8 | seq:u8 | len:u16 | payload (len bytes) | crc:u16

Integers are little-endian. ``crc`` is CRC-16/CCITT-FALSE (polynomial 0x1021,
initial value 0xFFFF, no reflection, no final XOR) over every byte between the
sync word and the CRC. The board buffers a whole request and checks its CRC
before it acts on it: a request that fails the CRC, has an unknown command, a
bad length or bad arguments changes nothing and is answered with an error
status and an empty payload. A request whose ``len`` exceeds the board's frame
buffer is answered with ``LENGTH`` at once and the board hunts for the next
sync word. A request that stalls for ``TIMEOUT_BYTES_TIME`` seconds between two
bytes is dropped and answered with ``TIMEOUT``.

Sequence numbers and retries
----------------------------
``seq`` numbers the host's requests; the reply echoes the request's. The board
remembers the ``cmd`` and ``seq`` of the last request it accepted. A request
with the same nonzero ``seq`` and ``cmd`` that is accepted again is a retry (its
reply was lost): a command whose reply has no payload is not executed a second
time and is answered ``OK`` again; ``IDENTIFY``, ``READ_MODEL`` and ``STATUS``
(whose replies carry the data) are executed again, which changes nothing (a
``STATUS`` that clears clears again, with nothing counted in between). ``seq``
0 is unnumbered: always executed. So the host may resend a request whose reply
it did not get, with the same ``seq``, as often as it likes; it numbers each
new request differently from the one before (``ziphalp.host.driver`` counts
1..255 round). The board keeps no other history: this is stop-and-wait, one
request in flight.

Commands
--------
``IDENTIFY``      no payload. Reply: :data:`IDENTIFY`.
``CONFIGURE``     :data:`CONFIGURE`. Every field must be in its range (the table's,
                  the build's where it says so) and the mode byte's reserved bits
                  zero; a build without an option takes only the field's default
                  there; a HALP phase runs a loss of ``HALP_LOSSES`` only. The HALP
                  fields are ignored in the SGD phase and must still be in range.
                  SGD: clears the gradient buffer and the sample/batch position;
                  the HALP phases do what ``ziphalp.hw.params`` says. A bad field
                  is ``ARGUMENT``. Reply: empty.
``LOAD_LEVELS``   ``n`` int16 levels ``l_0 .. l_{n-1}`` (``LEVEL`` words, each within
                  the ``LEVEL`` range), 2 <= n <= ``2**max_k + 1``: the level
                  table (precision k uses ``l_0 .. l_{2**k}``). Kept across
                  ``CONFIGURE``. A payload of other than 2..``2**max_k + 1``
                  whole int16s is ``LENGTH``, a level out of range ``ARGUMENT``.
                  Reply: empty.
``LOAD_MODEL``    :data:`MODEL_HEADER` (``count`` 0) then int32 weights. ``STATE``
                  while HALP's inner loop is configured (the model is anchor plus
                  offset there). Reply: empty.
``READ_MODEL``    :data:`MODEL_HEADER`. Reply: ``count`` int32 weights.
``STREAM``        whole beats (a multiple of ``beat_bits // 8`` bytes): per
                  sample one label beat (label in the low 16 bits) then
                  ``ceil(d / K)`` feature beats of packed fields (the layout is
                  in :mod:`ziphalp.hw.params`). Needs ``CONFIGURE`` first. Reply:
                  empty.
``STREAM_FLUSH``  as ``STREAM``, and the mini-batch ends with the sample that
                  holds the frame's last beat (the model is updated even if the
                  batch is not full). Reply: empty.
``LOAD_DATA``     :data:`DATA_HEADER` (8 bytes) then whole beats written into the
                  resident store's :class:`Region`, from beat ``start`` on (builds
                  with resident data; ``ziphalp.hw.params``, "Resident data"). A
                  region's *loaded* length is what a run may use: a load from
                  beat 0 sets it to the beats written, one from a beat at most
                  the loaded length extends it. A load past the region or
                  starting beyond its loaded length (a gap) is ``ARGUMENT``, a
                  payload of other than the header and whole beats ``LENGTH``;
                  a rejected load writes nothing. Reply: empty.
``RUN``           :data:`RUN`. Feeds ``count`` samples from the resident store to
                  the engine as ``STREAM`` beats would (the last one flushing).
                  ``STATE`` before ``CONFIGURE`` or when the loaded codes, labels
                  or sampler table do not cover ``samples`` samples of the
                  configured ``d`` (``d - 1`` stored features with ``bias``);
                  ``ARGUMENT`` for ``first`` or ``stride`` not below ``samples``.
                  Reply (once the engine is idle): empty.
``REPLAY``        :data:`REPLAY` (builds with a replay store: ``ziphalp.hw.params``,
                  "Replayed data"). Feeds ``count`` beats of the loaded ``BEATS``
                  region to the engine, beat ``(first + u) mod loaded``, as
                  ``STREAM_FLUSH`` would feed their bytes. ``STATE`` before
                  ``CONFIGURE`` or with ``first`` not below the beats loaded
                  (none loaded included); ``ARGUMENT`` for ``count`` 0.
                  Reply (once the engine is idle): empty.
                  ``LOAD_DATA`` takes the regions a build has (:func:`regions`):
                  ``CODES``, ``LABELS`` and ``SAMPLER`` with resident data,
                  ``BEATS`` with a replay store; any other is ``ARGUMENT``.
                  Builds without resident data answer ``RUN`` ``COMMAND``, builds
                  without a replay store ``REPLAY``, builds with neither
                  ``LOAD_DATA``.
``STATUS``        optional ``flags:u8`` (bit 0: clear counters and sticky flags
                  after reading). Reply: :data:`STATUS`.
"""

from __future__ import annotations

import binascii
import dataclasses
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum, IntFlag
from typing import Any, ClassVar, Protocol, Self

from .params import (
    COST_BITS,
    COST_ONE,
    HALP_LOSSES,
    L2_SHIFT_MAX,
    MODEL_COPIES,
    OFFSET_BITS,
    SAMPLER_ENTRIES,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
    clog2,
)

__all__ = [
    "VERSION", "SYNC", "MAGIC", "TIMEOUT_BYTES_TIME", "Command", "Status", "StatusFlags",
    "Options", "Field", "Bits", "Fixed", "Message", "Record",
    "CONFIGURE", "IDENTIFY", "STATUS", "MODEL_HEADER", "Configure", "Identity", "Counters",
    "Region", "regions", "DATA_HEADER", "RUN", "Run", "REPLAY", "Replay",
    "CONFIGURE_FORMAT", "IDENTIFY_FORMAT", "STATUS_FORMAT", "MODEL_HEADER_FORMAT",
    "MODE_DOUBLE", "MODE_LOSS_SHIFT", "MODE_PHASE_SHIFT", "MODE_STOCHASTIC", "COUNTER_BITS",
    "REQUEST_HEADER", "REPLY_HEADER", "crc16", "encode_request", "encode_reply", "decode_reply",
]

#: Protocol version, reported by ``IDENTIFY``.
VERSION = 7
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
    LOAD_DATA = 0x09
    RUN = 0x0A
    REPLAY = 0x0B


class Region(IntEnum):
    """The parts of the resident store ``LOAD_DATA`` writes (``ziphalp.hw.params``,
    "Resident data")."""

    CODES = 0      # rows of `lanes` 8-bit codes; beat a: row a // beats_per_row
    LABELS = 1     # LABEL words; beat a: labels a * (beat_bits // 16) ...
    SAMPLER = 2    # the sampler table, one uint32 entry (j | t << 8) per code
    BEATS = 3      # the replay store: stream beats as the host packs them

    def beats(self, params: EngineParams) -> int:
        """Beats the region holds in a build (0 if the build lacks it)."""
        if self == Region.BEATS:
            return params.replay_beats
        if not params.resident:
            return 0
        if self == Region.CODES:
            return params.resident_rows * params.beats_per_row
        if self == Region.LABELS:
            return -(-params.resident_samples // (params.beat_bits // 16))
        return SAMPLER_ENTRIES * 32 // params.beat_bits


def regions(params: EngineParams) -> list[Region]:
    """The regions a build's ``LOAD_DATA`` writes."""
    return [region for region in Region if region.beats(params)]


class Status(IntEnum):
    OK = 0x00
    CRC = 0x01        # CRC mismatch
    COMMAND = 0x02    # unknown command
    LENGTH = 0x03     # payload length wrong for the command or larger than the buffer
    ARGUMENT = 0x04   # an argument out of range (configuration, model range, level)
    STATE = 0x05      # not allowed now (STREAM before CONFIGURE, LOAD_MODEL in the inner
                      # loop, RUN or REPLAY beyond the data loaded)
    TIMEOUT = 0x06    # request stalled mid-frame

    def describe(self) -> str:
        return {
            Status.OK: "ok",
            Status.CRC: "CRC mismatch",
            Status.COMMAND: "unknown command",
            Status.LENGTH: "bad payload length",
            Status.ARGUMENT: "argument out of range",
            Status.STATE: "not allowed now (not configured, a model load in the inner loop, "
                          "or a run or replay beyond the data loaded)",
            Status.TIMEOUT: "request timed out mid-frame",
        }[self]


class Options(IntFlag):
    """Optional engine blocks a build has (``IDENTIFY``)."""

    CLASS_COSTS = 0x01  # class costs other than 1.0
    L2_DECAY = 0x02     # an L2 decay shift other than 0
    HALP = 0x04         # the HALP phases (bit-centering SVRG)
    RESIDENT = 0x08     # the resident data store (LOAD_DATA, RUN)
    REPLAY = 0x10       # the replay store (LOAD_DATA, REPLAY)
    DEEP_PIPELINE = 0x20  # the fast clock's register stages (EngineParams.deep_pipeline)

    def describe(self) -> str:
        return {Options.CLASS_COSTS: "class costs", Options.L2_DECAY: "the L2 decay",
                Options.HALP: "HALP mode", Options.RESIDENT: "resident data",
                Options.REPLAY: "a replay store",
                Options.DEEP_PIPELINE: "the deep pipeline"}[self]


class StatusFlags(IntFlag):
    OVERFLOW = 0x01    # sticky: a model update saturated
    CLIPPED = 0x02     # sticky: a scaled residual saturated
    CONFIGURED = 0x04  # CONFIGURE has been accepted since reset


class Build(Protocol):
    """What a range may depend on: ``EngineParams`` or an ``Identity`` alike."""

    max_features: int
    max_batch: int
    max_k: int
    options: int
    resident_samples: int


# --- field tables ------------------------------------------------------------------------

@dataclass(frozen=True)
class Field:
    """One integer field of a message.

    Parameters
    ----------
    name : str
        The record's attribute; for CONFIGURE also the engine's control member
        (``ziphalp.hw.control``) and the golden model's keyword.
    code : str or int
        Struct code of a whole field (``"B"``, ``"H"``, ``"h"``, ``"I"``, ``"Q"``),
        or the width in bits of a field of a :class:`Bits` byte.
    meaning : str
        What it holds.
    valid : range, callable or None
        The values a board takes: a range, a function of the :class:`Build` that
        gives one (the range is the build's), or None: every value the field holds
        (an enum: its members).
    kind : type
        The value's type in a record: ``int``, ``bool`` or an enum.
    default : optional
        The value the host sends when it is not given (None: always given).
    needs : Options, optional
        A build without this option takes ``default`` only.
    """

    name: str
    code: str | int
    meaning: str
    valid: range | Callable[[Build], range] | None = None
    kind: type = int
    default: Any = None
    needs: Options | None = None

    @property
    def bits(self) -> int:
        """Width on the wire."""
        return self.code if isinstance(self.code, int) else 8 * struct.calcsize(self.code)

    @property
    def signed(self) -> bool:
        return isinstance(self.code, str) and self.code.islower()

    @property
    def per_build(self) -> bool:
        """The range depends on the build."""
        return callable(self.valid)

    def values(self, build: Build | None = None) -> range:
        """The values a board (``build``; needed if :attr:`per_build`) takes,
        before the build's options restrict them."""
        if self.per_build:
            return self.valid(build)
        if self.valid is not None:
            return self.valid
        if issubclass(self.kind, Enum):
            assert [int(member) for member in self.kind] == list(range(len(self.kind)))
            return range(len(self.kind))
        low = -(1 << (self.bits - 1)) if self.signed else 0
        return range(low, low + (1 << self.bits))

    def cast(self, value) -> Any:
        """``value`` as :attr:`kind`, or ValueError naming the field."""
        if self.kind is bool:
            if value not in (0, 1):
                raise ValueError(f"{self.name} must be a bool, not {value!r}")
            return bool(value)
        if issubclass(self.kind, IntFlag):
            return self.kind(operator.index(value))
        if issubclass(self.kind, Enum):
            try:
                return self.kind(value)
            except ValueError:
                names = ", ".join(member.name for member in self.kind)
                raise ValueError(f"{self.name} must be a {self.kind.__name__} ({names}), "
                                 f"not {value!r}") from None
        try:
            return operator.index(value)
        except TypeError:
            raise ValueError(f"{self.name} must be an integer, not {value!r}") from None


@dataclass(frozen=True)
class Bits:
    """One byte of bit fields, the first :class:`Field` in the low bits; the bits
    above the last are reserved and zero."""

    name: str
    fields: tuple[Field, ...]
    code: ClassVar[str] = "B"

    def __post_init__(self):
        assert sum(f.bits for f in self.fields) <= 8, f"{self.name}: more than a byte"

    def offset(self, name: str) -> int:
        """Position of field ``name``'s low bit."""
        offset = 0
        for f in self.fields:
            if f.name == name:
                return offset
            offset += f.bits
        raise KeyError(name)


@dataclass(frozen=True)
class Fixed:
    """Bytes of a fixed value (``value``), or reserved zero padding (``value`` None)."""

    name: str
    code: str
    value: bytes | None = None


class Message:
    """The field table of one payload, and what is derived from it.

    Parameters
    ----------
    name : str
        For messages: CONFIGURE, IDENTIFY, ...
    items : sequence of Field, Bits or Fixed
        The payload in wire order.

    Attributes
    ----------
    format : struct.Struct
    size : int
        Bytes of the payload.
    fields : tuple of Field
        The record's fields in wire order, those of a :class:`Bits` byte in place.
    groups : dict
        Field name to the name of the :class:`Bits` byte it is in (None: a whole field).
    """

    def __init__(self, name: str, items: Sequence[Field | Bits | Fixed]):
        self.name, self.items = name, tuple(items)
        self.format = struct.Struct("<" + "".join(item.code for item in self.items))
        self.size = self.format.size
        self.fields, self.groups = (), {}
        for item in self.items:
            if isinstance(item, Fixed):
                continue
            inner = item.fields if isinstance(item, Bits) else (item,)
            self.fields += inner
            self.groups.update((f.name, item.name if isinstance(item, Bits) else None)
                               for f in inner)

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def item(self, name: str) -> Field | Bits | Fixed:
        return next(item for item in self.items if item.name == name)

    def byte_offset(self, name: str) -> int:
        """Where item ``name`` starts in the payload."""
        before = self.items[:self.items.index(self.item(name))]
        return struct.calcsize("<" + "".join(item.code for item in before))

    def record_fields(self) -> list[tuple]:
        """Fields for ``dataclasses.make_dataclass``: wire order, defaults keyword-only."""
        return [(f.name, f.kind) if f.default is None else
                (f.name, f.kind, dataclasses.field(default=f.default, kw_only=True))
                for f in self.fields]

    def pack(self, record: Record) -> bytes:
        values = []
        for item in self.items:
            if isinstance(item, Fixed):
                if item.value is not None:
                    values.append(item.value)
                continue
            if isinstance(item, Field):
                values.append(int(getattr(record, item.name)))
                continue
            byte = 0
            for f in item.fields:
                value = int(getattr(record, f.name))
                if not 0 <= value < 1 << f.bits:
                    raise ValueError(f"{self.name}: {f.name} {value} does not fit "
                                     f"{f.bits} bits")
                byte |= value << item.offset(f.name)
            values.append(byte)
        try:
            return self.format.pack(*values)
        except struct.error as e:
            raise ValueError(f"{self.name}: {e}") from None

    def unpack(self, payload: bytes, record: type[Record]) -> Record:
        """``payload`` as ``record``; ValueError if it has the wrong size, a fixed
        field another value, a reserved bit set or a value its kind does not take."""
        if len(payload) != self.size:
            raise ValueError(f"{self.name} payload has {len(payload)} bytes, "
                             f"expected {self.size}")
        values, fields = iter(self.format.unpack(payload)), {}
        for item in self.items:
            if isinstance(item, Fixed):
                if item.value is not None and (got := next(values)) != item.value:
                    raise ValueError(f"{self.name} has {item.name} {got!r}, "
                                     f"expected {item.value!r}")
            elif isinstance(item, Field):
                fields[item.name] = item.cast(next(values))
            else:
                byte = next(values)
                for f in item.fields:
                    fields[f.name] = f.cast(byte >> item.offset(f.name) & ((1 << f.bits) - 1))
                used = sum(f.bits for f in item.fields)
                if byte >> used:
                    raise ValueError(f"{self.name}: reserved bits of {item.name} set "
                                     f"(0x{byte:02x})")
        return record(**fields)

    def check(self, record: Record, build: Build, board: str = "the board") -> Record:
        """``record`` with its values cast to their kinds, if ``build`` takes every
        field; else ValueError saying which field, why, and (for a range of the
        build or an option) that it is ``board``'s."""
        values = {}
        for f in self.fields:
            value = values[f.name] = f.cast(getattr(record, f.name))
            span = f.values(build)
            if value not in span:
                where = f" on {board}" if f.per_build else ""
                raise ValueError(f"{f.name} must be {span.start}..{span.stop - 1}{where}, "
                                 f"not {value}")
        for f in self.fields:
            if f.needs and not build.options & f.needs and values[f.name] != f.default:
                default = getattr(f.default, "name", f.default)
                raise ValueError(f"{board} is built without {f.needs.describe()} "
                                 f"({f.name} must be {default})")
        return dataclasses.replace(record, **values)

    def describe(self) -> str:
        """The table as text: one line per field (name, bits, range, default, meaning)."""
        lines = []
        for f in self.fields:
            span = "the build's" if f.per_build else f"{f.values().start}..{f.values().stop - 1}"
            default = getattr(f.default, "name", f.default)
            default = "" if f.default is None else f", default {default}"
            lines.append(f"{f.name} ({f.bits} bits, {span}{default}): {f.meaning}")
        return "\n".join(lines)


class Record:
    """Base of the message records: they pack and unpack by their :class:`Message`."""

    MESSAGE: ClassVar[Message]

    def pack(self) -> bytes:
        return self.MESSAGE.pack(self)

    @classmethod
    def unpack(cls, payload: bytes) -> Self:
        return cls.MESSAGE.unpack(payload, cls)


def record(message: Message) -> type:
    """A frozen dataclass with the fields of ``message``, :class:`Record` methods."""
    return dataclasses.make_dataclass(f"{message.name.title()}Fields", message.record_fields(),
                                      bases=(Record,), namespace={"MESSAGE": message},
                                      frozen=True)


#: CONFIGURE's payload: the run-time configuration of the engine.
CONFIGURE = Message("CONFIGURE", [
    Field("features", "H", "d, features per sample",
          lambda build: range(1, build.max_features + 1)),
    Field("batch", "H", "B, samples per mini-batch (ignored by the HALP phases)",
          lambda build: range(1, build.max_batch + 1)),
    Field("shift", "B", "step size 2**-shift (Phase.FULL: ceil(log2 n), scaling the sum "
          "with the costs)", range(SHIFT_MAX + 1)),
    Field("k", "B", "precision: fields of k + 1 + double bits over the levels "
          "l_0 .. l_{2**k}", lambda build: range(1, build.max_k + 1), default=8),
    Bits("mode", (
        Field("double", 1, "double sampling (a field carries two roundings)", kind=bool,
              default=True),
        Field("loss", clog2(len(Loss)), "the loss whose gradient the engine follows", kind=Loss,
              default=Loss.SQUARED),
        Field("phase", clog2(len(Phase)), "SGD, or a HALP phase (FULL, INNER)", kind=Phase,
              default=Phase.SGD, needs=Options.HALP),
        Field("stochastic", 1, "stochastic rounding of the HALP offset (else to nearest)",
              kind=bool, default=False),
    )),
    Field("l2_shift", "B", "L2 decay w >> l2_shift at each update (0: off)",
          range(L2_SHIFT_MAX + 1), default=0, needs=Options.L2_DECAY),
    Field("cost_pos", "B", "cost of the positive class (COST_FRAC fraction bits; "
          "Phase.FULL: round(2**(COST_FRAC + shift) / n))", default=COST_ONE,
          needs=Options.CLASS_COSTS),
    Field("cost_neg", "B", "cost of the negative class (as cost_pos)", default=COST_ONE,
          needs=Options.CLASS_COSTS),
    Field("offset_bits", "B", "HALP offset width b", range(2, OFFSET_BITS + 1), default=8),
    Field("scale_log", "h", "HALP grid scale, round(2**LOG_FRAC * log2(mu (2**(b-1) - 1)))",
          default=0),
    Field("seed", "I", "seed of the PRNG lanes (applied by Phase.INNER)", default=0),
    Field("stale", "B", "Phase.INNER: delay tau, in samples, of the model a sample's dot "
          "product sees (params: Delayed gradients)", range(MODEL_COPIES - 1), default=0,
          needs=Options.HALP),
])
assert CONFIGURE.field("cost_pos").bits == COST_BITS
assert CONFIGURE.field("scale_log").bits == SCALE_LOG_BITS


class Configure(record(CONFIGURE)):
    """A CONFIGURE payload (fields: :data:`CONFIGURE`)."""

    def check(self, build: Build, board: str = "the board") -> Configure:
        """This configuration with its values cast (``Loss``, ``Phase``, bool), if
        ``build`` takes it; else ValueError (see :meth:`Message.check`)."""
        config = CONFIGURE.check(self, build, board)
        if config.phase != Phase.SGD and config.loss not in HALP_LOSSES:
            losses = " or the ".join(loss.name for loss in HALP_LOSSES)
            raise ValueError(f"phase {config.phase.name} runs the {losses} loss, "
                             f"not {config.loss.name}")
        return config


#: IDENTIFY's reply: the build's parameters.
IDENTIFY = Message("IDENTIFY", [
    Fixed("magic", "4s", MAGIC),
    Field("version", "B", "protocol version (VERSION)"),
    Field("options", "B", "the optional engine blocks built", kind=Options),
    Field("beat_bits", "H", "W, bits of a stream beat"),
    Field("lanes", "B", "lanes of the dot product and the update"),
    Field("max_k", "B", "largest precision k"),
    Field("max_features", "H", "largest d"),
    Field("max_batch", "H", "largest mini-batch"),
    Field("model_bits", "B", "model word width"),
    Field("model_frac", "B", "model word fraction bits"),
    Field("frame_bytes", "H", "largest request payload"),
    Field("clock_hz", "I", "engine clock"),
    Field("build_id", "I", "identifier of the parameters and protocol version"),
    Field("halp_samples", "H", "entries of the HALP anchor-error cache (0: no HALP)"),
    Field("update_gap", "B", "cycles a batch-ending sample adds for its model update "
          "(SGDEngine.update_gap; delayed gradients hide them)"),
    Field("resident_rows", "I", "rows of lanes codes in the resident store (0: none)"),
    Field("resident_samples", "H", "labels in the resident store"),
    Field("replay_beats", "I", "beats in the replay store (0: none)"),
])


class Identity(record(IDENTIFY)):
    """The board's answer to IDENTIFY (fields: :data:`IDENTIFY`)."""

    @classmethod
    def of(cls, params: EngineParams, version: int = VERSION, *,
           update_gap: int) -> Identity:
        """What a board built with ``params`` answers (``update_gap``: the engine's,
        ``ziphalp.hw.engine.SGDEngine.update_gap``)."""
        return cls(**{f.name: f.cast(getattr(params, f.name)) for f in IDENTIFY.fields
                      if f.name not in ("version", "update_gap")}, version=version,
                   update_gap=update_gap)

    def params(self) -> EngineParams:
        """The engine parameters reported, or ValueError if they are impossible."""
        if bool(self.options & Options.HALP) != (self.halp_samples > 0):
            raise ValueError(f"HALP option {bool(self.options & Options.HALP)} "
                             f"with halp_samples {self.halp_samples}")
        if bool(self.options & Options.RESIDENT) != (self.resident_rows > 0):
            raise ValueError(f"resident option {bool(self.options & Options.RESIDENT)} "
                             f"with resident_rows {self.resident_rows}")
        if bool(self.options & Options.REPLAY) != (self.replay_beats > 0):
            raise ValueError(f"replay option {bool(self.options & Options.REPLAY)} "
                             f"with replay_beats {self.replay_beats}")
        names = {f.name for f in IDENTIFY.fields} & set(EngineParams.__dataclass_fields__)
        return EngineParams(**{name: getattr(self, name) for name in names},
                            class_costs=bool(self.options & Options.CLASS_COSTS),
                            l2_decay=bool(self.options & Options.L2_DECAY),
                            deep_pipeline=bool(self.options & Options.DEEP_PIPELINE))


#: STATUS's reply: flags and counters (each wraps at its range).
STATUS = Message("STATUS", [
    Field("flags", "B", "sticky flags, and CONFIGURED", kind=StatusFlags),
    Fixed("reserved", "3x"),
    Field("cycles", "Q", "cycles the engine was busy or fed", range(1 << 48)),
    Field("samples", "I", "samples processed"),
    Field("beats", "I", "beats the engine took"),
    Field("updates", "I", "model updates (batch ends)"),
    Field("frames_ok", "H", "requests accepted"),
    Field("frames_bad", "H", "requests rejected"),
])


class Counters(record(STATUS)):
    """The board's answer to STATUS (fields: :data:`STATUS`)."""


#: The start of LOAD_MODEL's and READ_MODEL's payloads.
MODEL_HEADER = Message("MODEL_HEADER", [
    Field("start", "H", "index of the first weight"),
    Field("count", "H", "READ_MODEL: weights to read; LOAD_MODEL: reserved, 0"),
])

#: The start of LOAD_DATA's payload (then whole beats of the region).
DATA_HEADER = Message("DATA_HEADER", [
    Field("region", "B", "the part of the store written", kind=Region),
    Fixed("reserved", "3x"),
    Field("start", "I", "index of the first beat written, in beats of the region"),
])

#: RUN's payload: feed the engine from the resident store.
RUN = Message("RUN", [
    Field("count", "I", "samples to feed", range(1, 1 << 32)),
    Field("first", "H", "resident sample fed first (less than samples)"),
    Field("stride", "H", "step between the samples fed, mod samples (less than samples)"),
    Field("samples", "H", "n, the resident samples the walk covers",
          lambda build: range(1, build.resident_samples + 1)),
    Field("bias", "B", "the last of the d features is the constant 1.0, made on chip "
          "(the store holds d - 1)", range(2), default=0),
    Fixed("reserved", "1x"),
    Field("seed", "I", "seed of the sampling lanes"),
])


class Run(record(RUN)):
    """A RUN payload (fields: :data:`RUN`)."""

    def check(self, build: Build, board: str = "the board") -> Run:
        """This run with its values cast, if ``build`` takes it; else ValueError."""
        if not build.options & Options.RESIDENT:
            raise ValueError(f"{board} is built without resident data")
        run = RUN.check(self, build, board)
        for name in ("first", "stride"):
            if getattr(run, name) >= run.samples:
                raise ValueError(f"{name} must be below samples ({run.samples}), "
                                 f"not {getattr(run, name)}")
        return run


#: REPLAY's payload: feed the engine from the replay store.
REPLAY = Message("REPLAY", [
    Field("first", "I", "beat fed first (below the beats loaded)"),
    Field("count", "I", "beats to feed", range(1, 1 << 32)),
])


class Replay(record(REPLAY)):
    """A REPLAY payload (fields: :data:`REPLAY`)."""

    def check(self, build: Build, board: str = "the board") -> Replay:
        """This replay with its values cast, if ``build`` takes it; else ValueError."""
        if not build.options & Options.REPLAY:
            raise ValueError(f"{board} is built without a replay store")
        return REPLAY.check(self, build, board)


IDENTIFY_FORMAT = IDENTIFY.format
CONFIGURE_FORMAT = CONFIGURE.format
STATUS_FORMAT = STATUS.format
MODEL_HEADER_FORMAT = MODEL_HEADER.format
#: The CONFIGURE mode byte's fields, for code that packs it by hand.
_MODE = CONFIGURE.item("mode")
MODE_DOUBLE = 1 << _MODE.offset("double")
MODE_LOSS_SHIFT = _MODE.offset("loss")
MODE_PHASE_SHIFT = _MODE.offset("phase")
MODE_STOCHASTIC = 1 << _MODE.offset("stochastic")
#: Width in bits of the counters in ``STATUS`` (they wrap).
COUNTER_BITS = {f.name: f.values().stop.bit_length() - 1 for f in STATUS.fields
                if f.kind is int}


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (the standard library's ``crc_hqx``)."""
    return binascii.crc_hqx(data, crc)


#: struct formats of the request header (cmd, seq, len) and the reply header
#: (cmd, status, seq, len), after the sync word.
REQUEST_HEADER = struct.Struct("<BBH")
REPLY_HEADER = struct.Struct("<BBBH")


def encode_request(cmd: int, payload: bytes = b"", seq: int = 0) -> bytes:
    """One host -> board frame (``seq`` 0: unnumbered)."""
    body = REQUEST_HEADER.pack(cmd, seq, len(payload)) + payload
    return SYNC + body + struct.pack("<H", crc16(body))


def encode_reply(cmd: int, status: int, payload: bytes = b"", seq: int = 0) -> bytes:
    """One board -> host frame (used by tests and models of the board)."""
    body = REPLY_HEADER.pack(cmd, status, seq, len(payload)) + payload
    return SYNC + body + struct.pack("<H", crc16(body))


def decode_reply(frame: bytes) -> tuple[int, int, int, bytes]:
    """``cmd``, ``status``, ``seq`` and payload of one whole, well-formed reply frame
    (ValueError otherwise)."""
    head = len(SYNC) + REPLY_HEADER.size
    if frame[:len(SYNC)] != SYNC or len(frame) < head + 2:
        raise ValueError("not a reply frame")
    cmd, status, seq, length = REPLY_HEADER.unpack(frame[len(SYNC):head])
    if len(frame) != head + length + 2:
        raise ValueError(f"reply frame of {len(frame)} bytes for a {length}-byte payload")
    if struct.unpack("<H", frame[-2:])[0] != crc16(frame[len(SYNC):-2]):
        raise ValueError("reply CRC mismatch")
    return cmd, status, seq, frame[head:-2]
