"""Polygon annotations: QuPath GeoJSON and ImageScope XML in every accepted form, the one-line
errors for broken files, class mapping, and label rasters checked against hand-worked pixels and
shapely's own point-in-polygon test."""

from __future__ import annotations

import json
import math
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from pathseg.data.annotations import (
    Annotation,
    AnnotationWarning,
    class_indices,
    clip_to_slide,
    rasterize,
    rasterize_instances,
    read_annotations,
)
from pathseg.data.classes import ClassMap
from pathseg.errors import ConfigError, DataError
from tests.conftest import shared_data_or_skip

# ------------------------------------------------------------------------------------- helpers


def ring(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    """A closed GeoJSON ring around the rectangle [x0, x1] x [y0, y1]."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def feature(geometry: dict, classification=None, **properties) -> dict:
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def polygon(*rings: list[list[float]]) -> dict:
    return {"type": "Polygon", "coordinates": list(rings)}


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document, indent=1))
    return path


def aperio_xml(layers: list[tuple[dict[str, str], list[str]]], regions: list[list[list[tuple]]]) -> str:
    """ImageScope XML: layer k has attributes ``layers[k][0]``, Attribute names ``layers[k][1]``
    and regions ``regions[k]`` (each a list of (x, y) or (x, y, negative))."""
    root = ET.Element("Annotations", MicronsPerPixel="0.25")
    region_id = 1
    for (attributes, attribute_names), layer_regions in zip(layers, regions, strict=True):
        layer = ET.SubElement(root, "Annotation", Id=str(region_id), **attributes)
        attrs = ET.SubElement(layer, "Attributes")
        for name in attribute_names:
            ET.SubElement(attrs, "Attribute", Name=name, Id="0", Value="")
        regs = ET.SubElement(layer, "Regions")
        for points in layer_regions:
            negative = "1" if points and points[-1] == "negative" else "0"
            points = [p for p in points if p != "negative"]
            region = ET.SubElement(regs, "Region", Id=str(region_id), NegativeROA=negative)
            region_id += 1
            vertices = ET.SubElement(region, "Vertices")
            for x, y in points:
                ET.SubElement(vertices, "Vertex", X=str(x), Y=str(y))
    return ET.tostring(root, encoding="unicode")


def one_line_data_error(call, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def centres_inside(geometry, box_, downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """shapely's answer for every pixel centre of the raster: (strictly inside, on the boundary)."""
    x0, y0, w, h = box_
    rows, cols = round(h / downsample), round(w / downsample)
    ys, xs = np.mgrid[0:rows, 0:cols]
    cx, cy = x0 + (xs + 0.5) * downsample, y0 + (ys + 0.5) * downsample
    inside = shapely.contains_xy(geometry, cx, cy)
    on_edge = shapely.intersects_xy(geometry.boundary, cx, cy)
    return inside, on_edge


# ------------------------------------------------------------------------------------- GeoJSON


def test_geojson_feature_collection_in_every_accepted_form(tmp_path: Path) -> None:
    square = polygon(ring(0, 0, 10, 10))
    document = {
        "type": "FeatureCollection",
        "features": [
            feature(square, {"name": "Tumor", "color": [200, 0, 0]}, name="first"),  # QuPath >= 0.4
            feature(square, {"name": "Stroma", "colorRGB": -3670016}),  # older QuPath
            feature(square, "Necrosis"),  # a plain string
            feature(square),  # no class
            feature(
                {"type": "MultiPolygon", "coordinates": [[ring(0, 0, 2, 2)], [ring(5, 5, 7, 7)]]}, "Tumor"
            ),
            feature(
                {
                    "type": "GeometryCollection",
                    "geometries": [polygon(ring(0, 0, 4, 4)), {"type": "Point", "coordinates": [9, 9]}],
                },
                "Tumor",
            ),
            feature({"type": "Point", "coordinates": [1, 1]}, "Tumor"),
            feature({"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "Tumor"),
        ],
    }
    document["features"][1]["id"] = "b6c2a8e0-uuid"
    document["features"][2]["id"] = "PathAnnotationObject"  # QuPath 0.2's object type, not a name
    path = write_json(tmp_path / "regions.geojson", document)
    with pytest.warns(AnnotationWarning) as caught:
        annotations = read_annotations(path)
    assert [str(w.message) for w in caught] == [
        f"{path}: skipped 2 features that are not polygons (points or lines)"
    ]
    assert [a.class_name for a in annotations] == ["Tumor", "Stroma", "Necrosis", None, "Tumor", "Tumor"]
    assert [a.name for a in annotations] == ["first", "b6c2a8e0-uuid", None, None, None, None]
    assert annotations[0].geometry.equals(box(0, 0, 10, 10))
    assert isinstance(annotations[4].geometry, MultiPolygon) and annotations[4].geometry.area == 8
    assert annotations[5].geometry.equals(box(0, 0, 4, 4))  # the point of the collection is dropped


def test_geojson_plain_list_and_single_feature(tmp_path: Path) -> None:
    listed = write_json(tmp_path / "list.json", [feature(polygon(ring(0, 0, 1, 1)), "a")] * 2)
    single = write_json(tmp_path / "one.json", feature(polygon(ring(0, 0, 1, 1)), "a"))
    assert len(read_annotations(listed)) == 2
    assert [a.class_name for a in read_annotations(single)] == ["a"]


def test_bow_tie_is_repaired_with_one_warning(tmp_path: Path) -> None:
    bow_tie = [[0, 0], [6, 4], [6, 0], [0, 4], [0, 0]]  # two triangles meeting at (3, 2)
    path = write_json(
        tmp_path / "bow.geojson", [feature(polygon(bow_tie), "a"), feature(polygon(bow_tie), "a")]
    )
    with pytest.warns(AnnotationWarning) as caught:
        annotations = read_annotations(path)
    assert len(caught) == 1
    assert (
        str(caught[0].message) == f"{path}: repaired 2 invalid polygons (self-intersections) with make_valid"
    )
    geometry = annotations[0].geometry
    assert geometry.is_valid and len(geometry.geoms) == 2 and geometry.area == pytest.approx(12.0)
    # The left triangle reaches x = 1.5 * min(y, 4 - y): 0.75 on rows 0 and 3, 2.25 on rows 1 and 2.
    expected = [[1, 0, 0, 0, 0, 1], [1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1]]
    assert np.array_equal(rasterize(annotations[:1], [1], (0, 0, 6, 4), 1, 0), expected)


def test_broken_geojson_files_give_one_line_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.geojson"
    broken.write_text(
        '{\n  "type": "FeatureCollection",\n  "features": [\n    {"type": "Feature",}\n  ]\n}\n'
    )
    one_line_data_error(lambda: read_annotations(broken), str(broken), "not valid JSON", "line 4")

    empty = tmp_path / "empty.geojson"
    empty.write_text("  \n")
    one_line_data_error(lambda: read_annotations(empty), str(empty), "file is empty")

    wrong = write_json(tmp_path / "wrong.json", {"type": "Polygon", "coordinates": [ring(0, 0, 1, 1)]})
    one_line_data_error(lambda: read_annotations(wrong), "expected a FeatureCollection", "type 'Polygon'")

    number = write_json(tmp_path / "number.json", 3)
    one_line_data_error(lambda: read_annotations(number), "found a JSON number")

    not_features = write_json(tmp_path / "items.json", [{"type": "Polygon"}])
    one_line_data_error(lambda: read_annotations(not_features), "item 1 is not a GeoJSON Feature")

    bad_geometry = write_json(
        tmp_path / "geom.json", [feature({"type": "Polygon", "coordinates": [[[0, 0]]]})]
    )
    one_line_data_error(lambda: read_annotations(bad_geometry), "feature 1: cannot read its geometry")

    points_only = write_json(tmp_path / "points.json", [feature({"type": "Point", "coordinates": [1, 2]})])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning before the error: the error is the one line
        one_line_data_error(
            lambda: read_annotations(points_only), "no polygon annotations found", "1 features"
        )

    missing = tmp_path / "missing.geojson"
    one_line_data_error(lambda: read_annotations(missing), str(missing), "does not exist")

    other = tmp_path / "regions.csv"
    other.write_text("x,y\n")
    one_line_data_error(lambda: read_annotations(other), "unknown annotation format .csv")


# ---------------------------------------------------------------------------------- ImageScope XML


def test_imagescope_xml_classes_vertices_and_negative_regions(tmp_path: Path) -> None:
    text = aperio_xml(
        layers=[({"Name": "Tumor"}, []), ({"Name": ""}, ["Stroma"]), ({"Name": ""}, [])],
        regions=[
            [[(0.5, 0.5), (10.25, 0.5), (10.25, 8), (0.5, 8)], [(3, 3), (3, 3), (4, 4)]],  # 2nd: 2 distinct
            [[(20, 20), (30, 20), (30, 30), (20, 30)], [(22, 22), (25, 22), (25, 25), (22, 25), "negative"]],
            [[(40, 40), (41, 40), (41, 41)], [(1, 1), (2, 2)]],
        ],
    )
    path = tmp_path / "slide.xml"
    path.write_text(text)
    with pytest.warns(AnnotationWarning) as caught:
        annotations = read_annotations(path)
    messages = [str(w.message) for w in caught]
    assert f"{path}: skipped 2 regions with fewer than 3 distinct vertices" in messages
    assert f"{path}: cut 1 negative regions out of the other regions of their layer" in messages
    assert len(messages) == 2
    assert [a.class_name for a in annotations] == ["Tumor", "Stroma", None]
    assert [a.name for a in annotations] == ["1", "3", "5"]
    assert annotations[0].geometry.equals(box(0.5, 0.5, 10.25, 8))  # float vertices kept as floats
    assert annotations[1].geometry.area == 100 - 9  # the negative region is a hole


def test_broken_xml_files_give_one_line_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.xml"
    broken.write_text("<Annotations>\n<Annotation>\n</Annotations>\n")
    one_line_data_error(lambda: read_annotations(broken), str(broken), "not valid XML", "line 3")

    no_regions = tmp_path / "empty_layer.xml"
    no_regions.write_text('<Annotations><Annotation Name="Tumor"><Regions/></Annotation></Annotations>')
    one_line_data_error(lambda: read_annotations(no_regions), str(no_regions), "no regions found")

    other_root = tmp_path / "other.xml"
    other_root.write_text("<ASAP_Annotations/>")
    one_line_data_error(lambda: read_annotations(other_root), "root element <ASAP_Annotations>")

    bad_vertex = tmp_path / "vertex.xml"
    bad_vertex.write_text(aperio_xml([({}, [])], [[[(0, 0), (1, "x"), (2, 2)]]]))
    one_line_data_error(lambda: read_annotations(bad_vertex), "region 1: vertex X='1' Y='x'")

    tiny = tmp_path / "tiny.xml"
    tiny.write_text(aperio_xml([({}, [])], [[[(0, 0), (1, 1)]]]))
    one_line_data_error(lambda: read_annotations(tiny), "no polygon annotations found", "fewer than 3")


# ----------------------------------------------------------------------------------------- classes


CLASS_MAP = ClassMap.from_config(["background", "Tumor", "stroma"])


def test_class_indices_case_insensitive_default_and_ignore() -> None:
    square = box(0, 0, 1, 1)
    annotations = [Annotation(square, name) for name in ("tumor", "STROMA", None, "Ignore*", "ignore")]
    assert class_indices(annotations, CLASS_MAP, "a.geojson", default_class="Background") == [
        1,
        2,
        0,
        255,
        255,
    ]


def test_class_errors_name_the_file_and_the_fix() -> None:
    square = box(0, 0, 1, 1)
    unknown = [Annotation(square, "Tumor"), Annotation(square, "Necrosis"), Annotation(square, "Fat")]
    message = one_line_data_error(lambda: class_indices(unknown, CLASS_MAP, "a.geojson", "tumor"))
    assert message == (
        "a.geojson: class 'Fat' is not in the class map (classes: background, Tumor, stroma); "
        "also unknown: 'Necrosis'"
    )
    unclassified = [Annotation(square, None), Annotation(square, "tumor"), Annotation(square, None)]
    message = one_line_data_error(lambda: class_indices(unclassified, CLASS_MAP, "a.geojson"))
    assert message == "a.geojson: 2 annotations have no class; pass --default-class"
    with pytest.raises(ConfigError, match="default class 'nucleus' is not in the class map"):
        class_indices(unclassified, CLASS_MAP, "a.geojson", default_class="nucleus")


# -------------------------------------------------------------------------------------- rasterising


def test_square_with_edges_inside_pixels_at_downsample_1_and_2() -> None:
    square = [Annotation(box(1.25, 1.25, 3.75, 3.75))]
    # downsample 1: centres 0.5 .. 4.5; 1.5, 2.5 and 3.5 lie in [1.25, 3.75].
    expected = np.zeros((5, 5), dtype=np.uint8)
    expected[1:4, 1:4] = 7
    assert np.array_equal(rasterize(square, [7], (0, 0, 5, 5), 1, 0), expected)
    # downsample 2: centres 1, 3, 5; only 3 lies in [1.25, 3.75].
    expected = np.full((3, 3), 255, dtype=np.uint8)
    expected[1, 1] = 7
    assert np.array_equal(rasterize(square, [7], (0, 0, 6, 6), 2, 255), expected)
    # A box with an origin: pixel (i, j) of a box at (2, 3) has centre (2 + j + 0.5, 3 + i + 0.5),
    # i.e. x 2.5, 3.5, 4.5 and y 3.5, 4.5: x <= 3.75 and y <= 3.75 hold for the first two of row 0.
    shifted = rasterize(square, [7], (2, 3, 3, 2), 1, 0)
    assert np.array_equal(shifted, [[7, 7, 0], [0, 0, 0]])


def test_centres_on_edges_follow_the_top_left_rule() -> None:
    # [0.5, 2.5]^2: the centres 0.5 (left/top edge) are in, 2.5 (right/bottom edge) are out.
    labels = rasterize([Annotation(box(0.5, 0.5, 2.5, 2.5))], [1], (0, 0, 4, 4), 1, 0)
    expected = np.zeros((4, 4), dtype=np.uint8)
    expected[0:2, 0:2] = 1
    assert np.array_equal(labels, expected)
    # Two squares sharing the edge x = 2.5 split its centres between them, each pixel once.
    halves = [Annotation(box(0, 0, 2.5, 4)), Annotation(box(2.5, 0, 4, 4))]
    assert np.array_equal(rasterize_instances(halves, (0, 0, 4, 4), 1)[0], [1, 1, 2, 2])


def test_polygon_with_a_hole_and_overlap_order() -> None:
    ring_with_hole = Polygon([(0, 0), (6, 0), (6, 6), (0, 6)], holes=[[(2, 2), (4, 2), (4, 4), (2, 4)]])
    labels = rasterize([Annotation(ring_with_hole)], [1], (0, 0, 6, 6), 1, 9)
    expected = np.ones((6, 6), dtype=np.uint8)
    expected[2:4, 2:4] = 9
    assert np.array_equal(labels, expected)

    first, second = Annotation(box(0, 0, 4, 4)), Annotation(box(2, 2, 6, 6))
    later_on_top = rasterize([first, second], [1, 2], (0, 0, 6, 6), 1, 0)
    assert later_on_top[3, 3] == 2 and later_on_top[1, 1] == 1 and later_on_top[5, 5] == 2
    swapped = rasterize([second, first], [2, 1], (0, 0, 6, 6), 1, 0)
    assert swapped[3, 3] == 1
    # An object inside a later bigger one keeps no pixel; the hole of a later ring shows what is below.
    instances = rasterize_instances(
        [Annotation(box(2, 2, 4, 4)), Annotation(ring_with_hole)], (0, 0, 6, 6), 1
    )
    assert set(np.unique(instances).tolist()) == {1, 2} and (instances[2:4, 2:4] == 1).all()
    covered = rasterize_instances([Annotation(box(2, 2, 4, 4)), Annotation(box(0, 0, 6, 6))], (0, 0, 6, 6), 1)
    assert np.unique(covered).tolist() == [2]


def test_random_polygons_match_shapely_point_in_polygon() -> None:
    rng = np.random.default_rng(0)
    annotations = []
    for _ in range(40):
        centre = rng.uniform(5, 95, size=2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, size=rng.integers(3, 12)))
        radii = rng.uniform(2, 15, size=angles.size)
        outer = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        hole = centre + np.stack([np.cos(angles), np.sin(angles)], 1) * (radii.min() / 3)
        annotations.append(Annotation(shapely.make_valid(Polygon(outer, [hole]))))
    box_ = (3.3, -2.1, 97.0, 101.0)
    for downsample in (1.0, 2.5):
        labels = rasterize_instances(annotations, box_, downsample)
        for k, annotation in enumerate(annotations):
            inside, on_edge = centres_inside(annotation.geometry, box_, downsample)
            later = labels > k + 1  # pixels taken by later annotations
            assert np.array_equal((labels == k + 1)[~later & ~on_edge], inside[~later & ~on_edge])


def test_rasterize_shape_and_empty_cases() -> None:
    far = [Annotation(box(500, 500, 600, 600))]
    assert np.array_equal(rasterize(far, [1], (0, 0, 10, 7), 1, 255), np.full((7, 10), 255))
    assert rasterize([], [], (0, 0, 9, 9), 2, 0).shape == (4, 4)  # round(4.5) == 4
    with pytest.raises(ValueError, match="indices"):
        rasterize(far, [1, 2], (0, 0, 10, 10), 1, 0)


def test_clip_to_slide_warns_about_annotations_outside() -> None:
    inside, partly = Annotation(box(1, 1, 5, 5), "a"), Annotation(box(8, 8, 20, 20), "b")
    outside, touching = Annotation(box(30, 30, 40, 40), "c"), Annotation(box(10, 0, 12, 4), "d")
    with pytest.warns(AnnotationWarning) as caught:
        kept = clip_to_slide([inside, outside, partly, touching], (10, 10), "s.geojson")
    assert [str(w.message) for w in caught] == [
        "s.geojson: 2 annotations lie outside the slide (10 x 10 pixels) and are left out"
    ]
    assert [a.class_name for a in kept] == ["a", "b"]
    assert kept[1].geometry.equals(box(8, 8, 10, 10))
    one_line_data_error(
        lambda: clip_to_slide([outside], (10, 10), "s.geojson"), "s.geojson: all 1 annotations"
    )


# ------------------------------------------------------------------------------------ real MoNuSeg


@pytest.mark.shared_data
def test_monuseg_xml_nuclei_and_instance_map() -> None:
    path = shared_data_or_skip("monuseg", "test", "annotations", "TCGA-2Z-A9J9-01A-01-TS1.xml")
    regions = ET.parse(path).getroot().findall("Annotation/Regions/Region")
    usable = [r for r in regions if len({(v.get("X"), v.get("Y")) for v in r.iter("Vertex")}) >= 3]
    with pytest.warns(AnnotationWarning, match="repaired"):
        nuclei = read_annotations(path)
    assert len(nuclei) == len(usable) > 500
    assert all(a.class_name is None and a.geometry.is_valid for a in nuclei)

    box_ = (0, 0, 1000, 1000)
    instances = rasterize_instances(nuclei, box_, 1)
    # The painter's algorithm one nucleus at a time, each nucleus rasterised on its own over its
    # bounding box (whole pixels) and checked there against shapely away from its outline.
    painted = np.zeros((1000, 1000), dtype=np.int32)
    for k, nucleus in enumerate(nuclei):
        min_x, min_y, max_x, max_y = nucleus.geometry.bounds
        x0, y0 = max(math.floor(min_x) - 1, 0), max(math.floor(min_y) - 1, 0)
        x1, y1 = min(math.ceil(max_x) + 1, 1000), min(math.ceil(max_y) + 1, 1000)
        alone = rasterize_instances([nucleus], (x0, y0, x1 - x0, y1 - y0), 1) > 0
        inside, on_edge = centres_inside(nucleus.geometry, (x0, y0, x1 - x0, y1 - y0), 1)
        assert np.array_equal(alone[~on_edge], inside[~on_edge])
        painted[y0:y1, x0:x1][alone] = k + 1
    assert np.array_equal(instances, painted)
    ids = set(np.unique(instances).tolist()) - {0}
    hidden = [k + 1 for k in range(len(nuclei)) if k + 1 not in ids]  # no pixel left: covered by later ones
    assert len(ids) == len(nuclei) - len(hidden)
