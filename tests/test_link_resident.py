"""The link's data-store commands (LOAD_DATA, RUN, REPLAY) against the protocol and
the golden model, with the fake engine of ``test_link``.

The beats a RUN or a REPLAY feeds the engine must be exactly those of
:meth:`ziphalp.sim.golden.GoldenEngine.run` (``replay``) for the same loads and
configuration; every rejected request is answered with its status and changes
nothing a later run could see.
"""

import numpy as np
import pytest
from test_link import PARAMS, Bench, beats_of, make_config
from ziphalp.hw.params import EngineParams, Phase
from ziphalp.hw.protocol import (
    DATA_HEADER,
    REPLAY,
    RUN,
    Command,
    Counters,
    Region,
    Replay,
    Run,
    Status,
    encode_request,
)
from ziphalp.sim.golden import GoldenEngine

RESIDENT = EngineParams(beat_bits=64, lanes=8, max_k=4, max_features=20, max_batch=4,
                        frame_bytes=264, halp_samples=8, resident_rows=24,
                        resident_samples=12)


#: A replay store of 40 two-byte beats beside a two-lane engine (the iCEBreaker's shape).
REPLAYED = EngineParams(beat_bits=16, lanes=2, max_k=4, max_features=20, max_batch=4,
                        frame_bytes=64, class_costs=False, l2_decay=False, replay_beats=40)


def header(region, start):
    return DATA_HEADER.format.pack(region, start)


def image(p, rng):
    codes = rng.integers(0, 256, p.resident_rows * p.lanes).astype(np.uint8).tobytes()
    labels = rng.integers(-32768, 32768, Region.LABELS.beats(p) * p.beat_bits // 16)
    t = rng.choice([0, 65536, *rng.integers(0, 65537, 254)], 256)
    entries = rng.integers(0, 256, 256) | t << 8
    return {Region.CODES: codes, Region.LABELS: labels.astype("<i2").tobytes(),
            Region.SAMPLER: entries.astype("<u4").tobytes()}


def frames(p, region, payload, beats_per_frame):
    width = p.beat_bits // 8
    step = beats_per_frame * width
    return [header(region, start // width) + payload[start:start + step]
            for start in range(0, len(payload), step)]


def test_load_and_run_feed_the_golden_beats():
    p = RESIDENT
    bench = Bench(p, seed=5)
    rng = np.random.default_rng(5)
    data = image(p, rng)
    golden = GoldenEngine(p)
    width = p.beat_bits // 8
    config = make_config(13, 2, 5, k=3, double=1)
    run = Run(count=9, first=4, stride=3, samples=p.resident_rows // 2, seed=77)

    async def testbench(ctx, bench):
        await bench.request(ctx, Command.RUN, run.pack(), status=Status.STATE)  # no CONFIGURE
        await bench.request(ctx, Command.CONFIGURE, config.pack())
        golden.configure(**vars(config))
        await bench.request(ctx, Command.RUN, run.pack(), status=Status.STATE)  # nothing loaded
        for region, payload in data.items():
            parts = frames(p, region, payload, 7)
            for i, part in enumerate(parts):
                if i == 1:    # a gap past the loaded length is refused
                    await bench.request(ctx, Command.LOAD_DATA, parts[2], status=Status.ARGUMENT)
                await bench.request(ctx, Command.LOAD_DATA, part)
            golden.load_data(region, 0, payload)
            if region != Region.SAMPLER:
                await bench.request(ctx, Command.RUN, run.pack(), status=Status.STATE)
        past = header(Region.LABELS, Region.LABELS.beats(p)) + bytes(width)
        for payload, status in [
                (past, Status.ARGUMENT),                             # past the region
                (header(3, 0) + bytes(width), Status.ARGUMENT),      # no such region
                (header(Region.CODES, 0), Status.LENGTH),            # no beats
                (header(Region.CODES, 0) + bytes(3), Status.LENGTH)]:    # not whole beats
            await bench.request(ctx, Command.LOAD_DATA, payload, status=status)
        for bad in (dict(first=run.samples), dict(stride=run.samples), dict(count=0),
                    dict(samples=p.resident_samples + 1)):
            wrong = Run(**{**vars(run), **bad})
            await bench.request(ctx, Command.RUN, RUN.pack(wrong), status=Status.ARGUMENT)
        assert not bench.beats
        await bench.request(ctx, Command.RUN, run.pack())
        expected = beats_of(p, golden.run(**vars(run)))
        assert bench.beats == [(beat, i == len(expected) - 1) for i, beat in enumerate(expected)]
        # the bias made on chip: 17 features, 16 stored (2 rows a sample, not 3)
        wide = make_config(17, 2, 5, k=2, double=1)
        await bench.request(ctx, Command.CONFIGURE, wide.pack())
        golden.configure(**vars(wide))
        with_bias = Run(count=7, first=1, stride=5, samples=p.resident_rows // 2, seed=9,
                        bias=1)
        await bench.request(ctx, Command.RUN, Run(**{**vars(with_bias), "bias": 0}).pack(),
                            status=Status.STATE)               # 3 rows a sample: too many
        before = len(bench.beats)
        await bench.request(ctx, Command.RUN, with_bias.pack())
        expected = beats_of(p, golden.run(**vars(with_bias)))
        assert bench.beats[before:] == [(beat, i == len(expected) - 1)
                                        for i, beat in enumerate(expected)]
        # a reload from beat 0 shortens the loaded length: a bigger run is refused
        await bench.request(ctx, Command.LOAD_DATA, header(Region.CODES, 0) + bytes(width))
        await bench.request(ctx, Command.RUN, run.pack(), status=Status.STATE)
        # HALP phases: the index rides in the label beats, at most halp_samples samples
        halp = make_config(13, 1, 5, k=3, double=0, phase=Phase.FULL)
        await bench.request(ctx, Command.CONFIGURE, halp.pack())
        golden.configure(**vars(halp))
        await bench.request(ctx, Command.LOAD_DATA, header(Region.CODES, 0) + data[Region.CODES])
        golden.load_data(Region.CODES, 0, data[Region.CODES])
        too_many = Run(count=3, first=0, stride=1, samples=p.halp_samples + 1, seed=0)
        await bench.request(ctx, Command.RUN, too_many.pack(), status=Status.ARGUMENT)
        before = len(bench.beats)
        full = Run(count=p.halp_samples, first=0, stride=1, samples=p.halp_samples, seed=3)
        await bench.request(ctx, Command.RUN, full.pack())
        expected = beats_of(p, golden.run(**vars(full)))
        assert bench.beats[before:] == [(beat, i == len(expected) - 1)
                                        for i, beat in enumerate(expected)]
        # the cycles count the store's pipeline too (the fake engine's monitor cannot)
        await bench.send(ctx, encode_request(Command.STATUS))
        counters = Counters.unpack((await bench.receive(ctx))[7:-2])
        assert counters.samples == run.count + with_bias.count + full.count
        assert counters.beats == len(bench.beats) <= counters.cycles
        await bench.idle(ctx)
    bench.run(testbench)


@pytest.mark.parametrize("name", ["w32", "w64"])
def test_builds_without_resident_data_do_not_know_the_commands(name):
    p = PARAMS[name]
    bench = Bench(p, seed=6)

    async def testbench(ctx, bench):
        width = p.beat_bits // 8
        await bench.request(ctx, Command.LOAD_DATA, header(Region.CODES, 0) + bytes(width),
                            status=Status.COMMAND)
        await bench.request(ctx, Command.RUN, bytes(RUN.size), status=Status.COMMAND)
        await bench.request(ctx, Command.REPLAY, Replay(0, 1).pack(), status=Status.COMMAND)
        await bench.idle(ctx)
    bench.run(testbench)


def test_load_and_replay_feed_the_golden_beats():
    p = REPLAYED
    bench = Bench(p, seed=8)
    rng = np.random.default_rng(8)
    golden = GoldenEngine(p)
    width = p.beat_bits // 8
    stored = rng.integers(0, 256, 33 * width).astype(np.uint8).tobytes()   # 33 beats
    config = make_config(7, 2, 5, k=3, double=1)

    async def testbench(ctx, bench):
        await bench.request(ctx, Command.REPLAY, Replay(0, 4).pack(), status=Status.STATE)
        await bench.request(ctx, Command.CONFIGURE, config.pack())
        golden.configure(**vars(config))
        await bench.request(ctx, Command.REPLAY, Replay(0, 4).pack(),
                            status=Status.STATE)                 # nothing loaded
        parts = frames(p, Region.BEATS, stored, 10)
        for i, part in enumerate(parts):
            if i == 1:        # a gap past the loaded length is refused
                await bench.request(ctx, Command.LOAD_DATA, parts[2], status=Status.ARGUMENT)
            await bench.request(ctx, Command.LOAD_DATA, part)
        golden.load_data(Region.BEATS, 0, stored)
        for payload, status in [
                (header(Region.BEATS, p.replay_beats - 1) + bytes(2 * width),
                 Status.ARGUMENT),                                  # past the region
                (header(Region.CODES, 0) + bytes(width), Status.ARGUMENT),   # not in this build
                (header(Region.BEATS, 0) + bytes(1), Status.LENGTH)]:     # not whole beats
            await bench.request(ctx, Command.LOAD_DATA, payload, status=status)
        await bench.request(ctx, Command.REPLAY, Replay(33, 1).pack(), status=Status.STATE)
        await bench.request(ctx, Command.REPLAY, REPLAY.pack(Replay(0, 0)),
                            status=Status.ARGUMENT)
        await bench.request(ctx, Command.RUN, bytes(RUN.size), status=Status.COMMAND)
        assert not bench.beats
        fed = 0
        for replay in (Replay(0, 33), Replay(25, 50), Replay(32, 1)):    # whole, wrapped, last
            await bench.request(ctx, Command.REPLAY, replay.pack())
            expected = beats_of(p, golden.replay(**vars(replay)))
            assert bench.beats[fed:] == [(beat, i == len(expected) - 1)
                                         for i, beat in enumerate(expected)]
            fed = len(bench.beats)
        # a reload from beat 0 shortens the loaded length
        await bench.request(ctx, Command.LOAD_DATA, header(Region.BEATS, 0) + stored[:4 * width])
        await bench.request(ctx, Command.REPLAY, Replay(4, 1).pack(), status=Status.STATE)
        golden.load_data(Region.BEATS, 0, stored[:4 * width])
        await bench.request(ctx, Command.REPLAY, Replay(3, 6).pack())
        expected = beats_of(p, golden.replay(3, 6))
        assert bench.beats[fed:] == [(beat, i == len(expected) - 1)
                                     for i, beat in enumerate(expected)]
        await bench.send(ctx, encode_request(Command.STATUS))
        counters = Counters.unpack((await bench.receive(ctx))[7:-2])
        assert counters.beats == len(bench.beats) == 33 + 50 + 1 + 6 <= counters.cycles
        assert counters.samples == golden.samples
        await bench.idle(ctx)
    bench.run(testbench)
