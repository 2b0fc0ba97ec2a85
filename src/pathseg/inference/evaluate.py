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
from pathseg.data.transforms import resize_pair
from pathseg.errors import DataError
from pathseg.inference.sliding_window import predict_image
from pathseg.metrics import SegmentationEvaluator
from pathseg.report.figures import overlay, prediction_panel


@dataclass
class WindowSettings:
    tile_size: int = 256
    overlap: float = 0.25
    blend: str = "gaussian"
    sw_batch_size: int = 4


def load_pair(sample: Sample, class_map: ClassMap) -> tuple[np.ndarray, np.ndarray | None]:
    """The image and its class-index mask at native resolution, checked to match in size."""
    image = read_image(sample.image)
    mask = class_map.encode(read_label_image(sample.mask), sample.mask) if sample.mask else None
    if mask is not None and mask.shape != image.shape[:2]:
        (mh, mw), (ih, iw) = mask.shape, image.shape[:2]
        raise DataError(sample.mask, f"mask is {mw}x{mh} but image {sample.image.name} is {iw}x{ih}")
    return image, mask


def segment(model: nn.Module, image: np.ndarray, window: WindowSettings, scale: float = 1.0) -> np.ndarray:
    """Class map at the image's native resolution; the model sees it resized by ``scale``.

    Probabilities (not labels) are upsampled back, so borders stay smooth and metrics are always
    computed against the original masks.
    """
    small = resize_pair(image, None, scale)[0] if scale != 1.0 else image
    prediction, probs = predict_image(
        model, small, window.tile_size, window.overlap, window.blend, window.sw_batch_size
    )
    if scale == 1.0:
        return prediction
    full = F.interpolate(
        torch.from_numpy(probs)[None], size=image.shape[:2], mode="bilinear", align_corners=False
    )
    return full[0].argmax(dim=0).numpy()


def evaluate_samples(
    model: nn.Module,
    samples: Sequence[Sample],
    class_map: ClassMap,
    window: WindowSettings,
    scale: float = 1.0,
    object_metrics: bool = True,
    out_dir: Path | None = None,
    max_overlays: int = 16,
) -> SegmentationEvaluator:
    """Predict every sample on the whole image and score it against its mask.

    Metrics are computed once per whole image at its native resolution, whatever ``scale`` the
    model works at; no crop or overlapping patch is counted twice (seeds-spec 1.9). With ``out_dir``, writes
    ``per_image.csv``, ``metrics.json`` and up to ``max_overlays`` panels under ``overlays/``.
    """
    evaluator = SegmentationEvaluator(
        list(class_map.names),
        ignore_index=class_map.ignore_index,
        object_metrics=object_metrics,
    )
    palette = class_map.palette()
    for index, sample in enumerate(samples):
        image, truth = load_pair(sample, class_map)
        prediction = segment(model, image, window, scale)
        evaluator.update(prediction, truth, name=sample.stem)
        if out_dir is not None and index < max_overlays:
            panel = prediction_panel(image, truth, prediction, palette, class_map.ignore_index)
            (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
            Image.fromarray(panel).save(out_dir / "overlays" / f"{sample.stem}.png")
    if out_dir is not None:
        write_evaluation(evaluator, out_dir)
    return evaluator


def write_evaluation(evaluator: SegmentationEvaluator, out_dir: Path) -> dict[str, float]:
    out_dir.mkdir(parents=True, exist_ok=True)
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
) -> list[Path]:
    """Write ``masks/<stem>.png`` (palette PNG of class indices) and ``overlays/<stem>.png`` per image.

    Masks come back at the input's own resolution even when the model works at ``scale``.
    """
    written = []
    palette = class_map.palette()
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    for path in images:
        full = read_image(path)
        prediction = segment(model, full, window, scale)
        mask_path = out_dir / "masks" / f"{path.stem}.png"
        write_mask(mask_path, prediction.astype(np.uint8), palette=palette)
        written.append(mask_path)
        if save_overlays:
            (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
            Image.fromarray(overlay(full, prediction, palette, ignore_index=None)).save(
                out_dir / "overlays" / f"{path.stem}.png"
            )
    return written
