"""open_slide / Slide: metadata, pixels, resampling, pickling and bad files, on both slide readers."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathseg.errors import ConfigError, DataError
from pathseg.slides.reader import BACKENDS, SlideMetadataWarning, open_slide
from tests.conftest import shared_data_or_skip

SLIDE_BACKENDS = ["tiffslide", "openslide"]


def cmu_path():
    return shared_data_or_skip("wsi", "cmu-1-small-region.svs")


def tcga_path():
    return shared_data_or_skip("wsi", "tcga-cr-7395-01a-01-ts1.svs")


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def block_mean(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = rgb.shape[0] // factor, rgb.shape[1] // factor
    return rgb[: h * factor, : w * factor].reshape(h, factor, w, factor, 3).mean(axis=(1, 3))


# --------------------------------------------------------------------------- shared slides


@pytest.mark.shared_data
@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_cmu_slide_metadata(backend):
    with open_slide(cmu_path(), backend=backend) as slide:
        assert slide.backend == backend
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.level_dimensions == ((2220, 2967),)
        assert slide.level_downsamples == (1.0,)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.require_mpp() == pytest.approx(0.499)
        assert slide.downsample_for_mpp(0.998) == pytest.approx(2.0)
        assert all(isinstance(v, str) for v in slide.properties.values())


@pytest.mark.shared_data
@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_tcga_slide_metadata_and_missing_mpp(backend):
    path = tcga_path()
    with open_slide(path, backend=backend) as slide:
        assert slide.dimensions == (4443, 3567)
        assert slide.level_count == 2
        assert slide.level_dimensions == ((4443, 3567), (2221, 1783))
        assert slide.level_downsamples[0] == 1.0
        assert slide.level_downsamples[1] == pytest.approx((4443 / 2221 + 3567 / 1783) / 2)
        assert slide.mpp is None
        with pytest.raises(DataError) as err:
            slide.require_mpp()
        assert str(err.value) == f"{path}: has no microns-per-pixel in its properties; pass --mpp"
    with open_slide(path, backend=backend, mpp=0.25) as slide:
        assert slide.mpp == 0.25
        assert slide.downsample_for_mpp(1.0) == pytest.approx(4.0)


@pytest.mark.shared_data
def test_mpp_argument_overrides_the_file():
    with open_slide(cmu_path(), mpp=0.3) as slide:
        assert slide.mpp == 0.3
    with pytest.raises(ConfigError, match="mpp must be a positive number"):
        open_slide(cmu_path(), mpp=-1)


@pytest.mark.shared_data
def test_default_backend_for_svs_is_tiffslide():
    with open_slide(cmu_path()) as slide:
        assert slide.backend == "tiffslide"


@pytest.mark.shared_data
def test_both_backends_give_the_same_pixels_on_the_jpeg_slide():
    with open_slide(cmu_path(), backend="tiffslide") as a, open_slide(cmu_path(), backend="openslide") as b:
        region_a = a.read_region((500, 700), 0, (400, 300))
        region_b = b.read_region((500, 700), 0, (400, 300))
    assert region_a.shape == (300, 400, 3) and region_a.dtype == np.uint8
    assert region_a.std() > 10  # tissue, not an empty read
    assert mean_abs_diff(region_a, region_b) < 2.0


@pytest.mark.shared_data
def test_best_level_tolerates_rounded_level_sizes():
    with open_slide(tcga_path()) as slide:
        assert slide.best_level(1.0) == 0
        assert slide.best_level(1.9) == 0
        assert slide.best_level(2.0) == 1  # the level states 2.0005
        assert slide.best_level(16.0) == 1
        assert slide.best_level(0.5) == 0


@pytest.mark.shared_data
@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_read_box_at_downsample_2_matches_level_1(backend):
    with open_slide(tcga_path(), backend=backend) as slide:
        box = slide.read_box((3000, 1000, 1000, 800), 2.0)
        level1 = slide.read_region((3000, 1000), 1, (500, 400))
        level0 = slide.read_region((2998, 1000), 0, (1004, 800))
    assert box.shape == (400, 500, 3)
    assert level1.std() > 10
    # OpenSlide interpolates level reads at fractional positions, so its two reads differ a little.
    assert mean_abs_diff(box, level1) < (0.5 if backend == "tiffslide" else 4.0)
    # Level 1 lines up with level 0 at twice the coordinates (not 2.0005 times): the 2 x 2 means
    # of level 0 match it far better there than one level-1 pixel to either side.
    aligned = mean_abs_diff(box, block_mean(level0[:, 2:1002], 2))
    assert aligned < 0.6 * mean_abs_diff(box, block_mean(level0[:, :1000], 2))
    assert aligned < 0.6 * mean_abs_diff(box, block_mean(level0[:, 4:1004], 2))


@pytest.mark.shared_data
def test_read_box_at_a_coarser_downsample_averages_the_level():
    with open_slide(cmu_path()) as slide:
        box = slide.read_box((600, 900, 800, 600), 4.0)
        level0 = slide.read_region((600, 900), 0, (800, 600))
    assert box.shape == (150, 200, 3)
    assert mean_abs_diff(box, block_mean(level0, 4)) < 1.0


@pytest.mark.shared_data
def test_read_box_and_region_partly_outside_the_slide_are_white_there():
    with open_slide(cmu_path()) as slide:
        box = slide.read_box((-200, -100, 600, 400), 2.0)
        inside = slide.read_region((0, 0), 0, (400, 300))
        region = slide.read_region((2000, 2800), 0, (400, 300))  # right/bottom edge: 220 x 167 inside
        corner = slide.read_region((2000, 2800), 0, (220, 167))
    assert box.shape == (200, 300, 3)
    assert (box[:50] == 255).all() and (box[:, :100] == 255).all()
    assert mean_abs_diff(box[50:, 100:], block_mean(inside, 2)) < 1.0
    assert (region[167:] == 255).all() and (region[:, 220:] == 255).all()
    np.testing.assert_array_equal(region[:167, :220], corner)


@pytest.mark.shared_data
def test_read_box_size_argument_and_thumbnail_reads_a_low_level():
    with open_slide(tcga_path()) as slide:
        assert slide.read_box((0, 0, 800, 600), 8.0, size=(50, 40)).shape == (40, 50, 3)
        levels_read = []
        original = slide._read_level

        def spy(level, *args):
            levels_read.append(level)
            return original(level, *args)

        slide._read_level = spy
        thumb = slide.thumbnail(500)
    assert thumb.shape == (401, 500, 3)
    assert set(levels_read) == {1}
    # Glass in the top-left corner, tissue in the middle.
    assert thumb[:20, :20].mean() > 200 and thumb[150:250, 200:300].mean() < 200


@pytest.mark.shared_data
@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_pickled_slide_reopens_and_reads_the_same(backend):
    with open_slide(tcga_path(), backend=backend, mpp=0.25) as slide:
        expected = slide.read_region((1000, 1200), 1, (64, 48))
        clone = pickle.loads(pickle.dumps(slide))
    assert clone._handle is None  # no file handle travelled
    assert (clone.path, clone.backend, clone.mpp) == (slide.path, backend, 0.25)
    np.testing.assert_array_equal(clone.read_region((1000, 1200), 1, (64, 48)), expected)
    clone.close()


@pytest.mark.shared_data
def test_a_forked_process_opens_its_own_handle(monkeypatch):
    import pathseg.slides.reader as reader

    with open_slide(cmu_path()) as slide:
        expected = slide.read_region((300, 400), 0, (32, 32))
        inherited = slide._handle
        monkeypatch.setattr(reader.os, "getpid", lambda: -12345)  # as seen from a forked worker
        np.testing.assert_array_equal(slide.read_region((300, 400), 0, (32, 32)), expected)
        assert slide._handle is not inherited
        inherited.close()


# --------------------------------------------------------------------------- plain images


def test_plain_png_opens_as_a_one_level_slide(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "small.png"
    Image.fromarray(rgb).save(path)
    with open_slide(path) as slide:
        assert slide.backend == "image"
        assert slide.dimensions == (70, 50)
        assert slide.level_count == 1 and slide.level_downsamples == (1.0,)
        assert slide.mpp is None
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (70, 50)), rgb)
        region = slide.read_region((60, 40), 0, (20, 20))
        np.testing.assert_array_equal(region[:10, :10], rgb[40:, 60:])
        assert (region[10:] == 255).all() and (region[:, 10:] == 255).all()
        assert slide.thumbnail(35).shape == (25, 35, 3)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.mpp == 0.5


def test_plain_tiff_reads_by_region_with_mpp_from_resolution_tags(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    path = tmp_path / "strips.tif"
    # 4 pixels per micron = 40,000 per cm: 0.25 um per pixel.
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(40_000, 40_000), resolutionunit="CENTIMETER")
    for backend in (None, "image"):
        with open_slide(path, backend=backend) as slide:
            assert slide.dimensions == (200, 300)
            assert slide.mpp == pytest.approx(0.25)
            np.testing.assert_array_equal(slide.read_region((30, 40), 0, (50, 60)), rgb[40:100, 30:80])
    with open_slide(path, backend="image") as slide:
        assert not isinstance(slide._reader._pixels, np.ndarray)  # a lazy zarr view, not a loaded array


def test_meaningless_or_unequal_resolution_tags_warn(tmp_path):
    rgb = np.zeros((40, 40, 3), np.uint8)
    screen = tmp_path / "screen.tif"
    tifffile.imwrite(screen, rgb, photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.warns(SlideMetadataWarning, match="not a microscope resolution"):
        slide = open_slide(screen, backend="image")
    assert slide.mpp is None
    stretched = tmp_path / "stretched.tif"
    tifffile.imwrite(
        stretched, rgb, photometric="rgb", resolution=(20_000, 40_000), resolutionunit="CENTIMETER"
    )
    with pytest.warns(SlideMetadataWarning, match="not square"):
        slide = open_slide(stretched, backend="image")
    assert slide.mpp == pytest.approx(0.5)  # x wins
    assert SlideMetadataWarning.__module__.startswith("pathseg.")


def test_no_warning_for_a_normal_slide(tmp_path):
    path = tmp_path / "ok.tif"
    tifffile.imwrite(
        path, np.zeros((40, 40, 3), np.uint8), resolution=(20_000, 20_000), resolutionunit="CENTIMETER"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_slide(path).mpp == pytest.approx(0.5)


# --------------------------------------------------------------------------- bad input


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_corrupt_slide_names_the_file_and_what_was_tried(tmp_path):
    path = tmp_path / "broken.svs"
    path.write_bytes(np.random.default_rng(2).bytes(4096))
    with pytest.raises(DataError) as err:
        open_slide(path)
    message = one_line(err)
    assert message.startswith(f"{path}: cannot open as a slide (")
    assert "tiffslide:" in message and "openslide:" in message


def test_named_backend_is_the_only_one_tried(tmp_path):
    path = tmp_path / "broken.svs"
    path.write_bytes(b"II*\x00" + bytes(100))
    with pytest.raises(DataError) as err:
        open_slide(path, backend="openslide")
    message = one_line(err)
    assert "openslide:" in message and "tiffslide:" not in message


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.svs"
    empty.touch()
    with pytest.raises(DataError) as err:
        open_slide(empty)
    assert one_line(err) == f"{empty}: slide file is empty"
    missing = tmp_path / "missing.svs"
    with pytest.raises(DataError) as err:
        open_slide(missing)
    assert one_line(err) == f"{missing}: slide file does not exist"


def test_corrupt_png(tmp_path):
    path = tmp_path / "truncated.png"
    rgb = np.zeros((64, 64, 3), np.uint8)
    Image.fromarray(rgb).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError) as err:
        open_slide(path)
    assert one_line(err).startswith(f"{path}: cannot open as a slide (image:")


def test_unknown_backend_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        open_slide(tmp_path / "x.svs", backend="bioformats")
    message = one_line(err)
    assert "bioformats" in message
    assert all(name in message for name in BACKENDS)
