"""Delayed (stale) HALP in float64: does bit-centering SVRG keep its linear rate when
the inner gradient is taken at the offset of ``tau`` steps earlier?

``python -m ziphalp.sim.study_stale_halp --out DIR [--passes N] [--seed S]
[--taus T,T,...] [--beyond T,T,...]``

Why: the engine's HALP inner loop with one sample per step waits for step ``u``'s
model update before sample ``u + 1``'s dot product (about 36 cycles of
dot product, loss and update against ``ceil(d / K) + 1`` cycles to stream a
sample). A pipelined inner loop would instead compute step ``u``'s gradient from
the offset of ``tau`` steps earlier (:func:`ziphalp.host.halp_reference.halp` with
``delay=tau``)::

    z_{u+1} = Q_delta(z_u - alpha (grad f_i(w~ + z_{u-tau}) - grad f_i(w~) + g~)),
    z_{u-tau} = z_0 = 0 for u < tau (each outer iteration starts re-centred).

Problems: the two of :mod:`ziphalp.sim.reproduce_halp` (its :func:`make_plan`: n = 2000,
d = 32 plus the bias column, features normalised and rounded once to the nearest
uniform 8-bit level, labels to ``LABEL`` words; least squares on ``synthetic``,
logistic on the noisy ``synthetic-class``), each measured against the exact
optimum ``f*`` of that quantised problem.

Settings, those of the board runs in :mod:`ziphalp.sim.reproduce_halp`: the engine's
default step (``1 / (4 L)`` rounded to the nearest power of two), ``T = n`` one-sample
inner steps, ``mu`` from :func:`ziphalp.host.train.halp_default_mu` for that step and
``b``, power-of-two grid scale, stochastic rounding, the same seed, and the same budget
of passes (an outer iteration is 2 passes: the full-gradient pass and ``T = n`` inner
steps). Every case also runs at half the default step (``mu`` recomputed for it,
as ``ziphalp train --step`` would), since the hardware step is a power of two: the
table shows whether a larger ``tau`` needs it. ``--beyond`` adds larger delays, to
find where the default step breaks.

Output: ``DIR/stale.json`` (format ``ziphalp-stale-halp/1``, written atomically)::

    settings                 problems, passes, taus, beyond, bits, seed, targets
    problems.<name>          spec, n, d, loss, f_star, step (the default), shift
        cases[]              one per (bits, tau, step): bits, tau, step ("default" or
                             "half"), alpha, mu, final_suboptimality, passes_to_1e-3,
                             passes_to_1e-6, passes_to_1e-8 (null if never),
                             saturations, passes[], suboptimality[] (per outer iteration)
        lambda_max           largest curvature ``s lambda_max(A^T A / n)`` (s = 1 least
                             squares, 1/4 logistic), alpha_lambda_max at the default
                             step, and tau_stability = pi / (2 alpha lambda_max): the
                             delay at which the mean dynamics ``z' = -alpha H z(t - tau)``
                             along that direction lose stability (a yardstick)
    conclusion               per problem and b: the largest tau of ``taus`` up to which
                             every delay meets the criterion, at each step

Criteria: least squares, ``final_suboptimality < 1e-8``; logistic, "near the
non-delayed run": ``final <= max(10 x final(tau = 0), 1e-12)`` and, if ``tau = 0``
reaches 1e-6, 1e-6 reached at most one outer iteration (2 passes) after it, at the
same step and b.

The printed table: final relative suboptimality and passes to 1e-3 / 1e-6 / 1e-8, at
the default step and at half of it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ziphalp.host import halp_reference as hr
from ziphalp.host import quantize, reference
from ziphalp.host.data import load, normalise
from ziphalp.host.report import write_atomic
from ziphalp.host.train import halp_default_mu, quantised_problem
from ziphalp.hw.params import SHIFT_MAX
from ziphalp.sim.reproduce_halp import DATA_BITS, json_ready, make_plan

__all__ = ["FORMAT", "TARGETS", "TAUS", "BEYOND", "main", "run", "summary"]

#: The ``format`` of ``stale.json``.
FORMAT = "ziphalp-stale-halp/1"
#: Suboptimality targets of ``passes_to_<target>``.
TARGETS = (1e-3, 1e-6, 1e-8)
#: The delays of the study.
TAUS = (0, 1, 2, 4, 6, 8, 12)
#: Larger delays (default run too), to see where the default step stops working.
BEYOND = (16, 24, 32, 48, 64, 96, 128)
#: Offset widths.
BITS = (8, 4)
#: The least squares criterion.
LS_TARGET = 1e-8


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _key(target: float) -> str:
    return f"passes_to_{target:.0e}".replace("e-0", "e-")


def _optimum(q: np.ndarray, y: np.ndarray, loss: str) -> float:
    """``f*`` of the quantised problem, as the board runs compute it (Newton, with a
    looser tolerance only if the tight one stalls at rounding level)."""
    for tol in (1e-11, 1e-10, 1e-9):
        try:
            return float(reference.optimum(q, y, loss, tol=tol)[1])
        except RuntimeError:
            continue
    raise RuntimeError("no finite optimum (separable data?)")


def _engine_step(q: np.ndarray, y: np.ndarray, loss: str) -> tuple[float, int]:
    """The engine's default HALP step with one-sample inner steps: ``1 / (4 L)``
    rounded to the nearest power of two (as :func:`ziphalp.host.train.train`)."""
    step = hr.default_step(q, y, loss, batch=1)
    shift = min(max(quantize.step_to_shift(min(step, 1.0)), 0), SHIFT_MAX)
    return quantize.shift_to_step(shift), shift


def _largest_curvature(q: np.ndarray, y: np.ndarray, loss: str) -> float:
    """``s lambda_max(A^T A / n)`` (``s = 1``, least squares; ``1/4``, logistic): the
    largest curvature of the objective (the logistic one's bound, reached at margin 0)."""
    s = 1.0 if loss == "squared" else 0.25
    return s * float(np.linalg.eigvalsh(q.T @ q / len(y))[-1])


def _case(q, y, loss, f_star, bits, tau, which, alpha, passes, seed) -> dict:
    mu = halp_default_mu(q, y, loss, bits, alpha)
    n = len(y)
    iterations = passes // 2
    result = hr.halp(q, y, loss, bits=bits, mu=mu, alpha=alpha, epochs=iterations, inner=n,
                     seed=seed, power_of_two=True, f_star=f_star, delay=tau)
    per_outer = 2.0                               # (n + T) / n with T = n
    values = [e.suboptimality for e in result.history]
    done = [e.epoch * per_outer for e in result.history]
    entry = {"bits": bits, "tau": tau, "step": which, "alpha": alpha, "mu": mu,
             "final_suboptimality": values[-1]}
    for target in TARGETS:
        hit = result.epochs_to(target)
        entry[_key(target)] = None if hit is None else hit * per_outer
    entry.update(saturations=result.saturations, passes=done, suboptimality=values)
    return entry


def _meets(problem: dict, case: dict, base: dict) -> bool:
    """Whether a case meets its problem's criterion (module docstring) against the
    ``tau = 0`` case ``base`` at the same b and step."""
    final = case["final_suboptimality"]
    if not (final is not None and math.isfinite(final)):
        return False
    if problem["loss"] == "squared":
        return final < LS_TARGET
    if final > max(10.0 * abs(base["final_suboptimality"]), 1e-12):
        return False
    mine, theirs = case["passes_to_1e-6"], base["passes_to_1e-6"]
    return theirs is None or (mine is not None and mine <= theirs + 2.0)


def _conclusion(problems: dict, taus: Sequence[int]) -> dict:
    out = {}
    for key, problem in problems.items():
        out[key] = {}
        for bits in sorted({c["bits"] for c in problem["cases"]}, reverse=True):
            entry = {}
            for which in ("default", "half"):
                cases = {c["tau"]: c for c in problem["cases"]
                         if c["bits"] == bits and c["step"] == which}
                if 0 not in cases:
                    continue
                largest = None
                for tau in sorted(t for t in cases if t in taus):
                    if not _meets(problem, cases[tau], cases[0]):
                        break
                    largest = tau
                failing = sorted(t for t in cases if not _meets(problem, cases[t], cases[0]))
                entry[which] = {"largest_tau": largest, "failing_taus": failing}
            out[key][f"b{bits}"] = entry
    return out


def run(out: Path, passes: int = 40, seed: int = 1, taus: Sequence[int] = TAUS,
        beyond: Sequence[int] = BEYOND, bits: Sequence[int] = BITS) -> dict:
    """Run the study; write ``out/stale.json`` and return its document."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    plan = make_plan(quick=False, epochs=passes, seed=seed)
    problems = {}
    for key, (spec, loss) in plan.problems.items():
        data = normalise(load(spec))
        problem = quantised_problem(data, DATA_BITS, loss)
        q, y = problem.features, problem.labels
        f_star = _optimum(q, y, loss)
        alpha, shift = _engine_step(q, y, loss)
        curvature = _largest_curvature(q, y, loss)
        cases = []
        for b in bits:
            for tau in list(taus) + [t for t in beyond if t not in taus]:
                for which, step in (("default", alpha), ("half", alpha / 2)):
                    begin = time.monotonic()
                    case = _case(q, y, loss, f_star, b, tau, which, step, plan.passes, seed)
                    cases.append(case)
                    _log(f"[{key}] b={b} tau={tau:<2} step {which:<7}: "
                         f"{case['final_suboptimality']:.3e} "
                         f"({time.monotonic() - begin:.1f} s)")
        problems[key] = {"spec": spec, "n": len(y), "d": q.shape[1], "loss": loss,
                         "data_bits": DATA_BITS, "f_star": f_star, "step": alpha,
                         "shift": shift, "inner_steps": len(y), "lambda_max": curvature,
                         "alpha_lambda_max": alpha * curvature,
                         "tau_stability": math.pi / (2 * alpha * curvature), "cases": cases}
    settings = {"problems": {k: {"dataset": s, "loss": loss}
                             for k, (s, loss) in plan.problems.items()},
                "passes": plan.passes, "outer_iterations": plan.passes // 2,
                "taus": list(taus), "beyond": list(beyond), "bits": list(bits),
                "seed": seed, "inner_batch": 1, "power_of_two": True,
                "stochastic_rounding": True, "targets": list(TARGETS),
                "steps": {"default": "the engine's default (1/(4L) to the nearest power "
                                     "of two)", "half": "half of it"},
                "mu": "ziphalp.host.train.halp_default_mu(features, labels, loss, b, step)",
                "criteria": {"squared": f"final < {LS_TARGET:g}",
                             "logistic": "final <= max(10 x final at tau 0, 1e-12) and "
                                         "1e-6 reached at most 2 passes after tau 0 "
                                         "(if tau 0 reaches it)"}}
    document = json_ready({"format": FORMAT, "settings": settings, "problems": problems,
                       "conclusion": _conclusion(problems, taus),
                       "seconds": time.monotonic() - start})
    write_atomic(out / "stale.json", (json.dumps(document, indent=1) + "\n").encode())
    return document


def _fmt_final(value: float | None) -> str:
    return f"{'diverged':>9}" if value is None else f"{value:9.1e}"


def _fmt_passes(case: dict) -> str:
    return " / ".join(f"{'-' if case[_key(t)] is None else f'{case[_key(t)]:g}':>2}"
                      for t in TARGETS)


def summary(document: dict) -> str:
    """The table: per problem, b and tau, the final suboptimality and passes to
    1e-3 / 1e-6 / 1e-8, at the default step and at half of it."""
    s = document["settings"]
    lines = [f"Delayed HALP (float64, inner batch 1, T = n, power-of-two grid): relative "
             f"suboptimality after {s['passes']} passes; passes to 1e-3 / 1e-6 / 1e-8 "
             "('-': never)"]
    for key, problem in document["problems"].items():
        lines += ["", f"{key} ({problem['spec']}, f* = {problem['f_star']:.6g}, default step "
                      f"2^-{problem['shift']})",
                  f"  alpha lambda_max = {problem['alpha_lambda_max']:.4f} at the default step: "
                  f"pi / (2 alpha lambda_max) = {problem['tau_stability']:.0f} steps",
                  f"  {'b':>2} {'tau':>3} | {'default step':^26} | {'half step':^26}"]
        table: dict[tuple[int, int], dict[str, dict]] = {}
        for case in problem["cases"]:
            table.setdefault((case["bits"], case["tau"]), {})[case["step"]] = case
        previous = None
        for (bits, tau), row in table.items():
            if previous is not None and bits != previous:
                lines.append("")
            previous = bits
            mark = "*" if tau not in s["taus"] else " "
            cells = [f"{_fmt_final(row[w]['final_suboptimality'])} {_fmt_passes(row[w])}"
                     if w in row else " " * 26 for w in ("default", "half")]
            lines.append(f"  {bits:>2} {tau:>3}{mark}| {cells[0]:<26} | {cells[1]:<26}")
    lines += ["", "* beyond the study's delays", "",
              "largest tau of the study meeting the criterion (least squares: final "
              f"< {LS_TARGET:g}; logistic: near tau = 0), failing delays:"]
    for key, per_bits in document["conclusion"].items():
        for bits, entry in per_bits.items():
            parts = [f"{which} step: "
                     + ("none (tau = 0 fails)" if v["largest_tau"] is None
                        else f"tau <= {v['largest_tau']}")
                     + f", failing {v['failing_taus'] or 'none'}"
                     for which, v in entry.items()]
            lines.append(f"  {key} {bits}: " + "; ".join(parts))
    lines += ["", f"{document['seconds']:.0f} s in all"]
    return "\n".join(lines)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers separated by commas: {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("delays must be >= 0")
    return values


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ziphalp.sim.study_stale_halp",
        description="Delayed (stale-gradient) HALP in float64 on the problems of "
                    "reproduce_halp, at 8 and 4 bits, for a range of delays tau, at the "
                    "default step and half of it. Writes OUT/stale.json and prints a table.")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--passes", type=int, default=40, metavar="N",
                        help="budget of passes over the data (even; default 40)")
    parser.add_argument("--seed", type=int, default=1, metavar="S",
                        help="seed of the data and of the draws (default 1, as "
                             "reproduce_halp)")
    parser.add_argument("--taus", type=_ints, default=TAUS, metavar="T,T,...",
                        help=f"delays of the study (default {','.join(map(str, TAUS))})")
    parser.add_argument("--beyond", type=_ints, default=BEYOND, metavar="T,T,...",
                        help="larger delays to run as well (default "
                             f"{','.join(map(str, BEYOND))}; '' for none)")
    args = parser.parse_args(None if argv is None else [os.fspath(a) for a in argv])
    if args.passes < 2:
        parser.error("--passes must be at least 2")
    if 0 not in args.taus:
        parser.error("--taus must include 0 (the reference of the criteria)")
    document = run(args.out, args.passes, args.seed, args.taus, args.beyond)
    print(summary(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
