"""Label raster -> polygons in slide coordinates, and QuPath GeoJSON.

:func:`label_polygons` turns a class raster (any 2-D array-like that numpy-slices, e.g. a zarr
array far larger than memory) into one geometry per connected region of each class. It reads
the raster in square chunks, so memory follows the chunk size, not the slide size.

How one chunk is traced (all in numpy, no loop per pixel):

1. Regions are labelled per class with :func:`scipy.ndimage.label`, **8-connected**: pixels
   of one class that touch only at a corner belong to the same region. A valid polygon may
   not pinch to a point, so such a region comes out as a ``MultiPolygon`` whose parts touch
   at those corners; otherwise it is a ``Polygon``. Holes are kept.
2. Every pixel edge between a region and anything else becomes a directed edge with the
   region on its right as seen on screen (y down), and runs of such edges along one grid
   line become one straight segment. Segment ends are pixel corners, so polygons follow
   pixel edges exactly: pixel ``(i, j)`` is the square ``[j, j+1) x [i, i+1)``.
3. Each segment is linked to the segment leaving its end point. Where two pixels of a region
   meet only at a corner, two segments leave that point; turning right keeps to the same
   pixel, so loops never run through a point-wide neck. If a loop then passes through such
   a point twice, the two passes are swapped, which splits it into two simple loops touching
   there (an outline and a hole that touches it, or two holes).
4. The loops are the cycles of that "next segment" permutation. A loop with positive
   shoelace area (in x-right, y-down numbers) encloses its region, a negative one is a hole.
   Holes of a region with several parts go to the smallest part around them.

Regions cut by chunk seams are traced piece by piece and united with
:func:`shapely.union_all` once no later chunk can touch them (after each row of chunks), so
every region comes out as exactly one geometry and only the pieces at seams are ever united.
Merging works in integer raster pixels; geometries are scaled to level-0 coordinates
(``x * downsample + origin``) only when they are yielded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import shapely
from scipy import ndimage
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import LinearRing, MultiPolygon, Polygon, mapping

from pathseg.data.io import atomic_output
from pathseg.slides.ometiff import IGNORE_INDEX

__all__ = ["label_polygons", "qupath_features", "write_geojson"]

# Segment directions, clockwise on screen, with their (dx, dy) steps: turning right from d gives (d + 1) % 4.
EAST, SOUTH, WEST, NORTH = 0, 1, 2, 3
_STEP_X = np.array([1, 0, -1, 0])
_STEP_Y = np.array([0, 1, 0, -1])

_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class LabelRaster(Protocol):
    """What the functions here need from a label raster: ``shape`` and numpy slicing."""

    shape: tuple[int, ...]

    def __getitem__(self, key: Any) -> Any: ...


Region = tuple[int, Polygon | MultiPolygon]


def label_polygons(
    labels: LabelRaster,
    *,
    downsample: float = 1.0,
    origin: tuple[float, float] = (0.0, 0.0),
    classes: Sequence[int] | None = None,
    chunk: int = 2048,
    simplify: float = 0.0,
) -> Iterator[Region]:
    """Yield ``(class index, geometry)`` for every 8-connected region of every chosen class.

    Args:
        labels: 2-D class raster (``labels[y0:y1, x0:x1]`` gives a numpy array) at ``downsample``
            with its top-left pixel corner at level-0 point ``origin``.
        downsample: level-0 pixels per raster pixel.
        origin: level-0 ``(x, y)`` of the raster's top-left corner.
        classes: class indices to vectorise; default: every value except 0 (background) and
            255 (ignore).
        chunk: side of the square pieces read at a time (memory is a few times chunk²).
        simplify: if > 0, tolerance in level-0 pixels for
            ``shapely.simplify(preserve_topology=True)``, applied after pieces are merged.

    Yields:
        The class index and a ``Polygon`` or ``MultiPolygon`` (parts touching at corners) in
        level-0 coordinates. Order: regions inside one chunk first, in chunk order; regions
        crossing seams after the row of chunks that completes them.
    """
    height, width = _check_raster(labels)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not downsample > 0:
        raise ValueError(f"downsample must be > 0, got {downsample}")
    wanted = _wanted_table(classes)
    scale, shift = float(downsample), np.array(origin, dtype=float)

    def finish(geometry: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
        geometry = shapely.transform(geometry, lambda xy: xy * scale + shift)
        if simplify > 0:
            geometry = shapely.simplify(geometry, simplify, preserve_topology=True)
        return geometry

    seams = _SeamMerger()
    for y0 in range(0, height, chunk):
        y1 = min(y0 + chunk, height)
        for x0 in range(0, width, chunk):
            x1 = min(x0 + chunk, width)
            block = np.asarray(labels[y0:y1, x0:x1])
            for cls, geometry, box in _chunk_regions(block, wanted, x0, y0):
                if _touches_seam(box, (x0, y0, x1, y1), (width, height)):
                    seams.add(cls, geometry)
                else:
                    yield cls, finish(geometry)
        for cls, geometry in seams.flush(complete_above=y1 if y1 < height else math.inf):
            yield cls, finish(geometry)


def _check_raster(labels: LabelRaster) -> tuple[int, int]:
    shape = tuple(labels.shape)
    if len(shape) != 2:
        raise ValueError(f"a label raster must be 2-D, got shape {shape}")
    dtype = getattr(labels, "dtype", None)
    if dtype is not None and not np.issubdtype(np.dtype(dtype), np.integer):
        raise ValueError(f"a label raster must hold integer class indices, got {dtype}")
    return int(shape[0]), int(shape[1])


def _wanted_table(classes: Sequence[int] | None) -> np.ndarray:
    """Boolean lookup ``table[value]``: is this raster value vectorised?"""
    table = np.zeros(256, dtype=bool)
    if classes is None:
        table[1:IGNORE_INDEX] = True
        return table
    for cls in classes:
        if not 0 <= int(cls) <= 255:
            raise ValueError(f"class indices are 0..255, got {cls}")
        table[int(cls)] = True
    return table


def _touches_seam(box: tuple[int, int, int, int], chunk_box: tuple[int, ...], size: tuple[int, int]) -> bool:
    """Does a region's pixel box (x0, y0, x1, y1) reach a chunk side shared with another chunk?"""
    bx0, by0, bx1, by1 = box
    cx0, cy0, cx1, cy1 = chunk_box
    width, height = size
    return (
        (bx0 == cx0 and cx0 > 0)
        or (by0 == cy0 and cy0 > 0)
        or (bx1 == cx1 and cx1 < width)
        or (by1 == cy1 and cy1 < height)
    )


# --- one chunk -------------------------------------------------------------------------------


def _chunk_regions(
    block: np.ndarray, wanted: np.ndarray, x0: int, y0: int
) -> Iterator[tuple[int, Polygon | MultiPolygon, tuple[int, int, int, int]]]:
    """Regions of one chunk: (class, geometry in raster pixels, pixel box x0, y0, x1, y1)."""
    if block.size == 0:
        return
    if int(block.min()) < 0 or int(block.max()) > 255:
        raise ValueError(f"label values must be 0..255, got {int(block.min())}..{int(block.max())}")
    regions, region_class = _label_regions(block.astype(np.uint8, copy=False), wanted)
    if not region_class.size:
        return
    geometries = _trace_regions(regions, len(region_class), x0, y0)
    for index, (rows, cols) in enumerate(ndimage.find_objects(regions)):
        box = (x0 + cols.start, y0 + rows.start, x0 + cols.stop, y0 + rows.stop)
        yield int(region_class[index]), geometries[index], box


def _label_regions(block: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One id per 8-connected region of each wanted class (0 = not vectorised), and each id's class."""
    regions = np.zeros(block.shape, dtype=np.int32)
    region_class = np.zeros(0, dtype=np.int64)
    present = np.flatnonzero((np.bincount(block.ravel(), minlength=256) > 0) & wanted)
    for cls in present:
        ids, count = ndimage.label(block == cls, structure=_EIGHT_CONNECTED)
        inside = ids > 0
        regions[inside] = ids[inside] + len(region_class)
        region_class = np.r_[region_class, np.full(count, cls)]
    return regions, region_class


def _trace_regions(regions: np.ndarray, count: int, x0: int, y0: int) -> list[Polygon | MultiPolygon]:
    """The geometry of each region id 1..count (in raster pixels, offset by the chunk origin)."""
    seg = _boundary_segments(regions)
    following = _link_segments(seg)
    loop, order = _loops(following)
    loop_count = int(loop.max()) + 1
    # Loop area from the shoelace formula; summing over segments needs no ordering.
    twice_area = np.bincount(
        loop, weights=seg["x"] * seg["end_y"] - seg["end_x"] * seg["y"], minlength=loop_count
    )
    first_segment = order[np.r_[0, np.flatnonzero(np.diff(loop[order])) + 1]]
    coords = np.column_stack([seg["x"][order] + x0, seg["y"][order] + y0]).astype(float)
    rings = shapely.linearrings(coords, indices=loop[order])
    return _assemble(rings, twice_area > 0, seg["region"][first_segment], count)


def _boundary_segments(regions: np.ndarray) -> dict[str, np.ndarray]:
    """Straight runs of region boundary, directed with the region on the right (screen view).

    Returns arrays ``x, y`` (start corner), ``end_x, end_y``, ``direction`` and ``region``.
    """
    padded = np.pad(regions, 1)
    above, below = padded[:-1, 1:-1], padded[1:, 1:-1]  # across horizontal grid line y
    left, right = padded[1:-1, :-1], padded[1:-1, 1:]  # across vertical grid line x
    parts = []
    # Top edges of region pixels run east, bottom edges west: (grid line y, column x).
    for owner, other, direction in ((below, above, EAST), (above, below, WEST)):
        line, first, last, region = _runs(owner, other)
        start = first if direction == EAST else last + 1
        parts.append((start, line, direction, last - first + 1, region))
    # Left edges run north, right edges south; transposed so runs go along y.
    for owner, other, direction in ((right.T, left.T, NORTH), (left.T, right.T, SOUTH)):
        line, first, last, region = _runs(owner, other)
        start = last + 1 if direction == NORTH else first
        parts.append((line, start, direction, last - first + 1, region))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    direction = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    length = np.concatenate([p[3] for p in parts])
    return {
        "x": x,
        "y": y,
        "end_x": x + _STEP_X[direction] * length,
        "end_y": y + _STEP_Y[direction] * length,
        "direction": direction,
        "region": np.concatenate([p[4] for p in parts]),
    }


def _runs(owner: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, ...]:
    """Runs of unit edges where ``owner`` is a region and ``other`` is not the same one.

    Both arrays are indexed (grid line, position along it); returns per run the line, the
    first and last position and the region id.
    """
    line, pos = np.nonzero((owner != 0) & (owner != other))
    region = owner[line, pos]
    breaks = (np.diff(line) != 0) | (np.diff(pos) != 1) | (np.diff(region) != 0)
    first = np.flatnonzero(np.r_[True, breaks]) if len(pos) else pos
    last = np.r_[first[1:], len(pos)] - 1
    return line[first], pos[first], pos[last], region[first]


def _link_segments(seg: dict[str, np.ndarray]) -> np.ndarray:
    """``following[s]``: the segment after ``s`` on its loop (a permutation of the segments)."""
    # A corner is identified together with the region, since up to four regions meet there.
    columns = int(seg["end_x"].max()) + 1  # every corner is some segment's end
    rows = int(seg["end_y"].max()) + 1
    start_key = (seg["region"].astype(np.int64) * rows + seg["y"]) * columns + seg["x"]
    end_key = (seg["region"].astype(np.int64) * rows + seg["end_y"]) * columns + seg["end_x"]
    by_start = np.argsort(start_key, kind="stable")
    sorted_keys = start_key[by_start]
    at = np.searchsorted(sorted_keys, end_key)
    following = by_start[at]
    # Two segments leave a corner where a region's pixels touch only diagonally: turn right
    # there, staying on the same pixel, so a loop never runs through a point-wide neck.
    second = np.minimum(at + 1, len(at) - 1)
    pinch = (sorted_keys[second] == end_key) & (at + 1 < len(at))
    turn_right = pinch & (seg["direction"][by_start[second]] == (seg["direction"] + 1) % 4)
    following[turn_right] = by_start[second][turn_right]
    _split_self_touching(following, by_start, sorted_keys)
    return following


def _split_self_touching(following: np.ndarray, by_start: np.ndarray, sorted_keys: np.ndarray) -> None:
    """Where one loop passes a corner twice, swap the two passes' successors (in place).

    A loop touching itself at a point is not a valid ring; swapping splits it into two simple
    loops touching there. Loops touch themselves without crossing, so every swap splits.
    """
    double = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if not double.size:
        return
    out_a, out_b = by_start[double], by_start[double + 1]
    loop = _cycle_ids(following)
    same = loop[out_a] == loop[out_b]
    previous = np.empty_like(following)
    previous[following] = np.arange(len(following))
    in_a, in_b = previous[out_a[same]], previous[out_b[same]]
    following[in_a], following[in_b] = following[in_b], following[in_a]


def _cycle_ids(following: np.ndarray) -> np.ndarray:
    """Which cycle of the permutation each element is on (ids 0, 1, ...)."""
    n = len(following)
    graph = csr_matrix((np.ones(n, dtype=np.int8), (np.arange(n), following)), shape=(n, n))
    return connected_components(graph, directed=True, connection="weak")[1]


def _loops(following: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cycle id of every segment, and the segments sorted by cycle, each cycle in walking order.

    The position on a cycle comes from pointer jumping: every segment learns its number of
    steps to the cycle's last segment in log2(length) vectorised rounds.
    """
    loop = _cycle_ids(following)
    _, first = np.unique(loop, return_index=True)
    everything = np.arange(len(following))
    is_last = following == first[loop]
    jump = np.where(is_last, everything, following)
    to_last = (~is_last).astype(np.int64)
    while not np.array_equal(jump[jump], jump):
        to_last = to_last + to_last[jump]
        jump = jump[jump]
    return loop, np.lexsort((-to_last, loop))


def _assemble(
    rings: np.ndarray, is_shell: np.ndarray, loop_region: np.ndarray, count: int
) -> list[Polygon | MultiPolygon]:
    """Polygons from loops, per region id 1..count: shells with their holes."""
    shells_per_region = np.bincount(loop_region[is_shell], minlength=count + 1)
    # Regions with one shell (nearly all): every hole is its hole. Shell first, then holes.
    simple = np.flatnonzero(shells_per_region[loop_region] == 1)
    simple = simple[np.lexsort((~is_shell[simple], loop_region[simple]))]
    simple_regions, polygon_index = np.unique(loop_region[simple], return_inverse=True)
    polygons = shapely.polygons(rings[simple], indices=polygon_index)
    result: list[Polygon | MultiPolygon | None] = [None] * count
    for region, polygon in zip(simple_regions, polygons, strict=True):
        result[region - 1] = polygon
    for region in np.flatnonzero(shells_per_region > 1):
        loops = np.flatnonzero(loop_region == region)
        shells = list(shapely.polygons(rings[loops[is_shell[loops]]]))
        result[region - 1] = _with_holes(shells, list(rings[loops[~is_shell[loops]]]))
    return result  # type: ignore[return-value]


def _with_holes(shells: list[Polygon], holes: list[LinearRing]) -> Polygon | MultiPolygon:
    """Shells (keeping their own holes) plus ``holes``, each given to the smallest shell around
    it: a part of a region may sit inside a hole of another part, touching it at a corner."""
    if len(shells) == 1:
        return Polygon(shells[0].exterior, [*shells[0].interiors, *holes])
    extra: list[list[LinearRing]] = [[] for _ in shells]
    if holes:
        points = _inside_points(np.array(holes))
        outlines = shapely.polygons(shapely.get_exterior_ring(shells))
        shapely.prepare(outlines)
        around = shapely.contains_xy(outlines[:, None], points[None, :, 0], points[None, :, 1])
        areas = shapely.area(outlines)[:, None]
        for hole, owner in zip(holes, np.argmin(np.where(around, areas, np.inf), axis=0), strict=True):
            extra[owner].append(hole)
    return MultiPolygon(
        [Polygon(s.exterior, [*s.interiors, *more]) for s, more in zip(shells, extra, strict=True)]
    )


def _inside_points(rings: np.ndarray) -> np.ndarray:
    """A point strictly inside each ring of pixel edges: the centre of the pixel inside its first edge.

    Rings follow pixel edges, so that point lies on no ring and inside no other region.
    """
    start = shapely.get_coordinates(shapely.get_point(rings, 0))
    step = np.sign(shapely.get_coordinates(shapely.get_point(rings, 1)) - start)
    # The inside of a counter-clockwise ring (in the plain x, y numbers) is on its left.
    side = np.where(shapely.is_ccw(rings), 1.0, -1.0)[:, None]
    left = np.column_stack([-step[:, 1], step[:, 0]])
    return start + 0.5 * step + 0.5 * side * left


# --- regions cut by chunk seams --------------------------------------------------------------


class _SeamMerger:
    """Pieces of regions that reach a chunk seam, held until no later chunk can touch them."""

    def __init__(self) -> None:
        self.classes: list[int] = []
        self.pieces: list[Polygon | MultiPolygon] = []

    def add(self, cls: int, piece: Polygon | MultiPolygon) -> None:
        self.classes.append(cls)
        self.pieces.append(piece)

    def flush(self, complete_above: float) -> Iterator[Region]:
        """Unite touching pieces of one class; yield the regions ending above ``complete_above``
        (a raster row: the bottom seam of the chunk row just read), keep the rest."""
        if not self.pieces:
            return
        parts = shapely.get_parts(self.pieces)
        piece_of = np.repeat(np.arange(len(self.pieces)), shapely.get_num_geometries(self.pieces))
        class_of = np.array(self.classes)[piece_of]
        # Pieces lie in different chunks and touch only along seams, where holes never reach:
        # testing the parts' outer rings is enough.
        outer = shapely.get_exterior_ring(parts)
        a, b = shapely.STRtree(outer).query(outer, predicate="intersects")
        across = (piece_of[a] != piece_of[b]) & (class_of[a] == class_of[b])
        a, b = a[across], b[across]
        touching = np.zeros(len(parts), dtype=bool)
        touching[a] = touching[b] = True
        count = len(self.pieces)
        links = csr_matrix((np.ones(len(a), dtype=np.int8), (piece_of[a], piece_of[b])), shape=(count, count))
        _, group = connected_components(links, directed=False)
        kept_classes: list[int] = []
        kept: list[Polygon | MultiPolygon] = []
        for members in _group_members(group):
            if len(members) == 1:
                region = self.pieces[members[0]]
            else:
                mine = np.isin(piece_of, members)
                region = _unite(parts[mine & touching], parts[mine & ~touching])
            cls = self.classes[members[0]]
            if region.bounds[3] < complete_above:
                yield cls, region
            else:
                kept_classes.append(cls)
                kept.append(region)
        self.classes, self.pieces = kept_classes, kept


def _group_members(group: np.ndarray) -> list[np.ndarray]:
    """Indices of each group's members, for group ids 0, 1, ..."""
    order = np.argsort(group, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(group[order])) + 1)


def _unite(touching: np.ndarray, untouched: np.ndarray) -> Polygon | MultiPolygon:
    """One region from the polygon parts of its pieces: the parts touching another piece are
    united, the others (e.g. a part inside another part's hole) are kept as they are.

    A hole never reaches its chunk's edge and pieces lie in different chunks, so no piece can
    fill another's hole: only the outer rings are united (much faster for parts with many
    holes) and the holes are put back afterwards. Vertices left in the middle of straight
    edges at seams are removed.
    """
    outlines = shapely.polygons(shapely.get_exterior_ring(touching))
    united = shapely.simplify(shapely.union_all(outlines), 0.0)
    holes = [ring for part in touching for ring in part.interiors]
    region = _with_holes(list(shapely.get_parts(united)), holes)
    if not len(untouched):
        return region
    return MultiPolygon([*shapely.get_parts(region), *untouched])


# --- GeoJSON for QuPath ----------------------------------------------------------------------


def qupath_features(
    polygons: Iterable[Region],
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    *,
    decimals: int = 2,
) -> Iterator[dict[str, Any]]:
    """GeoJSON ``Feature`` dicts that QuPath imports as classified annotations.

    Coordinates are rounded to ``decimals`` places (0.01 level-0 pixel by default) to keep
    files small.
    """
    if len(class_names) != len(colors):
        raise ValueError(f"{len(class_names)} class names but {len(colors)} colours")
    for cls, geometry in polygons:
        if not 0 <= cls < len(class_names):
            raise ValueError(f"class index {cls} has no name (there are {len(class_names)} classes)")
        rounded = shapely.transform(geometry, lambda xy: np.round(xy, decimals))
        yield {
            "type": "Feature",
            "geometry": mapping(rounded),
            "properties": {
                "objectType": "annotation",
                "classification": {"name": class_names[cls], "color": [int(c) for c in colors[cls]]},
            },
        }


def write_geojson(path: str | Path, features: Iterable[dict[str, Any]]) -> int:
    """Stream ``features`` into a GeoJSON ``FeatureCollection`` at ``path``; returns their number.

    Features are written one per line as they come, under a temporary name that replaces
    ``path`` only when all are written.
    """
    count = 0
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        out.write('{"type": "FeatureCollection", "features": [\n')
        for feature in features:
            out.write(",\n" if count else "")
            out.write(json.dumps(feature, separators=(",", ":")))
            count += 1
        out.write("\n]}\n")
    return count
