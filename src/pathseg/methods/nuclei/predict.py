"""Per-image outputs of the nucleus segmenter, and ``pathseg nuclei predict`` on a folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.data.folders import find_images
from pathseg.data.instances import write_instance_map
from pathseg.data.io import read_image, write_image
from pathseg.inference.evaluate import output_folder
from pathseg.inference.nucleus_outputs import nucleus_table, write_nucleus_csv, write_nucleus_geojson
from pathseg.methods.nuclei.train import load_nucleus_run, predict_nuclei
from pathseg.report.figures import outline_objects

__all__ = ["predict_folder", "write_prediction"]


def write_prediction(
    out_dir: Path,
    stem: str,
    image: np.ndarray,
    instances: np.ndarray,
    mpp: float | None,
    truth: np.ndarray | None = None,
) -> dict[str, Any]:
    """``<stem>_instances.png`` (16-bit ids), ``<stem>_nuclei.geojson`` (QuPath detections),
    ``<stem>_nuclei.csv`` (one row per nucleus) and ``<stem>_overlay.png`` (outlines; with
    ``truth``, ground truth left and prediction right). Returns the image's row for a summary."""
    out_dir = output_folder(out_dir)
    write_instance_map(out_dir / f"{stem}_instances.png", instances)
    write_nucleus_geojson(out_dir / f"{stem}_nuclei.geojson", instances)
    rows = nucleus_table(instances, image, mpp)
    write_nucleus_csv(out_dir / f"{stem}_nuclei.csv", rows)
    drawn = outline_objects(image, instances, colour=(40, 255, 90))
    if truth is not None:
        gap = np.full((image.shape[0], 8, 3), 255, np.uint8)
        drawn = np.concatenate([outline_objects(image, truth, colour=(255, 220, 40)), gap, drawn], axis=1)
    write_image(out_dir / f"{stem}_overlay.png", drawn)
    areas = [row["area_px"] for row in rows]
    return {"image": stem, "nuclei": len(rows), "median_area_px": float(np.median(areas)) if areas else 0.0}


def predict_folder(
    run_dir: Path, inputs: Path, out_dir: Path, report: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """Predict every image of ``inputs`` (a folder or one image) with the run's model."""
    model, config = load_nucleus_run(run_dir)
    paths = [inputs] if inputs.is_file() else find_images(inputs)
    rows = []
    for number, path in enumerate(paths, start=1):
        image = read_image(path)
        instances = predict_nuclei(model, image, config)[0]
        rows.append(write_prediction(out_dir, path.stem, image, instances, config.data.mpp))
        if report is not None:
            report(f"[{number}/{len(paths)}] {path.name}: {rows[-1]['nuclei']} nuclei")
    return rows
