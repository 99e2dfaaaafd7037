"""The ZipML reproduction (ziphalp.sim.reproduce_zipml) in its --quick form, and the
step schedule of ``train(..., halve_every=N)`` it relies on.

The quick reproduction runs once per test session on the simulated board (about half
a minute once the simulated boards are built, a minute or two when the gateware has
changed); under pytest-xdist the first worker that needs it runs it and the others
read its outputs.
"""

import contextlib
import dataclasses
import fcntl
import io
import json
import math
import os

import numpy as np
import pytest
import serial
from fakeboard import FakeBoard, FakeSerial
from ziphalp.host.train import SettingsError, train
from ziphalp.hw.params import BOARD_PARAMS, EngineParams
from ziphalp.hw.protocol import Command
from ziphalp.sim.reproduce_zipml import FORMAT, SAMPLINGS, Schedule, main, make_plan

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SECTIONS = {"format", "settings", "bias", "levels", "classification", "throughput", "seconds"}


def _run_quick(out) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--quick", "--out", out]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """``(folder, document, stdout)`` of one ``--quick`` run."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        out = tmp_path_factory.mktemp("zipml")
        stdout = _run_quick(out)
    else:                               # share one run between the workers of this session
        shared = tmp_path_factory.getbasetemp().parent / "reproduce_zipml"
        shared.mkdir(exist_ok=True)
        out, done = shared / "out", shared / "stdout.txt"
        with open(shared / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not done.exists():
                    done.write_text(_run_quick(out))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        stdout = done.read_text()

    def no_constants(name):
        raise ValueError(f"zipml.json holds {name}")

    document = json.loads((out / "zipml.json").read_text(), parse_constant=no_constants)
    return out, document, stdout


def _numbers(value, path=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


# --- the quick reproduction ------------------------------------------------------------

@pytest.mark.slow     # collected early: its worker runs the reproduction, the others go on
def test_document_structure(quick):
    _, doc, stdout = quick
    assert set(doc) == SECTIONS
    assert doc["format"] == FORMAT
    settings = doc["settings"]
    assert settings["quick"] is True and settings["seed"] == 1
    assert len(settings["gateware"]["hw_sources_sha256"]) == 64
    assert isinstance(settings["gateware"]["changed_during_run"], bool)
    assert doc["seconds"] > 0
    for section in ("bias", "levels", "classification", "throughput"):
        assert doc[section]["seconds"] > 0
    assert "ZipML reproduction" in stdout and "cycles per epoch" in stdout


def test_every_number_is_finite(quick):
    _, doc, _ = quick
    numbers = list(_numbers(doc))
    assert len(numbers) > 100
    bad = [(path, value) for path, value in numbers if not math.isfinite(value)]
    assert not bad
    assert "non_finite" not in doc["settings"]


def test_bias(quick):
    _, doc, _ = quick
    plan = doc["settings"]["bias"]
    datasets = doc["bias"]["datasets"]
    assert set(datasets) == {"synthetic", "diabetes"}
    for name, section in datasets.items():
        epochs = section["schedule"]["epochs"]
        assert section["schedule"] == plan["datasets"][section["spec"]]
        assert len(section["steps"]) == len(section["float64"]["loss"]) == epochs
        assert section["steps"][-1] < section["steps"][0]        # the schedule halves
        optimum = section["optimum_loss"]
        assert optimum > 0
        assert section["float64"]["final_ratio"] >= 1 - 1e-9
        assert list(section["board"]) == [str(k) for k in plan["k"]]
        for k, runs in section["board"].items():
            assert set(runs) == set(SAMPLINGS)
            for sampling, run in runs.items():
                assert len(run["loss"]) == epochs
                assert run["final_loss"] == run["loss"][-1]
                assert run["final_ratio"] == pytest.approx(run["final_loss"] / optimum)
                assert section["final_ratio"][k][sampling] == run["final_ratio"]
                assert run["cycles_per_epoch"] > 0
            double = runs["double"]["final_ratio"]
            assert double > 0 and double >= 1 - 1e-9, (name, k)
    # Single sampling's hidden ridge term at k = 1 (it is large: a factor of 2 on the
    # quick synthetic set) is far beyond the noise of double sampling.
    synthetic = datasets["synthetic"]["final_ratio"]["1"]
    assert synthetic["single"] > synthetic["double"]


def test_levels(quick):
    _, doc, _ = quick
    levels = doc["levels"]
    assert set(levels["variance"]) == {"diabetes", "breast_cancer"}
    for v in levels["variance"].values():
        assert set(v["k"]) == {"2", "3"}
        for k, row in v["k"].items():
            total = row["total"]
            # The optimum over the LEVEL grid, which holds the uniform levels, is no worse.
            assert total["per_feature"] <= total["optimal"] * (1 + 1e-9)
            assert total["optimal"] <= total["uniform"] * (1 + 1e-9)
            assert row["reduction"] == pytest.approx(total["uniform"] / total["optimal"])
            assert len(row["levels"]["optimal"]) == 2 ** int(k) + 1
            for kind in ("uniform", "optimal", "per_feature"):
                assert sum(row["per_feature"][kind]) == pytest.approx(total[kind])
    board = levels["board"]
    assert set(board["uniform"]) == {"2", "3", "4", "5"} and set(board["optimal"]) == {"2", "3"}
    for entry in (*board["uniform"].values(), *board["optimal"].values()):
        assert entry["ratio"] >= 1 - 1e-9
        assert len(entry["loss_per_seed"]) == len(board["seeds"])
    for k, entry in board["optimal"].items():
        assert set(entry["minus_uniform"]) == set(board["uniform"])
        same = entry["minus_uniform"][k]
        assert same["mean"] == pytest.approx(
            entry["ratio"] - board["uniform"][k]["ratio"], abs=1e-12)
    for k, needed in levels["bits_needed"].items():
        bits = needed["uniform_k"]
        target = board["optimal"][k]["loss"]
        if bits is None:
            assert all(u["loss"] > target for u in board["uniform"].values())
        else:
            assert board["uniform"][str(bits)]["loss"] <= target
            assert all(board["uniform"][str(u)]["loss"] > target for u in range(2, bits))


def test_classification(quick):
    _, doc, _ = quick
    section = doc["classification"]
    assert section["n_train"] + section["n_test"] == 569
    assert set(section["losses"]) == set(doc["settings"]["classification"]["losses"])
    for entry in section["losses"].values():
        assert 0.5 < entry["sklearn"]["test_accuracy"] <= 1
        assert 0 <= entry["float64_sgd"]["test_accuracy"] <= 1
        assert list(entry["board"]) == [str(k) for k in doc["settings"]["classification"]["k"]]
        assert isinstance(entry["separable"], bool)
        for run in entry["board"].values():
            assert 0.5 < run["test_accuracy"] <= 1 and 0.5 < run["train_accuracy"] <= 1
            assert (run["final_ratio"] is None) == entry["separable"]


def test_throughput(quick):
    _, doc, _ = quick
    engines = doc["throughput"]["engines"]
    assert set(engines) == {"wide-quick", "sim"}
    for name, entry in engines.items():
        base, runs = entry["baseline"], entry["runs"]
        assert list(runs) == ["1", "2", "4", "8"]
        params = EngineParams(**entry["params"])
        assert base["params"] == {**entry["params"], "lanes": base["params"]["lanes"]}
        assert base["values_per_beat"] == base["params"]["lanes"]
        for k, run in runs.items():
            assert run["values_per_beat"] == params.values_per_beat(int(k), True)
            assert run["cycles_per_epoch"] > 0
            assert run["vs_baseline"] == pytest.approx(
                base["cycles_per_epoch"] / run["cycles_per_epoch"])
            assert run["vs_k8"] == pytest.approx(
                runs["8"]["cycles_per_epoch"] / run["cycles_per_epoch"])
            # More values per beat must mean fewer cycles: wherever the lanes allow it.
            if run["values_per_beat"] > base["values_per_beat"]:
                assert run["vs_baseline"] > 1, (name, k)
            if run["values_per_beat"] > runs["8"]["values_per_beat"]:
                assert run["vs_k8"] > 1, (name, k)
    wide = engines["wide-quick"]["runs"]
    assert wide["1"]["vs_baseline"] > 2        # 8 values per beat against 1


def test_figures(quick):
    out, doc, _ = quick
    names = doc["settings"]["figures"]
    assert set(names) == {"bias_synthetic.png", "bias_diabetes.png", "levels.png",
                          "levels_per_feature.png", "classification.png", "throughput.png"}
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


# --- command line and plan (no board) -----------------------------------------------------

def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--quick", "--epochs", "--seed"):
        assert option in text


@pytest.mark.parametrize("args", [[], ["--out", "x", "--epochs", "0"],
                                  ["--out", "x", "--seed", "-1"]])
def test_bad_arguments(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


def test_schedule_and_epochs_override():
    schedule = Schedule(2.0 ** -6, 8, 8, 2)
    assert schedule.steps() == [2.0 ** -6] * 2 + [2.0 ** -7] * 2 + [2.0 ** -8] * 2 + [2.0 ** -9] * 2
    assert Schedule(0.5, 1, 3).steps() == [0.5] * 3
    longer = schedule.with_epochs(16)
    assert (longer.epochs, longer.halve_every) == (16, 4)
    assert longer.steps()[-1] == schedule.steps()[-1]
    plan = make_plan(quick=True, epochs=4, seed=7)
    assert all(s.epochs == 4 for s in plan.bias_data.values())
    assert plan.class_schedule.epochs == plan.levels_schedule.epochs == 4
    assert 1 <= plan.levels_tail <= 4
    assert any("seed=7" in name for name in plan.bias_data)
    full = make_plan()
    assert full.bias_ks == (1, 2, 4, 8) and full.class_ks == tuple(range(1, 9))
    assert [e.name for e in full.engines] == ["sim-ulx3s", "sim"]
    ulx3s = full.engines[0]
    assert ulx3s.baseline.lanes == 2 and ulx3s.params.beat_bits == 64
    assert ulx3s.baseline == dataclasses.replace(BOARD_PARAMS["ulx3s"], lanes=2, resident_rows=0,
                                                 resident_samples=0)


# --- train(..., halve_every=N) --------------------------------------------------------------

@pytest.fixture
def fake_board(monkeypatch):
    fake = FakeSerial(FakeBoard())
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: fake)
    return fake


def _shifts(fake: FakeSerial) -> list[int]:
    return [payload[4] for cmd, payload in fake.requests if cmd == Command.CONFIGURE]


def test_halve_every_reconfigures_the_step(fake_board):
    result = train("diabetes", board="sim", port="fake://0", epochs=5, step=2.0 ** -7,
                   halve_every=2, progress=False)
    assert _shifts(fake_board) == [7, 8, 9]     # epochs 1-2, 3-4, 5
    assert result.settings["halve_every"] == 2 and result.settings["shift"] == 7
    assert len(result.history) == 5


def test_halve_every_zero_keeps_the_step(fake_board):
    result = train("diabetes", board="sim", port="fake://0", epochs=3, step=2.0 ** -7,
                   progress=False)
    assert _shifts(fake_board) == [7]
    assert result.settings["halve_every"] == 0


def test_halve_every_matches_separate_runs(monkeypatch):
    """A schedule equals constant-step training continued from the model read back."""
    boards = [FakeSerial(FakeBoard()) for _ in range(2)]
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: boards[0])
    scheduled = train("diabetes", board="sim", port="fake://0", epochs=2, step=2.0 ** -6,
                      halve_every=1, shuffle=False, sampling="nearest", progress=False)
    monkeypatch.setattr(serial, "serial_for_url", lambda url, baudrate, timeout: boards[1])
    first = train("diabetes", board="sim", port="fake://0", epochs=1, step=2.0 ** -6,
                  shuffle=False, sampling="nearest", progress=False)
    assert scheduled.history[0].loss == first.history[0].loss
    # The second epoch, by hand on the golden engine, at half the step.
    engine = boards[1].board.engine
    config = dict(boards[1].board.config)
    config["shift"] += 1
    engine.configure(**config)
    streams = [payload for cmd, payload in boards[1].requests
               if cmd in (Command.STREAM, Command.STREAM_FLUSH)]
    for i, payload in enumerate(streams):
        engine.stream(payload, flush=i == len(streams) - 1)
    words = engine.read_model(0, len(scheduled.words))
    assert np.array_equal(np.asarray(words), scheduled.words)


@pytest.mark.parametrize("value", [-1, 1.5, True])
def test_halve_every_rejects_bad_values(value):
    with pytest.raises(SettingsError, match="halve_every"):
        train("diabetes", port="fake://0", halve_every=value, progress=False)
