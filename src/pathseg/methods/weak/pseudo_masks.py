"""Stage 2: Grad-CAMs of several layers -> one pseudo mask per layer and patch; their quality
against pixel truth (``PooledScores``) and the CAM figure."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from pathseg.data.classes import ClassMap
from pathseg.data.folders import Sample
from pathseg.data.io import read_image, read_label_image, write_mask
from pathseg.data.patch_labels import (
    PatchSample,
    discover_patch_labels,
    label_palette,
)
from pathseg.data.transforms import to_tensor
from pathseg.engine.distributed import DistInfo
from pathseg.engine.progress import StepProgress
from pathseg.engine.trainer import resolve_device
from pathseg.errors import DataError
from pathseg.inference.cam import grad_cams
from pathseg.methods.weak.classifier import batches_by_size, load_classifier
from pathseg.methods.weak.config import (
    WeakConfig,
    check_config,
    layer_folder,
    patch_class_map,
    stage_dirs,
    write_json,
)
from pathseg.metrics import confusion_matrix, scores_from_confusion


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


def generate_pseudo_masks(config: WeakConfig, show_progress: bool = True) -> dict[str, Any]:
    """Stage 2: for every training patch and every ``cam.layers`` entry, a palette PNG pseudo mask.

    Resumable: patches whose masks exist for every layer are skipped.
    """
    check_config(config)
    dirs = stage_dirs(config)
    classifier = load_classifier(config)
    # The classifier's configured device (under torchrun, this process's GPU), as stage 1 trained on.
    local = DistInfo(local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(config.classifier.train.device, local)
    classifier.to(device)
    samples = discover_patch_labels(config.data.patches, config.data.classes, config.data.labels_csv)
    class_map = patch_class_map(config)
    palette = label_palette(class_map)
    layers = config.cam.layers
    folders = [dirs["pseudo_masks"] / layer_folder(layer) for layer in layers]

    def done(sample: PatchSample) -> bool:
        return all((folder / f"{sample.stem}.png").exists() for folder in folders)

    todo = [s for s in samples if not done(s)]
    batches = batches_by_size(todo, config.cam.batch_size)
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
        write_json(dirs["root"] / "cam_quality.json", summary["quality"])
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
            mask = read_label_image(dirs["pseudo_masks"] / layer_folder(layer) / f"{sample.stem}.png")
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
