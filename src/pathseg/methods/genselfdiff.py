"""GenSelfDiff-HIS: denoising diffusion as self-supervised pretraining, then end-to-end fine-tuning.

Stage 1, :func:`pretrain` (``pathseg pretrain``): a U-Net with a time embedding learns to predict the
noise added to random crops of *unlabeled* tiles (DDPM objective, P2 weighting by default). A
held-out set of crops gives a validation denoising loss at fixed noise, which picks the best
checkpoint, and DDIM sample grids are saved at every evaluation so a person can see what the model
has learned.

Stage 2 is ordinary supervised training started from the denoiser
(``pathseg train --init <pretrain run>``, see :mod:`pathseg.methods.supervised`): the network keeps
all weights but its output conv, the time input is fixed to ``t = 0``, and everything is trained,
optionally with the paper's loss ``--loss ss+focal`` (SS + focal, gamma 2, 1:1).

Fixed relative to the seed code (seeds-spec 1.9): any folder of images (no hard-coded paths), CPU
or one/many GPUs, validation images held out by image (not by overlapping patch), lossless
intermediate files, and downstream evaluation on whole images with coordinate-based HD95.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from pathseg.config import AugmentSection, ModelSection, Strict, to_plain
from pathseg.data.datasets import UnlabeledImageDataset
from pathseg.data.folders import Sample, find_images
from pathseg.data.io import image_size, write_image
from pathseg.data.splits import train_val_split
from pathseg.data.transforms import AugmentConfig, build_train_transform, from_tensor
from pathseg.diffusion import DiffusionConfig, DiffusionLoss, Sampler, SamplerConfig
from pathseg.engine import TrainerConfig, fit, write_run_info
from pathseg.engine.distributed import is_main_process
from pathseg.errors import ConfigError, DataError
from pathseg.models import create_model, model_arguments
from pathseg.report.figures import image_grid
from pathseg.report.html import image_tag
from pathseg.report.run_report import build_run_report

__all__ = ["PretrainConfig", "pretrain", "pretrain_images"]


class PretrainDataSection(Strict):
    """Unlabeled images: folders (each holding ``images/`` or image files), and/or synthetic tiles.

    Masks next to the images are never read. ``synthetic`` > 0 generates that many tiles of
    ``synthetic_size`` px into ``<output>/data`` (the built-in demo data).
    """

    images: list[Path] = Field(default_factory=list)
    synthetic: int = 0
    synthetic_size: int = 256
    scale: float = 1.0
    crop_size: int = 128
    val_fraction: float = 0.1
    augment: AugmentSection = Field(default_factory=AugmentSection)


class PretrainModelSection(ModelSection):
    """A registered network that accepts ``time_embedding=True`` (the U-Nets); other keys go to it."""

    name: str = "unet_small"


class SamplesSection(Strict):
    """The sample grids written at every evaluation (fixed noise, so grids are comparable)."""

    count: int = 16
    seed: int = 0
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)


@dataclass
class PretrainTrainerConfig(TrainerConfig):
    """The engine settings with defaults suited to denoising pretraining."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    ema_decay: float = 0.999
    monitor: str = "val_loss"
    monitor_mode: Literal["max", "min"] = "min"


class PretrainConfig(Strict):
    """Everything ``pathseg pretrain`` needs."""

    data: PretrainDataSection = Field(default_factory=PretrainDataSection)
    model: PretrainModelSection = Field(default_factory=PretrainModelSection)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    samples: SamplesSection = Field(default_factory=SamplesSection)
    train: PretrainTrainerConfig = Field(default_factory=PretrainTrainerConfig)
    output: Path = Path("runs/pretrain")


def pretrain_images(config: PretrainConfig) -> list[Path]:
    """All unlabeled image files the config names (generating the synthetic ones if asked)."""
    data = config.data
    if not data.images and data.synthetic <= 0:
        raise ConfigError("no pretraining images: give --images FOLDER (repeatable) and/or --synthetic N")
    paths: list[Path] = []
    for folder in data.images:
        folder = Path(folder)
        inner = folder / "images"
        paths += find_images(inner if inner.is_dir() else folder)
    if data.synthetic > 0:
        paths += find_images(_synthetic_folder(config) / "images")
    return paths


def _synthetic_folder(config: PretrainConfig) -> Path:
    from pathseg.data.synthetic import SynthConfig, write_dataset

    folder = Path(config.output) / "data" / "synthetic"
    marker = folder / "dataset.yaml"
    if is_main_process() and not marker.exists():
        write_dataset(
            folder,
            config.data.synthetic,
            seed=config.train.seed,
            config=SynthConfig(size=config.data.synthetic_size),
        )
    return folder


def build_denoiser(config: PretrainConfig) -> nn.Module:
    torch.manual_seed(config.train.seed)
    if "time_embedding" not in model_arguments(config.model.name):
        raise ConfigError(
            f"model {config.model.name!r} has no time embedding; pretraining needs a U-Net (unet, unet_small)"
        )
    model = create_model(
        config.model.name, in_channels=3, num_classes=3, time_embedding=True, **config.model.kwargs()
    )
    multiple = getattr(model, "size_multiple", 1)
    if config.data.crop_size % multiple:
        raise ConfigError(
            f"data.crop_size={config.data.crop_size} must be a multiple of {multiple} "
            f"for this {config.model.name}"
        )
    return model


def _fixed_crops(dataset: UnlabeledImageDataset, count: int, seed: int) -> torch.Tensor:
    """``count`` crops drawn with fixed augmentation seeds: the same every evaluation and every rerun."""
    return torch.stack([dataset[(i % len(dataset), 10_000 + seed + i)]["image"] for i in range(count)])


def pretrain(config: PretrainConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train the denoiser; the run folder gets ``model.safetensors`` (EMA, best validation loss),
    ``samples/step_*.png`` grids, ``samples.png`` (final), ``real.png`` and ``report.html``."""
    run_dir = Path(config.output)
    paths = pretrain_images(config)
    samples = [Sample(stem=f"{i:06d}_{p.stem}", image=p) for i, p in enumerate(paths)]
    train_samples, val_samples = (
        train_val_split(samples, config.data.val_fraction, config.train.seed)
        if len(samples) > 1 and config.data.val_fraction > 0
        else (samples, [])
    )
    write_run_info(run_dir, to_plain(config))
    if is_main_process():
        (run_dir / "splits.json").write_text(
            json.dumps(
                {
                    "train_images": [str(s.image) for s in train_samples],
                    "val_images": [str(s.image) for s in val_samples],
                },
                indent=2,
            )
        )
    augment = AugmentConfig(crop_size=config.data.crop_size, **config.data.augment.model_dump())
    transform = build_train_transform(augment)
    dataset = UnlabeledImageDataset(train_samples, transform, config.data.scale, seed=config.train.seed)
    _check_sizes(dataset, config.data.crop_size)
    model = build_denoiser(config)
    objective = DiffusionLoss(config.diffusion)

    val_crops = (
        _fixed_crops(
            UnlabeledImageDataset(val_samples, transform, config.data.scale, seed=config.train.seed),
            max(config.train.batch_size, 32),
            config.train.seed,
        )
        if val_samples
        else None
    )
    real = _fixed_crops(dataset, config.samples.count, config.train.seed)
    sampler = Sampler(
        objective.schedule, config.diffusion.prediction, config.samples.sampler, config.diffusion.clip_sample
    )
    noise = torch.randn(
        (config.samples.count, 3, config.data.crop_size, config.data.crop_size),
        generator=torch.Generator().manual_seed(config.samples.seed),
    )
    samples_dir = run_dir / "samples"
    if is_main_process():
        samples_dir.mkdir(parents=True, exist_ok=True)
        write_image(run_dir / "real.png", image_grid([from_tensor(x) for x in real]))

    def loss_fn(net: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return objective(net, batch["image"])

    def evaluate_fn(net: nn.Module, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        device = next(net.parameters()).device
        if val_crops is not None:
            generator = torch.Generator().manual_seed(config.train.seed + 1)  # same t and noise every time
            losses = [
                objective(net, chunk.to(device), generator=generator)[0].item()
                for chunk in val_crops.split(config.train.batch_size)
            ]
            metrics["val_loss"] = sum(losses) / len(losses)
        drawn = sampler.sample(net, noise=noise, device=device)
        write_image(samples_dir / f"step_{step:07d}.png", image_grid([from_tensor(x) for x in drawn.cpu()]))
        return metrics

    result = fit(
        model,
        dataset,
        loss_fn,
        run_dir,
        config.train,
        evaluate_fn=evaluate_fn,
        resume=resume,
        show_progress=show_progress,
    )
    outcome: dict[str, Any] = {"run_dir": str(run_dir), "best": result.best, "final_step": result.final_step}
    if is_main_process():
        final_model = result.model.eval()
        device = next(final_model.parameters()).device
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            drawn = sampler.sample(final_model, noise=noise, device=device)
        write_image(run_dir / "samples.png", image_grid([from_tensor(x) for x in drawn.cpu()]))
        outcome["report"] = str(write_pretrain_report(run_dir, config))
    return outcome


def _check_sizes(dataset: UnlabeledImageDataset, crop_size: int) -> None:
    """Images smaller than the crop would be padded with black, which the denoiser would learn as tissue."""
    for path in dataset.paths[:: max(1, len(dataset.paths) // 50)]:
        height, width = image_size(path)
        height, width = math.floor(height * dataset.scale), math.floor(width * dataset.scale)
        if min(height, width) < crop_size:
            raise DataError(
                path,
                f"{height}x{width} px after scale {dataset.scale} is smaller than "
                f"data.crop_size={crop_size}; lower the crop size or raise data.scale",
            )


def write_pretrain_report(run_dir: Path, config: PretrainConfig) -> Path:
    """HTML page: denoising loss curves, sample grids over training next to real crops, config."""
    grids = sorted((run_dir / "samples").glob("step_*.png"))
    shown = grids if len(grids) <= 4 else [grids[i * (len(grids) - 1) // 3] for i in range(4)]
    sampler = config.samples.sampler
    body = image_tag(run_dir / "real.png", run_dir, "real training crops") + "".join(
        image_tag(p, run_dir, f"{sampler.method.upper()} samples at step {p.stem[5:].lstrip('0') or 0}")
        for p in shown
    )
    if (run_dir / "samples.png").exists():
        body += image_tag(run_dir / "samples.png", run_dir, "samples from the final (EMA) model")
    intro = (
        f"<p>Denoising pretraining of a {config.model.name} on unlabeled crops of {config.data.crop_size} px "
        f"({config.diffusion.schedule} schedule, {config.diffusion.prediction} prediction, "
        f"{config.diffusion.weighting} weighting). Samples: {sampler.method.upper()}, {sampler.steps} steps, "
        "the same starting noise in every grid. Fine-tune with <code>pathseg train --init "
        f"{html.escape(str(run_dir))}</code>.</p>"
    )
    return build_run_report(
        run_dir,
        f"pathseg pretraining {run_dir.name}",
        [("What this is", intro), ("Samples", body)],
        monitor="val_loss",
    )
