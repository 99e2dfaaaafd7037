"""Data sets: loading, validation, normalisation, splitting and the float64 reference.

A data set comes from a CSV file, a LIBSVM/svmlight file or a bundled name
(:data:`BUNDLED`, all offline: scikit-learn's bundled data or generated here). It
is validated (every value finite, at least two rows and one feature) and
normalised: each feature is mapped affinely to [-1, 1] and a bias column of 1.0
is appended. A regression label is mapped affinely to [-1, 1] too; a
classification label is kept exactly +1 or -1. The affine maps are kept so that
a model in normalised units converts back to the user's original units.

Bundled names, with options after a colon:

* ``diabetes``: regression, 442 x 10 (scikit-learn).
* ``breast_cancer``: classification, 569 x 30 (scikit-learn); +1 malignant
  (the positive diagnosis, 212 rows), -1 benign.
* ``digits:3`` (one digit against the rest: +1 for 3, -1 for every other digit)
  or ``digits:3,8`` (a pair: +1 for 3, -1 for 8, other rows dropped):
  classification, 8 x 8 images as 64 grey levels 0..16 (scikit-learn, 1797 rows).
* ``synthetic`` and ``synthetic-class``: generated regression and classification,
  options ``n`` (rows, default 1000), ``d`` (features, default 16), ``seed``
  (default 0) and ``noise`` (default 0.1), e.g. ``synthetic:n=10000,d=64,seed=1``
  (see :func:`synthetic`).

This module knows nothing of fixed point or of the board: quantisation lives in
``ziphalp.host.quantize``; float64 losses, SGD and optima in
``ziphalp.host.reference``.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLED",
    "TASKS",
    "Affine",
    "DataError",
    "Dataset",
    "Normalised",
    "as_classification",
    "least_squares_loss",
    "least_squares_optimum",
    "load",
    "normalise",
    "split",
    "synthetic",
]

#: What a data set's label is: a real value, or a class +1 / -1.
TASKS = ("regression", "classification")


class DataError(ValueError):
    """A data set cannot be used: missing, unparsable, non-finite or too small."""


@dataclass(frozen=True)
class Dataset:
    """A data set in the user's original units.

    Attributes
    ----------
    name : str
        File path or bundled name it was loaded from.
    features : ndarray of float64, shape (n, d)
    labels : ndarray of float64, shape (n,)
    feature_names : list of str
        One name per feature column.
    label_name : str
    task : {"regression", "classification"}
        A classification data set has every label exactly +1 or -1.
    truth : ndarray of float64, shape (d + 1,), optional
        The model that generated the labels (coefficients, then the intercept),
        in original units, when it is known (:func:`synthetic`).
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: list[str]
    label_name: str
    task: str = "regression"
    truth: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.features.shape[0]

    @property
    def d(self) -> int:
        return self.features.shape[1]


def _no_options(name: str, options: str) -> None:
    if options:
        raise DataError(f"{name}:{options}: {name} takes no options")


def _diabetes(options: str = "") -> Dataset:
    import sklearn.datasets  # imported on use: it takes a second

    _no_options("diabetes", options)
    bunch = sklearn.datasets.load_diabetes(scaled=False)
    return Dataset("diabetes", np.asarray(bunch.data, np.float64),
                   np.asarray(bunch.target, np.float64), list(bunch.feature_names),
                   "progression")


def _breast_cancer(options: str = "") -> Dataset:
    import sklearn.datasets

    _no_options("breast_cancer", options)
    bunch = sklearn.datasets.load_breast_cancer()
    # scikit-learn's target is 0 for malignant, 1 for benign.
    labels = np.where(bunch.target == 0, 1.0, -1.0)
    return Dataset("breast_cancer", np.asarray(bunch.data, np.float64), labels,
                   [str(name) for name in bunch.feature_names], "malignant",
                   task="classification")


def _digits(options: str = "") -> Dataset:
    import sklearn.datasets

    spec = f"digits:{options}" if options else "digits"
    usage = "expected digits:D (D against the rest) or digits:D,E (D against E), D, E in 0..9"
    parts = [part.strip() for part in options.split(",")] if options else []
    if not 1 <= len(parts) <= 2 or not all(p.isdigit() and len(p) == 1 for p in parts):
        raise DataError(f"{spec}: {usage}")
    digits = [int(part) for part in parts]
    if len(digits) == 2 and digits[0] == digits[1]:
        raise DataError(f"{spec}: the two digits must differ")
    bunch = sklearn.datasets.load_digits()
    features, target = np.asarray(bunch.data, np.float64), bunch.target
    if len(digits) == 2:
        keep = np.isin(target, digits)
        features, target = features[keep], target[keep]
    labels = np.where(target == digits[0], 1.0, -1.0)
    name = "digits:" + ",".join(map(str, digits))
    return Dataset(name, features, labels, [f"pixel{j}" for j in range(features.shape[1])],
                   f"is_{digits[0]}", task="classification")


_SYNTHETIC_OPTIONS = {"n": (int, 1000), "d": (int, 16), "seed": (int, 0), "noise": (float, 0.1)}


def _parse_synthetic(name: str, options: str) -> dict[str, int | float]:
    values: dict[str, int | float] = {key: default
                                      for key, (_, default) in _SYNTHETIC_OPTIONS.items()}
    keys = ", ".join(_SYNTHETIC_OPTIONS)
    for item in filter(None, (part.strip() for part in options.split(","))):
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or key not in _SYNTHETIC_OPTIONS:
            raise DataError(f"{name}:{options}: bad option {item!r} "
                            f"(expected key=value, keys {keys})")
        kind = _SYNTHETIC_OPTIONS[key][0]
        try:
            values[key] = kind(text)
        except ValueError:
            raise DataError(f"{name}:{options}: {key} must be {kind.__name__}, "
                            f"not {text!r}") from None
    return values


def synthetic(n: int = 1000, d: int = 16, seed: int = 0, noise: float = 0.1,
              task: str = "regression") -> Dataset:
    """Generate a data set from a known linear model plus Gaussian noise.

    Features are independent and uniform on [-1, 1], so normalisation changes
    them only slightly. The true coefficients are N(0, 1/d) (a prediction then
    has a spread of about 0.6 whatever ``d`` is), the intercept N(0, 0.1**2) for
    classification (classes roughly balanced) and N(0, 1) for regression. A
    regression label is ``a.w + c + noise * N(0, 1)``; a classification label is
    the sign of the same (+1 for a value >= 0), so ``noise`` flips the rows near
    the boundary.

    Parameters
    ----------
    n, d : int
        Rows (at least 2) and features (at least 1), ``n * d`` at most 10**8.
    seed : int
        Seed of ``numpy.random.default_rng``: the same arguments give the same data.
    noise : float
        Standard deviation of the noise, at least 0.
    task : {"regression", "classification"}

    Returns
    -------
    Dataset
        Named by its full spec (``synthetic:n=...,d=...,seed=...,noise=...`` or
        ``synthetic-class:...``), with :attr:`Dataset.truth` set.

    Raises
    ------
    DataError
        An argument out of range.
    """
    prefix = "synthetic" if task == "regression" else "synthetic-class"
    name = f"{prefix}:n={n},d={d},seed={seed},noise={noise:g}"
    if task not in TASKS:
        raise DataError(f"{name}: task must be one of {', '.join(TASKS)}, not {task!r}")
    if n < 2 or d < 1 or n * d > 10**8:
        raise DataError(f"{name}: need n >= 2, d >= 1 and n * d <= 10**8")
    if not (noise >= 0 and np.isfinite(noise)):
        raise DataError(f"{name}: noise must be finite and >= 0")
    if seed < 0:
        raise DataError(f"{name}: seed must be >= 0")
    rng = np.random.default_rng(seed)
    coef = rng.normal(scale=1.0 / np.sqrt(d), size=d)
    intercept = rng.normal(scale=0.1 if task == "classification" else 1.0)
    features = rng.uniform(-1.0, 1.0, size=(n, d))
    values = features @ coef + intercept + noise * rng.normal(size=n)
    labels = np.where(values >= 0, 1.0, -1.0) if task == "classification" else values
    return Dataset(name, features, labels, [f"x{j}" for j in range(d)], "y", task=task,
                   truth=np.append(coef, intercept))


def _synthetic(options: str = "") -> Dataset:
    return synthetic(**_parse_synthetic("synthetic", options))


def _synthetic_class(options: str = "") -> Dataset:
    return synthetic(**_parse_synthetic("synthetic-class", options), task="classification")


#: Bundled data sets by name: each entry takes the options (the text after the
#: colon, possibly empty) and returns a :class:`Dataset`.
BUNDLED: dict[str, Callable[[str], Dataset]] = {
    "breast_cancer": _breast_cancer,
    "diabetes": _diabetes,
    "digits": _digits,
    "synthetic": _synthetic,
    "synthetic-class": _synthetic_class,
}

_SVMLIGHT_SUFFIXES = {".svm", ".libsvm", ".svmlight"}
_SVMLIGHT_LINE = re.compile(r"^\s*\S+(\s+(qid:)?\d+:\S+)+\s*(#.*)?$")


def load(source: str | Path, label: str | int | None = None) -> Dataset:
    """Load a data set from a bundled name, a CSV file or a LIBSVM file.

    Parameters
    ----------
    source : str or Path
        A name in :data:`BUNDLED` with its options (``digits:3,8``), or a path
        (an existing file wins over a bundled name). A file whose suffix is ``.svm``,
        ``.libsvm`` or ``.svmlight``, or whose first line looks like
        ``label index:value ...``, is read as LIBSVM; anything else as CSV.
    label : str or int, optional
        CSV only: the label column, by header name or by index (negative
        counts from the end). Default: the last column.

    Returns
    -------
    Dataset

    Raises
    ------
    DataError
        Missing file, unparsable line (named by number), non-finite value,
        fewer than two rows, no feature column, or a bad bundled spec.
    """
    path = Path(source)
    bundled, _, options = str(source).partition(":")
    if bundled in BUNDLED and not path.exists():
        dataset = BUNDLED[bundled](options.strip())
    elif not path.is_file():
        names = ", ".join(sorted(BUNDLED))
        raise DataError(f"{source}: no such file (and not a bundled data set: {names})")
    else:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{source}: cannot read: {e}") from None
        lines = text.splitlines()
        first = next((line for line in lines if line.strip()), "")
        if path.suffix.lower() in _SVMLIGHT_SUFFIXES or _SVMLIGHT_LINE.match(first):
            if label is not None:
                raise DataError(f"{source}: a LIBSVM file has its label first; "
                                "--label applies to CSV files only")
            dataset = _load_svmlight(path, lines)
        else:
            dataset = _load_csv(str(source), lines, label)
    _validate(dataset)
    return dataset


def _load_csv(name: str, lines: list[str], label: str | int | None) -> Dataset:
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise DataError(f"{name}: the file is empty")
    delimiter = max(",;\t", key=numbered[0][1].count)
    try:
        cells = list(csv.reader([text for _, text in numbered], delimiter=delimiter))
        rows = [(no, [cell.strip() for cell in row])
                for (no, _), row in zip(numbered, cells, strict=True)]
    except (ValueError, csv.Error):
        raise DataError(f"{name}: cannot parse as CSV (unbalanced quotes?)") from None
    header = None
    if not all(_is_number(cell) for cell in rows[0][1]):
        header = rows.pop(0)[1]
    if not rows:
        raise DataError(f"{name}: no data rows")
    width = len(header) if header is not None else len(rows[0][1])
    try:
        table = np.array([cells for _, cells in rows], dtype=np.float64)
        if table.ndim != 2 or table.shape[1] != width:
            raise ValueError
    except ValueError:
        _raise_bad_row(name, rows, width)
        raise DataError(f"{name}: cannot parse as CSV") from None
    names = header if header is not None else [f"x{j}" for j in range(width)]
    column = _label_column(name, label, names, header is not None)
    features = np.delete(table, column, axis=1)
    feature_names = [n for j, n in enumerate(names) if j != column]
    label_name = names[column] if header is not None else "y"
    _check_finite(name, features, table[:, column], [no for no, _ in rows])
    return Dataset(name, features, table[:, column], feature_names, label_name)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _raise_bad_row(name: str, rows: list[tuple[int, list[str]]], width: int) -> None:
    for no, cells in rows:
        if len(cells) != width:
            raise DataError(f"{name}, line {no}: {len(cells)} columns, expected {width}")
        bad = next((cell for cell in cells if not _is_number(cell)), None)
        if bad is not None:
            raise DataError(f"{name}, line {no}: cannot parse {bad!r} as a number")


def _label_column(name: str, label: str | int | None, names: list[str],
                  has_header: bool) -> int:
    width = len(names)
    if label is None:
        return width - 1
    if isinstance(label, str) and label in names:
        return names.index(label)
    try:
        index = int(label)
    except ValueError:
        known = ", ".join(names) if has_header else "the file has no header row"
        raise DataError(f"{name}: no label column {label!r} ({known})") from None
    if not -width <= index < width:
        raise DataError(f"{name}: label column {index} out of range for {width} columns")
    return index % width


def _load_svmlight(path: Path, lines: list[str]) -> Dataset:
    import sklearn.datasets  # imported on use: it takes a second

    try:
        features, labels = sklearn.datasets.load_svmlight_file(str(path), dtype=np.float64)
    except ValueError as e:
        for no, line in enumerate(lines, 1):
            if not _svmlight_line_ok(line):
                raise DataError(f"{path}, line {no}: not a LIBSVM line "
                                "('label index:value ...')") from None
        raise DataError(f"{path}: cannot parse as LIBSVM: {e}") from None
    features = features.toarray()
    if not np.all(np.isfinite(features)) or not np.all(np.isfinite(labels)):
        data_lines = [no for no, line in enumerate(lines, 1)
                      if line.split("#", 1)[0].strip()]
        _check_finite(str(path), features, labels, data_lines)
    names = [f"x{j}" for j in range(features.shape[1])]
    return Dataset(str(path), features, np.asarray(labels, np.float64), names, "y")


def _svmlight_line_ok(line: str) -> bool:
    tokens = line.split("#", 1)[0].split()
    if not tokens:
        return True
    try:
        float(tokens[0])
        for token in tokens[1:]:
            index, value = token.split(":")
            if index != "qid":
                int(index)
            float(value)
    except ValueError:
        return False
    return True


def _check_finite(name: str, features: np.ndarray, labels: np.ndarray,
                  line_numbers: list[int]) -> None:
    finite = np.isfinite(features).all(axis=1) & np.isfinite(labels)
    if not finite.all():
        row = int(np.argmin(finite))
        raise DataError(f"{name}, line {line_numbers[row]}: value is NaN or infinite")


def _validate(dataset: Dataset) -> None:
    if dataset.n < 2:
        raise DataError(f"{dataset.name}: {dataset.n} row(s); at least 2 are needed")
    if dataset.d < 1:
        raise DataError(f"{dataset.name}: no feature columns besides the label")
    if not (np.isfinite(dataset.features).all() and np.isfinite(dataset.labels).all()):
        raise DataError(f"{dataset.name}: values are NaN or infinite")
    if dataset.task not in TASKS:
        raise DataError(f"{dataset.name}: task must be one of {', '.join(TASKS)}, "
                        f"not {dataset.task!r}")
    if dataset.task == "classification" and not np.all(np.abs(dataset.labels) == 1):
        raise DataError(f"{dataset.name}: a classification label must be +1 or -1")


def as_classification(dataset: Dataset, positive: float | None = None) -> Dataset:
    """The same data as a classification data set: labels +1 and -1.

    Parameters
    ----------
    dataset : Dataset
        Its labels take exactly two distinct values (e.g. a LIBSVM file with
        labels 0/1 or -1/+1).
    positive : float, optional
        The label value that becomes +1 (the other becomes -1). Default: the
        larger of the two.

    Raises
    ------
    DataError
        The labels do not take exactly two values, or ``positive`` is not one of them.
    """
    values = np.unique(dataset.labels)
    if len(values) != 2:
        raise DataError(f"{dataset.name}: classification needs exactly two label values, "
                        f"found {len(values)}")
    positive = float(values[1]) if positive is None else float(positive)
    if positive not in values:
        raise DataError(f"{dataset.name}: no label is {positive:g} "
                        f"(the labels are {values[0]:g} and {values[1]:g})")
    labels = np.where(dataset.labels == positive, 1.0, -1.0)
    return dataclasses.replace(dataset, labels=labels, task="classification")


def split(dataset: Dataset, test_fraction: float = 0.25,
          seed: int = 0) -> tuple[Dataset, Dataset]:
    """Split a data set into a training and a test part, deterministically.

    Rows are drawn with ``numpy.random.default_rng(seed)``; each part keeps the
    rows in their original order. A classification data set is stratified: each
    class contributes ``round(test_fraction * rows of the class)`` rows to the
    test part (kept within 1 .. rows - 1 for a class of at least two rows), so
    the class proportions of both parts match the whole to within a row.

    Parameters
    ----------
    dataset : Dataset
    test_fraction : float
        Strictly between 0 and 1.
    seed : int

    Returns
    -------
    train, test : Dataset
        Named ``<name>[train]`` and ``<name>[test]``, same task and truth.

    Raises
    ------
    DataError
        ``test_fraction`` out of range, or a part would have fewer than two rows.
    """
    if not 0 < test_fraction < 1:
        raise DataError(f"{dataset.name}: test_fraction must be strictly between 0 and 1, "
                        f"not {test_fraction}")
    rng = np.random.default_rng(seed)
    if dataset.task == "classification":
        groups = [np.flatnonzero(dataset.labels == value) for value in (1.0, -1.0)]
    else:
        groups = [np.arange(dataset.n)]
    test_rows = []
    for rows in groups:
        count = round(test_fraction * len(rows))
        if len(rows) >= 2:
            count = min(max(count, 1), len(rows) - 1)
        test_rows.append(rng.permutation(rows)[:count])
    test = np.zeros(dataset.n, dtype=bool)
    test[np.concatenate(test_rows)] = True
    if test.sum() < 2 or (~test).sum() < 2:
        raise DataError(f"{dataset.name}: {dataset.n} rows are too few to split "
                        f"with test_fraction {test_fraction}")

    def part(mask: np.ndarray, suffix: str) -> Dataset:
        return dataclasses.replace(dataset, name=f"{dataset.name}[{suffix}]",
                                   features=dataset.features[mask], labels=dataset.labels[mask])

    return part(~test, "train"), part(test, "test")


@dataclass(frozen=True)
class Affine:
    """An element-wise affine map ``normalised = scale * original + offset``."""

    scale: np.ndarray
    offset: np.ndarray

    @classmethod
    def to_unit_range(cls, values: np.ndarray) -> Affine:
        """The map taking the column range of ``values`` onto [-1, 1].

        A constant column gets scale 0 and offset 0: it normalises to 0.
        """
        lo, hi = values.min(axis=0), values.max(axis=0)
        span = hi - lo
        constant = span == 0
        scale = np.where(constant, 0.0, 2.0 / np.where(constant, 1.0, span))
        offset = np.where(constant, 0.0, -1.0 - scale * lo)
        return cls(scale, offset)

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Original to normalised units, clipped to [-1, 1] against rounding."""
        return np.clip(values * self.scale + self.offset, -1.0, 1.0)

    def inverse(self, values: np.ndarray) -> np.ndarray:
        """Normalised to original units (a constant column has no inverse: NaN)."""
        safe = np.where(self.scale == 0, np.nan, self.scale)
        return (values - self.offset) / safe


@dataclass(frozen=True)
class Normalised:
    """A data set in normalised units, ready to quantise.

    Attributes
    ----------
    features : ndarray of float64, shape (n, d + 1)
        Features in [-1, 1]; the last column is the bias, constant 1.0.
    labels : ndarray of float64, shape (n,)
        Labels in [-1, 1]; exactly +1 or -1 for classification.
    feature_map, label_map : Affine
        Original to normalised units (the feature map has d entries, no bias;
        the label map is the identity for classification).
    task : {"regression", "classification"}
    """

    features: np.ndarray
    labels: np.ndarray
    feature_map: Affine
    label_map: Affine
    task: str = "regression"

    def to_original(self, beta: np.ndarray) -> tuple[np.ndarray, float]:
        """Convert normalised-unit coefficients to original units.

        Parameters
        ----------
        beta : ndarray, shape (d + 1,)
            Coefficients of the normalised features, the bias last.

        Returns
        -------
        coef : ndarray, shape (d,)
            Coefficients of the original features (0 for a constant feature).
        intercept : float
        """
        a, b = self.feature_map.scale, self.feature_map.offset
        ay, by = float(self.label_map.scale), float(self.label_map.offset)
        coef = beta[:-1] * a / ay
        intercept = (float(beta[:-1] @ b) + float(beta[-1]) - by) / ay
        return coef, intercept

    def loss(self, beta: np.ndarray) -> float:
        """Float64 least-squares loss of ``beta`` on the normalised data."""
        return least_squares_loss(self.features, self.labels, beta)


def normalise(dataset: Dataset, like: Normalised | None = None) -> Normalised:
    """Map features (and a regression label) to [-1, 1] and append the bias column.

    Parameters
    ----------
    dataset : Dataset
    like : Normalised, optional
        Reuse its maps instead of fitting new ones: normalise a test split
        exactly as its training split. Features outside the training range are
        clipped to [-1, 1] (the engine's domain); regression labels are mapped
        without a clip.

    Raises
    ------
    DataError
        The label is constant or a classification data set has one class only
        (there is nothing to learn), a classification label is not +1 or -1,
        or ``like`` has another width or task.
    """
    if dataset.task == "classification" and not np.all(np.abs(dataset.labels) == 1):
        raise DataError(f"{dataset.name}: a classification label must be +1 or -1")
    if like is not None:
        if like.feature_map.scale.shape != (dataset.d,) or like.task != dataset.task:
            raise DataError(f"{dataset.name}: cannot normalise like a {like.task} data set "
                            f"of {like.feature_map.scale.shape[0]} features")
        label_map, feature_map = like.label_map, like.feature_map
        labels = dataset.labels * label_map.scale + label_map.offset
    else:
        if dataset.task == "classification":
            if np.all(dataset.labels == dataset.labels[0]):
                raise DataError(f"{dataset.name}: every label is {dataset.labels[0]:+g} "
                                "(one class only)")
            label_map = Affine(np.float64(1.0), np.float64(0.0))
        else:
            label_map = Affine.to_unit_range(dataset.labels)
            if label_map.scale == 0:
                raise DataError(f"{dataset.name}: the label is constant")
        feature_map = Affine.to_unit_range(dataset.features)
        labels = label_map.forward(dataset.labels)
    features = np.hstack([feature_map.forward(dataset.features), np.ones((dataset.n, 1))])
    return Normalised(features, labels, feature_map, label_map, dataset.task)


def least_squares_loss(features: np.ndarray, labels: np.ndarray, beta: np.ndarray) -> float:
    """``f(w) = 1/(2n) ||X w - y||^2`` in float64."""
    residual = features @ np.asarray(beta, np.float64) - labels
    return float(residual @ residual) / (2 * len(labels))


def least_squares_optimum(features: np.ndarray,
                          labels: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Float64 least-squares optimum and its loss, or None when not computable."""
    try:
        beta, *_ = np.linalg.lstsq(features, labels, rcond=None)
    except np.linalg.LinAlgError:
        return None
    return beta, least_squares_loss(features, labels, beta)
