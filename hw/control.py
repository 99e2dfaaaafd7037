"""The interface between the link (command executor) and the SGD engine.

Described from the controller's side: the link holds ``Out(control_signature(p))``
and the engine ``In(control_signature(p))``; ``wiring.connect`` joins them.

Members
-------
``beats``        stream of W-bit beats with a ``flush`` bit. Per sample: one label
                 beat (label in the low ``LABEL.bits`` bits) then
                 ``ceil(features / lanes)`` feature beats. ``flush`` on any beat
                 ends the mini-batch with the sample that holds it.
``features``     d, 1..max_features; ``batch`` B, 1..max_batch; ``shift`` step
                 shift 0..SHIFT_MAX. Held stable from ``start`` on while
                 samples stream; the link checks the ranges.
``start``        one-cycle strobe: clear the gradient buffer and the sample and
                 batch position. The engine is busy (``idle`` low) while it clears.
``idle``         nothing accepted is still being processed and no clear is
                 running (a sample still waiting for beats counts as idle).
``model_*``      random access to the model, only while ``idle``: ``model_read``
                 returns the weight at (``model_word``, ``model_lane``) in
                 ``model_rdata`` on the next cycle; ``model_write`` writes
                 ``model_wdata`` there.
``overflow``     sticky: a model update saturated. ``clipped``: sticky, a scaled
                 residual saturated. ``clear_flags`` clears both.
``sample_done``  one-cycle strobe per sample fully processed;
                 ``update_done`` one per model update (batch end).
"""

from amaranth.hdl import signed
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out, Signature

from .params import SHIFT_MAX, EngineParams

__all__ = ["beat_layout", "control_signature"]


def beat_layout(p: EngineParams) -> data.StructLayout:
    return data.StructLayout({"data": p.beat_bits, "flush": 1})


def control_signature(p: EngineParams) -> Signature:
    return Signature({
        "beats": Out(stream.Signature(beat_layout(p))),
        "features": Out(range(p.max_features + 1)),
        "batch": Out(range(p.max_batch + 1)),
        "shift": Out(range(SHIFT_MAX + 1)),
        "start": Out(1),
        "idle": In(1),
        "model_word": Out(range(p.words)),
        "model_lane": Out(range(max(2, p.lanes))),   # never zero bits wide
        "model_read": Out(1),
        "model_rdata": In(signed(p.model_bits)),
        "model_write": Out(1),
        "model_wdata": Out(signed(p.model_bits)),
        "overflow": In(1),
        "clipped": In(1),
        "clear_flags": Out(1),
        "sample_done": In(1),
        "update_done": In(1),
    })
