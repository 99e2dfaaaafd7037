"""Data sets: loading, validation, normalisation and the float64 reference.

A data set comes from a CSV file, a LIBSVM/svmlight file or a bundled name
(:data:`BUNDLED`). It is validated (every value finite, at least two rows and one
feature) and normalised: each feature and the label are mapped affinely to
[-1, 1] and a bias column of 1.0 is appended. The affine maps are kept so that a
model in normalised units converts back to the user's original units.

This module knows nothing of fixed point or of the board: quantisation lives in
``ziphalp.host.quantize``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "BUNDLED",
    "Affine",
    "DataError",
    "Dataset",
    "Normalised",
    "least_squares_loss",
    "least_squares_optimum",
    "load",
    "normalise",
]


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
    """

    name: str
    features: np.ndarray
    labels: np.ndarray
    feature_names: list[str]
    label_name: str

    @property
    def n(self) -> int:
        return self.features.shape[0]

    @property
    def d(self) -> int:
        return self.features.shape[1]


def _diabetes() -> Dataset:
    import sklearn.datasets  # imported on use: it takes a second

    bunch = sklearn.datasets.load_diabetes(scaled=False)
    return Dataset("diabetes", np.asarray(bunch.data, np.float64),
                   np.asarray(bunch.target, np.float64), list(bunch.feature_names),
                   "progression")


#: Bundled data sets by name: each entry returns a :class:`Dataset`.
BUNDLED: dict[str, Callable[[], Dataset]] = {
    "diabetes": _diabetes,
}

_SVMLIGHT_SUFFIXES = {".svm", ".libsvm", ".svmlight"}
_SVMLIGHT_LINE = re.compile(r"^\s*\S+(\s+(qid:)?\d+:\S+)+\s*(#.*)?$")


def load(source: str | Path, label: str | int | None = None) -> Dataset:
    """Load a data set from a bundled name, a CSV file or a LIBSVM file.

    Parameters
    ----------
    source : str or Path
        A name in :data:`BUNDLED`, or a path. A file whose suffix is ``.svm``,
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
        fewer than two rows or no feature column.
    """
    path = Path(source)
    if str(source) in BUNDLED and not path.exists():
        dataset = BUNDLED[str(source)]()
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
        Labels in [-1, 1].
    feature_map, label_map : Affine
        Original to normalised units (the feature map has d entries, no bias).
    """

    features: np.ndarray
    labels: np.ndarray
    feature_map: Affine
    label_map: Affine

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


def normalise(dataset: Dataset) -> Normalised:
    """Map features and label to [-1, 1] and append the bias column.

    Raises
    ------
    DataError
        The label is constant (there is nothing to learn).
    """
    label_map = Affine.to_unit_range(dataset.labels)
    if label_map.scale == 0:
        raise DataError(f"{dataset.name}: the label is constant")
    feature_map = Affine.to_unit_range(dataset.features)
    features = np.hstack([feature_map.forward(dataset.features),
                          np.ones((dataset.n, 1))])
    return Normalised(features, label_map.forward(dataset.labels), feature_map, label_map)


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
