"""The scikit-learn estimators (``ziphalp.host.estimators``) on the simulated boards.

scikit-learn's own estimator checks run on all four; the models are compared with
scikit-learn's float64 linear models on bundled data sets; they work in
``Pipeline`` and ``GridSearchCV`` (and ``GridSearchCV(n_jobs=2)`` scores exactly as
a sequential search: each fit owns its board and the board is deterministic).
"""

import numpy as np
import pytest
from boards import CHECKS_HALP_BOARD, add_checks_board
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks
from ziphalp.host import HALPClassifier, HALPRegressor, ZipMLClassifier, ZipMLRegressor


# HALP's checks run 8 outer iterations (not 30) on a small HALP engine
# (tests/boards.py) to keep the suite short; the checks are about the API, the bars
# below about the models (on sim-ulx3s).
@parametrize_with_checks([ZipMLRegressor(), ZipMLClassifier(),
                          HALPRegressor(epochs=8, board=CHECKS_HALP_BOARD),
                          HALPClassifier(epochs=8, board=CHECKS_HALP_BOARD)])
def test_sklearn_estimator_checks(estimator, check, monkeypatch):
    add_checks_board(monkeypatch)
    check(estimator)


def test_zipml_regressor_matches_least_squares():
    """4-bit double sampling on diabetes: R^2 within 0.02 of float64 least squares
    (fitted and scored on the same data), over the engine's 60 epochs."""
    X, y = load_diabetes(return_X_y=True)
    model = ZipMLRegressor(bits=4, epochs=60, step=2.0 ** -8).fit(X, y)
    best = LinearRegression().fit(X, y)
    assert model.coef_.shape == (10,) and isinstance(model.intercept_, float)
    assert model.n_iter_ == 60 and len(model.loss_curve_) == 60
    assert model.loss_curve_[-1] < model.loss_curve_[0]
    assert model.score(X, y) > best.score(X, y) - 0.02
    assert model.train_result_.settings["bits"] == 4


def test_halp_regressor_matches_least_squares():
    """HALP at 8 bits on diabetes: R^2 within 0.005 of float64 least squares, and the
    objective on the quantised problem falls every outer iteration."""
    X, y = load_diabetes(return_X_y=True)
    X, y = X[:400], y[:400]
    model = HALPRegressor(epochs=20).fit(X, y)
    assert model.score(X, y) > LinearRegression().fit(X, y).score(X, y) - 0.005
    assert model.n_iter_ == 20
    assert np.all(np.diff(model.loss_curve_) < 0)
    assert model.train_result_.history[-1].suboptimality < 0.01


def test_classifier_in_pipeline_matches_logistic_regression():
    """Breast cancer: scaled, then 4-bit ZipML logistic regression (step 2**-7, 30
    epochs); held-out accuracy within 3 points of scikit-learn's float64 LogisticRegression."""
    X, y = load_breast_cancer(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, test = order[:400], order[400:]
    names = np.array(["malignant", "benign"])[y]     # string classes round-trip
    pipe = make_pipeline(StandardScaler(), ZipMLClassifier(bits=4, epochs=30, step=2.0 ** -7))
    pipe.fit(X[train], names[train])
    best = make_pipeline(StandardScaler(), LogisticRegression()).fit(X[train], names[train])
    assert set(pipe.predict(X[test])) <= {"malignant", "benign"}
    assert pipe.score(X[test], names[test]) >= best.score(X[test], names[test]) - 0.03
    proba = pipe.predict_proba(X[test])
    assert proba.shape == (len(test), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # the positive column is classes_[1], the side decision_function > 0 points to
    classifier = pipe[-1]
    assert list(classifier.classes_) == ["benign", "malignant"]
    np.testing.assert_array_equal(proba[:, 1] > 0.5, pipe.decision_function(X[test]) > 0)


def test_hinge_classifier_has_no_probabilities():
    model = ZipMLClassifier(loss="hinge")
    assert not hasattr(model, "predict_proba")
    assert hasattr(ZipMLClassifier(loss="logistic"), "predict_proba")


def test_grid_search_in_parallel_scores_as_sequential():
    """GridSearchCV over bits x sampling with two joblib workers: every split's score
    equals the sequential search's exactly (a fit is deterministic for its seed)."""
    X, y = load_diabetes(return_X_y=True)
    grid = {"bits": [1, 4], "sampling": ["double", "single"]}
    searches = [GridSearchCV(ZipMLRegressor(epochs=5), grid, cv=KFold(2),
                             n_jobs=jobs).fit(X[:200], y[:200]) for jobs in (1, 2)]
    for key in ("split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(searches[0].cv_results_[key],
                                      searches[1].cv_results_[key])
    assert searches[0].best_params_ == searches[1].best_params_
    assert searches[0].best_params_["bits"] == 4          # 1-bit data is worse


@pytest.mark.parametrize("estimator, message", [
    (ZipMLRegressor(bits=0), "bits must be 1..8"),
    (ZipMLRegressor(sampling="triple"), "unknown sampling 'triple'"),
    (ZipMLRegressor(epochs=0), "epochs must be at least 1"),
    (ZipMLRegressor(board="nope"), "unknown board 'nope'"),
    (ZipMLClassifier(loss="squared"), "loss must be 'logistic', 'hinge' or 'squared-hinge'"),
    (HALPRegressor(bits=1), "HALP offset bits must be 2..16"),
    (HALPRegressor(board="sim"), "the sim board has no HALP mode"),
])
def test_bad_parameters_raise_value_error(estimator, message):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = X @ [1.0, -2.0, 0.5] if not hasattr(estimator, "predict_proba") and \
        "Classifier" not in type(estimator).__name__ else np.sign(X[:, 0])
    with pytest.raises(ValueError, match=message):
        estimator.fit(X, y)


def test_multiclass_is_refused_with_a_pointer():
    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="Only binary classification is supported"):
        ZipMLClassifier().fit(X, np.arange(30) % 3)
