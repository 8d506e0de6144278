"""The paper's image augmentations, applied to a whole batch at once on its device.

ConVIRT (Zhang et al. 2020, sec. 3/appendix): random crop (area ratio 0.6-1.0), horizontal flip
(p=0.5), affine (rotation +-20 deg, translation +-10%, scale 0.95-1.05), brightness and contrast
jitter (factors 0.6-1.4), Gaussian blur (sigma 0.1-3.0 at 224 px; scaled with image size here).
Crop, flip and affine compose into one 2x3 matrix per image, so the geometry costs a single
grid_sample; the randomness comes from a torch.Generator, so a resumed run replays it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentParams:
    crop_scale: tuple[float, float] = (0.6, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    degrees: float = 20.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_sigma: tuple[float, float] = (0.1, 3.0)
    blur_ref_size: int = 224
    # DINOv2's per-view probabilities (ConVIRT applies every transform: 1, 1, 0)
    jitter_p: float = 1.0
    blur_p: float = 1.0
    solarize_p: float = 0.0


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def geometry_matrices(n: int, p: AugmentParams, g: torch.Generator) -> torch.Tensor:
    """[n, 2, 3] maps from output to input coordinates (affine_grid convention)."""
    area = _uniform(n, *p.crop_scale, g)
    ratio = torch.exp(_uniform(n, math.log(p.crop_ratio[0]), math.log(p.crop_ratio[1]), g))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (2 * torch.rand(n, generator=g) - 1) * (1 - w)
    cy = (2 * torch.rand(n, generator=g) - 1) * (1 - h)
    flip = torch.where(torch.rand(n, generator=g) < p.flip_p, -1.0, 1.0)
    angle = _uniform(n, -p.degrees, p.degrees, g) * math.pi / 180
    tx = _uniform(n, -p.translate, p.translate, g) * 2  # normalised coords span 2
    ty = _uniform(n, -p.translate, p.translate, g) * 2
    sc = _uniform(n, *p.scale, g)

    eye = torch.eye(3).repeat(n, 1, 1)
    crop = eye.clone()
    crop[:, 0, 0], crop[:, 0, 2], crop[:, 1, 1], crop[:, 1, 2] = w, cx, h, cy
    flip_m = eye.clone()
    flip_m[:, 0, 0] = flip
    # inverse of "rotate by angle, scale by sc, then shift by t": R(-angle) / sc @ (x - t)
    cos, sin = torch.cos(angle) / sc, torch.sin(angle) / sc
    inv_affine = eye.clone()
    inv_affine[:, 0, 0], inv_affine[:, 0, 1] = cos, sin
    inv_affine[:, 1, 0], inv_affine[:, 1, 1] = -sin, cos
    inv_affine[:, 0, 2] = -(cos * tx + sin * ty)
    inv_affine[:, 1, 2] = -(-sin * tx + cos * ty)
    return (crop @ flip_m @ inv_affine)[:, :2]


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """sigma [n] -> normalised 1-D kernels [n, 2 * radius + 1]."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None] / sigma[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable per-image Gaussian blur of x [B, 1, H, W] with sigma [B] (reflect padding)."""
    b, c, hgt, wid = x.shape
    sigma = sigma.cpu()  # drawn on the host (a CPU generator): reading it never waits for the device
    radius = max(1, math.ceil(3 * float(sigma.numpy().max())))
    k = gaussian_kernels(sigma, radius).to(x)
    y = F.pad(x.reshape(1, b * c, hgt, wid), (radius, radius, radius, radius), mode="reflect")
    kc = k.repeat_interleave(c, 0)
    y = F.conv2d(y, kc[:, None, :, None], groups=b * c)
    y = F.conv2d(y, kc[:, None, None, :], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def _chance(n: int, p: float, g: torch.Generator) -> torch.Tensor | None:
    """Which of n images get a transform applied with probability p (None: all of them, no random draw)."""
    return None if p >= 1 else torch.rand(n, generator=g) < p


def augment(images: torch.Tensor, g: torch.Generator, p: AugmentParams = AugmentParams(),
            out_size: int | None = None) -> torch.Tensor:
    """uint8 [B, 1, S, S] -> augmented float [B, 1, out, out] in [0, 1] (same device as input; out = S unless given:
    multi-crop views are resampled to their own size by the same crop)."""
    x = images.float() / 255.0
    n, size = x.shape[0], out_size or x.shape[-1]
    theta = geometry_matrices(n, p, g).to(x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    # a crop alone never shows what lies outside the image, but its edge pixels may sample up to half a pixel past
    # it: replicate the edge there (zeros would draw a dark rim on every crop touching the border). Rotations and
    # shifts do show the outside: black, as torchvision fills it.
    pure_crop = p.degrees == 0 and p.translate == 0 and tuple(p.scale) == (1.0, 1.0)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border" if pure_crop else "zeros", align_corners=False)
    bright = _uniform(n, *p.brightness, g).to(x).view(n, 1, 1, 1)
    contrast = _uniform(n, *p.contrast, g).to(x).view(n, 1, 1, 1)
    if (jitter := _chance(n, p.jitter_p, g)) is not None:  # the others keep factor 1
        keep = ~jitter.to(x.device).view(n, 1, 1, 1)
        bright, contrast = bright.masked_fill(keep, 1.0), contrast.masked_fill(keep, 1.0)
    x = (x * bright).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    sigma = _uniform(n, *p.blur_sigma, g) * (size / p.blur_ref_size)
    if (blurred := _chance(n, p.blur_p, g)) is not None:
        sigma = torch.where(blurred, sigma, torch.zeros_like(sigma))
    x = blur(x, sigma.clamp_min(1e-3)) if (sigma.numpy() > 0).any() else x  # sigma is on the host
    if p.solarize_p > 0:  # grey-level solarisation: invert the bright half
        sol = (torch.rand(n, generator=g) < p.solarize_p).to(x.device).view(n, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1.0 - x, x)
    return x


def to_model_input(x: torch.Tensor, mean: list[float], std: list[float], channels: int) -> torch.Tensor:
    """float [B, 1, S, S] in [0, 1] (or uint8) -> standardised [B, C, S, S], grey replicated."""
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    m = torch.tensor(mean[:channels], device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std[:channels], device=x.device).view(1, -1, 1, 1)
    return (x.expand(-1, channels, -1, -1) - m) / s
