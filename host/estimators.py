"""scikit-learn estimators that train on a ziphalp board.

:class:`ZipMLRegressor` and :class:`ZipMLClassifier` run mini-batch SGD on
low-precision (double-sampled) data; :class:`HALPRegressor` and
:class:`HALPClassifier` run bit-centering SVRG in the engine's HALP mode. Each
``fit`` calls :func:`ziphalp.host.train` on the board named by ``board`` (a
simulated board is started for the fit unless ``port`` names a real or running
one) and keeps the model in the user's units: ``coef_``, ``intercept_``. Prediction
is done on the host in float64 (a linear model needs no board to predict).

They follow scikit-learn's conventions (``get_params``/``set_params``, input
validation, ``n_features_in_``, ``feature_names_in_``) and pass its estimator checks
(``tests/test_estimators.py``), so they work in ``Pipeline`` and ``GridSearchCV``.
What a fixed-point board cannot do is declared in the estimator tags and said
in :meth:`_ZiphalpEstimator.__sklearn_tags__`:

* the classifiers are binary (the engine trains one weight vector);
* the model's accuracy is that of a low-precision engine, so scikit-learn's
  fixed score bars are not the bars of this project (the README's are);
* no sample weights (the engine has class costs instead; not exposed here).

Invalid parameters raise ``ValueError`` at ``fit`` (:class:`~ziphalp.host.train.SettingsError`
and :class:`~ziphalp.host.data.DataError` are ``ValueError`` subclasses), as
scikit-learn's own estimators do.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from .data import Dataset
from .train import DEFAULTS, train

__all__ = ["ZipMLRegressor", "ZipMLClassifier", "HALPRegressor", "HALPClassifier"]

#: Parameters passed to :func:`~ziphalp.host.train` under the same name.
_TRAIN_PARAMS = ("board", "port", "bits", "sampling", "levels", "loss", "epochs", "step",
                 "batch", "seed", "l2", "resident", "timeout", "mu", "inner_steps",
                 "data_bits", "stale")


class _ZiphalpEstimator(BaseEstimator):
    """What the four estimators share: ``fit`` through :func:`~ziphalp.host.train`."""

    _algo = "sgd"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # sample_weight is not a fit parameter; NaN and inf are rejected (the engine
        # has no missing-value handling); fits are deterministic for a fixed seed.
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    def _train_kwargs(self) -> dict:
        params = self.get_params(deep=False)
        kwargs = {name: params[name] for name in _TRAIN_PARAMS if name in params}
        # regressors fit least squares; HALPClassifier's loss is fixed (a class attribute)
        return kwargs | {"loss": getattr(self, "loss", "squared")}

    def _train(self, X: np.ndarray, y: np.ndarray, task: str):
        names = ([str(name) for name in self.feature_names_in_]
                 if hasattr(self, "feature_names_in_")
                 else [f"x{i}" for i in range(X.shape[1])])
        dataset = Dataset(type(self).__name__, X, y, names, "y", task)
        result = train(dataset, algo=self._algo, progress=False, **self._train_kwargs())
        coefficients, intercept = result.original_units()
        self.n_iter_ = len(result.history)
        self.loss_curve_ = [record.loss for record in result.history]
        self.train_result_ = result
        return np.asarray(coefficients, np.float64), float(intercept)

    def _linear(self, X) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return X @ np.ravel(self.coef_) + np.ravel(self.intercept_)[0]


class _Regressor(RegressorMixin, _ZiphalpEstimator):
    def fit(self, X, y):
        """Train on the board: X of shape (n_samples, n_features), y of shape (n_samples,)."""
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=True)
        if np.ptp(y) == 0:
            # Nothing to learn: the least-squares line through a constant is that
            # constant (the board's label map needs a spread of labels).
            self.coef_, self.intercept_ = np.zeros(X.shape[1]), float(y[0])
            self.n_iter_, self.loss_curve_, self.train_result_ = 0, [], None
            return self
        self.coef_, self.intercept_ = self._train(X, y, "regression")
        return self

    def predict(self, X):
        """The model's prediction ``X @ coef_ + intercept_`` (float64, on the host)."""
        return self._linear(X)


class _Classifier(ClassifierMixin, _ZiphalpEstimator):
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # The engine trains one weight vector: two classes. (A one-vs-rest wrapper,
        # sklearn.multiclass.OneVsRestClassifier, trains one board model per class.)
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y):
        """Train on the board: y holds exactly two classes; ``classes_[1]`` is the
        positive one (label +1 on the board)."""
        X, y = validate_data(self, X, y, dtype=np.float64)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError("Only binary classification is supported. The type of the "
                             f"target is {kind} (wrap {type(self).__name__} in "
                             "OneVsRestClassifier for more classes).")
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise ValueError(f"{type(self).__name__} needs 2 classes; y has one class "
                             f"only ({self.classes_[0]!r})")
        signs = np.where(y == self.classes_[1], 1.0, -1.0)
        coefficients, intercept = self._train(X, signs, "classification")
        self.coef_ = coefficients.reshape(1, -1)
        self.intercept_ = np.array([intercept])
        return self

    def decision_function(self, X):
        """Signed distance ``X @ coef_ + intercept_``: positive for ``classes_[1]``."""
        return self._linear(X)

    def predict(self, X):
        """The class on the model's side of each sample."""
        check_is_fitted(self)
        return self.classes_[(self.decision_function(X) > 0).astype(int)]

    def _is_logistic(self) -> bool:
        return self.loss == "logistic"

    @available_if(_is_logistic)
    def predict_proba(self, X):
        """Class probabilities of the logistic model, columns in ``classes_`` order."""
        positive = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.column_stack([1.0 - positive, positive])

    @available_if(_is_logistic)
    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`."""
        margin = self.decision_function(X)
        return np.column_stack([-np.logaddexp(0.0, margin), -np.logaddexp(0.0, -margin)])


class ZipMLRegressor(_Regressor):
    """Least squares trained by low-precision mini-batch SGD on a board (ZipML).

    Parameters
    ----------
    board : str, default "sim"
        Board kind (``ziphalp.hw.params.BOARD_PARAMS``); ``"sim"`` and ``"sim-..."``
        start a simulated board for each fit unless ``port`` is given.
    port : str or None
        Serial port or pyserial URL of the board (real boards need it).
    bits : int, default 4
        Feature precision k: ``2**k + 1`` levels.
    sampling : {"double", "single", "nearest"}, default "double"
    levels : {"uniform", "optimal"}, default "uniform"
    epochs : int, default 30
    step : float or None
        Step size (the nearest power of two is used); None: the engine default.
    batch : int or None
        Mini-batch size; None: the default (8).
    seed : int, default 0
        Seed of the on-chip or host sampling and of the shuffle.
    l2 : float, default 0.0
        L2 strength.
    resident : bool or None
        Data resident on the board (None: when the board has a store and it fits).
    timeout : float, default 5.0
        Seconds to wait for each reply of the board.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    n_iter_ : int
        Epochs run.
    loss_curve_ : list of float
        Training objective (float64, on the normalised data) after each epoch.
    train_result_ : TrainResult
        Everything :func:`~ziphalp.host.train` reported (history, settings, cycles).
    """

    def __init__(self, *, board="sim", port=None, bits=DEFAULTS["bits"],
                 sampling=DEFAULTS["sampling"], levels=DEFAULTS["levels"],
                 epochs=DEFAULTS["epochs"], step=None, batch=None, seed=DEFAULTS["seed"],
                 l2=0.0, resident=None, timeout=5.0):
        self.board = board
        self.port = port
        self.bits = bits
        self.sampling = sampling
        self.levels = levels
        self.epochs = epochs
        self.step = step
        self.batch = batch
        self.seed = seed
        self.l2 = l2
        self.resident = resident
        self.timeout = timeout


class ZipMLClassifier(_Classifier):
    """A linear binary classifier trained by low-precision mini-batch SGD (ZipML).

    Parameters are those of :class:`ZipMLRegressor`, and

    loss : {"logistic", "hinge", "squared-hinge"}, default "logistic"
        Logistic regression, or a linear SVM. ``predict_proba`` exists for the
        logistic loss only.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
    coef_ : ndarray of shape (1, n_features)
    intercept_ : ndarray of shape (1,)
    n_iter_, loss_curve_, train_result_ : as :class:`ZipMLRegressor`
    """

    def __init__(self, *, board="sim", port=None, loss="logistic", bits=DEFAULTS["bits"],
                 sampling=DEFAULTS["sampling"], levels=DEFAULTS["levels"],
                 epochs=DEFAULTS["epochs"], step=None, batch=None, seed=DEFAULTS["seed"],
                 l2=0.0, resident=None, timeout=5.0):
        self.board = board
        self.port = port
        self.loss = loss
        self.bits = bits
        self.sampling = sampling
        self.levels = levels
        self.epochs = epochs
        self.step = step
        self.batch = batch
        self.seed = seed
        self.l2 = l2
        self.resident = resident
        self.timeout = timeout

    def _train_kwargs(self) -> dict:
        if self.loss == "squared":
            raise ValueError("ZipMLClassifier's loss must be 'logistic', 'hinge' or "
                             "'squared-hinge' (least squares is ZipMLRegressor)")
        return super()._train_kwargs()


class _HALP:
    """The HALP estimators' parameters (documented in :class:`HALPRegressor`)."""

    _algo = "halp"

    def __init__(self, *, board="sim-ulx3s", port=None, bits=None, epochs=DEFAULTS["epochs"],
                 step=None, seed=DEFAULTS["seed"], mu=None, inner_steps=None,
                 data_bits=None, stale=None, resident=None, timeout=5.0):
        self.board = board
        self.port = port
        self.bits = bits
        self.epochs = epochs
        self.step = step
        self.seed = seed
        self.mu = mu
        self.inner_steps = inner_steps
        self.data_bits = data_bits
        self.stale = stale
        self.resident = resident
        self.timeout = timeout


class HALPRegressor(_HALP, _Regressor):
    """Least squares trained by bit-centering SVRG in the engine's HALP mode.

    Parameters
    ----------
    board : str, default "sim-ulx3s"
        A board built with HALP (``ulx3s``, or its simulation ``sim-ulx3s``).
    port, seed, resident, timeout : as :class:`ZipMLRegressor`
    bits : int, default 8
        Offset width b (2..16), and the data precision unless ``data_bits``.
    epochs : int, default 30
        Outer iterations (a full-gradient pass and an inner loop each).
    step : float or None
        SVRG step (power of two); None: ``1 / (4 L)`` of the quantised problem.
    mu : float or None
        Grid scale factor (None: :func:`~ziphalp.host.train.halp_default_mu`).
    inner_steps : int or None
        Inner steps per outer iteration (None: n).
    data_bits : int or None
        Data precision k (1..8) when it is not ``bits``.
    stale : int or None
        Delay of the inner loop's gradients in samples (None: the board's default).

    Attributes
    ----------
    coef_, intercept_, n_iter_, loss_curve_, train_result_ : as :class:`ZipMLRegressor`
        ``n_iter_`` counts outer iterations; ``loss_curve_`` is the objective on
        the quantised problem after each.
    """


class HALPClassifier(_HALP, _Classifier):
    """Logistic regression trained by bit-centering SVRG in the engine's HALP mode.

    Parameters and attributes are those of :class:`HALPRegressor` (HALP runs the
    logistic loss for classification), with ``classes_`` and ``predict_proba`` as in
    :class:`ZipMLClassifier`.
    """

    loss = "logistic"
