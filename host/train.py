"""The training loop and the Python API: :func:`train`.

One epoch: quantise the features afresh onto the level table (ZipML: stochastic
rounding with one or two samples per value, or nearest rounding), shuffle, pack,
stream the frames to the board (the last one flushes the mini-batch), read the
model back and the engine's cycle counter, and compute the float64 training
objective (and, for classification, the accuracy) of the model on the
normalised data. The loop is the same for the simulated board and a real one:
it only sees a port URL.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from ziphalp.hw import protocol
from ziphalp.hw.params import (
    BOARD_PARAMS,
    COST_BITS,
    COST_FRAC,
    L2_SHIFT_MAX,
    SHIFT_MAX,
    EngineParams,
    Loss,
)
from ziphalp.hw.protocol import StatusFlags

from . import quantize, reference
from .data import DataError, Dataset, Normalised, load, normalise
from .driver import Board, BoardError
from .levels import grid_levels, level_words, optimal_levels, quantisation_variance, uniform_levels

__all__ = [
    "DEFAULTS",
    "LEVEL_KINDS",
    "LOSSES",
    "SAMPLINGS",
    "EpochRecord",
    "SaturationWarning",
    "SettingsError",
    "TrainResult",
    "train",
]

#: Default settings: on diabetes they reach a loss within 2% of the optimum.
DEFAULTS = {"epochs": 30, "step": 2.0 ** -9, "batch": 8, "seed": 0, "bits": 4,
            "sampling": "double", "levels": "uniform", "loss": "squared"}
SAMPLINGS = quantize.SAMPLINGS
LEVEL_KINDS = ("uniform", "optimal")
#: Loss names (``-`` spelling), in the order of the engine's ``Loss`` codes.
LOSSES = tuple(name.replace("_", "-") for name in reference.LOSSES)


class SettingsError(ValueError):
    """A training setting is out of range (board, port, step, batch, epochs, ...)."""


class SaturationWarning(UserWarning):
    """The engine saturated a model update or a scaled loss derivative."""


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did: the objective after it and what it cost.

    ``loss`` is the float64 training objective (the loss of the run, with its
    class costs and L2 term) of the model read back; ``accuracy`` is None for
    regression.
    """

    epoch: int
    loss: float
    accuracy: float | None
    cycles: int
    seconds: float
    samples: int
    overflow: bool
    clipped: bool


@dataclass
class TrainResult:
    """The outcome of :func:`train`.

    Attributes
    ----------
    dataset : Dataset
        The data in original units.
    data : Normalised
        The normalised data and the affine maps.
    identity : protocol.Identity
        What the board reported.
    params : EngineParams
        The engine parameters derived from ``identity``.
    board, url : str
        Board kind and the port URL used.
    settings : dict
        epochs, step (the engine's), shift, batch, seed, bits, sampling, levels,
        loss, costs (as the engine holds them), l2 (effective) and l2_shift,
        shuffle, halve_every (the step schedule; step, shift and l2_shift are
        those of the first epoch).
    levels : ndarray of float64, shape (2**bits + 1,)
        The level table the board decodes (on the ``LEVEL`` grid).
    variance : float
        Mean quantisation variance of the features on those levels (per value).
    words : ndarray of int64, shape (d + 1,)
        Final raw model words, bias last.
    coefficients : ndarray, shape (d + 1,)
        Final model in normalised units, bias last.
    optimum : ndarray or None
        Float64 minimiser of the same objective, in normalised units.
    optimum_loss : float or None
    history : list of EpochRecord
    """

    dataset: Dataset
    data: Normalised
    identity: protocol.Identity
    params: EngineParams
    board: str
    url: str
    settings: dict
    levels: np.ndarray
    variance: float
    words: np.ndarray
    coefficients: np.ndarray
    optimum: np.ndarray | None
    optimum_loss: float | None
    history: list[EpochRecord] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Training objective of the final model."""
        return self.history[-1].loss if self.history else self.objective(self.coefficients)

    def objective(self, beta: np.ndarray) -> float:
        """The run's float64 training objective of normalised coefficients ``beta``."""
        s = self.settings
        return reference.objective(self.data.features, self.data.labels, beta,
                                   s["loss"], s["costs"], s["l2"])

    def original_units(self) -> tuple[np.ndarray, float]:
        """Final coefficients and intercept in the user's original units."""
        return self.data.to_original(self.coefficients)


@contextlib.contextmanager
def _port_url(board: str, port: str | None) -> Iterator[str]:
    """The URL of the board: ``port``, or that of a simulated board started here."""
    if port is not None:
        yield port
        return
    if not board.startswith("sim"):
        raise SettingsError(f"--board {board} needs --port (the board's serial port)")
    try:
        from ziphalp.sim.board import SimBoardError, simulated_board
    except ImportError as e:
        raise BoardError(f"the simulated board is not available: {e}") from None
    try:
        sim = simulated_board(BOARD_PARAMS[board])
    except ImportError as e:
        raise BoardError(f"the simulated board is not available: {e}") from None
    try:
        with sim:
            yield sim.url
    except SimBoardError as e:
        raise BoardError(f"simulated board: {e}") from None


def _check_settings(board: str, epochs: int, batch: int, step: float, bits: int,
                    sampling: str, levels: str, loss: str) -> int:
    if board not in BOARD_PARAMS:
        raise SettingsError(f"unknown board {board!r}; choose from {', '.join(BOARD_PARAMS)}")
    if epochs < 1:
        raise SettingsError(f"epochs must be at least 1, not {epochs}")
    if batch < 1:
        raise SettingsError(f"batch must be at least 1, not {batch}")
    if not 1 <= bits <= quantize.MAX_K:
        raise SettingsError(f"bits must be 1..{quantize.MAX_K}, not {bits}")
    for name, value, choices in (("sampling", sampling, SAMPLINGS),
                                 ("levels", levels, LEVEL_KINDS), ("loss", loss, LOSSES)):
        if value not in choices:
            raise SettingsError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")
    try:
        return quantize.step_to_shift(step)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def _cost_word(name: str, cost: float) -> int:
    """A class cost as the engine holds it (``COST_FRAC`` fraction bits), nearest."""
    top = ((1 << COST_BITS) - 1) / (1 << COST_FRAC)
    if not (math.isfinite(cost) and 0 <= cost <= top):
        raise SettingsError(f"{name} must be 0..{top:g}, not {cost:g}")
    return int(round(cost * (1 << COST_FRAC)))


def _l2_shift(l2: float, step: float, batch: int) -> int:
    """The engine's decay shift for L2 strength ``l2``: ``2**-shift ~ step * batch * l2``."""
    if l2 == 0:
        return 0
    if not (math.isfinite(l2) and l2 > 0):
        raise SettingsError(f"l2 must be a positive number or 0, not {l2:g}")
    shift = round(-math.log2(step * batch * l2))
    if not 1 <= shift <= L2_SHIFT_MAX:
        raise SettingsError(f"l2 {l2:g} with step {step:g} and batch {batch} needs a decay of "
                            f"2**-{shift} per batch; the engine decays by 2**-1 .. "
                            f"2**-{L2_SHIFT_MAX}")
    return shift


def _check_fit(name: str, d: int, batch: int, bits: int, params: EngineParams,
               where: str) -> None:
    if d + 1 > params.max_features:
        raise DataError(f"{name} has {d} features, {d + 1} with the bias; the engine on "
                        f"{where} takes at most {params.max_features}")
    if batch > params.max_batch:
        raise SettingsError(f"batch {batch} is larger than the engine's maximum "
                            f"{params.max_batch} on {where}")
    if bits > params.max_k:
        raise SettingsError(f"bits {bits} is more than the engine's maximum {params.max_k} "
                            f"on {where}")


def train(dataset: str | Path | Dataset, *, board: str = "sim", port: str | None = None,
          epochs: int = DEFAULTS["epochs"], step: float = DEFAULTS["step"],
          batch: int = DEFAULTS["batch"], seed: int = DEFAULTS["seed"],
          label: str | int | None = None, bits: int = DEFAULTS["bits"],
          sampling: str = DEFAULTS["sampling"], levels: str = DEFAULTS["levels"],
          loss: str = DEFAULTS["loss"], costs: tuple[float, float] = (1.0, 1.0),
          l2: float = 0.0, shuffle: bool = True, progress: bool = True, timeout: float = 5.0,
          on_epoch: Callable[[TrainResult, EpochRecord], None] | None = None,
          halve_every: int = 0) -> TrainResult:
    """Train a linear model on a board.

    Parameters
    ----------
    dataset : str, Path or Dataset
        A bundled name, a CSV/LIBSVM path (see :func:`ziphalp.host.data.load`) or
        a loaded data set.
    board : str
        Board kind (a key of ``BOARD_PARAMS``). ``"sim"`` (and any ``"sim-..."``)
        starts a simulated board unless ``port`` is given.
    port : str, optional
        Serial port or pyserial URL of the board; required for real boards.
    epochs : int
        Passes over the data.
    step : float
        Step size; the engine uses the nearest power of two ``2**-shift``.
    batch : int
        Mini-batch size (gradients are summed over a batch).
    seed : int
        Seed of the stochastic rounding draws and the shuffling.
    label : str or int, optional
        CSV label column (name or index); default the last column.
    bits : int
        Precision k of the features: ``2**k`` intervals between ``2**k + 1`` levels.
    sampling : {"double", "single", "nearest"}
        Two independent stochastic samples per value (unbiased gradient), one
        (biased: a hidden ridge term), or deterministic rounding to the nearest level.
    levels : {"uniform", "optimal"}
        Uniform levels over [-1, 1], or levels minimising the data's total
        quantisation variance (dynamic programming over the ``LEVEL`` grid).
    loss : {"squared", "logistic", "hinge", "squared-hinge"}
        The classification losses need labels +1/-1 (a classification data set).
    costs : (float, float)
        Costs of the positive and the negative class (multiples of 1/64 up to 3.98).
    l2 : float
        L2 strength lambda of ``lambda/2 ||w||^2``, applied as a decay of the
        nearest power of two ``2**-l2_shift ~ step * batch * lambda`` per batch.
    shuffle : bool
        Visit the samples in a fresh random order each epoch.
    progress : bool
        Show a progress bar on stderr.
    timeout : float
        Seconds to wait for each reply of the board.
    on_epoch : callable, optional
        Called with the result so far and each :class:`EpochRecord` as soon as
        the epoch ends.
    halve_every : int
        Step schedule: halve the step (one more step shift, reconfigured between
        epochs; a nonzero L2 decay shift follows it, so the L2 strength stays the
        same) after every ``halve_every`` epochs, so epoch ``e`` (1-based) runs at
        ``step * 2**-((e - 1) // halve_every)``, down to the engine's smallest step
        ``2**-SHIFT_MAX``. 0 (the default) keeps the step constant.

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError, SettingsError, BoardError
    """
    shift = _check_settings(board, epochs, batch, step, bits, sampling, levels, loss)
    if isinstance(halve_every, bool) or not isinstance(halve_every, int) or halve_every < 0:
        raise SettingsError(f"halve_every must be an integer >= 0, not {halve_every!r}")
    cost_words = (_cost_word("the positive class cost", costs[0]),
                  _cost_word("the negative class cost", costs[1]))
    step_used = quantize.shift_to_step(shift)
    l2_shift = _l2_shift(l2, step_used, batch)
    if not isinstance(dataset, Dataset):
        dataset = load(dataset, label)
    if loss != "squared" and dataset.task != "classification":
        raise DataError(f"{dataset.name} is a regression data set; the {loss} loss needs "
                        "labels +1/-1 (a classification data set)")
    _check_fit(dataset.name, dataset.d, batch, bits, BOARD_PARAMS[board], f"the {board} board")
    data = normalise(dataset)
    features = data.features.shape[1]
    if levels == "optimal":
        table = grid_levels(optimal_levels(data.features.ravel(), bits))
    else:
        table = grid_levels(uniform_levels(bits))
    settings = {"epochs": epochs, "step": step_used, "shift": shift, "batch": batch,
                "seed": seed, "shuffle": shuffle, "bits": bits, "sampling": sampling,
                "levels": levels, "loss": loss.replace("-", "_"),
                "costs": tuple(w / (1 << COST_FRAC) for w in cost_words),
                "l2": 2.0 ** -l2_shift / (step_used * batch) if l2_shift else 0.0,
                "l2_shift": l2_shift, "halve_every": halve_every}
    try:
        optimum = reference.optimum(data.features, data.labels, settings["loss"],
                                    settings["costs"], settings["l2"])
    except (ValueError, RuntimeError):
        optimum = None          # e.g. logistic loss on separable data: no finite optimum
    labels = quantize.quantize_labels(data.labels)
    rng = np.random.default_rng(seed)

    with _port_url(board, port) as url, Board(url, timeout=timeout) as link:
        identity = link.identify()
        params = link.params
        _check_fit(dataset.name, dataset.d, batch, bits, params, url)
        link.load_levels(level_words(table))

        def configure(halvings: int) -> None:
            link.configure(features, batch, min(shift + halvings, SHIFT_MAX), k=bits,
                           double=sampling == "double", loss=Loss(LOSSES.index(loss)),
                           l2_shift=min(l2_shift + halvings, L2_SHIFT_MAX) if l2_shift else 0,
                           cost_pos=cost_words[0], cost_neg=cost_words[1])

        configure(0)
        link.load_model(0, np.zeros(features, np.int64))
        link.status(clear=True)
        result = TrainResult(dataset, data, identity, params, board, url, settings, table,
                             quantisation_variance(data.features.ravel(), table),
                             np.zeros(features, np.int64), np.zeros(features),
                             None if optimum is None else optimum[0],
                             None if optimum is None else float(optimum[1]))
        with tqdm(total=epochs * dataset.n, unit="sample", disable=not progress,
                  desc="training", leave=False) as bar:
            for epoch in range(1, epochs + 1):
                if halve_every and epoch > 1 and (epoch - 1) % halve_every == 0:
                    configure((epoch - 1) // halve_every)
                order = rng.permutation(dataset.n) if shuffle else np.arange(dataset.n)
                record = _epoch(link, result, epoch, order, labels, rng, bar)
                bar.set_postfix(loss=f"{record.loss:.5g}")
                _warn(record, dataset.n, first=not any(
                    r.overflow or r.clipped for r in result.history[:-1]))
                if on_epoch is not None:
                    on_epoch(result, record)
    return result


def _epoch(link: Board, result: TrainResult, epoch: int, order: np.ndarray,
           labels: np.ndarray, rng: np.random.Generator, bar: tqdm) -> EpochRecord:
    """Stream one epoch in ``order``, read the model back, append to the history."""
    start = time.perf_counter()
    params, data, s = result.params, result.data, result.settings
    features = data.features.shape[1]
    double = s["sampling"] == "double"
    stream = quantize.encode_epoch(data.features[order], labels[order], result.levels,
                                   s["bits"], s["sampling"], rng, params)
    chunks = quantize.frames(stream, params, features, s["bits"], double)
    size = quantize.sample_bytes(params, features, s["bits"], double)
    for i, chunk in enumerate(chunks):
        link.stream(chunk, flush=i == len(chunks) - 1)
        bar.update(len(chunk) // size)
    words = link.read_model(0, features)
    counters = link.status(clear=True)
    seconds = time.perf_counter() - start
    beta = quantize.words_to_coefficients(words, params)
    accuracy = (reference.accuracy(data.features, data.labels, beta)
                if data.task == "classification" else None)
    record = EpochRecord(epoch, result.objective(beta), accuracy, counters.cycles, seconds,
                         counters.samples, bool(counters.flags & StatusFlags.OVERFLOW),
                         bool(counters.flags & StatusFlags.CLIPPED))
    result.words, result.coefficients = words, beta
    result.history.append(record)
    return record


def _warn(record: EpochRecord, n: int, first: bool) -> None:
    if (record.overflow or record.clipped) and first:
        what = "model update" if record.overflow else "scaled loss derivative"
        warnings.warn(f"epoch {record.epoch}: the engine saturated a {what}; "
                      "try a smaller --step", SaturationWarning, stacklevel=3)
    if record.samples != n:
        warnings.warn(f"epoch {record.epoch}: the board counted {record.samples} samples, "
                      f"{n} were sent", RuntimeWarning, stacklevel=3)
