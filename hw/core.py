"""The board without pins: the link's command processor driving the SGD engine.

``BoardCore`` is what every board top level (``ziphalp.hw.top.BoardTop``) wraps
with a clock and a UART, and what the simulated board (``ziphalp.sim.board``)
compiles with its byte streams on a socket: the same gateware either way.
"""

from amaranth import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .engine import SGDEngine
from .link import Link
from .params import EngineParams
from .protocol import TIMEOUT_BYTES_TIME

__all__ = ["BoardCore"]


class BoardCore(wiring.Component):
    """Link plus engine, with request bytes in and reply bytes out.

    Parameters
    ----------
    params : EngineParams
        The engine to build; ``params.clock_hz`` sets the link's inter-byte timeout.

    Attributes
    ----------
    rx : In(stream.Signature(8))
        Request bytes from the host.
    tx : Out(stream.Signature(8))
        Reply bytes to the host.
    """

    def __init__(self, params: EngineParams):
        self.params = params
        self.link = Link(params, timeout_cycles=round(TIMEOUT_BYTES_TIME * params.clock_hz))
        self.engine = SGDEngine(params)
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = self.link
        m.submodules.engine = self.engine
        wiring.connect(m, self.link.engine, self.engine.ctrl)
        wiring.connect(m, wiring.flipped(self.rx), self.link.rx)
        wiring.connect(m, self.link.tx, wiring.flipped(self.tx))
        return m
