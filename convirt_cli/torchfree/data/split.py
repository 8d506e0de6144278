"""Train / val / test splits: from a given column, or by patient so no patient spans two splits."""

from __future__ import annotations

import hashlib

from convirt_cli.torchfree.data.readers import Row
from convirt_cli.torchfree.errors import ConvirtError

SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "holdout": "test",
}
PATIENT_COLS = ("patient_id", "patientid", "patient", "subject_id")


def _unit(key: str, seed: int) -> float:
    """A stable uniform number in [0, 1) for a key (hash, not RNG: independent of row order)."""
    h = hashlib.sha1(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def split_rows(
    rows: list[Row],
    val_fraction: float = 0.1,
    test_fraction: float = 0.0,
    split_col: str | None = None,
    patient_col: str | None = None,
    seed: int = 0,
) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {"train": [], "val": [], "test": []}
    if split_col:
        for r in rows:
            if split_col not in r.columns:
                raise ConvirtError(f"{r.source}: no column '{split_col}' for --split-col")
            value = r.columns[split_col].strip().lower()
            if value not in SPLIT_NAMES:
                raise ConvirtError(f"{r.source}: split value '{r.columns[split_col]}' in column '{split_col}' "
                                   f"is not one of train/val/valid/validation/test")
            out[SPLIT_NAMES[value]].append(r)
        return out
    if patient_col is None and rows:
        patient_col = next((c for c in PATIENT_COLS if c in rows[0].columns), None)
    for r in rows:
        key = r.columns.get(patient_col, "") if patient_col else ""
        u = _unit(key or str(r.image), seed)
        out["test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"].append(r)
    return out
