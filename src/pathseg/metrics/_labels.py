"""Shared helpers for instance label maps (0 = background, any positive id = one object)."""

from __future__ import annotations

import numpy as np

# Above this many possible ids a lookup table would cost more than sorting the pixels.
_MAX_LUT = 1 << 22


def as_instance_map(x: np.ndarray, what: str) -> np.ndarray:
    """Validate an instance map and return it as a 2-D int64 array."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be a 2-D instance label map, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    # Float maps are accepted only when they hold whole numbers (e.g. read back from torch).
    whole_floats = np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
    if not np.issubdtype(arr.dtype, np.integer) and not whole_floats:
        raise ValueError(f"{what} must hold integer instance ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} has negative instance ids; 0 is background and objects are > 0")
    return arr


def compact_labels(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber ids to ``0..N`` keeping 0 as background.

    Returns ``(compact, ids)``: ``compact`` has the image's shape, and ``ids[k - 1]`` is the original
    id of compact object ``k``. Ids need not be consecutive (e.g. after filtering objects).
    """
    flat = inst.ravel()
    top = int(flat.max()) if flat.size else 0
    if top <= max(_MAX_LUT, 4 * flat.size):
        present = np.bincount(flat, minlength=1) > 0
        present[0] = True
        lut = np.cumsum(present) - 1
        ids = np.flatnonzero(present)[1:]
        return lut[inst], ids
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:
        inverse = inverse + 1
    else:
        ids = ids[1:]
    return inverse.reshape(inst.shape), ids


def contingency(pred_compact: np.ndarray, n_pred: int, gt_compact: np.ndarray, n_gt: int) -> np.ndarray:
    """Joint pixel histogram ``(n_gt + 1, n_pred + 1)``: ``[g, p]`` = pixels with gt ``g`` and pred ``p``.

    Row and column 0 are background, so object areas are the row/column sums.
    """
    joint = gt_compact.ravel() * (n_pred + 1) + pred_compact.ravel()
    return np.bincount(joint, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)


class InstancePair:
    """Prediction and ground-truth instance maps with their overlap table, computed once."""

    def __init__(self, pred_inst: np.ndarray, gt_inst: np.ndarray) -> None:
        pred = as_instance_map(pred_inst, "pred_inst")
        gt = as_instance_map(gt_inst, "gt_inst")
        if pred.shape != gt.shape:
            raise ValueError(f"pred_inst and gt_inst shapes differ: {pred.shape} vs {gt.shape}")
        self.shape = pred.shape
        self.pred, self.pred_ids = compact_labels(pred)
        self.gt, self.gt_ids = compact_labels(gt)
        self.n_pred = len(self.pred_ids)
        self.n_gt = len(self.gt_ids)
        table = contingency(self.pred, self.n_pred, self.gt, self.n_gt)
        # Object-vs-object overlaps only; background row/column give the areas.
        self.inter = table[1:, 1:]
        self.gt_area = table[1:, :].sum(axis=1)
        self.pred_area = table[:, 1:].sum(axis=0)

    def iou_matrix(self) -> np.ndarray:
        """``(n_gt, n_pred)`` IoU of every ground-truth / predicted object pair."""
        inter = self.inter.astype(np.float64)
        union = self.gt_area[:, None] + self.pred_area[None, :] - inter
        return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
