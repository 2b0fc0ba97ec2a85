"""Nucleus instance maps from whatever a dataset ships: label maps, polygons or binary masks.

Nucleus datasets come in three forms, and one split may mix them (MoNuSeg: ImageScope XML for
some images, binary masks for all). A split folder holds ``images/`` and any of

* ``instances/``   instance label maps (8- or 16-bit PNG, TIFF): 0 background, each positive id
  one nucleus. Exact.
* ``annotations/`` polygon files, one per image (Aperio ImageScope ``.xml``, QuPath
  ``.geojson``/``.json``), rasterised at the image's size. Exact up to the rasterisation rule
  of :mod:`pathseg.data.annotations` (a pixel belongs to a polygon holding its centre).
* ``masks/``       binary masks (0 and one non-zero value), split into nuclei by 8-connected
  components. Touching nuclei merge into one, so these samples are flagged *approximate*:
  fine for training a foreground head, wrong as instance ground truth for evaluation.

matched by file stem. When an image has several, the most exact one is used
(instances > polygons > binary), so adding polygon files for some images of a binary-mask
dataset upgrades just those images.

Overlapping polygons
--------------------
Annotators of MoNuSeg-like data sometimes draw neighbouring nuclei overlapping. A pixel can
hold only one id, so the polygon *later in the file* takes the shared pixels (the order it was
drawn in, and the order QuPath paints in). A nucleus entirely covered by later ones, or too
small to hold a pixel centre, gets no pixel: it disappears from the map and is counted as an
*empty polygon* by :func:`check_instance_samples` rather than silently dropped.

Vertex convention
-----------------
QuPath's coordinates put pixel ``(i, j)`` on ``[j, j+1) x [i, i+1)``, so a GeoJSON vertex at whole
numbers lies on pixel corners. MoNuSeg's ImageScope XML (and the tools that made its released
masks, like ``skimage.draw.polygon``) put the *centre* of pixel ``(i, j)`` at ``(j, i)``: read with
the corner convention, every nucleus lands half a pixel down and right, and the union of the 13
training XMLs' nuclei matches the released binary masks at IoU 0.91-0.97 only; with centres at
whole numbers it is 0.994-0.999. So ``.xml`` files are read with vertices at pixel centres,
GeoJSON with vertices at pixel corners.

Every map comes back relabelled to ids ``1..n`` (consecutive, in the order of the original ids
or of the polygons in the file) so that ``n = labels.max()`` is the number of nuclei. Problems
are one-line :class:`~pathseg.errors.DataError` messages naming the file, as elsewhere in
:mod:`pathseg.data`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
from scipy import ndimage

from pathseg.data.annotations import AnnotationWarning, rasterize_instances, read_annotations
from pathseg.data.folders import _IMAGE_DIR_NAMES, _by_stem, _find_child, find_images
from pathseg.data.io import IMAGE_EXTENSIONS, image_size, read_label_image, write_mask
from pathseg.errors import DataError

__all__ = [
    "KINDS",
    "MAX_INSTANCES",
    "InstanceSample",
    "InstanceSummary",
    "check_instance_samples",
    "discover_instance_dataset",
    "load_instances",
    "write_instance_map",
]

MAX_INSTANCES = 65535
"""Most nuclei one map may hold: instance maps are stored as 16-bit PNG."""

KINDS: tuple[str, ...] = ("instances", "polygons", "binary")
"""Sources of an instance map, most exact first (the order in which they win)."""

# Folder (beside images/) holding each kind.
_FOLDERS = {"instances": "instances", "polygons": "annotations", "binary": "masks"}
_POLYGON_SUFFIXES = (".xml", ".geojson", ".json")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
# 8-connectivity: nuclei touching only at a corner are still one object in a binary mask.
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class InstanceSample:
    """One image and the file its nucleus instances come from.

    ``kind`` says how that file is read: ``"instances"`` (label map), ``"polygons"``
    (ImageScope / QuPath polygons) or ``"binary"`` (0/non-zero mask, split into connected
    components).
    """

    stem: str
    image: Path
    instances: Path
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")

    @property
    def approximate(self) -> bool:
        """Touching nuclei of a binary mask merge into one instance, so its split is a guess."""
        return self.kind == "binary"


class InstanceSummary(TypedDict):
    """What :func:`check_instance_samples` found, for a one-line report."""

    images: int
    nuclei: int
    per_kind: dict[str, int]
    approximate: int
    empty_polygons: int


# ------------------------------------------------------------------------------------ discovery


def _label_files(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """``{stem: file}`` of the files in ``folder`` with one of ``suffixes``.

    Other files (notes, thumbnails) are left alone, and an empty folder is allowed: an image
    without any source is reported on its own, naming the image.
    """
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
        ),
        key=lambda p: p.name,
    )
    return _by_stem(files, folder)


def discover_instance_dataset(root: str | Path) -> list[InstanceSample]:
    """Samples of one split folder, each image paired with its most exact instance source.

    ``root`` holds ``images/`` and any of ``instances/``, ``annotations/``, ``masks/`` (see the
    module docstring), or is the ``images/`` folder itself with those folders beside it. The
    result follows the sorted image order.

    Raises:
        DataError: no images folder or none of the three label folders; an image with no
            source (naming the image); a label file without an image (naming that file); two
            files sharing a stem in one folder.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(root, "folder does not exist")
    if not root.is_dir():
        raise DataError(root, "not a folder")
    expected = "expected images/ and any of instances/, annotations/, masks/"
    images_dir = _find_child(root, _IMAGE_DIR_NAMES)
    labels_root = root
    if images_dir is None and root.name.lower() in _IMAGE_DIR_NAMES:
        images_dir, labels_root = root, root.parent
    if images_dir is None:
        splits = sorted(
            p.name for p in root.iterdir() if p.is_dir() and _find_child(p, _IMAGE_DIR_NAMES) is not None
        )
        hint = f"; found split folders {', '.join(splits)}: point to one of them" if splits else ""
        raise DataError(root, f"no images/ folder here ({expected}){hint}")

    sources: dict[str, dict[str, Path]] = {}
    for kind in KINDS:
        folder = labels_root / _FOLDERS[kind]
        if folder.exists():
            suffixes = _POLYGON_SUFFIXES if kind == "polygons" else IMAGE_EXTENSIONS
            sources[kind] = _label_files(folder, suffixes)
    if not sources:
        raise DataError(
            labels_root,
            f"no instances/, annotations/ or masks/ folder beside {images_dir.name}/ ({expected})",
        )

    images = _by_stem(find_images(images_dir), images_dir)
    samples: list[InstanceSample] = []
    missing: list[Path] = []
    for stem, image in images.items():
        kind = next((k for k in KINDS if stem in sources.get(k, {})), None)
        if kind is None:
            missing.append(image)
        else:
            samples.append(InstanceSample(stem, image, sources[kind][stem], kind))
    if missing:
        looked = ", ".join(f"{_FOLDERS[k]}/" for k in sources)
        more = f"; {len(missing) - 1} more images have none" if len(missing) > 1 else ""
        raise DataError(
            missing[0],
            f"no instance map, polygon file or mask with stem {missing[0].stem!r} in {looked}{more}",
        )
    orphans = [path for table in sources.values() for stem, path in table.items() if stem not in images]
    if orphans:
        more = f"; {len(orphans) - 1} more label files have no image" if len(orphans) > 1 else ""
        raise DataError(orphans[0], f"has no image with stem {orphans[0].stem!r} in {images_dir}{more}")
    return samples


# -------------------------------------------------------------------------------------- loading


def _wxh(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}"


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """``labels`` (non-negative ids) renumbered ``1..n`` in id order, 0 kept; and ``n``."""
    values, inverse = np.unique(labels, return_inverse=True)
    out = inverse.reshape(labels.shape).astype(np.int32)
    if values.size and values[0] != 0:
        out += 1
    count = int(values.size - (values.size > 0 and values[0] == 0))
    return out, count


def _too_many(path: Path, count: int, what: str) -> DataError:
    return DataError(
        path, f"{count} {what} is more than the {MAX_INSTANCES} nuclei one instance map can hold (16-bit PNG)"
    )


def _single_channel(path: Path, what: str) -> np.ndarray:
    raw = read_label_image(path)
    if raw.ndim != 2:
        raise DataError(
            path,
            f"{what} must be single-channel (one id per pixel), got {raw.shape[-1]} channels of "
            "different values; save it as greyscale PNG or TIFF",
        )
    if not np.issubdtype(raw.dtype, np.integer):
        raise DataError(path, f"{what} must hold integers, got {raw.dtype}")
    if raw.size and int(raw.min()) < 0:
        raise DataError(path, f"{what} has negative values (down to {int(raw.min())})")
    return raw


def _check_shape(path: Path, labels: np.ndarray, shape: tuple[int, int] | None, image: Path) -> None:
    if shape is not None and tuple(labels.shape) != tuple(shape):
        raise DataError(path, f"instance map is {_wxh(labels.shape)} but image {image.name} is {_wxh(shape)}")


def _load_label_map(sample: InstanceSample, shape: tuple[int, int] | None) -> np.ndarray:
    path = sample.instances
    if path.suffix.lower() in _JPEG_SUFFIXES:
        raise DataError(path, "instance maps must be stored losslessly (PNG or TIFF): JPEG changes ids")
    raw = _single_channel(path, "instance maps")
    _check_shape(path, raw, shape, sample.image)
    ids = np.unique(raw)
    ids = ids[ids != 0]
    if ids.size == 1:
        # One value everywhere but many separate blobs: a binary mask in the wrong folder.
        # (An id in several pieces is allowed: a nucleus cut by a tile border or a fold.)
        _, pieces = ndimage.label(raw != 0, structure=_EIGHT)
        if pieces > 1:
            raise DataError(
                path,
                f"looks like a binary mask (one value, {pieces} separate objects): "
                "put binary masks in masks/",
            )
    if ids.size > MAX_INSTANCES:
        raise _too_many(path, int(ids.size), "ids")
    labels, _ = _consecutive(raw)
    return labels


def _load_binary(sample: InstanceSample, shape: tuple[int, int] | None) -> np.ndarray:
    path = sample.instances
    raw = _single_channel(path, "binary masks")
    _check_shape(path, raw, shape, sample.image)
    values = np.unique(raw)
    values = values[values != 0]
    if values.size > 1:
        jpeg = path.suffix.lower() in _JPEG_SUFFIXES
        fix = (
            "store masks as PNG (JPEG compression invents values)"
            if jpeg
            else "put instance maps in instances/"
        )
        shown = ", ".join(str(v) for v in values[:5]) + (", ..." if values.size > 5 else "")
        raise DataError(
            path,
            f"a binary mask holds 0 and one other value, this one has {values.size} ({shown}): {fix}",
        )
    labels, count = ndimage.label(raw != 0, structure=_EIGHT, output=np.int32)
    if count > MAX_INSTANCES:
        raise _too_many(path, int(count), "connected objects")
    return labels


def _load_polygons(sample: InstanceSample, shape: tuple[int, int] | None) -> tuple[np.ndarray, int]:

    path = sample.instances
    height, width = shape if shape is not None else image_size(sample.image)
    # ImageScope XML: vertex (x, y) is the centre of pixel (x, y) (see "Vertex convention").
    shift = 0.5 if path.suffix.lower() == ".xml" else 0.0
    annotations = read_annotations(path)
    if len(annotations) > MAX_INSTANCES:
        raise _too_many(path, len(annotations), "polygons")
    for number, annotation in enumerate(annotations, start=1):
        x0, y0, x1, y1 = annotation.geometry.bounds
        if x1 <= -shift or y1 <= -shift or x0 >= width - shift or y0 >= height - shift:
            name = f" ({annotation.name})" if annotation.name else ""
            raise DataError(
                path,
                f"polygon {number}{name} spans x {x0:g}..{x1:g}, y {y0:g}..{y1:g}: entirely outside "
                f"the {width}x{height} image {sample.image.name} (wrong image, or coordinates "
                "of another magnification?)",
            )
    painted = rasterize_instances(annotations, (-shift, -shift, width, height), 1.0)
    labels, count = _consecutive(painted)
    return labels, len(annotations) - count


def _load(sample: InstanceSample, shape: tuple[int, int] | None) -> tuple[np.ndarray, int]:
    """The instance map and the number of polygons that got no pixel (0 for other kinds)."""
    if sample.kind == "polygons":
        return _load_polygons(sample, shape)
    if sample.kind == "instances":
        return _load_label_map(sample, shape), 0
    return _load_binary(sample, shape), 0


def load_instances(
    sample: InstanceSample, shape: tuple[int, int] | None = None, quiet: bool = False
) -> np.ndarray:
    """The nucleus instance map of ``sample``: ``int32`` ``(H, W)``, ids ``1..n``, 0 background.

    ``shape`` is the image's ``(height, width)``; given, the map is checked against it (and
    polygons are rasterised at it without opening the image). Polygons are painted as the
    module docstring describes; binary masks are split into 8-connected components. ``quiet``
    drops the warnings about repaired or skipped polygons, for files already checked (and
    warned about) once, e.g. by :func:`check_instance_samples` before training.

    Raises:
        DataError: (naming the label file) unreadable, not single-channel, a binary mask in
            ``instances/`` or a multi-valued map in ``masks/``, a polygon entirely outside the
            image, more than :data:`MAX_INSTANCES` nuclei, or a size that is not the image's.
    """
    if not quiet:
        return _load(sample, shape)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AnnotationWarning)
        return _load(sample, shape)[0]


def check_instance_samples(samples: Sequence[InstanceSample]) -> InstanceSummary:
    """Read every image's size and every instance map, so a bad file is found before training.

    All samples are checked and the first problem is raised with the number of others.
    Warnings met on the way (repaired polygons, JPEG masks) are passed on when every sample is
    fine and dropped when the check fails, so the error is the one message.

    Returns:
        ``images``, ``nuclei`` (total), ``per_kind`` (images read from each kind),
        ``approximate`` (images from binary masks) and ``empty_polygons`` (polygons left
        without a pixel: covered by later ones or smaller than a pixel).

    Raises:
        DataError: naming the first bad file.
    """
    errors: list[DataError] = []
    nuclei = empty = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for sample in samples:
            try:
                labels, lost = _load(sample, image_size(sample.image))
            except DataError as exc:
                errors.append(exc)
                continue
            nuclei += int(labels.max()) if labels.size else 0
            empty += lost
    DataError.raise_first(errors)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    per_kind = {kind: sum(s.kind == kind for s in samples) for kind in KINDS}
    return {
        "images": len(samples),
        "nuclei": nuclei,
        "per_kind": per_kind,
        "approximate": sum(s.approximate for s in samples),
        "empty_polygons": empty,
    }


def write_instance_map(path: str | Path, instances: np.ndarray) -> None:
    """Write an instance map losslessly (8-bit PNG when ids fit a byte, else 16-bit PNG/TIFF).

    Raises:
        DataError: (naming ``path``) an id above :data:`MAX_INSTANCES`, which 16 bits cannot
            hold; relabel to consecutive ids first.
        ValueError: not a 2-D array of non-negative integers, or a lossy or unknown suffix.
    """
    path = Path(path)
    instances = np.asarray(instances)
    if instances.ndim != 2 or not np.issubdtype(instances.dtype, np.integer):
        raise ValueError(
            f"{path}: an instance map is a 2-D integer array, got {instances.dtype} {instances.shape}"
        )
    if instances.size and int(instances.min()) < 0:
        raise ValueError(f"{path}: instance ids must be non-negative, got {int(instances.min())}")
    top = int(instances.max()) if instances.size else 0
    if top > MAX_INSTANCES:
        raise DataError(
            path, f"instance id {top} does not fit a 16-bit map (at most {MAX_INSTANCES} nuclei per image)"
        )
    write_mask(path, instances)
