"""The training loop and the Python API: :func:`train`.

One epoch: quantise the features afresh onto the level table (ZipML: stochastic
rounding with one or two samples per value, or nearest rounding), shuffle, pack,
stream the frames to the board (the last one flushes the mini-batch), read the
model back and the engine's cycle counter, and compute the float64 training
objective (and, for classification, the accuracy) of the model on the
normalised data. The loop is the same for the simulated board and a real one:
it only sees a port URL.

HALP (``algo="halp"``, bit-centering SVRG in the engine's HALP phases, the
"HALP mode" section of :mod:`ziphalp.hw.params`): the features are quantised
once, deterministically (nearest level on uniform levels over [-1, 1]), and
the labels to ``LABEL`` words, so the board solves one fixed problem. Each outer
iteration streams all ``n`` samples in order in the full-gradient phase, then
``T`` samples drawn uniformly with replacement in the inner loop (a b-bit offset
on a power-of-two grid that follows the full gradient), reads the model back and
records the float64 objective on the quantised problem and its relative
suboptimality against that problem's exact optimum.

Resident data (``resident``; boards built with it, the "Resident data" section
of :mod:`ziphalp.hw.params`): the host loads the data set into the board once,
after the level table, as 8-bit codes (multiples of 1/127), ``LABEL`` words and
a sampler table derived from the levels (:mod:`ziphalp.host.resident`); each
epoch is then one ``RUN`` that walks the resident samples in a fresh order
(``first``, ``stride``) with the board rounding the codes afresh (a fresh seed),
and the host only reads the model and the counters back. The engine then
quantises the code values, not the float features: SGD's objective, optimum and
quantisation variance stay those of the normalised data (the codes are within
1/254 of it); HALP's quantised problem is the codes rounded to the nearest
level, exactly what the engine decodes, and its inner loop walks the samples
without replacement (a stride walk) instead of drawing them with replacement.
Replayed data (SGD on boards with a replay store, the "Replayed data" section
of :mod:`ziphalp.hw.params`, such as the iCEBreaker): the host quantises the
data set once, in one shuffled order, packs it as it would stream it and loads
the beats into the board's store; each epoch is then one ``REPLAY`` of all of
them, starting at a random sample when shuffling, the engine decoding the same
samples every epoch (``settings["data"]`` is "replayed"). A board with both
stores replays only what its resident store cannot hold.
By default the data stay on the board when it has a store they fit (resident
before replayed), else they are streamed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm
from ziphalp.hw import params as hw_params
from ziphalp.hw import protocol
from ziphalp.hw.params import (
    BOARD_PARAMS,
    COST_BITS,
    COST_FRAC,
    COST_ONE,
    L2_SHIFT_MAX,
    LABEL,
    LOG_FRAC,
    LOSS_NAMES,
    OFFSET_BITS,
    SCALE_LOG_BITS,
    SHIFT_MAX,
    EngineParams,
    Loss,
    Phase,
)
from ziphalp.hw.protocol import Options, Region, StatusFlags

from . import checkpoint as checkpoints
from . import halp_reference, quantize, reference
from .data import DataError, Dataset, Normalised, load, normalise
from .driver import Board, BoardError
from .levels import grid_levels, level_words, optimal_levels, quantisation_variance, uniform_levels
from .resident import (
    code_rows,
    code_values,
    does_not_fit,
    encode_codes,
    epoch_walk,
    label_words,
    replay_does_not_fit,
    replay_walk,
    sample_beats,
    sampler_bytes,
    sampler_table,
)

__all__ = [
    "ALGOS",
    "DEFAULTS",
    "HALP_DEFAULTS",
    "HALP_LOSSES",
    "default_stale",
    "LEVEL_KINDS",
    "LOSSES",
    "SAMPLINGS",
    "EpochRecord",
    "QuantisedProblem",
    "SaturationWarning",
    "SettingsError",
    "TrainResult",
    "halp_default_mu",
    "train",
]

#: Default settings: on diabetes they reach a loss within 2% of the optimum.
DEFAULTS = {"epochs": 30, "step": 2.0 ** -9, "batch": 8, "seed": 0, "bits": 4,
            "sampling": "double", "levels": "uniform", "loss": "squared"}
SAMPLINGS = quantize.SAMPLINGS
LEVEL_KINDS = ("uniform", "optimal")
#: Loss names (``-`` spelling), in the order of the engine's ``Loss`` codes.
LOSSES = tuple(LOSS_NAMES.values())
#: Training algorithms: mini-batch SGD (ZipML) or bit-centering SVRG (HALP).
ALGOS = ("sgd", "halp")
#: Losses of the engine's HALP mode.
HALP_LOSSES = tuple(LOSS_NAMES[loss] for loss in hw_params.HALP_LOSSES)
#: HALP defaults: the offset width (and data precision) ``bits``. The step is
#: derived from the data (see :func:`train`), ``mu`` by :func:`halp_default_mu`
#: and the inner loop has ``n`` steps.
HALP_DEFAULTS = {"bits": 8}
#: :func:`halp_default_mu`: the smallest ``mu (2**(b-1) - 1) alpha``, the inner
#: step on a gradient of norm ``||g~||`` measured in grid steps.
HALP_MU_GRID = 1 / 3


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

    HALP runs record one entry per outer iteration: ``epoch`` is then the
    number of passes over the data so far (``(n + T) / n`` per iteration, a
    float), ``iteration`` the outer iteration (1-based), ``loss`` the objective
    on the quantised problem, ``suboptimality`` ``(loss - f*) / f*`` against
    that problem's exact optimum ``f*`` (None without a finite, positive one),
    and ``cycles`` splits into ``full_cycles`` (full-gradient pass) and
    ``inner_cycles`` (inner loop). These four fields are None for SGD.

    ``host_bytes`` counts the bytes the host sent to and received from the
    board in the epoch (HALP: the outer iteration), whole frames, from the
    driver's counters: the data (streamed samples, or the ``RUN`` requests of
    resident data), the model read back and the counters, and HALP's two
    configurations. Loading resident data is not in it (``settings["load_bytes"]``).
    ``retries`` counts the requests the driver resent in the epoch because a reply
    was lost or the board saw a garbled request (``ziphalp.host.driver``, "Faults").
    """

    epoch: int | float
    loss: float
    accuracy: float | None
    cycles: int
    seconds: float
    samples: int
    overflow: bool
    clipped: bool
    iteration: int | None = None
    suboptimality: float | None = None
    full_cycles: int | None = None
    inner_cycles: int | None = None
    host_bytes: int | None = None
    retries: int = 0


@dataclass(frozen=True)
class QuantisedProblem:
    """The fixed problem a HALP run solves: what the board holds, in float64.

    Attributes
    ----------
    features : ndarray of float64, shape (n, d + 1)
        The normalised features rounded to the nearest of the uniform ``k``-bit
        levels (the values the engine decodes), bias column last; with resident
        data, first rounded to the stored codes (:func:`quantised_problem`).
    labels : ndarray of float64, shape (n,)
        The normalised labels rounded to ``LABEL`` words (``y / 2**LABEL.frac``).
    fields : ndarray of unsigned int, shape (n, d + 1)
        The single-sampling fields streamed to the board.
    label_words : ndarray of int16, shape (n,)
    k : int
        Data precision.
    description : str
        What the optimum refers to (``optimum_data`` in history.json).
    separable : bool
        Logistic loss on linearly separable quantised data: no finite optimum.
    """

    features: np.ndarray
    labels: np.ndarray
    fields: np.ndarray
    label_words: np.ndarray
    k: int
    description: str
    separable: bool = False


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
        those of the first epoch), algo ("sgd" or "halp"), data ("resident":
        loaded once into the board's store and fed by ``RUN``, sampled afresh on
        the board each epoch; "replayed": quantised once on the host, loaded into
        the board's replay store and fed by ``REPLAY``, the same samples each
        epoch; or "streamed") and load_bytes (the host bytes, requests and
        replies, of loading the data; 0 when streamed). HALP adds
        offset_bits, data_bits, mu, inner_steps, scale_log, full_shift and
        full_cost (the full pass's shift and cost words); its batch is 1, its
        sampling "nearest" and its levels "uniform".
    levels : ndarray of float64, shape (2**bits + 1,)
        The level table the board decodes (on the ``LEVEL`` grid).
    variance : float
        Mean quantisation variance of the features on those levels (per value),
        of the normalised features also when the data are resident (the engine
        then rounds the stored codes, within 1/254 of them).
    words : ndarray of int64, shape (d + 1,)
        Final raw model words, bias last.
    coefficients : ndarray, shape (d + 1,)
        Final model in normalised units, bias last.
    optimum : ndarray or None
        Float64 minimiser of the same objective, in normalised units.
    optimum_loss : float or None
    history : list of EpochRecord
    problem : QuantisedProblem or None
        HALP: the quantised problem; ``objective``, ``optimum`` and
        ``optimum_loss`` then refer to it.
    faults_injected : int
        Bytes the fault proxy damaged (``faults``; 0 without it).
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
    problem: QuantisedProblem | None = None
    faults_injected: int = 0

    @property
    def algo(self) -> str:
        return self.settings.get("algo", "sgd")

    @property
    def loss(self) -> float:
        """Training objective of the final model."""
        return self.history[-1].loss if self.history else self.objective(self.coefficients)

    def objective(self, beta: np.ndarray) -> float:
        """The run's float64 training objective of normalised coefficients ``beta``."""
        s = self.settings
        if self.problem is not None:
            return reference.objective(self.problem.features, self.problem.labels, beta,
                                       s["loss"], s["costs"], s["l2"])
        return reference.objective(self.data.features, self.data.labels, beta,
                                   s["loss"], s["costs"], s["l2"])

    def original_units(self) -> tuple[np.ndarray, float]:
        """Final coefficients and intercept in the user's original units."""
        return self.data.to_original(self.coefficients)


@dataclass
class _Port:
    """Where the board is, and how many faults a proxy in front of it has injected."""

    url: str
    proxy: Any = None

    @property
    def faults(self) -> int:
        return self.proxy.total if self.proxy is not None else 0


@contextlib.contextmanager
def _port_url(board: str, port: str | None, faults: float = 0.0,
              fault_seed: int = 0) -> Iterator[_Port]:
    """The board: ``port``, or a simulated board started here (behind a
    :class:`~ziphalp.host.faults.FaultProxy` if ``faults``)."""
    if faults and port is not None:
        raise SettingsError("faults are injected between the host and a simulated board; "
                            "leave out the port")
    if not 0 <= faults < 1:
        raise SettingsError(f"the fault rate must be in [0, 1), not {faults}")
    if port is not None:
        yield _Port(port)
        return
    if not board.startswith("sim"):
        raise SettingsError(f"--board {board} needs --port (the board's serial port)")
    try:
        from ziphalp.sim.board import SimBoardError, simulated_board
    except ImportError as e:
        raise BoardError(f"the simulated board is not available: {e}") from None
    params = BOARD_PARAMS[board]
    # with faults, the board must drop a request cut short as a board does after its
    # inter-byte time-out: the simulation then runs on when the line is quiet
    idle = (dict(idle_ms=5, idle_cycles=int(protocol.TIMEOUT_BYTES_TIME * params.clock_hz))
            if faults else {})
    try:
        sim = simulated_board(params, **idle)
    except ImportError as e:
        raise BoardError(f"the simulated board is not available: {e}") from None
    try:
        with sim:
            if faults:
                from .faults import FaultProxy

                with FaultProxy(sim.url, faults, seed=fault_seed) as proxy:
                    yield _Port(proxy.url, proxy)
            else:
                yield _Port(sim.url)
    except SimBoardError as e:
        raise BoardError(f"simulated board: {e}") from None


@contextlib.contextmanager
def _session(board: str, port: str | None, timeout: float, faults: float, fault_seed: int
             ) -> Iterator[tuple[_Port, Board, protocol.Identity]]:
    """Open the board (:func:`_port_url`) and identify it; yield the port, the driver
    and the identity. Both algorithms train inside one of these."""
    with _port_url(board, port, faults, fault_seed) as link, \
            Board(link.url, timeout=timeout) as driver:
        yield link, driver, driver.identify()


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
          epochs: int = DEFAULTS["epochs"], step: float | None = None,
          batch: int | None = None, seed: int = DEFAULTS["seed"],
          label: str | int | None = None, bits: int | None = None,
          sampling: str | None = None, levels: str = DEFAULTS["levels"],
          loss: str = DEFAULTS["loss"], costs: tuple[float, float] = (1.0, 1.0),
          l2: float = 0.0, shuffle: bool = True, progress: bool = True, timeout: float = 5.0,
          on_epoch: Callable[[TrainResult, EpochRecord], None] | None = None,
          halve_every: int = 0, algo: str = "sgd", mu: float | None = None,
          inner_steps: int | None = None, data_bits: int | None = None,
          stale: int | None = None, resident: bool | None = None,
          checkpoint: str | Path | None = None, resume: bool = False,
          faults: float = 0.0, fault_seed: int = 0) -> TrainResult:
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
        Passes over the data (HALP: outer iterations).
    step : float, optional
        Step size; the engine uses the nearest power of two ``2**-shift``.
        Default ``DEFAULTS["step"]``; HALP: the SVRG step ``1 / (4 L)`` of the
        quantised problem, ``L`` its largest per-sample smoothness
        (:func:`ziphalp.host.halp_reference.default_step`).
    batch : int, optional
        Mini-batch size: SGD sums the gradients over a batch (default
        ``DEFAULTS["batch"]``); HALP's inner loop takes one step on the batch's mean
        (default 1).
    seed : int
        Seed of the stochastic rounding draws and the shuffling.
    label : str or int, optional
        CSV label column (name or index); default the last column.
    bits : int, optional
        Precision k of the features: ``2**k`` intervals between ``2**k + 1`` levels
        (default ``DEFAULTS["bits"]``). HALP: the offset width b, 2..``OFFSET_BITS``
        (default ``HALP_DEFAULTS["bits"]``), and the data precision unless
        ``data_bits`` is given (at most the engine's ``max_k``).
    sampling : {"double", "single", "nearest"}, optional
        Two independent stochastic samples per value (unbiased gradient), one
        (biased: a hidden ridge term), or deterministic rounding to the nearest level.
        Default ``DEFAULTS["sampling"]``; HALP always rounds to nearest, once.
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
        Visit the samples in a fresh random order each epoch (resident data: a
        fresh stride walk, :func:`ziphalp.host.resident.epoch_walk`).
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
    algo : {"sgd", "halp"}
        Mini-batch SGD (ZipML), or bit-centering SVRG in the engine's HALP mode
        (needs a board built with it: ``ulx3s``, ``sim-ulx3s``; squared or
        logistic loss; at most ``halp_samples`` samples; no class costs, L2,
        schedule or optimal levels; ``batch`` and ``shuffle`` are ignored).
    mu : float, optional
        HALP: the grid scale ``delta = ||g~|| / (mu (2**(b-1) - 1))`` (rounded to a
        power of two by the engine); default :func:`halp_default_mu`.
    inner_steps : int, optional
        HALP: inner steps ``T`` per outer iteration, samples drawn uniformly with
        replacement (resident data: a fresh stride walk, without replacement);
        default ``n``.
    data_bits : int, optional
        HALP: data precision k (1..8) when it is not ``bits``.
    stale : int, optional
        HALP: delay of the inner loop's gradients, in samples (0..``max_stale`` of
        the board; ``ziphalp.hw.params``, "Delayed gradients"): each inner step's
        dot product sees the model from that many steps before, so the engine need
        not wait for the previous step's update. Default :func:`default_stale`, the
        smallest delay that hides the board's update; 0 is exact HALP.
    resident : bool, optional
        Where the data live (module docstring). None (the default): resident
        when the board has resident data and the data set fits its store
        (:func:`ziphalp.host.resident.capacity`), else streamed. True: resident,
        or SettingsError if the board has no resident data and DataError if the
        data set does not fit (naming the limit). False: streamed each epoch.
    checkpoint : str or Path, optional
        Folder to write ``checkpoint.json`` into at the end of every epoch (HALP:
        outer iteration), atomically (:mod:`ziphalp.host.checkpoint`).
    resume : bool
        Continue the run whose checkpoint is in ``checkpoint``: same data set,
        board kind and settings (``epochs`` may grow); the board's levels,
        configuration, model and resident data are reloaded, the random generator
        restored, and the run ends with the model an uninterrupted run would
        have. :class:`~ziphalp.host.checkpoint.ResumeError` (a ValueError) if
        the folder holds no checkpoint or one of another run; the folder is then
        left as it was.
    faults, fault_seed : float, int
        Simulated boards only: damage this fraction of the link's bytes on
        purpose (:class:`~ziphalp.host.faults.FaultProxy`, seeded), to exercise
        the driver's retries. The model is the same as without faults.

    Returns
    -------
    TrainResult

    Raises
    ------
    DataError, SettingsError, BoardError
    """
    if algo not in ALGOS:
        raise SettingsError(f"unknown algo {algo!r}; choose from {', '.join(ALGOS)}")
    if algo == "halp":
        return _train_halp(dataset, board=board, port=port, epochs=epochs, step=step,
                           batch=1 if batch is None else batch,
                           seed=seed, label=label, bits=bits, sampling=sampling,
                           levels=levels, loss=loss, costs=costs, l2=l2,
                           progress=progress, timeout=timeout, on_epoch=on_epoch,
                           halve_every=halve_every, mu=mu, inner_steps=inner_steps,
                           data_bits=data_bits, stale=stale, resident=resident,
                           checkpoint=checkpoint, resume=resume, faults=faults,
                           fault_seed=fault_seed)
    saved = _saved_run(checkpoint, resume)
    for name, value in (("mu", mu), ("inner_steps", inner_steps), ("data_bits", data_bits),
                        ("stale", stale)):
        if value is not None:
            raise SettingsError(f"{name} is a HALP setting (algo 'halp')")
    step = DEFAULTS["step"] if step is None else step
    batch = DEFAULTS["batch"] if batch is None else batch
    bits = DEFAULTS["bits"] if bits is None else bits
    sampling = DEFAULTS["sampling"] if sampling is None else sampling
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
    _placement(resident, BOARD_PARAMS[board], dataset, f"the {board} board", bits, sampling)
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
                "l2_shift": l2_shift, "halve_every": halve_every, "algo": "sgd",
                "data": "streamed", "load_bytes": 0}
    try:
        optimum = reference.optimum(data.features, data.labels, settings["loss"],
                                    settings["costs"], settings["l2"])
    except (ValueError, RuntimeError):
        optimum = None          # e.g. logistic loss on separable data: no finite optimum
    labels = quantize.quantize_labels(data.labels)
    rng = np.random.default_rng(seed)

    with _session(board, port, timeout, faults, fault_seed) as (link, driver, identity):
        url, params = link.url, driver.params
        _check_fit(dataset.name, dataset.d, batch, bits, params, url)
        settings["data"] = _placement(resident, params, dataset, f"the board on {url}", bits,
                                      sampling)
        save = _checkpointer(checkpoint, saved, settings, dataset, board, identity, url)
        driver.load_levels(level_words(table))
        if settings["data"] == "resident":
            settings["load_bytes"] = _load_resident(driver, data.features, labels, table,
                                                    bits, sampling)
        elif settings["data"] == "replayed":
            settings["load_bytes"] = _load_replayed(driver, data.features, labels, table,
                                                    settings, rng)

        def configure(halvings: int) -> None:
            driver.configure(features, batch, min(shift + halvings, SHIFT_MAX), k=bits,
                           double=sampling == "double", loss=Loss(LOSSES.index(loss)),
                           l2_shift=min(l2_shift + halvings, L2_SHIFT_MAX) if l2_shift else 0,
                           cost_pos=cost_words[0], cost_neg=cost_words[1])

        result = TrainResult(dataset, data, identity, params, board, url, settings, table,
                             quantisation_variance(data.features.ravel(), table),
                             np.zeros(features, np.int64), np.zeros(features),
                             None if optimum is None else optimum[0],
                             None if optimum is None else float(optimum[1]))
        first = _restore(result, saved, rng)
        configure((first - 1) // halve_every if halve_every else 0)
        driver.load_model(0, result.words)
        driver.status(clear=True)
        with tqdm(total=epochs * dataset.n, initial=(first - 1) * dataset.n, unit="sample",
                  disable=not progress, desc="training", leave=False) as bar:
            feed = {"resident": _run_epoch, "replayed": _replay_epoch,
                    "streamed": _stream_epoch}[settings["data"]](driver, result, labels, rng, bar)
            for epoch in range(first, epochs + 1):
                # (a resumed run configures here too: the epoch's counters then
                # include the configuration, as they do in an uninterrupted run)
                if halve_every and epoch > 1 and (epoch - 1) % halve_every == 0:
                    configure((epoch - 1) // halve_every)
                record = _epoch(driver, result, epoch, feed)
                save(result, epoch, rng)
                bar.set_postfix(loss=f"{record.loss:.5g}")
                _warn(record, dataset.n, first=not any(
                    r.overflow or r.clipped for r in result.history[:-1]))
                if on_epoch is not None:
                    on_epoch(result, record)
        result.faults_injected = link.faults
    return result


def _epoch(driver: Board, result: TrainResult, epoch: int,
           feed: Callable[[], None]) -> EpochRecord:
    """Feed one epoch (``feed``), read the model back, append to the history."""
    start, moved, resent = time.perf_counter(), _traffic(driver), driver.retries
    params, data = result.params, result.data
    feed()
    words = driver.read_model(0, data.features.shape[1])
    counters = driver.status(clear=True)
    seconds = time.perf_counter() - start
    beta = quantize.words_to_coefficients(words, params)
    accuracy = (reference.accuracy(data.features, data.labels, beta)
                if data.task == "classification" else None)
    record = EpochRecord(epoch, result.objective(beta), accuracy, counters.cycles, seconds,
                         counters.samples, bool(counters.flags & StatusFlags.OVERFLOW),
                         bool(counters.flags & StatusFlags.CLIPPED),
                         host_bytes=_traffic(driver) - moved,
                         retries=driver.retries - resent)
    result.words, result.coefficients = words, beta
    result.history.append(record)
    return record


def _stream_epoch(driver: Board, result: TrainResult, labels: np.ndarray,
                  rng: np.random.Generator, bar: tqdm) -> Callable[[], None]:
    """The feed of a streamed SGD epoch: shuffle, quantise afresh on the host, and
    stream the frames (the last one flushes)."""
    params, data, s = result.params, result.data, result.settings
    n, features = data.features.shape
    double = s["sampling"] == "double"
    size = quantize.sample_bytes(params, features, s["bits"], double)

    def feed() -> None:
        order = rng.permutation(n) if s["shuffle"] else np.arange(n)
        stream = quantize.encode_epoch(data.features[order], labels[order], result.levels,
                                       s["bits"], s["sampling"], rng, params)
        chunks = quantize.frames(stream, params, features, s["bits"], double)
        for i, chunk in enumerate(chunks):
            driver.stream(chunk, flush=i == len(chunks) - 1)
            bar.update(len(chunk) // size)
    return feed


def _run_epoch(driver: Board, result: TrainResult, labels: np.ndarray,
               rng: np.random.Generator, bar: tqdm) -> Callable[[], None]:
    """The feed of a resident SGD epoch: one ``RUN`` over every resident sample in a
    fresh walk (shuffled unless ``shuffle`` is off) with a fresh sampling seed."""
    n, shuffle = len(labels), result.settings["shuffle"]

    def feed() -> None:
        first, stride = epoch_walk(n, shuffle, rng)
        driver.run(n, first, stride, n, _fresh_seed(rng), bias=True)
        bar.update(n)
    return feed


def _replay_epoch(driver: Board, result: TrainResult, labels: np.ndarray,
                  rng: np.random.Generator, bar: tqdm) -> Callable[[], None]:
    """The feed of a replayed SGD epoch: one ``REPLAY`` of every sample loaded, from a
    random sample on when shuffling (:func:`ziphalp.host.resident.replay_walk`)."""
    s, n = result.settings, len(labels)
    beats = sample_beats(result.params, result.data.features.shape[1], s["bits"],
                         s["sampling"] == "double")

    def feed() -> None:
        first = replay_walk(n, s["shuffle"], rng)
        driver.replay(first * beats, n * beats)
        bar.update(n)
    return feed


def _saved_run(folder: str | Path | None, resume: bool) -> checkpoints.Checkpoint | None:
    """The checkpoint to resume from (read before any work), or None."""
    if not resume:
        return None
    if folder is None:
        raise SettingsError("resume needs the checkpoint folder (checkpoint=, --resume DIR)")
    return checkpoints.read(Path(folder))


def _checkpointer(folder: str | Path | None, saved: checkpoints.Checkpoint | None,
                  settings: dict, dataset: Dataset, board: str,
                  identity: protocol.Identity, url: str
                  ) -> Callable[[TrainResult, int, np.random.Generator], None]:
    """Check a resume against the run (before the board or the folder is touched)
    and return the function that writes each epoch's checkpoint (none without a
    folder)."""
    if folder is None:
        return lambda result, epoch, rng: None
    described = {"name": dataset.name, "n": dataset.n, "d": dataset.d,
                 "sha256": checkpoints.fingerprint(dataset.features, dataset.labels)}
    if saved is not None:
        checkpoints.check_resume(saved, Path(folder), settings, described, board)
        if saved.build_id != identity.build_id:
            raise BoardError(f"the board on {url} is build 0x{identity.build_id:08x}; the run "
                             f"in {folder} was on build 0x{saved.build_id:08x}")

    def save(result: TrainResult, epoch: int, rng: np.random.Generator) -> None:
        checkpoints.write(Path(folder), checkpoints.Checkpoint(
            epoch, [int(w) for w in result.words], rng.bit_generator.state,
            checkpoints.plain(result.settings), described, identity.build_id, board,
            [checkpoints.plain(dataclasses.asdict(r)) for r in result.history]))
    return save


def _restore(result: TrainResult, saved: checkpoints.Checkpoint | None,
             rng: np.random.Generator) -> int:
    """Put a resumed run's model, history and generator back; the first epoch to run."""
    if saved is None:
        return 1
    rng.bit_generator.state = saved.rng
    result.words = np.array(saved.words, np.int64)
    result.coefficients = quantize.words_to_coefficients(result.words, result.params)
    result.history = [EpochRecord(**record) for record in saved.history]
    return saved.epoch + 1


def _fresh_seed(rng: np.random.Generator) -> int:
    """A 32-bit seed for the board's sampling lanes, from the run's generator."""
    return int(rng.integers(0, 1 << 32))


def _traffic(driver: Board) -> int:
    """Bytes the driver has moved so far, both ways."""
    return driver.bytes_sent + driver.bytes_received


def _placement(resident: bool | None, params: EngineParams, dataset: Dataset,
               where: str, bits: int | None = None, sampling: str = "double") -> str:
    """Where an SGD run keeps the data set on ``params``'s board (``where`` names it):
    "resident" (its resident store), "replayed" (its replay store; only with
    ``bits``, the precision the host packs at) or "streamed". ``resident`` None:
    the first store it fits, else streamed; True: a store, or a one-line error
    naming the limit (SettingsError: no store; DataError: too large); False:
    streamed. HALP passes no ``bits``: its runs use the resident store only."""
    if resident is not None and not isinstance(resident, bool):
        raise SettingsError(f"resident must be True, False or None, not {resident!r}")
    d = dataset.d + 1
    reason = does_not_fit(params, dataset.n, d, bias=True)
    if reason is None:
        return "streamed" if resident is False else "resident"
    replays = bits is not None and params.replay
    if replays:
        replay_reason = replay_does_not_fit(params, dataset.n, d, bits, sampling == "double")
        if replay_reason is None:
            return "streamed" if resident is False else "replayed"
        reason = replay_reason if not params.resident else f"{reason}, and {replay_reason}"
    if resident and not (params.resident or replays):
        boards = ", ".join(name for name, p in BOARD_PARAMS.items()
                           if p.resident or (bits is not None and p.replay))
        what = "resident data or a replay store" if bits is not None else "resident data"
        raise SettingsError(f"{where} has no {what} (boards with it: {boards}); "
                            "stream the data instead")
    if resident:
        raise DataError(f"{dataset.name} ({dataset.n} samples of {dataset.d} features, "
                        f"{d} with the bias) cannot be resident on {where}: {reason}")
    return "streamed"


def _load_resident(driver: Board, features: np.ndarray, labels: np.ndarray,
                   levels: np.ndarray, k: int, sampling: str) -> int:
    """Load the sampler table (of ``levels``, ``k``, ``sampling``), the features but
    the bias column (the board makes it: runs with ``bias``) as code rows and the
    ``LABEL`` words into the board's store; return the host bytes it took."""
    moved, params = _traffic(driver), driver.params
    driver.load_data(Region.SAMPLER, sampler_bytes(sampler_table(levels, k, sampling)))
    driver.load_data(Region.CODES, code_rows(encode_codes(features[:, :-1]), params))
    driver.load_data(Region.LABELS, label_words(labels, params))
    return _traffic(driver) - moved


def _load_replayed(driver: Board, features: np.ndarray, labels: np.ndarray,
                   levels: np.ndarray, settings: dict, rng: np.random.Generator) -> int:
    """Quantise the data set once (shuffled if ``settings["shuffle"]``), pack it as a
    stream and load the beats into the board's replay store; return the host bytes
    it took."""
    moved, n = _traffic(driver), len(labels)
    order = rng.permutation(n) if settings["shuffle"] else np.arange(n)
    stream = quantize.encode_epoch(features[order], labels[order], levels, settings["bits"],
                                   settings["sampling"], rng, driver.params)
    driver.load_data(Region.BEATS, stream)
    return _traffic(driver) - moved


def _warn(record: EpochRecord, n: int, first: bool) -> None:
    where = (f"epoch {record.epoch}" if record.iteration is None
             else f"iteration {record.iteration}")
    if (record.overflow or record.clipped) and first:
        what = "model update" if record.overflow else "scaled loss derivative"
        warnings.warn(f"{where}: the engine saturated a {what}; "
                      "try a smaller --step", SaturationWarning, stacklevel=3)
    if record.samples != n:
        warnings.warn(f"{where}: the board counted {record.samples} samples, "
                      f"{n} were sent", RuntimeWarning, stacklevel=3)


# --- HALP ----------------------------------------------------------------------------------

def halp_default_mu(features: np.ndarray, labels: np.ndarray, loss: str, bits: int,
                    step: float) -> float:
    """Default HALP ``mu`` for offset width ``bits`` and inner step ``step``.

    ``max(mu_c, HALP_MU_GRID / ((2**(bits-1) - 1) step))``, with ``mu_c`` twice the
    strong-convexity estimate of :func:`ziphalp.host.halp_reference.default_mu`.
    The offset's range is about ``||g~|| / mu``: ``mu`` near the curvature keeps the
    distance to the optimum in range. The second term keeps the grid fine enough
    for the inner steps: the full-gradient part of a step, ``step ||g~||``, is then
    at least ``HALP_MU_GRID`` grid steps ``delta``; below that, at few bits, the
    rounding noise swamps the steps and HALP stalls or diverges.
    """
    curvature = halp_reference.default_mu(features, labels, loss)
    return max(curvature, HALP_MU_GRID / ((2 ** (bits - 1) - 1) * step))


def quantised_problem(data: Normalised, k: int, loss: str,
                      resident: bool = False) -> QuantisedProblem:
    """The fixed problem of a HALP run: features rounded to the nearest uniform k-bit
    level over [-1, 1] (once), labels to ``LABEL`` words.

    With ``resident`` the features are first rounded to the 8-bit codes the
    board stores (:func:`ziphalp.host.resident.encode_codes`, multiples of
    1/127), and the codes' values to the nearest level, as the board's
    nearest-rounding sampler table does: the values the engine decodes.
    """
    table = grid_levels(uniform_levels(k))
    stored = code_values(encode_codes(data.features)) if resident else data.features
    fields = quantize.quantize_features(stored, table, k, "nearest")
    values, _ = quantize.decode_fields(fields, table, k, False)
    words = quantize.quantize_labels(data.labels)
    labels = words.astype(np.float64) * LABEL.scale
    separable = loss == "logistic" and reference._separable(values, labels)
    codes = "8-bit codes (multiples of 1/127) of the " if resident else ""
    description = (f"features rounded to the nearest of the {2 ** k + 1} uniform "
                   f"{k}-bit levels over [-1, 1] ({codes}normalised features), labels "
                   f"{'+1/-1' if data.task == 'classification' else 'rounded to ' + str(LABEL)}"
                   " words")
    return QuantisedProblem(values, labels, fields, words, k, description, separable)


def _quantised_optimum(problem: QuantisedProblem, loss: str) -> tuple[np.ndarray, float] | None:
    """The exact optimum of the quantised problem (float64), or None (separable data)."""
    if problem.separable:
        return None
    for tol in (1e-11, 1e-10, 1e-9):      # Newton's last steps stall at rounding level
        try:
            x, f = reference.optimum(problem.features, problem.labels, loss, tol=tol)
        except RuntimeError:
            continue
        return x, float(f)
    return None


def _inner_seed(seed: int, iteration: int) -> int:
    """The engine's PRNG seed of outer iteration ``iteration``: from the run seed."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, seed >> 32, iteration])
    return int(state.generate_state(1, np.uint32)[0])


def _scale_log(mu: float, bits: int) -> int:
    """``round(2**LOG_FRAC * log2(mu (2**(b-1) - 1)))``, the engine's ``scale_log``."""
    value = round((1 << LOG_FRAC) * math.log2(mu * ((1 << (bits - 1)) - 1)))
    top = 1 << (SCALE_LOG_BITS - 1)
    if not -top <= value < top:
        raise SettingsError(f"mu {mu:g} is out of range for {bits}-bit offsets")
    return value


def _train_halp(dataset, *, board, port, epochs, step, batch, seed, label, bits, sampling,
                levels,
                loss, costs, l2, progress, timeout, on_epoch, halve_every, mu, inner_steps,
                data_bits, stale, resident, checkpoint, resume, faults,
                fault_seed) -> TrainResult:
    """:func:`train` with ``algo="halp"`` (module docstring)."""
    saved = _saved_run(checkpoint, resume)
    if board not in BOARD_PARAMS:
        raise SettingsError(f"unknown board {board!r}; choose from {', '.join(BOARD_PARAMS)}")
    kind = BOARD_PARAMS[board]
    if not kind.halp:
        halp_boards = ", ".join(name for name, p in BOARD_PARAMS.items() if p.halp)
        raise SettingsError(f"the {board} board has no HALP mode; use --board sim-ulx3s "
                            f"(the simulated ULX3S) or another board with it ({halp_boards})")
    if epochs < 1:
        raise SettingsError(f"epochs must be at least 1, not {epochs}")
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= kind.max_batch:
        raise SettingsError(f"batch must be 1..{kind.max_batch} on the {board} board, "
                            f"not {batch!r}")
    bits = HALP_DEFAULTS["bits"] if bits is None else bits
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= OFFSET_BITS:
        raise SettingsError(f"HALP offset bits must be 2..{OFFSET_BITS}, not {bits!r}")
    if data_bits is not None and (isinstance(data_bits, bool) or not isinstance(data_bits, int)
                                  or not 1 <= data_bits <= quantize.MAX_K):
        raise SettingsError(f"data bits must be 1..{quantize.MAX_K}, not {data_bits!r}")
    if loss not in LOSSES:
        raise SettingsError(f"unknown loss {loss!r}; choose from {', '.join(LOSSES)}")
    if loss not in HALP_LOSSES:
        raise SettingsError(f"HALP runs the squared or the logistic loss, not {loss}")
    if sampling not in (None, "nearest"):
        raise SettingsError(f"HALP rounds the features to nearest once; sampling {sampling} "
                            "is for SGD")
    if levels != "uniform":
        raise SettingsError("HALP uses uniform levels")
    if tuple(costs) != (1.0, 1.0) or l2 != 0:
        raise SettingsError("HALP takes no class costs and no L2 term")
    if halve_every:
        raise SettingsError("HALP takes no step schedule (halve_every)")
    if mu is not None and not (isinstance(mu, int | float) and math.isfinite(mu) and mu > 0):
        raise SettingsError(f"mu must be a positive number, not {mu!r}")
    if inner_steps is not None and (isinstance(inner_steps, bool)
                                    or not isinstance(inner_steps, int) or inner_steps < 1):
        raise SettingsError(f"inner steps must be an integer >= 1, not {inner_steps!r}")
    if stale is not None and (isinstance(stale, bool) or not isinstance(stale, int)
                              or not 0 <= stale <= kind.max_stale):
        raise SettingsError(f"stale must be 0..{kind.max_stale} on the {board} board, "
                            f"not {stale!r}")
    if step is not None:
        try:
            quantize.step_to_shift(step)
        except ValueError as e:
            raise SettingsError(str(e)) from None
    if not isinstance(dataset, Dataset):
        dataset = load(dataset, label)
    if loss != "squared" and dataset.task != "classification":
        raise DataError(f"{dataset.name} is a regression data set; the {loss} loss needs "
                        "labels +1/-1 (a classification data set)")
    k = min(data_bits or bits, kind.max_k)
    _check_fit(dataset.name, dataset.d, 1, k, kind, f"the {board} board")
    if dataset.n > kind.halp_samples:
        raise SettingsError(f"{dataset.name} has {dataset.n} samples; HALP on the {board} "
                            f"board takes at most {kind.halp_samples}")
    # decided for the board kind: the quantised problem depends on it
    on_board = _placement(resident, kind, dataset, f"the {board} board") == "resident"
    data = normalise(dataset)
    n, features = dataset.n, data.features.shape[1]
    name = loss.replace("-", "_")
    problem = quantised_problem(data, k, name, resident=on_board)
    # the engine steps 2**-shift per sample of a batch: alpha / B for a step alpha on
    # the batch's mean
    if step is None:
        step = halp_reference.default_step(problem.features, problem.labels, name,
                                           batch=batch)
        shift = min(max(quantize.step_to_shift(min(step / batch, 1.0)), 0), SHIFT_MAX)
    else:
        shift = quantize.step_to_shift(step / batch)
    step_used = batch * quantize.shift_to_step(shift)
    if mu is None:
        mu = halp_default_mu(problem.features, problem.labels, name, bits, step_used)
    scale_log = _scale_log(mu, bits)
    steps = n if inner_steps is None else inner_steps
    full_shift = max(0, (n - 1).bit_length())            # ceil(log2 n)
    full_cost = round(2.0 ** (COST_FRAC + full_shift) / n)
    optimum = _quantised_optimum(problem, name)
    if optimum is None:
        warnings.warn(f"{dataset.name}: the quantised data are linearly separable; the "
                      "logistic loss has no finite optimum (no suboptimality)",
                      RuntimeWarning, stacklevel=3)
    table = grid_levels(uniform_levels(k))
    settings = {"algo": "halp", "epochs": epochs, "step": step_used, "shift": shift,
                "batch": batch, "seed": seed, "shuffle": False, "bits": bits,
                "offset_bits": bits, "data_bits": k, "mu": float(mu), "inner_steps": steps,
                "scale_log": scale_log, "full_shift": full_shift, "full_cost": full_cost,
                "sampling": "nearest", "levels": "uniform", "loss": name,
                "costs": (1.0, 1.0), "l2": 0.0, "l2_shift": 0, "halve_every": 0,
                "data": "resident" if on_board else "streamed", "load_bytes": 0}
    rng = np.random.default_rng(seed)
    passes = (n + steps) / n

    with _session(board, port, timeout, faults, fault_seed) as (link, driver, identity):
        url, params = link.url, driver.params
        _check_fit(dataset.name, dataset.d, 1, k, params, url)
        if not identity.options & Options.HALP:
            raise SettingsError(f"the board on {url} is built without HALP mode")
        if n > identity.halp_samples:
            raise SettingsError(f"{dataset.name} has {n} samples; HALP on the board on {url} "
                                f"takes at most {identity.halp_samples}")
        if stale is None:
            stale = default_stale(identity, params.beats_for(features, k, False))
        elif stale > params.max_stale:
            raise SettingsError(f"stale must be 0..{params.max_stale} on the board on {url}")
        settings["stale"] = stale
        if on_board and _placement(resident, params, dataset, f"the board on {url}") != "resident":
            raise SettingsError(f"the board on {url} cannot hold {dataset.name} as a {board} "
                                "board can; stream the data (resident=False, --stream)")
        save = _checkpointer(checkpoint, saved, settings, dataset, board, identity, url)
        driver.load_levels(level_words(table))
        if on_board:
            settings["load_bytes"] = _load_resident(driver, data.features, problem.label_words,
                                                    table, k, "nearest")
        loss_code = Loss(LOSSES.index(loss))
        result = TrainResult(dataset, data, identity, params, board, url, settings, table,
                             quantisation_variance(data.features.ravel(), table),
                             np.zeros(features, np.int64), np.zeros(features),
                             None if optimum is None else optimum[0],
                             None if optimum is None else optimum[1], problem=problem)
        first = _restore(result, saved, rng)
        # the SGD phase first: a board left in an inner loop refuses LOAD_MODEL
        driver.configure(features, 1, full_shift, k=k, double=False, loss=loss_code)
        driver.load_model(0, result.words)
        driver.status(clear=True)

        with tqdm(total=epochs * (n + steps), initial=(first - 1) * (n + steps), unit="sample",
                  disable=not progress, desc="training (HALP)", leave=False) as bar:
            full_pass, inner_loop = (_halp_runs(driver, n, seed, rng, bar) if on_board else
                                     _halp_streams(driver, problem, params, rng, bar))
            for iteration in range(first, epochs + 1):
                start, moved, resent = time.perf_counter(), _traffic(driver), driver.retries
                driver.configure(features, 1, full_shift, k=k, double=False, loss=loss_code,
                               cost_pos=full_cost, cost_neg=full_cost, phase=Phase.FULL,
                               offset_bits=bits, scale_log=scale_log)
                full_pass(iteration)
                full = driver.status(clear=True)
                driver.configure(features, batch, shift, k=k, double=False, loss=loss_code,
                               cost_pos=COST_ONE, cost_neg=COST_ONE, phase=Phase.INNER,
                               offset_bits=bits, scale_log=scale_log,
                               seed=_inner_seed(seed, iteration), stochastic=True, stale=stale)
                inner_loop(iteration, steps)
                words = driver.read_model(0, features)
                inner = driver.status(clear=True)
                record = _halp_record(result, iteration, iteration * passes, words, full, inner,
                                      time.perf_counter() - start, _traffic(driver) - moved,
                                      driver.retries - resent)
                save(result, iteration, rng)
                bar.set_postfix(loss=f"{record.loss:.5g}")
                _warn(record, n + steps, first=not any(
                    r.overflow or r.clipped for r in result.history[:-1]))
                if on_epoch is not None:
                    on_epoch(result, record)
        result.faults_injected = link.faults
    return result


def _halp_streams(driver: Board, problem: QuantisedProblem, params: EngineParams,
                  rng: np.random.Generator, bar: tqdm
                  ) -> tuple[Callable[[int], None], Callable[[int, int], None]]:
    """HALP's feeds with the data streamed: the full pass (every sample in order)
    and the inner loop (``steps`` samples drawn uniformly with replacement), each
    given the outer iteration; the fields and the indices come from the host."""
    n, features = problem.fields.shape
    size = quantize.sample_bytes(params, features, problem.k, False)

    def send(order: np.ndarray) -> None:
        stream = quantize.pack_samples(problem.fields[order], problem.label_words[order],
                                       params, problem.k, False,
                                       indices=order.astype(np.uint16))
        chunks = list(quantize.frames(stream, params, features, problem.k, False))
        for number, chunk in enumerate(chunks):
            # the last frame flushes: the inner loop's last batch takes its step
            driver.stream(chunk, flush=number == len(chunks) - 1)
            bar.update(len(chunk) // size)

    def full_pass(iteration: int) -> None:
        send(np.arange(n))

    def inner_loop(iteration: int, steps: int) -> None:
        send(rng.integers(0, n, steps))
    return full_pass, inner_loop


def _halp_runs(driver: Board, n: int, seed: int, rng: np.random.Generator, bar: tqdm
               ) -> tuple[Callable[[int], None], Callable[[int, int], None]]:
    """HALP's feeds with the data resident: the full pass is ``RUN`` over the ``n``
    samples in order, the inner loop ``RUN`` of ``steps`` samples on a fresh stride
    walk (without replacement; it repeats after ``n``). The sampler rounds to
    nearest, so the lanes' seed does not matter."""
    def full_pass(iteration: int) -> None:
        driver.run(n, 0, 1, n, _inner_seed(seed, iteration), bias=True)
        bar.update(n)

    def inner_loop(iteration: int, steps: int) -> None:
        first, stride = epoch_walk(n, True, rng)
        driver.run(steps, first, stride, n, _inner_seed(seed, iteration), bias=True)
        bar.update(steps)
    return full_pass, inner_loop


def default_stale(identity: protocol.Identity, beats: int) -> int:
    """The smallest delay of the inner loop's gradients (``stale``) that lets one-sample
    steps of ``beats`` feature beats (and a label beat) stream while the board
    writes each update (``identity.update_gap`` cycles), within the board's range."""
    return min(identity.params().max_stale, math.ceil(identity.update_gap / (beats + 1)))


def _halp_record(result: TrainResult, iteration: int, passes: float, words: np.ndarray,
                 full: protocol.Counters, inner: protocol.Counters,
                 seconds: float, host_bytes: int, retries: int = 0) -> EpochRecord:
    """Append the record of one outer iteration (the model read back as ``words``,
    ``host_bytes`` moved)."""
    beta = quantize.words_to_coefficients(words, result.params)
    problem = result.problem
    loss = result.objective(beta)
    optimum = result.optimum_loss
    accuracy = (reference.accuracy(problem.features, problem.labels, beta)
                if result.data.task == "classification" else None)
    flags = full.flags | inner.flags
    record = EpochRecord(passes, loss, accuracy, full.cycles + inner.cycles, seconds,
                         full.samples + inner.samples, bool(flags & StatusFlags.OVERFLOW),
                         bool(flags & StatusFlags.CLIPPED), iteration=iteration,
                         suboptimality=(loss - optimum) / optimum if optimum else None,
                         full_cycles=full.cycles, inner_cycles=inner.cycles,
                         host_bytes=host_bytes, retries=retries)
    result.words, result.coefficients = words, beta
    result.history.append(record)
    return record
