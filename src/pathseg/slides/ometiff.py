"""A slide's label raster as a tiled, pyramidal OME-TIFF, written in bounded memory.

The raster (any 2-D ``uint8`` array-like that numpy-slices, e.g. a zarr array on disk) is
never read whole: level 0 is fed to :mod:`tifffile` tile by tile, each tile row read in
pieces of ``chunk`` columns.

Lower levels halve the size each time until the longest side is at most ``min_level_size``.
Class indices must not be averaged (the mean of "tumour" and "stroma" is no class), so level
``k`` takes every ``2**k``-th pixel: ``labels[::2**k, ::2**k]`` (nearest neighbour). Because
tifffile writes level after level and a level cannot be read back from the file being
written, each level is read from the source raster again with that stride, chunk by chunk.
That is the same as subsampling the level above by 2, at the price of reading the source
once per level.

The class names and colours go into the OME-XML as a ``MapAnnotation`` (keys
``pathseg.class_names`` and ``pathseg.class_colors``, JSON lists), with a readable summary
in the image ``Description``; :func:`read_label_ome_tiff_info` reads them back. The pixel
size goes into ``PhysicalSizeX/Y`` (µm) and the TIFF resolution tags of every level.

Files are written under a temporary name in the target folder and renamed at the end, so a
killed run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import logging
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import imagecodecs
import numpy as np
import tifffile

from pathseg.data.io import atomic_output
from pathseg.errors import DataError

__all__ = [
    "LabelTiffInfo",
    "level_shapes",
    "read_label_ome_tiff_classes",
    "read_label_ome_tiff_info",
    "write_label_ome_tiff",
]

IGNORE_INDEX = 255  # "not analysed / no label" in every label raster pathseg writes
"""The "no label" value of label rasters (``ClassMap``'s default ``ignore_index``)."""
_NAMES_KEY = "pathseg.class_names"
_COLORS_KEY = "pathseg.class_colors"
_DOWNSAMPLE_KEY = "pathseg.downsample"
_IGNORE_KEY = "pathseg.ignore_index"


@dataclass(frozen=True)
class LabelTiffInfo:
    """What a pathseg label OME-TIFF says about itself."""

    class_names: list[str]
    colors: list[tuple[int, int, int]]
    mpp: float | None
    """Microns per pixel of the file's level 0 (None when unknown)."""
    downsample: float | None
    """Level-0 slide pixels per pixel of the file's level 0 (None when not recorded)."""


def level_shapes(shape: tuple[int, int], min_level_size: int = 512) -> list[tuple[int, int]]:
    """(rows, cols) of every pyramid level: level k is ``shape`` subsampled by ``2**k``, down to
    the first level whose longest side is at most ``min_level_size``."""
    rows, cols = shape
    shapes = [(rows, cols)]
    while max(shapes[-1]) > min_level_size:
        step = 2 ** len(shapes)
        shapes.append((-(-rows // step), -(-cols // step)))
    return shapes


def write_label_ome_tiff(
    path: str | Path,
    labels: Any,
    *,
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    mpp: float | None,
    downsample: float | None = None,
    tile: int = 512,
    compression: Literal["zlib", "zstd"] = "zlib",
    min_level_size: int = 512,
    chunk: int = 2048,
) -> Path:
    """Write a 2-D ``uint8`` class raster as a tiled, compressed, pyramidal OME-TIFF.

    Args:
        path: output file (conventionally ``*.ome.tif``); its folder is created if missing.
        labels: class indices ``0..K-1`` (255 = no label), ``labels[y0:y1, x0:x1]`` slicing.
        class_names, colors: one name and one ``(r, g, b)`` per class index, stored in the
            OME-XML so :func:`read_label_ome_tiff_info` gives them back.
        mpp: microns per pixel of ``labels`` (written as PhysicalSizeX/Y), None when unknown.
        downsample: slide level-0 pixels per pixel of ``labels``, recorded (when given) so
            the raster can be mapped back onto the slide.
        tile: tile side (a multiple of 16, as TIFF requires).
        compression: ``"zlib"`` (deflate; read by every TIFF reader, QuPath/Bio-Formats and
            OpenSlide included) or ``"zstd"`` (smaller and faster, fewer readers).
        min_level_size: stop adding levels once the longest side is at most this.
        chunk: columns read from ``labels`` at a time (rounded to whole tiles).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    shape = _check_inputs(labels, class_names, colors, mpp, downsample, tile, compression, min_level_size)
    pixel_um = None if mpp is None else float(mpp)
    shapes = level_shapes(shape, min_level_size)
    piece = max(chunk // tile, 1) * tile
    options: dict[str, Any] = {
        "dtype": np.uint8,
        "tile": (tile, tile),
        "compression": compression,
        "photometric": "minisblack",
    }
    metadata = _ome_metadata(class_names, colors, pixel_um, downsample)
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for level, level_shape in enumerate(shapes):
            tiles = _level_tiles(labels, 2**level, level_shape, tile, piece)
            extra: dict[str, Any] = _resolution(pixel_um, 2**level)
            if level == 0:
                extra.update(subifds=len(shapes) - 1, metadata=metadata)
            else:
                extra.update(subfiletype=1)  # a reduced-resolution image
            tif.write(tiles, shape=level_shape, **options, **extra)
    return path


def _check_inputs(
    labels: Any,
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    mpp: float | None,
    downsample: float | None,
    tile: int,
    compression: str,
    min_level_size: int,
) -> tuple[int, int]:
    shape = tuple(int(n) for n in labels.shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"a label raster must be 2-D and non-empty, got shape {shape}")
    if np.dtype(labels.dtype) != np.uint8:
        raise ValueError(f"a label raster must be uint8 class indices, got {labels.dtype}")
    if len(class_names) != len(colors):
        raise ValueError(f"{len(class_names)} class names but {len(colors)} colours")
    if any(len(c) != 3 or not all(0 <= int(v) <= 255 for v in c) for c in colors):
        raise ValueError(f"colours must be (r, g, b) triples in 0..255, got {list(colors)}")
    if mpp is not None and not mpp > 0:
        raise ValueError(f"mpp must be > 0 or None, got {mpp}")
    if downsample is not None and not downsample > 0:
        raise ValueError(f"downsample must be > 0 or None, got {downsample}")
    if tile < 16 or tile % 16:
        raise ValueError(f"tile must be a positive multiple of 16, got {tile}")
    if compression not in ("zlib", "zstd"):
        raise ValueError(f"compression must be 'zlib' or 'zstd', got {compression!r}")
    if compression == "zstd" and not imagecodecs.ZSTD.available:
        raise ValueError("compression 'zstd' needs imagecodecs built with zstd; use 'zlib'")
    if min_level_size < 1:
        raise ValueError(f"min_level_size must be >= 1, got {min_level_size}")
    return shape[0], shape[1]


def _level_tiles(
    labels: Any, step: int, shape: tuple[int, int], tile: int, piece: int
) -> Iterator[np.ndarray]:
    """Tiles of the level ``labels[::step, ::step]`` in TIFF order (row by row), each tile row
    read in pieces of ``piece`` columns. Edge tiles are smaller; tifffile pads them."""
    rows, cols = shape
    full_rows, full_cols = labels.shape
    for top in range(0, rows, tile):
        row_slice = slice(top * step, min((top + tile) * step, full_rows), step)
        for left in range(0, cols, piece):
            col_slice = slice(left * step, min((left + piece) * step, full_cols), step)
            block = np.asarray(labels[row_slice, col_slice])
            for x in range(0, block.shape[1], tile):
                yield block[:, x : x + tile]


def _resolution(pixel_um: float | None, step: int) -> dict[str, Any]:
    """TIFF resolution tags (pixels per centimetre) for a level subsampled by ``step``."""
    if pixel_um is None:
        return {}
    per_cm = 1e4 / (pixel_um * step)
    return {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}


def _ome_metadata(
    class_names: Sequence[str],
    colors: Sequence[tuple[int, int, int]],
    pixel_um: float | None,
    downsample: float | None,
) -> dict[str, Any]:
    listing = ", ".join(f"{i}={name}" for i, name in enumerate(class_names))
    metadata: dict[str, Any] = {
        "axes": "YX",
        "Name": "pathseg class labels",
        "Description": f"pathseg class labels: {listing}; {IGNORE_INDEX}=no label",
        "MapAnnotation": {
            _NAMES_KEY: json.dumps(list(class_names)),
            _COLORS_KEY: json.dumps([[int(v) for v in c] for c in colors]),
            _IGNORE_KEY: str(IGNORE_INDEX),
        },
    }
    if downsample is not None:
        metadata["MapAnnotation"][_DOWNSAMPLE_KEY] = repr(float(downsample))
    if pixel_um is not None:
        for axis in "XY":
            metadata[f"PhysicalSize{axis}"] = pixel_um
            metadata[f"PhysicalSize{axis}Unit"] = "µm"
    return metadata


def read_label_ome_tiff_info(path: str | Path) -> LabelTiffInfo:
    """Class names, colours, pixel size and downsample of a label OME-TIFF written by
    :func:`write_label_ome_tiff`.

    Raises:
        DataError: the file is missing, not a readable OME-TIFF, or has no pathseg class table.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    xml = _ome_xml(path)
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise DataError(path, f"OME-XML metadata is not valid XML ({exc})") from exc
    pairs = {m.get("K"): m.text or "" for m in root.iter() if _local(m.tag) == "M"}
    if _NAMES_KEY not in pairs or _COLORS_KEY not in pairs:
        raise DataError(path, "OME-TIFF has no pathseg class table (not written by pathseg?)")
    try:
        names = [str(n) for n in json.loads(pairs[_NAMES_KEY])]
        colors = [(int(r), int(g), int(b)) for r, g, b in json.loads(pairs[_COLORS_KEY])]
        downsample = float(pairs[_DOWNSAMPLE_KEY]) if _DOWNSAMPLE_KEY in pairs else None
    except (ValueError, TypeError) as exc:
        raise DataError(path, f"pathseg class table is damaged ({exc})") from exc
    return LabelTiffInfo(names, colors, _physical_size_um(root), downsample)


def read_label_ome_tiff_classes(path: str | Path) -> list[str]:
    """The class names (index order) stored in a label OME-TIFF; see :func:`read_label_ome_tiff_info`."""
    return read_label_ome_tiff_info(path).class_names


def _ome_xml(path: Path) -> str:
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # tifffile logs broken tags; the DataError says it once
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except Exception as exc:  # any parser failure means an unusable file, not a bug here
        raise DataError(path, f"cannot read TIFF ({str(exc).strip() or type(exc).__name__})") from exc
    finally:
        logger.setLevel(level)
    if not xml:
        raise DataError(path, "not an OME-TIFF (no OME-XML metadata)")
    return xml


def _local(tag: str) -> str:
    """An XML tag without its ``{namespace}``."""
    return tag.rsplit("}", 1)[-1]


def _physical_size_um(root: ElementTree.Element) -> float | None:
    pixels = next((e for e in root.iter() if _local(e.tag) == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None
    unit = pixels.get("PhysicalSizeXUnit", "µm")
    factor = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3}.get(unit)
    return None if factor is None else float(pixels.get("PhysicalSizeX", "nan")) * factor
