"""Pixel-overlap metrics computed from a confusion matrix.

Conventions
-----------
* The confusion matrix has ground truth on the rows and prediction on the columns:
  ``cm[t, p]`` counts pixels of true class ``t`` predicted as ``p``.
* Per class ``c``: ``TP = cm[c, c]``, ``FP = column sum - TP``, ``FN = row sum - TP`` and
  ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``,
  ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``.
* Empty sets (the per-class keys ``dice/<name>``, ``iou/<name>``, ``precision/<name>``,
  ``recall/<name>`` and the foreground means built from them): a ratio whose denominator is zero
  is **1.0 when the class is absent from both ground truth and prediction** (nothing to find,
  nothing wrongly found) and **0.0 otherwise** (e.g. precision of a class that is in the ground
  truth but never predicted, recall of a class that is predicted but not in the ground truth).
  Dice and IoU only have a zero denominator in the "absent from both" case.
* ``miou`` does *not* use that convention: it is the nanmean of IoU over all classes where a class
  absent from both maps is NaN and left out (the usual WSSS / semantic-segmentation definition).
  A class that is only predicted counts with IoU 0.
* ``mean_accuracy`` is the nanmean of recall over the classes present in the ground truth.
* ``fwiou = sum_c f_c * IoU_c`` over the classes with ground-truth frequency ``f_c > 0``.
* ``pixel_accuracy = trace(cm) / sum(cm)``.
* An all-zero confusion matrix (e.g. every pixel ignored) gives NaN for ``miou``,
  ``mean_accuracy``, ``fwiou`` and ``pixel_accuracy``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["confusion_matrix", "dice_score", "iou_score", "scores_from_confusion"]


def _as_label_array(x: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        # Float label maps appear when masks come out of torch or image readers; accept them
        # only when every value is a whole number so a probability map is never silently binned.
        if not np.all(np.isfinite(arr)) or not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{what} must hold integer class indices, got non-integer float values")
        return arr.astype(np.int64)
    raise ValueError(f"{what} must be an integer class map, got dtype {arr.dtype}")


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int | None = None
) -> np.ndarray:
    """Return the ``num_classes x num_classes`` int64 confusion matrix (rows: truth, columns: prediction).

    Pixels whose *target* equals ``ignore_index`` are left out (whatever the prediction is there).
    Raises ``ValueError`` on a shape mismatch or on a class value outside ``[0, num_classes)``.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    p = _as_label_array(pred, "pred")
    t = _as_label_array(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    p = p.ravel()
    t = t.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        p = p[keep]
        t = t[keep]
    for arr, what in ((t, "target"), (p, "pred")):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            bad = np.unique(arr[(arr < 0) | (arr >= num_classes)])[:5].tolist()
            hint = "" if ignore_index is None else f" (ignore_index={ignore_index} applies to target only)"
            raise ValueError(f"{what} has class values outside [0, {num_classes}), e.g. {bad}{hint}")
    flat = t * num_classes + p
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray, absent: np.ndarray) -> np.ndarray:
    """num/den, with 0/0 resolved to 1 for classes absent from both maps and to 0 otherwise."""
    out = np.where(absent, 1.0, 0.0)
    nz = den > 0
    out[nz] = num[nz] / den[nz]
    return out


def scores_from_confusion(
    cm: np.ndarray, class_names: list[str] | None = None, foreground_start: int = 1
) -> dict[str, float]:
    """Turn a confusion matrix into per-class and summary scores (see the module docstring).

    Keys: ``dice/<name>``, ``iou/<name>``, ``precision/<name>``, ``recall/<name>`` for every class;
    ``dice``, ``iou``, ``precision``, ``recall`` = mean over the foreground classes (index
    ``>= foreground_start``; all classes when there is one class or ``foreground_start == 0``);
    ``miou``, ``fwiou``, ``pixel_accuracy``, ``mean_accuracy``.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square KxK with K >= 1, got shape {cm.shape}")
    k = cm.shape[0]
    if class_names is None:
        class_names = [str(i) for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"got {len(class_names)} class names for a {k}x{k} confusion matrix")
    if k > 1 and not 0 <= foreground_start < k:
        raise ValueError(f"foreground_start must be in [0, {k}), got {foreground_start}")

    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pr = cm.sum(axis=0)
    fp = pr - tp
    fn = gt - tp
    absent = (gt == 0) & (pr == 0)

    dice = _ratio(2 * tp, 2 * tp + fp + fn, absent)
    iou = _ratio(tp, tp + fp + fn, absent)
    precision = _ratio(tp, tp + fp, absent)
    recall = _ratio(tp, tp + fn, absent)

    out: dict[str, float] = {}
    for name, values in (("dice", dice), ("iou", iou), ("precision", precision), ("recall", recall)):
        for c, cname in enumerate(class_names):
            out[f"{name}/{cname}"] = float(values[c])

    fg = slice(0, k) if (k == 1 or foreground_start == 0) else slice(foreground_start, k)
    out["dice"] = float(dice[fg].mean())
    out["iou"] = float(iou[fg].mean())
    out["precision"] = float(precision[fg].mean())
    out["recall"] = float(recall[fg].mean())

    total = cm.sum()
    # NaN-marked copies: absent classes drop out of the nanmeans instead of counting as perfect.
    iou_nan = np.where(absent, np.nan, iou)
    recall_nan = np.full(k, np.nan)
    recall_nan[gt > 0] = tp[gt > 0] / gt[gt > 0]
    out["miou"] = _nanmean(iou_nan)
    out["mean_accuracy"] = _nanmean(recall_nan)
    if total > 0:
        freq = gt / total
        present = freq > 0
        out["fwiou"] = float(np.sum(freq[present] * iou[present]))
        out["pixel_accuracy"] = float(tp.sum() / total)
    else:
        out["fwiou"] = float("nan")
        out["pixel_accuracy"] = float("nan")
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def dice_score(pred_bool: np.ndarray, target_bool: np.ndarray) -> float:
    """Binary Dice ``2|P∩T| / (|P| + |T|)`` of two masks (non-zero = foreground); both empty → 1.0."""
    p = np.asarray(pred_bool).astype(bool, copy=False)
    t = np.asarray(target_bool).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    den = int(p.sum()) + int(t.sum())
    if den == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / den


def iou_score(pred_bool: np.ndarray, target_bool: np.ndarray) -> float:
    """Binary IoU ``|P∩T| / |P∪T|`` of two masks (non-zero = foreground); both empty → 1.0."""
    p = np.asarray(pred_bool).astype(bool, copy=False)
    t = np.asarray(target_bool).astype(bool, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    union = int(np.count_nonzero(p | t))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & t)) / union
