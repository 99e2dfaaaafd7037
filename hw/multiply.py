"""Wide x narrow products made of DSP-sized signed pieces, one register deep.

The iCE40 UP5K's SB_MAC16 multiplies 16 x 16 bits and can hold its product in an
internal pipeline register; Yosys uses that register only when the product is
signed x signed, at most 16 x 16, and stored in a register without reset. A
wide operand is therefore cut into 16-bit slices. A slice below the top one is
unsigned, so it is made signed by flipping its top bit (``x = x' + 2**15``);
the sum of those offsets times ``b`` comes back as one extra term ``b << 15``
(per offset slice) that costs an adder, not a multiplier.

:func:`product_terms` returns terms whose sum is exactly ``a * b``, :data:`LATENCY`
cycles after ``a`` and ``b``; the caller adds them (usually in an adder tree).
Both the operands and the products sit in reset-less registers, which Yosys moves
into the SB_MAC16 (input registers and pipeline register): the multiply then
runs between two registers inside the block, where the timing analysis sees it.
Yosys does not do that for the ECP5's MULT18X18D, so a platform may offer its own
registered multiplier (``platform.registered_multiply(m, a, b, name)``, the ULX3S
platform's is :func:`ziphalp.hw.ecp5.registered_multiply`): the block with its
operand and product registers, the same two cycles deep. Hand-written because no
Amaranth library splits products for a DSP.
"""

from amaranth import Signal, signed

from .replica import REPLICA

__all__ = ["LATENCY", "SLICE", "product_terms", "term_count"]

#: Width of one DSP operand.
SLICE = 16
#: Cycles from the operands to the terms: operand registers, product registers.
LATENCY = 2


def term_count(a_bits: int) -> int:
    """How many terms :func:`product_terms` returns for an ``a_bits``-wide ``a``."""
    slices = -(-a_bits // SLICE)
    return slices + (slices > 1)


def product_terms(m, a, b, name: str, *, shared_a: bool = False, platform=None) -> list:
    """Registered terms summing to ``a * b``.

    Parameters
    ----------
    m : Module
    a : Value
        Signed, any width; cut into :data:`SLICE`-bit pieces.
    b : Value
        Signed, at most :data:`SLICE` bits.
    name : str
        Prefix for the product registers.
    shared_a : bool
        ``a`` is one value that other calls multiply too (a factor common to
        every lane): its registers are marked as replicas (``ziphalp.hw.replica``),
        so that synthesis keeps a copy beside each call's multipliers instead of
        merging them into one that reaches them all.
    platform : Platform or None
        The elaborating platform; when it has ``registered_multiply``, each piece's
        product is made by it (operands and product registered in the hard block)
        instead of flip-flops around a ``*``.

    Returns
    -------
    list of Value
        Signed terms, each already shifted into place, valid :data:`LATENCY`
        cycles after ``a`` and ``b``.
    """
    if len(b) > SLICE:
        raise ValueError(f"the narrow operand has {len(b)} bits; at most {SLICE} fit a DSP")
    a_bits, b_bits = len(a), len(b)
    b_reg = Signal(signed(b_bits), name=f"{name}_b", reset_less=True)
    m.d.sync += b_reg.eq(b)
    hard = getattr(platform, "registered_multiply", None)
    terms = []
    lo = 0
    while lo < a_bits:
        hi = min(lo + SLICE, a_bits)
        piece = a[lo:hi]
        if hi < a_bits:                      # unsigned slice: flip the top bit to go signed
            piece = piece ^ (1 << (SLICE - 1))
        if hard is not None:
            prod = hard(m, piece.as_signed(), b, f"{name}_p{lo}")
        else:
            a_reg = Signal(signed(hi - lo), name=f"{name}_a{lo}", reset_less=True,
                           attrs={REPLICA: 1} if shared_a else {})
            prod = Signal(signed(hi - lo + b_bits), name=f"{name}_p{lo}", reset_less=True,
                          attrs={"keep": 1})
            m.d.sync += [a_reg.eq(piece.as_signed()), prod.eq(a_reg * b_reg)]
        terms.append(prod << lo if lo else prod)
        lo = hi
    if a_bits > SLICE:
        # the offsets times b: one shifted copy of b per offset slice
        b_late = Signal(signed(b_bits), name=f"{name}_b2", reset_less=True)
        m.d.sync += b_late.eq(b_reg)
        terms.append(sum(b_late << (lo + SLICE - 1) for lo in range(0, a_bits - SLICE, SLICE)))
    return terms
