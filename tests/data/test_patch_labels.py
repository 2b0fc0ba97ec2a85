"""Patch-level labels: name styles, CSVs, tiling image + mask pairs into a labelled patch set."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from pathseg.data.classes import ClassMap
from pathseg.data.folders import Sample
from pathseg.data.io import read_image, read_label_image, write_image, write_mask
from pathseg.data.patch_labels import (
    PatchLabelDataset,
    PatchSample,
    StackedMaskDataset,
    discover_patch_labels,
    format_label_name,
    label_palette,
    labels_from_name,
    make_patch_label_set,
    parse_label_vector,
    patch_origins,
    read_labels_csv,
)
from pathseg.data.transforms import AugmentConfig, build_train_transform
from pathseg.errors import ConfigError, DataError
from tests.data.helpers import rgb

# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("name", "count", "expected"),
    [
        ("436219-9328-56427-[1, 0, 1].png", 3, (1, 0, 1)),  # WSSS4LUAD
        ("1031280-2300-27920-[1 0 0 1].png", 4, (1, 0, 0, 1)),  # LUAD-HistoSeg
        ("TCGA-A1-A0SK-DX1_xmin45749+0[1101].png", 4, (1, 1, 0, 1)),  # BCSS-WSSS
        ("a-[0,1].png", 2, (0, 1)),  # commas without spaces
        ("one+0[1].png", 1, (1,)),  # a single class
    ],
)
def test_labels_from_name_in_every_style(name: str, count: int, expected: tuple[int, ...]) -> None:
    assert labels_from_name(Path(name), count) == expected


@pytest.mark.parametrize("style", ["comma", "space", "compact"])
def test_format_label_name_round_trips(style: str) -> None:
    for labels in [(1, 0, 1), (0, 0, 1), (1, 1, 1)]:
        stem = format_label_name("img_y8_x0", labels, style)
        assert labels_from_name(Path(f"{stem}.png"), 3) == labels
    assert format_label_name("p", (1, 0, 1), "comma") == "p-[1, 0, 1]"
    assert format_label_name("p", (1, 0, 1), "space") == "p-[1 0 1]"
    assert format_label_name("p", (1, 0, 1), "compact") == "p+0[101]"
    with pytest.raises(ConfigError, match="style"):
        format_label_name("p", (1,), "json")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("plain.png", "carries no patch label"),
        ("x-[1, 0].png", "has 2 values but 3 classes"),
        ("x-[1 0 1 1].png", "has 4 values but 3 classes"),
        ("x+0[10].png", "has 2 values but 3 classes"),
        ("x-[1, 2, 0].png", "only 0 and 1"),
        ("x+0[120].png", "only 0 and 1"),
        ("x-[].png", "empty label vector"),
        ("x-[ ].png", "empty label vector"),
    ],
)
def test_bad_names_are_data_errors_naming_the_file(name: str, problem: str) -> None:
    with pytest.raises(DataError, match=problem) as caught:
        labels_from_name(Path("/patches") / name, 3)
    assert caught.value.path == Path("/patches") / name
    assert name in str(caught.value)


def test_parse_label_vector_accepts_mixed_separators() -> None:
    assert parse_label_vector(" 1,0  1 ", 3, "x") == (1, 0, 1)
    assert parse_label_vector("0, 1,1", 3, "x") == (0, 1, 1)
    with pytest.raises(DataError, match="only 0 and 1"):
        parse_label_vector("1, 01, 1", 3, "x")


def write_patches(folder: Path, names: list[str]) -> None:
    for i, name in enumerate(names):
        write_image(folder / name, rgb(8, 8, seed=i))


def test_discover_patch_labels_from_names_and_images_subfolder(tmp_path: Path) -> None:
    write_patches(tmp_path / "images", ["b-[0, 1].png", "a+0[11].png"])
    samples = discover_patch_labels(tmp_path, ["x", "y"])
    assert [s.image.name for s in samples] == ["a+0[11].png", "b-[0, 1].png"]  # sorted by name
    assert [s.labels for s in samples] == [(1, 1), (0, 1)]
    with pytest.raises(DataError, match=r"has 2 values but 3 classes") as caught:
        discover_patch_labels(tmp_path, ["x", "y", "z"])
    assert "a+0[11].png" in str(caught.value)


def test_discover_patch_labels_on_an_empty_folder_is_clear(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found") as caught:
        discover_patch_labels(tmp_path / "empty", ["x", "y"])
    assert caught.value.path == tmp_path / "empty"
    with pytest.raises(DataError, match="does not exist"):
        discover_patch_labels(tmp_path / "missing", ["x", "y"])


# ----------------------------------------------------------------------------- CSV


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def test_labels_csv_with_per_class_columns(tmp_path: Path) -> None:
    write_patches(tmp_path / "images", ["p1.png", "p2.png", "p3.png"])
    table = write_csv(
        tmp_path / "labels.csv",
        # columns in another order than the classes, names with and without extension
        [["Image", "Stroma", "Tumour", "extra"], ["p2", "1", "0", "x"], ["p1.png", "0", "1", "y"]],
    )
    samples = discover_patch_labels(tmp_path, ["tumour", "stroma"], labels_csv=table)
    assert [(s.image.name, s.labels) for s in samples] == [("p2.png", (0, 1)), ("p1.png", (1, 0))]


def test_labels_csv_with_a_labels_column(tmp_path: Path) -> None:
    write_patches(tmp_path, ["p1.png", "p2.png", "p3.png"])
    table = write_csv(
        tmp_path.parent / "vectors.csv",
        [["name", "labels"], ["p1.png", "[1, 0, 1]"], ["p2", "0 1 1"], ["p3.png", "100"]],
    )
    samples = read_labels_csv(table, tmp_path, ["a", "b", "c"])
    assert [s.labels for s in samples] == [(1, 0, 1), (0, 1, 1), (1, 0, 0)]
    assert [s.image for s in samples] == [tmp_path / "p1.png", tmp_path / "p2.png", tmp_path / "p3.png"]


def test_labels_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    write_patches(tmp_path / "images", ["p1.png"])
    images = tmp_path / "images"
    missing_image = write_csv(
        tmp_path / "a.csv", [["image", "a", "b"], ["p1", "1", "0"], ["nope.png", "0", "1"]]
    )
    with pytest.raises(DataError, match=r"image 'nope.png' not found") as caught:
        read_labels_csv(missing_image, images, ["a", "b"])
    assert str(caught.value).startswith(f"{missing_image}, line 3")

    missing_column = write_csv(tmp_path / "b.csv", [["image", "a"], ["p1", "1"]])
    with pytest.raises(DataError, match=r"no column for classes \['b'\] and no 'labels' column"):
        read_labels_csv(missing_column, images, ["a", "b"])

    no_name = write_csv(tmp_path / "c.csv", [["picture", "a", "b"], ["p1", "1", "0"]])
    with pytest.raises(DataError, match="no image-name column"):
        read_labels_csv(no_name, images, ["a", "b"])

    bad_value = write_csv(tmp_path / "d.csv", [["image", "labels"], ["p1", "[1, 2]"]])
    with pytest.raises(DataError, match="only 0 and 1") as caught:
        read_labels_csv(bad_value, images, ["a", "b"])
    assert "line 2" in str(caught.value)

    empty = write_csv(tmp_path / "e.csv", [["image", "a", "b"]])
    with pytest.raises(DataError, match="no rows"):
        read_labels_csv(empty, images, ["a", "b"])

    with pytest.raises(DataError, match="does not exist"):
        read_labels_csv(tmp_path / "absent.csv", images, ["a", "b"])


# ----------------------------------------------------------------------------- tiling


def test_patch_origins_cover_the_edges() -> None:
    # 20 x 30, patch 8, stride 8: the last row/column is shifted back to end at the border.
    assert patch_origins(20, 30, 8, 8) == [(y, x) for y in (0, 8, 12) for x in (0, 8, 16, 22)]
    assert patch_origins(16, 16, 8, 8) == [(0, 0), (0, 8), (8, 0), (8, 8)]  # exact fit: no extra
    assert patch_origins(20, 8, 8, 16) == [(0, 0), (12, 0)]  # stride above the patch size
    assert patch_origins(20, 20, 8, 4)[:4] == [(0, 0), (0, 4), (0, 8), (0, 12)]
    assert patch_origins(8, 8, 8, 8) == [(0, 0)]
    assert patch_origins(7, 30, 8, 8) == []
    for y, x in patch_origins(37, 23, 10, 7):
        assert 0 <= y <= 27 and 0 <= x <= 13


CLASS_MAP = ClassMap.from_config({"a": 0, "b": 1}, ignore_values=[9])


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory) -> tuple[Sample, np.ndarray, np.ndarray]:
    """A 16 x 24 image with six 8 px patches whose class content is known exactly.

    (0,0): all a                 -> [1, 0]
    (0,8): 60 a + 4 b (6.25 %)   -> [1, 1] at min_fraction 0.05, [1, 0] at 0.1
    (0,16): 62 a + 2 b (3.1 %)   -> [1, 0]
    (8,0): 40 ignored, 24 b      -> skipped (under half the patch labelled)
    (8,8): 16 ignored, 45 b, 3 a -> a is 3/48 = 6.25 % of the labelled pixels (3/64 < 5 %): [1, 1]
    (8,16): all b                -> [0, 1]
    """
    root = tmp_path_factory.mktemp("hand")
    mask = np.zeros((16, 24), np.uint8)
    mask[0, 8:12] = 1
    mask[0, 16:18] = 1
    mask[8:16, 0:8] = 1
    mask[8:13, 0:8] = 9  # 40 ignored pixels
    mask[8:16, 8:16] = 1
    mask[8:10, 8:16] = 9  # 16 ignored
    mask[15, 8:11] = 0  # 3 a
    mask[8:16, 16:24] = 1
    image = rgb(16, 24, seed=3)
    write_image(root / "images" / "tile.png", image)
    write_mask(root / "masks" / "tile.png", mask)
    return Sample("tile", root / "images" / "tile.png", root / "masks" / "tile.png"), image, mask


def test_make_patch_label_set_labels_each_patch_by_its_classes(hand_made, tmp_path: Path) -> None:
    sample, image, mask = hand_made
    counts = make_patch_label_set([sample], CLASS_MAP, tmp_path, patch_size=8, min_fraction=0.05)
    expected = {
        (0, 0): (1, 0),
        (0, 8): (1, 1),
        (0, 16): (1, 0),
        (8, 8): (1, 1),
        (8, 16): (0, 1),
    }
    assert counts == {
        "images": 1,
        "patches": 5,
        "skipped": 1,
        "smaller_than_patch": [],
        "patches_per_class": {"a": 4, "b": 3},
    }
    found = discover_patch_labels(tmp_path, ["a", "b"])
    assert len(found) == 5
    for patch in found:
        y, x = (int(v) for v in patch.stem.split("_y")[1].split("-[")[0].split("_x"))
        assert patch.labels == expected[(y, x)], (y, x)
        assert patch.image.name == f"{format_label_name(f'tile_y{y}_x{x}', expected[(y, x)])}.png"
        np.testing.assert_array_equal(read_image(patch.image), image[y : y + 8, x : x + 8])
        truth = np.where(mask == 9, 255, mask)[y : y + 8, x : x + 8]
        np.testing.assert_array_equal(read_label_image(tmp_path / "masks" / patch.image.name), truth)
    # labels.csv (per-class columns) says the same as the names
    from_csv = read_labels_csv(tmp_path / "labels.csv", tmp_path / "images", ["a", "b"])
    assert sorted((s.image.name, s.labels) for s in from_csv) == sorted(
        (s.image.name, s.labels) for s in found
    )
    with open(tmp_path / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(int(r["y"]), int(r["x"])) for r in rows} == set(expected)
    assert {r["source"] for r in rows} == {"tile"}


def test_make_patch_label_set_min_fraction_and_style(hand_made, tmp_path: Path) -> None:
    sample, _, _ = hand_made
    counts = make_patch_label_set(
        [sample], CLASS_MAP, tmp_path, patch_size=8, min_fraction=0.1, style="compact"
    )
    found = {s.image.name: s.labels for s in discover_patch_labels(tmp_path, ["a", "b"])}
    assert found == {
        "tile_y0_x0+0[10].png": (1, 0),
        "tile_y0_x8+0[10].png": (1, 0),  # 6.25 % of b is no longer enough
        "tile_y0_x16+0[10].png": (1, 0),
        "tile_y8_x8+0[01].png": (0, 1),  # nor 6.25 % of a
        "tile_y8_x16+0[01].png": (0, 1),
    }
    assert counts["patches_per_class"] == {"a": 3, "b": 2}


def test_make_patch_label_set_min_labelled_and_small_images(hand_made, tmp_path: Path) -> None:
    sample, _, _ = hand_made
    # With min_labelled 0.3 the (8,0) patch (24/64 = 37.5 % labelled) is kept, as pure b.
    counts = make_patch_label_set([sample], CLASS_MAP, tmp_path / "low", patch_size=8, min_labelled=0.3)
    assert counts["patches"] == 6 and counts["skipped"] == 0
    assert (tmp_path / "low" / "images" / "tile_y8_x0-[0, 1].png").exists()
    # A patch larger than the image: nothing written, the image reported.
    counts = make_patch_label_set([sample], CLASS_MAP, tmp_path / "big", patch_size=32)
    assert counts["patches"] == 0 and counts["smaller_than_patch"] == ["tile"]
    with pytest.raises(ConfigError, match="patch_size"):
        make_patch_label_set([sample], CLASS_MAP, tmp_path / "bad", patch_size=4)
    with pytest.raises(ConfigError, match="style"):
        make_patch_label_set([sample], CLASS_MAP, tmp_path / "bad", patch_size=8, style="json")
    assert not (tmp_path / "bad").exists()


def test_make_patch_label_set_rejects_a_mask_of_another_size(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "t.png", rgb(16, 16))
    write_mask(tmp_path / "masks" / "t.png", np.zeros((16, 8), np.uint8))
    sample = Sample("t", tmp_path / "images" / "t.png", tmp_path / "masks" / "t.png")
    with pytest.raises(DataError, match=r"mask is 8x16 but image t\.png is 16x16"):
        make_patch_label_set([sample], CLASS_MAP, tmp_path / "out", patch_size=8)


def test_label_palette_has_the_class_colours_and_white_ignore() -> None:
    palette = label_palette(CLASS_MAP)
    assert len(palette) == 256
    assert palette[:2] == list(CLASS_MAP.palette())
    assert palette[255] == (255, 255, 255)


# ----------------------------------------------------------------------------- datasets


def test_patch_label_dataset_returns_labels(tmp_path: Path) -> None:
    write_patches(tmp_path, ["p-[1, 0, 1].png", "q-[0, 1, 0].png"])
    dataset = PatchLabelDataset(discover_patch_labels(tmp_path, ["a", "b", "c"]))
    item = dataset[(1, 5)]
    assert item["name"] == "q-[0, 1, 0]" and item["image"].shape == (3, 8, 8)
    torch.testing.assert_close(item["labels"], torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(dataset[0]["labels"], torch.tensor([1.0, 0.0, 1.0]))


def test_stacked_masks_move_with_the_image(tmp_path: Path) -> None:
    """Mask planes are functions of the pixel colours, so alignment survives any flip/rotation."""
    image = rgb(8, 12, seed=11)  # not square: a rotation changes the shape too
    planes = [image[..., 0] // 64, image[..., 1] // 32]
    write_image(tmp_path / "im.png", image)
    paths = []
    for i, plane in enumerate(planes):
        write_mask(tmp_path / f"m{i}.png", plane.astype(np.uint8))
        paths.append(tmp_path / f"m{i}.png")
    transform = build_train_transform(AugmentConfig(crop_size=None, flips=True, rotate90=True))
    dataset = StackedMaskDataset([tmp_path / "im.png"], [paths], transform, seed=0)
    changed = 0
    for seed in range(12):
        item = dataset[(0, seed)]
        pixels = torch.round((item["image"] + 1) * 127.5).to(torch.int64)  # back to 0..255
        assert item["masks"].dtype == torch.int64 and item["masks"].shape == (2, *pixels.shape[1:])
        torch.testing.assert_close(item["masks"][0], pixels[0] // 64)
        torch.testing.assert_close(item["masks"][1], pixels[1] // 32)
        changed += not torch.equal(pixels.permute(1, 2, 0), torch.from_numpy(image).long())
    assert changed >= 6  # the augmentations really moved things
    plain = StackedMaskDataset([tmp_path / "im.png"], [paths])[0]
    assert plain["name"] == "im"
    torch.testing.assert_close(plain["masks"][1], torch.from_numpy(planes[1]).long())


def test_stacked_mask_dataset_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "im.png", rgb(8, 8))
    write_mask(tmp_path / "small.png", np.zeros((4, 8), np.uint8))
    dataset = StackedMaskDataset([tmp_path / "im.png"], [[tmp_path / "small.png"]])
    with pytest.raises(DataError, match=r"mask is 8x4 but image im\.png is 8x8"):
        dataset[0]
    with pytest.raises(ValueError, match="one list of mask files per image"):
        StackedMaskDataset([tmp_path / "im.png"], [])
    with pytest.raises(ValueError, match="at least one image"):
        StackedMaskDataset([], [])


def test_patch_sample_stem() -> None:
    assert PatchSample(Path("/x/a-[1, 0].png"), (1, 0)).stem == "a-[1, 0]"
