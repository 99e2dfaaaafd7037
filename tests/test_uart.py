"""UART receiver and transmitter: loopback, line timing, framing errors, baud tolerance."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.sim import Simulator
from streams import stream_put
from ziphalp.hw.uart import UARTRx, UARTTx


def collector(stream, received, errors=None, framing_error=None, rng=None):
    """A background testbench taking bytes from ``stream`` (ready at random if ``rng``)."""
    async def collect(ctx):
        ctx.set(stream.ready, 1)
        async for _, _, valid, ready, payload, error in ctx.tick().sample(
                stream.valid, stream.ready, stream.payload,
                0 if framing_error is None else framing_error):
            if valid and ready:
                received.append(payload)
            if error:
                errors.append(1)
            if rng is not None:
                ctx.set(stream.ready, rng.random() < 0.5)
    return collect


async def drive_frame(ctx, line, byte, bit_cycles, *, stop=1):
    """Bit-bang one 8N1 frame onto ``line``, ``bit_cycles`` cycles per bit."""
    for bit in [0, *((byte >> i) & 1 for i in range(8)), stop]:
        ctx.set(line, bit)
        await ctx.tick().repeat(bit_cycles)
    ctx.set(line, 1)


def test_divisor_checked():
    with pytest.raises(ValueError, match="at least 4"):
        UARTRx(3)
    with pytest.raises(ValueError, match="at least 4"):
        UARTTx(2)


@pytest.mark.parametrize("divisor", [4, 7, 16])
def test_loopback_random_bytes(divisor):
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(60)]
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.line.eq(tx.line)
    received, errors = [], []

    async def sender(ctx):
        for byte in data:
            await stream_put(ctx, tx.stream, byte)
            if rng.random() < 0.3:
                await ctx.tick().repeat(rng.randrange(1, 3 * divisor))
        await ctx.tick().repeat(12 * divisor)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(collector(rx.stream, received, errors, rx.framing_error, rng),
                      background=True)
    sim.run()
    assert received == data
    assert not errors


@pytest.mark.parametrize("divisor", [5, 12])
def test_tx_line_timing(divisor):
    """Every bit of a frame lasts exactly ``divisor`` cycles and carries the right value."""
    data = [0x00, 0xFF, 0x55, 0xA5, 0x3C]
    dut = UARTTx(divisor)
    line_trace = []

    async def sender(ctx):
        for byte in data:
            await stream_put(ctx, dut.stream, byte)

    async def monitor(ctx):
        async for _, _, line in ctx.tick().sample(dut.line):
            line_trace.append(line)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(sender)
    sim.add_testbench(monitor, background=True)
    sim.run_until(1e-6 * (divisor * 10 * len(data) + 20))

    start = line_trace.index(0)
    frames = []
    for k in range(len(data)):
        bits = line_trace[start + 10 * divisor * k:start + 10 * divisor * (k + 1)]
        assert len(bits) == 10 * divisor
        cells = [bits[i * divisor:(i + 1) * divisor] for i in range(10)]
        assert all(len(set(cell)) == 1 for cell in cells), f"bit not held in frame {k}"
        values = [cell[0] for cell in cells]
        assert values[0] == 0 and values[9] == 1
        frames.append(sum(v << i for i, v in enumerate(values[1:9])))
    assert frames == data
    assert all(line_trace[start + 10 * divisor * len(data):])  # idle high afterwards


@pytest.mark.parametrize("bit_cycles", [31, 32, 33])
def test_rx_tolerates_baud_mismatch(bit_cycles):
    """A 32-cycle receiver takes frames from a sender about 3 % fast or slow."""
    rng = random.Random(bit_cycles)
    data = [rng.randrange(256) for _ in range(8)]
    dut = UARTRx(32)
    received = []

    async def driver(ctx):
        for byte in data:
            await drive_frame(ctx, dut.line, byte, bit_cycles)
        await ctx.tick().repeat(64)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(collector(dut.stream, received), background=True)
    sim.run()
    assert received == data


def test_rx_framing_error_and_glitch():
    divisor = 8
    dut = UARTRx(divisor)
    received, errors = [], []

    async def driver(ctx):
        await drive_frame(ctx, dut.line, 0x81, divisor, stop=0)   # bad stop bit
        await ctx.tick().repeat(3 * divisor)
        ctx.set(dut.line, 0)                                     # a break: low for long
        await ctx.tick().repeat(30 * divisor)
        ctx.set(dut.line, 1)
        await ctx.tick().repeat(2 * divisor)
        ctx.set(dut.line, 0)                                     # a glitch shorter than half a bit
        await ctx.tick().repeat(divisor // 2 - 2)
        ctx.set(dut.line, 1)
        await ctx.tick().repeat(2 * divisor)
        await drive_frame(ctx, dut.line, 0x5A, divisor)          # a good frame afterwards
        await ctx.tick().repeat(3 * divisor)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(driver)
    sim.add_testbench(collector(dut.stream, received, errors, dut.framing_error),
                      background=True)
    sim.run()
    assert received == [0x5A]
    assert len(errors) == 2   # the bad stop bit, and the break (once)
