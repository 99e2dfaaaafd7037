"""Build-time parameters of the SGD engine, its run-time modes and fixed-point formats.

This module is the single place where every number format of the engine is
written down. The gateware (``ziphalp.hw``), the golden model
(``ziphalp.sim.golden``) and the host (``ziphalp.host``) all derive their widths
from here. It must not import Amaranth: the host and the golden model use it
without a hardware toolchain.

Data encoding (ZipML)
---------------------
Run-time precision ``k`` (1..``max_k``): ``s = 2**k`` intervals between ``2**k + 1``
levels ``l_0 .. l_s`` held in the engine's level table (``LEVEL`` words, loaded
with ``LOAD_LEVELS``). A feature value is sent as a *field* of
``field_bits(k, double) = k + 1 + double`` bits:

* double sampling: ``j`` (bits ``0..k-1``), ``up1`` (bit ``k``), ``up2`` (bit ``k+1``);
  the engine uses ``q1 = l[j + up1]`` in the dot product and ``q2 = l[j + up2]``
  in the gradient.
* single sampling (and deterministic rounding): ``j`` and ``up`` (bit ``k``);
  ``q1 = q2 = l[j + up]``.

A feature beat (``W = beat_bits`` bits, little-endian bytes) carries
``K = values_per_beat(k, double) = min(lanes, W // field_bits)`` fields, field ``i``
in bits ``i*b .. i*b + b - 1``; feature ``f`` of a sample is field ``f % K`` of
feature beat ``f // K``. A sample is one label beat (``LABEL`` in bits 0..15, the
rest zero) and ``ceil(d / K)`` feature beats. Fields past ``d`` in the last beat
are ignored.

Arithmetic of one sample (all integers; ``FM = model.frac``, ``LF = LEVEL.frac``)
-------------------------------------------------------------------------------
====================  ==========================================================
``D``                 ``sum_f w_f q1_f``, value ``D * 2**-(FM + LF)``
``pos``               ``y > 0`` (the class of a classification label)
``ONE``, ``Y``        ``1 << (FM + LF)``; ``y << (FM + LF - LABEL.frac)``
``E`` squared         ``D - Y``
``E`` logistic        ``(P - pos * 2**16) << (FM + LF - 16)``, ``P = sigmoid_table(D)``
``E`` hinge           ``active ? (pos ? -ONE : ONE) : 0``,
                      ``active = pos ? D < ONE : D > -ONE``
``E`` squared hinge   ``active ? D - (pos ? ONE : -ONE) : 0``
``S``                 ``sat(round_shift(E, 2*LF + shift - SIGMA_FRAC), sigma.bits)``
``sigma``             ``sat(round_shift(S * cost, COST_FRAC), sigma.bits)``, ``cost`` the
                      run-time cost of the sample's class (``COST_FRAC`` fraction bits)
``g_f``               ``sum over the batch of sigma * q2_f`` (exact)
``w_f'``              ``sat(w_f - round_shift(g_f, SIGMA_FRAC) - decay_f, model.bits)``,
                      ``decay_f = w_f >> l2_shift`` (floor), 0 when ``l2_shift`` is 0
====================  ==========================================================

``round_shift(x, s)`` is ``(x + 2**(s-1)) >> s`` (round half up) for ``s > 0``.
``sigma`` is the step ``2**-shift`` times the loss derivative, in model LSBs per
level unit with ``SIGMA_FRAC`` extra fraction bits; a clip of ``S`` or ``sigma``
sets the sticky ``clipped`` flag, a clip of ``w`` the sticky ``overflow`` flag.

Sigmoid (logistic loss): ``u = D`` if ``D >= 0`` else ``~D`` (``-D - 1``);
``i = min(u >> (FM + LF - SIGMOID_CELL_BITS), SIGMOID_CELLS - 1)``;
``P = T[i]`` if ``D >= 0`` else ``2**16 - T[i]``, with
``T[i] = floor(2**16 / (1 + exp(-(i + 1/2) / 2**SIGMOID_CELL_BITS)) + 1/2)``
(:func:`sigmoid_table`). ``|P / 2**16 - sigmoid(z)| <= SIGMOID_ERROR_BOUND`` for
every ``z``: at most ``max|sigmoid'| * half a cell = 2**-9`` inside the table,
``1 - sigmoid(8) < 2**-9`` beyond it, plus ``2**-17`` of rounding and ``2**-34``
for the ones' complement.

HALP mode (bit-centering SVRG; built when ``halp_samples > 0``)
---------------------------------------------------------------
The model ``w`` (the ``model`` words, what ``READ_MODEL`` returns) is kept equal
to ``sat(a + (z << sh), model.bits)``: a wide *anchor* ``a`` (``model`` format)
plus a ``b``-bit signed *offset* ``z`` (an ``OFFSET_BITS``-wide word clamped to
``b`` bits) on the grid ``delta = 2**-(FM - sh)``, ``0 <= sh <= OFFSET_SHIFT_MAX``.
``CONFIGURE`` chooses a *phase* (mode bits 3-4, :class:`Phase`); in both HALP
phases the loss is squared or logistic, every label beat carries the sample's
index ``i < halp_samples`` in bits 16..31, and ``batch`` and flushes are ignored.

Both HALP phases scale ``E`` by ``2**-(LF + shift - SIGMA_FRAC)`` rather than SGD's
``2**-(2*LF + shift - SIGMA_FRAC)``: their ``sigma`` and ``G`` carry ``HALP_FRAC =
SIGMA_FRAC + LF`` fraction bits (of a model LSB in the full pass, of an offset LSB
in the inner loop) per level LSB, and ``sigma`` is ``LF`` bits wider in HALP builds
(:attr:`EngineParams.sigma`). SGD's scale would round each sample's share of the
full gradient to ``2**-SIGMA_FRAC`` of a model LSB per level unit (a floor near
``1e-7`` relative suboptimality at ``n = 1000``) and an inner step to a quarter
of an offset LSB (which stalls a 4-bit grid).

Delayed gradients in the inner loop (``stale``; builds with ``model_copies > 1``,
the HALP builds). ``CONFIGURE``'s ``stale`` ``tau`` (``0..max_stale``) lets inner-loop
sample ``u`` (counted from 0 at ``CONFIGURE``) take its dot product, and so ``E``,
at the model as it was before sample ``max(u - tau, 0)``: after the updates of the
batches that ended at samples ``< u - tau``, none later. Every update still starts
from the newest offset ``z``. ``tau = 0`` is plain mini-batch HALP; the SGD phase
and the full pass ignore ``tau``. The engine keeps ``model_copies`` copies of the
model (each inner-loop update writes the next one; all are made equal when an
inner loop starts), so a sample can read a past model while newer updates are
written: with ``tau`` about ``batch_end_gap / (n + 1)`` one-sample batches stream at
a beat a cycle. ``LOAD_MODEL`` is refused while an inner loop is configured.

Full pass (``Phase.FULL``). ``CONFIGURE`` re-centres, for every word: ``a = w``,
``z = 0``, ``G = 0``. Then per sample: ``E`` at ``w`` as above; the *anchor
error* ``C[i] = E`` is cached; ``S = sat(round_shift(E, LF + shift - SIGMA_FRAC),
sigma.bits)``, ``sigma = sat(round_shift(S * cost, COST_FRAC), sigma.bits)``
(``shift`` and the class costs scale the sum: the host sends ``shift = ceil(log2
n)`` and both costs ``round(2**(COST_FRAC + shift) / n)``, so ``sigma`` is ``E / n``
within the cost's precision); ``G_f += sigma * q2_f``. The model does not change.

Inner loop (``Phase.INNER``). ``CONFIGURE`` (which does not clear ``G``) chooses
the offset grid from ``S = sum_f G_f**2`` (exact, over every word; so an inner loop
needs a full pass right before it: a second ``Phase.INNER`` would take the last
batch's leftovers for ``G``):

* ``S = 0``: ``sh = 0``; else ``p = msb(S)`` (``2**p <= S < 2**(p+1)``),
  ``m = floor(S * 2**(LOG_FRAC - p)) - 2**LOG_FRAC`` (the ``LOG_FRAC`` bits below
  the msb), ``lam = p * 2**LOG_FRAC + m`` (a piecewise-linear ``log2 S``, at most
  0.086 low),
* ``X = lam - 2**(LOG_FRAC + 1) * HALP_FRAC - 2 * scale_log``,
  ``sh = clamp((X + 2**LOG_FRAC) >> (LOG_FRAC + 1), 0, OFFSET_SHIFT_MAX)``,

i.e. ``log2 delta`` rounded to the nearest integer with ``delta = |g| / (mu * (2**(b-1)
- 1))`` when the host sends ``scale_log = round(2**LOG_FRAC * log2(mu * (2**(b-1) -
1)))``; then every word gets ``gamma_f = round_shift(G_f, sh + shift)`` (identity
for a shift of 0), ``shift`` being the inner step's, and ``G_f = 0``: ``gamma`` is
``2**-shift * g / delta`` with ``HALP_FRAC`` fraction bits. The PRNG is seeded.
Then per sample ``G_f += gamma_f + sigma * q2_f``, and at the end of a batch (``batch``
samples or a flush) the model update, after which ``G = 0``:

====================  ==========================================================
``Ed``                ``E(w) - C[i]`` (``E`` at the current ``w``, same loss)
``S``                 ``sat(round_shift(Ed, LF + shift + sh - SIGMA_FRAC), sigma.bits)``
``sigma``             ``sat(round_shift(S * cost, COST_FRAC), sigma.bits)``
``z_f'``              ``clamp(z_f - ((G_f + r_f) >> HALP_FRAC), -2**(b-1), 2**(b-1) - 1)``
``w_f'``              ``sat(a_f + (z_f' << sh), model.bits)`` (a clip sets ``overflow``)
====================  ==========================================================

``r_f = 2**(HALP_FRAC - 1)`` (round to nearest, half up) unless mode bit 5 asks for
stochastic rounding: then ``r_f`` is the top ``HALP_FRAC`` bits of PRNG lane
``f % lanes`` after its step for the update beat that carries feature ``f`` in the
batch's last sample. With ``2**-shift = alpha / B`` a batch of ``B`` samples takes
the mini-batch SVRG step ``z - alpha (mean_i (grad f_i(w) - grad f_i(a)) + g) / delta``.
PRNG lane ``l`` is xorshift32 (``x ^= x << 13; x ^= x >> 17; x ^= x << 5``, 32 bits)
seeded with ``(seed + (l + 1) * 0x9E3779B9) mod 2**32`` (``0x6D2B79F5`` if that is
0); every lane steps once per update beat of the inner loop, whatever the
features in it. A clamp of ``z`` is not a fault and sets no flag.
Resident data (builds with ``resident_rows > 0``)
-----------------------------------------------
The board can hold a data set and feed the engine from it, so that an epoch
needs no host traffic. Each feature value is stored once as an 8-bit *code*
``c`` (value ``(c - CODE_ZERO) / CODE_SCALE``, so 1..255 covers [-1, 1] in steps
of 1/127 and 0.0 is exact); sample ``s`` of the resident set takes rows ``s*R ..
s*R + R - 1`` of ``lanes`` codes each, ``R = ceil(d / lanes)``, feature ``f`` in
row ``s*R + f // lanes``, column ``f % lanes``. Its label (a ``LABEL`` word) is
label ``s`` of a separate label store. The *sampler table* (``SAMPLER_ENTRIES``
entries, loaded with the data) maps a code to an interval ``j`` of the level
table and a threshold ``t`` (0..``2**SAMPLER_T_BITS``, in ``2**-16``): the value
rounds up (``l_{j+1}``) with probability ``t / 2**16``, down (``l_j``) otherwise.
The host derives it from the levels, so one resident copy serves every
precision, level set and sampling mode.

``RUN`` feeds ``count`` samples: sample ``u`` (from 0) is resident sample
``(first + u * stride) mod n``. With ``RUN``'s ``bias`` the store holds ``d - 1``
features a sample (``R = ceil((d - 1) / lanes)``) and feature ``d - 1`` is the
constant 1.0: its code is ``CODE_ZERO + CODE_SCALE`` whatever the memory holds.
Each sample becomes exactly the beats the host would stream (encoding above; a
``Phase.FULL``/``INNER`` label beat carries the index),
the run's last beat flushing the batch. Feature beat ``b`` of a sample holds
features ``f = b*K + i`` in field ``i < K``; before each feature beat every
sampling lane ``i < lanes`` steps its xorshift32 state (seeded by ``RUN``'s
``seed`` like the HALP PRNG lanes: ``(seed + (i + 1) * PRNG_GOLDEN) mod 2**32``),
and with ``r1``/``r2`` its low/high 16 bits field ``i`` of a feature ``f < d`` is
``j | up1 << k | up2 << (k + 1)`` (double sampling; ``j | up1 << k`` single),
``up = r < t``; fields of ``f >= d`` are 0. Double sampling gets two independent
roundings of the stored value, fresh each run; ``t`` in {0, 2**16} for every
code gives deterministic rounding.

Replayed data (builds with ``replay_beats > 0``)
-----------------------------------------------
A board too small for the resident store's sampling lanes can still keep a data
set: the *replay store* holds ``replay_beats`` beats exactly as the host would
stream them (label beats and packed feature beats, encoding above), quantised
once by the host. ``REPLAY`` feeds ``count`` of them to the engine, beat
``(first + u) mod loaded`` for ``u < count`` (``loaded`` the beats loaded), the
last one flushing the batch, exactly as ``STREAM_FLUSH`` would feed their
bytes. Sample boundaries are the host's business. The samples are fixed at load
time: every replay of a sample sees the same roundings (a double-sampled pair
is still two independent roundings, drawn once). The engine's arithmetic is
unchanged.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import asdict, dataclass
from enum import IntEnum

__all__ = [
    "QFormat", "LEVEL", "LABEL", "SIGMA_FRAC", "SHIFT_MAX", "COST_BITS", "COST_FRAC", "COST_ONE",
    "L2_SHIFT_MAX", "SIGMOID_FRAC", "SIGMOID_CELL_BITS", "SIGMOID_CELLS",
    "SIGMOID_ERROR_BOUND", "Loss", "LOSS_NAMES", "HALP_LOSSES", "field_bits", "sigmoid_table",
    "EngineParams",
    "BOARD_PARAMS", "Phase", "HALP_FRAC", "OFFSET_BITS", "OFFSET_SHIFT_MAX", "LOG_FRAC",
    "SCALE_LOG_BITS", "MODEL_COPIES", "PRNG_GOLDEN", "PRNG_ZERO_SEED", "halp_shift",
    "CODE_BITS", "CODE_ZERO", "CODE_SCALE", "SAMPLER_ENTRIES", "SAMPLER_T_BITS",
]


@dataclass(frozen=True)
class QFormat:
    """A signed fixed-point format: ``bits`` in total, ``frac`` of them fractional."""

    bits: int
    frac: int

    def __post_init__(self):
        if not 2 <= self.bits <= 64:
            raise ValueError(f"fixed-point width must be 2..64 bits, not {self.bits}")
        if not 0 <= self.frac < self.bits:
            raise ValueError(f"fraction bits must be 0..{self.bits - 1}, not {self.frac}")

    @property
    def min_int(self) -> int:
        return -(1 << (self.bits - 1))

    @property
    def max_int(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def scale(self) -> float:
        """Value of one LSB."""
        return 2.0 ** -self.frac

    def __str__(self):
        return f"Q{self.bits - self.frac}.{self.frac}"


#: Quantisation levels in the engine's level table: signed 10-bit, value ``l / 256``
#: (range [-2, 2); levels over [-1, 1] use -256..256).
LEVEL = QFormat(10, 8)
#: Labels: signed 16-bit, value ``y / 16384`` (range [-2, 2)).
LABEL = QFormat(16, 14)
#: The label beat carries the label (a ``LABEL`` word) in its low bits and, in the
#: HALP phases, the sample's index into the anchor-error cache in bits
#: ``SAMPLE_INDEX_OFFSET .. SAMPLE_INDEX_OFFSET + SAMPLE_INDEX_BITS - 1``.
SAMPLE_INDEX_OFFSET = 16
SAMPLE_INDEX_BITS = 16
#: Extra fraction bits carried by the scaled residual ``sigma`` and the gradient.
SIGMA_FRAC = 6
#: Largest step shift: the step size is ``2**-shift``.
SHIFT_MAX = 31
#: Class costs: unsigned, ``COST_BITS`` wide, ``COST_FRAC`` fraction bits (1.0 = 64).
COST_BITS = 8
COST_FRAC = 6
#: The cost 1.0 (the only one an engine built without class costs takes).
COST_ONE = 1 << COST_FRAC
#: Largest L2 decay shift (0 turns the decay off).
L2_SHIFT_MAX = 31
#: Sigmoid output: unsigned, value ``P / 2**SIGMOID_FRAC``.
SIGMOID_FRAC = 16
#: The sigmoid table has cells of width ``2**-SIGMOID_CELL_BITS`` over [0, 8).
SIGMOID_CELL_BITS = 6
SIGMOID_CELLS = 8 << SIGMOID_CELL_BITS
#: Largest error of the engine's sigmoid (see the module docstring).
SIGMOID_ERROR_BOUND = 2.0 ** -9 + 2.0 ** -17 + 2.0 ** -34


#: Width of the HALP offset word; the run-time offset width b is 2..OFFSET_BITS.
OFFSET_BITS = 16
#: Largest offset shift ``sh``: the offset grid is ``2**(sh - model.frac)``.
OFFSET_SHIFT_MAX = 23
#: Fraction bits of the inner loop's accumulator, in offset LSBs (HALP).
HALP_FRAC = SIGMA_FRAC + LEVEL.frac
#: Copies of the model in builds with delayed gradients (the HALP builds); the
#: largest ``stale`` is two fewer.
MODEL_COPIES = 8
#: Fraction bits of the log-domain scale rule (``lam`` and ``scale_log``).
LOG_FRAC = 8
#: ``scale_log`` is a signed 16-bit ``CONFIGURE`` field.
SCALE_LOG_BITS = 16
#: PRNG seeding: lane ``l`` starts at ``seed + (l + 1) * PRNG_GOLDEN`` (mod 2**32),
#: or at ``PRNG_ZERO_SEED`` when that is 0.
PRNG_GOLDEN = 0x9E3779B9
PRNG_ZERO_SEED = 0x6D2B79F5


#: Resident data: bits of a stored code, the code of 0.0 and the codes per unit.
CODE_BITS = 8
CODE_ZERO = 128
CODE_SCALE = 127
#: Entries of the sampler table (one per code) and the width of a threshold ``t``
#: (``0..2**16``: ``2**16`` always rounds up).
SAMPLER_ENTRIES = 1 << CODE_BITS
SAMPLER_T_BITS = 17


class Phase(IntEnum):
    """Run-time phase of the engine (``CONFIGURE`` mode bits 3-4)."""

    SGD = 0       # mini-batch SGD (ZipML)
    FULL = 1      # HALP: re-centre, then the full-gradient pass
    INNER = 2     # HALP: choose the offset grid, then the inner loop


def halp_shift(norm2: int, scale_log: int) -> int:
    """The offset shift ``sh`` the engine chooses from ``S = sum G_f**2`` (module docstring)."""
    if norm2 <= 0:
        return 0
    msb = norm2.bit_length() - 1
    mant = (norm2 << LOG_FRAC >> msb) - (1 << LOG_FRAC)
    lam = (msb << LOG_FRAC) + mant
    x = lam - (HALP_FRAC << (LOG_FRAC + 1)) - 2 * scale_log
    return min(max((x + (1 << LOG_FRAC)) >> (LOG_FRAC + 1), 0), OFFSET_SHIFT_MAX)


class Loss(IntEnum):
    """Run-time loss of the engine (``CONFIGURE``)."""

    SQUARED = 0
    LOGISTIC = 1
    HINGE = 2
    SQUARED_HINGE = 3


#: The loss table: each ``Loss`` with its name on the command line (``ziphalp train
#: --loss``), in code order; the float references of ``ziphalp.host.reference`` spell
#: the names with ``_`` for ``-``.
LOSS_NAMES: dict[Loss, str] = {
    Loss.SQUARED: "squared",
    Loss.LOGISTIC: "logistic",
    Loss.HINGE: "hinge",
    Loss.SQUARED_HINGE: "squared-hinge",
}
assert list(LOSS_NAMES) == list(Loss), "LOSS_NAMES names every Loss, in code order"
#: The losses the HALP phases run.
HALP_LOSSES = (Loss.SQUARED, Loss.LOGISTIC)


def field_bits(k: int, double: bool) -> int:
    """Bits of one feature field at precision ``k``: ``k + 2`` double, ``k + 1`` single."""
    return k + 1 + bool(double)


def sigmoid_table() -> list[int]:
    """The engine's sigmoid table ``T`` (``SIGMOID_CELLS`` unsigned ``SIGMOID_FRAC``-bit words)."""
    cell = 2.0 ** -SIGMOID_CELL_BITS
    return [math.floor(2.0 ** SIGMOID_FRAC / (1.0 + math.exp(-(i + 0.5) * cell)) + 0.5)
            for i in range(SIGMOID_CELLS)]


def clog2(n: int) -> int:
    """Bits needed to count ``n`` distinct values (``ceil(log2(n))``, 0 for n <= 1)."""
    return max(0, (n - 1).bit_length())


@dataclass(frozen=True)
class EngineParams:
    """Build-time parameters of one engine (one bitstream).

    Parameters
    ----------
    beat_bits : int
        Width W of an input beat, a multiple of 8 from 16 to 512.
    lanes : int or None
        Physical lanes L (products per cycle in the dot product and the update),
        a power of two from 1 to ``beat_bits // 2``. At run time a beat carries
        ``min(lanes, W // field_bits)`` values. Defaults to the largest power of
        two not above ``beat_bits // 2`` (every precision at full rate).
    max_k : int
        Largest run-time precision k (1..8); ``max_k + 2 <= beat_bits``.
    max_features : int
        Largest feature count d the engine accepts at run time.
    max_batch : int
        Largest mini-batch size B the engine accepts at run time.
    model_bits, model_frac : int
        Model word format (``QFormat(model_bits, model_frac)``).
    frame_bytes : int
        Largest payload of one link frame, a multiple of ``beat_bits // 8``.
    clock_hz : int
        Engine clock, reported by ``identify``.
    class_costs : bool
        Build the class-cost multiply (else every cost must be 1.0).
    l2_decay : bool
        Build the L2 decay (else ``l2_shift`` must be 0).
    halp_samples : int
        Build HALP mode with an anchor-error cache of this many samples (0: no
        HALP). Needs ``beat_bits >= 32`` (the sample index rides in the label
        beat) and the class costs (they scale the full gradient by ``1/n``).
    resident_rows : int
        Rows of ``lanes`` 8-bit codes the resident data store holds (0: no
        resident data). Needs ``beat_bits`` 32 or 64 and ``lanes * 8`` a multiple
        of ``beat_bits`` (a loaded beat fills part of one row).
    resident_samples : int
        Labels the resident store holds: the most samples of a resident set.
    replay_beats : int
        Beats the replay store holds (0: none): host-packed stream beats the
        board replays (module docstring, "Replayed data").
    deep_pipeline : bool
        Register stages for a fast clock: every block RAM read of the engine goes
        into a flip-flop before any logic (nextpnr times an ECP5 block RAM's output
        at its unregistered delay), and the loss and the decoder get a stage more
        each. Costs flip-flops and a few cycles of ``update_gap`` (the arithmetic
        is the same); the iCEBreaker, short of logic cells, is built without it.
    """

    beat_bits: int = 32
    lanes: int | None = None
    max_k: int = 8
    max_features: int = 512
    max_batch: int = 16
    model_bits: int = 32
    model_frac: int = 24
    frame_bytes: int = 1024
    clock_hz: int = 48_000_000
    class_costs: bool = True
    l2_decay: bool = True
    halp_samples: int = 0
    resident_rows: int = 0
    resident_samples: int = 0
    replay_beats: int = 0
    deep_pipeline: bool = False

    def __post_init__(self):
        def fail(msg):
            raise ValueError(f"EngineParams: {msg}")

        if self.beat_bits % 8 or not 16 <= self.beat_bits <= 512:
            fail(f"beat_bits must be a multiple of 8 from 16 to 512, not {self.beat_bits}")
        if self.lanes is None:
            object.__setattr__(self, "lanes", 1 << ((self.beat_bits // 2).bit_length() - 1))
        if (not 1 <= self.lanes <= self.beat_bits // 2) or self.lanes & (self.lanes - 1):
            fail(f"lanes must be a power of two from 1 to {self.beat_bits // 2}, "
                 f"not {self.lanes}")
        if not 1 <= self.max_k <= 8 or self.max_k + 2 > self.beat_bits:
            fail(f"max_k must be 1..8 (and at most beat_bits - 2), not {self.max_k}")
        if not 1 <= self.max_features <= 65535:
            fail(f"max_features must be 1..65535, not {self.max_features}")
        if not 1 <= self.max_batch <= 65535:
            fail(f"max_batch must be 1..65535, not {self.max_batch}")
        if not 16 <= self.model_bits <= 32:   # the link carries weights as int32
            fail(f"model_bits must be 16..32, not {self.model_bits}")
        low = max(LABEL.frac - LEVEL.frac, SIGMOID_FRAC - LEVEL.frac)
        if not low <= self.model_frac <= self.model_bits - 2:
            fail(f"model_frac must be {low}..{self.model_bits - 2}, not {self.model_frac}")
        if self.residual_bits > 63:
            fail(f"model_bits {self.model_bits} with max_features {self.max_features} needs a "
                 f"{self.residual_bits}-bit residual; at most 63 bits are supported")
        if self.frame_bytes % (self.beat_bits // 8) or not 64 <= self.frame_bytes <= 65535:
            fail(f"frame_bytes must be a multiple of {self.beat_bits // 8} from 64 to 65535, "
                 f"not {self.frame_bytes}")
        if self.frame_bytes < 2 * self.levels_max:
            fail(f"frame_bytes too small for a level table of {self.levels_max} levels")
        if not 0 <= self.halp_samples <= 65535:
            fail(f"halp_samples must be 0..65535, not {self.halp_samples}")
        if self.halp_samples and (self.beat_bits < 32 or not self.class_costs):
            fail("HALP mode needs beat_bits >= 32 and the class costs")
        if self.clock_hz <= 0:
            fail(f"clock_hz must be positive, not {self.clock_hz}")
        if not 0 <= self.resident_rows <= 1 << 24 or not 0 <= self.resident_samples <= 65535:
            fail("resident_rows must be 0..2**24 and resident_samples 0..65535")
        if bool(self.resident_rows) != bool(self.resident_samples):
            fail("resident data needs both resident_rows and resident_samples")
        if self.resident_rows and (self.beat_bits not in (32, 64)
                                   or (self.lanes * 8) % self.beat_bits):
            fail("resident data needs beat_bits 32 or 64 and lanes * 8 a multiple of it")
        if not 0 <= self.replay_beats <= 1 << 24:
            fail(f"replay_beats must be 0..2**24, not {self.replay_beats}")

    # --- run-time modes ------------------------------------------------------------

    def check_k(self, k: int) -> None:
        """Raise ValueError unless precision ``k`` is one this engine runs."""
        if not 1 <= k <= self.max_k:
            raise ValueError(f"precision k must be 1..{self.max_k}, not {k}")

    def values_per_beat(self, k: int, double: bool) -> int:
        """K: feature values one beat carries at precision ``k``."""
        self.check_k(k)
        return min(self.lanes, self.beat_bits // field_bits(k, double))

    def beats_for(self, features: int, k: int, double: bool) -> int:
        """Feature beats of one sample with ``features`` features."""
        return math.ceil(features / self.values_per_beat(k, double))

    def lane_max_k(self, lane: int) -> int:
        """Largest precision at which beat position ``lane`` carries a value."""
        return min(self.max_k, self.beat_bits // (lane + 1) - 1)

    # --- derived sizes -------------------------------------------------------------

    @property
    def model(self) -> QFormat:
        return QFormat(self.model_bits, self.model_frac)

    @property
    def sigma(self) -> QFormat:
        """Scaled residual ``sigma``: model LSBs per level unit, ``SIGMA_FRAC`` fraction bits
        (``LEVEL.frac`` bits wider in HALP builds, whose phases scale it finer)."""
        return QFormat(self.model_frac + (LEVEL.frac if self.halp else 0), SIGMA_FRAC)

    @property
    def options(self) -> int:
        """The optional blocks built, as ``IDENTIFY`` reports them (``protocol.Options``)."""
        return (int(self.class_costs) | int(self.l2_decay) << 1 | int(self.halp) << 2
                | int(self.resident) << 3 | int(self.replay) << 4
                | int(self.deep_pipeline) << 5)

    @property
    def halp(self) -> bool:
        """HALP mode is built."""
        return self.halp_samples > 0

    @property
    def resident(self) -> bool:
        """Resident data is built."""
        return self.resident_rows > 0

    @property
    def replay(self) -> bool:
        """The replay store is built."""
        return self.replay_beats > 0

    @property
    def stores_data(self) -> bool:
        """The board keeps data (``LOAD_DATA``): a resident or a replay store."""
        return self.resident or self.replay

    def resident_rows_for(self, features: int) -> int:
        """Rows ``R`` of the resident store one sample of ``features`` features takes."""
        return math.ceil(features / self.lanes)

    @property
    def beats_per_row(self) -> int:
        """Loaded beats that fill one resident row (``lanes * 8 / beat_bits``)."""
        return self.lanes * 8 // self.beat_bits

    @property
    def model_copies(self) -> int:
        """Copies of the model kept for delayed gradients (``stale``): ``MODEL_COPIES``
        in HALP builds, else 1."""
        return MODEL_COPIES if self.halp else 1

    @property
    def max_stale(self) -> int:
        """Largest run-time ``stale`` (delay in samples of the dot product's model)."""
        return max(0, self.model_copies - 2)

    @property
    def levels_max(self) -> int:
        """Entries of the largest level table (``2**max_k + 1``)."""
        return (1 << self.max_k) + 1

    @property
    def bank_depth(self) -> int:
        """Words per model bank: feature ``f`` is word ``f // lanes`` of bank ``f % lanes``."""
        return math.ceil(self.max_features / self.lanes)

    @property
    def max_beats(self) -> int:
        """Feature beats of the longest sample (``max_features`` at the widest fields)."""
        return self.beats_for(self.max_features, self.max_k, True)

    @property
    def dot_bits(self) -> int:
        """Width of the exact dot product ``sum_f w_f q1_f``."""
        return self.model_bits + LEVEL.bits + clog2(self.max_features)

    @property
    def residual_bits(self) -> int:
        """Width of the exact loss derivative ``E`` (dot product minus aligned label)."""
        label_aligned = LABEL.bits + self.model_frac + LEVEL.frac - LABEL.frac
        one = self.model_frac + LEVEL.frac + 2
        return max(self.dot_bits, label_aligned, one) + 1

    @property
    def product_bits(self) -> int:
        """Width of one lane's gradient term ``sigma * q2``."""
        return self.sigma.bits + LEVEL.bits

    @property
    def grad_bits(self) -> int:
        """Width of the gradient accumulator: a full batch (in HALP builds, a full
        pass of ``halp_samples``) of products cannot overflow it."""
        return self.product_bits + clog2(max(self.max_batch, self.halp_samples))

    @property
    def build_id(self) -> int:
        """A 32-bit identifier of this parameter set and protocol version."""
        from .protocol import VERSION
        text = repr(sorted(asdict(self).items())) + f"/protocol{VERSION}"
        return zlib.crc32(text.encode())


#: The engine each supported board is built with.
#: iCEBreaker: two lanes. Each lane's model x level and sigma x level products are
#: wider than 16 bits, two SB_MAC16 each, and the UP5K has eight; so a 16-bit beat
#: carries at most two values (one at k = 8 with double sampling). The class-cost
#: multiply and the L2 decay do not fit its 5280 logic cells beside two lanes, nor
#: does a replay store in the four SPRAMs (``replay_beats=65536``: 5579 cells).
#: "icebreaker-replay" is the iCEBreaker with that store: it fits with ``max_k=4``
#: (5260 cells) and routes at about 26 MHz, so it runs at 24 MHz (8 cycles a UART
#: bit at 3 Mbaud).
#: ULX3S (ECP5-85F, 156 multipliers, 208 DP16KD): 64-bit beats and 8 lanes, every
#: option (HALP with a 4096-sample anchor-error cache), values per beat
#: 8/8/8/8/8/8/8/7 from k = 1 to 8 with single sampling, 8/8/8/8/8/8/7/6 double.
#: Lanes are what the open place and route allows: 32 lanes need 100k LUT4 cells
#: after synthesis, 119% of the device; 16 lanes fit (about 54k of 83k logic cells)
#: but take 202 of the 208 DP16KD and router2 did not converge on them; 8 lanes
#: route (``-P lanes=16`` still builds the wider engine). The clock is 60 MHz (25 MHz
#: * 12 / 5; 20 cycles a UART bit at 3 Mbaud), which the routed 8-lane engine meets
#: (84.3 MHz with seed 4, 84.9 with seed 5; the clock was 45 MHz before).
#: Resident data in the block RAM the 8-lane engine leaves: 8192 rows of 8 codes
#: (64 KB, 32 DP16KD), 4096 labels, a sampler table per lane.
#: "sim" runs the iCEBreaker's parameters, so what trains in simulation fits the
#: board; "sim-icebreaker-replay" and "sim-ulx3s" the other boards'.
BOARD_PARAMS: dict[str, EngineParams] = {
    "icebreaker": EngineParams(beat_bits=16, lanes=2, max_k=8, max_features=512,
                               max_batch=16, model_bits=32, model_frac=24,
                               frame_bytes=1024, clock_hz=33_000_000,
                               class_costs=False, l2_decay=False),
    "ulx3s": EngineParams(beat_bits=64, lanes=8, max_k=8, max_features=1024,
                          max_batch=64, model_bits=32, model_frac=24, frame_bytes=8192,
                          clock_hz=60_000_000, halp_samples=4096,
                          resident_rows=8192, resident_samples=4096, deep_pipeline=True),
}
BOARD_PARAMS["icebreaker-replay"] = dataclasses.replace(
    BOARD_PARAMS["icebreaker"], max_k=4, clock_hz=24_000_000, replay_beats=65536)
BOARD_PARAMS["sim"] = BOARD_PARAMS["icebreaker"]
BOARD_PARAMS["sim-icebreaker-replay"] = BOARD_PARAMS["icebreaker-replay"]
BOARD_PARAMS["sim-ulx3s"] = BOARD_PARAMS["ulx3s"]
