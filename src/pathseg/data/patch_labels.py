"""Patch-level (image-level) multi-label data for weak supervision.

A patch-label set is a folder of image patches, each with a 0/1 vector saying which tissue classes
it contains. The label lives either in the file name, in one of the published styles

* ``436219-9328-56427-[1, 0, 0].png``   (WSSS4LUAD: commas and spaces)
* ``1031280-2300-27920-[1 0 0 1].png``  (LUAD-HistoSeg: spaces)
* ``TCGA-A1-A0SK-DX1_xmin45749+0[1101].png``  (BCSS-WSSS: digits only)

or in a CSV file with an image-name column and either one 0/1 column per class or a ``labels``
column holding a vector in any of the styles above. Class names and their order come from the
config, so any number of classes works; a vector of the wrong length is an error naming the file.

:func:`make_patch_label_set` turns any image + mask folder into such a set (tile, label each patch
with the classes covering more than a fraction of it, keep the pixel truth beside it), so weak
supervision can be measured on data that also has pixel masks.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pathseg.data.classes import ClassMap
from pathseg.data.datasets import UnlabeledImageDataset, _split_key, draw_generator
from pathseg.data.folders import Sample, find_images
from pathseg.data.io import read_image, read_label_image, write_image, write_mask
from pathseg.data.transforms import PairTransform, to_tensor
from pathseg.errors import ConfigError, DataError

__all__ = [
    "PatchLabelDataset",
    "PatchSample",
    "StackedMaskDataset",
    "discover_patch_labels",
    "format_label_name",
    "label_palette",
    "make_patch_label_set",
    "parse_label_vector",
    "read_labels_csv",
]

# The last [...] of a file stem; what comes before it is the patch's own name.
_BRACKETS = re.compile(r"^(?P<prefix>.*)\[(?P<vector>[^\[\]]*)\]$")
NAME_STYLES = ("comma", "space", "compact")


@dataclass(frozen=True)
class PatchSample:
    """One patch: its image file and a 0/1 label per class (in the config's class order)."""

    image: Path
    labels: tuple[int, ...]

    @property
    def stem(self) -> str:
        return self.image.stem


def parse_label_vector(text: str, num_classes: int, source: str | Path) -> tuple[int, ...]:
    """``"1, 0, 1"``, ``"1 0 1"`` or ``"101"`` -> ``(1, 0, 1)``; errors name ``source``.

    Separated forms may use commas and/or spaces; a form without separators is read one digit per
    class. Every entry must be 0 or 1 and there must be exactly ``num_classes`` of them.
    """
    body = text.strip()
    if not body:
        raise DataError(source, f"empty label vector (expected {num_classes} values of 0/1)")
    parts = [p for p in re.split(r"[,\s]+", body) if p]
    if len(parts) == 1 and len(parts[0]) > 1:
        parts = list(parts[0])  # the compact style: one digit per class
    if any(p not in ("0", "1") for p in parts):
        raise DataError(source, f"label vector [{text}] must hold only 0 and 1")
    if len(parts) != num_classes:
        raise DataError(
            source, f"label vector [{text}] has {len(parts)} values but {num_classes} classes are configured"
        )
    return tuple(int(p) for p in parts)


def labels_from_name(path: Path, num_classes: int) -> tuple[int, ...]:
    """The label vector in the last ``[...]`` of the file stem."""
    match = _BRACKETS.match(path.stem)
    if match is None:
        raise DataError(
            path,
            "file name carries no patch label: expected it to end in [..] before the extension, "
            "e.g. name-[1, 0, 1].png, name-[1 0 1].png or name+0[101].png (or give a labels CSV)",
        )
    return parse_label_vector(match.group("vector"), num_classes, path)


def format_label_name(prefix: str, labels: Sequence[int], style: str = "comma") -> str:
    """A file stem carrying ``labels`` in one of :data:`NAME_STYLES` (the inverse of parsing)."""
    values = [str(int(v)) for v in labels]
    if style == "comma":
        return f"{prefix}-[{', '.join(values)}]"
    if style == "space":
        return f"{prefix}-[{' '.join(values)}]"
    if style == "compact":
        return f"{prefix}+0[{''.join(values)}]"
    raise ConfigError(f"label name style must be one of {', '.join(NAME_STYLES)}, got {style!r}")


_NAME_COLUMNS = ("image", "name", "file", "filename", "image_name", "stem", "patch")


def read_labels_csv(path: Path, images_dir: Path, class_names: Sequence[str]) -> list[PatchSample]:
    """Patch labels from a CSV: an image column plus one 0/1 column per class or a ``labels`` column.

    Image names may be given with or without extension and are resolved inside ``images_dir``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "labels CSV does not exist")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        rows = list(reader)
    name_column = next((columns[c] for c in _NAME_COLUMNS if c in columns), None)
    if name_column is None:
        raise DataError(path, f"no image-name column (one of {', '.join(_NAME_COLUMNS)}) in the header")
    per_class = [columns.get(name.lower()) for name in class_names]
    vector_column = columns.get("labels") or columns.get("label")
    if not all(per_class) and vector_column is None:
        missing = [n for n, c in zip(class_names, per_class, strict=True) if c is None]
        raise DataError(path, f"no column for classes {missing} and no 'labels' column")
    if not rows:
        raise DataError(path, "labels CSV has no rows")
    by_name = {p.name: p for p in find_images(images_dir)}
    by_stem = {p.stem: p for p in by_name.values()}
    samples = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}, line {line}"
        name = (row[name_column] or "").strip()
        image = by_name.get(Path(name).name) or by_stem.get(Path(name).stem) or by_stem.get(name)
        if image is None:
            raise DataError(where, f"image {name!r} not found in {images_dir}")
        if all(per_class):
            text = " ".join((row[c] or "").strip() for c in per_class if c is not None)
        else:
            assert vector_column is not None
            text = (row[vector_column] or "").strip().strip("[]")
        samples.append(PatchSample(image, parse_label_vector(text, len(class_names), where)))
    return samples


def discover_patch_labels(
    folder: Path, class_names: Sequence[str], labels_csv: Path | None = None
) -> list[PatchSample]:
    """Every patch in ``folder`` (or its ``images/`` subfolder) with its labels, sorted by name."""
    folder = Path(folder)
    images_dir = folder / "images" if (folder / "images").is_dir() else folder
    if labels_csv is not None:
        return read_labels_csv(labels_csv, images_dir, class_names)
    return [PatchSample(p, labels_from_name(p, len(class_names))) for p in find_images(images_dir)]


def label_palette(class_map: ClassMap) -> list[tuple[int, int, int]]:
    """256 colours for palette masks of class indices: the classes' colours, ignored pixels white."""
    colours = list(class_map.palette())
    colours += [(0, 0, 0)] * (256 - len(colours))
    colours[class_map.ignore_index] = (255, 255, 255)
    return colours


def patch_origins(height: int, width: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of ``patch``-sized windows at ``stride`` covering the image edge to edge.

    The last row and column are shifted back to end at the border, so no tissue is dropped and no
    window is padded. Images smaller than a patch give no windows.
    """
    if height < patch or width < patch:
        return []

    def starts(size: int) -> list[int]:
        values = list(range(0, size - patch + 1, stride))
        if values[-1] != size - patch:
            values.append(size - patch)
        return values

    return [(y, x) for y in starts(height) for x in starts(width)]


def make_patch_label_set(
    samples: Sequence[Sample],
    class_map: ClassMap,
    out_dir: Path,
    patch_size: int = 224,
    stride: int | None = None,
    min_fraction: float = 0.05,
    min_labelled: float = 0.5,
    style: str = "comma",
) -> dict[str, object]:
    """Tile image + mask pairs into a patch-label set with the pixel truth kept beside it.

    Writes ``images/<stem>_y<Y>_x<X>-[l0, l1, ...].png`` (the label in the name, ``style``), the
    same stem under ``masks/`` (class indices, ignored pixels as ``class_map.ignore_index``) and
    ``labels.csv``. A patch's label is 1 for each class covering more than ``min_fraction`` of its
    labelled (non-ignored) pixels. Patches whose labelled pixels are under ``min_labelled`` of the
    patch (mostly glass or unannotated) or that contain no class are skipped.

    Returns counts: images, patches written, patches skipped, and patches per class.
    """
    if patch_size < 8:
        raise ConfigError(f"patch_size must be at least 8, got {patch_size}")
    stride = stride or patch_size
    if stride < 1:
        raise ConfigError(f"stride must be positive, got {stride}")
    if not 0 <= min_fraction < 1 or not 0 <= min_labelled <= 1:
        raise ConfigError("min_fraction must be in [0, 1) and min_labelled in [0, 1]")
    if not samples:
        raise ConfigError("make_patch_label_set: no image/mask pairs given")
    format_label_name("x", [0], style)  # validates the style before any file is written
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    num_classes = class_map.num_classes
    palette = label_palette(class_map)
    rows: list[list[object]] = []
    skipped = 0
    too_small: list[str] = []
    for sample in samples:
        assert sample.mask is not None
        image = read_image(sample.image)
        mask = class_map.encode(read_label_image(sample.mask), sample.mask)
        if mask.shape != image.shape[:2]:
            (mh, mw), (ih, iw) = mask.shape, image.shape[:2]
            raise DataError(sample.mask, f"mask is {mw}x{mh} but image {sample.image.name} is {iw}x{ih}")
        origins = patch_origins(*mask.shape, patch_size, stride)
        if not origins:
            too_small.append(sample.stem)
        for y, x in origins:
            window = mask[y : y + patch_size, x : x + patch_size]
            labelled = window != class_map.ignore_index
            count = int(labelled.sum())
            if count < min_labelled * window.size or count == 0:
                skipped += 1
                continue
            share = np.bincount(window[labelled].ravel(), minlength=num_classes)[:num_classes] / count
            labels = [int(s > min_fraction) for s in share]
            if not any(labels):
                skipped += 1
                continue
            stem = format_label_name(f"{sample.stem}_y{y}_x{x}", labels, style)
            write_image(out_dir / "images" / f"{stem}.png", image[y : y + patch_size, x : x + patch_size])
            write_mask(out_dir / "masks" / f"{stem}.png", window.astype(np.uint8), palette=palette)
            rows.append([f"{stem}.png", sample.stem, y, x, *labels])
    with open(out_dir / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "source", "y", "x", *class_map.names])
        writer.writerows(rows)
    per_class = {name: sum(int(r[4 + i]) for r in rows) for i, name in enumerate(class_map.names)}
    return {
        "images": len(samples),
        "patches": len(rows),
        "skipped": skipped,
        "smaller_than_patch": too_small,
        "patches_per_class": per_class,
    }


class PatchLabelDataset(UnlabeledImageDataset):
    """Patches with their label vectors: ``{"image", "labels": (C,) float 0/1, "name"}``."""

    def __init__(
        self,
        samples: Sequence[PatchSample],
        transform: PairTransform | None = None,
        scale: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__([s.image for s in samples], transform, scale, seed=seed)
        self.labels = torch.tensor([s.labels for s in samples], dtype=torch.float32)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        item = super().__getitem__(key)
        item["labels"] = self.labels[int(key[0] if isinstance(key, tuple) else key)]
        return item


class StackedMaskDataset(Dataset):
    """Images with several label maps each (one pseudo mask per CAM layer, say).

    Items are ``{"image": (3, H, W), "masks": (L, H, W) int64, "name"}``. Mask files hold class
    indices directly (palette PNGs as written by the weak-supervision pipeline), ignored pixels
    included. Geometric augmentations move all maps with the image; zooming is not supported.
    """

    def __init__(
        self,
        images: Sequence[Path],
        masks: Sequence[Sequence[Path]],
        transform: PairTransform | None = None,
        seed: int = 0,
    ) -> None:
        if not images:
            raise ValueError("StackedMaskDataset needs at least one image")
        if len(images) != len(masks):
            raise ValueError("StackedMaskDataset: one list of mask files per image")
        self.images = [Path(p) for p in images]
        self.masks = [[Path(m) for m in group] for group in masks]
        self.transform = transform
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            image = read_image(self.images[index])
            planes = []
            for path in self.masks[index]:
                plane = read_label_image(path)
                if plane.shape != image.shape[:2]:
                    (mh, mw), (ih, iw) = plane.shape[:2], image.shape[:2]
                    raise DataError(
                        path, f"mask is {mw}x{mh} but image {self.images[index].name} is {iw}x{ih}"
                    )
                planes.append(plane.astype(np.uint8))
            self._cache[index] = (image, np.stack(planes, axis=-1))
        return self._cache[index]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = _split_key(key, self.seed)
        image, masks = self.load(index)
        if self.transform is not None:
            image, moved = self.transform(
                image, masks, rng if rng is not None else draw_generator(self.seed, index)
            )
            assert moved is not None
            masks = moved
        return {
            "image": to_tensor(np.ascontiguousarray(image)),
            "masks": torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)).astype(np.int64)),
            "name": self.images[index].stem,
        }
