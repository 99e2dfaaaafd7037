"""Signed saturation by a sign-extension test (shallow logic, no carry chain).

``value`` fits ``bits`` signed bits exactly when its bits from ``bits - 1`` up
are all equal; otherwise it clips to the most negative or most positive value by
its sign. Comparators against the limits would cost a full-width carry chain.
"""

from amaranth import Cat, Mux, Signal, signed

__all__ = ["saturate"]


def saturate(m, value, bits: int, name: str):
    """Return ``(result, clipped)``: ``value`` clipped to ``bits`` signed bits (comb)."""
    top = value[bits - 1:]
    clipped = Signal(name=f"{name}_clipped")
    m.d.comb += clipped.eq(~(top.all() | ~top.any()))
    limit = Cat((~value[-1]).replicate(bits - 1), value[-1])   # max if >= 0, min if < 0
    result = Signal(signed(bits), name=f"{name}_sat")
    m.d.comb += result.eq(Mux(clipped, limit, value[:bits]))
    return result, clipped
