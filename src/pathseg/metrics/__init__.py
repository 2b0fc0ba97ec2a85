"""Segmentation metrics: pixel overlap, boundary distances, GlaS object metrics, nucleus instance metrics.

Everything here is plain numpy/scipy; conventions (empty masks, ignored pixels, which Hausdorff
definition) are stated in each module's docstring.
"""

from pathseg.metrics.distance import (
    boundary_coordinates,
    hausdorff_distance,
    hausdorff_distances,
    hd95,
    image_diagonal,
)
from pathseg.metrics.evaluator import SegmentationEvaluator
from pathseg.metrics.instances import aji, panoptic_quality
from pathseg.metrics.objects import (
    glas_object_metrics,
    label_objects,
    object_dice,
    object_f1,
    object_hausdorff,
)
from pathseg.metrics.overlap import confusion_matrix, dice_score, iou_score, scores_from_confusion

__all__ = [
    "SegmentationEvaluator",
    "aji",
    "boundary_coordinates",
    "confusion_matrix",
    "dice_score",
    "glas_object_metrics",
    "hausdorff_distance",
    "hausdorff_distances",
    "hd95",
    "image_diagonal",
    "iou_score",
    "label_objects",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "panoptic_quality",
    "scores_from_confusion",
]
