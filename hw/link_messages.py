"""The protocol's payloads as Amaranth layouts, and a received request as an interface.

Everything here is derived from the field tables of :mod:`ziphalp.hw.protocol`:
:func:`message_layout` turns a table into a ``data.StructLayout`` with the wire
order and widths (a :class:`~ziphalp.hw.protocol.Bits` byte becomes a nested
layout with its ``reserved`` bits), so the link reads CONFIGURE's arguments and
builds the IDENTIFY and STATUS replies by field name. It holds no logic.
"""

import struct

from amaranth.hdl import Cat, Const, Value, signed, unsigned
from amaranth.lib import data
from amaranth.lib.wiring import In, Out, Signature

from .params import EngineParams
from .protocol import (
    CONFIGURE,
    DATA_HEADER,
    MODEL_HEADER,
    REPLAY,
    RUN,
    SYNC,
    Bits,
    Field,
    Fixed,
    Message,
    Status,
)

__all__ = [
    "ARGS_LAYOUT", "ARGS_BYTES", "LEVEL_BYTES", "REPLY_HEADER_BYTES", "WEIGHT_BYTES",
    "buffer_depth", "field_value", "message_layout", "message_value", "request_signature",
]

#: Bytes of one weight in LOAD_MODEL and READ_MODEL payloads (int32).
WEIGHT_BYTES = 4
#: Bytes of one level in LOAD_LEVELS payloads (int16).
LEVEL_BYTES = 2
#: Reply bytes before the payload: sync word, cmd, status, seq, len.
REPLY_HEADER_BYTES = len(SYNC) + 5
assert MODEL_HEADER.size == WEIGHT_BYTES


def _shape(field: Field):
    return signed(field.bits) if field.signed else unsigned(field.bits)


def message_layout(message: Message) -> data.StructLayout:
    """The payload of ``message`` as a layout, in wire order (bytes little-endian)."""
    members = {}
    for item in message.items:
        if isinstance(item, Bits):
            bits = {f.name: _shape(f) for f in item.fields}
            members[item.name] = data.StructLayout(
                {**bits, "reserved": 8 - sum(f.bits for f in item.fields)})
        elif isinstance(item, Fixed):
            members[item.name] = 8 * struct.calcsize(item.code)
        else:
            members[item.name] = _shape(item)
    layout = data.StructLayout(members)
    assert layout.size == 8 * message.size
    return layout


def field_value(view: data.View, message: Message, name: str) -> Value:
    """Field ``name`` of a ``message_layout(message)`` view (inside its byte if a bit field)."""
    group = message.groups[name]
    return view[group][name] if group else view[name]


def message_value(message: Message, values: dict) -> Value:
    """The payload of ``message`` from ``values`` (field name to a value of at most
    the field's width, zero-extended), fixed bytes and reserved bits filled in."""
    parts = []
    for item in message.items:
        if isinstance(item, Fixed):
            size = 8 * struct.calcsize(item.code)
            fixed = int.from_bytes(item.value, "little") if item.value else 0
            parts.append(Const(fixed, size))
            continue
        fields = item.fields if isinstance(item, Bits) else (item,)
        for f in fields:
            value = Value.cast(values[f.name])
            assert len(value) <= f.bits, f"{f.name}: {len(value)} bits, the wire has {f.bits}"
            parts.append(Cat(value, Const(0, f.bits - len(value))))
        if isinstance(item, Bits):
            parts.append(Const(0, 8 - sum(f.bits for f in fields)))
    return Cat(*parts)


#: The first payload bytes of a request, kept in registers, as the commands read them.
ARGS_LAYOUT = data.UnionLayout({
    "configure": message_layout(CONFIGURE),
    "model": message_layout(MODEL_HEADER),      # count is reserved (0) for LOAD
    "status": data.StructLayout({"flags": 8}),
    "data": message_layout(DATA_HEADER),
    "run": message_layout(RUN),
    "replay": message_layout(REPLAY),
})
ARGS_BYTES = ARGS_LAYOUT.size // 8
assert CONFIGURE.size == ARGS_BYTES


def buffer_depth(p: EngineParams) -> int:
    """Beats in the frame buffer: one request payload of ``frame_bytes``."""
    return p.frame_bytes // (p.beat_bits // 8)


def request_signature(p: EngineParams) -> Signature:
    """A received request, from the receiver's side. Held while ``valid``, until ``done``."""
    return Signature({
        "valid": Out(1),
        "cmd": Out(8),
        "seq": Out(8),                  # the request's sequence number (0: unnumbered)
        "length": Out(16),
        "status": Out(Status),          # OK, or CRC / LENGTH / TIMEOUT found while receiving
        "args": Out(ARGS_LAYOUT),       # first payload bytes (stale beyond the payload)
        "beats": Out(range(buffer_depth(p) + 1)),  # whole beats written to the frame buffer
        "whole": Out(1),                # the payload is a whole number of beats
        "wide": Out(1),                 # an int16 at an even payload offset does not fit a LEVEL
        "done": In(1),                  # reply sent: hunt for the next request
    })
