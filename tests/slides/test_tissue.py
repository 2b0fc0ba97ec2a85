"""Tissue detection: synthetic pictures with known tissue, the mask geometry, GeoJSON, real slides."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from skimage.draw import ellipse, polygon

from pathseg.errors import ConfigError
from pathseg.slides.reader import open_slide
from pathseg.slides.tissue import TissueMask, TissueSettings, detect_tissue, tissue_from_rgb
from tests.conftest import shared_data_or_skip

GLASS = (240, 240, 238)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def glass_picture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Near-white glass with sensor noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 2.0, (*shape, 3))
    return np.clip(np.array(GLASS) + noise, 0, 255).astype(np.uint8)


def paint_tissue(rgb: np.ndarray, where: np.ndarray, seed: int = 0) -> None:
    """H&E-like pink stroma with darker purple nuclei dots where ``where`` is True."""
    rng = np.random.default_rng(seed)
    pink = np.array([225, 150, 195]) + rng.normal(0, 8, (*where.shape, 3))
    nuclei = rng.random(where.shape) < 0.08
    pink[nuclei] = np.array([110, 70, 150])
    rgb[where] = np.clip(pink[where], 0, 255).astype(np.uint8)


def blobs_picture() -> tuple[np.ndarray, np.ndarray]:
    """A 300 x 400 picture with two tissue blobs (one with a 40 px hole) and its truth."""
    truth = np.zeros((300, 400), bool)
    truth[ellipse(100, 120, 70, 90, shape=truth.shape)] = True
    truth[ellipse(200, 290, 80, 60, shape=truth.shape, rotation=0.4)] = True
    truth[ellipse(200, 290, 20, 20, shape=truth.shape)] = False  # a hole of ~1250 px
    rgb = glass_picture(truth.shape)
    paint_tissue(rgb, truth)
    return rgb, truth


# No micron scale in these pictures: areas are in level-0 pixels (downsample 1).
SMALL_PICTURE = TissueSettings(min_area_px0=200)


# --------------------------------------------------------------------------- detection


def test_blobs_on_glass_are_found():
    rgb, truth = blobs_picture()
    tissue = tissue_from_rgb(rgb, 1.0, SMALL_PICTURE)
    assert tissue.mask.shape == truth.shape and tissue.mask.dtype == bool
    assert iou(tissue.mask, truth) > 0.9
    assert not tissue.mask[200, 290]  # the hole is larger than min area: kept open


def test_detection_through_a_slide_file(tmp_path):
    rgb, truth = blobs_picture()
    path = tmp_path / "blobs.png"
    Image.fromarray(rgb).save(path)
    with open_slide(path, mpp=2.0) as slide:
        # 8 um per mask pixel at 2 um per picture pixel: downsample 4, a 75 x 100 mask.
        tissue = detect_tissue(slide, TissueSettings(min_area_um2=3000))
    assert tissue.downsample == 4.0 and tissue.mask.shape == (75, 100)
    truth_small = truth.reshape(75, 4, 100, 4).mean(axis=(1, 3)) > 0.5
    assert iou(tissue.mask, truth_small) > 0.9


def test_specks_vanish_and_small_holes_fill_by_area():
    rgb, truth = blobs_picture()
    specks = np.zeros_like(truth)
    for y, x in [(30, 330), (260, 40), (270, 150)]:
        specks[y : y + 8, x : x + 8] = True  # 64 px each, far from the blobs
    pinhole = np.zeros_like(truth)
    pinhole[94:106, 114:126] = True  # a 144 px gap in the first blob
    paint_tissue(rgb, specks, seed=1)
    rgb[pinhole] = glass_picture(truth.shape, seed=2)[pinhole]

    kept = tissue_from_rgb(rgb, 1.0, TissueSettings(min_area_px0=20))
    assert kept.mask[specks].mean() > 0.9  # visible and above the area limit: kept
    assert kept.mask[pinhole].mean() < 0.5  # the closing narrows it, nothing fills it
    dropped = tissue_from_rgb(rgb, 1.0, TissueSettings(min_area_px0=200))
    assert not dropped.mask[specks].any()
    assert dropped.mask[pinhole].all()
    assert iou(dropped.mask, truth) > 0.9


def test_all_glass_gives_an_empty_mask():
    for seed in range(3):
        assert not tissue_from_rgb(glass_picture((200, 300), seed), 1.0, SMALL_PICTURE).mask.any()
    # Slightly tinted glass with JPEG-like chroma noise is still glass.
    rng = np.random.default_rng(5)
    tinted = np.clip(np.array([236, 240, 246]) + rng.normal(0, 4, (200, 300, 3)), 0, 255).astype(np.uint8)
    assert not tissue_from_rgb(tinted, 1.0, SMALL_PICTURE).mask.any()
    # What the saturation floor and the brightness test prevent: Otsu splitting the noise.
    unguarded = TissueSettings(min_area_px0=200, min_saturation=0, max_brightness=None)
    assert tissue_from_rgb(glass_picture((200, 300)), 1.0, unguarded).mask.mean() > 0.5


def test_tissue_covering_everything_is_not_split_by_otsu():
    rgb = glass_picture((200, 300))
    paint_tissue(rgb, np.ones((200, 300), bool))
    # The right half stained half as strongly: saturation ~0.17 against ~0.33, and no glass.
    rgb[:, 150:] = 255 - (255 - rgb[:, 150:].astype(np.int16)) // 2
    assert tissue_from_rgb(rgb, 1.0, SMALL_PICTURE).mask.mean() > 0.99
    # Without the guard (any lower class counts as glass) Otsu throws the pale half away.
    unguarded = TissueSettings(min_area_px0=200, glass_saturation=0.99)
    assert tissue_from_rgb(rgb, 1.0, unguarded).mask.mean() < 0.6


def test_settings_are_checked():
    with pytest.raises(ConfigError, match="mpp"):
        TissueSettings(mpp=0)
    with pytest.raises(ConfigError, match="max_brightness"):
        TissueSettings(max_brightness=2)


# --------------------------------------------------------------------------- mask geometry


def test_fraction_and_area_on_hand_worked_boxes():
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = mask[1, 0] = True  # level-0 squares [10, 20) x [10, 20) and [0, 10) x [10, 20)
    tissue = TissueMask(mask, 10.0)
    assert tissue.area_px0() == 200.0
    assert tissue.fraction((10, 10, 10, 10)) == pytest.approx(1.0)
    assert tissue.fraction((15, 15, 10, 10)) == pytest.approx(0.25)  # a 5 x 5 corner of pixel (1, 1)
    assert tissue.fraction((0, 0, 40, 40)) == pytest.approx(200 / 1600)
    assert tissue.fraction((0, 10, 20, 5)) == pytest.approx(1.0)
    assert tissue.fraction((-10, 10, 20, 10)) == pytest.approx(0.5)  # half outside the slide
    assert tissue.fraction((100, 100, 10, 10)) == 0.0
    assert tissue.fraction((5, 12, 10, 4)) == pytest.approx(1.0)  # across the edge of two tissue pixels


def rasterise(features: list[dict], shape: tuple[int, int], downsample: float) -> np.ndarray:
    """Pixel-centre rasterisation of Polygon features: pixel (i, j) is in when the level-0 point
    ((j + 0.5) d, (i + 0.5) d) is; skimage.draw.polygon tests the point (i, j), hence the shift."""
    out = np.zeros(shape, bool)
    for feature in features:
        assert feature["geometry"]["type"] == "Polygon"
        rings = [
            np.asarray(ring, dtype=float) / downsample - 0.5 for ring in feature["geometry"]["coordinates"]
        ]
        shell = np.zeros(shape, bool)
        shell[polygon(rings[0][:, 1], rings[0][:, 0], shape)] = True
        for hole in rings[1:]:
            shell[polygon(hole[:, 1], hole[:, 0], shape)] = False
        out |= shell
    return out


def test_geojson_polygons_rasterise_back_to_the_mask(tmp_path):
    rgb, _ = blobs_picture()
    small = rgb.reshape(150, 2, 200, 2, 3).mean(axis=(1, 3)).astype(np.uint8)
    tissue = tissue_from_rgb(small, 2.5, TissueSettings(min_area_px0=300))
    features = tissue.to_geojson_features()
    assert len(features) == 2
    assert sum(len(f["geometry"]["coordinates"]) - 1 for f in features) == 1  # one hole
    assert features[0]["properties"]["objectType"] == "annotation"
    assert features[0]["properties"]["classification"]["name"] == "Tissue"
    assert iou(rasterise(features, tissue.mask.shape, 2.5), tissue.mask) > 0.98

    png, geojson = tmp_path / "out" / "tissue.png", tmp_path / "out" / "tissue.geojson"
    tissue.save(png, geojson)
    np.testing.assert_array_equal(np.asarray(Image.open(png)), tissue.mask.astype(np.uint8) * 255)
    collection = json.loads(geojson.read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"] == features


def test_geojson_of_an_empty_mask_is_empty():
    assert TissueMask(np.zeros((5, 5), bool), 4.0).to_geojson_features() == []


# --------------------------------------------------------------------------- real slides


@pytest.mark.shared_data
def test_cmu_slide_tissue_leaves_its_glass_border():
    with open_slide(shared_data_or_skip("wsi", "cmu-1-small-region.svs")) as slide:
        tissue = detect_tissue(slide)
    # 8 um per mask pixel at 0.499 um: downsample 16.03; the strip of tissue runs top to bottom
    # with glass on the left, right and top edges.
    assert tissue.downsample == pytest.approx(8 / 0.499)
    assert tissue.mask.shape == (186, 139)
    assert 0.2 < tissue.mask.mean() < 0.6
    assert not tissue.mask[:, :10].any() and not tissue.mask[:, -10:].any() and not tissue.mask[:5].any()
    assert tissue.fraction((900, 2000, 400, 400)) > 0.9  # the middle of the strip
    assert tissue.fraction((0, 0, 400, 400)) == 0.0


@pytest.mark.shared_data
def test_tcga_slide_tissue_without_mpp():
    with open_slide(shared_data_or_skip("wsi", "tcga-cr-7395-01a-01-ts1.svs")) as slide:
        tissue = detect_tissue(slide)
    assert tissue.downsample == 16.0  # no mpp: the fallback
    assert tissue.mask.shape == (223, 278)
    assert 0.4 < tissue.mask.mean() < 0.85
    for corner in (tissue.mask[:15, :15], tissue.mask[:15, -15:], tissue.mask[-15:, :15]):
        assert not corner.any()
    assert tissue.fraction((1500, 1200, 800, 800)) > 0.95
