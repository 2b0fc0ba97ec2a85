"""Blend overlapping tile predictions over a slide-sized canvas while holding one tile in memory.

Sliding-window inference sums every tile's weighted output into a canvas and divides by the summed
weights. A slide canvas does not fit in memory, and MONAI's and TIAToolbox's mergers keep it in RAM
or spill all of it to a Zarr store. Here tiles are visited in raster order and each canvas pixel is
final as soon as the last tile covering it has been added, so only three things are kept:

* ``right``: the columns a tile shares with the next tile of its row (in memory, tile x overlap);
* the rows a strip of tiles shares with the next strip (a :class:`CarryStore`: on disk for slides,
  in memory in tests); each strip reads its own and writes the next one's;
* nothing else: a tile's finished block is handed back to the caller at once.

Every write depends on one tile alone and overwrites what is there, so re-adding a tile after an
interruption gives the same result (what :mod:`pathseg.slides.predict` relies on to resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["CarryStore", "MemoryCarryStore", "StripBlender", "TileGrid", "gaussian_weights"]


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` px every ``stride`` px covering a ``height`` x ``width`` canvas.

    The last row and column of tiles may reach past the canvas (the reader pads them); the overlap
    ``tile - stride`` may be at most half a tile, so a pixel is covered by at most two tiles along
    each axis.
    """

    height: int
    width: int
    tile: int
    stride: int

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise ValueError(f"empty canvas {self.width}x{self.height}")
        if not 0 < self.stride <= self.tile or 2 * (self.tile - self.stride) > self.tile:
            raise ValueError(f"stride {self.stride} must be in [tile/2, tile] for tile {self.tile}")

    @property
    def overlap(self) -> int:
        return self.tile - self.stride

    @property
    def rows(self) -> int:
        return max(1, -(-(self.height - self.overlap) // self.stride))

    @property
    def cols(self) -> int:
        return max(1, -(-(self.width - self.overlap) // self.stride))

    def __len__(self) -> int:
        return self.rows * self.cols

    def position(self, index: int) -> tuple[int, int]:
        """(row, col) of the tile at raster index ``index``."""
        return divmod(index, self.cols)

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Canvas (y, x) of the tile's top-left pixel."""
        return row * self.stride, col * self.stride


def gaussian_weights(tile: int, sigma_scale: float = 0.125) -> np.ndarray:
    """The blending weights of one tile: MONAI's Gaussian importance map (the same weights
    :func:`pathseg.inference.sliding_window.predict_logits` uses for tile folders)."""
    from monai.data.utils import compute_importance_map

    weights = compute_importance_map((tile, tile), mode="gaussian", sigma_scale=sigma_scale)
    return weights.numpy().astype(np.float32)


class CarryStore(Protocol):
    """The rows strip ``row`` shares with strip ``row + 1``: ``(channels + 1, overlap, width)``."""

    def read(self, row: int, x0: int, x1: int) -> np.ndarray:
        """What strip ``row - 1`` left for strip ``row`` in columns ``[x0, x1)`` (zeros if nothing)."""
        ...

    def write(self, row: int, x0: int, values: np.ndarray) -> None:
        """Leave ``values`` for strip ``row + 1`` at columns ``[x0, x0 + values.shape[-1])``."""
        ...


class MemoryCarryStore:
    """A :class:`CarryStore` in memory (tests, small images)."""

    def __init__(self, grid: TileGrid, channels: int) -> None:
        width = grid.cols * grid.stride + grid.overlap
        self._strips = np.zeros((grid.rows, channels + 1, grid.overlap, width), np.float32)

    def read(self, row: int, x0: int, x1: int) -> np.ndarray:
        return self._strips[row - 1, :, :, x0:x1].copy()

    def write(self, row: int, x0: int, values: np.ndarray) -> None:
        self._strips[row, :, :, x0 : x0 + values.shape[-1]] = values


@dataclass
class Block:
    """A finished canvas block: weighted sums of the tile outputs and their summed weights."""

    y: int
    x: int
    sums: np.ndarray  # (channels, h, w)
    weights: np.ndarray  # (h, w); 0 where no tile was predicted

    def mean(self) -> np.ndarray:
        """The blended output ``(channels, h, w)`` (0 where nothing was predicted)."""
        return self.sums / np.maximum(self.weights, 1e-12)


class StripBlender:
    """Adds tiles in raster order; each :meth:`add` returns the canvas block that tile finished.

    A tile's output is ``(channels, tile, tile)`` or ``None`` for a tile that was not predicted
    (no tissue): it adds nothing but still passes on what its neighbours left.
    """

    def __init__(self, grid: TileGrid, channels: int, carry: CarryStore, weights: np.ndarray) -> None:
        if weights.shape != (grid.tile, grid.tile):
            raise ValueError(f"weights {weights.shape} do not match tile {grid.tile}")
        self.grid, self.channels, self.carry, self.weights = grid, channels, carry, weights
        self.right = np.zeros((channels + 1, grid.tile, grid.overlap), np.float32)

    def add(self, index: int, output: np.ndarray | None) -> Block | None:
        """Add the tile at raster ``index``; returns its finished block cropped to the canvas, or
        ``None`` when nothing under it was ever predicted."""
        grid = self.grid
        row, col = grid.position(index)
        y, x = grid.origin(row, col)
        size, stride, overlap = grid.tile, grid.stride, grid.overlap
        buffer = np.zeros((self.channels + 1, size, size), np.float32)
        if col > 0:
            buffer[:, :, :overlap] = self.right
        if row > 0:
            # Columns shared with the previous tile already hold the strip above (via ``right``).
            first = overlap if col > 0 else 0
            buffer[:, :overlap, first:] += self.carry.read(row, x + first, x + size)
        if output is not None:
            buffer[: self.channels] += output * self.weights
            buffer[self.channels] += self.weights
        last_row, last_col = row == grid.rows - 1, col == grid.cols - 1
        height = size if last_row else stride
        width = size if last_col else stride
        nothing = output is None and not buffer[self.channels].any()
        if not last_row and not nothing:
            self.carry.write(row, x, buffer[:, stride:, :width])
        if not last_col:
            self.right = buffer[:, :, stride:].copy()
        if nothing:
            return None
        height, width = min(height, grid.height - y), min(width, grid.width - x)
        if height <= 0 or width <= 0:
            return None
        return Block(y, x, buffer[: self.channels, :height, :width], buffer[self.channels, :height, :width])
