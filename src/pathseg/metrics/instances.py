"""Nucleus instance metrics: Aggregated Jaccard Index, Panoptic Quality and binary Dice, per image
and pooled over a test set (:class:`NucleusEvaluator`).

Inputs are instance label maps (0 = background, each positive id one nucleus; ids need not be
consecutive). All pairwise overlaps come from one joint histogram of the two maps, so the cost is
one pass over the pixels plus work proportional to the number of instance pairs, not one
full-image mask per pair.

Empty maps: both empty → AJI 1 and PQ = DQ = SQ = 1; exactly one empty → AJI 0 and
PQ = DQ = SQ = 0.

Per image and pooled
--------------------
Nucleus papers report the *mean over images* (HoVer-Net, UNITPathSSL's evaluator); MoNuSeg's
organisers also pooled AJI over the test set (one ratio of summed intersections and unions), which
weights an image by its number of nuclei. :class:`NucleusEvaluator` gives both: ``aji``, ``pq``,
... are means over images, ``pooled_aji`` etc. come from the summed terms of all images (for PQ
the summed TP, FP, FN and matched IoU). Dice is the binary (nucleus vs background) Dice
``2|G ∩ P| / (|G| + |P|)``, 1 when both are empty.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pathseg.metrics._labels import InstancePair

__all__ = ["NucleusEvaluator", "aji", "binary_dice", "panoptic_quality"]


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
    numerator, denominator = _aji_terms(pair)
    return numerator / denominator


def _aji_terms(pair: InstancePair) -> tuple[float, float]:
    """AJI's numerator and denominator (the pooled AJI sums them over images)."""
    if pair.n_gt == 0 or pair.n_pred == 0:
        return 0.0, float(pair.gt_area.sum() + pair.pred_area.sum())
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
    return float(inter.sum()), float(denominator)


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
    match_iou = _matched_ious(pair, iou_threshold)
    tp = int(match_iou.size)
    fp = pair.n_pred - tp
    fn = pair.n_gt - tp
    return {**_pq_from_counts(tp, fp, fn, float(match_iou.sum())), "tp": tp, "fp": fp, "fn": fn}


def _pq_from_counts(tp: int, fp: int, fn: int, iou_sum: float) -> dict[str, float]:
    if tp + fp + fn == 0:
        return {"pq": 1.0, "dq": 1.0, "sq": 1.0}
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return {"pq": float(dq * sq), "dq": float(dq), "sq": float(sq)}


def _matched_ious(pair: InstancePair, iou_threshold: float) -> np.ndarray:
    """IoU of every matched (ground truth, prediction) pair."""
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
    return match_iou


def binary_dice(pred_inst: np.ndarray, gt_inst: np.ndarray) -> float:
    """Dice of the nucleus pixels (any id > 0) of two maps; 1 when both have none."""
    pred, gt = np.asarray(pred_inst) > 0, np.asarray(gt_inst) > 0
    if pred.shape != gt.shape:
        raise ValueError(f"pred_inst and gt_inst shapes differ: {pred.shape} vs {gt.shape}")
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


class NucleusEvaluator:
    """Nucleus instance metrics image by image, then means over images and pooled values.

    ``update(pred, gt, name)`` scores one image (instance maps of one size) and returns its
    ``aji``, ``pq``, ``dq``, ``sq``, ``dice``, ``tp``, ``fp``, ``fn``, ``num_gt``, ``num_pred``.
    ``summary()`` gives the mean of each of ``MEAN_KEYS`` over images; ``pooled_aji``,
    ``pooled_pq``, ``pooled_dq``, ``pooled_sq`` and ``pooled_dice`` from the terms summed over
    images; ``num_images``; and the ``per_image`` rows.
    """

    MEAN_KEYS = ("aji", "pq", "dq", "sq", "dice")

    def __init__(self, iou_threshold: float = 0.5) -> None:
        if not 0.0 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0, 1), got {iou_threshold}")
        self.iou_threshold = iou_threshold
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._rows: list[dict] = []
        self._sums = dict.fromkeys(
            ("aji_num", "aji_den", "tp", "fp", "fn", "iou_sum", "dice_num", "dice_den"), 0.0
        )

    def update(self, pred_inst: np.ndarray, gt_inst: np.ndarray, name: str = "") -> dict:
        """Score one image; returns its metrics (and keeps them for :meth:`summary`)."""
        pair = InstancePair(pred_inst, gt_inst)
        empty = pair.n_gt == 0 and pair.n_pred == 0
        aji_num, aji_den = (0.0, 0.0) if empty else _aji_terms(pair)
        match_iou = np.zeros(0) if empty else _matched_ious(pair, self.iou_threshold)
        tp = int(match_iou.size)
        fp, fn = pair.n_pred - tp, pair.n_gt - tp
        quality = _pq_from_counts(tp, fp, fn, float(match_iou.sum()))
        dice_num = 2.0 * float(pair.inter.sum())
        dice_den = float(pair.pred_area.sum() + pair.gt_area.sum())
        row = {
            "name": name,
            "aji": 1.0 if empty else aji_num / aji_den,
            "pq": quality["pq"],
            "dq": quality["dq"],
            "sq": quality["sq"],
            "dice": 1.0 if dice_den == 0 else dice_num / dice_den,
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "num_gt": pair.n_gt,
            "num_pred": pair.n_pred,
        }
        self._rows.append(row)
        for key, value in zip(
            self._sums,
            (aji_num, aji_den, tp, fp, fn, float(match_iou.sum()), dice_num, dice_den),
            strict=True,
        ):
            self._sums[key] += value
        return {k: v for k, v in row.items() if k != "name"}

    def summary(self) -> dict:
        """Means over images, pooled metrics, ``num_images`` and ``per_image``."""
        out: dict = {}
        for key in self.MEAN_KEYS:
            values = [row[key] for row in self._rows]
            out[key] = float(np.mean(values)) if values else float("nan")
        sums = self._sums
        pooled = _pq_from_counts(int(sums["tp"]), int(sums["fp"]), int(sums["fn"]), sums["iou_sum"])
        out |= {
            "pooled_aji": sums["aji_num"] / sums["aji_den"] if sums["aji_den"] else float("nan"),
            "pooled_pq": pooled["pq"],
            "pooled_dq": pooled["dq"],
            "pooled_sq": pooled["sq"],
            "pooled_dice": sums["dice_num"] / sums["dice_den"] if sums["dice_den"] else float("nan"),
            "num_images": len(self._rows),
            "per_image": [dict(row) for row in self._rows],
        }
        return out
