"""The engine's pseudo-random lanes: one xorshift32 generator each.

The HALP update lanes (stochastic rounding of the offset) and the resident
store's sampling lanes (on-chip stochastic rounding of the data) use the same
generator and seeding (``ziphalp.hw.params``): lane ``l`` starts at ``(seed + (l +
1) * PRNG_GOLDEN) mod 2**32`` (``PRNG_ZERO_SEED`` if that is 0) and steps ``x ^= x
<< 13; x ^= x >> 17; x ^= x << 5``. The golden model's
:func:`~ziphalp.sim.golden.xorshift32` and :func:`~ziphalp.sim.golden.prng_seeds`
are the same in NumPy.
"""

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .params import PRNG_GOLDEN, PRNG_ZERO_SEED

__all__ = ["PRNGLane"]


class PRNGLane(wiring.Component):
    """Lane ``lane``'s xorshift32 generator.

    Attributes
    ----------
    seed : In(32); reseed : In(1)
        ``reseed`` loads the lane's start state for ``seed`` a cycle later (the start
        state is computed into a register in between); ``seed`` is held meanwhile,
        and the lane does not step in that cycle.
    step : In(1)
        Step the state.
    state : Out(32)
        The current state.
    next : Out(32)
        The state after one step: what a draw in a ``step`` cycle uses. Computed
        from ``state`` (three shift-and-xor levels), or, with ``registered_next``,
        a register kept one step ahead of ``state`` (the same value in every cycle,
        ready at the start of it: the HALP lanes add it to the step).
    """

    def __init__(self, lane: int, *, registered_next: bool = False):
        self.lane = lane
        self.registered_next = registered_next
        super().__init__({"seed": In(32), "reseed": In(1), "step": In(1),
                          "state": Out(32), "next": Out(32)})

    @staticmethod
    def step_of(x):
        """One xorshift32 step of ``x`` (32 bits), as logic."""
        x1 = x ^ (x << 13)[:32]
        x2 = x1 ^ (x1 >> 17)
        return x2 ^ (x2 << 5)[:32]

    def elaborate(self, platform):
        m = Module()
        state = self.state
        offset = ((self.lane + 1) * PRNG_GOLDEN) & 0xFFFFFFFF
        start = Signal(32)
        # the sum is 0 exactly when the seed is -offset: compared beside the adder
        m.d.sync += start.eq(Mux(self.seed == (-offset & 0xFFFFFFFF), PRNG_ZERO_SEED,
                                 (self.seed + offset)[:32]))
        load = Signal()
        m.d.sync += load.eq(self.reseed)
        if self.registered_next:
            ahead = Signal(32, name="ahead")
            m.d.comb += self.next.eq(ahead)
            with m.If(load):
                m.d.sync += ahead.eq(self.step_of(start))
            with m.Elif(self.step):
                m.d.sync += ahead.eq(self.step_of(ahead))
        else:
            m.d.comb += self.next.eq(self.step_of(state))
        with m.If(load):
            m.d.sync += state.eq(start)
        with m.Elif(self.step):
            m.d.sync += state.eq(self.next)
        return m
