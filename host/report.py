"""Output files of a training run: model.json, history.json and loss.png.

Every file is written atomically (a temporary file in the same folder, then
``os.replace``): a crash never leaves a half-written output.

history.json (format ``ziphalp-history/5``), a format scripts can rely on::

    {
      "format": "ziphalp-history/5",
      "algo": str,                # "sgd" (mini-batch SGD) or "halp" (bit-centering SVRG)
      "dataset": str,             # bundled name or file path
      "task": str,                # "regression" or "classification"
      "n": int, "d": int,         # samples; features without the bias
      "loss_function": str,       # squared | logistic | hinge | squared_hinge: the
                                  #   objective F(w) = 1/n sum c_i l(a_i.w, b_i)
                                  #   + l2/2 ||w||^2 on normalised data
      "optimum_loss": float|null, # F at its float64 minimiser (null if none)
      "optimum_data": str,        # the data F and the optimum refer to: the normalised
                                  #   data (sgd), or the quantised problem the board
                                  #   solves (halp: features rounded to k-bit levels,
                                  #   labels LABEL words)
      "halp": null | {"offset_bits", "data_bits", "mu", "inner_steps", "step", "shift",
                      "scale_log"},  # the HALP settings (null for sgd)
      "final_loss": float,        # F after the last epoch
      "board": str,               # a key of BOARD_PARAMS ("sim", "icebreaker", ...)
      "engine": {...},            # what IDENTIFY reported (beat_bits, lanes, max_k,
                                  #   ..., clock_hz, build_id) plus the formats
      "levels": [float],          # the level table the board decoded
      "quantisation_variance": float,  # mean variance per feature value on it
      "settings": {"epochs", "step", "shift", "batch", "seed", "bits", "sampling",
                   "levels", "loss", "costs", "l2", "l2_shift", "shuffle", "halve_every",
                   "algo",
                   "data",          # "resident" (loaded once, the board feeds and
                                    #   rounds itself), "replayed" (quantised once,
                                    #   the board replays the same samples) or
                                    #   "streamed" (quantised on the host every epoch)
                   "load_bytes",    # host bytes of loading the data (0 streamed)
                   ...},    # (halp adds the keys of "halp" and full_shift, full_cost, stale)
      "epochs": [{"epoch": int|float,  # 1-based; halp: passes over the data so far,
                                    #   (n + T) / n per outer iteration
                  "loss": float,    # F of the model read back after the epoch
                  "accuracy": float|null,  # training accuracy (classification)
                  "cycles": int,    # engine clock cycles spent in the epoch
                  "seconds": float, # wall time of the epoch on the host
                  "samples": int,   # samples the board counted
                  "overflow": bool, # a model update saturated
                  "clipped": bool,  # a scaled loss derivative saturated
                  "iteration": int|null,      # halp: outer iteration (1-based)
                  "suboptimality": float|null,  # halp: (loss - optimum) / optimum
                  "full_cycles": int|null,    # halp: cycles of the full-gradient pass
                  "inner_cycles": int|null,   # halp: cycles of the inner loop
                  "host_bytes": int,          # bytes the host sent and received in the
                                              #   epoch (data, model, counters; not the load)
                  "retries": int},            # requests resent after a lost reply or a
                                              #   garbled request
                 ...]
    }

Format 3 added ``algo``, ``optimum_data``, ``halp`` and the last four keys of an
epoch but ``host_bytes`` to format 2; format 4 added ``settings.data``,
``settings.load_bytes`` and ``host_bytes``; format 5 added ``retries``.

The loss is in normalised units (features, and a regression label, in [-1, 1]).
model.json holds the model in the user's original units and in normalised
units, the raw fixed-point words with their format, and the engine.
This module does not train and does not talk to a board.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from ziphalp.hw.params import LEVEL

from .quantize import words_to_coefficients
from .train import TrainResult

__all__ = ["HISTORY_FORMAT", "MODEL_FORMAT", "history", "model", "write_atomic",
           "write_outputs"]

HISTORY_FORMAT = "ziphalp-history/5"
MODEL_FORMAT = "ziphalp-model/1"


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0o022)
    os.umask(umask)
    try:
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give a normal file's mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _engine(result: TrainResult) -> dict:
    engine = dataclasses.asdict(result.identity)
    engine["model_format"] = str(result.params.model)
    engine["level_format"] = str(LEVEL)
    return engine


def _optimum_data(result: TrainResult) -> str:
    if result.problem is not None:
        return result.problem.description
    return "normalised features and labels (float64, unquantised)"


def _halp_settings(result: TrainResult) -> dict | None:
    if result.algo != "halp":
        return None
    s = result.settings
    return {key: s[key] for key in ("offset_bits", "data_bits", "mu", "inner_steps", "step",
                                    "shift", "scale_log")}


def history(result: TrainResult) -> dict:
    """The ``ziphalp-history/5`` document of a training run."""
    return {
        "format": HISTORY_FORMAT,
        "algo": result.algo,
        "dataset": result.dataset.name,
        "task": result.data.task,
        "n": result.dataset.n,
        "d": result.dataset.d,
        "loss_function": result.settings["loss"],
        "optimum_loss": result.optimum_loss,
        "optimum_data": _optimum_data(result),
        "halp": _halp_settings(result),
        "final_loss": result.loss,
        "board": result.board,
        "engine": _engine(result),
        "levels": [float(level) for level in result.levels],
        "quantisation_variance": result.variance,
        "settings": dict(result.settings),
        "epochs": [dataclasses.asdict(record) for record in result.history],
    }


def model(result: TrainResult) -> dict:
    """The ``ziphalp-model/1`` document: the final model in every unit."""
    dataset, data = result.dataset, result.data
    coef, intercept = result.original_units()
    beta = result.coefficients
    return {
        "format": MODEL_FORMAT,
        "dataset": dataset.name,
        "label": dataset.label_name,
        "features": dataset.feature_names,
        "original_units": {
            "coefficients": dict(zip(dataset.feature_names, map(float, coef), strict=True)),
            "intercept": intercept,
        },
        "normalised_units": {
            "coefficients": [float(b) for b in beta[:-1]],
            "intercept": float(beta[-1]),
            "feature_scale": data.feature_map.scale.tolist(),
            "feature_offset": data.feature_map.offset.tolist(),
            "label_scale": float(data.label_map.scale),
            "label_offset": float(data.label_map.offset),
            "note": "normalised = scale * original + offset",
        },
        "fixed_point": {
            "format": str(result.params.model),
            "words": [int(w) for w in result.words],
            "coefficient_per_lsb": float(words_to_coefficients(1, result.params)),
            "note": "normalised coefficient = word * coefficient_per_lsb",
        },
        "optimum": None if result.optimum is None else {
            "coefficients": dict(zip(dataset.feature_names,
                                       map(float, data.to_original(result.optimum)[0]),
                                       strict=True)),
            "intercept": data.to_original(result.optimum)[1],
            "loss": result.optimum_loss,
            "note": f"float64 minimiser of the {result.settings['loss']} objective on "
                    f"the {_optimum_data(result)}, original units",
        },
        "engine": _engine(result),
        "settings": dict(result.settings),
    }


def _plot_halp(result: TrainResult, axes) -> None:
    s = result.settings
    points = [(r.epoch, r.suboptimality) for r in result.history
              if r.suboptimality is not None and r.suboptimality > 0]
    if points:
        axes.plot(*zip(*points, strict=True), marker="o", markersize=3,
                  label=f"HALP on {result.board}")
        axes.set_ylabel("(f - f*) / f*  (quantised problem)")
    else:                 # no finite optimum: the loss itself
        axes.plot([r.epoch for r in result.history], [r.loss for r in result.history],
                  marker="o", markersize=3, label=f"HALP on {result.board}")
        axes.set_ylabel("training loss (quantised problem)")
    axes.set_yscale("log")
    axes.set_xlabel("epoch (passes over the data)")
    axes.set_title(f"HALP, {s['loss'].replace('_', ' ')} on {Path(result.dataset.name).name}: "
                   f"b = {s['offset_bits']}, k = {s['data_bits']}, mu = {s['mu']:.3g}",
                   fontsize="medium")
    axes.legend()


def _plot(result: TrainResult) -> bytes:
    figure = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if result.algo == "halp":
        _plot_halp(result, axes)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=120)
        return buffer.getvalue()
    epochs = [r.epoch for r in result.history]
    axes.plot(epochs, [r.loss for r in result.history], marker="o", markersize=3,
              label=f"ziphalp ({result.board})")
    if result.optimum_loss is not None:
        axes.axhline(result.optimum_loss, linestyle="--", color="black",
                     label="float64 optimum")
    axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("training loss (normalised units)")
    axes.set_title(f"least squares on {Path(result.dataset.name).name}")
    axes.legend()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def write_outputs(result: TrainResult, out: str | Path) -> list[Path]:
    """Write model.json, history.json and loss.png into ``out`` (created if needed).

    Returns
    -------
    list of Path
        The files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        out / "model.json": (json.dumps(model(result), indent=2) + "\n").encode(),
        out / "history.json": (json.dumps(history(result), indent=2) + "\n").encode(),
        out / "loss.png": _plot(result),
    }
    for path, data in files.items():
        write_atomic(path, data)
    return list(files)
