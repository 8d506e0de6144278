"""Label columns -> targets with NaN for missing, and label-fraction sampling that keeps every class.

Tasks:
  multilabel  several 0/1 columns (`--labels a,b`), or one column of `|`-separated names
  multiclass  one column of class names (two classes included: logits [B, 2], softmax)
  regression  one numeric column (`--task regression`, e.g. age)
Missing targets (blank, NaN, and any value the user declares, such as CheXpert's -1 "uncertain")
become NaN: they are masked out of the loss and the metrics, never guessed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError

MISSING = {"", "nan", "na", "n/a", "null", "none"}
TRUE = {"1", "1.0", "true", "yes", "y", "pos", "positive"}
FALSE = {"0", "0.0", "false", "no", "n", "neg", "negative"}


@dataclass(frozen=True)
class Labels:
    """y: multilabel [N, K] 0/1/NaN; multiclass [N] class index/NaN; regression [N] value/NaN."""

    task: str
    names: list[str]  # label names (multilabel), class names (multiclass), [column] (regression)
    columns: list[str]
    y: np.ndarray

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else len(self.names)

    def has_label(self) -> np.ndarray:
        """[N] bool: rows with at least one known target (the only ones that can train or score)."""
        return ~np.isnan(self.y).all(1) if self.y.ndim == 2 else ~np.isnan(self.y)

    def subset(self, idx: np.ndarray) -> Labels:
        return Labels(self.task, self.names, self.columns, self.y[idx])


def _rows_msg(sources: list[str]) -> str:
    more = f" and {len(sources) - 5} more" if len(sources) > 5 else ""
    return ", ".join(sources[:5]) + more


def _check_columns(rows: list[Row], columns: list[str]) -> None:
    have = list(rows[0].columns) if rows else []
    for col in columns:
        if col not in have:
            found = ", ".join(have) if have else "none: a folder of images has no label columns"
            raise ConvirtError(f"no label column '{col}' (columns: {found}); pass --label/--labels with one of them")


def _number(value: str) -> float | None:
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _sort_names(values: set[str]) -> list[str]:
    """Numeric class names in numeric order (so '2' < '10'), otherwise alphabetical."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def _missing_test(missing: list[str] | tuple[str, ...]):
    """A cell -> is it a missing target? Blank / NaN / null, and the values declared with --missing (numerically too:
    --missing -1 also means CheXpert's -1.0)."""
    miss = MISSING | {m.strip().lower() for m in missing}
    miss_numbers = {x for x in map(_number, miss) if x is not None}

    def is_missing(v: str) -> bool:
        v = v.strip().lower()
        return v in miss or (bool(miss_numbers) and _number(v) in miss_numbers)
    return is_missing


def _binary_columns(rows: list[Row], columns: list[str], is_missing) -> np.ndarray:
    """Several 0/1 columns -> [N, K] 0/1/NaN; a value that is neither names its column and rows."""
    y = np.full((len(rows), len(columns)), np.nan, np.float32)
    for k, col in enumerate(columns):
        bad = []
        for i, r in enumerate(rows):
            v = r.columns[col].strip().lower()
            if is_missing(v):
                continue
            if v in TRUE:
                y[i, k] = 1.0
            elif v in FALSE:
                y[i, k] = 0.0
            else:
                bad.append(f"{r.source} ({r.columns[col]!r})")
        if bad:
            raise ConvirtError(f"label column '{col}' must hold 0/1 (or blank for missing; declare others such as "
                               f"-1 with --missing): rows {_rows_msg(bad)}")
    return y


def _regression(rows: list[Row], col: str, is_missing) -> np.ndarray:
    y = np.full(len(rows), np.nan, np.float32)
    bad = []
    for i, r in enumerate(rows):
        v = r.columns[col]
        if is_missing(v):
            continue
        x = _number(v)
        if x is None:
            bad.append(f"{r.source} ({v!r})")
        else:
            y[i] = x
    if bad:
        raise ConvirtError(f"regression target '{col}' is not numeric in rows {_rows_msg(bad)}; "
                           "fix them or declare such values missing with --missing")
    if np.isnan(y).all():
        raise ConvirtError(f"regression target '{col}' has no values")
    return y


def _names_per_row(values: list[str], is_missing) -> tuple[list[str], np.ndarray]:
    """One column of `a|b` names (or one name per row) -> (names, [N, K] 0/1/NaN)."""
    names = _sort_names({p.strip() for v in values if not is_missing(v) for p in v.split("|")
                         if p.strip() and not is_missing(p)})
    index = {n: k for k, n in enumerate(names)}
    y = np.full((len(values), len(names)), np.nan, np.float32)
    for i, v in enumerate(values):
        if not is_missing(v):
            y[i] = 0.0
            for p in v.split("|"):
                if p.strip() in index:
                    y[i, index[p.strip()]] = 1.0
    return names, y


def _classes(values: list[str], col: str, is_missing) -> tuple[list[str], np.ndarray]:
    names = _sort_names({v.strip() for v in values if not is_missing(v)})
    if len(names) < 2:
        raise ConvirtError(f"label column '{col}' has {len(names)} class(es) ({', '.join(names) or 'all missing'}); "
                           "a classifier needs at least 2")
    index = {n: k for k, n in enumerate(names)}
    return names, np.array([np.nan if is_missing(v) else index[v.strip()] for v in values], np.float32)


def parse_labels(rows: list[Row], columns: list[str], task: str = "auto",
                 missing: list[str] | tuple[str, ...] = ()) -> Labels:
    """Rows -> Labels; a value that cannot be read names its column and rows (ConvirtError)."""
    if not columns:
        raise ConvirtError("no label given: pass --label COL (one column) or --labels A,B (several 0/1 columns)")
    _check_columns(rows, columns)
    is_missing = _missing_test(missing)

    def binary(col: str) -> bool:
        return all(is_missing(v) or v.strip().lower() in TRUE | FALSE for v in (r.columns[col] for r in rows))

    # one column under --task multilabel: a 0/1 column, else names (`a|b`, or one name per row)
    if len(columns) > 1 or (task == "multilabel" and binary(columns[0])):
        if task not in ("auto", "multilabel"):
            raise ConvirtError(f"several label columns ({', '.join(columns)}) make a multilabel task, not {task}")
        return Labels("multilabel", list(columns), list(columns), _binary_columns(rows, columns, is_missing))
    col = columns[0]
    values = [r.columns[col] for r in rows]
    if task == "regression":
        return Labels("regression", [col], [col], _regression(rows, col, is_missing))
    if task == "multilabel" or (task == "auto" and any("|" in v for v in values)):
        names, y = _names_per_row(values, is_missing)
        return Labels("multilabel", names, [col], y)
    if task not in ("auto", "multiclass"):
        raise ConvirtError(f"unknown task '{task}': use multilabel, multiclass or regression")
    names, y = _classes(values, col, is_missing)
    return Labels("multiclass", names, [col], y)


def check_train_classes(labels: Labels, rows: list[Row]) -> None:
    """Every class (multiclass) / every label's two values (multilabel) must have a training example."""
    if labels.task == "regression":
        if np.sum(~np.isnan(labels.y)) < 2:
            raise ConvirtError(f"regression target '{labels.columns[0]}' has fewer than 2 training values")
        return
    col = ", ".join(labels.columns)
    if labels.task == "multiclass":
        counts = np.bincount(labels.y[~np.isnan(labels.y)].astype(int), minlength=len(labels.names))
        empty = [labels.names[k] for k in np.flatnonzero(counts == 0)]
        if empty:
            raise ConvirtError(f"label column '{col}': class(es) {', '.join(map(repr, empty))} have no examples in "
                               f"the training split ({len(rows)} rows: {_rows_msg([r.source for r in rows])}); "
                               "drop those rows or merge the classes")
        return
    for k, name in enumerate(labels.names):
        yk = labels.y[:, k]
        # 0/1 columns: the label is its column; names in one column (`a|b`): say which column holds them
        what_label = f"label column '{name}'" if name in labels.columns else f"label '{name}' (column '{col}')"
        for value, what in ((1.0, "positive"), (0.0, "negative")):
            if not np.any(yk == value):
                raise ConvirtError(f"{what_label} has no {what} example in the training split "
                                   f"({len(rows)} rows: {_rows_msg([r.source for r in rows])})")


def sample_fraction(labels: Labels, fraction: float, seed: int) -> np.ndarray:
    """Indices (sorted) of a `fraction` of the labelled rows, the same for every init at a given seed.

    One permutation per seed (per class for multiclass), cut at ceil(fraction x n): fractions are nested
    (the 1% rows are inside the 10% rows) and every class keeps at least one example. For multilabel,
    rows are added in permutation order until every label has a positive and a negative.
    """
    if not 0 < fraction <= 1:
        raise ConvirtError(f"label fraction {fraction} must be in (0, 1]")
    labelled = np.flatnonzero(labels.has_label())
    rng = np.random.default_rng(seed)
    if labels.task == "multiclass":
        y = labels.y.astype(np.float64)
        parts = []
        for k in range(len(labels.names)):
            members = rng.permutation(labelled[y[labelled] == k])
            parts.append(members[: max(1, math.ceil(fraction * len(members)))] if len(members) else members)
        return np.sort(np.concatenate(parts))
    order = rng.permutation(labelled)
    take = max(2, math.ceil(fraction * len(order)))
    chosen = list(order[:take])
    if labels.task == "multilabel":
        y = labels.y
        for k in range(y.shape[1]):
            for value in (1.0, 0.0):
                if not np.any(y[chosen, k] == value):
                    extra = next((i for i in order[take:] if y[i, k] == value), None)
                    if extra is not None:
                        chosen.append(extra)
    return np.sort(np.asarray(chosen, dtype=np.int64))
