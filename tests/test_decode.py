"""serve/decode.py: the decode side of encoding images gives exactly the pixels the one-at-a-time path gives, in
threads and in worker processes, names what does not decode, and leaves no shared memory behind."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt_cli.torchfree.imageio import load_gray, normalize_array
from convirt_cli.torchfree.serve.decode import SHM_PREFIX, PixelBatches, pixel_tables

PRE = {"image_size": 24, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channels": 3,
       "window": "auto"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """PNGs, JPEGs larger than the model input (the draft path), a 16-bit PNG and one broken file."""
    tmp = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(0)
    out = []
    for i in range(9):
        h, w = 40 + 7 * i, 64 + 5 * i
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))
        p = tmp / (f"{i}.png" if i % 2 else f"{i}.jpg")
        im.save(p)
        out.append(p)
    Image.fromarray(rng.integers(0, 4096, (50, 30), dtype=np.uint16)).save(tmp / "deep.png")
    (tmp / "broken.png").write_bytes(b"not an image")
    return out[:4] + [tmp / "broken.png"] + out[4:] + [tmp / "deep.png"]


def test_pixel_tables_match_normalize_array_bit_for_bit():
    gray = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    tables = pixel_tables(PRE["mean"], PRE["std"], 3)
    ref = normalize_array(gray, PRE["mean"], PRE["std"], 3)
    assert np.array_equal(np.stack([t[gray[0]] for t in tables])[None], ref)


@pytest.mark.parametrize("processes", [False, True])
def test_batches_hold_the_one_at_a_time_pixels_in_order(files, processes):
    ok_files = [f for f in files if f.name != "broken.png"]
    ref = normalize_array(np.stack([load_gray(f, 24) for f in ok_files]), PRE["mean"], PRE["std"], 3)
    got, oks, bads = [], [], []
    with PixelBatches(files, PRE, 4, 2, processes=processes) as batches:
        assert batches.processes is processes
        for start, x, ok, bad in batches:
            got.append(np.array(x))
            oks += [start + i for i in ok]
            bads += [(start + i, r) for i, r in bad]
    assert np.array_equal(np.concatenate(got), ref)
    assert oks == [i for i, f in enumerate(files) if f.name != "broken.png"]
    assert [i for i, _ in bads] == [4] and "UnidentifiedImageError" in bads[0][1]
    if os.path.isdir("/dev/shm"):
        assert not [n for n in os.listdir("/dev/shm") if n.startswith(SHM_PREFIX + str(os.getpid()))]


def test_encode_images_same_for_any_worker_count(files):
    from convirt_cli.torchfree.serve.encoder import encode_images

    def run(x):
        return x.reshape(len(x), -1)[:, :8] + 1.0

    seen = []
    one = encode_images(files, PRE, run, 8, batch_size=3, workers=1)
    two = encode_images(files, PRE, run, 8, batch_size=3, on_progress=seen.append, workers=2)
    assert np.array_equal(one[0], two[0]) and one[1:] == two[1:]
    assert sum(seen) == len(files)
