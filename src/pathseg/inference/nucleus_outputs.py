"""Per-nucleus outputs of a predicted instance map: a measurement table (CSV) and QuPath GeoJSON.

An instance map gives every nucleus pixel the id of its nucleus (0 is background). Two views of
it leave the pipeline:

* :func:`nucleus_table` / :func:`write_nucleus_csv`: one row of shape (and, given the image,
  colour) measurements per nucleus, from a single :func:`skimage.measure.regionprops_table`
  pass, for statistics outside QuPath.
* :func:`nucleus_features` / :func:`write_nucleus_geojson`: one QuPath *detection* per nucleus
  (File > Import objects), so the prediction can be inspected over the slide.

Outlines follow pixel edges (pixel ``(i, j)`` is the square ``[j, j+1) x [i, i+1)``), traced by
the same code as :mod:`pathseg.slides.vectorize`. Contour tracers such as
:func:`skimage.measure.find_contours` cut corners through pixel centres, so their polygons lose
and gain pixels; pixel-edge polygons rasterise back (pixel-centre rule,
:func:`pathseg.data.annotations.rasterize_instances`) to exactly the original map, holes and
nuclei split into several parts included.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import mapping
from skimage.measure import regionprops_table

from pathseg.data.io import atomic_output

# ``label_polygons`` itself does not fit: it labels 8-connected regions per *class* (values
# 0..255), so instance ids above 255 are refused and an id with two separate parts would come
# out as two regions. Its tracer takes any map of region ids 1..n and gives one Polygon or
# MultiPolygon (holes kept) per id, which is exactly one geometry per nucleus.
from pathseg.slides.vectorize import _trace_regions, write_geojson

__all__ = [
    "COLOUR_COLUMNS",
    "MICRON_COLUMNS",
    "NUCLEUS_COLOR",
    "NUCLEUS_COLUMNS",
    "SHAPE_COLUMNS",
    "nucleus_features",
    "nucleus_table",
    "write_nucleus_csv",
    "write_nucleus_geojson",
]

SHAPE_COLUMNS = (
    "id",
    "area_px",
    "centroid_x",
    "centroid_y",
    "eccentricity",
    "major_axis_px",
    "minor_axis_px",
    "perimeter_px",
    "solidity",
)
"""Columns of every row of :func:`nucleus_table`, in CSV order."""

COLOUR_COLUMNS = ("mean_r", "mean_g", "mean_b", "mean_intensity")
"""Columns added when the image is given."""

MICRON_COLUMNS = ("area_um2", "centroid_x_um", "centroid_y_um")
"""Columns added when the pixel size is given."""

NUCLEUS_COLUMNS = SHAPE_COLUMNS + COLOUR_COLUMNS + MICRON_COLUMNS
"""Every column :func:`nucleus_table` can give, in the fixed CSV order."""

NUCLEUS_COLOR = (0, 150, 255)
"""Default QuPath colour (r, g, b) of the nucleus class."""

# ITU-R BT.601 luma, the usual grey of an RGB image.
_GREY_WEIGHTS = (0.299, 0.587, 0.114)

_SKIMAGE_SHAPE = {
    "area": "area_px",
    "eccentricity": "eccentricity",
    "axis_major_length": "major_axis_px",
    "axis_minor_length": "minor_axis_px",
    "perimeter": "perimeter_px",
    "solidity": "solidity",
}


def nucleus_table(
    instances: np.ndarray, image: np.ndarray | None = None, mpp: float | None = None
) -> list[dict[str, Any]]:
    """One row (a dict of plain Python numbers) per nucleus id > 0, sorted by id.

    Shape columns (:data:`SHAPE_COLUMNS`) are skimage's: centroids are means of pixel indices
    (``x`` = column, ``y`` = row), axes and eccentricity those of the ellipse with the same
    second central moments, the perimeter skimage's 4-neighbourhood estimate and solidity the
    area over the area of the convex hull. An id may hold several separate parts; it is measured
    as one object.

    With ``image`` (``(H, W, 3)`` uint8, the map's size) the mean red, green and blue of each
    nucleus and the mean grey ``0.299 R + 0.587 G + 0.114 B`` are added; with ``mpp`` (µm per
    pixel) the area in µm² and the centroid in µm.

    Raises:
        ValueError: ``instances`` is not a 2-D map of non-negative integers, ``image`` is not
            uint8 RGB of the same height and width, or ``mpp`` is not a positive number.
    """
    instances = _check_instances(instances)
    if image is not None:
        image = _check_image(image, instances.shape)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"mpp (µm per pixel) must be a positive number, got {mpp}")
    if not instances.any():
        return []
    properties = ["label", "centroid", *_SKIMAGE_SHAPE]
    if image is not None:
        properties.append("intensity_mean")
    table = regionprops_table(instances, intensity_image=image, properties=properties)
    rows = []
    for k in range(len(table["label"])):
        row: dict[str, Any] = {
            "id": int(table["label"][k]),
            "centroid_x": float(table["centroid-1"][k]),
            "centroid_y": float(table["centroid-0"][k]),
        }
        row.update({ours: float(table[theirs][k]) for theirs, ours in _SKIMAGE_SHAPE.items()})
        row["area_px"] = int(table["area"][k])
        if image is not None:
            means = [float(table[f"intensity_mean-{c}"][k]) for c in range(3)]
            row["mean_r"], row["mean_g"], row["mean_b"] = means
            # The mean of a weighted sum is the weighted sum of the means: no grey image needed.
            row["mean_intensity"] = sum(w * m for w, m in zip(_GREY_WEIGHTS, means, strict=True))
        if mpp is not None:
            row["area_um2"] = row["area_px"] * mpp * mpp
            row["centroid_x_um"] = row["centroid_x"] * mpp
            row["centroid_y_um"] = row["centroid_y"] * mpp
        rows.append({column: row[column] for column in NUCLEUS_COLUMNS if column in row})
    return rows


def write_nucleus_csv(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> int:
    """Write ``rows`` (as from :func:`nucleus_table`) as CSV with a header; returns their number.

    ``columns`` defaults to the columns of :data:`NUCLEUS_COLUMNS` that any row holds, in that
    order, or :data:`SHAPE_COLUMNS` when there are no rows (then only the header is written).
    A row lacking a column gets an empty cell. The file appears only once completely written.

    Raises:
        ValueError: a row holds a column that is not written.
    """
    if columns is None:
        present = {key for row in rows for key in row}
        columns = [c for c in NUCLEUS_COLUMNS if c in present] if rows else list(SHAPE_COLUMNS)
        present.difference_update(NUCLEUS_COLUMNS)
    else:
        present = {key for row in rows for key in row}.difference(columns)
    if present:
        raise ValueError(f"rows hold columns that are not written: {', '.join(sorted(present))}")
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def nucleus_features(
    instances: np.ndarray,
    class_name: str = "Nucleus",
    offset: tuple[float, float] = (0, 0),
    *,
    color: tuple[int, int, int] = NUCLEUS_COLOR,
) -> list[dict[str, Any]]:
    """One GeoJSON Feature per nucleus id > 0, sorted by id: a QuPath detection of ``class_name``.

    The geometry follows pixel edges in pixel coordinates plus ``offset`` ``(x, y)`` (e.g. the
    tile's top-left corner in the slide); it is a Polygon, or a MultiPolygon when the id holds
    several separate parts (parts touching only at a corner count as separate), holes kept. The
    id is stored as ``properties.id`` and, so that QuPath shows it, as the measurement ``id``.

    Raises:
        ValueError: ``instances`` is not a 2-D map of non-negative integers.
    """
    instances = _check_instances(instances)
    ids = np.unique(instances)
    ids = ids[ids > 0]
    if not ids.size:
        return []
    # The tracer wants ids 1..n: the position of each id among the sorted ids, plus one.
    regions = np.where(instances > 0, np.searchsorted(ids, instances) + 1, 0)
    geometries = _trace_regions(regions, len(ids), offset[0], offset[1])
    classification = {"name": class_name, "color": [int(c) for c in color]}
    return [
        {
            "type": "Feature",
            "geometry": mapping(geometry),
            "properties": {
                "objectType": "detection",
                "classification": dict(classification),
                "id": int(nucleus),
                "measurements": {"id": int(nucleus)},
            },
        }
        for nucleus, geometry in zip(ids, geometries, strict=True)
    ]


def write_nucleus_geojson(
    path: str | Path,
    instances: np.ndarray,
    class_name: str = "Nucleus",
    *,
    offset: tuple[float, float] = (0, 0),
    color: tuple[int, int, int] = NUCLEUS_COLOR,
) -> int:
    """Write :func:`nucleus_features` as a GeoJSON FeatureCollection; returns the number of nuclei.

    QuPath imports the file with File > Import objects; the file appears only once completely
    written.
    """
    return write_geojson(path, nucleus_features(instances, class_name, offset, color=color))


def _check_instances(instances: np.ndarray) -> np.ndarray:
    instances = np.asarray(instances)
    if instances.ndim != 2:
        raise ValueError(f"an instance map must be 2-D (height, width), got shape {instances.shape}")
    if not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(f"an instance map must hold integer ids, got dtype {instances.dtype}")
    if instances.size and instances.min() < 0:
        raise ValueError(f"instance ids must be >= 0 (0 is background), found {instances.min()}")
    return instances


def _check_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"the image must be RGB (height, width, 3), got shape {image.shape}")
    if image.shape[:2] != shape:
        raise ValueError(
            f"the image is {image.shape[0]} x {image.shape[1]} pixels but the instance map is "
            f"{shape[0]} x {shape[1]}"
        )
    if image.dtype != np.uint8:
        raise ValueError(f"the image must be uint8, got dtype {image.dtype}")
    return image
