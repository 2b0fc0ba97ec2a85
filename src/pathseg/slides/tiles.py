"""Training tiles from a slide and its polygon annotations: an ``images/`` + ``masks/`` folder that
``pathseg data check`` and ``pathseg train`` read like any other dataset.

Tiles are cut at a chosen resolution (microns per pixel) over the bounding box of the
annotations only, since the rest of a slide carries no labels. Each mask is the rasterised
annotations of its tile (:func:`pathseg.data.annotations.rasterize`) written with the class
map's stored values, so the folder round-trips through
:func:`pathseg.data.folders.discover_dataset` and :meth:`ClassMap.encode` to the same class
indices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely

from pathseg.data.annotations import Annotation, Box, rasterize
from pathseg.data.classes import ClassMap, Colour
from pathseg.data.io import write_image, write_mask
from pathseg.errors import ConfigError
from pathseg.slides.reader import Slide

__all__ = ["write_annotation_tiles"]

# Palette colour of unlabelled pixels in the written masks (classes get ClassMap.palette()).
_UNLABELLED_COLOUR: Colour = (128, 128, 128)


def write_annotation_tiles(
    slide: Slide,
    annotations: Sequence[Annotation],
    indices: Sequence[int],
    class_map: ClassMap,
    *,
    mpp: float,
    tile: int,
    stride: int | None,
    out_dir: str | Path,
    fill_index: int,
    min_labelled: float = 0.0,
) -> list[Path]:
    """Write ``tile`` x ``tile`` pixel tiles at ``mpp`` microns per pixel covering the annotations.

    Tiles start at the top-left of the annotations' bounding box and step by ``stride`` pixels
    (default ``tile``) until the box is covered; tiles are moved inside the slide where it is
    big enough. Pixels outside every annotation take ``fill_index`` (``class_map.ignore_index``
    for sparse annotations, the background class for fully annotated fields), pixels outside
    the slide are unlabelled. A tile is kept when its share of labelled pixels (anything but
    the ignore index) is above ``min_labelled``.

    Written, for the slide ``S`` and a tile whose level-0 origin is ``(X, Y)``:

    * ``out_dir/images/S_xX_yY.png``: the RGB tile;
    * ``out_dir/masks/S_xX_yY.png``: the class map's stored values (a palette PNG for integer
      maps, RGB for colour maps), unlabelled pixels stored as ``class_map.ignore_values[0]``;
    * ``out_dir/tiles.json``: slide, resolution, tile size, classes, number of tiles and the
      labelled pixels per class.

    Train on the folder with the same classes and that ignore value, e.g. ``pathseg train
    --train OUT --classes "tumour=0,stroma=1" --set data.ignore_values=[255]``.

    Returns:
        The image files written, in row-major tile order.

    Raises:
        ConfigError: non-positive ``tile``/``stride``/``mpp``, or a class map without a stored
            value for unlabelled pixels (``ignore_values``).
        DataError: the slide has no resolution, or a tile cannot be read.
    """
    if len(indices) != len(annotations) or not annotations:
        raise ValueError(
            f"need one index per annotation and at least one (got {len(annotations)}, {len(indices)})"
        )
    stride = tile if stride is None else stride
    if tile < 1 or stride < 1:
        raise ConfigError(f"tile and stride must be at least 1 pixel (got tile {tile}, stride {stride})")
    if not class_map.ignore_values:
        raise ConfigError(
            "the class map needs a stored value for unlabelled pixels (ignore_values, e.g. 255) in masks"
        )
    if not 0 <= class_map.ignore_index <= 255:
        raise ConfigError(
            f"label rasters are uint8: ignore_index must be in 0..255, got {class_map.ignore_index}"
        )
    downsample = slide.downsample_for_mpp(mpp)
    out_dir = Path(out_dir)
    geometries = [a.geometry for a in annotations]
    tree = shapely.STRtree(geometries)
    span = tile * downsample  # level-0 side of a tile
    counts = np.zeros(256, dtype=np.int64)
    written: list[Path] = []
    for x, y in _tile_origins(geometries, slide.dimensions, span, stride * downsample):
        box = (x, y, span, span)
        # STRtree gives candidates in no particular order; sorted, they paint in file order.
        nearby = np.sort(tree.query(shapely.box(x, y, x + span, y + span)))
        labels = rasterize(
            [annotations[k] for k in nearby], [indices[k] for k in nearby], box, downsample, fill_index
        )
        _unlabel_outside(labels, box, downsample, slide.dimensions, class_map.ignore_index)
        if np.mean(labels != class_map.ignore_index) <= min_labelled:
            continue
        name = f"{slide.path.stem}_x{x}_y{y}.png"
        write_image(out_dir / "images" / name, slide.read_box(box, downsample, size=(tile, tile)))
        _write_stored_mask(out_dir / "masks" / name, labels, class_map)
        counts += np.bincount(labels.ravel(), minlength=256)
        written.append(out_dir / "images" / name)
    summary = _summary(
        slide, class_map, counts, mpp=mpp, downsample=downsample, tile=tile, stride=stride, tiles=len(written)
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tiles.json").write_text(json.dumps(summary, indent=2) + "\n")
    return written


def _tile_origins(
    geometries: Sequence[shapely.Geometry], dimensions: tuple[int, int], span: float, step: float
) -> list[tuple[int, int]]:
    """Integer level-0 origins of the tiles covering the bounding box of ``geometries``."""
    min_x, min_y, max_x, max_y = shapely.total_bounds(geometries)
    width, height = dimensions
    xs = _axis_origins(max(min_x, 0.0), min(max_x, width), span, step, width)
    ys = _axis_origins(max(min_y, 0.0), min(max_y, height), span, step, height)
    return [(x, y) for y in ys for x in xs]


def _axis_origins(low: float, high: float, span: float, step: float, limit: int) -> list[int]:
    """Starts from ``low`` in steps of ``step`` until a tile of ``span`` reaches ``high``, each
    moved back inside ``[0, limit)`` when the slide is longer than a tile (duplicates removed)."""
    first = math.floor(low)
    last_start = max(0, math.floor(limit - span))
    origins = []
    k = 0
    while True:
        start = first + round(k * step)
        origins.append(min(start, last_start))
        if start + span >= high:
            break
        k += 1
    return sorted(set(origins))


def _unlabel_outside(
    labels: np.ndarray, box: Box, downsample: float, dimensions: tuple[int, int], ignore_index: int
) -> None:
    """Set pixels whose centre lies outside the slide to ``ignore_index`` (in place): the white
    the reader returns there is no tissue of any class."""
    x, y = box[0], box[1]
    rows, cols = labels.shape
    width, height = dimensions
    labels[:, x + (np.arange(cols) + 0.5) * downsample >= width] = ignore_index
    labels[y + (np.arange(rows) + 0.5) * downsample >= height, :] = ignore_index


def _write_stored_mask(path: Path, labels: np.ndarray, class_map: ClassMap) -> None:
    """Class indices -> the class map's stored values, as a lossless PNG the data layer reads back."""
    stored = class_map.decode(labels)
    if class_map.is_colour:
        write_image(path, stored)
    elif stored.dtype == np.uint8:
        write_mask(path, stored, palette=_palette(class_map))
    else:
        write_mask(path, stored)  # stored values above 255: 16-bit greyscale


def _palette(class_map: ClassMap) -> list[Colour]:
    """256 palette colours: each class's display colour at its stored values, grey at ignore values."""
    palette: list[Colour] = [(0, 0, 0)] * 256
    for index, colour in enumerate(class_map.palette()):
        for value in class_map.alternatives(index):
            palette[int(value)] = colour  # type: ignore[arg-type]
    for value in class_map.ignore_values:
        palette[int(value)] = _UNLABELLED_COLOUR  # type: ignore[arg-type]
    return palette


def _summary(
    slide: Slide, class_map: ClassMap, counts: np.ndarray, **settings: float | int
) -> dict[str, object]:
    """What ``tiles.json`` records: the source, the settings, the classes and the pixels of each."""
    return {
        "slide": str(slide.path),
        **settings,
        "classes": list(class_map.names),
        "stored_values": [_plain(v) for v in class_map.canonical_values],
        "ignore_value": _plain(class_map.ignore_values[0]),
        "labelled_pixels": {name: int(counts[i]) for i, name in enumerate(class_map.names)},
        "unlabelled_pixels": int(counts[class_map.ignore_index]),
    }


def _plain(value: object) -> object:
    """A stored value as JSON: an int or an [r, g, b] list."""
    return [int(c) for c in value] if isinstance(value, tuple) else int(value)  # type: ignore[call-overload]
