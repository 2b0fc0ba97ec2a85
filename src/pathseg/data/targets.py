"""Training targets derived from masks: the boundary-aware target that separates touching objects.

A binary mask cannot tell two glands that nearly touch from one gland: a network trained on it
closes the thin background gap between them and the pair is scored as one object. The
boundary-aware target (DCAN, Chen et al. 2016; the contour-aware recipe of the GlaS winners) splits
every object into its *interior* and a band of *boundary* pixels along its edge, so the interiors
of neighbouring objects stay apart by at least twice the band width and can seed an instance
post-processing (:mod:`pathseg.inference.instances`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["BOUNDARY", "INTERIOR", "add_boundary_target", "boundary_target"]

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
