"""Quantisation to fields, bit packing into beats, framing and the word conversions."""

import math
import warnings

import numpy as np
import pytest
from ziphalp.host.levels import grid_levels, optimal_levels, uniform_levels
from ziphalp.host.quantize import (
    SAMPLINGS,
    coefficients_to_words,
    decode_fields,
    encode_epoch,
    field_dtype,
    frames,
    pack_samples,
    quantize_features,
    quantize_labels,
    sample_bytes,
    shift_to_step,
    step_to_shift,
    unpack_fields,
    words_to_coefficients,
)
from ziphalp.hw.params import BOARD_PARAMS, LABEL, SHIFT_MAX, EngineParams, field_bits


def engine(beat_bits, lanes=None, **kw):
    """EngineParams with a frame size that suits any beat width."""
    beat = beat_bits // 8
    return EngineParams(beat_bits=beat_bits, lanes=lanes,
                        frame_bytes=beat * math.ceil(1024 / beat), **kw)


#: Beat widths and lane counts the packer must handle: the iCEBreaker's, narrow,
#: odd byte counts, words that fields straddle (72, 200), the widest.
ENGINES = [BOARD_PARAMS["icebreaker"], engine(16, 1), engine(24, 8), engine(32),
           engine(40, 4), engine(64, 32), engine(72, 32), engine(128, 64), engine(200, 64),
           engine(512, max_features=1024)]


def skewed_levels(k, seed=0):
    """Non-uniform levels on the LEVEL grid (the table-lookup path)."""
    v = np.random.default_rng(seed).normal(0, 0.3, 20_000)
    levels = grid_levels(optimal_levels(v, k))
    assert not np.array_equal(levels, uniform_levels(k))
    return levels


# --- quantisation --------------------------------------------------------------------

def test_nearest_by_hand():
    # k = 2, levels -1, -0.5, 0, 0.5, 1; field = j | up << 2
    x = np.array([[0.3, -1.0, 1.0, 0.25, -0.25, 0.1, -0.9]])
    fields = quantize_features(x, uniform_levels(2), 2, "nearest")
    assert fields.dtype == np.uint8
    # 0.3: j=2 up (closer to 0.5); -1: j=0; 1: j=3 up; ties go up; 0.1: j=2; -0.9: j=0
    assert fields.tolist() == [[6, 0, 7, 6, 5, 2, 0]]


@pytest.mark.parametrize("kind", ["uniform", "skewed", "duplicates"])
@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_nearest_picks_the_closer_level(k, kind):
    levels = {"uniform": uniform_levels, "skewed": skewed_levels}.get(kind, lambda k: None)(k)
    if levels is None:                            # zero-width intervals in the table
        levels = np.repeat(uniform_levels(k - 1) if k > 1 else [-1.0, 1.0], 2)[:-1]
        levels = np.r_[levels, np.ones((1 << k) + 1 - len(levels))][:(1 << k) + 1]
    grid = np.arange(-4096, 4097) / 4096          # exact in float32, hits levels and midpoints
    x = np.r_[grid, np.random.default_rng(k).uniform(-1, 1, 5000)][None, :]
    fields = quantize_features(x, levels, k, "nearest")
    q, _ = decode_fields(fields, levels, k, False)
    dist = np.abs(levels[None, :] - x[0][:, None])
    closest = dist == dist.min(axis=1, keepdims=True)
    upper = np.where(closest, levels[None, :], -np.inf).max(axis=1)   # ties go up
    np.testing.assert_array_equal(q[0], upper)
    assert np.any(closest.sum(axis=1) > 1)       # midpoints (and repeated levels) are tried
    # the interval holds the value
    j = fields[0].astype(int) & ((1 << k) - 1)
    assert np.all(levels[j] <= x[0]) and np.all(x[0] <= levels[j + 1])


@pytest.mark.parametrize("kind", ["uniform", "skewed"])
@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_interval_and_field_format(k, sampling, kind):
    levels = uniform_levels(k) if kind == "uniform" else skewed_levels(k)
    double = sampling == "double"
    x = np.r_[np.arange(-512, 513) / 512, np.linspace(-1, 1, 999), -1e-30, 1e-30][None, :]
    fields = quantize_features(x, levels, k, sampling, np.random.default_rng(1))
    x = x.astype(np.float32).astype(np.float64)   # what the quantiser sees
    assert fields.dtype == field_dtype(k, double)
    assert fields.max() < 1 << field_bits(k, double)
    j = np.clip(np.searchsorted(levels, x, side="right") - 1, 0, (1 << k) - 1)
    np.testing.assert_array_equal(fields & ((1 << k) - 1), j)
    q1, q2 = decode_fields(fields, levels, k, double)
    for q in (q1, q2):                            # either end of the value's interval
        assert np.all((q == levels[j]) | (q == levels[j + 1]))
    on_level = np.isin(x, levels)                 # a value on a level is exact
    assert np.all(q1[on_level] == x[on_level]) and np.all(q2[on_level] == x[on_level])


@pytest.mark.parametrize("k, kind", [(1, "uniform"), (2, "skewed"), (4, "uniform"),
                                     (8, "skewed"), (3, "duplicates")])
def test_sampling_is_unbiased(k, kind):
    """E[q1] = v, E[q1 q2] = v^2 (double); E[q^2] = v^2 + (hi - v)(v - lo) (single).

    Tolerance: 5 standard errors of each mean, from the exact variance of the
    quantity averaged (a false alarm has probability below 1e-6 per value).
    """
    if kind == "uniform":
        levels = uniform_levels(k)
    elif kind == "skewed":
        levels = skewed_levels(k)
    else:
        levels = np.array([-1, -0.5, -0.5, 0, 0.25, 0.25, 0.75, 1, 1.0])
    rng = np.random.default_rng(k)
    v = np.r_[rng.uniform(-1, 1, 10), levels[1] + 1e-3, -1, 1, 0.0, -1e-30]
    n = 100_000
    x = np.broadcast_to(v, (n, len(v)))
    j = np.clip(np.searchsorted(levels, v, side="right") - 1, 0, (1 << k) - 1)
    lo, hi = levels[j], levels[j + 1]
    var = (hi - v) * (v - lo)
    p = np.divide(v - lo, hi - lo, out=np.zeros_like(v), where=hi > lo)

    def check(mean, expected, variance):
        bound = 5 * np.sqrt(variance / n) + 1e-12
        assert np.all(np.abs(mean - expected) <= bound), (mean - expected, bound)

    q1, q2 = decode_fields(quantize_features(x, levels, k, "double", rng), levels, k, True)
    check(q1.mean(0), v, var)
    check(q2.mean(0), v, var)
    second = v * v + var                          # E[q^2]
    check((q1 * q2).mean(0), v * v, second ** 2 - v ** 4)
    # the two samples are independent: their product lacks the variance term
    assert np.all((q1 * q2).mean(0)[var > 0.01] < (q1 * q1).mean(0)[var > 0.01])

    q, q_again = decode_fields(quantize_features(x, levels, k, "single", rng), levels, k, False)
    assert q is q_again
    check(q.mean(0), v, var)
    check((q * q).mean(0), second, p * (1 - p) * (hi * hi - lo * lo) ** 2)


def test_fresh_draws_and_determinism():
    x = np.linspace(-1, 1, 1001)[None, :]
    levels = uniform_levels(3)
    first = quantize_features(x, levels, 3, "double", np.random.default_rng(3))
    again = quantize_features(x, levels, 3, "double", np.random.default_rng(3))
    other = quantize_features(x, levels, 3, "double", np.random.default_rng(4))
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)
    # the two up bits are drawn independently
    assert np.any((first >> 3 & 1) != (first >> 4 & 1))


def test_float32_input_is_not_modified():
    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    copy = x.copy()
    quantize_features(x, uniform_levels(2), 2, "single", np.random.default_rng(0))
    np.testing.assert_array_equal(x, copy)


@pytest.mark.parametrize("x", [[[1.01]], [[-1.5, 0]], [[np.nan]], [[np.inf]]])
def test_values_outside_the_range_are_refused(x):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        quantize_features(np.array(x), uniform_levels(2), 2, "nearest")


def test_bad_arguments_are_refused():
    x = np.zeros((2, 3))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="needs 5 levels"):
        quantize_features(x, uniform_levels(3), 2, "single", rng)
    with pytest.raises(ValueError, match="needs 5 levels"):
        quantize_features(x, uniform_levels(2)[None, :], 2, "single", rng)
    for k in (0, 9, 2.0, True):
        with pytest.raises(ValueError, match="precision k"):
            quantize_features(x, uniform_levels(2), k, "single", rng)
    with pytest.raises(ValueError, match="LEVEL"):                  # off the grid
        quantize_features(x, [-1, -0.3, 0, 0.5, 1], 2, "single", rng)
    with pytest.raises(ValueError, match="cover"):
        quantize_features(x, [-0.5, -0.25, 0, 0.5, 1], 2, "single", rng)
    with pytest.raises(ValueError, match="non-decreasing"):
        quantize_features(x, [-1, 0.5, 0, 0.5, 1], 2, "single", rng)
    with pytest.raises(ValueError, match="sampling"):
        quantize_features(x, uniform_levels(2), 2, "triple", rng)
    with pytest.raises(ValueError, match="Generator"):
        quantize_features(x, uniform_levels(2), 2, "double")
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        quantize_features(np.zeros(3), uniform_levels(2), 2, "nearest")


def test_zero_width_intervals_need_no_division():
    levels = np.array([-1, -0.5, -0.5, 1, 1.0])     # k = 2
    x = np.array([[-0.5, 1.0, -1.0, 0.25]] * 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for sampling in SAMPLINGS:
            fields = quantize_features(x, levels, 2, sampling, np.random.default_rng(0))
            q1, q2 = decode_fields(fields, levels, 2, sampling == "double")
            np.testing.assert_array_equal(q1[:, :3], x[:, :3])
            np.testing.assert_array_equal(q2[:, :3], x[:, :3])


def test_labels():
    y = np.array([-1, 1, 0.25, 1 / 3, -0.7, -2, 1.99999])
    words = quantize_labels(y)
    assert words.dtype == np.int16
    np.testing.assert_array_equal(words[:5], np.round(y[:5] * 2 ** LABEL.frac))
    assert words[5] == LABEL.min_int and words[6] == LABEL.max_int
    assert np.all(np.abs(words[:6] * LABEL.scale - y[:6]) <= LABEL.scale / 2)
    for bad in (2.0, -2.01, np.nan):
        with pytest.raises(ValueError, match="LABEL"):
            quantize_labels(np.array([0.0, bad]))


# --- packing -------------------------------------------------------------------------

def reference_pack(fields, labels, p, k, double):
    """Slow, explicit beat layout: one Python integer per beat."""
    b, per_beat, beat_bytes = field_bits(k, double), p.values_per_beat(k, double), p.beat_bits // 8
    out = bytearray()
    for row, label in zip(fields, labels, strict=True):
        out += (int(label) & 0xFFFF).to_bytes(beat_bytes, "little")
        for start in range(0, len(row), per_beat):
            beat = 0
            for i, field in enumerate(row[start:start + per_beat]):
                beat |= int(field) << (i * b)
            out += beat.to_bytes(beat_bytes, "little")
    return bytes(out)


def test_pack_by_hand():
    # 16-bit beats, k = 2 double: 4-bit fields, two per beat
    p = BOARD_PARAMS["icebreaker"]
    fields = np.array([[0b0111, 0b1010, 0b0001]], np.uint8)
    stream = pack_samples(fields, np.array([0x1234], np.int16), p, 2, True)
    assert stream == bytes([0x34, 0x12, 0xA7, 0x00, 0x01, 0x00])
    # 24-bit beats, k = 8 double: 10-bit fields, two per beat (0x3FF | 0x155 << 10)
    p = engine(24, 8)
    fields = np.array([[0x3FF, 0x155, 0x2AA]], np.uint16)
    stream = pack_samples(fields, np.array([-2], np.int16), p, 8, True)
    assert stream == bytes([0xFE, 0xFF, 0x00, 0xFF, 0x57, 0x05, 0xAA, 0x02, 0x00])


@pytest.mark.parametrize("p", ENGINES, ids=lambda p: f"{p.beat_bits}x{p.lanes}")
def test_pack_matches_reference_and_unpacks(p):
    rng = np.random.default_rng(p.beat_bits + p.lanes)
    for k in range(1, p.max_k + 1):
        for double in (True, False):
            per_beat = p.values_per_beat(k, double)
            for d in sorted({1, per_beat, per_beat + 1, 3 * per_beat - 1, 37}):
                n = int(rng.integers(1, 4))
                fields = rng.integers(0, 1 << field_bits(k, double), (n, d))
                fields = fields.astype(field_dtype(k, double))
                labels = rng.integers(LABEL.min_int, LABEL.max_int + 1, n).astype(np.int16)
                stream = pack_samples(fields, labels, p, k, double)
                assert len(stream) == n * sample_bytes(p, d, k, double)
                assert stream == reference_pack(fields, labels, p, k, double), (k, double, d)
                back, back_labels = unpack_fields(stream, p, d, k, double)
                np.testing.assert_array_equal(back, fields)
                np.testing.assert_array_equal(back_labels, labels)


@pytest.mark.parametrize("p", [BOARD_PARAMS["icebreaker"], engine(64, 32), engine(72, 32)],
                         ids=lambda p: f"{p.beat_bits}x{p.lanes}")
@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_encode_epoch_is_quantise_then_pack(p, sampling):
    rng = np.random.default_rng(2)
    n, d = 3000, 23                               # several blocks, a partial last beat
    x = np.clip(rng.normal(0, 0.4, (n, d)), -1, 1)
    labels = quantize_labels(rng.uniform(-1, 1, n))
    double = sampling == "double"
    for k, levels in ((4, uniform_levels(4)), (8, skewed_levels(8))):
        stream = encode_epoch(x, labels, levels, k, sampling, np.random.default_rng(5), p)
        fields = quantize_features(x, levels, k, sampling, np.random.default_rng(5))
        assert stream == pack_samples(fields, labels, p, k, double)
        back, back_labels = unpack_fields(stream, p, d, k, double)
        np.testing.assert_array_equal(back, fields)
        np.testing.assert_array_equal(back_labels, labels)


def test_pack_refuses_bad_input():
    p = BOARD_PARAMS["icebreaker"]
    fields = np.zeros((2, 3), np.uint8)
    labels = np.zeros(2, np.int16)
    with pytest.raises(ValueError, match="3-bit"):
        pack_samples(fields + 8, labels, p, 1, True)
    with pytest.raises(ValueError, match="LABEL"):
        pack_samples(fields, labels[:1], p, 1, True)
    with pytest.raises(ValueError, match="LABEL"):
        pack_samples(fields, labels.astype(np.float64), p, 1, True)
    with pytest.raises(ValueError, match="precision k"):
        pack_samples(fields, labels, engine(32, max_k=4), 5, True)
    with pytest.raises(ValueError, match="features"):
        pack_samples(np.zeros((1, 513), np.uint8), labels[:1], p, 1, True)
    with pytest.raises(ValueError, match="integer"):
        pack_samples(fields.astype(float), labels, p, 1, True)
    stream = pack_samples(fields, labels, p, 1, True)
    with pytest.raises(ValueError, match="whole samples"):
        unpack_fields(stream[:-2], p, 3, 1, True)
    corrupt = bytearray(stream)
    corrupt[3] = 0x80                             # the label beat's high byte
    with pytest.raises(ValueError, match="outside"):
        unpack_fields(bytes(corrupt), p, 3, 1, True)


def test_frames_hold_whole_samples():
    p = EngineParams(beat_bits=32, max_k=4, frame_bytes=64)
    k, double = 2, False                          # 3-bit fields, 10 per 32-bit beat
    d = 25                                        # 3 feature beats + 1 label beat: 16 bytes
    size = sample_bytes(p, d, k, double)
    assert size == 16
    fields = np.arange(13 * d).reshape(13, d).astype(np.uint8) % 8
    stream = pack_samples(fields, np.arange(13, dtype=np.int16), p, k, double)
    parts = frames(stream, p, d, k, double)
    assert b"".join(parts) == stream
    assert all(len(f) <= p.frame_bytes and len(f) % size == 0 for f in parts)
    assert [len(f) // size for f in parts] == [4, 4, 4, 1]
    with pytest.raises(ValueError, match="whole samples"):
        frames(stream[:-4], p, d, k, double)
    # 68-byte samples do not fit: split at beat boundaries into full frames
    assert [len(f) for f in frames(bytes(4 * 17 * 2), p, 10 * 16, k, double)] == [64, 64, 8]
    # 24-byte samples: two per 64-byte frame, never a split sample.
    stream = pack_samples(np.ones((5, 45), np.uint8), np.zeros(5, np.int16), p, k, double)
    assert [len(f) for f in frames(stream, p, 45, k, double)] == [48, 48, 24]


# --- model words and the step --------------------------------------------------------

def test_model_word_conversion():
    p = EngineParams()
    one = 1 << p.model_frac                      # weight value 1.0, times the level directly
    assert words_to_coefficients(np.array([one]), p)[0] == 1.0
    assert words_to_coefficients(np.array([-3]), p)[0] == -3 * 2.0 ** -p.model_frac
    beta = np.array([0.3, -1.7, 0.0, 2.5])
    words = coefficients_to_words(beta, p)
    assert words.dtype == np.int64
    np.testing.assert_allclose(words_to_coefficients(words, p), beta,
                               atol=2.0 ** -p.model_frac / 2)
    np.testing.assert_array_equal(coefficients_to_words(words_to_coefficients(words, p), p),
                                  words)
    assert coefficients_to_words(np.array([1e9]), p)[0] == p.model.max_int
    assert coefficients_to_words(np.array([-1e9]), p)[0] == p.model.min_int


def test_step_shift():
    for shift in range(SHIFT_MAX + 1):
        assert step_to_shift(shift_to_step(shift)) == shift
    assert step_to_shift(0.01) == 7                # 2**-6.64 -> 2**-7
    assert step_to_shift(0.7) == 1
    for bad in (0, -1, float("nan"), float("inf"), 4.0, 1e-12):
        with pytest.raises(ValueError, match="step"):
            step_to_shift(bad)


# --- HALP sample indices ---------------------------------------------------------------

def test_indices_by_hand():
    """The index rides in bits 16..31 of the label beat (bytes 2..3, little-endian)."""
    p = engine(32)                                # k = 2 single: 3-bit fields, 10 per beat
    fields = np.array([[0b101, 0b011], [0b001, 0b111]], np.uint8)
    labels = np.array([0x1234, -2], np.int16)
    plain = pack_samples(fields, labels, p, 2, False)
    stream = pack_samples(fields, labels, p, 2, False, np.array([0xBEEF, 7]))
    assert stream == bytes([0x34, 0x12, 0xEF, 0xBE, 0x1D, 0, 0, 0,
                            0xFE, 0xFF, 0x07, 0x00, 0x39, 0, 0, 0])
    assert plain == stream[:2] + b"\0\0" + stream[4:10] + b"\0\0" + stream[12:]
    assert pack_samples(fields, labels, p, 2, False, None) == plain
    # 64-bit beats (the ULX3S): the rest of the label beat stays zero
    p = BOARD_PARAMS["ulx3s"]
    stream = pack_samples(fields, labels, p, 2, False, [1, 4095])
    assert stream[:8] == bytes([0x34, 0x12, 0x01, 0x00, 0, 0, 0, 0])
    assert stream[16:24] == bytes([0xFE, 0xFF, 0xFF, 0x0F, 0, 0, 0, 0])


@pytest.mark.parametrize("p", [e for e in ENGINES if e.beat_bits >= 32],
                         ids=lambda p: f"{p.beat_bits}x{p.lanes}")
def test_indices_round_trip(p):
    rng = np.random.default_rng(p.beat_bits)
    n, d, k = 3000, 23, 4                         # several blocks
    x = np.clip(rng.normal(0, 0.4, (n, d)), -1, 1)
    labels = quantize_labels(rng.uniform(-1, 1, n))
    indices = rng.integers(0, 1 << 16, n)
    stream = encode_epoch(x, labels, uniform_levels(k), k, "double", np.random.default_rng(5),
                          p, indices)
    fields = quantize_features(x, uniform_levels(k), k, "double", np.random.default_rng(5))
    assert stream == pack_samples(fields, labels, p, k, True, indices.astype(np.uint16))
    back, back_labels, back_indices = unpack_fields(stream, p, d, k, True, indices=True)
    np.testing.assert_array_equal(back, fields)
    np.testing.assert_array_equal(back_labels, labels)
    assert back_indices.dtype == np.uint16
    np.testing.assert_array_equal(back_indices, indices)
    with pytest.raises(ValueError, match="outside"):    # without indices they are stray bits
        unpack_fields(stream, p, d, k, True)
    plain = encode_epoch(x, labels, uniform_levels(k), k, "double", np.random.default_rng(5), p)
    assert plain == pack_samples(fields, labels, p, k, True)
    np.testing.assert_array_equal(unpack_fields(plain, p, d, k, True, indices=True)[2], 0)


def test_indices_refused():
    fields = np.zeros((2, 3), np.uint8)
    labels = np.zeros(2, np.int16)
    with pytest.raises(ValueError, match="at least 32 bits, not 16"):
        pack_samples(fields, labels, BOARD_PARAMS["icebreaker"], 1, True, [0, 1])
    with pytest.raises(ValueError, match="at least 32 bits"):
        encode_epoch(np.zeros((2, 3)), labels, uniform_levels(1), 1, "nearest", None,
                     engine(24, 8), [0, 1])
    with pytest.raises(ValueError, match="carry no sample index"):
        unpack_fields(bytes(8), BOARD_PARAMS["icebreaker"], 3, 1, True, indices=True)
    p = engine(32)
    for bad in ([0], [0, 1 << 16], [-1, 0], [0.0, 1.0], [[0, 1]]):
        with pytest.raises(ValueError, match="indices"):
            pack_samples(fields, labels, p, 1, True, np.array(bad))
