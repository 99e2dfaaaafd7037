"""The link's judge of a received request: its status, reply length and command.

:class:`LinkCheck` decides, in three register steps (four for RUN and
LOAD_DATA), whether the executor (:mod:`ziphalp.hw.link_executor`) acts on a
request. CONFIGURE's checks are derived from
:data:`ziphalp.hw.protocol.CONFIGURE`: each field within its range for this
build, the build's options (a field a build lacks the option for must hold its
default), the reserved mode bits zero, and a HALP phase only with a loss of
``HALP_LOSSES``. It changes nothing.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data
from amaranth.lib.wiring import Component, In, Out

from .link_messages import ARGS_LAYOUT, LEVEL_BYTES, WEIGHT_BYTES, field_value
from .params import HALP_LOSSES, EngineParams, Phase, clog2
from .protocol import (
    CONFIGURE,
    DATA_HEADER,
    IDENTIFY,
    MODEL_HEADER,
    REPLAY,
    RUN,
    STATUS,
    Bits,
    Command,
    Region,
    Status,
    regions,
)

__all__ = ["LinkCheck", "command_layout", "commands", "loaded_layout"]

def commands(p: EngineParams) -> list[Command]:
    """The commands a build knows (the others are answered ``COMMAND``)."""
    built = {Command.LOAD_DATA: p.stores_data, Command.RUN: p.resident,
             Command.REPLAY: p.replay}
    return [cmd for cmd in Command if built.get(cmd, True)]


def loaded_layout(p: EngineParams) -> data.StructLayout:
    """The loaded length of each region the build has, in beats."""
    return data.StructLayout({region.name.lower(): range(region.beats(p) + 1)
                              for region in regions(p)})


def command_layout() -> data.StructLayout:
    """One bit per command, named after it in lower case."""
    return data.StructLayout({cmd.name.lower(): 1 for cmd in Command})


def in_range(value: Value, values: range) -> Value | None:
    """``value`` lies in ``values``: only the bounds its shape can cross are compared
    (None if it cannot leave ``values``)."""
    shape = value.shape()
    low = -(1 << (shape.width - 1)) if shape.signed else 0
    high = low + (1 << shape.width) - 1
    bounds = []
    if values.start > low:
        bounds.append(value >= values.start)
    if values.stop - 1 < high:
        bounds.append(value <= values.stop - 1)
    return Cat(*bounds).all() if bounds else None


class LinkCheck(Component):
    """Judges a request held by the receiver.

    Checks go in this order and the first failure is the verdict: the
    receiver's (CRC, LENGTH, TIMEOUT), unknown command (COMMAND), payload length
    (LENGTH), argument ranges and reserved fields (ARGUMENT), state (STATE).
    Three register steps keep the paths short: facts about the request (one
    comparison or sum each), then per-command verdicts, then the status by
    priority. RUN's state (the loaded data covers its samples) takes two steps
    of facts and LOAD_DATA's arguments (inside the region) three, so their
    verdicts come later. The outputs are valid :attr:`CYCLES` cycles after the
    inputs settle (the request is held meanwhile).

    Parameters
    ----------
    params : EngineParams

    Attributes
    ----------
    cmd, length, received, args, whole, wide : In
        The request (``received``: the receiver's status).
    configured : In(1)
        A CONFIGURE has been accepted.
    inner : In(1)
        The configuration accepted is HALP's inner loop (LOAD_MODEL is STATE then).
    features : In(range(max_features + 1)); halp : In(1); loaded : In(loaded_layout(params))
        Builds with resident data or a replay store: the configured ``d``, whether
        a HALP phase is configured, and the loaded length of each region (the
        checks of LOAD_DATA, RUN and REPLAY).
    verdict : Out(Status)
    accepted : Out(1)
        ``verdict`` is OK: the executor acts.
    payload_len : Out(16)
        Length of the reply's payload if accepted.
    is_cmd : Out(command_layout())
        The command, one-hot.
    clear : Out(1)
        A STATUS request asks to clear after reading.
    """

    #: Cycles from the request to a valid verdict: the three register steps, and two
    #: for the facts that take more steps (RUN's state two, LOAD_DATA's end three).
    CYCLES = 5

    def __init__(self, params: EngineParams):
        self.params = params
        super().__init__({
            "cmd": In(8), "length": In(16), "received": In(Status), "args": In(ARGS_LAYOUT),
            "whole": In(1), "wide": In(1), "configured": In(1), "inner": In(1),
            "features": In(range(params.max_features + 1)), "halp": In(1),
            "loaded": In(loaded_layout(params)) if params.stores_data else In(1),
            "verdict": Out(Status), "accepted": Out(1), "payload_len": Out(16),
            "is_cmd": Out(command_layout()), "clear": Out(1),
        })

    def elaborate(self, platform):
        m = Module()

        def step(expr, name):
            """A register of ``expr``: one step of the check."""
            reg = Signal(Value.cast(expr).shape(), name=name)
            m.d.sync += reg.eq(expr)
            return reg

        # step 1: facts about the request
        is_cmd = {cmd: step(self.cmd == cmd, f"is_{cmd.name.lower()}")
                  if cmd in commands(self.params) else Const(0) for cmd in Command}
        m.d.comb += [self.is_cmd[cmd.name.lower()].eq(is_cmd[cmd]) for cmd in Command]
        length_ok = self._length_facts(step)
        args_facts = self._args_facts(step)
        received = step(self.received, "received")
        m.d.comb += [
            self.payload_len.eq(step(Mux(
                is_cmd[Command.READ_MODEL], self.args.model.count * WEIGHT_BYTES,
                Mux(is_cmd[Command.IDENTIFY], IDENTIFY.size,
                    Mux(is_cmd[Command.STATUS], STATUS.size, 0))), "payload_len")),
            self.clear.eq(step((self.length != 0) & self.args.status.flags[0], "clear")),
        ]

        # step 2: per-command verdicts
        args_ok = {cmd: step(ok, f"args_ok_{cmd.name.lower()}") for cmd, ok in args_facts.items()}
        known = step(Cat(*is_cmd.values()).any(), "known")
        length_good = step(Cat(is_cmd[cmd] & length_ok[cmd]
                               for cmd in commands(self.params)).any(),
                           "length_good")
        feeds = (is_cmd[Command.STREAM] | is_cmd[Command.STREAM_FLUSH] | is_cmd[Command.RUN]
                 | is_cmd[Command.REPLAY])
        state_good = step((self.configured | ~feeds)
                          & ~(self.inner & is_cmd[Command.LOAD_MODEL])
                          & (self._run_state(step) | ~is_cmd[Command.RUN])
                          & (self._replay_state(step) | ~is_cmd[Command.REPLAY]), "state_good")

        # step 3: the status, by priority
        args_good = Cat(is_cmd[cmd] & args_ok.get(cmd, 1) for cmd in Command).any()
        m.d.comb += self.accepted.eq(step((received == Status.OK) & known & length_good
                                          & args_good & state_good, "accepted"))
        with m.If(received != Status.OK):
            m.d.sync += self.verdict.eq(received)
        with m.Elif(~known):
            m.d.sync += self.verdict.eq(Status.COMMAND)
        with m.Elif(~length_good):
            m.d.sync += self.verdict.eq(Status.LENGTH)
        with m.Elif(~args_good):
            m.d.sync += self.verdict.eq(Status.ARGUMENT)
        with m.Elif(~state_good):
            m.d.sync += self.verdict.eq(Status.STATE)
        with m.Else():
            m.d.sync += self.verdict.eq(Status.OK)
        return m

    def _length_facts(self, step) -> dict:
        """Step 1: the payload length is right for each command (registers)."""
        p, length = self.params, self.length
        ok = {
            Command.IDENTIFY: length == 0,
            Command.CONFIGURE: length == CONFIGURE.size,
            Command.LOAD_MODEL: (length >= MODEL_HEADER.size + WEIGHT_BYTES) & (length[:2] == 0),
            Command.READ_MODEL: length == MODEL_HEADER.size,
            Command.STREAM: (length != 0) & self.whole,
            Command.STATUS: length <= 1,
            # whole int16s, at least two (an even length >= 4 has a bit above bit 1)
            Command.LOAD_LEVELS: (length[0] == 0) & (length[2:] != 0),
        }
        if p.stores_data:
            ok[Command.LOAD_DATA] = (length > DATA_HEADER.size) & self.whole
        if p.resident:
            ok[Command.RUN] = length == RUN.size
        if p.replay:
            ok[Command.REPLAY] = length == REPLAY.size
        ok = {cmd: step(fact, f"length_ok_{cmd.name.lower()}") for cmd, fact in ok.items()}
        ok[Command.STREAM_FLUSH] = ok[Command.STREAM]
        most = LEVEL_BYTES * min(p.levels_max, p.frame_bytes // LEVEL_BYTES)
        ok[Command.LOAD_LEVELS] = ok[Command.LOAD_LEVELS] & step(length <= most, "levels_fit")
        return ok

    def _args_facts(self, step) -> dict:
        """Per command with arguments: they are good (over step 1 registers)."""
        p, model, length = self.params, self.args.model, self.length
        count_zero = step(model.count == 0, "count_zero")
        count_fits = step(model.count <= p.frame_bytes // WEIGHT_BYTES, "count_fits")
        load_end = step(model.start + length[2:], "load_end")   # start + count + 1
        read_end = step(model.start + model.count, "read_end")
        flags_ok = step((length == 0) | (self.args.status.flags[1:] == 0), "flags_ok")
        facts = {
            Command.CONFIGURE: Cat(*self._configure_facts(step)).all(),
            Command.LOAD_MODEL: count_zero & (load_end <= p.max_features + 1),
            Command.READ_MODEL: ~count_zero & count_fits & (read_end <= p.max_features),
            Command.STATUS: flags_ok,
            Command.LOAD_LEVELS: ~self.wide,    # a receiver register, held with the request
        }
        if p.stores_data:
            facts.update(self._resident_facts(step))
        return facts

    def _resident_facts(self, step) -> dict:
        """Steps 1 to 3 of LOAD_DATA (a region of the build, inside it, no gap after its
        loaded length), step 1 of RUN (``samples`` in range, ``first`` and ``stride`` below
        it) and REPLAY (``count`` not 0)."""
        p, header, run = self.params, self.args.data, self.args.run
        # the beats and the start in step-1 registers, each region's comparisons over
        # them in step-2 registers, but the end's: its sum in step 2, its comparisons in
        # step 3 (an adder and a comparator in one step were the longest path of a
        # 4-lane ECP5 build); their verdict in step 4 (CYCLES covers it)
        beats = step(self.length[clog2(p.beat_bits // 8):]
                     - DATA_HEADER.size // (p.beat_bits // 8), "data_beats")
        # a start beyond every region fails on its high bits: the sums stay narrow
        low = clog2(max(region.beats(p) for region in regions(p)) + 1)
        start = step(header.start[:low], "data_start")
        high = step(header.start[low:] == 0, "data_start_high")
        region_at = step(header.region, "data_region")
        end = step(start + beats, "data_end")
        region_late = step(region_at, "data_region_late")
        region_ok, end_ok, gap_ok = [], [], []
        for region in regions(p):
            name = region.name.lower()
            here = region_at == region
            region_ok.append(here)
            end_ok.append(step((region_late != region) | (end <= region.beats(p)),
                               f"data_end_ok_{name}"))
            gap_ok.append(step(~here | (start <= self.loaded[name]), f"data_gap_ok_{name}"))
        halp_most = p.halp_samples if p.halp else p.resident_samples
        facts = {
            Command.LOAD_DATA: (Cat(*region_ok).any() & Cat(*end_ok).all()
                                & Cat(*gap_ok).all() & high),
        }
        if p.replay:
            facts[Command.REPLAY] = step(self.args.replay.count != 0, "replay_ok")
        if p.resident:
            facts[Command.RUN] = step((run.count != 0) & (run.samples != 0)
                              & (run.samples <= p.resident_samples)
                              & (~self.halp | (run.samples <= halp_most))
                              & (run.first < run.samples) & (run.stride < run.samples)
                              & (run.bias <= 1),
                              "run_ok")
        return facts

    def _run_state(self, step):
        """Steps 1 and 2 of RUN's state: the loaded data covers ``samples`` samples of the
        configured ``d`` (``d - 1`` stored with ``bias``; codes, labels, the whole
        sampler table)."""
        p = self.params
        if not p.resident:
            return Const(1)
        # rows a sample in step 1 and their product in step 2: this check's state
        # verdict is a step late (CYCLES covers it)
        rows = step((self.features - self.args.run.bias[0] + p.lanes - 1) >> clog2(p.lanes),
                    "rows_a_sample")
        needed = step(self.args.run.samples * rows, "rows_needed")
        loaded = self.loaded
        labels = step(loaded.labels << clog2(p.beat_bits // 16), "labels_loaded")
        sampler = step(loaded.sampler == Region.SAMPLER.beats(p), "sampler_loaded")
        samples = step(self.args.run.samples, "run_samples")
        return ((needed <= p.resident_rows)
                & (loaded.codes >= needed * p.beats_per_row)
                & (labels >= samples) & sampler)

    def _replay_state(self, step):
        """Step 1 of REPLAY's state: ``first`` is below the beats loaded."""
        if not self.params.replay:
            return Const(1)
        first, low = self.args.replay.first, clog2(self.params.replay_beats + 1)
        return step((first[low:] == 0) & (first[:low] < self.loaded.beats), "replay_loaded")

    def _configure_facts(self, step) -> list:
        """Step 1 of CONFIGURE: one register per field of the table that can be out of
        range, the reserved bits, and the HALP phases' losses."""
        p, cfg = self.params, self.args.configure
        facts = []
        for field in CONFIGURE.fields:
            value = field_value(cfg, CONFIGURE, field.name)
            if field.needs and not p.options & field.needs:
                ok = value == field.default
            else:
                ok = in_range(value, field.values(p))
            if ok is not None:
                facts.append(step(ok, f"{field.name}_ok"))
        for item in CONFIGURE.items:
            if isinstance(item, Bits):
                facts.append(step(cfg[item.name].reserved == 0, f"{item.name}_reserved_ok"))
        halp_loss = Cat(cfg.mode.loss == loss for loss in HALP_LOSSES).any()
        facts.append(step((cfg.mode.phase == Phase.SGD) | halp_loss, "phase_loss_ok"))
        return facts
