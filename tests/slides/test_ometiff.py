"""write_label_ome_tiff: tiled, compressed, pyramidal OME-TIFF with the class table, in chunks."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest
import tifffile

from pathseg.errors import DataError
from pathseg.slides.ometiff import (
    level_shapes,
    read_label_ome_tiff_classes,
    read_label_ome_tiff_info,
    write_label_ome_tiff,
)

NAMES = ["background", "tumour", "stroma", "necrosis"]
COLORS = [(0, 0, 0), (220, 20, 60), (46, 139, 87), (120, 120, 200)]


def pattern(rows: int, cols: int) -> np.ndarray:
    """Blocks of classes, a glass band (255) and a one-pixel checkerboard, whose 2x subsample
    is constant: averaging would give values that are no class at all."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    labels = ((yy // 37 + xx // 53) % 4).astype(np.uint8)
    labels[:, cols // 2 : cols // 2 + 40] = 255
    labels[:200, :300] = np.where((yy[:200, :300] + xx[:200, :300]) % 2, 1, 3)
    return labels


class Recording:
    """A raster that remembers the largest block read from it (and can fail on request)."""

    def __init__(self, array: np.ndarray, fail_after: int | None = None) -> None:
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.largest, self.reads, self.fail_after = 0, 0, fail_after

    def __getitem__(self, key):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise RuntimeError("storage went away")
        block = np.array(self.array[key])
        self.largest = max(self.largest, block.size)
        return block


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    labels = pattern(1500, 2000)
    path = tmp_path_factory.mktemp("ome") / "slide.ome.tif"
    source = Recording(labels)
    result = write_label_ome_tiff(
        path, source, class_names=NAMES, colors=COLORS, mpp=0.968, downsample=4.0, chunk=1024
    )
    return path, labels, result, source


def test_levels_are_exact_nearest_subsamples(written):
    path, labels, result, _ = written
    assert result == path
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert [level.shape for level in levels] == [(1500, 2000), (750, 1000), (375, 500)]
        np.testing.assert_array_equal(levels[0].asarray(), labels)
        np.testing.assert_array_equal(levels[1].asarray(), labels[::2, ::2])
        np.testing.assert_array_equal(levels[2].asarray(), labels[::4, ::4])
        assert levels[0].dtype == np.uint8


def test_tiles_are_512_and_compressed(written):
    path = written[0]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        for level in tif.series[0].levels:
            page = level.keyframe
            assert page.is_tiled and (page.tilelength, page.tilewidth) == (512, 512)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert path.stat().st_size < 1500 * 2000 / 10  # blocks compress far below raw size


def test_class_table_and_pixel_size_read_back(written):
    path = written[0]
    info = read_label_ome_tiff_info(path)
    assert info.class_names == NAMES == read_label_ome_tiff_classes(path)
    assert info.colors == COLORS
    assert info.mpp == pytest.approx(0.968)
    assert info.downsample == 4.0
    with tifffile.TiffFile(path) as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
        assert pixels["PhysicalSizeX"] == pytest.approx(0.968)
        assert pixels["PhysicalSizeY"] == pytest.approx(0.968)
        assert pixels["PhysicalSizeXUnit"] == "µm"
        # TIFF resolution tags too (pixels per cm), halving per level
        for k, level in enumerate(tif.series[0].levels):
            x_resolution = level.keyframe.get_resolution(tifffile.RESUNIT.CENTIMETER)[0]
            assert x_resolution == pytest.approx(1e4 / (0.968 * 2**k))


def test_raster_is_read_in_pieces(written):
    source = written[3]
    assert source.largest <= 512 * 1024  # one tile row by `chunk` columns, never the whole raster


def test_sides_not_multiples_of_the_tile(tmp_path):
    labels = pattern(700, 1031)
    path = write_label_ome_tiff(
        tmp_path / "odd.ome.tif",
        labels,
        class_names=NAMES,
        colors=COLORS,
        mpp=None,
        tile=256,
        min_level_size=129,
    )
    assert level_shapes((700, 1031), 129) == [(700, 1031), (350, 516), (175, 258), (88, 129)]
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) == 4
        for k, level in enumerate(levels):
            np.testing.assert_array_equal(level.asarray(), labels[:: 2**k, :: 2**k])
            assert level.keyframe.tilewidth == 256
    info = read_label_ome_tiff_info(path)
    assert info.mpp is None and info.downsample is None


def test_small_raster_has_one_level(tmp_path):
    labels = np.full((300, 200), 2, dtype=np.uint8)
    path = write_label_ome_tiff(tmp_path / "small.ome.tif", labels, class_names=NAMES, colors=COLORS, mpp=0.5)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.series[0].levels) == 1
        np.testing.assert_array_equal(tif.series[0].asarray(), labels)


@pytest.mark.skipif(not imagecodecs.ZSTD.available, reason="imagecodecs without zstd")
def test_zstd_compression(tmp_path):
    labels = pattern(600, 700)
    path = write_label_ome_tiff(
        tmp_path / "z.ome.tif", labels, class_names=NAMES, colors=COLORS, mpp=1.0, compression="zstd"
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ZSTD
        np.testing.assert_array_equal(tif.series[0].asarray(), labels)


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    labels = pattern(600, 700)
    path = tmp_path / "out" / "labels.ome.tif"
    write_label_ome_tiff(path, labels, class_names=NAMES, colors=COLORS, mpp=0.25)
    assert [p.name for p in path.parent.iterdir()] == ["labels.ome.tif"]
    reference = tmp_path / "plain.txt"
    reference.write_text("")  # the renamed file has the usual permissions, not a temp file's 0600
    assert path.stat().st_mode == reference.stat().st_mode


def test_failed_write_keeps_the_old_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "labels.ome.tif"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError, match="storage went away"):
        write_label_ome_tiff(
            path, Recording(pattern(1200, 1300), fail_after=3), class_names=NAMES, colors=COLORS, mpp=0.25
        )
    assert path.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["labels.ome.tif"]


def test_bad_arguments_are_refused(tmp_path):
    out = tmp_path / "x.ome.tif"
    labels = np.zeros((64, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        write_label_ome_tiff(out, labels.astype(np.uint16), class_names=NAMES, colors=COLORS, mpp=1.0)
    with pytest.raises(ValueError, match="colours"):
        write_label_ome_tiff(out, labels, class_names=NAMES, colors=COLORS[:2], mpp=1.0)
    with pytest.raises(ValueError, match="multiple of 16"):
        write_label_ome_tiff(out, labels, class_names=NAMES, colors=COLORS, mpp=1.0, tile=500)
    with pytest.raises(ValueError, match="mpp"):
        write_label_ome_tiff(out, labels, class_names=NAMES, colors=COLORS, mpp=0.0)
    assert not out.exists()


def test_reading_files_that_are_not_pathseg_label_tiffs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_label_ome_tiff_info(tmp_path / "missing.ome.tif")
    garbage = tmp_path / "garbage.ome.tif"
    garbage.write_bytes(b"<html>not a tiff</html>")
    with pytest.raises(DataError, match=r"garbage\.ome\.tif: cannot read TIFF"):
        read_label_ome_tiff_info(garbage)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="not an OME-TIFF"):
        read_label_ome_tiff_info(plain)
    other_ome = tmp_path / "other.ome.tif"
    tifffile.imwrite(other_ome, np.zeros((8, 8), dtype=np.uint8), ome=True)
    with pytest.raises(DataError, match="no pathseg class table"):
        read_label_ome_tiff_classes(other_ome)
