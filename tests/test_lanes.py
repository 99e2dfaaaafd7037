"""Amaranth-simulator unit tests of the engine's datapath blocks.

Each block gets random operands (full-range values included) and is compared,
cycle by cycle at its stated latency, with the exact integer result computed
here or by the golden model's own helpers (``round_shift``, ``saturate``).
"""

import dataclasses

import numpy as np
import pytest
from amaranth import Module, Signal, signed
from amaranth.sim import Simulator
from ziphalp.hw.adder_tree import AdderTree
from ziphalp.hw.dot import DotProduct
from ziphalp.hw.loss import BASE_SHIFT, ScaledError
from ziphalp.hw.multiply import LATENCY, product_terms
from ziphalp.hw.params import (
    BOARD_PARAMS,
    COST_FRAC,
    HALP_FRAC,
    LABEL,
    LEVEL,
    OFFSET_BITS,
    PRNG_GOLDEN,
    SIGMA_FRAC,
    EngineParams,
    Loss,
)
from ziphalp.hw.prng import PRNGLane
from ziphalp.hw.update import UpdateLanes
from ziphalp.sim.golden import loss_derivative, prng_seeds, round_shift, saturate, xorshift32

PARAMS = [EngineParams(beat_bits=16, lanes=2, max_features=64, max_batch=8),
          EngineParams(beat_bits=40, lanes=4, max_features=300, max_batch=3, model_bits=24,
                       model_frac=16, frame_bytes=1000),
          EngineParams(beat_bits=16, lanes=2, max_features=64, max_batch=8,
                       class_costs=False, l2_decay=False)]
#: The ULX3S engine's options (HALP, deep pipeline) on four lanes: a gradient word
#: wider than the update's shortened step (``grad_bits`` 46 > model_bits + 8).
ULX3S_LANES = dataclasses.replace(BOARD_PARAMS["ulx3s"], lanes=4, beat_bits=32,
                                  max_features=40, max_batch=4, halp_samples=16,
                                  resident_rows=0, resident_samples=0)


def run(dut, bench):
    """Simulate until the testbench returns (so its final assertions always run)."""
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def rand_signed(rng, bits, size=None):
    return rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=size)


def rand_magnitudes(rng, bits, size):
    """Signed values of every magnitude up to ``bits`` bits (log-uniform), so that
    small, middling and full-range words all occur."""
    scale = rng.integers(0, bits, size=size)
    return rand_signed(rng, bits, size) >> scale


@pytest.mark.parametrize("width,count", [(8, 1), (12, 2), (40, 5), (24, 8)])
def test_adder_tree(width, count):
    dut = AdderTree(width, count)
    rng = np.random.default_rng(width * count)
    vectors = [rand_signed(rng, width, count) for _ in range(60)]

    async def bench(ctx):
        for i in range(len(vectors) + dut.latency):
            if i < len(vectors):
                for k in range(count):
                    ctx.set(dut.inputs[k], int(vectors[i][k]))
            if i >= dut.latency:
                assert ctx.get(dut.sum) == int(vectors[i - dut.latency].sum())
            await ctx.tick()

    top = Module()                      # a clock even for a one-input (combinational) tree
    top.submodules.dut = dut
    toggle = Signal()
    top.d.sync += toggle.eq(~toggle)
    run(top, bench)


@pytest.mark.parametrize("a_bits,b_bits", [(32, 8), (24, 8), (16, 8), (40, 16), (17, 5)])
def test_product_terms(a_bits, b_bits):
    m = Module()
    a, b = Signal(signed(a_bits)), Signal(signed(b_bits))
    out = Signal(signed(a_bits + b_bits))
    m.d.comb += out.eq(sum(product_terms(m, a, b, "t")))
    rng = np.random.default_rng(a_bits + b_bits)
    pairs = [(int(x), int(y)) for x, y in zip(rand_signed(rng, a_bits, 80),
                                              rand_signed(rng, b_bits, 80), strict=True)]
    pairs += [(-(1 << (a_bits - 1)), -(1 << (b_bits - 1))), ((1 << (a_bits - 1)) - 1, -1)]

    async def bench(ctx):
        for i in range(len(pairs) + LATENCY):
            if i < len(pairs):
                ctx.set(a, pairs[i][0])
                ctx.set(b, pairs[i][1])
            if i >= LATENCY:
                x, y = pairs[i - LATENCY]
                assert ctx.get(out) == x * y, (x, y)
            await ctx.tick()

    run(m, bench)


@pytest.mark.parametrize("registered", [False, True], ids=["comb_next", "registered_next"])
@pytest.mark.parametrize("lane", [0, 2])
def test_prng_lane(lane, registered):
    """A PRNG lane's ``state`` and ``next`` against the golden model's seeding and
    xorshift32, cycle by cycle: reseeds (the zero-sum seed among them), steps in
    random cycles, a reseed while stepping."""
    dut = PRNGLane(lane, registered_next=registered)
    rng = np.random.default_rng(lane)
    zero_sum = (-(lane + 1) * PRNG_GOLDEN) % (1 << 32)   # start state 0: PRNG_ZERO_SEED

    async def bench(ctx):
        expected = None
        for seed in [1, zero_sum, *rng.integers(0, 1 << 32, size=3).tolist()]:
            ctx.set(dut.seed, seed)
            ctx.set(dut.reseed, 1)
            ctx.set(dut.step, int(rng.integers(2)))     # ignored while reseeding
            await ctx.tick()
            ctx.set(dut.reseed, 0)
            ctx.set(dut.step, 0)
            await ctx.tick()                            # the start state is computed
            await ctx.tick()                            # ... and loaded
            expected = int(prng_seeds(seed, lane + 1)[lane])
            for _ in range(40):
                assert ctx.get(dut.state) == expected
                assert ctx.get(dut.next) == int(xorshift32(np.uint32(expected)))
                step = int(rng.random() < 0.7)
                ctx.set(dut.step, step)
                await ctx.tick()
                if step:
                    expected = int(xorshift32(np.uint32(expected)))
            ctx.set(dut.step, 0)

    run(dut, bench)


@pytest.mark.parametrize("p", PARAMS + [dataclasses.replace(PARAMS[1], deep_pipeline=True)])
def test_dot_product(p):
    dut = DotProduct(p, tag_bits=4)
    assert dut.latency == DotProduct.latency_of(dataclasses.replace(p, deep_pipeline=False)) \
        + p.deep_pipeline
    rng = np.random.default_rng(p.lanes)
    samples = []
    for _ in range(12):
        beats = int(rng.integers(1, 6))
        w = rand_signed(rng, p.model_bits, (beats, p.lanes))
        c = rand_signed(rng, LEVEL.bits, (beats, p.lanes))
        samples.append((w, c, int(rng.integers(16))))
    expected = [(int((w * c).sum()), tag) for w, c, tag in samples]

    async def bench(ctx):
        results = []
        for w, c, tag in samples:
            for j in range(len(w)):
                for k in range(p.lanes):
                    ctx.set(dut.weights[k], int(w[j, k]))
                    ctx.set(dut.levels[k], int(c[j, k]))
                ctx.set(dut.valid, 1)
                ctx.set(dut.first, j == 0)
                ctx.set(dut.last, j == len(w) - 1)
                ctx.set(dut.tag, tag)
                await ctx.tick()
                if ctx.get(dut.done):
                    results.append((ctx.get(dut.dot), ctx.get(dut.tag_out)))
            ctx.set(dut.valid, 0)
            if rng.random() < 0.5:                         # a bubble between samples
                await ctx.tick()
                if ctx.get(dut.done):
                    results.append((ctx.get(dut.dot), ctx.get(dut.tag_out)))
        for _ in range(dut.latency + 1):
            await ctx.tick()
            if ctx.get(dut.done):
                results.append((ctx.get(dut.dot), ctx.get(dut.tag_out)))
        assert results == expected

    run(dut, bench)


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("loss", list(Loss), ids=lambda loss: loss.name.lower())
def test_scaled_error(p, loss):
    dut = ScaledError(p, tag_bits=1)
    rng = np.random.default_rng(7 + loss)
    one = 1 << (p.model_frac + LEVEL.frac)
    cases = []
    for i in range(40):
        if i % 3 == 0:                 # near the margin and the sigmoid's range
            dot = int(rng.integers(-10 * one, 10 * one))
        else:
            dot = int(rand_signed(rng, p.dot_bits - int(rng.integers(0, p.dot_bits - 8))))
        cost_pos, cost_neg = (int(c) for c in rng.integers(0, 256, 2))
        if i < 4 or not p.class_costs:
            cost_pos = cost_neg = 1 << COST_FRAC
        cases.append((dot, int(rand_signed(rng, LABEL.bits)), int(rng.integers(0, 32)),
                      cost_pos, cost_neg))

    async def bench(ctx):
        ctx.set(dut.loss, loss)
        for dot, label, shift, cost_pos, cost_neg in cases:
            ctx.set(dut.shift, shift)
            ctx.set(dut.cost_pos, cost_pos)
            ctx.set(dut.cost_neg, cost_neg)
            await ctx.tick()                   # the configuration settles before the sample
            ctx.set(dut.dot, dot)
            ctx.set(dut.label, label)
            ctx.set(dut.valid, 1)
            await ctx.tick()
            ctx.set(dut.valid, 0)
            await ctx.tick().repeat(dut.latency - 1)
            assert ctx.get(dut.valid_out)
            error = loss_derivative(dot, label, loss, p)
            scaled, clip1 = saturate(np.array([round_shift(error, BASE_SHIFT + shift)]),
                                     p.sigma.bits)
            cost = cost_pos if label > 0 else cost_neg
            sigma, clip2 = saturate(np.array([round_shift(int(scaled[0]) * cost, COST_FRAC)]),
                                    p.sigma.bits)
            assert ctx.get(dut.sigma) == int(sigma[0]), (dot, label, shift, cost)
            assert ctx.get(dut.clipped) == (clip1 or clip2)

    run(dut, bench)


@pytest.mark.parametrize("p,l2_shift", [(p, s) for p in [*PARAMS, ULX3S_LANES]
                                        for s in ([0, 1, 7, 31] if p.l2_decay else [0])])
def test_update_lanes(p, l2_shift):
    dut = UpdateLanes(p)
    rng = np.random.default_rng(11 + l2_shift)
    n = 50
    sigma = rand_signed(rng, p.sigma.bits, n)
    codes = rand_signed(rng, LEVEL.bits, (n, p.lanes))
    grad = rand_magnitudes(rng, p.grad_bits - 2, (n, p.lanes))
    model = rand_signed(rng, p.model_bits, (n, p.lanes))
    end = rng.random(n) < 0.5
    acc = grad + sigma[:, None] * codes
    decay = model >> l2_shift if l2_shift else 0
    new_model, _ = saturate(model - round_shift(acc, SIGMA_FRAC) - decay, p.model_bits)
    new_grad = np.where(end[:, None], 0, acc)

    async def bench(ctx):
        ctx.set(dut.l2_shift, l2_shift)
        await ctx.tick()
        seen = 0
        for t in range(n + dut.latency + 1):
            i = t                                   # word entering at this cycle
            if i < n:
                ctx.set(dut.sigma, int(sigma[i]))
                ctx.set(dut.end, bool(end[i]))
                ctx.set(dut.valid, 1)
                for k in range(p.lanes):
                    ctx.set(dut.levels[k], int(codes[i, k]))
            else:
                ctx.set(dut.valid, 0)
            g, w = t - dut.GRAD_AT, t - dut.MODEL_AT  # words whose RAM data arrive now
            for k in range(p.lanes):
                if 0 <= g < n:
                    ctx.set(dut.grad[k], int(grad[g, k]))
                if 0 <= w < n:
                    ctx.set(dut.model[k], int(model[w, k]))
            j = t - dut.grad_latency                # gradient words out now
            if 0 <= j < n:
                for k in range(p.lanes):
                    assert ctx.get(dut.grad_out[k]) == int(new_grad[j, k])
            j = t - dut.latency                     # model words out now
            if 0 <= j < n:
                for k in range(p.lanes):
                    if end[j]:
                        assert ctx.get(dut.model_out[k]) == int(new_model[j, k])
                seen += 1
            await ctx.tick()
        assert seen == n

    run(dut, bench)


@pytest.mark.parametrize("bits,shift", [(16, 0), (8, 5), (2, 11)])
def test_update_lanes_halp_inner(bits, shift):
    """HALP's inner-loop update of the ULX3S lanes: ``acc = g + gamma + sigma * q2``,
    ``z' = clamp(z - ((acc + r) >> HALP_FRAC))`` to ``bits`` bits, ``w' = sat(a + (z' <<
    shift))``, over accumulators of every magnitude (the lanes shorten the step's
    adder and comparisons; a step beyond the offset's reach must clamp all the same)."""
    p = ULX3S_LANES
    dut = UpdateLanes(p)
    rng = np.random.default_rng(bits + shift)
    n, K = 60, p.lanes
    sigma = rand_magnitudes(rng, p.sigma.bits, n)
    codes = rand_signed(rng, LEVEL.bits, (n, K))
    grad = rand_magnitudes(rng, p.grad_bits - 2, (n, K))
    gamma = rand_magnitudes(rng, p.grad_bits - 2, (n, K))
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    offset = rng.integers(low, high + 1, (n, K))
    anchor = rand_signed(rng, p.model_bits, (n, K))
    end = rng.random(n) < 0.7
    acc = grad + gamma + sigma[:, None] * codes
    z = np.clip(offset - ((acc + (1 << (HALP_FRAC - 1))) >> HALP_FRAC), low, high)
    new_model, _ = saturate(anchor + (z << shift), p.model_bits)
    new_grad = np.where(end[:, None], 0, acc)
    # the steps reach past the offset's range both ways, and stay within it
    step = (acc + (1 << (HALP_FRAC - 1))) >> HALP_FRAC
    assert (step > 1 << (OFFSET_BITS + 1)).any() and (step < -(1 << (OFFSET_BITS + 1))).any()
    assert (abs(step) < 1 << bits).any()

    async def bench(ctx):
        ctx.set(dut.inner, 1)
        ctx.set(dut.offset_bits, bits)
        ctx.set(dut.offset_shift, shift)
        for _ in range(3):                      # the settings' registers
            await ctx.tick()
        seen = 0
        for t in range(n + dut.latency + 1):
            ctx.set(dut.valid, t < n)
            if t < n:
                ctx.set(dut.sigma, int(sigma[t]))
                ctx.set(dut.end, bool(end[t]))
                for k in range(K):
                    ctx.set(dut.levels[k], int(codes[t, k]))
            g, w, a = t - dut.GRAD_AT, t - dut.MODEL_AT, t - dut.ANCHOR_AT
            for k in range(K):
                if 0 <= g < n:
                    ctx.set(dut.grad[k], int(grad[g, k]))
                    ctx.set(dut.gamma[k], int(gamma[g, k]))
                if 0 <= w < n:
                    ctx.set(dut.offset[k], int(offset[w, k]))
                if 0 <= a < n:
                    ctx.set(dut.anchor[k], int(anchor[a, k]))
            j = t - dut.grad_latency
            if 0 <= j < n:
                for k in range(K):
                    assert ctx.get(dut.grad_out[k]) == int(new_grad[j, k]), (j, k)
            j = t - dut.latency
            if 0 <= j < n:
                for k in range(K):
                    assert ctx.get(dut.offset_out[k]) == int(z[j, k]), (j, k, int(acc[j, k]))
                    assert ctx.get(dut.model_out[k]) == int(new_model[j, k]), (j, k)
                seen += 1
            await ctx.tick()
        assert seen == n

    run(dut, bench)
