"""The ``pathseg nuclei`` configuration: HoVer-style nucleus instance segmentation.

One shared decoder of a registered pathseg network outputs four channels: two nucleus-pixel logits
(background, nucleus) and the horizontal and vertical maps. HoVer-Net gives each of its branches a
decoder of its own; on a CPU budget one decoder trains ~2x faster per step, and the branches only
differ in their last layers there (``model.name`` picks the encoder and decoder as for
``pathseg train``). Defaults follow HoVer-Net's released recipe where it is not GPU-bound: loss
weights (CE 1, Dice 1, MSE 1, MSGE 1), 256 px crops at native resolution (MoNuSeg 40x), the
post-processing constants of :class:`~pathseg.inference.instances.HoverSettings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field

from pathseg.config import AugmentSection, ModelSection, Strict
from pathseg.engine.trainer import TrainerConfig

__all__ = [
    "HoverLossSection",
    "NucleiConfig",
    "NucleiDataSection",
    "NucleusPretrainConfig",
    "PostSection",
    "WindowSection",
]

OUTPUT_CHANNELS = 4  # nucleus logits (2) + horizontal + vertical maps


class NucleiDataSection(Strict):
    """Folders of ``images/`` plus ``instances/``, ``annotations/`` or ``masks/`` (see
    :mod:`pathseg.data.instances`). Without ``val``, ``val_fraction`` of ``train`` is held out by
    image. ``label_fraction`` keeps that share of the training images (at least one), drawn with
    ``train.seed``. ``mpp`` (µm per pixel of the images) is recorded and written to the
    per-nucleus tables; nothing is resampled."""

    train: Path | None = None
    val: Path | None = None
    test: Path | None = None
    val_fraction: float = Field(default=0.1, ge=0, lt=1)
    label_fraction: float = Field(default=1.0, gt=0, le=1)
    crop_size: int = Field(default=256, ge=32)
    mpp: float | None = Field(default=None, gt=0)
    augment: AugmentSection = Field(
        default_factory=lambda: AugmentSection(color_jitter=0.1, stain_jitter=0.05)
    )


class HoverLossSection(Strict):
    """Weights of the four terms: nucleus-pixel CE and Dice, h/v map MSE and the MSE of their
    gradients inside nuclei (MSGE), which sharpens the sign change between touching nuclei."""

    ce: float = Field(default=1.0, ge=0)
    dice: float = Field(default=1.0, ge=0)
    mse: float = Field(default=1.0, ge=0)
    msge: float = Field(default=1.0, ge=0)


class PostSection(Strict):
    """:class:`~pathseg.inference.instances.HoverSettings`."""

    foreground: float = Field(default=0.5, gt=0, lt=1)
    edge: float = Field(default=0.4, gt=0, lt=1)
    smoothing: float = Field(default=3.0, gt=0)
    min_area: int = Field(default=10, ge=0)
    opening: int = Field(default=2, ge=0)


class WindowSection(Strict):
    """Whole-image prediction by sliding windows of ``data.crop_size``."""

    overlap: float = Field(default=0.25, ge=0, lt=1)
    sw_batch_size: int = Field(default=4, ge=1)


@dataclass
class NucleiTrainerConfig(TrainerConfig):
    """The engine settings with the nucleus defaults: EMA 0.999, the best checkpoint by validation AJI."""

    ema_decay: float = 0.999
    monitor: str = "aji"
    monitor_mode: Literal["max", "min"] = "max"


class NucleiConfig(Strict):
    data: NucleiDataSection = Field(default_factory=NucleiDataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    loss: HoverLossSection = Field(default_factory=HoverLossSection)
    post: PostSection = Field(default_factory=PostSection)
    window: WindowSection = Field(default_factory=WindowSection)
    train: NucleiTrainerConfig = Field(default_factory=NucleiTrainerConfig)
    init: Path | None = None
    output: Path = Path("runs/nuclei")


# ----------------------------------------------------------------------------- pretraining

MASK_CHANNELS = 3  # the mask image of domain A: nucleus, contour, distance to the contour


class PretrainDataSection(Strict):
    """Domain A is generated: pseudo instance maps whose statistics are fitted to the instances of
    ``labelled`` (only the training images that ``label_fraction`` keeps, drawn with
    ``train.seed`` like :class:`NucleiDataSection`; only their statistics are used, never the
    pairs). Domain B is real H&E: the images of ``labelled`` plus every folder of ``images``
    (unlabeled; masks next to them are never read). All at the same magnification: pseudo nuclei
    have the sizes of the labelled ones in pixels. ``monitor`` (labelled, not test images) is
    only scored, zero-shot, at each evaluation; it never selects anything."""

    labelled: Path | None = None
    label_fraction: float = Field(default=1.0, gt=0, le=1)
    images: list[Path] = Field(default_factory=list)
    crop_size: int = Field(default=128, ge=32)
    fit_window: int = Field(default=256, ge=32)
    monitor: Path | None = None
    monitor_images: int = Field(default=4, ge=1)
    augment: AugmentSection = Field(default_factory=AugmentSection)


class TranslatorSection(Strict):
    """G_AB (:class:`~pathseg.models.translation.StyledMaskGenerator` + mapping network + style
    encoder), G_BA (``segmenter``: a registered network with 4 HoVer outputs + 3 mask-image
    outputs; its weights are what fine-tuning starts from) and two patch discriminators."""

    segmenter: ModelSection = Field(default_factory=ModelSection)
    generator_widths: list[int] = Field(default_factory=lambda: [32, 64, 128, 128])
    z_dim: int = Field(default=64, ge=1)
    w_dim: int = Field(default=128, ge=1)
    mask_code_dim: int = Field(default=64, ge=1)
    discriminator_width: int = Field(default=32, ge=1)
    discriminator_layers: int = Field(default=3, ge=1)


class TranslationLossSection(Strict):
    """L_G = adversarial + cycle * (cycle_a * |G_BA(G_AB(A)) - A| + cycle_b * |G_AB(G_BA(B)) - B|) / 2
    + instance_guidance * HoVer loss of G_BA on G_AB(A) against A's instances. UNITPathSSL:
    cycle 10, instance guidance 6 (its code default is 1). Least-squares GAN losses."""

    adversarial: float = Field(default=1.0, ge=0)
    cycle: float = Field(default=10.0, ge=0)
    cycle_a: float = Field(default=1.0, ge=0)
    cycle_b: float = Field(default=1.0, ge=0)
    instance_guidance: float = Field(default=6.0, ge=0)
    hover: HoverLossSection = Field(default_factory=HoverLossSection)


@dataclass
class TranslationTrainerConfig(TrainerConfig):
    """GAN settings: Adam betas (0.5, 0.999), no weight decay, no clipping (one optimizer holds
    generators and discriminators, and a shared clip norm would couple them), no EMA; the last
    checkpoint is exported (``monitor`` is not a reported metric, so nothing is "best")."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.5, 0.999)
    grad_clip: float = 0.0
    batch_size: int = 4
    warmup_steps: int = 50
    monitor: str = "none"


class SampleGridSection(Strict):
    """Fixed pseudo masks and real crops shown at every evaluation (the same every time)."""

    count: int = Field(default=8, ge=1)
    seed: int = 0


class NucleusPretrainConfig(Strict):
    data: PretrainDataSection = Field(default_factory=PretrainDataSection)
    translator: TranslatorSection = Field(default_factory=TranslatorSection)
    loss: TranslationLossSection = Field(default_factory=TranslationLossSection)
    post: PostSection = Field(default_factory=PostSection)
    samples: SampleGridSection = Field(default_factory=SampleGridSection)
    train: TranslationTrainerConfig = Field(default_factory=TranslationTrainerConfig)
    output: Path = Path("runs/nucleus_pretrain")
