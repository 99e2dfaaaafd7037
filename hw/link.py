"""The board's command processor: link protocol requests in, engine control out.

:class:`Link` sits between the serial byte streams and the SGD engine. It
implements the protocol of :mod:`ziphalp.hw.protocol` (framing, commands, status
codes) and drives the engine through :func:`ziphalp.hw.control.control_signature`.
It is made of two parts around one frame buffer:

- :class:`LinkReceiver` hunts for the sync word, writes the payload into the
  frame buffer, keeps the first payload bytes as arguments, checks the CRC and
  hands the request (or a CRC, LENGTH or TIMEOUT failure) to the executor;
- :class:`LinkExecutor` checks the request, acts on it (configuration
  registers, level and model ports, beat replay from the frame buffer) and
  sends the reply, built byte by byte from registers and counters.

The link knows neither how the bytes travel (see :mod:`ziphalp.hw.uart`) nor
what the engine computes. A rejected request changes nothing.
"""

from functools import reduce
from operator import or_

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Component, In, Out, Signature
from amaranth.utils import ceil_log2

from .control import control_signature
from .crc import CRC16
from .params import (
    COST_BITS,
    COST_ONE,
    L2_SHIFT_MAX,
    LEVEL,
    OFFSET_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
)
from .protocol import (
    CONFIGURE_FORMAT,
    COUNTER_BITS,
    IDENTIFY_FORMAT,
    MODE_DOUBLE,
    MODE_LOSS_SHIFT,
    MODE_PHASE_SHIFT,
    MODE_STOCHASTIC,
    MODEL_HEADER_FORMAT,
    STATUS_FORMAT,
    SYNC,
    VERSION,
    Command,
    Identity,
    Options,
    Status,
    StatusFlags,
)

__all__ = ["Link", "LinkReceiver", "LinkExecutor", "ARGS_LAYOUT", "request_signature"]

#: Bytes of one weight in LOAD_MODEL and READ_MODEL payloads (int32).
WEIGHT_BYTES = 4
#: Bytes of one level in LOAD_LEVELS payloads (int16).
LEVEL_BYTES = 2
#: The CONFIGURE mode byte: bit 0 double sampling, bits 1-2 the loss, bits 3-4 the
#: phase, bit 5 stochastic rounding of the HALP offset, the rest zero.
LOSS_BITS = ceil_log2(len(Loss))
MODE_LAYOUT = data.StructLayout({"double": 1, "loss": LOSS_BITS, "phase": 2, "stochastic": 1,
                                 "reserved": 4 - LOSS_BITS})
assert MODE_DOUBLE == 1 << 0 and MODE_LOSS_SHIFT == 1 and 1 << LOSS_BITS == len(Loss)
assert MODE_PHASE_SHIFT == 1 + LOSS_BITS and MODE_STOCHASTIC == 1 << (MODE_PHASE_SHIFT + 2)
#: The first payload bytes of a request, kept in registers, as the commands read them.
ARGS_LAYOUT = data.UnionLayout({
    "configure": data.StructLayout({
        "features": 16, "batch": 16, "shift": 8, "k": 8, "mode": MODE_LAYOUT,
        "l2_shift": 8, "cost_pos": COST_BITS, "cost_neg": COST_BITS,
        "offset_bits": 8, "scale_log": signed(16), "seed": 32}),
    "model": data.StructLayout({"start": 16, "count": 16}),  # count is reserved (0) for LOAD
    "status": data.StructLayout({"flags": 8}),
})
ARGS_BYTES = ARGS_LAYOUT.size // 8
assert CONFIGURE_FORMAT.size == ARGS_BYTES and MODEL_HEADER_FORMAT.size == WEIGHT_BYTES
assert COST_BITS == 8
# an int16 fits a LEVEL iff its bits LEVEL.bits - 1 .. 15 are equal: bits
# LEVEL.bits - 9 .. 7 of its high byte (see LinkReceiver)
assert 9 <= LEVEL.bits <= 16
#: Reply bytes before the payload: sync word, cmd, status, len.
REPLY_HEADER_BYTES = len(SYNC) + 4
#: STATUS reply fields in the order and widths of ``STATUS_FORMAT`` (None: reserved zero).
STATUS_FIELDS = (("flags", 8), (None, 24), ("cycles", 64), ("samples", 32), ("beats", 32),
                 ("updates", 32), ("frames_ok", 16), ("frames_bad", 16))
assert sum(bits for _, bits in STATUS_FIELDS) == 8 * STATUS_FORMAT.size


def buffer_depth(p: EngineParams) -> int:
    """Beats in the frame buffer: one request payload of ``frame_bytes``."""
    return p.frame_bytes // (p.beat_bits // 8)


def request_signature(p: EngineParams) -> Signature:
    """A received request, from the receiver's side. Held while ``valid``, until ``done``."""
    return Signature({
        "valid": Out(1),
        "cmd": Out(8),
        "length": Out(16),
        "status": Out(Status),          # OK, or CRC / LENGTH / TIMEOUT found while receiving
        "args": Out(ARGS_LAYOUT),       # first payload bytes (stale beyond the payload)
        "beats": Out(range(buffer_depth(p) + 1)),  # whole beats written to the frame buffer
        "whole": Out(1),                # the payload is a whole number of beats
        "wide": Out(1),                 # an int16 at an even payload offset does not fit a LEVEL
        "done": In(1),                  # reply sent: hunt for the next request
    })


def saturate(value, bits):
    """``value`` (signed) clamped to ``bits`` bits, or sign-extended if it is narrower."""
    if len(value) <= bits:
        return value
    top, sign = value[bits - 1:], value[-1]
    fits = top.all() | ~top.any()
    return Mux(fits, value[:bits], Cat((~sign).replicate(bits - 1), sign)).as_signed()


class LinkReceiver(Component):
    """Request framer: sync hunt, header, payload into the frame buffer, CRC check.

    Bytes go through an input register (one byte per cycle). ``rx.ready`` is high
    only while ``enable`` is and the receiver wants a byte: not once a frame's
    header or CRC is complete until the length is checked (two cycles) or the
    request is answered. A ``len`` larger than the frame buffer is handed over at
    once with ``LENGTH``; ``timeout_cycles`` cycles without a byte after the sync
    word hand the partial request over with ``TIMEOUT``.

    While the payload arrives, ``req.wide`` notes whether some int16 of it (at an
    even offset, as ``LOAD_LEVELS`` reads levels) is outside the ``LEVEL`` range:
    the high byte of each has its top ``17 - LEVEL.bits`` bits checked for being
    all equal, one byte at a time.

    Parameters
    ----------
    params : EngineParams
    timeout_cycles : int
        Inter-byte timeout within a frame, in clock cycles.

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes.
    enable : In(1)
        Accept bytes (the engine is idle).
    buf : In(WritePort.Signature)
        Frame buffer write port (``beat_bits`` wide, byte granularity).
    req : Out(request_signature(params))
        The received request, to the executor.
    """

    def __init__(self, params: EngineParams, timeout_cycles: int):
        self.params = params
        self.timeout_cycles = timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "enable": In(1),
            "buf": In(WritePort.Signature(addr_width=ceil_log2(buffer_depth(params)),
                                          shape=unsigned(params.beat_bits), granularity=8)),
            "req": Out(request_signature(params)),
        })

    def elaborate(self, platform):
        m = Module()
        p, req = self.params, self.req
        m.submodules.crc = crc = CRC16()

        # the input register: a byte arrives in one cycle and is handled in the next
        arrive = Signal()
        byte = Signal(8)                            # the byte handled
        take = Signal()                             # a byte is handled this cycle
        m.d.comb += arrive.eq(self.rx.valid & self.rx.ready)
        m.d.sync += take.eq(arrive)
        with m.If(arrive):
            m.d.sync += byte.eq(self.rx.payload)

        lane = Signal(p.beat_bits // 8, init=1)     # one-hot byte lane of the next payload byte
        odd = Signal()                              # the next payload byte is at an odd offset
        arg = Signal(ARGS_BYTES)                    # one-hot argument byte (0 past them)
        left = Signal(16)                           # payload bytes still to come
        last = Signal()                             # left == 1
        crc_ok = Signal(2)                          # the CRC's low and high bytes matched
        failed = {status: Signal(name=f"failed_{status.name.lower()}")    # at most one is set
                  for status in (Status.TIMEOUT, Status.LENGTH, Status.CRC)}
        too_long = Signal()                         # req.length, a cycle ago, > frame_bytes
        empty = Signal()                            # req.length, a cycle ago, == 0
        timer = Signal(range(self.timeout_cycles))
        expired = Signal()                          # timeout_cycles cycles without a byte
        mid_frame = Signal()

        m.d.comb += [
            self.buf.addr.eq(req.beats),
            self.buf.data.eq(byte.replicate(len(lane))),
            req.whole.eq(lane[0]),
            req.status.eq(Mux(failed[Status.TIMEOUT], Status.TIMEOUT,
                              Mux(failed[Status.LENGTH], Status.LENGTH,
                                  Mux(failed[Status.CRC], Status.CRC, Status.OK)))),
            crc.data.eq(byte),
        ]
        m.d.sync += [
            too_long.eq(req.length > p.frame_bytes),
            empty.eq(req.length == 0),
            timer.eq(Mux(arrive | ~mid_frame, 0, timer + 1)),
            expired.eq(mid_frame & ~arrive & (timer == self.timeout_cycles - 2)),
        ]
        with m.If(expired):                         # only mid-frame
            m.d.sync += failed[Status.TIMEOUT].eq(1)

        def frame_byte(next_state, *, checked=True):
            """Handle a byte after the sync word (absorbing it into the CRC if
            ``checked``) and go to ``next_state``, or time out."""
            m.d.comb += [mid_frame.eq(1), crc.valid.eq(take & checked)]
            with m.If(take):
                m.next = next_state
            with m.If(expired):                 # never with take
                m.next = "WAIT"

        with m.FSM() as fsm:
            with m.State("HUNT"):
                m.d.comb += crc.reset.eq(1)
                with m.If(take & (byte == SYNC[0])):
                    m.next = "SYNC"
            with m.State("SYNC"):
                m.d.comb += crc.reset.eq(1)
                with m.If(take & (byte == SYNC[1])):
                    m.next = "CMD"
                with m.Elif(take & (byte != SYNC[0])):
                    m.next = "HUNT"
            with m.State("CMD"):
                frame_byte("LEN_LO")
                with m.If(take):
                    m.d.sync += req.cmd.eq(byte)
            with m.State("LEN_LO"):
                frame_byte("LEN_HI")
                with m.If(take):
                    m.d.sync += req.length[:8].eq(byte)
            with m.State("LEN_HI"):
                frame_byte("LENGTH")
                with m.If(take):
                    m.d.sync += req.length[8:].eq(byte)
            with m.State("LENGTH"):                 # no byte comes; too_long and empty settle
                m.d.sync += [left.eq(req.length), last.eq(req.length == 1),
                             req.beats.eq(0), lane.eq(1), arg.eq(1), odd.eq(0), req.wide.eq(0)]
                m.next = "LENGTH_CHECK"
            with m.State("LENGTH_CHECK"):           # no byte comes
                with m.If(too_long):
                    m.d.sync += failed[Status.LENGTH].eq(1)
                    m.next = "WAIT"
                with m.Elif(empty):
                    m.next = "CRC_LO"
                with m.Else():
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                frame_byte("PAYLOAD")
                with m.If(take):
                    m.d.comb += self.buf.en.eq(lane)
                    m.d.sync += [lane.eq(lane.rotate_left(1)), arg.eq(arg << 1),
                                 left.eq(left - 1), last.eq(left == 2), odd.eq(~odd)]
                    top = byte[LEVEL.bits - 9:]     # of an int16's high byte: all equal if it fits
                    with m.If(odd & top.any() & ~top.all()):
                        m.d.sync += req.wide.eq(1)
                    with m.If(lane[-1]):
                        m.d.sync += req.beats.eq(req.beats + 1)
                    for i in range(ARGS_BYTES):
                        with m.If(arg[i]):
                            m.d.sync += req.args.as_value()[8 * i:8 * i + 8].eq(byte)
                    with m.If(last):
                        m.next = "CRC_LO"
            with m.State("CRC_LO"):
                frame_byte("CRC_HI", checked=False)
                with m.If(take):
                    m.d.sync += crc_ok[0].eq(byte == crc.crc[:8])
            with m.State("CRC_HI"):
                frame_byte("CRC", checked=False)
                with m.If(take):
                    m.d.sync += crc_ok[1].eq(byte == crc.crc[8:])
            with m.State("CRC"):                    # no byte comes
                with m.If(~crc_ok.all()):
                    m.d.sync += failed[Status.CRC].eq(1)
                m.next = "WAIT"
            with m.State("WAIT"):
                m.d.comb += req.valid.eq(1)
                with m.If(req.done):
                    m.d.sync += [req.cmd.eq(0), *(flag.eq(0) for flag in failed.values())]
                    m.next = "HUNT"

        # one-hot: short decode paths in synthesis (the domain's reset sets the state)
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        # no byte may arrive once the frame's header or CRC is complete, until the
        # length is checked or the request is answered
        pause = Cat(fsm.ongoing(state) for state in ("LENGTH", "LENGTH_CHECK", "CRC", "WAIT"))
        closing = Signal()          # the byte handled closes the header or the CRC
        m.d.sync += closing.eq(arrive & Cat(
            (fsm.ongoing(before) & take) | (fsm.ongoing(closer) & ~take)   # closer's byte
            for before, closer in (("LEN_LO", "LEN_HI"), ("CRC_LO", "CRC_HI"))).any())
        m.d.comb += self.rx.ready.eq(self.enable & ~pause.any() & ~closing & ~expired)
        return m


class LinkExecutor(Component):
    """Request executor: checks a received request, acts on it, sends the reply.

    Checks go in this order and the first failure is the reply's status: the
    receiver's (CRC, LENGTH, TIMEOUT), unknown command (COMMAND), payload length
    (LENGTH), argument ranges and reserved fields (ARGUMENT), state (STATE).
    Only a request that passes them all acts. The frame counters count a request
    when its status is decided, so a STATUS reply includes itself; clearing after
    reading takes effect once the reply is sent.

    Parameters
    ----------
    params : EngineParams

    Attributes
    ----------
    req : In(request_signature(params))
        The received request.
    buf : In(ReadPort.Signature)
        Frame buffer read port (``beat_bits`` wide, synchronous).
    tx : Out(stream.Signature(8))
        Reply bytes.
    engine : Out(control_signature(params))
        The engine.
    """

    #: Cycles from ``req.valid`` to a valid verdict (the check's register steps).
    CHECK_CYCLES = 3

    def __init__(self, params: EngineParams):
        self.params = params
        super().__init__({
            "req": In(request_signature(params)),
            "buf": In(ReadPort.Signature(addr_width=ceil_log2(buffer_depth(params)),
                                         shape=unsigned(params.beat_bits))),
            "tx": Out(stream.Signature(8)),
            "engine": Out(control_signature(params)),
        })

    def identity(self) -> bytes:
        """The IDENTIFY reply payload of this build."""
        p = self.params
        return Identity(
            version=VERSION, beat_bits=p.beat_bits, lanes=p.lanes, max_k=p.max_k,
            max_features=p.max_features, max_batch=p.max_batch, model_bits=p.model_bits,
            model_frac=p.model_frac, frame_bytes=p.frame_bytes, clock_hz=p.clock_hz,
            build_id=p.build_id, options=Options(p.options),
            halp_samples=p.halp_samples).pack()

    def check(self, m, configured):
        """Judge the request: its status, reply payload length and command.

        Three register steps keep the paths short: facts about the request (one
        comparison or sum each), then per-command verdicts, then the status by
        priority. Returns ``(verdict, accepted, payload_len, is_cmd, clear)``, valid
        ``CHECK_CYCLES`` cycles after ``req.valid`` rises (the request is held).
        """
        p, req = self.params, self.req
        cfg, model, length = req.args.configure, req.args.model, req.length

        def step(expr, name):
            reg = Signal(Value.cast(expr).shape(), name=name)
            m.d.sync += reg.eq(expr)
            return reg

        # step 1: facts
        is_cmd = {cmd: step(req.cmd == cmd, f"is_{cmd.name.lower()}") for cmd in Command}
        length_ok = {
            Command.IDENTIFY: length == 0,
            Command.CONFIGURE: length == CONFIGURE_FORMAT.size,
            Command.LOAD_MODEL: (length >= MODEL_HEADER_FORMAT.size + WEIGHT_BYTES) &
                                (length[:2] == 0),
            Command.READ_MODEL: length == MODEL_HEADER_FORMAT.size,
            Command.STREAM: (length != 0) & req.whole,
            Command.STATUS: length <= 1,
            # whole int16s, at least two (an even length >= 4 has a bit above bit 1)
            Command.LOAD_LEVELS: (length[0] == 0) & (length[2:] != 0),
        }
        length_ok = {cmd: step(ok, f"length_ok_{cmd.name.lower()}")
                     for cmd, ok in length_ok.items()}
        length_ok[Command.STREAM_FLUSH] = length_ok[Command.STREAM]
        levels_fit = step(length <= LEVEL_BYTES * min(p.levels_max, p.frame_bytes // LEVEL_BYTES),
                          "levels_fit")
        length_ok[Command.LOAD_LEVELS] = length_ok[Command.LOAD_LEVELS] & levels_fit
        configure_ok = [step(ok, name) for ok, name in [
            ((cfg.features != 0) & (cfg.features <= p.max_features), "features_ok"),
            ((cfg.batch != 0) & (cfg.batch <= p.max_batch), "batch_ok"),
            (cfg.shift <= SHIFT_MAX, "shift_ok"),
            ((cfg.k != 0) & (cfg.k <= p.max_k), "k_ok"),
            (cfg.mode.reserved == 0, "mode_ok"),
            (cfg.l2_shift <= (L2_SHIFT_MAX if p.l2_decay else 0), "l2_shift_ok"),
            (((cfg.cost_pos == COST_ONE) & (cfg.cost_neg == COST_ONE)) | p.class_costs,
             "costs_ok"),
            ((cfg.offset_bits >= 2) & (cfg.offset_bits <= OFFSET_BITS), "offset_bits_ok"),
            # a HALP phase needs the build and a squared or logistic loss
            ((cfg.mode.phase == Phase.SGD) |
             (((cfg.mode.phase == Phase.FULL) | (cfg.mode.phase == Phase.INNER)) &
              ((cfg.mode.loss == Loss.SQUARED) | (cfg.mode.loss == Loss.LOGISTIC)) &
              int(p.halp)), "phase_ok"),
        ]]
        count_zero = step(model.count == 0, "count_zero")
        count_fits = step(model.count <= p.frame_bytes // WEIGHT_BYTES, "count_fits")
        flags_ok = step((length == 0) | (req.args.status.flags[1:] == 0), "flags_ok")
        clear = step((length != 0) & req.args.status.flags[0], "clear")   # STATUS bit 0
        load_end = step(model.start + length[2:], "load_end")   # start + count + 1
        read_end = step(model.start + model.count, "read_end")
        received = step(req.status, "received")
        payload_len = step(Mux(is_cmd[Command.READ_MODEL], model.count * WEIGHT_BYTES,
                               Mux(is_cmd[Command.IDENTIFY], IDENTIFY_FORMAT.size,
                                   Mux(is_cmd[Command.STATUS], STATUS_FORMAT.size, 0))),
                           "payload_len")

        # step 2: per-command verdicts
        args_ok = {
            Command.CONFIGURE: Cat(*configure_ok).all(),
            Command.LOAD_MODEL: count_zero & (load_end <= p.max_features + 1),
            Command.READ_MODEL: ~count_zero & count_fits & (read_end <= p.max_features),
            Command.STATUS: flags_ok,
            Command.LOAD_LEVELS: ~req.wide,     # a receiver register, held with the request
        }
        args_ok = {cmd: step(ok, f"args_ok_{cmd.name.lower()}") for cmd, ok in args_ok.items()}
        known = step(Cat(*is_cmd.values()).any(), "known")
        length_good = step(Cat(is_cmd[cmd] & length_ok[cmd] for cmd in Command).any(),
                           "length_good")
        state_good = step(configured | ~(is_cmd[Command.STREAM] | is_cmd[Command.STREAM_FLUSH]),
                          "state_good")

        # step 3: the status, by priority
        args_good = Cat(is_cmd[cmd] & args_ok.get(cmd, 1) for cmd in Command).any()
        accepted = step((received == Status.OK) & known & length_good & args_good & state_good,
                        "accepted")
        verdict = Signal(Status)
        with m.If(received != Status.OK):
            m.d.sync += verdict.eq(received)
        with m.Elif(~known):
            m.d.sync += verdict.eq(Status.COMMAND)
        with m.Elif(~length_good):
            m.d.sync += verdict.eq(Status.LENGTH)
        with m.Elif(~args_good):
            m.d.sync += verdict.eq(Status.ARGUMENT)
        with m.Elif(~state_good):
            m.d.sync += verdict.eq(Status.STATE)
        with m.Else():
            m.d.sync += verdict.eq(Status.OK)
        return verdict, accepted, payload_len, is_cmd, clear

    def elaborate(self, platform):
        m = Module()
        p, req, eng, tx = self.params, self.req, self.engine, self.tx
        bytes_per_beat = p.beat_bits // 8

        configured = Signal()
        verdict, accepted, payload_len, is_cmd, clear = self.check(m, configured)
        clear_after = Signal()                  # clear counters and flags once replied
        args = req.args
        status = Signal(Status)
        reply_len = Signal(16)
        no_payload = Signal()                   # reply_len == 0
        checking = Signal(range(self.CHECK_CYCLES))
        index = Signal(range(max(REPLY_HEADER_BYTES, IDENTIFY_FORMAT.size, STATUS_FORMAT.size)))

        # --- model position: feature start + i sits at (word, lane), tracked by counters ---
        seek = Signal(16)                       # start, walked down to start % lanes
        seek_low = Signal()                     # seek < lanes
        word = Signal(range(p.bank_depth + 1))
        lane = Signal(range(p.lanes))
        weights_left = Signal(16)               # including the current one
        final = Signal()                        # the current weight is the last
        weight = Signal(8 * WEIGHT_BYTES)       # LOAD: assembled from bytes; READ: sent as bytes
        weight_byte = Signal(range(WEIGHT_BYTES))
        level = Signal(range(p.levels_max))     # LOAD_LEVELS: index of the current level
        levels_left = Signal(range(p.levels_max + 1))   # including the current one
        level_final = Signal()                  # the current level is the last
        m.d.comb += [
            eng.model_word.eq(word),
            eng.model_lane.eq(lane),
            eng.model_wdata.eq(saturate(weight.as_signed(), p.model_bits)),
            # an int16 assembled from two bytes sits in the top half (checked to fit)
            eng.level_index.eq(level),
            eng.level_data.eq(weight[8 * (WEIGHT_BYTES - LEVEL_BYTES):][:LEVEL.bits]),
        ]

        def next_feature():
            m.d.sync += [weights_left.eq(weights_left - 1), final.eq(weights_left == 2)]
            with m.If(lane == p.lanes - 1):
                m.d.sync += [lane.eq(0), word.eq(word + 1)]
            with m.Else():
                m.d.sync += lane.eq(lane + 1)

        # --- frame buffer cursor: the read port is addressed with the cursor's next
        # value, so that buf.data always holds the beat at rd_addr ---
        rd_addr = Signal(range(buffer_depth(p) + 1))
        rd_addr_next = Signal.like(rd_addr)
        rd_lane = Signal(bytes_per_beat)        # LOAD: one-hot byte lane of the next byte
        rd_byte = reduce(or_, (self.buf.data.word_select(i, 8) & rd_lane[i].replicate(8)
                               for i in range(bytes_per_beat)))
        rd_restart = Signal()                   # move the cursor to the payload's start
        rd_advance = Signal()                   # move the cursor to the next beat
        before_last = Signal.like(rd_addr)      # STREAM: rd_addr of the beat before the last
        at_last = Signal()                      # STREAM: rd_addr is the frame's last beat
        rd_start = Mux(is_cmd[Command.LOAD_MODEL], MODEL_HEADER_FORMAT.size // bytes_per_beat, 0)
        m.d.comb += [
            rd_addr_next.eq(Mux(rd_restart, rd_start, Mux(rd_advance, rd_addr + 1, rd_addr))),
            self.buf.addr.eq(rd_addr_next),
        ]
        m.d.sync += rd_addr.eq(rd_addr_next)
        m.d.comb += [
            eng.beats.payload.data.eq(self.buf.data),
            eng.beats.payload.flush.eq(is_cmd[Command.STREAM_FLUSH] & at_last),
        ]

        # --- status counters (a clear in the FSM below wins over a count) ---
        counters = {name: Signal(bits, name=name) for name, bits in COUNTER_BITS.items()}
        replaying = Signal()
        cycles_carry = Signal()                 # the cycle counter counts in two halves
        cycles_lo, cycles_hi = counters["cycles"][:24], counters["cycles"][24:]
        m.d.sync += cycles_carry.eq(0)
        with m.If(replaying | ~eng.idle):
            m.d.sync += [cycles_lo.eq(cycles_lo + 1), cycles_carry.eq(cycles_lo.all())]
        with m.If(cycles_carry):
            m.d.sync += cycles_hi.eq(cycles_hi + 1)
        for name, event in (("samples", eng.sample_done), ("updates", eng.update_done),
                            ("beats", eng.beats.valid & eng.beats.ready)):
            with m.If(event):
                m.d.sync += counters[name].eq(counters[name] + 1)
        fields = {"flags": Signal(8), **counters}
        for flag, value in ((StatusFlags.OVERFLOW, eng.overflow),
                            (StatusFlags.CLIPPED, eng.clipped),
                            (StatusFlags.CONFIGURED, configured)):
            m.d.comb += fields["flags"][flag.bit_length() - 1].eq(value)

        # --- reply bytes: each source's byte at `index` is registered, then the state
        # picks one into tx.payload, which also feeds the reply CRC ---
        m.submodules.crc = crc = CRC16()
        reply_header = Cat(Const(SYNC[0], 8), Const(SYNC[1], 8), req.cmd,
                           status, Const(0, 8 - len(status)), reply_len)
        identity = Const(int.from_bytes(self.identity(), "little"), 8 * IDENTIFY_FORMAT.size)
        status_payload = Cat(*(Cat(fields[name], Const(0, bits - len(fields[name])))
                               if name else Const(0, bits) for name, bits in STATUS_FIELDS))
        source = {name: Signal(8, name=f"{name}_byte") for name in
                  ("header", "identity", "status", "crc")}
        m.d.sync += [
            source["header"].eq(reply_header.word_select(index, 8)),
            source["identity"].eq(identity.word_select(index, 8)),
            source["status"].eq(status_payload.word_select(index, 8)),
            source["crc"].eq(crc.crc.word_select(index[0], 8)),
        ]
        settled = Signal()              # the sources reflect index (a cycle after it moved)
        send, send_byte, send_checked = Signal(), Signal(8), Signal()
        m.d.comb += [crc.valid.eq(send & send_checked), crc.data.eq(send_byte)]
        m.d.sync += settled.eq(0)
        with m.If(send):
            m.d.sync += [tx.payload.eq(send_byte), tx.valid.eq(1)]
        with m.Elif(tx.ready):
            m.d.sync += tx.valid.eq(0)

        def put(byte, *, checked=True):
            """Send ``byte`` once settled and the tx register is empty; advance on ``send``.

            (Waiting for an empty register, rather than for ``tx.ready``, keeps the
            sink's logic off these paths and costs nothing: settling takes a cycle.)
            """
            m.d.comb += [
                send.eq(settled & ~tx.valid),
                send_byte.eq(byte),
                send_checked.eq(checked),
            ]
            m.d.sync += settled.eq(~send)

        def put_each(byte, size, next_state):
            """Send ``size`` bytes, ``byte`` at each ``index``, then go to ``next_state``."""
            put(byte)
            with m.If(send):
                m.d.sync += index.eq(index + 1)
                with m.If(index == size - 1):
                    m.d.sync += index.eq(0)
                    m.next = next_state

        def shift_in_byte():
            """Shift the frame buffer's next byte into the top of ``weight``."""
            m.d.sync += [
                weight.eq(Cat(weight[8:], rd_byte)),
                weight_byte.eq(weight_byte + 1),
                rd_lane.eq(rd_lane.rotate_left(1)),
            ]
            m.d.comb += rd_advance.eq(rd_lane[-1])

        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += crc.reset.eq(1)
                m.d.sync += [index.eq(0), weight_byte.eq(0), word.eq(0), level.eq(0),
                             checking.eq(self.CHECK_CYCLES - 1)]
                with m.If(req.valid):
                    m.next = "CHECK"
            with m.State("CHECK"):              # the verdict settles; prepare meanwhile
                m.d.sync += [
                    checking.eq(checking - 1),
                    seek.eq(args.model.start),
                    seek_low.eq(args.model.start < p.lanes),
                    rd_lane.eq(Mux(is_cmd[Command.LOAD_LEVELS], 1,
                                   1 << (MODEL_HEADER_FORMAT.size % bytes_per_beat))),
                    before_last.eq(req.beats - 2),
                    at_last.eq(req.beats == 1),
                    levels_left.eq(req.length[1:]),     # LOAD_LEVELS: at least 2 if accepted
                    level_final.eq(0),
                ]
                m.d.comb += rd_restart.eq(1)
                with m.If(is_cmd[Command.LOAD_MODEL]):       # length is 4 + 4 * count
                    m.d.sync += [weights_left.eq(req.length[2:] - 1),
                                 final.eq(req.length[2:] == 2)]
                with m.Else():
                    m.d.sync += [weights_left.eq(args.model.count),
                                 final.eq(args.model.count == 1)]
                with m.If(checking == 0):
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                m.d.sync += [
                    status.eq(verdict),
                    reply_len.eq(Mux(accepted, payload_len, 0)),
                    no_payload.eq(~accepted | (payload_len == 0)),
                    clear_after.eq(accepted & is_cmd[Command.STATUS] & clear),
                ]
                m.next = "HEADER"
                with m.If(accepted):
                    m.d.sync += counters["frames_ok"].eq(counters["frames_ok"] + 1)
                    with m.If(is_cmd[Command.CONFIGURE]):
                        m.d.sync += [
                            eng.features.eq(args.configure.features),
                            eng.batch.eq(args.configure.batch),
                            eng.shift.eq(args.configure.shift),
                            eng.k.eq(args.configure.k),
                            eng.double.eq(args.configure.mode.double),
                            eng.loss.eq(args.configure.mode.loss),
                            eng.l2_shift.eq(args.configure.l2_shift),
                            eng.cost_pos.eq(args.configure.cost_pos),
                            eng.cost_neg.eq(args.configure.cost_neg),
                            eng.phase.eq(args.configure.mode.phase),
                            eng.stochastic.eq(args.configure.mode.stochastic),
                            eng.offset_bits.eq(args.configure.offset_bits),
                            eng.scale_log.eq(args.configure.scale_log),
                            eng.seed.eq(args.configure.seed),
                            configured.eq(1),
                        ]
                        m.next = "CONFIGURE"
                    with m.If(is_cmd[Command.LOAD_MODEL] | is_cmd[Command.READ_MODEL]):
                        m.next = "SEEK"
                    with m.If(is_cmd[Command.LOAD_LEVELS]):
                        m.next = "LEVEL_LOAD"
                    with m.If(is_cmd[Command.STREAM] | is_cmd[Command.STREAM_FLUSH]):
                        m.next = "STREAM"
                with m.Else():
                    m.d.sync += counters["frames_bad"].eq(counters["frames_bad"] + 1)
            with m.State("CONFIGURE"):
                m.d.comb += eng.start.eq(1)
                m.next = "SETTLE"
            with m.State("STREAM"):
                m.d.comb += [replaying.eq(1), eng.beats.valid.eq(1)]
                m.d.comb += rd_advance.eq(eng.beats.ready)
                with m.If(eng.beats.ready):
                    m.d.sync += at_last.eq(rd_addr == before_last)
                    with m.If(at_last):
                        m.next = "SETTLE"
            with m.State("SETTLE"):
                with m.If(eng.idle):
                    m.next = "HEADER"
            with m.State("SEEK"):
                with m.If(~seek_low):
                    m.d.sync += [seek.eq(seek - p.lanes), seek_low.eq(seek - p.lanes < p.lanes),
                                 word.eq(word + 1)]
                with m.Else():
                    m.d.sync += lane.eq(seek)
                    with m.If(is_cmd[Command.LOAD_MODEL]):
                        m.next = "LOAD"
                    with m.Else():
                        m.next = "HEADER"
            with m.State("LOAD"):
                shift_in_byte()
                with m.If(weight_byte == WEIGHT_BYTES - 1):
                    m.next = "WRITE"
            with m.State("WRITE"):
                with m.If(eng.idle):
                    m.d.comb += eng.model_write.eq(1)
                    m.next = "NEXT_WEIGHT"
            with m.State("NEXT_WEIGHT"):
                next_feature()
                m.next = "LOAD"
                with m.If(final):
                    m.next = "HEADER"
            with m.State("LEVEL_LOAD"):         # two bytes into the top of `weight`
                shift_in_byte()
                with m.If(weight_byte[0]):
                    m.next = "LEVEL_WRITE"
            with m.State("LEVEL_WRITE"):
                with m.If(eng.idle):
                    m.d.comb += eng.level_write.eq(1)
                    m.next = "NEXT_LEVEL"
            with m.State("NEXT_LEVEL"):
                m.d.sync += [level.eq(level + 1), levels_left.eq(levels_left - 1),
                             level_final.eq(levels_left == 2)]
                m.next = "LEVEL_LOAD"
                with m.If(level_final):
                    m.next = "HEADER"
            with m.State("HEADER"):
                put(source["header"], checked=index >= len(SYNC))
                with m.If(send):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == REPLY_HEADER_BYTES - 1):
                        m.d.sync += index.eq(0)
                        with m.If(no_payload):
                            m.next = "CRC"
                        with m.Elif(is_cmd[Command.IDENTIFY]):
                            m.next = "IDENTIFY"
                        with m.Elif(is_cmd[Command.STATUS]):
                            m.next = "STATUS"
                        with m.Else():
                            m.next = "FETCH"
            with m.State("IDENTIFY"):
                put_each(source["identity"], IDENTIFY_FORMAT.size, "CRC")
            with m.State("STATUS"):
                put_each(source["status"], STATUS_FORMAT.size, "CRC")
            with m.State("FETCH"):
                with m.If(eng.idle):
                    m.d.comb += eng.model_read.eq(1)
                    m.next = "LATCH"
            with m.State("LATCH"):
                m.d.sync += weight.eq(eng.model_rdata.as_signed())   # sign-extended to int32
                m.next = "READ"
            with m.State("READ"):
                put(weight[:8])
                with m.If(send):
                    m.d.sync += [weight.eq(weight[8:]), weight_byte.eq(weight_byte + 1)]
                    with m.If(weight_byte == WEIGHT_BYTES - 1):
                        next_feature()
                        m.next = "FETCH"
                        with m.If(final):
                            m.next = "CRC"
            with m.State("CRC"):
                put(source["crc"], checked=False)
                with m.If(send):
                    m.d.sync += index.eq(1)
                    with m.If(index[0]):
                        m.next = "DONE"
            with m.State("DONE"):
                with m.If(~tx.valid):           # the last byte has gone
                    m.next = "RELEASE"
            with m.State("RELEASE"):
                m.d.comb += req.done.eq(1)
                with m.If(clear_after):
                    m.d.comb += eng.clear_flags.eq(1)
                    m.d.sync += [counter.eq(0) for counter in counters.values()]
                m.next = "IDLE"
        # one-hot: short decode paths in synthesis (the domain's reset sets the state)
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        return m


class Link(Component):
    """The board's command processor: request bytes in, reply bytes out, engine driven.

    ``rx.ready`` is high only while the link waits for request bytes with nothing
    else in flight: no request executing, no reply being sent, the engine idle.
    Request bytes are taken at up to one per cycle, reply bytes sent at up to one
    every two cycles. Replies are built from registers and counters byte by byte,
    and every path is kept short for iCE40 (about 50 MHz on an UP5K).

    Parameters
    ----------
    params : EngineParams
    timeout_cycles : int
        Inter-byte timeout within a request frame, in clock cycles (the protocol's
        ``TIMEOUT_BYTES_TIME`` times the clock frequency on a board).

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes.
    tx : Out(stream.Signature(8))
        Reply bytes.
    engine : Out(control_signature(params))
        The SGD engine.
    """

    def __init__(self, params: EngineParams, timeout_cycles: int):
        if not isinstance(timeout_cycles, int) or timeout_cycles < 2:
            raise ValueError(f"timeout_cycles must be an integer of at least 2, "
                             f"not {timeout_cycles!r}")
        self.params = params
        self.timeout_cycles = timeout_cycles
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "engine": Out(control_signature(params)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params

        # one request payload, in block RAM. It is never read and written in the same
        # cycle (the executor runs once a request is whole), so the read is written as
        # an asynchronous port and a register marked "no_rw_check": synthesis folds the
        # register into the block RAM without modelling read-during-write collisions
        # (a synchronous port would make it emulate read-first behaviour in logic).
        m.submodules.buffer = buffer = Memory(shape=unsigned(p.beat_bits),
                                              depth=buffer_depth(p), init=[],
                                              attrs={"no_rw_check": 1})
        m.submodules.receiver = receiver = LinkReceiver(p, self.timeout_cycles)
        m.submodules.executor = executor = LinkExecutor(p)

        wiring.connect(m, wiring.flipped(self.rx), receiver.rx)
        wiring.connect(m, receiver.buf, buffer.write_port(granularity=8))
        read = buffer.read_port(domain="comb")
        m.d.comb += read.addr.eq(executor.buf.addr)
        m.d.sync += executor.buf.data.eq(read.data)
        wiring.connect(m, receiver.req, executor.req)
        wiring.connect(m, executor.tx, wiring.flipped(self.tx))
        wiring.connect(m, executor.engine, wiring.flipped(self.engine))
        # registered to keep the engine's logic off the byte path: the engine only gets
        # busy on what the link gives it, so it is idle whenever the link is hunting
        m.d.sync += receiver.enable.eq(self.engine.idle)
        return m
