"""How a file becomes a model's input: one record the model owns (open_clip's preprocess_cfg).

The image tower's config (registry.ImageTowerConfig: model.json of a run, classifier.json of a fine-tuned
classifier) holds it; an export writes it as preprocess.json. Every command that reads pixels for a model takes them
from here: pretraining, finetune, export's checks, embed, classify, evaluate. A flag that disagrees with the
model's own is an error (`check_flag`), never a second truth, so fine-tuning and serving see the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from convirt_cli.torchfree.errors import ConvirtError

if TYPE_CHECKING:
    import numpy as np
# numpy and Pillow are imported where pixels are met: the registry (and a text query) imports this module


@dataclass(frozen=True)
class Preprocess:
    image_size: int  # shorter side resized to this (bilinear), centre crop to a square
    window: str  # high-bit-depth grey levels -> 8 bits (torchfree/formats/window.py)
    mean: tuple[float, ...]  # per channel, of pixels scaled to [0, 1]
    std: tuple[float, ...]
    channels: int  # the grey image replicated to this many channels

    def to_json(self) -> dict:
        """preprocess.json's image part (serve/encoder.py reads it without this class)."""
        return {"image_size": self.image_size, "resize": "shorter side to image_size, bilinear", "crop": "center",
                "color": "grayscale, replicated to channels", "scale": 1 / 255, "mean": list(self.mean),
                "std": list(self.std), "channels": self.channels, "window": self.window}

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        return cls(int(d["image_size"]), d.get("window", "auto"), tuple(d["mean"]), tuple(d["std"]),
                   int(d["channels"]))

    def decode(self, path: str | Path, slice: int | None = None) -> np.ndarray:
        """One file (`slice`: of a volume) -> uint8 [S, S] (ValueError / OSError when it cannot be read)."""
        from convirt_cli.torchfree.imageio import load_gray

        return load_gray(path, self.image_size, self.window, slice)

    def decode_all(self, paths: list[Path], slices: list[int | None] | None = None,
                   workers: int = 2) -> tuple[np.ndarray, list[int]]:
        """Files (and their volume slices) -> (uint8 [N, 1, S, S], indices of those that failed to decode; their
        slots stay zero)."""
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np

        out = np.zeros((len(paths), 1, self.image_size, self.image_size), np.uint8)
        bad: list[int] = []

        def one(i: int) -> None:
            try:
                out[i, 0] = self.decode(paths[i], slices[i] if slices else None)
            except Exception:  # noqa: BLE001 - any decode failure means a skipped, counted image
                bad.append(i)

        with ThreadPoolExecutor(max(1, workers)) as pool:
            list(pool.map(one, range(len(paths))))
        return out, sorted(bad)

    def pixels(self, gray: np.ndarray) -> np.ndarray:
        """uint8 [N, S, S] or [N, 1, S, S] -> float32 [N, C, S, S]: the model's input."""
        from convirt_cli.torchfree.imageio import normalize_array

        return normalize_array(gray.reshape(len(gray), self.image_size, self.image_size), list(self.mean),
                               list(self.std), self.channels)


def check_flag(flag: str, given: object, own: object, owner: str) -> None:
    """A flag the user set (None: unset) must agree with the model's own preprocessing: one line if not."""
    if given is not None and given != own:
        raise ConvirtError(f"{flag} {given}: {owner} reads its pixels with {flag.lstrip('-')} {own}, and so does "
                           f"everything that uses it; drop {flag} (or train a model with it)")
