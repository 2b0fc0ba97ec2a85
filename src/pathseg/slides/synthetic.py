"""Synthetic whole-slide images: pyramidal tiled TIFFs of any size, for tests and demos.

A slide is white glass with a few large irregular pieces of tissue. The layout comes first, from
the seed alone: a smooth field on a coarse grid (about 256 nodes along the longer side) made of
a few elliptical bumps, roughened by smooth noise and pushed down near the slide's border;
tissue is where the field, interpolated bilinearly, exceeds the quantile that gives the
requested tissue fraction. The tissue texture is H&E-like from :mod:`pathseg.data.synthetic`: a
small pool of generated stroma/tumour tiles (one stain for the whole slide) laid on the level-0
tile grid, each position taking a pool tile in one of its 8 flips/rotations.

Every pyramid level is generated directly at its own scale: the pool is block-averaged by the
level's factor (which commutes with flips and rotations, so level ``k`` is level 0 averaged over
``2^k x 2^k`` blocks) and the layout is evaluated at the level's pixel centres (so only the tissue
outline can differ from an averaged level 0, by a pixel). Tiles go to tifffile from a generator,
so memory does not grow with the slide: a 50,000 px slide needs the pool and one tile at a time.

The file is a generic pyramidal TIFF (JPEG tiles, levels as successive reduced-resolution pages,
microns per pixel in the resolution tags), which tiffslide and OpenSlide both read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage

from pathseg.data.synthetic import SynthConfig, generate_tile
from pathseg.errors import ConfigError, DataError
from pathseg.slides.tissue import TissueMask

__all__ = ["synthetic_slide_layout", "write_synthetic_slide"]

GLASS_RGB = (242, 242, 240)
"""Colour of bare glass: the brightness of the pool tiles' illumination, very slightly warm."""

_LAYOUT_NODES = 256  # layout grid nodes along the slide's longer side
_POOL_SIZE = 6  # distinct generated tiles; with 8 orientations each, 48 looks
_LOWEST_LEVEL = 1024  # halve until the longer side is at most this
_JPEG_QUALITY = 85
# Stroma and tumour only: glass comes from the layout, never from inside a tile, and alveolar
# "normal" tissue is mostly white air space, which tissue detection rightly calls glass (the
# layout would then no longer be the truth).
_POOL_CONFIG = {"tissue_weights": (0.45, 0.55, 0.0, 0.0)}


# --------------------------------------------------------------------------- layout


@dataclass
class _Layout:
    """The tissue field on grid nodes at level-0 positions ``(i * cell, j * cell)``; tissue is
    where the bilinear interpolation of ``field`` exceeds ``threshold``."""

    field: np.ndarray
    cell: float
    threshold: float

    def is_tissue(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Tissue at level-0 points on the grid ``ys x xs`` (a 2-D bool array)."""
        rows, row_weights = self._weights(ys, self.field.shape[0])
        cols, col_weights = self._weights(xs, self.field.shape[1])
        patch = self.field[rows.start : rows.stop, cols.start : cols.stop]
        return row_weights @ patch @ col_weights.T > self.threshold

    def bounds(self, y0: float, y1: float, x0: float, x1: float) -> tuple[float, float]:
        """Least and greatest field value anywhere in the level-0 rectangle (bilinear
        interpolation never leaves the range of the nodes around it)."""
        last_row, last_col = self.field.shape[0] - 1, self.field.shape[1] - 1
        r0 = min(max(math.floor(y0 / self.cell), 0), last_row)
        r1 = min(max(math.ceil(y1 / self.cell), 0), last_row)
        c0 = min(max(math.floor(x0 / self.cell), 0), last_col)
        c1 = min(max(math.ceil(x1 / self.cell), 0), last_col)
        patch = self.field[r0 : r1 + 1, c0 : c1 + 1]
        return float(patch.min()), float(patch.max())

    def _weights(self, coords: np.ndarray, nodes: int) -> tuple[slice, np.ndarray]:
        """Linear interpolation weights of ``coords`` (level-0) on the node axis, as a matrix
        over the few nodes involved (points past the last node take its value)."""
        u = np.clip(coords / self.cell, 0, nodes - 1)
        lower = np.minimum(np.floor(u).astype(np.intp), nodes - 2)
        first = int(lower.min())
        weights = np.zeros((u.size, int(lower.max()) - first + 2), np.float32)
        rows = np.arange(u.size)
        frac = (u - lower).astype(np.float32)
        weights[rows, lower - first] = 1 - frac
        weights[rows, lower - first + 1] = frac
        return slice(first, first + weights.shape[1]), weights


def _make_layout(width: int, height: int, seed: int, tissue_fraction: float) -> _Layout:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5117E]))
    cell = max(width, height) / (_LAYOUT_NODES - 1)
    rows, cols = math.ceil(height / cell) + 1, math.ceil(width / cell) + 1
    y = np.arange(rows)[:, None] * cell
    x = np.arange(cols)[None, :] * cell
    short = min(width, height)

    # A few elliptical bumps, 1 at their centre and 0 on their outline.
    field = np.full((rows, cols), -1.0)
    for _ in range(int(rng.integers(3, 6))):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        a, b = rng.uniform(0.12, 0.25, size=2) * short
        angle = rng.uniform(0, math.pi)
        u = ((x - cx) * math.cos(angle) + (y - cy) * math.sin(angle)) / a
        v = (-(x - cx) * math.sin(angle) + (y - cy) * math.cos(angle)) / b
        field = np.maximum(field, 1 - u * u - v * v)

    # Irregular outlines: smooth noise with blobs ~5 % of the slide across.
    noise = ndimage.gaussian_filter(rng.standard_normal((rows, cols)), _LAYOUT_NODES / 40, mode="wrap")
    field += 0.4 * noise / max(float(noise.std()), 1e-6)

    # Glass along the border: the field drops steeply within 6 % of the short side of an edge.
    edge = np.minimum(np.minimum(y, height - y), np.minimum(x, width - x)) / short
    field -= 4 * np.clip((0.06 - edge) / 0.06, 0, 1)

    inside = field[: rows - 1, : cols - 1]  # nodes on the slide (the last row/column is past it)
    threshold = float(np.quantile(inside, 1 - tissue_fraction))
    return _Layout(field.astype(np.float32), cell, threshold)


def synthetic_slide_layout(
    size: int | tuple[int, int], *, seed: int = 0, tissue_fraction: float = 0.5
) -> TissueMask:
    """Where :func:`write_synthetic_slide` puts tissue, as a mask of the layout grid (about 256
    pixels along the longer side; pixel centres decide, as in the shared conventions). Useful as
    ground truth for tissue detection."""
    width, height = _check_size(size)
    _check_fraction(tissue_fraction)
    layout = _make_layout(width, height, seed, tissue_fraction)
    rows, cols = math.ceil(height / layout.cell), math.ceil(width / layout.cell)
    centres_y = (np.arange(rows) + 0.5) * layout.cell
    centres_x = (np.arange(cols) + 0.5) * layout.cell
    return TissueMask(layout.is_tissue(centres_y, centres_x), layout.cell)


# --------------------------------------------------------------------------- texture


def _dihedral(tiles: np.ndarray) -> np.ndarray:
    """All 8 flips/rotations of each tile: ``(n, T, T, 3)`` -> ``(8 n, T, T, 3)``."""
    turns = [np.rot90(tiles, k, axes=(1, 2)) for k in range(4)]
    return np.concatenate(turns + [t[:, :, ::-1] for t in turns])


def _block_mean(tiles: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` pixel blocks of each tile (rounded to uint8), one tile at a time
    so the float copy stays small."""
    if factor == 1:
        return tiles
    side = tiles.shape[1] // factor
    out = np.empty((tiles.shape[0], side, side, 3), np.uint8)
    for i, tile in enumerate(tiles):
        blocks = tile.reshape(side, factor, side, factor, 3).mean(axis=(1, 3), dtype=np.float32)
        out[i] = np.rint(blocks)
    return out


def _texture_pool(tile: int, seed: int) -> np.ndarray:
    """The generated tiles, sharing one stain, in all 8 orientations: ``(48, T, T, 3)``."""
    config = SynthConfig(size=tile, **_POOL_CONFIG)
    seeds = np.random.SeedSequence([seed, 0x7115]).generate_state(_POOL_SIZE + 1)
    stain_seed = int(seeds[-1])
    tiles = np.stack([generate_tile(int(s), config, stain_seed=stain_seed).image for s in seeds[:-1]])
    return _dihedral(tiles)


# --------------------------------------------------------------------------- writing


def _level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    sizes = [(width, height)]
    while max(sizes[-1]) > _LOWEST_LEVEL:
        w, h = sizes[-1]
        sizes.append((math.ceil(w / 2), math.ceil(h / 2)))
    return sizes


def _level_tiles(
    level: int, size: tuple[int, int], tile: int, pool: np.ndarray, choice: np.ndarray, layout: _Layout
) -> Iterator[np.ndarray]:
    """The tiles of one level in row-major order, each ``tile x tile x 3``.

    A level-``k`` tile covers ``2^k x 2^k`` level-0 tile positions, each drawn from the pool
    averaged by ``2^k`` (``pool`` is already averaged for this level).
    """
    factor = 2**level
    glass = np.empty((tile, tile, 3), np.uint8)
    glass[:] = GLASS_RGB
    width, height = size
    for ty in range(math.ceil(height / tile)):
        for tx in range(math.ceil(width / tile)):
            # Level-0 extent of this tile and the pixel centres it samples the layout at.
            y0, x0 = ty * tile * factor, tx * tile * factor
            y1, x1 = y0 + tile * factor, x0 + tile * factor
            low, high = layout.bounds(y0, y1, x0, x1)
            if high <= layout.threshold:
                yield glass
                continue
            rows = np.arange(ty * factor, (ty + 1) * factor) % choice.shape[0]
            cols = np.arange(tx * factor, (tx + 1) * factor) % choice.shape[1]
            parts = pool[choice[np.ix_(rows, cols)]]  # (k, k, t, t, 3) with k = factor, t = tile / k
            texture = parts.transpose(0, 2, 1, 3, 4).reshape(tile, tile, 3)
            if low > layout.threshold:
                yield texture
                continue
            centres = (np.arange(tile, dtype=np.float64) + 0.5) * factor
            tissue = layout.is_tissue(y0 + centres, x0 + centres)
            yield np.where(tissue[:, :, None], texture, glass)


def write_synthetic_slide(
    path: str | Path,
    size: int | tuple[int, int],
    *,
    mpp: float = 0.5,
    tile: int = 512,
    seed: int = 0,
    tissue_fraction: float = 0.5,
) -> Path:
    """Write a synthetic pyramidal slide to ``path`` (a ``.tif``) and return the path.

    ``size`` is the level-0 side, or ``(width, height)``; levels halve until the longer side is
    at most 1024 px. ``mpp`` goes into the resolution tags, ``tile`` is the TIFF tile side (a
    power of two, 64 to 2048) and also the side of the generated texture tiles, ``seed`` decides
    everything, and ``tissue_fraction`` is the share of the slide covered by tissue (see
    :func:`synthetic_slide_layout`). The file is written under a temporary name and renamed when
    complete, so a crash never leaves a half-written slide behind.
    """
    width, height = _check_size(size)
    _check_fraction(tissue_fraction)
    if not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"synthetic slide: mpp must be a positive number (got {mpp!r})")
    if not (isinstance(tile, int) and 64 <= tile <= 2048 and tile & (tile - 1) == 0):
        raise ConfigError(f"synthetic slide: tile must be a power of two from 64 to 2048 (got {tile!r})")
    if not (isinstance(seed, int) and seed >= 0):
        raise ConfigError(f"synthetic slide: seed must be a non-negative integer (got {seed!r})")
    levels = _level_sizes(width, height)
    if 2 ** (len(levels) - 1) > tile:
        raise ConfigError(
            f"synthetic slide: tile {tile} is too small for a {width} x {height} slide "
            f"({len(levels)} levels shrink a tile below one pixel); use a larger tile"
        )

    layout = _make_layout(width, height, seed, tissue_fraction)
    pool = _texture_pool(tile, seed)
    choice = np.random.default_rng(np.random.SeedSequence([seed, 0xC401CE])).integers(
        0, len(pool), size=(math.ceil(height / tile), math.ceil(width / tile))
    )
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    raw_bytes = sum(w * h * 3 for w, h in levels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffWriter(partial, bigtiff=raw_bytes > 2**31) as writer:
            for level, (level_w, level_h) in enumerate(levels):
                pixels_per_cm = 1e4 / (mpp * 2**level)
                writer.write(
                    _level_tiles(
                        level, (level_w, level_h), tile, _block_mean(pool, 2**level), choice, layout
                    ),
                    shape=(level_h, level_w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="rgb",  # tifffile stores JPEG tiles as subsampled YCbCr
                    compression="jpeg",
                    compressionargs={"level": _JPEG_QUALITY},
                    resolution=(pixels_per_cm, pixels_per_cm),
                    resolutionunit="CENTIMETER",
                    subfiletype=1 if level else 0,  # reduced-resolution page: a pyramid level
                    metadata=None,
                    maxworkers=1,
                )
        partial.replace(path)
    except BaseException as exc:  # interrupted or failed: leave no half-written file behind
        partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DataError(path, f"cannot write synthetic slide ({exc.strerror or exc})") from exc
        raise
    return path


def _check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    width, height = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if not all(isinstance(v, int | np.integer) and v >= 256 for v in (width, height)):
        raise ConfigError(f"synthetic slide: size must be at least 256 px a side (got {size!r})")
    return int(width), int(height)


def _check_fraction(tissue_fraction: float) -> None:
    if not 0 < tissue_fraction <= 0.8:
        raise ConfigError(f"synthetic slide: tissue_fraction must lie in (0, 0.8] (got {tissue_fraction!r})")
