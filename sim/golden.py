"""The golden model: the SGD engine's exact fixed-point arithmetic in NumPy.

Given the engine parameters, the run-time configuration, the level table, an
initial model and the packed beat stream the board receives,
:class:`GoldenEngine` returns the model the gateware produces, bit for bit, and
the same sticky flags and counters. It is the contract between
``ziphalp.hw.engine`` and the host; the cocotb benches and the simulated-board
tests compare the RTL against it. The encoding and the formulas are written
down in ``ziphalp.hw.params``; this module implements them and nothing else (no
timing: the engine's results do not depend on bubbles or back-pressure).

It reads the beat stream on its own (:func:`unpack_fields`) rather than sharing
the host's packer, so a packing mistake on either side shows up as a mismatch.

Besides mini-batch SGD it models HALP mode (bit-centering SVRG, the section
"HALP mode" of ``ziphalp.hw.params``): the anchor, the offset, the anchor-error
cache and the per-lane xorshift32 PRNG (:func:`xorshift32`, :func:`prng_seeds`).

Builds with resident data (section "Resident data" of ``ziphalp.hw.params``)
also hold the resident store: :meth:`GoldenEngine.load_data` writes it,
:meth:`GoldenEngine.run` turns ``RUN`` into the beats the board feeds itself
(:func:`resident_beats`, the on-chip sampling included) and streams them.
"""

from __future__ import annotations

import numpy as np
from ziphalp.hw.params import (
    CODE_SCALE,
    CODE_ZERO,
    COST_BITS,
    COST_FRAC,
    COST_ONE,
    HALP_FRAC,
    HALP_LOSSES,
    L2_SHIFT_MAX,
    LABEL,
    LEVEL,
    OFFSET_BITS,
    PRNG_GOLDEN,
    PRNG_ZERO_SEED,
    SAMPLE_INDEX_BITS,
    SAMPLE_INDEX_OFFSET,
    SAMPLER_ENTRIES,
    SAMPLER_T_BITS,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    SIGMA_FRAC,
    SIGMOID_CELL_BITS,
    SIGMOID_CELLS,
    SIGMOID_FRAC,
    EngineParams,
    Loss,
    Phase,
    field_bits,
    halp_shift,
    sigmoid_table,
)
from ziphalp.hw.protocol import Region, regions

__all__ = ["round_shift", "saturate", "unpack_fields", "decode", "sigmoid_fixed",
           "loss_derivative", "inner_loop_prep", "xorshift32", "prng_seeds", "walk",
           "sample_fields", "resident_beats", "GoldenEngine"]


_SIGMOID = np.array(sigmoid_table(), dtype=np.int64)


def round_shift(x, s: int):
    """``x * 2**-s`` rounded half up: ``(x + 2**(s-1)) >> s`` (``x`` for ``s == 0``)."""
    if s == 0:
        return x
    return (x + (1 << (s - 1))) >> s


def saturate(x: np.ndarray, bits: int) -> tuple[np.ndarray, bool]:
    """Clip ``x`` to a signed ``bits``-bit range; also say whether anything was clipped."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    clipped = bool(np.any((x < lo) | (x > hi)))
    return np.clip(x, lo, hi), clipped


def unpack_fields(beats: bytes, params: EngineParams, k: int, double: bool,
                  count: int) -> np.ndarray:
    """The first ``count`` fields of consecutive feature beats, as an int64 array.

    Written plainly (one Python integer per beat) to stay independent of the
    host's vectorised packer.
    """
    width = params.beat_bits // 8
    if len(beats) % width:
        raise ValueError(f"{len(beats)} bytes are not whole {width}-byte beats")
    per_beat = params.values_per_beat(k, double)
    bits = field_bits(k, double)
    fields = []
    for start in range(0, len(beats), width):
        word = int.from_bytes(beats[start:start + width], "little")
        fields += [(word >> (i * bits)) & ((1 << bits) - 1) for i in range(per_beat)]
    if len(fields) < count:
        raise ValueError(f"{len(beats) // width} beats hold fewer than {count} fields")
    return np.array(fields[:count], dtype=np.int64)


def decode(fields: np.ndarray, levels: np.ndarray, k: int, double: bool):
    """Fields to the two samples ``(q1, q2)`` (``LEVEL`` words) through the level table."""
    fields = np.asarray(fields, dtype=np.int64)
    j = fields & ((1 << k) - 1)
    up1 = (fields >> k) & 1
    up2 = (fields >> (k + 1)) & 1 if double else up1
    return levels[j + up1], levels[j + up2]


def sigmoid_fixed(dot, params: EngineParams):
    """The engine's sigmoid of dot products ``D`` (units ``2**-(model.frac + LEVEL.frac)``):
    ``P``, value ``P * 2**-SIGMOID_FRAC``."""
    dot = np.asarray(dot, dtype=np.int64)
    u = np.where(dot >= 0, dot, ~dot)
    index = np.minimum(u >> (params.model_frac + LEVEL.frac - SIGMOID_CELL_BITS),
                       SIGMOID_CELLS - 1)
    t = _SIGMOID[index]
    return np.where(dot >= 0, t, (1 << SIGMOID_FRAC) - t)


def loss_derivative(dot: int, label: int, loss: Loss, params: EngineParams) -> int:
    """``E``: the loss derivative with respect to the prediction, in dot-product units."""
    frac = params.model_frac + LEVEL.frac
    one = 1 << frac
    pos = label > 0
    if loss == Loss.SQUARED:
        return dot - (label << (frac - LABEL.frac))
    if loss == Loss.LOGISTIC:
        p = int(sigmoid_fixed(dot, params))
        return (p - (pos << SIGMOID_FRAC)) << (frac - SIGMOID_FRAC)
    active = dot < one if pos else dot > -one
    if not active:
        return 0
    if loss == Loss.HINGE:
        return -one if pos else one
    if loss == Loss.SQUARED_HINGE:
        return dot - (one if pos else -one)
    raise ValueError(f"unknown loss {loss!r}")


def inner_loop_prep(grad: np.ndarray, scale_log: int, shift: int) -> tuple[int, np.ndarray]:
    """HALP's preparation of the inner loop from the full gradient ``G``: the offset
    shift ``sh`` from ``S = sum G_f**2`` (exact) and ``scale_log``, and
    ``gamma = round_shift(G, sh + shift)``."""
    norm2 = sum(g * g for g in np.asarray(grad).tolist())     # exact: Python integers
    sh = halp_shift(norm2, scale_log)
    return sh, round_shift(np.asarray(grad, dtype=np.int64), sh + shift)


def xorshift32(state: np.ndarray) -> np.ndarray:
    """One step of xorshift32 (``x ^= x << 13; x ^= x >> 17; x ^= x << 5``) of
    every element of a ``uint32`` array; returns the new states."""
    x = np.asarray(state, dtype=np.uint32).copy()
    x ^= x << np.uint32(13)
    x ^= x >> np.uint32(17)
    x ^= x << np.uint32(5)
    return x


def prng_seeds(seed: int, lanes: int) -> np.ndarray:
    """Seeded PRNG lane states: ``(seed + (l + 1) * PRNG_GOLDEN) mod 2**32``,
    ``PRNG_ZERO_SEED`` where that is 0; ``uint32``, one per lane ``l``."""
    states = [(int(seed) + (lane + 1) * PRNG_GOLDEN) % (1 << 32) for lane in range(lanes)]
    return np.array([s or PRNG_ZERO_SEED for s in states], dtype=np.uint32)


def walk(count: int, first: int, stride: int, samples: int) -> np.ndarray:
    """The resident samples a ``RUN`` feeds: ``(first + u * stride) mod samples``."""
    return (first + np.arange(count, dtype=np.int64) * stride) % samples


def sample_fields(codes: np.ndarray, sampler: np.ndarray, lanes: int, seed: int,
                  k: int, double: bool, per_beat: int) -> np.ndarray:
    """On-chip sampling: the fields of ``codes`` (``(samples, d)`` codes, in feed
    order) as the sampling lanes draw them, ``(samples, d)`` int64.

    Before each feature beat (``ceil(d / per_beat)`` per sample) every lane
    ``i < lanes`` steps its xorshift32 state (seeded with ``seed``); field ``i`` of
    the beat draws from lane ``i``: ``up = r < t`` with ``r`` the state's low (first
    sample) or high (second) 16 bits, ``(j, t)`` the code's sampler entry.
    """
    codes = np.asarray(codes, dtype=np.int64)
    count, d = codes.shape
    beats = -(-d // per_beat)
    state = prng_seeds(seed, lanes)
    draws = np.empty((count * beats, lanes), dtype=np.uint32)
    for b in range(count * beats):
        state = xorshift32(state)
        draws[b] = state
    f = np.arange(d)
    draws = draws.reshape(count, beats, lanes)[:, f // per_beat, f % per_beat]
    entry = np.asarray(sampler, dtype=np.int64)[codes]
    j, t = entry & 0xFF & ((1 << k) - 1), entry >> 8 & ((1 << SAMPLER_T_BITS) - 1)
    up1 = ((draws & 0xFFFF).astype(np.int64) < t).astype(np.int64)
    up2 = ((draws >> 16).astype(np.int64) < t).astype(np.int64) if double else up1
    return j | up1 << k | (up2 << (k + 1) if double else 0)


def resident_beats(fields: np.ndarray, labels: np.ndarray, indices: np.ndarray | None,
                   params: EngineParams, k: int, double: bool) -> bytes:
    """Fields and labels packed into beats as the resident store feeds them: a label
    beat (with the index in ``SAMPLE_INDEX_OFFSET`` when ``indices`` is given), then
    ``ceil(d / K)`` feature beats of ``K`` fields, those past ``d`` zero. For the
    resident builds' beats of 32 or 64 bits."""
    fields = np.asarray(fields, dtype=np.uint64)
    count, d = fields.shape
    per_beat, bits = params.values_per_beat(k, double), field_bits(k, double)
    beats = -(-d // per_beat)
    padded = np.zeros((count, beats * per_beat), dtype=np.uint64)
    padded[:, :d] = fields
    shifts = (np.arange(per_beat, dtype=np.uint64) * np.uint64(bits))
    words = np.zeros((count, beats + 1), dtype=np.uint64)
    words[:, 1:] = np.bitwise_or.reduce(padded.reshape(count, beats, per_beat) << shifts,
                                        axis=2)
    words[:, 0] = np.asarray(labels, dtype=np.int64).astype(np.uint64) & np.uint64(0xFFFF)
    if indices is not None:
        words[:, 0] |= np.asarray(indices, dtype=np.uint64) << np.uint64(SAMPLE_INDEX_OFFSET)
    dtype = {64: "<u8", 32: "<u4"}[params.beat_bits]
    return words.astype(dtype).tobytes()


class GoldenEngine:
    """Bit-exact model of one ``SGDEngine`` (mini-batch SGD on ZipML-encoded samples,
    and HALP mode in builds with ``halp_samples > 0``).

    State mirrors the hardware: the model (``max_features`` words), the level
    table, the gradient buffer ``_grad``, the position inside the current sample
    and batch, the sticky ``overflow``/``clipped`` flags, and ``samples``/``updates``
    counters. HALP state (``ziphalp.hw.params``, "HALP mode"):

    ``anchor``, ``offset``
        ``a`` and ``z`` (``max_features`` int64 words each); in the inner loop
        ``model == sat(anchor + (offset << offset_shift), model.bits)`` on the
        features it updates.
    ``_grad``
        The full gradient ``G`` after a full pass; in the inner loop the batch's
        accumulator ``acc``.
    ``gamma``
        ``gamma_f`` (``max_features`` int64 words), set when ``Phase.INNER`` is
        configured (which then clears ``_grad``).
    ``cache``
        The anchor errors ``C[i]`` (``halp_samples`` int64 entries: ``E`` has
        ``residual_bits <= 63`` bits).
    ``prng``
        The xorshift32 state of each of the ``lanes`` PRNG lanes (``uint32``).
    ``offset_shift``
        ``sh``, chosen when ``Phase.INNER`` is configured (0 until then).
    ``phase``
        The configured :class:`~ziphalp.hw.params.Phase`.

    :meth:`load_model` writes the model only; a ``Phase.FULL`` configuration
    re-centres the anchor on it. In the HALP phases the L2 decay plays no part,
    the full pass ignores the batch size and the flushes, every label beat
    carries the sample index (at ``SAMPLE_INDEX_OFFSET``, ``SAMPLE_INDEX_BITS``
    wide), and an index outside the cache raises ``ValueError`` (the gateware
    wraps it; the host never sends one).
    """

    def __init__(self, params: EngineParams):
        self.p = params
        self.model = np.zeros(params.max_features, dtype=np.int64)
        self.levels = np.zeros(params.levels_max, dtype=np.int64)
        self.anchor = np.zeros(params.max_features, dtype=np.int64)
        self.offset = np.zeros(params.max_features, dtype=np.int64)
        self.cache = np.zeros(params.halp_samples, dtype=np.int64)
        self.prng = prng_seeds(0, params.lanes)
        self.offset_shift = 0
        self.phase = Phase.SGD
        self.stale = 0
        self._past: list[np.ndarray] = []
        self.stochastic = False
        self.offset_bits = 8
        self.overflow = False
        self.clipped = False
        self.samples = 0
        self.updates = 0
        self.features = 0
        self._grad = np.zeros(params.max_features, dtype=np.int64)
        self.gamma = np.zeros(params.max_features, dtype=np.int64)
        # the resident store (builds with resident data)
        self.codes = np.zeros((params.resident_rows, params.lanes), dtype=np.uint8)
        self.resident_labels = np.zeros(params.resident_samples, dtype=np.int64)
        self.sampler = np.zeros(SAMPLER_ENTRIES, dtype=np.uint32)
        self.loaded = {region: 0 for region in Region}
        # the replay store (builds with one)
        self.replayed = bytearray(params.replay_beats * (params.beat_bits // 8))
        self._reset_position()

    # --- commands -----------------------------------------------------------------

    def configure(self, features: int, batch: int, shift: int, k: int = 8,
                  double: bool = True, loss: Loss = Loss.SQUARED, l2_shift: int = 0,
                  cost_pos: int = COST_ONE, cost_neg: int = COST_ONE,
                  phase: Phase = Phase.SGD, offset_bits: int = 8, scale_log: int = 0,
                  seed: int = 0, stochastic: bool = False, stale: int = 0) -> None:
        """Set the run-time configuration and clear the position in the sample and batch.

        ``Phase.SGD`` clears the gradient. ``Phase.FULL`` re-centres every word
        (``anchor = model``, ``offset = 0``, ``G = 0``). ``Phase.INNER`` chooses
        ``offset_shift`` from ``sum G_f**2`` and ``scale_log``
        (:func:`~ziphalp.hw.params.halp_shift`), turns every ``G_f`` into
        ``gamma_f = round_shift(G_f, offset_shift + shift)`` and seeds the PRNG
        lanes with ``seed``. The HALP fields (``offset_bits``, ``scale_log``,
        ``seed``, ``stochastic``, ``stale``) must be in range in every phase.
        ``stale`` delays the model each inner-loop sample's dot product sees by that
        many samples (section "Delayed gradients" of ``ziphalp.hw.params``).
        """
        p = self.p
        try:
            phase = Phase(phase)
        except ValueError:
            raise ValueError(f"phase must be a Phase, not {phase!r}") from None
        try:
            loss = Loss(loss)
        except ValueError:
            raise ValueError(f"loss must be a Loss, not {loss!r}") from None
        halp = phase != Phase.SGD
        scale_low = -(1 << (SCALE_LOG_BITS - 1))
        checks = [
            (1 <= features <= p.max_features, f"features must be 1..{p.max_features}"),
            (1 <= batch <= p.max_batch, f"batch must be 1..{p.max_batch}"),
            (0 <= shift <= SHIFT_MAX, f"shift must be 0..{SHIFT_MAX}"),
            (1 <= k <= p.max_k, f"k must be 1..{p.max_k}"),
            (0 <= l2_shift <= L2_SHIFT_MAX, f"l2_shift must be 0..{L2_SHIFT_MAX}"),
            (0 <= cost_pos < 1 << COST_BITS and 0 <= cost_neg < 1 << COST_BITS,
             f"costs must be 0..{(1 << COST_BITS) - 1}"),
            (p.l2_decay or l2_shift == 0, "this engine has no L2 decay: l2_shift must be 0"),
            (p.class_costs or cost_pos == cost_neg == COST_ONE,
             "this engine has no class costs: both must be 1.0"),
            (2 <= offset_bits <= OFFSET_BITS, f"offset_bits must be 2..{OFFSET_BITS}"),
            (scale_low <= scale_log < -scale_low,
             f"scale_log must be {scale_low}..{-scale_low - 1}"),
            (0 <= seed < 1 << 32, "seed must be 0..2**32 - 1"),
            (0 <= stale <= p.max_stale, f"stale must be 0..{p.max_stale}"),
            (stochastic in (0, 1), "stochastic must be a bool"),
            (p.halp or not halp, "this engine has no HALP mode: phase must be SGD"),
            (loss in HALP_LOSSES or not halp,
             "the HALP phases run the squared or the logistic loss only"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.features, self.batch, self.shift = features, batch, shift
        self.k, self.double, self.loss = k, bool(double), loss
        self.l2_shift, self.cost_pos, self.cost_neg = l2_shift, cost_pos, cost_neg
        self.phase, self.offset_bits = phase, int(offset_bits)
        self.scale_log, self.seed, self.stochastic = int(scale_log), int(seed), bool(stochastic)
        self.stale = int(stale)
        self._past = []                          # the models before the last stale + 1 samples
        if phase == Phase.FULL:
            self.anchor[:] = self.model
            self.offset[:] = 0
        if phase == Phase.INNER:
            self.offset_shift, self.gamma = inner_loop_prep(self._grad, self.scale_log, shift)
            self.prng = prng_seeds(self.seed, p.lanes)
        self._grad = np.zeros(p.max_features, dtype=np.int64)
        self._reset_position()

    def load_levels(self, levels) -> None:
        """Write levels ``l_0 .. l_{n-1}`` of the level table (``LEVEL`` words)."""
        levels = np.asarray(levels, dtype=np.int64)
        if not 2 <= len(levels) <= self.p.levels_max:
            raise ValueError(f"a level table has 2..{self.p.levels_max} levels, "
                             f"not {len(levels)}")
        if saturate(levels, LEVEL.bits)[1]:
            raise ValueError(f"levels must be {LEVEL.min_int}..{LEVEL.max_int}")
        self.levels[:len(levels)] = levels

    def load_model(self, start: int, weights) -> None:
        """Write model words from ``start`` on; refused (``RuntimeError``) while an
        inner loop is configured (the board answers ``STATE``)."""
        if self.phase == Phase.INNER:
            raise RuntimeError("LOAD_MODEL while the HALP inner loop is configured")
        weights = np.asarray(weights, dtype=np.int64)
        if start < 0 or start + len(weights) > self.p.max_features:
            raise ValueError("model range outside the engine")
        if saturate(weights, self.p.model_bits)[1]:
            raise ValueError(f"weights do not fit {self.p.model_bits} bits")
        self.model[start:start + len(weights)] = weights

    def load_data(self, region: Region, start: int, data: bytes) -> None:
        """``LOAD_DATA``: write whole beats into ``region`` of the resident store
        from beat ``start`` on, and extend its loaded length (``ziphalp.hw.protocol``).
        ValueError (``ARGUMENT``) for a load past the region or beyond its loaded
        length; nothing is written then."""
        p = self.p
        if not p.stores_data:
            raise ValueError("this engine has no resident data and no replay store")
        region, width = Region(region), p.beat_bits // 8
        if region not in regions(p):
            raise ValueError(f"this engine has no {region.name} region")
        if len(data) % width or not data:
            raise ValueError(f"a load is whole {width}-byte beats")
        beats = len(data) // width
        if start > self.loaded[region] or start + beats > region.beats(p):
            raise ValueError(f"load of beats {start}..{start + beats - 1} into {region.name} "
                             f"(loaded {self.loaded[region]}, holds {region.beats(p)})")
        raw = np.frombuffer(data, dtype=np.uint8)
        if region == Region.BEATS:
            self.replayed[start * width:start * width + len(raw)] = data
        elif region == Region.CODES:
            flat = self.codes.reshape(-1)
            flat[start * width:start * width + len(raw)] = raw
        elif region == Region.LABELS:
            per_beat = width // 2
            labels = np.frombuffer(data, dtype="<i2").astype(np.int64)
            first = start * per_beat
            keep = min(len(labels), p.resident_samples - first)
            self.resident_labels[first:first + keep] = labels[:keep]
        else:
            per_beat = width // 4
            self.sampler[start * per_beat:start * per_beat + len(raw) // 4] = \
                np.frombuffer(data, dtype="<u4")
        self.loaded[region] = start + beats if start == 0 else max(self.loaded[region],
                                                                    start + beats)

    def run(self, count: int, first: int, stride: int, samples: int, seed: int,
            bias: int = 0) -> bytes:
        """``RUN``: feed ``count`` resident samples (``walk``) sampled on chip, the
        last beat flushing; returns the beats fed. ValueError for arguments out of
        range (``ARGUMENT``), RuntimeError before ``configure`` or beyond the data
        loaded (``STATE``). ``bias``: the last feature is the constant code of 1.0
        and the store holds the ``d - 1`` before it."""
        p = self.p
        if not p.resident:
            raise ValueError("this engine has no resident data")
        if not (1 <= count < 1 << 32 and 1 <= samples <= p.resident_samples
                and 0 <= first < samples and 0 <= stride < samples and bias in (0, 1)):
            raise ValueError("RUN arguments out of range")
        if self.phase != Phase.SGD and samples > p.halp_samples:
            raise ValueError(f"a HALP phase runs at most {p.halp_samples} samples")
        if self.features == 0:
            raise RuntimeError("RUN before configure")
        stored = self.features - bias
        rows = p.resident_rows_for(stored)
        width = p.beat_bits // 8
        if (samples * rows > p.resident_rows
                or self.loaded[Region.CODES] < samples * rows * p.beats_per_row
                or self.loaded[Region.LABELS] * (width // 2) < samples
                or self.loaded[Region.SAMPLER] < Region.SAMPLER.beats(p)):
            raise RuntimeError("RUN beyond the resident data loaded")
        order = walk(count, first, stride, samples)
        rows_of = order[:, None] * rows + np.arange(rows)
        codes = self.codes[rows_of].reshape(count, rows * p.lanes)[:, :stored]
        if bias:
            codes = np.hstack([codes, np.full((count, 1), CODE_ZERO + CODE_SCALE, np.uint8)])
        fields = sample_fields(codes, self.sampler, p.lanes, seed, self.k, self.double,
                               p.values_per_beat(self.k, self.double))
        beats = resident_beats(fields, self.resident_labels[order],
                               order if self.phase != Phase.SGD else None, p, self.k,
                               self.double)
        self.stream(beats, flush=True)
        return beats

    def replay(self, first: int, count: int) -> bytes:
        """``REPLAY``: feed ``count`` beats of the replay store, beat ``(first + u) mod
        loaded``, the last one flushing; returns the beats fed. ValueError for
        ``count`` 0 (``ARGUMENT``), RuntimeError before ``configure`` or with
        ``first`` not below the beats loaded (``STATE``)."""
        p = self.p
        if not p.replay:
            raise ValueError("this engine has no replay store")
        if not 1 <= count < 1 << 32 or first < 0:
            raise ValueError("REPLAY arguments out of range")
        if self.features == 0:
            raise RuntimeError("REPLAY before configure")
        loaded = self.loaded[Region.BEATS]
        if first >= loaded:
            raise RuntimeError(f"REPLAY from beat {first} of {loaded} loaded")
        width = p.beat_bits // 8
        stored = np.frombuffer(bytes(self.replayed[:loaded * width]), np.uint8).reshape(-1, width)
        beats = stored[(first + np.arange(count)) % loaded].tobytes()
        self.stream(beats, flush=True)
        return beats

    def read_model(self, start: int = 0, count: int | None = None) -> np.ndarray:
        count = self.p.max_features - start if count is None else count
        return self.model[start:start + count].copy()

    def clear_flags(self) -> None:
        self.overflow = self.clipped = False

    def stream(self, data: bytes, flush: bool = False) -> None:
        """Consume beats exactly as the engine's ``beats`` stream does.

        ``flush`` marks the last beat (``STREAM_FLUSH``): the batch ends with the
        sample that holds it, possibly once later beats complete that sample.
        """
        if self.features == 0:
            raise RuntimeError("stream before configure")
        width = self.p.beat_bits // 8
        if len(data) % width:
            raise ValueError(f"stream of {len(data)} bytes is not whole {width}-byte beats")
        count = len(data) // width
        for index in range(count):
            self._beat(data[index * width:(index + 1) * width], flush and index == count - 1)

    def train(self, fields: np.ndarray, labels: np.ndarray, flush: bool = True,
              indices: np.ndarray | None = None) -> None:
        """Consume whole samples: ``fields`` int ``(n, d)``, ``labels`` int ``(n,)``.

        Equivalent to streaming their packed beats; ``flush`` ends the batch
        after the last sample. ``indices`` (``(n,)``, the label beats' bits
        16..31) are the samples' places in the anchor-error cache: required in
        the HALP phases, ignored in the SGD phase.
        """
        fields = np.asarray(fields, dtype=np.int64)
        labels = np.asarray(labels, dtype=np.int64)
        if self._pos != 0:
            raise RuntimeError("train() needs the engine at a sample boundary")
        if fields.ndim != 2 or fields.shape[1] != self.features or len(labels) != len(fields):
            raise ValueError(f"fields must be (n, {self.features}) with n labels")
        if indices is None:
            if self.phase != Phase.SGD:
                raise ValueError("the HALP phases need the sample indices")
            indices = np.zeros(len(fields), dtype=np.int64)
        indices = np.asarray(indices, dtype=np.int64)
        if indices.shape != labels.shape:
            raise ValueError(f"indices must be ({len(fields)},)")
        for i in range(len(fields)):
            self._sample(fields[i], int(labels[i]), flush and i == len(fields) - 1,
                         int(indices[i]))

    # --- arithmetic ---------------------------------------------------------------

    def _reset_position(self) -> None:
        self._pos = 0                 # 0: expecting the label beat; j: feature beat j
        self._batch_pos = 0
        self._flush = False
        self._label = 0
        self._index = 0
        self._beats: list[bytes] = []

    def _beat(self, beat: bytes, flush: bool) -> None:
        self._flush |= flush
        if self._pos == 0:
            word = int.from_bytes(beat, "little")
            raw = word & ((1 << LABEL.bits) - 1)
            self._label = raw - (1 << LABEL.bits) if raw >> (LABEL.bits - 1) else raw
            self._index = word >> SAMPLE_INDEX_OFFSET & ((1 << SAMPLE_INDEX_BITS) - 1)
            self._pos = 1
            return
        self._beats.append(beat)
        if self._pos < self.p.beats_for(self.features, self.k, self.double):
            self._pos += 1
            return
        fields = unpack_fields(b"".join(self._beats), self.p, self.k, self.double,
                               self.features)
        label, flush = self._label, self._flush
        self._pos, self._beats, self._flush = 0, [], False
        self._sample(fields, label, flush, self._index)

    def _scaled(self, error: int, shift: int, label: int) -> int:
        """``sigma``: ``sat(round_shift(S * cost, COST_FRAC))`` with
        ``S = sat(round_shift(error, shift))``; a clip sets ``clipped``."""
        bits = self.p.sigma.bits
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        scaled = round_shift(error, shift)
        cost = self.cost_pos if label > 0 else self.cost_neg
        sigma = round_shift(min(max(scaled, lo), hi) * cost, COST_FRAC)
        self.clipped |= not (lo <= scaled <= hi and lo <= sigma <= hi)
        return min(max(sigma, lo), hi)

    def _sample(self, fields: np.ndarray, label: int, flush: bool, index: int = 0) -> None:
        p, d = self.p, self.features
        if self.phase != Phase.SGD and not 0 <= index < p.halp_samples:
            raise ValueError(f"sample index {index} outside the anchor-error cache "
                             f"(0..{p.halp_samples - 1})")
        q1, q2 = decode(fields, self.levels, self.k, self.double)
        w = self.model[:d]
        # the inner loop's dot product sees the model from before sample max(u - stale, 0)
        stale = self.stale if self.phase == Phase.INNER else 0
        self._past = (self._past + [w.copy()])[-(stale + 1):]
        dot = int(np.dot(self._past[0], q1))
        error = loss_derivative(dot, label, self.loss, p)
        self.samples += 1
        if self.phase == Phase.FULL:
            self.cache[index] = error
            sigma = self._scaled(error, LEVEL.frac + self.shift - SIGMA_FRAC, label)
            self._grad[:d] += sigma * q2
            return
        if self.phase == Phase.INNER:
            self._inner(error - int(self.cache[index]), label, q2, flush)
            return
        sigma = self._scaled(error, 2 * LEVEL.frac + self.shift - SIGMA_FRAC, label)
        self._grad[:d] += sigma * q2
        self._batch_pos += 1
        if flush or self._batch_pos == self.batch:
            decay = (w >> self.l2_shift) if self.l2_shift else 0
            updated, overflow = saturate(w - round_shift(self._grad[:d], SIGMA_FRAC) - decay,
                                         p.model_bits)
            self.model[:d] = updated
            self.overflow |= overflow
            self._grad[:d] = 0
            self._batch_pos = 0
            self.updates += 1

    def _inner(self, error: int, label: int, q2: np.ndarray, flush: bool) -> None:
        """One inner-loop sample from ``Ed = E(w) - C[i]``; at a batch end, the update."""
        p, d, sh = self.p, self.features, self.offset_shift
        sigma = self._scaled(error, LEVEL.frac + self.shift + sh - SIGMA_FRAC, label)
        per_beat = p.values_per_beat(self.k, self.double)
        beats = p.beats_for(d, self.k, self.double)
        states = np.empty((beats, p.lanes), dtype=np.uint32)
        for j in range(beats):                 # every lane steps once per update beat
            self.prng = xorshift32(self.prng)
            states[j] = self.prng
        self._grad[:d] += self.gamma[:d] + sigma * q2
        self._batch_pos += 1
        if not (flush or self._batch_pos == self.batch):
            return
        if self.stochastic:
            f = np.arange(d)
            r = (states[f // per_beat, f % p.lanes] >> np.uint32(32 - HALP_FRAC)).astype(
                np.int64)
        else:
            r = 1 << (HALP_FRAC - 1)
        low, high = -(1 << (self.offset_bits - 1)), (1 << (self.offset_bits - 1)) - 1
        z = np.clip(self.offset[:d] - ((self._grad[:d] + r) >> HALP_FRAC), low, high)
        self.offset[:d] = z
        updated, overflow = saturate(self.anchor[:d] + (z << sh), p.model_bits)
        self.model[:d] = updated
        self.overflow |= overflow
        self._grad[:d] = 0
        self._batch_pos = 0
        self.updates += 1
