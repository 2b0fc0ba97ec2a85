"""Small image/mask makers shared by the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pathseg.data.io import write_image, write_mask

# ../shared/data beside the checkout (CI has the same layout)
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")


def rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A random RGB uint8 image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def blocks_mask(height: int, width: int, block: int = 8, seed: int = 0, values: tuple[int, ...] = (0, 255)):
    """A mask of square blocks of random values (edges are a small fraction of pixels)."""
    rng = np.random.default_rng(seed)
    coarse = rng.choice(np.array(values, dtype=np.uint8), size=(-(-height // block), -(-width // block)))
    return np.kron(coarse, np.ones((block, block), dtype=np.uint8))[:height, :width]


def write_pair(
    root: Path,
    stem: str,
    size: tuple[int, int] = (12, 16),
    mask_size: tuple[int, int] | None = None,
    image_ext: str = ".png",
    mask_values: tuple[int, ...] = (0, 255),
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write root/images/<stem><ext> and root/masks/<stem>.png; sizes are (height, width)."""
    height, width = size
    image = root / "images" / f"{stem}{image_ext}"
    mask = root / "masks" / f"{stem}.png"
    write_image(image, rgb(height, width, seed))
    mh, mw = mask_size or size
    write_mask(mask, blocks_mask(mh, mw, block=4, seed=seed, values=mask_values))
    return image, mask
