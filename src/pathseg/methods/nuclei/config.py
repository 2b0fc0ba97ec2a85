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

__all__ = ["HoverLossSection", "NucleiConfig", "NucleiDataSection", "PostSection", "WindowSection"]

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
