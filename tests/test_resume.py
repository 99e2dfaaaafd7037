"""Checkpoints and resume (``ziphalp.host.checkpoint``, ``train(checkpoint=, resume=)``,
``ziphalp train --resume``): a run stopped after any epoch, or killed mid-epoch,
and resumed ends with exactly the model words and losses of an uninterrupted run."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ziphalp.host import cli
from ziphalp.host.checkpoint import CHECKPOINT, ResumeError
from ziphalp.host.driver import BoardError
from ziphalp.host.train import train

RUNS = {
    "sgd-streamed": dict(dataset="diabetes", epochs=5),
    "sgd-schedule": dict(dataset="diabetes", epochs=5, halve_every=2, sampling="single"),
    "sgd-resident": dict(dataset="diabetes", epochs=4, board="sim-ulx3s", bits=2),
    "halp-resident": dict(dataset="synthetic:n=300,d=8", epochs=4, board="sim-ulx3s",
                          algo="halp"),
    "halp-streamed": dict(dataset="synthetic:n=300,d=8", epochs=4, board="sim-ulx3s",
                          algo="halp", resident=False),
}


def _losses(result):
    return [(r.epoch, r.loss, r.cycles, r.samples) for r in result.history]


@pytest.mark.parametrize("name", RUNS)
def test_resume_equals_uninterrupted(tmp_path, name):
    kw = RUNS[name]
    whole = train(progress=False, **kw)
    part = train(progress=False, checkpoint=tmp_path, **(kw | {"epochs": 2}))
    saved = json.loads((tmp_path / CHECKPOINT).read_text())
    assert saved["epoch"] == 2 and saved["words"] == [int(w) for w in part.words]
    rest = train(progress=False, checkpoint=tmp_path, resume=True, **kw)
    np.testing.assert_array_equal(rest.words, whole.words)
    assert _losses(rest) == _losses(whole)
    assert json.loads((tmp_path / CHECKPOINT).read_text())["epoch"] == kw["epochs"]


def _words(folder):
    return json.loads((folder / "model.json").read_text())["fixed_point"]


def test_kill_mid_epoch_then_resume(tmp_path):
    """The command line killed (SIGKILL) after its second checkpoint, in the middle of
    a later epoch; ``--resume`` finishes with the uninterrupted run's model."""
    args = ["train", "synthetic:n=3000,d=24", "--epochs", "8", "--bits", "2", "--no-progress"]
    whole = tmp_path / "whole"
    assert cli.main([*args, "--out", str(whole)]) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen([str(Path(sys.executable).parent / "ziphalp"), *args,
                                "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads((killed / CHECKPOINT).read_text())["epoch"] >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    stopped = json.loads((killed / CHECKPOINT).read_text())["epoch"]
    assert 2 <= stopped < 8 and not (killed / "model.json").exists()
    assert cli.main([*args, "--resume", str(killed)]) == 0
    assert _words(killed) == _words(whole)
    history = json.loads((killed / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == list(range(1, 9))


@pytest.fixture
def stopped_run(tmp_path):
    """A two-epoch run of diabetes with its checkpoint in tmp_path / "run"."""
    folder = tmp_path / "run"
    assert cli.main(["train", "diabetes", "--epochs", "2", "--no-progress",
                     "--out", str(folder)]) == 0
    return folder


@pytest.mark.parametrize("args, message", [
    (["diabetes", "--bits", "2"], "is a run with bits 4, not 2"),
    (["breast_cancer", "--loss", "logistic"], "is a run on another data set (diabetes, 442 x 10)"),
    (["diabetes", "--board", "sim-ulx3s"], "is a run on the sim board, not sim-ulx3s"),
    (["diabetes", "--epochs", "1"], "has already run 2 epochs, more than the 1 asked for"),
])
def test_resume_of_another_run_is_refused(stopped_run, capsys, args, message):
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir()}
    status = cli.main(["train", *args, "--no-progress", "--resume", str(stopped_run)])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and message in err, err
    assert {p.name: p.read_bytes() for p in stopped_run.iterdir()} == before


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    status = cli.main(["train", "diabetes", "--resume", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert status == 2 and f"nothing to resume in {tmp_path}: no checkpoint.json" in err
    (tmp_path / CHECKPOINT).write_text("{not json")
    with pytest.raises(ResumeError, match="cannot read"):
        train("diabetes", checkpoint=tmp_path, resume=True, progress=False)


def test_resume_on_another_build_is_refused(stopped_run):
    path = stopped_run / CHECKPOINT
    saved = json.loads(path.read_text())
    path.write_text(json.dumps(saved | {"build_id": saved["build_id"] ^ 1}))
    before = path.read_bytes()
    with pytest.raises(BoardError, match=r"is build 0x[0-9a-f]{8}; the run in .* was on build"):
        train("diabetes", epochs=3, checkpoint=stopped_run, resume=True, progress=False)
    assert path.read_bytes() == before
