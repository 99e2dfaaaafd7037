"""The resident store's gateware (``ziphalp.hw.resident``) against the golden model.

The store is loaded through its write port with random codes, labels and a
random sampler table, then runs are started with random walks, modes and seeds;
the beats it emits (taken with random back-pressure) must be exactly those of
:meth:`ziphalp.sim.golden.GoldenEngine.run`, the run's last beat flushing, and at
one beat a cycle when the engine side is always ready.
"""

import numpy as np
import pytest
from amaranth.sim import Simulator
from ziphalp.hw.params import EngineParams, Phase
from ziphalp.hw.protocol import Region
from ziphalp.hw.resident import FIFO_DEPTH, LAUNCH, ResidentSource, stages
from ziphalp.sim.golden import GoldenEngine

PARAMS = [
    EngineParams(beat_bits=32, lanes=4, max_features=40, max_batch=4, halp_samples=64,
                 resident_rows=96, resident_samples=40),
    EngineParams(beat_bits=64, lanes=16, max_features=70, max_batch=4, halp_samples=16,
                 model_bits=24, model_frac=16, resident_rows=64, resident_samples=24),
    # the ULX3S's register stages: loads through registers beside each memory, the
    # lanes reseeded from registers, the draws registered before the packing
    EngineParams(beat_bits=64, lanes=8, max_features=50, max_batch=4, halp_samples=16,
                 resident_rows=64, resident_samples=24, deep_pipeline=True),
]
ids = lambda p: f"w{p.beat_bits}l{p.lanes}{'d' if p.deep_pipeline else ''}"   # noqa: E731


def store_image(p: EngineParams, rng) -> dict[Region, bytes]:
    codes = rng.integers(0, 256, p.resident_rows * p.lanes).astype(np.uint8)
    labels = rng.integers(-32768, 32768, Region.LABELS.beats(p) * p.beat_bits // 16)
    j = rng.integers(0, 256, 256)
    t = rng.choice([0, 1, 65535, 65536, *rng.integers(0, 65537, 252)], 256)
    entries = (j | t << 8).astype("<u4")
    return {Region.CODES: codes.tobytes(), Region.LABELS: labels.astype("<i2").tobytes(),
            Region.SAMPLER: entries.tobytes()}


def golden_runs(p, image, runs):
    golden = GoldenEngine(p)
    for region, payload in image.items():
        golden.load_data(region, 0, payload)
    expected = []
    for config, run in runs:
        golden.configure(**config)
        beats = golden.run(**run)
        width = p.beat_bits // 8
        expected.append([int.from_bytes(beats[i:i + width], "little")
                         for i in range(0, len(beats), width)])
    return expected


def random_runs(p, rng, count):
    runs = []
    for _ in range(count):
        features = int(rng.integers(1, p.max_features + 1))
        bias = int(rng.integers(0, 2))
        rows = max(1, p.resident_rows_for(features - bias))
        phase = Phase(int(rng.integers(0, 3)))
        most = min(p.resident_samples, p.resident_rows // rows,
                   p.halp_samples if phase != Phase.SGD else p.resident_samples)
        samples = int(rng.integers(1, most + 1))
        config = dict(features=features, batch=1, shift=4, k=int(rng.integers(1, p.max_k + 1)),
                      double=bool(rng.integers(0, 2)), phase=phase)
        run = dict(count=int(rng.integers(1, 3 * samples + 2)),
                   first=int(rng.integers(0, samples)), stride=int(rng.integers(0, samples)),
                   samples=samples, seed=int(rng.integers(0, 1 << 32)), bias=bias)
        runs.append((config, run))
    return runs


@pytest.mark.parametrize("p", PARAMS, ids=ids)
def test_resident_source_matches_golden(p):
    rng = np.random.default_rng(p.lanes)
    dut = ResidentSource(p)
    image = store_image(p, rng)
    runs = random_runs(p, rng, 8)
    expected = golden_runs(p, image, runs)

    async def bench(ctx):
        width = p.beat_bits // 8
        for region, payload in image.items():
            for addr in range(len(payload) // width):
                ctx.set(dut.write, 1)
                ctx.set(dut.region, region)
                ctx.set(dut.addr, addr)
                ctx.set(dut.data, int.from_bytes(payload[addr * width:(addr + 1) * width],
                                                 "little"))
                await ctx.tick().until(dut.write_ready)
        ctx.set(dut.write, 0)
        for number, ((config, run), want) in enumerate(zip(runs, expected, strict=True)):
            ctx.set(dut.features, config["features"])
            ctx.set(dut.k, config["k"])
            ctx.set(dut.double, config["double"])
            ctx.set(dut.indexed, config["phase"] != Phase.SGD)
            for name in ("count", "first", "stride", "samples", "seed", "bias"):
                ctx.set(getattr(dut, name), run[name])
            await ctx.tick()
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            full_rate = number % 2 == 0          # every other run: the engine always ready
            got, flushes, cycles = [], [], 0
            while ctx.get(dut.busy):
                ready = full_rate or rng.random() < 0.6
                ctx.set(dut.beats.ready, ready)
                if ready and ctx.get(dut.beats.valid):
                    got.append(ctx.get(dut.beats.payload.data))
                    flushes.append(ctx.get(dut.beats.payload.flush))
                await ctx.tick()
                cycles += 1
            ctx.set(dut.beats.ready, 0)
            assert got == want, f"run {number}: {config} {run}"
            assert flushes == [0] * (len(want) - 1) + [1]
            if full_rate:                           # a beat a cycle after the pipeline fills
                assert cycles <= len(want) + LAUNCH + stages(p) + 2, (cycles, len(want))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert FIFO_DEPTH > stages(p)
