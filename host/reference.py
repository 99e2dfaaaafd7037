"""Float64 references for the engine: losses, mini-batch SGD, optima and scikit-learn baselines.

Everything here is plain NumPy in float64 (SciPy for the optimisers,
scikit-learn for the baselines): the yardstick the fixed-point engine and its
golden model are measured against. Nothing here knows about fixed point, bit
packing or the board.

Objective (``n`` samples ``a_i`` with labels ``b_i``, model ``x``)::

    F(x) = 1/n sum_i c_i l(a_i.x, b_i) + l2/2 ||x||^2

with the class cost ``c_i = c_pos`` if ``b_i > 0`` else ``c_neg`` (the engine's
class test) and the per-sample loss ``l(z, b)`` of the margin ``z = a.x``:

=================  ============================  ======================================
loss               ``l(z, b)``                   ``dl/dz`` (the engine's ``E``)
=================  ============================  ======================================
``squared``        ``(z - b)^2 / 2``             ``z - b``
``logistic``       ``log(1 + exp(-y z))``        ``sigmoid(z) - [y > 0]``
``hinge``          ``max(0, 1 - y z)``           ``-y`` if ``y z < 1`` else 0
``squared_hinge``  ``max(0, 1 - y z)^2 / 2``     ``z - y`` if ``y z < 1`` else 0
=================  ============================  ======================================

where ``y = +1`` if ``b > 0`` else ``-1`` (equal to ``b`` for labels +-1). The L2
term covers every coefficient, the bias included, as the engine's decay does.

:func:`sgd` follows the engine's schedule (a fresh permutation each epoch,
batches of ``B`` consecutive samples, the last one possibly shorter, the
gradient *summed* over a batch and one step per batch, the model read-only
inside a batch):

    x <- x - step * sum_{i in batch} c_i E(q1_i.x, b_i) q2_i - step * B * l2 * x

The engine's decay ``w >> l2_shift`` is this last term with
``step * B * l2 = 2**-l2_shift``. With a quantiser (:func:`level_quantiser`)
``q1``, ``q2`` are low-precision copies of the samples drawn afresh each epoch
(ZipML's single or double sampling, or nearest rounding); without one both are
the samples themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from ziphalp.hw.params import LOSS_NAMES

from .data import Dataset, Normalised, normalise
from .levels import sample_intervals

__all__ = [
    "LOSSES",
    "EpochStats",
    "Quantiser",
    "SGDResult",
    "accuracy",
    "class_weights",
    "derivative",
    "gradient",
    "level_quantiser",
    "loss_name",
    "objective",
    "optimum",
    "sgd",
    "sklearn_baseline",
    "sklearn_model",
]

#: Loss names, in the order of the engine's ``Loss`` codes (``ziphalp.hw.params.LOSS_NAMES``
#: with ``_`` for ``-``).
LOSSES = tuple(name.replace("-", "_") for name in LOSS_NAMES.values())

#: ``quantiser(samples, rng) -> (q1, q2)``: low-precision copies of ``samples``
#: (same shape), ``q1`` for the dot product and ``q2`` for the gradient.
Quantiser = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def loss_name(loss: str | object) -> str:
    """Canonical name of a loss: one of :data:`LOSSES`.

    Accepts the name in any case, with ``-`` for ``_``, or an enum member whose
    ``name`` is one (such as ``ziphalp.hw.params.Loss.HINGE``).
    """
    name = str(getattr(loss, "name", loss)).lower().replace("-", "_")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")
    return name


def class_weights(labels: np.ndarray, costs: Sequence[float] = (1.0, 1.0)) -> np.ndarray:
    """Per-sample class cost: ``costs[0]`` (positive) where ``label > 0``, else ``costs[1]``."""
    c_pos, c_neg = (float(c) for c in costs)
    if not (c_pos >= 0 and c_neg >= 0):
        raise ValueError(f"class costs must be >= 0, not {tuple(costs)}")
    return np.where(np.asarray(labels) > 0, c_pos, c_neg)


def _sign(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, 1.0, -1.0)


def _pointwise(margins: np.ndarray, labels: np.ndarray, loss: str) -> np.ndarray:
    z, b = np.asarray(margins, np.float64), np.asarray(labels, np.float64)
    if loss == "squared":
        return 0.5 * (z - b) ** 2
    y = _sign(b)
    if loss == "logistic":
        return np.logaddexp(0.0, -y * z)
    gap = np.maximum(0.0, 1.0 - y * z)
    return gap if loss == "hinge" else 0.5 * gap ** 2


def derivative(margins: np.ndarray, labels: np.ndarray, loss: str | object) -> np.ndarray:
    """``dl/dz`` of each sample's loss at its margin ``z = a.x`` (before class costs).

    This is the engine's error ``E`` in real units; the hinge takes the
    subgradient 0 at its kink (``y z = 1``), as the engine does.
    """
    loss = loss_name(loss)
    z, b = np.asarray(margins, np.float64), np.asarray(labels, np.float64)
    if loss == "squared":
        return z - b
    y = _sign(b)
    if loss == "logistic":
        return 0.5 * (1.0 + np.tanh(0.5 * z)) - (y > 0)   # sigmoid without overflow
    active = y * z < 1.0
    if loss == "hinge":
        return np.where(active, -y, 0.0)
    return np.where(active, z - y, 0.0)


def objective(features: np.ndarray, labels: np.ndarray, model: np.ndarray,
              loss: str | object, costs: Sequence[float] = (1.0, 1.0),
              l2: float = 0.0) -> float:
    """``F(x) = 1/n sum_i c_i l(a_i.x, b_i) + l2/2 ||x||^2`` in float64 (module docstring)."""
    x = np.asarray(model, np.float64)
    values = _pointwise(np.asarray(features, np.float64) @ x, labels, loss_name(loss))
    return float(class_weights(labels, costs) @ values) / len(values) + 0.5 * l2 * float(x @ x)


def gradient(features: np.ndarray, labels: np.ndarray, model: np.ndarray,
             loss: str | object, costs: Sequence[float] = (1.0, 1.0),
             l2: float = 0.0) -> np.ndarray:
    """Gradient of :func:`objective`: ``1/n sum_i c_i E_i a_i + l2 x`` (a subgradient for hinge)."""
    a = np.asarray(features, np.float64)
    x = np.asarray(model, np.float64)
    weighted = class_weights(labels, costs) * derivative(a @ x, labels, loss)
    return weighted @ a / len(weighted) + l2 * x


def accuracy(features: np.ndarray, labels: np.ndarray, model: np.ndarray) -> float:
    """Fraction of samples with ``sign(a.x)`` equal to the label's sign (``a.x = 0`` is wrong)."""
    margins = _sign(np.asarray(labels)) * (np.asarray(features, np.float64) @ model)
    return float(np.mean(margins > 0))


# --- quantisation emulated in float --------------------------------------------------


def level_quantiser(levels: np.ndarray, sampling: str = "double") -> Quantiser:
    """A :data:`Quantiser` onto ``levels`` over [-1, 1], as the engine sees its data.

    Parameters
    ----------
    levels : ndarray
        Increasing, from -1 to 1 (``ziphalp.host.levels``: uniform or variance-optimal).
    sampling : {"double", "single", "nearest"}
        ``double``: two independent unbiased stochastic roundings ``q1``, ``q2``
        sharing each value's interval (ZipML double sampling: an unbiased
        least-squares gradient). ``single``: one stochastic rounding, ``q1 = q2``
        (unbiased samples, but the gradient carries the hidden ridge term
        ``D x``, ``D`` the rounding variances). ``nearest``: deterministic round
        to the nearest level (half up), ``q1 = q2``.
    """
    levels = np.asarray(levels, np.float64)
    if sampling not in ("double", "single", "nearest"):
        raise ValueError(f"sampling must be double, single or nearest, not {sampling!r}")

    def quantise(samples: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if sampling == "nearest":
            v = np.clip(np.asarray(samples, np.float64), -1.0, 1.0)
            j = np.clip(np.searchsorted(levels, v, side="right") - 1, 0, len(levels) - 2)
            q = np.where(2 * v >= levels[j] + levels[j + 1], levels[j + 1], levels[j])
            return q, q
        j, up = sample_intervals(samples, levels, rng, 2 if sampling == "double" else 1)
        q1 = levels[j + up[0]]
        return q1, (levels[j + up[1]] if sampling == "double" else q1)

    return quantise


# --- mini-batch SGD with the engine's schedule ---------------------------------------


@dataclass(frozen=True)
class EpochStats:
    """The model after one epoch of :func:`sgd`, measured on the unquantised data.

    Attributes
    ----------
    epoch : int
        1 for the first epoch.
    loss : float
        :func:`objective` (costs and L2 included).
    accuracy : float or None
        :func:`accuracy` for a classification loss or labels all +-1, else None.
    """

    epoch: int
    loss: float
    accuracy: float | None


@dataclass(frozen=True)
class SGDResult:
    """Outcome of :func:`sgd`: the final ``model`` and one :class:`EpochStats` per epoch."""

    model: np.ndarray
    history: list[EpochStats]


def sgd(features: np.ndarray, labels: np.ndarray, loss: str | object, step: float,
        batch: int, epochs: int, seed: int = 0, costs: Sequence[float] = (1.0, 1.0),
        l2: float = 0.0, quantiser: Quantiser | None = None,
        callback: Callable[[EpochStats, np.ndarray], None] | None = None,
        model: np.ndarray | None = None) -> SGDResult:
    """Mini-batch SGD in float64 with the engine's schedule (module docstring).

    Parameters
    ----------
    features : ndarray, shape (n, d)
        Normalised samples (bias column included).
    labels : ndarray, shape (n,)
    loss : str or Loss
        One of :data:`LOSSES`.
    step : float
        Step size (the engine's ``2**-shift``), > 0.
    batch : int
        Samples per update B, >= 1; the gradient is summed, not averaged.
    epochs : int
    seed : int
        Seeds one ``numpy.random.default_rng``; each epoch draws the permutation,
        then passes the same generator to ``quantiser`` for the permuted samples.
    costs : (float, float)
        Class costs ``(c_pos, c_neg)``.
    l2 : float
        L2 weight: each update also subtracts ``step * B * l2 * x``.
    quantiser : Quantiser, optional
        Called once per epoch; the dot product uses ``q1``, the gradient ``q2``.
    callback : callable, optional
        ``callback(stats, model)`` after each epoch (``model`` must not be modified).
    model : ndarray, shape (d,), optional
        Starting model; default zeros.

    Returns
    -------
    SGDResult
    """
    name = loss_name(loss)
    a = np.asarray(features, np.float64)
    b = np.asarray(labels, np.float64)
    n, d = a.shape
    if b.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), not {b.shape}")
    if not step > 0 or batch < 1 or epochs < 0 or l2 < 0:
        raise ValueError("need step > 0, batch >= 1, epochs >= 0 and l2 >= 0")
    weights = class_weights(b, costs)
    x = np.zeros(d) if model is None else np.array(model, np.float64)
    classification = name != "squared" or bool(np.all(np.abs(b) == 1))
    decay = step * batch * l2
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(n)
        q1 = q2 = a[order]
        if quantiser is not None:
            q1, q2 = quantiser(q1, rng)
        bp, wp = b[order], weights[order]
        for start in range(0, n, batch):
            rows = slice(start, start + batch)
            sigma = wp[rows] * derivative(q1[rows] @ x, bp[rows], name)
            x = x - step * (sigma @ q2[rows]) - decay * x
        stats = EpochStats(epoch, objective(a, b, x, name, costs, l2),
                           accuracy(a, b, x) if classification else None)
        history.append(stats)
        if callback is not None:
            callback(stats, x)
    return SGDResult(x, history)


# --- optima --------------------------------------------------------------------------


def optimum(features: np.ndarray, labels: np.ndarray, loss: str | object,
            costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0,
            tol: float = 1e-9) -> tuple[np.ndarray, float]:
    """Minimiser ``x*`` of :func:`objective` and ``F(x*)``.

    * ``squared``: one ``numpy.linalg.lstsq`` of the cost-weighted system with
      ``sqrt(l2)`` ridge rows (the minimum-norm minimiser if it is not unique);
      exact to rounding.
    * ``logistic``, ``squared_hinge``: L-BFGS (SciPy) then Newton steps on the
      (generalised) Hessian until ``max |grad F(x*)| <= tol``.
    * ``hinge`` without L2: the linear programme (SciPy's HiGHS), optimal to
      HiGHS's tolerances (about 1e-7 on feasibility and objective).
    * ``hinge`` with L2: Newton on a smoothed hinge with a shrinking smoothing
      width, then an active-set solve on the support vectors, until the
      duality gap of the matching dual point (a certificate:
      ``F(x*) - min F <= gap``) is at most ``tol``.

    Parameters
    ----------
    features : ndarray, shape (n, d)
    labels : ndarray, shape (n,)
    loss : str or Loss
        One of :data:`LOSSES`.
    costs : (float, float)
        Class costs ``(c_pos, c_neg)``.
    l2 : float
        L2 weight, >= 0.
    tol : float
        Gradient (smooth losses) or duality-gap (hinge with L2) tolerance.

    Returns
    -------
    x : ndarray, shape (d,)
    f : float
        ``objective(features, labels, x, loss, costs, l2)``.

    Raises
    ------
    ValueError
        Logistic loss without L2 on linearly separable data (no minimiser: the
        loss tends to 0 as ``||x||`` grows), or a bad argument.
    RuntimeError
        The stated tolerance was not reached.
    """
    name = loss_name(loss)
    a = np.asarray(features, np.float64)
    b = np.asarray(labels, np.float64)
    n, d = a.shape
    if l2 < 0 or not tol > 0:
        raise ValueError("need l2 >= 0 and tol > 0")
    c = class_weights(b, costs)
    if name == "squared":
        rows = np.sqrt(c / n)[:, None] * a
        target = np.sqrt(c / n) * b
        if l2 > 0:
            rows = np.vstack([rows, np.sqrt(l2) * np.eye(d)])
            target = np.concatenate([target, np.zeros(d)])
        x, *_ = np.linalg.lstsq(rows, target, rcond=None)
    elif name == "hinge":
        x = _hinge_optimum(a, b, c, l2, tol)
    else:
        if name == "logistic" and l2 == 0 and _separable(a, b):
            raise ValueError("the data are linearly separable: the logistic loss has no "
                             "minimiser without L2 (use l2 > 0)")
        x = _smooth_optimum(a, b, name, costs, l2, tol)
    return x, objective(a, b, x, name, costs, l2)


def _separable(a: np.ndarray, b: np.ndarray) -> bool:
    from scipy.optimize import linprog

    y = _sign(b)
    result = linprog(np.zeros(a.shape[1]), A_ub=-y[:, None] * a, b_ub=-np.ones(len(b)),
                     bounds=(None, None), method="highs")
    return result.status == 0


def _smooth_optimum(a: np.ndarray, b: np.ndarray, name: str, costs: Sequence[float],
                    l2: float, tol: float) -> np.ndarray:
    from scipy.optimize import minimize

    n, d = a.shape
    c = class_weights(b, costs)

    def value_and_gradient(x):
        return objective(a, b, x, name, costs, l2), gradient(a, b, x, name, costs, l2)

    result = minimize(value_and_gradient, np.zeros(d), jac=True, method="L-BFGS-B",
                      options={"maxiter": 1000, "maxcor": 30, "ftol": 0.0, "gtol": tol})
    x = result.x
    # Damped Newton steps on the (generalised) Hessian: L-BFGS alone creeps
    # towards tight gradient tolerances.
    value, g = value_and_gradient(x)
    for _ in range(100):
        if np.max(np.abs(g)) <= tol:
            return x
        z = a @ x
        if name == "logistic":
            p = 0.5 * (1.0 + np.tanh(0.5 * z))
            curvature = c * p * (1.0 - p)
        else:
            curvature = c * (_sign(b) * z < 1.0)
        hessian = (a.T * curvature) @ a / n + l2 * np.eye(d)
        direction = -np.linalg.lstsq(hessian, g, rcond=None)[0]
        if not g @ direction < 0:
            direction = -g
        t = 1.0
        while t > 1e-12:
            trial = x + t * direction
            trial_value, trial_g = value_and_gradient(trial)
            if trial_value <= value + 1e-4 * t * (g @ direction):
                break
            t *= 0.5
        if t <= 1e-12:
            break
        x, value, g = trial, trial_value, trial_g
    if np.max(np.abs(g)) > tol:
        raise RuntimeError(f"{name} optimum: max |gradient| {np.max(np.abs(g)):.2e} "
                           f"did not reach {tol:.0e}")
    return x


def _hinge_optimum(a: np.ndarray, b: np.ndarray, c: np.ndarray, l2: float,
                   tol: float) -> np.ndarray:
    import scipy.sparse
    from scipy.optimize import linprog

    n, d = a.shape
    ya = _sign(b)[:, None] * a
    upper = c / n
    if l2 == 0:
        # min sum c_i t_i / n  subject to  t_i >= 1 - y_i a_i.x,  t_i >= 0.
        constraints = scipy.sparse.hstack([scipy.sparse.csr_matrix(-ya),
                                           -scipy.sparse.identity(n)], format="csr")
        result = linprog(np.concatenate([np.zeros(d), upper]), A_ub=constraints,
                         b_ub=-np.ones(n), bounds=[(None, None)] * d + [(0, None)] * n,
                         method="highs")
        if result.status != 0:
            raise RuntimeError(f"hinge optimum: linear programme failed: {result.message}")
        return result.x[:d]

    # Dual: max D(alpha) = sum alpha - ||ya^T alpha||^2 / (2 l2), 0 <= alpha <= c / n,
    # primal point x = ya^T alpha / l2; F(x) - D(alpha) >= 0 certifies x.
    def gap(alpha: np.ndarray) -> float:
        x = ya.T @ alpha / l2
        primal = float(upper @ np.maximum(0.0, 1.0 - ya @ x)) + 0.5 * l2 * float(x @ x)
        return primal - alpha.sum() + 0.5 * l2 * float(x @ x)

    # Continuation on a Huber-smoothed hinge (quadratic for margins in (1 - mu, 1)),
    # minimised by damped Newton steps; its optimum gives a feasible dual point
    # alpha_i = c_i/n * clip((1 - m_i) / mu, 0, 1). Then an active-set solve: margin
    # below 1 -> alpha = c/n, above -> 0, and y_i a_i.x = 1 for the rest.
    x = np.zeros(d)
    best, best_gap = np.zeros(n), gap(np.zeros(n))
    for mu in 10.0 ** -np.arange(0, 11):
        x = _huber_hinge_minimum(ya, upper, l2, mu, x)
        margins = ya @ x
        slack = np.clip((1.0 - margins) / mu, 0.0, 1.0)
        candidates = [upper * slack]
        on = (slack > 0) & (slack < 1)
        if 0 < on.sum() <= 2 * d:    # generically at most d samples lie on the margin
            alpha = np.where(slack >= 1, upper, 0.0)
            rest = ya.T @ alpha
            system = ya[on] @ ya[on].T / l2
            alpha[on] = np.linalg.lstsq(system, 1.0 - ya[on] @ rest / l2, rcond=None)[0]
            candidates.append(np.clip(alpha, 0.0, upper))
        for alpha in candidates:
            candidate = gap(alpha)
            if candidate < best_gap:
                best, best_gap = alpha, candidate
        if best_gap <= tol:
            return ya.T @ best / l2
    raise RuntimeError(f"hinge optimum: duality gap {best_gap:.2e} did not reach {tol:.0e}")


def _huber_hinge_minimum(ya: np.ndarray, upper: np.ndarray, l2: float, mu: float,
                         x: np.ndarray) -> np.ndarray:
    """Minimise ``sum_i upper_i h(y_i a_i.x) + l2/2 ||x||^2``, ``h`` the hinge smoothed over mu."""

    def value(x: np.ndarray) -> float:
        gap = np.maximum(0.0, 1.0 - ya @ x)
        h = np.where(gap < mu, gap ** 2 / (2 * mu), gap - mu / 2)
        return float(upper @ h) + 0.5 * l2 * float(x @ x)

    current = value(x)
    for _ in range(100):
        gap = 1.0 - ya @ x
        slope = np.clip(gap / mu, 0.0, 1.0)
        g = l2 * x - (upper * slope) @ ya
        if np.max(np.abs(g)) <= 1e-15 * max(1.0, np.max(np.abs(x))):
            break
        curvature = upper * ((gap > 0) & (gap < mu)) / mu
        hessian = (ya.T * curvature) @ ya + l2 * np.eye(len(x))
        direction = -np.linalg.solve(hessian, g)
        t = 1.0
        while t > 1e-12:
            trial = x + t * direction
            trial_value = value(trial)
            if trial_value <= current + 1e-4 * t * (g @ direction):
                break
            t *= 0.5
        if t <= 1e-12:
            break
        x, current = trial, trial_value
    return x


# --- scikit-learn baselines ----------------------------------------------------------


def _normalised(train: Dataset | Normalised,
                test: Dataset | Normalised | None = None) -> tuple[Normalised, Normalised | None]:
    if isinstance(train, Dataset):
        train = normalise(train)
    if isinstance(test, Dataset):
        test = normalise(test, like=train)
    return train, test


def sklearn_model(train: Dataset | Normalised, loss: str | object,
                  costs: Sequence[float] = (1.0, 1.0), l2: float | None = None) -> np.ndarray:
    """Coefficients (normalised units, bias last) fitted by scikit-learn.

    ``logistic``: ``LogisticRegression``; ``hinge``, ``squared_hinge``:
    ``LinearSVC`` with that loss; ``squared``: least squares (``Ridge`` with L2).
    No separate intercept: the bias column is a feature, regularised like the
    others, as in :func:`objective`. Class costs become ``class_weight``.

    Parameters
    ----------
    train : Dataset or Normalised
        A Dataset is normalised first.
    l2 : float, optional
        Fit exactly :func:`objective` with this L2 weight: ``C = 1/(l2 n)``
        (logistic, hinge), ``1/(2 l2 n)`` (squared hinge: LinearSVC has no
        factor 1/2), ``alpha = l2 n`` (ridge). Default: scikit-learn's ``C = 1``
        (no penalty for least squares).
    """
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.svm import LinearSVC

    name = loss_name(loss)
    data, _ = _normalised(train)
    a, b = data.features, data.labels
    n = len(b)
    if l2 is not None and not l2 > 0:
        raise ValueError(f"l2 must be > 0 or None, not {l2}")
    if name == "squared":
        fitted = (LinearRegression(fit_intercept=False) if l2 is None
                  else Ridge(alpha=l2 * n, fit_intercept=False))
        return fitted.fit(a, b, sample_weight=class_weights(b, costs)).coef_.copy()
    y = _sign(b)
    c_pos, c_neg = (float(cost) for cost in costs)
    weight = {1.0: c_pos, -1.0: c_neg}
    if name == "logistic":
        estimator = LogisticRegression(C=1.0 if l2 is None else 1.0 / (l2 * n),
                                       fit_intercept=False, class_weight=weight,
                                       tol=1e-10, max_iter=10000)
    else:
        scale = 1.0 if name == "hinge" else 0.5
        estimator = LinearSVC(loss=name, C=1.0 if l2 is None else scale / (l2 * n),
                              fit_intercept=False, class_weight=weight,
                              dual=True if name == "hinge" else "auto",
                              tol=1e-8, max_iter=100000)
    return estimator.fit(a, y).coef_.ravel().copy()


def sklearn_baseline(train: Dataset | Normalised, test: Dataset | Normalised,
                     loss: str | object, costs: Sequence[float] = (1.0, 1.0),
                     l2: float | None = None) -> float:
    """Test accuracy of :func:`sklearn_model` fitted on ``train``.

    Datasets are normalised with the training split's maps (``normalise(test,
    like=train)``); Normalised data are used as they are. Accuracy as in
    :func:`accuracy`.
    """
    train, test = _normalised(train, test)
    model = sklearn_model(train, loss, costs, l2)
    return accuracy(test.features, test.labels, model)
