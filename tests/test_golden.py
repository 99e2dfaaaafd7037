"""The golden model's loss arithmetic against float64.

The engine's loss derivative ``E`` (see ``ziphalp.hw.params``) must be the float
derivative of the loss, exactly for the squared loss and the hinges (integer
arithmetic on exact values) and within the stated sigmoid error bound for the
logistic loss. The hardware is held to the golden model elsewhere (cocotb
benches, ``tests/test_lanes.py``); this file holds the golden model to the maths.
"""

import numpy as np
import pytest
from ziphalp.host import reference
from ziphalp.hw.params import BOARD_PARAMS, LABEL, LEVEL, SIGMOID_ERROR_BOUND, Loss
from ziphalp.sim.golden import loss_derivative, sigmoid_fixed

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
