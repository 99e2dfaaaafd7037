"""The link (command processor) against the protocol, with a fake engine.

The host side sends ``protocol.encode_request`` frames straight into ``Link.rx``
and compares every reply byte for byte with ``protocol.encode_reply``. The fake
engine records what the link does to it (beats, starts with the configuration
they carry, model and level ports, flag clears) and holds a model memory with the
one-cycle read latency of the real one.
"""

import random
import struct
from dataclasses import replace

import pytest
from amaranth.hdl import Array, Cat, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator
from streams import stream_put
from ziphalp.hw.control import control_signature
from ziphalp.hw.engine import SGDEngine
from ziphalp.hw.link import Link
from ziphalp.hw.params import (
    L2_SHIFT_MAX,
    LEVEL,
    MODEL_COPIES,
    OFFSET_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
)
from ziphalp.hw.protocol import (
    CONFIGURE,
    MODEL_HEADER_FORMAT,
    SYNC,
    Command,
    Configure,
    Counters,
    Identity,
    Status,
    StatusFlags,
    encode_reply,
    encode_request,
)

TIMEOUT = 64
INT32 = (-1 << 31, 1 << 31)
PARAMS = {
    # 4-byte beats, 4 lanes, 32-bit model, a READ of all features does not fit a frame
    "w32": EngineParams(beat_bits=32, lanes=4, max_k=4, max_features=20, max_batch=4,
                        frame_bytes=64),
    # 3-byte beats (the LOAD header and levels end mid-beat), 2 lanes, 20-bit model (LOAD
    # saturates), the largest level table fills the frame buffer; the register stages
    # (LOAD waits a cycle for the word after the frame buffer when a weight or a
    # level spans two beats)
    "w24": EngineParams(beat_bits=24, lanes=2, max_k=5, max_features=9, max_batch=3,
                        model_bits=20, model_frac=12, frame_bytes=66, deep_pipeline=True),
    # 8-byte beats, 8 lanes but 7 values a beat at k = max_k with double sampling, 32-bit
    # model, HALP, the ULX3S's register stages (the engine's link requests, LOAD's
    # bytes from a register after the frame buffer)
    "w64": EngineParams(beat_bits=64, lanes=8, max_k=7, max_features=17, max_batch=5,
                        model_bits=32, model_frac=28, frame_bytes=264, halp_samples=32,
                        deep_pipeline=True),
}
LEVEL_RANGE = (LEVEL.min_int, LEVEL.max_int + 1)




def make_config(features, batch, shift, **fields) -> Configure:
    """The engine configuration as CONFIGURE carries it and the link drives it (the
    fields of ``protocol.CONFIGURE`` are the engine's control members), ``k`` 1
    unless given: every build takes it."""
    return Configure(features, batch, shift, **{"k": 1} | fields)

def with_mode(config: Configure, mode: int) -> bytes:
    """``config``'s payload with the mode byte replaced (to set reserved bits)."""
    payload = bytearray(config.pack())
    payload[CONFIGURE.byte_offset("mode")] = mode
    return bytes(payload)


def config_fields():
    return [field.name for field in CONFIGURE.fields]


def clamp(value, bits):
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, value))


class FakeEngine(wiring.Component):
    """Plays the engine side of ``control_signature``.

    Busy (``idle`` low) for a few cycles after ``start`` and after every beat;
    ``beats.ready`` follows a fixed pseudo-random pattern. A sample is a label
    beat and ``beats_for(features, k, double)`` feature beats; ``sample_done``
    and ``update_done`` strobe as the real engine's would. The model is a memory
    indexed by feature (``word * lanes + lane``). ``hold`` (set by a testbench)
    keeps it busy. ``misuse`` becomes 1 if the model or level port is used while
    busy.
    """

    def __init__(self, params, model_init):
        self.params = params
        self.model = Memory(shape=signed(params.model_bits),
                            depth=params.bank_depth * params.lanes, init=model_init)
        self.hold = Signal()
        self.misuse = Signal()
        super().__init__(control_signature(params).flip())

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.model = self.model
        write, read = self.model.write_port(), self.model.read_port()
        address = self.model_word * p.lanes + self.model_lane
        m.d.comb += [
            write.addr.eq(address), write.data.eq(self.model_wdata), write.en.eq(self.model_write),
            read.addr.eq(address), self.model_rdata.eq(read.data),
        ]

        busy = Signal(range(8))
        lfsr = Signal(8, init=0x5B)
        m.d.sync += lfsr.eq(Cat(lfsr[1:], lfsr[0] ^ lfsr[2] ^ lfsr[3] ^ lfsr[4]))
        m.d.comb += [self.idle.eq((busy == 0) & ~self.hold),
                     self.beats.ready.eq(lfsr[0] | lfsr[1])]

        # K, values per feature beat, looked up by (k, double)
        per_beat = Array(p.values_per_beat(k, double) if 1 <= k <= p.max_k else 1
                         for k in range(1 << len(self.k)) for double in (0, 1))
        K = Signal(range(p.lanes + 1))
        m.d.comb += K.eq(per_beat[Cat(self.double, self.k)])

        in_features, seen, in_batch, flushing = Signal(), Signal(17), Signal(16), Signal()
        flush = self.beats.payload.flush
        m.d.sync += [self.sample_done.eq(0), self.update_done.eq(0)]
        with m.If(busy != 0):
            m.d.sync += busy.eq(busy - 1)
        with m.If(self.beats.valid & self.beats.ready):
            m.d.sync += busy.eq(3)
            with m.If(~in_features):
                m.d.sync += [in_features.eq(1), seen.eq(0), flushing.eq(flush)]
            with m.Elif(seen + K >= self.features):
                m.d.sync += [self.sample_done.eq(1), in_features.eq(0), flushing.eq(0)]
                with m.If(flushing | flush | (in_batch + 1 == self.batch)):
                    m.d.sync += [self.update_done.eq(1), in_batch.eq(0)]
                with m.Else():
                    m.d.sync += in_batch.eq(in_batch + 1)
            with m.Else():
                m.d.sync += [seen.eq(seen + K), flushing.eq(flushing | flush)]
        with m.If(self.start):
            m.d.sync += [busy.eq(5), in_features.eq(0), in_batch.eq(0), flushing.eq(0)]
        with m.If(self.clear_flags):
            m.d.sync += [self.overflow.eq(0), self.clipped.eq(0)]
        with m.If((self.model_read | self.model_write | self.level_write) & ~self.idle):
            m.d.sync += self.misuse.eq(1)
        return m


class Bench:
    """A link, a fake engine, a host that sends requests, and what was observed."""

    def __init__(self, params, *, seed=0, model_init=None):
        self.params = params
        self.rng = random.Random(seed)
        depth = params.bank_depth * params.lanes
        if model_init is None:
            model_init = [self.rng.randrange(-1 << (params.model_bits - 1),
                                             1 << (params.model_bits - 1)) for _ in range(depth)]
        self.model_init = list(model_init)
        self.link = Link(params, TIMEOUT)
        self.engine = FakeEngine(params, model_init)
        self.reply = []             # reply bytes as they leave the link
        self.beats = []             # (data, flush) per handshake on engine.beats
        self.starts = []            # Config per start strobe
        self.writes = 0             # model_write strobes
        self.levels = []            # (level_index, level_data) per level_write strobe
        self.clears = 0             # clear_flags strobes
        self.events = dict(cycles=0, samples=0, beats=0, updates=0)
        self.frames = dict(ok=0, bad=0)

    def run(self, testbench):
        m = Module()
        m.submodules.link, m.submodules.engine = self.link, self.engine
        wiring.connect(m, self.link.engine, self.engine)
        sim = Simulator(m)
        sim.add_clock(1e-6)
        sim.add_testbench(self.collect_reply, background=True)
        sim.add_testbench(self.monitor, background=True)

        async def main(ctx):
            await testbench(ctx, self)
            assert not ctx.get(self.engine.misuse), "model port used while the engine was busy"
        sim.add_testbench(main)
        sim.run()

    async def collect_reply(self, ctx):
        tx = self.link.tx
        async for _, _, valid, ready, payload in ctx.tick().sample(tx.valid, tx.ready, tx.payload):
            if valid and ready:
                self.reply.append(payload)
            ctx.set(tx.ready, self.rng.random() < 0.7)

    async def monitor(self, ctx):
        link, eng = self.link, self.link.engine
        was_idle = False
        async for _, _, rx_ready, tx_valid, valid, ready, beat, idle, hold, start, write, \
                level_write, level_index, level_data, clear, sample_done, update_done, \
                *config in ctx.tick().sample(
                    link.rx.ready, link.tx.valid, eng.beats.valid, eng.beats.ready,
                    eng.beats.payload, eng.idle, self.engine.hold, eng.start, eng.model_write,
                    eng.level_write, eng.level_index, eng.level_data, eng.clear_flags,
                    eng.sample_done, eng.update_done,
                    *(getattr(eng, field) for field in config_fields())):
            if rx_ready:        # the link sees idle a cycle late
                assert was_idle and not tx_valid and not valid and not start and not write \
                    and not level_write, "rx.ready high while something is in flight"
            was_idle = idle
            if tx_valid and not hold:
                assert idle, "reply sent while the engine is busy"
            if valid and ready:
                self.beats.append((beat.data, beat.flush))
            if start:
                self.starts.append(Configure(**dict(zip(config_fields(), config, strict=True))))
            self.writes += write
            if level_write:
                self.levels.append((level_index, level_data))
            self.events["cycles"] += valid or not idle
            self.events["samples"] += sample_done
            self.events["beats"] += valid and ready
            self.events["updates"] += update_done
            if clear:
                self.clears += 1
                self.events = dict.fromkeys(self.events, 0)

    async def send(self, ctx, data, *, gaps=True, limit=5000):
        for byte in data:
            await stream_put(ctx, self.link.rx, byte, limit=limit)
            if gaps and self.rng.random() < 0.2:
                await ctx.tick().repeat(self.rng.randrange(1, 8))

    async def receive(self, ctx, *, closed=True, limit=5000):
        """Wait for one whole reply frame and return it.

        If ``closed`` (the request is complete), ``rx.ready`` must stay low meanwhile.
        """
        for _ in range(limit):
            if len(self.reply) >= 7 and len(self.reply) >= 9 + self.reply[5] + 256 * self.reply[6]:
                break
            _, _, ready = await ctx.tick().sample(self.link.rx.ready)
            assert not (closed and ready), "rx.ready high before the reply was sent"
        else:
            raise AssertionError(f"no whole reply in {limit} cycles: {bytes(self.reply).hex()}")
        size = 9 + self.reply[5] + 256 * self.reply[6]
        frame, self.reply[:] = bytes(self.reply[:size]), self.reply[size:]
        return frame

    async def request(self, ctx, cmd, payload=b"", *, status=Status.OK, reply=b"", frame=None,
                      seq=0):
        """Send a request; check that the reply is exactly ``(cmd, status, reply, seq)``."""
        await self.send(ctx, encode_request(cmd, payload, seq) if frame is None else frame)
        got = await self.receive(ctx)
        assert got == encode_reply(cmd, status, reply, seq), \
            f"request {cmd:#x} {payload.hex()}: got {got.hex()}"
        self.frames["ok" if status == Status.OK else "bad"] += 1
        return got[7:-2]

    async def idle(self, ctx, cycles=20):
        await ctx.tick().repeat(cycles)
        assert not self.reply, "unexpected reply bytes"

    def model(self, ctx):
        return [ctx.get(self.engine.model.data[i]) for i in range(len(self.model_init))]

    def config(self, ctx):
        """The configuration the link drives now."""
        values = {field: ctx.get(getattr(self.link.engine, field)) for field in config_fields()}
        return Configure(**values)

    async def status(self, ctx, flags=b""):
        """STATUS, checking every field against what the monitor saw."""
        expected_flags = StatusFlags(0)
        if ctx.get(self.engine.overflow):
            expected_flags |= StatusFlags.OVERFLOW
        if ctx.get(self.engine.clipped):
            expected_flags |= StatusFlags.CLIPPED
        if self.starts:
            expected_flags |= StatusFlags.CONFIGURED
        expected = Counters(expected_flags, frames_ok=self.frames["ok"] + 1,  # counts itself
                            frames_bad=self.frames["bad"], **self.events)
        clears = self.clears
        payload = await self.request(ctx, Command.STATUS, flags, reply=expected.pack())
        await ctx.tick().repeat(4)
        if flags and flags[0] & 1:
            assert self.clears == clears + 1, "clear_flags not pulsed once"
            self.frames = dict(ok=0, bad=0)
        else:
            assert self.clears == clears
        return Counters.unpack(payload)


def load(start, weights, reserved=0):
    return MODEL_HEADER_FORMAT.pack(start, reserved) + struct.pack(f"<{len(weights)}i", *weights)


def levels(values):
    return struct.pack(f"<{len(values)}h", *values)


def random_levels(rng, n):
    extremes = [LEVEL.min_int, LEVEL.max_int, -1, 0, 255, 256, -256, -257]
    return [rng.choice(extremes) if rng.random() < 0.3 else rng.randrange(*LEVEL_RANGE)
            for _ in range(n)]


def beats_of(p, payload):
    size = p.beat_bits // 8
    return [int.from_bytes(payload[i:i + size], "little") for i in range(0, len(payload), size)]


def identity(p):
    return Identity.of(p, update_gap=SGDEngine.update_gap(p))


@pytest.mark.parametrize("name", PARAMS)
def test_identify(name):
    p = PARAMS[name]
    bench = Bench(p)

    async def testbench(ctx, bench):
        expected = identity(p)
        payload = await bench.request(ctx, Command.IDENTIFY, reply=expected.pack())
        assert Identity.unpack(payload) == expected
        await bench.idle(ctx)
    bench.run(testbench)


@pytest.mark.parametrize("name", PARAMS)
def test_configure_and_stream(name):
    p = PARAMS[name]
    bench = Bench(p, seed=1)
    config = make_config(p.max_features - 1, 2, 9, k=p.max_k, double=1, loss=Loss.LOGISTIC,
                    l2_shift=5, cost_pos=100, cost_neg=3)
    bytes_per_beat = p.beat_bits // 8
    sample_bytes = bytes_per_beat * (1 + p.beats_for(config.features, config.k, config.double))

    async def testbench(ctx, bench):
        rng = bench.rng
        one_sample = rng.randbytes(sample_bytes)
        await bench.request(ctx, Command.STREAM, one_sample, status=Status.STATE)
        assert not bench.beats

        await bench.request(ctx, Command.CONFIGURE, config.pack())
        assert bench.starts == [config] and bench.config(ctx) == config

        streamed = rng.randbytes(sample_bytes * (p.frame_bytes // sample_bytes))
        await bench.request(ctx, Command.STREAM, streamed)
        assert bench.beats == [(beat, 0) for beat in beats_of(p, streamed)]

        flushed = rng.randbytes(p.frame_bytes)          # a full buffer, ending mid-sample
        await bench.request(ctx, Command.STREAM_FLUSH, flushed)
        beats = beats_of(p, flushed)
        assert bench.beats[-len(beats):] == [(beat, i == len(beats) - 1)
                                              for i, beat in enumerate(beats)]

        counters = await bench.status(ctx)
        total = (len(streamed) + len(flushed)) // bytes_per_beat
        assert counters.beats == total
        assert counters.samples == total // (sample_bytes // bytes_per_beat)
        assert counters.updates >= counters.samples // config.batch
        assert counters.cycles >= total
        assert bench.starts == [config] and bench.writes == 0 and not bench.levels
        assert bench.config(ctx) == config
        await bench.idle(ctx)
    bench.run(testbench)


@pytest.mark.parametrize("name", PARAMS)
def test_load_and_read_model(name):
    p = PARAMS[name]
    bench = Bench(p, seed=2)
    most = min(p.max_features, (p.frame_bytes - MODEL_HEADER_FORMAT.size) // 4)
    extremes = [INT32[0], INT32[1] - 1, -1, 0,
                clamp(1 << (p.model_bits - 1), 32), clamp(-1 << (p.model_bits - 1), 32)]

    async def testbench(ctx, bench):
        rng = bench.rng
        expected = list(bench.model_init)
        assert bench.model(ctx) == expected
        for start, count in [(0, 1), (1, p.lanes + 1), (p.max_features - 1, 1),
                             (p.max_features - most, most), (p.lanes, 3)]:
            weights = [rng.choice(extremes) if rng.random() < 0.3 else rng.randrange(*INT32)
                       for _ in range(count)]
            await bench.request(ctx, Command.LOAD_MODEL, load(start, weights))
            expected[start:start + count] = [clamp(w, p.model_bits) for w in weights]
            assert bench.model(ctx) == expected, f"after loading {count} weights at {start}"
        for start, count in [(0, p.max_features if p.max_features <= p.frame_bytes // 4 else 1),
                             (2, p.lanes), (p.max_features - most, most),
                             (p.max_features - 1, 1)]:
            weights = [clamp(w, 32) for w in expected[start:start + count]]
            reply = struct.pack(f"<{count}i", *weights)
            await bench.request(ctx, Command.READ_MODEL, MODEL_HEADER_FORMAT.pack(start, count),
                                reply=reply)
        assert not bench.beats and not bench.starts and not bench.levels
        await bench.idle(ctx)
    bench.run(testbench)


def bad_configurations(p):
    """CONFIGURE payloads with one field out of range (or a reserved mode bit set)."""
    good = make_config(1, 1, 0)
    cases = [
        replace(good, features=0), replace(good, features=p.max_features + 1),
        replace(good, features=0xFFFF),
        replace(good, batch=0), replace(good, batch=p.max_batch + 1),
        replace(good, batch=0xFFFF),
        replace(good, shift=SHIFT_MAX + 1), replace(good, shift=0xFF),
        replace(good, k=0), replace(good, k=p.max_k + 1), replace(good, k=0xFF),
        replace(good, l2_shift=L2_SHIFT_MAX + 1), replace(good, l2_shift=0xFF),
        replace(good, offset_bits=0), replace(good, offset_bits=1),
        replace(good, offset_bits=OFFSET_BITS + 1), replace(good, offset_bits=0xFF),
        replace(good, phase=3),
        replace(good, stale=MODEL_COPIES - 1), replace(good, stale=0xFF),
        # HALP takes the squared and the logistic loss only
        replace(good, phase=Phase.FULL, loss=Loss.HINGE),
        replace(good, phase=Phase.INNER, loss=Loss.SQUARED_HINGE),
    ]
    if not p.halp:     # no HALP, no delayed gradients
        cases += [replace(good, phase=Phase.FULL), replace(good, phase=Phase.INNER),
                  replace(good, stale=1)]
    payloads = [config.pack() for config in cases]
    for bit in range(6, 8):     # reserved mode bits, with any double/loss below them
        payloads.append(with_mode(good, 1 << bit | (bit % 8)))
    return payloads


def bad_levels(p):
    """LOAD_LEVELS payloads of a good length with one level outside the LEVEL range."""
    n = p.levels_max
    positions = (0, 1, n // 2, n - 1, n - 2)
    cases = []
    for i, bad in enumerate((LEVEL.max_int + 1, LEVEL.min_int - 1, 0x7FFF, -0x8000, 0x0300,
                             -0x0301, 0x4000, LEVEL.max_int + 1, LEVEL.min_int - 1)):
        values = [LEVEL.max_int if j % 2 else LEVEL.min_int for j in range(n)]
        values[positions[i % len(positions)]] = bad
        cases.append(levels(values))
    cases.append(levels([LEVEL.max_int + 1, LEVEL.min_int]))
    cases.append(levels([LEVEL.max_int, LEVEL.min_int - 1]))
    return cases


def bad_requests(p):
    """(cmd, payload, status) of requests that must be rejected once configured."""
    bytes_per_beat = p.beat_bits // 8
    head = MODEL_HEADER_FORMAT.pack
    good = make_config(1, 1, 0).pack()
    cases = [
        (Command.IDENTIFY, b"\0", Status.LENGTH),
        (Command.CONFIGURE, good[:-1], Status.LENGTH),
        (Command.CONFIGURE, good + b"\0", Status.LENGTH),
        (Command.CONFIGURE, good[:5], Status.LENGTH),       # the version 1 format
        (Command.CONFIGURE, make_config(0, 1, 0).pack()[:-1], Status.LENGTH),   # before ARGUMENT
        *((Command.CONFIGURE, payload, Status.ARGUMENT) for payload in bad_configurations(p)),
        (Command.LOAD_LEVELS, b"", Status.LENGTH),
        (Command.LOAD_LEVELS, levels([0]), Status.LENGTH),
        (Command.LOAD_LEVELS, levels([0])[:1], Status.LENGTH),
        (Command.LOAD_LEVELS, levels([0, 1])[:3], Status.LENGTH),
        (Command.LOAD_LEVELS, levels([0, 1]) + b"\0", Status.LENGTH),
        (Command.LOAD_LEVELS, levels([0] * p.levels_max)[:-1], Status.LENGTH),
        (Command.LOAD_LEVELS, levels([0x7FFF, 0, 1])[:5], Status.LENGTH),  # before ARGUMENT
        *((Command.LOAD_LEVELS, payload, Status.ARGUMENT) for payload in bad_levels(p)),
        (Command.LOAD_MODEL, load(0, []), Status.LENGTH),
        (Command.LOAD_MODEL, load(0, [1])[:-1], Status.LENGTH),
        (Command.LOAD_MODEL, load(0, [1]) + b"\0", Status.LENGTH),
        (Command.LOAD_MODEL, load(p.max_features - 1, [1, 2]), Status.ARGUMENT),
        (Command.LOAD_MODEL, load(p.max_features, [1]), Status.ARGUMENT),
        (Command.LOAD_MODEL, load(0xFFFF, [1]), Status.ARGUMENT),
        (Command.LOAD_MODEL, load(0, [1], reserved=1), Status.ARGUMENT),
        (Command.READ_MODEL, head(0, 0), Status.ARGUMENT),
        (Command.READ_MODEL, head(p.max_features - 1, 2), Status.ARGUMENT),
        (Command.READ_MODEL, head(0xFFFF, 1), Status.ARGUMENT),
        (Command.READ_MODEL, head(0, 1) + b"\0", Status.LENGTH),
        (Command.READ_MODEL, head(0, 1)[:3], Status.LENGTH),
        (Command.STREAM, b"", Status.LENGTH),
        (Command.STREAM, bytes(bytes_per_beat + 1), Status.LENGTH),
        (Command.STREAM_FLUSH, bytes(bytes_per_beat - 1), Status.LENGTH),
        (Command.STATUS, b"\x02", Status.ARGUMENT),
        (Command.STATUS, b"\x03", Status.ARGUMENT),        # rejected: must not clear
        (Command.STATUS, b"\0\0", Status.LENGTH),
        (Command.STATUS, b"\x01\0", Status.LENGTH),
        (0x00, b"", Status.COMMAND),
        (0x09, b"\x01\x02", Status.COMMAND),
        (0xFF, b"", Status.COMMAND),
    ]
    if p.max_features > p.frame_bytes // 4:     # the reply would not fit a frame
        cases.append((Command.READ_MODEL, head(0, p.frame_bytes // 4 + 1), Status.ARGUMENT))
    if 2 * (p.levels_max + 1) <= p.frame_bytes:     # more levels than the table holds
        cases.append((Command.LOAD_LEVELS, levels([0] * (p.levels_max + 1)), Status.LENGTH))
    return cases


def corrupted(cmd, payload, where):
    frame = bytearray(encode_request(cmd, payload))
    frame[where] ^= 0x10
    return bytes(frame)


@pytest.mark.parametrize("name", PARAMS)
def test_rejected_requests_change_nothing(name):
    p = PARAMS[name]
    bench = Bench(p, seed=3)
    bytes_per_beat = p.beat_bits // 8
    good_config = make_config(1, 1, 3, k=p.max_k, double=0, loss=Loss.HINGE, l2_shift=2,
                         cost_pos=7, cost_neg=200)

    async def testbench(ctx, bench):
        await bench.request(ctx, Command.STREAM, bytes(bytes_per_beat), status=Status.STATE)
        await bench.request(ctx, Command.STREAM_FLUSH, bytes(bytes_per_beat), status=Status.STATE)
        for cmd, payload in [(Command.CONFIGURE, good_config.pack()),
                             (Command.LOAD_MODEL, load(0, [5, 6])),
                             (Command.LOAD_LEVELS, levels([1, 2, 3]))]:
            await bench.request(ctx, cmd, status=Status.CRC,
                                frame=corrupted(cmd, payload, -1))       # in the CRC
            await bench.request(ctx, cmd, status=Status.CRC,
                                frame=corrupted(cmd, payload, 6))        # in the payload
        assert not bench.starts
        await bench.request(ctx, Command.CONFIGURE, good_config.pack())
        for cmd, payload, status in bad_requests(p):
            await bench.request(ctx, cmd, payload, status=status)
        await bench.request(ctx, Command.STREAM, status=Status.CRC,
                            frame=corrupted(Command.STREAM, bytes(bytes_per_beat), 6))
        assert bench.model(ctx) == bench.model_init
        assert not bench.beats and bench.writes == 0 and not bench.levels
        assert bench.starts == [good_config] and bench.config(ctx) == good_config
        counters = await bench.status(ctx)
        assert counters.frames_bad == len(bad_requests(p)) + 9
        await bench.idle(ctx)
    bench.run(testbench)


def test_framing_and_timeouts():
    p = PARAMS["w32"]
    bench = Bench(p, seed=4)

    async def testbench(ctx, bench):
        identify = encode_reply(Command.IDENTIFY, Status.OK, identity(p).pack())
        # garbage and broken sync words before a request whose sync follows an A5
        await bench.send(ctx, bytes([0x00, 0xA5, 0x00, 0x5A, 0x5A, 0xA5, 0xA5]))
        await bench.idle(ctx, 2 * TIMEOUT)       # no sync word yet: nothing times out
        await bench.send(ctx, encode_request(Command.IDENTIFY))
        assert await bench.receive(ctx) == identify
        bench.frames["ok"] += 1

        # a length beyond the frame buffer is answered at once, then the rest is hunted through
        for length in (p.frame_bytes + 1, 0xFFFF):
            await bench.send(ctx, SYNC + struct.pack("<BBH", Command.LOAD_MODEL, 0, length))
            assert await bench.receive(ctx) == encode_reply(Command.LOAD_MODEL, Status.LENGTH)
            bench.frames["bad"] += 1
            await bench.send(ctx, bytes(p.frame_bytes + 3))
        await bench.idle(ctx, 2 * TIMEOUT)

        # a request stalling mid-frame is dropped with TIMEOUT (cmd echoed if it arrived)
        stalls = [
            (SYNC, 0),
            (SYNC + bytes([Command.CONFIGURE]), Command.CONFIGURE),
            (encode_request(Command.CONFIGURE, make_config(1, 1, 0).pack())[:8], Command.CONFIGURE),
            (encode_request(Command.LOAD_LEVELS, levels([1, 2]))[:-3], Command.LOAD_LEVELS),
            (encode_request(Command.LOAD_MODEL, load(0, [7]))[:-1], Command.LOAD_MODEL),
        ]
        for partial, echo in stalls:
            await bench.send(ctx, partial, gaps=False)
            waited = 0          # until the first reply byte: the timeout, then a few cycles
            while not bench.reply and waited < 2 * TIMEOUT:
                await ctx.tick()
                waited += 1
            assert TIMEOUT <= waited <= TIMEOUT + 20, f"TIMEOUT reply after {waited} cycles"
            assert await bench.receive(ctx, closed=False) == encode_reply(echo, Status.TIMEOUT)
            bench.frames["bad"] += 1
            await bench.send(ctx, encode_request(Command.IDENTIFY))
            assert await bench.receive(ctx) == identify
            bench.frames["ok"] += 1

        assert bench.model(ctx) == bench.model_init and bench.writes == 0
        assert not bench.starts and not bench.beats and not bench.levels
        await bench.status(ctx)
    bench.run(testbench)


def test_status_flags_and_clear():
    p = PARAMS["w32"]
    bench = Bench(p, seed=5)

    async def testbench(ctx, bench):
        counters = await bench.status(ctx)
        assert counters.flags == 0 and counters.frames_ok == 1 and counters.cycles == 0
        await bench.request(ctx, Command.CONFIGURE, make_config(3, 2, 0).pack())
        await bench.request(ctx, Command.STREAM, bench.rng.randbytes(p.frame_bytes))
        await bench.request(ctx, Command.IDENTIFY, b"\0", status=Status.LENGTH)
        ctx.set(bench.engine.overflow, 1)
        counters = await bench.status(ctx, b"\x00")
        assert counters.flags == StatusFlags.OVERFLOW | StatusFlags.CONFIGURED
        ctx.set(bench.engine.clipped, 1)
        counters = await bench.status(ctx, b"\x01")       # read, then clear
        assert counters.flags == StatusFlags.OVERFLOW | StatusFlags.CLIPPED | StatusFlags.CONFIGURED
        assert counters.beats == p.frame_bytes // 4 and counters.frames_bad == 1
        assert not ctx.get(bench.engine.overflow) and not ctx.get(bench.engine.clipped)
        counters = await bench.status(ctx)
        assert counters == Counters(StatusFlags.CONFIGURED, 0, 0, 0, 0, 1, 0)
        await bench.idle(ctx)
    bench.run(testbench)


def test_busy_engine_holds_the_link():
    p = PARAMS["w32"]
    bench = Bench(p, seed=6)

    async def testbench(ctx, bench):
        hold, rx = bench.engine.hold, bench.link.rx
        # while the engine is busy the link takes no request byte (it sees idle a cycle
        # late: the engine only gets busy on what the link gives it)
        await ctx.tick().repeat(5)
        assert ctx.get(rx.ready)
        ctx.set(hold, 1)
        await ctx.tick()
        ctx.set(rx.valid, 1)
        ctx.set(rx.payload, SYNC[0])
        for _ in range(20):
            _, _, ready = await ctx.tick().sample(rx.ready)
            assert not ready
        ctx.set(rx.valid, 0)
        ctx.set(hold, 0)
        await bench.request(ctx, Command.CONFIGURE, make_config(2, 1, 0).pack())
        # the engine going busy during a command delays the model and level ports and
        # the reply
        weights = [10, -20, 30]
        table = [-256, 0, 256]
        for cmd, payload, reply in [
                (Command.LOAD_MODEL, load(1, weights), b""),
                (Command.READ_MODEL, MODEL_HEADER_FORMAT.pack(1, 3), struct.pack("<3i", *weights)),
                (Command.LOAD_LEVELS, levels(table), b""),
                (Command.STREAM, bench.rng.randbytes(16), b"")]:
            await bench.send(ctx, encode_request(cmd, payload))
            ctx.set(hold, 1)
            await ctx.tick().repeat(60)
            if cmd != Command.READ_MODEL:       # READ sends its header before reading
                assert not bench.reply
            assert not bench.levels
            ctx.set(hold, 0)
            assert await bench.receive(ctx) == encode_reply(cmd, Status.OK, reply)
            if cmd == Command.LOAD_LEVELS:
                assert bench.levels == list(enumerate(table))
                bench.levels.clear()
        assert len(bench.beats) == 4
    bench.run(testbench)


@pytest.mark.parametrize("name", PARAMS)
def test_configure_arguments(name):
    """Every field of CONFIGURE reaches the engine; one field out of range is ARGUMENT
    and leaves the configuration (and the batch position) alone."""
    p = PARAMS[name]
    bench = Bench(p, seed=7)
    accepted = [
        make_config(1, 1, 0, k=1, double=0, loss=Loss.SQUARED, l2_shift=0, cost_pos=0, cost_neg=0),
        make_config(p.max_features, p.max_batch, SHIFT_MAX, k=p.max_k, double=1,
               loss=Loss.SQUARED_HINGE, l2_shift=L2_SHIFT_MAX, cost_pos=255, cost_neg=255),
        *(make_config(2, 1, 4, k=1 + i % p.max_k, double=i % 2, loss=loss, l2_shift=i,
                 cost_pos=64 + i, cost_neg=64 - i, stochastic=i % 2, offset_bits=2 + 4 * i,
                 scale_log=-32768 + 9000 * i, seed=0xFFFFFFFF - 12345 * i)
          for i, loss in enumerate(Loss)),
        *([make_config(3, 2, 7, k=2, double=0, loss=Loss.LOGISTIC, phase=Phase.FULL,
                  offset_bits=OFFSET_BITS, scale_log=32767, seed=1),
           make_config(3, 2, 7, k=2, double=0, loss=Loss.SQUARED, phase=Phase.INNER,
                  stochastic=1, offset_bits=2, scale_log=-1, seed=0)] if p.halp else []),
    ]

    async def testbench(ctx, bench):
        for config in accepted:
            await bench.request(ctx, Command.CONFIGURE, config.pack())
            assert bench.starts[-1] == config and bench.config(ctx) == config
            for payload in bad_configurations(p):
                await bench.request(ctx, Command.CONFIGURE, payload, status=Status.ARGUMENT)
            assert bench.starts[-1] == config and bench.config(ctx) == config
        assert bench.starts == accepted
        assert not bench.beats and bench.writes == 0 and not bench.levels
        await bench.idle(ctx)
    bench.run(testbench)


def test_configure_without_options():
    """A build without class costs or L2 decay takes only costs of 1.0 and no decay."""
    p = EngineParams(beat_bits=16, lanes=2, max_k=3, max_features=8, max_batch=2,
                     frame_bytes=64, class_costs=False, l2_decay=False)
    bench = Bench(p, seed=9)
    good = make_config(3, 2, 5, k=2, double=1, loss=Loss.HINGE, l2_shift=0, cost_pos=64,
                  cost_neg=64)
    bad = [make_config(3, 2, 5, k=2, double=1, loss=Loss.HINGE, l2_shift=1, cost_pos=64,
                  cost_neg=64),
           make_config(3, 2, 5, k=2, double=1, loss=Loss.HINGE, l2_shift=0, cost_pos=65,
                  cost_neg=64),
           make_config(3, 2, 5, k=2, double=1, loss=Loss.HINGE, l2_shift=0, cost_pos=64,
                  cost_neg=0)]

    async def testbench(ctx, bench):
        await bench.request(ctx, Command.CONFIGURE, good.pack())
        for config in bad:
            await bench.request(ctx, Command.CONFIGURE, config.pack(), status=Status.ARGUMENT)
        assert bench.starts == [good] and bench.config(ctx) == good
        await bench.idle(ctx)
    bench.run(testbench)


def test_no_model_load_in_the_inner_loop():
    """LOAD_MODEL is STATE while HALP's inner loop is configured (and changes nothing),
    and accepted again once another phase is."""
    p = PARAMS["w64"]
    bench = Bench(p, seed=10)
    inner = make_config(3, 1, 5, k=4, double=0, phase=Phase.INNER, stale=p.max_stale)
    sgd = make_config(3, 1, 5, k=4)

    async def testbench(ctx, bench):
        before = bench.model(ctx)
        await bench.request(ctx, Command.CONFIGURE, inner.pack())
        await bench.request(ctx, Command.LOAD_MODEL, load(0, [7, 8]), status=Status.STATE)
        assert bench.model(ctx) == before
        await bench.request(ctx, Command.CONFIGURE, sgd.pack())
        await bench.request(ctx, Command.LOAD_MODEL, load(0, [7, 8]))
        assert bench.model(ctx)[:2] == [7, 8]
        assert bench.starts == [inner, sgd]
        await bench.idle(ctx)
    bench.run(testbench)


@pytest.mark.parametrize("name", PARAMS)
def test_load_levels(name):
    """LOAD_LEVELS writes level m with index m, in order; a rejected table writes nothing."""
    p = PARAMS[name]
    bench = Bench(p, seed=8)

    async def testbench(ctx, bench):
        rng = bench.rng
        tables = [
            [LEVEL.min_int, LEVEL.max_int],
            random_levels(rng, p.levels_max),
            [(i - 8) * 63 for i in range(min(17, p.levels_max))],
            random_levels(rng, rng.randrange(3, p.levels_max)),
            [LEVEL.max_int - i for i in range(p.levels_max)],
        ]
        for table in tables:
            await bench.request(ctx, Command.LOAD_LEVELS, levels(table))
            assert bench.levels == list(enumerate(table))
            bench.levels.clear()
            # a rejected table, then a good one: the range check starts afresh
            bad = rng.choice(bad_levels(p))
            await bench.request(ctx, Command.LOAD_LEVELS, bad, status=Status.ARGUMENT)
            assert not bench.levels
        # other commands may carry any bytes where LOAD_LEVELS keeps its high bytes
        await bench.request(ctx, Command.LOAD_MODEL, load(0, [0x7FFF7FFF, -0x7F000000]))
        await bench.request(ctx, Command.CONFIGURE, make_config(1, 1, 0).pack())
        assert not bench.levels and not bench.beats and len(bench.starts) == 1
        await bench.idle(ctx)
    bench.run(testbench)


@pytest.mark.parametrize("name", PARAMS)
def test_retried_requests_are_not_executed_twice(name):
    """A request with the cmd and nonzero seq of the last one accepted: no-payload
    commands answered OK and not executed again; READ_MODEL and STATUS executed
    again; seq 0 always executed; a request refused in between (bad CRC) does not
    count as the last one; another seq or cmd is a new request."""
    p = PARAMS[name]
    bench = Bench(p, seed=11)
    beat = bytes(p.beat_bits // 8)
    sample = beat * (1 + 1)                 # a label beat and one feature beat (d = 1)

    async def testbench(ctx, bench):
        await bench.request(ctx, Command.CONFIGURE, make_config(1, 1, 0).pack(), seq=1)
        await bench.request(ctx, Command.CONFIGURE, make_config(1, 1, 0).pack(), seq=1)
        assert len(bench.starts) == 1                       # the retry did not start again
        await bench.request(ctx, Command.STREAM, sample, seq=2)
        await bench.request(ctx, Command.STREAM, sample, seq=2)
        assert len(bench.beats) == 2
        await bench.request(ctx, Command.STREAM, status=Status.CRC,      # refused
                            frame=corrupted(Command.STREAM, sample, -1))
        await bench.request(ctx, Command.STREAM, sample, seq=2)             # still a retry
        assert len(bench.beats) == 2
        await bench.request(ctx, Command.STREAM, sample, seq=3)             # a new one
        assert len(bench.beats) == 4
        await bench.request(ctx, Command.STREAM, sample, seq=0)
        await bench.request(ctx, Command.STREAM, sample, seq=0)             # unnumbered
        assert len(bench.beats) == 8
        await bench.request(ctx, Command.LOAD_MODEL, load(0, [9]), seq=4)
        writes = bench.writes
        await bench.request(ctx, Command.LOAD_MODEL, load(0, [9]), seq=4)
        assert bench.writes == writes
        await bench.request(ctx, Command.LOAD_LEVELS, levels([1, 2]), seq=4)  # another cmd
        assert len(bench.levels) == 2
        words = struct.pack("<i", 9)
        for _ in range(2):                                   # READ_MODEL answers again
            await bench.request(ctx, Command.READ_MODEL, MODEL_HEADER_FORMAT.pack(0, 1),
                                reply=words, seq=5)
        counters = await bench.status(ctx)
        assert counters.frames_bad == 1
        await bench.idle(ctx)
    bench.run(testbench)
