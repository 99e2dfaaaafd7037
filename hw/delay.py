"""Delay lines: a value through a chain of registers, every stage a tap.

Amaranth 0.5 has no delay-line helper. Pipelines here carry values beside their
arithmetic (a beat's place, a sample's tag, an operand waiting for its partner);
every such chain is made by :func:`delay_line` so that they are all alike.
"""

from amaranth import Signal

__all__ = ["delay_line", "delayed"]


def delay_line(m, value, cycles: int, name: str) -> list:
    """``value`` and its ``cycles`` registered copies: entry ``i`` is ``value`` ``i``
    cycles ago (entry 0 is ``value`` itself). Each register is named ``{name}d{i}``."""
    taps = [value]
    for i in range(cycles):
        reg = Signal.like(value, name=f"{name}d{i}")
        m.d.sync += reg.eq(taps[-1])
        taps.append(reg)
    return taps


def delayed(m, value, cycles: int, name: str):
    """``value`` through ``cycles`` registers."""
    return delay_line(m, value, cycles, name)[-1]
