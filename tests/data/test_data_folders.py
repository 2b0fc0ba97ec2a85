"""Finding and pairing files, checking samples, reading group tables."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pathseg.data.classes import ClassMap
from pathseg.data.folders import (
    Sample,
    assign_groups,
    check_samples,
    discover_dataset,
    find_images,
    pair_images_and_masks,
    read_groups_csv,
)
from pathseg.data.io import write_image, write_mask
from pathseg.errors import DataError
from tests.data.helpers import SHARED_DATA, needs_shared_data, rgb, write_pair

BINARY = ClassMap.binary(foreground_values=(255,), names=("background", "gland"))


def one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ find_images


def test_find_images_sorted_case_insensitive(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.webp", "c.TIF", "notes.txt", ".hidden.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in find_images(tmp_path)] == ["a.webp", "b.PNG", "c.TIF"]


def test_find_images_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        find_images(tmp_path / "missing")
    assert one_line(exc) == f"{tmp_path / 'missing'}: folder does not exist"


def test_find_images_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images")
    with pytest.raises(DataError) as exc:
        find_images(tmp_path)
    message = one_line(exc)
    assert message.startswith(f"{tmp_path}: no images found (looked for .png, .jpg")
    assert ".webp" in message


# ------------------------------------------------------------------ pairing


def test_pairing_by_stem(tmp_path: Path) -> None:
    write_pair(tmp_path, "b", image_ext=".webp")
    write_pair(tmp_path, "a")
    samples = pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert [(s.stem, s.image.name, s.mask.name if s.mask else None) for s in samples] == [
        ("a", "a.png", "a.png"),
        ("b", "b.webp", "b.png"),
    ]


def test_pairing_with_mask_suffix(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "train_1.bmp", rgb(4, 4))
    write_mask(tmp_path / "ann" / "train_1_anno.png", np.zeros((4, 4), np.uint8))
    (sample,) = pair_images_and_masks(tmp_path / "img", tmp_path / "ann", mask_suffix="_anno")
    assert sample.stem == "train_1" and sample.mask is not None and sample.mask.name == "train_1_anno.png"


def test_image_without_mask(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    lonely = tmp_path / "images" / "b.png"
    write_image(lonely, rgb(4, 4))
    with pytest.raises(DataError) as exc:
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks", mask_suffix="_anno")
    # with the suffix neither image has a mask; the first is reported, with a count
    assert "a.png: no mask found in" in one_line(exc)
    assert "(expected a_anno.*); 1 more images have no mask" in str(exc.value)
    with pytest.raises(DataError) as exc:
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert one_line(exc) == f"{lonely}: no mask found in {tmp_path / 'masks'} (expected b.*)"


def test_mask_without_image(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    orphan = tmp_path / "masks" / "z.png"
    write_mask(orphan, np.zeros((3, 3), np.uint8))
    with pytest.raises(DataError) as exc:
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert one_line(exc) == f"{orphan}: mask has no matching image in {tmp_path / 'images'}"


def test_two_files_with_one_stem(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    write_image(tmp_path / "images" / "a.webp", rgb(4, 4))
    with pytest.raises(DataError) as exc:
        pair_images_and_masks(tmp_path / "images", tmp_path / "masks")
    assert "two files share the stem 'a'" in one_line(exc)
    assert "a.png" in str(exc.value) and "a.webp" in str(exc.value)


def test_empty_masks_folder(tmp_path: Path) -> None:
    write_pair(tmp_path, "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as exc:
        pair_images_and_masks(tmp_path / "images", tmp_path / "empty")
    assert one_line(exc).startswith(f"{tmp_path / 'empty'}: no masks found (looked for")


# ------------------------------------------------------------------ discover


def test_discover_split_folder_or_images_folder(tmp_path: Path) -> None:
    split = tmp_path / "train"
    write_pair(split, "x1")
    write_pair(split, "x2")
    assert [s.stem for s in discover_dataset(split)] == ["x1", "x2"]
    assert [s.stem for s in discover_dataset(split / "images")] == ["x1", "x2"]


def test_discover_dataset_root_points_to_splits(tmp_path: Path) -> None:
    write_pair(tmp_path / "train", "x")
    write_pair(tmp_path / "testA", "y")
    with pytest.raises(DataError) as exc:
        discover_dataset(tmp_path)
    assert "found split folders testA, train" in one_line(exc)
    with pytest.raises(DataError, match="folder does not exist"):
        discover_dataset(tmp_path / "nope")


def test_discover_without_masks(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "u.png", rgb(4, 4))
    with pytest.raises(DataError, match="no masks/ folder"):
        discover_dataset(tmp_path)
    (sample,) = discover_dataset(tmp_path, require_masks=False)
    assert sample.mask is None


# ------------------------------------------------------------------ check_samples


def test_check_samples_passes(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", image_ext=".webp")
    write_pair(tmp_path, "b", image_ext=".tif")
    samples = discover_dataset(tmp_path)
    check_samples(samples, BINARY)
    check_samples(samples, BINARY, full=False)


def test_size_mismatch(tmp_path: Path) -> None:
    _, mask = write_pair(tmp_path, "a", size=(10, 30), mask_size=(10, 20))
    with pytest.raises(DataError) as exc:
        check_samples(discover_dataset(tmp_path), BINARY, full=False)
    assert one_line(exc) == f"{mask}: mask is 20x10 but image a.png is 30x10"


def test_unknown_mask_values(tmp_path: Path) -> None:
    _, mask = write_pair(tmp_path, "a", mask_values=(0, 7, 255))
    with pytest.raises(DataError) as exc:
        check_samples(discover_dataset(tmp_path), BINARY)
    assert one_line(exc) == (
        f"{mask}: mask has values [7] that are not in the class map (known: background=0, gland=255)"
    )


def test_truncated_image_found_only_by_full_check(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", size=(64, 64))
    image, _ = write_pair(tmp_path, "b", size=(64, 64))
    image.write_bytes(image.read_bytes()[:-200])
    samples = discover_dataset(tmp_path)
    check_samples(samples, BINARY, full=False)
    with pytest.raises(DataError) as exc:
        check_samples(samples, BINARY)
    assert one_line(exc).startswith(f"{image}: cannot read image (truncated or corrupt")


def test_several_problems_are_counted(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", mask_values=(0, 9))
    write_pair(tmp_path, "b", mask_values=(0, 9))
    with pytest.raises(DataError, match=r"a.png: .*\(1 more samples have problems\)$"):
        check_samples(discover_dataset(tmp_path), BINARY)


# ------------------------------------------------------------------ groups CSV


def test_groups_csv_glas_header(tmp_path: Path) -> None:
    path = tmp_path / "grade.csv"
    path.write_text("name,patient ID,grade (GlaS)\ntrain_1,3,benign\ntestA_2.bmp, 5 ,malignant\n")
    assert read_groups_csv(path) == {"train_1": "3", "testA_2": "5"}


def test_groups_csv_semicolon_and_explicit_columns(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("\ufeffslide;file;case\ns1;a.png;c1\ns2;b.png;c2\n", encoding="utf-8")
    assert read_groups_csv(path, id_column="file", group_column="slide") == {"a": "s1", "b": "s2"}
    assert read_groups_csv(path) == {"a": "c1", "b": "c2"}


@pytest.mark.parametrize(
    ("text", "kwargs", "fragment"),
    [
        ("name,grade\nx,benign\n", {}, "cannot tell which column holds the group (columns: 'name', 'grade')"),
        ("name,patient\nx,1\n", {"group_column": "subject"}, "no column 'subject' for the group"),
        ("foo,bar\nx,1\n", {}, "cannot tell which column holds the image names (columns: 'foo', 'bar')"),
        ("", {}, "CSV file is empty"),
        ("name,patient\n", {}, "no rows"),
        ("name,patient\nx,1,extra\n", {}, "line 2 has 3 fields"),
        ("name,patient\nx,1\nx,2\n", {}, "'x' is given groups '1' and '2'"),
        ("name,patient\nx,\n", {}, "line 2: empty"),
        ("just one column\nx\n", {}, "needs an image column and a group column"),
    ],
)
def test_bad_groups_csv(tmp_path: Path, text: str, kwargs: dict[str, str], fragment: str) -> None:
    path = tmp_path / "groups.csv"
    path.write_text(text)
    with pytest.raises(DataError) as exc:
        read_groups_csv(path, **kwargs)
    message = one_line(exc)
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_missing_groups_csv(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file does not exist"):
        read_groups_csv(tmp_path / "nope.csv")


def test_assign_groups(tmp_path: Path) -> None:
    samples = [Sample("a", tmp_path / "a.png"), Sample("b", tmp_path / "b.png")]
    assert [s.group for s in assign_groups(samples, {"a": "1", "b": "2"})] == ["1", "2"]
    with pytest.raises(DataError, match=r"b\.png: image 'b' has no group in grade\.csv"):
        assign_groups(samples, {"a": "1"}, source="grade.csv")


# ------------------------------------------------------------------ real data


@pytest.mark.shared_data
@needs_shared_data
def test_glas_train_layout_and_check() -> None:
    samples = discover_dataset(SHARED_DATA / "glas" / "train")
    assert len(samples) == 85
    assert all(s.image.suffix == ".webp" and s.mask is not None and s.mask.suffix == ".png" for s in samples)
    start = time.perf_counter()
    check_samples(samples, ClassMap.binary(names=("background", "gland")), full=False)
    assert time.perf_counter() - start < 10
    groups = read_groups_csv(SHARED_DATA / "glas" / "grade.csv")
    assert len(groups) >= 145 and groups["testA_1"] == "4"
    assert {s.stem for s in samples} <= set(groups)


@pytest.mark.shared_data
@needs_shared_data
def test_wsss4luad_palette_masks() -> None:
    samples = discover_dataset(SHARED_DATA / "wsss4luad" / "val")
    cm = ClassMap.from_config(["tumour", "stroma", "normal", "background"])
    check_samples(samples[:8], cm, full=False)
    with pytest.raises(DataError, match="not in the class map"):
        check_samples(samples[:8], ClassMap.binary())
