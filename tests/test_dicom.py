"""DICOM and high-bit-depth images: the pixel pipeline against hand-made twins, every bad kind of file as a counted
skip or one line, and no identifying tag value in anything the commands write. The DICOMs are made here with
pydicom from the shared covid-cxr PNGs."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import dicom
from convirt_cli.torchfree.formats.window import (
    FlatImage,
    dicom_linear,
    parse_window,
    stored_to_uint8,
    to_uint8,
    to_unit,
)
from convirt_cli.torchfree.imageio import load_gray

pydicom = pytest.importorskip("pydicom")
from conftest import COVID
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

runner = CliRunner()
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
SECRETS = {"name": "Doe^Jane", "pid": "MRN-0042917", "birth": "19790314"}


def _gray(i: int, side: int = 160) -> np.ndarray:
    path = sorted((COVID.parent / "images").glob("*.png"))[i]
    with Image.open(path) as im:
        return np.asarray(im.convert("L").resize((side, side)), dtype=np.uint8)


def write_dicom(path, pixels: np.ndarray, *, photometric="MONOCHROME2", bits=8, slope=None, intercept=None,
                window=None, patient=SECRETS["pid"], sex="F", age="045Y", compress=None, sop=DX, frames=1,
                rgb=False, pixel_data=True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = SECRETS["name"], patient, SECRETS["birth"]
    ds.PatientSex, ds.PatientAge, ds.StudyDate = sex, age, "20240601"
    ds.Modality, ds.ViewPosition, ds.InstitutionName = "DX", "PA", "St Elsewhere"
    if pixel_data:
        ds.Rows, ds.Columns = pixels.shape[-2:]
        ds.SamplesPerPixel = 3 if rgb else 1
        ds.PhotometricInterpretation = "RGB" if rgb else photometric
        if rgb:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated = 8 if bits <= 8 else 16
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
        if frames > 1:
            ds.NumberOfFrames = frames
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = pixels.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
        if compress is not None:
            ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return path


def monochrome1_twin(p: np.ndarray) -> tuple[np.ndarray, float, float, tuple[float, float]]:
    """12-bit MONOCHROME1 stored values with slope 2 / intercept -1024 and a window under which they show exactly
    the 8-bit MONOCHROME2 image p: modality value x = -1000 + 16 (255 - p); window centre 1040.5, width 4081 maps x
    to (x + 1000) / 16 = 255 - p (DICOM's linear function); MONOCHROME1 inverts that to p."""
    stored = 12 + 8 * (255 - p.astype(np.int64))
    return stored, 2.0, -1024.0, (1040.5, 4081.0)


# ---------------------------------------------------------------- window policies, by hand

def test_window_policies_by_hand():
    v = np.array([[0.0, 100.0], [200.0, 1000.0]])
    assert np.allclose(to_unit(v, "minmax"), [[0, 0.1], [0.2, 1]])
    # DICOM linear, by hand: y = (x - 99.5) / 200 + 0.5 -> 0.0025, 0.5025, 1.0025 (clipped to 1), 4.5 (clipped)
    assert np.allclose(to_unit(v, "fixed:100,201"), [[0.0025, 0.5025], [1, 1]])
    lo, hi = np.percentile(v, [25, 75])
    assert np.allclose(to_unit(v, "percentile:25,75"), np.clip((v - lo) / (hi - lo), 0, 1))
    assert np.allclose(to_unit(v, "auto", file_window=(100, 201)), dicom_linear(v, 100, 201))
    assert np.allclose(to_unit(np.array([[0.0, 51.0, 255.0]]), "auto", eight_bit=True), [[0, 0.2, 1]])
    with pytest.raises(FlatImage, match="every pixel 7"):  # never fed on as a black image
        to_unit(np.full((3, 3), 7.0), "minmax")
    assert np.allclose(to_unit(np.full((2, 2), 7.0), "fixed:7,10"), dicom_linear(np.full((2, 2), 7.0), 7, 10))
    assert np.array_equal(to_uint8(v, "minmax", invert=True), [[255, 230], [204, 0]])
    for bad in ("percentile:99,1", "fixed:40,0", "linear", "minmax:3"):
        with pytest.raises(ValueError, match="expected one of auto, minmax"):
            parse_window(bad)
    r = runner.invoke(app, ["pretrain", "x", "--window", "percentile:5"])
    assert isinstance(r.exception, ConvirtError) and str(r.exception).startswith("--window percentile:5"), r.output


@pytest.mark.parametrize("spec", ["auto", "minmax", "percentile:2,98", "fixed:300,900"])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
def test_lookup_table_path_equals_the_direct_windowing(spec, dtype):
    """The fast path (a table over the stored levels) gives the pixels of windowing every value directly."""
    rng = np.random.default_rng(1)
    stored = rng.integers(-800 if dtype == np.int16 else 0, 4096, (300, 200)).astype(dtype)
    for slope, intercept, fw in ((1.0, 0.0, None), (2.0, -1024.0, (40.0, 400.0)), (-1.0, 100.0, None)):
        direct = to_uint8(stored * slope + intercept, spec, fw, invert=True)
        assert np.array_equal(stored_to_uint8(stored, spec, fw, invert=True, slope=slope, intercept=intercept),
                              direct), (spec, slope)


def test_16bit_png_gives_the_8bit_input_under_minmax(tmp_path):
    p = _gray(0)
    Image.fromarray(p).save(tmp_path / "a8.png")
    Image.fromarray(p.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    with Image.open(tmp_path / "a16.png") as im:
        assert im.mode.startswith("I")
    a8 = load_gray(tmp_path / "a8.png", 96, "minmax").astype(int)
    a16 = load_gray(tmp_path / "a16.png", 96, "minmax").astype(int)
    assert np.abs(a8 - a16).max() <= 1
    # auto: a 16-bit image is windowed (percentiles), not clipped to white by an 8-bit conversion
    auto16 = load_gray(tmp_path / "a16.png", 96)
    assert (auto16 == 255).mean() < 0.05 and np.corrcoef(auto16.ravel(), a8.ravel())[0, 1] > 0.95


def test_an_upload_is_a_file_without_a_name(tmp_path):
    """File bytes (a DICOM without its suffix, a 16-bit PNG, a JPEG) give the pixels their file gives, and decoded
    PNG pixels the ones of the file they came from: what `Searcher` queries from an upload see."""
    p = _gray(1)
    stored, slope, intercept, window = monochrome1_twin(p)
    files = [write_dicom(tmp_path / "d.dcm", stored, photometric="MONOCHROME1", bits=12, slope=slope,
                         intercept=intercept, window=window)]
    Image.fromarray(p.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    Image.fromarray(p).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(p).save(tmp_path / "a8.png")
    files += [tmp_path / "a16.png", tmp_path / "a.jpg", tmp_path / "a8.png"]
    for f in files:
        for window_policy in ("auto", "minmax"):
            assert np.array_equal(load_gray(f.read_bytes(), 64, window_policy), load_gray(f, 64, window_policy)), f
    for f in (tmp_path / "a16.png", tmp_path / "a8.png"):  # (a JPEG file may decode at reduced size: not compared)
        with Image.open(f) as im:
            pixels = np.asarray(im)
        assert np.array_equal(load_gray(pixels, 64), load_gray(f, 64)), f
    with pytest.raises(ValueError, match="expected a grey"):
        load_gray(np.zeros((4, 4, 2), np.uint8), 64)


# ---------------------------------------------------------------- DICOM pixels

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twins")
    p = _gray(1)
    stored, slope, intercept, window = monochrome1_twin(p)
    write_dicom(tmp / "m2.dcm", p)
    write_dicom(tmp / "m1.dcm", stored, photometric="MONOCHROME1", bits=12, slope=slope, intercept=intercept,
                window=window)
    write_dicom(tmp / "j2k.dcm", p, compress=JPEG2000Lossless)
    write_dicom(tmp / "rle.dcm", stored, photometric="MONOCHROME1", bits=12, slope=slope, intercept=intercept,
                window=window, compress=RLELossless)
    (tmp / "noext").write_bytes((tmp / "m2.dcm").read_bytes())  # PACS exports often have no extension
    Image.fromarray(p).save(tmp / "png.png")
    return tmp, p


def test_monochrome1_twin_compressed_and_extensionless_give_the_same_input(twins):
    tmp, p = twins
    assert np.array_equal(dicom.read_gray(tmp / "m2.dcm"), p)
    assert np.array_equal(dicom.read_gray(tmp / "m1.dcm"), p)
    for name in ("m1.dcm", "j2k.dcm", "rle.dcm", "noext"):
        assert np.array_equal(load_gray(tmp / name, 64), load_gray(tmp / "png.png", 64)), name
    ds = pydicom.dcmread(tmp / "j2k.dcm")
    assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless


def test_twins_embed_the_same_through_torch_and_onnxruntime(twins, tiny_run, tmp_path):
    tmp, _ = twins
    r = runner.invoke(app, ["export", str(tiny_run), "--onnx", "--out", str(tmp_path / "onnx")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "onnx" / "preprocess.json").read_text())["window"] == "auto"
    embs = {}
    for backend, model in (("torch", tiny_run), ("onnx", tmp_path / "onnx")):
        out = tmp_path / f"idx-{backend}"
        inputs = tmp_path / f"list-{backend}.txt"
        inputs.write_text("".join(f"{tmp / n}\n" for n in ("m2.dcm", "m1.dcm", "j2k.dcm", "png.png")))
        r = runner.invoke(app, ["embed", str(inputs), "--model", str(model), "--backend", backend, "--kind", "image",
                                "--out", str(out)])
        assert r.exit_code == 0, r.output
        embs[backend] = np.load(out / "embeddings.npy")
        assert len(embs[backend]) == 4
    for e in embs.values():
        assert np.allclose(e[0], e[1], atol=1e-5) and np.allclose(e[0], e[2], atol=1e-5)
    assert np.allclose(embs["torch"], embs["onnx"], atol=2e-3)


# ---------------------------------------------------------------- bad files

@pytest.fixture(scope="module")
def bad_dicoms(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    p = _gray(2, 64)
    good = write_dicom(tmp / "good.dcm", p)
    write_dicom(tmp / "sr.dcm", p, sop=BASIC_TEXT_SR, pixel_data=False)
    write_dicom(tmp / "rgb.dcm", np.stack([p] * 3, -1), rgb=True)
    write_dicom(tmp / "cine.dcm", np.stack([p, p]), frames=2)
    raw = good.read_bytes()
    (tmp / "cut.dcm").write_bytes(raw[: len(raw) - 2000])
    ds = pydicom.dcmread(good)  # a syntax no installed plugin decodes (MPEG-2 video)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds.save_as(tmp / "mpeg.dcm", enforce_file_format=True)
    write_dicom(tmp / "flat.dcm", np.full((64, 64), 700), bits=12)  # no window in the file: nothing to show
    ds = pydicom.dcmread(write_dicom(tmp / "j2k_cut.dcm", p, compress=JPEG2000Lossless))  # decoder installed, data cut
    frame = next(pydicom.encaps.generate_frames(ds.PixelData))
    ds.PixelData = pydicom.encaps.encapsulate([frame[:len(frame) // 3]])
    ds.save_as(tmp / "j2k_cut.dcm", enforce_file_format=True)
    raw = bytearray(raw)  # Rows (0028,0010) re-labelled a decimal string 'x': it parses, and fails when read
    at = raw.find(b"\x28\x00\x10\x00US")
    raw[at + 4:at + 6], raw[at + 8:at + 10] = b"DS", b"x\x00"
    (tmp / "garbled.dcm").write_bytes(bytes(raw))
    return tmp


REASONS = {"sr.dcm": "DICOM without pixel data (Basic Text SR Storage)", "rgb.dcm": "colour DICOM (RGB)",
           "cine.dcm": "multi-frame DICOM (2 frames)", "cut.dcm": "truncated DICOM",
           "mpeg.dcm": "compressed DICOM (MPEG2 Main Profile / Main Level) with no decoder installed",
           "flat.dcm": "flat image (every pixel 700): nothing to window",
           "j2k_cut.dcm": "compressed DICOM (JPEG 2000 Image Compression (Lossless Only)) whose pixel data does not "
                          "decode (truncated or damaged",
           "garbled.dcm": "unreadable DICOM header (ValueError)"}


@pytest.mark.parametrize("name", sorted(REASONS))
def test_each_bad_dicom_is_one_line_for_a_single_image(bad_dicoms, name):
    with pytest.raises(dicom.DicomError) as e:
        dicom.check(bad_dicoms / name) if name not in ("mpeg.dcm", "flat.dcm", "j2k_cut.dcm") else \
            dicom.read_gray(bad_dicoms / name)
    assert str(e.value).startswith(REASONS[name]), str(e.value)
    if name == "mpeg.dcm":
        assert "pip install pylibjpeg" in str(e.value)


def test_bad_dicoms_are_counted_skips_with_reasons(bad_dicoms, tiny_run, tmp_path):
    r = runner.invoke(app, ["embed", str(bad_dicoms), "--model", str(tiny_run), "--backend", "torch", "--kind",
                            "image", "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    items = [json.loads(x) for x in (tmp_path / "idx" / "items.jsonl").read_text().splitlines()]
    assert [it["path"].rsplit("/", 1)[1] for it in items] == ["good.dcm"]
    assert "(8 skipped)" in r.output and "flat image" in r.output, r.output
    reasons = {Path(x["path"]).name: x["reason"] for x in json.loads((tmp_path / "idx" / "index.json").read_text())["skipped"]}
    assert "does not decode" in reasons["j2k_cut.dcm"] and "no decoder" not in reasons["j2k_cut.dcm"], reasons
    more = tmp_path / "more"  # pretrain: the same files are counted skips, by reason, in summary.json
    more.mkdir()
    for i in range(3):
        write_dicom(more / f"ok{i}.dcm", _gray(3 + i, 64))
    for name in REASONS:
        (more / name).write_bytes((bad_dicoms / name).read_bytes())
    r = runner.invoke(app, ["pretrain", str(tmp_path / "more"), "--objective", "simclr", "--model", "tiny",
                            "--max-steps", "1", "--batch-size", "2", "--image-size", "32", "--val-fraction", "0",
                            "--out", str(tmp_path / "run"), "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    data = json.loads((tmp_path / "run" / "summary.json").read_text())["data"]
    assert data["found"] == 11 and data["usable"] == 6, data
    assert sorted(k.split(" (")[0].split(";")[0] for k in data["skipped"]) == sorted(
        ["DICOM without pixel data", "colour DICOM", "multi-frame DICOM", "truncated DICOM",
         "unreadable DICOM header"]), data
    # the MPEG-2, flat and cut JPEG 2000 files pass the header check; their pixels fail at decode time: bad images
    r = runner.invoke(app, ["retrieve", "--image", str(bad_dicoms / "rgb.dcm"), "--index", str(tmp_path / "idx")])
    assert isinstance(r.exception, ConvirtError) and "rgb.dcm: cannot read it" in str(r.exception), r.output
    assert "colour DICOM (RGB)" in str(r.exception)


# ---------------------------------------------------------------- a DICOM folder, no table; privacy

@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory):
    """24 images of 6 patients (ids, names and birth dates that must never appear in an output), sex alternating
    by patient, ages 30-80."""
    tmp = tmp_path_factory.mktemp("dcm") / "archive"
    for i in range(24):
        patient = i // 4
        sub = tmp / f"p{patient}"
        sub.mkdir(parents=True, exist_ok=True)
        write_dicom(sub / f"{i:03d}.dcm", _gray(i, 96), patient=f"{SECRETS['pid']}-{patient}",
                    sex="MF"[patient % 2], age=f"{30 + 10 * patient:03d}Y")
    return tmp


def test_dicom_metadata_is_allow_listed(dicom_folder):
    cols = dicom.columns(dicom_folder / "p1" / "004.dcm")
    assert cols == {"patient": dicom.patient_hash(f"{SECRETS['pid']}-1"), "sex": "F", "age": "40", "view": "PA",
                    "modality": "DX", "body_part": "", "presentation": ""}
    assert set(cols) == set(dicom.ALLOWED_TAGS)



def test_header_is_columns_and_check_from_one_read(bad_dicoms, dicom_folder):
    def separately(p):
        try:
            cols = dicom.columns(p)
        except dicom.DicomError:
            cols = {}
        try:
            return cols, dicom.check(p)
        except dicom.DicomError as e:
            return cols, str(e)

    files = sorted(bad_dicoms.glob("*.dcm")) + sorted(dicom_folder.rglob("*.dcm"))[:4]
    got = {p.name: dicom.header(p) for p in files}
    assert got == {p.name: separately(p) for p in files}
    assert got["cut.dcm"][1].startswith("truncated DICOM") and got["good.dcm"][1] == 64


class CountReads:
    def __init__(self, monkeypatch):
        self.n, real = 0, pydicom.dcmread

        def counted(*a, **k):
            self.n += 1
            return real(*a, **k)

        monkeypatch.setattr(pydicom, "dcmread", counted)


def test_a_dicom_folder_reads_each_header_once(dicom_folder, monkeypatch):
    """A MIMIC-sized folder (377k files) must not read every header twice (metadata, then validation)."""
    from convirt_cli.torchfree.data import validate
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.validate import validate_rows

    reads, shown = CountReads(monkeypatch), []

    @contextmanager
    def progress(label, total, unit):
        shown.append([label, total, 0])
        yield lambda n: shown[-1].__setitem__(2, shown[-1][2] + n)

    monkeypatch.setattr(validate, "BAR_FROM", 1)
    rows = read_rows(dicom_folder, text_col=None, progress=progress)
    v = validate_rows(rows, need_text=False, progress=progress)
    assert reads.n == 24 and len(v.usable) == 24 and v.min_side == 96
    assert shown == [["image headers", 24, 24]]  # one bar, advanced to its end; none for validation
    pngs = read_rows(COVID, text_col=None)[:30]
    validate_rows(pngs, need_text=False, progress=progress)
    assert shown[1:] == [["checking images", 30, 30]]  # other images: their headers are read while checking
    reads.n = 0
    bare = read_rows(dicom_folder, text_col=None, metadata=False)  # embed needs no metadata
    assert all(set(r.columns) == {"study"} for r in bare) and reads.n == 0


def test_a_pacs_export_folder_without_extensions_is_read(dicom_folder, tmp_path):
    """CD and PACS exports name files IM000001 or by their UID (1.2.840...: a 'suffix' of digits), beside a
    DICOMDIR index and notes; the DICOM marker finds the images, and their reports are NAME.txt."""
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.validate import validate_rows

    export = tmp_path / "export" / "PA000000" / "ST000000"
    export.mkdir(parents=True)
    sources = sorted(dicom_folder.rglob("*.dcm"))[:3]
    for name, src in zip(("IM000001", "IM000002", "1.2.840.113619.2.55.3.604"), sources):
        (export / name).write_bytes(src.read_bytes())
        (export / f"{name}.txt").write_text(f"report of {name}")
    ds = pydicom.dcmread(sources[0])  # the index: a DICOM with the marker but no image
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.save_as(export.parent.parent / "DICOMDIR")
    (export / "notes.json").write_text("{}")
    (export / "IM000003").write_bytes(b"not a dicom at all" * 20)
    rows = read_rows(tmp_path / "export")
    assert [r.image.name for r in rows] == ["1.2.840.113619.2.55.3.604", "IM000001", "IM000002"]
    assert [r.text for r in rows] == [f"report of {r.image.name}" for r in rows]
    assert rows[1].columns["patient"] == dicom.patient_hash(f"{SECRETS['pid']}-0") and rows[1].image_check == 96
    assert len(validate_rows(rows).usable) == 3


def test_a_table_of_dicoms_gets_their_metadata_beside_its_own_columns(dicom_folder, tmp_path):
    """MIMIC-CXR's DICOM record list names files and nothing of their views: the DICOM's allow-listed metadata joins
    the table's columns (the table's own win), so `--where view=PA` and `--label age` work from a table too."""
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.split import describe_split
    from convirt_cli.torchfree.data.validate import validate_rows

    files = sorted(dicom_folder.rglob("*.dcm"))[:3]
    (tmp_path / "t.csv").write_text("image,sex\n" + "".join(f"{f},X\n" for f in files) + "gone.dcm,M\n")
    rows = read_rows(tmp_path / "t.csv", text_col=None)
    assert [(r.columns["sex"], r.columns["view"], r.columns["age"]) for r in rows] == [
        ("X", "PA", "30"), ("X", "PA", "30"), ("X", "PA", "30"), ("M", "", "")]
    v = validate_rows(rows, need_text=False, where=["view=PA"])
    assert len(v.usable) == 3 and v.reasons() == {"--where view: blank": 1}
    # a joined table's columns come before the DICOM's: its sex wins, and the DICOM's sex is no join key
    (tmp_path / "labels.csv").write_text("image,sex\n" + "".join(f"{f},F\n" for f in files))  # the DICOMs say M
    (tmp_path / "u.csv").write_text("image\n" + "".join(f"{f}\n" for f in files))
    warned = []
    rows = read_rows(tmp_path / "u.csv", text_col=None, join=[tmp_path / "labels.csv"], warn=warned.append)
    assert [(r.columns["sex"], r.columns["view"]) for r in rows] == [("F", "PA")] * 3 and warned == []
    (tmp_path / "s.csv").write_text("image,subject_id\n" + "".join(f"{f},{i}\n" for i, f in enumerate(files)))
    rows = read_rows(tmp_path / "s.csv", text_col=None)  # the table's patient column, not the DICOM's hash
    assert "patient" in rows[0].columns and describe_split(rows, None, None) == "by patient ('subject_id')"


def test_dicom_headers_in_worker_processes_equal_one_process(dicom_folder, monkeypatch):
    from convirt_cli.torchfree.data import headers
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.processes import ordered_map

    one = read_rows(dicom_folder, text_col=None)
    monkeypatch.setattr(headers, "PARALLEL_FROM", 1)
    advanced = []
    # chunk 5 over 24 files: 5 chunks across 2 processes, the last one short
    assert ordered_map(dicom.header, [r.image for r in one], 2, chunk=5, advance=advanced.append) == [
        ({k: r.columns[k] for k in dicom.ALLOWED_TAGS}, r.image_check) for r in one]
    assert advanced == [5, 5, 5, 5, 4]
    two = read_rows(dicom_folder, text_col=None, workers=2)
    assert [(r.image, r.columns, r.image_check) for r in two] == [(r.image, r.columns, r.image_check) for r in one]
    assert one[0].columns["patient"] == dicom.patient_hash(f"{SECRETS['pid']}-0") and one[0].image_check == 96

def test_dicom_folder_pretrain_finetune_embed_leak_nothing(dicom_folder, tmp_path):
    runs = tmp_path / "runs"
    r = runner.invoke(app, ["pretrain", str(dicom_folder), "--objective", "simclr", "--model", "tiny",
                            "--max-steps", "2", "--batch-size", "4", "--image-size", "64", "--window", "minmax",
                            "--out", str(tmp_path / "run"), "--runs-dir", str(runs), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["split"] == "by patient ('patient')", summary["data"]  # the hashed id
    assert summary["data"]["kinds"] == "modality DX 24; view PA 24", summary["data"]  # what the data held
    assert json.loads((tmp_path / "run" / "model.json").read_text())["image"]["window"] == "minmax"
    r = runner.invoke(app, ["export", str(tmp_path / "run"), "--onnx"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run" / "onnx" / "preprocess.json").read_text())["window"] == "minmax"
    r = runner.invoke(app, ["embed", str(dicom_folder), "--model", str(tmp_path / "run" / "onnx"),
                            "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["retrieve", "--image", str(dicom_folder / "p0" / "000.dcm"), "--index",
                            str(tmp_path / "idx"), "--format", "html", "--out", str(tmp_path / "gallery.html")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["finetune", str(dicom_folder), "--label", "sex", "--init", str(tmp_path / "run"),
                            "--bootstrap", "0", "--no-save-models", "--out", str(tmp_path / "ft")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    r = runner.invoke(app, ["finetune", str(dicom_folder), "--task", "regression", "--label", "age", "--init",
                            str(tmp_path / "run"), "--bootstrap", "0", "--no-save-models", "--out", str(tmp_path / "age")])
    assert r.exit_code == 0, r.output + repr(r.exception)
    age = json.loads((tmp_path / "age" / "results.json").read_text())
    assert age["metric"] == "r2" and age["summary"]["usable"] == 24  # ages 30-80 from PatientAge
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 10
    for p in written:
        data = p.read_bytes()
        for what, value in SECRETS.items():
            assert value.encode() not in data, (p, what)
        assert b"St Elsewhere" not in data, p
