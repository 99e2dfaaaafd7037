"""ziphalp host: data, quantisation, the board driver, the training loop and the CLI."""

from .driver import Board, BoardError
from .estimators import HALPClassifier, HALPRegressor, ZipMLClassifier, ZipMLRegressor
from .train import TrainResult, train

__all__ = ["Board", "BoardError", "TrainResult", "train",
           "ZipMLRegressor", "ZipMLClassifier", "HALPRegressor", "HALPClassifier"]
