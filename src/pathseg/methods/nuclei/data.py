"""Training crops of nucleus instance maps with their HoVer targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pathseg.data.datasets import _split_key, draw_generator
from pathseg.data.instances import InstanceSample, load_instances
from pathseg.data.io import read_image
from pathseg.data.targets import hover_maps
from pathseg.data.transforms import PairTransform, to_tensor

__all__ = ["IGNORE", "NucleusDataset"]

IGNORE = 255  # nucleus-pixel target of padded pixels
_PAD_ID = -1  # instance id the crop transform gives padding (its ignore_index)


class NucleusDataset(Dataset):
    """Items ``{"image": (3, H, W) in [-1, 1], "mask": (H, W) int64 nucleus 1 / background 0 /
    ignored 255, "hv": (2, H, W) float32, "name": stem}``.

    The transform moves the *instance map* with the image (nearest neighbour, padding id -1), and
    the targets are computed on the result: the h/v maps of a flipped crop must be those of the
    flipped nuclei, and a nucleus cut by the crop edge gets its maps from the part that remains
    (as HoVer-Net's data loader does). Build the transform with ``ignore_index=-1``.
    """

    def __init__(
        self, samples: Sequence[InstanceSample], transform: PairTransform | None = None, seed: int = 0
    ) -> None:
        if not samples:
            raise ValueError("NucleusDataset needs at least one sample")
        self.samples = list(samples)
        self.transform = transform
        self.seed = seed
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``uint8`` image and its ``int32`` instance map (checked to match in size), cached."""
        if index not in self._cache:
            sample = self.samples[index]
            image = read_image(sample.image)
            self._cache[index] = (image, load_instances(sample, shape=image.shape[:2], quiet=True))
        return self._cache[index]

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, rng = _split_key(key, self.seed)
        image, instances = self.load(index)
        if self.transform is not None:
            image, instances = self.transform(
                image, instances, rng if rng is not None else draw_generator(self.seed, index)
            )
        mask = (instances > 0).astype(np.int64)
        mask[instances == _PAD_ID] = IGNORE
        return {
            "image": to_tensor(np.ascontiguousarray(image)),
            "mask": torch.from_numpy(mask),
            "hv": torch.from_numpy(hover_maps(instances)),
            "name": self.samples[index].stem,
        }
