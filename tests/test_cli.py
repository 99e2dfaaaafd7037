"""The ``ziphalp`` command line: error paths as a subprocess, outputs in process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import serial
from fakeboard import FakeBoard, FakeSerial
from ziphalp.host import cli, report
from ziphalp.host.data import load, normalise
from ziphalp.hw.params import BOARD_PARAMS

ZIPHALP = Path(sys.executable).with_name("ziphalp")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(ZIPHALP), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def assert_one_line_error(result: subprocess.CompletedProcess, status: int, text: str):
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ziphalp: error: ") and text in lines[0], lines[0]
    assert result.returncode == status


def test_version_and_help():
    result = run("--version")
    assert result.returncode == 0 and result.stdout.startswith("ziphalp 0.")
    result = run("train", "--help")
    assert result.returncode == 0
    for option in ("--board", "--port", "--epochs", "--step", "--batch", "--seed", "--out",
                   "--label", "--no-progress"):
        assert option in result.stdout


@pytest.mark.parametrize("name, text, args, status, message", [
    ("missing.csv", None, (), 2, "no such file"),
    ("bad.csv", "a,b,y\n1,2,3\n4,five,6\n", (), 2, "line 3: cannot parse 'five'"),
    ("nan.csv", "1,2,3\n4,NaN,6\n", (), 2, "line 2: value is NaN or infinite"),
    ("wide.csv", None, (), 2, "takes at most 512"),
    ("ok.csv", "1,2,3\n4,5,6\n", ("--board", "icebreaker", "--port", "/dev/ttyZZZ99"), 1,
     "no board on /dev/ttyZZZ99"),
    ("ok.csv", "1,2,3\n4,5,6\n", ("--board", "icebreaker"), 2, "needs --port"),
    ("ok.csv", "1,2,3\n4,5,6\n", ("--step", "8"), 2, "step 8 is out of range"),
    ("ok.csv", "1,2,3\n4,5,6\n", ("--batch", "17"), 2, "larger than the engine's maximum"),
    ("ok.csv", "1,2,3\n4,5,6\n", ("--label", "nope"), 2, "no label column 'nope'"),
])
def test_user_errors(tmp_path, name, text, args, status, message):
    path = tmp_path / name
    if name == "wide.csv":                    # 512 features + bias > max_features
        np.savetxt(path, np.random.default_rng(0).normal(size=(4, 513)), delimiter=",")
    elif text is not None:
        path.write_text(text)
    result = run("train", str(path), "--no-progress", *args)
    assert_one_line_error(result, status, message)


@pytest.fixture
def fake_board(monkeypatch):
    fake = FakeSerial(FakeBoard())
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
    return fake


def test_train_writes_outputs(tmp_path, fake_board, capsys):
    out = tmp_path / "out"
    status = cli.main(["train", "diabetes", "--board", "icebreaker", "--port", "fake://0",
                       "--epochs", "4", "--seed", "3", "--out", str(out), "--no-progress"])
    stdout = capsys.readouterr().out
    assert status == 0
    assert sum(line.startswith("epoch ") and "optimum" in line
               for line in stdout.splitlines()) == 4
    assert "final loss" in stdout and "x optimum" in stdout
    assert sorted(os.listdir(out)) == ["checkpoint.json", "history.json", "loss.png", "model.json"]

    history = json.loads((out / "history.json").read_text())
    assert history["format"] == report.HISTORY_FORMAT
    assert (history["dataset"], history["n"], history["d"]) == ("diabetes", 442, 10)
    assert history["loss_function"] == "squared" and history["board"] == "icebreaker"
    assert history["engine"]["build_id"] == BOARD_PARAMS["icebreaker"].build_id
    assert history["settings"]["shift"] == 9 and history["settings"]["seed"] == 3
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    for epoch in history["epochs"]:
        assert {"epoch", "loss", "cycles", "seconds", "samples", "overflow"} <= set(epoch)
        beats = 1 + BOARD_PARAMS["sim"].beats_for(11, 4, True)  # fake board: 1 cycle a beat
        assert epoch["cycles"] == 442 * beats and epoch["seconds"] > 0
    data = normalise(load("diabetes"))
    assert history["optimum_loss"] == pytest.approx(
        data.loss(np.linalg.lstsq(data.features, data.labels, rcond=None)[0]), rel=1e-12)
    assert history["final_loss"] == history["epochs"][-1]["loss"]

    model = json.loads((out / "model.json").read_text())
    words = np.array(model["fixed_point"]["words"])
    assert model["fixed_point"]["format"] == "Q8.24"
    np.testing.assert_array_equal(words, fake_board.board.model[:11])
    # The original-unit model predicts what the normalised model predicts, mapped back.
    dataset = load("diabetes")
    coef = np.array([model["original_units"]["coefficients"][n] for n in dataset.feature_names])
    predicted = dataset.features @ coef + model["original_units"]["intercept"]
    normalised = model["normalised_units"]
    beta = np.array(normalised["coefficients"] + [normalised["intercept"]])
    np.testing.assert_allclose(beta, words * model["fixed_point"]["coefficient_per_lsb"])
    np.testing.assert_allclose(data.label_map.inverse(data.features @ beta), predicted,
                               rtol=1e-9)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "history.json"
    target.write_text("old")

    def fail(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        report.write_atomic(target, b"new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["history.json"]


def test_saturation_is_a_one_line_warning(tmp_path, fake_board, capsys):
    status = cli.main(["train", "diabetes", "--board", "icebreaker", "--port", "fake://0",
                       "--epochs", "3", "--step", "1", "--no-progress"])
    stderr = capsys.readouterr().err
    assert status == 0
    assert stderr.splitlines() == ["ziphalp: warning: epoch 1: the engine saturated a "
                                   "scaled loss derivative; try a smaller --step"]


# --- HALP (--algo halp) ---------------------------------------------------------------------

def test_help_lists_the_halp_options():
    result = run("train", "--help")
    assert result.returncode == 0
    for option in ("--algo", "--mu", "--inner-steps", "--data-bits", "--bits"):
        assert option in result.stdout


@pytest.mark.parametrize("args, message", [
    (("--algo", "halp"), "the sim board has no HALP mode; use --board sim-ulx3s"),
    (("--algo", "halp", "--board", "sim-ulx3s", "--loss", "hinge"),
     "squared or the logistic loss"),
    (("--algo", "halp", "--board", "sim-ulx3s", "--bits", "17"), "offset bits must be 2..16"),
    (("--algo", "halp", "--board", "sim-ulx3s", "--data-bits", "9"), "data bits must be 1..8"),
    (("--algo", "halp", "--board", "sim-ulx3s", "--sampling", "double"), "is for SGD"),
    (("--mu", "1"), "mu is a HALP setting"),
    (("--inner-steps", "10"), "inner_steps is a HALP setting"),
])
def test_halp_user_errors(tmp_path, args, message):
    path = tmp_path / "ok.csv"
    path.write_text("1,2,3\n4,5,6\n")
    assert_one_line_error(run("train", str(path), "--no-progress", *args), 2, message)


def test_halp_too_many_samples():
    result = run("train", "synthetic:n=5000,d=4", "--algo", "halp", "--board", "sim-ulx3s",
                 "--no-progress")
    assert_one_line_error(result, 2, "takes at most 4096")


@pytest.mark.parametrize("value", ["0", "-1", "x", "inf"])
def test_halp_bad_mu_is_a_usage_error(value):
    result = run("train", "diabetes", "--algo", "halp", "--mu", value)
    assert result.returncode == 2 and "--mu" in result.stderr


def test_halp_train_prints_suboptimality(tmp_path, monkeypatch, capsys):
    fake = FakeSerial(FakeBoard(BOARD_PARAMS["sim-ulx3s"]))
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
    out = tmp_path / "out"
    status = cli.main(["train", "synthetic:n=200,d=6,seed=3", "--algo", "halp",
                       "--board", "sim-ulx3s", "--port", "fake://0", "--bits", "8",
                       "--epochs", "3", "--out", str(out), "--no-progress"])
    stdout = capsys.readouterr().out
    assert status == 0
    lines = [line for line in stdout.splitlines() if line.startswith("iteration ")]
    assert len(lines) == 3
    assert all("suboptimality" in line and "loss" in line for line in lines)
    assert lines[-1].startswith("iteration 3/3  epoch 6.00")
    assert "HALP iterations" in stdout and "8-bit offsets" in stdout
    history = json.loads((out / "history.json").read_text())
    assert history["algo"] == "halp" and history["halp"]["offset_bits"] == 8
    assert [e["iteration"] for e in history["epochs"]] == [1, 2, 3]
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- resident data (--resident, --stream) -----------------------------------------------------

def test_help_lists_the_resident_options():
    result = run("train", "--help")
    assert result.returncode == 0
    assert "--resident" in result.stdout and "--stream" in result.stdout


@pytest.mark.parametrize("args, message", [
    (("ok.csv", "--resident"), "the sim board has no resident data"),
    (("synthetic:n=5000,d=4", "--resident", "--board", "sim-ulx3s"),
     "holds at most 4096 samples (labels), not 5000"),
])
def test_resident_user_errors(tmp_path, args, message):
    """Refused before a board is opened (no simulated board is started)."""
    (tmp_path / "ok.csv").write_text("1,2,3\n4,5,6\n")
    assert_one_line_error(run("train", *args, "--no-progress", cwd=tmp_path), 2, message)


def test_resident_and_stream_are_exclusive():
    result = run("train", "diabetes", "--resident", "--stream")
    assert result.returncode == 2 and "not allowed with argument" in result.stderr


@pytest.mark.parametrize("flag, where", [("--resident", "resident"), ("--stream", "streamed")])
def test_train_reports_where_the_data_lived(tmp_path, monkeypatch, capsys, flag, where):
    fake = FakeSerial(FakeBoard(BOARD_PARAMS["sim-ulx3s"]))
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
    out = tmp_path / "out"
    status = cli.main(["train", "synthetic:n=100,d=20", "--board", "sim-ulx3s", "--port",
                       "fake://0", "--epochs", "2", flag, "--out", str(out), "--no-progress"])
    assert status == 0
    assert f"data {where}, " in capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    assert history["settings"]["data"] == where
    assert all(e["host_bytes"] > 0 for e in history["epochs"])
    assert (history["settings"]["load_bytes"] > 0) == (where == "resident")
