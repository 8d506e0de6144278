"""NIfTI volumes: axial slices in RAS order against nibabel's own reorientation, Hounsfield units through the
scaling and a named CT window, every bad kind of file a counted skip or one line, and a CT volume end to end
(pretrain --objective dino, export, embed, retrieve --image, shard) next to its DICOM twin, which gives the same
pixels and embeddings through torch and onnxruntime; no header text reaches an output."""

from __future__ import annotations

import gzip
import json
import sys
from collections import Counter

import numpy as np
import pytest
from conftest import COVID
from PIL import Image
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import ImageError, read_gray, volume_info

nib = pytest.importorskip("nibabel")
from test_dicom import write_dicom  # the DICOM twin, written as test_dicom writes DICOMs

runner = CliRunner()
SECRETS = {"descrip": b"Doe^Jane MRN-0042917", "aux_file": b"Jane Doe", "intent_name": b"J.Doe", "db_name": b"MRN-42"}
SLICES, SIDE = 8, 64


def ct_slices(first: int, n: int = SLICES) -> np.ndarray:
    """[n, SIDE, SIDE] Hounsfield units (-1000 .. 530) from covid-cxr images: what a viewer shows, slice by slice."""
    paths = sorted((COVID.parent / "images").glob("*.png"))[first:first + n]
    grey = [np.asarray(Image.open(p).convert("L").resize((SIDE, SIDE)), np.int64) for p in paths]
    return np.stack(grey) * 6 - 1000


def write_volume(path, hu: np.ndarray, axes: str = "RAS", slope: float = 1.0):
    """hu [slices, H, W] as shown -> a NIfTI stored (hu + 1024) / slope with scl_slope / scl_inter, its voxel axes
    in the orientation `axes` (nibabel's reorientation: independent of the reader), secrets in its text fields."""
    ras = np.stack([s.T[::-1, ::-1] for s in hu], axis=-1)  # a viewer's axial slice -> RAS voxel order
    img = nib.Nifti1Image(((ras + 1024) / slope).astype(np.int16), np.diag([0.7, 0.7, 2.5, 1.0]))
    if axes != "RAS":
        ornt = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                               nib.orientations.axcodes2ornt(tuple(axes)))
        img = img.as_reoriented(ornt)
    img.header.set_slope_inter(slope, -1024)
    for field, value in SECRETS.items():
        img.header[field] = value
    nib.save(img, str(path))
    return path


def lung(hu: np.ndarray) -> np.ndarray:
    """The lung window (C -600, W 1500), by DICOM's linear formula written out."""
    return np.rint(np.clip((hu + 600.5) / 1499 + 0.5, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------- the reader

@pytest.mark.parametrize("axes", ["RAS", "LPS", "PIR"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_slices_are_axial_in_ras_order_as_a_viewer_shows_them(tmp_path, axes, suffix):
    hu = ct_slices(0, 5)[:, :48, :40]  # not square: a transposed slice cannot pass
    path = write_volume(tmp_path / f"v{suffix}", hu, axes, slope=2.0)
    assert nib.aff2axcodes(nib.load(path).affine) == tuple(axes)
    assert volume_info(path) == (5, 40)
    canonical = nib.as_closest_canonical(nib.load(path)).get_fdata()  # nibabel's own reorientation, scaled
    for k in range(5):
        assert np.array_equal(canonical[:, :, k][::-1, ::-1].T, hu[k] // 2 * 2), k  # stored / 2 loses the odd unit
        assert np.array_equal(read_gray(path, "lung", k), lung(hu[k] // 2 * 2)), k
    assert np.array_equal(read_gray(path, "lung"), read_gray(path, "lung", 2))  # no slice: the middle one


@pytest.fixture(scope="module")
def bad_volumes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_nifti")
    hu = ct_slices(20, 4)
    good = write_volume(tmp / "good.nii", hu)
    nib.save(nib.Nifti1Image(np.zeros((SIDE, SIDE, 4, 3), np.int16), np.eye(4)), str(tmp / "fmri.nii.gz"))
    nib.save(nib.Nifti1Image(hu[0].T[::-1, ::-1].astype(np.int16), np.eye(4)), str(tmp / "plane2d.nii.gz"))
    raw = good.read_bytes()
    (tmp / "cut.nii").write_bytes(raw[: len(raw) - 5000])
    (tmp / "cut.nii.gz").write_bytes(gzip.compress(raw)[:3000])
    (tmp / "junk.nii").write_bytes(b"not a nifti at all" * 30)
    return tmp


REASONS = {"fmri.nii.gz": "4-D NIfTI (64x64x4x3): only 3-D volumes are read",
           "cut.nii": "truncated NIfTI", "junk.nii": "unreadable NIfTI header",
           "cut.nii.gz": "unreadable NIfTI voxels (truncated or damaged"}


def test_each_bad_volume_is_one_reason(bad_volumes):
    for name, reason in REASONS.items():
        with pytest.raises(ImageError) as e:
            read_gray(bad_volumes / name) if name == "cut.nii.gz" else volume_info(bad_volumes / name)
        assert str(e.value).startswith(reason), (name, str(e.value))
    assert volume_info(bad_volumes / "plane2d.nii.gz") == (1, SIDE)  # a 2-D NIfTI: one image
    assert np.array_equal(read_gray(bad_volumes / "plane2d.nii.gz", "minmax", 0),
                          read_gray(bad_volumes / "good.nii", "minmax", 0))


def test_bad_volumes_are_counted_skips_in_embed(bad_volumes, tiny_export, tmp_path):
    r = runner.invoke(app, ["embed", str(bad_volumes), "--model", str(tiny_export), "--slices", "all", "--out",
                            str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    items = [json.loads(x) for x in (tmp_path / "idx" / "items.jsonl").read_text().splitlines()]
    assert [(it["path"].rsplit("/", 1)[1], it["slice"]) for it in items] == [
        ("good.nii", 0), ("good.nii", 1), ("good.nii", 2), ("good.nii", 3), ("plane2d.nii.gz", 0)]
    skipped = json.loads((tmp_path / "idx" / "index.json").read_text())["skipped"]
    # the cut .nii.gz passes the header check: its four slices fail when decoded
    assert Counter(s["path"].rsplit("/", 1)[1] for s in skipped) == dict.fromkeys(REASONS, 1) | {"cut.nii.gz": 4}
    for s in skipped:
        assert REASONS[s["path"].rsplit("/", 1)[1]] in s["reason"], s


def test_without_nibabel_a_nifti_is_one_line_naming_the_extra(bad_volumes, monkeypatch, tmp_path):
    from convirt_cli.torchfree.formats import nifti

    monkeypatch.setitem(sys.modules, "nibabel", None)  # import nibabel fails
    monkeypatch.setattr(nifti, "_last", {})
    with pytest.raises(ConvirtError, match=r"NIfTI files need nibabel: pip install 'convirt\[nifti\]'"):
        read_gray(bad_volumes / "good.nii")
    r = runner.invoke(app, ["pretrain", str(bad_volumes), "--objective", "dino", "--out", str(tmp_path / "run")])
    assert isinstance(r.exception, ConvirtError) and "pip install 'convirt[nifti]'" in str(r.exception), r.output


# ---------------------------------------------------------------- a CT volume end to end, beside its DICOM twin

@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    """Two CT volumes of 8 axial slices (one .nii.gz in RAS, one .nii in LPS, as dcm2niix writes) and slice 4 of
    the first as a 12-bit DICOM whose own window (soft tissue) `auto` would use."""
    tmp = tmp_path_factory.mktemp("ct")
    (tmp / "vols").mkdir()
    hu = ct_slices(30), ct_slices(40)
    write_volume(tmp / "vols" / "chest0.nii.gz", hu[0])
    write_volume(tmp / "vols" / "chest1.nii", hu[1], "LPS")
    write_dicom(tmp / "slice4.dcm", hu[0][4] + 1024, bits=12, slope=1, intercept=-1024, window=(40, 400))
    return tmp, hu


def test_a_ct_dicom_and_its_nifti_slice_give_the_same_lung_window_pixels(ct):
    tmp, hu = ct
    assert np.array_equal(read_gray(tmp / "slice4.dcm", "lung"), lung(hu[0][4]))
    assert np.array_equal(read_gray(tmp / "vols" / "chest0.nii.gz", "lung", 4), lung(hu[0][4]))
    assert not np.array_equal(read_gray(tmp / "slice4.dcm", "auto"), lung(hu[0][4]))  # the file's own window


def test_ct_volumes_pretrain_export_embed_retrieve_and_leak_nothing(ct, tmp_path, monkeypatch):
    tmp, _ = ct
    monkeypatch.setenv("CONVIRT_PLOT", "false")  # no loss plot: matplotlib would cost a second or two
    vols, run = tmp / "vols", tmp_path / "run"
    r = runner.invoke(app, ["pretrain", str(vols), "--objective", "dino", "--slices", "all", "--window", "lung",
                            "--max-steps", "2", "--batch-size", "4", "--val-fraction", "0", "--out", str(run),
                            "--runs-dir", str(tmp_path / "runs"), "--device", "cpu"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["found"] == 16 and summary["data"]["usable"] == 16, summary["data"]
    assert json.loads((run / "model.json").read_text())["image"]["window"] == "lung"
    assert json.loads((run / "config.json").read_text())["slices"] == "all"
    r = runner.invoke(app, ["export", str(run), "--onnx"])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "onnx" / "preprocess.json").read_text())["window"] == "lung"
    (tmp_path / "twins.txt").write_text(f"{tmp / 'slice4.dcm'}\n{vols / 'chest0.nii.gz'}\n")
    embs = {}
    for name, src, backend, model in (("vols", vols, "onnx", run / "onnx"), ("twins", tmp_path / "twins.txt", "onnx",
                                      run / "onnx"), ("twins", tmp_path / "twins.txt", "torch", run)):
        out = tmp_path / f"{name}-{backend}"
        r = runner.invoke(app, ["embed", str(src), "--model", str(model), "--backend", backend, "--out", str(out)]
                          + (["--slices", "all"] if name == "vols" else []))
        assert r.exit_code == 0, r.output
        embs[name, backend] = np.load(out / "embeddings.npy")
    items = [json.loads(x) for x in (tmp_path / "vols-onnx" / "items.jsonl").read_text().splitlines()]
    assert [(it["path"].rsplit("/", 1)[1], it["slice"]) for it in items] == [
        (f"chest{v}.nii{'.gz' if v == 0 else ''}", k) for v in (0, 1) for k in range(SLICES)]
    twins = [json.loads(x) for x in (tmp_path / "twins-onnx" / "items.jsonl").read_text().splitlines()]
    assert [it.get("slice") for it in twins] == [None, 4]  # --slices middle (the default)
    for backend in ("torch", "onnx"):  # the DICOM and the NIfTI slice: the same pixels, so the same embedding
        assert np.allclose(embs["twins", backend][0], embs["twins", backend][1], atol=1e-5), backend
    assert np.allclose(embs["twins", "onnx"][1], embs["vols", "onnx"][4], atol=1e-5)
    assert np.allclose(embs["twins", "torch"], embs["twins", "onnx"], atol=2e-3)
    _retrieve_slices(vols, tmp_path / "vols-onnx", tmp_path)
    _shard_slices(vols, tmp_path)
    for p in (f for f in tmp_path.rglob("*") if f.is_file()):
        data = p.read_bytes()
        for value in SECRETS.values():
            assert value not in data, (p, value)


def _retrieve_slices(vols, index, tmp_path):
    """retrieve --image of a volume: its middle slice, or each slice the policy picks; each finds itself first."""
    r = runner.invoke(app, ["retrieve", "--image", str(vols / "chest1.nii"), "--index", str(index), "-k", "2",
                            "--format", "jsonl"])
    assert r.exit_code == 0, r.output
    hits = [json.loads(x) for x in r.stdout.splitlines()]
    assert hits[0]["query_slice"] == 4 and hits[0]["slice"] == 4 and hits[0]["path"].endswith("chest1.nii")
    assert hits[0]["score"] > 0.999
    r = runner.invoke(app, ["retrieve", "--image", str(vols / "chest0.nii.gz"), "--index", str(index), "-k", "1",
                            "--format", "csv", "--slices", "every:3"])
    assert r.exit_code == 0, r.output
    rows = [line.split(",") for line in r.stdout.splitlines()[1:]]
    assert [(row[-2], row[-1]) for row in rows] == [("0", "0"), ("3", "3"), ("6", "6")]
    r = runner.invoke(app, ["retrieve", "--image", str(vols / "chest0.nii.gz"), "--index", str(index), "--format",
                            "html", "--out", str(tmp_path / "gallery.html")])
    assert r.exit_code == 0 and "chest0.nii.gz slice 4" in (tmp_path / "gallery.html").read_text()


def _shard_slices(vols, tmp_path):
    r = runner.invoke(app, ["shard", str(vols), "--out", str(tmp_path / "shards"), "--no-text", "--slices", "every:4",
                            "--window", "lung", "--val-fraction", "0", "--workers", "1"])
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "shards" / "shards.json").read_text())
    assert meta["slices"] == "every:4" and meta["splits"]["train"]["count"] == 4, meta
