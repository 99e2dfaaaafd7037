"""cocotb testbench: the generated Verilog of ``SGDEngine`` against the golden model.

Driven by ``tests/test_engine_cocotb.py`` through ``cocotb_tools.runner``. The
build parameters and a list of run-time cases arrive as JSON in the environment
variable ``ZIPHALP_BENCH``. For each case the bench loads a random model through
the model port and a random level table through the level port, configures the
engine (precision, sampling, loss, costs, L2 decay, d, B, step), streams random
samples with random bubbles on the input (valid low) in one or more frames, reads the model back and
requires it, and the sticky flags and strobe counts, to equal
``ziphalp.sim.golden.GoldenEngine`` exactly. Every case also reports its cycles:
from the first beat taken to idle, the span from the first beat taken to the
last, and which samples ended a batch; the runner checks them for the cases
without bubbles. The engine is configured with every field of
``protocol.CONFIGURE`` (the case's value, else the table's default).

A HALP case (``"halp"`` in the case) runs outer iterations instead: a full pass
over ``n`` samples (each with its cache index) and an inner loop of ``T``
samples at random indices, comparing the model after every phase.
"""

from __future__ import annotations

import dataclasses
import json
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge, Timer
from ziphalp.hw.control import model_read_latency
from ziphalp.hw.params import LABEL, EngineParams, Phase, field_bits
from ziphalp.hw.protocol import CONFIGURE, Configure
from ziphalp.sim.golden import GoldenEngine


class EngineDriver:
    """Drives the ``ctrl`` ports of one engine instance; counts strobes."""

    def __init__(self, dut, params: EngineParams):
        self.dut, self.p = dut, params
        self.samples_done = 0
        self.updates_done = 0
        self.cycle = 0
        self.clocked = False

    async def tick(self):
        await RisingEdge(self.dut.clk)
        self.cycle += 1
        self.samples_done += int(self.dut.ctrl__sample_done.value)
        self.updates_done += int(self.dut.ctrl__update_done.value)

    async def reset(self):
        """Drive every input, start the clock (the first time), pulse ``rst``."""
        d = self.dut
        for name in ("ctrl__beats__valid", "ctrl__start", "ctrl__model_read",
                     "ctrl__model_write", "ctrl__clear_flags", "ctrl__level_write"):
            getattr(d, name).value = 0
        d.ctrl__beats__payload.value = 0
        d.ctrl__model_word.value = 0
        d.ctrl__model_lane.value = 0
        d.ctrl__model_wdata.value = 0
        d.ctrl__level_index.value = 0
        d.ctrl__level_data.value = 0
        for field in CONFIGURE.fields:
            if hasattr(d, f"ctrl__{field.name}"):
                getattr(d, f"ctrl__{field.name}").value = 0
        d.rst.value = 1
        # every input is driven before the first clock edge, as the link's registers
        # drive them: an undriven input is X in Icarus, and the multiplexers of the
        # simulation Verilog (ziphalp.sim.rtl), unlike an `if`, would write an X
        # into the memories, which no reset clears
        if not self.clocked:
            await Timer(1, unit="ns")
            cocotb.start_soon(Clock(d.clk, 10, unit="ns").start())
            self.clocked = True
        for _ in range(3):
            await RisingEdge(d.clk)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def wait_idle(self, limit=10_000):
        for _ in range(limit):
            await ReadOnly()
            idle = int(self.dut.ctrl__idle.value)
            await self.tick()
            if idle:
                return
        raise AssertionError("engine never became idle")

    async def configure(self, config: Configure):
        """Drive every field of ``config`` on the control member of its name with
        ``start`` in the same cycle, and wait for the engine to be idle."""
        d = self.dut
        # as the link does: the new configuration and `start` in the same cycle
        for name, value in dataclasses.asdict(config).items():
            signal = getattr(d, f"ctrl__{name}")
            signal.value = int(value) & ((1 << len(signal)) - 1)
        d.ctrl__start.value = 1
        await self.tick()
        d.ctrl__start.value = 0
        await self.tick()
        await self.wait_idle()

    async def write_model(self, weights):
        d, K, bits = self.dut, self.p.lanes, self.p.model_bits
        for f, w in enumerate(weights):
            d.ctrl__model_word.value = f // K
            d.ctrl__model_lane.value = f % K
            d.ctrl__model_wdata.value = int(w) & ((1 << bits) - 1)
            d.ctrl__model_write.value = 1
            await self.tick()
        d.ctrl__model_write.value = 0
        await self.tick()

    async def write_levels(self, levels):
        d = self.dut
        for index, level in enumerate(levels):
            d.ctrl__level_index.value = index
            d.ctrl__level_data.value = int(level) & 0x3FF
            d.ctrl__level_write.value = 1
            await self.tick()
        d.ctrl__level_write.value = 0
        await self.tick()

    async def read_model(self, count):
        d, K = self.dut, self.p.lanes
        out = []
        for f in range(count):
            d.ctrl__model_word.value = f // K
            d.ctrl__model_lane.value = f % K
            d.ctrl__model_read.value = 1
            await self.tick()
            d.ctrl__model_read.value = 0
            for _ in range(model_read_latency(self.p) - 1):     # the word comes that many cycles
                await self.tick()                       # after the read
            await ReadOnly()
            out.append(d.ctrl__model_rdata.value.to_signed())
            await self.tick()
        return np.array(out, dtype=np.int64)

    async def stream(self, beats: list[int], flush: bool, bubble: float, rng) -> tuple[int, int]:
        """Send beats; return (cycle of the first accepted beat, cycle after the last)."""
        d, W = self.dut, self.p.beat_bits
        first = None
        index = 0
        stalled = 0
        while index < len(beats):
            stalled += 1
            if stalled > 1000:
                raise AssertionError(f"engine stopped accepting beats at beat {index}")
            hold = rng.random() < bubble
            d.ctrl__beats__valid.value = 0 if hold else 1
            is_last = index == len(beats) - 1
            d.ctrl__beats__payload.value = beats[index] | (int(flush and is_last) << W)
            await ReadOnly()
            accepted = not hold and int(d.ctrl__beats__ready.value) == 1
            if accepted and first is None:
                first = self.cycle
            await self.tick()
            if accepted:
                index += 1
                stalled = 0
        d.ctrl__beats__valid.value = 0
        return first, self.cycle


def pack(fields: np.ndarray, labels: np.ndarray, p: EngineParams, k: int,
         double: bool, indices=None) -> list[int]:
    """Beats as integers (an independent packer; the host's lives in ziphalp.host);
    ``indices`` go into bits 16..31 of the label beats (HALP)."""
    beats = []
    per_beat, bits = p.values_per_beat(k, double), field_bits(k, double)
    indices = [0] * len(labels) if indices is None else indices
    for row, y, i in zip(fields, labels, indices, strict=True):
        beats.append(int(y) & 0xFFFF | int(i) << 16)
        for start in range(0, len(row), per_beat):
            beat = 0
            for i, field in enumerate(row[start:start + per_beat]):
                beat |= int(field) << (bits * i)
            beats.append(beat)
    return beats


def configuration(case: dict) -> Configure:
    """The case's configuration: each field of ``protocol.CONFIGURE`` that the case
    names, the table's default for the others."""
    return Configure(**{field.name: case[field.name] for field in CONFIGURE.fields
                        if field.name in case})


def beats_to_bytes(beats: list[int], p: EngineParams) -> bytes:
    return b"".join(b.to_bytes(p.beat_bits // 8, "little") for b in beats)


@cocotb.test()
async def engine_matches_golden(dut):
    spec = json.loads(os.environ["ZIPHALP_BENCH"])
    p = EngineParams(**spec["params"])
    drv = EngineDriver(dut, p)
    await drv.reset()
    results = []
    for case in spec["cases"]:
        rng = np.random.default_rng(case["seed"])
        d = case["features"]
        config = configuration(case)
        k, double = case["k"], case["double"]
        golden = GoldenEngine(p)
        init = rng.integers(-(1 << case["model_scale"]), 1 << case["model_scale"],
                            size=p.max_features)
        init = np.clip(init, p.model.min_int, p.model.max_int)
        await drv.write_model(init)
        golden.load_model(0, init)
        # the levels a k-bit code reaches, l_0 .. l_(2^k), as the host writes them: the
        # entries after them keep an earlier case's values, which no sample reads
        levels = np.array(case["levels"], dtype=np.int64)[:(1 << case["k"]) + 1]
        await drv.write_levels(levels)
        golden.load_levels(levels)
        if "halp" in case:
            results.append(await run_halp_case(dut, drv, golden, p, case, config, rng))
            continue
        await drv.configure(config)
        golden.configure(**dataclasses.asdict(config))
        samples0, updates0 = drv.samples_done, drv.updates_done

        first = last = None
        ends = []                   # per sample: it ends a batch
        for frame in case["frames"]:
            n, flush = frame["samples"], frame["flush"]
            fields = rng.integers(0, 1 << field_bits(k, double), size=(n, d))
            labels = rng.integers(LABEL.min_int >> case["label_shrink"],
                                  (LABEL.max_int >> case["label_shrink"]) + 1, size=n)
            beats = pack(fields, labels, p, k, double)
            start, last = await drv.stream(beats, flush, case["bubble"], rng)
            first = start if first is None else first
            updates = golden.updates
            for i in range(n):
                golden.stream(beats_to_bytes(pack(fields[i:i + 1], labels[i:i + 1], p, k,
                                                  double), p), flush and i == n - 1)
                ends.append(golden.updates > updates)
                updates = golden.updates
        span = last - first         # cycles from the first beat taken to the last, inclusive
        await drv.wait_idle()
        cycles = drv.cycle - first
        model = await drv.read_model(p.max_features)
        overflow = int(dut.ctrl__overflow.value)
        clipped = int(dut.ctrl__clipped.value)

        mismatch = np.flatnonzero(model != golden.model)
        assert mismatch.size == 0, (
            f"case {case}: model differs from golden at {mismatch[:8].tolist()}: "
            f"rtl {model[mismatch[:8]].tolist()} golden {golden.model[mismatch[:8]].tolist()}")
        assert overflow == golden.overflow, f"case {case}: overflow {overflow} != golden"
        assert clipped == golden.clipped, f"case {case}: clipped {clipped} != golden"
        assert drv.samples_done - samples0 == golden.samples
        assert drv.updates_done - updates0 == golden.updates
        results.append({"case": case, "cycles": cycles, "span": span, "ends": ends,
                        "samples": golden.samples,
                        "updates": golden.updates, "overflow": bool(golden.overflow),
                        "clipped": bool(golden.clipped)})
        dut.ctrl__clear_flags.value = 1
        await drv.tick()
        dut.ctrl__clear_flags.value = 0
    with open(spec["report"], "w") as f:
        json.dump(results, f)


async def run_halp_case(dut, drv, golden, p, case, config, rng) -> dict:
    """Outer iterations of HALP: full pass, inner loop; the model checked after each."""
    halp = case["halp"]
    d, k, n = case["features"], case["k"], halp["samples"]
    fields = rng.integers(0, 1 << field_bits(k, False), size=(n, d))
    labels = rng.integers(LABEL.min_int >> case["label_shrink"],
                          (LABEL.max_int >> case["label_shrink"]) + 1, size=n)
    samples0, updates0 = drv.samples_done, drv.updates_done
    cycles, changed = {}, 0
    before = golden.model.copy()
    for outer in range(halp["outer"]):
        for phase in (Phase.FULL, Phase.INNER):
            full = phase == Phase.FULL
            extra = dict(phase=int(phase), offset_bits=halp["offset_bits"],
                         scale_log=halp["scale_log"], seed=halp["seed"] + outer,
                         stochastic=halp["stochastic"], stale=halp["stale"])
            if full:
                extra.update(shift=halp["full_shift"], cost_pos=halp["full_cost"],
                             cost_neg=halp["full_cost"])
            phase_config = dataclasses.replace(config, **extra)
            await drv.configure(phase_config)
            golden.configure(**dataclasses.asdict(phase_config))
            order = np.arange(n) if full else rng.integers(0, n, size=halp["inner_steps"])
            beats = pack(fields[order], labels[order], p, k, False, indices=order)
            flush = not full and halp["flush"]
            start, _ = await drv.stream(beats, flush, case["bubble"], rng)
            golden.stream(beats_to_bytes(beats, p), flush)
            await drv.wait_idle()
            cycles[f"{phase.name.lower()}{outer}"] = drv.cycle - start
            # the case's features between phases, the whole model after the last
            last = outer == halp["outer"] - 1 and not full
            model = await drv.read_model(p.max_features if last else d)
            where = f"case {case}, outer {outer}, {phase.name}"
            mismatch = np.flatnonzero(model != golden.model[:len(model)])
            assert mismatch.size == 0, (
                f"{where}: model differs from golden at {mismatch[:8].tolist()}: rtl "
                f"{model[mismatch[:8]].tolist()} golden {golden.model[mismatch[:8]].tolist()}")
            if not full:
                changed += int(np.count_nonzero(model[:d] != before[:d]))
            before = model
    assert int(dut.ctrl__overflow.value) == golden.overflow, f"case {case}: overflow"
    assert int(dut.ctrl__clipped.value) == golden.clipped, f"case {case}: clipped"
    assert drv.samples_done - samples0 == golden.samples
    assert drv.updates_done - updates0 == golden.updates
    dut.ctrl__clear_flags.value = 1
    await drv.tick()
    dut.ctrl__clear_flags.value = 0
    return {"case": case, "cycles": cycles, "samples": golden.samples,
            "updates": golden.updates, "overflow": bool(golden.overflow),
            "clipped": bool(golden.clipped), "offset_shift": int(golden.offset_shift),
            "changed": changed}
