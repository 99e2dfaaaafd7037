"""Runs the cocotb resident-store bench (sim/cocotb_resident.py) on Icarus.

The generated Verilog of :class:`~ziphalp.hw.resident.ResidentSource` is loaded
with random codes, labels and sampler tables and runs random walks in random
modes; its beats must equal :meth:`ziphalp.sim.golden.GoldenEngine.run` bit for
bit, the last one flushing, and without back-pressure come at a beat a cycle
(at most the pipeline's few cycles more per run). Each build has its own
directory so ``pytest -n auto`` is safe.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_resident_source import PARAMS, golden_runs, random_runs, store_image
from ziphalp.hw.resident import LAUNCH, stages

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None,
                                reason="Icarus Verilog (iverilog) is not installed")


@pytest.mark.parametrize("build", range(len(PARAMS)))
def test_resident_verilog_matches_golden(build, tmp_path):
    from amaranth.back import verilog
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner
    from ziphalp.hw.resident import ResidentSource

    p = PARAMS[build]
    rng = np.random.default_rng(100 + build)
    image = store_image(p, rng)
    runs = random_runs(p, rng, 10)
    expected = golden_runs(p, image, runs)
    source = tmp_path / "resident.v"
    source.write_text(verilog.convert(ResidentSource(p), name="resident"))
    report = tmp_path / "report.json"
    spec = {"beat_bits": p.beat_bits, "seed": build, "report": str(report),
            "image": {region.name: payload.hex() for region, payload in image.items()},
            "runs": [{"config": {"features": c["features"], "k": c["k"],
                                 "double": c["double"], "indexed": c["phase"] != 0},
                      "walk": w, "full_rate": i % 2 == 0}
                     for i, (c, w) in enumerate(runs)]}
    runner = get_runner("icarus")
    runner.build(sources=[source], hdl_toplevel="resident", build_dir=tmp_path / "build",
                 timescale=("1ns", "1ps"))
    results_xml = runner.test(hdl_toplevel="resident", test_module="ziphalp.sim.cocotb_resident",
                              build_dir=tmp_path / "build", test_dir=tmp_path,
                              extra_env={"ZIPHALP_BENCH": json.dumps(spec)})
    assert get_results(results_xml)[1] == 0, f"cocotb bench failed (see {tmp_path})"
    results = json.loads(report.read_text())
    for i, (result, want) in enumerate(zip(results, expected, strict=True)):
        assert [int(b) for b in result["beats"]] == want, f"run {i}: {runs[i]}"
        assert result["flushes"] == [0] * (len(want) - 1) + [1]
        if i % 2 == 0:
            bound = len(want) + LAUNCH + stages(p) + 2
            assert result["cycles"] <= bound, (result["cycles"], len(want))
