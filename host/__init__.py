"""ziphalp host: data, quantisation, the board driver, the training loop and the CLI."""

from .driver import Board, BoardError
from .train import TrainResult, train

__all__ = ["Board", "BoardError", "TrainResult", "train"]
