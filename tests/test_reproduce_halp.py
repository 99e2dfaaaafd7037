"""The HALP reproduction (ziphalp.sim.reproduce_halp) in its --quick form, against a
golden-model board with HALP mode (FakeBoard with the sim-ulx3s engine) instead of the
simulated board."""

import contextlib
import io
import json
import math
import os

import pytest
import serial
from fakeboard import FakeBoard, FakeSerial
from ziphalp.hw.params import BOARD_PARAMS
from ziphalp.sim.reproduce_halp import FORMAT, main, make_plan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = {"board_halp_b8", "board_halp_b4", "board_halp_mb8_b8", "board_halp_exact_b8", "sgd",
           "svrg", "lp_sgd_b8", "lp_sgd_b4", "lp_svrg_b8", "lp_svrg_b4", "halp_b8", "halp_b4",
           "halp_delayed_b8", "halp_delayed_b4"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("halp")
    board = FakeSerial(FakeBoard(BOARD_PARAMS["sim-ulx3s"]))
    stdout = io.StringIO()
    with pytest.MonkeyPatch.context() as m, contextlib.redirect_stdout(stdout):
        m.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: board)
        assert main(["--quick", "--out", str(out), "--port", "fake://0"]) == 0
    return out, json.loads((out / "halp.json").read_text()), stdout.getvalue()


def test_document_shape(quick):
    out, doc, stdout = quick
    assert set(doc) == {"format", "settings", "separability", "problems", "seconds"}
    assert doc["format"] == FORMAT
    settings = doc["settings"]
    assert settings["quick"] is True and settings["board"] == "sim-ulx3s"
    assert settings["passes"] == 12 and settings["bits"] == [8, 4]
    assert settings["batches"] == [8]
    assert set(doc["problems"]) == {"least_squares", "logistic"}
    for key, section in doc["problems"].items():
        assert section["optimum_loss"] > 0 and "8-bit levels" in section["optimum_data"]
        assert section["epochs_per_iteration"] == pytest.approx(2.0)
        assert set(section["methods"]) == METHODS
        for name, entry in section["methods"].items():
            assert len(entry["epochs"]) == len(entry["suboptimality"])
            assert entry["epochs"][0] == 0 and entry["epochs"][-1] == pytest.approx(12)
            assert entry["final_suboptimality"] == entry["suboptimality"][-1]
            assert all(math.isfinite(v) for v in entry["suboptimality"]), (key, name)
            for target in ("1e-3", "1e-6"):
                reached = entry[f"epochs_to_{target}"]
                if reached is None:
                    assert min(entry["suboptimality"]) > float(target)
                else:
                    i = entry["epochs"].index(reached)
                    assert entry["suboptimality"][i] <= float(target)
                    assert all(v > float(target) for v in entry["suboptimality"][:i])
            if entry["kind"] == "board":
                assert entry["batch"] == (8 if "_mb8_" in name else 1)
                # the default delay hides the update (n = 300, d = 8: 2 feature beats)
                assert entry["stale"] == (0 if "_exact_" in name else 6)
                c = entry["cycles"]
                assert c["full_per_iteration"] > 0 and c["inner_per_iteration"] > 0
                assert c["per_epoch"] == pytest.approx(c["per_iteration"] / 2)
    assert "board_halp_b8" in stdout and "cycles per iteration" in stdout


def test_separability(quick):
    _, doc, _ = quick
    # The bundled classification sets are separable after 8-bit rounding: the reason the
    # logistic problem is a noisy synthetic set.
    assert doc["separability"]["breast_cancer"]["separable"] is True
    assert doc["problems"]["logistic"]["spec"].startswith("synthetic-class")


def test_halp_8_bits_beats_low_precision_sgd(quick):
    """Bars: 8-bit HALP on the board ends at least 1000x below 8-bit fixed-grid SGD
    (least squares) and 20x below it (logistic), after the same 12 passes; SVRG-type
    float HALP at 8 bits too."""
    _, doc, _ = quick
    def final(problem):
        methods = doc["problems"][problem]["methods"]
        return {name: entry["final_suboptimality"] for name, entry in methods.items()}

    ls, lg = final("least_squares"), final("logistic")
    assert ls["board_halp_b8"] < 1e-3 * ls["lp_sgd_b8"]
    assert lg["board_halp_b8"] < 0.05 * lg["lp_sgd_b8"]
    assert ls["board_halp_b8"] < 1e-4
    assert doc["problems"]["least_squares"]["methods"]["board_halp_b8"]["epochs_to_1e-3"]
    for methods in (ls, lg):
        assert methods["halp_b8"] < methods["lp_svrg_b8"]


def test_figures(quick):
    out, doc, _ = quick
    assert doc["settings"]["figures"] == ["halp_least_squares.png", "halp_logistic.png"]
    for name in doc["settings"]["figures"]:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_plan_and_arguments(capsys):
    full = make_plan()
    assert full.passes == 40 and full.bits == (8, 4)
    assert make_plan(quick=True, epochs=5).passes == 6
    for args in ([], ["--out", "x", "--epochs", "1"], ["--out", "x", "--seed", "-1"],
                 ["--out", "x", "--board", "sim"], ["--out", "x", "--board", "ulx3s"]):
        with pytest.raises(SystemExit) as info:
            main(args)
        assert info.value.code == 2
