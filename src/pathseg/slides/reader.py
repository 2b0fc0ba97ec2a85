"""Whole-slide images behind one small interface, whichever library reads them.

Three backends can open a slide:

* ``"tiffslide"``: pure Python on tifffile; reads SVS, generic pyramidal TIFF, NDPI, SCN, BIF and
  OME-TIFF. The default for the TIFF family because it needs no C library.
* ``"openslide"``: the OpenSlide C library; the only reader of MIRAX (``.mrxs``) and Hamamatsu
  VMS/VMU, and the fallback when tiffslide fails on a TIFF.
* ``"image"``: an ordinary PNG/JPEG/TIFF/WebP/BMP file opened as a one-level slide. TIFFs are read
  region by region through tifffile's zarr view, other formats are decoded once.

Whatever the backend, :class:`Slide` speaks in level-0 pixel coordinates (x right, y down),
returns RGB ``uint8`` arrays with glass and everything outside the slide white, and resolves the
microns per pixel the same way. A :class:`Slide` pickles to its path, backend and resolution, so
torch ``DataLoader`` workers reopen the file themselves instead of sharing a C handle.

Reads never load more than the tiles under the requested region, except for non-TIFF plain
images, which have no tiles (a slide-sized PNG is unusual; convert it to a tiled TIFF).
"""

from __future__ import annotations

import importlib
import math
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import tifffile
from PIL import Image

from pathseg.data.io import quiet_tifffile
from pathseg.errors import ConfigError, DataError

__all__ = ["BACKENDS", "Slide", "SlideMetadataWarning", "open_slide"]

BACKENDS: tuple[str, ...] = ("tiffslide", "openslide", "image")

_TIFF_FAMILY = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif")  # ".ome.tif" ends in ".tif"
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu")
_PLAIN_IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# Relative slack when matching a requested downsample to a level: a level of an odd-sized slide
# has a downsample such as 2.0005 (4443 / 2221), which should still count as 2.
_LEVEL_TOLERANCE = 0.01

# Microns per pixel outside this range come from meaningless tags (72 dpi = 353 um per pixel).
_PLAUSIBLE_MPP = (0.01, 50.0)

# A read_box whose source is larger than this many pixels is resampled in horizontal bands,
# so a thumbnail of a one-level slide never holds the whole level in memory.
_MAX_READ_PIXELS = 4096 * 4096


class SlideMetadataWarning(UserWarning):
    """A slide's resolution metadata is odd (x and y differ, or an implausible value) and was
    interpreted as described in the message."""


def _one_line(exc: BaseException) -> str:
    """The first line of an exception message, shortened; the type name when it has none."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 120 else line[:117] + "..."


# --------------------------------------------------------------------------- resolution


def _positive_or_none(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _is_tiff_file(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


_MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre


def _tiff_resolution_properties(page: Any) -> dict[str, str]:
    tags = page.tags
    out = {}
    for name in ("XResolution", "YResolution", "ResolutionUnit"):
        if name in tags:
            value = tags[name].value
            out[f"tiff.{name}"] = str(float(Fraction(*value)) if isinstance(value, tuple) else int(value))
    return out


def _tiff_resolution_mpp(path: Path) -> tuple[float | None, float | None]:
    """Microns per pixel from the first page's resolution tags (inch or centimetre units only)."""
    try:
        with quiet_tifffile(), tifffile.TiffFile(path) as tif:
            props = _tiff_resolution_properties(tif.pages[0])
    except Exception:
        return None, None
    microns = _MICRONS_PER_UNIT.get(int(float(props.get("tiff.ResolutionUnit", 1))))
    if microns is None:
        return None, None
    per_x = _positive_or_none(props.get("tiff.XResolution"))
    per_y = _positive_or_none(props.get("tiff.YResolution"))
    return (microns / per_x if per_x else None), (microns / per_y if per_y else None)


def _resolve_mpp(path: Path, mpp_x: float | None, mpp_y: float | None) -> float | None:
    """One level-0 microns-per-pixel value from the file's x/y values, with warnings for oddities."""
    if mpp_x is None:
        mpp_x = mpp_y
    if mpp_x is None:
        return None
    if mpp_y is not None and abs(mpp_x - mpp_y) > 0.01 * mpp_x:
        warnings.warn(
            f"{path}: pixels are not square (mpp x {mpp_x:g}, y {mpp_y:g}); using x",
            SlideMetadataWarning,
            stacklevel=4,
        )
    lo, hi = _PLAUSIBLE_MPP
    if not lo <= mpp_x <= hi:
        warnings.warn(
            f"{path}: ignoring a stated resolution of {mpp_x:g} microns per pixel (not a microscope "
            "resolution); pass --mpp if it matters",
            SlideMetadataWarning,
            stacklevel=4,
        )
        return None
    return mpp_x


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    """What :class:`Slide` needs from a reader library."""

    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]

    def read(self, level: int, col: int, row: int, width: int, height: int) -> np.ndarray:
        """Pixels ``[row, row + height) x [col, col + width)`` of ``level``, all inside it, as RGB uint8."""
        ...

    def mpp_xy(self) -> tuple[float | None, float | None]:
        """Level-0 microns per pixel in x and y as the file states them (None if it does not)."""
        ...

    def close(self) -> None: ...


def _as_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """Greyscale or RGBA (straight alpha) to RGB; 16-bit to 8-bit."""
    if arr.dtype == np.uint16:
        arr = ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] in (2, 4):  # grey + alpha or RGBA: composite over white glass
        arr = _composite_over_white(arr[:, :, :-1], arr[:, :, -1])
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _composite_over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Straight (non-premultiplied) colour over white: alpha 0 is glass and comes back 255."""
    a = alpha.astype(np.uint16)[:, :, None]
    out = (colour.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def _level0_location(col: int, ds: float) -> int:
    """The integer level-0 coordinate whose level position, ``int(x / ds)`` as tiffslide computes
    it, is exactly ``col`` (guards against ``c * ds / ds`` landing a hair below ``c``)."""
    x = math.ceil(col * ds - 1e-6)
    while int(x / ds) < col:
        x += 1
    return x


class _TiffSlideBackend:
    def __init__(self, path: Path) -> None:
        import tiffslide

        self._slide = tiffslide.TiffSlide(path)
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = {k: str(v) for k, v in self._slide.properties.items() if v is not None}

    def read(self, level: int, col: int, row: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        location = (_level0_location(col, ds), _level0_location(row, ds))
        arr = self._slide.read_region(location, level, (width, height), as_array=True, padding=False)
        return _as_rgb_uint8(np.asarray(arr))

    def mpp_xy(self) -> tuple[float | None, float | None]:
        raw = self._slide.properties
        return _positive_or_none(raw.get("tiffslide.mpp-x")), _positive_or_none(raw.get("tiffslide.mpp-y"))

    def close(self) -> None:
        self._slide.close()


class _OpenSlideBackend:
    def __init__(self, path: Path) -> None:
        import openslide

        self._path = path
        self._slide = openslide.OpenSlide(path)
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.properties = dict(self._slide.properties)

    def read(self, level: int, col: int, row: int, width: int, height: int) -> np.ndarray:
        # OpenSlide places the region at x / downsample and interpolates fractional positions;
        # the nearest integer keeps that shift under half a level pixel.
        ds = self.level_downsamples[level]
        rgba = np.asarray(self._slide.read_region((round(col * ds), round(row * ds)), level, (width, height)))
        # openslide-python un-premultiplies, so this is straight alpha (0 = no tissue scanned).
        return _composite_over_white(rgba[:, :, :3], rgba[:, :, 3])

    def mpp_xy(self) -> tuple[float | None, float | None]:
        props = self.properties
        mpp_x = _positive_or_none(props.get("openslide.mpp-x"))
        mpp_y = _positive_or_none(props.get("openslide.mpp-y"))
        if mpp_x is None and mpp_y is None:
            aperio = _positive_or_none(props.get("aperio.MPP"))
            mpp_x = mpp_y = aperio
        if mpp_x is None and mpp_y is None and _is_tiff_file(self._path):
            return _tiff_resolution_mpp(self._path)
        return mpp_x, mpp_y

    def close(self) -> None:
        self._slide.close()


class _ImageBackend:
    """A plain image as a one-level slide: TIFFs through tifffile's zarr view (read by strip or
    tile), other formats decoded once with :func:`pathseg.data.io.read_image`."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tiff: tifffile.TiffFile | None = None
        self._store: Any = None
        self._pixels: Any = None  # anything sliceable as [rows, cols(, channels)]
        self.properties: dict[str, str] = {}
        if _is_tiff_file(path):
            self._open_tiff(path)
        if self._pixels is None:
            from pathseg.data.io import read_image

            self._pixels = read_image(path)
        height, width = self._pixels.shape[:2]
        self.level_dimensions = ((int(width), int(height)),)
        self.level_downsamples = (1.0,)

    def _open_tiff(self, path: Path) -> None:
        import zarr

        with quiet_tifffile():
            tif = tifffile.TiffFile(path)
            try:
                series = tif.series[0].levels[0]
                self.properties = _tiff_resolution_properties(tif.pages[0])
                shape = series.shape
                lazy = series.dtype in (np.uint8, np.uint16) and (
                    len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 2, 3, 4))
                )
                if lazy:
                    self._store = tif.aszarr(series=0, level=0)
                    self._pixels = zarr.open(self._store, mode="r")
            except Exception:
                tif.close()
                raise
        if lazy:
            self._tiff = tif
        else:  # planar, float or odd layouts: read_image sorts them out
            tif.close()

    def read(self, level: int, col: int, row: int, width: int, height: int) -> np.ndarray:
        return _as_rgb_uint8(np.asarray(self._pixels[row : row + height, col : col + width]))

    def mpp_xy(self) -> tuple[float | None, float | None]:
        return _tiff_resolution_mpp(self._path) if _is_tiff_file(self._path) else (None, None)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._tiff is not None:
            self._tiff.close()
        self._pixels = self._store = self._tiff = None


_BACKEND_CLASSES = {"tiffslide": _TiffSlideBackend, "openslide": _OpenSlideBackend, "image": _ImageBackend}


# --------------------------------------------------------------------------- opening


def _default_backends(path: Path) -> tuple[str, ...]:
    """Backends to try, in order, for a file of this name."""
    name = path.name.lower()
    if name.endswith(_OPENSLIDE_ONLY):
        return ("openslide",)
    if name.endswith(_PLAIN_IMAGES):
        return ("image",)
    if name.endswith((".tif", ".tiff")):
        return ("tiffslide", "openslide", "image")  # a plain, untiled TIFF is still an image
    if name.endswith(_TIFF_FAMILY):
        return ("tiffslide", "openslide")
    return ("tiffslide", "openslide", "image")


def _missing_library(name: str) -> str | None:
    """Why backend ``name`` cannot be imported here (None when it can)."""
    if name not in ("tiffslide", "openslide"):
        return None  # "image" needs nothing beyond pathseg's own dependencies
    try:
        importlib.import_module(name)
    except (ImportError, OSError) as exc:  # openslide-python raises OSError without its C library
        return _one_line(exc)
    return None


def _open_backend(name: str, path: Path) -> _Backend:
    """Open ``path`` with one backend, or raise DataError with a one-line reason."""
    missing = _missing_library(name)
    if missing is not None:
        raise DataError(path, f"{name} is not installed ({missing})")
    try:
        with quiet_tifffile():
            return _BACKEND_CLASSES[name](path)
    except DataError:
        raise
    except Exception as exc:  # any parser or decoder failure means "not readable by this backend"
        raise DataError(path, _one_line(exc)) from exc


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(path, "slide file does not exist")
    if path.is_dir():
        raise DataError(path, "is a folder, not a slide file")
    if path.stat().st_size == 0:
        raise DataError(path, "slide file is empty")


def _check_mpp_argument(mpp: float | None) -> float | None:
    if mpp is None:
        return None
    value = _positive_or_none(mpp)
    if value is None:
        raise ConfigError(f"mpp must be a positive number of microns per pixel (got {mpp!r})")
    return value


def open_slide(path: str | Path, backend: str | None = None, mpp: float | None = None) -> Slide:
    """Open a whole-slide image (or a plain image as a one-level slide).

    ``backend=None`` picks by suffix: tiffslide for the TIFF family (svs, tif, tiff, ndpi, scn,
    bif, ome.tif), OpenSlide for MIRAX/VMS/VMU, ``"image"`` for png/jpg/webp/bmp; when the first
    choice cannot open the file the other slide reader is tried. A named ``backend`` is the only
    one tried. ``mpp`` overrides the file's microns per pixel.

    Raises:
        ConfigError: unknown backend name or a non-positive ``mpp``.
        DataError: the file is missing, empty, corrupt or in a format no tried backend reads.
    """
    path = Path(path)
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"unknown slide backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    mpp = _check_mpp_argument(mpp)
    _check_file(path)
    names = (backend,) if backend is not None else _default_backends(path)
    failures = []
    for name in names:
        try:
            handle = _open_backend(name, path)
        except DataError as err:
            failures.append(f"{name}: {err.problem}")
            continue
        return Slide(path, name, handle, mpp)
    raise DataError(path, "cannot open as a slide (" + "; ".join(failures) + ")")


# --------------------------------------------------------------------------- slide


class Slide:
    """An open slide. Use :func:`open_slide` to make one; close it (or use ``with``) when done.

    All coordinates are level-0 pixels; sizes are ``(width, height)``; images are RGB ``uint8``
    ``(height, width, 3)`` with everything outside the slide white.
    """

    def __init__(self, path: Path, backend: str, handle: _Backend, mpp_override: float | None) -> None:
        self.path = path
        self.backend = backend
        self._handle: _Backend | None = handle
        self._handle_pid = os.getpid()
        self._mpp_override = mpp_override
        self._mpp = mpp_override if mpp_override is not None else _resolve_mpp(path, *handle.mpp_xy())

    # ---- pickling: path, backend and resolution travel; the open file does not

    def __getstate__(self) -> dict[str, object]:
        return {
            "path": self.path,
            "backend": self.backend,
            "mpp_override": self._mpp_override,
            "mpp": self._mpp,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.path = state["path"]
        self.backend = state["backend"]
        self._mpp_override = state["mpp_override"]
        self._mpp = state["mpp"]
        self._handle = None

    @property
    def _reader(self) -> _Backend:
        """The open backend, reopened on first use after unpickling or :meth:`close`, and in a
        forked process (a DataLoader worker under the fork start method inherits the handle
        without pickling; sharing its file offset with the parent would mix up their reads)."""
        if self._handle is not None and self._handle_pid != os.getpid():
            self._handle = None  # the parent's: leave it alone, never close it from here
        if self._handle is None:
            _check_file(self.path)
            self._handle = _open_backend(self.backend, self.path)
            self._handle_pid = os.getpid()
        return self._handle

    def close(self) -> None:
        """Release the file; a later read reopens it."""
        if self._handle is not None and self._handle_pid == os.getpid():
            self._handle.close()
        self._handle = None

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, backend={self.backend!r}, mpp={self.mpp})"

    # ---- metadata

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self._reader.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self._reader.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._reader.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._reader.level_downsamples

    @property
    def properties(self) -> dict[str, str]:
        """The reader's metadata (vendor keys such as ``aperio.MPP``), as strings."""
        return dict(self._reader.properties)

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel: the ``mpp`` given to :func:`open_slide`, else the file's
        (x when x and y differ), else None."""
        return self._mpp

    def require_mpp(self) -> float:
        """:attr:`mpp`, or a DataError telling the user to pass ``--mpp``."""
        if self._mpp is None:
            raise DataError(self.path, "has no microns-per-pixel in its properties; pass --mpp")
        return self._mpp

    def downsample_for_mpp(self, target_mpp: float) -> float:
        """Level-0 pixels per output pixel to work at ``target_mpp`` microns per pixel."""
        if _positive_or_none(target_mpp) is None:
            raise ConfigError(f"target mpp must be a positive number (got {target_mpp!r})")
        return float(target_mpp) / self.require_mpp()

    def best_level(self, downsample: float) -> int:
        """The deepest level whose downsample is at most ``downsample`` (1 % slack, so a level at
        2.0005 serves a request for 2); level 0 for anything finer than level 0."""
        best = 0
        for level, level_ds in enumerate(self.level_downsamples):
            if level_ds <= downsample * (1 + _LEVEL_TOLERANCE):
                best = level
        return best

    def _grid_downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of ``level`` as the pyramid was built: the nearest whole factor
        when the stated downsample is within 1 % of one. A 4443 px slide has a 2221 px level 1,
        stated as 2.0005, yet its pixel i covers level-0 pixels 2i and 2i + 1; with 2.0005 a read
        near the right edge would be off by half a pixel."""
        stated = self.level_downsamples[level]
        whole = round(stated)
        return float(whole) if whole >= 1 and abs(stated - whole) <= _LEVEL_TOLERANCE * stated else stated

    # ---- pixels

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``size = (width, height)`` pixels of ``level`` starting at the level-0 ``location``, as
        OpenSlide's ``read_region``; the first pixel is ``floor(location / d)`` of that level with
        ``d`` its whole-number factor (see :meth:`_grid_downsample`)."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} does not exist; {self.path} has {self.level_count}")
        ds = self._grid_downsample(level)
        return self._read_level(level, math.floor(location[0] / ds), math.floor(location[1] / ds), *size)

    def _read_level(self, level: int, col: int, row: int, width: int, height: int) -> np.ndarray:
        """Level pixels ``[row, row + height) x [col, col + width)``; white where outside the level."""
        if width < 0 or height < 0:
            raise ValueError(f"region size must not be negative (got {width} x {height})")
        out = np.full((height, width, 3), 255, np.uint8)
        level_w, level_h = self.level_dimensions[level]
        c0, c1 = max(col, 0), min(col + width, level_w)
        r0, r1 = max(row, 0), min(row + height, level_h)
        if c0 < c1 and r0 < r1:
            try:
                pixels = self._reader.read(level, c0, r0, c1 - c0, r1 - r0)
            except DataError:
                raise
            except Exception as exc:  # a corrupt tile surfaces only when it is decoded
                raise DataError(
                    self.path, f"cannot read level {level} pixels at x={c0}, y={r0} ({_one_line(exc)})"
                ) from exc
            out[r0 - row : r1 - row, c0 - col : c1 - col] = pixels
        return out

    def read_box(
        self,
        box: tuple[float, float, float, float],
        downsample: float,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """The level-0 ``box = (x, y, width, height)`` at ``downsample`` level-0 pixels per output
        pixel, read from :meth:`best_level` and area-averaged to ``size = (width, height)``
        (default ``round(width / downsample) x round(height / downsample)``). Parts outside the
        slide are white. Large sources are resampled in bands, so memory stays bounded."""
        x, y, box_w, box_h = (float(v) for v in box)
        if not (box_w > 0 and box_h > 0):
            raise ValueError(f"box width and height must be positive (got {box})")
        if not downsample > 0:
            raise ValueError(f"downsample must be positive (got {downsample})")
        if size is None:
            size = (max(1, round(box_w / downsample)), max(1, round(box_h / downsample)))
        out_w, out_h = int(size[0]), int(size[1])
        level = self.best_level(downsample)
        level_ds = self._grid_downsample(level)
        # The box in (fractional) pixels of the chosen level.
        left, top = x / level_ds, y / level_ds
        right, bottom = (x + box_w) / level_ds, (y + box_h) / level_ds
        scale_x, scale_y = (right - left) / out_w, (bottom - top) / out_h
        if (right - left) * (bottom - top) <= _MAX_READ_PIXELS or min(scale_x, scale_y) < 1:
            return self._resample(level, (left, top, right, bottom), (out_w, out_h))
        # In bands of output rows: with the box filter an output row depends only on the source
        # rows under it, so the bands join seamlessly.
        band_rows = max(1, int(_MAX_READ_PIXELS / ((right - left) * scale_y)))
        bands = []
        for first in range(0, out_h, band_rows):
            last = min(first + band_rows, out_h)
            band = (left, top + first * scale_y, right, top + last * scale_y)
            bands.append(self._resample(level, band, (out_w, last - first)))
        return np.concatenate(bands, axis=0)

    def _resample(
        self, level: int, box: tuple[float, float, float, float], size: tuple[int, int]
    ) -> np.ndarray:
        """Level pixels under a fractional ``box = (left, top, right, bottom)`` resized to ``size``."""
        left, top, right, bottom = box
        col, row = math.floor(left), math.floor(top)
        width, height = math.ceil(right) - col, math.ceil(bottom) - row
        pixels = self._read_level(level, col, row, width, height)
        local = (left - col, top - row, right - col, bottom - row)
        if local == (0, 0, width, height) and size == (width, height):
            return pixels
        shrinking = (right - left) >= size[0] and (bottom - top) >= size[1]
        # BOX averages the source pixels under each output pixel (area interpolation); BILINEAR
        # for the rare enlargement, where a box filter would give blocky nearest-neighbour output.
        resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
        return np.asarray(Image.fromarray(pixels).resize(size, resample, box=local))

    def thumbnail(self, max_size: int) -> np.ndarray:
        """The whole slide with its longer side at most ``max_size`` pixels, read from the lowest
        level that is still fine enough."""
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1 (got {max_size})")
        width, height = self.dimensions
        downsample = max(1.0, max(width, height) / max_size)
        size = (
            max(1, min(max_size, round(width / downsample))),
            max(1, min(max_size, round(height / downsample))),
        )
        return self.read_box((0, 0, width, height), downsample, size)
