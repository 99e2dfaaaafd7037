"""From packed feature beats to the two samples of every lane: the engine's data source.

A feature beat carries ``K`` fields of ``field_bits(k, double)`` bits (encoding
in ``ziphalp.hw.params``; the golden model's :func:`~ziphalp.sim.golden.unpack_fields`
and :func:`~ziphalp.sim.golden.decode` are the same two steps in NumPy):

* :class:`FieldDecoder` cuts field ``i`` out of the beat for lane ``i`` at the
  run-time precision and sampling mode: the interval index ``j`` and the up
  bits of the two samples (one cycle).
* :class:`LevelTable` looks each lane's ``j`` up in the lane's copy of the level
  table, ``l_j`` and ``l_{j+1}`` in one read, and picks the two samples ``q1``
  and ``q2`` (one cycle).
* :class:`BeatDecoder` is the two in a row: packed beat in, lane values out
  :meth:`BeatDecoder.latency_of` cycles later. It is the engine's seam for a data
  source: anything that yields the same lane values at the same latency (for
  example data resident on the board, sampled on chip) can replace it.

No state but the mode registers and the level tables; no flow control.
"""

from functools import reduce
from operator import or_

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out

from .delay import delayed
from .params import LEVEL, EngineParams, field_bits

__all__ = ["FieldDecoder", "LevelTable", "BeatDecoder", "modes"]


def modes(p: EngineParams) -> list[tuple[int, int]]:
    """The run-time modes ``(k, double)`` an engine decodes, in one fixed order."""
    return [(k, double) for k in range(1, p.max_k + 1) for double in (0, 1)]


class FieldDecoder(wiring.Component):
    """Lane ``i`` takes field ``i`` of a beat apart: ``(j, up1, up2)`` (one cycle).

    Attributes
    ----------
    k : In(range(max_k + 1)); double : In(1)
        The run-time mode, held from the cycle before the first beat.
    per_beat : Out(range(lanes + 1))
        ``K`` for the mode (a register, one cycle behind ``k`` and ``double``).
    data : In(beat_bits); last : In(1); last_mask : In(lanes)
        The beat, whether it is the sample's last, and which lanes the last beat uses.
    j : Out(lanes x max_k); up1, up2, on : Out(lanes)
        Next cycle: each lane's interval, up bits (``up2 = up1`` for single
        sampling) and whether the lane holds a feature.
    """

    def __init__(self, params: EngineParams):
        self.params = params
        L = params.lanes
        super().__init__({
            "k": In(range(params.max_k + 1)),
            "double": In(1),
            "per_beat": Out(range(L + 1)),
            "data": In(params.beat_bits),
            "last": In(1),
            "last_mask": In(L),
            "j": Out(data.ArrayLayout(params.max_k, L)),
            "up1": Out(L),
            "up2": Out(L),
            "on": Out(L),
        })

    def elaborate(self, platform):
        m = Module()
        p, L = self.params, self.params.lanes
        mode_list = modes(p)
        selected = Signal(len(mode_list))                 # one-hot (k, double)
        in_mode = Signal(L)                               # lanes 0..K-1
        for index, (k, double) in enumerate(mode_list):
            m.d.sync += selected[index].eq((self.k == k) & (self.double == double))
        with m.Switch(Cat(self.double, self.k)):
            for k, double in mode_list:
                with m.Case(double | k << 1):
                    K = p.values_per_beat(k, double)
                    m.d.sync += [self.per_beat.eq(K), in_mode.eq((1 << K) - 1)]

        for i in range(L):
            j_opts, up1_opts, up2_opts = [], [], []
            for index, (k, double) in enumerate(mode_list):
                if i >= p.values_per_beat(k, double):
                    continue                               # lane unused in this mode
                off = i * field_bits(k, double)
                sel = selected[index]
                j_opts.append(Mux(sel, self.data[off:off + k], 0))
                up1_opts.append(sel & self.data[off + k])
                up2_opts.append(sel & self.data[off + k + double])
            m.d.sync += [
                self.j[i].eq(reduce(or_, j_opts, 0)),
                self.up1[i].eq(reduce(or_, up1_opts, 0)),
                self.up2[i].eq(reduce(or_, up2_opts, 0)),
                self.on[i].eq(in_mode[i] & (~self.last | self.last_mask[i])),
            ]
        return m


class LevelTable(wiring.Component):
    """Each lane's copy of the level table, and its two samples (one cycle; with
    ``deep_pipeline`` three: the table's read, its word held in flip-flops, then
    the choice into flip-flops, so that nothing but a register follows a block
    RAM's output, and that register lies next to it).

    Lane ``i``'s copy is sized for the largest ``k`` the lane serves
    (``EngineParams.lane_max_k``); entry ``j`` holds ``l_j`` (lo) and ``l_{j+1}``
    (hi), so one read gives both candidates of a field.

    Attributes
    ----------
    write : In(1); index : In(range(levels_max)); value : In(signed(LEVEL.bits))
        Write level ``index`` (into every copy that has room for it).
    j : In(lanes x max_k); up1, up2, on : In(lanes)
        The fields from :class:`FieldDecoder`.
    q1, q2 : Out(lanes x signed(LEVEL.bits)); active : Out(lanes)
        One cycle later (three, ``deep_pipeline``): ``q = l_{j + up}`` (0 on lanes
        that hold no feature), and ``on``.
    """

    def __init__(self, params: EngineParams):
        self.params = params
        L, lanes = params.lanes, data.ArrayLayout(signed(LEVEL.bits), params.lanes)
        super().__init__({
            "write": In(1), "index": In(range(params.levels_max)),
            "value": In(signed(LEVEL.bits)),
            "j": In(data.ArrayLayout(params.max_k, L)),
            "up1": In(L), "up2": In(L), "on": In(L),
            "q1": Out(lanes), "q2": Out(lanes), "active": Out(L),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        # the fields wait for the table's read (and, deep_pipeline, its held copy)
        held = 1 + p.deep_pipeline
        up1, up2, active = (delayed(m, value, held, name) for value, name in
                            ((self.up1, "up1"), (self.up2, "up2"), (self.on, "on")))
        out = "sync" if p.deep_pipeline else "comb"
        m.d[out] += self.active.eq(active)
        for i in range(p.lanes):
            depth = 1 << p.lane_max_k(i)
            pair = []
            for name, addr in (("lo", self.index), ("hi", self.index - 1)):
                mem = memory.Memory(shape=signed(LEVEL.bits), depth=depth, init=[],
                                    attrs={"no_rw_check": 1})
                m.submodules[f"{name}{i}"] = mem
                write, read = mem.write_port(), mem.read_port(domain="comb")
                at = Signal.like(self.index, name=f"{name}_at{i}")
                m.d.comb += [at.eq(addr), write.addr.eq(at), write.data.eq(self.value),
                             write.en.eq(self.write & (at < depth)
                                         & ((self.index != 0) if name == "hi" else 1)),
                             read.addr.eq(self.j[i])]
                word = Signal(signed(LEVEL.bits), name=f"{name}_data{i}")
                m.d.sync += word.eq(read.data)
                # deep_pipeline: the word again in a flip-flop before any logic (the
                # register above becomes the block RAM's own output)
                pair.append(delayed(m, word, p.deep_pipeline, f"{name}_held{i}"))
            lo, hi = pair
            m.d[out] += [self.q1[i].eq(Mux(active[i], Mux(up1[i], hi, lo), 0)),
                         self.q2[i].eq(Mux(active[i], Mux(up2[i], hi, lo), 0))]
        return m


class BeatDecoder(wiring.Component):
    """A packed feature beat in, every lane's two samples out ``latency`` cycles later.

    Attributes
    ----------
    k, double, per_beat, data, last, last_mask
        As :class:`FieldDecoder`.
    level_write, level_index, level_data
        As :class:`LevelTable`'s ``write``, ``index``, ``value``.
    q1, q2, active
        As :class:`LevelTable`, for the beat given ``latency`` cycles earlier.
    """

    @staticmethod
    def latency_of(params: EngineParams) -> int:
        """Cycles from a beat to its lane values: the field register, the table's
        read (and, ``deep_pipeline``, the word's copy and the choice's register)."""
        return 2 + 2 * params.deep_pipeline

    def __init__(self, params: EngineParams):
        self.params = params
        #: cycles from a beat to its lane values
        self.latency = self.latency_of(params)
        self._fields = FieldDecoder(params)
        self._table = LevelTable(params)
        f, t = self._fields.signature.members, self._table.signature.members
        super().__init__({
            "k": f["k"], "double": f["double"], "per_beat": f["per_beat"],
            "data": f["data"], "last": f["last"], "last_mask": f["last_mask"],
            "level_write": t["write"], "level_index": t["index"], "level_data": t["value"],
            "q1": t["q1"], "q2": t["q2"], "active": t["active"],
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fields = fields = self._fields
        m.submodules.table = table = self._table
        m.d.comb += [
            fields.k.eq(self.k), fields.double.eq(self.double), self.per_beat.eq(fields.per_beat),
            fields.data.eq(self.data), fields.last.eq(self.last),
            fields.last_mask.eq(self.last_mask),
            table.write.eq(self.level_write), table.index.eq(self.level_index),
            table.value.eq(self.level_data),
            table.j.eq(fields.j), table.up1.eq(fields.up1), table.up2.eq(fields.up2),
            table.on.eq(fields.on),
            self.q1.eq(table.q1), self.q2.eq(table.q2), self.active.eq(table.active),
        ]
        return m
