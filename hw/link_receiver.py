"""The link's request framer: request bytes in, a whole checked request out.

:class:`LinkReceiver` hunts for the sync word, reads the header, writes the
payload into the frame buffer (keeping its first bytes as arguments), checks
the CRC and hands the request, or a CRC, LENGTH or TIMEOUT failure, to the
executor (:mod:`ziphalp.hw.link_executor`). It does not judge commands.
"""

from types import SimpleNamespace

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import Component, In, Out
from amaranth.utils import ceil_log2

from .crc import FrameCRC
from .link_messages import ARGS_BYTES, buffer_depth, request_signature
from .params import LEVEL, EngineParams
from .protocol import SYNC, Status

__all__ = ["LinkReceiver"]

# an int16 fits a LEVEL iff its bits LEVEL.bits - 1 .. 15 are equal: bits
# LEVEL.bits - 9 .. 7 of its high byte (see LinkReceiver)
assert 9 <= LEVEL.bits <= 16


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
        m.submodules.crc = crc = FrameCRC()
        r = self._frame_signals(m, crc)
        with m.FSM() as fsm:
            self._header_states(m, r)
            self._payload_state(m, r)
            self._crc_states(m, r)
        # one-hot: short decode paths in synthesis (the domain's reset sets the state)
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        self._flow_control(m, fsm, r)
        return m

    def _frame_signals(self, m, crc) -> SimpleNamespace:
        """The input register, the frame's position and failures, the timeout timer."""
        p, req = self.params, self.req
        # the input register: a byte arrives in one cycle and is handled in the next
        r = SimpleNamespace(
            crc=crc,
            arrive=Signal(),                        # a byte arrives this cycle
            byte=Signal(8),                         # the byte handled
            take=Signal(),                          # a byte is handled this cycle
            lane=Signal(p.beat_bits // 8, init=1),  # one-hot byte lane of the next payload byte
            odd=Signal(),                           # the next payload byte is at an odd offset
            arg=Signal(ARGS_BYTES),                 # one-hot argument byte (0 past them)
            left=Signal(16),                        # payload bytes still to come
            last=Signal(),                          # left == 1
            crc_ok=Signal(2),                       # the CRC's low and high bytes matched
            failed={status: Signal(name=f"failed_{status.name.lower()}")  # at most one set
                    for status in (Status.TIMEOUT, Status.LENGTH, Status.CRC)},
            too_long=Signal(),                      # req.length, a cycle ago, > frame_bytes
            empty=Signal(),                         # req.length, a cycle ago, == 0
            expired=Signal(),                       # timeout_cycles cycles without a byte
            mid_frame=Signal(),
        )
        timer = Signal(range(self.timeout_cycles))
        failed = r.failed
        m.d.comb += r.arrive.eq(self.rx.valid & self.rx.ready)
        m.d.sync += r.take.eq(r.arrive)
        with m.If(r.arrive):
            m.d.sync += r.byte.eq(self.rx.payload)
        m.d.comb += [
            self.buf.addr.eq(req.beats),
            self.buf.data.eq(r.byte.replicate(len(r.lane))),
            req.whole.eq(r.lane[0]),
            req.status.eq(Mux(failed[Status.TIMEOUT], Status.TIMEOUT,
                              Mux(failed[Status.LENGTH], Status.LENGTH,
                                  Mux(failed[Status.CRC], Status.CRC, Status.OK)))),
            crc.data.eq(r.byte),
        ]
        m.d.sync += [
            r.too_long.eq(req.length > p.frame_bytes),
            r.empty.eq(req.length == 0),
            timer.eq(Mux(r.arrive | ~r.mid_frame, 0, timer + 1)),
            r.expired.eq(r.mid_frame & ~r.arrive & (timer == self.timeout_cycles - 2)),
        ]
        with m.If(r.expired):                       # only mid-frame
            m.d.sync += failed[Status.TIMEOUT].eq(1)
        return r

    @staticmethod
    def _frame_byte(m, r, next_state, *, checked=True):
        """Handle a byte after the sync word (absorbing it into the CRC if
        ``checked``) and go to ``next_state``, or time out."""
        m.d.comb += [r.mid_frame.eq(1), r.crc.valid.eq(r.take & checked)]
        with m.If(r.take):
            m.next = next_state
        with m.If(r.expired):                   # never with take
            m.next = "WAIT"

    def _header_states(self, m, r):
        """Sync hunt, command, sequence number and length; a length beyond the buffer
        fails at once."""
        req, take, byte = self.req, r.take, r.byte
        with m.State("HUNT"):
            m.d.comb += r.crc.reset.eq(1)
            with m.If(take & (byte == SYNC[0])):
                m.next = "SYNC"
        with m.State("SYNC"):
            m.d.comb += r.crc.reset.eq(1)
            with m.If(take & (byte == SYNC[1])):
                m.next = "CMD"
            with m.Elif(take & (byte != SYNC[0])):
                m.next = "HUNT"
        for state, target, next_state in (("CMD", req.cmd, "SEQ"),
                                          ("SEQ", req.seq, "LEN_LO"),
                                          ("LEN_LO", req.length[:8], "LEN_HI"),
                                          ("LEN_HI", req.length[8:], "LENGTH")):
            with m.State(state):
                self._frame_byte(m, r, next_state)
                with m.If(take):
                    m.d.sync += target.eq(byte)
        with m.State("LENGTH"):                 # no byte comes; too_long and empty settle
            m.d.sync += [r.left.eq(req.length), r.last.eq(req.length == 1),
                         req.beats.eq(0), r.lane.eq(1), r.arg.eq(1), r.odd.eq(0),
                         req.wide.eq(0)]
            m.next = "LENGTH_CHECK"
        with m.State("LENGTH_CHECK"):           # no byte comes
            with m.If(r.too_long):
                m.d.sync += r.failed[Status.LENGTH].eq(1)
                m.next = "WAIT"
            with m.Elif(r.empty):
                m.next = "CRC_LO"
            with m.Else():
                m.next = "PAYLOAD"

    def _payload_state(self, m, r):
        """Payload bytes into the frame buffer, the first ones into ``req.args``; the
        LEVEL range check of ``req.wide``."""
        req, byte = self.req, r.byte
        with m.State("PAYLOAD"):
            self._frame_byte(m, r, "PAYLOAD")
            with m.If(r.take):
                m.d.comb += self.buf.en.eq(r.lane)
                m.d.sync += [r.lane.eq(r.lane.rotate_left(1)), r.arg.eq(r.arg << 1),
                             r.left.eq(r.left - 1), r.last.eq(r.left == 2), r.odd.eq(~r.odd)]
                top = byte[LEVEL.bits - 9:]     # of an int16's high byte: all equal if it fits
                with m.If(r.odd & top.any() & ~top.all()):
                    m.d.sync += req.wide.eq(1)
                with m.If(r.lane[-1]):
                    m.d.sync += req.beats.eq(req.beats + 1)
                for i in range(ARGS_BYTES):
                    with m.If(r.arg[i]):
                        m.d.sync += req.args.as_value()[8 * i:8 * i + 8].eq(byte)
                with m.If(r.last):
                    m.next = "CRC_LO"

    def _crc_states(self, m, r):
        """The CRC bytes against the computed CRC; then hold the request until done."""
        req = self.req
        for state, half, next_state in (("CRC_LO", 0, "CRC_HI"), ("CRC_HI", 1, "CRC")):
            with m.State(state):
                self._frame_byte(m, r, next_state, checked=False)
                with m.If(r.take):
                    m.d.sync += r.crc_ok[half].eq(r.byte == r.crc.crc.word_select(half, 8))
        with m.State("CRC"):                    # no byte comes
            with m.If(~r.crc_ok.all()):
                m.d.sync += r.failed[Status.CRC].eq(1)
            m.next = "WAIT"
        with m.State("WAIT"):
            m.d.comb += req.valid.eq(1)
            with m.If(req.done):
                m.d.sync += [req.cmd.eq(0), req.seq.eq(0),
                             *(flag.eq(0) for flag in r.failed.values())]
                m.next = "HUNT"

    def _flow_control(self, m, fsm, r):
        """``rx.ready``: no byte may arrive once the frame's header or CRC is complete,
        until the length is checked or the request is answered."""
        pause = Cat(fsm.ongoing(state) for state in ("LENGTH", "LENGTH_CHECK", "CRC", "WAIT"))
        closing = Signal()          # the byte handled closes the header or the CRC
        m.d.sync += closing.eq(r.arrive & Cat(
            (fsm.ongoing(before) & r.take) | (fsm.ongoing(closer) & ~r.take)  # closer's byte
            for before, closer in (("LEN_LO", "LEN_HI"), ("CRC_LO", "CRC_HI"))).any())
        m.d.comb += self.rx.ready.eq(self.enable & ~pause.any() & ~closing & ~r.expired)
