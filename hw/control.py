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
                 shift 0..SHIFT_MAX; ``k`` precision 1..max_k; ``double``
                 double sampling; ``loss`` a ``Loss``; ``l2_shift`` 0..L2_SHIFT_MAX;
                 ``cost_pos``/``cost_neg`` class costs. Held stable from
                 ``start`` on while samples stream; the link checks the ranges.
``phase``        a ``Phase``; ``stochastic``, ``offset_bits``, ``scale_log``, ``seed``:
                 the HALP fields of ``CONFIGURE`` (``ziphalp.hw.params``).
``start``        one-cycle strobe: clear the gradient buffer and the sample and
                 batch position (SGD), re-centre (HALP full pass) or choose the
                 offset grid (HALP inner loop). The engine is busy (``idle`` low)
                 meanwhile.
``idle``         nothing accepted is still being processed and no clear is
                 running (a sample still waiting for beats counts as idle).
``model_*``      random access to the model, only while ``idle``: ``model_read``
                 returns the weight of feature ``model_word * lanes + model_lane``
                 (word ``model_word`` of bank ``model_lane``) in ``model_rdata``
                 on the next cycle; ``model_write`` writes ``model_wdata`` there.
``level_*``      ``level_write`` writes level ``level_index`` (``LEVEL`` word
                 ``level_data``) into the level table, only while ``idle``.
``overflow``     sticky: a model update saturated. ``clipped``: sticky, a scaled
                 residual saturated. ``clear_flags`` clears both.
``sample_done``  one-cycle strobe per sample fully processed;
                 ``update_done`` one per model update (batch end).
"""

from amaranth.hdl import signed
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out, Signature

from .params import (
    COST_BITS,
    L2_SHIFT_MAX,
    LEVEL,
    OFFSET_BITS,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
)

__all__ = ["beat_layout", "control_signature"]


def beat_layout(p: EngineParams) -> data.StructLayout:
    return data.StructLayout({"data": p.beat_bits, "flush": 1})


def control_signature(p: EngineParams) -> Signature:
    return Signature({
        "beats": Out(stream.Signature(beat_layout(p))),
        "features": Out(range(p.max_features + 1)),
        "batch": Out(range(p.max_batch + 1)),
        "shift": Out(range(SHIFT_MAX + 1)),
        "k": Out(range(p.max_k + 1)),
        "double": Out(1),
        "loss": Out(range(len(Loss))),
        "l2_shift": Out(range(L2_SHIFT_MAX + 1)),
        "cost_pos": Out(COST_BITS),
        "cost_neg": Out(COST_BITS),
        "phase": Out(range(len(Phase))),
        "stochastic": Out(1),
        "offset_bits": Out(range(OFFSET_BITS + 1)),
        "scale_log": Out(signed(SCALE_LOG_BITS)),
        "seed": Out(32),
        "start": Out(1),
        "idle": In(1),
        "model_word": Out(range(p.bank_depth)),
        "model_lane": Out(range(max(2, p.lanes))),   # never zero bits wide
        "model_read": Out(1),
        "model_rdata": In(signed(p.model_bits)),
        "model_write": Out(1),
        "model_wdata": Out(signed(p.model_bits)),
        "level_write": Out(1),
        "level_index": Out(range(p.levels_max)),
        "level_data": Out(signed(LEVEL.bits)),
        "overflow": In(1),
        "clipped": In(1),
        "clear_flags": Out(1),
        "sample_done": In(1),
        "update_done": In(1),
    })
