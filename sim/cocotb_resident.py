"""cocotb testbench: the generated Verilog of ``ResidentSource`` against the golden model.

Driven by ``tests/test_resident_cocotb.py`` through ``cocotb_tools.runner``; the
build parameters, the store image and the runs arrive as JSON in
``ZIPHALP_BENCH``. The bench loads the store through the write port (codes,
labels, sampler table), then starts each run (configuration and walk) and takes
the beats with random back-pressure; the runner compares them, and the flush
bits, with :meth:`ziphalp.sim.golden.GoldenEngine.run`. Each run reports its
beats, flushes and cycles from start to drained.
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge
from ziphalp.hw.protocol import Region


@cocotb.test()
async def resident_source_runs(dut):
    spec = json.loads(os.environ["ZIPHALP_BENCH"])
    width = spec["beat_bits"] // 8
    rng = np.random.default_rng(spec["seed"])
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    for name in ("write", "start", "beats__ready"):
        getattr(dut, name).value = 0
    dut.rst.value = 1
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    for name, image in spec["image"].items():
        region, payload = Region[name], bytes.fromhex(image)
        for addr in range(len(payload) // width):
            dut.write.value, dut.region.value, dut.addr.value = 1, int(region), addr
            dut.data.value = int.from_bytes(payload[addr * width:(addr + 1) * width], "little")
            while True:
                await ReadOnly()
                taken = int(dut.write_ready.value)
                await RisingEdge(dut.clk)
                if taken:
                    break
    dut.write.value = 0
    results = []
    for run in spec["runs"]:
        for name, value in run["config"].items():
            getattr(dut, name).value = int(value)
        for name, value in run["walk"].items():
            getattr(dut, name).value = int(value)
        await RisingEdge(dut.clk)
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0
        beats, flushes, cycles = [], [], 0
        while True:
            ready = run["full_rate"] or rng.random() < 0.6
            dut.beats__ready.value = int(ready)
            await ReadOnly()
            busy = int(dut.busy.value)
            if ready and int(dut.beats__valid.value):
                beats.append(int(dut.beats__payload.value) & ((1 << spec["beat_bits"]) - 1))
                flushes.append(int(dut.beats__payload.value) >> spec["beat_bits"])
            await RisingEdge(dut.clk)
            if not busy:
                break
            cycles += 1
        dut.beats__ready.value = 0
        results.append({"beats": [str(b) for b in beats], "flushes": flushes, "cycles": cycles})
    with open(spec["report"], "w") as f:
        json.dump(results, f)
