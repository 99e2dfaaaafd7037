"""The ULX3S board (ECP5-85F, CABGA381): its pins, its platform and its parts.

The 25 MHz oscillator on pin G2 feeds an ECP5 PLL (:class:`ziphalp.hw.ecp5.ECP5PLL`),
which makes the engine clock: 60 MHz with the board's engine
(``BOARD_PARAMS["ulx3s"].clock_hz``). The rest is the generic
:class:`ziphalp.hw.top.BoardTop`: the FT231X UART (resource ``"uart"``) into
the board core, LED 0 lit once the design is out of reset, LED 1 showing UART
traffic, the FIRE1 button restarting the design.

The FT231X needs nothing else from the FPGA. Its DTR and RTS lines are inputs
the design ignores. ``amaranth-boards`` names pin L3 ``uart_tx_enable`` and
makes it an output, but on the board it is the FT231X's TXDEN, an input to the
FPGA (the board's own constraint file says "FPGA receives"): the top level does
not request it, so the FPGA never drives against the FT231X.

:data:`TARGET` is the board's entry in the bitstream build
(``python -m ziphalp.hw.build ulx3s``). This module only chooses and wires
parts; logic belongs in ``top.py`` (any board) or ``ecp5.py`` (any ECP5).
"""

from amaranth.hdl import Elaboratable

from .ecp5 import ECP5, ECP5PLL, registered_multiply
from .params import BOARD_PARAMS, EngineParams
from .target import BuildTarget
from .top import BoardPins, BoardTop

__all__ = ["CLK_IN_HZ", "PINS", "TARGET", "ULX3STop", "ulx3s_platform"]

#: Frequency of the ULX3S's oscillator (pin G2, resource ``"clk25"``).
CLK_IN_HZ = 25_000_000
#: Where the generic top level finds the UART, LEDs and button.
PINS = BoardPins(led_run=("led", 0), led_traffic=("led", 1), uart=("uart", 0),
                 button=("button_fire", 0))


def ulx3s_platform():
    """The Amaranth platform of the 85F board (from ``amaranth-boards``).

    The board's platform asks for ``openFPGALoader`` before it builds, although
    only programming runs it; this one leaves it out, so that a bitstream builds
    with the YoWASP tools alone (``openFPGALoader -b ulx3s ziphalp.bit`` loads it).
    It offers the ECP5's multiplier with its registers as ``registered_multiply``
    (the engine's products, :mod:`ziphalp.hw.multiply`).
    """
    from amaranth_boards.ulx3s import ULX3S_85F_Platform

    class ULX3S85FBuildPlatform(ULX3S_85F_Platform):
        registered_multiply = staticmethod(registered_multiply)

        @property
        def required_tools(self):
            return [tool for tool in super().required_tools if tool != "openFPGALoader"]

    return ULX3S85FBuildPlatform()


class ULX3STop(BoardTop):
    """ULX3S top level: the ECP5 PLL from ``clk25``, then :class:`BoardTop`.

    Parameters
    ----------
    params : EngineParams
        Engine parameters. Their ``clock_hz`` is the wanted engine clock unless
        ``clock_hz`` is given; :attr:`params` holds a copy whose ``clock_hz`` is
        the frequency the PLL really makes.
    baud : int
        UART bit rate to the FT231X (3 Mbaud is its fastest).
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
        clock = ECP5PLL("clk25", CLK_IN_HZ, wanted)
        super().__init__(params, clock, PINS, baud, core=core)


#: How to build the ULX3S bitstream.
TARGET = BuildTarget(
    name="ulx3s",
    description="ULX3S (ECP5 LFE5U-85F-6BG381), 25 MHz oscillator, FT231X UART",
    platform=ulx3s_platform,
    top=ULX3STop,
    # The same parameters the simulated board sim-ulx3s runs.
    params=BOARD_PARAMS["ulx3s"],
    family=ECP5,
    # The full design routes from this placement seed (84.3 MHz, no overuse after 61
    # router2 iterations; seed 5 routes it too, at 84.9). Seed 3, the seed before,
    # left the reset's arc into its global buffer unroutable on an earlier netlist and
    # router2 unconverged on another; seed 2 and nextpnr's default seed failed on
    # earlier ones in the same ways (README, "ULX3S").
    # A build whose routing fails that way tries the next seeds (ziphalp.hw.build).
    # Builds with other parameters keep nextpnr's default.
    seed=4,
)
