"""The open FPGA toolchain: finding the YoWASP tools and reading what they leave.

The bitstream build (``ziphalp.hw.build``) runs Yosys, nextpnr and the packer
through Amaranth's platforms; this module finds the tools and reads their
output in the build folder: nextpnr's JSON report (utilisation, Fmax), the
multipliers Yosys dumped before synthesis, the hard multiplier cells of the
synthesised netlist, and the logs. What a family's hard multiplier is comes in
as a :class:`ziphalp.hw.target.HardMultiplier`.

This module must not run the flow, write reports or know a board or family.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

from .target import HardMultiplier

__all__ = [
    "BuildError",
    "check_dsp_cells",
    "count_driver_conflicts",
    "expected_dsps",
    "find_tool",
    "first_error",
    "read_critical_path",
    "read_multipliers",
    "read_nextpnr_report",
    "read_slow_endpoints",
    "setup_tools",
    "worst_clock",
]


class BuildError(Exception):
    """A build step failed (a tool is missing, failed or left no readable output).

    The message is one line.
    """


def find_tool(command: str) -> str | None:
    """Path of ``command``: next to the running interpreter first, then on ``PATH``."""
    beside = Path(sys.executable).parent / command
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(command)


def setup_tools(tools: dict[str, str], env: dict[str, str] | None = None) -> dict[str, str]:
    """Point the toolchain variables at the YoWASP tools unless they are already set.

    Parameters
    ----------
    tools : dict
        Environment variable -> YoWASP command (a family's ``tools``).
    env : dict or None
        Environment to read and update; :data:`os.environ` by default.

    Returns the variables in force; raises :exc:`BuildError` if a tool is missing.
    """
    env = os.environ if env is None else env
    used = {}
    for var, command in tools.items():
        if not env.get(var):
            path = find_tool(command)
            if path is None:
                raise BuildError(f"{command} not found: pip install 'ziphalp[build]', "
                                f"or set {var} to the tool")
            env[var] = path
        used[var] = env[var]
    return used


# --- nextpnr ---------------------------------------------------------------------------

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


def read_critical_path(path: Path, net: str) -> dict | None:
    """The critical path of clock ``net`` in nextpnr's ``--report`` JSON, summarised.

    Returns None if the report has no register-to-register path on ``net``. The
    summary gives the path's delay split by step type (``clk-to-q``, ``logic``,
    ``routing``, ``setup``), its first and last cell, the number of logic steps
    and the Python source lines (file name and line) of the nets it routes
    through, in path order.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read nextpnr report {path}: {exc}") from None
    edge = f"posedge {net}"
    steps = next((entry.get("path", []) for entry in data.get("critical_paths", [])
                  if entry.get("from") == edge and entry.get("to") == edge), None)
    if not steps:
        return None
    by_type: dict[str, float] = {}
    sources: list[str] = []
    for step in steps:
        kind = step.get("type", "?")
        by_type[kind] = round(by_type.get(kind, 0.0) + float(step.get("delay", 0.0)), 3)
        for source in step.get("sources", []):
            short = Path(source).name       # "dot.py:61"; Yosys' own cell maps left out
            if ".py:" in short and short not in sources:
                sources.append(short)

    def end(point: dict) -> str:
        return f"{point.get('cell', '?')}.{point.get('port', '?')}"

    return {
        "clock": net,
        "delay_ns": round(sum(by_type.values()), 3),
        "by_type_ns": by_type,
        "from": end(steps[0].get("from", {})),
        "to": end(steps[-1].get("to", {})),
        "logic_steps": sum(step.get("type") == "logic" for step in steps),
        "sources": sources,
    }


#: Endpoints slower than this share of the slowest go into :func:`read_slow_endpoints`.
SLOW_SHARE = 0.8

# A mapped cell's name is its register's or memory's name, a number Yosys gave it,
# then what the mapping added (`..._TRELLIS_FF_Q_7`, `..._SB_DFFE_Q`).
_CELL_SUFFIX = re.compile(r"_(TRELLIS|SB|ICESTORM)_.*$")
_CELL_NUMBER = re.compile(r"\$\d+")


def read_slow_endpoints(path: Path, net: str, *, groups: int = 20) -> list[dict]:
    """Where the slowest paths of clock ``net`` end, from nextpnr's ``--report`` JSON
    with ``--detailed-timing-report``: every endpoint (flip-flop or memory input)
    whose arrival time (setup not counted) is above :data:`SLOW_SHARE` of the
    slowest, grouped by the register or memory it belongs to.

    Returns up to ``groups`` groups, slowest first, each ``{"cell": <name>,
    "arrival_ns": <its slowest endpoint>, "endpoints": <how many are that slow>}``.
    The critical path shows one path; these show how many places are nearly as
    slow, and which. An empty list if the report has no detailed timing.
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read nextpnr report {path}: {exc}") from None
    edge = f"posedge {net}"
    arrivals = []
    for timing in data.get("detailed_net_timings", []):
        if timing.get("event") != edge:
            continue
        for endpoint in timing.get("endpoints", []):
            if endpoint.get("event") == edge:
                delay = endpoint.get("delay", 0.0)
                arrivals.append((float(max(delay) if isinstance(delay, list) else delay),
                                 endpoint.get("cell", "?")))
    if not arrivals:
        return []
    floor = SLOW_SHARE * max(arrival for arrival, _ in arrivals)
    slow: dict[str, dict] = {}
    for arrival, cell in arrivals:
        if arrival < floor:
            continue
        name = _CELL_NUMBER.sub("", _CELL_SUFFIX.sub("", cell))
        group = slow.setdefault(name, {"cell": name, "arrival_ns": 0.0, "endpoints": 0})
        group["arrival_ns"] = max(group["arrival_ns"], round(arrival, 3))
        group["endpoints"] += 1
    return sorted(slow.values(), key=lambda g: (-g["arrival_ns"], g["cell"]))[:groups]


def worst_clock(clocks: dict) -> dict | None:
    """The clock with the smallest achieved/constraint ratio, or None if there is none."""
    if not clocks:
        return None
    return min(clocks.values(), key=lambda c: c["achieved"] / c["constraint"])


# --- Yosys -----------------------------------------------------------------------------

_RTLIL_CONST = re.compile(r"^-?\d+'[01xzm-]*$|^-?\d+$")


def read_multipliers(path: Path, hard_cell: str | None = None) -> list[dict]:
    """The ``$mul`` cells of the flattened design, from a Yosys ``dump`` of them, and
    the hard multipliers the design instantiates itself (cells of type ``hard_cell``:
    ``{"name": ..., "instance": hard_cell}``)."""
    if not path.exists():
        return []
    muls: list[dict] = []
    cell = None
    for line in path.read_text().splitlines():
        words = line.split()
        if not words:
            continue
        if words[0] == "cell" and len(words) >= 3:
            cell = None
            if words[1] == "$mul":
                cell = {"name": words[2]}
                muls.append(cell)
            elif hard_cell is not None and words[1].lstrip("\\") == hard_cell:
                muls.append({"name": words[2], "instance": hard_cell})
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


def expected_dsps(muls: list[dict], hard: HardMultiplier) -> int:
    """Hard multiplier blocks Yosys' ``mul2dsp`` mapping should use for ``muls``.

    An A x B product takes ``ceil(A / w) * ceil(B / w)`` blocks of width
    ``w = hard.max_width``; products narrower than the block's minimum widths
    stay in logic. Products by a constant are counted too (Yosys maps them alike).
    A block the design instantiates itself (``"instance"``) counts one.
    """
    total = 0
    for mul in muls:
        if mul.get("instance") == hard.cell:
            total += 1
            continue
        a, b, y = mul.get("a_width", 0), mul.get("b_width", 0), mul.get("y_width", 0)
        if min(a, b) < hard.min_width or y < hard.min_y:
            continue
        total += math.ceil(a / hard.max_width) * math.ceil(b / hard.max_width)
    return total


def check_dsp_cells(netlist: Path, hard: HardMultiplier) -> dict:
    """Count ``hard.cell`` cells in the synthesised netlist and the suspicious ones.

    A hard multiplier whose A or B input has ``x`` bits is the symptom of Yosys
    dropping a product during DSP inference. A block that ``hard.registered``
    finds without registers on both sides of its multiplier is counted in
    ``unregistered`` (nextpnr may not time the multiply itself, see
    :func:`_pseudo_clock_paths`); a registered one that ``hard.comb_output``
    finds driving the fabric from its adder is counted in ``comb_output``.
    """
    try:
        data = json.loads(netlist.read_text())
    except (OSError, ValueError) as exc:
        raise BuildError(f"cannot read synthesised netlist {netlist}: {exc}") from None
    cells = undefined = unregistered = comb_output = 0
    for module in data.get("modules", {}).values():
        for cell in module.get("cells", {}).values():
            if cell.get("type") != hard.cell:
                continue
            cells += 1
            conns = cell.get("connections", {})
            if any(bit == "x" for port in ("A", "B") for bit in conns.get(port, [])):
                undefined += 1
            if hard.registered is not None and not hard.registered(cell):
                unregistered += 1
            elif hard.comb_output is not None and hard.comb_output(cell):
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


def first_error(log: Path) -> str:
    """First ``ERROR:`` line of a tool log, or ``""``."""
    try:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("ERROR:"):
                return line.strip()
    except OSError:
        pass
    return ""
