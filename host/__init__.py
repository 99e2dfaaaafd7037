"""ziphalp host: data, quantisation, the board driver, the training loop and the CLI.

The scikit-learn estimators are imported when first asked for (``from ziphalp.host
import HALPRegressor``): scikit-learn takes over a second to import, which every
``ziphalp`` command would otherwise pay.
"""

from .driver import Board, BoardError
from .train import TrainResult, train

__all__ = ["Board", "BoardError", "TrainResult", "train",
           "ZipMLRegressor", "ZipMLClassifier", "HALPRegressor", "HALPClassifier"]

_ESTIMATORS = ("ZipMLRegressor", "ZipMLClassifier", "HALPRegressor", "HALPClassifier")


def __getattr__(name: str):
    if name in _ESTIMATORS:
        from . import estimators
        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
