"""Amaranth-simulator tests of the engine's stages, one component each.

Every stage is driven on its own, with bubbles where it takes a stream, and
compared exactly with the golden model's helper for that stage
(:func:`~ziphalp.sim.golden.unpack_fields`, :func:`~ziphalp.sim.golden.decode`,
:func:`~ziphalp.sim.golden.inner_loop_prep`, ``EngineParams.beats_for``) or
with the rule the engine's docstrings state (bank order, batch ends, the model
hazard). The whole engine is checked
against the golden model by the cocotb benches (``test_engine_cocotb.py``).
"""

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.lib import data
from amaranth.sim import Simulator
from ziphalp.hw.banks import Banks, BeatCursor, rotate
from ziphalp.hw.clear import ClearPass, CopyFill
from ziphalp.hw.decode import BeatDecoder
from ziphalp.hw.halp_prep import InnerLoopPrep
from ziphalp.hw.params import LEVEL, OFFSET_SHIFT_MAX, EngineParams
from ziphalp.hw.scheduler import SampleScheduler, inflight_limit
from ziphalp.hw.skid import RegisterSlice
from ziphalp.hw.update import UpdateLanes
from ziphalp.hw.update_pass import UpdatePass, sample_entry
from ziphalp.sim.golden import decode, inner_loop_prep, unpack_fields

PARAMS = [EngineParams(beat_bits=16, lanes=2, max_features=64, max_batch=8),
          EngineParams(beat_bits=40, lanes=4, max_features=300, max_batch=3, model_bits=24,
                       model_frac=16, frame_bytes=1000, deep_pipeline=True),
          EngineParams(beat_bits=64, lanes=32, max_features=100, max_batch=4)]
HALP = [EngineParams(beat_bits=32, lanes=4, max_features=40, max_batch=4, halp_samples=64),
        EngineParams(beat_bits=64, lanes=8, max_features=70, max_batch=4, halp_samples=16,
                     model_bits=24, model_frac=16, deep_pipeline=True)]
ids = lambda p: f"w{p.beat_bits}l{p.lanes}"                     # noqa: E731


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_register_slice_keeps_order_at_full_rate():
    dut = RegisterSlice(8)
    rng = np.random.default_rng(1)
    sent = [int(x) for x in rng.integers(0, 256, 300)]

    async def bench(ctx):
        got, i, full_rate = [], 0, 0
        for cycle in range(2000):
            burst = cycle < 100                    # both sides always ready: full rate
            ctx.set(dut.i.valid, i < len(sent) and (burst or rng.random() < 0.6))
            ctx.set(dut.i.payload, sent[i] if i < len(sent) else 0)
            ctx.set(dut.o.ready, burst or rng.random() < 0.5)
            if ctx.get(dut.i.valid) and ctx.get(dut.i.ready):
                i += 1
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append(ctx.get(dut.o.payload))
                full_rate += burst
            await ctx.tick()
        assert got == sent
        assert full_rate == 99                     # one a cycle after the first
        assert ctx.get(dut.empty)

    run(dut, bench)


@pytest.mark.parametrize("p", PARAMS, ids=ids)
def test_beat_decoder_matches_golden(p):
    """Fields to the two samples of every lane, through the level table."""
    dut = BeatDecoder(p)
    rng = np.random.default_rng(p.lanes)
    levels = np.sort(rng.integers(LEVEL.min_int, LEVEL.max_int + 1, p.levels_max))
    modes = [(k, double) for k in range(1, p.max_k + 1) for double in (0, 1)]

    async def bench(ctx):
        for i, level in enumerate(levels):
            ctx.set(dut.level_write, 1)
            ctx.set(dut.level_index, i)
            ctx.set(dut.level_data, int(level))
            await ctx.tick()
        ctx.set(dut.level_write, 0)
        for k, double in modes:
            K = p.values_per_beat(k, double)
            ctx.set(dut.k, k)
            ctx.set(dut.double, double)
            await ctx.tick()
            assert ctx.get(dut.per_beat) == K
            mask = int(rng.integers(0, 1 << K))
            ctx.set(dut.last_mask, mask)
            beats = [int.from_bytes(rng.bytes(p.beat_bits // 8), "little") for _ in range(6)]
            lasts = [bool(rng.integers(2)) for _ in beats]
            for i in range(len(beats) + dut.latency):
                if i < len(beats):
                    ctx.set(dut.data, beats[i])
                    ctx.set(dut.last, lasts[i])
                if i >= dut.latency:
                    beat, last = beats[i - dut.latency], lasts[i - dut.latency]
                    fields = unpack_fields(beat.to_bytes(p.beat_bits // 8, "little"), p, k,
                                           double, K)
                    q1, q2 = decode(fields, levels, k, double)
                    on = [lane < K and (not last or bool(mask >> lane & 1))
                          for lane in range(p.lanes)]
                    for lane in range(p.lanes):
                        assert ctx.get(dut.active[lane]) == on[lane]
                        want1 = int(q1[lane]) if on[lane] else 0
                        want2 = int(q2[lane]) if on[lane] else 0
                        assert (ctx.get(dut.q1[lane]), ctx.get(dut.q2[lane])) == (want1, want2)
                await ctx.tick()

    run(dut, bench)


@pytest.mark.parametrize("lanes", [1, 2, 4, 32])
def test_cursor_and_rotation_follow_the_bank_layout(lanes):
    """Beat ``j`` of K features starts at feature ``j K``: bank ``j K % L``, word
    ``j K // L``; rotation puts lane ``i`` in bank ``(bank + i) % L``."""
    depth = 40
    m = Module()
    m.submodules.cursor = cursor = BeatCursor(lanes, depth)
    values = [Signal(8, name=f"v{i}") for i in range(lanes)]
    bank = Signal(range(lanes))
    rotated = Signal(data.ArrayLayout(8, lanes))
    out = rotate(values, bank)
    for b in range(lanes):
        m.d.comb += rotated[b].eq(out[b])

    async def bench(ctx):
        for K in sorted({1, max(1, lanes // 2), lanes, max(1, lanes - 1)}):
            ctx.set(cursor.per_beat, K)
            ctx.set(cursor.restart, 1)
            await ctx.tick()
            ctx.set(cursor.restart, 0)
            ctx.set(cursor.step, 1)
            for j in range(min(30, depth * lanes // K)):
                assert (ctx.get(cursor.bank), ctx.get(cursor.addr)) == \
                    (j * K % lanes, j * K // lanes)
                await ctx.tick()
            ctx.set(cursor.step, 0)
        for first in range(lanes):
            ctx.set(bank, first)
            for i in range(lanes):
                ctx.set(values[i], 10 + i)
            for i in range(lanes):
                assert ctx.get(rotated[(first + i) % lanes]) == 10 + i

    run(m, bench)


@pytest.mark.parametrize("p", PARAMS, ids=ids)
def test_clear_pass_derives_the_sample_geometry(p):
    dut = ClearPass(p)
    rng = np.random.default_rng(3)
    cases = [(int(rng.integers(1, p.max_features + 1)), int(rng.integers(1, p.max_k + 1)),
              int(rng.integers(2))) for _ in range(6)] + [(p.max_features, p.max_k, 1), (1, 1, 0)]

    def check_bank_copies(ctx):
        """Each bank's copies equal the shared signals (registers of their own with
        deep_pipeline)."""
        every = (1 << p.lanes) - 1
        for name, shared in (("bank_busy", dut.busy), ("bank_valid", dut.word_valid),
                             ("bank_late_valid", dut.late_valid)):
            assert ctx.get(getattr(dut, name)) == every * ctx.get(shared), name
        for b in range(p.lanes):
            assert ctx.get(dut.bank_word[b]) == ctx.get(dut.word)
            assert ctx.get(dut.bank_late_word[b]) == ctx.get(dut.late_word)

    async def bench(ctx):
        for d, k, double in cases:
            K = p.values_per_beat(k, double)
            ctx.set(dut.features, d)
            ctx.set(dut.per_beat, K)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            cycles = 0
            while ctx.get(dut.busy):
                assert ctx.get(dut.word) == cycles
                assert ctx.get(dut.word_valid) == (cycles < p.bank_depth)
                assert ctx.get(dut.done) == (cycles == dut.cycles - 1)
                check_bank_copies(ctx)
                cycles += 1
                await ctx.tick()
            assert cycles == dut.cycles
            for _ in range(3):                  # the late words drain
                check_bank_copies(ctx)
                await ctx.tick()
            n = p.beats_for(d, k, double)
            assert ctx.get(dut.last_word) == n - 1
            assert ctx.get(dut.last_mask) == sum(1 << i for i in range(p.lanes)
                                                 if (n - 1) * K + i < d)

    run(dut, bench)


@pytest.mark.parametrize("p", HALP, ids=ids)
def test_copy_fill_writes_every_other_copy(p):
    """Every word of every copy but ``base`` is written once, from the same word of
    ``base``, two cycles after it is read."""
    dut = CopyFill(p)
    base = 5 % p.model_copies

    async def bench(ctx):
        ctx.set(dut.base, base)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        reads, writes = [], []
        for _ in range(p.model_copies * p.bank_depth + 10):
            if ctx.get(dut.write):
                writes.append((ctx.get(dut.write_copy), ctx.get(dut.write_word)))
                assert writes[-1][1] == reads[-2]         # the word read two cycles before
            reads.append(ctx.get(dut.word) if ctx.get(dut.busy) else None)
            await ctx.tick()
        assert not ctx.get(dut.busy)
        assert sorted(writes) == sorted((c, w) for c in range(p.model_copies) if c != base
                                        for w in range(p.bank_depth))

    run(dut, bench)


@pytest.mark.parametrize("p", HALP, ids=ids)
def test_inner_loop_prep_matches_golden(p):
    """``sh`` from ``sum G**2`` and ``gamma = round_shift(G, sh + shift)``
    (:func:`~ziphalp.sim.golden.inner_loop_prep`)."""
    m = Module()
    m.submodules.prep = dut = InnerLoopPrep(p)
    m.submodules.grad = grad = Banks(dut.grad.shape().elem_shape, p.lanes, p.bank_depth,
                                     reads=("read",))
    m.d.comb += [grad.read.addr[b].eq(dut.word) for b in range(p.lanes)]
    m.d.comb += dut.grad.eq(grad.read.data)
    rng = np.random.default_rng(p.lanes)
    G_bits = p.grad_bits

    async def bench(ctx):
        seen = set()
        for case in range(8):
            scale = int(rng.integers(4, G_bits - 1))
            G = rng.integers(-(1 << scale), 1 << scale, (p.bank_depth, p.lanes))
            G[rng.random(G.shape) < 0.2] = 0
            if case == 0:
                G[:] = 0
            norm2 = int(sum(int(g) ** 2 for g in G.ravel()))
            # scale_log near the value that puts sh mid-range, and both clamps
            target = [int(rng.integers(1, OFFSET_SHIFT_MAX)), -5, OFFSET_SHIFT_MAX + 5][case % 3]
            lam = norm2.bit_length() << 8
            scale_log = int(np.clip((lam - (14 << 9) - target * 512) // 2, -32768, 32767))
            shift = int(rng.integers(0, 8))
            for word in range(p.bank_depth):
                ctx.set(grad.write.addr, [word] * p.lanes)
                ctx.set(grad.write.data, [int(g) for g in G[word]])
                ctx.set(grad.write.en, (1 << p.lanes) - 1)
                await ctx.tick()
            ctx.set(grad.write.en, 0)
            ctx.set(dut.scale_log, scale_log)
            ctx.set(dut.shift, shift)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            gamma = {}
            for _ in range(2 * p.bank_depth * p.lanes + 60):
                if ctx.get(dut.gamma_write):
                    gamma[ctx.get(dut.gamma_word)] = [ctx.get(dut.gamma[b])
                                                      for b in range(p.lanes)]
                await ctx.tick()
            assert not ctx.get(dut.busy)
            sh, want = inner_loop_prep(G.ravel(), scale_log, shift)
            want = want.reshape(G.shape)
            seen.add(min(max(sh, 1), OFFSET_SHIFT_MAX - 1) if 0 < sh < OFFSET_SHIFT_MAX else sh)
            assert ctx.get(dut.offset_shift) == sh
            assert sorted(gamma) == list(range(p.bank_depth))
            assert all(gamma[w] == [int(x) for x in want[w]] for w in gamma)
        assert {0, OFFSET_SHIFT_MAX} <= seen and len(seen) >= 3     # both clamps and between

    run(m, bench)


def batch_ends(flushes: list[bool], batch: int) -> list[bool]:
    """The golden model's rule: a sample ends the batch when it fills it or one of
    its beats carries a flush."""
    ends, count = [], 0
    for flush in flushes:
        count += 1
        ends.append(flush or count == batch)
        count = 0 if ends[-1] else count
    return ends


@pytest.mark.parametrize("p,stale,rotate", [
    (PARAMS[0], 0, False), (PARAMS[1], 0, False), (HALP[0], 0, False), (HALP[0], 0, True),
    (HALP[0], 2, True), (HALP[1], HALP[1].max_stale, True)],
    ids=lambda x: ids(x) if isinstance(x, EngineParams) else str(x))
def test_scheduler_batches_and_hazard(p, stale, rotate):
    """Labels and cache indices pass through, batch ends follow the golden rule, and
    beat ``j`` of sample ``u`` enters only once every update of a batch that ended
    at a sample ``< u - stale`` has written ``j + 1`` beats of model words, reading
    the model copy the last of them wrote when updates rotate through the copies,
    else copy ``base`` (a fake stage 2: updates in order, each beat written after a
    random delay)."""
    fifo_depth = p.max_beats + 16
    dut = SampleScheduler(p, fifo_depth, 2)
    rng = np.random.default_rng(5 + stale)
    n, batch, base = 3, 2, p.model_copies - 1

    async def bench(ctx):
        ctx.set(dut.batch, batch)
        ctx.set(dut.last_word, n - 1)
        ctx.set(dut.per_beat, 1)
        if p.model_copies > 1:
            ctx.set(dut.stale, stale)
            ctx.set(dut.base, base)
            ctx.set(dut.rotate, rotate)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        samples = [(int(rng.integers(-30000, 30000)), int(rng.integers(p.halp_samples or 1)),
                    [bool(rng.random() < 0.15) for _ in range(n + 1)]) for _ in range(60)]
        beats = []
        for label, index, flush in samples:
            beats.append(((label & 0xFFFF) | index << 16, flush[0]))
            beats += [(int(rng.integers(0, 1 << 16)), f) for f in flush[1:]]
        want_ends = batch_ends([any(f) for _, _, f in samples], batch)
        got, ends, updates = [], [], []        # ends: per sample; updates: ended samples
        done, written, u = 0, 0, -1            # updates written; beats of update `done`
        i, started = 0, False
        for _ in range(4000):
            ctx.set(dut.pass_start, started)       # a sample's pass starts after its last beat
            started = False
            ctx.set(dut.beats.valid, i < len(beats) and rng.random() < 0.8)
            ctx.set(dut.beats.payload.data, beats[i][0] if i < len(beats) else 0)
            ctx.set(dut.beats.payload.flush, beats[i][1] if i < len(beats) else 0)
            # fake stage 2: updates in order, one beat of model words now and then
            write = done < len(updates) and rng.random() < 0.3
            ctx.set(dut.model_written, write)
            ctx.set(dut.update_done, write and written == n - 1)
            if ctx.get(dut.take):
                word = ctx.get(dut.word)
                if ctx.get(dut.first):
                    u += 1
                    got.append((ctx.get(dut.label), ctx.get(dut.index) if p.halp else 0))
                needed = sum(ends[:max(u - stale, 0)])
                assert done >= needed or (done == needed - 1 and written > word), \
                    f"sample {u} beat {word} taken before its model words"
                if p.model_copies > 1:
                    assert ctx.get(dut.copy) == (base + needed * rotate) % p.model_copies
                if ctx.get(dut.last):
                    started = True
                    ends.append(bool(ctx.get(dut.end)))
                    if ends[-1]:
                        updates.append(u)
            if ctx.get(dut.beats.valid) and ctx.get(dut.beats.ready):
                i += 1
            written += write
            if written == n:
                done, written = done + 1, 0
            await ctx.tick()
        assert got == [(label, index if p.halp else 0) for label, index, _ in samples]
        assert ends == want_ends

    run(dut, bench)


@pytest.mark.parametrize("p,rotate", [(PARAMS[1], False), (PARAMS[2], False),
                                      (HALP[0], False), (HALP[0], True)],
                         ids=lambda x: ids(x) if isinstance(x, EngineParams) else str(x))
def test_update_pass_sequences_the_beats(p, rotate):
    """Each ``sigma`` pops its sample's beats in order; their places reach the update
    lanes' operand points on time; passes start far enough apart (further with
    delayed gradients) and no further; with model copies
    rotating, the ``i``-th batch-ending pass after ``start`` writes copy ``base + i +
    1``, else copy ``base``."""
    lat, grad_lat = UpdateLanes.latency_of(p), UpdateLanes.grad_latency_of(p)
    grad_at, model_at, anchor_at = UpdateLanes.GRAD_AT, UpdateLanes.MODEL_AT, UpdateLanes.ANCHOR_AT
    dut = UpdatePass(p, grad_at=grad_at, model_at=model_at, grad_latency=grad_lat, latency=lat,
                     anchor_at=anchor_at if p.halp else None)
    rng = np.random.default_rng(9)
    n, K = 3, p.lanes
    entry = sample_entry(p)
    passes = [(int(rng.integers(-1000, 1000)), bool(rng.integers(2)))
              for _ in range(inflight_limit(p))]
    beats = [[[int(x) for x in rng.integers(-256, 257, p.lanes)] for _ in range(n)]
             for _ in passes]

    base = p.model_copies - 1
    ends_before = np.cumsum([0] + [end for _, end in passes])

    async def bench(ctx):
        ctx.set(dut.last_word, n - 1)
        ctx.set(dut.per_beat, K)
        ctx.set(dut.base, base)
        ctx.set(dut.rotate, rotate)
        ctx.set(dut.delayed, rotate)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        starts, levels, places, cycle, p_i, b_i = [], [], {}, 0, 0, 0
        flat = [b for sample in beats for b in sample]
        for _ in range(200):
            ctx.set(dut.sigmas.valid, p_i < len(passes))
            if p_i < len(passes):
                sigma, end = passes[p_i]
                ctx.set(dut.sigmas.payload, (sigma & ((1 << p.sigma.bits) - 1))
                        | end << p.sigma.bits)
            ctx.set(dut.samples.valid, b_i < len(flat))
            if b_i < len(flat):
                value = entry.const({"q2": flat[b_i], "active": (1 << p.lanes) - 1})
                ctx.set(dut.samples.payload, value)
            if ctx.get(dut.pass_start):
                starts.append(cycle)
                p_i += 1
            if ctx.get(dut.samples.ready):
                b_i += 1
            if ctx.get(dut.valid):
                levels.append(([ctx.get(dut.levels[i]) for i in range(p.lanes)],
                               ctx.get(dut.sigma), ctx.get(dut.end)))
                places[cycle] = len(levels) - 1
            # the places of the words to be read show two cycles before the words
            # are due (the engine registers the address, the RAM reads a cycle
            # later), those of the results to be written a cycle before them and
            # when they are out
            points = [(dut.grad_ahead, grad_at - 2), (dut.model_ahead, model_at - 2),
                      (dut.write_ahead, lat - 1), (dut.write_at, lat),
                      (dut.grad_write_ahead, grad_lat - 1), (dut.grad_write_at, grad_lat)]
            if p.halp:
                points.append((dut.anchor_ahead, anchor_at - 2))
            for place, at in points:
                if cycle - at in places:
                    j = places[cycle - at]
                    assert ctx.get(place.valid)
                    assert (ctx.get(place.bank), ctx.get(place.addr)) == \
                        (j % n * K % p.lanes, j % n * K // p.lanes)
                    assert ctx.get(place.last) == (j % n == n - 1)
                    assert ctx.get(place.end) == passes[j // n][1]
                    assert ctx.get(place.copy) == \
                        (base + rotate * (1 + ends_before[j // n])) % p.model_copies
                else:
                    assert not ctx.get(place.valid)
            await ctx.tick()
            cycle += 1
        assert len(starts) == len(passes)
        # passes wait for the last one's gradient writes (a read in the cycle after
        # the write), and with delayed gradients for its model writes; the beats
        # ready, they start no later
        gap = 2 + (lat if rotate else grad_lat) - grad_at
        assert all(b - a == max(n + 1, gap) for a, b in zip(starts, starts[1:], strict=False))
        assert [lv for lv, _, _ in levels] == flat
        assert [(s, e) for _, s, e in levels] == [passes[j // n] for j in range(len(flat))]

    run(dut, bench)


@pytest.mark.parametrize("width", [1, 2, 3, 5, 8, 130])
def test_leading_one_tree(width):
    """InnerLoopPrep's leading-one tree: the index of the highest set bit, 0 for none."""
    from ziphalp.hw.halp_prep import leading_one
    m = Module()
    value, index = Signal(width), Signal(8)
    m.d.comb += index.eq(leading_one(value))
    rng = np.random.default_rng(width)
    values = [0, (1 << width) - 1, *(1 << i for i in range(width)),
              *(int.from_bytes(rng.bytes(17), "little") % (1 << width) for _ in range(100))]

    async def bench(ctx):
        for v in values:
            ctx.set(value, v)
            assert ctx.get(index) == max(v.bit_length() - 1, 0), (width, v)

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
