"""Replicated registers: a setting every lane reads, in a register per lane.

A setting that all lanes read (the HALP clamp bounds, the offset shift, the phase,
the decay shift, a batch end) is, registered once, one flip-flop per bit whose net
spans every lane's logic: on the 8-lane ULX3S engine the clamp bound ``z_max``
alone spent 13 ns in routing, the longest path of the build. A register per lane,
loaded from the same value in the same cycle, keeps each net within its lane and
changes no timing. Synthesis merges identical flip-flops (Yosys' ``opt_merge``)
unless they are marked ``keep``, so the registers made here carry the wire
attribute :data:`REPLICA`, and the build flow runs :data:`KEEP_REPLICAS` after
reading the design (``ziphalp.hw.build``).
"""

from amaranth import Cat, Signal

__all__ = ["KEEP_REPLICAS", "REPLICA", "copies", "replica", "replicas"]

#: Wire attribute of a replicated register's output.
REPLICA = "ziphalp_replica"

#: Yosys command: mark ``keep`` the flip-flops that drive replica wires (the cells on
#: those wires through a ``Q`` port), so that ``opt_merge`` leaves them apart.
KEEP_REPLICAS = f"setattr -set keep 1 a:{REPLICA} %ci1:+[Q]"


def replica(m, value, name: str) -> Signal:
    """A register loaded with ``value`` every cycle (``value`` one cycle ago), named
    ``name``, that synthesis keeps apart from its equals."""
    reg = Signal.like(value, name=name, attrs={REPLICA: 1})
    m.d.sync += reg.eq(value)
    return reg


def replicas(m, value, copies: int, name: str, *, registered: bool = True) -> list:
    """``copies`` registers, each loaded with ``value`` every cycle (so each is
    ``value`` one cycle ago), named ``{name}{i}``; without ``registered``, ``value``
    itself ``copies`` times."""
    if not registered:
        return [value] * copies
    return [replica(m, value, f"{name}{i}") for i in range(copies)]


def copies(m, value, value_next, count: int, name: str, *, registered: bool):
    """``count`` copies of the 1-bit ``value``, as a vector: with ``registered`` each
    a register of its own loaded from ``value_next`` (what ``value`` will be in
    the next cycle, so that every copy equals ``value``), else ``value`` itself."""
    if registered:
        return Cat(replicas(m, value_next, count, name))
    return value.replicate(count)
