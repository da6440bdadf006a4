"""Reading the user's data files: a CSV with a header row (streamed in blocks) or an .npz archive,
into float32 features and targets; the first bad cell is named in one InputError. And the
targets' checks: whole-number class labels mapped to 0..k-1, or finite regression targets.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import csv
import itertools
import math
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .errors import InputError

FLOAT32_MAX = float(np.finfo(np.float32).max)  # 3.4e38: a feature beyond it becomes inf on the device
CSV_BLOCK = 8_192  # lines parsed at once: their text and float64 copy stay small beside the arrays
CSV_ENCODING = "utf-8-sig"  # UTF-8, with the byte-order mark some spreadsheets write before the header


def read_csv(path: Path, label: str, task: str = "classification") -> tuple[np.ndarray, np.ndarray, str]:
    """A CSV with a header row: (features float32, the `label` column as float64, where it is). Every
    cell must be a finite number, features within float32's range; the first that is not is named by
    line and column.

    Read as a stream: the rows are counted first, then parsed CSV_BLOCK at a time into arrays of
    their final size, so the peak memory is the arrays plus one block (genfromtxt held about 17x
    the file: Python lists of every cell, then float64)."""
    try:
        with open(path, newline="", encoding=CSV_ENCODING) as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as e:
        raise InputError("data.path", "must be a CSV text file (UTF-8)",
                         f"{str(path)!r}, undecodable byte at offset {e.start}") from None
    if not header:
        raise InputError("data.path", f"{str(path)!r} is empty; expected a header row")
    if label not in header:
        raise InputError("data.label", f"must be one of the columns {header} of {str(path)!r}", repr(label))
    if len(header) < 2:
        raise InputError("data.path", f"must have at least one feature column besides the label {label!r}",
                         f"only the column {label!r} in {str(path)!r}")
    col = header.index(label)
    where = f"column {label!r} of {str(path)!r}"
    lines = _count_lines(path)
    x = np.empty((lines, len(header) - 1), dtype=np.float32)
    y = np.empty(lines, dtype=np.float64)
    n = 0
    with open(path, newline="", encoding=CSV_ENCODING) as f:
        next(f)  # the header
        while True:
            block = [line for line in itertools.islice(f, CSV_BLOCK) if line.strip()]  # blank lines skipped
            if not block:
                break
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    table = np.loadtxt(block, delimiter=",", dtype=np.float64, ndmin=2, quotechar='"')
            except ValueError:  # a cell that is not a number, or a row of another length
                _name_the_bad_cell(path, header, col, task)
            if table.shape[1] != len(header) or not _fits(np.delete(table, col, axis=1)) or \
                    not np.isfinite(table[:, col]).all():
                _name_the_bad_cell(path, header, col, task)
            x[n:n + len(table)] = np.delete(table, col, axis=1)
            y[n:n + len(table)] = table[:, col]
            n += len(table)
    return x[:n], y[:n], where


def _count_lines(path: Path, chunk: int = 1 << 20) -> int:
    """Newlines in the file, +1 for a last line without one: at least its data rows."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while data := f.read(chunk):
            count += data.count(b"\n")
            last = data[-1:]
    return count + (last != b"\n")


def _fits(values: np.ndarray) -> bool:
    """Every value finite and within float32's range (a float64 1e300 is inf as float32)."""
    return bool(np.isfinite(values).all() and (np.abs(values) <= FLOAT32_MAX).all())


def _name_the_bad_cell(path: Path, header: list[str], col: int, task: str) -> None:
    """Raise an InputError naming the first cell of the CSV that is not a finite number (a
    feature: within float32's range), or the first row whose length is not the header's."""
    with open(path, newline="", encoding=CSV_ENCODING) as f:
        rows = csv.reader(f)
        next(rows)
        data_row = 0
        for row in rows:
            if not any(cell.strip() for cell in row):  # blank lines are skipped, as when reading
                continue
            data_row += 1
            if len(row) != len(header):
                raise InputError("data.path", f"every row of {str(path)!r} must have the {len(header)} columns of "
                                 "its header", f"{len(row)} at line {rows.line_num} (data row {data_row})")
            for j, cell in enumerate(row):
                try:
                    value = float(cell)
                except ValueError:
                    value = None
                if value is not None and math.isfinite(value) and (j == col or abs(value) <= FLOAT32_MAX):
                    continue
                got = (f"{cell!r}" if cell.strip() else "an empty cell") + \
                    f" at line {rows.line_num} (data row {data_row}), column {header[j]!r} of {str(path)!r}"
                if j == col:
                    what = "a regression target" if task == "regression" else "a class label"
                    raise InputError("data.label", f"every cell of column {header[col]!r} must be a finite number "
                                                   f"({what})", got)
                if value is not None and math.isfinite(value):
                    raise InputError("data.path", f"every feature cell must fit float32 (|x| <= {FLOAT32_MAX:.4g}; "
                                     "training computes in float32, where it would be infinite)", got)
                raise InputError("data.path", "every feature cell must be a finite number", got)
    raise InputError("data.path", f"{str(path)!r} has empty or non-numeric cells")


def read_npz(path: Path, label: str, task: str = "classification") -> tuple[np.ndarray, np.ndarray, str]:
    """An .npz archive: (features float32, the `label` array as stored, where it is). The
    features: one array (n, F), or images (n, H, W) or (n, C, H, W) kept in their shape, or
    1-D columns. Every feature must be a finite number; the first that is not is named by row
    and column (or position in the image)."""
    try:
        with np.load(path) as archive:
            names = list(archive.files)
            if label not in names:
                raise InputError("data.label", f"must be one of the arrays {names} of {str(path)!r}", repr(label))
            y = archive[label]
            features = {k: archive[k] for k in names if k != label}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        if isinstance(e, InputError):
            raise
        # np.load: not an archive (OSError, BadZipFile); an array of Python objects (ValueError: pickles)
        raise InputError("data.path", "must be a NumPy .npz archive of numeric arrays (numpy.savez)",
                         f"{str(path)!r} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    features, feature_names = list(features.values()), list(features)
    if len(features) == 1 and features[0].ndim in (2, 3, 4):
        x = features[0]
    elif features and all(f.ndim == 1 for f in features):
        x = np.stack(features, axis=1)
    else:
        shapes = ", ".join(f"{k!r}: {'x'.join(map(str, f.shape)) or 'scalar'}" for k, f in zip(feature_names, features))
        raise InputError("data.path", "an .npz needs, beside the labels, one feature array of shape N x F, images "
                         "N x H x W or N x C x H x W, or 1-D columns of N", f"{shapes or 'no feature array'} in "
                         f"{str(path)!r}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError("data.label", f"array {label!r} must be 1-D (one target per row)", f"shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise InputError("data.path", f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise InputError("data.path", "every feature array must hold numbers",
                         f"dtype {x.dtype} in {str(path)!r}")
    # Checked before the cast, so that the message shows the value stored (1e300, not inf).
    bad = np.argwhere(~np.isfinite(x) | (np.abs(x) > FLOAT32_MAX)) if np.issubdtype(x.dtype, np.floating) else []
    if len(bad):
        row, *at = (int(i) for i in bad[0])
        if x.ndim > 2:
            cell = f"array {feature_names[0]!r}, example {row + 1}, position {tuple(at)}"
        elif len(feature_names) == 1:
            cell = f"array {feature_names[0]!r}, row {row + 1}, column {at[0] + 1}"
        else:
            cell = f"array {feature_names[at[0]]!r}, row {row + 1}"
        raise InputError("data.path", f"every feature must be a finite number that fits float32 (|x| <= "
                         f"{FLOAT32_MAX:.4g})", f"{x[(row, *at)].item()!r} at {cell} of {str(path)!r}")
    x = x.astype(np.float32)
    return x, y, f"array {label!r} of {str(path)!r}"


def as_targets(values: np.ndarray, task: str, where: str) -> np.ndarray:
    """Class labels 0..k-1 (classification) or float32 targets as given (regression, which
    must be finite numbers; `where` names the column or array in the error)."""
    if task != "regression":
        return as_labels(values, where) if len(values) else np.empty(0, dtype=np.int64)
    kind = values.dtype
    if kind == np.bool_ or not (np.issubdtype(kind, np.integer) or np.issubdtype(kind, np.floating)):
        raise InputError("data.label", f"{where} must hold numbers (a regression target)", f"dtype {values.dtype}")
    y = values.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise InputError("data.label", f"{where} must hold finite float32 numbers (a regression target)",
                         f"{values[bad[0]]!r} at row {bad[0] + 1}")
    return y


def as_labels(values: np.ndarray, where: str = "the labels") -> np.ndarray:
    """Map arbitrary label values to 0..k-1 (sorted order); at least 2 classes, no NaN or inf."""
    if np.issubdtype(values.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            raise InputError("data.label", f"every label in {where} must be a finite number (a class label)",
                             f"{values[bad[0]]!r} at row {bad[0] + 1}")
        fraction = np.flatnonzero(values != np.round(values))
        if len(fraction):  # a measured quantity, not a class: as classes, each value would be its own
            row = int(fraction[0])
            raise InputError(
                "data.label", f"classification needs whole-number class labels in {where}; for a numeric target "
                "set data.task = \"regression\"", f"{values[row].item()!r} at row {row + 1} "
                f"({len(np.unique(values))} distinct values in {len(values)} rows)")
    classes, codes = np.unique(values, return_inverse=True)
    if len(classes) == 1:  # one class trains to val_acc 1.0 and measures nothing
        value = classes[0].item() if hasattr(classes[0], "item") else classes[0]
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        raise InputError("data.label", f"classification needs at least 2 classes in {where} "
                                       "(for a numeric target, set task = 'regression')",
                         f"only the class {value!r} in all {len(values)} rows")
    return codes.reshape(-1).astype(np.int64)

