"""``pathseg ambiguous train``: CIMD on images with several annotators' masks.

data (discover + check, split by image) -> :class:`~pathseg.data.annotators.MultiAnnotatorDataset`
(random crops, flips, 90° rotations; one annotator's mask drawn per item, as CIMD draws one per
iteration) -> :class:`~pathseg.methods.ambiguous.network.CIMDNetwork` ->
:func:`~pathseg.engine.fit` with :func:`~pathseg.methods.ambiguous.network.cimd_loss` (one
optimizer step per batch, the run ends at ``train.steps``) -> validation GED on a few whole
images -> ``model.safetensors`` (EMA weights of the best checkpoint) -> with ``data.test``,
sampled and scored into ``<run>/test/`` by :mod:`pathseg.methods.ambiguous.sample` ->
``report.html`` (learning curve, test metrics, the panels worst GED first).

The run folder holds what every pathseg run holds (``config.yaml``, ``environment.json``,
``splits.json``, ``checkpoints/``, ``metrics.jsonl``) and ``inference.json`` (classes, scale,
crop, sampler settings) for ``pathseg ambiguous sample``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathseg.config import to_plain
from pathseg.data.annotators import (
    MultiAnnotatorDataset,
    MultiSample,
    check_multi_samples,
    discover_multi_annotator,
)
from pathseg.data.classes import ClassMap
from pathseg.data.io import image_size
from pathseg.data.splits import train_val_split
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.engine import fit, write_run_info
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError, DataError
from pathseg.methods.ambiguous.config import (
    AmbiguousConfig,
    check_config,
    class_map_for,
    inference_info,
    kl_weight,
)
from pathseg.methods.ambiguous.network import CIMDNetwork, cimd_loss
from pathseg.methods.ambiguous.sample import (
    REPORT_LAYOUT,
    draw_masks,
    image_generator,
    make_sampler,
    sample_inputs,
    scored_annotators,
)
from pathseg.metrics.ambiguity import AmbiguityEvaluator
from pathseg.report.run_report import build_run_report

__all__ = ["AmbiguousSplits", "build_network", "detect_layout", "prepare_splits", "train"]


@dataclass
class AmbiguousSplits:
    train: list[MultiSample]
    val: list[MultiSample]
    test: list[MultiSample]
    layout: str
    class_map: ClassMap


def detect_layout(config: AmbiguousConfig) -> str:
    """``data.layout``; without it ``bubil`` when the training folder holds ``RawImages/`` (BU-BIL's
    marker, matched case-insensitively as discovery does), else ``auto``: ``pathseg`` and ``cimd``
    share the class-map default, so telling them apart is left to discovery. The layout only
    picks the default class map (and is recorded in ``splits.json`` and ``inference.json``)."""
    if config.data.layout is not None:
        return config.data.layout
    root = Path(config.data.train or ".")
    if root.is_dir() and any(p.is_dir() and p.name.lower() == "rawimages" for p in root.iterdir()):
        return "bubil"
    return "auto"


def _discover(config: AmbiguousConfig, folder: Path) -> list[MultiSample]:
    data = config.data
    return discover_multi_annotator(
        folder, layout=data.layout, pool=data.pool, allow_missing=data.allow_missing_annotators
    )


def prepare_splits(config: AmbiguousConfig, check: bool = True) -> AmbiguousSplits:
    """Find, check and split the data; the split is by whole image, before any cropping."""
    check_config(config)
    data = config.data
    assert data.train is not None  # check_config
    layout = detect_layout(config)
    class_map = class_map_for(config, layout)
    samples = _discover(config, data.train)
    if data.val is not None:
        train, val = samples, _discover(config, data.val)
    else:
        train, val = train_val_split(samples, data.val_fraction, config.train.seed)
    test = _discover(config, data.test) if data.test is not None else []
    if check:
        for part in (train, val, test):
            check_multi_samples(part, class_map)
        _check_crop(train, data.scale, data.crop_size)
    return AmbiguousSplits(train, val, test, layout, class_map)


def _check_crop(samples: list[MultiSample], scale: float, crop_size: int) -> None:
    """A crop larger than the image would be padded, and the padding labelled as ignored, which
    the diffusion target turns into background: refuse instead of teaching that."""
    for sample in samples:
        height, width = image_size(sample.image)
        height, width = max(1, round(height * scale)), max(1, round(width * scale))
        if min(height, width) < crop_size:
            raise DataError(
                sample.image,
                f"{width}x{height} px after scale {scale} is smaller than data.crop_size={crop_size}; "
                "lower the crop size or raise data.scale",
            )


def build_network(config: AmbiguousConfig, class_map: ClassMap) -> CIMDNetwork:
    """The network of the config, initialised from ``train.seed`` (identical on every rerun)."""
    torch.manual_seed(config.train.seed)
    model = config.model
    return CIMDNetwork(
        in_channels=3,
        num_classes=class_map.num_classes,
        latent_dim=model.latent_dim,
        base_channels=model.base_channels,
        channel_mults=model.channel_mults,
        num_res_blocks=model.num_res_blocks,
        attention_levels=model.attention_levels,
        encoder_filters=model.encoder_filters,
        faithful=config.faithful,
    )


def _validation(config: AmbiguousConfig, splits: AmbiguousSplits):
    """``evaluate_fn(model, step)``: GED, HM-IoU and CI of a few whole validation images, with the
    same z and noise at every evaluation (so differences come from the weights)."""
    chosen = splits.val[: config.validation.images]
    dataset = MultiAnnotatorDataset(chosen, splits.class_map, annotator="all")
    sampler = make_sampler(config, "ddim", config.validation.steps)
    ignore_index = splits.class_map.ignore_index

    def evaluate_fn(model: nn.Module, step: int) -> dict[str, float]:
        evaluator = AmbiguityEvaluator(config.sample.include_diagonal, config.sample.ci_formula)
        for index, sample in enumerate(chosen):
            image, masks = dataset.load(index)
            truth, ignore = scored_annotators(masks, ignore_index)
            if len(truth) < 2:
                continue
            generator = image_generator(config.train.seed, sample.stem)
            drawn = draw_masks(
                model,
                image,
                config.data.scale,
                sampler,
                config.validation.samples,
                generator,
                precision=config.sample.precision,
            )
            evaluator.update(drawn > 0, truth, sample.stem, ignore=ignore)
        summary = evaluator.summary()
        return {key: summary[key] for key in ("ged", "hm_iou", "ci")}

    return evaluate_fn


def train(config: AmbiguousConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train CIMD; with ``data.test``, sample and score the test images into ``<run>/test/``.

    Returns the run folder, the best validation GED (``best``), the final step and, with a test
    set, the test metrics (``test``).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # cimd_loss calls the prior and posterior beside the wrapped forward, which DDP cannot sync.
        raise ConfigError("pathseg ambiguous train runs in one process; start it without torchrun")
    splits = prepare_splits(config)
    run_dir = Path(config.output)
    class_map = splits.class_map
    model = build_network(config, class_map)
    write_run_info(run_dir, to_plain(config))
    if is_main_process():
        info = {
            "layout": splits.layout,
            "train_images": [s.stem for s in splits.train],
            "val_images": [s.stem for s in splits.val],
            "test_images": [s.stem for s in splits.test],
        }
        (run_dir / "splits.json").write_text(json.dumps(info, indent=2) + "\n")
        (run_dir / "inference.json").write_text(
            json.dumps(inference_info(config, class_map, splits.layout), indent=2) + "\n"
        )

    augment = AugmentConfig(crop_size=config.data.crop_size, **config.data.augment.model_dump())
    dataset = MultiAnnotatorDataset(
        splits.train,
        class_map,
        transform=build_train_transform(augment, class_map.ignore_index),
        scale=config.data.scale,
        seed=config.train.seed,
        annotator="random",
    )
    schedule = config.diffusion.noise_schedule()
    weight = kl_weight(config)

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return cimd_loss(
            net,
            batch["image"],
            batch["mask"],
            schedule,
            weight,
            class_map.ignore_index,
            prediction=config.diffusion.prediction,
        )

    result = fit(
        model,
        dataset,
        loss_fn,
        run_dir,
        config.train,
        evaluate_fn=_validation(config, splits) if splits.val else None,
        resume=resume,
        show_progress=show_progress,
    )
    outcome: dict[str, Any] = result.summary()
    if splits.test and is_main_process():
        final = result.model.eval()
        outcome["test"] = sample_inputs(
            final, config, class_map, splits.test, True, run_dir / "test", config.sample, run_dir
        )
    if is_main_process():
        title = f"pathseg ambiguous run {run_dir.name}" + (" (faithful)" if config.faithful else "")
        outcome["report"] = str(build_run_report(run_dir, title, monitor="ged", layout=REPORT_LAYOUT))
    return outcome
