"""Float64 references for bit-centering SVRG (HALP) and its baselines.

Five optimisers of the objective of :mod:`ziphalp.host.reference`::

    f(w) = 1/n sum_i f_i(w),   f_i(w) = c_i l(a_i.w, b_i) + l2/2 ||w||^2

for the ``squared`` (least squares) and ``logistic`` (labels +-1) losses, all in
plain NumPy float64, all deterministic for a given ``seed``:

===============  ===========================================================================
:func:`sgd`      ``w <- w - alpha * mean_{i in batch} grad f_i(w)``
:func:`lp_sgd`   the same, with ``w`` kept on a fixed b-bit grid: ``w <- Q(w - ...)``
:func:`svrg`     outer: anchor ``w~ = w``, ``g~ = grad f(w~)``; inner ``T`` steps
                 ``w <- w - alpha (grad f_i(w) - grad f_i(w~) + g~)``
:func:`lp_svrg`  :func:`svrg` with ``w`` quantised to the fixed b-bit grid after each step
:func:`halp`     :func:`svrg` on ``w = w~ + z`` with a wide anchor ``w~`` and a b-bit
                 offset ``z`` on a grid whose scale follows ``||g~||`` (bit centering)
===============  ===========================================================================

The b-bit grid of scale ``delta`` (:func:`quantise`)::

    Q(v) = delta * clamp(floor(v / delta + u), -2^(b-1), 2^(b-1) - 1)

with ``u`` uniform in [0, 1) drawn afresh for every coordinate and step
(stochastic rounding, unbiased inside the clamp) or ``u = 1/2`` (nearest, ties
rounded up).

HALP (one outer step, "epoch")::

    w~ <- w~ + z;  g~ = grad f(w~);  delta = ||g~|| / (mu (2^(b-1) - 1));  z <- 0
    repeat T times, sample i:
        z <- Q_delta(z - alpha (grad f_i(w~ + z) - grad f_i(w~) + g~))

``grad f_i(w~ + z) - grad f_i(w~) = c_i (l'(a_i.w~ + a_i.z) - l'(a_i.w~)) a_i + l2 z``
is computed from the margins ``a_i.w~`` cached during the full-gradient pass
and the narrow dot product ``a_i.z`` (for least squares this is exactly
``c_i (a_i.z) a_i + l2 z``). With ``power_of_two=True`` the scale is rounded
*up* to the next power of two, ``delta = 2^ceil(log2(delta))``, so the grid's
range ``2^(b-1) delta`` never falls below ``||g~|| / mu``. When ``g~`` is exactly
zero the anchor is optimal: the epoch keeps ``z = 0``.

Delayed (stale) HALP, ``delay = tau >= 0``: the gradient of inner step ``u``
(``u = 0 .. T-1``, counted from the start of the epoch) is taken at the offset of
``tau`` steps earlier, as in a pipeline whose update of step ``u`` reaches the dot
product of step ``u + tau + 1``::

    z_{u+1} = Q_delta(z_u - alpha (grad f_i(w~ + z_{u-tau}) - grad f_i(w~) + g~)),
    z_{u-tau} = z_0 = 0 when u - tau < 0

(the first ``tau`` steps of every epoch see the freshly re-centred model; the L2
part of the gradient difference is ``l2 z_{u-tau}`` too). ``tau = 0`` is HALP.

Schedules. One epoch of :func:`sgd` / :func:`lp_sgd` is one pass over a fresh
permutation in batches of ``B`` consecutive samples (the last one possibly
shorter; the batch gradient is the *mean*, so pass ``alpha * B`` to match
:func:`ziphalp.host.reference.sgd`, which sums). One epoch of the SVRG family is
one outer step: a full-gradient pass plus ``T`` inner steps (default ``T = n``)
on single samples ``i`` taken from fresh permutations (``T <= n``: the first
``T`` entries of one permutation; larger ``T``: consecutive permutations).

Randomness. Each function seeds one ``numpy.random.default_rng(seed)``; every
epoch first draws its sample order, then (stochastic rounding only) the
``u`` values of all its steps as one ``(steps, d)`` array of ``random()``.

Defaults (tuned on well-conditioned synthetic problems with features in
[-1, 1], where they give linear convergence to a relative suboptimality of 1e-8
and below, see ``tests/test_halp_reference.py``):

* ``alpha``: ``1 / (4 L)`` with ``L = max_i c_i s ||a_i||^2 + l2`` the largest
  per-sample smoothness constant (``s = 1`` for least squares, ``1/4`` for
  logistic), the classic SVRG step (:func:`default_step`);
* ``T = n`` inner steps per outer step;
* ``mu``: twice the strong-convexity estimate ``s lambda_min(A^T C A / n) + l2``
  at ``w = 0`` (:func:`default_mu`; floored at ``1e-3`` times the matching
  largest eigenvalue). HALP's offset range is about ``||g~|| / mu`` and
  ``||w~ - w*|| <= ||g~|| / lambda_min``: a ``mu`` much above the curvature
  saturates the offset, a ``mu`` far below it gives a grid too coarse for the
  steps (at 4 bits, ``mu (2^(b-1) - 1) alpha`` well below 0.1 diverges).

History. ``history[0]`` is the starting model (epoch 0), ``history[k]`` the
model after epoch ``k``; each entry holds ``f(w)`` and the relative
suboptimality ``(f(w) - f*) / f*`` against ``f*`` given by the caller or
computed with :func:`ziphalp.host.reference.optimum` on the same data.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .reference import class_weights, derivative, loss_name, objective, optimum

__all__ = [
    "HALP_LOSSES",
    "Epoch",
    "Result",
    "default_mu",
    "default_step",
    "halp",
    "halp_scale",
    "lp_sgd",
    "lp_svrg",
    "quantise",
    "sgd",
    "svrg",
]

#: Losses the references handle (smooth ones with a per-sample gradient).
HALP_LOSSES = ("squared", "logistic")



@dataclass(frozen=True)
class Epoch:
    """The model after one epoch (0 = the starting model).

    Attributes
    ----------
    epoch : int
    objective : float
        ``f(w)`` on the data the optimiser was given (costs and L2 included).
    suboptimality : float
        ``(f(w) - f*) / f*``.
    """

    epoch: int
    objective: float
    suboptimality: float


@dataclass(frozen=True)
class Result:
    """Outcome of an optimiser.

    Attributes
    ----------
    model : ndarray, shape (d,)
        Final model (``w~ + z`` for :func:`halp`).
    history : list of Epoch
        ``history[k]`` after epoch ``k``; ``history[0]`` is the starting model.
    f_star : float
        The ``f*`` the suboptimality refers to.
    scales : list of float
        Grid scale ``delta`` of each epoch (low-precision methods; empty otherwise).
    saturations : int
        Number of coordinates the clamp changed, over the whole run.
    """

    model: np.ndarray
    history: list[Epoch]
    f_star: float
    scales: list[float] = field(default_factory=list)
    saturations: int = 0

    def epochs_to(self, target: float) -> int | None:
        """First epoch whose relative suboptimality is ``<= target``, or None."""
        for entry in self.history:
            if entry.suboptimality <= target:
                return entry.epoch
        return None


# --- quantisation --------------------------------------------------------------------


def quantise(values: np.ndarray, scale: float, bits: int,
             u: np.ndarray | float | None = None,
             rng: np.random.Generator | None = None) -> np.ndarray:
    """``scale * clamp(floor(values / scale + u), -2^(bits-1), 2^(bits-1) - 1)``.

    Parameters
    ----------
    values : ndarray
    scale : float
        Grid step ``delta``, > 0.
    bits : int
        Signed code width ``b``, >= 2.
    u : ndarray or float, optional
        Rounding offsets in [0, 1) (broadcast against ``values``). Default: drawn
        with ``rng.random`` if ``rng`` is given (stochastic rounding, unbiased
        inside the clamp), else 1/2 (nearest, ties up).
    rng : numpy.random.Generator, optional

    Returns
    -------
    ndarray
        Same shape as ``values``, a multiple of ``scale`` inside
        ``[-2^(bits-1), 2^(bits-1) - 1] * scale``.
    """
    v = np.asarray(values, np.float64)
    if not scale > 0 or bits < 2:
        raise ValueError("need scale > 0 and bits >= 2")
    if u is None:
        u = rng.random(v.shape) if rng is not None else 0.5
    top = 2.0 ** (bits - 1)
    return scale * np.clip(np.floor(v / scale + u), -top, top - 1.0)


def _quantise_count(v: np.ndarray, scale: float, top: float,
                    u: np.ndarray | float) -> tuple[np.ndarray, int]:
    codes = np.floor(v / scale + u)
    clipped = np.clip(codes, -top, top - 1.0)
    return scale * clipped, int(np.count_nonzero(clipped != codes))


def halp_scale(full_gradient: np.ndarray, mu: float, bits: int,
               power_of_two: bool = False) -> float:
    """HALP's grid scale ``delta = ||g~|| / (mu (2^(bits-1) - 1))``.

    With ``power_of_two`` it is rounded up: ``2^ceil(log2(delta))``. Returns 0
    when ``g~`` is zero.
    """
    if not mu > 0 or bits < 2:
        raise ValueError("need mu > 0 and bits >= 2")
    norm = float(np.linalg.norm(full_gradient))
    if norm == 0.0:
        return 0.0
    delta = norm / (mu * (2.0 ** (bits - 1) - 1.0))
    if power_of_two:
        exponent = math.ceil(math.log2(delta))
        delta = 2.0 ** exponent
    return delta


# --- the problem -----------------------------------------------------------------------


class _Problem:
    """Data, per-sample gradients and the suboptimality yardstick."""

    def __init__(self, features, labels, loss, costs, l2, f_star):
        self.loss = loss_name(loss)
        if self.loss not in HALP_LOSSES:
            raise ValueError(f"loss {self.loss!r} not supported: expected one of "
                             f"{', '.join(HALP_LOSSES)}")
        self.a = np.asarray(features, np.float64)
        self.b = np.asarray(labels, np.float64)
        if self.a.ndim != 2 or self.b.shape != (self.a.shape[0],):
            raise ValueError("features must be (n, d) and labels (n,)")
        if l2 < 0:
            raise ValueError("need l2 >= 0")
        self.n, self.d = self.a.shape
        self.costs = tuple(float(c) for c in costs)
        self.l2 = float(l2)
        self.c = class_weights(self.b, self.costs)
        if f_star is None:
            f_star = optimum(self.a, self.b, self.loss, self.costs, self.l2)[1]
        self.f_star = float(f_star)

    def smoothness(self, batch: int = 1) -> float:
        """``L``: of one sample (``batch`` 1), or of a mean over ``batch`` samples,
        ``L_full + (L_1 - L_full) / batch`` with ``L_full`` that of the whole mean."""
        s = 1.0 if self.loss == "squared" else 0.25
        single = float(np.max(self.c * s * np.einsum("ij,ij->i", self.a, self.a)))
        if batch > 1:
            full = s * float(np.linalg.eigvalsh((self.a.T * self.c) @ self.a / self.n)[-1])
            single = full + (single - full) / batch
        return single + self.l2

    def default_step(self, batch: int = 1) -> float:
        """``alpha = 1 / (4 L)`` (see :func:`default_step`)."""
        return 0.25 / self.smoothness(batch)

    def default_mu(self) -> float:
        """``mu = 2 x`` the strong-convexity estimate (see :func:`default_mu`)."""
        return 2.0 * self.curvature()

    def curvature(self) -> float:
        s = 1.0 if self.loss == "squared" else 0.25
        eig = np.linalg.eigvalsh((self.a.T * self.c) @ self.a / self.n)
        return s * max(float(eig[0]), 1e-3 * float(eig[-1])) + self.l2

    def objective(self, w: np.ndarray) -> float:
        return objective(self.a, self.b, w, self.loss, self.costs, self.l2)

    def entry(self, epoch: int, w: np.ndarray) -> Epoch:
        f = self.objective(w)
        return Epoch(epoch, f, (f - self.f_star) / self.f_star)

    def full_gradient(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(grad f(w), a @ w)``."""
        margins = self.a @ w
        weighted = self.c * derivative(margins, self.b, self.loss)
        return weighted @ self.a / self.n + self.l2 * w, margins

    def error(self, margin: float, i: int) -> float:
        """``c_i l'(margin, b_i)`` for one sample."""
        if self.loss == "squared":
            return self.c[i] * (margin - self.b[i])
        p = 0.5 * (1.0 + math.tanh(0.5 * margin))
        return self.c[i] * (p - (1.0 if self.b[i] > 0 else 0.0))

    def order(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        rounds = -(-steps // self.n)
        return np.concatenate([rng.permutation(self.n) for _ in range(rounds)])[:steps]


def _check(alpha, epochs, batch=1):
    if not alpha > 0 or epochs < 0 or batch < 1:
        raise ValueError("need alpha > 0, epochs >= 0 and batch >= 1")


def _start(problem: _Problem, model) -> np.ndarray:
    if model is None:
        return np.zeros(problem.d)
    w = np.array(model, np.float64)
    if w.shape != (problem.d,):
        raise ValueError(f"model must have shape ({problem.d},)")
    return w


def default_step(features: np.ndarray, labels: np.ndarray, loss: str | object,
                 costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0, batch: int = 1) -> float:
    """Default step ``alpha = 1 / (4 L)``, ``L = max_i c_i s ||a_i||^2 + l2`` (module
    docstring); for steps on the mean of ``batch`` samples ``L = L_full + (L - L_full) /
    batch`` with ``L_full = s lambda_max(A^T C A / n) + l2``."""
    return _Problem(features, labels, loss, costs, l2, f_star=1.0).default_step(batch)


def default_mu(features: np.ndarray, labels: np.ndarray, loss: str | object,
               costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0) -> float:
    """Default HALP ``mu``: ``2 (s lambda_min(A^T C A / n) + l2)`` (module docstring).

    ``s = 1`` for least squares, ``1/4`` for logistic (its curvature at
    ``w = 0``); ``lambda_min`` is floored at ``1e-3 lambda_max``.
    """
    return _Problem(features, labels, loss, costs, l2, f_star=1.0).default_mu()


# --- SGD family --------------------------------------------------------------------------


def _start_on_grid(problem: _Problem, model, scale, bits):
    """The starting model, rounded to nearest on the fixed grid when ``scale`` is given;
    also whether the grid is on and its clamp ``2**(bits - 1)``."""
    w = _start(problem, model)
    if scale is None:
        return w, False, 0.0
    if not scale > 0 or bits < 2:
        raise ValueError("need scale > 0 and bits >= 2")
    top = 2.0 ** (bits - 1)
    w, _ = _quantise_count(w, scale, top, 0.5)
    return w, True, top


def _sgd(problem: _Problem, alpha, epochs, batch, seed, model, scale, bits, stochastic):
    _check(alpha, epochs, batch)
    w, low, top = _start_on_grid(problem, model, scale, bits)
    rng = np.random.default_rng(seed)
    a, b, c, l2, name = problem.a, problem.b, problem.c, problem.l2, problem.loss
    history = [problem.entry(0, w)]
    saturations = 0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(problem.n)
        starts = range(0, problem.n, batch)
        u = rng.random((len(starts), problem.d)) if low and stochastic else None
        for k, start in enumerate(starts):
            rows = order[start:start + batch]
            sigma = c[rows] * derivative(a[rows] @ w, b[rows], name)
            w = w - alpha * (sigma @ a[rows] / len(rows) + l2 * w)
            if low:
                w, hits = _quantise_count(w, scale, top, u[k] if u is not None else 0.5)
                saturations += hits
        history.append(problem.entry(epoch, w))
    return Result(w, history, problem.f_star, [scale] * epochs if low else [], saturations)


def sgd(features: np.ndarray, labels: np.ndarray, loss: str | object = "squared",
        alpha: float | None = None, epochs: int = 30, batch: int = 1, seed: int = 0,
        costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0,
        f_star: float | None = None, model: np.ndarray | None = None) -> Result:
    """Plain SGD in float64: ``w <- w - alpha * mean_{i in batch} grad f_i(w)``.

    Parameters
    ----------
    features : ndarray, shape (n, d)
        Used as given (pass quantised features to train on them).
    labels : ndarray, shape (n,)
        Real targets (``squared``) or +-1 (``logistic``).
    loss : {"squared", "logistic"}
    alpha : float, optional
        Step size; default :func:`default_step`.
    epochs : int
        Passes over the data (a fresh permutation each).
    batch : int
        Samples per step ``B``; the batch gradient is the mean.
    seed : int
    costs : (float, float)
        Class costs ``(c_pos, c_neg)``.
    l2 : float
        L2 weight.
    f_star : float, optional
        Optimal objective; default from :func:`ziphalp.host.reference.optimum`.
    model : ndarray, shape (d,), optional
        Starting model; default zeros.

    Returns
    -------
    Result
    """
    problem = _Problem(features, labels, loss, costs, l2, f_star)
    alpha = problem.default_step() if alpha is None else alpha
    return _sgd(problem, alpha, epochs, batch, seed, model, None, 0, False)


def lp_sgd(features: np.ndarray, labels: np.ndarray, loss: str | object = "squared",
           scale: float = 2.0 ** -4, bits: int = 8, alpha: float | None = None,
           epochs: int = 30, batch: int = 1, seed: int = 0, stochastic: bool = True,
           costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0,
           f_star: float | None = None, model: np.ndarray | None = None) -> Result:
    """Low-precision SGD: :func:`sgd` with the model on a fixed b-bit grid.

    ``w <- Q(w - alpha * mean_{i in batch} grad f_i(w))`` with
    ``Q = quantise(., scale, bits)``; the starting model is rounded to nearest.

    Parameters
    ----------
    scale : float
        Fixed grid step ``delta`` (the range is ``[-2^(b-1), 2^(b-1) - 1] * delta``).
    bits : int
        Model width ``b``.
    stochastic : bool
        Stochastic rounding (default) or nearest.
    features, labels, loss, alpha, epochs, batch, seed, costs, l2, f_star, model
        As in :func:`sgd`.

    Returns
    -------
    Result
    """
    problem = _Problem(features, labels, loss, costs, l2, f_star)
    alpha = problem.default_step() if alpha is None else alpha
    return _sgd(problem, alpha, epochs, batch, seed, model, scale, bits, stochastic)


# --- SVRG family -------------------------------------------------------------------------


def _svrg(problem: _Problem, alpha, epochs, inner, seed, model, scale, bits, stochastic):
    _check(alpha, epochs)
    steps = problem.n if inner is None else int(inner)
    if steps < 1:
        raise ValueError("need at least one inner step")
    w, low, top = _start_on_grid(problem, model, scale, bits)
    rng = np.random.default_rng(seed)
    a, l2 = problem.a, problem.l2
    history = [problem.entry(0, w)]
    saturations = 0
    for epoch in range(1, epochs + 1):
        anchor = w
        g, margins = problem.full_gradient(anchor)
        order = problem.order(rng, steps)
        u = rng.random((steps, problem.d)) if low and stochastic else None
        for k, i in enumerate(order):
            ai = a[i]
            e = problem.error(float(ai @ w), i) - problem.error(margins[i], i)
            w = w - alpha * (e * ai + l2 * (w - anchor) + g)
            if low:
                w, hits = _quantise_count(w, scale, top, u[k] if u is not None else 0.5)
                saturations += hits
        history.append(problem.entry(epoch, w))
    return Result(w, history, problem.f_star, [scale] * epochs if low else [], saturations)


def svrg(features: np.ndarray, labels: np.ndarray, loss: str | object = "squared",
         alpha: float | None = None, epochs: int = 30, inner: int | None = None,
         seed: int = 0, costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0,
         f_star: float | None = None, model: np.ndarray | None = None) -> Result:
    """Float64 SVRG (anchor = the last inner iterate).

    Each epoch: ``w~ = w``, ``g~ = grad f(w~)``, then ``inner`` steps
    ``w <- w - alpha (grad f_i(w) - grad f_i(w~) + g~)``.

    Parameters
    ----------
    features : ndarray, shape (n, d)
        Used as given (pass quantised features to train on them).
    labels : ndarray, shape (n,)
    loss : {"squared", "logistic"}
    alpha : float, optional
        Step size; default :func:`default_step`.
    epochs : int
        Outer steps.
    inner : int, optional
        Inner steps ``T`` per outer step; default ``n``.
    seed : int
    costs : (float, float)
    l2 : float
    f_star : float, optional
        Optimal objective; default from :func:`ziphalp.host.reference.optimum`.
    model : ndarray, shape (d,), optional
        Starting model; default zeros.

    Returns
    -------
    Result
    """
    problem = _Problem(features, labels, loss, costs, l2, f_star)
    alpha = problem.default_step() if alpha is None else alpha
    return _svrg(problem, alpha, epochs, inner, seed, model, None, 0, False)


def lp_svrg(features: np.ndarray, labels: np.ndarray, loss: str | object = "squared",
            scale: float = 2.0 ** -4, bits: int = 8, alpha: float | None = None,
            epochs: int = 30, inner: int | None = None, seed: int = 0,
            stochastic: bool = True, costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0,
            f_star: float | None = None, model: np.ndarray | None = None) -> Result:
    """Low-precision SVRG: :func:`svrg` with ``w`` on a fixed b-bit grid.

    ``w <- Q(w - alpha (grad f_i(w) - grad f_i(w~) + g~))`` with
    ``Q = quantise(., scale, bits)``; the anchor is the (quantised) last iterate,
    ``g~`` is exact; the starting model is rounded to nearest.

    Parameters
    ----------
    scale : float
        Fixed grid step ``delta``.
    bits : int
        Model width ``b``.
    stochastic : bool
        Stochastic rounding (default) or nearest.
    features, labels, loss, alpha, epochs, inner, seed, costs, l2, f_star, model
        As in :func:`svrg`.

    Returns
    -------
    Result
    """
    problem = _Problem(features, labels, loss, costs, l2, f_star)
    alpha = problem.default_step() if alpha is None else alpha
    return _svrg(problem, alpha, epochs, inner, seed, model, scale, bits, stochastic)


def halp(features: np.ndarray, labels: np.ndarray, loss: str | object = "squared",
         bits: int = 8, mu: float | None = None, alpha: float | None = None,
         epochs: int = 30, inner: int | None = None, seed: int = 0,
         stochastic: bool = True, power_of_two: bool = False,
         costs: Sequence[float] = (1.0, 1.0), l2: float = 0.0,
         f_star: float | None = None, model: np.ndarray | None = None,
         delay: int = 0) -> Result:
    """Bit-centering SVRG (HALP): wide anchor ``w~`` plus a b-bit offset ``z``.

    Each epoch: ``w~ <- w~ + z``; ``g~ = grad f(w~)`` (with the margins
    ``a_i.w~`` cached); ``delta = ||g~|| / (mu (2^(b-1) - 1))``, rounded up to
    ``2^ceil(log2(delta))`` if ``power_of_two``; ``z <- 0``; then ``inner`` steps
    ``z <- Q_delta(z - alpha (grad f_i(w~ + z) - grad f_i(w~) + g~))`` with
    ``Q_delta = quantise(., delta, bits)`` (module docstring). The anchor and
    all arithmetic are float64; only ``z`` is on the grid. An epoch with
    ``g~ = 0`` keeps ``z = 0``.

    With ``delay = tau > 0`` the inner step ``u`` (from 0 in each epoch) is

        ``z_{u+1} = Q_delta(z_u - alpha (grad f_i(w~ + z_{u-tau}) - grad f_i(w~) + g~))``

    with ``z_{u-tau} = z_0 = 0`` for ``u < tau``: the gradient sees the offset of
    ``tau`` steps earlier (a pipelined inner loop), the update applies to the
    current one. ``delay = 0`` is the plain HALP step above, with the same results.

    Parameters
    ----------
    features : ndarray, shape (n, d)
        Used as given (pass quantised features to train on them).
    labels : ndarray, shape (n,)
    loss : {"squared", "logistic"}
    bits : int
        Offset width ``b``, >= 2.
    mu : float, optional
        Scale parameter, > 0: the offset's range is about ``||g~|| / mu``;
        default :func:`default_mu`.
    alpha : float, optional
        Step size; default :func:`default_step`.
    epochs : int
        Outer steps.
    inner : int, optional
        Inner steps ``T`` per outer step; default ``n``.
    seed : int
    stochastic : bool
        Stochastic rounding (default) or nearest (``u = 1/2``).
    power_of_two : bool
        Round ``delta`` up to a power of two (as a shift in hardware).
    costs : (float, float)
    l2 : float
    f_star : float, optional
        Optimal objective; default from :func:`ziphalp.host.reference.optimum`.
    model : ndarray, shape (d,), optional
        Starting anchor; default zeros.
    delay : int
        Staleness ``tau >= 0`` of the offset the inner gradients see, in inner
        steps; default 0 (HALP).

    Returns
    -------
    Result
        ``scales`` holds each epoch's ``delta``.
    """
    problem = _Problem(features, labels, loss, costs, l2, f_star)
    alpha = problem.default_step() if alpha is None else alpha
    mu = problem.default_mu() if mu is None else mu
    _check(alpha, epochs)
    if not mu > 0 or bits < 2:
        raise ValueError("need mu > 0 and bits >= 2")
    if isinstance(delay, bool) or int(delay) != delay or delay < 0:
        raise ValueError(f"need an integer delay >= 0, not {delay!r}")
    delay = int(delay)
    steps = problem.n if inner is None else int(inner)
    if steps < 1:
        raise ValueError("need at least one inner step")
    anchor = _start(problem, model)
    z = np.zeros(problem.d)
    top = 2.0 ** (bits - 1)
    rng = np.random.default_rng(seed)
    a, l2 = problem.a, problem.l2
    history = [problem.entry(0, anchor)]
    scales = []
    saturations = 0
    for epoch in range(1, epochs + 1):
        anchor = anchor + z
        z = np.zeros(problem.d)
        g, margins = problem.full_gradient(anchor)
        delta = halp_scale(g, mu, bits, power_of_two)
        scales.append(delta)
        order = problem.order(rng, steps)
        u = rng.random((steps, problem.d)) if stochastic else None
        # past[0] is z_{max(0, u - delay)}: the offsets of the last delay + 1 steps
        past = deque([z], maxlen=delay + 1)
        if delta > 0:
            for k, i in enumerate(order):
                ai = a[i]
                seen = past[0] if delay else z
                e = problem.error(margins[i] + float(ai @ seen), i) - problem.error(margins[i], i)
                v = z - alpha * (e * ai + l2 * seen + g)
                z, hits = _quantise_count(v, delta, top, u[k] if u is not None else 0.5)
                saturations += hits
                past.append(z)
        history.append(problem.entry(epoch, anchor + z))
    return Result(anchor + z, history, problem.f_star, scales, saturations)
