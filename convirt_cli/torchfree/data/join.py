"""--join: another table's columns added to the rows on the columns the two share. Archives keep labels and splits
apart from the image list (MIMIC-CXR: labels per study in mimic-cxr-2.0.0-chexpert.csv.gz, the split per image in
...-split.csv.gz)."""

from __future__ import annotations

from pathlib import Path

from convirt_cli.torchfree.data.readers import Row, read_table, table_kind
from convirt_cli.torchfree.errors import ConvirtError


def join_tables(rows: list[Row], tables: list[Path] | tuple[Path, ...], encoding: str = "auto") -> list[str]:
    """Add each table's columns to the rows it matches on every column the two share. A row's own columns win; a
    row that no joined row matches gets them blank (its labels are then missing: a counted skip). Returns a warning
    for each table that left rows unmatched. Two joined rows with one key: an error."""
    warnings = []
    data_cols = list(rows[0].columns) if rows else []
    for table in tables:
        table = Path(table)
        if not table.is_file():
            raise ConvirtError(f"--join {table}: " + ("a folder; pass the table file inside it" if table.is_dir() else
                                                     "no such file"))
        if not table_kind(table):
            raise ConvirtError(f"--join {table}: expected a .csv, .tsv or .jsonl table (or a .gz of one)")
        records = read_table(table, encoding)
        if not records:
            raise ConvirtError(f"--join {table}: no rows")
        keys = [c for c in records[0] if c in data_cols]
        if not keys:
            raise ConvirtError(f"--join {table}: no column in common with the data (its columns: "
                               f"{', '.join(list(records[0])[:12])}; the data's: {', '.join(data_cols[:12])}); the "
                               "key columns must have the same names")
        index: dict[tuple[str, ...], tuple[int, dict[str, str]]] = {}
        start = 2 if table_kind(table) != "jsonl" else 1
        for i, r in enumerate(records, start=start):
            key = tuple(_key(r.get(c)) for c in keys)
            if key in index:
                raise ConvirtError(f"--join {table}:{i}: {', '.join(keys)} = {', '.join(key)} again (row "
                                   f"{index[key][0]}); a joined table needs one row per key")
            index[key] = (i, r)
        unmatched, blank = 0, dict.fromkeys(records[0], "")
        for row in rows:
            hit = index.get(tuple(_key(row.columns.get(c)) for c in keys))
            unmatched += hit is None
            new = hit[1] if hit is not None else blank  # unmatched: blank cells, as a table has for a missing value
            row.columns = row.columns | {k: v for k, v in new.items() if k not in row.columns}
        if unmatched:
            warnings.append(f"--join {table.name}: {unmatched} of {len(rows)} rows match no row on "
                            f"{', '.join(keys)}: its columns are blank there")
        data_cols += [c for c in records[0] if c not in data_cols]
    return warnings


def _key(value: str | None) -> str:
    """A join key as text; '10000032.0' (a spreadsheet's rendering of an id) matches '10000032'."""
    value = (value or "").strip()
    if value.endswith(".0") and value[:-2].lstrip("-").isdigit():
        return value[:-2]
    return value
