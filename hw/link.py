"""The board's command processor: link protocol requests in, engine control out.

:class:`Link` sits between the serial byte streams and the SGD engine. It
implements the protocol of :mod:`ziphalp.hw.protocol` (framing, commands, status
codes) and drives the engine through :func:`ziphalp.hw.control.control_signature`.
It is made of parts around one frame buffer, each in its own module:

- :class:`~ziphalp.hw.link_receiver.LinkReceiver` hunts for the sync word,
  writes the payload into the frame buffer, keeps the first payload bytes as
  arguments, checks the CRC (:mod:`ziphalp.hw.crc`) and hands the request (or a
  CRC, LENGTH or TIMEOUT failure) to the executor;
- :class:`~ziphalp.hw.link_executor.LinkExecutor` has the request judged
  (:class:`~ziphalp.hw.link_check.LinkCheck`), acts on it (configuration
  registers, level and model ports, beat replay from the frame buffer) and
  sends the reply, built byte by byte from registers and counters
  (:mod:`ziphalp.hw.link_reply`);
- :mod:`ziphalp.hw.link_messages` holds the payload layouts, derived from the
  protocol's field tables, and the interface between the two.

The link knows neither how the bytes travel (see :mod:`ziphalp.hw.uart`) nor
what the engine computes. A rejected request changes nothing.
"""

from amaranth.hdl import Module, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import Component, In, Out

from .control import control_signature
from .link_executor import LinkExecutor
from .link_messages import ARGS_LAYOUT, buffer_depth, request_signature
from .link_receiver import LinkReceiver
from .params import EngineParams

__all__ = ["Link", "LinkReceiver", "LinkExecutor", "ARGS_LAYOUT", "request_signature"]


class Link(Component):
    """The board's command processor: request bytes in, reply bytes out, engine driven.

    ``rx.ready`` is high only while the link waits for request bytes with nothing
    else in flight: no request executing, no reply being sent, the engine idle.
    Request bytes are taken at up to one per cycle, reply bytes sent at up to one
    every two cycles. Replies are built from registers and counters byte by byte,
    and every path is kept short for iCE40: the link runs on the engine's clock,
    ``EngineParams.clock_hz`` (33 MHz on the iCEBreaker, where nextpnr reaches
    about 36-37 MHz for the whole design).

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
