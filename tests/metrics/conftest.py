"""Random test images shared by the metric tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma)


@pytest.fixture
def blob_mask() -> Callable[..., np.ndarray]:
    """``blob_mask(seed, shape, sigma, fraction)``: a random blobby boolean mask."""

    def make(seed: int, shape: tuple[int, int] = (48, 64), sigma: float = 3.0, fraction: float = 0.3):
        noise = _smooth_noise(np.random.default_rng(seed), shape, sigma)
        return noise > np.quantile(noise, 1.0 - fraction)

    return make


@pytest.fixture
def class_map() -> Callable[..., np.ndarray]:
    """``class_map(seed, shape, num_classes, sigma)``: a blobby random map of classes 0..K-1."""

    def make(seed: int, shape: tuple[int, int] = (48, 64), num_classes: int = 3, sigma: float = 2.5):
        rng = np.random.default_rng(seed)
        scores = np.stack([_smooth_noise(rng, shape, sigma) for _ in range(num_classes)])
        return scores.argmax(axis=0).astype(np.int64)

    return make


@pytest.fixture
def instance_map() -> Callable[..., np.ndarray]:
    """``instance_map(seed, shape, sigma, fraction)``: connected blobs labelled 1..N."""

    def make(seed: int, shape: tuple[int, int] = (48, 64), sigma: float = 2.0, fraction: float = 0.35):
        noise = _smooth_noise(np.random.default_rng(seed), shape, sigma)
        labels, _ = ndimage.label(noise > np.quantile(noise, 1.0 - fraction))
        return labels.astype(np.int64)

    return make
