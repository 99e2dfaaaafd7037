"""The replay store: stream beats kept on the board and fed to the engine again.

The semantics are written down in ``ziphalp.hw.params`` ("Replayed data") and
``ziphalp.hw.protocol`` (``REPLAY``); the golden model's
:meth:`~ziphalp.sim.golden.GoldenEngine.replay` is the same in NumPy.

:class:`ReplaySource` is one memory of ``replay_beats`` beats with a single
address, shared by the link's ``LOAD_DATA`` writes and the replay's reads: a
:class:`SinglePortRAM`. A platform may offer its own (the iCE40 UP5K's SPRAM
blocks, :class:`ziphalp.hw.ice40.ICE40SPRAM`) as
``platform.single_port_ram(width, depth)``; without one (simulation, the ECP5)
it is an Amaranth memory. A replay (``start`` with ``first``, ``count`` and the ``loaded``
length) reads beat ``first`` on, wrapping to beat 0 at ``loaded``, at one beat
a cycle. The memory is addressed with the next cycle's address, so its output
is always the beat at the cursor and back-pressure costs no cycle: the cursor
only moves when the engine takes a beat.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .control import beat_layout
from .params import EngineParams

__all__ = ["ReplaySource", "SinglePortRAM"]


class SinglePortRAM(wiring.Component):
    """A RAM with one address for reads and writes.

    Each cycle ``we`` is low the RAM reads: ``rdata`` holds, from the next cycle
    on, the word at ``addr``. A cycle with ``we`` high writes ``wdata`` at
    ``addr``; what ``rdata`` shows after it is unspecified until the next read.
    The contents start unspecified.

    Parameters
    ----------
    width, depth : int
        Bits of a word and words.
    """

    def __init__(self, width: int, depth: int):
        self.width, self.depth = width, depth
        super().__init__({"addr": In(range(depth)), "wdata": In(width), "we": In(1),
                          "rdata": Out(width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = mem = memory.Memory(shape=self.width, depth=self.depth, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        m.d.comb += [wr.addr.eq(self.addr), rd.addr.eq(self.addr), rd.en.eq(~self.we),
                     wr.data.eq(self.wdata), wr.en.eq(self.we), self.rdata.eq(rd.data)]
        return m


class ReplaySource(wiring.Component):
    """The replay store and its cursor (module docstring).

    Attributes
    ----------
    write : In(1); addr : In(range(replay_beats)); data : In(beat_bits)
        Write ``data`` at beat ``addr`` (never during a replay).
    start : In(1)
        Begin a replay of ``count`` beats from beat ``first``, wrapping at
        ``loaded`` (``first < loaded``, ``count >= 1``; held during the replay).
    busy : Out(1)
        Beats are left to feed.
    beats : Out(stream.Signature(beat_layout(params)))
        The beats, the last one flushing.
    """

    def __init__(self, params: EngineParams):
        if not params.replay:
            raise ValueError("ReplaySource needs a build with a replay store")
        self.params = p = params
        super().__init__({
            "write": In(1), "addr": In(range(p.replay_beats)), "data": In(p.beat_bits),
            "start": In(1), "first": In(range(p.replay_beats)), "count": In(32),
            "loaded": In(range(p.replay_beats + 1)),
            "busy": Out(1),
            "beats": Out(stream.Signature(beat_layout(p))),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        make = getattr(platform, "single_port_ram", SinglePortRAM)
        m.submodules.store = ram = make(p.beat_bits, p.replay_beats)
        at = Signal(range(p.replay_beats))          # the beat the output holds
        remaining = Signal(32)                      # beats left, the output's included
        running = Signal()
        taken = self.beats.valid & self.beats.ready
        after = Signal(range(p.replay_beats + 1))
        m.d.comb += after.eq(at + 1)
        following = Mux(after == self.loaded, 0, after)
        address = Signal(range(p.replay_beats))
        m.d.comb += address.eq(Mux(self.write, self.addr,
                                   Mux(self.start, self.first, Mux(taken, following, at))))
        m.d.comb += [ram.addr.eq(address), ram.wdata.eq(self.data), ram.we.eq(self.write)]
        m.d.sync += at.eq(address)
        m.d.comb += [self.beats.valid.eq(running), self.beats.payload.data.eq(ram.rdata),
                     self.beats.payload.flush.eq(remaining == 1), self.busy.eq(running)]
        with m.If(self.start):
            m.d.sync += [running.eq(1), remaining.eq(self.count)]
        with m.Elif(taken):
            m.d.sync += remaining.eq(remaining - 1)
            with m.If(remaining == 1):
                m.d.sync += running.eq(0)
        return m
