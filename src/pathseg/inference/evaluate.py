"""Evaluate a segmenter on whole images, or predict a folder: metrics, CSV, overlays."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pathseg.data.classes import ClassMap
from pathseg.data.folders import Sample
from pathseg.data.io import read_image, read_label_image, write_mask
from pathseg.data.transforms import resize_pair, to_tensor
from pathseg.errors import DataError
from pathseg.inference.instances import InstanceSettings, separate_objects
from pathseg.inference.sliding_window import predict_logits
from pathseg.metrics import SegmentationEvaluator
from pathseg.report.figures import outline_objects, overlay, prediction_panel


@dataclass
class WindowSettings:
    tile_size: int = 256
    overlap: float = 0.25
    blend: str = "gaussian"
    sw_batch_size: int = 4


def output_folder(path: Path) -> Path:
    """``path``, created if needed.

    Raises:
        DataError: it cannot be created, naming the file in the way when one is (``--out x.png``).
    """
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                raise DataError(part, "is a file, not a folder (give a folder for the output)")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(path, f"cannot create output folder ({exc.strerror or exc})") from None
    return path


def load_pair(sample: Sample, class_map: ClassMap) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and its class-index mask at native resolution, checked to match in size."""
    image = read_image(sample.image)
    mask = class_map.encode(read_label_image(sample.mask), sample.mask) if sample.mask else None
    if mask is not None and mask.shape != image.shape[:2]:
        (mh, mw), (ih, iw) = mask.shape, image.shape[:2]
        raise DataError(sample.mask, f"mask is {mw}x{mh} but image {sample.image.name} is {iw}x{ih}")
    return image, mask


def predict_probabilities(
    model: nn.Module, image: np.ndarray, window: WindowSettings, scale: float = 1.0
) -> np.ndarray:
    """Class probabilities ``(K, H, W)`` at the image's native resolution; the model sees it resized
    by ``scale``. Probabilities (not labels) are upsampled back, so borders stay smooth and metrics
    are always computed against the original masks."""
    small = resize_pair(image, None, scale)[0] if scale != 1.0 else image
    logits = predict_logits(
        model, to_tensor(small), window.tile_size, window.overlap, window.blend, window.sw_batch_size
    )
    probs = logits.softmax(dim=0).cpu().numpy()  # no argmax here: separate_objects decides classes
    if scale == 1.0:
        return probs
    full = F.interpolate(
        torch.from_numpy(probs)[None], size=image.shape[:2], mode="bilinear", align_corners=False
    )
    return full[0].numpy()


def segment(
    model: nn.Module,
    image: np.ndarray,
    window: WindowSettings,
    scale: float = 1.0,
    instances: InstanceSettings | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Class map and instance map (0 = no object) at the image's native resolution.

    ``instances`` says how objects are separated (default: connected components, nothing dropped).
    """
    probs = predict_probabilities(model, image, window, scale)
    return separate_objects(probs, instances or InstanceSettings())


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[Sample],
    class_map: ClassMap,
    window: WindowSettings,
    scale: float = 1.0,
    object_metrics: bool = True,
    out_dir: Path | None = None,
    max_overlays: int = 16,
    instances: InstanceSettings | None = None,
) -> SegmentationEvaluator:
    """Predict every sample on the whole image and score it against its mask.

    Metrics are computed once per whole image at its native resolution, whatever ``scale`` the
    model works at; no crop or overlapping patch is counted twice (seeds-spec 1.9). Object metrics
    score the instance map of ``instances`` (see :func:`segment`). With ``out_dir``, writes
    ``per_image.csv``, ``metrics.json`` and up to ``max_overlays`` panels under ``overlays/``.
    """
    evaluator = SegmentationEvaluator(
        list(class_map.names),
        ignore_index=class_map.ignore_index,
        object_metrics=object_metrics,
    )
    palette = class_map.palette()
    if out_dir is not None:
        output_folder(out_dir)
    for index, sample in enumerate(samples):
        image, truth = load_pair(sample, class_map)
        prediction, objects = segment(model, image, window, scale, instances)
        evaluator.update(prediction, truth, name=sample.stem, pred_instances=objects)
        if out_dir is not None and index < max_overlays:
            panel = prediction_panel(image, truth, prediction, palette, class_map.ignore_index, objects)
            output_folder(out_dir / "overlays")
            Image.fromarray(panel).save(out_dir / "overlays" / f"{sample.stem}.png")
    if out_dir is not None:
        write_evaluation(evaluator, out_dir)
    return evaluator


def write_evaluation(evaluator: SegmentationEvaluator, out_dir: Path) -> dict[str, float]:
    output_folder(out_dir)
    summary = evaluator.summary()
    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    rows = evaluator.per_image
    if rows:
        columns = ["name", *[k for k in rows[0] if k != "name"]]
        with open(out_dir / "per_image.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return summary


def predict_paths(
    model: nn.Module,
    images: Sequence[Path],
    class_map: ClassMap,
    window: WindowSettings,
    out_dir: Path,
    scale: float = 1.0,
    save_overlays: bool = True,
    instances: InstanceSettings | None = None,
) -> tuple[list[Path], list[DataError]]:
    """Per image: ``masks/<stem>.png`` (palette PNG of class indices), ``instances/<stem>.png``
    (16-bit PNG, 0 = no object, 1..N one id per object) and ``overlays/<stem>.png``.

    Both maps come back at the input's own resolution even when the model works at ``scale``.
    An image that cannot be read does not stop the others: returns the written masks and one
    error per unreadable image.

    Raises:
        DataError: two images share a stem (``a.png``, ``a.tif``): their outputs would overwrite
            each other, so nothing is written.
    """
    stems: dict[str, Path] = {}
    for path in images:
        if path.stem in stems:
            raise DataError(
                path,
                f"same stem as {stems[path.stem].name}; both would be written as masks/{path.stem}.png "
                "(rename one)",
            )
        stems[path.stem] = path
    written, failures = [], []
    palette = class_map.palette()
    for folder in ("masks", "instances", *(("overlays",) if save_overlays else ())):
        output_folder(out_dir / folder)
    for path in images:
        try:
            full = read_image(path)
        except DataError as err:
            failures.append(err)
            continue
        prediction, objects = segment(model, full, window, scale, instances)
        mask_path = out_dir / "masks" / f"{path.stem}.png"
        write_mask(mask_path, prediction.astype(np.uint8), palette=palette)
        write_instances(out_dir / "instances" / f"{path.stem}.png", objects)
        written.append(mask_path)
        if save_overlays:
            picture = outline_objects(overlay(full, prediction, palette, ignore_index=None), objects)
            Image.fromarray(picture).save(out_dir / "overlays" / f"{path.stem}.png")
    return written, failures


def write_instances(path: Path, instances: np.ndarray) -> None:
    """A 16-bit grayscale PNG instance map (QuPath, Fiji and skimage read it as labels)."""
    if instances.max(initial=0) > np.iinfo(np.uint16).max:
        raise DataError(path, f"{int(instances.max())} objects do not fit a 16-bit instance map")
    Image.fromarray(instances.astype(np.uint16)).save(path)
