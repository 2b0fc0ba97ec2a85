"""Augmentations: shapes, image/mask alignment, determinism, colour transforms, tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import hed2rgb, rgb2hed

from pathseg.data.transforms import (
    AugmentConfig,
    build_train_transform,
    color_jitter,
    from_tensor,
    random_crop,
    random_flip,
    random_rotate90,
    random_scale,
    random_scaled_crop,
    resize_pair,
    stain_jitter,
    to_tensor,
)
from pathseg.errors import ConfigError
from tests.data.helpers import blocks_mask, rgb

IGNORE = 255


def aligned_pair(height: int = 48, width: int = 64, block: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Image whose red channel is mask * 255; green/blue carry noise that must not matter."""
    mask = blocks_mask(height, width, block=block, values=(0, 1)).astype(np.int64)
    image = rgb(height, width)
    image[..., 0] = mask * 255
    return image, mask


def assert_exactly_aligned(image: np.ndarray, mask: np.ndarray) -> None:
    known = mask != IGNORE
    np.testing.assert_array_equal(image[..., 0][known], (mask[known] * 255).astype(np.uint8))


def mostly_aligned(image: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of labelled pixels whose red value sits on the mask's side of 128."""
    known = mask != IGNORE
    return float(np.mean((image[..., 0][known] >= 128) == (mask[known] == 1)))


@pytest.mark.parametrize("seed", range(4))
def test_flip_rotate_crop_keep_alignment(seed: int) -> None:
    image, mask = aligned_pair()
    rng = np.random.default_rng(seed)
    for step in (random_flip, random_rotate90):
        image, mask = step(image, mask, rng)
        assert_exactly_aligned(image, mask)
    image, mask = random_crop(image, mask, 32, rng, IGNORE)
    assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
    assert_exactly_aligned(image, mask)


def test_rotate90_changes_shape_of_rectangles() -> None:
    image, mask = aligned_pair(20, 30)
    shapes = {random_rotate90(image, mask, np.random.default_rng(s))[0].shape for s in range(12)}
    assert shapes == {(20, 30, 3), (30, 20, 3)}


def test_crop_pads_small_images_with_reflection_and_ignore() -> None:
    image, mask = aligned_pair(10, 12, block=2)
    out_image, out_mask = random_crop(image, mask, (16, 20), np.random.default_rng(0), IGNORE)
    assert out_image.shape == (16, 20, 3) and out_mask.shape == (16, 20)
    assert (out_mask == IGNORE).sum() == 16 * 20 - 10 * 12
    assert_exactly_aligned(out_image, out_mask)
    # the padded border is reflected tissue, not black
    assert out_image[out_mask == IGNORE][:, 1:].mean() > 30


def test_tiny_image_pads_without_error() -> None:
    image, mask = np.full((1, 1, 3), 9, np.uint8), np.zeros((1, 1), np.int64)
    out_image, out_mask = random_crop(image, mask, 4, np.random.default_rng(0), IGNORE)
    assert (out_image == 9).all() and (out_mask != IGNORE).sum() == 1


@pytest.mark.parametrize("scale_range", [(0.5, 0.7), (1.4, 2.0)])
def test_scaling_keeps_alignment(scale_range: tuple[float, float]) -> None:
    image, mask = aligned_pair(96, 96, block=16)
    rng = np.random.default_rng(0)
    out_image, out_mask = random_scale(image, mask, scale_range, rng)
    assert out_image.shape[:2] == out_mask.shape
    assert set(np.unique(out_mask)) <= {0, 1}  # nearest neighbour: no new labels
    assert mostly_aligned(out_image, out_mask) > 0.95
    out_image, out_mask = random_scaled_crop(image, mask, 40, scale_range, rng, IGNORE)
    assert out_image.shape == (40, 40, 3) and out_mask.shape == (40, 40)
    assert mostly_aligned(out_image, out_mask) > 0.95


def test_full_pipeline_shapes_alignment_and_determinism() -> None:
    cfg = AugmentConfig(crop_size=40, scale_range=(0.8, 1.25))
    transform = build_train_transform(cfg, IGNORE)
    image, mask = aligned_pair(64, 80, block=16)
    a = transform(image, mask, np.random.default_rng(7))
    b = transform(image, mask, np.random.default_rng(7))
    c = transform(image, mask, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (40, 40, 3) and a[0].dtype == np.uint8 and a[1].shape == (40, 40)
    assert a[0].flags["C_CONTIGUOUS"] and a[1].flags["C_CONTIGUOUS"]
    assert mostly_aligned(*a) > 0.95


def test_pipeline_with_colour_and_without_mask() -> None:
    cfg = AugmentConfig(crop_size=24, color_jitter=0.2, stain_jitter=0.1)
    transform = build_train_transform(cfg)
    out, none = transform(rgb(30, 30), None, np.random.default_rng(0))
    assert none is None and out.shape == (24, 24, 3) and out.dtype == np.uint8


def test_photometric_transforms_are_deterministic() -> None:
    image = rgb(32, 32)
    for fn in (lambda g: color_jitter(image, 0.2, g), lambda g: stain_jitter(image, g, 0.1)):
        np.testing.assert_array_equal(fn(np.random.default_rng(3)), fn(np.random.default_rng(3)))
        assert not np.array_equal(fn(np.random.default_rng(3)), fn(np.random.default_rng(4)))


def test_stain_jitter_sigma_zero_is_identity() -> None:
    image = rgb(64, 64)
    out = stain_jitter(image, np.random.default_rng(0), 0.0, 0.0)
    np.testing.assert_array_equal(out, image)

    # alpha = 1, beta = 0 exactly still runs the full RGB -> HED -> RGB chain
    class Fixed:
        def uniform(self, low: float, high: float, size: int) -> np.ndarray:
            return np.full(size, (low + high) / 2)

    chained = stain_jitter(image, Fixed(), 0.3)  # type: ignore[arg-type]
    assert np.abs(chained.astype(int) - image).max() <= 1


def test_stain_jitter_range_and_agreement_with_skimage() -> None:
    # H&E-like colours (pink/purple) where skimage does not clip negative stains
    base = np.array([[[230, 170, 210], [150, 80, 170], [200, 120, 180], [250, 240, 245]]], np.uint8)
    image = np.tile(base, (16, 4, 1))
    rng = np.random.default_rng(11)
    out = stain_jitter(image, rng, 0.2, bias=0.04)
    assert out.dtype == np.uint8 and out.shape == image.shape
    check = np.random.default_rng(11)
    alpha, beta = check.uniform(0.8, 1.2, 3), check.uniform(-0.04, 0.04, 3)
    hed = rgb2hed(image)
    assert (hed >= 0).all()
    reference = np.clip(np.rint(hed2rgb(hed * alpha + beta) * 255), 0, 255)
    assert np.abs(reference - out).max() <= 2


def test_strong_stain_jitter_stays_in_range() -> None:
    out = stain_jitter(rgb(64, 64), np.random.default_rng(0), 0.9, 0.9)
    assert out.dtype == np.uint8 and out.min() >= 0 and out.max() <= 255


def test_color_jitter_zero_is_identity_and_changes_otherwise() -> None:
    image = rgb(16, 16)
    assert color_jitter(image, 0.0, np.random.default_rng(0)) is image
    out = color_jitter(image, 0.3, np.random.default_rng(0))
    assert out.dtype == np.uint8 and out.shape == image.shape and not np.array_equal(out, image)


def test_resize_pair_half_resolution() -> None:
    image, mask = aligned_pair(522, 775, block=32)
    small_image, small_mask = resize_pair(image, mask, 0.5)
    assert small_image.shape == (261, 388, 3) and small_mask.shape == (261, 388)
    assert small_mask.dtype == mask.dtype and set(np.unique(small_mask)) <= {0, 1}
    assert mostly_aligned(small_image, small_mask) > 0.97
    assert resize_pair(image, None, 1.0)[0] is image
    with pytest.raises(ValueError):
        resize_pair(image, mask, 0.0)


def test_tensor_round_trip_and_range() -> None:
    image = rgb(5, 7)
    image[0, 0] = (0, 127, 255)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert tensor[0, 0, 0] == -1 and tensor[2, 0, 0] == 1
    np.testing.assert_array_equal(from_tensor(tensor), image)
    np.testing.assert_array_equal(from_tensor(torch.full((3, 1, 1), 5.0)), [[[255, 255, 255]]])
    with pytest.raises(ValueError):
        to_tensor(image.astype(np.float32))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"crop_size": 0},
        {"scale_range": (1.2, 0.8)},
        {"scale_range": (0.0, 1.0)},
        {"color_jitter": -0.1},
        {"stain_jitter": 1.5},
        {"color_jitter": "strong"},
    ],
)
def test_augment_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AugmentConfig(**kwargs)  # type: ignore[arg-type]


def test_default_stain_bias_keeps_white_nearly_white() -> None:
    # Glass/lumen must stay pale: a bias as large as sigma (in skimage HED units) tinted it purple.
    white = np.full((8, 8, 3), 245, np.uint8)
    worst = min(int(stain_jitter(white, np.random.default_rng(s), 0.05).min()) for s in range(20))
    assert worst >= 200
