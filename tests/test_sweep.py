"""Sweeps (``ziphalp.host.sweep``, ``ziphalp sweep``): GridSearchCV over the estimators
under joblib's local processes and under Dask, on the simulated board."""

import csv
import json

import pytest
from ziphalp.host import cli
from ziphalp.host.data import load
from ziphalp.host.sweep import parse_grid, sweep
from ziphalp.host.train import SettingsError


def _table(result):
    return [{k: v for k, v in row.items() if k != "fit_seconds"} for row in result.rows]


def test_parse_grid():
    assert parse_grid(["bits=1,2", "sampling=double", "step=0.5,none", "resident=false"]) == {
        "bits": [1, 2], "sampling": ["double"], "step": [0.5, None], "resident": [False]}
    with pytest.raises(SettingsError, match="NAME=V1,V2"):
        parse_grid(["bits"])


def test_dask_sweep_equals_sequential():
    """The same grid on a two-worker Dask LocalCluster and on one local process: the
    same table, and double sampling beats a single sample at 1 bit (ZipML)."""
    data = load("diabetes")
    grid = {"bits": [1, 4], "sampling": ["double", "single"]}
    fixed = {"epochs": 8}
    alone = sweep(data, grid, params=fixed, folds=2, workers=1, backend="loky")
    spread = sweep(data, grid, params=fixed, folds=2, workers=2, backend="dask")
    assert spread.backend == "dask" and spread.workers == 2
    assert _table(alone) == _table(spread)
    at = {(row["bits"], row["sampling"]): row["train_mse"] for row in alone.rows}
    assert at[1, "double"] < at[1, "single"]


def test_classification_sweep_reports_error_rate():
    data = load("breast_cancer")
    result = sweep(data, {"loss": ["logistic", "hinge"]}, params={"epochs": 3, "step": 2 ** -6},
                   folds=2)
    assert result.metric == "error" and result.estimator == "ZipMLClassifier"
    assert all(0 <= row["test_error"] < 0.2 for row in result.rows)


def test_cli_sweep_writes_table_and_plot(tmp_path, capsys):
    out = tmp_path / "sweep"
    status = cli.main(["sweep", "diabetes", "--grid", "bits=2,4", "--grid", "sampling=double",
                       "--set", "epochs=3", "--folds", "2", "--workers", "2",
                       "--out", str(out)])
    assert status == 0, capsys.readouterr().err
    with open(out / "sweep.csv") as f:
        rows = list(csv.DictReader(f))
    document = json.loads((out / "sweep.json").read_text())
    assert [int(r["bits"]) for r in rows] == [2, 4] == [r["bits"] for r in document["rows"]]
    assert [float(r["test_mse"]) for r in rows] == [r["test_mse"] for r in document["rows"]]
    assert document["workers"] == 2 and document["folds"] == 2
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert "best bits=" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--grid", "colour=red"], "ZipMLRegressor has no parameter colour"),
    (["--grid", "bits"], "a grid item is NAME=V1,V2,..."),
    (["--grid", "bits=0"], "bits must be 1..8"),
    (["--grid", "bits=2", "--scheduler", "tcp://127.0.0.1:9"], "--scheduler needs --backend dask"),
    (["--grid", "bits=2", "--folds", "1"], "folds must be 2.."),
    (["--grid", "bits=2", "--set", "port=/dev/null", "--workers", "2"], "one fit at a time"),
    (["--grid", "bits=2", "--set", "batch=4,8"],
     "--set batch takes one value, not 2 (use --grid to sweep it)"),
    (["--grid", "bits=2", "--backend", "dask", "--scheduler", "tcp://127.0.0.1:9"],
     "no Dask scheduler at tcp://127.0.0.1:9"),
])
def test_cli_sweep_bad_input(tmp_path, capsys, args, message):
    out = tmp_path / "sweep"
    status = cli.main(["sweep", "diabetes", "--set", "epochs=1", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not out.exists()
