"""Reading and writing images and masks: formats, conversions and one-line errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageFile

from pathseg.data.io import (
    LossyMaskWarning,
    image_size,
    read_image,
    read_label_image,
    write_image,
    write_mask,
)
from pathseg.errors import DataError
from tests.data.helpers import rgb


def assert_one_line_error(exc: pytest.ExceptionInfo[DataError], path: Path, *fragments: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert path.name in message
    assert exc.value.path == path
    for fragment in fragments:
        assert fragment in message


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff", ".webp", ".bmp", ".PNG"])
def test_lossless_formats_round_trip(tmp_path: Path, ext: str) -> None:
    image = rgb(17, 23)
    path = tmp_path / f"x{ext}"
    write_image(path, image)
    out = read_image(path)
    assert out.dtype == np.uint8 and out.shape == (17, 23, 3)
    np.testing.assert_array_equal(out, image)
    assert image_size(path) == (17, 23)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg"])
def test_jpeg_round_trip_is_close(tmp_path: Path, ext: str) -> None:
    image = np.full((16, 16, 3), (200, 120, 180), dtype=np.uint8)
    path = tmp_path / f"x{ext}"
    write_image(path, image)
    out = read_image(path)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - image).max() <= 3


def test_greyscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = rgb(9, 11)[..., 0]
    path = tmp_path / "g.png"
    Image.fromarray(grey).save(path)
    out = read_image(path)
    assert out.shape == (9, 11, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.dstack([rgb(8, 8), np.full((8, 8), 7, np.uint8)])
    path = tmp_path / "a.png"
    Image.fromarray(rgba).save(path)
    np.testing.assert_array_equal(read_image(path), rgba[..., :3])


def test_palette_image_gives_colours(tmp_path: Path) -> None:
    im = Image.frombytes("P", (2, 1), bytes([0, 1]))
    im.putpalette([10, 20, 30, 200, 100, 50])
    path = tmp_path / "p.png"
    im.save(path)
    np.testing.assert_array_equal(read_image(path)[0], [[10, 20, 30], [200, 100, 50]])


def test_16bit_png_is_scaled_to_8bit(tmp_path: Path) -> None:
    grey16 = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(grey16).save(path)
    out = read_image(path)
    np.testing.assert_array_equal(out[..., 0], [[0, 1, 255, 128]])


def test_16bit_rgb_tiff_is_scaled(tmp_path: Path) -> None:
    data = (rgb(5, 6).astype(np.uint16) * 257).astype(np.uint16)
    path = tmp_path / "x16.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    np.testing.assert_array_equal(read_image(path), rgb(5, 6))


def test_planar_tiff_is_channel_last(tmp_path: Path) -> None:
    image = rgb(10, 12)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_array_equal(read_image(path), image)


def test_multipage_tiff_takes_first_page(tmp_path: Path) -> None:
    first, second = rgb(6, 7, seed=1), rgb(6, 7, seed=2)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(first, photometric="rgb")
        tif.write(second, photometric="rgb")
    np.testing.assert_array_equal(read_image(path), first)


def test_tiff_with_wrong_suffix_is_detected_by_magic(tmp_path: Path) -> None:
    path = tmp_path / "really_a_tiff.png"
    tifffile.imwrite(path, rgb(4, 4), photometric="rgb")
    np.testing.assert_array_equal(read_image(path), rgb(4, 4))


# ------------------------------------------------------------------ bad images


def _valid_bytes(tmp_path: Path, ext: str) -> bytes:
    path = tmp_path / f"valid{ext}"
    write_image(path, rgb(64, 64))
    return path.read_bytes()


def test_random_bytes_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "noise.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError) as exc:
        read_image(path)
    assert_one_line_error(exc, path, "cannot read image (truncated or corrupt:")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_truncated_files_are_reported(tmp_path: Path, ext: str) -> None:
    data = _valid_bytes(tmp_path, ext)
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as exc:
        read_image(path)
    assert_one_line_error(exc, path, "cannot read image (truncated or corrupt:")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_zero_byte_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    for reader in (read_image, read_label_image, image_size):
        with pytest.raises(DataError) as exc:
            reader(path)
        assert_one_line_error(exc, path, "cannot read image (truncated or corrupt: empty file)")


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(DataError) as exc:
        read_image(path)
    assert_one_line_error(exc, path, "file does not exist")


def test_truncated_mask_is_reported(tmp_path: Path) -> None:
    full = tmp_path / "m.png"
    write_mask(full, np.random.default_rng(0).integers(0, 4, (64, 64)))
    path = tmp_path / "cut_mask.png"
    path.write_bytes(full.read_bytes()[:60])
    with pytest.raises(DataError) as exc:
        read_label_image(path)
    assert_one_line_error(exc, path, "truncated or corrupt")


# ------------------------------------------------------------------ masks


def test_palette_mask_reads_indices_not_colours(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2, 3]], dtype=np.uint8)
    path = tmp_path / "p.png"
    write_mask(path, labels, palette=[(0, 64, 128), (64, 128, 0), (243, 152, 0), (255, 255, 255)])
    with Image.open(path) as im:
        assert im.mode == "P"
    out = read_label_image(path)
    assert out.ndim == 2
    np.testing.assert_array_equal(out, labels)


@pytest.mark.parametrize("values", [(0, 255), (0, 1)])
def test_binary_masks_keep_their_values(tmp_path: Path, values: tuple[int, int]) -> None:
    labels = np.array([[values[0], values[1]], [values[1], values[0]]], dtype=np.uint8)
    path = tmp_path / "b.png"
    write_mask(path, labels)
    np.testing.assert_array_equal(read_label_image(path), labels)


def test_one_bit_mask_reads_as_zero_one(tmp_path: Path) -> None:
    path = tmp_path / "bits.png"
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1").save(path)
    np.testing.assert_array_equal(read_label_image(path), [[0, 1]])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_instance_mask_round_trip(tmp_path: Path, ext: str) -> None:
    labels = np.array([[0, 1, 300], [65535, 7, 0]], dtype=np.uint16)
    path = tmp_path / f"inst{ext}"
    write_mask(path, labels)
    out = read_label_image(path)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, labels)


def test_grey_rgb_mask_collapses_and_colour_mask_stays(tmp_path: Path) -> None:
    grey = np.repeat(np.array([[0, 255]], dtype=np.uint8)[..., None], 3, axis=2)
    colour = np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(colour).save(tmp_path / "colour.png")
    assert read_label_image(tmp_path / "grey.png").shape == (1, 2)
    np.testing.assert_array_equal(read_label_image(tmp_path / "colour.png"), colour)


def test_jpeg_mask_warns(tmp_path: Path) -> None:
    path = tmp_path / "mask.jpg"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    with pytest.warns(LossyMaskWarning, match="mask.jpg"):
        out = read_label_image(path)
    assert out.shape == (8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_mask(tmp_path / "ok.png", np.zeros((2, 2), np.uint8))
        read_label_image(tmp_path / "ok.png")


def test_write_mask_refuses_lossy_and_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lossless"):
        write_mask(tmp_path / "m.jpg", np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="palette has 2 colours"):
        write_mask(tmp_path / "m.png", np.array([[0, 2]]), palette=[(0, 0, 0), (1, 1, 1)])
    with pytest.raises(ValueError, match="16 unsigned bits"):
        write_mask(tmp_path / "m.png", np.array([[-1, 0]]))
    with pytest.raises(ValueError, match="2-D"):
        write_mask(tmp_path / "m.png", np.zeros((2, 2, 3), np.uint8))


def test_huge_image_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.png"
    write_image(path, rgb(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError) as exc:
        read_image(path)
    assert_one_line_error(exc, path, "too large to decode in one piece")


def test_big_endian_16bit_mask_is_native(tmp_path: Path) -> None:
    labels = np.array([[0, 513], [1000, 2]], dtype=">u2")
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, labels, byteorder=">")
    out = read_label_image(path)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, labels)


def test_read_arrays_are_writable(tmp_path: Path) -> None:
    path = tmp_path / "w.png"
    write_image(path, rgb(4, 4))
    image = read_image(path)
    image[0, 0] = 0
    write_mask(tmp_path / "m.png", np.ones((4, 4), np.uint8))
    mask = read_label_image(tmp_path / "m.png")
    mask[0, 0] = 0
