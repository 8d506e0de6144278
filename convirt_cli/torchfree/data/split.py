"""Train / val / test splits: from a given column, or by patient so no patient spans two splits."""

from __future__ import annotations

import hashlib

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError

SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validate": "val", "validation": "val", "dev": "val",  # validate: MIMIC-CXR's
    "test": "test", "testing": "test", "holdout": "test",
}
# patient id columns, compared without case, spaces or underscores: patient_id, PatientID, "Patient ID" (NIH
# ChestX-ray14), subject_id (MIMIC-CXR), MRN
PATIENT_COLS = ("patientid", "patient", "subjectid", "subject", "mrn")
# without a patient id: a patient's folder (readers._group_studies), else one study's images, stay in one split
GROUP_COLS = ("patientfolder", "studyid", "study")


def _unit(key: str, seed: int) -> float:
    """A stable uniform number in [0, 1) for a key (hash, not RNG: independent of row order)."""
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


SPLIT_COLS = ("split",)


def detect_columns(rows: list[Row], split_col: str | None, patient_col: str | None) -> tuple[str | None, str | None]:
    """(split column, patient column) to use: the given ones, else a `split` column whose values all name a split
    (a split someone chose beats a random one), else a patient id column for a patient-level split."""
    cols = rows[0].columns if rows else {}
    if split_col is None:
        split_col = next((c for c in SPLIT_COLS if c in cols and all(
            r.columns.get(c, "").strip().lower() in SPLIT_NAMES for r in rows)), None)
    if patient_col is None and split_col is None:  # the first patient column in the row's order: a table's own
        # comes before the DICOM's hashed PatientID (some de-identified sets give each study a new PatientID)
        key = {_plain(c): c for c in reversed(list(cols))}
        patient_col = next((c for c in cols if _plain(c) in PATIENT_COLS), None) or next(
            (key[k] for k in GROUP_COLS if k in key), None)
    return split_col, patient_col


def _plain(column: str) -> str:
    return "".join(ch for ch in column.lower() if ch.isalnum())


def describe_split(rows: list[Row], split_col: str | None, patient_col: str | None) -> str:
    split_col, patient_col = detect_columns(rows, split_col, patient_col)
    if split_col:
        return f"by column '{split_col}'"
    if patient_col:
        plain = _plain(patient_col)
        kind = "patient folder" if plain == "patientfolder" else "study" if plain in GROUP_COLS else "patient"
        return f"by {kind} ('{patient_col}')"
    return "by image (no patient id column; --patient-col)"


def split_rows(
    rows: list[Row],
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    split_col: str | None = None,
    patient_col: str | None = None,
    seed: int = 0,
) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    split_col, patient_col = detect_columns(rows, split_col, patient_col)
    if split_col:
        for r in rows:
            if split_col not in r.columns:
                raise ConvirtError(f"{r.source}: no column '{split_col}' for --split-col")
            value = r.columns[split_col].strip().lower()
            if value not in SPLIT_NAMES:
                raise ConvirtError(f"{r.source}: split value '{r.columns[split_col]}' in column '{split_col}' "
                                   f"is not one of {'/'.join(SPLIT_NAMES)}")
            out[SPLIT_NAMES[value]].append(r)
        return out
    for r in rows:
        key = r.columns.get(patient_col, "") if patient_col else ""
        u = _unit(key or str(r.image), seed)
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(r)
    return out
