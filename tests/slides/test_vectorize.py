"""label_polygons (raster -> polygons along pixel edges), QuPath features and GeoJSON files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon, box, shape
from skimage.draw import polygon as fill_polygon

from pathseg.slides.vectorize import label_polygons, qupath_features, write_geojson


def regions(labels, **kwargs) -> list[tuple[int, Polygon | MultiPolygon]]:
    raster = labels if hasattr(labels, "shape") else np.asarray(labels, dtype=np.uint8)
    return list(label_polygons(raster, **kwargs))


def rasterise(geometries, shape_, downsample: float = 1.0, origin=(0.0, 0.0)) -> np.ndarray:
    """Pixels whose centre lies inside any geometry, by skimage's polygon fill (independent of
    the code under test). skimage puts pixel (r, c)'s centre at (r, c); ours is at (c + 0.5,
    r + 0.5) in raster units, so coordinates are shifted by half a pixel."""
    out = np.zeros(shape_, dtype=bool)
    for geometry in geometries:
        for part in shapely.get_parts(geometry):
            for index, ring in enumerate([part.exterior, *part.interiors]):
                xy = (np.asarray(ring.coords) - origin) / downsample - 0.5
                rr, cc = fill_polygon(xy[:, 1], xy[:, 0], shape_)
                mask = np.zeros(shape_, dtype=bool)
                mask[rr, cc] = True
                out = out | mask if index == 0 else out & ~mask
    return out


def blob_raster(height: int, width: int, seed: int, classes: int = 4) -> np.ndarray:
    """Smooth random blobs of several classes, some glass (255), with holes and islands."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((height, width)), 6)
    levels = np.quantile(field, np.linspace(0, 1, classes + 1)[1:-1])
    labels = np.digitize(field, levels).astype(np.uint8)
    glass = ndimage.gaussian_filter(rng.standard_normal((height, width)), 10)
    labels[glass > np.quantile(glass, 0.85)] = 255
    return labels


def test_one_pixel_is_a_unit_square_scaled_and_shifted():
    labels = np.zeros((3, 4), dtype=np.uint8)
    labels[1, 2] = 1  # row 1, column 2: the square [2, 3) x [1, 2)
    [(cls, geometry)] = regions(labels)
    assert cls == 1
    assert geometry.equals(box(2, 1, 3, 2))
    [(_, moved)] = regions(labels, downsample=4, origin=(100.0, 50.0))
    assert moved.equals(box(100 + 8, 50 + 4, 100 + 12, 50 + 8))
    assert len(moved.exterior.coords) == 5  # four corners, no vertices along edges


def test_l_shape_follows_pixel_edges():
    [(_, geometry)] = regions([[1, 0], [1, 1]])
    assert geometry.equals(Polygon([(0, 0), (1, 0), (1, 1), (2, 1), (2, 2), (0, 2)]))
    assert len(geometry.exterior.coords) == 7
    assert geometry.area == 3


def test_ring_keeps_its_hole():
    [(_, geometry)] = regions([[1, 1, 1], [1, 0, 1], [1, 1, 1]])
    assert isinstance(geometry, Polygon)
    assert geometry.equals(box(0, 0, 3, 3).difference(box(1, 1, 2, 2)))
    assert len(geometry.interiors) == 1


def test_touching_regions_of_two_classes_and_ignore_and_background_left_out():
    found = dict(regions([[1, 1, 2], [1, 1, 2], [0, 255, 2]]))
    assert set(found) == {1, 2}
    assert found[1].equals(box(0, 0, 2, 2))
    assert found[2].equals(box(2, 0, 3, 3))
    assert found[1].touches(found[2])
    chosen = regions([[1, 1, 2], [1, 1, 2], [0, 255, 2]], classes=[0, 2])
    assert sorted(cls for cls, _ in chosen) == [0, 2]


def test_corner_touching_pixels_are_one_region_as_a_multipolygon():
    """8-connectivity: diagonal neighbours are one region, a MultiPolygon of touching parts."""
    [(_, geometry)] = regions([[1, 0], [0, 1]])
    assert isinstance(geometry, MultiPolygon) and geometry.is_valid
    assert geometry.equals(box(0, 0, 1, 1).union(box(1, 1, 2, 2)))
    # A diamond of diagonal steps: four parts; the pixel in the middle is a region of its own.
    ring = [[0, 1, 1, 1, 0], [1, 0, 0, 0, 1], [1, 0, 1, 0, 1], [1, 0, 0, 0, 1], [0, 1, 1, 1, 0]]
    found = regions(ring)
    assert len(found) == 2
    outer = next(g for g in (g for _, g in found) if g.area == 12)
    assert isinstance(outer, MultiPolygon) and len(outer.geoms) == 4 and outer.is_valid


def test_hole_closed_at_a_corner_touches_the_outline():
    # The centre pixel is enclosed; its bottom-right corner touches the outside at one point.
    [(_, geometry)] = regions([[1, 1, 1], [1, 0, 1], [1, 1, 0]])
    assert isinstance(geometry, Polygon) and geometry.is_valid
    assert len(geometry.interiors) == 1
    assert Polygon(geometry.interiors[0]).equals(box(1, 1, 2, 2))
    assert geometry.area == 7


def test_region_across_chunk_seams_is_one_geometry_equal_to_the_single_chunk_one():
    yy, xx = np.mgrid[0:21, 0:23]
    distance = np.hypot(yy - 10, xx - 11)
    labels = ((distance < 9) & (distance > 3.5)).astype(np.uint8)  # an annulus over 3 x 3 chunks
    labels[10, 11] = 1  # an island in the hole, not connected to the ring
    whole = regions(labels, chunk=4096)
    pieces = regions(labels, chunk=8)
    assert len(whole) == len(pieces) == 2
    ring_whole = max((g for _, g in whole), key=lambda g: g.area)
    ring_chunked = max((g for _, g in pieces), key=lambda g: g.area)
    assert isinstance(ring_chunked, Polygon) and len(ring_chunked.interiors) == 1
    assert ring_chunked.symmetric_difference(ring_whole).area == 0
    assert ring_chunked.area == labels.sum() - 1


def test_blob_raster_rasterises_back_exactly_with_small_chunks():
    labels = blob_raster(300, 260, seed=3)
    found = regions(labels, classes=[0, 1, 2, 3], chunk=64)
    for cls in range(4):
        mine = [g for c, g in found if c == cls]
        assert all(g.is_valid for g in mine)
        count = ndimage.label(labels == cls, structure=np.ones((3, 3)))[1]
        assert len(mine) == count  # one geometry per 8-connected region, seams merged
        drawn = rasterise(mine, labels.shape)
        truth = labels == cls
        assert (drawn & truth).sum() / (drawn | truth).sum() >= 0.999


@pytest.mark.parametrize("seed", range(6))
def test_pixel_noise_is_traced_exactly(seed):
    """Worst case for tracing: random pixels, so corner contacts, pinched holes and islands in
    holes everywhere, cut by tiny chunks. Every pixel centre must land in its class's geometry."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=(37, 41)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.15] = 255
    found = regions(labels, classes=[0, 1, 2], chunk=int(rng.integers(3, 12)))
    assert all(g.is_valid for _, g in found)
    centres_x, centres_y = np.meshgrid(np.arange(41) + 0.5, np.arange(37) + 0.5)
    for cls in (0, 1, 2):
        mine = [g for c, g in found if c == cls]
        assert len(mine) == ndimage.label(labels == cls, structure=np.ones((3, 3)))[1]
        inside = [shapely.contains_xy(g, centres_x, centres_y) for g in mine]
        np.testing.assert_array_equal(np.sum(inside, axis=0), labels == cls)  # each pixel once
        assert sum(g.area for g in mine) == (labels == cls).sum()


def test_downsample_and_origin_map_to_level0_and_back():
    labels = blob_raster(120, 90, seed=4)
    found = regions(labels, downsample=2.5, origin=(1000.0, 2000.0), chunk=40)
    for cls in (1, 2, 3):
        drawn = rasterise([g for c, g in found if c == cls], labels.shape, 2.5, (1000.0, 2000.0))
        np.testing.assert_array_equal(drawn, labels == cls)


def test_simplify_reduces_vertices_and_keeps_the_shape():
    """Simplifying by 1 px straightens pixel staircases; on tissue-sized regions (a few hundred
    pixels across) that moves few pixel centres across a boundary."""
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((512, 512)), 40)
    labels = np.where(field > 0, 1, 2).astype(np.uint8)
    exact = regions(labels, chunk=128)
    simple = regions(labels, chunk=128, simplify=1.0)
    assert len(simple) == len(exact)
    assert all(g.is_valid for _, g in simple)
    vertices = [shapely.get_num_coordinates([g for _, g in found]).sum() for found in (exact, simple)]
    assert vertices[1] < 0.2 * vertices[0]
    for cls in (1, 2):
        drawn = rasterise([g for c, g in simple if c == cls], labels.shape)
        truth = labels == cls
        assert (drawn & truth).sum() / (drawn | truth).sum() >= 0.99


def test_zarr_input_is_read_in_chunks(tmp_path):
    zarr = pytest.importorskip("zarr")
    labels = blob_raster(130, 150, seed=6)
    stored = zarr.create_array(tmp_path / "labels.zarr", shape=labels.shape, chunks=(32, 32), dtype="uint8")
    stored[:] = labels
    seen: list[tuple[int, ...]] = []

    class Recording:
        shape, dtype = stored.shape, stored.dtype

        def __getitem__(self, key):
            block = stored[key]
            seen.append(block.shape)
            return block

    from_zarr = regions(Recording(), chunk=48)
    from_numpy = regions(labels, chunk=4096)
    assert max(rows * cols for rows, cols in seen) <= 48 * 48
    assert len(from_zarr) == len(from_numpy)
    assert sum(g.area for _, g in from_zarr) == sum(g.area for _, g in from_numpy)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        regions(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="integer"):
        list(label_polygons(np.zeros((2, 2), dtype=np.float32)))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        list(label_polygons(np.full((2, 2), 300, dtype=np.int32)))


def test_geojson_for_qupath(tmp_path):
    labels = blob_raster(200, 180, seed=7)
    names = ["background", "tumour", "stroma", "necrosis"]
    colors = [(0, 0, 0), (200, 0, 0), (0, 150, 0), (90, 90, 200)]
    expected = regions(labels, downsample=3.0, chunk=64)
    path = tmp_path / "out" / "slide.geojson"
    count = write_geojson(path, qupath_features(iter(expected), names, colors))
    assert count == len(expected) > 10
    assert [p.name for p in path.parent.iterdir()] == ["slide.geojson"]  # no temporary file left
    document = json.loads(path.read_text())
    assert document["type"] == "FeatureCollection" and len(document["features"]) == count
    for feature, (cls, geometry) in zip(document["features"], expected, strict=True):
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "annotation"
        assert feature["properties"]["classification"] == {"name": names[cls], "color": list(colors[cls])}
        read = shape(feature["geometry"])
        assert read.geom_type in ("Polygon", "MultiPolygon") and read.is_valid
        assert read.symmetric_difference(geometry).area < 1e-6


def test_geojson_coordinates_are_rounded_and_empty_collections_are_valid(tmp_path):
    geometry = box(0.123456, 1.987654, 2.5, 3.0)
    [feature] = qupath_features([(1, geometry)], ["a", "b"], [(1, 2, 3), (4, 5, 6)])
    coords = np.array(feature["geometry"]["coordinates"][0])
    np.testing.assert_array_equal(coords, np.round(coords, 2))
    assert coords.min() == 0.12
    with pytest.raises(ValueError, match="no name"):
        list(qupath_features([(2, geometry)], ["a", "b"], [(1, 2, 3), (4, 5, 6)]))
    path = tmp_path / "empty.geojson"
    assert write_geojson(path, []) == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}


def test_geojson_write_failure_leaves_nothing_behind(tmp_path):
    path = tmp_path / "slide.geojson"
    path.write_text("previous")

    def failing():
        yield {"type": "Feature", "geometry": None, "properties": {}}
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        write_geojson(path, failing())
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["slide.geojson"]
