"""Model input pixels, shared by training and the torch-free fast path (PIL + numpy only, no torch).

Every image, of any registered format (formats/), becomes 8-bit grayscale through the model's window policy,
resized on its shorter side to `size` and centre-cropped to a square: the same pixels for pretrain, export parity
and onnxruntime embedding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from convirt_cli.torchfree.formats import read_gray


def open_gray(path: str | Path, window: str = "auto", draft: int | None = None,
              slice: int | None = None) -> Image.Image:
    """Any supported file (`slice` of a volume) -> an 8-bit grey PIL image, the window policy applied once.
    `draft`: a JPEG may decode at a reduced scale that still covers this many pixels. Raises OSError/ValueError
    (ImageError names the reason)."""
    return Image.fromarray(read_gray(path, window, slice, draft))


def load_gray(path: str | Path, size: int, window: str = "auto", slice: int | None = None) -> np.ndarray:
    """Path -> uint8 [size, size]: shorter side resized to `size`, centre crop."""
    im = open_gray(path, window, draft=size, slice=slice)
    return np.array(ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR), dtype=np.uint8)


def normalize_array(gray: np.ndarray, mean: list[float], std: list[float], channels: int) -> np.ndarray:
    """uint8 [B, S, S] -> float32 [B, C, S, S]: scaled to [0, 1], replicated, standardised."""
    x = gray.astype(np.float32)[:, None] / 255.0
    m = np.asarray(mean[:channels], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std[:channels], np.float32).reshape(1, -1, 1, 1)
    return (np.repeat(x, channels, axis=1) - m) / s
