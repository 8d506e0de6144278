"""The batched augmentations: degenerate parameters give the identity; each transform does its job."""

import numpy as np
import pytest
import torch

from convirt_cli.torch.data.transforms import AugmentParams, augment, blur, gaussian_kernels, to_model_input

IDENTITY = AugmentParams(crop_scale=(1, 1), crop_ratio=(1, 1), flip_p=0.0, degrees=0, translate=0, scale=(1, 1),
                         brightness=(1, 1), contrast=(1, 1), blur_sigma=(1e-4, 1e-4))


def images(n=3, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, size, size), generator=g, dtype=torch.uint8)


def test_identity_parameters_leave_images_unchanged():
    x = images()
    out = augment(x, torch.Generator().manual_seed(1), IDENTITY)
    assert torch.allclose(out, x.float() / 255, atol=1e-5)


def test_flip_always():
    x = images()
    p = AugmentParams(**{**IDENTITY.__dict__, "flip_p": 1.0})
    out = augment(x, torch.Generator().manual_seed(1), p)
    assert torch.allclose(out, x.float().flip(-1) / 255, atol=1e-5)


def test_crop_zooms_in():
    # a centred crop of half the width shows the centre enlarged: corners of output come from the centre region
    x = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    x[..., 8:24, 8:24] = 255
    p = AugmentParams(**{**IDENTITY.__dict__, "crop_scale": (0.25, 0.25)})
    g = torch.Generator().manual_seed(0)
    out = augment(x, g, p)
    assert out.mean() > x.float().mean() / 255  # the bright centre fills more of the view


def two_level(n=64, size=8):
    """Left half 60, right half 140: an image on which contrast has something to stretch."""
    x = torch.full((n, 1, size, size), 60, dtype=torch.uint8)
    x[..., size // 2:] = 140
    return x


def test_brightness_scales_every_pixel_by_one_factor_per_image():
    x = two_level()
    p = AugmentParams(**{**IDENTITY.__dict__, "brightness": (0.6, 1.4)})
    out = augment(x, torch.Generator().manual_seed(0), p)
    ratio = out / (x.float() / 255)  # [n, 1, s, s]
    per_image = ratio.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-4)  # one factor per image
    assert per_image.min() >= 0.6 - 1e-4 and per_image.max() <= 1.4 + 1e-4 and per_image[:, 0].std() > 0.1


def test_contrast_stretches_around_the_image_mean():
    x = two_level()
    p = AugmentParams(**{**IDENTITY.__dict__, "contrast": (0.6, 1.4)})
    out = augment(x, torch.Generator().manual_seed(0), p).flatten(1)
    ref = (x.float() / 255).flatten(1)
    mean = ref.mean(1, keepdim=True)
    assert torch.allclose(out.mean(1, keepdim=True), mean, atol=1e-4)  # the mean stays
    c = (out - mean) / (ref - mean)  # the same stretch for every pixel of an image
    assert torch.allclose(c, c[:, :1].expand_as(c), atol=1e-3)
    assert c.min() >= 0.6 - 1e-3 and c.max() <= 1.4 + 1e-3 and c[:, 0].std() > 0.1


def test_gaussian_kernel_matches_numpy():
    k = gaussian_kernels(torch.tensor([1.5]), radius=4)[0].numpy()
    xs = np.arange(-4, 5)
    ref = np.exp(-xs**2 / (2 * 1.5**2))
    assert np.allclose(k, ref / ref.sum(), atol=1e-6)


def test_blur_preserves_constant_and_smooths_impulse():
    const = torch.full((2, 1, 9, 9), 0.3)
    assert torch.allclose(blur(const, torch.tensor([1.0, 2.0])), const, atol=1e-6)
    imp = torch.zeros(1, 1, 9, 9)
    imp[..., 4, 4] = 1.0
    out = blur(imp, torch.tensor([1.0]))
    assert out.sum() == pytest.approx(1.0, abs=1e-5) and out[..., 4, 4] < 0.5


def test_same_generator_same_result():
    x = images()
    a = augment(x, torch.Generator().manual_seed(7))
    b = augment(x, torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, augment(x, torch.Generator().manual_seed(8)))


def test_to_model_input_replicates_and_standardises():
    x = torch.full((1, 1, 2, 2), 255, dtype=torch.uint8)
    out = to_model_input(x, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], 3)
    assert out.shape == (1, 3, 2, 2) and torch.allclose(out, torch.full_like(out, 2.0))
