"""The ``pathseg weak`` configuration, its cross-field checks, and the run folder layout."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pathseg.config import EvalSection, ModelSection, Strict
from pathseg.data.classes import ClassMap
from pathseg.engine.trainer import TrainerConfig
from pathseg.errors import ConfigError


class WeakDataSection(Strict):
    """Patch-label training data, and pixel-labelled images for validation and test.

    ``classes`` names the labels in the order of the label vectors. Masks of ``val``/``test``
    store each class as ``mask_values[name]`` (default: its index); ``ignore_values`` are left out
    of every metric (e.g. WSSS4LUAD's background value 3). ``mask_folder`` names the masks folder
    beside ``images/`` when it is not ``masks/`` (e.g. ``tissue`` in ``pathseg data synth`` output).
    ``crop_size`` trains classifier and segmenter on random square crops (patches smaller than it
    are padded: images by reflection, masks as ignored), which patch sets of mixed sizes need, such
    as WSSS4LUAD's; crops should cover most of a patch, or a class in its label may be cut away.
    Without it every patch must have the same size.
    """

    patches: Path | None = None
    labels_csv: Path | None = None
    classes: list[str] = Field(default_factory=lambda: ["tumour", "stroma", "normal"])
    mask_values: dict[str, int | list[int]] | None = None
    ignore_values: list[int] = Field(default_factory=list)
    val: Path | None = None
    test: Path | None = None
    mask_folder: str | None = None
    crop_size: int | None = None
    val_fraction: float = 0.1
    white_background: bool = False
    white_threshold: int = 200
    white_min_size: int = 50


class PDASection(Strict):
    """Progressive Dropout Attention, used from epoch ``start_epoch`` (0-based; MLPS: after epoch 2).

    As in MLPS, ``gamma`` is ``gamma_start`` at epoch 0 and is multiplied by ``decay`` after every
    epoch (PDA active or not) while it is above ``floor``; so PDA starts at ``0.98 ** 3``.
    """

    enabled: bool = True
    start_epoch: int = 3
    gamma_start: float = 1.0
    decay: float = 0.98
    floor: float = 0.65

    def gamma(self, epoch: int) -> float | None:
        if not self.enabled or epoch < self.start_epoch:
            return None
        gamma = self.gamma_start
        for _ in range(epoch):
            if gamma <= self.floor:
                break
            gamma *= self.decay
        return gamma


@dataclass
class ClassifierTrainerConfig(TrainerConfig):
    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3
    eval_every: int = 200
    checkpoint_every: int = 200
    monitor: str = "f1"


@dataclass
class SegmenterTrainerConfig(TrainerConfig):
    steps: int = 600
    batch_size: int = 8
    lr: float = 1e-3
    eval_every: int = 200
    checkpoint_every: int = 200
    monitor: str = "global_miou"


class ClassifierModelSection(ModelSection):
    """The classifier network; a default name here keeps ``classifier.model.<key>=...`` overrides
    from falling back to the generic ``ModelSection`` default (a segmenter)."""

    name: str = "cam_resnet18"


class SegmenterModelSection(ModelSection):
    name: str = "deeplabv3plus_resnet18"


class ClassifierSection(Strict):
    model: ClassifierModelSection = Field(default_factory=ClassifierModelSection)
    init: Path | None = None
    init_prefix_map: dict[str, str] | None = None
    pda: PDASection = Field(default_factory=PDASection)
    train: ClassifierTrainerConfig = Field(default_factory=ClassifierTrainerConfig)


class CAMSection(Strict):
    """Layers whose Grad-CAMs become pseudo masks, first = the main one (MLPS: bn7, b5_2, b4_5)."""

    layers: list[str] = Field(default_factory=lambda: ["encoder.layer4", "encoder.layer3", "encoder.layer2"])
    batch_size: int = 16
    label_threshold: float = 0.25
    figure_patches: int = 6


class SegmenterSection(Strict):
    model: SegmenterModelSection = Field(default_factory=SegmenterModelSection)
    layer_weights: list[float] = Field(default_factory=lambda: [0.6, 0.2, 0.2])
    gate: Literal["mask", "zero", "off"] = "mask"
    gate_threshold: float = 0.1
    augment: bool = True
    train: SegmenterTrainerConfig = Field(default_factory=SegmenterTrainerConfig)


class WeakConfig(Strict):
    """Everything ``pathseg weak`` needs. ``faithful`` reproduces the MLPS code's training quirks."""

    data: WeakDataSection = Field(default_factory=WeakDataSection)
    classifier: ClassifierSection = Field(default_factory=ClassifierSection)
    cam: CAMSection = Field(default_factory=CAMSection)
    segmenter: SegmenterSection = Field(default_factory=SegmenterSection)
    eval: EvalSection = Field(default_factory=lambda: EvalSection(object_metrics=False, max_overlays=8))
    faithful: bool = False
    output: Path = Path("runs/weak")


def check_config(config: WeakConfig) -> None:
    """Errors that pydantic cannot see: cross-field consistency."""
    if config.data.patches is None:
        raise ConfigError("data.patches is not set: give a folder of patches with labels (--patches PATH)")
    if len(set(config.data.classes)) != len(config.data.classes) or not config.data.classes:
        raise ConfigError(f"data.classes must be unique, non-empty names, got {config.data.classes}")
    if len(config.segmenter.layer_weights) != len(config.cam.layers):
        raise ConfigError(
            f"segmenter.layer_weights has {len(config.segmenter.layer_weights)} weights for "
            f"{len(config.cam.layers)} cam.layers; give one weight per layer"
        )
    if not 0 <= config.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {config.data.val_fraction}")


def mask_class_map(config: WeakConfig) -> ClassMap:
    """How the pixel masks of ``data.val``/``data.test`` store the configured classes."""
    values = config.data.mask_values or {name: i for i, name in enumerate(config.data.classes)}
    if list(values) != list(config.data.classes):
        raise ConfigError(
            f"data.mask_values must list the classes in data.classes order {config.data.classes}, "
            f"got {list(values)}"
        )
    return ClassMap.from_config(values, ignore_values=config.data.ignore_values)


def patch_class_map(config: WeakConfig) -> ClassMap:
    """Patch masks and pseudo masks hold class indices, ignored pixels as 255."""
    return ClassMap.from_config({name: i for i, name in enumerate(config.data.classes)}, ignore_values=[255])


def stage_dirs(config: WeakConfig) -> dict[str, Path]:
    root = Path(config.output)
    return {
        "root": root,
        "classifier": root / "classifier",
        "pseudo_masks": root / "pseudo_masks",
        "segmenter": root / "segmenter",
    }


def layer_folder(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
