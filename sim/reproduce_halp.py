"""Reproduce the HALP paper's central result on the simulated board: bit-centering SVRG
in hardware converges linearly at 8 (and 4) bits where low-precision SGD stalls.

``python -m ziphalp.sim.reproduce_halp --out DIR [--quick] [--epochs N] [--seed S]
[--board KIND] [--port URL]``

The hardware numbers come from the engine's HALP mode on the simulated ULX3S
board (``sim-ulx3s``: the real gateware compiled with CXXRTL, :mod:`ziphalp.sim.board`),
driven through :func:`ziphalp.host.train.train` with ``algo="halp"`` exactly as a
physical board would be; ``--port`` points the runs at another board (a real one,
or in the tests a golden-model fake). The float64 references come from
:mod:`ziphalp.host.halp_reference`. Nothing is tuned after the fact: every run
uses the defaults of :func:`~ziphalp.host.train.train` (step ``1/(4L)`` rounded to
a power of two, ``T = n`` inner steps, ``mu`` from
:func:`~ziphalp.host.train.halp_default_mu`).

Problems (features normalised to [-1, 1], then rounded once to the nearest of the
uniform 8-bit levels, labels to ``LABEL`` words: the quantised problem the board
holds; every method, float or not, optimises this same problem and is measured
against its exact optimum ``f*``):

* ``least_squares``: a synthetic regression (HALP paper style: uniform features,
  a random linear model, Gaussian noise), ``f = mean (a.w - y)^2 / 2``.
* ``logistic``: a synthetic classification set whose labels are the sign of a
  noisy linear model (noise 0.5: many labels flipped near the boundary), so the
  logistic loss has a finite optimum. The bundled classification sets are
  linearly separable after quantisation (checked in ``separability``): there
  the logistic loss has no minimiser and no suboptimality can be measured.

Methods, each over the same budget of passes over the data (an SVRG-type outer
iteration is ``(n + T) / n`` passes: a full-gradient pass plus ``T`` inner steps):

==================  ==================================================================
``board_halp_b8``   the engine's HALP mode, 8-bit offsets
``board_halp_b4``   the same, 4-bit offsets
``board_halp_mb8_b8`` 8-bit offsets, the inner loop in mini-batches of 8 (the same
                    step on the batch mean): fewer model updates, fewer cycles
``sgd``             float64 SGD, batch 1, the same step
``lp_sgd_b<b>``     SGD with the model on a fixed b-bit grid (stochastic rounding) whose
                    range is twice the optimum's largest coordinate (an oracle choice,
                    generous to the fixed grid)
``svrg``            float64 SVRG, the same step and ``T``
``lp_svrg_b<b>``    SVRG on the same fixed b-bit grid
``halp_b<b>``       float64 HALP with the board's ``mu``, power-of-two grid
==================  ==================================================================

Outputs in ``DIR`` (written atomically): ``halp.json`` (format ``ziphalp-halp/1``)
and one figure per problem, ``halp_<problem>.png`` (log-scale suboptimality
against passes). The main entries of ``halp.json``::

    settings            the plan: problems, budget of passes, b values, seed, board
    separability.<name> whether the bundled classification set is linearly separable
                        at 8 bits
    problems.<least_squares|logistic>
        dataset, n, d, loss, data_bits, optimum_loss, optimum_data, step, shift,
        inner_steps, mu.<b>
        methods.<name>  kind ("board" | "float64"), bits, epochs (passes so far, from
                        0), suboptimality (per entry), epochs_to_1e-3, epochs_to_1e-6
                        (first pass count at or below, null if never),
                        final_suboptimality (after the budget), and for the board:
                        cycles.{full_per_iteration, inner_per_iteration, per_epoch,
                        full_per_sample, inner_per_sample}, overflow, clipped

``--quick`` runs small problems over a few passes (the test suite runs it against
a golden-model board).
"""

from __future__ import annotations

import argparse
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
from ziphalp.host import halp_reference as hr
from ziphalp.host import reference
from ziphalp.host.data import load, normalise
from ziphalp.host.report import write_atomic
from ziphalp.host.train import TrainResult, quantised_problem, train
from ziphalp.hw.params import BOARD_PARAMS

__all__ = ["FORMAT", "TARGETS", "Plan", "main", "make_plan", "run", "summary"]

#: The ``format`` of ``halp.json``.
FORMAT = "ziphalp-halp/1"
#: Suboptimality targets of ``epochs_to_<target>``.
TARGETS = (1e-3, 1e-6)
#: Data precision of every problem (the same quantised problem for every b).
DATA_BITS = 8
#: Bundled classification sets checked for separability.
CLASSIFICATION_SETS = ("breast_cancer", "digits:3,8", "digits:1,7")


@dataclass(frozen=True)
class Plan:
    """What :func:`run` does."""

    quick: bool
    seed: int
    problems: dict[str, tuple[str, str]]      # key -> (data set spec, loss)
    bits: tuple[int, ...]
    passes: int                               # budget of passes over the data
    batches: tuple[int, ...] = (8,)           # extra board runs at 8 bits: inner batch B

    def to_json(self) -> dict:
        return {"quick": self.quick, "seed": self.seed, "bits": list(self.bits),
                "batches": list(self.batches),
                "data_bits": DATA_BITS, "passes": self.passes,
                "problems": {key: {"dataset": spec, "loss": loss}
                             for key, (spec, loss) in self.problems.items()},
                "targets": list(TARGETS)}


def make_plan(quick: bool = False, epochs: int | None = None, seed: int = 1) -> Plan:
    """The full run or ``--quick``; ``epochs`` overrides the budget of passes (even,
    so that the SVRG-type methods run whole outer iterations)."""
    if epochs is not None and epochs < 2:
        raise ValueError(f"epochs must be at least 2, not {epochs}")
    if quick:
        problems = {"least_squares": (f"synthetic:n=300,d=8,seed={seed}", "squared"),
                    "logistic": (f"synthetic-class:n=300,d=8,seed={seed},noise=0.5",
                                 "logistic")}
        passes = 12
    else:
        problems = {"least_squares": (f"synthetic:n=2000,d=32,seed={seed}", "squared"),
                    "logistic": (f"synthetic-class:n=2000,d=32,seed={seed},noise=0.5",
                                 "logistic")}
        passes = 40
    if epochs is not None:
        passes = epochs + epochs % 2
    return Plan(quick, seed, problems, (8, 4), passes)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _epochs_to(epochs: Sequence[float], values: Sequence[float], target: float) -> float | None:
    for epoch, value in zip(epochs, values, strict=True):
        if value is not None and value <= target:
            return epoch
    return None


def _method(kind: str, bits: int | None, epochs: list[float], values: list[float],
            **extra) -> dict:
    entry = {"kind": kind, "bits": bits, "epochs": epochs, "suboptimality": values}
    for target in TARGETS:
        entry[f"epochs_to_{target:.0e}".replace("e-0", "e-")] = _epochs_to(epochs, values,
                                                                           target)
    entry["final_suboptimality"] = values[-1]
    entry.update(extra)
    return entry


def _float_method(result: hr.Result, per_epoch: float, bits: int | None) -> dict:
    epochs = [e.epoch * per_epoch for e in result.history]
    return _method("float64", bits, epochs, [e.suboptimality for e in result.history])


def _board_method(result: TrainResult, f0: float, batch: int = 1) -> dict:
    s = result.settings
    n, steps = result.dataset.n, s["inner_steps"]
    history = result.history
    epochs = [0.0] + [r.epoch for r in history]
    values = [f0] + [r.suboptimality for r in history]
    full = float(np.mean([r.full_cycles for r in history]))
    inner = float(np.mean([r.inner_cycles for r in history]))
    cycles = {"full_per_iteration": full, "inner_per_iteration": inner,
              "per_iteration": full + inner,
              "per_epoch": (full + inner) / ((n + steps) / n),
              "full_per_sample": full / n, "inner_per_sample": inner / steps,
              "seconds_per_iteration_at_clock": (full + inner) / result.identity.clock_hz}
    return _method("board", s["offset_bits"], epochs, values, cycles=cycles, batch=batch,
                   stale=s["stale"],
                   mu=s["mu"], overflow=any(r.overflow for r in history),
                   clipped=any(r.clipped for r in history),
                   seconds=sum(r.seconds for r in history))


def _separability() -> dict:
    out = {}
    for name in CLASSIFICATION_SETS:
        problem = quantised_problem(normalise(load(name)), DATA_BITS, "logistic")
        out[name] = {"separable": bool(problem.separable), "n": len(problem.labels),
                     "d": problem.features.shape[1] - 1}
    return out


def run_problem(plan: Plan, key: str, board: str, port: str | None) -> dict:
    """One problem: the board at every b, then the float64 references."""
    spec, loss = plan.problems[key]
    dataset = load(spec)
    boards: dict[int, TrainResult] = {}
    iterations = plan.passes // 2
    batched: dict[int, TrainResult] = {}
    exact: TrainResult | None = None
    # the board's default delay (stale), then exact HALP (stale 0) at 8 bits
    runs = ([(b, 1, None) for b in plan.bits] + [(8, B, None) for B in plan.batches]
            + [(8, 1, 0)])
    for bits, batch, stale in runs:
        begin = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = train(dataset, board=board, port=port, algo="halp", loss=loss,
                           bits=bits, data_bits=DATA_BITS, epochs=iterations, batch=batch,
                           seed=plan.seed, progress=False, stale=stale)
        if stale == 0:
            exact = result
        else:
            (boards if batch == 1 else batched)[bits if batch == 1 else batch] = result
        last = result.history[-1].suboptimality
        _log(f"[{key}] board HALP b={bits} batch {batch} stale {result.settings['stale']}: "
             f"suboptimality {last:.3e} after {result.history[-1].epoch:g} passes "
             f"({time.monotonic() - begin:.1f} s)"
             + "".join(f"; warning: {w.message}" for w in caught))
    first = boards[plan.bits[0]]
    problem, s = first.problem, first.settings
    if first.optimum_loss is None:
        raise RuntimeError(f"{spec}: the quantised problem has no finite optimum")
    f_star = first.optimum_loss
    q, y, x_star = problem.features, problem.labels, first.optimum
    alpha, steps = s["step"], s["inner_steps"]
    per_outer = (len(y) + steps) / len(y)
    f0 = (reference.objective(q, y, np.zeros(q.shape[1]), s["loss"]) - f_star) / f_star
    methods = {f"board_halp_b{b}": _board_method(boards[b], f0) for b in plan.bits}
    methods.update({f"board_halp_mb{B}_b8": _board_method(batched[B], f0, batch=B)
                    for B in plan.batches})
    methods["board_halp_exact_b8"] = _board_method(exact, f0)
    common = {"alpha": alpha, "f_star": f_star, "seed": plan.seed}
    methods["sgd"] = _float_method(hr.sgd(q, y, s["loss"], epochs=plan.passes, **common),
                                   1.0, None)
    methods["svrg"] = _float_method(hr.svrg(q, y, s["loss"], epochs=iterations, inner=steps,
                                            **common), per_outer, None)
    for b in plan.bits:
        scale = 2.0 * float(np.max(np.abs(x_star))) / (2 ** (b - 1) - 1)
        methods[f"lp_sgd_b{b}"] = _float_method(
            hr.lp_sgd(q, y, s["loss"], scale=scale, bits=b, epochs=plan.passes, **common),
            1.0, b)
        methods[f"lp_svrg_b{b}"] = _float_method(
            hr.lp_svrg(q, y, s["loss"], scale=scale, bits=b, epochs=iterations, inner=steps,
                       **common), per_outer, b)
        methods[f"halp_b{b}"] = _float_method(
            hr.halp(q, y, s["loss"], bits=b, mu=boards[b].settings["mu"], epochs=iterations,
                    inner=steps, power_of_two=True, **common), per_outer, b)
        # float64 HALP with the board's delay (stale) in the inner loop
        methods[f"halp_delayed_b{b}"] = _float_method(
            hr.halp(q, y, s["loss"], bits=b, mu=boards[b].settings["mu"], epochs=iterations,
                    inner=steps, power_of_two=True, delay=boards[b].settings["stale"],
                    **common), per_outer, b)
    for name, entry in methods.items():
        if entry["kind"] == "float64":
            _log(f"[{key}] {name}: suboptimality {entry['final_suboptimality']:.3e}")
    return {
        "dataset": dataset.name, "spec": spec, "n": dataset.n, "d": dataset.d, "loss": s["loss"],
        "data_bits": s["data_bits"], "optimum_loss": f_star, "optimum_data": problem.description,
        "step": alpha, "shift": s["shift"], "inner_steps": steps,
        "mu": {str(b): boards[b].settings["mu"] for b in plan.bits},
        "epochs_per_iteration": per_outer,
        "methods": methods,
    }


# --- figures -------------------------------------------------------------------------------

STYLES = {"board_halp": ("tab:blue", "-", "o"), "board_halp_mb": ("tab:green", "-", "s"),
          "board_halp_exact": ("tab:purple", "-", "^"),
          "halp": ("tab:blue", "--", None), "halp_delayed": ("tab:cyan", "--", None),
          "sgd": ("black", ":", None), "lp_sgd": ("tab:red", "-", None),
          "svrg": ("black", "-.", None), "lp_svrg": ("tab:orange", "-", None)}
FLOOR = 1e-16


def _style(name: str, bits: int | None) -> dict:
    family = name.rsplit("_b", 1)[0] if bits is not None else name
    if family.startswith("board_halp_mb"):      # the inner loop in mini-batches
        family = "board_halp_mb"
    colour, line, marker = STYLES[family]
    dim = bits is not None and bits < 8
    return {"color": colour, "linestyle": line, "marker": marker, "markersize": 3,
            "alpha": 0.55 if dim else 1.0, "linewidth": 1.0 if dim else 1.6}


def plot_problem(key: str, section: dict) -> bytes:
    figure = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, entry in section["methods"].items():
        values = np.array([np.nan if v is None else v for v in entry["suboptimality"]], float)
        axes.plot(entry["epochs"], np.maximum(values, FLOOR), label=name,
                  **_style(name, entry["bits"]))
    for target in TARGETS:
        axes.axhline(target, color="grey", linewidth=0.6)
    axes.set_yscale("log")
    axes.set_xlabel("epochs (passes over the data)")
    axes.set_ylabel("(f - f*) / f*")
    axes.set_title(f"{key.replace('_', ' ')} on {section['spec']}, {section['data_bits']}-bit "
                   f"data, step 2^-{section['shift']}, T = {section['inner_steps']}",
                   fontsize="medium")
    axes.legend(fontsize="small", ncol=2)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


# --- the document ----------------------------------------------------------------------------

def json_ready(value):
    """``value`` with NumPy scalars as Python numbers, non-finite floats as None and
    dict keys as strings (what ``json`` writes)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    return value


def run(plan: Plan, out: Path, board: str = "sim-ulx3s", port: str | None = None,
        log: Callable[[str], None] = _log) -> dict:
    """Run ``plan`` on ``board`` (at ``port``, or a simulated board started here); write
    ``halp.json`` and the figures into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    separability = _separability()
    log("separable at 8 bits: " + ", ".join(f"{name} {entry['separable']}"
                                            for name, entry in separability.items()))
    problems = {}
    # without a port every run starts its own simulated board (a simulated board takes
    # one connection; its compiled gateware is cached, so only the first one builds)
    for key in plan.problems:
        begin = time.monotonic()
        problems[key] = run_problem(plan, key, board, port)
        problems[key]["seconds"] = time.monotonic() - begin
    figures = {f"halp_{key}.png": plot_problem(key, section)
               for key, section in problems.items()}
    for name, data in figures.items():
        write_atomic(out / name, data)
    settings = plan.to_json()
    settings.update(board=board, port=port, figures=sorted(figures),
                    engine_note="board runs through ziphalp.host.train.train(algo='halp') "
                                f"on {board}" + (f" at {port}" if port else
                                                 " (the gateware compiled with CXXRTL)"))
    document = json_ready({"format": FORMAT, "settings": settings, "separability": separability,
                       "problems": problems, "seconds": time.monotonic() - start})
    write_atomic(out / "halp.json", (json.dumps(document, indent=1) + "\n").encode())
    return document


def _fmt(value: float | None) -> str:
    return "never" if value is None else f"{value:g}"


def summary(document: dict) -> str:
    """A short table of the results."""
    lines = [f"HALP reproduction on {document['settings']['board']}: relative suboptimality "
             f"after {document['settings']['passes']} passes; passes to reach 1e-3 / 1e-6"]
    for key, section in document["problems"].items():
        lines += ["", f"{key} ({section['spec']}, f* = {section['optimum_loss']:.6g})"]
        for name, entry in section["methods"].items():
            final = entry["final_suboptimality"]
            lines.append(f"  {name:<19} {final if final is not None else float('nan'):10.3e}"
                         f"  {_fmt(entry['epochs_to_1e-3']):>6} / {_fmt(entry['epochs_to_1e-6'])}")
            if entry["kind"] == "board":
                c = entry["cycles"]
                lines.append(f"  {'':<19} cycles per iteration: full pass "
                             f"{c['full_per_iteration']:.0f} + inner loop "
                             f"{c['inner_per_iteration']:.0f} ({c['per_epoch']:.0f} per epoch)")
    lines += ["", f"{document['seconds']:.0f} s in all"]
    return "\n".join(lines)


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ziphalp.sim.reproduce_halp",
        description="Reproduce HALP (bit-centering SVRG) in hardware: the engine's HALP mode "
                    "at 8 and 4 bits on least squares and logistic regression against "
                    "float64 SGD, SVRG, HALP and fixed-grid low-precision SGD/SVRG on the "
                    "same quantised problems. Writes OUT/halp.json and PNG figures and "
                    "prints a summary.")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (created if missing)")
    parser.add_argument("--quick", action="store_true",
                        help="small problems (n = 300, d = 8) over 12 passes")
    parser.add_argument("--epochs", type=int, metavar="N",
                        help="budget of passes over the data for every method (rounded up "
                             "to even; default 40, --quick 12)")
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="seed of the synthetic data and of the training draws "
                             "(default 1)")
    parser.add_argument("--board", default="sim-ulx3s",
                        choices=sorted(name for name, p in BOARD_PARAMS.items() if p.halp),
                        help="board kind with HALP mode (default: %(default)s, simulated)")
    parser.add_argument("--port", metavar="URL",
                        help="serial port or pyserial URL of the board (default: start a "
                             "simulated board)")
    args = parser.parse_args(None if argv is None else [os.fspath(a) for a in argv])
    if args.epochs is not None and args.epochs < 2:
        parser.error("--epochs must be at least 2")
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    if args.port is None and not args.board.startswith("sim"):
        parser.error(f"--board {args.board} needs --port")
    plan = make_plan(args.quick, args.epochs, args.seed)
    document = run(plan, args.out, args.board, args.port)
    print(summary(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
