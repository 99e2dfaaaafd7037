"""HALP: preparing the inner loop from the full gradient ``G`` (bit centering).

After the clear pass of ``Phase.INNER`` the gradient banks hold ``G`` from the
full pass. :class:`InnerLoopPrep` then, as ``ziphalp.hw.params`` ("HALP mode")
writes out and :func:`ziphalp.hw.params.halp_shift` and the golden model
compute:

1. ``S = sum_f G_f**2``, exact, one value a cycle through one pipelined squarer
   (each word is read once and its lanes leave a shift chain one a cycle);
2. the offset shift ``sh`` from ``S`` and ``scale_log`` in five steps (the
   leading one of ``S``, the bits below it, the log-domain rule, rounding, the
   clamp to ``0..OFFSET_SHIFT_MAX``): the offset grid ``2**(sh - model.frac)``;
3. ``gamma_f = round_shift(G_f, sh + shift)``, one value a cycle through one
   shifter, gathered again into a word of every bank for the engine to write into
   the gamma banks while it clears ``G``.

It reads the gradient through the engine's port and writes nothing itself.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .delay import delay_line, delayed
from .params import (
    HALP_FRAC,
    LOG_FRAC,
    OFFSET_SHIFT_MAX,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    EngineParams,
    clog2,
)
from .replica import copies

__all__ = ["InnerLoopPrep", "leading_one"]


def leading_one(value):
    """The index of the highest set bit of ``value`` (0 if none), as a balanced tree
    of multiplexers: ``log2`` of the width deep, where a priority chain over the
    ~130 bits of ``S`` was the engine's longest path (56 logic levels, 30 MHz on the
    ECP5). Each node takes the upper half's index if the upper half has a one."""
    size = 1 << (len(value) - 1).bit_length()
    bits = Cat(value, Const(0, size - len(value)))

    def node(low, size):
        """(any one in bits[low:low + size], its highest index there, log2(size) bits)"""
        if size == 1:
            return bits[low], None
        half = size // 2
        low_any, low_index = node(low, half)
        high_any, high_index = node(low + half, half)
        index = high_any if low_index is None else Cat(Mux(high_any, high_index, low_index),
                                                      high_any)
        return low_any | high_any, index
    _, index = node(0, size)
    return Const(0, 1) if index is None else index


class InnerLoopPrep(wiring.Component):
    """``S``, then ``sh``, then ``gamma``; about ``2 * bank_depth * lanes`` cycles.

    Attributes
    ----------
    start : In(1)
        Begin (the gradient banks hold ``G``).
    scale_log : In(signed(SCALE_LOG_BITS)); shift : In(range(SHIFT_MAX + 1))
        Held.
    busy : Out(1)
    reading : Out(1); word : Out(range(bank_depth + 1))
        While ``reading``, the gradient banks are to be read at ``word`` (every bank).
    grad : In(lanes x signed(grad_bits))
        The words read, one cycle after ``word``.
    offset_shift : Out(range(OFFSET_SHIFT_MAX + 1))
        ``sh``, from step 2 on (held until the next preparation).
    gamma : Out(lanes x signed(grad_bits)); gamma_word : Out; gamma_write : Out(1)
        Step 3: write ``gamma`` to word ``gamma_word`` of every bank (and clear ``G``
        there) while ``gamma_write``.
    gamma_write_bank : Out(lanes)
        ``gamma_write`` for each bank's write-port select; with ``deep_pipeline``
        from a register per bank (the banks spread over the die).
    """

    def __init__(self, params: EngineParams):
        self.params = params
        p = params
        super().__init__({
            "start": In(1),
            "scale_log": In(signed(SCALE_LOG_BITS)), "shift": In(range(SHIFT_MAX + 1)),
            "busy": Out(1), "reading": Out(1), "word": Out(range(p.bank_depth + 1)),
            "grad": In(data.ArrayLayout(signed(p.grad_bits), p.lanes)),
            "offset_shift": Out(range(OFFSET_SHIFT_MAX + 1)),
            "gamma": Out(data.ArrayLayout(signed(p.grad_bits), p.lanes)),
            "gamma_word": Out(range(p.bank_depth + 1)), "gamma_write": Out(1),
            "gamma_write_bank": Out(p.lanes),
        })

    def elaborate(self, platform):
        m = Module()
        p = self.params
        self._norming, self._deciding, self._scaling = Signal(), Signal(), Signal()
        self._count = Signal(range(p.bank_depth * p.lanes + p.lanes + 16))
        self._norm2 = Signal(2 * p.grad_bits + clog2(p.bank_depth * p.lanes))
        m.d.comb += [self.busy.eq(self._norming | self._deciding | self._scaling),
                     self.reading.eq(self._norming | self._scaling)]
        lane, lane_valid, issue = self._stream(m)
        self._norm(m, lane, lane_valid)
        self._decide(m)
        self._scale(m, lane, issue)
        with m.If(self.start):
            m.d.sync += [self._norming.eq(1), self._count.eq(0)]
        # S restarts from zero a cycle after `start`, from a register of its own: the
        # first square reaches it many cycles later, and the strobe, fanned out to
        # S's hundred bits' set/reset inputs across the die, was a ULX3S build's
        # longest path (12.5 ns from the engine's start register)
        restart = Signal()
        m.d.sync += restart.eq(self.start)
        with m.If(restart):
            m.d.sync += self._norm2.eq(0)
        return m

    def _stream(self, m):
        """The gradient words as a stream of lane values, one a cycle, for both reading
        steps: word ``count // lanes`` is read once every ``lanes`` cycles into a
        chain of registers that shifts by a lane each cycle, so that lane ``k`` of the
        word is at the chain's head ``2 + k`` cycles after its read. Returns the head,
        its valid bit and the read strobe.

        One value a cycle through one datapath (one squarer, one shifter) instead of a
        shifter per lane: the per-lane shifters and the lane multiplexer before the
        squarer, each fed from every bank's output, were most of the routing demand
        around the gradient banks in the full ULX3S build."""
        p, count = self.params, self._count
        lane_bits = (p.lanes - 1).bit_length()
        total = p.bank_depth * p.lanes
        issue = Signal()
        m.d.comb += [issue.eq((self._norming | self._scaling) & (count < total)
                              & (count[:lane_bits] == 0)),
                     self.word.eq(count >> lane_bits)]
        load = Signal()
        m.d.sync += load.eq(issue)                 # the words arrive a cycle after the read
        chain = [Signal(signed(p.grad_bits), name=f"stream{k}") for k in range(p.lanes)]
        valid = Signal(p.lanes)
        with m.If(load):
            m.d.sync += [*(c.eq(self.grad[k]) for k, c in enumerate(chain)),
                         valid.eq(-1)]
        with m.Else():
            m.d.sync += [*(c.eq(n) for c, n in zip(chain, chain[1:], strict=False)),
                         valid.eq(valid >> 1)]
        return chain[0], valid[0], issue

    def _norm(self, m, lane, lane_valid):
        """``S``: each lane value off the stream, ``|g|``, its square, accumulated.

        The square of a whole gradient word in one cycle was the ECP5 engine's
        longest path (81 logic levels through the multipliers' adders), and halves of
        27 bits still left a 27 x 27 product (four hard multipliers and their sum) in
        one. Here ``|g|`` is cut into 18-bit limbs ``a_i``, each product ``a_i * a_j``
        is one hard multiplier into a register, and ``|g|**2`` is their sum: the
        squares ``a_i**2`` do not overlap (they are concatenated), and the cross
        terms are added to them in two sums, and the two sums in a third (three
        limbs at the ULX3S's 54-bit gradient: three cross terms)."""
        p, count, norm2 = self.params, self._count, self._norm2
        total = p.bank_depth * p.lanes
        mag = Signal(p.grad_bits)
        LIMB = 18
        limbs = [mag[i:i + LIMB] for i in range(0, p.grad_bits, LIMB)]
        squares = [Signal(2 * len(a), name=f"norm_sq{i}") for i, a in enumerate(limbs)]
        cross = {(i, j): Signal(len(limbs[i]) + len(limbs[j]), name=f"norm_x{i}{j}")
                 for i in range(len(limbs)) for j in range(i + 1, len(limbs))}
        sums = [Signal(2 * p.grad_bits + 1, name=f"norm_sum{i}") for i in range(2)]
        sq = Signal(2 * p.grad_bits)
        # a valid bit per register step: the stream's head, |g|, products, two sums,
        # square
        valid = [Signal(name=f"norm_valid{i}") for i in range(5)]
        m.d.comb += valid[0].eq(lane_valid & self._norming)
        m.d.sync += [mag.eq(Mux(lane < 0, -lane, lane)),
                     *(sq_i.eq(a * a) for sq_i, a in zip(squares, limbs, strict=True)),
                     *(x.eq(limbs[i] * limbs[j]) for (i, j), x in cross.items()),
                     *(valid[i + 1].eq(valid[i]) for i in range(len(valid) - 1))]
        # sum_i a_i**2 * 2**(2 * LIMB * i), then + 2 * a_i * a_j * 2**(LIMB * (i + j))
        terms = [Cat(*(Cat(sq_i, Const(0, 2 * LIMB - len(sq_i))) for sq_i in squares))]
        terms += [x << (LIMB * (i + j) + 1) for (i, j), x in cross.items()]
        split = (len(terms) + 1) // 2
        m.d.sync += [sums[0].eq(sum(terms[:split])), sums[1].eq(sum(terms[split:])),
                     sq.eq(sums[0] + sums[1])]
        with m.If(valid[-1]):
            m.d.sync += norm2.eq(norm2 + sq)
        with m.If(self._norming):
            m.d.sync += count.eq(count + 1)
            # the last word's last lane is at the stream's head a lane after its read
            # and a word's lanes later, then four register steps to `sq`
            with m.If(count == total + p.lanes + len(valid) + 1):
                m.d.sync += [self._norming.eq(0), self._deciding.eq(1), count.eq(0)]

    def _decide(self, m):
        """``sh``: the leading one of ``S`` and the bits below it, the log-domain
        rule, rounding, the clamp."""
        count, norm2 = self._count, self._norm2
        msb = Signal(range(len(norm2)))
        m.d.comb += msb.eq(leading_one(norm2))
        msb_r = Signal.like(msb)
        zero = Signal()
        # the mantissa's shift in two halves (a cycle each): by the high bits of msb,
        # keeping only the bits the low shift can reach, then by the low bits
        low = 3
        coarse = Signal(LOG_FRAC + (1 << low))
        mant = Signal(LOG_FRAC)
        x = Signal(signed(len(norm2).bit_length() + LOG_FRAC + SCALE_LOG_BITS + 2))
        rounded = Signal(signed(len(x)))
        with m.If(self._deciding):
            m.d.sync += count.eq(count + 1)
            with m.Switch(count):
                with m.Case(0):
                    m.d.sync += [msb_r.eq(msb), zero.eq(norm2 == 0)]
                with m.Case(1):
                    m.d.sync += coarse.eq((norm2 << LOG_FRAC) >> (msb_r[low:] << low))
                with m.Case(2):
                    m.d.sync += mant.eq(coarse >> msb_r[:low])
                with m.Case(3):
                    m.d.sync += x.eq((msb_r << LOG_FRAC) + mant - (HALP_FRAC << (LOG_FRAC + 1))
                                     - 2 * self.scale_log)
                with m.Case(4):
                    m.d.sync += rounded.eq((x + (1 << LOG_FRAC)) >> (LOG_FRAC + 1))
                with m.Case(5):
                    m.d.sync += [
                        self.offset_shift.eq(Mux(zero | (rounded < 0), 0,
                                                 Mux(rounded > OFFSET_SHIFT_MAX,
                                                     OFFSET_SHIFT_MAX, rounded))),
                        self._deciding.eq(0), self._scaling.eq(1), count.eq(0),
                    ]

    def _scale(self, m, lane, issue):
        """``gamma``: each lane value off the stream round-shifted, and gathered into
        a word of every bank again."""
        p, count = self.params, self._count
        total = p.bank_depth * p.lanes
        amount = Signal(range(OFFSET_SHIFT_MAX + SHIFT_MAX + 1))
        less = Signal.like(amount)
        m.d.sync += [amount.eq(self.offset_shift + self.shift),
                     less.eq(self.offset_shift + self.shift - 1)]
        # shifted by the high bits of `less`, then by the low ones, then rounded, a
        # register step each (each half of the wide shift and the add were the ECP5
        # engine's longest path in one); the results enter a chain that shifts by a
        # lane each cycle, so that the word's lanes are all in place `lanes` cycles
        # after its first
        low = 3                                   # the second shift's bits
        g1, g2 = Signal(signed(p.grad_bits)), Signal(signed(p.grad_bits))
        coarse = Signal(signed(p.grad_bits))
        shifted = Signal(signed(p.grad_bits))
        m.d.sync += [g1.eq(lane), g2.eq(g1),
                     coarse.eq(lane >> (less[low:] << low)), shifted.eq(coarse >> less[:low])]
        result = Mux(amount == 0, g2, (shifted + 1) >> 1)
        out = [self.gamma[b] for b in range(p.lanes)]
        m.d.sync += [*(o.eq(n) for o, n in zip(out, out[1:], strict=False)), out[-1].eq(result)]
        # a word read at cycle T: lane k at the head at T + 2 + k, its result in the
        # chain's last place at T + 5 + k, the whole word in place at T + 4 + lanes
        latency = 4 + p.lanes
        scale_issue = Signal()
        m.d.comb += scale_issue.eq(issue & self._scaling)
        gamma_write = delay_line(m, scale_issue, latency, "gamma_write")
        m.d.comb += [self.gamma_write.eq(gamma_write[-1]),
                     self.gamma_word.eq(delayed(m, self.word, latency, "gamma_word"))]
        m.d.comb += self.gamma_write_bank.eq(copies(m, gamma_write[-1], gamma_write[-2],
                                                     p.lanes, "gamma_write_bank",
                                                     registered=p.deep_pipeline))
        with m.If(self._scaling):
            m.d.sync += count.eq(count + 1)
            with m.If(count == total + latency):
                m.d.sync += self._scaling.eq(0)
