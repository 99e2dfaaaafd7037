"""The float64 reference: losses and gradients, the engine's SGD schedule, quantised
SGD emulated in float, optima and the scikit-learn baselines."""

from enum import IntEnum

import numpy as np
import pytest
from ziphalp.host import reference as ref
from ziphalp.host.data import load, normalise, split, synthetic
from ziphalp.host.levels import uniform_levels

CLASSIFICATION = ["logistic", "hinge", "squared_hinge"]


def problem(loss: str, n: int = 40, d: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = np.column_stack([rng.uniform(-1, 1, (n, d - 1)), np.ones(n)])
    x = rng.normal(size=d)
    if loss == "squared":
        b = rng.uniform(-1, 1, n)
    else:
        b = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return a, b, x


def test_loss_names():
    class Loss(IntEnum):
        SQUARED = 0
        SQUARED_HINGE = 3

    assert ref.loss_name("Squared-Hinge") == "squared_hinge"
    assert ref.loss_name(Loss.SQUARED_HINGE) == "squared_hinge"
    assert ref.loss_name(Loss.SQUARED) == "squared"
    with pytest.raises(ValueError, match="unknown loss 'cubic'"):
        ref.loss_name("cubic")


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_objective_is_the_stated_formula(loss):
    a, b, x = problem(loss)
    costs, l2 = (1.5, 0.25), 0.3
    z = a @ x
    c = np.where(b > 0, 1.5, 0.25)
    per_sample = {
        "squared": (z - b) ** 2 / 2,
        "logistic": np.log1p(np.exp(-b * z)),
        "hinge": np.maximum(0, 1 - b * z),
        "squared_hinge": np.maximum(0, 1 - b * z) ** 2 / 2,
    }[loss]
    expected = np.mean(c * per_sample) + l2 / 2 * x @ x
    assert ref.objective(a, b, x, loss, costs, l2) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_gradient_matches_finite_differences(loss):
    a, b, x = problem(loss)
    costs, l2 = (2.0, 0.5), 0.1
    # No margin at a hinge kink: the central difference below never straddles one.
    assert np.min(np.abs(b * (a @ x) - 1)) > 1e-3
    h = 1e-6
    numeric = np.array([
        (ref.objective(a, b, x + h * e, loss, costs, l2)
         - ref.objective(a, b, x - h * e, loss, costs, l2)) / (2 * h)
        for e in np.eye(len(x))])
    # Error: h**2 times the third derivative (tiny) plus rounding of F / h (~1e-10).
    np.testing.assert_allclose(ref.gradient(a, b, x, loss, costs, l2), numeric,
                               rtol=0, atol=1e-8)


def test_derivative_is_the_engine_error():
    z = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0])
    pos, neg = np.ones_like(z), -np.ones_like(z)
    sigmoid = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(ref.derivative(z, pos, "logistic"), sigmoid - 1, atol=1e-15)
    np.testing.assert_allclose(ref.derivative(z, neg, "logistic"), sigmoid, atol=1e-15)
    # Hinge: active only strictly inside the margin (0 at the kink, as the engine).
    np.testing.assert_array_equal(ref.derivative(z, pos, "hinge"), [-1, -1, -1, -1, 0, 0])
    np.testing.assert_array_equal(ref.derivative(z, neg, "hinge"), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ref.derivative(z, pos, "squared_hinge"),
                                  [-4, -2, -1, -0.5, 0, 0])
    # The class is the label's sign (the engine's y > 0): a label 0 is negative.
    np.testing.assert_array_equal(ref.derivative(z, 0 * z, "hinge"), [0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(ref.derivative(z, 0.5 + 0 * z, "squared"), z - 0.5)
    assert ref.derivative(np.array([800.0, -800.0]), np.ones(2), "logistic").tolist() == [0, -1]


def test_accuracy_counts_zero_margin_as_wrong():
    a = np.array([[1.0], [-1.0], [0.0], [2.0]])
    assert ref.accuracy(a, np.array([1.0, -1.0, 1.0, -1.0]), np.array([1.0])) == 0.5


# --- SGD ---------------------------------------------------------------------------------


def test_sgd_full_batch_is_gradient_descent_on_the_summed_gradient():
    a, b, _ = problem("logistic", n=30)
    costs, l2, step = (1.5, 0.5), 0.2, 0.01
    result = ref.sgd(a, b, "logistic", step, batch=30, epochs=5, costs=costs, l2=l2)
    x = np.zeros(a.shape[1])
    for _ in range(5):      # summed gradient: n times the mean; decay step * B * l2 * x
        x = x - step * 30 * ref.gradient(a, b, x, "logistic", costs, l2)
    np.testing.assert_allclose(result.model, x, rtol=1e-12, atol=1e-15)
    assert [s.epoch for s in result.history] == [1, 2, 3, 4, 5]
    assert result.history[-1].loss == pytest.approx(ref.objective(a, b, x, "logistic",
                                                                  costs, l2), rel=1e-12)
    assert result.history[-1].accuracy == ref.accuracy(a, b, x)


def test_sgd_schedule_permutation_and_short_last_batch():
    a, b, _ = problem("hinge", n=10)
    costs, step, batch = (1.0, 3.0), 0.125, 4
    result = ref.sgd(a, b, "hinge", step, batch, epochs=2, seed=7, costs=costs)
    rng = np.random.default_rng(7)
    x = np.zeros(a.shape[1])
    for _ in range(2):
        order = rng.permutation(10)
        for rows in (order[:4], order[4:8], order[8:]):       # 4, 4, then 2 samples
            total = np.zeros_like(x)
            for i in rows:                                     # model fixed in a batch
                y = 1.0 if b[i] > 0 else -1.0
                if y * (a[i] @ x) < 1:
                    total += (1.0 if y > 0 else 3.0) * -y * a[i]
            x = x - step * total
    np.testing.assert_allclose(result.model, x, rtol=1e-13, atol=1e-15)


def test_sgd_squared_converges_near_the_least_squares_optimum():
    data = normalise(synthetic(n=1000, d=8, seed=3))
    a, b = data.features, data.labels
    best, best_loss = ref.optimum(a, b, "squared")
    # Full batch, step * n * L < 2: plain gradient descent reaches it to rounding.
    exact = ref.sgd(a, b, "squared", 2.0 ** -10, batch=1000, epochs=400)
    np.testing.assert_allclose(exact.model, best, rtol=0, atol=1e-9)
    # Mini-batches with a constant step stop at a noise floor that shrinks with the
    # step: at 2**-8, B = 8, 60 epochs the excess loss is 6e-4 of f* (seeded, so exact
    # here); allow 2e-3, and 1e-2 relative distance to x*.
    result = ref.sgd(a, b, "squared", 2.0 ** -8, batch=8, epochs=60, seed=1)
    assert result.history[-1].loss <= best_loss * (1 + 2e-3)
    assert np.linalg.norm(result.model - best) <= 1e-2 * np.linalg.norm(best)
    assert result.history[-1].accuracy is None
    assert result.history[0].loss > result.history[-1].loss


# --- low precision emulated in float ------------------------------------------------


def test_double_sampling_is_unbiased_single_sampling_adds_the_hidden_ridge():
    rng = np.random.default_rng(11)
    levels = uniform_levels(2)                         # 5 levels: large variances
    a = np.array([0.9, -0.3, 0.1, -0.75, 0.55, 1.0])   # the bias 1.0 is a level
    x = np.array([1.5, -2.0, 0.5, 1.0, -1.0, 0.3])
    b = 0.4
    draws = 200_000
    samples = np.tile(a, (draws, 1))
    j = np.searchsorted(levels, a, side="right") - 1
    j = np.minimum(j, len(levels) - 2)
    variance = (levels[j + 1] - a) * (a - levels[j])
    unbiased = a * (a @ x - b)                         # the gradient at full precision
    ridge = unbiased + variance * x                    # (a a^T + D) x - a b

    def mean_and_error(sampling):
        q1, q2 = ref.level_quantiser(levels, sampling)(samples, rng)
        assert np.isin(q1, levels).all() and np.isin(q2, levels).all()
        np.testing.assert_allclose(q1.mean(axis=0), a, atol=5 * 0.5 / np.sqrt(draws))
        g = (q1 @ x - b)[:, None] * q2
        return g.mean(axis=0), g.std(axis=0) / np.sqrt(draws)

    # Tolerance: 5 standard errors of the mean (each about 2e-3 here).
    mean, error = mean_and_error("double")
    assert np.all(np.abs(mean - unbiased) <= 5 * error + 1e-12)
    mean, error = mean_and_error("single")
    assert np.all(np.abs(mean - ridge) <= 5 * error + 1e-12)
    # The ridge term D x is far outside the noise on every quantised feature.
    biased = variance > 0
    assert np.all(np.abs(mean - unbiased)[biased] > 20 * error[biased])
    # Nearest rounding is deterministic, half up.
    q1, q2 = ref.level_quantiser(levels, "nearest")(np.array([[-0.25, 0.2, 0.3, 1.0]]), rng)
    np.testing.assert_array_equal(q1, [[0.0, 0.0, 0.5, 1.0]])
    assert q2 is q1


def test_quantised_sgd_double_finds_the_optimum_single_the_ridge_solution():
    data = normalise(synthetic(n=1000, d=8, seed=3))
    a, b = data.features, data.labels
    levels = uniform_levels(2)
    best, _ = ref.optimum(a, b, "squared")
    j = np.minimum(np.searchsorted(levels, a, side="right") - 1, len(levels) - 2)
    variance = ((levels[j + 1] - a) * (a - levels[j])).sum(axis=0)
    ridge = np.linalg.solve(a.T @ a + np.diag(variance), a.T @ b)
    scale = np.linalg.norm(best)
    assert np.linalg.norm(ridge - best) > 0.08 * scale     # the bias to detect: 10 %

    def averaged(sampling):
        models = []                                        # average the last 50 epochs
        ref.sgd(a, b, "squared", 2.0 ** -8, 8, 100, seed=2,
                quantiser=ref.level_quantiser(levels, sampling),
                callback=lambda stats, x: models.append(x.copy()) if stats.epoch > 50 else None)
        return np.mean(models, axis=0)

    # Seeded: measured 0.4 % and 0.5 %; allow 1.5 % (the noise floor of the step).
    assert np.linalg.norm(averaged("double") - best) < 0.015 * scale
    single = averaged("single")
    assert np.linalg.norm(single - ridge) < 0.015 * scale
    assert np.linalg.norm(single - best) > 0.08 * scale


# --- optima ------------------------------------------------------------------------------


def test_squared_optimum_solves_the_normal_equations():
    a, b, _ = problem("squared", n=50, d=6)
    for costs, l2 in [((1, 1), 0.0), ((2.0, 0.5), 0.1)]:
        x, f = ref.optimum(a, b, "squared", costs, l2)
        c = np.where(b > 0, *costs)
        normal = (a.T * c) @ a / 50 + l2 * np.eye(6)
        np.testing.assert_allclose(normal @ x, (a.T * c) @ b / 50, rtol=0, atol=1e-13)
        assert f == pytest.approx(ref.objective(a, b, x, "squared", costs, l2))


def test_logistic_optimum_has_zero_gradient():
    data = normalise(synthetic(n=800, d=6, seed=1, task="classification"))
    a, b = data.features, data.labels
    for costs, l2 in [((1, 1), 0.0), ((3.0, 1.0), 1e-3)]:
        x, f = ref.optimum(a, b, "logistic", costs, l2, tol=1e-9)
        assert np.abs(ref.gradient(a, b, x, "logistic", costs, l2)).max() <= 1e-9
        assert f < ref.objective(a, b, x + 1e-3, "logistic", costs, l2)
    # Separable data: no minimiser without L2.
    separable = normalise(load("digits:0,1"))
    with pytest.raises(ValueError, match="linearly separable"):
        ref.optimum(separable.features, separable.labels, "logistic")


@pytest.mark.parametrize("loss", CLASSIFICATION + ["squared"])
def test_optimum_matches_sklearn_on_the_same_objective(loss):
    train = normalise(split(load("breast_cancer"), seed=0)[0])
    a, b = train.features, train.labels
    costs, l2 = (2.0, 0.5), 1e-2
    x, f = ref.optimum(a, b, loss, costs, l2)
    fitted = ref.sklearn_model(train, loss, costs, l2)
    # Both minimise the same strongly convex objective (l2 > 0): ours is never worse
    # and the minimisers agree (scikit-learn stops at its own tolerance: 1e-6 here).
    assert f <= ref.objective(a, b, fitted, loss, costs, l2) + 1e-12
    assert f == pytest.approx(ref.objective(a, b, fitted, loss, costs, l2), abs=1e-9)
    np.testing.assert_allclose(x, fitted, rtol=0, atol=1e-5)


def test_hinge_optimum_without_l2_is_the_linear_programme():
    data = normalise(synthetic(n=400, d=5, seed=6, task="classification"))
    a, b = data.features, data.labels
    x, f = ref.optimum(a, b, "hinge")
    assert f > 0.05                                      # not separable: a real LP
    l2 = 1e-6
    x_l2, f_l2 = ref.optimum(a, b, "hinge", l2=l2)
    # min F0 <= F0(x_l2) and min F_l2 <= F_l2(x_lp) = F0(x_lp) + l2/2 ||x_lp||^2;
    # HiGHS is optimal to about 1e-7.
    assert f <= ref.objective(a, b, x_l2, "hinge") + 1e-7
    assert f_l2 <= f + l2 / 2 * x @ x + 1e-7
    assert f_l2 >= f - 1e-7


# --- baselines ---------------------------------------------------------------------------


def test_sklearn_baseline_and_sgd_accuracy():
    train, test = split(load("breast_cancer"), seed=0)
    baseline = ref.sklearn_baseline(train, test, "logistic")
    assert baseline >= 0.95
    trained = normalise(train)
    tested = normalise(test, like=trained)
    assert ref.sklearn_baseline(trained, tested, "logistic") == baseline
    # SGD with the engine's schedule matches it within 2 points, at full precision
    # and with 4-bit double sampling (seeded: measured 0.993 and 0.979 against 0.979).
    for quantiser in (None, ref.level_quantiser(uniform_levels(4), "double")):
        result = ref.sgd(trained.features, trained.labels, "logistic", 2.0 ** -5, 8, 20,
                         quantiser=quantiser)
        assert ref.accuracy(tested.features, tested.labels, result.model) >= baseline - 0.02
        assert result.history[-1].accuracy >= 0.94
    assert ref.sklearn_baseline(train, test, "hinge") >= 0.95
