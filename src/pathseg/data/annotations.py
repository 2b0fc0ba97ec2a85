"""Polygon annotations of a slide (QuPath GeoJSON, Aperio ImageScope XML) and their label rasters.

Annotations are read into :class:`Annotation` objects whose geometry is a valid shapely
(Multi)Polygon in level-0 pixel coordinates. :func:`class_indices` maps their class names onto a
:class:`~pathseg.data.classes.ClassMap`, and :func:`rasterize` / :func:`rasterize_instances` paint
them into a box of the slide at some downsample.

Rasterisation rule
------------------
A raster at downsample ``d`` over the box ``(x0, y0, w, h)`` has ``round(h / d)`` rows and
``round(w / d)`` columns; pixel ``(i, j)`` is painted when its centre
``(x0 + (j + 0.5) d, y0 + (i + 0.5) d)`` lies inside the polygon (holes excluded). A centre that
falls exactly on an edge belongs to the polygon on the edge's left or top side only (the usual
"top-left" fill rule), so two polygons sharing an edge never both claim a pixel and a pixel-edge
polygon from a vectorised mask rasterises back to exactly that mask.

Overlaps are painted in file order: a later annotation takes the pixels it shares with earlier
ones. That is QuPath's drawing order (an object drawn later is drawn on top).
"""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from pathseg.data.classes import ClassMap
from pathseg.errors import ConfigError, DataError

__all__ = [
    "Annotation",
    "AnnotationWarning",
    "Box",
    "class_indices",
    "clip_to_slide",
    "rasterize",
    "rasterize_instances",
    "read_annotations",
]

Box: TypeAlias = tuple[float, float, float, float]
"""``(x, y, width, height)`` in level-0 pixels."""

GEOJSON_SUFFIXES = (".geojson", ".json")
XML_SUFFIXES = (".xml",)

# QuPath 0.2 wrote the object type as a feature's "id"; that is no name for the object.
_QUPATH_TYPE_IDS = {"PathAnnotationObject", "PathDetectionObject", "PathCellObject", "PathTileObject"}

_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


class AnnotationWarning(UserWarning):
    """Part of an annotation file was skipped or repaired; the rest is used."""


@dataclass
class Annotation:
    """One annotated object: a valid (Multi)Polygon in level-0 coordinates, its class and name."""

    geometry: Polygon | MultiPolygon
    class_name: str | None = None
    name: str | None = None


@dataclass
class _Tally:
    """What a parser left out or changed, reported as one warning each once the file is read."""

    skipped: int = 0
    repaired: int = 0
    emptied: int = 0
    cut_out: int = 0


# ----------------------------------------------------------------------------------------- reading


def read_annotations(path: str | Path) -> list[Annotation]:
    """Read polygon annotations from QuPath GeoJSON (``.geojson``/``.json``) or Aperio ImageScope
    XML (``.xml``), in file order.

    GeoJSON: a FeatureCollection, a list of Features or one Feature. Polygon and MultiPolygon
    geometries are kept (a GeometryCollection contributes its polygonal parts); the class is
    ``properties.classification.name`` (or ``properties.classification`` given as a string);
    the name is ``properties.name`` or the feature's ``id``. Points and lines are skipped.

    ImageScope XML: every ``Annotation/Regions/Region`` with at least three distinct vertices
    is one annotation; its class is the Annotation's ``Name``, else the Name of its first
    ``Attributes/Attribute``, else None. Negative regions (``NegativeROA="1"``) are cut out of
    the other regions of their Annotation.

    Invalid polygons (self-intersections, bow-ties) are repaired with ``shapely.make_valid``;
    what was skipped or repaired is reported in one :class:`AnnotationWarning` per kind.

    Raises:
        DataError: the file is missing, empty, not valid JSON/XML, not structured as above, or
            holds no polygon.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in GEOJSON_SUFFIXES + XML_SUFFIXES:
        raise DataError(
            path, f"unknown annotation format {suffix or '(no suffix)'} (use .geojson, .json or .xml)"
        )
    data = _read_bytes(path)
    tally = _Tally()
    if suffix in GEOJSON_SUFFIXES:
        annotations = _parse_geojson(data, path, tally)
        skipped_what = "features that are not polygons (points or lines)"
    else:
        annotations = _parse_imagescope(data, path, tally)
        skipped_what = "regions with fewer than 3 distinct vertices"
    if not annotations:
        reason = f" ({tally.skipped} {skipped_what})" if tally.skipped else ""
        raise DataError(path, f"no polygon annotations found{reason}")
    if tally.skipped:
        _warn(path, f"skipped {tally.skipped} {skipped_what}")
    if tally.repaired:
        dropped = f"; {tally.emptied} had no area left and were dropped" if tally.emptied else ""
        _warn(
            path, f"repaired {tally.repaired} invalid polygons (self-intersections) with make_valid{dropped}"
        )
    if tally.cut_out:
        _warn(path, f"cut {tally.cut_out} negative regions out of the other regions of their layer")
    return annotations


def _warn(path: Path, message: str) -> None:
    warnings.warn(f"{path}: {message}", AnnotationWarning, stacklevel=3)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise DataError(path, "file does not exist")
    if not path.is_file():
        raise DataError(path, "not a file")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(path, "file is empty")
    return data


def _made_valid(geometry: BaseGeometry, tally: _Tally) -> Polygon | MultiPolygon | None:
    """The polygonal part of ``geometry``, repaired when invalid; None when nothing with an area is left."""
    polygonal = _polygonal_part(geometry)
    if polygonal is None:
        return None
    if not polygonal.is_valid:
        tally.repaired += 1
        # "structure" keeps the union of what the outline encloses (a freehand loop that crosses
        # itself stays filled), where the default would alternate filled and empty areas. GEOS
        # rarely leaves a near-coincident self-touch behind (seen on MoNuSeg outlines); a second
        # pass settles it.
        for _ in range(2):
            polygonal = _polygonal_part(
                shapely.make_valid(polygonal, method="structure", keep_collapsed=False)
            )
            if polygonal is None or polygonal.is_valid:
                break
        if polygonal is None:
            tally.emptied += 1
    return polygonal


def _polygonal_part(geometry: BaseGeometry) -> Polygon | MultiPolygon | None:
    """Polygons of a geometry (collections: all their polygons as one geometry); None when there are none."""
    if isinstance(geometry, Polygon | MultiPolygon):
        return None if geometry.is_empty else geometry
    if isinstance(geometry, GeometryCollection):
        polygons = [p for g in geometry.geoms if (p := _polygonal_part(g)) is not None]
        if not polygons:
            return None
        flat = [part for p in polygons for part in shapely.get_parts(p)]
        return flat[0] if len(flat) == 1 else MultiPolygon(flat)
    return None


# GeoJSON ------------------------------------------------------------------------------------------


def _parse_geojson(data: bytes, path: Path, tally: _Tally) -> list[Annotation]:
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    annotations = []
    for number, feature in enumerate(_features(document, path), start=1):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise DataError(path, f"item {number} is not a GeoJSON Feature")
        geometry = feature.get("geometry")
        if geometry is None:
            tally.skipped += 1
            continue
        polygonal = _made_valid(_geojson_geometry(geometry, path, number), tally)
        if polygonal is None:
            tally.skipped += 1
            continue
        properties = feature.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        annotations.append(
            Annotation(polygonal, _qupath_class(properties), _feature_name(feature, properties))
        )
    return annotations


def _features(document: Any, path: Path) -> list[Any]:
    """The features of a FeatureCollection, a plain list of Features or a single Feature."""
    expected = "expected a FeatureCollection, a list of Features or a Feature"
    if isinstance(document, list):
        return document
    if not isinstance(document, dict):
        raise DataError(path, f"{expected}, found a JSON {_JSON_TYPES.get(type(document), 'value')}")
    kind = document.get("type")
    if kind == "FeatureCollection":
        features = document.get("features")
        if not isinstance(features, list):
            raise DataError(path, "FeatureCollection has no 'features' list")
        return features
    if kind == "Feature":
        return [document]
    found = f"type {kind!r}" if kind is not None else "an object without 'type'"
    raise DataError(path, f"{expected}, found {found}")


def _geojson_geometry(geometry: Any, path: Path, number: int) -> BaseGeometry:
    try:
        shape = shapely.geometry.shape(geometry)
    except Exception as exc:  # shapely raises ValueError, TypeError, KeyError, GEOSException ...
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"feature {number}: cannot read its geometry ({detail})") from None
    if not np.isfinite(shapely.get_coordinates(shape)).all():
        raise DataError(path, f"feature {number}: geometry has coordinates that are not finite numbers")
    return shape


def _qupath_class(properties: dict[str, Any]) -> str | None:
    """``classification.name`` (QuPath >= 0.2, with ``color`` or the older ``colorRGB``) or a
    plain string ``classification``."""
    classification = properties.get("classification")
    if isinstance(classification, dict):
        classification = classification.get("name")
    if isinstance(classification, str) and classification.strip():
        return classification.strip()
    return None


def _feature_name(feature: dict[str, Any], properties: dict[str, Any]) -> str | None:
    name = properties.get("name")
    if isinstance(name, str) and name.strip():
        return name.strip()
    identifier = feature.get("id")
    if isinstance(identifier, str | int) and str(identifier) not in _QUPATH_TYPE_IDS:
        return str(identifier)
    return None


# Aperio ImageScope XML ------------------------------------------------------------------------------


def _parse_imagescope(data: bytes, path: Path, tally: _Tally) -> list[Annotation]:
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(path, f"not valid XML ({exc})") from None
    if root.tag != "Annotations":
        raise DataError(
            path, f"not an ImageScope annotation file (root element <{root.tag}>, expected <Annotations>)"
        )
    if root.find("Annotation/Regions/Region") is None:
        raise DataError(
            path, "no regions found (expected Annotations/Annotation/Regions/Region/Vertices/Vertex)"
        )
    annotations = []
    for layer in root.findall("Annotation"):
        annotations += _layer_annotations(layer, path, tally)
    return annotations


def _layer_annotations(layer: ET.Element, path: Path, tally: _Tally) -> list[Annotation]:
    """The regions of one ImageScope Annotation (a layer sharing one class), negative regions cut out."""
    class_name = _imagescope_class(layer)
    kept: list[Annotation] = []
    cut_outs: list[BaseGeometry] = []
    for region in layer.findall("Regions/Region"):
        vertices = _vertices(region, path)
        if len(set(vertices)) < 3:
            tally.skipped += 1
            continue
        polygon = _made_valid(Polygon(vertices), tally)
        if polygon is None:
            continue
        if region.get("NegativeROA") == "1":
            cut_outs.append(polygon)
        else:
            name = region.get("Text") or region.get("Id")
            kept.append(Annotation(polygon, class_name, name or None))
    if cut_outs:
        negative = shapely.union_all(cut_outs)
        kept = [replace(a, geometry=_polygonal_part(a.geometry.difference(negative))) for a in kept]
        kept = [a for a in kept if a.geometry is not None]
        tally.cut_out += len(cut_outs)
    return kept


def _imagescope_class(layer: ET.Element) -> str | None:
    name = (layer.get("Name") or "").strip()
    if name:
        return name
    for attribute in layer.findall("Attributes/Attribute"):
        name = (attribute.get("Name") or "").strip()
        if name:
            return name
    return None


def _vertices(region: ET.Element, path: Path) -> list[tuple[float, float]]:
    vertices = []
    for vertex in region.findall("Vertices/Vertex"):
        try:
            x, y = float(vertex.get("X")), float(vertex.get("Y"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            x = y = math.nan
        if not (math.isfinite(x) and math.isfinite(y)):
            raise DataError(
                path,
                f"region {region.get('Id', '?')}: vertex X={vertex.get('X')!r} Y={vertex.get('Y')!r} "
                "is not a pair of numbers",
            )
        vertices.append((x, y))
    return vertices


# ------------------------------------------------------------------------------------------ classes


def class_indices(
    annotations: Sequence[Annotation],
    class_map: ClassMap,
    path: str | Path,
    default_class: str | None = None,
) -> list[int]:
    """The class index of every annotation in ``class_map`` (names matched case-insensitively).

    Annotations without a class get ``default_class``. A class named ``Ignore*`` (QuPath's
    class for regions to leave out) maps to ``class_map.ignore_index`` unless the map has a
    class of that name.

    Raises:
        DataError: (naming ``path``) a class that is not in the map, or annotations without a
            class and no ``default_class``.
        ConfigError: ``default_class`` is not in the map.
    """
    lookup = {name.lower(): index for index, name in enumerate(class_map.names)}
    listed = ", ".join(class_map.names)

    def index_of(name: str) -> int | None:
        key = name.strip().lower()
        if key in lookup:
            return lookup[key]
        return class_map.ignore_index if key.startswith("ignore") else None

    unknown = sorted({a.class_name for a in annotations if a.class_name and index_of(a.class_name) is None})
    if unknown:
        others = f"; also unknown: {', '.join(repr(n) for n in unknown[1:])}" if len(unknown) > 1 else ""
        raise DataError(path, f"class {unknown[0]!r} is not in the class map (classes: {listed}){others}")
    default_index = None
    if default_class is not None:
        default_index = index_of(default_class)
        if default_index is None:
            raise ConfigError(f"default class {default_class!r} is not in the class map (classes: {listed})")
    unclassified = sum(a.class_name is None for a in annotations)
    if unclassified and default_index is None:
        raise DataError(path, f"{unclassified} annotations have no class; pass --default-class")
    return [default_index if a.class_name is None else index_of(a.class_name) for a in annotations]  # type: ignore[misc]


def clip_to_slide(
    annotations: Sequence[Annotation], dimensions: tuple[int, int], path: str | Path
) -> list[Annotation]:
    """``annotations`` clipped to a slide of level-0 size ``dimensions`` (width, height).

    Annotations partly outside are clipped silently; those entirely outside (or only touching
    the border) are dropped with one :class:`AnnotationWarning` giving their number.

    Raises:
        DataError: (naming ``path``) every annotation lies outside the slide.
    """
    width, height = dimensions
    slide = shapely.box(0, 0, width, height)
    geometries = np.array([a.geometry for a in annotations], dtype=object)
    within = shapely.within(geometries, slide)
    kept = []
    for annotation, inside in zip(annotations, within, strict=True):
        if inside:
            kept.append(annotation)
            continue
        clipped = _polygonal_part(annotation.geometry.intersection(slide))
        if clipped is not None:
            kept.append(replace(annotation, geometry=clipped))
    outside = len(annotations) - len(kept)
    if not kept:
        raise DataError(path, f"all {outside} annotations lie outside the slide ({width} x {height} pixels)")
    if outside:
        message = f"{outside} annotations lie outside the slide ({width} x {height} pixels) and are left out"
        warnings.warn(
            f"{path}: {message}",
            AnnotationWarning,
            stacklevel=2,
        )
    return kept


# --------------------------------------------------------------------------------------- rasterising


def rasterize(
    annotations: Sequence[Annotation], indices: Sequence[int], box: Box, downsample: float, fill: int
) -> np.ndarray:
    """A ``uint8`` label raster of ``box`` at ``downsample``: each pixel takes the index of the
    last annotation (in file order) containing its centre, or ``fill`` when none does.

    ``fill`` is the ignore index for sparse annotations (a few drawn regions) or the background
    index when the whole field is annotated. See the module docstring for the exact rule.
    """
    if len(indices) != len(annotations):
        raise ValueError(f"{len(annotations)} annotations but {len(indices)} indices")
    values = np.array([*indices, fill], dtype=np.int64)
    if values.min() < 0 or values.max() > 255:
        raise ValueError(f"class indices and fill must be in 0..255, got {values.min()}..{values.max()}")
    owner = _owner_map([a.geometry for a in annotations], box, downsample)
    # Owner -1 (no annotation) picks the last entry of ``values``: the fill.
    return values.astype(np.uint8)[owner]


def rasterize_instances(annotations: Sequence[Annotation], box: Box, downsample: float) -> np.ndarray:
    """An ``int32`` instance map of ``box`` at ``downsample``: annotation ``k`` (0-based, file
    order) paints ``k + 1``, 0 where there is none. A later annotation takes the pixels it shares
    with earlier ones, so an object entirely covered by later ones has no pixel left."""
    return _owner_map([a.geometry for a in annotations], box, downsample) + 1


def _owner_map(geometries: Sequence[BaseGeometry], box: Box, downsample: float) -> np.ndarray:
    """``int32`` (rows, cols): position in ``geometries`` of the last one holding each pixel
    centre, -1 where none does.

    A scanline fill over all polygons at once: every edge is cut with the horizontal lines
    through the pixel centres, the cuts of one polygon on one row pair up into inside runs
    (even-odd, so holes fall out by themselves), and each run paints its pixels.
    """
    if downsample <= 0:
        raise ValueError(f"downsample must be positive, got {downsample}")
    x0, y0, width, height = box
    rows, cols = round(height / downsample), round(width / downsample)
    owner = np.full(rows * cols, -1, dtype=np.int32)
    candidates = _overlapping(geometries, box)
    if rows == 0 or cols == 0 or candidates.size == 0:
        return owner.reshape(rows, cols)
    start, end, edge_owner = _edges([geometries[k] for k in candidates], x0, y0, downsample)
    owner_of_cut, row, x = _row_cuts(start, end, edge_owner, rows)
    order = np.lexsort((x, row, owner_of_cut))
    owner_of_cut, row, x = owner_of_cut[order], row[order], x[order]
    # Cuts of one polygon on one row come in pairs (every closed ring crosses a line an even
    # number of times): [enter, leave). Pixel j is inside when enter <= j + 0.5 < leave.
    first_col = np.clip(np.ceil(x[0::2] - 0.5), 0, cols).astype(np.int64)
    stop_col = np.clip(np.ceil(x[1::2] - 0.5), 0, cols).astype(np.int64)
    run, col = _ranges(first_col, np.maximum(stop_col - first_col, 0))
    pixel = row[0::2][run] * cols + col
    # The later annotation wins where several hold a pixel: keep the highest position.
    np.maximum.at(owner, pixel, candidates[owner_of_cut[0::2][run]].astype(np.int32))
    return owner.reshape(rows, cols)


def _overlapping(geometries: Sequence[BaseGeometry], box: Box) -> np.ndarray:
    """Positions of the geometries whose bounding box overlaps ``box``."""
    if not geometries:
        return np.zeros(0, dtype=np.int64)
    x0, y0, width, height = box
    min_x, min_y, max_x, max_y = shapely.bounds(np.asarray(geometries, dtype=object)).T
    overlaps = (min_x < x0 + width) & (max_x > x0) & (min_y < y0 + height) & (max_y > y0)
    return np.flatnonzero(overlaps)


def _edges(
    geometries: Sequence[BaseGeometry], x0: float, y0: float, downsample: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start and end points (raster units: pixel (i, j) covers [j, j+1) x [i, i+1)) of every ring
    edge of every polygon, and the position of the geometry each edge belongs to."""
    parts, part_owner = shapely.get_parts(np.asarray(geometries, dtype=object), return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    points, point_ring = shapely.get_coordinates(rings, return_index=True)
    points = (points - (x0, y0)) / downsample
    same_ring = point_ring[:-1] == point_ring[1:]  # rings are closed: consecutive points are edges
    edge_owner = part_owner[ring_part[point_ring[:-1][same_ring]]]
    return points[:-1][same_ring], points[1:][same_ring], edge_owner


def _row_cuts(
    start: np.ndarray, end: np.ndarray, edge_owner: np.ndarray, rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(owner, row, x) of every crossing of an edge with a row's centre line y = row + 0.5.

    An edge counts for the lines with ``y_low <= y < y_high``: a vertex on a line is counted
    once, horizontal edges never, and a centre on a top edge is inside, on a bottom edge not.
    """
    y_low = np.minimum(start[:, 1], end[:, 1])
    y_high = np.maximum(start[:, 1], end[:, 1])
    first_row = np.clip(np.ceil(y_low - 0.5), 0, rows).astype(np.int64)
    stop_row = np.clip(np.ceil(y_high - 0.5), 0, rows).astype(np.int64)
    edge, row = _ranges(first_row, stop_row - first_row)
    (x_start, y_start), (x_end, y_end) = start[edge].T, end[edge].T
    x = x_start + (row + 0.5 - y_start) * (x_end - x_start) / (y_end - y_start)
    return edge_owner[edge], row, x


def _ranges(first: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All ranges ``first[k] .. first[k] + count[k] - 1`` concatenated, with the k of each element."""
    which = np.repeat(np.arange(count.size), count)
    offset = np.arange(which.size) - np.repeat(np.cumsum(count) - count, count)
    return which, first[which] + offset
