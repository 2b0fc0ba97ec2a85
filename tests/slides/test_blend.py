"""The streaming blender against a plain in-memory canvas accumulation of the same tiles."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.slides.blend import MemoryCarryStore, StripBlender, TileGrid, gaussian_weights


def dense_reference(grid: TileGrid, outputs: dict[int, np.ndarray], weights: np.ndarray, channels: int):
    """Sum every tile into a canvas big enough for the overhanging tiles, then crop."""
    height = grid.rows * grid.stride + grid.overlap
    width = grid.cols * grid.stride + grid.overlap
    sums = np.zeros((channels, height, width), np.float64)
    total = np.zeros((height, width), np.float64)
    for index, output in outputs.items():
        y, x = grid.origin(*grid.position(index))
        sums[:, y : y + grid.tile, x : x + grid.tile] += output * weights
        total[y : y + grid.tile, x : x + grid.tile] += weights
    return sums[:, : grid.height, : grid.width], total[: grid.height, : grid.width]


@pytest.mark.parametrize(
    ("height", "width", "tile", "stride"),
    [(50, 70, 16, 12), (16, 16, 16, 16), (40, 9, 16, 8), (33, 57, 8, 6), (5, 5, 16, 12)],
)
def test_streaming_blend_equals_the_dense_canvas(height, width, tile, stride) -> None:
    rng = np.random.default_rng(tile + height)
    grid = TileGrid(height, width, tile, stride)
    channels = 3
    weights = gaussian_weights(tile)
    # Some tiles are not predicted (glass): they add nothing but must pass on their neighbours' sums.
    outputs = {
        i: rng.normal(size=(channels, tile, tile)).astype(np.float32)
        for i in range(len(grid))
        if rng.random() > 0.3
    }
    blender = StripBlender(grid, channels, MemoryCarryStore(grid, channels), weights)
    sums = np.full((channels, height, width), np.nan)
    total = np.full((height, width), np.nan)
    covered = np.zeros((height, width), np.int32)
    for index in range(len(grid)):
        block = blender.add(index, outputs.get(index))
        if block is None:
            continue
        h, w = block.weights.shape
        sums[:, block.y : block.y + h, block.x : block.x + w] = block.sums
        total[block.y : block.y + h, block.x : block.x + w] = block.weights
        covered[block.y : block.y + h, block.x : block.x + w] += 1
    ref_sums, ref_total = dense_reference(grid, outputs, weights, channels)
    assert covered.max() <= 1  # every pixel is finished once
    predicted = ref_total > 0
    assert (covered[predicted] == 1).all()  # ... and every predicted pixel is finished
    np.testing.assert_allclose(total[predicted], ref_total[predicted], rtol=1e-5)
    np.testing.assert_allclose(sums[:, predicted], ref_sums[:, predicted], rtol=1e-4, atol=1e-5)


def test_grid_covers_the_canvas_and_rejects_overlap_over_half_a_tile() -> None:
    grid = TileGrid(100, 37, 16, 12)
    assert (grid.rows - 1) * grid.stride + grid.tile >= 100
    assert (grid.cols - 1) * grid.stride + grid.tile >= 37
    assert (grid.rows - 2) * grid.stride + grid.tile < 100  # no superfluous row
    with pytest.raises(ValueError, match="stride"):
        TileGrid(10, 10, 16, 7)
