"""Per-class areas of a slide's label raster, counted chunk by chunk, and their CSV.

"Tissue" is every pixel with a label, i.e. everything except 255 (no label: glass outside
the tissue mask, or not predicted). By default that includes class 0, whatever it is
called, since a "background" class inside the tissue mask is often real tissue (e.g. stroma);
pass ``tissue_classes`` to count only some classes as tissue.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.data.io import atomic_output
from pathseg.slides.ometiff import IGNORE_INDEX

__all__ = ["class_area_table", "write_area_csv"]


def class_area_table(
    labels: Any,
    *,
    class_names: Sequence[str],
    downsample: float,
    mpp: float | None,
    tissue_classes: Sequence[int] | None = None,
    chunk: int = 2048,
) -> list[dict[str, Any]]:
    """One row per class: its pixel count, area and share of the tissue.

    Args:
        labels: 2-D class raster (indices ``0..K-1``, 255 = no label) that numpy-slices,
            at ``downsample`` (level-0 pixels per raster pixel).
        class_names: one name per class index.
        mpp: microns per level-0 pixel of the slide; None when unknown.
        tissue_classes: the classes that make up the tissue (default: all of them).
        chunk: side of the square pieces counted at a time.

    Returns:
        Rows with keys ``class_index``, ``class``, ``pixels`` (raster pixels), then either
        ``area_um2`` (each pixel covers ``(downsample * mpp)²`` µm²) or, without ``mpp``,
        ``area_level0_px2`` (``downsample²`` level-0 pixels each), and ``percent_of_tissue``
        (None when there is no tissue).

    Raises:
        ValueError: the raster holds values that are neither class indices nor 255.
    """
    if len(labels.shape) != 2:
        raise ValueError(f"a label raster must be 2-D, got shape {tuple(labels.shape)}")
    if not downsample > 0 or (mpp is not None and not mpp > 0):
        raise ValueError(f"downsample and mpp must be > 0, got {downsample} and {mpp}")
    counts = _value_counts(labels, chunk)
    unknown = [int(v) for v in np.flatnonzero(counts) if v >= len(class_names) and v != IGNORE_INDEX]
    if unknown:
        raise ValueError(
            f"label values {unknown[:10]} are not class indices (there are {len(class_names)} classes)"
        )
    pixels = counts[: len(class_names)]
    tissue = range(len(class_names)) if tissue_classes is None else tissue_classes
    tissue_pixels = int(sum(pixels[int(c)] for c in tissue))
    if mpp is None:
        area_key, pixel_area = "area_level0_px2", float(downsample) ** 2
    else:
        area_key, pixel_area = "area_um2", (float(downsample) * float(mpp)) ** 2
    return [
        {
            "class_index": index,
            "class": name,
            "pixels": int(pixels[index]),
            area_key: int(pixels[index]) * pixel_area,
            "percent_of_tissue": 100.0 * int(pixels[index]) / tissue_pixels if tissue_pixels else None,
        }
        for index, name in enumerate(class_names)
    ]


def _value_counts(labels: Any, chunk: int) -> np.ndarray:
    """How many pixels hold each value, read in ``chunk`` x ``chunk`` pieces."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    height, width = (int(n) for n in labels.shape)
    counts = np.zeros(256, dtype=np.int64)
    for y in range(0, height, chunk):
        for x in range(0, width, chunk):
            block = np.asarray(labels[y : y + chunk, x : x + chunk])
            if not np.issubdtype(block.dtype, np.integer):
                raise ValueError(f"a label raster must hold integer class indices, got {block.dtype}")
            if block.size and (int(block.min()) < 0 or int(block.max()) > 255):
                raise ValueError(f"label values must be 0..255, got {int(block.min())}..{int(block.max())}")
            counts += np.bincount(block.ravel(), minlength=256)
    return counts


def write_area_csv(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Write the rows of :func:`class_area_table` as CSV (atomically); None becomes an empty cell.

    Areas are written with 2 decimals and percentages with 4.
    """
    if not rows:
        raise ValueError("no rows to write")
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _cell(key, value) for key, value in row.items()})
    return path


def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if key.startswith("percent") else f"{value:.2f}"
    return value
