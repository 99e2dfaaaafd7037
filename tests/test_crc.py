"""CRC16 gateware against the protocol's reference ``crc16``."""

import random

from amaranth.sim import Simulator
from ziphalp.hw.crc import CRC16
from ziphalp.hw.protocol import crc16


def run(testbench):
    dut = CRC16()
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        await testbench(ctx, dut)

    sim.add_testbench(bench)
    sim.run()


async def feed(ctx, dut, data, *, gaps=()):
    """Absorb ``data`` one byte per cycle (idle cycles after positions in ``gaps``)."""
    expected = []
    for i, byte in enumerate(data):
        ctx.set(dut.valid, 1)
        ctx.set(dut.data, byte)
        await ctx.tick()
        expected.append(crc16(bytes(data[:i + 1])))
        ctx.set(dut.valid, 0)
        assert ctx.get(dut.crc) == expected[-1], f"after {i + 1} bytes of {bytes(data).hex()}"
        if i in gaps:
            ctx.set(dut.data, random.randrange(256))
            await ctx.tick()
            assert ctx.get(dut.crc) == expected[-1], "CRC changed without valid"


def test_check_value():
    async def testbench(ctx, dut):
        assert ctx.get(dut.crc) == 0xFFFF
        await feed(ctx, dut, b"123456789")
        assert ctx.get(dut.crc) == 0x29B1  # the catalogue check value of CRC-16/CCITT-FALSE
    run(testbench)


def test_random_messages_with_reset():
    rng = random.Random(1)

    async def testbench(ctx, dut):
        for _ in range(20):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            gaps = {rng.randrange(len(data)) for _ in range(3)}
            await feed(ctx, dut, data, gaps=gaps)
            # reset wins over a byte given in the same cycle
            ctx.set(dut.reset, 1)
            ctx.set(dut.valid, 1)
            ctx.set(dut.data, 0x42)
            await ctx.tick()
            ctx.set(dut.reset, 0)
            ctx.set(dut.valid, 0)
            assert ctx.get(dut.crc) == 0xFFFF
    run(testbench)
