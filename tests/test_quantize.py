"""Quantisation, bit packing, framing and the step-size conversion."""

import numpy as np
import pytest
from ziphalp.host.quantize import (
    LEVELS,
    coefficients_to_words,
    frames,
    pack_samples,
    quantize_features,
    quantize_labels,
    sample_bytes,
    shift_to_step,
    step_to_shift,
    words_to_coefficients,
)
from ziphalp.hw.params import CODE, LABEL, SHIFT_MAX, EngineParams


def test_stochastic_rounding_is_unbiased_and_within_one_code():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.uniform(-1, 1, 30), [-1, 1, 0, 0.5 / 127, -1 + 1e-9]])
    draws = 20_000
    codes = quantize_features(np.broadcast_to(x, (draws, x.size)), rng).astype(np.float64)
    exact = LEVELS * x
    assert np.all(np.abs(codes - exact) < 1)
    # Each draw is exact + Bernoulli noise of variance <= 1/4, so the mean of
    # `draws` draws has a standard deviation <= 0.5 / sqrt(draws); allow 5 of them
    # (a false alarm has probability < 1e-6 per value).
    bound = 5 * 0.5 / np.sqrt(draws)
    assert np.all(np.abs(codes.mean(axis=0) - exact) <= bound)
    assert codes[:, x.size - 5].tolist() == [-LEVELS] * draws      # x = -1 is exact
    assert codes[:, x.size - 4].tolist() == [LEVELS] * draws       # x = 1 is exact


def test_fresh_draws_and_nearest():
    x = np.linspace(-1, 1, 1001)
    rng = np.random.default_rng(3)
    first, second = quantize_features(x, rng), quantize_features(x, rng)
    assert first.dtype == np.int8 and np.any(first != second)
    nearest = quantize_features(x)
    np.testing.assert_array_equal(nearest, np.floor(LEVELS * x + 0.5))
    assert np.all(np.abs(nearest - LEVELS * x) <= 0.5)
    with pytest.raises(ValueError, match="normalised"):
        quantize_features(np.array([1.01]))


def test_labels():
    y = np.array([-1, 1, 0.25, 1 / 3, -0.7])
    words = quantize_labels(y)
    assert words.dtype == np.int16
    np.testing.assert_array_equal(words, np.round(y * 2 ** LABEL.frac))
    assert np.all(np.abs(words * LABEL.scale - y) <= LABEL.scale / 2)


def test_model_word_conversion():
    p = EngineParams()
    one = 1 << p.model_frac                      # weight value 1.0
    assert words_to_coefficients(np.array([one]), p)[0] == LEVELS / 2 ** CODE.frac
    beta = np.array([0.3, -1.7, 0.0, 2.5])
    words = coefficients_to_words(beta, p)
    np.testing.assert_allclose(words_to_coefficients(words, p), beta,
                               atol=words_to_coefficients(1, p))
    assert coefficients_to_words(np.array([1e9]), p)[0] == p.model.max_int


def reference_pack(codes, labels, p):
    """Slow, explicit beat layout: one Python integer per beat."""
    beat_bytes = p.beat_bits // 8
    out = bytearray()
    for code_row, label in zip(codes, labels, strict=True):
        out += (int(label) & 0xFFFF).to_bytes(beat_bytes, "little")
        for start in range(0, len(code_row), p.lanes):
            beat = 0
            for j, code in enumerate(code_row[start:start + p.lanes]):
                beat |= (int(code) & 0xFF) << (8 * j)
            out += beat.to_bytes(beat_bytes, "little")
    return bytes(out)


@pytest.mark.parametrize("beat_bits, lanes", [(32, None), (64, None), (32, 3), (16, 2),
                                              (128, 5)])
def test_pack_matches_reference(beat_bits, lanes):
    p = EngineParams(beat_bits=beat_bits, lanes=lanes, frame_bytes=4 * beat_bits)
    rng = np.random.default_rng(beat_bits + (lanes or 0))
    for d in (1, p.lanes + 1, 3 * p.lanes - 1, 23):
        n = int(rng.integers(1, 9))
        codes = rng.integers(-127, 128, size=(n, d)).astype(np.int8)
        labels = rng.integers(LABEL.min_int, LABEL.max_int + 1, size=n).astype(np.int16)
        packed = pack_samples(codes, labels, p)
        assert len(packed) == n * sample_bytes(p, d)
        assert packed == reference_pack(codes, labels, p)


def test_frames_hold_whole_samples():
    p = EngineParams(beat_bits=32, frame_bytes=64)
    d = 9                                         # 3 feature beats + 1 label beat: 16 bytes
    size = sample_bytes(p, d)
    assert size == 16
    codes = np.arange(-50, -50 + 13 * d).reshape(13, d).astype(np.int8)
    stream = pack_samples(codes, np.arange(13, dtype=np.int16), p)
    parts = frames(stream, p, d)
    assert b"".join(parts) == stream
    assert all(len(f) <= p.frame_bytes and len(f) % size == 0 for f in parts)
    assert [len(f) // size for f in parts] == [4, 4, 4, 1]
    with pytest.raises(ValueError, match="whole samples"):
        frames(stream[:-4], p, d)
    with pytest.raises(ValueError, match="does not fit"):
        frames(pack_samples(np.zeros((1, 70), np.int8), np.zeros(1, np.int16), p), p, 70)
    # 24-byte samples: two per 64-byte frame, never a split sample.
    stream = pack_samples(np.ones((5, 17), np.int8), np.zeros(5, np.int16), p)
    assert [len(f) for f in frames(stream, p, 17)] == [48, 48, 24]


def test_step_shift():
    for shift in range(SHIFT_MAX + 1):
        assert step_to_shift(shift_to_step(shift)) == shift
    assert step_to_shift(0.01) == 7                # 2**-6.64 -> 2**-7
    assert step_to_shift(0.7) == 1
    for bad in (0, -1, float("nan"), float("inf"), 4.0, 1e-12):
        with pytest.raises(ValueError, match="step"):
            step_to_shift(bad)
