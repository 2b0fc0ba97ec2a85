"""Tissue detection: which parts of a slide hold tissue rather than bare glass.

The slide is read once at a low resolution (8 microns per pixel by default) and thresholded on
HSV saturation with Otsu's method, as MONAI and TIAToolbox do: glass is grey or white, H&E
stained tissue is coloured. Morphology then closes small gaps, drops specks and fills small
holes. The result is a :class:`TissueMask` whose pixel ``(i, j)`` covers the level-0 square
``[j*d, (j+1)*d) x [i*d, (i+1)*d)`` (origin at the slide's top-left, ``d`` its downsample), so
patch samplers ask it how much tissue lies under a box and QuPath can show it as polygons.

Guards against nonsense: Otsu always splits a histogram in two, even one without two
populations. On an all-glass slide it would call the brighter half of the noise "tissue", and on
a slide covered edge to edge by tissue it would throw away the paler half. So the threshold is
never below ``min_saturation`` (glass stays glass however noisy), and when Otsu's lower class is
itself clearly coloured (mean saturation above ``glass_saturation``) there is no glass population
to separate from, and ``min_saturation`` alone decides.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from PIL import Image
from scipy import ndimage
from shapely import affinity
from shapely.geometry import mapping

from pathseg.errors import ConfigError, DataError
from pathseg.slides.reader import Slide

__all__ = ["TISSUE_COLOUR", "TissueMask", "TissueSettings", "detect_tissue", "tissue_from_rgb"]

TISSUE_COLOUR = (80, 160, 80)
"""Colour of the "Tissue" class in the GeoJSON (QuPath shows annotations in their class colour)."""


@dataclass
class TissueSettings:
    """How :func:`detect_tissue` works. Defaults suit H&E slides scanned at 20x-40x."""

    mpp: float = 8.0
    """Microns per pixel of the mask. 8 um keeps a 2 x 2 cm section under 2,500 px a side, fine
    enough for 256 px patches at 0.5 um (16 mask pixels across)."""
    fallback_downsample: float = 16.0
    """Level-0 pixels per mask pixel for a slide without microns per pixel: the same mask as
    ``mpp`` gives for the most common scan (20x, 0.5 um per pixel)."""
    min_saturation: float = 0.05
    """HSV saturation below which a pixel is glass whatever Otsu says (glass and JPEG noise on
    it stay under ~0.03; the palest stained tissue is above ~0.08)."""
    glass_saturation: float = 0.1
    """When the mean saturation of Otsu's lower class exceeds this, that class is tissue too
    (the picture has no glass) and only ``min_saturation`` is used."""
    max_brightness: float | None = 0.92
    """Pixels whose mean RGB is above this fraction of white are glass even if slightly coloured
    (tinted or dusty glass); None switches the test off."""
    closing_radius: int = 2
    """Radius in mask pixels of the closing that bridges thin gaps between tissue pieces."""
    opening_radius: int = 1
    """Radius in mask pixels of the opening that removes isolated pixels and thin threads."""
    min_area_um2: float = 10_000.0
    """Tissue pieces smaller than this are dropped and holes smaller than this are filled
    (10,000 um2: a 100 um square)."""
    min_area_px0: float = 40_000.0
    """``min_area_um2`` in level-0 pixels for slides without microns per pixel (10,000 um2 at
    0.5 um per pixel)."""

    def __post_init__(self) -> None:
        positive = ("mpp", "fallback_downsample", "min_area_um2", "min_area_px0")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"tissue settings: {name} must be a positive number (got {value!r})")
        for name in ("min_saturation", "glass_saturation"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"tissue settings: {name} must lie in [0, 1) (got {getattr(self, name)!r})")
        if self.max_brightness is not None and not 0 < self.max_brightness <= 1:
            raise ConfigError(
                f"tissue settings: max_brightness must lie in (0, 1] (got {self.max_brightness!r})"
            )
        for name in ("closing_radius", "opening_radius"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"tissue settings: {name} must be a whole number >= 0")

    def downsample_for(self, slide: Slide) -> float:
        """Level-0 pixels per mask pixel for ``slide``: ``mpp`` over the slide's microns per pixel
        (never below 1), or ``fallback_downsample`` when the slide has none."""
        if slide.mpp is None:
            return self.fallback_downsample
        return max(1.0, self.mpp / slide.mpp)


@dataclass
class TissueMask:
    """A boolean tissue mask over the whole slide at ``downsample`` level-0 pixels per mask pixel,
    origin at the slide's top-left. It may extend past the slide's right and bottom edges by less
    than a mask pixel; that part reads as glass."""

    mask: np.ndarray
    downsample: float

    def fraction(self, box: tuple[float, float, float, float]) -> float:
        """Share of the level-0 ``box = (x, y, width, height)`` covered by tissue, weighting each
        mask pixel by its overlap with the box; parts of the box outside the mask count as glass."""
        x, y, width, height = (float(v) for v in box)
        if not (width > 0 and height > 0):
            raise ValueError(f"box width and height must be positive (got {box})")
        d = self.downsample
        first_row, row_weights = _overlaps(y / d, (y + height) / d, self.mask.shape[0])
        first_col, col_weights = _overlaps(x / d, (x + width) / d, self.mask.shape[1])
        if row_weights.size == 0 or col_weights.size == 0:
            return 0.0
        window = self.mask[first_row : first_row + row_weights.size, first_col : first_col + col_weights.size]
        covered = row_weights @ window.astype(np.float64) @ col_weights
        return min(1.0, float(covered / ((width / d) * (height / d))))  # min: rounding can give 1 + 1e-16

    def area_px0(self) -> float:
        """Tissue area in level-0 pixels."""
        return float(np.count_nonzero(self.mask)) * self.downsample**2

    def to_geojson_features(self) -> list[dict[str, Any]]:
        """One QuPath "Tissue" annotation per tissue piece: a Polygon (holes kept) in level-0
        coordinates whose edges follow the mask's pixel edges, simplified by at most half a mask
        pixel."""
        features = []
        for polygon in _mask_polygons(self.mask):
            polygon = affinity.scale(polygon, self.downsample, self.downsample, origin=(0, 0))
            features.append(
                {
                    "type": "Feature",
                    "geometry": _plain_lists(mapping(polygon)),
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": "Tissue", "color": list(TISSUE_COLOUR)},
                    },
                }
            )
        return features

    def save(self, png_path: str | Path | None, geojson_path: str | Path | None) -> None:
        """Write the mask as a 0/255 PNG and/or the tissue polygons as a GeoJSON FeatureCollection
        (either path may be None to skip it)."""
        if png_path is not None:
            _write_png(Path(png_path), self.mask.astype(np.uint8) * 255)
        if geojson_path is not None:
            collection = {"type": "FeatureCollection", "features": self.to_geojson_features()}
            geojson_path = Path(geojson_path)
            try:
                geojson_path.parent.mkdir(parents=True, exist_ok=True)
                geojson_path.write_text(json.dumps(collection), encoding="utf-8")
            except OSError as exc:
                raise DataError(geojson_path, f"cannot write GeoJSON ({exc.strerror or exc})") from exc


def _write_png(path: Path, grey: np.ndarray) -> None:
    """An 8-bit greyscale PNG (PIL directly: pathseg.data.io would import torch)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(grey)).save(path, format="PNG")
    except OSError as exc:
        raise DataError(path, f"cannot write PNG ({exc.strerror or exc})") from exc


def _overlaps(start: float, stop: float, count: int) -> tuple[int, np.ndarray]:
    """Overlap lengths of ``[start, stop)`` with unit cells ``[j, j+1)``, ``0 <= j < count``:
    the first overlapped index and the lengths (empty when nothing overlaps)."""
    first, last = max(math.floor(start), 0), min(math.ceil(stop), count)
    if first >= last:
        return 0, np.zeros(0)
    cells = np.arange(first, last, dtype=np.float64)
    return first, np.minimum(cells + 1, stop) - np.maximum(cells, start)


def _mask_polygons(mask: np.ndarray) -> list[shapely.Polygon]:
    """The tissue pieces of a mask as polygons in mask-pixel units (pixel (i, j) is the unit
    square at x = j, y = i): the union of each row's runs of tissue pixels, lightly simplified."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    steps = np.diff(padded, axis=1)
    rows, starts = np.nonzero(steps == 1)
    _, stops = np.nonzero(steps == -1)  # row-major order pairs every start with its stop
    if rows.size == 0:
        return []
    union = shapely.union_all(shapely.box(starts, rows, stops, rows + 1))
    union = union.simplify(0.5, preserve_topology=True)
    return [part for part in shapely.get_parts(union) if isinstance(part, shapely.Polygon)]


def _plain_lists(value: Any) -> Any:
    """shapely's ``mapping`` nests tuples; JSON writers and tests want lists."""
    if isinstance(value, dict):
        return {key: _plain_lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain_lists(item) for item in value]
    return value


# --------------------------------------------------------------------------- detection


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation, (max - min) / max, 0 for black."""
    top = rgb.max(axis=2).astype(np.float32)
    spread = top - rgb.min(axis=2)
    return np.divide(spread, top, out=np.zeros_like(top), where=top > 0)


def _otsu(values: np.ndarray, bins: int = 256) -> tuple[float, float]:
    """Otsu's threshold on values in [0, 1] and the mean of the class below it."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = (sum_low[-1] - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between = np.nan_to_num(between, nan=-1.0)
    best = int(np.argmax(between))
    return float(edges[best + 1]), float(np.nan_to_num(mean_low[best]))


def _disk(radius: int) -> np.ndarray:
    span = np.arange(-radius, radius + 1)
    return span[:, None] ** 2 + span[None, :] ** 2 <= radius**2


def _close_then_open(mask: np.ndarray, closing: int, opening: int) -> np.ndarray:
    """Morphological closing then opening with disks; the picture is padded by edge replication
    so tissue cut by the slide border is not eroded away from it."""
    pad = max(closing, opening)
    if pad == 0:
        return mask
    out = np.pad(mask, pad, mode="edge")
    if closing:
        out = ndimage.binary_closing(out, structure=_disk(closing))
    if opening:
        out = ndimage.binary_opening(out, structure=_disk(opening))
    return out[pad:-pad, pad:-pad]


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Remove tissue pieces smaller than ``min_pixels`` and fill holes smaller than that
    (background touching the border is glass around the tissue, never a hole)."""
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    mask = keep[labels]
    holes, count = ndimage.label(~mask)
    sizes = np.bincount(holes.ravel(), minlength=count + 1)
    fill = sizes < min_pixels
    fill[0] = False
    border = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
    fill[border] = False
    return mask | fill[holes]


def tissue_from_rgb(
    rgb: np.ndarray, downsample: float, settings: TissueSettings | None = None, mpp: float | None = None
) -> TissueMask:
    """Tissue mask of a low-resolution RGB picture of a whole slide, whose pixel ``(i, j)`` covers
    level-0 ``[j*d, (j+1)*d) x [i*d, (i+1)*d)`` with ``d = downsample``; ``mpp`` is the slide's
    level-0 microns per pixel (None: areas use ``settings.min_area_px0``)."""
    settings = settings if settings is not None else TissueSettings()
    saturation = _saturation(rgb)
    threshold, mean_below = _otsu(saturation)
    if mean_below > settings.glass_saturation:  # no glass population: Otsu would split tissue
        threshold = settings.min_saturation
    tissue = saturation > max(threshold, settings.min_saturation)
    if settings.max_brightness is not None:
        tissue &= rgb.mean(axis=2) <= 255 * settings.max_brightness
    tissue = _close_then_open(tissue, settings.closing_radius, settings.opening_radius)
    if mpp is not None:
        min_pixels = settings.min_area_um2 / (downsample * mpp) ** 2
    else:
        min_pixels = settings.min_area_px0 / downsample**2
    return TissueMask(_drop_small(tissue, min_pixels), float(downsample))


def detect_tissue(slide: Slide, settings: TissueSettings | None = None) -> TissueMask:
    """Detect tissue on ``slide`` from one low-resolution read (see :class:`TissueSettings`).

    An all-glass slide gives an empty mask; deciding whether that is an error is the caller's job.
    """
    settings = settings if settings is not None else TissueSettings()
    d = settings.downsample_for(slide)
    width, height = slide.dimensions
    cols, rows = math.ceil(width / d), math.ceil(height / d)
    # A box of whole mask pixels, so mask pixel (i, j) covers exactly [j*d, (j+1)*d) x [i*d, ...).
    rgb = slide.read_box((0, 0, cols * d, rows * d), d, size=(cols, rows))
    return tissue_from_rgb(rgb, d, settings, slide.mpp)
