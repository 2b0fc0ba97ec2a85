"""Training targets derived from masks: the boundary-aware target that separates touching objects,
and HoVer-Net's distance maps for nucleus instances.

A binary mask cannot tell two glands that nearly touch from one gland: a network trained on it
closes the thin background gap between them and the pair is scored as one object. The
boundary-aware target (DCAN, Chen et al. 2016; the contour-aware recipe of the GlaS winners) splits
every object into its *interior* and a band of *boundary* pixels along its edge, so the interiors
of neighbouring objects stay apart by at least twice the band width and can seed an instance
post-processing (:mod:`pathseg.inference.instances`).

Nuclei are too small and too crowded for a boundary band: HoVer-Net (Graham et al. 2019) instead
regresses, inside every nucleus, its pixels' horizontal and vertical offsets from the nucleus
centroid, scaled to ``[-1, 1]`` per nucleus (:func:`hover_maps`). The maps jump sign where two
nuclei touch, which is what the post-processing finds with a Sobel filter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["BOUNDARY", "INTERIOR", "add_boundary_target", "boundary_target", "hover_maps"]

INTERIOR = 1
BOUNDARY = 2


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy * yy + xx * xx) <= radius * radius


def boundary_target(mask: np.ndarray, width: int, ignore_index: int | None = None) -> np.ndarray:
    """``0`` background / ``1`` interior / ``2`` boundary from a class-index mask with one object class.

    A foreground pixel is boundary when a background pixel lies within ``width`` pixels (Euclidean
    disk). Ignored pixels (``ignore_index``, e.g. padding) stay ignored and never create a boundary,
    and neither does the array's edge: a crop that cuts an object does not invent an edge there.
    """
    if width < 1:
        raise ValueError(f"boundary width must be at least 1 pixel, got {width}")
    mask = np.asarray(mask)
    ignored = mask == ignore_index if ignore_index is not None else np.zeros(mask.shape, bool)
    foreground = (mask > 0) & ~ignored
    # Grow the background by the band width; ignored pixels and the array border count as
    # "not background" (border_value=0 outside), so only true background makes boundary.
    background = (mask == 0) & ~ignored
    near_background = ndimage.binary_dilation(background, structure=_disk(width), border_value=0)
    out = np.zeros(mask.shape, dtype=mask.dtype if mask.dtype.itemsize > 1 else np.uint8)
    out[foreground] = INTERIOR
    out[foreground & near_background] = BOUNDARY
    if ignore_index is not None:
        out[ignored] = ignore_index
    return out


def add_boundary_target(transform, width: int, ignore_index: int | None):
    """Wrap a ``(image, mask, rng) -> (image, mask)`` transform so its mask becomes the boundary target.

    Applied after augmentation, so the band has the same width in pixels at every zoom.
    """

    def apply(image, mask, rng):
        if transform is not None:
            image, mask = transform(image, mask, rng)
        if mask is not None:
            mask = boundary_target(mask, width, ignore_index)
        return image, mask

    return apply


def hover_maps(instances: np.ndarray) -> np.ndarray:
    """``(2, H, W)`` float32 horizontal and vertical maps of an instance map (0 = background).

    Inside nucleus ``k`` with centroid ``(cy, cx)``: ``h = x - cx`` divided by the largest such
    offset on the same side of the centroid within the nucleus (so ``h`` spans ``[-1, 1]`` in
    every nucleus, whatever its size), likewise ``v`` with ``y - cy``; 0 on background. The
    exact (sub-pixel) centroid is used, where HoVer-Net's code rounds it to a pixel.
    Negative ids (ignored pixels, e.g. padding) are treated as background.
    """
    labels = np.asarray(instances)
    if labels.ndim != 2:
        raise ValueError(f"instances must be a 2-D label map, got shape {labels.shape}")
    labels = np.where(labels > 0, labels, 0).astype(np.int64)
    _, compact = np.unique(labels, return_inverse=True)
    compact = compact.reshape(labels.shape)
    if labels.max(initial=0) == 0:
        return np.zeros((2, *labels.shape), dtype=np.float32)
    if labels.min() > 0:  # no background: index 0 is a nucleus, shift so 0 stays background
        compact = compact + 1
    inside = compact > 0
    ids = compact[inside]
    rows, cols = np.nonzero(inside)
    count = np.bincount(ids)
    out = np.zeros((2, *labels.shape), dtype=np.float32)
    for channel, coord in enumerate((cols, rows)):
        centre = np.bincount(ids, weights=coord) / np.maximum(count, 1)
        offset = coord - centre[ids]
        # Largest offset on each side of the centroid, per nucleus (at least 1 px apart from 0).
        high = np.zeros(count.size)
        low = np.zeros(count.size)
        np.maximum.at(high, ids, offset)
        np.minimum.at(low, ids, offset)
        scale = np.where(offset > 0, high[ids], -low[ids])
        out[channel][inside] = np.divide(offset, scale, out=np.zeros_like(offset), where=scale > 0)
    return out
