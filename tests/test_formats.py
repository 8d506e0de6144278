"""The format table (torchfree/formats/): a format registered from this file alone is found in folders (by suffix
and by its magic bytes), checked, decoded for training and embedded by `convirt embed`; the named CT windows and
the slice policies by hand."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import COVID
from PIL import Image
from typer.testing import CliRunner

from convirt_cli.cli.main import app
from convirt_cli.torchfree.errors import ConvirtError
from convirt_cli.torchfree.formats import (
    Format,
    ImageError,
    formats,
    image_suffixes,
    register_format,
    unregister_format,
)
from convirt_cli.torchfree.formats.slices import parse_slices, pick_slices
from convirt_cli.torchfree.formats.window import CT_WINDOWS, parse_window, stored_to_uint8, to_uint8

runner = CliRunner()
TOY_MAGIC = b"TOY1"


# ---------------------------------------------------------------- a toy format, from this file alone

def write_toy(path: Path, pixels: np.ndarray) -> Path:
    """A made-up format: 'TOY1', height and width (big-endian uint16), then 8-bit pixels row by row."""
    path.write_bytes(TOY_MAGIC + struct.pack(">HH", *pixels.shape) + pixels.astype(np.uint8).tobytes())
    return path


def _toy_header(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:8]
    if len(head) < 8 or head[:4] != TOY_MAGIC:
        raise ImageError("not a toy image (no TOY1 marker)")
    return struct.unpack(">HH", head[4:])


def read_toy(path: Path, window: str, slice: int | None, draft: int | None) -> np.ndarray:
    h, w = _toy_header(path)
    values = np.frombuffer(path.read_bytes()[8:8 + h * w], np.uint8)
    if values.size < h * w:
        raise ImageError(f"truncated toy image ({values.size} of {h * w} pixels)")
    return to_uint8(values.reshape(h, w), window, eight_bit=True)


@pytest.fixture
def toy_format():
    fmt = register_format(Format("toy", (".toy",), read_toy, check=lambda p: min(_toy_header(p)),
                                 magic=lambda p: p.is_file() and p.read_bytes()[:4] == TOY_MAGIC))
    yield fmt
    unregister_format("toy")


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    """Three .toy files and one without a suffix (found by its marker), their PNG twins, and a broken .toy."""
    tmp = tmp_path_factory.mktemp("toys")
    (tmp / "toys").mkdir()
    (tmp / "pngs").mkdir()
    sources = sorted((COVID.parent / "images").glob("*.png"))[:4]
    for i, (name, src) in enumerate(zip(("a.toy", "b.toy", "c.TOY", "scan0001"), sources)):
        with Image.open(src) as im:
            pixels = np.asarray(im.convert("L").resize((72, 64)))
        write_toy(tmp / "toys" / name, pixels)
        Image.fromarray(pixels).save(tmp / "pngs" / f"{i}.png")
    (tmp / "toys" / "broken.toy").write_bytes(b"TOY?" + bytes(100))
    (tmp / "toys" / "notes.json").write_text("{}")
    return tmp


def test_a_format_registered_in_a_test_is_read_checked_trained_on_and_embedded(toy_format, toys, tiny_export,
                                                                                tmp_path):
    from convirt_cli.torch.data.dataset import PairDataset
    from convirt_cli.torchfree.data.readers import read_rows
    from convirt_cli.torchfree.data.validate import validate_rows
    from convirt_cli.torchfree.imageio import load_gray

    assert [f.name for f in formats()] == ["dicom", "nifti", "plain", "toy"] and ".toy" in image_suffixes()
    rows = read_rows(toys / "toys", text_col=None)
    assert [r.image.name for r in rows] == ["a.toy", "b.toy", "broken.toy", "c.TOY", "scan0001"]
    v = validate_rows(rows, need_text=False)
    assert [r.image.name for r in v.usable] == ["a.toy", "b.toy", "c.TOY", "scan0001"] and v.min_side == 64
    assert v.reasons() == {"not a toy image (no TOY1 marker)": 1}
    twins = [toys / "pngs" / f"{i}.png" for i in range(4)]
    data = PairDataset(v.usable, 48, with_text=False)  # the training decode
    for i, twin in enumerate(twins):
        assert np.array_equal(data.image(i), load_gray(twin, 48)), i
    r = runner.invoke(app, ["embed", str(toys / "toys"), "--model", str(tiny_export), "--out", str(tmp_path / "idx")])
    assert r.exit_code == 0, r.output
    assert "(1 skipped)" in r.output and "not a toy image" in " ".join(r.output.split()), r.output
    (tmp_path / "twins.txt").write_text("".join(f"{p}\n" for p in twins))
    r = runner.invoke(app, ["embed", str(tmp_path / "twins.txt"), "--model", str(tiny_export), "--out",
                            str(tmp_path / "twins")])
    assert r.exit_code == 0, r.output
    items = [json.loads(x) for x in (tmp_path / "idx" / "items.jsonl").read_text().splitlines()]
    assert [Path(it["path"]).name for it in items] == ["a.toy", "b.toy", "c.TOY", "scan0001"]
    assert np.allclose(np.load(tmp_path / "idx" / "embeddings.npy"), np.load(tmp_path / "twins" / "embeddings.npy"),
                       atol=1e-6)


def test_without_the_registration_the_toy_files_are_no_images(toys):
    from convirt_cli.torchfree.data.readers import read_rows

    with pytest.raises(ConvirtError, match="no images inside"):
        read_rows(toys / "toys", text_col=None)


# ---------------------------------------------------------------- named CT windows, by hand

def test_named_ct_windows_map_hounsfield_units_by_hand():
    assert CT_WINDOWS == {"lung": (-600, 1500), "mediastinum": (50, 350), "soft-tissue": (40, 400),
                          "bone": (480, 2500), "brain": (40, 80)}
    assert parse_window("lung") == ("fixed", (-600.0, 1500.0)) and parse_window(" bone ") == ("fixed", (480.0, 2500.0))
    # DICOM's linear VOI function, by hand: y = (x - (C - 0.5)) / (W - 1) + 0.5, clipped to [0, 1], times 255
    # lung C -600 W 1500: -1350 -> -749.5 / 1499 + 0.5 = 0; -600 -> 0.5 / 1499 + 0.5 = 0.50033 -> 127.6 -> 128;
    # +150 -> 750.5 / 1499 + 0.5 = 1.0007 -> 255; air (-1000) -> -399.5 / 1499 + 0.5 = 0.2335 -> 59.5 -> 60
    hu = np.array([[-2000.0, -1350.0, -1000.0, -600.0, 150.0, 3000.0]])
    assert to_uint8(hu, "lung").tolist() == [[0, 0, 60, 128, 255, 255]]
    # brain C 40 W 80: 0 -> 0; 40 -> 0.5 / 79 + 0.5 -> 129.1 -> 129; 60 -> 20.5 / 79 + 0.5 = 0.7595 -> 193.7 -> 194
    assert to_uint8(np.array([[0.0, 40.0, 60.0, 80.0]]), "brain").tolist() == [[0, 129, 194, 255]]
    for name, (c, w) in CT_WINDOWS.items():  # each window's edges: C - W/2 black, C + W/2 white
        assert to_uint8(np.array([[c - w / 2, c + w / 2]]), name).tolist() == [[0, 255]], name
    # the lookup-table path of 12-bit CT (stored + intercept -1024) gives the same, a flat slice included
    stored = np.array([[0, 274, 424, 1174, 1500, 4095]], np.uint16)
    assert np.array_equal(stored_to_uint8(stored, "lung", intercept=-1024.0), to_uint8(stored - 1024.0, "lung"))
    assert np.array_equal(stored_to_uint8(np.full((4, 4), 24, np.uint16), "lung", intercept=-1024.0),
                          np.full((4, 4), 60, np.uint8))


def test_named_windows_parse_wherever_window_is_accepted(tmp_path):
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import FinetuneConfig, PretrainConfig, ShardConfig
    from convirt_cli.torchfree.registry import ImageTowerConfig

    assert resolve(PretrainConfig, data=tmp_path, window="lung").window == "lung"
    assert resolve(ShardConfig, data=tmp_path, out=tmp_path, window="soft-tissue").window == "soft-tissue"
    assert resolve(FinetuneConfig, data=tmp_path, window="mediastinum").window == "mediastinum"
    assert ImageTowerConfig(name="resnet18", window="brain").window == "brain"  # model.json / a preset
    with pytest.raises(ConvirtError, match=r"^--window lungs: window 'lungs': expected one of .*lung, mediastinum"):
        resolve(PretrainConfig, data=tmp_path, window="lungs")


# ---------------------------------------------------------------- slice policies, by hand

def test_slice_policies_pick_by_hand(tmp_path):
    from convirt_cli.cli.settings import resolve
    from convirt_cli.torchfree.config import EmbedConfig, RetrieveConfig

    assert pick_slices("middle", 8) == [4] and pick_slices("middle", 7) == [3] and pick_slices("middle", 1) == [0]
    assert pick_slices("all", 8) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert pick_slices("every:3", 8) == [0, 3, 6] and pick_slices("every:8", 8) == [0] and pick_slices("every:1", 3) == [0, 1, 2]
    assert parse_slices(" every:4 ") == ("every", 4)
    for bad in ("every:0", "every", "every:x", "first", "all:2", "middle:1", ""):
        with pytest.raises(ValueError, match="expected one of middle, all, every:N"):
            parse_slices(bad)
    assert resolve(EmbedConfig, input="x", out=tmp_path, slices="all").slices == "all"
    assert resolve(RetrieveConfig).slices == "middle"
    with pytest.raises(ConvirtError, match=r"^--slices every:0: slices 'every:0': expected one of"):
        resolve(EmbedConfig, input="x", out=tmp_path, slices="every:0")
