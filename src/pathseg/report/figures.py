"""Pictures a person looks at: mask overlays, prediction panels, learning curves."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from skimage.segmentation import find_boundaries

DEFAULT_PALETTE = [
    (0, 0, 0),
    (0, 200, 83),
    (255, 82, 82),
    (41, 121, 255),
    (255, 193, 7),
    (170, 0, 255),
    (0, 188, 212),
    (255, 109, 0),
    (118, 255, 3),
    (233, 30, 99),
]


def palette_for(num_classes: int) -> list[tuple[int, int, int]]:
    return [DEFAULT_PALETTE[i % len(DEFAULT_PALETTE)] for i in range(num_classes)]


def overlay(
    image: np.ndarray,
    labels: np.ndarray,
    palette: list[tuple[int, int, int]] | None = None,
    alpha: float = 0.45,
    background: int | None = 0,
    ignore_index: int | None = 255,
) -> np.ndarray:
    """Blend class colours over an RGB image, with a darker outline at class borders.

    ``background`` (and ignored pixels) stay uncoloured so the tissue remains visible.
    """
    palette = palette or palette_for(int(labels.max()) + 1 if labels.size else 1)
    colours = np.array(palette, dtype=np.float32)
    out = image.astype(np.float32).copy()
    paint = np.ones(labels.shape, bool)
    if background is not None:
        paint &= labels != background
    if ignore_index is not None:
        paint &= labels != ignore_index
    safe = np.clip(labels, 0, len(colours) - 1)
    out[paint] = (1 - alpha) * out[paint] + alpha * colours[safe[paint]]
    edges = find_boundaries(np.where(paint, safe + 1, 0), mode="inner")
    out[edges] = 0.4 * colours[safe[edges]]
    return np.clip(out, 0, 255).astype(np.uint8)


def outline_objects(
    rgb: np.ndarray,
    instances: np.ndarray,
    colour: tuple[int, int, int] = (255, 255, 255),
    edge: tuple[int, int, int] = (25, 25, 25),
) -> np.ndarray:
    """Draw every object's outline, including where two objects touch, so separation is visible.

    Two tones: ``colour`` on the object's own border pixels and a dark ``edge`` just outside it, so
    the outline stands out over any class colour and over bright or dark tissue alike.
    """
    out = rgb.copy()
    out[find_boundaries(instances, mode="outer") & (instances == 0)] = edge
    out[find_boundaries(instances, mode="inner") & (instances > 0)] = colour
    return out


def prediction_panel(
    image: np.ndarray,
    truth: np.ndarray | None,
    prediction: np.ndarray,
    palette: list[tuple[int, int, int]],
    ignore_index: int | None = 255,
    instances: np.ndarray | None = None,
) -> np.ndarray:
    """Image | truth overlay | prediction overlay, side by side with white gutters.

    With ``instances`` (the predicted instance map), the prediction tile outlines every object.
    """
    tiles = [image]
    if truth is not None:
        tiles.append(overlay(image, truth, palette, ignore_index=ignore_index))
    predicted = overlay(image, prediction, palette, ignore_index=None)
    tiles.append(outline_objects(predicted, instances) if instances is not None else predicted)
    gutter = np.full((image.shape[0], 6, 3), 255, np.uint8)
    parts = []
    for tile in tiles:
        parts += [tile, gutter]
    return np.concatenate(parts[:-1], axis=1)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def monitor_label(monitor: str) -> str:
    """``val_loss`` -> ``loss``: the validation metric's name without a ``val_`` prefix."""
    return monitor.removeprefix("val_")


def learning_curves(metrics_file: Path, out_png: Path, monitor: str = "dice") -> Path | None:
    """Training loss and validation ``monitor`` against step, from a run's ``metrics.jsonl``."""
    records = read_jsonl(metrics_file)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val" and monitor in r]
    if not train:
        return None
    label = monitor_label(monitor)
    fig, ax_loss = plt.subplots(figsize=(6.4, 3.6), dpi=110)
    ax_loss.plot(
        [r["step"] for r in train],
        [r["loss"] for r in train],
        color="#555",
        lw=1.2,
        marker="." if len(train) <= 20 else None,  # a short run's few points stay visible
        label="train loss",
    )
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("train loss")
    ax_loss.grid(alpha=0.3)
    if val:
        ax_val = ax_loss.twinx()
        ax_val.plot(
            [r["step"] for r in val], [r[monitor] for r in val], "o-", color="#2e7d32", label=f"val {label}"
        )
        ax_val.set_ylabel(f"validation {label}")
        if "loss" not in monitor and all(0 <= r[monitor] <= 1 for r in val):
            ax_val.set_ylim(0, 1)  # a score in [0, 1] is read against its whole range
    handles = [line for axis in fig.axes for line in axis.get_lines()]
    ax_loss.legend(  # above the axes: never over the curves
        handles,
        [h.get_label() for h in handles],
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        frameon=False,
    )
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png


def image_grid(images: list[np.ndarray], columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile equally sized ``uint8`` RGB images row by row, with a white ``gap`` between them."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    height, width = images[0].shape[:2]
    if any(im.shape[:2] != (height, width) for im in images):
        raise ValueError("image_grid: all images must have the same size")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = np.full((rows * (height + gap) - gap, columns * (width + gap) - gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[
            r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width
        ] = image[..., :3]
    return grid
