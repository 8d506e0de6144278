"""DICOM files: pixels through the modality LUT, MONOCHROME1 inversion and the model's window; metadata through an
allow-list, so no identifying value reaches an output.

pydicom is imported only when a DICOM is met (the torch-free serving path stays fast for PNG indexes). Compressed
transfer syntaxes decode through the pylibjpeg plugins (JPEG baseline/lossless, JPEG-LS via libjpeg, JPEG 2000 via
openjpeg, RLE), which are base dependencies.

Outputs (tables, items.jsonl, galleries, run configs, logs) may carry the values in ALLOWED_TAGS and nothing else
from a file: no names, raw ids, birth dates, UIDs, institution or device tags.
"""

from __future__ import annotations

import hashlib
from datetime import date
from pathlib import Path

import numpy as np

from convirt_cli.torchfree.formats.table import (
    Format,
    ImageError,
    check_pixels,
    check_regular,
    register_format,
)
from convirt_cli.torchfree.formats.window import (
    FlatImage,
    lut_friendly,
    parse_window,
    stored_to_uint8,
    to_uint8,
)

DICOM_SUFFIXES = (".dcm", ".dicom")
# output column -> the DICOM keyword it comes from (PatientID only as a one-way hash)
ALLOWED_TAGS: dict[str, str] = {
    "patient": "PatientID (SHA-256, first 16 hex digits; never the raw id)",
    "sex": "PatientSex",
    "age": "PatientAge (years; else StudyDate - PatientBirthDate, only the difference in years is kept)",
    "view": "ViewPosition",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "presentation": "PresentationIntentType (FOR PRESENTATION; FOR PROCESSING is raw detector data, not for display)",
}
GREY = ("MONOCHROME1", "MONOCHROME2")
DECODERS = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle"


class DicomError(ImageError):
    """A DICOM that cannot become a model input; str() is the reason a skip or a refusal names."""


def has_marker(path: str | Path) -> bool:
    """The 'DICM' marker at byte 128: DICOM files often have no extension (PACS exports: IM000001, 1.2.840...)."""
    try:
        if not Path(path).is_file():  # a named pipe would block the read
            return False
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read(path: Path, pixels: str):
    """pixels: 'skip' (metadata only), 'defer' (elements over 1 KiB stay on disk: the pixel data's presence and
    length without reading it) or 'read'."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        check_regular(path)
    except ImageError as e:
        raise DicomError(str(e)) from None
    try:
        return pydicom.dcmread(path, stop_before_pixels=pixels == "skip", defer_size="1 KB" if pixels == "defer" else None)
    except InvalidDicomError:
        raise DicomError("not a DICOM file (no DICM marker)") from None
    except Exception as e:  # noqa: BLE001 - a cut or garbled file: pydicom raises many kinds
        raise DicomError(f"unreadable DICOM (truncated or damaged: {type(e).__name__})") from None


def _check_kind(ds) -> None:
    """Refuse what is not one grey image: structured reports, presentation states, colour, multi-frame."""
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        sop = ds.get("SOPClassUID")
        kind = getattr(sop, "name", None) or "no SOP class"
        raise DicomError(f"DICOM without pixel data ({kind})")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1 or photometric not in GREY:
        raise DicomError(f"colour DICOM ({photometric or 'no PhotometricInterpretation'}); only grey images "
                         "(MONOCHROME1/2) are read")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(f"multi-frame DICOM ({frames} frames); only single images are read")


def check(path: str | Path) -> int:
    """Header-only check for validation: the shorter side in pixels, or DicomError with the reason. An uncompressed
    file shorter than its pixel data is caught here; other damage shows when the pixels are decoded."""
    path = Path(path)
    return _check_header(_read(path, "defer"), path)


def _check_header(ds, path: Path) -> int:
    """check() of a header already read; a garbled element (values are converted on access) is a DicomError too."""
    try:
        return _checked(ds, path)
    except DicomError:
        raise
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds for a bad value
        raise DicomError(f"unreadable DICOM header ({type(e).__name__})") from None


def _checked(ds, path: Path) -> int:
    _check_kind(ds)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows <= 0 or cols <= 0:
        raise DicomError("DICOM without Rows/Columns")
    _check_pixels(cols, rows)
    ts = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and not ts.is_compressed:
        expected = rows * cols * int(ds.get("BitsAllocated", 16) or 16) // 8
        if path.stat().st_size < expected:
            raise DicomError(f"truncated DICOM ({path.stat().st_size} bytes, pixel data alone needs {expected})")
    return min(rows, cols)


def header(path: str | Path) -> tuple[dict[str, str], int | str]:
    """(columns, check) from ONE read of the header: a DICOM folder's metadata and its validation together, as a
    folder of 377k files (MIMIC-CXR) would otherwise read every header twice. check is check()'s shorter side or
    its reason; a header that does not parse has no columns."""
    path = Path(path)
    try:
        ds = _read(path, "defer")
    except DicomError as e:
        return {}, str(e)
    try:  # values are converted on access: a garbled element raises here, not at read time
        cols = _columns(ds)
    except Exception:  # noqa: BLE001 - metadata is optional; the check below says whether the image is usable
        cols = {}
    try:
        return cols, _check_header(ds, path)
    except DicomError as e:
        return cols, str(e)


def file_window(ds) -> tuple[float, float] | None:
    """The file's first window (centre, width), when it has a usable one."""
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    c = c[0] if hasattr(c, "__len__") and not isinstance(c, str) else c
    w = w[0] if hasattr(w, "__len__") and not isinstance(w, str) else w
    try:
        c, w = float(c), float(w)
    except (TypeError, ValueError):
        return None
    return (c, w) if w > 0 else None


def read(path: Path, window: str, slice: int | None, draft: int | None) -> np.ndarray:
    """The format table's reader (formats/table.py): one grey image, so no slice; no reduced-scale decoding."""
    return read_gray(path, window)


def read_gray(path: str | Path, window: str = "auto") -> np.ndarray:
    """A grey DICOM -> uint8 [H, W] at full resolution: modality LUT (rescale slope / intercept), the stored bit
    depth kept until one windowing step (policy `window`, see formats/window.py), MONOCHROME1 inverted."""
    kind = parse_window(window)[0]
    ds = _read(Path(path), "read")
    try:
        return _gray(ds, window, kind)
    except DicomError:
        raise
    except Exception as e:  # noqa: BLE001 - a garbled element (values are converted on access)
        raise DicomError(f"unreadable DICOM header ({type(e).__name__})") from None


def _can_decode(ts) -> bool:
    """Is a decoder for transfer syntax `ts` installed? (A damaged file must not be blamed on a missing one.)"""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(ts).is_available)
    except Exception:  # noqa: BLE001 - a syntax pydicom has no decoder for at all (MPEG-2 video)
        return False


def _check_pixels(cols: int, rows: int) -> None:
    try:
        check_pixels(cols, rows)
    except ImageError as e:
        raise DicomError(str(e)) from None


def _gray(ds, window: str, kind: str) -> np.ndarray:
    _check_kind(ds)
    _check_pixels(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))  # before the pixels are decoded
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    try:
        stored = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        if ts is not None and ts.is_compressed and not _can_decode(ts):
            raise DicomError(f"compressed DICOM ({ts.name}) with no decoder installed for it: {DECODERS}") from None
        if ts is not None and ts.is_compressed:
            raise DicomError(f"compressed DICOM ({ts.name}) whose pixel data does not decode (truncated or damaged: "
                             f"{type(e).__name__}; its decoder is installed)") from None
        raise DicomError(f"unreadable DICOM pixel data (truncated or damaged: {type(e).__name__})") from None
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    invert = str(ds.PhotometricInterpretation).upper() == "MONOCHROME1"
    fw = file_window(ds) if kind == "auto" else None
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    eight_bit = int(ds.get("BitsStored", 16) or 16) <= 8 and slope == 1 and intercept == 0
    if kind == "auto" and fw is None and "VOILUTSequence" in ds:  # a lookup table instead of a window
        lut = ds.VOILUTSequence[0]
        bits = int(lut.LUTDescriptor[2]) or 16
        unit = np.clip(apply_voi_lut(apply_modality_lut(stored, ds), ds, index=0) / float(2 ** bits - 1), 0, 1)
        return to_uint8(unit * 255.0, "auto", None, eight_bit=True, invert=invert)
    try:
        if "ModalityLUTSequence" not in ds and lut_friendly(stored):  # the common case: linear rescale, integers
            return stored_to_uint8(stored, window, fw, eight_bit, invert, slope, intercept)
        return to_uint8(apply_modality_lut(stored, ds), window, fw, eight_bit=eight_bit, invert=invert)
    except FlatImage as e:
        raise DicomError(str(e)) from None


def patient_hash(patient_id: str) -> str:
    """A stable pseudonym for the patient-level split: the raw id never leaves this function. Short numeric ids can
    be found again by hashing every candidate, so treat the hash as pseudonymous, not anonymous."""
    return hashlib.sha256(f"convirt-patient:{patient_id.strip()}".encode()).hexdigest()[:16]


def _age_years(ds) -> str:
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        n = int(age[:3])
        return str(n) if age[3] == "Y" else f"{n / {'D': 365.25, 'W': 52.18, 'M': 12}[age[3]]:.2f}"
    birth, study = str(ds.get("PatientBirthDate", "") or ""), str(ds.get("StudyDate", "") or "")
    try:
        b = date(int(birth[:4]), int(birth[4:6]), int(birth[6:8]))
        s = date(int(study[:4]), int(study[4:6]), int(study[6:8]))
    except (ValueError, IndexError):
        return ""
    return str(s.year - b.year - ((s.month, s.day) < (b.month, b.day)))


def columns(path: str | Path) -> dict[str, str]:
    """The allow-listed metadata of a DICOM as table columns (empty strings where the file has no value)."""
    return _columns(_read(Path(path), "skip"))


def _columns(ds) -> dict[str, str]:
    pid = str(ds.get("PatientID", "") or "").strip()
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    return {"patient": patient_hash(pid) if pid else "", "sex": sex if sex in ("M", "F", "O") else "",
            "age": _age_years(ds), "view": str(ds.get("ViewPosition", "") or "").strip(),
            "modality": str(ds.get("Modality", "") or "").strip(),
            "body_part": str(ds.get("BodyPartExamined", "") or "").strip(),
            "presentation": str(ds.get("PresentationIntentType", "") or "").strip()}


FORMAT = register_format(Format("dicom", DICOM_SUFFIXES, read, check=check, magic=has_marker, header=header,
                                columns=tuple(ALLOWED_TAGS)))
