"""The link's request executor: a checked request in, the engine driven, the reply out.

:class:`LinkExecutor` runs one state machine whose states are grouped by
command family, one method each: taking and dispatching a request
(:meth:`~LinkExecutor._request_states`; CONFIGURE's fields load a cycle later),
the engine's start and the beat stream (:meth:`~LinkExecutor._engine_states`),
the model port (:meth:`~LinkExecutor._model_states`), the level table
(:meth:`~LinkExecutor._level_states`), the data stores' loads, runs and replays
(:meth:`~LinkExecutor._data_states`, builds with resident data or a replay
store: the resident store, :class:`~ziphalp.hw.resident.ResidentSource`, and the
replay store, :class:`~ziphalp.hw.replay.ReplaySource`, are the executor's
sources of beats besides the frame buffer) and the reply frame
(:meth:`~LinkExecutor._reply_states`). The verdict comes from
:class:`~ziphalp.hw.link_check.LinkCheck`; the reply bytes leave through
:class:`~ziphalp.hw.link_reply.ReplySender`.
"""

from functools import reduce
from operator import or_
from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import Component, In, Out
from amaranth.utils import ceil_log2

from .control import beat_layout, control_signature, model_read_latency
from .engine import SGDEngine
from .link_check import LinkCheck, loaded_layout
from .link_messages import (
    LEVEL_BYTES,
    REPLY_HEADER_BYTES,
    WEIGHT_BYTES,
    buffer_depth,
    field_value,
    message_value,
    request_signature,
)
from .link_reply import ReplySender, StatusCounters
from .params import LEVEL, EngineParams, Phase
from .protocol import (
    CONFIGURE,
    DATA_HEADER,
    IDENTIFY,
    MODEL_HEADER,
    STATUS,
    SYNC,
    Command,
    Identity,
    Region,
    Status,
    StatusFlags,
    regions,
)
from .replay import ReplaySource
from .resident import ResidentSource
from .saturate import saturated
from .skid import RegisterSlice

__all__ = ["LinkExecutor"]


class LinkExecutor(Component):
    """Request executor: has a received request judged, acts on it, sends the reply.

    Only a request that :class:`~ziphalp.hw.link_check.LinkCheck` accepts acts.
    The frame counters count a request when its status is decided, so a STATUS
    reply includes itself; clearing after reading takes effect once the reply is
    sent. A retry (``ziphalp.hw.protocol``, "Sequence numbers and retries": the
    ``cmd`` and nonzero ``seq`` of the last accepted request) of a command without
    a reply payload is answered ``OK`` and not executed again; it counts as a
    request accepted.

    Parameters
    ----------
    params : EngineParams

    Attributes
    ----------
    req : In(request_signature(params))
        The received request.
    buf : In(ReadPort.Signature)
        Frame buffer read port (``beat_bits`` wide, synchronous).
    tx : Out(stream.Signature(8))
        Reply bytes.
    engine : Out(control_signature(params))
        The engine.
    """

    #: Cycles from ``req.valid`` to a valid verdict (the check's register steps).
    CHECK_CYCLES = LinkCheck.CYCLES

    def __init__(self, params: EngineParams):
        self.params = params
        super().__init__({
            "req": In(request_signature(params)),
            "buf": In(ReadPort.Signature(addr_width=ceil_log2(buffer_depth(params)),
                                         shape=unsigned(params.beat_bits))),
            "tx": Out(stream.Signature(8)),
            "engine": Out(control_signature(params)),
        })

    def identity(self) -> bytes:
        """The IDENTIFY reply payload of this build."""
        return Identity.of(self.params, update_gap=SGDEngine.update_gap(self.params)).pack()

    def elaborate(self, platform):
        m = Module()
        req = self.req
        m.submodules.check = check = LinkCheck(self.params)
        m.submodules.counters = counters = StatusCounters()
        m.submodules.sender = sender = ReplySender()
        wiring.connect(m, sender.tx, wiring.flipped(self.tx))
        x = SimpleNamespace(
            check=check, counters=counters, sender=sender,
            is_cmd={cmd: check.is_cmd[cmd.name.lower()] for cmd in Command},
            configured=Signal(),
            load_config=Signal(),               # CONFIGURE's fields load this cycle
            clear_after=Signal(),               # clear counters and flags once replied
            status=Signal(Status),
            reply_len=Signal(16),
            no_payload=Signal(),                # reply_len == 0
            checking=Signal(range(self.CHECK_CYCLES)),
            index=Signal(range(max(REPLY_HEADER_BYTES, IDENTIFY.size, STATUS.size))),
            from_store=Signal(),                # RUN: the resident store feeds the engine
            from_replay=Signal(),               # REPLAY: the replay store feeds the engine
            last_seq=Signal(8),                 # seq and cmd of the last request accepted
            last_cmd=Signal(8),                 # (last_seq 0: none, or unnumbered)
            repeated=Signal(),                  # the request has the last one's cmd and seq
        )
        if self.params.resident:
            m.submodules.resident = x.resident = ResidentSource(self.params)
        if self.params.replay:
            m.submodules.replay = x.replay = ReplaySource(self.params)
        if self.params.stores_data:
            most = max(region.beats(self.params) for region in regions(self.params))
            x.written = Signal(range(most + 1))     # LOAD_DATA: the beat being written
        m.d.comb += [
            check.cmd.eq(req.cmd), check.length.eq(req.length), check.received.eq(req.status),
            check.args.eq(req.args), check.whole.eq(req.whole), check.wide.eq(req.wide),
            check.configured.eq(x.configured),
            check.inner.eq(x.configured & (self.engine.phase == Phase.INNER)),
            check.features.eq(self.engine.features),
            check.halp.eq(self.engine.phase != Phase.SGD),
        ]
        self._model_position(m, x)
        self._buffer_cursor(m, x)
        self._count_events(m, x)
        source = self._reply_sources(m, x)
        self._load_configuration(m, x)
        with m.FSM() as fsm:
            self._request_states(m, x)
            self._engine_states(m, x)
            self._model_states(m, x)
            self._level_states(m, x)
            if self.params.stores_data:
                self._data_states(m, x)
            self._reply_states(m, x, source)
        # one-hot: short decode paths in synthesis (the domain's reset sets the state)
        fsm.state.attrs["fsm_encoding"] = "one-hot"
        return m

    # --- datapaths ---------------------------------------------------------------------

    def _model_position(self, m, x):
        """Where the model and level ports point: feature ``start + i`` sits at
        (word, lane), tracked by counters; the weight or level assembled or sent."""
        p, eng = self.params, self.engine
        x.seek = Signal(16)                     # start, walked down to start % lanes
        x.seek_low = Signal()                   # seek < lanes
        x.word = Signal(range(p.bank_depth + 1))
        x.lane = Signal(range(p.lanes))
        x.weights_left = Signal(16)             # including the current one
        x.final = Signal()                      # the current weight is the last
        x.weight = Signal(8 * WEIGHT_BYTES)     # LOAD: assembled from bytes; READ: sent as bytes
        x.weight_byte = Signal(range(WEIGHT_BYTES))
        x.fetch_wait = Signal(range(model_read_latency(p)))   # READ: cycles to wait
        x.level = Signal(range(p.levels_max))   # LOAD_LEVELS: index of the current level
        x.levels_left = Signal(range(p.levels_max + 1))     # including the current one
        x.level_final = Signal()                # the current level is the last
        m.d.comb += [
            eng.model_word.eq(x.word),
            eng.model_lane.eq(x.lane),
            eng.model_wdata.eq(saturated(x.weight.as_signed(), p.model_bits)),
            # an int16 assembled from two bytes sits in the top half (checked to fit)
            eng.level_index.eq(x.level),
            eng.level_data.eq(x.weight[8 * (WEIGHT_BYTES - LEVEL_BYTES):][:LEVEL.bits]),
        ]

    def _buffer_cursor(self, m, x):
        """The frame buffer's read cursor. The read port is addressed with the cursor's
        next value, so that ``buf.data`` always holds the beat at ``rd_addr``."""
        p, eng = self.params, self.engine
        bytes_per_beat = p.beat_bits // 8
        x.rd_addr = Signal(range(buffer_depth(p) + 1))
        rd_addr_next = Signal.like(x.rd_addr)
        x.rd_lane = Signal(bytes_per_beat)      # LOAD: one-hot byte lane of the next byte
        # LOAD's bytes: with deep_pipeline from a register holding the buffer's word
        # (the block RAM's output into the byte multiplexer and the weight's shift was
        # the longest path of a ULX3S build), which holds the old word for the cycle
        # after the cursor moves on (`rd_stale`: LOAD waits)
        word = self.buf.data
        x.rd_stale = Const(0)
        if p.deep_pipeline:
            word = Signal.like(self.buf.data, name="buf_word")
            x.rd_stale = Signal()
            m.d.sync += [word.eq(self.buf.data), x.rd_stale.eq(0)]
        x.rd_byte = reduce(or_, (word.word_select(i, 8) & x.rd_lane[i].replicate(8)
                                 for i in range(bytes_per_beat)))
        x.rd_restart = Signal()                 # move the cursor to the payload's start
        x.rd_advance = Signal()                 # move the cursor to the next beat
        x.before_last = Signal.like(x.rd_addr)  # STREAM: rd_addr of the beat before the last
        x.at_last = Signal()                    # STREAM: rd_addr is the frame's last beat
        x.header_beats = DATA_HEADER.size // bytes_per_beat if p.stores_data else 0
        rd_start = Mux(x.is_cmd[Command.LOAD_MODEL], MODEL_HEADER.size // bytes_per_beat,
                       Mux(x.is_cmd[Command.LOAD_DATA], x.header_beats, 0))
        m.d.comb += [
            rd_addr_next.eq(Mux(x.rd_restart, rd_start,
                                Mux(x.rd_advance, x.rd_addr + 1, x.rd_addr))),
            self.buf.addr.eq(rd_addr_next),
        ]
        data = self.buf.data
        flush = x.is_cmd[Command.STREAM_FLUSH] & x.at_last
        x.frame_slice = None
        if p.deep_pipeline:
            # STREAM's beats go through a register slice here, beside the frame
            # buffer, and from its registers to the engine (the block RAM's output
            # across the die into the engine's own slice was a long path)
            m.submodules.frame_slice = x.frame_slice = fs = RegisterSlice(beat_layout(p))
            m.d.comb += [fs.i.payload.data.eq(data), fs.i.payload.flush.eq(flush),
                         fs.o.ready.eq(eng.beats.ready),
                         eng.beats.valid.eq(fs.o.valid)]    # RUN and REPLAY drive it too
            data, flush = fs.o.payload.data, fs.o.payload.flush
        for source, active in ((getattr(x, "resident", None), x.from_store),
                               (getattr(x, "replay", None), x.from_replay)):
            if source is not None:
                data = Mux(active, source.beats.payload.data, data)
                flush = Mux(active, source.beats.payload.flush, flush)
        m.d.comb += [eng.beats.payload.data.eq(data), eng.beats.payload.flush.eq(flush)]
        m.d.sync += x.rd_addr.eq(rd_addr_next)

    def _count_events(self, m, x):
        """What the STATUS counters count (the frames are counted at dispatch)."""
        eng, counters = self.engine, x.counters
        m.d.comb += [
            # busy or fed: a beat offered (a STREAM's, from the frame slice with
            # deep_pipeline), or a store running
            counters.busy.eq(eng.beats.valid | x.from_store | x.from_replay | ~eng.idle),
            counters.sample.eq(eng.sample_done),
            counters.update.eq(eng.update_done),
            counters.beat.eq(eng.beats.valid & eng.beats.ready),
        ]

    def _reply_sources(self, m, x) -> dict:
        """Each reply part's byte at ``index``, registered (the sender waits a cycle
        for them to settle): header, IDENTIFY and STATUS payloads, CRC."""
        eng, req = self.engine, self.req
        flags = Signal(8)
        for flag, value in ((StatusFlags.OVERFLOW, eng.overflow),
                            (StatusFlags.CLIPPED, eng.clipped),
                            (StatusFlags.CONFIGURED, x.configured)):
            m.d.comb += flags[flag.bit_length() - 1].eq(value)
        counters = x.counters.counters
        parts = {
            "header": Cat(Const(SYNC[0], 8), Const(SYNC[1], 8), req.cmd, x.status,
                          Const(0, 8 - len(x.status)), req.seq, x.reply_len),
            "identity": Const(int.from_bytes(self.identity(), "little"), 8 * IDENTIFY.size),
            "status": message_value(STATUS, {"flags": flags, **{
                name: counters[name] for name in STATUS.groups if name != "flags"}}),
        }
        source = {name: Signal(8, name=f"{name}_byte") for name in (*parts, "crc")}
        m.d.sync += [source[name].eq(part.word_select(x.index, 8)) for name, part in parts.items()]
        m.d.sync += source["crc"].eq(x.sender.crc.word_select(x.index[0], 8))
        return source

    # --- sending ---------------------------------------------------------------------

    @staticmethod
    def _put(m, x, byte, *, checked=True):
        """Offer ``byte`` to the sender; it goes on ``x.sender.send``."""
        m.d.comb += [x.sender.offer.eq(1), x.sender.byte.eq(byte), x.sender.checked.eq(checked)]

    def _put_each(self, m, x, byte, size, next_state):
        """Send ``size`` bytes, ``byte`` at each ``index``, then go to ``next_state``."""
        self._put(m, x, byte)
        with m.If(x.sender.send):
            m.d.sync += x.index.eq(x.index + 1)
            with m.If(x.index == size - 1):
                m.d.sync += x.index.eq(0)
                m.next = next_state

    def _shift_in_byte(self, m, x):
        """Shift the frame buffer's next byte into the top of ``weight`` (the caller
        waits while ``rd_stale``)."""
        m.d.sync += [
            x.weight.eq(Cat(x.weight[8:], x.rd_byte)),
            x.weight_byte.eq(x.weight_byte + 1),
            x.rd_lane.eq(x.rd_lane.rotate_left(1)),
        ]
        m.d.comb += x.rd_advance.eq(x.rd_lane[-1])
        if self.params.deep_pipeline:
            m.d.sync += x.rd_stale.eq(x.rd_lane[-1])

    def _next_feature(self, m, x):
        """Step the model position to the next weight."""
        m.d.sync += [x.weights_left.eq(x.weights_left - 1), x.final.eq(x.weights_left == 2)]
        with m.If(x.lane == self.params.lanes - 1):
            m.d.sync += [x.lane.eq(0), x.word.eq(x.word + 1)]
        with m.Else():
            m.d.sync += x.lane.eq(x.lane + 1)

    def _load_configuration(self, m, x):
        """CONFIGURE's fields into the engine's configuration members, in the cycle
        after DISPATCH accepted it. Their enable is the flip-flop ``load_config``
        alone: the members reach across the engine, and the request check's logic
        before their enables was the longest path of a 4-lane ECP5 build."""
        args = self.req.args
        m.d.sync += x.load_config.eq(0)         # DISPATCH sets it (a later statement)
        with m.If(x.load_config):
            m.d.sync += [getattr(self.engine, field.name).eq(
                             field_value(args.configure, CONFIGURE, field.name))
                         for field in CONFIGURE.fields]

    # --- states, by command family -----------------------------------------------------

    def _request_states(self, m, x):
        """IDLE, CHECK (the verdict settles; positions are prepared meanwhile) and
        DISPATCH: the reply's status and length, the frame counters, CONFIGURE's
        load (:meth:`_load_configuration`), and the command family's first state."""
        p, req, is_cmd, check = self.params, self.req, x.is_cmd, x.check
        args = req.args
        with m.State("IDLE"):
            m.d.comb += x.sender.restart.eq(1)
            m.d.sync += [x.index.eq(0), x.weight_byte.eq(0), x.word.eq(0), x.level.eq(0),
                         x.checking.eq(self.CHECK_CYCLES - 1)]
            with m.If(req.valid):
                m.next = "CHECK"
        with m.State("CHECK"):
            bytes_per_beat = p.beat_bits // 8
            m.d.sync += [
                x.checking.eq(x.checking - 1),
                x.seek.eq(args.model.start),
                x.seek_low.eq(args.model.start < p.lanes),
                x.rd_lane.eq(Mux(is_cmd[Command.LOAD_LEVELS], 1,
                                 1 << (MODEL_HEADER.size % bytes_per_beat))),
                x.before_last.eq(req.beats - 2),
                x.at_last.eq(req.beats == Mux(is_cmd[Command.LOAD_DATA], x.header_beats + 1, 1)),
                x.levels_left.eq(req.length[1:]),     # LOAD_LEVELS: at least 2 if accepted
                x.level_final.eq(0),
                x.repeated.eq((req.seq == x.last_seq) & (req.cmd == x.last_cmd)
                              & x.last_seq.any()),
            ]
            m.d.comb += x.rd_restart.eq(1)
            with m.If(is_cmd[Command.LOAD_MODEL]):       # length is 4 + 4 * count
                m.d.sync += [x.weights_left.eq(req.length[2:] - 1),
                             x.final.eq(req.length[2:] == 2)]
            with m.Else():
                m.d.sync += [x.weights_left.eq(args.model.count),
                             x.final.eq(args.model.count == 1)]
            with m.If(x.checking == 0):
                m.next = "DISPATCH"
        with m.State("DISPATCH"):
            m.d.sync += [
                x.status.eq(check.verdict),
                x.reply_len.eq(Mux(check.accepted, check.payload_len, 0)),
                x.no_payload.eq(~check.accepted | (check.payload_len == 0)),
                x.clear_after.eq(check.accepted & is_cmd[Command.STATUS] & check.clear),
            ]
            m.d.comb += [x.counters.frame_ok.eq(check.accepted),
                         x.counters.frame_bad.eq(~check.accepted)]
            m.next = "HEADER"
            with m.If(check.accepted):
                m.d.sync += [x.last_seq.eq(req.seq), x.last_cmd.eq(req.cmd)]
            # a retry whose reply has no payload: answered OK, not executed again
            with m.If(check.accepted & ~(x.repeated & (check.payload_len == 0))):
                with m.If(is_cmd[Command.CONFIGURE]):
                    m.d.sync += [x.load_config.eq(1), x.configured.eq(1)]
                    m.next = "CONFIGURE"
                with m.If(is_cmd[Command.LOAD_MODEL] | is_cmd[Command.READ_MODEL]):
                    m.next = "SEEK"
                with m.If(is_cmd[Command.LOAD_LEVELS]):
                    m.next = "LEVEL_LOAD"
                with m.If(is_cmd[Command.STREAM] | is_cmd[Command.STREAM_FLUSH]):
                    m.next = "STREAM"
                if p.stores_data:
                    with m.If(is_cmd[Command.LOAD_DATA]):
                        m.d.sync += x.written.eq(args.data.start)
                        m.next = "DATA_LOAD"
                if p.resident:
                    with m.If(is_cmd[Command.RUN]):
                        m.next = "RUN_START"
                if p.replay:
                    with m.If(is_cmd[Command.REPLAY]):
                        m.next = "REPLAY_START"

    def _engine_states(self, m, x):
        """CONFIGURE: the fields load (:meth:`_load_configuration`); START: the engine's
        start strobe, with the new fields; STREAM: the frame's beats replayed into
        the engine (the last one flushing for STREAM_FLUSH); SETTLE: until it is idle."""
        eng = self.engine
        with m.State("CONFIGURE"):
            m.next = "START"
        with m.State("START"):
            m.d.comb += eng.start.eq(1)
            m.next = "SETTLE"
        fs = x.frame_slice
        with m.State("STREAM"):
            into = eng.beats if fs is None else fs.i
            m.d.comb += [into.valid.eq(1), x.rd_advance.eq(into.ready)]
            with m.If(into.ready):
                m.d.sync += x.at_last.eq(x.rd_addr == x.before_last)
                with m.If(x.at_last):
                    m.next = "SETTLE"
        with m.State("SETTLE"):
            with m.If(eng.idle & (1 if fs is None else fs.empty)):
                m.next = "HEADER"

    def _model_states(self, m, x):
        """LOAD_MODEL and READ_MODEL: seek the start's (word, lane); LOAD assembles each
        weight from four bytes and writes it (saturated); READ sends each weight's
        bytes after the reply header."""
        p, eng = self.params, self.engine
        with m.State("SEEK"):
            with m.If(~x.seek_low):
                m.d.sync += [x.seek.eq(x.seek - p.lanes),
                             x.seek_low.eq(x.seek - p.lanes < p.lanes), x.word.eq(x.word + 1)]
            with m.Else():
                m.d.sync += x.lane.eq(x.seek)
                with m.If(x.is_cmd[Command.LOAD_MODEL]):
                    m.next = "LOAD"
                with m.Else():
                    m.next = "HEADER"
        with m.State("LOAD"):
            with m.If(~x.rd_stale):
                self._shift_in_byte(m, x)
                with m.If(x.weight_byte == WEIGHT_BYTES - 1):
                    m.next = "WRITE"
        with m.State("WRITE"):
            with m.If(eng.idle):
                m.d.comb += eng.model_write.eq(1)
                m.next = "NEXT_WEIGHT"
        with m.State("NEXT_WEIGHT"):
            self._next_feature(m, x)
            m.next = "LOAD"
            with m.If(x.final):
                m.next = "HEADER"
        # the word comes model_read_latency cycles after the read: FETCHED waits all
        # but the first and the last of them
        wait = model_read_latency(p) - 2
        with m.State("FETCH"):
            with m.If(eng.idle):
                m.d.comb += eng.model_read.eq(1)
                if wait:
                    m.d.sync += x.fetch_wait.eq(wait)
                m.next = "FETCHED"
        with m.State("FETCHED"):
            if wait:
                m.d.sync += x.fetch_wait.eq(x.fetch_wait - 1)
                with m.If(x.fetch_wait == 0):
                    m.next = "LATCH"
            else:
                m.next = "LATCH"
        with m.State("LATCH"):
            m.d.sync += x.weight.eq(eng.model_rdata.as_signed())   # sign-extended to int32
            m.next = "READ"
        with m.State("READ"):
            self._put(m, x, x.weight[:8])
            with m.If(x.sender.send):
                m.d.sync += [x.weight.eq(x.weight[8:]), x.weight_byte.eq(x.weight_byte + 1)]
                with m.If(x.weight_byte == WEIGHT_BYTES - 1):
                    self._next_feature(m, x)
                    m.next = "FETCH"
                    with m.If(x.final):
                        m.next = "CRC"

    def _level_states(self, m, x):
        """LOAD_LEVELS: each level assembled from two bytes and written, in order."""
        eng = self.engine
        with m.State("LEVEL_LOAD"):             # two bytes into the top of `weight`
            with m.If(~x.rd_stale):
                self._shift_in_byte(m, x)
                with m.If(x.weight_byte[0]):
                    m.next = "LEVEL_WRITE"
        with m.State("LEVEL_WRITE"):
            with m.If(eng.idle):
                m.d.comb += eng.level_write.eq(1)
                m.next = "NEXT_LEVEL"
        with m.State("NEXT_LEVEL"):
            m.d.sync += [x.level.eq(x.level + 1), x.levels_left.eq(x.levels_left - 1),
                         x.level_final.eq(x.levels_left == 2)]
            m.next = "LEVEL_LOAD"
            with m.If(x.level_final):
                m.next = "HEADER"

    def _data_states(self, m, x):
        """LOAD_DATA: the frame's beats written into the region's store, one a cycle
        (a sampler beat one entry a cycle), then the region's loaded length
        extended. RUN and REPLAY: their store started, its beats into the engine
        until it is drained, then SETTLE. The loaded lengths live here (the check
        reads them)."""
        p, eng, header = self.params, self.engine, self.req.args.data
        loaded = Signal(loaded_layout(p))
        m.d.comb += x.check.loaded.eq(loaded)
        written = x.written
        ready = Const(1)
        if p.resident:
            store, run = x.resident, self.req.args.run
            m.d.comb += [store.region.eq(header.region), store.addr.eq(written),
                         store.data.eq(self.buf.data),
                         store.features.eq(eng.features), store.k.eq(eng.k),
                         store.double.eq(eng.double),
                         store.indexed.eq(eng.phase != Phase.SGD),
                         store.count.eq(run.count), store.first.eq(run.first),
                         store.stride.eq(run.stride), store.samples.eq(run.samples),
                         store.seed.eq(run.seed), store.bias.eq(run.bias)]
            ready = store.write_ready
        if p.replay:
            replay, args = x.replay, self.req.args.replay
            m.d.comb += [replay.addr.eq(written), replay.data.eq(self.buf.data),
                         replay.first.eq(args.first), replay.count.eq(args.count),
                         replay.loaded.eq(loaded.beats)]
        with m.State("DATA_LOAD"):
            if p.resident:
                m.d.comb += x.resident.write.eq(1)
            if p.replay:
                m.d.comb += x.replay.write.eq(header.region == Region.BEATS)
            m.d.comb += x.rd_advance.eq(ready)
            with m.If(ready):
                m.d.sync += [written.eq(written + 1), x.at_last.eq(x.rd_addr == x.before_last)]
                with m.If(x.at_last):
                    m.next = "DATA_LOADED"
        with m.State("DATA_LOADED"):            # written is one past the last beat
            for region in regions(p):
                name = region.name.lower()
                with m.If(header.region == region):
                    with m.If((header.start == 0) | (written > loaded[name])):
                        m.d.sync += loaded[name].eq(written)
            m.next = "HEADER"
        for source, name, active in ((getattr(x, "resident", None), "RUN", x.from_store),
                                     (getattr(x, "replay", None), "REPLAY", x.from_replay)):
            if source is None:
                continue
            with m.State(f"{name}_START"):
                m.d.comb += source.start.eq(1)
                m.next = name
            with m.State(name):
                m.d.comb += [active.eq(1), eng.beats.valid.eq(source.beats.valid),
                             source.beats.ready.eq(eng.beats.ready)]
                with m.If(~source.busy):
                    m.next = "SETTLE"

    def _reply_states(self, m, x, source):
        """The reply frame: header, the IDENTIFY or STATUS payload (READ_MODEL's is in
        :meth:`_model_states`), CRC; then release the request (and clear if asked)."""
        send, index, is_cmd = x.sender.send, x.index, x.is_cmd
        with m.State("HEADER"):
            self._put(m, x, source["header"], checked=index >= len(SYNC))
            with m.If(send):
                m.d.sync += index.eq(index + 1)
                with m.If(index == REPLY_HEADER_BYTES - 1):
                    m.d.sync += index.eq(0)
                    with m.If(x.no_payload):
                        m.next = "CRC"
                    with m.Elif(is_cmd[Command.IDENTIFY]):
                        m.next = "IDENTIFY"
                    with m.Elif(is_cmd[Command.STATUS]):
                        m.next = "STATUS"
                    with m.Else():
                        m.next = "FETCH"
        with m.State("IDENTIFY"):
            self._put_each(m, x, source["identity"], IDENTIFY.size, "CRC")
        with m.State("STATUS"):
            self._put_each(m, x, source["status"], STATUS.size, "CRC")
        with m.State("CRC"):
            self._put(m, x, source["crc"], checked=False)
            with m.If(send):
                m.d.sync += index.eq(1)
                with m.If(index[0]):
                    m.next = "DONE"
        with m.State("DONE"):
            with m.If(~self.tx.valid):          # the last byte has gone
                m.next = "RELEASE"
        with m.State("RELEASE"):
            m.d.comb += self.req.done.eq(1)
            with m.If(x.clear_after):
                m.d.comb += [self.engine.clear_flags.eq(1), x.counters.clear.eq(1)]
            m.next = "IDLE"
