"""The interface between the link (command executor) and the SGD engine.

Described from the controller's side: the link holds ``Out(control_signature(p))``
and the engine ``In(control_signature(p))``; ``wiring.connect`` joins them.

Members
-------
``beats``        stream of W-bit beats with a ``flush`` bit. Per sample: one label
                 beat (label in the low ``LABEL.bits`` bits) then ``ceil(features /
                 K)`` feature beats, ``K = p.values_per_beat(k, double)`` the
                 values a beat carries at the run-time precision and sampling
                 mode. ``flush`` on any beat ends the mini-batch with the sample
                 that holds it.
configuration    one member per field of ``protocol.CONFIGURE``, of the same name
                 (``features``, ``batch``, ``shift``, ``k``, ``double``, ``loss``,
                 ``phase``, ``stochastic``, ``l2_shift``, ``cost_pos``,
                 ``cost_neg``, ``offset_bits``, ``scale_log``, ``seed``), just wide
                 enough for the field's valid range in this build (the table says
                 what each means). Held stable from ``start`` on while samples
                 stream; the link checks the ranges.
``start``        one-cycle strobe: clear the gradient buffer and the sample and
                 batch position (SGD), re-centre (HALP full pass) or choose the
                 offset grid (HALP inner loop). The engine is busy (``idle`` low)
                 meanwhile.
``idle``         nothing accepted is still being processed and no clear is
                 running (a sample still waiting for beats counts as idle).
                 Registered: low in the cycle after ``start`` or a beat taken,
                 high a cycle after the engine has drained.
``model_*``      random access to the model, only while ``idle``: ``model_read``
                 returns the weight of feature ``model_word * lanes + model_lane``
                 (word ``model_word`` of bank ``model_lane``) in ``model_rdata``
                 :func:`model_read_latency` cycles later (``model_word`` and
                 ``model_lane`` held); ``model_write`` writes ``model_wdata``
                 there, and ``idle`` is low in the next cycle (deep_pipeline: while
                 it lands).
``level_*``      ``level_write`` writes level ``level_index`` (``LEVEL`` word
                 ``level_data``) into the level table, only while ``idle`` (low
                 in the next cycle, as for a model write).
``overflow``     sticky: a model update saturated. ``clipped``: sticky, a scaled
                 residual saturated. ``clear_flags`` clears both.
``sample_done``  one-cycle strobe per sample fully processed;
                 ``update_done`` one per model update (batch end).
"""

from amaranth.hdl import Shape, signed
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out, Signature

from .params import LEVEL, EngineParams
from .protocol import CONFIGURE, Field

__all__ = ["beat_layout", "config_shape", "control_signature", "model_read_latency"]



def model_read_latency(p: EngineParams) -> int:
    """Cycles from ``model_read`` to its word in ``model_rdata``: the block RAM's read
    and the lane's word; with ``deep_pipeline`` also the request's register, the
    words held in flip-flops and the word of the bank's group of four."""
    return 5 if p.deep_pipeline else 2


def beat_layout(p: EngineParams) -> data.StructLayout:
    """A beat on the engine's input: ``beat_bits`` of data and the ``flush`` bit."""
    return data.StructLayout({"data": p.beat_bits, "flush": 1})


def config_shape(field: Field, p: EngineParams) -> range | Shape:
    """The control member of a CONFIGURE field: wide enough for its range in this build."""
    values = field.values(p)
    return range(values.stop) if values.start >= 0 else Shape.cast(values)


def control_signature(p: EngineParams) -> Signature:
    """The link's side of the engine's control interface (module docstring)."""
    return Signature({
        "beats": Out(stream.Signature(beat_layout(p))),
        **{field.name: Out(config_shape(field, p)) for field in CONFIGURE.fields},
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
