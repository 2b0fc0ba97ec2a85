"""Nucleus instance metrics: Aggregated Jaccard Index and Panoptic Quality.

Inputs are instance label maps (0 = background, each positive id one nucleus; ids need not be
consecutive). All pairwise overlaps come from one joint histogram of the two maps, so the cost is
one pass over the pixels plus work proportional to the number of instance pairs, not one
full-image mask per pair.

Empty maps: both empty → AJI 1 and PQ = DQ = SQ = 1; exactly one empty → AJI 0 and
PQ = DQ = SQ = 0.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pathseg.metrics._labels import InstancePair

__all__ = ["aji", "panoptic_quality"]


def aji(pred_inst: np.ndarray, gt_inst: np.ndarray) -> float:
    """Aggregated Jaccard Index, the MoNuSeg "fast AJI" variant.

    Each ground-truth nucleus G is paired with the prediction P* of highest IoU among those that
    overlap it (a prediction may be reused; ties go to the smaller id). Then
    ``AJI = Σ|G ∩ P*| / (Σ|G ∪ P*| + Σ|G without partner| + Σ|P never chosen|)``.
    """
    pair = InstancePair(pred_inst, gt_inst)
    if pair.n_gt == 0 and pair.n_pred == 0:
        return 1.0
    if pair.n_gt == 0 or pair.n_pred == 0:
        return 0.0
    iou = pair.iou_matrix()
    best = iou.argmax(axis=1)
    rows = np.arange(pair.n_gt)
    matched = iou[rows, best] > 0
    g_idx, p_idx = rows[matched], best[matched]
    inter = pair.inter[g_idx, p_idx]
    union = pair.gt_area[g_idx] + pair.pred_area[p_idx] - inter
    used = np.zeros(pair.n_pred, dtype=bool)
    used[p_idx] = True
    denominator = union.sum() + pair.gt_area[~matched].sum() + pair.pred_area[~used].sum()
    return float(inter.sum() / denominator)


def panoptic_quality(
    pred_inst: np.ndarray, gt_inst: np.ndarray, iou_threshold: float = 0.5
) -> dict[str, float]:
    """Panoptic quality ``pq = dq * sq`` with ``dq``, ``sq``, ``tp``, ``fp``, ``fn``.

    Pairs with IoU strictly above ``iou_threshold`` are matches. At the standard 0.5 such pairs are
    unique by construction (two disjoint objects cannot both have IoU > 0.5 with a third); for a
    lower threshold the one-to-one matching maximising the summed IoU is used.
    ``dq = TP / (TP + FP/2 + FN/2)``, ``sq`` = mean IoU of the matches (0 without any).
    """
    if not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
    pair = InstancePair(pred_inst, gt_inst)
    if pair.n_gt == 0 and pair.n_pred == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    iou = pair.iou_matrix()
    if iou.size == 0:
        match_iou = np.zeros(0)
    elif iou_threshold >= 0.5:
        match_iou = iou[iou > iou_threshold]
    else:
        # Only pairs that overlap at all can ever match, so the assignment runs on those rows/cols.
        cand = np.where(iou > iou_threshold, iou, 0.0)
        rows = np.flatnonzero(cand.any(axis=1))
        cols = np.flatnonzero(cand.any(axis=0))
        sub = cand[np.ix_(rows, cols)]
        r, c = linear_sum_assignment(sub, maximize=True)
        match_iou = sub[r, c]
        match_iou = match_iou[match_iou > iou_threshold]
    tp = int(match_iou.size)
    fp = pair.n_pred - tp
    fn = pair.n_gt - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(match_iou.sum() / tp) if tp else 0.0
    return {"pq": float(dq * sq), "dq": float(dq), "sq": sq, "tp": tp, "fp": fp, "fn": fn}
