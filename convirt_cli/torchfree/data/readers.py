"""Read image-text rows from CSV / JSONL / a folder of images with same-named .txt files.

Rows keep every column (labels, split, patient id) and their 1-based source row so that every error
and skip names the file and row.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from convirt_cli.torchfree.data.text import join_parts, report_sections
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import format_of, image_suffixes, matched_suffix

if TYPE_CHECKING:
    from convirt_cli.torchfree.progress import ProgressBar

# suffixes never read as images (files of other names are, when a format's magic test knows them: the DICOM marker)
NOT_IMAGES = {".txt", ".csv", ".tsv", ".jsonl", ".json", ".md", ".xml", ".html", ".htm", ".pdf", ".log", ".zip",
              ".gz", ".tar", ".npy", ".npz", ".py", ".toml", ".yaml", ".yml", ".xlsx", ".xls", ".docx"}
TABLE_NAMES = ("pairs.csv", "pairs.jsonl", "manifest.csv", "manifest.jsonl")
MAX_SCAN = 2_000_000  # paths looked at to find bare image names (MIMIC-CXR-JPG has ~0.4 M files)


@dataclass
class Row:
    image: Path  # absolute
    text: str
    source: str  # "file:row" for messages
    columns: dict[str, str] = field(default_factory=dict)
    text_problem: str | None = None  # why the text is unusable, found while reading (a skip reason)
    image_check: int | str | None = None  # the image's check when read with its header (headers.py, volumes.py)
    slice: int | None = None  # which axial slice of a volume (NIfTI) this row is (volumes.py); None: a 2-D image


def find_table(data: Path) -> Path | None:
    """DATA as a file, or a folder holding pairs.csv/jsonl (or manifest.csv/jsonl), or else one table of any name
    (a folder with several is ambiguous: one line asks for the file). None: a folder of images."""
    if data.is_file():
        return data
    for name in TABLE_NAMES:
        if (data / name).is_file():
            return data / name
    tables = sorted(p for p in data.glob("*") if table_kind(p) and p.is_file())
    if len(tables) > 1:
        raise ConvirtError(f"{data}: {len(tables)} tables ({', '.join(p.name for p in tables[:5])}) and no pairs.csv; "
                           f"pass the one to read, e.g. {tables[0]}")
    return tables[0] if tables else None


def table_kind(path: Path) -> str | None:
    """'csv', 'tsv' or 'jsonl' by the name, in any case, gzipped or not (MIMIC-CXR ships its tables as .csv.gz)."""
    name = path.name.lower()
    return {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}.get(Path(name.removesuffix(".gz")).suffix)


def decode_table(path: Path, encoding: str = "auto") -> tuple[str, str]:
    """A table's text and the encoding it was read with.

    auto: UTF-8 (a BOM is dropped), UTF-16 when the file starts with its BOM (Excel's "Unicode text"), else
    cp1252, the Windows superset of latin-1 that most hospital and spreadsheet exports use.
    """
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error):
            raise ConvirtError(f"{path}: not a readable gzip file (truncated or damaged); download it again or "
                               "pass the unpacked table") from None
    if encoding != "auto":
        try:
            return raw.decode(encoding), encoding
        except LookupError:
            raise ConvirtError(f"--encoding {encoding}: unknown encoding (e.g. utf-8, cp1252, latin-1)") from None
        except UnicodeDecodeError as e:
            raise ConvirtError(f"{path}: not {encoding} (byte {e.start}); pass the file's --encoding "
                               "(e.g. cp1252, latin-1, utf-16) or --encoding auto") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "utf-16"
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def read_table(path: Path, encoding: str = "auto") -> list[dict[str, str]]:
    kind = table_kind(path)
    if kind is None:
        excel = " (a spreadsheet: save it as CSV)" if path.suffix.lower() in (".xlsx", ".xls", ".ods") else ""
        raise ConvirtError(f"{path}: expected a .csv, .tsv or .jsonl file (or .gz of one){excel}, or a folder of "
                           "images with .txt files")
    text, _ = decode_table(path, encoding)
    if kind == "jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConvirtError(f"{path}:{i}: not valid JSON ({e.msg}); fix or remove the line") from None
            if not isinstance(obj, dict):
                raise ConvirtError(f"{path}:{i}: expected one JSON object per line, got {type(obj).__name__}")
            rows.append({k: "" if v is None else str(v) for k, v in obj.items()})
        return rows
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if kind == "tsv" else ",")
        records = list(reader)
    except csv.Error as e:
        raise ConvirtError(f"{path}: not a readable CSV ({e}); check its quoting") from None
    _check_widths(path, records, len(reader.fieldnames or ()))
    return records


def _check_widths(path: Path, records: list[dict], width: int) -> None:
    """A row with more cells than the header (an unquoted comma in a report) has its columns shifted: its labels,
    split or image would be wrong, so it is an error naming the rows, not a silent guess. Fewer cells are blanks."""
    long = [(i, len(r[None]) + width) for i, r in enumerate(records, start=2) if None in r]
    if long:
        rows = ", ".join(str(i) for i, _ in long[:5]) + (" ..." if len(long) > 5 else "")
        raise ConvirtError(f"{path}:{long[0][0]}: {long[0][1]} cells but the header has {width} (an unquoted comma "
                           f"in a cell?); {len(long)} such row(s): {rows}. Quote those cells or fix the rows")


def read_rows(data: str | Path, image_col: str = "image", text_col: str | None = "text",
              encoding: str = "auto", sections: list[str] | tuple[str, ...] = (), metadata: bool = True,
              workers: int = 1, progress: ProgressBar | None = None, join: list[Path] | tuple[Path, ...] = (),
              warn: Callable[[str], None] = lambda line: None, slices: str = "middle") -> list[Row]:
    """All rows of DATA; `text_col=None` reads images only (finetune, embed). `sections` keeps those headed
    sections of each report (e.g. findings, impression); a report with none of them is a skip reason. `join`:
    tables whose columns join the rows (join.py; `warn` hears how many rows each left unmatched).
    DICOMs give their allow-listed metadata as columns, beside the table's own and joined ones, which win
    (`metadata=False`: not read, for embed), read in `workers` processes when many (headers.py), shown by
    `progress`. A volume (NIfTI) gives one row per slice that policy `slices` picks (volumes.py)."""
    data = Path(data)
    if not data.exists():
        raise ConvirtError(f"{data}: no such file or folder")
    table = find_table(data)
    rows = _read_folder(data, text_col is not None) if table is None else _read_table_rows(table, image_col, text_col,
                                                                                           encoding)
    if join:  # before the DICOM's columns, which must neither become join keys nor hide a joined column
        from convirt_cli.torchfree.data.join import join_tables

        for line in join_tables(rows, join, encoding):
            warn(line)
    from convirt_cli.torchfree.data.volumes import expand_volumes

    rows = expand_volumes(rows, slices)
    if metadata:
        from convirt_cli.torchfree.data.headers import read_headers

        read_headers(rows, workers=workers, progress=progress)
    if sections and text_col is not None:
        for row in rows:
            if row.text.strip() and row.text_problem is None:
                row.text = report_sections(row.text, sections)
                if not row.text:
                    row.text_problem = f"no {'/'.join(sections)} section"
    return rows


def _read_table_rows(table: Path, image_col: str, text_col: str | None, encoding: str) -> list[Row]:
    records = read_table(table, encoding)
    if not records:
        raise ConvirtError(f"{table}: no rows")
    cols = list(records[0].keys())
    # --text-col findings,impression: several columns make one text (MIMIC-CXR's sectioned CSV)
    text_cols = [text_col] if text_col is None or text_col in cols else [c.strip() for c in text_col.split(",")]
    if image_col is not None and image_col not in cols:
        raise ConvirtError(f"{table}: no column '{image_col}' (columns: {', '.join(cols)}); pass --image-col NAME")
    no_text = [c for c in text_cols if c is not None and c not in cols]
    slashed = (*image_suffixes(), ".txt")  # cells that are paths (a report's prose may hold a backslash)
    for r in records:  # tables written on Windows name images\\0001.png
        for col in (image_col, *text_cols):
            if col and "\\" in (r.get(col) or "") and r[col].strip().lower().endswith(slashed):
                r[col] = r[col].replace("\\", "/")
    first = [r.get(image_col) or "" for r in records[:20]] if image_col else []
    base = image_base(table, first)
    by_name = images_by_name(table.parent, first) if base is None else None
    base = base or table.parent
    names = [r.get(image_col) or "" for r in records]
    images = [absolute(by_name.get(n, base / n) if by_name is not None else base / n) if n else base for n in names]
    # no `text` column (the default), but reports as files beside the images or their study folders (MIMIC-CXR-JPG's
    # metadata table names dicom_id only; its reports are files/p10/p100/s500.txt): read those, as from a folder
    beside = no_text == ["text"] and sum(report_beside(p, base) is not None for p in images[:20]) * 2 > len(images[:20])
    if no_text and not beside:
        raise ConvirtError(f"{table}: no column '{no_text[0]}' (columns: {', '.join(cols)}); pass --text-col NAME")
    start = 2 if table_kind(table) != "jsonl" else 1  # CSV row 1 is the header
    rows = []
    for i, (r, image) in enumerate(zip(records, images), start=start):
        if beside:
            txt = report_beside(image, base)
            text, problem = (txt.read_text(encoding="utf-8", errors="replace"), None) if txt else (
                "", "missing report file")
        else:
            cell = (r.get(text_col) or "") if len(text_cols) == 1 else join_parts(r.get(c) for c in text_cols)
            text, problem = _text(cell if text_col else "", base)
        rows.append(Row(image=image, text=text, source=f"{table.name}:{i}", columns=r, text_problem=problem))
    _group_studies(rows, base)
    return rows


def absolute(path: Path) -> Path:
    """An absolute, normalised path, links kept: Path.resolve() walks every component on disk (~40 us a row, 15 s
    for MIMIC-CXR's 377k rows), and the path the user gave is the one to show."""
    return Path(os.path.abspath(path))


def _group_studies(rows: list[Row], root: Path) -> None:
    """Give rows a `study` column (their folder under root) when the images sit in study folders: many folders of a
    few views each (MIMIC-CXR's s123/, CheXpert's patient1/study1/). Where those folders sit in small parent folders
    too (a patient's studies: MIMIC's p10000032/, CheXpert's patient1/), the column is `patient_folder`, the parent.
    Without a patient id the split then keeps a study's (or patient's) images together. Class folders (normal/,
    pneumonia/: hundreds each) are no studies and get none."""
    root = absolute(root)
    inside = [r for r in rows if r.image.parent != root and r.image.parent.is_relative_to(root)]
    studies = {r.image.parent for r in inside}
    if len(studies) < 2 or len(rows) > 10 * len(studies):
        return
    parents = {s.parent for s in studies if s.parent != root}
    by_patient = len(parents) >= 2 and all(s.parent != root for s in studies) and len(inside) <= 50 * len(parents)
    for r in inside:
        folder = r.image.parent.parent if by_patient else r.image.parent
        r.columns.setdefault("patient_folder" if by_patient else "study", str(folder.relative_to(root)))


def image_base(table: Path, names: list[str]) -> Path | None:
    """The folder image paths are relative to: the table's own, else the nearest of its two parents under which
    most of the first names exist (CheXpert's train.csv names 'CheXpert-v1.0-small/train/...' from the folder
    above it). None: no folder fits."""
    names = [n for n in names if n and not Path(n).is_absolute()]
    if not names:
        return table.parent
    for base in (table.parent, table.parent.parent, table.parent.parent.parent):
        if sum((base / n).exists() for n in names) * 2 > len(names):
            return base
    return None


def images_by_name(folder: Path, names: list[str]) -> dict[str, Path] | None:
    """Bare file names found anywhere under the table's folder: NIH ChestX-ray14's 'Image Index' (00000001_000.png)
    is spread over images_001/ ... images_012/; ids without an extension match a file's stem (VinDr-CXR's image_id
    names train/<id>.dicom, RSNA Pneumonia's patientId <id>.dcm). A name two files share maps to neither (its row
    is then a missing image, never a guess). None when the first names are not bare or most are not found."""
    if not names or any(Path(n).name != n for n in names if n):
        return None
    stems = not any(matched_suffix(n) for n in names if n)
    found: dict[str, Path | None] = {}
    for n, p in enumerate(folder.rglob("*")):
        if n >= MAX_SCAN:  # a table of wrong names in a home folder must not walk the whole disk
            return None
        suffix = matched_suffix(p.name)
        if suffix:
            key = p.name[: -len(suffix)] if stems else p.name
            found[key] = None if key in found else p
    index = {k: v for k, v in found.items() if v is not None}
    return index if sum(n in index for n in names if n) * 2 > len([n for n in names if n]) else None


def _text(value: str, base: Path) -> tuple[str, str | None]:
    """(text, skip reason) of a cell: the cell, or the report file it names (a path ending in .txt, relative to the
    table like images): archives such as MIMIC-CXR keep one report file per study. A named file that is missing
    is 'missing report file', unless the cell has spaces: then it is prose that happens to end in .txt."""
    name = value.strip()
    if not name.lower().endswith(".txt") or "\n" in name or len(name) > 1024:
        return value, None
    report = base / name
    if report.exists() and not report.is_file():  # a named pipe would block the read
        return "", "report is not a regular file"
    try:
        return report.read_text(encoding="utf-8", errors="replace"), None
    except OSError:
        return ("", "missing report file") if not any(c.isspace() for c in name) else (value, None)


def folder_images(folder: Path) -> list[Path]:
    """Image files under folder, sorted: by a format's suffix, and files a format's magic test knows (PACS and CD
    exports name DICOMs IM000001 or by their UID, 1.2.840...: found by the DICM marker; the DICOMDIR index is no
    image)."""
    return sorted(p for p in folder.rglob("*") if matched_suffix(p.name) or _unnamed_image(p))


def _unnamed_image(p: Path) -> bool:
    """A file whose name says nothing (no known suffix) that a format's magic test knows: reads a few bytes, of
    regular files only (a pipe would block)."""
    return p.suffix.lower() not in NOT_IMAGES and not p.name.startswith(".") and p.name.upper() != "DICOMDIR" and \
        p.is_file() and format_of(p) is not None


def report_beside(image: Path, root: Path) -> Path | None:
    """The report file of an image that has none in a table: its own NAME.txt, else its study folder's (MIMIC-CXR
    keeps s123.txt beside the folder s123/), never one of root itself."""
    suffix = matched_suffix(image.name)  # ct.nii.gz -> ct.txt; IM000001 -> IM000001.txt
    own = image.with_name((image.name[: -len(suffix)] if suffix else image.name) + ".txt")
    study = [image.parent.with_name(image.parent.name + ".txt")] if image.parent not in (root, absolute(root)) else []
    return next((t for t in [own, *study] if t.is_file()), None)


def _read_folder(folder: Path, with_text: bool) -> list[Row]:
    images = folder_images(folder)
    if not images:
        raise ConvirtError(f"{folder}: no pairs.csv / pairs.jsonl and no images inside; see `convirt pretrain --help`")
    rows = []
    for p in images:
        text = ""
        if with_text:
            txt = report_beside(p, folder)
            text = txt.read_text(encoding="utf-8", errors="replace") if txt else ""
        rows.append(Row(image=absolute(p), text=text, source=str(p.relative_to(folder))))
    _group_studies(rows, folder)
    return rows

