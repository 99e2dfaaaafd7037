"""Reproduce the ZipML paper's results on the simulated board.

``python -m ziphalp.sim.reproduce_zipml --out DIR [--quick] [--epochs N] [--seed S]``

Every low-precision number below comes from the real gateware: the engine is
compiled into the simulated board (:mod:`ziphalp.sim.board`) and driven through
:func:`ziphalp.host.train.train` exactly as a physical board would be, so the
losses are those of the model the engine read back and the cycle counts are the
engine's own ``STATUS`` counter. Float64 numbers come from
:mod:`ziphalp.host.reference` and scikit-learn. Nothing is tuned after the fact:
the script records what it measures.

Experiments (least squares unless stated otherwise, features normalised to [-1, 1]):

1. **Bias of naive quantisation** (``bias``): training loss per epoch on a
   synthetic set and on diabetes for float64 SGD (the engine's mini-batch
   schedule) and, on the board, nearest rounding, one stochastic sample and
   double sampling at k = 1, 2, 4, 8 bits (uniform levels), against the float64
   optimum. The step halves every few epochs (the same schedule for the float
   reference), so an unbiased method can approach the optimum.
2. **Variance-optimal levels** (``levels``): total quantisation variance of the
   features on uniform levels, on variance-optimal levels chosen for the data set
   (what the engine's one level table holds) and per feature; on diabetes the
   loss with double sampling on the board for optimal levels at k = 2, 3 and
   uniform levels at k = 2..5 (constant step, loss averaged over the last epochs
   and over seeds with the same shuffles for every table), and the smallest
   uniform k that does at least as well.
3. **Classification** (``classification``): breast_cancer split into training
   and test parts; logistic, hinge (SVM) and squared hinge losses with double
   sampling at k = 1..8 on the board; test accuracy next to scikit-learn's
   LogisticRegression / LinearSVC and float64 SGD on the same split.
4. **Throughput** (``throughput``): engine cycles per epoch at k = 1, 2, 4, 8 with
   double sampling on the ULX3S engine (64-bit beats, ``BOARD_PARAMS`` lanes) and on the
   iCEBreaker engine, against the run at k = 8 and against a baseline build of
   the same engine with as many lanes as 32-bit data fill a beat with (the
   iCEBreaker's 16-bit beat cannot carry a 32-bit value: its baseline is one lane,
   one 16-bit value per beat).

Outputs in ``DIR`` (written atomically): ``zipml.json`` (format
``ziphalp-zipml/1``: ``settings``, ``bias``, ``levels``, ``classification``,
``throughput``, ``seconds``; dictionary keys that are numbers, such as k, are
strings), ``bias_<dataset>.png``, ``levels.png``, ``levels_per_feature.png``,
``classification.png`` and ``throughput.png``; a summary table on stdout,
progress on stderr. The main entries of ``zipml.json`` (losses are the float64
training objective of the model read back from the board, in normalised units)::

    settings        the plan: data sets, schedules (step, batch, epochs, halve_every),
                    precisions, seeds, engines, figure names
    bias.datasets.<synthetic|diabetes>
                    optimum_loss, steps (per epoch), float64.{loss, final_ratio},
                    board.<k>.<nearest|single|double>.{loss, final_ratio, ...},
                    final_ratio.<k>.<sampling>      (final loss / optimum)
    levels.variance.<dataset>.k.<k>
                    total.<uniform|optimal|per_feature>, reduction (uniform / optimal),
                    reduction_per_feature, per_feature (variance of each feature), levels
    levels.board    float64, uniform.<k>, optimal.<k>: {loss, ratio, excess_over_float64}
    levels.bits_needed.<k>
                    uniform_k: the smallest uniform k at least as good as optimal levels
    classification.losses.<loss>
                    sklearn.test_accuracy, float64_sgd.test_accuracy,
                    board.<k>.{test_accuracy, train_accuracy, final_loss}
    throughput.engines.<engine>
                    runs.<k>.{cycles_per_epoch, values_per_beat, vs_baseline, vs_k8},
                    baseline.{name, params, cycles_per_epoch}

``--quick`` runs a smaller version (a small synthetic set, fewer epochs, fewer
precisions, one seed, and a smaller wide engine: 32-bit beats and 8 lanes, which
compiles in well under a minute where the ULX3S engine takes several) in about a
minute once the simulated boards are built; the test suite runs it. The full run
takes about a quarter of an hour, plus several minutes the first time the ULX3S
engine's simulated board is compiled (cached under ``~/.cache/ziphalp``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from ziphalp.host import reference
from ziphalp.host.data import Dataset, Normalised, load, normalise, split
from ziphalp.host.levels import (
    grid_levels,
    optimal_levels,
    quantisation_variance,
    uniform_levels,
)
from ziphalp.host.report import write_atomic
from ziphalp.host.train import TrainResult, train
from ziphalp.hw.params import BOARD_PARAMS, EngineParams

__all__ = ["FORMAT", "Plan", "Schedule", "main", "make_plan", "run"]

#: The ``format`` of ``zipml.json``.
FORMAT = "ziphalp-zipml/1"
#: Ways a value becomes a field, in the order they are plotted.
SAMPLINGS = ("nearest", "single", "double")
#: Colours of the plots, per sampling (and float64).
COLOURS = {"float64": "black", "nearest": "tab:orange", "single": "tab:red",
           "double": "tab:blue", "uniform": "tab:gray", "optimal": "tab:green",
           "per_feature": "tab:purple"}
#: Legend labels of the level tables.
TABLES = {"uniform": "uniform levels", "optimal": "variance-optimal levels (data set)",
          "per_feature": "variance-optimal levels (per feature)"}


# --- the plan --------------------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """Step size, batch and epochs of a training run.

    The step of epoch ``e`` (1-based) is ``step * 2**-((e - 1) // halve_every)``
    (constant if ``halve_every`` is 0), as :func:`ziphalp.host.train.train` runs it.
    """

    step: float
    batch: int
    epochs: int
    halve_every: int = 0

    def steps(self) -> list[float]:
        """The step of each epoch."""
        if not self.halve_every:
            return [self.step] * self.epochs
        return [self.step * 0.5 ** (e // self.halve_every) for e in range(self.epochs)]

    def with_epochs(self, epochs: int | None) -> Schedule:
        """The same schedule over ``epochs`` epochs, with as many halvings in total."""
        if epochs is None or epochs == self.epochs:
            return self
        halve = max(1, round(self.halve_every * epochs / self.epochs)) if self.halve_every else 0
        return dataclasses.replace(self, epochs=epochs, halve_every=halve)

    def to_json(self) -> dict:
        return {"step": self.step, "step_log2": math.log2(self.step), "batch": self.batch,
                "epochs": self.epochs, "halve_every": self.halve_every,
                "final_step": self.steps()[-1]}


@dataclass(frozen=True)
class Engine:
    """An engine whose throughput is measured, and its baseline build."""

    name: str
    params: EngineParams
    baseline_name: str
    baseline: EngineParams
    note: str
    #: How both builds' simulated boards are compiled (None: by the board module's
    #: rule; see ``ziphalp.sim.board.FLATTEN_EVAL_LINES``).
    flatten: bool | None = None


@dataclass(frozen=True)
class Plan:
    """Everything the reproduction runs (see :func:`make_plan`)."""

    quick: bool
    seed: int
    epochs: int | None
    # 1. bias
    bias_data: dict[str, Schedule]
    bias_ks: tuple[int, ...]
    # 2. levels
    levels_data: str
    variance_data: tuple[str, ...]
    levels_ks: tuple[int, ...]
    uniform_ks: tuple[int, ...]
    levels_schedule: Schedule
    levels_tail: int
    levels_seeds: tuple[int, ...]
    # 3. classification
    class_data: str
    test_fraction: float
    losses: tuple[str, ...]
    class_ks: tuple[int, ...]
    class_schedule: Schedule
    # 4. throughput
    throughput_data: str
    throughput_ks: tuple[int, ...]
    engines: tuple[Engine, ...]
    throughput_step: float = 2.0 ** -12

    def to_json(self) -> dict:
        return {
            "quick": self.quick, "seed": self.seed, "epochs_override": self.epochs,
            "bias": {"datasets": {name: s.to_json() for name, s in self.bias_data.items()},
                     "k": list(self.bias_ks), "samplings": list(SAMPLINGS),
                     "levels": "uniform"},
            "levels": {"dataset": self.levels_data, "variance_datasets": list(self.variance_data),
                       "k": list(self.levels_ks), "uniform_k": list(self.uniform_ks),
                       "schedule": self.levels_schedule.to_json(),
                       "tail_epochs": self.levels_tail, "seeds": list(self.levels_seeds),
                       "sampling": "double"},
            "classification": {"dataset": self.class_data, "test_fraction": self.test_fraction,
                               "split_seed": self.seed, "losses": list(self.losses),
                               "k": list(self.class_ks),
                               "schedule": self.class_schedule.to_json(),
                               "sampling": "double", "levels": "uniform"},
            "throughput": {"dataset": self.throughput_data, "k": list(self.throughput_ks),
                           "epochs": 1, "sampling": "double", "step": self.throughput_step,
                           "engines": [e.name for e in self.engines]},
        }


def _wide_quick() -> EngineParams:
    """The wide engine of ``--quick``: 32-bit beats, 8 lanes (it compiles quickly)."""
    return EngineParams(beat_bits=32, lanes=8, max_k=8, max_features=128, max_batch=16,
                        model_bits=32, model_frac=24, frame_bytes=1024,
                        clock_hz=50_000_000, class_costs=False, l2_decay=False)


def _engines(quick: bool) -> tuple[Engine, ...]:
    ice = BOARD_PARAMS["sim"]
    ice_engine = Engine(
        "sim", ice, "sim-1-lane", dataclasses.replace(ice, lanes=1),
        "iCEBreaker engine (16-bit beats, 2 lanes: its 8 DSPs allow 2 values per beat at "
        "most, so the ratios are small); baseline: the same engine with one lane, one "
        "value per 16-bit beat (32-bit data would need two beats per value: it cannot be "
        "built, and this baseline is faster than 32-bit data would be)")
    if quick:
        wide = _wide_quick()
        return (Engine("wide-quick", wide, "wide-quick-32bit", dataclasses.replace(wide, lanes=1),
                       "--quick stand-in for the ULX3S engine (32-bit beats, 8 lanes; the "
                       "ULX3S engine takes minutes to compile); baseline: the same engine "
                       "with one lane, so a 32-bit beat carries one value as 32-bit data "
                       "would",
                       # hierarchical: the flattened build took 55 s of GCC, this one
                       # 32, for runs of a few thousand cycles (cycle counts are equal)
                       flatten=False),
                ice_engine)
    ulx3s = BOARD_PARAMS["sim-ulx3s"]
    narrow = dataclasses.replace(ulx3s, lanes=2, resident_rows=0, resident_samples=0)
    return (Engine("sim-ulx3s", ulx3s, "sim-ulx3s-32bit", narrow,
                   f"ULX3S engine (64-bit beats, {ulx3s.lanes} lanes); baseline: the same "
                   "engine with two lanes (and no resident store), so a 64-bit beat carries "
                   "two values as 32-bit data would"),
            ice_engine)


def make_plan(quick: bool = False, epochs: int | None = None, seed: int = 1) -> Plan:
    """The experiments of a full run, or of ``--quick``; ``epochs`` overrides the epochs
    of every training run of experiments 1-3 (their step schedules keep as many
    halvings in total, and the tail average of experiment 2 the same fraction)."""
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}")
    if quick:
        bias = {f"synthetic:n=1000,d=16,seed={seed}": Schedule(2.0 ** -6, 8, 8, 2),
                "diabetes": Schedule(2.0 ** -6, 8, 16, 4)}
        bias_ks, class_ks = (1, 2, 8), (1, 2, 8)
        levels_schedule, tail, seeds = Schedule(2.0 ** -6, 8, 10), 5, (seed,)
        losses = ("logistic", "hinge")
        class_schedule = Schedule(2.0 ** -5, 8, 8, 2)
        throughput_data = f"synthetic:n=500,d=64,seed={seed}"
    else:
        bias = {f"synthetic:n=10000,d=64,seed={seed}": Schedule(2.0 ** -8, 8, 20, 2),
                "diabetes": Schedule(2.0 ** -6, 8, 80, 16)}
        bias_ks, class_ks = (1, 2, 4, 8), tuple(range(1, 9))
        levels_schedule, tail = Schedule(2.0 ** -6, 8, 30), 15
        seeds = tuple(seed + i for i in range(6))
        losses = ("logistic", "hinge", "squared_hinge")
        class_schedule = Schedule(2.0 ** -5, 8, 20, 5)
        throughput_data = f"synthetic:n=10000,d=64,seed={seed}"
    if epochs is not None:
        bias = {name: s.with_epochs(epochs) for name, s in bias.items()}
        tail = max(1, round(tail * epochs / levels_schedule.epochs))
        levels_schedule = levels_schedule.with_epochs(epochs)
        class_schedule = class_schedule.with_epochs(epochs)
    return Plan(quick=quick, seed=seed, epochs=epochs, bias_data=bias, bias_ks=bias_ks,
                levels_data="diabetes", variance_data=("diabetes", "breast_cancer"),
                levels_ks=(2, 3), uniform_ks=(2, 3, 4, 5), levels_schedule=levels_schedule,
                levels_tail=tail, levels_seeds=seeds, class_data="breast_cancer",
                test_fraction=0.25, losses=losses, class_ks=class_ks,
                class_schedule=class_schedule, throughput_data=throughput_data,
                throughput_ks=(1, 2, 4, 8), engines=_engines(quick))


# --- helpers -----------------------------------------------------------------------------

def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _board_train(dataset: Dataset, schedule: Schedule, *, seed: int, bits: int,
                 sampling: str = "double", levels: str = "uniform", loss: str = "squared",
                 board: str = "sim", port: str | None = None) -> tuple[TrainResult, list[str]]:
    """One training run on a board; the warnings it raised are returned, not shown."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(dataset, board=board, port=port, epochs=schedule.epochs,
                       step=schedule.step, batch=schedule.batch, seed=seed, bits=bits,
                       sampling=sampling, levels=levels, loss=loss.replace("_", "-"),
                       halve_every=schedule.halve_every, progress=False)
    if result.settings["step"] != schedule.step:
        raise RuntimeError(f"the engine ran step {result.settings['step']}, "
                           f"not {schedule.step}")
    return result, sorted({str(w.message) for w in caught})


def _float_sgd(data: Normalised, loss: str, schedule: Schedule,
               seed: int) -> tuple[np.ndarray, list[float]]:
    """Float64 SGD with the engine's mini-batch schedule and the step schedule."""
    model, losses = None, []
    for epoch, step in enumerate(schedule.steps()):
        out = reference.sgd(data.features, data.labels, loss, step, schedule.batch, 1,
                            seed=seed * 1000 + epoch, model=model)
        model = out.model
        losses.append(out.history[-1].loss)
    return model, losses


def _run_record(result: TrainResult, warned: list[str], optimum: float | None) -> dict:
    """The history of one board run, with its final loss over the optimum."""
    losses = [r.loss for r in result.history]
    return {
        "loss": losses,
        "final_loss": losses[-1],
        "final_ratio": losses[-1] / optimum if optimum else None,
        "cycles_per_epoch": result.history[-1].cycles,
        "saturated": any(r.overflow or r.clipped for r in result.history),
        "warnings": warned,
    }


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _short(name: str) -> str:
    """A data set's name for titles and file names (``synthetic`` for any synthetic set)."""
    return name.split(":", 1)[0]


# --- 1. bias -----------------------------------------------------------------------------

def run_bias(plan: Plan) -> dict:
    """Experiment 1 (module docstring)."""
    out = {}
    for name, schedule in plan.bias_data.items():
        dataset = load(name)
        data = normalise(dataset)
        optimum = float(reference.optimum(data.features, data.labels, "squared")[1])
        _, float_losses = _float_sgd(data, "squared", schedule, plan.seed)
        runs: dict[str, dict] = {}
        for k in plan.bias_ks:
            runs[str(k)] = {}
            for sampling in SAMPLINGS:
                start = time.monotonic()
                result, warned = _board_train(dataset, schedule, seed=plan.seed, bits=k,
                                              sampling=sampling)
                record = _run_record(result, warned, optimum)
                record["seconds"] = time.monotonic() - start
                runs[str(k)][sampling] = record
                _log(f"[bias] {_short(name)} k={k} {sampling}: loss/optimum "
                     f"{record['final_ratio']:.4f} ({record['seconds']:.1f} s)")
        out[_short(name)] = {
            "dataset": dataset.name, "spec": name, "n": dataset.n, "d": dataset.d,
            "schedule": schedule.to_json(), "steps": schedule.steps(),
            "optimum_loss": optimum,
            "float64": {"loss": float_losses, "final_loss": float_losses[-1],
                        "final_ratio": float_losses[-1] / optimum},
            "board": runs,
            "final_ratio": {k: {s: r["final_ratio"] for s, r in by.items()}
                            for k, by in runs.items()},
        }
    return {"datasets": out}


def plot_bias(name: str, section: dict) -> bytes:
    ks = list(section["board"])
    figure = _figure(3.0 * len(ks), 6.0)
    axes = figure.subplots(2, len(ks), sharex=True, squeeze=False)
    optimum = section["optimum_loss"]
    epochs = np.arange(1, len(section["float64"]["loss"]) + 1)
    curves = [("float64", "float64 SGD", section["float64"]["loss"])]
    for col, k in enumerate(ks):
        lines = curves + [(s, f"board, {s}", section["board"][k][s]["loss"]) for s in SAMPLINGS]
        top, bottom = axes[0, col], axes[1, col]
        for key, label, losses in lines:
            style = {"color": COLOURS[key], "label": label, "marker": ".", "markersize": 3,
                     "linestyle": "--" if key == "float64" else "-"}
            top.plot(epochs, losses, **style)
            excess = np.asarray(losses) / optimum - 1
            bottom.plot(epochs, np.where(excess > 0, excess, np.nan), **style)
        top.axhline(optimum, color="black", linewidth=0.8, label="float64 optimum")
        top.set_yscale("log")
        bottom.set_yscale("log")
        top.set_title(f"k = {k}")
        bottom.set_xlabel("epoch")
    axes[0, 0].set_ylabel("training loss")
    axes[1, 0].set_ylabel("loss / optimum - 1")
    axes[0, 0].legend(fontsize="small")
    sched = section["schedule"]
    figure.suptitle(f"least squares on {section['dataset']}: step 2^{sched['step_log2']:g}, "
                    f"halved every {sched['halve_every']} epochs, batch {sched['batch']}")
    return _png(figure)


# --- 2. levels ---------------------------------------------------------------------------

def _dataset_levels(data: Normalised, k: int) -> np.ndarray:
    """The variance-optimal table :func:`train` loads for ``levels="optimal"``."""
    return grid_levels(optimal_levels(data.features.ravel(), k))


def _variances(name: str, ks: Sequence[int]) -> dict:
    data = normalise(load(name))
    values = data.features[:, :-1]              # the bias column is exact on any table
    n, d = values.shape
    out = {"dataset": name, "n": n, "d": d, "values": n * d, "k": {}}
    for k in ks:
        tables = {"uniform": grid_levels(uniform_levels(k)),
                  "optimal": _dataset_levels(data, k),
                  "per_feature": grid_levels(optimal_levels(values, k, per_feature=True))}
        total = {kind: quantisation_variance(values, table) for kind, table in tables.items()}
        per_feature = {kind: [quantisation_variance(values[:, [f]],
                                                    table if table.ndim == 1 else table[[f]])
                              for f in range(d)]
                       for kind, table in tables.items()}
        out["k"][str(k)] = {
            "total": total,
            "per_value": {kind: v / (n * d) for kind, v in total.items()},
            "reduction": total["uniform"] / total["optimal"],
            "reduction_per_feature": total["uniform"] / total["per_feature"],
            "per_feature": per_feature,
            "levels": {"uniform": tables["uniform"].tolist(),
                       "optimal": tables["optimal"].tolist()},
        }
    return out


def run_levels(plan: Plan) -> dict:
    """Experiment 2 (module docstring)."""
    variance = {name: _variances(name, plan.levels_ks) for name in plan.variance_data}
    for name, v in variance.items():
        for k, row in v["k"].items():
            _log(f"[levels] {name} k={k}: variance uniform {row['total']['uniform']:.4g}, "
                 f"optimal {row['total']['optimal']:.4g} ({row['reduction']:.3f}x less), "
                 f"per feature {row['total']['per_feature']:.4g}")
    dataset = load(plan.levels_data)
    data = normalise(dataset)
    optimum = float(reference.optimum(data.features, data.labels, "squared")[1])
    schedule, tail = plan.levels_schedule, plan.levels_tail
    configs = ([("uniform", k) for k in plan.uniform_ks]
               + [("optimal", k) for k in plan.levels_ks])
    tails: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    last: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
    tables: dict[tuple[str, int], list[float]] = {}
    warned_all: dict[tuple[str, int], list[str]] = {c: [] for c in configs}
    float_tails = []
    for seed in plan.levels_seeds:
        float_tails.append(float(np.mean(_float_sgd(data, "squared", schedule, seed)[1][-tail:])))
        for kind, k in configs:
            result, warned = _board_train(dataset, schedule, seed=seed, bits=k, levels=kind)
            losses = [r.loss for r in result.history]
            tails[kind, k].append(float(np.mean(losses[-tail:])))
            last[kind, k].append(losses[-1])
            tables[kind, k] = result.levels.tolist()
            warned_all[kind, k] += [w for w in warned if w not in warned_all[kind, k]]
            if kind == "optimal" and not np.array_equal(result.levels,
                                                        _dataset_levels(data, k)):
                raise RuntimeError("the board's optimal level table differs from the one "
                                   "whose variance is reported")
        _log(f"[levels] {plan.levels_data} seed {seed}: " + ", ".join(
            f"{kind} k={k} {tails[kind, k][-1] / optimum:.4f}" for kind, k in configs))
    float_mean = float(np.mean(float_tails))

    def summary(kind: str, k: int) -> dict:
        t = np.asarray(tails[kind, k])
        paired = t / optimum - np.asarray(float_tails) / optimum
        return {"loss": float(t.mean()), "loss_per_seed": t.tolist(),
                "ratio": float(t.mean()) / optimum,
                "excess_over_float64": float(paired.mean()),
                "excess_stderr": (float(paired.std(ddof=1) / math.sqrt(len(paired)))
                                  if len(paired) > 1 else None),
                "last_epoch_loss": float(np.mean(last[kind, k])),
                "levels": tables[kind, k], "warnings": warned_all[kind, k]}

    uniform = {str(k): summary("uniform", k) for k in plan.uniform_ks}
    optimal = {str(k): summary("optimal", k) for k in plan.levels_ks}
    for k in plan.levels_ks:
        # Paired by seed: every table sees the same shuffles and the same uniform draws.
        mine = np.asarray(tails["optimal", k]) / optimum
        differences = {}
        for u in plan.uniform_ks:
            d = mine - np.asarray(tails["uniform", u]) / optimum
            differences[str(u)] = {
                "mean": float(d.mean()),
                "stderr": float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else None}
        optimal[str(k)]["minus_uniform"] = differences
    needed = {}
    for k in plan.levels_ks:
        target = optimal[str(k)]["loss"]
        fits = [u for u in plan.uniform_ks if uniform[str(u)]["loss"] <= target]
        bits = min(fits) if fits else None
        needed[str(k)] = {"uniform_k": bits,
                          "bits_per_value_optimal": k + 2,
                          "bits_per_value_uniform": None if bits is None else bits + 2,
                          "data_movement_ratio": None if bits is None else (bits + 2) / (k + 2)}
    return {
        "variance": variance,
        "board": {"dataset": dataset.name, "optimum_loss": optimum,
                  "schedule": schedule.to_json(), "tail_epochs": tail,
                  "seeds": list(plan.levels_seeds),
                  "loss_definition": "training loss averaged over the last tail_epochs "
                                     "epochs, then over the seeds (double sampling)",
                  "float64": {"loss": float_mean, "ratio": float_mean / optimum,
                              "loss_per_seed": float_tails},
                  "uniform": uniform, "optimal": optimal},
        "bits_needed": needed,
        "bits_needed_definition": "the smallest uniform k whose loss (board.uniform.<k>.loss) "
                                  "is at most that of optimal levels at k; compare the "
                                  "paired differences board.optimal.<k>.minus_uniform "
                                  "with their standard errors",
    }


def plot_levels(section: dict) -> bytes:
    board = section["board"]
    name = board["dataset"]
    variance = section["variance"][name]
    ks = list(variance["k"])
    figure = _figure(13.5, 4.0)
    hist, bars, loss = figure.subplots(1, 3)
    values = normalise(load(name)).features[:, :-1].ravel()
    hist.hist(values, bins=128, range=(-1, 1), color="lightgray")
    top = hist.get_ylim()[1]
    for row, k in enumerate(ks):
        for col, kind in enumerate(("uniform", "optimal")):
            y = top * (1.02 + 0.08 * (2 * row + col))
            levels = variance["k"][k]["levels"][kind]
            hist.plot(levels, [y] * len(levels), "|", markersize=9, color=COLOURS[kind],
                      label=f"{kind} levels" if row == 0 else None)
            hist.text(-1.0, y, f"k={k} ", ha="right", va="center", fontsize="x-small")
    hist.set_ylim(0, top * (1.1 + 0.16 * len(ks)))
    hist.set_xlabel("normalised feature value")
    hist.set_ylabel("count")
    hist.set_title(f"{name}: levels over the data")
    hist.legend(fontsize="small", loc="center left")
    x = np.arange(len(ks))
    kinds = ("uniform", "optimal", "per_feature")
    for i, kind in enumerate(kinds):
        bars.bar(x + (i - 1) * 0.27, [variance["k"][k]["total"][kind] for k in ks], 0.27,
                 color=COLOURS[kind], label=TABLES[kind])
    bars.set_xticks(x, [f"k = {k}" for k in ks])
    bars.set_ylabel("total quantisation variance")
    bars.set_title("variance of the data")
    bars.legend(fontsize="small")
    uk = [int(k) for k in board["uniform"]]
    loss.plot(uk, [board["uniform"][str(k)]["ratio"] - 1 for k in uk], "o-",
              color=COLOURS["uniform"], label="board, uniform levels")
    ok = [int(k) for k in board["optimal"]]
    loss.plot(ok, [board["optimal"][str(k)]["ratio"] - 1 for k in ok], "s",
              markersize=8, color=COLOURS["optimal"], label="board, optimal levels")
    loss.axhline(board["float64"]["ratio"] - 1, color="black", linestyle="--",
                 label="float64 SGD")
    loss.set_yscale("log")
    loss.set_xticks(uk)
    loss.set_xlabel("k (bits)")
    loss.set_ylabel("loss / optimum - 1")
    loss.set_title(f"double sampling, last {board['tail_epochs']} epochs, "
                   f"{len(board['seeds'])} seed(s)")
    loss.legend(fontsize="small")
    return _png(figure)


def plot_levels_per_feature(section: dict) -> bytes:
    variance = section["variance"]
    names = list(variance)
    ks = list(variance[names[0]]["k"])
    figure = _figure(6.0 * len(ks), 3.4 * len(names))
    axes = figure.subplots(len(names), len(ks), squeeze=False)
    for row, name in enumerate(names):
        for col, k in enumerate(ks):
            ax = axes[row, col]
            per = variance[name]["k"][k]["per_feature"]
            x = np.arange(variance[name]["d"])
            for i, kind in enumerate(("uniform", "optimal", "per_feature")):
                ax.bar(x + (i - 1) * 0.27, per[kind], 0.27, color=COLOURS[kind],
                       label=TABLES[kind])
            row_k = variance[name]["k"][k]
            ax.set_title(f"{name}, k = {k}: variance {row_k['reduction']:.2f}x less than "
                         f"uniform\nwith data-set levels, "
                         f"{row_k['reduction_per_feature']:.2f}x with per-feature levels",
                         fontsize="medium")
            ax.set_xlabel("feature")
            ax.set_ylabel("quantisation variance")
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center",
                  ncols=3, fontsize="small")
    return _png(figure)


# --- 3. classification -------------------------------------------------------------------

def run_classification(plan: Plan) -> dict:
    """Experiment 3 (module docstring)."""
    dataset = load(plan.class_data)
    training, test = split(dataset, test_fraction=plan.test_fraction, seed=plan.seed)
    data = normalise(training)
    test_data = normalise(test, like=data)
    schedule = plan.class_schedule
    out = {"dataset": dataset.name, "n_train": training.n, "n_test": test.n, "d": dataset.d,
           "test_fraction": plan.test_fraction, "split_seed": plan.seed,
           "schedule": schedule.to_json(), "losses": {}}
    for loss in plan.losses:
        sklearn = reference.sklearn_baseline(training, test, loss)
        model, float_losses = _float_sgd(data, loss, schedule, plan.seed)
        float_acc = reference.accuracy(test_data.features, test_data.labels, model)
        runs = {}
        optimum_loss = None
        for k in plan.class_ks:
            result, warned = _board_train(training, schedule, seed=plan.seed, bits=k, loss=loss)
            optimum_loss = result.optimum_loss
            # Separable data: no finite logistic optimum, a hinge optimum of 0.
            separable = optimum_loss is None or optimum_loss < 1e-9
            if not np.array_equal(result.data.features, data.features):
                raise RuntimeError("train() normalised the training split differently")
            accuracy = reference.accuracy(test_data.features, test_data.labels,
                                          result.coefficients)
            runs[str(k)] = {"test_accuracy": accuracy,
                            "train_accuracy": result.history[-1].accuracy,
                            "final_loss": result.loss,
                            "loss": [r.loss for r in result.history],
                            "final_ratio": (result.loss / result.optimum_loss
                                            if not separable else None),
                            "saturated": any(r.overflow or r.clipped for r in result.history),
                            "warnings": warned}
            _log(f"[classification] {loss} k={k}: test accuracy {accuracy:.4f} "
                 f"(scikit-learn {sklearn:.4f})")
        out["losses"][loss] = {
            "sklearn": {"test_accuracy": sklearn,
                        "estimator": "LogisticRegression" if loss == "logistic" else
                                     f"LinearSVC(loss={loss!r})",
                        "settings": "C = 1, no separate intercept (the bias column is a "
                                    "feature), reference.sklearn_baseline"},
            "float64_sgd": {"test_accuracy": float_acc, "final_loss": float_losses[-1]},
            "optimum_loss": optimum_loss,
            "separable": optimum_loss is None or optimum_loss < 1e-9,
            "board": runs,
        }
    return out


def plot_classification(section: dict) -> bytes:
    losses = list(section["losses"])
    figure = _figure(4.2 * len(losses), 3.6)
    axes = figure.subplots(1, len(losses), squeeze=False)[0]
    for ax, loss in zip(axes, losses, strict=True):
        entry = section["losses"][loss]
        ks = [int(k) for k in entry["board"]]
        ax.plot(ks, [entry["board"][str(k)]["test_accuracy"] for k in ks], "o-",
                color=COLOURS["double"], label="board, double sampling (test)")
        ax.plot(ks, [entry["board"][str(k)]["train_accuracy"] for k in ks], ".:",
                color=COLOURS["double"], alpha=0.6, label="board (training)")
        ax.axhline(entry["sklearn"]["test_accuracy"], color="tab:green",
                   label=f"scikit-learn {entry['sklearn']['estimator'].split('(')[0]} (test)")
        ax.axhline(entry["float64_sgd"]["test_accuracy"], color="black", linestyle="--",
                   label="float64 SGD (test)")
        ax.set_xticks(ks)
        ax.set_xlabel("k (bits)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{section['dataset']}: {loss.replace('_', ' ')} loss")
        ax.legend(fontsize="x-small", loc="lower right")
    return _png(figure)


# --- 4. throughput -----------------------------------------------------------------------

def _board_key(params: EngineParams) -> str:
    """A ``BOARD_PARAMS`` key whose limits ``train`` checks ``params`` against first."""
    return "sim" if params.beat_bits == BOARD_PARAMS["sim"].beat_bits else "sim-ulx3s"


def _measure(dataset: Dataset, params: EngineParams, k: int, batch: int, step: float,
             seed: int, flatten: bool | None = None) -> dict:
    from ziphalp.sim.board import simulated_board

    schedule = Schedule(step, batch, 1)
    with simulated_board(params, flatten=flatten) as sim:
        result, warned = _board_train(dataset, schedule, seed=seed, bits=k,
                                      board=_board_key(params), port=sim.url)
    record = result.history[-1]
    if record.samples != dataset.n:
        raise RuntimeError(f"the board counted {record.samples} samples, not {dataset.n}")
    values = params.values_per_beat(k, True)
    beats = 1 + params.beats_for(dataset.d + 1, k, True)
    return {"k": k, "values_per_beat": values, "beats_per_sample": beats,
            "cycles_per_epoch": record.cycles, "cycles_per_sample": record.cycles / dataset.n,
            "seconds_per_epoch_at_clock": record.cycles / params.clock_hz,
            "warnings": warned}


def run_throughput(plan: Plan) -> dict:
    """Experiment 4 (module docstring)."""
    from ziphalp.sim.board import simulated_board

    dataset = load(plan.throughput_data)
    out = {"dataset": dataset.name, "n": dataset.n, "d": dataset.d, "epochs": 1,
           "sampling": "double", "step": plan.throughput_step,
           "ratio_definitions": {
               "vs_baseline": "cycles per epoch of the baseline build / cycles per epoch at k",
               "vs_k8": "cycles per epoch at k = 8 / cycles per epoch at k",
               "beats_vs_baseline": "beats per sample of the baseline / beats per sample at "
                                    "k (what the ratio would be without the per-batch cost "
                                    "of the model update): computed, not measured"},
           "engines": {}}
    for engine in plan.engines:
        builds = {}
        for name, params in ((engine.name, engine.params),
                             (engine.baseline_name, engine.baseline)):
            _log(f"[throughput] simulated board {name} (lanes {params.lanes}, "
                 f"{params.beat_bits}-bit beats): building or finding it in the cache "
                 "(a first build of a wide engine takes minutes)")
            binary = simulated_board(params, flatten=engine.flatten).build()
            builds[name] = {"built": binary.built, "seconds": binary.seconds}
        batch = engine.params.max_batch
        runs = {}
        for k in plan.throughput_ks:
            runs[str(k)] = _measure(dataset, engine.params, k, batch, plan.throughput_step,
                                    plan.seed, engine.flatten)
            _log(f"[throughput] {engine.name} k={k}: {runs[str(k)]['cycles_per_epoch']} "
                 "cycles per epoch")
        baseline_k = max(plan.throughput_ks)
        base = _measure(dataset, engine.baseline, baseline_k, batch, plan.throughput_step,
                        plan.seed, engine.flatten)
        _log(f"[throughput] {engine.baseline_name}: {base['cycles_per_epoch']} cycles per epoch")
        k8 = runs[str(max(plan.throughput_ks))]
        for run in runs.values():
            run["vs_baseline"] = base["cycles_per_epoch"] / run["cycles_per_epoch"]
            run["vs_k8"] = k8["cycles_per_epoch"] / run["cycles_per_epoch"]
            run["beats_vs_baseline"] = base["beats_per_sample"] / run["beats_per_sample"]
        out["engines"][engine.name] = {
            "note": engine.note, "batch": batch,
            "params": dataclasses.asdict(engine.params),
            "baseline": {"name": engine.baseline_name,
                         "params": dataclasses.asdict(engine.baseline), "k": baseline_k,
                         **base},
            "builds": builds,
            "runs": runs,
        }
    return out


def plot_throughput(section: dict) -> bytes:
    engines = list(section["engines"])
    figure = _figure(5.0 * len(engines), 3.8)
    axes = figure.subplots(1, len(engines), squeeze=False)[0]
    for ax, name in zip(axes, engines, strict=True):
        entry = section["engines"][name]
        ks = list(entry["runs"])
        labels = [f"k = {k}" for k in ks] + [entry["baseline"]["name"]]
        cycles = [entry["runs"][k]["cycles_per_epoch"] for k in ks]
        cycles.append(entry["baseline"]["cycles_per_epoch"])
        colours = [COLOURS["double"]] * len(ks) + [COLOURS["uniform"]]
        ax.bar(range(len(labels)), cycles, color=colours)
        for i, k in enumerate(ks):
            ax.text(i, cycles[i], f"{entry['runs'][k]['vs_baseline']:.2f}x",
                    ha="center", va="bottom", fontsize="small")
        ax.set_xticks(range(len(labels)), labels, fontsize="small")
        ax.set_ylabel("engine cycles per epoch")
        ax.set_title(f"{name}: {entry['params']['beat_bits']}-bit beats, "
                     f"{entry['params']['lanes']} lanes, batch {entry['batch']}\n"
                     "(label: speed-up over the baseline)", fontsize="medium")
    figure.suptitle(f"double sampling, {section['dataset']}, one epoch")
    return _png(figure)


# --- the document ------------------------------------------------------------------------

def _clean(value, path: str, notes: list[str]):
    """``value`` with numpy scalars as Python numbers and non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): _clean(v, f"{path}.{k}", notes) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, f"{path}[{i}]", notes) for i, v in enumerate(value)]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        if not math.isfinite(value):
            notes.append(f"{path} was {value}")
            return None
        return float(value)
    return value


def run(plan: Plan, out: Path,
        log: Callable[[str], None] = _log) -> dict:
    """Run every experiment of ``plan``; write ``zipml.json`` and the figures into ``out``."""
    from ziphalp.sim.board import _sources_digest

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    gateware = _sources_digest("ziphalp.hw")
    sections = {}
    for key, runner in (("bias", run_bias), ("levels", run_levels),
                        ("classification", run_classification),
                        ("throughput", run_throughput)):
        begin = time.monotonic()
        log(f"== {key}")
        sections[key] = runner(plan)
        sections[key]["seconds"] = time.monotonic() - begin
    figures = {f"bias_{name}.png": plot_bias(name, section)
               for name, section in sections["bias"]["datasets"].items()}
    figures["levels.png"] = plot_levels(sections["levels"])
    figures["levels_per_feature.png"] = plot_levels_per_feature(sections["levels"])
    figures["classification.png"] = plot_classification(sections["classification"])
    figures["throughput.png"] = plot_throughput(sections["throughput"])
    for name, data in figures.items():
        write_atomic(out / name, data)
    settings = plan.to_json()
    settings["figures"] = sorted(figures)
    settings["engine_note"] = ("low-precision runs on the simulated board (the gateware "
                               "compiled with CXXRTL), through ziphalp.host.train.train")
    settings["gateware"] = {"hw_sources_sha256": gateware,
                            "changed_during_run": _sources_digest("ziphalp.hw") != gateware}
    if settings["gateware"]["changed_during_run"]:
        log("warning: the gateware sources (ziphalp.hw) changed during the run; later "
            "experiments ran the changed gateware")
    notes: list[str] = []
    document = _clean({"format": FORMAT, "settings": settings, **sections,
                       "seconds": time.monotonic() - start}, "", notes)
    if notes:
        document["settings"]["non_finite"] = notes
    write_atomic(out / "zipml.json", (json.dumps(document, indent=1) + "\n").encode())
    return document


def summary(document: dict) -> str:
    """A short human-readable table of the results."""
    lines = ["ZipML reproduction on the simulated board", "",
             "1. least squares: final loss / optimum"]
    lines.append(f"  {'dataset':<10} {'k':>2} {'float64':>9} "
                 + " ".join(f"{s:>9}" for s in SAMPLINGS))
    for name, section in document["bias"]["datasets"].items():
        for k, row in section["final_ratio"].items():
            lines.append(f"  {name:<10} {k:>2} {section['float64']['final_ratio']:9.4f} "
                         + " ".join(f"{row[s]:9.4f}" for s in SAMPLINGS))
    levels = document["levels"]
    lines += ["", "2. variance-optimal levels: total quantisation variance (x less than uniform)"]
    for name, v in levels["variance"].items():
        for k, row in v["k"].items():
            t = row["total"]
            lines.append(f"  {name:<13} k={k}: uniform {t['uniform']:9.4g}  optimal "
                         f"{t['optimal']:9.4g} ({row['reduction']:.3f}x)  per feature "
                         f"{t['per_feature']:9.4g} ({row['reduction_per_feature']:.3f}x)")
    board = levels["board"]
    lines.append(f"  {board['dataset']}, double sampling, loss / optimum (float64 SGD "
                 f"{board['float64']['ratio']:.4f}):")
    lines.append("    uniform: " + "  ".join(f"k={k} {r['ratio']:.4f}"
                                             for k, r in board["uniform"].items()))
    for k, r in board["optimal"].items():
        bits = levels["bits_needed"][k]["uniform_k"]
        same = r["minus_uniform"][k]
        spread = "" if same["stderr"] is None else f" +- {same['stderr']:.4f}"
        lines.append(f"    optimal k={k}: {r['ratio']:.4f} (minus uniform k={k}: "
                     f"{same['mean']:+.4f}{spread}); uniform needs k = "
                     f"{bits if bits is not None else '> ' + str(max(map(int, board['uniform'])))}")
    lines += ["", "3. breast_cancer test accuracy, double sampling (scikit-learn, float64 SGD)"]
    for loss, entry in document["classification"]["losses"].items():
        accs = " ".join(f"{k}:{r['test_accuracy']:.3f}" for k, r in entry["board"].items())
        lines.append(f"  {loss:<13} k {accs}  (sklearn {entry['sklearn']['test_accuracy']:.3f}, "
                     f"float64 {entry['float64_sgd']['test_accuracy']:.3f})")
    lines += ["", "4. cycles per epoch, double sampling (speed-up over the baseline / over k=8)"]
    for name, entry in document["throughput"]["engines"].items():
        base = entry["baseline"]
        lines.append(f"  {name} ({entry['params']['lanes']} lanes, batch {entry['batch']}); "
                     f"{base['name']}: {base['cycles_per_epoch']} cycles")
        for k, r in entry["runs"].items():
            lines.append(f"    k={k}: {r['values_per_beat']:2d} values/beat "
                         f"{r['cycles_per_epoch']:9d} cycles  {r['vs_baseline']:5.2f}x  "
                         f"{r['vs_k8']:5.2f}x")
    lines += ["", f"{document['seconds']:.0f} s in all"]
    return "\n".join(lines)


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ziphalp.sim.reproduce_zipml",
        description="Reproduce the ZipML paper's results (bias of naive quantisation, "
                    "variance-optimal levels, classification accuracy, throughput) on the "
                    "simulated board: the real gateware compiled with CXXRTL. Writes "
                    "OUT/zipml.json and PNG figures and prints a summary.",
        epilog="A full run takes 15 to 20 minutes, plus several minutes the first time "
               "the ULX3S engine's simulated board is compiled (cached under "
               "~/.cache/ziphalp).")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (created if missing)")
    parser.add_argument("--quick", action="store_true",
                        help="a small, fast version (about a minute once the simulated "
                             "boards are built): small synthetic set, few epochs, k = 1, 2, "
                             "8, one seed, and a 32-bit 8-lane engine for the wide "
                             "throughput runs instead of the ULX3S engine")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="epochs of every training run of experiments 1-3 (default: "
                             "per experiment; the step schedules keep their number of "
                             "halvings); throughput always runs one epoch")
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="seed of the synthetic data, the train/test split and the "
                             "training draws (default 1)")
    args = parser.parse_args(None if argv is None else [os.fspath(a) for a in argv])
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be at least 1")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    plan = make_plan(args.quick, args.epochs, args.seed)
    document = run(plan, args.out)
    print(summary(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
