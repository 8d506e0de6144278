"""Image decoding shared by training and the torch-free fast path (PIL + numpy only, no torch).

Every image becomes 8-bit grayscale, resized on its shorter side to `size` and centre-cropped to a
square: the same pixels for pretrain eval, export parity and onnxruntime embedding. High-bit-depth images
(DICOM, 16-bit PNG, 16-bit / float TIFF) keep their depth until the model's window policy (window.py) maps
them to 8 bits once; nothing is clipped by a plain 8-bit conversion.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from convirt_cli.torchfree.window import lut_friendly, stored_to_uint8, to_uint8

PLAIN_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp"}
HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def open_gray(path: str | Path, window: str = "auto", draft: int | None = None) -> Image.Image:
    """Any supported file -> an 8-bit grey PIL image, the window policy applied once. `draft`: a JPEG may decode at
    a reduced scale that still covers this many pixels. Raises OSError/ValueError (DicomError names the reason)."""
    if Path(path).suffix.lower() not in PLAIN_SUFFIXES:
        from convirt_cli.torchfree import dicom  # pydicom only when a DICOM is met

        if dicom.is_dicom(path):
            return Image.fromarray(dicom.read_gray(path, window))
    with Image.open(path) as im:
        if im.mode in HIGH_BIT_MODES:
            values = np.asarray(ImageOps.exif_transpose(im))
            if lut_friendly(values):
                return Image.fromarray(stored_to_uint8(values, window))
            return Image.fromarray(to_uint8(values, window))
        if draft:
            im.draft("L", (draft, draft))
        im = ImageOps.exif_transpose(im).convert("L")
        if window != "auto":
            im = Image.fromarray(to_uint8(np.asarray(im), window, eight_bit=True))
        return im


def load_gray(path: str | Path, size: int, window: str = "auto") -> np.ndarray:
    """Path -> uint8 [size, size]: shorter side resized to `size`, centre crop."""
    im = open_gray(path, window, draft=size)
    return np.array(ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR), dtype=np.uint8)


def normalize_array(gray: np.ndarray, mean: list[float], std: list[float], channels: int) -> np.ndarray:
    """uint8 [B, S, S] -> float32 [B, C, S, S]: scaled to [0, 1], replicated, standardised."""
    x = gray.astype(np.float32)[:, None] / 255.0
    m = np.asarray(mean[:channels], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std[:channels], np.float32).reshape(1, -1, 1, 1)
    return (np.repeat(x, channels, axis=1) - m) / s
