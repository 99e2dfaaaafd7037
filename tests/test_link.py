"""The link (command processor) against the protocol, with a fake engine.

The host side sends ``protocol.encode_request`` frames straight into ``Link.rx``
and compares every reply byte for byte with ``protocol.encode_reply``. The fake
engine records what the link does to it (beats, starts, model port, flag clears)
and holds a model memory with the one-cycle read latency of the real one.
"""

import random
import struct

import pytest
from amaranth.hdl import Cat, Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator
from streams import stream_put
from ziphalp.hw.control import control_signature
from ziphalp.hw.link import Link
from ziphalp.hw.params import CODE, SHIFT_MAX, EngineParams
from ziphalp.hw.protocol import (
    CONFIGURE_FORMAT,
    MODEL_HEADER_FORMAT,
    STATUS_FORMAT,
    SYNC,
    VERSION,
    Command,
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
    "w32": EngineParams(beat_bits=32, max_features=20, max_batch=4, frame_bytes=64),
    # 3-byte beats (the LOAD header ends mid-beat), 2 lanes, 20-bit model (LOAD saturates)
    "w24": EngineParams(beat_bits=24, lanes=2, max_features=9, max_batch=3,
                        model_bits=20, model_frac=12, frame_bytes=66),
    # 8-byte beats, 5 lanes, 32-bit model
    "w64": EngineParams(beat_bits=64, lanes=5, max_features=17, max_batch=5,
                        model_bits=32, model_frac=28, frame_bytes=128),
}


def clamp(value, bits):
    return max(-(1 << (bits - 1)), min((1 << (bits - 1)) - 1, value))


class FakeEngine(wiring.Component):
    """Plays the engine side of ``control_signature``.

    Busy (``idle`` low) for a few cycles after ``start`` and after every beat;
    ``beats.ready`` follows a fixed pseudo-random pattern. A sample is a label
    beat and ``ceil(features / lanes)`` feature beats; ``sample_done`` and
    ``update_done`` strobe as the real engine's would. The model is a memory
    indexed by feature (``word * lanes + lane``). ``hold`` (set by a testbench)
    keeps it busy. ``misuse`` becomes 1 if the model port is used while busy.
    """

    def __init__(self, params, model_init):
        self.params = params
        self.model = Memory(shape=signed(params.model_bits), depth=params.words * params.lanes,
                            init=model_init)
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

        in_features, seen, in_batch, flushing = Signal(), Signal(17), Signal(16), Signal()
        flush = self.beats.payload.flush
        m.d.sync += [self.sample_done.eq(0), self.update_done.eq(0)]
        with m.If(busy != 0):
            m.d.sync += busy.eq(busy - 1)
        with m.If(self.beats.valid & self.beats.ready):
            m.d.sync += busy.eq(3)
            with m.If(~in_features):
                m.d.sync += [in_features.eq(1), seen.eq(0), flushing.eq(flush)]
            with m.Elif(seen + p.lanes >= self.features):
                m.d.sync += [self.sample_done.eq(1), in_features.eq(0), flushing.eq(0)]
                with m.If(flushing | flush | (in_batch + 1 == self.batch)):
                    m.d.sync += [self.update_done.eq(1), in_batch.eq(0)]
                with m.Else():
                    m.d.sync += in_batch.eq(in_batch + 1)
            with m.Else():
                m.d.sync += [seen.eq(seen + p.lanes), flushing.eq(flushing | flush)]
        with m.If(self.start):
            m.d.sync += [busy.eq(5), in_features.eq(0), in_batch.eq(0), flushing.eq(0)]
        with m.If(self.clear_flags):
            m.d.sync += [self.overflow.eq(0), self.clipped.eq(0)]
        with m.If((self.model_read | self.model_write) & ~self.idle):
            m.d.sync += self.misuse.eq(1)
        return m


class Bench:
    """A link, a fake engine, a host that sends requests, and what was observed."""

    def __init__(self, params, *, seed=0, model_init=None):
        self.params = params
        self.rng = random.Random(seed)
        depth = params.words * params.lanes
        if model_init is None:
            model_init = [self.rng.randrange(-1 << (params.model_bits - 1),
                                             1 << (params.model_bits - 1)) for _ in range(depth)]
        self.model_init = list(model_init)
        self.link = Link(params, TIMEOUT)
        self.engine = FakeEngine(params, model_init)
        self.reply = []             # reply bytes as they leave the link
        self.beats = []             # (data, flush) per handshake on engine.beats
        self.starts = []            # (features, batch, shift) per start strobe
        self.writes = 0             # model_write strobes
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
        async for _, _, rx_ready, tx_valid, valid, ready, beat, idle, hold, start, features, \
                batch, shift, write, clear, sample_done, update_done in ctx.tick().sample(
                    link.rx.ready, link.tx.valid, eng.beats.valid, eng.beats.ready,
                    eng.beats.payload, eng.idle, self.engine.hold, eng.start, eng.features,
                    eng.batch, eng.shift, eng.model_write, eng.clear_flags, eng.sample_done,
                    eng.update_done):
            if rx_ready:        # the link sees idle a cycle late
                assert was_idle and not tx_valid and not valid and not start and not write, \
                    "rx.ready high while something is in flight"
            was_idle = idle
            if tx_valid and not hold:
                assert idle, "reply sent while the engine is busy"
            if valid and ready:
                self.beats.append((beat.data, beat.flush))
            if start:
                self.starts.append((features, batch, shift))
            self.writes += write
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
            if len(self.reply) >= 6 and len(self.reply) >= 8 + self.reply[4] + 256 * self.reply[5]:
                break
            _, _, ready = await ctx.tick().sample(self.link.rx.ready)
            assert not (closed and ready), "rx.ready high before the reply was sent"
        else:
            raise AssertionError(f"no whole reply in {limit} cycles: {bytes(self.reply).hex()}")
        size = 8 + self.reply[4] + 256 * self.reply[5]
        frame, self.reply[:] = bytes(self.reply[:size]), self.reply[size:]
        return frame

    async def request(self, ctx, cmd, payload=b"", *, status=Status.OK, reply=b"", frame=None):
        """Send a request; check that the reply is exactly ``(cmd, status, reply)``."""
        await self.send(ctx, encode_request(cmd, payload) if frame is None else frame)
        got = await self.receive(ctx)
        assert got == encode_reply(cmd, status, reply), \
            f"request {cmd:#x} {payload.hex()}: got {got.hex()}"
        self.frames["ok" if status == Status.OK else "bad"] += 1
        return got[6:-2]

    async def idle(self, ctx, cycles=20):
        await ctx.tick().repeat(cycles)
        assert not self.reply, "unexpected reply bytes"

    def model(self, ctx):
        return [ctx.get(self.engine.model.data[i]) for i in range(len(self.model_init))]

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
        payload = await self.request(ctx, Command.STATUS, flags, reply=STATUS_FORMAT.pack(
            expected.flags, expected.cycles, expected.samples, expected.beats, expected.updates,
            expected.frames_ok, expected.frames_bad))
        await ctx.tick().repeat(4)
        if flags and flags[0] & 1:
            assert self.clears == clears + 1, "clear_flags not pulsed once"
            self.frames = dict(ok=0, bad=0)
        else:
            assert self.clears == clears
        return Counters.unpack(payload)


def configure(features, batch, shift, reserved=b"\0\0\0"):
    return CONFIGURE_FORMAT.pack(features, batch, shift)[:5] + reserved


def load(start, weights, reserved=0):
    return MODEL_HEADER_FORMAT.pack(start, reserved) + struct.pack(f"<{len(weights)}i", *weights)


def beats_of(p, payload):
    size = p.beat_bits // 8
    return [int.from_bytes(payload[i:i + size], "little") for i in range(0, len(payload), size)]


def identity(p):
    return Identity(VERSION, p.beat_bits, p.lanes, CODE.bits, p.max_features, p.max_batch,
                    p.model_bits, p.model_frac, p.frame_bytes, p.clock_hz, p.build_id)


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
    features, batch, shift = p.max_features - 1, 2, 9
    bytes_per_beat = p.beat_bits // 8
    sample_bytes = bytes_per_beat * (1 + p.words_for(features))

    async def testbench(ctx, bench):
        rng, eng = bench.rng, bench.link.engine
        one_sample = rng.randbytes(sample_bytes)
        await bench.request(ctx, Command.STREAM, one_sample, status=Status.STATE)
        assert not bench.beats

        await bench.request(ctx, Command.CONFIGURE, configure(features, batch, shift))
        assert bench.starts == [(features, batch, shift)]
        assert (ctx.get(eng.features), ctx.get(eng.batch), ctx.get(eng.shift)) == \
            (features, batch, shift)

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
        assert counters.updates >= counters.samples // batch
        assert counters.cycles >= total
        assert bench.starts == [(features, batch, shift)] and bench.writes == 0
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
        assert not bench.beats and not bench.starts
        await bench.idle(ctx)
    bench.run(testbench)


def bad_requests(p):
    """(cmd, payload, status) of requests that must be rejected once configured."""
    bytes_per_beat = p.beat_bits // 8
    head = MODEL_HEADER_FORMAT.pack
    cases = [
        (Command.IDENTIFY, b"\0", Status.LENGTH),
        (Command.CONFIGURE, configure(1, 1, 0)[:7], Status.LENGTH),
        (Command.CONFIGURE, configure(1, 1, 0) + b"\0", Status.LENGTH),
        (Command.CONFIGURE, configure(0, 1, 0), Status.ARGUMENT),
        (Command.CONFIGURE, configure(p.max_features + 1, 1, 0), Status.ARGUMENT),
        (Command.CONFIGURE, configure(1, 0, 0), Status.ARGUMENT),
        (Command.CONFIGURE, configure(1, p.max_batch + 1, 0), Status.ARGUMENT),
        (Command.CONFIGURE, configure(1, 1, SHIFT_MAX + 1), Status.ARGUMENT),
        (Command.CONFIGURE, configure(1, 1, 0, reserved=b"\0\x01\0"), Status.ARGUMENT),
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
        (0x08, b"\x01\x02", Status.COMMAND),
        (0xFF, b"", Status.COMMAND),
    ]
    if p.max_features > p.frame_bytes // 4:     # the reply would not fit a frame
        cases.append((Command.READ_MODEL, head(0, p.frame_bytes // 4 + 1), Status.ARGUMENT))
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
    good_config = (1, 1, 3)

    async def testbench(ctx, bench):
        eng = bench.link.engine
        await bench.request(ctx, Command.STREAM, bytes(bytes_per_beat), status=Status.STATE)
        await bench.request(ctx, Command.STREAM_FLUSH, bytes(bytes_per_beat), status=Status.STATE)
        for cmd, payload in [(Command.CONFIGURE, configure(*good_config)),
                             (Command.LOAD_MODEL, load(0, [5, 6]))]:
            await bench.request(ctx, cmd, status=Status.CRC,
                                frame=corrupted(cmd, payload, -1))       # in the CRC
            await bench.request(ctx, cmd, status=Status.CRC,
                                frame=corrupted(cmd, payload, 6))        # in the payload
        assert not bench.starts
        await bench.request(ctx, Command.CONFIGURE, configure(*good_config))
        for cmd, payload, status in bad_requests(p):
            await bench.request(ctx, cmd, payload, status=status)
        await bench.request(ctx, Command.STREAM, status=Status.CRC,
                            frame=corrupted(Command.STREAM, bytes(bytes_per_beat), 6))
        assert bench.model(ctx) == bench.model_init
        assert not bench.beats and bench.writes == 0
        assert bench.starts == [good_config]
        assert (ctx.get(eng.features), ctx.get(eng.batch), ctx.get(eng.shift)) == good_config
        counters = await bench.status(ctx)
        assert counters.frames_bad == len(bad_requests(p)) + 7
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
            await bench.send(ctx, SYNC + struct.pack("<BH", Command.LOAD_MODEL, length))
            assert await bench.receive(ctx) == encode_reply(Command.LOAD_MODEL, Status.LENGTH)
            bench.frames["bad"] += 1
            await bench.send(ctx, bytes(p.frame_bytes + 3))
        await bench.idle(ctx, 2 * TIMEOUT)

        # a request stalling mid-frame is dropped with TIMEOUT (cmd echoed if it arrived)
        stalls = [
            (SYNC, 0),
            (SYNC + bytes([Command.CONFIGURE]), Command.CONFIGURE),
            (encode_request(Command.CONFIGURE, configure(1, 1, 0))[:8], Command.CONFIGURE),
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
        assert not bench.starts and not bench.beats
        await bench.status(ctx)
    bench.run(testbench)


def test_status_flags_and_clear():
    p = PARAMS["w32"]
    bench = Bench(p, seed=5)

    async def testbench(ctx, bench):
        counters = await bench.status(ctx)
        assert counters.flags == 0 and counters.frames_ok == 1 and counters.cycles == 0
        await bench.request(ctx, Command.CONFIGURE, configure(3, 2, 0))
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
        await bench.request(ctx, Command.CONFIGURE, configure(2, 1, 0))
        # the engine going busy during a command delays the model port and the reply
        weights = [10, -20, 30]
        for cmd, payload, reply in [
                (Command.LOAD_MODEL, load(1, weights), b""),
                (Command.READ_MODEL, MODEL_HEADER_FORMAT.pack(1, 3), struct.pack("<3i", *weights)),
                (Command.STREAM, bench.rng.randbytes(16), b"")]:
            await bench.send(ctx, encode_request(cmd, payload))
            ctx.set(hold, 1)
            await ctx.tick().repeat(60)
            if cmd != Command.READ_MODEL:       # READ sends its header before reading
                assert not bench.reply
            ctx.set(hold, 0)
            assert await bench.receive(ctx) == encode_reply(cmd, Status.OK, reply)
        assert len(bench.beats) == 4
    bench.run(testbench)
