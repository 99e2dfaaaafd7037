"""Data loading, bundled data sets, validation, normalisation, splitting and the
float64 least-squares reference."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LinearRegression
from ziphalp.host.data import (
    Affine,
    DataError,
    Dataset,
    as_classification,
    least_squares_loss,
    least_squares_optimum,
    load,
    normalise,
    split,
    synthetic,
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


# --- bundled data sets ----------------------------------------------------------------


def test_breast_cancer():
    dataset = load("breast_cancer")
    assert (dataset.n, dataset.d, dataset.task) == (569, 30, "classification")
    assert set(np.unique(dataset.labels)) == {-1.0, 1.0}
    assert (dataset.labels > 0).sum() == 212           # +1: malignant
    data = normalise(dataset)
    np.testing.assert_array_equal(data.labels, dataset.labels)   # no affine on labels
    assert (float(data.label_map.scale), float(data.label_map.offset)) == (1.0, 0.0)
    assert data.task == "classification" and data.features.shape == (569, 31)
    assert np.abs(data.features).max() <= 1
    np.testing.assert_array_equal(data.features[:, -1], 1.0)
    # The normalised-unit model converts back: same decision values in original units.
    beta = np.random.default_rng(0).normal(size=31)
    coef, intercept = data.to_original(beta)
    np.testing.assert_allclose(dataset.features @ coef + intercept, data.features @ beta,
                               rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("spec, name, rows, positives", [
    ("digits:3", "digits:3", 1797, 183),
    ("digits:3,8", "digits:3,8", 183 + 174, 183),
    ("digits: 8 , 3", "digits:8,3", 183 + 174, 174),
])
def test_digits(spec, name, rows, positives):
    dataset = load(spec)
    assert (dataset.name, dataset.n, dataset.d, dataset.task) == (name, rows, 64,
                                                                  "classification")
    assert set(np.unique(dataset.labels)) == {-1.0, 1.0}
    assert (dataset.labels > 0).sum() == positives
    assert dataset.features.min() == 0 and dataset.features.max() == 16


@pytest.mark.parametrize("spec, message", [
    ("digits", r"^digits: expected digits:D .*D against E"),
    ("digits:x", r"^digits:x: expected digits:D"),
    ("digits:10", r"^digits:10: expected"),
    ("digits:1,2,3", r"^digits:1,2,3: expected"),
    ("digits:3,", r"^digits:3,: expected"),
    ("digits:3,3", r"^digits:3,3: the two digits must differ$"),
    ("breast_cancer:1", r"^breast_cancer:1: breast_cancer takes no options$"),
    ("diabetes:x", r"^diabetes:x: diabetes takes no options$"),
    ("synthetic:n=abc", r"^synthetic:n=abc: n must be int, not 'abc'$"),
    ("synthetic:noise=big", r"noise must be float"),
    ("synthetic:m=3", r"bad option 'm=3' \(expected key=value, keys n, d, seed, noise\)$"),
    ("synthetic-class:n", r"^synthetic-class:n: bad option 'n'"),
    ("synthetic:n=1", r"need n >= 2, d >= 1"),
    ("synthetic:d=0", r"need n >= 2, d >= 1"),
    ("synthetic:noise=-1", r"noise must be finite and >= 0$"),
    ("nosuch:3", r"^nosuch:3: no such file \(and not a bundled data set: breast_cancer, "
                 r"diabetes, digits, synthetic, synthetic-class\)$"),
])
def test_bundled_spec_errors(spec, message):
    with pytest.raises(DataError, match=message) as error:
        load(spec)
    assert "\n" not in str(error.value)


def test_synthetic_regression():
    dataset = load("synthetic:n=2000,d=5,seed=4")
    assert dataset.name == "synthetic:n=2000,d=5,seed=4,noise=0.1"
    assert (dataset.n, dataset.d, dataset.task) == (2000, 5, "regression")
    assert np.abs(dataset.features).max() <= 1
    # Deterministic by seed; another seed gives other data.
    again = load("synthetic:seed=4,d=5,n=2000")
    np.testing.assert_array_equal(again.features, dataset.features)
    np.testing.assert_array_equal(again.labels, dataset.labels)
    assert not np.array_equal(load("synthetic:n=2000,d=5,seed=5").labels, dataset.labels)
    # Least squares recovers the true model: standard error about noise / sqrt(n / 3)
    # per coefficient (features uniform on [-1, 1]), 0.004 here; allow 5 of them.
    data = normalise(dataset)
    beta, _ = least_squares_optimum(data.features, data.labels)
    coef, intercept = data.to_original(beta)
    np.testing.assert_allclose(np.append(coef, intercept), dataset.truth, atol=0.02)
    residual = dataset.labels - dataset.features @ dataset.truth[:-1] - dataset.truth[-1]
    assert residual.std() == pytest.approx(0.1, rel=0.1)
    # Defaults, and normalisation leaves features nearly unchanged.
    default = load("synthetic")
    assert (default.n, default.d) == (1000, 16) and default.name.endswith("seed=0,noise=0.1")
    assert np.abs(normalise(default).features[:, :-1] - default.features).max() < 0.02


def test_synthetic_classification():
    dataset = load("synthetic-class:n=3000,d=8,seed=2,noise=0")
    assert dataset.task == "classification" and dataset.name.startswith("synthetic-class:")
    assert set(np.unique(dataset.labels)) == {-1.0, 1.0}
    assert 0.3 < np.mean(dataset.labels > 0) < 0.7
    # Without noise the true model separates the classes exactly.
    margins = dataset.labels * (dataset.features @ dataset.truth[:-1] + dataset.truth[-1])
    assert margins.min() >= 0
    np.testing.assert_array_equal(synthetic(3000, 8, 2, 0.0, "classification").labels,
                                  dataset.labels)
    noisy = load("synthetic-class:n=3000,d=8,seed=2,noise=0.2")
    np.testing.assert_array_equal(noisy.features, dataset.features)
    flipped = np.mean(noisy.labels != dataset.labels)
    assert 0.01 < flipped < 0.2


# --- classification labels -------------------------------------------------------------


def test_as_classification(tmp_path):
    dataset = load(write(tmp_path, "e.csv", "a,y\n1,0\n2,1\n3,1\n"))
    assert dataset.task == "regression"
    binary = as_classification(dataset)
    assert binary.task == "classification"
    np.testing.assert_array_equal(binary.labels, [-1, 1, 1])
    np.testing.assert_array_equal(as_classification(dataset, positive=0).labels, [1, -1, -1])
    np.testing.assert_array_equal(normalise(binary).labels, [-1, 1, 1])
    with pytest.raises(DataError, match="no label is 5"):
        as_classification(dataset, positive=5)
    with pytest.raises(DataError, match="exactly two label values, found 3"):
        as_classification(load(write(tmp_path, "f.csv", "1,0\n2,1\n3,2\n")))


def test_classification_label_errors():
    features = np.array([[0.0], [1.0], [2.0]])
    with pytest.raises(DataError, match="one class only"):
        normalise(Dataset("t", features, np.ones(3), ["a"], "y", task="classification"))
    with pytest.raises(DataError, match="must be \\+1 or -1"):
        normalise(Dataset("t", features, np.array([0.0, 1.0, 1.0]), ["a"], "y",
                          task="classification"))


# --- splits -------------------------------------------------------------------------------


def sorted_rows(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    table = np.column_stack([features, labels])
    return table[np.lexsort(table.T[::-1])]


def test_split_is_deterministic_and_stratified():
    dataset = load("breast_cancer")
    train, test = split(dataset, 0.25, seed=3)
    assert (train.name, test.name) == ("breast_cancer[train]", "breast_cancer[test]")
    assert train.task == test.task == "classification"
    # Each class contributes round(0.25 * its rows) to the test part.
    assert (test.labels > 0).sum() == round(0.25 * 212)
    assert (test.labels < 0).sum() == round(0.25 * 357)
    assert train.n + test.n == dataset.n
    # Together the parts are the whole data set, each row once.
    np.testing.assert_array_equal(
        sorted_rows(np.vstack([train.features, test.features]),
                    np.concatenate([train.labels, test.labels])),
        sorted_rows(dataset.features, dataset.labels))
    again_train, again_test = split(dataset, 0.25, seed=3)
    np.testing.assert_array_equal(again_test.features, test.features)
    np.testing.assert_array_equal(again_train.labels, train.labels)
    other = split(dataset, 0.25, seed=4)[1]
    assert not np.array_equal(other.features, test.features)


def test_split_regression_and_errors():
    dataset = load("diabetes")
    train, test = split(dataset, 0.3, seed=0)
    assert (train.n, test.n) == (dataset.n - round(0.3 * dataset.n), round(0.3 * dataset.n))
    assert train.task == "regression"
    for fraction in (0, 1, -0.5):
        with pytest.raises(DataError, match="strictly between 0 and 1"):
            split(dataset, fraction)
    tiny = Dataset("tiny", np.arange(3.0)[:, None], np.arange(3.0), ["a"], "y")
    with pytest.raises(DataError, match="too few to split"):
        split(tiny, 0.5)


def test_normalise_like_the_training_split():
    train, test = split(load("synthetic:n=500,d=4,seed=1"), 0.4, seed=0)
    reference = normalise(train)
    data = normalise(test, like=reference)
    assert data.feature_map is reference.feature_map
    expected = np.clip(test.features * reference.feature_map.scale
                       + reference.feature_map.offset, -1, 1)
    np.testing.assert_array_equal(data.features[:, :-1], expected)
    np.testing.assert_allclose(data.labels, test.labels * reference.label_map.scale
                               + reference.label_map.offset)
    with pytest.raises(DataError, match="cannot normalise like a regression data set of 4"):
        normalise(load("diabetes"), like=reference)
