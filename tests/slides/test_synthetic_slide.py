"""write_synthetic_slide: a pyramidal TIFF that both readers open, with tissue where the layout says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathseg.errors import ConfigError
from pathseg.slides.reader import open_slide
from pathseg.slides.synthetic import GLASS_RGB, synthetic_slide_layout, write_synthetic_slide
from pathseg.slides.tissue import detect_tissue

SIZE = (3000, 2400)
SEED = 3


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic_slide") / "slide.tif"
    assert write_synthetic_slide(path, SIZE, mpp=0.25, tile=256, seed=SEED) == path
    return path


@pytest.mark.parametrize("backend", ["tiffslide", "openslide"])
def test_both_readers_see_the_pyramid_and_resolution(slide_path, backend):
    with open_slide(slide_path, backend=backend) as slide:
        assert slide.dimensions == SIZE
        assert slide.level_dimensions == ((3000, 2400), (1500, 1200), (750, 600))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx(0.25)


def test_readers_agree_and_nothing_else_is_written(slide_path):
    assert sorted(p.name for p in slide_path.parent.iterdir()) == ["slide.tif"]
    with open_slide(slide_path, backend="tiffslide") as a, open_slide(slide_path, backend="openslide") as b:
        np.testing.assert_array_equal(
            a.read_region((1000, 800), 0, (300, 200)), b.read_region((1000, 800), 0, (300, 200))
        )


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_lower_levels_are_averaged_level_0(slide_path):
    with open_slide(slide_path) as slide:
        level0 = slide.read_region((600, 600), 0, (1216, 1216)).astype(np.float64)  # mostly tissue
        level1 = slide.read_region((600, 600), 1, (600, 600))
        level2 = slide.read_region((600, 600), 2, (300, 300))
    assert level0.std() > 20
    halved = level0.reshape(608, 2, 608, 2, 3).mean(axis=(1, 3))
    quartered = level0.reshape(304, 4, 304, 4, 3).mean(axis=(1, 3))
    # Each level is JPEG-compressed on its own (quality 85, chroma subsampled), which costs a few
    # grey levels on this texture; one pixel of misalignment would cost several times more.
    assert mean_abs_diff(level1, halved[:600, :600]) < 6.0
    assert mean_abs_diff(level2, quartered[:300, :300]) < 8.0
    assert mean_abs_diff(level1, halved[1:601, 1:601]) > 2 * mean_abs_diff(level1, halved[:600, :600])
    assert mean_abs_diff(level2, quartered[1:301, 1:301]) > 2 * mean_abs_diff(level2, quartered[:300, :300])


def test_tissue_lies_where_the_layout_put_it(slide_path):
    truth = synthetic_slide_layout(SIZE, seed=SEED)
    assert truth.mask.mean() == pytest.approx(0.5, abs=0.02)
    with open_slide(slide_path) as slide:
        found = detect_tissue(slide)  # 8 um per pixel at 0.25 um: downsample 32
        corner = slide.read_region((0, 0), 0, (50, 50))
    assert found.downsample == 32.0
    # The layout at the centres of the detection's pixels.
    rows, cols = found.mask.shape
    centre_y = ((np.arange(rows) + 0.5) * found.downsample / truth.downsample).astype(int)
    centre_x = ((np.arange(cols) + 0.5) * found.downsample / truth.downsample).astype(int)
    expected = truth.mask[
        np.ix_(np.minimum(centre_y, truth.mask.shape[0] - 1), np.minimum(centre_x, truth.mask.shape[1] - 1))
    ]
    overlap = (found.mask & expected).sum() / (found.mask | expected).sum()
    assert overlap > 0.9
    # Glass is the writer's glass colour (up to JPEG), along the border.
    assert np.abs(corner.astype(int) - GLASS_RGB).max() <= 3


def test_same_seed_same_slide_other_seed_other_layout(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tif", 600, tile=64, seed=7)
    b = write_synthetic_slide(tmp_path / "b.tif", 600, tile=64, seed=7)
    assert a.read_bytes() == b.read_bytes()
    assert not np.array_equal(
        synthetic_slide_layout(600, seed=7).mask, synthetic_slide_layout(600, seed=8).mask
    )
    with open_slide(a) as slide:
        assert slide.level_count == 1  # already under 1024 px


def test_bad_arguments_are_config_errors(tmp_path):
    for kwargs in ({"tile": 100}, {"mpp": 0}, {"tissue_fraction": 0.95}, {"seed": -1}):
        with pytest.raises(ConfigError):
            write_synthetic_slide(tmp_path / "x.tif", 1000, **kwargs)
    with pytest.raises(ConfigError, match="at least 256"):
        write_synthetic_slide(tmp_path / "x.tif", 100)
    with pytest.raises(ConfigError, match="too small"):
        write_synthetic_slide(tmp_path / "x.tif", 600_000, tile=64)
    assert not list(tmp_path.iterdir())


def test_level_count_follows_the_size():
    # Halving until the longer side is at most 1024 px: 50,000 -> 782 takes 6 halvings.
    from pathseg.slides.synthetic import _level_sizes

    sizes = _level_sizes(50_000, 30_000)
    assert len(sizes) == 7 and sizes[-1] == (782, 469)
    assert all(max(s) > 1024 for s in sizes[:-1]) and max(sizes[-1]) <= 1024
    assert sizes[1] == (25_000, 15_000) and sizes[-1][0] == math.ceil(50_000 / 64)
