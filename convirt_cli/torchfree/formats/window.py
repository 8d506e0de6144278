"""Windowing: a high-bit-depth grey image (12-16-bit DICOM, NIfTI, 16-bit PNG/TIFF) -> the model's 8-bit input range.

One policy per model, chosen at pretrain time and carried by the run (model.json) and the export
(preprocess.json), so training, torch embedding and the onnxruntime path see the same pixels:
  auto             the file's own window (DICOM window centre/width or VOI LUT) when it has one; 8-bit images as
                   they are; other high-bit images the 0.5-99.5 percentile range
  minmax           the image's own minimum and maximum (RAD-DINO's conversion)
  percentile:LO,HI those percentiles of the image
  fixed:C,W        one window for every image (centre C, width W in the file's units after the modality LUT)
  lung, mediastinum, soft-tissue, bone, brain
                   the CT windows viewers preset (CT_WINDOWS): fixed windows in Hounsfield units
Values outside the window clip to black / white.
"""

from __future__ import annotations

import numpy as np

from convirt_cli.torchfree.formats.table import ImageError

# name -> (centre, width) in HU, as the common viewers preset them (the file's units after the modality LUT)
CT_WINDOWS: dict[str, tuple[float, float]] = {"lung": (-600.0, 1500.0), "mediastinum": (50.0, 350.0),
                                              "soft-tissue": (40.0, 400.0), "bone": (480.0, 2500.0),
                                              "brain": (40.0, 80.0)}
POLICIES = ("auto", "minmax", "percentile:LO,HI", "fixed:C,W", *CT_WINDOWS)


class FlatImage(ImageError):
    """Every pixel has the same value: a window would show it all black; skipped, never fed as a black image."""
AUTO_PERCENTILES = (0.5, 99.5)
_SAMPLE = 512  # percentiles from a strided sample of at most ~512 x 512 pixels: a 2048^2 image costs 1/16


def parse_window(spec: str) -> tuple[str, tuple[float, float]]:
    """'percentile:1,99' -> ('percentile', (1.0, 99.0)); 'lung' -> ('fixed', (-600.0, 1500.0)). ValueError with the
    accepted forms otherwise."""
    kind, _, args = spec.strip().partition(":")
    if kind in CT_WINDOWS and not args:
        return "fixed", CT_WINDOWS[kind]
    if kind in ("auto", "minmax") and not args:
        return kind, (0.0, 0.0)
    if kind in ("percentile", "fixed") and args:
        try:
            a, b = (float(x) for x in args.split(","))
        except ValueError:
            pass
        else:
            if kind == "percentile" and 0 <= a < b <= 100:
                return kind, (a, b)
            if kind == "fixed" and b > 0:
                return kind, (a, b)
    raise ValueError(f"window '{spec}': expected one of {', '.join(POLICIES)} "
                     "(percentiles 0 <= LO < HI <= 100, width W > 0)")


def dicom_linear(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1 'LINEAR' VOI function to [0, 1]: the window a viewer shows."""
    if width <= 1:
        return (values > center - 0.5).astype(np.float32)
    y = (values - (center - 0.5)) / (width - 1) + 0.5
    return np.clip(y, 0.0, 1.0).astype(np.float32)


def _range(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:  # a flat image: black, never NaN
        return np.zeros(values.shape, np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _sample(values: np.ndarray) -> np.ndarray:
    step = max(1, max(values.shape) // _SAMPLE)
    return values[::step, ::step]


def to_unit(values: np.ndarray, spec: str, file_window: tuple[float, float] | None = None,
            eight_bit: bool = False, sample: np.ndarray | None = None) -> np.ndarray:
    """Grey values [H, W] (after the modality LUT) -> float32 in [0, 1] under policy `spec`.

    file_window: the file's (centre, width) when it carries one; eight_bit: the image was stored in 8 bits;
    sample: the image's values to take percentiles from, when `values` are a lookup table's levels."""
    kind, (a, b) = parse_window(spec)
    values = np.asarray(values, dtype=np.float64)
    if kind == "auto":
        if file_window is not None:
            return dicom_linear(values, *file_window)
        if eight_bit:
            return (np.clip(values, 0, 255) / 255.0).astype(np.float32)
        kind, (a, b) = "percentile", AUTO_PERCENTILES
    if kind == "fixed":
        return dicom_linear(values, a, b)
    lo, hi = float(values.min()), float(values.max())  # the image's own range decides the window from here on
    if lo == hi:
        raise FlatImage(f"flat image (every pixel {lo:g}): nothing to window")
    if kind == "percentile":
        lo, hi = (float(v) for v in np.percentile(_sample(values) if sample is None else sample, [a, b]))
    return _range(values, lo, hi)


def to_uint8(values: np.ndarray, spec: str, file_window: tuple[float, float] | None = None,
             eight_bit: bool = False, invert: bool = False, sample: np.ndarray | None = None) -> np.ndarray:
    """The one windowing step: [H, W] grey values -> uint8 [H, W]; `invert` for MONOCHROME1 (white = low)."""
    unit = to_unit(values, spec, file_window, eight_bit, sample)
    if invert:
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


def stored_to_uint8(stored: np.ndarray, spec: str, file_window: tuple[float, float] | None = None,
                    eight_bit: bool = False, invert: bool = False, slope: float = 1.0,
                    intercept: float = 0.0) -> np.ndarray:
    """The same result as to_uint8(stored * slope + intercept, ...), through a lookup table over the stored
    integer levels: one indexing pass instead of several float passes over a 2048 x 2048 image."""
    lo, hi = int(stored.min()), int(stored.max())
    kind = parse_window(spec)[0]
    if lo == hi and not (kind == "fixed" or (kind == "auto" and (file_window or eight_bit))):
        raise FlatImage(f"flat image (every pixel {lo * slope + intercept:g}): nothing to window")
    levels = np.arange(lo, hi + 1, dtype=np.float64) * slope + intercept
    # only percentiles look at the pixels themselves (the levels say nothing of how often each occurs)
    percentiles = kind == "percentile" or (kind == "auto" and file_window is None and not eight_bit)
    sample = _sample(stored).astype(np.float64) * slope + intercept if percentiles else None
    lut = to_uint8(levels, spec, file_window, eight_bit, invert, sample=sample)
    if stored.dtype.kind == "i":
        index = stored.astype(np.int32) - lo
    else:  # unsigned: stored - lo >= 0 in its own type
        index = stored - stored.dtype.type(lo) if lo else stored
    return np.take(lut, index)  # twice as fast as lut[index] on a 256 x 256 image


def lut_friendly(stored: np.ndarray) -> bool:
    """Integer pixels whose range fits a small table (12-16-bit medical images do)."""
    if stored.dtype.kind not in "ui" or stored.ndim != 2:
        return False
    return int(stored.max()) - int(stored.min()) < (1 << 17)
