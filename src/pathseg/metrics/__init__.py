"""Segmentation metrics: pixel overlap, boundary distances, GlaS object metrics, nucleus instance metrics,
and the metrics of ambiguous segmentation (several samples against several annotators).

Everything here is plain numpy/scipy; conventions (empty masks, ignored pixels, which Hausdorff
definition) are stated in each module's docstring.
"""

from pathseg.metrics.ambiguity import (
    AmbiguityEvaluator,
    calibration_error,
    ci_score,
    combined_sensitivity,
    diversity_agreement,
    ged,
    hm_iou,
    max_dice_matching,
    pairwise_distances,
    uncertainty_maps,
)
from pathseg.metrics.distance import (
    boundary_coordinates,
    hausdorff_distance,
    hausdorff_distances,
    hd95,
    image_diagonal,
)
from pathseg.metrics.evaluator import SegmentationEvaluator
from pathseg.metrics.instances import NucleusEvaluator, aji, binary_dice, panoptic_quality
from pathseg.metrics.objects import (
    glas_object_metrics,
    label_objects,
    object_dice,
    object_f1,
    object_hausdorff,
)
from pathseg.metrics.overlap import confusion_matrix, dice_score, iou_score, scores_from_confusion

__all__ = [
    "AmbiguityEvaluator",
    "NucleusEvaluator",
    "SegmentationEvaluator",
    "aji",
    "binary_dice",
    "boundary_coordinates",
    "calibration_error",
    "ci_score",
    "combined_sensitivity",
    "confusion_matrix",
    "dice_score",
    "diversity_agreement",
    "ged",
    "glas_object_metrics",
    "hausdorff_distance",
    "hausdorff_distances",
    "hd95",
    "hm_iou",
    "image_diagonal",
    "iou_score",
    "label_objects",
    "max_dice_matching",
    "object_dice",
    "object_f1",
    "object_hausdorff",
    "pairwise_distances",
    "panoptic_quality",
    "scores_from_confusion",
    "uncertainty_maps",
]
