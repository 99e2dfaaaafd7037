"""The golden model's loss arithmetic against float64.

The engine's loss derivative ``E`` (see ``ziphalp.hw.params``) must be the float
derivative of the loss, exactly for the squared loss and the hinges (integer
arithmetic on exact values) and within the stated sigmoid error bound for the
logistic loss. The hardware is held to the golden model elsewhere (cocotb
benches, ``tests/test_lanes.py``); this file holds the golden model to the maths.

HALP mode is held to a plain-Python, one-feature-at-a-time transcription of
the table in ``ziphalp.hw.params`` (integer for integer, PRNG included), and,
driven as the host drives it, to convergence on a quantised least-squares
problem.
"""

import math

import numpy as np
import pytest
from ziphalp.host import quantize, reference
from ziphalp.host.levels import grid_levels, uniform_levels
from ziphalp.hw.params import (
    BOARD_PARAMS,
    COST_FRAC,
    HALP_FRAC,
    LABEL,
    LEVEL,
    LOG_FRAC,
    OFFSET_BITS,
    OFFSET_SHIFT_MAX,
    PRNG_GOLDEN,
    PRNG_ZERO_SEED,
    SIGMA_FRAC,
    SIGMOID_ERROR_BOUND,
    Loss,
    Phase,
    field_bits,
    halp_shift,
)
from ziphalp.sim.golden import (
    GoldenEngine,
    decode,
    loss_derivative,
    prng_seeds,
    round_shift,
    sigmoid_fixed,
    xorshift32,
)

PARAMS = BOARD_PARAMS["sim"]
FRAC = PARAMS.model_frac + LEVEL.frac          # fraction bits of dot products


def test_sigmoid_error_bound():
    z = np.linspace(-12.0, 12.0, 480_001)
    dots = np.round(z * 2.0 ** FRAC).astype(np.int64)
    exact = 1.0 / (1.0 + np.exp(-dots * 2.0 ** -FRAC))
    error = np.abs(sigmoid_fixed(dots, PARAMS) * 2.0 ** -16 - exact)
    assert error.max() <= SIGMOID_ERROR_BOUND
    # the bound is not loose by more than a few percent (cell edges near z = 0)
    assert error.max() > 0.95 * SIGMOID_ERROR_BOUND
    # symmetric: sigmoid(-z) = 1 - sigmoid(z) up to one cell of the ones' complement
    assert np.all(sigmoid_fixed(dots, PARAMS) + sigmoid_fixed(-dots - 1, PARAMS) == 1 << 16)


@pytest.mark.parametrize("loss", list(Loss), ids=lambda loss: loss.name.lower())
def test_loss_derivative_matches_float(loss):
    rng = np.random.default_rng(int(loss))
    name = reference.LOSSES[loss]
    dots = rng.integers(-4 << FRAC, 4 << FRAC, 400)
    dots[:4] = [1 << FRAC, -(1 << FRAC), (1 << FRAC) - 1, 0]     # the margin's edges
    if loss == Loss.SQUARED:
        labels = rng.integers(LABEL.min_int, LABEL.max_int + 1, 400)
    else:
        labels = rng.choice([-(1 << LABEL.frac), 1 << LABEL.frac], 400)
    labels[:4] = [1 << LABEL.frac, -(1 << LABEL.frac), 1 << LABEL.frac, -(1 << LABEL.frac)]
    engine = np.array([loss_derivative(int(d), int(y), loss, PARAMS)
                       for d, y in zip(dots, labels, strict=True)]) * 2.0 ** -FRAC
    exact = reference.derivative(dots * 2.0 ** -FRAC, labels * 2.0 ** -LABEL.frac, name)
    tolerance = SIGMOID_ERROR_BOUND if loss == Loss.LOGISTIC else 0.0
    assert np.max(np.abs(engine - exact)) <= tolerance


# --- HALP mode ---------------------------------------------------------------------------

HALP = BOARD_PARAMS["sim-ulx3s"]              # 64-bit beats, 32 lanes, 4096-sample cache
MASK32 = (1 << 32) - 1


def xorshift32_py(x: int) -> int:
    """xorshift32 on a Python integer (the PRNG of the module docstring, written plainly)."""
    x ^= (x << 13) & MASK32
    x ^= x >> 17
    x ^= (x << 5) & MASK32
    return x


def lane_seeds_py(seed: int, lanes: int) -> list[int]:
    states = [(seed + (lane + 1) * PRNG_GOLDEN) & MASK32 for lane in range(lanes)]
    return [s or PRNG_ZERO_SEED for s in states]


def uniform_level_words(k: int) -> np.ndarray:
    return np.rint(grid_levels(uniform_levels(k)) * 2 ** LEVEL.frac).astype(np.int64)


def halp_engine(levels_k: int = 8) -> GoldenEngine:
    engine = GoldenEngine(HALP)
    engine.load_levels(uniform_level_words(levels_k))
    return engine


def test_halp_shift_matches_float_log2():
    """``sh`` is ``round(log2 delta)`` (delta in model LSBs) within one, and exact away
    from the rounding boundaries; the clamps hold."""
    rng = np.random.default_rng(3)
    mismatches = 0
    for _ in range(4000):
        norm2 = int(rng.integers(1, 1 << 62)) << int(rng.integers(0, 40))
        scale_log = int(rng.integers(-4000, 4000))
        # G has HALP_FRAC fraction bits: delta = |G| 2**-HALP_FRAC / 2**(scale_log / 2**LOG_FRAC)
        exact = 0.5 * math.log2(norm2) - HALP_FRAC - scale_log / 2 ** LOG_FRAC
        expected = min(max(math.floor(exact + 0.5), 0), OFFSET_SHIFT_MAX)
        sh = halp_shift(norm2, scale_log)
        assert abs(sh - expected) <= 1, (norm2, scale_log)
        mismatches += sh != expected
        if sh != expected:     # only where the piecewise-linear log2 (<= 0.086 low) rounds down
            assert sh == expected - 1 and exact + 0.5 - expected < 0.05
    assert 0 < mismatches < 0.1 * 4000
    assert halp_shift(0, -30000) == 0
    assert halp_shift(1 << 200, 0) == OFFSET_SHIFT_MAX
    assert halp_shift(1 << 20, 2000) == 0
    assert halp_shift(1 << 56, 0) == 14                # log2 |G| = 28, minus HALP_FRAC


def test_prng_lanes_match_plain_xorshift32():
    """The lanes are seeded as specified (a zero seed replaced) and step once per
    update beat of every inner sample, in stochastic and in nearest mode."""
    assert xorshift32(np.array([1], np.uint32))[0] == xorshift32_py(1) == 270369
    d, k, double = 40, 8, False                  # 7 values per beat: 6 beats
    beats = HALP.beats_for(d, k, double)
    rng = np.random.default_rng(0)
    fields = rng.integers(0, 1 << field_bits(k, double), (5, d))
    labels = rng.integers(-2000, 2000, 5)
    for seed, stochastic in ((0, True), (123456789, False), ((-PRNG_GOLDEN) & MASK32, True)):
        engine = halp_engine()
        engine.configure(d, 1, 4, k=k, double=double, phase=Phase.INNER, seed=seed,
                         stochastic=stochastic)
        states = lane_seeds_py(seed, HALP.lanes)
        assert engine.prng.dtype == np.uint32 and engine.prng.tolist() == states
        engine.train(fields, labels, indices=np.arange(5))
        for _ in range(5 * beats):
            states = [xorshift32_py(x) for x in states]
        assert engine.prng.tolist() == states
    assert lane_seeds_py((-PRNG_GOLDEN) & MASK32, 2)[0] == PRNG_ZERO_SEED
    np.testing.assert_array_equal(prng_seeds((-PRNG_GOLDEN) & MASK32, 4),
                                  lane_seeds_py((-PRNG_GOLDEN) & MASK32, 4))


def inner_reference(engine: GoldenEngine, fields, label: int, index: int, end: bool) -> None:
    """One inner-loop sample in plain Python integers, one feature at a time (the
    table of the module docstring), applied to ``engine``'s arrays; ``end``: it ends
    a batch."""
    p, d, k, double = engine.p, engine.features, engine.k, engine.double
    sh, shift = engine.offset_shift, engine.shift
    levels = engine.levels.tolist()
    j = [int(f) & ((1 << k) - 1) for f in fields]
    up1 = [int(f) >> k & 1 for f in fields]
    up2 = [int(f) >> (k + 1) & 1 if double else u for f, u in zip(fields, up1, strict=True)]
    q1 = [levels[a + b] for a, b in zip(j, up1, strict=True)]
    q2 = [levels[a + b] for a, b in zip(j, up2, strict=True)]
    dot = sum(int(w) * q for w, q in zip(engine.model[:d].tolist(), q1, strict=True))
    error = loss_derivative(dot, label, engine.loss, p) - int(engine.cache[index])
    lo, hi = p.sigma.min_int, p.sigma.max_int
    s = (error + (1 << (LEVEL.frac + shift + sh - SIGMA_FRAC - 1))) >> (
        LEVEL.frac + shift + sh - SIGMA_FRAC)
    cost = engine.cost_pos if label > 0 else engine.cost_neg
    sigma = min(max((min(max(s, lo), hi) * cost + (1 << (COST_FRAC - 1))) >> COST_FRAC, lo), hi)
    per_beat = p.values_per_beat(k, double)
    steps = []
    state = engine.prng.tolist()
    for _ in range(p.beats_for(d, k, double)):
        state = [xorshift32_py(x) for x in state]
        steps.append(state)
    engine.prng = np.array(state, np.uint32)
    b = engine.offset_bits
    engine.samples += 1
    for f in range(d):
        engine._grad[f] += int(engine.gamma[f]) + sigma * q2[f]     # 14 fraction bits
    if not end:
        return
    for f in range(d):
        r = steps[f // per_beat][f % p.lanes] >> 18 if engine.stochastic else 1 << 13
        acc = int(engine._grad[f])
        engine._grad[f] = 0
        z = min(max(int(engine.offset[f]) - ((acc + r) >> 14), -(1 << (b - 1))),
                (1 << (b - 1)) - 1)
        engine.offset[f] = z
        w = int(engine.anchor[f]) + (z << sh)
        engine.overflow |= not p.model.min_int <= w <= p.model.max_int
        engine.model[f] = min(max(w, p.model.min_int), p.model.max_int)
    engine.updates += 1


@pytest.mark.parametrize("loss", [Loss.SQUARED, Loss.LOGISTIC], ids=lambda l: l.name.lower())
@pytest.mark.parametrize("double, stochastic", [(False, True), (True, True), (True, False)])
def test_halp_phases_bit_exact(loss, double, stochastic):
    """FULL then INNER against the plain-Python table: 40 features over several beats
    (``K`` = 7 or 6 values per beat, 32 lanes: lane ``f % 32`` is not the slot
    ``f % K``), class costs, a clamped offset and a saturated weight; inner batches
    of 1, or of 3 with double sampling."""
    rng = np.random.default_rng(int(loss) * 4 + 2 * double + stochastic)
    d, k, n, b = 40, 8, 12, 5
    engine = halp_engine()
    reference = halp_engine()
    model = rng.integers(-1 << 21, 1 << 21, HALP.max_features)
    engine.load_model(0, model)
    fields = rng.integers(0, 1 << field_bits(k, double), (n, d))
    fields[:, 3:5] = 127 + (fields[:, 3:5] & 1)     # levels -2, 0, 2: small products
    if loss == Loss.SQUARED:
        labels = rng.integers(-16000, 16000, n)
    else:
        labels = rng.choice([-1 << LABEL.frac, 1 << LABEL.frac], n)
    indices = rng.permutation(HALP.halp_samples)[:n]
    shift = math.ceil(math.log2(n))
    costs = dict(cost_pos=90, cost_neg=40)
    common = dict(k=k, double=double, loss=loss)
    engine.offset[:] = 3                             # FULL re-centres every word
    engine.configure(d, 1, shift, phase=Phase.FULL, **common, **costs)
    np.testing.assert_array_equal(engine.anchor, model)
    assert not engine.offset.any() and not engine._grad.any()
    engine.train(fields, labels, indices=indices)
    np.testing.assert_array_equal(engine.model, model)         # no update in the full pass
    assert engine.samples == n and engine.updates == 0
    grad = np.zeros(HALP.max_features, np.int64)
    for i in range(n):
        q1, q2 = decode(fields[i], engine.levels, k, double)
        e = loss_derivative(int(np.dot(model[:d], q1)), int(labels[i]), loss, HALP)
        assert engine.cache[indices[i]] == e
        s = round_shift(e, LEVEL.frac + shift - SIGMA_FRAC)
        grad[:d] += round_shift(s * (90 if labels[i] > 0 else 40), COST_FRAC) * q2
    np.testing.assert_array_equal(engine._grad, grad)
    grad[d + 5] = engine._grad[d + 5] = int(np.abs(grad).max())   # words past d count too
    norm2 = sum(int(g) ** 2 for g in grad)
    # a grid on which gamma is a few offset units: some offsets reach the clamp
    scale_log = round(2 ** LOG_FRAC * (0.5 * math.log2(norm2) - HALP_FRAC - 10))
    batch = 3 if double else 1
    engine.configure(d, batch, 3, phase=Phase.INNER, offset_bits=b, scale_log=scale_log,
                     seed=99, stochastic=stochastic, **common, **costs)
    sh = halp_shift(norm2, scale_log)
    assert engine.offset_shift == sh and 0 < sh < OFFSET_SHIFT_MAX
    np.testing.assert_array_equal(engine.gamma, round_shift(grad, sh + 3))
    assert not engine._grad.any()
    engine.anchor[3] = HALP.model.max_int - 5      # these saturate when their offsets move
    engine.anchor[4] = HALP.model.min_int + 5
    for name in ("model", "anchor", "offset", "cache", "_grad", "gamma", "prng"):
        setattr(reference, name, getattr(engine, name).copy())
    for name in ("features", "k", "double", "loss", "shift", "offset_shift", "offset_bits",
                 "stochastic", "cost_pos", "cost_neg"):
        setattr(reference, name, getattr(engine, name))
    reference.samples, reference.updates = engine.samples, engine.updates
    order = rng.integers(0, n, 3 * n)
    engine.train(fields[order], labels[order], indices=indices[order])
    for position, i in enumerate(order):
        inner_reference(reference, fields[i], int(labels[i]), int(indices[i]),
                        end=(position + 1) % batch == 0)
    for name in ("model", "offset", "prng"):
        np.testing.assert_array_equal(getattr(engine, name), getattr(reference, name), name)
    assert np.any(np.abs(engine.offset[:d]) == 1 << (b - 1))
    assert engine.overflow == reference.overflow
    assert engine.overflow or not stochastic       # nearest: tiny steps leave z_3, z_4 at 0
    assert engine.samples == 4 * n and engine.updates == 3 * n // batch
    np.testing.assert_array_equal(engine.model[d:], model[d:])     # only 0..d-1 change
    assert not engine.offset[d:].any()


def test_halp_stream_matches_train():
    """The beat stream (indices packed by the host into the label beats) drives the
    engine exactly as train(); the full pass ignores flushes, the inner loop's
    batches end at a flush or after ``batch`` samples."""
    rng = np.random.default_rng(8)
    d, k, n = 19, 4, 30
    fields = rng.integers(0, 1 << field_bits(k, True), (n, d)).astype(np.uint8)
    labels = rng.integers(-9000, 9000, n).astype(np.int16)
    indices = rng.permutation(HALP.halp_samples)[:n]
    engines = [halp_engine(k), halp_engine(k)]
    model = rng.integers(-1 << 22, 1 << 22, d)
    for engine in engines:
        engine.load_model(0, model)
    streamed, trained = engines
    for phase, config in ((Phase.FULL, dict(shift=5, cost_pos=64, cost_neg=64)),
                          (Phase.INNER, dict(shift=2, offset_bits=6, scale_log=300,
                                             seed=5, stochastic=True))):
        for engine in engines:
            engine.configure(d, 3, k=k, phase=phase, **config)
        stream = quantize.pack_samples(fields, labels, HALP, k, True, indices)
        middle = len(stream) // 2 + 8
        streamed.stream(stream[:middle], flush=phase == Phase.FULL)   # ignored there
        streamed.stream(stream[middle:], flush=True)
        trained.train(fields, labels, indices=indices)
        for name in ("model", "offset", "anchor", "cache", "_grad", "gamma", "prng"):
            np.testing.assert_array_equal(getattr(streamed, name), getattr(trained, name))
    assert streamed.updates == trained.updates == n // 3
    assert streamed.samples == 2 * n


def test_halp_configuration_checks():
    engine = halp_engine()
    for kwargs, message in [
        (dict(phase=Phase.FULL, loss=Loss.HINGE), "squared or the logistic"),
        (dict(phase=Phase.INNER, loss=Loss.SQUARED_HINGE), "squared or the logistic"),
        (dict(phase=3), "phase must be a Phase"),
        (dict(offset_bits=1), "offset_bits must be 2..16"),
        (dict(offset_bits=OFFSET_BITS + 1), "offset_bits"),
        (dict(scale_log=1 << 15), "scale_log"),
        (dict(scale_log=-(1 << 15) - 1), "scale_log"),
        (dict(seed=-1), "seed"),
        (dict(seed=1 << 32), "seed"),
    ]:
        with pytest.raises(ValueError, match=message):
            engine.configure(4, 1, 3, **kwargs)
    sgd_only = GoldenEngine(BOARD_PARAMS["sim"])
    with pytest.raises(ValueError, match="no HALP mode"):
        sgd_only.configure(4, 1, 3, phase=Phase.FULL)
    sgd_only.configure(4, 1, 3, offset_bits=16, scale_log=-5, seed=7)   # in range: accepted
    engine.configure(4, 1, 3, phase=Phase.FULL)
    fields = np.zeros((1, 4), np.int64)
    with pytest.raises(ValueError, match="sample indices"):
        engine.train(fields, [0])
    with pytest.raises(ValueError, match="outside the anchor-error cache"):
        engine.train(fields, [0], indices=[HALP.halp_samples])
    assert engine.samples == 0
    engine.train(fields, [0], indices=[HALP.halp_samples - 1])
    assert engine.samples == 1


def test_halp_sgd_phase_clears_gradient():
    """After a full pass, an SGD configuration starts from a clear gradient."""
    engine = halp_engine()
    engine.load_model(0, [1 << 24] * 4)
    engine.configure(4, 1, 2, phase=Phase.FULL)
    engine.train(np.full((2, 4), 300), [0, 0], indices=[0, 1])
    assert engine._grad.any()
    engine.configure(4, 1, 2)
    assert not engine._grad.any()


def quantised_least_squares(seed: int, n: int, d: int, k: int):
    """A least-squares problem on the engine's grid: features on ``2**k + 1`` uniform
    levels (single sampling, drawn once), labels ``LABEL`` words; the exact optimum of
    that quantised problem."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, d))
    x[:, -1] = 1.0                                          # a bias column
    y = x @ rng.uniform(-0.2, 0.2, d) + rng.normal(0, 0.05, n)
    levels = grid_levels(uniform_levels(k))
    fields = quantize.quantize_features(x, levels, k, "single", rng)
    q, _ = quantize.decode_fields(fields, levels, k, False)
    labels = quantize.quantize_labels(y)
    b = labels * 2.0 ** -LABEL.frac
    w_star = np.linalg.lstsq(q, b, rcond=None)[0]
    return fields, labels, q, b, w_star


@pytest.mark.parametrize("bits, mu_factor, shift, epochs", [(8, 2.0, 4, 15), (4, 4.0, 3, 20)])
def test_halp_converges_on_least_squares(bits, mu_factor, shift, epochs):
    """HALP in the golden model, driven as the host drives it, reaches the optimum of
    the quantised problem: each outer step a full pass (``shift = ceil(log2 n)``, costs
    ``round(2**(COST_FRAC + shift) / n)``) then ``n`` inner steps on a fresh
    permutation (costs 1.0, stochastic rounding, ``scale_log`` from ``mu``)."""
    n, d, k = 256, 8, 8
    fields, labels, q, b, w_star = quantised_least_squares(0, n, d, k)

    def objective(w):
        return 0.5 * np.mean((q @ w - b) ** 2)

    f_star = objective(w_star)
    mu = mu_factor * np.linalg.eigvalsh(q.T @ q / n)[0]     # multiple of lambda_min
    engine = halp_engine(k)
    full_shift = math.ceil(math.log2(n))
    cost = round(2 ** (COST_FRAC + full_shift) / n)
    scale_log = round(2 ** LOG_FRAC * math.log2(mu * (2 ** (bits - 1) - 1)))
    order_rng = np.random.default_rng(1)
    history, shifts = [], []
    for epoch in range(epochs):
        engine.configure(d, 1, full_shift, k=k, double=False, phase=Phase.FULL,
                         cost_pos=cost, cost_neg=cost, offset_bits=bits)
        engine.train(fields, labels, indices=np.arange(n))
        engine.configure(d, 1, shift, k=k, double=False, phase=Phase.INNER,
                         offset_bits=bits, scale_log=scale_log, seed=epoch, stochastic=True)
        shifts.append(engine.offset_shift)
        order = order_rng.permutation(n)
        engine.train(fields[order], labels[order], indices=order)
        w = engine.read_model(0, d) * HALP.model.scale
        history.append((objective(w) - f_star) / f_star)
    assert not engine.overflow and not engine.clipped
    assert engine.updates == epochs * n and engine.samples == 2 * epochs * n
    assert min(history[-3:]) < 1e-6, history
    assert history[0] > 1e-3                       # far from it after one outer step
    assert shifts[-1] < shifts[0] - 5              # the grid refined with the gradient
