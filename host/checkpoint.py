"""Checkpoints of a training run, and resuming from one.

At the end of every epoch (HALP: outer iteration) :func:`~ziphalp.host.train` with
a ``checkpoint`` folder writes ``checkpoint.json`` there, atomically (a temporary
file, then ``os.replace``: a kill leaves the previous checkpoint whole). It holds
everything the run needs to go on as if it had not stopped:

* the model words read back from the board and the epoch they end;
* the state of the run's random generator (shuffles, host sampling, the board's
  sampling seeds), which makes every later epoch draw what it would have drawn;
* the settings, a fingerprint of the data set (SHA-256 of its features and
  labels) and the board's identity (build id), to refuse a resume that would not
  continue the same run;
* the history so far.

The board's own state between epochs is its level table, configuration, model
and (resident data) store: a resume reloads all of them from the host, so it
works whether the board kept its state, was reset or was swapped for another of
the same build. An epoch that was cut short is run again from its start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

__all__ = ["CHECKPOINT", "CHECKPOINT_FORMAT", "Checkpoint", "ResumeError", "check_resume",
           "fingerprint", "plain", "read", "write"]

CHECKPOINT = "checkpoint.json"
CHECKPOINT_FORMAT = "ziphalp-checkpoint/1"
#: Settings that may differ between a run and its resume (more epochs go on).
FREE_SETTINGS = ("epochs", "load_bytes")


class ResumeError(ValueError):
    """A checkpoint is missing, unreadable, or from another run."""


@dataclasses.dataclass
class Checkpoint:
    """What ``checkpoint.json`` holds (module docstring)."""

    epoch: int
    words: list[int]
    rng: dict
    settings: dict
    dataset: dict
    build_id: int
    board: str
    history: list[dict]


def fingerprint(features: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the data set's float64 features and labels (shape included)."""
    digest = hashlib.sha256()
    for array in (features, labels):
        array = np.ascontiguousarray(array, np.float64)
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def plain(value):
    """``value`` as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(value))


def write(folder: Path, checkpoint: Checkpoint) -> Path:
    """Write ``checkpoint`` into ``folder`` atomically; return the path."""
    from .report import write_atomic

    document = {"format": CHECKPOINT_FORMAT} | dataclasses.asdict(checkpoint)
    path = Path(folder) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(document, indent=1) + "\n").encode())
    return path


def read(folder: Path) -> Checkpoint:
    """The checkpoint in ``folder``; ResumeError if there is none or it is unreadable."""
    path = Path(folder) / CHECKPOINT
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResumeError(f"nothing to resume in {folder}: no {CHECKPOINT}") from None
    except (OSError, ValueError) as e:
        raise ResumeError(f"cannot read {path}: {e}") from None
    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        raise ResumeError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    try:
        return Checkpoint(**{f.name: document[f.name] for f in dataclasses.fields(Checkpoint)})
    except KeyError as e:
        raise ResumeError(f"{path} lacks {e.args[0]!r}") from None


def check_resume(saved: Checkpoint, folder: Path, settings: dict, dataset: dict,
                 board: str) -> None:
    """ResumeError unless ``saved`` is a checkpoint of the run these settings, data
    set (``{"name", "n", "d", "sha256"}``) and board kind describe."""
    if saved.dataset.get("sha256") != dataset["sha256"]:
        raise ResumeError(f"{folder} is a run on another data set ({saved.dataset.get('name')}, "
                          f"{saved.dataset.get('n')} x {saved.dataset.get('d')}), not "
                          f"{dataset['name']} ({dataset['n']} x {dataset['d']})")
    if saved.board != board:
        raise ResumeError(f"{folder} is a run on the {saved.board} board, not {board}")
    now = plain(settings)
    for name in sorted(set(now) | set(saved.settings)):
        if name in FREE_SETTINGS:
            continue
        if saved.settings.get(name) != now.get(name):
            raise ResumeError(f"{folder} is a run with {name} {saved.settings.get(name)!r}, "
                              f"not {now.get(name)!r}")
    if saved.epoch > settings["epochs"]:
        raise ResumeError(f"{folder} has already run {saved.epoch} epochs, more than the "
                          f"{settings['epochs']} asked for")
