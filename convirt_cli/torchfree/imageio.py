"""Image decoding shared by training and the torch-free fast path (PIL + numpy only, no torch).

Every image becomes 8-bit grayscale, resized on its shorter side to `size` and centre-cropped to a
square: the same pixels for pretrain eval, export parity and onnxruntime embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def load_gray(path: str | Path, size: int) -> np.ndarray:
    """Path -> uint8 [size, size]. Raises OSError/ValueError for unreadable files."""
    with Image.open(path) as im:
        im.draft("L", (size, size))  # JPEG: decode at reduced scale when possible
        im = ImageOps.exif_transpose(im).convert("L")
        return np.array(ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR), dtype=np.uint8)


def normalize_array(gray: np.ndarray, mean: list[float], std: list[float], channels: int) -> np.ndarray:
    """uint8 [B, S, S] -> float32 [B, C, S, S]: scaled to [0, 1], replicated, standardised."""
    x = gray.astype(np.float32)[:, None] / 255.0
    m = np.asarray(mean[:channels], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std[:channels], np.float32).reshape(1, -1, 1, 1)
    return (np.repeat(x, channels, axis=1) - m) / s
