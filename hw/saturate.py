"""Signed saturation by a sign-extension test (shallow logic, no carry chain).

``value`` fits ``bits`` signed bits exactly when its bits from ``bits - 1`` up
are all equal; otherwise it clips to the most negative or most positive value by
its sign. Comparators against the limits would cost a full-width carry chain.
"""

from amaranth import Cat, Mux, Signal, signed

__all__ = ["fits", "saturate", "saturated"]


def fits(value, bits: int):
    """Whether the signed ``value`` fits ``bits`` signed bits: its bits from
    ``bits - 1`` up are all its sign."""
    top = value[bits - 1:]
    return top.all() | ~top.any()


def _limit(value, bits: int):
    """The most positive ``bits``-bit value if ``value`` is >= 0, else the most negative."""
    return Cat((~value[-1]).replicate(bits - 1), value[-1])


def saturate(m, value, bits: int, name: str):
    """Return ``(result, clipped)``: ``value`` clipped to ``bits`` signed bits (comb)."""
    clipped = Signal(name=f"{name}_clipped")
    m.d.comb += clipped.eq(~fits(value, bits))
    result = Signal(signed(bits), name=f"{name}_sat")
    m.d.comb += result.eq(Mux(clipped, _limit(value, bits), value[:bits]))
    return result, clipped


def saturated(value, bits: int):
    """``value`` (signed) clipped to ``bits`` bits as an expression, or ``value`` itself
    if it is no wider."""
    if len(value) <= bits:
        return value
    return Mux(fits(value, bits), value[:bits], _limit(value, bits)).as_signed()
