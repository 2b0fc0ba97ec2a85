"""Reading and writing images and label masks.

Every reader turns a broken or unusable file into a one-line :class:`~pathseg.errors.DataError`
that names the file, so a bad tile in a folder of hundreds is found at once instead of through
a traceback from deep inside PIL or tifffile.

Conventions
-----------
* Images come back as ``uint8`` arrays of shape ``(H, W, 3)`` in RGB order.
* Label images come back with their *stored* values (palette indices, grey levels, 16-bit ids
  or RGB colours); turning those into class indices is the job of
  :meth:`pathseg.data.classes.ClassMap.encode`.
* Masks are only ever written losslessly: 8-bit PNG (optionally with a palette) when all
  values fit in a byte, 16-bit greyscale PNG for larger ids such as instance maps (PNG keeps
  them readable by every viewer and by PIL, unlike 16-bit palette images, which do not exist).
"""

from __future__ import annotations

import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, ImageFile

from pathseg.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "LossyMaskWarning",
    "image_size",
    "read_image",
    "read_label_image",
    "write_image",
    "write_mask",
]

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_MASK_SUFFIXES = (".png", ".tif", ".tiff")

# A truncated file must fail loudly rather than come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class LossyMaskWarning(UserWarning):
    """A label mask is stored in a lossy format (JPEG), which blurs class values at edges."""


def _short(exc: BaseException) -> str:
    """One short line describing an exception from a decoder."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _corrupt(path: Path, reason: str) -> DataError:
    return DataError(path, f"cannot read image (truncated or corrupt: {reason})")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "file does not exist")
    if not path.is_file():
        raise DataError(path, "not a file")
    if path.stat().st_size == 0:
        raise _corrupt(path, "empty file")


def _is_tiff(path: Path) -> bool:
    if path.suffix.lower() in (".tif", ".tiff"):
        return True
    with path.open("rb") as fh:
        return fh.read(4) in _TIFF_MAGIC


@contextmanager
def quiet_tifffile() -> Iterator[None]:
    """tifffile logs every broken tag before raising; the DataError we raise says it once."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_tiff(path: Path) -> np.ndarray:
    """First page of a TIFF as (H, W) or (H, W, C)."""
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise _corrupt(path, "no pages")
            page = tif.pages[0]
            arr = np.asarray(page.asarray())  # type: ignore[union-attr]
    except DataError:
        raise
    except Exception as exc:  # any decoder failure is a bad file, not a bug here
        raise _corrupt(path, _short(exc)) from exc
    arr = np.squeeze(arr) if arr.ndim > 3 else arr
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (1, 2, 3, 4):
        # planar (separate) configuration stores samples first
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4)):
        raise DataError(path, f"unsupported TIFF layout with shape {tuple(arr.shape)}")
    return arr


def _open_pil(path: Path) -> Image.Image:
    """Open *and fully decode* with PIL, so truncation is detected here."""
    try:
        im = Image.open(path)
        im.load()
    except Image.DecompressionBombError as exc:
        raise DataError(
            path, f"image is too large to decode in one piece ({_short(exc)}); tile it first"
        ) from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise _corrupt(path, _short(exc)) from exc
    return im


def _to_uint8(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale an integer/float/bool image to uint8 without silently wrapping values."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype == np.uint16:
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise DataError(path, f"image values {lo}..{hi} do not fit in 8 or 16 bits")
        if hi <= 255:
            return arr.astype(np.uint8)
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise DataError(path, "image has NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        elif lo < 0.0 or hi > 255.0:
            raise DataError(path, f"float image values {lo:g}..{hi:g} are outside [0, 1] and [0, 255]")
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    raise DataError(path, f"unsupported pixel type {arr.dtype}")


def _to_rgb(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return np.repeat(arr[:, :, None], 3, axis=2)
    channels = arr.shape[-1]
    if channels == 2:  # grey + alpha
        return np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3])  # drops alpha for RGBA


def _writable(arr: np.ndarray) -> np.ndarray:
    """Native byte order and writable: PIL hands out read-only (and for ``I;16B`` big-endian)
    views, and callers expect to own a plain array."""
    if not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr if arr.flags.writeable else arr.copy()


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an RGB ``uint8`` array of shape ``(H, W, 3)``.

    Greyscale is repeated to three channels, alpha is dropped, 16-bit data are scaled to
    8 bits and TIFF files contribute their first page (channel-first planar data are moved to
    channel-last).

    Raises:
        DataError: the file is missing, empty, truncated, corrupt or has an unusable layout.
    """
    path = Path(path)
    _check_file(path)
    if _is_tiff(path):
        return _writable(_to_rgb(_to_uint8(_read_tiff(path), path)))
    im = _open_pil(path)
    with im:
        mode = im.mode
        if mode in ("RGB", "L"):
            arr = np.asarray(im)
        elif mode in ("RGBA", "LA"):
            arr = np.asarray(im)[..., :-1]
        elif mode == "1":
            arr = np.asarray(im).astype(np.uint8) * 255
        elif mode.startswith("I") or mode == "F":
            arr = np.asarray(im)
        else:  # P, PA, CMYK, YCbCr, LAB, HSV: let PIL do the colour conversion
            arr = np.asarray(im.convert("RGB"))
    return _writable(_to_rgb(_to_uint8(np.asarray(arr), path)))


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a mask file with its stored values.

    * palette PNG -> the palette *indices* (not their colours);
    * greyscale (8- or 16-bit) -> the grey values;
    * RGB with three equal channels -> one channel;
    * true-colour RGB -> an ``(H, W, 3)`` array (a colour :class:`ClassMap` can map it);
    * JPEG is read, with a :class:`LossyMaskWarning`, because compression invents new values.

    Raises:
        DataError: the file is missing, empty, truncated, corrupt or not integer-valued.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in _JPEG_SUFFIXES:
        warnings.warn(
            f"{path}: mask is stored as JPEG; lossy compression corrupts label values at edges "
            "(store masks as PNG)",
            LossyMaskWarning,
            stacklevel=2,
        )
    if _is_tiff(path):
        arr = _read_tiff(path)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):
            arr = arr[..., :-1] if arr.shape[-1] == 4 else arr[..., 0]
    else:
        im = _open_pil(path)
        with im:
            mode = im.mode
            if mode in ("P", "L", "RGB") or mode.startswith("I") or mode == "F":
                arr = np.asarray(im)
            elif mode == "1":
                arr = np.asarray(im).astype(np.uint8)
            elif mode in ("PA", "LA", "RGBA"):
                arr = np.asarray(im)[..., :-1]
                arr = arr[..., 0] if arr.shape[-1] == 1 else arr
            else:
                arr = np.asarray(im.convert("RGB"))
    arr = _writable(np.asarray(arr))
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DataError(path, "mask has non-integer values (labels must be whole numbers)")
        arr = arr.astype(np.int64)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        arr = arr.astype(np.uint16 if arr.max() > 255 else np.uint8)
    if arr.ndim == 3:
        if arr.shape[-1] != 3:
            raise DataError(path, f"unsupported mask shape {tuple(arr.shape)}")
        first = arr[..., 0]
        if np.array_equal(first, arr[..., 1]) and np.array_equal(first, arr[..., 2]):
            arr = first
    return _writable(np.ascontiguousarray(arr))


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file, reading only its header where the format allows."""
    path = Path(path)
    _check_file(path)
    try:
        if _is_tiff(path):
            with quiet_tifffile(), tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return int(page.imagelength), int(page.imagewidth)  # type: ignore[union-attr]
        with Image.open(path) as im:
            width, height = im.size
            return int(height), int(width)
    except Exception as exc:
        raise _corrupt(path, _short(exc)) from exc


def write_mask(
    path: str | Path,
    labels: np.ndarray,
    palette: list[tuple[int, int, int]] | None = None,
) -> None:
    """Write a 2-D label array losslessly.

    ``.png``: 8-bit greyscale (values 0..255), a palette PNG (mode ``"P"``) when ``palette``
    is given, or 16-bit greyscale PNG when values exceed 255 (e.g. instance ids).
    ``.tif``/``.tiff``: 8- or 16-bit greyscale via tifffile (no palette).

    Raises:
        ValueError: lossy or unknown suffix, wrong shape, negative or too-large values, or a
            palette that does not cover every value.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _MASK_SUFFIXES:
        raise ValueError(
            f"{path}: masks must be written as PNG or TIFF (lossless), not {suffix or 'no suffix'}"
        )
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{path}: mask must be 2-D, got shape {labels.shape}")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: mask must hold integers, got {labels.dtype}")
    lo = int(labels.min()) if labels.size else 0
    hi = int(labels.max()) if labels.size else 0
    if lo < 0 or hi > 65535:
        raise ValueError(f"{path}: mask values {lo}..{hi} do not fit in 16 unsigned bits")
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette is not None:
        if suffix != ".png":
            raise ValueError(f"{path}: palette masks are written as PNG only")
        if hi > 255:
            raise ValueError(f"{path}: a palette mask holds at most 256 values, got max {hi}")
        if hi >= len(palette):
            raise ValueError(f"{path}: palette has {len(palette)} colours but the mask uses value {hi}")
        flat = [int(c) for colour in palette for c in colour]
        if len(flat) != 3 * len(palette) or any(c < 0 or c > 255 for c in flat):
            raise ValueError(f"{path}: palette entries must be (r, g, b) with 0..255 components")
    if suffix in (".tif", ".tiff"):
        dtype = np.uint8 if hi <= 255 else np.uint16
        tifffile.imwrite(path, labels.astype(dtype), compression="zlib")
        return
    height, width = labels.shape
    if palette is not None:
        im = Image.frombytes("P", (width, height), labels.astype(np.uint8).tobytes())
        im.putpalette(flat)
    elif hi <= 255:
        im = Image.frombytes("L", (width, height), labels.astype(np.uint8).tobytes())
    else:
        im = Image.fromarray(labels.astype(np.uint16))  # mode I;16 -> 16-bit PNG
    im.save(path, format="PNG", optimize=False)


def write_image(path: str | Path, rgb: np.ndarray) -> None:
    """Write an RGB (or greyscale) ``uint8`` image; the format follows the suffix.

    WebP is written lossless (as the shared data are) and JPEG at quality 95.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise ValueError(f"{path}: unknown image suffix {suffix or '(none)'}; use one of {IMAGE_EXTENSIONS}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"{path}: image must be uint8, got {rgb.dtype}")
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[-1] == 3)):
        raise ValueError(f"{path}: image must be (H, W, 3) or (H, W), got shape {rgb.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".tif", ".tiff"):
        photometric = "rgb" if rgb.ndim == 3 else "minisblack"
        tifffile.imwrite(path, rgb, photometric=photometric, compression="zlib")
        return
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if suffix == ".webp":
        im.save(path, format="WEBP", lossless=True, quality=100)
    elif suffix in _JPEG_SUFFIXES:
        im.save(path, format="JPEG", quality=95)
    else:
        im.save(path)


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``.

    On any error the temporary file is removed and ``path`` is left as it was. The folder is
    created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name rather than mkstemp: mkstemp's file would keep mode 0600 after the rename.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
