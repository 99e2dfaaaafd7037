"""The link's CRC gateware (``amaranth.lib.crc`` behind ``FrameCRC``) against the
protocol's reference ``crc16``, which is the standard library's ``binascii.crc_hqx``."""

import binascii
import random

from amaranth.sim import Simulator
from ziphalp.hw.crc import FRAME_CRC, FrameCRC
from ziphalp.hw.protocol import crc16


def run(testbench):
    dut = FrameCRC()
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
        expected.append(binascii.crc_hqx(bytes(data[:i + 1]), 0xFFFF))
        ctx.set(dut.valid, 0)
        assert ctx.get(dut.crc) == expected[-1], f"after {i + 1} bytes of {bytes(data).hex()}"
        if i in gaps:
            ctx.set(dut.data, random.randrange(256))
            await ctx.tick()
            assert ctx.get(dut.crc) == expected[-1], "CRC changed without valid"


def test_reference_is_ccitt_false():
    """The host's crc16, the catalogue's algorithm and the standard's check value agree."""
    assert crc16(b"123456789") == FRAME_CRC.compute(b"123456789") == 0x29B1
    rng = random.Random(2)
    for _ in range(50):
        data = rng.randbytes(rng.randrange(64))
        assert crc16(data) == FRAME_CRC.compute(data) == binascii.crc_hqx(data, 0xFFFF)


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
