"""Boundary distances between two binary masks (Hausdorff distance and HD95).

Definitions
-----------
* The *boundary* of a mask is the set of its foreground pixels that have at least one
  4-neighbour outside the mask; pixels outside the image count as outside. This is the same edge
  set MONAI gets from ``binary_erosion(mask) ^ mask`` with a cross-shaped structuring element.
* Distances are Euclidean between boundary pixel **coordinates** ``(row, col)`` scaled by
  ``spacing = (row spacing, column spacing)``. (The GenSelfDiff seed passed the masks themselves
  to ``scipy.spatial.distance.directed_hausdorff``, which treats every image *row* as one
  W-dimensional point; that is not a distance between shapes. Using coordinates fixes it.)
* Symmetric, percentile version (MONAI's definition): for each direction take the ``percentile``-th
  percentile (linear interpolation, as ``numpy.percentile`` / ``torch.quantile``) of the distances
  from every boundary pixel of one mask to the nearest boundary pixel of the other, and return the
  larger of the two. ``percentile=100`` is the classic Hausdorff distance.
* Empty masks: both empty → ``0.0``; exactly one empty → the image diagonal
  ``hypot(H * row_spacing, W * col_spacing)``, larger than any distance two pixels of the image
  can have, so it is the worst finite value instead of ``inf``/NaN (which would poison means).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["boundary_coordinates", "hausdorff_distance", "hausdorff_distances", "hd95", "image_diagonal"]


def _as_mask(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D mask, got shape {arr.shape}")
    return arr.astype(bool, copy=False)


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 2 or not all(np.isfinite(s) and s > 0 for s in sp):
        raise ValueError(f"spacing must be two positive numbers (row, col), got {spacing!r}")
    return sp  # type: ignore[return-value]


def image_diagonal(shape: Sequence[int], spacing: Sequence[float] = (1.0, 1.0)) -> float:
    """Length of the image diagonal ``hypot(H * row_spacing, W * col_spacing)``."""
    sy, sx = _check_spacing(spacing)
    return float(np.hypot(shape[0] * sy, shape[1] * sx))


def boundary_coordinates(mask: np.ndarray) -> np.ndarray:
    """Return the ``(N, 2)`` int64 ``(row, col)`` coordinates of the boundary pixels of ``mask``.

    A boundary pixel is a foreground (non-zero) pixel with a 4-neighbour outside the mask; the
    image border counts as outside, so foreground touching the border is boundary there.
    """
    m = _as_mask(mask, "mask")
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cols = np.flatnonzero(m.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Work on the bounding box only: masks are often small compared with the image.
    padded = np.pad(m[r0:r1, c0:c1], 1, constant_values=False)
    core = padded[1:-1, 1:-1]
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    coords = np.argwhere(core & ~interior).astype(np.int64)
    coords += np.array([r0, c0], dtype=np.int64)
    return coords


def _directed_distances(
    pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances pred-boundary → nearest target-boundary and target → pred (both masks non-empty)."""
    scale = np.asarray(_check_spacing(spacing), dtype=np.float64)
    bp = boundary_coordinates(pred) * scale
    bt = boundary_coordinates(target) * scale
    d_pt = cKDTree(bt).query(bp, k=1)[0]
    d_tp = cKDTree(bp).query(bt, k=1)[0]
    return d_pt, d_tp


def _symmetric(d_pt: np.ndarray, d_tp: np.ndarray, percentile: float) -> float:
    if percentile >= 100.0:
        return float(max(d_pt.max(), d_tp.max()))
    return float(max(np.percentile(d_pt, percentile), np.percentile(d_tp, percentile)))


def hausdorff_distances(
    pred: np.ndarray,
    target: np.ndarray,
    percentiles: Sequence[float],
    spacing: Sequence[float] = (1.0, 1.0),
) -> list[float]:
    """Several symmetric percentile Hausdorff distances at once (the boundaries are found once)."""
    p = _as_mask(pred, "pred")
    t = _as_mask(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    for q in percentiles:
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
    spacing = _check_spacing(spacing)
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return [0.0 for _ in percentiles]
    if p_any != t_any:
        return [image_diagonal(p.shape, spacing) for _ in percentiles]
    d_pt, d_tp = _directed_distances(p, t, spacing)
    return [_symmetric(d_pt, d_tp, q) for q in percentiles]


def hausdorff_distance(
    pred: np.ndarray,
    target: np.ndarray,
    percentile: float = 100.0,
    spacing: tuple[float, float] = (1.0, 1.0),
) -> float:
    """Symmetric (percentile) Hausdorff distance between the boundaries of two binary masks.

    Computed on boundary pixel coordinates (not on mask rows, the seed's bug), returning
    ``max(P_q(d(pred→target)), P_q(d(target→pred)))`` as MONAI does. Both empty → 0.0; one empty →
    the image diagonal in ``spacing`` units. See the module docstring for details.
    """
    return hausdorff_distances(pred, target, [percentile], spacing)[0]


def hd95(pred: np.ndarray, target: np.ndarray, spacing: tuple[float, float] = (1.0, 1.0)) -> float:
    """95th-percentile Hausdorff distance (MONAI definition), see :func:`hausdorff_distance`."""
    return hausdorff_distance(pred, target, percentile=95.0, spacing=spacing)
