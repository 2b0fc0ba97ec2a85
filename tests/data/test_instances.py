"""Nucleus instance data: label maps, polygon files and binary masks found, loaded and checked."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from pathseg.data import instances as inst
from pathseg.data.annotations import AnnotationWarning
from pathseg.data.instances import (
    MAX_INSTANCES,
    InstanceSample,
    check_instance_samples,
    discover_instance_dataset,
    load_instances,
    write_instance_map,
)
from pathseg.data.io import read_label_image, write_image, write_mask
from pathseg.errors import DataError
from tests.conftest import shared_data_or_skip
from tests.data.helpers import rgb

Square = list[tuple[float, float]]


def one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def square(x0: float, y0: float, x1: float, y1: float) -> Square:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def imagescope_xml(layers: list[list[Square]]) -> str:
    """An ImageScope file with one Annotation per entry of ``layers``, one Region per polygon."""
    region_id = 0
    parts = ['<?xml version="1.0"?>\n<Annotations MicronsPerPixel="0.25">']
    for layer_id, polygons in enumerate(layers, start=1):
        parts.append(f'<Annotation Id="{layer_id}" Name="" Type="4"><Regions>')
        for polygon in polygons:
            region_id += 1
            vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in polygon)
            parts.append(f'<Region Id="{region_id}" NegativeROA="0"><Vertices>{vertices}</Vertices></Region>')
        parts.append("</Regions></Annotation>")
    parts.append("</Annotations>\n")
    return "\n".join(parts)


def polygon_sample(
    tmp_path: Path, layers: list[list[Square]], size: tuple[int, int] = (20, 20)
) -> InstanceSample:
    image = tmp_path / "images" / "a.png"
    write_image(image, rgb(*size))
    xml = tmp_path / "annotations" / "a.xml"
    xml.parent.mkdir(parents=True, exist_ok=True)
    xml.write_text(imagescope_xml(layers))
    return InstanceSample("a", image, xml, "polygons")


def file_sample(tmp_path: Path, labels: np.ndarray, kind: str, name: str = "a.png") -> InstanceSample:
    image = tmp_path / "images" / "a.png"
    write_image(image, rgb(*labels.shape[:2]))
    path = tmp_path / ("instances" if kind == "instances" else "masks") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if labels.ndim == 3:
        Image.fromarray(labels).save(path)
    else:
        write_mask(path, labels)
    return InstanceSample("a", image, path, kind)


# ------------------------------------------------------------------ polygons


# ImageScope XML puts pixel (i, j)'s centre at (j, i), GeoJSON at (j + 0.5, i + 0.5): the squares'
# edges are whole numbers (the top-left fill rule gives both the same pixels), the triangle's
# hypotenuse x + y = 20.5 holds no centre of either kind but gives each a different staircase.
SQUARE = square(2, 2, 8, 8)
TRIANGLE = [(10, 2), (18.5, 2), (10, 10.5)]  # hypotenuse x + y = 20.5
OTHER_LAYER = square(3, 12, 7, 17)


def expected_hand_made(centres_at_whole_numbers: bool) -> np.ndarray:
    expected = np.zeros((20, 20), np.int32)
    expected[2:8, 2:8] = 1
    i, j = np.mgrid[0:20, 0:20]
    # Centre (j, i) inside when i + j < 20.5; centre (j + .5, i + .5) when i + j + 1 < 20.5.
    expected[(j >= 10) & (i >= 2) & (i + j <= (20 if centres_at_whole_numbers else 19))] = 2
    expected[12:17, 3:7] = 3
    return expected


def test_imagescope_polygons_rasterise_exactly(tmp_path: Path) -> None:
    sample = polygon_sample(tmp_path, [[SQUARE, TRIANGLE], [OTHER_LAYER]])
    labels = load_instances(sample)
    assert labels.dtype == np.int32 and labels.shape == (20, 20)
    np.testing.assert_array_equal(labels, expected_hand_made(centres_at_whole_numbers=True))


def test_geojson_polygons_have_vertices_on_pixel_corners(tmp_path: Path) -> None:
    image = tmp_path / "images" / "a.png"
    write_image(image, rgb(20, 20))
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            "properties": {"objectType": "detection"},
        }
        for ring in (SQUARE, TRIANGLE, OTHER_LAYER)
    ]
    path = tmp_path / "annotations" / "a.geojson"
    path.parent.mkdir()
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    labels = load_instances(InstanceSample("a", image, path, "polygons"), shape=(20, 20))
    np.testing.assert_array_equal(labels, expected_hand_made(centres_at_whole_numbers=False))


@pytest.mark.parametrize("b_first", [False, True])
def test_later_polygon_owns_the_overlap(tmp_path: Path, b_first: bool) -> None:
    a, b = square(2, 2, 10, 10), square(6, 6, 14, 14)
    labels = load_instances(polygon_sample(tmp_path, [[b, a] if b_first else [a, b]]))
    expected = np.zeros((20, 20), np.int32)
    rows_a = cols_a = slice(2, 10)
    rows_b = cols_b = slice(6, 14)
    if b_first:  # b is nucleus 1, a (later) is 2 and takes the overlap
        expected[rows_b, cols_b] = 1
        expected[rows_a, cols_a] = 2
    else:
        expected[rows_a, cols_a] = 1
        expected[rows_b, cols_b] = 2
    np.testing.assert_array_equal(labels, expected)
    assert (labels[6:10, 6:10] == 2).all()


def test_covered_polygon_vanishes_and_is_counted(tmp_path: Path) -> None:
    sample = polygon_sample(tmp_path, [[square(4, 4, 6, 6), square(2, 2, 10, 10), square(12, 12, 15, 15)]])
    labels = load_instances(sample)
    # ids stay consecutive: the covered first square leaves no gap
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert (labels[2:10, 2:10] == 1).all() and (labels[12:15, 12:15] == 2).all()
    summary = check_instance_samples([sample])
    assert summary["nuclei"] == 2 and summary["empty_polygons"] == 1


def test_polygon_partly_outside_is_clipped(tmp_path: Path) -> None:
    labels = load_instances(polygon_sample(tmp_path, [[square(15, 16, 25, 30), square(-5, -5, 3, 2)]]))
    expected = np.zeros((20, 20), np.int32)
    expected[16:20, 15:20] = 1
    expected[0:2, 0:3] = 2
    np.testing.assert_array_equal(labels, expected)


def test_polygon_entirely_outside_names_file_and_polygon(tmp_path: Path) -> None:
    sample = polygon_sample(tmp_path, [[SQUARE, square(30, 31, 40, 41)]])
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    message = one_line(exc)
    assert message.startswith(str(sample.instances))
    assert "polygon 2" in message and "30..40" in message and "31..41" in message
    assert "20x20" in message


def test_truncated_xml_is_one_line_naming_the_file(tmp_path: Path) -> None:
    sample = polygon_sample(tmp_path, [[SQUARE, TRIANGLE]])
    text = sample.instances.read_text()
    sample.instances.write_text(text[: len(text) // 2])
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    assert one_line(exc).startswith(f"{sample.instances}: not valid XML")


def test_polygon_count_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 65536 polygons make a slow test; the limit is the module constant, so lower it.
    monkeypatch.setattr(inst, "MAX_INSTANCES", 2)
    sample = polygon_sample(tmp_path, [[square(1, 1, 3, 3), square(5, 5, 7, 7), square(9, 9, 11, 11)]])
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    assert one_line(exc).startswith(f"{sample.instances}: 3 polygons is more than the 2 nuclei")


# ------------------------------------------------------------------ label maps and binary masks


def two_blobs(value: int = 255) -> np.ndarray:
    mask = np.zeros((12, 16), np.uint8)
    mask[1:4, 1:5] = value
    mask[6:10, 8:14] = value
    return mask


def test_binary_mask_splits_into_connected_components(tmp_path: Path) -> None:
    mask = two_blobs()
    mask[4, 5] = 255  # touches the first blob at a corner only: 8-connected, same object
    labels = load_instances(file_sample(tmp_path, mask, "binary"))
    assert labels.dtype == np.int32
    assert labels.max() == 2
    assert (labels[1:4, 1:5] == 1).all() and labels[4, 5] == 1 and (labels[6:10, 8:14] == 2).all()
    assert ((labels > 0) == (mask > 0)).all()


def test_binary_mask_in_instances_folder_is_refused(tmp_path: Path) -> None:
    sample = file_sample(tmp_path, two_blobs(), "instances")
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    message = one_line(exc)
    assert message.startswith(str(sample.instances))
    assert "looks like a binary mask (one value, 2 separate objects)" in message and "masks/" in message


def test_instance_map_in_masks_folder_is_refused(tmp_path: Path) -> None:
    labels = two_blobs(1)
    labels[6:10, 8:14] = 2
    sample = file_sample(tmp_path, labels, "binary")
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    assert "has 2 (1, 2): put instance maps in instances/" in one_line(exc)


def test_instance_map_relabelled_consecutively(tmp_path: Path) -> None:
    labels = np.zeros((12, 16), np.uint16)
    labels[0:3, 0:3] = 700
    labels[5:8, 5:8] = 5
    labels[9:12, 0:2] = 5  # one nucleus in two pieces stays one nucleus
    labels[9:12, 10:16] = 300
    out = load_instances(file_sample(tmp_path, labels, "instances"), shape=(12, 16))
    assert out.dtype == np.int32
    expected = np.select([labels == 5, labels == 300, labels == 700], [1, 2, 3], 0)
    np.testing.assert_array_equal(out, expected)


def test_single_nucleus_map_is_not_mistaken_for_a_binary_mask(tmp_path: Path) -> None:
    labels = np.zeros((12, 16), np.uint8)
    labels[2:6, 2:6] = 1
    assert load_instances(file_sample(tmp_path, labels, "instances")).max() == 1


def test_rgb_instance_map_is_refused(tmp_path: Path) -> None:
    colours = np.zeros((12, 16, 3), np.uint8)
    colours[2:6, 2:6] = (255, 0, 0)
    colours[7:9, 7:9] = (0, 255, 0)
    sample = file_sample(tmp_path, colours, "instances")
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    assert one_line(exc).startswith(f"{sample.instances}: instance maps must be single-channel")


def test_size_mismatch_names_both(tmp_path: Path) -> None:
    sample = file_sample(tmp_path, two_blobs(1)[:10, :12], "instances")
    with pytest.raises(DataError) as exc:
        load_instances(sample, shape=(12, 16))
    assert one_line(exc) == f"{sample.instances}: instance map is 12x10 but image a.png is 16x12"


def test_too_many_ids_in_a_label_map(tmp_path: Path) -> None:
    path = tmp_path / "instances" / "a.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, np.arange(1, 300 * 300 + 1, dtype=np.uint32).reshape(300, 300))
    sample = InstanceSample("a", tmp_path / "unused.png", path, "instances")
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    assert one_line(exc).startswith(f"{path}: 90000 ids is more than the 65535 nuclei")


def test_too_many_objects_in_a_binary_mask(tmp_path: Path) -> None:
    mask = np.zeros((600, 600), np.uint8)
    mask[::2, ::2] = 255  # 300 x 300 isolated pixels: 90000 objects even with 8-connectivity
    sample = file_sample(tmp_path, mask, "binary")
    with pytest.raises(DataError) as exc:
        load_instances(sample)
    assert one_line(exc).startswith(f"{sample.instances}: 90000 connected objects is more than")


def test_write_instance_map_round_trip_and_limit(tmp_path: Path) -> None:
    labels = np.zeros((10, 10), np.int32)
    labels[2:5, 2:5] = 300
    labels[6:9, 6:9] = MAX_INSTANCES
    write_instance_map(tmp_path / "a.png", labels)
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I;16")
    np.testing.assert_array_equal(read_label_image(tmp_path / "a.png"), labels)
    labels[0, 0] = MAX_INSTANCES + 1
    with pytest.raises(DataError) as exc:
        write_instance_map(tmp_path / "b.png", labels)
    assert one_line(exc).startswith(f"{tmp_path / 'b.png'}: instance id 65536 does not fit")
    assert not (tmp_path / "b.png").exists()


# ------------------------------------------------------------------ discovery and checks


def mixed_folder(root: Path) -> Path:
    """a: all three sources; b: polygons and mask; c: mask only (12 x 16 images)."""
    for stem in ("a", "b", "c"):
        write_image(root / "images" / f"{stem}.png", rgb(12, 16))
        write_mask(root / "masks" / f"{stem}.png", two_blobs())
    for stem in ("a", "b"):
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"{stem}.xml").write_text(imagescope_xml([[square(1, 1, 5, 5)]]))
    labels = two_blobs(1)
    labels[6:10, 8:14] = 2
    write_mask(root / "instances" / "a.png", labels)
    (root / "annotations" / "notes.txt").write_text("ignored")
    return root


def test_discovery_prefers_instances_then_polygons_then_binary(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path / "split")
    samples = discover_instance_dataset(root)
    assert [(s.stem, s.kind, s.instances.relative_to(root).as_posix()) for s in samples] == [
        ("a", "instances", "instances/a.png"),
        ("b", "polygons", "annotations/b.xml"),
        ("c", "binary", "masks/c.png"),
    ]
    assert [s.approximate for s in samples] == [False, False, True]
    assert discover_instance_dataset(root / "images") == samples


def test_image_without_any_source_is_named(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path)
    write_image(root / "images" / "d.png", rgb(12, 16))
    with pytest.raises(DataError) as exc:
        discover_instance_dataset(root)
    message = one_line(exc)
    assert message.startswith(f"{root / 'images' / 'd.png'}: no instance map, polygon file or mask")
    assert "instances/, annotations/, masks/" in message


def test_label_file_without_image_is_named(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path)
    orphan = root / "annotations" / "e.xml"
    orphan.write_text(imagescope_xml([[SQUARE]]))
    with pytest.raises(DataError) as exc:
        discover_instance_dataset(root)
    assert one_line(exc).startswith(f"{orphan}: has no image with stem 'e'")


def test_folder_without_label_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", rgb(4, 4))
    with pytest.raises(DataError) as exc:
        discover_instance_dataset(tmp_path)
    message = one_line(exc)
    assert message.startswith(f"{tmp_path}: no instances/, annotations/ or masks/ folder")


def test_two_polygon_files_with_one_stem(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path)
    (root / "annotations" / "b.geojson").write_text("{}")
    with pytest.raises(DataError) as exc:
        discover_instance_dataset(root)
    assert "share the stem 'b'" in one_line(exc)


def test_check_summarises_and_reports_the_first_problem(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path)
    summary = check_instance_samples(discover_instance_dataset(root))
    assert summary == {
        "images": 3,
        "nuclei": 2 + 1 + 2,
        "per_kind": {"instances": 1, "polygons": 1, "binary": 1},
        "approximate": 1,
        "empty_polygons": 0,
    }
    write_mask(root / "masks" / "c.png", two_blobs()[:, :10])
    (root / "annotations" / "b.xml").write_text("<Annotations><Annot")
    with pytest.raises(DataError) as exc:
        check_instance_samples(discover_instance_dataset(root))
    message = one_line(exc)
    assert message.startswith(f"{root / 'annotations' / 'b.xml'}: not valid XML")
    assert message.endswith("(1 more samples have problems)")


# ------------------------------------------------------------------ MoNuSeg


@pytest.mark.slow
@pytest.mark.shared_data
def test_monuseg_polygons_agree_with_released_masks() -> None:
    from pathseg.data.annotations import rasterize_instances, read_annotations

    root = shared_data_or_skip("monuseg", "train")
    samples = [s for s in discover_instance_dataset(root) if s.kind == "polygons"]
    assert len(samples) == 13
    for number, sample in enumerate(samples):
        with warnings.catch_warnings():
            # MoNuSeg outlines retrace themselves: most polygons are repaired, as reported.
            warnings.simplefilter("ignore")
            labels = load_instances(sample, shape=(1000, 1000))
        ids = np.unique(labels)
        assert ids[0] == 0 and np.array_equal(ids[1:], np.arange(1, labels.max() + 1))
        assert labels.max() >= 250, sample.stem
        mask = read_label_image(root / "masks" / f"{sample.stem}.png") != 0
        painted = labels > 0
        iou = (painted & mask).sum() / (painted | mask).sum()
        assert iou > 0.99, (sample.stem, iou)
        if number < 2:
            # With vertices on pixel corners (GeoJSON's convention) every nucleus moves half a
            # pixel and the agreement drops well below: the XML convention is what MoNuSeg means.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                corners = rasterize_instances(read_annotations(sample.instances), (0, 0, 1000, 1000), 1)
            corner_iou = ((corners > 0) & mask).sum() / ((corners > 0) | mask).sum()
            assert corner_iou < 0.98, (sample.stem, corner_iou, iou)


# ------------------------------------------------------------------ command line

runner = CliRunner()


def run_main(args: list[str]) -> tuple[int, str]:
    """The real entry point (with its one-line error handling): exit code and stderr."""
    from pathseg import cli
    from pathseg.cli.common import err_console

    stderr = io.StringIO()
    old_argv, sys.argv = sys.argv, ["pathseg", *args]
    code = 0
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            err_console.file = stderr
            try:
                cli.main()
            except SystemExit as exit_:
                code = exit_.code or 0
    finally:
        sys.argv = old_argv
        err_console.file = None
    return code, stderr.getvalue()


def test_cli_data_check_instances_summary(tmp_path: Path) -> None:
    from pathseg.cli import app

    root = mixed_folder(tmp_path / "split")
    result = runner.invoke(app, ["data", "check", str(root), "--instances"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "3 images, 5 nuclei" in lines[0]
    assert "instance maps 1, polygons 1, binary masks 1" in lines[0]
    assert "1 approximate" in lines[0]


def test_cli_data_check_instances_broken_folder_is_one_line(tmp_path: Path) -> None:
    root = mixed_folder(tmp_path)
    write_mask(root / "instances" / "b.png", two_blobs())  # a binary mask where ids are expected
    code, stderr = run_main(["data", "check", str(root), "--instances"])
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, stderr
    assert "b.png" in lines[0] and "looks like a binary mask" in lines[0]
    assert "Traceback" not in stderr


def test_quiet_reload_drops_polygon_repair_warnings(tmp_path: Path) -> None:
    bow_tie = [(2, 2), (10, 10), (10, 2), (2, 10)]  # self-intersecting: repaired with a warning
    sample = polygon_sample(tmp_path, [[bow_tie]])
    with pytest.warns(AnnotationWarning, match="repaired"):
        loud = load_instances(sample)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = load_instances(sample, quiet=True)
    np.testing.assert_array_equal(loud, quiet)
    assert loud.max() >= 1
