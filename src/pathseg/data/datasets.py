"""PyTorch datasets over image(/mask) files.

Decoded arrays are cached in memory by default: GlaS-sized sets fit easily (masks are cached in
the smallest integer type that holds their classes), and decoding lossless WebP at every step
would dominate training time on a few CPU cores. With ``DataLoader(num_workers > 0)`` each
worker fills its own cache unless :meth:`preload` ran in the main process before the workers
were started.

Randomness: items can be asked for as ``dataset[(index, augmentation_seed)]``, which is what the
training engine's :class:`~pathseg.engine.sampling.StepSampler` does: the augmentation then
depends on that seed alone, so a resumed or distributed run augments exactly like a straight one,
with any number of DataLoader workers. A plain ``dataset[index]`` draws one 63-bit number from
*torch's global RNG* instead and seeds a :class:`numpy.random.Generator` with ``(seed, index, draw)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pathseg.data.classes import ClassMap
from pathseg.data.folders import Sample
from pathseg.data.io import read_image, read_label_image
from pathseg.data.transforms import PairTransform, resize_pair, to_tensor
from pathseg.errors import DataError

__all__ = ["SegmentationDataset", "UnlabeledImageDataset", "draw_generator"]


def draw_generator(seed: int, index: int) -> np.random.Generator:
    """A NumPy generator for one item, drawn from torch's global RNG (see module docstring)."""
    draw = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    return np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(index), draw])


def _split_key(key: int | tuple[int, int], seed: int) -> tuple[int, np.random.Generator | None]:
    """``index`` or ``(index, augmentation_seed)`` -> index and, for the pair, its generator."""
    if isinstance(key, tuple):
        index, augmentation_seed = key
        return int(index), np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, int(augmentation_seed)])
    return int(key), None


def _compact_dtype(class_map: ClassMap) -> np.dtype:
    """Smallest integer dtype holding every class index and the ignore index."""
    return np.result_type(
        np.min_scalar_type(class_map.num_classes - 1), np.min_scalar_type(class_map.ignore_index)
    )


class SegmentationDataset(Dataset):
    """Image/mask pairs as ``{"image": (3, H, W) float in [-1, 1], "mask": (H, W) int64, "name": stem}``.

    Args:
        samples: pairs from :func:`~pathseg.data.folders.discover_dataset` (all need a mask).
        class_map: how stored mask values become class indices.
        transform: optional ``(image, mask, rng) -> (image, mask)``, e.g. from
            :func:`~pathseg.data.transforms.build_train_transform`.
        scale: resize factor applied once at load time (0.5 = half resolution).
        cache: keep decoded, encoded and resized arrays in memory.
        seed: mixed into each item's random generator.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        class_map: ClassMap,
        transform: PairTransform | None = None,
        scale: float = 1.0,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        if not samples:
            raise ValueError("SegmentationDataset needs at least one sample")
        for sample in samples:
            if sample.mask is None:
                raise DataError(
                    sample.image, "sample has no mask (use UnlabeledImageDataset for unlabelled images)"
                )
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.samples = list(samples)
        self.class_map = class_map
        self.transform = transform
        self.scale = float(scale)
        self.cache = cache
        self.seed = seed
        self._mask_dtype = _compact_dtype(class_map)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoded ``uint8`` image and class-index mask (compact dtype), scaled, not transformed."""
        if index in self._cache:
            return self._cache[index]
        sample = self.samples[index]
        assert sample.mask is not None
        image = read_image(sample.image)
        raw = read_label_image(sample.mask)
        if raw.shape[:2] != image.shape[:2]:
            (mh, mw), (ih, iw) = raw.shape[:2], image.shape[:2]
            raise DataError(sample.mask, f"mask is {mw}x{mh} but image {sample.image.name} is {iw}x{ih}")
        labels = self.class_map.encode(raw, sample.mask).astype(self._mask_dtype)
        image, labels_out = resize_pair(image, labels, self.scale)
        assert labels_out is not None
        if self.cache:
            self._cache[index] = (image, labels_out)
        return image, labels_out

    def preload(self) -> None:
        """Decode everything now (e.g. before DataLoader workers fork, so they share it)."""
        for index in range(len(self)):
            self.load(index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = _split_key(key, self.seed)
        image, mask = self.load(index)
        if self.transform is not None:
            image, out_mask = self.transform(
                image, mask, rng if rng is not None else draw_generator(self.seed, index)
            )
            if out_mask is None:
                raise RuntimeError("transform dropped the mask of a labelled sample")
            mask = out_mask
        return {
            "image": to_tensor(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64)),
            "name": self.samples[index].stem,
        }


class UnlabeledImageDataset(Dataset):
    """Images only, as ``{"image": (3, H, W) float in [-1, 1], "name": stem}``.

    ``paths`` are image files (or :class:`Sample` objects, whose masks are ignored). The
    transform is called with ``mask=None``. Caching and randomness as in
    :class:`SegmentationDataset`.
    """

    def __init__(
        self,
        paths: Sequence[str | Path | Sample],
        transform: PairTransform | None = None,
        scale: float = 1.0,
        cache: bool = True,
        seed: int = 0,
    ) -> None:
        if not paths:
            raise ValueError("UnlabeledImageDataset needs at least one image")
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.paths = [p.image if isinstance(p, Sample) else Path(p) for p in paths]
        self.transform = transform
        self.scale = float(scale)
        self.cache = cache
        self.seed = seed
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        """Decoded ``uint8`` image after ``scale``, before transforms."""
        if index in self._cache:
            return self._cache[index]
        image, _ = resize_pair(read_image(self.paths[index]), None, self.scale)
        if self.cache:
            self._cache[index] = image
        return image

    def preload(self) -> None:
        """Decode everything now (see :meth:`SegmentationDataset.preload`)."""
        for index in range(len(self)):
            self.load(index)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = _split_key(key, self.seed)
        image = self.load(index)
        if self.transform is not None:
            image, _ = self.transform(
                image, None, rng if rng is not None else draw_generator(self.seed, index)
            )
        return {"image": to_tensor(np.ascontiguousarray(image)), "name": self.paths[index].stem}
