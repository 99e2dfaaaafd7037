"""What the bitstream build needs to know about a board and its FPGA family.

A :class:`BuildTarget` names a board, its Amaranth platform, its top level and
its engine parameters, and points at the :class:`Family` of its FPGA: the
YoWASP tools, the synthesis options, the cells worth a line in the summary and
the :class:`HardMultiplier` whose use the build checks. Each board module
(``ziphalp.hw.icebreaker``) defines its ``TARGET``; each family module
(``ziphalp.hw.ice40``) defines its family; ``ziphalp.hw.build`` keeps the
registry and runs the flow.

This module holds descriptions only: it must not run tools, read reports or
import a board or family module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .params import EngineParams

__all__ = ["BuildTarget", "Family", "HardMultiplier"]


@dataclass(frozen=True)
class HardMultiplier:
    """A family's hard multiplier block, as the DSP check sees it.

    Parameters
    ----------
    cell : str
        Cell type of the block in the synthesised netlist (``"SB_MAC16"``).
    max_width : int
        Widest A or B operand one block takes; Yosys' ``mul2dsp`` splits wider
        products into ``ceil(A / max_width) * ceil(B / max_width)`` blocks.
    min_width : int
        Products with a narrower operand stay in logic.
    min_y : int
        Products with a narrower result stay in logic.
    registered : callable or None
        ``registered(cell)`` tells, from the cell's netlist entry, whether the
        block has registers on both sides of its multiplier (else nextpnr may
        not time the multiply). None if the family needs no such check.
    comb_output : callable or None
        ``comb_output(cell)`` tells whether a registered block drives the fabric
        from its output adder without the output register.
    """

    cell: str
    max_width: int
    min_width: int
    min_y: int
    registered: Callable[[dict], bool] | None = None
    comb_output: Callable[[dict], bool] | None = None


@dataclass(frozen=True)
class Family:
    """How the build flow treats one FPGA family.

    Parameters
    ----------
    name : str
        Family name, for messages (``"iCE40"``).
    tools : dict
        Environment variable -> YoWASP command, for the tools the flow runs.
    overrides : dict
        Amaranth platform build overrides (``synth_opts``...).
    pnr_opts_override : str
        Name of the override carrying extra place-and-route options.
    dsp : HardMultiplier or None
        The hard multiplier whose use the build checks, if any.
    summary : dict
        Short label -> nextpnr cell type, for the printed summary.
    bitstream : str
        Suffix of the bitstream file the family's packer writes (``"bin"``).
    """

    name: str
    tools: dict[str, str]
    overrides: dict[str, str] = field(default_factory=dict)
    pnr_opts_override: str = "nextpnr_opts"
    dsp: HardMultiplier | None = None
    summary: dict[str, str] = field(default_factory=dict)
    bitstream: str = "bin"


@dataclass(frozen=True)
class BuildTarget:
    """How to build for one board.

    Parameters
    ----------
    name : str
        Name on the command line, and the ``"board"`` of ``report.json``.
    description : str
        One line for ``--help``.
    platform : callable
        Makes the Amaranth platform.
    top : callable
        ``top(params, baud)`` makes the top-level elaboratable; the result has a
        ``params`` attribute (with ``clock_hz`` as really built) and may have
        ``clock`` (a :class:`ziphalp.hw.top.ClockGenerator`) and ``divisor``.
    params : EngineParams
        Default engine parameters.
    family : Family
        The board's FPGA family.
    seed : int or None
        nextpnr's placement seed for builds of the board's own parameters (None, and
        for any other parameters: nextpnr's default). Whether a congested design
        routes depends on its placement; a board whose design routes only from some
        seeds names one that does.
    """

    name: str
    description: str
    platform: Callable[[], Any]
    top: Callable[[EngineParams, int], Any]
    params: EngineParams
    family: Family
    seed: int | None = None
