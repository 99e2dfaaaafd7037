"""Float64 references for SGD, low-precision SGD, SVRG, low-precision SVRG and HALP:
linear convergence of SVRG and HALP, the noise floor of the fixed-grid methods, and
the b-bit stochastic quantiser."""

import numpy as np
import pytest
from ziphalp.host import halp_reference as hr
from ziphalp.host import reference as ref

EPOCHS = 30


def least_squares(seed: int = 0, n: int = 200, d: int = 10):
    """Well-conditioned least squares: features uniform in [-1, 1], noise 0.1."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, d))
    b = a @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    return a, b


def logistic(seed: int = 0, n: int = 200, d: int = 10):
    """Labels +-1 from a random hyperplane with 10 % flipped (not separable)."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, d))
    b = np.where(a @ rng.normal(size=d) > 0, 1.0, -1.0)
    b[rng.random(n) < 0.1] *= -1
    return a, b


@pytest.fixture(scope="module")
def squared_problem():
    a, b = least_squares()
    x, f = ref.optimum(a, b, "squared")
    return a, b, x, f


@pytest.fixture(scope="module")
def logistic_problem():
    a, b = logistic()
    x, f = ref.optimum(a, b, "logistic")
    return a, b, x, f


def fixed_scale(x_star: np.ndarray, bits: int) -> float:
    """A fixed grid whose range covers twice the optimum's largest coordinate."""
    return 2.0 * float(np.max(np.abs(x_star))) / (2 ** (bits - 1) - 1)


def suboptimality(result: hr.Result) -> np.ndarray:
    return np.array([e.suboptimality for e in result.history])


def test_svrg_converges_linearly_least_squares(squared_problem):
    a, b, _, f = squared_problem
    result = hr.svrg(a, b, "squared", epochs=EPOCHS, f_star=f)
    s = suboptimality(result)
    assert len(s) == EPOCHS + 1 and result.history[0].epoch == 0
    assert s[-1] < 1e-10
    # linear rate: at least a factor 10 every 3 epochs while above 1e-12
    assert result.epochs_to(1e-10) <= 15
    assert result.epochs_to(1e-6) <= 10


def test_halp_8_bits_converges_linearly_least_squares(squared_problem):
    a, b, _, f = squared_problem
    result = hr.halp(a, b, "squared", bits=8, epochs=EPOCHS, f_star=f)
    s = suboptimality(result)
    assert s[-1] < 1e-8
    assert result.epochs_to(1e-8) <= 15
    assert len(result.scales) == EPOCHS
    assert result.scales[-1] < 1e-3 * result.scales[0]   # the grid refines with g~


@pytest.mark.parametrize("power_of_two", [False, True])
def test_halp_power_of_two_scale(squared_problem, power_of_two):
    a, b, _, f = squared_problem
    result = hr.halp(a, b, "squared", bits=8, epochs=EPOCHS, f_star=f,
                     power_of_two=power_of_two)
    assert suboptimality(result)[-1] < 1e-8
    exponents = np.log2(result.scales)
    assert np.all(exponents == np.round(exponents)) == power_of_two


def test_halp_scale_rule():
    g = np.array([3.0, 4.0])
    assert hr.halp_scale(g, 2.0, 8) == pytest.approx(5.0 / (2.0 * 127))
    assert hr.halp_scale(g, 2.0, 8, power_of_two=True) == 2.0 ** -5   # 0.0197 -> 1/32
    assert hr.halp_scale(np.array([1.0, 0.0]), 1.0, 2, power_of_two=True) == 1.0
    assert hr.halp_scale(np.zeros(2), 1.0, 8) == 0.0


def test_halp_4_bits_converges_least_squares(squared_problem):
    a, b, _, f = squared_problem
    result = hr.halp(a, b, "squared", bits=4, epochs=EPOCHS, f_star=f)
    assert suboptimality(result)[-1] < 1e-6


@pytest.mark.parametrize("method", [hr.lp_sgd, hr.lp_svrg])
@pytest.mark.parametrize("stochastic", [True, False])
def test_fixed_grid_methods_stall_at_a_floor(squared_problem, method, stochastic):
    a, b, x, f = squared_problem
    scale = fixed_scale(x, 8)
    result = method(a, b, "squared", scale=scale, bits=8, epochs=EPOCHS, f_star=f,
                    stochastic=stochastic)
    s = suboptimality(result)
    assert np.min(s) > 1e-4
    assert result.epochs_to(1e-6) is None
    assert np.allclose(result.model / scale, np.round(result.model / scale))


def test_float_sgd_stalls_lp_sgd_on_grid(squared_problem):
    a, b, _, f = squared_problem
    plain = hr.sgd(a, b, "squared", epochs=10, f_star=f)
    batched = hr.sgd(a, b, "squared", epochs=10, batch=8, alpha=0.1, f_star=f)
    for result in (plain, batched):
        s = suboptimality(result)
        assert s[-1] < 0.1 * s[0]          # it makes progress ...
        assert np.min(s) > 1e-6            # ... to a noise floor


@pytest.mark.parametrize("bits", [8, 4])
def test_logistic_svrg_and_halp(logistic_problem, bits):
    a, b, _, f = logistic_problem
    svrg = hr.svrg(a, b, "logistic", epochs=EPOCHS, f_star=f)
    assert suboptimality(svrg)[-1] < 1e-8
    halp = hr.halp(a, b, "logistic", bits=bits, epochs=EPOCHS, f_star=f)
    assert suboptimality(halp)[-1] < 1e-8


def test_logistic_fixed_grid_floor(logistic_problem):
    a, b, x, f = logistic_problem
    result = hr.lp_svrg(a, b, "logistic", scale=fixed_scale(x, 8), bits=8,
                        epochs=EPOCHS, f_star=f)
    assert np.min(suboptimality(result)) > 1e-5


def test_default_optimum_matches_given(squared_problem):
    a, b, _, f = squared_problem
    given = hr.halp(a, b, "squared", epochs=3, f_star=f)
    computed = hr.halp(a, b, "squared", epochs=3)
    assert computed.f_star == pytest.approx(f, rel=1e-12)
    assert [e.objective for e in given.history] == [e.objective for e in computed.history]


@pytest.mark.parametrize("method", [hr.sgd, hr.lp_sgd, hr.svrg, hr.lp_svrg, hr.halp])
def test_deterministic_by_seed(squared_problem, method):
    a, b, _, f = squared_problem
    first = method(a, b, "squared", epochs=2, seed=5, f_star=f)
    again = method(a, b, "squared", epochs=2, seed=5, f_star=f)
    other = method(a, b, "squared", epochs=2, seed=6, f_star=f)
    assert np.array_equal(first.model, again.model)
    assert not np.array_equal(first.model, other.model)


def test_stochastic_rounding_is_unbiased_and_clamped():
    rng = np.random.default_rng(0)
    scale, bits = 0.25, 4                    # codes -8..7, values -2.0..1.75
    values = np.array([-1.9, -0.3, 0.0, 0.1, 0.6, 1.7])
    draws = 200_000
    q = hr.quantise(np.broadcast_to(values, (draws, len(values))), scale, bits, rng=rng)
    assert np.all(q >= -8 * scale) and np.all(q <= 7 * scale)
    assert np.allclose(q / scale, np.round(q / scale))
    # mean within 4 standard errors (sd <= scale / 2)
    assert np.all(np.abs(q.mean(axis=0) - values) < 4 * 0.5 * scale / np.sqrt(draws))
    # each value rounds to one of its two neighbours
    assert np.all(np.abs(q - values) < scale)


def test_quantise_clamps_and_rounds_to_nearest():
    scale, bits = 0.5, 3                     # codes -4..3
    v = np.array([-10.0, -2.1, -0.26, 0.24, 0.25, 1.4, 10.0])
    assert np.array_equal(hr.quantise(v, scale, bits), [-2.0, -2.0, -0.5, 0.0, 0.5, 1.5, 1.5])
    big = hr.quantise(np.full(1000, 5.0), scale, bits, rng=np.random.default_rng(1))
    assert np.all(big == 1.5)


def test_rejects_unsupported_loss(squared_problem):
    a, b, _, _ = squared_problem
    with pytest.raises(ValueError, match="not supported"):
        hr.svrg(a, np.sign(b), "hinge", f_star=1.0)


# --- delayed (stale) HALP -----------------------------------------------------------------


def transcribed_halp(a, b, loss, bits, epochs, delay, seed=0, inner=None, l2=0.0,
                     stochastic=True, f_star=None):
    """HALP's inner step written out from the docstring, keeping every offset of the
    epoch: ``z_{u+1} = Q(z_u - alpha (grad f_i(w~ + z_{u-tau}) - grad f_i(w~) + g~))``,
    ``z_{u-tau} = z_0`` for ``u < tau``; the draws in :func:`hr.halp`'s order."""
    problem = hr._Problem(a, b, loss, (1.0, 1.0), l2, f_star)
    alpha, mu = problem.default_step(), problem.default_mu()
    steps = problem.n if inner is None else inner
    rng = np.random.default_rng(seed)
    anchor, z = np.zeros(problem.d), np.zeros(problem.d)
    for _ in range(epochs):
        anchor = anchor + z
        z = np.zeros(problem.d)
        g, margins = problem.full_gradient(anchor)
        delta = hr.halp_scale(g, mu, bits)
        order = problem.order(rng, steps)
        u = rng.random((steps, problem.d)) if stochastic else np.full((steps, problem.d), 0.5)
        offsets = [z]                                   # z_0, z_1, ...
        for step, i in enumerate(order):
            seen = offsets[max(0, step - delay)]
            e = problem.error(margins[i] + float(a[i] @ seen), i) - problem.error(margins[i], i)
            z = hr.quantise(z - alpha * (e * a[i] + l2 * seen + g), delta, bits, u[step])
            offsets.append(z)
    return anchor + z


@pytest.mark.parametrize("loss", ["squared", "logistic"])
@pytest.mark.parametrize("delay", [0, 3])
def test_halp_delay_matches_the_formula(squared_problem, logistic_problem, loss, delay):
    a, b, _, f = squared_problem if loss == "squared" else logistic_problem
    for stochastic, inner, l2 in [(True, None, 0.0), (False, 57, 0.01)]:
        expected = transcribed_halp(a, b, loss, 8, 3, delay, seed=2, inner=inner, l2=l2,
                                    stochastic=stochastic, f_star=f)
        got = hr.halp(a, b, loss, bits=8, epochs=3, seed=2, inner=inner, l2=l2,
                      stochastic=stochastic, f_star=f, delay=delay)
        assert np.array_equal(got.model, expected)          # exact, not approximate


@pytest.mark.parametrize("loss", ["squared", "logistic"])
def test_halp_delay_zero_is_the_default(squared_problem, logistic_problem, loss):
    a, b, _, f = squared_problem if loss == "squared" else logistic_problem
    for bits in (8, 4):
        plain = hr.halp(a, b, loss, bits=bits, epochs=5, seed=4, f_star=f)
        zero = hr.halp(a, b, loss, bits=bits, epochs=5, seed=4, f_star=f, delay=0)
        assert np.array_equal(plain.model, zero.model)
        assert plain.history == zero.history
        assert plain.scales == zero.scales and plain.saturations == zero.saturations


def test_halp_delay_4_converges_linearly_least_squares(squared_problem):
    """The well-conditioned least squares problem (n = 200, d = 10, features uniform in
    [-1, 1], noise 0.1), 8-bit offsets, default step and mu: a delay of 4 inner steps
    keeps the linear rate, to a relative suboptimality below 1e-8 within 30 epochs."""
    a, b, _, f = squared_problem
    result = hr.halp(a, b, "squared", bits=8, epochs=EPOCHS, f_star=f, delay=4)
    s = suboptimality(result)
    assert s[-1] < 1e-8
    assert result.epochs_to(1e-8) <= 15
    assert result.epochs_to(1e-4) <= 8
    assert result.scales[-1] < 1e-3 * result.scales[0]


def test_halp_delay_is_used(squared_problem):
    """At four times the default step, HALP without delay converges; with the gradients
    32 steps stale it diverges."""
    a, b, _, f = squared_problem
    alpha = 4 * hr.default_step(a, b, "squared")
    fresh = hr.halp(a, b, "squared", bits=8, alpha=alpha, epochs=EPOCHS, f_star=f)
    stale = hr.halp(a, b, "squared", bits=8, alpha=alpha, epochs=EPOCHS, f_star=f, delay=32)
    assert suboptimality(fresh)[-1] < 1e-8
    assert suboptimality(stale)[-1] > 1.0
    assert stale.saturations > fresh.saturations


def test_halp_delay_beyond_the_epoch_freezes_the_gradient(squared_problem):
    """With ``delay >= T`` every inner gradient is taken at the anchor: an epoch is T steps
    ``z <- Q(z - alpha g~)`` (nearest rounding here)."""
    a, b, _, f = squared_problem
    inner, bits = 50, 8
    result = hr.halp(a, b, "squared", bits=bits, epochs=1, inner=inner, delay=inner,
                     stochastic=False, f_star=f)
    g = a.T @ (0.0 - b) / len(b)                        # grad f(0), the first anchor
    alpha = hr.default_step(a, b, "squared")
    delta = hr.halp_scale(g, hr.default_mu(a, b, "squared"), bits)
    z = np.zeros(a.shape[1])
    for _ in range(inner):
        z = hr.quantise(z - alpha * g, delta, bits)
    assert np.allclose(result.model, z, rtol=0, atol=1e-12 * delta)
    assert not np.allclose(result.model, hr.halp(a, b, "squared", bits=bits, epochs=1,
                                                 inner=inner, stochastic=False,
                                                 f_star=f).model)


@pytest.mark.parametrize("delay", [-1, 1.5, True])
def test_halp_rejects_bad_delay(squared_problem, delay):
    a, b, _, f = squared_problem
    with pytest.raises(ValueError, match="delay"):
        hr.halp(a, b, "squared", epochs=1, f_star=f, delay=delay)
