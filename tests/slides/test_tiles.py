"""``pathseg data tiles``: a plain PNG "slide" with hand-drawn GeoJSON, checked pixel by pixel against
shapely, read back through the data layer, a real MoNuSeg image with its XML, and the one-line
errors of bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from pathseg.data.annotations import Annotation, rasterize, read_annotations
from pathseg.data.classes import ClassMap
from pathseg.data.folders import check_samples, discover_dataset
from pathseg.data.io import read_image, read_label_image, write_image
from pathseg.errors import ConfigError
from pathseg.slides.reader import open_slide
from pathseg.slides.tiles import write_annotation_tiles
from tests.conftest import shared_data_or_skip
from tests.test_bad_input import pathseg

SLIDE_SIZE = (256, 192)  # width, height
TUMOUR = [(40.3, 30.6), (120.2, 34.1), (110.7, 100.4), (45.5, 90.2)]
STROMA = [
    (100.4, 60.3),
    (270.0, 70.2),
    (265.0, 150.7),
    (130.1, 140.9),
]  # overlaps the tumour, leaves the slide
SKIPPED = [(180.5, 90.5), (200.5, 90.5), (200.5, 110.5), (180.5, 110.5)]  # QuPath "Ignore*" inside the stroma


def run_pathseg(*args: str | Path) -> tuple[int, str, str]:
    """``pathseg ARGS`` in-process through the real entry point: (exit status, stdout, stderr)."""
    result = pathseg(*args)
    return result.code, result.stdout, result.stderr


def one_line_error(result: tuple[int, str, str], *fragments: str) -> str:
    code, stdout, stderr = result
    assert "Traceback" not in stdout + stderr, stderr
    assert code == 2, stdout + stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def feature(points: list[tuple[float, float]], name: str | None) -> dict:
    ring = [list(p) for p in [*points, points[0]]]
    properties = {"classification": {"name": name, "color": [255, 0, 0]}} if name else {}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": properties,
    }


@pytest.fixture(scope="module")
def slide_png(tmp_path_factory) -> Path:
    """A 256 x 192 PNG with smooth colours (no mpp: plain images state none)."""
    width, height = SLIDE_SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([xs % 256, (ys * 3) % 256, (xs + 2 * ys) % 256], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("slide") / "case 7.png"
    write_image(path, rgb)
    return path


def write_geojson(path: Path, features: list[dict]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def expected_labels(origin: tuple[int, int], tile: int, downsample: float, layers, fill: int) -> tuple:
    """Labels painted in order from shapely's point-in-polygon test at the tile's pixel centres,
    and the pixels whose centre lies on an outline (where the edge rule decides)."""
    x0, y0 = origin
    centres = (np.arange(tile) + 0.5) * downsample
    cx, cy = np.meshgrid(x0 + centres, y0 + centres)
    labels = np.full((tile, tile), fill, dtype=np.int64)
    on_edge = np.zeros((tile, tile), dtype=bool)
    for points, value in layers:
        polygon = Polygon(points)
        labels[shapely.contains_xy(polygon, cx, cy)] = value
        on_edge |= shapely.intersects_xy(polygon.boundary, cx, cy)
    labels[(cx >= SLIDE_SIZE[0]) | (cy >= SLIDE_SIZE[1])] = 255
    return labels, on_edge


def origin_of(path: Path) -> tuple[int, int]:
    match = re.fullmatch(r"case 7_x(\d+)_y(\d+)", path.stem)
    assert match, path.name
    return int(match.group(1)), int(match.group(2))


# ------------------------------------------------------------------------------- sparse annotation


def test_sparse_tiles_match_an_independent_rasterisation(slide_png: Path, tmp_path: Path) -> None:
    annotations = write_geojson(
        tmp_path / "drawn.geojson",
        [feature(TUMOUR, "Tumor"), feature(STROMA, "stroma"), feature(SKIPPED, "Ignore*")],
    )
    out = tmp_path / "tiles"
    code, stdout, stderr = run_pathseg(
        "data", "tiles", slide_png, "--annotations", annotations, "--mpp", "1.0", "--slide-mpp", "0.5",
        "--tile", "32", "--stride", "32", "--classes", "tumor=1,stroma=2", "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert stderr == ""  # the stroma reaches past the slide's edge: clipped without a warning
    assert "train with: pathseg train --train" in stdout and "data.ignore_values=[255]" in stdout

    # Tiles of 32 px at downsample 2 span 64 level-0 px. The annotations' box, clipped to the slide,
    # is x 40.3..256, y 30.6..150.7: x starts 40, 104, 168, then 232 moved back to 256 - 64 = 192.
    images = sorted((out / "images").iterdir())
    assert sorted(origin_of(p) for p in images) == [(x, y) for x in (40, 104, 168, 192) for y in (30, 94)]

    class_map = ClassMap.from_config({"tumor": 1, "stroma": 2}, ignore_values=[255])
    samples = discover_dataset(out)
    check_samples(samples, class_map)  # what `data check` does, with the ignore value declared
    source = read_image(slide_png)
    layers = [(TUMOUR, 0), (STROMA, 1), (SKIPPED, 255)]
    totals = np.zeros(3, dtype=np.int64)
    for sample in samples:
        x, y = origin_of(sample.image)
        labels = class_map.encode(read_label_image(sample.mask), sample.mask)
        expected, on_edge = expected_labels((x, y), 32, 2.0, layers, fill=255)
        assert np.array_equal(labels[~on_edge], expected[~on_edge]), sample.mask.name
        assert on_edge.mean() < 0.05
        # The image is the same box: 2 x 2 means of the source pixels.
        crop = source[y : y + 64, x : x + 64].astype(np.float64)
        means = crop.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
        assert np.abs(read_image(sample.image) - means).max() <= 1.0
        totals += [(labels == 0).sum(), (labels == 1).sum(), (labels == 255).sum()]

    summary = json.loads((out / "tiles.json").read_text())
    assert (
        summary["tiles"] == 8 and summary["downsample"] == 2.0 and summary["classes"] == ["tumor", "stroma"]
    )
    assert summary["labelled_pixels"] == {"tumor": totals[0], "stroma": totals[1]}
    assert summary["unlabelled_pixels"] == totals[2]


def test_background_mode_passes_data_check(slide_png: Path, tmp_path: Path) -> None:
    annotations = write_geojson(tmp_path / "a.geojson", [feature(TUMOUR, "tumour"), feature(STROMA, None)])
    out = tmp_path / "tiles"
    code, stdout, stderr = run_pathseg(
        "data", "tiles", slide_png, "--annotations", annotations, "--mpp", "0.5", "--slide-mpp", "0.5",
        "--tile", "96", "--unannotated", "background", "--default-class", "stroma", "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    # Without --classes: background first, then the classes in order of appearance.
    assert '--classes "background=0,tumour=1,stroma=2"' in stdout
    code, stdout, stderr = run_pathseg("data", "check", out, "--classes", "background=0,tumour=1,stroma=2")
    assert code == 0 and "image/mask pairs, all readable and consistent" in stdout, stdout + stderr
    for sample in discover_dataset(out):
        values = read_label_image(sample.mask)
        expected, on_edge = expected_labels(
            origin_of(sample.image), 96, 1.0, [(TUMOUR, 1), (STROMA, 2)], fill=0
        )
        assert np.array_equal(values[~on_edge], expected[~on_edge])


def test_min_labelled_and_class_map_checks(slide_png: Path, tmp_path: Path) -> None:
    class_map = ClassMap.from_config({"tumour": 1}, ignore_values=[255])
    annotations = [Annotation(Polygon(TUMOUR), "tumour")]
    settings = {"mpp": 0.5, "tile": 24, "stride": None, "fill_index": 255}
    with open_slide(slide_png, mpp=0.5) as slide:
        everything = write_annotation_tiles(
            slide, annotations, [0], class_map, out_dir=tmp_path / "a", **settings
        )
        mostly = write_annotation_tiles(
            slide, annotations, [0], class_map, out_dir=tmp_path / "b", min_labelled=0.5, **settings
        )
        shares = {}
        for path in everything:
            labels = rasterize(annotations, [0], (*origin_of(path), 24, 24), 1.0, 255)
            shares[path.name] = np.mean(labels != 255)
        assert [p.name for p in mostly] == [name for name, share in shares.items() if share > 0.5]
        assert 0 < len(mostly) < len(everything)
        without_ignore = ClassMap.from_config({"tumour": 1})
        with pytest.raises(ConfigError, match="stored value for unlabelled pixels"):
            write_annotation_tiles(
                slide, annotations, [0], without_ignore, out_dir=tmp_path / "c", **settings
            )


# ------------------------------------------------------------------------------------- bad inputs


def test_bad_inputs_end_in_one_line(slide_png: Path, tmp_path: Path) -> None:
    drawn = write_geojson(tmp_path / "drawn.geojson", [feature(TUMOUR, "Tumor"), feature(STROMA, "Necrosis")])
    base = ["data", "tiles", slide_png, "--annotations", drawn, "--mpp", "1", "--out", tmp_path / "o"]
    one_line_error(
        run_pathseg(*base, "--slide-mpp", "0.5", "--classes", "background=0,tumor=1"),
        str(drawn),
        "class 'Necrosis' is not in the class map (classes: background, tumor)",
    )
    one_line_error(run_pathseg(*base), str(slide_png), "no microns-per-pixel", "--slide-mpp")

    far = [(1000.5, 1000.5), (1100.5, 1000.5), (1100.5, 1100.5)]
    outside = write_geojson(tmp_path / "far.geojson", [feature(far, "Tumor"), feature(far, "Tumor")])
    one_line_error(
        run_pathseg("data", "tiles", slide_png, "--annotations", outside, "--mpp", "1", "--slide-mpp", "0.5",
                    "--out", tmp_path / "o"),
        str(outside), "all 2 annotations lie outside the slide (256 x 192 pixels)",
    )  # fmt: skip
    unclassified = write_geojson(tmp_path / "none.geojson", [feature(TUMOUR, None), feature(STROMA, "Tumor")])
    one_line_error(
        run_pathseg("data", "tiles", slide_png, "--annotations", unclassified, "--mpp", "1",
                    "--slide-mpp", "0.5", "--classes", "tumor=1", "--out", tmp_path / "o"),
        "1 annotations have no class; pass --default-class",
    )  # fmt: skip
    one_line_error(
        run_pathseg(
            *base, "--slide-mpp", "0.5", "--classes", "tumor=1,necrosis=2", "--unannotated", "background"
        ),
        "--unannotated background needs a class named background",
    )
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------- MoNuSeg


@pytest.mark.shared_data
def test_monuseg_image_with_its_xml(tmp_path: Path) -> None:
    image = shared_data_or_skip("monuseg", "test", "images", "TCGA-2Z-A9J9-01A-01-TS1.webp")
    xml = shared_data_or_skip("monuseg", "test", "annotations", "TCGA-2Z-A9J9-01A-01-TS1.xml")
    out = tmp_path / "tiles"
    code, stdout, stderr = run_pathseg(
        "data", "tiles", image, "--annotations", xml, "--mpp", "0.25", "--slide-mpp", "0.25", "--tile", "512",
        "--unannotated", "background", "--default-class", "nucleus", "--classes", "background=0,nucleus=1",
        "--out", out,
    )  # fmt: skip
    assert code == 0, stdout + stderr
    assert stderr.startswith("warning: ") and "repaired" in stderr  # the XML's self-intersecting outlines
    code, stdout, stderr = run_pathseg("data", "check", out, "--classes", "background=0,nucleus=1")
    assert code == 0, stdout + stderr

    with pytest.warns(UserWarning):
        nuclei = read_annotations(xml)
    whole = rasterize(nuclei, [1] * len(nuclei), (0, 0, 1000, 1000), 1.0, 0)
    source = read_image(image)
    samples = discover_dataset(out)
    origins = sorted(tuple(map(int, re.findall(r"_x(\d+)_y(\d+)$", s.stem)[0])) for s in samples)
    assert origins == [(0, 0), (0, 488), (488, 0), (488, 488)]  # 1000 px: the last tiles moved inside
    nucleus_pixels = 0
    for sample in samples:
        x, y = map(int, re.findall(r"_x(\d+)_y(\d+)$", sample.stem)[0])
        mask = read_label_image(sample.mask)
        assert np.array_equal(mask, whole[y : y + 512, x : x + 512])
        assert np.array_equal(read_image(sample.image), source[y : y + 512, x : x + 512])
        nucleus_pixels += int((mask == 1).sum())
    summary = json.loads((out / "tiles.json").read_text())
    assert summary["labelled_pixels"]["nucleus"] == nucleus_pixels
    assert 0.05 < nucleus_pixels / (4 * 512 * 512) < 0.5
