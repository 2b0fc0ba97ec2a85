"""Finding image/mask pairs on disk and checking them before training starts.

The expected layout is one folder per split holding ``images/`` and ``masks/`` with matching
file stems (``train_1.webp`` <-> ``train_1.png``), as in the shared GlaS copy. Problems are
reported as one-line :class:`~pathseg.errors.DataError` messages naming the offending file, so
a dataset can be fixed before hours of training are spent on it.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pathseg.data.classes import ClassMap
from pathseg.data.io import IMAGE_EXTENSIONS, LossyMaskWarning, image_size, read_image, read_label_image
from pathseg.errors import DataError

__all__ = [
    "Sample",
    "assign_groups",
    "check_samples",
    "discover_dataset",
    "find_images",
    "pair_images_and_masks",
    "read_groups_csv",
]

_IMAGE_DIR_NAMES = ("images", "image", "imgs", "img")
_MASK_DIR_NAMES = ("masks", "mask", "labels", "annotations", "gt")
_ID_COLUMNS = ("name", "image", "image_name", "image name", "filename", "file", "stem", "image_id", "id")
_GROUP_COLUMNS = ("patient", "patient id", "patient_id", "group", "case", "subject", "slide")


@dataclass
class Sample:
    """One image, its mask (``None`` for unlabelled data) and the group (patient) it belongs to."""

    stem: str
    image: Path
    mask: Path | None = None
    group: str | None = None


def _looked_for() -> str:
    return ", ".join(IMAGE_EXTENSIONS)


def _list_files(folder: str | Path, what: str) -> list[Path]:
    folder = Path(folder)
    if not folder.exists():
        raise DataError(folder, "folder does not exist")
    if not folder.is_dir():
        raise DataError(folder, "not a folder")
    # Hidden files are skipped: macOS "._x.png" resource forks look like images but are not.
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: p.name,
    )
    files = [p for p in files if not p.name.startswith(".")]
    if not files:
        raise DataError(folder, f"no {what} found (looked for {_looked_for()})")
    return files


def find_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by file name.

    Suffixes are matched case-insensitively against :data:`IMAGE_EXTENSIONS`.

    Raises:
        DataError: the folder is missing, not a folder, or holds no image files (given a split
            folder, e.g. ``data/test`` instead of ``data/test/images``, the message says so).
    """
    folder = Path(folder)
    try:
        return _list_files(folder, "images")
    except DataError as err:
        inner = _find_child(folder, _IMAGE_DIR_NAMES) if err.path == folder and folder.is_dir() else None
        if inner is None:
            raise
        raise DataError(
            folder, f"{err.problem}; the images seem to be in {inner}: give that folder"
        ) from None


def _by_stem(files: list[Path], folder: Path) -> dict[str, Path]:
    table: dict[str, Path] = {}
    for path in files:
        if path.stem in table:
            raise DataError(
                path,
                f"two files share the stem {path.stem!r} in {folder}: {table[path.stem].name}, {path.name}",
            )
        table[path.stem] = path
    return table


def pair_images_and_masks(
    images_dir: str | Path, masks_dir: str | Path, mask_suffix: str = ""
) -> list[Sample]:
    """Match every image with the mask whose stem is the image stem plus ``mask_suffix``.

    With ``mask_suffix="_anno"``, ``train_1.bmp`` pairs with ``train_1_anno.bmp`` (original GlaS
    naming). The result follows the sorted image order.

    Raises:
        DataError: an image without mask, a mask without image, two files with one stem, or a
            missing/empty folder.
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    images = _by_stem(_list_files(images_dir, "images"), images_dir)
    masks = _by_stem(_list_files(masks_dir, "masks"), masks_dir)

    samples: list[Sample] = []
    missing: list[Path] = []
    for stem, image in images.items():
        mask = masks.get(stem + mask_suffix)
        if mask is None:
            missing.append(image)
        else:
            samples.append(Sample(stem=stem, image=image, mask=mask))
    if missing:
        more = f"; {len(missing) - 1} more images have no mask" if len(missing) > 1 else ""
        raise DataError(
            missing[0], f"no mask found in {masks_dir} (expected {missing[0].stem}{mask_suffix}.*){more}"
        )
    used = {s.mask for s in samples}
    orphans = [m for m in masks.values() if m not in used]
    if orphans:
        more = f"; {len(orphans) - 1} more masks have no image" if len(orphans) > 1 else ""
        hint = f" (mask names must be <image stem>{mask_suffix})" if mask_suffix else ""
        raise DataError(orphans[0], f"mask has no matching image in {images_dir}{hint}{more}")
    return samples


def _find_child(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        candidate = root / name
        if candidate.is_dir():
            return candidate
    return None


def discover_dataset(root: str | Path, mask_suffix: str = "", *, require_masks: bool = True) -> list[Sample]:
    """Samples of one split folder.

    ``root`` may be the split folder holding ``images/`` and ``masks/`` (e.g. ``glas/train``) or
    the ``images/`` folder itself, with ``masks/`` beside it. With ``require_masks=False`` a
    split without a masks folder gives samples whose ``mask`` is ``None`` (unlabelled data).

    Raises:
        DataError: no such folders, or pairing fails (see :func:`pair_images_and_masks`).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(root, "folder does not exist")
    if not root.is_dir():
        raise DataError(root, "not a folder")
    images_dir = _find_child(root, _IMAGE_DIR_NAMES)
    masks_dir = _find_child(root, _MASK_DIR_NAMES)
    if images_dir is None and root.name.lower() in _IMAGE_DIR_NAMES:
        images_dir, masks_dir = root, _find_child(root.parent, _MASK_DIR_NAMES)
    if images_dir is None:
        splits = sorted(
            p.name for p in root.iterdir() if p.is_dir() and _find_child(p, _IMAGE_DIR_NAMES) is not None
        )
        hint = f"; found split folders {', '.join(splits)}: point to one of them" if splits else ""
        raise DataError(root, f"no images/ folder here (expected images/ and masks/){hint}")
    if masks_dir is None:
        if require_masks:
            raise DataError(root, "no masks/ folder beside images/ (expected images/ and masks/)")
        return [Sample(stem=p.stem, image=p) for p in _by_stem(find_images(images_dir), images_dir).values()]
    return pair_images_and_masks(images_dir, masks_dir, mask_suffix)


def _wxh(height: int, width: int) -> str:
    return f"{width}x{height}"


def _check_one(sample: Sample, class_map: ClassMap, full: bool) -> None:
    if full:
        height, width = read_image(sample.image).shape[:2]
    else:
        height, width = image_size(sample.image)
    if sample.mask is None:
        return
    raw = read_label_image(sample.mask)
    mh, mw = raw.shape[:2]
    if (mh, mw) != (height, width):
        raise DataError(
            sample.mask, f"mask is {_wxh(mh, mw)} but image {sample.image.name} is {_wxh(height, width)}"
        )
    try:
        class_map.encode(raw, sample.mask)
    except DataError as err:
        if sample.mask.suffix.lower() not in (".jpg", ".jpeg"):
            raise
        raise DataError(
            err.path, f"{err.problem}; JPEG compression changes label values at edges: store masks as PNG"
        ) from None


def check_samples(samples: Sequence[Sample], class_map: ClassMap, *, full: bool = True) -> None:
    """Open every image and mask and check they can be used together.

    Checks that files decode, that each mask has its image's size (reported as width x
    height) and that every mask value is in ``class_map``. With ``full=False`` images are only
    opened far enough to read their size (masks are still decoded: their values must be
    checked and they are cheap); truncated image data then go unnoticed until training.

    All samples are checked; the first problem is raised, with the number of others. Warnings
    met on the way (a JPEG mask's :class:`~pathseg.data.io.LossyMaskWarning`) are passed on when
    every sample is fine, and dropped when the check fails: the error is then the one message.

    Raises:
        DataError: naming the first bad file.
    """
    errors: list[DataError] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for sample in samples:
            try:
                _check_one(sample, class_map, full)
            except DataError as exc:
                errors.append(exc)
    for warning in caught:
        if not (errors and issubclass(warning.category, LossyMaskWarning)):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    DataError.raise_first(errors)


def _strip_image_suffix(name: str) -> str:
    path = Path(name)
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else name


def _pick_column(
    header: list[str], wanted: str | None, candidates: Sequence[str], what: str, path: Path
) -> str:
    available = ", ".join(repr(h) for h in header)
    if wanted is not None:
        if wanted not in header:
            raise DataError(path, f"no column {wanted!r} for the {what} (columns: {available})")
        return wanted
    lowered = {h.strip().lower(): h for h in header}
    for cand in candidates:
        if cand in lowered:
            return lowered[cand]
    if what == "group":
        # Headers like "Patient ID (anonymised)" still say which column it is.
        for h in header:
            if "patient" in h.lower():
                return h
    raise DataError(
        path, f"cannot tell which column holds the {what} (columns: {available}); name it explicitly"
    )


def read_groups_csv(
    path: str | Path, id_column: str | None = None, group_column: str | None = None
) -> dict[str, str]:
    """Read a table of image -> group (patient) as ``{stem: group}``.

    Without explicit column names the image column is the first of ``name``, ``image``,
    ``filename``, ``id``, ... and the group column is the first of ``patient``, ``patient ID``,
    ``group``, ``case``, ... (case-insensitive); GlaS ``grade.csv`` works as is (``name`` and
    ``patient ID``). Image names may carry an image suffix, which is removed. Comma,
    semicolon and tab delimiters are detected.

    Raises:
        DataError: missing/empty/malformed file, missing columns (the message lists the
            columns that exist), empty cells, or one image given two groups.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read CSV ({exc.__class__.__name__})") from exc
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise DataError(path, "CSV file is empty")
    try:
        dialect = csv.Sniffer().sniff(lines[0], delimiters=",;\t")
        delimiter = dialect.delimiter
    except csv.Error:
        delimiter = ","
    try:
        rows = list(csv.reader(lines, delimiter=delimiter))
    except csv.Error as exc:
        raise DataError(path, f"malformed CSV ({exc})") from exc
    header = [h.strip() for h in rows[0]]
    if len(header) < 2:
        raise DataError(path, f"CSV needs an image column and a group column, found columns: {header}")
    id_col = _pick_column(header, id_column, _ID_COLUMNS, "image names", path)
    group_col = _pick_column(header, group_column, _GROUP_COLUMNS, "group", path)
    if id_col == group_col:
        raise DataError(path, f"image and group columns are the same ({id_col!r})")
    i_id, i_group = header.index(id_col), header.index(group_col)
    groups: dict[str, str] = {}
    for line_no, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(path, f"line {line_no} has {len(row)} fields but the header has {len(header)}")
        stem = _strip_image_suffix(row[i_id].strip())
        group = row[i_group].strip()
        if not stem or not group:
            raise DataError(path, f"line {line_no}: empty {id_col!r} or {group_col!r}")
        if stem in groups and groups[stem] != group:
            raise DataError(path, f"line {line_no}: {stem!r} is given groups {groups[stem]!r} and {group!r}")
        groups[stem] = group
    if not groups:
        raise DataError(path, "CSV has a header but no rows")
    return groups


def assign_groups(
    samples: Sequence[Sample], groups: dict[str, str], source: str | Path = "groups"
) -> list[Sample]:
    """Copies of ``samples`` with ``group`` set from ``groups`` (as read by :func:`read_groups_csv`).

    Raises:
        DataError: naming the image that has no entry (``source`` is mentioned as the table).
    """
    out: list[Sample] = []
    for sample in samples:
        if sample.stem not in groups:
            raise DataError(sample.image, f"image {sample.stem!r} has no group in {source}")
        out.append(replace(sample, group=groups[sample.stem]))
    return out
