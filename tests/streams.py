"""Testbench helpers for amaranth.lib.stream ports (Amaranth simulator)."""


async def stream_put(ctx, stream, payload, *, limit=1000):
    """Offer ``payload`` until it is taken (fail after ``limit`` cycles)."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    for _ in range(limit):
        _, _, ready = await ctx.tick().sample(stream.ready)
        if ready:
            break
    else:
        raise AssertionError(f"byte {payload:#04x} not taken in {limit} cycles")
    ctx.set(stream.valid, 0)
