"""NumPy-level augmentations for (image, mask) pairs.

Every transform takes an RGB ``uint8`` image ``(H, W, 3)``, an integer mask ``(H, W)`` or
``None``, and a :class:`numpy.random.Generator`; the same generator state always gives the same
output. Geometric transforms move the mask exactly like the image (nearest-neighbour for the
mask, so no new label values appear); photometric ones leave the mask untouched.

Tensor convention: :func:`to_tensor` maps ``uint8`` to float32 in ``[-1, 1]`` via
``x / 127.5 - 1``. This is the range the diffusion models use, so segmentation networks and
diffusion encoders see identically scaled inputs; :func:`from_tensor` inverts it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from skimage.color import hed_from_rgb, rgb_from_hed

from pathseg.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "PairTransform",
    "TrainTransform",
    "build_train_transform",
    "color_jitter",
    "from_tensor",
    "random_crop",
    "random_flip",
    "random_rotate90",
    "random_scale",
    "random_scaled_crop",
    "resize_pair",
    "stain_jitter",
    "to_tensor",
]

PairTransform = Callable[
    [np.ndarray, np.ndarray | None, np.random.Generator], tuple[np.ndarray, np.ndarray | None]
]

# skimage's rgb2hed divides optical density by -log(1e-6); keeping that unit means sigma has
# the same meaning as in Tellez et al. (2018), who perturbed skimage's HED channels.
_OD_EPS = 1e-6
_OD_UNIT = -math.log(_OD_EPS)
_HED_FROM_RGB = np.asarray(hed_from_rgb, dtype=np.float64)
_RGB_FROM_HED = np.asarray(rgb_from_hed, dtype=np.float64)
# Optical density of every uint8 level, in skimage's unit; a table avoids a log per pixel.
_OD_TABLE = (-np.log(np.maximum(np.arange(256) / 255.0, _OD_EPS)) / _OD_UNIT).astype(np.float32)
# ITU-R BT.601 luma and the YIQ basis, used for saturation and hue rotation as 3x3 matrices.
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


# ---------------------------------------------------------------------------- resizing


def _nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel centre (same geometry PIL uses for images)."""
    return np.minimum(((np.arange(dst) + 0.5) * (src / dst)).astype(np.int64), src - 1)


def _resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    # PIL's bilinear filter widens its support when shrinking, i.e. it antialiases.
    out = Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(out)


def _resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape[:2] == (height, width):
        return mask
    rows = _nearest_indices(mask.shape[0], height)
    cols = _nearest_indices(mask.shape[1], width)
    return mask[rows[:, None], cols[None, :]]


def resize_pair(
    image: np.ndarray, mask: np.ndarray | None, scale: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resize by ``scale`` (e.g. 0.5 to work at half resolution).

    The image is resampled bilinearly with antialiasing, the mask by nearest neighbour so it
    keeps only existing labels. Sizes are rounded, at least 1 pixel.
    """
    if scale <= 0 or not math.isfinite(scale):
        raise ValueError(f"scale must be a positive number, got {scale}")
    if scale == 1.0:
        return image, mask
    height = max(1, round(image.shape[0] * scale))
    width = max(1, round(image.shape[1] * scale))
    return _resize_image(image, height, width), None if mask is None else _resize_mask(mask, height, width)


# ---------------------------------------------------------------------------- geometry


def random_flip(
    image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Horizontal and vertical flips, each with probability 1/2."""
    horizontal, vertical = rng.random(2) < 0.5
    if horizontal:
        image = image[:, ::-1]
        mask = None if mask is None else mask[:, ::-1]
    if vertical:
        image = image[::-1]
        mask = None if mask is None else mask[::-1]
    return image, mask


def random_rotate90(
    image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotation by 0, 90, 180 or 270 degrees (tissue has no preferred orientation)."""
    k = int(rng.integers(4))
    if k == 0:
        return image, mask
    return np.rot90(image, k, axes=(0, 1)), None if mask is None else np.rot90(mask, k, axes=(0, 1))


def _pad_to(
    image: np.ndarray, mask: np.ndarray | None, height: int, width: int, ignore_index: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Pad (centred) up to at least height x width: reflected tissue, ignored labels."""
    ph, pw = max(0, height - image.shape[0]), max(0, width - image.shape[1])
    if ph == 0 and pw == 0:
        return image, mask
    pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    image = np.pad(image, (*pads, (0, 0)), mode="reflect" if min(image.shape[:2]) > 1 else "edge")
    if mask is not None:  # (H, W) or (H, W, L) stacked label maps
        mask = np.pad(mask, pads + ((0, 0),) * (mask.ndim - 2), mode="constant", constant_values=ignore_index)
    return image, mask


def random_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    crop_size: int | tuple[int, int],
    rng: np.random.Generator,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A uniformly placed ``crop_size`` window; smaller inputs are padded first
    (image by reflection, mask with ``ignore_index`` so padding is not learned as a class)."""
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else crop_size
    image, mask = _pad_to(image, mask, ch, cw, ignore_index)
    top = int(rng.integers(image.shape[0] - ch + 1))
    left = int(rng.integers(image.shape[1] - cw + 1))
    image = image[top : top + ch, left : left + cw]
    mask = None if mask is None else mask[top : top + ch, left : left + cw]
    return image, mask


def random_scale(
    image: np.ndarray,
    mask: np.ndarray | None,
    scale_range: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Zoom the whole pair by a factor drawn uniformly from ``scale_range``."""
    s = float(rng.uniform(*scale_range)) if scale_range[0] != scale_range[1] else float(scale_range[0])
    return resize_pair(image, mask, s)


def random_scaled_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    crop_size: int,
    scale_range: tuple[float, float],
    rng: np.random.Generator,
    ignore_index: int = 255,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Zoom by s ~ U(scale_range) and crop ``crop_size``, resampling only the crop.

    Equivalent to :func:`random_scale` followed by :func:`random_crop`, but a window of
    ``crop_size / s`` is cut first and then resized, so a 2x zoom of a large tile costs the
    same as a plain crop.
    """
    s = float(rng.uniform(*scale_range)) if scale_range[0] != scale_range[1] else float(scale_range[0])
    if s == 1.0:
        return random_crop(image, mask, crop_size, rng, ignore_index)
    window = max(1, round(crop_size / s))
    image, mask = random_crop(image, mask, window, rng, ignore_index)
    return _resize_image(image, crop_size, crop_size), None if mask is None else _resize_mask(
        mask, crop_size, crop_size
    )


# ---------------------------------------------------------------------------- colour


def _mix_channels(
    planes: list[np.ndarray], matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, ...], od: bool
) -> np.ndarray:
    """``out[..., j] = sum_c planes[c] * matrix[j, c] + offset[j]``, back to ``uint8``.

    Written as nine scaled plane additions rather than an ``(N, 3) @ (3, 3)`` product: BLAS
    gains nothing at inner size 3, and its threads stall badly on a busy machine. With
    ``od=True`` the result is optical density (skimage unit) and is turned back into RGB.
    """
    out = np.empty(shape, dtype=np.uint8)
    m = matrix.astype(np.float32)
    for j in range(3):
        acc = planes[0] * m[j, 0]
        acc += planes[1] * m[j, 1]
        acc += planes[2] * m[j, 2]
        acc += np.float32(offset[j])
        if od:
            acc *= np.float32(-_OD_UNIT)
            np.exp(acc, out=acc)
            acc *= np.float32(255.0)
        np.clip(acc, 0, 255, out=acc)
        np.rint(acc, out=acc)
        out[..., j] = acc
    return out


def color_jitter(image: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation in ``1 ± strength`` and a hue rotation of up
    to ``strength / 4`` of a turn.

    All four are linear in RGB, so they are composed into one 3x3 matrix plus offset and
    applied in a single pass.
    """
    if strength <= 0:
        return image
    b, c, s = 1.0 + rng.uniform(-strength, strength, size=3)
    angle = 2.0 * math.pi * rng.uniform(-strength / 4.0, strength / 4.0)
    # hue: rotate the chroma (I, Q) plane of YIQ
    rot = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    hue = _YIQ2RGB @ rot @ _RGB2YIQ
    # saturation: blend toward each pixel's luma
    grey = np.outer(np.ones(3), _LUMA)
    sat = s * np.eye(3) + (1.0 - s) * grey
    matrix = c * b * (sat @ hue)
    planes = [image[..., k].astype(np.float32) for k in range(3)]
    # contrast: scale around the mean luma of the brightened image
    mean = sum(float(w) * float(p.mean(dtype=np.float64)) for w, p in zip(_LUMA, planes, strict=True)) * b
    offset = np.full(3, (1.0 - c) * mean)
    return _mix_channels(planes, matrix, offset, image.shape, od=False)


def stain_jitter(
    image: np.ndarray, rng: np.random.Generator, sigma: float, bias: float | None = None
) -> np.ndarray:
    """H&E stain augmentation of Tellez et al. (2018) in HED colour-deconvolution space.

    Each stain channel (haematoxylin, eosin, DAB/residual) is changed to
    ``alpha * c + beta`` with ``alpha ~ U(1 - sigma, 1 + sigma)`` and
    ``beta ~ U(-bias, bias)``, in the units of :func:`skimage.color.rgb2hed`. ``bias`` defaults
    to ``sigma / 5``: in these units H&E tissue holds stain amounts of only ~0.02-0.1, so a shift
    of ``sigma`` itself (as Tellez et al. used in their own scaling) tints white lumens purple and,
    measured on GlaS, slowed training to a crawl. Since deconvolution is linear in optical density, the whole
    RGB -> HED -> jitter -> RGB chain collapses into one 3x3 matrix on optical density; unlike
    chaining ``rgb2hed``/``hed2rgb`` it also skips their clipping of negative stain amounts,
    so ``sigma = 0`` returns the input exactly (up to rounding).
    """
    bias = sigma / 5.0 if bias is None else bias
    if sigma <= 0 and bias <= 0:
        return image
    alpha = rng.uniform(1.0 - sigma, 1.0 + sigma, size=3)
    beta = rng.uniform(-bias, bias, size=3)
    # skimage multiplies row vectors: hed = od @ H, od = hed @ R; transpose for column form.
    matrix = ((_HED_FROM_RGB * alpha[None, :]) @ _RGB_FROM_HED).T
    offset = beta @ _RGB_FROM_HED
    planes = [_OD_TABLE[image[..., k]] for k in range(3)]
    return _mix_channels(planes, matrix, offset, image.shape, od=True)


# ---------------------------------------------------------------------------- pipeline


@dataclass
class AugmentConfig:
    """Training augmentation settings (all off except flips/rotations by default).

    Attributes:
        crop_size: square crop side in pixels, ``None`` for whole images.
        scale_range: zoom factor range; > 1 zooms in.
        flips: random horizontal/vertical flips.
        rotate90: random multiples of 90 degrees.
        color_jitter: brightness/contrast/saturation strength (hue gets a quarter of it).
        stain_jitter: sigma of the HED stain augmentation (0.05 light, 0.2 strong).
    """

    crop_size: int | None = None
    scale_range: tuple[float, float] = (1.0, 1.0)
    flips: bool = True
    rotate90: bool = True
    color_jitter: float = 0.0
    stain_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_size is not None and (
            isinstance(self.crop_size, bool) or not isinstance(self.crop_size, int) or self.crop_size < 1
        ):
            raise ConfigError(f"crop_size must be a positive int or null, got {self.crop_size!r}")
        try:
            lo, hi = (float(v) for v in self.scale_range)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"scale_range must be two numbers, got {self.scale_range!r}") from exc
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ConfigError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range!r}")
        self.scale_range = (lo, hi)
        for name in ("color_jitter", "stain_jitter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
                raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
            setattr(self, name, float(value))


@dataclass(frozen=True)
class TrainTransform:
    """The configured augmentations as one ``(image, mask, rng) -> (image, mask)`` callable.

    A small class rather than a closure so it pickles into DataLoader worker processes on
    platforms that spawn instead of fork.
    """

    cfg: AugmentConfig
    ignore_index: int = 255

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray | None]:
        cfg = self.cfg
        if cfg.crop_size is not None:
            image, mask = random_scaled_crop(
                image, mask, cfg.crop_size, cfg.scale_range, rng, self.ignore_index
            )
        elif cfg.scale_range != (1.0, 1.0):
            image, mask = random_scale(image, mask, cfg.scale_range, rng)
        if cfg.flips:
            image, mask = random_flip(image, mask, rng)
        if cfg.rotate90:
            image, mask = random_rotate90(image, mask, rng)
        if cfg.color_jitter > 0:
            image = color_jitter(image, cfg.color_jitter, rng)
        if cfg.stain_jitter > 0:
            image = stain_jitter(image, rng, cfg.stain_jitter)
        image = np.ascontiguousarray(image)
        return image, None if mask is None else np.ascontiguousarray(mask)


def build_train_transform(cfg: AugmentConfig, ignore_index: int = 255) -> PairTransform:
    """Compose the configured augmentations into one ``(image, mask, rng) -> (image, mask)``.

    Order: zoom + crop (cropping first keeps the rest cheap), flips, 90° rotations, colour
    jitter, stain jitter. Without ``crop_size`` the zoom applies to the whole image. Padding
    of images smaller than the crop is labelled ``ignore_index``.
    """
    return TrainTransform(cfg, ignore_index)


# ---------------------------------------------------------------------------- tensors


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """``uint8`` ``(H, W, 3)`` -> float32 ``(3, H, W)`` in ``[-1, 1]`` (``x / 127.5 - 1``)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    # one float copy in channel-first order; also avoids torch's warning on read-only arrays
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    chw /= 127.5
    chw -= 1.0
    return torch.from_numpy(chw)


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """Inverse of :func:`to_tensor` for display: ``(3, H, W)`` in ``[-1, 1]`` -> ``uint8`` ``(H, W, 3)``.

    Values outside ``[-1, 1]`` (e.g. diffusion samples) are clipped.
    """
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor, got shape {tuple(tensor.shape)}")
    arr = ((tensor.detach().to("cpu", torch.float32) + 1.0) * 127.5).round().clamp(0, 255)
    return arr.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
