import numpy as np
import pytest

from pathseg.data.targets import BOUNDARY, INTERIOR, add_boundary_target, boundary_target, hover_maps


def square(size=11, lo=2, hi=9):
    mask = np.zeros((size, size), np.uint8)
    mask[lo:hi, lo:hi] = 1
    return mask


def test_band_of_width_one_is_the_outer_ring():
    target = boundary_target(square(), width=1)
    # A 7x7 square: its outer ring (24 px) touches background through a 4-neighbour (disk of radius 1).
    assert (target == BOUNDARY).sum() == 24
    assert (target == INTERIOR).sum() == 25
    assert (target[3:8, 3:8] == INTERIOR).all()
    assert (target[square() == 0] == 0).all()


def test_wider_band_and_separated_neighbours():
    mask = np.zeros((12, 23), np.uint8)
    mask[1:11, 1:11] = 1
    mask[1:11, 12:22] = 1  # a one-pixel background gap between two squares
    target = boundary_target(mask, width=2)
    interior_columns = np.flatnonzero((target == INTERIOR).any(axis=0))
    left = interior_columns[interior_columns < 11]
    right = interior_columns[interior_columns > 11]
    # The interiors end 2 px before the gap on each side: 1 + 2 * 2 = 5 columns apart.
    assert right.min() - left.max() == 6


def test_ignored_pixels_and_the_array_edge_make_no_boundary():
    mask = np.ones((8, 8), np.uint8)
    mask[:, 6:] = 255  # padding
    target = boundary_target(mask, width=1, ignore_index=255)
    assert (target[:, :6] == INTERIOR).all()
    assert (target[:, 6:] == 255).all()


def test_wrapper_applies_after_augmentation_and_validates_width():
    def flip(image, mask, rng):
        return image[:, ::-1], mask[:, ::-1]

    image = np.zeros((11, 11, 3), np.uint8)
    out_image, out_mask = add_boundary_target(flip, 1, None)(image, square(), None)
    assert out_image.shape == image.shape
    assert (out_mask == BOUNDARY).sum() == 24
    with pytest.raises(ValueError, match="at least 1"):
        boundary_target(square(), width=0)


# ------------------------------------------------------------------------------ HoVer maps


def _hover_reference(instances: np.ndarray) -> np.ndarray:
    """Straight from the definition, one nucleus at a time."""
    out = np.zeros((2, *instances.shape))
    for k in np.unique(instances[instances > 0]):
        rows, cols = np.nonzero(instances == k)
        for channel, coord in enumerate((cols, rows)):
            offset = coord - coord.mean()
            scaled = np.zeros_like(offset)
            if (offset > 0).any():
                scaled[offset > 0] = offset[offset > 0] / offset.max()
            if (offset < 0).any():
                scaled[offset < 0] = offset[offset < 0] / -offset.min()
            out[channel][rows, cols] = scaled
    return out


def test_hover_maps_hand_worked() -> None:
    instances = np.zeros((5, 7), dtype=np.int32)
    instances[1:4, 1:4] = 3  # 3x3 square: centroid (2, 2)
    instances[1, 5:7] = 9  # 1x2 bar: centroid x 5.5, no vertical extent
    maps = hover_maps(instances)
    assert maps.shape == (2, 5, 7) and maps.dtype == np.float32
    np.testing.assert_allclose(maps[0][1:4, 1:4], [[-1, 0, 1]] * 3)
    np.testing.assert_allclose(maps[1][1:4, 1:4], [[-1] * 3, [0] * 3, [1] * 3])
    np.testing.assert_allclose(maps[0][1, 5:7], [-1, 1])
    np.testing.assert_allclose(maps[1][1, 5:7], [0, 0])
    assert (maps[:, instances == 0] == 0).all()


def test_hover_maps_match_reference_on_random_nuclei() -> None:
    rng = np.random.default_rng(0)
    instances = np.zeros((40, 40), dtype=np.int32)
    for k in range(1, 15):
        r, c = rng.integers(0, 36, size=2)
        h, w = rng.integers(1, 7, size=2)
        instances[r : r + h, c : c + w] = k * 7  # later ones overlap earlier: irregular shapes
    instances[0, 0] = -1  # ignored padding counts as background
    np.testing.assert_allclose(hover_maps(instances), _hover_reference(np.maximum(instances, 0)), atol=1e-6)


def test_hover_maps_of_a_map_without_background() -> None:
    instances = np.ones((3, 3), dtype=np.int32)
    np.testing.assert_allclose(hover_maps(instances), _hover_reference(instances), atol=1e-6)
