"""A simulated board the tests add to the presets (``ziphalp.hw.params.BOARD_PARAMS``)."""

import dataclasses

from ziphalp.hw.params import BOARD_PARAMS

#: A small HALP engine for scikit-learn's estimator checks, which are about the API
#: and fit hundreds of times: the ULX3S engine's options on two lanes of 32-bit
#: beats, without the resident store (so the checks' fits stream their data). It
#: simulates about fifteen times faster than ``sim-ulx3s``: a HALP fit of the checks'
#: size took 0.13 s against 2.3 s. The models are measured on ``sim-ulx3s``.
CHECKS_HALP_BOARD = "sim-halp-checks"
CHECKS_HALP = dataclasses.replace(
    BOARD_PARAMS["sim-ulx3s"], beat_bits=32, lanes=2, max_features=64, max_batch=8,
    frame_bytes=1024, halp_samples=512, resident_rows=0, resident_samples=0)


def add_checks_board(monkeypatch) -> None:
    """Make :data:`CHECKS_HALP_BOARD` a board name for the rest of the test."""
    monkeypatch.setitem(BOARD_PARAMS, CHECKS_HALP_BOARD, CHECKS_HALP)
