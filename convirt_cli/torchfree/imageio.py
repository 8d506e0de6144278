"""Model input pixels, shared by training and the torch-free fast path (PIL + numpy only, no torch).

Every image, of any registered format (formats/), becomes 8-bit grayscale through the model's window policy,
resized on its shorter side to `size` and centre-cropped to a square: the same pixels for pretrain, export parity
and onnxruntime embedding. A query may also be a file's bytes (an upload: a file without a name, so its content
says its format) or decoded pixels.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from convirt_cli.torchfree.formats import read_gray

# an image: a file's path, (path, slice index) for a slice of a volume, a file's bytes, or decoded pixels
ImageSource = str | Path | tuple[str | Path, int | None] | bytes | np.ndarray


def open_gray(path: str | Path, window: str = "auto", draft: int | None = None,
              slice: int | None = None) -> Image.Image:
    """Any supported file (`slice` of a volume) -> an 8-bit grey PIL image, the window policy applied once.
    `draft`: a JPEG may decode at a reduced scale that still covers this many pixels. Raises OSError/ValueError
    (ImageError names the reason)."""
    return Image.fromarray(read_gray(path, window, slice, draft))


def load_gray(src: str | Path | bytes | np.ndarray, size: int, window: str = "auto",
              slice: int | None = None) -> np.ndarray:
    """A file (path; `slice` of a volume), a file's bytes or decoded pixels -> uint8 [size, size]: shorter side
    resized to `size`, centre crop."""
    if isinstance(src, np.ndarray):
        im = gray_from_array(src, window)
    elif isinstance(src, (bytes, bytearray, memoryview)):
        im = Image.fromarray(gray_from_bytes(bytes(src), window, draft=size))
    else:
        im = open_gray(src, window, draft=size, slice=slice)
    return np.array(ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR), dtype=np.uint8)


def gray_from_bytes(data: bytes, window: str = "auto", draft: int | None = None) -> np.ndarray:
    """A file's bytes -> uint8 [H, W], read as that file is: the format table tells it by content (a DICOM by its
    marker; anything else through Pillow: PNG, JPEG, 16-bit PNG/TIFF ...). The bytes pass through a temporary file,
    deleted at once, because every reader takes a path; a reader's message never names that file (a server would
    hand it to its client)."""
    with tempfile.NamedTemporaryFile(prefix="convirt-upload-") as f:
        f.write(data)
        f.flush()
        try:
            return read_gray(f.name, window, None, draft)
        except Exception as e:
            if f.name not in str(e):
                raise
            message = str(e).replace(f"'{f.name}'", "the bytes").replace(f.name, "the bytes")
            try:
                renamed = type(e)(message)
            except Exception:  # noqa: BLE001 - an exception type that takes other arguments
                renamed = ValueError(f"{type(e).__name__}: {message}")
            raise renamed from None


def gray_from_array(pixels: np.ndarray, window: str = "auto") -> Image.Image:
    """Decoded pixels -> an 8-bit grey image as a file of them gives: uint8 [H, W] or [H, W, 3|4] (RGB(A), made
    grey) as an 8-bit file; any other dtype [H, W] (16-bit, float) as a high-bit-depth one, through the window."""
    from convirt_cli.torchfree.formats.window import lut_friendly, stored_to_uint8, to_uint8

    a = np.asarray(pixels)
    if a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        im = Image.fromarray(a).convert("L")
        return im if window == "auto" else Image.fromarray(to_uint8(np.asarray(im), window, eight_bit=True))
    if a.ndim != 2 or a.dtype.kind not in "uif" or not a.size:
        raise ValueError(f"pixels of shape {a.shape} and dtype {a.dtype}: expected a grey [H, W] array "
                         "(or uint8 [H, W, 3])")
    if not np.isfinite(a).all():
        raise ValueError("pixels hold NaN or infinity")
    return Image.fromarray(stored_to_uint8(a, window) if lut_friendly(a) else to_uint8(a, window))


def normalize_array(gray: np.ndarray, mean: list[float], std: list[float], channels: int) -> np.ndarray:
    """uint8 [B, S, S] -> float32 [B, C, S, S]: scaled to [0, 1], replicated, standardised."""
    x = gray.astype(np.float32)[:, None] / 255.0
    m = np.asarray(mean[:channels], np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std[:channels], np.float32).reshape(1, -1, 1, 1)
    return (np.repeat(x, channels, axis=1) - m) / s
