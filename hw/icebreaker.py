"""The iCEBreaker board (iCE40UP5K-SG48): its pins, its platform and its parts.

The 12 MHz oscillator on pin 35 feeds the iCE40 PLL (:class:`ziphalp.hw.ice40.ICE40PLL`),
which makes the engine clock: 33 MHz with the board's engine
(``BOARD_PARAMS["icebreaker"].clock_hz``). The rest is the generic
:class:`ziphalp.hw.top.BoardTop`: the FTDI UART (FT2232H, resource ``"uart"``)
into the board core, the green LED lit once the design is out of reset, the red
LED showing UART traffic, the user button restarting the design.

:data:`TARGET` is the board's entry in the bitstream build
(``python -m ziphalp.hw.build icebreaker``). This module only chooses and wires
parts; logic belongs in ``top.py`` (any board) or ``ice40.py`` (any iCE40).
"""

import dataclasses

from amaranth.hdl import Elaboratable

from .ice40 import ICE40, ICE40PLL, ICE40SPRAM
from .params import BOARD_PARAMS, EngineParams
from .target import BuildTarget
from .top import BoardPins, BoardTop

__all__ = ["CLK_IN_HZ", "PINS", "TARGET", "TARGET_REPLAY", "ICEBreakerTop",
           "icebreaker_platform"]

#: Frequency of the iCEBreaker's oscillator (pin 35, resource ``"clk12"``).
CLK_IN_HZ = 12_000_000
#: Where the generic top level finds the UART, LEDs and button.
PINS = BoardPins(led_run=("led_g", 0), led_traffic=("led_r", 0), uart=("uart", 0),
                 button=("button", 0))


def icebreaker_platform():
    """The Amaranth platform of the board (from ``amaranth-boards``), offering the
    UP5K's SPRAM blocks as ``single_port_ram`` (:class:`ziphalp.hw.replay.ReplaySource`
    keeps its beats there)."""
    from amaranth_boards.icebreaker import ICEBreakerPlatform

    class Platform(ICEBreakerPlatform):
        @staticmethod
        def single_port_ram(width: int, depth: int) -> ICE40SPRAM:
            return ICE40SPRAM(width, depth)

    return Platform()


class ICEBreakerTop(BoardTop):
    """iCEBreaker top level: the iCE40 PLL from ``clk12``, then :class:`BoardTop`.

    Parameters
    ----------
    params : EngineParams
        Engine parameters. Their ``clock_hz`` is the wanted engine clock unless
        ``clock_hz`` is given; :attr:`params` holds a copy whose ``clock_hz`` is
        the frequency the PLL really makes.
    baud : int
        UART bit rate to the FTDI (3 Mbaud is safe with the FT2232H).
    clock_hz : int or None
        Wanted engine clock; overrides ``params.clock_hz``.
    core : Elaboratable or None
        The design behind the UART (see :class:`BoardTop`).

    Raises
    ------
    ValueError
        If the PLL cannot make the clock or the UART cannot run at ``baud``.
    """

    def __init__(self, params: EngineParams, baud: int = 3_000_000, *,
                 clock_hz: int | None = None, core: Elaboratable | None = None):
        wanted = params.clock_hz if clock_hz is None else clock_hz
        clock = ICE40PLL("clk12", CLK_IN_HZ, wanted)
        super().__init__(params, clock, PINS, baud, core=core)


#: How to build the iCEBreaker bitstream.
TARGET = BuildTarget(
    name="icebreaker",
    description="iCEBreaker (iCE40UP5K-SG48), 12 MHz oscillator, FT2232H UART",
    platform=icebreaker_platform,
    top=ICEBreakerTop,
    # The same parameters the simulated board runs.
    params=BOARD_PARAMS["icebreaker"],
    family=ICE40,
)
#: The iCEBreaker with its four SPRAMs as a replay store (k up to 4, 24 MHz).
TARGET_REPLAY = dataclasses.replace(
    TARGET, name="icebreaker-replay",
    description="iCEBreaker with a 128 KB replay store in its SPRAMs (k <= 4, 24 MHz)",
    params=BOARD_PARAMS["icebreaker-replay"])
