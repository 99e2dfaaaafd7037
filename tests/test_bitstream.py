# amaranth: UnusedElaboratable=no
"""Board top levels and the bitstream build, on the iCEBreaker.

The fast tests cover the iCE40 PLL divider search, the UART divisor, the reset
hold, the generic top level's clocking, the iCEBreaker top level's elaboration,
the build targets and the build command's exit codes. The test marked
``bitstream`` runs the real flow (Yosys, nextpnr, icepack through YoWASP; select
it with ``-m bitstream``, skip it with ``-m "not bitstream"``): the first YoWASP
call compiles the tools (about a minute, cached in ``~/.cache/YoWASP``), a build
of the full design then takes one to five minutes (nextpnr fills a UP5K).
"""

import json
import re
import subprocess
import sys

import pytest
from amaranth.hdl import Fragment, Instance, Module
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from ziphalp.hw import build as hwbuild
from ziphalp.hw import toolchain
from ziphalp.hw.ice40 import ICE40, ICE40PLL, SB_MAC16, ICE40PLLConfig, ice40_pll
from ziphalp.hw.icebreaker import CLK_IN_HZ, ICEBreakerTop
from ziphalp.hw.params import BOARD_PARAMS, EngineParams
from ziphalp.hw.top import BoardPins, BoardTop, ClockGenerator, ResetHold, uart_divisor

# --- PLL -------------------------------------------------------------------------------


def test_pll_48mhz():
    pll = ice40_pll(CLK_IN_HZ, 48_000_000)
    assert (pll.divr, pll.divf, pll.divq, pll.filter_range) == (0, 63, 4, 1)
    assert pll.f_out == 48_000_000
    assert pll.f_vco == 768_000_000


@pytest.mark.parametrize("mhz", [20, 24, 30, 33, 36, 42, 48, 50, 54, 60, 72, 100, 133, 200, 250])
def test_pll_matches_icepll(mhz):
    icepll = toolchain.find_tool("yowasp-icepll")
    if icepll is None:
        pytest.skip("yowasp-icepll not installed")
    text = subprocess.run([icepll, "-q", "-i", "12", "-o", str(mhz), "-f", "-"],
                          capture_output=True, text=True, check=True, timeout=300).stdout
    theirs = {name: int(value) for name, value in re.findall(r"// (\w+) =\s*(\d+)", text)}
    pll = ice40_pll(CLK_IN_HZ, mhz * 1_000_000)
    assert theirs == {"DIVR": pll.divr, "DIVF": pll.divf, "DIVQ": pll.divq,
                      "FILTER_RANGE": pll.filter_range}


def test_pll_output_range():
    # icepll offers 15.94 MHz for 16 MHz; the PLL's output range starts at 16 MHz.
    pll = ice40_pll(CLK_IN_HZ, 16_000_000)
    assert 16_000_000 <= pll.f_out <= 16_200_000
    with pytest.raises(ValueError, match="nearest"):
        ice40_pll(CLK_IN_HZ, 275_000_000)


@pytest.mark.parametrize("hz", [10_000_000, 300_000_000])
def test_pll_out_of_range(hz):
    with pytest.raises(ValueError, match="outside"):
        ice40_pll(CLK_IN_HZ, hz)


def test_pll_tolerance():
    # 12 MHz * 67 / 16 = 50.25 MHz is the nearest to 50 MHz: 0.5% off.
    assert ice40_pll(CLK_IN_HZ, 50_000_000).f_out_hz == 50_250_000
    with pytest.raises(ValueError, match="nearest is 50.2500 MHz"):
        ice40_pll(CLK_IN_HZ, 50_000_000, tolerance=0.001)


@pytest.mark.parametrize("fields, match", [
    ({"divq": 0}, "DIVQ=0"),
    ({"divf": 20}, "VCO frequency"),
    ({"filter_range": 3}, "FILTER_RANGE=3"),
    ({"divr": 1}, "PFD frequency"),
])
def test_pll_check(fields, match):
    good = {"f_in_hz": CLK_IN_HZ, "divr": 0, "divf": 63, "divq": 4, "filter_range": 1}
    ICE40PLLConfig(**good).check()
    with pytest.raises(ValueError, match=match):
        ICE40PLLConfig(**(good | fields)).check()


# --- UART divisor ----------------------------------------------------------------------


@pytest.mark.parametrize("clock_hz, baud, divisor", [
    (48_000_000, 3_000_000, 16),
    (48_000_000, 12_000_000, 4),
    (48_000_000, 115_200, 417),
    (36_000_000, 3_000_000, 12),
])
def test_uart_divisor(clock_hz, baud, divisor):
    assert uart_divisor(clock_hz, baud) == divisor


@pytest.mark.parametrize("clock_hz, baud", [(48_000_000, 7_000_000), (48_000_000, 0),
                                            (48_000_000, 48_000_000)])
def test_uart_divisor_rejects(clock_hz, baud):
    with pytest.raises(ValueError):
        uart_divisor(clock_hz, baud)


# --- reset -----------------------------------------------------------------------------


def test_reset_hold():
    hold = 10
    dut = ResetHold(hold)
    sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        await ctx.tick().repeat(5)
        assert not ctx.get(dut.ready)
        ctx.set(dut.lock, 1)
        cycles = 0
        while not ctx.get(dut.ready):
            await ctx.tick()
            cycles += 1
        assert hold <= cycles <= hold + 3
        await ctx.tick().repeat(20)
        assert ctx.get(dut.ready)
        # Losing lock drops ready within the synchroniser's delay.
        ctx.set(dut.lock, 0)
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.ready)
        ctx.set(dut.lock, 1)
        await ctx.tick().repeat(hold + 4)
        assert ctx.get(dut.ready)
        # The button holds the reset while pressed, then the count starts over.
        ctx.set(dut.restart, 1)
        await ctx.tick().repeat(hold * 3)
        assert not ctx.get(dut.ready)
        ctx.set(dut.restart, 0)
        await ctx.tick().repeat(hold)
        assert not ctx.get(dut.ready)
        await ctx.tick().repeat(4)
        assert ctx.get(dut.ready)

    sim.add_testbench(bench)
    sim.run()


# --- top level -------------------------------------------------------------------------


def _pll_parameters(clock: ICE40PLL) -> dict:
    """The SB_PLL40_PAD parameters an iCE40 clock generator elaborates to."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    fragment = Fragment.get(clock, ICEBreakerPlatform())
    (pll,) = [sub for sub, _, _ in fragment.subfragments if isinstance(sub, Instance)]
    assert pll.type == "SB_PLL40_PAD"
    return {name: getattr(value, "value", value) for name, value in pll.parameters.items()}


def test_top_clock_follows_pll():
    top = ICEBreakerTop(EngineParams(clock_hz=50_000_000))
    assert top.params.clock_hz == 50_250_000 == top.clock.f_out_hz
    assert top.divisor == 17
    assert top.clock.settings() == {"primitive": "SB_PLL40_PAD", "f_in_hz": CLK_IN_HZ,
                                    "divr": 0, "divf": 66, "divq": 4, "filter_range": 1,
                                    "f_out_hz": 50_250_000}
    assert _pll_parameters(top.clock) == {"FEEDBACK_PATH": "SIMPLE", "PLLOUT_SELECT": "GENCLK",
                                          "DIVR": 0, "DIVF": 66, "DIVQ": 4, "FILTER_RANGE": 1}
    top = ICEBreakerTop(EngineParams(), clock_hz=36_000_000)
    assert top.params.clock_hz == 36_000_000
    assert top.divisor == 12
    assert _pll_parameters(top.clock)["DIVF"] == top.clock.config.divf


class _Loopback(wiring.Component):
    """A stand-in board core: every request byte comes back."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        wiring.connect(m, wiring.flipped(self.rx), wiring.flipped(self.tx))
        return m


class _OscillatorClock(ClockGenerator):
    """A clock generator without a PLL: the oscillator itself, always locked."""

    def elaborate(self, platform):
        m = Module()
        m.submodules.osc = osc = io.Buffer("i", platform.request("clk25", 0, dir="-"))
        m.d.comb += [self.clk.eq(osc.i), self.lock.eq(1)]
        return m


def test_board_top_is_generic():
    """The generic top elaborates for another family (ECP5) with any clock generator."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    pins = BoardPins(led_run=("led", 0), led_traffic=("led", 1))
    top = BoardTop(EngineParams(clock_hz=24_000_000), _OscillatorClock(24_000_000), pins,
                   core=_Loopback())
    assert top.params.clock_hz == 24_000_000 and top.divisor == 8
    with pytest.raises(TypeError, match="needs a platform"):
        top.elaborate(None)
    plan = ULX3S_85F_Platform().build(top, name="ziphalp", do_build=False)
    rtlil = plan.files["ziphalp.il"]
    rtlil = rtlil.decode() if isinstance(rtlil, bytes) else rtlil
    assert not re.search(r"cell \\SB_", rtlil)      # no iCE40 primitive
    assert "uart_rx" in rtlil and "reset_hold" in rtlil


# --- build targets and command line ----------------------------------------------------


def test_targets():
    target = hwbuild.TARGETS["icebreaker"]
    assert target.name == "icebreaker"
    assert target.params == BOARD_PARAMS["icebreaker"]
    assert target.family is ICE40 and ICE40.dsp is SB_MAC16
    assert target.top is ICEBreakerTop


def test_cli_unknown_board(capsys):
    assert hwbuild.main(["no-such-board"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown board" in err


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "ziphalp.hw.build", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "icebreaker" in result.stdout and "--allow-timing-fail" in result.stdout


def _fake_report(achieved):
    return {
        "board": "icebreaker", "device": "iCE40UP5K-SG48", "build_id": "0x0",
        "clock_hz": 48_000_000, "baud": 3_000_000,
        "utilisation": {"ICESTORM_LC": {"used": 1, "available": 5280}},
        "fmax_mhz": {"achieved": achieved, "constraint": 48.0},
        "timing_met": achieved >= 48.0,
        "bitstream": "ziphalp.bin", "bitstream_bytes": 0, "seconds": 0.0,
    }


@pytest.mark.parametrize("achieved, flags, status", [
    (50.0, [], 0),
    (40.0, [], 1),
    (40.0, ["--allow-timing-fail"], 0),
])
def test_cli_timing_verdict(monkeypatch, tmp_path, capsys, achieved, flags, status):
    monkeypatch.setattr(hwbuild, "build", lambda *args, **kwargs: _fake_report(achieved))
    assert hwbuild.main(["icebreaker", "--out", str(tmp_path), *flags]) == status
    err = capsys.readouterr().err.strip()
    if status:
        assert len(err.splitlines()) == 1 and "timing not met" in err
    else:
        assert err == ""


def test_read_multipliers(tmp_path):
    dump = tmp_path / "mul.il"
    dump.write_text(
        "  cell $mul $m0\n    parameter \\A_SIGNED 1\n    parameter \\B_SIGNED 1\n"
        "    parameter \\A_WIDTH 32\n    parameter \\B_WIDTH 8\n    parameter \\Y_WIDTH 40\n"
        "    connect \\A \\w\n    connect \\B \\c\n    connect \\Y $1\n  end\n"
        "  cell $mul $m1\n    parameter \\A_WIDTH 4\n    parameter \\B_WIDTH 4\n"
        "    parameter \\Y_WIDTH 8\n    connect \\B 4'0011\n  end\n")
    muls = toolchain.read_multipliers(dump)
    assert [m["name"] for m in muls] == ["$m0", "$m1"]
    assert muls[1]["const_b"] and "const_b" not in muls[0]
    # 32x8 splits into two 16x8 blocks; a 4x4 product with an 8-bit result stays in logic.
    assert toolchain.expected_dsps(muls, SB_MAC16) == 2


def _mac16(clk, **params):
    return {"type": "SB_MAC16", "parameters": params,
            "connections": {"CLK": clk, "A": [2, 3], "B": [4, "x"]}}


def test_check_dsp_cells(tmp_path):
    registered = {"A_REG": "1", "B_REG": "1", "PIPELINE_16x16_MULT_REG2": "1",
                  "TOPOUTPUT_SELECT": "01", "BOTOUTPUT_SELECT": "01"}
    cells = {
        "bare": _mac16(["0"]),                                  # clock tied off
        "piped": _mac16([7], **registered),
        "adder": _mac16([7], **(registered | {"TOPOUTPUT_SELECT": "00"})),
        "other": {"type": "SB_LUT4", "parameters": {}, "connections": {}},
    }
    netlist = tmp_path / "netlist.json"
    netlist.write_text(json.dumps({"modules": {"top": {"cells": cells}}}))
    assert toolchain.check_dsp_cells(netlist, SB_MAC16) == {
        "cells": 3, "undefined_inputs": 3, "unregistered": 1, "comb_output": 1}


# --- the real bitstream ----------------------------------------------------------------

#: Size of every iCE40UP5K bitstream.
UP5K_BIN_BYTES = 104090


@pytest.mark.bitstream
def test_icebreaker_bitstream(tmp_path):
    """Build the iCEBreaker bitstream and check its report (one build, all checks).

    The build runs with ``--allow-timing-fail`` so that a slow design still gets
    its report checked; timing is judged last, with the other findings.
    """
    out = tmp_path / "icebreaker"
    result = subprocess.run(
        [sys.executable, "-m", "ziphalp.hw.build", "icebreaker", "--out", str(out),
         "--allow-timing-fail"],
        capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    assert "fmax" in result.stdout

    report = json.loads((out / "report.json").read_text())
    for key, kind in [("board", str), ("device", str), ("utilisation", dict),
                      ("fmax_mhz", dict), ("params", dict), ("build_id", str),
                      ("clock_hz", int), ("timing_met", bool), ("dsp", dict)]:
        assert isinstance(report.get(key), kind), key
    assert report["board"] == "icebreaker"
    assert report["device"] == "iCE40UP5K-SG48"
    clock_hz = BOARD_PARAMS["icebreaker"].clock_hz
    assert report["clock_hz"] == report["params"]["clock_hz"] == clock_hz
    assert report["fmax_mhz"]["constraint"] == pytest.approx(clock_hz / 1e6, rel=1e-3)

    # Parameters and build id are those of the board's engine.
    params = hwbuild.TARGETS["icebreaker"].params
    assert report["params"] == {k: getattr(params, k) for k in report["params"]}
    assert report["build_id"] == f"0x{params.build_id:08x}"

    # Utilisation: the device limits and what the design must contain.
    util = report["utilisation"]
    for cell, limit in [("ICESTORM_LC", 5280), ("ICESTORM_DSP", 8), ("ICESTORM_RAM", 30),
                        ("ICESTORM_SPRAM", 4), ("ICESTORM_PLL", 1)]:
        assert util[cell]["available"] == limit, cell
        assert 0 <= util[cell]["used"] <= limit, cell
    assert util["ICESTORM_PLL"]["used"] == 1
    assert util["ICESTORM_LC"]["used"] > 0

    # Hard multipliers: as many as the design's products need, none broken.
    dsp = report["dsp"]
    assert dsp["cells"] == util["ICESTORM_DSP"]["used"]
    assert dsp["cells"] == dsp["expected"], dsp["rtl_multipliers"]
    assert dsp["undefined_inputs"] == 0
    assert dsp["driver_conflicts"] == 0

    bitstream = out / report["bitstream"]
    assert bitstream.exists()
    assert bitstream.stat().st_size == report["bitstream_bytes"] == UP5K_BIN_BYTES

    # Timing, last: the clock's Fmax, and no multiply left out of the analysis.
    problems = []
    fmax = report["fmax_mhz"]
    if not fmax["achieved"] >= fmax["constraint"]:
        problems.append(f"timing not met: {fmax['achieved']:.2f} MHz achieved < "
                        f"{fmax['constraint']:.2f} MHz")
    problems += report.get("timing_caveats", [])
    assert not problems, "\n".join(problems)
