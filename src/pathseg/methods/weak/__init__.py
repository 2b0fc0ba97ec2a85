"""Weak supervision from patch labels: Multi-Layer Pseudo-Supervision (MLPS, WSSS-Tissue).

Three stages, each resumable, all under one run folder::

    classifier/          stage 1: multi-label patch classifier (PDA), an ordinary engine run
    pseudo_masks/<layer>/<patch>.png   stage 2: Grad-CAM of several layers -> pseudo masks
    cam_quality.json     pseudo masks against the pixel truth, when the patch set has masks/
    figures/cams.png     CAMs of every layer and the pseudo masks for a few patches
    segmenter/           stage 3: DeepLabV3+ trained on all layers' pseudo masks (weighted CE)
    test/                the gated segmenter on ``data.test`` (whole images), test_ungated/ without gate
    summary.json         the headline numbers of every stage

Differences from the MLPS code (seeds-spec 3.9), each reproducible with ``faithful: true`` where
it changes training: any number of classes (not 4); a gate that can be turned off, masking
gated logits to (effectively) -inf instead of multiplying them by 0 (a zeroed logit still wins
when the others are negative); a CE averaged once, not divided by the batch size again; SGD
momentum as configured (the code passed 5e-4 into ``momentum``); the argmax of a pseudo mask
never picks a class absent from the patch label (zeroed channels used to tie with present
classes at their minimum and win by index); glass is a true ignore index, not a fifth class
made loss-free by a logit of 100.

Modules, one per stage: ``config`` (WeakConfig, check_config, run folder layout), ``classifier``
(stage 1), ``pseudo_masks`` (stage 2, PooledScores, the CAM figure), ``segmenter`` (stage 3 and
the gated evaluation), ``pipeline`` (run_all). The names below are the package's public API.
"""

from pathseg.methods.weak.classifier import (
    build_classifier,
    check_patch_sizes,
    classification_scores,
    load_classifier,
    split_patches,
    train_classifier,
)
from pathseg.methods.weak.config import (
    CAMSection,
    ClassifierModelSection,
    ClassifierSection,
    ClassifierTrainerConfig,
    PDASection,
    SegmenterModelSection,
    SegmenterSection,
    SegmenterTrainerConfig,
    WeakConfig,
    WeakDataSection,
    check_config,
    mask_class_map,
    patch_class_map,
    stage_dirs,
)
from pathseg.methods.weak.pipeline import run_all
from pathseg.methods.weak.pseudo_masks import (
    PooledScores,
    cam_figure,
    cam_masks_for_images,
    generate_pseudo_masks,
    joint_minmax,
    pseudo_mask,
    pseudo_mask_quality,
    white_background,
)
from pathseg.methods.weak.report import build_weak_report
from pathseg.methods.weak.segmenter import (
    GATE_FILL,
    GatedSegmenter,
    evaluate_weak,
    pixel_samples,
    pooled_pixel_scores,
    train_segmenter,
)

__all__ = [
    "GATE_FILL",
    "CAMSection",
    "ClassifierModelSection",
    "ClassifierSection",
    "ClassifierTrainerConfig",
    "GatedSegmenter",
    "PDASection",
    "PooledScores",
    "SegmenterModelSection",
    "SegmenterSection",
    "SegmenterTrainerConfig",
    "WeakConfig",
    "WeakDataSection",
    "build_classifier",
    "build_weak_report",
    "cam_figure",
    "cam_masks_for_images",
    "check_config",
    "check_patch_sizes",
    "classification_scores",
    "evaluate_weak",
    "generate_pseudo_masks",
    "joint_minmax",
    "load_classifier",
    "mask_class_map",
    "patch_class_map",
    "pixel_samples",
    "pooled_pixel_scores",
    "pseudo_mask",
    "pseudo_mask_quality",
    "run_all",
    "split_patches",
    "stage_dirs",
    "train_classifier",
    "train_segmenter",
    "white_background",
]
