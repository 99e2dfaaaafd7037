"""A pipelined adder tree: the sum of N signed inputs, one register per level.

Used by the dot-product lanes. Latency is ``ceil(log2(N))`` cycles (0 for one
input, which passes through combinationally). It adds and delays; it has no
valid bits of its own: the caller delays its handshake by ``latency``.
"""

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .params import clog2

__all__ = ["AdderTree"]


class AdderTree(wiring.Component):
    """Sum of ``count`` signed ``width``-bit inputs.

    Parameters
    ----------
    width : int
        Width of each input.
    count : int
        Number of inputs (at least 1).

    Attributes
    ----------
    inputs : In(ArrayLayout(signed(width), count))
    sum : Out(signed(width + ceil(log2(count))))
        ``latency`` cycles after ``inputs``.
    latency : int
    """

    @staticmethod
    def latency_of(count: int) -> int:
        """Cycles from ``inputs`` to ``sum`` for ``count`` inputs."""
        return clog2(count)

    def __init__(self, width: int, count: int):
        if width < 1 or count < 1:
            raise ValueError(f"AdderTree needs width >= 1 and count >= 1, not {width}, {count}")
        self.width, self.count = width, count
        self.latency = self.latency_of(count)
        super().__init__({
            "inputs": In(data.ArrayLayout(signed(width), count)),
            "sum": Out(signed(width + self.latency)),
        })

    def elaborate(self, platform):
        m = Module()
        level = [self.inputs[i] for i in range(self.count)]
        width = self.width
        depth = 0
        while len(level) > 1:
            width += 1
            nxt = []
            for i in range(0, len(level), 2):
                s = Signal(signed(width), name=f"l{depth}_{i // 2}")
                pair = level[i:i + 2]
                m.d.sync += s.eq(pair[0] + pair[1] if len(pair) == 2 else pair[0])
                nxt.append(s)
            level = nxt
            depth += 1
        m.d.comb += self.sum.eq(level[0])
        return m
