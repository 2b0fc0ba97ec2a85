"""Accumulate per-image and dataset-level segmentation metrics.

Per image (``update``):

* everything from :func:`~pathseg.metrics.overlap.scores_from_confusion` on that image's
  confusion matrix (conventions documented there: a class absent from both maps scores 1.0 in
  the per-class keys, and is left out of ``miou``);
* ``hausdorff`` and ``hd95`` between the merged foregrounds (all classes ``>= foreground_start``),
  plus ``hd95/<name>`` per foreground class when there is more than one; conventions of
  :mod:`pathseg.metrics.distance` (both empty → 0, one empty → the image diagonal);
* with ``object_metrics``: ``object_f1``, ``object_dice``, ``object_hausdorff`` where predicted
  objects are ``pred_instances`` when given (a post-processing that separates touching objects),
  else the 8-connected components of the merged predicted foreground, and ground-truth
  objects are ``gt_instances`` when given (needed when touching glands share a class), else the
  components of the merged target foreground;
* when both ``pred_instances`` and ``gt_instances`` are given: ``aji``, ``pq``, ``dq``, ``sq``.

Ignored pixels (``target == ignore_index``) are left out of the confusion matrix and are set to
background in *both* maps (class maps and instance maps) before distances, objects and instance
metrics, so neither side is rewarded or penalised for what it has there.

``summary()`` returns the NaN-aware mean over images of every per-image key (names unchanged),
the same confusion-matrix scores computed from the summed confusion matrix with a ``global_``
prefix (``global_dice``, ``global_miou``, ``global_dice/<name>``, ...), ``global_object_f1``
from the summed object TP/FP/FN counts when object metrics are on, and ``num_images``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from pathseg.metrics.distance import _check_spacing, hausdorff_distances
from pathseg.metrics.instances import aji, panoptic_quality
from pathseg.metrics.objects import _ObjectEvaluation, label_objects
from pathseg.metrics.overlap import confusion_matrix, scores_from_confusion

__all__ = ["SegmentationEvaluator"]


class SegmentationEvaluator:
    """Collects metrics image by image; see the module docstring for keys and conventions."""

    def __init__(
        self,
        class_names: list[str],
        ignore_index: int | None = None,
        object_metrics: bool = True,
        distance_metrics: bool = True,
        foreground_start: int = 1,
        spacing: Sequence[float] = (1.0, 1.0),
    ) -> None:
        if not class_names:
            raise ValueError("class_names must name at least one class")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names must be unique, got {class_names}")
        k = len(class_names)
        if k > 1 and not 0 <= foreground_start < k:
            raise ValueError(f"foreground_start must be in [0, {k}), got {foreground_start}")
        self.class_names = list(class_names)
        self.num_classes = k
        self.ignore_index = ignore_index
        self.object_metrics = object_metrics
        self.distance_metrics = distance_metrics
        self.foreground_start = foreground_start if k > 1 else 0
        self.spacing = _check_spacing(spacing)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._records: list[dict[str, Any]] = []
        self._cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self._object_counts = np.zeros(3, dtype=np.int64)  # tp, fp, fn
        self._has_objects = False

    def update(
        self,
        pred: np.ndarray,
        target: np.ndarray,
        name: str = "",
        pred_instances: np.ndarray | None = None,
        gt_instances: np.ndarray | None = None,
    ) -> dict[str, float]:
        """pred/target: HxW integer class maps. Returns this image's metrics and stores them."""
        pred = np.asarray(pred)
        target = np.asarray(target)
        if pred.ndim != 2 or target.ndim != 2:
            raise ValueError(f"pred and target must be HxW class maps, got {pred.shape} and {target.shape}")
        cm = confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        self._cm += cm
        metrics: dict[str, float] = scores_from_confusion(cm, self.class_names, self.foreground_start)

        valid = None if self.ignore_index is None else target != self.ignore_index
        fg_classes = range(self.foreground_start, self.num_classes)

        def fg(mask: np.ndarray) -> np.ndarray:
            return mask if valid is None else mask & valid

        # Class values were range-checked by confusion_matrix (outside ignored pixels, which
        # `valid` removes), so the foreground classes are exactly the values >= foreground_start.
        pred_fg = fg(pred >= self.foreground_start)
        target_fg = fg(target >= self.foreground_start)

        if self.distance_metrics:
            hd, hd_95 = hausdorff_distances(pred_fg, target_fg, [100.0, 95.0], self.spacing)
            metrics["hausdorff"] = hd
            metrics["hd95"] = hd_95
            if len(fg_classes) > 1:
                for c in fg_classes:
                    metrics[f"hd95/{self.class_names[c]}"] = hausdorff_distances(
                        fg(pred == c), fg(target == c), [95.0], self.spacing
                    )[0]

        if self.object_metrics:
            if pred_instances is not None:
                pred_obj = self._masked_instances(pred_instances, target.shape, valid, "pred_instances")
            else:
                pred_obj = label_objects(pred_fg)
            if gt_instances is not None:
                gt_obj = self._masked_instances(gt_instances, target.shape, valid, "gt_instances")
            else:
                gt_obj = label_objects(target_fg)
            ev = _ObjectEvaluation(pred_obj, gt_obj, self.spacing)
            f1 = ev.f1()
            metrics["object_f1"] = f1["object_f1"]
            metrics["object_dice"] = ev.dice()
            metrics["object_hausdorff"] = ev.hausdorff()
            self._object_counts += np.array([f1["tp"], f1["fp"], f1["fn"]], dtype=np.int64)
            self._has_objects = True

        if pred_instances is not None and gt_instances is not None:
            p_inst = self._masked_instances(pred_instances, target.shape, valid, "pred_instances")
            g_inst = self._masked_instances(gt_instances, target.shape, valid, "gt_instances")
            metrics["aji"] = aji(p_inst, g_inst)
            pq = panoptic_quality(p_inst, g_inst)
            metrics["pq"] = pq["pq"]
            metrics["dq"] = pq["dq"]
            metrics["sq"] = pq["sq"]

        self._records.append({"name": name, **metrics})
        return dict(metrics)

    @staticmethod
    def _masked_instances(
        inst: np.ndarray, shape: tuple[int, ...], valid: np.ndarray | None, what: str
    ) -> np.ndarray:
        arr = np.asarray(inst)
        if arr.shape != shape:
            raise ValueError(f"{what} shape {arr.shape} differs from the class maps' {shape}")
        if valid is None:
            return arr
        return np.where(valid, arr, 0)

    @property
    def per_image(self) -> list[dict]:
        """One dict per ``update`` call: ``"name"`` plus that image's metrics (copies)."""
        return [dict(r) for r in self._records]

    def summary(self) -> dict[str, float]:
        """Mean of every per-image key over images, ``global_*`` keys from the summed confusion matrix,
        ``global_object_f1`` (summed object counts) and ``num_images``."""
        out: dict[str, float] = {}
        # Insertion-ordered union of keys: images may differ (e.g. instances given for some only).
        keys = dict.fromkeys(k for rec in self._records for k in rec if k != "name")
        for key in keys:
            values = np.array([rec.get(key, np.nan) for rec in self._records], dtype=np.float64)
            with warnings.catch_warnings():
                # An all-NaN column (e.g. miou when every pixel was ignored) is NaN, not a warning.
                warnings.simplefilter("ignore", category=RuntimeWarning)
                out[key] = float(np.nanmean(values)) if values.size else float("nan")
        if self._records:
            dataset = scores_from_confusion(self._cm, self.class_names, self.foreground_start)
            out.update({f"global_{key}": value for key, value in dataset.items()})
        if self._has_objects:
            tp, fp, fn = (int(v) for v in self._object_counts)
            out["global_object_f1"] = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        out["num_images"] = len(self._records)
        return out
