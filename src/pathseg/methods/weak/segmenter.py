"""Stage 3: the segmenter trained on every layer's pseudo masks, and its gated evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pathseg.data.classes import ClassMap
from pathseg.data.folders import Sample, check_samples, discover_dataset, pair_images_and_masks
from pathseg.data.io import image_size
from pathseg.data.patch_labels import (
    PatchSample,
    StackedMaskDataset,
    discover_patch_labels,
)
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.engine import fit
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError
from pathseg.inference.evaluate import WindowSettings, evaluate_samples
from pathseg.losses import multi_layer_cross_entropy
from pathseg.methods.weak.classifier import check_patch_sizes, load_classifier
from pathseg.methods.weak.config import (
    WeakConfig,
    check_config,
    layer_folder,
    mask_class_map,
    stage_dirs,
    write_json,
)
from pathseg.methods.weak.pseudo_masks import cam_masks_for_images
from pathseg.methods.weak.report import build_weak_report
from pathseg.models import create_model

# Finite stand-in for -inf: no real logit comes near it, and sliding-window blending of tiles
# that gate different classes stays finite (an all -inf pixel would give NaN probabilities).
GATE_FILL = -1e4


class GatedSegmenter(nn.Module):
    """Segmenter logits with classes the classifier rules out on the same input suppressed.

    ``mode="mask"`` sets the logits of classes with probability <= ``threshold`` to ``GATE_FILL``
    (they cannot win); ``"zero"`` multiplies them by 0 as MLPS does; ``"off"`` passes through.
    The most probable class is never gated, so every pixel keeps a candidate.
    """

    def __init__(
        self, segmenter: nn.Module, classifier: nn.Module, threshold: float = 0.1, mode: str = "mask"
    ) -> None:
        super().__init__()
        if mode not in ("mask", "zero", "off"):
            raise ConfigError(f"gate must be 'mask', 'zero' or 'off', got {mode!r}")
        self.segmenter, self.classifier, self.threshold, self.mode = segmenter, classifier, threshold, mode

    def forward(self, x: Tensor) -> Tensor:
        logits = self.segmenter(x)
        if self.mode == "off":
            return logits
        probabilities = self.classifier(x).float().sigmoid()
        if probabilities.shape[1] != logits.shape[1]:
            raise ValueError(
                f"classifier has {probabilities.shape[1]} classes but the segmenter {logits.shape[1]}"
            )
        keep = probabilities > self.threshold
        keep[torch.arange(len(keep)), probabilities.argmax(dim=1)] = True
        keep = keep[:, :, None, None]
        if self.mode == "zero":
            return logits * keep
        return logits.masked_fill(~keep, GATE_FILL)


def _pseudo_mask_dataset(config: WeakConfig, samples: Sequence[PatchSample], seed: int) -> StackedMaskDataset:
    folders = [stage_dirs(config)["pseudo_masks"] / layer_folder(layer) for layer in config.cam.layers]
    masks = [[folder / f"{s.stem}.png" for folder in folders] for s in samples]
    missing = [group[0] for group in masks if not all(p.exists() for p in group)]
    if missing:
        raise ConfigError(
            f"{missing[0]}: pseudo masks missing for {len(missing)} patches (run `pathseg weak cam` first)"
        )
    augment = AugmentConfig(
        crop_size=config.data.crop_size, flips=config.segmenter.augment, rotate90=config.segmenter.augment
    )
    return StackedMaskDataset([s.image for s in samples], masks, build_train_transform(augment), seed=seed)


def pixel_samples(folder: Path | None, mask_folder: str | None) -> list[Sample]:
    """Image/mask pairs of a pixel-labelled folder (none when ``folder`` is not set)."""
    if folder is None:
        return []
    if mask_folder is None:
        return discover_dataset(folder)
    return pair_images_and_masks(Path(folder) / "images", Path(folder) / mask_folder)


def train_segmenter(config: WeakConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Stage 3: DeepLabV3+ on the pseudo masks of every layer, then the gated test evaluation."""
    check_config(config)
    dirs = stage_dirs(config)
    trainer = config.segmenter.train
    samples = discover_patch_labels(config.data.patches, config.data.classes, config.data.labels_csv)
    check_patch_sizes(samples, config.data.crop_size)
    dataset = _pseudo_mask_dataset(config, samples, trainer.seed)
    class_map = mask_class_map(config)
    val = pixel_samples(config.data.val, config.data.mask_folder)
    test = pixel_samples(config.data.test, config.data.mask_folder)
    for part in (val, test):
        check_samples(part, class_map)
    torch.manual_seed(trainer.seed)
    model = create_model(
        config.segmenter.model.name,
        in_channels=3,
        num_classes=len(config.data.classes),
        **config.segmenter.model.kwargs(),
    )
    weights = list(config.segmenter.layer_weights)
    faithful = config.faithful

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        return multi_layer_cross_entropy(net(batch["image"]), batch["masks"], weights, 255, faithful), {}

    patch_size = config.data.crop_size or image_size(samples[0].image)[0]
    window = WindowSettings(patch_size, config.eval.overlap, config.eval.blend, config.eval.sw_batch_size)

    def evaluate_fn(net: nn.Module, step: int) -> dict[str, float]:
        summary = evaluate_samples(net, val, class_map, window, object_metrics=False).summary()
        return {k: v for k, v in summary.items() if k in ("global_miou", "global_fwiou", "miou")}

    result = fit(
        model,
        dataset,
        loss_fn,
        dirs["segmenter"],
        trainer,
        evaluate_fn=evaluate_fn if val else None,
        resume=resume,
        show_progress=show_progress,
    )
    outcome: dict[str, Any] = {"run_dir": str(dirs["segmenter"]), "best": result.best}
    if is_main_process():
        if test:
            outcome.update(evaluate_weak(config, result.model.eval(), test, class_map, window))
        outcome["report"] = str(build_weak_report(config))
    return outcome


def pooled_pixel_scores(summary: dict[str, float], class_names: Sequence[str]) -> dict[str, float]:
    """The set-pooled (``global_*``) mIoU, FwIoU, pixel accuracy and per-class IoU of an evaluator
    summary, under the names :class:`PooledScores` uses."""
    keys = ["global_miou", "global_fwiou", "global_pixel_accuracy", *[f"global_iou/{c}" for c in class_names]]
    return {key.removeprefix("global_"): summary[key] for key in keys}


def evaluate_weak(
    config: WeakConfig,
    segmenter: nn.Module,
    test: Sequence[Sample],
    class_map: ClassMap,
    window: WindowSettings,
) -> dict[str, Any]:
    """The segmenter with and without the gate, and the CAM pseudo masks, on the test images."""
    root = stage_dirs(config)["root"]
    classifier = load_classifier(config).to(next(segmenter.parameters()).device)
    gate = "zero" if config.faithful else config.segmenter.gate  # MLPS's gate flag could not be turned off
    results: dict[str, Any] = {}
    arms = {"test": GatedSegmenter(segmenter, classifier, config.segmenter.gate_threshold, gate)}
    if gate != "off":
        arms["test_ungated"] = segmenter
    for name, model in arms.items():
        evaluator = evaluate_samples(
            model.eval(),
            test,
            class_map,
            window,
            object_metrics=False,
            out_dir=root / name,
            max_overlays=config.eval.max_overlays,
        )
        results[name] = pooled_pixel_scores(evaluator.summary(), class_map.names)
    results["test_cams"] = cam_masks_for_images(config, classifier, test, class_map)
    results["gate"] = gate
    write_json(root / "summary.json", results)
    return results
