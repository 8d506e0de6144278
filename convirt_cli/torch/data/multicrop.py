"""Views for image-only self-supervision: DINOv2's multi-crop for grey radiographs, iBOT's block masks, SimCLR's
two views. Batched on the training device like ConVIRT's augmentations (transforms.augment).

Multi-crop (Caron et al. 2020/2021, DINOv2 defaults): 2 global crops covering 32-100% of the image and N local
crops covering 5-32%, each flipped with p = 0.5 and brightness/contrast-jittered with p = 0.8 (no saturation or hue:
radiographs are grey); Gaussian blur always on the first global view, with p = 0.1 on the second and p = 0.5 on the
locals; the second global view is solarised with p = 0.2 (grey levels >= 0.5 inverted). A preset may turn the jitter and
the solarisation off (dino.jitter_p, dino.solarize_p): dino-tiny does, see benchmarks/dino_views.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from convirt_cli.torch.data.transforms import AugmentParams, augment

_NO_AFFINE = {"degrees": 0.0, "translate": 0.0, "scale": (1.0, 1.0)}


@dataclass(frozen=True)
class MultiCropParams:
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.32, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.32)
    jitter: tuple[float, float] = (0.6, 1.4)  # brightness and contrast factors (torchvision's 0.4)
    jitter_p: float = 0.8
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2

    def views(self) -> list[tuple[AugmentParams, int]]:
        """(augmentation, output size) per view: global 1, global 2, then the locals."""
        base = AugmentParams(crop_scale=self.global_scale, flip_p=0.5, brightness=self.jitter, contrast=self.jitter,
                             jitter_p=self.jitter_p, blur_sigma=self.blur_sigma, blur_ref_size=self.global_size,
                             **_NO_AFFINE)
        g1 = replace(base, blur_p=1.0)
        g2 = replace(base, blur_p=0.1, solarize_p=self.solarize_p)
        local = replace(base, crop_scale=self.local_scale, blur_p=0.5, blur_ref_size=self.global_size)
        return [(g1, self.global_size), (g2, self.global_size)] + [(local, self.local_size)] * self.n_local


def multicrop(images: torch.Tensor, g: torch.Generator, p: MultiCropParams) -> list[torch.Tensor]:
    """uint8 [B, 1, S, S] -> [global 1, global 2, local 1..N], each float [B, 1, size, size] in [0, 1]."""
    return [augment(images, g, aug, size) for aug, size in p.views()]


def two_views(images: torch.Tensor, g: torch.Generator, aug: AugmentParams | None = None) -> list[torch.Tensor]:
    """SimCLR's two independently augmented views of every image (ConVIRT's augmentations)."""
    aug = aug or AugmentParams()
    return [augment(images, g, aug), augment(images, g, aug)]


def block_shape(h: int, w: int, most: float, rng: np.random.Generator, min_block: int = 4,
                aspect: tuple[float, float] = (0.3, 1 / 0.3)) -> tuple[int, int] | None:
    """One of DINOv2's mask rectangles: an area uniform between min_block and `most`, a log-uniform aspect ratio;
    None when it does not fit strictly inside the h x w grid (DINOv2 never masks a whole row or column in one block)."""
    area = rng.uniform(min_block, most) if most > min_block else most
    ar = np.exp(rng.uniform(np.log(aspect[0]), np.log(aspect[1])))
    bh, bw = round(float(np.sqrt(area * ar))), round(float(np.sqrt(area / ar)))
    return (bh, bw) if 1 <= bh < h and 1 <= bw < w else None


def block_mask(h: int, w: int, n_mask: int, rng: np.random.Generator, max_block: float | None = None) -> np.ndarray:
    """iBOT's block masking (DINOv2's MaskingGenerator): rectangles (block_shape) of at most max_block patches
    (DINOv2: half the grid), each adding at most what is left, until n_mask of the h x w patches are masked (or the
    attempts run out). -> bool [h, w]."""
    mask = np.zeros((h, w), bool)
    cap = 0.5 * h * w if max_block is None else max_block
    for _ in range(10 * h * w):
        left = n_mask - int(mask.sum())
        if left <= 0:
            break
        most = min(left, cap)
        shape = block_shape(h, w, most, rng)
        if shape is None:
            continue
        top, lft = rng.integers(0, h - shape[0] + 1), rng.integers(0, w - shape[1] + 1)
        block = mask[top:top + shape[0], lft:lft + shape[1]]
        new = block.size - int(block.sum())
        if 0 < new <= most:  # never more than is left to mask, nor more than one block may add
            block[...] = True
    return mask


def batch_masks(n: int, h: int, w: int, ratio: tuple[float, float], probability: float,
                rng: np.random.Generator) -> torch.Tensor:
    """Masks for n global crops, as DINOv2's collate draws them: int(n * probability) crops get a block mask, the
    i-th of them a ratio drawn uniformly within the i-th of as many equal bins of `ratio`, on random crops; the
    rest none. -> bool [n, h * w]."""
    out = np.zeros((n, h * w), bool)
    masked = int(n * probability)
    edges = np.linspace(ratio[0], ratio[1], masked + 1)
    for i, crop in enumerate(rng.permutation(n)[:masked]):
        r = rng.uniform(edges[i], edges[i + 1])
        out[crop] = block_mask(h, w, int(r * h * w), rng).ravel()
    return torch.from_numpy(out)
