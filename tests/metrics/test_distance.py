"""Boundary Hausdorff distances against scipy, MONAI and hand-worked cases."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from monai.metrics import compute_hausdorff_distance
from scipy import ndimage
from scipy.spatial.distance import directed_hausdorff

from pathseg.metrics import boundary_coordinates, hausdorff_distance, hd95, image_diagonal

# MONAI warns about one of its own internal arguments; that is not ours to fix.
monai_warning = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def test_boundary_of_square_by_hand() -> None:
    m = _square((5, 5), 1, 1, 3)
    coords = boundary_coordinates(m)
    assert coords.shape == (8, 2)
    assert coords.dtype == np.int64
    assert [2, 2] not in coords.tolist()  # the one interior pixel
    assert {tuple(c) for c in coords.tolist()} == {tuple(c) for c in np.argwhere(m) if tuple(c) != (2, 2)}


def test_image_border_counts_as_outside() -> None:
    full = np.ones((4, 6), dtype=bool)
    coords = {tuple(c) for c in boundary_coordinates(full).tolist()}
    expected = {(r, c) for r in range(4) for c in range(6) if r in (0, 3) or c in (0, 5)}
    assert coords == expected
    assert boundary_coordinates(np.zeros((3, 3))).shape == (0, 2)


@pytest.mark.parametrize("seed", range(4))
def test_boundary_matches_cross_erosion(seed: int, blob_mask) -> None:
    m = blob_mask(seed, fraction=0.45)
    cross = ndimage.generate_binary_structure(2, 1)
    ref = m & ~ndimage.binary_erosion(m, structure=cross, border_value=0)
    np.testing.assert_array_equal(boundary_coordinates(m), np.argwhere(ref))


@pytest.mark.parametrize("k", [1, 3, 7])
def test_shifted_squares_hand_worked(k: int) -> None:
    a = _square((40, 40), 10, 10, 12)
    b = _square((40, 40), 10, 10 + k, 12)
    assert hausdorff_distance(a, b) == pytest.approx(k)
    assert hausdorff_distance(b, a) == pytest.approx(k)
    # Diagonal shift by (k, k): the corners are k*sqrt(2) apart.
    c = _square((40, 40), 10 + k, 10 + k, 12)
    assert hausdorff_distance(a, c) == pytest.approx(k * np.sqrt(2))


def test_fixes_the_rows_as_points_bug() -> None:
    a = _square((30, 30), 5, 5, 10)
    b = _square((30, 30), 5, 8, 10)
    # What the seed computed: every image row taken as one 30-dimensional point.
    rows_as_points = max(
        directed_hausdorff(a.astype(float), b.astype(float))[0],
        directed_hausdorff(b.astype(float), a.astype(float))[0],
    )
    assert rows_as_points == pytest.approx(np.sqrt(6))  # 3 + 3 differing pixels per row, not 3
    assert hausdorff_distance(a, b) == pytest.approx(3.0)
    assert hausdorff_distance(a, b) != pytest.approx(rows_as_points)


def _scipy_reference(a: np.ndarray, b: np.ndarray, spacing=(1.0, 1.0)) -> float:
    pa = boundary_coordinates(a) * np.asarray(spacing)
    pb = boundary_coordinates(b) * np.asarray(spacing)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


@pytest.mark.parametrize("seed", range(6))
def test_matches_scipy_directed_hausdorff_on_coordinates(seed: int, blob_mask) -> None:
    a, b = blob_mask(seed), blob_mask(seed + 20, sigma=4.0)
    assert hausdorff_distance(a, b) == pytest.approx(_scipy_reference(a, b), abs=1e-9)
    spacing = (0.5, 1.25)
    assert hausdorff_distance(a, b, spacing=spacing) == pytest.approx(
        _scipy_reference(a, b, spacing), abs=1e-9
    )


def _monai(a: np.ndarray, b: np.ndarray, percentile: float | None) -> float:
    t = lambda x: torch.from_numpy(x.astype(np.float32))[None, None]  # noqa: E731
    return float(compute_hausdorff_distance(t(a), t(b), include_background=True, percentile=percentile))


@monai_warning
@pytest.mark.parametrize("seed", range(6))
def test_hd95_and_hd_match_monai(seed: int, blob_mask) -> None:
    # MONAI's edges are binary_erosion(mask) ^ mask with a cross structure and zero padding, i.e.
    # the same boundary set, and its HD95 is the max of the two directed 95th percentiles.
    a, b = blob_mask(seed), blob_mask(seed + 30, sigma=2.0, fraction=0.4)
    assert hd95(a, b) == pytest.approx(_monai(a, b, 95), rel=1e-5, abs=1e-5)
    assert hausdorff_distance(a, b) == pytest.approx(_monai(a, b, None), rel=1e-5, abs=1e-5)


@monai_warning
def test_hd95_matches_monai_when_touching_the_border() -> None:
    a = np.zeros((20, 30), bool)
    a[:8, :] = True
    b = np.zeros((20, 30), bool)
    b[:5, 3:] = True
    b[15:, 20:] = True
    assert hd95(a, b) == pytest.approx(_monai(a, b, 95), abs=1e-5)
    assert hausdorff_distance(a, b, percentile=50) == pytest.approx(_monai(a, b, 50), abs=1e-5)


def test_hd95_hand_worked() -> None:
    # Two 1-pixel-wide horizontal lines: every point of b is 2 rows below a, except for the
    # extra 20 columns of b that are farther away in both row and column.
    a = np.zeros((10, 60), bool)
    a[2, 0:20] = True
    b = np.zeros((10, 60), bool)
    b[4, 0:40] = True
    # a -> b: all 20 distances are 2. b -> a: 20 points at 2, then sqrt(4 + j^2) for j = 1..20.
    d_ba = np.array([2.0] * 20 + [np.hypot(2, j) for j in range(1, 21)])
    expected = max(2.0, float(np.percentile(d_ba, 95)))
    assert hd95(a, b) == pytest.approx(expected)
    assert hausdorff_distance(a, b) == pytest.approx(np.hypot(2, 20))


def test_empty_conventions() -> None:
    empty = np.zeros((30, 40), bool)
    some = _square((30, 40), 3, 3, 4)
    assert hausdorff_distance(empty, empty) == 0.0
    assert hd95(empty, empty) == 0.0
    assert hausdorff_distance(some, empty) == pytest.approx(50.0)  # hypot(30, 40)
    assert hd95(empty, some) == pytest.approx(50.0)
    assert hausdorff_distance(some, empty, spacing=(2.0, 0.5)) == pytest.approx(np.hypot(60, 20))
    assert image_diagonal((30, 40)) == pytest.approx(50.0)


def test_input_validation() -> None:
    a = np.zeros((5, 5), bool)
    with pytest.raises(ValueError, match="shapes differ"):
        hausdorff_distance(a, np.zeros((5, 6), bool))
    with pytest.raises(ValueError, match="percentile"):
        hausdorff_distance(a, a, percentile=120)
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance(a, a, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="2-D"):
        boundary_coordinates(np.zeros((2, 2, 2)))


def test_fast_on_large_images(blob_mask) -> None:
    a = blob_mask(1, shape=(600, 800), sigma=12.0, fraction=0.4)
    b = blob_mask(2, shape=(600, 800), sigma=12.0, fraction=0.4)
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        hd95(a, b)
        best = min(best, time.perf_counter() - start)
    assert best < 0.1
