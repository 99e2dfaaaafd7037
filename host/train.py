"""The training loop and the Python API: :func:`train`.

One epoch: re-quantise the features with fresh stochastic draws, shuffle, pack,
stream the frames to the board (the last one flushes the mini-batch), read the
model back and the engine's cycle counter, and compute the float64 training
loss of the model on the normalised data. The loop is the same for the
simulated board and a real one: it only sees a port URL.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm
from ziphalp.hw import protocol
from ziphalp.hw.params import BOARD_PARAMS, EngineParams
from ziphalp.hw.protocol import StatusFlags

from . import quantize
from .data import DataError, Dataset, Normalised, least_squares_optimum, load, normalise
from .driver import Board, BoardError

__all__ = [
    "DEFAULTS",
    "EpochRecord",
    "SaturationWarning",
    "SettingsError",
    "TrainResult",
    "train",
]

#: Default settings: on diabetes they reach a loss within 2% of the optimum.
DEFAULTS = {"epochs": 30, "step": 2.0 ** -9, "batch": 8, "seed": 0}


class SettingsError(ValueError):
    """A training setting is out of range (board, port, step, batch, epochs)."""


class SaturationWarning(UserWarning):
    """The engine saturated a model update or a scaled residual."""


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did: the loss after it and what it cost."""

    epoch: int
    loss: float
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
        epochs, step (the engine's), shift, batch, seed, rounding, shuffle.
    words : ndarray of int64, shape (d + 1,)
        Final raw model words, bias last.
    coefficients : ndarray, shape (d + 1,)
        Final model in normalised units, bias last.
    optimum : ndarray or None
        Float64 least-squares coefficients in normalised units.
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
    words: np.ndarray
    coefficients: np.ndarray
    optimum: np.ndarray | None
    optimum_loss: float | None
    history: list[EpochRecord] = field(default_factory=list)

    @property
    def loss(self) -> float:
        """Training loss of the final model."""
        return self.history[-1].loss if self.history else self.data.loss(self.coefficients)

    def original_units(self) -> tuple[np.ndarray, float]:
        """Final coefficients and intercept in the user's original units."""
        return self.data.to_original(self.coefficients)


@contextlib.contextmanager
def _port_url(board: str, port: str | None) -> Iterator[str]:
    """The URL of the board: ``port``, or that of a simulated board started here."""
    if port is not None:
        yield port
        return
    if board != "sim":
        raise SettingsError(f"--board {board} needs --port (the board's serial port)")
    try:
        from ziphalp.sim.board import SimBoardError, simulated_board
    except ImportError as e:
        raise BoardError(f"the simulated board is not available: {e}") from None
    try:
        sim = simulated_board(BOARD_PARAMS["sim"])
    except ImportError as e:
        raise BoardError(f"the simulated board is not available: {e}") from None
    try:
        with sim:
            yield sim.url
    except SimBoardError as e:
        raise BoardError(f"simulated board: {e}") from None


def _check_settings(board: str, epochs: int, batch: int, step: float) -> int:
    if board not in BOARD_PARAMS:
        raise SettingsError(f"unknown board {board!r}; choose from {', '.join(BOARD_PARAMS)}")
    if epochs < 1:
        raise SettingsError(f"epochs must be at least 1, not {epochs}")
    if batch < 1:
        raise SettingsError(f"batch must be at least 1, not {batch}")
    try:
        return quantize.step_to_shift(step)
    except ValueError as e:
        raise SettingsError(str(e)) from None


def _check_fit(name: str, d: int, batch: int, params: EngineParams, where: str) -> None:
    if d + 1 > params.max_features:
        raise DataError(f"{name} has {d} features, {d + 1} with the bias; the engine on "
                        f"{where} takes at most {params.max_features}")
    if batch > params.max_batch:
        raise SettingsError(f"batch {batch} is larger than the engine's maximum "
                            f"{params.max_batch} on {where}")


def train(dataset: str | Path | Dataset, *, board: str = "sim", port: str | None = None,
          epochs: int = DEFAULTS["epochs"], step: float = DEFAULTS["step"],
          batch: int = DEFAULTS["batch"], seed: int = DEFAULTS["seed"],
          label: str | int | None = None, stochastic: bool = True, shuffle: bool = True,
          progress: bool = True, timeout: float = 5.0,
          on_epoch: Callable[[TrainResult, EpochRecord], None] | None = None) -> TrainResult:
    """Train a least-squares model on a board.

    Parameters
    ----------
    dataset : str, Path or Dataset
        A bundled name, a CSV/LIBSVM path (see :func:`ziphalp.host.data.load`) or
        a loaded data set.
    board : {"sim", "icebreaker"}
        Board kind. ``"sim"`` starts the simulated board unless ``port`` is given.
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
    stochastic : bool
        Stochastic rounding of the feature codes (else round to nearest).
    shuffle : bool
        Visit the samples in a fresh random order each epoch.
    progress : bool
        Show a progress bar on stderr.
    timeout : float
        Seconds to wait for each reply of the board.
    on_epoch : callable, optional
        Called with the result so far and each :class:`EpochRecord` as soon as
        the epoch ends.

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError, SettingsError, BoardError
    """
    shift = _check_settings(board, epochs, batch, step)
    if not isinstance(dataset, Dataset):
        dataset = load(dataset, label)
    _check_fit(dataset.name, dataset.d, batch, BOARD_PARAMS[board], f"the {board} board")
    data = normalise(dataset)
    features = data.features.shape[1]
    optimum = least_squares_optimum(data.features, data.labels)
    labels = quantize.quantize_labels(data.labels)
    rng = np.random.default_rng(seed)
    settings = {"epochs": epochs, "step": quantize.shift_to_step(shift), "shift": shift,
                "batch": batch, "seed": seed, "shuffle": shuffle,
                "rounding": "stochastic" if stochastic else "nearest"}

    with _port_url(board, port) as url, Board(url, timeout=timeout) as link:
        identity = link.identify()
        params = link.params
        _check_fit(dataset.name, dataset.d, batch, params, url)
        link.configure(features, batch, shift)
        link.load_model(0, np.zeros(features, np.int64))
        link.status(clear=True)
        result = TrainResult(dataset, data, identity, params, board, url, settings,
                             np.zeros(features, np.int64), np.zeros(features),
                             None if optimum is None else optimum[0],
                             None if optimum is None else optimum[1])
        with tqdm(total=epochs * dataset.n, unit="sample", disable=not progress,
                  desc="training", leave=False) as bar:
            for epoch in range(1, epochs + 1):
                order = rng.permutation(dataset.n) if shuffle else np.arange(dataset.n)
                record = _epoch(link, result, epoch, order, labels,
                                rng if stochastic else None, bar)
                bar.set_postfix(loss=f"{record.loss:.5g}")
                _warn(record, dataset.n, first=not any(
                    r.overflow or r.clipped for r in result.history[:-1]))
                if on_epoch is not None:
                    on_epoch(result, record)
    return result


def _epoch(link: Board, result: TrainResult, epoch: int, order: np.ndarray,
           labels: np.ndarray, rng: np.random.Generator | None, bar: tqdm) -> EpochRecord:
    """Stream one epoch in ``order``, read the model back, append to the history."""
    start = time.perf_counter()
    params, data = result.params, result.data
    features = data.features.shape[1]
    codes = quantize.quantize_features(data.features[order], rng)
    stream = quantize.pack_samples(codes, labels[order], params)
    chunks = quantize.frames(stream, params, features)
    size = quantize.sample_bytes(params, features)
    for i, chunk in enumerate(chunks):
        link.stream(chunk, flush=i == len(chunks) - 1)
        bar.update(len(chunk) // size)
    words = link.read_model(0, features)
    counters = link.status(clear=True)
    seconds = time.perf_counter() - start
    beta = quantize.words_to_coefficients(words, params)
    record = EpochRecord(epoch, data.loss(beta), counters.cycles, seconds, counters.samples,
                         bool(counters.flags & StatusFlags.OVERFLOW),
                         bool(counters.flags & StatusFlags.CLIPPED))
    result.words, result.coefficients = words, beta
    result.history.append(record)
    return record


def _warn(record: EpochRecord, n: int, first: bool) -> None:
    if (record.overflow or record.clipped) and first:
        what = "model update" if record.overflow else "scaled residual"
        warnings.warn(f"epoch {record.epoch}: the engine saturated a {what}; "
                      "try a smaller --step", SaturationWarning, stacklevel=3)
    if record.samples != n:
        warnings.warn(f"epoch {record.epoch}: the board counted {record.samples} samples, "
                      f"{n} were sent", RuntimeWarning, stacklevel=3)
