"""From class probabilities to a class map and an instance map (one id per object).

Two ways, chosen by ``InstanceSettings.method``:

* ``"components"``: objects are the 8-connected components of the predicted foreground. Right for
  tissue regions; merges objects that touch.
* ``"boundary"``: for networks trained on the boundary-aware target
  (:func:`pathseg.data.targets.boundary_target`; channels background / interior / boundary). The
  foreground is where background is not the most likely of the three (so pixel metrics see the
  same foreground as a two-class model would); interiors, which neighbouring objects do not share,
  are the watershed markers, and every marker floods the foreground downhill in interior
  probability. A foreground region that holds no marker becomes an object of its own.

Both drop objects under ``min_area`` pixels (at the resolution of the probabilities) from the
instance map *and* the class map, so the two always agree.

Nuclei use :func:`hover_instances`, HoVer-Net's marker-controlled watershed on a nucleus
probability and the horizontal/vertical maps of :func:`pathseg.data.targets.hover_maps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import disk
from skimage.segmentation import watershed

from pathseg.data.targets import BOUNDARY, INTERIOR

__all__ = ["HoverSettings", "InstanceSettings", "class_probabilities", "hover_instances", "separate_objects"]

_EIGHT = ndimage.generate_binary_structure(2, 2)


@dataclass
class InstanceSettings:
    method: str = "components"
    min_area: int = 0
    marker_threshold: float = 0.5
    marker_min_area: int = 0


@dataclass
class HoverSettings:
    """HoVer-Net's post-processing constants (its released code's values, in pixels at 40x).

    ``foreground``: nucleus probability threshold; ``edge``: threshold on the edge energy that
    cuts markers apart; ``smoothing``: sigma of the Gaussian derivative standing in for the
    21-tap Sobel filter of the release (a Sobel kernel that wide is a smoothed derivative);
    ``min_area``: smallest nucleus and marker kept; ``opening``: radius of the opening that
    detaches markers joined by a thin bridge.
    """

    foreground: float = 0.5
    edge: float = 0.4
    smoothing: float = 3.0
    min_area: int = 10
    opening: int = 2


def _minmax(x: np.ndarray) -> np.ndarray:
    low, high = float(x.min()), float(x.max())
    return (x - low) / (high - low) if high > low else np.zeros_like(x)


def hover_instances(
    nucleus_prob: np.ndarray, hv: np.ndarray, settings: HoverSettings | None = None
) -> np.ndarray:
    """Nucleus instance map ``(H, W)`` int32 from ``nucleus_prob (H, W)`` and ``hv (2, H, W)``.

    Within a nucleus the predicted h map rises from -1 to 1 left to right; where two nuclei touch
    it falls from 1 to -1. So the *most negative* smoothed derivative marks a boundary: after
    min-max scaling, ``1 - d`` is an edge energy near 1 there. Markers are the nucleus pixels
    with edge energy below ``settings.edge`` (opened, small ones dropped); the watershed floods
    the nucleus mask from them over the smoothed energy. Nucleus regions no marker reaches keep
    their own id, so no predicted nucleus pixel is lost.
    """
    settings = settings or HoverSettings()
    if hv.shape != (2, *nucleus_prob.shape):
        raise ValueError(f"hv must be (2, H, W) for a {nucleus_prob.shape} probability map, got {hv.shape}")
    foreground = nucleus_prob >= settings.foreground
    regions = ndimage.label(foreground)[0]
    if settings.min_area > 0:
        regions = _drop_small(regions, settings.min_area)
    foreground = regions > 0
    if not foreground.any():
        return np.zeros(nucleus_prob.shape, dtype=np.int32)
    h, v = (_minmax(channel.astype(np.float64)) for channel in hv)
    dh = ndimage.gaussian_filter(h, settings.smoothing, order=(0, 1))
    dv = ndimage.gaussian_filter(v, settings.smoothing, order=(1, 0))
    energy = np.maximum(1.0 - _minmax(dh), 1.0 - _minmax(dv))
    energy = np.clip(energy - (~foreground), 0.0, None)
    markers = foreground & (energy < settings.edge)
    markers = ndimage.binary_fill_holes(markers)
    if settings.opening > 0:
        markers = ndimage.binary_opening(markers, structure=disk(settings.opening).astype(bool))
    markers = ndimage.label(markers)[0]
    if settings.min_area > 0:
        markers = _drop_small(markers, settings.min_area)
    height = -ndimage.gaussian_filter((1.0 - energy) * foreground, 1.0)
    instances = watershed(height, markers, mask=foreground).astype(np.int32)
    orphans = ndimage.label(foreground & (instances == 0), structure=_EIGHT)[0]
    if orphans.max() > 0:
        instances = np.where(orphans > 0, orphans + instances.max(), instances).astype(np.int32)
    return _relabel(instances)


def class_probabilities(probs: np.ndarray, method: str) -> np.ndarray:
    """The network's output probabilities ``(K, ...)`` as probabilities of the classes.

    The boundary-aware output (background / interior / boundary) is two classes: background and
    object (interior + boundary), so its argmax is the foreground :func:`separate_objects` uses.
    """
    if method != "boundary":
        return probs
    if probs.shape[0] != 3:
        raise ValueError(f"boundary post-processing needs 3 channels, got {probs.shape[0]}")
    return np.stack([probs[0], probs[INTERIOR] + probs[BOUNDARY]])


def separate_objects(probs: np.ndarray, settings: InstanceSettings) -> tuple[np.ndarray, np.ndarray]:
    """``probs (K, H, W)`` -> class map ``(H, W)`` int64 and instance map ``(H, W)`` int32 (0 = none).

    For ``"boundary"``, ``K`` is 3 and the class map has two classes (0 background, 1 object).
    """
    if settings.method == "boundary":
        if probs.shape[0] != 3:
            raise ValueError(f"boundary post-processing needs 3 channels, got {probs.shape[0]}")
        foreground = probs[0] < probs[INTERIOR] + probs[BOUNDARY]
        classes = foreground.astype(np.int64)
        instances = _watershed_instances(probs[INTERIOR], foreground, settings)
    elif settings.method == "components":
        classes = probs.argmax(axis=0).astype(np.int64)
        instances = ndimage.label(classes > 0, structure=_EIGHT)[0].astype(np.int32)
    else:
        raise ValueError(f"unknown instance method {settings.method!r} (components or boundary)")
    if settings.min_area > 0:
        instances = _drop_small(instances, settings.min_area)
        classes[(instances == 0) & (classes > 0)] = 0
    return classes, instances


def _watershed_instances(interior: np.ndarray, foreground: np.ndarray, settings: InstanceSettings):
    seeds = (interior > settings.marker_threshold) & foreground
    markers = ndimage.label(seeds, structure=_EIGHT)[0]
    if settings.marker_min_area > 0:
        markers = _drop_small(markers, settings.marker_min_area)
    instances = watershed(-interior, markers, mask=foreground).astype(np.int32)
    # Foreground that no marker reached (no interior above the threshold): its own objects.
    orphans = ndimage.label(foreground & (instances == 0), structure=_EIGHT)[0]
    if orphans.max() > 0:
        instances = np.where(orphans > 0, orphans + instances.max(), instances).astype(np.int32)
    return _relabel(instances)


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    lut = np.zeros(sizes.size, dtype=np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return lut[labels]


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive ids 1..N in order of first appearance in scan order."""
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = ids[np.argsort(first)]
    order = order[order > 0]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
    return lut[labels]
