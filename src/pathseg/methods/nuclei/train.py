"""Train the nucleus segmenter, predict whole images, score instances.

Data: :mod:`pathseg.data.instances` (label maps, polygons, binary masks). Images are split into
train / validation by image, before any cropping. Validation and test images are predicted whole
(sliding windows of the crop size, Gaussian blending) and post-processed by
:func:`~pathseg.inference.instances.hover_instances`; scores come from
:class:`~pathseg.metrics.NucleusEvaluator`. Approximate ground truth (binary masks split into
components) is never scored: such images can train, not judge.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pathseg.config import ModelSection, resolve_config, to_plain
from pathseg.data.instances import (
    InstanceSample,
    check_instance_samples,
    discover_instance_dataset,
    load_instances,
)
from pathseg.data.io import read_image
from pathseg.data.transforms import AugmentConfig, build_train_transform, to_tensor
from pathseg.engine import fit, write_run_info
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError, DataError
from pathseg.inference.instances import HoverSettings, hover_instances
from pathseg.inference.sliding_window import predict_logits
from pathseg.methods.nuclei.config import OUTPUT_CHANNELS, NucleiConfig
from pathseg.methods.nuclei.data import NucleusDataset
from pathseg.methods.nuclei.loss import hover_loss
from pathseg.metrics import NucleusEvaluator
from pathseg.models import create_model
from pathseg.models.weights import (
    is_denoiser,
    load_weights,
    model_from_file,
    segmenter_from_pretrained,
    weights_path,
)

__all__ = ["load_nucleus_run", "predict_nuclei", "score_samples", "split_samples", "train"]

REPORTED = ("aji", "pq", "dq", "sq", "dice", "pooled_aji", "pooled_pq")


def split_samples(config: NucleiConfig) -> tuple[list[InstanceSample], list[InstanceSample], list]:
    """(train, val, test) samples; ``label_fraction`` then ``val_fraction`` drawn with ``train.seed``."""
    data = config.data
    if data.train is None:
        raise ConfigError(
            "data.train is not set: give a folder with images/ and instances/, annotations/ or masks/"
        )
    samples = discover_instance_dataset(data.train)
    rng = np.random.default_rng(config.train.seed)
    if data.val is not None:
        train, val = samples, discover_instance_dataset(data.val)
    else:
        # Only exact ground truth can validate: approximate samples always train.
        exact = [i for i, s in enumerate(samples) if not s.approximate]
        count = round(len(samples) * data.val_fraction) if exact else 0
        chosen = set(rng.permutation(exact)[: min(count, len(exact))].tolist())
        train = [s for i, s in enumerate(samples) if i not in chosen]
        val = [s for i, s in enumerate(samples) if i in chosen]
    if data.label_fraction < 1:
        keep = max(1, round(len(train) * data.label_fraction))
        order = np.random.default_rng([config.train.seed, 1]).permutation(len(train))
        train = [train[i] for i in sorted(order[:keep].tolist())]
    test = discover_instance_dataset(data.test) if data.test is not None else []
    for what, part in (("validation", val), ("test", test)):
        rough = [s.stem for s in part if s.approximate]
        if rough:
            raise DataError(
                part[0].instances.parent,
                f"{what} images {', '.join(rough[:3])} have binary masks only: instance scores need "
                "instance maps or polygons",
            )
    return train, val, test


def build_model(config: NucleiConfig, resume: bool = False) -> nn.Module:
    """The configured network with 4 outputs; ``init`` loads matching weights unless resuming: a
    nucleus pretraining run (``pathseg nuclei pretrain``: its G_BA), an earlier nucleus run, any
    weights file with matching names, or a diffusion denoiser (``pathseg pretrain``), which
    replaces ``model`` by its own U-Net as in ``pathseg train``."""
    torch.manual_seed(config.train.seed)
    if config.init is not None and not resume and is_denoiser(weights_path(config.init)):
        model = segmenter_from_pretrained(weights_path(config.init), OUTPUT_CHANNELS)
        architecture = {k: v for k, v in model.config.items() if k not in ("in_channels", "num_classes")}
        config.model = ModelSection(**architecture)
        return model
    model = create_model(
        config.model.name, in_channels=3, num_classes=OUTPUT_CHANNELS, **config.model.kwargs()
    )
    if config.init is not None and not resume:
        load_weights(model, weights_path(config.init), strict=False)
    return model


def hover_settings(config: NucleiConfig) -> HoverSettings:
    return HoverSettings(**config.post.model_dump())


@torch.no_grad()
def predict_nuclei(
    model: nn.Module, image: np.ndarray, config: NucleiConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instance map ``(H, W)`` int32, nucleus probability ``(H, W)`` and h/v maps ``(2, H, W)``
    of a whole RGB image."""
    window = config.window
    output = predict_logits(
        model, to_tensor(image), config.data.crop_size, window.overlap, "gaussian", window.sw_batch_size
    )
    probability = output[:2].softmax(dim=0)[1].cpu().numpy()
    hv = output[2:].cpu().numpy()
    return hover_instances(probability, hv, hover_settings(config)), probability, hv


def score_samples(
    model: nn.Module, samples: Sequence[InstanceSample], config: NucleiConfig, keep=None
) -> NucleusEvaluator:
    """Predict and score whole images; ``keep(sample, image, predicted, truth)`` sees each result."""
    evaluator = NucleusEvaluator()
    model.eval()
    for sample in samples:
        image = read_image(sample.image)
        truth = load_instances(sample, shape=image.shape[:2], quiet=True)
        predicted = predict_nuclei(model, image, config)[0]
        evaluator.update(predicted, truth, sample.stem)
        if keep is not None:
            keep(sample, image, predicted, truth)
    return evaluator


def train(config: NucleiConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train with :func:`~pathseg.methods.nuclei.loss.hover_loss`, keep the best checkpoint by
    validation AJI, score ``data.test`` and write its predictions under ``<run>/test``."""
    train_set, val_set, test_set = split_samples(config)
    for part in (train_set, val_set, test_set):
        if part:
            check_instance_samples(part)
    run_dir = Path(config.output)
    model = build_model(config, resume)
    write_run_info(run_dir, to_plain(config))
    splits = {
        "train_images": [s.stem for s in train_set],
        "approximate_train_images": [s.stem for s in train_set if s.approximate],
        "val_images": [s.stem for s in val_set],
        "test_images": [s.stem for s in test_set],
    }
    (run_dir / "splits.json").write_text(json.dumps(splits, indent=2))
    (run_dir / "inference.json").write_text(json.dumps(inference_info(config), indent=2))

    augment = AugmentConfig(crop_size=config.data.crop_size, **config.data.augment.model_dump())
    dataset = NucleusDataset(
        train_set, build_train_transform(augment, ignore_index=-1), seed=config.train.seed
    )

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return hover_loss(net(batch["image"]), batch["mask"], batch["hv"], config.loss)

    def evaluate_fn(net: nn.Module, step: int) -> dict[str, float]:
        summary = score_samples(net, val_set, config).summary()
        return {k: summary[k] for k in REPORTED}

    result = fit(
        model,
        dataset,
        loss_fn,
        run_dir,
        config.train,
        evaluate_fn=evaluate_fn if val_set else None,
        resume=resume,
        show_progress=show_progress,
    )
    outcome = result.summary()
    if test_set and is_main_process():
        from pathseg.methods.nuclei.predict import write_prediction

        out_dir = run_dir / "test"

        def keep(sample, image, predicted, truth):
            write_prediction(out_dir, sample.stem, image, predicted, config.data.mpp, truth=truth)

        evaluator = score_samples(result.model.eval(), test_set, config, keep)
        summary = evaluator.summary()
        (out_dir / "metrics.json").write_text(
            json.dumps({k: v for k, v in summary.items() if k != "per_image"}, indent=2)
        )
        outcome["test"] = summary
    return outcome


def inference_info(config: NucleiConfig) -> dict[str, Any]:
    """What prediction must know: outputs, tile size, post-processing, µm per pixel."""
    return {
        "task": "nucleus instances",
        "outputs": ["background logit", "nucleus logit", "horizontal map", "vertical map"],
        "tile_size": config.data.crop_size,
        "mpp": config.data.mpp,
        "post": config.post.model_dump(),
    }


def load_nucleus_run(run_dir: Path) -> tuple[nn.Module, NucleiConfig]:
    """The inference model (``model.safetensors``) and config of a finished nucleus run."""
    if not run_dir.is_dir():
        raise DataError(run_dir, "run folder does not exist")
    weights = run_dir / "model.safetensors"
    if not weights.exists():
        raise ConfigError(f"{run_dir}: no model.safetensors (did training finish? resume it with --resume)")
    config = resolve_config(NucleiConfig, run_dir / "config.yaml")
    return model_from_file(weights).eval(), config
