"""Parameter sweeps: scikit-learn's ``GridSearchCV`` over a ziphalp estimator, run by
joblib on local processes or on a Dask cluster.

A low-precision study is a grid (bits x sampling x levels x step x seed). Nothing
here schedules work: :func:`sweep` builds a ``GridSearchCV`` over the estimator of
:mod:`ziphalp.host.estimators` and runs it under a joblib backend:

* ``"loky"`` (joblib's default): ``workers`` local processes;
* ``"dask"``: a ``dask.distributed`` client, on a ``LocalCluster`` of ``workers``
  single-threaded worker processes, or on the running scheduler at ``scheduler``
  (a real cluster: every worker needs ziphalp installed).

Each fit starts and owns its simulated board (the estimators' ``board="sim..."``),
so workers share nothing; a fit is deterministic for its seed, so the table does
not depend on the backend or the number of workers. A real board is one serial
port: a sweep on it runs one fit at a time (``workers=1``).

:func:`write_sweep` writes the table (``sweep.csv``, ``sweep.json``) and a plot of
the error against the bits, one line per sampling mode (``sweep.png``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import joblib
import numpy as np
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

from .data import Dataset
from .estimators import HALPClassifier, HALPRegressor, ZipMLClassifier, ZipMLRegressor
from .report import write_atomic
from .train import SettingsError

__all__ = ["BACKENDS", "SweepResult", "estimator_for", "parse_grid", "sweep", "write_sweep"]

BACKENDS = ("loky", "dask")
#: Scoring of each task: the metric plotted first, and the others recorded.
SCORING = {
    "regression": {"mse": "neg_mean_squared_error", "r2": "r2"},
    "classification": {"error": "accuracy"},
}
PLOTTED = {"regression": "mse", "classification": "error"}


@dataclass
class SweepResult:
    """The table of a sweep (one row per grid point) and how it was run."""

    rows: list[dict]
    metric: str
    estimator: str
    dataset: str
    backend: str
    workers: int
    folds: int
    seconds: float
    settings: dict = field(default_factory=dict)


def estimator_for(algo: str, task: str, params: dict):
    """The estimator of ``algo`` ("sgd" or "halp") for ``task``, with ``params`` set."""
    kinds = {("sgd", "regression"): ZipMLRegressor, ("sgd", "classification"): ZipMLClassifier,
             ("halp", "regression"): HALPRegressor, ("halp", "classification"): HALPClassifier}
    if (algo, task) not in kinds:
        raise SettingsError(f"unknown algo {algo!r}; choose from sgd, halp")
    estimator = kinds[algo, task]()
    unknown = sorted(set(params) - set(estimator.get_params()))
    if unknown:
        raise SettingsError(f"{type(estimator).__name__} has no parameter "
                            f"{', '.join(unknown)}; it has "
                            f"{', '.join(sorted(estimator.get_params()))}")
    return estimator.set_params(**params)


def _value(text: str):
    """A grid value from the command line: int, float, None, true/false or a string."""
    lowered = text.strip().lower()
    if lowered in ("none", "true", "false"):
        return {"none": None, "true": True, "false": False}[lowered]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def parse_grid(items: list[str]) -> dict[str, list]:
    """``["bits=1,2,4", "sampling=double,single"]`` as a parameter grid."""
    grid: dict[str, list] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not name.strip() or not values.strip():
            raise SettingsError(f"a grid item is NAME=V1,V2,... not {item!r}")
        grid[name.strip()] = [_value(v) for v in values.split(",")]
    return grid


@contextlib.contextmanager
def _backend(backend: str, workers: int, scheduler: str | None):
    """joblib's parallel backend for the sweep; with Dask, the client as well."""
    if backend not in BACKENDS:
        raise SettingsError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "loky":
        with joblib.parallel_backend("loky", n_jobs=workers):
            yield workers
        return
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as e:
        raise SettingsError(f"the dask backend needs dask[distributed]: {e}") from None
    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="5s")
        except OSError as e:
            raise SettingsError(f"no Dask scheduler at {scheduler}: {e}") from None
        with client:
            cores = sum(client.nthreads().values())
            with joblib.parallel_backend("dask"):
                yield cores
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        with joblib.parallel_backend("dask"):
            yield workers


def sweep(dataset: Dataset, grid: dict[str, list], *, algo: str = "sgd",
          params: dict | None = None, folds: int = 3, workers: int = 1,
          backend: str = "loky", scheduler: str | None = None,
          seed: int = 0) -> SweepResult:
    """Cross-validate every point of ``grid`` (module docstring).

    Parameters
    ----------
    dataset : Dataset
        Features and labels; its task picks the regressor or the classifier.
    grid : dict
        Parameter name -> values (parameters of the estimator).
    algo : {"sgd", "halp"}
        ZipML (:class:`ZipMLRegressor`, :class:`ZipMLClassifier`) or HALP.
    params : dict, optional
        Fixed estimator parameters (e.g. ``epochs``, ``board``, ``port``).
    folds : int
        Cross-validation folds (shuffled with ``seed``; stratified for classes).
    workers, backend, scheduler
        How the fits run (module docstring).

    Raises
    ------
    SettingsError
        An unknown parameter, backend or scheduler, a bad fold count, or a port with
        more than one worker.
    """
    params = dict(params or {})
    estimator = estimator_for(algo, dataset.task, params)
    estimator_for(algo, dataset.task, {name: values[0] for name, values in grid.items()})
    if any(not values for values in grid.values()):
        raise SettingsError("every grid parameter needs at least one value")
    if not 2 <= folds <= dataset.n:
        raise SettingsError(f"folds must be 2..{dataset.n} (the samples), not {folds}")
    if workers < 1:
        raise SettingsError(f"workers must be at least 1, not {workers}")
    if params.get("port") is not None and (workers > 1 or scheduler is not None):
        raise SettingsError("a real board (port) runs one fit at a time: use --workers 1")
    split = (StratifiedKFold if dataset.task == "classification" else KFold)(
        folds, shuffle=True, random_state=seed)
    scoring = SCORING[dataset.task]
    search = GridSearchCV(estimator, grid, scoring=scoring, cv=split, refit=False,
                          return_train_score=True, n_jobs=None, error_score="raise")
    start = time.monotonic()
    with _backend(backend, workers, scheduler) as used:
        search.fit(dataset.features, dataset.labels)
    seconds = time.monotonic() - start
    results = search.cv_results_
    rows = []
    for i, point in enumerate(results["params"]):
        row = {name: point[name] for name in grid}
        for name in scoring:
            sign = -1.0 if scoring[name].startswith("neg_") else 1.0
            test, train = (sign * results[f"mean_{part}_{name}"][i]
                           for part in ("test", "train"))
            if name == "error":                 # accuracy -> error rate
                test, train = 1.0 - test, 1.0 - train
            row[f"test_{name}"] = float(test)
            row[f"train_{name}"] = float(train)
            row[f"test_{name}_std"] = float(results[f"std_test_{name}"][i])
        row["fit_seconds"] = float(results["mean_fit_time"][i])
        rows.append(row)
    return SweepResult(rows, PLOTTED[dataset.task], type(estimator).__name__, dataset.name,
                       backend, used, folds, seconds,
                       {"algo": algo, "params": params, "grid": grid, "seed": seed})


def _csv(result: SweepResult) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(result.rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows)
    return buffer.getvalue().encode()


def _plot(result: SweepResult) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    key = f"test_{result.metric}"
    samplings = sorted({str(row.get("sampling", "default")) for row in result.rows})
    for sampling in samplings:
        rows = [r for r in result.rows if str(r.get("sampling", "default")) == sampling]
        bits = sorted({r.get("bits") for r in rows if r.get("bits") is not None})
        if bits:
            # the mean over the other grid parameters (seeds, steps, ...) at each width
            means = [np.mean([r[key] for r in rows if r.get("bits") == b]) for b in bits]
            axes.plot(bits, means, marker="o", label=sampling)
        else:
            axes.axhline(np.mean([r[key] for r in rows]), label=sampling)
    axes.set_xlabel("bits")
    axes.set_ylabel(f"{result.metric} ({result.folds}-fold cross-validation)")
    axes.set_title(f"{result.estimator} on {Path(result.dataset).name}")
    axes.legend(title="sampling")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_sweep(result: SweepResult, out: str | Path) -> list[Path]:
    """Write sweep.csv, sweep.json and sweep.png into ``out`` (created if needed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    document = {"estimator": result.estimator, "dataset": result.dataset,
                "metric": result.metric, "backend": result.backend,
                "workers": result.workers, "folds": result.folds,
                "seconds": result.seconds, "settings": result.settings, "rows": result.rows}
    files = {out / "sweep.csv": _csv(result),
             out / "sweep.json": (json.dumps(document, indent=2) + "\n").encode(),
             out / "sweep.png": _plot(result)}
    for path, data in files.items():
        write_atomic(path, data)
    return list(files)
