"""Images segmented by several annotators: finding them on disk and serving them for training.

Ambiguous segmentation (CIMD and kin) learns from *all* plausible masks of an image rather than
one consensus, so a sample here is one image with one mask per annotator. Three folder layouts
are recognised (:func:`discover_multi_annotator` tells them apart by their folder names):

``pathseg``
    ``root/images/<stem>.<ext>`` and ``root/masks/<annotator>/<stem>.<ext>``, one folder per
    annotator (what :func:`pathseg.data.synthetic.write_multi_annotator_dataset` writes).
``cimd``
    CIMD's per-case folders: ``root/<case>/image_<anything>.<ext>`` beside
    ``root/<case>/label<k>_<anything>.<ext>``. A file's key is its name up to the first ``_``
    (``image`` or ``label0``, ``label1``, ...); the annotators are the ``label<k>`` keys and the
    sample's stem is the case folder's name.
``bubil``
    The BU-BIL benchmark: ``root/RawImages/<stem>.png`` with
    ``root/ExpertsAnnotations/<person>/seg_<stem>.png`` and
    ``root/CrowdsourcedAnnotations/<worker>/seg_<stem>.png``; the annotators are the
    person/worker folders, ``pool`` picks experts, crowd or both. BU-BIL draws cells *black*
    (0) on white (255; the gold standard uses 1), so read it with :func:`bubil_class_map`.

Conventions shared with :mod:`pathseg.data.folders`: image suffixes (:data:`IMAGE_EXTENSIONS`)
and the fixed folder and file prefixes (``RawImages``, ``seg_``, ``image_``, ``label<k>_``) match
case-insensitively; stems match exactly; hidden files are skipped; every problem is a one-line
:class:`~pathseg.errors.DataError` naming the file or folder. Samples and annotators come back in
natural order (``label2`` before ``label10``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pathseg.data.classes import AnyOf, ClassMap
from pathseg.data.datasets import _compact_dtype, _split_key, draw_generator
from pathseg.data.folders import Sample, check_samples
from pathseg.data.io import IMAGE_EXTENSIONS, read_image, read_label_image
from pathseg.data.transforms import PairTransform, resize_pair, to_tensor
from pathseg.errors import ConfigError, DataError

__all__ = [
    "LAYOUTS",
    "POOLS",
    "MultiAnnotatorDataset",
    "MultiSample",
    "bubil_class_map",
    "check_multi_samples",
    "discover_multi_annotator",
]

LAYOUTS: tuple[str, ...] = ("pathseg", "cimd", "bubil")
POOLS: tuple[str, ...] = ("experts", "crowd", "both")

_BUBIL_POOL_DIRS = {"experts": ("ExpertsAnnotations",), "crowd": ("CrowdsourcedAnnotations",)}
_BUBIL_POOL_DIRS["both"] = _BUBIL_POOL_DIRS["experts"] + _BUBIL_POOL_DIRS["crowd"]
_LABEL_KEY = re.compile(r"label\d+")


@dataclass
class MultiSample:
    """One image and its masks, ``masks[annotator] = path``, in natural annotator order.

    ``group`` is the patient the image belongs to (for patient-wise splits); discovery leaves it
    ``None``, :func:`pathseg.data.folders.assign_groups` fills it from a groups table.
    """

    stem: str
    image: Path
    masks: dict[str, Path] = field(default_factory=dict)
    group: str | None = None


def bubil_class_map(ignore_values: Sequence[int] = ()) -> ClassMap:
    """Classes of BU-BIL masks: ``cell`` is stored as 0, ``background`` as 255 (or 1, the value
    the gold-standard masks use). ``ignore_values`` adds stray values to skip in training."""
    return ClassMap(
        names=("background", "cell"), values=(AnyOf(255, 1), 0), ignore_values=tuple(ignore_values)
    )


# ---------------------------------------------------------------------------- listing helpers


def _natural_key(name: str) -> tuple[list[Any], str]:
    """Sort key putting ``label2`` before ``label10`` (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name)
    return [int(p) if p.isdigit() else p.lower() for p in parts], name


def _child_dir(root: Path, name: str) -> Path | None:
    """The sub-folder of ``root`` called ``name``, compared case-insensitively."""
    wanted = name.lower()
    for child in sorted(root.iterdir()):
        if child.is_dir() and child.name.lower() == wanted:
            return child
    return None


def _sub_dirs(root: Path) -> list[Path]:
    """Visible sub-folders in natural order."""
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(dirs, key=lambda p: _natural_key(p.name))


def _image_files(folder: Path) -> list[Path]:
    """Visible files with an image suffix, sorted by name."""
    files = [
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]
    return sorted(files, key=lambda p: p.name)


def _keyed(files: Iterable[Path], key_of: Callable[[Path], str], folder: Path) -> dict[str, Path]:
    """``{key_of(path): path}``; two files with one key are an error naming both."""
    table: dict[str, Path] = {}
    for path in files:
        key = key_of(path)
        if key in table:
            raise DataError(path, f"two files in {folder} are both {key!r}: {table[key].name}, {path.name}")
        table[key] = path
    return table


def _require_dir(folder: Path) -> None:
    if not folder.exists():
        raise DataError(folder, "folder does not exist")
    if not folder.is_dir():
        raise DataError(folder, "not a folder")


@dataclass
class _Found:
    """What one layout reader found: images by stem, masks by annotator then stem."""

    images: dict[str, Path]
    masks: dict[str, dict[str, Path]]
    images_dir: str  # where an image would have to be, for "mask without image" messages


# ---------------------------------------------------------------------------- the three layouts


def _read_pathseg(root: Path) -> _Found:
    images_dir, masks_dir = _child_dir(root, "images"), _child_dir(root, "masks")
    if images_dir is None or masks_dir is None:
        raise DataError(root, "expected images/ and masks/<annotator>/ folders here")
    image_files = _image_files(images_dir)
    if not image_files:
        raise DataError(images_dir, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    if _image_files(masks_dir):
        raise DataError(
            masks_dir,
            "holds mask files directly; several annotators need one folder each "
            "(masks/<annotator>/<stem>.png)",
        )
    masks: dict[str, dict[str, Path]] = {}
    for folder in _sub_dirs(masks_dir):
        files = _image_files(folder)
        if not files:
            raise DataError(folder, "annotator folder holds no masks")
        masks[folder.name] = _keyed(files, lambda p: p.stem, folder)
    images = _keyed(image_files, lambda p: p.stem, images_dir)
    return _Found(images, masks, str(images_dir))


def _case_key(path: Path) -> str:
    """CIMD's file key: the name up to the first ``_``, lower-cased (``label0_.jpg`` -> ``label0``)."""
    return path.stem.split("_", 1)[0].lower()


def _is_case_folder(folder: Path) -> bool:
    return any(_case_key(p) == "image" or _LABEL_KEY.fullmatch(_case_key(p)) for p in _image_files(folder))


def _read_cimd(root: Path) -> _Found:
    images: dict[str, Path] = {}
    masks: dict[str, dict[str, Path]] = {}
    cases = _sub_dirs(root)
    if not cases:
        raise DataError(root, "no case folders here (expected <case>/image_*.png and <case>/label<k>_*.png)")
    for case in cases:
        files = _keyed(_image_files(case), _case_key, case)
        for key, path in files.items():
            if key != "image" and not _LABEL_KEY.fullmatch(key):
                raise DataError(path, "file in a case folder must be named image_* or label<k>_*")
        if "image" not in files:
            labels = ", ".join(sorted((k for k in files if k != "image"), key=_natural_key)) or "nothing"
            raise DataError(case, f"case folder has no image_* file (found {labels})")
        images[case.name] = files.pop("image")
        for annotator, path in files.items():
            masks.setdefault(annotator, {})[case.name] = path
    return _Found(images, masks, f"{root}/<case>/image_*")


def _bubil_mask_stem(path: Path) -> str:
    if not path.stem.lower().startswith("seg_"):
        raise DataError(path, "BU-BIL mask names must be seg_<image stem>.png")
    return path.stem[len("seg_") :]


def _read_bubil(root: Path, pool: str) -> _Found:
    images_dir = _child_dir(root, "RawImages")
    if images_dir is None:
        raise DataError(root, "expected a RawImages/ folder (BU-BIL layout)")
    image_files = _image_files(images_dir)
    if not image_files:
        raise DataError(images_dir, f"no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    masks: dict[str, dict[str, Path]] = {}
    for pool_name in _BUBIL_POOL_DIRS[pool]:
        pool_dir = _child_dir(root, pool_name)
        if pool_dir is None:
            raise DataError(root, f"no {pool_name}/ folder for pool={pool!r}")
        for folder in _sub_dirs(pool_dir):
            if folder.name in masks:
                raise DataError(folder, f"annotator {folder.name!r} appears in two pools")
            files = _image_files(folder)
            if not files:
                raise DataError(folder, "annotator folder holds no masks")
            masks[folder.name] = _keyed(files, _bubil_mask_stem, folder)
    images = _keyed(image_files, lambda p: p.stem, images_dir)
    return _Found(images, masks, str(images_dir))


def _detect_layout(root: Path) -> str | None:
    if _child_dir(root, "RawImages") is not None:
        return "bubil"
    if _child_dir(root, "images") is not None and _child_dir(root, "masks") is not None:
        return "pathseg"
    if any(_is_case_folder(case) for case in _sub_dirs(root)):
        return "cimd"
    return None


# ---------------------------------------------------------------------------- discovery


def _assemble(
    found: _Found, root: Path, allow_missing: bool, annotators: Sequence[str] | None
) -> list[MultiSample]:
    """Pair every image with its annotators' masks; the checks shared by all layouts."""
    names = sorted(found.masks, key=_natural_key)
    if annotators is not None:
        unknown = [a for a in annotators if a not in found.masks]
        if unknown:
            raise DataError(
                root, f"no annotator {', '.join(map(repr, unknown))} here (found: {', '.join(names)})"
            )
        names = sorted(dict.fromkeys(annotators), key=_natural_key)
    if len(names) < 2:
        found_text = ", ".join(names) if names else "none"
        raise DataError(
            root, f"found {len(names)} annotator(s) ({found_text}); ambiguity needs masks from at least 2"
        )
    orphans = [path for a in names for stem, path in found.masks[a].items() if stem not in found.images]
    if orphans:
        more = f"; {len(orphans) - 1} more masks have no image" if len(orphans) > 1 else ""
        raise DataError(orphans[0], f"mask has no matching image (looked in {found.images_dir}){more}")

    samples: list[MultiSample] = []
    incomplete: list[tuple[Path, list[str]]] = []
    for stem in sorted(found.images, key=_natural_key):
        image = found.images[stem]
        masks = {a: found.masks[a][stem] for a in names if stem in found.masks[a]}
        missing = [a for a in names if a not in masks]
        if missing and not (allow_missing and masks):
            incomplete.append((image, missing))
        samples.append(MultiSample(stem=stem, image=image, masks=masks))
    if incomplete:
        image, missing = incomplete[0]
        more = f"; {len(incomplete) - 1} more images lack masks" if len(incomplete) > 1 else ""
        if len(missing) == len(names):
            problem = f"no annotator's mask for this image{more}"
        else:
            hint = " (allow_missing=True keeps images with some masks)"
            problem = f"no mask from annotator(s) {', '.join(missing)}{hint}{more}"
        raise DataError(image, problem)
    return samples


def discover_multi_annotator(
    root: str | Path,
    *,
    layout: str | None = None,
    pool: str = "experts",
    allow_missing: bool = False,
    annotators: Sequence[str] | None = None,
) -> list[MultiSample]:
    """Every image under ``root`` with one mask per annotator (layouts in the module docstring).

    Args:
        root: the dataset folder (for BU-BIL e.g. ``bubil/Dataset1``).
        layout: ``"pathseg"``, ``"cimd"`` or ``"bubil"``; ``None`` detects it from the folder
            names (``RawImages/`` -> bubil, ``images/`` + ``masks/`` -> pathseg, case folders
            holding ``image_*`` / ``label<k>_*`` files -> cimd).
        pool: BU-BIL only: ``"experts"``, ``"crowd"`` or ``"both"``. BU-BIL's crowd masks of
            Dataset1 are mostly crops of unrecorded position, so :func:`check_multi_samples`
            rejects them (their size differs from the image's).
        allow_missing: keep an image that lacks some annotators' masks (it needs one at least).
        annotators: use only these annotators (names as found on disk).

    Returns:
        Samples in natural order of their stems, each with masks in natural annotator order.

    Raises:
        DataError: unrecognised layout, an image missing annotators' masks, a mask without
            image, a CIMD case folder without image, fewer than 2 annotators, two files for
            one key. Files are not opened: see :func:`check_multi_samples`.
        ConfigError: unknown ``layout`` or ``pool``, or ``pool`` given for another layout.
    """
    root = Path(root)
    _require_dir(root)
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"unknown multi-annotator layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    if pool not in POOLS:
        raise ConfigError(f"unknown BU-BIL pool {pool!r}; use one of {', '.join(POOLS)}")
    if layout is None:
        layout = _detect_layout(root)
    if layout is None:
        nested = [p.name for p in _sub_dirs(root) if _detect_layout(p) is not None]
        hint = f"; found datasets in {', '.join(nested)}: point to one of them" if nested else ""
        raise DataError(
            root,
            "cannot tell the multi-annotator layout (expected images/ + masks/<annotator>/, "
            f"<case>/image_* + label<k>_* files, or BU-BIL's RawImages/ + ExpertsAnnotations/){hint}",
        )
    if layout != "bubil" and pool != "experts":
        raise ConfigError(f"pool={pool!r} applies to the BU-BIL layout only, not {layout!r}")
    if layout == "pathseg":
        found = _read_pathseg(root)
    elif layout == "cimd":
        found = _read_cimd(root)
    else:
        found = _read_bubil(root, pool)
    return _assemble(found, root, allow_missing, annotators)


def check_multi_samples(samples: Sequence[MultiSample], class_map: ClassMap, *, full: bool = True) -> None:
    """Open every image and mask and check they fit together, as
    :func:`pathseg.data.folders.check_samples` does for one mask per image.

    Each image is checked once (fully decoded unless ``full=False``); each mask must decode,
    have its image's size (``mask is WxH but image X is WxH``) and hold only values of
    ``class_map``.

    Raises:
        DataError: naming the first bad image, else the first bad mask, with the number of
            others.
    """
    check_samples([Sample(s.stem, s.image, None, s.group) for s in samples], class_map, full=full)
    per_mask = [Sample(s.stem, s.image, mask, s.group) for s in samples for mask in s.masks.values()]
    check_samples(per_mask, class_map, full=False)


# ---------------------------------------------------------------------------- dataset


class MultiAnnotatorDataset(Dataset):
    """Images with every annotator's mask, for training ambiguous segmentation.

    Items (``annotator="random"``)::

        {"image": (3, H, W) float in [-1, 1], "mask": (H, W) int64 of the drawn annotator,
         "annotator": index into self.annotators, "masks": (M, H, W) int64, "name": stem}

    ``masks`` holds all ``M`` annotators in :attr:`annotators` order; an annotator without a mask
    for this image (``allow_missing`` discovery) is all ``class_map.ignore_index``. The drawn
    annotator is uniform over those that do have a mask: CIMD trains on a random annotator's
    mask at every step. With ``annotator="all"`` (evaluation) items hold ``image``, ``masks``
    and ``name`` only.

    Caching and randomness as in :class:`~pathseg.data.datasets.SegmentationDataset`: the key
    ``(index, augmentation_seed)`` fixes both the annotator and the augmentation. The masks are
    stacked as an ``(H, W, M)`` array and handed to the transform as one mask, so every
    geometric augmentation moves all of them exactly like the image.

    Args:
        samples: from :func:`discover_multi_annotator`.
        class_map: how stored mask values become class indices (the same for all annotators).
        transform: optional ``(image, mask, rng) -> (image, mask)``, e.g. from
            :func:`~pathseg.data.transforms.build_train_transform`.
        scale: resize factor applied once at load time.
        seed: mixed into each item's random generator.
        annotator: ``"random"`` or ``"all"``.
        cache: keep decoded arrays in memory.
    """

    def __init__(
        self,
        samples: Sequence[MultiSample],
        class_map: ClassMap,
        transform: PairTransform | None = None,
        scale: float = 1.0,
        seed: int = 0,
        annotator: str = "random",
        cache: bool = True,
    ) -> None:
        if not samples:
            raise ValueError("MultiAnnotatorDataset needs at least one sample")
        if annotator not in ("random", "all"):
            raise ValueError(f"annotator must be 'random' or 'all', got {annotator!r}")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        for sample in samples:
            if not sample.masks:
                raise DataError(sample.image, "sample has no annotator's mask")
        self.samples = list(samples)
        self.annotators: list[str] = sorted({a for s in samples for a in s.masks}, key=_natural_key)
        self.class_map = class_map
        self.transform = transform
        self.scale = float(scale)
        self.seed = seed
        self.annotator = annotator
        self.cache = cache
        self._mask_dtype = _compact_dtype(class_map)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``uint8`` image and ``(H, W, M)`` class-index masks, scaled, not transformed."""
        if index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        image = read_image(sample.image)
        height, width = image.shape[:2]
        stack = np.full((height, width, len(self.annotators)), self.class_map.ignore_index, self._mask_dtype)
        for slot, name in enumerate(self.annotators):
            path = sample.masks.get(name)
            if path is None:
                continue
            raw = read_label_image(path)
            if raw.shape[:2] != (height, width):
                mh, mw = raw.shape[:2]
                raise DataError(path, f"mask is {mw}x{mh} but image {sample.image.name} is {width}x{height}")
            stack[..., slot] = self.class_map.encode(raw, path)
        image, scaled = resize_pair(image, stack, self.scale)
        assert scaled is not None
        if self.cache:
            self._cache[index] = (image, scaled)
        return image, scaled

    def preload(self) -> None:
        """Decode everything now (e.g. before DataLoader workers fork, so they share it)."""
        for index in range(len(self)):
            self.load(index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = _split_key(key, self.seed)
        if rng is None:
            rng = draw_generator(self.seed, index)
        image, masks = self.load(index)
        # Drawn before the transform runs, so the choice does not depend on which transform it is.
        present = [slot for slot, name in enumerate(self.annotators) if name in self.samples[index].masks]
        drawn = present[int(rng.integers(len(present)))]
        if self.transform is not None:
            image, moved = self.transform(image, masks, rng)
            if moved is None:
                raise RuntimeError("transform dropped the masks of a labelled sample")
            masks = moved
        stacked = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)).astype(np.int64))
        item: dict[str, Any] = {
            "image": to_tensor(np.ascontiguousarray(image)),
            "masks": stacked,
            "name": self.samples[index].stem,
        }
        if self.annotator == "random":
            item["mask"] = stacked[drawn].clone()
            item["annotator"] = drawn
        return item
