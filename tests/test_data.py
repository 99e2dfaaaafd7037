"""Data loading, validation, normalisation and the float64 least-squares reference."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from ziphalp.host.data import (
    Affine,
    DataError,
    Dataset,
    least_squares_loss,
    least_squares_optimum,
    load,
    normalise,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_diabetes_optimum_matches_sklearn():
    dataset = load("diabetes")
    assert (dataset.n, dataset.d) == (442, 10)
    data = normalise(dataset)
    beta, loss = least_squares_optimum(data.features, data.labels)
    coef, intercept = data.to_original(beta)
    reference = LinearRegression().fit(dataset.features, dataset.labels)
    # Relative to the norm of the reference: both solve the same well-posed problem.
    np.testing.assert_allclose(coef, reference.coef_,
                               atol=1e-9 * np.linalg.norm(reference.coef_), rtol=0)
    assert intercept == pytest.approx(reference.intercept_, rel=1e-9)
    # The reference's predictions, normalised, have the same (optimal) loss.
    predicted = data.label_map.forward(reference.predict(dataset.features))
    residual = predicted - data.labels
    assert loss == pytest.approx(residual @ residual / (2 * dataset.n), rel=1e-9)
    assert loss == pytest.approx(least_squares_loss(data.features, data.labels, beta))


def test_normalisation_range_and_inverse():
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(200, 5)) * [1, 1e3, 1e-3, 50, 7] + [0, -4e3, 2, 1e4, -3]
    affine = Affine.to_unit_range(raw)
    normal = affine.forward(raw)
    assert normal.min() >= -1 and normal.max() <= 1
    # Each column's extremes land on -1 and 1 (to a few ulp before the clip).
    np.testing.assert_allclose(normal.min(axis=0), -1, atol=1e-15)
    np.testing.assert_allclose(normal.max(axis=0), 1, atol=1e-15)
    # Back to original units: within 1e-12 of each column's range.
    span = raw.max(axis=0) - raw.min(axis=0)
    assert np.all(np.abs(affine.inverse(normal) - raw) <= 1e-12 * span)


def test_constant_feature_and_bias_column():
    features = np.array([[1.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    data = normalise(Dataset("t", features, np.array([0.0, 1.0, 3.0]), ["a", "b"], "y"))
    np.testing.assert_array_equal(data.features[:, 1], 0.0)     # constant feature -> 0
    np.testing.assert_array_equal(data.features[:, 2], 1.0)     # bias column
    np.testing.assert_allclose(data.features[:, 0], [-1, -1 / 3, 1], atol=1e-15)
    np.testing.assert_allclose(data.labels, [-1, -1 / 3, 1], atol=1e-15)


def test_to_original_predicts_the_same():
    dataset = load("diabetes")
    data = normalise(dataset)
    beta = np.random.default_rng(2).normal(size=dataset.d + 1)
    coef, intercept = data.to_original(beta)
    normalised_prediction = data.features @ beta
    original_prediction = dataset.features @ coef + intercept
    np.testing.assert_allclose(data.label_map.inverse(normalised_prediction),
                               original_prediction, rtol=1e-9, atol=1e-9)


def test_csv_header_and_label_column(tmp_path):
    path = write(tmp_path, "a.csv", "age, y ,bmi\n1,10,3\n\n2,20,5\n4,30,6\n")
    last = load(path)
    assert last.feature_names == ["age", "y"] and last.label_name == "bmi"
    np.testing.assert_array_equal(last.labels, [3, 5, 6])
    by_name = load(path, "y")
    assert by_name.feature_names == ["age", "bmi"]
    np.testing.assert_array_equal(by_name.labels, [10, 20, 30])
    np.testing.assert_array_equal(by_name.features, [[1, 3], [2, 5], [4, 6]])
    assert load(path, "0").label_name == "age"
    assert load(path, -2).label_name == "y"
    with pytest.raises(DataError, match="no label column 'z'"):
        load(path, "z")
    with pytest.raises(DataError, match="out of range"):
        load(path, 3)


def test_csv_without_header_and_semicolons(tmp_path):
    dataset = load(write(tmp_path, "b.csv", "1;2;3\n4;5;6.5\n"))
    assert dataset.feature_names == ["x0", "x1"] and dataset.label_name == "y"
    np.testing.assert_array_equal(dataset.labels, [3, 6.5])


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n\n3,oops\n", r"line 4: cannot parse 'oops'"),
    ("a,b\n1,2\n3,4,5\n", r"line 3: 3 columns, expected 2"),
    ("1,2\n3,nan\n", r"line 2: value is NaN or infinite"),
    ("1,2\ninf,4\n", r"line 2: value is NaN or infinite"),
    ("a,b\n1,2\n", r"1 row\(s\); at least 2"),
    ("y\n1\n2\n", r"no feature columns"),
    ("", r"empty"),
    ("a,b\n", r"no data rows"),
    ("1,5\n2,5\n", r"label is constant"),
])
def test_csv_errors(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        normalise(load(write(tmp_path, "bad.csv", text)))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "absent.csv")


def test_libsvm(tmp_path):
    path = write(tmp_path, "c.svm", "1.5 1:0.5 3:-2\n-1 2:4 # comment\n0 1:1 2:1 3:1\n")
    dataset = load(path)
    np.testing.assert_array_equal(dataset.labels, [1.5, -1, 0])
    np.testing.assert_array_equal(dataset.features, [[0.5, 0, -2], [0, 4, 0], [1, 1, 1]])
    sniffed = load(write(tmp_path, "c.txt", path.read_text()))
    np.testing.assert_array_equal(sniffed.features, dataset.features)


def test_libsvm_errors(tmp_path):
    with pytest.raises(DataError, match="line 2: not a LIBSVM line"):
        load(write(tmp_path, "d.svm", "1 1:0.5\n2 1:x\n"))
    with pytest.raises(DataError, match="line 2: value is NaN or infinite"):
        load(write(tmp_path, "e.svm", "1 1:0.5\n2 1:nan\n3 1:1\n"))
