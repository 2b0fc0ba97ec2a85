"""Stage 1: the multi-label patch classifier (PDA), trained by ``engine.fit``; loading it back."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pathseg.data.io import image_size, read_image
from pathseg.data.patch_labels import (
    PatchLabelDataset,
    PatchSample,
    discover_patch_labels,
)
from pathseg.data.transforms import AugmentConfig, build_train_transform, to_tensor
from pathseg.engine import fit
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError, DataError
from pathseg.methods.weak.config import WeakConfig, check_config, stage_dirs, write_json
from pathseg.models import create_model, load_weights, model_from_file


def _source_of(sample: PatchSample) -> str:
    """Patches cut from one image share its name (``<image>_y<Y>_x<X>-[...]``): split by image."""
    # Drop exactly the separator of the name styles ("-[" or "+0["); rstrip("-+0") would also eat
    # the trailing zeros of the name itself ("_x0" -> "_x", "patient10" -> "patient1").
    prefix = re.sub(r"(?:-|\+0)$", "", sample.stem.rsplit("[", 1)[0])
    return re.sub(r"_y\d+_x\d+$", "", prefix)


def split_patches(
    samples: Sequence[PatchSample], val_fraction: float, seed: int
) -> tuple[list[PatchSample], list[PatchSample]]:
    """Hold out whole source images (not single patches) for validating the classifier."""
    if val_fraction == 0:
        return list(samples), []
    sources = sorted({_source_of(s) for s in samples})
    if len(sources) < 2:
        raise ConfigError(
            f"data.val_fraction {val_fraction} needs patches from at least two source images; "
            "set data.val_fraction=0"
        )
    order = np.random.default_rng(seed).permutation(len(sources))
    count = min(len(sources) - 1, max(1, round(val_fraction * len(sources))))
    held = {sources[i] for i in order[:count]}
    return [s for s in samples if _source_of(s) not in held], [s for s in samples if _source_of(s) in held]


def check_patch_sizes(samples: Sequence[PatchSample], crop_size: int | None) -> None:
    """Batches need one size: mixed patch sizes are an error unless ``data.crop_size`` is set."""
    if crop_size is not None:
        return
    first = image_size(samples[0].image)
    for sample in samples[1:]:
        size = image_size(sample.image)
        if size != first:
            raise DataError(
                sample.image,
                f"patch is {size[1]}x{size[0]} but {samples[0].image.name} is {first[1]}x{first[0]}; "
                "set data.crop_size to train on equal-size crops of mixed-size patches",
            )


def build_classifier(config: WeakConfig) -> nn.Module:
    torch.manual_seed(config.classifier.train.seed)
    model = create_model(
        config.classifier.model.name,
        in_channels=3,
        num_classes=len(config.data.classes),
        **config.classifier.model.kwargs(),
    )
    if getattr(model, "output_kind", "dense") != "image":
        raise ConfigError(
            f"classifier.model {config.classifier.model.name!r} is not a classifier; use cam_resnet18/34/50"
        )
    if config.classifier.init is not None:
        load_weights(
            model, config.classifier.init, strict=False, prefix_map=config.classifier.init_prefix_map
        )
    return model


def classification_scores(probabilities: Tensor, labels: Tensor, threshold: float = 0.5) -> dict[str, float]:
    """Per-class F1 at ``threshold``, their mean, and exact-match accuracy of the label vectors."""
    predicted = probabilities > threshold
    truth = labels > 0.5
    tp = (predicted & truth).sum(0).float()
    fp = (predicted & ~truth).sum(0).float()
    fn = (~predicted & truth).sum(0).float()
    denominator = 2 * tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.ones_like(tp))
    return {"f1": float(f1.mean()), "exact_match": float((predicted == truth).all(1).float().mean())}


def train_classifier(config: WeakConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Stage 1: multi-label BCE (MLPS's multilabel soft-margin loss) with PDA."""
    check_config(config)
    dirs = stage_dirs(config)
    samples = discover_patch_labels(config.data.patches, config.data.classes, config.data.labels_csv)
    train, val = split_patches(samples, config.data.val_fraction, config.classifier.train.seed)
    check_patch_sizes(samples, config.data.crop_size)
    trainer = config.classifier.train
    if config.faithful:
        # MLPS: SGD(params, lr, weight_decay) puts 5e-4 in the momentum slot (seeds-spec 3.5).
        trainer = dataclasses.replace(trainer, optimizer="sgd", momentum=5e-4)
    transform = build_train_transform(
        AugmentConfig(crop_size=config.data.crop_size, flips=True, rotate90=True)
    )
    dataset = PatchLabelDataset(train, transform, seed=trainer.seed)
    steps_per_epoch = max(1, math.ceil(len(dataset) / trainer.batch_size))
    pda = config.classifier.pda
    model = build_classifier(config)

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        gamma = pda.gamma((batch["step"] - 1) // steps_per_epoch)
        logits = net(batch["image"], pda_gamma=gamma)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"])
        return loss, {"pda_gamma": gamma or 0.0}

    # Decoded once; patch sets may mix sizes, so whole patches are batched by size.
    val_groups = batches_by_size(val, 32)
    val_batches = [torch.stack([to_tensor(read_image(s.image)) for s in group]) for group in val_groups]
    val_labels = torch.tensor([s.labels for group in val_groups for s in group], dtype=torch.float32)

    def evaluate_fn(net: nn.Module, step: int) -> dict[str, float]:
        device = next(net.parameters()).device
        logits = torch.cat([net(batch.to(device)).float().cpu() for batch in val_batches])
        loss = F.binary_cross_entropy_with_logits(logits, val_labels).item()
        return {"loss": loss, **classification_scores(logits.sigmoid(), val_labels)}

    run_dir = dirs["classifier"]
    if is_main_process():
        info = {"train_patches": len(train), "val_patches": len(val), "steps_per_epoch": steps_per_epoch}
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "splits.json", info)
    result = fit(
        model,
        dataset,
        loss_fn,
        run_dir,
        trainer,
        evaluate_fn=evaluate_fn if val else None,
        resume=resume,
        show_progress=show_progress,
    )
    return {"run_dir": str(run_dir), "best": result.best, "final_step": result.final_step}


def batches_by_size(samples: Sequence[PatchSample], batch_size: int) -> list[list[PatchSample]]:
    """Equal-size patches batched together (patch sets may mix sizes)."""
    groups: dict[tuple[int, ...], list[PatchSample]] = {}
    for sample in samples:
        groups.setdefault(image_size(sample.image), []).append(sample)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def load_classifier(config: WeakConfig) -> nn.Module:
    weights = stage_dirs(config)["classifier"] / "model.safetensors"
    if not weights.exists():
        raise ConfigError(f"{weights.parent}: no trained classifier yet (run `pathseg weak classify` first)")
    return model_from_file(weights).eval()
