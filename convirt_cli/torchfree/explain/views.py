"""An image as explain sees it: the windowed grey picture at full resolution, the model's square (shorter side
resized, centre crop: imageio.load_gray), and the geometry between the two, so a map on the model's square can be
drawn over the picture and its peak named in the file's own pixels."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Crop:
    """The centre square the model saw, in the picture's pixels: left, top, side; S: the model's input size."""

    width: int
    height: int
    size: int

    @property
    def side(self) -> float:
        return float(min(self.width, self.height))

    @property
    def left(self) -> float:
        return (self.width - self.side) / 2

    @property
    def top(self) -> float:
        return (self.height - self.side) / 2

    def to_image(self, row: float, col: float) -> tuple[float, float]:
        """A model pixel (row, column) -> (x, y) in the picture's pixels (pixel centres)."""
        scale = self.side / self.size
        return self.left + (col + 0.5) * scale - 0.5, self.top + (row + 0.5) * scale - 0.5

    def to_model(self, x: float, y: float) -> tuple[float, float]:
        """(x, y) in the picture's pixels -> (row, column) on the model's square (may fall outside it)."""
        scale = self.size / self.side
        return (y - self.top + 0.5) * scale - 0.5, (x - self.left + 0.5) * scale - 0.5


def fit_square(gray: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [size, size] as every command feeds the model (shorter side, centre crop, bilinear)."""
    from PIL import Image, ImageOps

    return np.array(ImageOps.fit(Image.fromarray(gray), (size, size), method=Image.Resampling.BILINEAR), np.uint8)


def read_picture(path: str, window: str, slice: int | None = None) -> np.ndarray:
    """A file (`slice` of a volume) -> windowed uint8 [H, W] at full resolution (no metadata is read or kept)."""
    from convirt_cli.torchfree.formats import read_gray

    return read_gray(path, window, slice)
