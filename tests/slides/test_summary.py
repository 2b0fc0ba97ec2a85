"""class_area_table / write_area_csv: hand-counted pixels, areas and tissue shares."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from pathseg.slides.summary import class_area_table, write_area_csv

NAMES = ["background", "tumour", "stroma"]

# 4 x 5 raster: background 5, tumour 6, stroma 3, no label (255) 6.
LABELS = np.array(
    [
        [0, 0, 1, 1, 255],
        [0, 1, 1, 1, 255],
        [0, 2, 2, 1, 255],
        [0, 2, 255, 255, 255],
    ],
    dtype=np.uint8,
)


def by_class(rows):
    return {row["class"]: row for row in rows}


def test_counts_areas_and_tissue_share_with_mpp():
    # downsample 4 at 0.5 µm per level-0 pixel: a raster pixel is 2 µm wide, 4 µm².
    rows = class_area_table(LABELS, class_names=NAMES, downsample=4, mpp=0.5)
    assert [row["class_index"] for row in rows] == [0, 1, 2]
    assert list(rows[0]) == ["class_index", "class", "pixels", "area_um2", "percent_of_tissue"]
    table = by_class(rows)
    assert [table[name]["pixels"] for name in NAMES] == [5, 6, 3]
    assert [table[name]["area_um2"] for name in NAMES] == [20.0, 24.0, 12.0]
    # tissue = every labelled pixel (14), background included
    assert table["tumour"]["percent_of_tissue"] == pytest.approx(100 * 6 / 14)
    assert sum(row["percent_of_tissue"] for row in rows) == pytest.approx(100)


def test_without_mpp_areas_are_in_level0_pixels_and_named_so():
    rows = class_area_table(LABELS, class_names=NAMES, downsample=4, mpp=None)
    assert "area_um2" not in rows[0]
    assert [row["area_level0_px2"] for row in rows] == [5 * 16.0, 6 * 16.0, 3 * 16.0]


def test_tissue_classes_choose_the_denominator():
    rows = class_area_table(LABELS, class_names=NAMES, downsample=1, mpp=1.0, tissue_classes=[1, 2])
    table = by_class(rows)
    assert table["tumour"]["percent_of_tissue"] == pytest.approx(100 * 6 / 9)
    assert table["stroma"]["percent_of_tissue"] == pytest.approx(100 * 3 / 9)
    assert table["background"]["percent_of_tissue"] == pytest.approx(100 * 5 / 9)


def test_small_chunks_count_the_same_as_one_chunk():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 1, 2, 255], dtype=np.uint8), size=(203, 157))
    whole = class_area_table(labels, class_names=NAMES, downsample=2, mpp=0.25, chunk=4096)
    pieces = class_area_table(labels, class_names=NAMES, downsample=2, mpp=0.25, chunk=16)
    assert whole == pieces
    assert [row["pixels"] for row in whole] == [int((labels == c).sum()) for c in range(3)]


def test_no_tissue_gives_no_percentage_and_an_empty_csv_cell(tmp_path):
    rows = class_area_table(np.full((3, 3), 255, dtype=np.uint8), class_names=NAMES, downsample=1, mpp=None)
    assert all(row["pixels"] == 0 and row["percent_of_tissue"] is None for row in rows)
    path = write_area_csv(tmp_path / "areas.csv", rows)
    with open(path, newline="") as handle:
        assert {row["percent_of_tissue"] for row in csv.DictReader(handle)} == {""}


def test_values_that_are_not_classes_are_refused():
    labels = LABELS.copy()
    labels[0, 0] = 7
    with pytest.raises(ValueError, match=r"\[7\] are not class indices"):
        class_area_table(labels, class_names=NAMES, downsample=1, mpp=None)


def test_csv_round_trip(tmp_path):
    rows = class_area_table(LABELS, class_names=NAMES, downsample=4, mpp=0.5)
    path = tmp_path / "report" / "areas.csv"
    assert write_area_csv(path, rows) == path
    assert [p.name for p in path.parent.iterdir()] == ["areas.csv"]
    with open(path, newline="") as handle:
        read = list(csv.DictReader(handle))
    assert read[1] == {
        "class_index": "1",
        "class": "tumour",
        "pixels": "6",
        "area_um2": "24.00",
        "percent_of_tissue": f"{100 * 6 / 14:.4f}",
    }
