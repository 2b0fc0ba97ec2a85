"""Supervised segmentation: the baseline every label-efficient method is compared with.

Reads an ``images/`` + ``masks/`` folder, optionally keeps only a label fraction (by patient when a
groups CSV is given), trains a registered network with the engine and evaluates whole images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathseg.config import ModelSection, SupervisedConfig, resolve_config, to_plain
from pathseg.data.classes import ClassMap
from pathseg.data.datasets import SegmentationDataset
from pathseg.data.folders import Sample, assign_groups, check_samples, discover_dataset, read_groups_csv
from pathseg.data.splits import label_fraction_subset, train_val_split
from pathseg.data.targets import add_boundary_target
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.engine import fit, write_run_info
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError, DataError
from pathseg.inference.evaluate import WindowSettings, evaluate_samples
from pathseg.inference.instances import InstanceSettings
from pathseg.losses import build_loss
from pathseg.models import create_model
from pathseg.models.weights import (
    is_denoiser,
    load_weights,
    model_from_file,
    segmenter_from_pretrained,
    weights_path,
)


@dataclass
class DataSplits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    held_out: list[Sample]
    """Training images whose labels were dropped by ``label_fraction`` (usable as unlabeled data)."""


def class_map_from(config: SupervisedConfig) -> ClassMap:
    class_map = ClassMap.from_config(config.data.classes, ignore_values=config.data.ignore_values)
    if config.instances.method == "boundary" and len(class_map.names) != 2:
        raise ConfigError(
            f"instances.method=boundary separates objects of one class, but data.classes has "
            f"{len(class_map.names)} ({', '.join(class_map.names)}); use instances.method=components"
        )
    return class_map


def output_channels(config: SupervisedConfig, class_map: ClassMap) -> int:
    """Network outputs: one per class, plus the boundary channel of the boundary-aware target."""
    return len(class_map.names) + (1 if config.instances.method == "boundary" else 0)


def instance_settings(config: SupervisedConfig) -> InstanceSettings:
    section = config.instances
    return InstanceSettings(
        section.method, section.min_area, section.marker_threshold, section.marker_min_area
    )


def inference_info(config: SupervisedConfig, class_map: ClassMap) -> dict[str, Any]:
    """What inference must know and never guess: classes, working resolution, objects, tiles.

    Written as ``inference.json`` in every run folder (and kept in ``config.yaml``).
    """
    scale, mpp = config.data.scale, config.data.mpp
    return {
        "classes": [
            {
                "index": i,
                "name": name,
                "stored_values": [v if isinstance(v, int) else list(v) for v in class_map.alternatives(i)],
                "color": list(colour),
            }
            for i, (name, colour) in enumerate(zip(class_map.names, class_map.palette(), strict=True))
        ],
        "ignore_index": class_map.ignore_index,
        "output_channels": output_channels(config, class_map),
        "scale": scale,
        "image_mpp": mpp,
        "model_mpp": mpp / scale if mpp else None,
        "instances": config.instances.model_dump(),
        "tile_size": config.data.crop_size,
    }


def prepare_splits(config: SupervisedConfig, class_map: ClassMap, check: bool = True) -> DataSplits:
    """Find, validate and split the data. Splitting happens per image (or patient) before any cropping."""
    data = config.data
    if data.train is None:
        raise ConfigError("data.train is not set: give a folder with images/ and masks/ (--train PATH)")
    samples = discover_dataset(data.train, mask_suffix=data.mask_suffix)
    groups = read_groups_csv(data.groups_csv) if data.groups_csv else None
    if groups:
        samples = assign_groups(samples, groups, source=str(data.groups_csv))
    if data.val is not None:
        train, val = samples, discover_dataset(data.val, mask_suffix=data.mask_suffix)
    else:
        train, val = train_val_split(samples, data.val_fraction, config.train.seed, groups)
    labelled = label_fraction_subset(train, data.label_fraction, config.train.seed, groups)
    chosen = {s.stem for s in labelled}
    held_out = [s for s in train if s.stem not in chosen]
    test = discover_dataset(data.test, mask_suffix=data.mask_suffix) if data.test is not None else []
    if check:
        for part in (labelled, val, test):
            check_samples(part, class_map)
    return DataSplits(labelled, val, test, held_out)


def build_model(config: SupervisedConfig, num_classes: int, resume: bool = False) -> nn.Module:
    """The configured network, or the one ``config.init`` points to (not when resuming: the checkpoint wins).

    A pretrained denoiser replaces ``config.model`` by its own (converted) architecture, so the saved
    config rebuilds this network on ``--resume`` and the run stays reproducible from its config.
    """
    torch.manual_seed(config.train.seed)  # identical initial weights on every DDP rank and every rerun
    if config.init is not None and not resume:
        source = weights_path(config.init)
        if is_denoiser(source):
            model = segmenter_from_pretrained(source, num_classes)
            architecture = {k: v for k, v in model.config.items() if k not in ("in_channels", "num_classes")}
            config.model = ModelSection(**architecture)
            return model
        model = create_model(
            config.model.name, in_channels=3, num_classes=num_classes, **config.model.kwargs()
        )
        load_weights(model, source, strict=False)
        return model
    return create_model(config.model.name, in_channels=3, num_classes=num_classes, **config.model.kwargs())


def window_settings(config: SupervisedConfig) -> WindowSettings:
    return WindowSettings(
        config.data.crop_size, config.eval.overlap, config.eval.blend, config.eval.sw_batch_size
    )


def train(
    config: SupervisedConfig,
    resume: bool = False,
    show_progress: bool = True,
    extra_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, keep the best checkpoint by validation Dice, evaluate on ``data.test`` when given.

    ``config.init`` (see :class:`SupervisedConfig`) starts from pretrained weights.
    """
    class_map = class_map_from(config)
    splits = prepare_splits(config, class_map)
    run_dir = Path(config.output)
    model = build_model(config, output_channels(config, class_map), resume)  # may update config.model
    info = {
        "train_images": [s.stem for s in splits.train],
        "val_images": [s.stem for s in splits.val],
        "test_images": len(splits.test),
        **(extra_info or {}),
    }
    write_run_info(run_dir, to_plain(config))
    (run_dir / "splits.json").write_text(json.dumps(info, indent=2))
    (run_dir / "inference.json").write_text(json.dumps(inference_info(config, class_map), indent=2))

    augment = AugmentConfig(crop_size=config.data.crop_size, **config.data.augment.model_dump())
    transform = build_train_transform(augment, class_map.ignore_index)
    class_weights = config.loss.class_weights
    if config.instances.method == "boundary":
        transform = add_boundary_target(transform, config.instances.boundary_width, class_map.ignore_index)
        class_weights = class_weights or [1.0, 1.0, config.instances.boundary_weight]
    dataset = SegmentationDataset(
        splits.train, class_map, transform=transform, scale=config.data.scale, seed=config.train.seed
    )
    loss_terms = build_loss(config.loss.terms, class_map.ignore_index, config.loss.focal_gamma, class_weights)

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return loss_terms(net(batch["image"]), batch["mask"]), {}

    window = window_settings(config)
    objects = instance_settings(config)

    def evaluate_fn(net: nn.Module, step: int) -> dict[str, float]:
        evaluator = evaluate_samples(
            net, splits.val, class_map, window, config.data.scale, object_metrics=False, instances=objects
        )
        summary = evaluator.summary()
        return {k: v for k, v in summary.items() if k in ("dice", "iou", "miou", "pixel_accuracy", "hd95")}

    result = fit(
        model,
        dataset,
        loss_fn,
        run_dir,
        config.train,
        evaluate_fn=evaluate_fn if splits.val else None,
        resume=resume,
        show_progress=show_progress,
    )
    outcome: dict[str, Any] = result.summary()
    if splits.test and is_main_process():
        evaluator = evaluate_samples(
            result.model.eval(),
            splits.test,
            class_map,
            window,
            config.data.scale,
            object_metrics=config.eval.object_metrics,
            out_dir=run_dir / "test",
            max_overlays=config.eval.max_overlays,
            instances=objects,
        )
        outcome["test"] = evaluator.summary()
    return outcome


def load_run(run_dir: Path) -> tuple[nn.Module, SupervisedConfig, ClassMap]:
    """The inference model (``model.safetensors``), config and class map of a finished run."""
    if not run_dir.exists():
        raise DataError(run_dir, "run folder does not exist")
    if not run_dir.is_dir():
        raise DataError(run_dir, "not a folder (give the run folder that holds model.safetensors)")
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise ConfigError(f"{run_dir}: no model.safetensors (did training finish? resume it with --resume)")
    raw_config = run_dir / "config.yaml"
    config = resolve_config(SupervisedConfig, raw_config)
    model = model_from_file(weights).eval()
    return model, config, class_map_from(config)
