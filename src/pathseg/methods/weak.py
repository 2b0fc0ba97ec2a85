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
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy import ndimage
from torch import Tensor, nn

from pathseg.config import EvalSection, ModelSection, Strict, to_plain
from pathseg.data.classes import ClassMap
from pathseg.data.folders import Sample, check_samples, discover_dataset, pair_images_and_masks
from pathseg.data.io import image_size, read_image, read_label_image, write_mask
from pathseg.data.patch_labels import (
    PatchLabelDataset,
    PatchSample,
    StackedMaskDataset,
    discover_patch_labels,
    label_palette,
)
from pathseg.data.transforms import AugmentConfig, build_train_transform, to_tensor
from pathseg.engine import fit, write_run_info
from pathseg.engine.distributed import is_main_process
from pathseg.engine.progress import StepProgress
from pathseg.engine.trainer import TrainerConfig
from pathseg.errors import ConfigError, DataError
from pathseg.inference.cam import grad_cams
from pathseg.inference.evaluate import WindowSettings, evaluate_samples
from pathseg.losses import multi_layer_cross_entropy
from pathseg.metrics import confusion_matrix, scores_from_confusion
from pathseg.models import create_model, load_weights, model_from_file

# Finite stand-in for -inf: no real logit comes near it, and sliding-window blending of tiles
# that gate different classes stays finite (an all -inf pixel would give NaN probabilities).
GATE_FILL = -1e4


# ----------------------------------------------------------------------------- configuration


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


def _layer_folder(layer: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ----------------------------------------------------------------------------- stage 1: classifier


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
    val_groups = _batches_by_size(val, 32)
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
        _write_json(run_dir / "splits.json", info)
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


# ----------------------------------------------------------------------------- stage 2: pseudo masks


def white_background(image: np.ndarray, threshold: int = 200, min_size: int = 50) -> np.ndarray:
    """Glass / air spaces: grey level above ``threshold``, objects smaller than ``min_size`` dropped.

    Grey is ITU-R 601 luma (what PIL's ``"L"`` conversion gives, as in MLPS).
    """
    grey = image[..., 0] * 0.299 + image[..., 1] * 0.587 + image[..., 2] * 0.114
    white = grey > threshold
    labels, count = ndimage.label(white)
    if count == 0:
        return white
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_size
    keep[0] = False
    return keep[labels]


def joint_minmax(maps: Tensor) -> Tensor:
    """Scale all class maps ``(C, H, W)`` to [0, 1] with one min and max over every channel."""
    low, high = maps.min(), maps.max()
    return (maps - low) / (high - low) if high > low else torch.zeros_like(maps)


def pseudo_mask(
    cams: Tensor | np.ndarray,
    labels: Sequence[int],
    background: np.ndarray | None = None,
    ignore_index: int = 255,
) -> np.ndarray:
    """One pseudo mask ``(H, W) uint8`` from the CAMs ``(C, H, W)`` of one patch.

    1. Min-max normalise all classes *jointly* (one min and max over every channel), so a class
       with weak activations does not get stretched to look as strong as the dominant one.
    2. Classes absent from the patch label cannot be chosen.
    3. Pixel label = argmax over the present classes; ``background`` pixels become ``ignore_index``.
    """
    maps = torch.as_tensor(cams, dtype=torch.float32)
    if maps.ndim != 3 or maps.shape[0] != len(labels):
        raise ValueError(f"cams must be (C, H, W) with C = {len(labels)} labels, got {tuple(maps.shape)}")
    present = torch.tensor([bool(v) for v in labels])
    if not present.any():
        raise ValueError("a patch label with no class present cannot give a pseudo mask")
    normalised = joint_minmax(maps)
    normalised[~present] = -1.0  # below every normalised value of a present class
    mask = normalised.argmax(dim=0).numpy().astype(np.uint8)
    if background is not None:
        if background.shape != mask.shape:
            raise ValueError(f"background mask {background.shape} does not match the CAMs {mask.shape}")
        mask[background] = ignore_index
    return mask


def _glass(config: WeakConfig, image: np.ndarray) -> np.ndarray | None:
    """The white-background mask when ``data.white_background`` asks for it."""
    if not config.data.white_background:
        return None
    return white_background(image, config.data.white_threshold, config.data.white_min_size)


def _batches_by_size(samples: Sequence[PatchSample], batch_size: int) -> list[list[PatchSample]]:
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


def generate_pseudo_masks(config: WeakConfig, show_progress: bool = True) -> dict[str, Any]:
    """Stage 2: for every training patch and every ``cam.layers`` entry, a palette PNG pseudo mask.

    Resumable: patches whose masks exist for every layer are skipped.
    """
    check_config(config)
    dirs = stage_dirs(config)
    classifier = load_classifier(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classifier.to(device)
    samples = discover_patch_labels(config.data.patches, config.data.classes, config.data.labels_csv)
    class_map = patch_class_map(config)
    palette = label_palette(class_map)
    layers = config.cam.layers
    folders = [dirs["pseudo_masks"] / _layer_folder(layer) for layer in layers]

    def done(sample: PatchSample) -> bool:
        return all((folder / f"{sample.stem}.png").exists() for folder in folders)

    todo = [s for s in samples if not done(s)]
    batches = _batches_by_size(todo, config.cam.batch_size)
    progress = StepProgress(len(batches), 0, "pseudo masks", enabled=show_progress, line_every=10)
    for index, batch in enumerate(batches, start=1):
        images = [read_image(s.image) for s in batch]
        tensor = torch.stack([to_tensor(image) for image in images]).to(device)
        cams, _ = grad_cams(classifier, tensor, layers)
        for i, (sample, image) in enumerate(zip(batch, images, strict=True)):
            background = _glass(config, image)
            for layer, folder in zip(layers, folders, strict=True):
                mask = pseudo_mask(cams[layer][i].cpu(), sample.labels, background, class_map.ignore_index)
                write_mask(folder / f"{sample.stem}.png", mask, palette=palette)
        progress.update(index, f"{len(todo)} patches")
    progress.close()
    summary: dict[str, Any] = {"patches": len(samples), "generated": len(todo), "layers": layers}
    truth_dir = Path(config.data.patches) / "masks"
    if truth_dir.is_dir():
        summary["quality"] = pseudo_mask_quality(samples, folders, layers, truth_dir, class_map)
        _write_json(dirs["root"] / "cam_quality.json", summary["quality"])
    # Patches with several classes show best whether the CAMs separate them.
    shown = sorted(samples, key=lambda s: -sum(s.labels))[: config.cam.figure_patches]
    cam_figure(config, classifier, shown, dirs["root"] / "figures" / "cams.png")
    return summary


def pseudo_mask_quality(
    samples: Sequence[PatchSample],
    folders: Sequence[Path],
    layers: Sequence[str],
    truth_dir: Path,
    class_map: ClassMap,
) -> dict[str, dict[str, float]]:
    """mIoU/FwIoU/per-class IoU of each layer's pseudo masks against the patches' pixel truth."""
    pooled = {layer: PooledScores(class_map.names, class_map.ignore_index) for layer in layers}
    for sample in samples:
        truth_path = truth_dir / f"{sample.stem}.png"
        if not truth_path.exists():
            raise DataError(
                truth_path, "pixel truth missing for this patch (the masks/ folder is incomplete)"
            )
        truth = read_label_image(truth_path).astype(np.int64)
        for layer, folder in zip(layers, folders, strict=True):
            pooled[layer].update(read_label_image(folder / f"{sample.stem}.png"), truth)
    return {layer: scores.scores() for layer, scores in pooled.items()}


class PooledScores:
    """Pixel scores pooled over a set of images (MLPS / seeds-spec 3.7), for maps that may leave
    pixels unlabelled (``ignore_index`` in a pseudo mask, e.g. glass).

    Ground-truth pixels equal to ``ignore_index`` are left out. An unlabelled *prediction* on a
    labelled pixel is a miss: it counts in that class's false negatives but is no class itself.
    """

    def __init__(self, class_names: Sequence[str], ignore_index: int = 255) -> None:
        self.names = list(class_names)
        self.ignore_index = ignore_index
        k = len(self.names)
        self.matrix = np.zeros((k + 1, k + 1), dtype=np.int64)

    def update(self, prediction: np.ndarray, truth: np.ndarray) -> None:
        k = len(self.names)
        predicted = np.where(prediction == self.ignore_index, k, prediction).astype(np.int64)
        self.matrix += confusion_matrix(predicted, truth.astype(np.int64), k + 1, self.ignore_index)

    def scores(self) -> dict[str, float]:
        """``miou`` (nanmean over classes present in truth or prediction), ``fwiou``,
        ``pixel_accuracy`` and ``iou/<class>``."""
        full = scores_from_confusion(self.matrix, [*self.names, "(unlabelled)"], foreground_start=0)
        ious = np.array([full[f"iou/{name}"] for name in self.names])
        present = (self.matrix[: len(self.names)].sum(1) + self.matrix[:, : len(self.names)].sum(0)) > 0
        out = {
            "miou": float(ious[present].mean()) if present.any() else float("nan"),
            "fwiou": full["fwiou"],
            "pixel_accuracy": full["pixel_accuracy"],
        }
        out.update({f"iou/{name}": full[f"iou/{name}"] for name in self.names})
        return out


def _heatmap(values: np.ndarray) -> np.ndarray:
    import matplotlib

    return (matplotlib.colormaps["jet"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def _colour_mask(mask: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(palette, dtype=np.uint8)[mask]


def cam_figure(
    config: WeakConfig, classifier: nn.Module, samples: Sequence[PatchSample], out: Path
) -> Path | None:
    """Rows of patch | CAM per layer (max over the patch's classes) | pseudo mask per layer | truth,
    with column titles and a colour key (glass / ignored pixels white)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not samples:
        return None
    device = next(classifier.parameters()).device
    class_map = patch_class_map(config)
    palette = label_palette(class_map)
    dirs = stage_dirs(config)
    truth_dir = Path(config.data.patches) / "masks"
    titles = ["patch", *[f"CAM {layer}" for layer in config.cam.layers]]
    titles += [f"pseudo mask {layer}" for layer in config.cam.layers]
    rows = []
    for sample in samples:
        image = read_image(sample.image)
        cams, _ = grad_cams(classifier, to_tensor(image)[None].to(device), config.cam.layers)
        row = [image]
        present = torch.tensor([bool(v) for v in sample.labels])
        for layer in config.cam.layers:
            maps = joint_minmax(cams[layer][0].cpu())
            row.append(_heatmap(maps[present].amax(dim=0).numpy()))
        for layer in config.cam.layers:
            mask = read_label_image(dirs["pseudo_masks"] / _layer_folder(layer) / f"{sample.stem}.png")
            row.append(_colour_mask(mask, palette))
        truth = truth_dir / f"{sample.stem}.png"
        if truth.exists():
            row.append(_colour_mask(read_label_image(truth), palette))
        rows.append(row)
    columns = max(len(row) for row in rows)
    if columns > len(titles):
        titles.append("pixel truth")
    fig, axes = plt.subplots(
        len(rows), columns, figsize=(1.6 * columns, 1.6 * len(rows) + 0.6), squeeze=False
    )
    for r, row in enumerate(rows):
        for c in range(columns):
            axis = axes[r][c]
            axis.axis("off")
            if c < len(row):
                axis.imshow(row[c])
            if r == 0:
                axis.set_title(titles[c], fontsize=7)
    key = [Patch(color=[v / 255 for v in palette[i]], label=name) for i, name in enumerate(class_map.names)]
    key.append(Patch(facecolor="white", edgecolor="grey", label="ignored / glass"))
    fig.legend(handles=key, loc="lower center", ncol=len(key), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def cam_masks_for_images(
    config: WeakConfig, classifier: nn.Module, samples: Sequence[Sample], class_map: ClassMap
) -> dict[str, dict[str, float]]:
    """CAM quality on whole pixel-labelled images, with labels *predicted* by the classifier.

    Classes with probability above ``cam.label_threshold`` count as present (MLPS: 0.25), so this
    measures what the CAMs give on images nobody labelled, not on the training patches.
    """
    device = next(classifier.parameters()).device
    pooled = {layer: PooledScores(class_map.names, class_map.ignore_index) for layer in config.cam.layers}
    for sample in samples:
        image = read_image(sample.image)
        assert sample.mask is not None
        truth = class_map.encode(read_label_image(sample.mask), sample.mask)
        tensor = to_tensor(_pad_to_multiple(image, 8))[None].to(device)
        cams, logits = grad_cams(classifier, tensor, config.cam.layers)
        probabilities = logits[0].sigmoid()
        labels = (probabilities > config.cam.label_threshold).tolist()
        if not any(labels):
            labels[int(probabilities.argmax())] = True
        height, width = image.shape[:2]
        background = _glass(config, image)
        for layer in config.cam.layers:
            mask = pseudo_mask(
                cams[layer][0, :, :height, :width].cpu(), labels, background, class_map.ignore_index
            )
            pooled[layer].update(mask, truth)
    return {layer: scores.scores() for layer, scores in pooled.items()}


def _pad_to_multiple(image: np.ndarray, multiple: int) -> np.ndarray:
    """Reflect-pad bottom/right so the network's strides divide the size (cropped off afterwards)."""
    height, width = image.shape[:2]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_h == 0 and pad_w == 0:
        return image
    return np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


# ----------------------------------------------------------------------------- stage 3: segmenter


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
    folders = [stage_dirs(config)["pseudo_masks"] / _layer_folder(layer) for layer in config.cam.layers]
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
    if test and is_main_process():
        outcome.update(evaluate_weak(config, result.model.eval(), test, class_map, window))
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
    _write_json(root / "summary.json", results)
    return results


# ----------------------------------------------------------------------------- all stages


def run_all(config: WeakConfig, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Classifier -> pseudo masks -> segmenter, skipping stages that are finished.

    A stage counts as finished when its output exists (``model.safetensors`` for the training
    stages, every pseudo mask for stage 2); an unfinished training stage continues from its last
    checkpoint when ``resume`` is true.
    """
    check_config(config)
    dirs = stage_dirs(config)
    write_run_info(dirs["root"], to_plain(config))
    outcome: dict[str, Any] = {}
    if not (dirs["classifier"] / "model.safetensors").exists():
        started = (dirs["classifier"] / "checkpoints" / "last.json").exists()
        outcome["classifier"] = train_classifier(
            config, resume=resume and started, show_progress=show_progress
        )
    outcome["pseudo_masks"] = generate_pseudo_masks(config, show_progress)
    if not (dirs["segmenter"] / "model.safetensors").exists():
        started = (dirs["segmenter"] / "checkpoints" / "last.json").exists()
        outcome["segmenter"] = train_segmenter(config, resume=resume and started, show_progress=show_progress)
    return outcome
