"""Per-nucleus table, CSV and QuPath GeoJSON of a hand-made instance map."""

import csv
import json
import math

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape

from pathseg.data.annotations import rasterize_instances, read_annotations
from pathseg.inference.nucleus_outputs import (
    COLOUR_COLUMNS,
    MICRON_COLUMNS,
    NUCLEUS_COLUMNS,
    SHAPE_COLUMNS,
    nucleus_features,
    nucleus_table,
    write_nucleus_csv,
    write_nucleus_geojson,
)

H, W = 24, 32
RECTANGLE, DISC, ELL, RING, TWO_PARTS, CORNERS, DOT = range(1, 8)


def disc_mask(centre, radius):
    yy, xx = np.mgrid[:H, :W]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def instance_map():
    """Seven nuclei: rectangle, disc, an L touching the rectangle, a ring with a nucleus in its
    hole, a nucleus of two separate parts and one of two squares meeting at a corner."""
    inst = np.zeros((H, W), np.int32)
    inst[1:5, 1:7] = RECTANGLE  # 4 rows x 6 columns
    inst[disc_mask((14, 6), 4)] = DISC
    inst[1:7, 7:9] = ELL  # shares an edge with the rectangle
    inst[5:7, 9:13] = ELL
    inst[10:17, 14:21] = RING
    inst[12:15, 16:19] = 0  # 3 x 3 hole ...
    inst[13, 17] = DOT  # ... with a one-pixel nucleus in its middle
    inst[20:22, 2:5] = TWO_PARTS
    inst[19:23, 26:28] = TWO_PARTS
    inst[19:21, 12:14] = CORNERS
    inst[21:23, 14:16] = CORNERS
    return inst


def second_moments(mask):
    """Variances of x and y and their covariance over the pixel centres (numpy, not skimage)."""
    y, x = np.nonzero(mask)
    return np.cov(np.stack([x, y]).astype(float), bias=True)


def by_id(rows):
    return {row["id"]: row for row in rows}


# ----------------------------------------------------------------------------------------- table


def test_table_has_one_row_per_nucleus_sorted_by_id_with_the_shape_columns():
    inst = instance_map()
    rows = nucleus_table(inst)
    assert [row["id"] for row in rows] == list(range(1, 8))
    assert all(tuple(row) == SHAPE_COLUMNS for row in rows)
    for row in rows:
        assert row["area_px"] == int((inst == row["id"]).sum())
        assert all(math.isfinite(value) for value in row.values())
        assert 0 < row["solidity"] <= 1


def test_rectangle_measurements_by_hand():
    rectangle = by_id(nucleus_table(instance_map()))[RECTANGLE]
    assert rectangle["area_px"] == 24
    # Columns 1..6, rows 1..4.
    assert rectangle["centroid_x"] == pytest.approx(3.5)
    assert rectangle["centroid_y"] == pytest.approx(2.5)
    # Variance of n consecutive integers: (n² - 1) / 12 -> 35/12 along x, 15/12 along y.
    var_x, var_y = 35 / 12, 15 / 12
    assert rectangle["eccentricity"] == pytest.approx(math.sqrt(1 - var_y / var_x))
    assert rectangle["major_axis_px"] == pytest.approx(4 * math.sqrt(var_x))
    assert rectangle["minor_axis_px"] == pytest.approx(4 * math.sqrt(var_y))
    assert rectangle["solidity"] == pytest.approx(1.0)
    np.testing.assert_allclose(second_moments(instance_map() == RECTANGLE), np.diag([var_x, var_y]))


def test_disc_and_l_shape_against_numpy_moments():
    inst = instance_map()
    rows = by_id(nucleus_table(inst))
    disc = rows[DISC]
    assert disc["area_px"] == int(disc_mask((14, 6), 4).sum())
    assert (disc["centroid_x"], disc["centroid_y"]) == pytest.approx((6.0, 14.0))
    # Symmetric under a quarter turn: equal axes, eccentricity 0.
    assert disc["eccentricity"] == pytest.approx(0.0, abs=1e-6)
    assert disc["major_axis_px"] == pytest.approx(disc["minor_axis_px"])
    for nucleus in (DISC, ELL, RING):
        mask = inst == nucleus
        y, x = np.nonzero(mask)
        eigen = np.sort(np.linalg.eigvalsh(second_moments(mask)))
        row = rows[nucleus]
        assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((x.mean(), y.mean()))
        assert row["eccentricity"] == pytest.approx(math.sqrt(1 - eigen[0] / eigen[1]), abs=1e-9)
        assert row["major_axis_px"] == pytest.approx(4 * math.sqrt(eigen[1]))
        assert row["minor_axis_px"] == pytest.approx(4 * math.sqrt(eigen[0]))
    assert rows[ELL]["area_px"] == 20
    assert rows[ELL]["solidity"] < 1
    assert rows[RING]["area_px"] == 40
    assert (rows[RING]["centroid_x"], rows[RING]["centroid_y"]) == pytest.approx((17.0, 13.0))


def test_mean_colours_and_grey_on_a_synthetic_image():
    inst = instance_map()
    image = np.zeros((H, W, 3), np.uint8)
    image[:] = (250, 240, 230)  # background must not leak into any mean
    colours = {k: (20 * k, 200 - 15 * k, 5 + 30 * k) for k in range(1, 8)}
    for k, colour in colours.items():
        image[inst == k] = colour
    image[1:5, 1:4] = (100, 0, 50)  # left half of the rectangle ...
    image[1:5, 4:7] = (200, 60, 150)  # ... right half
    colours[RECTANGLE] = (150, 30, 100)
    rows = by_id(nucleus_table(inst, image=image))
    for k, (r, g, b) in colours.items():
        row = rows[k]
        assert tuple(row) == SHAPE_COLUMNS + COLOUR_COLUMNS
        assert (row["mean_r"], row["mean_g"], row["mean_b"]) == pytest.approx((r, g, b))
        assert row["mean_intensity"] == pytest.approx(0.299 * r + 0.587 * g + 0.114 * b)
    # Grey of the rectangle from its pixels, not from the mean colour.
    grey = image.astype(float) @ np.array([0.299, 0.587, 0.114])
    assert rows[RECTANGLE]["mean_intensity"] == pytest.approx(grey[inst == RECTANGLE].mean())


def test_micron_columns_scale_by_the_pixel_size():
    inst = instance_map()
    plain = nucleus_table(inst)
    rows = nucleus_table(inst, mpp=0.25)
    for before, after in zip(plain, rows, strict=True):
        assert tuple(after) == SHAPE_COLUMNS + MICRON_COLUMNS
        assert after["area_um2"] == pytest.approx(before["area_px"] * 0.0625)
        assert after["centroid_x_um"] == pytest.approx(before["centroid_x"] * 0.25)
        assert after["centroid_y_um"] == pytest.approx(before["centroid_y"] * 0.25)
        assert {k: after[k] for k in SHAPE_COLUMNS} == before
    assert by_id(rows)[RECTANGLE]["area_um2"] == pytest.approx(1.5)


def test_ids_keep_their_values_and_an_empty_map_gives_nothing():
    inst = instance_map().astype(np.int64) * 1000
    assert [row["id"] for row in nucleus_table(inst)] == [k * 1000 for k in range(1, 8)]
    assert nucleus_table(np.zeros((6, 5), np.uint16)) == []
    assert nucleus_table(np.zeros((0, 0), np.int32)) == []
    assert nucleus_features(np.zeros((6, 5), np.uint16)) == []


# --------------------------------------------------------------------------------------- GeoJSON


def test_features_are_detections_with_pixel_edge_polygons():
    inst = instance_map()
    features = nucleus_features(inst, class_name="Tumor nucleus", color=(200, 0, 0))
    assert [f["properties"]["id"] for f in features] == list(range(1, 8))
    json.dumps(features)  # plain JSON types only
    for k, feature in enumerate(features, start=1):
        properties = feature["properties"]
        assert feature["type"] == "Feature"
        assert properties["objectType"] == "detection"
        assert properties["classification"] == {"name": "Tumor nucleus", "color": [200, 0, 0]}
        assert properties["measurements"] == {"id": k}
        geometry = shape(feature["geometry"])
        assert geometry.is_valid
        assert geometry.area == (inst == k).sum()  # pixel edges: area is the pixel count exactly
    geometries = {k: shape(f["geometry"]) for k, f in enumerate(features, start=1)}
    assert isinstance(geometries[RECTANGLE], Polygon)
    assert geometries[RECTANGLE].equals(shapely.box(1, 1, 7, 5))
    assert isinstance(geometries[RING], Polygon)
    assert len(geometries[RING].interiors) == 1
    assert Polygon(geometries[RING].interiors[0]).equals(shapely.box(16, 12, 19, 15))
    for split in (TWO_PARTS, CORNERS):
        assert isinstance(geometries[split], MultiPolygon)
        assert len(geometries[split].geoms) == 2


def test_geojson_round_trip_gives_the_instance_map_back(tmp_path):
    inst = instance_map()
    path = tmp_path / "nuclei.geojson"
    assert write_nucleus_geojson(path, inst) == 7
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection"
    annotations = read_annotations(path)
    assert [a.class_name for a in annotations] == ["Nucleus"] * 7
    np.testing.assert_array_equal(rasterize_instances(annotations, (0, 0, W, H), 1.0), inst)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_round_trip_with_large_sparse_ids_keeps_sorted_order(tmp_path):
    inst = instance_map()
    sparse = np.where(inst > 0, inst * 1000 + 3, 0)  # ids far above 255, not consecutive
    path = tmp_path / "sparse.geojson"
    write_nucleus_geojson(path, sparse)
    ids = [f["properties"]["id"] for f in json.loads(path.read_text())["features"]]
    assert ids == [k * 1000 + 3 for k in range(1, 8)]
    painted = rasterize_instances(read_annotations(path), (0, 0, W, H), 1.0)
    np.testing.assert_array_equal(painted, inst)  # feature k paints k: the k-th smallest id


def test_offset_shifts_every_coordinate(tmp_path):
    inst = instance_map()
    offset = (1000, 250.5)
    plain = nucleus_features(inst)
    shifted = nucleus_features(inst, offset=offset)
    for a, b in zip(plain, shifted, strict=True):
        moved = shapely.transform(shape(a["geometry"]), lambda xy: xy + offset)
        assert shapely.equals_exact(moved, shape(b["geometry"]), tolerance=0)
    path = tmp_path / "tile.geojson"
    write_nucleus_geojson(path, inst, offset=offset)
    painted = rasterize_instances(read_annotations(path), (*offset, W, H), 1.0)
    np.testing.assert_array_equal(painted, inst)


# -------------------------------------------------------------------------------------------- CSV


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_csv_round_trip(tmp_path):
    inst = instance_map()
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    rows = nucleus_table(inst, image=image, mpp=0.5)
    path = tmp_path / "out" / "nuclei.csv"
    assert write_nucleus_csv(path, rows) == 7
    header, read = read_csv(path)
    assert header == list(NUCLEUS_COLUMNS)
    assert len(read) == len(rows)
    for original, back in zip(rows, read, strict=True):
        assert int(back["id"]) == original["id"]
        assert int(back["area_px"]) == original["area_px"]
        assert {k: float(v) for k, v in back.items()} == pytest.approx(original, rel=0, abs=0)
    assert sorted(p.name for p in path.parent.iterdir()) == ["nuclei.csv"]


def test_csv_columns_follow_the_rows_and_an_empty_map_gives_a_header_only(tmp_path):
    path = tmp_path / "shape.csv"
    write_nucleus_csv(path, nucleus_table(instance_map()))
    assert read_csv(path)[0] == list(SHAPE_COLUMNS)
    empty = tmp_path / "empty.csv"
    assert write_nucleus_csv(empty, nucleus_table(np.zeros((8, 8), np.int32))) == 0
    assert empty.read_text().splitlines() == [",".join(SHAPE_COLUMNS)]
    chosen = tmp_path / "chosen.csv"
    write_nucleus_csv(chosen, [], columns=NUCLEUS_COLUMNS)
    assert chosen.read_text().splitlines() == [",".join(NUCLEUS_COLUMNS)]


def test_csv_refuses_columns_it_would_drop(tmp_path):
    rows = nucleus_table(instance_map())
    rows[2]["texture"] = 1.0
    with pytest.raises(ValueError, match="texture"):
        write_nucleus_csv(tmp_path / "x.csv", rows)
    with pytest.raises(ValueError, match="solidity"):
        write_nucleus_csv(tmp_path / "y.csv", nucleus_table(instance_map()), columns=["id", "area_px"])
    assert list(tmp_path.iterdir()) == []


# -------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("function", [nucleus_table, nucleus_features])
def test_bad_instance_maps_are_refused(function):
    inst = instance_map()
    with pytest.raises(ValueError, match=r"2-D .*shape \(2, 24, 32\)"):
        function(np.stack([inst, inst]))
    negative = inst.copy()
    negative[0, 0] = -3
    with pytest.raises(ValueError, match=r">= 0 .*-3"):
        function(negative)
    with pytest.raises(ValueError, match=r"integer ids.*float"):
        function(inst.astype(float))


def test_bad_images_and_pixel_sizes_are_refused():
    inst = instance_map()
    with pytest.raises(ValueError, match=r"image is 24 x 31 pixels but the instance map is 24 x 32"):
        nucleus_table(inst, image=np.zeros((H, W - 1, 3), np.uint8))
    with pytest.raises(ValueError, match=r"RGB .*\(24, 32\)"):
        nucleus_table(inst, image=np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match=r"uint8.*float32"):
        nucleus_table(inst, image=np.zeros((H, W, 3), np.float32))
    for mpp in (0.0, -0.25, math.nan):
        with pytest.raises(ValueError, match="mpp"):
            nucleus_table(inst, mpp=mpp)
